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

    /// A key for one purpose, derived from the master key (HMAC-SHA256 over the purpose's
    /// label), so every secret idledger needs follows from the one configured key and no two
    /// purposes share one.
    pub fn derive(&self, label: &str) -> [u8; KEY_LEN] {
        self.mac(label).finalize().into_bytes().into()
    }

    fn mac(&self, label: &str) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).expect("HMAC accepts any key");
        mac.update(b"idledger key derivation v1\0");
        mac.update(label.as_bytes());
        mac
    }

    /// A check value of this key: stored with the data, it tells a wrong key at once without
    /// revealing anything of the right one.
    pub fn check_value(&self) -> [u8; KEY_LEN] {
        self.derive(CHECK_LABEL)
    }

    /// Whether `stored` is this key's check value (compared in constant time).
    pub fn matches_check(&self, stored: &[u8]) -> bool {
        self.mac(CHECK_LABEL).verify_slice(stored).is_ok()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }

    /// Wraps a data key for storage; the customer id is bound as associated data.
    pub fn wrap(&self, key: &DataKey, customer: uuid::Uuid) -> Result<Vec<u8>, StoreError> {
        seal(&self.cipher(), &key.0[..], customer.as_bytes())
    }

    pub fn unwrap_key(&self, wrapped: &[u8], customer: uuid::Uuid) -> Result<DataKey, StoreError> {
        let bytes = open(&self.cipher(), wrapped, customer.as_bytes())?;
        let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
            StoreError::Integrity("a wrapped data key has the wrong length".to_owned())
        })?;
        Ok(DataKey(Zeroizing::new(key)))
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
        let sealed = key.seal(b"x", b"").unwrap();
        assert_eq!(back.open(&sealed, b"").unwrap(), b"x");
        assert!(master.unwrap_key(&wrapped, uuid::Uuid::now_v7()).is_err());
        let again = MasterKey::from_hex(&master.to_hex()).unwrap();
        assert!(again.unwrap_key(&wrapped, customer).is_ok());
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
