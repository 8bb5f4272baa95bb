//! The store's signing keys (Ed25519), for every purpose: `checkpoint` (signed checkpoints of
//! the log, [`crate::checkpoints`]) and `jws` (decision tokens and consent receipts,
//! [`crate::jws`]).
//!
//! Keys are stored in `signing_keys`, one in use per purpose (a partial unique index decides
//! racing first uses), the private key sealed under a key derived from the derivation root —
//! not the master key itself, so a master key rewrap leaves them as they are. A rotation
//! retires the key in use and creates its successor in one transaction; a retired key keeps
//! verifying until it is removed, and a key that signed checkpoints is never removed.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer as _, SigningKey};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::DataKey;
use crate::error::StoreError;
use crate::model::truncate_to_micros;
use crate::sql::{Db, Row, sql};

/// The purpose of the keys that sign checkpoints.
pub const CHECKPOINT_PURPOSE: &str = "checkpoint";
/// The one signature algorithm, as stored and exported.
pub const ED25519: &str = "Ed25519";
/// Associated data of a sealed private key (with its kid), so it cannot pass for anything else.
const SEAL_AAD: &[u8] = b"idledger signing key\0";
/// How often a rotation is tried when another one commits at the same time (PostgreSQL: both
/// retire the same row, the later one's insert then meets the winner's new key).
const ROTATE_ATTEMPTS: u32 = 3;

pub(crate) const KEY_COLUMNS: &str = "kid, algorithm, purpose, public_key, created_at, retired_at";

/// A key's id: the first 16 hex characters of SHA-256 of its public key.
pub fn kid_of(public_key: &[u8]) -> String {
    let mut id = hex::encode(Sha256::digest(public_key));
    id.truncate(16);
    id
}

/// A signing key as anyone may see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicSigningKey {
    pub kid: String,
    pub algorithm: String,
    pub purpose: String,
    /// 32 bytes (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub retired_at: Option<DateTime<Utc>>,
}

pub(crate) fn public_key(row: &Row) -> Result<PublicSigningKey, StoreError> {
    Ok(PublicSigningKey {
        kid: row.try_get("kid")?,
        algorithm: row.try_get("algorithm")?,
        purpose: row.try_get("purpose")?,
        public_key: row.try_get("public_key")?,
        created_at: row.try_get("created_at")?,
        retired_at: row.try_get("retired_at")?,
    })
}

/// The store's signing keys, with the key that seals their private halves (derived from the
/// derivation root). From [`crate::Ledger::signing_keys`].
#[derive(Debug, Clone)]
pub struct SigningKeys {
    db: Db,
    seal: std::sync::Arc<DataKey>,
}

/// A signing key in use: its id and private key (zeroed when dropped).
pub struct KeyPair {
    pub kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPair({}, ..)", self.kid)
    }
}

impl KeyPair {
    /// A key pair from a 32-byte Ed25519 seed (tests, and keys opened from the store).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        Self {
            kid: kid_of(&key.verifying_key().to_bytes()),
            key,
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }

    /// The key as anyone may see it (its times are the caller's: a pair does not know them).
    pub fn public(&self, purpose: &str, created_at: DateTime<Utc>) -> PublicSigningKey {
        PublicSigningKey {
            kid: self.kid.clone(),
            algorithm: ED25519.to_owned(),
            purpose: purpose.to_owned(),
            public_key: self.public_key().to_vec(),
            created_at,
            retired_at: None,
        }
    }
}

/// Why a signing key was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveKeyError {
    #[error("there is no signing key {kid}")]
    NotFound { kid: String },
    #[error(
        "the signing key {kid} is the one in use for {purpose}: rotate it first (`idledger keys rotate --purpose {purpose}`)"
    )]
    InUse { kid: String, purpose: String },
    #[error(
        "the signing key {kid} signed {checkpoints} checkpoint(s), which need it to verify: it stays"
    )]
    SignedCheckpoints { kid: String, checkpoints: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SigningKeys {
    pub(crate) fn new(db: Db, seal: std::sync::Arc<DataKey>) -> Self {
        Self { db, seal }
    }

    /// The key in use for `purpose`, created (and stored) on first use. Racing first uses
    /// in several processes agree: one insert wins, every caller reads the winner.
    pub async fn in_use(&self, purpose: &str) -> Result<KeyPair, StoreError> {
        if let Some(pair) = self.read_in_use(purpose).await? {
            return Ok(pair);
        }
        let (new, sealed) = self.generate()?;
        let now = truncate_to_micros(Utc::now());
        insert_key(
            &self.db,
            &new,
            purpose,
            &sealed,
            now,
            " ON CONFLICT DO NOTHING",
        )
        .await?;
        self.read_in_use(purpose)
            .await?
            .ok_or_else(|| StoreError::Integrity(format!("no {purpose} signing key was stored")))
    }

    /// Retires the key in use for `purpose` (if any) and puts a new one in use, in one
    /// transaction; returns the new key's id. The retired key keeps verifying (it stays in
    /// [`SigningKeys::list`] and the public key sets) until [`SigningKeys::remove`].
    pub async fn rotate(&self, purpose: &str) -> Result<String, StoreError> {
        Ok(self.rotate_pair(purpose).await?.kid)
    }

    /// [`SigningKeys::rotate`], returning the new key pair.
    pub async fn rotate_pair(&self, purpose: &str) -> Result<KeyPair, StoreError> {
        let mut attempt = 1;
        loop {
            match self.try_rotate(purpose).await {
                Err(e) if e.is_unique_violation() && attempt < ROTATE_ATTEMPTS => attempt += 1,
                done => return done,
            }
        }
    }

    async fn try_rotate(&self, purpose: &str) -> Result<KeyPair, StoreError> {
        let (new, sealed) = self.generate()?;
        let now = truncate_to_micros(Utc::now());
        let mut tx = self.db.begin().await?;
        sql("UPDATE signing_keys SET retired_at = $1 WHERE purpose = $2 AND retired_at IS NULL")
            .bind(now)
            .bind(purpose)
            .execute(&mut tx)
            .await?;
        insert_key(&mut tx, &new, purpose, &sealed, now, "").await?;
        tx.commit().await?;
        tracing::info!(purpose, kid = %new.kid, "rotated a signing key");
        Ok(new)
    }

    /// Deletes a retired key: what it signed no longer verifies. Refused for the key in use
    /// and for a key that signed checkpoints (they must stay verifiable).
    pub async fn remove(&self, kid: &str) -> Result<(), RemoveKeyError> {
        let mut tx = self.db.begin().await?;
        let Some(row) = sql("SELECT purpose, retired_at FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .fetch_optional(&mut tx)
            .await?
        else {
            return Err(RemoveKeyError::NotFound {
                kid: kid.to_owned(),
            });
        };
        let purpose: String = row.try_get("purpose")?;
        let retired_at: Option<DateTime<Utc>> = row.try_get("retired_at")?;
        if retired_at.is_none() {
            return Err(RemoveKeyError::InUse {
                kid: kid.to_owned(),
                purpose,
            });
        }
        let checkpoints = sql("SELECT COUNT(*) AS n FROM checkpoints WHERE kid = $1")
            .bind(kid)
            .fetch_one(&mut tx)
            .await?
            .get_u64("n")?;
        if checkpoints > 0 {
            return Err(RemoveKeyError::SignedCheckpoints {
                kid: kid.to_owned(),
                checkpoints,
            });
        }
        sql("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        tracing::info!(purpose, kid, "removed a retired signing key");
        Ok(())
    }

    /// The public keys of one purpose (or of every purpose), in use and retired, oldest first.
    pub async fn list(&self, purpose: Option<&str>) -> Result<Vec<PublicSigningKey>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(KEY_COLUMNS).push(" FROM signing_keys");
        if let Some(purpose) = purpose {
            q.push(" WHERE purpose = ").push_bind(purpose);
        }
        q.push(" ORDER BY purpose, created_at, kid");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(public_key)
            .collect()
    }

    /// A fresh key pair and its sealed seed.
    fn generate(&self) -> Result<(KeyPair, Vec<u8>), StoreError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut seed[..]);
        let pair = KeyPair::from_seed(&seed);
        let sealed = self.seal.seal(&seed[..], &aad(&pair.kid))?;
        Ok((pair, sealed))
    }

    async fn read_in_use(&self, purpose: &str) -> Result<Option<KeyPair>, StoreError> {
        let Some(row) = sql(
            "SELECT kid, algorithm, public_key, sealed_private_key FROM signing_keys \
             WHERE purpose = $1 AND retired_at IS NULL",
        )
        .bind(purpose)
        .fetch_optional(&self.db)
        .await?
        else {
            return Ok(None);
        };
        let kid: String = row.try_get("kid")?;
        let algorithm: String = row.try_get("algorithm")?;
        if algorithm != ED25519 {
            return Err(StoreError::Integrity(format!(
                "the {purpose} signing key {kid} is of an unknown algorithm"
            )));
        }
        let sealed: Vec<u8> = row.try_get("sealed_private_key")?;
        let seed = Zeroizing::new(self.seal.open(&sealed, &aad(&kid)).map_err(|_| {
            StoreError::Integrity(format!(
                "the {purpose} signing key {kid} does not open with this store's derivation root"
            ))
        })?);
        let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| {
            StoreError::Integrity(format!(
                "the {purpose} signing key {kid} has the wrong length"
            ))
        })?;
        let pair = KeyPair::from_seed(seed);
        let public: Vec<u8> = row.try_get("public_key")?;
        if public != pair.public_key() || pair.kid != kid {
            return Err(StoreError::Integrity(format!(
                "the {purpose} signing key {kid} does not match its public key"
            )));
        }
        Ok(Some(pair))
    }
}

async fn insert_key(
    on: impl crate::sql::Conn,
    pair: &KeyPair,
    purpose: &str,
    sealed: &[u8],
    created_at: DateTime<Utc>,
    on_conflict: &str,
) -> Result<u64, StoreError> {
    let mut q = sql(
        "INSERT INTO signing_keys (kid, algorithm, purpose, public_key, sealed_private_key, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(pair.kid.as_str())
    .bind(ED25519)
    .bind(purpose)
    .bind(pair.public_key().to_vec())
    .bind(sealed)
    .bind(created_at);
    q.push(on_conflict);
    q.execute(on).await
}

fn aad(kid: &str) -> Vec<u8> {
    let mut aad = SEAL_AAD.to_vec();
    aad.extend_from_slice(kid.as_bytes());
    aad
}

/// Bytes as lower-case hex in JSON.
pub(crate) mod hex_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text.trim()).map_err(serde::de::Error::custom)
    }
}
