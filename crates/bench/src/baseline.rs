//! Baselines: what the database alone does with the same concurrency and the same time — one
//! event-sized row per `INSERT`, each its own durable transaction, on PostgreSQL and SQLite.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::ConnectOptions as _;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::error::{BenchError, Step as _};
use crate::stats::{self, Latency};

/// A sealed payload of a typical event is about this long (nonce, ciphertext of ~150 bytes of
/// JSON, tag).
const PAYLOAD_BYTES: usize = 240;

/// Throughput and latency of single operations.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub clients: usize,
    pub operations: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub latency: Latency,
}

/// The `events` table's shape and indexes (migrations 0001), without the append-only trigger.
const PG_TABLE: &str = "CREATE TABLE bench_events (
    global_position BIGSERIAL PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    customer_id UUID NOT NULL,
    stream_version BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    field TEXT,
    recorded_at TIMESTAMPTZ NOT NULL,
    payload BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    UNIQUE (customer_id, stream_version));
CREATE INDEX bench_events_customer_field ON bench_events (customer_id, field, stream_version);";

const SQLITE_TABLE: &str = "CREATE TABLE bench_events (
    global_position INTEGER PRIMARY KEY,
    event_id BLOB NOT NULL UNIQUE,
    customer_id BLOB NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    field TEXT,
    recorded_at INTEGER NOT NULL,
    payload BLOB NOT NULL,
    hash BLOB NOT NULL,
    UNIQUE (customer_id, stream_version));
CREATE INDEX bench_events_customer_field ON bench_events (customer_id, field, stream_version);";

/// One row per customer stream position: each client writes its own customer's stream.
fn row(client: usize, version: i64) -> (uuid::Uuid, uuid::Uuid, Vec<u8>, Vec<u8>) {
    let customer = uuid::Uuid::from_u128(client as u128 + 1);
    let payload: Vec<u8> = (0..PAYLOAD_BYTES)
        .map(|i| (i as u8) ^ (version as u8))
        .collect();
    let hash = vec![version as u8; 32];
    (customer, uuid::Uuid::now_v7(), payload, hash)
}

/// Raw single-row INSERTs on PostgreSQL: `clients` connections, each inserting in a loop for
/// `duration` (autocommit, so one commit — with `synchronous_commit` as the server has it —
/// per row).
pub async fn pg_insert(
    url: &str,
    clients: usize,
    duration: Duration,
) -> Result<Throughput, BenchError> {
    // Connected as the server's store connects (the same TLS default), so the two compare.
    let options = idledger_store::pg_connect_options(url).step("bad baseline database URL")?;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .connect_with(options)
        .await
        .step("cannot connect to the baseline database")?;
    sqlx::raw_sql(PG_TABLE)
        .execute(&pool)
        .await
        .step("cannot create the baseline table")?;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..clients).map(|client| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut h = stats::histogram()?;
            let mut version = 0i64;
            while Instant::now() < deadline {
                version += 1;
                let (customer, event, payload, hash) = row(client, version);
                let t = Instant::now();
                sqlx::query(
                    "INSERT INTO bench_events (event_id, customer_id, stream_version, event_type, \
                     schema_version, field, recorded_at, payload, hash) \
                     VALUES ($1, $2, $3, 'field_set', 1, 'name.given', now(), $4, $5)",
                )
                .bind(event)
                .bind(customer)
                .bind(version)
                .bind(payload)
                .bind(hash)
                .execute(&pool)
                .await
                .step("baseline INSERT failed")?;
                stats::record(&mut h, t.elapsed());
            }
            Ok::<_, BenchError>(h)
        })
    });
    let histograms = futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    pool.close().await;
    merge(histograms, clients, elapsed)
}

/// Raw single-row INSERTs on SQLite in WAL mode with `synchronous = FULL` (what the embedded
/// backend uses): `clients` connections taking turns at the one write lock.
pub async fn sqlite_insert(
    path: &Path,
    clients: usize,
    duration: Duration,
) -> Result<Throughput, BenchError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        // Waiting for the one write lock is the point here, not a slow statement to report.
        .disable_statement_logging();
    let pool = SqlitePoolOptions::new()
        .max_connections(u32::try_from(clients).unwrap_or(u32::MAX))
        .connect_with(options)
        .await
        .step(format!("cannot open the SQLite file {}", path.display()))?;
    sqlx::raw_sql(SQLITE_TABLE)
        .execute(&pool)
        .await
        .step("cannot create the SQLite baseline table")?;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = (0..clients).map(|client| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut h = stats::histogram()?;
            let mut version = 0i64;
            while Instant::now() < deadline {
                version += 1;
                let (customer, event, payload, hash) = row(client, version);
                let t = Instant::now();
                sqlx::query(
                    "INSERT INTO bench_events (event_id, customer_id, stream_version, event_type, \
                     schema_version, field, recorded_at, payload, hash) \
                     VALUES (?, ?, ?, 'field_set', 1, 'name.given', ?, ?, ?)",
                )
                .bind(event)
                .bind(customer)
                .bind(version)
                .bind(chrono::Utc::now().timestamp_micros())
                .bind(payload)
                .bind(hash)
                .execute(&pool)
                .await
                .step("baseline SQLite INSERT failed")?;
                stats::record(&mut h, t.elapsed());
            }
            Ok::<_, BenchError>(h)
        })
    });
    let histograms = futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    pool.close().await;
    merge(histograms, clients, elapsed)
}

type Joined = Result<Result<hdrhistogram::Histogram<u64>, BenchError>, tokio::task::JoinError>;

fn merge(
    histograms: Vec<Joined>,
    clients: usize,
    elapsed: Duration,
) -> Result<Throughput, BenchError> {
    let mut all = stats::histogram()?;
    for h in histograms {
        let h = h.step("a baseline client panicked")??;
        all.add(&h).step("cannot merge latency histograms")?;
    }
    Ok(Throughput {
        clients,
        operations: all.len(),
        seconds: elapsed.as_secs_f64(),
        per_second: stats::rate(all.len(), elapsed),
        latency: Latency::of(&all),
    })
}
