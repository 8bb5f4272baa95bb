//! Sync exceptions: the delivery vocabulary's wire names, and the exception lifecycle as
//! given(commands) / when(command) / then(events | refusal).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use chrono::{DateTime, Duration, Utc};
use idledger_domain::command::Change;
use idledger_domain::decide::Outcome;
use idledger_domain::delivery::{
    AUTO_RESOLVER, AckStatus, ChannelKind, ConsumerId, ExceptionKind, ExceptionStatus,
    ExceptionSubject, HandoffKind, OtherCustomer, Relation, Resolution,
};
use idledger_domain::event::StewardAction;
use idledger_domain::exception::{
    Closing, ExceptionCommand, ExceptionEvent, ExceptionKey, ExceptionRefusal, ExceptionState,
    LastAction, accept_change, action_change, decide, decided_by, evolve, fold, steward_changes,
};
use idledger_domain::ids::{CustomerId, EventId, ProposalId, SourceId};
use proptest::prelude::*;
use serde_json::json;
use support::*;
use uuid::Uuid;

// ---- helpers ----

fn customer() -> CustomerId {
    CustomerId::parse("0195a2b3-4c5d-7e6f-8a9b-0c1d2e3f4a5b").unwrap()
}

/// The n-th id a caller would pick for a new exception (distinct, deterministic).
/// The other customer of a duplicate pair (a higher id than `customer()`).
fn other_customer() -> CustomerId {
    CustomerId::parse("0195a2b3-4c5d-7e6f-8a9b-0c1d2e3f4a5c").unwrap()
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(0x0195_a2b3_4c5d_7000_8000_0000_0000_0000 | n)
}

fn at(minutes: i64) -> DateTime<Utc> {
    t0() + Duration::minutes(minutes)
}

/// The subject of the right side for `kind`: the consumer `crm-sync`, or the source `web_app`.
fn subject_for(kind: ExceptionKind) -> ExceptionSubject {
    if kind.about_source() {
        ExceptionSubject::Source(SourceId::parse("web_app").unwrap())
    } else if kind.about_customers() {
        ExceptionSubject::Customer(OtherCustomer::new(other_customer()))
    } else {
        ExceptionSubject::Consumer(ConsumerId::parse("crm-sync").unwrap())
    }
}

fn key(kind: ExceptionKind, path: Option<&str>) -> ExceptionKey {
    key_of(kind, customer(), path)
}

fn key_of(kind: ExceptionKind, customer: CustomerId, path: Option<&str>) -> ExceptionKey {
    ExceptionKey::new(kind, subject_for(kind), customer, path.map(field)).unwrap()
}

fn divergent_email() -> ExceptionKey {
    key(ExceptionKind::Divergent, Some("email"))
}

fn raise(key: &ExceptionKey, new_id: u128, minute: i64) -> ExceptionCommand {
    ExceptionCommand::Raise {
        new_id: id(new_id),
        key: key.clone(),
        proposal_id: None,
        detail: json!({ "seen": minute }),
        at: at(minute),
    }
}

fn raise_proposal(proposal: Option<ProposalId>, new_id: u128, minute: i64) -> ExceptionCommand {
    ExceptionCommand::Raise {
        new_id: id(new_id),
        key: key(ExceptionKind::Proposal, Some("name.family")),
        proposal_id: proposal,
        detail: json!({ "proposal_id": proposal, "proposed_by": "web_app" }),
        at: at(minute),
    }
}

fn repush(reason: Option<&str>) -> ExceptionCommand {
    ExceptionCommand::Repush {
        by: "steward:ada".to_owned(),
        event_id: Some(EventId::from_uuid(id(900))),
        reason: reason.map(str::to_owned),
        at: at(30),
    }
}

fn accept() -> ExceptionCommand {
    ExceptionCommand::Accept {
        by: "steward:ada".to_owned(),
        note: "accepted into the record: email is at version 3".to_owned(),
        at: at(40),
    }
}

fn dismiss(reason: Option<&str>) -> ExceptionCommand {
    ExceptionCommand::Dismiss {
        by: "steward:ada".to_owned(),
        reason: reason.map(str::to_owned),
        at: at(50),
    }
}

fn auto_close() -> ExceptionCommand {
    ExceptionCommand::CloseAutomatically {
        note: "the consumer acknowledged the record's value".to_owned(),
        at: at(60),
    }
}

/// The state after deciding and applying `commands` in order, from nothing; a refusal here is
/// a test bug.
#[track_caller]
fn given(commands: &[ExceptionCommand]) -> Option<ExceptionState> {
    commands.iter().fold(None, |state, command| {
        let events = decide(state.as_ref(), command).unwrap();
        events.iter().fold(state, evolve)
    })
}

#[track_caller]
fn open_state(commands: &[ExceptionCommand]) -> ExceptionState {
    given(commands).expect("the commands open an exception")
}

/// Decides without applying.
fn when(
    state: &Option<ExceptionState>,
    command: &ExceptionCommand,
) -> Result<Vec<ExceptionEvent>, ExceptionRefusal> {
    decide(state.as_ref(), command)
}

/// The event names, for compact `then` assertions.
fn names(events: &[ExceptionEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            ExceptionEvent::Opened { .. } => "opened",
            ExceptionEvent::Recurred { .. } => "recurred",
            ExceptionEvent::Repushed(_) => "repushed",
            ExceptionEvent::Assigned { to: Some(_), .. } => "assigned",
            ExceptionEvent::Assigned { to: None, .. } => "unassigned",
            ExceptionEvent::Routed(_) => "routed",
            ExceptionEvent::Closed(c) => match c.resolution {
                Resolution::Accepted => "closed:accepted",
                Resolution::Dismissed => "closed:dismissed",
                Resolution::Auto => "closed:auto",
            },
        })
        .collect()
}

#[track_caller]
fn refused(result: Result<Vec<ExceptionEvent>, ExceptionRefusal>) -> ExceptionRefusal {
    match result {
        Ok(events) => panic!("expected a refusal, got {:?}", names(&events)),
        Err(refusal) => refusal,
    }
}

// ---- the delivery vocabulary ----

/// Every variant's wire name, as the store's columns and the API have them.
#[test]
fn every_variant_round_trips_through_its_wire_name() {
    #[track_caller]
    fn check<T>(all: &[T], expect: &[&str], as_str: fn(T) -> &'static str)
    where
        T: Copy
            + PartialEq
            + std::fmt::Debug
            + std::fmt::Display
            + std::str::FromStr<Err = idledger_domain::values::ValueError>
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let names: Vec<&str> = all.iter().map(|v| as_str(*v)).collect();
        assert_eq!(names, expect);
        for v in all {
            let name = as_str(*v);
            assert_eq!(name.parse::<T>().unwrap(), *v);
            assert_eq!(v.to_string(), name);
            let json = serde_json::to_string(v).unwrap();
            assert_eq!(json, format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), *v);
            // Exact match only: the store compares the column as text.
            assert!(name.to_uppercase().parse::<T>().is_err());
        }
        assert!("nope".parse::<T>().is_err());
        assert!(serde_json::from_str::<T>("\"nope\"").is_err());
    }
    check(
        ChannelKind::ALL,
        &["nats", "webhook", "feed"],
        ChannelKind::as_str,
    );
    check(
        Relation::ALL,
        &["receiving", "withdrawn", "restricted", "erased"],
        Relation::as_str,
    );
    check(
        HandoffKind::ALL,
        &["change", "notice", "resume", "erasure"],
        HandoffKind::as_str,
    );
    check(AckStatus::ALL, &["applied", "rejected"], AckStatus::as_str);
    check(
        ExceptionKind::ALL,
        &[
            "webhook_rejected",
            "undeliverable",
            "undelivered",
            "stale",
            "divergent",
            "rejected",
            "withdrawal_unconfirmed",
            "proposal",
            "refused_write",
            "delivery_failing",
            "duplicate_candidate",
        ],
        ExceptionKind::as_str,
    );
    check(
        ExceptionStatus::ALL,
        &["open", "resolved", "dismissed"],
        ExceptionStatus::as_str,
    );
    check(
        Resolution::ALL,
        &["accepted", "dismissed", "auto"],
        Resolution::as_str,
    );
}

#[test]
fn a_bad_wire_name_is_refused_naming_what_and_the_choices() {
    let e = ExceptionKind::parse("drift").unwrap_err();
    assert_eq!(e.what, "exception kind");
    assert!(e.reason.contains("'drift'"), "{e}");
    assert!(e.reason.contains("withdrawal_unconfirmed"), "{e}");
    assert_eq!(ChannelKind::parse("sms").unwrap_err().what, "channel");
    assert_eq!(
        ExceptionStatus::parse("closed").unwrap_err().what,
        "exception status"
    );
    assert_eq!(Resolution::parse("manual").unwrap_err().what, "resolution");
    assert_eq!(Relation::parse("paused").unwrap_err().what, "relation");
    assert_eq!(HandoffKind::parse("ping").unwrap_err().what, "handoff kind");
    assert_eq!(AckStatus::parse("ok").unwrap_err().what, "ack status");
}

#[test]
fn kinds_are_grouped_as_reconciliation_and_acks_close_them() {
    use ExceptionKind as K;
    assert_eq!(
        K::RECONCILED,
        [
            K::Undelivered,
            K::Stale,
            K::Divergent,
            K::Rejected,
            K::WithdrawalUnconfirmed
        ]
    );
    assert_eq!(
        K::CLOSED_BY_ACK,
        [
            K::Undelivered,
            K::Stale,
            K::Divergent,
            K::Rejected,
            K::WebhookRejected
        ]
    );
    let about_source: Vec<K> = K::ALL
        .iter()
        .copied()
        .filter(|k| k.about_source())
        .collect();
    assert_eq!(about_source, [K::Proposal, K::RefusedWrite]);
    // Nothing closes by itself what is about a source system.
    assert!(
        about_source
            .iter()
            .all(|k| !K::RECONCILED.contains(k) && !K::CLOSED_BY_ACK.contains(k))
    );
}

#[test]
fn a_resolution_says_which_status_it_ends_in() {
    assert_eq!(Resolution::Accepted.status(), ExceptionStatus::Resolved);
    assert_eq!(Resolution::Auto.status(), ExceptionStatus::Resolved);
    assert_eq!(Resolution::Dismissed.status(), ExceptionStatus::Dismissed);
    assert_eq!(AUTO_RESOLVER, "idledger");
}

#[test]
fn consumer_ids_are_nats_subject_tokens() {
    #[track_caller]
    fn check(raw: &str, expect: Result<(), &str>) {
        match (ConsumerId::parse(raw), expect) {
            (Ok(id), Ok(())) => assert_eq!(id.as_str(), raw),
            (Err(e), Err(reason)) => {
                assert_eq!(e.to_string(), format!("invalid consumer id: {reason}"))
            }
            (got, want) => panic!("{raw:?}: got {got:?}, want {want:?}"),
        }
    }
    check("crm", Ok(()));
    check("a", Ok(()));
    check("crm-sync", Ok(()));
    check("cdp_2", Ok(()));
    check(&format!("c{}", "x".repeat(63)), Ok(()));
    check("", Err("must not be empty"));
    check("Crm", Err("must start with a lowercase letter a-z"));
    check("1crm", Err("must start with a lowercase letter a-z"));
    check("-crm", Err("must start with a lowercase letter a-z"));
    check("_crm", Err("must start with a lowercase letter a-z"));
    check("écrm", Err("must start with a lowercase letter a-z"));
    check(
        &format!("c{}", "x".repeat(64)),
        Err("longer than 64 characters"),
    );
    // Length is checked before the characters: a long id with a bad one says "longer".
    check(
        &format!("c.{}", "x".repeat(64)),
        Err("longer than 64 characters"),
    );
    let only = "may contain only lowercase letters a-z, digits, '_' and '-', not";
    check("crm.sync", Err(&format!("{only} '.'")));
    check("crm*", Err(&format!("{only} '*'")));
    check("crm>", Err(&format!("{only} '>'")));
    check("crm sync", Err(&format!("{only} ' '")));
    check("crmA", Err(&format!("{only} 'A'")));
    check("crm\n", Err(&format!("{only} '\\n'")));
    check("crmé", Err(&format!("{only} 'é'")));
}

#[test]
fn consumer_ids_convert_and_serialise_as_their_string() {
    let id = ConsumerId::parse("crm-sync").unwrap();
    assert_eq!(id.to_string(), "crm-sync");
    assert_eq!(String::from(id.clone()), "crm-sync");
    assert_eq!(ConsumerId::try_from("crm-sync".to_owned()).unwrap(), id);
    assert!(ConsumerId::try_from("CRM".to_owned()).is_err());
    assert_eq!(serde_json::to_string(&id).unwrap(), "\"crm-sync\"");
    assert_eq!(
        serde_json::from_str::<ConsumerId>("\"crm-sync\"").unwrap(),
        id
    );
    let e = serde_json::from_str::<ConsumerId>("\"crm.sync\"").unwrap_err();
    assert!(e.to_string().contains("invalid consumer id"), "{e}");
}

#[test]
fn an_exception_subject_is_a_consumer_or_a_source_by_kind() {
    let proposal = ExceptionSubject::parse(ExceptionKind::Proposal, "web_app").unwrap();
    assert_eq!(proposal.source().map(SourceId::as_str), Some("web_app"));
    assert_eq!(proposal.consumer(), None);
    let stale = ExceptionSubject::parse(ExceptionKind::Stale, "crm-sync").unwrap();
    assert_eq!(stale.consumer().map(ConsumerId::as_str), Some("crm-sync"));
    assert_eq!(stale.source(), None);
    // One column holds both; the kind says which side it is.
    assert_eq!(proposal.as_str(), "web_app");
    assert_eq!(stale.to_string(), "crm-sync");
    assert!(ExceptionSubject::parse(ExceptionKind::Stale, "CRM").is_err());

    for kind in ExceptionKind::ALL.iter().copied() {
        let right = subject_for(kind);
        assert!(right.check(kind).is_ok(), "{kind}");
        let wrong = if kind.about_source() {
            ExceptionSubject::Consumer(ConsumerId::parse("web_app").unwrap())
        } else {
            ExceptionSubject::Source(SourceId::parse("crm-sync").unwrap())
        };
        let e = ExceptionKey::new(kind, wrong, customer(), None).unwrap_err();
        assert_eq!(e.what, "exception subject", "{kind}");
    }
}

// ---- raising ----

#[test]
fn raising_where_there_is_none_opens_one() {
    let events = when(&None, &raise(&divergent_email(), 1, 0)).unwrap();
    assert_eq!(names(&events), ["opened"]);
    let state = fold(&events).unwrap();
    assert_eq!(state.id, id(1));
    assert_eq!(state.key, divergent_email());
    assert_eq!(state.kind(), ExceptionKind::Divergent);
    assert_eq!(state.customer_id(), customer());
    assert_eq!(state.field(), Some(&field("email")));
    assert_eq!(state.subject().as_str(), "crm-sync");
    assert_eq!(state.status(), ExceptionStatus::Open);
    assert!(state.is_open());
    assert_eq!(state.occurrences, 1);
    assert_eq!(state.detail, json!({ "seen": 0 }));
    assert_eq!((state.opened_at, state.updated_at), (at(0), at(0)));
    assert_eq!(state.closed, None);
    assert_eq!(state.last_action, None);
}

#[test]
fn raising_an_open_one_counts_it_again_with_the_newest_detail() {
    let k = divergent_email();
    let state = given(&[raise(&k, 1, 0), raise(&k, 2, 5)]);
    let events = when(&state, &raise(&k, 3, 9)).unwrap();
    assert_eq!(names(&events), ["recurred"]);
    let state = events.iter().fold(state, evolve).unwrap();
    assert_eq!(state.id, id(1), "the new id is used only to open one");
    assert_eq!(state.occurrences, 3);
    assert_eq!(state.detail, json!({ "seen": 9 }));
    assert_eq!(state.opened_at, at(0));
    assert_eq!(state.updated_at, at(9));
}

#[test]
fn raising_a_closed_one_opens_a_new_one() {
    let k = divergent_email();
    for close in [accept(), dismiss(Some("known quirk")), auto_close()] {
        let state = given(&[raise(&k, 1, 0), raise(&k, 2, 1), close.clone()]);
        let events = when(&state, &raise(&k, 7, 70)).unwrap();
        assert_eq!(names(&events), ["opened"], "after {close:?}");
        let state = events.iter().fold(state, evolve).unwrap();
        assert_eq!(state.id, id(7));
        assert_eq!(state.occurrences, 1);
        assert_eq!(state.status(), ExceptionStatus::Open);
        assert_eq!(state.closed, None);
        assert_eq!(state.opened_at, at(70));
    }
}

#[test]
fn a_raise_must_be_about_the_exception_given() {
    let state = given(&[raise(&divergent_email(), 1, 0)]);
    let other = key(ExceptionKind::Stale, Some("email"));
    let r = refused(when(&state, &raise(&other, 2, 1)));
    assert_eq!(r.code(), "invalid_command");
    // Closed or open: the caller looked up the wrong one either way.
    let closed = given(&[raise(&divergent_email(), 1, 0), auto_close()]);
    assert_eq!(
        refused(when(&closed, &raise(&other, 2, 1))).code(),
        "invalid_command"
    );
}

#[test]
fn only_a_proposal_exception_names_a_proposal() {
    let command = ExceptionCommand::Raise {
        new_id: id(1),
        key: divergent_email(),
        proposal_id: Some(ProposalId::from_uuid(id(500))),
        detail: json!({}),
        at: at(0),
    };
    assert_eq!(refused(when(&None, &command)).code(), "invalid_command");
}

#[test]
fn a_recurring_proposal_names_the_newest_proposal() {
    let (p1, p2) = (
        ProposalId::from_uuid(id(501)),
        ProposalId::from_uuid(id(502)),
    );
    let state = open_state(&[raise_proposal(Some(p1), 1, 0)]);
    assert_eq!(state.proposal_id, Some(p1));
    let state = open_state(&[
        raise_proposal(Some(p1), 1, 0),
        raise_proposal(Some(p2), 2, 3),
    ]);
    assert_eq!(state.proposal_id, Some(p2));
    assert_eq!(state.occurrences, 2);
}

// ---- every command from every status ----

/// The key's latest exception in each status the lifecycle has, and none.
fn every_status() -> Vec<(&'static str, Option<ExceptionState>)> {
    let k = divergent_email();
    vec![
        ("none", None),
        ("open", given(&[raise(&k, 1, 0)])),
        ("repushed", given(&[raise(&k, 1, 0), repush(None)])),
        ("resolved:accepted", given(&[raise(&k, 1, 0), accept()])),
        ("resolved:auto", given(&[raise(&k, 1, 0), auto_close()])),
        (
            "dismissed",
            given(&[raise(&k, 1, 0), dismiss(Some("quirk"))]),
        ),
    ]
}

#[test]
fn every_command_from_every_status() {
    let k = divergent_email();
    let commands = [
        ("raise", raise(&k, 9, 90)),
        ("repush", repush(Some("CRM drifted"))),
        ("accept", accept()),
        ("dismiss", dismiss(Some("known quirk"))),
        ("auto_close", auto_close()),
    ];
    // One line per status: what each command above decides (events, or a refusal code).
    let expect: [(&str, [&str; 5]); 6] = [
        (
            "none",
            [
                "opened",
                "unknown_exception",
                "unknown_exception",
                "unknown_exception",
                "",
            ],
        ),
        (
            "open",
            [
                "recurred",
                "repushed",
                "closed:accepted",
                "closed:dismissed",
                "closed:auto",
            ],
        ),
        (
            "repushed",
            [
                "recurred",
                "repushed",
                "closed:accepted",
                "closed:dismissed",
                "closed:auto",
            ],
        ),
        (
            "resolved:accepted",
            [
                "opened",
                "exception_closed",
                "exception_closed",
                "exception_closed",
                "",
            ],
        ),
        (
            "resolved:auto",
            [
                "opened",
                "exception_closed",
                "exception_closed",
                "exception_closed",
                "",
            ],
        ),
        (
            "dismissed",
            [
                "opened",
                "exception_closed",
                "exception_closed",
                "exception_closed",
                "",
            ],
        ),
    ];
    for ((status, state), (expect_status, expected)) in every_status().into_iter().zip(expect) {
        assert_eq!(status, expect_status);
        for ((command_name, command), want) in commands.iter().zip(expected) {
            let got = match when(&state, command) {
                Ok(events) => names(&events).join(","),
                Err(refusal) => refusal.code().to_owned(),
            };
            assert_eq!(got, want, "{command_name} on {status}");
        }
    }
}

#[test]
fn a_closed_exception_refuses_steward_actions_naming_its_status() {
    for (status, state) in every_status() {
        let Some(state) = state.filter(|s| !s.is_open()) else {
            continue;
        };
        for command in [repush(None), accept(), dismiss(Some("quirk"))] {
            let r = refused(decide(Some(&state), &command));
            assert_eq!(
                r,
                ExceptionRefusal::Closed {
                    status: state.status()
                },
                "{status}"
            );
            assert_eq!(r.code(), "exception_closed");
            assert_eq!(
                r.to_string(),
                format!("the exception is already {}", state.status())
            );
        }
    }
}

// ---- steward actions ----

#[test]
fn a_repush_leaves_it_open_and_records_the_action() {
    let state = given(&[raise(&divergent_email(), 1, 0)]);
    let events = when(&state, &repush(Some("  CRM drifted  "))).unwrap();
    let state = events.iter().fold(state, evolve).unwrap();
    assert!(state.is_open());
    assert_eq!(state.updated_at, at(30));
    let action = state.last_action.clone().unwrap();
    assert_eq!(
        action,
        LastAction {
            action: StewardAction::Repush,
            by: "steward:ada".to_owned(),
            at: at(30),
            event_id: Some(EventId::from_uuid(id(900))),
            reason: Some("CRM drifted".to_owned()),
        }
    );
    // The store's `last_action` column, as the API and steward page show it.
    assert_eq!(
        serde_json::to_value(&action).unwrap(),
        json!({
            "action": "repush",
            "by": "steward:ada",
            "at": at(30),
            "event_id": id(900),
            "reason": "CRM drifted",
        })
    );
    let stored = json!({ "action": "repush", "by": "steward:ada", "at": at(30) });
    let read: LastAction = serde_json::from_value(stored).unwrap();
    assert_eq!((read.event_id, read.reason), (None, None));
    // A blank reason is no reason.
    let events = when(
        &given(&[raise(&divergent_email(), 1, 0)]),
        &repush(Some(" ")),
    )
    .unwrap();
    let ExceptionEvent::Repushed(action) = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!(action.reason, None);
}

#[test]
fn a_repush_goes_to_a_consumer_and_names_a_field() {
    for kind in [ExceptionKind::Proposal, ExceptionKind::RefusedWrite] {
        let state = given(&[raise(&key(kind, Some("name.family")), 1, 0)]);
        let r = refused(when(&state, &repush(None)));
        assert_eq!(r, ExceptionRefusal::NotAConsumer { kind });
        assert_eq!(r.code(), "not_a_consumer");
    }
    let state = given(&[raise(&key(ExceptionKind::Undeliverable, None), 1, 0)]);
    let r = refused(when(&state, &repush(None)));
    assert_eq!(r.code(), "no_field");
    assert_eq!(
        r.to_string(),
        "this exception concerns the customer as a whole; there is no field to repush"
    );
}

#[test]
fn accept_and_dismiss_close_it_saying_who_how_and_why() {
    let state = given(&[raise(&divergent_email(), 1, 0)]);
    let accepted = when(&state, &accept())
        .unwrap()
        .iter()
        .fold(state.clone(), evolve)
        .unwrap();
    assert_eq!(accepted.status(), ExceptionStatus::Resolved);
    assert_eq!(
        accepted.closed,
        Some(Closing {
            by: "steward:ada".to_owned(),
            resolution: Resolution::Accepted,
            note: "accepted into the record: email is at version 3".to_owned(),
            at: at(40),
        })
    );
    assert_eq!(accepted.updated_at, at(40));
    let dismissed = when(&state, &dismiss(Some("  known CRM quirk ")))
        .unwrap()
        .iter()
        .fold(state, evolve)
        .unwrap();
    assert_eq!(dismissed.status(), ExceptionStatus::Dismissed);
    let closing = dismissed.closed.unwrap();
    assert_eq!(closing.resolution, Resolution::Dismissed);
    assert_eq!(closing.note, "known CRM quirk");
    assert_eq!(closing.by, "steward:ada");
}

#[test]
fn a_dismissal_gives_a_reason() {
    let state = given(&[raise(&divergent_email(), 1, 0)]);
    let long = "x".repeat(1001);
    for reason in [None, Some(""), Some("   \n"), Some(long.as_str())] {
        let r = refused(when(&state, &dismiss(reason)));
        assert_eq!(r.code(), "invalid_value", "{reason:?}");
        let ExceptionRefusal::InvalidValue { field, .. } = &r else {
            panic!("{r:?}")
        };
        assert_eq!(field, "reason");
    }
    assert!(when(&state, &dismiss(Some("x".repeat(1000).as_str()))).is_ok());
    // An over-long reason is refused for a re-push too: it goes into the log.
    assert_eq!(
        refused(when(&state, &repush(Some(long.as_str())))).code(),
        "invalid_value"
    );
}

#[test]
fn accepting_needs_something_to_take_into_the_record() {
    let state = given(&[raise_proposal(None, 1, 0)]);
    assert_eq!(refused(when(&state, &accept())).code(), "no_proposal");
    let state = given(&[raise(&key(ExceptionKind::Undeliverable, None), 1, 0)]);
    assert_eq!(refused(when(&state, &accept())).code(), "no_field");
}

#[test]
fn steward_actions_need_an_exception() {
    for command in [repush(None), accept(), dismiss(Some("quirk"))] {
        let r = refused(when(&None, &command));
        assert_eq!(r, ExceptionRefusal::Unknown);
        assert_eq!(r.code(), "unknown_exception");
    }
}

// ---- automatic close ----

#[test]
fn closing_automatically_is_idempotent() {
    let state = given(&[raise(&divergent_email(), 1, 0), repush(None)]);
    let events = when(&state, &auto_close()).unwrap();
    assert_eq!(names(&events), ["closed:auto"]);
    let closed = events.iter().fold(state, evolve).unwrap();
    let closing = closed.closed.clone().unwrap();
    assert_eq!(closing.by, AUTO_RESOLVER);
    assert_eq!(closing.note, "the consumer acknowledged the record's value");
    assert_eq!(closed.status(), ExceptionStatus::Resolved);
    // Acks and runs race: closing again, or closing what a steward closed, decides nothing.
    let again = Some(closed);
    assert_eq!(when(&again, &auto_close()).unwrap(), []);
    let dismissed = given(&[raise(&divergent_email(), 1, 0), dismiss(Some("quirk"))]);
    assert_eq!(when(&dismissed, &auto_close()).unwrap(), []);
    assert_eq!(when(&None, &auto_close()).unwrap(), []);
}

// ---- the steward's accept planning ----

fn route(reason: Option<&str>) -> ExceptionCommand {
    ExceptionCommand::Route {
        by: "steward:ada".to_owned(),
        event_id: Some(EventId::from_uuid(id(901))),
        reason: reason.map(str::to_owned),
        at: at(35),
    }
}

fn decided_by_idp(accepted: bool) -> ExceptionCommand {
    ExceptionCommand::DecidedBySource {
        by: decided_by(&SourceId::parse("idp").unwrap()),
        accepted,
        note: "decided by its system of record, idp".to_owned(),
        at: at(45),
    }
}

#[test]
fn routing_a_proposal_records_the_action_and_leaves_it_open() {
    let p = ProposalId::from_uuid(id(502));
    let state = given(&[raise_proposal(Some(p), 1, 0)]);
    let events = when(&state, &route(Some("  idp decides emails  "))).unwrap();
    assert_eq!(names(&events), ["routed"]);
    let after = events.iter().fold(state.clone(), evolve).unwrap();
    assert!(after.is_open());
    let last = after.last_action.clone().unwrap();
    assert_eq!(last.action, StewardAction::Route);
    assert_eq!(last.by, "steward:ada");
    assert_eq!(last.reason.as_deref(), Some("idp decides emails"));
    assert_eq!(last.event_id, Some(EventId::from_uuid(id(901))));
    assert_eq!(after.updated_at, at(35));
    // Routing again is allowed (a reminder); the newest is kept.
    assert_eq!(
        names(&when(&Some(after.clone()), &route(None)).unwrap()),
        ["routed"]
    );
    // Its command records the action alone: the record is unchanged.
    let changes = steward_changes(&after, StewardAction::Route, None, None).unwrap();
    assert!(matches!(
        changes.as_slice(),
        [Change::ActOnException {
            action: StewardAction::Route,
            proposal_id: Some(routed),
            ..
        }] if *routed == p
    ));
}

#[test]
fn only_an_open_proposal_is_routed() {
    let k = divergent_email();
    let divergent = given(&[raise(&k, 1, 0)]);
    let r = refused(when(&divergent, &route(None)));
    assert_eq!(r.code(), "not_a_proposal");
    assert!(r.to_string().contains("divergent"), "{r}");
    let state = divergent.unwrap();
    let r = steward_changes(&state, StewardAction::Route, None, None).unwrap_err();
    assert_eq!(r.code(), "not_a_proposal");
    let nameless = given(&[raise_proposal(None, 1, 0)]);
    assert_eq!(refused(when(&nameless, &route(None))).code(), "no_proposal");
    let p = ProposalId::from_uuid(id(503));
    let closed = given(&[raise_proposal(Some(p), 1, 0), dismiss(Some("dup"))]);
    assert_eq!(
        refused(when(&closed, &route(None))).code(),
        "exception_closed"
    );
    assert_eq!(
        refused(when(&None, &route(None))).code(),
        "unknown_exception"
    );
}

#[test]
fn the_system_of_record_deciding_closes_the_proposal_saying_who() {
    let p = ProposalId::from_uuid(id(504));
    let routed = given(&[raise_proposal(Some(p), 1, 0), route(None)]);
    for (accepted, name, status) in [
        (true, "closed:accepted", ExceptionStatus::Resolved),
        (false, "closed:dismissed", ExceptionStatus::Dismissed),
    ] {
        let events = when(&routed, &decided_by_idp(accepted)).unwrap();
        assert_eq!(names(&events), [name]);
        let after = events.iter().fold(routed.clone(), evolve).unwrap();
        assert_eq!(after.status(), status);
        let closing = after.closed.unwrap();
        assert_eq!(closing.by, "source:idp");
        assert_eq!(closing.at, at(45));
        assert!(closing.note.contains("idp"));
    }
    // A steward was first: nothing more to decide (the record's decision stands anyway).
    let closed = given(&[raise_proposal(Some(p), 1, 0), dismiss(Some("dup"))]);
    assert!(when(&closed, &decided_by_idp(true)).unwrap().is_empty());
    // Only a proposal is decided by its system of record.
    let divergent = given(&[raise(&divergent_email(), 1, 0)]);
    assert_eq!(
        refused(when(&divergent, &decided_by_idp(true))).code(),
        "not_a_proposal"
    );
    assert_eq!(
        refused(when(&None, &decided_by_idp(false))).code(),
        "unknown_exception"
    );
}

#[test]
fn accepting_a_proposal_accepts_the_proposal_itself() {
    let p = ProposalId::from_uuid(id(501));
    let state = open_state(&[raise_proposal(Some(p), 1, 0)]);
    assert_eq!(
        accept_change(&state, None).unwrap(),
        Change::AcceptProposal { proposal_id: p }
    );
    // A value given with it is ignored: the proposal's value is the one in the log.
    assert_eq!(
        accept_change(&state, Some(&json!("Lovelace"))).unwrap(),
        Change::AcceptProposal { proposal_id: p }
    );
    let nameless = open_state(&[raise_proposal(None, 1, 0)]);
    let r = accept_change(&nameless, None).unwrap_err();
    assert_eq!(r, ExceptionRefusal::NoProposal);
    assert_eq!(r.code(), "no_proposal");
}

#[test]
fn accepting_another_systems_value_sets_it_parsed_by_the_fields_kind() {
    for kind in [ExceptionKind::Divergent, ExceptionKind::RefusedWrite] {
        let state = open_state(&[raise(&key(kind, Some("email")), 1, 0)]);
        assert_eq!(
            accept_change(&state, Some(&json!("Ada@Example.org"))).unwrap(),
            Change::SetField {
                field: field("email"),
                value: value("email", json!("ada@example.org")),
                expected_version: None,
            },
            "{kind}"
        );
        let r = accept_change(&state, None).unwrap_err();
        assert_eq!(
            r,
            ExceptionRefusal::ValueRequired {
                field: field("email")
            }
        );
        assert_eq!(r.code(), "value_required");
        let r = accept_change(&state, Some(&json!(42))).unwrap_err();
        assert_eq!(r.code(), "invalid_value");
        let ExceptionRefusal::InvalidValue { field: named, .. } = &r else {
            panic!("{r:?}")
        };
        assert_eq!(named, "email");
    }
    // A consent has no plain value to set.
    let state = open_state(&[raise(
        &key(ExceptionKind::Stale, Some("consent.marketing")),
        1,
        0,
    )]);
    assert_eq!(
        accept_change(&state, Some(&json!(true)))
            .unwrap_err()
            .code(),
        "invalid_value"
    );
    let state = open_state(&[raise(&key(ExceptionKind::Undeliverable, None), 1, 0)]);
    let r = accept_change(&state, Some(&json!("x"))).unwrap_err();
    assert_eq!(
        r,
        ExceptionRefusal::NoField {
            action: StewardAction::Accept
        }
    );
    assert_eq!(r.code(), "no_field");
    assert_eq!(
        r.to_string(),
        "this exception concerns the customer as a whole; there is no value to accept"
    );
}

#[test]
fn the_action_is_recorded_naming_the_exception_its_system_and_field() {
    let state = open_state(&[raise(&divergent_email(), 1, 0)]);
    assert_eq!(
        action_change(&state, StewardAction::Repush, Some("  CRM drifted ")),
        Change::ActOnException {
            exception_id: id(1),
            consumer_id: "crm-sync".to_owned(),
            field: Some(field("email")),
            action: StewardAction::Repush,
            reason: Some("CRM drifted".to_owned()),
            proposal_id: None,
        }
    );
    let Change::ActOnException { reason, .. } =
        action_change(&state, StewardAction::Accept, Some("   "))
    else {
        unreachable!()
    };
    assert_eq!(reason, None);
    // A source-side exception names the source in the one column.
    let state = open_state(&[raise(
        &key(ExceptionKind::RefusedWrite, Some("email")),
        1,
        0,
    )]);
    let Change::ActOnException { consumer_id, .. } =
        action_change(&state, StewardAction::Dismiss, Some("misconfigured"))
    else {
        unreachable!()
    };
    assert_eq!(consumer_id, "web_app");
}

#[test]
fn steward_changes_are_refused_on_the_rules_of_decide() {
    let open = open_state(&[raise(&divergent_email(), 1, 0)]);
    let changes =
        steward_changes(&open, StewardAction::Accept, None, Some(&json!("a@b.org"))).unwrap();
    assert_eq!(
        changes.iter().map(Change::op).collect::<Vec<_>>(),
        ["set_field", "act_on_exception"]
    );
    let changes = steward_changes(&open, StewardAction::Repush, None, None).unwrap();
    assert_eq!(
        changes.iter().map(Change::op).collect::<Vec<_>>(),
        ["act_on_exception"]
    );
    #[track_caller]
    fn code(
        state: &ExceptionState,
        action: StewardAction,
        reason: Option<&str>,
        value: Option<&serde_json::Value>,
    ) -> &'static str {
        steward_changes(state, action, reason, value)
            .unwrap_err()
            .code()
    }
    assert_eq!(
        code(&open, StewardAction::Dismiss, Some(" "), None),
        "invalid_value"
    );
    assert_eq!(
        code(&open, StewardAction::Accept, None, None),
        "value_required"
    );
    let closed = open_state(&[raise(&divergent_email(), 1, 0), auto_close()]);
    assert_eq!(
        code(&closed, StewardAction::Dismiss, Some("quirk"), None),
        "exception_closed"
    );
    let proposal = open_state(&[raise_proposal(None, 1, 0)]);
    assert_eq!(
        code(&proposal, StewardAction::Repush, None, None),
        "not_a_consumer"
    );
    assert_eq!(
        code(&proposal, StewardAction::Accept, None, None),
        "no_proposal"
    );
    let whole = open_state(&[raise(&key(ExceptionKind::Undeliverable, None), 1, 0)]);
    assert_eq!(code(&whole, StewardAction::Repush, None, None), "no_field");
}

/// The planned changes are ones the record's `decide` accepts from a steward.
#[test]
fn a_steward_accepts_a_proposal_through_its_exception() {
    let mut s =
        Scenario::registered().given("idp", agent(), vec![set("name.family", json!("Byron"))]);
    let d = s
        .apply(
            source("crm"),
            agent(),
            vec![set("name.family", json!("Lovelace"))],
        )
        .unwrap();
    let Outcome::Proposed { proposal_id, .. } = &d.outcomes[0] else {
        panic!("{:?}", d.outcomes)
    };
    let exception = open_state(&[ExceptionCommand::Raise {
        new_id: id(1),
        key: ExceptionKey::new(
            ExceptionKind::Proposal,
            ExceptionSubject::Source(SourceId::parse("crm").unwrap()),
            s.customer,
            Some(field("name.family")),
        )
        .unwrap(),
        proposal_id: Some(*proposal_id),
        detail: json!({ "proposal_id": proposal_id }),
        at: at(0),
    }]);
    let changes = steward_changes(&exception, StewardAction::Accept, None, None).unwrap();
    let d = s.apply(approved_steward(), agent(), changes).unwrap();
    assert_eq!(
        types(&d),
        ["proposal_accepted", "field_set", "steward_acted"]
    );
    assert_eq!(
        s.state().value(&field("name.family")),
        Some(&value("name.family", json!("Lovelace")))
    );
    let closed = when(&Some(exception), &accept()).unwrap();
    assert_eq!(names(&closed), ["closed:accepted"]);
}

#[test]
fn a_steward_takes_a_consumers_value_through_its_exception() {
    let mut s =
        Scenario::registered().given("idp", agent(), vec![set("name.family", json!("Byron"))]);
    let k = key_of(ExceptionKind::Divergent, s.customer, Some("name.family"));
    let exception = open_state(&[raise(&k, 1, 0)]);
    let changes = steward_changes(
        &exception,
        StewardAction::Accept,
        Some("the CRM had it right"),
        Some(&json!("Lovelace")),
    )
    .unwrap();
    // name.family is four-eyes: the change is made with a second steward's approval.
    let d = s.apply(approved_steward(), agent(), changes).unwrap();
    assert_eq!(types(&d), ["field_set", "steward_acted"]);
    let changes = steward_changes(
        &exception,
        StewardAction::Dismiss,
        Some("known quirk"),
        None,
    )
    .unwrap();
    assert_eq!(
        types(&s.apply(steward(), agent(), changes).unwrap()),
        ["steward_acted"]
    );
}

// ---- properties ----

fn any_command() -> impl Strategy<Value = ExceptionCommand> {
    let k = divergent_email();
    prop_oneof![
        (0u128..1000).prop_map(move |n| raise(&k, n, 0)),
        Just(repush(Some("again"))),
        Just(accept()),
        Just(dismiss(Some("quirk"))),
        Just(dismiss(None)),
        Just(auto_close()),
    ]
}

proptest! {
    /// Whatever the sequence: at most one exception is open, a closed one never changes,
    /// and occurrences count the raises since it opened.
    #[test]
    fn the_lifecycle_holds_its_invariants(commands in prop::collection::vec(any_command(), 0..30)) {
        let mut state: Option<ExceptionState> = None;
        let mut raises_since_open = 0u64;
        for command in &commands {
            let before = state.clone();
            let Ok(events) = decide(state.as_ref(), command) else {
                continue;
            };
            state = events.iter().fold(state, evolve);
            let opened = events.iter().any(|e| matches!(e, ExceptionEvent::Opened { .. }));
            if opened {
                raises_since_open = 1;
            } else if matches!(command, ExceptionCommand::Raise { .. }) {
                raises_since_open += 1;
            }
            if before.is_some_and(|b| !b.is_open()) {
                // Only a raise replaces a closed exception, with a new one.
                prop_assert!(events.is_empty() || opened, "{events:?}");
            }
            if let Some(now) = &state {
                prop_assert!(now.occurrences >= 1);
                if now.is_open() {
                    prop_assert_eq!(now.occurrences, raises_since_open);
                }
                prop_assert_eq!(now.status() == ExceptionStatus::Open, now.closed.is_none());
            }
        }
    }
}

#[test]
fn an_open_exception_is_assigned_and_unassigned_and_a_closed_one_is_not() {
    let k = divergent_email();
    let mut state = open_state(&[raise(&k, 1, 0)]);
    let assign = |to: Option<&str>| ExceptionCommand::Assign {
        to: to.map(str::to_owned),
        by: "steward:jane".to_owned(),
        at: at(5),
    };
    let events = decide(Some(&state), &assign(Some("steward:joe"))).unwrap();
    assert_eq!(names(&events), ["assigned"]);
    state = evolve(Some(state), &events[0]).unwrap();
    assert_eq!(state.assigned_to.as_deref(), Some("steward:joe"));
    // The same again changes nothing.
    assert!(
        decide(Some(&state), &assign(Some("steward:joe")))
            .unwrap()
            .is_empty()
    );
    let events = decide(Some(&state), &assign(None)).unwrap();
    assert_eq!(names(&events), ["unassigned"]);
    state = evolve(Some(state), &events[0]).unwrap();
    assert_eq!(state.assigned_to, None);
    assert_eq!(
        decide(None, &assign(Some("steward:joe")))
            .unwrap_err()
            .code(),
        "unknown_exception"
    );
    let closed = evolve(
        Some(state),
        &ExceptionEvent::Closed(Closing::automatic("gone", at(6))),
    )
    .unwrap();
    assert_eq!(
        decide(Some(&closed), &assign(Some("steward:joe")))
            .unwrap_err()
            .code(),
        "exception_closed"
    );
}

// ---- duplicate candidates ----

#[test]
fn a_duplicate_pair_names_the_other_customer_and_nothing_else() {
    let kind = ExceptionKind::DuplicateCandidate;
    let pair = ExceptionSubject::Customer(OtherCustomer::new(other_customer()));
    let key = ExceptionKey::new(kind, pair.clone(), customer(), None).unwrap();
    assert_eq!(key.subject().other_customer(), Some(other_customer()));
    // Stored as the other customer's id and read back as one, by the kind.
    assert_eq!(ExceptionSubject::parse(kind, pair.as_str()).unwrap(), pair);
    assert!(ExceptionSubject::parse(kind, "crm-sync").is_err());
    // No consumer or source is a pair's subject, and no other kind names a customer.
    for wrong in [
        ExceptionSubject::Consumer(ConsumerId::parse("crm-sync").unwrap()),
        ExceptionSubject::Source(SourceId::parse("web_app").unwrap()),
    ] {
        assert!(ExceptionKey::new(kind, wrong, customer(), None).is_err());
    }
    for other in [ExceptionKind::Divergent, ExceptionKind::Proposal] {
        assert!(ExceptionKey::new(other, pair.clone(), customer(), None).is_err());
    }
    assert!(!kind.about_consumer() && !kind.about_source());
    assert_eq!(
        idledger_domain::exception::resolution_sla(kind, Some(Duration::seconds(60))),
        Duration::days(7),
        "no consumer's SLA applies to a pair"
    );
}

#[test]
fn a_duplicate_candidate_can_only_be_dismissed() {
    let key = key(ExceptionKind::DuplicateCandidate, None);
    let open = open_state(&[raise(&key, 1, 0)]);
    // Raised again while open: counted, not opened anew.
    let again = given(&[raise(&key, 1, 0), raise(&key, 2, 1)]).unwrap();
    assert_eq!((again.id, again.occurrences), (id(1), 2));
    for action in [
        StewardAction::Accept,
        StewardAction::Repush,
        StewardAction::Route,
    ] {
        let refusal = steward_changes(&open, action, None, Some(&json!("x"))).unwrap_err();
        assert_eq!(refusal.code(), "dismiss_only", "{action:?}");
    }
    assert_eq!(
        refused(when(&Some(open.clone()), &accept())).code(),
        "dismiss_only"
    );
    assert_eq!(
        refused(when(&Some(open.clone()), &repush(None))).code(),
        "dismiss_only"
    );
    let events = when(&Some(open.clone()), &dismiss(Some("not the same person"))).unwrap();
    assert_eq!(names(&events), ["closed:dismissed"]);
    let changes = steward_changes(
        &open,
        StewardAction::Dismiss,
        Some("not the same person"),
        None,
    )
    .unwrap();
    assert_eq!(changes.len(), 1);
}
