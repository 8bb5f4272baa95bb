//! Test stores: a fresh database per test, on a real PostgreSQL server or a temp SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use idledger_domain::Principal;
use idledger_domain::command::{Change, Command, ProvenanceInput};
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey, Key, SourceId};
use idledger_domain::policy::Policy;
use idledger_domain::values::Evidence;
use idledger_store::{Ledger, LedgerOptions, MasterKey};

pub use idledger_testkit::{Engine, TestDb};

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
            &db.store().await,
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
            &self.db.store().await,
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
        expected_stream_version: None,
    }
}

pub fn new_customer() -> CustomerId {
    CustomerId::generate()
}
