//! The keys the master key wraps, and moving them to a new master key (`idledger keys rewrap`).
//!
//! The master key is a key-encryption key ([`KeyEncryptionKey`]): it wraps every customer's
//! data key and the [`DerivationRoot`], and each wrapped key records the id of the key that
//! wrapped it. A rewrap re-wraps them under a new key in batches, one transaction each; a
//! row `key_rewrap` marks it unfinished, and while it stands no ledger opens (its keys are
//! under two master keys), until a rewrap run finishes the job and records the new key's
//! check value in the same transaction that removes the mark.

use uuid::Uuid;

use crate::crypto::{DerivationRoot, KeyEncryptionKey};
use crate::error::StoreError;
use crate::model::truncate_to_micros;
use crate::sql::{Db, sql};

/// Keys moved per transaction unless told otherwise.
pub const DEFAULT_REWRAP_BATCH: u32 = 500;

/// The store's wrapped keys. From [`crate::Store::keys`].
#[derive(Debug, Clone)]
pub struct Keys {
    db: Db,
}

/// How a rewrap runs.
#[derive(Debug, Clone, Copy)]
pub struct RewrapOptions {
    /// Data keys per transaction.
    pub batch_size: u32,
    /// Stop (unfinished, resumable) after this many batches: for tests of the resumption.
    pub max_batches: Option<u64>,
}

impl Default for RewrapOptions {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_REWRAP_BATCH,
            max_batches: None,
        }
    }
}

/// What a rewrap did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapReport {
    /// Data keys re-wrapped by this run.
    pub data_keys_moved: u64,
    /// Whether this run re-wrapped the derivation root.
    pub root_moved: bool,
    /// Data keys still under the old key (0 once finished).
    pub remaining: u64,
    /// Every key is under the new key and its check value is the store's.
    pub finished: bool,
}

/// What a rewrap would move (`--dry-run`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewrapPlan {
    pub data_keys: u64,
    pub root: bool,
}

impl Keys {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// The id of the key an unfinished rewrap moves to, if one is unfinished.
    pub async fn pending_rewrap(&self) -> Result<Option<String>, StoreError> {
        sql("SELECT new_key_id FROM key_rewrap WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.try_get("new_key_id"))
            .transpose()
    }

    /// Refuses to go on while a rewrap is unfinished: some keys are under the old master key
    /// and some under the new, so neither key alone can serve every customer.
    pub async fn refuse_unfinished_rewrap(&self) -> Result<(), StoreError> {
        match self.pending_rewrap().await? {
            None => Ok(()),
            Some(id) => Err(StoreError::Config(format!(
                "a rewrap of the keys to the master key {id} is unfinished: run `idledger keys \
                 rewrap` again with the current key and the new key file to finish it"
            ))),
        }
    }

    /// The derivation root, unwrapped with `kek`; created on first use from
    /// [`KeyEncryptionKey::initial_derivation_root`].
    pub async fn derivation_root(
        &self,
        kek: &dyn KeyEncryptionKey,
    ) -> Result<DerivationRoot, StoreError> {
        self.refuse_unfinished_rewrap().await?;
        let (wrapped, key_id) = stored_root(&self.db, kek).await?;
        if key_id != kek.key_id() {
            return Err(StoreError::Config(format!(
                "the derivation root is wrapped under the master key {key_id}, not under this \
                 key ({})",
                kek.key_id()
            )));
        }
        kek.unwrap_root(&wrapped)
    }

    /// What a rewrap to `new` would move.
    pub async fn plan_rewrap(&self, new: &dyn KeyEncryptionKey) -> Result<RewrapPlan, StoreError> {
        let root = sql("SELECT key_id FROM derivation_root WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.try_get::<String>("key_id"))
            .transpose()?;
        Ok(RewrapPlan {
            data_keys: remaining(&self.db, &new.key_id()).await?,
            root: root.is_none_or(|id| id != new.key_id()),
        })
    }

    /// Re-wraps every data key and the derivation root from `old` (the store's current key,
    /// its check value recorded) to `new`, `options.batch_size` keys per transaction, calling
    /// `progress` with the count moved so far after each. Resumable: run again after a crash
    /// or an unfinished run and it goes on from where it stopped. Once nothing is left it
    /// records `new`'s check value, so that only `new` opens the store afterwards.
    pub async fn rewrap(
        &self,
        old: &dyn KeyEncryptionKey,
        new: &dyn KeyEncryptionKey,
        options: RewrapOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<RewrapReport, StoreError> {
        let (old_id, new_id) = (old.key_id(), new.key_id());
        if old_id == new_id {
            return Err(StoreError::Config(
                "the new master key is the current one: nothing to rewrap".to_owned(),
            ));
        }
        self.check_current(old, new).await?;
        self.mark_started(new).await?;
        let mut report = RewrapReport {
            root_moved: self.rewrap_root(old, new).await?,
            ..RewrapReport::default()
        };
        let mut batches = 0;
        loop {
            if options.max_batches.is_some_and(|max| batches >= max) {
                report.remaining = remaining(&self.db, &new_id).await?;
                return Ok(report);
            }
            let mut tx = self.db.begin().await?;
            let mut q = sql("SELECT customer_id, wrapped_key, key_id FROM data_keys \
                 WHERE key_id IS NULL OR key_id <> $1 ORDER BY customer_id LIMIT $2")
            .bind(&new_id);
            q = q.bind(i64::from(options.batch_size.max(1)));
            let rows = q.fetch_all(&mut tx).await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let customer: Uuid = row.try_get("customer_id")?;
                let key_id: Option<String> = row.try_get("key_id")?;
                // No id: wrapped before ids were stored, by the store's key then: `old`.
                if key_id.as_ref().is_some_and(|id| *id != old_id) {
                    return Err(StoreError::Integrity(format!(
                        "customer {customer}'s data key is wrapped under the master key {}, \
                         neither the current ({old_id}) nor the new one ({new_id})",
                        key_id.unwrap_or_default()
                    )));
                }
                let key = old.unwrap_key(&row.try_get::<Vec<u8>>("wrapped_key")?, customer)?;
                sql("UPDATE data_keys SET wrapped_key = $1, key_id = $2 WHERE customer_id = $3")
                    .bind(new.wrap(&key, customer)?)
                    .bind(&new_id)
                    .bind(customer)
                    .execute(&mut tx)
                    .await?;
            }
            tx.commit().await?;
            batches += 1;
            report.data_keys_moved += rows.len() as u64;
            progress(report.data_keys_moved);
        }
        self.finish(new).await?;
        report.finished = true;
        Ok(report)
    }

    /// `old` must be the store's key (its check value recorded); a store whose check value is
    /// already `new`'s finished its rewrap.
    async fn check_current(
        &self,
        old: &dyn KeyEncryptionKey,
        new: &dyn KeyEncryptionKey,
    ) -> Result<(), StoreError> {
        let check: Option<Vec<u8>> = sql("SELECT check_value FROM master_key_check WHERE id = 1")
            .fetch_optional(&self.db)
            .await?
            .map(|r| r.try_get("check_value"))
            .transpose()?;
        match check {
            Some(c) if old.matches_check(&c) => Ok(()),
            Some(c) if new.matches_check(&c) => Err(StoreError::Config(
                "the store's master key is the new key already: the rewrap is finished; \
                 configure the new key"
                    .to_owned(),
            )),
            Some(_) => Err(StoreError::Config(
                "the current master key is not the key the store was written with".to_owned(),
            )),
            None => Err(StoreError::Config(
                "the store has no check value of its master key yet: open it once with its \
                 key before a rewrap"
                    .to_owned(),
            )),
        }
    }

    async fn mark_started(&self, new: &dyn KeyEncryptionKey) -> Result<(), StoreError> {
        sql("INSERT INTO key_rewrap (id, new_key_id, new_check, started_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING")
            .bind(new.key_id())
            .bind(new.check_value())
            .bind(truncate_to_micros(chrono::Utc::now()))
            .execute(&self.db)
            .await?;
        match self.pending_rewrap().await? {
            Some(id) if id == new.key_id() => Ok(()),
            Some(id) => Err(StoreError::Config(format!(
                "a rewrap to another master key ({id}) is unfinished: finish it with that key \
                 first"
            ))),
            None => Err(StoreError::Integrity(
                "the rewrap's mark was not recorded".to_owned(),
            )),
        }
    }

    /// Re-wraps the derivation root (created from `old` if the store has none yet); whether
    /// it moved.
    async fn rewrap_root(
        &self,
        old: &dyn KeyEncryptionKey,
        new: &dyn KeyEncryptionKey,
    ) -> Result<bool, StoreError> {
        let (wrapped, key_id) = stored_root(&self.db, old).await?;
        if key_id == new.key_id() {
            return Ok(false);
        }
        if key_id != old.key_id() {
            return Err(StoreError::Integrity(format!(
                "the derivation root is wrapped under the master key {key_id}, neither the \
                 current nor the new one"
            )));
        }
        let root = old.unwrap_root(&wrapped)?;
        sql(
            "UPDATE derivation_root SET wrapped_key = $1, key_id = $2 WHERE id = 1 AND key_id = $3",
        )
        .bind(new.wrap_root(&root)?)
        .bind(new.key_id())
        .bind(old.key_id())
        .execute(&self.db)
        .await?;
        Ok(true)
    }

    /// Records `new` as the store's key, in one transaction with the check that nothing is
    /// left under another key (a process that kept running with the old key may have added
    /// one: the caller's loop moves it first).
    async fn finish(&self, new: &dyn KeyEncryptionKey) -> Result<(), StoreError> {
        let mut tx = self.db.begin().await?;
        let left = remaining(&mut tx, &new.key_id()).await?;
        if left > 0 {
            return Err(StoreError::Integrity(format!(
                "{left} data keys were added under the old master key during the rewrap: stop \
                 every idledger process and run the rewrap again"
            )));
        }
        sql("UPDATE master_key_check SET check_value = $1 WHERE id = 1")
            .bind(new.check_value())
            .execute(&mut tx)
            .await?;
        sql("DELETE FROM key_rewrap WHERE id = 1")
            .execute(&mut tx)
            .await?;
        tx.commit().await
    }
}

/// The wrapped root and its key id, created under `kek` if the store has none yet.
async fn stored_root(db: &Db, kek: &dyn KeyEncryptionKey) -> Result<(Vec<u8>, String), StoreError> {
    if let Some(root) = read_root(db).await? {
        return Ok(root);
    }
    // A concurrent first start may win: the row that stands is read back.
    sql("INSERT INTO derivation_root (id, wrapped_key, key_id, created_at) VALUES (1, $1, $2, $3) ON CONFLICT (id) DO NOTHING")
        .bind(kek.wrap_root(&kek.initial_derivation_root())?)
        .bind(kek.key_id())
        .bind(truncate_to_micros(chrono::Utc::now()))
        .execute(db)
        .await?;
    read_root(db)
        .await?
        .ok_or_else(|| StoreError::Integrity("the derivation root was not recorded".to_owned()))
}

async fn read_root(db: &Db) -> Result<Option<(Vec<u8>, String)>, StoreError> {
    let Some(row) = sql("SELECT wrapped_key, key_id FROM derivation_root WHERE id = 1")
        .fetch_optional(db)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((row.try_get("wrapped_key")?, row.try_get("key_id")?)))
}

/// Data keys not yet under the key `new_id`.
async fn remaining(on: impl crate::sql::Conn, new_id: &str) -> Result<u64, StoreError> {
    sql("SELECT COUNT(*) AS n FROM data_keys WHERE key_id IS NULL OR key_id <> $1")
        .bind(new_id)
        .fetch_one(on)
        .await?
        .get_u64("n")
}
