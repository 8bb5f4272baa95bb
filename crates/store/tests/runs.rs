//! Reconciliation bookkeeping on both engines: runs and their reports, findings, and the
//! staged rows of an uploaded snapshot.
//!
//! Covers every public method of `Runs`:
//! - [x] `start`, `get`, `save`; one run of a consumer at a time
//!   (`one_run_of_a_consumer_runs_at_a_time`, `a_run_abandoned_long_ago_gives_way`),
//!   `abandon`
//! - [x] `discard` (`a_discarded_run_leaves_nothing`)
//! - [x] `list`
//! - [x] `add_findings`, `findings`
//! - [x] erasure: the customer's examples leave every stored report
//!   (`erasure_drops_the_customers_examples_from_every_report`); a run in progress keeps
//!   nothing of a customer erased meanwhile
//!   (`a_run_keeps_nothing_of_a_customer_erased_while_it_ran`); `drop_examples`
//! - [x] `add_snapshot_rows`
//! - [x] `snapshot_customer_page`
//! - [x] `snapshot_rows_of`
//! - [x] `drop_snapshot`
//! - [x] `expire_runs`: crates/app/tests/retention.rs
//!   (`old_ended_runs_are_deleted_with_their_findings`)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use chrono::{DateTime, Duration, Utc};
use idledger_domain::Change;
use idledger_store::Runs;
use idledger_store::model::truncate_to_micros;
use idledger_store::runs::{
    ABANDONED_AFTER, Finding, MAX_RUN_PAGE, Run, RunKind, RunStart, RunStatus, SnapshotRow,
};
use serde_json::json;
use support::*;
use uuid::Uuid;

on_both_engines!(
    a_run_is_stored_read_back_and_saved_as_it_progresses,
    runs_are_listed_newest_first_and_paged_by_start_time,
    findings_are_read_in_order_after_a_cursor,
    findings_beyond_one_statement_are_all_stored,
    snapshot_rows_are_stored_once_per_customer_and_field,
    the_snapshot_customer_page_unites_records_and_snapshot,
    snapshot_rows_are_read_for_the_customers_asked,
    dropping_a_snapshot_deletes_its_rows_only,
    erasure_drops_the_customers_examples_from_every_report,
    a_run_keeps_nothing_of_a_customer_erased_while_it_ran,
    one_run_of_a_consumer_runs_at_a_time,
    a_run_abandoned_long_ago_gives_way,
    a_discarded_run_leaves_nothing,
);

async fn started_ok(runs: &Runs, run: &Run) {
    assert_eq!(runs.start(run).await.unwrap(), RunStart::Started);
}

async fn runs(engine: Engine) -> (TestDb, Runs) {
    let db = TestDb::new(engine).await;
    let runs = db.store().await.runs();
    (db, runs)
}

fn new_run(kind: RunKind, started_at: DateTime<Utc>) -> Run {
    Run {
        id: Uuid::now_v7(),
        kind,
        trigger: "cli".to_owned(),
        consumer_id: Some(consumer_id("crm")),
        requested_by: "steward@idledger.example".to_owned(),
        status: RunStatus::Running,
        started_at: truncate_to_micros(started_at),
        finished_at: None,
        report: json!({"consumers": []}),
        error: None,
    }
}

fn finding(seq: u64, customer: &str) -> Finding {
    Finding {
        seq,
        consumer_id: "crm".to_owned(),
        customer_id: customer.to_owned(),
        field: "email".to_owned(),
        kind: "divergent".to_owned(),
        detail: json!({"record_version": seq, "line": null}),
    }
}

fn snapshot_row(customer: Uuid, field: &str, hash: Option<&str>, line: u64) -> SnapshotRow {
    SnapshotRow {
        customer_id: customer,
        field: field.to_owned(),
        value_hash: hash.map(str::to_owned),
        line,
    }
}

async fn a_run_is_stored_read_back_and_saved_as_it_progresses(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    assert_eq!(runs.get(Uuid::now_v7()).await.unwrap(), None, "no such run");
    let mut acks = new_run(RunKind::Acks, Utc::now());
    started_ok(&runs, &acks).await;
    assert_eq!(runs.get(acks.id).await.unwrap().as_ref(), Some(&acks));
    // Every consumer, and a failure with its error.
    let mut snapshot = Run {
        consumer_id: None,
        trigger: "api".to_owned(),
        ..new_run(RunKind::Snapshot, Utc::now())
    };
    started_ok(&runs, &snapshot).await;
    snapshot.status = RunStatus::Failed;
    snapshot.error = Some("the upload ended mid-row".to_owned());
    snapshot.finished_at = Some(truncate_to_micros(Utc::now()));
    runs.save(&snapshot).await.unwrap();
    assert_eq!(
        runs.get(snapshot.id).await.unwrap().as_ref(),
        Some(&snapshot)
    );
    // Saving stores the status, report, error and end; the rest is as started.
    acks.status = RunStatus::Finished;
    acks.report = json!({"consumers": [{"id": "crm", "counts": {"divergent": 2}}]});
    acks.finished_at = Some(truncate_to_micros(Utc::now()));
    let mut changed_elsewhere = acks.clone();
    changed_elsewhere.trigger = "schedule".to_owned();
    changed_elsewhere.requested_by = "someone else".to_owned();
    runs.save(&changed_elsewhere).await.unwrap();
    assert_eq!(runs.get(acks.id).await.unwrap().as_ref(), Some(&acks));
    // Saving a run never started stores nothing.
    let ghost = new_run(RunKind::Acks, Utc::now());
    runs.save(&ghost).await.unwrap();
    assert_eq!(runs.get(ghost.id).await.unwrap(), None);
}

async fn runs_are_listed_newest_first_and_paged_by_start_time(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    assert!(runs.list(None, 10).await.unwrap().is_empty());
    let t0 = Utc::now() - Duration::hours(1);
    let mut started = Vec::new();
    for minutes in [0, 10, 20, 30, 40] {
        // Each of its own consumer: one run of a consumer runs at a time.
        let r = Run {
            consumer_id: Some(consumer_id(&format!("c{minutes}"))),
            ..new_run(RunKind::Acks, t0 + Duration::minutes(minutes))
        };
        started_ok(&runs, &r).await;
        started.push(r);
    }
    // Two runs started at the same instant are ordered by id, the later id first.
    let twin = Run {
        id: Uuid::now_v7(),
        consumer_id: Some(consumer_id("twin")),
        ..started[2].clone()
    };
    started_ok(&runs, &twin).await;
    let ids = |list: &[Run]| list.iter().map(|r| r.id).collect::<Vec<_>>();
    let all = runs.list(None, 100).await.unwrap();
    assert_eq!(
        ids(&all),
        [
            started[4].id,
            started[3].id,
            twin.id,
            started[2].id,
            started[1].id,
            started[0].id
        ]
    );
    assert_eq!(all[0], started[4], "listed as stored");
    let first = runs.list(None, 2).await.unwrap();
    assert_eq!(ids(&first), [started[4].id, started[3].id]);
    let next = runs
        .list(Some(first.last().unwrap().started_at), 2)
        .await
        .unwrap();
    assert_eq!(ids(&next), [twin.id, started[2].id]);
    let last = runs.list(Some(started[1].started_at), 2).await.unwrap();
    assert_eq!(ids(&last), [started[0].id]);
    assert!(runs.list(Some(t0), 2).await.unwrap().is_empty());
    // A limit of 0 still returns one run.
    assert_eq!(ids(&runs.list(None, 0).await.unwrap()), [started[4].id]);
}

async fn findings_are_read_in_order_after_a_cursor(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let r = new_run(RunKind::Acks, Utc::now());
    started_ok(&runs, &r).await;
    let other = Run {
        consumer_id: Some(consumer_id("other")),
        ..new_run(RunKind::Acks, Utc::now())
    };
    started_ok(&runs, &other).await;
    assert!(runs.findings(r.id, 0, 10).await.unwrap().is_empty());
    runs.add_findings(r.id, &[]).await.unwrap();
    // Stored in two calls, out of order: read back by seq.
    let found: Vec<Finding> = (1..=5).map(|s| finding(s, &format!("c{s}"))).collect();
    runs.add_findings(r.id, &[found[3].clone(), found[4].clone()])
        .await
        .unwrap();
    runs.add_findings(r.id, &found[..3]).await.unwrap();
    runs.add_findings(other.id, &[finding(1, "not-a-uuid")])
        .await
        .unwrap();
    assert_eq!(runs.findings(r.id, 0, 10).await.unwrap(), found);
    assert_eq!(runs.findings(r.id, 0, 2).await.unwrap(), found[..2]);
    assert_eq!(runs.findings(r.id, 2, 2).await.unwrap(), found[2..4]);
    assert_eq!(runs.findings(r.id, 4, 2).await.unwrap(), found[4..]);
    assert!(runs.findings(r.id, 5, 2).await.unwrap().is_empty());
    assert_eq!(runs.findings(r.id, 0, 0).await.unwrap(), found[..1]);
    // Another run's findings are its own, an invalid customer id as given.
    assert_eq!(
        runs.findings(other.id, 0, 10).await.unwrap(),
        [finding(1, "not-a-uuid")]
    );
    // The same seq twice in one run is refused.
    assert!(runs.add_findings(r.id, &[finding(5, "c5")]).await.is_err());
}

async fn findings_beyond_one_statement_are_all_stored(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let r = new_run(RunKind::Snapshot, Utc::now());
    started_ok(&runs, &r).await;
    // More rows than one statement binds on either engine (7 parameters a row).
    let n = 60_000 / 7 + 100;
    let found: Vec<Finding> = (1..=n as u64).map(|s| finding(s, "c")).collect();
    runs.add_findings(r.id, &found).await.unwrap();
    let mut read = Vec::new();
    loop {
        let after = read.last().map_or(0, |f: &Finding| f.seq);
        let page = runs.findings(r.id, after, 5000).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= MAX_RUN_PAGE as usize, "{}", page.len());
        read.extend(page);
    }
    assert_eq!(read.len(), n);
    assert_eq!(read, found);
}

async fn snapshot_rows_are_stored_once_per_customer_and_field(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let run_id = Uuid::now_v7();
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    assert_eq!(runs.add_snapshot_rows(run_id, &[]).await.unwrap(), 0);
    let rows = [
        snapshot_row(a, "email", Some("sha256:aa"), 1),
        snapshot_row(a, "phone", None, 2),
        // A repeat of (a, email) within the upload: the first one stays.
        snapshot_row(a, "email", Some("sha256:bb"), 3),
        snapshot_row(b, "email", Some("sha256:cc"), 4),
    ];
    assert_eq!(runs.add_snapshot_rows(run_id, &rows).await.unwrap(), 3);
    // …and across calls.
    assert_eq!(
        runs.add_snapshot_rows(run_id, &[snapshot_row(b, "email", None, 5)])
            .await
            .unwrap(),
        0
    );
    let mut expected = vec![rows[0].clone(), rows[1].clone(), rows[3].clone()];
    expected.sort_by(|x, y| (x.customer_id, &x.field).cmp(&(y.customer_id, &y.field)));
    assert_eq!(
        runs.snapshot_rows_of(run_id, &[a, b]).await.unwrap(),
        expected
    );
    // Beyond one statement's parameters (5 a row): every row stored.
    let many: Vec<SnapshotRow> = (0..60_000 / 5 + 50)
        .map(|i| snapshot_row(Uuid::now_v7(), "email", None, i as u64 + 10))
        .collect();
    let other_run = Uuid::now_v7();
    assert_eq!(
        runs.add_snapshot_rows(other_run, &many).await.unwrap(),
        many.len() as u64
    );
    let customers: Vec<Uuid> = many.iter().map(|r| r.customer_id).collect();
    assert_eq!(
        runs.snapshot_rows_of(other_run, &customers)
            .await
            .unwrap()
            .len(),
        many.len()
    );
}

async fn the_snapshot_customer_page_unites_records_and_snapshot(engine: Engine) {
    let store = TestStore::new(engine).await;
    let runs = store.ledger.store().runs();
    let run_id = Uuid::now_v7();
    assert!(
        runs.snapshot_customer_page(run_id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Two customers with a record, one of them also in the snapshot, one erased, and two
    // known only to the snapshot.
    let mut with_record = Vec::new();
    for _ in 0..3 {
        let c = new_customer();
        run(&store.ledger, "idp", c, vec![Change::Register]).await;
        with_record.push(c);
    }
    erase(&store.ledger, with_record.pop().unwrap()).await;
    let with_record: Vec<Uuid> = with_record.iter().map(|c| c.as_uuid()).collect();
    let only_in_snapshot = [Uuid::now_v7(), Uuid::now_v7()];
    let rows = [
        snapshot_row(with_record[0], "email", None, 1),
        snapshot_row(only_in_snapshot[0], "email", None, 2),
        snapshot_row(only_in_snapshot[0], "phone", None, 3),
        snapshot_row(only_in_snapshot[1], "email", None, 4),
    ];
    runs.add_snapshot_rows(run_id, &rows).await.unwrap();
    // Another run's rows are not this run's customers.
    runs.add_snapshot_rows(
        Uuid::now_v7(),
        &[snapshot_row(Uuid::now_v7(), "email", None, 1)],
    )
    .await
    .unwrap();
    let mut expected: Vec<Uuid> = with_record
        .iter()
        .chain(&only_in_snapshot)
        .copied()
        .collect();
    expected.sort();
    assert_eq!(
        runs.snapshot_customer_page(run_id, None, 100)
            .await
            .unwrap(),
        expected,
        "each customer once, in id order, the erased one left out"
    );
    let first = runs.snapshot_customer_page(run_id, None, 3).await.unwrap();
    assert_eq!(first, expected[..3]);
    let rest = runs
        .snapshot_customer_page(run_id, first.last().copied(), 3)
        .await
        .unwrap();
    assert_eq!(rest, expected[3..]);
    assert!(
        runs.snapshot_customer_page(run_id, expected.last().copied(), 3)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        runs.snapshot_customer_page(run_id, None, 0).await.unwrap(),
        expected[..1]
    );
}

async fn snapshot_rows_are_read_for_the_customers_asked(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let run_id = Uuid::now_v7();
    let customers: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let rows: Vec<SnapshotRow> = customers
        .iter()
        .enumerate()
        .flat_map(|(i, c)| {
            [
                snapshot_row(*c, "phone", None, 2 * i as u64 + 1),
                snapshot_row(*c, "email", Some("sha256:ee"), 2 * i as u64 + 2),
            ]
        })
        .collect();
    runs.add_snapshot_rows(run_id, &rows).await.unwrap();
    assert!(runs.snapshot_rows_of(run_id, &[]).await.unwrap().is_empty());
    assert!(
        runs.snapshot_rows_of(Uuid::now_v7(), &customers)
            .await
            .unwrap()
            .is_empty(),
        "another run's rows"
    );
    // Only those asked for, by customer then field, whatever order they were asked in.
    let asked = [customers[3], customers[1], Uuid::now_v7()];
    let got = runs.snapshot_rows_of(run_id, &asked).await.unwrap();
    let mut expected: Vec<SnapshotRow> = rows
        .iter()
        .filter(|r| r.customer_id == customers[1] || r.customer_id == customers[3])
        .cloned()
        .collect();
    expected.sort_by(|x, y| (x.customer_id, &x.field).cmp(&(y.customer_id, &y.field)));
    assert_eq!(got, expected);
    assert_eq!(got[0].field, "email");
    // More customers than one statement binds: the rows of the last one are found too.
    let mut many: Vec<Uuid> = (0..60_000).map(|_| Uuid::now_v7()).collect();
    many.push(customers[0]);
    let got = runs.snapshot_rows_of(run_id, &many).await.unwrap();
    assert_eq!(
        got.iter().map(|r| r.line).collect::<Vec<_>>(),
        [2, 1],
        "{got:?}"
    );
}

async fn dropping_a_snapshot_deletes_its_rows_only(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let (dropped, kept) = (Uuid::now_v7(), Uuid::now_v7());
    let c = Uuid::now_v7();
    runs.add_snapshot_rows(dropped, &[snapshot_row(c, "email", None, 1)])
        .await
        .unwrap();
    runs.add_snapshot_rows(kept, &[snapshot_row(c, "email", None, 1)])
        .await
        .unwrap();
    runs.drop_snapshot(dropped).await.unwrap();
    assert!(
        runs.snapshot_rows_of(dropped, &[c])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runs.snapshot_rows_of(kept, &[c]).await.unwrap().len(), 1);
    // Dropping again (or an unknown run) is a no-op; the run may stage rows anew.
    runs.drop_snapshot(dropped).await.unwrap();
    runs.drop_snapshot(Uuid::now_v7()).await.unwrap();
    assert_eq!(
        runs.add_snapshot_rows(dropped, &[snapshot_row(c, "email", None, 1)])
            .await
            .unwrap(),
        1
    );
}

/// A report as `idledger-reconcile` writes it: per consumer, counts and examples per kind.
fn report_naming(examples: &[(&str, &str)]) -> serde_json::Value {
    let mut by_kind = serde_json::Map::new();
    for (kind, customer) in examples {
        by_kind
            .entry(kind.to_string())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(json!({
                "customer_id": customer,
                "field": "email",
                "detail": {"record": {"version": 1, "value_hash": format!("hmac-sha256:{}", "ab".repeat(32))}},
            }));
    }
    json!({
        "consumers": [{"consumer_id": "crm", "counts": {"divergent": 7, "undelivered": 3}, "examples": by_kind}],
        "totals": {"findings": 10},
    })
}

fn examples_of(run: &Run) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for consumer in run.report["consumers"].as_array().unwrap() {
        for (kind, list) in consumer["examples"].as_object().unwrap() {
            for e in list.as_array().unwrap() {
                out.push((kind.clone(), e["customer_id"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

async fn registered(store: &TestStore) -> idledger_domain::ids::CustomerId {
    let c = new_customer();
    run(&store.ledger, "idp", c, vec![Change::Register]).await;
    c
}

async fn erasure_drops_the_customers_examples_from_every_report(engine: Engine) {
    let store = TestStore::new(engine).await;
    let runs = store.ledger.store().runs();
    let (c, d) = (registered(&store).await, registered(&store).await);
    let (c_id, d_id) = (c.to_string(), d.to_string());
    // A snapshot's ids are kept as given: upper case too.
    let c_upper = c_id.to_uppercase();
    let mut naming = Vec::new();
    for examples in [
        vec![
            ("divergent", c_id.as_str()),
            ("divergent", d_id.as_str()),
            ("undelivered", c_id.as_str()),
        ],
        vec![
            ("undelivered", c_upper.as_str()),
            ("undelivered", d_id.as_str()),
        ],
    ] {
        let mut r = new_run(RunKind::Acks, Utc::now());
        started_ok(&runs, &r).await;
        r.status = RunStatus::Finished;
        r.report = report_naming(&examples);
        runs.save(&r).await.unwrap();
        naming.push(r);
    }
    let mut other = new_run(RunKind::Acks, Utc::now());
    started_ok(&runs, &other).await;
    other.report = report_naming(&[("divergent", d_id.as_str())]);
    runs.save(&other).await.unwrap();

    erase(&store.ledger, c).await;
    let first = runs.get(naming[0].id).await.unwrap().unwrap();
    assert_eq!(
        examples_of(&first),
        [("divergent".to_owned(), d_id.clone())]
    );
    assert_eq!(
        first.report["consumers"][0]["counts"], naming[0].report["consumers"][0]["counts"],
        "counts say how many, not whom: they stay"
    );
    assert_eq!(first.report["totals"], naming[0].report["totals"]);
    let second = runs.get(naming[1].id).await.unwrap().unwrap();
    assert_eq!(
        examples_of(&second),
        [("undelivered".to_owned(), d_id.clone())]
    );
    assert_eq!(
        runs.get(other.id).await.unwrap().unwrap(),
        other,
        "never named the customer"
    );
}

async fn a_run_keeps_nothing_of_a_customer_erased_while_it_ran(engine: Engine) {
    let store = TestStore::new(engine).await;
    let runs = store.ledger.store().runs();
    let (before, during, kept) = (
        registered(&store).await,
        registered(&store).await,
        registered(&store).await,
    );
    erase(&store.ledger, before).await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut r = new_run(RunKind::Snapshot, Utc::now());
    started_ok(&runs, &r).await;
    // The run read all three; then one is erased before it stores what it found.
    erase(&store.ledger, during).await;
    let ids = [before, during, kept].map(|c| c.to_string());
    runs.add_findings(
        r.id,
        &[
            finding(1, &ids[0]),
            finding(2, &ids[1]),
            finding(3, &ids[2]),
            finding(4, "not-an-id"),
        ],
    )
    .await
    .unwrap();
    r.status = RunStatus::Finished;
    r.report = report_naming(&[
        ("extra", &ids[0]),
        ("different", &ids[1]),
        ("different", &ids[2]),
    ]);
    runs.save(&r).await.unwrap();

    // A customer erased before the run is what the run found (a consumer still holds them).
    let stored = runs.get(r.id).await.unwrap().unwrap();
    assert_eq!(
        examples_of(&stored),
        [
            ("different".to_owned(), ids[2].clone()),
            ("extra".to_owned(), ids[0].clone())
        ]
    );
    let findings: Vec<String> = runs
        .findings(r.id, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.customer_id)
        .collect();
    assert_eq!(findings, [ids[0].as_str(), ids[2].as_str(), "not-an-id"]);
}

async fn one_run_of_a_consumer_runs_at_a_time(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let first = new_run(RunKind::Snapshot, Utc::now());
    started_ok(&runs, &first).await;
    // Another run of crm, of either kind, is busy and records nothing.
    for kind in [RunKind::Acks, RunKind::Snapshot] {
        let second = new_run(kind, Utc::now());
        assert_eq!(runs.start(&second).await.unwrap(), RunStart::Busy);
        assert_eq!(runs.get(second.id).await.unwrap(), None);
    }
    // Another consumer's, and one over every consumer, start; a second over every consumer
    // is busy.
    let billing = Run {
        consumer_id: Some(consumer_id("billing")),
        ..new_run(RunKind::Acks, Utc::now())
    };
    started_ok(&runs, &billing).await;
    let every = Run {
        consumer_id: None,
        ..new_run(RunKind::Acks, Utc::now())
    };
    started_ok(&runs, &every).await;
    let again = Run {
        consumer_id: None,
        ..new_run(RunKind::Acks, Utc::now())
    };
    assert_eq!(runs.start(&again).await.unwrap(), RunStart::Busy);
    // An ended run (finished, or abandoned) holds nothing back.
    let mut done = first.clone();
    done.status = RunStatus::Finished;
    done.finished_at = Some(truncate_to_micros(Utc::now()));
    runs.save(&done).await.unwrap();
    let next = new_run(RunKind::Acks, Utc::now());
    started_ok(&runs, &next).await;
    runs.abandon(next.id, "interrupted").await.unwrap();
    let abandoned = runs.get(next.id).await.unwrap().unwrap();
    assert_eq!(abandoned.status, RunStatus::Failed);
    assert_eq!(abandoned.error.as_deref(), Some("interrupted"));
    // Abandoning an ended run changes nothing.
    runs.abandon(done.id, "late").await.unwrap();
    assert_eq!(
        runs.get(done.id).await.unwrap().unwrap().status,
        RunStatus::Finished
    );
    started_ok(&runs, &new_run(RunKind::Snapshot, Utc::now())).await;
}

async fn a_run_abandoned_long_ago_gives_way(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let now = Utc::now();
    let old = new_run(RunKind::Acks, now - ABANDONED_AFTER - Duration::minutes(1));
    started_ok(&runs, &old).await;
    let recent = Run {
        consumer_id: Some(consumer_id("billing")),
        ..new_run(RunKind::Acks, now - ABANDONED_AFTER + Duration::minutes(1))
    };
    started_ok(&runs, &recent).await;
    // crm's run is past the limit: a new one takes its place, and it is marked failed.
    started_ok(&runs, &new_run(RunKind::Acks, now)).await;
    let taken = runs.get(old.id).await.unwrap().unwrap();
    assert_eq!(taken.status, RunStatus::Failed);
    assert!(taken.error.unwrap().starts_with("abandoned"));
    // billing's is not.
    let billing = Run {
        consumer_id: Some(consumer_id("billing")),
        ..new_run(RunKind::Acks, now)
    };
    assert_eq!(runs.start(&billing).await.unwrap(), RunStart::Busy);
    assert_eq!(
        runs.get(recent.id).await.unwrap().unwrap().status,
        RunStatus::Running
    );
}

async fn a_discarded_run_leaves_nothing(engine: Engine) {
    let (_db, runs) = runs(engine).await;
    let r = new_run(RunKind::Snapshot, Utc::now());
    started_ok(&runs, &r).await;
    let customer = Uuid::now_v7();
    runs.add_findings(r.id, &[finding(1, &customer.to_string())])
        .await
        .unwrap();
    let row = SnapshotRow {
        customer_id: customer,
        field: "email".to_owned(),
        value_hash: None,
        line: 2,
    };
    runs.add_snapshot_rows(r.id, &[row]).await.unwrap();
    let kept = Run {
        consumer_id: Some(consumer_id("billing")),
        ..new_run(RunKind::Snapshot, Utc::now())
    };
    started_ok(&runs, &kept).await;
    runs.add_findings(kept.id, &[finding(1, &customer.to_string())])
        .await
        .unwrap();
    runs.discard(r.id).await.unwrap();
    assert_eq!(runs.get(r.id).await.unwrap(), None);
    assert!(runs.findings(r.id, 0, 10).await.unwrap().is_empty());
    assert!(
        runs.snapshot_rows_of(r.id, &[customer])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(runs.findings(kept.id, 0, 10).await.unwrap().len(), 1);
    // The consumer's next run starts.
    started_ok(&runs, &new_run(RunKind::Acks, Utc::now())).await;
}
