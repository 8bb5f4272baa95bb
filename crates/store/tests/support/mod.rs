//! What only the store's tests need; the database, the macro that runs a test on both engines
//! and the builders come from `idledger_testkit`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    dead_code,
    unused_imports
)]

#[allow(unused_imports)]
pub use idledger_testkit::builders::*;
#[allow(unused_imports)]
pub use idledger_testkit::{Engine, TestDb, TestStore, on_both_engines};

/// The one integer a query returns (a `COUNT(*)`, say), on either engine.
pub async fn count(db: &TestDb, sql: &str) -> i64 {
    match db.engine {
        Engine::Postgres => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&db.sqlite().await)
            .await
            .unwrap(),
    }
}

/// Rewrites a customer's projection rows as idledger wrote them before the projection was
/// sealed: every record plain JSON, the customer row without its `sealed` mark.
pub async fn write_as_before_sealing(
    store: &TestStore,
    customer: idledger_domain::ids::CustomerId,
) {
    let state = store.ledger.state(customer).await.unwrap().unwrap();
    let rows: Vec<(uuid::Uuid, idledger_store::model::ProjectionRow)> =
        idledger_store::projection::rows(&state)
            .unwrap()
            .into_iter()
            .map(|mut row| {
                row.record = row.record.replace(",\"sealed\":true", "");
                (customer.as_uuid(), row)
            })
            .collect();
    assert!(rows.iter().all(|(_, r)| !r.record.contains("sealed")));
    let log = store.ledger.store().log();
    let head = log.head_position().await.unwrap();
    assert!(
        log.replace_projections(&[customer.as_uuid()], &rows, head)
            .await
            .unwrap()
    );
}

/// Every projection row as the database holds it: its kind, and the whole row — customer id,
/// kind, key and record — as text, lower-cased.
pub async fn raw_projections(db: &TestDb) -> Vec<(String, String)> {
    let rows: Vec<(String, String)> = match db.engine {
        Engine::Postgres => sqlx::query_as(
            "SELECT kind, p::text FROM projections p ORDER BY customer_id, kind, key",
        )
        .fetch_all(&db.pg().await)
        .await
        .unwrap(),
        Engine::Sqlite => {
            let raw: Vec<(Vec<u8>, String, String, String)> = sqlx::query_as(
                "SELECT customer_id, kind, key, record FROM projections ORDER BY customer_id, kind, key",
            )
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap();
            raw.into_iter()
                .map(|(c, kind, key, record)| {
                    let text = format!("{} {kind} {key} {record}", String::from_utf8_lossy(&c));
                    (kind, text)
                })
                .collect()
        }
    };
    rows.into_iter()
        .map(|(kind, text)| (kind, text.to_lowercase()))
        .collect()
}

/// Asserts that every projection row but the customer's is sealed, and that none holds one
/// of `needles` in the clear.
#[track_caller]
pub fn assert_sealed(rows: &[(String, String)], needles: &[&str]) {
    assert!(!rows.is_empty());
    for (kind, row) in rows {
        for needle in needles {
            assert!(!row.contains(needle), "plaintext '{needle}' in {row}");
        }
        assert!(
            kind == "customer" || row.contains("sealed:v1:"),
            "a {kind} row in the clear: {row}"
        );
    }
}

/// The token cache's TTL a test gives a second store: long on PostgreSQL, so that only a
/// change's announcement can explain the second store seeing it within a second; short on
/// SQLite, which has no announcements.
pub fn second_store_cache_ttl(engine: Engine) -> std::time::Duration {
    match engine {
        Engine::Postgres => std::time::Duration::from_secs(60),
        Engine::Sqlite => std::time::Duration::from_millis(400),
    }
}

/// Waits while `still_old` holds and fails unless it stopped within the cache's bound for a
/// second store given [`second_store_cache_ttl`], timed from `changed_at`: under 1 s on
/// PostgreSQL (the announcement), the TTL and some slack on SQLite.
pub async fn reaches_the_second_store_within_the_bound(
    engine: Engine,
    changed_at: tokio::time::Instant,
    change: &str,
    mut still_old: impl AsyncFnMut() -> bool,
) {
    while still_old().await {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let took = changed_at.elapsed();
    let bound = match engine {
        Engine::Postgres => std::time::Duration::from_secs(1),
        Engine::Sqlite => second_store_cache_ttl(engine) + std::time::Duration::from_millis(300),
    };
    assert!(
        took < bound,
        "{change} took {took:?} to reach the other store (bound {bound:?})"
    );
}
