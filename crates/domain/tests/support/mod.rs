//! given / when / then for the domain: decide on the state folded from earlier events.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use chrono::{DateTime, Duration, TimeZone, Utc};
use idledger_domain::challenge::{ChallengeKey, ChallengeSecret};
use idledger_domain::command::{Change, Command, Context, Principal, ProvenanceInput, Refused};
use idledger_domain::decide::{
    Decision, decide, decide_erasure, decide_expiry, retention_provenance,
};
use idledger_domain::event::{EventEnvelope, Provenance};
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{
    Actor, ActorKind, ChallengeId, CustomerId, IdempotencyKey, OnBehalfOf, Relationship, SourceId,
};
use idledger_domain::policy::{DEFAULT_POLICY_TOML, Policy};
use idledger_domain::state::{CustomerState, fold};
use idledger_domain::values::Evidence;
use uuid::Uuid;

pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()
}

pub fn field(path: &str) -> FieldPath {
    FieldPath::parse(path).unwrap()
}

pub fn value(path: &str, json: serde_json::Value) -> FieldValue {
    FieldValue::parse(&field(path), &json).unwrap()
}

pub fn source(id: &str) -> Principal {
    Principal::Source(SourceId::parse(id).unwrap())
}

/// The data steward `jane`.
pub fn steward() -> Principal {
    Principal::steward("jane").unwrap()
}

/// `jane`'s change, approved by a second steward, `joe` (four eyes).
pub fn approved_steward() -> Principal {
    Principal::ApprovedSteward {
        steward: Actor::new(ActorKind::Steward, "jane").unwrap(),
        approver: Actor::new(ActorKind::Steward, "joe").unwrap(),
    }
}

/// The key every scenario derives challenge secrets from.
pub fn challenge_key() -> &'static ChallengeKey {
    static KEY: std::sync::OnceLock<ChallengeKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| ChallengeKey::new([42; 32]))
}

/// The secret the requester of `challenge` received.
pub fn secret(challenge: ChallengeId) -> ChallengeSecret {
    challenge_key().secret_for(challenge)
}

pub fn agent() -> ProvenanceInput {
    ProvenanceInput {
        actor: Actor::new(ActorKind::Agent, "agent-7").unwrap(),
        on_behalf_of: None,
        evidence: None,
        observed_at: None,
        correlation_id: None,
        causation_id: None,
        reason: None,
    }
}

pub fn subject() -> ProvenanceInput {
    ProvenanceInput {
        actor: Actor::new(ActorKind::Subject, "customer").unwrap(),
        ..agent()
    }
}

pub fn guardian() -> ProvenanceInput {
    ProvenanceInput {
        on_behalf_of: Some(OnBehalfOf::new(Relationship::Guardian, "parent-1").unwrap()),
        ..agent()
    }
}

/// Acting as the delegate `assistant-1`.
pub fn delegate() -> ProvenanceInput {
    ProvenanceInput {
        on_behalf_of: Some(OnBehalfOf::new(Relationship::Delegate, "assistant-1").unwrap()),
        ..agent()
    }
}

/// Records `guardian()`'s guardianship (`parent-1`), everything in scope.
pub fn record_guardian() -> Change {
    record(Relationship::Guardian, "parent-1", None)
}

/// Records a relationship with `id`, on a signed form.
pub fn record(
    relationship: Relationship,
    id: &str,
    scope: Option<idledger_domain::delegation::RelationshipScope>,
) -> Change {
    Change::RecordRelationship {
        representative: OnBehalfOf::new(relationship, id).unwrap(),
        evidence: Evidence::new(
            idledger_domain::ids::Key::parse("signed_form").unwrap(),
            "form-77",
        )
        .unwrap(),
        scope,
        expires_at: None,
    }
}

pub fn with_evidence() -> ProvenanceInput {
    ProvenanceInput {
        evidence: Some(
            Evidence::new(
                idledger_domain::ids::Key::parse("email_link").unwrap(),
                "otp-123",
            )
            .unwrap(),
        ),
        ..agent()
    }
}

pub fn set(path: &str, json: serde_json::Value) -> Change {
    Change::SetField {
        field: field(path),
        value: value(path, json),
        expected_version: None,
    }
}

/// A customer's stream under test, and the clock decide sees.
pub struct Scenario {
    pub policy: Policy,
    pub now: DateTime<Utc>,
    pub customer: CustomerId,
    pub events: Vec<EventEnvelope>,
    commands: u64,
}

impl Scenario {
    pub fn new() -> Self {
        Self {
            policy: Policy::default_policy().unwrap(),
            now: t0(),
            customer: CustomerId::from_uuid(Uuid::now_v7()).unwrap(),
            events: Vec::new(),
            commands: 0,
        }
    }

    /// A registered customer, by the identity provider.
    pub fn registered() -> Self {
        Self::new().given("idp", agent(), vec![Change::Register])
    }

    pub fn state(&self) -> CustomerState {
        fold(&self.events)
    }

    pub fn advance(mut self, by: Duration) -> Self {
        self.now += by;
        self
    }

    fn command(&mut self, provenance: ProvenanceInput, changes: Vec<Change>) -> Command {
        self.commands += 1;
        Command {
            customer_id: self.customer,
            idempotency_key: IdempotencyKey::parse(&format!("k-{}", self.commands)).unwrap(),
            provenance,
            changes,
            expected_stream_version: None,
        }
    }

    pub fn decide_as(
        &mut self,
        principal: Principal,
        provenance: ProvenanceInput,
        changes: Vec<Change>,
    ) -> Result<Decision, Refused> {
        let command = self.command(provenance, changes);
        let ctx = Context {
            now: self.now,
            policy: &self.policy,
            principal,
            id_seed: Uuid::now_v7(),
            challenge_key: challenge_key(),
        };
        decide(&self.state(), &command, &ctx)
    }

    /// Decides and records; the scenario's precondition, so a refusal here is a test bug.
    #[track_caller]
    pub fn given(mut self, by: &str, provenance: ProvenanceInput, changes: Vec<Change>) -> Self {
        let decision = self.decide_as(source(by), provenance, changes).unwrap();
        self.events.extend(decision.events);
        self
    }

    /// Decides without recording.
    pub fn when(
        &mut self,
        by: &str,
        provenance: ProvenanceInput,
        changes: Vec<Change>,
    ) -> Result<Decision, Refused> {
        self.decide_as(source(by), provenance, changes)
    }

    /// Decides as `principal` without recording.
    pub fn when_as(
        &mut self,
        principal: Principal,
        changes: Vec<Change>,
    ) -> Result<Decision, Refused> {
        self.decide_as(principal, agent(), changes)
    }

    /// Decides and records what was decided.
    pub fn apply(
        &mut self,
        by: Principal,
        provenance: ProvenanceInput,
        changes: Vec<Change>,
    ) -> Result<Decision, Refused> {
        let decision = self.decide_as(by, provenance, changes)?;
        self.events.extend(decision.events.clone());
        Ok(decision)
    }
}

impl Scenario {
    /// Decides the erasure of the record as `by` (an administrator's source) and records it if
    /// accepted.
    pub fn erase(&mut self, by: &str, reason: &str) -> Result<EventEnvelope, Refused> {
        let provenance = Provenance {
            source: SourceId::parse(by).unwrap(),
            actor: Actor::new(ActorKind::Agent, "dpo@example.org").unwrap(),
            on_behalf_of: None,
            evidence: None,
            observed_at: None,
            recorded_at: self.now,
            correlation_id: None,
            causation_id: None,
            idempotency_key: IdempotencyKey::parse(&format!("erasure:{}", self.customer)).unwrap(),
            reason: None,
            approved_by: None,
        };
        let event = decide_erasure(
            &self.state(),
            reason,
            provenance,
            &self.policy,
            Uuid::now_v7(),
        )?;
        self.events.push(event.clone());
        Ok(event)
    }
}

/// The default policy with retention: preferences kept 730 days, marketing consents 1095.
pub fn retention_policy() -> Policy {
    let text = DEFAULT_POLICY_TOML
        .replace(
            "[fields.\"preferences.*\"]\n",
            "[fields.\"preferences.*\"]\nretain_days = 730\n",
        )
        .replace(
            "[consent_max_age_days]",
            "[consent_retention_days]\nmarketing = 1095\n\n[consent_max_age_days]",
        );
    Policy::from_toml(&text).unwrap()
}

impl Scenario {
    /// Decides what retention expires now, and records it.
    pub fn expire(&mut self) -> Vec<EventEnvelope> {
        let provenance = retention_provenance(self.now, &self.policy).unwrap();
        let events = decide_expiry(
            &self.state(),
            self.now,
            &self.policy,
            &provenance,
            Uuid::now_v7(),
        );
        self.events.extend(events.clone());
        events
    }
}

/// The event type names of a decision, for compact `then` assertions.
pub fn types(decision: &Decision) -> Vec<&'static str> {
    decision
        .events
        .iter()
        .map(|e| e.event.payload.type_name())
        .collect()
}

/// The refusal code, or a panic naming what was decided instead.
#[track_caller]
pub fn refusal_code(result: Result<Decision, Refused>) -> &'static str {
    match result {
        Ok(d) => panic!("expected a refusal, got events {:?}", types(&d)),
        Err(r) => r.refusal.code(),
    }
}
