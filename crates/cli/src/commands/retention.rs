//! `idledger retention run`: expire what the policy keeps too long — values and consent
//! records not changed within their retention (`field_expired` events) — and delete handoffs,
//! idempotency records and reconciliation runs older than theirs. `--dry-run` counts what would
//! go and writes nothing. `serve` runs the same on a schedule.

use std::io::Write;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand};
use idledger_app::{App, RetentionReport};

use crate::config::Settings;
use crate::progress::Progress;
use crate::store::{self, KeyUse};

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Apply the policy's retention now and print what was expired and deleted.
    Run(RetentionRunArgs),
}

#[derive(Debug, Args)]
pub struct RetentionRunArgs {
    /// Count what would be expired and deleted; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    settings: &Settings,
    command: &RetentionCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let RetentionCommand::Run(args) = command;
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let app = App::new(ledger);
    let progress = Progress::counter("retention", "customers");
    let report = app
        .retention_run(Utc::now(), args.dry_run, &|p| progress.set(p.customers))
        .await?;
    progress.finish();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", summary(&report))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(r: &RetentionReport) -> String {
    let (expired, deleted) = if r.dry_run {
        ("would expire", "would delete")
    } else {
        ("expired", "deleted")
    };
    format!(
        "retention{} at {}\n  customers read: {}\n  {expired}: {} values, {} consent records ({} customers)\n  {deleted}: {} handoffs, {} idempotency records, {} disclosures, {} decisions, {} reconciliation runs ({} findings)\n",
        if r.dry_run { " (dry run)" } else { "" },
        r.now.to_rfc3339(),
        r.customers,
        r.values_expired,
        r.consents_expired,
        r.customers_expired,
        r.handoffs_deleted,
        r.idempotency_records_deleted,
        r.disclosures_deleted,
        r.decisions_deleted,
        r.runs_deleted,
        r.findings_deleted,
    )
}
