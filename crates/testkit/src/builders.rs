//! Builders for the values tests pass to the store and the relay, in their domain types: they
//! panic on bad input, so a test reads as what it means.

use chrono::{DateTime, Utc};
use idledger_domain::command::{Change, Command, Principal, ProvenanceInput};
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey, Key, Purpose, SourceId};
use idledger_domain::policy::ADMIN_SOURCE;
use idledger_domain::values::{ConsentChannel, Evidence, Jurisdiction, LegalBasis, NoticeRef};
use idledger_store::Ledger;
use idledger_store::delivery::{Channel, ConsumerId, FieldSelector, NewConsumer, StartAt};

// ---- principals and ids ----

pub fn source(id: &str) -> Principal {
    Principal::Source(SourceId::parse(id).unwrap())
}

/// `jane`'s change approved by a second steward, `joe` (four eyes: the default policy's
/// name and birth date fields need one).
pub fn approved_steward() -> Principal {
    Principal::ApprovedSteward {
        steward: idledger_domain::ids::Actor::new(idledger_domain::ids::ActorKind::Steward, "jane")
            .expect("a valid steward"),
        approver: idledger_domain::ids::Actor::new(idledger_domain::ids::ActorKind::Steward, "joe")
            .expect("a valid steward"),
    }
}

/// The data steward `jane`.
pub fn steward() -> Principal {
    Principal::steward("jane").unwrap()
}

/// The reserved source administrators erase under.
pub fn admin() -> SourceId {
    SourceId::parse(ADMIN_SOURCE).unwrap()
}

/// The person who erases: a data protection officer.
pub fn dpo() -> Actor {
    Actor::new(ActorKind::Agent, "dpo@idledger.example").unwrap()
}

pub fn new_customer() -> CustomerId {
    CustomerId::generate()
}

pub fn field(path: &str) -> FieldPath {
    FieldPath::parse(path).unwrap()
}

pub fn consumer_id(id: &str) -> ConsumerId {
    ConsumerId::parse(id).unwrap()
}

pub fn purposes(list: &[&str]) -> Vec<Purpose> {
    list.iter().map(|p| Purpose::parse(p).unwrap()).collect()
}

pub fn selectors(list: &[&str]) -> Vec<FieldSelector> {
    list.iter()
        .map(|s| FieldSelector::parse(s).unwrap())
        .collect()
}

// ---- changes ----

pub fn set(path: &str, json: serde_json::Value) -> Change {
    Change::SetField {
        field: field(path),
        value: FieldValue::parse(&field(path), &json).unwrap(),
        expected_version: None,
    }
}

/// A request to change a verified field (email, phone): pending until confirmed.
pub fn request_change(path: &str, json: serde_json::Value) -> Change {
    Change::RequestChange {
        field: field(path),
        value: FieldValue::parse(&field(path), &json).unwrap(),
        expected_version: None,
    }
}

/// Consent to `purpose` under a privacy notice, given on the web in France.
pub fn grant(purpose: &str, expires_at: Option<DateTime<Utc>>) -> Change {
    Change::GrantConsent {
        purpose: Purpose::parse(purpose).unwrap(),
        basis: LegalBasis::Consent,
        notice: NoticeRef::new("privacy-notice", "2026-01", &"ab".repeat(32)).unwrap(),
        channel: ConsentChannel::Web,
        jurisdiction: Jurisdiction::parse("FR").unwrap(),
        expires_at,
    }
}

pub fn withdraw(purpose: &str) -> Change {
    Change::WithdrawConsent {
        purpose: Purpose::parse(purpose).unwrap(),
    }
}

/// `email` values that differ by `n`.
pub fn email(n: usize) -> serde_json::Value {
    serde_json::json!(format!("user{n}@example.org"))
}

// ---- commands ----

/// A sync job's provenance, with evidence of verification if asked.
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

/// A command with this idempotency key, carrying evidence of verification.
pub fn command(customer: CustomerId, key: &str, changes: Vec<Change>) -> Command {
    Command {
        customer_id: customer,
        idempotency_key: IdempotencyKey::parse(key).unwrap(),
        provenance: provenance(true),
        changes,
        expected_stream_version: None,
    }
}

/// A command under a fresh idempotency key, for tests that never retry.
pub fn fresh_command(customer: CustomerId, changes: Vec<Change>) -> Command {
    command(customer, &uuid::Uuid::now_v7().to_string(), changes)
}

/// Runs a command (fresh key) as `by`; panics on refusal.
pub async fn run(ledger: &Ledger, by: &str, customer: CustomerId, changes: Vec<Change>) {
    ledger
        .execute(&source(by), &fresh_command(customer, changes))
        .await
        .unwrap_or_else(|e| panic!("command by {by} for {customer} failed: {e}"));
}

/// A customer registered by the idp who consented (through the consent portal) to `purposes`.
pub async fn customer_consenting(ledger: &Ledger, purposes: &[&str]) -> CustomerId {
    let customer = new_customer();
    run(ledger, "idp", customer, vec![Change::Register]).await;
    if !purposes.is_empty() {
        let grants = purposes.iter().map(|p| grant(p, None)).collect();
        run(ledger, "consent_portal", customer, grants).await;
    }
    customer
}

/// Erases a customer as an administrator would; panics on refusal.
pub async fn erase(ledger: &Ledger, customer: CustomerId) {
    ledger
        .erase(customer, &admin(), dpo(), "subject's request")
        .await
        .unwrap_or_else(|e| panic!("erasing {customer} failed: {e}"));
}

// ---- consumers ----

/// A consumer of `fields` for `purposes`, served from the beginning of the log.
pub fn consumer(id: &str, channel: Channel, fields: &[&str], purposes_: &[&str]) -> NewConsumer {
    NewConsumer::new(
        consumer_id(id),
        channel,
        selectors(fields),
        purposes(purposes_),
        StartAt::Beginning,
    )
    .unwrap()
}
