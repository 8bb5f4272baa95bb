//! Delivery bookkeeping on both engines: the consumer registry, checkpoints, the handoff log,
//! acknowledgements as consumer state, and sync exceptions.
//!
//! Covers every public method of `Deliveries`:
//! - [x] registry: `register_consumer`, `consumers`, `consumer`, `disable_consumer`,
//!   `checkpoint` (`consumers_register_list_and_disable`, `a_checkpoint_never_goes_back`)
//! - [x] handoffs: `commit` (the checkpoint, relation and handoff tests), `handoffs`,
//!   `relations`, `relations_since`, `receiving_customers`, `customer_page`
//! - [x] `expire_handoffs`: crates/app/tests/retention.rs
//!   (`old_handoffs_are_deleted_and_younger_ones_kept`)
//! - [x] acks: `record_ack` (the ack tests, erasure, closing exceptions), `consumer_state`,
//!   `consumer_state_of`
//! - [x] exceptions: `open_exception`, `exceptions`, `exception`, `close_exception`,
//!   `close_exceptions_where`, `note_exception_action`, `open_exceptions_of`; what erasure
//!   leaves of an exception
//!   (`erasure_leaves_an_exception_its_outcome_and_nothing_of_the_customer`); and
//!   `Ledger::execute_with`, which writes a steward's exception change in the command's own
//!   transaction (`a_command_and_its_exception_change_land_together_or_not_at_all`)
//! - [x] the delivery outbox (`Ledger::record_outbox`, `Ledger::pending_outbox`, the
//!   commit's `outbox_done`, erasure):
//!   `the_outbox_keeps_a_batch_sealed_until_its_items_are_committed`; a commit whose
//!   handoffs fail writes none of its other parts (`a_commit_lands_whole_or_not_at_all`)
//! - [x] `NewSyncException::new` (every exception test; the wrong side refused in
//!   `an_exception_about_the_wrong_side_is_refused`), `SyncException::state`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::Utc;
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::state::ConsentStatus;
use idledger_store::delivery::{
    AUTO_RESOLVER, Ack, AckOutcome, AckStatus, Channel, ChannelKind, Closing, ConsentBasis,
    DeliveryCommit, ExceptionFilter, ExceptionKind, ExceptionStatus, Handoff, HandoffFilter,
    HandoffKind, NewConsumer, NewSyncException, RegisterError, Relation, Resolution, StartAt,
    ValueHash, Webhook, WebhookSecret,
};
use idledger_store::model::truncate_to_micros;
use idledger_store::{Deliveries, Ledger};
use serde_json::json;
use support::*;

on_both_engines!(
    unkeyed_value_hashes_are_rekeyed_once_the_key_is_there,
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
    relations_are_read_with_their_time_for_the_customers_asked,
    receiving_customers_are_paged_in_id_order,
    the_customer_page_lists_unerased_records_in_id_order,
    consumer_state_is_read_for_the_customers_asked,
    an_applied_ack_holding_the_records_value_closes_its_exceptions,
    an_exception_is_read_by_id,
    an_exception_closes_once,
    erasure_leaves_an_exception_its_outcome_and_nothing_of_the_customer,
    exceptions_close_where_consumer_customer_field_and_kind_match,
    a_steward_action_is_noted_on_open_exceptions_only,
    open_exceptions_are_read_for_customers_and_kinds,
    exceptions_are_filtered_by_each_criterion_and_limited,
    a_command_and_its_exception_change_land_together_or_not_at_all,
    the_outbox_keeps_a_batch_sealed_until_its_items_are_committed,
    a_commit_lands_whole_or_not_at_all,
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
    // Disabling again keeps the first time (and says the consumer exists).
    let later = Utc::now() + chrono::Duration::hours(1);
    assert!(
        deliveries
            .disable_consumer(&consumer_id("crm"), later)
            .await
            .unwrap()
    );
    let again = deliveries
        .consumer(&consumer_id("crm"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.disabled_at, crm.disabled_at);
    assert!(again.disabled_at.is_some_and(|at| at < later));
    assert_eq!(
        deliveries.checkpoint(&consumer_id("crm")).await.unwrap(),
        Some(0),
        "a disabled consumer keeps its checkpoint"
    );
    assert_eq!(
        deliveries.checkpoint(&consumer_id("nobody")).await.unwrap(),
        None
    );
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
            transfer: None,
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
        outbox_done: &[],
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
        outbox_done: &[],
        checkpoint: Some(2),
        relations: &[],
        ..commit.clone()
    };
    deliveries.commit(&again).await.unwrap();
    let cdp = consumer_id("cdp");
    deliveries
        .commit(&DeliveryCommit {
            outbox_done: &[],
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
    let hash = ValueHash::parse(&format!("hmac-sha256:{}", "AB".repeat(32))).unwrap();
    assert_eq!(hash.as_str(), format!("hmac-sha256:{}", "ab".repeat(32)));
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
            .record_ack(&setup.store.ledger, &ack(2, AckStatus::Applied, None))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    assert_eq!(
        deliveries
            .record_ack(
                &setup.store.ledger,
                &ack(1, AckStatus::Rejected, Some("older"))
            )
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
            .record_ack(&setup.store.ledger, &ack(2, AckStatus::Applied, None))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    // The same version again may change its status (e.g. a retry that now applies).
    assert_eq!(
        deliveries
            .record_ack(
                &setup.store.ledger,
                &ack(2, AckStatus::Rejected, Some("format"))
            )
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
            .record_ack(&setup.store.ledger, &ack(2, AckStatus::Applied, None))
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
        let outcome = deliveries
            .record_ack(&setup.store.ledger, &bad)
            .await
            .unwrap();
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
        value_hash: Some(ValueHash::parse(&format!("hmac-sha256:{}", "ab".repeat(32))).unwrap()),
        status: AckStatus::Applied,
        reason: None,
        acked_at: idledger_store::model::from_micros(Utc::now().timestamp_micros()),
    };
    for (c, e) in [(erased, erased_event), (kept, kept_event)] {
        assert_eq!(
            deliveries
                .record_ack(&store.ledger, &ack(c, e))
                .await
                .unwrap(),
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
        .record_ack(&store.ledger, &ack(erased, erased_event))
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
    let open = |customer: CustomerId, path: &str, attempt: u32| {
        NewSyncException::new(
            ExceptionKind::WebhookRejected,
            consumer_id("crm"),
            customer,
            Some(field(path)),
            json!({"status": 422, "attempt": attempt}),
            Utc::now(),
        )
        .unwrap()
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

// ---- relations, receiving customers and the customer page ----

fn commit<'a>(
    consumer: &'a idledger_store::delivery::ConsumerId,
    relations: &'a [(CustomerId, Relation)],
    at: chrono::DateTime<Utc>,
) -> DeliveryCommit<'a> {
    DeliveryCommit {
        outbox_done: &[],
        consumer,
        handoffs: &[],
        relations,
        checkpoint: None,
        at: truncate_to_micros(at),
    }
}

async fn relations_are_read_with_their_time_for_the_customers_asked(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    nats_consumer(deliveries, "crm").await;
    nats_consumer(deliveries, "cdp").await;
    let (crm, cdp) = (consumer_id("crm"), consumer_id("cdp"));
    let (a, b, unknown) = (new_customer(), new_customer(), new_customer());
    assert!(
        deliveries
            .relations_since(&crm, &[a.as_uuid()])
            .await
            .unwrap()
            .is_empty()
    );
    let t1 = truncate_to_micros(Utc::now() - chrono::Duration::minutes(5));
    let t2 = truncate_to_micros(Utc::now());
    let both = [(a, Relation::Receiving), (b, Relation::Receiving)];
    deliveries.commit(&commit(&crm, &both, t1)).await.unwrap();
    let withdrawn = [(b, Relation::Withdrawn)];
    deliveries
        .commit(&commit(&crm, &withdrawn, t2))
        .await
        .unwrap();
    let other = [(a, Relation::Withdrawn)];
    deliveries.commit(&commit(&cdp, &other, t2)).await.unwrap();
    // Each customer once, whatever the repeats asked; those without a relation left out.
    let asked = [a.as_uuid(), b.as_uuid(), a.as_uuid(), unknown.as_uuid()];
    let mut got = deliveries.relations_since(&crm, &asked).await.unwrap();
    got.sort_by_key(|(c, _, _)| *c);
    let mut expected = vec![
        (a.as_uuid(), Relation::Receiving, t1),
        (b.as_uuid(), Relation::Withdrawn, t2),
    ];
    expected.sort_by_key(|(c, _, _)| *c);
    assert_eq!(
        got, expected,
        "the consumer's own relations, and since when"
    );
    assert!(
        deliveries
            .relations_since(&crm, &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        deliveries
            .relations_since(&cdp, &[a.as_uuid(), b.as_uuid()])
            .await
            .unwrap(),
        [(a.as_uuid(), Relation::Withdrawn, t2)]
    );
    // More customers than one statement binds: the last one is found too.
    let mut many: Vec<uuid::Uuid> = (0..60_000).map(|_| uuid::Uuid::now_v7()).collect();
    many.push(b.as_uuid());
    assert_eq!(
        deliveries.relations_since(&crm, &many).await.unwrap(),
        [(b.as_uuid(), Relation::Withdrawn, t2)]
    );
}

async fn receiving_customers_are_paged_in_id_order(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    nats_consumer(deliveries, "crm").await;
    nats_consumer(deliveries, "cdp").await;
    let (crm, cdp) = (consumer_id("crm"), consumer_id("cdp"));
    assert!(
        deliveries
            .receiving_customers(&crm, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let mut customers: Vec<CustomerId> = (0..5).map(|_| new_customer()).collect();
    let withdrawn = customers.pop().unwrap();
    let mut relations: Vec<(CustomerId, Relation)> = customers
        .iter()
        .map(|c| (*c, Relation::Receiving))
        .collect();
    relations.push((withdrawn, Relation::Withdrawn));
    deliveries
        .commit(&commit(&crm, &relations, Utc::now()))
        .await
        .unwrap();
    let only_cdp = [(new_customer(), Relation::Receiving)];
    deliveries
        .commit(&commit(&cdp, &only_cdp, Utc::now()))
        .await
        .unwrap();
    customers.sort_by_key(|c| c.as_uuid());
    assert_eq!(
        deliveries
            .receiving_customers(&crm, None, 10)
            .await
            .unwrap(),
        customers
    );
    let first = deliveries.receiving_customers(&crm, None, 3).await.unwrap();
    assert_eq!(first, customers[..3]);
    let rest = deliveries
        .receiving_customers(&crm, first.last().copied(), 3)
        .await
        .unwrap();
    assert_eq!(rest, customers[3..]);
    assert!(
        deliveries
            .receiving_customers(&crm, customers.last().copied(), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        deliveries.receiving_customers(&crm, None, 0).await.unwrap(),
        customers[..1],
        "a limit of 0 still returns one"
    );
}

async fn the_customer_page_lists_unerased_records_in_id_order(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    assert!(deliveries.customer_page(None, 10).await.unwrap().is_empty());
    let mut customers = Vec::new();
    for _ in 0..5 {
        customers.push(customer_with_email(&store.ledger).await.0);
    }
    let erased = customers.remove(2);
    erase(&store.ledger, erased).await;
    // Refused commands leave no record behind.
    let refused = store
        .ledger
        .execute(
            &source("crm"),
            &command(new_customer(), "x", vec![set("name.given", json!("Ada"))]),
        )
        .await;
    assert!(refused.is_err());
    let mut ids: Vec<uuid::Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
    ids.sort();
    assert_eq!(deliveries.customer_page(None, 10).await.unwrap(), ids);
    let first = deliveries.customer_page(None, 3).await.unwrap();
    assert_eq!(first, ids[..3]);
    let rest = deliveries
        .customer_page(first.last().copied(), 3)
        .await
        .unwrap();
    assert_eq!(rest, ids[3..]);
    assert!(
        deliveries
            .customer_page(ids.last().copied(), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(deliveries.customer_page(None, 0).await.unwrap(), ids[..1]);
}

// ---- consumer state ----

/// A store written before hashes were keyed: its consumer state and evidence hold plain
/// SHA-256s, and migration 0016 left the upgrade pending.
async fn unkeyed_value_hashes_are_rekeyed_once_the_key_is_there(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    nats_consumer(deliveries, "crm").await;
    let crm = consumer_id("crm");
    let (c, event) = customer_with_email(&store.ledger).await;
    let key = store.ledger.hash_key(&crm);
    let email =
        idledger_domain::FieldValue::parse(&field("email"), &json!("ada@example.org")).unwrap();
    let keyed = key.value(&email).to_string();
    deliveries
        .record_ack(&store.ledger, &applied("crm", c, event, &keyed))
        .await
        .unwrap();
    let exception = deliveries
        .open_exception(&new_exception(
            "crm",
            c,
            Some("email"),
            ExceptionKind::Divergent,
        ))
        .await
        .unwrap();
    let plain = |text: &str| {
        use sha2::Digest as _;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(text.as_bytes()))
        )
    };
    let held = plain("\"ada@example.org\"");
    let other = plain("\"eve@example.org\"");
    store
        .db
        .exec(&format!("UPDATE consumer_state SET value_hash = '{held}'"))
        .await;
    store
        .db
        .exec(&format!(
            "UPDATE sync_exceptions SET detail = '{{\"record\":{{\"value_hash\":\"{held}\"}},\"consumer\":{{\"value_hash\":\"{other}\"}}}}'"
        ))
        .await;
    store
        .db
        .exec("INSERT INTO pending_upgrades (name) VALUES ('keyed_value_hashes')")
        .await;

    assert_eq!(
        store.ledger.run_pending_upgrades().await.unwrap(),
        ["keyed_value_hashes"]
    );
    // The consumer's hash of the record's value is now that value's keyed hash: still in sync.
    let state = deliveries.consumer_state(&crm, Some(c)).await.unwrap();
    assert_eq!(state[0].value_hash.as_deref(), Some(keyed.as_str()));
    // Evidence keeps its shape, equal stays equal, and nothing unkeyed is left.
    let detail = deliveries
        .exception(exception.id)
        .await
        .unwrap()
        .unwrap()
        .detail;
    let text = detail.to_string();
    assert!(
        !text.replace("hmac-sha256:", "").contains("sha256:"),
        "{text}"
    );
    assert!(
        !text.contains(&held[7..]) && !text.contains(&other[7..]),
        "{text}"
    );
    let record = detail["record"]["value_hash"].as_str().unwrap();
    let consumer = detail["consumer"]["value_hash"].as_str().unwrap();
    assert!(record.starts_with("hmac-sha256:") && consumer.starts_with("hmac-sha256:"));
    assert_ne!(record, consumer);
    // Done once: nothing is pending any more.
    assert!(
        store
            .ledger
            .run_pending_upgrades()
            .await
            .unwrap()
            .is_empty()
    );
}

fn applied(consumer: &str, customer: CustomerId, event: EventId, hash: &str) -> Ack {
    Ack {
        consumer_id: consumer_id(consumer),
        event_id: event,
        customer_id: customer,
        field: field("email"),
        version: 1,
        value_hash: Some(ValueHash::parse(hash).unwrap()),
        status: AckStatus::Applied,
        reason: None,
        acked_at: truncate_to_micros(Utc::now()),
    }
}

async fn consumer_state_is_read_for_the_customers_asked(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    nats_consumer(deliveries, "crm").await;
    nats_consumer(deliveries, "cdp").await;
    let crm = consumer_id("crm");
    let (a, a_event) = customer_with_email(&store.ledger).await;
    let (b, b_event) = customer_with_email(&store.ledger).await;
    let (c, c_event) = customer_with_email(&store.ledger).await;
    let hash = format!("hmac-sha256:{}", "ab".repeat(32));
    assert!(
        deliveries
            .consumer_state_of(&crm, &[a.as_uuid()])
            .await
            .unwrap()
            .is_empty()
    );
    let acks = [
        applied("crm", a, a_event, &hash),
        applied("crm", b, b_event, &hash),
        applied("cdp", c, c_event, &hash),
    ];
    for ack in &acks {
        assert_eq!(
            deliveries.record_ack(&store.ledger, ack).await.unwrap(),
            AckOutcome::Recorded
        );
    }
    let got = deliveries
        .consumer_state_of(&crm, &[b.as_uuid(), c.as_uuid(), new_customer().as_uuid()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    let state = &got[0];
    assert_eq!(
        (
            &state.consumer_id,
            state.customer_id,
            state.field.as_str(),
            state.event_id,
            state.version,
            state.value_hash.as_deref(),
            state.status,
            state.acked_at,
        ),
        (
            &crm,
            b,
            "email",
            b_event,
            1,
            Some(hash.as_str()),
            AckStatus::Applied,
            acks[1].acked_at
        )
    );
    assert!(
        deliveries
            .consumer_state_of(&crm, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // More customers than one statement binds: the last one is found too.
    let mut many: Vec<uuid::Uuid> = (0..60_000).map(|_| uuid::Uuid::now_v7()).collect();
    many.push(a.as_uuid());
    let got = deliveries.consumer_state_of(&crm, &many).await.unwrap();
    assert_eq!(got.iter().map(|s| s.customer_id).collect::<Vec<_>>(), [a]);
}

async fn an_applied_ack_holding_the_records_value_closes_its_exceptions(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    nats_consumer(deliveries, "crm").await;
    let (c, event) = customer_with_email(&store.ledger).await;
    let email =
        idledger_domain::FieldValue::parse(&field("email"), &json!("ada@example.org")).unwrap();
    let record_hash = store
        .ledger
        .hash_key(&idledger_store::delivery::ConsumerId::parse("crm").unwrap())
        .value(&email)
        .to_string();
    let mut opened = Vec::new();
    for kind in [
        ExceptionKind::Divergent,
        ExceptionKind::Stale,
        ExceptionKind::Proposal,
    ] {
        opened.push(
            deliveries
                .open_exception(&new_exception("crm", c, Some("email"), kind))
                .await
                .unwrap(),
        );
    }
    // Another value: nothing closes.
    let other = format!("hmac-sha256:{}", "cd".repeat(32));
    deliveries
        .record_ack(&store.ledger, &applied("crm", c, event, &other))
        .await
        .unwrap();
    for e in &opened {
        assert_eq!(
            deliveries.exception(e.id).await.unwrap().unwrap().status,
            ExceptionStatus::Open
        );
    }
    // The record's value: the field's drift exceptions close by themselves, a proposal stays.
    assert_eq!(
        deliveries
            .record_ack(&store.ledger, &applied("crm", c, event, &record_hash))
            .await
            .unwrap(),
        AckOutcome::Recorded
    );
    let after: Vec<_> = {
        let mut v = Vec::new();
        for e in &opened {
            v.push(deliveries.exception(e.id).await.unwrap().unwrap());
        }
        v
    };
    for closed in &after[..2] {
        assert_eq!(
            (
                closed.status,
                closed.resolution,
                closed.resolved_by.as_deref()
            ),
            (
                ExceptionStatus::Resolved,
                Some(Resolution::Auto),
                Some(AUTO_RESOLVER)
            ),
            "{closed:?}"
        );
    }
    assert_eq!(after[2].status, ExceptionStatus::Open);
}

// ---- sync exceptions ----

fn new_exception(
    consumer: &str,
    customer: CustomerId,
    path: Option<&str>,
    kind: ExceptionKind,
) -> NewSyncException {
    let at = truncate_to_micros(Utc::now());
    let detail = json!({"record_version": 1});
    if kind.about_source() {
        let source = idledger_domain::ids::SourceId::parse(consumer).unwrap();
        NewSyncException::new(kind, source, customer, path.map(field), detail, at)
    } else {
        NewSyncException::new(
            kind,
            consumer_id(consumer),
            customer,
            path.map(field),
            detail,
            at,
        )
    }
    .unwrap()
}

fn closing(resolution: Resolution, note: &str) -> Closing {
    Closing {
        by: "steward@idledger.example".to_owned(),
        resolution,
        note: note.to_owned(),
        at: truncate_to_micros(Utc::now()),
    }
}

async fn an_exception_is_read_by_id(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    assert_eq!(
        deliveries.exception(uuid::Uuid::now_v7()).await.unwrap(),
        None
    );
    let c = new_customer();
    let opened = deliveries
        .open_exception(&new_exception(
            "crm",
            c,
            None,
            ExceptionKind::WithdrawalUnconfirmed,
        ))
        .await
        .unwrap();
    let read = deliveries.exception(opened.id).await.unwrap().unwrap();
    assert_eq!(read, opened);
    assert_eq!(
        (
            read.field,
            read.occurrences,
            read.resolved_at,
            read.last_action
        ),
        (None, 1, None, None),
        "about the customer as a whole"
    );
}

async fn an_exception_closes_once(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let c = new_customer();
    let new = new_exception("crm", c, Some("email"), ExceptionKind::Divergent);
    let opened = deliveries.open_exception(&new).await.unwrap();
    let dismiss = closing(Resolution::Dismissed, "the consumer's copy is right");
    let closed = deliveries
        .close_exception(opened.id, &dismiss)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            closed.status,
            closed.resolution,
            closed.resolved_by.as_deref(),
            closed.resolution_note.as_deref(),
            closed.resolved_at,
            closed.updated_at,
        ),
        (
            ExceptionStatus::Dismissed,
            Some(Resolution::Dismissed),
            Some("steward@idledger.example"),
            Some("the consumer's copy is right"),
            Some(dismiss.at),
            dismiss.at,
        )
    );
    assert_eq!(
        deliveries.exception(opened.id).await.unwrap(),
        Some(closed.clone())
    );
    // A second closing finds nothing open, and changes nothing.
    let accept = closing(Resolution::Accepted, "too late");
    assert_eq!(
        deliveries
            .close_exception(opened.id, &accept)
            .await
            .unwrap(),
        None
    );
    assert_eq!(deliveries.exception(opened.id).await.unwrap(), Some(closed));
    assert_eq!(
        deliveries
            .close_exception(uuid::Uuid::now_v7(), &accept)
            .await
            .unwrap(),
        None
    );
    // Accepted ends resolved; the same problem again opens a new exception.
    let again = deliveries.open_exception(&new).await.unwrap();
    assert_ne!(again.id, opened.id);
    assert_eq!(again.occurrences, 1);
    let accepted = deliveries
        .close_exception(again.id, &accept)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(accepted.status, ExceptionStatus::Resolved);
}

async fn erasure_leaves_an_exception_its_outcome_and_nothing_of_the_customer(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let (erased, _) = customer_with_email(&store.ledger).await;
    let (kept, _) = customer_with_email(&store.ledger).await;
    // A steward's note may quote the record; a re-push names what was sent.
    let note = "CRM holds ada@example.org on purpose";
    let dismissed = deliveries
        .open_exception(&new_exception(
            "crm",
            erased,
            Some("email"),
            ExceptionKind::Divergent,
        ))
        .await
        .unwrap();
    deliveries
        .close_exception(dismissed.id, &closing(Resolution::Dismissed, note))
        .await
        .unwrap()
        .unwrap();
    let repushed = deliveries
        .open_exception(&new_exception(
            "crm",
            erased,
            Some("email"),
            ExceptionKind::Stale,
        ))
        .await
        .unwrap();
    let action = json!({"action": "repush", "value": "ada@example.org"});
    assert!(
        deliveries
            .note_exception_action(repushed.id, &action, truncate_to_micros(Utc::now()))
            .await
            .unwrap()
    );
    let other = deliveries
        .open_exception(&new_exception(
            "crm",
            kept,
            Some("email"),
            ExceptionKind::Divergent,
        ))
        .await
        .unwrap();
    deliveries
        .close_exception(other.id, &closing(Resolution::Dismissed, note))
        .await
        .unwrap()
        .unwrap();

    erase(&store.ledger, erased).await;
    let dismissed = deliveries.exception(dismissed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            dismissed.status,
            dismissed.resolution,
            dismissed.resolved_by.as_deref(),
            dismissed.resolution_note.as_deref(),
            &dismissed.detail,
        ),
        (
            ExceptionStatus::Dismissed,
            Some(Resolution::Dismissed),
            Some("steward@idledger.example"),
            Some("the customer was erased"),
            &json!({}),
        ),
        "how it ended stays; the steward's words go"
    );
    let repushed = deliveries.exception(repushed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            repushed.status,
            repushed.resolved_by.as_deref(),
            repushed.resolution_note.as_deref(),
            repushed.last_action,
        ),
        (
            ExceptionStatus::Resolved,
            Some(AUTO_RESOLVER),
            Some("the customer was erased"),
            None,
        )
    );
    let other = deliveries.exception(other.id).await.unwrap().unwrap();
    assert_eq!(
        other.resolution_note.as_deref(),
        Some(note),
        "another customer's"
    );
    assert_eq!(other.detail, json!({"record_version": 1}));
}

async fn exceptions_close_where_consumer_customer_field_and_kind_match(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let (a, b) = (new_customer(), new_customer());
    let mut open = Vec::new();
    for (consumer, customer, path, kind) in [
        ("crm", a, Some("email"), ExceptionKind::Divergent),
        ("crm", a, Some("email"), ExceptionKind::Stale),
        ("crm", a, Some("email"), ExceptionKind::Proposal),
        ("crm", a, Some("phone"), ExceptionKind::Divergent),
        ("crm", b, Some("email"), ExceptionKind::Divergent),
        ("cdp", a, Some("email"), ExceptionKind::Divergent),
        ("crm", a, None, ExceptionKind::WithdrawalUnconfirmed),
    ] {
        open.push(
            deliveries
                .open_exception(&new_exception(consumer, customer, path, kind))
                .await
                .unwrap()
                .id,
        );
    }
    let auto = closing(Resolution::Auto, "the cause went away");
    let crm = consumer_id("crm");
    let mut closed = deliveries
        .close_exceptions_where(
            &crm,
            a,
            Some(&field("email")),
            &[ExceptionKind::Divergent, ExceptionKind::Stale],
            &auto,
        )
        .await
        .unwrap();
    closed.sort();
    assert_eq!(closed, open[..2]);
    // Closed ones are not closed again.
    assert!(
        deliveries
            .close_exceptions_where(&crm, a, Some(&field("email")), ExceptionKind::ALL, &auto)
            .await
            .unwrap()
            == [open[2]]
    );
    // No field: the customer-level ones only.
    assert_eq!(
        deliveries
            .close_exceptions_where(&crm, a, None, ExceptionKind::ALL, &auto)
            .await
            .unwrap(),
        [open[6]]
    );
    let still_open: Vec<uuid::Uuid> = deliveries
        .exceptions(
            &ExceptionFilter {
                open_only: true,
                ..ExceptionFilter::default()
            },
            100,
        )
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(still_open, [open[3], open[4], open[5]]);
    let first = deliveries.exception(open[0]).await.unwrap().unwrap();
    assert_eq!(
        (first.status, first.resolution_note.as_deref()),
        (ExceptionStatus::Resolved, Some("the cause went away"))
    );
}

async fn a_steward_action_is_noted_on_open_exceptions_only(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let c = new_customer();
    let opened = deliveries
        .open_exception(&new_exception(
            "crm",
            c,
            Some("email"),
            ExceptionKind::Divergent,
        ))
        .await
        .unwrap();
    let action = json!({"action": "repush", "by": "steward", "event_id": uuid::Uuid::now_v7()});
    let at = truncate_to_micros(Utc::now() + chrono::Duration::seconds(1));
    assert!(
        deliveries
            .note_exception_action(opened.id, &action, at)
            .await
            .unwrap()
    );
    let noted = deliveries.exception(opened.id).await.unwrap().unwrap();
    assert_eq!(
        (
            noted.status,
            noted.last_action.as_ref(),
            noted.updated_at,
            noted.created_at
        ),
        (ExceptionStatus::Open, Some(&action), at, opened.created_at)
    );
    // The next action replaces it.
    let next = json!({"action": "repush", "by": "steward-2"});
    assert!(
        deliveries
            .note_exception_action(opened.id, &next, at)
            .await
            .unwrap()
    );
    assert_eq!(
        deliveries
            .exception(opened.id)
            .await
            .unwrap()
            .unwrap()
            .last_action,
        Some(next.clone())
    );
    // Not on a closed exception, nor an unknown one.
    deliveries
        .close_exception(opened.id, &closing(Resolution::Dismissed, "fine"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !deliveries
            .note_exception_action(opened.id, &action, at)
            .await
            .unwrap()
    );
    assert_eq!(
        deliveries
            .exception(opened.id)
            .await
            .unwrap()
            .unwrap()
            .last_action,
        Some(next)
    );
    assert!(
        !deliveries
            .note_exception_action(uuid::Uuid::now_v7(), &action, at)
            .await
            .unwrap()
    );
}

async fn open_exceptions_are_read_for_customers_and_kinds(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let (a, b, c) = (new_customer(), new_customer(), new_customer());
    let mut ids = Vec::new();
    for (consumer, customer, kind) in [
        ("crm", a, ExceptionKind::Divergent),
        ("crm", a, ExceptionKind::Proposal),
        ("crm", b, ExceptionKind::Stale),
        ("crm", c, ExceptionKind::Divergent),
        ("cdp", a, ExceptionKind::Divergent),
    ] {
        ids.push(
            deliveries
                .open_exception(&new_exception(consumer, customer, Some("email"), kind))
                .await
                .unwrap()
                .id,
        );
    }
    deliveries
        .close_exception(ids[3], &closing(Resolution::Auto, "gone"))
        .await
        .unwrap()
        .unwrap();
    let crm = consumer_id("crm");
    let reconciled = &ExceptionKind::RECONCILED;
    let of = |list: Vec<idledger_store::delivery::SyncException>| {
        let mut ids: Vec<uuid::Uuid> = list.iter().map(|e| e.id).collect();
        ids.sort();
        ids
    };
    let customers = [a.as_uuid(), b.as_uuid(), c.as_uuid()];
    assert_eq!(
        of(deliveries
            .open_exceptions_of(&crm, &customers, reconciled)
            .await
            .unwrap()),
        [ids[0], ids[2]],
        "open, this consumer's, of these kinds"
    );
    assert_eq!(
        of(deliveries
            .open_exceptions_of(&crm, &[a.as_uuid()], &[ExceptionKind::Proposal])
            .await
            .unwrap()),
        [ids[1]]
    );
    assert!(
        deliveries
            .open_exceptions_of(&crm, &[], reconciled)
            .await
            .unwrap()
            .is_empty()
    );
    // More customers than one statement binds: the last one is found too.
    let mut many: Vec<uuid::Uuid> = (0..60_000).map(|_| uuid::Uuid::now_v7()).collect();
    many.push(b.as_uuid());
    assert_eq!(
        of(deliveries
            .open_exceptions_of(&crm, &many, reconciled)
            .await
            .unwrap()),
        [ids[2]]
    );
}

async fn exceptions_are_filtered_by_each_criterion_and_limited(engine: Engine) {
    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let (a, b) = (new_customer(), new_customer());
    let old = Utc::now() - chrono::Duration::hours(2);
    let mut ids = Vec::new();
    for (consumer, customer, path, kind, age) in [
        ("crm", a, Some("email"), ExceptionKind::Divergent, true),
        ("crm", a, Some("phone"), ExceptionKind::Stale, false),
        ("cdp", b, Some("email"), ExceptionKind::Stale, false),
        ("crm", b, None, ExceptionKind::WithdrawalUnconfirmed, false),
    ] {
        let mut new = new_exception(consumer, customer, path, kind);
        if age {
            new.at = truncate_to_micros(old);
        }
        ids.push(deliveries.open_exception(&new).await.unwrap().id);
    }
    deliveries
        .close_exception(ids[1], &closing(Resolution::Dismissed, "known"))
        .await
        .unwrap()
        .unwrap();
    let list = |filter: ExceptionFilter, limit: u32| async move {
        deliveries
            .exceptions(&filter, limit)
            .await
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect::<Vec<_>>()
    };
    let none = ExceptionFilter::default;
    assert_eq!(list(none(), 100).await, ids, "in creation order");
    let cdp = ExceptionFilter {
        consumer: Some(consumer_id("cdp")),
        ..none()
    };
    assert_eq!(list(cdp, 100).await, [ids[2]]);
    let stale = ExceptionFilter {
        kind: Some(ExceptionKind::Stale),
        ..none()
    };
    assert_eq!(list(stale, 100).await, [ids[1], ids[2]]);
    let email = ExceptionFilter {
        field: Some("email".to_owned()),
        ..none()
    };
    assert_eq!(list(email, 100).await, [ids[0], ids[2]]);
    let dismissed = ExceptionFilter {
        status: Some(ExceptionStatus::Dismissed),
        ..none()
    };
    assert_eq!(list(dismissed, 100).await, [ids[1]]);
    let aged = ExceptionFilter {
        created_before: Some(Utc::now() - chrono::Duration::hours(1)),
        ..none()
    };
    assert_eq!(list(aged, 100).await, [ids[0]]);
    let combined = ExceptionFilter {
        customer: Some(b),
        open_only: true,
        kind: Some(ExceptionKind::WithdrawalUnconfirmed),
        ..none()
    };
    assert_eq!(list(combined, 100).await, [ids[3]]);
    let nothing = ExceptionFilter {
        consumer: Some(consumer_id("cdp")),
        status: Some(ExceptionStatus::Dismissed),
        ..none()
    };
    assert!(list(nothing, 100).await.is_empty());
    // Paged: a limit, and the last id as the cursor.
    assert_eq!(list(none(), 2).await, ids[..2]);
    let after = ExceptionFilter {
        after: Some(ids[1]),
        ..none()
    };
    assert_eq!(list(after, 2).await, ids[2..]);
    assert_eq!(
        list(none(), 0).await,
        ids[..1],
        "a limit of 0 still returns one"
    );
}

async fn a_command_and_its_exception_change_land_together_or_not_at_all(engine: Engine) {
    use idledger_domain::event::StewardAction;
    use idledger_domain::exception::{ExceptionEvent, LastAction, action_change};
    use idledger_store::ExecuteError;
    use idledger_store::model::ExceptionWrite;

    let store = TestStore::new(engine).await;
    let deliveries = &store.deliveries;
    let (customer, _) = customer_with_email(&store.ledger).await;
    let opened = deliveries
        .open_exception(&new_exception(
            "crm",
            customer,
            Some("email"),
            ExceptionKind::Divergent,
        ))
        .await
        .unwrap();
    let state = opened.state().unwrap();
    assert!(state.is_open());
    assert_eq!(state.customer_id(), customer);
    let version = |ledger: Ledger| async move {
        ledger
            .state(customer)
            .await
            .unwrap()
            .unwrap()
            .stream_version
    };
    let before = version(store.ledger.clone()).await;
    let steward_command = |key: &str, action: StewardAction| {
        let mut c = command(
            customer,
            key,
            vec![action_change(&state, action, Some("why"))],
        );
        c.provenance.actor =
            idledger_domain::ids::Actor::new(idledger_domain::ids::ActorKind::Steward, "jane")
                .unwrap();
        c
    };
    let steward = idledger_testkit::builders::steward();

    // A re-push: the event and the exception's last action, together.
    let at = truncate_to_micros(Utc::now());
    let repush = |result: &idledger_store::CommandResult| {
        Ok(Some(ExceptionWrite {
            exception_id: opened.id,
            event: ExceptionEvent::Repushed(LastAction {
                action: StewardAction::Repush,
                by: "steward:jane".to_owned(),
                at,
                event_id: result.events.last().map(|e| e.id),
                reason: Some("why".to_owned()),
            }),
            activity: None,
            approval: None,
        }))
    };
    let done = store
        .ledger
        .execute_with(
            &steward,
            &steward_command("s-1", StewardAction::Repush),
            &repush,
        )
        .await
        .unwrap();
    let noted = deliveries.exception(opened.id).await.unwrap().unwrap();
    assert_eq!(noted.status, ExceptionStatus::Open);
    let event_id = done.result.events.last().unwrap().id;
    assert_eq!(
        noted.last_action.as_ref().and_then(|a| a.get("event_id")),
        Some(&json!(event_id)),
        "the exception names the event recorded with it"
    );
    assert_eq!(version(store.ledger.clone()).await, before + 1);

    // Closed by someone else meanwhile: neither the event nor the change is written.
    deliveries
        .close_exception(opened.id, &closing(Resolution::Auto, "acknowledged"))
        .await
        .unwrap()
        .unwrap();
    let dismiss = |_: &idledger_store::CommandResult| {
        Ok(Some(ExceptionWrite {
            exception_id: opened.id,
            event: ExceptionEvent::Closed(closing(Resolution::Dismissed, "why")),
            activity: None,
            approval: None,
        }))
    };
    let refused = store
        .ledger
        .execute_with(
            &steward,
            &steward_command("s-2", StewardAction::Dismiss),
            &dismiss,
        )
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::ExceptionNotOpen { exception_id }) if exception_id == opened.id),
        "{refused:?}"
    );
    assert_eq!(version(store.ledger.clone()).await, before + 1);
    let closed = deliveries.exception(opened.id).await.unwrap().unwrap();
    assert_eq!(
        closed.resolution,
        Some(Resolution::Auto),
        "the first close stands"
    );
    // The key was not consumed: a retry of the refused command is decided afresh.
    assert!(
        store
            .ledger
            .idempotent_result(
                &steward,
                &steward_command("s-2", StewardAction::Dismiss).idempotency_key
            )
            .await
            .unwrap()
            .is_none()
    );
}

#[test]
fn an_exception_about_the_wrong_side_is_refused() {
    let customer = new_customer();
    let source = idledger_domain::ids::SourceId::parse("crm").unwrap();
    // A consumer's kind about a source system, and a source's kind about a consumer.
    for (kind, wrong) in [
        (
            ExceptionKind::Divergent,
            NewSyncException::new(
                ExceptionKind::Divergent,
                source.clone(),
                customer,
                None,
                json!({}),
                Utc::now(),
            ),
        ),
        (
            ExceptionKind::Proposal,
            NewSyncException::new(
                ExceptionKind::Proposal,
                consumer_id("crm"),
                customer,
                None,
                json!({}),
                Utc::now(),
            ),
        ),
    ] {
        assert!(wrong.is_err(), "{kind} about the wrong side");
    }
}

/// Every outbox payload as stored, whichever the engine.
async fn outbox_payloads(store: &TestStore) -> Vec<Vec<u8>> {
    let query = "SELECT payload FROM delivery_outbox ORDER BY consumer_id, seq";
    match store.db.engine {
        Engine::Postgres => sqlx::query_scalar(query)
            .fetch_all(&store.db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar(query)
            .fetch_all(&store.db.sqlite().await)
            .await
            .unwrap(),
    }
}

async fn the_outbox_keeps_a_batch_sealed_until_its_items_are_committed(engine: Engine) {
    use idledger_store::outbox::OutboxItem;
    let store = TestStore::new(engine).await;
    nats_consumer(&store.deliveries, "crm").await;
    let crm = consumer_id("crm");
    let (customer, _) = customer_with_email(&store.ledger).await;
    let change = b"{\"value\":\"ada@example.org\"}".to_vec();
    let items = [
        OutboxItem {
            customer_id: customer,
            personal: true,
            payload: change.clone(),
        },
        OutboxItem {
            customer_id: customer,
            personal: false,
            payload: b"notice".to_vec(),
        },
    ];
    let kept = store
        .ledger
        .record_outbox(&crm, &items, Some(7))
        .await
        .unwrap();
    assert_eq!(kept, [true, true]);
    for stored in outbox_payloads(&store).await {
        assert!(
            !stored.windows(change.len()).any(|w| w == change.as_slice())
                && !stored.windows(6).any(|w| w == b"notice"),
            "a customer with a data key has every item sealed"
        );
    }
    // A second batch while one waits is refused: the waiting one is sent first.
    assert!(
        store
            .ledger
            .record_outbox(&crm, &items[..1], Some(8))
            .await
            .is_err()
    );
    let pending = store.ledger.pending_outbox(&crm).await.unwrap();
    assert_eq!(pending.through, Some(7));
    let payloads: Vec<Option<Vec<u8>>> = pending.items.iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, [Some(change.clone()), Some(b"notice".to_vec())]);
    assert_eq!(
        pending.items.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [0, 1]
    );
    assert!(
        store
            .ledger
            .pending_outbox(&consumer_id("cdp"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "outboxes are per consumer"
    );

    // Committing the first item takes it out; the other waits.
    let mut done = commit(&crm, &[], Utc::now());
    done.outbox_done = &[0];
    store.deliveries.commit(&done).await.unwrap();
    let pending = store.ledger.pending_outbox(&crm).await.unwrap();
    assert_eq!(pending.items.iter().map(|p| p.seq).collect::<Vec<_>>(), [1]);

    // Erasure takes the customer's items with the key; a personal item of a customer with no
    // key is not kept (not to be sent), a notice is kept as it is.
    store
        .ledger
        .erase(customer, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    assert!(
        store
            .ledger
            .pending_outbox(&crm)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let kept = store
        .ledger
        .record_outbox(&crm, &items, None)
        .await
        .unwrap();
    assert_eq!(kept, [false, true]);
    let pending = store.ledger.pending_outbox(&crm).await.unwrap();
    assert_eq!(pending.through, None);
    assert_eq!(pending.items.len(), 1);
    assert_eq!(pending.items[0].seq, 1);
    assert_eq!(pending.items[0].payload.as_deref(), Some(&b"notice"[..]));
}

/// The commit's parts (handoffs, relations, the outbox's removals, the checkpoint) land
/// together: one failing leaves the others unwritten, on PostgreSQL's single statement as in
/// SQLite's transaction.
async fn a_commit_lands_whole_or_not_at_all(engine: Engine) {
    use idledger_store::outbox::OutboxItem;
    let store = TestStore::new(engine).await;
    nats_consumer(&store.deliveries, "crm").await;
    let crm = consumer_id("crm");
    let (customer, event) = customer_with_email(&store.ledger).await;
    let item = OutboxItem {
        customer_id: customer,
        personal: false,
        payload: b"notice".to_vec(),
    };
    store
        .ledger
        .record_outbox(&crm, &[item], Some(1))
        .await
        .unwrap();
    // The handoff log refuses every row from here on.
    store
        .db
        .exec(match engine {
            Engine::Postgres => {
                "ALTER TABLE handoffs ADD CONSTRAINT refused CHECK (kind <> 'change') NOT VALID"
            }
            Engine::Sqlite => {
                "CREATE TRIGGER refused BEFORE INSERT ON handoffs BEGIN SELECT RAISE(ABORT, 'refused'); END"
            }
        })
        .await;
    let failing = DeliveryCommit {
        consumer: &crm,
        handoffs: &[handoff("crm", customer, event, 1)],
        relations: &[(customer, Relation::Receiving)],
        checkpoint: Some(1),
        outbox_done: &[0],
        at: Utc::now(),
    };
    assert!(store.deliveries.commit(&failing).await.is_err());
    assert_eq!(
        commit_parts_left(&store, &crm, customer).await,
        (Some(0), 0, 1),
        "no checkpoint, relation or outbox removal was written"
    );
    // Without the handoff, the rest lands.
    let rest = DeliveryCommit {
        handoffs: &[],
        ..failing
    };
    store.deliveries.commit(&rest).await.unwrap();
    assert_eq!(
        commit_parts_left(&store, &crm, customer).await,
        (Some(1), 1, 0)
    );
}

/// The consumer's checkpoint, its relations to `customer` and its outbox items.
async fn commit_parts_left(
    store: &TestStore,
    consumer: &idledger_store::delivery::ConsumerId,
    customer: CustomerId,
) -> (Option<u64>, usize, usize) {
    (
        store.deliveries.checkpoint(consumer).await.unwrap(),
        store
            .deliveries
            .relations(consumer, &[customer])
            .await
            .unwrap()
            .len(),
        store
            .ledger
            .pending_outbox(consumer)
            .await
            .unwrap()
            .items
            .len(),
    )
}
