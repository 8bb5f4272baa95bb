//! Decided once, on a real NATS: a message stored by JetStream whose PubAck never reached the
//! relay (a stalled connection, a relay killed while waiting) is sent again as it was decided
//! — same id, same content — and lands in the handoff log, even when the customer withdrew
//! consent in the meantime. Before, the retry decided again on the new state, sent only the
//! withdrawal notice, and the consumer held a change the handoff log did not show. The same
//! for a webhook whose receiver took a message but answered after the relay gave up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use idledger_relay::envelope::{CONSENT_WITHDRAWN, FIELD_CHANGED};
use idledger_store::delivery::{Channel, ConsumerId, HandoffFilter};
use support::*;

on_both_engines!(
    a_publish_acknowledged_late_is_resent_as_decided,
    a_relay_killed_before_the_ack_resends_the_decided_batch,
    a_webhook_answered_too_late_is_sent_the_decided_message_again
);

/// What the scenarios share: a marketing consumer receiving a consenting customer's email,
/// the relay reaching NATS through a proxy that is stalled while a new email is published.
struct Scene {
    store: TestStore,
    nats: idledger_relay::NatsConfig,
    url: String,
    proxy: StallingProxy,
    customer: idledger_domain::ids::CustomerId,
    relay: Option<RunningRelay>,
}

impl Scene {
    async fn start(engine: Engine) -> Self {
        let url = shared_nats().await;
        let store = TestStore::new(engine).await;
        store
            .register(consumer("mkt", Channel::Nats, &["email"], &["marketing"]))
            .await;
        let customer = customer_consenting(&store.ledger, &["marketing"]).await;
        run(&store.ledger, "idp", customer, vec![set("email", email(1))]).await;
        let proxy = StallingProxy::start(nats_addr(&url)).await;
        let mut nats = unique_nats(&proxy.url);
        nats.publish_timeout = Duration::from_millis(400);
        let relay = RunningRelay::start(store.ledger.clone(), test_config(Some(nats.clone())));
        store.caught_up("mkt", Duration::from_secs(20)).await;
        Self {
            store,
            nats,
            url,
            proxy,
            customer,
            relay: Some(relay),
        }
    }

    async fn stop(mut self) {
        if let Some(relay) = self.relay.take() {
            relay.stop().await;
        }
    }

    /// Every message in the consumer's part of the stream, read from NATS directly.
    async fn in_stream(&self) -> Vec<Delivered> {
        let js = jetstream(&self.url).await;
        let prefix = &self.nats.stream.subject_prefix;
        dedupe(&read_stream(&js, &self.nats.stream.name, &format!("{prefix}.mkt.>")).await)
    }

    /// Stalls the proxy, changes the email and waits until JetStream holds the change: stored,
    /// its PubAck held back.
    async fn publish_unacknowledged(&self) {
        self.proxy.stall();
        run(
            &self.store.ledger,
            "idp",
            self.customer,
            vec![set("email", email(2))],
        )
        .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let stream = self.in_stream().await;
            if stream.iter().any(|d| d.event.data["value"] == email(2)) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new email never reached the stream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let a PubAck time out and a retry or two fail while the proxy holds the answers.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    /// The stream and the handoff log agree message for message, and the change stored
    /// before the withdrawal is in both, ahead of the withdrawal notice.
    async fn assert_every_message_logged(&self) {
        let stream = self.in_stream().await;
        let sent: BTreeSet<String> = stream.iter().map(|d| d.event.id.clone()).collect();
        let logged = logged_ids(&self.store, "mkt").await;
        assert_eq!(
            sent, logged,
            "every message the consumer can read is in the handoff log, and only those"
        );
        assert_eq!(
            kinds(stream.iter().map(|d| &d.event)),
            decided_then_withdrawn(),
            "the change decided before the withdrawal went out once, then the notice"
        );
    }
}

/// Each event's type and the value it carries.
fn kinds<'a>(
    events: impl Iterator<Item = &'a idledger_relay::envelope::CloudEvent>,
) -> Vec<(String, Option<String>)> {
    events
        .map(|e| {
            (
                e.event_type.clone(),
                e.data["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// What every scenario's consumer must end up with: the first email, the second (decided
/// before the withdrawal), then the withdrawal notice.
fn decided_then_withdrawn() -> Vec<(String, Option<String>)> {
    let value = |n| email(n).as_str().map(str::to_owned);
    vec![
        (FIELD_CHANGED.to_owned(), value(1)),
        (FIELD_CHANGED.to_owned(), value(2)),
        (CONSENT_WITHDRAWN.to_owned(), None),
    ]
}

/// The ids of the messages the handoff log holds for `consumer`.
async fn logged_ids(store: &TestStore, consumer: &str) -> BTreeSet<String> {
    store
        .deliveries
        .handoffs(
            &HandoffFilter::Consumer(ConsumerId::parse(consumer).unwrap()),
            None,
            100,
        )
        .await
        .unwrap()
        .items
        .iter()
        .map(|h| h.handoff.message_id.to_string())
        .collect()
}

async fn a_publish_acknowledged_late_is_resent_as_decided(engine: Engine) {
    let scene = Scene::start(engine).await;
    scene.publish_unacknowledged().await;
    // The customer withdraws while the relay still waits to hear the change was stored.
    run(
        &scene.store.ledger,
        "consent_portal",
        scene.customer,
        vec![withdraw("marketing")],
    )
    .await;
    scene.proxy.resume();
    scene.store.caught_up("mkt", Duration::from_secs(30)).await;
    scene.assert_every_message_logged().await;
    scene.stop().await;
}

async fn a_relay_killed_before_the_ack_resends_the_decided_batch(engine: Engine) {
    let mut scene = Scene::start(engine).await;
    scene.publish_unacknowledged().await;
    scene.relay.take().unwrap().kill().await;
    run(
        &scene.store.ledger,
        "consent_portal",
        scene.customer,
        vec![withdraw("marketing")],
    )
    .await;
    // A new relay, straight to NATS: it finds the decided batch and sends it before anything
    // newer.
    let mut direct = scene.nats.clone();
    direct.url = scene.url.clone();
    scene.relay = Some(RunningRelay::start(
        scene.store.ledger.clone(),
        test_config(Some(direct)),
    ));
    scene.store.caught_up("mkt", Duration::from_secs(30)).await;
    scene.assert_every_message_logged().await;
    scene.stop().await;
}

async fn a_webhook_answered_too_late_is_sent_the_decided_message_again(engine: Engine) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let store = TestStore::new(engine).await;
    let ledger = &store.ledger;
    // The first request carrying the second email is taken and answered too late.
    let stalled = Arc::new(AtomicBool::new(false));
    let once = stalled.clone();
    let late = email(2);
    let receiver = Receiver::start(
        0,
        Arc::new(move |event, _| {
            if event.data["value"] == late && !once.swap(true, Ordering::SeqCst) {
                (TOO_LATE, None)
            } else {
                (200, None)
            }
        }),
    )
    .await;
    store
        .register(consumer(
            "hook",
            webhook_channel(&receiver.url()),
            &["email"],
            &["marketing"],
        ))
        .await;
    let customer = customer_consenting(ledger, &["marketing"]).await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(None));
    store.caught_up("hook", Duration::from_secs(20)).await;
    run(ledger, "idp", customer, vec![set("email", email(2))]).await;
    eventually(
        Duration::from_secs(20),
        "the receiver takes the new email",
        || stalled.load(Ordering::SeqCst),
    )
    .await;
    // Withdrawn while the relay waits for the answer.
    run(
        ledger,
        "consent_portal",
        customer,
        vec![withdraw("marketing")],
    )
    .await;
    store.caught_up("hook", Duration::from_secs(30)).await;

    let received = receiver.received();
    let got: BTreeSet<String> = received
        .iter()
        .map(|r| {
            serde_json::from_slice::<idledger_relay::envelope::CloudEvent>(&r.body)
                .unwrap()
                .id
        })
        .collect();
    let logged = logged_ids(&store, "hook").await;
    assert_eq!(
        got, logged,
        "every message the receiver took is in the handoff log"
    );
    assert_eq!(
        kinds(receiver.accepted().iter()),
        decided_then_withdrawn(),
        "the change decided before the withdrawal is answered in time on the retry, then the notice"
    );
    let ids: Vec<Option<String>> = received.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(ids.len(), 4, "the late request, its retry, and two others");
    assert_eq!(
        ids[1], ids[2],
        "the retry is the message the receiver took, under the same id"
    );
    assert_eq!(received[1].body, received[2].body, "and the same content");
    relay.stop().await;
}
