//! Households over real HTTP on both engines (issue 17): create, join, change a role, leave
//! and show; idempotent retries; the refusals (not a member, an unknown household, writers
//! the policy does not let write, readers it does not let read); erasure and merges taking
//! records out; and a consumer entitled to `household` receiving every change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, grant, no_redirects, on_both_engines, provenance};

on_both_engines!(
    a_household_is_created_joined_shown_and_left,
    refusals_name_what_is_wrong_and_write_nothing,
    erased_and_merged_records_are_in_no_household,
    a_consumer_entitled_to_household_receives_every_change,
);

async fn create(app: &TestApp, as_: &str, key: &str, customer: &str, role: Option<&str>) -> Reply {
    let mut body = json!({"customer_id": customer, "provenance": provenance()});
    if let Some(role) = role {
        body["role"] = json!(role);
    }
    app.send(
        Method::POST,
        "/v1/households",
        Some(as_),
        Some(key),
        Some(&body),
    )
    .await
}

async fn join(
    app: &TestApp,
    as_: &str,
    key: &str,
    household: &str,
    customer: &str,
    role: &str,
) -> Reply {
    app.send(
        Method::PUT,
        &format!("/v1/households/{household}/members/{customer}"),
        Some(as_),
        Some(key),
        Some(&json!({"role": role, "provenance": provenance()})),
    )
    .await
}

async fn leave(app: &TestApp, as_: &str, key: &str, household: &str, customer: &str) -> Reply {
    app.send(
        Method::DELETE,
        &format!("/v1/households/{household}/members/{customer}"),
        Some(as_),
        Some(key),
        Some(&json!({"provenance": provenance()})),
    )
    .await
}

/// `[(customer_id, role)]` of a household answer.
fn members(body: &Value) -> Vec<(String, String)> {
    body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["customer_id"].as_str().unwrap().to_owned(),
                m["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn sorted(mut pairs: Vec<(&str, &str)>) -> Vec<(String, String)> {
    pairs.sort();
    pairs
        .into_iter()
        .map(|(c, r)| (c.to_owned(), r.to_owned()))
        .collect()
}

async fn show(app: &TestApp, household: &str, as_: &str) -> Reply {
    app.get(&format!("/v1/households/{household}"), as_).await
}

async fn person(app: &TestApp, given: &str) -> String {
    app.register(
        "idp",
        json!([{"op": "set_field", "field": "name.given", "value": given}]),
    )
    .await
}

async fn a_household_is_created_joined_shown_and_left(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ada = person(&app, "Ada").await;
    let byron = person(&app, "Byron").await;
    let cleo = person(&app, "Cleo").await;

    // Created around its first member, head by default, by the field's system of record.
    let created = create(&app, "web_app", "hh-1", &ada, None).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let household = created.body["household_id"].as_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&household).unwrap().get_version_num(),
        7
    );
    assert_eq!(
        created.header("location"),
        Some(format!("/v1/households/{household}").as_str())
    );
    assert_eq!(members(&created.body), sorted(vec![(&ada, "head")]));
    assert_eq!(created.body["command"]["customer_id"], ada.as_str());
    assert_eq!(created.body["command"]["replayed"], false);
    assert_eq!(created.body["command"]["events"][0]["type"], "field_set");
    let version = created.body["command"]["stream_version"].as_u64().unwrap();
    assert_eq!(
        created.header("etag"),
        Some(format!("\"{version}\"").as_str())
    );
    // The member's record says so, as a field with its source.
    let record = app.get(&format!("/v1/customers/{ada}"), "steward").await;
    let field = record.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "household")
        .unwrap()
        .clone();
    assert_eq!(field["value"], json!({"id": household, "role": "head"}));
    assert_eq!(field["source"], "web_app");

    // A retry with the same key is the first result: the same household, nothing new.
    let head = app.head().await;
    let again = create(&app, "web_app", "hh-1", &ada, None).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body["household_id"], household.as_str());
    assert_eq!(again.body["command"]["replayed"], true);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(app.head().await, head);
    // The same key for another customer is a conflict.
    create(&app, "web_app", "hh-1", &byron, None)
        .await
        .problem(409, "idempotency_conflict");

    // Byron joins (a co-owner of the field), then becomes a guardian; Cleo joins as a steward.
    let joined = join(&app, "support_portal", "j-1", &household, &byron, "member").await;
    assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
    assert_eq!(
        members(&joined.body),
        sorted(vec![(&ada, "head"), (&byron, "member")])
    );
    let changed = join(&app, "web_app", "j-2", &household, &byron, "guardian").await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["command"]["outcomes"][0]["outcome"], "applied");
    // The same role again changes nothing.
    let same = join(&app, "web_app", "j-3", &household, &byron, "guardian").await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(same.body["command"]["outcomes"][0]["outcome"], "unchanged");
    let stewarded = join(&app, "steward", "j-4", &household, &cleo, "member").await;
    assert_eq!(stewarded.status, StatusCode::OK, "{}", stewarded.text);

    // Shown to every reader that may read the field; the lookup finds the same customers.
    let all = sorted(vec![
        (&ada, "head"),
        (&byron, "guardian"),
        (&cleo, "member"),
    ]);
    for reader in ["steward", "auditor", "web_app", "crm"] {
        let shown = show(&app, &household, reader).await;
        assert_eq!(shown.status, StatusCode::OK, "{reader}: {}", shown.text);
        assert_eq!(members(&shown.body), all, "{reader}");
        assert_eq!(shown.body["truncated"], false);
    }
    let found = app
        .get(&format!("/v1/customers?household={household}"), "web_app")
        .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text);
    let ids: Vec<&str> = all.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(found.body["customer_ids"], json!(ids));
    // A source's reads are disclosures of `household`, one per member shown.
    let log = app.get("/v1/sources/crm/disclosures", "auditor").await;
    let disclosed: Vec<&Value> = log.body["items"].as_array().unwrap().iter().collect();
    assert_eq!(disclosed.len(), 3, "{}", log.text);
    assert!(
        disclosed
            .iter()
            .all(|d| d["fields"] == json!(["household"]))
    );

    // Leaving: Byron's membership is cleared; a retry is the first result.
    let left = leave(&app, "web_app", "l-1", &household, &byron).await;
    assert_eq!(left.status, StatusCode::OK, "{}", left.text);
    assert_eq!(left.body["command"]["events"][0]["type"], "field_cleared");
    assert_eq!(
        members(&left.body),
        sorted(vec![(&ada, "head"), (&cleo, "member")])
    );
    let head = app.head().await;
    let retried = leave(&app, "web_app", "l-1", &household, &byron).await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.text);
    assert_eq!(retried.body["command"]["replayed"], true);
    assert_eq!(app.head().await, head);
    // Not a member any more: refused, naming the household.
    let refused = leave(&app, "web_app", "l-2", &household, &byron).await;
    assert_eq!(
        refused.problem(409, "not_a_member")["household_id"],
        household.as_str()
    );
    // Joining another household moves a member: Cleo creates one and leaves this one.
    let moved = create(&app, "web_app", "hh-2", &cleo, Some("member")).await;
    assert_eq!(moved.status, StatusCode::CREATED, "{}", moved.text);
    let other = moved.body["household_id"].as_str().unwrap().to_owned();
    assert_ne!(other, household);
    assert_eq!(members(&moved.body), sorted(vec![(&cleo, "member")]));
    // A leave of the household she was in no longer clears her new membership.
    leave(&app, "web_app", "l-3", &household, &cleo)
        .await
        .problem(409, "not_a_member");
    assert_eq!(
        members(&show(&app, &other, "steward").await.body),
        sorted(vec![(&cleo, "member")])
    );
    // The last member leaves: the household is no longer found.
    let last = leave(&app, "steward", "l-4", &household, &ada).await;
    assert_eq!(last.status, StatusCode::OK, "{}", last.text);
    assert_eq!(last.body["members"], json!([]));
    show(&app, &household, "steward")
        .await
        .problem(404, "not_found");
    // Its history keeps who was in it, with provenance.
    let history = app
        .get(
            &format!("/v1/customers/{byron}/fields/household/history"),
            "auditor",
        )
        .await;
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["field_set", "field_set", "field_cleared"]);
}

async fn refusals_name_what_is_wrong_and_write_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ada = person(&app, "Ada").await;
    let byron = person(&app, "Byron").await;
    let created = create(&app, "web_app", "hh-1", &ada, Some("head")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let household = created.body["household_id"].as_str().unwrap().to_owned();
    let head = app.head().await;

    // A source that may not read `household` sees no household, and finds nobody by it.
    show(&app, &household, "idp")
        .await
        .problem(403, "not_readable");
    app.get(&format!("/v1/customers?household={household}"), "idp")
        .await
        .problem(403, "not_readable");
    // Nor may it write one: refused by the policy, before anything about the household.
    for reply in [
        create(&app, "idp", "x-1", &byron, None).await,
        join(&app, "idp", "x-2", &household, &byron, "member").await,
        leave(&app, "idp", "x-3", &household, &ada).await,
        join(
            &app,
            "idp",
            "x-4",
            "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d",
            &byron,
            "member",
        )
        .await,
    ] {
        reply.problem(403, "not_authoritative");
    }
    // Other roles are not writers or readers of households at all.
    join(&app, "auditor", "x-5", &household, &byron, "member")
        .await
        .problem(403, "forbidden_role");
    show(&app, &household, "consumer")
        .await
        .problem(403, "forbidden_role");
    // Nobody is in a household never created.
    let unknown = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";
    let problem = join(&app, "web_app", "x-6", unknown, &byron, "member")
        .await
        .problem(404, "unknown_household")
        .clone();
    assert_eq!(problem["household_id"], unknown);
    show(&app, unknown, "steward")
        .await
        .problem(404, "not_found");
    // Bad input: a role, ids, the key, the body.
    join(&app, "web_app", "x-7", &household, &byron, "cousin")
        .await
        .problem(422, "invalid_value");
    show(&app, "not-a-household", "steward")
        .await
        .problem(404, "invalid_household_id");
    join(&app, "web_app", "x-8", &household, "nobody", "member")
        .await
        .problem(404, "invalid_customer_id");
    create(
        &app,
        "web_app",
        "x-9",
        "0190f5a2-7c3e-4a1b-8c4d-2e6f8a9b0c1d",
        None,
    )
    .await
    .problem(422, "invalid_value");
    create(
        &app,
        "web_app",
        "x-10",
        "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c10",
        None,
    )
    .await
    .problem(404, "not_registered");
    app.send(
        Method::PUT,
        &format!("/v1/households/{household}/members/{byron}"),
        Some("web_app"),
        None,
        Some(&json!({"provenance": provenance()})),
    )
    .await
    .problem(400, "missing_idempotency_key");
    app.send(
        Method::DELETE,
        &format!("/v1/households/{household}/members/{ada}"),
        Some("web_app"),
        Some("x-11"),
        Some(&json!({})),
    )
    .await
    .problem(422, "invalid_body");
    assert_eq!(app.head().await, head, "nothing was written");

    // The CRM may only propose the field: a proposal is recorded, answered as on commands.
    let proposed = join(&app, "crm", "x-12", &household, &byron, "member").await;
    let problem = proposed.problem(403, "not_authoritative");
    assert_eq!(problem["system_of_record"], "web_app");
    assert!(problem["proposal_id"].is_string());
    assert_eq!(problem["result"]["outcomes"][0]["outcome"], "proposed");
    assert_eq!(
        members(&show(&app, &household, "steward").await.body),
        sorted(vec![(&ada, "head")])
    );
    // If-Match: the member's record's ETag; refused once it moved on.
    let etag = app
        .get(&format!("/v1/customers/{byron}"), "steward")
        .await
        .header("etag")
        .unwrap()
        .to_owned();
    let put_if_match = async |key: &str, tag: &str| {
        let request = app
            .client
            .request(
                Method::PUT,
                app.url(&format!("/v1/households/{household}/members/{byron}")),
            )
            .bearer_auth(app.token("web_app"))
            .header("Idempotency-Key", key)
            .header("If-Match", tag)
            .json(&json!({"provenance": provenance()}));
        Reply::from(request.send().await.unwrap()).await
    };
    put_if_match("x-13", "\"1\"")
        .await
        .problem(412, "version_conflict");
    let fresh = put_if_match("x-14", &etag).await;
    assert_eq!(fresh.status, StatusCode::OK, "{}", fresh.text);
    assert_eq!(
        members(&fresh.body),
        sorted(vec![(&ada, "head"), (&byron, "member")])
    );
}

async fn erased_and_merged_records_are_in_no_household(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ada = person(&app, "Ada").await;
    let byron = person(&app, "Byron").await;
    let cleo = person(&app, "Cleo").await;
    let created = create(&app, "web_app", "hh-1", &ada, None).await;
    let household = created.body["household_id"].as_str().unwrap().to_owned();
    for (key, customer) in [("j-1", &byron), ("j-2", &cleo)] {
        let joined = join(&app, "web_app", key, &household, customer, "member").await;
        assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
    }

    // Erased: gone from the household (its index rows went with its data).
    let erased = app
        .send(
            Method::POST,
            &format!("/v1/customers/{byron}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "subject request", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    assert_eq!(
        members(&show(&app, &household, "steward").await.body),
        sorted(vec![(&ada, "head"), (&cleo, "member")])
    );
    join(&app, "web_app", "j-3", &household, &byron, "member")
        .await
        .problem(410, "erased");

    // Merged into another record: the absorbed one is in no household; the survivor, which
    // had none, took its membership (a whole field record, with its provenance).
    let dora = person(&app, "Dora").await;
    let merged = app
        .send(
            Method::POST,
            &format!("/v1/customers/{dora}/merge"),
            Some("steward"),
            None,
            Some(&json!({"absorbed": cleo, "reason": "same person: documents checked"})),
        )
        .await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.text);
    let shown = members(&show(&app, &household, "steward").await.body);
    assert_eq!(shown, sorted(vec![(&ada, "head"), (&dora, "member")]));
    // A change of the absorbed record's membership is sent to the survivor's.
    let reply = Reply::from(
        no_redirects()
            .request(
                Method::PUT,
                app.url(&format!("/v1/households/{household}/members/{cleo}")),
            )
            .bearer_auth(app.token("web_app"))
            .header("Idempotency-Key", "j-4")
            .json(&json!({"provenance": provenance()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    reply.problem(307, "merged_into");
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/households/{household}/members/{dora}").as_str())
    );
    // A household created around the absorbed record: the customer is in the body, so there
    // is no URL to redirect to; the answer names the survivor.
    let created = create(&app, "web_app", "hh-merged", &cleo, None).await;
    created.problem(409, "merged_into");
    assert_eq!(created.body["merged_into"], dora.as_str());
    assert_eq!(created.header("location"), None);
    // Unmerged: each record is as it would be without the merge, Cleo back in, Dora out.
    let unmerged = app
        .send(
            Method::POST,
            &format!("/v1/customers/{dora}/unmerge"),
            Some("steward"),
            None,
            Some(&json!({"absorbed": cleo, "reason": "not the same person"})),
        )
        .await;
    assert_eq!(unmerged.status, StatusCode::OK, "{}", unmerged.text);
    assert_eq!(
        members(&show(&app, &household, "steward").await.body),
        sorted(vec![(&ada, "head"), (&cleo, "member")])
    );
    // A household whose members are all gone is not found.
    for customer in [&ada, &cleo] {
        let erased = app
            .send(
                Method::POST,
                &format!("/v1/customers/{customer}/erasure"),
                Some("admin"),
                None,
                Some(
                    &json!({"reason": "subject request", "actor": {"kind": "agent", "id": "dpo"}}),
                ),
            )
            .await;
        assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    }
    show(&app, &household, "steward")
        .await
        .problem(404, "not_found");
}

async fn a_consumer_entitled_to_household_receives_every_change(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["household"], "purposes": ["marketing"]
    }))
    .await;
    let ada = person(&app, "Ada").await;
    let byron = person(&app, "Byron").await;
    for c in [&ada, &byron] {
        let reply = app
            .command(
                "consent_portal",
                c,
                &format!("grant-{c}"),
                json!([grant("marketing", "DE")]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let created = create(&app, "web_app", "hh-1", &ada, None).await;
    let household = created.body["household_id"].as_str().unwrap().to_owned();
    let joined = join(&app, "web_app", "j-1", &household, &byron, "guardian").await;
    assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
    let left = leave(&app, "web_app", "l-1", &household, &byron).await;
    assert_eq!(left.status, StatusCode::OK, "{}", left.text);

    let feed = app.get("/v1/feed", "consumer").await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.text);
    let events: Vec<Value> = feed
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, Value)> = events
        .iter()
        .map(|e| {
            assert_eq!(e["data"]["field"], "household", "only what it selects");
            (
                e["type"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
                e["data"]["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "idledger.field.changed.v1".to_owned(),
                ada.clone(),
                json!({"id": household, "role": "head"})
            ),
            (
                "idledger.field.changed.v1".to_owned(),
                byron.clone(),
                json!({"id": household, "role": "guardian"})
            ),
            (
                "idledger.field.cleared.v1".to_owned(),
                byron.clone(),
                Value::Null
            ),
        ]
    );
}
