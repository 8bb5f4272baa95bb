//! idledger's domain core: pure and synchronous. It knows nothing of storage, HTTP or NATS.
//!
//! - [`alias`]: pseudonymous customer ids, per consumer (what a pseudonymous consumer sees).
//! - [`challenge`]: the secret that confirms a pending change, derived from its challenge id.
//! - [`ids`] and [`values`]: validated types (parse, don't validate).
//! - [`field`]: the field catalog and typed field values.
//! - [`hashing`]: keyed value hashes, per consumer (what consumers acknowledge and report).
//! - [`lookup`]: the blind index's rules: which identifiers find a customer, normalised and
//!   digested under a key of its own.
//! - [`policy`]: the authority policy (who owns each field, what others may do).
//! - [`command`], [`mod@decide`]: commands and the decision that turns them into events or a refusal.
//! - [`event`], [`state`]: events with provenance and the infallible `evolve`.
//! - [`schema`]: the versioned stored form of events.
//! - [`scope`]: who may read which parts of a record (the policy's read rules).
//! - [`delivery`]: the vocabulary of delivery to consumers (consumer ids, channels, handoffs,
//!   acks, sync exception kinds and statuses, what an exception is about).
//! - [`exception`]: the sync exception lifecycle (raise, re-push, accept, dismiss, close) as
//!   its own `decide`/`evolve`, and the steward's planning of the customer command an action
//!   needs.

pub mod alias;
pub mod challenge;
pub mod command;
pub mod decide;
pub mod delegation;
pub mod delivery;
pub mod event;
pub mod exception;
pub mod field;
pub mod hashing;
pub mod household;
pub mod ids;
pub mod lookup;
pub mod merge;
pub mod policy;
pub mod receipt;
pub mod schema;
pub mod scope;
pub mod state;
pub mod usage;
pub mod values;

pub use command::{Change, Command, Context, Principal, ProvenanceInput, Refusal, Refused};
pub use decide::{Decision, Outcome, decide, decide_erasure, decide_expiry, retention_provenance};
pub use event::{Event, EventEnvelope, EventPayload, Provenance};
pub use field::{FieldPath, FieldValue};
pub use policy::{Policy, PolicyVersion, WriteMode};
pub use state::{CustomerState, Erasure, evolve, fold};
