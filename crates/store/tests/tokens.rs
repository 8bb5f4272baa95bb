//! API tokens on both engines: stored only as hashes, bound to one principal, revocable.
//!
//! Covers every public method of `Tokens`:
//! - [x] `create` (both tests), `authenticate`, `list`, `revoke`
//!   (`tokens_are_stored_as_hashes_and_revocable`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_store::Role;
use support::{Engine, TestDb, on_both_engines};

on_both_engines!(
    tokens_are_stored_as_hashes_and_revocable,
    tokens_must_match_their_role,
);

async fn tokens_are_stored_as_hashes_and_revocable(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();

    let crm = tokens
        .create(Role::Source, Some("crm"), "crm prod")
        .await
        .unwrap();
    let auditor = tokens.create(Role::Auditor, None, "dpo").await.unwrap();
    assert!(crm.secret.starts_with("idl_"));
    assert_ne!(crm.secret, auditor.secret);

    let found = tokens.authenticate(&crm.secret).await.unwrap().unwrap();
    assert_eq!(found, crm.record);
    assert_eq!(found.subject.as_deref(), Some("crm"));
    assert!(
        tokens
            .authenticate("idl_not-a-token")
            .await
            .unwrap()
            .is_none()
    );
    assert!(tokens.authenticate("").await.unwrap().is_none());

    // The secret is nowhere in the database, only its hash.
    let stored = stored_tokens(&db).await;
    let hash = idledger_store::tokens::token_hash(&crm.secret);
    assert!(stored.iter().any(|(h, _)| *h == hash));
    assert!(
        stored
            .iter()
            .all(|(h, text)| !text.contains(&crm.secret[4..]) && *h != crm.secret.as_bytes())
    );

    let listed = tokens.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(
        listed.iter().map(|t| t.id).collect::<Vec<_>>(),
        [crm.record.id, auditor.record.id],
        "oldest first"
    );

    assert!(tokens.revoke(crm.record.id).await.unwrap());
    assert!(
        !tokens.revoke(crm.record.id).await.unwrap(),
        "second revoke is a no-op"
    );
    assert!(tokens.authenticate(&crm.secret).await.unwrap().is_none());
    assert!(
        tokens
            .authenticate(&auditor.secret)
            .await
            .unwrap()
            .is_some()
    );
    let revoked = tokens.list().await.unwrap();
    assert!(
        revoked
            .iter()
            .any(|t| t.id == crm.record.id && t.revoked_at.is_some())
    );
}

async fn tokens_must_match_their_role(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    assert!(tokens.create(Role::Source, None, "x").await.is_err());
    assert!(tokens.create(Role::Consumer, None, "x").await.is_err());
    assert!(tokens.create(Role::Admin, Some("crm"), "x").await.is_err());
    assert!(
        tokens
            .create(Role::Admin, None, &"x".repeat(201))
            .await
            .is_err()
    );
    assert!(
        tokens.list().await.unwrap().is_empty(),
        "nothing half-written"
    );
}

/// Every stored token row: its hash and its text columns joined.
async fn stored_tokens(db: &TestDb) -> Vec<(Vec<u8>, String)> {
    let sql =
        "SELECT token_hash, role || '|' || COALESCE(subject, '') || '|' || label FROM api_tokens";
    match db.engine {
        Engine::Postgres => sqlx::query_as(sql).fetch_all(&db.pg().await).await.unwrap(),
        Engine::Sqlite => sqlx::query_as(sql)
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap(),
    }
}
