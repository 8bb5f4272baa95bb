//! API tokens on both engines: stored only as hashes, bound to one principal, revocable.
//!
//! Covers every public method of `Tokens`:
//! - [x] `create` (both tests), `authenticate`, `list`, `revoke`
//!   (`tokens_are_stored_as_hashes_and_revocable`)
//! - [x] `create_expiring`, `rotate`, `get`, `touch`
//!   (`tokens_expire_rotate_with_an_overlap_and_record_their_last_use`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_store::Role;
use support::{Engine, TestDb, on_both_engines};

on_both_engines!(
    tokens_are_stored_as_hashes_and_revocable,
    tokens_must_match_their_role,
    tokens_expire_rotate_with_an_overlap_and_record_their_last_use,
);

async fn tokens_expire_rotate_with_an_overlap_and_record_their_last_use(engine: Engine) {
    use chrono::{Duration, Utc};
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    // An expired token no longer authenticates; one that expires later does.
    let past = Utc::now() - Duration::seconds(1);
    let expired = tokens
        .create_expiring(Role::Auditor, None, "temp", Some(past))
        .await
        .unwrap();
    assert!(
        tokens
            .authenticate(&expired.secret)
            .await
            .unwrap()
            .is_none()
    );
    let later = tokens
        .create_expiring(
            Role::Auditor,
            None,
            "temp",
            Some(Utc::now() + Duration::hours(1)),
        )
        .await
        .unwrap();
    assert!(tokens.authenticate(&later.secret).await.unwrap().is_some());

    // Rotation: a new secret for the same role, system and label; the old one works for the
    // overlap, then not.
    let old = tokens
        .create(Role::Source, Some("crm"), "crm prod")
        .await
        .unwrap();
    let new = tokens
        .rotate(old.record.id, Duration::hours(1))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(new.secret, old.secret);
    assert_eq!(
        (
            new.record.role,
            new.record.subject.as_deref(),
            new.record.label.as_str()
        ),
        (Role::Source, Some("crm"), "crm prod")
    );
    assert!(tokens.authenticate(&new.secret).await.unwrap().is_some());
    let still = tokens.authenticate(&old.secret).await.unwrap().unwrap();
    assert!(still.expires_at.is_some_and(|at| at > Utc::now()));
    let cut = tokens
        .rotate(new.record.id, Duration::zero())
        .await
        .unwrap()
        .unwrap();
    assert!(tokens.authenticate(&new.secret).await.unwrap().is_none());
    assert!(tokens.authenticate(&cut.secret).await.unwrap().is_some());
    // A dead token cannot be rotated.
    assert!(
        tokens
            .rotate(new.record.id, Duration::hours(1))
            .await
            .unwrap()
            .is_none()
    );
    tokens.revoke(cut.record.id).await.unwrap();
    assert!(
        tokens
            .rotate(cut.record.id, Duration::hours(1))
            .await
            .unwrap()
            .is_none()
    );

    // The last use, to the minute.
    let fresh = tokens.get(later.record.id).await.unwrap().unwrap();
    assert!(fresh.last_used_at.is_none() && fresh.use_is_stale(Utc::now()));
    let at = chrono::DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    tokens.touch(later.record.id, at).await.unwrap();
    let used = tokens.get(later.record.id).await.unwrap().unwrap();
    assert_eq!(used.last_used_at, Some(at));
    assert!(!used.use_is_stale(at + Duration::seconds(30)));
    assert!(used.use_is_stale(at + Duration::seconds(61)));
}

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
