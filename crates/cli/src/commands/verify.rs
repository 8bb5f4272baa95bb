//! `idledger verify`: check the hash chains and positions of the whole log.

use std::io::Write;
use std::process::ExitCode;

use idledger_store::VerifyReport;

use crate::cli::VerifyArgs;
use crate::config::Settings;
use crate::progress::Progress;
use crate::render::kv;
use crate::store::{self, KeyUse};

pub async fn run(
    settings: &Settings,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::NotNeeded).await?;
    let progress = Progress::new("verifying");
    let report = ledger
        .verify(&|done, total| progress.update(done, total))
        .await?;
    progress.finish();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_text(out, 0, &report)?;
    }
    Ok(if report.first_broken.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn write_text(
    out: &mut dyn Write,
    indent: usize,
    report: &VerifyReport,
) -> std::io::Result<()> {
    match &report.first_broken {
        None => writeln!(
            out,
            "{:indent$}verified {} events in {} streams: the log is intact",
            "", report.events, report.streams
        ),
        Some(broken) => {
            writeln!(
                out,
                "{:indent$}the log is BROKEN: {} events in {} streams verified before the first broken event",
                "", report.events, report.streams
            )?;
            // Position 0 / nil id: the break is events missing from a stream's end.
            let position = if broken.global_position == 0 {
                "-".to_owned()
            } else {
                broken.global_position.to_string()
            };
            let event_id = if broken.event_id.is_nil() {
                "-".to_owned()
            } else {
                broken.event_id.to_string()
            };
            kv(out, indent + 2, "global position", position)?;
            kv(out, indent + 2, "customer", broken.customer_id)?;
            kv(out, indent + 2, "stream version", broken.stream_version)?;
            kv(out, indent + 2, "event id", event_id)?;
            kv(out, indent + 2, "reason", &broken.reason)
        }
    }
}
