//! `idledger serve`: the HTTP API on the configured store until Ctrl-C or SIGTERM, then a
//! graceful stop that lets in-flight commands finish.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use idledger_api::limits::TokenLimits;
use idledger_api::page::SessionSettings;
use idledger_api::{ApiConfig, AppState};
use idledger_relay::{NatsAuth, NatsConfig, NatsTls, Relay, RelayConfig};
use idledger_store::SessionLimits;
use tokio_util::sync::CancellationToken;

use crate::cli::ServeArgs;
use crate::config::{NATS_PASSWORD_ENV, NATS_TOKEN_ENV, Settings};
use crate::store::{self, KeyUse};
use zeroize::Zeroizing;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// The steward page's session settings: flag, then the `[server]` table, then the defaults.
fn session_settings(
    args: &ServeArgs,
    file: &crate::config::ServerFile,
    defaults: SessionSettings,
) -> anyhow::Result<SessionSettings> {
    let secs = |given: Option<u64>, default: chrono::Duration, what: &str| match given {
        None => Ok(default),
        Some(0) => anyhow::bail!("the steward session's {what} must be at least a second"),
        Some(secs) => i64::try_from(secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .filter(|d| *d <= chrono::Duration::days(3650))
            .with_context(|| format!("the steward session's {what} is longer than 10 years")),
    };
    let limits = SessionLimits {
        idle: secs(
            args.session_idle_secs.or(file.session_idle_secs),
            defaults.limits.idle,
            "idle expiry",
        )?,
        absolute: secs(
            args.session_max_secs.or(file.session_max_secs),
            defaults.limits.absolute,
            "lifetime",
        )?,
    };
    Ok(SessionSettings {
        limits,
        secure_cookies: args.secure_cookies || file.secure_cookies.unwrap_or(false),
    })
}

/// Bounds of the timeouts in seconds: a timer that never fires is no bound, and one too far
/// off overflows the clock.
const MAX_HEADER_TIMEOUT_SECS: u64 = 3600;
const MAX_REQUEST_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// A decision token is proof for one use, not a standing permission: a day at most.
const MAX_DECISION_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// A timeout setting in seconds, 1 to `max`, or `default` when not given.
fn seconds(
    name: &str,
    given: Option<u64>,
    default: Duration,
    max: u64,
) -> anyhow::Result<Duration> {
    match given {
        None => Ok(default),
        Some(secs) if (1..=max).contains(&secs) => Ok(Duration::from_secs(secs)),
        Some(secs) => anyhow::bail!("--{name} must be 1 to {max} seconds, not {secs}"),
    }
}

pub async fn run(
    settings: &Settings,
    args: &ServeArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let file = &settings.server;
    let defaults = ApiConfig::default();
    let config = ApiConfig {
        max_body_bytes: args
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(defaults.max_body_bytes),
        max_concurrency: args
            .max_concurrency
            .or(file.max_concurrency)
            .unwrap_or(defaults.max_concurrency),
        shutdown_grace: args
            .shutdown_grace_secs
            .or(file.shutdown_grace_secs)
            .map_or(defaults.shutdown_grace, Duration::from_secs),
        sessions: session_settings(args, file, defaults.sessions)?,
        max_upload_bytes: args
            .max_upload_bytes
            .or(file.max_upload_bytes)
            .unwrap_or(defaults.max_upload_bytes),
        header_read_timeout: seconds(
            "header-timeout-secs",
            args.header_timeout_secs.or(file.header_timeout_secs),
            defaults.header_read_timeout,
            MAX_HEADER_TIMEOUT_SECS,
        )?,
        request_timeout: seconds(
            "request-timeout-secs",
            args.request_timeout_secs.or(file.request_timeout_secs),
            defaults.request_timeout,
            MAX_REQUEST_TIMEOUT_SECS,
        )?,
        decision_token_ttl: seconds(
            "decision-token-ttl-secs",
            args.decision_token_ttl_secs,
            defaults.decision_token_ttl,
            MAX_DECISION_TOKEN_TTL_SECS,
        )?,
        long_request_timeout: seconds(
            "long-request-timeout-secs",
            args.long_request_timeout_secs
                .or(file.long_request_timeout_secs),
            defaults.long_request_timeout,
            MAX_REQUEST_TIMEOUT_SECS,
        )?,
        token_limits: TokenLimits {
            rate_per_sec: args
                .token_rate
                .or(file.token_rate)
                .unwrap_or(defaults.token_limits.rate_per_sec),
            burst: args
                .token_burst
                .or(file.token_burst)
                .unwrap_or(defaults.token_limits.burst),
            max_in_flight: args
                .token_max_in_flight
                .or(file.token_max_in_flight)
                .unwrap_or(defaults.token_limits.max_in_flight),
        },
        token_key_refresh: defaults.token_key_refresh,
    };
    let listen: SocketAddr = match args.listen.or(file.listen) {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    let relay_config = relay_config(settings, args)?;
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let tokens = ledger
        .store()
        .tokens()
        .list()
        .await?
        .into_iter()
        .filter(|t| t.revoked_at.is_none())
        .count();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    writeln!(
        out,
        "idledger {} serving http://{addr}",
        env!("CARGO_PKG_VERSION")
    )?;
    writeln!(out, "  store     {}", settings.database)?;
    writeln!(out, "  API       http://{addr}/v1/openapi.json")?;
    writeln!(
        out,
        "  steward   http://{addr}/steward (sessions: {} s idle, {} s at most{})",
        config.sessions.limits.idle.num_seconds(),
        config.sessions.limits.absolute.num_seconds(),
        if config.sessions.secure_cookies {
            ", Secure cookie"
        } else {
            ""
        }
    )?;
    writeln!(out, "  tokens    {tokens} live")?;
    if tokens == 0 {
        writeln!(
            out,
            "  no API tokens yet: create one with `idledger token create --role source --source idp`"
        )?;
    }
    writeln!(out, "stop with Ctrl-C (in-flight requests finish first)")?;
    let stop_relay = CancellationToken::new();
    let relay = match &relay_config {
        Some(config) => {
            match &config.nats {
                Some(nats) => writeln!(
                    out,
                    "  relay     NATS JetStream {} (stream {}), webhooks",
                    idledger_store::redact_url(&nats.url),
                    nats.stream.name
                )?,
                None => writeln!(out, "  relay     webhooks (no NATS configured)")?,
            }
            let relay = Relay::new(ledger.clone(), config.clone());
            Some(tokio::spawn(relay.run(stop_relay.clone())))
        }
        None => {
            writeln!(out, "  relay     disabled")?;
            None
        }
    };
    let every = args
        .reconcile_every
        .or(settings.reconcile.interval_secs)
        .unwrap_or(DEFAULT_RECONCILE_SECS);
    let stop_schedules = CancellationToken::new();
    let reconciling = if every == 0 {
        writeln!(out, "  reconcile off (scheduled runs disabled)")?;
        None
    } else {
        writeln!(out, "  reconcile every {every} s, all consumers")?;
        let reconciler = idledger_reconcile::Reconciler::new(ledger.clone());
        Some(tokio::spawn(reconcile_on_schedule(
            reconciler,
            Duration::from_secs(every),
            stop_schedules.clone(),
        )))
    };
    let every = args
        .retention_every
        .or(settings.retention.interval_secs)
        .unwrap_or(DEFAULT_RETENTION_SECS);
    let retaining = if every == 0 {
        writeln!(out, "  retention off (scheduled runs disabled)")?;
        None
    } else {
        writeln!(out, "  retention every {every} s")?;
        Some(tokio::spawn(retention_on_schedule(
            idledger_app::App::new(ledger.clone()),
            Duration::from_secs(every),
            stop_schedules.clone(),
        )))
    };
    let every = args
        .checkpoint_every
        .or(settings.checkpoints.interval_secs)
        .unwrap_or(DEFAULT_CHECKPOINT_SECS);
    let checkpointing = if every == 0 {
        writeln!(out, "  checkpoints off (no scheduled signing)")?;
        None
    } else {
        writeln!(
            out,
            "  checkpoints signed every {every} s while the log grows"
        )?;
        Some(tokio::spawn(checkpoint_on_schedule(
            ledger.clone(),
            Duration::from_secs(every),
            stop_schedules.clone(),
        )))
    };
    out.flush()?;
    let router = idledger_api::router(AppState::new(ledger), &config);
    let served = idledger_api::serve(listener, router, shutdown_signal(), &config).await;
    stop_schedules.cancel();
    if let Some(task) = reconciling
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the reconciliation schedule failed");
    }
    if let Some(task) = retaining
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the retention schedule failed");
    }
    if let Some(task) = checkpointing
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the checkpoint schedule failed");
    }
    // The relay stops after the API: every command acknowledged before the stop is in the log,
    // and the relay resumes from its checkpoints on the next start.
    stop_relay.cancel();
    if let Some(relay) = relay {
        match relay.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "the relay stopped with an error"),
            Err(e) => tracing::error!(error = %e, "the relay task failed"),
        }
    }
    served?;
    writeln!(out, "stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Seconds between scheduled reconciliation runs unless configured.
const DEFAULT_RECONCILE_SECS: u64 = 3600;

/// Runs `job` each `every`, the first time one interval after the start, until `stop`; a job
/// in progress at the stop is abandoned. Runs that fall behind are delayed, not bunched.
async fn on_schedule<F, Fut>(every: Duration, stop: CancellationToken, mut job: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = job() => {}
        }
    }
}

/// Reconciles every consumer each `every`; a run abandoned at shutdown keeps its row
/// `running` and its exceptions.
async fn reconcile_on_schedule(
    reconciler: idledger_reconcile::Reconciler,
    every: Duration,
    stop: CancellationToken,
) {
    on_schedule(every, stop, || async {
        match reconciler
            .reconcile(None, "schedule", "idledger", &|_| {})
            .await
        {
            Ok(run) => tracing::info!(run = %run.id, report = %run.report, "scheduled reconciliation finished"),
            // Another instance's schedule (or a steward) got there first: nothing wrong.
            Err(e @ idledger_reconcile::ReconcileError::Busy(_)) => {
                tracing::info!(reason = %e, "scheduled reconciliation skipped");
            }
            Err(e) => tracing::error!(error = %e, "scheduled reconciliation failed"),
        }
    })
    .await;
}

/// Seconds between scheduled retention runs unless configured: daily.
const DEFAULT_RETENTION_SECS: u64 = 86_400;

/// Applies the policy's retention each `every`. A run stopped at shutdown has recorded each
/// customer's expiries whole (one append each); the next run carries on.
async fn retention_on_schedule(app: idledger_app::App, every: Duration, stop: CancellationToken) {
    on_schedule(every, stop, || async {
        match app.retention_run(chrono::Utc::now(), false, &|_| {}).await {
            Ok(report) => tracing::info!(
                values = report.values_expired,
                consents = report.consents_expired,
                handoffs = report.handoffs_deleted,
                idempotency = report.idempotency_records_deleted,
                runs = report.runs_deleted,
                "scheduled retention run finished"
            ),
            Err(e) => tracing::error!(error = %e, "scheduled retention run failed"),
        }
    })
    .await;
}

/// Seconds between signed checkpoints unless configured: ten minutes.
const DEFAULT_CHECKPOINT_SECS: u64 = 600;

/// Signs a checkpoint of the log each `every` when it has grown (`sign_checkpoint` reads only
/// the events since the latest one). Several instances may sign: the same head is stored
/// once.
async fn checkpoint_on_schedule(
    ledger: idledger_store::Ledger,
    every: Duration,
    stop: CancellationToken,
) {
    on_schedule(every, stop, || async {
        match ledger.sign_checkpoint().await {
            Ok(Some(signed)) if signed.new => tracing::info!(
                position = signed.checkpoint.position,
                kid = %signed.checkpoint.kid,
                "signed a checkpoint of the log"
            ),
            Ok(_) => tracing::debug!("the log has not grown since its latest checkpoint"),
            Err(e) => tracing::error!(error = %e, "signing a checkpoint failed"),
        }
    })
    .await;
}

/// The relay's settings from flags, environment and the configuration file; `None` when the
/// relay is disabled. Refuses NATS settings that cannot work (conflicting credentials,
/// unreadable files), so `serve` stops at start rather than retrying for ever.
fn relay_config(settings: &Settings, args: &ServeArgs) -> anyhow::Result<Option<RelayConfig>> {
    if args.no_relay || settings.relay.disabled == Some(true) {
        return Ok(None);
    }
    let mut config = RelayConfig::default();
    if let Some(source) = args.event_source.clone().or(settings.relay.source.clone()) {
        config.source = source;
    }
    config.nats = match args
        .nats_url
        .clone()
        .or(settings.nats.url.clone())
        .filter(|url| !url.trim().is_empty())
    {
        Some(url) => Some(nats_config(settings, url)?),
        None => None,
    };
    Ok(Some(config))
}

fn nats_config(settings: &Settings, url: String) -> anyhow::Result<NatsConfig> {
    let file = &settings.nats;
    let nats = NatsConfig {
        auth: nats_auth(settings)?,
        tls: NatsTls {
            ca_file: file.tls_ca_file.clone(),
            client_cert: match (&file.tls_cert_file, &file.tls_key_file) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
                (None, None) => None,
                _ => anyhow::bail!("[nats] tls_cert_file and tls_key_file go together"),
            },
            required: file.tls_required.unwrap_or(false),
        },
        ..nats_layout(settings, url)
    };
    idledger_relay::nats::connect_options(&nats)?;
    Ok(nats)
}

/// The stream, subjects and ack stream `[nats]` names (no credentials).
pub(crate) fn nats_layout(settings: &Settings, url: String) -> NatsConfig {
    let file = &settings.nats;
    let mut nats = NatsConfig {
        url,
        ..NatsConfig::default()
    };
    if let Some(name) = &file.stream {
        nats.stream.name.clone_from(name);
    }
    if let Some(prefix) = &file.subject_prefix {
        nats.stream.subject_prefix.clone_from(prefix);
    }
    if let Some(prefix) = &file.ack_subject_prefix {
        nats.ack_subject_prefix.clone_from(prefix);
    }
    if let Some(stream) = &file.ack_stream {
        nats.ack_stream.clone_from(stream);
    }
    if let Some(replicas) = file.replicas {
        nats.stream.replicas = replicas;
    }
    if let Some(secs) = file.duplicate_window_secs {
        nats.stream.duplicate_window = Duration::from_secs(secs);
    }
    nats
}

/// The one way the relay authenticates to NATS, from `[nats]` and the environment.
fn nats_auth(settings: &Settings) -> anyhow::Result<NatsAuth> {
    let file = &settings.nats;
    let secrets = &settings.nats_secrets;
    let read = |path: &std::path::Path, what: &str| {
        std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .with_context(|| format!("cannot read the NATS {what} {}", path.display()))
    };
    let mut chosen = Vec::new();
    if let Some(user) = &file.user {
        let Some(password) = secrets.password.clone() else {
            anyhow::bail!("[nats] user is set: give its password in {NATS_PASSWORD_ENV}");
        };
        chosen.push(NatsAuth::UserPassword {
            user: user.clone(),
            password,
        });
    } else if secrets.password.is_some() {
        anyhow::bail!("{NATS_PASSWORD_ENV} is set without [nats] user");
    }
    if let Some(token) = &secrets.token {
        chosen.push(NatsAuth::Token(token.clone()));
    }
    if let Some(path) = &file.nkey_seed_file {
        chosen.push(NatsAuth::NKey(read(path, "nkey seed file")?));
    }
    if let Some(path) = &file.creds_file {
        chosen.push(NatsAuth::Credentials(read(path, "credentials file")?));
    }
    if chosen.len() > 1 {
        anyhow::bail!(
            "NATS credentials are given more than one way ([nats] user, {NATS_TOKEN_ENV}, \
             nkey_seed_file, creds_file): keep one"
        );
    }
    Ok(chosen.pop().unwrap_or_default())
}

/// Resolves on Ctrl-C or SIGTERM (what service managers send).
pub(crate) async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("interrupted; shutting down"),
        () = terminate => tracing::info!("terminated; shutting down"),
    }
}
