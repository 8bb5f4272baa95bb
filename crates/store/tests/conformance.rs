//! One conformance suite for the ledger, run on both engines: PostgreSQL (a real server) and
//! SQLite.
//!
//! Covers every public method of `Ledger`:
//! - [x] `new`, `store`, `policy` (every test; `policy` in `history_and_record_as_of_an_instant`)
//! - [x] `execute`: idempotency, races, refusals, erased records
//! - [x] `erase`: the erasure tests (on SQLite also the raw files, WAL included:
//!   `sqlite_files_keep_no_plaintext_of_an_erased_customer`)
//! - [x] `state`, `state_as_of`, `history`, `stream`: `history_and_record_as_of_an_instant`,
//!   the erasure tests
//! - [x] `read_all`, `read_raw`: `tail_reader_sees_every_committed_event_once_in_order`,
//!   `read_all_returns_every_position_of_an_erased_customer_without_personal_data` (and
//!   `read_raw` in log.rs)
//! - [x] `head_position`, `verify`, `rebuild`
//! - [x] `idempotent_result`: log.rs (`idempotency_records_are_kept_per_source_and_key`)
//! - [x] `expire`, `expire_idempotency`: crates/app/tests/retention.rs, through
//!   `App::retention_run` (both engines, racing runs and commands included)
//!
//! and, under it, `EventLog::write_batch` (`concurrent_appends_at_the_same_version_exactly_one_wins`);
//! the rest of `EventLog` and `Store` is in log.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use idledger_domain::command::{Change, Refusal};
use idledger_domain::decide::Outcome;
use idledger_domain::event::EventPayload;
use idledger_domain::ids::CustomerId;
use idledger_domain::policy::ADMIN_SOURCE;
use idledger_domain::state::{CustomerState, Erasure};
use idledger_store::model::{
    AppendOutcome, AppendRequest, IdempotencyRecord, PreparedEvent, ProjectionDiff,
};
use idledger_store::{ExecuteError, LogEntry, StoreError};
use serde_json::json;
use support::*;

on_both_engines!(
    a_record_kept_by_one_process_yields_to_another_processs_writes,
    a_read_where_the_record_is_kept_shows_another_processs_writes,
    concurrent_appends_at_the_same_version_exactly_one_wins,
    concurrent_registrations_through_separate_ledgers_one_wins,
    idempotent_retry_returns_the_first_result,
    idempotency_key_reuse_with_another_body_is_a_conflict,
    concurrent_duplicates_are_recorded_once,
    tail_reader_sees_every_committed_event_once_in_order,
    altering_any_stored_byte_is_detected_at_that_event,
    removed_events_are_detected,
    rebuilt_projection_equals_the_live_one,
    no_plaintext_personal_data_in_the_events_table,
    no_plaintext_personal_data_in_the_projection,
    a_sealed_record_read_in_another_row_is_an_integrity_error,
    rows_from_before_sealing_are_read_and_sealed_by_a_write,
    rows_from_before_sealing_are_sealed_by_rebuild,
    an_erasure_racing_readers_and_writers_happens_and_no_key_stays_cached,
    another_process_drops_an_erased_customers_key_and_reads_them_as_erased,
    history_and_record_as_of_an_instant,
    a_long_history_is_read_whole_and_in_order_and_a_damaged_event_in_it_is_reported,
    refused_commands_write_nothing,
    erasure_leaves_the_registration_and_nothing_else,
    an_erased_customers_past_reads_as_erased_whatever_the_filter,
    every_command_on_an_erased_record_is_refused_and_writes_nothing,
    erasure_destroys_the_data_key_of_the_erased_only,
    the_log_verifies_and_rebuilds_identically_over_an_erasure,
    tampering_with_the_clear_erasure_payload_is_detected,
    no_plaintext_of_an_erased_customer_anywhere,
    read_all_returns_every_position_of_an_erased_customer_without_personal_data,
    erasure_happens_once_and_only_to_a_registered_customer,
    states_read_together_are_each_as_read_alone,
);

/// payload, event_type, field, hash
type EventColumns = (Vec<u8>, String, Option<String>, Vec<u8>);

fn bogus_append(customer: uuid::Uuid, key: &str, expected_version: u64) -> AppendRequest {
    AppendRequest {
        customer_id: customer,
        expected_version,
        events: vec![PreparedEvent {
            event_id: uuid::Uuid::now_v7(),
            stream_version: expected_version + 1,
            event_type: "customer_registered".to_owned(),
            schema_version: 1,
            field: None,
            recorded_at_micros: 0,
            payload: vec![1, 2, 3],
            key_owner: None,
        }],
        new_data_key: None,
        idempotency: Some(IdempotencyRecord {
            source: "test".to_owned(),
            key: key.to_owned(),
            request_hash: vec![0],
            result: "{}".to_owned(),
        }),
        projection: ProjectionDiff::default(),
        erase: false,
        exception: None,
        lookup: None,
        snapshots: Vec::new(),
        drop_snapshots_since: None,
    }
}

async fn concurrent_appends_at_the_same_version_exactly_one_wins(engine: Engine) {
    let db = TestDb::new(engine).await;
    let customer = uuid::Uuid::now_v7();
    // Separate backends (pools) so the appends race as separate transactions.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let backend = db.store().await.log();
        tasks.push(tokio::spawn(async move {
            backend
                .write_batch(&[bogus_append(customer, &format!("k{i}"), 0)])
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.extend(t.await.unwrap().into_iter().map(Result::unwrap));
    }
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Appended { .. }))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| **o == AppendOutcome::VersionConflict)
        .count();
    assert_eq!((won, lost), (1, 7), "{outcomes:?}");
    // The same inside one batch: the first wins, the rest conflict, none fails the others.
    let other = uuid::Uuid::now_v7();
    let batch: Vec<_> = (0..4)
        .map(|i| bogus_append(other, &format!("b{i}"), 0))
        .collect();
    let results = db.store().await.log().write_batch(&batch).await.unwrap();
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    assert!(matches!(results[0], AppendOutcome::Appended { .. }));
    assert!(
        results[1..]
            .iter()
            .all(|o| *o == AppendOutcome::VersionConflict)
    );
    assert_eq!(db.store().await.log().head_position().await.unwrap(), 2);
}

async fn concurrent_registrations_through_separate_ledgers_one_wins(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = new_customer();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let ledger = store.another_ledger().await;
        tasks.push(tokio::spawn(async move {
            ledger
                .execute(
                    &source("idp"),
                    &command(customer, &format!("reg-{i}"), vec![Change::Register]),
                )
                .await
        }));
    }
    let mut registered = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => {
                assert_eq!(e.result.outcomes, [Outcome::Registered]);
                registered += 1;
            }
            Err(ExecuteError::Refused(r)) => assert_eq!(r.refusal.code(), "already_registered"),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(registered, 1);
    let stream = store.ledger.stream(customer, None, None).await.unwrap();
    assert_eq!(stream.len(), 1);
}

async fn idempotent_retry_returns_the_first_result(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = new_customer();
    let cmd = command(
        customer,
        "register-1",
        vec![Change::Register, set("name.given", json!("Ada"))],
    );
    let first = store.ledger.execute(&source("idp"), &cmd).await.unwrap();
    assert!(!first.replayed);
    let again = store.ledger.execute(&source("idp"), &cmd).await.unwrap();
    assert!(again.replayed);
    assert_eq!(again.result, first.result);
    assert_eq!(store.ledger.head_position().await.unwrap(), 2);
    // The same key from another source is another request.
    let other = command(
        customer,
        "register-1",
        vec![set("name.family", json!("Lovelace"))],
    );
    let e = store.ledger.execute(&source("idp"), &other).await;
    assert!(
        matches!(e, Err(ExecuteError::IdempotencyConflict { .. })),
        "{e:?}"
    );
    let r = store
        .ledger
        .execute(
            &source("web_app"),
            &command(
                customer,
                "register-1",
                vec![set(
                    "postal_address",
                    json!({"lines": ["1 Main St"], "locality": "Leeds", "country": "GB"}),
                )],
            ),
        )
        .await
        .unwrap();
    assert!(!r.replayed);
    // A no-op is remembered too: its retry replays it.
    let noop = command(customer, "noop-1", vec![set("name.given", json!("Ada"))]);
    let first = store.ledger.execute(&source("idp"), &noop).await.unwrap();
    assert!(first.result.events.is_empty());
    assert!(
        store
            .ledger
            .execute(&source("idp"), &noop)
            .await
            .unwrap()
            .replayed
    );
}

async fn idempotency_key_reuse_with_another_body_is_a_conflict(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = new_customer();
    store
        .ledger
        .execute(
            &source("idp"),
            &command(customer, "k", vec![Change::Register]),
        )
        .await
        .unwrap();
    let other_body = command(customer, "k", vec![set("name.given", json!("Grace"))]);
    match store.ledger.execute(&source("idp"), &other_body).await {
        Err(ExecuteError::IdempotencyConflict { key, source_id }) => {
            assert_eq!((key.as_str(), source_id.as_str()), ("k", "idp"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.ledger.head_position().await.unwrap(), 1);
}

async fn concurrent_duplicates_are_recorded_once(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = new_customer();
    let cmd = command(
        customer,
        "dup",
        vec![Change::Register, set("name.given", json!("Ada"))],
    );
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let ledger = store.another_ledger().await;
        let cmd = cmd.clone();
        tasks.push(tokio::spawn(async move {
            ledger.execute(&source("idp"), &cmd).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(results.iter().filter(|r| !r.replayed).count(), 1);
    assert!(results.windows(2).all(|w| w[0].result == w[1].result));
    assert_eq!(store.ledger.head_position().await.unwrap(), 2);
}

/// Appends events inside a transaction that then rolls back, as a writer that crashed
/// mid-transaction would: takes the same lock as real appends, writes, waits, rolls back.
async fn rolled_back_writer(db: &TestDb, stop: Arc<AtomicBool>) -> u32 {
    let mut rollbacks = 0;
    while !stop.load(Ordering::Relaxed) {
        let customer = uuid::Uuid::now_v7();
        match db.engine {
            Engine::Postgres => {
                let pg = db.pg().await;
                let mut tx = pg.begin().await.unwrap();
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(idledger_store::sql::LOG_LOCK)
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query(
                    "INSERT INTO events (global_position, event_id, customer_id, stream_version, event_type, schema_version, recorded_at, payload, hash) \
                     SELECT COALESCE(MAX(global_position), 0) + 1, $1, $2, 1, 'customer_registered', 1, now(), '\\x00', '\\x00' FROM events",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(customer)
                .execute(&mut *tx)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                tx.rollback().await.unwrap();
            }
            Engine::Sqlite => {
                let lite = db.sqlite().await;
                let mut tx = lite.begin_with("BEGIN IMMEDIATE").await.unwrap();
                sqlx::query(
                    "INSERT INTO events (global_position, event_id, customer_id, stream_version, event_type, schema_version, recorded_at, payload, hash) \
                     SELECT COALESCE(MAX(global_position), 0) + 1, ?1, ?2, 1, 'customer_registered', 1, 0, x'00', x'00' FROM events",
                )
                .bind(uuid::Uuid::now_v7())
                .bind(customer)
                .execute(&mut *tx)
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(3)).await;
                tx.rollback().await.unwrap();
            }
        }
        rollbacks += 1;
    }
    rollbacks
}

async fn tail_reader_sees_every_committed_event_once_in_order(engine: Engine) {
    let store = Arc::new(TestStore::new(engine).await);
    let stop = Arc::new(AtomicBool::new(false));
    let done_writing = Arc::new(AtomicBool::new(false));

    let reader = {
        let ledger = store.another_ledger().await;
        let done = done_writing.clone();
        tokio::spawn(async move {
            let mut seen: Vec<(u64, uuid::Uuid)> = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let page = ledger.read_all(after, 50).await.unwrap();
                for e in &page {
                    assert_eq!(
                        e.global_position(),
                        after + 1,
                        "the reader skipped or repeated a position"
                    );
                    after = e.global_position();
                    seen.push((e.global_position(), e.event_id().as_uuid()));
                }
                if page.is_empty() {
                    if finished {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            seen
        })
    };
    let rollbacks = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move { rolled_back_writer(&store.db, stop).await })
    };
    let mut writers = Vec::new();
    for w in 0..4 {
        let ledger = store.another_ledger().await;
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for c in 0..10 {
                let customer = new_customer();
                let r = ledger
                    .execute(
                        &source("idp"),
                        &command(
                            customer,
                            &format!("w{w}-c{c}-reg"),
                            vec![Change::Register, set("name.given", json!("Ada"))],
                        ),
                    )
                    .await
                    .unwrap();
                ids.extend(r.result.events.iter().map(|e| e.id.as_uuid()));
                for n in 0..3 {
                    let r = ledger
                        .execute(
                            &source("idp"),
                            &command(
                                customer,
                                &format!("w{w}-c{c}-{n}"),
                                vec![set("name.family", json!(format!("Family{n}")))],
                            ),
                        )
                        .await
                        .unwrap();
                    ids.extend(r.result.events.iter().map(|e| e.id.as_uuid()));
                }
            }
            ids
        }));
    }
    let mut committed = BTreeSet::new();
    for w in writers {
        committed.extend(w.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let rollbacks = rollbacks.await.unwrap();
    done_writing.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();
    assert!(rollbacks > 0, "the rolled-back writer never ran");
    let seen_ids: BTreeSet<uuid::Uuid> = seen.iter().map(|(_, id)| *id).collect();
    assert_eq!(seen_ids.len(), seen.len(), "an event was delivered twice");
    assert_eq!(
        seen_ids, committed,
        "the reader saw something other than exactly the committed events"
    );
    assert_eq!(committed.len(), 4 * 10 * 5);
}

async fn write_sample(store: &TestStore) -> Vec<CustomerId> {
    let mut customers = Vec::new();
    for i in 0..3 {
        let c = new_customer();
        store
            .ledger
            .execute(
                &source("idp"),
                &command(
                    c,
                    &format!("s{i}"),
                    vec![
                        Change::Register,
                        set("email", json!(format!("ada{i}@example.org"))),
                        set("name.given", json!("Augusta")),
                    ],
                ),
            )
            .await
            .unwrap();
        store
            .ledger
            .execute(
                &source("crm"),
                &command(c, &format!("p{i}"), vec![set("name.given", json!("Ada"))]),
            )
            .await
            .unwrap();
        customers.push(c);
    }
    customers
}

async fn altering_any_stored_byte_is_detected_at_that_event(engine: Engine) {
    let store = TestStore::new(engine).await;
    write_sample(&store).await;
    let report = store.ledger.verify(&|_, _| {}).await.unwrap();
    assert_eq!(
        (report.events, report.streams, report.first_broken.clone()),
        (12, 3, None)
    );
    let (unlock, hexbyte) = match engine {
        Engine::Postgres => (
            "ALTER TABLE events DISABLE TRIGGER events_append_only;",
            "'\\x00'::bytea",
        ),
        Engine::Sqlite => ("DROP TRIGGER events_no_update;", "x'00'"),
    };
    store.db.exec(unlock).await;
    let payload_flip = match engine {
        Engine::Postgres => "UPDATE events SET payload = set_byte(payload, 30, get_byte(payload, 30) # 1) WHERE global_position = 7".to_owned(),
        Engine::Sqlite => "UPDATE events SET payload = substr(payload, 1, 30) || CASE WHEN substr(payload, 31, 1) = x'ff' THEN x'00' ELSE x'ff' END || substr(payload, 32) WHERE global_position = 7".to_owned(),
    };
    let recorded_at = match engine {
        Engine::Postgres => {
            "UPDATE events SET recorded_at = recorded_at + interval '1 microsecond' WHERE global_position = 5"
        }
        Engine::Sqlite => {
            "UPDATE events SET recorded_at = recorded_at + 1 WHERE global_position = 5"
        }
    };
    let tampers = [
        (payload_flip, 7u64),
        (
            "UPDATE events SET field = 'name.family' WHERE global_position = 6".to_owned(),
            6,
        ),
        (recorded_at.to_owned(), 5),
        (
            "UPDATE events SET event_type = 'field_cleared' WHERE global_position = 3".to_owned(),
            3,
        ),
        (
            format!("UPDATE events SET hash = {hexbyte} WHERE global_position = 2"),
            2,
        ),
    ];
    for (sql, position) in tampers {
        store.db.exec(&sql).await;
        let report = store.ledger.verify(&|_, _| {}).await.unwrap();
        let broken = report.first_broken.expect("tampering went unnoticed");
        assert_eq!(broken.global_position, position, "{sql}: {}", broken.reason);
    }
}

async fn removed_events_are_detected(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customers = write_sample(&store).await;
    let unlock = match engine {
        Engine::Postgres => "ALTER TABLE events DISABLE TRIGGER events_append_only;",
        Engine::Sqlite => "DROP TRIGGER events_no_delete;",
    };
    store.db.exec(unlock).await;
    // The last event of the last stream: no chain breaks, but the record remembers its length.
    store
        .db
        .exec("DELETE FROM events WHERE global_position = 12")
        .await;
    let broken = store
        .ledger
        .verify(&|_, _| {})
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(
        broken.customer_id,
        customers[2].as_uuid(),
        "{}",
        broken.reason
    );
    assert!(broken.reason.contains("removed"), "{}", broken.reason);
    // One in the middle of the log.
    store
        .db
        .exec("DELETE FROM events WHERE global_position = 4")
        .await;
    let broken = store
        .ledger
        .verify(&|_, _| {})
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(broken.global_position, 5, "{}", broken.reason);
}

async fn rebuilt_projection_equals_the_live_one(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customers = write_sample(&store).await;
    let c = customers[0];
    let consent = Change::GrantConsent {
        purpose: idledger_domain::ids::Purpose::parse("marketing").unwrap(),
        basis: idledger_domain::values::LegalBasis::Consent,
        notice: idledger_domain::values::NoticeRef::new("pn", "3", &"ab".repeat(32)).unwrap(),
        channel: idledger_domain::values::ConsentChannel::Web,
        jurisdiction: idledger_domain::values::Jurisdiction::parse("DE").unwrap(),
        expires_at: None,
    };
    store
        .ledger
        .execute(
            &source("consent_portal"),
            &command(c, "consent", vec![consent]),
        )
        .await
        .unwrap();
    let change = request_change("email", json!("new@example.org"));
    store
        .ledger
        .execute(&source("web_app"), &command(c, "req", vec![change]))
        .await
        .unwrap();
    let state = store.ledger.state(c).await.unwrap().unwrap();
    let proposal = *state.proposals.keys().next().unwrap();
    store
        .ledger
        .execute(
            &idledger_testkit::builders::approved_steward(),
            &command(
                c,
                "accept",
                vec![Change::AcceptProposal {
                    proposal_id: proposal,
                }],
            ),
        )
        .await
        .unwrap();
    let before = store.ledger.state(c).await.unwrap().unwrap();
    let stored = raw_projections(&store.db).await;

    // Compared opened, the rows are what the log gives: nothing is rewritten, so the sealed
    // rows stay byte for byte (a rewrite would draw new nonces).
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!((report.differing_count, report.resealed_count), (0, 0));
    assert_eq!((report.events, report.customers), (16, 3));
    assert_eq!(store.ledger.state(c).await.unwrap().unwrap(), before);
    assert_eq!(raw_projections(&store.db).await, stored);

    // A damaged projection row is reported and repaired.
    store
        .db
        .exec("UPDATE projections SET record = '{}' WHERE kind = 'field' AND key = 'name.given'")
        .await;
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(!report.identical);
    assert_eq!(report.differing_count, 3);
    assert!(store.ledger.rebuild(&|_, _| {}).await.unwrap().identical);
    assert_eq!(store.ledger.state(c).await.unwrap().unwrap(), before);
    assert_sealed(&raw_projections(&store.db).await, &["ada@example.org"]);
}

async fn no_plaintext_personal_data_in_the_events_table(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    let secrets = [
        ("email", "augusta.king@example.org"),
        ("name.family", "Lovelace-Byron"),
        ("phone", "+442079460958"),
    ];
    let mut changes = vec![Change::Register];
    changes.extend(secrets.iter().map(|(f, v)| set(f, json!(v))));
    changes.push(set(
        "postal_address",
        json!({"lines": ["12 St James Square"], "locality": "Marylebone", "country": "GB"}),
    ));
    store
        .ledger
        .execute(&source("idp"), &command(c, "pii", changes[..4].to_vec()))
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("web_app"),
            &command(c, "addr", changes[4..].to_vec()),
        )
        .await
        .unwrap();
    let dump: Vec<u8> = match engine {
        Engine::Postgres => {
            let rows: Vec<String> = sqlx::query_scalar("SELECT e::text FROM events e")
                .fetch_all(&store.db.pg().await)
                .await
                .unwrap();
            let raw: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM events")
                .fetch_all(&store.db.pg().await)
                .await
                .unwrap();
            rows.join("\n")
                .into_bytes()
                .into_iter()
                .chain(raw.concat())
                .collect()
        }
        Engine::Sqlite => {
            let lite = store.db.sqlite().await;
            let rows: Vec<EventColumns> =
                sqlx::query_as("SELECT payload, event_type, field, hash FROM events")
                    .fetch_all(&lite)
                    .await
                    .unwrap();
            rows.into_iter()
                .flat_map(|(p, t, f, h)| {
                    [p, t.into_bytes(), f.unwrap_or_default().into_bytes(), h].concat()
                })
                .collect()
        }
    };
    assert!(dump.len() > 500, "the dump is suspiciously small");
    let text = String::from_utf8_lossy(&dump).to_lowercase();
    for needle in [
        "augusta",
        "lovelace",
        "2079460958",
        "james square",
        "marylebone",
    ] {
        assert!(
            !text.contains(needle),
            "plaintext '{needle}' found in the events table"
        );
    }
    // …while the ledger reads them back.
    let history = store.ledger.history(c, &field("email")).await.unwrap();
    let idledger_domain::event::EventPayload::FieldSet { value, .. } =
        &history[0].envelope.event.payload
    else {
        panic!("expected field_set")
    };
    assert_eq!(value.to_json(), json!("augusta.king@example.org"));
}

async fn history_and_record_as_of_an_instant(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    store
        .ledger
        .execute(
            &source("idp"),
            &command(
                c,
                "1",
                vec![Change::Register, set("name.given", json!("Ada"))],
            ),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(15)).await;
    let between = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(15)).await;
    store
        .ledger
        .execute(
            &source("idp"),
            &command(c, "2", vec![set("name.given", json!("Augusta"))]),
        )
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("crm"),
            &command(c, "3", vec![set("name.given", json!("Countess"))]),
        )
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("idp"),
            &command(c, "4", vec![set("name.family", json!("King"))]),
        )
        .await
        .unwrap();

    let history = store.ledger.history(c, &field("name.given")).await.unwrap();
    let types: Vec<&str> = history
        .iter()
        .map(|e| e.envelope.event.payload.type_name())
        .collect();
    assert_eq!(types, ["field_set", "field_set", "value_proposed"]);
    assert!(
        history
            .windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let prov = &history[2].envelope.event.provenance;
    assert_eq!(
        (prov.source.as_str(), prov.idempotency_key.as_str()),
        ("crm", "3")
    );
    assert_eq!(
        history[0].envelope.event.policy_version,
        *store.ledger.policy().version()
    );

    let then = store.ledger.state_as_of(c, between).await.unwrap().unwrap();
    assert_eq!(
        then.value(&field("name.given")).unwrap().to_json(),
        json!("Ada")
    );
    assert!(then.value(&field("name.family")).is_none());
    let now = store.ledger.state(c).await.unwrap().unwrap();
    assert_eq!(
        now.value(&field("name.given")).unwrap().to_json(),
        json!("Augusta")
    );
    assert_eq!(now.stream_version, 5);
    let before_anything = between - chrono::Duration::days(1);
    assert!(
        store
            .ledger
            .state_as_of(c, before_anything)
            .await
            .unwrap()
            .is_none()
    );
    // The projection holds what the log folds to.
    let folded = store
        .ledger
        .state_as_of(c, chrono::Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(folded, now);
}

/// Long enough that its events are opened in parts on several threads.
async fn a_long_history_is_read_whole_and_in_order_and_a_damaged_event_in_it_is_reported(
    engine: Engine,
) {
    const EVENTS: usize = 300;
    let store = TestStore::new(engine).await;
    let c = new_customer();
    for i in 0..EVENTS {
        let mut changes = vec![set("name.given", json!(format!("Name {i}")))];
        if i == 0 {
            changes.insert(0, Change::Register);
        }
        store
            .ledger
            .execute(&source("idp"), &command(c, &format!("long-{i}"), changes))
            .await
            .unwrap();
    }
    let history = store.ledger.history(c, &field("name.given")).await.unwrap();
    let values: Vec<serde_json::Value> = history
        .iter()
        .map(|e| e.envelope.event.payload.value().unwrap().to_json())
        .collect();
    let expected: Vec<serde_json::Value> =
        (0..EVENTS).map(|i| json!(format!("Name {i}"))).collect();
    assert!(
        values == expected,
        "the history is not the 300 values in order"
    );
    assert!(
        history
            .windows(2)
            .all(|w| w[0].envelope.stream_version + 1 == w[1].envelope.stream_version)
    );

    // A damaged event late in the stream, opened by another part than the first.
    let damaged = history[EVENTS - 20].global_position;
    let (unlock, flip) = match engine {
        Engine::Postgres => (
            "ALTER TABLE events DISABLE TRIGGER events_append_only;",
            format!(
                "UPDATE events SET payload = set_byte(payload, 30, get_byte(payload, 30) # 1) WHERE global_position = {damaged}"
            ),
        ),
        Engine::Sqlite => (
            "DROP TRIGGER events_no_update;",
            format!(
                "UPDATE events SET payload = substr(payload, 1, 30) || CASE WHEN substr(payload, 31, 1) = x'ff' THEN x'00' ELSE x'ff' END || substr(payload, 32) WHERE global_position = {damaged}"
            ),
        ),
    };
    store.db.exec(unlock).await;
    store.db.exec(&flip).await;
    assert_integrity(
        store.ledger.history(c, &field("name.given")).await,
        "a damaged event in a long history",
    );
}

async fn refused_commands_write_nothing(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    let refused = store
        .ledger
        .execute(
            &source("crm"),
            &command(c, "x", vec![set("name.given", json!("Ada"))]),
        )
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::Refused(ref r)) if r.refusal.code() == "not_registered"),
        "{refused:?}"
    );
    store
        .ledger
        .execute(&source("idp"), &command(c, "reg", vec![Change::Register]))
        .await
        .unwrap();
    let partly_bad = command(
        c,
        "y",
        vec![
            set("name.given", json!("Ada")),
            set("email", json!("a@example.org")),
            set("locale", json!("en")),
        ],
    );
    let mut no_evidence = partly_bad.clone();
    no_evidence.provenance.evidence = None;
    let r = store.ledger.execute(&source("idp"), &no_evidence).await;
    assert!(
        matches!(r, Err(ExecuteError::Refused(ref r)) if r.change_index == Some(1)),
        "{r:?}"
    );
    assert_eq!(store.ledger.head_position().await.unwrap(), 1);
    let state = store.ledger.state(c).await.unwrap().unwrap();
    assert!(state.fields.is_empty());
    // A refusal is not remembered: the corrected command may reuse the key.
    let mut fixed = no_evidence.clone();
    fixed.changes.truncate(1);
    store.ledger.execute(&source("idp"), &fixed).await.unwrap();
    let rows: BTreeMap<String, u64> = store
        .ledger
        .state(c)
        .await
        .unwrap()
        .unwrap()
        .fields
        .iter()
        .map(|(f, r)| (f.to_string(), r.version))
        .collect();
    assert_eq!(rows, BTreeMap::from([("name.given".to_owned(), 1)]));
}

// ---- erasure ----

/// Gives `c` a consent, a pending email change and (through `write_sample`) a proposal.
async fn fill_in(store: &TestStore, c: CustomerId, tag: &str) {
    store
        .ledger
        .execute(
            &source("consent_portal"),
            &command(c, &format!("consent-{tag}"), vec![grant("marketing", None)]),
        )
        .await
        .unwrap();
    let change = request_change("email", json!(format!("pending.{tag}@example.org")));
    store
        .ledger
        .execute(
            &source("web_app"),
            &command(c, &format!("req-{tag}"), vec![change]),
        )
        .await
        .unwrap();
}

#[track_caller]
fn assert_erased<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    customer: CustomerId,
    at: chrono::DateTime<chrono::Utc>,
) {
    match result {
        Err(StoreError::Erased { customer: c, at: a }) => {
            assert_eq!((c, a), (customer.as_uuid(), at));
        }
        other => panic!("expected StoreError::Erased, got {other:?}"),
    }
}

#[track_caller]
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ExecuteError>, refusal: &Refusal) {
    match result {
        Err(ExecuteError::Refused(r)) => assert_eq!(&r.refusal, refusal),
        other => panic!("expected the refusal {refusal:?}, got {other:?}"),
    }
}

/// Three customers (see `write_sample`); the second, given a consent, a pending change and a
/// proposal, then erased by an administrator.
struct ErasedSample {
    store: TestStore,
    customers: Vec<CustomerId>,
    /// The erased customer.
    c: CustomerId,
    /// Their record just before the erasure.
    before: idledger_domain::CustomerState,
    /// The other two customers' records just before the erasure.
    others_before: [Option<idledger_domain::CustomerState>; 2],
    erasure: Erasure,
}

async fn erased_sample(engine: Engine) -> ErasedSample {
    let store = TestStore::new(engine).await;
    let customers = write_sample(&store).await;
    let c = customers[1];
    fill_in(&store, c, "c").await;
    let before = store.ledger.state(c).await.unwrap().unwrap();
    assert!(!before.fields.is_empty() && !before.consents.is_empty());
    assert_eq!(before.proposals.len(), 1);
    let others_before = [
        store.ledger.state(customers[0]).await.unwrap(),
        store.ledger.state(customers[2]).await.unwrap(),
    ];

    let erasure = store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request #42")
        .await
        .unwrap();
    assert_eq!(
        (erasure.source.as_str(), erasure.reason.as_str()),
        (ADMIN_SOURCE, "subject's request #42")
    );

    ErasedSample {
        store,
        customers,
        c,
        before,
        others_before,
        erasure,
    }
}

async fn erasure_leaves_the_registration_and_nothing_else(engine: Engine) {
    let ErasedSample {
        store,
        c,
        before,
        erasure,
        ..
    } = erased_sample(engine).await;
    // The record: registered and erased, with nothing else left.
    let state = store.ledger.state(c).await.unwrap().unwrap();
    assert_eq!(state.erased.as_ref(), Some(&erasure));
    assert!(state.registered);
    assert_eq!(state.registered_at, before.registered_at);
    assert_eq!(state.stream_version, before.stream_version + 1);
    assert!(state.fields.is_empty() && state.consents.is_empty() && state.proposals.is_empty());
    let rows = store
        .ledger
        .store()
        .log()
        .projection_rows(c.as_uuid())
        .await
        .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["customer"],
        "projection rows of the erased customer remain"
    );
}

async fn an_erased_customers_past_reads_as_erased_whatever_the_filter(engine: Engine) {
    let ErasedSample {
        store,
        customers,
        c,
        erasure,
        ..
    } = erased_sample(engine).await;
    let at = erasure.at;
    // Its past cannot be read any more, whatever the filter.
    assert_erased(store.ledger.history(c, &field("email")).await, c, at);
    assert_erased(store.ledger.history(c, &field("phone")).await, c, at);
    assert_erased(store.ledger.stream(c, None, None).await, c, at);
    assert_erased(store.ledger.state_as_of(c, chrono::Utc::now()).await, c, at);
    let long_ago = chrono::Utc::now() - chrono::Duration::days(365);
    assert_erased(store.ledger.state_as_of(c, long_ago).await, c, at);
    // …while the others' can.
    assert_eq!(
        store
            .ledger
            .history(customers[0], &field("email"))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn every_command_on_an_erased_record_is_refused_and_writes_nothing(engine: Engine) {
    let ErasedSample {
        store,
        c,
        before,
        erasure,
        ..
    } = erased_sample(engine).await;
    let at = erasure.at;
    // Every command is refused, and nothing is written.
    let head = store.ledger.head_position().await.unwrap();
    let erased = Refusal::Erased { erased_at: at };
    assert_refused(
        store
            .ledger
            .execute(&source("idp"), &command(c, "again", vec![Change::Register]))
            .await,
        &erased,
    );
    assert_refused(
        store
            .ledger
            .execute(
                &source("idp"),
                &command(c, "set", vec![set("name.given", json!("Ada"))]),
            )
            .await,
        &erased,
    );
    let proposal = *before.proposals.keys().next().unwrap();
    assert_refused(
        store
            .ledger
            .execute(
                &idledger_testkit::builders::steward(),
                &command(
                    c,
                    "accept",
                    vec![Change::AcceptProposal {
                        proposal_id: proposal,
                    }],
                ),
            )
            .await,
        &erased,
    );
    // A retry of a command from before the erasure is no replay: its record went too.
    assert_refused(
        store
            .ledger
            .execute(
                &source("consent_portal"),
                &command(c, "consent-c", vec![grant("marketing", None)]),
            )
            .await,
        &erased,
    );
    assert_eq!(store.ledger.head_position().await.unwrap(), head);
}

async fn erasure_destroys_the_data_key_of_the_erased_only(engine: Engine) {
    let ErasedSample {
        store,
        customers,
        c,
        ..
    } = erased_sample(engine).await;
    // The data key is gone; the others' are not.
    assert_eq!(count(&store.db, "SELECT COUNT(*) FROM data_keys").await, 2);
    for other in [customers[0], customers[2]] {
        assert!(
            store
                .ledger
                .store()
                .log()
                .data_key(other.as_uuid())
                .await
                .unwrap()
                .is_some()
        );
    }
    assert!(
        store
            .ledger
            .store()
            .log()
            .data_key(c.as_uuid())
            .await
            .unwrap()
            .is_none()
    );
}

async fn the_log_verifies_and_rebuilds_identically_over_an_erasure(engine: Engine) {
    let ErasedSample {
        store,
        customers,
        c,
        others_before,
        ..
    } = erased_sample(engine).await;
    let state = store.ledger.state(c).await.unwrap().unwrap();
    // The log still verifies; rebuilding gives byte-identical rows, erased record included.
    let report = store.ledger.verify(&|_, _| {}).await.unwrap();
    assert_eq!(
        (report.events, report.streams, report.first_broken),
        (15, 3, None)
    );
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!((report.events, report.customers), (15, 3));
    assert_eq!(store.ledger.state(c).await.unwrap().unwrap(), state);
    assert_eq!(
        [
            store.ledger.state(customers[0]).await.unwrap(),
            store.ledger.state(customers[2]).await.unwrap(),
        ],
        others_before
    );
    // Damaged, the erased customer's row is reported and repaired like any other.
    store
        .db
        .exec("UPDATE projections SET record = '{}' WHERE kind = 'customer'")
        .await;
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(report.differing_count, 3);
    assert_eq!(store.ledger.state(c).await.unwrap().unwrap(), state);
}

async fn tampering_with_the_clear_erasure_payload_is_detected(engine: Engine) {
    let ErasedSample { store, .. } = erased_sample(engine).await;
    // The erasure event, stored in the clear, is covered by the chain all the same.
    let unlock = match engine {
        Engine::Postgres => "ALTER TABLE events DISABLE TRIGGER events_append_only;",
        Engine::Sqlite => "DROP TRIGGER events_no_update;",
    };
    store.db.exec(unlock).await;
    let tamper = match engine {
        Engine::Postgres => {
            "UPDATE events SET payload = set_byte(payload, 20, get_byte(payload, 20) # 1) WHERE event_type = 'customer_erased'"
        }
        Engine::Sqlite => {
            "UPDATE events SET payload = substr(payload, 1, 20) || x'7e' || substr(payload, 22) WHERE event_type = 'customer_erased'"
        }
    };
    store.db.exec(tamper).await;
    let broken = store
        .ledger
        .verify(&|_, _| {})
        .await
        .unwrap()
        .first_broken
        .unwrap();
    assert_eq!(broken.global_position, 15, "{}", broken.reason);
}

/// Everything the database holds in events, projections, data keys and idempotency records:
/// text columns as text, binary ones as their raw bytes.
async fn dump_database(db: &TestDb) -> String {
    const TEXT: &str = "SELECT event_type || ' ' || COALESCE(field, '') FROM events \
        UNION ALL SELECT kind || ' ' || key || ' ' || record FROM projections \
        UNION ALL SELECT source || ' ' || idempotency_key || ' ' || result FROM idempotency";
    const BYTES: &str = "SELECT payload FROM events UNION ALL SELECT hash FROM events \
        UNION ALL SELECT wrapped_key FROM data_keys UNION ALL SELECT request_hash FROM idempotency";
    let (text, bytes): (Vec<String>, Vec<Vec<u8>>) = match db.engine {
        Engine::Postgres => {
            let pg = db.pg().await;
            (
                sqlx::query_scalar(TEXT).fetch_all(&pg).await.unwrap(),
                sqlx::query_scalar(BYTES).fetch_all(&pg).await.unwrap(),
            )
        }
        Engine::Sqlite => {
            let lite = db.sqlite().await;
            (
                sqlx::query_scalar(TEXT).fetch_all(&lite).await.unwrap(),
                sqlx::query_scalar(BYTES).fetch_all(&lite).await.unwrap(),
            )
        }
    };
    let mut dump = text.join("\n");
    dump.push_str(&String::from_utf8_lossy(&bytes.concat()));
    dump.to_lowercase()
}

const ERASED_VALUES: [&str; 7] = [
    "augusta.king@example.org",
    "lovelace",
    "2079460958",
    "james square",
    "marylebone",
    "countess",
    "ada.next@example.org",
];

/// A customer with personal data in every place it can be: fields, a pending change, a
/// proposal; and a consent.
async fn write_person(store: &TestStore, c: CustomerId, tag: &str) {
    let changes = vec![
        Change::Register,
        set("email", json!("augusta.king@example.org")),
        set("name.family", json!("Lovelace-Byron")),
        set("phone", json!("+442079460958")),
    ];
    store
        .ledger
        .execute(&source("idp"), &command(c, &format!("{tag}-1"), changes))
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("web_app"),
            &command(
                c,
                &format!("{tag}-2"),
                vec![set(
                    "postal_address",
                    json!({"lines": ["12 St James Square"], "locality": "Marylebone", "country": "GB"}),
                )],
            ),
        )
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("crm"),
            &command(
                c,
                &format!("{tag}-3"),
                vec![set("name.given", json!("Countess"))],
            ),
        )
        .await
        .unwrap();
    let change = request_change("email", json!("ada.next@example.org"));
    store
        .ledger
        .execute(
            &source("web_app"),
            &command(c, &format!("{tag}-4"), vec![change]),
        )
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("consent_portal"),
            &command(c, &format!("{tag}-5"), vec![grant("marketing", None)]),
        )
        .await
        .unwrap();
}

async fn write_other(store: &TestStore, d: CustomerId, tag: &str) {
    store
        .ledger
        .execute(
            &source("idp"),
            &command(
                d,
                tag,
                vec![
                    Change::Register,
                    set("email", json!("grace.hopper@example.org")),
                    set("name.family", json!("Hopper")),
                ],
            ),
        )
        .await
        .unwrap();
}

async fn no_plaintext_of_an_erased_customer_anywhere(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    let d = new_customer();
    write_person(&store, c, "c").await;
    write_other(&store, d, "d").await;
    let other = store.ledger.state(d).await.unwrap();
    // Sealed, the projection shows nothing; rows written before sealing held it in the clear,
    // which the dump sees (so the search is not vacuous).
    let dump = dump_database(&store.db).await;
    for needle in ERASED_VALUES {
        assert!(!dump.contains(needle), "'{needle}' in the clear");
    }
    write_as_before_sealing(&store, c).await;
    let dump = dump_database(&store.db).await;
    for needle in ERASED_VALUES {
        assert!(
            dump.contains(needle),
            "'{needle}' not in the dump before erasure"
        );
    }
    store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    let dump = dump_database(&store.db).await;
    for needle in ERASED_VALUES {
        assert!(
            !dump.contains(needle),
            "plaintext '{needle}' of an erased customer found"
        );
    }
    assert_eq!(
        store.ledger.state(d).await.unwrap(),
        other,
        "the other customer is untouched"
    );
    assert!(dump.contains("customer_erased"));
    // The other customer's records, keys and idempotency are all still there.
    assert_eq!(count(&store.db, "SELECT COUNT(*) FROM data_keys").await, 1);
    assert_eq!(
        count(&store.db, "SELECT COUNT(*) FROM idempotency").await,
        1
    );
}

/// The raw bytes of the SQLite database and its `-wal` and `-shm` files, lower-cased.
fn sqlite_files(db: &TestDb) -> String {
    let path = db.url.strip_prefix("sqlite://").unwrap();
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
            all.extend(bytes);
        }
    }
    String::from_utf8_lossy(&all).to_lowercase()
}

/// Deleted rows are zeroed (`secure_delete`), and the WAL, whose older frames still hold the
/// pages as they were, is truncated after the erasure commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_files_keep_no_plaintext_of_an_erased_customer() {
    let store = TestStore::new(Engine::Sqlite).await;
    let c = new_customer();
    let d = new_customer();
    write_person(&store, c, "c").await;
    write_other(&store, d, "d").await;
    let other = store.ledger.state(d).await.unwrap();
    // Rows from before sealing hold the customer in the clear, in the file and the WAL.
    write_as_before_sealing(&store, c).await;
    let files = sqlite_files(&store.db);
    for needle in ERASED_VALUES {
        assert!(
            files.contains(needle),
            "'{needle}' not in the files before erasure"
        );
    }
    store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    let files = sqlite_files(&store.db);
    for needle in ERASED_VALUES {
        assert!(
            !files.contains(needle),
            "plaintext '{needle}' of an erased customer found in the SQLite files"
        );
    }
    assert_eq!(
        store.ledger.state(d).await.unwrap(),
        other,
        "the other customer is untouched"
    );
}

/// The writer's commits leave the log in the WAL; a checkpointer beside the writer copies it
/// into the database file (SQLite's own checkpoint in a commit waits for 10,000 pages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commits_are_checkpointed_beside_the_writer() {
    let store = TestStore::new(Engine::Sqlite).await;
    let path = store.db.url.strip_prefix("sqlite://").unwrap().to_owned();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    for i in 0..20 {
        write_person(&store, new_customer(), &format!("p{i}")).await;
    }
    // Each checkpoint follows a commit within `CHECKPOINT_EVERY` (100 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while size() <= before && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        size() > before,
        "the database file stayed at {before} bytes: nothing was checkpointed"
    );
}

async fn read_all_returns_every_position_of_an_erased_customer_without_personal_data(
    engine: Engine,
) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    let d = new_customer();
    write_person(&store, c, "c").await;
    write_other(&store, d, "d").await;
    store
        .ledger
        .execute(
            &source("web_app"),
            &command(c, "late", vec![set("locale", json!("en-GB"))]),
        )
        .await
        .unwrap();
    let erasure: Erasure = store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    store
        .ledger
        .execute(
            &source("idp"),
            &command(d, "after", vec![set("name.given", json!("Grace"))]),
        )
        .await
        .unwrap();
    let head = store.ledger.head_position().await.unwrap();

    let mut entries: Vec<LogEntry> = Vec::new();
    loop {
        let after = entries.last().map_or(0, LogEntry::global_position);
        let page = store.ledger.read_all(after, 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        entries.extend(page);
    }
    let positions: Vec<u64> = entries.iter().map(LogEntry::global_position).collect();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>());
    let raw = store.ledger.read_raw(0, 1000).await.unwrap();
    let raw_ids: Vec<uuid::Uuid> = raw.iter().map(|r| r.event_id).collect();
    let ids: Vec<uuid::Uuid> = entries.iter().map(|e| e.event_id().as_uuid()).collect();
    assert_eq!(ids, raw_ids);

    let erasure_position = raw
        .iter()
        .find(|r| r.event_type == "customer_erased")
        .unwrap()
        .global_position;
    let mut shredded = 0;
    for (entry, raw) in entries.iter().zip(&raw) {
        assert_eq!(entry.stream_version(), raw.stream_version);
        assert_eq!(entry.customer_id().as_uuid(), raw.customer_id);
        match entry {
            LogEntry::Shredded(s) => {
                assert_eq!(s.customer_id, c);
                assert!(s.global_position < erasure_position);
                assert_eq!(s.erased_at, erasure.at);
                assert_eq!(s.event_type, raw.event_type);
                shredded += 1;
            }
            LogEntry::Event(e) if e.customer_id == c => {
                assert_eq!(e.global_position, erasure_position);
                let EventPayload::CustomerErased { reason } = &e.envelope.event.payload else {
                    panic!("a readable event of the erased customer: {e:?}")
                };
                assert_eq!(reason, "subject's request");
                assert_eq!(e.envelope.event.provenance.source.as_str(), ADMIN_SOURCE);
                assert_eq!(e.recorded_at, erasure.at);
            }
            LogEntry::Event(e) => assert_eq!(e.customer_id, d),
        }
    }
    assert_eq!(
        shredded, 9,
        "every earlier event of the erased customer is shredded"
    );
    let wire = serde_json::to_string(&entries).unwrap().to_lowercase();
    for needle in ERASED_VALUES {
        assert!(
            !wire.contains(needle),
            "'{needle}' of an erased customer was read"
        );
    }
    assert!(wire.contains("grace.hopper@example.org"));
}

async fn erasure_happens_once_and_only_to_a_registered_customer(engine: Engine) {
    let store = TestStore::new(engine).await;
    let unknown = new_customer();
    assert_refused(
        store
            .ledger
            .erase(unknown, &admin(), dpo(), "request")
            .await,
        &Refusal::NotRegistered,
    );
    // Never registered is not erased: an empty stream.
    assert!(
        store
            .ledger
            .stream(unknown, None, None)
            .await
            .unwrap()
            .is_empty()
    );
    let c = new_customer();
    write_other(&store, c, "reg").await;
    let bad = store.ledger.erase(c, &admin(), dpo(), "  ").await;
    assert!(
        matches!(bad, Err(ExecuteError::Refused(ref r)) if r.refusal.code() == "invalid_value"),
        "{bad:?}"
    );
    assert_eq!(store.ledger.head_position().await.unwrap(), 3);

    // Racing erasures through separate ledgers: one erases, the others are refused.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let ledger = store.another_ledger().await;
        tasks.push(tokio::spawn(async move {
            ledger.erase(c, &admin(), dpo(), "request").await
        }));
    }
    let mut won = Vec::new();
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(e) => won.push(e),
            Err(ExecuteError::Refused(r)) => refused.push(r.refusal),
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!((won.len(), refused.len()), (1, 3), "{won:?} {refused:?}");
    let erased = Refusal::Erased {
        erased_at: won[0].at,
    };
    assert!(refused.iter().all(|r| *r == erased), "{refused:?}");
    assert_refused(
        store.ledger.erase(c, &admin(), dpo(), "request").await,
        &erased,
    );
    assert_eq!(store.ledger.head_position().await.unwrap(), 4);
    assert!(
        store
            .ledger
            .verify(&|_, _| {})
            .await
            .unwrap()
            .first_broken
            .is_none()
    );
}

/// What the projection holds of `write_person`'s customer, a proposal's value, a command's
/// reason and evidence reference and a restriction's reason: none of it may be readable in the
/// `projections` table.
const PROJECTED_VALUES: [&str; 11] = [
    "augusta.king@example.org",
    "lovelace",
    "2079460958",
    "james square",
    "marylebone",
    "countess",
    "ada.next@example.org",
    "proposed.mailbox@example.org",
    "settlement papers of mrs king",
    "passport-nx551190",
    "disputes the st james address",
];

/// `write_person`, then a proposal (crm proposes emails), a change with a reason and an
/// evidence reference, and a restriction of processing.
async fn write_person_with_proposal_and_reasons(store: &TestStore, c: CustomerId) {
    write_person(store, c, "c").await;
    store
        .ledger
        .execute(
            &source("crm"),
            &command(
                c,
                "proposal",
                vec![set("email", json!("proposed.mailbox@example.org"))],
            ),
        )
        .await
        .unwrap();
    let mut why = command(c, "why", vec![set("name.family", json!("Lovelace-King"))]);
    why.provenance.reason = Some("Settlement papers of Mrs King".to_owned());
    why.provenance.evidence = Some(
        idledger_domain::values::Evidence::new(
            idledger_domain::ids::Key::parse("passport").unwrap(),
            "passport-NX551190",
        )
        .unwrap(),
    );
    store.ledger.execute(&source("idp"), &why).await.unwrap();
    let dpo = idledger_domain::command::Principal::Admin(dpo());
    let restrict = command(
        c,
        "restrict",
        vec![Change::RestrictProcessing {
            reason: "Disputes the St James address".to_owned(),
        }],
    );
    store.ledger.execute(&dpo, &restrict).await.unwrap();
}

async fn no_plaintext_personal_data_in_the_projection(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    write_person_with_proposal_and_reasons(&store, c).await;
    // The record holds every value…
    let state = store.ledger.state(c).await.unwrap().unwrap();
    let record = serde_json::to_string(&state).unwrap().to_lowercase();
    for needle in PROJECTED_VALUES {
        assert!(record.contains(needle), "'{needle}' is not in the record");
    }
    assert_eq!(state.proposals.len(), 2);
    assert!(state.restricted.is_some());
    // …and no row of the projection shows one: every row but the customer's is sealed.
    let rows = raw_projections(&store.db).await;
    assert_eq!(rows.len(), 1 + state.fields.len() + 1 + 2 + 1, "{rows:?}");
    assert_sealed(&rows, &PROJECTED_VALUES);
}

/// Puts the record stored in one row into another, as someone who can write to the database
/// could: `(customer, kind, key)` each.
async fn copy_record(db: &TestDb, from: (CustomerId, &str, &str), to: (CustomerId, &str, &str)) {
    const READ: &str =
        "SELECT record FROM projections WHERE customer_id = $1 AND kind = $2 AND key = $3";
    const WRITE: &str =
        "UPDATE projections SET record = $1 WHERE customer_id = $2 AND kind = $3 AND key = $4";
    let affected = match db.engine {
        Engine::Postgres => {
            let pg = db.pg().await;
            let record: String = sqlx::query_scalar(READ)
                .bind(from.0.as_uuid())
                .bind(from.1)
                .bind(from.2)
                .fetch_one(&pg)
                .await
                .unwrap();
            sqlx::query(WRITE)
                .bind(record)
                .bind(to.0.as_uuid())
                .bind(to.1)
                .bind(to.2)
                .execute(&pg)
                .await
                .unwrap()
                .rows_affected()
        }
        Engine::Sqlite => {
            let lite = db.sqlite().await;
            let record: String = sqlx::query_scalar(READ)
                .bind(from.0.as_uuid())
                .bind(from.1)
                .bind(from.2)
                .fetch_one(&lite)
                .await
                .unwrap();
            sqlx::query(WRITE)
                .bind(record)
                .bind(to.0.as_uuid())
                .bind(to.1)
                .bind(to.2)
                .execute(&lite)
                .await
                .unwrap()
                .rows_affected()
        }
    };
    assert_eq!(affected, 1, "no row {to:?}");
}

#[track_caller]
fn assert_integrity<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Integrity(_)) => {}
        other => panic!("{what}: expected an integrity error, got {other:?}"),
    }
}

async fn a_sealed_record_read_in_another_row_is_an_integrity_error(engine: Engine) {
    let store = TestStore::new(engine).await;
    let (c, d) = (new_customer(), new_customer());
    write_person(&store, c, "c").await;
    write_other(&store, d, "d").await;
    let (before_c, before_d) = (
        store.ledger.state(c).await.unwrap(),
        store.ledger.state(d).await.unwrap(),
    );
    let moves = [
        (
            "another customer's",
            (d, "field", "email"),
            (c, "field", "email"),
        ),
        (
            "another field's",
            (c, "field", "phone"),
            (c, "field", "email"),
        ),
        (
            "another kind's",
            (c, "consent", "marketing"),
            (c, "field", "email"),
        ),
    ];
    // A process that reads the record's rows. This one keeps the record it last wrote, and
    // while the stream is at that version it decides on it and answers reads with it: the
    // record as written, never the altered rows — until `rebuild` (below) empties its cache.
    let reader = store.another_ledger().await;
    for (i, (what, from, to)) in moves.into_iter().enumerate() {
        copy_record(&store.db, from, to).await;
        assert_integrity(reader.state(c).await, what);
        let held = store.ledger.state(c).await;
        if i == 0 {
            assert_eq!(held.unwrap(), before_c, "{what}");
        } else {
            assert_integrity(held, what);
        }
        // A command on the altered record fails, and writes nothing.
        let head = store.ledger.head_position().await.unwrap();
        let refused = reader
            .execute(
                &source("web_app"),
                &command(
                    c,
                    &format!("moved-{i}"),
                    vec![set("locale", json!("en-GB"))],
                ),
            )
            .await;
        assert!(
            matches!(refused, Err(ExecuteError::Store(StoreError::Integrity(_)))),
            "{what}: {refused:?}"
        );
        assert_eq!(store.ledger.head_position().await.unwrap(), head);
        // Rebuild finds the row differing and puts back what the log gives.
        let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
        assert_eq!(report.differing_customers, [c.as_uuid()], "{what}");
        assert_eq!(store.ledger.state(c).await.unwrap(), before_c, "{what}");
        assert_eq!(store.ledger.state(d).await.unwrap(), before_d, "{what}");
    }
    // Plaintext put in a sealed row (d has no phone): the customer row vouches for sealing.
    store
        .db
        .exec("UPDATE projections SET record = '{\"value\":null}' WHERE kind = 'field' AND key = 'phone'")
        .await;
    assert_integrity(store.ledger.state(c).await, "plaintext in a sealed row");
    assert_eq!(store.ledger.state(d).await.unwrap(), before_d);
}

async fn rows_from_before_sealing_are_read_and_sealed_by_a_write(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    write_person(&store, c, "c").await;
    let before = store.ledger.state(c).await.unwrap().unwrap();
    write_as_before_sealing(&store, c).await;
    let rows = raw_projections(&store.db).await;
    assert!(
        rows.iter()
            .any(|(_, r)| r.contains("augusta.king@example.org"))
    );
    // Read as they are (by a process that does not hold the record it wrote)…
    assert_eq!(
        store
            .another_ledger()
            .await
            .state(c)
            .await
            .unwrap()
            .unwrap(),
        before
    );
    // …and a write that changes one field leaves every row of the customer sealed (by a
    // process of this version started on the old rows: this one kept what it wrote).
    store
        .another_ledger()
        .await
        .execute(
            &source("web_app"),
            &command(c, "locale", vec![set("locale", json!("en-GB"))]),
        )
        .await
        .unwrap();
    let after = store.ledger.state(c).await.unwrap().unwrap();
    assert_eq!(after.fields.len(), before.fields.len() + 1);
    assert_eq!(after.stream_version, before.stream_version + 1);
    assert_sealed(&raw_projections(&store.db).await, &ERASED_VALUES);
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.resealed_count, 0);
}

async fn rows_from_before_sealing_are_sealed_by_rebuild(engine: Engine) {
    let store = TestStore::new(engine).await;
    let (c, d) = (new_customer(), new_customer());
    write_person(&store, c, "c").await;
    write_other(&store, d, "d").await;
    let (before_c, before_d) = (
        store.ledger.state(c).await.unwrap(),
        store.ledger.state(d).await.unwrap(),
    );
    write_as_before_sealing(&store, c).await;
    // The content is what the log gives: identical, and rewritten sealed.
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!((report.differing_count, report.resealed_count), (0, 1));
    let rows = raw_projections(&store.db).await;
    assert_sealed(&rows, &ERASED_VALUES);
    assert_eq!(store.ledger.state(c).await.unwrap(), before_c);
    assert_eq!(store.ledger.state(d).await.unwrap(), before_d);
    // Done once: the next rebuild rewrites nothing.
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(report.identical, "{report:?}");
    assert_eq!(report.resealed_count, 0);
    assert_eq!(raw_projections(&store.db).await, rows);
}

async fn an_erasure_racing_readers_and_writers_happens_and_no_key_stays_cached(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    write_person(&store, c, "c").await;
    assert!(store.ledger.holds_key_of(c), "a command keeps its key");
    // Readers and writers of the record race its erasure: each sees the record before or
    // after it, never an error, and none leaves the destroyed key in the cache.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..3 {
        let (ledger, stop) = (store.ledger.clone(), stop.clone());
        tasks.spawn(async move {
            let mut reads = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let state = ledger.state(c).await.unwrap().unwrap();
                assert!(state.erased.is_some() || state.fields.contains_key(&field("email")));
                if reader == 0 {
                    match ledger.history(c, &field("email")).await {
                        Ok(events) => assert!(!events.is_empty()),
                        Err(StoreError::Erased { .. }) => {}
                        Err(e) => panic!("history: {e}"),
                    }
                }
                reads += 1;
            }
            reads
        });
    }
    // Several writers in tight loops on the same record: the erasure, decided under the
    // log's lock, still happens at once (decided before its transaction, it lost every race).
    for _ in 0..4 {
        let (ledger, stop) = (store.ledger.clone(), stop.clone());
        tasks.spawn(async move {
            let mut writes = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let locale = if writes.is_multiple_of(2) {
                    "en-GB"
                } else {
                    "de-DE"
                };
                let result = ledger
                    .execute(
                        &source("web_app"),
                        &fresh_command(c, vec![set("locale", json!(locale))]),
                    )
                    .await;
                match result {
                    Ok(_) => {}
                    Err(ExecuteError::Refused(r))
                        if matches!(r.refusal, Refusal::Erased { .. }) => {}
                    Err(e) => panic!("a command racing the erasure: {e}"),
                }
                writes += 1;
            }
            writes
        });
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    assert!(!store.ledger.holds_key_of(c), "the erasure drops the key");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, Ordering::SeqCst);
    while let Some(done) = tasks.join_next().await {
        assert!(done.unwrap() > 0, "a task did nothing");
    }
    assert!(
        !store.ledger.holds_key_of(c),
        "a key read before the erasure was put back"
    );
    let state = store.ledger.state(c).await.unwrap().unwrap();
    assert!(state.erased.is_some() && state.fields.is_empty());
}

async fn another_process_drops_an_erased_customers_key_and_reads_them_as_erased(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    write_person(&store, c, "c").await;
    let other = store.another_ledger().await;
    assert!(other.state(c).await.unwrap().is_some());
    assert!(other.holds_key_of(c));
    let erasure = store
        .ledger
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    // The other process learns of the erasure from the record it reads, and drops its copy.
    let state = other.state(c).await.unwrap().unwrap();
    assert_eq!(state.erased.as_ref(), Some(&erasure));
    assert!(state.fields.is_empty());
    assert!(!other.holds_key_of(c));
    assert_erased(other.history(c, &field("email")).await, c, erasure.at);
    assert_refused(
        other
            .execute(
                &source("web_app"),
                &command(c, "late", vec![set("locale", json!("en-GB"))]),
            )
            .await,
        &Refusal::Erased {
            erased_at: erasure.at,
        },
    );
}

/// A process decides a customer's next command on the record it last wrote; another process
/// writing meanwhile is never overlooked: the append's version check sends the first back to
/// the stored record, and a refusal is only ever given on the stored record.
async fn a_read_where_the_record_is_kept_shows_another_processs_writes(engine: Engine) {
    let store = TestStore::new(engine).await;
    let here = &store.ledger;
    let there = store.another_ledger().await;
    let c = new_customer();
    let locale = |state: &CustomerState| state.value(&field("locale")).map(|v| v.to_json());
    let written = here
        .execute(
            &source("idp"),
            &command(
                c,
                "r",
                vec![Change::Register, set("email", json!("a@example.org"))],
            ),
        )
        .await
        .unwrap();
    // Read here as this process wrote it (the record it keeps, made from these very rows).
    let read = here.state(c).await.unwrap().unwrap();
    assert_eq!(Some(&read), written.state.as_deref());
    // Many at once (the relay's read), the kept record among them, and one never written.
    let unknown = new_customer();
    let many = here.states(&[c, unknown]).await.unwrap();
    assert_eq!(many[&c].as_ref(), written.state.as_deref());
    assert_eq!(many[&unknown], None);
    // Moved on by the other process: a read here shows it, though this process kept the
    // record it wrote.
    there
        .execute(
            &source("web_app"),
            &command(c, "o1", vec![set("locale", json!("de-DE"))]),
        )
        .await
        .unwrap();
    let many = here.states(&[c, unknown]).await.unwrap();
    let read = many[&c].clone().unwrap();
    assert_eq!(locale(&read), Some(json!("de-DE")));
    assert_eq!(read.stream_version, written.result.stream_version + 1);
    assert_eq!(here.state(c).await.unwrap().unwrap(), read);
    // A command refused here keeps the record it was refused on; the other process moves it
    // on again; the next command here is decided on the latest, and a read shows both.
    let refused = here
        .execute(&source("idp"), &command(c, "again", vec![Change::Register]))
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::Refused(ref r)) if r.refusal.code() == "already_registered"),
        "{refused:?}"
    );
    there
        .execute(
            &source("web_app"),
            &command(c, "o2", vec![set("locale", json!("fr-FR"))]),
        )
        .await
        .unwrap();
    let next = here
        .execute(
            &source("idp"),
            &command(c, "h1", vec![set("email", json!("b@example.org"))]),
        )
        .await
        .unwrap();
    assert_eq!(
        next.result.stream_version,
        written.result.stream_version + 3
    );
    let read = here.state(c).await.unwrap().unwrap();
    assert_eq!(locale(&read), Some(json!("fr-FR")));
    assert_eq!(
        read.value(&field("email")).map(|v| v.to_json()),
        Some(json!("b@example.org"))
    );
    assert_eq!(Some(&read), next.state.as_deref());
    assert_eq!(there.state(c).await.unwrap().unwrap(), read);
    assert_eq!(here.states(&[c]).await.unwrap()[&c].as_ref(), Some(&read));
    assert_eq!(there.states(&[c]).await.unwrap()[&c].as_ref(), Some(&read));
}

async fn a_record_kept_by_one_process_yields_to_another_processs_writes(engine: Engine) {
    let store = TestStore::new(engine).await;
    let here = &store.ledger;
    let there = store.another_ledger().await;
    let c = new_customer();
    let registered = here
        .execute(
            &source("idp"),
            &command(
                c,
                "r",
                vec![Change::Register, set("email", json!("a@example.org"))],
            ),
        )
        .await
        .unwrap();
    let v = registered.result.stream_version;
    // The other process moves the record on twice.
    there
        .execute(
            &source("web_app"),
            &command(c, "o1", vec![set("locale", json!("de-DE"))]),
        )
        .await
        .unwrap();
    there
        .execute(
            &source("web_app"),
            &command(c, "o2", vec![set("locale", json!("fr-FR"))]),
        )
        .await
        .unwrap();
    // Decided here on the record as it now stands: the next version, both locales seen.
    let next = here
        .execute(
            &source("idp"),
            &command(c, "h1", vec![set("email", json!("b@example.org"))]),
        )
        .await
        .unwrap();
    assert_eq!(next.result.stream_version, v + 3);
    // A command that expects the version the other process left is not refused for a
    // version this process remembers.
    there
        .execute(
            &source("web_app"),
            &command(c, "o3", vec![set("locale", json!("it-IT"))]),
        )
        .await
        .unwrap();
    let mut expecting = command(c, "h2", vec![set("locale", json!("es-ES"))]);
    expecting.expected_stream_version = Some(v + 4);
    let accepted = here.execute(&source("web_app"), &expecting).await.unwrap();
    assert_eq!(accepted.result.stream_version, v + 5);
    // Erased by the other process: refused here, though this process had the record.
    there
        .erase(c, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    let refused = here
        .execute(
            &source("web_app"),
            &command(c, "h3", vec![set("locale", json!("en-GB"))]),
        )
        .await;
    assert!(
        matches!(&refused, Err(ExecuteError::Refused(r)) if r.refusal.code() == "erased"),
        "{refused:?}"
    );
    // And what is stored is what each write said, in order.
    let state = there.state(c).await.unwrap().unwrap();
    assert!(state.erased.is_some());
    assert_eq!(state.stream_version, v + 6);
}

/// `Ledger::states` (a relay's batch reading its customers together) gives each customer's
/// state as `Ledger::state` does: keys this process has, keys only another process read,
/// an erasure made elsewhere after this process cached the key, and unknown customers.
async fn states_read_together_are_each_as_read_alone(engine: Engine) {
    let store = TestStore::new(engine).await;
    let here = &store.ledger;
    let there = store.another_ledger().await;
    let register = async |ledger: &idledger_store::Ledger, c: CustomerId, email: &str| {
        ledger
            .execute(
                &source("idp"),
                &command(
                    c,
                    &format!("r-{c}"),
                    vec![Change::Register, set("email", json!(email))],
                ),
            )
            .await
            .unwrap();
    };
    let (known, elsewhere, erased, unknown) = (
        new_customer(),
        new_customer(),
        new_customer(),
        new_customer(),
    );
    register(here, known, "known@example.org").await;
    register(&there, elsewhere, "elsewhere@example.org").await;
    register(here, erased, "erased@example.org").await;
    there
        .erase(erased, &admin(), dpo(), "subject's request")
        .await
        .unwrap();
    let asked = [known, elsewhere, erased, unknown, known];
    let together = here.states(&asked).await.unwrap();
    assert_eq!(together.len(), 4);
    for c in asked {
        assert_eq!(together[&c], here.state(c).await.unwrap(), "{c}");
    }
    assert!(together[&known].as_ref().unwrap().fields.len() == 1);
    assert!(together[&elsewhere].as_ref().unwrap().fields.len() == 1);
    assert!(together[&erased].as_ref().unwrap().erased.is_some());
    assert!(together[&unknown].is_none());
}
