//! Decisions at the moment of use over HTTP: `POST /v1/decisions` paced at fixed rates (the
//! shared open-loop schedule, [`crate::pacer`]), and `POST /v1/decisions/batch` of [`BATCH`]
//! customers. Every question reads its customer's state fresh from the database, as in
//! production; the customers have consented, so answers allow and are logged like any other.
//! The phase starts once the relay has caught up with the commands before it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::BenchError;
use crate::load;
use crate::pacer;
use crate::server::{PURPOSE, Server};
use crate::stats::{self, Latency};
use crate::usage::{Meter, Resources};
/// Customers per batch question.
pub const BATCH: usize = 100;
/// Customers the questions are spread over.
const CUSTOMERS: usize = 200;
/// Untimed questions before the timed ones.
const WARM_UP: u64 = 100;

/// Single questions at one paced rate.
#[derive(Debug, Clone, Serialize)]
pub struct Paced {
    pub target_rate: u32,
    pub achieved_rate: f64,
    pub seconds: f64,
    /// Answers other than 200 with every field allowed.
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency: Latency,
    /// Per decision (a batch question counts each of its customers).
    pub resources: Resources,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decisions {
    /// One per rate asked for, in order.
    pub single: Vec<Paced>,
    /// Batch questions of [`BATCH`] customers, paced at the first rate's decisions per second.
    pub batch: Paced,
    pub batch_size: usize,
}

impl Decisions {
    /// The single-question result at `rate`, if it was measured.
    pub fn at(&self, rate: u32) -> Option<&Paced> {
        self.single.iter().find(|p| p.target_rate == rate)
    }
}

pub async fn run(
    server: &mut Server,
    rates: &[u32],
    duration: Duration,
) -> Result<Decisions, BenchError> {
    let processor = format!("bench-journey-{}", server.unique);
    server
        .register_processor(&json!({"id": processor, "purposes": [PURPOSE], "fields": ["email"]}))
        .await?;
    let token = server.token("processor", Some(&processor)).await?;
    let mut customers = Vec::with_capacity(CUSTOMERS);
    for i in 0..CUSTOMERS {
        let key = format!("decide-{i}");
        let customer = load::register(server, &key).await?;
        load::grant(server, customer, &format!("{key}-grant")).await?;
        customers.push(customer);
    }
    let customers = Arc::new(customers);
    // The previous phase leaves the relay a backlog: the decisions are timed without it.
    server.wait_caught_up().await?;
    let ask = Asker {
        client: server.client.clone(),
        base: server.base.clone(),
        token,
        customers,
    };
    // Untimed: the server's first questions prepare its statements on each pooled
    // connection, a cost of its start rather than of a decision.
    for n in 0..WARM_UP {
        ask.ask(n, 1).await.map_err(BenchError::Failed)?;
    }
    let mut single = Vec::with_capacity(rates.len());
    for &rate in rates {
        single.push(ask.paced(server, rate, duration, 1).await?);
    }
    let first = rates.first().copied().unwrap_or(100);
    let batches = u32::try_from((first as usize / BATCH).max(1)).unwrap_or(1);
    let batch = ask.paced(server, batches, duration, BATCH).await?;
    Ok(Decisions {
        single,
        batch,
        batch_size: BATCH,
    })
}

#[derive(Debug, Clone)]
struct Asker {
    client: reqwest::Client,
    base: String,
    token: String,
    customers: Arc<Vec<Uuid>>,
}

/// Failed answers, the first one, and every answer's latency.
type Outcome = (u64, Option<String>, hdrhistogram::Histogram<u64>);

impl Asker {
    /// `rate` questions a second for `duration`, each about `size` customers (1: the single
    /// route, more: the batch route).
    async fn paced(
        &self,
        server: &Server,
        rate: u32,
        duration: Duration,
        size: usize,
    ) -> Result<Paced, BenchError> {
        let outcome: Arc<Mutex<Outcome>> = Arc::new(Mutex::new((0, None, stats::histogram()?)));
        let meter = Meter::start(server);
        let schedule = pacer::pace(rate, duration, |n| {
            let (asker, outcome) = (self.clone(), outcome.clone());
            async move {
                let t = Instant::now();
                let answer = asker.ask(n, size).await;
                let elapsed = t.elapsed();
                if let Ok(mut outcome) = outcome.lock() {
                    stats::record(&mut outcome.2, elapsed);
                    if let Err(e) = answer {
                        outcome.0 += 1;
                        outcome.1.get_or_insert(e);
                    }
                }
            }
        })
        .await?;
        let resources = meter.finish(schedule.sent * size as u64);
        let (errors, first_error, latency) = outcome
            .lock()
            .map(|o| (o.0, o.1.clone(), Latency::of(&o.2)))
            .unwrap_or_default();
        Ok(Paced {
            target_rate: rate,
            achieved_rate: schedule.achieved_rate(),
            seconds: schedule.elapsed.as_secs_f64(),
            errors,
            first_error,
            latency,
            resources,
        })
    }

    /// One question about `size` customers; `Err` describes an answer that is not a full
    /// allowance.
    async fn ask(&self, n: u64, size: usize) -> Result<(), String> {
        let n = usize::try_from(n).unwrap_or(0);
        let pick = |i: usize| self.customers[(n * size + i) % self.customers.len()];
        let (path, body) = if size == 1 {
            (
                "/v1/decisions",
                json!({"customer_id": pick(0), "purpose": PURPOSE, "fields": ["email"]}),
            )
        } else {
            let customers: Vec<Uuid> = (0..size).map(pick).collect();
            (
                "/v1/decisions/batch",
                json!({"customers": customers, "purpose": PURPOSE, "fields": ["email"]}),
            )
        };
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("POST {path}: {e}"))?;
        let answers: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let all_allowed = answers.len() == size && answers.iter().all(|a| a["allowed"] == true);
        if status.is_success() && all_allowed {
            Ok(())
        } else {
            Err(format!(
                "POST {path}: {status} {}",
                text.chars().take(300).collect::<String>()
            ))
        }
    }
}
