//! Text output: aligned key/value lines, and events, outcomes and values in words.

use std::fmt::Display;
use std::io::{self, Write};

use chrono::{DateTime, SecondsFormat, Utc};
use idledger_domain::decide::Outcome;
use idledger_domain::event::{CancelReason, ConsentTerms, EventPayload, SetMode, StewardAction};
use idledger_domain::field::FieldValue;
use idledger_store::RecordedEvent;

/// Width of the key column in key/value lines.
pub const KEY_WIDTH: usize = 16;
/// Shown for an absent value.
pub const NONE: &str = "-";

/// `<indent>key            value`
pub fn kv(w: &mut dyn Write, indent: usize, key: &str, value: impl Display) -> io::Result<()> {
    writeln!(w, "{:indent$}{key:<KEY_WIDTH$} {value}", "")
}

/// An instant, to the microsecond the store keeps.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Bytes as lower-case hex (hashes, public keys, signatures).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn opt(value: Option<impl Display>) -> String {
    value.map_or_else(|| NONE.to_owned(), |v| v.to_string())
}

/// A value in its natural form: strings bare, anything else as compact JSON.
pub fn value(v: &FieldValue) -> String {
    match v {
        FieldValue::PostalAddress(address) => address.to_string(),
        other => match other.to_json() {
            serde_json::Value::String(s) => s,
            json => json.to_string(),
        },
    }
}

pub fn terms(t: &ConsentTerms) -> String {
    let mut out = format!(
        "basis {}, notice {}, channel {}, jurisdiction {}",
        t.basis, t.notice, t.channel, t.jurisdiction
    );
    if let Some(at) = t.expires_at {
        out.push_str(&format!(", expires {}", time(at)));
    }
    out
}

/// What became of one change, in a sentence.
pub fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Registered => "registered".to_owned(),
        Outcome::Applied { field, version } => format!("applied: {field} is at version {version}"),
        Outcome::Unchanged { field } => format!("unchanged: {field} already holds this"),
        Outcome::Proposed {
            field,
            proposal_id,
            system_of_record,
        } => format!(
            "proposal recorded for {field} (proposal {proposal_id}); the system of record is \
             {system_of_record}, so the record is unchanged"
        ),
        Outcome::Pending {
            field,
            challenge_id,
            expires_at,
        } => format!(
            "pending: {field} waits for verification (challenge {challenge_id}, expires {})",
            time(*expires_at)
        ),
        Outcome::ProposalResolved {
            proposal_id,
            accepted,
        } => {
            format!(
                "proposal {proposal_id} {}",
                if *accepted { "accepted" } else { "rejected" }
            )
        }
        Outcome::Restriction {
            restricted,
            changed,
        } => match (restricted, changed) {
            (true, true) => "processing restricted: nothing is delivered until it is lifted",
            (true, false) => "unchanged: processing was already restricted",
            (false, true) => "restriction lifted: deliveries resume",
            (false, false) => "unchanged: processing was not restricted",
        }
        .to_owned(),
        Outcome::Relationship {
            relationship_id,
            ended,
        } => format!(
            "relationship {relationship_id} {}",
            if *ended { "ended" } else { "recorded" }
        ),
        Outcome::StewardActed {
            exception_id,
            action,
        } => format!(
            "steward action {} on exception {exception_id}",
            action.as_str()
        ),
    }
}

/// The field (or consent) version an event gave its field, if it versions one.
pub fn field_version(payload: &EventPayload) -> Option<u64> {
    match payload {
        EventPayload::FieldSet { version, .. }
        | EventPayload::FieldCleared { version, .. }
        | EventPayload::FieldExpired { version, .. }
        | EventPayload::ChangeRequested { version, .. }
        | EventPayload::ChangeVerified { version, .. }
        | EventPayload::ChangeCancelled { version, .. }
        | EventPayload::ConsentGranted { version, .. }
        | EventPayload::ConsentWithdrawn { version, .. }
        | EventPayload::FieldAdopted { version, .. } => Some(*version),
        EventPayload::CustomerMerged { .. }
        | EventPayload::MergedInto { .. }
        | EventPayload::CustomerUnmerged { .. }
        | EventPayload::UnmergedFrom { .. }
        | EventPayload::CustomerRegistered
        | EventPayload::ValueProposed { .. }
        | EventPayload::ProposalAccepted { .. }
        | EventPayload::ProposalRejected { .. }
        | EventPayload::StewardActed { .. }
        | EventPayload::ProcessingRestricted { .. }
        | EventPayload::RestrictionLifted { .. }
        | EventPayload::RelationshipRecorded { .. }
        | EventPayload::RelationshipEnded { .. }
        | EventPayload::RelationshipAdopted { .. }
        | EventPayload::CustomerErased { .. } => None,
    }
}

/// The value or state an event recorded, in words.
pub fn payload(p: &EventPayload) -> String {
    match p {
        EventPayload::CustomerRegistered => "customer registered".to_owned(),
        EventPayload::FieldSet {
            value: v,
            mode,
            proposal_id,
            ..
        } => {
            let how = match mode {
                SetMode::Authoritative => "set by an authoritative source",
                SetMode::FillIfEmpty => "filled in while empty",
                SetMode::Steward => "set by a data steward",
            };
            match proposal_id {
                Some(id) => format!("{} ({how}, accepting proposal {id})", value(v)),
                None => format!("{} ({how})", value(v)),
            }
        }
        EventPayload::FieldCleared { .. } => "cleared".to_owned(),
        EventPayload::FieldExpired { .. } => "expired (retention)".to_owned(),
        EventPayload::CustomerMerged { absorbed, merge_id } => {
            format!("customer {absorbed} merged into this record (merge {merge_id})")
        }
        EventPayload::MergedInto { survivor, merge_id } => {
            format!("merged into customer {survivor} (merge {merge_id})")
        }
        EventPayload::CustomerUnmerged { absorbed, merge_id } => {
            format!("merge {merge_id} of customer {absorbed} undone")
        }
        EventPayload::UnmergedFrom { survivor, merge_id } => {
            format!("merge {merge_id} into customer {survivor} undone")
        }
        EventPayload::FieldAdopted {
            adopted, origin, ..
        } => match adopted.as_ref() {
            idledger_domain::event::Adopted::Value { value: v, .. } => {
                format!("{} (taken from customer {origin}'s record)", value(v))
            }
            idledger_domain::event::Adopted::Consent { state, .. } => {
                format!("consent {state:?} (taken from customer {origin}'s record)")
            }
            idledger_domain::event::Adopted::Absent => {
                format!("none (as in customer {origin}'s record)")
            }
        },
        EventPayload::ProcessingRestricted { reason } => {
            format!("processing restricted: {reason}")
        }
        EventPayload::RestrictionLifted { reason } => format!("restriction lifted: {reason}"),
        EventPayload::RelationshipRecorded {
            relationship_id,
            representative,
            expires_at,
            ..
        } => format!(
            "{} relationship {relationship_id} recorded{}",
            representative.relationship(),
            expires_at.map_or_else(String::new, |at| format!(", expires {}", time(at)))
        ),
        EventPayload::RelationshipEnded {
            relationship_id,
            reason,
        } => format!("relationship {relationship_id} ended: {reason}"),
        EventPayload::RelationshipAdopted {
            relationship_id,
            origin,
            relationship,
            ..
        } => match relationship {
            Some(_) => format!("relationship {relationship_id} of {origin} adopted"),
            None => format!("relationship {relationship_id} given back to {origin}"),
        },
        EventPayload::StewardActed {
            exception_id,
            consumer_id,
            action,
            reason,
            repush,
            ..
        } => {
            let what = match (action, repush) {
                (StewardAction::Repush, Some(r)) => {
                    format!("re-pushed version {} to {consumer_id}", r.version)
                }
                (StewardAction::Accept, _) => format!("accepted a value for {consumer_id}"),
                (StewardAction::Dismiss, _) => format!("dismissed for {consumer_id}"),
                (StewardAction::Route, _) => {
                    format!("sent {consumer_id}'s proposal to its system of record")
                }
                (StewardAction::Repush, None) => format!("re-push to {consumer_id}"),
            };
            match reason {
                Some(r) => format!("steward: exception {exception_id} {what}: {r}"),
                None => format!("steward: exception {exception_id} {what}"),
            }
        }
        EventPayload::ChangeRequested {
            value: v,
            challenge_id,
            expires_at,
            ..
        } => format!(
            "{} requested, waiting for verification (challenge {challenge_id}, expires {})",
            value(v),
            time(*expires_at)
        ),
        EventPayload::ChangeVerified {
            value: v,
            challenge_id,
            ..
        } => format!(
            "{} verified and now in effect (challenge {challenge_id})",
            value(v)
        ),
        EventPayload::ChangeCancelled {
            challenge_id,
            reason,
            ..
        } => {
            let why = match reason {
                CancelReason::Cancelled => "cancelled",
                CancelReason::Superseded => "superseded",
                CancelReason::Expired => "expired",
            };
            format!("pending change {why} (challenge {challenge_id})")
        }
        EventPayload::ConsentGranted { terms: t, .. } => format!("granted: {}", terms(t)),
        EventPayload::ConsentWithdrawn { .. } => "withdrawn".to_owned(),
        EventPayload::ValueProposed {
            proposal_id,
            value: v,
            ..
        } => format!(
            "{} proposed (proposal {proposal_id}); the record is unchanged",
            value(v)
        ),
        EventPayload::ProposalAccepted { proposal_id, .. } => {
            format!("proposal {proposal_id} accepted")
        }
        EventPayload::ProposalRejected {
            proposal_id,
            reason,
            ..
        } => format!("proposal {proposal_id} rejected: {reason}"),
        EventPayload::CustomerErased { reason } => format!("customer erased: {reason}"),
    }
}

/// One event with its full provenance.
pub fn event(w: &mut dyn Write, indent: usize, e: &RecordedEvent) -> io::Result<()> {
    let event = &e.envelope.event;
    let p = &event.provenance;
    writeln!(
        w,
        "{:indent$}#{} {} at {}",
        "",
        e.global_position,
        event.payload.type_name(),
        time(e.recorded_at)
    )?;
    let indent = indent + 2;
    kv(w, indent, "event id", e.envelope.id)?;
    kv(w, indent, "stream version", e.envelope.stream_version)?;
    kv(
        w,
        indent,
        "field version",
        opt(field_version(&event.payload)),
    )?;
    kv(w, indent, "what", payload(&event.payload))?;
    kv(w, indent, "source", &p.source)?;
    kv(w, indent, "actor", &p.actor)?;
    if let Some(approver) = &p.approved_by {
        kv(w, indent, "approved by", approver)?;
    }
    kv(w, indent, "on behalf of", opt(p.on_behalf_of.as_ref()))?;
    kv(w, indent, "evidence", opt(p.evidence.as_ref()))?;
    kv(w, indent, "observed at", opt(p.observed_at.map(time)))?;
    kv(w, indent, "correlation id", opt(p.correlation_id))?;
    kv(w, indent, "causation id", opt(p.causation_id))?;
    kv(w, indent, "idempotency key", &p.idempotency_key)?;
    kv(w, indent, "policy version", &event.policy_version)?;
    kv(w, indent, "reason", opt(p.reason.as_ref()))
}
