//! A PostgreSQL outage, over real HTTP against a PostgreSQL server of the test's own: while the
//! database is down, commands, reads and `/readyz` answer at once with `503
//! store_unavailable` and `Retry-After` (not a 500 after waiting out a 10 s pool timeout), and
//! once it is back the same server takes commands again without a restart. Under load, an
//! outage loses no acknowledged command and applies none twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use idledger_api::{ApiConfig, AppState};
use idledger_domain::policy::Policy;
use idledger_store::{Ledger, LedgerOptions, MasterKey, Role, Store};
use idledger_testkit::PrivatePostgres;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Far above what the store's pool and `/readyz` wait (under a second each), far below the
/// 10 s a request used to hang: a generous bound, so a loaded CI machine does not flake.
const PROMPT: Duration = Duration::from_secs(4);

struct Server {
    base: String,
    client: reqwest::Client,
    idp: String,
    auditor: String,
}

impl Server {
    async fn start(url: &str) -> Self {
        let store = Store::open(url).await.unwrap();
        let ledger = Ledger::new(
            &store,
            MasterKey::generate(),
            Policy::default_policy().unwrap(),
            LedgerOptions::default(),
        );
        let idp = store
            .tokens()
            .create(Role::Source, Some("idp"), "idp")
            .await
            .unwrap()
            .secret;
        let auditor = store
            .tokens()
            .create(Role::Auditor, None, "auditor")
            .await
            .unwrap()
            .secret;
        let config = ApiConfig::default();
        let router = idledger_api::router(AppState::new(ledger), &config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(idledger_api::serve(
            listener,
            router,
            std::future::pending::<()>(),
            &config,
        ));
        Self {
            base,
            client: reqwest::Client::new(),
            idp,
            auditor,
        }
    }

    async fn register(&self, key: &str) -> (StatusCode, Option<String>, Value, Duration) {
        let started = Instant::now();
        let response = self
            .client
            .post(format!("{}/v1/customers", self.base))
            .bearer_auth(&self.idp)
            .header("Idempotency-Key", key)
            .json(&json!({
                "provenance": {"actor": {"kind": "system", "id": "signup"}},
                "changes": [{"op": "set_field", "field": "name.given", "value": "Ada"}],
            }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.json().await.unwrap_or(Value::Null);
        (status, retry_after, body, started.elapsed())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value, Duration) {
        self.get_as(&self.idp, path).await
    }

    async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value, Duration) {
        let started = Instant::now();
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, started.elapsed())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_answers_503_at_once_and_the_server_recovers() {
    let pg = PrivatePostgres::start();
    let server = Server::start(&pg.url()).await;
    let (status, _, body, _) = server.register("before").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let customer = body["customer_id"].as_str().unwrap().to_owned();

    pg.stop();
    let (status, retry_after, body, took) = server.register("during").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable");
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert!(
        took < PROMPT,
        "a command took {took:?} to learn the store is down"
    );
    let (status, body, took) = server.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable");
    assert!(took < PROMPT, "a read took {took:?}");
    let (status, body, took) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable");
    assert!(took < PROMPT, "/readyz took {took:?}");
    // Nothing internal is told.
    assert!(!body["detail"].as_str().unwrap().contains("127.0.0.1"));

    pg.start_server();
    // The pool reconnects by itself: the same key, retried, is recorded once.
    let mut answer = server.register("during").await;
    for _ in 0..50 {
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = server.register("during").await;
    }
    assert_eq!(answer.0, StatusCode::CREATED, "{}", answer.2);
    let (status, _, _) = server.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = server.get(&format!("/v1/customers/{customer}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"][0]["value"], "Ada");
}

/// A distinct given name for the `n`th command (names hold letters, not digits).
fn given_name(mut n: i64) -> String {
    let mut letters = String::new();
    while n > 0 {
        letters.insert(0, char::from(b'a' + u8::try_from(n % 26).unwrap()));
        n /= 26;
    }
    format!("Ada {letters}")
}

/// What one client saw: the values of its acknowledged commands, and how many answers were
/// 503 (each retried with the same idempotency key).
struct ClientLoad {
    customer: String,
    acknowledged: Vec<String>,
    unavailable: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_stopped_under_load_loses_no_acknowledged_command_and_applies_none_twice() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    const CLIENTS: usize = 8;
    let pg = PrivatePostgres::start();
    let server = Arc::new(Server::start(&pg.url()).await);
    let stop = Arc::new(AtomicBool::new(false));
    // How many clients are sending, and how many 503s they met: the outage lasts until the
    // load has met it (a loaded machine may be slow to get there), within a bound.
    let sending = Arc::new(AtomicU32::new(0));
    let met = Arc::new(AtomicU32::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        let (server, stop) = (server.clone(), stop.clone());
        let (sending, met) = (sending.clone(), met.clone());
        clients.spawn(async move {
            let (status, _, body, _) = server.register(&format!("register-{client}")).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            sending.fetch_add(1, Ordering::SeqCst);
            let customer = body["customer_id"].as_str().unwrap().to_owned();
            let mut load = ClientLoad {
                customer,
                acknowledged: Vec::new(),
                unavailable: 0,
            };
            let mut n = 0i64;
            // Each command is sent until it is answered (a 503 is retried with its key), so
            // the loop stops only between commands.
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let key = format!("c{client}-{n}");
                loop {
                    let started = Instant::now();
                    let response = server
                        .client
                        .post(format!("{}/v1/customers/{}/commands", server.base, load.customer))
                        .bearer_auth(&server.idp)
                        .header("Idempotency-Key", &key)
                        .json(&json!({
                            "provenance": {"actor": {"kind": "system", "id": "load"}},
                            "changes": [{"op": "set_field", "field": "name.given", "value": given_name(n)}],
                        }))
                        .send()
                        .await
                        .unwrap();
                    let status = response.status();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match status {
                        StatusCode::OK | StatusCode::CREATED => {
                            load.acknowledged.push(given_name(n));
                            break;
                        }
                        StatusCode::SERVICE_UNAVAILABLE => {
                            assert_eq!(body["code"], "store_unavailable", "{body}");
                            assert!(retry_after, "a 503 without Retry-After");
                            let took = started.elapsed();
                            assert!(took < PROMPT, "a command took {took:?} to learn the store is down");
                            load.unavailable += 1;
                            met.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        other => panic!("a command under an outage answered {other}: {body}"),
                    }
                }
            }
            load
        });
    }
    let until = |what: &'static str, done: Box<dyn Fn() -> bool>| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let all = sending.clone();
    until(
        "every client sending",
        Box::new(move || all.load(Ordering::SeqCst) as usize == CLIENTS),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = met.clone();
    until(
        "the load meeting the outage",
        Box::new(move || seen.load(Ordering::SeqCst) > 0),
    )
    .await;
    pg.start_server();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);

    let mut unavailable = 0;
    let mut acknowledged = 0;
    while let Some(done) = clients.join_next().await {
        let load = done.unwrap();
        unavailable += load.unavailable;
        acknowledged += load.acknowledged.len();
        // The field's history: one event per acknowledged command, in order — none lost
        // (a command acknowledged before the crash is in the log) and none twice (a retried
        // key that had been committed is answered from its idempotency record).
        let (status, body, _) = server
            .get_as(
                &server.auditor,
                &format!("/v1/customers/{}/fields/name.given/history", load.customer),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let recorded: Vec<String> = body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["data"]["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{e}"))
                    .to_owned()
            })
            .collect();
        // The registration set the first name.
        assert_eq!(recorded.first().map(String::as_str), Some("Ada"));
        assert_eq!(
            recorded[1..],
            load.acknowledged,
            "customer {}",
            load.customer
        );
    }
    assert!(unavailable > 0, "the load never met the outage");
    assert!(
        acknowledged > CLIENTS,
        "the load did almost nothing: {acknowledged} commands"
    );
}
