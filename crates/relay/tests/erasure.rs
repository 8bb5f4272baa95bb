//! Erasure at delivery, on a real NATS and both engines: an erased customer's events are
//! delivered to no one (not even a consumer that was behind when the erasure happened), a
//! consumer that was ever sent the customer's data gets one erasure notice, and nothing about
//! shredded events is reported as an error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_domain::ids::CustomerId;
use idledger_relay::envelope::{
    CONSENT_WITHDRAWN, CUSTOMER_ERASED, CloudEvent, ERASURE_SUBJECT_FIELD, FIELD_CHANGED,
};
use idledger_store::delivery::{Channel, ExceptionFilter, HandoffFilter, HandoffKind, Relation};
use support::*;

on_both_engines!(erasure_brings_one_notice_and_nothing_of_the_customer);

fn of(events: &[CloudEvent], customer: CustomerId) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.subject == customer.to_string())
        .map(|e| match e.data["value"].as_str() {
            Some(value) => format!("{} {value}", e.event_type),
            None => e.event_type.clone(),
        })
        .collect()
}

async fn erasure_brings_one_notice_and_nothing_of_the_customer(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    store
        .register(consumer("mkt", Channel::Nats, &["email"], &["marketing"]))
        .await;
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["service"]))
        .await;
    let ledger = &store.ledger;
    let a = customer_consenting(ledger, &["marketing", "service"]).await;
    let b = customer_consenting(ledger, &["service"]).await;
    let kept = customer_consenting(ledger, &["service"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    run(ledger, "idp", b, vec![set("email", email(2))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("mkt", Duration::from_secs(20)).await;
    store.caught_up("crm", Duration::from_secs(20)).await;
    // The marketing tool is told to delete A (withdrawal) but was sent A's data before.
    run(ledger, "consent_portal", a, vec![withdraw("marketing")]).await;
    store.caught_up("mkt", Duration::from_secs(20)).await;
    relay.stop().await;

    // While the relay is down: A changes, then A and B are erased. A's change is shredded
    // before anyone read it.
    run(ledger, "idp", a, vec![set("email", email(3))]).await;
    erase(ledger, a).await;
    erase(ledger, b).await;
    run(ledger, "idp", kept, vec![set("email", email(4))]).await;
    // A consumer registered afterwards, reading from the beginning: the shredded events and
    // erasures of customers it never received are nothing to it.
    store
        .register(consumer("late", Channel::Nats, &["email"], &["service"]))
        .await;
    let mut config = test_config(Some(nats.clone()));
    config.expiry_sweep_interval = Duration::from_millis(100);
    let relay = RunningRelay::start(ledger.clone(), config);
    for c in ["mkt", "crm", "late"] {
        store.caught_up(c, Duration::from_secs(20)).await;
    }
    // Sweeps run meanwhile: they must add nothing for the erased customers.
    tokio::time::sleep(Duration::from_millis(400)).await;
    relay.stop().await;

    let js = jetstream(&url).await;
    let prefix = &nats.stream.subject_prefix;
    let read = async |c: &str| -> Vec<CloudEvent> {
        dedupe(&read_stream(&js, &nats.stream.name, &format!("{prefix}.{c}.>")).await)
            .into_iter()
            .map(|d| d.event)
            .collect()
    };
    let (mkt, crm, late) = (read("mkt").await, read("crm").await, read("late").await);
    let e = |n| format!("{FIELD_CHANGED} {}", email(n).as_str().unwrap());
    assert_eq!(
        of(&mkt, a),
        [
            e(1),
            CONSENT_WITHDRAWN.to_owned(),
            CUSTOMER_ERASED.to_owned()
        ],
        "a withdrawn consumer was sent A's data once: it is told of the erasure too"
    );
    assert_eq!(of(&mkt, b), Vec::<String>::new(), "never sent B: not told");
    assert_eq!(
        of(&crm, a),
        [e(1), CUSTOMER_ERASED.to_owned()],
        "A's change shredded before delivery is not delivered; one erasure notice"
    );
    assert_eq!(of(&crm, b), [e(2), CUSTOMER_ERASED.to_owned()]);
    assert_eq!(of(&crm, kept), [e(4)]);
    assert_eq!(
        of(&late, a).len() + of(&late, b).len(),
        0,
        "a consumer that never received them learns nothing of erased customers"
    );
    assert_eq!(of(&late, kept), [e(4)]);

    let notice = crm
        .iter()
        .find(|e| e.event_type == CUSTOMER_ERASED && e.subject == a.to_string())
        .unwrap();
    assert_eq!(notice.data["action"], "delete_all");
    assert_eq!(notice.data["fields"], serde_json::json!(["email"]));
    let state = ledger.state(a).await.unwrap().unwrap();
    let erased_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(notice.data["erased_at"].clone()).unwrap();
    assert_eq!(erased_at, state.erased.unwrap().at);
    assert_eq!(notice.time, erased_at);
    let subjects = read_stream(&js, &nats.stream.name, &format!("{prefix}.crm.>")).await;
    assert!(subjects.iter().any(|d| d.subject
        == format!("{prefix}.crm.{a}.{ERASURE_SUBJECT_FIELD}")
        && d.event.event_type == CUSTOMER_ERASED));

    // The handoff log records the erasure notices; the relation is final.
    let log = store
        .deliveries
        .handoffs(&HandoffFilter::Customer(a), None, 100)
        .await
        .unwrap();
    let erasures: Vec<&str> = log
        .items
        .iter()
        .filter(|h| h.handoff.kind == HandoffKind::Erasure)
        .map(|h| h.handoff.consumer_id.as_str())
        .collect();
    assert_eq!(erasures.len(), 2);
    assert!(erasures.contains(&"mkt") && erasures.contains(&"crm"));
    for c in ["mkt", "crm"] {
        let id = idledger_store::delivery::ConsumerId::parse(c).unwrap();
        let relations = store.deliveries.relations(&id, &[a]).await.unwrap();
        assert_eq!(relations[&a], Relation::Erased, "{c}");
    }
    // Shredded events are expected, not errors: no sync exception anywhere.
    let exceptions = store
        .deliveries
        .exceptions(&ExceptionFilter::default(), 100)
        .await
        .unwrap();
    assert!(exceptions.is_empty(), "{exceptions:?}");
}
