//! Stream snapshots (issue 16) on both engines: written at every 100th event, sealed, used by
//! as-of reads with the same answer as the fold from scratch, never of a merged record,
//! deleted by erasure, ignored when of another fold version, and checked and repaired by
//! `rebuild`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{DateTime, Utc};
use idledger_domain::command::{Change, Principal};
use idledger_domain::ids::{Actor, CustomerId};
use idledger_domain::state::FOLD_VERSION;
use idledger_store::snapshots::SNAPSHOT_EVERY;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use support::*;

on_both_engines!(
    a_snapshot_is_written_at_every_hundredth_event_sealed_and_used_by_as_of,
    as_of_with_snapshots_equals_the_fold_from_scratch_on_random_streams,
    an_erased_customer_has_no_snapshots,
    a_merged_record_is_never_snapshotted,
    a_snapshot_of_another_fold_version_is_ignored_and_rebuild_replaces_it,
    rebuild_repairs_a_corrupted_a_missing_and_a_stray_snapshot,
);

/// The stored snapshots, `(customer as text, stream version, fold version)`, in order.
async fn stored(db: &TestDb) -> Vec<(String, i64, i64)> {
    match db.engine {
        Engine::Postgres => sqlx::query_as(
            "SELECT customer_id::text, stream_version, fold_version FROM stream_snapshots \
             ORDER BY customer_id, stream_version",
        )
        .fetch_all(&db.pg().await)
        .await
        .unwrap(),
        Engine::Sqlite => {
            let rows: Vec<(Vec<u8>, i64, i64)> = sqlx::query_as(
                "SELECT customer_id, stream_version, fold_version FROM stream_snapshots \
                 ORDER BY customer_id, stream_version",
            )
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap();
            rows.into_iter()
                .map(|(c, v, f)| (uuid::Uuid::from_slice(&c).unwrap().to_string(), v, f))
                .collect()
        }
    }
}

/// The versions of `customer`'s stored snapshots.
async fn versions(db: &TestDb, customer: CustomerId) -> Vec<i64> {
    stored(db)
        .await
        .into_iter()
        .filter(|(c, _, _)| *c == customer.to_string())
        .map(|(_, v, _)| v)
        .collect()
}

/// Runs a statement of the test's own on the database.
async fn run(db: &TestDb, statement: &str) {
    let statement = sqlx::AssertSqlSafe(statement.to_owned());
    match db.engine {
        Engine::Postgres => {
            sqlx::query(statement)
                .execute(&db.pg().await)
                .await
                .unwrap();
        }
        Engine::Sqlite => {
            sqlx::query(statement)
                .execute(&db.sqlite().await)
                .await
                .unwrap();
        }
    }
}

/// Every snapshot's sealed state, as stored.
async fn sealed_states(db: &TestDb) -> Vec<String> {
    match db.engine {
        Engine::Postgres => sqlx::query_scalar("SELECT state FROM stream_snapshots")
            .fetch_all(&db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar("SELECT state FROM stream_snapshots")
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap(),
    }
}

/// Registers a customer with a name.
async fn registered(store: &TestStore) -> CustomerId {
    let c = new_customer();
    store
        .ledger
        .execute(
            &source("idp"),
            &fresh_command(
                c,
                vec![
                    Change::Register,
                    set("name.given", json!("Ada")),
                    set("name.family", json!("Lovelace")),
                ],
            ),
        )
        .await
        .unwrap();
    c
}

/// Records preferences until `customer`'s stream holds `until` events, at most 40 a command.
async fn grow(store: &TestStore, customer: CustomerId, until: u64) {
    loop {
        let version = store
            .ledger
            .state(customer)
            .await
            .unwrap()
            .unwrap()
            .stream_version;
        if version >= until {
            return;
        }
        let changes = (version..until.min(version + 40))
            .map(|n| set(&format!("preferences.p{}", n % 7), json!(format!("v{n}"))))
            .collect();
        store
            .ledger
            .execute(&source("web_app"), &fresh_command(customer, changes))
            .await
            .unwrap();
    }
}

async fn a_snapshot_is_written_at_every_hundredth_event_sealed_and_used_by_as_of(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = registered(&store).await;
    grow(&store, c, 99).await;
    assert_eq!(versions(&store.db, c).await, Vec::<i64>::new());
    // One command crossing 100 (from 99 to 101): the snapshot is at 100 exactly.
    grow(&store, c, 101).await;
    assert_eq!(versions(&store.db, c).await, [100]);
    grow(&store, c, 250).await;
    assert_eq!(versions(&store.db, c).await, [100, 200]);
    assert!(
        stored(&store.db)
            .await
            .iter()
            .all(|(_, _, f)| *f == i64::from(FOLD_VERSION))
    );
    // Sealed: neither the name nor a preference is in the table (markers long enough that
    // base64 never spells them by chance).
    for state in sealed_states(&store.db).await {
        assert!(state.starts_with("snapshot:v1:"), "{state}");
        for plain in ["Lovelace", "preferences", "stream_version", "registered"] {
            assert!(!state.contains(plain), "{plain} in a snapshot");
        }
    }

    // As of every event's instant, and now: the same as folding from the first event.
    let events = store.ledger.stream(c, None, None).await.unwrap();
    let mut instants: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded_at).collect();
    instants.push(Utc::now());
    instants.dedup();
    for at in instants {
        let with = store.ledger.state_as_of(c, at).await.unwrap();
        let scratch = store.ledger.state_as_of_from_scratch(c, at).await.unwrap();
        assert_eq!(with, scratch, "as of {at}");
    }
    let now = store.ledger.state_as_of(c, Utc::now()).await.unwrap();
    assert_eq!(now, store.ledger.state(c).await.unwrap());

    // The snapshot is what the read starts from: a snapshot that does not open fails it.
    run(
        &store.db,
        "UPDATE stream_snapshots SET state = 'snapshot:v1:AAAA' WHERE stream_version = 200",
    )
    .await;
    assert!(store.ledger.state_as_of(c, Utc::now()).await.is_err());
    // Version 181 ends a command: the next one, which crossed 200, came later.
    let before_200 = events[180].recorded_at;
    assert_eq!(
        store.ledger.state_as_of(c, before_200).await.unwrap(),
        store
            .ledger
            .state_as_of_from_scratch(c, before_200)
            .await
            .unwrap()
    );
}

async fn as_of_with_snapshots_equals_the_fold_from_scratch_on_random_streams(engine: Engine) {
    let store = TestStore::new(engine).await;
    let mut rng = StdRng::seed_from_u64(16);
    for stream in 0..4 {
        let c = registered(&store).await;
        let length = rng.gen_range(120..360u64);
        let mut between = Vec::new();
        let mut n = 0u64;
        loop {
            let version = store.ledger.state(c).await.unwrap().unwrap().stream_version;
            if version >= length {
                break;
            }
            let changes: Vec<Change> = (0..rng.gen_range(1..45))
                .map(|_| {
                    n += 1;
                    match rng.gen_range(0..10) {
                        0 => grant("marketing", None),
                        1 => withdraw("marketing"),
                        2 => set("name.given", json!(format!("Ada{n}"))),
                        _ => set(
                            &format!("preferences.k{}", rng.gen_range(0..5)),
                            json!(format!("{stream}-{n}")),
                        ),
                    }
                })
                .collect();
            // A consent change needs its own source; a refused command records nothing.
            let by = if matches!(
                changes[0],
                Change::GrantConsent { .. } | Change::WithdrawConsent { .. }
            ) {
                "consent_portal"
            } else {
                "web_app"
            };
            let changes = changes
                .into_iter()
                .filter(|ch| {
                    (by == "consent_portal")
                        == matches!(
                            ch,
                            Change::GrantConsent { .. } | Change::WithdrawConsent { .. }
                        )
                })
                .collect();
            let _ = store
                .ledger
                .execute(&source(by), &fresh_command(c, changes))
                .await;
            if rng.gen_bool(0.2) {
                between.push(Utc::now());
            }
        }
        let events = store.ledger.stream(c, None, None).await.unwrap();
        let mut instants = between;
        for _ in 0..12 {
            instants.push(events[rng.gen_range(0..events.len())].recorded_at);
        }
        instants.push(events[0].recorded_at - chrono::Duration::milliseconds(1));
        let snapshots = versions(&store.db, c).await.len();
        assert_eq!(snapshots as u64, events.len() as u64 / SNAPSHOT_EVERY);
        for at in instants {
            assert_eq!(
                store.ledger.state_as_of(c, at).await.unwrap(),
                store.ledger.state_as_of_from_scratch(c, at).await.unwrap(),
                "stream {stream} as of {at}"
            );
        }
    }
}

async fn an_erased_customer_has_no_snapshots(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = registered(&store).await;
    let other = registered(&store).await;
    grow(&store, c, 210).await;
    grow(&store, other, 100).await;
    assert_eq!(versions(&store.db, c).await, [100, 200]);
    store
        .ledger
        .erase(c, &admin(), dpo(), "the subject asked")
        .await
        .unwrap();
    assert_eq!(versions(&store.db, c).await, Vec::<i64>::new());
    assert_eq!(versions(&store.db, other).await, [100]);
    assert!(matches!(
        store.ledger.state_as_of(c, Utc::now()).await,
        Err(idledger_store::StoreError::Erased { .. })
    ));
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.snapshots_repaired, 0, "{report:?}");
    assert_eq!(versions(&store.db, c).await, Vec::<i64>::new());
}

fn steward_actor() -> Actor {
    match steward() {
        Principal::Steward(actor) => actor,
        other => panic!("{other:?}"),
    }
}

async fn a_merged_record_is_never_snapshotted(engine: Engine) {
    let store = TestStore::new(engine).await;
    let survivor = registered(&store).await;
    let absorbed = registered(&store).await;
    grow(&store, survivor, 60).await;
    grow(&store, absorbed, 30).await;
    store
        .ledger
        .merge(survivor, absorbed, &steward_actor(), "same person", None)
        .await
        .unwrap();
    // Past 100 and 200 while merged: the survivor's state holds the absorbed record's data.
    grow(&store, survivor, 230).await;
    assert_eq!(versions(&store.db, survivor).await, Vec::<i64>::new());
    assert_eq!(versions(&store.db, absorbed).await, Vec::<i64>::new());
    let merged_at = Utc::now();
    store
        .ledger
        .unmerge(survivor, absorbed, &steward_actor(), "two people")
        .await
        .unwrap();
    assert_eq!(versions(&store.db, survivor).await, Vec::<i64>::new());
    // Apart again: the next hundred is snapshotted.
    grow(&store, survivor, 310).await;
    assert_eq!(versions(&store.db, survivor).await, [300]);
    for at in [merged_at, Utc::now()] {
        assert_eq!(
            store.ledger.state_as_of(survivor, at).await.unwrap(),
            store
                .ledger
                .state_as_of_from_scratch(survivor, at)
                .await
                .unwrap()
        );
    }
    // Rebuild agrees: no snapshot is due while merged.
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.snapshots_repaired, 0, "{report:?}");
}

async fn a_snapshot_of_another_fold_version_is_ignored_and_rebuild_replaces_it(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = registered(&store).await;
    grow(&store, c, 150).await;
    run(&store.db, "UPDATE stream_snapshots SET fold_version = 999").await;
    // Of another fold, and not even this customer's at this version: never opened.
    run(
        &store.db,
        "UPDATE stream_snapshots SET state = 'snapshot:v1:AAAA'",
    )
    .await;
    let now = Utc::now();
    assert_eq!(
        store.ledger.state_as_of(c, now).await.unwrap(),
        store.ledger.state_as_of_from_scratch(c, now).await.unwrap()
    );
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.snapshots_repaired, 1, "{report:?}");
    assert_eq!(
        stored(&store.db).await,
        [(c.to_string(), 100, i64::from(FOLD_VERSION))]
    );
    assert_eq!(
        store.ledger.state_as_of(c, now).await.unwrap(),
        store.ledger.state_as_of_from_scratch(c, now).await.unwrap()
    );
    let again = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(again.snapshots_repaired, 0, "{again:?}");
}

async fn rebuild_repairs_a_corrupted_a_missing_and_a_stray_snapshot(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = registered(&store).await;
    grow(&store, c, 330).await;
    assert_eq!(versions(&store.db, c).await, [100, 200, 300]);
    // 100 holds 200's state (it does not open as 100), 300 is gone, and a snapshot at 150
    // that no fold gives.
    run(
        &store.db,
        "UPDATE stream_snapshots SET state = (SELECT s.state FROM stream_snapshots s \
         WHERE s.stream_version = 200) WHERE stream_version = 100",
    )
    .await;
    run(
        &store.db,
        "INSERT INTO stream_snapshots (customer_id, stream_version, fold_version, covers_until, state) \
         SELECT customer_id, 150, fold_version, covers_until, state FROM stream_snapshots \
         WHERE stream_version = 200",
    )
    .await;
    run(
        &store.db,
        "DELETE FROM stream_snapshots WHERE stream_version = 300",
    )
    .await;
    // Another customer's, untouched.
    let d = registered(&store).await;
    grow(&store, d, 120).await;
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.snapshots_repaired, 3, "{report:?}");
    assert_eq!(versions(&store.db, c).await, [100, 200, 300]);
    assert_eq!(versions(&store.db, d).await, [100]);
    let events = store.ledger.stream(c, None, None).await.unwrap();
    for at in [events[150].recorded_at, events[320].recorded_at, Utc::now()] {
        assert_eq!(
            store.ledger.state_as_of(c, at).await.unwrap(),
            store.ledger.state_as_of_from_scratch(c, at).await.unwrap()
        );
    }
    let again = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(again.snapshots_repaired, 0, "{again:?}");
}
