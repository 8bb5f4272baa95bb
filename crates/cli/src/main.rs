//! The `idledger` binary: parses the command line, resolves the settings and runs one command.
//! Everything it does lives in the library crates; the commands only open the store and print.

mod cli;
mod commands;
mod config;
mod progress;
mod render;
mod store;
mod view;

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::Settings;

/// `serve` spent ~15% of its CPU in glibc's malloc and free under load (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Usage errors (bad customer id, unknown field…) exit with clap's status 2.
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::debug!(error = ?e, "command failed");
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&cli.global, |name| std::env::var(name).ok())?;
    tracing::debug!(?settings, "settings");
    // The demo always takes a fresh embedded store: the notes are about the others.
    if !matches!(cli.command, Command::Demo) {
        for note in settings.notes() {
            let _ = writeln!(std::io::stderr(), "{note}");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let code = match &cli.command {
            Command::Migrate => commands::migrate::run(&settings, &mut out).await?,
            Command::Verify(args) => commands::verify::run(&settings, args, &mut out).await?,
            Command::Checkpoint(args) => {
                commands::checkpoint::run(&settings, args, &mut out).await?
            }
            Command::Rebuild(args) => commands::rebuild::run(&settings, args, &mut out).await?,
            Command::History(args) => commands::history::run(&settings, args, &mut out).await?,
            Command::Record(args) => commands::record::run(&settings, args, &mut out).await?,
            Command::Find(args) => commands::find::run(&settings, args, &mut out).await?,
            Command::Merge(args) => commands::merge::run(&settings, args, &mut out).await?,
            Command::Household(command) => {
                commands::household::run(&settings, command, &mut out).await?
            }
            Command::Export(args) => commands::export::run(&settings, args, &mut out).await?,
            Command::Restrict(args) => commands::restrict::run(&settings, args, &mut out).await?,
            Command::Demo => commands::demo::run(&settings, &mut out).await?,
            Command::Serve(args) => commands::serve::run(&settings, args, &mut out).await?,
            Command::Token(command) => commands::token::run(&settings, command, &mut out).await?,
            Command::Consumer(command) => {
                commands::consumer::run(&settings, command, &mut out).await?
            }
            Command::Processor(command) => {
                commands::processor::run(&settings, command, &mut out).await?
            }
            Command::Exception(command) => {
                commands::exception::run(&settings, command, &mut out).await?
            }
            Command::Reconcile(args) => commands::reconcile::run(&settings, args, &mut out).await?,
            Command::Duplicates(command) => {
                commands::duplicates::run(&settings, command, &mut out).await?
            }
            Command::Retention(command) => {
                commands::retention::run(&settings, command, &mut out).await?
            }
            Command::Keys(command) => commands::keys::run(&settings, command, &mut out).await?,
            Command::Receipt(command) => {
                commands::receipt::run(&settings, command, &mut out).await?
            }
            Command::Bench(args) => commands::bench::run(&settings, args, &mut out).await?,
        };
        out.flush()?;
        Ok(code)
    })
}

/// Logs go to stderr, filtered by RUST_LOG (default: warnings and errors).
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let color = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .init();
}

/// Output piped into a reader that stopped early (`| head`) is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let kind = match cause.downcast_ref::<serde_json::Error>() {
            Some(json) => json.io_error_kind(),
            None => cause
                .downcast_ref::<std::io::Error>()
                .map(std::io::Error::kind),
        };
        kind == Some(std::io::ErrorKind::BrokenPipe)
    })
}
