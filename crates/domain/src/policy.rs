//! The authority policy: which system owns each field, what every other writer may do, and
//! the consent rules (maximum age per purpose, age of digital consent per jurisdiction).
//!
//! Loaded from TOML (see `deploy/policy.toml`). Its [`PolicyVersion`] is a hash of the parsed
//! content, recorded on every event so an auditor knows which rules admitted it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::field::{FAMILIES, FieldPath, FieldSelector};
use crate::ids::{Purpose, SourceId};
use crate::lookup::SecondaryRule;
use crate::values::{CountryCode, Jurisdiction, LegalBasis, TransferBasis, VerificationLevel};

/// The policy that ships with the project.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../../deploy/policy.toml");

/// The source id stewards act under; no source system may use it.
pub const STEWARD_SOURCE: &str = "steward";

/// The source id administrators act under (erasure); no source system may use it.
pub const ADMIN_SOURCE: &str = "admin";

/// The source id the retention job acts under (`field_expired`); no source system may use it.
pub const RETENTION_SOURCE: &str = "retention";

/// Source ids a policy may not name: they identify people and jobs acting inside idledger.
pub const RESERVED_SOURCES: [&str; 3] = [STEWARD_SOURCE, ADMIN_SOURCE, RETENTION_SOURCE];

/// What a writer may do to a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    Authoritative,
    Propose,
    FillIfEmpty,
    RequestChange,
    None,
}

impl WriteMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authoritative => "authoritative",
            Self::Propose => "propose",
            Self::FillIfEmpty => "fill_if_empty",
            Self::RequestChange => "request_change",
            Self::None => "none",
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rule for one field or field family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    pub system_of_record: SourceId,
    #[serde(default)]
    pub writers: BTreeMap<SourceId, WriteMode>,
    #[serde(default)]
    pub requires_verification: bool,
    #[serde(default)]
    pub steward_override: bool,
    /// A steward's override of the field (a set, a clear, an accepted proposal) takes effect
    /// only once a second, different steward approves it: for fields that decide who a
    /// customer is. Needs `steward_override`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub four_eyes: bool,
    /// Sources that may read the field without writing it. Every writer (any mode but
    /// `none`) and the system of record read it anyway.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub readers: BTreeSet<SourceId>,
    /// Days a value is kept without changing before the retention job expires it; `None`:
    /// kept. Consents are kept per purpose instead (`[consent_retention_days]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_days: Option<u32>,
}

impl FieldRule {
    pub fn mode_of(&self, source: &SourceId) -> WriteMode {
        if *source == self.system_of_record {
            return WriteMode::Authoritative;
        }
        self.writers.get(source).copied().unwrap_or(WriteMode::None)
    }

    /// Whether `source` decides proposals about the field with its own token: only the system
    /// of record (stewards decide them too, where `steward_override` lets them accept).
    pub fn decides_proposals(&self, source: &SourceId) -> bool {
        *source == self.system_of_record
    }

    /// Whether `source` may read the field: it writes it in some mode, or is a listed reader.
    pub fn readable_by(&self, source: &SourceId) -> bool {
        self.mode_of(source) != WriteMode::None || self.readers.contains(source)
    }
}

/// The TOML document, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyDocument {
    /// The controller consents are given to, as consent receipts name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    controller: Option<String>,
    pending_change_ttl_minutes: u32,
    default_age_of_digital_consent: u8,
    #[serde(default)]
    age_of_digital_consent: BTreeMap<Jurisdiction, u8>,
    #[serde(default)]
    consent_max_age_days: BTreeMap<Purpose, u32>,
    /// Sources that face the data subject (a web app, a consent portal): only they may record
    /// the subject as the actor of a command.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    subject_facing: BTreeSet<SourceId>,
    /// Days a consent record (granted or withdrawn) is kept without being renewed or changed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    consent_retention_days: BTreeMap<Purpose, u32>,
    #[serde(default, skip_serializing_if = "RetentionDocument::keeps_everything")]
    retention: RetentionDocument,
    /// `[purposes.<purpose>]`: what a use for the purpose may rest on and which fields it may
    /// use. Decisions at the moment of use are only made for purposes named here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    purposes: BTreeMap<Purpose, PurposeRule>,
    /// `[tiers.<tier>]`: how fresh a consent and how sure the identity must be for a kind of
    /// action.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tiers: BTreeMap<String, TierRule>,
    /// `[actions]`: action name → tier, so callers may name what they do rather than its tier.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    actions: BTreeMap<String, String>,
    /// `[transfers]`: zones inside which data moves freely, and the bases that make a transfer
    /// out of one lawful.
    #[serde(default, skip_serializing_if = "TransferDocument::is_empty")]
    transfers: TransferDocument,
    /// `[matching]`: the secondary duplicate rule. Absent or empty: off (and a policy without
    /// it keeps the version it had).
    #[serde(default, skip_serializing_if = "MatchingDocument::is_empty")]
    matching: MatchingDocument,
    /// `[relationships]`: which sources may record and end guardian and delegate
    /// relationships (stewards and administrators always may). Absent: none.
    #[serde(default, skip_serializing_if = "RelationshipsDocument::is_empty")]
    relationships: RelationshipsDocument,
    fields: BTreeMap<String, FieldRule>,
}

/// `[relationships]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelationshipsDocument {
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    recorded_by: BTreeSet<SourceId>,
}

impl RelationshipsDocument {
    fn is_empty(&self) -> bool {
        self.recorded_by.is_empty()
    }
}

/// `[matching]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchingDocument {
    /// Fields whose values, all equal once normalised, make two customers a weak duplicate
    /// candidate (`crate::lookup::SecondaryRule`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    secondary: Vec<String>,
}

impl MatchingDocument {
    fn is_empty(&self) -> bool {
        self.secondary.is_empty()
    }
}

/// `[purposes.<purpose>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeRule {
    /// The legal bases a use for the purpose may rest on (the basis recorded with the
    /// customer's `consent.<purpose>` must be one of them).
    pub bases: BTreeSet<LegalBasis>,
    /// The fields the purpose may use (data minimisation): fields, families, `name.*`, `*`.
    pub fields: Vec<FieldSelector>,
    /// The tier every use for the purpose meets at least, whatever the caller names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// The purpose processes special categories of data (GDPR Art. 9); consent receipts say so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
}

impl PurposeRule {
    /// Whether the purpose may use `field`.
    pub fn needs(&self, field: &FieldPath) -> bool {
        self.fields.iter().any(|s| s.matches(field))
    }
}

/// `[tiers.<tier>]`: the bar a kind of action sets. Absent limits do not apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierRule {
    /// A consent given longer ago than this does not count for the tier (consent-based uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_consent_age_days: Option<u32>,
    /// The customer's recorded `verification.level` must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_verification: Option<VerificationLevel>,
}

/// `[transfers]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransferDocument {
    /// Zone name (3 or more of `A-Z0-9_`, so never a country code) → its countries.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    zones: BTreeMap<String, BTreeSet<CountryCode>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rules: Vec<TransferRule>,
}

impl TransferDocument {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a rule side (`*`, a country or a zone) covers `country`.
    fn covers(&self, side: &str, country: CountryCode) -> bool {
        side == "*"
            || side == country.as_str()
            || self.zones.get(side).is_some_and(|z| z.contains(&country))
    }
}

/// `[[transfers.rules]]`: a transfer of data of a subject in `from` to a processor in `to` is
/// lawful on any of `bases`. Sides are `*`, a country code or a zone name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRule {
    pub from: String,
    pub to: String,
    pub bases: BTreeSet<TransferBasis>,
}

/// `[retention]`: how long idledger's own bookkeeping is kept, in days; absent = for ever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionDocument {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    handoffs_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_reports_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    disclosures_days: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decisions_days: Option<u32>,
}

impl RetentionDocument {
    fn keeps_everything(&self) -> bool {
        *self == Self::default()
    }
}

/// `sha256:<hex>` of the canonical form of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyVersion(String);

impl PolicyVersion {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PolicyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("policy is not valid TOML or has unexpected keys: {0}")]
    Syntax(String),
    #[error("policy names '{0}', which is not a catalog field or family")]
    UnknownField(String),
    #[error("policy has no rule for '{0}'; every field and family needs one")]
    MissingRule(String),
    #[error(
        "policy names a reserved source ('{STEWARD_SOURCE}', '{ADMIN_SOURCE}' or '{RETENTION_SOURCE}') for '{0}'; those ids are kept for data stewards, administrators and the retention job"
    )]
    ReservedSource(String),
    #[error(
        "policy gives '{field}' writer '{source_id}' the mode 'authoritative' and also names it system of record"
    )]
    Redundant { field: String, source_id: String },
    #[error("requires_verification is only supported for email and phone, not '{0}'")]
    VerificationNotSupported(String),
    #[error(
        "'{0}' sets four_eyes without steward_override: there is no steward override to approve"
    )]
    FourEyesWithoutOverride(String),
    #[error("pending_change_ttl_minutes must be at least 1")]
    ZeroTtl,
    #[error("retention for '{0}' must be at least 1 day (leave it out to keep for ever)")]
    ZeroRetention(String),
    #[error(
        "'{0}' sets retain_days, but consents are kept per purpose: use [consent_retention_days]"
    )]
    ConsentRetainDays(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Matching(String),
}

/// A validated authority policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    doc: PolicyDocument,
    /// One rule per catalog slot (see [`slot`]), resolved once so lookups are total.
    rules: Vec<FieldRule>,
    /// Rules for single keyed fields (`consent.marketing`) that override their family's.
    keyed: BTreeMap<FieldPath, FieldRule>,
    secondary: SecondaryRule,
    version: PolicyVersion,
}

/// The policy key and rule slot of every fixed field and family, in [`slot`] order.
const SLOTS: [&str; 14] = [
    "email",
    "phone",
    "name.given",
    "name.family",
    "postal_address",
    "birth_date",
    "locale",
    "jurisdiction",
    "verification.level",
    "preferences.*",
    "consent.*",
    "sharing.*",
    "external_id.*",
    "household",
];

fn slot(field: &FieldPath) -> usize {
    match field {
        FieldPath::Email => 0,
        FieldPath::Phone => 1,
        FieldPath::NameGiven => 2,
        FieldPath::NameFamily => 3,
        FieldPath::PostalAddress => 4,
        FieldPath::BirthDate => 5,
        FieldPath::Locale => 6,
        FieldPath::Jurisdiction => 7,
        FieldPath::VerificationLevel => 8,
        FieldPath::Preference(_) => 9,
        FieldPath::Consent(_) => 10,
        FieldPath::Sharing(_) => 11,
        FieldPath::ExternalId(_) => 12,
        FieldPath::Household => 13,
    }
}

impl Policy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let doc: PolicyDocument =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        if doc.pending_change_ttl_minutes == 0 {
            return Err(PolicyError::ZeroTtl);
        }
        let mut keyed = BTreeMap::new();
        for (name, rule) in &doc.fields {
            let is_family = FAMILIES.contains(&name.as_str());
            let path = FieldPath::parse(name).ok();
            if !is_family && path.is_none() {
                return Err(PolicyError::UnknownField(name.clone()));
            }
            if let Some(p) = path.as_ref().filter(|p| p.family().is_some()) {
                keyed.insert(p.clone(), rule.clone());
            }
            let sources = std::iter::once(&rule.system_of_record)
                .chain(rule.writers.keys())
                .chain(&rule.readers);
            if sources
                .clone()
                .any(|s| RESERVED_SOURCES.contains(&s.as_str()))
            {
                return Err(PolicyError::ReservedSource(name.clone()));
            }
            if rule.writers.contains_key(&rule.system_of_record) {
                return Err(PolicyError::Redundant {
                    field: name.clone(),
                    source_id: rule.system_of_record.to_string(),
                });
            }
            if rule.retain_days.is_some()
                && (name == "consent.*" || matches!(path, Some(FieldPath::Consent(_))))
            {
                return Err(PolicyError::ConsentRetainDays(name.clone()));
            }
            if rule.retain_days == Some(0) {
                return Err(PolicyError::ZeroRetention(name.clone()));
            }
            if rule.four_eyes && !rule.steward_override {
                return Err(PolicyError::FourEyesWithoutOverride(name.clone()));
            }
            let verifiable = matches!(path, Some(FieldPath::Email | FieldPath::Phone));
            if rule.requires_verification && !verifiable {
                return Err(PolicyError::VerificationNotSupported(name.clone()));
            }
        }
        if doc
            .subject_facing
            .iter()
            .any(|s| RESERVED_SOURCES.contains(&s.as_str()))
        {
            return Err(PolicyError::ReservedSource("subject_facing".to_owned()));
        }
        // Stewards and administrators record relationships anyway; naming them is a mistake.
        if doc
            .relationships
            .recorded_by
            .iter()
            .any(|s| RESERVED_SOURCES.contains(&s.as_str()))
        {
            return Err(PolicyError::ReservedSource(
                "relationships.recorded_by".to_owned(),
            ));
        }
        let r = &doc.retention;
        let zero = doc
            .consent_retention_days
            .iter()
            .map(|(purpose, days)| (format!("consent_retention_days.{purpose}"), Some(*days)))
            .chain([
                ("retention.handoffs_days".to_owned(), r.handoffs_days),
                ("retention.idempotency_days".to_owned(), r.idempotency_days),
                ("retention.run_reports_days".to_owned(), r.run_reports_days),
                ("retention.disclosures_days".to_owned(), r.disclosures_days),
                ("retention.decisions_days".to_owned(), r.decisions_days),
            ])
            .find(|(_, days)| *days == Some(0));
        if let Some((name, _)) = zero {
            return Err(PolicyError::ZeroRetention(name));
        }
        check_usage(&doc)?;
        let secondary =
            SecondaryRule::parse(&doc.matching.secondary).map_err(PolicyError::Matching)?;
        let rules = SLOTS
            .iter()
            .map(|name| {
                doc.fields
                    .get(*name)
                    .cloned()
                    .ok_or_else(|| PolicyError::MissingRule((*name).to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Canonical JSON of the parsed document: formatting and key order do not change the
        // version, any rule does. BTreeMaps make the serialisation deterministic.
        let canonical = serde_json::to_vec(&doc).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        let version = PolicyVersion(format!("sha256:{}", hex::encode(Sha256::digest(canonical))));
        Ok(Self {
            doc,
            rules,
            keyed,
            secondary,
            version,
        })
    }

    /// The policy that ships in `deploy/policy.toml`.
    pub fn default_policy() -> Result<Self, PolicyError> {
        Self::from_toml(DEFAULT_POLICY_TOML)
    }

    pub fn version(&self) -> &PolicyVersion {
        &self.version
    }

    /// The secondary duplicate rule (`[matching] secondary`; off when empty).
    pub fn secondary_rule(&self) -> &SecondaryRule {
        &self.secondary
    }

    /// The rule governing `field`: its own entry, else (for keyed fields) its family's.
    pub fn rule(&self, field: &FieldPath) -> &FieldRule {
        self.keyed.get(field).unwrap_or(&self.rules[slot(field)])
    }

    pub fn mode(&self, field: &FieldPath, source: &SourceId) -> WriteMode {
        self.rule(field).mode_of(source)
    }

    /// Whether `source` may read `field` (see [`FieldRule::readable_by`]).
    pub fn readable(&self, field: &FieldPath, source: &SourceId) -> bool {
        self.rule(field).readable_by(source)
    }

    /// Whether `source` faces the data subject, so may name them as a command's actor.
    pub fn subject_facing(&self, source: &SourceId) -> bool {
        self.doc.subject_facing.contains(source)
    }

    pub fn pending_change_ttl(&self) -> chrono::Duration {
        chrono::Duration::minutes(i64::from(self.doc.pending_change_ttl_minutes))
    }

    /// How long a consent for `purpose` counts after it was granted; `None` = no limit.
    pub fn consent_max_age(&self, purpose: &Purpose) -> Option<chrono::Duration> {
        self.doc
            .consent_max_age_days
            .get(purpose)
            .map(|days| chrono::Duration::days(i64::from(*days)))
    }

    /// How long a value of `field` (or, for `consent.<purpose>`, the consent record) is kept
    /// without changing before the retention job expires it; `None` = kept.
    pub fn retention_of(&self, field: &FieldPath) -> Option<chrono::Duration> {
        days(match field {
            FieldPath::Consent(purpose) => self.doc.consent_retention_days.get(purpose).copied(),
            other => self.rule(other).retain_days,
        })
    }

    /// How long the handoff log is kept; `None` = for ever.
    pub fn handoff_retention(&self) -> Option<chrono::Duration> {
        days(self.doc.retention.handoffs_days)
    }

    /// How long idempotency records (a command's first result, for retries) are kept.
    pub fn idempotency_retention(&self) -> Option<chrono::Duration> {
        days(self.doc.retention.idempotency_days)
    }

    /// How long the disclosure log (which source read which fields of whom) is kept.
    pub fn disclosure_retention(&self) -> Option<chrono::Duration> {
        days(self.doc.retention.disclosures_days)
    }

    /// How long the decision log is kept; `None` = for ever.
    pub fn decision_retention(&self) -> Option<chrono::Duration> {
        days(self.doc.retention.decisions_days)
    }

    /// How long reconciliation runs, their reports and findings are kept.
    pub fn run_report_retention(&self) -> Option<chrono::Duration> {
        days(self.doc.retention.run_reports_days)
    }

    /// Age of digital consent in `jurisdiction`: its subdivision's entry, else its country's,
    /// else the default.
    /// The rule of `purpose` for decisions at the moment of use; `None`: not a purpose the
    /// policy decides uses for.
    pub fn purpose_rule(&self, purpose: &Purpose) -> Option<&PurposeRule> {
        self.doc.purposes.get(purpose)
    }

    /// The controller consents are given to, as consent receipts name it.
    pub fn controller(&self) -> Option<&str> {
        self.doc.controller.as_deref()
    }

    /// The purposes decisions can be asked for.
    pub fn decision_purposes(&self) -> impl Iterator<Item = &Purpose> {
        self.doc.purposes.keys()
    }

    /// The tier named `name`, or the tier of the action `name`; `None`: neither.
    pub fn tier(&self, name: &str) -> Option<(&str, &TierRule)> {
        self.doc
            .tiers
            .get_key_value(name)
            .map(|(n, r)| (n.as_str(), r))
    }

    /// The tier the action `action` belongs to.
    pub fn tier_of_action(&self, action: &str) -> Option<(&str, &TierRule)> {
        self.doc
            .actions
            .get(action)
            .and_then(|tier| self.tier(tier))
    }

    /// The bases on which data of a subject in `subject` may go to a processor in
    /// `processor`: `None` when no transfer is involved (the same country, or one zone holds
    /// both); otherwise those of every matching rule (empty: no lawful transfer).
    pub fn transfer_bases(
        &self,
        subject: CountryCode,
        processor: CountryCode,
    ) -> Option<BTreeSet<TransferBasis>> {
        let t = &self.doc.transfers;
        let same_zone = t
            .zones
            .values()
            .any(|z| z.contains(&subject) && z.contains(&processor));
        if subject == processor || same_zone {
            return None;
        }
        Some(
            t.rules
                .iter()
                .filter(|r| t.covers(&r.from, subject) && t.covers(&r.to, processor))
                .flat_map(|r| r.bases.iter().copied())
                .collect(),
        )
    }

    /// Whether `source` may record and end guardian and delegate relationships
    /// (`[relationships] recorded_by`).
    pub fn records_relationships(&self, source: &SourceId) -> bool {
        self.doc.relationships.recorded_by.contains(source)
    }

    /// The age of digital consent where no jurisdiction is known.
    pub fn default_age_of_digital_consent(&self) -> u8 {
        self.doc.default_age_of_digital_consent
    }

    pub fn age_of_digital_consent(&self, jurisdiction: &Jurisdiction) -> u8 {
        let table = &self.doc.age_of_digital_consent;
        if let Some(age) = table.get(jurisdiction) {
            return *age;
        }
        table
            .iter()
            .find(|(j, _)| j.subdivision().is_none() && j.country() == jurisdiction.country())
            .map(|(_, age)| *age)
            .unwrap_or(self.doc.default_age_of_digital_consent)
    }
}

/// Checks `[purposes]`, `[tiers]`, `[actions]` and `[transfers]` against each other.
fn check_usage(doc: &PolicyDocument) -> Result<(), PolicyError> {
    let bad = |m: String| Err(PolicyError::Usage(m));
    if doc.controller.as_deref().is_some_and(|c| {
        c.trim().is_empty() || c.chars().count() > 200 || c.chars().any(char::is_control)
    }) {
        return bad(
            "controller is 1 to 200 characters, none of them control characters".to_owned(),
        );
    }
    let is_name = |n: &str| {
        (1..=32).contains(&n.len())
            && n.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    for name in doc.tiers.keys().chain(doc.actions.keys()) {
        if !is_name(name) {
            return bad(format!(
                "tier and action names are 1 to 32 of a-z, 0-9 and _; '{}' is not",
                name.chars().take(40).collect::<String>()
            ));
        }
    }
    for (tier, rule) in &doc.tiers {
        if rule.max_consent_age_days == Some(0) {
            return bad(format!(
                "tiers.{tier}.max_consent_age_days must be at least 1 (leave it out for no limit)"
            ));
        }
    }
    for (action, tier) in &doc.actions {
        if !doc.tiers.contains_key(tier) {
            return bad(format!(
                "actions.{action} names the tier '{tier}', which [tiers] does not define"
            ));
        }
    }
    for (purpose, rule) in &doc.purposes {
        if rule.bases.is_empty() || rule.fields.is_empty() {
            return bad(format!(
                "purposes.{purpose} needs at least one basis and one field"
            ));
        }
        if let Some(tier) = rule.tier.as_ref().filter(|t| !doc.tiers.contains_key(*t)) {
            return bad(format!(
                "purposes.{purpose}.tier is '{tier}', which [tiers] does not define"
            ));
        }
    }
    let t = &doc.transfers;
    for (zone, countries) in &t.zones {
        let shaped = zone.len() >= 3
            && zone.len() <= 32
            && zone
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !shaped || countries.is_empty() {
            return bad(format!(
                "transfers.zones: a zone is named by 3 to 32 of A-Z, 0-9 and _ and lists at least one country; '{}' is not",
                zone.chars().take(40).collect::<String>()
            ));
        }
    }
    for rule in &t.rules {
        for side in [&rule.from, &rule.to] {
            let known = side == "*"
                || t.zones.contains_key(side)
                || (side.len() == 2 && CountryCode::parse(side).is_ok_and(|c| c.as_str() == side));
            if !known {
                return bad(format!(
                    "transfers.rules: '{}' is not '*', an uppercase country code or a zone of [transfers.zones]",
                    side.chars().take(40).collect::<String>()
                ));
            }
        }
        if rule.bases.is_empty() {
            return bad("transfers.rules: every rule needs at least one basis".to_owned());
        }
    }
    Ok(())
}

fn days(days: Option<u32>) -> Option<chrono::Duration> {
    days.map(|d| chrono::Duration::days(i64::from(d)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn src(s: &str) -> SourceId {
        SourceId::parse(s).unwrap()
    }

    #[test]
    fn default_policy_loads_and_answers() {
        let p = Policy::default_policy().unwrap();
        assert!(p.version().as_str().starts_with("sha256:"));
        assert_eq!(
            p.mode(&FieldPath::Email, &src("idp")),
            WriteMode::Authoritative
        );
        assert_eq!(p.mode(&FieldPath::Email, &src("crm")), WriteMode::Propose);
        assert_eq!(
            p.mode(&FieldPath::Email, &src("web_app")),
            WriteMode::RequestChange
        );
        assert_eq!(p.mode(&FieldPath::Email, &src("nobody")), WriteMode::None);
        let consent = FieldPath::parse("consent.marketing").unwrap();
        assert_eq!(
            p.mode(&consent, &src("consent_portal")),
            WriteMode::Authoritative
        );
        assert!(p.rule(&FieldPath::Email).requires_verification);
        assert_eq!(p.pending_change_ttl(), chrono::Duration::hours(24));
        let marketing = Purpose::parse("marketing").unwrap();
        assert_eq!(
            p.consent_max_age(&marketing),
            Some(chrono::Duration::days(730))
        );
        assert_eq!(p.consent_max_age(&Purpose::parse("billing").unwrap()), None);
    }

    #[test]
    fn age_of_digital_consent_prefers_the_most_specific_entry() {
        let text = DEFAULT_POLICY_TOML.replace(
            "[age_of_digital_consent]\n",
            "[age_of_digital_consent]\n\"US-CA\" = 16\n",
        );
        let p = Policy::from_toml(&text).unwrap();
        let j = |s: &str| Jurisdiction::parse(s).unwrap();
        assert_eq!(p.age_of_digital_consent(&j("US-CA")), 16);
        assert_eq!(p.age_of_digital_consent(&j("US-NY")), 13);
        assert_eq!(p.age_of_digital_consent(&j("DE")), 16);
        assert_eq!(p.age_of_digital_consent(&j("FR-75C")), 15);
        assert_eq!(p.age_of_digital_consent(&j("JP")), 16);
        assert_ne!(p.version(), Policy::default_policy().unwrap().version());
    }

    #[test]
    fn a_keyed_rule_overrides_its_family() {
        let text = format!(
            "{DEFAULT_POLICY_TOML}\n[fields.\"consent.terms\"]\nsystem_of_record = \"web_app\"\n"
        );
        let p = Policy::from_toml(&text).unwrap();
        let terms = FieldPath::parse("consent.terms").unwrap();
        let marketing = FieldPath::parse("consent.marketing").unwrap();
        assert_eq!(p.mode(&terms, &src("web_app")), WriteMode::Authoritative);
        assert_eq!(p.mode(&terms, &src("consent_portal")), WriteMode::None);
        assert_eq!(
            p.mode(&marketing, &src("consent_portal")),
            WriteMode::Authoritative
        );
    }

    #[test]
    fn version_ignores_formatting_but_not_rules() {
        let base = Policy::default_policy().unwrap();
        let reformatted = format!("# a comment\n\n{DEFAULT_POLICY_TOML}\n\n");
        assert_eq!(
            Policy::from_toml(&reformatted).unwrap().version(),
            base.version()
        );
        let changed = DEFAULT_POLICY_TOML.replace("crm = \"propose\", cdp = \"propose\" }", "}");
        assert_ne!(
            Policy::from_toml(&changed).unwrap().version(),
            base.version()
        );
    }

    #[track_caller]
    fn refused(text: &str, needle: &str) {
        let err = Policy::from_toml(text).unwrap_err().to_string();
        assert!(err.contains(needle), "expected '{needle}' in: {err}");
    }

    #[test]
    fn bad_policies_are_refused_with_reasons() {
        refused("this is not toml", "not valid TOML");
        refused(
            &DEFAULT_POLICY_TOML.replace("[fields.locale]", "[fields.favourite_colour]"),
            "favourite_colour",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace("[fields.\"sharing.*\"]", "[fields.\"sharing.acme\"]"),
            "no rule for 'sharing.*'",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace("cdp = \"propose\" }", "steward = \"propose\" }"),
            "reserved",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace("cdp = \"propose\" }", "admin = \"propose\" }"),
            "reserved",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "pending_change_ttl_minutes = 1440",
                "pending_change_ttl_minutes = 0",
            ),
            "at least 1",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "crm = \"propose\", cdp = \"propose\" }",
                "crm = \"sometimes\" }",
            ),
            "sometimes",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "[fields.locale]\nsystem_of_record = \"web_app\"",
                "[fields.locale]\nsystem_of_record = \"web_app\"\nrequires_verification = true",
            ),
            "only supported for email and phone",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace("US = 13", "US = 13\nZZ = 3"),
            "ZZ",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "readers = [\"web_app\", \"support_portal\"]",
                "readers = [\"steward\"]",
            ),
            "reserved",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "subject_facing = [\"web_app\", \"consent_portal\"]",
                "subject_facing = [\"admin\"]",
            ),
            "reserved",
        );
    }

    #[test]
    fn retention_is_optional_and_checked() {
        let base = Policy::default_policy().unwrap();
        assert_eq!(base.retention_of(&FieldPath::Email), None);
        assert_eq!(base.handoff_retention(), None);
        let text = DEFAULT_POLICY_TOML
            .replace(
                "[fields.\"preferences.*\"]\n",
                "[fields.\"preferences.*\"]\nretain_days = 730\n",
            )
            .replace(
                "[consent_max_age_days]",
                "[consent_retention_days]\nmarketing = 1095\n\n[retention]\nhandoffs_days = 365\nidempotency_days = 30\nrun_reports_days = 90\n\n[consent_max_age_days]",
            );
        let p = Policy::from_toml(&text).unwrap();
        let pref = FieldPath::parse("preferences.newsletter").unwrap();
        assert_eq!(p.retention_of(&pref), Some(chrono::Duration::days(730)));
        assert_eq!(p.retention_of(&FieldPath::Email), None);
        let marketing = FieldPath::parse("consent.marketing").unwrap();
        let billing = FieldPath::parse("consent.billing").unwrap();
        assert_eq!(
            p.retention_of(&marketing),
            Some(chrono::Duration::days(1095))
        );
        assert_eq!(p.retention_of(&billing), None);
        assert_eq!(p.handoff_retention(), Some(chrono::Duration::days(365)));
        assert_eq!(p.idempotency_retention(), Some(chrono::Duration::days(30)));
        assert_eq!(p.run_report_retention(), Some(chrono::Duration::days(90)));
        assert_ne!(p.version(), base.version());
        // A policy without retention keeps its version: empty members are not serialised.
        let with_empty = DEFAULT_POLICY_TOML.replace(
            "[consent_max_age_days]",
            "[consent_retention_days]\n\n[retention]\n\n[consent_max_age_days]",
        );
        assert_eq!(
            Policy::from_toml(&with_empty).unwrap().version(),
            base.version()
        );
        refused(
            &text.replace("retain_days = 730", "retain_days = 0"),
            "'preferences.*' must be at least 1 day",
        );
        refused(
            &text.replace("marketing = 1095", "marketing = 0"),
            "consent_retention_days.marketing",
        );
        refused(
            &text.replace("handoffs_days = 365", "handoffs_days = 0"),
            "retention.handoffs_days",
        );
        refused(
            &text.replace("idempotency_days = 30", "idempotency_days = 0"),
            "retention.idempotency_days",
        );
        refused(
            &text.replace("run_reports_days = 90", "run_reports_days = 0"),
            "retention.run_reports_days",
        );
        refused(
            &text.replace("run_reports_days = 90", "reports_days = 90"),
            "reports_days",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "[fields.\"consent.*\"]\n",
                "[fields.\"consent.*\"]\nretain_days = 10\n",
            ),
            "[consent_retention_days]",
        );
        refused(
            &DEFAULT_POLICY_TOML.replace(
                "cdp = \"propose\" }\n\n[fields.phone]",
                "retention = \"propose\" }\n\n[fields.phone]",
            ),
            "reserved",
        );
    }

    #[test]
    fn readers_and_subject_facing_sources_come_from_the_policy() {
        let p = Policy::default_policy().unwrap();
        let level = FieldPath::VerificationLevel;
        // The system of record and a listed reader read; a writer in any mode reads.
        assert!(p.readable(&level, &src("idp")));
        assert!(p.readable(&level, &src("support_portal")));
        assert!(!p.readable(&level, &src("crm")));
        assert!(p.readable(&FieldPath::Email, &src("crm")));
        assert!(p.readable(&FieldPath::Locale, &src("cdp")));
        assert!(!p.readable(&FieldPath::BirthDate, &src("web_app")));
        assert!(p.subject_facing(&src("web_app")));
        assert!(!p.subject_facing(&src("crm")));
        // A policy without the new keys keeps its version: empty sets are not serialised.
        let without = DEFAULT_POLICY_TOML
            .replace("subject_facing = [\"web_app\", \"consent_portal\"]", "")
            .replace("readers = [\"web_app\", \"support_portal\"]", "");
        let with_empty = without.replace(
            "pending_change_ttl_minutes = 1440",
            "pending_change_ttl_minutes = 1440\nsubject_facing = []",
        );
        assert_eq!(
            Policy::from_toml(&without).unwrap().version(),
            Policy::from_toml(&with_empty).unwrap().version()
        );
    }

    #[test]
    fn usage_rules_are_checked_against_each_other() {
        let base = DEFAULT_POLICY_TOML;
        for (find, replace, says) in [
            ("tier = \"high\"\n", "tier = \"top\"\n", "does not define"),
            (
                "profile_export = \"high\"",
                "profile_export = \"top\"",
                "does not define",
            ),
            ("to = \"ADEQUATE\"", "to = \"MARS\"", "zone"),
            ("to = \"ADEQUATE\"", "to = \"jp\"", "uppercase"),
            (
                "max_consent_age_days = 365",
                "max_consent_age_days = 0",
                "at least 1",
            ),
            (
                "bases = [\"consent\"]\nfields = [\"email\", \"phone\", \"name.given\"",
                "bases = []\nfields = [\"email\", \"phone\", \"name.given\"",
                "at least one basis",
            ),
            ("[tiers.low]", "[tiers.Low]", "a-z"),
            ("EEA = [", "EU = [", "3 to 32"),
        ] {
            assert!(base.contains(find), "{find}");
            let err = Policy::from_toml(&base.replacen(find, replace, 1)).unwrap_err();
            assert!(err.to_string().contains(says), "{find}: {err}");
        }
        let p = Policy::default_policy().unwrap();
        let c = |s: &str| CountryCode::parse(s).unwrap();
        assert_eq!(p.transfer_bases(c("DE"), c("NO")), None, "one zone");
        assert_eq!(p.transfer_bases(c("US"), c("US")), None);
        assert_eq!(
            p.transfer_bases(c("DE"), c("JP")).unwrap().len(),
            4,
            "adequacy, scc, bcr and derogation"
        );
        assert!(
            p.transfer_bases(c("US"), c("DE")).unwrap().is_empty(),
            "no rule covers the way in"
        );
    }
}
