//! `GET /.well-known/jwks.json` over real HTTP, on both engines: public, cacheable, the key in
//! use; after a rotation elsewhere (`idledger keys rotate`), both kids within the signer's
//! bound; a token the server's signer made verifies with the served set; a removed key leaves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::Utc;
use idledger_api::ApiConfig;
use idledger_store::TokenSigner;
use idledger_store::jws::{self, TOKEN_PURPOSE};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Engine, TestApp, on_both_engines};

on_both_engines!(the_key_set_is_public_and_follows_rotations);

const REFRESH: Duration = Duration::from_millis(200);

async fn the_key_set_is_public_and_follows_rotations(engine: Engine) {
    let app = TestApp::start_with(
        engine,
        ApiConfig {
            token_key_refresh: REFRESH,
            ..ApiConfig::default()
        },
    )
    .await;
    let kids = |reply: &support::Reply| -> Vec<String> {
        reply.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect()
    };

    // No token needed; the first request creates the key tokens will be signed with.
    let reply = app
        .send(Method::GET, "/.well-known/jwks.json", None, None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("cache-control"), Some("max-age=60"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let first = kids(&reply);
    assert_eq!(first.len(), 1, "{}", reply.text);
    let key = &reply.body["keys"][0];
    assert_eq!(
        (&key["kty"], &key["crv"], &key["alg"], &key["use"]),
        (
            &json!("OKP"),
            &json!("Ed25519"),
            &json!("EdDSA"),
            &json!("sig")
        )
    );
    let in_use = app
        .ledger
        .signing_keys()
        .in_use(TOKEN_PURPOSE)
        .await
        .unwrap();
    assert_eq!(first, [in_use.kid.as_str()]);
    // A token signed as the server signs verifies with the served set alone.
    let signer = TokenSigner::new(app.ledger.signing_keys(), REFRESH);
    let token = signer
        .sign("receipt+jwt", &json!({"purpose": "marketing"}))
        .await
        .unwrap();
    let served = jws::keys_from_jwks(&reply.body).unwrap();
    assert_eq!(
        jws::verify_compact_at(&token, &served, Utc::now())
            .unwrap()
            .kid,
        in_use.kid
    );

    // Rotated by another process (as `idledger keys rotate` does): both kids within the bound.
    let new_kid = app
        .ledger
        .signing_keys()
        .rotate(TOKEN_PURPOSE)
        .await
        .unwrap();
    tokio::time::sleep(REFRESH + Duration::from_millis(50)).await;
    let reply = app
        .send(Method::GET, "/.well-known/jwks.json", None, None, None)
        .await;
    assert_eq!(kids(&reply), [in_use.kid.clone(), new_kid.clone()]);
    let served = jws::keys_from_jwks(&reply.body).unwrap();
    assert!(jws::verify_compact(&token, &served).is_ok());

    // A removed key leaves the set; its tokens no longer verify with it.
    app.ledger.signing_keys().remove(&in_use.kid).await.unwrap();
    tokio::time::sleep(REFRESH + Duration::from_millis(50)).await;
    let reply = app
        .send(
            Method::GET,
            "/.well-known/jwks.json",
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(kids(&reply), [new_kid]);
    let served = jws::keys_from_jwks(&reply.body).unwrap();
    assert!(jws::verify_compact(&token, &served).is_err());

    // It is in the OpenAPI document, public.
    let doc = app.get("/v1/openapi.json", "admin").await;
    let op = &doc.body["paths"]["/.well-known/jwks.json"]["get"];
    assert!(op.is_object(), "{}", doc.text);
    assert!(op.get("security").is_none(), "{op}");
}
