//! given(events) / when(command) / then(events | refusal), for every field kind and transition.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::Duration;
use idledger_domain::challenge::{ChallengeKey, ChallengeSecret};
use idledger_domain::command::{Change, Principal, ProvenanceInput, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::event::{CancelReason, EventPayload, RepushedValue, SetMode, StewardAction};
use idledger_domain::field::FieldValue;
use idledger_domain::ids::{Actor, ActorKind, ChallengeId, ProposalId, Purpose, Relationship};
use idledger_domain::policy::{DEFAULT_POLICY_TOML, Policy, WriteMode};
use idledger_domain::schema::{StoredEvent, upcast};
use idledger_domain::state::{
    ConsentStatus, CustomerState, Erasure, evolve, evolve_unreadable, fold,
};
use idledger_domain::values::{ConsentChannel, Jurisdiction, LegalBasis, NoticeRef};
use serde_json::json;
use support::*;
use uuid::Uuid;

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

fn withdraw(purpose: &str) -> Change {
    Change::WithdrawConsent {
        purpose: Purpose::parse(purpose).unwrap(),
    }
}

fn request(path: &str, json: serde_json::Value) -> Change {
    Change::RequestChange {
        field: field(path),
        value: value(path, json),
        expected_version: None,
    }
}

fn challenge_of(outcome: &Outcome) -> ChallengeId {
    match outcome {
        Outcome::Pending { challenge_id, .. } => *challenge_id,
        other => panic!("expected a pending change, got {other:?}"),
    }
}

fn proposal_of(outcome: &Outcome) -> ProposalId {
    match outcome {
        Outcome::Proposed { proposal_id, .. } => *proposal_id,
        other => panic!("expected a proposal, got {other:?}"),
    }
}

// ---- registration ----

#[test]
fn register_creates_the_record_once() {
    let mut s = Scenario::new();
    let d = s.when("idp", agent(), vec![Change::Register]).unwrap();
    assert_eq!(types(&d), ["customer_registered"]);
    assert_eq!(d.events[0].stream_version, 1);
    let mut s = Scenario::registered();
    assert_eq!(
        refusal_code(s.when("idp", agent(), vec![Change::Register])),
        "already_registered"
    );
}

#[test]
fn changes_before_registration_are_refused() {
    let mut s = Scenario::new();
    let r = s.when("idp", agent(), vec![set("name.given", json!("Ada"))]);
    assert_eq!(refusal_code(r), "not_registered");
    let r = s.when(
        "idp",
        agent(),
        vec![set("name.given", json!("Ada")), Change::Register],
    );
    assert_eq!(refusal_code(r), "invalid_command");
    let r = s.decide_as(steward(), agent(), vec![Change::Register]);
    assert_eq!(refusal_code(r), "forbidden");
}

#[test]
fn register_with_initial_fields_is_atomic() {
    let mut s = Scenario::new();
    let d = s
        .when(
            "idp",
            with_evidence(),
            vec![
                Change::Register,
                set("email", json!("ada@example.org")),
                set("name.given", json!("Ada")),
            ],
        )
        .unwrap();
    assert_eq!(types(&d), ["customer_registered", "field_set", "field_set"]);
    let versions: Vec<u64> = d.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [1, 2, 3]);
    // One refused change refuses the whole command, naming which change.
    let err = s
        .when(
            "idp",
            agent(),
            vec![
                Change::Register,
                set("name.given", json!("Ada")),
                set("email", json!("ada@example.org")),
            ],
        )
        .unwrap_err();
    assert_eq!(err.change_index, Some(2));
    assert_eq!(err.refusal.code(), "invalid_transition");
}

#[test]
fn empty_and_oversized_commands_are_refused() {
    let mut s = Scenario::registered();
    assert_eq!(
        refusal_code(s.when("idp", agent(), vec![])),
        "invalid_command"
    );
    let many = vec![set("name.given", json!("Ada")); 101];
    assert_eq!(
        refusal_code(s.when("idp", agent(), many)),
        "invalid_command"
    );
    let mut future = agent();
    future.observed_at = Some(s.now + Duration::hours(1));
    assert_eq!(
        refusal_code(s.when("idp", future, vec![set("name.given", json!("Ada"))])),
        "invalid_value"
    );
}

// ---- set / clear, by mode ----

#[test]
fn system_of_record_sets_and_versions_a_field() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("idp"),
            agent(),
            vec![set("name.given", json!("Ada"))],
        )
        .unwrap();
    assert_eq!(
        d.outcomes,
        [Outcome::Applied {
            field: field("name.given"),
            version: 1
        }]
    );
    let EventPayload::FieldSet { mode, version, .. } = &d.events[0].event.payload else {
        panic!("expected field_set");
    };
    assert_eq!((*mode, *version), (SetMode::Authoritative, 1));
    let rec = s.state().field(&field("name.given")).cloned().unwrap();
    assert_eq!(rec.value, Some(value("name.given", json!("Ada"))));
    assert_eq!(rec.source.unwrap().as_str(), "idp");
    assert_eq!(rec.last_event_id, Some(d.events[0].id));
}

#[test]
fn same_value_emits_nothing() {
    let mut s = Scenario::registered().given("idp", agent(), vec![set("name.given", json!("Ada"))]);
    let d = s
        .when("idp", agent(), vec![set("name.given", json!("Ada"))])
        .unwrap();
    assert!(d.events.is_empty());
    assert_eq!(
        d.outcomes,
        [Outcome::Unchanged {
            field: field("name.given")
        }]
    );
}

#[test]
fn expected_version_is_checked() {
    let mut s = Scenario::registered().given("idp", agent(), vec![set("name.given", json!("Ada"))]);
    let stale = Change::SetField {
        field: field("name.given"),
        value: value("name.given", json!("Grace")),
        expected_version: Some(0),
    };
    let err = s.when("idp", agent(), vec![stale]).unwrap_err();
    assert_eq!(
        err.refusal,
        Refusal::VersionConflict {
            field: field("name.given"),
            expected: 0,
            actual: 1
        }
    );
    let fresh = Change::SetField {
        field: field("name.given"),
        value: value("name.given", json!("Grace")),
        expected_version: Some(1),
    };
    assert_eq!(
        types(&s.when("idp", agent(), vec![fresh]).unwrap()),
        ["field_set"]
    );
}

#[test]
fn writer_without_a_mode_is_refused_naming_the_system_of_record() {
    let mut s = Scenario::registered();
    let err = s
        .when(
            "partner_feed",
            agent(),
            vec![set("name.given", json!("Ada"))],
        )
        .unwrap_err();
    match err.refusal {
        Refusal::NotAuthoritative {
            system_of_record,
            mode,
            ..
        } => {
            assert_eq!(system_of_record.as_str(), "idp");
            assert_eq!(mode, WriteMode::None);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        s.when(
            "partner_feed",
            agent(),
            vec![set("name.given", json!("Ada"))]
        )
        .unwrap_err()
        .to_string()
        .contains("system of record for name.given is 'idp'")
    );
}

#[test]
fn proposer_overwrite_becomes_a_proposal_and_the_record_is_unchanged() {
    let mut s = Scenario::registered().given(
        "idp",
        with_evidence(),
        vec![set("email", json!("ada@example.org"))],
    );
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set("email", json!("ada@crm.example"))],
        )
        .unwrap();
    assert_eq!(types(&d), ["value_proposed"]);
    match &d.outcomes[0] {
        Outcome::Proposed {
            system_of_record, ..
        } => assert_eq!(system_of_record.as_str(), "idp"),
        other => panic!("{other:?}"),
    }
    let id = proposal_of(&d.outcomes[0]);
    assert_eq!(
        s.state().value(&field("email")),
        Some(&value("email", json!("ada@example.org")))
    );
    assert!(s.state().proposals.contains_key(&id));
    // The same proposal again is recognised, not duplicated.
    let again = s
        .when("crm", agent(), vec![set("email", json!("ada@crm.example"))])
        .unwrap();
    assert!(again.events.is_empty());
    assert_eq!(proposal_of(&again.outcomes[0]), id);
}

#[test]
fn fill_if_empty_enriches_only_empty_fields() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("cdp"),
            agent(),
            vec![set("name.family", json!("Lovelace"))],
        )
        .unwrap();
    let EventPayload::FieldSet { mode, .. } = &d.events[0].event.payload else {
        panic!("expected field_set")
    };
    assert_eq!(*mode, SetMode::FillIfEmpty);
    let r = s.when("cdp", agent(), vec![set("name.family", json!("Byron"))]);
    assert_eq!(refusal_code(r), "not_authoritative");
}

#[test]
fn request_change_writer_cannot_set_directly() {
    let mut s = Scenario::registered();
    let err = s
        .when(
            "web_app",
            agent(),
            vec![set("email", json!("ada@example.org"))],
        )
        .unwrap_err();
    assert!(matches!(
        err.refusal,
        Refusal::NotAuthoritative {
            mode: WriteMode::RequestChange,
            ..
        }
    ));
}

#[test]
fn verified_fields_need_evidence_for_a_direct_set() {
    let mut s = Scenario::registered();
    let r = s.when("idp", agent(), vec![set("email", json!("ada@example.org"))]);
    assert_eq!(refusal_code(r), "invalid_transition");
    s.apply(
        source("idp"),
        with_evidence(),
        vec![set("phone", json!("+44 20 7946 0958"))],
    )
    .unwrap();
    let rec = s.state().field(&field("phone")).cloned().unwrap();
    assert_eq!(
        rec.verification.unwrap().evidence.unwrap().reference(),
        "otp-123"
    );
}

#[test]
fn clear_field_by_authority_only() {
    let mut s = Scenario::registered().given("idp", agent(), vec![set("name.given", json!("Ada"))]);
    let clear = || Change::ClearField {
        field: field("name.given"),
        expected_version: None,
    };
    assert_eq!(
        refusal_code(s.when("crm", agent(), vec![clear()])),
        "not_authoritative"
    );
    let d = s.apply(source("idp"), agent(), vec![clear()]).unwrap();
    assert_eq!(types(&d), ["field_cleared"]);
    assert_eq!(s.state().value(&field("name.given")), None);
    assert!(
        s.when("idp", agent(), vec![clear()])
            .unwrap()
            .events
            .is_empty()
    );
}

#[test]
fn every_field_kind_round_trips_through_set() {
    let mut s = Scenario::registered();
    let cases = [
        ("idp", "name.family", json!("Lovelace")),
        (
            "web_app",
            "postal_address",
            json!({"lines": ["12 St James's Sq"], "locality": "London", "postal_code": "SW1Y 4LB", "country": "GB"}),
        ),
        ("idp", "birth_date", json!("1990-12-10")),
        ("web_app", "locale", json!("en-GB")),
        ("idp", "jurisdiction", json!("GB")),
        ("idp", "verification.level", json!("substantial")),
        ("idp", "external_id.salesforce", json!("003XYZ")),
    ];
    for (by, path, json) in cases {
        s.apply(source(by), agent(), vec![set(path, json.clone())])
            .unwrap();
        assert_eq!(
            s.state().value(&field(path)).unwrap().to_json(),
            value(path, json).to_json(),
            "{path}"
        );
    }
    s.apply(
        source("web_app"),
        agent(),
        vec![set("preferences.newsletter", json!(true))],
    )
    .unwrap();
    s.apply(
        source("consent_portal"),
        agent(),
        vec![set("sharing.acme", json!(false))],
    )
    .unwrap();
    assert_eq!(
        s.state().value(&field("sharing.acme")),
        Some(&FieldValue::Sharing(false))
    );
}

#[test]
fn birth_date_in_the_future_is_invalid() {
    let mut s = Scenario::registered();
    let r = s.when("idp", agent(), vec![set("birth_date", json!("2030-01-01"))]);
    assert_eq!(refusal_code(r), "invalid_value");
}

#[test]
fn consent_is_not_a_plain_field() {
    let mut s = Scenario::registered();
    let c = Change::ClearField {
        field: field("consent.marketing"),
        expected_version: None,
    };
    assert_eq!(
        refusal_code(s.when("consent_portal", agent(), vec![c])),
        "invalid_transition"
    );
}

// ---- email / phone change with verification ----

#[test]
fn requested_email_takes_over_only_after_verification() {
    let mut s = Scenario::registered().given(
        "idp",
        with_evidence(),
        vec![set("email", json!("old@example.org"))],
    );
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("new@example.org"))],
        )
        .unwrap();
    assert_eq!(types(&d), ["change_requested"]);
    let challenge = challenge_of(&d.outcomes[0]);
    let rec = s.state().field(&field("email")).cloned().unwrap();
    assert_eq!(rec.value, Some(value("email", json!("old@example.org"))));
    assert_eq!(
        rec.pending.as_ref().unwrap().value,
        value("email", json!("new@example.org"))
    );

    let confirm = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: challenge,
        secret: secret(challenge),
    };
    let d = s
        .apply(source("web_app"), with_evidence(), vec![confirm])
        .unwrap();
    assert_eq!(types(&d), ["change_verified"]);
    let rec = s.state().field(&field("email")).cloned().unwrap();
    assert_eq!(rec.value, Some(value("email", json!("new@example.org"))));
    assert!(rec.pending.is_none());
    assert_eq!(rec.verification.unwrap().verified_by.as_str(), "web_app");
    assert_eq!(rec.version, 3);
}

#[test]
fn the_same_request_again_returns_the_open_challenge() {
    let mut s = Scenario::registered();
    let first = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("a@example.org"))],
        )
        .unwrap();
    let again = s
        .when(
            "web_app",
            subject(),
            vec![request("email", json!("a@example.org"))],
        )
        .unwrap();
    assert!(again.events.is_empty());
    assert_eq!(
        challenge_of(&again.outcomes[0]),
        challenge_of(&first.outcomes[0])
    );
    // A different value supersedes the open request.
    let other = s
        .when(
            "web_app",
            subject(),
            vec![request("email", json!("b@example.org"))],
        )
        .unwrap();
    assert_eq!(types(&other), ["change_cancelled", "change_requested"]);
}

#[test]
fn an_expired_challenge_cannot_be_confirmed() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("phone", json!("+14155552671"))],
        )
        .unwrap();
    let challenge = challenge_of(&d.outcomes[0]);
    let mut s = s.advance(Duration::hours(25));
    let confirm = Change::ConfirmVerification {
        field: field("phone"),
        challenge_id: challenge,
        secret: secret(challenge),
    };
    assert_eq!(
        refusal_code(s.when("web_app", agent(), vec![confirm])),
        "expired_challenge"
    );
    // A new request after expiry ends the old one as expired.
    let d = s
        .when(
            "web_app",
            subject(),
            vec![request("phone", json!("+14155552671"))],
        )
        .unwrap();
    assert!(matches!(
        d.events[0].event.payload,
        EventPayload::ChangeCancelled {
            reason: CancelReason::Expired,
            ..
        }
    ));
}

#[test]
fn confirm_and_cancel_need_the_right_challenge_and_writer() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("a@example.org"))],
        )
        .unwrap();
    let challenge = challenge_of(&d.outcomes[0]);
    let other = ChallengeId::from(Uuid::now_v7());
    let wrong = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: other,
        secret: secret(other),
    };
    assert_eq!(
        refusal_code(s.when("web_app", agent(), vec![wrong])),
        "invalid_transition"
    );
    let by_crm = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: challenge,
        secret: secret(challenge),
    };
    assert_eq!(
        refusal_code(s.when("crm", agent(), vec![by_crm])),
        "not_authoritative"
    );
    let cancel = Change::CancelChange {
        field: field("email"),
        challenge_id: challenge,
    };
    let d = s.apply(source("web_app"), subject(), vec![cancel]).unwrap();
    assert_eq!(types(&d), ["change_cancelled"]);
    assert!(s.state().field(&field("email")).unwrap().pending.is_none());
}

#[test]
fn only_verified_fields_take_change_requests() {
    let mut s = Scenario::registered();
    assert_eq!(
        refusal_code(s.when("idp", agent(), vec![request("name.given", json!("Ada"))])),
        "invalid_transition"
    );
    assert_eq!(
        refusal_code(s.when(
            "crm",
            agent(),
            vec![request("email", json!("a@example.org"))]
        )),
        "not_authoritative"
    );
}

#[test]
fn an_authoritative_set_supersedes_a_pending_change() {
    let mut s = Scenario::registered();
    s.apply(
        source("web_app"),
        subject(),
        vec![request("email", json!("a@example.org"))],
    )
    .unwrap();
    let d = s
        .apply(
            source("idp"),
            with_evidence(),
            vec![set("email", json!("b@example.org"))],
        )
        .unwrap();
    assert_eq!(types(&d), ["change_cancelled", "field_set"]);
    assert!(s.state().field(&field("email")).unwrap().pending.is_none());
}

// ---- consent ----

#[test]
fn consent_granted_by_its_authority_and_withdrawn_by_the_subject_anywhere() {
    let mut s = Scenario::registered();
    let marketing = Purpose::parse("marketing").unwrap();
    assert_eq!(
        refusal_code(s.when("crm", agent(), vec![grant("marketing", "DE")])),
        "not_authoritative"
    );
    let d = s
        .apply(
            source("consent_portal"),
            subject(),
            vec![grant("marketing", "DE")],
        )
        .unwrap();
    assert_eq!(types(&d), ["consent_granted"]);
    assert_eq!(
        s.state().consent_status(&marketing, &s.policy, s.now),
        ConsentStatus::Granted
    );
    assert!(
        s.when("consent_portal", subject(), vec![grant("marketing", "DE")])
            .unwrap()
            .events
            .is_empty()
    );
    // An agent at the CRM may not withdraw on its own, nor claim to be the subject: the CRM
    // does not face the subject. Someone acting on the subject's behalf may, through any source.
    assert_eq!(
        refusal_code(s.when("crm", agent(), vec![withdraw("marketing")])),
        "not_authoritative"
    );
    assert_eq!(
        refusal_code(s.when("crm", subject(), vec![withdraw("marketing")])),
        "actor_not_allowed"
    );
    // ... once a steward recorded the relationship that claim names.
    assert_eq!(
        refusal_code(s.when("crm", delegate(), vec![withdraw("marketing")])),
        "unrecorded_representative"
    );
    s.apply(
        steward(),
        agent(),
        vec![record(Relationship::Delegate, "assistant-1", None)],
    )
    .unwrap();
    assert_eq!(
        types(
            &s.when("crm", delegate(), vec![withdraw("marketing")])
                .unwrap()
        ),
        ["consent_withdrawn"]
    );
    // The subject may withdraw through any subject-facing source, whatever it may write.
    s.policy = Policy::from_toml(&DEFAULT_POLICY_TOML.replace(
        "subject_facing = [\"web_app\", \"consent_portal\"]",
        "subject_facing = [\"web_app\", \"consent_portal\", \"support_desk\"]",
    ))
    .unwrap();
    let d = s
        .apply(
            source("support_desk"),
            subject(),
            vec![withdraw("marketing")],
        )
        .unwrap();
    assert_eq!(types(&d), ["consent_withdrawn"]);
    assert_eq!(
        s.state().consent_status(&marketing, &s.policy, s.now),
        ConsentStatus::Withdrawn
    );
    assert!(
        s.when("support_desk", subject(), vec![withdraw("marketing")])
            .unwrap()
            .events
            .is_empty()
    );
}

#[test]
fn no_source_speaks_as_a_steward_and_a_steward_is_recorded_as_themself() {
    let mut s = Scenario::registered();
    let as_steward = ProvenanceInput {
        actor: Actor::new(ActorKind::Steward, "mallory").unwrap(),
        ..agent()
    };
    assert_eq!(
        refusal_code(s.when("idp", as_steward, vec![set("name.given", json!("Ada"))])),
        "actor_not_allowed"
    );
    // A steward's command says "agent-7"; the event records the steward who acted.
    let d = s
        .apply(steward(), agent(), vec![set("locale", json!("de-DE"))])
        .unwrap();
    let actor = &d.events[0].event.provenance.actor;
    assert_eq!((actor.kind(), actor.id()), (ActorKind::Steward, "jane"));
    assert_eq!(d.events[0].event.provenance.source.as_str(), "steward");
}

#[test]
fn a_confirmation_needs_the_requesters_secret() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("a@example.org"))],
        )
        .unwrap();
    let challenge = challenge_of(&d.outcomes[0]);
    let guessed = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: challenge,
        secret: ChallengeSecret::parse(&"0".repeat(64)).unwrap(),
    };
    assert_eq!(
        refusal_code(s.when("web_app", with_evidence(), vec![guessed])),
        "wrong_secret"
    );
    let under_another_key = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: challenge,
        secret: ChallengeKey::new([1; 32]).secret_for(challenge),
    };
    assert_eq!(
        refusal_code(s.when("web_app", with_evidence(), vec![under_another_key])),
        "wrong_secret"
    );
    let right = Change::ConfirmVerification {
        field: field("email"),
        challenge_id: challenge,
        secret: secret(challenge),
    };
    let d = s.when("web_app", with_evidence(), vec![right]).unwrap();
    assert_eq!(types(&d), ["change_verified"]);
}

#[test]
fn consent_expiry_and_maximum_age_are_evaluated_at_the_moment_of_use() {
    let mut s = Scenario::registered();
    let expiring = Change::GrantConsent {
        purpose: Purpose::parse("analytics").unwrap(),
        basis: LegalBasis::Consent,
        notice: NoticeRef::new("pn", "1", &"cd".repeat(32)).unwrap(),
        channel: ConsentChannel::MobileApp,
        jurisdiction: Jurisdiction::parse("FR").unwrap(),
        expires_at: Some(s.now + Duration::days(30)),
    };
    s.apply(
        source("consent_portal"),
        subject(),
        vec![expiring, grant("marketing", "FR")],
    )
    .unwrap();
    let (analytics, marketing) = (
        Purpose::parse("analytics").unwrap(),
        Purpose::parse("marketing").unwrap(),
    );
    let state = s.state();
    assert_eq!(
        state.consent_status(&analytics, &s.policy, s.now + Duration::days(29)),
        ConsentStatus::Granted
    );
    assert_eq!(
        state.consent_status(&analytics, &s.policy, s.now + Duration::days(30)),
        ConsentStatus::Expired
    );
    assert_eq!(
        state.consent_status(&marketing, &s.policy, s.now + Duration::days(729)),
        ConsentStatus::Granted
    );
    assert_eq!(
        state.consent_status(&marketing, &s.policy, s.now + Duration::days(730)),
        ConsentStatus::Stale
    );
    // Re-granting a stale consent refreshes it.
    let mut s = s.advance(Duration::days(800));
    assert_eq!(
        types(
            &s.when("consent_portal", subject(), vec![grant("marketing", "FR")])
                .unwrap()
        ),
        ["consent_granted"]
    );
    let past = Change::GrantConsent {
        purpose: analytics,
        basis: LegalBasis::Consent,
        notice: NoticeRef::new("pn", "1", &"cd".repeat(32)).unwrap(),
        channel: ConsentChannel::Web,
        jurisdiction: Jurisdiction::parse("FR").unwrap(),
        expires_at: Some(s.now - Duration::days(1)),
    };
    assert_eq!(
        refusal_code(s.when("consent_portal", subject(), vec![past])),
        "invalid_value"
    );
}

#[test]
fn a_minors_consent_needs_a_guardian() {
    let mut s =
        Scenario::registered().given("idp", agent(), vec![set("birth_date", json!("2014-06-01"))]);
    let err = s
        .when("consent_portal", subject(), vec![grant("marketing", "DE")])
        .unwrap_err();
    match err.refusal {
        Refusal::GuardianRequired {
            age,
            age_of_digital_consent,
            ..
        } => assert_eq!((age, age_of_digital_consent), (11, 16)),
        other => panic!("{other:?}"),
    }
    // A guardian claim counts once the guardianship is recorded.
    assert_eq!(
        refusal_code(s.when("consent_portal", guardian(), vec![grant("marketing", "DE")])),
        "unrecorded_representative"
    );
    s.apply(source("consent_portal"), agent(), vec![record_guardian()])
        .unwrap();
    let d = s
        .when("consent_portal", guardian(), vec![grant("marketing", "DE")])
        .unwrap();
    assert_eq!(types(&d), ["consent_granted"]);
    // Consent is not the basis for a contract: no guardian needed.
    let contract = Change::GrantConsent {
        purpose: Purpose::parse("service").unwrap(),
        basis: LegalBasis::Contract,
        notice: NoticeRef::new("pn", "1", &"ab".repeat(32)).unwrap(),
        channel: ConsentChannel::Web,
        jurisdiction: Jurisdiction::parse("DE").unwrap(),
        expires_at: None,
    };
    assert!(s.when("consent_portal", subject(), vec![contract]).is_ok());
}

#[test]
fn a_consent_given_before_the_birth_date_was_known_reads_as_needing_a_guardian() {
    let mut s =
        Scenario::registered().given("consent_portal", subject(), vec![grant("marketing", "US")]);
    s.apply(
        source("idp"),
        agent(),
        vec![set("birth_date", json!("2016-01-01"))],
    )
    .unwrap();
    let marketing = Purpose::parse("marketing").unwrap();
    assert_eq!(
        s.state().consent_status(&marketing, &s.policy, s.now),
        ConsentStatus::GuardianRequired
    );
    // Once the subject comes of age (13 in the US) it counts again.
    let later = chrono::TimeZone::with_ymd_and_hms(&chrono::Utc, 2029, 1, 2, 0, 0, 0).unwrap();
    let long_max_age = idledger_domain::policy::Policy::from_toml(
        &idledger_domain::policy::DEFAULT_POLICY_TOML
            .replace("marketing = 730", "marketing = 3650"),
    )
    .unwrap();
    assert_eq!(
        s.state().consent_status(&marketing, &long_max_age, later),
        ConsentStatus::Granted
    );
}

// ---- stewards ----

#[test]
fn steward_accepts_a_proposal_where_the_policy_allows_override() {
    let mut s =
        Scenario::registered().given("idp", agent(), vec![set("name.family", json!("Byron"))]);
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set("name.family", json!("Lovelace"))],
        )
        .unwrap();
    let id = proposal_of(&d.outcomes[0]);
    let accept = || Change::AcceptProposal { proposal_id: id };
    // web_app writes name.family itself, but is not its system of record (idp).
    assert_eq!(
        refusal_code(s.when("web_app", agent(), vec![accept()])),
        "forbidden"
    );
    // name.family is four-eyes: one steward alone may not; approved by a second, it is.
    assert_eq!(
        refusal_code(s.decide_as(steward(), agent(), vec![accept()])),
        "approval_required"
    );
    let d = s
        .apply(approved_steward(), agent(), vec![accept()])
        .unwrap();
    assert_eq!(types(&d), ["proposal_accepted", "field_set"]);
    let provenance = &d.events[1].event.provenance;
    assert_eq!(provenance.actor.id(), "jane");
    assert_eq!(provenance.approved_by.as_ref().map(|a| a.id()), Some("joe"));
    let state = s.state();
    assert_eq!(
        state.value(&field("name.family")),
        Some(&value("name.family", json!("Lovelace")))
    );
    let rec = state.field(&field("name.family")).unwrap();
    assert_eq!(rec.source.as_ref().unwrap().as_str(), "steward");
    assert!(state.proposals.is_empty());
    let r = s.decide_as(approved_steward(), agent(), vec![accept()]);
    assert_eq!(refusal_code(r), "unknown_proposal");
}

#[test]
fn a_four_eyes_field_needs_a_second_different_steward() {
    let mut s = Scenario::registered().given(
        "idp",
        agent(),
        vec![
            set("name.given", json!("Ada")),
            set("locale", json!("en-GB")),
        ],
    );
    // A set, a clear, and the same steward "approving" themself: all wait for approval.
    for changes in [
        vec![set("name.given", json!("Eve"))],
        vec![Change::ClearField {
            field: field("name.given"),
            expected_version: None,
        }],
    ] {
        assert_eq!(
            refusal_code(s.decide_as(steward(), agent(), changes.clone())),
            "approval_required"
        );
        let themself = Principal::ApprovedSteward {
            steward: Actor::new(ActorKind::Steward, "jane").unwrap(),
            approver: Actor::new(ActorKind::Steward, "jane").unwrap(),
        };
        assert_eq!(
            refusal_code(s.decide_as(themself, agent(), changes)),
            "approval_required"
        );
    }
    // A field without four_eyes needs no second steward, and records no approver.
    let d = s
        .apply(steward(), agent(), vec![set("locale", json!("de-DE"))])
        .unwrap();
    assert_eq!(d.events[0].event.provenance.approved_by, None);
    // Approved: recorded with both stewards.
    let d = s
        .apply(
            approved_steward(),
            agent(),
            vec![set("name.given", json!("Eve"))],
        )
        .unwrap();
    let p = &d.events[0].event.provenance;
    assert_eq!((p.source.as_str(), p.actor.id()), ("steward", "jane"));
    assert_eq!(p.approved_by.as_ref().map(|a| a.id()), Some("joe"));
    // Where stewards may not override at all, an approval changes nothing.
    assert_eq!(
        refusal_code(s.decide_as(
            approved_steward(),
            agent(),
            vec![set("verification.level", json!("high"))]
        )),
        "forbidden"
    );
}

#[test]
fn four_eyes_needs_steward_override() {
    let text = idledger_domain::policy::DEFAULT_POLICY_TOML.replace(
        "[fields.locale]\nsystem_of_record = \"web_app\"\nsteward_override = true\n",
        "[fields.locale]\nsystem_of_record = \"web_app\"\nsteward_override = false\nfour_eyes = true\n",
    );
    assert_ne!(text, idledger_domain::policy::DEFAULT_POLICY_TOML);
    let err = idledger_domain::policy::Policy::from_toml(&text).unwrap_err();
    assert!(
        err.to_string()
            .contains("four_eyes without steward_override"),
        "{err}"
    );
}

#[test]
fn steward_override_is_refused_where_the_policy_forbids_it() {
    let mut s = Scenario::registered().given(
        "idp",
        with_evidence(),
        vec![set("email", json!("a@example.org"))],
    );
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set("email", json!("b@example.org"))],
        )
        .unwrap();
    let id = proposal_of(&d.outcomes[0]);
    let err = s
        .decide_as(
            steward(),
            agent(),
            vec![Change::AcceptProposal { proposal_id: id }],
        )
        .unwrap_err();
    assert_eq!(err.refusal.code(), "forbidden");
    assert!(
        err.to_string()
            .contains("does not allow stewards to override email"),
        "{err}"
    );
    let direct = s.decide_as(
        steward(),
        agent(),
        vec![set("email", json!("c@example.org"))],
    );
    assert_eq!(refusal_code(direct), "forbidden");
    let reject = Change::RejectProposal {
        proposal_id: id,
        reason: "CRM typo".to_owned(),
    };
    let d = s.apply(steward(), agent(), vec![reject]).unwrap();
    assert_eq!(types(&d), ["proposal_rejected"]);
    assert!(s.state().proposals.is_empty());
}

/// A customer whose verified email (idp's) the CRM proposes to change; the proposal's id.
fn crm_proposes_an_email() -> (Scenario, ProposalId) {
    let mut s = Scenario::registered().given(
        "idp",
        with_evidence(),
        vec![set("email", json!("a@example.org"))],
    );
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set("email", json!("b@example.org"))],
        )
        .unwrap();
    let id = proposal_of(&d.outcomes[0]);
    (s, id)
}

#[test]
fn the_system_of_record_accepts_a_proposal_stewards_may_not() {
    let (mut s, id) = crm_proposes_an_email();
    let accept = || Change::AcceptProposal { proposal_id: id };
    // email requires verification: the system of record vouches for the value as it would
    // for its own set.
    let err = s
        .decide_as(source("idp"), agent(), vec![accept()])
        .unwrap_err();
    assert_eq!(err.refusal.code(), "invalid_transition");
    assert!(err.to_string().contains("evidence"), "{err}");
    let d = s
        .apply(source("idp"), with_evidence(), vec![accept()])
        .unwrap();
    assert_eq!(types(&d), ["proposal_accepted", "field_set"]);
    assert_eq!(
        d.outcomes,
        [Outcome::ProposalResolved {
            proposal_id: id,
            accepted: true
        }]
    );
    match &d.events[1].event.payload {
        EventPayload::FieldSet {
            mode, proposal_id, ..
        } => {
            assert_eq!(*mode, SetMode::Authoritative);
            assert_eq!(*proposal_id, Some(id));
        }
        other => panic!("expected field_set, got {other:?}"),
    }
    assert_eq!(d.events[1].event.provenance.source.as_str(), "idp");
    let state = s.state();
    assert_eq!(
        state.value(&field("email")),
        Some(&value("email", json!("b@example.org")))
    );
    assert!(state.proposals.is_empty());
    let again = s.decide_as(source("idp"), with_evidence(), vec![accept()]);
    assert_eq!(refusal_code(again), "unknown_proposal");
}

#[test]
fn the_system_of_record_rejects_a_proposal() {
    let (mut s, id) = crm_proposes_an_email();
    let reject = Change::RejectProposal {
        proposal_id: id,
        reason: "not the customer's address".to_owned(),
    };
    let d = s.apply(source("idp"), agent(), vec![reject]).unwrap();
    assert_eq!(types(&d), ["proposal_rejected"]);
    assert_eq!(
        d.outcomes,
        [Outcome::ProposalResolved {
            proposal_id: id,
            accepted: false
        }]
    );
    let state = s.state();
    assert_eq!(
        state.value(&field("email")),
        Some(&value("email", json!("a@example.org")))
    );
    assert!(state.proposals.is_empty());
}

#[test]
fn no_other_source_decides_a_proposal() {
    let (mut s, id) = crm_proposes_an_email();
    for other in ["crm", "web_app", "cdp", "support_portal"] {
        for change in [
            Change::AcceptProposal { proposal_id: id },
            Change::RejectProposal {
                proposal_id: id,
                reason: "no".to_owned(),
            },
        ] {
            let err = s
                .decide_as(source(other), with_evidence(), vec![change])
                .unwrap_err();
            assert_eq!(err.refusal.code(), "forbidden", "{other}");
            assert!(
                err.to_string().contains("system of record of email (idp)"),
                "{other}: {err}"
            );
        }
    }
    // Administrators restrict processing; proposals are not theirs either.
    let r = s.decide_as(
        admin(),
        agent(),
        vec![Change::AcceptProposal { proposal_id: id }],
    );
    assert_eq!(refusal_code(r), "forbidden");
    // The system of record of another field (idp owns email) is not this one's (web_app's).
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set(
                "postal_address",
                json!({"lines": ["12 St James's Sq"], "locality": "London", "postal_code": "SW1Y 4LB", "country": "GB"}),
            )],
        )
        .unwrap();
    let proposal_id = proposal_of(&d.outcomes[0]);
    let accept = || Change::AcceptProposal { proposal_id };
    assert_eq!(
        refusal_code(s.decide_as(source("idp"), agent(), vec![accept()])),
        "forbidden"
    );
    let d = s.apply(source("web_app"), agent(), vec![accept()]).unwrap();
    assert_eq!(types(&d), ["proposal_accepted", "field_set"]);
}

#[test]
fn stewards_do_not_act_as_sources() {
    let mut s = Scenario::registered();
    let r = s.decide_as(steward(), agent(), vec![grant("marketing", "DE")]);
    assert_eq!(refusal_code(r), "forbidden");
}

// ---- echoes ----

#[test]
fn an_echo_of_our_own_delivery_is_a_no_op() {
    let mut s = Scenario::registered();
    let first = s
        .apply(
            source("idp"),
            agent(),
            vec![set("name.given", json!("Ada"))],
        )
        .unwrap();
    s.apply(
        source("idp"),
        agent(),
        vec![set("name.given", json!("Augusta"))],
    )
    .unwrap();
    // The CRM echoes back the first delivery after the value moved on.
    let mut echo = agent();
    echo.causation_id = Some(first.events[0].id.as_uuid());
    let d = s
        .when("crm", echo, vec![set("name.given", json!("Ada"))])
        .unwrap();
    assert!(d.events.is_empty());
    assert_eq!(
        d.outcomes,
        [Outcome::Unchanged {
            field: field("name.given")
        }]
    );
    // Without the causation id it is a fresh proposal.
    let d = s
        .when("crm", agent(), vec![set("name.given", json!("Ada"))])
        .unwrap();
    assert_eq!(types(&d), ["value_proposed"]);
}

// ---- erasure ----

/// A registered customer with a verified email, a name, a consent, an open proposal and a
/// pending change: something of every kind for an erasure to remove.
fn full_record() -> Scenario {
    let mut s = Scenario::registered()
        .given(
            "idp",
            with_evidence(),
            vec![
                set("email", json!("ada@example.org")),
                set("name.given", json!("Ada")),
            ],
        )
        .given("consent_portal", subject(), vec![grant("marketing", "DE")])
        .given("crm", agent(), vec![set("name.family", json!("Lovelace"))])
        .given(
            "web_app",
            subject(),
            vec![request("email", json!("ada@lovelace.example"))],
        );
    s.now += Duration::hours(1);
    s
}

#[test]
fn erasure_clears_the_record_but_keeps_the_registration() {
    let mut s = full_record();
    let before = s.state();
    assert!(!before.fields.is_empty() && !before.consents.is_empty());
    assert_eq!(before.proposals.len(), 1);
    let e = s.erase("admin", "subject's request 42").unwrap();
    assert_eq!(e.event.payload.type_name(), "customer_erased");
    assert_eq!(e.event.payload.field(), None);
    assert_eq!(e.stream_version, before.stream_version + 1);
    assert_eq!(e.id.as_uuid().get_version_num(), 7);
    assert_eq!(e.event.provenance.recorded_at, s.now);

    let after = s.state();
    assert!(after.registered);
    assert_eq!(after.registered_at, before.registered_at);
    assert_eq!(after.stream_version, e.stream_version);
    assert!(after.fields.is_empty());
    assert!(after.consents.is_empty());
    assert!(after.proposals.is_empty());
    assert_eq!(
        after.erased,
        Some(Erasure {
            at: s.now,
            source: idledger_domain::ids::SourceId::parse("admin").unwrap(),
            reason: "subject's request 42".to_owned(),
        })
    );
    let purpose = Purpose::parse("marketing").unwrap();
    assert_eq!(
        after.consent_status(&purpose, &s.policy, s.now),
        ConsentStatus::NeverGranted
    );
}

#[test]
fn an_erased_record_refuses_every_command() {
    let mut s = full_record();
    let erased_at = s.now;
    s.erase("admin", "subject's request").unwrap();
    s.now += Duration::days(1);
    let proposal = ProposalId::from(Uuid::now_v7());
    let attempts: Vec<(Principal, ProvenanceInput, Vec<Change>)> = vec![
        (source("idp"), agent(), vec![Change::Register]),
        (
            source("idp"),
            with_evidence(),
            vec![set("email", json!("ada@example.org"))],
        ),
        (
            source("idp"),
            agent(),
            vec![Change::ClearField {
                field: field("name.given"),
                expected_version: None,
            }],
        ),
        (
            source("web_app"),
            subject(),
            vec![request("email", json!("new@example.org"))],
        ),
        (
            source("consent_portal"),
            subject(),
            vec![grant("marketing", "DE")],
        ),
        (source("crm"), subject(), vec![withdraw("marketing")]),
        (
            source("crm"),
            agent(),
            vec![Change::ProposeValue {
                field: field("name.family"),
                value: value("name.family", json!("King")),
            }],
        ),
        (
            steward(),
            agent(),
            vec![Change::AcceptProposal {
                proposal_id: proposal,
            }],
        ),
        // Even a malformed command: the record's erasure is the answer that matters.
        (source("idp"), agent(), vec![]),
    ];
    for (principal, provenance, changes) in attempts {
        let ops: Vec<&str> = changes.iter().map(Change::op).collect();
        let refused = s.decide_as(principal, provenance, changes).unwrap_err();
        assert_eq!(
            refused.refusal,
            Refusal::Erased { erased_at },
            "{ops:?} was not refused as erased"
        );
        assert_eq!(refused.refusal.code(), "erased");
        assert_eq!(refused.change_index, None);
    }
}

#[test]
fn erasure_needs_a_registered_record_and_a_reason_and_happens_once() {
    let mut s = Scenario::new();
    assert_eq!(
        s.erase("admin", "request").unwrap_err().refusal,
        Refusal::NotRegistered
    );
    assert!(s.events.is_empty());
    let mut s = Scenario::registered();
    for reason in ["", "   ", &"x".repeat(1001)] {
        let refused = s.erase("admin", reason).unwrap_err();
        assert_eq!(refused.refusal.code(), "invalid_value");
    }
    let first = s.erase("admin", "request").unwrap();
    let erased_at = first.event.provenance.recorded_at;
    s.now += Duration::minutes(5);
    let again = s.erase("steward", "request again").unwrap_err();
    assert_eq!(again.refusal, Refusal::Erased { erased_at });
    assert_eq!(s.events.len(), 2);
}

#[test]
fn an_erased_stream_folds_to_the_same_state_from_what_is_left_in_the_clear() {
    // After erasure only each event's type, position and time stay readable, and the erasure
    // event itself; folding those must give the state the live erasure produced.
    let mut s = full_record();
    s.erase("admin", "request").unwrap();
    let live = s.state();
    let (erasure, earlier) = s.events.split_last().unwrap();
    let from_metadata = earlier.iter().fold(CustomerState::default(), |state, e| {
        evolve_unreadable(
            state,
            e.stream_version,
            e.event.payload.type_name(),
            e.event.provenance.recorded_at,
        )
    });
    assert_eq!(evolve(from_metadata, erasure), live);
}

// ---- ids and schema ----

#[test]
fn minted_ids_are_distinct_v7_and_versions_consecutive() {
    let mut s = Scenario::registered();
    let d = s
        .apply(
            source("idp"),
            with_evidence(),
            vec![
                set("name.given", json!("Ada")),
                set("email", json!("a@example.org")),
                set("phone", json!("+447700900123")),
            ],
        )
        .unwrap();
    let ids: std::collections::BTreeSet<Uuid> = d.events.iter().map(|e| e.id.as_uuid()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.get_version_num() == 7));
    let versions: Vec<u64> = d.events.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, [2, 3, 4]);
    assert!(
        d.events
            .iter()
            .all(|e| e.event.policy_version == *s.policy.version())
    );
    assert!(
        d.events
            .iter()
            .all(|e| e.event.provenance.source.as_str() == "idp")
    );
}

#[test]
fn every_event_type_round_trips_through_the_stored_schema() {
    let mut s = Scenario::registered().given(
        "idp",
        with_evidence(),
        vec![set("email", json!("a@example.org"))],
    );
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("b@example.org"))],
        )
        .unwrap();
    let c = challenge_of(&d.outcomes[0]);
    s.apply(
        source("web_app"),
        with_evidence(),
        vec![Change::ConfirmVerification {
            field: field("email"),
            challenge_id: c,
            secret: secret(c),
        }],
    )
    .unwrap();
    s.apply(
        source("idp"),
        agent(),
        vec![
            set("name.given", json!("Ada")),
            Change::ClearField {
                field: field("name.given"),
                expected_version: None,
            },
        ],
    )
    .unwrap();
    s.apply(
        source("consent_portal"),
        subject(),
        vec![grant("marketing", "DE"), withdraw("marketing")],
    )
    .unwrap();
    let p1 = proposal_of(
        &s.apply(source("crm"), agent(), vec![set("name.family", json!("A"))])
            .unwrap()
            .outcomes[0],
    );
    let p2 = proposal_of(
        &s.apply(source("crm"), agent(), vec![set("name.family", json!("B"))])
            .unwrap()
            .outcomes[0],
    );
    s.apply(
        approved_steward(),
        agent(),
        vec![Change::AcceptProposal { proposal_id: p1 }],
    )
    .unwrap();
    s.apply(
        steward(),
        agent(),
        vec![Change::RejectProposal {
            proposal_id: p2,
            reason: "no".into(),
        }],
    )
    .unwrap();
    s.apply(
        source("web_app"),
        subject(),
        vec![request("email", json!("c@example.org"))],
    )
    .unwrap();
    let d = s
        .apply(
            source("web_app"),
            subject(),
            vec![request("email", json!("d@example.org"))],
        )
        .unwrap();
    assert_eq!(types(&d), ["change_cancelled", "change_requested"]);
    s.apply(
        steward(),
        agent(),
        vec![act(StewardAction::Repush, "name.family", None)],
    )
    .unwrap();
    s.apply(
        source("web_app"),
        agent(),
        vec![set("preferences.newsletter", json!(true))],
    )
    .unwrap();
    s.policy = retention_policy();
    s.now += Duration::days(731);
    assert!(!s.expire().is_empty());
    s.apply(admin(), agent(), vec![restrict("art. 18")])
        .unwrap();
    s.apply(
        admin(),
        agent(),
        vec![Change::LiftRestriction {
            reason: "resolved".into(),
        }],
    )
    .unwrap();
    let recorded = s
        .apply(
            steward(),
            agent(),
            vec![record(Relationship::Delegate, "assistant-1", None)],
        )
        .unwrap();
    let Outcome::Relationship {
        relationship_id, ..
    } = recorded.outcomes[0]
    else {
        panic!("{:?}", recorded.outcomes);
    };
    s.apply(
        steward(),
        agent(),
        vec![Change::EndRelationship {
            relationship_id,
            reason: "revoked".into(),
        }],
    )
    .unwrap();
    s.erase("admin", "subject's request 42").unwrap();

    let seen: std::collections::BTreeSet<&str> = s
        .events
        .iter()
        .map(|e| e.event.payload.type_name())
        .collect();
    // A merge's events take two records: `crates/app/tests/merges.rs` records and reads them.
    let merge_types = [
        "customer_merged",
        "merged_into",
        "customer_unmerged",
        "unmerged_from",
        "field_adopted",
        "relationship_adopted",
    ];
    assert!(merge_types.iter().all(|t| !seen.contains(t)));
    assert_eq!(
        seen.len() + merge_types.len(),
        idledger_domain::schema::EVENT_TYPES.len(),
        "{seen:?}"
    );
    for envelope in &s.events {
        let stored = StoredEvent::from_event(&envelope.event).unwrap();
        assert_eq!(stored.event_type, envelope.event.payload.type_name());
        assert_eq!(stored.clone().into_event().unwrap(), envelope.event);
    }
    let stored = StoredEvent::from_event(&s.events[0].event).unwrap();
    assert!(upcast(&stored.event_type, 99, stored.data.clone()).is_err());
    assert!(upcast("field_renamed", 1, stored.data.clone()).is_err());
    let mismatched = StoredEvent {
        event_type: "field_set".into(),
        ..stored
    };
    assert!(mismatched.into_event().is_err());
}

fn act(action: StewardAction, field_path: &str, reason: Option<&str>) -> Change {
    Change::ActOnException {
        exception_id: uuid::Uuid::now_v7(),
        consumer_id: "crm_sync".to_owned(),
        field: Some(field(field_path)),
        action,
        reason: reason.map(str::to_owned),
        proposal_id: None,
    }
}

#[test]
fn a_route_carries_the_proposal_to_its_system_of_record_and_changes_nothing() {
    let (mut s, id) = crm_proposes_an_email();
    let before = s.state();
    let route = |proposal_id| Change::ActOnException {
        exception_id: uuid::Uuid::now_v7(),
        consumer_id: "crm".to_owned(),
        field: Some(field("email")),
        action: StewardAction::Route,
        reason: None,
        proposal_id,
    };
    let d = s.apply(steward(), agent(), vec![route(Some(id))]).unwrap();
    assert_eq!(types(&d), ["steward_acted"]);
    match &d.events[0].event.payload {
        EventPayload::StewardActed {
            routed: Some(routed),
            repush: None,
            ..
        } => {
            assert_eq!(routed.proposal_id, id);
            assert_eq!(routed.value, value("email", json!("b@example.org")));
            assert_eq!(routed.proposed_by.as_str(), "crm");
            assert_eq!(routed.system_of_record.as_str(), "idp");
        }
        other => panic!("expected a routed steward_acted, got {other:?}"),
    }
    let after = s.state();
    assert_eq!(after.proposals, before.proposals);
    assert_eq!(after.value(&field("email")), before.value(&field("email")));
    // A route names an open proposal about its field; only stewards route.
    let r = s.decide_as(steward(), agent(), vec![route(None)]);
    assert_eq!(refusal_code(r), "invalid_command");
    let unknown = ProposalId::from(uuid::Uuid::now_v7());
    let r = s.decide_as(steward(), agent(), vec![route(Some(unknown))]);
    assert_eq!(refusal_code(r), "unknown_proposal");
    let r = s.decide_as(source("idp"), agent(), vec![route(Some(id))]);
    assert_eq!(refusal_code(r), "forbidden");
}

#[test]
fn a_repush_carries_the_fields_current_value_and_changes_nothing() {
    let mut s = Scenario::registered();
    s.apply(
        source("idp"),
        with_evidence(),
        vec![set("email", json!("a@example.org"))],
    )
    .unwrap();
    s.apply(
        source("web_app"),
        subject(),
        vec![request("email", json!("b@example.org"))],
    )
    .unwrap();
    let before = s.state();
    let d = s
        .apply(
            steward(),
            agent(),
            vec![act(StewardAction::Repush, "email", Some("CRM drifted"))],
        )
        .unwrap();
    assert_eq!(types(&d), ["steward_acted"]);
    let EventPayload::StewardActed { repush, action, .. } = &d.events[0].event.payload else {
        panic!("not a steward action: {:?}", d.events[0].event.payload);
    };
    assert_eq!(*action, StewardAction::Repush);
    let repush = repush.clone().expect("a re-push carries the value");
    // The pending change moved the field's version, not its value: the value's version goes.
    assert_eq!(repush.version, 1);
    assert_eq!(
        repush.value,
        RepushedValue::Set {
            value: value("email", json!("a@example.org"))
        }
    );
    assert_eq!(s.state().fields, before.fields);
    assert_eq!(
        s.events.last().unwrap().event.provenance.source.as_str(),
        "steward"
    );
}

#[test]
fn steward_actions_are_checked() {
    let mut s = Scenario::registered();
    let never_set = s.decide_as(
        steward(),
        agent(),
        vec![act(StewardAction::Repush, "phone", None)],
    );
    assert_eq!(refusal_code(never_set), "invalid_transition");
    let no_reason = s.decide_as(
        steward(),
        agent(),
        vec![act(StewardAction::Dismiss, "phone", None)],
    );
    assert_eq!(refusal_code(no_reason), "invalid_value");
    let by_source = s.decide_as(
        source("crm"),
        agent(),
        vec![act(StewardAction::Dismiss, "phone", Some("not ours"))],
    );
    assert_eq!(refusal_code(by_source), "forbidden");
    let dismissed = s
        .apply(
            steward(),
            agent(),
            vec![act(
                StewardAction::Dismiss,
                "phone",
                Some("known CRM quirk"),
            )],
        )
        .unwrap();
    assert_eq!(types(&dismissed), ["steward_acted"]);
    assert_eq!(
        dismissed.events[0].event.payload.field(),
        Some(field("phone")),
        "steward actions are indexed under their field, so they show in its history"
    );
}

// ---- retention ----

fn expiring() -> Scenario {
    let mut s = Scenario::registered()
        .given(
            "web_app",
            agent(),
            vec![set("preferences.newsletter", json!(true))],
        )
        .given("consent_portal", subject(), vec![grant("marketing", "DE")])
        .given("consent_portal", subject(), vec![grant("analytics", "DE")])
        .given("idp", agent(), vec![set("name.given", json!("Ada"))]);
    s.policy = retention_policy();
    s
}

fn expired_fields(events: &[idledger_domain::event::EventEnvelope]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.event.payload {
            EventPayload::FieldExpired { field, .. } => field.to_string(),
            other => panic!("expected field_expired, got {}", other.type_name()),
        })
        .collect()
}

#[test]
fn nothing_expires_before_its_retention_period() {
    let mut s = expiring().advance(Duration::days(730) - Duration::seconds(1));
    assert!(s.expire().is_empty());
    // Without retention in the policy nothing ever expires.
    let mut s = expiring().advance(Duration::days(100_000));
    s.policy = Policy::default_policy().unwrap();
    assert!(s.expire().is_empty());
}

#[test]
fn a_value_unchanged_for_its_retention_period_expires_and_is_cleared() {
    let mut s = expiring().advance(Duration::days(730));
    let before = s.state();
    let events = s.expire();
    assert_eq!(expired_fields(&events), ["preferences.newsletter"]);
    let e = &events[0];
    assert_eq!(e.stream_version, before.stream_version + 1);
    let EventPayload::FieldExpired { version, .. } = e.event.payload else {
        unreachable!()
    };
    assert_eq!(
        version,
        before.field_version(&field("preferences.newsletter")) + 1
    );
    let prov = &e.event.provenance;
    assert_eq!(prov.source.as_str(), "retention");
    assert_eq!(prov.actor.kind(), ActorKind::System);
    assert_eq!(prov.recorded_at, s.now);
    assert_eq!(e.event.policy_version, *s.policy.version());
    assert!(
        prov.reason
            .as_deref()
            .unwrap()
            .contains(s.policy.version().as_str())
    );
    let after = s.state();
    let rec = after.field(&field("preferences.newsletter")).unwrap();
    assert_eq!(rec.value, None);
    assert!(
        rec.recent.is_empty(),
        "no digest of the expired value is kept"
    );
    assert_eq!(rec.value_version, version);
    let key = idledger_domain::hashing::HashKey::from_hex(&"11".repeat(32)).unwrap();
    let held = after.held(&field("preferences.newsletter"), &key).unwrap();
    assert_eq!(held.value_hash, None);
    // Fields without retention stay; expiring again finds nothing.
    assert!(after.value(&field("name.given")).is_some());
    assert!(s.expire().is_empty());
}

#[test]
fn a_value_changed_recently_does_not_expire() {
    let s = expiring().advance(Duration::days(300));
    let mut s = s.given(
        "web_app",
        agent(),
        vec![set("preferences.newsletter", json!(false))],
    );
    s.now += Duration::days(400);
    assert!(s.expire().is_empty());
    s.now += Duration::days(330);
    assert_eq!(expired_fields(&s.expire()), ["preferences.newsletter"]);
}

#[test]
fn a_consent_not_renewed_expires_and_its_record_is_cleared() {
    let mut s = expiring().advance(Duration::days(1095));
    let before = s.state();
    let marketing = Purpose::parse("marketing").unwrap();
    let old_version = before.consents[&marketing].version;
    let events = s.expire();
    assert_eq!(
        expired_fields(&events),
        ["preferences.newsletter", "consent.marketing"]
    );
    let after = s.state();
    assert!(!after.consents.contains_key(&marketing));
    assert_eq!(
        after.consent_status(&marketing, &s.policy, s.now),
        ConsentStatus::NeverGranted
    );
    // Analytics has no retention: kept (stale under its maximum age, which is not retention).
    assert!(
        after
            .consents
            .contains_key(&Purpose::parse("analytics").unwrap())
    );
    // A new grant continues the consent's versions, so consumers order it after the expiry.
    assert_eq!(after.consent_version(&marketing), old_version + 1);
    let d = s
        .apply(
            source("consent_portal"),
            subject(),
            vec![grant("marketing", "DE")],
        )
        .unwrap();
    assert_eq!(
        d.outcomes[0],
        Outcome::Applied {
            field: field("consent.marketing"),
            version: old_version + 2
        }
    );
    assert_eq!(
        s.state().consent_status(&marketing, &s.policy, s.now),
        ConsentStatus::Granted
    );
}

#[test]
fn a_withdrawn_consent_expires_too_and_a_renewed_one_does_not() {
    let s = expiring().advance(Duration::days(600));
    let mut s = s
        .given("consent_portal", subject(), vec![withdraw("marketing")])
        .advance(Duration::days(1094));
    assert_eq!(expired_fields(&s.expire()), ["preferences.newsletter"]);
    s.now += Duration::days(1);
    assert_eq!(expired_fields(&s.expire()), ["consent.marketing"]);
}

#[test]
fn an_erased_or_unknown_record_expires_nothing() {
    let mut s = expiring();
    s.erase("admin", "subject's request").unwrap();
    s.now += Duration::days(5000);
    assert!(s.expire().is_empty());
    let mut s = Scenario::new().advance(Duration::days(5000));
    s.policy = retention_policy();
    assert!(s.expire().is_empty());
}

#[test]
fn fold_agrees_with_the_state_expiry_was_decided_on() {
    let mut s = expiring().advance(Duration::days(1095));
    let events = s.expire();
    let mut live = fold(&s.events[..s.events.len() - events.len()]);
    for e in &events {
        live = evolve(live, e);
    }
    assert_eq!(live, s.state());
    // Through the stored schema too.
    let restored: Vec<_> = s
        .events
        .iter()
        .map(|e| idledger_domain::event::EventEnvelope {
            event: StoredEvent::from_event(&e.event)
                .unwrap()
                .into_event()
                .unwrap(),
            ..e.clone()
        })
        .collect();
    assert_eq!(fold(&restored), s.state());
    // An erasure after an expiry folds to the same state as from the clear metadata alone.
    s.erase("admin", "subject's request").unwrap();
    let erased = s.state();
    let last = s.events.last().unwrap();
    let mut unreadable = CustomerState::default();
    for e in &s.events[..s.events.len() - 1] {
        unreadable = evolve_unreadable(
            unreadable,
            e.stream_version,
            e.event.payload.type_name(),
            e.event.provenance.recorded_at,
        );
    }
    assert_eq!(evolve(unreadable, last), erased);
}

// ---- restriction of processing ----

fn admin() -> Principal {
    Principal::Admin(Actor::new(ActorKind::Agent, "dpo@example.org").unwrap())
}

fn restrict(reason: &str) -> Change {
    Change::RestrictProcessing {
        reason: reason.to_owned(),
    }
}

#[test]
fn an_administrator_restricts_and_lifts_processing_once_each() {
    let mut s = Scenario::registered();
    let d = s
        .apply(admin(), agent(), vec![restrict("art. 18 request #7")])
        .unwrap();
    assert_eq!(types(&d), ["processing_restricted"]);
    assert_eq!(
        d.outcomes,
        [Outcome::Restriction {
            restricted: true,
            changed: true
        }]
    );
    let event = &d.events[0].event;
    assert_eq!(event.provenance.source.as_str(), "admin");
    assert_eq!(event.provenance.actor.id(), "dpo@example.org");
    let restriction = s.state().restricted.unwrap();
    assert_eq!(restriction.reason, "art. 18 request #7");
    assert_eq!(restriction.since, s.now);
    // The same state again records nothing.
    let again = s.when_as(admin(), vec![restrict("again")]).unwrap();
    assert!(again.events.is_empty());
    // The record still takes commands while restricted: it is kept, only not used.
    s.apply(
        source("idp"),
        agent(),
        vec![set("name.given", json!("Ada"))],
    )
    .unwrap();
    let lift = Change::LiftRestriction {
        reason: "resolved".to_owned(),
    };
    let d = s.apply(admin(), agent(), vec![lift.clone()]).unwrap();
    assert_eq!(types(&d), ["restriction_lifted"]);
    assert!(s.state().restricted.is_none());
    assert!(s.when_as(admin(), vec![lift]).unwrap().events.is_empty());
    // Folding the log gives the same state.
    assert_eq!(idledger_domain::state::fold(&s.events), s.state());
}

#[test]
fn only_administrators_restrict_and_they_do_nothing_else() {
    let mut s = Scenario::registered();
    for by in [source("idp"), steward()] {
        assert_eq!(
            refusal_code(s.when_as(by, vec![restrict("x")])),
            "forbidden"
        );
    }
    assert_eq!(
        refusal_code(s.when_as(admin(), vec![set("name.given", json!("Ada"))])),
        "forbidden"
    );
    assert_eq!(
        refusal_code(s.when_as(admin(), vec![restrict("   ")])),
        "invalid_value"
    );
    s.erase("admin", "subject's request").unwrap();
    assert_eq!(
        refusal_code(s.when_as(admin(), vec![restrict("x")])),
        "erased"
    );
}

#[test]
fn a_restricted_record_expires_nothing_until_the_restriction_is_lifted() {
    let mut s = expiring();
    s.apply(admin(), agent(), vec![restrict("art. 18 request #9")])
        .unwrap();
    s.now += Duration::days(5000);
    assert!(s.expire().is_empty());
    s.apply(
        admin(),
        agent(),
        vec![Change::LiftRestriction {
            reason: "claim settled".into(),
        }],
    )
    .unwrap();
    assert_eq!(
        expired_fields(&s.expire()),
        ["preferences.newsletter", "consent.marketing"]
    );
}
