//! Consumers at the same place in the log share the pages delivery reads: four consumers
//! catching up on the same log read it about once between them, not once each — and each still
//! receives every change it is entitled to.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_store::delivery::Channel;
use support::*;

on_both_engines!(consumers_catching_up_together_read_each_page_of_the_log_about_once);

const CONSUMERS: [&str; 4] = ["crm", "cdp", "mkt", "ads"];
const BATCH: u32 = 10;

async fn consumers_catching_up_together_read_each_page_of_the_log_about_once(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    for id in CONSUMERS {
        store
            .register(consumer(id, Channel::Nats, &["email"], &["marketing"]))
            .await;
    }
    let customer = customer_consenting(&store.ledger, &["marketing"]).await;
    for n in 0..150 {
        run(&store.ledger, "idp", customer, vec![set("email", email(n))]).await;
    }
    let head = store.ledger.head_position().await.unwrap();
    let nats = unique_nats(&url);
    let mut config = test_config(Some(nats.clone()));
    config.batch_size = BATCH;
    let relay = RunningRelay::start(store.ledger.clone(), config);
    for id in CONSUMERS {
        store.caught_up(id, Duration::from_secs(60)).await;
    }
    let (read, shared) = (relay.pages.read(), relay.pages.shared());
    relay.stop().await;

    // Each consumer alone reads every page and a last, short one.
    let pages = head.div_ceil(u64::from(BATCH)) + 1;
    assert!(
        read < 2 * pages,
        "{read} pages read from the store for {pages} pages of the log and {} consumers ({shared} shared)",
        CONSUMERS.len()
    );
    assert!(shared >= pages, "{shared} pages shared");
    let js = jetstream(&url).await;
    let prefix = &nats.stream.subject_prefix;
    for id in CONSUMERS {
        let got = dedupe(&read_stream(&js, &nats.stream.name, &format!("{prefix}.{id}.>")).await);
        let changes = got
            .iter()
            .filter(|d| d.event.event_type == idledger_relay::envelope::FIELD_CHANGED)
            .count();
        assert_eq!(changes, 150, "consumer {id} got {changes} email changes");
    }
}
