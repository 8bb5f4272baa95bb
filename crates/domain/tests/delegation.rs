//! Recorded relationships (issue 17): on_behalf_of claims are checked against them; a minor's
//! consent needs a recorded guardian, judged on the recorded jurisdiction and birth date.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::Duration;
use idledger_domain::command::{Change, Principal, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::delegation::{RelationshipScope, RelationshipStatus};
use idledger_domain::field::FieldSelector;
use idledger_domain::ids::{Actor, ActorKind, Purpose, Relationship, RelationshipId};
use idledger_domain::state::ConsentStatus;
use idledger_domain::values::{ConsentChannel, Jurisdiction, LegalBasis, NoticeRef};
use serde_json::json;
use support::*;

fn grant(purpose: &str, jurisdiction: &str) -> Change {
    Change::GrantConsent {
        purpose: Purpose::parse(purpose).unwrap(),
        basis: LegalBasis::Consent,
        notice: NoticeRef::new("privacy-notice", "2026-01", &"ab".repeat(32)).unwrap(),
        channel: ConsentChannel::Web,
        jurisdiction: Jurisdiction::parse(jurisdiction).unwrap(),
        expires_at: None,
    }
}

fn marketing() -> Purpose {
    Purpose::parse("marketing").unwrap()
}

/// The id of the relationship a decision recorded.
fn recorded_id(outcomes: &[Outcome]) -> RelationshipId {
    outcomes
        .iter()
        .find_map(|o| match o {
            Outcome::Relationship {
                relationship_id,
                ended: false,
            } => Some(*relationship_id),
            _ => None,
        })
        .unwrap()
}

#[track_caller]
fn refused(
    result: Result<idledger_domain::decide::Decision, idledger_domain::command::Refused>,
) -> Refusal {
    result.unwrap_err().refusal
}

/// Scoped to the marketing consent and the locale.
fn assistant_scope() -> RelationshipScope {
    RelationshipScope {
        purposes: [marketing()].into(),
        fields: vec![FieldSelector::parse("locale").unwrap()],
    }
}

#[test]
fn an_unrecorded_claim_is_refused_and_a_recorded_one_accepted() {
    let mut s = Scenario::registered();
    let set_locale = set("locale", json!("de-DE"));
    let refusal = refused(s.when("web_app", delegate(), vec![set_locale.clone()]));
    assert_eq!(refusal.code(), "unrecorded_representative");
    // The refusal never names the representative.
    assert!(!refusal.to_string().contains("assistant-1"));
    let d = s
        .apply(
            source("idp"),
            agent(),
            vec![record(
                Relationship::Delegate,
                "assistant-1",
                Some(assistant_scope()),
            )],
        )
        .unwrap();
    assert_eq!(types(&d), ["relationship_recorded"]);
    let d = s.when("web_app", delegate(), vec![set_locale]).unwrap();
    assert_eq!(types(&d), ["field_set"]);
    assert_eq!(
        d.events[0].event.provenance.on_behalf_of,
        delegate().on_behalf_of
    );
    // The same id as a guardian is another relationship: not recorded.
    let mut as_guardian = delegate();
    as_guardian.on_behalf_of = guardian().on_behalf_of;
    assert_eq!(
        refused(s.when("web_app", as_guardian, vec![set("locale", json!("fr-FR"))])).code(),
        "unrecorded_representative"
    );
}

#[test]
fn a_change_outside_the_recorded_scope_is_refused() {
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![record(
            Relationship::Delegate,
            "assistant-1",
            Some(assistant_scope()),
        )],
    );
    let r = refused(s.when(
        "web_app",
        delegate(),
        vec![set("preferences.newsletter", json!(true))],
    ));
    assert_eq!(r.code(), "outside_delegated_scope");
    let r = refused(s.when("consent_portal", delegate(), vec![grant("profiling", "DE")]));
    assert_eq!(r.code(), "outside_delegated_scope");
    // Every change of the command must be covered, and the refusal names the one that is not.
    let err = s
        .when(
            "web_app",
            delegate(),
            vec![
                set("locale", json!("de-DE")),
                set("preferences.newsletter", json!(true)),
            ],
        )
        .unwrap_err();
    assert_eq!(err.change_index, Some(1));
    assert!(
        s.when("consent_portal", delegate(), vec![grant("marketing", "DE")])
            .is_ok()
    );
    // A relationship is not recorded or ended under a claim.
    assert_eq!(
        refused(s.when(
            "idp",
            delegate(),
            vec![record(Relationship::Delegate, "someone", None)]
        ))
        .code(),
        "forbidden"
    );
}

#[test]
fn an_expired_or_ended_relationship_backs_no_claim() {
    let mut s = Scenario::registered();
    let mut expiring = record(Relationship::Delegate, "assistant-1", None);
    if let Change::RecordRelationship { expires_at, .. } = &mut expiring {
        *expires_at = Some(s.now + Duration::days(1));
    }
    let d = s.apply(steward(), agent(), vec![expiring]).unwrap();
    let first = recorded_id(&d.outcomes);
    assert!(
        s.when("web_app", delegate(), vec![set("locale", json!("de-DE"))])
            .is_ok()
    );
    let mut s = s.advance(Duration::days(2));
    match refused(s.when("web_app", delegate(), vec![set("locale", json!("de-DE"))])) {
        Refusal::UnrecordedRepresentative { standing, .. } => {
            assert_eq!(standing, Some(RelationshipStatus::Expired));
        }
        other => panic!("{other:?}"),
    }
    // Recorded again, then ended: refused as ended; ending it twice is refused.
    let d = s
        .apply(
            source("idp"),
            agent(),
            vec![record(Relationship::Delegate, "assistant-1", None)],
        )
        .unwrap();
    let second = recorded_id(&d.outcomes);
    assert_ne!(first, second);
    assert!(
        s.when("web_app", delegate(), vec![set("locale", json!("de-DE"))])
            .is_ok()
    );
    let end = Change::EndRelationship {
        relationship_id: second,
        reason: "power of attorney revoked".to_owned(),
    };
    let d = s.apply(source("idp"), agent(), vec![end.clone()]).unwrap();
    assert_eq!(types(&d), ["relationship_ended"]);
    match refused(s.when("web_app", delegate(), vec![set("locale", json!("de-DE"))])) {
        Refusal::UnrecordedRepresentative { standing, .. } => {
            assert_eq!(standing, Some(RelationshipStatus::Ended));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        refused(s.when("idp", agent(), vec![end])).code(),
        "unknown_relationship"
    );
    // Both stay on the record, with how each ended.
    let state = s.state();
    let statuses: Vec<_> = state
        .relationships
        .values()
        .map(|r| r.status(&state, None, &s.policy, s.now))
        .collect();
    assert_eq!(
        statuses,
        [RelationshipStatus::Expired, RelationshipStatus::Ended]
    );
}

#[test]
fn stewards_administrators_and_named_sources_record_relationships() {
    let mut s = Scenario::registered();
    let change = || record(Relationship::Delegate, "assistant-1", None);
    // crm is not in the policy's [relationships] recorded_by.
    assert_eq!(
        refused(s.when("crm", agent(), vec![change()])).code(),
        "forbidden"
    );
    assert!(s.when("idp", agent(), vec![change()]).is_ok());
    assert!(s.when_as(steward(), vec![change()]).is_ok());
    let admin = Principal::Admin(Actor::new(ActorKind::Agent, "dpo@example.org").unwrap());
    assert!(s.when_as(admin, vec![change()]).is_ok());
    // An empty scope would cover nothing; an expiry in the past never holds.
    let empty = record(
        Relationship::Delegate,
        "assistant-1",
        Some(RelationshipScope {
            purposes: Default::default(),
            fields: vec![],
        }),
    );
    assert_eq!(
        refused(s.when("idp", agent(), vec![empty])).code(),
        "invalid_value"
    );
    let mut past = change();
    if let Change::RecordRelationship { expires_at, .. } = &mut past {
        *expires_at = Some(s.now - Duration::days(1));
    }
    assert_eq!(
        refused(s.when("idp", agent(), vec![past])).code(),
        "invalid_value"
    );
    // A live one is not recorded twice.
    s.apply(source("idp"), agent(), vec![change()]).unwrap();
    assert_eq!(
        refused(s.when("idp", agent(), vec![change()])).code(),
        "invalid_transition"
    );
}

#[test]
fn a_guardian_is_recorded_only_for_a_minor() {
    let mut s = Scenario::registered();
    // No birth date: not known to be a minor.
    assert_eq!(
        refused(s.when("idp", agent(), vec![record_guardian()])).code(),
        "invalid_transition"
    );
    // In the same command as the birth date that makes the subject one, it is.
    let d = s
        .when(
            "idp",
            agent(),
            vec![set("birth_date", json!("2014-06-01")), record_guardian()],
        )
        .unwrap();
    assert_eq!(types(&d), ["field_set", "relationship_recorded"]);
}

#[test]
fn a_minors_consent_is_judged_on_the_recorded_jurisdiction() {
    // 14 at t0: of age in the US (13), a minor in Germany (16).
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![
            set("birth_date", json!("2011-06-01")),
            set("jurisdiction", json!("DE")),
        ],
    );
    // The grant says US, the record says DE: the record wins.
    match refused(s.when("consent_portal", subject(), vec![grant("marketing", "US")])) {
        Refusal::GuardianRequired {
            age,
            age_of_digital_consent,
            jurisdiction,
            ..
        } => {
            assert_eq!((age, age_of_digital_consent), (14, 16));
            assert_eq!(jurisdiction.to_string(), "DE");
        }
        other => panic!("{other:?}"),
    }
    // Without a recorded jurisdiction, the grant's own is the fallback.
    let mut unplaced =
        Scenario::registered().given("idp", agent(), vec![set("birth_date", json!("2011-06-01"))]);
    assert!(
        unplaced
            .when("consent_portal", subject(), vec![grant("marketing", "US")])
            .is_ok()
    );
    // A consent given in the US reads as needing a guardian once the record says DE.
    unplaced
        .apply(
            source("consent_portal"),
            subject(),
            vec![grant("marketing", "US")],
        )
        .unwrap();
    assert_eq!(
        unplaced
            .state()
            .consent_status(&marketing(), &unplaced.policy, unplaced.now),
        ConsentStatus::Granted
    );
    unplaced
        .apply(
            source("idp"),
            agent(),
            vec![set("jurisdiction", json!("DE"))],
        )
        .unwrap();
    assert_eq!(
        unplaced
            .state()
            .consent_status(&marketing(), &unplaced.policy, unplaced.now),
        ConsentStatus::GuardianRequired
    );
    // With a recorded guardian, the guardian gives it.
    s.apply(source("consent_portal"), agent(), vec![record_guardian()])
        .unwrap();
    s.apply(
        source("consent_portal"),
        guardian(),
        vec![grant("marketing", "US")],
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing(), &s.policy, s.now),
        ConsentStatus::Granted
    );
}

#[test]
fn a_guardianship_ends_when_the_minor_comes_of_age() {
    // 14 at t0 in Germany: of age (16) on 2027-06-01.
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![
            set("birth_date", json!("2011-06-01")),
            set("jurisdiction", json!("DE")),
            record_guardian(),
        ],
    );
    s.apply(
        source("consent_portal"),
        guardian(),
        vec![grant("marketing", "DE")],
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing(), &s.policy, s.now),
        ConsentStatus::Granted
    );
    let until_of_age = chrono::NaiveDate::from_ymd_opt(2027, 6, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        - s.now;
    // The day before: still a guardian.
    let mut s = s.advance(until_of_age - Duration::days(1));
    assert!(
        s.when("consent_portal", guardian(), vec![grant("profiling", "DE")])
            .is_ok()
    );
    // Of age: the guardian speaks for them no more, and the consent they gave still counts.
    let mut s = s.advance(Duration::days(1));
    match refused(s.when("consent_portal", guardian(), vec![grant("profiling", "DE")])) {
        Refusal::UnrecordedRepresentative { standing, .. } => {
            assert_eq!(standing, Some(RelationshipStatus::CameOfAge));
        }
        other => panic!("{other:?}"),
    }
    let long_max_age = idledger_domain::policy::Policy::from_toml(
        &idledger_domain::policy::DEFAULT_POLICY_TOML
            .replace("marketing = 730", "marketing = 3650"),
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing(), &long_max_age, s.now),
        ConsentStatus::Granted
    );
}

#[test]
fn a_minors_consent_from_an_ended_guardianship_no_longer_counts() {
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![set("birth_date", json!("2014-06-01")), record_guardian()],
    );
    s.apply(
        source("consent_portal"),
        guardian(),
        vec![grant("marketing", "DE")],
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing(), &s.policy, s.now),
        ConsentStatus::Granted
    );
    let id = *s.state().relationships.keys().next().unwrap();
    s.apply(
        steward(),
        agent(),
        vec![Change::EndRelationship {
            relationship_id: id,
            reason: "custody order changed".to_owned(),
        }],
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing(), &s.policy, s.now),
        ConsentStatus::GuardianRequired
    );
}

#[test]
fn erasure_forgets_the_relationships() {
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![record(Relationship::Delegate, "assistant-1", None)],
    );
    assert_eq!(s.state().relationships.len(), 1);
    s.erase("admin", "subject request").unwrap();
    assert!(s.state().relationships.is_empty());
}
