//! `idledger migrate`: open the database and apply pending migrations.

use std::io::Write;
use std::process::ExitCode;

use crate::config::Settings;
use crate::render::kv;
use crate::store;

pub async fn run(settings: &Settings, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let head = store::open_store(settings)
        .await?
        .log()
        .head_position()
        .await?;
    kv(out, 0, "database", &settings.database)?;
    kv(out, 0, "events", head)?;
    writeln!(out, "migrations applied")?;
    Ok(ExitCode::SUCCESS)
}
