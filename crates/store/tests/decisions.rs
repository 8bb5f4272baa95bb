//! The decision log's writer on both engines: questions answered together share a commit, each
//! is answered only once its decisions are committed, and one that cannot be logged fails
//! alone. Askers are read through the token cache, and disabling one reaches another process
//! within its bound. (The routes, the rules and the log's readers are tested in crates/api/tests and
//! crates/app/tests.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use chrono::Utc;
use idledger_domain::ids::Purpose;
use idledger_store::decisions::{DecisionFilter, DecisionLog, DecisionRecord};
use support::*;
use uuid::Uuid;

on_both_engines!(
    concurrent_questions_are_all_logged_once,
    a_question_that_cannot_be_logged_fails_alone,
    a_question_dropped_while_its_decisions_are_written_does_not_stop_the_log,
    a_disabled_asker_is_refused_by_another_process_within_the_bound
);

fn record(customer: idledger_domain::ids::CustomerId) -> DecisionRecord {
    DecisionRecord {
        decision_id: Uuid::now_v7(),
        decided_at: Utc::now(),
        processor_id: "journey".to_owned(),
        token_id: Uuid::now_v7(),
        customer_id: customer,
        purpose: Purpose::parse("marketing").unwrap(),
        tiers: vec!["low".to_owned()],
        answers: vec![],
        allowed: false,
        basis: None,
        basis_event_id: None,
        basis_version: None,
        stream_version: 1,
        policy_version: "sha256:x".to_owned(),
        token_expires_at: None,
    }
}

async fn logged_ids(store: &TestStore) -> Vec<Uuid> {
    let decisions = store.ledger.store().decisions();
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = decisions
            .list(&DecisionFilter::default(), after, 1000)
            .await
            .unwrap();
        ids.extend(page.items.iter().map(|e| e.decision.decision_id));
        match page.next {
            Some(next) => after = Some(next),
            None => return ids,
        }
    }
}

async fn concurrent_questions_are_all_logged_once(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = DecisionLog::new(store.ledger.store().decisions());
    let customer = new_customer();
    // 300 questions of 1 to 3 customers at once: they share commits as they arrive.
    let questions: Vec<Vec<DecisionRecord>> = (0..300)
        .map(|i| (0..=i % 3).map(|_| record(customer)).collect())
        .collect();
    let sent: BTreeSet<Uuid> = questions.iter().flatten().map(|r| r.decision_id).collect();
    let answers = futures::future::join_all(questions.into_iter().map(|q| {
        let log = log.clone();
        async move { log.record(q).await }
    }))
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let logged = logged_ids(&store).await;
    assert_eq!(logged.len(), sent.len(), "each decision once");
    assert_eq!(logged.into_iter().collect::<BTreeSet<_>>(), sent);
    // Nothing to log is no commit and no error.
    log.record(Vec::new()).await.unwrap();
}

async fn a_question_that_cannot_be_logged_fails_alone(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = DecisionLog::new(store.ledger.store().decisions());
    let customer = new_customer();
    let first = record(customer);
    log.record(vec![first.clone()]).await.unwrap();
    // A decision id logged already cannot be logged again (it is unique): that question fails,
    // whichever group it lands in; its neighbours are logged.
    let mut questions: Vec<Vec<DecisionRecord>> = (0..50).map(|_| vec![record(customer)]).collect();
    questions.insert(25, vec![record(customer), first.clone()]);
    let answers = futures::future::join_all(questions.iter().cloned().map(|q| {
        let log = log.clone();
        async move { log.record(q).await }
    }))
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer.is_err(), i == 25, "question {i}: {answer:?}");
    }
    let logged: BTreeSet<Uuid> = logged_ids(&store).await.into_iter().collect();
    assert_eq!(logged.len(), 51, "the first and the 50 others");
    assert!(
        !logged.contains(&questions[25][0].decision_id),
        "the failed question's other decision is not logged either: its transaction rolled back"
    );
}

async fn a_question_dropped_while_its_decisions_are_written_does_not_stop_the_log(engine: Engine) {
    use futures::FutureExt as _;
    let store = TestStore::new(engine).await;
    let log = DecisionLog::new(store.ledger.store().decisions());
    let customer = new_customer();
    // The first question finds the log idle and starts writing; the second queues behind it.
    let (dropped, queued) = (record(customer), record(customer));
    let mut writing = Box::pin(log.record(vec![dropped]));
    assert!(
        (&mut writing).now_or_never().is_none(),
        "the write is under way"
    );
    let mut waiting = Box::pin(log.record(vec![queued.clone()]));
    assert!(
        (&mut waiting).now_or_never().is_none(),
        "it waits for the write"
    );
    // A caller that gives up (a client gone) drops its question mid-write: the one queued
    // behind it is still written and answered, and the log takes new questions.
    drop(writing);
    let bound = std::time::Duration::from_secs(10);
    tokio::time::timeout(bound, waiting)
        .await
        .expect("the queued question is answered")
        .unwrap();
    let later = record(customer);
    tokio::time::timeout(bound, log.record(vec![later.clone()]))
        .await
        .expect("a later question is answered")
        .unwrap();
    let logged: BTreeSet<Uuid> = logged_ids(&store).await.into_iter().collect();
    assert!(logged.contains(&queued.decision_id) && logged.contains(&later.decision_id));
}

/// Whether `there` reads `id` as a registered, enabled asker.
async fn asks(there: &idledger_store::decisions::Decisions, id: &str) -> bool {
    there
        .asker(id)
        .await
        .unwrap()
        .is_some_and(|a| a.is_enabled())
}

async fn a_disabled_asker_is_refused_by_another_process_within_the_bound(engine: Engine) {
    use idledger_domain::field::FieldSelector;
    use idledger_domain::usage::Location;
    use idledger_store::decisions::{NewProcessor, ProcessorId};
    use idledger_store::delivery::{Channel, ConsumerId};

    let db = TestDb::new(engine).await;
    let (here, there) = (db.store().await, db.store().await);
    there.set_token_cache_ttl(second_store_cache_ttl(engine));
    let (admin, remote) = (here.decisions(), there.decisions());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !there.tokens().cache_is_live() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change listener never connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for id in ["quiet", "journey"] {
        let new = NewProcessor::new(
            ProcessorId::parse(id).unwrap(),
            vec![Purpose::parse("marketing").unwrap()],
            vec![FieldSelector::parse("email").unwrap()],
            Location::CONTROLLERS,
        )
        .unwrap();
        admin.register_processor(new, Utc::now()).await.unwrap();
    }
    here.deliveries()
        .register_consumer(
            consumer("crm", Channel::Feed, &["email"], &["marketing"]),
            Utc::now(),
        )
        .await
        .unwrap();

    // The cache answers: a change written behind the store's back (no announcement) is not
    // seen until the entry is read again.
    assert!(asks(&remote, "quiet").await);
    db.exec("UPDATE processors SET disabled_at = CURRENT_TIMESTAMP WHERE processor_id = 'quiet'")
        .await;
    assert!(asks(&remote, "quiet").await, "answered from the cache");

    for id in ["journey", "crm"] {
        assert!(asks(&remote, id).await);
        let changed_at = tokio::time::Instant::now();
        let found = match id {
            "journey" => admin.disable_processor(id, Utc::now()).await.unwrap(),
            _ => here
                .deliveries()
                .disable_consumer(&ConsumerId::parse(id).unwrap(), Utc::now())
                .await
                .unwrap(),
        };
        assert!(found);
        assert!(
            !asks(&admin, id).await,
            "the store that disabled it refuses it at once"
        );
        reaches_the_second_store_within_the_bound(
            engine,
            changed_at,
            &format!("disabling {id}"),
            async || asks(&remote, id).await,
        )
        .await;
    }
}
