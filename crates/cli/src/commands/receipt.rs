//! `idledger receipt verify FILE|-`: checks a compact JWS — a decision token or a consent
//! receipt — against a public key set: a saved one (`--jwks FILE`), a server's
//! (`--server URL`, which fetches `URL/.well-known/jwks.json`), or the configured store's
//! `jws` keys. Prints the key id, the type and the claims; exits 1 when it does not verify
//! or has expired.

use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use idledger_store::checkpoints::PublicSigningKey;
use idledger_store::jws::{self, TOKEN_PURPOSE};

use crate::config::Settings;
use crate::store;

/// How long fetching a server's key set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Subcommand)]
pub enum ReceiptCommand {
    /// Verify a decision token or consent receipt (compact JWS): signature, key and expiry.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The file holding the token, or `-` for standard input.
    #[arg(value_name = "FILE|-")]
    pub token: PathBuf,
    /// A saved public key set (`/.well-known/jwks.json`) to verify with.
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    pub jwks: Option<PathBuf>,
    /// A server whose `/.well-known/jwks.json` to verify with, e.g. https://idledger.example.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

pub async fn run(
    settings: &Settings,
    command: &ReceiptCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ReceiptCommand::Verify(args) = command;
    let token = read_token(&args.token)?;
    let keys = keys(settings, args).await?;
    let verified = jws::verify_compact_at(&token, &keys, Utc::now())
        .map_err(|e| anyhow::anyhow!("the token is not valid: {e}"))?;
    crate::render::kv(out, 0, "valid", "signature verified, not expired")?;
    crate::render::kv(out, 0, "key id", &verified.kid)?;
    crate::render::kv(out, 0, "type", crate::render::opt(verified.typ.as_deref()))?;
    writeln!(out, "claims")?;
    serde_json::to_writer_pretty(&mut *out, &verified.claims)?;
    writeln!(out)?;
    Ok(ExitCode::SUCCESS)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the token from standard input")?;
    } else {
        text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the token file {}", path.display()))?;
    }
    let token = text.trim();
    if token.is_empty() {
        bail!("no token: the input is empty");
    }
    Ok(token.to_owned())
}

async fn keys(settings: &Settings, args: &VerifyArgs) -> anyhow::Result<Vec<PublicSigningKey>> {
    let set = if let Some(path) = &args.jwks {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key set {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("the key set {} is not JSON", path.display()))?
    } else if let Some(server) = &args.server {
        let url = format!("{}/.well-known/jwks.json", server.trim_end_matches('/'));
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let response = client
            .get(&url)
            .send()
            .await
            .with_context(|| format!("cannot fetch {url}"))?;
        if !response.status().is_success() {
            bail!("{url} answered {}", response.status());
        }
        response
            .json()
            .await
            .with_context(|| format!("{url} did not answer a JSON key set"))?
    } else {
        // The store's public keys: no master key needed.
        let store = store::open_store(settings).await?;
        return Ok(store.checkpoints().public_keys(TOKEN_PURPOSE).await?);
    };
    jws::keys_from_jwks(&set).context("not a usable key set")
}
