//! Every route over real HTTP, on both engines: happy paths and each refusal code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Engine, TestApp, grant, on_both_engines, provenance};

on_both_engines!(
    register_read_and_change_a_record,
    non_authoritative_write_is_refused_with_the_proposal_it_recorded,
    email_change_takes_effect_only_after_verification,
    consent_granted_and_withdrawn,
    minor_consent_without_guardian_is_refused,
    refusal_codes_over_http,
    idempotent_retry_returns_the_first_response,
    if_match_makes_a_command_conditional,
    history_and_record_as_of_an_instant,
    body_claiming_another_source_is_refused,
    health_readiness_metrics_and_openapi,
);

async fn register_read_and_change_a_record(engine: Engine) {
    let app = TestApp::start(engine).await;
    let reply = app
        .send(
            Method::POST,
            "/v1/customers",
            Some("idp"),
            Some("reg-1"),
            Some(&json!({
                "provenance": provenance(),
                "changes": [
                    {"op": "set_field", "field": "email", "value": "Ada@Example.org"},
                    {"op": "set_field", "field": "name.given", "value": "Ada"},
                ]
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let id = reply.body["customer_id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/customers/{id}").as_str())
    );
    assert_eq!(reply.header("etag"), Some("\"3\""));
    assert_eq!(reply.body["stream_version"], 3);
    assert_eq!(reply.body["replayed"], false);
    assert_eq!(reply.body["outcomes"][0]["outcome"], "registered");
    assert_eq!(reply.body["outcomes"][1]["outcome"], "applied");
    assert!(reply.header("x-request-id").is_some());

    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    assert_eq!(record.status, StatusCode::OK, "{}", record.text);
    assert_eq!(record.header("etag"), Some("\"3\""));
    let email = record.body["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "email")
        .unwrap();
    assert_eq!(email["value"], "ada@example.org", "normalised");
    assert_eq!(email["source"], "idp");
    assert_eq!(email["version"], 1);
    assert!(email["recorded_at"].is_string());

    let changed = app
        .command(
            "web_app",
            &id,
            "c-1",
            json!([{"op": "set_field", "field": "name.given", "value": "Augusta"}]),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert_eq!(changed.body["outcomes"][0]["outcome"], "applied");
    assert_eq!(changed.body["outcomes"][0]["version"], 2);

    let me = app.get("/v1/me", "crm").await;
    assert_eq!(me.body["role"], "source");
    assert_eq!(me.body["subject"], "crm");
}

async fn non_authoritative_write_is_refused_with_the_proposal_it_recorded(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "ada@example.org"}]),
        )
        .await;
    let reply = app
        .command(
            "crm",
            &id,
            "crm-1",
            json!([{"op": "set_field", "field": "email", "value": "ada@crm.example"}]),
        )
        .await;
    let problem = reply.problem(403, "not_authoritative");
    assert_eq!(problem["system_of_record"], "idp");
    assert_eq!(problem["field"], "email");
    let proposal = problem["proposal_id"].as_str().unwrap().to_owned();
    assert!(problem["detail"].as_str().unwrap().contains("idp"));

    let record = app.get(&format!("/v1/customers/{id}"), "steward").await;
    let email = &record.body["fields"][0];
    assert_eq!(email["value"], "ada@example.org", "the record is unchanged");
    assert_eq!(
        record.body["proposals"][0]["proposal_id"],
        proposal.as_str()
    );
    assert_eq!(record.body["proposals"][0]["proposed_by"], "crm");

    // An explicit proposal is a success, not a refusal.
    let proposed = app
        .command(
            "crm",
            &id,
            "crm-2",
            json!([{"op": "propose_value", "field": "phone", "value": "+44 20 7946 0958"}]),
        )
        .await;
    assert_eq!(proposed.status, StatusCode::OK, "{}", proposed.text);
    assert_eq!(proposed.body["outcomes"][0]["outcome"], "proposed");

    // The email policy forbids steward override: accepting is refused.
    let accept = app
        .command(
            "steward",
            &id,
            "st-1",
            json!([{"op": "accept_proposal", "proposal_id": proposal}]),
        )
        .await;
    assert_eq!(accept.status, StatusCode::FORBIDDEN, "{}", accept.text);
}

async fn email_change_takes_effect_only_after_verification(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "old@example.org"}]),
        )
        .await;
    let requested = app
        .command(
            "web_app",
            &id,
            "w-1",
            json!([{"op": "request_change", "field": "email", "value": "new@example.org"}]),
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.text);
    assert_eq!(requested.body["outcomes"][0]["outcome"], "pending");
    let challenge = requested.body["outcomes"][0]["challenge_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret = requested.body["outcomes"][0]["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(secret.len(), 64);
    // A retry gets the same secret back: nothing secret is stored, it is derived.
    let again = app
        .command(
            "web_app",
            &id,
            "w-1",
            json!([{"op": "request_change", "field": "email", "value": "new@example.org"}]),
        )
        .await;
    assert_eq!(again.body["replayed"], true);
    assert_eq!(again.body["outcomes"][0]["secret"], secret.as_str());

    let record = app.get(&format!("/v1/customers/{id}"), "web_app").await;
    assert_eq!(record.body["fields"][0]["value"], "old@example.org");
    assert_eq!(
        record.body["fields"][0]["pending"]["value"],
        "new@example.org"
    );
    assert_eq!(record.body["fields"][0]["pending"]["live"], true);
    // Only the requester sees the pending value and its challenge.
    let by_idp = app.get(&format!("/v1/customers/{id}"), "idp").await;
    assert_eq!(by_idp.body["fields"][0]["value"], "old@example.org");
    assert!(by_idp.body["fields"][0]["pending"].is_null());

    // The challenge id alone confirms nothing.
    app.command(
        "web_app",
        &id,
        "w-2a",
        json!([{"op": "confirm_verification", "field": "email", "challenge_id": challenge, "secret": "0".repeat(64)}]),
    )
    .await
    .problem(403, "wrong_secret");
    let confirmed = app
        .command(
            "web_app",
            &id,
            "w-2",
            json!([{"op": "confirm_verification", "field": "email", "challenge_id": challenge, "secret": secret}]),
        )
        .await;
    assert_eq!(confirmed.status, StatusCode::OK, "{}", confirmed.text);
    let record = app.get(&format!("/v1/customers/{id}"), "web_app").await;
    assert_eq!(record.body["fields"][0]["value"], "new@example.org");
    assert!(record.body["fields"][0]["pending"].is_null());
    assert!(record.body["fields"][0]["verification"]["verified_at"].is_string());
}

async fn consent_granted_and_withdrawn(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app.register("idp", json!([])).await;
    let granted = app
        .command(
            "consent_portal",
            &id,
            "g-1",
            json!([grant("marketing", "DE")]),
        )
        .await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.text);
    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    let consent = &record.body["consents"][0];
    assert_eq!(consent["purpose"], "marketing");
    assert_eq!(consent["status"], "granted");
    assert_eq!(consent["terms"]["notice"]["version"], "2026-01");
    assert_eq!(consent["terms"]["basis"], "consent");

    let withdrawn = app
        .command(
            "consent_portal",
            &id,
            "g-2",
            json!([{"op": "withdraw_consent", "purpose": "marketing"}]),
        )
        .await;
    assert_eq!(withdrawn.status, StatusCode::OK, "{}", withdrawn.text);
    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    assert_eq!(record.body["consents"][0]["status"], "withdrawn");
    assert!(record.body["consents"][0]["withdrawn_at"].is_string());
}

async fn minor_consent_without_guardian_is_refused(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "birth_date", "value": "2015-03-01"}]),
        )
        .await;
    let before = app.head().await;
    let reply = app
        .command(
            "consent_portal",
            &id,
            "m-1",
            json!([grant("marketing", "DE")]),
        )
        .await;
    let problem = reply.problem(422, "guardian_required");
    assert_eq!(problem["change_index"], 0);
    assert_eq!(app.head().await, before, "nothing written");
}

async fn refusal_codes_over_http(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "ada@example.org"}]),
        )
        .await;
    let before = app.head().await;
    let cases = [
        (
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "not-an-email"}]),
            422,
            "invalid_value",
        ),
        (
            "idp",
            json!([{"op": "set_field", "field": "phone", "value": "12345"}]),
            422,
            "invalid_value",
        ),
        (
            "idp",
            json!([{"op": "set_field", "field": "birth_date", "value": "2001-02-30"}]),
            422,
            "invalid_value",
        ),
        (
            "idp",
            json!([{"op": "set_field", "field": "shoe_size", "value": 42}]),
            422,
            "unknown_field",
        ),
        (
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "x@example.org", "expected_version": 7}]),
            409,
            "version_conflict",
        ),
        (
            "idp",
            json!([{"op": "confirm_verification", "field": "email", "challenge_id": "0190f0c8-3d2a-7c1e-9b7a-1f2e3d4c5b6a", "secret": "ab".repeat(32)}]),
            422,
            "invalid_transition",
        ),
        (
            "web_app",
            json!([{"op": "confirm_verification", "field": "email", "challenge_id": "0190f0c8-3d2a-7c1e-9b7a-1f2e3d4c5b6a", "secret": "not hex"}]),
            422,
            "invalid_value",
        ),
        (
            "idp",
            json!([{"op": "register"}]),
            409,
            "already_registered",
        ),
        ("idp", json!([]), 422, "invalid_command"),
        // Whether a source may decide a proposal depends on its field (its system of record
        // may): an unknown one is unknown to every caller (tests/proposals.rs: forbidden).
        (
            "crm",
            json!([{"op": "reject_proposal", "proposal_id": "0190f0c8-3d2a-7c1e-9b7a-1f2e3d4c5b6a", "reason": "no"}]),
            404,
            "unknown_proposal",
        ),
        (
            "steward",
            json!([{"op": "reject_proposal", "proposal_id": "0190f0c8-3d2a-7c1e-9b7a-1f2e3d4c5b6a", "reason": "no"}]),
            404,
            "unknown_proposal",
        ),
        (
            "consent_portal",
            json!([{"op": "withdraw_consent", "purpose": "Not A Purpose!"}]),
            422,
            "invalid_value",
        ),
    ];
    for (i, (source, changes, status, code)) in cases.into_iter().enumerate() {
        let reply = app.command(source, &id, &format!("r-{i}"), changes).await;
        reply.problem(status, code);
    }
    // Actors a source may not speak for: the subject through a source that does not face
    // them, and a steward through any source.
    for (i, (source, kind)) in [("crm", "subject"), ("idp", "steward")].iter().enumerate() {
        let body = json!({
            "provenance": {"actor": {"kind": kind, "id": "someone"}},
            "changes": [{"op": "withdraw_consent", "purpose": "marketing"}],
        });
        let path = format!("/v1/customers/{id}/commands");
        let key = format!("a-{i}");
        let reply = app
            .send(Method::POST, &path, Some(source), Some(&key), Some(&body))
            .await;
        let problem = reply.problem(403, "actor_not_allowed");
        assert_eq!(problem["kind"], *kind);
        assert_eq!(problem["source_id"], *source);
    }
    let unknown = uuid::Uuid::now_v7();
    app.command(
        "idp",
        &unknown.to_string(),
        "r-x",
        json!([{"op": "set_field", "field": "email", "value": "a@b.org"}]),
    )
    .await
    .problem(404, "not_registered");
    app.get(&format!("/v1/customers/{unknown}"), "auditor")
        .await
        .problem(404, "not_found");
    assert_eq!(app.head().await, before, "no refusal wrote anything");

    // The same key with another body.
    let ok = app
        .command(
            "idp",
            &id,
            "k-same",
            json!([{"op": "set_field", "field": "name.given", "value": "Ada"}]),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    app.command(
        "idp",
        &id,
        "k-same",
        json!([{"op": "set_field", "field": "name.given", "value": "Eve"}]),
    )
    .await
    .problem(409, "idempotency_conflict");
}

async fn idempotent_retry_returns_the_first_response(engine: Engine) {
    let app = TestApp::start(engine).await;
    // Registration without a customer id: the retry must land on the same customer.
    let body = json!({"provenance": provenance(), "changes": [{"op": "set_field", "field": "email", "value": "ada@example.org"}]});
    let first = app
        .send(
            Method::POST,
            "/v1/customers",
            Some("idp"),
            Some("once"),
            Some(&body),
        )
        .await;
    let again = app
        .send(
            Method::POST,
            "/v1/customers",
            Some("idp"),
            Some("once"),
            Some(&body),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let mut replayed = again.body.clone();
    replayed["replayed"] = json!(false);
    assert_eq!(replayed, first.body, "same result");
    let head = app.head().await;

    let id = first.body["customer_id"].as_str().unwrap();
    let changes = json!([{"op": "set_field", "field": "name.given", "value": "Ada"}]);
    let one = app.command("idp", id, "c", changes.clone()).await;
    let two = app.command("idp", id, "c", changes).await;
    assert_eq!(one.body["events"], two.body["events"]);
    assert_eq!(two.body["replayed"], true);
    assert_eq!(app.head().await, head + 1, "one event, not two");

    // A refused non-authoritative write replays as the same 403 with the same proposal.
    let crm = json!([{"op": "set_field", "field": "email", "value": "ada@crm.example"}]);
    let a = app.command("crm", id, "crm-k", crm.clone()).await;
    let b = app.command("crm", id, "crm-k", crm).await;
    a.problem(403, "not_authoritative");
    b.problem(403, "not_authoritative");
    assert_eq!(a.body["proposal_id"], b.body["proposal_id"]);
}

async fn if_match_makes_a_command_conditional(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app.register("idp", json!([])).await;
    let record = app.get(&format!("/v1/customers/{id}"), "idp").await;
    let etag = record.header("etag").unwrap().to_owned();
    let send = |tag: String, key: &'static str, name: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.client
                .post(app.url(&format!("/v1/customers/{id}/commands")))
                .bearer_auth(app.token("idp"))
                .header("Idempotency-Key", key)
                .header("If-Match", tag)
                .json(&json!({"provenance": provenance(), "changes": [{"op": "set_field", "field": "name.given", "value": name}]}))
                .send()
                .await
                .unwrap()
        }
    };
    let ok = send(etag.clone(), "im-1", "Ada").await;
    assert_eq!(ok.status(), StatusCode::OK);
    let stale = send(etag, "im-2", "Eve").await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    let body: serde_json::Value = stale.json().await.unwrap();
    assert_eq!(body["code"], "version_conflict");
    assert_eq!(body["actual"], 2);
    let bad = send("\"seven\"".to_owned(), "im-3", "Eve").await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
}

async fn history_and_record_as_of_an_instant(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "first@example.org"}]),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let changed = app
        .command(
            "idp",
            &id,
            "h-1",
            json!([{"op": "set_field", "field": "email", "value": "second@example.org"}]),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK);

    let history = app
        .get(
            &format!("/v1/customers/{id}/fields/email/history"),
            "auditor",
        )
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let events = history.body["events"].as_array().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["type"], "field_set");
    assert_eq!(events[0]["data"]["value"], "first@example.org");
    assert_eq!(events[1]["data"]["value"], "second@example.org");
    assert_eq!(events[1]["provenance"]["source"], "idp");
    assert_eq!(events[1]["provenance"]["actor"]["id"], "sync-job");
    assert_eq!(events[1]["provenance"]["idempotency_key"], "h-1");
    assert_eq!(events[1]["provenance"]["evidence"]["kind"], "email_link");
    assert!(events[1]["policy_version"].as_str().unwrap().len() >= 16);

    let as_of = between.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let then = app
        .client
        .get(app.url(&format!("/v1/customers/{id}")))
        .query(&[("as_of", as_of.as_str())])
        .bearer_auth(app.token("auditor"))
        .send()
        .await
        .unwrap();
    assert_eq!(then.status(), StatusCode::OK);
    let then: serde_json::Value = then.json().await.unwrap();
    assert_eq!(then["fields"][0]["value"], "first@example.org");
    assert_eq!(
        then["as_of"].as_str().map(|s| s.starts_with(&as_of[..19])),
        Some(true)
    );

    app.get(&format!("/v1/customers/{id}?as_of=yesterday"), "auditor")
        .await
        .problem(400, "invalid_query");
    app.get(
        &format!("/v1/customers/{id}?as_of=1999-01-01T00:00:00Z"),
        "auditor",
    )
    .await
    .problem(404, "not_found");
    app.get(
        &format!("/v1/customers/{id}/fields/shoe_size/history"),
        "auditor",
    )
    .await
    .problem(404, "unknown_field");
    let consent = app
        .get(
            &format!("/v1/customers/{id}/fields/consent.marketing/history"),
            "auditor",
        )
        .await;
    assert_eq!(consent.status, StatusCode::OK);
    assert_eq!(consent.body["events"].as_array().unwrap().len(), 0);
}

async fn body_claiming_another_source_is_refused(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app.register("idp", json!([])).await;
    let before = app.head().await;
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{id}/commands"),
            Some("crm"),
            Some("spoof"),
            Some(&json!({"source": "idp", "provenance": provenance(),
                "changes": [{"op": "set_field", "field": "email", "value": "evil@example.org"}]})),
        )
        .await;
    reply.problem(403, "source_mismatch");
    assert_eq!(app.head().await, before);
    // Naming its own source is fine.
    let own = app
        .send(
            Method::POST,
            &format!("/v1/customers/{id}/commands"),
            Some("idp"),
            Some("own"),
            Some(&json!({"source": "idp", "provenance": provenance(),
                "changes": [{"op": "set_field", "field": "email", "value": "ada@example.org"}]})),
        )
        .await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
}

async fn health_readiness_metrics_and_openapi(engine: Engine) {
    let app = TestApp::start(engine).await;
    let health = app.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = app.send(Method::GET, "/readyz", None, None, None).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");

    let id = app.register("idp", json!([])).await;
    app.command(
        "crm",
        &id,
        "m-1",
        json!([{"op": "set_field", "field": "shoe_size", "value": 1}]),
    )
    .await;
    // An invented method is counted, under a bounded label.
    let invented = Method::from_bytes(b"BREW-COFFEE-7").unwrap();
    app.send(invented, "/healthz", None, None, None).await;
    let metrics = app.send(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(!metrics.text.contains("BREW-COFFEE-7"));
    assert!(metrics.text.contains("method=\"other\""));
    for needle in [
        "idledger_http_requests_total",
        "idledger_http_request_duration_seconds_bucket",
        "route=\"/v1/customers\"",
        "idledger_commands_total{result=\"applied\"}",
        "idledger_commands_total{result=\"unknown_field\"}",
        "idledger_append_batch_seconds",
    ] {
        assert!(
            metrics.text.contains(needle),
            "metrics lack {needle}:\n{}",
            metrics.text
        );
    }
    // Both engines write a batch in a few statements, falling back to append by append when
    // they fail, which the answers alone would not show: a bulk statement that never works
    // has no `bulk` batch in this process.
    let path = "idledger_append_batches_total{path=\"bulk\"}";
    assert!(metrics.text.contains(path), "metrics lack {path}");
    assert!(
        !metrics.text.contains("path=\"bulk_failed\""),
        "a bulk append failed:\n{}",
        metrics.text
    );

    let doc = app
        .send(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    assert_eq!(doc.status, StatusCode::OK);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc.body["paths"].as_object().unwrap();
    for (path, method) in [
        ("/v1/customers", "post"),
        ("/v1/customers", "get"),
        ("/v1/customers/{customer_id}/commands", "post"),
        ("/v1/customers/{customer_id}", "get"),
        ("/v1/customers/{customer_id}/fields/{field}/history", "get"),
        ("/v1/customers/{customer_id}/erasure", "post"),
        ("/v1/customers/{customer_id}/handoffs", "get"),
        ("/v1/customers/{customer_id}/disclosures", "get"),
        ("/v1/sources/{source_id}/disclosures", "get"),
        ("/v1/customers/{customer_id}/export", "get"),
        ("/v1/customers/{customer_id}/restriction", "post"),
        ("/v1/households", "post"),
        ("/v1/households/{household_id}", "get"),
        ("/v1/households/{household_id}/members/{customer_id}", "put"),
        (
            "/v1/households/{household_id}/members/{customer_id}",
            "delete",
        ),
        ("/v1/consumers", "post"),
        ("/v1/consumers", "get"),
        ("/v1/consumers/{consumer_id}", "get"),
        ("/v1/consumers/{consumer_id}/disable", "post"),
        ("/v1/consumers/{consumer_id}/handoffs", "get"),
        ("/v1/consumers/{consumer_id}/state", "get"),
        ("/v1/feed", "get"),
        ("/v1/acks", "post"),
        ("/v1/proposals", "get"),
        ("/v1/me", "get"),
        ("/v1/retention/runs", "post"),
        ("/v1/tokens", "get"),
        ("/v1/tokens", "post"),
        ("/v1/tokens/{token_id}", "get"),
        ("/v1/tokens/{token_id}/rotate", "post"),
        ("/v1/tokens/{token_id}/revoke", "post"),
        ("/v1/openapi.json", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/.well-known/jwks.json", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing"
        );
    }
    let schemas = doc.body["components"]["schemas"].as_object().unwrap();
    for schema in [
        "Problem",
        "ChangeBody",
        "CommandRequest",
        "RecordView",
        "CustomerMatchesView",
        "HistoryView",
        "ConsumerRequest",
        "ConsumerView",
        "HandoffPageView",
        "ConsumerStateView",
        "AckDoc",
        "AckView",
        "RetentionReportView",
        "TokenView",
        "TokenRequest",
        "IssuedTokenView",
        "ProposalPageView",
        "HouseholdView",
        "MembershipView",
        "CreateHouseholdRequest",
    ] {
        assert!(schemas.contains_key(schema), "schema {schema} missing");
    }
    assert!(doc.body["components"]["securitySchemes"]["bearer"].is_object());
    // Every path parameter is in its path's template, and query parameters are in the query
    // (a schema-driven client or fuzzer must be able to reach them).
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            let codes = op["responses"].as_object().unwrap();
            if op["security"].as_array().is_some_and(|s| !s.is_empty()) {
                for code in ["401", "403"] {
                    assert!(codes.contains_key(code), "{method} {path} lacks {code}");
                }
            }
            if op.get("requestBody").is_some() {
                for code in ["400", "415", "422"] {
                    assert!(codes.contains_key(code), "{method} {path} lacks {code}");
                }
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                if p["in"] == "path" {
                    assert!(
                        path.contains(&format!("{{{name}}}")),
                        "{method} {path}: '{name}' is declared a path parameter"
                    );
                }
            }
        }
    }
    // The membership routes answer as the commands route does (their shared answers).
    for (path, method) in [
        ("/v1/households", "post"),
        ("/v1/households/{household_id}/members/{customer_id}", "put"),
        (
            "/v1/households/{household_id}/members/{customer_id}",
            "delete",
        ),
    ] {
        let codes = &paths[path][method]["responses"];
        for (code, says) in [
            ("400", "missing_idempotency_key"),
            ("403", "not_authoritative"),
            ("410", "erased"),
            ("412", "version_conflict"),
            ("503", "contention"),
        ] {
            let description = codes[code]["description"].as_str().unwrap_or_default();
            assert!(
                description.contains(says),
                "{method} {path} {code}: {description}"
            );
        }
    }
    let record = &paths["/v1/customers/{customer_id}"]["get"]["parameters"];
    let as_of = record
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "as_of")
        .unwrap();
    assert_eq!(as_of["in"], "query");
    assert_ne!(as_of["required"], true);
}
