//! The steward activity log: every steward action (on an exception, an assignment, a
//! four-eyes request or decision), one row each, written in the action's transaction.

use uuid::Uuid;

use super::{ActivityFilter, Deliveries, MAX_PAGE, NewActivity, StewardActivity, customer_id};
use crate::error::StoreError;
use crate::sql::{Row, Tx, sql};

impl Deliveries {
    /// Records one steward action on its own, for an action whose transaction could not
    /// carry it (a steward's direct command).
    pub async fn record_activity(&self, activity: &NewActivity) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        insert_activity(&mut tx, activity).await?;
        tx.commit().await
    }

    /// Steward actions, oldest first, at most `limit` after `filter.after`.
    pub async fn activity(
        &self,
        filter: &ActivityFilter,
        limit: u32,
    ) -> Result<Vec<StewardActivity>, StoreError> {
        let mut q = sql(
            "SELECT activity_id, steward, action, exception_id, approval_id, customer_id, field, \
             event_ids, detail, reason, at FROM steward_activity WHERE 1 = 1",
        );
        if let Some(steward) = &filter.steward {
            q.push(" AND steward = ").push_bind(steward.as_str());
        }
        if let Some(customer) = &filter.customer {
            q.push(" AND customer_id = ").push_bind(customer.as_uuid());
        }
        if let Some(after) = filter.after {
            q.push(" AND activity_id > ").push_bind(after);
        }
        q.push(" ORDER BY activity_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db).await?.iter().map(activity).collect()
    }
}

/// Records one steward action, in the caller's transaction.
pub(crate) async fn insert_activity(tx: &mut Tx, a: &NewActivity) -> Result<(), StoreError> {
    sql(
        "INSERT INTO steward_activity (activity_id, steward, action, exception_id, approval_id, \
         customer_id, field, event_ids, detail, reason, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(Uuid::now_v7())
    .bind(a.steward.as_str())
    .bind(a.action)
    .bind(a.exception_id)
    .bind(a.approval_id)
    .bind(a.customer_id.as_uuid())
    .bind(a.field.clone().unwrap_or_default())
    .bind(serde_json::to_string(&a.event_ids)?)
    .bind(a.detail.clone())
    .bind(a.reason.clone())
    .bind(crate::model::truncate_to_micros(a.at))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn activity(row: &Row) -> Result<StewardActivity, StoreError> {
    let field: String = row.try_get("field")?;
    Ok(StewardActivity {
        id: row.try_get("activity_id")?,
        steward: row.try_get("steward")?,
        action: row.try_get("action")?,
        exception_id: row.try_get("exception_id")?,
        approval_id: row.try_get("approval_id")?,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        field: (!field.is_empty()).then_some(field),
        event_ids: serde_json::from_str(&row.try_get::<String>("event_ids")?)?,
        detail: row.try_get("detail")?,
        reason: row.try_get("reason")?,
        at: row.try_get("at")?,
    })
}
