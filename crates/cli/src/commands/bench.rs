//! `idledger bench`: the benchmark harness (crate `idledger-bench`) on scratch databases of the
//! PostgreSQL server named by `--database`, with NATS for delivery; reports to `--out`. The
//! server under test is this binary's `serve`, started as a child process (or `--target`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use idledger_bench::{BenchConfig, Target};

use crate::config::{Database, Settings};

/// Default NATS server when neither `--nats-url` nor the configuration names one.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tiny sizes (4 clients, 2 s phases, 2,000 events): checks that every phase runs, as CI
    /// does; its figures mean nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Directory for report.md and report.json (created if missing).
    #[arg(long, value_name = "DIR", default_value = "bench-report")]
    pub out: PathBuf,
    /// Concurrent clients in the throughput phases (baselines and HTTP). [default: 32; smoke 4]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub clients: Option<u16>,
    /// Seconds per timed phase. [default: 20; smoke 2]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: Option<u64>,
    /// Commands per second in the commit-to-consumer phase. [default: 1000; smoke 50]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: Option<u32>,
    /// Events in the log that `rebuild` is timed over. [default: 1000000; smoke 2000]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rebuild_events: Option<u64>,
    /// NATS server the relay publishes to (JetStream). [default: the configuration's, else
    /// nats://127.0.0.1:4222]
    #[arg(long, value_name = "URL", env = "IDLEDGER__NATS__URL")]
    pub nats_url: Option<String>,
    /// Drive the server already running at this URL in the PostgreSQL HTTP phases (commands,
    /// commit-to-consumer, decisions) instead of starting `idledger serve`; its CPU and memory
    /// are then not measured, nor SQLite. Needs an admin token of it, in
    /// IDLEDGER__BENCH__TARGET_TOKEN or --target-token-file.
    #[arg(long, value_name = "URL")]
    pub target: Option<String>,
    /// A file holding an admin token of the --target server: the run creates its callers'
    /// tokens, a consumer and a processor with it (revoked and disabled at the end).
    #[arg(long, value_name = "FILE", requires = "target")]
    pub target_token_file: Option<PathBuf>,
    /// The subject prefix the --target's relay publishes under (its `[nats] subject_prefix`).
    /// [default: idledger.v1]
    #[arg(long, value_name = "PREFIX", requires = "target")]
    pub target_subject_prefix: Option<String>,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
}

/// The environment variable that may hold the --target's admin token (never a flag: a secret).
const TARGET_TOKEN_ENV: &str = "IDLEDGER__BENCH__TARGET_TOKEN";

/// The --target's admin token, from --target-token-file or the environment.
fn target_token(args: &BenchArgs) -> anyhow::Result<String> {
    let token = match &args.target_token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?,
        None => std::env::var(TARGET_TOKEN_ENV).unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        bail!(
            "--target needs an admin token of that server: in {TARGET_TOKEN_ENV} or a file \
             named by --target-token-file"
        );
    }
    Ok(token.to_owned())
}

pub async fn run(
    settings: &Settings,
    args: &BenchArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let Database::Postgres(admin_url) = &settings.database else {
        bail!(
            "the benchmark needs a PostgreSQL server: pass --database \
             postgres://postgres@127.0.0.1:5432/postgres (or set IDLEDGER__DATABASE_URL) naming a \
             database whose user may CREATE DATABASE; scratch databases are created beside it \
             and dropped at the end (the SQLite figures use temporary files)"
        );
    };
    let nats_url = args
        .nats_url
        .clone()
        .or(settings.nats.url.clone())
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_NATS.to_owned());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the report directory {}", args.out.display()))?;
    let work_dir = std::env::temp_dir();
    let out_dir = std::path::absolute(&args.out)
        .with_context(|| format!("cannot resolve the report directory {}", args.out.display()))?;
    let mut config = if args.smoke {
        BenchConfig::smoke(admin_url.clone(), nats_url, work_dir, out_dir)
    } else {
        BenchConfig::full(admin_url.clone(), nats_url, work_dir, out_dir)
    };
    // The server under test is this very binary's `serve`.
    config.serve_binary =
        std::env::current_exe().context("cannot find the idledger binary to run `serve` with")?;
    if let Some(url) = &args.target {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            bail!("--target must be an http:// or https:// URL, not '{url}'");
        }
        config.target = Some(Target {
            url: url.to_owned(),
            admin_token: target_token(args)?,
            subject_prefix: args.target_subject_prefix.clone(),
        });
    }
    if let Some(clients) = args.clients {
        config.clients = usize::from(clients);
    }
    if let Some(secs) = args.duration {
        config.duration = Duration::from_secs(secs);
    }
    if let Some(rate) = args.rate {
        config.rate = rate;
    }
    if let Some(events) = args.rebuild_events {
        config.rebuild_events = events;
    }
    eprintln!(
        "idledger bench: scratch databases on {}, NATS {}",
        settings.database, config.nats_url
    );
    let note = |line: &str| eprintln!("{line}");
    // Ctrl-C or SIGTERM ends the run: its `serve` children are killed, its scratch databases
    // dropped.
    let report = idledger_bench::run(&config, &note, super::serve::shutdown_signal()).await?;
    let json = report.to_json()?;
    let markdown = report.to_markdown();
    let json_path = args.out.join("report.json");
    let md_path = args.out.join("report.md");
    std::fs::write(&json_path, format!("{json}\n"))
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    std::fs::write(&md_path, &markdown)
        .with_context(|| format!("cannot write {}", md_path.display()))?;
    if args.json {
        writeln!(out, "{json}")?;
    } else {
        write!(out, "{markdown}")?;
        writeln!(
            out,
            "\nreports: {} and {}",
            md_path.display(),
            json_path.display()
        )?;
    }
    let unexpected = report.unexpected();
    if unexpected.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &unexpected {
            eprintln!("error: {problem}");
        }
        Ok(ExitCode::FAILURE)
    }
}
