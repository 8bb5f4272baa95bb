//! Household membership (issue 17): a field of the member's record, under the policy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::household::HouseholdRole;
use serde_json::json;
use support::*;

const HOUSEHOLD: &str = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";

#[test]
fn membership_is_a_field_its_system_of_record_writes_and_others_propose() {
    let mut s = Scenario::registered();
    let joined = set("household", json!({"id": HOUSEHOLD, "role": "head"}));
    let d = s.apply(source("web_app"), agent(), vec![joined]).unwrap();
    assert_eq!(types(&d), ["field_set"]);
    match s.state().value(&FieldPath::Household) {
        Some(FieldValue::Household(m)) => {
            assert_eq!(m.household_id.to_string(), HOUSEHOLD);
            assert_eq!(m.role, HouseholdRole::Head);
        }
        other => panic!("{other:?}"),
    }
    // The natural form is what consumers receive.
    assert_eq!(
        s.state().value(&FieldPath::Household).unwrap().to_json(),
        json!({"id": HOUSEHOLD, "role": "head"})
    );
    // The CRM proposes; leaving is clearing the field.
    let d = s
        .when(
            "crm",
            agent(),
            vec![set("household", json!({"id": HOUSEHOLD, "role": "member"}))],
        )
        .unwrap();
    assert_eq!(types(&d), ["value_proposed"]);
    let d = s
        .when(
            "web_app",
            agent(),
            vec![idledger_domain::command::Change::ClearField {
                field: FieldPath::Household,
                expected_version: None,
            }],
        )
        .unwrap();
    assert_eq!(types(&d), ["field_cleared"]);
}

#[test]
fn a_membership_value_is_checked() {
    let field = FieldPath::parse("household").unwrap();
    for bad in [
        json!("0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d"),
        json!({"id": HOUSEHOLD, "role": "cousin"}),
        json!({"id": "", "role": "member"}),
        json!({"id": HOUSEHOLD}),
        json!({"id": HOUSEHOLD, "role": "member", "extra": 1}),
    ] {
        assert!(FieldValue::parse(&field, &bad).is_err(), "{bad}");
    }
    for role in ["member", "head", "guardian"] {
        assert!(FieldValue::parse(&field, &json!({"id": HOUSEHOLD, "role": role})).is_ok());
    }
}

fn leave(household: &str) -> idledger_domain::command::Change {
    idledger_domain::command::Change::LeaveHousehold {
        household_id: idledger_domain::ids::HouseholdId::parse(household).unwrap(),
    }
}

#[test]
fn leaving_clears_the_membership_of_that_household_only() {
    const OTHER: &str = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1e";
    let mut s = Scenario::registered();
    // Not in any household yet: nothing to leave.
    assert_eq!(
        refusal_code(s.when("web_app", agent(), vec![leave(HOUSEHOLD)])),
        "not_a_member"
    );
    s.apply(
        source("web_app"),
        agent(),
        vec![set("household", json!({"id": HOUSEHOLD, "role": "member"}))],
    )
    .unwrap();
    // Another household's leave is refused, naming the household asked about.
    let refused = s.when("web_app", agent(), vec![leave(OTHER)]).unwrap_err();
    assert_eq!(refused.refusal.code(), "not_a_member");
    assert!(refused.to_string().contains(OTHER), "{refused}");
    // A writer that may not clear the field learns nothing of the membership: the CRM
    // proposes, the identity provider does not write it at all.
    for (writer, household) in [("crm", OTHER), ("crm", HOUSEHOLD), ("idp", OTHER)] {
        assert_eq!(
            refusal_code(s.when(writer, agent(), vec![leave(household)])),
            "not_authoritative",
            "{writer}"
        );
    }
    // Its own household: the field is cleared, as a clear_field of it would be.
    let d = s
        .apply(source("support_portal"), agent(), vec![leave(HOUSEHOLD)])
        .unwrap();
    assert_eq!(types(&d), ["field_cleared"]);
    assert_eq!(s.state().value(&FieldPath::Household), None);
    assert_eq!(
        refusal_code(s.when("web_app", agent(), vec![leave(HOUSEHOLD)])),
        "not_a_member"
    );
    // A steward may, where the policy lets stewards override the field.
    s.apply(
        source("web_app"),
        agent(),
        vec![set("household", json!({"id": OTHER, "role": "head"}))],
    )
    .unwrap();
    let d = s.apply(steward(), agent(), vec![leave(OTHER)]).unwrap();
    assert_eq!(types(&d), ["field_cleared"]);
}
