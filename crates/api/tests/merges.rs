//! Merge and unmerge over real HTTP on both engines: the steward's routes and their
//! refusals, the absorbed record's `307 merged_into` redirects (reads and commands), the
//! survivor's history showing the absorbed record's events, and what a feed consumer that
//! held the absorbed record is sent.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, consent_to_service, feed, no_redirects, on_both_engines};

on_both_engines!(
    a_steward_merges_and_the_absorbed_record_redirects,
    a_feed_consumer_is_told_of_the_merge_and_the_unmerge,
    merges_are_for_stewards_and_refused_when_they_make_no_sense,
    every_merged_into_answer_can_be_followed,
    an_administrator_backfills_duplicate_candidates,
);

const MERGED: &str = "idledger.customer.merged.v1";
const UNMERGED: &str = "idledger.customer.unmerged.v1";

fn set(field: &str, value: &str) -> Value {
    json!({"op": "set_field", "field": field, "value": value})
}

async fn merge(app: &TestApp, how: &str, survivor: &str, absorbed: &str, as_: &str) -> Reply {
    app.send(
        Method::POST,
        &format!("/v1/customers/{survivor}/{how}"),
        Some(as_),
        None,
        Some(&json!({"absorbed": absorbed, "reason": "same person: documents checked"})),
    )
    .await
}

async fn a_steward_merges_and_the_absorbed_record_redirects(engine: Engine) {
    let app = TestApp::start(engine).await;
    let a = app.register("idp", json!([set("name.given", "Ada")])).await;
    let b = app
        .register("idp", json!([set("phone", "+442079460958")]))
        .await;
    let merged = merge(&app, "merge", &a, &b, "steward").await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.text);
    assert_eq!(merged.body["survivor"], a.as_str());
    assert_eq!(merged.body["absorbed"], b.as_str());
    assert!(
        merged.body["survivor_fields"]
            .as_array()
            .unwrap()
            .contains(&json!("phone")),
        "{}",
        merged.body
    );

    // A read of the absorbed record answers 307 with the survivor's URL.
    let client = no_redirects();
    let read = Reply::from(
        client
            .get(app.url(&format!("/v1/customers/{b}")))
            .bearer_auth(app.token("steward"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    read.problem(307, "merged_into");
    assert_eq!(read.body["merged_into"], a.as_str());
    assert_eq!(
        read.header("location"),
        Some(format!("/v1/customers/{a}").as_str())
    );
    // A command to it too, to the survivor's commands.
    let command = Reply::from(
        client
            .post(app.url(&format!("/v1/customers/{b}/commands")))
            .bearer_auth(app.token("web_app"))
            .header("Idempotency-Key", "locale-after-merge")
            .json(
                &json!({"provenance": support::provenance(), "changes": [set("locale", "fr-FR")]}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    command.problem(307, "merged_into");
    assert_eq!(
        command.header("location"),
        Some(format!("/v1/customers/{a}/commands").as_str())
    );
    // A client that follows redirects lands on the survivor, the command included.
    let followed = app
        .command(
            "web_app",
            &b,
            "locale-followed",
            json!([set("locale", "fr-FR")]),
        )
        .await;
    assert_eq!(followed.status, StatusCode::OK, "{}", followed.text);
    assert_eq!(followed.body["customer_id"], a.as_str());
    let record = app.get(&format!("/v1/customers/{b}"), "steward").await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.text);
    assert_eq!(record.body["customer_id"], a.as_str());
    // The absorbed record's past is still its own, for auditors.
    let past = app
        .get(
            &format!("/v1/customers/{b}?as_of=2999-01-01T00:00:00Z"),
            "auditor",
        )
        .await;
    assert_eq!(past.status, StatusCode::OK, "{}", past.text);

    // The survivor's phone history shows the absorbed record's event with its provenance,
    // then the adoption.
    let history = app
        .get(
            &format!("/v1/customers/{a}/fields/phone/history"),
            "auditor",
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let events = history.body["events"].as_array().unwrap();
    let shown: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().unwrap().to_owned(),
                e["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        vec![
            (b.clone(), "field_set".to_owned()),
            (a.clone(), "field_adopted".to_owned())
        ]
    );
    assert_eq!(events[0]["provenance"]["source"], "idp");
    assert_eq!(events[1]["data"]["value"], "+442079460958");
}

async fn a_feed_consumer_is_told_of_the_merge_and_the_unmerge(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["phone", "name.*"], "purposes": ["service"],
    }))
    .await;
    let token = app.consumer_token("crm-sync").await;
    let a = app.register("idp", json!([set("name.given", "Ada")])).await;
    let b = app
        .register("idp", json!([set("phone", "+442079460958")]))
        .await;
    consent_to_service(&app, &a).await;
    consent_to_service(&app, &b).await;
    let before = feed(&app, &token).await;
    assert!(before.iter().any(|e| e["subject"] == b.as_str()));

    assert_eq!(
        merge(&app, "merge", &a, &b, "steward").await.status,
        StatusCode::OK
    );
    let after: Vec<Value> = feed(&app, &token)
        .await
        .into_iter()
        .skip(before.len())
        .collect();
    let told: Vec<&Value> = after.iter().filter(|e| e["type"] == MERGED).collect();
    assert_eq!(told.len(), 1, "{after:?}");
    assert_eq!(told[0]["subject"], b.as_str());
    assert_eq!(told[0]["data"]["survivor"], a.as_str());
    assert_eq!(told[0]["data"]["absorbed"], b.as_str());
    // The survivor's phone, taken from B, is sent as A's change.
    assert!(
        after.iter().any(|e| e["subject"] == a.as_str()
            && e["type"] == "idledger.field.changed.v1"
            && e["data"]["field"] == "phone"
            && e["data"]["value"] == "+442079460958"),
        "{after:?}"
    );

    let seen = before.len() + after.len();
    assert_eq!(
        merge(&app, "unmerge", &a, &b, "steward").await.status,
        StatusCode::OK
    );
    let undone: Vec<Value> = feed(&app, &token).await.into_iter().skip(seen).collect();
    assert!(
        undone
            .iter()
            .any(|e| e["type"] == UNMERGED && e["subject"] == b.as_str()),
        "{undone:?}"
    );
    // A no longer has the phone; B's is sent again.
    assert!(
        undone.iter().any(|e| e["subject"] == a.as_str()
            && e["type"] == "idledger.field.cleared.v1"
            && e["data"]["field"] == "phone"),
        "{undone:?}"
    );
    assert!(
        undone.iter().any(|e| e["subject"] == b.as_str()
            && e["type"] == "idledger.field.changed.v1"
            && e["data"]["value"] == "+442079460958"),
        "{undone:?}"
    );
}

async fn merges_are_for_stewards_and_refused_when_they_make_no_sense(engine: Engine) {
    let app = TestApp::start(engine).await;
    let a = app.register("idp", json!([])).await;
    let b = app.register("idp", json!([])).await;
    merge(&app, "merge", &a, &b, "idp")
        .await
        .problem(403, "forbidden_role");
    merge(&app, "merge", &a, &a, "steward")
        .await
        .problem(422, "same_customer");
    merge(&app, "unmerge", &a, &b, "steward")
        .await
        .problem(409, "not_merged");
    let unknown = "01900000-0000-7000-8000-000000000000";
    merge(&app, "merge", &a, unknown, "steward")
        .await
        .problem(404, "not_registered");
    let empty = app
        .send(
            Method::POST,
            &format!("/v1/customers/{a}/merge"),
            Some("steward"),
            None,
            Some(&json!({"absorbed": b, "reason": "  "})),
        )
        .await;
    empty.problem(422, "invalid_value");
    assert_eq!(
        merge(&app, "merge", &a, &b, "steward").await.status,
        StatusCode::OK
    );
    merge(&app, "merge", &a, &b, "steward")
        .await
        .problem(409, "already_merged");
    // The erasure of the absorbed record goes to the survivor, and the survivor's takes both.
    let redirected = Reply::from(
        no_redirects()
            .post(app.url(&format!("/v1/customers/{b}/erasure")))
            .bearer_auth(app.token("admin"))
            .json(&json!({"reason": "subject's request", "actor": {"kind": "agent", "id": "dpo@example.org"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    redirected.problem(307, "merged_into");
    let body =
        json!({"reason": "subject's request", "actor": {"kind": "agent", "id": "dpo@example.org"}});
    let erased = app
        .send(
            Method::POST,
            &format!("/v1/customers/{a}/erasure"),
            Some("admin"),
            None,
            Some(&body),
        )
        .await;
    assert!(erased.status.is_success(), "{}", erased.text);
    for c in [&a, &b] {
        app.get(&format!("/v1/customers/{c}"), "steward")
            .await
            .problem(410, "erased");
    }
}

/// Walks every route of the OpenAPI document with the absorbed record wherever a customer
/// can be named (its path, and the bodies of the routes that take a customer), as whichever
/// role a route lets in. A `merged_into` answer is a 307 with a `Location` naming the
/// survivor where the URL names the absorbed record, a 409 naming the survivor in its body
/// anywhere else, and documented under that status either way.
async fn every_merged_into_answer_can_be_followed(engine: Engine) {
    let app = TestApp::start(engine).await;
    let a = app.register("idp", json!([])).await;
    let b = app.register("idp", json!([])).await;
    let other = app.register("idp", json!([])).await;
    let household = app
        .send(
            Method::POST,
            "/v1/households",
            Some("web_app"),
            Some("hh-b"),
            Some(&json!({"customer_id": b, "provenance": support::provenance()})),
        )
        .await;
    assert_eq!(household.status, StatusCode::CREATED, "{}", household.text);
    let household = household.body["household_id"].as_str().unwrap().to_owned();
    // A proposal of the crm's on B: an exception whose action is a command on B.
    let proposed = app
        .command(
            "crm",
            &b,
            "crm-phone",
            json!([{"op": "propose_value", "field": "phone", "value": "+442079460958"}]),
        )
        .await;
    assert_eq!(proposed.status, StatusCode::OK, "{}", proposed.text);
    let exceptions = app
        .get(
            &format!("/v1/exceptions?kind=proposal&customer={b}"),
            "steward",
        )
        .await;
    let exception = exceptions.body["exceptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        merge(&app, "merge", &a, &b, "steward").await.status,
        StatusCode::OK
    );

    let provenance = support::provenance();
    let bodies: Vec<(&str, &str, Value)> = vec![
        (
            "post",
            "/v1/customers",
            json!({"customer_id": b, "provenance": provenance, "changes": []}),
        ),
        (
            "post",
            "/v1/customers/{customer_id}/commands",
            json!({"provenance": provenance, "changes": [set("locale", "fr-FR")]}),
        ),
        (
            "post",
            "/v1/customers/{customer_id}/erasure",
            json!({"reason": "subject's request", "actor": {"kind": "agent", "id": "dpo"}}),
        ),
        (
            "post",
            "/v1/customers/{customer_id}/restriction",
            json!({"restricted": true, "reason": "contested", "actor": {"kind": "agent", "id": "dpo"}}),
        ),
        (
            "post",
            "/v1/customers/{customer_id}/merge",
            json!({"absorbed": other, "reason": "same person"}),
        ),
        (
            "post",
            "/v1/customers/{customer_id}/unmerge",
            json!({"absorbed": other, "reason": "not the same person"}),
        ),
        (
            "post",
            "/v1/households",
            json!({"customer_id": b, "provenance": provenance}),
        ),
        (
            "put",
            "/v1/households/{household_id}/members/{customer_id}",
            json!({"role": "member", "provenance": provenance}),
        ),
        (
            "delete",
            "/v1/households/{household_id}/members/{customer_id}",
            json!({"provenance": provenance}),
        ),
        (
            "post",
            "/v1/exceptions/{exception_id}/actions",
            json!({"action": "accept"}),
        ),
        (
            "post",
            "/v1/decisions",
            json!({"customer_id": b, "purpose": "service", "fields": ["email"]}),
        ),
        (
            "post",
            "/v1/decisions/batch",
            json!({"customers": [b], "purpose": "service", "fields": ["email"]}),
        ),
    ];

    let doc = app
        .send(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    let client = no_redirects();
    let mut answered = Vec::new();
    let mut wrong = Vec::new();
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let url = path
                .replace("{customer_id}", &b)
                .replace("{household_id}", &household)
                .replace("{exception_id}", &exception)
                .replace("{field}", "locale")
                .replace("{purpose}", "service")
                .replace("{source_id}", "web_app")
                .replace("{consumer_id}", "nobody");
            let url = fill_other_ids(&url);
            let body = bodies
                .iter()
                .find(|(m, p, _)| m == method && p == path)
                .map(|(_, _, body)| body.clone())
                .or_else(|| op.get("requestBody").map(|_| json!({})));
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut reply = None;
            for token in ["steward", "web_app", "admin", "auditor", "consumer"] {
                let mut request = client
                    .request(method.clone(), app.url(&url))
                    .bearer_auth(app.token(token))
                    .header("Idempotency-Key", format!("walk-{token}-{method}-{url}"));
                if let Some(body) = &body {
                    request = request.json(body);
                }
                let r = Reply::from(request.send().await.unwrap()).await;
                let forbidden =
                    r.status == StatusCode::FORBIDDEN && r.body["code"] == "forbidden_role";
                reply = Some(r);
                if !forbidden {
                    break;
                }
            }
            let reply = reply.unwrap();
            let names_b = url.split('/').any(|s| s == b);
            if reply.status.is_redirection() {
                let followable = url.replacen(b.as_str(), a.as_str(), 1);
                if !names_b || reply.header("location") != Some(followable.as_str()) {
                    wrong.push(format!(
                        "{method} {url}: {} {:?}",
                        reply.status, reply.headers
                    ));
                }
            }
            if reply.body["code"] == "merged_into" {
                let status = reply.status.as_u16();
                if status != if names_b { 307 } else { 409 } || reply.body["merged_into"] != a {
                    wrong.push(format!("{method} {url}: {}", reply.text));
                }
                let documented = op["responses"][status.to_string()]["description"]
                    .as_str()
                    .unwrap_or_default();
                if !documented.contains("merged_into") {
                    wrong.push(format!(
                        "{method} {path}: {status} undocumented ({documented})"
                    ));
                }
                answered.push(format!("{method} {path} {status}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // The walk reached the routes that name a customer, in the URL and in the body.
    for expected in [
        "GET /v1/customers/{customer_id} 307",
        "POST /v1/customers/{customer_id}/commands 307",
        "PUT /v1/households/{household_id}/members/{customer_id} 307",
        "DELETE /v1/households/{household_id}/members/{customer_id} 307",
        "POST /v1/households 409",
        "POST /v1/customers 409",
        "POST /v1/exceptions/{exception_id}/actions 409",
    ] {
        assert!(
            answered.iter().any(|a| a == expected),
            "{expected} not among {answered:#?}"
        );
    }
}

/// `path` with every parameter left (`{exception_id}`, `{token_id}`…) an id that names nothing.
fn fill_other_ids(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                uuid::Uuid::now_v7().to_string()
            } else {
                s.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Two customers sharing a verified email, recorded straight through the ledger (as before
/// duplicate detection existed): the administrator's backfill opens their candidate once.
async fn an_administrator_backfills_duplicate_candidates(engine: Engine) {
    use idledger_domain::command::Change;
    use idledger_testkit::builders::{new_customer, run, set};
    let app = TestApp::start(engine).await;
    for _ in 0..2 {
        let customer = new_customer();
        let changes = vec![Change::Register, set("email", json!("ada@example.org"))];
        run(&app.ledger, "idp", customer, changes).await;
    }
    let backfill = |as_: &'static str, dry_run: bool| {
        let app = &app;
        async move {
            app.send(
                Method::POST,
                "/v1/duplicates/backfill",
                Some(as_),
                None,
                Some(&json!({"dry_run": dry_run})),
            )
            .await
        }
    };
    backfill("steward", false)
        .await
        .problem(403, "forbidden_role");
    let open = || async {
        app.get("/v1/exceptions?kind=duplicate_candidate", "steward")
            .await
            .body["exceptions"]
            .as_array()
            .unwrap()
            .len()
    };
    let dry = backfill("admin", true).await;
    assert_eq!(dry.status, StatusCode::OK, "{}", dry.text);
    assert_eq!(
        dry.body,
        json!({"dry_run": true, "customers": 2, "opened": 1, "already_known": 0})
    );
    assert_eq!(open().await, 0);
    let done = backfill("admin", false).await;
    assert_eq!(done.body["opened"], 1, "{}", done.text);
    assert_eq!(open().await, 1);
    let again = backfill("admin", false).await;
    assert_eq!(
        (&again.body["opened"], &again.body["already_known"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(open().await, 1);
}
