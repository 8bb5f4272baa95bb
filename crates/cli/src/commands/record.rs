//! `idledger record <CUSTOMER_ID> [--as-of T]`: the golden record, now or at an instant.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use idledger_api::views::RecordView;
use idledger_domain::scope::ReadScope;

use crate::cli::RecordArgs;
use crate::config::Settings;
use crate::render::time;
use crate::store::{self, KeyUse};
use crate::view;

pub async fn run(
    settings: &Settings,
    args: &RecordArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let state = match args.as_of {
        Some(at) => ledger.state_as_of(args.customer, at).await?,
        None => ledger.state(args.customer).await?,
    };
    let Some(state) = state else {
        match args.as_of {
            Some(at) => bail!(
                "customer {} had no events as of {} in {}",
                args.customer,
                time(at),
                settings.database
            ),
            None => bail!(
                "customer {} is not in this store ({})",
                args.customer,
                settings.database
            ),
        }
    };
    if args.as_of.is_none()
        && let Some(link) = &state.merged_into
    {
        eprintln!(
            "note: customer {} is merged into {} since {} (merge {}): its reads and commands go there; shown as it was kept",
            args.customer,
            link.customer,
            time(link.at),
            link.merge_id
        );
    }
    let at = args.as_of.unwrap_or_else(Utc::now);
    let view = RecordView::new(
        args.customer,
        &state,
        ledger.policy(),
        at,
        args.as_of,
        &ReadScope::Everything,
    );
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
    } else {
        view::write_text(&view, out)?;
    }
    Ok(ExitCode::SUCCESS)
}
