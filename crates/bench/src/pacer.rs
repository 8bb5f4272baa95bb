//! The open-loop schedule of the paced phases (commit-to-consumer, decisions): one request per
//! tick at a fixed rate, whatever the answers' speed, at most [`IN_FLIGHT`] outstanding.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::error::{BenchError, Step as _};

/// Most requests outstanding at once; beyond this the schedule waits (and the achieved rate
/// falls short of the target, which the report shows). Small enough that an overloaded
/// server shows as a lower rate rather than as seconds of queueing in the latency.
pub const IN_FLIGHT: usize = 64;

/// What the schedule did.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Requests started (numbered 1 to `sent`).
    pub sent: u64,
    /// From the first tick until every request was answered.
    pub elapsed: Duration,
}

impl Schedule {
    pub fn achieved_rate(&self) -> f64 {
        crate::stats::rate(self.sent, self.elapsed)
    }
}

/// Starts `request(n)` (n = 1, 2, …) `rate` times a second for `duration`, each on its own
/// task, and returns once every one has finished. A request records its own outcome.
pub async fn pace<F, R>(
    rate: u32,
    duration: Duration,
    mut request: F,
) -> Result<Schedule, BenchError>
where
    F: FnMut(u64) -> R,
    R: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    // Ticks missed while all permits were out are sent as soon as one frees: the schedule
    // catches up rather than silently lowering the rate.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
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
        let request = request(sent);
        tokio::spawn(async move {
            request.await;
            drop(permit);
        });
    }
    let _all = permits
        .acquire_many(u32::try_from(IN_FLIGHT).unwrap_or(u32::MAX))
        .await
        .step("the pacing semaphore closed")?;
    Ok(Schedule {
        sent,
        elapsed: started.elapsed(),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test]
    async fn every_request_started_has_finished_when_it_returns() {
        let done = Arc::new(AtomicU64::new(0));
        let schedule = pace(200, Duration::from_millis(200), |_| {
            let done = done.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                done.fetch_add(1, Ordering::SeqCst);
            }
        })
        .await
        .unwrap();
        assert!(schedule.sent > 0);
        assert_eq!(done.load(Ordering::SeqCst), schedule.sent);
        assert!(schedule.elapsed >= Duration::from_millis(200));
    }
}
