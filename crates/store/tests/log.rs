//! The raw event log (`EventLog`) and opening a store (`Store`), on both engines: what
//! verification tools, rebuilds and delivery read under the ledger.
//!
//! Covers every public method of `Store` and `EventLog` that the ledger suite
//! (`conformance.rs`) does not already exercise directly:
//! - [x] `Store::open`, `Store::postgres`, `Store::sqlite`, `Store::engine`
//! - [x] `Store::log`, `Store::tokens`, `Store::deliveries`, `Store::runs` (every test)
//! - [x] `EventLog::head_position`, `EventLog::read_all`, `EventLog::stream`
//! - [x] `EventLog::idempotency`
//! - [x] `EventLog::expire_idempotency`: crates/app/tests/retention.rs
//!   (`old_idempotency_records_are_deleted_and_younger_ones_kept`)
//! - [x] `EventLog::data_key`, `EventLog::data_keys`
//! - [x] `EventLog::erasures`
//! - [x] `EventLog::projection_rows`, `EventLog::projection_page`
//! - [x] `EventLog::replace_projections`
//! - `EventLog::write_batch`: conformance.rs (`concurrent_appends_at_the_same_version_exactly_one_wins`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_domain::Change;
use idledger_domain::ids::CustomerId;
use idledger_store::model::{ProjectionRow, micros};
use idledger_store::{CommandResult, Role, Store, StoreError};
use serde_json::json;
use support::*;
use uuid::Uuid;

on_both_engines!(
    a_store_opens_the_database_its_url_names,
    the_log_is_read_in_position_order_after_a_cursor,
    a_stream_is_read_in_stream_order_by_field_and_instant,
    idempotency_records_are_kept_per_source_and_key,
    data_keys_are_read_for_those_who_have_one,
    erasures_are_the_erasure_events_of_the_erased,
    projections_are_paged_by_customer,
    projections_are_replaced_only_at_the_expected_head,
);

/// Registers `c` with a given name and a family name (3 events), then changes the given name.
async fn two_commands(store: &TestStore, c: CustomerId) {
    run(
        &store.ledger,
        "idp",
        c,
        vec![
            Change::Register,
            set("name.given", json!("Ada")),
            set("name.family", json!("King")),
        ],
    )
    .await;
    run(
        &store.ledger,
        "idp",
        c,
        vec![set("name.given", json!("Augusta"))],
    )
    .await;
}

async fn a_store_opens_the_database_its_url_names(engine: Engine) {
    let db = TestDb::new(engine).await;
    let first = Store::open(&db.url).await.unwrap();
    assert_eq!(
        format!("{:?}", first.engine()).to_lowercase(),
        format!("{engine:?}").to_lowercase()
    );
    first
        .tokens()
        .create(Role::Auditor, None, "dpo")
        .await
        .unwrap();
    // Every way of naming the same database opens it, migrated once: the token is there.
    let again = match engine {
        Engine::Postgres => vec![Store::postgres(&db.url, 2).await.unwrap()],
        Engine::Sqlite => {
            let path = db.url.strip_prefix("sqlite://").unwrap();
            vec![
                Store::sqlite(std::path::Path::new(path)).await.unwrap(),
                Store::open(&format!("sqlite:{path}")).await.unwrap(),
                Store::open(path).await.unwrap(),
            ]
        }
    };
    for store in again {
        assert_eq!(store.engine(), first.engine());
        let tokens = store.tokens().list().await.unwrap();
        assert_eq!(tokens.len(), 1, "{engine:?}");
        assert_eq!(tokens[0].label, "dpo");
    }
    // Bad URLs are configuration errors, named as such.
    match engine {
        Engine::Postgres => {
            let bad = Store::postgres("postgres://host:notaport/db", 1).await;
            assert!(matches!(bad, Err(StoreError::Config(_))), "{bad:?}");
        }
        Engine::Sqlite => {
            for url in ["sqlite://", "sqlite:", ""] {
                let bad = Store::open(url).await;
                assert!(matches!(bad, Err(StoreError::Config(_))), "{url}: {bad:?}");
            }
        }
    }
}

async fn the_log_is_read_in_position_order_after_a_cursor(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    assert_eq!(log.head_position().await.unwrap(), 0);
    assert!(log.read_all(0, 10).await.unwrap().is_empty());
    let (a, b) = (new_customer(), new_customer());
    two_commands(&store, a).await;
    two_commands(&store, b).await;
    assert_eq!(log.head_position().await.unwrap(), 8);
    let all = log.read_all(0, 100).await.unwrap();
    let positions: Vec<u64> = all.iter().map(|e| e.global_position).collect();
    assert_eq!(positions, (1..=8).collect::<Vec<_>>());
    let customers: Vec<Uuid> = all.iter().map(|e| e.customer_id).collect();
    assert_eq!(customers, [[a.as_uuid(); 4], [b.as_uuid(); 4]].concat());
    let page = log.read_all(3, 2).await.unwrap();
    assert_eq!(
        page.iter().map(|e| e.global_position).collect::<Vec<_>>(),
        [4, 5]
    );
    assert_eq!(page[0].event_id, all[3].event_id);
    assert_eq!(
        (page[0].event_type.as_str(), page[0].field.as_deref()),
        ("field_set", Some("name.given"))
    );
    assert!(log.read_all(8, 10).await.unwrap().is_empty());
    assert!(log.read_all(100, 10).await.unwrap().is_empty());
    // The ledger's raw read is the same rows.
    let raw = store.ledger.read_raw(3, 2).await.unwrap();
    assert_eq!(
        raw.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        page.iter().map(|e| e.event_id).collect::<Vec<_>>()
    );
}

async fn a_stream_is_read_in_stream_order_by_field_and_instant(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    let (a, b) = (new_customer(), new_customer());
    assert!(
        log.stream(a.as_uuid(), None, None)
            .await
            .unwrap()
            .is_empty()
    );
    run(
        &store.ledger,
        "idp",
        a,
        vec![Change::Register, set("name.given", json!("Ada"))],
    )
    .await;
    two_commands(&store, b).await;
    tokio::time::sleep(Duration::from_millis(15)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(15)).await;
    run(
        &store.ledger,
        "idp",
        a,
        vec![set("name.given", json!("Augusta"))],
    )
    .await;
    run(
        &store.ledger,
        "idp",
        a,
        vec![set("name.family", json!("King"))],
    )
    .await;

    let stream = log.stream(a.as_uuid(), None, None).await.unwrap();
    assert_eq!(
        stream.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(stream.iter().all(|e| e.customer_id == a.as_uuid()));
    let given = log
        .stream(a.as_uuid(), Some("name.given"), None)
        .await
        .unwrap();
    assert_eq!(
        given.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [2, 3]
    );
    let until = log
        .stream(a.as_uuid(), None, Some(micros(between)))
        .await
        .unwrap();
    assert_eq!(
        until.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2]
    );
    // Inclusive: an event recorded at exactly `until` is in.
    let at_second = log
        .stream(a.as_uuid(), None, Some(stream[1].recorded_at_micros))
        .await
        .unwrap();
    assert_eq!(at_second.len(), 2);
    let both = log
        .stream(a.as_uuid(), Some("name.given"), Some(micros(between)))
        .await
        .unwrap();
    assert_eq!(both.len(), 1);
    assert!(
        log.stream(a.as_uuid(), Some("phone"), None)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn idempotency_records_are_kept_per_source_and_key(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    let c = new_customer();
    assert_eq!(log.idempotency("idp", "reg").await.unwrap(), None);
    let key = idledger_domain::ids::IdempotencyKey::parse("reg").unwrap();
    assert_eq!(
        store
            .ledger
            .idempotent_result(&source("idp"), &key)
            .await
            .unwrap(),
        None
    );
    let executed = store
        .ledger
        .execute(&source("idp"), &command(c, "reg", vec![Change::Register]))
        .await
        .unwrap();
    let (hash, result) = log.idempotency("idp", "reg").await.unwrap().unwrap();
    assert_eq!(hash.len(), 32, "a SHA-256 of the request");
    let stored: CommandResult = serde_json::from_str(&result).unwrap();
    assert_eq!(stored, executed.result);
    assert_eq!(
        store
            .ledger
            .idempotent_result(&source("idp"), &key)
            .await
            .unwrap(),
        Some(executed.result.clone())
    );
    // The key is the source's: another source's, or another key, has no record.
    assert_eq!(log.idempotency("crm", "reg").await.unwrap(), None);
    assert_eq!(log.idempotency("idp", "other").await.unwrap(), None);
    assert_eq!(
        store
            .ledger
            .idempotent_result(&source("crm"), &key)
            .await
            .unwrap(),
        None
    );
    // A steward's commands are kept under the steward's reserved source.
    assert_eq!(
        store
            .ledger
            .idempotent_result(&idledger_testkit::builders::steward(), &key)
            .await
            .unwrap(),
        None
    );
    // A refused command consumes no key.
    let refused = store
        .ledger
        .execute(&source("idp"), &command(c, "again", vec![Change::Register]))
        .await;
    assert!(refused.is_err());
    assert_eq!(log.idempotency("idp", "again").await.unwrap(), None);
    // Erasure removes the customer's records.
    erase(&store.ledger, c).await;
    assert_eq!(log.idempotency("idp", "reg").await.unwrap(), None);
    assert_eq!(
        store
            .ledger
            .idempotent_result(&source("idp"), &key)
            .await
            .unwrap(),
        None
    );
}

async fn data_keys_are_read_for_those_who_have_one(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    let customers: Vec<CustomerId> = (0..3).map(|_| new_customer()).collect();
    for c in &customers {
        run(&store.ledger, "idp", *c, vec![Change::Register]).await;
    }
    assert!(log.data_keys(&[]).await.unwrap().is_empty());
    let never = new_customer();
    assert_eq!(log.data_key(never.as_uuid()).await.unwrap(), None);
    let keys = log
        .data_keys(&[
            customers[2].as_uuid(),
            never.as_uuid(),
            customers[0].as_uuid(),
        ])
        .await
        .unwrap();
    let mut found: Vec<Uuid> = keys.iter().map(|(c, _)| *c).collect();
    found.sort();
    let mut expected = vec![customers[0].as_uuid(), customers[2].as_uuid()];
    expected.sort();
    assert_eq!(found, expected);
    for (c, wrapped) in &keys {
        assert_eq!(Some(wrapped), log.data_key(*c).await.unwrap().as_ref());
    }
    assert_ne!(keys[0].1, keys[1].1, "one key per customer");
    // The erased have none.
    erase(&store.ledger, customers[0]).await;
    let after = log.data_keys(&expected).await.unwrap();
    assert_eq!(
        after.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [customers[2].as_uuid()]
    );
    // More customers than one statement binds: the last one's key is found too.
    let mut many: Vec<Uuid> = (0..60_001).map(|_| Uuid::now_v7()).collect();
    many.push(customers[1].as_uuid());
    let found = log.data_keys(&many).await.unwrap();
    assert_eq!(
        found.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        [customers[1].as_uuid()]
    );
}

async fn erasures_are_the_erasure_events_of_the_erased(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    let (kept, erased, unknown) = (new_customer(), new_customer(), new_customer());
    two_commands(&store, kept).await;
    two_commands(&store, erased).await;
    let ids = [kept.as_uuid(), erased.as_uuid(), unknown.as_uuid()];
    assert!(log.erasures(&ids).await.unwrap().is_empty());
    erase(&store.ledger, erased).await;
    let erasures = log.erasures(&ids).await.unwrap();
    assert_eq!(erasures.len(), 1);
    let e = &erasures[0];
    assert_eq!(
        (
            e.customer_id,
            e.event_type.as_str(),
            e.stream_version,
            e.global_position
        ),
        (erased.as_uuid(), "customer_erased", 5, 9)
    );
    assert!(log.erasures(&[]).await.unwrap().is_empty());
    assert!(log.erasures(&[kept.as_uuid()]).await.unwrap().is_empty());
}

async fn projections_are_paged_by_customer(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    assert!(log.projection_page(None, 10).await.unwrap().is_empty());
    let mut customers: Vec<CustomerId> = (0..3).map(|_| new_customer()).collect();
    for c in &customers {
        two_commands(&store, *c).await;
    }
    customers.sort_by_key(|c| c.as_uuid());
    let mut expected: Vec<(Uuid, ProjectionRow)> = Vec::new();
    for c in &customers {
        let rows = log.projection_rows(c.as_uuid()).await.unwrap();
        assert!(rows.len() > 1, "{rows:?}");
        assert!(
            rows.windows(2)
                .all(|w| (&w[0].kind, &w[0].key) < (&w[1].kind, &w[1].key))
        );
        expected.extend(rows.into_iter().map(|r| (c.as_uuid(), r)));
    }
    assert_eq!(log.projection_page(None, 10).await.unwrap(), expected);
    // Two customers a page, whole customers only.
    let first = log.projection_page(None, 2).await.unwrap();
    let of = |page: &[(Uuid, ProjectionRow)]| {
        let mut ids: Vec<Uuid> = page.iter().map(|(c, _)| *c).collect();
        ids.dedup();
        ids
    };
    assert_eq!(of(&first), [customers[0].as_uuid(), customers[1].as_uuid()]);
    let rest = log
        .projection_page(Some(customers[1].as_uuid()), 2)
        .await
        .unwrap();
    assert_eq!(of(&rest), [customers[2].as_uuid()]);
    assert_eq!([first, rest].concat(), expected);
    assert!(
        log.projection_page(Some(customers[2].as_uuid()), 2)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn projections_are_replaced_only_at_the_expected_head(engine: Engine) {
    let store = TestStore::new(engine).await;
    let log = store.ledger.store().log();
    let (a, b) = (new_customer(), new_customer());
    two_commands(&store, a).await;
    two_commands(&store, b).await;
    let rows_a = log.projection_rows(a.as_uuid()).await.unwrap();
    let rows_b = log.projection_rows(b.as_uuid()).await.unwrap();
    let state_a = store.ledger.state(a).await.unwrap();
    assert!(state_a.is_some());
    let head = log.head_position().await.unwrap();
    let replacement = vec![(a.as_uuid(), rows_a[0].clone())];
    // The log moved on since the rows were computed: nothing changes.
    assert!(
        !log.replace_projections(&[a.as_uuid()], &replacement, head - 1)
            .await
            .unwrap()
    );
    assert_eq!(log.projection_rows(a.as_uuid()).await.unwrap(), rows_a);
    // At the head: a's rows are exactly the replacement, b's are untouched.
    assert!(
        log.replace_projections(&[a.as_uuid()], &replacement, head)
            .await
            .unwrap()
    );
    assert_eq!(
        log.projection_rows(a.as_uuid()).await.unwrap(),
        [rows_a[0].clone()]
    );
    assert_eq!(log.projection_rows(b.as_uuid()).await.unwrap(), rows_b);
    // No rows for a customer deletes theirs; the rebuild puts the record back.
    assert!(
        log.replace_projections(&[a.as_uuid()], &[], head)
            .await
            .unwrap()
    );
    assert!(log.projection_rows(a.as_uuid()).await.unwrap().is_empty());
    // Read by a process that does not hold the record it wrote (this one answers with it
    // while the stream is at its version).
    assert_eq!(store.another_ledger().await.state(a).await.unwrap(), None);
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(!report.identical);
    // The same rows, sealed anew: the same kinds and keys, the same record once opened.
    let rebuilt = log.projection_rows(a.as_uuid()).await.unwrap();
    let of = |rows: &[ProjectionRow]| {
        rows.iter()
            .map(|r| (r.kind.clone(), r.key.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&rebuilt), of(&rows_a));
    assert_eq!(store.ledger.state(a).await.unwrap(), state_a);
}
