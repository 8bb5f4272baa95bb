//! Consumer acknowledgements: what a consumer reports it did with a change. **API boundary**:
//! the same JSON body arrives on NATS (`<ack prefix>.<consumer id>`) and over HTTP.
//!
//! ```json
//! { "event_id": "<the CloudEvent id of the change>", "customer_id": "<id>",
//!   "field": "email", "version": 3, "value_hash": "hmac-sha256:<hex>" | null,
//!   "status": "applied" | "rejected", "reason": "<why, required when rejected>" }
//! ```
//!
//! A pseudonymous consumer names the customer by its alias, as it was shown it.
//!
//! On NATS an ack must be signed: header `Idledger-Signature: v1=<hex>`, the HMAC-SHA256 of the
//! raw body under the consumer's ack key (`Ledger::ack_key`). The subject names the consumer,
//! but on a NATS server without per-consumer permissions anyone may publish on any subject;
//! the signature is what proves the sender. A replayed ack changes nothing: an ack only ever
//! moves a consumer's state forward by version. Over HTTP the consumer's token authenticates.
//!
//! `value_hash` is the `data.value_hash` of the change the consumer now holds (`null` when it
//! holds no value, e.g. after `idledger.field.cleared.v1`). Unknown keys are refused, so a
//! misspelt key is an error rather than a silently missing value.

use chrono::Utc;
use idledger_domain::alias::CustomerNames;
use idledger_domain::field::FieldPath;
use idledger_domain::ids::EventId;
use idledger_store::delivery::{Ack, AckOutcome, AckStatus, Consumer, ConsumerId, ValueHash};
use idledger_store::{Deliveries, Ledger, StoreError};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AckBody {
    event_id: EventId,
    /// The customer's id, or (a pseudonymous consumer) its alias.
    customer_id: String,
    field: FieldPath,
    version: u64,
    value_hash: Option<ValueHash>,
    status: AckStatus,
    #[serde(default)]
    reason: Option<String>,
}

/// The NATS header that carries an ack's signature.
pub const SIGNATURE_HEADER: &str = "Idledger-Signature";

/// Why an ack arriving on NATS was not taken to come from the consumer its subject names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Unsigned,
    BadSignature,
}

impl Refusal {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unsigned => "no Idledger-Signature header: a NATS ack must be signed",
            Self::BadSignature => "Idledger-Signature does not verify under the consumer's ack key",
        })
    }
}

/// Checks that an ack arriving on NATS for `consumer` is signed with `consumer`'s ack key.
pub fn authenticate(
    ledger: &Ledger,
    consumer: &Consumer,
    signature: Option<&str>,
    body: &[u8],
) -> Result<(), Refusal> {
    let signature = signature.ok_or(Refusal::Unsigned)?;
    if ledger.ack_key(&consumer.id).verifies(signature, body) {
        Ok(())
    } else {
        Err(Refusal::BadSignature)
    }
}

/// Counts an ack by channel (`nats`, `http`) and outcome (`idledger_acks_total`): the labels
/// are fixed words.
pub fn count(channel: &'static str, outcome: &'static str) {
    metrics::counter!("idledger_acks_total", "channel" => channel, "outcome" => outcome)
        .increment(1);
}

fn label(outcome: &AckOutcome) -> &'static str {
    match outcome {
        AckOutcome::Recorded => "recorded",
        AckOutcome::Superseded { .. } => "superseded",
        AckOutcome::Invalid(_) => "invalid",
    }
}

/// Parses an acknowledgement `consumer` sent, naming customers as `names` says; the error
/// says what is wrong with it.
pub fn parse(consumer: &ConsumerId, names: &CustomerNames, body: &[u8]) -> Result<Ack, String> {
    let body: AckBody =
        serde_json::from_slice(body).map_err(|e| format!("not a valid acknowledgement: {e}"))?;
    let customer_id = names
        .resolve(&body.customer_id)
        .map_err(|e| format!("not a valid acknowledgement: customer_id {e}"))?;
    Ok(Ack {
        consumer_id: consumer.clone(),
        event_id: body.event_id,
        customer_id,
        field: body.field,
        version: body.version,
        value_hash: body.value_hash,
        status: body.status,
        reason: body.reason.map(|r| r.trim().to_owned()),
        acked_at: idledger_store::model::from_micros(idledger_store::model::micros(Utc::now())),
    })
}

/// Parses and records an acknowledgement that arrived on `channel`, and counts it.
/// `Ok(Invalid)` for one that is malformed or does not match a recorded change; `Err` only
/// when the store failed (the caller may retry). `ledger` reads the record an applied ack is
/// compared with.
pub async fn intake(
    deliveries: &Deliveries,
    ledger: &Ledger,
    consumer: &Consumer,
    channel: &'static str,
    body: &[u8],
) -> Result<AckOutcome, StoreError> {
    let names = ledger.customer_names(consumer);
    let outcome = match parse(&consumer.id, &names, body) {
        Ok(ack) => deliveries.record_ack(ledger, &ack).await?,
        Err(reason) => AckOutcome::Invalid(reason),
    };
    count(channel, label(&outcome));
    Ok(outcome)
}
