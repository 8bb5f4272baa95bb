//! Validated values of customer identity data: email, phone, name, address, birth date,
//! jurisdiction, locale, and the vocabulary of consent (legal basis, notice, channel, evidence).
//!
//! "Parse, don't validate": every type has private fields and is built only through `parse` /
//! `new`, which check and normalise; serde goes through the same checks. Holding a value means
//! holding a valid, canonical one, so two spellings of the same email never become two records.

use std::fmt;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::Key;

/// A value that failed validation: `what` names the kind of value ("email", "phone"…), `reason` says why, for humans.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {reason}")]
pub struct ValueError {
    /// The kind of value, e.g. "email".
    pub what: &'static str,
    /// Why it was refused, in words a person filling in a form understands.
    pub reason: String,
}

impl ValueError {
    /// A refusal of a `what` value for `reason`.
    pub fn new(what: &'static str, reason: impl Into<String>) -> Self {
        Self {
            what,
            reason: reason.into(),
        }
    }
}

/// Display, `AsRef<str>`, `FromStr`, `TryFrom<&str | String>`, `From<T> for String` and serde
/// (as a string, deserialised through `parse`) for a type with `parse(&str)` and `as_str()`.
macro_rules! str_conversions {
    // `stored`: how a value already recorded is read back, when input rules have since become
    // stricter than the rules it was accepted under (stored events are never rewritten).
    ($ty:ty, stored = $stored:path) => {
        $crate::values::str_conversions!(@common $ty);
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                $stored(&s).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
    ($ty:ty) => {
        $crate::values::str_conversions!(@common $ty);
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                Self::parse(&s).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
    (@common $ty:ty) => {
        impl ::core::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::core::convert::AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }
        impl ::core::str::FromStr for $ty {
            type Err = $crate::values::ValueError;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl ::core::convert::TryFrom<&str> for $ty {
            type Error = $crate::values::ValueError;
            fn try_from(s: &str) -> ::core::result::Result<Self, Self::Error> {
                Self::parse(s)
            }
        }
        impl ::core::convert::TryFrom<::std::string::String> for $ty {
            type Error = $crate::values::ValueError;
            fn try_from(s: ::std::string::String) -> ::core::result::Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
        impl ::core::convert::From<$ty> for ::std::string::String {
            fn from(v: $ty) -> Self {
                v.as_str().to_owned()
            }
        }
        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use str_conversions;

/// A closed vocabulary serialised as snake_case strings. One table drives `parse`, `as_str`,
/// `ALL` and serde, so the wire names cannot drift from the parser.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident as $what:literal {
            $( $(#[$vmeta:meta])* $variant:ident = $s:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The snake_case wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $s,)+
                }
            }

            /// Parses the snake_case wire name (exact match).
            pub fn parse(s: &str) -> ::core::result::Result<Self, $crate::values::ValueError> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    _ => Err($crate::values::ValueError::new(
                        $what,
                        format!(
                            "{} is not one of: {}",
                            $crate::values::quoted(s),
                            [$($s),+].join(", ")
                        ),
                    )),
                }
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::core::str::FromStr for $name {
            type Err = $crate::values::ValueError;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::core::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(deserializer)?;
                Self::parse(&s).map_err(<D::Error as ::serde::de::Error>::custom)
            }
        }
    };
}
pub(crate) use string_enum;

/// Quotes user input for an error message, cut to 40 characters so a megabyte of garbage does
/// not end up in a log line, with control characters escaped.
pub(crate) fn quoted(s: &str) -> String {
    const MAX: usize = 40;
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(MAX).collect();
    let more = if chars.next().is_some() { "…" } else { "" };
    format!("'{}{more}'", head.escape_debug())
}

/// Quotes one character for an error message; invisible ones are named by code point
/// (`U+0000`), which a person can look up.
pub(crate) fn quoted_char(c: char) -> String {
    if c.is_control()
        || (c.is_whitespace() && c != ' ')
        || is_bidi_control(c)
        || is_invisible_format(c)
    {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("'{c}'")
    }
}

/// Unicode bidirectional embeddings, overrides and isolates: invisible characters that make
/// text display differently from how it compares ("Trojan Source"), so they are refused in
/// identity data. The marks U+200E/U+200F stay allowed; mixed-script names may need them.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Invisible format characters that make look-alike text differ: soft hyphen, the Mongolian
/// vowel separator, the zero-width space, the word joiner and invisible operators, and the
/// byte order mark. The zero-width (non-)joiners U+200C/U+200D stay allowed (Persian and Indic
/// names need them), as do the directional marks (see [`is_bidi_control`]).
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{180E}' | '\u{200B}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}'
    )
}

/// How a text part is checked and normalised.
type TextRule = fn(&'static str, &str, &str, usize) -> Result<String, ValueError>;

/// [`text`], owned: the rules stored values were accepted under.
fn stored_text(
    what: &'static str,
    label: &str,
    raw: &str,
    max: usize,
) -> Result<String, ValueError> {
    text(what, label, raw, max).map(str::to_owned)
}

/// [`text`] for what people read and compare (names, addresses): no invisible formatting
/// characters, and in Unicode Normalization Form C, so the same name typed with composed or
/// decomposed characters is one value (and one hash) and look-alikes cannot hide.
fn visible_text(
    what: &'static str,
    label: &str,
    raw: &str,
    max: usize,
) -> Result<String, ValueError> {
    use unicode_normalization::UnicodeNormalization as _;
    // Normalised before the length check: NFC can lengthen a string (characters excluded from
    // composition decompose), and the stored form must pass the same check when read back.
    let normalised: String = raw.nfc().collect();
    let s = text(what, label, &normalised, max)?;
    if let Some(c) = s.chars().find(|c| is_invisible_format(*c)) {
        return Err(ValueError::new(
            what,
            format!(
                "{label} contains an invisible formatting character ({})",
                quoted_char(c)
            ),
        ));
    }
    Ok(s.to_owned())
}

/// Trims `raw` and checks it is 1..=`max` characters of printable text (no control or
/// bidirectional formatting characters). `label` names the part in the reason ("the id").
pub(crate) fn text<'a>(
    what: &'static str,
    label: &str,
    raw: &'a str,
    max: usize,
) -> Result<&'a str, ValueError> {
    let s = raw.trim();
    if s.is_empty() {
        return Err(ValueError::new(what, format!("{label} must not be empty")));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(ValueError::new(
            what,
            format!("{label} contains a control character ({})", quoted_char(c)),
        ));
    }
    if let Some(c) = s.chars().find(|c| is_bidi_control(*c)) {
        return Err(ValueError::new(
            what,
            format!(
                "{label} contains a bidirectional formatting character ({})",
                quoted_char(c)
            ),
        ));
    }
    if s.chars().count() > max {
        return Err(ValueError::new(
            what,
            format!("{label} is longer than {max} characters"),
        ));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------
// Email

/// An email address in the dot-atom form of RFC 5322 (`local@domain`), normalised to lowercase.
///
/// Local parts are treated case-insensitively, as virtually every provider does: one canonical
/// spelling keeps `Jane@X.com` and `jane@x.com` from becoming two customers. Quoted local parts,
/// IP-literal domains and internationalised (non-ASCII) addresses are not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Email(String);

impl Email {
    /// Trims, lowercases and checks an address; the domain is everything after the last '@'.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_email(raw)
            .map(Self)
            .map_err(|reason| ValueError::new("email", reason))
    }

    /// The whole address, lowercase.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part before the '@'.
    pub fn local_part(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(local, _)| local)
    }

    /// The part after the '@', e.g. `example.com`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

str_conversions!(Email);

/// RFC 5322 `atext` besides letters and digits.
const ATEXT_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

fn parse_email(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("the address must not be empty".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "internationalised addresses are not supported (found {})",
            quoted_char(c)
        ));
    }
    if s.len() > 254 {
        return Err("the address is longer than 254 characters".into());
    }
    let s = s.to_ascii_lowercase();
    let Some((local, domain)) = s.rsplit_once('@') else {
        return Err("missing '@'".into());
    };

    if local.is_empty() {
        return Err("missing the part before '@'".into());
    }
    if local.len() > 64 {
        return Err("the part before '@' is longer than 64 characters".into());
    }
    if local.contains('@') {
        return Err("more than one '@'".into());
    }
    if let Some(c) = local
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '.' || ATEXT_SPECIALS.contains(c)))
    {
        return Err(format!("{} is not allowed before the '@'", quoted_char(c)));
    }
    if local.starts_with('.') || local.ends_with('.') {
        return Err("the part before '@' cannot start or end with '.'".into());
    }
    if local.contains("..") {
        return Err("the part before '@' cannot contain '..'".into());
    }

    check_domain(domain)?;
    Ok(s)
}

fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() {
        return Err("missing the domain after '@'".into());
    }
    if domain.len() > 253 {
        return Err("the domain is longer than 253 characters".into());
    }
    if !domain.contains('.') {
        return Err(format!(
            "the domain {} must have at least two labels, like example.com",
            quoted(domain)
        ));
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err(
                "the domain has an empty label (a leading, trailing or doubled '.')".into(),
            );
        }
        if label.len() > 63 {
            return Err("domain label longer than 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(format!("{} is not allowed in the domain", quoted_char(c)));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "domain label {} cannot start or end with '-'",
                quoted(label)
            ));
        }
    }
    let tld = domain.rsplit_once('.').map_or(domain, |(_, tld)| tld);
    if tld.len() < 2 || !tld.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "the top-level domain {} must be two or more letters",
            quoted(tld)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Phone

/// A phone number in E.164 form: '+' then 8 to 15 digits, the country code first.
///
/// Input may use the international prefix '00' instead of '+', and spaces, dots, dashes and
/// parentheses as separators. A trunk prefix written "(0)" after the country code, as in
/// "+44 (0)20 7946 0958", is dropped: it is not dialled from abroad and would change the number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Checks and normalises a number written with its country code.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_phone(raw)
            .map(Self)
            .map_err(|reason| ValueError::new("phone number", reason))
    }

    /// The E.164 form, e.g. `+442079460958`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(PhoneE164);

fn parse_phone(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("the number must not be empty".into());
    }
    let Some(rest) = s.strip_prefix('+').or_else(|| s.strip_prefix("00")) else {
        return Err(
            "must start with '+' (or '00') and the country code, like +44 20 7946 0958".into(),
        );
    };
    let mut digits = String::new();
    // Where the digits of the open parenthesis group start, if one is open.
    let mut group: Option<usize> = None;
    for c in rest.chars() {
        match c {
            '0'..='9' => digits.push(c),
            ' ' | '.' | '-' => {}
            '(' => {
                if group.is_some() {
                    return Err("nested parentheses".into());
                }
                group = Some(digits.len());
            }
            ')' => {
                let Some(start) = group.take() else {
                    return Err("unbalanced parentheses".into());
                };
                if start > 0 && digits.get(start..) == Some("0") {
                    digits.truncate(start);
                }
            }
            _ => {
                return Err(format!(
                    "{} is not allowed in a phone number; use digits, spaces, '.', '-' and parentheses",
                    quoted_char(c)
                ));
            }
        }
    }
    if group.is_some() {
        return Err("unbalanced parentheses".into());
    }
    if digits.is_empty() {
        return Err("no digits after the '+'".into());
    }
    if digits.starts_with('0') {
        return Err("the country code cannot start with 0".into());
    }
    let n = digits.len();
    if !(8..=15).contains(&n) {
        let size = if n < 8 { "too short" } else { "too long" };
        return Err(format!(
            "{size}: {n} digits; E.164 numbers have 8 to 15 digits including the country code"
        ));
    }
    Ok(format!("+{digits}"))
}

// ---------------------------------------------------------------------------------------------
// Person name

/// A person's name as they write it: any script, trimmed, whitespace runs collapsed to one
/// space, 1 to 200 characters, at least one letter. No splitting into given/family names:
/// that split does not exist in many cultures.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PersonName(String);

impl PersonName {
    /// Collapses whitespace and checks the name.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        Self::checked(raw, visible_text)
    }

    /// A name as recorded: under the rules of its day (before NFC and the refusal of
    /// invisible characters), so that every stored event stays readable.
    fn stored(raw: &str) -> Result<Self, ValueError> {
        Self::checked(raw, stored_text)
    }

    fn checked(raw: &str, clean: TextRule) -> Result<Self, ValueError> {
        const WHAT: &str = "person name";
        let collapsed = raw.split_whitespace().collect::<Vec<_>>().join(" ");
        let name = clean(WHAT, "the name", &collapsed, 200)?;
        if !name.chars().any(char::is_alphabetic) {
            return Err(ValueError::new(WHAT, "must contain at least one letter"));
        }
        Ok(Self(name))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

str_conversions!(PersonName, stored = PersonName::stored);

// ---------------------------------------------------------------------------------------------
// Country, jurisdiction

/// The ISO 3166-1 alpha-2 codes currently assigned (249), sorted for binary search.
const ISO_3166_ALPHA2: [&str; 249] = [
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ",
    "BA", "BB", "BD", "BE", "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS",
    "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD", "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN",
    "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM", "DO", "DZ", "EC", "EE",
    "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM",
    "HN", "HR", "HT", "HU", "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM",
    "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN", "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC",
    "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME", "MF", "MG", "MH", "MK",
    "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG",
    "PH", "PK", "PL", "PM", "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW",
    "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI", "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS",
    "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK", "TL", "TM", "TN", "TO",
    "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "YE", "YT", "ZA", "ZM", "ZW",
];

/// An ISO 3166-1 alpha-2 country code, uppercase, one of the 249 currently assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CountryCode(&'static str);

impl CountryCode {
    /// Uppercases and looks the code up. "UK" and "EU" are refused: they are not assigned
    /// country codes (the United Kingdom is "GB").
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        let fail = |reason: String| ValueError::new("country code", reason);
        let upper = raw.to_ascii_uppercase();
        if upper.len() != 2 || !upper.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(fail(format!(
                "{} must be two letters (ISO 3166-1 alpha-2), like 'DE'",
                quoted(raw)
            )));
        }
        match ISO_3166_ALPHA2.binary_search(&upper.as_str()) {
            Ok(i) => Ok(Self(ISO_3166_ALPHA2[i])),
            Err(_) if upper == "UK" => Err(fail(
                "'UK' is not an ISO 3166-1 alpha-2 country code; the United Kingdom is 'GB'".into(),
            )),
            Err(_) => Err(fail(format!(
                "'{upper}' is not an ISO 3166-1 alpha-2 country code"
            ))),
        }
    }

    /// The two uppercase letters.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

str_conversions!(CountryCode);

/// Where a rule applies: a country ("DE") or an ISO 3166-2 subdivision of one ("US-CA",
/// "GB-SCT", "FR-75C"). The country part is checked against ISO 3166-1; the subdivision part
/// only for shape (1 to 3 letters or digits), as the ISO 3166-2 list changes every year.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jurisdiction {
    code: String,
    country: CountryCode,
}

impl Jurisdiction {
    /// Uppercases and checks a country or subdivision code.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "jurisdiction";
        let upper = raw.to_ascii_uppercase();
        let (country, subdivision) = match upper.split_once('-') {
            Some((country, subdivision)) => (country, Some(subdivision)),
            None => (upper.as_str(), None),
        };
        let country = CountryCode::parse(country).map_err(|e| ValueError::new(WHAT, e.reason))?;
        let Some(subdivision) = subdivision else {
            return Ok(Self::from(country));
        };
        if subdivision.is_empty()
            || subdivision.len() > 3
            || !subdivision.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ValueError::new(
                WHAT,
                format!(
                    "the subdivision {} must be 1 to 3 letters or digits (ISO 3166-2), like 'US-CA'",
                    quoted(subdivision)
                ),
            ));
        }
        Ok(Self {
            code: format!("{country}-{subdivision}"),
            country,
        })
    }

    /// The country the jurisdiction is in.
    pub fn country(&self) -> CountryCode {
        self.country
    }

    /// The subdivision part ("CA" of "US-CA"), if any.
    pub fn subdivision(&self) -> Option<&str> {
        self.code
            .split_once('-')
            .map(|(_, subdivision)| subdivision)
    }

    /// The code, e.g. `US-CA`.
    pub fn as_str(&self) -> &str {
        &self.code
    }
}

str_conversions!(Jurisdiction);

impl From<CountryCode> for Jurisdiction {
    /// The whole country as a jurisdiction.
    fn from(country: CountryCode) -> Self {
        Self {
            code: country.as_str().to_owned(),
            country,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Postal address

/// A postal address in the shape most countries' formats fit: 1 to 4 free lines, a locality,
/// and optional region and postal code. Text is trimmed; empty optional parts become `None`;
/// postal codes are uppercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PostalAddress {
    lines: Vec<String>,
    locality: String,
    region: Option<String>,
    postal_code: Option<String>,
    country: CountryCode,
}

impl PostalAddress {
    /// Checks and normalises every part.
    pub fn new(
        lines: Vec<String>,
        locality: &str,
        region: Option<&str>,
        postal_code: Option<&str>,
        country: CountryCode,
    ) -> Result<Self, ValueError> {
        Self::build(lines, locality, region, postal_code, country, visible_text)
    }

    /// `new` with `clean` for the text parts: [`visible_text`] for input, the rules of their
    /// day for an address already recorded (so every stored event stays readable).
    fn build(
        lines: Vec<String>,
        locality: &str,
        region: Option<&str>,
        postal_code: Option<&str>,
        country: CountryCode,
        clean: TextRule,
    ) -> Result<Self, ValueError> {
        const WHAT: &str = "postal address";
        if lines.is_empty() {
            return Err(ValueError::new(WHAT, "needs at least one address line"));
        }
        if lines.len() > 4 {
            return Err(ValueError::new(
                WHAT,
                format!("has {} address lines; at most 4 are allowed", lines.len()),
            ));
        }
        let lines = lines
            .iter()
            .enumerate()
            .map(|(i, line)| clean(WHAT, &format!("line {}", i + 1), line, 200))
            .collect::<Result<Vec<_>, _>>()?;
        let locality = clean(WHAT, "the locality", locality, 100)?;
        let region = match region.map(str::trim) {
            None | Some("") => None,
            Some(region) => Some(clean(WHAT, "the region", region, 32)?),
        };
        let postal_code = match postal_code.map(str::trim) {
            None | Some("") => None,
            Some(code) => {
                if let Some(c) = code
                    .chars()
                    .find(|&c| !(c.is_ascii_alphanumeric() || c == ' ' || c == '-'))
                {
                    return Err(ValueError::new(
                        WHAT,
                        format!(
                            "the postal code may contain only letters, digits, spaces and '-', not {}",
                            quoted_char(c)
                        ),
                    ));
                }
                if code.len() > 16 {
                    return Err(ValueError::new(
                        WHAT,
                        "the postal code is longer than 16 characters",
                    ));
                }
                Some(code.to_ascii_uppercase())
            }
        };
        Ok(Self {
            lines,
            locality,
            region,
            postal_code,
            country,
        })
    }

    /// The free address lines (street, building, …), 1 to 4.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// City, town or village.
    pub fn locality(&self) -> &str {
        &self.locality
    }

    /// State, province or county, where the country uses one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The postal code, uppercase, where the country uses one.
    pub fn postal_code(&self) -> Option<&str> {
        self.postal_code.as_deref()
    }

    /// The country.
    pub fn country(&self) -> CountryCode {
        self.country
    }
}

impl fmt::Display for PostalAddress {
    /// One line, comma-separated: lines, locality, region, postal code, country.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = self
            .lines
            .iter()
            .map(String::as_str)
            .chain([self.locality.as_str()])
            .chain(self.region.as_deref())
            .chain(self.postal_code.as_deref())
            .chain([self.country.as_str()]);
        for (i, part) in parts.enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(part)?;
        }
        Ok(())
    }
}

/// A postal address's JSON form, before its parts are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAddress {
    lines: Vec<String>,
    locality: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    postal_code: Option<String>,
    country: CountryCode,
}

impl RawAddress {
    fn build(self, clean: TextRule) -> Result<PostalAddress, ValueError> {
        PostalAddress::build(
            self.lines,
            &self.locality,
            self.region.as_deref(),
            self.postal_code.as_deref(),
            self.country,
            clean,
        )
    }
}

impl PostalAddress {
    /// Parses an address as input (its JSON form), under today's rules ([`visible_text`]).
    pub fn from_json(json: &serde_json::Value) -> Result<Self, ValueError> {
        RawAddress::deserialize(json)
            .map_err(|e| ValueError::new("postal address", e.to_string()))?
            .build(visible_text)
    }
}

/// Reads a recorded address under the rules it was accepted under (see `stored_text`).
impl<'de> Deserialize<'de> for PostalAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        RawAddress::deserialize(deserializer)?
            .build(stored_text)
            .map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Birth date

/// A date of birth, 1900-01-01 or later. Whether it is in the future is the caller's check,
/// as only the caller knows "now".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    /// Parses exactly `YYYY-MM-DD`; no other layout, no surrounding whitespace.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "birth date";
        let b = raw.as_bytes();
        let shaped = b.len() == 10
            && b.iter().enumerate().all(|(i, &c)| {
                if i == 4 || i == 7 {
                    c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            });
        let number = |range: std::ops::Range<usize>| raw.get(range)?.parse::<u32>().ok();
        let (true, Some(year), Some(month), Some(day)) =
            (shaped, number(0..4), number(5..7), number(8..10))
        else {
            return Err(ValueError::new(
                WHAT,
                format!(
                    "{} is not a date as YYYY-MM-DD, like 1990-04-23",
                    quoted(raw)
                ),
            ));
        };
        // Four digits always fit.
        let year = i32::try_from(year).unwrap_or(i32::MAX);
        let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
            return Err(ValueError::new(
                WHAT,
                format!("'{raw}' is not a calendar date"),
            ));
        };
        Self::from_date(date)
    }

    /// Checks a date: the year must be 1900 to 9999.
    pub fn from_date(date: NaiveDate) -> Result<Self, ValueError> {
        match date.year() {
            ..1900 => Err(ValueError::new(
                "birth date",
                "the year must be 1900 or later",
            )),
            10_000.. => Err(ValueError::new(
                "birth date",
                "the year must have four digits",
            )),
            _ => Ok(Self(date)),
        }
    }

    /// The date.
    pub fn date(&self) -> NaiveDate {
        self.0
    }

    /// Completed years of age on `on`, or `None` if `on` is before the birth. Someone born on
    /// 29 February turns a year older on 1 March in common years.
    pub fn age_on(&self, on: NaiveDate) -> Option<u32> {
        if on < self.0 {
            return None;
        }
        let birthday_passed = (on.month(), on.day()) >= (self.0.month(), self.0.day());
        let years = on.year() - self.0.year() - i32::from(!birthday_passed);
        u32::try_from(years).ok()
    }
}

impl fmt::Display for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

impl std::str::FromStr for BirthDate {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for BirthDate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BirthDate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------------------------
// Locale

/// A language tag, the BCP 47 subset products use: language, optional script, optional
/// region, optional variants, e.g. `en`, `en-GB`, `zh-Hant-TW`, `es-419`, `sl-rozaj`.
/// Normalised to the canonical case (`pt_br` → `pt-BR`). Extensions and private use are not
/// accepted; no tag is checked against the IANA registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locale(String);

impl Locale {
    /// Checks and recases a tag; '_' is accepted as a separator and written as '-'.
    pub fn parse(raw: &str) -> Result<Self, ValueError> {
        parse_locale(raw)
            .map(Self)
            .map_err(|reason| ValueError::new("locale", reason))
    }

    /// The tag, e.g. `en-GB`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The language subtag, e.g. `en`.
    pub fn language(&self) -> &str {
        self.0
            .split_once('-')
            .map_or(&self.0, |(language, _)| language)
    }
}

str_conversions!(Locale);

fn parse_locale(raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err("the tag must not be empty".into());
    }
    if raw.len() > 64 {
        return Err("the tag is longer than 64 characters".into());
    }
    let mut subtags = raw.split(['-', '_']);
    let language = subtags.next().unwrap_or_default();
    if !(2..=3).contains(&language.len()) || !language.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!(
            "the language {} must be 2 or 3 letters (ISO 639), like 'en'",
            quoted(language)
        ));
    }
    let mut out = language.to_ascii_lowercase();
    // 0: after language, 1: after script, 2: after region, 3: in variants.
    let mut stage = 0;
    let mut variants: Vec<String> = Vec::new();
    for subtag in subtags {
        let alpha = subtag.bytes().all(|b| b.is_ascii_alphabetic());
        let digits = subtag.bytes().all(|b| b.is_ascii_digit());
        let alnum = subtag.bytes().all(|b| b.is_ascii_alphanumeric());
        let len = subtag.len();
        out.push('-');
        if subtag.is_empty() {
            return Err("empty subtag (a leading, trailing or doubled separator)".into());
        } else if len == 1 && alnum {
            return Err(format!(
                "extensions and private-use subtags ({}) are not supported",
                quoted(subtag)
            ));
        } else if stage < 1 && len == 4 && alpha {
            let lower = subtag.to_ascii_lowercase();
            let mut chars = lower.chars();
            out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
            out.extend(chars);
            stage = 1;
        } else if stage < 2 && ((len == 2 && alpha) || (len == 3 && digits)) {
            out.push_str(&subtag.to_ascii_uppercase());
            stage = 2;
        } else if alnum
            && ((5..=8).contains(&len)
                || (len == 4 && subtag.starts_with(|c: char| c.is_ascii_digit())))
        {
            let variant = subtag.to_ascii_lowercase();
            if variants.contains(&variant) {
                return Err(format!("the variant {} is repeated", quoted(&variant)));
            }
            out.push_str(&variant);
            variants.push(variant);
            stage = 3;
        } else {
            return Err(format!(
                "{} is not a valid script (4 letters, right after the language), region \
                 (2 letters or 3 digits) or variant (5 to 8 letters or digits) subtag here",
                quoted(subtag)
            ));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Consent vocabulary

string_enum! {
    /// The six lawful bases of GDPR Art. 6(1) for processing personal data.
    pub enum LegalBasis as "legal basis" {
        /// (a) the data subject has given consent for one or more specific purposes.
        Consent = "consent",
        /// (b) necessary for a contract with the data subject.
        Contract = "contract",
        /// (c) necessary for a legal obligation of the controller.
        LegalObligation = "legal_obligation",
        /// (d) necessary to protect someone's vital interests.
        VitalInterests = "vital_interests",
        /// (e) necessary for a task in the public interest or official authority.
        PublicTask = "public_task",
        /// (f) necessary for the controller's or a third party's legitimate interests.
        LegitimateInterests = "legitimate_interests",
    }
}

string_enum! {
    /// How sure we are of who the customer is: the eIDAS levels of assurance, plus `None`.
    /// Ordered, so "at least substantial" is `level >= VerificationLevel::Substantial`.
    pub enum VerificationLevel as "verification level" {
        /// Not verified.
        None = "none",
        /// eIDAS "low".
        Low = "low",
        /// eIDAS "substantial".
        Substantial = "substantial",
        /// eIDAS "high".
        High = "high",
    }
}

string_enum! {
    /// What makes a transfer of personal data to another country lawful (GDPR Chapter V).
    pub enum TransferBasis as "transfer basis" {
        /// An adequacy decision covers the destination (Art. 45).
        Adequacy = "adequacy",
        /// Standard contractual clauses (Art. 46(2)(c)).
        Scc = "scc",
        /// Binding corporate rules (Art. 47).
        Bcr = "bcr",
        /// A derogation for a specific situation (Art. 49).
        Derogation = "derogation",
    }
}

string_enum! {
    /// Where a consent was collected, which regulators ask when it is challenged.
    pub enum ConsentChannel as "consent channel" {
        /// A web form.
        Web = "web",
        /// A mobile app.
        MobileApp = "mobile_app",
        /// A reply or link in an email.
        Email = "email",
        /// A text message.
        Sms = "sms",
        /// A phone call.
        Phone = "phone",
        /// A signed paper form.
        Paper = "paper",
        /// In person, e.g. at a counter.
        InPerson = "in_person",
        /// A partner or system through the API.
        Api = "api",
        /// A bulk import of consents collected elsewhere.
        Import = "import",
    }
}

/// The exact privacy notice a consent was given against: its id, version and the SHA-256 of
/// the text shown, so "which words did they agree to?" has a provable answer; optionally where
/// the notice is published (the receipt's policy URL).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NoticeRef {
    id: String,
    version: String,
    sha256: String,
    // Absent on notices recorded without one: their stored form stays as it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
}

/// The longest notice URL accepted.
pub const MAX_NOTICE_URL: usize = 2048;

impl NoticeRef {
    /// Checks the parts: id (1..=128) and version (1..=64) of `[A-Za-z0-9._-]`, and 64 hex
    /// digits of SHA-256, lowercased.
    pub fn new(id: &str, version: &str, sha256: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "privacy notice reference";
        let token = |label: &str, s: &str, max: usize| -> Result<String, ValueError> {
            if s.is_empty() {
                return Err(ValueError::new(WHAT, format!("{label} must not be empty")));
            }
            if let Some(c) = s
                .chars()
                .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(ValueError::new(
                    WHAT,
                    format!(
                        "{label} may contain only letters, digits, '.', '_' and '-', not {}",
                        quoted_char(c)
                    ),
                ));
            }
            if s.len() > max {
                return Err(ValueError::new(
                    WHAT,
                    format!("{label} is longer than {max} characters"),
                ));
            }
            Ok(s.to_owned())
        };
        let id = token("the id", id, 128)?;
        let version = token("the version", version, 64)?;
        if let Some(c) = sha256.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(ValueError::new(
                WHAT,
                format!(
                    "the sha256 contains {}, which is not a hex digit",
                    quoted_char(c)
                ),
            ));
        }
        if sha256.len() != 64 {
            return Err(ValueError::new(
                WHAT,
                format!("the sha256 must be 64 hex digits; got {}", sha256.len()),
            ));
        }
        Ok(Self {
            id,
            version,
            sha256: sha256.to_ascii_lowercase(),
            url: None,
        })
    }

    /// The same notice, published at `url`: an absolute `https` (or `http`) URL of at most
    /// [`MAX_NOTICE_URL`] characters, without credentials.
    pub fn with_url(mut self, url: &str) -> Result<Self, ValueError> {
        const WHAT: &str = "privacy notice reference";
        if url.len() > MAX_NOTICE_URL {
            return Err(ValueError::new(
                WHAT,
                format!("the url is longer than {MAX_NOTICE_URL} characters"),
            ));
        }
        let parsed = url::Url::parse(url)
            .map_err(|e| ValueError::new(WHAT, format!("the url is not an absolute URL: {e}")))?;
        if !matches!(parsed.scheme(), "https" | "http") {
            return Err(ValueError::new(
                WHAT,
                "the url must be an https or http URL".to_owned(),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(ValueError::new(
                WHAT,
                "the url must not carry credentials".to_owned(),
            ));
        }
        self.url = Some(parsed.into());
        Ok(self)
    }

    /// The notice's id, e.g. `privacy-policy`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The notice's version, e.g. `2024-06`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// SHA-256 of the notice text, 64 lowercase hex digits.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where the notice is published, when that was recorded.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
}

impl fmt::Display for NoticeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} (sha256:{})", self.id, self.version, self.sha256)
    }
}

impl<'de> Deserialize<'de> for NoticeRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            id: String,
            version: String,
            sha256: String,
            #[serde(default)]
            url: Option<String>,
        }
        let raw = Raw::deserialize(deserializer)?;
        let notice =
            Self::new(&raw.id, &raw.version, &raw.sha256).map_err(serde::de::Error::custom)?;
        match raw.url {
            Some(url) => notice.with_url(&url).map_err(serde::de::Error::custom),
            None => Ok(notice),
        }
    }
}

/// What backs a claim: a kind (`document_check`, `otp`, `signed_form`…) and a reference to it
/// in the system that holds it. The evidence itself is not stored here.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Evidence {
    kind: Key,
    reference: String,
}

impl Evidence {
    /// Trims and checks the reference: 1..=512 characters, no control characters.
    pub fn new(kind: Key, reference: &str) -> Result<Self, ValueError> {
        let reference = text("evidence", "the reference", reference, 512)?.to_owned();
        Ok(Self { kind, reference })
    }

    /// The kind of evidence.
    pub fn kind(&self) -> &Key {
        &self.kind
    }

    /// Where the evidence can be found.
    pub fn reference(&self) -> &str {
        &self.reference
    }
}

impl fmt::Display for Evidence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.reference)
    }
}

impl<'de> Deserialize<'de> for Evidence {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            kind: Key,
            reference: String,
        }
        let raw = Raw::deserialize(deserializer)?;
        Self::new(raw.kind, &raw.reference).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
pub(crate) mod tests {
    use std::fmt;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::*;

    /// Parses `input` and checks the outcome: `Ok(canonical)` or `Err(fragment of the reason)`.
    /// Accepted values must also serialise to the canonical string and back; rejected inputs
    /// must be rejected by serde with the same message.
    #[track_caller]
    pub(crate) fn check<T>(
        parse: impl Fn(&str) -> Result<T, ValueError>,
        input: &str,
        expected: Result<&str, &str>,
    ) where
        T: fmt::Display + fmt::Debug + PartialEq + Serialize + DeserializeOwned,
    {
        let from_json = serde_json::from_value::<T>(serde_json::Value::String(input.to_owned()));
        match (parse(input), expected) {
            (Ok(value), Ok(want)) => {
                assert_eq!(value.to_string(), want, "display of {input:?}");
                assert_eq!(
                    serde_json::to_value(&value).unwrap(),
                    want,
                    "json of {input:?}"
                );
                assert_eq!(from_json.unwrap(), value, "from json of {input:?}");
                assert_eq!(parse(want).unwrap(), value, "re-parse of {want:?}");
            }
            (Err(error), Err(want)) => {
                assert!(
                    error.reason.contains(want),
                    "{input:?}: reason {:?} does not contain {want:?}",
                    error.reason
                );
                let json_error = from_json.unwrap_err().to_string();
                assert!(
                    json_error.contains(&error.to_string()),
                    "{input:?}: serde error {json_error:?} lacks {error}"
                );
            }
            (got, want) => panic!("{input:?}: got {got:?}, expected {want:?}"),
        }
    }

    /// For proptests: never panics, and an accepted value is canonical: its Display re-parses
    /// to itself and it round-trips through JSON.
    pub(crate) fn assert_canonical<T>(parse: impl Fn(&str) -> Result<T, ValueError>, input: &str)
    where
        T: fmt::Display + fmt::Debug + PartialEq + Serialize + DeserializeOwned,
    {
        if let Ok(value) = parse(input) {
            let shown = value.to_string();
            assert_eq!(
                parse(&shown).as_ref(),
                Ok(&value),
                "{input:?} shown as {shown:?}"
            );
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value, "{json}");
        }
    }

    /// JSON round trip of a value built by `new`.
    #[track_caller]
    pub(crate) fn assert_json_round_trip<T>(value: &T)
    where
        T: fmt::Debug + PartialEq + Serialize + DeserializeOwned,
    {
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), value, "{json}");
    }

    /// Asserts deserialising `json` fails with a message containing `want`.
    #[track_caller]
    pub(crate) fn assert_json_rejected<T: fmt::Debug + DeserializeOwned>(json: &str, want: &str) {
        let error = serde_json::from_str::<T>(json).unwrap_err().to_string();
        assert!(
            error.contains(want),
            "{json}: {error:?} does not contain {want:?}"
        );
    }

    /// Any text, control and odd characters included.
    pub(crate) fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<char>(), 0..80).prop_map(String::from_iter),
        ]
    }

    #[test]
    fn value_error_message_names_the_value() {
        let error = Email::parse("nobody").unwrap_err();
        assert_eq!(error.to_string(), "invalid email: missing '@'");
        assert_eq!(error.what, "email");
    }

    #[test]
    fn quoted_truncates_and_escapes() {
        assert_eq!(quoted("ab\n"), "'ab\\n'");
        assert_eq!(quoted(&"x".repeat(100)), format!("'{}…'", "x".repeat(40)));
    }

    #[test]
    fn email() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(Email::parse, input, expected);
        }
        c("jane@example.com", Ok("jane@example.com"));
        c("  Jane.Doe@Example.COM \n", Ok("jane.doe@example.com"));
        c(
            "o'brien+news@mail.example.co.uk",
            Ok("o'brien+news@mail.example.co.uk"),
        );
        c(
            "a!#$%&'*+-/=?^_`{|}~z@x-y.io",
            Ok("a!#$%&'*+-/=?^_`{|}~z@x-y.io"),
        );
        c("1@2.ab", Ok("1@2.ab"));
        c(
            &format!("{}@example.com", "a".repeat(64)),
            Ok(format!("{}@example.com", "a".repeat(64)).as_str()),
        );
        c("", Err("must not be empty"));
        c("   ", Err("must not be empty"));
        c("jane.example.com", Err("missing '@'"));
        c("@example.com", Err("missing the part before '@'"));
        c("jane@", Err("missing the domain after '@'"));
        c("a@b@example.com", Err("more than one '@'"));
        c(
            "jane doe@example.com",
            Err("' ' is not allowed before the '@'"),
        );
        c(
            "\"jane\"@example.com",
            Err("'\"' is not allowed before the '@'"),
        );
        c(".jane@example.com", Err("cannot start or end with '.'"));
        c("jane.@example.com", Err("cannot start or end with '.'"));
        c("ja..ne@example.com", Err("cannot contain '..'"));
        c(
            &format!("{}@example.com", "a".repeat(65)),
            Err("longer than 64 characters"),
        );
        c(
            "jösé@example.com",
            Err("internationalised addresses are not supported"),
        );
        c(
            "jane@exämple.com",
            Err("internationalised addresses are not supported"),
        );
        c("jane@localhost", Err("at least two labels"));
        c("jane@example..com", Err("empty label"));
        c("jane@.example.com", Err("empty label"));
        c("jane@example.com.", Err("empty label"));
        c("jane@exa_mple.com", Err("'_' is not allowed in the domain"));
        c(
            "jane@[192.168.0.1]",
            Err("'[' is not allowed in the domain"),
        );
        c("jane@-example.com", Err("cannot start or end with '-'"));
        c("jane@example-.com", Err("cannot start or end with '-'"));
        c(
            "jane@example.c",
            Err("top-level domain 'c' must be two or more letters"),
        );
        c("jane@example.123", Err("top-level domain '123'"));
        c(
            &format!("jane@{}.com", "a".repeat(64)),
            Err("domain label longer than 63 characters"),
        );
        let long = format!(
            "{}@{}.{}.{}.{}.com",
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
            "e".repeat(10)
        );
        c(&long, Err("longer than 254 characters"));
    }

    #[test]
    fn email_parts() {
        let email = Email::parse("Jane.Doe@Example.com").unwrap();
        assert_eq!(email.local_part(), "jane.doe");
        assert_eq!(email.domain(), "example.com");
        assert_eq!(email.as_str(), "jane.doe@example.com");
    }

    #[test]
    fn phone() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(PhoneE164::parse, input, expected);
        }
        c("+44 20 7946 0958", Ok("+442079460958"));
        c("+1 (415) 555-2671", Ok("+14155552671"));
        c("0044 20 7946 0958", Ok("+442079460958"));
        c("+33.1.23.45.67.89", Ok("+33123456789"));
        c(" +49-30-1234567 ", Ok("+49301234567"));
        c("+44 (0)20 7946 0958", Ok("+442079460958"));
        c("+12345678", Ok("+12345678"));
        c("+123456789012345", Ok("+123456789012345"));
        c(
            "020 7946 0958",
            Err("must start with '+' (or '00') and the country code"),
        );
        c("44 20 7946 0958", Err("must start with '+'"));
        c("", Err("must not be empty"));
        c("+", Err("no digits"));
        c("+ () ", Err("no digits"));
        c("+1234567", Err("too short: 7 digits"));
        c("+1234567890123456", Err("too long: 16 digits"));
        c("+0 20 7946 0958", Err("country code cannot start with 0"));
        c("000 20 7946 0958", Err("country code cannot start with 0"));
        c("+1 (415 555-2671", Err("unbalanced parentheses"));
        c("+1 415) 555-2671", Err("unbalanced parentheses"));
        c("+1 ((415)) 555-2671", Err("nested parentheses"));
        c(
            "+1 800 FLOWERS",
            Err("'F' is not allowed in a phone number"),
        );
        c("+44 20 7946 0958 ext. 12", Err("'e' is not allowed"));
        c("++44 20 7946 0958", Err("'+' is not allowed"));
        c("+44 ２０ 7946 0958", Err("'２' is not allowed"));
    }

    #[test]
    fn person_name() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(PersonName::parse, input, expected);
        }
        c("Jane Doe", Ok("Jane Doe"));
        c("  Jane \t\n  Q.   Doe ", Ok("Jane Q. Doe"));
        c("José Álvarez-Núñez", Ok("José Álvarez-Núñez"));
        c("李小龍", Ok("李小龍"));
        c("Ngũgĩ wa Thiong'o", Ok("Ngũgĩ wa Thiong'o"));
        c("X Æ A-12", Ok("X Æ A-12"));
        c(&"é".repeat(200), Ok("é".repeat(200).as_str()));
        c("", Err("the name must not be empty"));
        c(" \t ", Err("the name must not be empty"));
        c(&"é".repeat(201), Err("longer than 200 characters"));
        c("12345", Err("must contain at least one letter"));
        c("-- .", Err("must contain at least one letter"));
        c("Jane\u{0}Doe", Err("control character (U+0000)"));
        c("Jane\u{7}", Err("control character"));
        c(
            "Jane \u{202e}eoD",
            Err("bidirectional formatting character (U+202E)"),
        );
        c(
            "\u{645}\u{6cc}\u{200c}\u{631}",
            Ok("\u{645}\u{6cc}\u{200c}\u{631}"),
        );
        // Input only (a stored name reads back as it was recorded, see below): composed and
        // decomposed forms are one name (NFC), and invisible characters that make look-alikes
        // are refused — but not the joiners Persian and Indic names need (above).
        let input = |raw: &str| PersonName::parse(raw).map(|n| n.to_string());
        assert_eq!(input("Jose\u{301}").unwrap(), "Jos\u{e9}");
        assert_eq!(input("Zoe\u{308} A\u{30a}se").unwrap(), "Zo\u{eb} \u{c5}se");
        for (raw, code) in [
            ("Ja\u{200b}ne", "U+200B"),
            ("Jane\u{ad}", "U+00AD"),
            ("\u{feff}Jane", "U+FEFF"),
            ("Ja\u{2060}ne", "U+2060"),
        ] {
            let err = input(raw).unwrap_err().to_string();
            assert!(
                err.contains(&format!("invisible formatting character ({code})")),
                "{err}"
            );
        }
    }

    #[test]
    fn names_and_addresses_recorded_under_older_rules_still_read() {
        // Stored events are never rewritten: what was accepted stays readable as it was.
        let stored: PersonName = serde_json::from_str("\"Ja\u{200b}ne\"").unwrap();
        assert_eq!(stored.as_str(), "Ja\u{200b}ne");
        let decomposed: PersonName = serde_json::from_str("\"Jose\u{301}\"").unwrap();
        assert_eq!(decomposed.as_str(), "Jose\u{301}");
        let json = serde_json::json!({"lines": ["1\u{200b} Main St"], "locality": "Springfield", "country": "US"});
        assert!(serde_json::from_value::<PostalAddress>(json.clone()).is_ok());
        let err = PostalAddress::from_json(&json).unwrap_err().to_string();
        assert!(err.contains("invisible formatting character"), "{err}");
        let composed = serde_json::json!({"lines": ["Rue de l'E\u{301}glise"], "locality": "Orle\u{301}ans", "country": "FR"});
        let address = PostalAddress::from_json(&composed).unwrap();
        assert_eq!(
            serde_json::to_value(&address).unwrap()["locality"],
            "Orl\u{e9}ans"
        );
    }

    #[test]
    fn country_code() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(CountryCode::parse, input, expected);
        }
        c("DE", Ok("DE"));
        c("gb", Ok("GB"));
        c("Us", Ok("US"));
        c("AX", Ok("AX"));
        c("ZW", Ok("ZW"));
        c("XX", Err("'XX' is not an ISO 3166-1 alpha-2 country code"));
        c("uk", Err("the United Kingdom is 'GB'"));
        c("EU", Err("'EU' is not an ISO 3166-1 alpha-2 country code"));
        c("", Err("must be two letters"));
        c("DEU", Err("must be two letters"));
        c("D1", Err("must be two letters"));
        c(" DE", Err("must be two letters"));
        c("é", Err("must be two letters"));
    }

    #[test]
    fn country_list_is_sorted_unique_uppercase() {
        assert_eq!(ISO_3166_ALPHA2.len(), 249);
        assert!(ISO_3166_ALPHA2.windows(2).all(|w| w[0] < w[1]));
        assert!(
            ISO_3166_ALPHA2
                .iter()
                .all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        for code in ISO_3166_ALPHA2 {
            assert_eq!(CountryCode::parse(code).unwrap().as_str(), code);
        }
    }

    #[test]
    fn jurisdiction() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(Jurisdiction::parse, input, expected);
        }
        c("DE", Ok("DE"));
        c("us-ca", Ok("US-CA"));
        c("GB-SCT", Ok("GB-SCT"));
        c("fr-75c", Ok("FR-75C"));
        c("CN-1", Ok("CN-1"));
        c(
            "XX-CA",
            Err("'XX' is not an ISO 3166-1 alpha-2 country code"),
        );
        c("USA", Err("must be two letters"));
        c(
            "US-",
            Err("the subdivision '' must be 1 to 3 letters or digits"),
        );
        c("US-CALI", Err("must be 1 to 3 letters or digits"));
        c("US-C_", Err("must be 1 to 3 letters or digits"));
        c("US-CA-X", Err("must be 1 to 3 letters or digits"));
        c("", Err("must be two letters"));

        let j = Jurisdiction::parse("us-ca").unwrap();
        assert_eq!(j.country(), CountryCode::parse("US").unwrap());
        assert_eq!(j.subdivision(), Some("CA"));
        let de = Jurisdiction::from(CountryCode::parse("DE").unwrap());
        assert_eq!(de.as_str(), "DE");
        assert_eq!(de.subdivision(), None);
        assert_eq!(de, Jurisdiction::parse("de").unwrap());
    }

    fn gb() -> CountryCode {
        CountryCode::parse("GB").unwrap()
    }

    fn lines(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn postal_address_normalises() {
        let address = PostalAddress::new(
            lines(&["  10 Downing Street ", "Westminster"]),
            " London ",
            Some("  "),
            Some(" sw1a 2aa "),
            gb(),
        )
        .unwrap();
        assert_eq!(address.lines(), ["10 Downing Street", "Westminster"]);
        assert_eq!(address.locality(), "London");
        assert_eq!(address.region(), None);
        assert_eq!(address.postal_code(), Some("SW1A 2AA"));
        assert_eq!(address.country(), gb());
        assert_eq!(
            address.to_string(),
            "10 Downing Street, Westminster, London, SW1A 2AA, GB"
        );
        assert_json_round_trip(&address);
        assert_eq!(
            serde_json::to_value(&address).unwrap(),
            serde_json::json!({
                "lines": ["10 Downing Street", "Westminster"],
                "locality": "London",
                "region": null,
                "postal_code": "SW1A 2AA",
                "country": "GB",
            })
        );

        let with_region = PostalAddress::new(
            lines(&["1 Infinite Loop"]),
            "Cupertino",
            Some("CA"),
            Some("95014-2083"),
            CountryCode::parse("US").unwrap(),
        )
        .unwrap();
        assert_eq!(with_region.region(), Some("CA"));
        assert_json_round_trip(&with_region);
    }

    #[test]
    fn postal_address_rejects() {
        #[track_caller]
        fn c(
            lines_: &[&str],
            locality: &str,
            region: Option<&str>,
            postal: Option<&str>,
            want: &str,
        ) {
            let error =
                PostalAddress::new(lines(lines_), locality, region, postal, gb()).unwrap_err();
            assert_eq!(error.what, "postal address");
            assert!(
                error.reason.contains(want),
                "{:?} lacks {want:?}",
                error.reason
            );
        }
        c(&[], "London", None, None, "needs at least one address line");
        c(
            &["a", "b", "c", "d", "e"],
            "London",
            None,
            None,
            "has 5 address lines; at most 4",
        );
        c(
            &["a", "  "],
            "London",
            None,
            None,
            "line 2 must not be empty",
        );
        c(
            &[&"x".repeat(201)],
            "London",
            None,
            None,
            "line 1 is longer than 200 characters",
        );
        c(
            &["a\nb"],
            "London",
            None,
            None,
            "line 1 contains a control character",
        );
        c(&["a"], " ", None, None, "the locality must not be empty");
        c(
            &["a"],
            &"x".repeat(101),
            None,
            None,
            "the locality is longer than 100 characters",
        );
        c(
            &["a"],
            "London",
            Some("x".repeat(33).as_str()),
            None,
            "the region is longer than 32",
        );
        c(
            &["a"],
            "London",
            None,
            Some("SW1A_2AA"),
            "only letters, digits, spaces and '-', not '_'",
        );
        c(
            &["a"],
            "London",
            None,
            Some("1".repeat(17).as_str()),
            "postal code is longer than 16",
        );
    }

    #[test]
    fn postal_address_json_is_validated() {
        let ok = r#"{"lines":["1 Main St"],"locality":"Springfield","country":"us"}"#;
        let address: PostalAddress = serde_json::from_str(ok).unwrap();
        assert_eq!(address.country().as_str(), "US");
        assert_eq!(address.postal_code(), None);
        assert_json_rejected::<PostalAddress>(
            r#"{"lines":[],"locality":"Springfield","country":"US"}"#,
            "invalid postal address: needs at least one address line",
        );
        assert_json_rejected::<PostalAddress>(
            r#"{"lines":["1 Main St"],"locality":"Springfield","country":"XX"}"#,
            "invalid country code: 'XX' is not an ISO 3166-1 alpha-2 country code",
        );
        assert_json_rejected::<PostalAddress>(
            r#"{"lines":["1 Main St"],"locality":"Springfield","postcode":"1","country":"US"}"#,
            "unknown field `postcode`",
        );
        assert_json_rejected::<PostalAddress>(
            r#"{"lines":["1 Main St"],"country":"US"}"#,
            "missing field `locality`",
        );
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn birth_date() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(BirthDate::parse, input, expected);
        }
        c("1990-04-23", Ok("1990-04-23"));
        c("1900-01-01", Ok("1900-01-01"));
        c("2000-02-29", Ok("2000-02-29"));
        c("9999-12-31", Ok("9999-12-31"));
        c("1899-12-31", Err("the year must be 1900 or later"));
        c("1900-02-29", Err("'1900-02-29' is not a calendar date"));
        c("2023-02-30", Err("is not a calendar date"));
        c("2023-13-01", Err("is not a calendar date"));
        c("2023-00-10", Err("is not a calendar date"));
        c("1990-4-23", Err("'1990-4-23' is not a date as YYYY-MM-DD"));
        c("23/04/1990", Err("is not a date as YYYY-MM-DD"));
        c(" 1990-04-23", Err("is not a date as YYYY-MM-DD"));
        c("1990-04-23T00:00:00Z", Err("is not a date as YYYY-MM-DD"));
        c("+990-04-23", Err("is not a date as YYYY-MM-DD"));
        c("1990-+4-23", Err("is not a date as YYYY-MM-DD"));
        c("１９９０-04-23", Err("is not a date as YYYY-MM-DD"));
        c("", Err("is not a date as YYYY-MM-DD"));

        assert_eq!(
            BirthDate::from_date(date(1990, 4, 23)).unwrap().date(),
            date(1990, 4, 23)
        );
        assert!(BirthDate::from_date(date(10_000, 1, 1)).is_err());
        assert!(BirthDate::from_date(date(1899, 12, 31)).is_err());
    }

    #[test]
    fn age_on() {
        #[track_caller]
        fn c(birth: &str, on: NaiveDate, want: Option<u32>) {
            assert_eq!(
                BirthDate::parse(birth).unwrap().age_on(on),
                want,
                "{birth} on {on}"
            );
        }
        c("2000-06-15", date(2000, 6, 14), None);
        c("2000-06-15", date(2000, 6, 15), Some(0));
        c("2000-06-15", date(2018, 6, 14), Some(17));
        c("2000-06-15", date(2018, 6, 15), Some(18));
        c("2000-06-15", date(2018, 12, 31), Some(18));
        c("2000-02-29", date(2018, 2, 28), Some(17));
        c("2000-02-29", date(2018, 3, 1), Some(18));
        c("2000-02-29", date(2020, 2, 29), Some(20));
        c("1900-01-01", date(2025, 1, 1), Some(125));
    }

    #[test]
    fn locale() {
        #[track_caller]
        fn c(input: &str, expected: Result<&str, &str>) {
            check(Locale::parse, input, expected);
        }
        c("en", Ok("en"));
        c("EN", Ok("en"));
        c("en-GB", Ok("en-GB"));
        c("en-gb", Ok("en-GB"));
        c("pt_br", Ok("pt-BR"));
        c("zh-Hant-TW", Ok("zh-Hant-TW"));
        c("ZH_hant_tw", Ok("zh-Hant-TW"));
        c("sr-Latn", Ok("sr-Latn"));
        c("es-419", Ok("es-419"));
        c("sl-rozaj", Ok("sl-rozaj"));
        c("sl-IT-nedis", Ok("sl-IT-nedis"));
        c("de-DE-1996", Ok("de-DE-1996"));
        c("ca-ES-VALENCIA", Ok("ca-ES-valencia"));
        c("sl-rozaj-biske-1994", Ok("sl-rozaj-biske-1994"));
        c("fil-PH", Ok("fil-PH"));
        c("", Err("must not be empty"));
        c("e", Err("the language 'e' must be 2 or 3 letters"));
        c("english", Err("must be 2 or 3 letters"));
        c("e1", Err("must be 2 or 3 letters"));
        c("en-", Err("empty subtag"));
        c("en--GB", Err("empty subtag"));
        c("-en", Err("the language '' must be 2 or 3 letters"));
        c("en GB", Err("must be 2 or 3 letters"));
        c("en-GB-Latn", Err("'Latn' is not a valid script"));
        c("en-Latn-Cyrl", Err("'Cyrl' is not a valid script"));
        c("en-GB-US", Err("'US' is not a valid"));
        c("en-GBR", Err("'GBR' is not a valid"));
        c("zh-yue", Err("'yue' is not a valid"));
        c(
            "en-x-private",
            Err("extensions and private-use subtags ('x')"),
        );
        c("en-u-ca-gregory", Err("extensions and private-use subtags"));
        c("de-1996-1996", Err("the variant '1996' is repeated"));
        c("en-abcdefghi", Err("'abcdefghi' is not a valid"));
        c("en-GB.UTF-8", Err("'GB.UTF' is not a valid"));
        c(
            &format!("sl-{}", ["rozaj"; 11].join("-")),
            Err("longer than 64 characters"),
        );

        assert_eq!(Locale::parse("zh-Hant-TW").unwrap().language(), "zh");
        assert_eq!(Locale::parse("fil").unwrap().language(), "fil");
    }

    #[test]
    fn enums() {
        for basis in LegalBasis::ALL {
            check(LegalBasis::parse, basis.as_str(), Ok(basis.as_str()));
        }
        for level in VerificationLevel::ALL {
            check(VerificationLevel::parse, level.as_str(), Ok(level.as_str()));
        }
        for channel in ConsentChannel::ALL {
            check(
                ConsentChannel::parse,
                channel.as_str(),
                Ok(channel.as_str()),
            );
        }
        assert_eq!(LegalBasis::ALL.len(), 6);
        assert_eq!(
            LegalBasis::parse("legitimate_interests").unwrap(),
            LegalBasis::LegitimateInterests
        );
        assert_eq!(
            ConsentChannel::parse("in_person").unwrap(),
            ConsentChannel::InPerson
        );
        check(
            LegalBasis::parse,
            "Consent",
            Err(
                "'Consent' is not one of: consent, contract, legal_obligation, vital_interests, public_task, legitimate_interests",
            ),
        );
        check(
            LegalBasis::parse,
            "legitimate-interests",
            Err("is not one of"),
        );
        check(
            VerificationLevel::parse,
            "medium",
            Err("'medium' is not one of: none, low, substantial, high"),
        );
        check(
            ConsentChannel::parse,
            "",
            Err("'' is not one of: web, mobile_app"),
        );
        assert_eq!(
            LegalBasis::parse("nope").unwrap_err().to_string(),
            "invalid legal basis: 'nope' is not one of: consent, contract, legal_obligation, \
             vital_interests, public_task, legitimate_interests"
        );
    }

    #[test]
    fn verification_levels_are_ordered() {
        use VerificationLevel as L;
        assert!(L::None < L::Low && L::Low < L::Substantial && L::Substantial < L::High);
        assert!(L::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    const SHA: &str = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08";

    #[test]
    fn a_notice_may_name_where_it_is_published() {
        let plain = NoticeRef::new("privacy-policy", "2024-06", SHA).unwrap();
        assert_eq!(plain.url(), None);
        // A notice without a URL keeps the stored form it always had.
        assert!(!serde_json::to_string(&plain).unwrap().contains("url"));

        let published = plain
            .clone()
            .with_url("https://example.com/privacy/2024-06")
            .unwrap();
        assert_eq!(published.url(), Some("https://example.com/privacy/2024-06"));
        assert_json_round_trip(&published);
        let parsed: NoticeRef = serde_json::from_value(serde_json::json!({
            "id": "privacy-policy", "version": "2024-06", "sha256": SHA,
            "url": "https://example.com/privacy/2024-06"
        }))
        .unwrap();
        assert_eq!(parsed, published);

        #[track_caller]
        fn refused(url: &str, want: &str) {
            let notice = NoticeRef::new("privacy-policy", "2024-06", SHA).unwrap();
            let error = notice.with_url(url).unwrap_err();
            assert!(
                error.reason.contains(want),
                "{:?} lacks {want:?}",
                error.reason
            );
        }
        refused("/privacy", "not an absolute URL");
        refused("ftp://example.com/privacy", "https or http");
        refused("javascript:alert(1)", "https or http");
        refused("https://user:pw@example.com/", "credentials");
        refused(
            &format!("https://example.com/{}", "a".repeat(MAX_NOTICE_URL)),
            "longer than 2048",
        );
    }

    #[test]
    fn notice_ref() {
        let notice = NoticeRef::new("privacy-policy", "2024.06_v2", SHA).unwrap();
        assert_eq!(notice.id(), "privacy-policy");
        assert_eq!(notice.version(), "2024.06_v2");
        assert_eq!(notice.sha256(), SHA.to_ascii_lowercase());
        assert_eq!(
            notice.to_string(),
            format!(
                "privacy-policy@2024.06_v2 (sha256:{})",
                SHA.to_ascii_lowercase()
            )
        );
        assert_json_round_trip(&notice);

        #[track_caller]
        fn c(id: &str, version: &str, sha: &str, want: &str) {
            let error = NoticeRef::new(id, version, sha).unwrap_err();
            assert!(
                error.reason.contains(want),
                "{:?} lacks {want:?}",
                error.reason
            );
        }
        c("", "1", SHA, "the id must not be empty");
        c(
            "privacy policy",
            "1",
            SHA,
            "the id may contain only letters, digits, '.', '_' and '-', not ' '",
        );
        c(
            &"p".repeat(129),
            "1",
            SHA,
            "the id is longer than 128 characters",
        );
        c("p", "", SHA, "the version must not be empty");
        c("p", "v/1", SHA, "not '/'");
        c(
            "p",
            &"1".repeat(65),
            SHA,
            "the version is longer than 64 characters",
        );
        c("p", "1", &SHA[1..], "must be 64 hex digits; got 63");
        c(
            "p",
            "1",
            &format!("{SHA}0"),
            "must be 64 hex digits; got 65",
        );
        c(
            "p",
            "1",
            &format!("g{}", &SHA[1..]),
            "'g', which is not a hex digit",
        );

        assert_json_rejected::<NoticeRef>(
            &format!(r#"{{"id":"p","version":"1","sha256":"{}"}}"#, &SHA[2..]),
            "invalid privacy notice reference: the sha256 must be 64 hex digits",
        );
        assert_json_rejected::<NoticeRef>(r#"{"id":"p","version":"1"}"#, "missing field `sha256`");
    }

    #[test]
    fn evidence() {
        let kind = Key::parse("document_check").unwrap();
        let evidence = Evidence::new(kind.clone(), "  idv:case/12345 ").unwrap();
        assert_eq!(evidence.kind(), &kind);
        assert_eq!(evidence.reference(), "idv:case/12345");
        assert_eq!(evidence.to_string(), "document_check:idv:case/12345");
        assert_json_round_trip(&evidence);
        assert_eq!(
            serde_json::to_value(&evidence).unwrap(),
            serde_json::json!({"kind": "document_check", "reference": "idv:case/12345"})
        );

        let error = Evidence::new(kind.clone(), " ").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid evidence: the reference must not be empty"
        );
        assert!(Evidence::new(kind.clone(), &"x".repeat(512)).is_ok());
        assert!(Evidence::new(kind.clone(), &"x".repeat(513)).is_err());
        assert!(Evidence::new(kind, "a\u{1b}[31m").is_err());

        assert_json_rejected::<Evidence>(
            r#"{"kind":"Document","reference":"r"}"#,
            "invalid key: must start with a lowercase letter",
        );
        assert_json_rejected::<Evidence>(
            r#"{"kind":"otp","reference":""}"#,
            "invalid evidence: the reference must not be empty",
        );
    }

    #[test]
    fn json_rejects_invalid_and_wrong_types() {
        assert_json_rejected::<Email>(r#""jane""#, "invalid email: missing '@'");
        assert_json_rejected::<Email>("42", "invalid type: integer");
        assert_json_rejected::<PhoneE164>(
            r#""555-1234""#,
            "invalid phone number: must start with '+'",
        );
        assert_json_rejected::<BirthDate>(r#""1990-02-30""#, "invalid birth date");
        assert_json_rejected::<Locale>(r#""english""#, "invalid locale");
        assert_json_rejected::<LegalBasis>(r#""consented""#, "invalid legal basis");
        assert_json_rejected::<Jurisdiction>(r#""US-""#, "invalid jurisdiction");
    }

    proptest! {
        #[test]
        fn email_never_panics_and_is_canonical(
            s in prop_oneof![
                any_text(),
                "[ ]?[A-Za-z0-9.!#_+@-]{0,12}@[A-Za-z0-9.-]{0,20}[ ]?",
                "[a-z]{1,5}(\\.[a-z]{1,5})?@([a-z0-9-]{1,8}\\.){1,3}[a-zA-Z]{1,4}",
            ]
        ) {
            assert_canonical(Email::parse, &s);
        }

        #[test]
        fn phone_never_panics_and_is_canonical(
            s in prop_oneof![any_text(), "(\\+|00)[0-9 ().-]{0,25}"]
        ) {
            assert_canonical(PhoneE164::parse, &s);
        }

        #[test]
        fn person_name_never_panics_and_is_canonical(s in any_text()) {
            assert_canonical(PersonName::parse, &s);
        }

        #[test]
        fn country_code_never_panics_and_is_canonical(s in prop_oneof![any_text(), "[A-Za-z]{2}"]) {
            assert_canonical(CountryCode::parse, &s);
        }

        #[test]
        fn jurisdiction_never_panics_and_is_canonical(
            s in prop_oneof![any_text(), "[A-Za-z]{2}(-[A-Za-z0-9]{0,4})?"]
        ) {
            assert_canonical(Jurisdiction::parse, &s);
        }

        #[test]
        fn birth_date_never_panics_and_is_canonical(
            s in prop_oneof![any_text(), "[0-9]{4}-[0-9]{2}-[0-9]{2}"]
        ) {
            assert_canonical(BirthDate::parse, &s);
        }

        #[test]
        fn age_is_none_before_birth_and_counts_years(
            birth in "(19[0-9]{2}|20[0-9]{2})-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])",
            years in 0u32..150,
            days in 1u64..400,
        ) {
            let b = BirthDate::parse(&birth).unwrap();
            prop_assert_eq!(b.age_on(b.date() - chrono::Days::new(days)), None);
            let year = b.date().year() + i32::try_from(years).unwrap();
            let birthday = date(year, b.date().month(), b.date().day());
            prop_assert_eq!(b.age_on(birthday), Some(years));
            if years > 0 {
                prop_assert_eq!(b.age_on(birthday - chrono::Days::new(1)), Some(years - 1));
            }
        }

        #[test]
        fn locale_never_panics_and_is_canonical(
            s in prop_oneof![any_text(), "[A-Za-z0-9]{1,8}([-_][A-Za-z0-9]{1,8}){0,4}"]
        ) {
            assert_canonical(Locale::parse, &s);
        }

        #[test]
        fn enums_never_panic_and_are_canonical(s in prop_oneof![any_text(), "[a-z_]{2,20}"]) {
            assert_canonical(LegalBasis::parse, &s);
            assert_canonical(VerificationLevel::parse, &s);
            assert_canonical(ConsentChannel::parse, &s);
        }

        #[test]
        fn postal_address_never_panics(
            line_texts in proptest::collection::vec(any_text(), 0..6),
            locality in any_text(),
            region in proptest::option::of(any_text()),
            postal_code in proptest::option::of(prop_oneof![any_text(), "[A-Za-z0-9 -]{0,18}"]),
        ) {
            if let Ok(address) = PostalAddress::new(
                line_texts,
                &locality,
                region.as_deref(),
                postal_code.as_deref(),
                gb(),
            ) {
                assert_json_round_trip(&address);
            }
        }

        #[test]
        fn notice_ref_and_evidence_never_panic(
            id in prop_oneof![any_text(), "[A-Za-z0-9._-]{0,130}"],
            version in any_text(),
            sha in prop_oneof![any_text(), "[0-9a-fA-F]{62,66}"],
        ) {
            if let Ok(notice) = NoticeRef::new(&id, "1", &sha) {
                assert_json_round_trip(&notice);
            }
            if let Ok(notice) = NoticeRef::new("p", &version, SHA) {
                assert_json_round_trip(&notice);
            }
            if let Ok(evidence) = Evidence::new(Key::parse("otp").unwrap(), &version) {
                assert_json_round_trip(&evidence);
            }
        }
    }
}
