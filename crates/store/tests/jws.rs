//! Token signing keys on both engines: rotation keeps old tokens verifying until their key is
//! removed; the key in use and keys that signed checkpoints are never removed; the cached
//! signer follows a rotation made through it at once and one made elsewhere within its bound.
//! And an independent JOSE implementation (`jwt-compact`) verifies our tokens with the key set.
//!
//! - [x] `SigningKeys::rotate`, `remove`, `list`; `TokenSigner::sign`, `rotate`, `public_keys`,
//!   `verify`, `jwks`; `jws::sign_compact`, `verify_compact`, `jwks`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::Utc;
use idledger_domain::Change;
use idledger_store::TokenSigner;
use idledger_store::jws::{self, JwsError, TOKEN_PURPOSE};
use idledger_store::signing::{CHECKPOINT_PURPOSE, RemoveKeyError};
use serde_json::json;
use support::*;

on_both_engines!(
    a_rotated_key_verifies_until_removed_and_the_key_in_use_stays,
    a_key_that_signed_checkpoints_stays,
    the_cached_signer_follows_rotations,
);

async fn a_rotated_key_verifies_until_removed_and_the_key_in_use_stays(engine: Engine) {
    let store = TestStore::new(engine).await;
    let keys = store.ledger.signing_keys();
    let first = keys.in_use(TOKEN_PURPOSE).await.unwrap();
    let claims = json!({"sub": "customer", "decision": "allow"});
    let old_token = jws::sign_compact(&first, "decision+jwt", &claims).unwrap();

    let new_kid = keys.rotate(TOKEN_PURPOSE).await.unwrap();
    assert_ne!(new_kid, first.kid);
    let second = keys.in_use(TOKEN_PURPOSE).await.unwrap();
    assert_eq!(second.kid, new_kid);
    let listed = keys.list(Some(TOKEN_PURPOSE)).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|k| (k.kid.as_str(), k.retired_at.is_some()))
            .collect::<Vec<_>>(),
        [(first.kid.as_str(), true), (new_kid.as_str(), false)]
    );
    assert!(listed[0].retired_at >= Some(listed[0].created_at));
    // Both verify: the new key's tokens and the old key's, still listed.
    let new_token = jws::sign_compact(&second, "decision+jwt", &claims).unwrap();
    assert_eq!(
        jws::verify_compact(&new_token, &listed).unwrap().kid,
        new_kid
    );
    assert_eq!(
        jws::verify_compact(&old_token, &listed).unwrap().claims,
        claims
    );

    // The key in use is never removed; nor is a key that does not exist.
    assert!(matches!(
        keys.remove(&new_kid).await,
        Err(RemoveKeyError::InUse { .. })
    ));
    assert!(matches!(
        keys.remove("0000000000000000").await,
        Err(RemoveKeyError::NotFound { .. })
    ));
    keys.remove(&first.kid).await.unwrap();
    let listed = keys.list(Some(TOKEN_PURPOSE)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        jws::verify_compact(&old_token, &listed).unwrap_err(),
        JwsError::UnknownKey {
            kid: first.kid.clone()
        }
    );
    assert!(jws::verify_compact(&new_token, &listed).is_ok());

    // A purpose's rotation leaves the others' keys alone.
    let checkpoint = keys.in_use(CHECKPOINT_PURPOSE).await.unwrap();
    keys.rotate(TOKEN_PURPOSE).await.unwrap();
    assert_eq!(
        keys.in_use(CHECKPOINT_PURPOSE).await.unwrap().kid,
        checkpoint.kid
    );
    assert_eq!(keys.list(None).await.unwrap().len(), 3);
}

async fn a_key_that_signed_checkpoints_stays(engine: Engine) {
    let store = TestStore::new(engine).await;
    run(&store.ledger, "idp", new_customer(), vec![Change::Register]).await;
    let signed = store.ledger.sign_checkpoint().await.unwrap().unwrap();
    let keys = store.ledger.signing_keys();
    let new_kid = keys.rotate(CHECKPOINT_PURPOSE).await.unwrap();
    let removed = keys.remove(&signed.checkpoint.kid).await;
    assert!(
        matches!(
            &removed,
            Err(RemoveKeyError::SignedCheckpoints { checkpoints: 1, .. })
        ),
        "{removed:?}"
    );
    assert!(
        removed
            .unwrap_err()
            .to_string()
            .contains("signed 1 checkpoint(s)")
    );
    // The stored checkpoint still verifies, and the next one is signed with the new key.
    assert!(store.ledger.verify(&|_, _| {}).await.unwrap().intact());
    run(&store.ledger, "idp", new_customer(), vec![Change::Register]).await;
    let next = store.ledger.sign_checkpoint().await.unwrap().unwrap();
    assert_eq!(next.checkpoint.kid, new_kid);
    assert!(store.ledger.verify(&|_, _| {}).await.unwrap().intact());
}

async fn the_cached_signer_follows_rotations(engine: Engine) {
    let store = TestStore::new(engine).await;
    let here = TokenSigner::new(store.ledger.signing_keys(), Duration::from_millis(300));
    // Another process: its own signer on the same database.
    let elsewhere = TokenSigner::new(store.ledger.signing_keys(), Duration::from_secs(3600));
    let claims = json!({"purpose": "marketing"});
    let first = here.sign("receipt+jwt", &claims).await.unwrap();
    let first_kid = here.key_pair().await.unwrap().kid.clone();
    assert_eq!(elsewhere.key_pair().await.unwrap().kid, first_kid);

    // Through the signer: at once, and its key set has both keys.
    let second_kid = here.rotate().await.unwrap();
    let second = here.sign("receipt+jwt", &claims).await.unwrap();
    let now = Utc::now();
    assert_eq!(
        here.verify(&second, now).await.unwrap().unwrap().kid,
        second_kid
    );
    assert_eq!(
        here.verify(&first, now).await.unwrap().unwrap().kid,
        first_kid
    );
    let set = here.jwks().await.unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 2);

    // Elsewhere: the old key until its cache runs out (an hour here), but an unknown kid
    // reloads its key set, so it verifies the new key's token at once.
    assert_eq!(elsewhere.key_pair().await.unwrap().kid, first_kid);
    assert_eq!(
        elsewhere.verify(&second, now).await.unwrap().unwrap().kid,
        second_kid
    );

    // A rotation elsewhere reaches this signer within its bound.
    let third_kid = elsewhere.rotate().await.unwrap();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(here.key_pair().await.unwrap().kid, third_kid);
    let third = here.sign("receipt+jwt", &claims).await.unwrap();
    assert_eq!(
        elsewhere.verify(&third, now).await.unwrap().unwrap().kid,
        third_kid
    );
    // An expired token verifies as a signature, not as a valid token.
    let expired = here
        .sign("receipt+jwt", &json!({"exp": now.timestamp() - 1}))
        .await
        .unwrap();
    assert_eq!(
        here.verify(&expired, now).await.unwrap().unwrap_err(),
        JwsError::Expired
    );
}

/// Our tokens verify with another JOSE implementation, given only the key set's `x`.
#[tokio::test]
async fn an_independent_jose_implementation_verifies_our_tokens() {
    use jwt_compact::alg::Ed25519;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};

    let store = TestStore::new(Engine::Sqlite).await;
    let signer = TokenSigner::new(store.ledger.signing_keys(), jws::DEFAULT_REFRESH);
    let claims = json!({"sub": "customer", "purpose": "marketing", "exp": 4_102_444_800_i64});
    let token = signer.sign("receipt+jwt", &claims).await.unwrap();
    let set = signer.jwks().await.unwrap();
    let jwk: JsonWebKey<'_> = serde_json::from_value(set["keys"][0].clone()).unwrap();
    let key = ed25519_dalek::VerifyingKey::try_from(&jwk).unwrap();

    let untrusted = UntrustedToken::new(&token).unwrap();
    assert_eq!(untrusted.algorithm(), "EdDSA");
    assert_eq!(
        untrusted.header().key_id.as_deref(),
        set["keys"][0]["kid"].as_str()
    );
    assert_eq!(
        untrusted.header().token_type.as_deref(),
        Some("receipt+jwt")
    );
    let verified = Ed25519
        .validator::<serde_json::Value>(&key)
        .validate(&untrusted)
        .unwrap();
    assert_eq!(verified.claims().custom["purpose"], "marketing");
    assert_eq!(
        verified.claims().expiration.map(|t| t.timestamp()),
        Some(4_102_444_800)
    );

    // And it refuses a tampered one.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"sub":"customer","purpose":"analytics"}"#)
    };
    let tampered = parts.join(".");
    let untrusted = UntrustedToken::new(&tampered).unwrap();
    assert!(
        Ed25519
            .validator::<serde_json::Value>(&key)
            .validate(&untrusted)
            .is_err()
    );
}
