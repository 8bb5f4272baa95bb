//! Signed webhooks to a real HTTP receiver: signatures the receiver verifies on its own, order,
//! retries with back-off and `Retry-After`, 4xx → sync exception, catching up after an outage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use idledger_relay::envelope::{CloudEvent, FIELD_CHANGED};
use idledger_store::delivery::{
    ConsumerId, ExceptionFilter, ExceptionKind, HandoffFilter, WebhookSecret,
};
use sha2::Sha256;
use support::*;

/// The receiver's own check, written from the documented contract rather than our code.
fn signature_holds(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let age = chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap();
    if !(-300..=300).contains(&age) {
        return false;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&hex::decode(v1).unwrap()).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_ordered_retried_and_refusals_become_exceptions() {
    let store = TestStore::new(Engine::Postgres).await;
    let ledger = &store.ledger;
    // 503, then 429 with Retry-After: 1, then accept — except name.given, always 422.
    let receiver = Receiver::start(
        0,
        Arc::new(|event: &CloudEvent, n: usize| {
            if event.data["field"] == "name.given" {
                return (422, None);
            }
            match n {
                0 => (503, None),
                1 => (429, Some("1".to_owned())),
                _ => (204, None),
            }
        }),
    )
    .await;
    store
        .register(consumer(
            "cdp",
            webhook_channel(&receiver.url()),
            &["email", "name.given"],
            &["crm"],
        ))
        .await;
    let a = customer_consenting(ledger, &["crm"]).await;
    let b = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    run(
        ledger,
        "idp",
        b,
        vec![set("name.given", serde_json::json!("Grace"))],
    )
    .await;
    run(ledger, "idp", a, vec![set("email", email(2))]).await;
    run(ledger, "idp", b, vec![set("email", email(3))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(None));
    store.caught_up("cdp", Duration::from_secs(20)).await;

    let received = receiver.received();
    for r in &received {
        let header = r.signature.as_deref().unwrap();
        assert!(signature_holds(header, &r.body), "bad signature {header}");
        let event: CloudEvent = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(r.message_id.as_deref(), Some(event.id.as_str()));
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/cloudevents+json; charset=utf-8")
        );
    }
    // Our own verifier agrees with the receiver's.
    let secret = WebhookSecret::parse(SECRET).unwrap();
    let first = &received[0];
    idledger_relay::webhook::verify(
        &secret,
        first.signature.as_deref().unwrap(),
        &first.body,
        chrono::Utc::now(),
        Duration::from_secs(300),
    )
    .unwrap();
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [503, 429, 204, 422, 204, 204],
        "retried until accepted, the refusal skipped, nothing reordered"
    );
    let retry_after = received[2].at - received[1].at;
    assert!(
        retry_after >= Duration::from_millis(950),
        "Retry-After: 1 was not honoured ({retry_after:?})"
    );
    let accepted = receiver.accepted();
    let values: Vec<(String, &str)> = accepted
        .iter()
        .map(|e| (e.subject.clone(), e.data["value"].as_str().unwrap()))
        .collect();
    let e = |n| email(n).as_str().unwrap().to_owned();
    assert_eq!(
        values,
        [
            (a.to_string(), e(1).as_str()),
            (a.to_string(), e(2).as_str()),
            (b.to_string(), e(3).as_str())
        ]
    );
    assert!(accepted.iter().all(|e| e.event_type == FIELD_CHANGED));

    // The refusal is a sync exception for B's name.given; only accepted messages are handoffs.
    let exceptions = store
        .deliveries
        .exceptions(&ExceptionFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    let x = &exceptions[0];
    assert_eq!(
        (
            x.kind,
            x.customer_id,
            x.field.as_deref(),
            x.detail["status"].as_u64()
        ),
        (
            ExceptionKind::WebhookRejected,
            b,
            Some("name.given"),
            Some(422)
        )
    );
    let cdp = ConsumerId::parse("cdp").unwrap();
    let handoffs = store
        .deliveries
        .handoffs(&HandoffFilter::Consumer(cdp.clone()), None, 100)
        .await
        .unwrap();
    assert_eq!(handoffs.items.len(), 3);

    // The endpoint goes away; changes wait for it, then arrive in order when it is back.
    receiver.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in 10..15 {
        run(ledger, "idp", a, vec![set("email", email(n))]).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let head = ledger.head_position().await.unwrap();
    let at = store.deliveries.checkpoint(&cdp).await.unwrap().unwrap();
    assert!(at < head, "delivered while the endpoint was down?");
    let back = Receiver::start(
        receiver.addr.port(),
        Arc::new(|_: &CloudEvent, _| (200, None)),
    )
    .await;
    store.caught_up("cdp", Duration::from_secs(20)).await;
    let caught_up: Vec<String> = back
        .accepted()
        .iter()
        .map(|e| e.data["value"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(caught_up, (10..15).map(e).collect::<Vec<_>>());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_keeps_failing_raises_an_exception_that_delivery_closes() {
    let store = TestStore::new(Engine::Sqlite).await;
    let ledger = &store.ledger;
    let failures = idledger_relay::webhook::FAILING_AFTER as usize + 1;
    let receiver = Receiver::start(
        0,
        Arc::new(move |_: &CloudEvent, n: usize| {
            if n < failures {
                (503, None)
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
            &["email"],
            &["crm"],
        ))
        .await;
    let a = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(None));
    store.caught_up("cdp", Duration::from_secs(30)).await;
    relay.stop().await;
    assert_eq!(receiver.received().len(), failures + 1);
    let deliveries = ledger.store().deliveries();
    let all = deliveries
        .exceptions(
            &ExceptionFilter {
                consumer: Some(ConsumerId::parse("cdp").unwrap()),
                ..ExceptionFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let failing = &all[0];
    assert_eq!(failing.kind, ExceptionKind::DeliveryFailing);
    assert_eq!(failing.field.as_deref(), Some("email"));
    assert_eq!(
        failing.detail["attempts"],
        idledger_relay::webhook::FAILING_AFTER
    );
    // It got through in the end, which closed it.
    assert_eq!(
        failing.status,
        idledger_store::delivery::ExceptionStatus::Resolved
    );
    assert_eq!(
        failing.resolution,
        Some(idledger_store::delivery::Resolution::Auto)
    );
}
