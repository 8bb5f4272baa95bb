//! Retention on both engines, with the clock injected: values and consent records expire as
//! `field_expired` events from the retention source, old handoffs, idempotency records and
//! reconciliation runs go while younger ones stay, and a dry run writes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Duration, Utc};
use idledger_app::{App, RetentionReport};
use idledger_domain::event::EventPayload;
use idledger_domain::ids::{CustomerId, EventId, Purpose};
use idledger_domain::policy::{DEFAULT_POLICY_TOML, Policy};
use idledger_domain::state::ConsentStatus;
use idledger_store::delivery::{
    ChannelKind, ConsentBasis, DeliveryCommit, Handoff, HandoffFilter, HandoffKind,
};
use idledger_store::model::truncate_to_micros;
use idledger_store::runs::{Finding, Run, RunKind, RunStatus};
use idledger_testkit::builders::{
    command, consumer, consumer_id, field, grant, new_customer, set, source,
};
use idledger_testkit::{Engine, TestStore, on_both_engines};
use serde_json::json;
use uuid::Uuid;

/// Preferences kept 730 days, marketing consents 1095; handoffs, idempotency records and
/// run reports 30 days.
fn retention_policy() -> Policy {
    let text = DEFAULT_POLICY_TOML
        .replace(
            "[fields.\"preferences.*\"]\n",
            "[fields.\"preferences.*\"]\nretain_days = 730\n",
        )
        .replace(
            "[consent_max_age_days]",
            "[consent_retention_days]\nmarketing = 1095\n\n[retention]\nhandoffs_days = 30\nidempotency_days = 30\nrun_reports_days = 30\ndisclosures_days = 30\ndecisions_days = 30\n\n[consent_max_age_days]",
        );
    Policy::from_toml(&text).unwrap()
}

struct Scene {
    store: TestStore,
    app: App,
    /// A preference and a marketing consent, both with retention; a name without.
    customer: CustomerId,
    /// Only a name: nothing of theirs expires.
    other: CustomerId,
    start: DateTime<Utc>,
}

fn no_progress() -> &'static (dyn Fn(idledger_app::RetentionProgress) + Send + Sync) {
    &|_| {}
}

async fn scene(engine: Engine) -> Scene {
    let start = Utc::now();
    let store = TestStore::with_policy(engine, retention_policy()).await;
    let app = App::new(store.ledger.clone());
    let customer = new_customer();
    let other = new_customer();
    let register = |c: CustomerId, key: &str| {
        command(
            c,
            key,
            vec![
                idledger_domain::command::Change::Register,
                set("name.given", json!("Ada")),
            ],
        )
    };
    app.run_command(&source("idp"), &register(customer, "r-1"))
        .await
        .unwrap();
    app.run_command(&source("idp"), &register(other, "r-2"))
        .await
        .unwrap();
    app.run_command(
        &source("web_app"),
        &command(
            customer,
            "p-1",
            vec![set("preferences.newsletter", json!(true))],
        ),
    )
    .await
    .unwrap();
    app.run_command(
        &source("consent_portal"),
        &command(customer, "c-1", vec![grant("marketing", None)]),
    )
    .await
    .unwrap();
    Scene {
        store,
        app,
        customer,
        other,
        start,
    }
}

on_both_engines!(
    old_decisions_are_deleted_and_younger_ones_kept,
    values_expire_as_events_of_the_retention_source,
    consents_expire_and_a_new_grant_continues_their_version,
    nothing_expires_early_and_a_changed_value_is_kept,
    a_dry_run_counts_and_writes_nothing,
    old_handoffs_are_deleted_and_younger_ones_kept,
    old_idempotency_records_are_deleted_and_younger_ones_kept,
    old_ended_runs_are_deleted_with_their_findings,
    old_disclosures_are_deleted_and_younger_ones_kept,
    racing_runs_and_commands_expire_a_value_once,
);

async fn run(s: &Scene, now: DateTime<Utc>) -> RetentionReport {
    s.app
        .retention_run(now, false, no_progress())
        .await
        .unwrap()
}

async fn values_expire_as_events_of_the_retention_source(engine: Engine) {
    let s = scene(engine).await;
    let now = s.start + Duration::days(731);
    let report = run(&s, now).await;
    assert_eq!(report.customers, 2);
    assert_eq!(report.customers_expired, 1);
    assert_eq!(report.values_expired, 1);
    assert_eq!(report.consents_expired, 0);
    let state = s.store.ledger.state(s.customer).await.unwrap().unwrap();
    assert_eq!(state.value(&field("preferences.newsletter")), None);
    assert!(state.value(&field("name.given")).is_some());
    let history = s
        .store
        .ledger
        .history(s.customer, &field("preferences.newsletter"))
        .await
        .unwrap();
    let last = &history.last().unwrap().envelope.event;
    assert!(matches!(last.payload, EventPayload::FieldExpired { .. }));
    assert_eq!(last.provenance.source.as_str(), "retention");
    assert_eq!(last.provenance.recorded_at, truncate_to_micros(now));
    let policy = s.store.ledger.policy().version();
    assert_eq!(last.policy_version, *policy);
    assert!(
        last.provenance
            .reason
            .as_deref()
            .unwrap()
            .contains(policy.as_str())
    );
    // The other customer is untouched; running again at the same instant finds nothing.
    let other = s.store.ledger.state(s.other).await.unwrap().unwrap();
    assert_eq!(other.stream_version, 2);
    assert_eq!(run(&s, now).await.values_expired, 0);
    // The projection and a rebuild from the log agree.
    let rebuilt = s.store.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert!(rebuilt.identical, "{rebuilt:?}");
    assert!(
        s.store
            .ledger
            .verify(&|_, _| {})
            .await
            .unwrap()
            .first_broken
            .is_none()
    );
}

async fn consents_expire_and_a_new_grant_continues_their_version(engine: Engine) {
    let s = scene(engine).await;
    let marketing = Purpose::parse("marketing").unwrap();
    let report = run(&s, s.start + Duration::days(1096)).await;
    assert_eq!((report.values_expired, report.consents_expired), (1, 1));
    let state = s.store.ledger.state(s.customer).await.unwrap().unwrap();
    assert!(!state.consents.contains_key(&marketing));
    assert_eq!(
        state.consent_status(&marketing, s.store.ledger.policy(), Utc::now()),
        ConsentStatus::NeverGranted
    );
    assert_eq!(state.consent_version(&marketing), 2);
    let granted = s
        .app
        .run_command(
            &source("consent_portal"),
            &command(s.customer, "c-2", vec![grant("marketing", None)]),
        )
        .await
        .unwrap();
    assert_eq!(granted.result.events.len(), 1);
    let state = s.store.ledger.state(s.customer).await.unwrap().unwrap();
    assert_eq!(state.consents[&marketing].version, 3);
    assert!(s.store.ledger.rebuild(&|_, _| {}).await.unwrap().identical);
}

async fn nothing_expires_early_and_a_changed_value_is_kept(engine: Engine) {
    let s = scene(engine).await;
    let report = run(&s, s.start + Duration::days(729)).await;
    assert_eq!((report.values_expired, report.consents_expired), (0, 0));
    // Changed now: its age counts from the change.
    s.app
        .run_command(
            &source("web_app"),
            &command(
                s.customer,
                "p-2",
                vec![set("preferences.newsletter", json!(false))],
            ),
        )
        .await
        .unwrap();
    let changed_at = Utc::now();
    let report = run(&s, changed_at + Duration::days(729)).await;
    assert_eq!(report.values_expired, 0);
    let report = run(&s, changed_at + Duration::days(731)).await;
    assert_eq!(report.values_expired, 1);
}

async fn a_dry_run_counts_and_writes_nothing(engine: Engine) {
    let s = scene(engine).await;
    old_bookkeeping(&s).await;
    let head = s.store.ledger.head_position().await.unwrap();
    let before = s.store.ledger.state(s.customer).await.unwrap();
    let now = s.start + Duration::days(2000);
    let dry = s.app.retention_run(now, true, no_progress()).await.unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.values_expired, dry.consents_expired), (1, 1));
    assert_eq!(dry.handoffs_deleted, 2);
    assert!(dry.idempotency_records_deleted >= 4);
    assert_eq!((dry.runs_deleted, dry.findings_deleted), (2, 1));
    assert_eq!(s.store.ledger.head_position().await.unwrap(), head);
    assert_eq!(s.store.ledger.state(s.customer).await.unwrap(), before);
    // The real run then does exactly what the dry run counted.
    let real = run(&s, now).await;
    assert_eq!(
        RetentionReport {
            dry_run: true,
            ..real
        },
        dry
    );
}

/// Two handoffs, a finished run with a finding and a failed run, all from the scene's start.
async fn old_bookkeeping(s: &Scene) {
    s.store
        .register(consumer(
            "crm",
            idledger_store::delivery::Channel::new(ChannelKind::Nats, None).unwrap(),
            &["*"],
            &["crm"],
        ))
        .await;
    commit_handoffs(s, &[s.start, s.start]).await;
    for status in [RunStatus::Finished, RunStatus::Failed] {
        let run = ended_run(s.start, status);
        assert_eq!(
            s.app.runs().start(&run).await.unwrap(),
            idledger_store::runs::RunStart::Started
        );
        if status == RunStatus::Finished {
            s.app
                .runs()
                .add_findings(run.id, &[finding(&s.customer)])
                .await
                .unwrap();
        }
    }
}

async fn commit_handoffs(s: &Scene, times: &[DateTime<Utc>]) {
    let crm = consumer_id("crm");
    let handoffs: Vec<Handoff> = times
        .iter()
        .map(|at| {
            let event = EventId::from(Uuid::now_v7());
            Handoff {
                consumer_id: crm.clone(),
                message_id: event.as_uuid(),
                kind: HandoffKind::Change,
                event_id: event,
                global_position: 1,
                customer_id: s.customer,
                fields: vec!["name.given".to_owned()],
                basis: vec![ConsentBasis {
                    purpose: Purpose::parse("crm").unwrap(),
                    status: ConsentStatus::Granted,
                    legal_basis: None,
                    consent_version: Some(1),
                    consent_event_id: None,
                    notice: None,
                    granted_at: None,
                    expires_at: None,
                    transfer: None,
                }],
                channel: ChannelKind::Nats,
                delivered_at: truncate_to_micros(*at),
            }
        })
        .collect();
    s.app
        .deliveries()
        .commit(&DeliveryCommit {
            outbox_done: &[],
            consumer: &crm,
            handoffs: &handoffs,
            relations: &[],
            checkpoint: None,
            at: Utc::now(),
        })
        .await
        .unwrap();
}

fn ended_run(started_at: DateTime<Utc>, status: RunStatus) -> Run {
    Run {
        id: Uuid::now_v7(),
        kind: RunKind::Acks,
        trigger: "cli".to_owned(),
        consumer_id: Some(consumer_id("crm")),
        requested_by: "steward@idledger.example".to_owned(),
        status,
        started_at: truncate_to_micros(started_at),
        finished_at: (status != RunStatus::Running).then(|| truncate_to_micros(started_at)),
        report: json!({"consumers": []}),
        error: None,
    }
}

fn finding(customer: &CustomerId) -> Finding {
    Finding {
        seq: 1,
        consumer_id: "crm".to_owned(),
        customer_id: customer.to_string(),
        field: "name.given".to_owned(),
        kind: "undelivered".to_owned(),
        detail: json!({}),
    }
}

async fn old_disclosures_are_deleted_and_younger_ones_kept(engine: Engine) {
    use idledger_store::disclosures::{Disclosure, DisclosureFilter, Recipient};
    let s = scene(engine).await;
    let log = s.store.ledger.store().disclosures();
    for at in [
        s.start,
        s.start + Duration::days(1),
        s.start + Duration::days(10),
    ] {
        log.record(&Disclosure {
            customer_id: s.customer,
            recipient: Recipient::Source(idledger_domain::ids::SourceId::parse("crm").unwrap()),
            token_id: None,
            fields: vec![idledger_domain::FieldPath::parse("email").unwrap()],
            disclosed_at: at,
        })
        .await
        .unwrap();
    }
    let listed = async || {
        log.list(&DisclosureFilter::Customer(s.customer), None, 100)
            .await
            .unwrap()
            .items
    };
    let before = listed().await.len();
    let dry = s
        .app
        .retention_run(s.start + Duration::days(32), true, no_progress())
        .await
        .unwrap();
    assert_eq!(dry.disclosures_deleted, 2);
    assert_eq!(listed().await.len(), before, "a dry run deletes nothing");
    let report = run(&s, s.start + Duration::days(32)).await;
    assert_eq!(report.disclosures_deleted, 2);
    let left = listed().await;
    assert_eq!(left.len(), before - 2);
    assert!(
        left.iter()
            .all(|d| d.disclosed_at > s.start + Duration::days(2))
    );
}

async fn old_decisions_are_deleted_and_younger_ones_kept(engine: Engine) {
    use idledger_store::decisions::{DecisionFilter, DecisionRecord};
    let s = scene(engine).await;
    let log = s.store.ledger.store().decisions();
    let records: Vec<DecisionRecord> = [
        s.start,
        s.start + Duration::days(1),
        s.start + Duration::days(10),
    ]
    .into_iter()
    .map(|at| DecisionRecord {
        decision_id: uuid::Uuid::now_v7(),
        decided_at: at,
        processor_id: "journey".to_owned(),
        token_id: uuid::Uuid::now_v7(),
        customer_id: s.customer,
        purpose: idledger_domain::ids::Purpose::parse("marketing").unwrap(),
        tiers: vec!["low".to_owned()],
        answers: vec![],
        allowed: false,
        basis: None,
        basis_event_id: None,
        basis_version: None,
        stream_version: 1,
        policy_version: "sha256:x".to_owned(),
        token_expires_at: None,
    })
    .collect();
    log.record(&records.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let filter = DecisionFilter {
        customer: Some(s.customer),
        ..DecisionFilter::default()
    };
    let listed = async || log.list(&filter, None, 100).await.unwrap().items;
    assert_eq!(listed().await.len(), 3);
    let dry = s
        .app
        .retention_run(s.start + Duration::days(32), true, no_progress())
        .await
        .unwrap();
    assert_eq!(dry.decisions_deleted, 2);
    assert_eq!(listed().await.len(), 3, "a dry run deletes nothing");
    let report = run(&s, s.start + Duration::days(32)).await;
    assert_eq!(report.decisions_deleted, 2);
    let left = listed().await;
    assert_eq!(left.len(), 1);
    assert!(left[0].decision.decided_at > s.start + Duration::days(9));
}

async fn old_handoffs_are_deleted_and_younger_ones_kept(engine: Engine) {
    let s = scene(engine).await;
    old_bookkeeping(&s).await;
    // Ten days after the start: younger than 30 days when the run looks.
    commit_handoffs(&s, &[s.start + Duration::days(10)]).await;
    let report = run(&s, s.start + Duration::days(31)).await;
    assert_eq!(report.handoffs_deleted, 2);
    let left = s
        .app
        .deliveries()
        .handoffs(&HandoffFilter::Customer(s.customer), None, 100)
        .await
        .unwrap();
    assert_eq!(left.items.len(), 1);
    assert_eq!(
        left.items[0].handoff.delivered_at,
        truncate_to_micros(s.start + Duration::days(10))
    );
    // Exactly at the limit is not older than it.
    let report = run(&s, s.start + Duration::days(40)).await;
    assert_eq!(report.handoffs_deleted, 0);
}

async fn old_idempotency_records_are_deleted_and_younger_ones_kept(engine: Engine) {
    let s = scene(engine).await;
    let app = &s.app;
    // Every record so far was made now by the database's clock: 29 days on, all stay.
    let report = run(&s, Utc::now() + Duration::days(29)).await;
    assert_eq!(report.idempotency_records_deleted, 0);
    // Age the records of the first customer's registration by 40 days, in the engine's form.
    let age = match engine {
        Engine::Postgres => {
            "UPDATE idempotency SET created_at = created_at - INTERVAL '40 days' WHERE idempotency_key = 'r-1'"
        }
        Engine::Sqlite => {
            "UPDATE idempotency SET created_at = created_at - 40 * 86400 WHERE idempotency_key = 'r-1'"
        }
    };
    s.store.db.exec(age).await;
    let report = run(&s, Utc::now()).await;
    assert_eq!(report.idempotency_records_deleted, 1);
    let idp = source("idp");
    let key = |k: &str| idledger_domain::ids::IdempotencyKey::parse(k).unwrap();
    assert!(
        app.ledger()
            .idempotent_result(&idp, &key("r-1"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        app.ledger()
            .idempotent_result(&idp, &key("r-2"))
            .await
            .unwrap()
            .is_some()
    );
}

async fn old_ended_runs_are_deleted_with_their_findings(engine: Engine) {
    let s = scene(engine).await;
    old_bookkeeping(&s).await;
    let running = ended_run(s.start, RunStatus::Running);
    assert_eq!(
        s.app.runs().start(&running).await.unwrap(),
        idledger_store::runs::RunStart::Started
    );
    let young = ended_run(s.start + Duration::days(10), RunStatus::Finished);
    assert_eq!(
        s.app.runs().start(&young).await.unwrap(),
        idledger_store::runs::RunStart::Started
    );
    let report = run(&s, s.start + Duration::days(31)).await;
    assert_eq!((report.runs_deleted, report.findings_deleted), (2, 1));
    let left: Vec<Uuid> = s
        .app
        .runs()
        .list(None, 100)
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&running.id) && left.contains(&young.id));
}

async fn racing_runs_and_commands_expire_a_value_once(engine: Engine) {
    let s = scene(engine).await;
    let now = s.start + Duration::days(731);
    let change = command(
        s.customer,
        "p-race",
        vec![set("preferences.newsletter", json!(false))],
    );
    // A second process, with its own pool and writer.
    let other = App::new(s.store.another_ledger().await);
    let web_app = source("web_app");
    let (a, b, c) = tokio::join!(
        s.app.retention_run(now, false, no_progress()),
        other.retention_run(now, false, no_progress()),
        s.app.run_command(&web_app, &change),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    c.unwrap();
    // Whatever the order, each value is expired once: the loser of a race decides again on
    // the stream as the winner left it.
    let history = s
        .store
        .ledger
        .history(s.customer, &field("preferences.newsletter"))
        .await
        .unwrap();
    let expired: Vec<bool> = history
        .iter()
        .map(|e| matches!(e.envelope.event.payload, EventPayload::FieldExpired { .. }))
        .collect();
    assert!(
        !expired.windows(2).any(|w| w[0] && w[1]),
        "a value expired twice: {expired:?}"
    );
    assert_eq!(
        a.values_expired + b.values_expired,
        expired.iter().filter(|e| **e).count() as u64
    );
    assert!(s.store.ledger.rebuild(&|_, _| {}).await.unwrap().identical);
}
