//! Leadership of delivery among processes sharing a store: two stores on one database stand
//! for two `serve` processes. One leads; the other waits and takes over once the first gives
//! up (drop, exit) or, on PostgreSQL, loses its session.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_store::leader::Job;
use support::{Engine, TestDb, on_both_engines};

on_both_engines!(one_store_leads_and_another_takes_over_when_it_lets_go);

async fn one_store_leads_and_another_takes_over_when_it_lets_go(engine: Engine) {
    let db = TestDb::new(engine).await;
    let (first, second) = (db.store().await, db.store().await);
    let lease = first
        .try_lead(Job::Delivery)
        .await
        .unwrap()
        .expect("nobody leads yet");
    assert!(
        second.try_lead(Job::Delivery).await.unwrap().is_none(),
        "one leader at a time"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(600), second.lead(Job::Delivery))
            .await
            .is_err(),
        "the other waits while the lead is held"
    );
    drop(lease);
    let mut lease = tokio::time::timeout(Duration::from_secs(3), second.lead(Job::Delivery))
        .await
        .expect("the other takes over once the lead is given up");
    assert!(first.try_lead(Job::Delivery).await.unwrap().is_none());

    if engine == Engine::Postgres {
        // The leader's session is ended under it (a network cut, an administrator): it
        // notices, and the other may lead.
        db.exec(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await;
        tokio::time::timeout(Duration::from_secs(5), lease.lost())
            .await
            .expect("a leader whose session ended knows it has lost the lead");
        tokio::time::timeout(Duration::from_secs(3), first.lead(Job::Delivery))
            .await
            .expect("and another process leads");
    }
}
