//! Signed checkpoints of the whole log, and the signing keys that sign them.
//!
//! A checkpoint states "the log up to position N has log hash L" ([`crate::chain::log_hash`]),
//! signed with Ed25519 by a key the store keeps. Exported (`idledger checkpoint export`) and
//! kept outside the database, checkpoints let an auditor prove later that the log up to each
//! of them is unchanged, even against someone who can rewrite the database and recompute
//! every stream's chain: they cannot sign. The formats are in docs/contracts.md.
//!
//! The signing keys live in [`crate::signing`] (re-exported here, where they started).

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
pub use crate::signing::{
    CHECKPOINT_PURPOSE, ED25519, KeyPair, PublicSigningKey, SigningKeys, kid_of,
};
use crate::signing::{KEY_COLUMNS, hex_bytes, public_key};
use crate::sql::{Db, Row, sql};

/// The `format` of an export file.
pub const EXPORT_FORMAT: &str = "idledger.checkpoints.v1";
/// Domain separation of the signed bytes.
const SIGNED_TAG: &[u8] = b"idledger.checkpoint.v1";

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::model::truncate_to_micros;
    use ed25519_dalek::{Signer as _, SigningKey};

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
