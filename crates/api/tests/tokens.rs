//! Token administration over HTTP (`/v1/tokens`) and token scopes, on a real server over both
//! engines: admins create, list, get, rotate and revoke; nobody else may; secrets are shown
//! once and never listed; a created token works, a revoked one is 401; a scoped token is
//! refused (403 `out_of_scope`) outside its scopes, within its role.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, on_both_engines, provenance};

on_both_engines!(
    admins_create_list_rotate_and_revoke_tokens,
    only_admins_manage_tokens,
    token_requests_are_checked,
    scopes_limit_a_token_within_its_role,
    revoking_over_the_api_ends_steward_sessions,
);

/// A request with a bearer secret (not one of the app's named tokens).
async fn with_secret(
    app: &TestApp,
    method: Method,
    path: &str,
    secret: &str,
    body: Option<&Value>,
) -> Reply {
    let mut request = app
        .client
        .request(method, app.url(path))
        .bearer_auth(secret);
    if let Some(body) = body {
        request = request.json(body);
    }
    Reply::from(request.send().await.unwrap()).await
}

async fn create(app: &TestApp, body: Value) -> Reply {
    app.send(Method::POST, "/v1/tokens", Some("admin"), None, Some(&body))
        .await
}

/// Creates a token as the admin; returns its secret and record.
async fn created(app: &TestApp, body: Value) -> (String, Value) {
    let reply = create(app, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    (
        reply.body["token"].as_str().unwrap().to_owned(),
        reply.body["record"].clone(),
    )
}

async fn admins_create_list_rotate_and_revoke_tokens(engine: Engine) {
    let app = TestApp::start(engine).await;

    // Create: the secret once, not to be cached, and where the token is.
    let reply = create(
        &app,
        json!({"role": "source", "subject": "crm", "label": "crm prod", "expires_in": "2d"}),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let secret = reply.body["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("idl_"), "{secret}");
    let record = &reply.body["record"];
    let id = record["id"].as_str().unwrap().to_owned();
    assert_eq!(
        reply.header("location"),
        Some(format!("/v1/tokens/{id}").as_str())
    );
    assert_eq!(
        (
            &record["role"],
            &record["subject"],
            &record["label"],
            &record["live"],
            &record["scopes"]
        ),
        (
            &json!("source"),
            &json!("crm"),
            &json!("crm prod"),
            &json!(true),
            &Value::Null
        )
    );
    let expires: chrono::DateTime<chrono::Utc> =
        record["expires_at"].as_str().unwrap().parse().unwrap();
    let in_two_days = chrono::Utc::now() + chrono::Duration::days(2);
    assert!(
        (in_two_days - expires).num_seconds().abs() < 60,
        "{expires}"
    );

    // The created token works, as the source it speaks for.
    let me = with_secret(&app, Method::GET, "/v1/me", &secret, None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["token_id"], id.as_str());
    assert_eq!(me.body["subject"], "crm");

    // List and get: every token, never a secret or a hash.
    let list = app.get("/v1/tokens", "admin").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let tokens = list.body["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), app.tokens.len() + 1);
    assert!(tokens.iter().any(|t| t["id"] == id.as_str()));
    for secret in app.tokens.values().chain([&secret]) {
        assert!(!list.text.contains(&secret[4..]), "a secret is listed");
    }
    for t in tokens {
        let keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(
            keys.iter()
                .all(|k| !k.contains("hash") && !k.contains("secret") && *k != "token"),
            "{keys:?}"
        );
    }
    let one = app.get(&format!("/v1/tokens/{id}"), "admin").await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text);
    assert_eq!(one.body["label"], "crm prod");
    assert!(!one.text.contains(&secret[4..]));

    // Rotate with no overlap: the new secret works at once, the old one no more.
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{id}/rotate"),
            Some("admin"),
            None,
            Some(&json!({"overlap": "0s"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let rotated = reply.body["token"].as_str().unwrap().to_owned();
    let rotated_id = reply.body["record"]["id"].as_str().unwrap().to_owned();
    assert_ne!(rotated, secret);
    assert_ne!(rotated_id, id);
    assert_eq!(reply.body["record"]["label"], "crm prod");
    assert_eq!(reply.body["record"]["subject"], "crm");
    with_secret(&app, Method::GET, "/v1/me", &secret, None)
        .await
        .problem(401, "invalid_token");
    let me = with_secret(&app, Method::GET, "/v1/me", &rotated, None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    // A rotation with an overlap leaves the old one working meanwhile (the default: a day).
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{rotated_id}/rotate"),
            Some("admin"),
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let newest = reply.body["token"].as_str().unwrap().to_owned();
    for secret in [&rotated, &newest] {
        let me = with_secret(&app, Method::GET, "/v1/me", secret, None).await;
        assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    }

    // Revoke: 401 from then on; again changes nothing.
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{rotated_id}/revoke"),
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["live"], false);
    let revoked_at = reply.body["revoked_at"].clone();
    assert!(revoked_at.is_string());
    with_secret(&app, Method::GET, "/v1/me", &rotated, None)
        .await
        .problem(401, "invalid_token");
    let again = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{rotated_id}/revoke"),
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["revoked_at"], revoked_at);

    // A revoked or expired token is not rotated; an unknown one is not found.
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{rotated_id}/rotate"),
            Some("admin"),
            None,
            Some(&json!({})),
        )
        .await;
    reply.problem(409, "token_not_live");
    let unknown = uuid::Uuid::now_v7();
    app.get(&format!("/v1/tokens/{unknown}"), "admin")
        .await
        .problem(404, "unknown_token");
    app.send(
        Method::POST,
        &format!("/v1/tokens/{unknown}/revoke"),
        Some("admin"),
        None,
        None,
    )
    .await
    .problem(404, "unknown_token");
    app.get("/v1/tokens/not-a-uuid", "admin")
        .await
        .problem(404, "unknown_token");
}

async fn only_admins_manage_tokens(engine: Engine) {
    let app = TestApp::start(engine).await;
    let body = json!({"role": "admin"});
    let any = uuid::Uuid::now_v7();
    for who in ["steward", "auditor", "idp", "consumer", "dsar"] {
        app.get("/v1/tokens", who)
            .await
            .problem(403, "forbidden_role");
        app.send(Method::POST, "/v1/tokens", Some(who), None, Some(&body))
            .await
            .problem(403, "forbidden_role");
        app.send(
            Method::POST,
            &format!("/v1/tokens/{any}/revoke"),
            Some(who),
            None,
            None,
        )
        .await
        .problem(403, "forbidden_role");
    }
    app.send(Method::GET, "/v1/tokens", None, None, None)
        .await
        .problem(401, "unauthenticated");
    // Nothing was created.
    let list = app.get("/v1/tokens", "admin").await;
    assert_eq!(
        list.body["tokens"].as_array().unwrap().len(),
        app.tokens.len()
    );
}

async fn token_requests_are_checked(engine: Engine) {
    let app = TestApp::start(engine).await;
    for (body, field) in [
        (json!({"role": "wizard"}), "role"),
        (json!({"role": "source"}), "subject"),
        (
            json!({"role": "source", "subject": "Not Valid!"}),
            "subject",
        ),
        (json!({"role": "source", "subject": "steward"}), "subject"),
        (
            json!({"role": "consumer", "subject": "Crm Sync"}),
            "subject",
        ),
        (json!({"role": "auditor", "subject": "crm"}), "subject"),
        (json!({"role": "auditor", "label": "  "}), "label"),
        (
            json!({"role": "auditor", "label": "x".repeat(201)}),
            "label",
        ),
        (json!({"role": "auditor", "expires_in": "5x"}), "expires_in"),
        (json!({"role": "auditor", "scopes": []}), "scopes"),
        (
            json!({"role": "auditor", "scopes": ["everything"]}),
            "scopes",
        ),
    ] {
        let reply = create(&app, body.clone()).await;
        let problem = reply.problem(422, "invalid_value");
        assert_eq!(problem["field"], field, "{body}: {}", reply.text);
    }
    create(&app, json!({"role": "auditor", "secret": "mine"}))
        .await
        .problem(422, "invalid_body");
    app.send(
        Method::POST,
        &format!("/v1/tokens/{}/rotate", uuid::Uuid::now_v7()),
        Some("admin"),
        None,
        Some(&json!({"overlap": "forever"})),
    )
    .await
    .problem(422, "invalid_value");
    let list = app.get("/v1/tokens", "admin").await;
    assert_eq!(
        list.body["tokens"].as_array().unwrap().len(),
        app.tokens.len(),
        "nothing created"
    );
    // Defaults: the label is the role and the subject; no expiry, no scopes.
    let (_, record) = created(&app, json!({"role": "consumer", "subject": "crm-sync"})).await;
    assert_eq!(record["label"], "consumer crm-sync");
    assert_eq!(record["expires_at"], Value::Null);
    assert_eq!(record["scopes"], Value::Null);
}

async fn scopes_limit_a_token_within_its_role(engine: Engine) {
    let app = TestApp::start(engine).await;

    // A source limited to commands registers customers, and reads nothing.
    let (idp, record) = created(
        &app,
        json!({"role": "source", "subject": "idp", "scopes": ["commands", "commands"]}),
    )
    .await;
    assert_eq!(record["scopes"], json!(["commands"]));
    let reply = Reply::from(
        app.client
            .post(app.url("/v1/customers"))
            .bearer_auth(&idp)
            .header("Idempotency-Key", "scoped-registration")
            .json(&json!({"provenance": provenance(), "changes": []}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let customer = reply.body["customer_id"].as_str().unwrap().to_owned();
    let reply = with_secret(
        &app,
        Method::GET,
        &format!("/v1/customers/{customer}"),
        &idp,
        None,
    )
    .await;
    let problem = reply.problem(403, "out_of_scope");
    assert_eq!(problem["scope"], "reads");
    assert_eq!(problem["token_scopes"], json!(["commands"]));
    let me = with_secret(&app, Method::GET, "/v1/me", &idp, None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text);
    assert_eq!(me.body["scopes"], json!(["commands"]));

    // A steward limited to reads lists exceptions, acts on none, and does not get the page.
    let (reader, _) = created(&app, json!({"role": "steward", "scopes": ["reads"]})).await;
    let list = with_secret(&app, Method::GET, "/v1/exceptions", &reader, None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let act = with_secret(
        &app,
        Method::POST,
        &format!("/v1/exceptions/{}/actions", uuid::Uuid::now_v7()),
        &reader,
        Some(&json!({"action": "dismiss", "reason": "no"})),
    )
    .await;
    act.problem(403, "out_of_scope");
    let page = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(app.url("/steward/login"))
        .form(&[("token", reader.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::FORBIDDEN);
    assert!(page.headers().get("set-cookie").is_none());

    // Scopes never widen a role: an auditor with the commands scope still sends no command.
    let (auditor, _) = created(&app, json!({"role": "auditor", "scopes": ["commands"]})).await;
    let reply = with_secret(
        &app,
        Method::POST,
        &format!("/v1/customers/{customer}/commands"),
        &auditor,
        Some(&json!({"provenance": provenance(), "changes": []})),
    )
    .await;
    reply.problem(403, "forbidden_role");

    // A consumer limited to acks reads no feed.
    let (acker, _) = created(
        &app,
        json!({"role": "consumer", "subject": "crm-sync", "scopes": ["acks"]}),
    )
    .await;
    with_secret(&app, Method::GET, "/v1/feed", &acker, None)
        .await
        .problem(403, "out_of_scope");
}

async fn revoking_over_the_api_ends_steward_sessions(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (steward, record) = created(&app, json!({"role": "steward", "label": "ann"})).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(app.url("/steward/login"))
        .form(&[("token", steward.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = |cookie: String| {
        let (client, url) = (client.clone(), app.url("/steward"));
        async move {
            client
                .get(url)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(page(cookie.clone()).await, StatusCode::OK);
    let id = record["id"].as_str().unwrap();
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/tokens/{id}/revoke"),
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(page(cookie).await, StatusCode::SEE_OTHER);
}
