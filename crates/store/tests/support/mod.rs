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
