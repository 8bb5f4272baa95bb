//! Compact JWS (RFC 7515) signed with Ed25519 (`EdDSA`, RFC 8037): what decision tokens and
//! consent receipts are, signed with the store's key of purpose [`TOKEN_PURPOSE`] and
//! verified with the public key set ([`jwks`], served at `/.well-known/jwks.json`).
//!
//! Signed and verified by hand with `ed25519-dalek` and `base64` rather than a JOSE crate: we
//! need one algorithm and one serialization, which is a few dozen lines over crates already in
//! the build; the maintained JOSE crates bring RSA and NIST curves (or a C crypto library) into
//! every build of the server for it. What such a library would guard against is refused here
//! explicitly: any `alg` but `EdDSA` (`none` included), a `crit` header, padding or
//! non-canonical base64url, a non-object payload, malleable signatures (strict verification).
//! A test verifies our tokens with an independent JOSE implementation.
//!
//! [`verify_compact`] checks the form, the algorithm, the key and the signature, not time:
//! [`verify_compact_at`] also refuses a token whose `exp` (seconds since the epoch) is not
//! after `now`. Errors never carry a claim's value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::StoreError;
use crate::signing::{ED25519, KeyPair, PublicSigningKey, SigningKeys, kid_of};

/// The one key purpose for decision tokens and consent receipts.
pub const TOKEN_PURPOSE: &str = "jws";
/// The JOSE name of Ed25519 signatures (RFC 8037).
pub const ALG: &str = "EdDSA";
/// Longer tokens are refused before anything is decoded.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// How long a [`TokenSigner`] signs with the key it read, by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(30);
/// An unknown kid reloads the public keys at most this often: garbage kids cannot make every
/// verification a database read.
const MIN_RELOAD: Duration = Duration::from_secs(1);

/// The protected header we write, in this member order.
#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

/// A token whose signature verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The header's `kid`: the key that signed it.
    pub kid: String,
    /// The header's `typ`, if it has one.
    pub typ: Option<String>,
    /// The payload, a JSON object.
    pub claims: Value,
}

/// Why a token was refused. Carries no claim content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwsError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported algorithm: only EdDSA is accepted")]
    Algorithm,
    #[error("signed by an unknown key {kid}")]
    UnknownKey { kid: String },
    #[error("the signature is invalid: the token was altered or signed by another key")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
}

/// Signs `claims` as a compact JWS with header `{"alg":"EdDSA","kid":…,"typ":typ}`. Fails only
/// if `claims` does not serialize to JSON.
pub fn sign_compact(
    pair: &KeyPair,
    typ: &str,
    claims: &impl Serialize,
) -> Result<String, serde_json::Error> {
    let header = serde_json::to_vec(&Header {
        alg: ALG,
        kid: &pair.kid,
        typ,
    })?;
    let payload = serde_json::to_vec(claims)?;
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(payload, &mut token);
    let signature = pair.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature, &mut token);
    Ok(token)
}

/// Verifies a compact JWS against `keys` (an Ed25519 key whose kid is the header's and is its
/// public key's); returns its kid, typ and claims. Does not look at `exp`: see
/// [`verify_compact_at`].
pub fn verify_compact(token: &str, keys: &[PublicSigningKey]) -> Result<Verified, JwsError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwsError::Malformed("longer than 64 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("not three dot-separated parts"));
    };
    let header: Value = serde_json::from_slice(&decode(header_b64, "the header is not base64url")?)
        .map_err(|_| JwsError::Malformed("the header is not JSON"))?;
    let Value::Object(header) = header else {
        return Err(JwsError::Malformed("the header is not a JSON object"));
    };
    if header.get("alg").and_then(Value::as_str) != Some(ALG) {
        return Err(JwsError::Algorithm);
    }
    // Extensions we would have to understand (RFC 7515 §4.1.11): we understand none.
    if header.contains_key("crit") {
        return Err(JwsError::Malformed("the header has crit"));
    }
    let Some(kid) = header.get("kid").and_then(Value::as_str) else {
        return Err(JwsError::Malformed("the header has no kid"));
    };
    let typ = match header.get("typ") {
        None => None,
        Some(Value::String(typ)) => Some(typ.clone()),
        Some(_) => return Err(JwsError::Malformed("the header's typ is not a string")),
    };
    let key = keys
        .iter()
        .find(|k| k.kid == kid && k.algorithm == ED25519 && kid_of(&k.public_key) == k.kid)
        .ok_or_else(|| JwsError::UnknownKey {
            kid: kid.to_owned(),
        })?;
    let key = <[u8; 32]>::try_from(key.public_key.as_slice())
        .ok()
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| JwsError::UnknownKey {
            kid: kid.to_owned(),
        })?;
    let signature =
        Signature::from_slice(&decode(signature_b64, "the signature is not base64url")?)
            .map_err(|_| JwsError::Malformed("the signature is not 64 bytes"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    key.verify_strict(signing_input.as_bytes(), &signature)
        .map_err(|_| JwsError::BadSignature)?;
    let claims: Value =
        serde_json::from_slice(&decode(payload_b64, "the payload is not base64url")?)
            .map_err(|_| JwsError::Malformed("the payload is not JSON"))?;
    if !claims.is_object() {
        return Err(JwsError::Malformed("the payload is not a JSON object"));
    }
    Ok(Verified {
        kid: kid.to_owned(),
        typ,
        claims,
    })
}

/// [`verify_compact`], and refuses a token that has expired at `now` ([`expired`]).
pub fn verify_compact_at(
    token: &str,
    keys: &[PublicSigningKey],
    now: DateTime<Utc>,
) -> Result<Verified, JwsError> {
    let verified = verify_compact(token, keys)?;
    if expired(&verified.claims, now)? {
        return Err(JwsError::Expired);
    }
    Ok(verified)
}

/// Whether the claims' `exp` (seconds since the epoch, RFC 7519) is not after `now`; false
/// without `exp`, an error when it is not a number.
pub fn expired(claims: &Value, now: DateTime<Utc>) -> Result<bool, JwsError> {
    match claims.get("exp") {
        None => Ok(false),
        Some(exp) => {
            let exp = exp
                .as_f64()
                .ok_or(JwsError::Malformed("exp is not a number"))?;
            // `now` in whole seconds is at most 1 s early: a token is never accepted after exp.
            let now = now.timestamp() as f64;
            Ok(exp <= now)
        }
    }
}

/// The public key set (RFC 7517) of `keys`: the Ed25519 ones as OKP keys.
pub fn jwks(keys: &[PublicSigningKey]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .filter(|k| k.algorithm == ED25519)
        .map(|k| {
            json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(&k.public_key),
                "kid": k.kid,
                "alg": ALG,
                "use": "sig",
            })
        })
        .collect();
    json!({ "keys": keys })
}

/// The keys of a public key set (as [`jwks`] writes it, e.g. a saved `/.well-known/jwks.json`),
/// for [`verify_compact`]. Keys of another type or algorithm are skipped; an Ed25519 key
/// whose kid is not its public key's is refused. A set carries no times: `created_at` is the
/// epoch, purpose [`TOKEN_PURPOSE`].
pub fn keys_from_jwks(set: &Value) -> Result<Vec<PublicSigningKey>, JwsError> {
    let Some(keys) = set.get("keys").and_then(Value::as_array) else {
        return Err(JwsError::Malformed(
            "a key set is an object with a keys array",
        ));
    };
    let mut found = Vec::new();
    for key in keys {
        let is = |member: &str, value: &str| key.get(member).and_then(Value::as_str) == Some(value);
        if !is("kty", "OKP")
            || !is("crv", "Ed25519")
            || key.get("alg").is_some_and(|_| !is("alg", ALG))
        {
            continue;
        }
        let public = key
            .get("x")
            .and_then(Value::as_str)
            .ok_or(JwsError::Malformed("an Ed25519 key has no x"))
            .and_then(|x| decode(x, "a key's x is not base64url"))?;
        if public.len() != 32 {
            return Err(JwsError::Malformed("an Ed25519 key's x is not 32 bytes"));
        }
        let kid = kid_of(&public);
        if key
            .get("kid")
            .and_then(Value::as_str)
            .is_some_and(|k| k != kid)
        {
            return Err(JwsError::Malformed("a key's kid is not its public key's"));
        }
        found.push(PublicSigningKey {
            kid,
            algorithm: ED25519.to_owned(),
            purpose: TOKEN_PURPOSE.to_owned(),
            public_key: public,
            created_at: DateTime::UNIX_EPOCH,
            retired_at: None,
        });
    }
    Ok(found)
}

/// Unpadded, canonical base64url (the engine refuses padding and stray trailing bits).
fn decode(part: &str, refusal: &'static str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwsError::Malformed(refusal))
}

/// Signs tokens with the key in use for [`TOKEN_PURPOSE`] (created on first use) and serves
/// the public keys, both cached: in the steady state, signing and verifying read no database.
/// Cheap to clone; clones share the cache.
///
/// The bound: a cached key is used for at most `refresh` (30 s by default) after it was read.
/// After a rotation in another process, this one signs with the old key — which still
/// verifies until it is removed — for at most that long, and its public key set lacks the new
/// key for at most that long (an unknown kid reloads it sooner, at most once a second). A
/// rotation through [`TokenSigner::rotate`] takes effect here at once.
#[derive(Debug, Clone)]
pub struct TokenSigner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: SigningKeys,
    refresh: Duration,
    pair: tokio::sync::Mutex<Option<(Instant, Arc<KeyPair>)>>,
    public: tokio::sync::Mutex<Option<(Instant, Arc<Vec<PublicSigningKey>>)>>,
}

impl TokenSigner {
    /// Reads nothing until first used.
    pub fn new(keys: SigningKeys, refresh: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                keys,
                refresh,
                pair: tokio::sync::Mutex::new(None),
                public: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// Signs `claims` as a compact JWS of type `typ` with the key in use.
    pub async fn sign(&self, typ: &str, claims: &impl Serialize) -> Result<String, StoreError> {
        let pair = self.key_pair().await?;
        Ok(sign_compact(&pair, typ, claims)?)
    }

    /// The key in use (cached, see the type's bound).
    pub async fn key_pair(&self) -> Result<Arc<KeyPair>, StoreError> {
        let mut cached = self.inner.pair.lock().await;
        if let Some((read, pair)) = cached.as_ref()
            && read.elapsed() < self.inner.refresh
        {
            return Ok(pair.clone());
        }
        let pair = Arc::new(self.inner.keys.in_use(TOKEN_PURPOSE).await?);
        *cached = Some((Instant::now(), pair.clone()));
        Ok(pair)
    }

    /// The public keys of [`TOKEN_PURPOSE`], in use and retired (cached, see the type's bound).
    pub async fn public_keys(&self) -> Result<Arc<Vec<PublicSigningKey>>, StoreError> {
        self.public_keys_fresher_than(self.inner.refresh).await
    }

    async fn public_keys_fresher_than(
        &self,
        age: Duration,
    ) -> Result<Arc<Vec<PublicSigningKey>>, StoreError> {
        let mut cached = self.inner.public.lock().await;
        if let Some((read, keys)) = cached.as_ref()
            && read.elapsed() < age
        {
            return Ok(keys.clone());
        }
        let keys = Arc::new(self.inner.keys.list(Some(TOKEN_PURPOSE)).await?);
        *cached = Some((Instant::now(), keys.clone()));
        Ok(keys)
    }

    /// The public key set, as `/.well-known/jwks.json` serves it. Creates the key in use if
    /// there is none yet, so that a set a client keeps has the key the next token is signed
    /// with.
    pub async fn jwks(&self) -> Result<Value, StoreError> {
        let pair = self.key_pair().await?;
        let mut keys = self.public_keys().await?;
        if !keys.iter().any(|k| k.kid == pair.kid) {
            keys = self.public_keys_fresher_than(Duration::ZERO).await?;
        }
        Ok(jwks(&keys))
    }

    /// Verifies a token with the public keys ([`verify_compact_at`]); an unknown kid reloads
    /// them first (a key rotated in elsewhere). The outer error is the store's, the inner the
    /// token's.
    pub async fn verify(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Result<Verified, JwsError>, StoreError> {
        let keys = self.public_keys().await?;
        match verify_compact_at(token, &keys, now) {
            Err(JwsError::UnknownKey { .. }) => {
                let keys = self.public_keys_fresher_than(MIN_RELOAD).await?;
                Ok(verify_compact_at(token, &keys, now))
            }
            verified => Ok(verified),
        }
    }

    /// Rotates the token key ([`SigningKeys::rotate`]); this signer signs with the new key at
    /// once. Returns the new kid.
    pub async fn rotate(&self) -> Result<String, StoreError> {
        let mut cached = self.inner.pair.lock().await;
        let pair = Arc::new(self.inner.keys.rotate_pair(TOKEN_PURPOSE).await?);
        *cached = Some((Instant::now(), pair.clone()));
        *self.inner.public.lock().await = None;
        Ok(pair.kid.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn pair(seed: u8) -> KeyPair {
        KeyPair::from_seed(&[seed; 32])
    }

    fn keys(pairs: &[&KeyPair]) -> Vec<PublicSigningKey> {
        pairs
            .iter()
            .map(|p| p.public(TOKEN_PURPOSE, Utc::now()))
            .collect()
    }

    fn b64(value: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
    }

    /// The token with one part replaced.
    fn with_part(token: &str, index: usize, part: &str) -> String {
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[index] = part;
        parts.join(".")
    }

    #[track_caller]
    fn refused(token: &str, keys: &[PublicSigningKey], expected: &JwsError) {
        assert_eq!(verify_compact(token, keys).unwrap_err(), *expected);
    }

    #[test]
    fn a_token_round_trips_with_its_header() {
        let key = pair(1);
        let claims = json!({"sub": "c-1", "decision": "allow", "exp": 2_000_000_000});
        let token = sign_compact(&key, "decision+jwt", &claims).unwrap();
        let header = token.split('.').next().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).unwrap(),
            format!(
                r#"{{"alg":"EdDSA","kid":"{}","typ":"decision+jwt"}}"#,
                key.kid
            )
            .as_bytes()
        );
        assert!(!token.contains('='));
        let verified = verify_compact(&token, &keys(&[&pair(2), &key])).unwrap();
        assert_eq!(verified.kid, key.kid);
        assert_eq!(verified.typ.as_deref(), Some("decision+jwt"));
        assert_eq!(verified.claims, claims);
    }

    #[test]
    fn a_tampered_payload_or_header_is_refused() {
        let key = pair(1);
        let keys = keys(&[&key]);
        let token = sign_compact(&key, "receipt+jwt", &json!({"purpose": "marketing"})).unwrap();
        let forged = with_part(&token, 1, &b64(&json!({"purpose": "analytics"})));
        refused(&forged, &keys, &JwsError::BadSignature);
        let retyped = with_part(
            &token,
            0,
            &b64(&json!({"alg": "EdDSA", "kid": key.kid, "typ": "decision+jwt"})),
        );
        refused(&retyped, &keys, &JwsError::BadSignature);
        // One bit of the signature.
        let mut signature = URL_SAFE_NO_PAD
            .decode(token.split('.').nth(2).unwrap())
            .unwrap();
        signature[0] ^= 1;
        let flipped = with_part(&token, 2, &URL_SAFE_NO_PAD.encode(&signature));
        refused(&flipped, &keys, &JwsError::BadSignature);
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let key = pair(1);
        let keys = keys(&[&key]);
        let token = sign_compact(&key, "receipt+jwt", &json!({"a": 1})).unwrap();
        for alg in [json!("none"), json!("HS256"), json!("ES256"), json!(null)] {
            let header = b64(&json!({"alg": alg, "kid": key.kid}));
            refused(&with_part(&token, 0, &header), &keys, &JwsError::Algorithm);
        }
        let unsigned = format!(
            "{}.{}.",
            b64(&json!({"alg": "none"})),
            b64(&json!({"a": 1}))
        );
        refused(&unsigned, &keys, &JwsError::Algorithm);
        let no_alg = with_part(&token, 0, &b64(&json!({"kid": key.kid})));
        refused(&no_alg, &keys, &JwsError::Algorithm);
    }

    #[test]
    fn an_unknown_kid_and_another_key_are_refused() {
        let key = pair(1);
        let token = sign_compact(&key, "receipt+jwt", &json!({"a": 1})).unwrap();
        refused(
            &token,
            &keys(&[&pair(2)]),
            &JwsError::UnknownKey {
                kid: key.kid.clone(),
            },
        );
        // Another key listed under this kid: its kid is not its own, so it is not trusted.
        let mut impostor = pair(2).public(TOKEN_PURPOSE, Utc::now());
        impostor.kid = key.kid.clone();
        refused(
            &token,
            &[impostor],
            &JwsError::UnknownKey {
                kid: key.kid.clone(),
            },
        );
        // Signed by another key under our kid.
        let other = pair(2);
        let forged = with_part(
            &sign_compact(&other, "receipt+jwt", &json!({"a": 1})).unwrap(),
            0,
            token.split('.').next().unwrap(),
        );
        refused(&forged, &keys(&[&key]), &JwsError::BadSignature);
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let key = pair(1);
        let keys = keys(&[&key]);
        let token = sign_compact(&key, "receipt+jwt", &json!({"a": 1})).unwrap();
        let malformed = |t: &str| {
            assert!(
                matches!(verify_compact(t, &keys), Err(JwsError::Malformed(_))),
                "{t}"
            );
        };
        malformed("");
        malformed("a.b");
        malformed(&format!("{token}.x"));
        malformed(&with_part(&token, 0, "!!"));
        malformed(&format!("{token}="));
        malformed(&with_part(&token, 0, &b64(&json!(["EdDSA"]))));
        malformed(&with_part(
            &token,
            0,
            &b64(&json!({"alg": "EdDSA", "kid": key.kid, "crit": ["b64"]})),
        ));
        malformed(&with_part(&token, 0, &b64(&json!({"alg": "EdDSA"}))));
        malformed(&"a".repeat(MAX_TOKEN_LEN + 1));
        let array = sign_compact(&key, "receipt+jwt", &json!([1, 2])).unwrap();
        malformed(&array);
    }

    #[test]
    fn exp_is_checked_only_when_asked() {
        let key = pair(1);
        let keys = keys(&[&key]);
        let now = Utc::now();
        let token = |exp: Value| sign_compact(&key, "t", &json!({"exp": exp})).unwrap();
        let past = token(json!(now.timestamp() - 1));
        assert!(verify_compact(&past, &keys).is_ok());
        assert_eq!(
            verify_compact_at(&past, &keys, now).unwrap_err(),
            JwsError::Expired
        );
        assert!(verify_compact_at(&token(json!(now.timestamp() + 60)), &keys, now).is_ok());
        assert!(
            verify_compact_at(&sign_compact(&key, "t", &json!({})).unwrap(), &keys, now).is_ok()
        );
        assert!(matches!(
            verify_compact_at(&token(json!("tomorrow")), &keys, now),
            Err(JwsError::Malformed(_))
        ));
    }

    #[test]
    fn the_key_set_lists_ed25519_keys_and_reads_back() {
        let (a, b) = (pair(1), pair(2));
        let set = jwks(&keys(&[&a, &b]));
        assert_eq!(set["keys"].as_array().unwrap().len(), 2);
        let first = &set["keys"][0];
        assert_eq!(first["kty"], "OKP");
        assert_eq!(first["crv"], "Ed25519");
        assert_eq!(first["alg"], "EdDSA");
        assert_eq!(first["use"], "sig");
        assert_eq!(first["kid"], a.kid.as_str());
        assert_eq!(first["x"], URL_SAFE_NO_PAD.encode(a.public_key()).as_str());
        let back = keys_from_jwks(&set).unwrap();
        assert_eq!(
            back.iter().map(|k| k.kid.as_str()).collect::<Vec<_>>(),
            [a.kid.as_str(), b.kid.as_str()]
        );
        let token = sign_compact(&b, "t", &json!({})).unwrap();
        assert_eq!(verify_compact(&token, &back).unwrap().kid, b.kid);
        let mut lying = set.clone();
        lying["keys"][0]["kid"] = json!(b.kid);
        assert!(keys_from_jwks(&lying).is_err());
        assert!(
            keys_from_jwks(&json!({"keys": [{"kty": "RSA", "n": "x"}]}))
                .unwrap()
                .is_empty()
        );
        assert!(keys_from_jwks(&json!([])).is_err());
    }
}
