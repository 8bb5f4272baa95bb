//! Test fixtures for delivery: a real NATS server (the shared one, or a throwaway one a test may
//! kill), a real HTTP receiver, and helpers to read what consumers got. The database, the store,
//! the macro that runs a test on both engines and the builders come from `idledger_testkit`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use idledger_relay::envelope::CloudEvent;
use idledger_relay::{Backoff, NatsConfig, Relay, RelayConfig, StreamSettings, WebhookConfig};
use idledger_store::Ledger;
use idledger_store::delivery::{Channel, ConsumerId, Webhook, WebhookSecret};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
pub const NATS_BIN: &str = "/usr/sbin/nats-server";

// ---------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------

#[allow(unused_imports)]
pub use idledger_testkit::builders::*;
#[allow(unused_imports)]
pub use idledger_testkit::{Engine, TestDb, TestStore, admin_url, on_both_engines};

/// The name of a PostgreSQL test database.
pub fn pg_database(db: &TestDb) -> String {
    assert_eq!(db.engine, Engine::Postgres);
    db.url.rsplit_once('/').unwrap().1.to_owned()
}

/// Waiting for the relay to serve a consumer up to the log's head.
pub trait CaughtUp {
    /// Waits until the consumer's checkpoint reaches the log's head; fails after `within`.
    async fn caught_up(&self, consumer: &str, within: Duration);
}

impl CaughtUp for TestStore {
    async fn caught_up(&self, consumer: &str, within: Duration) {
        let id = ConsumerId::parse(consumer).unwrap();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let head = self.ledger.head_position().await.unwrap();
            let at = self.deliveries.checkpoint(&id).await.unwrap().unwrap();
            if at >= head {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "consumer {consumer} is at {at} of {head} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Consumers and the relay
// ---------------------------------------------------------------------------------------

pub const SECRET: &str = "whsec-test-0123456789abcdef";

pub fn webhook_channel(url: &str) -> Channel {
    Channel::Webhook(Webhook::new(url, WebhookSecret::parse(SECRET).unwrap()).unwrap())
}

/// A stream, subjects and ack subjects no other test uses (tests share one NATS server).
pub fn unique_nats(url: &str) -> NatsConfig {
    let token = uuid::Uuid::now_v7().simple().to_string();
    let token = &token[token.len() - 12..];
    NatsConfig {
        url: url.to_owned(),
        stream: StreamSettings {
            name: format!("T{token}"),
            subject_prefix: format!("t{token}.v1"),
            max_age: Some(Duration::from_secs(600)),
            ..StreamSettings::default()
        },
        ack_subject_prefix: format!("t{token}.acks"),
        ack_stream: format!("T{token}_ACKS"),
        ack_durable: "acks".to_owned(),
        max_in_flight: 64,
        publish_timeout: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

/// Fast settings for tests: short polls, retries and sweeps.
pub fn test_config(nats: Option<NatsConfig>) -> RelayConfig {
    RelayConfig {
        source: "urn:idledger:test".to_owned(),
        nats,
        webhook: WebhookConfig {
            timeout: Duration::from_secs(2),
            backoff: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(400),
            },
            max_retry_after: Duration::from_secs(2),
        },
        batch_size: 200,
        poll_interval: Duration::from_millis(10),
        registry_refresh: Duration::from_millis(100),
        expiry_sweep_interval: Duration::from_secs(3600),
        retry: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
    }
}

pub struct RunningRelay {
    pub cancel: CancellationToken,
    pub task: JoinHandle<()>,
    /// The log pages delivery read from the store and shared.
    pub pages: idledger_relay::tail::PageCounts,
}

impl RunningRelay {
    pub fn start(ledger: Ledger, config: RelayConfig) -> Self {
        let cancel = CancellationToken::new();
        let relay = Relay::new(ledger, config);
        let pages = relay.log_pages();
        let token = cancel.clone();
        let task = tokio::spawn(async move { relay.run(token).await.unwrap() });
        Self {
            cancel,
            task,
            pages,
        }
    }

    /// Graceful shutdown.
    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the relay did not stop within 10 s")
            .unwrap();
    }

    /// A crash: the task is dropped wherever it is, nothing is flushed or committed.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------------------
// NATS
// ---------------------------------------------------------------------------------------

pub fn nats_url() -> String {
    std::env::var("IDLEDGER_TEST_NATS_URL").unwrap_or_else(|_| DEFAULT_NATS_URL.to_owned())
}

/// The shared NATS server; fails the test, saying how to start one, if it is not there.
pub async fn shared_nats() -> String {
    let url = nats_url();
    let connected = tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await;
    match connected {
        Ok(Ok(client)) => {
            if !client.server_info().jetstream {
                panic!("the NATS server at {url} has no JetStream; start nats-server with -js");
            }
            url
        }
        Ok(Err(e)) => panic!(
            "NATS is not reachable at {url}: {e}\nThese tests need a real NATS server with JetStream. \
             Start one with `bash scripts/services.sh` (or `nats-server -js`), or point \
             IDLEDGER_TEST_NATS_URL at one."
        ),
        Err(_) => panic!(
            "NATS at {url} did not answer within 3 s. These tests need a real NATS server with JetStream: \
             start one with `bash scripts/services.sh` (or `nats-server -js`), or point IDLEDGER_TEST_NATS_URL at one."
        ),
    }
}

/// The headers of an ack signed with `key` (see `idledger_relay::acks`).
pub fn signed(key: &idledger_domain::hashing::AckKey, body: &[u8]) -> async_nats::HeaderMap {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        idledger_relay::acks::SIGNATURE_HEADER,
        key.sign(body).as_str(),
    );
    headers
}

pub async fn jetstream(url: &str) -> jetstream::Context {
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(url)
        .await
        .unwrap();
    jetstream::new(client)
}

/// A throwaway nats-server with JetStream on a free port and its own store, which a test may
/// kill and start again (same port, same store) without touching the shared server.
pub struct OwnNats {
    pub port: u16,
    pub url: String,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
    /// A configuration file (`-c`) and the environment it reads variables from.
    config: Option<(std::path::PathBuf, Vec<(String, String)>)>,
}

impl OwnNats {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// A server started with `config` (nats-server syntax; port, JetStream and store come
    /// from flags) and `env` (the variables it names, such as passwords).
    pub async fn start_with_config(config: &str, env: &[(&str, &str)]) -> Self {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::start_with(Some((config.to_owned(), env))).await
    }

    async fn start_with(config: Option<(String, Vec<(String, String)>)>) -> Self {
        assert!(
            std::path::Path::new(NATS_BIN).exists(),
            "{NATS_BIN} is missing; install it (apt-get install nats-server) or run scripts/services.sh"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = config.map(|(text, env)| {
            let file = dir.path().join("nats-server.conf");
            std::fs::write(&file, text).unwrap();
            (file, env)
        });
        let mut nats = Self {
            port,
            url: format!("nats://127.0.0.1:{port}"),
            dir,
            child: None,
            config,
        };
        nats.restart().await;
        nats
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn restart(&mut self) {
        let mut command = tokio::process::Command::new(NATS_BIN);
        if let Some((file, env)) = &self.config {
            command.arg("-c").arg(file).envs(env.iter().cloned());
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .kill_on_drop(true)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(|c| c.id()).unwrap()
    }

    /// Waits for the server process to exit (after a signal).
    pub async fn wait(&mut self) {
        if let Some(mut child) = self.child.take() {
            tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .expect("nats-server did not exit within 10 s")
                .unwrap();
        }
    }

    /// SIGKILL: the server dies with whatever it had not written.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// One delivered NATS message.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub subject: String,
    pub msg_id: String,
    pub event: CloudEvent,
    pub body: Vec<u8>,
}

/// Every message in the stream under `filter`, in stream order.
pub async fn read_stream(js: &jetstream::Context, stream: &str, filter: &str) -> Vec<Delivered> {
    let stream = js.get_stream(stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(500), messages.next()).await;
        let Ok(Some(message)) = next else { break };
        let message = message.unwrap();
        let pending = message.info().unwrap().pending;
        out.push(Delivered {
            subject: message.subject.to_string(),
            msg_id: message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default(),
            event: serde_json::from_slice(&message.payload).unwrap(),
            body: message.payload.to_vec(),
        });
        if pending == 0 {
            break;
        }
    }
    out
}

/// Every message the stream holds, read by sequence (no JetStream consumer needed): subject
/// and payload.
pub async fn stream_messages(js: &jetstream::Context, stream: &str) -> Vec<(String, Vec<u8>)> {
    let mut stream = js.get_stream(stream).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for sequence in state.first_sequence..=state.last_sequence {
        // A gap is a message deleted or purged.
        if let Ok(message) = stream.get_raw_message(sequence).await {
            out.push((message.subject.to_string(), message.payload.to_vec()));
        }
    }
    out
}

/// Drops re-publishes by id, checking that each is an exact copy.
pub fn dedupe(delivered: &[Delivered]) -> Vec<Delivered> {
    let mut seen: HashMap<&str, &[u8]> = HashMap::new();
    let mut out = Vec::new();
    for d in delivered {
        match seen.get(d.event.id.as_str()) {
            Some(body) => assert_eq!(
                *body,
                d.body.as_slice(),
                "message {} was delivered twice with different content",
                d.event.id
            ),
            None => {
                seen.insert(&d.event.id, &d.body);
                out.push(d.clone());
            }
        }
    }
    out
}

/// Per customer, the stream order must follow the log order.
pub fn assert_ordered_per_customer(events: &[CloudEvent]) {
    let mut last: BTreeMap<&str, u64> = BTreeMap::new();
    for e in events {
        let previous = last.insert(&e.subject, e.idledgerposition).unwrap_or(0);
        assert!(
            e.idledgerposition >= previous,
            "customer {}: position {} arrived after {previous}",
            e.subject,
            e.idledgerposition
        );
    }
}

// ---------------------------------------------------------------------------------------
// A real HTTP receiver for webhooks
// ---------------------------------------------------------------------------------------

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub signature: Option<String>,
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
    pub status: u16,
    pub at: tokio::time::Instant,
}

/// How the receiver answers a request: status and optional `Retry-After`. Status
/// [`TOO_LATE`] takes the request and answers 200 only after [`LATE_BY`], longer than the
/// relay's webhook timeout in [`test_config`]: a delivery that seems to fail but arrived.
pub type Responder = Arc<dyn Fn(&CloudEvent, usize) -> (u16, Option<String>) + Send + Sync>;

pub const TOO_LATE: u16 = 0;
pub const LATE_BY: Duration = Duration::from_secs(3);

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    shutdown: CancellationToken,
}

impl Receiver {
    /// Serves `POST /hook` on 127.0.0.1 (on `port`, or a free one), answering with `respond`.
    pub async fn start(port: u16, respond: Responder) -> Self {
        use axum::body::Bytes;
        use axum::http::{HeaderMap, StatusCode};
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let log = received.clone();
        let handler = move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            let respond = respond.clone();
            async move {
                let header = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned)
                };
                let event: CloudEvent = serde_json::from_slice(&body).unwrap();
                let n = log.lock().unwrap().len();
                let (status, retry_after) = respond(&event, n);
                log.lock().unwrap().push(Received {
                    signature: header("idledger-signature"),
                    message_id: header("idledger-message-id"),
                    content_type: header("content-type"),
                    body: body.to_vec(),
                    status,
                    at: tokio::time::Instant::now(),
                });
                let status = if status == TOO_LATE {
                    tokio::time::sleep(LATE_BY).await;
                    200
                } else {
                    status
                };
                let mut response_headers = HeaderMap::new();
                if let Some(ra) = retry_after {
                    response_headers.insert("retry-after", ra.parse().unwrap());
                }
                (StatusCode::from_u16(status).unwrap(), response_headers, "")
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
                .unwrap();
        });
        Self {
            addr,
            received,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The events it accepted (2xx), in arrival order.
    pub fn accepted(&self) -> Vec<CloudEvent> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

/// Waits until `check` holds, polling; fails with `what` after `within`.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut check: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// A TCP proxy that can hold back what the server says
// ---------------------------------------------------------------------------------------

/// A TCP proxy to `upstream` that forwards both ways until [`stall`](Self::stall)ed: then
/// what the client sends still reaches the server, but the server's answers (PubAcks) wait in
/// the proxy until [`resume`](Self::resume) — a publish that is stored but never acknowledged.
pub struct StallingProxy {
    pub url: String,
    stalled: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = stalled.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let held = held.clone();
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 16 * 1024];
                    loop {
                        while held.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        let n = match server_read.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        while held.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { url, stalled, task }
    }

    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address a `nats://host:port` URL names.
pub fn nats_addr(url: &str) -> SocketAddr {
    let rest = url.strip_prefix("nats://").unwrap_or(url);
    let host_port = rest.rsplit('@').next().unwrap();
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap()
}
