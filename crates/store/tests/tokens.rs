//! API tokens on both engines: stored only as hashes, bound to one principal, revocable.
//!
//! Covers every public method of `Tokens`:
//! - [x] `create` (both tests), `authenticate`, `list`, `revoke`
//!   (`tokens_are_stored_as_hashes_and_revocable`)
//! - [x] `create_expiring`, `rotate`, `get`, `touch`
//!   (`tokens_expire_rotate_with_an_overlap_and_record_their_last_use`)
//! - [x] `create_scoped`, `Scope`, `TokenRecord::allows` (`tokens_may_be_limited_to_scopes`)
//! - [x] the token cache: `authenticate` answering from it, `revoke` and `rotate` reaching a
//!   second store on the same database (another process) by notification (PostgreSQL) or
//!   within the TTL (SQLite), `Store::set_token_cache_ttl`, `cache_is_live`
//!   (`a_revocation_reaches_another_process_within_the_bound`)
//! - [x] `open_session`, `session`, `end_session` (`steward_sessions_*`), and `revoke` ending
//!   them (`steward_sessions_end_with_their_token`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{DateTime, Duration, Utc};
use idledger_store::{Role, Scope, SessionLimits};
use support::{
    Engine, TestDb, on_both_engines, reaches_the_second_store_within_the_bound,
    second_store_cache_ttl,
};

on_both_engines!(
    tokens_are_stored_as_hashes_and_revocable,
    tokens_must_match_their_role,
    tokens_expire_rotate_with_an_overlap_and_record_their_last_use,
    steward_sessions_are_stored_as_hashes_and_end_at_logout,
    steward_sessions_expire_idle_and_absolute,
    steward_sessions_end_with_their_token,
    tokens_may_be_limited_to_scopes,
    a_revocation_reaches_another_process_within_the_bound,
);

async fn tokens_may_be_limited_to_scopes(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    let all = tokens
        .create(Role::Source, Some("crm"), "all")
        .await
        .unwrap();
    assert_eq!(all.record.scopes, None);
    assert!(Scope::ALL.iter().all(|s| all.record.allows(*s)));
    let scoped = tokens
        .create_scoped(
            Role::Source,
            Some("crm"),
            "crm writer",
            None,
            Some(&[Scope::Reads, Scope::Commands, Scope::Reads]),
        )
        .await
        .unwrap();
    assert_eq!(
        scoped.record.scopes.as_deref(),
        Some(&[Scope::Commands, Scope::Reads][..]),
        "sorted, once each"
    );
    assert!(scoped.record.allows(Scope::Commands) && !scoped.record.allows(Scope::Feed));
    let found = tokens.authenticate(&scoped.secret).await.unwrap().unwrap();
    assert_eq!(found, scoped.record, "stored and read back");
    let rotated = tokens
        .rotate(scoped.record.id, Duration::zero())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        rotated.record.scopes, scoped.record.scopes,
        "a rotation keeps them"
    );
    assert!(
        tokens
            .create_scoped(Role::Auditor, None, "none", None, Some(&[]))
            .await
            .is_err(),
        "an empty set is refused"
    );
    assert_eq!("feed".parse::<Scope>().unwrap(), Scope::Feed);
    assert!("everything".parse::<Scope>().is_err());
}

fn limits() -> SessionLimits {
    SessionLimits {
        idle: Duration::minutes(30),
        absolute: Duration::hours(12),
    }
}

/// A whole microsecond, as both engines keep times.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

async fn steward_sessions_are_stored_as_hashes_and_end_at_logout(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    let steward = tokens.create(Role::Steward, None, "ann").await.unwrap();
    let at = now();
    let opened = tokens
        .open_session(&steward.record, at, limits())
        .await
        .unwrap();
    assert!(opened.secret.starts_with("idls_"));
    assert!(opened.secret.len() >= 5 + 43, "256 random bits");
    assert!(!format!("{opened:?}").contains(&opened.secret));
    assert_eq!(opened.session.expires_at, at + Duration::hours(12));
    assert_eq!(opened.session.idle_expires_at, at + Duration::minutes(30));

    // The session id is not a token, and the token is not a session id.
    assert!(tokens.authenticate(&opened.secret).await.unwrap().is_none());
    assert!(
        tokens
            .session(&steward.secret, at, limits())
            .await
            .unwrap()
            .is_none()
    );
    let found = tokens
        .session(&opened.secret, at + Duration::minutes(1), limits())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.token, steward.record);

    // Only the hash is stored.
    let stored: Vec<(Vec<u8>,)> = rows(&db, "SELECT session_hash FROM steward_sessions").await;
    assert_eq!(
        stored,
        [(idledger_store::tokens::token_hash(&opened.secret),)]
    );

    // A second session of the same token is its own; logout ends one.
    let other = tokens
        .open_session(&steward.record, at, limits())
        .await
        .unwrap();
    assert!(tokens.end_session(&opened.secret).await.unwrap());
    assert!(!tokens.end_session(&opened.secret).await.unwrap());
    assert!(
        tokens
            .session(&opened.secret, at, limits())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tokens
            .session(&other.secret, at, limits())
            .await
            .unwrap()
            .is_some()
    );

    // Only a live steward token opens one.
    let auditor = tokens.create(Role::Auditor, None, "dpo").await.unwrap();
    assert!(
        tokens
            .open_session(&auditor.record, at, limits())
            .await
            .is_err()
    );
}

async fn steward_sessions_expire_idle_and_absolute(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    let steward = tokens.create(Role::Steward, None, "ann").await.unwrap();
    let at = now();
    let minutes = |n| at + Duration::minutes(n);

    // Idle: each use moves the idle expiry on; 30 minutes without one end it.
    let idle = tokens
        .open_session(&steward.record, at, limits())
        .await
        .unwrap();
    let used = tokens
        .session(&idle.secret, minutes(29), limits())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(used.idle_expires_at, minutes(59));
    assert!(
        tokens
            .session(&idle.secret, minutes(58), limits())
            .await
            .unwrap()
            .is_some(),
        "29 minutes after the last use"
    );
    assert!(
        tokens
            .session(&idle.secret, minutes(88), limits())
            .await
            .unwrap()
            .is_none(),
        "30 minutes after the last use"
    );
    assert!(
        tokens
            .session(&idle.secret, minutes(60), limits())
            .await
            .unwrap()
            .is_none(),
        "an ended session is deleted: it does not come back"
    );

    // Absolute: however busy, it ends 12 hours after login, and the idle expiry never runs
    // past that.
    let busy = tokens
        .open_session(&steward.record, at, limits())
        .await
        .unwrap();
    let mut last = None;
    for n in (20..=12 * 60 - 1).step_by(20) {
        last = tokens
            .session(&busy.secret, minutes(n), limits())
            .await
            .unwrap();
        assert!(last.is_some(), "used every 20 minutes: live at minute {n}");
    }
    assert_eq!(last.unwrap().idle_expires_at, minutes(12 * 60));
    assert!(
        tokens
            .session(&busy.secret, minutes(12 * 60), limits())
            .await
            .unwrap()
            .is_none()
    );

    // Opening a session deletes those that have ended.
    tokens
        .open_session(&steward.record, at, limits())
        .await
        .unwrap();
    tokens
        .open_session(&steward.record, minutes(24 * 60), limits())
        .await
        .unwrap();
    let stored: Vec<(i64,)> = rows(&db, "SELECT COUNT(*) FROM steward_sessions").await;
    assert_eq!(stored, [(1,)], "the one opened a day later");
}

async fn steward_sessions_end_with_their_token(engine: Engine) {
    let db = TestDb::new(engine).await;
    let tokens = db.store().await.tokens();
    let at = now();

    // Revoked: the sessions end and are deleted.
    let revoked = tokens.create(Role::Steward, None, "ann").await.unwrap();
    let session = tokens
        .open_session(&revoked.record, at, limits())
        .await
        .unwrap();
    assert!(tokens.revoke(revoked.record.id).await.unwrap());
    assert!(
        tokens
            .session(&session.secret, at, limits())
            .await
            .unwrap()
            .is_none()
    );
    let stored: Vec<(i64,)> = rows(&db, "SELECT COUNT(*) FROM steward_sessions").await;
    assert_eq!(stored, [(0,)]);

    // Expired (here at the end of a rotation's overlap): the sessions end with it.
    let rotated = tokens.create(Role::Steward, None, "bob").await.unwrap();
    let session = tokens
        .open_session(&rotated.record, now(), limits())
        .await
        .unwrap();
    tokens
        .rotate(rotated.record.id, Duration::minutes(5))
        .await
        .unwrap()
        .unwrap();
    let later = Utc::now();
    assert!(
        tokens
            .session(&session.secret, later, limits())
            .await
            .unwrap()
            .is_some(),
        "within the overlap"
    );
    assert!(
        tokens
            .session(&session.secret, later + Duration::minutes(6), limits())
            .await
            .unwrap()
            .is_none(),
        "after the overlap"
    );
}

async fn rows<T>(db: &TestDb, sql: &'static str) -> Vec<T>
where
    T: Send + Unpin,
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
    T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>,
{
    match db.engine {
        Engine::Postgres => sqlx::query_as(sql).fetch_all(&db.pg().await).await.unwrap(),
        Engine::Sqlite => sqlx::query_as(sql)
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap(),
    }
}

async fn tokens_expire_rotate_with_an_overlap_and_record_their_last_use(engine: Engine) {
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

/// Two stores on one database stand for two processes. The second trusts what it read for a
/// long time (60 s): on PostgreSQL only the notification can make it refuse a revoked token
/// at once; on SQLite, with no notifications, the TTL is the bound.
async fn a_revocation_reaches_another_process_within_the_bound(engine: Engine) {
    let db = TestDb::new(engine).await;
    let here = db.store().await;
    let there = db.store().await;
    let (admin, remote) = (here.tokens(), there.tokens());
    there.set_token_cache_ttl(second_store_cache_ttl(engine));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !remote.cache_is_live() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the token change listener never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // The cache answers: a revocation written behind the store's back (no notification) is
    // not seen until the entry is read again.
    let quiet = admin.create(Role::Steward, None, "quiet").await.unwrap();
    assert!(remote.authenticate(&quiet.secret).await.unwrap().is_some());
    db.exec("UPDATE api_tokens SET revoked_at = 1 WHERE label = 'quiet'")
        .await;
    assert!(
        remote.authenticate(&quiet.secret).await.unwrap().is_some(),
        "answered from the cache"
    );

    for change in ["revoke", "rotate"] {
        let token = admin.create(Role::Steward, None, change).await.unwrap();
        assert!(remote.authenticate(&token.secret).await.unwrap().is_some());
        let changed_at = tokio::time::Instant::now();
        match change {
            "revoke" => assert!(admin.revoke(token.record.id).await.unwrap()),
            _ => {
                admin
                    .rotate(token.record.id, Duration::zero())
                    .await
                    .unwrap()
                    .unwrap();
            }
        }
        reaches_the_second_store_within_the_bound(
            engine,
            changed_at,
            &format!("a {change}"),
            async || remote.authenticate(&token.secret).await.unwrap().is_some(),
        )
        .await;
        assert!(
            admin.authenticate(&token.secret).await.unwrap().is_none(),
            "the store that changed it refuses it at once"
        );
    }
}
