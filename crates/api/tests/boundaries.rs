//! The API's boundaries over real HTTP, on both engines: every role against every route, and
//! malformed or hostile input — always the right 4xx, never a 5xx, and nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, TestApp, on_both_engines, provenance};

on_both_engines!(
    every_role_against_every_route,
    malformed_and_hostile_input_is_refused_and_writes_nothing,
    revoked_and_malformed_tokens_are_unauthenticated,
    erasure_makes_the_record_gone,
);

const NAMES: [&str; 6] = ["idp", "consumer", "steward", "auditor", "admin", "dsar"];

async fn every_role_against_every_route(engine: Engine) {
    let app = TestApp::start(engine).await;
    // A field a steward may override alone (name fields are four-eyes).
    let set = json!({"provenance": provenance(), "changes": [{"op": "set_field", "field": "jurisdiction", "value": "DE"}]});
    let erase = json!({"reason": "subject request #1", "actor": {"kind": "agent", "id": "dpo"}});
    // The consumer token's own consumer reads the feed.
    app.add_consumer(
        json!({"id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["service"]}),
    )
    .await;
    let ack = json!({"event_id": "{e}", "customer_id": "{c}", "field": "email", "version": 1, "value_hash": null, "status": "applied"});
    // (method, path, body, roles allowed) — `{c}` is a fresh registered customer whose email
    // was set by event `{e}`, `{k}` a fresh registered consumer, `{n}` a fresh number.
    let routes: Vec<(Method, &str, Option<Value>, &[&str])> = vec![
        (
            Method::POST,
            "/v1/retention/runs",
            Some(json!({"dry_run": true})),
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/customers",
            Some(json!({"provenance": provenance()})),
            &["idp"],
        ),
        (
            Method::POST,
            "/v1/customers/{c}/commands",
            Some(set.clone()),
            &["idp", "steward"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}",
            None,
            &["idp", "steward", "auditor"],
        ),
        // A lookup by an identifier: the reading roles (the idp may read emails).
        (
            Method::GET,
            "/v1/customers?email=ada%40example.org",
            None,
            &["idp", "steward", "auditor"],
        ),
        // The past is for stewards and auditors: a source reads the record only as it is.
        (
            Method::GET,
            "/v1/customers/{c}?as_of=2100-01-01T00:00:00Z",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}/fields/email/history",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::POST,
            "/v1/customers/{c}/erasure",
            Some(erase),
            &["admin"],
        ),
        (
            Method::GET,
            "/v1/exceptions/counts",
            None,
            &["steward", "auditor", "admin"],
        ),
        (
            Method::GET,
            "/v1/approvals",
            None,
            &["steward", "auditor", "admin"],
        ),
        (
            Method::GET,
            "/v1/steward-activity",
            None,
            &["steward", "auditor", "admin"],
        ),
        (
            Method::POST,
            "/v1/customers/{c}/restriction",
            Some(
                json!({"restricted": true, "reason": "art. 18", "actor": {"kind": "agent", "id": "dpo"}}),
            ),
            &["admin"],
        ),
        (
            Method::POST,
            "/v1/consumers",
            Some(
                json!({"id": "new-{n}", "channel": "nats", "fields": ["email"], "purposes": ["service"]}),
            ),
            &["admin"],
        ),
        (Method::GET, "/v1/consumers", None, &["admin"]),
        (Method::GET, "/v1/consumers/{k}", None, &["admin"]),
        (Method::POST, "/v1/consumers/{k}/disable", None, &["admin"]),
        (
            Method::GET,
            "/v1/consumers/{k}/handoffs",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/consumers/{k}/state?customer={c}",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}/handoffs",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}/export",
            None,
            &["admin", "dsar"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}/export?format=csv",
            None,
            &["admin", "dsar"],
        ),
        (
            Method::GET,
            "/v1/customers/{c}/disclosures",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/sources/idp/disclosures",
            None,
            &["steward", "auditor"],
        ),
        (
            Method::GET,
            "/v1/proposals?system_of_record=idp",
            None,
            &["idp", "steward", "auditor", "admin"],
        ),
        (Method::GET, "/v1/feed", None, &["consumer"]),
        (Method::POST, "/v1/acks", Some(ack), &["consumer"]),
        (Method::GET, "/v1/tokens", None, &["admin"]),
        (
            Method::POST,
            "/v1/tokens",
            Some(json!({"role": "auditor", "label": "new {n}"})),
            &["admin"],
        ),
        (Method::GET, "/v1/me", None, &NAMES),
    ];
    let mut checked = 0;
    let email = json!([{"op": "set_field", "field": "email", "value": "ada@example.org"}]);
    // Fills a template's placeholders with a fresh customer, event, consumer and number.
    let fresh = async |n: usize, template: &str, body: Option<&Value>| {
        let (c, e) = app.register_with_events("idp", email.clone()).await;
        let k = format!("k-{n}");
        app.add_consumer(
            json!({"id": k, "channel": "nats", "fields": ["email"], "purposes": ["service"]}),
        )
        .await;
        let fill = |s: &str| {
            s.replace("{c}", &c)
                .replace("{e}", &e[1])
                .replace("{k}", &k)
                .replace("{n}", &n.to_string())
        };
        (
            fill(template),
            body.map(|b| serde_json::from_str::<Value>(&fill(&b.to_string())).unwrap()),
        )
    };
    let mut n = 0;
    for (method, template, body, allowed) in &routes {
        // No token at all.
        n += 1;
        let (path, filled) = fresh(n, template, body.as_ref()).await;
        let reply = app
            .send(method.clone(), &path, None, Some("k"), filled.as_ref())
            .await;
        reply.problem(401, "unauthenticated");
        assert!(
            reply
                .header("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer"))
        );
        for name in NAMES {
            n += 1;
            let (path, filled) = fresh(n, template, body.as_ref()).await;
            let key = format!("k-{name}-{checked}");
            let reply = app
                .send(
                    method.clone(),
                    &path,
                    Some(name),
                    Some(&key),
                    filled.as_ref(),
                )
                .await;
            if allowed.contains(&name) {
                assert!(
                    reply.status.is_success(),
                    "{name} on {method} {template}: {} {}",
                    reply.status,
                    reply.text
                );
            } else {
                let problem = reply.problem(403, "forbidden_role");
                assert!(problem["allowed_roles"].is_array());
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * NAMES.len());
    // Public routes answer everyone.
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/openapi.json",
        "/.well-known/jwks.json",
    ] {
        let reply = app.send(Method::GET, path, None, None, None).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}");
    }
}

async fn malformed_and_hostile_input_is_refused_and_writes_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let c = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "ada@example.org"}]),
        )
        .await;
    let before = app.head().await;
    let cmd = format!("/v1/customers/{c}/commands");
    let set = |field: &str, value: Value| {
        json!({"provenance": provenance(), "changes": [{"op": "set_field", "field": field, "value": value}]})
            .to_string()
    };
    // Nested where the body takes any JSON: serde's recursion limit, not the stack, stops it.
    let deep = format!(
        "{{\"provenance\":{},\"changes\":[{{\"op\":\"set_field\",\"field\":\"name.given\",\"value\":{}{}}}]}}",
        provenance(),
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge = set("name.given", json!("x".repeat(300 * 1024)));
    // (path, content type, body, status, code)
    let cases: Vec<(&str, Option<&str>, String, u16, &str)> = vec![
        (&cmd, Some("application/json"), "{\"provenance\":".to_owned(), 400, "malformed_json"),
        (&cmd, Some("application/json"), "not json at all".to_owned(), 400, "malformed_json"),
        (&cmd, Some("application/json"), deep, 400, "malformed_json"),
        (&cmd, Some("application/json"), "[]".to_owned(), 422, "invalid_body"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": "nope"}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": [], "extra": 1}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), json!({"provenance": {"actor": "me"}, "changes": []}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": [{"op": "teleport"}]}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": [{"op": "set_field", "field": 7, "value": 1}]}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), set("nick.name", json!("Ada")), 422, "unknown_field"),
        (&cmd, Some("application/json"), set("email", json!("ada@@example")), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("email", json!(42)), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("phone", json!("call me")), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("birth_date", json!("31/12/1990")), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("birth_date", json!("2999-01-01")), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("jurisdiction", json!("XX")), 422, "invalid_value"),
        (&cmd, Some("application/json"), set("name.given", json!("Ada\u{0000}")), 422, "invalid_value"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": [{"op": "grant_consent", "purpose": "marketing", "basis": "consent", "notice": {"id": "n", "version": "1", "sha256": "00"}, "channel": "web", "jurisdiction": "DE"}]}).to_string(), 422, "invalid_value"),
        (&cmd, Some("application/json"), json!({"provenance": provenance(), "changes": [{"op": "grant_consent", "purpose": "marketing", "basis": "consent", "notice": {"id": "n", "version": "1", "sha256": "0".repeat(64)}, "channel": "web", "jurisdiction": "DE", "expires_at": "soon"}]}).to_string(), 422, "invalid_body"),
        (&cmd, Some("application/json"), huge, 413, "payload_too_large"),
        (&cmd, Some("text/plain"), set("name.given", json!("Ada")), 415, "unsupported_media_type"),
        (&cmd, None, set("name.given", json!("Ada")), 415, "unsupported_media_type"),
        ("/v1/customers/not-a-uuid/commands", Some("application/json"), set("name.given", json!("Ada")), 404, "invalid_customer_id"),
        ("/v1/customers/6ba7b810-9dad-41d1-80b4-00c04fd430c8/commands", Some("application/json"), set("name.given", json!("Ada")), 404, "invalid_customer_id"),
        ("/v1/customers/%00%ff/commands", Some("application/json"), set("name.given", json!("Ada")), 400, "invalid_path"),
        ("/v1/nowhere", Some("application/json"), "{}".to_owned(), 404, "no_route"),
    ];
    for (i, (path, content_type, body, status, code)) in cases.into_iter().enumerate() {
        let mut request = app
            .client
            .post(app.url(path))
            .bearer_auth(app.token("idp"))
            .header("Idempotency-Key", format!("bad-{i}"))
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        let got = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "case {i} ({path}): {text}");
        assert_eq!(
            headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "case {i}"
        );
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["code"], code, "case {i}: {text}");
    }
    // Headers.
    let no_key = app
        .client
        .post(app.url(&cmd))
        .bearer_auth(app.token("idp"))
        .json(&json!({"provenance": provenance(), "changes": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
    let bad_key = app
        .send(
            Method::POST,
            &cmd,
            Some("idp"),
            Some(&"k".repeat(300)),
            Some(&json!({"provenance": provenance(), "changes": []})),
        )
        .await;
    bad_key.problem(400, "invalid_idempotency_key");
    let wrong_method = app
        .send(
            Method::DELETE,
            &format!("/v1/customers/{c}"),
            Some("idp"),
            None,
            None,
        )
        .await;
    wrong_method.problem(405, "method_not_allowed");
    let bad_query = app
        .get(
            &format!("/v1/customers/{c}?as_of=2026-13-45T00:00:00Z"),
            "auditor",
        )
        .await;
    bad_query.problem(400, "invalid_query");
    let unknown_param = app
        .get(&format!("/v1/customers/{c}?asof=now"), "auditor")
        .await;
    unknown_param.problem(400, "invalid_query");

    assert_eq!(app.head().await, before, "no bad request wrote anything");
    let record = app.get(&format!("/v1/customers/{c}"), "auditor").await;
    assert_eq!(record.body["stream_version"], before);
}

async fn revoked_and_malformed_tokens_are_unauthenticated(engine: Engine) {
    let app = TestApp::start(engine).await;
    let tokens = app.ledger.store().tokens();
    let issued = tokens
        .create(idledger_store::Role::Auditor, None, "temp")
        .await
        .unwrap();
    let me = |auth: String| {
        let app = &app;
        async move {
            app.client
                .get(app.url("/v1/me"))
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        me(format!("Bearer {}", issued.secret)).await.status(),
        StatusCode::OK
    );
    // The use is recorded (off the request's path, so it may take a moment).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokens
        .get(issued.record.id)
        .await
        .unwrap()
        .unwrap()
        .last_used_at
        .is_none()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "last use not recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A rotated token works until its overlap ends; then it is refused like a revoked one.
    let rotated = tokens
        .rotate(issued.record.id, chrono::Duration::zero())
        .await
        .unwrap()
        .unwrap();
    let expired = me(format!("Bearer {}", issued.secret)).await;
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        me(format!("Bearer {}", rotated.secret)).await.status(),
        StatusCode::OK
    );
    let issued = rotated;
    tokens.revoke(issued.record.id).await.unwrap();
    let revoked = me(format!("Bearer {}", issued.secret)).await;
    assert_eq!(revoked.status(), StatusCode::UNAUTHORIZED);
    let body: Value = revoked.json().await.unwrap();
    assert_eq!(body["code"], "invalid_token");
    for auth in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer idl_nope",
        "idl_x",
        "Bearer  ",
    ] {
        let reply = me(auth.to_owned()).await;
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED, "{auth}");
    }
}

async fn erasure_makes_the_record_gone(engine: Engine) {
    let app = TestApp::start(engine).await;
    let c = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "ada@example.org"}]),
        )
        .await;
    let body =
        json!({"reason": "data subject request DSR-7", "actor": {"kind": "agent", "id": "dpo"}});
    let erased = app
        .send(
            Method::POST,
            &format!("/v1/customers/{c}/erasure"),
            Some("admin"),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    assert_eq!(erased.body["source"], "admin");
    assert!(erased.body["erased_at"].is_string());

    app.get(&format!("/v1/customers/{c}"), "auditor")
        .await
        .problem(410, "erased");
    app.get(
        &format!("/v1/customers/{c}?as_of=2030-01-01T00:00:00Z"),
        "auditor",
    )
    .await
    .problem(410, "erased");
    app.get(
        &format!("/v1/customers/{c}/fields/email/history"),
        "auditor",
    )
    .await
    .problem(410, "erased");
    app.command(
        "idp",
        &c,
        "after",
        json!([{"op": "set_field", "field": "name.given", "value": "Ada"}]),
    )
    .await
    .problem(410, "erased");
    app.send(
        Method::POST,
        &format!("/v1/customers/{c}/erasure"),
        Some("admin"),
        None,
        Some(&body),
    )
    .await
    .problem(410, "erased");
    let unknown = uuid::Uuid::now_v7();
    app.send(
        Method::POST,
        &format!("/v1/customers/{unknown}/erasure"),
        Some("admin"),
        None,
        Some(&body),
    )
    .await
    .problem(404, "not_registered");
}
