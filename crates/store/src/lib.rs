//! idledger's event store: an append-only, hash-chained, encrypted event log with per-field
//! projections on PostgreSQL (production) or SQLite (embedded default), and the bookkeeping
//! of delivery, reconciliation and API tokens beside it.
//!
//! - [`Store`]: opens a database and hands out each area: [`Tokens`], [`Deliveries`],
//!   [`Runs`], [`Disclosures`] and the raw [`EventLog`].
//! - [`Ledger`]: runs commands and serves decrypted reads; the way to the log for other crates.
//! - [`sql`]: statements written once for both engines; only what really differs is
//!   engine-specific (the append lock, PostgreSQL's bulk append in `log/postgres.rs`).
//! - [`crypto`]: per-customer data keys under a master key (they seal events and the
//!   projection's personal rows, see [`projection`]); [`keys`]: the wrapped keys and the
//!   master key's rewrap; [`chain`]: the hash chains and the log hash; [`checkpoints`]: signed
//!   checkpoints of the log; [`signing`]: the signing keys (rotation, removal); [`jws`]:
//!   compact JWS (decision tokens, consent receipts), the public key set, [`TokenSigner`].
//!
//! Architecture invariant: this crate knows SQL and nothing of HTTP or NATS.

pub mod approvals;
pub mod chain;
pub mod checkpoints;
pub mod crypto;
pub mod decisions;
pub mod delivery;
pub mod disclosures;
pub mod error;
pub mod jws;
mod key_cache;
pub mod keys;
pub mod leader;
pub mod ledger;
pub mod log;
pub mod log_watch;
pub mod model;
pub mod outbox;
pub mod projection;
pub mod runs;
mod sharded;
pub mod signing;
pub mod snapshots;
pub mod sql;
mod state_cache;
mod store;
pub mod token_cache;
pub mod tokens;
mod upgrade;

pub use checkpoints::{Checkpoint, CheckpointExport, Checkpoints, Trust};
pub use crypto::{DerivationRoot, KeyEncryptionKey, MasterKey};
pub use delivery::Deliveries;
pub use disclosures::Disclosures;
pub use error::{ExecuteError, StoreError};
pub use jws::TokenSigner;
pub use keys::{Keys, RewrapOptions, RewrapPlan, RewrapReport};
pub use ledger::{
    CommandResult, Executed, Ledger, LedgerOptions, MergeError, MergeResult, RebuildReport,
    SignedCheckpoint, VerifyReport,
};
pub use log::EventLog;
pub use model::{LogEntry, RecordedEvent, ShreddedEvent};
pub use runs::Runs;
pub use sql::Engine;
pub use store::{Store, pg_connect_options};
pub use tokens::{
    IssuedToken, OpenedSession, Role, Scope, Session, SessionLimits, TokenRecord, Tokens,
};

/// Replaces the password of `scheme://user:password@host/…`, the token of a NATS URL
/// (`nats://token@host`) and any `password=` query parameter with `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return url.to_owned(),
    };
    // The userinfo ends at the last '@' before any query: a password may hold '/' or '@'.
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let (authority, tail) = match rest[..query_start].rfind('@') {
        Some(at) => {
            let (userinfo, host_and_path) = (&rest[..at], &rest[at + 1..]);
            let userinfo = match userinfo.split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                // NATS reads a lone userinfo as a token, a secret; elsewhere it is a user name.
                None if matches!(scheme, "nats" | "tls" | "ws" | "wss") => "***".to_owned(),
                None => userinfo.to_owned(),
            };
            (format!("{userinfo}@"), host_and_path)
        }
        None => (String::new(), rest),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}
