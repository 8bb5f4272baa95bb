//! The change feed's core, for the HTTP layer: a page of the log after a position, filtered to
//! what the calling consumer is entitled to now, as CloudEvents. Serving a message counts as
//! handing it off: it is written to the handoff log (once per message) and the consumer's
//! relation to the customer is updated, exactly as the push channels do.
//!
//! The feed keeps no checkpoint: the consumer says where it is (`after`) and continues from
//! `next_after`, which moves past events that carried nothing for it.

use chrono::Utc;
use idledger_store::Ledger;
use idledger_store::delivery::{ChannelKind, Consumer};
use uuid::Uuid;

use crate::error::RelayError;
use crate::plan::{Planned, Planner};

/// Most events one feed page scans.
pub const MAX_FEED_PAGE: u32 = 1000;

/// One page of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    pub items: Vec<FeedItem>,
    /// Where the next request continues (`after=`): the last position scanned, or the request's
    /// own `after` when there was nothing new.
    pub next_after: u64,
}

/// One message of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedItem {
    /// The global position of the event it came from (an SSE `id`).
    pub position: u64,
    /// The CloudEvent id.
    pub id: Uuid,
    /// The CloudEvent type (an SSE `event` name).
    pub event_type: &'static str,
    /// The CloudEvent, serialised JSON (one NDJSON line, or an SSE `data`).
    pub body: Vec<u8>,
}

/// Serves feed pages.
#[derive(Debug, Clone)]
pub struct Feed {
    planner: Planner,
}

impl Feed {
    /// `source` is the CloudEvents `source`, the same as the relay's.
    pub fn new(ledger: Ledger, source: &str) -> Self {
        Self {
            planner: Planner::new(ledger, source),
        }
    }

    /// Up to `limit` (at most [`MAX_FEED_PAGE`]) events after `after`, as the messages
    /// `consumer` may receive now. The caller has authenticated the consumer and checked that
    /// it is enabled and a `feed` consumer.
    pub async fn page(
        &self,
        consumer: &Consumer,
        after: u64,
        limit: u32,
    ) -> Result<FeedPage, RelayError> {
        let now = Utc::now();
        let batch = self
            .planner
            .plan(
                consumer,
                after,
                limit.clamp(1, MAX_FEED_PAGE),
                now,
                self.planner.log_growth(),
            )
            .await?;
        let served: Vec<&Planned> = batch.messages.iter().collect();
        self.planner
            .commit(consumer, ChannelKind::Feed, &served, &[], None, now)
            .await?;
        Ok(FeedPage {
            items: batch
                .messages
                .into_iter()
                .map(|p| FeedItem {
                    position: p.message.position,
                    id: p.message.id,
                    event_type: p.message.event_type,
                    body: p.message.body,
                })
                .collect(),
            next_after: batch.last_position.unwrap_or(after),
        })
    }
}
