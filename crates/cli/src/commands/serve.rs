//! `idledger serve`: the HTTP API on the configured store until Ctrl-C or SIGTERM, then a
//! graceful stop that lets in-flight commands finish.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use idledger_api::{ApiConfig, AppState};
use idledger_store::Tokens;

use crate::cli::ServeArgs;
use crate::config::Settings;
use crate::store::{self, KeyUse};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

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
    };
    let listen: SocketAddr = match args.listen.or(file.listen) {
        Some(addr) => addr,
        None => DEFAULT_LISTEN.parse()?,
    };
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let tokens = Tokens::new(ledger.backend().clone())
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
    writeln!(out, "  tokens    {tokens} live")?;
    if tokens == 0 {
        writeln!(
            out,
            "  no API tokens yet: create one with `idledger token create --role source --source idp`"
        )?;
    }
    writeln!(out, "stop with Ctrl-C (in-flight requests finish first)")?;
    out.flush()?;
    let router = idledger_api::router(AppState::new(ledger), &config);
    idledger_api::serve(listener, router, shutdown_signal(), config.shutdown_grace).await?;
    writeln!(out, "stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM (what service managers send).
async fn shutdown_signal() {
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
