//! The blind index (`lookup_index`), on both engines: finding customers by identifier.
//!
//! - [x] `Ledger::find` — by each identifier however written; after a change, a clear, a
//!   pending change and its confirmation; a shared identifier; after erasure
//! - [x] the append keeps the index (per-append and PostgreSQL's bulk path, many customers in
//!   one batch)
//! - [x] `Ledger::rebuild` — a lost, a stale and a foreign row rewritten (`reindexed_count`);
//!   a rebuild with nothing to do rewrites nothing
//! - [x] `Ledger::run_pending_upgrades` — `lookup_index` fills the index of customers written
//!   before it; migration 0023 queues it again for stores whose records held a household
//!   before households were identifiers (and not for others)
//! - [x] the table holds no plaintext: digests only, keyed
//! - [x] `Ledger::duplicate_candidates` — every match key, at most so many a key, in one
//!   statement
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use idledger_domain::Change;
use idledger_domain::decide::Outcome;
use idledger_domain::ids::CustomerId;
use idledger_domain::lookup::{Identifier, LookupKind};
use sha2::{Digest as _, Sha256};
use support::*;

on_both_engines!(
    each_identifier_finds_its_customer_however_written,
    a_changed_value_replaces_its_digest_and_a_cleared_one_removes_it,
    a_pending_value_is_not_found_until_verified,
    a_shared_identifier_finds_every_customer_holding_it,
    an_erased_customer_is_found_by_nothing,
    many_customers_in_one_batch_are_each_indexed,
    rebuild_rewrites_a_lost_stale_or_foreign_index_row,
    the_upgrade_indexes_customers_written_before_the_index,
    households_held_before_they_were_identifiers_are_indexed_at_the_next_start,
    the_index_holds_keyed_digests_and_no_plaintext,
    duplicate_candidates_are_found_by_every_match_key_so_many_a_key,
);

fn id(kind: LookupKind, raw: &str) -> Identifier {
    Identifier::parse(kind, raw).unwrap()
}

async fn find(store: &TestStore, kind: LookupKind, raw: &str) -> Vec<CustomerId> {
    store.ledger.find(&id(kind, raw), 100).await.unwrap()
}

/// Ada, registered by the idp with every identifier (verified: the idp's commands carry
/// evidence).
async fn ada(store: &TestStore) -> CustomerId {
    let customer = new_customer();
    run(
        &store.ledger,
        "idp",
        customer,
        vec![
            Change::Register,
            set("email", serde_json::json!("ada@example.org")),
            set("phone", serde_json::json!("+44 20 7946 0958")),
            set("name.given", serde_json::json!("Ada")),
            set("name.family", serde_json::json!("Lovelace")),
            set("external_id.crm", serde_json::json!("C-42")),
        ],
    )
    .await;
    customer
}

async fn index_rows(db: &TestDb) -> i64 {
    count(db, "SELECT COUNT(*) FROM lookup_index").await
}

async fn each_identifier_finds_its_customer_however_written(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    let other = ada_like_nobody(&store).await;
    for (kind, raw) in [
        (LookupKind::Email, "ada@example.org"),
        (LookupKind::Email, "  ADA@Example.Org "),
        (LookupKind::Phone, "+442079460958"),
        (LookupKind::Phone, "0044 (0)20 7946-0958"),
        (LookupKind::ExternalId, "crm:C-42"),
        (LookupKind::Name, "Ada Lovelace"),
        (LookupKind::Name, "  ada   LOVELACE "),
    ] {
        assert_eq!(find(&store, kind, raw).await, [customer], "{kind} {raw}");
    }
    // Near misses: another system's id, the id in another case, a part of the name.
    for (kind, raw) in [
        (LookupKind::ExternalId, "cdp:C-42"),
        (LookupKind::ExternalId, "crm:c-42"),
        (LookupKind::Name, "Ada"),
        (LookupKind::Email, "ada@example.com"),
    ] {
        assert!(find(&store, kind, raw).await.is_empty(), "{kind} {raw}");
    }
    assert_eq!(
        find(&store, LookupKind::Email, "grace@example.org").await,
        [other]
    );
    // Four identifiers each: email, phone, external id, full name.
    assert_eq!(index_rows(&store.db).await, 8);
}

/// A second customer, so that an index answering everything would be caught.
async fn ada_like_nobody(store: &TestStore) -> CustomerId {
    let customer = new_customer();
    run(
        &store.ledger,
        "idp",
        customer,
        vec![
            Change::Register,
            set("email", serde_json::json!("grace@example.org")),
            set("phone", serde_json::json!("+1 202 555 0143")),
            set("name.given", serde_json::json!("Grace")),
            set("name.family", serde_json::json!("Hopper")),
            set("external_id.crm", serde_json::json!("C-43")),
        ],
    )
    .await;
    customer
}

async fn a_changed_value_replaces_its_digest_and_a_cleared_one_removes_it(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    run(
        &store.ledger,
        "idp",
        customer,
        vec![
            set("email", serde_json::json!("countess@example.org")),
            set("name.family", serde_json::json!("King")),
        ],
    )
    .await;
    assert!(
        find(&store, LookupKind::Email, "ada@example.org")
            .await
            .is_empty()
    );
    assert!(
        find(&store, LookupKind::Name, "Ada Lovelace")
            .await
            .is_empty()
    );
    assert_eq!(
        find(&store, LookupKind::Email, "countess@example.org").await,
        [customer]
    );
    assert_eq!(find(&store, LookupKind::Name, "ada king").await, [customer]);
    run(
        &store.ledger,
        "idp",
        customer,
        vec![Change::ClearField {
            field: field("phone"),
            expected_version: None,
        }],
    )
    .await;
    assert!(
        find(&store, LookupKind::Phone, "+442079460958")
            .await
            .is_empty()
    );
    // Email, name, external id are left.
    assert_eq!(index_rows(&store.db).await, 3);
    // A command that changes no identifier writes no index row and keeps those there.
    run(
        &store.ledger,
        "web_app",
        customer,
        vec![set("preferences.newsletter", serde_json::json!(true))],
    )
    .await;
    assert_eq!(
        find(&store, LookupKind::ExternalId, "crm:C-42").await,
        [customer]
    );
    assert_eq!(index_rows(&store.db).await, 3);
}

async fn a_pending_value_is_not_found_until_verified(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    let executed = store
        .ledger
        .execute(
            &source("web_app"),
            &fresh_command(
                customer,
                vec![request_change(
                    "email",
                    serde_json::json!("new-ada@example.org"),
                )],
            ),
        )
        .await
        .unwrap();
    let Outcome::Pending { challenge_id, .. } = &executed.result.outcomes[0] else {
        panic!("not pending: {:?}", executed.result.outcomes);
    };
    assert!(
        find(&store, LookupKind::Email, "new-ada@example.org")
            .await
            .is_empty(),
        "a pending value is not the customer's yet"
    );
    assert_eq!(
        find(&store, LookupKind::Email, "ada@example.org").await,
        [customer]
    );
    run(
        &store.ledger,
        "web_app",
        customer,
        vec![Change::ConfirmVerification {
            field: field("email"),
            challenge_id: *challenge_id,
            secret: store.ledger.challenge_secret(*challenge_id),
        }],
    )
    .await;
    assert_eq!(
        find(&store, LookupKind::Email, "new-ada@example.org").await,
        [customer]
    );
    assert!(
        find(&store, LookupKind::Email, "ada@example.org")
            .await
            .is_empty()
    );
}

async fn a_shared_identifier_finds_every_customer_holding_it(engine: Engine) {
    let store = TestStore::new(engine).await;
    let ada = ada(&store).await;
    let byron = new_customer();
    run(
        &store.ledger,
        "idp",
        byron,
        vec![
            Change::Register,
            set("phone", serde_json::json!("+44 20 7946 0958")),
        ],
    )
    .await;
    let mut both = vec![ada, byron];
    both.sort_unstable();
    assert_eq!(find(&store, LookupKind::Phone, "+442079460958").await, both);
    // The limit is the caller's.
    assert_eq!(
        store
            .ledger
            .find(&id(LookupKind::Phone, "+442079460958"), 1)
            .await
            .unwrap(),
        both[..1]
    );
}

async fn an_erased_customer_is_found_by_nothing(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    let other = ada_like_nobody(&store).await;
    erase(&store.ledger, customer).await;
    for (kind, raw) in [
        (LookupKind::Email, "ada@example.org"),
        (LookupKind::Phone, "+442079460958"),
        (LookupKind::ExternalId, "crm:C-42"),
        (LookupKind::Name, "Ada Lovelace"),
    ] {
        assert!(find(&store, kind, raw).await.is_empty(), "{kind}");
    }
    let sql = format!(
        "SELECT COUNT(*) FROM lookup_index WHERE customer_id = {}",
        uuid_literal(&store.db, customer)
    );
    assert_eq!(count(&store.db, &sql).await, 0);
    assert_eq!(
        find(&store, LookupKind::Email, "grace@example.org").await,
        [other]
    );
    // Rebuilding over the erasure finds nothing to index for the erased customer.
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(report.reindexed_count, 0);
    assert_eq!(index_rows(&store.db).await, 4);
}

/// A customer id as a literal of the engine's column type.
fn uuid_literal(db: &TestDb, customer: CustomerId) -> String {
    match db.engine {
        Engine::Postgres => format!("'{customer}'"),
        Engine::Sqlite => format!("X'{}'", customer.as_uuid().simple()),
    }
}

async fn many_customers_in_one_batch_are_each_indexed(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customers: Vec<CustomerId> = (0..40).map(|_| new_customer()).collect();
    // Registered concurrently: the writer groups them into batches (PostgreSQL's bulk path).
    futures::future::join_all(customers.iter().enumerate().map(|(n, c)| {
        run(
            &store.ledger,
            "idp",
            *c,
            vec![Change::Register, set("email", email(n))],
        )
    }))
    .await;
    // And changed concurrently, twice each: the batch's last append of a customer stands.
    for round in [100, 200] {
        futures::future::join_all(customers.iter().enumerate().map(|(n, c)| {
            run(
                &store.ledger,
                "idp",
                *c,
                vec![set("email", email(round + n))],
            )
        }))
        .await;
    }
    for (n, c) in customers.iter().enumerate() {
        let now = email(200 + n);
        assert_eq!(
            find(&store, LookupKind::Email, now.as_str().unwrap()).await,
            [*c]
        );
        for old in [email(n), email(100 + n)] {
            assert!(
                find(&store, LookupKind::Email, old.as_str().unwrap())
                    .await
                    .is_empty()
            );
        }
    }
    assert_eq!(index_rows(&store.db).await, 40);
}

async fn rebuild_rewrites_a_lost_stale_or_foreign_index_row(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    let other = ada_like_nobody(&store).await;
    let before = answers(&store).await;
    assert_eq!(before, (vec![customer], vec![other], vec![other]));
    let nothing_to_do = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(nothing_to_do.reindexed_count, 0);
    assert!(nothing_to_do.identical);

    // Ada's rows lost, a stale digest given to Grace, a row of a customer nobody knows.
    let lost = format!(
        "DELETE FROM lookup_index WHERE customer_id = {}",
        uuid_literal(&store.db, customer)
    );
    let stranger = new_customer();
    let stale = format!(
        "INSERT INTO lookup_index (digest, customer_id) VALUES ({}, {}), ({}, {})",
        bytes_literal(&store.db, &[7; 32]),
        uuid_literal(&store.db, other),
        bytes_literal(&store.db, &[8; 32]),
        uuid_literal(&store.db, stranger)
    );
    execute(&store.db, &lost).await;
    execute(&store.db, &stale).await;
    assert!(
        find(&store, LookupKind::Email, "ada@example.org")
            .await
            .is_empty()
    );
    let report = store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(report.reindexed_count, 3, "Ada, Grace and the stranger");
    assert_eq!(answers(&store).await, before);
    assert_eq!(index_rows(&store.db).await, 8);
    assert_eq!(
        store
            .ledger
            .rebuild(&|_, _| {})
            .await
            .unwrap()
            .reindexed_count,
        0
    );
}

async fn answers(store: &TestStore) -> (Vec<CustomerId>, Vec<CustomerId>, Vec<CustomerId>) {
    (
        find(store, LookupKind::Email, "ada@example.org").await,
        find(store, LookupKind::Name, "grace hopper").await,
        find(store, LookupKind::ExternalId, "crm:C-43").await,
    )
}

fn bytes_literal(db: &TestDb, bytes: &[u8]) -> String {
    match db.engine {
        Engine::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
        Engine::Sqlite => format!("X'{}'", hex::encode(bytes)),
    }
}

async fn execute(db: &TestDb, sql: &str) {
    match db.engine {
        Engine::Postgres => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&db.pg().await)
                .await
                .unwrap();
        }
        Engine::Sqlite => {
            sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .execute(&db.sqlite().await)
                .await
                .unwrap();
        }
    }
}

async fn the_upgrade_indexes_customers_written_before_the_index(engine: Engine) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    let other = ada_like_nobody(&store).await;
    let erased = ada_like_nobody(&store).await;
    erase(&store.ledger, erased).await;
    // As a store migrated to 0022 finds itself: customers with values, no index, the
    // upgrade pending.
    execute(&store.db, "DELETE FROM lookup_index").await;
    execute(
        &store.db,
        "INSERT INTO pending_upgrades (name) VALUES ('lookup_index')",
    )
    .await;
    assert!(
        find(&store, LookupKind::Email, "ada@example.org")
            .await
            .is_empty()
    );
    // The process that opens the store with the key runs it, once.
    let ran = store.ledger.run_pending_upgrades().await.unwrap();
    assert_eq!(ran, ["lookup_index"]);
    assert_eq!(
        find(&store, LookupKind::Email, "ada@example.org").await,
        [customer]
    );
    assert_eq!(
        find(&store, LookupKind::ExternalId, "crm:C-43").await,
        [other]
    );
    assert_eq!(
        find(&store, LookupKind::Phone, "+1 202 555 0143").await,
        [other]
    );
    assert_eq!(index_rows(&store.db).await, 8, "nothing for the erased one");
    assert!(
        store
            .ledger
            .run_pending_upgrades()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .ledger
            .rebuild(&|_, _| {})
            .await
            .unwrap()
            .reindexed_count,
        0,
        "the upgrade leaves what a rebuild would"
    );
}

const HOUSEHOLD: &str = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";

async fn digests(db: &TestDb) -> Vec<Vec<u8>> {
    let sql = "SELECT digest FROM lookup_index ORDER BY digest";
    match db.engine {
        Engine::Postgres => sqlx::query_scalar(sql)
            .fetch_all(&db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar(sql)
            .fetch_all(&db.sqlite().await)
            .await
            .unwrap(),
    }
}

/// Applies migration 0023 again, as a store migrated to 0022 would at its next start.
async fn migrate_to_0023_again(store: &TestStore) {
    execute(&store.db, "DELETE FROM _sqlx_migrations WHERE version = 23").await;
    store.db.store().await;
}

async fn households_held_before_they_were_identifiers_are_indexed_at_the_next_start(
    engine: Engine,
) {
    let store = TestStore::new(engine).await;
    let customer = ada(&store).await;
    // No record holds a household: the migration queues nothing.
    migrate_to_0023_again(&store).await;
    assert!(
        store
            .ledger
            .run_pending_upgrades()
            .await
            .unwrap()
            .is_empty()
    );
    let before = digests(&store.db).await;
    run(
        &store.ledger,
        "web_app",
        customer,
        vec![set(
            "household",
            serde_json::json!({"id": HOUSEHOLD, "role": "head"}),
        )],
    )
    .await;
    let household_rows: Vec<Vec<u8>> = digests(&store.db)
        .await
        .into_iter()
        .filter(|d| !before.contains(d))
        .collect();
    assert_eq!(household_rows.len(), 1, "one row for the household");
    assert_eq!(
        find(&store, LookupKind::Household, HOUSEHOLD).await,
        [customer]
    );
    // As a store written before households were identifiers finds itself: every other row,
    // none for the household.
    execute(
        &store.db,
        &format!(
            "DELETE FROM lookup_index WHERE digest = {}",
            bytes_literal(&store.db, &household_rows[0])
        ),
    )
    .await;
    assert!(
        find(&store, LookupKind::Household, HOUSEHOLD)
            .await
            .is_empty()
    );
    migrate_to_0023_again(&store).await;
    assert_eq!(
        store.ledger.run_pending_upgrades().await.unwrap(),
        ["lookup_index"]
    );
    assert_eq!(
        find(&store, LookupKind::Household, HOUSEHOLD).await,
        [customer]
    );
    assert_eq!(
        find(&store, LookupKind::Email, "ada@example.org").await,
        [customer]
    );
    assert_eq!(
        store
            .ledger
            .rebuild(&|_, _| {})
            .await
            .unwrap()
            .reindexed_count,
        0,
        "the upgrade leaves what a rebuild would"
    );
}

async fn the_index_holds_keyed_digests_and_no_plaintext(engine: Engine) {
    let store = TestStore::new(engine).await;
    ada(&store).await;
    let rows: Vec<Vec<u8>> = match store.db.engine {
        Engine::Postgres => sqlx::query_scalar("SELECT digest FROM lookup_index")
            .fetch_all(&store.db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar("SELECT digest FROM lookup_index")
            .fetch_all(&store.db.sqlite().await)
            .await
            .unwrap(),
    };
    assert_eq!(rows.len(), 4);
    let values = [
        "ada@example.org",
        "+442079460958",
        "c-42",
        "ada lovelace",
        "lovelace",
    ];
    for digest in &rows {
        assert_eq!(digest.len(), 32);
        let text = String::from_utf8_lossy(digest).to_lowercase();
        for value in values {
            assert!(!text.contains(value));
            // Not an unkeyed hash a dictionary reverses either.
            assert_ne!(
                digest.as_slice(),
                Sha256::digest(value.as_bytes()).as_slice()
            );
            assert_ne!(
                digest.as_slice(),
                Sha256::digest(format!("email\0{value}").as_bytes()).as_slice()
            );
        }
    }
    // Another master key (another derivation root) gives other digests of the same value.
    let elsewhere = TestStore::new(engine).await;
    ada(&elsewhere).await;
    let theirs: Vec<Vec<u8>> = match elsewhere.db.engine {
        Engine::Postgres => sqlx::query_scalar("SELECT digest FROM lookup_index")
            .fetch_all(&elsewhere.db.pg().await)
            .await
            .unwrap(),
        Engine::Sqlite => sqlx::query_scalar("SELECT digest FROM lookup_index")
            .fetch_all(&elsewhere.db.sqlite().await)
            .await
            .unwrap(),
    };
    assert!(theirs.iter().all(|d| !rows.contains(d)));
}

async fn duplicate_candidates_are_found_by_every_match_key_so_many_a_key(engine: Engine) {
    let store = TestStore::new(engine).await;
    let holding = |field: &'static str, value: &'static str| {
        let store = &store;
        async move {
            let customer = new_customer();
            run(
                &store.ledger,
                "idp",
                customer,
                vec![Change::Register, set(field, serde_json::json!(value))],
            )
            .await;
            customer
        }
    };
    // Three customers share an external id, three others a phone (ids in creation order).
    let mut by_id = Vec::new();
    for _ in 0..3 {
        by_id.push(holding("external_id.crm", "C-7").await);
    }
    let mut by_phone = Vec::new();
    for _ in 0..3 {
        by_phone.push(holding("phone", "+44 20 7946 0958").await);
    }
    let subject = new_customer();
    run(
        &store.ledger,
        "idp",
        subject,
        vec![
            Change::Register,
            set("external_id.crm", serde_json::json!("C-7")),
            set("phone", serde_json::json!("+44 20 7946 0958")),
        ],
    )
    .await;
    let state = store.ledger.state(subject).await.unwrap().unwrap();
    // One more than asked a key (the subject's own row may be among them), without the
    // subject: the first two of each key's customers, by id.
    let found = store
        .ledger
        .duplicate_candidates(subject, &state, 1)
        .await
        .unwrap();
    let mut expected = vec![by_id[0], by_id[1], by_phone[0], by_phone[1]];
    expected.sort();
    assert_eq!(found, expected);
    let every = store
        .ledger
        .duplicate_candidates(subject, &state, 10)
        .await
        .unwrap();
    let mut all: Vec<CustomerId> = by_id.iter().chain(&by_phone).copied().collect();
    all.sort();
    assert_eq!(every, all);
}
