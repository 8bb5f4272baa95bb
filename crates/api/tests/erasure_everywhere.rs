//! Erasure reaches every copy, end to end on both engines with a real NATS and the relay: a
//! customer's email, phone and name are delivered (NATS, a webhook that answers quoting what it
//! holds), acknowledged, reconciled, quoted in a steward's note; a NATS consumer that received
//! them is retired. After `POST /v1/customers/{id}/erasure` and the relay's pass over it, none
//! of the values — nor their keyed hashes that idledger delivers, acknowledges and reconciles — is
//! left in the whole database (`pg_dump` on PostgreSQL; the raw `.db`, `-wal` and `-shm` files
//! on SQLite) nor in any message of the delivery or ack stream, while the erasure notice is.
//! The same search finds them before the erasure, so it is not vacuous; no plain SHA-256 of
//! a value is anywhere, before or after.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::hashing::HashKey;
use idledger_relay::envelope::CUSTOMER_ERASED;
use idledger_relay::{Backoff, NatsConfig, Relay, RelayConfig, StreamSettings, WebhookConfig};
use idledger_store::delivery::{ConsumerId, HandoffFilter, HandoffKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Engine, Reply, TestApp, grant, on_both_engines};
use tokio_util::sync::CancellationToken;

on_both_engines!(erasure_leaves_no_copy_of_the_customer_anywhere);

const EMAIL: &str = "zenobia.quillfeather@example.org";
const PHONE: &str = "+4915123456789";
const GIVEN: &str = "Zenobia";
const FAMILY: &str = "Quillfeather-Drummond";
/// Another customer's: still everywhere afterwards.
const CONTROL_EMAIL: &str = "control.customer@example.org";
const SECRET: &str = "whsec-erasure-0123456789abcdef";

/// What is searched for, each with what it is.
struct Needles(Vec<(String, String)>);

const FIELDS: [(&str, &str); 4] = [
    ("email", EMAIL),
    ("phone", PHONE),
    ("name.given", GIVEN),
    ("name.family", FAMILY),
];

fn value(field: &str, text: &str) -> FieldValue {
    FieldValue::parse(&FieldPath::parse(field).unwrap(), &json!(text)).unwrap()
}

/// What must not survive: each value as the record holds it, and its keyed hash under `key`
/// (the `value_hash` of that consumer's deliveries, acks, reports and exceptions).
fn needles(key: &HashKey) -> Needles {
    let mut out = Vec::new();
    for (field, text) in FIELDS {
        let value = value(field, text);
        let plain = value.to_json().as_str().unwrap().to_lowercase();
        let keyed = key
            .value(&value)
            .as_str()
            .strip_prefix("hmac-sha256:")
            .unwrap()
            .to_owned();
        out.push((format!("{field} value"), plain));
        out.push((format!("{field} keyed hash"), keyed));
    }
    Needles(out)
}

/// What must never be anywhere: each value's plain SHA-256 (the unkeyed `value_hash` of old,
/// which a dictionary reverses).
fn unkeyed() -> Needles {
    Needles(
        FIELDS
            .iter()
            .map(|(field, text)| {
                let json = value(field, text).to_json().to_string();
                (
                    format!("{field} sha256"),
                    hex::encode(Sha256::digest(json.as_bytes())),
                )
            })
            .collect(),
    )
}

impl Needles {
    /// The needles found in `haystack`, whatever its case.
    fn found(&self, haystack: &str) -> Vec<String> {
        let haystack = haystack.to_lowercase();
        self.0
            .iter()
            .filter(|(_, needle)| haystack.contains(needle.as_str()))
            .map(|(what, _)| what.clone())
            .collect()
    }

    /// Where the first needle sits in `haystack`, for a failure to say.
    fn first_hit(&self, haystack: &str) -> String {
        let haystack = haystack.to_lowercase();
        self.0
            .iter()
            .find_map(|(what, needle)| {
                let at = haystack.find(needle.as_str())?;
                let from = haystack.floor_char_boundary(at.saturating_sub(300));
                let to = haystack.ceil_char_boundary(at + needle.len() + 600);
                Some(format!("{what} in …{}…", &haystack[from..to]))
            })
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------
// Where copies could be
// ---------------------------------------------------------------------------------------

/// The whole database as an attacker with the files or a dump would see it, lower-cased.
fn database_copies(app: &TestApp) -> String {
    match app.db.engine {
        Engine::Postgres => pg_dump(&app.db.url),
        Engine::Sqlite => {
            let path = app.db.url.strip_prefix("sqlite://").unwrap();
            let mut bytes = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(file) = std::fs::read(format!("{path}{suffix}")) {
                    bytes.extend(file);
                }
            }
            assert!(!bytes.is_empty(), "no SQLite files at {path}");
            String::from_utf8_lossy(&bytes).to_lowercase()
        }
    }
}

fn pg_dump(url: &str) -> String {
    let mut candidates = vec![std::path::PathBuf::from("/usr/bin/pg_dump")];
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<_> = versions
            .flatten()
            .map(|v| v.path().join("bin/pg_dump"))
            .collect();
        found.sort();
        candidates.extend(found.into_iter().rev());
    }
    let Some(bin) = candidates.into_iter().find(|p| p.exists()) else {
        panic!(
            "pg_dump is missing (looked in /usr/bin and /usr/lib/postgresql/*/bin): this test \
             searches the whole PostgreSQL database through it; install postgresql-client"
        );
    };
    let out = std::process::Command::new(&bin)
        .arg("--no-owner")
        .arg(format!("--dbname={url}"))
        .output()
        .unwrap_or_else(|e| panic!("{} could not run: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// Every message of a stream, read by sequence: its subject and its payload.
async fn stream_copies(js: &jetstream::Context, name: &str) -> Vec<(String, String)> {
    let mut stream = js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // A gap is a message deleted or purged.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            out.push((
                message.subject.to_string(),
                String::from_utf8_lossy(&message.payload).into_owned(),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// NATS, the relay and a webhook receiver
// ---------------------------------------------------------------------------------------

async fn nats_client() -> (async_nats::Client, String) {
    let url = std::env::var("IDLEDGER_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await {
        Ok(Ok(client)) => (client, url),
        _ => panic!(
            "NATS with JetStream is not reachable at {url}: start it with `bash scripts/services.sh` \
             (or `nats-server -js`), or point IDLEDGER_TEST_NATS_URL at one"
        ),
    }
}

/// A delivery stream and an ack stream no other test uses.
fn unique_nats(url: &str) -> NatsConfig {
    let token = uuid::Uuid::now_v7().simple().to_string();
    let token = &token[token.len() - 12..];
    NatsConfig {
        url: url.to_owned(),
        stream: StreamSettings {
            name: format!("E{token}"),
            subject_prefix: format!("e{token}.v1"),
            max_age: Some(Duration::from_secs(600)),
            ..StreamSettings::default()
        },
        ack_subject_prefix: format!("e{token}.acks"),
        ack_stream: format!("E{token}_ACKS"),
        ack_durable: "acks".to_owned(),
        ..NatsConfig::default()
    }
}

fn relay_config(nats: &NatsConfig) -> RelayConfig {
    let quick = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    RelayConfig {
        source: "urn:idledger:test".to_owned(),
        nats: Some(nats.clone()),
        webhook: WebhookConfig {
            timeout: Duration::from_secs(2),
            backoff: quick,
            max_retry_after: Duration::from_secs(2),
        },
        poll_interval: Duration::from_millis(10),
        registry_refresh: Duration::from_millis(100),
        retry: quick,
        ..RelayConfig::default()
    }
}

/// A webhook endpoint that takes the phone and refuses the email and the erasure notice,
/// answering with the email it holds of that customer (a receiver may well quote it).
async fn quoting_receiver() -> (String, CancellationToken) {
    let held: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let handler = move |body: axum::body::Bytes| {
        let held = held.clone();
        async move {
            let event: Value = serde_json::from_slice(&body).unwrap();
            let customer = event["subject"].as_str().unwrap().to_owned();
            let mut held = held.lock().unwrap();
            if event["data"]["field"] == "email" {
                held.insert(customer.clone(), event["data"]["value"].to_string());
            } else if event["type"] != CUSTOMER_ERASED {
                return (axum::http::StatusCode::OK, String::new());
            }
            let email = held.get(&customer).cloned().unwrap_or_default();
            (
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                format!("we hold {email} for this customer and keep it"),
            )
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
            .unwrap();
    });
    (url, stop)
}

// ---------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------

async fn post(app: &TestApp, path: &str, as_: &str, body: &Value) -> Reply {
    app.send(Method::POST, path, Some(as_), None, Some(body))
        .await
}

async fn exceptions(app: &TestApp, query: &str) -> Vec<Value> {
    let reply = app.get(&format!("/v1/exceptions{query}"), "auditor").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["exceptions"].as_array().unwrap().clone()
}

/// A customer registered by the idp with these fields, consenting to `service`.
async fn customer(app: &TestApp, fields: &[(&str, &str)]) -> String {
    let changes: Vec<Value> = fields
        .iter()
        .map(|(f, v)| json!({"op": "set_field", "field": f, "value": v}))
        .collect();
    let c = app.register("idp", json!(changes)).await;
    let reply = app
        .command(
            "consent_portal",
            &c,
            &format!("grant-{c}"),
            json!([grant("service", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    c
}

/// Waits until `check` holds; fails naming `what` after 20 s.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until each consumer's checkpoint reaches the log's head.
async fn caught_up(app: &TestApp, consumers: &[&str]) {
    let deliveries = app.ledger.store().deliveries();
    for c in consumers {
        let id = ConsumerId::parse(c).unwrap();
        eventually(&format!("{c} catches up"), async || {
            let head = app.ledger.head_position().await.unwrap();
            deliveries.checkpoint(&id).await.unwrap().unwrap_or(0) >= head
        })
        .await;
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

async fn erasure_leaves_no_copy_of_the_customer_anywhere(engine: Engine) {
    let (client, url) = nats_client().await;
    let js = jetstream::new(client);
    let app = TestApp::start(engine).await;
    let nats = unique_nats(&url);
    let (hook_url, hook_stop) = quoting_receiver().await;
    for consumer in [
        json!({"id": "crm-sync", "channel": "nats", "fields": ["*"], "purposes": ["service"], "sla_secs": 0}),
        json!({"id": "old-crm", "channel": "nats", "fields": ["*"], "purposes": ["service"]}),
        // Its messages carry its alias of the customer, not the id: erasure finds them too.
        json!({"id": "pseudo", "channel": "nats", "fields": ["*"], "purposes": ["service"],
               "pseudonymous": true}),
        json!({"id": "hooks", "channel": "webhook", "webhook": {"url": hook_url, "secret": SECRET},
               "fields": ["email", "phone"], "purposes": ["service"]}),
    ] {
        app.add_consumer(consumer).await;
    }
    let c = customer(
        &app,
        &[
            ("email", EMAIL),
            ("phone", PHONE),
            ("name.given", GIVEN),
            ("name.family", FAMILY),
        ],
    )
    .await;
    let control = customer(&app, &[("email", CONTROL_EMAIL)]).await;
    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(app.ledger.clone(), relay_config(&nats)).run(stop.clone()));
    caught_up(&app, &["crm-sync", "old-crm", "hooks", "pseudo"]).await;
    let prefix = &nats.stream.subject_prefix;
    let alias = app
        .ledger
        .customer_names(
            &app.ledger
                .store()
                .deliveries()
                .consumer(&ConsumerId::parse("pseudo").unwrap())
                .await
                .unwrap()
                .unwrap(),
        )
        .show(idledger_domain::ids::CustomerId::parse(&c).unwrap())
        .to_string();
    let pseudo_messages = stream_copies(&js, &nats.stream.name)
        .await
        .into_iter()
        .filter(|(subject, _)| subject.starts_with(&format!("{prefix}.pseudo.")))
        .collect::<Vec<_>>();
    assert!(
        pseudo_messages
            .iter()
            .any(|(subject, _)| subject.contains(&alias)),
        "{pseudo_messages:?}"
    );
    assert!(
        pseudo_messages
            .iter()
            .all(|(subject, body)| !subject.contains(&c) && !body.contains(&c)),
        "a pseudonymous consumer is never sent the id"
    );

    // The webhook refused the email, quoting it: its answer is the exception's evidence.
    let refused = exceptions(&app, &format!("?customer={c}&kind=webhook_rejected")).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["detail"]["body"]
            .as_str()
            .unwrap()
            .contains(EMAIL)
    );

    // crm-sync applies the email and acknowledges it over NATS; the rest stays unacknowledged.
    let email_message = stream_copies(&js, &nats.stream.name)
        .await
        .into_iter()
        .find(|(subject, _)| *subject == format!("{prefix}.crm-sync.{c}.email"))
        .unwrap();
    let event: Value = serde_json::from_str(&email_message.1).unwrap();
    let ack = json!({
        "event_id": event["id"], "customer_id": c, "field": "email",
        "version": event["data"]["version"], "value_hash": event["data"]["value_hash"],
        "status": "applied",
    });
    let ack_subject = format!("{}.crm-sync", nats.ack_subject_prefix);
    let body = serde_json::to_vec(&ack).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    let ack_key = app.ledger.ack_key(&ConsumerId::parse("crm-sync").unwrap());
    headers.insert("Idledger-Signature", ack_key.sign(&body).as_str());
    // A retried publish whose first PubAck was only late must not leave a second copy behind
    // in the ack stream: JetStream drops a repeated message id.
    headers.insert("Nats-Msg-Id", format!("ack-{}", event["id"]).as_str());
    eventually("the ack is published", async || {
        // The relay creates the ack stream when it starts.
        match js
            .publish_with_headers(ack_subject.clone(), headers.clone(), body.clone().into())
            .await
        {
            Ok(sent) => sent.await.is_ok(),
            Err(_) => false,
        }
    })
    .await;
    let state = format!("/v1/consumers/crm-sync/state?customer={c}");
    eventually("the ack is recorded", async || {
        app.get(&state, "auditor").await.body["fields"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
    })
    .await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();

    // Reconciliation finds the phone and the name undelivered: examples with their digests.
    let started = post(
        &app,
        "/v1/reconciliations",
        "steward",
        &json!({"consumer_id": "crm-sync"}),
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED, "{}", started.text);
    let run = started.header("location").unwrap().to_owned();
    eventually("the run finishes", async || {
        app.get(&run, "auditor").await.body["status"] == "finished"
    })
    .await;
    assert!(app.get(&run, "auditor").await.text.contains(&c));

    // A steward dismisses one of them with a note quoting the record.
    let undelivered = exceptions(&app, &format!("?customer={c}&kind=undelivered")).await;
    assert!(!undelivered.is_empty());
    let id = undelivered[0]["id"].as_str().unwrap();
    let dismissed = post(
        &app,
        &format!("/v1/exceptions/{id}/actions"),
        "steward",
        &json!({"action": "dismiss", "reason": format!("confirmed {PHONE} with {GIVEN} {FAMILY}")}),
    )
    .await;
    assert_eq!(dismissed.status, StatusCode::OK, "{}", dismissed.text);

    // old-crm is retired while the relay is down: it has no task when the relay is back, and
    // what it was sent stays in the stream.
    let disabled = post(&app, "/v1/consumers/old-crm/disable", "admin", &json!({})).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);

    // The control: before the erasure the same search finds the customer everywhere.
    let needles = needles(&app.ledger.hash_key(&ConsumerId::parse("crm-sync").unwrap()));
    let db = database_copies(&app);
    assert_eq!(
        needles.found(&db).len(),
        needles.0.len(),
        "the database search misses values before the erasure"
    );
    // No hash is unkeyed, ever.
    assert_eq!(
        unkeyed().found(&db),
        Vec::<String>::new(),
        "{}",
        unkeyed().first_hit(&db)
    );
    let stream = stream_copies(&js, &nats.stream.name).await;
    let in_stream: Vec<String> = stream
        .iter()
        .flat_map(|(_, body)| needles.found(body))
        .collect();
    assert!(
        in_stream.contains(&"email keyed hash".to_owned()),
        "the stream search does not find the email's hash before the erasure"
    );
    assert!(
        stream
            .iter()
            .all(|(_, body)| unkeyed().found(body).is_empty()),
        "a delivery carries an unkeyed hash"
    );
    assert!(
        in_stream.contains(&"email value".to_owned()),
        "the stream search does not find the email before the erasure"
    );

    let stop = CancellationToken::new();
    let relay = tokio::spawn(Relay::new(app.ledger.clone(), relay_config(&nats)).run(stop.clone()));
    let erased = post(
        &app,
        &format!("/v1/customers/{c}/erasure"),
        "admin",
        &json!({"reason": "DSR-1", "actor": {"kind": "agent", "id": "dpo"}}),
    )
    .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    // The relay's pass over the erasure: crm-sync's notice out, every push consumer past it.
    caught_up(&app, &["crm-sync", "hooks", "pseudo"]).await;
    let deliveries = app.ledger.store().deliveries();
    let customer = idledger_domain::ids::CustomerId::parse(&c).unwrap();
    let notices: Vec<String> = deliveries
        .handoffs(&HandoffFilter::Customer(customer), None, 100)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|h| h.handoff.kind == HandoffKind::Erasure)
        .map(|h| h.handoff.consumer_id.to_string())
        .collect();
    assert_eq!(
        notices
            .iter()
            .filter(|n| *n != "pseudo")
            .collect::<Vec<_>>(),
        ["crm-sync"],
        "the retired consumer is not served"
    );
    assert!(notices.iter().any(|n| n == "pseudo"), "{notices:?}");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("the relay did not stop")
        .unwrap()
        .unwrap();
    hook_stop.cancel();

    // Nothing of the customer in the database…
    let db = database_copies(&app);
    assert_eq!(
        needles.found(&db),
        Vec::<String>::new(),
        "the database still holds the erased customer's, e.g. {}",
        needles.first_hit(&db)
    );
    assert!(db.contains(CONTROL_EMAIL), "another customer's data stays");
    // …the webhook refused the erasure notice quoting the email: its answer was not kept…
    let refused = exceptions(
        &app,
        &format!("?customer={c}&kind=webhook_rejected&status=all"),
    )
    .await;
    assert!(
        refused
            .iter()
            .any(|e| e["status"] == "open" && e["detail"]["type"] == CUSTOMER_ERASED),
        "a refused erasure notice is for a steward to see: {refused:?}"
    );
    // …nor in any message of the delivery and ack streams, where the notice stays.
    for name in [&nats.stream.name, &nats.ack_stream] {
        for (subject, body) in stream_copies(&js, name).await {
            assert_eq!(
                needles.found(&body),
                Vec::<String>::new(),
                "{subject} in {name} holds the erased customer's"
            );
        }
    }
    let stream = stream_copies(&js, &nats.stream.name).await;
    assert_eq!(
        stream
            .iter()
            .filter(|(subject, _)| subject.contains(&alias))
            .map(|(subject, _)| subject.as_str())
            .collect::<Vec<_>>(),
        [format!("{prefix}.pseudo.{alias}")],
        "of the pseudonymous consumer's messages, its erasure notice alone stays"
    );
    let notice: Vec<&(String, String)> = stream
        .iter()
        .filter(|(_, body)| body.contains(&c))
        .collect();
    assert_eq!(notice.len(), 1, "{notice:?}");
    assert_eq!(notice[0].0, format!("{prefix}.crm-sync.{c}"));
    assert!(notice[0].1.contains(CUSTOMER_ERASED), "{}", notice[0].1);
    assert!(
        stream
            .iter()
            .any(|(subject, body)| subject.contains(&control) && body.contains(CONTROL_EMAIL)),
        "another customer's messages stay"
    );
}
