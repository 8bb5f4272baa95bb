//! Merge and unmerge (see `idledger_domain::merge`): both records read fresh, decided
//! together, and written in one transaction, or neither.

use chrono::Utc;
use idledger_domain::event::{EventEnvelope, Provenance};
use idledger_domain::ids::{Actor, CustomerId, IdempotencyKey, SourceId};
use idledger_domain::merge::{MergeEvents, MergeRefusal, Side, decide_merge, decide_unmerge};
use idledger_domain::policy::STEWARD_SOURCE;
use idledger_domain::state::CustomerState;
use uuid::Uuid;

use super::sealing::Sealing;
use super::{Ledger, MAX_ATTEMPTS};
use crate::crypto::DataKey;
use crate::error::StoreError;
use crate::model::truncate_to_micros;
use crate::model::{AppendOutcome, AppendRequest, ExceptionWrite, ProjectionDiff, ProjectionRow};
use crate::projection;
use crate::snapshots;

/// Why a merge or unmerge was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// The records cannot be merged (or unmerged) as asked; nothing was recorded.
    #[error(transparent)]
    Refused(#[from] MergeRefusal),
    /// The reason is empty or too long.
    #[error("a reason is required: {0}")]
    InvalidReason(String),
    /// The sync exception to close with it is no longer open; nothing was recorded.
    #[error("sync exception {exception_id} is no longer open")]
    ExceptionNotOpen { exception_id: Uuid },
    #[error("the records changed concurrently {attempts} times; try again")]
    Contention { attempts: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a merge or unmerge recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MergeResult {
    pub merge_id: Uuid,
    pub survivor: CustomerId,
    pub absorbed: CustomerId,
    /// Each record's stream version after it.
    pub survivor_version: u64,
    pub absorbed_version: u64,
    /// The fields each record had written (`consent.<purpose>` for consents).
    pub survivor_fields: Vec<String>,
    pub absorbed_fields: Vec<String>,
}

/// One record as read for a merge: its rows as stored, the key that opens them, its state.
struct Record {
    id: CustomerId,
    stored: Vec<ProjectionRow>,
    key: Option<DataKey>,
    state: CustomerState,
}

impl Ledger {
    /// Merges `absorbed` into `survivor` as `steward`, for `reason`. `exception`, if given,
    /// is changed in the same transaction (a duplicate candidate resolved by the merge).
    pub async fn merge(
        &self,
        survivor: CustomerId,
        absorbed: CustomerId,
        steward: &Actor,
        reason: &str,
        exception: Option<ExceptionWrite>,
    ) -> Result<MergeResult, MergeError> {
        self.merge_or_unmerge(survivor, absorbed, steward, reason, exception, false)
            .await
    }

    /// Undoes the merge of `absorbed` into `survivor` (see `idledger_domain::merge`).
    pub async fn unmerge(
        &self,
        survivor: CustomerId,
        absorbed: CustomerId,
        steward: &Actor,
        reason: &str,
    ) -> Result<MergeResult, MergeError> {
        self.merge_or_unmerge(survivor, absorbed, steward, reason, None, true)
            .await
    }

    async fn merge_or_unmerge(
        &self,
        survivor: CustomerId,
        absorbed: CustomerId,
        steward: &Actor,
        reason: &str,
        exception: Option<ExceptionWrite>,
        undo: bool,
    ) -> Result<MergeResult, MergeError> {
        if reason.trim().is_empty()
            || reason.chars().count() > idledger_domain::command::MAX_REASON_CHARS
        {
            return Err(MergeError::InvalidReason(format!(
                "1 to {} characters",
                idledger_domain::command::MAX_REASON_CHARS
            )));
        }
        for _ in 0..MAX_ATTEMPTS {
            let a = self.fresh_record(survivor).await?;
            let b = self.fresh_record(absorbed).await?;
            let seed = Uuid::now_v7();
            let provenance = Provenance {
                source: SourceId::parse(STEWARD_SOURCE)
                    .map_err(|e| StoreError::Integrity(e.to_string()))?,
                actor: steward.clone(),
                on_behalf_of: None,
                evidence: None,
                observed_at: None,
                recorded_at: truncate_to_micros(Utc::now()),
                correlation_id: None,
                causation_id: None,
                idempotency_key: IdempotencyKey::parse(&format!(
                    "{}:{seed}",
                    if undo { "unmerge" } else { "merge" }
                ))
                .map_err(|e| StoreError::Integrity(e.to_string()))?,
                reason: Some(reason.to_owned()),
                approved_by: None,
            };
            let sides = (
                Side {
                    id: a.id,
                    state: &a.state,
                },
                Side {
                    id: b.id,
                    state: &b.state,
                },
            );
            // The survivor's history: an unmerge replays it, and a record with others merged
            // into it seals by it.
            let history = if undo || !a.state.absorbed.is_empty() {
                Some(self.envelopes(survivor).await?)
            } else {
                None
            };
            let decided = if undo {
                let theirs = self.envelopes(absorbed).await?;
                decide_unmerge(
                    sides.0,
                    history.as_deref().unwrap_or_default(),
                    sides.1,
                    &theirs,
                    provenance,
                    &self.inner.policy,
                    seed,
                )?
            } else {
                decide_merge(sides.0, sides.1, provenance, &self.inner.policy, seed)?
            };
            let MergeEvents {
                merge_id,
                survivor: ours,
                absorbed: theirs,
            } = decided;
            // An unmerge drops each record's snapshots from the merge on (none is taken of
            // a merged record, so this only makes sure).
            let since = |state: &CustomerState| {
                undo.then(|| {
                    state
                        .absorbed
                        .values()
                        .chain(&state.merged_into)
                        .filter(|link| link.merge_id == merge_id)
                        .map(|link| link.at)
                        .min()
                })
                .flatten()
            };
            let sealing = self
                .sealing(a.id, &a.state, &ours, history.as_deref())
                .await?;
            let (first, a_after) =
                self.linked_request(&a, &ours, &sealing, exception.clone(), since(&a.state))?;
            let sealing = self.sealing(b.id, &b.state, &theirs, None).await?;
            let (second, b_after) =
                self.linked_request(&b, &theirs, &sealing, None, since(&b.state))?;
            match self.inner.log.write_linked(&[first, second]).await? {
                AppendOutcome::Appended { .. } => {
                    self.inner.states.remove(survivor.as_uuid());
                    self.inner.states.remove(absorbed.as_uuid());
                    tracing::info!(%merge_id, undo, "records merged or unmerged");
                    return Ok(MergeResult {
                        merge_id,
                        survivor,
                        absorbed,
                        survivor_version: a_after.stream_version,
                        absorbed_version: b_after.stream_version,
                        survivor_fields: touched(&ours),
                        absorbed_fields: touched(&theirs),
                    });
                }
                AppendOutcome::VersionConflict => {
                    self.inner.states.remove(survivor.as_uuid());
                    self.inner.states.remove(absorbed.as_uuid());
                    continue;
                }
                AppendOutcome::ExceptionNotOpen { exception_id } => {
                    return Err(MergeError::ExceptionNotOpen { exception_id });
                }
                AppendOutcome::Duplicate { .. } => {
                    return Err(StoreError::Integrity(
                        "a merge, which has no idempotency record, was taken for a duplicate"
                            .to_owned(),
                    )
                    .into());
                }
            }
        }
        Err(MergeError::Contention {
            attempts: MAX_ATTEMPTS,
        })
    }

    /// A record read from the store, never from this process's cache: a merge writes two
    /// records, and either may have moved on elsewhere.
    async fn fresh_record(&self, customer: CustomerId) -> Result<Record, StoreError> {
        let (stored, key) = self.stored_record(customer.as_uuid()).await?;
        let state = projection::open_state(customer.as_uuid(), &stored, key.as_ref())?;
        // Rows that are all clear (a bare registration) open without the key; the merge's
        // events are sealed under it all the same.
        let key = match key {
            Some(key) => Some(key),
            None if state.registered && state.erased.is_none() => {
                self.data_key(customer.as_uuid()).await?
            }
            None => None,
        };
        Ok(Record {
            id: customer,
            stored,
            key,
            state,
        })
    }

    async fn envelopes(&self, customer: CustomerId) -> Result<Vec<EventEnvelope>, StoreError> {
        Ok(self
            .stream(customer, None, None)
            .await?
            .into_iter()
            .map(|e| e.envelope)
            .collect())
    }

    /// The append of `events` to `record`'s stream: events sealed as `sealing` says, its
    /// projection and blind index brought to the state they leave.
    fn linked_request(
        &self,
        record: &Record,
        events: &[EventEnvelope],
        sealing: &Sealing,
        exception: Option<ExceptionWrite>,
        drop_snapshots_since: Option<chrono::DateTime<Utc>>,
    ) -> Result<(AppendRequest, CustomerState), StoreError> {
        let id = record.id.as_uuid();
        let key = record.key.as_ref().ok_or_else(|| {
            StoreError::Integrity(format!("customer {id} has a record but no data key"))
        })?;
        let (after, due_snapshots) = snapshots::fold_noting(record.state.clone(), events);
        let changes =
            projection::diff_stored(id, &record.stored, Some(key), &record.state, &after)?;
        let request = AppendRequest {
            customer_id: id,
            expected_version: record.state.stream_version,
            events: sealing.prepare(id, events, Some(key))?,
            new_data_key: None,
            idempotency: None,
            projection: ProjectionDiff {
                upserts: projection::seal(id, changes.upserts, Some(key))?,
                deletes: changes.deletes,
            },
            erase: false,
            exception,
            lookup: self.lookup_change(&record.state, &after),
            snapshots: snapshots::seal_all(id, &due_snapshots, Some(key))?,
            drop_snapshots_since,
        };
        Ok((request, after))
    }
}

fn touched(events: &[EventEnvelope]) -> Vec<String> {
    let mut fields: Vec<String> = events
        .iter()
        .filter_map(|e| e.event.payload.field().map(|f| f.to_string()))
        .collect();
    fields.sort();
    fields.dedup();
    fields
}
