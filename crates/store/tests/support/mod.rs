//! Test stores: a fresh database per test, on a real PostgreSQL server or a temp SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::sync::Arc;

use idledger_domain::Principal;
use idledger_domain::command::{Change, Command, ProvenanceInput};
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey, Key, SourceId};
use idledger_domain::policy::Policy;
use idledger_domain::values::Evidence;
use idledger_store::backend::Backend;
use idledger_store::postgres::PgBackend;
use idledger_store::sqlite::SqliteBackend;
use idledger_store::{Ledger, LedgerOptions, MasterKey};
use sqlx::Connection;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// One test's database. SQLite files live in a temp dir removed on drop.
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

fn admin_url() -> String {
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
                let (base, _) = admin.rsplit_once('/').unwrap();
                Self {
                    engine,
                    url: format!("{base}/{name}"),
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

    /// A new backend (own connection pool) on this database, migrated.
    pub async fn backend(&self) -> Arc<dyn Backend> {
        idledger_store::open_backend(&self.url).await.unwrap()
    }

    pub async fn pg(&self) -> PgBackend {
        PgBackend::connect(&self.url, 4).await.unwrap()
    }

    pub async fn sqlite(&self) -> SqliteBackend {
        let path = self.url.strip_prefix("sqlite://").unwrap();
        SqliteBackend::open(std::path::Path::new(path))
            .await
            .unwrap()
    }

    /// Runs raw SQL against this database (for tampering and inspection).
    pub async fn exec(&self, sql: &str) {
        match self.engine {
            Engine::Postgres => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(self.pg().await.pool())
                    .await
                    .unwrap();
            }
            Engine::Sqlite => {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
                    .execute(self.sqlite().await.pool())
                    .await
                    .unwrap();
            }
        }
    }
}

pub struct TestStore {
    pub db: TestDb,
    pub ledger: Ledger,
    pub master_hex: String,
}

impl TestStore {
    pub async fn new(engine: Engine) -> Self {
        let db = TestDb::new(engine).await;
        let master = MasterKey::generate();
        let master_hex = master.to_hex().to_string();
        let ledger = Ledger::new(
            db.backend().await,
            master,
            Policy::default_policy().unwrap(),
            LedgerOptions::default(),
        );
        Self {
            db,
            ledger,
            master_hex,
        }
    }

    /// Another ledger on the same database: its own pool and writer, as a second process would have.
    pub async fn another_ledger(&self) -> Ledger {
        Ledger::new(
            self.db.backend().await,
            MasterKey::from_hex(&self.master_hex).unwrap(),
            Policy::default_policy().unwrap(),
            LedgerOptions::default(),
        )
    }
}

pub fn source(id: &str) -> Principal {
    Principal::Source(SourceId::parse(id).unwrap())
}

pub fn field(path: &str) -> FieldPath {
    FieldPath::parse(path).unwrap()
}

pub fn set(path: &str, json: serde_json::Value) -> Change {
    Change::SetField {
        field: field(path),
        value: FieldValue::parse(&field(path), &json).unwrap(),
        expected_version: None,
    }
}

pub fn provenance(evidence: bool) -> ProvenanceInput {
    ProvenanceInput {
        actor: Actor::new(ActorKind::System, "sync-job").unwrap(),
        on_behalf_of: None,
        evidence: evidence
            .then(|| Evidence::new(Key::parse("email_link").unwrap(), "link-1").unwrap()),
        observed_at: None,
        correlation_id: None,
        causation_id: None,
        reason: None,
    }
}

pub fn command(customer: CustomerId, key: &str, changes: Vec<Change>) -> Command {
    Command {
        customer_id: customer,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        provenance: provenance(true),
        changes,
    }
}

pub fn new_customer() -> CustomerId {
    CustomerId::generate()
}
