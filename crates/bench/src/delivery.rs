//! Commit-to-consumer latency: from a command's acknowledgement over HTTP to the CloudEvent's
//! arrival at a NATS subscriber of the consumer's subjects, at a paced rate.
//!
//! Commands are sent on a fixed schedule (open loop, at most [`IN_FLIGHT`] outstanding); each
//! one sets a field of a customer who consented to the consumer's purpose, so each yields one
//! event and one CloudEvent whose `id` is the event id. Both instants are taken in this
//! process, on the same monotonic clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use idledger_store::delivery::ConsumerId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::error::{BenchError, Step as _};
use crate::load::{self, Handle};
use crate::server::{CONSUMER, Server};
use crate::stats::{self, Latency};

/// Most commands outstanding at once; beyond this the schedule waits (and the achieved rate
/// falls short of the target, which the report shows). Small enough that an overloaded
/// server shows as a lower rate rather than as seconds of queueing in the latency.
const IN_FLIGHT: usize = 64;
/// How long to wait, after the last command, for deliveries still on their way.
const DRAIN: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize)]
pub struct CommitToConsumer {
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub seconds: f64,
    pub acknowledged: u64,
    pub received: u64,
    /// Acknowledged commands whose CloudEvent did not arrive within the drain time.
    pub missing: u64,
    /// Commands not acknowledged 2xx.
    pub errors: u64,
    pub first_error: Option<String>,
    /// CloudEvents that arrived before the HTTP answer did (counted as 0 ms).
    pub before_ack: u64,
    pub latency: Latency,
    pub command_latency: Latency,
}

#[derive(Deserialize)]
struct CloudEventId {
    id: Uuid,
}

type Instants = Arc<Mutex<HashMap<Uuid, Instant>>>;
/// Commands not acknowledged, the first such answer, and every command's latency.
type Outcome = (u64, Option<String>, hdrhistogram::Histogram<u64>);

pub async fn run(
    server: &Server,
    rate: u32,
    duration: Duration,
) -> Result<CommitToConsumer, BenchError> {
    let nats = server.nats.clone().ok_or_else(|| {
        BenchError::Failed("commit-to-consumer needs the relay with NATS".to_owned())
    })?;
    // Twice as many customers as commands in flight, so that concurrent commands rarely
    // touch the same customer (they would be re-decided, and after 16 tries refused).
    let count = usize::try_from(rate / 2)
        .unwrap_or(usize::MAX)
        .clamp(10, 2 * IN_FLIGHT);
    let mut customers = Vec::with_capacity(count);
    for i in 0..count {
        let key = format!("c2c-{i}");
        let customer = load::register(server, &key).await?;
        load::grant(server, customer, &format!("{key}-grant")).await?;
        customers.push(customer);
    }
    wait_caught_up(server).await?;

    let client = async_nats::connect(&nats.url)
        .await
        .step(format!("cannot connect to NATS at {}", nats.url))?;
    let mut subscription = client
        .subscribe(format!("{}.{CONSUMER}.>", nats.subject_prefix))
        .await
        .step("cannot subscribe to the consumer's subjects")?;
    client.flush().await.step("cannot flush the subscription")?;
    let received: Instants = Arc::default();
    let reader = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let at = Instant::now();
                if let Ok(event) = serde_json::from_slice::<CloudEventId>(&message.payload)
                    && let Ok(mut received) = received.lock()
                {
                    received.insert(event.id, at);
                }
            }
        })
    };

    let acked: Instants = Arc::default();
    let outcome: Arc<Mutex<Outcome>> = Arc::new(Mutex::new((0, None, stats::histogram()?)));
    let handle = Handle::of(server);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    let started = Instant::now();
    let deadline = started + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .step("the pacing semaphore closed")?;
        sent += 1;
        let customer = customers[usize::try_from(sent).unwrap_or(0) % customers.len()];
        let (handle, acked, outcome) = (handle.clone(), acked.clone(), outcome.clone());
        tokio::spawn(async move {
            let body = json!({"provenance": load::actor("system"), "changes": [{"op": "set_field",
                "field": "name.family", "value": load::name(sent)}]});
            let t = Instant::now();
            let answer = handle
                .command(&handle.web_app, customer, &format!("c2c-cmd-{sent}"), &body)
                .await;
            let at = Instant::now();
            let event = match &answer {
                Ok((status, body)) if status.is_success() => body["events"][0]["id"]
                    .as_str()
                    .and_then(|id| Uuid::parse_str(id).ok()),
                _ => None,
            };
            if let Ok(mut outcome) = outcome.lock() {
                stats::record(&mut outcome.2, at - t);
                if event.is_none() {
                    outcome.0 += 1;
                    if outcome.1.is_none() {
                        outcome.1 = Some(match answer {
                            Ok((status, body)) => format!("set name.family: {status} {body}"),
                            Err(e) => e.to_string(),
                        });
                    }
                }
            }
            if let (Some(event), Ok(mut acked)) = (event, acked.lock()) {
                acked.insert(event, at);
            }
            drop(permit);
        });
    }
    // Every command answered.
    let _all = permits
        .acquire_many(u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX))
        .await
        .step("the pacing semaphore closed")?;
    let elapsed = started.elapsed();
    let drain_until = Instant::now() + DRAIN;
    loop {
        let pending = {
            let acked = acked.lock().map(|a| a.keys().copied().collect::<Vec<_>>());
            let received = received.lock();
            match (acked, received) {
                (Ok(acked), Ok(received)) => {
                    acked.iter().filter(|id| !received.contains_key(id)).count()
                }
                _ => 0,
            }
        };
        if pending == 0 || Instant::now() >= drain_until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reader.abort();

    let mut latency = stats::histogram()?;
    let (mut received_count, mut missing, mut before_ack) = (0, 0, 0);
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let received = received.lock().map(|r| r.clone()).unwrap_or_default();
    for (id, ack) in &acked {
        match received.get(id) {
            Some(at) => {
                received_count += 1;
                if at < ack {
                    before_ack += 1;
                }
                stats::record(&mut latency, at.saturating_duration_since(*ack));
            }
            None => missing += 1,
        }
    }
    let (errors, first_error, commands) = outcome
        .lock()
        .map(|o| (o.0, o.1.clone(), Latency::of(&o.2)))
        .unwrap_or_default();
    Ok(CommitToConsumer {
        target_rate: rate,
        achieved_rate: stats::rate(sent, elapsed),
        seconds: elapsed.as_secs_f64(),
        acknowledged: acked.len() as u64,
        received: received_count,
        missing,
        errors,
        first_error,
        before_ack,
        latency: Latency::of(&latency),
        command_latency: commands,
    })
}

/// Waits until the relay has delivered everything committed so far, so that the timed phase
/// measures fresh commands, not a backlog.
pub(crate) async fn wait_caught_up(server: &Server) -> Result<(), BenchError> {
    let id = ConsumerId::parse(CONSUMER).map_err(|e| BenchError::Failed(e.to_string()))?;
    let deliveries = server.ledger.store().deliveries();
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        let head = server
            .ledger
            .head_position()
            .await
            .step("cannot read the log's head")?;
        let at = deliveries
            .checkpoint(&id)
            .await
            .step("cannot read the consumer's checkpoint")?
            .unwrap_or(0);
        if at >= head {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(BenchError::Failed(format!(
                "the relay did not catch up within 120 s (at {at} of {head})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
