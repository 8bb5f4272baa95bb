//! Households (issue 17). Membership is a field of the member's own record, `household`
//! (`{"id": <uuid>, "role": "member" | "head" | "guardian"}`): the authority policy says who
//! writes it, its history and provenance are the field's, and consumers that select
//! `household` receive every change of it through the ordinary delivery.

use serde::{Deserialize, Serialize};

use crate::ids::HouseholdId;
use crate::values::string_enum;

string_enum! {
    /// A member's part in their household.
    pub enum HouseholdRole as "household role" {
        Member = "member",
        /// Whom the household is addressed to.
        Head = "head",
        /// A guardian of a minor in the household (the guardianship itself is a recorded
        /// relationship on the minor's record, see [`crate::delegation`]).
        Guardian = "guardian",
    }
}

/// A customer's membership of a household: the `household` field's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HouseholdMembership {
    #[serde(rename = "id")]
    pub household_id: HouseholdId,
    pub role: HouseholdRole,
}
