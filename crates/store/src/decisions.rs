//! Processors and the decision log.
//!
//! A processor is a system that uses customers' data and asks first
//! (`idledger_domain::usage`). Every consumer is one, registered by its consumer registration;
//! a processor that only asks (a journey engine, an ad partner) is registered in `processors`.
//! Ids share one namespace, so a token's subject names exactly one of them.
//!
//! The decision log keeps every answer, allowing or not: who asked, for whom, what, the answer
//! per field with its reason, the state version and policy it was decided on, and the decision
//! token's expiry when one was issued. Field names and reasons only, never values.

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use idledger_domain::field::FieldSelector;
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::usage::{FieldAnswer, Location, ProcessorGrant};
use idledger_domain::values::{CountryCode, LegalBasis, TransferBasis, ValueError};
use serde::Serialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::delivery::{ConsumerId, MAX_PAGE, Page, customer_id, dedup_in_order};
use crate::error::StoreError;
use crate::model::truncate_to_micros;
use crate::sql::{Arg, Db, Row, sql};

/// A processor's id: the rules of a consumer's id (it is a token's subject, and consumers are
/// processors too).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProcessorId(String);

impl ProcessorId {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        ConsumerId::parse(raw)
            .map(|c| Self(c.as_str().to_owned()))
            .map_err(|e| ValueError::new("processor id", e.reason))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ProcessorId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A processor registered to ask (not a consumer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Processor {
    pub id: ProcessorId,
    /// Non-empty, without duplicates.
    pub purposes: Vec<Purpose>,
    /// Non-empty, without duplicates.
    pub fields: Vec<FieldSelector>,
    #[serde(flatten)]
    pub location: Location,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl Processor {
    pub fn grant(&self) -> ProcessorGrant {
        ProcessorGrant {
            purposes: self.purposes.clone(),
            fields: self.fields.clone(),
            location: self.location,
        }
    }
}

/// A processor to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProcessor {
    pub id: ProcessorId,
    pub purposes: Vec<Purpose>,
    pub fields: Vec<FieldSelector>,
    pub location: Location,
}

impl NewProcessor {
    /// Checks that it uses some field for some purpose; drops duplicates (keeping the order
    /// given).
    pub fn new(
        id: ProcessorId,
        mut purposes: Vec<Purpose>,
        mut fields: Vec<FieldSelector>,
        location: Location,
    ) -> Result<Self, ValueError> {
        if purposes.is_empty() {
            return Err(ValueError::new(
                "processor",
                "must use data for at least one purpose",
            ));
        }
        if fields.is_empty() {
            return Err(ValueError::new("processor", "must use at least one field"));
        }
        dedup_in_order(&mut purposes);
        dedup_in_order(&mut fields);
        Ok(Self {
            id,
            purposes,
            fields,
            location,
        })
    }
}

/// Why a processor was not registered.
#[derive(Debug, thiserror::Error)]
pub enum RegisterProcessorError {
    #[error("a processor or consumer with id '{0}' is already registered")]
    Exists(ProcessorId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a token's subject is, as one that asks for decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asker {
    Processor(Processor),
    Consumer(crate::delivery::Consumer),
}

impl Asker {
    pub fn grant(&self) -> ProcessorGrant {
        match self {
            Self::Processor(p) => p.grant(),
            Self::Consumer(c) => ProcessorGrant {
                purposes: c.purposes.clone(),
                fields: c.fields.clone(),
                location: c.location,
            },
        }
    }

    pub fn is_enabled(&self) -> bool {
        match self {
            Self::Processor(p) => p.disabled_at.is_none(),
            Self::Consumer(c) => c.is_enabled(),
        }
    }
}

/// One decision, to log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionRecord {
    pub decision_id: Uuid,
    pub decided_at: DateTime<Utc>,
    pub processor_id: String,
    pub token_id: Uuid,
    pub customer_id: CustomerId,
    pub purpose: Purpose,
    pub tiers: Vec<String>,
    pub answers: Vec<FieldAnswer>,
    /// Whether some field was allowed.
    pub allowed: bool,
    pub basis: Option<LegalBasis>,
    pub basis_event_id: Option<EventId>,
    pub basis_version: Option<u64>,
    pub stream_version: u64,
    pub policy_version: String,
    pub token_expires_at: Option<DateTime<Utc>>,
}

/// A logged decision, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub decision: DecisionRecord,
}

/// Which decisions to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    pub customer: Option<CustomerId>,
    pub processor: Option<String>,
    /// Decided at or after.
    pub since: Option<DateTime<Utc>>,
    /// Decided before.
    pub until: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "decision_id, decided_at, processor_id, token_id, customer_id, purpose, tiers, answers, allowed, basis, basis_event_id, basis_version, stream_version, policy_version, token_expires_at";
const COLUMN_COUNT: usize = 15;
const PROCESSOR_COLUMNS: &str =
    "processor_id, purposes, fields, region, transfer_basis, created_at, disabled_at";

/// The processor registry and the decision log of one database.
#[derive(Debug, Clone)]
pub struct Decisions {
    db: Db,
    /// Holds enabled askers (see [`crate::token_cache`]).
    cache: Arc<crate::token_cache::TokenCache>,
}

impl Decisions {
    pub(crate) fn new(db: Db, cache: Arc<crate::token_cache::TokenCache>) -> Self {
        Self { db, cache }
    }

    /// Registers a processor, unless its id is taken by a processor or a consumer.
    pub async fn register_processor(
        &self,
        new: NewProcessor,
        now: DateTime<Utc>,
    ) -> Result<Processor, RegisterProcessorError> {
        let processor = Processor {
            id: new.id,
            purposes: new.purposes,
            fields: new.fields,
            location: new.location,
            created_at: truncate_to_micros(now),
            disabled_at: None,
        };
        let mut tx = self.db.begin().await?;
        // Consumers are registered under the same write lock (SQLite) or the primary key
        // (PostgreSQL) check below; a consumer registered concurrently under the same id is
        // the one race this leaves, and registering is an operator's act.
        let taken = sql("SELECT 1 AS one FROM consumers WHERE consumer_id = $1")
            .bind(processor.id.as_str())
            .fetch_optional(&mut tx)
            .await?
            .is_some();
        let inserted = if taken {
            0
        } else {
            sql(
                "INSERT INTO processors (processor_id, purposes, fields, region, transfer_basis, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (processor_id) DO NOTHING",
            )
            .bind(processor.id.as_str())
            .bind(serde_json::to_string(&processor.purposes).map_err(StoreError::from)?)
            .bind(serde_json::to_string(&processor.fields).map_err(StoreError::from)?)
            .bind(processor.location.region().map(|r| r.as_str()))
            .bind(processor.location.transfer_basis().map(|b| b.as_str()))
            .bind(processor.created_at)
            .execute(&mut tx)
            .await?
        };
        if inserted == 0 {
            return Err(RegisterProcessorError::Exists(processor.id));
        }
        tx.commit().await?;
        Ok(processor)
    }

    /// Every processor registered to ask (consumers aside), disabled ones included, by id.
    pub async fn processors(&self) -> Result<Vec<Processor>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(PROCESSOR_COLUMNS)
            .push(" FROM processors ORDER BY processor_id");
        q.fetch_all(&self.db).await?.iter().map(processor).collect()
    }

    pub async fn processor(&self, id: &str) -> Result<Option<Processor>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(PROCESSOR_COLUMNS)
            .push(" FROM processors WHERE processor_id = ")
            .push_bind(id);
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(processor)
            .transpose()
    }

    /// Whether `id` names a processor registered to ask (for the consumer registry, which
    /// shares the namespace).
    pub async fn is_processor(&self, id: &str) -> Result<bool, StoreError> {
        Ok(
            sql("SELECT 1 AS one FROM processors WHERE processor_id = $1")
                .bind(id)
                .fetch_optional(&self.db)
                .await?
                .is_some(),
        )
    }

    /// Stops the processor's decisions (they answer 403 from then on: in this process at
    /// once, in others within the token cache's bound); disabling twice keeps the first time.
    /// False if no such processor.
    pub async fn disable_processor(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let found = sql(
            "UPDATE processors SET disabled_at = COALESCE(disabled_at, $2) WHERE processor_id = $1",
        )
        .bind(id)
        .bind(truncate_to_micros(now))
        .execute(&mut tx)
        .await?;
        crate::token_cache::announce(&mut tx, id).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(found > 0)
    }

    /// The processor or consumer `id` names, for a decision: an enabled one from the token
    /// cache when it holds it.
    pub async fn asker(&self, id: &str) -> Result<Option<Asker>, StoreError> {
        if let Some(asker) = self.cache.asker(id) {
            return Ok(Some(asker));
        }
        let epoch = self.cache.epoch();
        let found = match self.processor(id).await? {
            Some(p) => Some(Asker::Processor(p)),
            None => match ConsumerId::parse(id) {
                Ok(consumer) => {
                    crate::delivery::Deliveries::new(self.db.clone(), self.cache.clone())
                        .consumer(&consumer)
                        .await?
                        .map(Asker::Consumer)
                }
                Err(_) => None,
            },
        };
        if let Some(asker) = &found {
            self.cache.insert_asker(id, asker, epoch);
        }
        Ok(found)
    }

    /// Logs decisions in one transaction, in as few statements as the engine's parameter
    /// limit allows. Called before the answers leave: what cannot be logged is not answered.
    /// Concurrent questions share commits through [`DecisionLog`].
    pub async fn record(&self, decisions: &[&DecisionRecord]) -> Result<(), StoreError> {
        let per_statement = self.db.rows_per_statement(COLUMN_COUNT);
        match decisions.len() {
            0 => Ok(()),
            // One statement commits on its own: no transaction's round trips.
            n if n <= per_statement => insert_decisions(self.db.engine(), decisions)?
                .execute(&self.db)
                .await
                .map(drop),
            _ => {
                let mut tx = self.db.begin().await?;
                for chunk in decisions.chunks(per_statement) {
                    insert_decisions(self.db.engine(), chunk)?
                        .execute(&mut tx)
                        .await?;
                }
                tx.commit().await
            }
        }
    }

    /// A page of the log, oldest first, after `after`.
    pub async fn list(
        &self,
        filter: &DecisionFilter,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Page<DecisionEntry>, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut q = sql("SELECT seq, ");
        q.push(COLUMNS)
            .push(" FROM decisions WHERE seq > ")
            .push_bind(after.unwrap_or(0));
        if let Some(c) = filter.customer {
            q.push(" AND customer_id = ").push_bind(c.as_uuid());
        }
        if let Some(p) = &filter.processor {
            q.push(" AND processor_id = ").push_bind(p.as_str());
        }
        if let Some(since) = filter.since {
            q.push(" AND decided_at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            q.push(" AND decided_at < ").push_bind(until);
        }
        q.push(" ORDER BY seq LIMIT ").push_bind(limit);
        let items = q
            .fetch_all(&self.db)
            .await?
            .iter()
            .map(entry)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(items, limit, |d| d.seq))
    }

    /// The customer's `limit` latest decisions, newest first.
    pub async fn latest(
        &self,
        customer: CustomerId,
        limit: u32,
    ) -> Result<Vec<DecisionEntry>, StoreError> {
        let mut q = sql("SELECT seq, ");
        q.push(COLUMNS)
            .push(" FROM decisions WHERE customer_id = ")
            .push_bind(customer.as_uuid())
            .push(" ORDER BY seq DESC LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db).await?.iter().map(entry).collect()
    }

    /// Deletes (or, for a dry run, counts) the decisions logged before `before`.
    pub async fn expire_decisions(
        &self,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        crate::sql::count_or_delete(
            &self.db,
            dry_run,
            "decisions WHERE decided_at < $1",
            [Arg::from(before)],
        )
        .await
    }
}

/// One `INSERT` of `chunk` into the decision log.
fn insert_decisions(
    engine: crate::sql::Engine,
    chunk: &[&DecisionRecord],
) -> Result<crate::sql::Sql, StoreError> {
    let mut rows = Vec::with_capacity(chunk.len());
    for d in chunk {
        rows.push(vec![
            Arg::from(d.decision_id),
            Arg::from(truncate_to_micros(d.decided_at)),
            Arg::from(d.processor_id.as_str()),
            Arg::from(d.token_id),
            Arg::from(d.customer_id.as_uuid()),
            Arg::from(d.purpose.as_str()),
            Arg::from(serde_json::to_string(&d.tiers)?),
            Arg::from(serde_json::to_string(&d.answers)?),
            Arg::from(d.allowed),
            Arg::from(d.basis.map(|b| b.as_str())),
            Arg::from(d.basis_event_id.map(|e| e.as_uuid())),
            Arg::from(
                d.basis_version
                    .map(|v| i64::try_from(v).unwrap_or(i64::MAX)),
            ),
            Arg::from(d.stream_version),
            Arg::from(d.policy_version.as_str()),
            Arg::from(d.token_expires_at.map(truncate_to_micros)),
        ]);
    }
    let mut q = sql("INSERT INTO decisions (");
    q.push(COLUMNS).push(") ").push_values(engine, rows, |r| r);
    Ok(q)
}

/// The `region` and `transfer_basis` columns of a processor's or consumer's row (`what`
/// names it in an integrity error).
pub(crate) fn location(row: &Row, what: &str) -> Result<Location, StoreError> {
    let bad = |e: ValueError| StoreError::Integrity(format!("stored {what}: {e}"));
    let region: Option<String> = row.try_get("region")?;
    let basis: Option<String> = row.try_get("transfer_basis")?;
    Location::new(
        region
            .as_deref()
            .map(CountryCode::parse)
            .transpose()
            .map_err(bad)?,
        basis
            .as_deref()
            .map(TransferBasis::parse)
            .transpose()
            .map_err(bad)?,
    )
    .map_err(bad)
}

fn processor(row: &Row) -> Result<Processor, StoreError> {
    let id: String = row.try_get("processor_id")?;
    let bad = |e: ValueError| StoreError::Integrity(format!("stored processor {id}: {e}"));
    Ok(Processor {
        id: ProcessorId::parse(&id).map_err(bad)?,
        purposes: serde_json::from_str(&row.try_get::<String>("purposes")?)?,
        fields: serde_json::from_str(&row.try_get::<String>("fields")?)?,
        location: location(row, &format!("processor {id}"))?,
        created_at: row.try_get("created_at")?,
        disabled_at: row.try_get("disabled_at")?,
    })
}

fn entry(row: &Row) -> Result<DecisionEntry, StoreError> {
    let seq = row.get_u64("seq")?;
    let bad = |e: String| StoreError::Integrity(format!("stored decision {seq}: {e}"));
    let basis: Option<String> = row.try_get("basis")?;
    let basis_version: Option<i64> = row.try_get("basis_version")?;
    let event: Option<Uuid> = row.try_get("basis_event_id")?;
    Ok(DecisionEntry {
        seq,
        decision: DecisionRecord {
            decision_id: row.try_get("decision_id")?,
            decided_at: row.try_get("decided_at")?,
            processor_id: row.try_get("processor_id")?,
            token_id: row.try_get("token_id")?,
            customer_id: customer_id(row.try_get("customer_id")?)?,
            purpose: Purpose::parse(&row.try_get::<String>("purpose")?)
                .map_err(|e| bad(e.to_string()))?,
            tiers: serde_json::from_str(&row.try_get::<String>("tiers")?)
                .map_err(|e| bad(e.to_string()))?,
            answers: serde_json::from_str(&row.try_get::<String>("answers")?)
                .map_err(|e| bad(e.to_string()))?,
            allowed: row.try_get("allowed")?,
            basis: basis
                .as_deref()
                .map(LegalBasis::parse)
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            basis_event_id: event.map(EventId::from_uuid),
            basis_version: basis_version.map(|v| u64::try_from(v).unwrap_or_default()),
            stream_version: row.get_u64("stream_version")?,
            policy_version: row.try_get("policy_version")?,
            token_expires_at: row.try_get("token_expires_at")?,
        },
    })
}

/// The most decisions one group commit takes: the rest wait for the next.
const GROUP_ROWS: usize = 5_000;

/// The decision log's writer. A question that finds the log idle writes its decisions itself,
/// at once: handing them to another task costs two wake-ups, more than the write on a lightly
/// loaded server. Questions that arrive while a write is in progress queue, and are written
/// together — one commit, one fsync — as soon as it ends, still before any of their answers
/// leaves.
#[derive(Debug, Clone)]
pub struct DecisionLog {
    decisions: Decisions,
    group: Arc<Mutex<Group>>,
}

#[derive(Debug, Default)]
struct Group {
    /// A write is in progress; whoever ends it starts the next for what queued meanwhile.
    writing: bool,
    queued: Vec<LogJob>,
}

#[derive(Debug)]
struct LogJob {
    records: Vec<DecisionRecord>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl DecisionLog {
    pub fn new(decisions: Decisions) -> Self {
        Self {
            decisions,
            group: Arc::new(Mutex::new(Group::default())),
        }
    }

    /// Logs `records`, committed when this returns `Ok`.
    pub async fn record(&self, records: Vec<DecisionRecord>) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let queued = {
            let mut group = self.lock();
            if group.writing {
                let (done, answer) = oneshot::channel();
                group.queued.push(LogJob { records, done });
                Err(answer)
            } else {
                group.writing = true;
                Ok(records)
            }
        };
        let records = match queued {
            Ok(records) => records,
            Err(answer) => return answer.await.map_err(|_| StoreError::WriterGone)?,
        };
        // Hands what queued on when this write ends, also if this future is dropped mid-way.
        let _turn = Turn(self);
        let refs: Vec<&DecisionRecord> = records.iter().collect();
        self.decisions.record(&refs).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Group> {
        self.group.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The log's turn to write, held by the writer; when it ends, the questions that queued
/// meanwhile (up to [`GROUP_ROWS`] decisions) are written by a task of their own, or the log
/// is idle again.
struct Turn<'a>(&'a DecisionLog);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let log = self.0;
        let mut group = log.lock();
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !group.queued.is_empty() => runtime,
            // Nothing waits; or the runtime is shutting down, and the queued questions'
            // senders drop with them: they are answered `WriterGone`, never left waiting.
            _ => {
                group.queued.clear();
                group.writing = false;
                return;
            }
        };
        let mut rows = 0;
        let take = group
            .queued
            .iter()
            .take_while(|job| {
                let more = rows < GROUP_ROWS;
                rows += job.records.len();
                more
            })
            .count();
        let jobs: Vec<LogJob> = group.queued.drain(..take).collect();
        drop(group);
        runtime.spawn(write_queued(log.clone(), jobs));
    }
}

/// Commits `group` at once and answers each question. A group that fails is retried question
/// by question, so that each gets its own outcome rather than a neighbour's.
async fn write_queued(log: DecisionLog, mut group: Vec<LogJob>) {
    let _turn = Turn(&log);
    let all: Vec<&DecisionRecord> = group.iter().flat_map(|j| &j.records).collect();
    let outcome = log.decisions.record(&all).await;
    drop(all);
    match outcome {
        Ok(()) => {
            for job in group {
                let _gone = job.done.send(Ok(()));
            }
        }
        Err(e) if group.len() == 1 => {
            if let Some(job) = group.pop() {
                let _gone = job.done.send(Err(e));
            }
        }
        Err(_) => {
            for job in group {
                let refs: Vec<&DecisionRecord> = job.records.iter().collect();
                let alone = log.decisions.record(&refs).await;
                let _gone = job.done.send(alone);
            }
        }
    }
}
