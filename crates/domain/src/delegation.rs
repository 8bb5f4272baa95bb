//! Recorded relationships (issue 17): who may act for a customer, on what, and until when.
//!
//! A guardian or delegate relationship is recorded on the subject's own stream
//! (`record_relationship`, `end_relationship`), with evidence, a scope and an optional expiry.
//! A command whose provenance claims `on_behalf_of` is decided only if a *live* recorded
//! relationship of that kind and representative covers every field it changes
//! ([`check_claim`]). Live means: not ended, not expired, and for a guardian, the subject is a
//! minor ([`CustomerState::minor`], the one rule of minor status), so a guardianship ends by
//! itself when the minor comes of age.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::command::{Change, Refusal};
use crate::field::{FieldPath, FieldSelector};
use crate::ids::{OnBehalfOf, Purpose, RelationshipId, SourceId};
use crate::policy::Policy;
use crate::state::CustomerState;
use crate::values::{Evidence, Jurisdiction};

/// Most purposes or field selectors a scope may list.
pub const MAX_SCOPE_ENTRIES: usize = 64;

/// What a representative may change: consents of the listed `purposes`, and the fields the
/// `fields` selectors match (`consent.*` or `*` cover every consent too). A relationship
/// without a scope covers everything (a guardian's usual standing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelationshipScope {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub purposes: BTreeSet<Purpose>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSelector>,
}

impl RelationshipScope {
    /// Whether the scope covers a change of `field`.
    pub fn covers(&self, field: &FieldPath) -> bool {
        let purpose = matches!(field, FieldPath::Consent(p) if self.purposes.contains(p));
        purpose || self.fields.iter().any(|s| s.matches(field))
    }

    /// An empty scope would cover nothing: refused rather than recorded.
    fn check(&self) -> Result<(), Refusal> {
        let empty = self.purposes.is_empty() && self.fields.is_empty();
        if empty || self.purposes.len() > MAX_SCOPE_ENTRIES || self.fields.len() > MAX_SCOPE_ENTRIES
        {
            return Err(scope_refusal());
        }
        Ok(())
    }
}

fn scope_refusal() -> Refusal {
    Refusal::InvalidValue {
        field: "scope".to_owned(),
        reason: format!(
            "a scope names at most {MAX_SCOPE_ENTRIES} purposes and {MAX_SCOPE_ENTRIES} field selectors, at least one in all; leave it out to cover everything"
        ),
    }
}

/// How a relationship ended by an `end_relationship`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationshipEnding {
    pub at: DateTime<Utc>,
    pub by: SourceId,
    pub reason: String,
}

/// A relationship as recorded on the subject's record. Ended ones stay, so the record shows
/// who could act for the subject and until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedRelationship {
    /// The kind and the id an `on_behalf_of` claim names.
    pub representative: OnBehalfOf,
    pub evidence: Evidence,
    /// `None`: everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<RelationshipScope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub recorded_at: DateTime<Utc>,
    pub recorded_by: SourceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<RelationshipEnding>,
}

/// Where a relationship stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RelationshipStatus {
    Live,
    Ended,
    Expired,
    /// A guardianship whose subject is no longer (or not known to be) a minor.
    CameOfAge,
}

impl RelationshipStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Ended => "ended",
            Self::Expired => "expired",
            Self::CameOfAge => "came_of_age",
        }
    }
}

impl RecordedRelationship {
    /// Its standing at `now` for a subject in `state`; `fallback` is the jurisdiction minor
    /// status is judged in when the record has none (a consent's own).
    pub fn status(
        &self,
        state: &CustomerState,
        fallback: Option<&Jurisdiction>,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> RelationshipStatus {
        if self.ended.is_some() {
            return RelationshipStatus::Ended;
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return RelationshipStatus::Expired;
        }
        if self.representative.is_guardian() && state.minor(fallback, policy, now).is_none() {
            return RelationshipStatus::CameOfAge;
        }
        RelationshipStatus::Live
    }

    fn covers(&self, field: &FieldPath) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers(field))
    }
}

impl CustomerState {
    /// The live relationship `claim` names, if any (see [`RecordedRelationship::status`]).
    pub fn live_relationship(
        &self,
        claim: &OnBehalfOf,
        fallback: Option<&Jurisdiction>,
        policy: &Policy,
        now: DateTime<Utc>,
    ) -> Option<(&RelationshipId, &RecordedRelationship)> {
        self.relationships.iter().find(|(_, r)| {
            r.representative == *claim
                && r.status(self, fallback, policy, now) == RelationshipStatus::Live
        })
    }
}

/// The field a change touches on the subject's behalf, and the jurisdiction of a grant (the
/// fallback of minor status); `None` for changes nobody makes on a subject's behalf.
fn touched<'c>(
    change: &'c Change,
    state: &CustomerState,
) -> Option<(FieldPath, Option<&'c Jurisdiction>)> {
    match change {
        Change::SetField { field, .. }
        | Change::ClearField { field, .. }
        | Change::RequestChange { field, .. }
        | Change::ConfirmVerification { field, .. }
        | Change::CancelChange { field, .. }
        | Change::ProposeValue { field, .. } => Some((field.clone(), None)),
        Change::LeaveHousehold { .. } => Some((FieldPath::Household, None)),
        Change::GrantConsent {
            purpose,
            jurisdiction,
            ..
        } => Some((FieldPath::Consent(purpose.clone()), Some(jurisdiction))),
        Change::WithdrawConsent { purpose } => Some((FieldPath::Consent(purpose.clone()), None)),
        Change::AcceptProposal { proposal_id } | Change::RejectProposal { proposal_id, .. } => {
            state
                .proposals
                .get(proposal_id)
                .map(|p| (p.field.clone(), None))
        }
        Change::Register
        | Change::RestrictProcessing { .. }
        | Change::LiftRestriction { .. }
        | Change::ActOnException { .. }
        | Change::RecordRelationship { .. }
        | Change::EndRelationship { .. } => None,
    }
}

/// Checks a change made under an `on_behalf_of` claim: a live recorded relationship of that
/// kind and representative must cover the field it changes. Decided on the state the change
/// meets (earlier changes of the command applied), at `now`. The one place of this rule.
pub fn check_claim(
    state: &CustomerState,
    claim: &OnBehalfOf,
    change: &Change,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    let touched = touched(change, state);
    let fallback = touched.as_ref().and_then(|(_, j)| *j);
    let Some((_, live)) = state.live_relationship(claim, fallback, policy, now) else {
        // Say how the latest one with this representative stands, without naming them: the
        // id may be a person's. Ids are UUIDv7, so the map's last is the latest recorded.
        let why = state
            .relationships
            .values()
            .rfind(|r| r.representative == *claim)
            .map(|r| r.status(state, fallback, policy, now));
        return Err(Refusal::UnrecordedRepresentative {
            relationship: claim.relationship(),
            standing: why,
        });
    };
    match touched {
        Some((field, _)) if live.covers(&field) => Ok(()),
        Some((field, _)) => Err(Refusal::OutsideDelegatedScope {
            relationship: claim.relationship(),
            field,
        }),
        None => Err(Refusal::Forbidden {
            reason: format!(
                "{} is not made on a customer's behalf: send it without on_behalf_of",
                change.op()
            ),
        }),
    }
}

/// Checks what `record_relationship` carries before it is recorded.
pub fn check_new(
    state: &CustomerState,
    representative: &OnBehalfOf,
    scope: Option<&RelationshipScope>,
    expires_at: Option<DateTime<Utc>>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if let Some(scope) = scope {
        scope.check()?;
    }
    if expires_at.is_some_and(|at| at <= now) {
        return Err(Refusal::InvalidValue {
            field: "expires_at".to_owned(),
            reason: "expires_at must be in the future".to_owned(),
        });
    }
    if representative.is_guardian() && state.minor(None, policy, now).is_none() {
        return Err(Refusal::InvalidTransition {
            field: None,
            reason: "a guardian is recorded for a minor: record the subject's birth_date (and jurisdiction) first".to_owned(),
        });
    }
    let live = state
        .live_relationship(representative, None, policy, now)
        .is_some();
    if live {
        return Err(Refusal::InvalidTransition {
            field: None,
            reason: format!(
                "a live {} relationship with this representative is already recorded: end it first",
                representative.relationship()
            ),
        });
    }
    Ok(())
}
