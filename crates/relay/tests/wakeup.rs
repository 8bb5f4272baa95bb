//! The relay is woken by the log's growth, not by polling it: with a poll interval of an hour,
//! an idle consumer still receives a change at once — appended by this process, and on
//! PostgreSQL by another process (its own store and writer) through `NOTIFY`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_store::delivery::{Channel, ConsumerId};
use support::*;

on_both_engines!(an_append_wakes_an_idle_relay_at_once);

/// Whether consumer `id` reaches the log's head within `within`.
async fn catches_up(store: &TestStore, id: &ConsumerId, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        let head = store.ledger.head_position().await.unwrap();
        if store.deliveries.checkpoint(id).await.unwrap().unwrap() >= head {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn an_append_wakes_an_idle_relay_at_once(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    store
        .register(consumer("mkt", Channel::Nats, &["email"], &["marketing"]))
        .await;
    let mkt = ConsumerId::parse("mkt").unwrap();
    let customer = customer_consenting(&store.ledger, &["marketing"]).await;
    let mut config = test_config(Some(unique_nats(&url)));
    // Only a wake-up can deliver within the test's bounds.
    config.poll_interval = Duration::from_secs(3600);
    let relay = RunningRelay::start(store.ledger.clone(), config);
    store.caught_up("mkt", Duration::from_secs(20)).await;
    // Idle now, waiting.
    tokio::time::sleep(Duration::from_millis(200)).await;

    run(&store.ledger, "idp", customer, vec![set("email", email(1))]).await;
    assert!(
        catches_up(&store, &mkt, Duration::from_secs(5)).await,
        "this process's append did not wake the relay"
    );

    if engine == Engine::Postgres {
        // Another process's append. Its announcement may come before this process's listener
        // is connected (it connects when the relay first waits): a few tries, each of which
        // would wait an hour if nothing woke the relay.
        let other = store.another_ledger().await;
        let mut woken = false;
        for n in 2..8 {
            run(&other, "idp", customer, vec![set("email", email(n))]).await;
            if catches_up(&store, &mkt, Duration::from_secs(2)).await {
                woken = true;
                break;
            }
        }
        assert!(woken, "another process's appends never woke the relay");
    }
    relay.stop().await;
}
