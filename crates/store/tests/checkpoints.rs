//! Signed checkpoints of the log, on both engines: an untouched log passes its checkpoints
//! (also over an erasure), and each kind of tampering that keeps every stream's chain valid —
//! a payload changed and its stream re-hashed, two events' positions swapped, a whole
//! customer's stream deleted and the log renumbered — is caught by them; forged checkpoints,
//! unknown and unpinned keys are refused. Also: a store whose events were hashed before
//! chain v2 verifies, and goes on in v2.
//!
//! - [x] `Ledger::sign_checkpoint`, `Ledger::verify` (stored checkpoints),
//!   `Ledger::verify_checkpoints` (an export, pinned or not), `Checkpoints::export`, `list`,
//!   `latest`, `public_keys`, `SigningKeys::in_use`; the rewrap in keys.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use ed25519_dalek::{Signer as _, SigningKey};
use idledger_domain::Change;
use idledger_domain::ids::CustomerId;
use idledger_store::checkpoints::{
    CHECKPOINT_PURPOSE, CheckpointExport, CheckpointFailure, kid_of, signed_message,
};
use idledger_store::{Checkpoint, VerifyReport};
use serde_json::json;
use support::*;
use uuid::Uuid;

on_both_engines!(
    an_untouched_log_passes_its_checkpoints_also_over_an_erasure,
    a_payload_changed_and_its_stream_rehashed_is_caught,
    swapped_positions_are_caught,
    a_deleted_customer_with_the_log_renumbered_is_caught,
    forged_checkpoints_and_keys_not_pinned_are_refused,
    a_log_hashed_before_v2_verifies_and_goes_on_in_v2,
);

/// Three customers whose events interleave in the log: positions 1–6 (register and email,
/// two each), checkpoint at 6; then 7–9 (a name each), checkpoint at 9.
struct Signed {
    store: TestStore,
    customers: Vec<CustomerId>,
    export: CheckpointExport,
}

async fn signed_sample(engine: Engine) -> Signed {
    let store = TestStore::new(engine).await;
    let mut customers = Vec::new();
    for i in 0..3 {
        let c = new_customer();
        run(
            &store.ledger,
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
    let first = store.ledger.sign_checkpoint().await.unwrap().unwrap();
    assert!(first.new);
    assert_eq!(first.checkpoint.position, 6);
    for c in &customers {
        run(
            &store.ledger,
            "idp",
            *c,
            vec![set("name.given", json!("Ada"))],
        )
        .await;
    }
    let second = store.ledger.sign_checkpoint().await.unwrap().unwrap();
    assert_eq!(second.checkpoint.position, 9);
    assert_eq!(second.checkpoint.kid, first.checkpoint.kid);
    let export = store.ledger.store().checkpoints().export().await.unwrap();
    assert_eq!(export.checkpoints.len(), 2);
    assert_eq!(export.keys.len(), 1);
    Signed {
        store,
        customers,
        export,
    }
}

/// `(position, failure)` of every checkpoint checked.
fn failures(report: &VerifyReport) -> Vec<(u64, Option<CheckpointFailure>)> {
    report
        .checkpoints
        .iter()
        .map(|c| (c.position, c.failure.clone()))
        .collect()
}

fn changed(unchanged_up_to: u64, first_broken: Option<u64>) -> Option<CheckpointFailure> {
    Some(CheckpointFailure::LogChanged {
        unchanged_up_to,
        first_broken,
    })
}

async fn verify_export(s: &Signed, pinned: Option<&[u8]>) -> VerifyReport {
    s.store
        .ledger
        .verify_checkpoints(&s.export, pinned, &|_, _| {})
        .await
        .unwrap()
}

async fn verify_stored(s: &Signed) -> VerifyReport {
    s.store.ledger.verify(&|_, _| {}).await.unwrap()
}

/// Raw access to the database, as someone who can write to it has.
enum Raw {
    Pg(sqlx::PgPool),
    Lite(sqlx::SqlitePool),
}

enum Val {
    Int(i64),
    Bytes(Vec<u8>),
}

impl Raw {
    /// Connects and disables the event log's append-only triggers.
    async fn unlocked(db: &TestDb) -> Self {
        match db.engine {
            Engine::Postgres => {
                db.exec("ALTER TABLE events DISABLE TRIGGER events_append_only")
                    .await;
                Self::Pg(db.pg().await)
            }
            Engine::Sqlite => {
                db.exec("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete")
                    .await;
                Self::Lite(db.sqlite().await)
            }
        }
    }

    /// `<statement>` with `$1` = `value` and `$2` = `id`.
    async fn exec(&self, statement: &'static str, value: Option<Val>, id: Uuid) {
        macro_rules! run {
            ($pool:expr) => {{
                let mut q = sqlx::query(statement);
                match value {
                    Some(Val::Int(v)) => q = q.bind(v),
                    Some(Val::Bytes(v)) => q = q.bind(v),
                    None => {}
                }
                q.bind(id).execute($pool).await.unwrap();
            }};
        }
        match self {
            Self::Pg(pool) => run!(pool),
            Self::Lite(pool) => run!(pool),
        }
    }

    async fn set_position(&self, event: Uuid, position: u64) {
        let position = i64::try_from(position).unwrap();
        self.exec(
            "UPDATE events SET global_position = $1 WHERE event_id = $2",
            Some(Val::Int(position)),
            event,
        )
        .await;
    }

    /// Recomputes every stream's chain over what is stored now, as an attacker who rewrote
    /// the log would, so that every chain holds again.
    async fn rechain(&self, store: &TestStore) {
        let log = store.ledger.store().log();
        let versions = log.chain_versions().await.unwrap();
        let mut heads: std::collections::HashMap<Uuid, Vec<u8>> = Default::default();
        for raw in log.read_all(0, 100_000).await.unwrap() {
            let prev = heads
                .get(&raw.customer_id)
                .cloned()
                .unwrap_or(idledger_store::chain::GENESIS.to_vec());
            let hash = versions.event_hash(&prev, &raw.chain_input()).to_vec();
            if hash != raw.hash {
                self.exec(
                    "UPDATE events SET hash = $1 WHERE event_id = $2",
                    Some(Val::Bytes(hash.clone())),
                    raw.event_id,
                )
                .await;
            }
            heads.insert(raw.customer_id, hash);
        }
    }
}

async fn event_at(store: &TestStore, position: u64) -> idledger_store::model::RawEvent {
    let raw = store
        .ledger
        .store()
        .log()
        .read_all(position - 1, 1)
        .await
        .unwrap();
    assert_eq!(raw[0].global_position, position);
    raw[0].clone()
}

async fn an_untouched_log_passes_its_checkpoints_also_over_an_erasure(engine: Engine) {
    let s = signed_sample(engine).await;
    let report = verify_stored(&s).await;
    assert!(report.intact(), "{report:?}");
    assert_eq!(failures(&report), vec![(6, None), (9, None)]);
    let report = verify_export(&s, None).await;
    assert!(report.intact(), "{report:?}");
    assert_eq!(report.checkpoints.len(), 2);
    let public = s.export.keys[0].public_key.clone();
    assert_eq!(kid_of(&public), s.export.keys[0].kid);
    assert_eq!(s.export.keys[0].purpose, CHECKPOINT_PURPOSE);
    assert!(verify_export(&s, Some(&public)).await.intact());

    // Nothing new: the latest checkpoint stands, none is added.
    let again = s.store.ledger.sign_checkpoint().await.unwrap().unwrap();
    assert!(!again.new);
    assert_eq!(again.checkpoint, s.export.checkpoints[1]);

    // Erasure destroys a data key, never an event row: every checkpoint still holds, and
    // the next one is signed over the erasure.
    erase(&s.store.ledger, s.customers[1]).await;
    let next = s.store.ledger.sign_checkpoint().await.unwrap().unwrap();
    assert!(next.new);
    assert_eq!(next.checkpoint.position, 10);
    let report = verify_stored(&s).await;
    assert!(report.intact(), "{report:?}");
    assert_eq!(failures(&report), vec![(6, None), (9, None), (10, None)]);
    assert!(verify_export(&s, Some(&public)).await.intact());
    // A second ledger (another process) sees the same checkpoints and signs with the same key.
    let other = s.store.another_ledger().await;
    run(
        &other,
        "idp",
        s.customers[0],
        vec![set("name.given", json!("Eve"))],
    )
    .await;
    let signed = other.sign_checkpoint().await.unwrap().unwrap();
    assert_eq!(
        (signed.checkpoint.position, signed.checkpoint.kid.as_str()),
        (11, s.export.keys[0].kid.as_str())
    );
    assert!(other.verify(&|_, _| {}).await.unwrap().intact());
}

async fn a_payload_changed_and_its_stream_rehashed_is_caught(engine: Engine) {
    let s = signed_sample(engine).await;
    let raw = Raw::unlocked(&s.store.db).await;
    // Customer 1's email (position 4): altered, not yet re-hashed.
    let mut event = event_at(&s.store, 4).await;
    event.payload[30] ^= 1;
    raw.exec(
        "UPDATE events SET payload = $1 WHERE event_id = $2",
        Some(Val::Bytes(event.payload.clone())),
        event.event_id,
    )
    .await;
    let report = verify_stored(&s).await;
    assert_eq!(report.first_broken.as_ref().unwrap().global_position, 4);
    assert_eq!(
        failures(&report),
        vec![(6, changed(0, Some(4))), (9, changed(0, Some(4)))]
    );
    // Re-hashed: every chain holds, only the checkpoints tell.
    raw.rechain(&s.store).await;
    let report = verify_stored(&s).await;
    assert_eq!(report.first_broken, None);
    assert!(!report.intact());
    assert_eq!(
        failures(&report),
        vec![(6, changed(0, None)), (9, changed(0, None))]
    );
    let report = verify_export(&s, Some(&s.export.keys[0].public_key)).await;
    assert_eq!(
        failures(&report),
        vec![(6, changed(0, None)), (9, changed(0, None))]
    );
    // Signing refuses nothing it cannot check, but never vouches for the rewritten log:
    // the next checkpoint builds on the signed one, so it fails too.
    run(
        &s.store.ledger,
        "idp",
        s.customers[0],
        vec![set("name.given", json!("Eve"))],
    )
    .await;
    s.store.ledger.sign_checkpoint().await.unwrap().unwrap();
    let report = verify_stored(&s).await;
    assert_eq!(
        failures(&report),
        vec![
            (6, changed(0, None)),
            (9, changed(0, None)),
            (10, changed(0, None))
        ]
    );
}

async fn swapped_positions_are_caught(engine: Engine) {
    let s = signed_sample(engine).await;
    let raw = Raw::unlocked(&s.store.db).await;
    // Customer 0's and customer 1's names (7 and 8), after the first checkpoint.
    let (a, b) = (event_at(&s.store, 7).await, event_at(&s.store, 8).await);
    assert_ne!(a.customer_id, b.customer_id);
    raw.set_position(a.event_id, 1_000_007).await;
    raw.set_position(b.event_id, 7).await;
    raw.set_position(a.event_id, 8).await;
    // The chain covers positions (v2): a move breaks it...
    let report = verify_stored(&s).await;
    assert_eq!(report.first_broken.as_ref().unwrap().global_position, 7);
    // ...until the streams are re-hashed; the checkpoint after the swap still tells.
    raw.rechain(&s.store).await;
    let report = verify_stored(&s).await;
    assert_eq!(report.first_broken, None);
    assert_eq!(failures(&report), vec![(6, None), (9, changed(6, None))]);
    let report = verify_export(&s, None).await;
    assert_eq!(failures(&report), vec![(6, None), (9, changed(6, None))]);
}

async fn a_deleted_customer_with_the_log_renumbered_is_caught(engine: Engine) {
    let s = signed_sample(engine).await;
    let raw = Raw::unlocked(&s.store.db).await;
    let gone = s.customers[1].as_uuid();
    let events = s.store.ledger.store().log().read_all(0, 100).await.unwrap();
    for e in events.iter().filter(|e| e.customer_id == gone) {
        raw.exec("DELETE FROM events WHERE event_id = $1", None, e.event_id)
            .await;
    }
    raw.exec("DELETE FROM projections WHERE customer_id = $1", None, gone)
        .await;
    raw.exec("DELETE FROM data_keys WHERE customer_id = $1", None, gone)
        .await;
    // Renumbered without holes: out of the way first, then 1, 2, 3…
    let kept: Vec<_> = events.iter().filter(|e| e.customer_id != gone).collect();
    for e in &kept {
        raw.set_position(e.event_id, e.global_position + 1_000_000)
            .await;
    }
    for (position, e) in (1u64..).zip(&kept) {
        raw.set_position(e.event_id, position).await;
    }
    raw.rechain(&s.store).await;
    let report = verify_stored(&s).await;
    // Every chain, position and record length holds: only the checkpoints tell.
    assert_eq!((report.first_broken.clone(), report.events), (None, 6));
    assert_eq!(
        failures(&report),
        vec![
            (6, changed(0, None)),
            (9, Some(CheckpointFailure::LogShorter { head: 6 }))
        ]
    );
    let report = verify_export(&s, Some(&s.export.keys[0].public_key)).await;
    assert!(!report.intact());
    assert_eq!(
        report.checkpoints[1].failure,
        Some(CheckpointFailure::LogShorter { head: 6 })
    );
}

async fn forged_checkpoints_and_keys_not_pinned_are_refused(engine: Engine) {
    let s = signed_sample(engine).await;
    let public = s.export.keys[0].public_key.clone();
    let check = |export: CheckpointExport, pinned: Option<Vec<u8>>| {
        let ledger = s.store.ledger.clone();
        async move {
            failures(
                &ledger
                    .verify_checkpoints(&export, pinned.as_deref(), &|_, _| {})
                    .await
                    .unwrap(),
            )
        }
    };
    // A signature or a signed value altered.
    let mut export = s.export.clone();
    export.checkpoints[0].signature[5] ^= 1;
    export.checkpoints[1].log_hash[0] ^= 1;
    let invalid = Some(CheckpointFailure::SignatureInvalid);
    assert_eq!(
        check(export, None).await,
        vec![(6, invalid.clone()), (9, invalid.clone())]
    );
    // Pinned to another key.
    let stranger = SigningKey::from_bytes(&[9u8; 32]);
    let stranger_public = stranger.verifying_key().to_bytes().to_vec();
    let not_pinned = Some(CheckpointFailure::NotPinnedKey {
        pinned_kid: kid_of(&stranger_public),
    });
    assert_eq!(
        check(s.export.clone(), Some(stranger_public.clone())).await,
        vec![(6, not_pinned.clone()), (9, not_pinned)]
    );
    // A file whose key's id is not its public key's, or that lacks the key.
    let mut export = s.export.clone();
    export.keys[0].public_key.clone_from(&stranger_public);
    assert_eq!(
        check(export, None).await[0],
        (6, Some(CheckpointFailure::UnknownKey))
    );
    let mut export = s.export.clone();
    export.keys.clear();
    assert_eq!(
        check(export, None).await[1],
        (9, Some(CheckpointFailure::UnknownKey))
    );

    // Someone who rewrote the log and signs their own file passes on the file's word alone,
    // which is why a verifier pins the key it was given.
    let raw = Raw::unlocked(&s.store.db).await;
    let mut event = event_at(&s.store, 2).await;
    event.payload[30] ^= 1;
    raw.exec(
        "UPDATE events SET payload = $1 WHERE event_id = $2",
        Some(Val::Bytes(event.payload.clone())),
        event.event_id,
    )
    .await;
    raw.rechain(&s.store).await;
    let log = s.store.ledger.store().log();
    let mut hash = idledger_store::chain::LOG_GENESIS;
    let mut forged = s.export.clone();
    for e in log.read_all(0, 100).await.unwrap() {
        hash = idledger_store::chain::log_hash(&hash, e.global_position, &e.hash);
        for c in forged
            .checkpoints
            .iter_mut()
            .filter(|c| c.position == e.global_position)
        {
            forge(c, &stranger, hash);
        }
    }
    forged.keys[0].public_key.clone_from(&stranger_public);
    forged.keys[0].kid = kid_of(&stranger_public);
    assert_eq!(
        check(forged.clone(), None).await,
        vec![(6, None), (9, None)]
    );
    let not_pinned = Some(CheckpointFailure::NotPinnedKey {
        pinned_kid: kid_of(&public),
    });
    assert_eq!(
        check(forged, Some(public.clone())).await,
        vec![(6, not_pinned.clone()), (9, not_pinned)]
    );
    assert_eq!(
        check(s.export.clone(), Some(public)).await,
        vec![(6, changed(0, None)), (9, changed(0, None))]
    );

    // A stored checkpoint altered in the database: refused, and never built on.
    match engine {
        Engine::Postgres => {
            s.store
                .db
                .exec("ALTER TABLE checkpoints DISABLE TRIGGER checkpoints_append_only")
                .await;
        }
        Engine::Sqlite => s.store.db.exec("DROP TRIGGER checkpoints_no_update").await,
    }
    s.store
        .db
        .exec("UPDATE checkpoints SET position = 10 WHERE position = 9")
        .await;
    let report = verify_stored(&s).await;
    assert_eq!(report.checkpoints[1].failure, invalid);
    let refused = s.store.ledger.sign_checkpoint().await.unwrap_err();
    assert!(refused.to_string().contains("does not verify"), "{refused}");
}

fn forge(c: &mut Checkpoint, key: &SigningKey, log_hash: [u8; 32]) {
    c.log_hash = log_hash.to_vec();
    c.kid = kid_of(&key.verifying_key().to_bytes());
    c.signature = key
        .sign(&signed_message(c.position, &log_hash, c.signed_at))
        .to_bytes()
        .to_vec();
}

async fn a_log_hashed_before_v2_verifies_and_goes_on_in_v2(engine: Engine) {
    let store = TestStore::new(engine).await;
    let c = new_customer();
    run(
        &store.ledger,
        "idp",
        c,
        vec![Change::Register, set("email", json!("a@example.org"))],
    )
    .await;
    run(
        &store.ledger,
        "idp",
        c,
        vec![set("name.given", json!("Ada"))],
    )
    .await;
    // What a store from before v2 holds: v1 hashes, and the boundary after them (as the
    // migration records it).
    store.db.exec("UPDATE log_chain SET v2_from = 4").await;
    let raw = Raw::unlocked(&store.db).await;
    raw.rechain(&store).await;
    let log = store.ledger.store().log();
    let v1 = log.read_all(0, 10).await.unwrap();
    let first = &v1[0];
    assert_eq!(
        first.hash,
        idledger_store::chain::event_hash_v1(&idledger_store::chain::GENESIS, &first.chain_input())
            .to_vec(),
        "the old events are v1"
    );
    let report = store.ledger.verify(&|_, _| {}).await.unwrap();
    assert!(report.intact(), "{report:?}");
    run(
        &store.ledger,
        "idp",
        c,
        vec![set("name.given", json!("Eve"))],
    )
    .await;
    let last = log.read_all(3, 10).await.unwrap().remove(0);
    assert_eq!(
        last.hash,
        idledger_store::chain::event_hash(&v1[2].hash, &last.chain_input()).to_vec(),
        "new events are v2, chained onto the v1 ones"
    );
    store.ledger.sign_checkpoint().await.unwrap().unwrap();
    let report = store.ledger.verify(&|_, _| {}).await.unwrap();
    assert!(report.intact(), "{report:?}");
    assert_eq!((report.events, report.checkpoints.len()), (4, 1));
}
