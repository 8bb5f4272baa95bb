//! Who may read what of a record: the policy's read rules applied to a customer's state.
//!
//! A source system reads the fields it writes in some mode, those the policy lists it as a
//! reader of, and nothing else; a pending change only if it requested it; a proposal only if
//! it made it or is the field's system of record. People inside idledger who oversee the
//! record (stewards, auditors, administrators, the operator's CLI) read everything, and only
//! they read the past (`as_of`, field history).

use crate::field::FieldPath;
use crate::ids::{Purpose, SourceId};
use crate::policy::Policy;
use crate::state::{CustomerState, PendingChange, Proposal};

/// What one reader may see of any record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// A source system: the policy decides, field by field.
    Source(SourceId),
    /// Stewards, auditors, administrators, the operator.
    Everything,
}

impl ReadScope {
    /// Whether the reader may see the record as it stood in the past, or a field's history.
    pub fn reads_the_past(&self) -> bool {
        matches!(self, Self::Everything)
    }

    pub fn field(&self, policy: &Policy, field: &FieldPath) -> bool {
        match self {
            Self::Source(source) => policy.readable(field, source),
            Self::Everything => true,
        }
    }

    pub fn consent(&self, policy: &Policy, purpose: &Purpose) -> bool {
        self.field(policy, &FieldPath::Consent(purpose.clone()))
    }

    /// A requested change waiting for verification: its value and challenge belong to the
    /// requester until verified.
    pub fn pending(&self, pending: &PendingChange) -> bool {
        match self {
            Self::Source(source) => pending.requested_by == *source,
            Self::Everything => true,
        }
    }

    /// A proposal, shown to the source that made it and the system of record it waits for.
    pub fn proposal(&self, policy: &Policy, proposal: &Proposal) -> bool {
        match self {
            Self::Source(source) => {
                self.field(policy, &proposal.field)
                    && (proposal.proposed_by == *source
                        || policy.rule(&proposal.field).system_of_record == *source)
            }
            Self::Everything => true,
        }
    }

    /// The guardian and delegate relationships recorded for the subject: shown to those who
    /// oversee the record and to the sources that may record them.
    pub fn relationships(&self, policy: &Policy) -> bool {
        match self {
            Self::Source(source) => policy.records_relationships(source),
            Self::Everything => true,
        }
    }

    /// The fields and consents of `state` the reader sees, in the record's order: what a read
    /// discloses.
    pub fn disclosed(&self, policy: &Policy, state: &CustomerState) -> Vec<FieldPath> {
        let fields = state
            .fields
            .keys()
            .filter(|f| self.field(policy, f))
            .cloned();
        let consents = state
            .consents
            .keys()
            .filter(|p| self.consent(policy, p))
            .map(|p| FieldPath::Consent(p.clone()));
        fields.chain(consents).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn src(s: &str) -> SourceId {
        SourceId::parse(s).unwrap()
    }

    #[test]
    fn a_source_reads_what_it_writes_and_what_it_is_listed_for() {
        let p = Policy::default_policy().unwrap();
        let crm = ReadScope::Source(src("crm"));
        let web = ReadScope::Source(src("web_app"));
        let nobody = ReadScope::Source(src("nobody"));
        // crm proposes email, fills locale; writes no consent and no birth date... but proposes it.
        assert!(crm.field(&p, &FieldPath::Email));
        assert!(crm.field(&p, &FieldPath::Locale));
        assert!(!crm.field(&p, &FieldPath::VerificationLevel));
        assert!(!crm.consent(&p, &Purpose::parse("marketing").unwrap()));
        // web_app writes consents and is a listed reader of the verification level.
        assert!(web.consent(&p, &Purpose::parse("marketing").unwrap()));
        assert!(web.field(&p, &FieldPath::VerificationLevel));
        assert!(!web.field(&p, &FieldPath::BirthDate));
        assert!(!nobody.field(&p, &FieldPath::Email));
        assert!(ReadScope::Everything.field(&p, &FieldPath::BirthDate));
        assert!(!crm.reads_the_past() && ReadScope::Everything.reads_the_past());
    }
}
