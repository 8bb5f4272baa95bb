//! One consumer's delivery loop, the same for every push channel: read from its checkpoint,
//! plan, send, commit what was delivered together with the new checkpoint; back off on
//! failure; now and then sweep for consents that ran out without an event.
//!
//! Each consumer has its own checkpoint and task, so a consumer whose endpoint is down, or one
//! registered later and catching up from the beginning, holds back no one else.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use idledger_store::delivery::{ChannelKind, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::RelayError;
use crate::nats::NatsSender;
use crate::plan::{Batch, Planned, Planner};
use crate::webhook::WebhookSender;

/// What a channel did with a batch.
#[derive(Debug, Default)]
pub struct Sent {
    /// Indexes of the messages the consumer's channel accepted.
    pub delivered: Vec<usize>,
    /// The first message not yet delivered or skipped (`None`: all were handled). The
    /// checkpoint stops just before its event.
    pub first_unhandled: Option<usize>,
    /// Why sending stopped, if it failed.
    pub error: Option<RelayError>,
    /// The channel asks to be retried after this long (e.g. `Retry-After`).
    pub retry_in: Option<Duration>,
    /// The position of an event whose work is not done though it has no message pending (an
    /// erased customer's messages not yet removed): the checkpoint stops just before it too.
    pub stopped_at: Option<u64>,
}

/// A push channel.
#[derive(Debug)]
pub enum Sender {
    Nats(Box<NatsSender>),
    Webhook(WebhookSender),
}

impl Sender {
    fn kind(&self) -> ChannelKind {
        match self {
            Self::Nats(_) => ChannelKind::Nats,
            Self::Webhook(_) => ChannelKind::Webhook,
        }
    }

    async fn send(
        &mut self,
        planner: &Planner,
        consumer: &Consumer,
        batch: &Batch,
        cancel: &CancellationToken,
    ) -> Sent {
        match self {
            Self::Nats(s) => s.send(consumer, batch, cancel).await,
            Self::Webhook(s) => s.send(planner, consumer, batch, cancel).await,
        }
    }
}

/// Delivers to `consumer` until `cancel` fires.
pub async fn run(
    planner: Planner,
    config: Arc<RelayConfig>,
    consumer: Consumer,
    mut sender: Sender,
    cancel: CancellationToken,
) {
    let mut checkpoint: Option<u64> = None;
    let mut failures = 0u32;
    let mut next_sweep = Instant::now() + config.expiry_sweep_interval;
    tracing::info!(consumer = %consumer.id, channel = sender.kind().as_str(), "delivery started");
    while !cancel.is_cancelled() {
        let sweep = Instant::now() >= next_sweep;
        let wait = match step(
            &planner,
            &config,
            &consumer,
            &mut sender,
            &mut checkpoint,
            sweep,
            &cancel,
        )
        .await
        {
            Ok(Step::Progressed) => {
                failures = 0;
                if sweep {
                    next_sweep = Instant::now() + config.expiry_sweep_interval;
                }
                continue;
            }
            Ok(Step::Idle) => {
                failures = 0;
                if sweep {
                    next_sweep = Instant::now() + config.expiry_sweep_interval;
                    continue;
                }
                config.poll_interval
            }
            Ok(Step::RetryIn(wait)) => wait,
            Err(e) => {
                tracing::warn!(consumer = %consumer.id, error = %e, "delivery step failed; retrying");
                // Re-read the checkpoint: what was committed is the only truth after a failure.
                checkpoint = None;
                let wait = config.retry.delay(failures);
                failures = failures.saturating_add(1);
                wait
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    tracing::info!(consumer = %consumer.id, "delivery stopped");
}

enum Step {
    Progressed,
    Idle,
    RetryIn(Duration),
}

async fn step(
    planner: &Planner,
    config: &RelayConfig,
    consumer: &Consumer,
    sender: &mut Sender,
    checkpoint: &mut Option<u64>,
    sweep: bool,
    cancel: &CancellationToken,
) -> Result<Step, RelayError> {
    let after = match *checkpoint {
        Some(position) => position,
        None => planner
            .deliveries
            .checkpoint(&consumer.id)
            .await?
            .ok_or_else(|| {
                RelayError::Config(format!("consumer {} has no checkpoint", consumer.id))
            })?,
    };
    *checkpoint = Some(after);
    let now = Utc::now();
    let batch = if sweep {
        Batch {
            messages: planner.sweep(consumer, after, now).await?,
            last_position: None,
            erasures: Vec::new(),
        }
    } else {
        planner
            .plan(consumer, after, config.batch_size, now)
            .await?
    };
    if batch.messages.is_empty() && batch.last_position.is_none() {
        return Ok(Step::Idle);
    }
    let sent = sender.send(planner, consumer, &batch, cancel).await;
    let delivered: Vec<&Planned> = sent.delivered.iter().map(|i| &batch.messages[*i]).collect();
    let unhandled = sent
        .first_unhandled
        .map(|i| batch.messages[i].message.position)
        .into_iter()
        .chain(sent.stopped_at)
        .min();
    let new_checkpoint = match unhandled {
        None => batch.last_position,
        Some(position) => position.checked_sub(1),
    }
    .filter(|p| *p > after);
    planner
        .commit(
            consumer,
            sender.kind(),
            &delivered,
            new_checkpoint,
            Utc::now(),
        )
        .await?;
    if let Some(position) = new_checkpoint {
        *checkpoint = Some(position);
    }
    if let Some(e) = sent.error {
        return Err(e);
    }
    Ok(match sent.retry_in {
        Some(wait) => Step::RetryIn(wait),
        None => Step::Progressed,
    })
}
