//! Commit-to-consumer latency: from a command's acknowledgement over HTTP to the CloudEvent's
//! arrival at a NATS subscriber of the consumer's subjects, at a paced rate.
//!
//! Commands are sent on the shared open-loop schedule ([`crate::pacer`]); each one sets a
//! field of a customer who consented to the consumer's purpose, so each yields one event and
//! one CloudEvent whose `id` is the event id. Both instants are taken in this process, on the
//! same monotonic clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use crate::error::{BenchError, Step as _};
use crate::load::{self, Handle};
use crate::pacer::{self, IN_FLIGHT};
use crate::server::Server;
use crate::stats::{self, Latency};
use crate::usage::{Meter, Resources};

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
    /// From the first command until the last delivery arrived (or the drain gave up).
    pub resources: Resources,
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
    let consumer = &nats.consumer;
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
    server.wait_caught_up().await?;

    let client = async_nats::connect(&nats.url)
        .await
        .step(format!("cannot connect to NATS at {}", nats.url))?;
    let mut subscription = client
        .subscribe(format!("{}.{consumer}.>", nats.subject_prefix))
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
    let meter = Meter::start(server);
    let schedule = pacer::pace(rate, duration, |sent| {
        let customer = customers[usize::try_from(sent).unwrap_or(0) % customers.len()];
        let (handle, acked, outcome) = (handle.clone(), acked.clone(), outcome.clone());
        async move {
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
        }
    })
    .await?;
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
    let resources = meter.finish(schedule.sent);

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
        achieved_rate: schedule.achieved_rate(),
        seconds: schedule.elapsed.as_secs_f64(),
        acknowledged: acked.len() as u64,
        received: received_count,
        missing,
        errors,
        first_error,
        before_ack,
        latency: Latency::of(&latency),
        command_latency: commands,
        resources,
    })
}
