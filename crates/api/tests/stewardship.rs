//! Reconciliation and the steward's workflow over real HTTP: undelivered and stale detection,
//! snapshot diffs, steward actions (re-push, accept, dismiss, bulk) and their refusals — on both
//! engines — and, end to end with a real NATS and the relay, drift → divergent exception →
//! re-push → the consumer acknowledges → the exception closes itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_relay::{NatsConfig, Relay, RelayConfig, StreamSettings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, feed, grant, on_both_engines};

on_both_engines!(
    a_consumer_that_stops_acking_is_found_undelivered_and_stale,
    a_snapshot_diff_finds_extra_missing_and_different_rows,
    a_snapshot_upload_is_checked_before_it_is_read,
    a_proposal_raises_an_exception_about_its_source,
    accepting_where_the_policy_forbids_steward_override_is_refused,
    only_stewards_act_and_a_dismissal_needs_a_reason,
    accepting_a_consumers_value_records_it_with_the_stewards_provenance,
    acting_on_a_closed_exception_is_a_conflict,
    a_proposal_is_accepted_as_itself,
    a_bulk_dismissal_reports_per_item,
    erasure_closes_a_customers_exceptions_and_drops_their_evidence,
    a_bad_exception_query_is_invalid_query_naming_the_parameter,
    a_restricted_customer_is_owed_nothing_while_restricted,
    exceptions_are_assigned_listed_by_assignee_and_logged_as_activity,
    overdue_follows_the_consumers_sla_and_the_kinds_default_and_counts_show_it,
    a_rejected_approval_changes_nothing_and_erasure_leaves_no_request_or_reason,
);

fn set(field: &str, value: &str) -> Value {
    json!({"op": "set_field", "field": field, "value": value})
}

/// A registered customer with these fields (set by the idp), consenting to `service` if asked.
async fn customer(app: &TestApp, fields: &[(&str, &str)], consents: bool) -> String {
    let changes: Vec<Value> = fields.iter().map(|(f, v)| set(f, v)).collect();
    let c = app.register("idp", json!(changes)).await;
    if consents {
        let reply = app
            .command(
                "consent_portal",
                &c,
                &format!("grant-{c}"),
                json!([grant("service", "DE")]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    c
}

async fn post(app: &TestApp, path: &str, as_: &str, body: &Value) -> Reply {
    app.send(Method::POST, path, Some(as_), None, Some(body))
        .await
}

/// Starts a run through the API and waits for it to finish; returns it.
async fn reconcile(app: &TestApp, consumer: &str) -> Value {
    let started = post(
        app,
        "/v1/reconciliations",
        "steward",
        &json!({"consumer_id": consumer}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let location = started.header("location").unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = app.get(&location, "auditor").await;
        assert_eq!(run.status, StatusCode::OK, "{}", run.text);
        match run.body["status"].as_str() {
            Some("finished") => return run.body,
            Some("failed") => panic!("the run failed: {}", run.text),
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run did not finish: {}",
            run.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exceptions(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/exceptions{query}"), "auditor").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["exceptions"].as_array().unwrap().clone()
}

fn ack_of(event: &Value) -> Value {
    json!({
        "event_id": event["id"], "customer_id": event["subject"], "field": event["data"]["field"],
        "version": event["data"]["version"], "value_hash": event["data"]["value_hash"],
        "status": "applied",
    })
}

async fn given_name(app: &TestApp, c: &str) -> Value {
    let record = app.get(&format!("/v1/customers/{c}"), "steward").await;
    record.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "name.given")
        .map(|f| f["value"].clone())
        .unwrap_or(Value::Null)
}

fn counts(run: &Value) -> &Value {
    &run["report"]["consumers"][0]["counts"]
}

async fn a_consumer_that_stops_acking_is_found_undelivered_and_stale(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email", "name.given"],
        "purposes": ["service"], "sla_secs": 0,
    }))
    .await;
    let c = customer(
        &app,
        &[("email", "ada@example.org"), ("name.given", "Ada")],
        true,
    )
    .await;
    let first = feed(&app, "consumer").await;
    let email_v1 = first
        .iter()
        .find(|e| e["data"]["field"] == "email")
        .unwrap();
    // The consumer applies the email, never the name, then stops acknowledging.
    let acked = post(&app, "/v1/acks", "consumer", &ack_of(email_v1)).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.text);
    let reply = app
        .command(
            "idp",
            &c,
            "email-2",
            json!([set("email", "ada@example.net")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    let run = reconcile(&app, "crm-sync").await;
    assert_eq!(counts(&run)["stale"], 1, "{run}");
    assert_eq!(counts(&run)["undelivered"], 1, "{run}");
    assert_eq!(run["report"]["totals"]["exceptions_opened"], 2, "{run}");
    let stale = exceptions(&app, "?consumer=crm-sync&kind=stale").await;
    assert_eq!(stale.len(), 1);
    assert_eq!(stale[0]["customer_id"], c.as_str());
    assert_eq!(stale[0]["field"], "email");
    // The evidence: the record's version and hash against what the consumer acknowledged.
    assert_eq!(
        stale[0]["detail"]["consumer"]["version"],
        email_v1["data"]["version"]
    );
    assert_eq!(stale[0]["detail"]["record"]["version"], 2);
    assert_eq!(stale[0]["detail"]["run_id"], run["id"]);
    let undelivered = exceptions(&app, "?kind=undelivered").await;
    assert_eq!(undelivered.len(), 1);
    assert_eq!(undelivered[0]["field"], "name.given");
    assert!(undelivered[0]["detail"]["consumer"].is_null());

    // The readable summary says the same.
    let text = app
        .get(
            &format!(
                "/v1/reconciliations/{}?format=text",
                run["id"].as_str().unwrap()
            ),
            "steward",
        )
        .await;
    assert_eq!(text.status, StatusCode::OK);
    assert!(
        text.text.contains("stale") && text.text.contains("undelivered"),
        "{}",
        text.text
    );

    // The consumer catches up on the email: its stale exception closes itself at once.
    let now = feed(&app, "consumer").await;
    let email_v2 = now
        .iter()
        .rev()
        .find(|e| e["data"]["field"] == "email")
        .unwrap();
    assert_eq!(email_v2["data"]["version"], 2);
    let acked = post(&app, "/v1/acks", "consumer", &ack_of(email_v2)).await;
    assert_eq!(acked.status, StatusCode::OK, "{}", acked.text);
    let closed = app
        .get(
            &format!("/v1/exceptions/{}", stale[0]["id"].as_str().unwrap()),
            "auditor",
        )
        .await;
    assert_eq!(closed.body["status"], "resolved", "{}", closed.text);
    assert_eq!(closed.body["resolution"], "auto");
    assert_eq!(closed.body["resolved_by"], "idledger");

    // A second run finds only the name still undelivered: counted again, not duplicated.
    let again = reconcile(&app, "crm-sync").await;
    assert_eq!(counts(&again)["undelivered"], 1, "{again}");
    assert!(counts(&again).get("stale").is_none(), "{again}");
    let open = exceptions(&app, "?consumer=crm-sync").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["kind"], "undelivered");
    assert_eq!(open[0]["occurrences"], 2);
    // Within a long SLA nothing is late yet: a fresh consumer's pending change is in flight.
    app.add_consumer(json!({
        "id": "cdp", "channel": "feed", "fields": ["email"], "purposes": ["service"],
        "sla_secs": 3600,
    }))
    .await;
    let patient = reconcile(&app, "cdp").await;
    assert_eq!(patient["report"]["totals"]["findings"], 0, "{patient}");
    assert_eq!(patient["report"]["totals"]["in_flight"], 1, "{patient}");
}

async fn a_snapshot_diff_finds_extra_missing_and_different_rows(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email", "name.given"],
        "purposes": ["service"],
    }))
    .await;
    let a = customer(
        &app,
        &[("email", "ada@example.org"), ("name.given", "Ada")],
        true,
    )
    .await;
    let b = customer(&app, &[("email", "bob@example.org")], true).await;
    let no_consent = customer(&app, &[("email", "cy@example.org")], false).await;
    let stranger = uuid::Uuid::now_v7();
    let csv = format!(
        "customer_id,field,value\n\
         {a},email,ADA@example.org\n\
         {a},name.given,Ada Lovelace\n\
         {a},phone,+4915112345678\n\
         {no_consent},email,cy@example.org\n\
         {stranger},email,who@example.org\n\
         not-a-uuid,email,x@example.org\n"
    );
    let reply = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let reply = Reply::from(reply).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let run = &reply.body;
    assert_eq!(run["kind"], "snapshot");
    assert_eq!(run["status"], "finished");
    let c = counts(run);
    assert_eq!(c["different"], 1, "{run}");
    assert_eq!(c["missing"], 1, "{run}");
    assert_eq!(c["extra"], 3, "{run}");
    assert_eq!(c["invalid_row"], 1, "{run}");
    assert_eq!(run["report"]["snapshot"]["rows"], 6);
    assert_eq!(
        run["report"]["consumers"][0]["in_sync"], 1,
        "normalised email matches: {run}"
    );

    // The full diff, row by row.
    let findings = app
        .get(
            &format!(
                "/v1/reconciliations/{}/findings?limit=100",
                run["id"].as_str().unwrap()
            ),
            "auditor",
        )
        .await;
    assert_eq!(findings.status, StatusCode::OK, "{}", findings.text);
    let rows: Vec<(String, String, String, String)> = findings.body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["customer_id"].as_str().unwrap().to_owned(),
                f["field"].as_str().unwrap().to_owned(),
                f["detail"]["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect();
    let has = |kind: &str, customer: &str, field: &str, reason: &str| {
        rows.contains(&(
            kind.to_owned(),
            customer.to_owned(),
            field.to_owned(),
            reason.to_owned(),
        ))
    };
    assert!(has("different", &a, "name.given", ""), "{rows:?}");
    assert!(has("extra", &a, "phone", "field_not_selected"), "{rows:?}");
    assert!(has("missing", &b, "email", ""), "{rows:?}");
    assert!(
        has("extra", &no_consent, "email", "not_entitled"),
        "{rows:?}"
    );
    assert!(
        has("extra", &stranger.to_string(), "email", "unknown_customer"),
        "{rows:?}"
    );
    assert!(rows.iter().any(|r| r.0 == "invalid_row"), "{rows:?}");
}

/// A customer with an email and a given name, consenting to `service`; the CRM proposed a
/// given name it does not own; crm-sync acknowledged other values than the record's for both
/// fields, and a run found them divergent.
struct StewardScene {
    app: TestApp,
    c: String,
    /// The CRM's refused command (403 `not_authoritative`, naming its proposal).
    proposed: Reply,
    email_exc: String,
    name_exc: String,
}

async fn steward_scene(engine: Engine) -> StewardScene {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email", "name.given"],
        "purposes": ["service"], "sla_secs": 0,
    }))
    .await;
    let c = customer(
        &app,
        &[("email", "ada@example.org"), ("name.given", "Ada")],
        true,
    )
    .await;
    // The CRM proposes a name it does not own: a proposal exception about the CRM.
    let proposed = app
        .command("crm", &c, "crm-name", json!([set("name.given", "Ada L.")]))
        .await;
    proposed.problem(403, "not_authoritative");
    // The consumer drifts on the email (it holds another hash at the record's version).
    let events = feed(&app, "consumer").await;
    let email = events
        .iter()
        .find(|e| e["data"]["field"] == "email")
        .unwrap();
    let mut drifted = ack_of(email);
    drifted["value_hash"] = json!(format!("hmac-sha256:{}", "0".repeat(64)));
    assert_eq!(
        post(&app, "/v1/acks", "consumer", &drifted).await.status,
        StatusCode::OK
    );
    let name = events
        .iter()
        .find(|e| e["data"]["field"] == "name.given")
        .unwrap();
    let mut name_drift = ack_of(name);
    name_drift["value_hash"] = json!(format!("hmac-sha256:{}", "1".repeat(64)));
    assert_eq!(
        post(&app, "/v1/acks", "consumer", &name_drift).await.status,
        StatusCode::OK
    );
    reconcile(&app, "crm-sync").await;
    let divergent = exceptions(&app, "?kind=divergent&field=email").await;
    assert_eq!(divergent.len(), 1, "{divergent:?}");
    let email_exc = divergent[0]["id"].as_str().unwrap().to_owned();
    let name_exc = exceptions(&app, "?kind=divergent&field=name.given").await[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    StewardScene {
        app,
        c,
        proposed,
        email_exc,
        name_exc,
    }
}

async fn act(app: &TestApp, id: &str, as_: &str, body: Value) -> Reply {
    post(app, &format!("/v1/exceptions/{id}/actions"), as_, &body).await
}

/// Four eyes: `name.given` needs a second steward. The first steward's action waits (202, an
/// approval, nothing recorded); the first steward may not approve it; a second one does.
/// Returns the approval's answer.
async fn accept_with_four_eyes(app: &mut TestApp, exc: &str, body: Value) -> Reply {
    let head = app.head().await;
    let asked = act(app, exc, "steward", body).await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.text);
    assert_eq!(asked.body["event_ids"], json!([]), "{}", asked.text);
    assert_eq!(asked.body["exception"]["status"], "open");
    assert_eq!(
        app.head().await,
        head,
        "a pending approval records no event"
    );
    let approval = asked.body["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(asked.body["approval"]["requested_by"], "steward:steward");
    // Asking again while one waits is a conflict, and the asker cannot approve their own.
    act(
        app,
        exc,
        "steward",
        json!({"action": "accept", "value": "x"}),
    )
    .await
    .problem(409, "approval_pending");
    let approve = format!("/v1/approvals/{approval}/approve");
    post(app, &approve, "steward", &json!({}))
        .await
        .problem(403, "same_steward");
    let second = app.second_steward().await;
    let approved = post(
        app,
        &approve,
        &second,
        &json!({"reason": "checked the passport"}),
    )
    .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    let decided = app
        .get(&format!("/v1/approvals/{approval}"), "auditor")
        .await;
    assert_eq!(decided.body["status"], "approved", "{}", decided.text);
    assert_eq!(decided.body["decided_by"], "steward:steward-b");
    post(app, &approve, &second, &json!({}))
        .await
        .problem(409, "approval_decided");
    approved
}

async fn a_proposal_raises_an_exception_about_its_source(engine: Engine) {
    let StewardScene { app, proposed, .. } = steward_scene(engine).await;
    let proposals = exceptions(&app, "?kind=proposal").await;
    assert_eq!(proposals.len(), 1, "{proposals:?}");
    assert_eq!(proposals[0]["consumer_id"], "crm");
    assert_eq!(
        proposals[0]["detail"]["proposal_id"],
        proposed.body["proposal_id"]
    );
}

async fn accepting_where_the_policy_forbids_steward_override_is_refused(engine: Engine) {
    let StewardScene { app, email_exc, .. } = steward_scene(engine).await;
    let act = async |id: &str, as_: &str, body: Value| act(&app, id, as_, body).await;
    let head = app.head().await;
    // Accepting the consumer's email is refused: the policy forbids steward override there.
    let refused = act(
        &email_exc,
        "steward",
        json!({"action": "accept", "value": "ada@crm.example"}),
    )
    .await;
    refused.problem(403, "forbidden");
    assert_eq!(app.head().await, head, "refused actions write nothing");
    let still = app
        .get(&format!("/v1/exceptions/{email_exc}"), "steward")
        .await;
    assert_eq!(still.body["status"], "open");
}

async fn only_stewards_act_and_a_dismissal_needs_a_reason(engine: Engine) {
    let StewardScene { app, email_exc, .. } = steward_scene(engine).await;
    let act = async |id: &str, as_: &str, body: Value| act(&app, id, as_, body).await;
    let head = app.head().await;
    // Others may read but not act; a dismissal needs a reason.
    act(
        &email_exc,
        "auditor",
        json!({"action": "dismiss", "reason": "x"}),
    )
    .await
    .problem(403, "forbidden_role");
    act(&email_exc, "steward", json!({"action": "dismiss"}))
        .await
        .problem(422, "invalid_value");
    assert_eq!(app.head().await, head, "refused actions write nothing");
    let still = app
        .get(&format!("/v1/exceptions/{email_exc}"), "steward")
        .await;
    assert_eq!(still.body["status"], "open");
}

async fn accepting_a_consumers_value_records_it_with_the_stewards_provenance(engine: Engine) {
    let StewardScene {
        mut app,
        c,
        name_exc,
        ..
    } = steward_scene(engine).await;
    // Accepting the consumer's name is allowed, with a second steward's approval (four
    // eyes): the record takes it, with both stewards' provenance, and the exception is
    // resolved.
    let before = given_name(&app, &c).await;
    let accepted = accept_with_four_eyes(
        &mut app,
        &name_exc,
        json!({"action": "accept", "value": "Ada Lovelace", "reason": "confirmed with the customer"}),
    )
    .await;
    assert_ne!(before, "Ada Lovelace");
    assert_eq!(accepted.body["exception"]["status"], "resolved");
    assert_eq!(accepted.body["exception"]["resolution"], "accepted");
    assert_eq!(accepted.body["exception"]["resolved_by"], "steward:steward");
    assert!(
        accepted.body["exception"]["resolution_note"]
            .as_str()
            .unwrap()
            .ends_with("(approved by steward:steward-b)"),
        "{}",
        accepted.text
    );
    assert_eq!(given_name(&app, &c).await, "Ada Lovelace");
    let history = app
        .get(
            &format!("/v1/customers/{c}/fields/name.given/history"),
            "auditor",
        )
        .await;
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.ends_with(&["field_set", "steward_acted"]),
        "{types:?}"
    );
    let set = &history.body["events"].as_array().unwrap()[types.len() - 2];
    assert_eq!(set["provenance"]["actor"]["id"], "steward", "{set}");
    assert_eq!(set["provenance"]["approved_by"]["id"], "steward-b", "{set}");
    // A steward's own command on a four-eyes field is refused: only the approval makes it.
    let direct = app
        .send(
            Method::POST,
            &format!("/v1/customers/{c}/commands"),
            Some("steward"),
            Some("direct-1"),
            Some(
                &json!({"provenance": {"actor": {"kind": "steward", "id": "steward"}},
                         "changes": [set_field("name.given", "Eve")]}),
            ),
        )
        .await;
    direct.problem(403, "approval_required");
    assert_eq!(given_name(&app, &c).await, "Ada Lovelace");
}

fn set_field(field: &str, value: &str) -> Value {
    set(field, value)
}

async fn acting_on_a_closed_exception_is_a_conflict(engine: Engine) {
    let StewardScene {
        mut app, name_exc, ..
    } = steward_scene(engine).await;
    accept_with_four_eyes(
        &mut app,
        &name_exc,
        json!({"action": "accept", "value": "Ada Lovelace", "reason": "confirmed with the customer"}),
    )
    .await;
    // Acting again on a closed exception is a conflict.
    act(
        &app,
        &name_exc,
        "steward",
        json!({"action": "dismiss", "reason": "again"}),
    )
    .await
    .problem(409, "exception_closed");
}

async fn a_proposal_is_accepted_as_itself(engine: Engine) {
    let StewardScene { mut app, c, .. } = steward_scene(engine).await;
    let proposals = exceptions(&app, "?kind=proposal").await;
    // The proposal is accepted as itself (with a second steward's approval).
    let proposal_exc = proposals[0]["id"].as_str().unwrap().to_owned();
    let taken = accept_with_four_eyes(&mut app, &proposal_exc, json!({"action": "accept"})).await;
    assert_eq!(
        taken.body["exception"]["status"], "resolved",
        "{}",
        taken.text
    );
    assert_eq!(given_name(&app, &c).await, "Ada L.");
}

async fn a_bulk_dismissal_reports_per_item(engine: Engine) {
    let StewardScene {
        mut app,
        c,
        email_exc,
        name_exc,
        ..
    } = steward_scene(engine).await;
    // The name's exception is resolved first, so that no divergent one is left at the end.
    accept_with_four_eyes(
        &mut app,
        &name_exc,
        json!({"action": "accept", "value": "Ada Lovelace", "reason": "confirmed with the customer"}),
    )
    .await;
    // Bulk: dismiss the email exception and an unknown id; each reports its own outcome.
    let ghost = uuid::Uuid::now_v7().to_string();
    let bulk = post(
        &app,
        "/v1/exceptions/actions",
        "steward",
        &json!({"exception_ids": [email_exc, ghost], "action": "dismiss", "reason": "CRM test data"}),
    )
    .await;
    assert_eq!(bulk.status, StatusCode::OK, "{}", bulk.text);
    assert_eq!(bulk.body["succeeded"], 1);
    assert_eq!(bulk.body["failed"], 1);
    assert_eq!(bulk.body["items"][1]["code"], "unknown_exception");
    let dismissed = app
        .get(&format!("/v1/exceptions/{email_exc}"), "auditor")
        .await;
    assert_eq!(dismissed.body["status"], "dismissed");
    assert_eq!(dismissed.body["resolution_note"], "CRM test data");
    let history = app
        .get(
            &format!("/v1/customers/{c}/fields/email/history"),
            "auditor",
        )
        .await;
    let last = history.body["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "steward_acted", "{last}");
    assert_eq!(last["provenance"]["source"], "steward", "{last}");
    assert!(
        exceptions(&app, "?status=open&kind=divergent")
            .await
            .is_empty()
    );
    assert_eq!(exceptions(&app, "?status=all").await.len(), 3);
}

/// The end-to-end: a consumer on NATS applies and acknowledges; drifts; reconciliation
/// opens a divergent exception; a steward re-pushes; the consumer acknowledges the record's
/// value; the exception closes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_is_found_repushed_and_closes_itself_over_nats() {
    let url = std::env::var("IDLEDGER_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
    {
        Ok(Ok(client)) => client,
        _ => panic!(
            "NATS with JetStream is not reachable at {url}: start it with `bash scripts/services.sh` \
             (or `nats-server -js`), or point IDLEDGER_TEST_NATS_URL at one"
        ),
    };
    let app = TestApp::start(Engine::Postgres).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "nats", "fields": ["email"], "purposes": ["service"],
        "sla_secs": 0,
    }))
    .await;
    let c = customer(&app, &[("email", "ada@example.org")], true).await;

    let token = uuid::Uuid::now_v7().simple().to_string();
    let token = &token[token.len() - 12..];
    let nats = NatsConfig {
        url: url.clone(),
        stream: StreamSettings {
            name: format!("S{token}"),
            subject_prefix: format!("s{token}.v1"),
            max_age: Some(Duration::from_secs(600)),
            ..StreamSettings::default()
        },
        ack_subject_prefix: format!("s{token}.acks"),
        ack_stream: format!("S{token}_ACKS"),
        ack_durable: "acks".to_owned(),
        ..NatsConfig::default()
    };
    let mut deliveries = client
        .subscribe(format!("{}.crm-sync.>", nats.stream.subject_prefix))
        .await
        .unwrap();
    let config = RelayConfig {
        source: "urn:idledger:test".to_owned(),
        nats: Some(nats.clone()),
        poll_interval: Duration::from_millis(10),
        registry_refresh: Duration::from_millis(100),
        ..RelayConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(Relay::new(app.ledger.clone(), config).run(stop.clone()));
    let js = async_nats::jetstream::new(client.clone());
    let ack_subject = format!("{}.crm-sync", nats.ack_subject_prefix);
    let ack_key = app
        .ledger
        .ack_key(&idledger_store::delivery::ConsumerId::parse("crm-sync").unwrap());

    let next = async |deliveries: &mut async_nats::Subscriber| -> Value {
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(deliveries),
        )
        .await
        .expect("no delivery within 20 s")
        .unwrap();
        serde_json::from_slice(&msg.payload).unwrap()
    };
    let publish_ack = async |ack: Value| {
        // The relay creates the ack stream when it starts; retry until it exists.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let body = serde_json::to_vec(&ack).unwrap();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Idledger-Signature", ack_key.sign(&body).as_str());
        loop {
            let sent = js
                .publish_with_headers(ack_subject.clone(), headers.clone(), body.clone().into())
                .await;
            if let Ok(ack) = sent
                && ack.await.is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "acks cannot be published"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let state_hash = async || -> Value {
        let state = app
            .get(
                &format!("/v1/consumers/crm-sync/state?customer={c}"),
                "auditor",
            )
            .await;
        state.body["fields"][0]["value_hash"].clone()
    };
    let wait_for = async |what: &str, check: &dyn Fn(&Value) -> bool| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = state_hash().await;
            if check(&value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: consumer state is {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // The consumer applies the email and acknowledges it.
    let change = next(&mut deliveries).await;
    assert_eq!(change["type"], "idledger.field.changed.v1");
    let right_hash = change["data"]["value_hash"].clone();
    publish_ack(ack_of(&change)).await;
    wait_for("the ack", &|h| *h == right_hash).await;
    let clean = reconcile(&app, "crm-sync").await;
    assert_eq!(clean["report"]["totals"]["findings"], 0, "{clean}");

    // It drifts: a local edit in the CRM, acknowledged with the hash it now holds.
    let mut drift = ack_of(&change);
    drift["value_hash"] = json!(format!("hmac-sha256:{}", "d".repeat(64)));
    publish_ack(drift.clone()).await;
    wait_for("the drift", &|h| *h == drift["value_hash"]).await;
    let run = reconcile(&app, "crm-sync").await;
    assert_eq!(counts(&run)["divergent"], 1, "{run}");
    let found = exceptions(&app, "?consumer=crm-sync&kind=divergent").await;
    assert_eq!(found.len(), 1);
    let id = found[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(found[0]["detail"]["record"]["value_hash"], right_hash);
    assert_eq!(
        found[0]["detail"]["consumer"]["value_hash"],
        drift["value_hash"]
    );

    // The steward re-pushes the record's value; the exception stays open until it is applied.
    let repushed = post(
        &app,
        &format!("/v1/exceptions/{id}/actions"),
        "steward",
        &json!({"action": "repush", "reason": "CRM edited the email locally"}),
    )
    .await;
    assert_eq!(repushed.status, StatusCode::OK, "{}", repushed.text);
    assert_eq!(repushed.body["exception"]["status"], "open");
    assert_eq!(
        repushed.body["exception"]["last_action"]["action"],
        "repush"
    );
    let again = next(&mut deliveries).await;
    assert_eq!(again["type"], "idledger.field.changed.v1");
    assert_eq!(again["data"]["repush"]["exception_id"], id.as_str());
    assert_eq!(again["data"]["value_hash"], right_hash);
    assert_eq!(again["data"]["value"], "ada@example.org");
    assert_eq!(again["subject"], c.as_str());

    // The consumer applies it and acknowledges the right hash: the exception closes itself.
    publish_ack(ack_of(&again)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let closed = loop {
        let e = app.get(&format!("/v1/exceptions/{id}"), "auditor").await;
        if e.body["status"] != "open" {
            break e.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open: {}",
            e.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(closed["status"], "resolved", "{closed}");
    assert_eq!(closed["resolution"], "auto");
    // The re-push is in the field's history, with the steward's provenance.
    let history = app
        .get(
            &format!("/v1/customers/{c}/fields/email/history"),
            "auditor",
        )
        .await;
    let last = history.body["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["type"], "steward_acted", "{last}");
    assert_eq!(last["event_id"], again["id"]);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
}

async fn erasure_closes_a_customers_exceptions_and_drops_their_evidence(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["service"],
        "sla_secs": 0,
    }))
    .await;
    let c = customer(&app, &[("email", "ada@example.org")], true).await;
    let kept = customer(&app, &[("email", "bob@example.org")], true).await;
    let run = reconcile(&app, "crm-sync").await;
    assert_eq!(counts(&run)["undelivered"], 2, "{run}");
    let body = json!({"reason": "DSR-9", "actor": {"kind": "agent", "id": "dpo"}});
    let erased = post(&app, &format!("/v1/customers/{c}/erasure"), "admin", &body).await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);

    let all = exceptions(&app, "?status=all").await;
    let of = |customer: &str| {
        all.iter()
            .find(|e| e["customer_id"] == customer)
            .unwrap()
            .clone()
    };
    let gone = of(&c);
    assert_eq!(gone["status"], "resolved");
    assert_eq!(gone["resolution_note"], "the customer was erased");
    assert_eq!(gone["detail"], json!({}), "the evidence held value hashes");
    let other = of(&kept);
    assert_eq!(other["status"], "open");
    assert_eq!(other["detail"]["record"]["version"], 1);
    let findings = app
        .get(
            &format!(
                "/v1/reconciliations/{}/findings",
                run["id"].as_str().unwrap()
            ),
            "auditor",
        )
        .await;
    let customers: Vec<&str> = findings.body["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["customer_id"].as_str().unwrap())
        .collect();
    assert_eq!(customers, [kept.as_str()]);
    // Acting on the erased customer's exception is no longer possible.
    post(
        &app,
        &format!("/v1/exceptions/{}/actions", gone["id"].as_str().unwrap()),
        "steward",
        &json!({"action": "dismiss", "reason": "late"}),
    )
    .await
    .problem(409, "exception_closed");
}

async fn a_bad_exception_query_is_invalid_query_naming_the_parameter(engine: Engine) {
    let app = TestApp::start(engine).await;
    for (query, parameter) in [
        ("?status=any", "status"),
        ("?kind=sideways", "kind"),
        ("?field=shoe_size", "field"),
        ("?limit=0", "limit"),
        ("?older_than_secs=-5", "older_than_secs"),
        // Far beyond the clock's range: refused, never a panic.
        ("?older_than=100000000d", "older_than"),
        ("?customer=12", "customer"),
    ] {
        let reply = app.get(&format!("/v1/exceptions{query}"), "auditor").await;
        let problem = reply.problem(400, "invalid_query");
        assert_eq!(problem["parameter"], parameter, "{query}");
    }
    // The page's age units are the API's too.
    let reply = app
        .get("/v1/exceptions?older_than=4h&status=all", "auditor")
        .await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text);
}

async fn a_snapshot_upload_is_checked_before_it_is_read(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["service"],
    }))
    .await;
    // A consumer uploads only its own snapshot, in a format we read.
    let other = app.consumer_token("cdp").await;
    let refused = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token(&other))
        .header("content-type", "application/x-ndjson")
        .body("")
        .send()
        .await
        .unwrap();
    Reply::from(refused)
        .await
        .problem(403, "forbidden_consumer");
    let unsupported = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "application/pdf")
        .body("%PDF")
        .send()
        .await
        .unwrap();
    Reply::from(unsupported)
        .await
        .problem(415, "unsupported_media_type");
    let unknown = app
        .client
        .post(app.url("/v1/consumers/nobody/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "text/csv")
        .body("customer_id,field,value\n")
        .send()
        .await
        .unwrap();
    Reply::from(unknown).await.problem(404, "unknown_consumer");
}

/// Nothing is delivered while processing is restricted, so reconciliation finds nothing owed
/// for the customer; once the restriction is lifted the undelivered change is found again.
async fn a_restricted_customer_is_owed_nothing_while_restricted(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email"],
        "purposes": ["service"], "sla_secs": 0,
    }))
    .await;
    let c = customer(&app, &[("email", "ada@example.org")], true).await;
    let restriction = |restricted: bool| json!({"restricted": restricted, "reason": "art. 18", "actor": {"kind": "agent", "id": "dpo"}});
    let path = format!("/v1/customers/{c}/restriction");
    let reply = post(&app, &path, "admin", &restriction(true)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let run = reconcile(&app, "crm-sync").await;
    assert!(counts(&run)["undelivered"].is_null(), "{run}");
    assert_eq!(run["report"]["consumers"][0]["customers_checked"], 0);
    assert!(exceptions(&app, &format!("?customer={c}")).await.is_empty());
    let reply = post(&app, &path, "admin", &restriction(false)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let run = reconcile(&app, "crm-sync").await;
    assert_eq!(counts(&run)["undelivered"], 1, "{run}");
}

async fn activity_of(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app
        .get(&format!("/v1/steward-activity{query}"), "auditor")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["activity"].as_array().unwrap().clone()
}

fn actions(activity: &[Value]) -> Vec<&str> {
    activity
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect()
}

fn ids(exceptions: &[Value]) -> Vec<&str> {
    exceptions
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

async fn exceptions_are_assigned_listed_by_assignee_and_logged_as_activity(engine: Engine) {
    let StewardScene {
        mut app,
        email_exc,
        name_exc,
        ..
    } = steward_scene(engine).await;
    let second = app.second_steward().await;
    let assign = async |app: &TestApp, id: &str, as_: &str, to: Value| {
        post(
            app,
            &format!("/v1/exceptions/{id}/assignment"),
            as_,
            &json!({ "assignee": to }),
        )
        .await
    };
    let mine = assign(&app, &name_exc, "steward", json!("me")).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text);
    assert_eq!(mine.body["assigned_to"], "steward:steward");
    assert!(mine.body["assigned_at"].is_string());
    // "Mine" is the asking steward's; another steward's "mine" is their own.
    let listed = app.get("/v1/exceptions?assignee=me", "steward").await;
    assert_eq!(
        ids(listed.body["exceptions"].as_array().unwrap()),
        [name_exc.as_str()]
    );
    let theirs = app.get("/v1/exceptions?assignee=me", &second).await;
    assert!(
        theirs.body["exceptions"].as_array().unwrap().is_empty(),
        "{}",
        theirs.text
    );
    let by_label = exceptions(&app, "?assignee=steward").await;
    assert_eq!(ids(&by_label), [name_exc.as_str()]);
    let nobodys = exceptions(&app, "?assignee=none").await;
    assert!(ids(&nobodys).contains(&email_exc.as_str()));
    assert!(!ids(&nobodys).contains(&name_exc.as_str()));
    // An auditor has no exceptions of their own.
    app.get("/v1/exceptions?assignee=me", "auditor")
        .await
        .problem(400, "invalid_query");
    // Only to a steward who exists; only by a steward; only while open.
    assign(&app, &name_exc, "steward", json!("nobody-here"))
        .await
        .problem(422, "unknown_steward");
    assign(&app, &name_exc, "auditor", json!("me"))
        .await
        .problem(403, "forbidden_role");
    let given = assign(&app, &name_exc, "steward", json!("steward-b")).await;
    assert_eq!(
        given.body["assigned_to"], "steward:steward-b",
        "{}",
        given.text
    );
    let dropped = assign(&app, &name_exc, &second, Value::Null).await;
    assert_eq!(dropped.status, StatusCode::OK, "{}", dropped.text);
    assert!(
        dropped.body.get("assigned_to").is_none(),
        "{}",
        dropped.text
    );
    let dismissed = act(
        &app,
        &email_exc,
        "steward",
        json!({"action": "dismiss", "reason": "CRM test data"}),
    )
    .await;
    assert_eq!(dismissed.status, StatusCode::OK, "{}", dismissed.text);
    assign(&app, &email_exc, "steward", json!("me"))
        .await
        .problem(409, "exception_closed");
    // A steward's own command on the record is in the log too.
    let customer = dismissed.body["exception"]["customer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let direct = app
        .send(
            Method::POST,
            &format!("/v1/customers/{customer}/commands"),
            Some("steward"),
            Some("steward-direct-1"),
            Some(
                &json!({"provenance": {"actor": {"kind": "steward", "id": "steward"},
                                        "reason": "customer moved"},
                         "changes": [set("jurisdiction", "FR")]}),
            ),
        )
        .await;
    assert_eq!(direct.status, StatusCode::OK, "{}", direct.text);
    // What each steward did, when and why, readable by an auditor.
    let stewards = activity_of(&app, "?steward=steward").await;
    assert_eq!(
        actions(&stewards),
        ["assign", "assign", "dismiss", "command"]
    );
    assert_eq!(stewards[3]["field"], "jurisdiction");
    assert_eq!(stewards[3]["detail"], "set_field");
    assert_eq!(stewards[3]["reason"], "customer moved");
    assert_eq!(stewards[3]["event_ids"].as_array().unwrap().len(), 1);
    assert_eq!(stewards[0]["detail"], "steward:steward");
    assert_eq!(stewards[1]["detail"], "steward:steward-b");
    assert_eq!(stewards[2]["reason"], "CRM test data");
    assert_eq!(stewards[2]["exception_id"], email_exc.as_str());
    assert_eq!(stewards[2]["event_ids"].as_array().unwrap().len(), 1);
    let seconds = activity_of(&app, "?steward=steward-b").await;
    assert_eq!(actions(&seconds), ["unassign"]);
    app.get("/v1/steward-activity?limit=0", "auditor")
        .await
        .problem(400, "invalid_query");
    // Present but empty is not a number either (the OpenAPI document says integer).
    app.get("/v1/steward-activity?limit=", "auditor")
        .await
        .problem(400, "invalid_query");
    app.get("/v1/approvals?limit=", "auditor")
        .await
        .problem(400, "invalid_query");
    for query in [
        "/v1/approvals?exception=",
        "/v1/approvals?after=",
        "/v1/steward-activity?customer=",
        "/v1/steward-activity?after=",
    ] {
        app.get(query, "auditor")
            .await
            .problem(400, "invalid_query");
    }
    app.get("/v1/steward-activity", "idp")
        .await
        .problem(403, "forbidden_role");
}

async fn overdue_follows_the_consumers_sla_and_the_kinds_default_and_counts_show_it(
    engine: Engine,
) {
    // The consumer's SLA is 0 s: its divergent exceptions are overdue at once. The proposal
    // is about a source system: its kind's default (3 days) applies.
    let StewardScene {
        app,
        email_exc,
        name_exc,
        ..
    } = steward_scene(engine).await;
    let overdue = exceptions(&app, "?overdue=true").await;
    let mut expected = vec![email_exc.as_str(), name_exc.as_str()];
    expected.sort_unstable();
    let mut got = ids(&overdue);
    got.sort_unstable();
    assert_eq!(got, expected);
    let counts = app.get("/v1/exceptions/counts", "auditor").await;
    assert_eq!(counts.status, StatusCode::OK, "{}", counts.text);
    let kinds = counts.body["kinds"].as_array().unwrap();
    let of = |kind: &str| kinds.iter().find(|k| k["kind"] == kind).unwrap().clone();
    let divergent = of("divergent");
    assert_eq!(divergent["open"], 2);
    assert_eq!(divergent["overdue"], 2);
    assert_eq!(divergent["unassigned"], 2);
    assert_eq!(divergent["under_1h"], 2);
    let proposal = of("proposal");
    assert_eq!(proposal["open"], 1);
    assert_eq!(proposal["overdue"], 0);
    // A consumer with an hour's SLA: its exceptions are not overdue yet.
    app.add_consumer(json!({
        "id": "cdp-sync", "channel": "feed", "fields": ["email"],
        "purposes": ["service"], "sla_secs": 3600,
    }))
    .await;
    let customer_id = app
        .get(&format!("/v1/exceptions/{email_exc}"), "auditor")
        .await
        .body["customer_id"]
        .clone();
    let opened = app
        .ledger
        .store()
        .deliveries()
        .open_exception(&idledger_store::delivery::NewSyncException {
            key: idledger_store::delivery::ExceptionKey::new(
                idledger_store::delivery::ExceptionKind::Stale,
                idledger_store::delivery::ExceptionSubject::parse(
                    idledger_store::delivery::ExceptionKind::Stale,
                    "cdp-sync",
                )
                .unwrap(),
                idledger_domain::ids::CustomerId::from_uuid(
                    customer_id.as_str().unwrap().parse().unwrap(),
                )
                .unwrap(),
                Some(idledger_domain::field::FieldPath::Email),
            )
            .unwrap(),
            detail: json!({}),
            at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    let overdue = exceptions(&app, "?overdue=true").await;
    assert!(!ids(&overdue).contains(&opened.id.to_string().as_str()));
    assert_eq!(exceptions(&app, "?overdue=true&kind=stale").await.len(), 0);
    assert_eq!(exceptions(&app, "?kind=stale").await.len(), 1);
    app.get("/v1/exceptions?overdue=soon", "auditor")
        .await
        .problem(400, "invalid_query");
}

async fn a_rejected_approval_changes_nothing_and_erasure_leaves_no_request_or_reason(
    engine: Engine,
) {
    let StewardScene {
        mut app,
        c,
        name_exc,
        ..
    } = steward_scene(engine).await;
    let second = app.second_steward().await;
    let before = given_name(&app, &c).await;
    let head = app.head().await;
    let asked = act(
        &app,
        &name_exc,
        "steward",
        json!({"action": "accept", "value": "Mallory", "reason": "she called"}),
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.text);
    let approval = asked.body["approval"]["id"].as_str().unwrap().to_owned();
    let pending = app.get("/v1/approvals", "auditor").await;
    assert_eq!(
        pending.body["approvals"][0]["id"],
        approval.as_str(),
        "{}",
        pending.text
    );
    // The sealed value is never shown, in the list or on its own.
    assert!(!pending.text.contains("Mallory"), "{}", pending.text);
    let reject = format!("/v1/approvals/{approval}/reject");
    post(&app, &reject, "steward", &json!({}))
        .await
        .problem(403, "same_steward");
    let rejected = post(&app, &reject, &second, &json!({"reason": "no evidence"})).await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    assert_eq!(rejected.body["status"], "rejected");
    assert_eq!(rejected.body["decision_note"], "no evidence");
    assert_eq!(app.head().await, head, "a rejection records no event");
    assert_eq!(given_name(&app, &c).await, before);
    let still = app
        .get(&format!("/v1/exceptions/{name_exc}"), "auditor")
        .await;
    assert_eq!(still.body["status"], "open");
    post(
        &app,
        &format!("/v1/approvals/{approval}/approve"),
        &second,
        &json!({}),
    )
    .await
    .problem(409, "approval_decided");
    assert!(
        app.get("/v1/approvals", "auditor").await.body["approvals"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let log = activity_of(&app, "").await;
    assert_eq!(actions(&log), ["request_approval", "reject_approval"]);
    assert_eq!(log[0]["reason"], "she called");
    // Asked again, then the customer is erased: the request is gone with them, and the
    // stewards' reasons (which may quote the record) are replaced.
    let again = act(
        &app,
        &name_exc,
        "steward",
        json!({"action": "accept", "value": "Mallory", "reason": "she called again"}),
    )
    .await;
    assert_eq!(again.status, StatusCode::ACCEPTED, "{}", again.text);
    let waiting = again.body["approval"]["id"].as_str().unwrap().to_owned();
    let erased = post(
        &app,
        &format!("/v1/customers/{c}/erasure"),
        "admin",
        &json!({"reason": "DSR-10", "actor": {"kind": "agent", "id": "dpo"}}),
    )
    .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    app.get(&format!("/v1/approvals/{waiting}"), "auditor")
        .await
        .problem(404, "unknown_approval");
    for entry in activity_of(&app, "").await {
        if let Some(reason) = entry["reason"].as_str() {
            assert_eq!(reason, "the customer was erased", "{entry}");
        }
    }
}
