//! Finding a customer by an identifier without a plaintext index: the blind index's rules.
//!
//! An [`Identifier`] is a normalised value a customer can be found by: an email, a phone
//! number, an external id (`<system>:<id>`, the value of `external_id.<system>`) or a full
//! name. [`identifiers`] lists those a record holds — current values only: a pending change
//! is not the customer's until it is verified, and a proposal is nobody's. The index stores
//! [`LookupKey::digest`] of each, an HMAC-SHA256 under a key of its own (derived from the
//! master key's derivation root, like the other keyed hashes), never the value: a database
//! dump does not reveal who is in it, and without the key no dictionary reverses a digest.
//! The key only makes digests; it opens no data.
//!
//! Normalisation is the values' own parsers' ([`Email::parse`], [`PhoneE164::parse`],
//! [`PersonName::parse`], [`Key::parse`], [`ExternalIdValue::parse`]), so a value is found
//! however it was written, exactly when a command writing it would record the same value.
//! Names are matched whole and exactly, given then family name, after Unicode NFC, case
//! folding and whitespace collapsing ([`fold_name`]).

use std::collections::BTreeSet;
use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::field::{ExternalIdValue, FieldPath, FieldValue};
use crate::ids::Key;
use crate::state::CustomerState;
use crate::values::{Email, PersonName, PhoneE164, ValueError};

const LEN: usize = 32;

/// What an identifier is: the lookup's parameter names (`email`, `phone`, `external_id`,
/// `name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupKind {
    Email,
    Phone,
    ExternalId,
    Name,
}

impl LookupKind {
    pub const ALL: [Self; 4] = [Self::Email, Self::Phone, Self::ExternalId, Self::Name];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::ExternalId => "external_id",
            Self::Name => "name",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }

    /// What a valid value looks like, for a refusal that must not quote the value given (it
    /// is personal data).
    pub fn expected(self) -> &'static str {
        match self {
            Self::Email => "an email address such as ada@example.org",
            Self::Phone => {
                "a phone number with its country code, such as +44 20 7946 0958 (8 to 15 digits)"
            }
            Self::ExternalId => {
                "<system>:<id>, the system a key (lowercase a-z, digits, '_') and the id 1 to 256 \
                 characters without whitespace"
            }
            Self::Name => {
                "a name of 1 to 200 characters with at least one letter, no control or invisible \
                 characters"
            }
        }
    }
}

impl fmt::Display for LookupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A normalised identifier. Its `Debug` names the kind only: the value is personal data.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Identifier {
    Email(Email),
    Phone(PhoneE164),
    ExternalId {
        system: Key,
        id: ExternalIdValue,
    },
    /// The full name, folded ([`fold_name`]).
    Name(String),
}

impl fmt::Debug for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExternalId { system, .. } => write!(f, "Identifier(external_id.{system}, …)"),
            other => write!(f, "Identifier({}, …)", other.kind()),
        }
    }
}

impl Identifier {
    /// Parses and normalises a value of `kind` as a caller writes it. The error never
    /// quotes the value.
    pub fn parse(kind: LookupKind, raw: &str) -> Result<Self, ValueError> {
        let parsed = match kind {
            LookupKind::Email => Email::parse(raw).ok().map(Self::Email),
            LookupKind::Phone => PhoneE164::parse(raw).ok().map(Self::Phone),
            LookupKind::ExternalId => raw.trim().split_once(':').and_then(|(system, id)| {
                Some(Self::ExternalId {
                    system: Key::parse(system).ok()?,
                    id: ExternalIdValue::parse(id).ok()?,
                })
            }),
            LookupKind::Name => PersonName::parse(raw)
                .ok()
                .map(|n| Self::Name(fold_name(n.as_str()))),
        };
        parsed.ok_or_else(|| ValueError::new(kind.as_str(), format!("must be {}", kind.expected())))
    }

    /// What a person typed into one search box: a customer id is not an identifier (the
    /// caller tries that first); an `@` makes it an email, a leading `+` or `00` a phone
    /// number, `<system>:<id>` an external id, anything else a name.
    pub fn infer(raw: &str) -> Result<Self, ValueError> {
        let s = raw.trim();
        let kind = if s.contains('@') {
            LookupKind::Email
        } else if (s.starts_with('+') || s.starts_with("00"))
            && s.chars().any(|c| c.is_ascii_digit())
            && !s.chars().any(char::is_alphabetic)
        {
            LookupKind::Phone
        } else if s
            .split_once(':')
            .is_some_and(|(system, id)| Key::parse(system).is_ok() && !id.is_empty())
        {
            LookupKind::ExternalId
        } else {
            LookupKind::Name
        };
        Self::parse(kind, s)
    }

    pub fn kind(&self) -> LookupKind {
        match self {
            Self::Email(_) => LookupKind::Email,
            Self::Phone(_) => LookupKind::Phone,
            Self::ExternalId { .. } => LookupKind::ExternalId,
            Self::Name(_) => LookupKind::Name,
        }
    }

    /// The fields whose values make this identifier: a reader finds customers by it only if
    /// it may read every one of them, and a source's lookup discloses them.
    pub fn fields(&self) -> Vec<FieldPath> {
        match self {
            Self::Email(_) => vec![FieldPath::Email],
            Self::Phone(_) => vec![FieldPath::Phone],
            Self::ExternalId { system, .. } => vec![FieldPath::ExternalId(system.clone())],
            Self::Name(_) => vec![FieldPath::NameGiven, FieldPath::NameFamily],
        }
    }

    /// The bytes digested: the kind, then the normalised value (for an external id the
    /// system, a NUL, the id; keys hold no NUL, so the split is unambiguous).
    fn digest_input(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(self.kind().as_str().as_bytes());
        out.push(0);
        match self {
            Self::Email(e) => out.extend_from_slice(e.as_str().as_bytes()),
            Self::Phone(p) => out.extend_from_slice(p.as_str().as_bytes()),
            Self::ExternalId { system, id } => {
                out.extend_from_slice(system.as_str().as_bytes());
                out.push(0);
                out.extend_from_slice(id.as_str().as_bytes());
            }
            Self::Name(n) => out.extend_from_slice(n.as_bytes()),
        }
        out
    }
}

/// Every identifier a record can be found by: its current email, phone, external ids and
/// full name. Nothing for an erased record (it holds no value).
pub fn identifiers(state: &CustomerState) -> BTreeSet<Identifier> {
    let mut out = BTreeSet::new();
    if state.erased.is_some() {
        return out;
    }
    for (path, record) in &state.fields {
        match (path, &record.value) {
            (FieldPath::Email, Some(FieldValue::Email(e))) => {
                out.insert(Identifier::Email(e.clone()));
            }
            (FieldPath::Phone, Some(FieldValue::Phone(p))) => {
                out.insert(Identifier::Phone(p.clone()));
            }
            (FieldPath::ExternalId(system), Some(FieldValue::ExternalId(id))) => {
                out.insert(Identifier::ExternalId {
                    system: system.clone(),
                    id: id.clone(),
                });
            }
            _ => {}
        }
    }
    let name = [FieldPath::NameGiven, FieldPath::NameFamily]
        .iter()
        .filter_map(|f| match state.value(f) {
            Some(FieldValue::PersonName(n)) => Some(n.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ");
    if !name.is_empty() {
        out.insert(Identifier::Name(fold_name(&name)));
    }
    out
}

/// A name as it is matched: NFC, case-folded, whitespace runs collapsed to one space.
///
/// Case folding is Unicode's full folding where it differs from lowercasing for letters of
/// names (ß and ẞ → ss, final sigma → σ, long s → s, the Latin ligatures); elsewhere it is
/// `char::to_lowercase`. NFC again after folding, since folding can decompose.
pub fn fold_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization as _;
    let mut folded = String::with_capacity(name.len());
    for c in name.nfc() {
        match c {
            'ß' | 'ẞ' => folded.push_str("ss"),
            'ς' => folded.push('σ'),
            'ſ' => folded.push('s'),
            'ﬀ' => folded.push_str("ff"),
            'ﬁ' => folded.push_str("fi"),
            'ﬂ' => folded.push_str("fl"),
            'ﬃ' => folded.push_str("ffi"),
            'ﬄ' => folded.push_str("ffl"),
            'ﬅ' | 'ﬆ' => folded.push_str("st"),
            c => folded.extend(c.to_lowercase()),
        }
    }
    let collapsed = folded.split_whitespace().collect::<Vec<_>>().join(" ");
    collapsed.nfc().collect()
}

/// The key of the blind index (derived from the master key's derivation root). It makes
/// digests and nothing else: it is not a data key and opens nothing.
#[derive(Clone)]
pub struct LookupKey([u8; LEN]);

impl fmt::Debug for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LookupKey(…)")
    }
}

impl LookupKey {
    pub fn new(bytes: [u8; LEN]) -> Self {
        Self(bytes)
    }

    /// HMAC-SHA256 of the identifier's kind and normalised value: what the index stores.
    pub fn digest(&self, identifier: &Identifier) -> [u8; LEN] {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key");
        mac.update(b"idledger lookup v1\0");
        mac.update(&identifier.digest_input());
        mac.finalize().into_bytes().into()
    }

    /// The digests of identifiers (a record's [`identifiers`]), sorted: the index rows it
    /// should have.
    pub fn digests(&self, identifiers: &BTreeSet<Identifier>) -> Vec<[u8; LEN]> {
        let mut out: Vec<[u8; LEN]> = identifiers.iter().map(|i| self.digest(i)).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_however_they_are_written() {
        let key = LookupKey::new([9; LEN]);
        let same = |kind, a: &str, b: &str| {
            assert_eq!(
                key.digest(&Identifier::parse(kind, a).unwrap()),
                key.digest(&Identifier::parse(kind, b).unwrap()),
                "{a} ~ {b}"
            );
        };
        same(LookupKind::Email, " Ada@Example.ORG ", "ada@example.org");
        same(LookupKind::Phone, "+44 (0)20 7946 0958", "00442079460958");
        same(LookupKind::ExternalId, "crm:C-42", " crm:C-42");
        same(LookupKind::Name, "Ada   LOVELACE", "ada lovelace");
        same(LookupKind::Name, "STRAßE", "strasse");
        // Decomposed é (e + combining acute) and composed é are one name.
        same(LookupKind::Name, "Ame\u{301}lie", "AMÉLIE");
        // External ids are case-sensitive, and kinds never collide.
        let crm = key.digest(&Identifier::parse(LookupKind::ExternalId, "crm:C-42").unwrap());
        let lower = key.digest(&Identifier::parse(LookupKind::ExternalId, "crm:c-42").unwrap());
        assert_ne!(crm, lower);
        let erp = key.digest(&Identifier::parse(LookupKind::ExternalId, "erp:C-42").unwrap());
        assert_ne!(crm, erp);
        let name = key.digest(&Identifier::parse(LookupKind::Name, "crm C-42").unwrap());
        assert_ne!(crm, name);
        // Another key, other digests.
        let other = LookupKey::new([8; LEN]);
        let ada = Identifier::parse(LookupKind::Email, "ada@example.org").unwrap();
        assert_ne!(key.digest(&ada), other.digest(&ada));
    }

    #[test]
    fn bad_values_are_refused_without_quoting_them() {
        for (kind, raw) in [
            (LookupKind::Email, "ada.secret@"),
            (LookupKind::Email, "ada.secret@-bad-.org"),
            (LookupKind::Phone, "ada.secret"),
            (LookupKind::ExternalId, "ada.secret"),
            (LookupKind::ExternalId, "Crm:ada.secret"),
            (LookupKind::ExternalId, "crm:ada secret"),
            (LookupKind::Name, "1234"),
            (LookupKind::Name, ""),
        ] {
            let e = Identifier::parse(kind, raw).unwrap_err().to_string();
            assert!(!e.contains("secret") && !e.contains("bad"), "{e}");
        }
    }

    #[test]
    fn one_search_box_tells_the_kinds_apart() {
        let kind = |raw| Identifier::infer(raw).unwrap().kind();
        assert_eq!(kind("Ada@Example.org"), LookupKind::Email);
        assert_eq!(kind("+44 20 7946 0958"), LookupKind::Phone);
        assert_eq!(kind("0044 20 7946 0958"), LookupKind::Phone);
        assert_eq!(kind("crm:C-42"), LookupKind::ExternalId);
        assert_eq!(kind("Ada Lovelace"), LookupKind::Name);
        assert_eq!(kind("Ada Lovelace: Countess"), LookupKind::Name);
        assert_eq!(kind("+44 abc"), LookupKind::Name);
        assert!(Identifier::infer("1234").is_err());
    }

    #[test]
    fn debug_output_names_the_kind_only() {
        let ada = Identifier::parse(LookupKind::Email, "ada@example.org").unwrap();
        assert!(!format!("{ada:?}").contains("ada@"));
        let id = Identifier::parse(LookupKind::ExternalId, "crm:C-42").unwrap();
        assert!(!format!("{id:?}").contains("C-42"));
        assert!(!format!("{:?}", LookupKey::new([1; LEN])).contains("01"));
    }
}
