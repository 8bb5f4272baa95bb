//! One consumer's delivery loop, the same for every push channel: read from its checkpoint,
//! plan, record the plan in the outbox, send, commit what was delivered together with the new
//! checkpoint; back off on failure; now and then sweep for consents that ran out without an
//! event.
//!
//! Decided once: a batch is recorded in the consumer's outbox before anything of it is sent,
//! and after a failure (a PubAck that never came, a webhook timing out, a crash) the retry
//! sends what the outbox holds — the same messages, same ids — before planning anything new.
//! So a message that reached the consumer though its send seemed to fail is sent again under
//! its id (NATS drops the duplicate, webhook receivers by `Idledger-Message-Id`) and lands in
//! the handoff log, rather than being replaced by whatever a new decision would say.
//!
//! Each consumer has its own checkpoint and task, so a consumer whose endpoint is down, or one
//! registered later and catching up from the beginning, holds back no one else. Consumers at
//! the same place share the pages of the log they read ([`crate::tail`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use idledger_store::delivery::{ChannelKind, Consumer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::RelayError;
use crate::nats::NatsSender;
use crate::outbox;
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
    // Whether the consumer's outbox is known to be empty; read again after any failure.
    let mut outbox_clear = false;
    let mut failures = 0u32;
    let mut next_sweep = Instant::now() + config.expiry_sweep_interval;
    let mut log_growth = planner.ledger.log_growth();
    tracing::info!(consumer = %consumer.id, channel = sender.kind().as_str(), "delivery started");
    while !cancel.is_cancelled() {
        let sweep = Instant::now() >= next_sweep;
        // Whatever is appended from here on wakes the idle wait below.
        let known = *log_growth.borrow_and_update();
        let mut idle = false;
        let wait = match step(
            &planner,
            &config,
            &consumer,
            &mut sender,
            &mut checkpoint,
            &mut outbox_clear,
            sweep,
            known,
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
                idle = true;
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
            // A failure's back-off is waited out whatever is appended meanwhile.
            _ = log_growth.changed(), if idle => {}
        }
    }
    tracing::info!(consumer = %consumer.id, "delivery stopped");
}

enum Step {
    Progressed,
    Idle,
    RetryIn(Duration),
}

#[allow(clippy::too_many_arguments)]
async fn step(
    planner: &Planner,
    config: &RelayConfig,
    consumer: &Consumer,
    sender: &mut Sender,
    checkpoint: &mut Option<u64>,
    outbox_clear: &mut bool,
    sweep: bool,
    known: u64,
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
    // Items handled without being sent: those of a customer erased since they were decided.
    let mut done: Vec<u32> = Vec::new();
    let mut decided = None;
    if !*outbox_clear {
        let pending = planner.ledger.pending_outbox(&consumer.id).await?;
        if !pending.items.is_empty() {
            tracing::info!(consumer = %consumer.id, items = pending.items.len(), "sending again a batch decided before a failure");
            let (batch, dropped) = outbox::batch(pending)?;
            done = dropped;
            decided = Some(batch);
        }
    }
    let batch = match decided {
        Some(batch) => batch,
        None => {
            let now = Utc::now();
            let mut batch = if sweep {
                Batch {
                    messages: planner.sweep(consumer, after, now).await?,
                    last_position: None,
                    erasures: Vec::new(),
                }
            } else {
                planner
                    .plan(consumer, after, config.batch_size, now, known)
                    .await?
            };
            if !batch.messages.is_empty() || !batch.erasures.is_empty() {
                let kept = planner
                    .ledger
                    .record_outbox(&consumer.id, &outbox::items(&batch)?, batch.last_position)
                    .await?;
                outbox::number(&mut batch, &kept);
            }
            batch
        }
    };
    if batch.messages.is_empty()
        && batch.erasures.is_empty()
        && batch.last_position.is_none()
        && done.is_empty()
    {
        *outbox_clear = true;
        return Ok(Step::Idle);
    }
    *outbox_clear = false;
    let sent = sender.send(planner, consumer, &batch, cancel).await;
    let delivered: Vec<&Planned> = sent.delivered.iter().map(|i| &batch.messages[*i]).collect();
    let unhandled = sent
        .first_unhandled
        .map(|i| batch.messages[i].message.position)
        .into_iter()
        .chain(sent.stopped_at)
        .min();
    // Handled: delivered, or before the first message not handled (skipped ones included);
    // an erasure, once no unhandled message or erasure comes before it.
    let mut was_delivered = vec![false; batch.messages.len()];
    for i in &sent.delivered {
        was_delivered[*i] = true;
    }
    let mut handled = 0usize;
    for (i, planned) in batch.messages.iter().enumerate() {
        if sent.first_unhandled.is_none_or(|f| i < f) || was_delivered[i] {
            done.push(planned.seq);
            handled += 1;
        }
    }
    for erased in &batch.erasures {
        if unhandled.is_none_or(|u| erased.position < u) {
            done.push(erased.seq);
            handled += 1;
        }
    }
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
            &done,
            new_checkpoint,
            Utc::now(),
        )
        .await?;
    if let Some(position) = new_checkpoint {
        *checkpoint = Some(position);
    }
    *outbox_clear = handled == batch.messages.len() + batch.erasures.len();
    if let Some(e) = sent.error {
        return Err(e);
    }
    Ok(match sent.retry_in {
        Some(wait) => Step::RetryIn(wait),
        None => Step::Progressed,
    })
}
