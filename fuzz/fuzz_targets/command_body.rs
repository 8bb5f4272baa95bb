//! The command body parser: any bytes as the JSON body of `POST /v1/customers/{id}/commands`
//! (and of `POST /v1/customers`), through the API's own request types and conversion into a
//! domain `Command`.
//!
//! Properties: parsing never panics; a body that becomes a command keeps every change, in
//! order; every value fits its field and parses again from its own JSON form to itself; and the
//! command survives a trip through its serde form (what idempotency hashes and events store).
#![no_main]

use idledger_domain::command::{Change, Command};
use idledger_domain::field::FieldValue;
use idledger_domain::ids::{CustomerId, IdempotencyKey};
use libfuzzer_sys::fuzz_target;

// The API's request types and their conversion, compiled on their own: `wire.rs` needs only
// the domain, serde, chrono, uuid and utoipa, while the api crate pulls in sqlx, NATS and TLS
// (about 370 crates against 50), which an instrumented build cannot afford in CI.
#[path = "../../crates/api/src/wire.rs"]
#[allow(dead_code)]
mod wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = serde_json::from_slice::<wire::CommandRequest>(data) {
        check(body.provenance, body.changes);
    }
    if let Ok(body) = serde_json::from_slice::<wire::RegisterRequest>(data) {
        check(body.provenance, body.changes);
    }
});

fn check(provenance: idledger_domain::command::ProvenanceInput, changes: Vec<wire::ChangeBody>) {
    let (Ok(customer_id), Ok(key)) = (
        CustomerId::parse("01900000-0000-7000-8000-000000000001"),
        IdempotencyKey::parse("fuzz"),
    ) else {
        panic!("the fixed customer id and idempotency key are valid");
    };
    let count = changes.len();
    let Ok(command) = wire::command(customer_id, key, provenance, Vec::new(), changes, None) else {
        return;
    };
    assert_eq!(command.changes.len(), count, "a change was lost or added");
    for change in &command.changes {
        let (field, value) = match change {
            Change::SetField { field, value, .. }
            | Change::RequestChange { field, value, .. }
            | Change::ProposeValue { field, value } => (field, value),
            _ => continue,
        };
        assert!(value.fits(field), "{value:?} does not fit {field}");
        assert_eq!(
            FieldValue::parse(field, &value.to_json()).as_ref(),
            Ok(value),
            "{field}: the value does not parse again from its own JSON form"
        );
    }
    let stored = serde_json::to_string(&command).unwrap_or_else(|e| panic!("serialise: {e}"));
    let back: Command =
        serde_json::from_str(&stored).unwrap_or_else(|e| panic!("read back {stored}: {e}"));
    assert_eq!(back, command, "the command changed through its serde form");
}
