//! `idledger duplicates backfill`: open the duplicate candidates of records written before
//! duplicate detection existed — every pair sharing a verified identifier, or the policy's
//! secondary rule, that has no `duplicate_candidate` exception yet — by the rule the live
//! detection uses. A second run opens nothing; a pair a steward dismissed stays dismissed.
//! `--dry-run` counts and opens nothing. `POST /v1/duplicates/backfill` runs the same.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use idledger_app::{App, BackfillReport};

use crate::config::Settings;
use crate::progress::Progress;
use crate::store::{self, KeyUse};

#[derive(Debug, Subcommand)]
pub enum DuplicatesCommand {
    /// Open the duplicate candidates live detection never saw, and print how many.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// Count the candidates that would be opened; open nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    settings: &Settings,
    command: &DuplicatesCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let DuplicatesCommand::Backfill(args) = command;
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let progress = Progress::counter("duplicates", "customers");
    let report = app
        .backfill_duplicates(args.dry_run, &|p| progress.set(p.customers))
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

fn summary(r: &BackfillReport) -> String {
    format!(
        "duplicate backfill{}\n  customers read: {}\n  candidates {}: {}\n  pairs already known (left as they are): {}\n",
        if r.dry_run { " (dry run)" } else { "" },
        r.customers,
        if r.dry_run {
            "that would open"
        } else {
            "opened"
        },
        r.opened,
        r.already_known,
    )
}
