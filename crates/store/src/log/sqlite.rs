//! SQLite's bulk append: the batch's checks read in a few queries, its rows written in one
//! multi-row statement per table. SQLite runs in-process, but sqlx hands every statement to
//! the connection's own thread and waits for the answer: appending one by one took about ten
//! such hand-offs per append, in series behind the one writer (docs/benchmarks.md, run 12).

use uuid::Uuid;

use super::bulk::{BatchRead, BulkWrite, decide};
use super::{EVENT_COLUMNS, INSERT_SNAPSHOT, event_args, head, replace_lookup_rows};
use crate::error::StoreError;
use crate::model::{AppendOutcome, AppendRequest};
use crate::sql::{Arg, Db, Engine, Tx, sql};

/// Stream heads read per statement: one `SELECT … LIMIT 1` each, joined by `UNION ALL`
/// (SQLite allows 500 terms in a compound `SELECT`).
const HEADS_PER_STATEMENT: usize = 400;

pub(super) async fn write_bulk(
    db: &Db,
    batch: &[AppendRequest],
) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
    let mut tx = db.begin_exclusive().await?;
    let read = read(db, &mut tx, batch).await?;
    let (write, results) = decide(batch, read);
    store(db, &mut tx, write).await?;
    tx.commit().await?;
    Ok(results)
}

/// What [`decide`] needs, read under the write lock.
async fn read(db: &Db, tx: &mut Tx, batch: &[AppendRequest]) -> Result<BatchRead, StoreError> {
    let mut read = BatchRead {
        position: head(tx).await?,
        ..BatchRead::default()
    };
    let keys: Vec<(&str, &str)> = batch
        .iter()
        .filter_map(|r| r.idempotency.as_ref())
        .map(|i| (i.source.as_str(), i.key.as_str()))
        .collect();
    for chunk in keys.chunks(db.rows_per_statement(2)) {
        let mut q = sql(
            "SELECT source, idempotency_key, request_hash, result FROM idempotency \
             WHERE (source, idempotency_key) IN (",
        );
        q.push_values(Engine::Sqlite, chunk, |(source, key)| {
            vec![(*source).into(), (*key).into()]
        })
        .push(")");
        for row in q.fetch_all(&mut *tx).await? {
            read.used.insert(
                (row.try_get("source")?, row.try_get("idempotency_key")?),
                (row.try_get("request_hash")?, row.try_get("result")?),
            );
        }
    }
    let mut customers: Vec<Uuid> = batch.iter().map(|r| r.customer_id).collect();
    customers.sort_unstable();
    customers.dedup();
    for chunk in customers.chunks(HEADS_PER_STATEMENT) {
        // One index seek per stream: a `GROUP BY` with `MAX` would read every event of each.
        let mut q = sql("");
        for (i, customer) in chunk.iter().enumerate() {
            if i > 0 {
                q.push(" UNION ALL ");
            }
            q.push(
                "SELECT * FROM (SELECT customer_id, stream_version, hash FROM events \
                 WHERE customer_id = ",
            )
            .push_bind(*customer)
            .push(" ORDER BY stream_version DESC LIMIT 1)");
        }
        for row in q.fetch_all(&mut *tx).await? {
            read.heads.insert(
                row.try_get("customer_id")?,
                (row.get_u64("stream_version")?, row.try_get("hash")?),
            );
        }
    }
    let new_keys: Vec<Uuid> = batch
        .iter()
        .filter(|r| r.new_data_key.is_some())
        .map(|r| r.customer_id)
        .collect();
    for chunk in new_keys.chunks(db.rows_per_statement(1)) {
        let mut q = sql("SELECT customer_id FROM data_keys WHERE customer_id IN ");
        q.push_list(chunk.iter().copied());
        for row in q.fetch_all(&mut *tx).await? {
            read.keyed.insert(row.try_get("customer_id")?);
        }
    }
    Ok(read)
}

/// The batch's rows: one multi-row statement per table (more only past SQLite's parameter
/// limit), the rarer changes one statement each.
async fn store(db: &Db, tx: &mut Tx, write: BulkWrite) -> Result<(), StoreError> {
    let keys: Vec<(Uuid, &[u8], &str)> = write
        .key_customers
        .iter()
        .zip(&write.wrapped_keys)
        .zip(&write.key_ids)
        .map(|((c, w), k)| (*c, w.as_slice(), k.as_str()))
        .collect();
    insert(
        db,
        tx,
        "INSERT INTO data_keys (customer_id, wrapped_key, key_id) ",
        3,
        &keys,
        |(c, w, k)| vec![(*c).into(), (*w).into(), (*k).into()],
        "",
    )
    .await?;
    let events_head = format!("INSERT INTO events ({EVENT_COLUMNS}) ");
    insert(db, tx, &events_head, 11, &write.events, event_args, "").await?;
    let (upserts, deletes): (Vec<_>, Vec<_>) = write
        .projection
        .iter()
        .partition(|(_, record)| record.is_some());
    insert(
        db,
        tx,
        "INSERT INTO projections (customer_id, kind, key, record) ",
        4,
        &upserts,
        |((c, kind, key), record)| {
            vec![
                (*c).into(),
                kind.as_str().into(),
                key.as_str().into(),
                record.as_deref().unwrap_or_default().into(),
            ]
        },
        " ON CONFLICT (customer_id, kind, key) DO UPDATE SET record = EXCLUDED.record",
    )
    .await?;
    for ((customer, kind, key), _) in deletes {
        sql("DELETE FROM projections WHERE customer_id = $1 AND kind = $2 AND key = $3")
            .bind(*customer)
            .bind(kind.as_str())
            .bind(key.as_str())
            .execute(&mut *tx)
            .await?;
    }
    insert(
        db,
        tx,
        "INSERT INTO idempotency (source, idempotency_key, customer_id, request_hash, result) ",
        5,
        &write.idempotency,
        |(c, r)| {
            vec![
                r.source.as_str().into(),
                r.key.as_str().into(),
                (*c).into(),
                r.request_hash.as_slice().into(),
                r.result.as_str().into(),
            ]
        },
        "",
    )
    .await?;
    for (customer, digests) in &write.lookup {
        replace_lookup_rows(tx, *customer, digests).await?;
    }
    // After the events: `covers_until` is taken from them.
    for (customer, version, fold, state) in &write.snapshots {
        sql(INSERT_SNAPSHOT)
            .bind(*customer)
            .bind(*version)
            .bind(*fold)
            .bind(state.as_str())
            .bind(*customer)
            .bind(*version)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

/// `head VALUES (…), (…) tail` for `rows`, in as few statements as SQLite's parameter limit
/// allows; nothing for no rows.
async fn insert<R>(
    db: &Db,
    tx: &mut Tx,
    head: &str,
    columns: usize,
    rows: &[R],
    args: impl Fn(&R) -> Vec<Arg>,
    tail: &str,
) -> Result<(), StoreError> {
    for chunk in rows.chunks(db.rows_per_statement(columns)) {
        let mut q = sql(head);
        q.push_values(Engine::Sqlite, chunk, &args).push(tail);
        q.execute(&mut *tx).await?;
    }
    Ok(())
}
