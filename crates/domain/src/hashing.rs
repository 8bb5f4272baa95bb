//! Keyed value hashes: how a consumer reports the value it holds without sending it back.
//!
//! A plain SHA-256 of an email or a phone number is reversed by trying every likely value, so
//! every hash of a personal value that idledger stores or sends is an HMAC-SHA256 under a key
//! of the consumer it is about. Each consumer's key is derived from one key (itself derived
//! from the master key), so no key is stored, and a consumer that computes its own hashes gets
//! its key through the consumer registry. Keys differ per consumer, so two consumers' hashes
//! of the same value cannot be linked.
//!
//! The hash of a value is `hmac-sha256:<64 lowercase hex>` of the UTF-8 bytes of its natural
//! JSON form as delivered in `data.value` (compact, object keys in sorted order; a consent's
//! value is `"granted"` or `"withdrawn"`).
//!
//! The same root gives each consumer an [`AckKey`], a second secret it signs the
//! acknowledgements it sends over NATS with, so that an ack proves which consumer sent it
//! whatever the NATS server lets others publish.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::delivery::ConsumerId;
use crate::field::FieldValue;
use crate::state::consent_value;
use crate::values::ValueError;

const LEN: usize = 32;
const PREFIX: &str = "hmac-sha256:";
const FORM: &str = "must have the form hmac-sha256:<64 hex digits>";

/// The key every consumer's [`HashKey`] is derived from (derived from the master key).
#[derive(Clone)]
pub struct HashRoot([u8; LEN]);

impl fmt::Debug for HashRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashRoot(…)")
    }
}

impl HashRoot {
    pub fn new(bytes: [u8; LEN]) -> Self {
        Self(bytes)
    }

    /// The key `consumer`'s value hashes are computed under.
    pub fn for_consumer(&self, consumer: &ConsumerId) -> HashKey {
        let mut mac = hmac(&self.0);
        mac.update(b"idledger consumer hash key v1\0");
        mac.update(consumer.as_str().as_bytes());
        HashKey(mac.finalize().into_bytes().into())
    }

    /// The key `consumer` signs its NATS acknowledgements with.
    pub fn ack_key(&self, consumer: &ConsumerId) -> AckKey {
        let mut mac = hmac(&self.0);
        mac.update(b"idledger consumer ack key v1\0");
        mac.update(consumer.as_str().as_bytes());
        AckKey(mac.finalize().into_bytes().into())
    }
}

/// One consumer's acknowledgement signing key. A signature is `v1=<64 lowercase hex>`, the
/// HMAC-SHA256 of the ack's raw body under this key.
#[derive(Clone, PartialEq, Eq)]
pub struct AckKey([u8; LEN]);

impl fmt::Debug for AckKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AckKey(…)")
    }
}

impl AckKey {
    /// The key as the consumer receives it: 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The signature of an ack body, as the `Idledger-Signature` header carries it.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = hmac(&self.0);
        mac.update(body);
        format!("v1={}", hex::encode(mac.finalize().into_bytes()))
    }

    /// Whether `signature` (the header's value) signs `body` under this key; compared in
    /// constant time.
    pub fn verifies(&self, signature: &str, body: &[u8]) -> bool {
        let Some(tag) = signature
            .trim()
            .strip_prefix("v1=")
            .and_then(|hex| hex::decode(hex).ok())
        else {
            return false;
        };
        let mut mac = hmac(&self.0);
        mac.update(body);
        mac.verify_slice(&tag).is_ok()
    }
}

/// One consumer's value-hash key.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey([u8; LEN]);

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(…)")
    }
}

impl HashKey {
    /// Parses the 64 hex characters [`Self::to_hex`] gives.
    pub fn from_hex(text: &str) -> Result<Self, ValueError> {
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; LEN]>::try_from(b).ok())
            .ok_or_else(|| ValueError::new("hash key", "must be 64 hex characters"))?;
        Ok(Self(bytes))
    }

    /// The key as the consumer receives it: 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The hash of a field's value.
    pub fn value(&self, value: &FieldValue) -> ValueHash {
        self.json(&value.to_json())
    }

    /// The hash of a consent field's value (its state).
    pub fn consent(&self, granted: bool) -> ValueHash {
        self.json(&serde_json::Value::String(
            consent_value(granted).to_owned(),
        ))
    }

    /// The hash of a value in its natural JSON form.
    pub fn json(&self, value: &serde_json::Value) -> ValueHash {
        ValueHash(format!(
            "{PREFIX}{}",
            hex::encode(self.mac(value.to_string().as_bytes()))
        ))
    }

    /// A keyed digest of bytes that are not a field value (e.g. a legacy unkeyed hash being
    /// replaced): never equal to a value's hash unless the bytes are that value's JSON.
    pub fn bytes(&self, bytes: &[u8]) -> ValueHash {
        ValueHash(format!("{PREFIX}{}", hex::encode(self.mac(bytes))))
    }

    fn mac(&self, bytes: &[u8]) -> [u8; LEN] {
        let mut mac = hmac(&self.0);
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }
}

fn hmac(key: &[u8; LEN]) -> Hmac<Sha256> {
    #[allow(clippy::expect_used)] // HMAC takes a key of any length.
    Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length")
}

/// `hmac-sha256:<64 lowercase hex>`: a value's keyed hash (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ValueHash(String);

impl ValueHash {
    /// Accepts upper- or lowercase hex and keeps it lowercase.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let hex = raw
            .strip_prefix(PREFIX)
            .filter(|hex| hex.len() == 2 * LEN && hex.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| ValueError::new("value hash", FORM))?;
        Ok(Self(format!("{PREFIX}{}", hex.to_ascii_lowercase())))
    }

    /// Whether `raw` is an unkeyed `sha256:<hex>` hash of the form idledger used before keyed
    /// hashes; such hashes are refused on input and rekeyed in storage.
    pub fn is_legacy(raw: &str) -> bool {
        raw.strip_prefix("sha256:")
            .is_some_and(|hex| hex.len() == 2 * LEN && hex.chars().all(|c| c.is_ascii_hexdigit()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ValueHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ValueHash {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, ValueError> {
        Self::parse(&raw)
    }
}

impl From<ValueHash> for String {
    fn from(v: ValueHash) -> String {
        v.0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::field::FieldPath;

    fn consumer(id: &str) -> ConsumerId {
        ConsumerId::parse(id).unwrap()
    }

    fn email(text: &str) -> FieldValue {
        FieldValue::parse(
            &FieldPath::parse("email").unwrap(),
            &serde_json::json!(text),
        )
        .unwrap()
    }

    #[test]
    fn hashes_are_keyed_per_consumer_and_stable() {
        let root = HashRoot::new([7; LEN]);
        let crm = root.for_consumer(&consumer("crm"));
        let cdp = root.for_consumer(&consumer("cdp"));
        let ada = email("ada@example.org");
        assert_eq!(crm.value(&ada), crm.value(&ada));
        assert_ne!(crm.value(&ada), cdp.value(&ada));
        assert_ne!(crm.value(&ada), crm.value(&email("bob@example.org")));
        // Another root (another master key) gives other keys.
        assert_ne!(HashRoot::new([8; LEN]).for_consumer(&consumer("crm")), crm);
    }

    #[test]
    fn ack_signatures_are_hmac_sha256_of_the_body_under_the_consumers_ack_key() {
        let root = HashRoot::new([3; LEN]);
        let crm = root.ack_key(&consumer("crm"));
        let body = br#"{"event_id":"x"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(crm.to_hex()).unwrap()).unwrap();
        mac.update(body);
        let expected = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(crm.sign(body), expected);
        assert!(crm.verifies(&expected, body));
        assert!(crm.verifies(&expected.to_ascii_uppercase().replace("V1=", "v1="), body));
        assert!(!crm.verifies(&expected, br#"{"event_id":"y"}"#));
        let cdp = root.ack_key(&consumer("cdp"));
        assert!(!cdp.verifies(&expected, body));
        // Neither the value-hash key nor a malformed header verifies.
        assert_ne!(crm.to_hex(), root.for_consumer(&consumer("crm")).to_hex());
        for bad in ["", "v1=", "v1=zz", "v2=00", &expected[3..]] {
            assert!(!crm.verifies(bad, body), "{bad:?}");
        }
    }

    #[test]
    fn the_contract_is_hmac_sha256_over_the_values_compact_json() {
        // What the delivery contract tells a consumer to compute, spelled out independently.
        let key = HashRoot::new([1; LEN]).for_consumer(&consumer("crm"));
        let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(key.to_hex()).unwrap()).unwrap();
        mac.update(br#""ada@example.org""#);
        let expected = format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(key.value(&email("ada@example.org")).as_str(), expected);
        let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(key.to_hex()).unwrap()).unwrap();
        mac.update(br#""withdrawn""#);
        let expected = format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(key.consent(false).as_str(), expected);
    }

    #[test]
    fn a_key_survives_its_hex_form() {
        let key = HashRoot::new([3; LEN]).for_consumer(&consumer("crm"));
        assert_eq!(HashKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(HashKey::from_hex("abc").is_err());
        assert!(!format!("{key:?}").contains(&key.to_hex()));
    }

    #[test]
    fn value_hashes_parse_strictly() {
        let hex = "AB".repeat(32);
        let parsed = ValueHash::parse(&format!("hmac-sha256:{hex}")).unwrap();
        assert_eq!(parsed.as_str(), format!("hmac-sha256:{}", "ab".repeat(32)));
        for bad in [
            format!("sha256:{hex}"),
            "hmac-sha256:".to_owned(),
            format!("hmac-sha256:{}", "g".repeat(64)),
            format!("hmac-sha256:{}", "a".repeat(63)),
        ] {
            assert!(ValueHash::parse(&bad).is_err(), "{bad}");
        }
        assert!(ValueHash::is_legacy(&format!("sha256:{hex}")));
        assert!(!ValueHash::is_legacy(parsed.as_str()));
    }
}
