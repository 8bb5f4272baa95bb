//! Signed checkpoints of the whole log, and the signing keys that sign them.
//!
//! A checkpoint states "the log up to position N has log hash L" ([`crate::chain::log_hash`]),
//! signed with Ed25519 by a key the store keeps. Exported (`idledger checkpoint export`) and
//! kept outside the database, checkpoints let an auditor prove later that the log up to each
//! of them is unchanged, even against someone who can rewrite the database and recompute
//! every stream's chain: they cannot sign. The formats are in docs/contracts.md.
//!
//! Signing keys are stored in `signing_keys`, one in use per purpose (`checkpoint`; decision
//! tokens later), the private key sealed under a key derived from the derivation root — not
//! the master key itself, so a master key rewrap leaves them as they are.

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
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
/// The `format` of an export file.
pub const EXPORT_FORMAT: &str = "idledger.checkpoints.v1";
/// Domain separation of the signed bytes.
const SIGNED_TAG: &[u8] = b"idledger.checkpoint.v1";
/// Associated data of a sealed private key (with its kid), so it cannot pass for anything else.
const SEAL_AAD: &[u8] = b"idledger signing key\0";

/// A signed statement of the log hash at a position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub position: u64,
    /// The log hash at `position`, 32 bytes (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub log_hash: Vec<u8>,
    /// When it was signed, to the microsecond (the signed bytes hold it in microseconds).
    pub signed_at: DateTime<Utc>,
    /// The signing key's id.
    pub kid: String,
    /// Ed25519 signature of [`signed_message`], 64 bytes (hex in JSON).
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// Whether `public_key` (32 bytes, Ed25519) signed this checkpoint. Strict verification:
    /// no malleable or small-order forms pass.
    pub fn signed_by(&self, public_key: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 32]>::try_from(public_key) else {
            return false;
        };
        let Ok(key) = VerifyingKey::from_bytes(&bytes) else {
            return false;
        };
        let Ok(signature) = Signature::from_slice(&self.signature) else {
            return false;
        };
        key.verify_strict(
            &signed_message(self.position, &self.log_hash, self.signed_at),
            &signature,
        )
        .is_ok()
    }
}

/// The bytes a checkpoint's signature covers: the ASCII tag `idledger.checkpoint.v1`, the
/// position (8 bytes, big-endian), the log hash (32 bytes), the signing time in microseconds
/// since the Unix epoch (8 bytes, big-endian, signed).
pub fn signed_message(position: u64, log_hash: &[u8], signed_at: DateTime<Utc>) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNED_TAG.len() + 8 + log_hash.len() + 8);
    message.extend_from_slice(SIGNED_TAG);
    message.extend_from_slice(&position.to_be_bytes());
    message.extend_from_slice(log_hash);
    message.extend_from_slice(&signed_at.timestamp_micros().to_be_bytes());
    message
}

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

/// The export file: every checkpoint with the public keys that signed them, so it is
/// self-contained; a verifier may still pin the key it trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointExport {
    pub format: String,
    pub keys: Vec<PublicSigningKey>,
    pub checkpoints: Vec<Checkpoint>,
}

/// Which keys a verifier accepts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Any of these (the export's own, or the store's) whose kid is its public key's.
    Keys(Vec<PublicSigningKey>),
    /// Only this public key (32 bytes), whatever the file says.
    Pinned(Vec<u8>),
}

impl Trust {
    /// Why `checkpoint` is not signed by a trusted key, if it is not.
    pub fn refuse(&self, checkpoint: &Checkpoint) -> Option<CheckpointFailure> {
        let public = match self {
            Self::Pinned(public) => {
                let pinned_kid = kid_of(public);
                if checkpoint.kid != pinned_kid {
                    return Some(CheckpointFailure::NotPinnedKey { pinned_kid });
                }
                public
            }
            Self::Keys(keys) => {
                let known = keys.iter().find(|k| {
                    k.kid == checkpoint.kid
                        && k.algorithm == ED25519
                        && kid_of(&k.public_key) == k.kid
                });
                match known {
                    Some(key) => &key.public_key,
                    None => return Some(CheckpointFailure::UnknownKey),
                }
            }
        };
        (!checkpoint.signed_by(public)).then_some(CheckpointFailure::SignatureInvalid)
    }
}

/// One checkpoint, checked against the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointCheck {
    pub position: u64,
    pub kid: String,
    pub signed_at: DateTime<Utc>,
    /// `None`: signed by a trusted key, and the log up to `position` is the one signed.
    pub failure: Option<CheckpointFailure>,
}

/// Why a checkpoint does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckpointFailure {
    /// No trusted key has its kid.
    UnknownKey,
    /// Signed by another key than the pinned one.
    NotPinnedKey { pinned_kid: String },
    /// The signature does not verify: the checkpoint was altered or forged.
    SignatureInvalid,
    /// The log up to the checkpoint's position is not the one signed. The change lies after
    /// `unchanged_up_to` (the last checkpoint before it that held, or 0); `first_broken` is
    /// the first event whose stored hash does not match its bytes, when there is one.
    LogChanged {
        unchanged_up_to: u64,
        first_broken: Option<u64>,
    },
    /// The log ends before the checkpoint's position: events were removed.
    LogShorter { head: u64 },
}

impl std::fmt::Display for CheckpointFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKey => f.write_str("signed by an unknown key"),
            Self::NotPinnedKey { pinned_kid } => {
                write!(f, "not signed by the pinned key {pinned_kid}")
            }
            Self::SignatureInvalid => {
                f.write_str("the signature is invalid: the checkpoint was altered or forged")
            }
            Self::LogChanged {
                unchanged_up_to,
                first_broken,
            } => {
                write!(
                    f,
                    "the log changed: its hash up to this position is not the one signed \
                     (the change lies after position {unchanged_up_to})"
                )?;
                if let Some(position) = first_broken {
                    write!(
                        f,
                        "; the first event whose stored hash does not match is at position {position}"
                    )?;
                }
                Ok(())
            }
            Self::LogShorter { head } => write!(
                f,
                "the log is shorter than the checkpoint: it ends at position {head}"
            ),
        }
    }
}

/// The stored checkpoints and public keys. From [`crate::Store::checkpoints`]; signing is
/// [`crate::Ledger::sign_checkpoint`], which holds the key that opens private keys.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    db: Db,
}

const CHECKPOINT_COLUMNS: &str = "position, log_hash, signed_at, kid, signature";
const KEY_COLUMNS: &str = "kid, algorithm, purpose, public_key, created_at, retired_at";

impl Checkpoints {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
    }

    /// Every checkpoint, by position.
    pub async fn list(&self) -> Result<Vec<Checkpoint>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(CHECKPOINT_COLUMNS)
            .push(" FROM checkpoints ORDER BY position");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(checkpoint)
            .collect()
    }

    /// The checkpoint at the highest position.
    pub async fn latest(&self) -> Result<Option<Checkpoint>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(CHECKPOINT_COLUMNS)
            .push(" FROM checkpoints ORDER BY position DESC LIMIT 1");
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(checkpoint)
            .transpose()
    }

    /// The public keys of one purpose, oldest first, retired ones too.
    pub async fn public_keys(&self, purpose: &str) -> Result<Vec<PublicSigningKey>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(KEY_COLUMNS)
            .push(" FROM signing_keys WHERE purpose = ")
            .push_bind(purpose)
            .push(" ORDER BY created_at, kid");
        q.fetch_all(&self.db)
            .await?
            .iter()
            .map(public_key)
            .collect()
    }

    /// Every checkpoint with the keys that sign checkpoints.
    pub async fn export(&self) -> Result<CheckpointExport, StoreError> {
        Ok(CheckpointExport {
            format: EXPORT_FORMAT.to_owned(),
            keys: self.public_keys(CHECKPOINT_PURPOSE).await?,
            checkpoints: self.list().await?,
        })
    }

    /// Stores a checkpoint unless one is stored at its position already (another process
    /// signed the same head); returns the one that stands.
    pub(crate) async fn insert(&self, new: &Checkpoint) -> Result<Checkpoint, StoreError> {
        let mut q = sql("INSERT INTO checkpoints (");
        q.push(CHECKPOINT_COLUMNS)
            .push(") VALUES (")
            .push_bind(new.position)
            .push(", ")
            .push_bind(new.log_hash.as_slice())
            .push(", ")
            .push_bind(new.signed_at)
            .push(", ")
            .push_bind(new.kid.as_str())
            .push(", ")
            .push_bind(new.signature.as_slice())
            .push(") ON CONFLICT (position) DO NOTHING");
        q.execute(&self.db).await?;
        let mut q = sql("SELECT ");
        q.push(CHECKPOINT_COLUMNS)
            .push(" FROM checkpoints WHERE position = ")
            .push_bind(new.position);
        checkpoint(&q.fetch_one(&self.db).await?)
    }
}

fn checkpoint(row: &Row) -> Result<Checkpoint, StoreError> {
    Ok(Checkpoint {
        position: row.get_u64("position")?,
        log_hash: row.try_get("log_hash")?,
        signed_at: row.try_get("signed_at")?,
        kid: row.try_get("kid")?,
        signature: row.try_get("signature")?,
    })
}

fn public_key(row: &Row) -> Result<PublicSigningKey, StoreError> {
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
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).to_bytes().to_vec()
    }
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
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut seed[..]);
        let key = SigningKey::from_bytes(&seed);
        let public = key.verifying_key().to_bytes();
        let kid = kid_of(&public);
        let sealed = self.seal.seal(&seed[..], &aad(&kid))?;
        sql("INSERT INTO signing_keys (kid, algorithm, purpose, public_key, sealed_private_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(kid.as_str())
            .bind(ED25519)
            .bind(purpose)
            .bind(public.to_vec())
            .bind(sealed)
            .bind(truncate_to_micros(Utc::now()))
            .execute(&self.db)
            .await?;
        self.read_in_use(purpose)
            .await?
            .ok_or_else(|| StoreError::Integrity(format!("no {purpose} signing key was stored")))
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
        let key = SigningKey::from_bytes(seed);
        let public: Vec<u8> = row.try_get("public_key")?;
        if public != key.verifying_key().to_bytes() || kid_of(&public) != kid {
            return Err(StoreError::Integrity(format!(
                "the {purpose} signing key {kid} does not match its public key"
            )));
        }
        Ok(Some(KeyPair { kid, key }))
    }
}

fn aad(kid: &str) -> Vec<u8> {
    let mut aad = SEAL_AAD.to_vec();
    aad.extend_from_slice(kid.as_bytes());
    aad
}

/// Bytes as lower-case hex in JSON.
mod hex_bytes {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text.trim()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn signed(key: &SigningKey, position: u64) -> Checkpoint {
        let signed_at = truncate_to_micros(Utc::now());
        let log_hash = vec![7u8; 32];
        let public = key.verifying_key().to_bytes();
        Checkpoint {
            position,
            signature: key
                .sign(&signed_message(position, &log_hash, signed_at))
                .to_bytes()
                .to_vec(),
            log_hash,
            signed_at,
            kid: kid_of(&public),
        }
    }

    #[test]
    fn a_signature_covers_position_hash_and_time_and_only_its_key_verifies_it() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let public = key.verifying_key().to_bytes();
        let c = signed(&key, 9);
        assert!(c.signed_by(&public));
        assert!(
            !c.signed_by(
                &SigningKey::from_bytes(&[2u8; 32])
                    .verifying_key()
                    .to_bytes()
            )
        );
        let mut moved = c.clone();
        moved.position = 10;
        assert!(!moved.signed_by(&public));
        let mut rehashed = c.clone();
        rehashed.log_hash[0] ^= 1;
        assert!(!rehashed.signed_by(&public));
        let mut retimed = c.clone();
        retimed.signed_at += chrono::Duration::microseconds(1);
        assert!(!retimed.signed_by(&public));
        assert!(!c.signed_by(&public[..31]));
        assert_eq!(kid_of(&public).len(), 16);
    }

    #[test]
    fn the_export_round_trips_through_json() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let c = signed(&key, 4);
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(&hex::encode(&c.signature)));
        let back: Checkpoint = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert!(back.signed_by(&key.verifying_key().to_bytes()));
    }
}
