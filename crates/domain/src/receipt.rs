//! Consent receipts: what a customer agreed to (or withdrew), as a self-contained statement a
//! downstream processor can check offline once it is signed (a compact JWS, `typ`
//! [`RECEIPT_TYP`]). The members carry the fields of the Kantara Consent Receipt v1.1 and the
//! ISO/IEC TS 27560 consent record, under plain names (docs/contracts.md maps them).
//!
//! A receipt is a function of the consent record: the same record gives the same claims, so a
//! receipt read twice (or carried by the consent's CloudEvent and read later) is the same
//! statement.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::event::{EventEnvelope, EventPayload};
use crate::ids::{Purpose, Relationship};
use crate::policy::Policy;
use crate::state::{ConsentRecord, ConsentState, CustomerState};

/// The JWS `typ` of a consent receipt.
pub const RECEIPT_TYP: &str = "idledger-consent-receipt+jwt";
/// The version of the receipt's claims.
pub const RECEIPT_VERSION: &str = "idledger-consent-receipt-1";

/// A consent receipt's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptClaims {
    /// The issuer: this idledger instance.
    pub iss: String,
    /// The receipt's id: the id of the event that made the record what it is.
    pub jti: String,
    /// The data subject: the customer's id (or, in a pseudonymous consumer's CloudEvent, its
    /// alias of the customer).
    pub sub: String,
    /// When the consent was given or withdrawn (seconds).
    pub iat: i64,
    pub receipt_version: &'static str,
    /// The controller the consent was given to (the policy's `controller`, else the issuer).
    pub controller: String,
    pub jurisdiction: String,
    /// RFC 3339 form of `iat`.
    pub consent_timestamp: DateTime<Utc>,
    /// How it was collected: `web`, `mobile_app`, `email`, `paper`…
    pub collection_method: String,
    /// The source system that recorded it (the withdrawal, for a withdrawn consent).
    pub collected_by: String,
    pub notice: ReceiptNotice,
    pub purpose: String,
    pub legal_basis: String,
    /// `granted` or `withdrawn`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Whether the purpose processes special categories of data (the policy's
    /// `[purposes.X] sensitive`).
    pub sensitive: bool,
    /// Given by someone on the subject's behalf: the relationship (never the person's id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<Relationship>,
    pub consent_event_id: String,
    pub consent_version: u64,
}

/// The exact notice the consent was given against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReceiptNotice {
    pub id: String,
    pub version: String,
    pub sha256: String,
    /// Where the notice is published, when the consent recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The receipt of the `purpose` consent of the customer named `subject`, as `record` stands,
/// issued by `issuer`.
pub fn receipt_claims(
    subject: &str,
    purpose: &Purpose,
    record: &ConsentRecord,
    policy: &Policy,
    issuer: &str,
) -> ReceiptClaims {
    let (state, at) = match (record.state, record.withdrawn_at) {
        (ConsentState::Withdrawn, at) => ("withdrawn", at.unwrap_or(record.provenance.recorded_at)),
        (ConsentState::Granted, _) => ("granted", record.granted_at),
    };
    let terms = &record.terms;
    ReceiptClaims {
        iss: issuer.to_owned(),
        jti: record.last_event_id.to_string(),
        sub: subject.to_owned(),
        iat: at.timestamp(),
        receipt_version: RECEIPT_VERSION,
        controller: policy.controller().unwrap_or(issuer).to_owned(),
        jurisdiction: terms.jurisdiction.to_string(),
        consent_timestamp: at,
        collection_method: terms.channel.to_string(),
        collected_by: record.provenance.source.to_string(),
        notice: ReceiptNotice {
            id: terms.notice.id().to_owned(),
            version: terms.notice.version().to_owned(),
            sha256: terms.notice.sha256().to_owned(),
            url: terms.notice.url().map(str::to_owned),
        },
        purpose: purpose.to_string(),
        legal_basis: terms.basis.to_string(),
        state,
        expires_at: terms.expires_at,
        sensitive: policy.purpose_rule(purpose).is_some_and(|r| r.sensitive),
        on_behalf_of: record.on_behalf_of.as_ref().map(|o| o.relationship()),
        consent_event_id: record.last_event_id.to_string(),
        consent_version: record.version,
    }
}

/// The consent record as the consent event `envelope` left it: the customer's current record
/// when no later change touched it, else — for a grant, which carries its whole terms — the
/// record the grant made. `None` for another event, or a withdrawal whose record has changed
/// since: fold the consent's history up to it ([`record_from_history`]).
pub fn record_at_event(
    envelope: &EventEnvelope,
    state: Option<&CustomerState>,
) -> Option<(Purpose, ConsentRecord)> {
    let purpose = match &envelope.event.payload {
        EventPayload::ConsentGranted { purpose, .. }
        | EventPayload::ConsentWithdrawn { purpose, .. } => purpose,
        EventPayload::FieldAdopted {
            field: crate::field::FieldPath::Consent(purpose),
            adopted,
            ..
        } if matches!(adopted.as_ref(), crate::event::Adopted::Consent { .. }) => purpose,
        _ => return None,
    };
    if let Some(record) = state
        .and_then(|s| s.consents.get(purpose))
        .filter(|r| r.last_event_id == envelope.id)
    {
        return Some((purpose.clone(), record.clone()));
    }
    if !matches!(
        envelope.event.payload,
        EventPayload::ConsentGranted { .. } | EventPayload::FieldAdopted { .. }
    ) {
        return None;
    }
    // The grant (or adopted record) alone, folded the way every state is: the record it made.
    let made = crate::state::evolve(CustomerState::default(), envelope);
    made.consents
        .get(purpose)
        .map(|record| (purpose.clone(), record.clone()))
}

/// The record of `purpose` as the event `until` left it, folded from the consent's history
/// (its events, oldest first).
pub fn record_from_history<'a>(
    history: impl IntoIterator<Item = &'a EventEnvelope>,
    purpose: &Purpose,
    until: crate::ids::EventId,
) -> Option<ConsentRecord> {
    let mut state = CustomerState::default();
    for envelope in history {
        state = crate::state::evolve(state, envelope);
        if envelope.id == until {
            return state.consents.get(purpose).cloned();
        }
    }
    None
}
