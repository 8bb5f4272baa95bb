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

/// Parses and records an acknowledgement. `Ok(Invalid)` for one that is malformed or does not
/// match a recorded change; `Err` only when the store failed (the caller may retry). `ledger`
/// reads the record an applied ack is compared with.
pub async fn intake(
    deliveries: &Deliveries,
    ledger: &Ledger,
    consumer: &Consumer,
    body: &[u8],
) -> Result<AckOutcome, StoreError> {
    let names = ledger.customer_names(consumer);
    match parse(&consumer.id, &names, body) {
        Ok(ack) => deliveries.record_ack(ledger, &ack).await,
        Err(reason) => Ok(AckOutcome::Invalid(reason)),
    }
}
