//! Rebuild speed over a large log, and history / as-of read latency for a customer with many
//! events.
//!
//! The log is seeded through `Ledger::execute` directly (not over HTTP): commands of 50
//! changes each, many at once, so group commit writes big batches. Its events are real —
//! decided, sealed, chained — so `rebuild` does exactly the work it does in production.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use futures::StreamExt as _;
use idledger_domain::command::{Command, Principal};
use idledger_domain::ids::{CustomerId, SourceId};
use idledger_domain::policy::Policy;
use idledger_store::{Ledger, LedgerOptions, MasterKey};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::{BenchError, Step as _};
use crate::process::ServeProcessReport;
use crate::server::{Server, Spawn};
use crate::stats::{self, Latency};
use crate::{BenchConfig, Note};

/// Changes per seeding command (the domain allows 100).
const CHANGES_PER_COMMAND: u64 = 50;
/// Seeding commands in flight: enough to fill the writer's batches.
const SEED_CONCURRENCY: usize = 32;
/// Preference keys each seeded customer's changes cycle through.
const PREFERENCE_KEYS: u64 = 10;
/// Untimed reads of each kind before the timed ones.
const WARM_UP_READS: u32 = 20;
/// Events per page of the raw scan: the page size `rebuild` reads with.
const SCAN_PAGE: u32 = 10_000;

#[derive(Debug, Clone, Serialize)]
pub struct RebuildResult {
    pub events: u64,
    pub customers: u64,
    pub seed_seconds: f64,
    pub seed_events_per_second: f64,
    /// The raw paged `SELECT` of the whole `events` table (no decryption, no fold).
    pub scan_seconds: f64,
    pub scan_events_per_second: f64,
    pub rebuild_seconds: f64,
    pub rebuild_events_per_second: f64,
    pub ratio_to_scan: f64,
    pub identical: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reads {
    pub customer_events: u64,
    /// Events in the history read (one field's).
    pub history_events: u64,
    /// Events folded for the as-of read (those up to the instant).
    pub as_of_events: u64,
    /// `GET /v1/customers/{id}/fields/name.given/history`, over HTTP.
    pub history: Latency,
    /// `GET /v1/customers/{id}?as_of=…`, over HTTP.
    pub as_of: Latency,
    /// The same rows by one raw `SELECT` (the store's query, no decryption).
    pub raw_history: Latency,
    pub raw_as_of: Latency,
    pub history_ratio_to_raw: f64,
    pub as_of_ratio_to_raw: f64,
}

/// Seeds the log of `spawn.database_url` through the ledger, times a raw scan and the
/// rebuild, then the reads over HTTP from an `idledger serve` started on it (`spawn`), whose
/// report comes back too.
pub async fn run(
    spawn: &Spawn<'_>,
    config: &BenchConfig,
    note: Note<'_>,
) -> Result<(RebuildResult, Reads, Option<ServeProcessReport>), BenchError> {
    let ledger = open_ledger(spawn.database_url, spawn.master_key_hex).await?;
    let web_app = Principal::Source(
        SourceId::parse("web_app").map_err(|e| BenchError::Failed(e.to_string()))?,
    );
    let customers = config.rebuild_events.div_ceil(CHANGES_PER_COMMAND).max(1);
    note(&format!(
        "rebuild: seeding {} events ({customers} customers) through the ledger",
        customers * CHANGES_PER_COMMAND
    ));
    let started = Instant::now();
    let mut seeded = 0u64;
    let mut next_note = customers / 10;
    let mut results = futures::stream::iter(0..customers)
        .map(|i| {
            let (ledger, web_app) = (ledger.clone(), web_app.clone());
            async move { seed_customer(&ledger, &web_app, i).await }
        })
        .buffer_unordered(SEED_CONCURRENCY);
    while let Some(result) = results.next().await {
        result?;
        seeded += 1;
        if seeded == next_note && seeded < customers {
            note(&format!("  {seeded} of {customers} customers"));
            next_note += customers / 10;
        }
    }
    drop(results);
    let seed_elapsed = started.elapsed();

    // The reads' customer, its events recorded in two halves with an instant between.
    let (reader, mid, history_events, as_of_events) =
        seed_read_customer(&ledger, &web_app, config.read_events).await?;
    let events = ledger
        .head_position()
        .await
        .step("cannot read the log's head")?;
    // A million rows just written leave autovacuum busy for a while; the scan, the rebuild
    // and the reads are timed on a settled database, as a server sees between imports,
    // rather than against that background work.
    note("rebuild: VACUUM ANALYZE after seeding");
    let started = Instant::now();
    vacuum(spawn.database_url).await?;
    note(&format!("  {:.1} s", started.elapsed().as_secs_f64()));

    note(&format!("rebuild: raw scan of {events} events"));
    let started = Instant::now();
    let mut after = 0u64;
    let mut scanned = 0u64;
    loop {
        let page = ledger
            .read_raw(after, SCAN_PAGE)
            .await
            .step("the raw scan failed")?;
        let Some(last) = page.last() else { break };
        after = last.global_position;
        scanned += page.len() as u64;
    }
    let scan = started.elapsed();
    note(&format!("  {:.0} events/s", stats::rate(scanned, scan)));

    note(&format!("rebuild: idledger rebuild of {events} events"));
    let started = Instant::now();
    let report = ledger
        .rebuild(&|_, _| {})
        .await
        .step("the rebuild failed")?;
    let rebuild = started.elapsed();
    note(&format!(
        "  {:.0} events/s",
        stats::rate(report.events, rebuild)
    ));
    if !report.identical {
        return Err(BenchError::Failed(format!(
            "the rebuilt projection differed from the live one for {} customers",
            report.differing_count
        )));
    }
    let rebuild_result = RebuildResult {
        events: report.events,
        customers: report.customers,
        seed_seconds: seed_elapsed.as_secs_f64(),
        seed_events_per_second: stats::rate(seeded * CHANGES_PER_COMMAND, seed_elapsed),
        scan_seconds: scan.as_secs_f64(),
        scan_events_per_second: stats::rate(scanned, scan),
        rebuild_seconds: rebuild.as_secs_f64(),
        rebuild_events_per_second: stats::rate(report.events, rebuild),
        ratio_to_scan: stats::ratio(
            stats::rate(report.events, rebuild),
            stats::rate(scanned, scan),
        ),
        identical: report.identical,
    };

    note(&format!(
        "reads: history and as-of of a customer with {} events, {} of each",
        config.read_events, config.read_samples
    ));
    let (reads, serve) = measure_reads(
        spawn,
        ledger,
        reader,
        mid,
        config.read_samples,
        (config.read_events, history_events, as_of_events),
    )
    .await?;
    note(&format!(
        "  history p99 {:.2} ms, as-of p99 {:.2} ms",
        reads.history.p99_ms, reads.as_of.p99_ms
    ));
    Ok((rebuild_result, reads, serve))
}

/// `VACUUM ANALYZE` of the whole scratch database.
async fn vacuum(url: &str) -> Result<(), BenchError> {
    use sqlx::ConnectOptions as _;
    let options = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .step("the benchmark's database URL")?
        // It takes seconds by design: not worth sqlx's slow-statement warning.
        .disable_statement_logging();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .step("cannot connect to the benchmark's database to vacuum it")?;
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .step("VACUUM ANALYZE of the benchmark's database failed")?;
    pool.close().await;
    Ok(())
}

/// The ledger on the scratch database, under the run's master key, which the `serve` child
/// started on it afterwards is given too.
async fn open_ledger(url: &str, master_key_hex: &str) -> Result<Ledger, BenchError> {
    let store = idledger_store::Store::open(url)
        .await
        .step("cannot open the benchmark's database")?;
    let policy = Policy::default_policy()
        .map_err(|e| BenchError::Failed(format!("the default policy does not load: {e}")))?;
    let master = MasterKey::from_hex(master_key_hex).step("the run's master key")?;
    Ok(Ledger::new(
        &store,
        master,
        policy,
        LedgerOptions::default(),
    ))
}

fn command(customer: CustomerId, key: String, changes: Vec<Value>) -> Result<Command, BenchError> {
    serde_json::from_value(json!({
        "customer_id": customer,
        "idempotency_key": key,
        "provenance": {"actor": {"kind": "system", "id": "bench"}},
        "changes": changes,
    }))
    .step("a seeding command does not parse")
}

fn set(field: &str, kind: &str, value: Value) -> Value {
    json!({"op": "set_field", "field": field, "value": {"kind": kind, "value": value}})
}

/// One customer: registered, then preferences set over and over (every change an event).
async fn seed_customer(ledger: &Ledger, by: &Principal, i: u64) -> Result<(), BenchError> {
    let customer = CustomerId::generate();
    let mut changes = vec![json!({"op": "register"})];
    for n in 1..CHANGES_PER_COMMAND {
        let key = n % PREFERENCE_KEYS;
        changes.push(set(&format!("preferences.p{key}"), "preference", json!(n)));
    }
    let command = command(customer, format!("seed-{i}"), changes)?;
    execute(ledger, by, &command).await
}

/// Runs a seeding command, again after a failure: more commands are in flight than the pool
/// has connections, and the store gives up waiting for one after 800 ms, which a loaded
/// machine exceeds. The idempotency key makes a retry of a command that did commit a no-op.
async fn execute(ledger: &Ledger, by: &Principal, command: &Command) -> Result<(), BenchError> {
    const ATTEMPTS: u64 = 5;
    let mut attempt = 1;
    loop {
        match ledger.execute(by, command).await {
            Ok(_) => return Ok(()),
            Err(_) if attempt < ATTEMPTS => {
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(e).step("a seeding command failed"),
        }
    }
}

/// The reads' customer: `events` events over four fields; returns it, an instant between its
/// two halves, and how many events the history and as-of reads cover.
async fn seed_read_customer(
    ledger: &Ledger,
    by: &Principal,
    events: u64,
) -> Result<(CustomerId, chrono::DateTime<Utc>, u64, u64), BenchError> {
    let customer = CustomerId::generate();
    let fields = [
        "name.given",
        "name.family",
        "preferences.a",
        "preferences.b",
    ];
    let mut n = 1u64;
    let mut commands = 0u64;
    let mut mid = None;
    let mut mid_events = 0;
    let mut history = 0;
    while n < events {
        let mut changes = Vec::new();
        if n == 1 {
            changes.push(json!({"op": "register"}));
        }
        while (changes.len() as u64) < CHANGES_PER_COMMAND && n < events {
            let field = fields[usize::try_from(n).unwrap_or(0) % fields.len()];
            changes.push(if field.starts_with("name.") {
                history += u64::from(field == "name.given");
                set(field, "person_name", json!(crate::load::name(n)))
            } else {
                set(field, "preference", json!(n))
            });
            n += 1;
        }
        commands += 1;
        let command = command(customer, format!("reader-{commands}"), changes)?;
        execute(ledger, by, &command).await?;
        if mid.is_none() && n >= events / 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            mid = Some(Utc::now());
            mid_events = n;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok((customer, mid.unwrap_or_else(Utc::now), history, mid_events))
}

/// One read as the auditor; an answer other than success fails the run.
async fn read(server: &Server, url: &str) -> Result<(), BenchError> {
    let response = server
        .client
        .get(url)
        .bearer_auth(&server.callers.auditor)
        .send()
        .await
        .step("a read failed")?;
    let status = response.status();
    let body = response.bytes().await.step("a read's body failed")?;
    if status.is_success() {
        Ok(())
    } else {
        Err(BenchError::Failed(format!(
            "GET {url} answered {status} {}",
            String::from_utf8_lossy(&body)
        )))
    }
}

async fn measure_reads(
    spawn: &Spawn<'_>,
    ledger: Ledger,
    customer: CustomerId,
    mid: chrono::DateTime<Utc>,
    samples: u32,
    (customer_events, history_events, as_of_events): (u64, u64, u64),
) -> Result<(Reads, Option<ServeProcessReport>), BenchError> {
    let log = ledger.store().log();
    let id = customer.as_uuid();
    let mid_micros = mid.timestamp_micros();
    let server = Server::spawn(spawn).await?;
    let history_url = format!(
        "{}/v1/customers/{id}/fields/name.given/history",
        server.base
    );
    let as_of_url = format!(
        "{}/v1/customers/{id}?as_of={}",
        server.base,
        mid.to_rfc3339_opts(SecondsFormat::Micros, true)
    );
    let measured = async {
        // The server was just started: its first reads open pool connections and prepare
        // statements, a cost of its start rather than of a read.
        for _ in 0..WARM_UP_READS {
            read(&server, &history_url).await?;
            read(&server, &as_of_url).await?;
        }
        let (mut history, mut as_of) = (stats::histogram()?, stats::histogram()?);
        let (mut raw_history, mut raw_as_of) = (stats::histogram()?, stats::histogram()?);
        for _ in 0..samples {
            for (url, h) in [(&history_url, &mut history), (&as_of_url, &mut as_of)] {
                let t = Instant::now();
                let answered = read(&server, url).await;
                stats::record(h, t.elapsed());
                answered?;
            }
            let t = Instant::now();
            log.stream(id, Some("name.given"), None)
                .await
                .step("the raw history read failed")?;
            stats::record(&mut raw_history, t.elapsed());
            let t = Instant::now();
            log.stream(id, None, Some(mid_micros))
                .await
                .step("the raw as-of read failed")?;
            stats::record(&mut raw_as_of, t.elapsed());
        }
        let (history, as_of) = (Latency::of(&history), Latency::of(&as_of));
        let (raw_history, raw_as_of) = (Latency::of(&raw_history), Latency::of(&raw_as_of));
        Ok(Reads {
            customer_events,
            history_events,
            as_of_events,
            history_ratio_to_raw: stats::ratio(history.p99_ms, raw_history.p99_ms),
            as_of_ratio_to_raw: stats::ratio(as_of.p99_ms, raw_as_of.p99_ms),
            history,
            as_of,
            raw_history,
            raw_as_of,
        })
    }
    .await;
    let stopped = server.stop().await;
    let reads = measured?;
    Ok((reads, stopped?))
}
