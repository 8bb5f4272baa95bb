//! Sync exceptions: opened (or counted again), listed, annotated and closed.

use chrono::{DateTime, Duration, Utc};
use idledger_domain::exception::{ExceptionCommand, resolution_sla};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::CustomerId;
use uuid::Uuid;

use super::{
    AgeBuckets, Closing, ConsumerId, Deliveries, ExceptionFilter, ExceptionKind, ExceptionStatus,
    ExceptionSubject, KindCount, MAX_PAGE, NewActivity, NewSyncException, Resolution,
    SyncException, customer_id, insert_activity,
};
use idledger_domain::delivery::OtherCustomer;
use idledger_domain::exception::ExceptionEvent;

/// Why an assignment was not made.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    #[error(transparent)]
    Refused(#[from] idledger_domain::exception::ExceptionRefusal),
    #[error(transparent)]
    Store(#[from] StoreError),
}

use crate::error::StoreError;
use crate::model::ExceptionWrite;
use crate::sql::{Row, Sql, Tx, sql};

const EXCEPTION_COLUMNS: &str = "exception_id, consumer_id, customer_id, field, kind, detail, status, occurrences, created_at, updated_at, resolved_at, resolved_by, resolution, resolution_note, last_action, assigned_to, assigned_at";

impl Deliveries {
    /// Every registered consumer's acknowledgement SLA: the SLA its exceptions are due by.
    pub(super) async fn consumer_slas(&self) -> Result<Vec<(ConsumerId, Duration)>, StoreError> {
        let rows = sql("SELECT consumer_id, sla_secs FROM consumers")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|row| {
                let id = ConsumerId::parse(&row.try_get::<String>("consumer_id")?)
                    .map_err(|e| StoreError::Integrity(format!("stored consumer: {e}")))?;
                let secs = i64::try_from(row.get_u64("sla_secs")?).unwrap_or(i64::MAX);
                Ok((id, Duration::try_seconds(secs).unwrap_or(Duration::MAX)))
            })
            .collect()
    }

    /// Gives open exception `id` to `to` (`steward:<label>`) or to nobody, as `by`, and
    /// records it in the activity log, in one transaction. Refused if the exception is
    /// unknown or closed; assigning it to whoever has it already changes nothing.
    pub async fn assign_exception(
        &self,
        id: Uuid,
        to: Option<&str>,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<SyncException, AssignError> {
        let at = crate::model::truncate_to_micros(at);
        let current = self
            .exception(id)
            .await?
            .ok_or(idledger_domain::exception::ExceptionRefusal::Unknown)?;
        let state = current.state()?;
        let command = ExceptionCommand::Assign {
            to: to.map(str::to_owned),
            by: by.to_owned(),
            at,
        };
        let events = idledger_domain::exception::decide(Some(&state), &command)?;
        let Some(ExceptionEvent::Assigned { to, .. }) = events.into_iter().next() else {
            return Ok(current);
        };
        let mut tx = self.db.begin().await?;
        let changed = sql(
            "UPDATE sync_exceptions SET assigned_to = $1, assigned_at = $2, updated_at = $3 \
             WHERE exception_id = $4 AND status = 'open'",
        )
        .bind(to.clone())
        .bind(to.as_ref().map(|_| at))
        .bind(at)
        .bind(id)
        .execute(&mut tx)
        .await?;
        if changed != 1 {
            // Closed meanwhile (an acknowledgement, another steward).
            let status = self.exception(id).await?.map(|e| e.status);
            return Err(idledger_domain::exception::ExceptionRefusal::Closed {
                status: status.unwrap_or(super::ExceptionStatus::Resolved),
            }
            .into());
        }
        insert_activity(
            &mut tx,
            &NewActivity {
                steward: by.to_owned(),
                action: if to.is_some() { "assign" } else { "unassign" },
                exception_id: Some(id),
                approval_id: None,
                customer_id: current.customer_id,
                field: current.field.clone(),
                event_ids: Vec::new(),
                detail: to.clone().or(current.assigned_to.clone()),
                reason: None,
                at,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(self
            .exception(id)
            .await?
            .ok_or(idledger_domain::exception::ExceptionRefusal::Unknown)?)
    }

    /// The open exceptions per kind at `now`: how many, past their SLA, unassigned, by age.
    /// Kinds with none open are left out.
    pub async fn open_counts(&self, now: DateTime<Utc>) -> Result<Vec<KindCount>, StoreError> {
        let slas = self.consumer_slas().await?;
        let mut q = sql("SELECT kind, COUNT(*) AS open, SUM(CASE WHEN ");
        push_overdue(&mut q, now, &slas);
        q.push(" THEN 1 ELSE 0 END) AS overdue, ")
            .push("SUM(CASE WHEN assigned_to IS NULL THEN 1 ELSE 0 END) AS unassigned");
        let ages = [
            ("under_1h", Duration::hours(1)),
            ("under_1d", Duration::days(1)),
            ("under_7d", Duration::days(7)),
        ];
        for (name, age) in ages {
            q.push(", SUM(CASE WHEN created_at >= ")
                .push_bind(now - age)
                .push(" THEN 1 ELSE 0 END) AS ")
                .push(name);
        }
        q.push(" FROM sync_exceptions WHERE status = 'open' GROUP BY kind ORDER BY kind");
        let mut out = Vec::new();
        for row in q.fetch_all(&self.db).await? {
            let sum = |name: &str| -> Result<u64, StoreError> {
                Ok(row
                    .try_get::<Option<i64>>(name)?
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0))
            };
            let (h, d, w) = (sum("under_1h")?, sum("under_1d")?, sum("under_7d")?);
            let open = row.get_u64("open")?;
            out.push(KindCount {
                kind: row.parse("kind")?,
                open,
                overdue: sum("overdue")?,
                unassigned: sum("unassigned")?,
                by_age: AgeBuckets {
                    under_1h: h,
                    under_1d: d.saturating_sub(h),
                    under_7d: w.saturating_sub(d),
                    older: open.saturating_sub(w),
                },
            });
        }
        Ok(out)
    }

    /// Opens a sync exception, or counts a repeat of the open one (same system, customer,
    /// field and kind) with the newest detail.
    pub async fn open_exception(&self, e: &NewSyncException) -> Result<SyncException, StoreError> {
        let mut q = sql(
            "INSERT INTO sync_exceptions (exception_id, consumer_id, customer_id, field, kind, detail, status, occurrences, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, 'open', 1, $7, $7) \
             ON CONFLICT (consumer_id, customer_id, field, kind) WHERE status = 'open' \
             DO UPDATE SET detail = EXCLUDED.detail, occurrences = sync_exceptions.occurrences + 1, updated_at = EXCLUDED.updated_at \
             RETURNING ",
        )
        .bind(Uuid::now_v7())
        .bind(e.key.subject().as_str())
        .bind(e.key.customer_id().as_uuid())
        .bind(field_column(e.key.field()))
        .bind(e.key.kind().as_str())
        .bind(serde_json::to_string(&e.detail)?)
        .bind(e.at);
        q.push(EXCEPTION_COLUMNS);
        exception(&q.fetch_one(&self.db).await?)
    }

    /// Sync exceptions in id (= creation) order, at most `limit` after `filter.after`.
    pub async fn exceptions(
        &self,
        filter: &ExceptionFilter,
        limit: u32,
    ) -> Result<Vec<SyncException>, StoreError> {
        let mut q = select();
        q.push(" WHERE 1 = 1");
        if let Some(c) = &filter.consumer {
            q.push(" AND consumer_id = ").push_bind(c.as_str());
        }
        if let Some(c) = &filter.customer {
            // A duplicate pair is keyed on its lower customer and names the other as its
            // subject: a customer's exceptions include those where it is the other.
            q.push(" AND (customer_id = ")
                .push_bind(c.as_uuid())
                .push(" OR (kind = ")
                .push_bind(ExceptionKind::DuplicateCandidate.as_str())
                .push(" AND consumer_id = ")
                .push_bind(
                    ExceptionSubject::Customer(OtherCustomer::new(*c))
                        .as_str()
                        .to_owned(),
                )
                .push("))");
        }
        if filter.open_only {
            q.push(" AND status = 'open'");
        }
        if let Some(kind) = filter.kind {
            q.push(" AND kind = ").push_bind(kind.as_str());
        }
        if let Some(field) = &filter.field {
            q.push(" AND field = ").push_bind(field.as_str());
        }
        if let Some(status) = filter.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(before) = filter.created_before {
            q.push(" AND created_at < ").push_bind(before);
        }
        if let Some(after) = filter.after {
            q.push(" AND exception_id > ").push_bind(after);
        }
        match &filter.assignee {
            Some(super::Assignee::Nobody) => {
                q.push(" AND assigned_to IS NULL");
            }
            Some(super::Assignee::Steward(steward)) => {
                q.push(" AND assigned_to = ").push_bind(steward.as_str());
            }
            None => {}
        }
        if let Some(now) = filter.overdue_at {
            let slas = self.consumer_slas().await?;
            q.push(" AND status = 'open' AND ");
            push_overdue(&mut q, now, &slas);
        }
        q.push(" ORDER BY exception_id LIMIT ")
            .push_bind(limit.clamp(1, MAX_PAGE));
        q.fetch_all(&self.db).await?.iter().map(exception).collect()
    }

    pub async fn exception(&self, id: Uuid) -> Result<Option<SyncException>, StoreError> {
        let mut q = select();
        q.push(" WHERE exception_id = ").push_bind(id);
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(exception)
            .transpose()
    }

    /// Closes an open exception: the closed exception, or `None` if it is not open (or does
    /// not exist), so two stewards cannot both close it.
    pub async fn close_exception(
        &self,
        id: Uuid,
        closing: &Closing,
    ) -> Result<Option<SyncException>, StoreError> {
        let mut q = closing_update(closing);
        q.push(" AND exception_id = ")
            .push_bind(id)
            .push(" RETURNING ")
            .push(EXCEPTION_COLUMNS);
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(exception)
            .transpose()
    }

    /// Closes the open exceptions of `kinds` for the consumer, customer and field (`None`: the
    /// customer as a whole); the ids closed.
    pub async fn close_exceptions_where(
        &self,
        consumer: &ConsumerId,
        customer: CustomerId,
        field: Option<&FieldPath>,
        kinds: &[ExceptionKind],
        closing: &Closing,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut q = closing_update(closing);
        q.push(" AND consumer_id = ")
            .push_bind(consumer.as_str())
            .push(" AND customer_id = ")
            .push_bind(customer.as_uuid())
            .push(" AND field = ")
            .push_bind(field_column(field))
            .push(" AND kind")
            .push_in(self.db.engine(), kinds.iter().map(|k| k.as_str()))
            .push(" RETURNING exception_id");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(|r| r.try_get("exception_id"))
            .collect()
    }

    /// Records a steward action that leaves the exception open (a re-push); false if it is
    /// not open.
    pub async fn note_exception_action(
        &self,
        id: Uuid,
        action: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = noting(id, serde_json::to_string(action)?, at)
            .execute(&self.db)
            .await?;
        Ok(done == 1)
    }

    /// Open exceptions of `kinds` about the consumer and any of `customers`.
    pub async fn open_exceptions_of(
        &self,
        consumer: &ConsumerId,
        customers: &[Uuid],
        kinds: &[ExceptionKind],
    ) -> Result<Vec<SyncException>, StoreError> {
        let mut out = Vec::new();
        for chunk in customers.chunks(self.db.max_params() - 1 - kinds.len()) {
            let mut q = select();
            q.push(" WHERE status = 'open' AND consumer_id = ")
                .push_bind(consumer.as_str())
                .push(" AND customer_id")
                .push_in(self.db.engine(), chunk)
                .push(" AND kind")
                .push_in(self.db.engine(), kinds.iter().map(|k| k.as_str()));
            for row in q.fetch_all(&self.db).await? {
                out.push(exception(&row)?);
            }
        }
        Ok(out)
    }
}

/// `(<exception past its resolution SLA at now>)`, for a WHERE or a CASE: per kind, the
/// exceptions opened before `now` minus the kind's SLA, where that SLA is the consumer's for
/// each group of consumers sharing one, and the kind's default for any other subject.
fn push_overdue(q: &mut Sql, now: DateTime<Utc>, slas: &[(ConsumerId, Duration)]) {
    let mut groups: std::collections::BTreeMap<Duration, Vec<&str>> = Default::default();
    for (id, sla) in slas {
        groups.entry(*sla).or_default().push(id.as_str());
    }
    let cutoff = |sla: Duration| {
        now.checked_sub_signed(sla)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    q.push("(");
    for (i, kind) in ExceptionKind::ALL.iter().enumerate() {
        if i > 0 {
            q.push(" OR ");
        }
        q.push("(kind = ").push_bind(kind.as_str()).push(" AND (");
        let mut first = true;
        if kind.about_consumer() {
            for (sla, ids) in &groups {
                if !first {
                    q.push(" OR ");
                }
                first = false;
                q.push("(consumer_id IN ")
                    .push_list(ids.iter().copied())
                    .push(" AND created_at < ")
                    .push_bind(cutoff(resolution_sla(*kind, Some(*sla))))
                    .push(")");
            }
        }
        if !first {
            q.push(" OR ");
        }
        q.push("(created_at < ")
            .push_bind(cutoff(resolution_sla(*kind, None)));
        if kind.about_consumer() && !slas.is_empty() {
            q.push(" AND consumer_id NOT IN ")
                .push_list(slas.iter().map(|(id, _)| id.as_str()));
        }
        q.push(")))");
    }
    q.push(")");
}

/// How the one `field` column stores "no field" (the customer as a whole): an empty string,
/// so that the unique index on open exceptions covers it.
fn field_column(field: Option<&FieldPath>) -> String {
    field.map(ToString::to_string).unwrap_or_default()
}

fn select() -> Sql {
    let mut q = sql("SELECT ");
    q.push(EXCEPTION_COLUMNS).push(" FROM sync_exceptions");
    q
}

/// Records a steward's action on an open exception as its `last_action`.
fn noting(id: Uuid, action: String, at: DateTime<Utc>) -> Sql {
    sql(
        "UPDATE sync_exceptions SET last_action = $1, updated_at = $2 \
         WHERE exception_id = $3 AND status = 'open'",
    )
    .bind(action)
    .bind(at)
    .bind(id)
}

/// `UPDATE … SET <closed> WHERE status = 'open'`, for the caller to narrow.
fn closing_update(closing: &Closing) -> Sql {
    let mut q = sql("UPDATE sync_exceptions SET status = ");
    q.push_bind(closing.resolution.status().as_str())
        .push(", resolution = ")
        .push_bind(closing.resolution.as_str())
        .push(", resolved_by = ")
        .push_bind(closing.by.as_str())
        .push(", resolution_note = ")
        .push_bind(closing.note.as_str())
        .push(", resolved_at = ")
        .push_bind(closing.at)
        .push(", updated_at = ")
        .push_bind(closing.at)
        .push(" WHERE status = 'open'");
    q
}

fn exception(row: &Row) -> Result<SyncException, StoreError> {
    let bad = |e: idledger_domain::values::ValueError| {
        StoreError::Integrity(format!("stored sync exception: {e}"))
    };
    let field: String = row.try_get("field")?;
    let kind: ExceptionKind = row.parse("kind")?;
    let last_action: Option<String> = row.try_get("last_action")?;
    let resolution: Option<String> = row.try_get("resolution")?;
    Ok(SyncException {
        id: row.try_get("exception_id")?,
        subject: ExceptionSubject::parse(kind, &row.try_get::<String>("consumer_id")?)
            .map_err(bad)?,
        customer_id: customer_id(row.try_get("customer_id")?)?,
        field: (!field.is_empty()).then_some(field),
        kind,
        detail: serde_json::from_str(&row.try_get::<String>("detail")?)?,
        status: ExceptionStatus::parse(&row.try_get::<String>("status")?).map_err(bad)?,
        occurrences: row.get_u64("occurrences")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        resolved_at: row.try_get("resolved_at")?,
        resolved_by: row.try_get("resolved_by")?,
        resolution: resolution
            .as_deref()
            .map(str::parse::<Resolution>)
            .transpose()
            .map_err(|e| StoreError::Integrity(format!("stored resolution: {e}")))?,
        resolution_note: row.try_get("resolution_note")?,
        last_action: last_action
            .as_deref()
            .map(serde_json::from_str)
            .transpose()?,
        assigned_to: row.try_get("assigned_to")?,
        assigned_at: row.try_get("assigned_at")?,
    })
}

/// Erasure, in its own transaction: the customer's exceptions keep that they existed and how
/// they ended (status, resolution, who, when), not their evidence (value hashes, a webhook's
/// answer), the last action nor the resolution note (a steward's words may quote the record);
/// open ones close.
pub(crate) async fn close_erased_customers_exceptions(
    tx: &mut Tx,
    customer: Uuid,
) -> Result<(), StoreError> {
    let closing = Closing::automatic(
        ERASED_NOTE.to_owned(),
        crate::model::truncate_to_micros(Utc::now()),
    );
    let mut q = closing_update(&closing);
    q.push(" AND customer_id = ").push_bind(customer);
    q.execute(&mut *tx).await?;
    // A duplicate pair where the erased customer is the other one (the subject) is about them
    // too: it closes the same way. Its evidence names kinds and ids, never values, so it stays.
    let other = erased_as_other(customer)?;
    let mut q = closing_update(&closing);
    q.push(" AND kind = ")
        .push_bind(ExceptionKind::DuplicateCandidate.as_str())
        .push(" AND consumer_id = ")
        .push_bind(other);
    q.execute(&mut *tx).await?;
    // Every one is closed now, and a closed exception has a note: this one.
    sql(
        "UPDATE sync_exceptions SET detail = '{}', last_action = NULL, resolution_note = $1 \
         WHERE customer_id = $2",
    )
    .bind(ERASED_NOTE)
    .bind(customer)
    .execute(&mut *tx)
    .await?;
    // A steward's reason may quote the record too; what they did, when, stays.
    sql("UPDATE steward_activity SET reason = $1 WHERE customer_id = $2 AND reason IS NOT NULL")
        .bind(ERASED_NOTE)
        .bind(customer)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// How a duplicate pair's exception stores `customer` when it is the pair's other customer.
fn erased_as_other(customer: Uuid) -> Result<String, StoreError> {
    let id = CustomerId::from_uuid(customer)
        .map_err(|e| StoreError::Integrity(format!("an erased customer's id: {e}")))?;
    Ok(ExceptionSubject::Customer(OtherCustomer::new(id))
        .as_str()
        .to_owned())
}

/// The resolution note of every exception of an erased customer.
const ERASED_NOTE: &str = "the customer was erased";

/// Writes a steward action's change of an open exception in the action's own transaction;
/// false (nothing written) if the exception is no longer open.
pub(crate) async fn apply_exception_event(
    tx: &mut Tx,
    write: &ExceptionWrite,
) -> Result<bool, StoreError> {
    let id = write.exception_id;
    let changed = match &write.event {
        ExceptionEvent::Closed(closing) => {
            let mut q = closing_update(closing);
            q.push(" AND exception_id = ").push_bind(id);
            q.execute(&mut *tx).await?
        }
        ExceptionEvent::Repushed(action) | ExceptionEvent::Routed(action) => {
            noting(id, serde_json::to_string(action)?, action.at)
                .execute(&mut *tx)
                .await?
        }
        // Raising is not a steward's action: `Deliveries::open_exception` does it; nor is an
        // assignment a command's (`Deliveries::assign_exception`).
        ExceptionEvent::Opened { .. }
        | ExceptionEvent::Recurred { .. }
        | ExceptionEvent::Assigned { .. } => {
            return Err(StoreError::Integrity(format!(
                "a command may only note an action on or close exception {id}, not raise one"
            )));
        }
    };
    if changed != 1 {
        return Ok(false);
    }
    if let Some(approval) = &write.approval
        && !crate::approvals::mark_approved(tx, approval).await?
    {
        return Ok(false);
    }
    if let Some(activity) = &write.activity {
        super::insert_activity(tx, activity).await?;
    }
    Ok(true)
}
