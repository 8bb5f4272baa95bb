//! The group commit's checks, the same for both engines. Each engine reads, in the batch's
//! transaction and under its write lock, what they need ([`BatchRead`]); [`decide`] gives
//! each append its outcome, as the append-by-append path would, and gathers the rows of
//! those that go in ([`BulkWrite`]), which the engine then writes in a few statements.

use std::collections::{BTreeMap, HashMap, HashSet};

use uuid::Uuid;

use crate::chain::{GENESIS, chained_rows};
use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest, IdempotencyRecord, RawEvent};

/// What the checks of a batch read, in its transaction.
#[derive(Debug, Default)]
pub(super) struct BatchRead {
    /// The log's head position.
    pub position: u64,
    /// The idempotency records of the batch's keys: (source, key) → (request hash, result).
    pub used: HashMap<(String, String), (Vec<u8>, String)>,
    /// Each of the batch's customers' stream head: version and hash (none: no stream yet).
    pub heads: HashMap<Uuid, (u64, Vec<u8>)>,
    /// The customers given a new data key in the batch who have one already.
    pub keyed: HashSet<Uuid>,
}

/// Every append's outcome, in order, and the rows of those appended. Every append in a batch
/// was decided on state committed before its transaction, so the outcomes are those the
/// per-append path gives: an append sees the heads and keys left by the batch's earlier ones.
pub(super) fn decide(
    batch: &[AppendRequest],
    read: BatchRead,
) -> (BulkWrite, Vec<Result<AppendOutcome, StoreError>>) {
    let BatchRead {
        mut position,
        mut used,
        mut heads,
        keyed,
    } = read;
    let mut write = BulkWrite::default();
    let mut results = Vec::with_capacity(batch.len());
    for req in batch {
        if let Some(idem) = &req.idempotency
            && let Some((request_hash, result)) = used.get(&(idem.source.clone(), idem.key.clone()))
        {
            results.push(Ok(AppendOutcome::Duplicate {
                request_hash: request_hash.clone(),
                result: result.clone(),
            }));
            continue;
        }
        let (version, prev) = heads
            .get(&req.customer_id)
            .cloned()
            .unwrap_or_else(|| (0, GENESIS.to_vec()));
        // Another writer created the customer's key since it was read: decide again.
        let key_taken = req.new_data_key.is_some()
            && (keyed.contains(&req.customer_id) || write.key_customers.contains(&req.customer_id));
        if version != req.expected_version || key_taken {
            results.push(Ok(AppendOutcome::VersionConflict));
            continue;
        }
        let rows = chained_rows(req, position, &prev);
        if let Some(last) = rows.last() {
            heads.insert(req.customer_id, (last.stream_version, last.hash.clone()));
        }
        position += rows.len() as u64;
        let positions = rows.iter().map(|r| r.global_position).collect();
        if let Some(idem) = &req.idempotency {
            used.insert(
                (idem.source.clone(), idem.key.clone()),
                (idem.request_hash.clone(), idem.result.clone()),
            );
        }
        write.add(req, rows);
        results.push(Ok(AppendOutcome::Appended { positions }));
    }
    (write, results)
}

/// The rows of a batch's successful appends, gathered for each engine to write its way.
#[derive(Debug, Default)]
pub(super) struct BulkWrite {
    pub events: Vec<RawEvent>,
    pub key_customers: Vec<Uuid>,
    pub wrapped_keys: Vec<Vec<u8>>,
    pub key_ids: Vec<String>,
    /// The net projection change per row: `None` deletes it. Appends apply in batch order.
    pub projection: BTreeMap<(Uuid, String, String), Option<String>>,
    pub idempotency: Vec<(Uuid, IdempotencyRecord)>,
    /// The blind-index rows of customers whose identifiers changed: the batch's last append
    /// of a customer says what it holds.
    pub lookup: BTreeMap<Uuid, Vec<[u8; 32]>>,
    /// Stream snapshots due: customer, stream version, fold version, sealed state.
    pub snapshots: Vec<(Uuid, i64, i64, String)>,
}

impl BulkWrite {
    fn add(&mut self, req: &AppendRequest, rows: Vec<RawEvent>) {
        self.events.extend(rows);
        if let Some(key) = &req.new_data_key {
            self.key_customers.push(req.customer_id);
            self.wrapped_keys.push(key.wrapped.clone());
            self.key_ids.push(key.key_id.clone());
        }
        for r in &req.projection.upserts {
            self.projection.insert(
                (req.customer_id, r.kind.clone(), r.key.clone()),
                Some(r.record.clone()),
            );
        }
        for (kind, key) in &req.projection.deletes {
            self.projection
                .insert((req.customer_id, kind.clone(), key.clone()), None);
        }
        if let Some(idem) = &req.idempotency {
            self.idempotency.push((req.customer_id, idem.clone()));
        }
        if let Some(digests) = &req.lookup {
            self.lookup.insert(req.customer_id, digests.clone());
        }
        for snapshot in &req.snapshots {
            self.snapshots.push((
                req.customer_id,
                i64::try_from(snapshot.stream_version).unwrap_or(i64::MAX),
                i64::from(snapshot.fold_version),
                snapshot.state.clone(),
            ));
        }
    }
}
