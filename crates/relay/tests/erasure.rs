//! Erasure at delivery, on a real NATS and both engines: an erased customer's events are
//! delivered to no one (not even a consumer that was behind when the erasure happened), a
//! consumer that was ever sent the customer's data gets one erasure notice, and nothing about
//! shredded events is reported as an error. The stream keeps nothing of the customer but the
//! notices, and no checkpoint passes the erasure before NATS has let go of the customer's
//! messages (every consumer's, a disabled one's too).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use idledger_domain::ids::CustomerId;
use idledger_relay::envelope::{CUSTOMER_ERASED, CloudEvent, FIELD_CHANGED};
use idledger_store::delivery::{Channel, ExceptionFilter, HandoffFilter, HandoffKind, Relation};
use support::*;

on_both_engines!(
    erasure_brings_one_notice_and_nothing_of_the_customer,
    the_checkpoint_waits_until_the_customers_messages_left_the_stream,
    a_webhook_that_refused_a_customers_first_change_is_told_of_the_erasure,
    an_erasure_after_an_unmerge_takes_what_the_survivor_sent_of_the_absorbed_record,
);

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
    // What each consumer was sent, from the handoff log: the stream itself keeps nothing of
    // an erased customer but the erasure notices.
    let sent = async |c: &str, customer: CustomerId| -> Vec<HandoffKind> {
        let log = store
            .deliveries
            .handoffs(&HandoffFilter::Customer(customer), None, 100)
            .await
            .unwrap();
        log.items
            .iter()
            .filter(|h| h.handoff.consumer_id.as_str() == c)
            .map(|h| h.handoff.kind)
            .collect()
    };
    use HandoffKind::{Change, Erasure, Notice};
    assert_eq!(
        sent("mkt", a).await,
        [Change, Notice, Erasure],
        "a withdrawn consumer was sent A's data once: it is told of the erasure too"
    );
    assert_eq!(of(&mkt, a), [CUSTOMER_ERASED.to_owned()]);
    assert_eq!(sent("mkt", b).await, [], "never sent B: not told");
    assert_eq!(of(&mkt, b), Vec::<String>::new());
    assert_eq!(
        sent("crm", a).await,
        [Change, Erasure],
        "A's change shredded before delivery is not delivered; one erasure notice"
    );
    assert_eq!(of(&crm, a), [CUSTOMER_ERASED.to_owned()]);
    assert_eq!(sent("crm", b).await, [Change, Erasure]);
    assert_eq!(of(&crm, b), [CUSTOMER_ERASED.to_owned()]);
    assert_eq!(of(&crm, kept), [e(4)], "another customer's messages stay");
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
    // The notice's subject ends at the customer: out of reach of the filter that removes the
    // customer's messages, inside the consumer's `<prefix>.crm.>`.
    let subjects = read_stream(&js, &nats.stream.name, &format!("{prefix}.crm.>")).await;
    assert!(
        subjects
            .iter()
            .any(|d| d.subject == format!("{prefix}.crm.{a}")
                && d.event.event_type == CUSTOMER_ERASED)
    );

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

async fn the_checkpoint_waits_until_the_customers_messages_left_the_stream(engine: Engine) {
    use async_nats::jetstream::{consumer::pull, stream};
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    let js = jetstream(&url).await;
    let (name, prefix) = (&nats.stream.name, &nats.stream.subject_prefix);
    // The stream as the relay wants it, but allowed three JetStream consumers: the durables
    // the relay keeps for crm and old, and one the test takes: the relay cannot list the
    // erased customer's messages until it is freed.
    let delivery = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            max_age: nats.stream.max_age.unwrap(),
            num_replicas: 1,
            duplicate_window: nats.stream.duplicate_window,
            max_consumers: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    for c in ["crm", "old"] {
        store
            .register(consumer(c, Channel::Nats, &["email"], &["service"]))
            .await;
    }
    let ledger = &store.ledger;
    let a = customer_consenting(ledger, &["service"]).await;
    let kept = customer_consenting(ledger, &["service"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    run(ledger, "idp", kept, vec![set("email", email(2))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    store.caught_up("old", Duration::from_secs(20)).await;
    relay.stop().await;
    // A disabled consumer has no task any more; what it was sent is still in the stream.
    store
        .deliveries
        .disable_consumer(&consumer_id("old"), chrono::Utc::now())
        .await
        .unwrap();
    let of_customer = async |customer: CustomerId| -> Vec<(String, String)> {
        stream_messages(&js, name)
            .await
            .into_iter()
            .filter(|(subject, _)| subject.contains(&customer.to_string()))
            .map(|(subject, body)| {
                let event: CloudEvent = serde_json::from_slice(&body).unwrap();
                (subject, event.event_type)
            })
            .collect()
    };
    assert_eq!(of_customer(a).await.len(), 2, "crm's and old's email");
    delivery
        .create_consumer(pull::Config {
            durable_name: Some("blocker".to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();

    erase(ledger, a).await;
    let erasure = ledger.head_position().await.unwrap();
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    // The notice goes out; removing A's messages fails, again and again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = store
            .deliveries
            .handoffs(&HandoffFilter::Customer(a), None, 100)
            .await
            .unwrap();
        if log
            .items
            .iter()
            .any(|h| h.handoff.kind == HandoffKind::Erasure)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no erasure notice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let at = store
        .deliveries
        .checkpoint(&consumer_id("crm"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        at < erasure,
        "the checkpoint passed the erasure ({at} >= {erasure}) though A's messages are in the stream"
    );
    assert_eq!(of_customer(a).await.len(), 3, "both emails and the notice");

    // NATS lets go: the retry removes them and the checkpoint moves on, with no second notice.
    delivery.delete_consumer("blocker").await.unwrap();
    store.caught_up("crm", Duration::from_secs(20)).await;
    relay.stop().await;
    assert_eq!(
        of_customer(a).await,
        [(format!("{prefix}.crm.{a}"), CUSTOMER_ERASED.to_owned())],
        "nothing of A but crm's one notice: nothing of the disabled consumer's either"
    );
    let email_to = |c: &str| {
        (
            format!("{prefix}.{c}.{kept}.email"),
            FIELD_CHANGED.to_owned(),
        )
    };
    // Two consumers' workers publish concurrently: their order in the stream is not defined.
    let mut kept_messages = of_customer(kept).await;
    kept_messages.sort();
    assert_eq!(
        kept_messages,
        [email_to("crm"), email_to("old")],
        "another customer's messages stay"
    );
}

/// The change that first makes a consumer a recipient may be refused (a webhook's 4xx) while
/// the next, in the same step, is taken: the consumer was sent the customer's data all the
/// same, and is told of the erasure — without the receiver's answer being kept.
async fn a_webhook_that_refused_a_customers_first_change_is_told_of_the_erasure(engine: Engine) {
    let store = TestStore::new(engine).await;
    let receiver = Receiver::start(
        0,
        Arc::new(|event: &CloudEvent, _| {
            if event.data["field"] == "email" || event.event_type == CUSTOMER_ERASED {
                (422, None)
            } else {
                (204, None)
            }
        }),
    )
    .await;
    store
        .register(consumer(
            "cdp",
            webhook_channel(&receiver.url()),
            &["email", "name.given"],
            &["service"],
        ))
        .await;
    let ledger = &store.ledger;
    let a = customer_consenting(ledger, &["service"]).await;
    run(
        ledger,
        "idp",
        a,
        vec![
            set("email", email(1)),
            set("name.given", serde_json::json!("Grace")),
        ],
    )
    .await;
    let relay = RunningRelay::start(ledger.clone(), test_config(None));
    store.caught_up("cdp", Duration::from_secs(20)).await;
    let cdp = consumer_id("cdp");
    let relations = store.deliveries.relations(&cdp, &[a]).await.unwrap();
    assert_eq!(relations.get(&a), Some(&Relation::Receiving));
    erase(ledger, a).await;
    store.caught_up("cdp", Duration::from_secs(20)).await;
    relay.stop().await;
    let types: Vec<String> = receiver
        .received()
        .iter()
        .map(|r| {
            serde_json::from_slice::<CloudEvent>(&r.body)
                .unwrap()
                .event_type
        })
        .collect();
    assert_eq!(types.last().map(String::as_str), Some(CUSTOMER_ERASED));
    let refused = store
        .deliveries
        .exceptions(
            &ExceptionFilter {
                customer: Some(a),
                open_only: true,
                ..ExceptionFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].detail["type"], CUSTOMER_ERASED);
    assert_eq!(refused[0].detail["status"], 422);
    assert_eq!(
        refused[0].detail["body"],
        serde_json::Value::Null,
        "nothing the receiver answered about an erased customer is kept"
    );
}

async fn an_erasure_after_an_unmerge_takes_what_the_survivor_sent_of_the_absorbed_record(
    engine: Engine,
) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    store
        .register(consumer(
            "crm",
            Channel::Nats,
            &["email", "locale"],
            &["service"],
        ))
        .await;
    let ledger = &store.ledger;
    let a = customer_consenting(ledger, &["service"]).await;
    let b = customer_consenting(ledger, &["service"]).await;
    run(ledger, "idp", b, vec![set("email", email(1))]).await;
    ledger
        .merge(a, b, &dpo(), "same person", None)
        .await
        .unwrap();
    // While merged: a change of what came from B, and one of A's own.
    run(ledger, "idp", a, vec![set("email", email(2))]).await;
    run(
        ledger,
        "web_app",
        a,
        vec![set("locale", serde_json::json!("fr-FR"))],
    )
    .await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    let js = jetstream(&url).await;
    let subjects = format!("{}.crm.>", nats.stream.subject_prefix);
    let e = |n| format!("{FIELD_CHANGED} {}", email(n).as_str().unwrap());
    let read = async || -> Vec<CloudEvent> {
        dedupe(&read_stream(&js, &nats.stream.name, &subjects).await)
            .into_iter()
            .map(|d| d.event)
            .collect()
    };
    let of_a = of(&read().await, a);
    assert!(
        of_a.contains(&e(1)) && of_a.contains(&e(2)),
        "sent as A's while merged: {of_a:?}"
    );

    ledger
        .unmerge(a, b, &dpo(), "two people after all")
        .await
        .unwrap();
    erase(ledger, b).await;
    store.caught_up("crm", Duration::from_secs(20)).await;
    relay.stop().await;

    let kept = read().await;
    let of_a = of(&kept, a);
    assert!(
        !of_a.contains(&e(1)) && !of_a.contains(&e(2)),
        "B's data left A's subjects with B's erasure: {of_a:?}"
    );
    assert!(
        of_a.contains(&format!("{FIELD_CHANGED} fr-FR")),
        "A's own change stays: {of_a:?}"
    );
    assert_eq!(of(&kept, b), [CUSTOMER_ERASED.to_owned()]);
}
