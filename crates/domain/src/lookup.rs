//! Finding a customer by an identifier without a plaintext index: the blind index's rules.
//!
//! An [`Identifier`] is a normalised value a customer can be found by: an email, a phone
//! number, an external id (`<system>:<id>`, the value of `external_id.<system>`), a full
//! name, or the household the record's `household` field names (a household's members are
//! found through the same index; members share it, so it never matches duplicates).
//! [`identifiers`] lists those a record holds — current values only: a pending change is
//! not the customer's until it is verified, and a proposal is nobody's. The index stores
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
use crate::ids::{HouseholdId, Key};
use crate::state::CustomerState;
use crate::values::{Email, PersonName, PhoneE164, ValueError};

const LEN: usize = 32;

/// What an identifier is: the lookup's parameter names (`email`, `phone`, `external_id`,
/// `name`, `household`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LookupKind {
    Email,
    Phone,
    ExternalId,
    Name,
    Household,
}

impl LookupKind {
    pub const ALL: [Self; 5] = [
        Self::Email,
        Self::Phone,
        Self::ExternalId,
        Self::Name,
        Self::Household,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::ExternalId => "external_id",
            Self::Name => "name",
            Self::Household => "household",
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
            Self::Household => "a household id (a UUID)",
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
    /// The household a `household` field names (not personal in itself, but who shares it
    /// is: found only by readers of `household`).
    Household(HouseholdId),
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
            LookupKind::Household => HouseholdId::parse(raw.trim()).ok().map(Self::Household),
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
            Self::Household(_) => LookupKind::Household,
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
            Self::Household(_) => vec![FieldPath::Household],
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
            Self::Household(h) => out.extend_from_slice(h.to_string().as_bytes()),
        }
        out
    }
}

/// Every identifier a record can be found by: its current email, phone, external ids, full
/// name and household. Nothing for an erased record (it holds no value), nor a merged one.
pub fn identifiers(state: &CustomerState) -> BTreeSet<Identifier> {
    let mut out = BTreeSet::new();
    // A merged record is found through its survivor, which holds its identifiers.
    if state.erased.is_some() || state.merged_into.is_some() {
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
            (FieldPath::Household, Some(FieldValue::Household(membership))) => {
                out.insert(Identifier::Household(membership.household_id));
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

    /// The index row a match key is found by: an identifier's own digest (the lookup's row),
    /// or for the secondary combination a digest under another label, so it is never found
    /// by a lookup and never collides with one.
    pub fn match_digest(&self, key: &MatchKey) -> [u8; LEN] {
        match key {
            MatchKey::Verified(identifier) => self.digest(identifier),
            MatchKey::Secondary { rule, values } => {
                #[allow(clippy::expect_used)] // HMAC takes a key of any length.
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key");
                mac.update(b"idledger match v1\0");
                // The rule's fields, then each value; none holds a NUL (values are parsed).
                mac.update(rule.as_bytes());
                for value in values {
                    mac.update(b"\0");
                    mac.update(value.as_bytes());
                }
                mac.finalize().into_bytes().into()
            }
        }
    }

    /// Every index row a record should have, sorted: its identifiers' digests and, when the
    /// rule is on and the record has its fields, the secondary combination's.
    pub fn index_digests(&self, state: &CustomerState, rule: &SecondaryRule) -> Vec<[u8; LEN]> {
        let mut out = self.digests(&identifiers(state));
        if let Some(key) = rule.key(state) {
            out.push(self.match_digest(&key));
            out.sort_unstable();
            out.dedup();
        }
        out
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

/// The fields a secondary matching rule may combine: each has one normalisation here (names
/// folded like [`fold_name`], a birth date as `YYYY-MM-DD`, a jurisdiction as its code).
pub const SECONDARY_FIELDS: [FieldPath; 4] = [
    FieldPath::NameGiven,
    FieldPath::NameFamily,
    FieldPath::BirthDate,
    FieldPath::Jurisdiction,
];

/// The policy's secondary matching rule (`[matching] secondary`): two customers whose values
/// of every one of these fields are equal, once normalised, are a weak duplicate candidate.
/// Off when empty; otherwise at least two distinct fields of [`SECONDARY_FIELDS`] (one field
/// alone — a family name — matches whole towns), kept in that list's order so the rule has
/// one spelling.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecondaryRule {
    fields: Vec<FieldPath>,
}

impl SecondaryRule {
    /// Checks the policy's list of field names; the error says what is wrong with it.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            let field = FieldPath::parse(name)
                .ok()
                .filter(|f| SECONDARY_FIELDS.contains(f))
                .ok_or_else(|| {
                    format!(
                        "[matching] secondary names '{name}'; it may combine only {}",
                        SECONDARY_FIELDS.map(|f| f.to_string()).join(", ")
                    )
                })?;
            if fields.contains(&field) {
                return Err(format!("[matching] secondary names '{name}' twice"));
            }
            fields.push(field);
        }
        if fields.len() == 1 {
            return Err(
                "[matching] secondary needs at least two fields (or none, to turn it off)"
                    .to_owned(),
            );
        }
        fields.sort_by_key(|f| SECONDARY_FIELDS.iter().position(|s| s == f));
        Ok(Self { fields })
    }

    pub fn is_off(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn fields(&self) -> &[FieldPath] {
        &self.fields
    }

    /// How evidence names a match on this rule: the fields joined by `+`
    /// (`name.family+birth_date`), never their values.
    pub fn name(&self) -> String {
        self.fields
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("+")
    }

    /// The normalised combination of a record's values, if it has all of them (and is not
    /// erased; the rule is on).
    fn key(&self, state: &CustomerState) -> Option<MatchKey> {
        if self.is_off() || state.erased.is_some() || state.merged_into.is_some() {
            return None;
        }
        let mut values = Vec::with_capacity(self.fields.len());
        for field in &self.fields {
            let value = match state.value(field)? {
                FieldValue::PersonName(n) => fold_name(n.as_str()),
                FieldValue::BirthDate(d) => d.to_string(),
                FieldValue::Jurisdiction(j) => j.to_string(),
                _ => return None,
            };
            values.push(value);
        }
        Some(MatchKey::Secondary {
            rule: self.name(),
            values,
        })
    }
}

/// Whether a record's index rows change from `before` to `after`: compared on the values,
/// so the common write (no identifier touched) computes no digest.
pub fn index_changed(before: &CustomerState, after: &CustomerState, rule: &SecondaryRule) -> bool {
    identifiers(before) != identifiers(after) || rule.key(before) != rule.key(after)
}

/// How sure a duplicate candidate is: `strong` when the two customers share a verified
/// identifier (a verified email or phone, an external id), `weak` when only the secondary
/// rule matches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchStrength {
    Weak,
    Strong,
}

impl MatchStrength {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Weak => "weak",
            Self::Strong => "strong",
        }
    }
}

/// What a record can be matched to another by. Its `Debug` names the basis only.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum MatchKey {
    /// A verified email or phone, or an external id: strong.
    Verified(Identifier),
    /// The secondary rule's normalised values: weak.
    Secondary { rule: String, values: Vec<String> },
}

impl fmt::Debug for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MatchKey({}, …)", self.basis())
    }
}

impl MatchKey {
    /// What evidence may say of the match: `email`, `phone`, `external_id.<system>` or the
    /// rule's fields (`name.family+birth_date`) — a kind, never a value.
    pub fn basis(&self) -> String {
        match self {
            Self::Verified(Identifier::ExternalId { system, .. }) => {
                format!("external_id.{system}")
            }
            Self::Verified(identifier) => identifier.kind().as_str().to_owned(),
            Self::Secondary { rule, .. } => rule.clone(),
        }
    }

    pub fn strength(&self) -> MatchStrength {
        match self {
            Self::Verified(_) => MatchStrength::Strong,
            Self::Secondary { .. } => MatchStrength::Weak,
        }
    }
}

/// What a record is matched to others by: its verified email and phone (a value set without
/// verification, where the policy allows that, is not proof of anything; a pending change is
/// not the customer's), its external ids, and the secondary rule's combination. Never its
/// household: its members share it by design. Nothing for an erased record.
pub fn match_keys(state: &CustomerState, rule: &SecondaryRule) -> BTreeSet<MatchKey> {
    let mut out: BTreeSet<MatchKey> = identifiers(state)
        .into_iter()
        .filter(|identifier| match identifier {
            Identifier::Email(_) | Identifier::Phone(_) => identifier.fields().iter().all(|f| {
                state
                    .fields
                    .get(f)
                    .is_some_and(|r| r.verification.is_some())
            }),
            Identifier::ExternalId { .. } => true,
            // A full name alone proves nothing; the secondary rule may use it with more.
            Identifier::Name(_) => false,
            // Members of one household are several people.
            Identifier::Household(_) => false,
        })
        .map(MatchKey::Verified)
        .collect();
    out.extend(rule.key(state));
    out
}

/// Why two records may be one person: the strongest basis they share, and every basis they
/// share (`MatchKey::basis`, sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateMatch {
    pub strength: MatchStrength,
    pub matched_on: Vec<String>,
}

/// Whether records `a` and `b` are a duplicate candidate: they share a match key. Decided on
/// the records themselves (the index only finds candidates), so an index row left stale, or
/// a value no longer verified, makes no candidate.
pub fn duplicate_match(
    a: &CustomerState,
    b: &CustomerState,
    rule: &SecondaryRule,
) -> Option<DuplicateMatch> {
    let theirs = match_keys(b, rule);
    let shared: Vec<MatchKey> = match_keys(a, rule)
        .into_iter()
        .filter(|k| theirs.contains(k))
        .collect();
    let strength = shared.iter().map(MatchKey::strength).max()?;
    let mut matched_on: Vec<String> = shared.iter().map(MatchKey::basis).collect();
    matched_on.sort();
    matched_on.dedup();
    Some(DuplicateMatch {
        strength,
        matched_on,
    })
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
        same(
            LookupKind::Household,
            " 0190F5A2-7C3E-7A1B-8C4D-2E6F8A9B0C1D",
            "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d",
        );
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
    /// A registered record holding `values`; email and phone verified if `verified`.
    fn record(values: &[(&str, serde_json::Value)], verified: bool) -> CustomerState {
        use crate::state::{FieldRecord, Verification};
        let mut state = CustomerState {
            registered: true,
            ..CustomerState::default()
        };
        for (path, raw) in values {
            let field = FieldPath::parse(path).unwrap();
            let value = FieldValue::parse(&field, raw).unwrap();
            let mut r = FieldRecord::empty();
            r.value = Some(value);
            if verified && matches!(field, FieldPath::Email | FieldPath::Phone) {
                r.verification = Some(Verification {
                    verified_at: chrono::Utc::now(),
                    verified_by: crate::ids::SourceId::parse("idp").unwrap(),
                    evidence: None,
                });
            }
            state.fields.insert(field, r);
        }
        state
    }

    fn rule(fields: &[&str]) -> SecondaryRule {
        SecondaryRule::parse(&fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn a_secondary_rule_combines_two_or_more_known_fields() {
        assert!(rule(&[]).is_off());
        // One spelling whatever the order written.
        assert_eq!(
            rule(&["birth_date", "name.family"]).name(),
            "name.family+birth_date"
        );
        let bad = |fields: &[&str]| {
            SecondaryRule::parse(&fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>())
                .unwrap_err()
        };
        assert!(bad(&["name.family"]).contains("at least two"));
        assert!(bad(&["email", "birth_date"]).contains("'email'"));
        assert!(bad(&["birth_date", "birth_date"]).contains("twice"));
        assert!(bad(&["name.family", "nonsense"]).contains("'nonsense'"));
    }

    #[test]
    fn verified_identifiers_match_strongly_the_secondary_rule_weakly() {
        let on = rule(&["name.family", "birth_date"]);
        let ada = record(
            &[
                ("email", serde_json::json!("ada@example.org")),
                ("name.family", serde_json::json!("Lovelace")),
                ("birth_date", serde_json::json!("1985-12-10")),
            ],
            true,
        );
        let same_email = record(&[("email", serde_json::json!("ADA@example.org"))], true);
        let found = duplicate_match(&ada, &same_email, &on).unwrap();
        assert_eq!(found.strength, MatchStrength::Strong);
        assert_eq!(found.matched_on, ["email"]);

        // An unverified email (where the policy allowed one) proves nothing.
        let unverified = record(&[("email", serde_json::json!("ada@example.org"))], false);
        assert_eq!(duplicate_match(&ada, &unverified, &on), None);

        // Same family name (folded) and birth date: weak; off, nothing.
        let namesake = record(
            &[
                ("name.family", serde_json::json!("  LOVELACE")),
                ("birth_date", serde_json::json!("1985-12-10")),
            ],
            true,
        );
        let found = duplicate_match(&ada, &namesake, &on).unwrap();
        assert_eq!(found.strength, MatchStrength::Weak);
        assert_eq!(found.matched_on, ["name.family+birth_date"]);
        assert_eq!(duplicate_match(&ada, &namesake, &rule(&[])), None);
        // Part of the combination is no match; a full name alone neither.
        let partly = record(&[("name.family", serde_json::json!("Lovelace"))], true);
        assert_eq!(duplicate_match(&ada, &partly, &on), None);

        // External ids match per system, and say which system, never the id.
        let crm = record(&[("external_id.crm", serde_json::json!("C-42"))], false);
        let found = duplicate_match(&crm, &crm.clone(), &on).unwrap();
        assert_eq!(found.matched_on, ["external_id.crm"]);
        let erp = record(&[("external_id.erp", serde_json::json!("C-42"))], false);
        assert_eq!(duplicate_match(&crm, &erp, &on), None);

        // An erased record matches nothing.
        let mut erased = ada.clone();
        erased.erased = Some(crate::state::Erasure {
            at: chrono::Utc::now(),
            source: crate::ids::SourceId::parse("admin").unwrap(),
            reason: "request".to_owned(),
        });
        assert!(match_keys(&erased, &on).is_empty());
        assert!(!format!("{:?}", match_keys(&ada, &on)).contains("ovelace"));
    }

    #[test]
    fn a_household_finds_its_members_and_never_matches_them_as_duplicates() {
        const HOUSEHOLD: &str = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";
        let on = rule(&["name.family", "birth_date"]);
        let member = |role: &str, extra: &[(&str, serde_json::Value)]| {
            let mut values = vec![(
                "household",
                serde_json::json!({"id": HOUSEHOLD, "role": role}),
            )];
            values.extend(extra.iter().cloned());
            record(&values, true)
        };
        let ada = member("head", &[("email", serde_json::json!("ada@example.org"))]);
        let byron = member(
            "member",
            &[("email", serde_json::json!("byron@example.org"))],
        );
        let household = Identifier::parse(LookupKind::Household, HOUSEHOLD).unwrap();
        assert_eq!(household.fields(), [FieldPath::Household]);
        assert!(identifiers(&ada).contains(&household));
        assert!(identifiers(&byron).contains(&household));
        // Both hold the household's row in the index…
        let key = LookupKey::new([5; LEN]);
        let row = key.digest(&household);
        assert!(key.index_digests(&ada, &on).contains(&row));
        assert!(key.index_digests(&byron, &on).contains(&row));
        // …and sharing it makes no duplicate candidate: it is no match key at all.
        assert!(
            !match_keys(&ada, &on)
                .iter()
                .any(|k| matches!(k, MatchKey::Verified(Identifier::Household(_))))
        );
        assert_eq!(duplicate_match(&ada, &byron, &on), None);
        let only_household = member("member", &[]);
        assert!(match_keys(&only_household, &on).is_empty());
        assert_eq!(
            duplicate_match(&only_household, &member("head", &[]), &on),
            None
        );
        // Another household, or none, changes the rows; a new role does not.
        let elsewhere = record(
            &[(
                "household",
                serde_json::json!({"id": "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1e", "role": "member"}),
            )],
            true,
        );
        assert!(index_changed(&only_household, &elsewhere, &on));
        assert!(index_changed(&only_household, &record(&[], true), &on));
        assert!(!index_changed(
            &only_household,
            &member("guardian", &[]),
            &on
        ));
        // Not a value to keep out of logs, but named like the others.
        assert_eq!(format!("{household:?}"), "Identifier(household, …)");
    }

    #[test]
    fn the_index_holds_the_combination_under_its_own_label() {
        let key = LookupKey::new([3; LEN]);
        let on = rule(&["name.family", "birth_date"]);
        let ada = record(
            &[
                ("name.family", serde_json::json!("Lovelace")),
                ("birth_date", serde_json::json!("1985-12-10")),
            ],
            true,
        );
        let plain = key.digests(&identifiers(&ada));
        let indexed = key.index_digests(&ada, &on);
        assert_eq!(indexed.len(), plain.len() + 1);
        assert_eq!(key.index_digests(&ada, &rule(&[])), plain);
        // The combination's row is never a lookup's row.
        let combination = match_keys(&ada, &on).into_iter().next().unwrap();
        let row = key.match_digest(&combination);
        assert!(indexed.contains(&row) && !plain.contains(&row));
        // Changing a field of the rule changes the rows; a field outside it does not.
        let older = record(
            &[
                ("name.family", serde_json::json!("Lovelace")),
                ("birth_date", serde_json::json!("1985-12-11")),
            ],
            true,
        );
        assert!(index_changed(&ada, &older, &on));
        assert!(!index_changed(&ada, &older, &rule(&[])));
    }
}
