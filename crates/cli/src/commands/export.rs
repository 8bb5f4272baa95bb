//! `idledger export <CUSTOMER_ID> [--format json|csv] [--out FILE]`: everything about a
//! customer for the data subject (access and portability), as `GET
//! /v1/customers/{id}/export` gives it. Logged as a disclosure to the subject.

use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use idledger_api::export::ExportView;
use idledger_app::{App, ReadError};
use idledger_domain::ids::CustomerId;

use crate::config::Settings;
use crate::store::{self, KeyUse};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON document (the API's `ExportView`).
    Json,
    /// A zip of CSV files, one per part.
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The customer (a UUIDv7).
    #[arg(value_name = "CUSTOMER_ID", value_parser = crate::cli::parse_customer_id)]
    pub customer: CustomerId,
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// Write to this file (created with owner-only permissions; an existing file is never
    /// overwritten) instead of standard output. Required for `csv` on a terminal.
    #[arg(long, value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

pub async fn run(
    settings: &Settings,
    args: &ExportArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    refuse_existing(args.out.as_deref())?;
    if args.format == Format::Csv && args.out.is_none() && std::io::stdout().is_terminal() {
        bail!("a csv export is a zip file: give --out FILE, or redirect standard output");
    }
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let export = match app.export(args.customer, None).await {
        Ok(export) => export,
        Err(ReadError::NotFound(customer)) => bail!(
            "customer {customer} is not in this store ({})",
            settings.database
        ),
        Err(e) => return Err(e.into()),
    };
    let view = ExportView::new(export, app.ledger().policy());
    let bytes = match args.format {
        Format::Json => {
            let mut json = serde_json::to_vec_pretty(&view)?;
            json.push(b'\n');
            json
        }
        Format::Csv => view.to_zip()?,
    };
    match &args.out {
        Some(path) => write_new(path, &bytes)?,
        None => out.write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuses an `--out` that exists before any work is done: an export never replaces a file.
pub(crate) fn refuse_existing(out: Option<&Path>) -> anyhow::Result<()> {
    if let Some(path) = out
        && path.exists()
    {
        bail!(
            "{} exists; an export is never written over a file (choose another --out)",
            path.display()
        );
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path`, whole or not at all: a temporary file beside it,
/// readable by its owner only, renamed into place once written and synced.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| -> std::io::Result<()> {
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // Hard-link then unlink: unlike a rename, never replaces a file created meanwhile.
        std::fs::hard_link(&tmp, path)?;
        std::fs::remove_file(&tmp)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("could not write {}", path.display()));
    }
    Ok(())
}
