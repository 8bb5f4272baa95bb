//! `idledger processor add|list|disable`: systems that ask before they use customers' data
//! (a journey engine, an ad partner) — the registry `POST /v1/processors` keeps. Consumers are
//! processors already; ids are shared, so a processor cannot take a consumer's id.

use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use chrono::Utc;
use clap::{Args, Subcommand};
use idledger_api::decisions::ProcessorView;
use idledger_domain::field::FieldSelector;
use idledger_domain::ids::Purpose;
use idledger_domain::usage::Location;
use idledger_domain::values::{CountryCode, TransferBasis};
use idledger_store::decisions::{
    Decisions, NewProcessor, Processor, ProcessorId, RegisterProcessorError,
};

use crate::commands::consumer::{parse_purpose, parse_selector};
use crate::config::Settings;
use crate::render::time;
use crate::store;

#[derive(Debug, Subcommand)]
pub enum ProcessorCommand {
    /// Register a processor. Give it a token with `idledger token create --role processor
    /// --processor <ID>`; it asks with POST /v1/decisions.
    Add(AddArgs),
    /// List processors, disabled ones included (consumers: `idledger consumer list`).
    List(ListArgs),
    /// Refuse a processor's questions from now on (403 processor_disabled).
    Disable(DisableArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// Its id: lowercase a-z, digits, '_' and '-', starting with a letter; not a consumer's.
    #[arg(long, value_name = "ID", value_parser = parse_id)]
    pub id: ProcessorId,
    /// The purposes it uses data for, comma-separated (e.g. marketing,service).
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true, value_parser = parse_purpose)]
    pub purposes: Vec<Purpose>,
    /// The fields it may use, comma-separated: fields (email, name.given), families
    /// (preferences.*), name.* or * for all.
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true, value_parser = parse_selector)]
    pub fields: Vec<FieldSelector>,
    #[command(flatten)]
    pub location: LocationArgs,
    /// Print the processor as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON processor per line (NDJSON) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// The processor's id.
    #[arg(value_name = "ID")]
    pub id: String,
    /// Print the processor as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_id(raw: &str) -> Result<ProcessorId, String> {
    ProcessorId::parse(raw).map_err(|e| e.to_string())
}

/// Where a processor or consumer processes data (`processor add`, `consumer add`).
#[derive(Debug, Args)]
pub struct LocationArgs {
    /// The country it processes data in (ISO 3166-1, e.g. US). [default: where the
    /// controller does; no transfer]
    #[arg(long, value_name = "CC", value_parser = parse_region)]
    pub region: Option<CountryCode>,
    /// What makes sending data to it lawful when it is in another country than the customer:
    /// adequacy, scc, bcr or derogation (needs --region).
    #[arg(long, value_name = "BASIS", value_parser = parse_basis, requires = "region")]
    pub transfer_basis: Option<TransferBasis>,
}

impl LocationArgs {
    pub fn location(&self) -> anyhow::Result<Location> {
        Ok(Location::new(self.region, self.transfer_basis)?)
    }
}

fn parse_region(raw: &str) -> Result<CountryCode, String> {
    CountryCode::parse(raw.trim()).map_err(|e| e.to_string())
}

fn parse_basis(raw: &str) -> Result<TransferBasis, String> {
    TransferBasis::parse(raw.trim()).map_err(|e| e.to_string())
}

pub async fn run(
    settings: &Settings,
    command: &ProcessorCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // The registry holds no personal data: no master key is needed.
    let decisions = store::open_store(settings).await?.decisions();
    match command {
        ProcessorCommand::Add(args) => add(&decisions, args, out).await,
        ProcessorCommand::List(args) => list(&decisions, args, out).await,
        ProcessorCommand::Disable(args) => disable(&decisions, args, out).await,
    }
}

async fn add(
    decisions: &Decisions,
    args: &AddArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let new = NewProcessor::new(
        args.id.clone(),
        args.purposes.clone(),
        args.fields.clone(),
        args.location.location()?,
    )?;
    let processor = match decisions.register_processor(new, Utc::now()).await {
        Ok(p) => p,
        Err(RegisterProcessorError::Exists(id)) => bail!(
            "'{id}' is already registered, as a processor or a consumer (see `idledger processor list`, `idledger consumer list`)"
        ),
        Err(RegisterProcessorError::Store(e)) => return Err(e.into()),
    };
    if args.json {
        print_json(out, &processor)?;
    } else {
        writeln!(
            out,
            "registered processor {}; give it a token: idledger token create --role processor --processor {}",
            processor.id, processor.id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_json(out: &mut dyn Write, processor: &Processor) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &ProcessorView::from(processor))?;
    writeln!(out)?;
    Ok(())
}

async fn list(
    decisions: &Decisions,
    args: &ListArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let all = decisions.processors().await?;
    if args.json {
        for p in &all {
            print_json(out, p)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        writeln!(
            out,
            "no processors; register one with `idledger processor add --id … --purposes … --fields …`"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<20}  {:<8}  {:<24}  {:<24}  {:<6}  transfer basis",
        "id", "state", "purposes", "fields", "region"
    )?;
    for p in &all {
        let view = ProcessorView::from(p);
        writeln!(
            out,
            "{:<20}  {:<8}  {:<24}  {:<24}  {:<6}  {}",
            view.id,
            if view.disabled_at.is_none() {
                "enabled"
            } else {
                "disabled"
            },
            view.purposes.join(","),
            view.fields.join(","),
            view.region.as_deref().unwrap_or("-"),
            view.transfer_basis.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn disable(
    decisions: &Decisions,
    args: &DisableArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let Some(before) = decisions.processor(&args.id).await? else {
        bail!("no processor '{}' (see `idledger processor list`)", args.id);
    };
    decisions.disable_processor(&args.id, Utc::now()).await?;
    let Some(processor) = decisions.processor(&args.id).await? else {
        bail!("processor '{}' disappeared", args.id);
    };
    if args.json {
        print_json(out, &processor)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (before.disabled_at, processor.disabled_at) {
        (Some(at), _) => writeln!(
            out,
            "processor {} was already disabled at {}",
            processor.id,
            time(at)
        )?,
        (None, Some(at)) => writeln!(
            out,
            "disabled processor {} at {}: its questions are refused from now on",
            processor.id,
            time(at)
        )?,
        (None, None) => bail!("processor '{}' could not be disabled", processor.id),
    }
    Ok(ExitCode::SUCCESS)
}
