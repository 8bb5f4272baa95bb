//! `idledger history <CUSTOMER_ID> <FIELD>`: every event that touched one field.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;

use crate::cli::HistoryArgs;
use crate::config::Settings;
use crate::render;
use crate::store::{self, KeyUse};

pub async fn run(
    settings: &Settings,
    args: &HistoryArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    if ledger.state(args.customer).await?.is_none() {
        bail!(
            "customer {} is not in this store ({})",
            args.customer,
            settings.database
        );
    }
    let events = ledger.history(args.customer, &args.field).await?;
    if args.json {
        for event in &events {
            serde_json::to_writer(&mut *out, event)?;
            writeln!(out)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if events.is_empty() {
        writeln!(
            out,
            "{} of customer {} was never touched",
            args.field, args.customer
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{} of customer {}: {} events, oldest first",
        args.field,
        args.customer,
        events.len()
    )?;
    for event in &events {
        writeln!(out)?;
        render::event(out, 0, event)?;
    }
    Ok(ExitCode::SUCCESS)
}
