//! The secret that confirms a pending change (`request_change` → `confirm_verification`).
//!
//! A challenge id is visible to whoever may see the pending change; confirming it must take
//! more than that: the secret only the requester received in the answer to its request (and
//! passes on to the subject, e.g. in a link). The secret is an HMAC of the challenge id under a
//! key derived from the master key, so nothing secret is stored anywhere — not in the log, not
//! in idempotency records — and a retried request gets the same secret again. Deciding stays
//! pure: the key comes in through [`crate::Context`].

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Sha256;

use crate::ids::ChallengeId;

/// Length of a key and of a secret, in bytes.
const LEN: usize = 32;

/// The key challenge secrets are derived from (itself derived from the master key).
#[derive(Clone)]
pub struct ChallengeKey([u8; LEN]);

impl fmt::Debug for ChallengeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChallengeKey(…)")
    }
}

impl ChallengeKey {
    pub fn new(bytes: [u8; LEN]) -> Self {
        Self(bytes)
    }

    fn mac(&self, challenge: ChallengeId) -> Hmac<Sha256> {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(b"idledger challenge secret v1\0");
        mac.update(challenge.as_uuid().as_bytes());
        mac
    }

    /// The secret that confirms `challenge`.
    pub fn secret_for(&self, challenge: ChallengeId) -> ChallengeSecret {
        let bytes: [u8; LEN] = self.mac(challenge).finalize().into_bytes().into();
        ChallengeSecret(hex::encode(bytes))
    }

    /// Whether `secret` confirms `challenge`, compared in constant time.
    pub fn confirms(&self, challenge: ChallengeId, secret: &ChallengeSecret) -> bool {
        let Ok(bytes) = hex::decode(&secret.0) else {
            return false;
        };
        self.mac(challenge).verify_slice(&bytes).is_ok()
    }
}

/// A confirmation secret: 64 lowercase hex digits. Never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ChallengeSecret(String);

impl fmt::Debug for ChallengeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChallengeSecret(…)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a challenge secret is the 64 hex digits the request_change answer gave")]
pub struct BadSecret;

impl ChallengeSecret {
    pub fn parse(text: &str) -> Result<Self, BadSecret> {
        let text = text.trim().to_ascii_lowercase();
        if text.len() == 2 * LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(text))
        } else {
            Err(BadSecret)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for ChallengeSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn challenge(n: u128) -> ChallengeId {
        ChallengeId::from(uuid::Uuid::from_u128(n))
    }

    #[test]
    fn a_secret_confirms_its_own_challenge_under_its_own_key_only() {
        let key = ChallengeKey::new([7; LEN]);
        let secret = key.secret_for(challenge(1));
        assert!(key.confirms(challenge(1), &secret));
        assert!(!key.confirms(challenge(2), &secret));
        assert!(!ChallengeKey::new([8; LEN]).confirms(challenge(1), &secret));
        assert_eq!(key.secret_for(challenge(1)), secret, "deterministic");
        assert_eq!(secret.as_str().len(), 64);
    }

    #[test]
    fn secrets_parse_as_hex_and_never_show_in_debug() {
        let key = ChallengeKey::new([7; LEN]);
        let secret = key.secret_for(challenge(1));
        let upper = ChallengeSecret::parse(&secret.as_str().to_ascii_uppercase()).unwrap();
        assert!(key.confirms(challenge(1), &upper));
        assert!(ChallengeSecret::parse("abc").is_err());
        assert!(ChallengeSecret::parse(&"g".repeat(64)).is_err());
        assert!(!format!("{secret:?}").contains(secret.as_str()));
        assert!(!format!("{key:?}").contains('7'));
    }
}
