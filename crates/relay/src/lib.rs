//! idledger delivery: every change a consumer (CRM, CDP…) is entitled to, in order per
//! customer, at least once and deduplicable, over NATS JetStream, signed webhooks or the HTTP
//! change feed — purpose-limited at the moment of delivery, with every handoff logged.
//!
//! - [`Relay`]: runs push delivery (NATS, webhooks) and NATS ack intake until cancelled.
//! - [`entitlement`]: the pure purpose-limitation decision every channel shares.
//! - [`envelope`]: the CloudEvents contract; [`webhook`]: signing; [`acks`]: the ack contract.
//! - [`feed::Feed`]: the change feed's core, for the HTTP layer.
//! - [`tail`]: the log's pages, read once for every consumer at the same place.
//!
//! Architecture invariant: only this crate knows NATS and outbound HTTP. It reads the log and
//! records deliveries through `idledger-store`; it never writes events.

pub mod access;
pub mod acks;
pub mod config;
pub mod entitlement;
pub mod envelope;
pub mod error;
pub mod feed;
pub mod nats;
mod outbox;
pub mod plan;
mod relay;
pub mod tail;
pub mod webhook;
pub mod worker;

pub use config::{
    Backoff, DEFAULT_SOURCE, NatsAuth, NatsConfig, NatsTls, RelayConfig, Retention, StreamSettings,
    WebhookConfig,
};
pub use error::RelayError;
pub use feed::{Feed, FeedItem, FeedPage};
pub use relay::Relay;
