//! Households (issue 17): create, join, leave and the household view. Membership is the
//! `household` field of each member's own record (`idledger_domain::household`), so every
//! change here is an ordinary command of that record — the authority policy, provenance,
//! idempotency, events and delivery are the field's — and a household's members are found
//! through the blind index (`Identifier::Household`), like any identifier, within the
//! reader's scope.

use idledger_domain::command::{Change, Command, Principal, ProvenanceInput};
use idledger_domain::event::EventPayload;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::household::{HouseholdMembership, HouseholdRole};
use idledger_domain::ids::{CustomerId, HouseholdId, IdempotencyKey};
use idledger_domain::lookup::Identifier;
use idledger_store::{ExecuteError, Executed, StoreError};

use crate::App;
use crate::reads::{ReadError, Reader};

/// One member of a household.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HouseholdMember {
    pub customer_id: CustomerId,
    pub role: HouseholdRole,
}

/// A household as its reader may see it: its members in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Household {
    pub household_id: HouseholdId,
    pub members: Vec<HouseholdMember>,
    /// More members than [`crate::MAX_MATCHES`]; the first are listed.
    pub truncated: bool,
}

/// Whose membership changes, and how the command is recorded.
#[derive(Debug, Clone)]
pub struct MembershipCommand {
    pub customer_id: CustomerId,
    pub idempotency_key: IdempotencyKey,
    pub provenance: ProvenanceInput,
    /// The record's stream version the caller last saw (`If-Match`).
    pub expected_stream_version: Option<u64>,
}

impl MembershipCommand {
    fn command(self, change: Change) -> Command {
        Command {
            customer_id: self.customer_id,
            idempotency_key: self.idempotency_key,
            provenance: self.provenance,
            changes: vec![change],
            expected_stream_version: self.expected_stream_version,
        }
    }
}

/// Why a membership was not changed. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// Joining a household nobody is in: households are created, not guessed.
    #[error("no household {0}: create one, or join one that has members")]
    UnknownHousehold(HouseholdId),
    /// The record refused the command, or it could not be recorded.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

impl From<StoreError> for MembershipError {
    fn from(e: StoreError) -> Self {
        Self::Execute(ExecuteError::Store(e))
    }
}

impl App {
    /// The members of `household` with their roles, in id order, found through the blind
    /// index as [`App::find_customers`] finds customers: a source must be able to read
    /// `household` ([`ReadError::OutOfScope`] otherwise), and each member it is shown is
    /// logged as a disclosure of that field. Erased and merged records hold no membership.
    /// [`ReadError::NoHousehold`] when nobody is in it (never created, or everyone left).
    pub async fn household(
        &self,
        reader: &Reader,
        household: HouseholdId,
    ) -> Result<Household, ReadError> {
        let found = self
            .find_customers(reader, &Identifier::Household(household))
            .await?;
        let mut members = Vec::with_capacity(found.customer_ids.len());
        for customer in found.customer_ids {
            // The index row and the record are written together; the role is the record's.
            let Some(state) = self.ledger().state(customer).await? else {
                continue;
            };
            if state.erased.is_some() || state.merged_into.is_some() {
                continue;
            }
            if let Some(FieldValue::Household(m)) = state.value(&FieldPath::Household)
                && m.household_id == household
            {
                members.push(HouseholdMember {
                    customer_id: customer,
                    role: m.role,
                });
            }
        }
        if members.is_empty() {
            return Err(ReadError::NoHousehold(household));
        }
        Ok(Household {
            household_id: household,
            members,
            truncated: found.truncated,
        })
    }

    /// Creates a household with the command's customer as its first member in `role`: a
    /// new household id (UUIDv7) is set as their `household` field through the ordinary
    /// command path. A retry with the same idempotency key names the household the first
    /// attempt minted, so it is the same command and gets the first result.
    pub async fn create_household(
        &self,
        principal: &Principal,
        role: HouseholdRole,
        command: MembershipCommand,
    ) -> Result<(HouseholdId, Executed), MembershipError> {
        let household = match self.minted_before(principal, &command).await? {
            Some(household) => household,
            None => HouseholdId::from_uuid(uuid::Uuid::now_v7()),
        };
        let executed = self
            .run_command(principal, &command.command(set(household, role)))
            .await?;
        Ok((household, executed))
    }

    /// Makes the command's customer a member of `household` in `role`, or changes their
    /// role in it. A customer is in one household at most: joining another moves them (the
    /// field's history keeps where they were). The household must have a member already
    /// ([`MembershipError::UnknownHousehold`]), checked for writers that may read the
    /// field; for the others the policy's refusal is the answer.
    pub async fn join_household(
        &self,
        principal: &Principal,
        household: HouseholdId,
        role: HouseholdRole,
        command: MembershipCommand,
    ) -> Result<Executed, MembershipError> {
        if self.reads_households(principal)
            && self
                .ledger()
                .find(&Identifier::Household(household), 1)
                .await?
                .is_empty()
        {
            return Err(MembershipError::UnknownHousehold(household));
        }
        Ok(self
            .run_command(principal, &command.command(set(household, role)))
            .await?)
    }

    /// Takes the command's customer out of `household`: their `household` field is
    /// cleared, only if it names that household (`leave_household`; refused
    /// `not_a_member` otherwise, decided on the record itself).
    pub async fn leave_household(
        &self,
        principal: &Principal,
        household: HouseholdId,
        command: MembershipCommand,
    ) -> Result<Executed, MembershipError> {
        let change = Change::LeaveHousehold {
            household_id: household,
        };
        Ok(self
            .run_command(principal, &command.command(change))
            .await?)
    }

    /// Whether `principal` may see households: a source only if the policy lets it read
    /// `household`; stewards and the others that may write fields, always.
    fn reads_households(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Source(source) => self
                .ledger()
                .policy()
                .readable(&FieldPath::Household, source),
            _ => true,
        }
    }

    /// The household an earlier `create_household` with this principal and key minted, read
    /// back from the event its first result names; `None` when there is none (a first
    /// attempt; a key used for something else, which the command then answers as an
    /// idempotency conflict).
    async fn minted_before(
        &self,
        principal: &Principal,
        command: &MembershipCommand,
    ) -> Result<Option<HouseholdId>, StoreError> {
        let Some(first) = self
            .ledger()
            .idempotent_result(principal, &command.idempotency_key)
            .await?
        else {
            return Ok(None);
        };
        if first.customer_id != command.customer_id {
            return Ok(None);
        }
        let history = match self
            .ledger()
            .history(first.customer_id, &FieldPath::Household)
            .await
        {
            Ok(history) => history,
            // Erased since: the retry is refused as erased, whatever it names.
            Err(StoreError::Erased { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(history
            .iter()
            .filter(|e| first.events.iter().any(|r| r.id == e.envelope.id))
            .find_map(|e| match &e.envelope.event.payload {
                EventPayload::FieldSet {
                    value: FieldValue::Household(m),
                    ..
                }
                | EventPayload::ValueProposed {
                    value: FieldValue::Household(m),
                    ..
                } => Some(m.household_id),
                _ => None,
            }))
    }
}

fn set(household: HouseholdId, role: HouseholdRole) -> Change {
    Change::SetField {
        field: FieldPath::Household,
        value: FieldValue::Household(HouseholdMembership {
            household_id: household,
            role,
        }),
        expected_version: None,
    }
}
