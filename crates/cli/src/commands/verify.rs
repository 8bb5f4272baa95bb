//! `idledger verify`: check the hash chains and positions of the whole log, and checkpoints
//! against it — the stored ones, or with `--checkpoints FILE` those of an export kept outside
//! the database (optionally pinned to one public key with `--public-key`).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use idledger_store::VerifyReport;
use idledger_store::checkpoints::{CheckpointExport, EXPORT_FORMAT, kid_of};

use crate::cli::VerifyArgs;
use crate::config::Settings;
use crate::progress::Progress;
use crate::render::{hex, kv, time};
use crate::store::{self, KeyUse};

pub async fn run(
    settings: &Settings,
    args: &VerifyArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let pinned = args
        .public_key
        .as_deref()
        .map(parse_public_key)
        .transpose()?;
    let export = args.checkpoints.as_deref().map(read_export).transpose()?;
    let ledger = store::open_ledger(settings, KeyUse::NotNeeded).await?;
    let progress = Progress::new("verifying");
    let report = match &export {
        Some(export) => {
            ledger
                .verify_checkpoints(export, pinned.as_deref(), &|done, total| {
                    progress.update(done, total)
                })
                .await?
        }
        None => {
            ledger
                .verify(&|done, total| progress.update(done, total))
                .await?
        }
    };
    progress.finish();
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_text(out, 0, &report)?;
        if let Some(export) = &export {
            // What the checkpoints were checked with, for an auditor to compare with the key
            // they were given.
            match &pinned {
                Some(public) => writeln!(
                    out,
                    "checkpoints checked with the pinned key {} ({})",
                    kid_of(public),
                    hex(public)
                )?,
                None => {
                    for key in &export.keys {
                        writeln!(
                            out,
                            "checkpoints checked with the file's key {} ({} {}); pin it with --public-key",
                            key.kid,
                            key.algorithm,
                            hex(&key.public_key)
                        )?;
                    }
                }
            }
        }
    }
    Ok(if report.intact() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn parse_public_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() == 32 && text.len() == 64);
    bytes.context("--public-key must be an Ed25519 public key: 64 hex characters")
}

fn read_export(path: &std::path::Path) -> anyhow::Result<CheckpointExport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the checkpoints file {}", path.display()))?;
    let export: CheckpointExport = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a checkpoints file (see `idledger checkpoint export`)",
            path.display()
        )
    })?;
    if export.format != EXPORT_FORMAT {
        bail!(
            "{} is of format '{}', not {EXPORT_FORMAT}",
            path.display(),
            export.format
        );
    }
    Ok(export)
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
        )?,
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
            kv(out, indent + 2, "reason", &broken.reason)?;
        }
    }
    let failed: Vec<_> = report
        .checkpoints
        .iter()
        .filter(|c| c.failure.is_some())
        .collect();
    let total = report.checkpoints.len();
    if failed.is_empty() {
        if total > 0 {
            let last = report.checkpoints.iter().map(|c| c.position).max();
            writeln!(
                out,
                "{:indent$}{total} {} the log up to position {} is the one signed",
                "",
                if total == 1 {
                    "checkpoint holds:"
                } else {
                    "checkpoints hold:"
                },
                last.unwrap_or_default()
            )?;
        } else {
            writeln!(out, "{:indent$}no checkpoints to check", "")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:indent$}CHECKPOINTS FAIL: {} of {total} do not hold",
        "",
        failed.len()
    )?;
    for check in failed {
        if let Some(failure) = &check.failure {
            writeln!(
                out,
                "{:indent$}  checkpoint at position {} (signed {} by key {}): {failure}",
                "",
                check.position,
                time(check.signed_at),
                check.kid
            )?;
        }
    }
    Ok(())
}
