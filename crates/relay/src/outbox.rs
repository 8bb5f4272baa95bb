//! A planned batch as the store's delivery outbox keeps it ([`idledger_store::outbox`]): each
//! message exactly as decided (id, body, basis, the relation it establishes), and each erasure
//! the channel must act on. What is read back is sent as it was decided.

use idledger_domain::delivery::{HandoffKind, Relation};
use idledger_domain::ids::{CustomerId, EventId};
use idledger_store::StoreError;
use idledger_store::delivery::{ConsentBasis, ConsumerId};
use idledger_store::outbox::{OutboxItem, PendingBatch};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::{self, Message};
use crate::error::RelayError;
use crate::plan::{Batch, Copies, Erased, Planned};

#[derive(Serialize, Deserialize)]
#[serde(tag = "item", rename_all = "snake_case")]
enum Stored {
    Message {
        id: Uuid,
        kind: HandoffKind,
        event_type: String,
        customer_id: CustomerId,
        shown_customer: Uuid,
        event_id: EventId,
        position: u64,
        subject_field: Option<String>,
        fields: Vec<String>,
        basis: Vec<ConsentBasis>,
        /// The CloudEvent as sent: JSON, so UTF-8.
        body: String,
        relation: Option<Relation>,
    },
    Erasure {
        customer_id: CustomerId,
        position: u64,
        aliases: Vec<(ConsumerId, Uuid)>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        copies: Vec<Copies>,
    },
}

/// The batch as outbox items: its messages in order, then its erasures. A message is
/// personal unless it is the erasure notice, the one thing sent of a customer with no key.
pub fn items(batch: &Batch) -> Result<Vec<OutboxItem>, RelayError> {
    let mut items = Vec::with_capacity(batch.messages.len() + batch.erasures.len());
    for planned in &batch.messages {
        let m = &planned.message;
        let stored = Stored::Message {
            id: m.id,
            kind: m.kind,
            event_type: m.event_type.to_owned(),
            customer_id: m.customer_id,
            shown_customer: m.shown_customer,
            event_id: m.event_id,
            position: m.position,
            subject_field: m.subject_field.clone(),
            fields: m.fields.clone(),
            basis: m.basis.clone(),
            body: String::from_utf8(m.body.clone())
                .map_err(|_| StoreError::Integrity("a CloudEvent body is not UTF-8".to_owned()))?,
            relation: planned.relation,
        };
        items.push(OutboxItem {
            customer_id: m.customer_id,
            personal: m.kind != HandoffKind::Erasure,
            payload: serde_json::to_vec(&stored)?,
        });
    }
    for erased in &batch.erasures {
        let stored = Stored::Erasure {
            customer_id: erased.customer_id,
            position: erased.position,
            aliases: erased.aliases.clone(),
            copies: erased.copies.clone(),
        };
        items.push(OutboxItem {
            customer_id: erased.customer_id,
            personal: false,
            payload: serde_json::to_vec(&stored)?,
        });
    }
    Ok(items)
}

/// Numbers a batch just recorded as [`items`] numbered it, dropping what the outbox did not
/// keep (`kept`, per item): those are of a customer erased meanwhile, not to be sent.
pub fn number(batch: &mut Batch, kept: &[bool]) {
    let mut seq = 0u32..;
    let mut keep = kept.iter().copied();
    batch.messages.retain_mut(|planned| {
        planned.seq = seq.next().unwrap_or(u32::MAX);
        keep.next().unwrap_or(false)
    });
    batch.erasures.retain_mut(|erased| {
        erased.seq = seq.next().unwrap_or(u32::MAX);
        keep.next().unwrap_or(false)
    });
}

/// The batch an outbox holds, as it was decided. Items sealed for a customer erased since
/// are left out (nothing of theirs is sent now) and reported as handled.
pub fn batch(pending: PendingBatch) -> Result<(Batch, Vec<u32>), RelayError> {
    let mut batch = Batch {
        last_position: pending.through,
        ..Batch::default()
    };
    let mut dropped = Vec::new();
    for item in pending.items {
        let Some(payload) = item.payload else {
            dropped.push(item.seq);
            continue;
        };
        match serde_json::from_slice::<Stored>(&payload)? {
            Stored::Message {
                id,
                kind,
                event_type,
                customer_id,
                shown_customer,
                event_id,
                position,
                subject_field,
                fields,
                basis,
                body,
                relation,
            } => {
                let event_type = envelope::known_type(&event_type).ok_or_else(|| {
                    StoreError::Integrity(format!("the outbox holds an unknown type {event_type}"))
                })?;
                batch.messages.push(Planned {
                    message: Message {
                        id,
                        kind,
                        event_type,
                        customer_id,
                        shown_customer,
                        event_id,
                        position,
                        subject_field,
                        fields,
                        basis,
                        body: body.into_bytes(),
                    },
                    relation,
                    seq: item.seq,
                });
            }
            Stored::Erasure {
                customer_id,
                position,
                aliases,
                copies,
            } => batch.erasures.push(Erased {
                customer_id,
                position,
                aliases,
                copies,
                seq: item.seq,
            }),
        }
    }
    Ok((batch, dropped))
}
