//! Identifiers (customers, sources, keys, purposes, proposals, challenges, events, idempotency
//! keys) and who acted: [`Actor`] and [`OnBehalfOf`].
//!
//! Like the values in [`crate::values`], each is built only through a checking constructor and
//! deserialised through the same checks.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::{Uuid, Variant};

use crate::values::{ValueError, quoted, quoted_char, str_conversions, string_enum, text};

/// Parses the hyphenated form only (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, any case), the
/// one form ids take in URLs, subjects and logs.
fn parse_uuid(what: &'static str, raw: &str) -> Result<Uuid, ValueError> {
    const SHAPE: &str = "a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx";
    if raw.len() != 36 {
        return Err(ValueError::new(
            what,
            format!("expected {SHAPE}; got {} characters", raw.chars().count()),
        ));
    }
    Uuid::try_parse(raw)
        .map_err(|_| ValueError::new(what, format!("{} is not {SHAPE}", quoted(raw))))
}

/// Display (lowercase hyphenated), `FromStr`, `TryFrom<&str | String>` and serde as that string.
macro_rules! uuid_conversions {
    ($ty:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = ValueError;
            fn try_from(s: &str) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl From<$ty> for Uuid {
            fn from(id: $ty) -> Self {
                id.0
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0.hyphenated())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// UUID ids

/// A customer: the stream every identity event belongs to. Always a UUIDv7, so ids sort by
/// creation time and index well.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CustomerId(Uuid);

impl CustomerId {
    /// Parses a hyphenated UUIDv7.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        Self::from_uuid(parse_uuid("customer id", raw)?)
    }

    /// Accepts a UUID if it is version 7 of the RFC 9562 variant.
    pub fn from_uuid(uuid: Uuid) -> Result<Self, ValueError> {
        let version = uuid.get_version_num();
        if version != 7 {
            return Err(ValueError::new(
                "customer id",
                format!("customer ids are UUIDv7; got version {version}"),
            ));
        }
        if uuid.get_variant() != Variant::RFC4122 {
            return Err(ValueError::new(
                "customer id",
                format!(
                    "customer ids are UUIDv7 of the RFC 9562 variant; got the {:?} variant",
                    uuid.get_variant()
                ),
            ));
        }
        Ok(Self(uuid))
    }

    /// A new id from the clock. The domain's `decide` takes ids from its context instead, so
    /// this is for the edges (API, tests, load generator).
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl TryFrom<Uuid> for CustomerId {
    type Error = ValueError;
    fn try_from(uuid: Uuid) -> Result<Self, Self::Error> {
        Self::from_uuid(uuid)
    }
}

uuid_conversions!(CustomerId);

/// An id that may be any UUID: parse, `from_uuid`/`From<Uuid>`, `as_uuid`, serde as a string.
macro_rules! any_uuid_id {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// Parses a hyphenated UUID.
            pub fn parse(raw: &str) -> Result<Self, ValueError> {
                parse_uuid($what, raw).map(Self)
            }

            /// Wraps a UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        uuid_conversions!($name);
    };
}

any_uuid_id! {
    /// A proposed change to a field awaiting its authority or a steward.
    ProposalId, "proposal id"
}

any_uuid_id! {
    /// A guardian or delegate relationship recorded on a customer's record
    /// ([`crate::delegation`]).
    RelationshipId, "relationship id"
}

any_uuid_id! {
    /// A household its members' records name in their `household` field.
    HouseholdId, "household id"
}

any_uuid_id! {
    /// A verification challenge (e.g. a code sent to a new email address).
    ChallengeId, "challenge id"
}

any_uuid_id! {
    /// A recorded event; also the CloudEvents `id` and `Nats-Msg-Id` of its deliveries.
    EventId, "event id"
}

// ---------------------------------------------------------------------------------------------
// Name-like ids

/// Checks `[a-z][a-z0-9<extra>]*` of at most `max` characters, naming what is allowed when not.
fn check_ident(
    what: &'static str,
    raw: &str,
    max: usize,
    extra: &[char],
) -> Result<(), ValueError> {
    let allowed = if extra.is_empty() {
        "lowercase letters a-z, digits and '_'"
    } else {
        "lowercase letters a-z, digits, '_' and '-'"
    };
    let Some(first) = raw.chars().next() else {
        return Err(ValueError::new(what, "must not be empty"));
    };
    if !first.is_ascii_lowercase() {
        return Err(ValueError::new(
            what,
            format!(
                "must start with a lowercase letter a-z, not {}",
                quoted_char(first)
            ),
        ));
    }
    if let Some(c) = raw.chars().find(|&c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || extra.contains(&c))
    }) {
        return Err(ValueError::new(
            what,
            format!("{} is not allowed; use {allowed}", quoted_char(c)),
        ));
    }
    if raw.len() > max {
        return Err(ValueError::new(
            what,
            format!("longer than {max} characters"),
        ));
    }
    Ok(())
}

/// A source system that writes to idledger ("idp", "crm", "web_app", "support-portal"):
/// 1 to 64 characters of `[a-z][a-z0-9_-]*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId(String);

impl SourceId {
    /// Checks a source id; no case folding, so a source has exactly one spelling.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        check_ident("source id", raw, 64, &['-'])?;
        Ok(Self(raw.to_owned()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(SourceId);

/// A name in a closed vocabulary: preference keys, partner ids, external system names,
/// evidence kinds. `[a-z][a-z0-9_]{0,63}`: no '.' or '-', so paths like
/// `preferences.<key>` split unambiguously.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// Checks a key.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        check_ident("key", raw, 64, &[])?;
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(Key);

/// A processing purpose ("marketing", "analytics", "profiling"): the unit consent is given and
/// withdrawn for. Same shape as [`Key`], but its own type so the two cannot be swapped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Purpose(String);

impl Purpose {
    /// Checks a purpose.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        check_ident("purpose", raw, 64, &[])?;
        Ok(Self(raw.to_owned()))
    }

    /// The purpose.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(Purpose);

/// The client's key for a command, so a retry returns the first result instead of acting
/// twice: 1 to 255 visible ASCII characters (no spaces), compared exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "idempotency key";
        if raw.is_empty() {
            return Err(ValueError::new(WHAT, "must not be empty"));
        }
        if let Some(c) = raw.chars().find(|c| !matches!(c, '\x21'..='\x7e')) {
            return Err(ValueError::new(
                WHAT,
                format!(
                    "{} is not allowed; use visible ASCII characters, without spaces",
                    quoted_char(c)
                ),
            ));
        }
        if raw.len() > 255 {
            return Err(ValueError::new(WHAT, "longer than 255 characters"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(IdempotencyKey);

// ---------------------------------------------------------------------------------------------
// Actors

string_enum! {
    /// What kind of party acted.
    pub enum ActorKind as "actor kind" {
        /// The customer the record is about.
        Subject = "subject",
        /// A person working in a source system, e.g. a support agent.
        Agent = "agent",
        /// An automated process of a source system.
        System = "system",
        /// A data steward of idledger resolving an exception.
        Steward = "steward",
    }
}

/// Who performed an action: a kind and the id the source system knows them by
/// (`{"kind":"agent","id":"jane@crm"}`). The id is trimmed, 1 to 256 characters, no control
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Actor {
    kind: ActorKind,
    id: String,
}

impl Actor {
    /// Checks the id.
    pub fn new(kind: ActorKind, id: &str) -> Result<Self, ValueError> {
        let id = text("actor", "the id", id, 256)?.to_owned();
        Ok(Self { kind, id })
    }

    /// The kind of party.
    pub fn kind(&self) -> ActorKind {
        self.kind
    }

    /// The party's id in its source system.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the customer acted for themself.
    pub fn is_subject(&self) -> bool {
        self.kind == ActorKind::Subject
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.id)
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: ActorKind,
            id: String,
        }
        let raw = Raw::deserialize(deserializer)?;
        Self::new(raw.kind, &raw.id).map_err(serde::de::Error::custom)
    }
}

string_enum! {
    /// Why someone may act for the customer.
    pub enum Relationship as "relationship" {
        /// A legal guardian, e.g. a parent of a minor.
        Guardian = "guardian",
        /// Someone the customer authorised, e.g. by power of attorney.
        Delegate = "delegate",
    }
}

/// The authority an actor acted under when it was not the customer's own: the guardian or
/// delegate of the customer, by relationship and id (`{"relationship":"guardian","id":"…"}`).
/// Same id rules as [`Actor`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct OnBehalfOf {
    relationship: Relationship,
    id: String,
}

impl OnBehalfOf {
    /// Checks the id.
    pub fn new(relationship: Relationship, id: &str) -> Result<Self, ValueError> {
        let id = text("on-behalf-of", "the id", id, 256)?.to_owned();
        Ok(Self { relationship, id })
    }

    /// The relationship that allows acting.
    pub fn relationship(&self) -> Relationship {
        self.relationship
    }

    /// The guardian's or delegate's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a guardian acted.
    pub fn is_guardian(&self) -> bool {
        self.relationship == Relationship::Guardian
    }
}

impl fmt::Display for OnBehalfOf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.relationship, self.id)
    }
}

impl<'de> Deserialize<'de> for OnBehalfOf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            relationship: Relationship,
            id: String,
        }
        let raw = Raw::deserialize(deserializer)?;
        Self::new(raw.relationship, &raw.id).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::values::tests::{
        any_text, assert_canonical, assert_json_rejected, assert_json_round_trip, check,
    };

    const V7: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
    const V4: &str = "a8098c1a-f86e-41d4-b4c1-a0f5f5e5e0c4";

    #[test]
    fn customer_id() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(CustomerId::parse, input, expected);
        }
        c(V7, Ok(V7));
        c(&V7.to_ascii_uppercase(), Ok(V7));
        c(V4, Err("customer ids are UUIDv7; got version 4"));
        c("00000000-0000-0000-0000-000000000000", Err("got version 0"));
        c(
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            Err("got version 15"),
        );
        c(
            "01890a5d-ac96-774b-3cce-b302099a8057",
            Err("RFC 9562 variant; got the NCS variant"),
        );
        c(
            "01890a5dac96774bbcceb302099a8057",
            Err("expected a UUID in the form"),
        );
        c(&format!("{{{V7}}}"), Err("got 38 characters"));
        c(&format!("urn:uuid:{V7}"), Err("got 45 characters"));
        c(
            "01890a5d-ac96-774b-bcce-b302099a805g",
            Err("'01890a5d-ac96-774b-bcce-b302099a805g' is not a UUID"),
        );
        c(
            "01890a5d+ac96-774b-bcce-b302099a8057",
            Err("is not a UUID in the form"),
        );
        c("", Err("got 0 characters"));

        let generated = CustomerId::generate();
        assert_eq!(generated.as_uuid().get_version_num(), 7);
        assert_eq!(
            CustomerId::from_uuid(generated.as_uuid()).unwrap(),
            generated
        );
        assert_eq!(
            CustomerId::try_from(generated.as_uuid()).unwrap(),
            generated
        );
        assert_eq!(Uuid::from(generated), generated.as_uuid());
        assert!(CustomerId::from_uuid(Uuid::nil()).is_err());
        assert_eq!(
            CustomerId::parse(V4).unwrap_err().to_string(),
            "invalid customer id: customer ids are UUIDv7; got version 4"
        );
        assert_json_rejected::<CustomerId>(
            &format!("\"{V4}\""),
            "invalid customer id: customer ids are UUIDv7",
        );
    }

    #[test]
    fn any_uuid_ids() {
        check(ProposalId::parse, V4, Ok(V4));
        check(ChallengeId::parse, &V7.to_ascii_uppercase(), Ok(V7));
        check(
            EventId::parse,
            "00000000-0000-0000-0000-000000000000",
            Ok("00000000-0000-0000-0000-000000000000"),
        );
        check(EventId::parse, "not-a-uuid", Err("expected a UUID"));
        let uuid = Uuid::parse_str(V4).unwrap();
        assert_eq!(ProposalId::from(uuid).as_uuid(), uuid);
        assert_eq!(EventId::from_uuid(uuid), EventId::from(uuid));
        assert_eq!(Uuid::from(ChallengeId::from(uuid)), uuid);
        assert_eq!(EventId::parse("x").unwrap_err().what, "event id");
    }

    #[test]
    fn source_id() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(SourceId::parse, input, expected);
        }
        for ok in ["idp", "crm", "web_app", "support-portal", "a", "crm2"] {
            c(ok, Ok(ok));
        }
        let max = format!("s{}", "x".repeat(63));
        c(&max, Ok(&max));
        c("", Err("must not be empty"));
        c(
            &format!("s{}", "x".repeat(64)),
            Err("longer than 64 characters"),
        );
        c(
            "CRM",
            Err("must start with a lowercase letter a-z, not 'C'"),
        );
        c("2crm", Err("must start with a lowercase letter"));
        c("-crm", Err("must start with a lowercase letter"));
        c(
            "web app",
            Err("' ' is not allowed; use lowercase letters a-z, digits, '_' and '-'"),
        );
        c("crm.eu", Err("'.' is not allowed"));
        c("crmé", Err("'é' is not allowed"));
    }

    #[test]
    fn key_and_purpose() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(Key::parse, input, expected);
            check(Purpose::parse, input, expected);
        }
        for ok in [
            "marketing",
            "analytics",
            "profiling",
            "newsletter_frequency",
            "a",
            "x1",
        ] {
            c(ok, Ok(ok));
        }
        let max = format!("k{}", "_".repeat(63));
        c(&max, Ok(&max));
        c(
            &format!("k{}", "_".repeat(64)),
            Err("longer than 64 characters"),
        );
        c("", Err("must not be empty"));
        c("_x", Err("must start with a lowercase letter"));
        c(
            "Marketing",
            Err("must start with a lowercase letter a-z, not 'M'"),
        );
        c(
            "email.verified",
            Err("'.' is not allowed; use lowercase letters a-z, digits and '_'"),
        );
        c("partner-id", Err("'-' is not allowed"));
        assert_eq!(Key::parse("").unwrap_err().what, "key");
        assert_eq!(Purpose::parse("").unwrap_err().what, "purpose");
    }

    #[test]
    fn idempotency_key() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(IdempotencyKey::parse, input, expected);
        }
        c("a", Ok("a"));
        c(
            "req-2024-06-01T12:00:00Z/42",
            Ok("req-2024-06-01T12:00:00Z/42"),
        );
        c("!~", Ok("!~"));
        let max = "k".repeat(255);
        c(&max, Ok(&max));
        c(&"k".repeat(256), Err("longer than 255 characters"));
        c("", Err("must not be empty"));
        c(
            "a b",
            Err("' ' is not allowed; use visible ASCII characters"),
        );
        c("a\tb", Err("U+0009 is not allowed"));
        c("ключ", Err("'к' is not allowed"));
        c("a\u{7f}", Err("U+007F is not allowed"));
    }

    #[test]
    fn actor() {
        let actor = Actor::new(ActorKind::Agent, "  jane@crm ").unwrap();
        assert_eq!(actor.kind(), ActorKind::Agent);
        assert_eq!(actor.id(), "jane@crm");
        assert!(!actor.is_subject());
        assert!(Actor::new(ActorKind::Subject, "c-1").unwrap().is_subject());
        assert_eq!(actor.to_string(), "agent:jane@crm");
        assert_eq!(
            serde_json::to_value(&actor).unwrap(),
            serde_json::json!({"kind": "agent", "id": "jane@crm"})
        );
        assert_json_round_trip(&actor);
        for kind in ActorKind::ALL {
            check(ActorKind::parse, kind.as_str(), Ok(kind.as_str()));
        }

        #[track_caller]
        fn rejected(id: &str, want: &str) {
            let error = Actor::new(ActorKind::System, id).unwrap_err();
            assert_eq!(error.what, "actor");
            assert!(
                error.reason.contains(want),
                "{:?} lacks {want:?}",
                error.reason
            );
        }
        rejected("", "the id must not be empty");
        rejected(" \n ", "the id must not be empty");
        rejected("jane\ncrm", "the id contains a control character (U+000A)");
        rejected(&"x".repeat(257), "the id is longer than 256 characters");
        assert!(Actor::new(ActorKind::System, &"x".repeat(256)).is_ok());

        assert_json_rejected::<Actor>(
            r#"{"kind":"agent","id":"  "}"#,
            "invalid actor: the id must not be empty",
        );
        assert_json_rejected::<Actor>(
            r#"{"kind":"robot","id":"r2"}"#,
            "invalid actor kind: 'robot' is not one of: subject, agent, system, steward",
        );
        assert_json_rejected::<Actor>(r#"{"kind":"agent"}"#, "missing field `id`");
        assert_json_rejected::<Actor>(
            r#"{"kind":"agent","id":"j","role":"x"}"#,
            "unknown field `role`",
        );
        assert_json_rejected::<Actor>(r#""agent:jane""#, "invalid type: string");
    }

    #[test]
    fn on_behalf_of() {
        let guardian = OnBehalfOf::new(Relationship::Guardian, "parent-17").unwrap();
        assert!(guardian.is_guardian());
        assert_eq!(guardian.relationship(), Relationship::Guardian);
        assert_eq!(guardian.id(), "parent-17");
        assert_eq!(guardian.to_string(), "guardian:parent-17");
        let delegate = OnBehalfOf::new(Relationship::Delegate, "poa-9").unwrap();
        assert!(!delegate.is_guardian());
        assert_eq!(
            serde_json::to_value(&delegate).unwrap(),
            serde_json::json!({"relationship": "delegate", "id": "poa-9"})
        );
        assert_json_round_trip(&delegate);
        check(Relationship::parse, "guardian", Ok("guardian"));
        check(
            Relationship::parse,
            "parent",
            Err("'parent' is not one of: guardian, delegate"),
        );
        assert_eq!(
            OnBehalfOf::new(Relationship::Delegate, "")
                .unwrap_err()
                .to_string(),
            "invalid on-behalf-of: the id must not be empty"
        );
        assert_json_rejected::<OnBehalfOf>(
            r#"{"relationship":"guardian","id":"a\u0000b"}"#,
            "invalid on-behalf-of: the id contains a control character (U+0000)",
        );
    }

    proptest! {
        #[test]
        fn uuid_ids_never_panic_and_are_canonical(
            s in prop_oneof![any_text(), "[0-9a-fA-F-]{36}"],
            bits in any::<u128>(),
        ) {
            assert_canonical(CustomerId::parse, &s);
            assert_canonical(ProposalId::parse, &s);
            assert_canonical(ChallengeId::parse, &s);
            assert_canonical(EventId::parse, &s);
            let uuid = Uuid::from_u128(bits);
            let text = uuid.to_string();
            prop_assert_eq!(EventId::parse(&text).unwrap().as_uuid(), uuid);
            let is_v7 = uuid.get_version_num() == 7 && uuid.get_variant() == Variant::RFC4122;
            prop_assert_eq!(CustomerId::parse(&text).is_ok(), is_v7);
        }

        #[test]
        fn name_ids_never_panic_and_are_canonical(
            s in prop_oneof![any_text(), "[a-z][a-z0-9_-]{0,70}", "[ -~]{0,260}"]
        ) {
            assert_canonical(SourceId::parse, &s);
            assert_canonical(Key::parse, &s);
            assert_canonical(Purpose::parse, &s);
            assert_canonical(IdempotencyKey::parse, &s);
            assert_canonical(ActorKind::parse, &s);
            assert_canonical(Relationship::parse, &s);
            // Every key is a valid source id: the looser rule contains the stricter one.
            if Key::parse(&s).is_ok() {
                prop_assert!(SourceId::parse(&s).is_ok());
            }
        }

        #[test]
        fn actors_never_panic_and_round_trip(id in any_text()) {
            if let Ok(actor) = Actor::new(ActorKind::Steward, &id) {
                prop_assert_eq!(actor.id(), id.trim());
                assert_json_round_trip(&actor);
            }
            if let Ok(on_behalf_of) = OnBehalfOf::new(Relationship::Delegate, &id) {
                assert_json_round_trip(&on_behalf_of);
            }
        }
    }
}
