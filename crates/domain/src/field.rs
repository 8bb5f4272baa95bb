//! The field catalog: every attribute idledger keeps, and the kind of value each holds.
//!
//! A [`FieldPath`] can only name a catalog field, so "unknown field" is decided once, at the
//! edge, by [`FieldPath::parse`].

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ids::{Key, Purpose};
use crate::values::{
    BirthDate, Email, Jurisdiction, Locale, PersonName, PhoneE164, PostalAddress, ValueError,
    VerificationLevel,
};

/// A field of the golden record. Dotted families carry a key: `preferences.<key>`,
/// `consent.<purpose>`, `sharing.<partner>`, `external_id.<system>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldPath {
    Email,
    Phone,
    NameGiven,
    NameFamily,
    PostalAddress,
    BirthDate,
    Locale,
    Jurisdiction,
    VerificationLevel,
    /// The household the customer belongs to, and their role in it.
    Household,
    Preference(Key),
    Consent(Purpose),
    Sharing(Key),
    ExternalId(Key),
}

/// The kind of value a field holds; decides how a JSON value is parsed for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    Email,
    Phone,
    PersonName,
    PostalAddress,
    BirthDate,
    Locale,
    Jurisdiction,
    VerificationLevel,
    Household,
    Preference,
    Consent,
    Sharing,
    ExternalId,
}

/// The fixed (non-family) fields, in catalog order.
pub const FIXED_FIELDS: [FieldPath; 10] = [
    FieldPath::Email,
    FieldPath::Phone,
    FieldPath::NameGiven,
    FieldPath::NameFamily,
    FieldPath::PostalAddress,
    FieldPath::BirthDate,
    FieldPath::Locale,
    FieldPath::Jurisdiction,
    FieldPath::VerificationLevel,
    FieldPath::Household,
];

/// The field families, as written in policies (`consent.*`).
pub const FAMILIES: [&str; 4] = ["preferences.*", "consent.*", "sharing.*", "external_id.*"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown field '{path}': {reason}")]
pub struct UnknownField {
    pub path: String,
    pub reason: String,
}

impl FieldPath {
    pub fn parse(path: &str) -> Result<Self, UnknownField> {
        let unknown = |reason: String| UnknownField {
            path: path.to_owned(),
            reason,
        };
        let fixed = match path {
            "email" => Some(Self::Email),
            "phone" => Some(Self::Phone),
            "name.given" => Some(Self::NameGiven),
            "name.family" => Some(Self::NameFamily),
            "postal_address" => Some(Self::PostalAddress),
            "birth_date" => Some(Self::BirthDate),
            "locale" => Some(Self::Locale),
            "jurisdiction" => Some(Self::Jurisdiction),
            "verification.level" => Some(Self::VerificationLevel),
            "household" => Some(Self::Household),
            _ => None,
        };
        if let Some(field) = fixed {
            return Ok(field);
        }
        let Some((family, key)) = path.split_once('.') else {
            return Err(unknown(catalog_hint()));
        };
        let key_error = |e: ValueError| unknown(format!("bad key after '{family}.': {}", e.reason));
        match family {
            "preferences" => Key::parse(key).map(Self::Preference).map_err(key_error),
            "consent" => Purpose::parse(key).map(Self::Consent).map_err(key_error),
            "sharing" => Key::parse(key).map(Self::Sharing).map_err(key_error),
            "external_id" => Key::parse(key).map(Self::ExternalId).map_err(key_error),
            _ => Err(unknown(catalog_hint())),
        }
    }

    pub fn kind(&self) -> FieldKind {
        match self {
            Self::Email => FieldKind::Email,
            Self::Phone => FieldKind::Phone,
            Self::NameGiven | Self::NameFamily => FieldKind::PersonName,
            Self::PostalAddress => FieldKind::PostalAddress,
            Self::BirthDate => FieldKind::BirthDate,
            Self::Locale => FieldKind::Locale,
            Self::Jurisdiction => FieldKind::Jurisdiction,
            Self::VerificationLevel => FieldKind::VerificationLevel,
            Self::Household => FieldKind::Household,
            Self::Preference(_) => FieldKind::Preference,
            Self::Consent(_) => FieldKind::Consent,
            Self::Sharing(_) => FieldKind::Sharing,
            Self::ExternalId(_) => FieldKind::ExternalId,
        }
    }

    /// The family pattern (`consent.*`) for keyed fields; `None` for fixed fields.
    pub fn family(&self) -> Option<&'static str> {
        match self {
            Self::Preference(_) => Some("preferences.*"),
            Self::Consent(_) => Some("consent.*"),
            Self::Sharing(_) => Some("sharing.*"),
            Self::ExternalId(_) => Some("external_id.*"),
            _ => None,
        }
    }
}

fn catalog_hint() -> String {
    "known fields are email, phone, name.given, name.family, postal_address, birth_date, \
     locale, jurisdiction, verification.level, household, preferences.<key>, consent.<purpose>, \
     sharing.<partner>, external_id.<system>"
        .to_owned()
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Email => f.write_str("email"),
            Self::Phone => f.write_str("phone"),
            Self::NameGiven => f.write_str("name.given"),
            Self::NameFamily => f.write_str("name.family"),
            Self::PostalAddress => f.write_str("postal_address"),
            Self::BirthDate => f.write_str("birth_date"),
            Self::Locale => f.write_str("locale"),
            Self::Jurisdiction => f.write_str("jurisdiction"),
            Self::VerificationLevel => f.write_str("verification.level"),
            Self::Household => f.write_str("household"),
            Self::Preference(k) => write!(f, "preferences.{k}"),
            Self::Consent(p) => write!(f, "consent.{p}"),
            Self::Sharing(k) => write!(f, "sharing.{k}"),
            Self::ExternalId(k) => write!(f, "external_id.{k}"),
        }
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A preference value: small scalars only, so consumers can map them to any CRM field type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PreferenceValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

/// A typed field value. The stored form is tagged (`{"kind":"email","value":…}`) so that it
/// can be read back without knowing the field; [`FieldValue::to_json`] gives the natural form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum FieldValue {
    Email(Email),
    Phone(PhoneE164),
    PersonName(PersonName),
    PostalAddress(PostalAddress),
    BirthDate(BirthDate),
    Locale(Locale),
    Jurisdiction(Jurisdiction),
    VerificationLevel(VerificationLevel),
    Household(crate::household::HouseholdMembership),
    Preference(PreferenceValue),
    Sharing(bool),
    ExternalId(ExternalIdValue),
}

/// A [`FieldValue`] serialised in its natural form: see [`FieldValue::natural`].
#[derive(Debug, Clone, Copy)]
pub struct Natural<'a>(&'a FieldValue);

impl Serialize for Natural<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FieldValue::Email(v) => v.serialize(serializer),
            FieldValue::Phone(v) => v.serialize(serializer),
            FieldValue::PersonName(v) => v.serialize(serializer),
            FieldValue::PostalAddress(v) => v.serialize(serializer),
            FieldValue::BirthDate(v) => v.serialize(serializer),
            FieldValue::Locale(v) => v.serialize(serializer),
            FieldValue::Jurisdiction(v) => v.serialize(serializer),
            FieldValue::VerificationLevel(v) => v.serialize(serializer),
            FieldValue::Household(v) => v.serialize(serializer),
            FieldValue::Preference(v) => v.serialize(serializer),
            FieldValue::Sharing(v) => v.serialize(serializer),
            FieldValue::ExternalId(v) => v.serialize(serializer),
        }
    }
}

/// An identifier of this customer in another system (1..=256 visible characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExternalIdValue(String);

impl ExternalIdValue {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let bad = |reason: &str| ValueError {
            what: "external id",
            reason: reason.to_owned(),
        };
        if raw.is_empty() {
            return Err(bad("must not be empty"));
        }
        if raw.chars().count() > 256 {
            return Err(bad("longer than 256 characters"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(bad("must not contain whitespace or control characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ExternalIdValue {
    type Error = ValueError;
    fn try_from(raw: String) -> Result<Self, ValueError> {
        Self::parse(&raw)
    }
}

impl From<ExternalIdValue> for String {
    fn from(v: ExternalIdValue) -> String {
        v.0
    }
}

const MAX_PREFERENCE_TEXT: usize = 256;

impl FieldValue {
    /// Parses the natural JSON form of a value for `field`.
    pub fn parse(field: &FieldPath, json: &serde_json::Value) -> Result<Self, ValueError> {
        use serde_json::Value as J;
        let kind = field.kind();
        let wrong_type = |expected: &str| ValueError {
            what: kind_name(kind),
            reason: format!("expected {expected}, got {}", json_type(json)),
        };
        let text = || json.as_str().ok_or_else(|| wrong_type("a string"));
        Ok(match kind {
            FieldKind::Email => Self::Email(Email::parse(text()?)?),
            FieldKind::Phone => Self::Phone(PhoneE164::parse(text()?)?),
            FieldKind::PersonName => Self::PersonName(PersonName::parse(text()?)?),
            FieldKind::PostalAddress => {
                if !json.is_object() {
                    return Err(wrong_type("an object"));
                }
                Self::PostalAddress(PostalAddress::from_json(json)?)
            }
            FieldKind::BirthDate => Self::BirthDate(BirthDate::parse(text()?)?),
            FieldKind::Locale => Self::Locale(Locale::parse(text()?)?),
            FieldKind::Jurisdiction => Self::Jurisdiction(Jurisdiction::parse(text()?)?),
            FieldKind::VerificationLevel => {
                Self::VerificationLevel(VerificationLevel::parse(text()?)?)
            }
            FieldKind::Household => {
                if !json.is_object() {
                    return Err(wrong_type("an object {\"id\": <uuid>, \"role\": …}"));
                }
                Self::Household(
                    serde_json::from_value(json.clone()).map_err(|e| ValueError {
                        what: "household",
                        reason: e.to_string(),
                    })?,
                )
            }
            FieldKind::Preference => Self::Preference(match json {
                J::Bool(b) => PreferenceValue::Bool(*b),
                J::Number(n) => PreferenceValue::Int(n.as_i64().ok_or_else(|| ValueError {
                    what: "preference",
                    reason: "numbers must be whole and fit in 64 bits".to_owned(),
                })?),
                J::String(s) if s.chars().count() <= MAX_PREFERENCE_TEXT => {
                    if s.chars().any(char::is_control) {
                        return Err(ValueError {
                            what: "preference",
                            reason: "must not contain control characters".to_owned(),
                        });
                    }
                    PreferenceValue::Text(s.clone())
                }
                J::String(_) => {
                    return Err(ValueError {
                        what: "preference",
                        reason: format!("text longer than {MAX_PREFERENCE_TEXT} characters"),
                    });
                }
                _ => return Err(wrong_type("a boolean, a whole number or a string")),
            }),
            FieldKind::Sharing => {
                Self::Sharing(json.as_bool().ok_or_else(|| wrong_type("a boolean"))?)
            }
            FieldKind::ExternalId => Self::ExternalId(ExternalIdValue::parse(text()?)?),
            FieldKind::Consent => {
                return Err(ValueError {
                    what: "consent",
                    reason: "consent has no plain value; use grant_consent or withdraw_consent"
                        .to_owned(),
                });
            }
        })
    }

    /// Whether this value may be stored in `field`.
    pub fn fits(&self, field: &FieldPath) -> bool {
        matches!(
            (self, field.kind()),
            (Self::Email(_), FieldKind::Email)
                | (Self::Phone(_), FieldKind::Phone)
                | (Self::PersonName(_), FieldKind::PersonName)
                | (Self::PostalAddress(_), FieldKind::PostalAddress)
                | (Self::BirthDate(_), FieldKind::BirthDate)
                | (Self::Locale(_), FieldKind::Locale)
                | (Self::Jurisdiction(_), FieldKind::Jurisdiction)
                | (Self::VerificationLevel(_), FieldKind::VerificationLevel)
                | (Self::Household(_), FieldKind::Household)
                | (Self::Preference(_), FieldKind::Preference)
                | (Self::Sharing(_), FieldKind::Sharing)
                | (Self::ExternalId(_), FieldKind::ExternalId)
        )
    }

    /// The natural JSON form, as the API and consumers see it.
    pub fn to_json(&self) -> serde_json::Value {
        // Serialising these plain types cannot fail; Null keeps this total without a panic.
        serde_json::to_value(self.natural()).unwrap_or(serde_json::Value::Null)
    }

    /// The value serialised in its natural form (the bare email, the name's object, …)
    /// rather than the stored, tagged one: for writing it straight into a response.
    pub fn natural(&self) -> Natural<'_> {
        Natural(self)
    }

    /// `sha256:<hex>` of the natural JSON form, unkeyed: only for recognising echoes of our own
    /// deliveries inside a record, which is stored sealed. Never stored in the clear or sent;
    /// hashes that leave a sealed record are keyed ([`crate::hashing`]).
    pub fn fingerprint(&self) -> String {
        let canonical = self.to_json().to_string();
        format!(
            "sha256:{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        )
    }
}

fn kind_name(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Email => "email",
        FieldKind::Phone => "phone",
        FieldKind::PersonName => "name",
        FieldKind::PostalAddress => "postal address",
        FieldKind::BirthDate => "birth date",
        FieldKind::Locale => "locale",
        FieldKind::Jurisdiction => "jurisdiction",
        FieldKind::VerificationLevel => "verification level",
        FieldKind::Household => "household",
        FieldKind::Preference => "preference",
        FieldKind::Consent => "consent",
        FieldKind::Sharing => "sharing flag",
        FieldKind::ExternalId => "external id",
    }
}

fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `name.*`: both parts of the name, as a selector (the policy names them one by one).
const NAME_GROUP: &str = "name.*";

/// Which fields a consumer receives: one field, a family (`consent.*`, or `name.*` for both
/// parts of the name), or everything (`*`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldSelector {
    All,
    Family(&'static str),
    Field(FieldPath),
}

impl FieldSelector {
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw == "*" {
            return Ok(Self::All);
        }
        if raw == NAME_GROUP {
            return Ok(Self::Family(NAME_GROUP));
        }
        if let Some(family) = FAMILIES.iter().find(|f| **f == raw) {
            return Ok(Self::Family(family));
        }
        FieldPath::parse(raw)
            .map(Self::Field)
            .map_err(|e| ValueError::new("field selector", e.to_string()))
    }

    pub fn matches(&self, field: &FieldPath) -> bool {
        match self {
            Self::All => true,
            Self::Family(NAME_GROUP) => {
                matches!(field, FieldPath::NameGiven | FieldPath::NameFamily)
            }
            Self::Family(family) => field.family() == Some(*family),
            Self::Field(f) => f == field,
        }
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Family(family) => f.write_str(family),
            Self::Field(field) => write!(f, "{field}"),
        }
    }
}

impl Serialize for FieldSelector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldSelector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[track_caller]
    fn check_path(input: &str, expect: Option<&str>) {
        match (FieldPath::parse(input), expect) {
            (Ok(p), Some(e)) => assert_eq!(p.to_string(), e),
            (Err(_), None) => {}
            (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn field_paths_parse_and_print() {
        for p in [
            "email",
            "phone",
            "name.given",
            "name.family",
            "postal_address",
            "birth_date",
            "locale",
            "jurisdiction",
            "verification.level",
            "preferences.newsletter",
            "consent.marketing",
            "sharing.acme_ads",
            "external_id.salesforce",
        ] {
            check_path(p, Some(p));
        }
        for bad in [
            "",
            "mail",
            "name",
            "name.middle",
            "consent.",
            "consent.Marketing",
            "preferences.a.b",
            "sharing.acme-ads",
            "verification",
            "EMAIL",
        ] {
            check_path(bad, None);
        }
    }

    #[test]
    fn unknown_field_names_the_catalog() {
        let e = FieldPath::parse("favourite_colour").unwrap_err();
        assert!(e.to_string().contains("consent.<purpose>"), "{e}");
    }

    #[test]
    fn values_parse_by_field_kind() {
        let email = FieldValue::parse(&FieldPath::Email, &json!("Ada@Example.ORG")).unwrap();
        assert_eq!(email.to_json(), json!("ada@example.org"));
        assert!(FieldValue::parse(&FieldPath::Email, &json!(42)).is_err());
        assert!(FieldValue::parse(&FieldPath::Phone, &json!("12345")).is_err());
        let pref = FieldPath::parse("preferences.digest").unwrap();
        assert_eq!(
            FieldValue::parse(&pref, &json!(true)).unwrap(),
            FieldValue::Preference(PreferenceValue::Bool(true))
        );
        assert!(FieldValue::parse(&pref, &json!(1.5)).is_err());
        assert!(FieldValue::parse(&pref, &json!({"a": 1})).is_err());
        let sharing = FieldPath::parse("sharing.acme").unwrap();
        assert!(FieldValue::parse(&sharing, &json!("yes")).is_err());
        let consent = FieldPath::parse("consent.marketing").unwrap();
        assert!(FieldValue::parse(&consent, &json!(true)).is_err());
        let address = json!({"lines": ["1 Main St"], "locality": "Springfield", "country": "US"});
        let v = FieldValue::parse(&FieldPath::PostalAddress, &address).unwrap();
        assert!(v.fits(&FieldPath::PostalAddress));
        assert!(!v.fits(&FieldPath::Email));
    }

    #[test]
    fn stored_form_round_trips_and_digest_is_stable() {
        let v = FieldValue::parse(&FieldPath::Phone, &json!("+44 20 7946 0958")).unwrap();
        let stored = serde_json::to_string(&v).unwrap();
        assert_eq!(stored, r#"{"kind":"phone","value":"+442079460958"}"#);
        let back: FieldValue = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, v);
        assert_eq!(v.fingerprint(), back.fingerprint());
        assert!(v.fingerprint().starts_with("sha256:"));
    }
}
