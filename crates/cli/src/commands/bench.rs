//! `idledger bench`: the benchmark harness (crate `idledger-bench`) on scratch databases of the
//! PostgreSQL server named by `--database`, with NATS for delivery; reports to `--out`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use idledger_bench::BenchConfig;

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
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    pub json: bool,
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
    let mut config = if args.smoke {
        BenchConfig::smoke(admin_url.clone(), nats_url, work_dir)
    } else {
        BenchConfig::full(admin_url.clone(), nats_url, work_dir)
    };
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
    let report = idledger_bench::run(&config, &note).await?;
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
