//! A ledger and the delivery bookkeeping over a fresh database.

use chrono::Utc;
use idledger_domain::policy::Policy;
use idledger_store::delivery::NewConsumer;
use idledger_store::{Deliveries, Ledger, LedgerOptions, MasterKey};

use crate::{Engine, TestDb};

/// One test's database with a ledger (default policy, a fresh master key) and its deliveries.
#[derive(Debug)]
pub struct TestStore {
    pub db: TestDb,
    pub ledger: Ledger,
    pub deliveries: Deliveries,
    master_hex: String,
}

impl TestStore {
    pub async fn new(engine: Engine) -> Self {
        Self::with_policy(engine, Policy::default_policy().unwrap()).await
    }

    /// The same with another policy (e.g. one with retention).
    pub async fn with_policy(engine: Engine, policy: Policy) -> Self {
        let db = TestDb::new(engine).await;
        let master = MasterKey::generate();
        let master_hex = master.to_hex().to_string();
        let store = db.store().await;
        let deliveries = store.deliveries();
        let ledger = Ledger::new(&store, master, policy, LedgerOptions::default());
        Self {
            db,
            ledger,
            deliveries,
            master_hex,
        }
    }

    /// The master key, in hex, for a process that must open this store (the CLI).
    pub fn master_hex(&self) -> &str {
        &self.master_hex
    }

    /// Another ledger on the same database, with its own pool and writer and the same policy:
    /// what a second (or a restarted) process has.
    pub async fn another_ledger(&self) -> Ledger {
        Ledger::new(
            &self.db.store().await,
            MasterKey::from_hex(&self.master_hex).unwrap(),
            self.ledger.policy().clone(),
            LedgerOptions::default(),
        )
    }

    /// Registers a consumer now; panics if it cannot.
    pub async fn register(&self, new: NewConsumer) {
        self.deliveries
            .register_consumer(new, Utc::now())
            .await
            .unwrap();
    }
}
