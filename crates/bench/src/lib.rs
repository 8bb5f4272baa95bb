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
//! The server runs in this process (the `api` router on 127.0.0.1:0 and the relay, as
//! `idledger serve` runs them), so the peak memory figure includes the load generator.
//! Scratch PostgreSQL databases are created beside the given one and dropped at the end.

pub mod baseline;
pub mod decisions;
pub mod delivery;
pub mod error;
pub mod load;
pub mod rebuild;
pub mod report;
pub mod scratch;
pub mod server;
pub mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use error::BenchError;
pub use report::Report;

use crate::error::Step as _;

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
    pub smoke: bool,
}

impl BenchConfig {
    /// The sizes of a real run: 32 clients, 20 s per phase, 1,000 commands/s, 1M events.
    pub fn full(admin_url: String, nats_url: String, work_dir: PathBuf) -> Self {
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
            smoke: false,
        }
    }

    /// Tiny sizes that still run every phase end to end: for CI, a few seconds.
    pub fn smoke(admin_url: String, nats_url: String, work_dir: PathBuf) -> Self {
        Self {
            clients: 4,
            duration: Duration::from_secs(2),
            rate: 50,
            decision_rates: vec![100],
            rebuild_events: 2000,
            read_events: 100,
            read_samples: 20,
            smoke: true,
            ..Self::full(admin_url, nats_url, work_dir)
        }
    }
}

/// Progress notes for the operator (the CLI prints them on stderr).
pub type Note<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Runs every phase and returns the report. Scratch databases, NATS streams and SQLite files
/// are removed whether the run succeeds or not.
pub async fn run(config: &BenchConfig, note: Note<'_>) -> Result<Report, BenchError> {
    let started = Instant::now();
    let scratch = scratch::Scratch::new(&config.admin_url).await?;
    let dir = tempfile::Builder::new()
        .prefix("idledger-bench-")
        .tempdir_in(&config.work_dir)
        .step(format!(
            "cannot create a temporary directory in {}",
            config.work_dir.display()
        ))?;
    let result = run_phases(config, &scratch, dir.path(), note).await;
    let dropped = scratch.drop_all().await;
    let mut report = result?;
    dropped?;
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    report.peak_memory_kib = report::peak_memory_kib();
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

    note(&format!(
        "commands over HTTP on PostgreSQL (relay publishing to NATS), {n} clients, {secs:.0} s"
    ));
    let commands_url = scratch.create("commands").await?;
    let pg_server = server::Server::start(&commands_url, Some(&config.nats_url)).await?;
    let commands_pg = load::run(&pg_server, n, config.duration, pg_insert.per_second).await?;
    note(&format!(
        "  {:.0} commands/s ({:.2}x INSERT)",
        commands_pg.commands_per_second, commands_pg.ratio_to_insert
    ));

    note(&format!(
        "commit-to-consumer on PostgreSQL: paced at {} commands/s for {secs:.0} s",
        config.rate
    ));
    let commit_to_consumer = delivery::run(&pg_server, config.rate, config.duration).await;
    let decisions = match &commit_to_consumer {
        Ok(c) => {
            note(&format!(
                "  {:.0} commands/s reached, p99 {:.2} ms",
                c.achieved_rate, c.latency.p99_ms
            ));
            note(&format!(
                "decisions on PostgreSQL: paced at {:?} decisions/s, then batches of {}, {secs:.0} s each",
                config.decision_rates,
                decisions::BATCH
            ));
            decisions::run(&pg_server, &config.decision_rates, config.duration).await
        }
        Err(_) => Err(BenchError::Failed("skipped".to_owned())),
    };
    let stopped = pg_server.stop().await;
    let commit_to_consumer = commit_to_consumer?;
    let decisions = decisions?;
    stopped?;
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

    note(&format!(
        "commands over HTTP on SQLite (no relay), {n} clients, {secs:.0} s"
    ));
    let sqlite_url = format!("sqlite://{}", dir.join("commands.db").display());
    let sqlite_server = server::Server::start(&sqlite_url, None).await?;
    let commands_sqlite =
        load::run(&sqlite_server, n, config.duration, sqlite_insert.per_second).await;
    let stopped = sqlite_server.stop().await;
    let commands_sqlite = commands_sqlite?;
    stopped?;
    note(&format!(
        "  {:.0} commands/s ({:.2}x INSERT)",
        commands_sqlite.commands_per_second, commands_sqlite.ratio_to_insert
    ));

    let rebuild_url = scratch.create("rebuild").await?;
    let (rebuild, reads) = rebuild::run(&rebuild_url, config, note).await?;

    Ok(Report::new(
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
    ))
}
