//! Merge and unmerge (issue 17), on both engines with the real store: survivorship, the most
//! protective consent, redirects, the blind index, the duplicate candidate closed with the
//! merge, changes made while merged routed back at the unmerge — and the property that a
//! merge undone leaves both visible records as they were.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idledger_app::{App, ReadError, Reader, Steward};
use idledger_domain::command::{Change, Refusal};
use idledger_domain::field::FieldValue;
use idledger_domain::ids::{CustomerId, Key, OnBehalfOf, Purpose, Relationship};
use idledger_domain::lookup::{Identifier, LookupKind};
use idledger_domain::merge::{MergeRefusal, Visible};
use idledger_domain::state::ConsentState;
use idledger_domain::values::Evidence;
use idledger_store::delivery::{ExceptionFilter, ExceptionKind, ExceptionStatus};
use idledger_store::{ExecuteError, MergeError};
use idledger_testkit::builders::{
    dpo, field, fresh_command, grant, new_customer, request_change, set, source, withdraw,
};
use idledger_testkit::{Engine, TestStore, on_both_engines};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

async fn app(engine: Engine) -> (TestStore, App) {
    let store = TestStore::new(engine).await;
    let app = App::new(store.ledger.clone());
    (store, app)
}

fn steward() -> Steward {
    Steward::new("merger").unwrap()
}

async fn write(app: &App, by: &str, customer: CustomerId, changes: Vec<Change>) {
    app.run_command(&source(by), &fresh_command(customer, changes))
        .await
        .unwrap_or_else(|e| panic!("command by {by} failed: {e}"));
}

async fn registered(app: &App, changes: Vec<Change>) -> CustomerId {
    let customer = new_customer();
    let mut all = vec![Change::Register];
    all.extend(changes);
    write(app, "idp", customer, all).await;
    customer
}

async fn visible(app: &App, customer: CustomerId) -> Visible {
    Visible::of(&app.ledger().state(customer).await.unwrap().unwrap())
}

fn value(app_state: &Visible, path: &str) -> Option<Value> {
    app_state
        .fields
        .get(&field(path))
        .and_then(|f| f.value.as_ref())
        .map(FieldValue::to_json)
}

fn consent(app_state: &Visible, purpose: &str) -> Option<ConsentState> {
    app_state
        .consents
        .get(&Purpose::parse(purpose).unwrap())
        .map(|c| c.state)
}

async fn merge_of_two_records_takes_values_by_authority_and_the_most_protective_consent(
    engine: Engine,
) {
    let (_store, app) = app(engine).await;
    // The survivor's given name came from the web app, the absorbed one's from the idp (the
    // system of record): the idp's wins, the other becomes a proposal. The family names
    // differ, both from the idp: the survivor keeps its own, the other is proposed.
    let a = registered(&app, vec![set("name.family", json!("Lovelace"))]).await;
    write(&app, "web_app", a, vec![set("name.given", json!("Ada"))]).await;
    write(
        &app,
        "consent_portal",
        a,
        vec![grant("marketing", None), grant("analytics", None)],
    )
    .await;
    let b = registered(
        &app,
        vec![
            set("name.given", json!("Augusta")),
            set("name.family", json!("King")),
            set("phone", json!("+442079460958")),
        ],
    )
    .await;
    write(
        &app,
        "consent_portal",
        b,
        vec![grant("marketing", None), withdraw("marketing")],
    )
    .await;
    write(&app, "consent_portal", b, vec![grant("profiling", None)]).await;

    let done = app
        .merge(&steward(), a, b, "same person: passport checked")
        .await
        .unwrap();
    assert_eq!((done.survivor, done.absorbed), (a, b));

    let merged = visible(&app, a).await;
    assert_eq!(
        value(&merged, "name.given"),
        Some(json!("Augusta")),
        "the system of record's value wins"
    );
    assert_eq!(
        value(&merged, "name.family"),
        Some(json!("Lovelace")),
        "the survivor's authoritative value stays"
    );
    assert_eq!(
        value(&merged, "phone"),
        Some(json!("+442079460958")),
        "an empty field takes the other's"
    );
    assert_eq!(
        consent(&merged, "marketing"),
        Some(ConsentState::Withdrawn),
        "a withdrawal anywhere wins"
    );
    assert_eq!(consent(&merged, "analytics"), Some(ConsentState::Granted));
    assert_eq!(
        consent(&merged, "profiling"),
        Some(ConsentState::Granted),
        "a consent only the other had is taken"
    );
    // The adopted phone keeps its own provenance: the idp set it on the other record.
    let phone = merged.fields.get(&field("phone")).unwrap();
    assert_eq!(phone.source.as_ref().unwrap().as_str(), "idp");
    let proposed: Vec<(String, Value)> = merged
        .proposals
        .values()
        .map(|(f, v, _)| (f.to_string(), v.to_json()))
        .collect();
    assert!(
        proposed.contains(&("name.given".to_owned(), json!("Ada"))),
        "{proposed:?}"
    );
    assert!(
        proposed.contains(&("name.family".to_owned(), json!("King"))),
        "{proposed:?}"
    );

    // The absorbed record is frozen and answers with the survivor.
    let frozen = app.ledger().state(b).await.unwrap().unwrap();
    assert_eq!(frozen.merged_into.as_ref().map(|l| l.customer), Some(a));
    let refused = app
        .run_command(
            &source("idp"),
            &fresh_command(b, vec![set("name.given", json!("Ada"))]),
        )
        .await
        .unwrap_err();
    match refused {
        ExecuteError::Refused(r) => assert_eq!(r.refusal, Refusal::MergedInto { survivor: a }),
        other => panic!("expected merged_into, got {other}"),
    }
    match app.read_record(&Reader::Overseer, b, None).await {
        Err(ReadError::MergedInto { survivor, .. }) => assert_eq!(survivor, a),
        other => panic!(
            "expected a redirect to the survivor, got {:?}",
            other.map(|_| ())
        ),
    }
    // Found by the absorbed record's phone: only the survivor, which holds it now.
    let phone = Identifier::parse(LookupKind::Phone, "+442079460958").unwrap();
    assert_eq!(app.ledger().find(&phone, 10).await.unwrap(), vec![a]);
}

async fn merges_that_cannot_be_undone_alone_are_refused(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![]).await;
    let b = registered(&app, vec![]).await;
    let c = registered(&app, vec![]).await;
    let refusal = |r: Result<_, MergeError>| match r {
        Err(MergeError::Refused(refusal)) => refusal.code(),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    };
    assert_eq!(
        refusal(app.merge(&steward(), a, a, "x").await),
        "same_customer"
    );
    assert_eq!(
        refusal(app.merge(&steward(), a, new_customer(), "x").await),
        "not_registered"
    );
    app.merge(&steward(), a, b, "same person").await.unwrap();
    assert_eq!(
        refusal(app.merge(&steward(), c, b, "x").await),
        "already_merged"
    );
    assert_eq!(
        refusal(app.merge(&steward(), b, c, "x").await),
        "already_merged"
    );
    assert_eq!(
        refusal(app.merge(&steward(), c, a, "x").await),
        "merge_chain"
    );
    assert_eq!(
        refusal(app.unmerge(&steward(), c, a, "x").await),
        "not_merged"
    );
    assert_eq!(
        refusal(app.unmerge(&steward(), b, a, "x").await),
        "not_merged"
    );
    app.unmerge(&steward(), a, b, "not the same person")
        .await
        .unwrap();
    assert_eq!(
        refusal(app.unmerge(&steward(), a, b, "again").await),
        "not_merged"
    );
    // Merged again after an unmerge, and undone again.
    app.merge(&steward(), b, a, "same person after all")
        .await
        .unwrap();
    app.unmerge(&steward(), b, a, "no").await.unwrap();
    let _: MergeRefusal = MergeRefusal::SameCustomer;
}

async fn changes_made_while_merged_go_back_to_the_record_they_were_about(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("name.given", json!("Ada"))]).await;
    let b = registered(&app, vec![set("phone", json!("+442079460958"))]).await;
    write(&app, "consent_portal", b, vec![grant("marketing", None)]).await;
    write(&app, "consent_portal", a, vec![grant("analytics", None)]).await;
    app.merge(&steward(), a, b, "same person").await.unwrap();

    // The phone came from B: its change is about B. The locale is A's own. A withdrawal is
    // about both.
    write(&app, "idp", a, vec![set("phone", json!("+33142685300"))]).await;
    write(&app, "web_app", a, vec![set("locale", json!("fr-FR"))]).await;
    write(
        &app,
        "consent_portal",
        a,
        vec![withdraw("marketing"), withdraw("analytics")],
    )
    .await;
    // A restriction of processing is about both too.
    app.restrict(a, dpo(), "the subject contests the accuracy", true)
        .await
        .unwrap();

    app.unmerge(&steward(), a, b, "two people after all")
        .await
        .unwrap();
    let ours = visible(&app, a).await;
    let theirs = visible(&app, b).await;
    assert_eq!(
        value(&ours, "phone"),
        None,
        "the survivor never had a phone"
    );
    assert_eq!(value(&ours, "locale"), Some(json!("fr-FR")));
    assert_eq!(value(&ours, "name.given"), Some(json!("Ada")));
    assert_eq!(
        consent(&ours, "marketing"),
        None,
        "the survivor never consented to marketing"
    );
    assert_eq!(consent(&ours, "analytics"), Some(ConsentState::Withdrawn));
    assert_eq!(
        value(&theirs, "phone"),
        Some(json!("+33142685300")),
        "the change was about B"
    );
    assert_eq!(value(&theirs, "locale"), None);
    assert_eq!(
        consent(&theirs, "marketing"),
        Some(ConsentState::Withdrawn),
        "a withdrawal reaches both"
    );
    assert!(
        ours.restricted && theirs.restricted,
        "so does a restriction"
    );
    assert!(
        app.ledger()
            .state(b)
            .await
            .unwrap()
            .unwrap()
            .merged_into
            .is_none()
    );
    // B takes commands and is found by its phone again; A no longer is.
    write(&app, "web_app", b, vec![set("locale", json!("en-GB"))]).await;
    let phone = Identifier::parse(LookupKind::Phone, "+33142685300").unwrap();
    assert_eq!(app.ledger().find(&phone, 10).await.unwrap(), vec![b]);
}

async fn a_merge_closes_the_duplicate_candidate_of_the_pair(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let b = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let filter = ExceptionFilter {
        kind: Some(ExceptionKind::DuplicateCandidate),
        ..ExceptionFilter::default()
    };
    let open = app.deliveries().exceptions(&filter, 10).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].status, ExceptionStatus::Open);
    app.merge(&steward(), b, a, "same person").await.unwrap();
    let closed = app
        .deliveries()
        .exception(open[0].id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(closed.status, ExceptionStatus::Open);
    assert!(closed.resolution_note.unwrap().contains("merged into"));
}

async fn a_survivors_export_holds_the_records_merged_into_it(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("name.given", json!("Ada"))]).await;
    let b = registered(&app, vec![set("phone", json!("+442079460958"))]).await;
    write(&app, "consent_portal", b, vec![grant("profiling", None)]).await;
    let b_events = app.ledger().stream(b, None, None).await.unwrap().len();
    app.merge(&steward(), a, b, "same person").await.unwrap();

    let export = app.export(a, None).await.unwrap();
    let theirs: Vec<_> = export
        .events
        .iter()
        .filter(|e| e.customer_id == b)
        .collect();
    // Every event of the absorbed stream, its `merged_into` included.
    assert_eq!(theirs.len(), b_events + 1);
    assert!(
        export
            .events
            .windows(2)
            .all(|w| (w[0].recorded_at, w[0].global_position)
                <= (w[1].recorded_at, w[1].global_position)),
        "one timeline"
    );
    // The export is a disclosure to the subject of both records.
    for record in [a, b] {
        assert!(
            export.disclosures.iter().any(|d| d.customer_id == record),
            "no disclosure of {record}"
        );
    }
    // The absorbed record is exported through its survivor.
    match app.export(b, None).await {
        Err(ReadError::MergedInto { survivor, .. }) => assert_eq!(survivor, a),
        other => panic!("expected merged_into, got {:?}", other.map(|_| ())),
    }
    // Unmerged, each record's export is its own again.
    app.unmerge(&steward(), a, b, "two people after all")
        .await
        .unwrap();
    let export = app.export(a, None).await.unwrap();
    assert!(export.events.iter().all(|e| e.customer_id == a));
}

fn record_delegate(id: &str) -> Change {
    Change::RecordRelationship {
        representative: OnBehalfOf::new(Relationship::Delegate, id).unwrap(),
        evidence: Evidence::new(Key::parse("power_of_attorney").unwrap(), "poa-1").unwrap(),
        scope: None,
        expires_at: None,
    }
}

fn relationships(state: &Visible) -> Vec<(String, bool)> {
    state
        .relationships
        .values()
        .map(|r| (r.representative.id().to_owned(), r.ended.is_some()))
        .collect()
}

async fn relationships_follow_the_person_through_a_merge_and_back(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![record_delegate("carer-a")]).await;
    let b = registered(
        &app,
        vec![record_delegate("carer-b"), record_delegate("notary-b")],
    )
    .await;
    let before_a = visible(&app, a).await;
    app.merge(&steward(), a, b, "same person").await.unwrap();

    // The survivor holds the absorbed record's relationships as they were recorded.
    let merged = visible(&app, a).await;
    let mut held = relationships(&merged);
    held.sort();
    assert_eq!(
        held,
        vec![
            ("carer-a".to_owned(), false),
            ("carer-b".to_owned(), false),
            ("notary-b".to_owned(), false)
        ]
    );
    let carer_b = merged
        .relationships
        .iter()
        .find(|(_, r)| r.representative.id() == "carer-b")
        .map(|(id, r)| (*id, r.clone()))
        .unwrap();
    assert_eq!(
        carer_b.1,
        visible(&app, b).await.relationships[&carer_b.0],
        "adopted with its own recording"
    );
    // While merged: the absorbed record's notary is ended, and a new carer recorded.
    write(
        &app,
        "idp",
        a,
        vec![
            Change::EndRelationship {
                relationship_id: merged
                    .relationships
                    .iter()
                    .find(|(_, r)| r.representative.id() == "notary-b")
                    .map(|(id, _)| *id)
                    .unwrap(),
                reason: "revoked".to_owned(),
            },
            record_delegate("carer-new"),
        ],
    )
    .await;

    app.unmerge(&steward(), a, b, "two people after all")
        .await
        .unwrap();
    let ours = visible(&app, a).await;
    let theirs = visible(&app, b).await;
    let mut expected_ours = relationships(&before_a);
    expected_ours.push(("carer-new".to_owned(), false));
    expected_ours.sort();
    let mut got_ours = relationships(&ours);
    got_ours.sort();
    assert_eq!(
        got_ours, expected_ours,
        "what was recorded on the survivor stays"
    );
    let mut got_theirs = relationships(&theirs);
    got_theirs.sort();
    assert_eq!(
        got_theirs,
        vec![("carer-b".to_owned(), false), ("notary-b".to_owned(), true)],
        "the ending of the absorbed record's relationship went back with it"
    );
}

/// Everything `customer`'s stream lets anyone read, as one text.
async fn readable_history(app: &App, customer: CustomerId) -> String {
    serde_json::to_string(&app.ledger().stream(customer, None, None).await.unwrap()).unwrap()
}

async fn erasing_the_absorbed_record_after_an_unmerge_leaves_none_of_its_data_in_the_survivor(
    engine: Engine,
) {
    let (_store, app) = app(engine).await;
    let a = registered(
        &app,
        vec![
            set("name.given", json!("Ada")),
            set("name.family", json!("Lovelace")),
        ],
    )
    .await;
    let b = registered(
        &app,
        vec![
            set("phone", json!("+442079460958")),
            set("name.family", json!("Byron")),
            record_delegate("notary-of-b"),
        ],
    )
    .await;
    write(&app, "consent_portal", b, vec![grant("marketing", None)]).await;
    app.merge(&steward(), a, b, "same person").await.unwrap();
    // While merged: a change of what came from B, and one of A's own.
    write(&app, "idp", a, vec![set("phone", json!("+33142685300"))]).await;
    write(&app, "web_app", a, vec![set("locale", json!("fr-FR"))]).await;
    let while_merged = chrono::Utc::now();
    app.unmerge(&steward(), a, b, "two people after all")
        .await
        .unwrap();
    let survivor = visible(&app, a).await;

    // B's data is in A's history until B is erased: its value, the proposal of its family
    // name, its delegate, and the change made while merged.
    let b_data = ["+442079460958", "+33142685300", "Byron", "notary-of-b"];
    let before = readable_history(&app, a).await;
    for data in b_data {
        assert!(before.contains(data), "{data} is in A's history before");
    }
    app.erase(b, dpo(), "the subject asked").await.unwrap();

    let after = readable_history(&app, a).await;
    for data in b_data {
        assert!(
            !after.contains(data),
            "{data} is still readable in A's history"
        );
    }
    for own in ["Ada", "Lovelace", "fr-FR"] {
        assert!(after.contains(own), "A's own {own} stays readable");
    }
    let then = app
        .ledger()
        .state_as_of(a, while_merged)
        .await
        .unwrap()
        .unwrap();
    let then = serde_json::to_string(&Visible::of(&then).fields.keys().collect::<Vec<_>>())
        .unwrap()
        + &serde_json::to_string(
            &app.ledger()
                .stream(a, None, Some(while_merged))
                .await
                .unwrap(),
        )
        .unwrap();
    for data in b_data {
        assert!(!then.contains(data), "{data} is readable as of the merge");
    }
    // A's record is as it was, and a rebuild from the log (which cannot read what was
    // sealed for B) gives the same projection.
    assert_eq!(visible(&app, a).await, survivor);
    let rebuilt = app.ledger().rebuild(&|_, _| {}).await.unwrap();
    assert!(rebuilt.identical, "{rebuilt:?}");
    let report = app.ledger().verify(&|_, _| {}).await.unwrap();
    assert!(report.intact(), "{report:?}");
    let export = app.export(a, None).await.unwrap();
    let export = serde_json::to_string(&(export.state, export.events)).unwrap();
    for data in b_data {
        assert!(!export.contains(data), "{data} is in A's export");
    }
}

async fn a_change_pending_on_the_absorbed_record_is_confirmed_on_the_survivor(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("name.given", json!("Ada"))]).await;
    let b = registered(&app, vec![set("email", json!("old@example.org"))]).await;
    write(
        &app,
        "web_app",
        b,
        vec![request_change("email", json!("new@example.org"))],
    )
    .await;
    let challenge = app.ledger().state(b).await.unwrap().unwrap().fields[&field("email")]
        .pending
        .clone()
        .unwrap()
        .challenge_id;
    app.merge(&steward(), a, b, "same person").await.unwrap();
    let merged = visible(&app, a).await;
    assert_eq!(value(&merged, "email"), Some(json!("old@example.org")));
    assert_eq!(
        merged.fields[&field("email")]
            .pending
            .as_ref()
            .map(|p| p.challenge_id),
        Some(challenge),
        "the change the person asked for moved with the value"
    );
    // The person confirms with what they received when B asked for it.
    let secret = app.ledger().challenge_secret(challenge);
    write(
        &app,
        "web_app",
        a,
        vec![Change::ConfirmVerification {
            field: field("email"),
            challenge_id: challenge,
            secret,
        }],
    )
    .await;
    assert_eq!(
        value(&visible(&app, a).await, "email"),
        Some(json!("new@example.org"))
    );
    // The email came from B: its confirmed change goes back to B.
    app.unmerge(&steward(), a, b, "two people after all")
        .await
        .unwrap();
    assert_eq!(value(&visible(&app, a).await, "email"), None);
    let theirs = visible(&app, b).await;
    assert_eq!(value(&theirs, "email"), Some(json!("new@example.org")));
    assert!(theirs.fields[&field("email")].pending.is_none());
}

on_both_engines!(
    merge_of_two_records_takes_values_by_authority_and_the_most_protective_consent,
    merges_that_cannot_be_undone_alone_are_refused,
    changes_made_while_merged_go_back_to_the_record_they_were_about,
    a_merge_closes_the_duplicate_candidate_of_the_pair,
    a_survivors_export_holds_the_records_merged_into_it,
    relationships_follow_the_person_through_a_merge_and_back,
    erasing_the_absorbed_record_after_an_unmerge_leaves_none_of_its_data_in_the_survivor,
    a_change_pending_on_the_absorbed_record_is_confirmed_on_the_survivor,
);

// ---- the property: merge then unmerge leaves both visible records as they were ----

/// Fields a record may have in a generated case: path, the values to pick from, and two
/// writers (the system of record first) allowed to set it.
const FIELDS: [(&str, &[&str], [&str; 2]); 5] = [
    ("name.given", &["Ada", "Grace", "Alan"], ["idp", "web_app"]),
    ("name.family", &["Lovelace", "Hopper"], ["idp", "web_app"]),
    ("locale", &["en-GB", "fr-FR"], ["web_app", "web_app"]),
    (
        "preferences.newsletter",
        &["true", "false"],
        ["web_app", "support_portal"],
    ),
    ("phone", &["+442079460958", "+33142685300"], ["idp", "idp"]),
];
const PURPOSES: [&str; 3] = ["marketing", "analytics", "profiling"];

#[derive(Debug, Clone)]
struct RecordSpec {
    /// Per field: absent, or (value index, writer index).
    fields: Vec<Option<(usize, usize)>>,
    /// Per purpose: 0 none, 1 granted, 2 granted then withdrawn.
    consents: Vec<u8>,
}

fn record_spec() -> impl Strategy<Value = RecordSpec> {
    (
        proptest::collection::vec(proptest::option::of((0usize..3, 0usize..2)), FIELDS.len()),
        proptest::collection::vec(0u8..3, PURPOSES.len()),
    )
        .prop_map(|(fields, consents)| RecordSpec { fields, consents })
}

async fn build(app: &App, spec: &RecordSpec) -> CustomerId {
    let customer = registered(app, vec![]).await;
    for (i, chosen) in spec.fields.iter().enumerate() {
        let Some((v, w)) = chosen else { continue };
        let (path, values, writers) = FIELDS[i];
        let raw = values[v % values.len()];
        let json = match path {
            "preferences.newsletter" => json!(raw == "true"),
            _ => json!(raw),
        };
        write(app, writers[*w], customer, vec![set(path, json)]).await;
    }
    for (i, state) in spec.consents.iter().enumerate() {
        match state {
            1 => {
                write(
                    app,
                    "consent_portal",
                    customer,
                    vec![grant(PURPOSES[i], None)],
                )
                .await
            }
            2 => {
                write(
                    app,
                    "consent_portal",
                    customer,
                    vec![grant(PURPOSES[i], None)],
                )
                .await;
                write(app, "consent_portal", customer, vec![withdraw(PURPOSES[i])]).await;
            }
            _ => {}
        }
    }
    customer
}

/// Runs the property on `engine` in a runtime of its own (proptest drives the cases).
fn merge_then_unmerge_restores_both(engine: Engine) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (store, app) = runtime.block_on(app(engine));
    let mut runner = TestRunner::new(Config {
        cases: 24,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(record_spec(), record_spec()), |(ours, theirs)| {
            runtime.block_on(async {
                let a = build(&app, &ours).await;
                let b = build(&app, &theirs).await;
                let (before_a, before_b) = (visible(&app, a).await, visible(&app, b).await);
                app.merge(&steward(), a, b, "property").await.unwrap();
                app.unmerge(&steward(), a, b, "property").await.unwrap();
                prop_assert_eq!(visible(&app, a).await, before_a);
                prop_assert_eq!(visible(&app, b).await, before_b);
                // And the log still verifies, both streams' chains included.
                Ok(())
            })
        })
        .unwrap();
    let report = runtime.block_on(app.ledger().verify(&|_, _| {})).unwrap();
    assert!(report.intact(), "{report:?}");
    drop(store);
}

#[test]
fn merge_then_unmerge_restores_both_records_postgres() {
    merge_then_unmerge_restores_both(Engine::Postgres);
}

#[test]
fn merge_then_unmerge_restores_both_records_sqlite() {
    merge_then_unmerge_restores_both(Engine::Sqlite);
}
