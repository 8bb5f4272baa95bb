//! The HTTP side of delivery: the consumer registry (role `admin`), the change feed and
//! acknowledgements (role `consumer`, the consumer being the token's subject), and the
//! delivery records — the handoff log and consumer state (roles `steward`, `auditor`).
//!
//! What a consumer may receive is the relay's decision (`idledger_relay::Feed`, the same
//! planning as NATS and webhooks, logged as handoffs); this module only carries it over HTTP.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use futures::StreamExt;
use idledger_domain::ids::{CustomerId, Purpose};
use idledger_relay::feed::{FeedItem, MAX_FEED_PAGE};
use idledger_relay::{RelayError, acks};
use idledger_store::delivery::{
    AckOutcome, Channel, ChannelKind, Consumer, ConsumerId, FieldSelector, HandoffFilter, MAX_PAGE,
    NewConsumer, RegisterError, StartAt, Webhook, WebhookSecret,
};

use crate::auth::{Ackers, Admins, Auditors, Authorized, Caller, FeedReaders, KeyHolders, bearer};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams, QueryParams, truncate};
use crate::routes::customer_param;
use crate::views::{
    AckView, ConsumerListView, ConsumerStateView, ConsumerView, FieldStateView, HandoffPageView,
    HashKeyView,
};
use crate::wire::{ConsumerRequest, WebhookRequest};
use crate::{AppState, Closing};

/// `Content-Type` of the feed's default form: one CloudEvent (structured JSON) per line.
pub const NDJSON: &str = "application/x-ndjson";
/// `Content-Type` of the feed as Server-Sent Events.
pub const EVENT_STREAM: &str = "text/event-stream";
/// Response header of an NDJSON feed page: the `after=` of the next request.
pub const NEXT_AFTER: &str = "idledger-next-after";
/// Log events a feed page examines unless `limit` says otherwise.
pub const DEFAULT_FEED_LIMIT: u32 = 100;
/// Handoff rows a page holds unless `limit` says otherwise.
pub const DEFAULT_HANDOFF_LIMIT: u32 = 100;

// ---------------------------------------------------------------------------------------
// Consumer registry
// ---------------------------------------------------------------------------------------

/// Register a consumer of deliveries (role `admin`). A webhook's secret is stored, never
/// returned. Its consumer token is made separately (`idledger token create --role consumer`).
#[utoipa::path(
    post, path = "/v1/consumers", tag = "delivery",
    request_body = ConsumerRequest,
    responses(
        (status = 201, description = "Registered", body = ConsumerView, headers(("Location" = String))),
        (status = 400, description = "malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "consumer_exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (with `field`: id, channel, webhook, webhook.url, webhook.secret, fields, purposes, start_at, sla_secs, region, transfer_basis)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn register_consumer(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    JsonBody(body): JsonBody<ConsumerRequest>,
) -> Result<Response, ApiError> {
    let new = new_consumer(body)?;
    let id = new.id.clone();
    let consumer = match state.deliveries.register_consumer(new, Utc::now()).await {
        Ok(consumer) => consumer,
        Err(RegisterError::Exists(id)) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "consumer_exists",
                format!("a consumer '{id}' is already registered"),
            )
            .with("consumer_id", id));
        }
        Err(RegisterError::Store(e)) => return Err(e.into()),
    };
    let checkpoint = state.deliveries.checkpoint(&id).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(ConsumerView::new(&consumer, checkpoint)),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/consumers/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn invalid(field: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::unprocessable("invalid_value", format!("{field}: {detail}")).with("field", field)
}

/// The registration a request asks for, or `invalid_value` naming the member at fault.
fn new_consumer(body: ConsumerRequest) -> Result<NewConsumer, ApiError> {
    let id = ConsumerId::parse(&body.id).map_err(|e| invalid("id", e))?;
    let kind = ChannelKind::parse(&body.channel).map_err(|e| invalid("channel", e))?;
    let webhook = match body.webhook {
        Some(WebhookRequest { url, secret }) => {
            let secret = WebhookSecret::parse(&secret).map_err(|e| invalid("webhook.secret", e))?;
            Some(Webhook::new(&url, secret).map_err(|e| invalid("webhook.url", e))?)
        }
        None => None,
    };
    let channel = Channel::new(kind, webhook).map_err(|e| invalid("webhook", e))?;
    let fields = body
        .fields
        .iter()
        .map(|f| FieldSelector::parse(f))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("fields", e))?;
    let purposes = body
        .purposes
        .iter()
        .map(|p| Purpose::parse(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("purposes", e))?;
    let start = match body.start_at.as_deref() {
        None => StartAt::Beginning,
        Some(raw) => StartAt::parse(raw).map_err(|e| invalid("start_at", e))?,
    };
    if fields.is_empty() {
        return Err(invalid("fields", "select at least one field"));
    }
    if purposes.is_empty() {
        return Err(invalid(
            "purposes",
            "name at least one purpose the consumer processes data for",
        ));
    }
    let mut new =
        NewConsumer::new(id, channel, fields, purposes, start).map_err(|e| invalid("fields", e))?;
    if body.pseudonymous {
        new = new.pseudonymous();
    }
    new = new.located(crate::decisions::location(
        body.region.as_deref(),
        body.transfer_basis.as_deref(),
    )?);
    match body.sla_secs {
        Some(secs) => new.with_sla(secs).map_err(|e| invalid("sla_secs", e)),
        None => Ok(new),
    }
}

/// Every registered consumer, disabled ones included (role `admin`).
#[utoipa::path(
    get, path = "/v1/consumers", tag = "delivery",
    responses(
        (status = 200, body = ConsumerListView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_consumers(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
) -> Result<Json<ConsumerListView>, ApiError> {
    let mut consumers = Vec::new();
    for consumer in state.deliveries.consumers().await? {
        let checkpoint = state.deliveries.checkpoint(&consumer.id).await?;
        consumers.push(ConsumerView::new(&consumer, checkpoint));
    }
    Ok(Json(ConsumerListView { consumers }))
}

/// One consumer (role `admin`).
#[utoipa::path(
    get, path = "/v1/consumers/{consumer_id}", tag = "delivery",
    params(("consumer_id" = String, Path)),
    responses(
        (status = 200, body = ConsumerView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "consumer_not_found, invalid_consumer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_consumer(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<ConsumerView>, ApiError> {
    let consumer = registered(&state, &consumer_param(&params)?).await?;
    let checkpoint = state.deliveries.checkpoint(&consumer.id).await?;
    Ok(Json(ConsumerView::new(&consumer, checkpoint)))
}

/// Stop deliveries to a consumer (role `admin`): the relay stops its worker within its
/// registry refresh, the feed refuses it and ends its open streams. Its checkpoint, handoff
/// log and state are kept. Disabling a disabled consumer changes nothing.
#[utoipa::path(
    post, path = "/v1/consumers/{consumer_id}/disable", tag = "delivery",
    params(("consumer_id" = String, Path)),
    responses(
        (status = 200, description = "Disabled (now or before)", body = ConsumerView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "consumer_not_found, invalid_consumer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn disable_consumer(
    State(state): State<AppState>,
    Authorized(..): Authorized<Admins>,
    PathParams(params): PathParams,
) -> Result<Json<ConsumerView>, ApiError> {
    let id = consumer_param(&params)?;
    if !state.deliveries.disable_consumer(&id, Utc::now()).await? {
        return Err(consumer_not_found(&id));
    }
    let consumer = registered(&state, &id).await?;
    let checkpoint = state.deliveries.checkpoint(&id).await?;
    Ok(Json(ConsumerView::new(&consumer, checkpoint)))
}

/// The key a consumer computes `value_hash` with (roles `admin`, or the consumer itself):
/// `hmac-sha256:` and the lowercase hex HMAC-SHA256, under this key, of the UTF-8 bytes of the
/// value's natural JSON form as delivered in `data.value` (compact, object keys sorted). Each
/// consumer has its own key, derived from the master key, so its hashes cannot be linked to
/// another consumer's, nor reversed without the key. `ack_key` is the key the consumer signs
/// its NATS acknowledgements with.
#[utoipa::path(
    get, path = "/v1/consumers/{consumer_id}/hash-key", tag = "delivery",
    params(("consumer_id" = String, Path)),
    responses(
        (status = 200, body = HashKeyView),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, forbidden_consumer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "consumer_not_found, invalid_consumer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn hash_key(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<KeyHolders>,
    PathParams(params): PathParams,
) -> Result<Response, ApiError> {
    let id = consumer_param(&params)?;
    caller.act_for(&id)?;
    let consumer = registered(&state, &id).await?;
    let view = HashKeyView {
        consumer_id: consumer.id.to_string(),
        algorithm: "hmac-sha256",
        key: state.ledger.hash_key(&consumer.id).to_hex(),
        ack_key: state.ledger.ack_key(&consumer.id).to_hex(),
    };
    // A secret: no cache keeps it.
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response())
}

fn consumer_param(params: &HashMap<String, String>) -> Result<ConsumerId, ApiError> {
    let raw = params
        .get("consumer_id")
        .map(String::as_str)
        .unwrap_or_default();
    ConsumerId::parse(raw).map_err(|e| {
        ApiError::not_found(
            "invalid_consumer_id",
            format!("'{}' is not a consumer id: {e}", truncate(raw, 64)),
        )
    })
}

fn consumer_not_found(id: &ConsumerId) -> ApiError {
    ApiError::not_found("consumer_not_found", format!("no consumer '{id}'")).with("consumer_id", id)
}

async fn registered(state: &AppState, id: &ConsumerId) -> Result<Consumer, ApiError> {
    state
        .deliveries
        .consumer(id)
        .await?
        .ok_or_else(|| consumer_not_found(id))
}

// ---------------------------------------------------------------------------------------
// The change feed
// ---------------------------------------------------------------------------------------

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedQuery {
    /// Continue after this global log position: the previous page's `Idledger-Next-After`
    /// (or, for SSE, the last `id`; a `Last-Event-ID` header wins). Default 0: from the start.
    #[serde(default, deserialize_with = "crate::extract::position")]
    pub after: Option<u64>,
    /// Most log events one page examines (1..=1000, default 100). Most events carry nothing
    /// for a given consumer, so a page may hold fewer messages, or none, and still move on.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// The change feed (role `consumer`; the consumer is the token's subject and must be an
/// enabled `feed` consumer): the CloudEvents it may receive now, purpose-limited exactly as
/// NATS and webhook deliveries are — one withdrawal notice when the basis stops holding, a
/// resume before changes flow again, one erasure notice — and logged as handoffs.
///
/// - Default (`Accept: application/x-ndjson`, `*/*` or none): one page, one CloudEvent per
///   line; `Idledger-Next-After` is the `after=` of the next request. When it equals the
///   request's `after`, you are at the head of the log.
/// - `Accept: text/event-stream`: Server-Sent Events. Pages follow one another, then the
///   stream stays open and polls for new events, with keep-alive comments. `event:` is the
///   CloudEvent `type`, `data:` the CloudEvent; `id:` is the log position, sent on the last
///   message of each event, so a reconnect with `Last-Event-ID` resumes after it.
#[utoipa::path(
    get, path = "/v1/feed", tag = "delivery",
    params(FeedQuery, ("Last-Event-ID" = Option<String>, Header, description = "SSE: resume after this position (overrides `after`)")),
    responses(
        (status = 200, description = "CloudEvents (structured JSON), as NDJSON or SSE",
         content((String = "application/x-ndjson"), (String = "text/event-stream")),
         headers(("Idledger-Next-After" = String, description = "NDJSON: the next request's `after`"))),
        (status = 400, description = "invalid_query, invalid_last_event_id", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, consumer_not_registered, consumer_disabled, not_a_feed_consumer", body = Problem, content_type = "application/problem+json"),
        (status = 406, description = "not_acceptable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn feed(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<FeedReaders>,
    headers: HeaderMap,
    QueryParams(query): QueryParams<FeedQuery>,
    closing: Option<Extension<Closing>>,
) -> Result<Response, ApiError> {
    let format = feed_format(&headers)?;
    let limit = page_limit(query.limit, DEFAULT_FEED_LIMIT, MAX_FEED_PAGE)?;
    let consumer = feed_consumer(&state, &caller).await?;
    match format {
        FeedFormat::Ndjson => {
            let after = query.after.unwrap_or(0);
            let page = state
                .feed
                .page(&consumer, after, limit)
                .await
                .map_err(relay_error)?;
            let mut body = Vec::new();
            for item in page.items {
                body.extend_from_slice(&item.body);
                body.push(b'\n');
            }
            Ok((
                [
                    (header::CONTENT_TYPE, HeaderValue::from_static(NDJSON)),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
                    (
                        header::HeaderName::from_static(NEXT_AFTER),
                        HeaderValue::from(page.next_after),
                    ),
                ],
                Body::from(body),
            )
                .into_response())
        }
        FeedFormat::EventStream => {
            let after = match last_event_id(&headers)? {
                Some(id) => id,
                None => query.after.unwrap_or(0),
            };
            let max = state.feed_settings.max_streams_per_token;
            let slot = state
                .open_streams
                .take(caller.token.id, max)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_streams",
                        format!(
                            "this token holds {max} event streams open already; close one, or read pages (NDJSON)"
                        ),
                    )
                    .retry_after(5)
                })?;
            let stream = EventStream {
                _slot: slot,
                secret: bearer(&headers)?.to_owned(),
                keep_alive: state.feed_settings.keep_alive,
                closing: closing.map(|Extension(c)| c.0).unwrap_or_default(),
                log_growth: state.ledger.log_growth(),
                state,
                consumer,
                after,
                limit,
                caught_up: false,
            };
            let keep_alive = stream.keep_alive;
            let events =
                futures::stream::unfold(stream, EventStream::next).flat_map(futures::stream::iter);
            let mut response = Sse::new(events)
                .keep_alive(KeepAlive::new().interval(keep_alive))
                .into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedFormat {
    Ndjson,
    EventStream,
}

/// SSE when the client accepts `text/event-stream`; NDJSON when it accepts that, anything,
/// or says nothing; 406 otherwise.
fn feed_format(headers: &HeaderMap) -> Result<FeedFormat, ApiError> {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    if accept.trim().is_empty() {
        return Ok(FeedFormat::Ndjson);
    }
    let types: Vec<String> = accept
        .split(',')
        .map(|part| {
            part.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .collect();
    if types.iter().any(|t| t == EVENT_STREAM) {
        return Ok(FeedFormat::EventStream);
    }
    if types
        .iter()
        .any(|t| matches!(t.as_str(), NDJSON | "application/*" | "*/*"))
    {
        return Ok(FeedFormat::Ndjson);
    }
    Err(ApiError::new(
        StatusCode::NOT_ACCEPTABLE,
        "not_acceptable",
        format!("the feed is served as {NDJSON} or {EVENT_STREAM}"),
    ))
}

fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let raw = value.to_str().unwrap_or_default().trim();
    raw.parse::<u64>().map(Some).map_err(|_| {
        ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID must be a log position (an `id` this feed sent), not '{}'",
                truncate(raw, 64)
            ),
        )
    })
}

pub(crate) fn page_limit(limit: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "invalid_query",
            format!("limit must be between 1 and {max}, not {n}"),
        )
        .with("parameter", "limit")),
    }
}

/// The consumer a consumer token speaks for.
fn own_consumer_id(caller: &Caller) -> Result<ConsumerId, ApiError> {
    let subject = caller.subject().unwrap_or_default();
    ConsumerId::parse(subject).map_err(|_| not_registered(subject))
}

fn not_registered(subject: &str) -> ApiError {
    ApiError::forbidden(
        "consumer_not_registered",
        format!(
            "the token speaks for consumer '{}', which is not registered",
            truncate(subject, 64)
        ),
    )
    .with("consumer_id", truncate(subject, 64))
}

/// The caller's consumer, if it may read the feed now.
async fn feed_consumer(state: &AppState, caller: &Caller) -> Result<Consumer, ApiError> {
    let id = own_consumer_id(caller)?;
    let consumer = state
        .deliveries
        .consumer(&id)
        .await?
        .ok_or_else(|| not_registered(id.as_str()))?;
    check_feed_consumer(&consumer)?;
    Ok(consumer)
}

fn check_feed_consumer(consumer: &Consumer) -> Result<(), ApiError> {
    if !consumer.is_enabled() {
        return Err(ApiError::forbidden(
            "consumer_disabled",
            format!("consumer '{}' is disabled", consumer.id),
        )
        .with("consumer_id", &consumer.id));
    }
    let kind = consumer.channel.kind();
    if kind != ChannelKind::Feed {
        return Err(ApiError::forbidden(
            "not_a_feed_consumer",
            format!(
                "consumer '{}' receives over {}; only feed consumers read the feed",
                consumer.id,
                kind.as_str()
            ),
        )
        .with("consumer_id", &consumer.id)
        .with("channel", kind.as_str()));
    }
    Ok(())
}

fn relay_error(e: RelayError) -> ApiError {
    match e {
        RelayError::Store(e) => e.into(),
        other => ApiError::internal(&other),
    }
}

/// How many event streams each token holds open. Shared by the server's handlers.
pub type OpenStreams = crate::limits::Slots;

/// An open SSE feed: pages one after another, then polls at the head of the log.
struct EventStream {
    /// Held while the stream is open.
    _slot: crate::limits::Slot,
    state: AppState,
    consumer: Consumer,
    /// The bearer secret: a token revoked while the stream is open ends it.
    secret: String,
    after: u64,
    limit: u32,
    keep_alive: Duration,
    closing: tokio_util::sync::CancellationToken,
    /// Wakes a caught-up stream as soon as the log grows.
    log_growth: tokio::sync::watch::Receiver<u64>,
    /// The last page found nothing new: wait before the next.
    caught_up: bool,
}

type SseItem = Result<Event, Infallible>;

impl EventStream {
    /// The next non-empty batch of events; `None` ends the stream (server stopping, token
    /// revoked, consumer disabled or changed channel, or a store failure — the client
    /// reconnects with `Last-Event-ID`).
    async fn next(mut self) -> Option<(Vec<SseItem>, Self)> {
        loop {
            if self.caught_up {
                tokio::select! {
                    () = self.closing.cancelled() => return None,
                    () = tokio::time::sleep(self.state.feed_settings.poll_interval) => {}
                    _ = self.log_growth.changed() => {}
                }
            }
            // What is appended from here on wakes the next wait.
            self.log_growth.borrow_and_update();
            if self.closing.is_cancelled() || !self.still_allowed().await {
                return None;
            }
            let page = match self
                .state
                .feed
                .page(&self.consumer, self.after, self.limit)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(consumer = %self.consumer.id, error = %e, "feed stream ends: reading the next page failed");
                    return None;
                }
            };
            self.caught_up = page.next_after == self.after;
            self.after = page.next_after;
            if !page.items.is_empty() {
                return Some((sse_events(&page.items), self));
            }
        }
    }

    /// Whether the token is still live and the consumer still an enabled feed consumer (its
    /// selectors and purposes are re-read too).
    async fn still_allowed(&mut self) -> bool {
        match self.state.tokens.authenticate(&self.secret).await {
            Ok(Some(_)) => {}
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(error = %e, "feed stream ends: checking its token failed");
                return false;
            }
        }
        match self.state.deliveries.consumer(&self.consumer.id).await {
            Ok(Some(consumer)) if check_feed_consumer(&consumer).is_ok() => {
                self.consumer = consumer;
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %e, "feed stream ends: reading its consumer failed");
                false
            }
        }
    }
}

/// One SSE event per message. `id:` (the log position) goes on the last message of each log
/// event only: a resume notice and its change share a position, and a client that lost the
/// connection between them must not resume past the change.
fn sse_events(items: &[FeedItem]) -> Vec<SseItem> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let mut event = Event::default()
                .event(item.event_type)
                .data(String::from_utf8_lossy(&item.body));
            let last_of_position = items
                .get(i + 1)
                .is_none_or(|next| next.position != item.position);
            if last_of_position {
                event = event.id(item.position.to_string());
            }
            Ok(event)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------------------

/// Acknowledge a delivered change (role `consumer`; the consumer is the token's subject): the
/// value the consumer now holds (by hash) at that field version, or that it rejected it. The
/// same JSON as on NATS (`idledger.acks.v1.<consumer>`).
#[utoipa::path(
    post, path = "/v1/acks", tag = "delivery",
    request_body = crate::wire::AckDoc,
    responses(
        (status = 200, description = "Recorded, or superseded by a later version already recorded", body = AckView),
        (status = 400, description = "malformed_json", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "forbidden_role, consumer_not_registered", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_ack: malformed, or matching no change of that customer and field, or a rejection without a reason, or an erased customer", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn ack(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Ackers>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Json<AckView>, ApiError> {
    let id = own_consumer_id(&caller)?;
    let Some(consumer) = state.deliveries.consumer(&id).await? else {
        return Err(not_registered(id.as_str()));
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(&e))?;
    match acks::intake(&state.deliveries, &state.ledger, &consumer, "http", &bytes).await? {
        AckOutcome::Recorded => Ok(Json(AckView {
            outcome: "recorded".to_owned(),
            stored_version: None,
        })),
        AckOutcome::Superseded { stored_version } => Ok(Json(AckView {
            outcome: "superseded".to_owned(),
            stored_version: Some(stored_version),
        })),
        AckOutcome::Invalid(reason) => Err(ApiError::unprocessable("invalid_ack", reason)),
    }
}

// ---------------------------------------------------------------------------------------
// Delivery records
// ---------------------------------------------------------------------------------------

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HandoffQuery {
    /// The previous page's `next_after` (a handoff `seq`). Default: from the first.
    #[serde(default, deserialize_with = "crate::extract::position")]
    pub after: Option<u64>,
    /// Rows per page (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// What was handed to which consumer about a customer, on which basis, oldest first (roles
/// `steward`, `auditor`). Kept after the customer's erasure: it records disclosures, without
/// values.
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/handoffs", tag = "delivery",
    params(("customer_id" = uuid::Uuid, Path), HandoffQuery),
    responses(
        (status = 200, body = HandoffPageView),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn customer_handoffs(
    State(state): State<AppState>,
    Authorized(..): Authorized<Auditors>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<HandoffQuery>,
) -> Result<Json<HandoffPageView>, ApiError> {
    let customer = customer_param(&params)?;
    let limit = page_limit(query.limit, DEFAULT_HANDOFF_LIMIT, MAX_PAGE)?;
    if state.ledger.state(customer).await?.is_none() {
        return Err(ApiError::not_found(
            "not_found",
            format!("no customer {customer}"),
        ));
    }
    let page = state
        .deliveries
        .handoffs(&HandoffFilter::Customer(customer), query.after, limit)
        .await?;
    Ok(Json(page.into()))
}

/// What was handed to a consumer, oldest first (roles `steward`, `auditor`).
#[utoipa::path(
    get, path = "/v1/consumers/{consumer_id}/handoffs", tag = "delivery",
    params(("consumer_id" = String, Path), HandoffQuery),
    responses(
        (status = 200, body = HandoffPageView),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "consumer_not_found, invalid_consumer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn consumer_handoffs(
    State(state): State<AppState>,
    Authorized(..): Authorized<Auditors>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<HandoffQuery>,
) -> Result<Json<HandoffPageView>, ApiError> {
    let id = consumer_param(&params)?;
    let limit = page_limit(query.limit, DEFAULT_HANDOFF_LIMIT, MAX_PAGE)?;
    registered(&state, &id).await?;
    let page = state
        .deliveries
        .handoffs(&HandoffFilter::Consumer(id), query.after, limit)
        .await?;
    Ok(Json(page.into()))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// The customer (required).
    pub customer: String,
}

/// What a consumer last acknowledged holding of a customer's fields (roles `steward`,
/// `auditor`).
#[utoipa::path(
    get, path = "/v1/consumers/{consumer_id}/state", tag = "delivery",
    params(("consumer_id" = String, Path), StateQuery),
    responses(
        (status = 200, body = ConsumerStateView),
        (status = 400, description = "invalid_query (missing or malformed customer)", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "consumer_not_found, invalid_consumer_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn consumer_state(
    State(state): State<AppState>,
    Authorized(..): Authorized<Auditors>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<StateQuery>,
) -> Result<Json<ConsumerStateView>, ApiError> {
    let id = consumer_param(&params)?;
    let customer = uuid::Uuid::parse_str(&query.customer)
        .ok()
        .and_then(|u| CustomerId::try_from(u).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "customer must be a customer id (a UUIDv7), not '{}'",
                    truncate(&query.customer, 64)
                ),
            )
            .with("parameter", "customer")
        })?;
    registered(&state, &id).await?;
    let fields = state
        .deliveries
        .consumer_state(&id, Some(customer))
        .await?
        .into_iter()
        .map(FieldStateView::from)
        .collect();
    Ok(Json(ConsumerStateView {
        consumer_id: id.to_string(),
        customer_id: customer,
        fields,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(position: u64, event_type: &'static str) -> FeedItem {
        FeedItem {
            position,
            id: uuid::Uuid::now_v7(),
            event_type,
            body: b"{}".to_vec(),
        }
    }

    /// A resume notice and the change after it come from one event: only the change carries
    /// the position, so a client cut off between them resumes before both.
    #[tokio::test]
    async fn only_the_last_message_of_an_event_carries_its_position() {
        let items = [
            item(7, "idledger.field.changed.v1"),
            item(9, "idledger.consent.granted.v1"),
            item(9, "idledger.field.changed.v1"),
            item(12, "idledger.consent.withdrawn.v1"),
        ];
        let events = futures::stream::iter(sse_events(&items));
        let body = Sse::new(events).into_response().into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let ids: Vec<Option<&str>> = text
            .split("\n\n")
            .filter(|block| !block.is_empty())
            .map(|block| block.lines().find_map(|l| l.strip_prefix("id: ")))
            .collect();
        assert_eq!(ids, [Some("7"), None, Some("9"), Some("12")], "{text}");
    }
}
