//! Duplicate candidates (issue 17), on both engines with the real store: a verified
//! identifier shared by two customers opens one `strong` exception per pair, the policy's
//! secondary rule a `weak` one; a repeated write counts it again; stewards may only dismiss
//! it; erasure of either customer closes it; its evidence names kinds, never values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use idledger_app::duplicates::BACKFILL_FINDER;
use idledger_app::{ActError, App, BackfillReport, Steward, StewardRequest};
use idledger_domain::command::Change;
use idledger_domain::event::StewardAction;
use idledger_domain::exception::ExceptionRefusal;
use idledger_domain::ids::CustomerId;
use idledger_domain::policy::Policy;
use idledger_store::delivery::{
    ExceptionFilter, ExceptionKind, ExceptionStatus, Resolution, SyncException,
};
use idledger_testkit::builders::{
    dpo, fresh_command, new_customer, provenance, request_change, set, source,
};
use idledger_testkit::{Engine, TestStore, on_both_engines};
use serde_json::{Value, json};

const DEFAULT_POLICY: &str = include_str!("../../../deploy/policy.toml");

async fn app(engine: Engine) -> (TestStore, App) {
    let store = TestStore::new(engine).await;
    let app = App::new(store.ledger.clone());
    (store, app)
}

async fn app_with(engine: Engine, policy_toml: &str) -> (TestStore, App) {
    let store = TestStore::with_policy(engine, Policy::from_toml(policy_toml).unwrap()).await;
    let app = App::new(store.ledger.clone());
    (store, app)
}

/// Runs `changes` for `customer` as `by` through the app (fresh key), as the edges do.
async fn write(app: &App, by: &str, customer: CustomerId, changes: Vec<Change>) {
    app.run_command(&source(by), &fresh_command(customer, changes))
        .await
        .unwrap_or_else(|e| panic!("command by {by} failed: {e}"));
}

/// A customer the idp registers with `changes` (its commands carry evidence: verified).
async fn registered(app: &App, changes: Vec<Change>) -> CustomerId {
    let customer = new_customer();
    let mut all = vec![Change::Register];
    all.extend(changes);
    write(app, "idp", customer, all).await;
    customer
}

async fn duplicates(app: &App, status: Option<ExceptionStatus>) -> Vec<SyncException> {
    let filter = ExceptionFilter {
        kind: Some(ExceptionKind::DuplicateCandidate),
        status,
        ..ExceptionFilter::default()
    };
    app.deliveries().exceptions(&filter, 1000).await.unwrap()
}

async fn open_duplicates(app: &App) -> Vec<SyncException> {
    duplicates(app, Some(ExceptionStatus::Open)).await
}

/// The open exception about the pair, checking it is keyed on the lower id.
fn pair(all: &[SyncException], a: CustomerId, b: CustomerId) -> SyncException {
    let (low, high) = if a < b { (a, b) } else { (b, a) };
    let found: Vec<&SyncException> = all
        .iter()
        .filter(|e| e.customer_id == low && e.subject.other_customer() == Some(high))
        .collect();
    assert_eq!(found.len(), 1, "one exception for the pair: {all:#?}");
    let e = found[0].clone();
    assert_eq!(e.field, None);
    assert_eq!(e.detail["other_customer_id"], json!(high));
    e
}

/// Nothing of the values shows in the evidence: only kinds, ids, the writer.
fn assert_no_plaintext(e: &SyncException, values: &[&str]) {
    let text = serde_json::to_string(&e.detail).unwrap().to_lowercase();
    for value in values {
        assert!(
            !text.contains(&value.to_lowercase()),
            "{value} in the evidence: {text}"
        );
    }
}

async fn a_shared_verified_email_opens_one_strong_candidate_per_pair(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    assert!(
        open_duplicates(&app).await.is_empty(),
        "alone: no candidate"
    );
    // Written another way, normalised to the same address.
    let b = registered(&app, vec![set("email", json!(" Ada@Example.ORG "))]).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let ab = pair(&open, a, b);
    assert_eq!(ab.detail["strength"], "strong");
    assert_eq!(ab.detail["matched_on"], json!(["email"]));
    assert_eq!(ab.detail["found_by"], "idp");
    assert_eq!(ab.detail["changed_customer_id"], json!(b));
    assert_eq!(ab.occurrences, 1);
    assert_no_plaintext(&ab, &["ada@example.org", "example"]);

    // A third: one candidate with each of the others, the first pair untouched.
    let c = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 3, "{open:#?}");
    assert_eq!(pair(&open, a, b).occurrences, 1);
    pair(&open, a, c);
    pair(&open, b, c);

    // Either side of a pair lists it among its customer's exceptions.
    for customer in [a, b, c] {
        let filter = ExceptionFilter {
            customer: Some(customer),
            kind: Some(ExceptionKind::DuplicateCandidate),
            ..ExceptionFilter::default()
        };
        assert_eq!(
            app.deliveries()
                .exceptions(&filter, 100)
                .await
                .unwrap()
                .len(),
            2,
            "each customer is in two pairs"
        );
    }

    // The same value written again counts the open exceptions again, whichever side wrote.
    write(&app, "idp", a, vec![set("email", json!("ada@example.org"))]).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 3, "{open:#?}");
    assert_eq!(pair(&open, a, b).occurrences, 2);
    assert_eq!(pair(&open, a, c).occurrences, 2);
    assert_eq!(pair(&open, b, c).occurrences, 1);
    assert_eq!(pair(&open, a, b).detail["changed_customer_id"], json!(a));
}

async fn a_pending_or_unverified_email_is_no_candidate(engine: Engine) {
    let (_store, app) = app(engine).await;
    registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    // A change requested and not confirmed is not the customer's.
    let pending = registered(&app, vec![]).await;
    write(
        &app,
        "web_app",
        pending,
        vec![request_change("email", json!("ada@example.org"))],
    )
    .await;
    assert!(open_duplicates(&app).await.is_empty());

    // Where the policy lets a source set an email without verification, such a value proves
    // nothing: two customers holding it are no candidate.
    let lax = DEFAULT_POLICY.replacen(
        "[fields.email]\nsystem_of_record = \"idp\"\nrequires_verification = true",
        "[fields.email]\nsystem_of_record = \"idp\"\nrequires_verification = false",
        1,
    );
    assert_ne!(lax, DEFAULT_POLICY);
    let (_store, app) = app_with(engine, &lax).await;
    let unverified = |customer| {
        let mut command = fresh_command(
            customer,
            vec![Change::Register, set("email", json!("ada@example.org"))],
        );
        command.provenance = provenance(false);
        command
    };
    for _ in 0..2 {
        app.run_command(&source("idp"), &unverified(new_customer()))
            .await
            .unwrap();
    }
    assert!(open_duplicates(&app).await.is_empty());
}

async fn a_shared_phone_or_external_id_is_strong(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("phone", json!("+44 20 7946 0958"))]).await;
    let b = registered(&app, vec![set("phone", json!("0044 20 7946 0958"))]).await;
    let open = open_duplicates(&app).await;
    let ab = pair(&open, a, b);
    assert_eq!(ab.detail["strength"], "strong");
    assert_eq!(ab.detail["matched_on"], json!(["phone"]));
    assert_no_plaintext(&ab, &["7946", "0958"]);

    // The CRM fills its id in on two customers: strong, naming the system, not the id.
    let c = registered(&app, vec![]).await;
    let d = registered(&app, vec![]).await;
    write(
        &app,
        "crm",
        c,
        vec![set("external_id.crm", json!("C-4242"))],
    )
    .await;
    write(
        &app,
        "crm",
        d,
        vec![set("external_id.crm", json!("C-4242"))],
    )
    .await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 2, "{open:#?}");
    let cd = pair(&open, c, d);
    assert_eq!(cd.detail["strength"], "strong");
    assert_eq!(cd.detail["matched_on"], json!(["external_id.crm"]));
    assert_eq!(cd.detail["found_by"], "crm");
    assert_no_plaintext(&cd, &["C-4242", "4242"]);
}

async fn the_secondary_rule_opens_a_weak_candidate_when_on(engine: Engine) {
    let person = |family: &str, email: &str| {
        vec![
            set("email", json!(email)),
            set("name.family", json!(family)),
            set("birth_date", json!("1990-04-23")),
        ]
    };
    // On in the shipped policy: family name and birth date, names folded.
    let (_store, app) = app(engine).await;
    let a = registered(&app, person("Lovelace", "ada@example.org")).await;
    let b = registered(&app, person("  LOVELACE ", "augusta@example.org")).await;
    registered(&app, person("Byron", "byron@example.org")).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let ab = pair(&open, a, b);
    assert_eq!(ab.detail["strength"], "weak");
    assert_eq!(ab.detail["matched_on"], json!(["name.family+birth_date"]));
    assert_no_plaintext(&ab, &["lovelace", "1990", "ada@", "augusta"]);

    // The same email as well: the pair's one exception becomes strong, naming both.
    write(&app, "idp", b, vec![set("email", json!("ada@example.org"))]).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 1, "{open:#?}");
    let ab = pair(&open, a, b);
    assert_eq!(ab.detail["strength"], "strong");
    assert_eq!(
        ab.detail["matched_on"],
        json!(["email", "name.family+birth_date"])
    );
    assert_eq!(ab.occurrences, 2);

    // Off (an empty rule): the same records make no candidate.
    let off = DEFAULT_POLICY.replacen(
        "secondary = [\"name.family\", \"birth_date\"]",
        "secondary = []",
        1,
    );
    assert_ne!(off, DEFAULT_POLICY);
    let (_store, app) = app_with(engine, &off).await;
    registered(&app, person("Lovelace", "ada@example.org")).await;
    registered(&app, person("Lovelace", "augusta@example.org")).await;
    assert!(open_duplicates(&app).await.is_empty());
}

async fn stewards_may_only_dismiss_a_candidate(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let b = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let id = pair(&open_duplicates(&app).await, a, b).id;
    let jane = Steward::new("jane").unwrap();
    for action in [
        StewardAction::Accept,
        StewardAction::Repush,
        StewardAction::Route,
    ] {
        let refused = app
            .act(
                &jane,
                id,
                &StewardRequest {
                    action,
                    reason: None,
                    value: Some(json!("ada@example.org")),
                },
            )
            .await;
        match refused {
            Err(ActError::Refused(r @ ExceptionRefusal::DismissOnly { .. })) => {
                assert_eq!(r.code(), "dismiss_only");
            }
            other => panic!("{action:?}: {other:?}"),
        }
    }
    app.act(
        &jane,
        id,
        &StewardRequest {
            action: StewardAction::Dismiss,
            reason: Some("not the same person: twins sharing an address".to_owned()),
            value: None,
        },
    )
    .await
    .unwrap();
    let e = app.deliveries().exception(id).await.unwrap().unwrap();
    assert_eq!(e.status, ExceptionStatus::Dismissed);
    assert_eq!(e.resolved_by.as_deref(), Some("steward:jane"));
    assert!(open_duplicates(&app).await.is_empty());

    // Seen again after a dismissal, the pair opens anew (a steward may have been wrong, and
    // the dismissal stays in the record of the first one).
    write(&app, "idp", b, vec![set("email", json!("ada@example.org"))]).await;
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 1);
    assert_ne!(open[0].id, id);
}

async fn erasing_either_customer_closes_the_candidate(engine: Engine) {
    let (_store, app) = app(engine).await;
    let a = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let b = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    let c = registered(&app, vec![set("email", json!("ada@example.org"))]).await;
    assert_eq!(open_duplicates(&app).await.len(), 3);
    // `c` has the highest id: in both its pairs it is the other customer, not the key's.
    assert!(a < c && b < c);
    app.erase(c, dpo(), "subject's request").await.unwrap();
    let all = duplicates(&app, None).await;
    let open: Vec<&SyncException> = all
        .iter()
        .filter(|e| e.status == ExceptionStatus::Open)
        .collect();
    assert_eq!(open.len(), 1, "{all:#?}");
    assert_eq!(open[0].customer_id, a.min(b));
    for e in all.iter().filter(|e| e.subject.other_customer() == Some(c)) {
        assert_eq!(e.status, ExceptionStatus::Resolved);
        assert_eq!(e.resolution, Some(Resolution::Auto));
        assert_eq!(e.resolved_by.as_deref(), Some("idledger"));
    }
    // The erased customer is found by nothing: writing the others again opens nothing new.
    write(&app, "idp", a, vec![set("email", json!("ada@example.org"))]).await;
    assert_eq!(open_duplicates(&app).await.len(), 1);

    // The lower one erased: its pair closes too.
    app.erase(a.min(b), dpo(), "subject's request")
        .await
        .unwrap();
    assert!(open_duplicates(&app).await.is_empty());
    let detail: Vec<Value> = duplicates(&app, None)
        .await
        .into_iter()
        .map(|e| e.detail)
        .collect();
    assert_eq!(detail.len(), 3);
}

on_both_engines!(
    a_backfill_opens_what_detection_never_saw_once,
    a_shared_verified_email_opens_one_strong_candidate_per_pair,
    a_pending_or_unverified_email_is_no_candidate,
    a_shared_phone_or_external_id_is_strong,
    the_secondary_rule_opens_a_weak_candidate_when_on,
    stewards_may_only_dismiss_a_candidate,
    erasing_either_customer_closes_the_candidate,
);

/// Customers recorded straight through the ledger (as before duplicate detection existed):
/// the backfill opens the candidates live detection would have, weak ones included, with
/// its own name as the finder; skips erased records; and a second run opens nothing, nor
/// reopens a pair a steward dismissed.
async fn a_backfill_opens_what_detection_never_saw_once(engine: Engine) {
    let (store, app) = app(engine).await;
    let recorded = |changes: Vec<Change>| {
        let ledger = store.ledger.clone();
        async move {
            let customer = new_customer();
            let mut all = vec![Change::Register];
            all.extend(changes);
            idledger_testkit::builders::run(&ledger, "idp", customer, all).await;
            customer
        }
    };
    let a = recorded(vec![set("email", json!("ada@example.org"))]).await;
    let b = recorded(vec![set("email", json!(" Ada@Example.ORG "))]).await;
    // Would match both, but is erased.
    let c = recorded(vec![set("email", json!("ada@example.org"))]).await;
    idledger_testkit::builders::erase(&store.ledger, c).await;
    // A weak pair, by the shipped secondary rule.
    let person = |family: &str| {
        vec![
            set("name.family", json!(family)),
            set("birth_date", json!("1990-04-23")),
        ]
    };
    let d = recorded(person("Byron")).await;
    let e = recorded(person(" BYRON")).await;
    recorded(vec![set("email", json!("grace@example.org"))]).await;
    assert!(
        duplicates(&app, None).await.is_empty(),
        "detection bypassed"
    );
    let dry = app.backfill_duplicates(true, &|_| {}).await.unwrap();
    assert_eq!((dry.customers, dry.opened), (5, 2));
    assert!(
        duplicates(&app, None).await.is_empty(),
        "a dry run writes nothing"
    );

    let counted = std::sync::Mutex::new(Vec::new());
    let report = app
        .backfill_duplicates(false, &|p| counted.lock().unwrap().push(p.customers))
        .await
        .unwrap();
    assert_eq!(
        report,
        BackfillReport {
            dry_run: false,
            customers: 5,
            opened: 2,
            already_known: 0,
        }
    );
    assert_eq!(counted.lock().unwrap().last(), Some(&5));
    let open = open_duplicates(&app).await;
    assert_eq!(open.len(), 2, "{open:#?}");
    let ab = pair(&open, a, b);
    assert_eq!(ab.detail["strength"], "strong");
    assert_eq!(ab.detail["matched_on"], json!(["email"]));
    assert_eq!(ab.detail["found_by"], BACKFILL_FINDER);
    assert_eq!(ab.occurrences, 1);
    assert_no_plaintext(&ab, &["ada@example.org"]);
    assert_eq!(pair(&open, d, e).detail["strength"], "weak");
    assert!(
        open.iter()
            .all(|x| x.customer_id != c && x.subject.other_customer() != Some(c))
    );

    // Again: nothing new, nothing counted again.
    let again = app.backfill_duplicates(false, &|_| {}).await.unwrap();
    assert_eq!((again.opened, again.already_known), (0, 2));
    let open_again = open_duplicates(&app).await;
    assert_eq!(open_again.len(), 2);
    assert_eq!(pair(&open_again, a, b).occurrences, 1);

    // A dismissed pair stays dismissed; a dry run counts and writes nothing.
    app.act(
        &Steward::new("jane").unwrap(),
        ab.id,
        &StewardRequest {
            action: StewardAction::Dismiss,
            reason: Some("twins".to_owned()),
            value: None,
        },
    )
    .await
    .unwrap();
    let dry = app.backfill_duplicates(true, &|_| {}).await.unwrap();
    assert_eq!((dry.dry_run, dry.opened, dry.already_known), (true, 0, 2));
    let third = app.backfill_duplicates(false, &|_| {}).await.unwrap();
    assert_eq!((third.opened, third.already_known), (0, 2));
    assert_eq!(open_duplicates(&app).await.len(), 1);
    assert_eq!(duplicates(&app, None).await.len(), 2);
}
