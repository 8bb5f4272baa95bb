//! The relay: keeps one delivery task per enabled push consumer (NATS or webhook) and the
//! NATS ack intake running until shut down, following the consumer registry as it changes.

use std::collections::HashMap;
use std::sync::Arc;

use idledger_store::Ledger;
use idledger_store::delivery::{Channel, Consumer, ConsumerId};
use idledger_store::leader::Job;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::RelayConfig;
use crate::error::RelayError;
use crate::nats::{self, NatsSender};
use crate::plan::Planner;
use crate::webhook::WebhookSender;
use crate::worker::{self, Sender};

/// Delivery to consumers. Build it with [`Relay::new`] and spawn [`Relay::run`].
#[derive(Debug)]
pub struct Relay {
    planner: Planner,
    config: Arc<RelayConfig>,
}

struct Running {
    consumer: Consumer,
    cancel: CancellationToken,
}

impl Relay {
    pub fn new(ledger: Ledger, config: RelayConfig) -> Self {
        Self {
            planner: Planner::new(ledger, &config.source),
            config: Arc::new(config),
        }
    }

    /// How many pages of the log delivery read from the store, and how many it shared.
    pub fn log_pages(&self) -> crate::tail::PageCounts {
        self.planner.tail.counts()
    }

    /// Runs until `shutdown` is cancelled, then stops every task (each commits what it
    /// delivered) and returns. Delivers only while this process leads delivery among those
    /// sharing the store ([`idledger_store::leader`]): it waits for the lead, and stops
    /// delivering the moment it loses it, to wait again. Failures of the database or NATS are
    /// logged and retried, never returned; an error means the configuration is unusable (e.g.
    /// a malformed NATS URL).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let store = self.planner.ledger.store().clone();
        loop {
            let mut lease = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                lease = store.lead(Job::Delivery) => lease,
            };
            tracing::info!("this process leads delivery");
            let term = shutdown.child_token();
            let deliver = self.deliver(term.clone());
            tokio::pin!(deliver);
            tokio::select! {
                result = &mut deliver => return result,
                () = lease.lost() => {
                    tracing::warn!("lost the lead of delivery; stopping delivery until it is regained");
                    term.cancel();
                    deliver.await?;
                }
            }
        }
    }

    /// Delivers until `shutdown` is cancelled.
    async fn deliver(&self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let config = &self.config;
        let js = match &config.nats {
            Some(nats) => Some(nats::connect(nats).await?),
            None => None,
        };
        let mut tasks = JoinSet::new();
        if let (Some(js), Some(nats)) = (&js, &config.nats) {
            tasks.spawn(nats::run_ack_intake(
                js.clone(),
                self.planner.deliveries.clone(),
                self.planner.ledger.clone(),
                nats.clone(),
                config.retry,
                shutdown.child_token(),
            ));
        }
        let mut running: HashMap<ConsumerId, Running> = HashMap::new();
        let mut stream_ready = false;
        let mut failures = 0u32;
        loop {
            if let (Some(js), Some(nats), false) = (&js, &config.nats, stream_ready) {
                match nats::ensure_stream(js, &nats.stream).await {
                    Ok(()) => stream_ready = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "the delivery stream is not ready; NATS consumers wait")
                    }
                }
            }
            let wait = match self.planner.deliveries.consumers().await {
                Ok(consumers) => {
                    failures = 0;
                    self.follow(
                        &consumers,
                        &mut running,
                        &mut tasks,
                        js.as_ref(),
                        stream_ready,
                        &shutdown,
                    );
                    config.registry_refresh
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the consumer registry; retrying");
                    failures = failures.saturating_add(1);
                    config.retry.delay(failures)
                }
            };
            // Reap finished tasks so the set does not grow with restarts.
            while tasks.try_join_next().is_some() {}
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(wait) => {}
            }
        }
        for task in running.values() {
            task.cancel.cancel();
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    /// Starts tasks for new or changed consumers and stops those disabled or removed.
    fn follow(
        &self,
        consumers: &[Consumer],
        running: &mut HashMap<ConsumerId, Running>,
        tasks: &mut JoinSet<()>,
        js: Option<&async_nats::jetstream::Context>,
        stream_ready: bool,
        shutdown: &CancellationToken,
    ) {
        let wanted: HashMap<&ConsumerId, &Consumer> = consumers
            .iter()
            .filter(|c| c.is_enabled())
            .filter(|c| match c.channel {
                Channel::Nats => js.is_some() && stream_ready,
                Channel::Webhook(_) => true,
                Channel::Feed => false,
            })
            .map(|c| (&c.id, c))
            .collect();
        running.retain(|id, task| {
            let keep = wanted.get(id).is_some_and(|c| **c == task.consumer);
            if !keep {
                task.cancel.cancel();
            }
            keep
        });
        for (id, consumer) in wanted {
            if running.contains_key(id) {
                continue;
            }
            let sender = match (&consumer.channel, js, &self.config.nats) {
                (Channel::Nats, Some(js), Some(nats)) => {
                    Sender::Nats(Box::new(NatsSender::new(js.clone(), nats)))
                }
                (Channel::Webhook(_), _, _) => match WebhookSender::new(&self.config.webhook) {
                    Ok(sender) => Sender::Webhook(sender),
                    Err(e) => {
                        tracing::error!(consumer = %id, error = %e, "cannot start webhook delivery");
                        continue;
                    }
                },
                _ => continue,
            };
            let cancel = shutdown.child_token();
            tasks.spawn(worker::run(
                self.planner.clone(),
                self.config.clone(),
                consumer.clone(),
                sender,
                cancel.clone(),
            ));
            running.insert(
                id.clone(),
                Running {
                    consumer: consumer.clone(),
                    cancel,
                },
            );
        }
    }
}
