//! The ledger: runs commands (idempotency, decide, encrypt, append with optimistic
//! concurrency and retry), group-commits appends through one writer task, and serves the
//! reads every other component needs — decrypted, from the log or the projection.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use idledger_domain::alias::{AliasRoot, CustomerNames};
use idledger_domain::challenge::{ChallengeKey, ChallengeSecret};
use idledger_domain::command::{Command, Context, Principal};
use idledger_domain::decide::{
    Outcome, decide, decide_erasure, decide_expiry, retention_provenance,
};
use idledger_domain::delivery::ConsumerId;
use idledger_domain::event::{Event, EventEnvelope, Provenance};
use idledger_domain::field::FieldPath;
use idledger_domain::hashing::{AckKey, HashKey, HashRoot};
use idledger_domain::ids::ChallengeId;
use idledger_domain::ids::{Actor, CustomerId, EventId, IdempotencyKey, SourceId};
use idledger_domain::lookup::{Identifier, LookupKey, index_changed, match_keys};
use idledger_domain::policy::Policy;
use idledger_domain::schema::{CURRENT_SCHEMA_VERSION, EVENT_TYPES, SchemaError, StoredEvent};
use idledger_domain::state::{CustomerState, Erasure, FOLD_VERSION, evolve};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::chain::{GENESIS, LOG_GENESIS, log_hash};
use crate::checkpoints::{
    CHECKPOINT_PURPOSE, Checkpoint, CheckpointCheck, CheckpointExport, CheckpointFailure,
    SigningKeys, Trust, signed_message,
};
use crate::crypto::{DataKey, DerivationRoot, KeyEncryptionKey, MasterKey};
use crate::delivery::Consumer;
use crate::error::{ExecuteError, StoreError};
use crate::key_cache::KeyCache;
use crate::log::EventLog;
use crate::model::{
    AppendOutcome, AppendRequest, ExceptionWrite, IdempotencyRecord, LogEntry, PreparedEvent,
    ProjectionDiff, ProjectionRow, RawEvent, RecordedEvent, ShreddedEvent, WrappedKey, from_micros,
    micros,
};
use crate::projection;
use crate::snapshots;
use crate::state_cache::{CachedRecord, StateCache};
use crate::store::Store;

mod merge;
mod rebuild;
mod sealing;
pub use merge::{MergeError, MergeResult};

/// How often a command is re-decided when its customer's stream moved on underneath it.
const MAX_ATTEMPTS: u32 = 16;
/// Events per page when scanning the whole log.
const SCAN_PAGE: u32 = 10_000;
/// Tries at truncating SQLite's WAL after an erasure.
const WAL_ATTEMPTS: u32 = 5;

/// Tuning knobs.
#[derive(Debug, Clone)]
pub struct LedgerOptions {
    /// Most commands group-committed in one transaction.
    pub max_batch: usize,
    /// Commands waiting for the writer before senders wait (back-pressure).
    pub queue: usize,
    /// Unwrapped data keys kept in memory (0: none), so that a customer's commands and reads
    /// of their record do not fetch and unwrap the key each time. 32 bytes and a little
    /// bookkeeping each.
    pub key_cache: usize,
    /// Customers whose record (as stored, sealed) this process keeps after writing it, so
    /// their next command is decided without reading it (0: none). See `state_cache`.
    pub state_cache: usize,
}

impl Default for LedgerOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            queue: 4096,
            key_cache: 10_000,
            state_cache: 10_000,
        }
    }
}

/// What a command did: one outcome per change and the events it recorded. This is also what
/// a retry with the same idempotency key gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub customer_id: CustomerId,
    /// The stream's version after the command.
    pub stream_version: u64,
    pub outcomes: Vec<Outcome>,
    pub events: Vec<EventRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRef {
    pub id: EventId,
    pub stream_version: u64,
    #[serde(rename = "type")]
    pub event_type: String,
}

/// The result of [`Ledger::execute`]: the command's result, and whether it is a replay of an
/// earlier request with the same idempotency key.
#[derive(Clone, PartialEq, Eq)]
pub struct Executed {
    pub result: CommandResult,
    pub replayed: bool,
    /// The record as the command left it (`None` for a replay): what work that follows a
    /// command (duplicate detection) reads, instead of reading the record back.
    pub state: Option<Arc<CustomerState>>,
}

// By hand: the record holds personal data, which never goes into `Debug` output.
impl std::fmt::Debug for Executed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executed")
            .field("result", &self.result)
            .field("replayed", &self.replayed)
            .field("state", &self.state.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Progress of a long scan: events done out of the total.
pub type ProgressFn<'a> = &'a (dyn Fn(u64, u64) + Send + Sync);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BrokenEvent {
    pub global_position: u64,
    pub customer_id: Uuid,
    pub stream_version: u64,
    pub event_id: Uuid,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events verified before the first broken one (all of them when the log is intact).
    pub events: u64,
    pub streams: u64,
    /// The first event (in log order) whose chain does not hold; `None` = the chains hold.
    pub first_broken: Option<BrokenEvent>,
    /// Every checkpoint checked, by position: the stored ones, or an export's.
    pub checkpoints: Vec<CheckpointCheck>,
}

impl VerifyReport {
    /// The chains hold and so does every checkpoint.
    pub fn intact(&self) -> bool {
        self.first_broken.is_none() && self.checkpoints.iter().all(|c| c.failure.is_none())
    }
}

/// What [`Ledger::sign_checkpoint`] gives: the checkpoint at the head, and whether it was
/// signed now (false: the log has not grown since it was signed, here or by another process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    pub checkpoint: Checkpoint,
    pub new: bool,
}

/// The log hash of a verification pass and the checkpoints it settles.
struct Scan {
    log_hash: [u8; 32],
    /// The highest position a checkpoint held at so far.
    unchanged_up_to: u64,
    /// The first position whose event does not hold.
    first_broken: Option<u64>,
}

impl Scan {
    /// Compares the checkpoints due at `position` with the log hash there.
    fn settle(
        &mut self,
        position: u64,
        checkpoints: &[Checkpoint],
        checks: &mut [CheckpointCheck],
        due: &mut BTreeMap<u64, Vec<usize>>,
    ) {
        let Some(waiting) = due.remove(&position) else {
            return;
        };
        let mut held = false;
        for i in waiting {
            if checkpoints[i].log_hash.as_slice() == self.log_hash.as_slice()
                && self.first_broken.is_none_or(|broken| broken > position)
            {
                held = true;
            } else {
                checks[i].failure = Some(self.changed());
            }
        }
        if held {
            self.unchanged_up_to = position;
        }
    }

    /// Fails the checkpoints due before `position` that were not settled: the log has no
    /// event at their position.
    fn skip_before(
        &mut self,
        position: u64,
        checks: &mut [CheckpointCheck],
        due: &mut BTreeMap<u64, Vec<usize>>,
    ) {
        while let Some(entry) = due.first_entry() {
            if *entry.key() >= position {
                break;
            }
            for i in entry.remove() {
                checks[i].failure = Some(self.changed());
            }
        }
    }

    fn changed(&self) -> CheckpointFailure {
        CheckpointFailure::LogChanged {
            unchanged_up_to: self.unchanged_up_to,
            first_broken: self.first_broken,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebuildReport {
    pub events: u64,
    pub customers: u64,
    pub rows: u64,
    /// Whether the rebuilt projection equals what was there, compared opened: sealed records
    /// differ in their random nonces each time they are written, so what is compared is the
    /// plaintext, byte for byte. Rows still in the clear from before sealing count as equal
    /// when their content is (see `resealed_count`).
    pub identical: bool,
    /// Customers whose rows differed (at most 20 listed).
    pub differing_customers: Vec<Uuid>,
    pub differing_count: u64,
    /// Customers whose rows held what the log gives but were still in the clear, written
    /// before the projection was sealed: rewritten sealed.
    pub resealed_count: u64,
    /// Customers whose blind-index rows were not those of their record (missing, stale or
    /// extra): rewritten. 0 on a store whose index was kept in step by every append.
    pub reindexed_count: u64,
    /// Stream snapshots rewritten (missing, of another fold version, or not the fold of
    /// their events) or deleted (of a version no fold gives, or of a customer the log does
    /// not know). 0 on a store whose snapshots were written by its appends.
    pub snapshots_repaired: u64,
}

struct WriteJob {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
}

/// The event store with its command path. Cheap to clone: one reference count, since every
/// request's handler holds a copy.
#[derive(Debug, Clone)]
pub struct Ledger {
    inner: Arc<LedgerInner>,
}

#[derive(Debug)]
struct LedgerInner {
    store: Store,
    log: EventLog,
    master: Arc<dyn KeyEncryptionKey>,
    challenge_key: Arc<ChallengeKey>,
    hash_root: Arc<HashRoot>,
    alias_root: Arc<AliasRoot>,
    /// Makes the blind index's digests (a key of its own: it opens nothing).
    lookup_key: Arc<LookupKey>,
    request_key: Arc<[u8; 32]>,
    /// Seals and opens signing keys' private halves.
    signing_seal: Arc<DataKey>,
    policy: Arc<Policy>,
    writer: mpsc::Sender<WriteJob>,
    keys: Arc<KeyCache>,
    states: Arc<StateCache>,
}

impl Ledger {
    /// Opens the ledger with the store's master key: its derivation root is read (created on
    /// first use) and unwrapped with `master`. Refused while a rewrap is unfinished. Starts
    /// the writer task on the current tokio runtime. Run migrations first.
    pub async fn open(
        store: &Store,
        master: impl KeyEncryptionKey + 'static,
        policy: Policy,
        options: LedgerOptions,
    ) -> Result<Self, StoreError> {
        let root = store.keys().derivation_root(&master).await?;
        Ok(Self::with_root(
            store,
            Arc::new(master),
            &root,
            policy,
            options,
        ))
    }

    /// A ledger whose derivation root is `master` itself, without reading the store: what a
    /// store's root is until its first rewrap. For tests, benchmarks and commands that
    /// unwrap nothing; [`Ledger::open`] serves every store.
    pub fn new(store: &Store, master: MasterKey, policy: Policy, options: LedgerOptions) -> Self {
        let root = master.initial_derivation_root();
        Self::with_root(store, Arc::new(master), &root, policy, options)
    }

    fn with_root(
        store: &Store,
        master: Arc<dyn KeyEncryptionKey>,
        root: &DerivationRoot,
        policy: Policy,
        options: LedgerOptions,
    ) -> Self {
        let log = store.log();
        let (tx, rx) = mpsc::channel(options.queue.max(1));
        spawn_writer(log.clone(), rx, options.max_batch.max(1));
        let inner = LedgerInner {
            store: store.clone(),
            log,
            challenge_key: Arc::new(ChallengeKey::new(root.derive("challenge secrets"))),
            hash_root: Arc::new(HashRoot::new(root.derive("value hashes"))),
            alias_root: Arc::new(AliasRoot::new(root.derive("customer aliases"))),
            lookup_key: Arc::new(LookupKey::new(root.derive("lookup index"))),
            request_key: Arc::new(root.derive("request hashes")),
            signing_seal: Arc::new(DataKey::from_secret(root.derive("signing keys"))),
            master,
            policy: Arc::new(policy),
            writer: tx,
            keys: Arc::new(KeyCache::new(options.key_cache)),
            states: Arc::new(StateCache::new(options.state_cache)),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.inner.policy
    }

    /// A receiver that changes whenever the global log may have grown, by this process's
    /// appends or, on PostgreSQL, another's (see [`crate::log_watch`]): what readers of the
    /// log wait on instead of polling it.
    pub fn log_growth(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.log.watch().subscribe()
    }

    /// The secret that confirms a pending change: the answer to its `request_change` gives it
    /// to the requester (and only there).
    pub fn challenge_secret(&self, challenge: ChallengeId) -> ChallengeSecret {
        self.inner.challenge_key.secret_for(challenge)
    }

    /// The key `consumer`'s value hashes are computed under (see `idledger_domain::hashing`).
    pub fn hash_key(&self, consumer: &ConsumerId) -> HashKey {
        self.inner.hash_root.for_consumer(consumer)
    }

    /// The key `consumer` signs its NATS acknowledgements with.
    pub fn ack_key(&self, consumer: &ConsumerId) -> AckKey {
        self.inner.hash_root.ack_key(consumer)
    }

    /// How `consumer` names customers: their ids, or its own aliases of them.
    pub fn customer_names(&self, consumer: &Consumer) -> CustomerNames {
        if consumer.pseudonymous {
            CustomerNames::Aliases(Box::new(self.inner.alias_root.for_consumer(&consumer.id)))
        } else {
            CustomerNames::Ids
        }
    }

    /// The customers whose current values hold `identifier` (at most `limit`, in id order),
    /// through the blind index: its digest is looked up, never the value. An erased customer
    /// is never among them (erasure deletes their rows). No read scope here: the caller's.
    pub async fn find(
        &self,
        identifier: &Identifier,
        limit: u32,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let mut found = self
            .inner
            .log
            .lookup_each(&[self.inner.lookup_key.digest(identifier)], limit)
            .await?;
        found.sort_unstable();
        found
            .into_iter()
            .map(|id| {
                CustomerId::from_uuid(id)
                    .map_err(|e| StoreError::Integrity(format!("a stored customer id: {e}")))
            })
            .collect()
    }

    /// The blind-index rows an append must leave when the customer's identifiers change from
    /// `before` to `after`; `None` (nothing written) when they do not.
    fn lookup_change(
        &self,
        before: &CustomerState,
        after: &CustomerState,
    ) -> Option<Vec<[u8; 32]>> {
        index_changed(before, after, self.inner.policy.secondary_rule())
            .then(|| self.lookup_digests(after))
    }

    /// The blind-index rows a record should have: its identifiers' digests and, under the
    /// policy's secondary duplicate rule, its combination's (see `domain::lookup`). A changed
    /// rule reaches a customer's rows at their next write that changes them, or `rebuild`.
    pub(crate) fn lookup_digests(&self, state: &CustomerState) -> Vec<[u8; 32]> {
        self.inner
            .lookup_key
            .index_digests(state, self.inner.policy.secondary_rule())
    }

    /// The other customers that may be the same person as `state`'s (`customer`): those whose
    /// index rows hold one of its match keys (`domain::lookup::match_keys`: verified email and
    /// phone, external ids, the secondary combination), at most `per_key` per key, without
    /// `customer`, in id order. Digests only: the caller confirms each on both records
    /// (`lookup::duplicate_match`).
    pub async fn duplicate_candidates(
        &self,
        customer: CustomerId,
        state: &CustomerState,
        per_key: u32,
    ) -> Result<Vec<CustomerId>, StoreError> {
        let digests: Vec<[u8; 32]> = match_keys(state, self.inner.policy.secondary_rule())
            .iter()
            .map(|key| self.inner.lookup_key.match_digest(key))
            .collect();
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = std::collections::BTreeSet::new();
        // One more than asked per key, so that the customer's own row does not crowd out one.
        for id in self
            .inner
            .log
            .lookup_each(&digests, per_key.saturating_add(1))
            .await?
        {
            if id != customer.as_uuid() {
                out.insert(
                    CustomerId::from_uuid(id)
                        .map_err(|e| StoreError::Integrity(format!("a stored customer id: {e}")))?,
                );
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The database this ledger writes to, for the other areas (deliveries, runs, tokens).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Up to `limit` events after `after` in log order, as stored: clear metadata, sealed
    /// payloads. For readers that must account for an event they cannot open.
    pub async fn read_raw(&self, after: u64, limit: u32) -> Result<Vec<RawEvent>, StoreError> {
        self.inner.log.read_all(after, limit).await
    }

    /// Runs a command: a retry with the same idempotency key (and body) returns the first
    /// result; the same key with another body is a conflict. Concurrent writers to the same
    /// customer are resolved by re-deciding on the fresh state.
    pub async fn execute(
        &self,
        principal: &Principal,
        command: &Command,
    ) -> Result<Executed, ExecuteError> {
        self.execute_with(principal, command, &|_| Ok(None)).await
    }

    /// Runs a command like [`Ledger::execute`], together with the change of one sync
    /// exception that `attach` derives from the command's result (a steward's action: the
    /// event ids, the outcome). Both are written in one transaction, or neither: if the
    /// exception is no longer open, or its change fails, the command is not recorded
    /// ([`ExecuteError::ExceptionNotOpen`], or the failure). `attach` runs once per attempt.
    #[tracing::instrument(skip_all, fields(customer_id = %command.customer_id, key = %command.idempotency_key))]
    pub async fn execute_with(
        &self,
        principal: &Principal,
        command: &Command,
        attach: &(
             dyn Fn(&CommandResult) -> Result<Option<ExceptionWrite>, ExecuteError> + Send + Sync
         ),
    ) -> Result<Executed, ExecuteError> {
        let source = principal.source_name().to_owned();
        let key = command.idempotency_key.as_str();
        let request_hash = RequestHash::of(
            &self.inner.request_key,
            serde_json::to_vec(command).map_err(StoreError::from)?,
        );
        let customer = command.customer_id.as_uuid();
        // No idempotency read up front: the write transaction finds a duplicate
        // (`AppendOutcome::Duplicate`), and a refusal looks for one before it is given.
        for attempt in 0..MAX_ATTEMPTS {
            // Taken before anything is read, so that a key this attempt reads before an erasure
            // commits is not cached after it (see `KeyCache`).
            let epoch = self.inner.keys.epoch();
            // The first attempt starts from the record this process last wrote, if any: the
            // append's version check catches one another process has moved on from.
            let cached = if attempt == 0 {
                self.cached_record(customer, epoch).await?
            } else {
                None
            };
            let from_cache = cached.is_some();
            let (CachedRecord { stored, state }, mut data_key) = match cached {
                Some(record) => record,
                None => {
                    let (mut stored, key) = self.stored_record(customer).await?;
                    // In (kind, key) order whatever the database's collation, as the cache
                    // keeps rows (see `StateCache::made_from`).
                    stored.sort_unstable();
                    let state = projection::open_state(customer, &stored, key.as_ref())?;
                    let record = CachedRecord {
                        stored: Arc::new(stored),
                        state: Arc::new(state),
                    };
                    (record, key)
                }
            };
            let now = truncate_to_micros(Utc::now());
            let ctx = Context {
                now,
                policy: &self.inner.policy,
                principal: principal.clone(),
                id_seed: Uuid::now_v7(),
                challenge_key: &self.inner.challenge_key,
            };
            let decision = match decide(&state, command, &ctx) {
                Ok(decision) => decision,
                Err(refused) => {
                    // One statement: whether the record is the stored one (the stream still at
                    // its version), and whether this very command was recorded meanwhile by a
                    // concurrent duplicate — then its result is the answer.
                    let (head, earlier) = self
                        .inner
                        .log
                        .head_and_idempotency(customer, &source, key)
                        .await?;
                    if let Some((hash, result)) = earlier {
                        return replay(&source, key, &request_hash, &hash, &result);
                    }
                    // A refusal is given on the record as stored, never on a cached copy that
                    // another process has moved on from.
                    if from_cache && head.unwrap_or(0) != state.stream_version {
                        self.inner.states.remove(customer);
                        continue;
                    }
                    if !from_cache {
                        // The record as stored, just read: the customer's next command starts
                        // from it rather than reading it again.
                        self.inner
                            .states
                            .put(customer, CachedRecord { stored, state });
                    }
                    return Err(ExecuteError::Refused(refused));
                }
            };
            let (after, due_snapshots) =
                snapshots::fold_noting(CustomerState::clone(&state), &decision.events);
            let changes =
                projection::diff_stored(customer, &stored, data_key.as_ref(), &state, &after)?;
            let sealing = !decision.events.is_empty()
                || changes
                    .upserts
                    .iter()
                    .any(|r| projection::is_sealed_kind(&r.kind));
            // The key that opened the rows seals the events and rows: unwrapped once.
            let mut new_data_key = None;
            if sealing && data_key.is_none() {
                data_key = match self.cached_key(customer, epoch).await? {
                    Some(key) => Some(key),
                    None => {
                        let key = DataKey::generate();
                        new_data_key = Some(WrappedKey {
                            wrapped: self.inner.master.wrap(&key, customer)?,
                            key_id: self.inner.master.key_id(),
                        });
                        Some(key)
                    }
                };
            }
            let events = self
                .sealing(command.customer_id, &state, &decision.events, None)
                .await?
                .prepare(customer, &decision.events, data_key.as_ref())?;
            let projection = ProjectionDiff {
                upserts: projection::seal(customer, changes.upserts, data_key.as_ref())?,
                deletes: changes.deletes,
            };
            let stored_after = Arc::new(crate::state_cache::applied(
                &stored,
                &projection.upserts,
                &projection.deletes,
            ));
            let result = CommandResult {
                customer_id: command.customer_id,
                stream_version: after.stream_version,
                outcomes: decision.outcomes,
                events: decision
                    .events
                    .iter()
                    .map(|e| EventRef {
                        id: e.id,
                        stream_version: e.stream_version,
                        event_type: e.event.payload.type_name().to_owned(),
                    })
                    .collect(),
            };
            let request = AppendRequest {
                customer_id: customer,
                expected_version: state.stream_version,
                events,
                new_data_key: new_data_key.clone(),
                idempotency: Some(IdempotencyRecord {
                    source: source.clone(),
                    key: key.to_owned(),
                    request_hash: request_hash.keyed.clone(),
                    result: serde_json::to_string(&result).map_err(StoreError::from)?,
                }),
                projection,
                erase: false,
                exception: attach(&result)?,
                lookup: self.lookup_change(&state, &after),
                snapshots: snapshots::seal_all(customer, &due_snapshots, data_key.as_ref())?,
                drop_snapshots_since: None,
            };
            match self.append(request).await? {
                AppendOutcome::Appended { .. } => {
                    // Cached only once stored: a losing writer's key was never the customer's.
                    if let (Some(_), Some(key)) = (new_data_key, data_key) {
                        self.inner.keys.insert(customer, key, epoch);
                    }
                    let after = Arc::new(after);
                    self.inner.states.put(
                        customer,
                        CachedRecord {
                            stored: stored_after,
                            state: after.clone(),
                        },
                    );
                    return Ok(Executed {
                        result,
                        replayed: false,
                        state: Some(after),
                    });
                }
                AppendOutcome::VersionConflict => {
                    tracing::debug!("stream moved on; deciding again");
                    self.inner.states.remove(customer);
                    continue;
                }
                AppendOutcome::Duplicate {
                    request_hash: stored,
                    result,
                } => return replay(&source, key, &request_hash, &stored, &result),
                AppendOutcome::ExceptionNotOpen { exception_id } => {
                    return Err(ExecuteError::ExceptionNotOpen { exception_id });
                }
            }
        }
        Err(ExecuteError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// The stored result of an earlier command from this principal with this idempotency key.
    pub async fn idempotent_result(
        &self,
        principal: &Principal,
        key: &idledger_domain::ids::IdempotencyKey,
    ) -> Result<Option<CommandResult>, StoreError> {
        let source = principal.source_name();
        match self.inner.log.idempotency(source, key.as_str()).await? {
            Some((_, result)) => Ok(Some(serde_json::from_str(&result)?)),
            None => Ok(None),
        }
    }

    /// Erases a customer's record (right to erasure) by crypto-shredding: records a
    /// `customer_erased` event (stored in the clear, see [`STORED_IN_CLEAR`]) from source `by`,
    /// and in the same transaction deletes the customer's data key and idempotency records and
    /// replaces their projection with the erased state. Every earlier event of theirs becomes
    /// unreadable; later commands are refused `erased`.
    ///
    /// Refused with `not_registered` for an unknown customer, `erased` if already erased and
    /// `invalid_value` for an empty or overlong reason. The reason is stored in the clear:
    /// it must not quote the record.
    #[tracing::instrument(skip_all, fields(customer_id = %customer, source = %by))]
    pub async fn erase(
        &self,
        customer: CustomerId,
        by: &SourceId,
        actor: Actor,
        reason: &str,
    ) -> Result<Erasure, ExecuteError> {
        let id = customer.as_uuid();
        // Erasure is once per customer, so the customer names the request.
        let idempotency_key = IdempotencyKey::parse(&format!("erasure:{id}"))
            .map_err(|e| StoreError::Integrity(e.to_string()))?;
        let recorded_at = truncate_to_micros(Utc::now());
        // Decided inside the write transaction on the clear customer row alone (erasure needs
        // no key), so that a writer busy on the same customer cannot keep it from happening.
        let (outcome, erasure) = self
            .inner
            .log
            .write_decided(id, |rows| -> Result<_, ExecuteError> {
                let state = projection::registration(&rows)?;
                let provenance = Provenance {
                    source: by.clone(),
                    actor,
                    on_behalf_of: None,
                    evidence: None,
                    observed_at: None,
                    recorded_at,
                    correlation_id: None,
                    causation_id: None,
                    idempotency_key,
                    reason: None,
                    approved_by: None,
                };
                let envelope = decide_erasure(
                    &state,
                    reason,
                    provenance,
                    &self.inner.policy,
                    Uuid::now_v7(),
                )?;
                let after = evolve(state.clone(), &envelope);
                let erasure = after.erased.clone().ok_or_else(|| {
                    StoreError::Integrity("an erasure event left the record unerased".to_owned())
                })?;
                let request = AppendRequest {
                    customer_id: id,
                    expected_version: state.stream_version,
                    events: vec![prepare(id, &envelope, None)?],
                    new_data_key: None,
                    idempotency: None,
                    // Every other row goes (the diff deletes them, and so does the erasure's
                    // own statement).
                    projection: projection::diff(&rows, &projection::rows(&after)?),
                    erase: true,
                    exception: None,
                    // The erasure's own statements delete the customer's rows, and snapshots.
                    lookup: None,
                    snapshots: Vec::new(),
                    drop_snapshots_since: None,
                };
                Ok((request, erasure))
            })
            .await?;
        match outcome {
            AppendOutcome::Appended { .. } => {
                // After the commit: a key read before it is not cached again (the epoch), and
                // from now on the database has none to read.
                self.inner.keys.invalidate(id);
                self.inner.states.remove(id);
                tracing::info!("customer erased");
                self.truncate_wal().await;
                Ok(erasure)
            }
            // Nothing else can append under the lock, and an erasure has no idempotency
            // record nor exception.
            AppendOutcome::VersionConflict
            | AppendOutcome::Duplicate { .. }
            | AppendOutcome::ExceptionNotOpen { .. } => {
                Err(ExecuteError::Store(StoreError::Integrity(
                    "an erasure decided under the log's lock was not appended".to_owned(),
                )))
            }
        }
    }

    /// Expires what the policy's retention rules say the customer's record keeps too long at
    /// `now` (`decide_expiry`): records the `field_expired` events through the same writer
    /// and expected-version check as commands (a concurrent command makes it decide again on
    /// the fresh state), and returns the fields expired (`consent.<purpose>` for consents).
    /// A `dry_run` decides and records nothing. Nothing for an unknown or erased customer.
    #[tracing::instrument(skip_all, fields(customer_id = %customer))]
    pub async fn expire(
        &self,
        customer: CustomerId,
        now: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<Vec<FieldPath>, ExecuteError> {
        let id = customer.as_uuid();
        let now = truncate_to_micros(now);
        let provenance = retention_provenance(now, &self.inner.policy)
            .map_err(|e| StoreError::Integrity(e.to_string()))?;
        for _ in 0..MAX_ATTEMPTS {
            let epoch = self.inner.keys.epoch();
            let (stored, data_key) = self.stored_record(id).await?;
            let state = projection::open_state(id, &stored, data_key.as_ref())?;
            let events =
                decide_expiry(&state, now, &self.inner.policy, &provenance, Uuid::now_v7());
            let fields: Vec<FieldPath> = events
                .iter()
                .filter_map(|e| e.event.payload.field())
                .collect();
            if events.is_empty() || dry_run {
                return Ok(fields);
            }
            // The key that opened the rows, or (rows still in the clear) the customer's.
            let data_key = match data_key {
                Some(key) => key,
                None => match self.cached_key(id, epoch).await? {
                    Some(key) => key,
                    // Erased after the state was read: the next attempt decides nothing.
                    None => continue,
                },
            };
            let prepared = self
                .sealing(customer, &state, &events, None)
                .await?
                .prepare(id, &events, Some(&data_key))?;
            let (after, due_snapshots) = snapshots::fold_noting(state.clone(), &events);
            let changes = projection::diff_stored(id, &stored, Some(&data_key), &state, &after)?;
            let request = AppendRequest {
                customer_id: id,
                expected_version: state.stream_version,
                events: prepared,
                new_data_key: None,
                idempotency: None,
                projection: ProjectionDiff {
                    upserts: projection::seal(id, changes.upserts, Some(&data_key))?,
                    deletes: changes.deletes,
                },
                erase: false,
                exception: None,
                lookup: self.lookup_change(&state, &after),
                snapshots: snapshots::seal_all(id, &due_snapshots, Some(&data_key))?,
                drop_snapshots_since: None,
            };
            match self.append(request).await? {
                AppendOutcome::Appended { .. } => {
                    self.inner.states.remove(id);
                    tracing::info!(expired = fields.len(), "values expired");
                    return Ok(fields);
                }
                AppendOutcome::VersionConflict => continue,
                AppendOutcome::Duplicate { .. } | AppendOutcome::ExceptionNotOpen { .. } => {
                    return Err(ExecuteError::Store(StoreError::Integrity(
                        "an expiry, which has no idempotency record nor exception, was taken for a duplicate"
                            .to_owned(),
                    )));
                }
            }
        }
        Err(ExecuteError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Retention of idempotency records: those created before `before` are counted
    /// (`dry_run`) or deleted. A retry of a command whose record is gone is decided again as
    /// a new command on the record as it is then.
    pub async fn expire_idempotency(
        &self,
        before: DateTime<Utc>,
        dry_run: bool,
    ) -> Result<u64, StoreError> {
        self.inner.log.expire_idempotency(before, dry_run).await
    }

    /// After an erasure on SQLite: the WAL still holds images of the pages as they were before
    /// it (with the customer's plaintext) until a checkpoint truncates it. Readers holding a
    /// snapshot keep it from completing, so it is tried a few times; failing that, the next
    /// checkpoint takes them and the erasure stands regardless.
    async fn truncate_wal(&self) {
        for attempt in 0..WAL_ATTEMPTS {
            match self.inner.log.truncate_wal().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not truncate the SQLite WAL after an erasure");
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20 << attempt)).await;
        }
        tracing::warn!(
            attempts = WAL_ATTEMPTS,
            "readers kept the SQLite WAL from being truncated after an erasure; older page images stay in it until the next checkpoint"
        );
    }

    async fn append(&self, request: AppendRequest) -> Result<AppendOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .writer
            .send(WriteJob { request, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Whether the customer's unwrapped data key is held in this ledger's cache: never once
    /// their erasure committed here, nor once this ledger read their erased record. For tests
    /// and diagnostics.
    pub fn holds_key_of(&self, customer: CustomerId) -> bool {
        self.inner.keys.contains(customer.as_uuid())
    }

    /// The customer's current record, from the projection (`None`: never registered). A
    /// record the state cache holds is used if the stream is still at its version (one
    /// index seek instead of reading and opening the rows).
    pub async fn state(&self, customer: CustomerId) -> Result<Option<CustomerState>, StoreError> {
        let id = customer.as_uuid();
        if self.inner.states.holds(id) {
            let heads = self.inner.log.stream_heads(&[id]).await?;
            if let Some(state) = heads
                .get(&id)
                .and_then(|head| self.inner.states.at_version(id, *head))
            {
                return Ok(Some(CustomerState::clone(&state)));
            }
        }
        let (stored, key) = self.stored_record(id).await?;
        if stored.is_empty() {
            return Ok(None);
        }
        self.record_in(id, &stored, key.as_ref()).map(Some)
    }

    /// The record that stored rows just read hold: the state cache's copy when it was made
    /// from exactly these rows (each sealed record is unique, by its nonce), else opened and
    /// parsed. Fresh either way: the rows are the database's.
    fn record_in(
        &self,
        id: Uuid,
        stored: &[ProjectionRow],
        key: Option<&DataKey>,
    ) -> Result<CustomerState, StoreError> {
        if let Some(state) = self.inner.states.made_from(id, stored) {
            return Ok(CustomerState::clone(&state));
        }
        projection::open_state(id, stored, key)
    }

    /// The current state of each of `customers` (`None`: unknown), read together: what a
    /// relay's batch needs of every customer in it. As [`Self::state`] for each. A record the
    /// state cache holds is current if the customer's stream is still at its version, which
    /// one statement tells for all of them; the others' rows are read in one statement per
    /// chunk, and the keys the key cache lacks in one more.
    pub async fn states(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Option<CustomerState>>, StoreError> {
        let mut ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = HashMap::with_capacity(ids.len());
        let held: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| self.inner.states.holds(*id))
            .collect();
        if !held.is_empty() {
            let heads = self.inner.log.stream_heads(&held).await?;
            let mut unread = Vec::with_capacity(ids.len());
            for id in ids {
                match heads
                    .get(&id)
                    .and_then(|head| self.inner.states.at_version(id, *head))
                {
                    Some(state) => {
                        out.insert(stored_customer(id)?, Some(CustomerState::clone(&state)));
                    }
                    None => unread.push(id),
                }
            }
            ids = unread;
        }
        let epoch = self.inner.keys.epoch();
        let mut rows = self.inner.log.projection_rows_of(&ids).await?;
        // Sealed rows were read while the customer was not erased: a key cached or read now
        // is theirs (see `stored_record`).
        let mut keys: HashMap<Uuid, DataKey> = HashMap::new();
        let mut missing = Vec::new();
        for (id, stored) in &rows {
            if projection::needs_key(stored) {
                match self.inner.keys.get(*id) {
                    Some(key) => {
                        keys.insert(*id, key);
                    }
                    None => missing.push(*id),
                }
            }
        }
        for (id, wrapped) in self.inner.log.data_keys(&missing).await? {
            let key = self.inner.master.unwrap_key(&wrapped, id)?;
            self.inner.keys.insert(id, key.clone(), epoch);
            keys.insert(id, key);
        }
        for id in ids {
            let customer = stored_customer(id)?;
            let stored = rows.remove(&id).unwrap_or_default();
            let state = if stored.is_empty() {
                None
            } else if projection::needs_key(&stored) && !keys.contains_key(&id) {
                // Its key went between the two reads: erased meanwhile, read again alone.
                self.state(customer).await?
            } else {
                if projection::registration(&stored)?.erased.is_some() {
                    self.inner.keys.forget(id);
                }
                Some(self.record_in(id, &stored, keys.get(&id))?)
            };
            out.insert(customer, state);
        }
        Ok(out)
    }

    /// The customer's projection rows as stored, with the data key that opens them when some
    /// are sealed. Sealed rows were read from a state in which the customer was not erased
    /// (erasure removes them in the transaction that deletes the key), so a cached key is
    /// theirs to use — also if another process erased the customer since. A key found missing
    /// may mean an erasure committed between the two reads: the rows are read again, and then
    /// hold nothing sealed.
    async fn stored_record(
        &self,
        customer: Uuid,
    ) -> Result<(Vec<ProjectionRow>, Option<DataKey>), StoreError> {
        for _ in 0..2 {
            let epoch = self.inner.keys.epoch();
            let stored = self.inner.log.projection_rows(customer).await?;
            if !projection::needs_key(&stored) {
                if projection::registration(&stored)?.erased.is_some() {
                    // Erased, maybe by another process: this one's copy of the key goes too.
                    self.inner.keys.forget(customer);
                }
                return Ok((stored, None));
            }
            if let Some(key) = self.cached_key(customer, epoch).await? {
                return Ok((stored, Some(key)));
            }
        }
        Err(StoreError::Integrity(format!(
            "customer {customer} has sealed projection rows but no data key"
        )))
    }

    /// The record this process last wrote for the customer, with the key that opens it;
    /// `None` if none is cached, or its key is gone (erased since: read it again).
    async fn cached_record(
        &self,
        customer: Uuid,
        epoch: u64,
    ) -> Result<Option<(CachedRecord, Option<DataKey>)>, StoreError> {
        let Some(record) = self.inner.states.get(customer) else {
            return Ok(None);
        };
        if !projection::needs_key(&record.stored) {
            return Ok(Some((record, None)));
        }
        Ok(self
            .cached_key(customer, epoch)
            .await?
            .map(|key| (record, Some(key))))
    }

    /// The customer's data key (`None`: they have none, e.g. erased), through the cache.
    pub(crate) async fn data_key(&self, customer: Uuid) -> Result<Option<DataKey>, StoreError> {
        self.cached_key(customer, self.inner.keys.epoch()).await
    }

    /// The customer's data key: from the cache, or read, unwrapped and cached (unless an
    /// erasure invalidated keys since `epoch` was taken). `None`: the customer has none.
    async fn cached_key(&self, customer: Uuid, epoch: u64) -> Result<Option<DataKey>, StoreError> {
        if let Some(key) = self.inner.keys.get(customer) {
            return Ok(Some(key));
        }
        let Some(wrapped) = self.inner.log.data_key(customer).await? else {
            return Ok(None);
        };
        let key = self.inner.master.unwrap_key(&wrapped, customer)?;
        self.inner.keys.insert(customer, key.clone(), epoch);
        Ok(Some(key))
    }

    /// The customer's record as it stood at `at`, folded from the log: from the latest stream
    /// snapshot whose events were all recorded by then (see [`crate::snapshots`]), with the
    /// events after it recorded by then, which is the fold of every event recorded by then.
    /// An erased customer's past is gone: [`StoreError::Erased`].
    pub async fn state_as_of(
        &self,
        customer: CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<CustomerState>, StoreError> {
        if let Some(state) = self.state_as_of_from_snapshot(customer, at).await? {
            return Ok(Some(state));
        }
        self.state_as_of_from_scratch(customer, at).await
    }

    /// [`Ledger::state_as_of`] folding every event from the first, whatever snapshots there
    /// are: what the snapshots are checked against.
    pub async fn state_as_of_from_scratch(
        &self,
        customer: CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<CustomerState>, StoreError> {
        let events = self.stream(customer, None, Some(at)).await?;
        if events.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            events
                .iter()
                .map(|e| &e.envelope)
                .fold(CustomerState::default(), evolve),
        ))
    }

    /// The as-of state from a snapshot; `None` when no snapshot serves `at` (none yet, all
    /// after it, of another fold version, or the customer erased: their snapshots go with
    /// the key, and the fold from scratch says so).
    async fn state_as_of_from_snapshot(
        &self,
        customer: CustomerId,
        at: DateTime<Utc>,
    ) -> Result<Option<CustomerState>, StoreError> {
        let id = customer.as_uuid();
        let at = truncate_to_micros(at);
        let Some((version, sealed)) = self.inner.log.latest_snapshot(id, FOLD_VERSION, at).await?
        else {
            return Ok(None);
        };
        // Read from the table, not the cache: an erasure since the snapshot was read leaves
        // no key, and the fold from scratch then answers `Erased`.
        let Some(wrapped) = self.inner.log.data_key(id).await? else {
            return Ok(None);
        };
        let key = self.inner.master.unwrap_key(&wrapped, id)?;
        let state = snapshots::open(id, version, FOLD_VERSION, &sealed, &key)?;
        let raws = self
            .inner
            .log
            .stream_after(id, version, Some(micros(at)))
            .await?;
        let mut keys = Keys::default();
        keys.data.insert(id, key);
        // Events sealed for a record merged into this one (see `sealing`) open with its key.
        self.load_keys(&raws, &mut keys).await?;
        Ok(Some(
            readable(keys, raws)
                .await?
                .iter()
                .fold(state, |state, e| evolve(state, &e.envelope)),
        ))
    }

    /// Every event that touched `field` (consents as `consent.<purpose>`), oldest first.
    /// [`StoreError::Erased`] for an erased customer.
    pub async fn history(
        &self,
        customer: CustomerId,
        field: &idledger_domain::field::FieldPath,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.stream(customer, Some(&field.to_string()), None).await
    }

    /// A customer's events, decrypted, optionally one field's and up to an instant.
    /// [`StoreError::Erased`] for an erased customer, whatever the filter.
    pub async fn stream(
        &self,
        customer: CustomerId,
        field: Option<&str>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let id = customer.as_uuid();
        let (raws, wrapped) = self
            .inner
            .log
            .stream_keyed(id, field, until.map(micros))
            .await?;
        if raws.is_empty() {
            // Nothing matched the filter; an erased customer still answers as erased.
            return match self.erased_at(id).await? {
                Some(at) => Err(StoreError::Erased { customer: id, at }),
                None => Ok(Vec::new()),
            };
        }
        // The key goes in the erasure's transaction, so its absence means an erasure — or
        // damage, which opening the events reports.
        let mut keys = Keys::default();
        if let Some(wrapped) = wrapped {
            keys.data
                .insert(id, self.inner.master.unwrap_key(&wrapped, id)?);
        }
        // Keys of records merged into this one (see `sealing`), or the erasure of a customer
        // with none.
        self.load_keys(&raws, &mut keys).await?;
        if let Some(at) = keys.erased.get(&id) {
            return Err(StoreError::Erased {
                customer: id,
                at: *at,
            });
        }
        readable(keys, raws).await
    }

    async fn erased_at(&self, customer: Uuid) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self
            .inner
            .log
            .erasures(&[customer])
            .await?
            .first()
            .map(|raw| from_micros(raw.recorded_at_micros)))
    }

    /// Up to `limit` positions of the global log after `after`, in commit order: every event
    /// decrypted, except those of erased customers, which come as [`LogEntry::Shredded`] — no
    /// position is left out.
    pub async fn read_all(&self, after: u64, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let (raws, wrapped) = self.inner.log.read_all_keyed(after, limit).await?;
        let mut keys = Keys::default();
        for (customer, wrapped) in wrapped {
            keys.data
                .insert(customer, self.inner.master.unwrap_key(&wrapped, customer)?);
        }
        // Only customers without a key are left: their erasures.
        self.load_keys(&raws, &mut keys).await?;
        raws.iter().map(|raw| keys.entry(raw)).collect()
    }

    /// Loads the data keys of the customers in `raws` that `keys` lacks, and for those who
    /// have none, their erasure.
    async fn load_keys(&self, raws: &[RawEvent], keys: &mut Keys) -> Result<(), StoreError> {
        let mut missing: Vec<Uuid> = raws
            .iter()
            .filter(|r| !stored_in_clear(&r.event_type))
            .map(RawEvent::sealed_for)
            .filter(|c| !keys.data.contains_key(c) && !keys.erased.contains_key(c))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for chunk in missing.chunks(1000) {
            for (customer, wrapped) in self.inner.log.data_keys(chunk).await? {
                keys.data
                    .insert(customer, self.inner.master.unwrap_key(&wrapped, customer)?);
            }
            let keyless: Vec<Uuid> = chunk
                .iter()
                .filter(|c| !keys.data.contains_key(c))
                .copied()
                .collect();
            if !keyless.is_empty() {
                for raw in self.inner.log.erasures(&keyless).await? {
                    keys.erased
                        .insert(raw.customer_id, from_micros(raw.recorded_at_micros));
                }
            }
        }
        Ok(())
    }

    pub async fn head_position(&self) -> Result<u64, StoreError> {
        self.inner.log.head_position().await
    }

    /// Checks every stream's hash chain and the log's positions, naming the first broken
    /// event, and every stored checkpoint against the log (signed by a stored key, and the
    /// log hash at its position the one signed). Needs no data keys: the chain covers the
    /// ciphertext.
    pub async fn verify(&self, progress: ProgressFn<'_>) -> Result<VerifyReport, StoreError> {
        let checkpoints = self.inner.store.checkpoints();
        let list = checkpoints.list().await?;
        let trust = Trust::Keys(checkpoints.public_keys(CHECKPOINT_PURPOSE).await?);
        self.verify_against(&list, &trust, progress).await
    }

    /// [`Ledger::verify`], checking the checkpoints of an export instead of the stored ones:
    /// each must be signed by a key of the export, or by `pinned` (a 32-byte Ed25519 public
    /// key) alone when given, and the log hash at its position must be the one signed.
    pub async fn verify_checkpoints(
        &self,
        export: &CheckpointExport,
        pinned: Option<&[u8]>,
        progress: ProgressFn<'_>,
    ) -> Result<VerifyReport, StoreError> {
        let trust = match pinned {
            Some(public) => Trust::Pinned(public.to_vec()),
            None => Trust::Keys(export.keys.clone()),
        };
        self.verify_against(&export.checkpoints, &trust, progress)
            .await
    }

    /// One pass over the log: every event's hash recomputed from its bytes and its stream
    /// predecessor's recomputed hash (so the result depends on what is stored, never on the
    /// stored hashes), compared with the stored one; the log hash folded from the recomputed
    /// hashes and compared at each checkpoint's position. Goes on past a broken event so that
    /// every checkpoint gets its answer.
    async fn verify_against(
        &self,
        checkpoints: &[Checkpoint],
        trust: &Trust,
        progress: ProgressFn<'_>,
    ) -> Result<VerifyReport, StoreError> {
        let versions = self.inner.log.chain_versions().await?;
        let total = self.inner.log.head_position().await?;
        let mut checks: Vec<CheckpointCheck> = checkpoints
            .iter()
            .map(|c| CheckpointCheck {
                position: c.position,
                kid: c.kid.clone(),
                signed_at: c.signed_at,
                failure: trust.refuse(c),
            })
            .collect();
        // Signed by a trusted key: compared with the log when the scan reaches its position.
        let mut due: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, c) in checkpoints.iter().enumerate() {
            if checks[i].failure.is_none() {
                due.entry(c.position).or_default().push(i);
            }
        }
        let mut scan = Scan {
            log_hash: LOG_GENESIS,
            unchanged_up_to: 0,
            first_broken: None,
        };
        scan.settle(0, checkpoints, &mut checks, &mut due);
        let mut heads: HashMap<Uuid, (u64, Vec<u8>)> = HashMap::new();
        let mut after = 0u64;
        let mut events = 0u64;
        let mut first_broken: Option<BrokenEvent> = None;
        loop {
            let page = self.inner.log.read_all(after, SCAN_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for raw in &page {
                // A checkpoint at a position the log skips cannot hold.
                scan.skip_before(raw.global_position, &mut checks, &mut due);
                let mut broken = |reason: String| {
                    scan.first_broken.get_or_insert(raw.global_position);
                    first_broken.get_or_insert(BrokenEvent {
                        global_position: raw.global_position,
                        customer_id: raw.customer_id,
                        stream_version: raw.stream_version,
                        event_id: raw.event_id,
                        reason,
                    });
                };
                if raw.global_position != after + 1 {
                    broken(format!(
                        "global position jumps from {after} to {} (events are missing)",
                        raw.global_position
                    ));
                }
                let (version, prev) = heads
                    .get(&raw.customer_id)
                    .map_or((0, GENESIS.to_vec()), |(v, h)| (*v, h.clone()));
                if raw.stream_version != version + 1 {
                    broken(format!(
                        "stream version jumps from {version} to {} (events are missing)",
                        raw.stream_version
                    ));
                }
                let hash = versions.event_hash(&prev, &raw.chain_input());
                if hash.as_slice() != raw.hash.as_slice() {
                    broken("hash does not match: the event's stored bytes were altered".to_owned());
                }
                heads.insert(raw.customer_id, (raw.stream_version, hash.to_vec()));
                scan.log_hash = log_hash(&scan.log_hash, raw.global_position, &hash);
                after = raw.global_position;
                if first_broken.is_none() {
                    events += 1;
                }
                scan.settle(after, checkpoints, &mut checks, &mut due);
            }
            progress(after.min(total), total.max(after));
        }
        for (_, waiting) in std::mem::take(&mut due) {
            for i in waiting {
                checks[i].failure = Some(CheckpointFailure::LogShorter { head: after });
            }
        }
        if first_broken.is_none() {
            first_broken = self.stream_cut_short(&heads).await?;
        }
        Ok(VerifyReport {
            events,
            streams: heads.len() as u64,
            first_broken,
            checkpoints: checks,
        })
    }

    /// A stream cut short at its end breaks no chain; the projection remembers its length.
    async fn stream_cut_short(
        &self,
        heads: &HashMap<Uuid, (u64, Vec<u8>)>,
    ) -> Result<Option<BrokenEvent>, StoreError> {
        let mut cursor = None;
        loop {
            let page = self.inner.log.projection_page(cursor, 1000).await?;
            let Some((last, _)) = page.last() else {
                return Ok(None);
            };
            cursor = Some(*last);
            for (customer, row) in page.iter().filter(|(_, r)| r.kind == projection::CUSTOMER) {
                let state = projection::state(std::slice::from_ref(row))?;
                let logged = heads.get(customer).map_or(0, |(v, _)| *v);
                if state.stream_version != logged {
                    let reason = format!(
                        "the record says the stream has {} events but the log holds {logged} (events were removed)",
                        state.stream_version
                    );
                    return Ok(Some(BrokenEvent {
                        global_position: 0,
                        customer_id: *customer,
                        stream_version: logged + 1,
                        event_id: Uuid::nil(),
                        reason,
                    }));
                }
            }
        }
    }

    /// The store's signing keys (their private halves open with a key derived from the
    /// derivation root).
    pub fn signing_keys(&self) -> SigningKeys {
        SigningKeys::new(
            self.inner.store.db().clone(),
            self.inner.signing_seal.clone(),
        )
    }

    /// Signs a checkpoint of the log as it is now: the log hash at the head, computed from
    /// the latest checkpoint on (only the events after it are read), signed with the key in
    /// use for checkpoints (created on first use). When the log has not grown since the
    /// latest checkpoint, that one is returned (`new` false); `None` for an empty log.
    ///
    /// The latest checkpoint is built on only if its signature verifies: an altered one
    /// would make every later checkpoint vouch for whatever it claims.
    pub async fn sign_checkpoint(&self) -> Result<Option<SignedCheckpoint>, StoreError> {
        let checkpoints = self.inner.store.checkpoints();
        let base = checkpoints.latest().await?;
        let (mut position, mut hash) = match &base {
            None => (0, LOG_GENESIS),
            Some(c) => {
                let trust = Trust::Keys(checkpoints.public_keys(CHECKPOINT_PURPOSE).await?);
                if let Some(failure) = trust.refuse(c) {
                    return Err(StoreError::Integrity(format!(
                        "the latest checkpoint (position {}) does not verify: {failure}; \
                         run `idledger verify`",
                        c.position
                    )));
                }
                let hash: [u8; 32] = c.log_hash.as_slice().try_into().map_err(|_| {
                    StoreError::Integrity("a checkpoint's log hash is not 32 bytes".to_owned())
                })?;
                (c.position, hash)
            }
        };
        let head = self.inner.log.head_position().await?;
        if head < position {
            return Err(StoreError::Integrity(format!(
                "the log ends at position {head}, before its latest checkpoint at {position}"
            )));
        }
        if head == position {
            return Ok(base.map(|checkpoint| SignedCheckpoint {
                checkpoint,
                new: false,
            }));
        }
        while position < head {
            let page = self.inner.log.read_all(position, SCAN_PAGE).await?;
            if page.is_empty() {
                break;
            }
            for raw in page.iter().take_while(|r| r.global_position <= head) {
                if raw.global_position != position + 1 {
                    return Err(StoreError::Integrity(format!(
                        "global position jumps from {position} to {}",
                        raw.global_position
                    )));
                }
                hash = log_hash(&hash, raw.global_position, &raw.hash);
                position = raw.global_position;
            }
        }
        if position != head {
            return Err(StoreError::Integrity(format!(
                "the log ends at position {position}, before its head {head}"
            )));
        }
        let key = self.signing_keys().in_use(CHECKPOINT_PURPOSE).await?;
        let signed_at = crate::model::truncate_to_micros(Utc::now());
        let checkpoint = Checkpoint {
            position,
            log_hash: hash.to_vec(),
            signed_at,
            kid: key.kid.clone(),
            signature: key.sign(&signed_message(position, &hash, signed_at)),
        };
        let stored = checkpoints.insert(&checkpoint).await?;
        let new = stored == checkpoint;
        Ok(Some(SignedCheckpoint {
            checkpoint: stored,
            new,
        }))
    }
}

fn replay(
    source: &str,
    key: &str,
    request_hash: &RequestHash,
    stored_hash: &[u8],
    result: &str,
) -> Result<Executed, ExecuteError> {
    if !request_hash.matches(stored_hash) {
        return Err(ExecuteError::IdempotencyConflict {
            source_id: source.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(Executed {
        result: serde_json::from_str(result).map_err(StoreError::from)?,
        replayed: true,
        state: None,
    })
}

/// A command's fingerprint under its idempotency key. Keyed (HMAC-SHA256 under a key derived
/// from the master key), since a command carries personal values and a plain digest of one is
/// reversed by trying likely values.
struct RequestHash {
    keyed: Vec<u8>,
    body: Vec<u8>,
}

impl RequestHash {
    fn of(key: &[u8; 32], body: Vec<u8>) -> Self {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
        mac.update(&body);
        Self {
            keyed: mac.finalize().into_bytes().to_vec(),
            body,
        }
    }

    /// Whether `stored` fingerprints this very command. Records written before fingerprints
    /// were keyed hold a plain SHA-256; a retry across the upgrade still matches them, and
    /// retention deletes them in time.
    fn matches(&self, stored: &[u8]) -> bool {
        stored == self.keyed.as_slice() || stored == Sha256::digest(&self.body).as_slice()
    }
}

/// Databases keep microseconds; so do we, so that a stored event reads back identical.
pub(crate) use crate::model::truncate_to_micros;

/// The events of one stream that `keys` opens. Those sealed for a record once merged into
/// the stream's customer and erased since are left out: that record's data, gone with it.
/// Events from which [`readable`] opens a read's events on every core: below it, handing
/// parts to other threads costs more than it saves (opening an event takes a few µs).
const OPEN_IN_PARALLEL_FROM: usize = 128;

/// The readable events of `raws`, opened with `keys`, in order. A long read (a history, an
/// export) is opened in parts on every core, so that its latency is not the sum of its
/// events' decryption and parsing.
async fn readable(keys: Keys, raws: Vec<RawEvent>) -> Result<Vec<RecordedEvent>, StoreError> {
    if raws.len() < OPEN_IN_PARALLEL_FROM {
        return open_all(&keys, &raws);
    }
    // Asked only here: on Linux it reads the process's CPU affinity and cgroup quota.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if cores < 2 {
        return open_all(&keys, &raws);
    }
    let keys = Arc::new(keys);
    let share = raws.len().div_ceil(cores);
    let mut parts = Vec::with_capacity(cores);
    let mut rest = raws;
    while rest.len() > share {
        let tail = rest.split_off(share);
        parts.push(std::mem::replace(&mut rest, tail));
    }
    let tasks: Vec<_> = parts
        .into_iter()
        .map(|part| {
            let keys = keys.clone();
            tokio::task::spawn_blocking(move || open_all(&keys, &part))
        })
        .collect();
    // The last part is opened here meanwhile.
    let last = open_all(&keys, &rest);
    let mut events = Vec::new();
    for task in tasks {
        let opened = task
            .await
            .map_err(|e| StoreError::Integrity(format!("opening events failed: {e}")))?;
        events.extend(opened?);
    }
    events.extend(last?);
    Ok(events)
}

fn open_all(keys: &Keys, raws: &[RawEvent]) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::with_capacity(raws.len());
    for raw in raws {
        match keys.entry(raw)? {
            LogEntry::Event(event) => events.push(event),
            LogEntry::Shredded(_) => {}
        }
    }
    Ok(events)
}

/// Associated data binding a payload to its row.
fn aad(customer: Uuid, event_id: Uuid) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(customer.as_bytes());
    out[16..].copy_from_slice(event_id.as_bytes());
    out
}

/// Event types whose data is stored as plain JSON instead of sealed: only `customer_erased`,
/// which holds no personal data and must stay readable once the customer's key is destroyed.
/// The type is a hashed column, so a sealed event cannot be passed off as one of these.
pub const STORED_IN_CLEAR: [&str; 1] = ["customer_erased"];

fn stored_in_clear(event_type: &str) -> bool {
    STORED_IN_CLEAR.contains(&event_type)
}

/// Data keys and erasures of the customers seen so far in a scan of the log.
#[derive(Debug, Default)]
struct Keys {
    data: HashMap<Uuid, DataKey>,
    /// Customers without a data key because they were erased, and when.
    erased: HashMap<Uuid, DateTime<Utc>>,
}

impl Keys {
    /// The log entry for `raw`, with the keys loaded for its page.
    fn entry(&self, raw: &RawEvent) -> Result<LogEntry, StoreError> {
        if stored_in_clear(&raw.event_type) {
            return decode(raw, None).map(LogEntry::Event);
        }
        let owner = raw.sealed_for();
        if let Some(key) = self.data.get(&owner) {
            return decode(raw, Some(key)).map(LogEntry::Event);
        }
        // Shredded with its key's owner: the stream's customer, or a record once merged into
        // them and erased since.
        let Some(erased_at) = self.erased.get(&owner) else {
            return Err(StoreError::Integrity(format!(
                "customer {owner} has no data key"
            )));
        };
        Ok(LogEntry::Shredded(ShreddedEvent {
            global_position: raw.global_position,
            customer_id: customer_id(raw)?,
            event_id: EventId::from(raw.event_id),
            stream_version: raw.stream_version,
            event_type: raw.event_type.clone(),
            recorded_at: from_micros(raw.recorded_at_micros),
            erased_at: *erased_at,
        }))
    }
}

/// The stored form of an event: sealed under the customer's data key, or plain JSON for the
/// types in [`STORED_IN_CLEAR`] (which need no key).
fn prepare(
    customer: Uuid,
    envelope: &EventEnvelope,
    key: Option<&DataKey>,
) -> Result<PreparedEvent, StoreError> {
    prepare_for(customer, envelope, key, None)
}

/// [`prepare`], sealed under `key` of `key_owner` (see [`PreparedEvent::key_owner`]) when
/// that is another customer than the stream's.
fn prepare_for(
    customer: Uuid,
    envelope: &EventEnvelope,
    key: Option<&DataKey>,
    key_owner: Option<Uuid>,
) -> Result<PreparedEvent, StoreError> {
    let stored = StoredEvent::from_event(&envelope.event)?;
    let plaintext = serde_json::to_vec(&stored.data)?;
    let event_id = envelope.id.as_uuid();
    let payload = if stored_in_clear(&stored.event_type) {
        plaintext
    } else {
        let key = key.ok_or_else(|| {
            StoreError::Integrity(format!("no data key to seal an event of {customer}"))
        })?;
        key.seal(&plaintext, &aad(customer, event_id))?
    };
    Ok(PreparedEvent {
        event_id,
        stream_version: envelope.stream_version,
        event_type: stored.event_type,
        schema_version: stored.schema_version,
        field: envelope.event.payload.field().map(|f| f.to_string()),
        recorded_at_micros: micros(envelope.event.provenance.recorded_at),
        payload,
        key_owner: key_owner.filter(|owner| *owner != customer),
    })
}

fn stored_customer(id: Uuid) -> Result<CustomerId, StoreError> {
    CustomerId::from_uuid(id).map_err(|e| StoreError::Integrity(format!("stored customer id: {e}")))
}

fn customer_id(raw: &RawEvent) -> Result<CustomerId, StoreError> {
    stored_customer(raw.customer_id)
}

/// Reads a stored event; `key` may be `None` only for the types stored in the clear.
fn decode(raw: &RawEvent, key: Option<&DataKey>) -> Result<RecordedEvent, StoreError> {
    let plaintext = if stored_in_clear(&raw.event_type) {
        raw.payload.clone()
    } else {
        let key = key.ok_or_else(|| {
            StoreError::Integrity(format!("customer {} has no data key", raw.customer_id))
        })?;
        key.open(&raw.payload, &aad(raw.customer_id, raw.event_id))?
    };
    let event = parse_event(raw, &plaintext)?;
    Ok(RecordedEvent {
        global_position: raw.global_position,
        customer_id: customer_id(raw)?,
        recorded_at: from_micros(raw.recorded_at_micros),
        envelope: EventEnvelope {
            id: EventId::from(raw.event_id),
            stream_version: raw.stream_version,
            event,
        },
    })
}

/// The event in a stored payload. Data of the current schema version is parsed straight
/// into the typed event (a rebuild does this a million times: no intermediate JSON tree);
/// older versions go through [`StoredEvent::into_event`] and its upcasting.
fn parse_event(raw: &RawEvent, plaintext: &[u8]) -> Result<Event, StoreError> {
    if raw.schema_version != CURRENT_SCHEMA_VERSION
        || !EVENT_TYPES.contains(&raw.event_type.as_str())
    {
        let data: serde_json::Value = serde_json::from_slice(plaintext)?;
        return Ok(StoredEvent {
            event_type: raw.event_type.clone(),
            schema_version: raw.schema_version,
            data,
        }
        .into_event()?);
    }
    let event: Event = serde_json::from_slice(plaintext)?;
    if event.payload.type_name() != raw.event_type {
        return Err(SchemaError::TypeMismatch {
            stored: raw.event_type.clone(),
            data: event.payload.type_name().to_owned(),
        }
        .into());
    }
    Ok(event)
}

/// Starts the group commit's writer. On SQLite it runs on a thread of its own: every
/// statement of a batch is a hop to SQLite's connection thread and back, and the one writer's
/// turnaround bounds the embedded store's throughput, so it must not wait for a turn on the
/// runtime's workers behind the requests it serves; and a checkpointer beside it copies the
/// log into the database file, so that its commits do not (`docs/benchmarks.md`,
/// optimisations 7 and 8). PostgreSQL's connections belong to the runtime that opened them: its
/// writer stays there.
fn spawn_writer(log: EventLog, jobs: mpsc::Receiver<WriteJob>, max_batch: usize) {
    if log.engine() == crate::sql::Engine::Postgres {
        tokio::spawn(run_writer(log, jobs, max_batch, None));
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::warn!(error = %e, "no runtime for the writer's thread; it shares the server's");
            tokio::spawn(run_writer(log, jobs, max_batch, None));
            return;
        }
    };
    // Both run until every ledger handle is gone (the channel closes): the runtime's end
    // drops the checkpointer.
    let spawned = std::thread::Builder::new()
        .name("idledger-writer".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                let committed = Arc::new(tokio::sync::Notify::new());
                tokio::spawn(checkpointer(log.clone(), committed.clone()));
                run_writer(log, jobs, max_batch, Some(committed)).await;
            });
        });
    if let Err(e) = spawned {
        // The closure (and with it the receiver) is gone: appends answer that the writer
        // stopped, as after any writer failure.
        tracing::error!(error = %e, "cannot start the writer's thread");
    }
}

/// At most one checkpoint this often: each copies what the commits since the last one added.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// SQLite: after commits, a checkpoint that waits for no reader or writer, on a connection of
/// its own, so the log is copied into the database file beside the writer instead of inside
/// one of its commits.
async fn checkpointer(log: EventLog, committed: Arc<tokio::sync::Notify>) {
    loop {
        committed.notified().await;
        if let Err(e) = log.checkpoint_passive().await {
            tracing::debug!(error = %e, "a background checkpoint failed; a later one catches up");
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
}

/// Group commit: takes whatever commands are waiting (up to `max_batch`) and writes them in
/// one transaction, so one durable commit acknowledges many commands; `committed` (SQLite's
/// checkpointer) is told of each commit.
async fn run_writer(
    log: EventLog,
    mut jobs: mpsc::Receiver<WriteJob>,
    max_batch: usize,
    committed: Option<Arc<tokio::sync::Notify>>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while jobs.recv_many(&mut batch, max_batch).await > 0 {
        let (requests, replies): (Vec<AppendRequest>, Vec<_>) =
            batch.drain(..).map(|j| (j.request, j.reply)).unzip();
        let started = std::time::Instant::now();
        let written = log.write_batch(&requests).await;
        metrics::histogram!("idledger_append_batch_seconds")
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("idledger_append_batch_size").record(requests.len() as f64);
        match written {
            Ok(results) => {
                if let Some(committed) = &committed {
                    committed.notify_one();
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have gone away (request cancelled); its write stands.
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, commands = requests.len(), "group commit failed; no command in the batch was recorded");
                let message = e.to_string();
                let unavailable = e.is_unavailable();
                for reply in replies {
                    let error = if unavailable {
                        StoreError::Unavailable(message.clone())
                    } else {
                        StoreError::BatchFailed(message.clone())
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }
}
