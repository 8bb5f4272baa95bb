//! Encryption of personal data at rest: one data key per customer, wrapped by a master key.
//!
//! Event payloads are sealed with the customer's data key (XChaCha20-Poly1305, random 192-bit
//! nonce), bound to the event's id and customer by associated data so a payload cannot be
//! moved to another row. Destroying a customer's wrapped key makes their events unreadable
//! without rewriting the log (crypto-shredding).

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::StoreError;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
/// The label the master key's check value is derived under.
const CHECK_LABEL: &str = "master key check";
/// The label a master key's id is derived under (not the check value's: an id is shown and
/// stored beside every wrapped key, the check value only once).
const ID_LABEL: &str = "master key id";
/// Associated data of the wrapped derivation root, so it cannot pass for a data key.
const ROOT_AAD: &[u8] = b"idledger derivation root";

/// The key that wraps (encrypts) data keys and the derivation root: a key-encryption key.
/// [`MasterKey`] (from a file or the environment) implements it; a KMS can later, without the
/// ledger changing. It never hands out key material.
pub trait KeyEncryptionKey: Send + Sync + std::fmt::Debug {
    /// A short public name of the key (hex), stored beside everything it wraps, so that a
    /// store midway through a rewrap tells which key each wrapped key needs.
    fn key_id(&self) -> String;

    /// Encrypts a 32-byte secret, bound to `aad`.
    fn wrap_secret(&self, secret: &[u8; KEY_LEN], aad: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Decrypts what [`KeyEncryptionKey::wrap_secret`] returned for the same `aad`.
    fn unwrap_secret(
        &self,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError>;

    /// A value stored with the data that tells a wrong key at once, revealing nothing of it.
    fn check_value(&self) -> Vec<u8>;

    /// Whether `stored` is this key's check value.
    fn matches_check(&self, stored: &[u8]) -> bool;

    /// The derivation root of a store that has none yet. A fresh random one by default;
    /// [`MasterKey`] gives its own bytes, which is what stores from before the root was
    /// stored derived everything from.
    fn initial_derivation_root(&self) -> DerivationRoot {
        DerivationRoot::generate()
    }

    /// Wraps a data key for storage; the customer id is bound as associated data.
    fn wrap(&self, key: &DataKey, customer: uuid::Uuid) -> Result<Vec<u8>, StoreError> {
        self.wrap_secret(&key.0, customer.as_bytes())
    }

    fn unwrap_key(&self, wrapped: &[u8], customer: uuid::Uuid) -> Result<DataKey, StoreError> {
        self.unwrap_secret(wrapped, customer.as_bytes())
            .map(DataKey)
    }

    fn wrap_root(&self, root: &DerivationRoot) -> Result<Vec<u8>, StoreError> {
        self.wrap_secret(&root.0, ROOT_AAD)
    }

    fn unwrap_root(&self, wrapped: &[u8]) -> Result<DerivationRoot, StoreError> {
        self.unwrap_secret(wrapped, ROOT_AAD).map(DerivationRoot)
    }
}

/// The secret every derived key comes from (challenge secrets, value-hash keys, aliases,
/// request hashes). Stored wrapped under the master key, so that rotating the master key
/// leaves every derived secret as it was.
pub struct DerivationRoot(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DerivationRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DerivationRoot(..)")
    }
}

impl DerivationRoot {
    pub fn generate() -> Self {
        Self(MasterKey::generate().0)
    }

    /// A key for one purpose (HMAC-SHA256 over the purpose's label), so that no two purposes
    /// share one.
    pub fn derive(&self, label: &str) -> [u8; KEY_LEN] {
        hmac_label(&self.0, label).finalize().into_bytes().into()
    }
}

fn hmac_label(key: &[u8; KEY_LEN], label: &str) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)] // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key[..]).expect("HMAC accepts any key");
    mac.update(b"idledger key derivation v1\0");
    mac.update(label.as_bytes());
    mac
}

/// The key that wraps every customer's data key. Comes from configuration; never stored.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Parses 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, StoreError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| StoreError::config("the master key must be 64 hex characters"))?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            StoreError::config("the master key must be 32 bytes (64 hex characters)")
        })?;
        Ok(Self(Zeroizing::new(key)))
    }

    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&key);
        Self(Zeroizing::new(bytes))
    }

    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(*self.0))
    }

    /// A key for one purpose, derived from this key. Only for its own check value and id:
    /// the ledger's secrets come from the stored [`DerivationRoot`], which survives a rewrap.
    fn derive(&self, label: &str) -> [u8; KEY_LEN] {
        hmac_label(&self.0, label).finalize().into_bytes().into()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

impl KeyEncryptionKey for MasterKey {
    fn key_id(&self) -> String {
        hex::encode(&self.derive(ID_LABEL)[..8])
    }

    fn wrap_secret(&self, secret: &[u8; KEY_LEN], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        seal(&self.cipher(), &secret[..], aad)
    }

    fn unwrap_secret(
        &self,
        wrapped: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
        let bytes = Zeroizing::new(open(&self.cipher(), wrapped, aad)?);
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Integrity("a wrapped key has the wrong length".to_owned()))?;
        Ok(Zeroizing::new(key))
    }

    /// A check value of this key: stored with the data, it tells a wrong key at once without
    /// revealing anything of the right one.
    fn check_value(&self) -> Vec<u8> {
        self.derive(CHECK_LABEL).to_vec()
    }

    /// Compared in constant time.
    fn matches_check(&self, stored: &[u8]) -> bool {
        hmac_label(&self.0, CHECK_LABEL)
            .verify_slice(stored)
            .is_ok()
    }

    /// The key itself: before the root was stored, every secret was derived from the master
    /// key, so a store's first root is its first master key and nothing derived changes.
    fn initial_derivation_root(&self) -> DerivationRoot {
        DerivationRoot(self.0.clone())
    }
}

/// One customer's data key.
#[derive(Clone)]
pub struct DataKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(&key);
        Self(Zeroizing::new(bytes))
    }

    /// A key from a derived secret (e.g. the key that seals signing keys).
    pub(crate) fn from_secret(secret: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(secret))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }

    /// `nonce || ciphertext`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        seal(&self.cipher(), plaintext, aad)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        open(&self.cipher(), sealed, aad)
    }
}

fn seal(cipher: &XChaCha20Poly1305, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let ciphertext = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| StoreError::Integrity("encryption failed".to_owned()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(cipher: &XChaCha20Poly1305, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
    if sealed.len() < NONCE_LEN {
        return Err(StoreError::Integrity(
            "a sealed payload is shorter than its nonce".to_owned(),
        ));
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| {
            StoreError::Integrity(
                "a payload failed authentication (wrong key or altered bytes)".to_owned(),
            )
        })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let key = DataKey::generate();
        let sealed = key.seal(b"ada@example.org", b"event-1").unwrap();
        assert_eq!(key.open(&sealed, b"event-1").unwrap(), b"ada@example.org");
        assert!(
            key.open(&sealed, b"event-2").is_err(),
            "aad binds the payload to its event"
        );
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(key.open(&altered, b"event-1").is_err());
        assert!(DataKey::generate().open(&sealed, b"event-1").is_err());
        assert!(key.open(&sealed[..10], b"event-1").is_err());
    }

    #[test]
    fn data_keys_wrap_under_the_master_key() {
        let master = MasterKey::generate();
        let customer = uuid::Uuid::now_v7();
        let key = DataKey::generate();
        let wrapped = master.wrap(&key, customer).unwrap();
        let back = master.unwrap_key(&wrapped, customer).unwrap();
        assert!(
            master.unwrap_root(&wrapped).is_err(),
            "a data key cannot pass for the root"
        );
        let sealed = key.seal(b"x", b"").unwrap();
        assert_eq!(back.open(&sealed, b"").unwrap(), b"x");
        assert!(master.unwrap_key(&wrapped, uuid::Uuid::now_v7()).is_err());
        let again = MasterKey::from_hex(&master.to_hex()).unwrap();
        assert!(again.unwrap_key(&wrapped, customer).is_ok());
        assert!(MasterKey::from_hex("abc").is_err());
        assert_eq!(again.key_id(), master.key_id());
        assert_ne!(MasterKey::generate().key_id(), master.key_id());
        assert_eq!(master.key_id().len(), 16);
        assert!(!master.to_hex().contains(&master.key_id()));
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod root_tests {
    use super::*;

    #[test]
    fn a_master_keys_initial_root_derives_what_the_key_derived_before() {
        let master = MasterKey::generate();
        let root = master.initial_derivation_root();
        assert_eq!(root.derive("value hashes"), master.derive("value hashes"));
        assert_ne!(root.derive("value hashes"), root.derive("customer aliases"));
        let other = MasterKey::generate();
        let moved = other.unwrap_root(&other.wrap_root(&root).unwrap()).unwrap();
        assert_eq!(moved.derive("x"), root.derive("x"));
        assert!(
            master
                .unwrap_root(&other.wrap_root(&root).unwrap())
                .is_err()
        );
    }
}
