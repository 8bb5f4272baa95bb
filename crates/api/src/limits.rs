//! What one client may take of the server: per-token request rates and requests in progress
//! (429 with `Retry-After`), and how long a request may take (408). The connection-level
//! limits — how long a client may take to send a request's header, how long a kept-alive
//! connection may sit idle — are `serve`'s.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Authentication, Caller, bearer};
use crate::error::ApiError;

/// What one bearer token may take of the server. Generous by default: they stop a runaway or
/// hostile client from starving the others, not a busy source system (the server's own
/// capacity, about a thousand commands a second on two cores, is the bound there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLimits {
    /// Requests per second one token may make, on average; 0 = no limit.
    pub rate_per_sec: u32,
    /// Requests a token may make at once above that rate (the bucket's size); at least 1.
    pub burst: u32,
    /// Requests of one token in progress at once (until their answer starts); 0 = no limit.
    /// Event streams are counted apart (`FeedSettings::max_streams_per_token`).
    pub max_in_flight: u32,
}

impl Default for TokenLimits {
    fn default() -> Self {
        Self {
            rate_per_sec: 1000,
            burst: 2000,
            max_in_flight: 64,
        }
    }
}

impl TokenLimits {
    /// No per-token limit at all (the benchmark, which measures the server, not a quota).
    pub const UNLIMITED: Self = Self {
        rate_per_sec: 0,
        burst: 0,
        max_in_flight: 0,
    };
}

/// The state of every token's limits. Cheap to clone; one per router.
#[derive(Debug, Clone)]
pub struct PerToken {
    rate: Option<Arc<DefaultKeyedRateLimiter<Uuid>>>,
    max_in_flight: usize,
    in_flight: Slots,
}

impl PerToken {
    pub fn new(limits: TokenLimits) -> Self {
        let rate = NonZeroU32::new(limits.rate_per_sec).map(|rate| {
            let burst = NonZeroU32::new(limits.burst).unwrap_or(rate);
            Arc::new(RateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self {
            rate,
            max_in_flight: limits.max_in_flight as usize,
            in_flight: Slots::default(),
        }
    }

    /// Takes one request of `token` against its rate: how long to wait when it is over.
    fn over_rate(&self, token: Uuid) -> Option<Duration> {
        let limiter = self.rate.as_ref()?;
        limiter
            .check_key(&token)
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Counts what each token holds open (requests in progress, event streams): a slot per
/// request or stream, given back when its guard drops.
#[derive(Debug, Clone, Default)]
pub struct Slots(Arc<Mutex<HashMap<Uuid, usize>>>);

impl Slots {
    /// A slot for one more of `token`'s, or `None` when it holds `max` already.
    pub fn take(&self, token: Uuid, max: usize) -> Option<Slot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(token).or_default();
        if *count >= max {
            if *count == 0 {
                open.remove(&token);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            token,
        })
    }
}

/// One request's or stream's place in its token's count.
#[derive(Debug)]
pub struct Slot {
    slots: Slots,
    token: Uuid,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.token) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.token);
            }
        }
    }
}

/// Seconds to put in `Retry-After` for a wait: rounded up, at least 1.
fn retry_secs(wait: Duration) -> u32 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Authenticates a request's token once — its bearer token (the `Caller` extractor reuses the
/// lookup), or the steward page's session cookie — and holds it to its token's rate and
/// requests in progress: over either, 429 with `Retry-After` before the handler runs. A request
/// without a valid token passes on, to be refused where it needs one.
pub async fn per_token(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = if let Ok(secret) = bearer(request.headers()) {
        match Caller::authenticate(&state, secret).await {
            Ok(caller) => {
                let id = caller.as_ref().map(|c| c.token.id);
                request.extensions_mut().insert(Authentication(caller));
                id
            }
            // The extractor tries again and answers the failure (503 when the store is down).
            Err(_) => None,
        }
    } else if let Some(secret) = crate::page::session_secret(request.headers()) {
        // Looked up once here (it moves the idle expiry on); the page's extractor takes it
        // from the request, and sends a person to log in when it is `None`.
        match crate::page::PageSession::look_up(&state, secret).await {
            Ok(session) => {
                let id = session.token_id();
                request.extensions_mut().insert(session);
                id
            }
            // The page's extractor tries again and answers the failure.
            Err(_) => None,
        }
    } else {
        None
    };
    let Some(token) = token else {
        return next.run(request).await;
    };
    let limits = &state.per_token;
    if let Some(wait) = limits.over_rate(token) {
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "this token sends requests faster than it may; slow down and retry after Retry-After",
        )
        .retry_after(retry_secs(wait))
        .into_response();
    }
    let _slot = if limits.max_in_flight == 0 {
        None
    } else {
        match limits.in_flight.take(token, limits.max_in_flight) {
            Some(slot) => Some(slot),
            None => {
                return ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_in_flight",
                    format!(
                        "this token has {} requests in progress already; wait for their answers",
                        limits.max_in_flight
                    ),
                )
                .retry_after(1)
                .into_response();
            }
        }
    };
    next.run(request).await
}

/// How long a request may take until its answer starts (an event stream's body, which goes on,
/// is not bounded by it).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Every route but the long ones.
    pub request: Duration,
    /// Snapshot uploads (the body is streamed into the comparison), retention runs and
    /// duplicate backfills, which work while the request waits.
    pub long_request: Duration,
}

/// The routes whose work is proportional to the data, not to the request.
const LONG_ROUTES: [&str; 3] = [
    "/v1/consumers/{consumer_id}/snapshots",
    "/v1/retention/runs",
    "/v1/duplicates/backfill",
];

impl Timeouts {
    fn of(&self, route: Option<&str>) -> Duration {
        match route {
            Some(route) if LONG_ROUTES.contains(&route) => self.long_request,
            _ => self.request,
        }
    }
}

/// Answers `408 request_timeout` when a request has no answer within its route's bound.
/// Dropping the handler cancels its work; a command already handed to the store's writer may
/// still be recorded, so the answer says to retry with the same `Idempotency-Key`.
pub async fn timeout(State(timeouts): State<Timeouts>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let bound = timeouts.of(route.as_deref());
    match tokio::time::timeout(bound, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!(
                "the request took longer than {} s and was stopped; it may or may not have taken effect: retry it (a command with the same Idempotency-Key)",
                bound.as_secs()
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_rounded_up_and_at_least_a_second() {
        assert_eq!(retry_secs(Duration::ZERO), 1);
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_secs(Duration::MAX), u32::MAX);
    }

    #[test]
    fn slots_are_counted_per_token_and_given_back() {
        let slots = Slots::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = slots.take(a, 2);
        let second = slots.take(a, 2);
        assert!(first.is_some() && second.is_some());
        assert!(slots.take(a, 2).is_none(), "a third of a's");
        assert!(slots.take(b, 2).is_some(), "b has its own count");
        drop(first);
        assert!(slots.take(a, 2).is_some(), "a's slot came back");
        assert!(slots.take(a, 0).is_none());
    }

    #[test]
    fn a_token_over_its_rate_waits_and_another_does_not() {
        let limits = PerToken::new(TokenLimits {
            rate_per_sec: 1,
            burst: 2,
            max_in_flight: 0,
        });
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(limits.over_rate(a), None);
        assert_eq!(limits.over_rate(a), None);
        let wait = limits.over_rate(a).unwrap_or_default();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(limits.over_rate(b), None);
        assert_eq!(PerToken::new(TokenLimits::UNLIMITED).over_rate(a), None);
    }

    /// Every long route is a route of the API (a typo would quietly give it the short bound),
    /// and only those get the long bound.
    #[test]
    fn long_routes_are_routes_and_get_the_long_bound() {
        let timeouts = Timeouts {
            request: Duration::from_secs(1),
            long_request: Duration::from_secs(9),
        };
        let paths = crate::openapi::document().paths.paths;
        for route in LONG_ROUTES {
            assert!(paths.contains_key(route), "{route} is no route");
            assert_eq!(timeouts.of(Some(route)), timeouts.long_request, "{route}");
        }
        assert_eq!(timeouts.of(Some("/v1/customers")), timeouts.request);
        assert_eq!(timeouts.of(None), timeouts.request);
    }
}
