//! Reconciliation: proves every connected system holds what the record says, and opens sync
//! exceptions where one does not.
//!
//! - An **acks run** compares, for every enabled consumer (or one) and every field it is
//!   entitled to, the record with what the consumer acknowledged: `undelivered` (never
//!   acknowledged, older than the consumer's SLA), `stale` (an older version acknowledged),
//!   `divergent` (a different value hash at the record's version: drift), `rejected` (the
//!   consumer refused it), `withdrawal_unconfirmed` (consent stopped holding and the consumer
//!   did not confirm deleting, within its SLA). Each finding opens an exception (one open per
//!   consumer, customer, field and kind, with the evidence); open exceptions of those kinds
//!   that a run no longer finds close themselves.
//! - A **snapshot run** compares an export the consumer uploaded with the record: `missing`,
//!   `extra` (a customer or field it should not hold: unknown, erased, no entitlement, not
//!   selected), `different`, and `invalid_row`. Its full diff is kept as findings.
//!
//! Runs page through customers in id order ([`PAGE`] at a time), so memory stays bounded
//! whatever the number of customers × fields; reports keep counts and a few examples.
//!
//! Architecture invariant: entitlement is decided by `idledger_relay::entitlement`, the same
//! rules delivery uses; this crate knows no HTTP.

pub mod report;
pub mod snapshot;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;

use chrono::{DateTime, Duration, Utc};
use idledger_domain::field::FieldPath;
use idledger_domain::hashing::HashKey;
use idledger_domain::ids::CustomerId;
use idledger_domain::state::CustomerState;
use idledger_relay::entitlement;
use idledger_store::delivery::{
    AckStatus, Closing, Consumer, ConsumerFieldState, ConsumerId, ExceptionKind, NewSyncException,
    Relation,
};
use idledger_store::runs::{Finding, Run, RunKind, RunStart, RunStatus, SnapshotRow};
use idledger_store::{Deliveries, Ledger, Runs, StoreError};
use serde_json::json;
use uuid::Uuid;

pub use report::{Report, summary};
pub use snapshot::{Parsed, SnapshotError, SnapshotFormat};

use report::{ConsumerReport, SnapshotStats};

/// Customers compared per step.
pub const PAGE: u32 = 200;
/// Snapshot rows stored per batch.
const ROW_BATCH: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("no consumer '{0}' is registered")]
    UnknownConsumer(ConsumerId),
    #[error("reading the snapshot stopped: {0}")]
    Aborted(String),
    /// A run of the same consumer (or another run over every consumer) is still running.
    #[error("{}", busy_message(.0.as_ref()))]
    Busy(Option<ConsumerId>),
}

/// Whether `span` after `since` is `now` or before it; a sum beyond the calendar never is.
fn past(since: DateTime<Utc>, span: Duration, now: DateTime<Utc>) -> bool {
    since
        .checked_add_signed(span)
        .is_some_and(|until| until <= now)
}

fn busy_message(consumer: Option<&ConsumerId>) -> String {
    match consumer {
        Some(c) => format!("a reconciliation run of consumer '{c}' is running; one at a time"),
        None => "a reconciliation run over every consumer is running; one at a time".to_owned(),
    }
}

/// Marks its run failed if dropped before the run completes: a run whose task is cancelled
/// (the request carrying its upload dropped, the process stopping) does not stay `running`,
/// which would keep its consumer's next runs from starting.
struct Unfinished {
    runs: Runs,
    id: Option<Uuid>,
}

impl Unfinished {
    fn new(runs: &Runs, run: &Run) -> Self {
        Self {
            runs: runs.clone(),
            id: Some(run.id),
        }
    }

    fn completed(mut self) {
        self.id = None;
    }
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        let runs = self.runs.clone();
        // Drop cannot wait: the update goes on the runtime, if there still is one.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = runs.abandon(id, "interrupted: the run was cancelled").await {
                    tracing::warn!(run = %id, error = %e, "could not record an interrupted run");
                }
            });
        }
    }
}

/// Where a run is, for progress output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub customers: u64,
    pub findings: u64,
    /// Snapshot rows read so far (snapshot runs).
    pub rows: u64,
}

/// Runs reconciliations over one store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Reconciler {
    ledger: Ledger,
    deliveries: Deliveries,
    runs: Runs,
}

impl Reconciler {
    pub fn new(ledger: Ledger) -> Self {
        let deliveries = ledger.store().deliveries();
        let runs = ledger.store().runs();
        Self {
            ledger,
            deliveries,
            runs,
        }
    }

    pub fn runs(&self) -> &Runs {
        &self.runs
    }

    /// Records a new run (status `running`) for `consumer` (or every enabled consumer).
    pub async fn start(
        &self,
        kind: RunKind,
        consumer: Option<ConsumerId>,
        trigger: &str,
        requested_by: &str,
    ) -> Result<Run, ReconcileError> {
        if let Some(id) = &consumer
            && self.deliveries.consumer(id).await?.is_none()
        {
            return Err(ReconcileError::UnknownConsumer(id.clone()));
        }
        let run = Run {
            id: Uuid::now_v7(),
            kind,
            trigger: trigger.to_owned(),
            consumer_id: consumer,
            requested_by: requested_by.to_owned(),
            status: RunStatus::Running,
            started_at: Utc::now(),
            finished_at: None,
            report: serde_json::to_value(Report::default()).unwrap_or_default(),
            error: None,
        };
        match self.runs.start(&run).await? {
            RunStart::Started => Ok(run),
            RunStart::Busy => Err(ReconcileError::Busy(run.consumer_id)),
        }
    }

    /// Starts and completes an acks run.
    pub async fn reconcile(
        &self,
        consumer: Option<ConsumerId>,
        trigger: &str,
        requested_by: &str,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Run, ReconcileError> {
        let run = self
            .start(RunKind::Acks, consumer, trigger, requested_by)
            .await?;
        self.run_acks(run, progress).await
    }

    /// Completes a started acks run (see [`Self::start`]).
    pub async fn run_acks(
        &self,
        run: Run,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Run, ReconcileError> {
        let unfinished = Unfinished::new(&self.runs, &run);
        let result = self.compare_acks(&run, progress).await;
        let done = self.complete(run, result).await;
        unfinished.completed();
        done
    }

    /// Stores a run's outcome: its report, or its failure.
    async fn complete(
        &self,
        mut run: Run,
        result: Result<Report, ReconcileError>,
    ) -> Result<Run, ReconcileError> {
        run.finished_at = Some(Utc::now());
        match result {
            Ok(report) => {
                run.status = RunStatus::Finished;
                run.report = serde_json::to_value(&report).map_err(StoreError::from)?;
                self.runs.save(&run).await?;
                Ok(run)
            }
            Err(e) => {
                run.status = RunStatus::Failed;
                run.error = Some(e.to_string());
                if let Err(save) = self.runs.save(&run).await {
                    tracing::error!(run = %run.id, error = %save, "could not record the run's failure");
                }
                Err(e)
            }
        }
    }

    async fn consumers_of(&self, run: &Run) -> Result<Vec<Consumer>, ReconcileError> {
        Ok(match &run.consumer_id {
            Some(id) => vec![
                self.deliveries
                    .consumer(id)
                    .await?
                    .ok_or_else(|| ReconcileError::UnknownConsumer(id.clone()))?,
            ],
            None => self
                .deliveries
                .consumers()
                .await?
                .into_iter()
                .filter(Consumer::is_enabled)
                .collect(),
        })
    }

    /// Compares every consumer's acknowledged state with the record.
    async fn compare_acks(
        &self,
        run: &Run,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report, ReconcileError> {
        let consumers = self.consumers_of(run).await?;
        let mut report = Report::default();
        let mut sections: Vec<ConsumerReport> = consumers
            .iter()
            .map(|c| ConsumerReport::new(c.id.as_str(), c.sla_secs))
            .collect();
        let mut seq = 0u64;
        let mut done = Progress::default();
        let mut after = None;
        loop {
            let page = self.deliveries.customer_page(after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            let states = self.states(&page).await?;
            let now = Utc::now();
            let mut findings = Vec::new();
            for (consumer, section) in consumers.iter().zip(sections.iter_mut()) {
                let found = self
                    .compare_page(run, consumer, &page, &states, now, section)
                    .await?;
                for f in found {
                    seq += 1;
                    findings.push(Finding { seq, ..f });
                }
            }
            done.customers += page.len() as u64;
            done.findings = seq;
            self.runs.add_findings(run.id, &findings).await?;
            progress(done);
        }
        report.consumers = sections;
        report.total();
        Ok(report)
    }

    async fn states(
        &self,
        customers: &[Uuid],
    ) -> Result<HashMap<Uuid, CustomerState>, ReconcileError> {
        let mut states = HashMap::with_capacity(customers.len());
        for &uuid in customers {
            let Ok(id) = CustomerId::from_uuid(uuid) else {
                continue;
            };
            if let Some(state) = self.ledger.state(id).await? {
                states.insert(uuid, state);
            }
        }
        Ok(states)
    }

    /// One consumer over one page of customers: findings, exceptions opened for them, and
    /// exceptions of the reconciled kinds closed where the cause is gone.
    async fn compare_page(
        &self,
        run: &Run,
        consumer: &Consumer,
        page: &[Uuid],
        states: &HashMap<Uuid, CustomerState>,
        now: DateTime<Utc>,
        section: &mut ConsumerReport,
    ) -> Result<Vec<Finding>, ReconcileError> {
        let held = self
            .deliveries
            .consumer_state_of(&consumer.id, page)
            .await?;
        let mut held_by: HashMap<(Uuid, String), ConsumerFieldState> = HashMap::new();
        let mut deletion_acks: HashMap<Uuid, Vec<DateTime<Utc>>> = HashMap::new();
        for h in held {
            let customer = h.customer_id.as_uuid();
            if h.value_hash.is_none() && h.status == AckStatus::Applied {
                deletion_acks.entry(customer).or_default().push(h.acked_at);
            }
            held_by.insert((customer, h.field.clone()), h);
        }
        let relations: HashMap<Uuid, (Relation, DateTime<Utc>)> = self
            .deliveries
            .relations_since(&consumer.id, page)
            .await?
            .into_iter()
            .map(|(c, r, at)| (c, (r, at)))
            .collect();
        // At most 30 days when registered; whatever a row says, no arithmetic here panics.
        let sla = i64::try_from(consumer.sla_secs)
            .ok()
            .and_then(Duration::try_seconds)
            .unwrap_or(Duration::MAX);
        let policy = self.ledger.policy();
        let hash_key = self.ledger.hash_key(&consumer.id);
        let mut findings = Vec::new();
        for &customer in page {
            let Some(state) = states.get(&customer) else {
                continue;
            };
            // While processing is restricted nothing is delivered, so nothing is owed.
            if state.erased.is_some() || state.restricted.is_some() {
                continue;
            }
            section.customers_checked += 1;
            let basis = entitlement::basis(consumer, Some(state), policy, now);
            if !entitlement::holds(&basis) {
                if let Some((Relation::Withdrawn, since)) = relations.get(&customer) {
                    let confirmed = deletion_acks
                        .get(&customer)
                        .is_some_and(|acks| acks.iter().any(|at| at >= since));
                    if !confirmed && past(*since, sla, now) {
                        findings.push(finding(
                            consumer,
                            customer,
                            "",
                            ExceptionKind::WithdrawalUnconfirmed,
                            json!({
                                "run_id": run.id,
                                "withdrawn_since": since,
                                "sla_secs": consumer.sla_secs,
                                "basis": basis,
                            }),
                        ));
                    } else if !confirmed {
                        section.in_flight += 1;
                    }
                }
                continue;
            }
            // The SLA runs from the change, or from when the consumer became entitled.
            let entitled_since = basis.iter().filter_map(|b| b.granted_at).max();
            for (field, fact) in state.held_fields(&hash_key) {
                if !consumer.selects(&field) {
                    continue;
                }
                section.fields_checked += 1;
                let field_name = field.to_string();
                let due = past(
                    fact.changed_at
                        .max(entitled_since.unwrap_or(fact.changed_at)),
                    sla,
                    now,
                );
                let acked = held_by.get(&(customer, field_name.clone()));
                let record = json!({
                    "version": fact.version,
                    "value_hash": fact.value_hash,
                    "changed_at": fact.changed_at,
                });
                let evidence = |acked: Option<&ConsumerFieldState>| {
                    json!({
                        "run_id": run.id,
                        "record": record,
                        "consumer": acked.map(|a| json!({
                            "version": a.version,
                            "value_hash": a.value_hash,
                            "status": a.status,
                            "reason": a.reason,
                            "event_id": a.event_id,
                            "acked_at": a.acked_at,
                        })),
                        "sla_secs": consumer.sla_secs,
                    })
                };
                let kind = match acked {
                    None if fact.value_hash.is_none() => None,
                    None => Some(ExceptionKind::Undelivered),
                    Some(a)
                        if a.status == AckStatus::Applied && a.value_hash == fact.value_hash =>
                    {
                        None
                    }
                    Some(a) if a.version >= fact.version && a.status == AckStatus::Rejected => {
                        Some(ExceptionKind::Rejected)
                    }
                    Some(a) if a.version >= fact.version => Some(ExceptionKind::Divergent),
                    Some(_) => Some(ExceptionKind::Stale),
                };
                match kind {
                    None => section.in_sync += 1,
                    // Delivery takes time: only what is late is a finding.
                    Some(ExceptionKind::Undelivered | ExceptionKind::Stale) if !due => {
                        section.in_flight += 1;
                    }
                    Some(kind) => findings.push(finding(
                        consumer,
                        customer,
                        &field_name,
                        kind,
                        evidence(acked),
                    )),
                }
            }
        }
        self.settle(run, consumer, page, &findings, now, section)
            .await?;
        Ok(findings)
    }

    /// Opens an exception per finding and closes the open ones of the reconciled kinds that
    /// this run no longer finds.
    async fn settle(
        &self,
        run: &Run,
        consumer: &Consumer,
        page: &[Uuid],
        findings: &[Finding],
        now: DateTime<Utc>,
        section: &mut ConsumerReport,
    ) -> Result<(), ReconcileError> {
        let mut current = HashSet::new();
        for f in findings {
            section.count(&f.kind, &f.customer_id, &f.field, &f.detail);
            let (Ok(customer), Ok(kind)) = (
                f.customer_id.parse::<Uuid>().map(CustomerId::from_uuid),
                ExceptionKind::parse(&f.kind),
            ) else {
                continue;
            };
            let Ok(customer) = customer else { continue };
            let field = if f.field.is_empty() {
                None
            } else {
                FieldPath::parse(&f.field).ok()
            };
            let opened = self
                .deliveries
                .open_exception(&NewSyncException::new(
                    kind,
                    consumer.id.clone(),
                    customer,
                    field,
                    f.detail.clone(),
                    now,
                )?)
                .await?;
            if opened.occurrences == 1 {
                section.exceptions_opened += 1;
            }
            current.insert((f.customer_id.clone(), f.field.clone(), f.kind.clone()));
        }
        let open = self
            .deliveries
            .open_exceptions_of(&consumer.id, page, &ExceptionKind::RECONCILED)
            .await?;
        for e in open {
            let key = (
                e.customer_id.to_string(),
                e.field.clone().unwrap_or_default(),
                e.kind.as_str().to_owned(),
            );
            if current.contains(&key) {
                continue;
            }
            let closing = Closing::automatic(
                format!("reconciliation run {} no longer finds it", run.id),
                now,
            );
            if self
                .deliveries
                .close_exception(e.id, &closing)
                .await?
                .is_some()
            {
                section.exceptions_closed += 1;
            }
        }
        Ok(())
    }

    /// Starts a snapshot run for `consumer`, stores the rows read from `input` (on a blocking
    /// thread, in batches), compares them with the record, and completes the run. Rows are
    /// dropped once compared; the full diff stays as the run's findings.
    pub async fn snapshot(
        &self,
        consumer: ConsumerId,
        input: Box<dyn Read + Send>,
        format: SnapshotFormat,
        trigger: &str,
        requested_by: &str,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Run, ReconcileError> {
        let run = self
            .start(RunKind::Snapshot, Some(consumer), trigger, requested_by)
            .await?;
        self.run_snapshot(run, input, format, progress).await
    }

    /// Completes a started snapshot run (see [`Self::start`]) with the upload `input`.
    pub async fn run_snapshot(
        &self,
        run: Run,
        input: Box<dyn Read + Send>,
        format: SnapshotFormat,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Run, ReconcileError> {
        let unfinished = Unfinished::new(&self.runs, &run);
        let result = match self.load_snapshot(&run, input, format, progress).await {
            Ok((stats, invalid)) => self.compare_snapshot(&run, stats, invalid, progress).await,
            Err(e) => Err(e),
        };
        // The rows were only needed to compare; the diff is in the findings.
        let dropped = self.runs.drop_snapshot(run.id).await;
        let result = match (result, dropped) {
            (Ok(_), Err(e)) => Err(e.into()),
            (result, _) => result,
        };
        let done = self.complete(run, result).await;
        unfinished.completed();
        done
    }

    /// Reads and stores the upload; returns its stats and the invalid rows as findings.
    async fn load_snapshot(
        &self,
        run: &Run,
        input: Box<dyn Read + Send>,
        format: SnapshotFormat,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<(SnapshotStats, Vec<Finding>), ReconcileError> {
        let Some(consumer) = run.consumer_id.as_ref() else {
            return Err(ReconcileError::Aborted(
                "a snapshot run names no consumer".to_owned(),
            ));
        };
        let Some(consumer) = self.deliveries.consumer(consumer).await? else {
            return Err(ReconcileError::UnknownConsumer(consumer.clone()));
        };
        let keys = snapshot::RowKeys {
            hash: self.ledger.hash_key(&consumer.id),
            names: self.ledger.customer_names(&consumer),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Parsed>>(4);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(ROW_BATCH);
            let result = snapshot::read(input, format, &keys, |parsed| {
                batch.push(parsed);
                if batch.len() >= ROW_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(ROW_BATCH));
                    return tx.blocking_send(full).is_ok();
                }
                true
            });
            if result.is_ok() && !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            result
        });
        let consumer_id = run
            .consumer_id
            .as_ref()
            .map(|c| c.as_str().to_owned())
            .unwrap_or_default();
        let mut stats = SnapshotStats {
            format: format.as_str().to_owned(),
            ..SnapshotStats::default()
        };
        let mut invalid = Vec::new();
        let mut done = Progress::default();
        while let Some(batch) = rx.recv().await {
            let mut rows: Vec<SnapshotRow> = Vec::with_capacity(batch.len());
            for parsed in batch {
                stats.rows += 1;
                match parsed {
                    Parsed::Row(row) => rows.push(row),
                    Parsed::Invalid {
                        line,
                        customer_id,
                        field,
                        error,
                    } => {
                        stats.invalid_rows += 1;
                        // The first thousand are kept; the count covers them all.
                        if invalid.len() < 1000 {
                            invalid.push(Finding {
                                seq: 0,
                                consumer_id: consumer_id.clone(),
                                customer_id,
                                field,
                                kind: "invalid_row".to_owned(),
                                detail: json!({ "line": line, "error": error }),
                            });
                        }
                    }
                }
            }
            let stored = self.runs.add_snapshot_rows(run.id, &rows).await?;
            stats.duplicate_rows += rows.len() as u64 - stored;
            done.rows = stats.rows;
            progress(done);
        }
        match reader.await {
            Ok(Ok(())) => Ok((stats, invalid)),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ReconcileError::Aborted(e.to_string())),
        }
    }

    async fn compare_snapshot(
        &self,
        run: &Run,
        stats: SnapshotStats,
        invalid: Vec<Finding>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<Report, ReconcileError> {
        let consumers = self.consumers_of(run).await?;
        let Some(consumer) = consumers.first() else {
            return Ok(Report::default());
        };
        let mut section = ConsumerReport::new(consumer.id.as_str(), consumer.sla_secs);
        let mut seq = 0u64;
        let number = |f: Finding, seq: &mut u64, section: &mut ConsumerReport| {
            *seq += 1;
            section.count(&f.kind, &f.customer_id, &f.field, &f.detail);
            Finding { seq: *seq, ..f }
        };
        let invalid: Vec<Finding> = invalid
            .into_iter()
            .map(|f| number(f, &mut seq, &mut section))
            .collect();
        self.runs.add_findings(run.id, &invalid).await?;
        let policy = self.ledger.policy();
        let hash_key = self.ledger.hash_key(&consumer.id);
        let mut done = Progress {
            rows: stats.rows,
            ..Progress::default()
        };
        let mut after = None;
        loop {
            let page = self
                .runs
                .snapshot_customer_page(run.id, after, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(*last);
            let states = self.states(&page).await?;
            let mut rows_by: BTreeMap<Uuid, Vec<SnapshotRow>> = BTreeMap::new();
            for row in self.runs.snapshot_rows_of(run.id, &page).await? {
                rows_by.entry(row.customer_id).or_default().push(row);
            }
            let now = Utc::now();
            let mut findings = Vec::new();
            for &customer in &page {
                let rows = rows_by.remove(&customer).unwrap_or_default();
                let found = diff_customer(
                    consumer,
                    &hash_key,
                    customer,
                    states.get(&customer),
                    &rows,
                    policy,
                    now,
                    run,
                    &mut section,
                );
                findings.extend(found.into_iter().map(|f| number(f, &mut seq, &mut section)));
            }
            done.customers += page.len() as u64;
            done.findings = seq;
            self.runs.add_findings(run.id, &findings).await?;
            progress(done);
        }
        let mut report = Report {
            consumers: vec![section],
            snapshot: Some(stats),
            ..Report::default()
        };
        report.total();
        Ok(report)
    }
}

fn finding(
    consumer: &Consumer,
    customer: Uuid,
    field: &str,
    kind: ExceptionKind,
    detail: serde_json::Value,
) -> Finding {
    Finding {
        seq: 0,
        consumer_id: consumer.id.as_str().to_owned(),
        customer_id: customer.to_string(),
        field: field.to_owned(),
        kind: kind.as_str().to_owned(),
        detail,
    }
}

/// What one customer's snapshot rows say against the record.
#[expect(clippy::too_many_arguments, reason = "the comparison's whole context")]
fn diff_customer(
    consumer: &Consumer,
    hash_key: &HashKey,
    customer: Uuid,
    state: Option<&CustomerState>,
    rows: &[SnapshotRow],
    policy: &idledger_domain::policy::Policy,
    now: DateTime<Utc>,
    run: &Run,
    section: &mut ConsumerReport,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let extra = |row: &SnapshotRow, reason: &str| Finding {
        seq: 0,
        consumer_id: consumer.id.as_str().to_owned(),
        customer_id: customer.to_string(),
        field: row.field.clone(),
        kind: "extra".to_owned(),
        detail: json!({
            "run_id": run.id,
            "line": row.line,
            "reason": reason,
            "consumer_value_hash": row.value_hash,
        }),
    };
    let state = match state {
        Some(s) if s.erased.is_none() => s,
        Some(_) => {
            out.extend(rows.iter().map(|r| extra(r, "erased")));
            return out;
        }
        // An alias is only ever made for a customer the record holds, so one that decodes to
        // no customer was not made for this consumer (another's alias decodes to a well-formed
        // id about once in 64).
        None if consumer.pseudonymous => {
            out.extend(rows.iter().map(|r| Finding {
                kind: "invalid_row".to_owned(),
                detail: json!({
                    "line": r.line,
                    "error": "customer_id is not one of this consumer's customer aliases",
                }),
                ..extra(r, "")
            }));
            return out;
        }
        None => {
            out.extend(rows.iter().map(|r| extra(r, "unknown_customer")));
            return out;
        }
    };
    section.customers_checked += 1;
    let basis = entitlement::basis(consumer, Some(state), policy, now);
    if !entitlement::holds(&basis) {
        // Holding nothing of the customer is right; any value held is not.
        out.extend(
            rows.iter()
                .filter(|r| r.value_hash.is_some())
                .map(|r| extra(r, "not_entitled")),
        );
        return out;
    }
    let mut seen = HashSet::new();
    for row in rows {
        seen.insert(row.field.as_str());
        let Ok(field) = FieldPath::parse(&row.field) else {
            continue;
        };
        if !consumer.selects(&field) {
            if row.value_hash.is_some() {
                out.push(extra(row, "field_not_selected"));
            }
            continue;
        }
        section.fields_checked += 1;
        let fact = state.held(&field, hash_key);
        let record_hash = fact.as_ref().and_then(|f| f.value_hash.clone());
        if record_hash == row.value_hash {
            section.in_sync += 1;
        } else if record_hash.is_none() {
            out.push(extra(row, "no_value_in_record"));
        } else {
            out.push(Finding {
                seq: 0,
                consumer_id: consumer.id.as_str().to_owned(),
                customer_id: customer.to_string(),
                field: row.field.clone(),
                kind: "different".to_owned(),
                detail: json!({
                    "run_id": run.id,
                    "line": row.line,
                    "record": fact.map(|f| json!({"version": f.version, "value_hash": f.value_hash})),
                    "consumer_value_hash": row.value_hash,
                }),
            });
        }
    }
    for (field, fact) in state.held_fields(hash_key) {
        let name = field.to_string();
        if fact.value_hash.is_none() || !consumer.selects(&field) || seen.contains(name.as_str()) {
            continue;
        }
        section.fields_checked += 1;
        out.push(Finding {
            seq: 0,
            consumer_id: consumer.id.as_str().to_owned(),
            customer_id: customer.to_string(),
            field: name,
            kind: "missing".to_owned(),
            detail: json!({
                "run_id": run.id,
                "record": {"version": fact.version, "value_hash": fact.value_hash},
            }),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_past_the_calendar_is_never_over() {
        let now = Utc::now();
        assert!(past(
            now - Duration::seconds(10),
            Duration::seconds(10),
            now
        ));
        assert!(!past(
            now - Duration::seconds(9),
            Duration::seconds(10),
            now
        ));
        assert!(!past(now, Duration::MAX, now));
        assert!(!past(DateTime::<Utc>::MAX_UTC, Duration::seconds(1), now));
    }
}
