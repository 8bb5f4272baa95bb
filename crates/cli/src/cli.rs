//! The command line: global options and one subcommand per job. Parsing only; the work is in
//! [`crate::commands`].

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::CustomerId;

/// idledger: the event-sourced system of record for customer identity data.
///
/// Every change to a customer's identity data is an immutable, hash-chained, encrypted event
/// with its provenance; this binary runs the store's maintenance and audit jobs.
#[derive(Debug, Parser)]
#[command(
    name = "idledger",
    version,
    propagate_version = true,
    after_long_help = "Configuration: a flag wins over its environment variable, which wins over \
                       the default; the database URL also falls back to DATABASE_URL. The master \
                       key is read from IDLEDGER__MASTER_KEY or a key file, never from a flag, as \
                       command lines are visible to other users.\n\n\
                       Exit status: 0 success; 1 failure, including a log that fails \
                       verification; 2 usage error (unknown option, invalid customer id or \
                       field).\n\n\
                       Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more than warnings."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Where the data lives and which keys and policy apply. Each option also reads an
/// environment variable; a flag on the command line wins over the environment.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Configuration file (TOML; see deploy/idledger.toml). Flags and IDLEDGER__… variables
    /// win over it.
    #[arg(long, global = true, value_name = "FILE", env = "IDLEDGER__CONFIG")]
    pub config: Option<PathBuf>,

    /// Directory of the embedded SQLite database (idledger.db) and the generated master key
    /// (master.key). Created when missing. [default: ./data]
    #[arg(long, global = true, value_name = "DIR", env = "IDLEDGER__DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// Database URL: postgres://user:password@host/db for PostgreSQL, or sqlite://<path>.
    /// Also read from DATABASE_URL. [default: the SQLite file in the data directory]
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "IDLEDGER__DATABASE_URL",
        hide_env_values = true
    )]
    pub database: Option<String>,

    /// File holding the master key (64 hex characters). The key itself may instead be given
    /// in IDLEDGER__MASTER_KEY. [default: <DIR>/master.key, generated for a new SQLite store]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        env = "IDLEDGER__MASTER_KEY_FILE"
    )]
    pub master_key_file: Option<PathBuf>,

    /// Authority policy (TOML): who owns each field and what other sources may do.
    /// [default: the policy that ships in deploy/policy.toml]
    #[arg(long, global = true, value_name = "FILE", env = "IDLEDGER__POLICY")]
    pub policy: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the database and apply pending schema migrations.
    Migrate,
    /// Check every stream's hash chain, the log's positions and the signed checkpoints (the
    /// stored ones, or an export's with --checkpoints); exit 1 if the log was altered.
    Verify(VerifyArgs),
    /// Sign a checkpoint of the log now and print it; `checkpoint export` writes every
    /// checkpoint with the public keys that signed them.
    Checkpoint(crate::commands::checkpoint::CheckpointArgs),
    /// Re-create every projection from the log and report whether it matched the live one.
    Rebuild(RebuildArgs),
    /// Print every event that touched one field of a customer, with full provenance.
    History(HistoryArgs),
    /// Print a customer's golden record: fields, consents and open proposals.
    Record(RecordArgs),
    /// Find customers by email, phone, external id (SYSTEM:ID), full name or household id,
    /// through the blind index; prints their ids, one a line.
    Find(crate::commands::find::FindArgs),
    /// Merge one customer's record into another's as a data steward (the first stays; the
    /// second is kept, frozen, and sends reads and commands to it), or undo it with --undo.
    Merge(crate::commands::merge::MergeArgs),
    /// Households: create one around a customer, join, leave (as a data steward, --as) and
    /// show its members.
    #[command(subcommand)]
    Household(crate::commands::household::HouseholdCommand),
    /// Export everything about a customer for the data subject (access and portability):
    /// the record, every event with provenance, handoffs, disclosures and sync exceptions.
    Export(crate::commands::export::ExportArgs),
    /// Restrict the processing of a customer's data (GDPR Art. 18: kept, nothing delivered),
    /// or lift the restriction with --lift.
    Restrict(crate::commands::restrict::RestrictArgs),
    /// Run a guided scenario on a fresh embedded store, through the HTTP API, and print each
    /// step.
    Demo,
    /// Serve the HTTP API (see /v1/openapi.json) until interrupted (Ctrl-C or SIGTERM).
    Serve(ServeArgs),
    /// Create, list and revoke API tokens. Tokens are stored only as hashes.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Register, list and disable consumers of deliveries (CRM, CDP…).
    #[command(subcommand)]
    Consumer(crate::commands::consumer::ConsumerCommand),
    /// Register, list and disable processors: systems that ask (POST /v1/decisions) before
    /// they use customers' data. Consumers are processors already.
    #[command(subcommand)]
    Processor(crate::commands::processor::ProcessorCommand),
    /// List, show and act on sync exceptions as a data steward (as the API and the steward
    /// page do).
    #[command(subcommand)]
    Exception(crate::commands::exception::ExceptionCommand),
    /// Compare what consumers acknowledged (or a consumer's uploaded export, with --snapshot)
    /// with the record; open sync exceptions for what differs and print the run's report.
    Reconcile(crate::commands::reconcile::ReconcileArgs),
    /// Duplicate candidates: `backfill` opens those of records written before duplicate
    /// detection existed (as the live detection would have), once.
    #[command(subcommand)]
    Duplicates(crate::commands::duplicates::DuplicatesCommand),
    /// Apply the policy's retention: expire values and consent records kept too long and
    /// delete old handoffs, idempotency records, disclosures and reconciliation runs.
    #[command(subcommand)]
    Retention(crate::commands::retention::RetentionCommand),
    /// Manage the keys: re-wrap every data key under a new master key; list, rotate and
    /// remove the signing keys (decision tokens and consent receipts, checkpoints).
    #[command(subcommand)]
    Keys(crate::commands::keys::KeysCommand),
    /// Verify a decision token or consent receipt (a compact JWS) with the public keys.
    #[command(subcommand)]
    Receipt(crate::commands::receipt::ReceiptCommand),
    /// Measure command throughput, commit-to-consumer latency, rebuild and read speed, each
    /// as a ratio to a raw database baseline in the same run (needs PostgreSQL and NATS).
    Bench(crate::commands::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR", env = "IDLEDGER__SERVER__LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Largest request body accepted, in bytes (413 beyond). [default: 262144]
    #[arg(long, value_name = "BYTES", env = "IDLEDGER__SERVER__MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Requests handled at once; more wait their turn. [default: 1024]
    #[arg(long, value_name = "N", env = "IDLEDGER__SERVER__MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// Seconds shutdown waits for in-flight requests. [default: 30]
    #[arg(
        long,
        value_name = "SECS",
        env = "IDLEDGER__SERVER__SHUTDOWN_GRACE_SECS"
    )]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a steward page session lasts without a request. [default: 1800]
    #[arg(long, value_name = "SECS", env = "IDLEDGER__SERVER__SESSION_IDLE_SECS")]
    pub session_idle_secs: Option<u64>,
    /// Seconds a steward page session lasts at most, however busy. [default: 43200]
    #[arg(long, value_name = "SECS", env = "IDLEDGER__SERVER__SESSION_MAX_SECS")]
    pub session_max_secs: Option<u64>,
    /// Mark the steward page's session cookie `Secure`: set it when the page is reached
    /// over HTTPS (a TLS-terminating proxy in front of idledger).
    #[arg(long, env = "IDLEDGER__SERVER__SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Largest snapshot upload accepted, in bytes (413 beyond). [default: 1073741824]
    #[arg(long, value_name = "BYTES", env = "IDLEDGER__SERVER__MAX_UPLOAD_BYTES")]
    pub max_upload_bytes: Option<u64>,
    /// Seconds a client may take to send a request's header, from connecting or from the
    /// previous answer (so also how long an idle kept-alive connection stays open); the
    /// connection is closed then. 1 to 3600. [default: 10]
    #[arg(
        long,
        value_name = "SECS",
        env = "IDLEDGER__SERVER__HEADER_TIMEOUT_SECS"
    )]
    pub header_timeout_secs: Option<u64>,
    /// Seconds a request may take until its answer starts (408 beyond), and a snapshot
    /// upload may send nothing; event streams go on. [default: 30]
    #[arg(
        long,
        value_name = "SECS",
        env = "IDLEDGER__SERVER__REQUEST_TIMEOUT_SECS"
    )]
    pub request_timeout_secs: Option<u64>,
    /// The same for snapshot uploads, retention runs and duplicate backfills. [default: 3600]
    #[arg(
        long,
        value_name = "SECS",
        env = "IDLEDGER__SERVER__LONG_REQUEST_TIMEOUT_SECS"
    )]
    pub long_request_timeout_secs: Option<u64>,
    /// Requests per second one token may make on average (429 beyond); 0: no limit.
    /// [default: 1000]
    #[arg(long, value_name = "N", env = "IDLEDGER__SERVER__TOKEN_RATE")]
    pub token_rate: Option<u32>,
    /// Requests one token may make at once above its rate. [default: 2000]
    #[arg(long, value_name = "N", env = "IDLEDGER__SERVER__TOKEN_BURST")]
    pub token_burst: Option<u32>,
    /// Requests of one token in progress at once (429 beyond); 0: no limit. [default: 64]
    #[arg(long, value_name = "N", env = "IDLEDGER__SERVER__TOKEN_MAX_IN_FLIGHT")]
    pub token_max_in_flight: Option<u32>,
    /// NATS server the relay publishes consumers' changes to (JetStream), e.g.
    /// nats://127.0.0.1:4222. Without it the relay still delivers webhooks.
    #[arg(long, value_name = "URL", env = "IDLEDGER__NATS__URL")]
    pub nats_url: Option<String>,
    /// Serve the API without the delivery relay (e.g. when another instance runs it).
    #[arg(long, env = "IDLEDGER__RELAY__DISABLED")]
    pub no_relay: bool,
    /// The CloudEvents `source` of this instance. [default: urn:idledger:default]
    #[arg(long, value_name = "URI", env = "IDLEDGER__RELAY__SOURCE")]
    pub event_source: Option<String>,
    /// Seconds between scheduled reconciliation runs over every consumer; 0 turns the
    /// schedule off. [default: 3600]
    #[arg(long, value_name = "SECS", env = "IDLEDGER__RECONCILE__INTERVAL_SECS")]
    pub reconcile_every: Option<u64>,
    /// Seconds between scheduled retention runs (see `idledger retention run`); 0 turns the
    /// schedule off. [default: 86400]
    #[arg(long, value_name = "SECS", env = "IDLEDGER__RETENTION__INTERVAL_SECS")]
    pub retention_every: Option<u64>,
    /// Seconds between signed checkpoints of the log (one is signed only when the log has
    /// grown); 0 turns the schedule off. [default: 600]
    #[arg(
        long,
        value_name = "SECS",
        env = "IDLEDGER__CHECKPOINTS__INTERVAL_SECS"
    )]
    pub checkpoint_every: Option<u64>,
    /// Seconds a decision token stays valid after its decision (1 to 86400). [default: 300]
    #[arg(long, value_name = "SECS", env = "IDLEDGER__DECISIONS__TOKEN_TTL_SECS")]
    pub decision_token_ttl_secs: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once; it cannot be shown again.
    Create(TokenCreateArgs),
    /// List tokens (never their secrets).
    List(JsonArg),
    /// Revoke a token by id; it stops working at once.
    Revoke(TokenRevokeArgs),
    /// Replace a token with a new one (printed once) for the same role, system and label;
    /// the old one keeps working for --overlap, so clients switch without an outage.
    Rotate(TokenRotateArgs),
}

#[derive(Debug, Args)]
pub struct TokenRotateArgs {
    /// The token's id (from `idledger token list`).
    #[arg(value_name = "TOKEN_ID")]
    pub id: uuid::Uuid,
    /// How long the old token keeps working: 45s, 90m, 4h, 2d (at most 10 years).
    #[arg(long, value_name = "AGE", default_value = "1d", value_parser = parse_duration)]
    pub overlap: chrono::Duration,
    /// Print the new token and its record as JSON.
    #[arg(long)]
    pub json: bool,
}

fn parse_duration(raw: &str) -> Result<chrono::Duration, String> {
    idledger_app::parse_age(raw).ok_or_else(|| {
        format!("'{raw}' is not a duration such as 45s, 90m, 4h or 2d (at most 10 years)")
    })
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// source (a source system), consumer (a CRM/CDP integration), steward, auditor, admin,
    /// dsar (answers data subjects' access and portability requests) or processor (asks for
    /// decisions before it uses data).
    #[arg(long, value_name = "ROLE", value_parser = parse_role)]
    pub role: idledger_store::Role,
    /// The source system the token speaks for (role source), e.g. crm; events record it.
    #[arg(long, value_name = "ID", required_if_eq("role", "source"))]
    pub source: Option<String>,
    /// The consumer the token belongs to (role consumer).
    #[arg(long, value_name = "ID", required_if_eq("role", "consumer"))]
    pub consumer: Option<String>,
    /// The processor the token belongs to (role processor): one registered with `idledger
    /// processor add`, or a consumer's id.
    #[arg(long, value_name = "ID", required_if_eq("role", "processor"))]
    pub processor: Option<String>,
    /// A note for people: who holds it, where it is deployed. [default: the role and id]
    #[arg(long, value_name = "TEXT")]
    pub label: Option<String>,
    /// Let it expire after this long: 45s, 90m, 4h, 2d (at most 10 years). [default: never]
    #[arg(long, value_name = "AGE", value_parser = parse_duration)]
    pub expires_in: Option<chrono::Duration>,
    /// Limit it to these operation groups, within what its role allows (repeat, or separate
    /// with commas): commands, reads, feed, acks, reconcile, stewardship, admin, export,
    /// decisions.
    /// [default: all its role allows]
    #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',', value_parser = parse_scope)]
    pub scopes: Vec<idledger_store::Scope>,
    /// Print the token and its record as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id (from `idledger token list`).
    #[arg(value_name = "TOKEN_ID")]
    pub id: uuid::Uuid,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_scope(raw: &str) -> Result<idledger_store::Scope, String> {
    raw.parse()
        .map_err(|e: idledger_store::StoreError| e.to_string())
}

fn parse_role(raw: &str) -> Result<idledger_store::Role, String> {
    raw.parse()
        .map_err(|e: idledger_store::StoreError| e.to_string())
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Print the verification report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Check the checkpoints of this export (`idledger checkpoint export`) instead of the
    /// stored ones: each signature, and the log hash at each checkpoint's position.
    #[arg(long, value_name = "FILE")]
    pub checkpoints: Option<PathBuf>,
    /// Accept only checkpoints signed by this Ed25519 public key (64 hex characters), not
    /// any key the file names.
    #[arg(long, value_name = "HEX", requires = "checkpoints")]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Print the rebuild report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The customer (a UUIDv7, e.g. 01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f).
    #[arg(value_name = "CUSTOMER_ID", value_parser = parse_customer_id)]
    pub customer: CustomerId,
    /// The field: email, phone, name.given, name.family, postal_address, birth_date, locale,
    /// jurisdiction, verification.level, household, preferences.<key>, consent.<purpose>,
    /// sharing.<partner> or external_id.<system>.
    #[arg(value_name = "FIELD", value_parser = parse_field)]
    pub field: FieldPath,
    /// Print one JSON event per line (NDJSON) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The customer (a UUIDv7).
    #[arg(value_name = "CUSTOMER_ID", value_parser = parse_customer_id)]
    pub customer: CustomerId,
    /// Show the record as it stood at this instant (RFC 3339, e.g. 2026-03-01T09:00:00Z),
    /// folded from the log; consents are evaluated at that instant too.
    #[arg(long, value_name = "T", value_parser = parse_instant)]
    pub as_of: Option<DateTime<Utc>>,
    /// Print the record as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) fn parse_customer_id(raw: &str) -> Result<CustomerId, String> {
    CustomerId::parse(raw).map_err(|e| e.to_string())
}

fn parse_field(raw: &str) -> Result<FieldPath, String> {
    FieldPath::parse(raw).map_err(|e| e.to_string())
}

fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("expected an RFC 3339 instant like 2026-03-01T09:00:00Z ({e})"))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_ids_fields_and_instants_are_usage_errors() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind());
        let id = "01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f";
        assert_eq!(parse(&["idledger", "history", id, "email"]), Ok(()));
        assert_eq!(
            parse(&["idledger", "history", "nope", "email"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["idledger", "history", id, "favourite_colour"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&["idledger", "record", id, "--as-of", "yesterday"]),
            Err(clap::error::ErrorKind::ValueValidation)
        );
        assert_eq!(
            parse(&[
                "idledger",
                "record",
                id,
                "--as-of",
                "2026-03-01T10:00:00+01:00"
            ]),
            Ok(())
        );
    }
}
