//! A customer's golden record as shown to people and scripts: every field, every consent with
//! its status evaluated at one instant, and the open proposals.

use std::io::{self, Write};

use chrono::{DateTime, Utc};
use idledger_domain::event::ConsentTerms;
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{ChallengeId, CustomerId, OnBehalfOf, ProposalId, Purpose, SourceId};
use idledger_domain::policy::Policy;
use idledger_domain::state::{ConsentState, ConsentStatus, CustomerState, Verification};
use serde::Serialize;

use crate::render::{self, NONE, kv, opt, time};

#[derive(Debug, Serialize)]
pub struct RecordView {
    pub customer_id: CustomerId,
    /// The instant the record is shown as of, when not the present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// The instant consent statuses were evaluated at.
    pub evaluated_at: DateTime<Utc>,
    pub registered_at: Option<DateTime<Utc>>,
    pub stream_version: u64,
    pub fields: Vec<FieldView>,
    pub consents: Vec<ConsentView>,
    pub proposals: Vec<ProposalView>,
}

#[derive(Debug, Serialize)]
pub struct FieldView {
    pub field: FieldPath,
    pub value: Option<serde_json::Value>,
    pub version: u64,
    pub source: Option<SourceId>,
    pub recorded_at: Option<DateTime<Utc>>,
    pub asserted_at: Option<DateTime<Utc>>,
    pub verification: Option<Verification>,
    pub pending: Option<PendingView>,
}

#[derive(Debug, Serialize)]
pub struct PendingView {
    pub value: serde_json::Value,
    pub challenge_id: ChallengeId,
    pub requested_by: SourceId,
    pub requested_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Whether it can still be confirmed at the evaluation instant.
    pub live: bool,
}

#[derive(Debug, Serialize)]
pub struct ConsentView {
    pub purpose: Purpose,
    /// The standing at the evaluation instant: expiry, maximum age and minor status applied.
    pub status: ConsentStatus,
    /// The last recorded state.
    pub state: ConsentState,
    pub terms: ConsentTerms,
    pub granted_at: DateTime<Utc>,
    pub granted_by: SourceId,
    pub on_behalf_of: Option<OnBehalfOf>,
    pub withdrawn_at: Option<DateTime<Utc>>,
    pub version: u64,
}

#[derive(Debug, Serialize)]
pub struct ProposalView {
    pub proposal_id: ProposalId,
    pub field: FieldPath,
    pub value: serde_json::Value,
    pub proposed_by: SourceId,
    pub proposed_at: DateTime<Utc>,
}

impl RecordView {
    /// The record of `state`, with consents evaluated at `at` (the as-of instant, or now).
    pub fn new(
        customer_id: CustomerId,
        state: &CustomerState,
        policy: &Policy,
        at: DateTime<Utc>,
        as_of: Option<DateTime<Utc>>,
    ) -> Self {
        let fields = state
            .fields
            .iter()
            .map(|(field, rec)| FieldView {
                field: field.clone(),
                value: rec.value.as_ref().map(|v| v.to_json()),
                version: rec.version,
                source: rec.source.clone(),
                recorded_at: rec.recorded_at,
                asserted_at: rec.asserted_at,
                verification: rec.verification.clone(),
                pending: rec.pending.as_ref().map(|p| PendingView {
                    value: p.value.to_json(),
                    challenge_id: p.challenge_id,
                    requested_by: p.requested_by.clone(),
                    requested_at: p.requested_at,
                    expires_at: p.expires_at,
                    live: p.expires_at > at,
                }),
            })
            .collect();
        let consents = state
            .consents
            .iter()
            .map(|(purpose, c)| ConsentView {
                purpose: purpose.clone(),
                status: state.consent_status(purpose, policy, at),
                state: c.state,
                terms: c.terms.clone(),
                granted_at: c.granted_at,
                granted_by: c.granted_by.clone(),
                on_behalf_of: c.on_behalf_of.clone(),
                withdrawn_at: c.withdrawn_at,
                version: c.version,
            })
            .collect();
        let proposals = state
            .proposals
            .iter()
            .map(|(id, p)| ProposalView {
                proposal_id: *id,
                field: p.field.clone(),
                value: p.value.to_json(),
                proposed_by: p.proposed_by.clone(),
                proposed_at: p.proposed_at,
            })
            .collect();
        Self {
            customer_id,
            as_of,
            evaluated_at: at,
            registered_at: state.registered_at,
            stream_version: state.stream_version,
            fields,
            consents,
            proposals,
        }
    }

    /// The record as aligned text.
    pub fn write_text(&self, w: &mut dyn Write) -> io::Result<()> {
        match self.as_of {
            Some(at) => writeln!(w, "customer {} as of {}", self.customer_id, time(at))?,
            None => writeln!(w, "customer {}", self.customer_id)?,
        }
        kv(w, 2, "registered at", opt(self.registered_at.map(time)))?;
        kv(w, 2, "stream version", self.stream_version)?;
        writeln!(w, "fields")?;
        if self.fields.is_empty() {
            writeln!(w, "  (none)")?;
        }
        for f in &self.fields {
            writeln!(w, "  {}", f.field)?;
            kv(w, 4, "value", opt(f.value.as_ref().map(json_text)))?;
            kv(w, 4, "version", f.version)?;
            kv(w, 4, "source", opt(f.source.as_ref()))?;
            kv(w, 4, "recorded at", opt(f.recorded_at.map(time)))?;
            if let Some(at) = f.asserted_at {
                kv(w, 4, "observed at", time(at))?;
            }
            let verification = f.verification.as_ref().map(|v| {
                let evidence = v
                    .evidence
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                format!(
                    "verified {} by {}{evidence}",
                    time(v.verified_at),
                    v.verified_by
                )
            });
            kv(w, 4, "verification", opt(verification))?;
            let pending = f.pending.as_ref().map(|p| {
                let state = if p.live { "expires" } else { "expired" };
                format!(
                    "{} requested by {} at {} (challenge {}, {state} {})",
                    json_text(&p.value),
                    p.requested_by,
                    time(p.requested_at),
                    p.challenge_id,
                    time(p.expires_at)
                )
            });
            kv(w, 4, "pending change", opt(pending))?;
        }
        writeln!(w, "consents (status at {})", time(self.evaluated_at))?;
        if self.consents.is_empty() {
            writeln!(w, "  (none)")?;
        }
        for c in &self.consents {
            writeln!(w, "  {}", c.purpose)?;
            kv(w, 4, "status", status(c.status))?;
            kv(w, 4, "terms", render::terms(&c.terms))?;
            kv(
                w,
                4,
                "granted at",
                format!("{} by {}", time(c.granted_at), c.granted_by),
            )?;
            kv(w, 4, "on behalf of", opt(c.on_behalf_of.as_ref()))?;
            kv(w, 4, "withdrawn at", opt(c.withdrawn_at.map(time)))?;
            kv(w, 4, "version", c.version)?;
        }
        writeln!(w, "open proposals")?;
        if self.proposals.is_empty() {
            writeln!(w, "  (none)")?;
        }
        for p in &self.proposals {
            writeln!(w, "  {}", p.proposal_id)?;
            kv(w, 4, "field", &p.field)?;
            kv(w, 4, "value", json_text(&p.value))?;
            kv(
                w,
                4,
                "proposed by",
                format!("{} at {}", p.proposed_by, time(p.proposed_at)),
            )?;
        }
        Ok(())
    }
}

/// A consent status in words.
pub fn status(s: ConsentStatus) -> &'static str {
    match s {
        ConsentStatus::Granted => "granted",
        ConsentStatus::Withdrawn => "withdrawn",
        ConsentStatus::Expired => "expired (past the grant's own expiry)",
        ConsentStatus::Stale => "stale (older than the policy allows)",
        ConsentStatus::GuardianRequired => {
            "not valid: the subject is a minor and no guardian gave it"
        }
        ConsentStatus::NeverGranted => "never granted",
    }
}

fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => NONE.to_owned(),
        other => other.to_string(),
    }
}
