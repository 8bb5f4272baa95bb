//! `idledger keys rewrap`: moves every data key and the derivation root from the current
//! master key (the usual settings) to a new one, in batches, resumably; at the end only the
//! new key opens the store. The new key comes from a file or the environment, never the
//! command line (which other users can see).
//!
//! `idledger keys list|rotate|remove`: the signing keys (`jws`: decision tokens and consent
//! receipts; `checkpoint`: signed checkpoints of the log).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use idledger_store::jws::TOKEN_PURPOSE;
use idledger_store::keys::DEFAULT_REWRAP_BATCH;
use idledger_store::signing::CHECKPOINT_PURPOSE;
use idledger_store::{KeyEncryptionKey as _, MasterKey, RewrapOptions};

use crate::config::Settings;
use crate::progress::Progress;
use crate::render::{hex, time};
use crate::store::{self, KeyUse};

/// The environment variable that may hold the new master key (64 hex characters).
pub const NEW_MASTER_KEY_ENV: &str = "IDLEDGER__NEW_MASTER_KEY";

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every data key (and the derivation root) under a new master key. Stop every
    /// other idledger process first. Resumable: after a crash, run it again. Once finished,
    /// configure the new key: the old one is refused from then on.
    Rewrap(RewrapArgs),
    /// List the signing keys: id, purpose, public key, created, retired (or in use).
    List(ListArgs),
    /// Retire the signing key in use for a purpose and put a new one in use (one
    /// transaction); prints the new key's id. The retired key still verifies until removed.
    /// Running servers sign with the new key within 30 seconds.
    Rotate(RotateArgs),
    /// Delete a retired signing key: what it signed no longer verifies. Refused for the key
    /// in use and for a key that signed checkpoints.
    Remove(RemoveArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the keys as JSON (public halves only).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// Whose key: `jws` (decision tokens and consent receipts) or `checkpoint`.
    #[arg(long, default_value = TOKEN_PURPOSE, value_parser = [TOKEN_PURPOSE, CHECKPOINT_PURPOSE])]
    pub purpose: String,
}

#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The key's id (16 hex characters, as `keys list` shows it).
    pub kid: String,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    /// File holding the new master key (64 hex characters); or set IDLEDGER__NEW_MASTER_KEY.
    #[arg(long, value_name = "PATH")]
    pub new_key_file: Option<PathBuf>,
    /// Count what would be re-wrapped; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Data keys re-wrapped per transaction.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REWRAP_BATCH)]
    pub batch_size: u32,
    /// Stop after this many batches, unfinished (to test the resumption).
    #[arg(long, value_name = "N", hide = true)]
    pub max_batches: Option<u64>,
}

pub async fn run(
    settings: &Settings,
    command: &KeysCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Rewrap(args) => rewrap(settings, args, out).await,
        KeysCommand::List(args) => list(settings, args, out).await,
        KeysCommand::Rotate(args) => rotate(settings, args, out).await,
        KeysCommand::Remove(args) => remove(settings, args, out).await,
    }
}

async fn list(
    settings: &Settings,
    args: &ListArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // Public halves only: no master key needed.
    let ledger = store::open_ledger(settings, KeyUse::NotNeeded).await?;
    let keys = ledger.signing_keys().list(None).await?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &keys)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if keys.is_empty() {
        writeln!(
            out,
            "no signing keys yet: each purpose's is created on first use"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<16}  {:<10}  {:<7}  {:<27}  {:<27}  public key",
        "kid", "purpose", "alg", "created", "retired"
    )?;
    for k in &keys {
        writeln!(
            out,
            "{:<16}  {:<10}  {:<7}  {:<27}  {:<27}  {}",
            k.kid,
            k.purpose,
            k.algorithm,
            time(k.created_at),
            k.retired_at.map_or_else(|| "in use".to_owned(), time),
            hex(&k.public_key)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn rotate(
    settings: &Settings,
    args: &RotateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // The new private key is sealed under a key derived from the master key's root.
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let kid = ledger
        .signing_keys()
        .rotate(&args.purpose)
        .await
        .with_context(|| format!("cannot rotate the {} signing key", args.purpose))?;
    writeln!(out, "{kid}")?;
    eprintln!(
        "the new {} key {kid} is in use; a retired key still verifies until `idledger keys remove KID`",
        args.purpose
    );
    Ok(ExitCode::SUCCESS)
}

async fn remove(
    settings: &Settings,
    args: &RemoveArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::NotNeeded).await?;
    ledger.signing_keys().remove(&args.kid).await?;
    writeln!(out, "removed the signing key {}", args.kid)?;
    Ok(ExitCode::SUCCESS)
}

async fn rewrap(
    settings: &Settings,
    args: &RewrapArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let new = new_key(args)?;
    let (store, current) = store::open_with_key(settings, store::Rewrap::Allowed).await?;
    if new.key_id() == current.key_id() {
        anyhow::bail!("the new master key is the current one: nothing to rewrap");
    }
    let keys = store.keys();
    if args.dry_run {
        let plan = keys.plan_rewrap(&new).await?;
        writeln!(
            out,
            "would re-wrap {} data keys{} from master key {} to {}",
            plan.data_keys,
            if plan.root {
                " and the derivation root"
            } else {
                ""
            },
            current.key_id(),
            new.key_id()
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let progress = Progress::counter("rewrap", "data keys");
    let options = RewrapOptions {
        batch_size: args.batch_size,
        max_batches: args.max_batches,
    };
    let report = keys
        .rewrap(&current, &new, options, |moved| progress.set(moved))
        .await
        .context("the rewrap stopped; every key is readable with the key its id names: run it again to finish")?;
    progress.finish();
    writeln!(
        out,
        "re-wrapped {} data keys{} from master key {} to {}",
        report.data_keys_moved,
        if report.root_moved {
            " and the derivation root"
        } else {
            ""
        },
        current.key_id(),
        new.key_id()
    )?;
    if report.finished {
        writeln!(
            out,
            "finished: configure the new master key; the old one is refused from now on"
        )?;
        Ok(ExitCode::SUCCESS)
    } else {
        writeln!(
            out,
            "unfinished: {} data keys left; run `idledger keys rewrap` again to finish",
            report.remaining
        )?;
        Ok(ExitCode::FAILURE)
    }
}

fn new_key(args: &RewrapArgs) -> anyhow::Result<MasterKey> {
    if let Some(path) = &args.new_key_file {
        return store::read_key_file(path)?
            .with_context(|| format!("the new master key file {} does not exist", path.display()));
    }
    match std::env::var(NEW_MASTER_KEY_ENV) {
        Ok(hex) => MasterKey::from_hex(&hex)
            .with_context(|| format!("{NEW_MASTER_KEY_ENV} does not hold a valid master key")),
        Err(_) => anyhow::bail!(
            "no new master key: give --new-key-file PATH or set {NEW_MASTER_KEY_ENV} \
             (never the key on the command line)"
        ),
    }
}
