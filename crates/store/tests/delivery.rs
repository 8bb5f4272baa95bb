//! Delivery bookkeeping on every backend: the consumer registry, checkpoints, the handoff log,
//! acknowledgements as consumer state, and sync exceptions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::Utc;
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::state::ConsentStatus;
use idledger_store::delivery::{
    Ack, AckOutcome, AckStatus, Channel, ChannelKind, ConsentBasis, DeliveryCommit,
    ExceptionFilter, ExceptionKind, Handoff, HandoffFilter, HandoffKind, NewConsumer,
    NewSyncException, RegisterError, Relation, StartAt, ValueHash, Webhook, WebhookSecret,
};
use idledger_store::{Deliveries, Ledger};
use serde_json::json;
use support::*;

on_both_engines!(
    consumers_register_list_and_disable,
    a_checkpoint_never_goes_back,
    the_last_relation_of_a_commit_wins,
    handoffs_of_a_customer_are_paged_in_log_order_across_consumers,
    a_redelivered_handoff_is_logged_once,
    acks_become_consumer_state_newest_version_wins,
    a_later_ack_of_the_same_version_may_change_its_status,
    acks_that_match_nothing_delivered_are_refused_and_change_nothing,
    erasure_removes_consumer_state_and_refuses_acks,
    one_open_exception_per_consumer_customer_field_and_kind,
);

async fn nats_consumer(deliveries: &Deliveries, name: &str) {
    let new = consumer(name, Channel::Nats, &["email"], &["crm"]);
    deliveries.register_consumer(new, Utc::now()).await.unwrap();
}

/// A customer with one `email` event; returns it and the event.
async fn customer_with_email(ledger: &Ledger) -> (CustomerId, EventId) {
    let customer = new_customer();
    let result = ledger
        .execute(
            &source("idp"),
            &command(
                customer,
                &format!("k-{customer}"),
                vec![
                    idledger_domain::Change::Register,
                    set("email", json!("ada@example.org")),
                ],
            ),
        )
        .await
        .unwrap();
    (customer, result.result.events[1].id)
}

async fn consumers_register_list_and_disable(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = store.ledger.store().deliveries();
    customer_with_email(&store.ledger).await;
    let secret = WebhookSecret::parse("s3cret-s3cret-s3cret").unwrap();
    let webhook = NewConsumer::new(
        consumer_id("cdp"),
        Channel::Webhook(Webhook::new("https://cdp.example/hook", secret.clone()).unwrap()),
        selectors(&["email", "consent.*", "email"]),
        purposes(&["analytics", "marketing"]),
        StartAt::Now,
    )
    .unwrap();
    let registered = deliveries
        .register_consumer(webhook.clone(), Utc::now())
        .await
        .unwrap();
    assert_eq!(registered.fields, selectors(&["email", "consent.*"]));
    assert!(matches!(
        deliveries.register_consumer(webhook, Utc::now()).await,
        Err(RegisterError::Exists(_))
    ));
    nats_consumer(&deliveries, "crm").await;
    let all = deliveries.consumers().await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        ["cdp", "crm"]
    );
    let cdp = deliveries
        .consumer(&consumer_id("cdp"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cdp, registered, "reads back exactly what was registered");
    let Channel::Webhook(w) = &cdp.channel else {
        panic!("not a webhook: {cdp:?}")
    };
    assert_eq!((w.url(), &w.secret), ("https://cdp.example/hook", &secret));
    assert!(cdp.selects(&field("consent.marketing")) && !cdp.selects(&field("phone")));
    // "now" starts after what is already in the log; "beginning" before it.
    let head = store.ledger.head_position().await.unwrap();
    assert_eq!(
        deliveries.checkpoint(&consumer_id("cdp")).await.unwrap(),
        Some(head)
    );
    assert_eq!(
        deliveries.checkpoint(&consumer_id("crm")).await.unwrap(),
        Some(0)
    );
    assert!(
        deliveries
            .disable_consumer(&consumer_id("crm"), Utc::now())
            .await
            .unwrap()
    );
    assert!(
        !deliveries
            .disable_consumer(&consumer_id("nobody"), Utc::now())
            .await
            .unwrap()
    );
    let crm = deliveries
        .consumer(&consumer_id("crm"))
        .await
        .unwrap()
        .unwrap();
    assert!(!crm.is_enabled());
    assert!(
        deliveries
            .consumer(&consumer_id("nobody"))
            .await
            .unwrap()
            .is_none()
    );
}

fn handoff(consumer: &str, customer: CustomerId, event: EventId, position: u64) -> Handoff {
    Handoff {
        consumer_id: consumer_id(consumer),
        message_id: event.as_uuid(),
        kind: HandoffKind::Change,
        event_id: event,
        global_position: position,
        customer_id: customer,
        fields: vec!["email".to_owned()],
        basis: vec![ConsentBasis {
            purpose: Purpose::parse("crm").unwrap(),
            status: ConsentStatus::Granted,
            legal_basis: None,
            consent_version: Some(1),
            consent_event_id: None,
            notice: None,
            granted_at: None,
            expires_at: None,
        }],
        channel: ChannelKind::Nats,
        delivered_at: idledger_store::model::from_micros(Utc::now().timestamp_micros()),
    }
}

/// crm is sent three messages (relations to a and b changing on the way) with checkpoint 3,
/// then the same again with checkpoint 2 (a re-delivery after a crash); cdp is sent one with no
/// checkpoint.
struct Committed {
    store: TestStore,
    a: CustomerId,
    b: CustomerId,
    events: Vec<EventId>,
    first: [Handoff; 3],
}

async fn committed(engine: Engine) -> Committed {
    let store = TestStore::new(engine).await;
    let deliveries = store.ledger.store().deliveries();
    nats_consumer(&deliveries, "crm").await;
    nats_consumer(&deliveries, "cdp").await;
    let a = new_customer();
    let b = new_customer();
    let events: Vec<EventId> = (0..5)
        .map(|_| EventId::from(uuid::Uuid::now_v7()))
        .collect();
    let first = [
        handoff("crm", a, events[0], 1),
        handoff("crm", b, events[1], 2),
        handoff("crm", a, events[2], 3),
    ];
    let crm = consumer_id("crm");
    let commit = DeliveryCommit {
        consumer: &crm,
        handoffs: &first,
        relations: &[
            (a, Relation::Receiving),
            (b, Relation::Receiving),
            (a, Relation::Withdrawn),
        ],
        checkpoint: Some(3),
        at: Utc::now(),
    };
    deliveries.commit(&commit).await.unwrap();
    // A re-delivery of the same messages after a crash, with an older checkpoint.
    let again = DeliveryCommit {
        checkpoint: Some(2),
        relations: &[],
        ..commit.clone()
    };
    deliveries.commit(&again).await.unwrap();
    let cdp = consumer_id("cdp");
    deliveries
        .commit(&DeliveryCommit {
            consumer: &cdp,
            handoffs: &[handoff("cdp", a, events[0], 1)],
            relations: &[],
            checkpoint: None,
            at: Utc::now(),
        })
        .await
        .unwrap();
    Committed {
        store,
        a,
        b,
        events,
        first,
    }
}

async fn a_checkpoint_never_goes_back(engine: Engine) {
    let Committed { store, .. } = committed(engine).await;
    let deliveries = &store.deliveries;
    let (crm, cdp) = (consumer_id("crm"), consumer_id("cdp"));
    assert_eq!(deliveries.checkpoint(&crm).await.unwrap(), Some(3));
    // A commit without a checkpoint leaves it where it was.
    assert_eq!(deliveries.checkpoint(&cdp).await.unwrap(), Some(0));
}

async fn the_last_relation_of_a_commit_wins(engine: Engine) {
    let Committed { store, a, b, .. } = committed(engine).await;
    let deliveries = &store.deliveries;
    let crm = consumer_id("crm");
    let relations = deliveries
        .relations(&crm, &[a, b, new_customer()])
        .await
        .unwrap();
    assert_eq!(relations.len(), 2);
    assert_eq!(
        relations[&a],
        Relation::Withdrawn,
        "the last relation of a batch wins"
    );
    assert_eq!(relations[&b], Relation::Receiving);
    assert_eq!(
        deliveries
            .receiving_customers(&crm, None, 10)
            .await
            .unwrap(),
        vec![b]
    );
}

async fn handoffs_of_a_customer_are_paged_in_log_order_across_consumers(engine: Engine) {
    let Committed {
        store,
        a,
        events,
        first,
        ..
    } = committed(engine).await;
    let deliveries = &store.deliveries;
    // By customer: both consumers, in log order, paged.
    let page = deliveries
        .handoffs(&HandoffFilter::Customer(a), None, 2)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    let rest = deliveries
        .handoffs(&HandoffFilter::Customer(a), page.next, 2)
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert_eq!(rest.next, None);
    let of_a: Vec<(String, EventId)> = page
        .items
        .iter()
        .chain(&rest.items)
        .map(|h| (h.handoff.consumer_id.to_string(), h.handoff.event_id))
        .collect();
    assert_eq!(
        of_a,
        [
            ("crm".to_owned(), events[0]),
            ("crm".to_owned(), events[2]),
            ("cdp".to_owned(), events[0])
        ]
    );
    assert_eq!(
        page.items[0].handoff, first[0],
        "reads back what was logged"
    );
}

async fn a_redelivered_handoff_is_logged_once(engine: Engine) {
    let Committed { store, .. } = committed(engine).await;
    let deliveries = &store.deliveries;
    let crm = consumer_id("crm");
    let by_crm = deliveries
        .handoffs(&HandoffFilter::Consumer(crm.clone()), None, 100)
        .await
        .unwrap();
    assert_eq!(by_crm.items.len(), 3, "a re-delivery is logged once");
}

/// crm is registered and a customer has one `email` event; `ack` builds crm's ack of it.
struct AckSetup {
    store: TestStore,
    customer: CustomerId,
    event: EventId,
    hash: ValueHash,
}

impl AckSetup {
    fn ack(&self, version: u64, status: AckStatus, reason: Option<&str>) -> Ack {
        Ack {
            consumer_id: consumer_id("crm"),
            event_id: self.event,
            customer_id: self.customer,
            field: field("email"),
            version,
            value_hash: Some(self.hash.clone()),
            status,
            reason: reason.map(str::to_owned),
            acked_at: idledger_store::model::from_micros(Utc::now().timestamp_micros()),
        }
    }
}

async fn ack_setup(engine: Engine) -> AckSetup {
    let store = TestStore::new(engine).await;
    nats_consumer(&store.deliveries, "crm").await;
    let (customer, event) = customer_with_email(&store.ledger).await;
    let hash = ValueHash::parse(&format!("sha256:{}", "AB".repeat(32))).unwrap();
    assert_eq!(hash.as_str(), format!("sha256:{}", "ab".repeat(32)));
    AckSetup {
        store,
        customer,
        event,
        hash,
    }
}

async fn acks_become_consumer_state_newest_version_wins(engine: Engine) {
    let setup = ack_setup(engine).await;
    let (deliveries, customer, event, hash) = (
        &setup.store.deliveries,
        setup.customer,
        setup.event,
        &setup.hash,
    );
    let ack = |version, status, reason| setup.ack(version, status, reason);
    assert_eq!(
        deliveries
            .record_ack(&ack(2, AckStatus::Applied, None))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    assert_eq!(
        deliveries
            .record_ack(&ack(1, AckStatus::Rejected, Some("older")))
            .await
            .unwrap(),
        AckOutcome::Superseded { stored_version: 2 }
    );
    let state = deliveries
        .consumer_state(&consumer_id("crm"), Some(customer))
        .await
        .unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(
        (
            state[0].version,
            state[0].status,
            state[0].value_hash.as_deref()
        ),
        (2, AckStatus::Applied, Some(hash.as_str()))
    );
    assert_eq!(state[0].event_id, event);
}

async fn a_later_ack_of_the_same_version_may_change_its_status(engine: Engine) {
    let setup = ack_setup(engine).await;
    let deliveries = &setup.store.deliveries;
    let ack = |version, status, reason| setup.ack(version, status, reason);
    assert_eq!(
        deliveries
            .record_ack(&ack(2, AckStatus::Applied, None))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    // The same version again may change its status (e.g. a retry that now applies).
    assert_eq!(
        deliveries
            .record_ack(&ack(2, AckStatus::Rejected, Some("format")))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    let state = deliveries
        .consumer_state(&consumer_id("crm"), None)
        .await
        .unwrap();
    assert_eq!(
        (state[0].status, state[0].reason.as_deref()),
        (AckStatus::Rejected, Some("format"))
    );
}

async fn acks_that_match_nothing_delivered_are_refused_and_change_nothing(engine: Engine) {
    let setup = ack_setup(engine).await;
    let deliveries = &setup.store.deliveries;
    let ack = |version, status, reason| setup.ack(version, status, reason);
    assert_eq!(
        deliveries
            .record_ack(&ack(2, AckStatus::Applied, None))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    // Acks that match nothing we delivered are refused and change nothing.
    let invalid = [
        Ack {
            consumer_id: consumer_id("nobody"),
            ..ack(3, AckStatus::Applied, None)
        },
        Ack {
            event_id: EventId::from(uuid::Uuid::now_v7()),
            ..ack(3, AckStatus::Applied, None)
        },
        Ack {
            customer_id: new_customer(),
            ..ack(3, AckStatus::Applied, None)
        },
        Ack {
            field: field("phone"),
            ..ack(3, AckStatus::Applied, None)
        },
        ack(3, AckStatus::Rejected, None),
        ack(3, AckStatus::Rejected, Some(&"x".repeat(1001))),
    ];
    for bad in invalid {
        let outcome = deliveries.record_ack(&bad).await.unwrap();
        assert!(
            matches!(outcome, AckOutcome::Invalid(_)),
            "{bad:?}: {outcome:?}"
        );
    }
    let state = deliveries
        .consumer_state(&consumer_id("crm"), None)
        .await
        .unwrap();
    assert_eq!(state[0].version, 2);
}

async fn erasure_removes_consumer_state_and_refuses_acks(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = store.ledger.store().deliveries();
    nats_consumer(&deliveries, "crm").await;
    let (erased, erased_event) = customer_with_email(&store.ledger).await;
    let (kept, kept_event) = customer_with_email(&store.ledger).await;
    let ack = |customer: CustomerId, event: EventId| Ack {
        consumer_id: consumer_id("crm"),
        event_id: event,
        customer_id: customer,
        field: field("email"),
        version: 1,
        value_hash: Some(ValueHash::parse(&format!("sha256:{}", "ab".repeat(32))).unwrap()),
        status: AckStatus::Applied,
        reason: None,
        acked_at: idledger_store::model::from_micros(Utc::now().timestamp_micros()),
    };
    for (c, e) in [(erased, erased_event), (kept, kept_event)] {
        assert_eq!(
            deliveries.record_ack(&ack(c, e)).await.unwrap(),
            AckOutcome::Recorded
        );
    }
    erase(&store.ledger, erased).await;
    // A value hash is a digest of personal data: what consumers acked of the customer goes.
    let state = deliveries
        .consumer_state(&consumer_id("crm"), None)
        .await
        .unwrap();
    assert_eq!(
        state.iter().map(|s| s.customer_id).collect::<Vec<_>>(),
        [kept]
    );
    let outcome = deliveries
        .record_ack(&ack(erased, erased_event))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, AckOutcome::Invalid(r) if r.contains("erased")),
        "{outcome:?}"
    );
    assert!(
        deliveries
            .consumer_state(&consumer_id("crm"), Some(erased))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn one_open_exception_per_consumer_customer_field_and_kind(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = store.ledger.store().deliveries();
    nats_consumer(&deliveries, "crm").await;
    let a = new_customer();
    let b = new_customer();
    let open = |customer: CustomerId, path: &str, attempt: u32| NewSyncException {
        consumer_id: consumer_id("crm"),
        customer_id: customer,
        field: Some(field(path)),
        kind: ExceptionKind::WebhookRejected,
        detail: json!({"status": 422, "attempt": attempt}),
        at: Utc::now(),
    };
    let first = deliveries
        .open_exception(&open(a, "email", 1))
        .await
        .unwrap();
    let again = deliveries
        .open_exception(&open(a, "email", 2))
        .await
        .unwrap();
    assert_eq!(again.id, first.id);
    assert_eq!(again.occurrences, 2);
    assert_eq!(again.detail, json!({"status": 422, "attempt": 2}));
    assert_eq!(
        again.status,
        idledger_store::delivery::ExceptionStatus::Open
    );
    let other_field = deliveries
        .open_exception(&open(a, "phone", 1))
        .await
        .unwrap();
    let other_customer = deliveries
        .open_exception(&open(b, "email", 1))
        .await
        .unwrap();
    assert_ne!(other_field.id, first.id);
    assert_ne!(other_customer.id, first.id);
    let all = deliveries
        .exceptions(&ExceptionFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let of_a = deliveries
        .exceptions(
            &ExceptionFilter {
                customer: Some(a),
                open_only: true,
                ..ExceptionFilter::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(of_a.len(), 2);
    let after_first = deliveries
        .exceptions(
            &ExceptionFilter {
                after: Some(all[0].id),
                ..ExceptionFilter::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(after_first.len(), 2);
    assert_eq!(of_a[0].field.as_deref(), Some("email"));
}
