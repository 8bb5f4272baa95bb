//! `idledger checkpoint`: sign a checkpoint of the log now and print it;
//! `idledger checkpoint export [--out FILE]`: every checkpoint with the public keys that
//! signed them, for keeping outside the database (`idledger verify --checkpoints FILE`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use idledger_store::checkpoints::{CHECKPOINT_PURPOSE, kid_of};

use crate::config::Settings;
use crate::render::{hex, kv, time};
use crate::store::{self, KeyUse};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub command: Option<CheckpointCommand>,
    /// Print the checkpoint as JSON (the export's form of one checkpoint).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Write every checkpoint and the public keys that signed them as one JSON document.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Write to this file (an existing file is never overwritten) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub async fn run(
    settings: &Settings,
    args: &CheckpointArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match &args.command {
        None => sign(settings, args.json, out).await,
        Some(CheckpointCommand::Export(export)) => self::export(settings, export, out).await,
    }
}

async fn sign(settings: &Settings, json: bool, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    // The signing key's private half opens with a key derived from the derivation root.
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let Some(signed) = ledger.sign_checkpoint().await? else {
        writeln!(out, "the log is empty: nothing to sign")?;
        return Ok(ExitCode::SUCCESS);
    };
    let checkpoint = &signed.checkpoint;
    if json {
        serde_json::to_writer_pretty(&mut *out, checkpoint)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let keys = ledger
        .store()
        .checkpoints()
        .public_keys(CHECKPOINT_PURPOSE)
        .await?;
    if signed.new {
        writeln!(out, "signed a checkpoint of the log")?;
    } else {
        writeln!(
            out,
            "the log has not grown since its latest checkpoint, which stands"
        )?;
    }
    kv(out, 2, "position", checkpoint.position)?;
    kv(out, 2, "log hash", hex(&checkpoint.log_hash))?;
    kv(out, 2, "signed at", time(checkpoint.signed_at))?;
    kv(out, 2, "key id", &checkpoint.kid)?;
    if let Some(key) = keys.iter().find(|k| k.kid == checkpoint.kid) {
        kv(out, 2, "public key", hex(&key.public_key))?;
    }
    kv(out, 2, "signature", hex(&checkpoint.signature))?;
    Ok(ExitCode::SUCCESS)
}

async fn export(
    settings: &Settings,
    args: &ExportArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    crate::commands::export::refuse_existing(args.out.as_deref())?;
    // Public keys and signatures only: no key needed.
    let store = store::open_store(settings).await?;
    let export = store.checkpoints().export().await?;
    let mut bytes = serde_json::to_vec_pretty(&export)?;
    bytes.push(b'\n');
    match &args.out {
        Some(path) => {
            crate::commands::export::write_new(path, &bytes)?;
            // The fingerprints go to stderr so that stdout stays the document when no file
            // is given; an auditor compares them with the key they were given.
            for key in &export.keys {
                eprintln!(
                    "{} checkpoints, key {} ({}) public key {}",
                    export
                        .checkpoints
                        .iter()
                        .filter(|c| c.kid == key.kid)
                        .count(),
                    kid_of(&key.public_key),
                    key.algorithm,
                    hex(&key.public_key)
                );
            }
        }
        None => out.write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}
