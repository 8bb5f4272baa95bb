//! `idledger merge <SURVIVOR> <ABSORBED> --reason TEXT --as NAME [--undo]`: merge a record
//! into another as a data steward, or undo that merge, as `POST /v1/customers/{id}/merge`
//! and `/unmerge` do.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use idledger_app::{App, Steward};
use idledger_domain::ids::CustomerId;
use idledger_store::MergeError;

use crate::config::Settings;
use crate::store::{self, KeyUse};

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The record that stays (a UUIDv7).
    #[arg(value_name = "SURVIVOR", value_parser = crate::cli::parse_customer_id)]
    pub survivor: CustomerId,
    /// The record merged into it (or, with --undo, taken out of it again).
    #[arg(value_name = "ABSORBED", value_parser = crate::cli::parse_customer_id)]
    pub absorbed: CustomerId,
    /// Undo the merge of ABSORBED into SURVIVOR instead.
    #[arg(long)]
    pub undo: bool,
    /// Why (recorded with the events; do not quote the record).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The steward doing it.
    #[arg(long = "as", value_name = "NAME")]
    pub steward: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(
    settings: &Settings,
    args: &MergeArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let steward = match Steward::new(&args.steward) {
        Ok(steward) => steward,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let done = if args.undo {
        app.unmerge(&steward, args.survivor, args.absorbed, &args.reason)
            .await
    } else {
        app.merge(&steward, args.survivor, args.absorbed, &args.reason)
            .await
    };
    match done {
        Ok(done) => {
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &done)?;
                writeln!(out)?;
            } else {
                let what = if args.undo {
                    "unmerged from"
                } else {
                    "merged into"
                };
                writeln!(
                    out,
                    "{} {what} {} (merge {})",
                    done.absorbed, done.survivor, done.merge_id
                )?;
                writeln!(out, "  {}: {}", done.survivor, list(&done.survivor_fields))?;
                writeln!(out, "  {}: {}", done.absorbed, list(&done.absorbed_fields))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(MergeError::Refused(refusal)) => {
            eprintln!("refused ({}): {refusal}", refusal.code());
            Ok(ExitCode::FAILURE)
        }
        Err(e @ MergeError::InvalidReason(_)) => {
            eprintln!("error: --reason: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => Err(e.into()),
    }
}

fn list(fields: &[String]) -> String {
    if fields.is_empty() {
        "no field changed".to_owned()
    } else {
        fields.join(", ")
    }
}
