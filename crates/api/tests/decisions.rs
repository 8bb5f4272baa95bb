//! Decisions at the moment of use over HTTP: the processor registry, `POST /v1/decisions` and
//! its batch form, and the decision log — on both engines.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_store::Role;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, NOTICE_SHA, TestApp, grant, on_both_engines};

on_both_engines!(
    a_consents_receipt_is_signed_scoped_and_follows_the_record,
    an_allowing_answer_carries_a_decision_token_anyone_can_verify,
    a_processor_is_answered_per_field_on_the_customers_current_state,
    processors_are_registered_checked_and_disabled,
    a_batch_is_answered_line_by_line_in_the_order_asked,
    the_decision_log_is_for_overseers_and_filters,
    consumers_ask_as_processors_and_pseudonymous_ones_by_alias,
);

async fn add_processor(app: &TestApp, body: Value) -> crate::support::Reply {
    app.send(
        Method::POST,
        "/v1/processors",
        Some("admin"),
        None,
        Some(&body),
    )
    .await
}

fn journey() -> Value {
    json!({"id": "journey", "purposes": ["marketing", "service"], "fields": ["email", "name.*"]})
}

/// A customer with an email and a given name who consented to marketing (in DE).
async fn customer(app: &TestApp, n: u32) -> String {
    let c = app
        .register(
            "idp",
            json!([
                {"op": "set_field", "field": "email", "value": format!("user{n}@example.org")},
                {"op": "set_field", "field": "name.given", "value": "Ada"}
            ]),
        )
        .await;
    let reply = app
        .command(
            "consent_portal",
            &c,
            &format!("grant-{c}"),
            json!([grant("marketing", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    c
}

async fn ask(app: &TestApp, as_: &str, body: Value) -> crate::support::Reply {
    app.send(Method::POST, "/v1/decisions", Some(as_), None, Some(&body))
        .await
}

fn reasons(answer: &Value) -> Vec<(String, Value)> {
    answer["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["field"].as_str().unwrap().to_owned(), f["reason"].clone()))
        .collect()
}

async fn a_processor_is_answered_per_field_on_the_customers_current_state(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    assert_eq!(
        add_processor(&app, journey()).await.status,
        StatusCode::CREATED
    );
    let token = app.token_of(Role::Processor, Some("journey")).await;
    let c = customer(&app, 1).await;

    let reply = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email", "name.given", "phone", "birth_date"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let a = &reply.body;
    assert_eq!(a["allowed"], true, "{a}");
    assert_eq!(a["processor_id"], "journey");
    assert_eq!(a["customer_id"], c.as_str());
    assert_eq!(
        reasons(a),
        [
            ("email".to_owned(), Value::Null),
            ("name.given".to_owned(), Value::Null),
            // Marketing may use the phone; this processor may not.
            ("phone".to_owned(), json!("field_not_allowed_for_processor")),
            (
                "birth_date".to_owned(),
                json!("field_not_needed_for_purpose")
            ),
        ]
    );
    assert_eq!(a["basis"]["basis"], "consent");
    assert_eq!(a["basis"]["notice_sha256"], NOTICE_SHA);
    assert_eq!(a["basis"]["version"], 1);
    assert_eq!(a["basis"]["jurisdiction"], "DE");
    assert_eq!(a["tiers"], json!(["low"]));
    assert!(a["basis"]["event_id"].is_string());
    let version = a["stream_version"].as_u64().unwrap();

    // The high tier wants a substantial identity; this one was never verified.
    let high = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email"], "action": "profile_export"}),
    )
    .await;
    assert_eq!(
        high.body["fields"][0]["reason"], "assurance_too_low",
        "{}",
        high.text
    );
    assert_eq!(high.body["allowed"], false);
    assert_eq!(high.body["tiers"], json!(["low", "high"]));

    // A withdrawal committed before the question is read is what the answer sees.
    let reply = app
        .command(
            "consent_portal",
            &c,
            "withdraw",
            json!([{"op": "withdraw_consent", "purpose": "marketing"}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let after = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    assert_eq!(
        after.body["fields"][0]["reason"], "consent_withdrawn",
        "{}",
        after.text
    );
    assert_eq!(after.body["basis"]["withdrawn"], true);
    assert_eq!(after.body["stream_version"].as_u64().unwrap(), version + 1);

    // No record at all for the purpose; a customer nobody registered.
    let none = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "service", "fields": ["email"]}),
    )
    .await;
    assert_eq!(
        none.body["fields"][0]["reason"], "no_consent",
        "{}",
        none.text
    );
    assert_eq!(none.body["basis"], Value::Null);
    let nobody = uuid::Uuid::now_v7();
    let unknown = ask(
        &app,
        &token,
        json!({"customer_id": nobody, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    assert_eq!(unknown.body["fields"][0]["reason"], "unknown_customer");

    // Erased, then restricted: the whole question is refused for the customer's sake.
    let d = customer(&app, 2).await;
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{d}/restriction"),
            Some("admin"),
            None,
            Some(&json!({"restricted": true, "reason": "accuracy contested", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let restricted = ask(
        &app,
        &token,
        json!({"customer_id": d, "purpose": "marketing", "fields": ["email", "name.given"]}),
    )
    .await;
    assert_eq!(
        reasons(&restricted.body),
        [
            ("email".to_owned(), json!("restricted")),
            ("name.given".to_owned(), json!("restricted"))
        ]
    );
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{d}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "asked", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let erased = ask(
        &app,
        &token,
        json!({"customer_id": d, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    assert_eq!(
        erased.body["fields"][0]["reason"], "erased",
        "{}",
        erased.text
    );

    // Questions the policy cannot answer are refused, naming the member at fault.
    for (body, field) in [
        (
            json!({"customer_id": c, "purpose": "shoe_size", "fields": ["email"]}),
            "purpose",
        ),
        (
            json!({"customer_id": c, "purpose": "marketing", "fields": []}),
            "fields",
        ),
        (
            json!({"customer_id": c, "purpose": "marketing", "fields": ["shoe"]}),
            "fields",
        ),
        (
            json!({"customer_id": c, "purpose": "marketing", "fields": ["email"], "tier": "top"}),
            "tier",
        ),
        (
            json!({"customer_id": c, "purpose": "marketing", "fields": ["email"], "action": "x"}),
            "action",
        ),
        (
            json!({"customer_id": "nope", "purpose": "marketing", "fields": ["email"]}),
            "customer_id",
        ),
    ] {
        let reply = ask(&app, &token, body).await;
        assert_eq!(
            reply.problem(422, "invalid_value")["field"],
            field,
            "{}",
            reply.text
        );
    }
    ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing"}),
    )
    .await
    .problem(422, "invalid_body");
    // Other roles do not ask.
    ask(
        &app,
        "idp",
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]}),
    )
    .await
    .problem(403, "forbidden_role");
}

async fn processors_are_registered_checked_and_disabled(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    let reply = add_processor(
        &app,
        json!({"id": "ads", "purposes": ["marketing"], "fields": ["email"], "region": "US", "transfer_basis": "scc"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.header("location"), Some("/v1/processors/ads"));
    assert_eq!(reply.body["region"], "US");
    assert_eq!(reply.body["transfer_basis"], "scc");
    add_processor(
        &app,
        json!({"id": "ads", "purposes": ["marketing"], "fields": ["email"]}),
    )
    .await
    .problem(409, "processor_exists");
    // One namespace with consumers, both ways.
    app.add_consumer(json!({"id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["marketing"]}))
        .await;
    add_processor(
        &app,
        json!({"id": "crm-sync", "purposes": ["marketing"], "fields": ["email"]}),
    )
    .await
    .problem(409, "processor_exists");
    app.send(
        Method::POST,
        "/v1/consumers",
        Some("admin"),
        None,
        Some(&json!({"id": "ads", "channel": "feed", "fields": ["email"], "purposes": ["marketing"]})),
    )
    .await
    .problem(409, "consumer_exists");
    for (body, field) in [
        (
            json!({"id": "Bad Id", "purposes": ["marketing"], "fields": ["email"]}),
            "id",
        ),
        (
            json!({"id": "p", "purposes": [], "fields": ["email"]}),
            "processor",
        ),
        (
            json!({"id": "p", "purposes": ["marketing"], "fields": ["shoe"]}),
            "fields",
        ),
        (
            json!({"id": "p", "purposes": ["marketing"], "fields": ["email"], "region": "XX"}),
            "region",
        ),
        (
            json!({"id": "p", "purposes": ["marketing"], "fields": ["email"], "transfer_basis": "scc"}),
            "transfer_basis",
        ),
        (
            json!({"id": "p", "purposes": ["marketing"], "fields": ["email"], "region": "US", "transfer_basis": "trust"}),
            "transfer_basis",
        ),
    ] {
        let reply = add_processor(&app, body).await;
        assert_eq!(
            reply.problem(422, "invalid_value")["field"],
            field,
            "{}",
            reply.text
        );
    }
    add_processor(&app, journey())
        .await
        .status
        .is_success()
        .then_some(())
        .unwrap();
    let list = app.get("/v1/processors", "admin").await;
    let ids: Vec<&str> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ads", "journey"]);
    app.get("/v1/processors", "steward")
        .await
        .problem(403, "forbidden_role");
    app.get("/v1/processors/nobody", "admin")
        .await
        .problem(404, "processor_not_found");

    // A processor abroad on SCCs may have a German customer's data; on nothing it may not.
    let c = customer(&app, 1).await;
    let ads = app.token_of(Role::Processor, Some("ads")).await;
    let q = json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]});
    assert_eq!(ask(&app, &ads, q.clone()).await.body["allowed"], true);
    add_processor(
        &app,
        json!({"id": "ads-nobasis", "purposes": ["marketing"], "fields": ["email"], "region": "US"}),
    )
    .await;
    let bare = app.token_of(Role::Processor, Some("ads-nobasis")).await;
    assert_eq!(
        ask(&app, &bare, q.clone()).await.body["fields"][0]["reason"],
        "transfer_without_basis"
    );

    // Disabled: refused; a token for no registered processor: refused.
    let reply = app
        .send(
            Method::POST,
            "/v1/processors/ads/disable",
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(reply.body["disabled_at"].is_string());
    ask(&app, &ads, q.clone())
        .await
        .problem(403, "processor_disabled");
    let ghost = app.token_of(Role::Processor, Some("ghost")).await;
    ask(&app, &ghost, q).await.problem(403, "unknown_processor");
}

async fn a_batch_is_answered_line_by_line_in_the_order_asked(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    add_processor(&app, journey()).await;
    let token = app.token_of(Role::Processor, Some("journey")).await;
    let a = customer(&app, 1).await;
    let b = app.register("idp", json!([])).await;
    let nobody = uuid::Uuid::now_v7().to_string();
    let reply = app
        .client
        .post(app.url("/v1/decisions/batch"))
        .bearer_auth(app.token(&token))
        .json(&json!({"customers": [a, b, nobody, a], "purpose": "marketing", "fields": ["email"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(
        reply.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = reply.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &Value)> = lines
        .iter()
        .map(|l| {
            (
                l["customer_id"].as_str().unwrap(),
                &l["fields"][0]["reason"],
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (a.as_str(), &Value::Null),
            (b.as_str(), &json!("no_consent")),
            (nobody.as_str(), &json!("unknown_customer")),
            (a.as_str(), &Value::Null),
        ]
    );
    let ids: std::collections::HashSet<&str> = lines
        .iter()
        .map(|l| l["decision_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 4, "one decision each");
    // Every answer is in the log.
    let log = app.get("/v1/decisions?processor=journey", "auditor").await;
    assert_eq!(
        log.body["items"].as_array().unwrap().len(),
        4,
        "{}",
        log.text
    );

    // A bad id anywhere refuses the whole batch before anything is decided.
    let reply = app
        .send(
            Method::POST,
            "/v1/decisions/batch",
            Some(&token),
            None,
            Some(&json!({"customers": [a, "nope"], "purpose": "marketing", "fields": ["email"]})),
        )
        .await;
    assert_eq!(
        reply.problem(422, "invalid_value")["index"],
        1,
        "{}",
        reply.text
    );
    app.send(
        Method::POST,
        "/v1/decisions/batch",
        Some(&token),
        None,
        Some(&json!({"customers": [], "purpose": "marketing", "fields": ["email"]})),
    )
    .await
    .problem(422, "invalid_value");
    let log = app.get("/v1/decisions?processor=journey", "auditor").await;
    assert_eq!(log.body["items"].as_array().unwrap().len(), 4);
}

async fn the_decision_log_is_for_overseers_and_filters(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    add_processor(&app, journey()).await;
    add_processor(
        &app,
        json!({"id": "ads", "purposes": ["marketing"], "fields": ["email"]}),
    )
    .await;
    let journey = app.token_of(Role::Processor, Some("journey")).await;
    let ads = app.token_of(Role::Processor, Some("ads")).await;
    let a = customer(&app, 1).await;
    let b = customer(&app, 2).await;
    let q = |c: &str, fields: Value| json!({"customer_id": c, "purpose": "marketing", "fields": fields});
    let first = ask(&app, &journey, q(&a, json!(["email", "birth_date"]))).await;
    ask(&app, &ads, q(&b, json!(["email"]))).await;
    ask(&app, &ads, q(&a, json!(["name.given"]))).await;

    let by_customer = app
        .get(&format!("/v1/decisions?customer={a}"), "auditor")
        .await;
    let items = by_customer.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{}", by_customer.text);
    let logged = &items[0];
    assert_eq!(logged["decision_id"], first.body["decision_id"]);
    assert_eq!(logged["processor_id"], "journey");
    assert_eq!(logged["customer_id"], a.as_str());
    assert_eq!(logged["allowed"], true);
    assert_eq!(
        logged["fields"][1]["reason"],
        "field_not_needed_for_purpose"
    );
    assert_eq!(logged["basis"], "consent");
    assert_eq!(logged["basis_event_id"], first.body["basis"]["event_id"]);
    assert_eq!(logged["stream_version"], first.body["stream_version"]);
    assert_eq!(logged["policy_version"], first.body["policy_version"]);
    assert!(logged["token_expires_at"].is_string(), "an allowing answer");
    assert_eq!(items[1]["allowed"], false, "ads may not use the given name");
    assert_eq!(items[1]["token_expires_at"], Value::Null);
    assert!(
        !by_customer.text.contains("example.org"),
        "no values in the log"
    );

    let by_processor = app
        .get("/v1/decisions?processor=ads&limit=1", "steward")
        .await;
    assert_eq!(by_processor.body["items"].as_array().unwrap().len(), 1);
    let next = by_processor.body["next_after"].as_u64().unwrap();
    let rest = app
        .get(
            &format!("/v1/decisions?processor=ads&after={next}"),
            "admin",
        )
        .await;
    assert_eq!(rest.body["items"][0]["customer_id"], a.as_str());
    let later = (chrono::Utc::now() + chrono::Duration::hours(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let none = app
        .get(&format!("/v1/decisions?since={later}"), "auditor")
        .await;
    assert_eq!(none.body["items"], json!([]), "{}", none.text);
    let all = app
        .get(&format!("/v1/decisions?until={later}"), "auditor")
        .await;
    assert_eq!(all.body["items"].as_array().unwrap().len(), 3);

    // The export: every matching entry, one per line, whatever the page size.
    let export = app
        .client
        .get(app.url("/v1/decisions?processor=ads&limit=1"))
        .bearer_auth(app.token("auditor"))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    assert_eq!(
        export.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l["processor_id"] == "ads"));
    assert!(lines[0]["seq"].as_u64() < lines[1]["seq"].as_u64());

    // Processors, sources and consumers do not read the log.
    for role in [journey.as_str(), "idp", "consumer", "dsar"] {
        app.get("/v1/decisions", role)
            .await
            .problem(403, "forbidden_role");
    }
    app.get("/v1/decisions?customer=42", "auditor")
        .await
        .problem(400, "invalid_query");
}

async fn consumers_ask_as_processors_and_pseudonymous_ones_by_alias(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    app.add_consumer(json!({"id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["marketing"]}))
        .await;
    let c = customer(&app, 1).await;
    let reply = ask(
        &app,
        "consumer",
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email", "name.given"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(
        reasons(&reply.body),
        [
            ("email".to_owned(), Value::Null),
            (
                "name.given".to_owned(),
                json!("field_not_allowed_for_processor")
            )
        ]
    );

    app.add_consumer(json!({"id": "cdp", "channel": "feed", "fields": ["email"], "purposes": ["marketing"], "pseudonymous": true}))
        .await;
    let cdp = app.consumer_token("cdp").await;
    // It names customers by its alias: the id itself is no name of its. Such a UUID is
    // refused, or (about one in 64 decode to a well-formed id) names no customer; never c.
    let reply = ask(
        &app,
        &cdp,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    match reply.status {
        StatusCode::OK => {
            assert_eq!(
                reply.body["fields"][0]["reason"], "unknown_customer",
                "{}",
                reply.text
            );
        }
        _ => assert_eq!(reply.problem(422, "invalid_value")["field"], "customer_id"),
    }
    let (events, _) = {
        let page = app.get("/v1/feed", &cdp).await;
        let lines: Vec<Value> = page
            .text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, ())
    };
    let alias = events[0]["subject"].as_str().unwrap().to_owned();
    assert_ne!(alias, c);
    let reply = ask(
        &app,
        &cdp,
        json!({"customer_id": alias, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["customer_id"], alias.as_str());
    assert_eq!(reply.body["allowed"], true);
    assert!(!reply.text.contains(&c), "never the id: {}", reply.text);
    // The log, for auditors, holds the id.
    // (Its first question may be logged too, about whatever customer c decoded to.)
    let log = app.get("/v1/decisions?processor=cdp", "auditor").await;
    let items = log.body["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .any(|i| i["customer_id"] == c.as_str() && i["allowed"] == true),
        "{}",
        log.text
    );
    assert!(!log.text.contains(&alias), "never the alias: {}", log.text);

    // A consumer abroad is judged on its region and transfer basis, as a processor is.
    for (id, basis, want) in [
        ("us-plain", None, json!("transfer_without_basis")),
        ("us-scc", Some("scc"), Value::Null),
    ] {
        app.add_consumer(json!({"id": id, "channel": "feed", "fields": ["email"], "purposes": ["marketing"], "region": "US", "transfer_basis": basis}))
            .await;
        let token = app.consumer_token(id).await;
        let reply = ask(
            &app,
            &token,
            json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]}),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert_eq!(reasons(&reply.body), [("email".to_owned(), want)], "{id}");
    }
}

/// Verifies a compact JWS with jwt-compact (another JOSE implementation than the signer's)
/// against the server's public key set; returns its header's kid and its claims.
async fn verify(app: &TestApp, token: &str) -> Result<(String, Value), String> {
    verify_typed(app, token, "idledger-decision+jwt").await
}

async fn verify_typed(app: &TestApp, token: &str, typ: &str) -> Result<(String, Value), String> {
    use jwt_compact::alg::Ed25519;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    let set = app
        .send(Method::GET, "/.well-known/jwks.json", None, None, None)
        .await
        .body;
    let untrusted = UntrustedToken::new(token).map_err(|e| e.to_string())?;
    let kid = untrusted.header().key_id.clone().unwrap_or_default();
    assert_eq!(untrusted.algorithm(), "EdDSA");
    assert_eq!(untrusted.header().token_type.as_deref(), Some(typ));
    let jwk = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .ok_or_else(|| format!("no key {kid} in the set"))?;
    let jwk: JsonWebKey<'_> = serde_json::from_value(jwk.clone()).unwrap();
    let key = ed25519_dalek::VerifyingKey::try_from(&jwk).unwrap();
    let verified = Ed25519
        .validator::<Value>(&key)
        .validate(&untrusted)
        .map_err(|e| e.to_string())?;
    let mut claims = verified.claims().custom.clone();
    claims["exp"] = json!(verified.claims().expiration.map(|t| t.timestamp()));
    claims["iat"] = json!(verified.claims().issued_at.map(|t| t.timestamp()));
    Ok((kid, claims))
}

async fn an_allowing_answer_carries_a_decision_token_anyone_can_verify(engine: Engine) {
    let mut app = TestApp::start_with(
        engine,
        idledger_api::ApiConfig {
            token_key_refresh: std::time::Duration::from_millis(100),
            decision_token_ttl: std::time::Duration::from_secs(120),
            ..idledger_api::ApiConfig::default()
        },
    )
    .await;
    add_processor(&app, journey()).await;
    let token = app.token_of(Role::Processor, Some("journey")).await;
    let c = customer(&app, 1).await;
    let reply = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email", "phone"]}),
    )
    .await;
    let a = &reply.body;
    let jws = a["token"].as_str().unwrap().to_owned();
    let (kid, claims) = verify(&app, &jws).await.unwrap();
    assert_eq!(claims["jti"], a["decision_id"]);
    assert_eq!(claims["sub"], c.as_str());
    assert_eq!(claims["processor"], "journey");
    assert_eq!(claims["purpose"], "marketing");
    assert_eq!(claims["fields"], json!(["email"]), "only what was allowed");
    assert_eq!(claims["basis"], "consent");
    assert_eq!(claims["consent"]["event_id"], a["basis"]["event_id"]);
    assert_eq!(claims["consent"]["version"], 1);
    assert_eq!(claims["consent"]["notice_sha256"], NOTICE_SHA);
    assert_eq!(claims["policy_version"], a["policy_version"]);
    assert_eq!(claims["iss"], "urn:idledger:test");
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        120
    );
    let expires: chrono::DateTime<chrono::Utc> =
        a["token_expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires.timestamp(), claims["exp"].as_i64().unwrap());
    // Tampered: refused.
    let mut parts: Vec<String> = jws.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    assert!(verify(&app, &parts.join(".")).await.is_err());

    // A denial carries none.
    let denied = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["birth_date"]}),
    )
    .await;
    assert_eq!(denied.body["allowed"], false);
    assert!(denied.body.get("token").is_none(), "{}", denied.text);

    // After a rotation elsewhere, new tokens name the new key; the old token still verifies.
    let new_kid = app
        .ledger
        .signing_keys()
        .rotate(idledger_store::jws::TOKEN_PURPOSE)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = ask(
        &app,
        &token,
        json!({"customer_id": c, "purpose": "marketing", "fields": ["email"]}),
    )
    .await;
    let (again_kid, _) = verify(&app, again.body["token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(again_kid, new_kid);
    assert_ne!(again_kid, kid);
    assert!(
        verify(&app, &jws).await.is_ok(),
        "a retired key still verifies"
    );
    // Removed: its tokens no longer verify.
    app.ledger.signing_keys().remove(&kid).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(verify(&app, &jws).await.is_err());

    // Batch answers carry one each.
    let reply = app
        .client
        .post(app.url("/v1/decisions/batch"))
        .bearer_auth(app.token(&token))
        .json(&json!({"customers": [c, c], "purpose": "marketing", "fields": ["email"]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in reply.lines() {
        let answer: Value = serde_json::from_str(line).unwrap();
        let (_, claims) = verify(&app, answer["token"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(claims["jti"], answer["decision_id"]);
    }
}

async fn a_consents_receipt_is_signed_scoped_and_follows_the_record(engine: Engine) {
    let app = TestApp::start(engine).await;
    let c = customer(&app, 1).await;
    let path = format!("/v1/customers/{c}/consents/marketing/receipt");
    let granted = app.get(&path, "auditor").await;
    assert_eq!(granted.status, StatusCode::OK, "{}", granted.text);
    let jws = granted.body["receipt"].as_str().unwrap();
    let (_, claims) = verify_typed(&app, jws, "idledger-consent-receipt+jwt")
        .await
        .unwrap();
    // The claims shown are the claims signed (jwt-compact hands `iat` apart).
    let mut shown = granted.body["claims"].clone();
    assert_eq!(shown["iat"], claims["iat"]);
    shown["exp"] = Value::Null;
    assert_eq!(shown, claims);
    assert_eq!(claims["sub"], c.as_str());
    assert_eq!(claims["state"], "granted");
    assert_eq!(claims["purpose"], "marketing");
    assert_eq!(claims["legal_basis"], "consent");
    assert_eq!(claims["jurisdiction"], "DE");
    assert_eq!(claims["collection_method"], "web");
    assert_eq!(claims["collected_by"], "consent_portal");
    assert_eq!(claims["notice"]["sha256"], NOTICE_SHA);
    assert_eq!(claims["controller"], "Example Retail Ltd");
    assert_eq!(claims["consent_version"], 1);
    assert_eq!(claims["sensitive"], false);
    assert_eq!(claims["receipt_version"], "idledger-consent-receipt-1");
    // The same record, the same receipt.
    assert_eq!(app.get(&path, "steward").await.body["receipt"], jws);

    // Withdrawn: a new receipt, of the withdrawal.
    let reply = app
        .command(
            "consent_portal",
            &c,
            "withdraw",
            json!([{"op": "withdraw_consent", "purpose": "marketing"}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let withdrawn = app.get(&path, "consent_portal").await;
    assert_eq!(withdrawn.status, StatusCode::OK, "{}", withdrawn.text);
    let (_, after) = verify_typed(
        &app,
        withdrawn.body["receipt"].as_str().unwrap(),
        "idledger-consent-receipt+jwt",
    )
    .await
    .unwrap();
    assert_eq!(after["state"], "withdrawn");
    assert_eq!(after["consent_version"], 2);
    assert_ne!(after["jti"], claims["jti"]);
    // The consent portal's read of it is in the disclosure log, as that one field.
    let log = app
        .get(&format!("/v1/customers/{c}/disclosures"), "auditor")
        .await;
    let last = log.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["source_id"], "consent_portal");
    assert_eq!(last["fields"], json!(["consent.marketing"]));
    assert!(claims["notice"].get("url").is_none(), "{claims}");

    // Granted again against a published notice: the receipt names where it is.
    let mut regrant = grant("marketing", "DE");
    regrant["notice"]["url"] = json!("https://example.com/privacy/2026-01");
    let reply = app
        .command("consent_portal", &c, "regrant", json!([regrant]))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let published = app.get(&path, "auditor").await;
    let (_, regranted) = verify_typed(
        &app,
        published.body["receipt"].as_str().unwrap(),
        "idledger-consent-receipt+jwt",
    )
    .await
    .unwrap();
    assert_eq!(
        regranted["notice"]["url"],
        "https://example.com/privacy/2026-01"
    );
    // A URL that is not one is refused with the command, and nothing is recorded.
    let mut bad = grant("marketing", "DE");
    bad["notice"]["url"] = json!("javascript:alert(1)");
    app.command("consent_portal", &c, "bad-url", json!([bad]))
        .await
        .problem(422, "invalid_value");
    assert_eq!(
        app.get(&path, "auditor").await.body["receipt"],
        published.body["receipt"]
    );

    // Who may not, and what is not there.
    app.get(&path, "crm").await.problem(403, "not_readable");
    app.get(&path, "consumer")
        .await
        .problem(403, "forbidden_role");
    app.get(
        &format!("/v1/customers/{c}/consents/service/receipt"),
        "auditor",
    )
    .await
    .problem(404, "no_consent");
    app.get(
        &format!("/v1/customers/{c}/consents/Not%20A%20Purpose/receipt"),
        "auditor",
    )
    .await
    .problem(404, "invalid_purpose");
    let nobody = uuid::Uuid::now_v7();
    app.get(
        &format!("/v1/customers/{nobody}/consents/marketing/receipt"),
        "auditor",
    )
    .await
    .problem(404, "not_found");
}
