//! Property tests: random command sequences from random sources never break the invariants
//! of the record, whatever is accepted or refused along the way.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::Duration;
use idledger_domain::command::{Change, Principal, ProvenanceInput};
use idledger_domain::event::{EventEnvelope, EventPayload, SetMode};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{ChallengeId, ProposalId, Purpose};
use idledger_domain::policy::{Policy, WriteMode};
use idledger_domain::schema::StoredEvent;
use idledger_domain::state::{ConsentStatus, CustomerState, evolve, fold};
use idledger_domain::values::{ConsentChannel, Jurisdiction, LegalBasis, NoticeRef};
use proptest::prelude::*;
use serde_json::json;
use support::*;

const SOURCES: [&str; 8] = [
    "idp",
    "crm",
    "web_app",
    "cdp",
    "consent_portal",
    "support_portal",
    "partner_feed",
    "steward",
];
const FIELDS: [&str; 5] = [
    "email",
    "phone",
    "name.given",
    "birth_date",
    "preferences.digest",
];
const PURPOSES: [&str; 2] = ["marketing", "analytics"];

#[derive(Debug, Clone)]
enum Step {
    Set {
        field: usize,
        variant: u8,
    },
    Clear {
        field: usize,
    },
    Request {
        field: usize,
        variant: u8,
    },
    /// Confirm or cancel the currently pending change (or a made-up challenge).
    Confirm {
        field: usize,
        real: bool,
    },
    Cancel {
        field: usize,
    },
    Grant {
        purpose: usize,
        expiring: bool,
        jurisdiction: u8,
    },
    Withdraw {
        purpose: usize,
    },
    Propose {
        field: usize,
        variant: u8,
    },
    Accept {
        pick: usize,
    },
    Reject {
        pick: usize,
    },
}

#[derive(Debug, Clone)]
struct Act {
    source: usize,
    /// Act as the touched field's system of record instead, so that many changes are accepted.
    as_authority: bool,
    step: Step,
    evidence: bool,
    subject: bool,
    guardian: bool,
    advance_hours: u16,
    /// Erase the record instead of the step (rarely, so most runs exercise the rest).
    erase: bool,
    /// Run retention after the step.
    expire: bool,
}

fn step() -> impl Strategy<Value = Step> {
    let f = 0..FIELDS.len();
    let p = 0..PURPOSES.len();
    prop_oneof![
        (f.clone(), 0u8..3).prop_map(|(field, variant)| Step::Set { field, variant }),
        f.clone().prop_map(|field| Step::Clear { field }),
        (0usize..2, 0u8..3).prop_map(|(field, variant)| Step::Request { field, variant }),
        (0usize..2, any::<bool>()).prop_map(|(field, real)| Step::Confirm { field, real }),
        (0usize..2).prop_map(|field| Step::Cancel { field }),
        (p.clone(), any::<bool>(), 0u8..3).prop_map(|(purpose, expiring, jurisdiction)| {
            Step::Grant {
                purpose,
                expiring,
                jurisdiction,
            }
        }),
        p.prop_map(|purpose| Step::Withdraw { purpose }),
        (f, 0u8..3).prop_map(|(field, variant)| Step::Propose { field, variant }),
        any::<usize>().prop_map(|pick| Step::Accept { pick }),
        any::<usize>().prop_map(|pick| Step::Reject { pick }),
    ]
}

fn act() -> impl Strategy<Value = Act> {
    (
        0..SOURCES.len(),
        any::<bool>(),
        step(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.2),
        prop_oneof![Just(0u16), 1u16..48, Just(24 * 400)],
        (prop::bool::weighted(0.01), prop::bool::weighted(0.2)),
    )
        .prop_map(
            |(
                source,
                as_authority,
                step,
                evidence,
                subject,
                guardian,
                advance_hours,
                (erase, expire),
            )| Act {
                source,
                as_authority,
                step,
                evidence,
                subject,
                guardian,
                advance_hours,
                erase,
                expire,
            },
        )
}

fn sample(field: &str, variant: u8) -> serde_json::Value {
    match (field, variant) {
        ("email", v) => json!(format!("user{v}@example.org")),
        ("phone", v) => json!(format!("+4420794609{v}0")),
        ("name.given", v) => json!(["Ada", "Grace", "Hedy"][usize::from(v) % 3]),
        // One adult date, two that make the subject a minor at some point of the run.
        ("birth_date", v) => json!(["1990-04-01", "2015-06-30", "2020-01-15"][usize::from(v) % 3]),
        (_, v) => json!(v % 2 == 0),
    }
}

fn to_change(state: &CustomerState, step: &Step, now: chrono::DateTime<chrono::Utc>) -> Change {
    let pending = |f: &str| {
        state
            .field(&field(f))
            .and_then(|r| r.pending.as_ref())
            .map(|p| p.challenge_id)
    };
    let proposal = |pick: usize| -> ProposalId {
        let ids: Vec<ProposalId> = state.proposals.keys().copied().collect();
        ids.get(pick % ids.len().max(1))
            .copied()
            .unwrap_or_else(|| ProposalId::from(uuid::Uuid::nil()))
    };
    match step {
        Step::Set { field: f, variant } => set(FIELDS[*f], sample(FIELDS[*f], *variant)),
        Step::Clear { field: f } => Change::ClearField {
            field: field(FIELDS[*f]),
            expected_version: None,
        },
        Step::Request { field: f, variant } => Change::RequestChange {
            field: field(FIELDS[*f]),
            value: value(FIELDS[*f], sample(FIELDS[*f], *variant)),
            expected_version: None,
        },
        Step::Confirm { field: f, real } => {
            let challenge_id = pending(FIELDS[*f])
                .filter(|_| *real)
                .unwrap_or_else(|| ChallengeId::from(uuid::Uuid::nil()));
            Change::ConfirmVerification {
                field: field(FIELDS[*f]),
                challenge_id,
                secret: secret(challenge_id),
            }
        }
        Step::Cancel { field: f } => Change::CancelChange {
            field: field(FIELDS[*f]),
            challenge_id: pending(FIELDS[*f])
                .unwrap_or_else(|| ChallengeId::from(uuid::Uuid::nil())),
        },
        Step::Grant {
            purpose,
            expiring,
            jurisdiction,
        } => Change::GrantConsent {
            purpose: Purpose::parse(PURPOSES[*purpose]).unwrap(),
            basis: LegalBasis::Consent,
            notice: NoticeRef::new("pn", "1", &"ab".repeat(32)).unwrap(),
            channel: ConsentChannel::Web,
            jurisdiction: Jurisdiction::parse(
                ["DE", "US", "US-CA"][usize::from(*jurisdiction) % 3],
            )
            .unwrap(),
            expires_at: expiring.then(|| now + Duration::days(10)),
        },
        Step::Withdraw { purpose } => Change::WithdrawConsent {
            purpose: Purpose::parse(PURPOSES[*purpose]).unwrap(),
        },
        Step::Propose { field: f, variant } => Change::ProposeValue {
            field: field(FIELDS[*f]),
            value: value(FIELDS[*f], sample(FIELDS[*f], *variant)),
        },
        Step::Accept { pick } => Change::AcceptProposal {
            proposal_id: proposal(*pick),
        },
        Step::Reject { pick } => Change::RejectProposal {
            proposal_id: proposal(*pick),
            reason: "checked with the customer".to_owned(),
        },
    }
}

/// The field of the proposal a change decides, so that `as_authority` has its system of
/// record decide it.
fn decided_field(state: &CustomerState, change: &Change) -> Option<FieldPath> {
    match change {
        Change::AcceptProposal { proposal_id } | Change::RejectProposal { proposal_id, .. } => {
            state.proposals.get(proposal_id).map(|p| p.field.clone())
        }
        _ => None,
    }
}

fn touched_field(change: &Change) -> Option<FieldPath> {
    match change {
        Change::SetField { field, .. }
        | Change::ClearField { field, .. }
        | Change::RequestChange { field, .. }
        | Change::ConfirmVerification { field, .. }
        | Change::CancelChange { field, .. }
        | Change::ProposeValue { field, .. } => Some(field.clone()),
        Change::GrantConsent { purpose, .. } | Change::WithdrawConsent { purpose } => {
            Some(FieldPath::Consent(purpose.clone()))
        }
        _ => None,
    }
}

fn provenance(a: &Act) -> ProvenanceInput {
    let mut p = if a.subject { subject() } else { agent() };
    if a.evidence {
        p.evidence = with_evidence().evidence;
    }
    if a.guardian {
        p.on_behalf_of = guardian().on_behalf_of;
    }
    p
}

/// Checks one accepted event against the state it was applied to.
fn check_event(
    policy: &Policy,
    before: &CustomerState,
    e: &EventEnvelope,
) -> Result<(), TestCaseError> {
    let prov = &e.event.provenance;
    let mode_of = |f: &FieldPath| policy.mode(f, &prov.source);
    let steward = prov.source.as_str() == "steward";
    match &e.event.payload {
        EventPayload::FieldSet { field, mode, .. } => {
            let rule = policy.rule(field);
            match mode {
                SetMode::Authoritative => prop_assert_eq!(mode_of(field), WriteMode::Authoritative),
                SetMode::FillIfEmpty => {
                    prop_assert_eq!(mode_of(field), WriteMode::FillIfEmpty);
                    prop_assert!(
                        before.value(field).is_none(),
                        "fill_if_empty overwrote {}",
                        field
                    );
                }
                SetMode::Steward => prop_assert!(steward && rule.steward_override),
            }
            if rule.requires_verification {
                prop_assert!(
                    prov.evidence.is_some() || steward,
                    "unverified {} became current",
                    field
                );
            }
        }
        EventPayload::FieldCleared { field, .. } => {
            prop_assert!(
                mode_of(field) == WriteMode::Authoritative
                    || (steward && policy.rule(field).steward_override)
            );
        }
        EventPayload::ChangeVerified { field, value, .. } => {
            prop_assert!(matches!(
                mode_of(field),
                WriteMode::Authoritative | WriteMode::RequestChange
            ));
            let pending = before.field(field).and_then(|r| r.pending.as_ref());
            prop_assert!(
                pending.is_some_and(|p| p.value == *value && p.expires_at > prov.recorded_at)
            );
        }
        EventPayload::ConsentGranted { purpose, .. } => {
            prop_assert_eq!(
                mode_of(&FieldPath::Consent(purpose.clone())),
                WriteMode::Authoritative
            );
        }
        // Only a steward (accepting where the policy allows override) or the field's system
        // of record decides a proposal.
        EventPayload::ProposalAccepted { field, .. } => {
            let rule = policy.rule(field);
            prop_assert!(
                (steward && rule.steward_override) || rule.decides_proposals(&prov.source),
                "{} accepted a proposal about {}",
                prov.source,
                field
            );
        }
        EventPayload::ProposalRejected { field, .. } => {
            prop_assert!(
                steward || policy.rule(field).decides_proposals(&prov.source),
                "{} rejected a proposal about {}",
                prov.source,
                field
            );
        }
        // Only retention expires, and only what was kept past the policy's limit.
        EventPayload::FieldExpired { field, .. } => {
            prop_assert_eq!(prov.source.as_str(), "retention");
            let keep = policy.retention_of(field);
            prop_assert!(keep.is_some(), "{} expired without retention", field);
            let changed_at = match field {
                FieldPath::Consent(p) => before.consents.get(p).map(|c| c.provenance.recorded_at),
                _ => before
                    .field(field)
                    .filter(|r| r.value.is_some())
                    .and_then(|r| r.recorded_at),
            };
            prop_assert!(
                changed_at.is_some_and(|at| keep.is_some_and(|k| at + k <= prov.recorded_at)),
                "{} expired early or had nothing to expire",
                field
            );
        }
        _ => {}
    }
    Ok(())
}

/// A granted consent reads as granted only while its last event is a grant, unexpired,
/// and (for a minor) given by a guardian.
fn check_consents(
    policy: &Policy,
    state: &CustomerState,
    events: &[EventEnvelope],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), TestCaseError> {
    for purpose in PURPOSES {
        let purpose = Purpose::parse(purpose).unwrap();
        if state.consent_status(&purpose, policy, now) != ConsentStatus::Granted {
            continue;
        }
        let last = events.iter().rev().find_map(|e| match &e.event.payload {
            EventPayload::ConsentGranted {
                purpose: p, terms, ..
            } if *p == purpose => Some((true, Some((terms.clone(), e)))),
            EventPayload::ConsentWithdrawn { purpose: p, .. } if *p == purpose => {
                Some((false, None))
            }
            _ => None,
        });
        let Some((true, Some((terms, grant)))) = last else {
            return Err(TestCaseError::fail(format!(
                "{purpose} reads granted but was withdrawn or never granted"
            )));
        };
        prop_assert!(
            terms.expires_at.is_none_or(|at| at > now),
            "expired consent reads granted"
        );
        let max = policy
            .consent_max_age(&purpose)
            .unwrap_or(Duration::days(100_000));
        prop_assert!(
            grant.event.provenance.recorded_at + max > now,
            "stale consent reads granted"
        );
        let guardian = grant
            .event
            .provenance
            .on_behalf_of
            .as_ref()
            .is_some_and(|o| o.is_guardian());
        if state
            .minor(Some(&terms.jurisdiction), policy, now)
            .is_some()
        {
            prop_assert!(
                guardian,
                "a minor's consent without a guardian reads granted"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_the_record_sound(acts in prop::collection::vec(act(), 1..40)) {
        let mut s = Scenario::registered();
        s.policy = retention_policy();
        let policy = s.policy.clone();
        let mut state = s.state();
        for a in &acts {
            s.now += Duration::hours(i64::from(a.advance_hours));
            let change = to_change(&state, &a.step, s.now);
            let touched = touched_field(&change).or_else(|| decided_field(&state, &change));
            let principal = match (SOURCES[a.source], touched) {
                (_, Some(f)) if a.as_authority => Principal::Source(policy.rule(&f).system_of_record.clone()),
                ("steward", _) => steward(),
                (id, _) => source(id),
            };
            if a.erase {
                let erased_before = state.erased.is_some();
                match s.erase("admin", "subject's request") {
                    Ok(e) => {
                        prop_assert!(!erased_before, "a record was erased twice");
                        prop_assert_eq!(e.stream_version, state.stream_version + 1);
                        state = evolve(state, &e);
                        prop_assert!(state.fields.is_empty() && state.consents.is_empty() && state.proposals.is_empty());
                    }
                    Err(r) => {
                        prop_assert!(erased_before, "erasure refused: {}", r);
                        prop_assert_eq!(r.refusal.code(), "erased");
                        continue;
                    }
                }
            } else {
                let decision = match s.decide_as(principal, provenance(a), vec![change]) {
                    Ok(decision) => decision,
                    Err(r) => {
                        prop_assert!(state.erased.is_none() || r.refusal.code() == "erased");
                        continue;
                    }
                };
                prop_assert!(state.erased.is_none(), "an erased record accepted a command");
                for e in &decision.events {
                    prop_assert_eq!(e.stream_version, state.stream_version + 1);
                    check_event(&policy, &state, e)?;
                    state = evolve(state, e);
                }
                s.events.extend(decision.events);
            }
            if a.expire {
                for e in &s.expire() {
                    prop_assert_eq!(e.stream_version, state.stream_version + 1);
                    check_event(&policy, &state, e)?;
                    state = evolve(state, e);
                }
            }
            // fold(events) is the state decide saw, also after a trip through the stored schema.
            prop_assert_eq!(&fold(&s.events), &state);
            let reread: Vec<EventEnvelope> = s.events.iter().map(|e| EventEnvelope {
                id: e.id,
                stream_version: e.stream_version,
                event: StoredEvent::from_event(&e.event).unwrap().into_event().unwrap(),
            }).collect();
            prop_assert_eq!(&fold(&reread), &state);
            check_consents(&policy, &state, &s.events, s.now)?;
            for later in [s.now + Duration::days(11), s.now + Duration::days(800), s.now + Duration::days(365 * 10)] {
                check_consents(&policy, &state, &s.events, later)?;
            }
        }
    }
}
