//! `Ledger::rebuild`: every customer's projection, blind-index rows and stream snapshots
//! checked against the fold of their stream, and what differs rewritten.
//!
//! The log is walked stream by stream (customer, then stream version), a key range a page,
//! up to the head it had when the rebuild started, so memory holds one page of events and the
//! states of the customers in it, never the whole log. While one page's customers are
//! decoded, folded and compared — on every core, each part a different set of customers —
//! the next page is read.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use idledger_domain::lookup::LookupKey;
use idledger_domain::policy::Policy;
use idledger_domain::state::{CustomerState, FOLD_VERSION, evolve, evolve_unreadable};
use uuid::Uuid;

use super::{Ledger, ProgressFn, RebuildReport, decode, stored_in_clear};
use crate::crypto::{DataKey, KeyEncryptionKey};
use crate::error::StoreError;
use crate::log::{EventLog, Repair, StoredSnapshot};
use crate::model::{ProjectionRow, RawEvent, from_micros, micros};
use crate::{projection, snapshots};

/// Events per page of the walk.
const STREAM_PAGE: u32 = 10_000;
/// Passes over customers that kept moving on while they were checked, before giving up.
const MOVED_PASSES: u32 = 8;
/// Customers listed in the report as differing, at most.
const LISTED: usize = 20;

impl Ledger {
    /// Re-creates every customer's projection rows, blind-index rows and stream snapshots
    /// from the log and reports whether the projection equals what was there. Only what
    /// differs is rewritten, each page's in one transaction that holds off appends; a
    /// customer whose stream moved on since it was folded is folded again, whole.
    pub async fn rebuild(&self, progress: ProgressFn<'_>) -> Result<RebuildReport, StoreError> {
        let head = self.inner.log.head_position().await?;
        let mut tally = Tally::default();
        let mut pages = StreamPages {
            log: self.inner.log.clone(),
            up_to: head,
            cursor: None,
            carry: Vec::new(),
            exhausted: false,
        };
        let mut next = pages.next().await?;
        while let Some(batch) = next {
            let events = batch.len() as u64;
            let (fetched, checked) = tokio::join!(pages.next(), self.check(batch, &mut tally));
            checked?;
            tally.events += events;
            progress(tally.events, head.max(tally.events));
            next = fetched?;
        }
        for _ in 0..MOVED_PASSES {
            if tally.moved.is_empty() {
                break;
            }
            let mut batch = Vec::new();
            for customer in std::mem::take(&mut tally.moved) {
                batch.extend(self.inner.log.stream(customer, None, None).await?);
            }
            self.check(batch, &mut tally).await?;
        }
        if !tally.moved.is_empty() {
            return Err(StoreError::Integrity(format!(
                "{} customers kept changing while the rebuild checked them; run it again",
                tally.moved.len()
            )));
        }
        self.remove_orphans(&mut tally).await?;
        if tally.wrote {
            // Rows rewritten under the same versions: nothing cached from before stands.
            self.inner.states.clear();
        }
        Ok(RebuildReport {
            events: tally.events,
            customers: tally.customers,
            rows: tally.rows,
            identical: tally.differing.is_empty(),
            differing_customers: tally.differing.iter().take(LISTED).copied().collect(),
            differing_count: tally.differing.len() as u64,
            resealed_count: tally.resealed,
            reindexed_count: tally.reindexed,
            snapshots_repaired: tally.snapshots_repaired,
        })
    }

    /// Checks the customers whose whole streams `batch` holds (in customer and stream order)
    /// and rewrites what differs.
    async fn check(&self, batch: Vec<RawEvent>, tally: &mut Tally) -> Result<(), StoreError> {
        let mut customers: Vec<Uuid> = batch.iter().map(|e| e.customer_id).collect();
        customers.dedup();
        let (wrapped, live, lookup, stored) = tokio::try_join!(
            self.inner.log.data_keys(&customers),
            self.inner.log.projections_of(&customers),
            self.inner.log.lookup_of(&customers),
            self.inner.log.snapshots_of(&customers),
        )?;
        let wrapped: HashMap<Uuid, Vec<u8>> = wrapped.into_iter().collect();
        let keyless: Vec<Uuid> = customers
            .iter()
            .filter(|c| !wrapped.contains_key(c))
            .copied()
            .collect();
        let erased: HashMap<Uuid, DateTime<Utc>> = if keyless.is_empty() {
            HashMap::new()
        } else {
            self.inner
                .log
                .erasures(&keyless)
                .await?
                .into_iter()
                .map(|raw| (raw.customer_id, from_micros(raw.recorded_at_micros)))
                .collect()
        };
        // Events a survivor sealed for a record merged into it open with that record's key;
        // `None`: erased since, and they are unreadable as its own events would be.
        let mut owners: Vec<Uuid> = batch
            .iter()
            .filter_map(|e| e.key_owner)
            .filter(|o| !wrapped.contains_key(o))
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let mut owner_keys: HashMap<Uuid, Option<Vec<u8>>> =
            wrapped.iter().map(|(c, w)| (*c, Some(w.clone()))).collect();
        if !owners.is_empty() {
            for (owner, key) in self.inner.log.data_keys(&owners).await? {
                owner_keys.insert(owner, Some(key));
            }
            let keyless: Vec<Uuid> = owners
                .iter()
                .filter(|o| !owner_keys.contains_key(o))
                .copied()
                .collect();
            let erasures = self.inner.log.erasures(&keyless).await?;
            for raw in &erasures {
                owner_keys.insert(raw.customer_id, None);
            }
            if let Some(lost) = keyless.iter().find(|o| !owner_keys.contains_key(o)) {
                return Err(StoreError::Integrity(format!(
                    "customer {lost} seals events in another stream but has no data key"
                )));
            }
        }
        let mut inputs: HashMap<Uuid, CustomerInput> = HashMap::new();
        for raw in batch {
            let id = raw.customer_id;
            let input = inputs
                .entry(id)
                .or_insert_with(|| CustomerInput::new(id, &wrapped, &erased));
            if let Some(owner) = raw.key_owner.filter(|o| *o != id)
                && let Some(key) = owner_keys.get(&owner)
            {
                input.owners.insert(owner, key.clone());
            }
            input.events.push(raw);
        }
        for (customer, row) in live {
            if let Some(input) = inputs.get_mut(&customer) {
                input.live.push(row);
            }
        }
        for (customer, digest) in lookup {
            if let Some(input) = inputs.get_mut(&customer) {
                input.lookup.push(digest);
            }
        }
        for snapshot in stored {
            if let Some(input) = inputs.get_mut(&snapshot.customer_id) {
                input.snapshots.push(snapshot);
            }
        }
        let checks = self
            .check_in_parallel(inputs.into_values().collect())
            .await?;
        self.apply(checks, tally).await
    }

    /// [`check_customer`] over every core: the customers split in parts of about as many
    /// events each, one blocking task per part.
    async fn check_in_parallel(
        &self,
        mut inputs: Vec<CustomerInput>,
    ) -> Result<Vec<CustomerCheck>, StoreError> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let total: usize = inputs.iter().map(|i| i.events.len()).sum();
        let share = total.div_ceil(cores).max(1);
        let mut parts: Vec<Vec<CustomerInput>> = Vec::new();
        let mut part = Vec::new();
        let mut size = 0;
        inputs.sort_unstable_by_key(|i| i.id);
        for input in inputs {
            size += input.events.len();
            part.push(input);
            if size >= share {
                parts.push(std::mem::take(&mut part));
                size = 0;
            }
        }
        if !part.is_empty() {
            parts.push(part);
        }
        let context = Arc::new(CheckContext {
            master: self.inner.master.clone(),
            lookup_key: self.inner.lookup_key.clone(),
            policy: self.inner.policy.clone(),
        });
        let tasks: Vec<_> = parts
            .into_iter()
            .map(|part| {
                let context = context.clone();
                tokio::task::spawn_blocking(move || {
                    part.into_iter()
                        .map(|input| check_customer(&context, input))
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut out = Vec::new();
        for task in tasks {
            let checked = task
                .await
                .map_err(|e| StoreError::Integrity(format!("a rebuild task failed: {e}")))?;
            out.extend(checked?);
        }
        Ok(out)
    }

    /// Writes what the checks found, and counts it.
    async fn apply(&self, checks: Vec<CustomerCheck>, tally: &mut Tally) -> Result<(), StoreError> {
        let mut repair = Repair::default();
        for check in &checks {
            if !check.needs_repair() {
                continue;
            }
            repair.customers.push((check.id, check.version));
            if let Some(rows) = &check.rewrite {
                repair.projections.push(check.id);
                repair
                    .rows
                    .extend(rows.iter().map(|row| (check.id, row.clone())));
            }
            if let Some(digests) = &check.index {
                repair.lookup.push((check.id, digests.clone()));
            }
            repair
                .snapshot_upserts
                .extend(check.snapshot_upserts.iter().cloned());
            repair
                .snapshot_deletes
                .extend(check.snapshot_deletes.iter().map(|v| (check.id, *v)));
        }
        let moved = if repair.is_empty() {
            Vec::new()
        } else {
            tally.wrote = true;
            self.inner.log.repair(&repair).await?
        };
        for check in checks {
            // Snapshot repairs stand whether or not the customer moved on.
            tally.snapshots_repaired +=
                (check.snapshot_upserts.len() + check.snapshot_deletes.len()) as u64;
            if moved.contains(&check.id) {
                tally.moved.push(check.id);
                continue;
            }
            tally.customers += 1;
            tally.rows += check.rows;
            match check.comparison {
                Comparison::Same => {}
                Comparison::OldForm => tally.resealed += 1,
                Comparison::Differs => tally.differing.push(check.id),
            }
            tally.reindexed += u64::from(check.index.is_some());
        }
        Ok(())
    }

    /// Rows of customers the log does not know: projection rows (counted as differing),
    /// blind-index rows (reindexed) and snapshots (repaired), all deleted.
    async fn remove_orphans(&self, tally: &mut Tally) -> Result<(), StoreError> {
        let orphans = self.inner.log.orphans().await?;
        if orphans.is_empty() {
            return Ok(());
        }
        let (live, lookup, stored) = tokio::try_join!(
            self.inner.log.projections_of(&orphans),
            self.inner.log.lookup_of(&orphans),
            self.inner.log.snapshots_of(&orphans),
        )?;
        let mut repair = Repair {
            customers: orphans.iter().map(|c| (*c, 0)).collect(),
            projections: orphans.clone(),
            ..Repair::default()
        };
        let mut indexed: Vec<Uuid> = lookup.into_iter().map(|(c, _)| c).collect();
        indexed.sort_unstable();
        indexed.dedup();
        repair.lookup = indexed.iter().map(|c| (*c, Vec::new())).collect();
        repair.snapshot_deletes = stored
            .iter()
            .map(|s| (s.customer_id, s.stream_version))
            .collect();
        let mut projected: Vec<Uuid> = live.into_iter().map(|(c, _)| c).collect();
        projected.sort_unstable();
        projected.dedup();
        tally.wrote = true;
        let moved = self.inner.log.repair(&repair).await?;
        // A customer whose first events arrived since: their append wrote their rows.
        tally
            .differing
            .extend(projected.iter().filter(|c| !moved.contains(c)));
        tally.reindexed += indexed.iter().filter(|c| !moved.contains(c)).count() as u64;
        tally.snapshots_repaired += repair.snapshot_deletes.len() as u64;
        Ok(())
    }
}

/// What a rebuild has found so far.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    customers: u64,
    rows: u64,
    differing: Vec<Uuid>,
    resealed: u64,
    reindexed: u64,
    snapshots_repaired: u64,
    /// Customers whose streams moved on after they were folded: checked again.
    moved: Vec<Uuid>,
    wrote: bool,
}

/// The log's whole streams, a page at a time, up to a position.
struct StreamPages {
    log: EventLog,
    up_to: u64,
    cursor: Option<(Uuid, u64)>,
    /// Events read of a stream that may go on in the next page.
    carry: Vec<RawEvent>,
    exhausted: bool,
}

impl StreamPages {
    /// The events of the next whole streams (at least one), in customer and stream order;
    /// `None` at the end.
    async fn next(&mut self) -> Result<Option<Vec<RawEvent>>, StoreError> {
        loop {
            if self.exhausted {
                return Ok((!self.carry.is_empty()).then(|| std::mem::take(&mut self.carry)));
            }
            let page = self
                .log
                .read_streams(self.cursor, self.up_to, STREAM_PAGE)
                .await?;
            if let Some(last) = page.last() {
                self.cursor = Some((last.customer_id, last.stream_version));
            }
            self.exhausted = page.len() < STREAM_PAGE as usize;
            self.carry.extend(page);
            if self.exhausted {
                continue;
            }
            // The page's last stream may go on in the next one: kept back until it ends.
            let Some(last) = self.carry.last().map(|e| e.customer_id) else {
                continue;
            };
            let Some(split) = self.carry.iter().rposition(|e| e.customer_id != last) else {
                continue;
            };
            let rest = self.carry.split_off(split + 1);
            return Ok(Some(std::mem::replace(&mut self.carry, rest)));
        }
    }
}

/// What checking a customer needs besides their events, shared by the parallel parts.
struct CheckContext {
    master: Arc<dyn KeyEncryptionKey>,
    lookup_key: Arc<LookupKey>,
    policy: Arc<Policy>,
}

/// One customer's whole stream and what is stored for them.
struct CustomerInput {
    id: Uuid,
    events: Vec<RawEvent>,
    wrapped: Option<Vec<u8>>,
    erased_at: Option<DateTime<Utc>>,
    live: Vec<ProjectionRow>,
    lookup: Vec<Vec<u8>>,
    snapshots: Vec<StoredSnapshot>,
    /// The wrapped keys of the other customers some of these events are sealed for (`None`:
    /// erased).
    owners: HashMap<Uuid, Option<Vec<u8>>>,
}

impl CustomerInput {
    fn new(
        id: Uuid,
        wrapped: &HashMap<Uuid, Vec<u8>>,
        erased: &HashMap<Uuid, DateTime<Utc>>,
    ) -> Self {
        Self {
            id,
            events: Vec::new(),
            wrapped: wrapped.get(&id).cloned(),
            erased_at: erased.get(&id).copied(),
            live: Vec::new(),
            lookup: Vec::new(),
            snapshots: Vec::new(),
            owners: HashMap::new(),
        }
    }
}

/// What checking a customer found.
struct CustomerCheck {
    id: Uuid,
    /// The stream version the customer was folded to.
    version: u64,
    rows: u64,
    comparison: Comparison,
    /// The sealed rows to write, when the projection differs or is still in the clear.
    rewrite: Option<Vec<ProjectionRow>>,
    /// The digests to write, when the blind-index rows are not those of the record.
    index: Option<Vec<[u8; 32]>>,
    snapshot_upserts: Vec<StoredSnapshot>,
    /// Versions of stored snapshots no fold gives (or of an erased customer).
    snapshot_deletes: Vec<u64>,
}

impl CustomerCheck {
    fn needs_repair(&self) -> bool {
        self.rewrite.is_some()
            || self.index.is_some()
            || !self.snapshot_upserts.is_empty()
            || !self.snapshot_deletes.is_empty()
    }
}

/// Folds one customer's stream and compares what is stored for them with it.
fn check_customer(
    context: &CheckContext,
    input: CustomerInput,
) -> Result<CustomerCheck, StoreError> {
    let id = input.id;
    let key: Option<DataKey> = input
        .wrapped
        .as_ref()
        .map(|wrapped| context.master.unwrap_key(wrapped, id))
        .transpose()?;
    let mut owner_keys: HashMap<Uuid, Option<DataKey>> = HashMap::new();
    for (owner, wrapped) in &input.owners {
        let key = wrapped
            .as_ref()
            .map(|w| context.master.unwrap_key(w, *owner))
            .transpose()?;
        owner_keys.insert(*owner, key);
    }
    let mut state = CustomerState::default();
    // The latest `recorded_at` so far: a snapshot's `covers_until`.
    let mut covers_until = i64::MIN;
    let mut due: Vec<(i64, CustomerState)> = Vec::new();
    for raw in &input.events {
        let sealed_for_other = raw.key_owner.filter(|o| *o != id);
        state = if stored_in_clear(&raw.event_type) {
            evolve(state, &decode(raw, None)?.envelope)
        } else if let Some(owner) = sealed_for_other {
            match owner_keys.get(&owner) {
                Some(Some(owner_key)) => evolve(state, &decode(raw, Some(owner_key))?.envelope),
                // Its owner was erased: that record's data, gone with it.
                Some(None) => evolve_unreadable(
                    state,
                    raw.stream_version,
                    &raw.event_type,
                    from_micros(raw.recorded_at_micros),
                ),
                None => {
                    return Err(StoreError::Integrity(format!(
                        "customer {owner} has no data key"
                    )));
                }
            }
        } else if let Some(key) = &key {
            evolve(state, &decode(raw, Some(key))?.envelope)
        } else if input.erased_at.is_some() {
            // The customer's erasure, later in the stream, clears all but this.
            evolve_unreadable(
                state,
                raw.stream_version,
                &raw.event_type,
                from_micros(raw.recorded_at_micros),
            )
        } else {
            return Err(StoreError::Integrity(format!(
                "customer {id} has no data key"
            )));
        };
        covers_until = covers_until.max(raw.recorded_at_micros);
        if key.is_some() && snapshots::due(state.stream_version, &state) {
            due.push((covers_until, state.clone()));
        }
    }

    let rebuilt = projection::rows(&state)?;
    let mut live = input.live;
    live.sort();
    let comparison = compare(
        id,
        (!live.is_empty()).then_some(&live),
        &rebuilt,
        key.as_ref(),
    );
    let rewrite = match comparison {
        Comparison::Same => None,
        Comparison::OldForm | Comparison::Differs => {
            Some(projection::seal(id, rebuilt.clone(), key.as_ref())?)
        }
    };

    let expected = context
        .lookup_key
        .index_digests(&state, context.policy.secondary_rule());
    let mut held = input.lookup;
    held.sort_unstable();
    let index = held
        .iter()
        .map(Vec::as_slice)
        .ne(expected.iter().map(<[u8; 32]>::as_slice))
        .then_some(expected);

    let mut snapshot_upserts = Vec::new();
    for (covers_until, state) in &due {
        let version = state.stream_version;
        let stored = input.snapshots.iter().find(|s| s.stream_version == version);
        let holds = match (stored, &key) {
            (Some(stored), Some(key)) => {
                stored.fold_version == FOLD_VERSION
                    && micros(stored.covers_until) == *covers_until
                    && snapshots::open_plaintext(id, version, FOLD_VERSION, &stored.state, key)
                        .is_ok_and(|plain| serde_json::to_vec(state).is_ok_and(|s| s == plain))
            }
            _ => false,
        };
        if !holds && let Some(key) = &key {
            snapshot_upserts.push(StoredSnapshot {
                customer_id: id,
                stream_version: version,
                fold_version: FOLD_VERSION,
                covers_until: from_micros(*covers_until),
                state: snapshots::seal(id, version, FOLD_VERSION, state, key)?,
            });
        }
    }
    let snapshot_deletes = input
        .snapshots
        .iter()
        .map(|s| s.stream_version)
        .filter(|v| !due.iter().any(|(_, s)| s.stream_version == *v))
        .collect();

    Ok(CustomerCheck {
        id,
        version: state.stream_version,
        rows: rebuilt.len() as u64,
        comparison,
        rewrite,
        index,
        snapshot_upserts,
        snapshot_deletes,
    })
}

/// How a customer's live rows compare with those rebuilt from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Same,
    /// The same record, still in the clear from before sealing.
    OldForm,
    Differs,
}

/// Compares opened: sealed records differ in their nonces every time they are written. Rows
/// that cannot be opened (altered, moved from another row, plaintext under a customer row
/// that vouches for sealing) differ, and are rewritten.
fn compare(
    customer: Uuid,
    live: Option<&Vec<ProjectionRow>>,
    rebuilt: &Vec<ProjectionRow>,
    key: Option<&DataKey>,
) -> Comparison {
    let Some(live) = live else {
        return Comparison::Differs;
    };
    let Ok(opened) = projection::open(customer, live, key) else {
        return Comparison::Differs;
    };
    if projection::is_current_form(live) {
        return if &opened == rebuilt {
            Comparison::Same
        } else {
            Comparison::Differs
        };
    }
    // Rows of before sealing lack the customer row's `sealed` mark: compare what they say.
    let same = projection::state(&opened)
        .and_then(|state| projection::rows(&state))
        .is_ok_and(|rows| &rows == rebuilt);
    if same {
        Comparison::OldForm
    } else {
        Comparison::Differs
    }
}
