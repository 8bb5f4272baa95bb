//! The master key's rewrap (`Keys`), on both engines: every data key and the derivation root
//! move to a new master key, resumably, and nothing derived from the root changes.
//!
//! - [x] `Keys::rewrap`, `Keys::plan_rewrap`, `Keys::pending_rewrap`
//! - [x] `Keys::refuse_unfinished_rewrap`, `Keys::derivation_root` (through `Ledger::open`)
//! - [x] checkpoint signing keys, sealed under the derivation root, survive a rewrap
//!   (`derived_secrets_are_the_same_after_a_rewrap`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_domain::Change;
use idledger_domain::ids::{ChallengeId, CustomerId};
use idledger_domain::policy::Policy;
use idledger_store::delivery::Channel;
use idledger_store::{
    KeyEncryptionKey as _, Ledger, LedgerOptions, MasterKey, RewrapOptions, Store, StoreError,
};
use serde_json::json;
use support::*;
use uuid::Uuid;

on_both_engines!(
    after_a_rewrap_every_record_reads_with_the_new_key_and_the_old_is_refused,
    an_interrupted_rewrap_is_resumed_and_completes,
    derived_secrets_are_the_same_after_a_rewrap,
    a_rewrap_to_the_current_key_or_with_a_wrong_key_is_refused,
);

/// A store with `n` customers written through a ledger opened (as the CLI does) with `old`,
/// its check value recorded.
async fn store_with_customers(db: &TestDb, old: &MasterKey, n: usize) -> Vec<CustomerId> {
    let store = db.store().await;
    store
        .log()
        .record_master_key_check(&old.check_value())
        .await
        .unwrap();
    let ledger = open(&store, old).await.unwrap();
    let mut customers = Vec::new();
    for i in 0..n {
        let c = new_customer();
        run(
            &ledger,
            "idp",
            c,
            vec![
                Change::Register,
                set("email", json!(format!("c{i}@example.org"))),
            ],
        )
        .await;
        customers.push(c);
    }
    customers
}

async fn open(store: &Store, key: &MasterKey) -> Result<Ledger, StoreError> {
    Ledger::open(
        store,
        MasterKey::from_hex(&key.to_hex()).unwrap(),
        Policy::default_policy().unwrap(),
        LedgerOptions::default(),
    )
    .await
}

async fn email(ledger: &Ledger, c: CustomerId) -> Option<serde_json::Value> {
    let events = ledger.stream(c, None, None).await.ok()?;
    assert_eq!(events.len(), 2);
    let state = ledger.state(c).await.ok()??;
    serde_json::to_value(&state)
        .ok()?
        .pointer("/fields/email/value/value")
        .cloned()
}

async fn after_a_rewrap_every_record_reads_with_the_new_key_and_the_old_is_refused(engine: Engine) {
    let db = TestDb::new(engine).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let customers = store_with_customers(&db, &old, 5).await;
    let store = db.store().await;
    let keys = store.keys();
    let plan = keys.plan_rewrap(&new).await.unwrap();
    assert_eq!((plan.data_keys, plan.root), (5, true));
    let mut seen = Vec::new();
    let report = keys
        .rewrap(
            &old,
            &new,
            RewrapOptions {
                batch_size: 2,
                max_batches: None,
            },
            |moved| seen.push(moved),
        )
        .await
        .unwrap();
    assert!(report.finished && report.root_moved);
    assert_eq!((report.data_keys_moved, report.remaining), (5, 0));
    assert_eq!(seen, vec![2, 4, 5], "progress after every batch");
    assert_eq!(keys.pending_rewrap().await.unwrap(), None);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM data_keys WHERE key_id = '{}'",
                new.key_id()
            )
        )
        .await,
        5
    );
    assert!(new.matches_check(&store.log().master_key_check().await.unwrap().unwrap()));

    let ledger = open(&store, &new).await.unwrap();
    for (i, c) in customers.iter().enumerate() {
        assert_eq!(
            email(&ledger, *c).await,
            Some(json!(format!("c{i}@example.org")))
        );
    }
    // A new customer's key is wrapped under the new key, with its id.
    let c = new_customer();
    run(
        &ledger,
        "idp",
        c,
        vec![Change::Register, set("email", json!("n@example.org"))],
    )
    .await;
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM data_keys WHERE key_id = '{}'",
                new.key_id()
            )
        )
        .await,
        6
    );

    let refused = open(&store, &old).await.unwrap_err();
    assert!(
        refused.to_string().contains(&new.key_id()),
        "the old key is refused, naming the key the root is under: {refused}"
    );
    // Even past the root, the old key unwraps no data key.
    let stale = Ledger::new(
        &store,
        MasterKey::from_hex(&old.to_hex()).unwrap(),
        Policy::default_policy().unwrap(),
        LedgerOptions::default(),
    );
    assert!(stale.stream(customers[0], None, None).await.is_err());
}

async fn an_interrupted_rewrap_is_resumed_and_completes(engine: Engine) {
    let db = TestDb::new(engine).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let customers = store_with_customers(&db, &old, 7).await;
    let store = db.store().await;
    let keys = store.keys();
    let stopped = RewrapOptions {
        batch_size: 3,
        max_batches: Some(1),
    };
    let first = keys.rewrap(&old, &new, stopped, |_| {}).await.unwrap();
    assert!(!first.finished);
    assert_eq!((first.data_keys_moved, first.remaining), (3, 4));
    assert_eq!(keys.pending_rewrap().await.unwrap(), Some(new.key_id()));
    // Midway every key names the key that wrapped it: 3 under the new, 4 under the old.
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM data_keys WHERE key_id = '{}'",
                old.key_id()
            )
        )
        .await,
        4
    );
    // Neither key opens a ledger while it is unfinished, and the message says what to do.
    for key in [&old, &new] {
        let e = open(&store, key).await.unwrap_err().to_string();
        assert!(e.contains("unfinished") && e.contains("keys rewrap"), "{e}");
    }
    // A rewrap to a third key must wait for this one.
    let third = MasterKey::generate();
    let e = keys
        .rewrap(&old, &third, RewrapOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains(&new.key_id()), "{e}");

    let second = keys.rewrap(&old, &new, stopped, |_| {}).await.unwrap();
    assert_eq!((second.data_keys_moved, second.remaining), (3, 1));
    assert!(!second.root_moved, "the root moved in the first run");
    let last = keys
        .rewrap(&old, &new, RewrapOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(last.finished);
    assert_eq!(last.data_keys_moved, 1);
    let ledger = open(&store, &new).await.unwrap();
    for (i, c) in customers.iter().enumerate() {
        assert_eq!(
            email(&ledger, *c).await,
            Some(json!(format!("c{i}@example.org")))
        );
    }
    // Done: running it again says so rather than moving anything.
    let again = keys
        .rewrap(&old, &new, RewrapOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(again.to_string().contains("finished"), "{again}");
}

async fn derived_secrets_are_the_same_after_a_rewrap(engine: Engine) {
    let db = TestDb::new(engine).await;
    let (old, new) = (MasterKey::generate(), MasterKey::generate());
    let customers = store_with_customers(&db, &old, 2).await;
    let store = db.store().await;
    let mut crm = consumer("crm", Channel::Nats, &["email"], &["crm"]);
    crm.pseudonymous = true;
    store
        .deliveries()
        .register_consumer(crm, chrono::Utc::now())
        .await
        .unwrap();
    let crm = store
        .deliveries()
        .consumer(&consumer_id("crm"))
        .await
        .unwrap()
        .unwrap();
    let challenge = ChallengeId::from(Uuid::now_v7());
    let secrets = |ledger: &Ledger| {
        (
            ledger.hash_key(&crm.id).to_hex(),
            ledger.customer_names(&crm).show(customers[0]),
            ledger.challenge_secret(challenge).as_str().to_owned(),
        )
    };
    let before = secrets(&open(&store, &old).await.unwrap());
    // A checkpoint signed before the rewrap, with a key sealed under the derivation root.
    let first = open(&store, &old)
        .await
        .unwrap()
        .sign_checkpoint()
        .await
        .unwrap()
        .unwrap()
        .checkpoint;
    // What a ledger of a store from before the root was stored derived: the same.
    let legacy = Ledger::new(
        &store,
        MasterKey::from_hex(&old.to_hex()).unwrap(),
        Policy::default_policy().unwrap(),
        LedgerOptions::default(),
    );
    assert_eq!(secrets(&legacy), before);
    assert_ne!(
        before.1,
        customers[0].as_uuid(),
        "the consumer sees an alias"
    );

    keys_rewrap(&store, &old, &new).await;
    let ledger = open(&store, &new).await.unwrap();
    let after = secrets(&ledger);
    assert_eq!(after, before);
    // Checkpoint signing goes on with the same key, and every checkpoint still holds.
    run(
        &ledger,
        "idp",
        customers[1],
        vec![set("email", json!("moved@example.org"))],
    )
    .await;
    let second = ledger.sign_checkpoint().await.unwrap().unwrap();
    assert!(second.new);
    assert_eq!(second.checkpoint.kid, first.kid);
    assert!(second.checkpoint.position > first.position);
    let report = ledger.verify(&|_, _| {}).await.unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checkpoints.len(), 2);
    // Whereas the new key's own derivations differ: the root, not the key, is what counts.
    let naive = Ledger::new(
        &store,
        MasterKey::from_hex(&new.to_hex()).unwrap(),
        Policy::default_policy().unwrap(),
        LedgerOptions::default(),
    );
    assert_ne!(secrets(&naive).0, before.0);
}

async fn keys_rewrap(store: &Store, old: &MasterKey, new: &MasterKey) {
    let report = store
        .keys()
        .rewrap(old, new, RewrapOptions::default(), |_| {})
        .await
        .unwrap();
    assert!(report.finished);
}

async fn a_rewrap_to_the_current_key_or_with_a_wrong_key_is_refused(engine: Engine) {
    let db = TestDb::new(engine).await;
    let old = MasterKey::generate();
    store_with_customers(&db, &old, 1).await;
    let store = db.store().await;
    let keys = store.keys();
    let same = MasterKey::from_hex(&old.to_hex()).unwrap();
    let e = keys
        .rewrap(&old, &same, RewrapOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("is the current one"), "{e}");
    let (wrong, new) = (MasterKey::generate(), MasterKey::generate());
    let e = keys
        .rewrap(&wrong, &new, RewrapOptions::default(), |_| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not the key"), "{e}");
    assert_eq!(
        keys.pending_rewrap().await.unwrap(),
        None,
        "nothing started"
    );
    assert!(open(&store, &old).await.is_ok());
}
