//! Acknowledgements on a real NATS become consumer state; bad acks are dropped without harm.
//! The change feed's core serves only what the caller is entitled to, and logs it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_relay::Feed;
use idledger_relay::envelope::{CloudEvent, FIELD_CHANGED};
use idledger_store::delivery::{AckStatus, Channel, ConsumerId, HandoffFilter};
use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_on_nats_update_consumer_state_and_bad_ones_are_dropped() {
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Sqlite).await;
    let nats = unique_nats(&url);
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["crm"]))
        .await;
    let ledger = &store.ledger;
    let customer = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    run(ledger, "idp", customer, vec![set("email", email(2))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    let js = jetstream(&url).await;
    let filter = format!("{}.crm.>", nats.stream.subject_prefix);
    let delivered: Vec<CloudEvent> = read_stream(&js, &nats.stream.name, &filter)
        .await
        .into_iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(delivered.len(), 2);
    let ack_of = |e: &CloudEvent, status: &str| {
        json!({
            "event_id": e.id,
            "customer_id": e.subject,
            "field": e.data["field"],
            "version": e.idledgerversion,
            "value_hash": e.data["value_hash"],
            "status": status,
        })
    };
    let subject = format!("{}.crm", nats.ack_subject_prefix);
    let ack_key = ledger.ack_key(&ConsumerId::parse("crm").unwrap());
    let publish = |subject: String, body: Vec<u8>| {
        let js = js.clone();
        let headers = signed(&ack_key, &body);
        async move {
            // The relay creates the ack stream; wait for it before publishing.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                match js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                    .await
                {
                    Ok(ack) => match ack.await {
                        Ok(_) => return,
                        Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
                    },
                    Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut unknown_key = ack_of(&delivered[0], "applied");
    unknown_key["colour"] = json!("blue");
    let mut no_reason = ack_of(&delivered[0], "rejected");
    no_reason["reason"] = json!("   ");
    let mut wrong_customer = ack_of(&delivered[0], "applied");
    wrong_customer["customer_id"] = json!(idledger_domain::ids::CustomerId::generate());
    let bad = [
        (subject.clone(), b"not json".to_vec()),
        (subject.clone(), serde_json::to_vec(&unknown_key).unwrap()),
        (subject.clone(), serde_json::to_vec(&no_reason).unwrap()),
        (
            subject.clone(),
            serde_json::to_vec(&wrong_customer).unwrap(),
        ),
        (
            format!("{}.nobody", nats.ack_subject_prefix),
            serde_json::to_vec(&ack_of(&delivered[0], "applied")).unwrap(),
        ),
        (
            format!("{}.NOT_AN_ID", nats.ack_subject_prefix),
            serde_json::to_vec(&ack_of(&delivered[0], "applied")).unwrap(),
        ),
    ];
    for (subject, body) in bad {
        publish(subject, body).await;
    }
    // A later version first, then an older one: the newer stays.
    let mut rejected = ack_of(&delivered[1], "rejected");
    rejected["reason"] = json!("mailbox on a suppression list");
    publish(subject.clone(), serde_json::to_vec(&rejected).unwrap()).await;
    publish(
        subject.clone(),
        serde_json::to_vec(&ack_of(&delivered[0], "applied")).unwrap(),
    )
    .await;

    let crm = ConsumerId::parse("crm").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        let state = store
            .deliveries
            .consumer_state(&crm, Some(customer))
            .await
            .unwrap();
        if !state.is_empty() {
            // Give the older ack time to arrive too: it must not win.
            tokio::time::sleep(Duration::from_millis(300)).await;
            break store
                .deliveries
                .consumer_state(&crm, Some(customer))
                .await
                .unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ack was recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state.len(), 1);
    let s = &state[0];
    assert_eq!(s.event_id.to_string(), delivered[1].id);
    assert_eq!(s.version, delivered[1].idledgerversion.unwrap());
    assert_eq!(s.status, AckStatus::Rejected);
    assert_eq!(s.reason.as_deref(), Some("mailbox on a suppression list"));
    assert_eq!(
        s.value_hash.as_deref(),
        delivered[1].data["value_hash"].as_str()
    );
    // Nothing was recorded for anyone else, and the intake still runs after the garbage.
    assert!(
        store
            .deliveries
            .consumer_state(&crm, None)
            .await
            .unwrap()
            .len()
            == 1
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_serves_only_what_the_consumer_may_receive_and_logs_it() {
    let store = TestStore::new(Engine::Postgres).await;
    store
        .register(consumer("portal", Channel::Feed, &["email"], &["service"]))
        .await;
    let ledger = &store.ledger;
    let allowed = customer_consenting(ledger, &["service"]).await;
    let other = customer_consenting(ledger, &["marketing"]).await;
    run(ledger, "idp", allowed, vec![set("email", email(1))]).await;
    run(ledger, "idp", other, vec![set("email", email(2))]).await;
    let portal = store
        .deliveries
        .consumer(&ConsumerId::parse("portal").unwrap())
        .await
        .unwrap()
        .unwrap();
    let feed = Feed::new(ledger.clone(), "urn:idledger:test");
    let page = feed.page(&portal, 0, 2).await.unwrap();
    assert!(
        page.items.is_empty(),
        "registration and consent are not for the portal"
    );
    assert_eq!(page.next_after, 2, "but the scan moves on");
    let page = feed.page(&portal, page.next_after, 100).await.unwrap();
    assert_eq!(page.next_after, ledger.head_position().await.unwrap());
    assert_eq!(page.items.len(), 1);
    let item = &page.items[0];
    let event: CloudEvent = serde_json::from_slice(&item.body).unwrap();
    assert_eq!(event.subject, allowed.to_string());
    assert_eq!(event.event_type, FIELD_CHANGED);
    assert_eq!(item.event_type, FIELD_CHANGED);
    assert_eq!(item.position, event.idledgerposition);
    assert_eq!(item.id.to_string(), event.id);
    let empty = feed.page(&portal, page.next_after, 100).await.unwrap();
    assert!(empty.items.is_empty());
    assert_eq!(empty.next_after, page.next_after);
    let logged = store
        .deliveries
        .handoffs(&HandoffFilter::Customer(allowed), None, 10)
        .await
        .unwrap();
    assert_eq!(logged.items.len(), 1);
    assert_eq!(logged.items[0].handoff.channel.as_str(), "feed");
    // Serving the same page again logs nothing new.
    feed.page(&portal, 0, 100).await.unwrap();
    let logged = store
        .deliveries
        .handoffs(&HandoffFilter::Consumer(portal.id.clone()), None, 10)
        .await
        .unwrap();
    assert_eq!(logged.items.len(), 1);
}
