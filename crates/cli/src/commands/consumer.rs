//! `idledger consumer add|list|disable`: the registry of systems that receive deliveries
//! (CRM, CDP…) over NATS, signed webhooks or the HTTP change feed. The same registry as
//! `POST /v1/consumers`; the relay follows it. A webhook's secret is read from a file or the
//! environment, never from the command line (other users can see command lines), and never
//! printed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use chrono::Utc;
use clap::{Args, Subcommand};
use idledger_api::views::ConsumerView;
use idledger_domain::ids::Purpose;
use idledger_store::Deliveries;
use idledger_store::delivery::{
    Channel, ChannelKind, Consumer, ConsumerId, FieldSelector, NewConsumer, RegisterError, StartAt,
    Webhook, WebhookSecret,
};

use crate::config::Settings;
use crate::render::{KEY_WIDTH, time};
use crate::store;

/// Where a webhook secret may be given instead of `--secret-file`.
pub const WEBHOOK_SECRET_ENV: &str = "IDLEDGER__WEBHOOK_SECRET";

#[derive(Debug, Subcommand)]
pub enum ConsumerCommand {
    /// Register a consumer. It receives a customer's data only while the basis for every one
    /// of its purposes holds. Give it a token with `idledger token create --role consumer
    /// --consumer <ID>` (the feed and HTTP acks need one).
    Add(AddArgs),
    /// List consumers, disabled ones included (never webhook secrets).
    List(ListArgs),
    /// Stop deliveries to a consumer; its position, handoff log and state are kept.
    Disable(DisableArgs),
    /// Print the key the consumer computes `value_hash` with (HMAC-SHA256 of a value's JSON
    /// form as delivered; see docs/contracts.md). Needs the master key. Hand it to the
    /// consumer's operators as a secret; the consumer can also read it with its own token
    /// from `GET /v1/consumers/<ID>/hash-key`. With --ack, the key it signs its NATS
    /// acknowledgements with instead.
    HashKey(HashKeyArgs),
    /// Write nats-server accounts for idledger and every NATS consumer: each consumer may
    /// read only its own deliveries (from the durable named after it, with the inbox prefix
    /// `_INBOX_<ID>`) and publish only its own acks; only idledger publishes deliveries.
    /// Passwords are read by nats-server from `NATS_PASSWORD_<USER>` variables. See
    /// deploy/nats/.
    NatsConfig(NatsConfigArgs),
}

#[derive(Debug, Args)]
pub struct NatsConfigArgs {
    /// Write to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The consumer's id: lowercase a-z, digits, '_' and '-', starting with a letter (it is a
    /// NATS subject token), e.g. crm.
    #[arg(long, value_name = "ID", value_parser = parse_consumer_id)]
    pub id: ConsumerId,
    /// How it receives messages: nats (JetStream, published by the relay), webhook (signed
    /// POSTs to --url) or feed (it pulls GET /v1/feed).
    #[arg(long, value_name = "CHANNEL", value_parser = parse_channel)]
    pub channel: ChannelKind,
    /// The webhook endpoint (http:// or https://); webhook only.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// File holding the webhook's signing secret (16..=256 visible ASCII characters; a
    /// trailing newline is ignored). Or set IDLEDGER__WEBHOOK_SECRET. Webhook only.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Fields it receives, comma-separated: fields (email, name.given), families
    /// (consent.*, preferences.*) or * for all.
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true, value_parser = parse_selector)]
    pub fields: Vec<FieldSelector>,
    /// The purposes it processes data for, comma-separated (e.g. marketing,analytics).
    #[arg(long, value_name = "LIST", value_delimiter = ',', required = true, value_parser = parse_purpose)]
    pub purposes: Vec<Purpose>,
    /// beginning: everything it is entitled to, from the first event (an initial load); now:
    /// only what happens from here on. The feed ignores it (its consumer keeps its position).
    #[arg(long, value_name = "WHEN", default_value = "beginning", value_parser = parse_start)]
    pub start_at: StartAt,
    /// Seconds a change may stay unacknowledged before reconciliation reports it as
    /// undelivered or stale (at most 30 days).
    #[arg(long, value_name = "SECS", default_value_t = idledger_store::delivery::DEFAULT_SLA_SECS)]
    pub sla_secs: u64,
    /// Show it its own stable alias of each customer instead of the customer's id (subjects,
    /// envelopes, the feed); its acks and snapshots name customers by alias.
    #[arg(long)]
    pub pseudonymous: bool,
    #[command(flatten)]
    pub location: super::processor::LocationArgs,
    /// Print the consumer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print one JSON consumer per line (NDJSON) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DisableArgs {
    /// The consumer's id.
    #[arg(value_name = "ID", value_parser = parse_consumer_id)]
    pub id: ConsumerId,
    /// Print the consumer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HashKeyArgs {
    /// The consumer's id.
    #[arg(value_name = "ID", value_parser = parse_consumer_id)]
    pub id: ConsumerId,
    /// Print the ack signing key instead of the value-hash key.
    #[arg(long, conflicts_with = "json")]
    pub ack: bool,
    /// Print {consumer_id, algorithm, key, ack_key} as JSON instead of one key alone.
    #[arg(long)]
    pub json: bool,
}

fn parse_consumer_id(raw: &str) -> Result<ConsumerId, String> {
    ConsumerId::parse(raw).map_err(|e| e.to_string())
}

fn parse_channel(raw: &str) -> Result<ChannelKind, String> {
    ChannelKind::parse(raw).map_err(|e| e.to_string())
}

pub(crate) fn parse_selector(raw: &str) -> Result<FieldSelector, String> {
    FieldSelector::parse(raw.trim()).map_err(|e| e.to_string())
}

pub(crate) fn parse_purpose(raw: &str) -> Result<Purpose, String> {
    Purpose::parse(raw.trim()).map_err(|e| e.to_string())
}

fn parse_start(raw: &str) -> Result<StartAt, String> {
    StartAt::parse(raw).map_err(|e| e.to_string())
}

pub async fn run(
    settings: &Settings,
    command: &ConsumerCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    match command {
        ConsumerCommand::Add(args) => {
            let deliveries = registry(settings).await?;
            add(&deliveries, args, |name| std::env::var(name).ok(), out).await
        }
        ConsumerCommand::List(args) => list(&registry(settings).await?, args, out).await,
        ConsumerCommand::Disable(args) => disable(&registry(settings).await?, args, out).await,
        ConsumerCommand::HashKey(args) => hash_key(settings, args, out).await,
        ConsumerCommand::NatsConfig(args) => nats_config(settings, args, out).await,
    }
}

/// The registry holds no personal data: no master key is needed.
async fn registry(settings: &Settings) -> anyhow::Result<Deliveries> {
    Ok(store::open_store(settings).await?.deliveries())
}

async fn nats_config(
    settings: &Settings,
    args: &NatsConfigArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let consumers: Vec<ConsumerId> = registry(settings)
        .await?
        .consumers()
        .await?
        .into_iter()
        .filter(|c| matches!(c.channel, Channel::Nats))
        .map(|c| c.id)
        .collect();
    let layout = crate::commands::serve::nats_layout(settings, String::new());
    let text = idledger_relay::access::server_accounts(&layout, &consumers)
        .map_err(|e| anyhow::anyhow!("cannot write NATS accounts: {e}"))?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            writeln!(
                out,
                "wrote NATS accounts for idledger and {} consumer(s) to {}",
                consumers.len(),
                path.display()
            )?;
        }
        None => out.write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The key is derived from the master key, so this one command of the registry needs it.
async fn hash_key(
    settings: &Settings,
    args: &HashKeyArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, store::KeyUse::Required).await?;
    if ledger
        .store()
        .deliveries()
        .consumer(&args.id)
        .await?
        .is_none()
    {
        bail!("no consumer '{}' (see `idledger consumer list`)", args.id);
    }
    let key = ledger.hash_key(&args.id).to_hex();
    let ack_key = ledger.ack_key(&args.id).to_hex();
    if args.json {
        let view = serde_json::json!({
            "consumer_id": args.id, "algorithm": "hmac-sha256", "key": key, "ack_key": ack_key,
        });
        writeln!(out, "{view}")?;
    } else if args.ack {
        writeln!(out, "{ack_key}")?;
    } else {
        writeln!(out, "{key}")?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn add(
    deliveries: &Deliveries,
    args: &AddArgs,
    env: impl Fn(&str) -> Option<String>,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // Flags first, so the message names them; the rule itself is `Channel::new`'s.
    let webhook = match &args.url {
        Some(url) if args.channel == ChannelKind::Webhook => {
            Some(Webhook::new(url, webhook_secret(args, env)?)?)
        }
        None if args.channel == ChannelKind::Webhook => {
            bail!("--channel webhook needs --url <URL>")
        }
        _ if args.url.is_some() || args.secret_file.is_some() => bail!(
            "--url and --secret-file are for --channel webhook, not {}",
            args.channel.as_str()
        ),
        _ => None,
    };
    let channel = Channel::new(args.channel, webhook)?;
    let mut new = NewConsumer::new(
        args.id.clone(),
        channel,
        args.fields.clone(),
        args.purposes.clone(),
        args.start_at,
    )?
    .with_sla(args.sla_secs)?;
    if args.pseudonymous {
        new = new.pseudonymous();
    }
    new = new.located(args.location.location()?);
    let consumer = match deliveries.register_consumer(new, Utc::now()).await {
        Ok(consumer) => consumer,
        Err(RegisterError::Exists(id)) => {
            bail!("a consumer '{id}' is already registered (see `idledger consumer list`)")
        }
        Err(RegisterError::Store(e)) => return Err(e.into()),
    };
    let checkpoint = deliveries.checkpoint(&consumer.id).await?;
    if args.json {
        print_json(out, &consumer, checkpoint, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "registered consumer {} ({})",
        consumer.id,
        consumer.channel.kind().as_str()
    )?;
    describe(out, &consumer, checkpoint)?;
    writeln!(
        out,
        "its token: idledger token create --role consumer --consumer {}",
        consumer.id
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The webhook secret from `--secret-file`, else the environment.
fn webhook_secret(
    args: &AddArgs,
    env: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<WebhookSecret> {
    let raw = match &args.secret_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the webhook secret file {}", path.display()))?,
        None => env(WEBHOOK_SECRET_ENV).with_context(|| {
            format!(
                "--channel webhook needs a signing secret: --secret-file <PATH> or {WEBHOOK_SECRET_ENV} (never on the command line)"
            )
        })?,
    };
    Ok(WebhookSecret::parse(raw.trim_end_matches(['\n', '\r']))?)
}

async fn list(
    deliveries: &Deliveries,
    args: &ListArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let consumers = deliveries.consumers().await?;
    let mut rows = Vec::with_capacity(consumers.len());
    for consumer in consumers {
        let checkpoint = deliveries.checkpoint(&consumer.id).await?;
        rows.push((consumer, checkpoint));
    }
    if args.json {
        for (consumer, checkpoint) in &rows {
            print_json(out, consumer, *checkpoint, false)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        writeln!(
            out,
            "no consumers; register one with `idledger consumer add --id … --channel …`"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<20}  {:<7}  {:<8}  {:<10}  {:<24}  {:<24}  endpoint",
        "id", "channel", "state", "position", "fields", "purposes"
    )?;
    for (consumer, checkpoint) in &rows {
        let view = ConsumerView::new(consumer, *checkpoint);
        writeln!(
            out,
            "{:<20}  {:<7}  {:<8}  {:<10}  {:<24}  {:<24}  {}",
            view.id,
            view.channel,
            if view.enabled { "enabled" } else { "disabled" },
            view.checkpoint
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            view.fields.join(","),
            view.purposes.join(","),
            view.webhook_url.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn disable(
    deliveries: &Deliveries,
    args: &DisableArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let Some(before) = deliveries.consumer(&args.id).await? else {
        bail!("no consumer '{}' (see `idledger consumer list`)", args.id);
    };
    deliveries.disable_consumer(&args.id, Utc::now()).await?;
    let Some(consumer) = deliveries.consumer(&args.id).await? else {
        bail!("consumer '{}' disappeared", args.id);
    };
    let checkpoint = deliveries.checkpoint(&consumer.id).await?;
    if args.json {
        print_json(out, &consumer, checkpoint, true)?;
        return Ok(ExitCode::SUCCESS);
    }
    match (before.disabled_at, consumer.disabled_at) {
        (Some(at), _) => writeln!(
            out,
            "consumer {} was already disabled at {}",
            consumer.id,
            time(at)
        )?,
        (None, Some(at)) => writeln!(
            out,
            "disabled consumer {} at {}: deliveries stop (the relay's within its registry refresh, the feed's at once)",
            consumer.id,
            time(at)
        )?,
        (None, None) => bail!("consumer '{}' could not be disabled", consumer.id),
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(
    out: &mut dyn Write,
    consumer: &Consumer,
    checkpoint: Option<u64>,
) -> std::io::Result<()> {
    let view = ConsumerView::new(consumer, checkpoint);
    let kv =
        |out: &mut dyn Write, key: &str, value: &str| writeln!(out, "  {key:<KEY_WIDTH$} {value}");
    kv(out, "fields", &view.fields.join(", "))?;
    kv(out, "purposes", &view.purposes.join(", "))?;
    kv(out, "ack SLA", &format!("{} s", view.sla_secs))?;
    if view.pseudonymous {
        kv(out, "customers", "by its own aliases, never their ids")?;
    }
    if let Some(region) = &view.region {
        let basis = view.transfer_basis.as_deref().unwrap_or("none");
        kv(
            out,
            "processes in",
            &format!("{region} (transfer basis: {basis})"),
        )?;
    }
    if let Some(url) = &view.webhook_url {
        kv(out, "endpoint", url)?;
        kv(out, "secret", "stored (never shown)")?;
    }
    match view.checkpoint {
        Some(0) => kv(out, "starts at", "the beginning of the log")?,
        Some(p) => kv(out, "starts at", &format!("log position {p} (now)"))?,
        None => kv(
            out,
            "position",
            "kept by the consumer (GET /v1/feed?after=…)",
        )?,
    }
    Ok(())
}

fn print_json(
    out: &mut dyn Write,
    consumer: &Consumer,
    checkpoint: Option<u64>,
    pretty: bool,
) -> anyhow::Result<()> {
    let view = ConsumerView::new(consumer, checkpoint);
    if pretty {
        serde_json::to_writer_pretty(&mut *out, &view)?;
    } else {
        serde_json::to_writer(&mut *out, &view)?;
    }
    writeln!(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(subcommand)]
        command: ConsumerCommand,
    }

    #[test]
    fn bad_ids_fields_purposes_and_a_secret_on_the_command_line_are_usage_errors() {
        let parse = |args: &[&str]| {
            Probe::try_parse_from(args)
                .map(|_| ())
                .map_err(|e| e.kind())
        };
        let ok = [
            "x",
            "add",
            "--id",
            "crm",
            "--channel",
            "nats",
            "--fields",
            "email,consent.*",
            "--purposes",
            "service",
        ];
        assert_eq!(parse(&ok), Ok(()));
        let with = |i: usize, value: &'static str| {
            let mut args = ok.to_vec();
            args[i] = value;
            args
        };
        let invalid = clap::error::ErrorKind::ValueValidation;
        assert_eq!(parse(&with(3, "CRM")), Err(invalid));
        assert_eq!(parse(&with(5, "smtp")), Err(invalid));
        assert_eq!(parse(&with(7, "email,shoe_size")), Err(invalid));
        assert_eq!(parse(&with(9, "Not A Purpose")), Err(invalid));
        let mut secret = ok.to_vec();
        secret.extend(["--secret", "whsec-0123456789abcdef"]);
        assert_eq!(parse(&secret), Err(clap::error::ErrorKind::UnknownArgument));
        let mut start = ok.to_vec();
        start.extend(["--start-at", "yesterday"]);
        assert_eq!(parse(&start), Err(invalid));
    }
}
