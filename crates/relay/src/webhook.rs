//! Signed webhooks: one POST per message, in log order per consumer.
//!
//! **API boundary** — each request carries:
//! - `Content-Type: application/cloudevents+json; charset=utf-8` and the CloudEvent as body;
//! - `Idledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`;
//!   receivers recompute it over the raw body, compare in constant time and refuse a `t` more
//!   than a few minutes away from their clock (replays);
//! - `Idledger-Message-Id: <CloudEvent id>` to drop redeliveries, `Idledger-Consumer: <id>`.
//!
//! Responses: 2xx = delivered. 408, 429, 5xx and connection failures are retried with
//! exponential back-off and jitter (honouring `Retry-After`) until the endpoint answers, and
//! nothing later is sent meanwhile, so a consumer that was down catches up in order. Any other
//! status (other 4xx, 3xx: redirects are not followed) opens a sync exception for that customer
//! and field and the message is skipped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use idledger_store::delivery::{
    Channel, Closing, Consumer, ExceptionKind, HandoffKind, NewSyncException, WebhookSecret,
};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde_json::json;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::config::WebhookConfig;
use crate::envelope::Message;
use crate::error::RelayError;
use crate::plan::{Batch, Planner};
use crate::worker::Sent;

pub const SIGNATURE_HEADER: &str = "Idledger-Signature";
pub const MESSAGE_ID_HEADER: &str = "Idledger-Message-Id";
pub const CONSUMER_HEADER: &str = "Idledger-Consumer";
pub const CONTENT_TYPE_CLOUDEVENT: &str = "application/cloudevents+json; charset=utf-8";

/// The `Idledger-Signature` value for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> String {
    let v1 = keyed(secret, timestamp, body)
        .map(|mac| hex::encode(mac.finalize().into_bytes()))
        .unwrap_or_default();
    format!("t={timestamp},v1={v1}")
}

/// HMAC-SHA256 over `<timestamp>.<body>`. (`None` is unreachable: HMAC takes keys of any
/// length, but the API says `Result`.)
fn keyed(secret: &WebhookSecret, timestamp: i64, body: &[u8]) -> Option<Hmac<Sha256>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// Why a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not of the form t=<unix>,v1=<hex>")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks an `Idledger-Signature` header the way a receiver should: a `t` within `tolerance`
/// of `now` and a `v1` that matches (compared in constant time).
pub fn verify(
    secret: &WebhookSecret,
    header: &str,
    body: &[u8],
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", v)) => {
                signatures.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?)
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let skew = now.timestamp().abs_diff(timestamp);
    if skew > tolerance.as_secs() {
        return Err(SignatureError::Stale);
    }
    let mac = keyed(secret, timestamp, body).ok_or(SignatureError::Mismatch)?;
    // Several v1 values let a receiver accept both secrets while one is rotated.
    if signatures
        .iter()
        .any(|s| mac.clone().verify_slice(s).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Failed attempts at one message after which a `delivery_failing` exception is opened (the
/// retries go on; a delivery closes it).
pub const FAILING_AFTER: u32 = 5;

/// What one attempt at one message came to.
enum Attempt {
    Delivered,
    /// The endpoint refused it for good.
    Rejected {
        status: u16,
        body: String,
    },
    /// Try again after this long.
    Retry {
        wait: Duration,
        reason: String,
    },
}

/// Sends one consumer's messages to its endpoint.
#[derive(Debug)]
pub struct WebhookSender {
    client: reqwest::Client,
    config: WebhookConfig,
    /// Failed attempts at the message at the head of the consumer's queue.
    attempts: u32,
}

impl WebhookSender {
    pub fn new(config: &WebhookConfig) -> Result<Self, RelayError> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("idledger-relay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RelayError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            config: config.clone(),
            attempts: 0,
        })
    }

    /// Sends the batch in order, stopping at the first message that must be retried (after
    /// committing what went before, the worker waits `retry_in` and plans again from there).
    pub async fn send(
        &mut self,
        planner: &Planner,
        consumer: &Consumer,
        batch: &Batch,
        cancel: &CancellationToken,
    ) -> Sent {
        let mut sent = Sent::default();
        let Channel::Webhook(webhook) = &consumer.channel else {
            sent.first_unhandled = (!batch.messages.is_empty()).then_some(0);
            sent.error = Some(RelayError::Config(format!(
                "consumer {} is not a webhook consumer",
                consumer.id
            )));
            return sent;
        };
        for (i, planned) in batch.messages.iter().enumerate() {
            let message = &planned.message;
            let attempt = tokio::select! {
                () = cancel.cancelled() => {
                    sent.first_unhandled = Some(i);
                    return sent;
                }
                attempt = self.attempt(consumer, webhook.url(), &webhook.secret, message) => attempt,
            };
            match attempt {
                Attempt::Delivered => {
                    if self.attempts >= FAILING_AFTER {
                        // It got through: the delivery_failing exception's cause is gone.
                        let closing = Closing::automatic(
                            format!("delivered after {} failed attempts", self.attempts),
                            Utc::now(),
                        );
                        let field = message.field();
                        if let Err(e) = planner
                            .deliveries
                            .close_exceptions_where(
                                &consumer.id,
                                message.customer_id,
                                field.as_ref(),
                                &[ExceptionKind::DeliveryFailing],
                                &closing,
                            )
                            .await
                        {
                            tracing::warn!(consumer = %consumer.id, error = %e, "could not close a delivery_failing exception");
                        }
                    }
                    self.attempts = 0;
                    sent.delivered.push(i);
                }
                Attempt::Rejected { status, body } => {
                    self.attempts = 0;
                    tracing::warn!(consumer = %consumer.id, message = %message.id, status, "webhook refused a message; opening a sync exception");
                    // A receiver's answer may quote what it holds of the customer: once they
                    // are erased, the exception keeps only the status.
                    let body = (!erased_or_unknown(planner, message).await).then_some(body);
                    let exception = NewSyncException::new(
                        ExceptionKind::WebhookRejected,
                        consumer.id.clone(),
                        message.customer_id,
                        message.field(),
                        json!({
                            "status": status,
                            "body": body,
                            "message_id": message.id,
                            "type": message.event_type,
                            "event_id": message.event_id,
                            "global_position": message.position,
                        }),
                        Utc::now(),
                    );
                    let opened = match exception {
                        Ok(exception) => planner.deliveries.open_exception(&exception).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = opened {
                        sent.first_unhandled = Some(i);
                        sent.error = Some(e.into());
                        return sent;
                    }
                }
                Attempt::Retry { wait, reason } => {
                    self.attempts = self.attempts.saturating_add(1);
                    if self.attempts == FAILING_AFTER {
                        // Retries go on; a steward should know the endpoint keeps failing.
                        let exception = NewSyncException::new(
                            ExceptionKind::DeliveryFailing,
                            consumer.id.clone(),
                            message.customer_id,
                            message.field(),
                            json!({
                                "attempts": self.attempts,
                                "last_error": reason,
                                "message_id": message.id,
                                "event_id": message.event_id,
                                "global_position": message.position,
                            }),
                            Utc::now(),
                        );
                        let opened = match exception {
                            Ok(exception) => planner.deliveries.open_exception(&exception).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = opened {
                            tracing::warn!(consumer = %consumer.id, error = %e, "could not open a delivery_failing exception");
                        }
                    }
                    tracing::info!(consumer = %consumer.id, message = %message.id, attempt = self.attempts, ?wait, reason, "webhook delivery failed; will retry");
                    sent.first_unhandled = Some(i);
                    sent.retry_in = Some(wait);
                    return sent;
                }
            }
        }
        sent
    }

    async fn attempt(
        &self,
        consumer: &Consumer,
        url: &str,
        secret: &WebhookSecret,
        message: &Message,
    ) -> Attempt {
        let timestamp = Utc::now().timestamp();
        let response = self
            .client
            .post(url)
            .header(CONTENT_TYPE, CONTENT_TYPE_CLOUDEVENT)
            .header(SIGNATURE_HEADER, sign(secret, timestamp, &message.body))
            .header(MESSAGE_ID_HEADER, message.id.to_string())
            .header(CONSUMER_HEADER, consumer.id.as_str())
            .body(message.body.clone())
            .send()
            .await;
        let backoff = self.config.backoff.delay(self.attempts);
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    wait: backoff,
                    reason: e.to_string(),
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        if status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            let wait = retry_after(response.headers(), Utc::now())
                .map_or(backoff, |w| w.min(self.config.max_retry_after));
            return Attempt::Retry {
                wait,
                reason: format!("HTTP {status}"),
            };
        }
        let body = response.text().await.unwrap_or_default();
        Attempt::Rejected {
            status: status.as_u16(),
            body: body.chars().take(1000).collect(),
        }
    }
}

/// Whether the message's customer is erased (an erasure notice's always is), or that could not
/// be read: then nothing the receiver answered about them is stored.
async fn erased_or_unknown(planner: &Planner, message: &Message) -> bool {
    if message.kind == HandoffKind::Erasure {
        return true;
    }
    match planner.ledger.state(message.customer_id).await {
        Ok(state) => state.is_some_and(|s| s.erased.is_some()),
        Err(e) => {
            tracing::warn!(error = %e, "could not read whether a customer is erased; the webhook's answer is not kept");
            true
        }
    }
}

/// `Retry-After` as delay-seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            "Wed, 01 Jan 2025 00:00:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let secret = WebhookSecret::parse("0123456789abcdef-secret").unwrap();
        let now = Utc::now();
        let header = sign(&secret, now.timestamp(), b"{\"a\":1}");
        let tolerance = Duration::from_secs(300);
        assert_eq!(
            verify(&secret, &header, b"{\"a\":1}", now, tolerance),
            Ok(())
        );
        assert_eq!(
            verify(&secret, &header, b"{\"a\":2}", now, tolerance),
            Err(SignatureError::Mismatch)
        );
        let later = now + chrono::Duration::minutes(10);
        assert_eq!(
            verify(&secret, &header, b"{\"a\":1}", later, tolerance),
            Err(SignatureError::Stale)
        );
        let other = WebhookSecret::parse("another-secret-0123456789").unwrap();
        assert_eq!(
            verify(&other, &header, b"{\"a\":1}", now, tolerance),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&secret, "v1=00", b"", now, tolerance),
            Err(SignatureError::Malformed)
        );
    }
}
