//! Delivery over NATS JetStream on a real server: order and completeness per customer under
//! concurrent writers, the relay killed mid-batch, NATS restarted under load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use idledger_domain::event::EventPayload;
use idledger_domain::field::FieldValue;
use idledger_domain::ids::CustomerId;
use idledger_relay::envelope::{CloudEvent, FIELD_CHANGED};
use idledger_store::Ledger;
use idledger_store::delivery::{Channel, ConsumerId, HandoffFilter};
use idledger_store::model::LogEntry;
use support::*;

on_both_engines!(every_event_arrives_in_order_per_customer_under_concurrent_writers);

/// The ids of the log's value changes of `fields`, per customer in log order.
async fn expected_changes(ledger: &Ledger, fields: &[&str]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut after = 0;
    loop {
        let page = ledger.read_all(after, 1000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.global_position();
        for e in &page {
            let LogEntry::Event(e) = e else { continue };
            if let EventPayload::FieldSet { field, .. } = &e.envelope.event.payload
                && fields.contains(&field.to_string().as_str())
            {
                out.entry(e.customer_id.to_string())
                    .or_default()
                    .push(e.envelope.id.to_string());
            }
        }
    }
    out
}

fn per_customer(events: &[CloudEvent]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in events {
        out.entry(e.subject.clone()).or_default().push(e.id.clone());
    }
    out
}

/// Reads what `crm` got, drops re-publishes (checking each is an exact copy), and checks it is
/// every change of `fields` in the log — `count` of them — once and in log order per customer.
async fn assert_crm_got_every_change(
    js: &async_nats::jetstream::Context,
    nats: &idledger_relay::NatsConfig,
    ledger: &Ledger,
    fields: &[&str],
    count: usize,
) -> Vec<Delivered> {
    let filter = format!("{}.crm.>", nats.stream.subject_prefix);
    let unique = dedupe(&read_stream(js, &nats.stream.name, &filter).await);
    let events: Vec<CloudEvent> = unique.iter().map(|d| d.event.clone()).collect();
    assert_ordered_per_customer(&events);
    let expected = expected_changes(ledger, fields).await;
    assert_eq!(expected.values().map(Vec::len).sum::<usize>(), count);
    assert_eq!(
        per_customer(&events),
        expected,
        "every change, once, in log order per customer"
    );
    unique
}

/// Writers that set `email` and `name.given` of every customer, each in its own order.
async fn write_concurrently(
    ledger: &Ledger,
    customers: &[CustomerId],
    writers: usize,
    rounds: usize,
    salt: usize,
) {
    let customers = Arc::new(customers.to_vec());
    let mut tasks = Vec::new();
    for w in 0..writers {
        let ledger = ledger.clone();
        let customers = customers.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..rounds {
                for i in 0..customers.len() {
                    let c = customers[(i * (w + 1) + round) % customers.len()];
                    let change = if (i + w) % 2 == 0 {
                        set("email", email(salt + w * 1000 + round * 100 + i))
                    } else {
                        set(
                            "name.given",
                            serde_json::json!(format!("Ada{salt}x{w}x{round}x{i}")),
                        )
                    };
                    run(&ledger, "idp", c, vec![change]).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn every_event_arrives_in_order_per_customer_under_concurrent_writers(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    store
        .register(consumer(
            "crm",
            Channel::Nats,
            &["email", "name.given"],
            &["crm"],
        ))
        .await;
    let mut customers = Vec::new();
    for _ in 0..30 {
        customers.push(customer_consenting(&store.ledger, &["crm"]).await);
    }
    let relay = RunningRelay::start(store.ledger.clone(), test_config(Some(nats.clone())));
    write_concurrently(&store.ledger, &customers, 6, 2, 0).await;
    store.caught_up("crm", Duration::from_secs(30)).await;

    let js = jetstream(&url).await;
    let prefix = &nats.stream.subject_prefix;
    let unique = assert_crm_got_every_change(
        &js,
        &nats,
        &store.ledger,
        &["email", "name.given"],
        30 * 6 * 2,
    )
    .await;
    let events: Vec<CloudEvent> = unique.iter().map(|d| d.event.clone()).collect();

    // Per customer and field, versions follow each other.
    let mut versions: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in &events {
        let field = e.data["field"].as_str().unwrap().to_owned();
        let previous = versions.insert((e.subject.clone(), field), e.idledgerversion.unwrap());
        assert_eq!(
            e.data["previous_version"].as_u64(),
            Some(previous.unwrap_or(0)),
            "{e:?}"
        );
    }

    // The envelope, its subject and its dedupe id.
    let d = &unique[0];
    let e = &d.event;
    assert_eq!(e.specversion, "1.0");
    assert_eq!(e.source, "urn:idledger:test");
    assert_eq!(e.event_type, FIELD_CHANGED);
    assert_eq!(e.id, e.idledgerevent);
    assert_eq!(e.idledgerconsumer, "crm");
    let field_name = e.data["field"].as_str().unwrap();
    assert_eq!(
        d.subject,
        format!("{prefix}.crm.{}.{field_name}", e.subject)
    );
    assert_eq!(d.msg_id, format!("crm:{}", e.id));
    let value = FieldValue::parse(&field(field_name), &e.data["value"]).unwrap();
    let key = store
        .ledger
        .hash_key(&idledger_store::delivery::ConsumerId::parse("crm").unwrap());
    assert_eq!(e.data["value_hash"], serde_json::json!(key.value(&value)));
    assert_eq!(e.data["provenance"]["source"], "idp");
    assert!(
        e.data["provenance"]["policy_version"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(e.data["provenance"].get("idempotency_key").is_none());

    // Every delivery is in the handoff log, with the basis that allowed it.
    let handoffs = store
        .deliveries
        .handoffs(
            &HandoffFilter::Consumer(ConsumerId::parse("crm").unwrap()),
            None,
            1000,
        )
        .await
        .unwrap();
    assert_eq!(handoffs.items.len(), events.len());
    let basis = &handoffs.items[0].handoff.basis;
    assert_eq!(basis.len(), 1);
    assert_eq!(basis[0].purpose.as_str(), "crm");
    assert!(basis[0].consent_event_id.is_some());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_batch_resumes_from_its_checkpoint_without_loss() {
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Postgres).await;
    let mut nats = unique_nats(&url);
    // Few PubAcks in flight and big batches: the kill lands inside a batch.
    nats.max_in_flight = 4;
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["crm"]))
        .await;
    let mut customers = Vec::new();
    for _ in 0..20 {
        customers.push(customer_consenting(&store.ledger, &["crm"]).await);
    }
    for round in 0..40 {
        let batch = customers.iter().enumerate().map(|(i, c)| {
            let ledger = store.ledger.clone();
            let c = *c;
            async move {
                run(
                    &ledger,
                    "idp",
                    c,
                    vec![set("email", email(round * 100 + i))],
                )
                .await
            }
        });
        futures::future::join_all(batch).await;
    }
    let mut config = test_config(Some(nats.clone()));
    config.batch_size = 400;
    let js = jetstream(&url).await;
    let relay = RunningRelay::start(store.ledger.clone(), config.clone());
    // Kill it once some messages are out but well before the backlog is done.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let published = match js.get_stream(&nats.stream.name).await {
            Ok(mut s) => s.info().await.unwrap().state.messages,
            Err(_) => 0,
        };
        if published >= 50 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay published nothing"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.kill().await;
    let crm = ConsumerId::parse("crm").unwrap();
    let at_kill = store.deliveries.checkpoint(&crm).await.unwrap().unwrap();
    let head = store.ledger.head_position().await.unwrap();
    assert!(
        at_kill < head,
        "the kill should land before the end ({at_kill} of {head})"
    );

    // A new process: its own pool and ledger.
    let ledger = store.another_ledger().await;
    let relay = RunningRelay::start(ledger.clone(), config);
    for (i, c) in customers.iter().enumerate() {
        run(&ledger, "idp", *c, vec![set("email", email(90_000 + i))]).await;
    }
    store.caught_up("crm", Duration::from_secs(30)).await;
    relay.stop().await;

    assert_crm_got_every_change(&js, &nats, &store.ledger, &["email"], 20 * 41).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_restarted_under_load_loses_and_reorders_nothing() {
    let mut server = OwnNats::start().await;
    let store = TestStore::new(Engine::Sqlite).await;
    let mut nats = unique_nats(&server.url);
    nats.publish_timeout = Duration::from_millis(500);
    store
        .register(consumer(
            "crm",
            Channel::Nats,
            &["email", "name.given"],
            &["crm"],
        ))
        .await;
    let mut customers = Vec::new();
    for _ in 0..20 {
        customers.push(customer_consenting(&store.ledger, &["crm"]).await);
    }
    let relay = RunningRelay::start(store.ledger.clone(), test_config(Some(nats.clone())));
    let writers = {
        let ledger = store.ledger.clone();
        let customers = customers.clone();
        tokio::spawn(async move {
            for round in 0..6 {
                write_concurrently(&ledger, &customers, 3, 1, round as usize * 10_000).await;
                tokio::time::sleep(Duration::from_millis(100 + round * 10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A restart: SIGTERM (the server flushes its store), a pause, the same port and store.
    let pid = server.pid();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    server.wait().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Writers went on while NATS was down: there is a backlog the relay could not deliver.
    let crm = ConsumerId::parse("crm").unwrap();
    let at = store.deliveries.checkpoint(&crm).await.unwrap().unwrap();
    let head = store.ledger.head_position().await.unwrap();
    assert!(
        at < head,
        "nothing was left to deliver after the outage ({at} of {head})"
    );
    server.restart().await;
    writers.await.unwrap();
    store.caught_up("crm", Duration::from_secs(30)).await;
    relay.stop().await;

    let js = jetstream(&server.url).await;
    let fields = ["email", "name.given"];
    assert_crm_got_every_change(&js, &nats, &store.ledger, &fields, 20 * 3 * 6).await;
    server.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_connections_cut_under_load_lose_and_reorder_nothing() {
    use sqlx::Connection;
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Postgres).await;
    let nats = unique_nats(&url);
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["crm"]))
        .await;
    let mut customers = Vec::new();
    for _ in 0..10 {
        customers.push(customer_consenting(&store.ledger, &["crm"]).await);
    }
    let relay = RunningRelay::start(store.ledger.clone(), test_config(Some(nats.clone())));
    let writers = {
        let ledger = store.ledger.clone();
        let customers = customers.clone();
        tokio::spawn(async move {
            for round in 0..20 {
                for (i, c) in customers.iter().enumerate() {
                    // The same command (same idempotency key) until it is answered: a cut
                    // connection may have lost the answer, not the write.
                    let cmd = fresh_command(*c, vec![set("email", email(round * 100 + i))]);
                    let mut tries = 0;
                    while let Err(e) = ledger.execute(&source("idp"), &cmd).await {
                        tries += 1;
                        assert!(tries < 50, "command keeps failing: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // What a database restart looks like to the relay: every connection it holds is cut.
    let name = pg_database(&store.db);
    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .execute(&mut admin)
        .await
        .unwrap();
    }
    writers.await.unwrap();
    store.caught_up("crm", Duration::from_secs(30)).await;
    relay.stop().await;

    let js = jetstream(&url).await;
    assert_crm_got_every_change(&js, &nats, &store.ledger, &["email"], 10 * 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreadable_customer_is_reported_and_the_others_still_flow() {
    use idledger_store::delivery::{ExceptionFilter, ExceptionKind};
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Sqlite).await;
    let nats = unique_nats(&url);
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["crm"]))
        .await;
    let ledger = &store.ledger;
    let erased = customer_consenting(ledger, &["crm"]).await;
    let kept = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", erased, vec![set("email", email(1))]).await;
    run(ledger, "idp", kept, vec![set("email", email(2))]).await;
    // Crypto-shredding: without its data key the customer's events cannot be read.
    let hex = erased.as_uuid().simple().to_string();
    store
        .db
        .exec(&format!(
            "DELETE FROM data_keys WHERE customer_id = x'{hex}'"
        ))
        .await;
    run(ledger, "idp", kept, vec![set("email", email(3))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    relay.stop().await;

    let js = jetstream(&url).await;
    let filter = format!("{}.crm.>", nats.stream.subject_prefix);
    let events: Vec<CloudEvent> = dedupe(&read_stream(&js, &nats.stream.name, &filter).await)
        .into_iter()
        .map(|d| d.event)
        .collect();
    assert_eq!(
        events.iter().map(|e| e.subject.clone()).collect::<Vec<_>>(),
        [kept.to_string(), kept.to_string()]
    );
    let exceptions = store
        .deliveries
        .exceptions(&ExceptionFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(exceptions.len(), 1, "{exceptions:?}");
    assert_eq!(
        (
            exceptions[0].kind,
            exceptions[0].customer_id,
            exceptions[0].field.as_deref()
        ),
        (ExceptionKind::Undeliverable, erased, Some("email"))
    );
}
