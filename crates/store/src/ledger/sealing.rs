//! Whose data key seals each event of an append: the stream's customer's, but for what a
//! survivor records about a record merged into it, which is sealed under that record's key
//! (`idledger_domain::merge::KeyOwners`). Erasing that record after an unmerge then leaves
//! none of its data readable in the survivor's history.

use std::collections::HashMap;

use idledger_domain::event::{EventEnvelope, EventPayload};
use idledger_domain::ids::CustomerId;
use idledger_domain::merge::KeyOwners;
use idledger_domain::state::CustomerState;
use uuid::Uuid;

use super::{Ledger, prepare_for};
use crate::crypto::DataKey;
use crate::error::StoreError;
use crate::model::PreparedEvent;

/// The key owner of each event of an append (`None`: the stream's customer), and their keys.
pub(super) struct Sealing {
    owners: Vec<Option<Uuid>>,
    keys: HashMap<Uuid, DataKey>,
}

impl Sealing {
    /// The events sealed: each under its owner's key, the stream's own under `own_key`.
    pub(super) fn prepare(
        &self,
        customer: Uuid,
        events: &[EventEnvelope],
        own_key: Option<&DataKey>,
    ) -> Result<Vec<PreparedEvent>, StoreError> {
        events
            .iter()
            .zip(&self.owners)
            .map(|(envelope, owner)| match owner {
                Some(owner) => prepare_for(customer, envelope, self.keys.get(owner), Some(*owner)),
                None => prepare_for(customer, envelope, own_key, None),
            })
            .collect()
    }
}

impl Ledger {
    /// Who seals each of `events`, the next of `customer`'s stream at `state`. Only a record
    /// with records merged into it, or being merged into, has events sealed for others, and
    /// only then is its history read (`history`, if the caller has it already).
    pub(super) async fn sealing(
        &self,
        customer: CustomerId,
        state: &CustomerState,
        events: &[EventEnvelope],
        history: Option<&[EventEnvelope]>,
    ) -> Result<Sealing, StoreError> {
        let merging = events
            .iter()
            .any(|e| matches!(e.event.payload, EventPayload::CustomerMerged { .. }));
        if state.absorbed.is_empty() && !merging {
            return Ok(Sealing {
                owners: vec![None; events.len()],
                keys: HashMap::new(),
            });
        }
        let read;
        let history = match history {
            Some(history) => history,
            None if state.absorbed.is_empty() => &[],
            None => {
                // Up to the state's version: a later event means the append will find the
                // stream moved on and decide again.
                read = self
                    .stream(customer, None, None)
                    .await?
                    .into_iter()
                    .map(|e| e.envelope)
                    .filter(|e| e.stream_version <= state.stream_version)
                    .collect::<Vec<_>>();
                &read
            }
        };
        let mut owners = KeyOwners::new(customer, history);
        let mut sealing = Sealing {
            owners: Vec::with_capacity(events.len()),
            keys: HashMap::new(),
        };
        for envelope in events {
            let owner = owners.owner(envelope);
            if owner == customer {
                sealing.owners.push(None);
                continue;
            }
            let id = owner.as_uuid();
            if let std::collections::hash_map::Entry::Vacant(slot) = sealing.keys.entry(id) {
                // A record merged into another is frozen, never erased on its own: its key is
                // there.
                let key = self.data_key(id).await?.ok_or_else(|| {
                    StoreError::Integrity(format!(
                        "customer {id}, merged into {customer}, has no data key"
                    ))
                })?;
                slot.insert(key);
            }
            sealing.owners.push(Some(id));
        }
        Ok(sealing)
    }
}
