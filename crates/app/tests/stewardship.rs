//! A steward's action and the exception's change are one transaction: on both engines, a
//! failing exception update leaves the action's command unrecorded, and an exception that is
//! no longer open refuses the command with it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::Utc;
use idledger_app::{ActError, App, Steward, StewardRequest};
use idledger_domain::command::{Change, Command, ProvenanceInput};
use idledger_domain::event::{EventPayload, StewardAction};
use idledger_domain::exception::{Closing, ExceptionEvent};
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey};
use idledger_store::ExecuteError;
use idledger_store::delivery::{
    ExceptionKind, ExceptionStatus, NewSyncException, Resolution, SyncException,
};
use idledger_store::model::ExceptionWrite;
use idledger_testkit::builders::{command, consumer_id, field, new_customer, set, source};
use idledger_testkit::{Engine, TestDb, TestStore, on_both_engines};
use serde_json::json;

struct Setup {
    store: TestStore,
    app: App,
    customer: CustomerId,
    exception: SyncException,
}

async fn setup(engine: Engine) -> Setup {
    let store = TestStore::new(engine).await;
    let app = App::new(store.ledger.clone());
    let customer = new_customer();
    let register = command(
        customer,
        "register-1",
        vec![Change::Register, set("name.given", json!("Ann"))],
    );
    app.run_command(&source("idp"), &register).await.unwrap();
    let exception = app
        .deliveries()
        .open_exception(
            &NewSyncException::new(
                ExceptionKind::Divergent,
                consumer_id("crm"),
                customer,
                Some(field("name.given")),
                json!({"record_version": 1}),
                Utc::now(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    Setup {
        store,
        app,
        customer,
        exception,
    }
}

fn dismiss() -> StewardRequest {
    StewardRequest {
        action: StewardAction::Dismiss,
        reason: Some("the CRM copy is a test record".to_owned()),
        value: None,
    }
}

async fn stream_version(app: &App, customer: CustomerId) -> u64 {
    app.ledger()
        .state(customer)
        .await
        .unwrap()
        .unwrap()
        .stream_version
}

async fn steward_events(app: &App, customer: CustomerId) -> usize {
    app.ledger()
        .stream(customer, None, None)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.envelope.event.payload, EventPayload::StewardActed { .. }))
        .count()
}

/// Makes every update of a sync exception fail inside the database.
async fn break_exception_updates(db: &TestDb) {
    match db.engine {
        Engine::Postgres => {
            db.exec(
                "CREATE FUNCTION refuse_update() RETURNS trigger AS $$ \
                 BEGIN RAISE EXCEPTION 'exception updates refused by the test'; END $$ \
                 LANGUAGE plpgsql; \
                 CREATE TRIGGER refuse_update BEFORE UPDATE ON sync_exceptions \
                 FOR EACH ROW EXECUTE FUNCTION refuse_update();",
            )
            .await;
        }
        Engine::Sqlite => {
            db.exec(
                "CREATE TRIGGER refuse_update BEFORE UPDATE ON sync_exceptions \
                 BEGIN SELECT RAISE(ABORT, 'exception updates refused by the test'); END;",
            )
            .await;
        }
    }
}

async fn mend_exception_updates(db: &TestDb) {
    db.exec("DROP TRIGGER refuse_update ON sync_exceptions")
        .await;
}

async fn a_failing_exception_update_records_no_command(engine: Engine) {
    let s = setup(engine).await;
    let steward = Steward::new("jane").unwrap();
    let version = stream_version(&s.app, s.customer).await;
    break_exception_updates(&s.store.db).await;

    let refused = s.app.act(&steward, s.exception.id, &dismiss()).await;
    assert!(
        matches!(refused, Err(ActError::Execute(ExecuteError::Store(_)))),
        "the failed update fails the action: {refused:?}"
    );
    assert_eq!(
        stream_version(&s.app, s.customer).await,
        version,
        "no event was appended"
    );
    assert_eq!(steward_events(&s.app, s.customer).await, 0);
    let exception = s.app.exception(s.exception.id).await.unwrap().unwrap();
    assert_eq!(exception.status, ExceptionStatus::Open);

    // Once updates work again the same action records both, at once.
    match engine {
        Engine::Postgres => mend_exception_updates(&s.store.db).await,
        Engine::Sqlite => s.store.db.exec("DROP TRIGGER refuse_update").await,
    }
    let done = s
        .app
        .act(&steward, s.exception.id, &dismiss())
        .await
        .unwrap();
    assert_eq!(done.exception.status, ExceptionStatus::Dismissed);
    assert_eq!(done.exception.resolved_by.as_deref(), Some("steward:jane"));
    assert_eq!(stream_version(&s.app, s.customer).await, version + 1);
    assert_eq!(steward_events(&s.app, s.customer).await, 1);
}

async fn a_command_with_a_closed_exception_is_not_recorded(engine: Engine) {
    let s = setup(engine).await;
    let version = stream_version(&s.app, s.customer).await;
    // Closed after the steward looked at it: the command carrying the action must not land.
    let closing = Closing {
        by: "idledger".to_owned(),
        resolution: Resolution::Auto,
        note: "the consumer acknowledged the record's value".to_owned(),
        at: Utc::now(),
    };
    s.app
        .deliveries()
        .close_exception(s.exception.id, &closing)
        .await
        .unwrap()
        .unwrap();
    let state = s.exception.state().unwrap();
    let command = Command {
        customer_id: s.customer,
        idempotency_key: IdempotencyKey::parse("steward-late").unwrap(),
        provenance: ProvenanceInput {
            actor: Actor::new(ActorKind::Steward, "jane").unwrap(),
            on_behalf_of: None,
            evidence: None,
            observed_at: None,
            correlation_id: Some(s.exception.id),
            causation_id: None,
            reason: Some("late".to_owned()),
        },
        changes: vec![idledger_domain::exception::action_change(
            &state,
            StewardAction::Dismiss,
            Some("late"),
        )],
        expected_stream_version: None,
    };
    let id = s.exception.id;
    let attach = |_: &idledger_store::CommandResult| {
        Ok(Some(ExceptionWrite {
            exception_id: id,
            event: ExceptionEvent::Closed(Closing {
                by: "steward:jane".to_owned(),
                resolution: Resolution::Dismissed,
                note: "late".to_owned(),
                at: Utc::now(),
            }),
            activity: None,
            approval: None,
        }))
    };
    let refused = s
        .app
        .ledger()
        .execute_with(&idledger_testkit::builders::steward(), &command, &attach)
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::ExceptionNotOpen { exception_id }) if exception_id == id),
        "{refused:?}"
    );
    assert_eq!(stream_version(&s.app, s.customer).await, version);
    let exception = s.app.exception(id).await.unwrap().unwrap();
    assert_eq!(
        exception.resolution,
        Some(Resolution::Auto),
        "the first close stands"
    );

    // Through the use case the same race is a refusal naming the status.
    let again = s
        .app
        .act(&Steward::new("jane").unwrap(), id, &dismiss())
        .await;
    assert!(
        matches!(
            again,
            Err(ActError::Refused(
                idledger_domain::exception::ExceptionRefusal::Closed {
                    status: ExceptionStatus::Resolved
                }
            ))
        ),
        "{again:?}"
    );
    assert_eq!(stream_version(&s.app, s.customer).await, version);
}

on_both_engines!(
    a_failing_exception_update_records_no_command,
    a_command_with_a_closed_exception_is_not_recorded,
);
