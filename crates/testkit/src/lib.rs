//! Test support shared by idledger's crates (store, relay and api tests):
//!
//! - [`TestDb`]: a fresh database per test, on a real PostgreSQL server (created, then dropped
//!   when the test ends) or in a temporary SQLite file. A test that needs PostgreSQL and cannot
//!   reach it fails with a message naming the server and how to start it; it never passes
//!   silently.
//! - [`on_both_engines!`]: the one way to run a test body on both engines.
//! - [`TestStore`]: a ledger and the delivery bookkeeping over a fresh database.
//! - [`PrivatePostgres`]: a PostgreSQL server of the test's own, to stop and start (outages), or
//!   with TLS on and a CA of its own.
//! - [`TestCerts`]: a CA, server and client certificates, and an unrelated CA, for TLS tests.
//! - [`builders`]: principals, commands, changes, consents, consumers… in their domain types.
//!
//! What only one crate's tests need (api's `TestApp`, relay's NATS and webhook fixtures) stays
//! in that crate's `tests/support`: testkit depends on domain and store, never on relay or api.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod builders;
mod certs;
mod private_pg;
mod test_store;

use idledger_store::Store;
use sqlx::Connection;

pub use certs::TestCerts;
pub use private_pg::PrivatePostgres;
pub use test_store::TestStore;

/// Runs each named test body once per engine, as `postgres::<name>` and `sqlite::<name>`.
///
/// Each name is an `async fn name(engine: Engine)` in the calling module; the generated tests
/// run it on a multi-threaded runtime (the calling crate needs `tokio` with `macros` and
/// `rt-multi-thread` as a dev-dependency).
///
/// ```ignore
/// use idledger_testkit::{Engine, on_both_engines};
///
/// on_both_engines!(appends_are_ordered, erasure_shreds);
///
/// async fn appends_are_ordered(engine: Engine) { /* … */ }
/// async fn erasure_shreds(engine: Engine) { /* … */ }
/// ```
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Postgres).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Engine::Sqlite).await;
                }
            )*
        }
    };
}

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// One test's database. SQLite files live in a temp dir removed on drop.
#[derive(Debug)]
pub struct TestDb {
    pub engine: Engine,
    pub url: String,
    /// The PostgreSQL database to drop when the test ends.
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop is synchronous; a short-lived runtime on its own thread does the async cleanup.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url()).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
        let _ = cleanup.join();
    }
}

/// The server test databases are created on (`IDLEDGER_TEST_DATABASE_URL`, or the default).
pub fn admin_url() -> String {
    std::env::var("IDLEDGER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

impl TestDb {
    pub async fn new(engine: Engine) -> Self {
        match engine {
            Engine::Postgres => {
                let admin = admin_url();
                let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is not reachable at {admin}: {e}\n\
                         These tests need a real PostgreSQL server. Start one with `bash scripts/services.sh` \
                         (or `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`), \
                         or point IDLEDGER_TEST_DATABASE_URL at a server where this user may CREATE DATABASE."
                    )
                });
                let name = format!("idledger_test_{}", uuid::Uuid::now_v7().simple());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                Self {
                    engine,
                    url: database_url(&admin, &name),
                    pg_name: Some(name),
                    _dir: None,
                }
            }
            Engine::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("idledger.db").display());
                Self {
                    engine,
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                }
            }
        }
    }

    /// A new store (own connection pool) on this database, migrated.
    pub async fn store(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }

    /// A plain connection pool on this PostgreSQL database, for tests that go under the store.
    pub async fn pg(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url).await.unwrap()
    }

    /// A plain connection pool on this SQLite database, for tests that go under the store.
    pub async fn sqlite(&self) -> sqlx::SqlitePool {
        sqlx::SqlitePool::connect(&self.url).await.unwrap()
    }

    /// Runs raw SQL against this database (for tampering and inspection).
    pub async fn exec(&self, sql: &str) {
        let statement = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()));
        match self.engine {
            Engine::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                statement.execute(&mut conn).await.unwrap();
            }
            Engine::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                statement.execute(&mut conn).await.unwrap();
            }
        }
    }
}

/// `admin` (a PostgreSQL URL) naming the database `name` instead, its query (`sslmode`,
/// `sslrootcert=/path/…`) kept.
fn database_url(admin: &str, name: &str) -> String {
    let (path, query) = match admin.split_once('?') {
        Some((path, query)) => (path, format!("?{query}")),
        None => (admin, String::new()),
    };
    let base = path.rsplit_once('/').map_or(path, |(base, _)| base);
    format!("{base}/{name}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_test_databases_url_keeps_the_admin_urls_query() {
        assert_eq!(
            super::database_url("postgres://u@h:5432/postgres", "t1"),
            "postgres://u@h:5432/t1"
        );
        assert_eq!(
            super::database_url(
                "postgres://u@h/postgres?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "t1"
            ),
            "postgres://u@h/t1?sslmode=verify-full&sslrootcert=/etc/ca.pem"
        );
    }
}
