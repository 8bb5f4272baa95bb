//! idledger's HTTP API (axum, under `/v1`): commands, golden records, history, per-source
//! bearer-token authentication with roles, problem+json errors, OpenAPI, health and metrics;
//! and the HTTP side of delivery: the consumer registry, the change feed (NDJSON or
//! Server-Sent Events), acknowledgements, the handoff log and consumer state; the data
//! steward's web page (`/steward`, server-rendered HTML); and the public key set that verifies
//! signed tokens (`/.well-known/jwks.json`), whose signer is in [`AppState::signer`].
//!
//! Architecture invariant: only this crate knows HTTP and the JSON request shapes; it turns
//! requests into domain commands and reads through `idledger_store::Ledger`. What a consumer
//! may receive is decided by `idledger_relay` (the feed is the relay's `Feed`), never here.

pub mod auth;
pub mod decisions;
pub mod delivery;
pub mod duplicates;
pub mod error;
pub mod export;
pub mod extract;
pub mod households;
pub mod jwks;
pub mod limits;
pub mod merges;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod proposals;
pub mod reconcile;
pub mod retention;
pub mod routes;
pub mod steward;
pub mod tokens;
pub mod views;
pub mod wire;
pub mod workspace;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use idledger_app::App;
use idledger_relay::Feed;
use idledger_store::jws::DEFAULT_REFRESH;
use idledger_store::{Deliveries, Ledger, TokenSigner, Tokens};
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// How long a decision token stays valid unless configured otherwise: long enough for the use
/// it was asked for, short enough that a withdrawal soon binds every holder.
pub const DEFAULT_DECISION_TOKEN_TTL: Duration = Duration::from_secs(300);

/// Limits the server applies to every connection and request.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted (413 beyond), but snapshot uploads'.
    pub max_body_bytes: usize,
    /// Largest snapshot upload accepted (413 beyond). Uploads are streamed, never held whole.
    pub max_upload_bytes: u64,
    /// Requests handled at once; more wait their turn.
    pub max_concurrency: usize,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// The steward page's sessions: idle and absolute expiry, `Secure` cookies.
    pub sessions: page::SessionSettings,
    /// How long a client may take to send a request's header, from the connection's opening
    /// or, on a kept-alive connection, from the previous answer: the connection is closed
    /// then. So it is also how long an idle kept-alive connection stays open.
    pub header_read_timeout: Duration,
    /// How long a request may take until its answer starts (`408 request_timeout` beyond);
    /// an event stream's body, which goes on, is not bounded by it.
    pub request_timeout: Duration,
    /// The same for snapshot uploads, retention runs and duplicate backfills, whose work
    /// grows with the data. (An upload that sends nothing for `request_timeout` is stopped,
    /// 408, all the same.)
    pub long_request_timeout: Duration,
    /// What one token may take of the server (429 beyond).
    pub token_limits: limits::TokenLimits,
    /// How long a decision token stays valid after its decision.
    pub decision_token_ttl: Duration,
    /// How long the token signer keeps the `jws` key it read, and its public key set, before
    /// reading them again: after a rotation by another process, tokens are signed with the
    /// old (still verifying) key for at most this long.
    pub token_key_refresh: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 256 * 1024,
            max_upload_bytes: 1 << 30,
            max_concurrency: 1024,
            shutdown_grace: Duration::from_secs(30),
            sessions: page::SessionSettings::default(),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            long_request_timeout: Duration::from_secs(3600),
            token_limits: limits::TokenLimits::default(),
            decision_token_ttl: DEFAULT_DECISION_TOKEN_TTL,
            token_key_refresh: DEFAULT_REFRESH,
        }
    }
}

/// How the change feed serves consumers.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// The CloudEvents `source` of every message: this instance, as the relay names it.
    pub source: String,
    /// How often an open event stream (SSE) that has caught up looks for new events when
    /// nothing woke it (the log's growth does at once), and re-checks its token.
    pub poll_interval: Duration,
    /// How often an idle event stream sends a keep-alive comment (proxies close silent ones).
    pub keep_alive: Duration,
    /// Event streams one token may hold open at once; more are answered 429.
    pub max_streams_per_token: usize,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            source: idledger_relay::DEFAULT_SOURCE.to_owned(),
            poll_interval: Duration::from_secs(1),
            keep_alive: Duration::from_secs(15),
            max_streams_per_token: 4,
        }
    }
}

/// What every handler shares: a handle to [`SharedState`], cloned for every request, so one
/// reference count.
#[derive(Debug, Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug, Clone)]
pub struct SharedState {
    /// The use cases every edge shares.
    pub app: App,
    pub ledger: Ledger,
    pub tokens: Tokens,
    pub deliveries: Deliveries,
    pub feed: Feed,
    pub feed_settings: FeedSettings,
    pub reconciler: idledger_reconcile::Reconciler,
    /// Signs decision tokens and consent receipts (`signer.sign(typ, &claims)`) with the key
    /// in use for `jws`, cached (`ApiConfig::token_key_refresh`, set by [`router`]); also the
    /// public key set it serves.
    pub signer: TokenSigner,
    /// Open event streams per token (see `FeedSettings::max_streams_per_token`).
    pub open_streams: delivery::OpenStreams,
    /// Each token's request rate and requests in progress (`ApiConfig::token_limits`, set
    /// by [`router`]).
    pub per_token: limits::PerToken,
    /// The steward page's sessions (`ApiConfig::sessions`, set by [`router`]).
    pub sessions: page::SessionSettings,
    /// Largest snapshot upload (`ApiConfig::max_upload_bytes`, set by [`router`]).
    pub max_upload_bytes: u64,
    /// Longest a snapshot upload may send nothing (`ApiConfig::request_timeout`, set by
    /// [`router`]): the long route's bound alone would let a trickling sender hold it an hour.
    pub upload_idle_timeout: Duration,
    /// How long a decision token stays valid (`ApiConfig::decision_token_ttl`, set by
    /// [`router`]).
    pub decision_token_ttl: chrono::Duration,
}

impl AppState {
    pub fn new(ledger: Ledger) -> Self {
        Self::with_feed(ledger, FeedSettings::default())
    }

    /// With the change feed's settings (its CloudEvents `source` should be the relay's).
    pub fn with_feed(ledger: Ledger, feed_settings: FeedSettings) -> Self {
        let tokens = ledger.store().tokens();
        let deliveries = ledger.store().deliveries();
        let feed = Feed::new(ledger.clone(), &feed_settings.source);
        let app = App::new(ledger.clone());
        let reconciler = app.reconciler().clone();
        let signer = TokenSigner::new(ledger.signing_keys(), DEFAULT_REFRESH);
        Self(Arc::new(SharedState {
            app,
            reconciler,
            signer,
            ledger,
            tokens,
            deliveries,
            feed,
            feed_settings,
            open_streams: delivery::OpenStreams::default(),
            per_token: limits::PerToken::new(ApiConfig::default().token_limits),
            sessions: ApiConfig::default().sessions,
            max_upload_bytes: ApiConfig::default().max_upload_bytes,
            upload_idle_timeout: ApiConfig::default().request_timeout,
            decision_token_ttl: ttl(DEFAULT_DECISION_TOKEN_TTL),
        }))
    }
}

fn ttl(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Cancelled when the server starts shutting down: open event streams end then (clients
/// reconnect elsewhere with `Last-Event-ID`), so a graceful stop does not wait on them.
#[derive(Debug, Clone, Default)]
pub struct Closing(pub CancellationToken);

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole API as a router; tests and `serve` both use it.
pub fn router(state: AppState, config: &ApiConfig) -> Router {
    // Touch the recorder so /metrics has something to render from the first request on.
    let _ = metrics::handle();
    let mut state = Arc::unwrap_or_clone(state.0);
    state.per_token = limits::PerToken::new(config.token_limits);
    state.max_upload_bytes = config.max_upload_bytes;
    state.upload_idle_timeout = config.request_timeout;
    state.sessions = config.sessions;
    state.decision_token_ttl = ttl(config.decision_token_ttl);
    state.signer = TokenSigner::new(state.ledger.signing_keys(), config.token_key_refresh);
    let state = AppState(Arc::new(state));
    let timeouts = limits::Timeouts {
        request: config.request_timeout,
        long_request: config.long_request_timeout,
    };
    let v1 = Router::new()
        .route("/customers", post(routes::register).get(routes::find))
        .route("/customers/{customer_id}/commands", post(routes::command))
        .route("/customers/{customer_id}", get(routes::record))
        .route(
            "/customers/{customer_id}/fields/{field}/history",
            get(routes::history),
        )
        .route("/customers/{customer_id}/erasure", post(routes::erase))
        .route("/customers/{customer_id}/merge", post(merges::merge))
        .route("/customers/{customer_id}/unmerge", post(merges::unmerge))
        .route("/households", post(households::create))
        .route("/households/{household_id}", get(households::show))
        .route(
            "/households/{household_id}/members/{customer_id}",
            put(households::join).delete(households::leave),
        )
        .route("/retention/runs", post(retention::run_retention))
        .route("/duplicates/backfill", post(duplicates::backfill))
        .route(
            "/customers/{customer_id}/restriction",
            post(routes::restrict),
        )
        .route("/customers/{customer_id}/export", get(export::export))
        .route(
            "/customers/{customer_id}/disclosures",
            get(routes::customer_disclosures),
        )
        .route(
            "/sources/{source_id}/disclosures",
            get(routes::source_disclosures),
        )
        .route(
            "/customers/{customer_id}/handoffs",
            get(delivery::customer_handoffs),
        )
        .route(
            "/consumers",
            post(delivery::register_consumer).get(delivery::list_consumers),
        )
        .route("/consumers/{consumer_id}", get(delivery::get_consumer))
        .route(
            "/consumers/{consumer_id}/disable",
            post(delivery::disable_consumer),
        )
        .route(
            "/consumers/{consumer_id}/handoffs",
            get(delivery::consumer_handoffs),
        )
        .route(
            "/consumers/{consumer_id}/state",
            get(delivery::consumer_state),
        )
        .route("/consumers/{consumer_id}/hash-key", get(delivery::hash_key))
        .route(
            "/consumers/{consumer_id}/snapshots",
            post(reconcile::upload_snapshot),
        )
        .route("/proposals", get(proposals::list_proposals))
        .route("/exceptions", get(reconcile::list_exceptions))
        .route("/exceptions/actions", post(reconcile::act_in_bulk))
        .route("/exceptions/counts", get(workspace::counts))
        .route("/exceptions/{exception_id}", get(reconcile::get_exception))
        .route(
            "/exceptions/{exception_id}/actions",
            post(reconcile::act_on_exception),
        )
        .route(
            "/exceptions/{exception_id}/assignment",
            post(workspace::assign),
        )
        .route("/approvals", get(workspace::list_approvals))
        .route("/approvals/{approval_id}", get(workspace::get_approval))
        .route("/approvals/{approval_id}/approve", post(workspace::approve))
        .route("/approvals/{approval_id}/reject", post(workspace::reject))
        .route("/steward-activity", get(workspace::activity))
        .route(
            "/reconciliations",
            post(reconcile::start_reconciliation).get(reconcile::list_reconciliations),
        )
        .route(
            "/reconciliations/{run_id}",
            get(reconcile::get_reconciliation),
        )
        .route(
            "/reconciliations/{run_id}/findings",
            get(reconcile::list_findings),
        )
        .route("/feed", get(delivery::feed))
        .route("/acks", post(delivery::ack))
        .route(
            "/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/tokens/{token_id}", get(tokens::get_token))
        .route("/tokens/{token_id}/rotate", post(tokens::rotate_token))
        .route("/tokens/{token_id}/revoke", post(tokens::revoke_token))
        .route(
            "/decisions",
            post(decisions::decide).get(decisions::list_decisions),
        )
        .route("/decisions/batch", post(decisions::decide_batch))
        .route(
            "/customers/{customer_id}/consents/{purpose}/receipt",
            get(decisions::consent_receipt),
        )
        .route(
            "/processors",
            post(decisions::register_processor).get(decisions::list_processors),
        )
        .route("/processors/{processor_id}", get(decisions::get_processor))
        .route(
            "/processors/{processor_id}/disable",
            post(decisions::disable_processor),
        )
        .route("/me", get(routes::me))
        .route("/openapi.json", get(routes::openapi));
    Router::new()
        .nest("/v1", v1)
        .merge(page::routes(config.sessions))
        .route("/.well-known/jwks.json", get(jwks::jwks))
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::prometheus))
        // Chosen by the matched route, so only routes (not the fallbacks) have it.
        .route_layer(axum::middleware::from_fn_with_state(
            timeouts,
            limits::timeout,
        ))
        .fallback(routes::fallback)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(axum::middleware::from_fn(error::merged_redirect))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::per_token,
        ))
        .with_state(state)
        .layer(axum::middleware::from_fn(metrics::track))
        // A bug in a handler answers 500 (and is logged) rather than dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panicked,
        ))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            config.max_concurrency.max(1),
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request<_>| {
                let request_id = request
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %request.method(),
                    path = %request.uri().path(),
                    request_id,
                    role = tracing::field::Empty,
                    subject = tracing::field::Empty,
                )
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests (and so in-flight commands) finish, for at most the grace period. Open
/// event streams are ended at once (see [`Closing`]). A connection that does not send a
/// request's header within `config.header_read_timeout` (after opening, or after the previous
/// answer) is closed: a slow or silent client holds no connection for long.
pub fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    config: &ApiConfig,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let (header_read_timeout, grace) = (config.header_read_timeout, config.shutdown_grace);
    serve_until(listener, router, shutdown, header_read_timeout, grace)
}

async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_read_timeout: Duration,
    grace: Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let closing = Closing::default();
    let router = router.layer(Extension(closing.clone()));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    let connections = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin; the listener stays.
                    tracing::warn!(error = %e, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = connections.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    closing.0.cancel();
    tokio::select! {
        () = connections.shutdown() => Ok(()),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period; stopping");
            Ok(())
        }
    }
}
