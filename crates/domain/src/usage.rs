//! Decisions at the moment of use: "may processor P use fields F of customer C for purpose X,
//! now?", answered per field on the customer's current state. Pure and synchronous: the caller
//! reads the state fresh and records the answer.
//!
//! The checks, in the order a denial reports them (the first that fails is the reason):
//! 1. the customer: `unknown_customer`, `erased`, `restricted` (GDPR Art. 18);
//! 2. the processor: `purpose_not_allowed` (it is not registered for the purpose);
//! 3. the basis, from the customer's `consent.<purpose>` record judged by
//!    [`CustomerState::consent_status`] (the one rule the relay uses too): `no_consent` (none,
//!    or its legal basis is not one the purpose accepts), `consent_withdrawn`,
//!    `consent_expired` (past its own expiry, or older than the purpose's maximum age),
//!    `minor_without_guardian`; then each tier's freshness for consent-based uses:
//!    `consent_too_old_for_tier`;
//! 4. identity assurance: `assurance_too_low` against each tier's minimum;
//! 5. the transfer: `transfer_without_basis` when the processor is in another country than
//!    the subject (outside a shared zone) and its transfer basis is not one the policy's
//!    rules accept there. The subject's country is their recorded `jurisdiction`, else the
//!    one their consent was given under;
//! 6. per field: `field_not_needed_for_purpose` (minimisation), then
//!    `field_not_allowed_for_processor`.
//!
//! The tiers that apply are the purpose's own (`[purposes.X] tier`) and the one the caller
//! names (directly or through an action): both bars hold.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::ConsentTerms;
use crate::field::{FieldPath, FieldSelector, FieldValue};
use crate::ids::{EventId, Purpose};
use crate::policy::{Policy, PurposeRule, TierRule};
use crate::state::{ConsentState, ConsentStatus, CustomerState};
use crate::values::{
    CountryCode, Jurisdiction, LegalBasis, NoticeRef, TransferBasis, ValueError, VerificationLevel,
};

/// Who uses data: what it is registered for. A consumer is one; so is a system that only asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorGrant {
    pub purposes: Vec<Purpose>,
    pub fields: Vec<FieldSelector>,
    pub location: Location,
}

/// Where a processor (or consumer) processes data, and what makes sending data there lawful.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Location {
    region: Option<CountryCode>,
    transfer_basis: Option<TransferBasis>,
}

impl Location {
    /// Where the controller processes: no transfer.
    pub const CONTROLLERS: Self = Self {
        region: None,
        transfer_basis: None,
    };

    /// A transfer basis only means something for a processor in a region of its own.
    pub fn new(
        region: Option<CountryCode>,
        transfer_basis: Option<TransferBasis>,
    ) -> Result<Self, ValueError> {
        if transfer_basis.is_some() && region.is_none() {
            return Err(ValueError::new(
                "transfer_basis",
                "only applies to a processor with a region",
            ));
        }
        Ok(Self {
            region,
            transfer_basis,
        })
    }

    /// Where it processes data; `None`: where the controller does (no transfer).
    pub fn region(&self) -> Option<CountryCode> {
        self.region
    }

    /// What makes sending data to it lawful when it is in another country than the subject.
    pub fn transfer_basis(&self) -> Option<TransferBasis> {
        self.transfer_basis
    }

    /// Whether sending the data of a subject of `subject` (their country) here is lawful: no
    /// transfer (the controller's region, the subject's country, or a zone holding both), or
    /// a transfer basis the policy's rules accept from there to here. The one transfer rule
    /// of decisions and of delivery.
    pub fn lawful_for(&self, policy: &Policy, subject: CountryCode) -> bool {
        let Some(region) = self.region else {
            return true;
        };
        policy
            .transfer_bases(subject, region)
            .is_none_or(|bases| self.transfer_basis.is_some_and(|b| bases.contains(&b)))
    }
}

/// The country a subject's data is protected under: their recorded `jurisdiction`, else the
/// one their consent record (`terms`) was given under.
pub fn subject_country(state: &CustomerState, terms: &ConsentTerms) -> CountryCode {
    match state.value(&FieldPath::Jurisdiction) {
        Some(FieldValue::Jurisdiction(j)) => j.country(),
        _ => terms.jurisdiction.country(),
    }
}

/// Why a use is not allowed. The wire names are stable: callers branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    UnknownCustomer,
    Erased,
    Restricted,
    PurposeNotAllowed,
    NoConsent,
    ConsentWithdrawn,
    ConsentExpired,
    MinorWithoutGuardian,
    ConsentTooOldForTier,
    AssuranceTooLow,
    TransferWithoutBasis,
    FieldNotNeededForPurpose,
    FieldNotAllowedForProcessor,
}

impl DenyReason {
    pub const ALL: [Self; 13] = [
        Self::UnknownCustomer,
        Self::Erased,
        Self::Restricted,
        Self::PurposeNotAllowed,
        Self::NoConsent,
        Self::ConsentWithdrawn,
        Self::ConsentExpired,
        Self::MinorWithoutGuardian,
        Self::ConsentTooOldForTier,
        Self::AssuranceTooLow,
        Self::TransferWithoutBasis,
        Self::FieldNotNeededForPurpose,
        Self::FieldNotAllowedForProcessor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCustomer => "unknown_customer",
            Self::Erased => "erased",
            Self::Restricted => "restricted",
            Self::PurposeNotAllowed => "purpose_not_allowed",
            Self::NoConsent => "no_consent",
            Self::ConsentWithdrawn => "consent_withdrawn",
            Self::ConsentExpired => "consent_expired",
            Self::MinorWithoutGuardian => "minor_without_guardian",
            Self::ConsentTooOldForTier => "consent_too_old_for_tier",
            Self::AssuranceTooLow => "assurance_too_low",
            Self::TransferWithoutBasis => "transfer_without_basis",
            Self::FieldNotNeededForPurpose => "field_not_needed_for_purpose",
            Self::FieldNotAllowedForProcessor => "field_not_allowed_for_processor",
        }
    }
}

/// A question, checked against the policy: see [`UseQuestion::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseQuestion {
    pub purpose: Purpose,
    /// Without duplicates, in the order asked.
    pub fields: Vec<FieldPath>,
    /// The tier the caller named (directly or through an action), if any.
    pub tier: Option<String>,
}

impl UseQuestion {
    /// Checks that the policy decides uses for `purpose`, that `fields` is not empty, and that
    /// `tier` or `action` (at most one) names a tier; drops duplicate fields.
    pub fn new(
        policy: &Policy,
        purpose: Purpose,
        fields: Vec<FieldPath>,
        tier: Option<&str>,
        action: Option<&str>,
    ) -> Result<Self, ValueError> {
        if policy.purpose_rule(&purpose).is_none() {
            let known: Vec<&str> = policy.decision_purposes().map(Purpose::as_str).collect();
            return Err(ValueError::new(
                "purpose",
                format!(
                    "the policy decides no uses for '{purpose}'; its purposes are: {}",
                    known.join(", ")
                ),
            ));
        }
        if fields.is_empty() {
            return Err(ValueError::new("fields", "name at least one field"));
        }
        let mut seen = BTreeSet::new();
        let fields = fields
            .into_iter()
            .filter(|f| seen.insert(f.clone()))
            .collect();
        let tier = match (tier, action) {
            (Some(_), Some(_)) => {
                return Err(ValueError::new(
                    "tier",
                    "give a tier or an action, not both",
                ));
            }
            (Some(name), None) => Some(
                policy
                    .tier(name)
                    .ok_or_else(|| ValueError::new("tier", "is not a tier of the policy"))?
                    .0
                    .to_owned(),
            ),
            (None, Some(name)) => Some(
                policy
                    .tier_of_action(name)
                    .ok_or_else(|| ValueError::new("action", "is not an action of the policy"))?
                    .0
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(Self {
            purpose,
            fields,
            tier,
        })
    }
}

/// The consent (or other basis) record a use rests on, as it stood when decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasisRecord {
    pub basis: LegalBasis,
    pub withdrawn: bool,
    pub event_id: EventId,
    pub version: u64,
    pub notice: NoticeRef,
    pub granted_at: DateTime<Utc>,
    pub jurisdiction: Jurisdiction,
}

/// One field's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldAnswer {
    pub field: FieldPath,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DenyReason>,
}

/// The answer to a question about one customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UseAnswer {
    pub fields: Vec<FieldAnswer>,
    /// The record the use rests on, when the customer has one for the purpose.
    pub basis: Option<BasisRecord>,
    /// The customer's stream version the answer was decided on (0: no customer).
    pub stream_version: u64,
    /// The tiers that applied.
    pub tiers: Vec<String>,
}

impl UseAnswer {
    /// The fields allowed, in the order asked.
    pub fn allowed(&self) -> Vec<&FieldPath> {
        self.fields
            .iter()
            .filter(|a| a.allowed)
            .map(|a| &a.field)
            .collect()
    }
}

/// Decides `question` for the customer whose current state is `state` (`None`: never
/// registered), asked by a processor registered as `processor`, at `now`.
pub fn decide_use(
    policy: &Policy,
    processor: &ProcessorGrant,
    question: &UseQuestion,
    state: Option<&CustomerState>,
    now: DateTime<Utc>,
) -> UseAnswer {
    let rule = policy.purpose_rule(&question.purpose);
    let tiers: Vec<(&str, &TierRule)> = rule
        .and_then(|r| r.tier.as_deref())
        .into_iter()
        .chain(question.tier.as_deref())
        .filter_map(|name| policy.tier(name))
        .fold(Vec::new(), |mut acc, t| {
            if !acc.iter().any(|(n, _)| *n == t.0) {
                acc.push(t);
            }
            acc
        });
    let basis = state.and_then(|s| basis_record(s, &question.purpose));
    let whole = match (state, rule) {
        (_, None) => Some(DenyReason::PurposeNotAllowed),
        (None, _) => Some(DenyReason::UnknownCustomer),
        (Some(s), Some(rule)) => customer_reason(policy, processor, question, s, rule, &tiers, now),
    };
    let fields = question
        .fields
        .iter()
        .map(|field| {
            let reason = whole.or_else(|| {
                let rule = rule?;
                if !rule.needs(field) {
                    Some(DenyReason::FieldNotNeededForPurpose)
                } else if !processor.fields.iter().any(|s| s.matches(field)) {
                    Some(DenyReason::FieldNotAllowedForProcessor)
                } else {
                    None
                }
            });
            FieldAnswer {
                field: field.clone(),
                allowed: reason.is_none(),
                reason,
            }
        })
        .collect();
    UseAnswer {
        fields,
        basis,
        stream_version: state.map_or(0, |s| s.stream_version),
        tiers: tiers.iter().map(|(n, _)| (*n).to_owned()).collect(),
    }
}

/// What denies every field of the question, if anything does.
fn customer_reason(
    policy: &Policy,
    processor: &ProcessorGrant,
    question: &UseQuestion,
    state: &CustomerState,
    rule: &PurposeRule,
    tiers: &[(&str, &TierRule)],
    now: DateTime<Utc>,
) -> Option<DenyReason> {
    if !state.registered {
        return Some(DenyReason::UnknownCustomer);
    }
    if state.erased.is_some() {
        return Some(DenyReason::Erased);
    }
    if state.restricted.is_some() {
        return Some(DenyReason::Restricted);
    }
    let purpose = &question.purpose;
    if !processor.purposes.contains(purpose) {
        return Some(DenyReason::PurposeNotAllowed);
    }
    let record = state.consents.get(purpose);
    match state.consent_status(purpose, policy, now) {
        ConsentStatus::Granted => {}
        ConsentStatus::NeverGranted => return Some(DenyReason::NoConsent),
        ConsentStatus::Withdrawn => return Some(DenyReason::ConsentWithdrawn),
        ConsentStatus::Expired | ConsentStatus::Stale => {
            return Some(DenyReason::ConsentExpired);
        }
        ConsentStatus::GuardianRequired => return Some(DenyReason::MinorWithoutGuardian),
    }
    let record = record?;
    if !rule.bases.contains(&record.terms.basis) {
        return Some(DenyReason::NoConsent);
    }
    if record.terms.basis == LegalBasis::Consent {
        let too_old = tiers.iter().any(|(_, t)| {
            t.max_consent_age_days.is_some_and(|days| {
                record
                    .granted_at
                    .checked_add_signed(chrono::Duration::days(i64::from(days)))
                    .is_some_and(|until| until <= now)
            })
        });
        if too_old {
            return Some(DenyReason::ConsentTooOldForTier);
        }
    }
    let level = match state.value(&FieldPath::VerificationLevel) {
        Some(FieldValue::VerificationLevel(level)) => *level,
        _ => VerificationLevel::None,
    };
    if tiers
        .iter()
        .any(|(_, t)| t.min_verification.is_some_and(|min| level < min))
    {
        return Some(DenyReason::AssuranceTooLow);
    }
    if !processor
        .location
        .lawful_for(policy, subject_country(state, &record.terms))
    {
        return Some(DenyReason::TransferWithoutBasis);
    }
    None
}

/// The customer's record for `purpose`, granted or withdrawn (`None`: never granted, or
/// expired by retention).
fn basis_record(state: &CustomerState, purpose: &Purpose) -> Option<BasisRecord> {
    let c = state.consents.get(purpose)?;
    Some(BasisRecord {
        basis: c.terms.basis,
        withdrawn: c.state == ConsentState::Withdrawn,
        event_id: c.last_event_id,
        version: c.version,
        notice: c.terms.notice.clone(),
        granted_at: c.granted_at,
        jurisdiction: c.terms.jurisdiction.clone(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use chrono::Duration;

    use super::*;
    use crate::event::{ConsentTerms, Provenance};
    use crate::ids::{Actor, ActorKind, IdempotencyKey, OnBehalfOf, Relationship, SourceId};
    use crate::state::{ConsentRecord, Erasure, FieldRecord, Restriction};
    use crate::values::{BirthDate, ConsentChannel};

    fn now() -> DateTime<Utc> {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    fn policy() -> Policy {
        Policy::default_policy().unwrap()
    }

    fn purpose(p: &str) -> Purpose {
        Purpose::parse(p).unwrap()
    }

    fn field(f: &str) -> FieldPath {
        FieldPath::parse(f).unwrap()
    }

    fn processor(purposes: &[&str], fields: &[&str]) -> ProcessorGrant {
        ProcessorGrant {
            purposes: purposes.iter().map(|p| purpose(p)).collect(),
            fields: fields
                .iter()
                .map(|f| FieldSelector::parse(f).unwrap())
                .collect(),
            location: Location::CONTROLLERS,
        }
    }

    fn provenance(at: DateTime<Utc>) -> Provenance {
        Provenance {
            source: SourceId::parse("consent_portal").unwrap(),
            actor: Actor::new(ActorKind::Subject, "me").unwrap(),
            on_behalf_of: None,
            evidence: None,
            observed_at: None,
            recorded_at: at,
            correlation_id: None,
            causation_id: None,
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            reason: None,
            approved_by: None,
        }
    }

    /// A registered customer who granted `purpose` on `basis` `age` ago, in DE.
    fn customer(purpose_name: &str, basis: LegalBasis, age: Duration) -> CustomerState {
        let granted_at = now() - age;
        let mut state = CustomerState {
            registered: true,
            stream_version: 7,
            ..CustomerState::default()
        };
        state.consents.insert(
            purpose(purpose_name),
            ConsentRecord {
                state: ConsentState::Granted,
                terms: ConsentTerms {
                    basis,
                    notice: NoticeRef::new("privacy", "3", &"ab".repeat(32)).unwrap(),
                    channel: ConsentChannel::Web,
                    jurisdiction: Jurisdiction::parse("DE").unwrap(),
                    expires_at: None,
                },
                granted_at,
                granted_by: SourceId::parse("consent_portal").unwrap(),
                on_behalf_of: None,
                withdrawn_at: None,
                version: 2,
                provenance: provenance(granted_at),
                last_event_id: EventId::from_uuid(uuid::Uuid::now_v7()),
            },
        );
        state
    }

    fn set(state: &mut CustomerState, f: &str, value: FieldValue) {
        state.fields.insert(
            field(f),
            FieldRecord {
                value: Some(value),
                version: 1,
                ..FieldRecord::empty()
            },
        );
    }

    fn ask(
        grant: &ProcessorGrant,
        p: &str,
        fields: &[&str],
        tier: Option<&str>,
        state: Option<&CustomerState>,
    ) -> UseAnswer {
        let policy = policy();
        let q = UseQuestion::new(
            &policy,
            purpose(p),
            fields.iter().map(|f| field(f)).collect(),
            tier,
            None,
        )
        .unwrap();
        decide_use(&policy, grant, &q, state, now())
    }

    /// The one reason every field was denied for.
    fn reason(answer: &UseAnswer) -> Option<DenyReason> {
        let reasons: BTreeSet<Option<DenyReason>> =
            answer.fields.iter().map(|a| a.reason).collect();
        assert_eq!(reasons.len(), 1, "{answer:?}");
        reasons.into_iter().next().unwrap()
    }

    #[test]
    fn a_fresh_consent_allows_what_the_purpose_and_processor_both_name() {
        let crm = processor(&["marketing"], &["email", "name.*"]);
        let state = customer("marketing", LegalBasis::Consent, Duration::days(10));
        let answer = ask(
            &crm,
            "marketing",
            &["email", "name.given"],
            None,
            Some(&state),
        );
        assert_eq!(reason(&answer), None);
        assert_eq!(answer.stream_version, 7);
        assert_eq!(answer.tiers, ["low"]);
        let basis = answer.basis.unwrap();
        assert_eq!(basis.basis, LegalBasis::Consent);
        assert_eq!(basis.version, 2);
        // Minimisation, then the processor's own registration, per field.
        let answer = ask(
            &crm,
            "marketing",
            &["email", "birth_date", "phone"],
            None,
            Some(&state),
        );
        let reasons: Vec<_> = answer.fields.iter().map(|a| a.reason).collect();
        assert_eq!(
            reasons,
            [
                None,
                Some(DenyReason::FieldNotNeededForPurpose),
                Some(DenyReason::FieldNotAllowedForProcessor)
            ]
        );
        assert_eq!(answer.allowed(), [&field("email")]);
    }

    #[test]
    fn every_customer_level_reason_is_reached() {
        let crm = processor(&["marketing", "profiling"], &["*"]);
        let fresh = || customer("marketing", LegalBasis::Consent, Duration::days(10));
        let q =
            |state: &CustomerState| reason(&ask(&crm, "marketing", &["email"], None, Some(state)));
        assert_eq!(
            reason(&ask(&crm, "marketing", &["email"], None, None)),
            Some(DenyReason::UnknownCustomer)
        );
        let mut erased = fresh();
        erased.erased = Some(Erasure {
            at: now(),
            source: SourceId::parse("idp").unwrap(),
            reason: "asked".into(),
        });
        assert_eq!(q(&erased), Some(DenyReason::Erased));
        let mut restricted = fresh();
        restricted.restricted = Some(Restriction {
            since: now(),
            by: Actor::new(ActorKind::Agent, "a").unwrap(),
            reason: "contested".into(),
        });
        assert_eq!(q(&restricted), Some(DenyReason::Restricted));
        let other = processor(&["service"], &["*"]);
        assert_eq!(
            reason(&ask(&other, "marketing", &["email"], None, Some(&fresh()))),
            Some(DenyReason::PurposeNotAllowed)
        );
        let never = customer("service", LegalBasis::Contract, Duration::days(1));
        assert_eq!(q(&never), Some(DenyReason::NoConsent));
        // A record whose basis the purpose does not accept is no basis for it.
        let wrong_basis = customer(
            "marketing",
            LegalBasis::LegitimateInterests,
            Duration::days(1),
        );
        assert_eq!(q(&wrong_basis), Some(DenyReason::NoConsent));
        let mut withdrawn = fresh();
        withdrawn
            .consents
            .get_mut(&purpose("marketing"))
            .unwrap()
            .state = ConsentState::Withdrawn;
        assert_eq!(q(&withdrawn), Some(DenyReason::ConsentWithdrawn));
        let withdrawn_answer = ask(&crm, "marketing", &["email"], None, Some(&withdrawn));
        assert!(withdrawn_answer.basis.unwrap().withdrawn);
        let mut expired = fresh();
        expired
            .consents
            .get_mut(&purpose("marketing"))
            .unwrap()
            .terms
            .expires_at = Some(now() - Duration::seconds(1));
        assert_eq!(q(&expired), Some(DenyReason::ConsentExpired));
        // Older than the purpose's own maximum age (730 days for marketing).
        let stale = customer("marketing", LegalBasis::Consent, Duration::days(800));
        assert_eq!(q(&stale), Some(DenyReason::ConsentExpired));
        let mut minor = fresh();
        set(
            &mut minor,
            "birth_date",
            FieldValue::BirthDate(BirthDate::parse("2015-01-01").unwrap()),
        );
        assert_eq!(q(&minor), Some(DenyReason::MinorWithoutGuardian));
        minor
            .consents
            .get_mut(&purpose("marketing"))
            .unwrap()
            .on_behalf_of = Some(OnBehalfOf::new(Relationship::Guardian, "parent").unwrap());
        assert_eq!(
            q(&minor),
            Some(DenyReason::MinorWithoutGuardian),
            "an unrecorded guardian's consent does not count"
        );
        minor.relationships.insert(
            crate::ids::RelationshipId::from(uuid::Uuid::now_v7()),
            crate::delegation::RecordedRelationship {
                representative: OnBehalfOf::new(Relationship::Guardian, "parent").unwrap(),
                evidence: crate::values::Evidence::new(
                    crate::ids::Key::parse("signed_form").unwrap(),
                    "form-1",
                )
                .unwrap(),
                scope: None,
                expires_at: None,
                recorded_at: now(),
                recorded_by: SourceId::parse("idp").unwrap(),
                ended: None,
            },
        );
        assert_eq!(q(&minor), None, "a recorded guardian's consent counts");
    }

    #[test]
    fn a_tier_sets_the_consents_age_and_the_identitys_assurance() {
        let crm = processor(&["marketing", "profiling"], &["*"]);
        // 400 days: within marketing's 730, past the high tier's 365.
        let mut state = customer("marketing", LegalBasis::Consent, Duration::days(400));
        set(
            &mut state,
            "verification.level",
            FieldValue::VerificationLevel(VerificationLevel::High),
        );
        assert_eq!(
            reason(&ask(&crm, "marketing", &["email"], None, Some(&state))),
            None
        );
        let high = ask(&crm, "marketing", &["email"], Some("high"), Some(&state));
        assert_eq!(reason(&high), Some(DenyReason::ConsentTooOldForTier));
        assert_eq!(high.tiers, ["low", "high"]);
        // Profiling is high by itself, whatever the caller names.
        let mut profiling = customer("profiling", LegalBasis::Consent, Duration::days(30));
        assert_eq!(
            reason(&ask(
                &crm,
                "profiling",
                &["email"],
                Some("low"),
                Some(&profiling)
            )),
            Some(DenyReason::AssuranceTooLow)
        );
        set(
            &mut profiling,
            "verification.level",
            FieldValue::VerificationLevel(VerificationLevel::Substantial),
        );
        assert_eq!(
            reason(&ask(&crm, "profiling", &["email"], None, Some(&profiling))),
            None
        );
        // The age limit is about consent: a use on another basis is not held to it.
        let contract = customer("service", LegalBasis::Contract, Duration::days(4000));
        let service = processor(&["service"], &["*"]);
        let mut verified = contract.clone();
        set(
            &mut verified,
            "verification.level",
            FieldValue::VerificationLevel(VerificationLevel::High),
        );
        assert_eq!(
            reason(&ask(
                &service,
                "service",
                &["email"],
                Some("high"),
                Some(&verified)
            )),
            None
        );
    }

    #[test]
    fn a_transfer_basis_needs_a_region() {
        let error = Location::new(None, Some(TransferBasis::Scc)).unwrap_err();
        assert_eq!(error.what, "transfer_basis");
        let home = Location::new(None, None).unwrap();
        assert_eq!(home, Location::CONTROLLERS);
        let us = CountryCode::parse("US").unwrap();
        assert!(home.lawful_for(&policy(), us), "no region: no transfer");
    }

    #[test]
    fn a_processor_abroad_needs_a_transfer_basis_the_policy_accepts_there() {
        let state = customer("marketing", LegalBasis::Consent, Duration::days(10));
        let abroad = |region: &str, basis: Option<TransferBasis>| ProcessorGrant {
            location: Location::new(Some(CountryCode::parse(region).unwrap()), basis).unwrap(),
            ..processor(&["marketing"], &["*"])
        };
        let q = |p: &ProcessorGrant, s: &CustomerState| {
            reason(&ask(p, "marketing", &["email"], None, Some(s)))
        };
        // Inside the EEA: no transfer.
        assert_eq!(q(&abroad("FR", None), &state), None);
        assert_eq!(
            q(&abroad("US", None), &state),
            Some(DenyReason::TransferWithoutBasis)
        );
        assert_eq!(
            q(&abroad("US", Some(TransferBasis::Adequacy)), &state),
            Some(DenyReason::TransferWithoutBasis),
            "no adequacy decision covers every US processor"
        );
        assert_eq!(q(&abroad("US", Some(TransferBasis::Scc)), &state), None);
        assert_eq!(
            q(&abroad("JP", Some(TransferBasis::Adequacy)), &state),
            None
        );
        // The recorded jurisdiction wins over the consent's: a US subject's data to a US
        // processor is no transfer.
        let mut american = state.clone();
        set(
            &mut american,
            "jurisdiction",
            FieldValue::Jurisdiction(Jurisdiction::parse("US-CA").unwrap()),
        );
        assert_eq!(q(&abroad("US", None), &american), None);
    }

    #[test]
    fn questions_are_checked_against_the_policy() {
        let policy = policy();
        let fields = || vec![field("email"), field("email")];
        let q = UseQuestion::new(
            &policy,
            purpose("marketing"),
            fields(),
            None,
            Some("payment"),
        )
        .unwrap();
        assert_eq!(q.fields.len(), 1, "duplicates dropped");
        assert_eq!(q.tier.as_deref(), Some("high"));
        for (p, fields, tier, action) in [
            ("shoe_size", fields(), None, None),
            ("marketing", vec![], None, None),
            ("marketing", fields(), Some("extreme"), None),
            ("marketing", fields(), None, Some("juggling")),
            ("marketing", fields(), Some("low"), Some("payment")),
        ] {
            assert!(
                UseQuestion::new(&policy, purpose(p), fields, tier, action).is_err(),
                "{p} {tier:?} {action:?}"
            );
        }
    }

    #[test]
    fn every_reason_has_a_distinct_wire_name() {
        let names: BTreeSet<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DenyReason::ALL.len());
        for r in DenyReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
    }
}
