//! Four-eyes approvals: a steward's override of a field the policy marks `four_eyes` waits
//! here for a second, different steward. The request (action, reason, value) is sealed under
//! the customer's data key, so erasure leaves nothing of it readable (and deletes the rows).
//! Approving runs the request as a command whose exception change marks the approval approved
//! in the same transaction ([`mark_approved`]); rejecting or voiding only closes it.

use chrono::{DateTime, Utc};
use idledger_domain::ids::CustomerId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::delivery::{MAX_PAGE, NewActivity, customer_id, insert_activity};
use crate::error::StoreError;
use crate::ledger::Ledger;
use crate::sql::{Row, Tx, sql};

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    /// Its exception closed, or its customer was erased, before a second steward decided.
    Void,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Void => "void",
        }
    }

    fn parse(raw: &str) -> Result<Self, StoreError> {
        Ok(match raw {
            "pending" => Self::Pending,
            "approved" => Self::Approved,
            "rejected" => Self::Rejected,
            "void" => Self::Void,
            other => {
                return Err(StoreError::Integrity(format!(
                    "stored approval status {other:?}"
                )));
            }
        })
    }
}

/// A steward's action waiting for (or decided by) a second steward. No value: that is in the
/// sealed request ([`Ledger::approval_request`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Approval {
    pub id: Uuid,
    pub exception_id: Uuid,
    pub customer_id: CustomerId,
    pub field: String,
    /// `steward:<label>`.
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub status: ApprovalStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_note: Option<String>,
}

/// What the first steward asked for, kept sealed until a second steward approves it. Its
/// `Debug` leaves the value out.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The steward action (`accept`).
    pub action: idledger_domain::event::StewardAction,
    pub reason: Option<String>,
    /// The value to take into the record, for an accept of a consumer's value.
    pub value: Option<serde_json::Value>,
}

impl std::fmt::Debug for ApprovalRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalRequest")
            .field("action", &self.action)
            .field("has_reason", &self.reason.is_some())
            .field("has_value", &self.value.is_some())
            .finish()
    }
}

/// A new approval to wait for.
#[derive(Debug, Clone, PartialEq)]
pub struct NewApproval {
    pub exception_id: Uuid,
    pub customer_id: CustomerId,
    pub field: String,
    pub requested_by: String,
    pub request: ApprovalRequest,
    pub at: DateTime<Utc>,
}

/// A second steward's decision on a pending approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalDecision {
    pub approval_id: Uuid,
    /// `steward:<label>`.
    pub decided_by: String,
    pub note: Option<String>,
    pub at: DateTime<Utc>,
}

/// Why an approval could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The exception already has an approval waiting.
    #[error("exception {exception_id} already has an approval waiting: {approval_id}")]
    AlreadyPending {
        exception_id: Uuid,
        approval_id: Uuid,
    },
    /// The customer has no data key (erased): nothing of theirs can be kept.
    #[error("the customer was erased")]
    Erased,
    #[error(transparent)]
    Store(#[from] StoreError),
}

const COLUMNS: &str = "approval_id, exception_id, customer_id, field, requested_by, requested_at, status, decided_by, decided_at, decision_note";

/// Binds a sealed request to its row: one copied to another approval or customer does not
/// open.
fn aad(approval: Uuid, customer: CustomerId) -> Vec<u8> {
    let mut out = b"idledger-approval-v1\0".to_vec();
    out.extend_from_slice(approval.as_bytes());
    out.extend_from_slice(customer.as_uuid().as_bytes());
    out
}

impl Ledger {
    /// Records `new` as pending, with its activity (`request_approval`), in one transaction.
    pub async fn request_approval(
        &self,
        new: &NewApproval,
        activity: &NewActivity,
    ) -> Result<Approval, ApprovalError> {
        let key = self
            .data_key(new.customer_id.as_uuid())
            .await?
            .ok_or(ApprovalError::Erased)?;
        let id = Uuid::now_v7();
        let at = crate::model::truncate_to_micros(new.at);
        let sealed = key.seal(
            &serde_json::to_vec(&new.request).map_err(StoreError::from)?,
            &aad(id, new.customer_id),
        )?;
        let db = self.store().db();
        let mut tx = db.begin().await?;
        if let Some(existing) = pending_of(&mut tx, new.exception_id).await? {
            return Err(ApprovalError::AlreadyPending {
                exception_id: new.exception_id,
                approval_id: existing,
            });
        }
        sql(
            "INSERT INTO steward_approvals (approval_id, exception_id, customer_id, field, \
             requested_by, request, requested_at, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending')",
        )
        .bind(id)
        .bind(new.exception_id)
        .bind(new.customer_id.as_uuid())
        .bind(new.field.as_str())
        .bind(new.requested_by.as_str())
        .bind(sealed)
        .bind(at)
        .execute(&mut tx)
        .await?;
        insert_activity(
            &mut tx,
            &NewActivity {
                approval_id: Some(id),
                ..activity.clone()
            },
        )
        .await?;
        tx.commit().await?;
        self.approval(id)
            .await?
            .ok_or_else(|| StoreError::Integrity(format!("approval {id} vanished")).into())
    }

    pub async fn approval(&self, id: Uuid) -> Result<Option<Approval>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(COLUMNS)
            .push(" FROM steward_approvals WHERE approval_id = ")
            .push_bind(id);
        q.fetch_optional(self.store().db())
            .await?
            .as_ref()
            .map(approval)
            .transpose()
    }

    /// The request approval `id` carries, opened; `None` if there is no such approval or its
    /// customer was erased.
    pub async fn approval_request(&self, id: Uuid) -> Result<Option<ApprovalRequest>, StoreError> {
        let Some(row) =
            sql("SELECT customer_id, request FROM steward_approvals WHERE approval_id = $1")
                .bind(id)
                .fetch_optional(self.store().db())
                .await?
        else {
            return Ok(None);
        };
        let customer = customer_id(row.try_get("customer_id")?)?;
        let Some(key) = self.data_key(customer.as_uuid()).await? else {
            return Ok(None);
        };
        let sealed: Vec<u8> = row.try_get("request")?;
        let opened = key.open(&sealed, &aad(id, customer))?;
        Ok(Some(serde_json::from_slice(&opened)?))
    }

    /// Approvals in id (= request) order: those of `status` (`None`: all), of one exception
    /// if given, at most `limit` after `after`.
    pub async fn approvals(
        &self,
        status: Option<ApprovalStatus>,
        exception: Option<Uuid>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Approval>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(COLUMNS).push(" FROM steward_approvals WHERE 1 = 1");
        if let Some(status) = status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(exception) = exception {
            q.push(" AND exception_id = ").push_bind(exception);
        }
        if let Some(after) = after {
            q.push(" AND approval_id > ").push_bind(after);
        }
        q.push(" ORDER BY approval_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(self.store().db())
            .await?
            .iter()
            .map(approval)
            .collect()
    }

    /// Closes pending approval `decision.approval_id` as `status` (rejected or void) with its
    /// activity, in one transaction; false if it was no longer pending.
    pub async fn close_approval(
        &self,
        decision: &ApprovalDecision,
        status: ApprovalStatus,
        activity: Option<&NewActivity>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.store().db().begin().await?;
        if !decide(&mut tx, decision, status).await? {
            return Ok(false);
        }
        if let Some(activity) = activity {
            insert_activity(&mut tx, activity).await?;
        }
        tx.commit().await?;
        Ok(true)
    }
}

async fn pending_of(tx: &mut Tx, exception: Uuid) -> Result<Option<Uuid>, StoreError> {
    sql("SELECT approval_id FROM steward_approvals WHERE exception_id = $1 AND status = 'pending'")
        .bind(exception)
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get("approval_id"))
        .transpose()
}

async fn decide(
    tx: &mut Tx,
    decision: &ApprovalDecision,
    status: ApprovalStatus,
) -> Result<bool, StoreError> {
    let changed = sql(
        "UPDATE steward_approvals SET status = $1, decided_by = $2, decided_at = $3, \
         decision_note = $4 WHERE approval_id = $5 AND status = 'pending'",
    )
    .bind(status.as_str())
    .bind(decision.decided_by.as_str())
    .bind(crate::model::truncate_to_micros(decision.at))
    .bind(decision.note.clone())
    .bind(decision.approval_id)
    .execute(&mut *tx)
    .await?;
    Ok(changed == 1)
}

/// Marks a pending approval approved, in the transaction of the command that carries it out;
/// false if it was no longer pending (the command is then rolled back).
pub(crate) async fn mark_approved(
    tx: &mut Tx,
    decision: &ApprovalDecision,
) -> Result<bool, StoreError> {
    decide(tx, decision, ApprovalStatus::Approved).await
}

fn approval(row: &Row) -> Result<Approval, StoreError> {
    Ok(Approval {
        id: row.try_get("approval_id")?,
        exception_id: row.try_get("exception_id")?,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        field: row.try_get("field")?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        status: ApprovalStatus::parse(&row.try_get::<String>("status")?)?,
        decided_by: row.try_get("decided_by")?,
        decided_at: row.try_get("decided_at")?,
        decision_note: row.try_get("decision_note")?,
    })
}
