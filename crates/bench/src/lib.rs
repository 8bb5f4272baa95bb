//! The benchmark harness behind `idledger bench`.
//!
//! Every figure is measured next to a baseline taken in the same run on the same machine, and
//! reported as a ratio to it: absolute times on a shared machine are noise, ratios much less so.
//!
//! | phase | what | baseline |
//! | --- | --- | --- |
//! | [`baseline`] | raw single-row `INSERT` of an event-sized row, N clients, PostgreSQL and SQLite | — |
//! | [`load`] | the real API over HTTP with a realistic mix, N clients, on both engines | the INSERT tps of its engine |
//! | [`delivery`] | command acknowledged → CloudEvent received by a NATS subscriber, paced | — (target: p99 ≤ 20 ms) |
//! | [`decisions`] | `POST /v1/decisions` paced at 1,000 and 5,000/s, and its batch form, on fresh state | — (target: p99 ≤ 5 ms at 1,000/s) |
//! | [`rebuild`] | `Ledger::rebuild` over ≥ 1M events | a raw paged scan of `events` |
//! | [`rebuild`] | history and as-of reads of a customer with 1,000 events, over HTTP | the raw `SELECT` of the same rows |
//!
//! The server under test is its own process: `idledger serve` (this binary), started on each
//! scratch database and driven over HTTP ([`server`], [`process`]), so its CPU time and
//! memory are measured apart from PostgreSQL's and the load generator's ([`usage`]). With
//! [`BenchConfig::target`] the HTTP phases drive a server already running instead.
//! Scratch PostgreSQL databases are created beside the given one and dropped at the end.

pub mod baseline;
pub mod decisions;
pub mod delivery;
pub mod error;
pub mod load;
pub mod pacer;
pub mod process;
pub mod procfs;
pub mod rebuild;
pub mod report;
pub mod scratch;
pub mod server;
pub mod stats;
pub mod usage;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use idledger_store::MasterKey;

pub use error::BenchError;
pub use report::Report;

use crate::error::Step as _;
use crate::server::{NatsSpec, Server, Spawn};

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// A PostgreSQL URL whose user may `CREATE DATABASE`; scratch databases go beside it.
    pub admin_url: String,
    pub nats_url: String,
    /// Concurrent clients for the throughput phases (baselines and HTTP alike).
    pub clients: usize,
    /// Length of each timed phase.
    pub duration: Duration,
    /// Commands per second for the commit-to-consumer phase.
    pub rate: u32,
    /// Decisions per second of the decisions phase, one measurement each.
    pub decision_rates: Vec<u32>,
    /// Events in the log that `rebuild` folds.
    pub rebuild_events: u64,
    /// Events of the customer whose history and as-of record are read.
    pub read_events: u64,
    /// Reads of each kind (history, as-of) measured.
    pub read_samples: u32,
    /// Where the SQLite files go (a temporary directory inside it, removed at the end).
    pub work_dir: PathBuf,
    /// Where the `serve` children's logs go (the report's directory).
    pub out_dir: PathBuf,
    /// The `idledger` binary the server runs as (the CLI's own).
    pub serve_binary: PathBuf,
    /// A server already running, driven instead of a child for the PostgreSQL HTTP phases.
    pub target: Option<Target>,
    pub smoke: bool,
}

/// A server the bench did not start: its URL, an admin token to provision the run's callers
/// with, and the subject prefix its relay publishes under.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub admin_token: String,
    /// `[nats] subject_prefix` of the target. [default: `idledger.v1`]
    pub subject_prefix: Option<String>,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("admin_token", &"…")
            .field("subject_prefix", &self.subject_prefix)
            .finish()
    }
}

impl BenchConfig {
    /// The sizes of a real run: 32 clients, 20 s per phase, 1,000 commands/s, 1M events.
    pub fn full(admin_url: String, nats_url: String, work_dir: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            admin_url,
            nats_url,
            clients: 32,
            duration: Duration::from_secs(20),
            rate: 1000,
            decision_rates: vec![1000, 5000],
            rebuild_events: 1_000_000,
            read_events: 1000,
            read_samples: 500,
            work_dir,
            out_dir,
            serve_binary: PathBuf::from("idledger"),
            target: None,
            smoke: false,
        }
    }

    /// Tiny sizes that still run every phase end to end: for CI, a few seconds.
    pub fn smoke(admin_url: String, nats_url: String, work_dir: PathBuf, out_dir: PathBuf) -> Self {
        Self {
            clients: 4,
            duration: Duration::from_secs(2),
            rate: 50,
            decision_rates: vec![100],
            rebuild_events: 2000,
            read_events: 100,
            read_samples: 20,
            smoke: true,
            ..Self::full(admin_url, nats_url, work_dir, out_dir)
        }
    }
}

/// Progress notes for the operator (the CLI prints them on stderr).
pub type Note<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Runs every phase and returns the report. Scratch databases, NATS streams and SQLite files
/// are removed whether the run succeeds or not; when `interrupted` resolves first (Ctrl-C),
/// the phases are dropped — which kills the `serve` children — and the run fails.
pub async fn run(
    config: &BenchConfig,
    note: Note<'_>,
    interrupted: impl Future<Output = ()>,
) -> Result<Report, BenchError> {
    let started = Instant::now();
    let scratch = scratch::Scratch::new(&config.admin_url).await?;
    let dir = tempfile::Builder::new()
        .prefix("idledger-bench-")
        .tempdir_in(&config.work_dir)
        .step(format!(
            "cannot create a temporary directory in {}",
            config.work_dir.display()
        ))?;
    let result = tokio::select! {
        result = run_phases(config, &scratch, dir.path(), note) => result,
        () = interrupted => Err(BenchError::Failed("interrupted".to_owned())),
    };
    let dropped = scratch.drop_all().await;
    let mut report = result?;
    dropped?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    report.bench_peak_memory_kib = procfs::own_peak_memory_kib();
    report.evaluate_targets();
    Ok(report)
}

async fn run_phases(
    config: &BenchConfig,
    scratch: &scratch::Scratch,
    dir: &std::path::Path,
    note: Note<'_>,
) -> Result<Report, BenchError> {
    let machine = report::Machine::probe(scratch).await?;
    if machine.synchronous_commit != "on" {
        return Err(BenchError::Failed(format!(
            "the PostgreSQL server runs with synchronous_commit = {}; the targets are defined \
             for synchronous_commit = on",
            machine.synchronous_commit
        )));
    }
    let secs = config.duration.as_secs_f64();
    let n = config.clients;
    // One key for the run: the children are given it, and the rebuild's ledger writes with it.
    let master_key = MasterKey::generate().to_hex();
    let mut serve_processes = Vec::new();

    note(&format!(
        "baseline: raw single-row INSERT on PostgreSQL, {n} clients, {secs:.0} s"
    ));
    let pg_url = scratch.create("insert").await?;
    let pg_insert = baseline::pg_insert(&pg_url, n, config.duration).await?;
    note(&format!("  {:.0} inserts/s", pg_insert.per_second));

    note(&format!(
        "baseline: raw single-row INSERT on SQLite (WAL, synchronous=FULL), {n} clients, {secs:.0} s"
    ));
    let sqlite_insert =
        baseline::sqlite_insert(&dir.join("baseline.db"), n, config.duration).await?;
    note(&format!("  {:.0} inserts/s", sqlite_insert.per_second));

    let commands_url;
    let mut pg_server = match &config.target {
        None => {
            commands_url = scratch.create("commands").await?;
            note("starting idledger serve on PostgreSQL (relay publishing to NATS)");
            Server::spawn(&Spawn {
                binary: &config.serve_binary,
                name: "postgres",
                database_url: &commands_url,
                master_key_hex: &master_key,
                postgres_database: Some(scratch.database_name("commands")),
                nats_url: Some(&config.nats_url),
                work_dir: dir,
                out_dir: &config.out_dir,
            })
            .await?
        }
        Some(target) => {
            note(&format!("driving the server at {}", target.url));
            Server::attach(
                &target.url,
                &target.admin_token,
                Some(NatsSpec {
                    url: &config.nats_url,
                    subject_prefix: target.subject_prefix.as_deref(),
                }),
            )
            .await?
        }
    };
    let measured =
        postgres_phases(config, scratch, &mut pg_server, pg_insert.per_second, note).await;
    let stopped = pg_server.stop().await;
    let (commands_pg, commit_to_consumer, decisions) = measured?;
    serve_processes.extend(stopped?);

    let commands_sqlite = match &config.target {
        Some(_) => None,
        None => {
            note(&format!(
                "commands over HTTP on SQLite (serve without relay), {n} clients, {secs:.0} s"
            ));
            let sqlite_url = format!("sqlite://{}", dir.join("commands.db").display());
            let mut server = Server::spawn(&Spawn {
                binary: &config.serve_binary,
                name: "sqlite",
                database_url: &sqlite_url,
                master_key_hex: &master_key,
                postgres_database: None,
                nats_url: None,
                work_dir: dir,
                out_dir: &config.out_dir,
            })
            .await?;
            let measured = load::run(&server, n, config.duration, sqlite_insert.per_second).await;
            let checked = server.check_running();
            let stopped = server.stop().await;
            let measured = measured?;
            checked?;
            serve_processes.extend(stopped?);
            note(&format!(
                "  {:.0} commands/s ({:.2}x INSERT)",
                measured.commands_per_second, measured.ratio_to_insert
            ));
            Some(measured)
        }
    };

    let rebuild_url = scratch.create("rebuild").await?;
    let (rebuild, reads, reads_serve) = rebuild::run(
        &Spawn {
            binary: &config.serve_binary,
            name: "reads",
            database_url: &rebuild_url,
            master_key_hex: &master_key,
            postgres_database: Some(scratch.database_name("rebuild")),
            nats_url: None,
            work_dir: dir,
            out_dir: &config.out_dir,
        },
        config,
        note,
    )
    .await?;
    serve_processes.extend(reads_serve);

    let mut report = Report::new(
        config,
        machine,
        report::Baselines {
            postgres_insert: pg_insert,
            sqlite_insert,
        },
        commands_pg,
        commands_sqlite,
        commit_to_consumer,
        decisions,
        rebuild,
        reads,
    );
    report.serve_processes = serve_processes;
    Ok(report)
}

/// Before a latency phase: the server's `CHECKPOINT`, so that the phase does not time the
/// previous phase's writes being flushed. While a checkpoint spread over minutes writes them,
/// the disk answers the commits' WAL `fdatasync` in 3–15 ms several times a second (seen with
/// `perf trace` in run 11) instead of ~0.1 ms. A user who may not checkpoint is told, and the
/// run goes on.
async fn settle(scratch: &scratch::Scratch, note: Note<'_>) {
    if let Err(e) = scratch.checkpoint().await {
        note(&format!(
            "  (no CHECKPOINT before the phase: {e}; its latencies include the flush of the \
             phase before)"
        ));
    }
}

/// The phases on the PostgreSQL server: commands, commit-to-consumer, decisions.
async fn postgres_phases(
    config: &BenchConfig,
    scratch: &scratch::Scratch,
    server: &mut Server,
    insert_per_second: f64,
    note: Note<'_>,
) -> Result<
    (
        load::LoadResult,
        delivery::CommitToConsumer,
        decisions::Decisions,
    ),
    BenchError,
> {
    let secs = config.duration.as_secs_f64();
    let n = config.clients;
    note(&format!(
        "commands over HTTP on PostgreSQL (relay publishing to NATS), {n} clients, {secs:.0} s"
    ));
    let commands = load::run(server, n, config.duration, insert_per_second).await?;
    server.check_running()?;
    note(&format!(
        "  {:.0} commands/s ({:.2}x INSERT){}",
        commands.commands_per_second,
        commands.ratio_to_insert,
        commands
            .resources
            .serve_peak_memory_kib
            .map_or(String::new(), |k| format!(", serve peak {} MiB", k / 1024))
    ));

    settle(scratch, note).await;
    note(&format!(
        "commit-to-consumer on PostgreSQL: paced at {} commands/s for {secs:.0} s",
        config.rate
    ));
    let commit_to_consumer = delivery::run(server, config.rate, config.duration).await?;
    server.check_running()?;
    note(&format!(
        "  {:.0} commands/s reached, p99 {:.2} ms",
        commit_to_consumer.achieved_rate, commit_to_consumer.latency.p99_ms
    ));

    settle(scratch, note).await;
    note(&format!(
        "decisions on PostgreSQL: paced at {:?} decisions/s, then batches of {}, {secs:.0} s each",
        config.decision_rates,
        decisions::BATCH
    ));
    let decisions = decisions::run(server, &config.decision_rates, config.duration).await?;
    server.check_running()?;
    for p in &decisions.single {
        note(&format!(
            "  {:.0} decisions/s reached (of {}), p99 {:.2} ms",
            p.achieved_rate, p.target_rate, p.latency.p99_ms
        ));
    }
    note(&format!(
        "  batches: {:.0}/s of {}, p99 {:.2} ms",
        decisions.batch.achieved_rate, decisions.batch_size, decisions.batch.latency.p99_ms
    ));
    Ok((commands, commit_to_consumer, decisions))
}
