//! `idledger token create|list|revoke`: API tokens, stored only as hashes. A token's secret is
//! printed once, when it is created.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use idledger_domain::ids::SourceId;
use idledger_domain::policy::RESERVED_SOURCES;
use idledger_store::{Role, Tokens};

use crate::cli::{JsonArg, TokenCommand, TokenCreateArgs, TokenRevokeArgs, TokenRotateArgs};
use crate::config::Settings;
use crate::render::time;
use crate::store;

pub async fn run(
    settings: &Settings,
    command: &TokenCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // Tokens are not personal data: no master key is needed to manage them.
    let tokens = store::open_store(settings).await?.tokens();
    match command {
        TokenCommand::Create(args) => create(&tokens, args, out).await,
        TokenCommand::List(args) => list(&tokens, args, out).await,
        TokenCommand::Revoke(args) => revoke(&tokens, args, out).await,
        TokenCommand::Rotate(args) => rotate(&tokens, args, out).await,
    }
}

async fn create(
    tokens: &Tokens,
    args: &TokenCreateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let subject = match (args.role, &args.source, &args.consumer) {
        (Role::Source, Some(source), None) => {
            let id = SourceId::parse(source)?;
            if RESERVED_SOURCES.contains(&id.as_str()) {
                bail!(
                    "'{id}' is reserved for idledger's own stewards and administrators; use --role {id} instead"
                );
            }
            Some(id.as_str().to_owned())
        }
        (Role::Consumer, None, Some(consumer)) => {
            Some(SourceId::parse(consumer)?.as_str().to_owned())
        }
        (Role::Source | Role::Consumer, _, _) => {
            bail!("--role source takes --source <ID>; --role consumer takes --consumer <ID>")
        }
        (_, None, None) => None,
        (role, _, _) => bail!("{role} tokens are not bound to a system: drop --source/--consumer"),
    };
    let label = args.label.clone().unwrap_or_else(|| match &subject {
        Some(s) => format!("{} {s}", args.role),
        None => args.role.to_string(),
    });
    let expires_at = args.expires_in.map(|d| chrono::Utc::now() + d);
    let issued = tokens
        .create_expiring(args.role, subject.as_deref(), &label, expires_at)
        .await?;
    print_issued(&issued, args.json, out)
}

/// Prints a new token: its secret (once) on stdout, what it is on stderr; or both as JSON.
fn print_issued(
    issued: &idledger_store::IssuedToken,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let label = &issued.record.label;
    if json {
        serde_json::to_writer_pretty(
            &mut *out,
            &serde_json::json!({"token": issued.secret, "record": issued.record}),
        )?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", issued.secret)?;
        let _ = writeln!(
            std::io::stderr(),
            "created {} token {} ({label}); it is shown only this once — store it now",
            issued.record.role,
            issued.record.id
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(tokens: &Tokens, args: &JsonArg, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let all = tokens.list().await?;
    if args.json {
        for token in &all {
            serde_json::to_writer(&mut *out, token)?;
            writeln!(out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        writeln!(
            out,
            "no tokens; create one with `idledger token create --role …`"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<8}  {:<16}  {:<27}  {:<27}  {:<27}  {:<27}  label",
        "id", "role", "speaks for", "created", "expires", "last used", "revoked"
    )?;
    let never = || "-".to_owned();
    for t in &all {
        writeln!(
            out,
            "{:<36}  {:<8}  {:<16}  {:<27}  {:<27}  {:<27}  {:<27}  {}",
            t.id,
            t.role.as_str(),
            t.subject.as_deref().unwrap_or("-"),
            time(t.created_at),
            t.expires_at.map_or_else(never, time),
            t.last_used_at.map_or_else(never, time),
            t.revoked_at.map_or_else(never, time),
            t.label
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(
    tokens: &Tokens,
    args: &TokenRevokeArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    if tokens.revoke(args.id).await? {
        writeln!(out, "revoked token {}", args.id)?;
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("no live token {} (unknown, or already revoked)", args.id)
    }
}

async fn rotate(
    tokens: &Tokens,
    args: &TokenRotateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let Some(issued) = tokens.rotate(args.id, args.overlap).await? else {
        let _ = writeln!(
            std::io::stderr(),
            "no live token {}: nothing to rotate (see `idledger token list`)",
            args.id
        );
        return Ok(ExitCode::FAILURE);
    };
    let _ = writeln!(
        std::io::stderr(),
        "token {} keeps working until {}",
        args.id,
        time(chrono::Utc::now() + args.overlap)
    );
    print_issued(&issued, args.json, out)
}
