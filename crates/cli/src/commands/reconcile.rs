//! `idledger reconcile`: compare what consumers acknowledged — or, with `--snapshot`, an
//! export one consumer holds — with the record, open sync exceptions for what differs (acks
//! runs) and print the run's report. Runs page through customers, so memory stays flat; the
//! run and its findings are kept for later reading (`GET /v1/reconciliations/{id}`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;
use idledger_reconcile::{Reconciler, SnapshotFormat};
use idledger_store::delivery::ConsumerId;
use idledger_store::runs::{Run, RunKind};

use crate::config::Settings;
use crate::progress::Progress;
use crate::store::{self, KeyUse};

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only this consumer. [default: every enabled consumer; required with --snapshot]
    #[arg(long, value_name = "ID", value_parser = parse_consumer)]
    pub consumer: Option<ConsumerId>,
    /// Compare this export of what the consumer holds instead of its acknowledgements:
    /// NDJSON or CSV rows of customer_id, field, and value or value_hash.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    /// The snapshot's format: ndjson or csv. [default: from the file's extension]
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub format: Option<SnapshotFormat>,
    /// Also write every finding (a snapshot's full diff) to this file, one JSON per line.
    #[arg(long, value_name = "FILE")]
    pub findings: Option<PathBuf>,
    /// Print the run (with its report) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_consumer(raw: &str) -> Result<ConsumerId, String> {
    ConsumerId::parse(raw).map_err(|e| e.to_string())
}

fn parse_format(raw: &str) -> Result<SnapshotFormat, String> {
    SnapshotFormat::parse(raw).ok_or_else(|| format!("'{raw}' is not one of: ndjson, csv"))
}

pub async fn run(
    settings: &Settings,
    args: &ReconcileArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let reconciler = Reconciler::new(ledger);
    let by = format!("cli:{}", whoami());
    let run = match &args.snapshot {
        None => {
            let progress = Progress::counter("comparing", "customers");
            let run = reconciler
                .reconcile(args.consumer.clone(), "cli", &by, &|p| {
                    progress.set(p.customers);
                })
                .await?;
            progress.finish();
            run
        }
        Some(path) => {
            let Some(consumer) = args.consumer.clone() else {
                bail!("--snapshot compares one consumer's export: name it with --consumer");
            };
            let format = match args.format {
                Some(f) => f,
                None => path
                    .extension()
                    .and_then(|e| e.to_str())
                    .and_then(SnapshotFormat::parse)
                    .with_context(|| {
                        format!(
                            "cannot tell the format of {} from its name: give --format ndjson or --format csv",
                            path.display()
                        )
                    })?,
            };
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open the snapshot {}", path.display()))?;
            let progress = Progress::counter("reading", "rows");
            let run = reconciler
                .snapshot(consumer, Box::new(file), format, "cli", &by, &|p| {
                    if p.customers == 0 {
                        progress.set(p.rows);
                    } else {
                        progress.set(p.customers);
                    }
                })
                .await?;
            progress.finish();
            run
        }
    };
    if let Some(path) = &args.findings {
        let written = write_findings(&reconciler, &run, path).await?;
        eprintln!("wrote {written} findings to {}", path.display());
    }
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &run)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", idledger_reconcile::summary(&run))?;
        if run.kind == RunKind::Snapshot && args.findings.is_none() {
            writeln!(
                out,
                "\n  the full diff: --findings <FILE>, or GET /v1/reconciliations/{}/findings",
                run.id
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the run's findings to `path` page by page.
async fn write_findings(reconciler: &Reconciler, run: &Run, path: &PathBuf) -> anyhow::Result<u64> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut file = std::io::BufWriter::new(file);
    let mut after = 0;
    let mut written = 0;
    loop {
        let page = reconciler.runs().findings(run.id, after, 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for finding in &page {
            serde_json::to_writer(&mut file, finding)?;
            file.write_all(b"\n")?;
            written += 1;
        }
    }
    file.flush()?;
    Ok(written)
}

fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "operator".to_owned())
}
