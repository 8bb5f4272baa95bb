//! `idledger token create|list|revoke|rotate`: API tokens, stored only as hashes. A token's
//! secret is printed once, when it is created. The checks are `idledger_app::TokenAdmin`'s,
//! which `/v1/tokens` uses too.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use idledger_api::tokens::{IssuedTokenView, TokenView};
use idledger_app::{NewToken, Revoked, TokenAdmin, TokenError};
use idledger_store::Role;

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
    let tokens = TokenAdmin::new(store::open_store(settings).await?.tokens());
    match command {
        TokenCommand::Create(args) => create(&tokens, args, out).await,
        TokenCommand::List(args) => list(&tokens, args, out).await,
        TokenCommand::Revoke(args) => revoke(&tokens, args, out).await,
        TokenCommand::Rotate(args) => rotate(&tokens, args, out).await,
    }
}

async fn create(
    tokens: &TokenAdmin,
    args: &TokenCreateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let subject = match (args.role, &args.source, &args.consumer, &args.processor) {
        (Role::Source, Some(source), None, None) => Some(source.clone()),
        (Role::Consumer, None, Some(consumer), None) => Some(consumer.clone()),
        (Role::Processor, None, None, Some(processor)) => Some(processor.clone()),
        (Role::Source | Role::Consumer | Role::Processor, _, _, _) => bail!(
            "--role source takes --source <ID>; --role consumer takes --consumer <ID>; --role processor takes --processor <ID>"
        ),
        (_, None, None, None) => None,
        (role, _, _, _) => {
            bail!("{role} tokens are not bound to a system: drop --source/--consumer/--processor")
        }
    };
    let new = NewToken {
        role: args.role,
        subject,
        label: args.label.clone(),
        expires_in: args.expires_in,
        scopes: (!args.scopes.is_empty()).then(|| args.scopes.clone()),
    };
    let issued = tokens.create(&new, chrono::Utc::now()).await?;
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
        // The answer of `POST /v1/tokens`.
        let view = IssuedTokenView {
            token: issued.secret.clone(),
            record: TokenView::new(&issued.record, chrono::Utc::now()),
        };
        serde_json::to_writer_pretty(&mut *out, &view)?;
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

async fn list(
    tokens: &TokenAdmin,
    args: &JsonArg,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let all = tokens.list().await?;
    let now = chrono::Utc::now();
    if args.json {
        for token in &all {
            // One `GET /v1/tokens` item per line.
            serde_json::to_writer(&mut *out, &TokenView::new(token, now))?;
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
        "{:<36}  {:<8}  {:<16}  {:<27}  {:<27}  {:<27}  {:<27}  {:<16}  label",
        "id", "role", "speaks for", "created", "expires", "last used", "revoked", "scopes"
    )?;
    let never = || "-".to_owned();
    for t in &all {
        writeln!(
            out,
            "{:<36}  {:<8}  {:<16}  {:<27}  {:<27}  {:<27}  {:<27}  {:<16}  {}",
            t.id,
            t.role.as_str(),
            t.subject.as_deref().unwrap_or("-"),
            time(t.created_at),
            t.expires_at.map_or_else(never, time),
            t.last_used_at.map_or_else(never, time),
            t.revoked_at.map_or_else(never, time),
            t.scopes.as_ref().map_or_else(
                || "all".to_owned(),
                |s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
            ),
            t.label
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn revoke(
    tokens: &TokenAdmin,
    args: &TokenRevokeArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match tokens.revoke(args.id).await {
        Ok(Revoked { now: true, .. }) => {
            writeln!(out, "revoked token {}", args.id)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(Revoked { now: false, .. }) => {
            bail!("no live token {} (already revoked)", args.id)
        }
        Err(TokenError::Unknown(id)) => bail!("no live token {id} (there is no such token)"),
        Err(e) => Err(e.into()),
    }
}

async fn rotate(
    tokens: &TokenAdmin,
    args: &TokenRotateArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let issued = match tokens.rotate(args.id, args.overlap).await {
        Ok(issued) => issued,
        Err(TokenError::Unknown(_) | TokenError::NotLive(_)) => {
            let _ = writeln!(
                std::io::stderr(),
                "no live token {}: nothing to rotate (unknown, revoked or expired; see `idledger token list`)",
                args.id
            );
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    let _ = writeln!(
        std::io::stderr(),
        "token {} keeps working until {}",
        args.id,
        time(chrono::Utc::now() + args.overlap)
    );
    print_issued(&issued, args.json, out)
}
