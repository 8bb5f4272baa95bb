//! A real server on 127.0.0.1:0 over a fresh database, one token per role, and a client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;

use std::time::Duration;

use idledger_api::{ApiConfig, AppState, FeedSettings};
use idledger_domain::policy::Policy;
use idledger_store::{Ledger, LedgerOptions, MasterKey, Role};
#[allow(unused_imports)]
pub use idledger_testkit::{Engine, TestDb, on_both_engines};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const NOTICE_SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

pub struct TestApp {
    pub db: TestDb,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub ledger: Ledger,
    /// Token secrets by name: "idp", "crm", "web_app", "consent_portal", "support_portal",
    /// "consumer", "steward", "auditor", "admin", "dsar".
    pub tokens: HashMap<String, String>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestApp {
    pub async fn start(engine: Engine) -> Self {
        Self::start_with(engine, ApiConfig::default()).await
    }

    pub async fn start_with(engine: Engine, config: ApiConfig) -> Self {
        Self::start_with_policy(engine, config, Policy::default_policy().unwrap()).await
    }

    pub async fn start_with_policy(engine: Engine, config: ApiConfig, policy: Policy) -> Self {
        let db = TestDb::new(engine).await;
        let store = db.store().await;
        let ledger = Ledger::new(
            &store,
            MasterKey::generate(),
            policy,
            LedgerOptions::default(),
        );
        let tokens = store.tokens();
        let mut secrets = HashMap::new();
        for (name, role, subject) in [
            ("idp", Role::Source, Some("idp")),
            ("crm", Role::Source, Some("crm")),
            ("web_app", Role::Source, Some("web_app")),
            ("consent_portal", Role::Source, Some("consent_portal")),
            ("support_portal", Role::Source, Some("support_portal")),
            ("consumer", Role::Consumer, Some("crm-sync")),
            ("steward", Role::Steward, None),
            ("auditor", Role::Auditor, None),
            ("admin", Role::Admin, None),
            ("dsar", Role::Dsar, None),
        ] {
            let issued = tokens.create(role, subject, name).await.unwrap();
            secrets.insert(name.to_owned(), issued.secret);
        }
        // Quick polls and keep-alives, so event-stream tests run in well under a second.
        let feed = FeedSettings {
            source: "urn:idledger:test".to_owned(),
            poll_interval: Duration::from_millis(50),
            keep_alive: Duration::from_millis(300),
            ..FeedSettings::default()
        };
        let router = idledger_api::router(AppState::with_feed(ledger.clone(), feed), &config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(idledger_api::serve(
            listener,
            router,
            async move {
                let _ = stopped.await;
            },
            &config,
        ));
        Self {
            db,
            addr,
            client: reqwest::Client::new(),
            ledger,
            tokens: secrets,
            stop: Some(stop),
        }
    }

    /// Starts the server's graceful stop (as SIGTERM does for `idledger serve`).
    pub fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn token(&self, name: &str) -> &str {
        self.tokens
            .get(name)
            .unwrap_or_else(|| panic!("no token {name}"))
    }

    /// Sends a request; `as_` is a token name or None for no token.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        as_: Option<&str>,
        key: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.client.request(method, self.url(path));
        if let Some(name) = as_ {
            request = request.bearer_auth(self.token(name));
        }
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    pub async fn get(&self, path: &str, as_: &str) -> Reply {
        self.send(Method::GET, path, Some(as_), None, None).await
    }

    /// Registers a customer as `source` with extra changes; returns its id.
    pub async fn register(&self, source: &str, changes: Value) -> String {
        let key = format!("reg-{}", uuid::Uuid::now_v7());
        let reply = self
            .send(
                Method::POST,
                "/v1/customers",
                Some(source),
                Some(&key),
                Some(&json!({"provenance": provenance(), "changes": changes})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["customer_id"].as_str().unwrap().to_owned()
    }

    pub async fn command(&self, source: &str, customer: &str, key: &str, changes: Value) -> Reply {
        self.send(
            Method::POST,
            &format!("/v1/customers/{customer}/commands"),
            Some(source),
            Some(key),
            Some(&json!({"provenance": provenance(), "changes": changes})),
        )
        .await
    }

    /// Registers a customer; returns its id and the ids of the events recorded.
    pub async fn register_with_events(
        &self,
        source: &str,
        changes: Value,
    ) -> (String, Vec<String>) {
        let key = format!("reg-{}", uuid::Uuid::now_v7());
        let reply = self
            .send(
                Method::POST,
                "/v1/customers",
                Some(source),
                Some(&key),
                Some(&json!({"provenance": provenance(), "changes": changes})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        let events = reply.body["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        (
            reply.body["customer_id"].as_str().unwrap().to_owned(),
            events,
        )
    }

    /// Registers a consumer through the API as the admin; returns its view.
    pub async fn add_consumer(&self, body: Value) -> Value {
        let reply = self
            .send(
                Method::POST,
                "/v1/consumers",
                Some("admin"),
                None,
                Some(&body),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
        reply.body
    }

    /// A new consumer token for `consumer`; returns the name to use it by.
    pub async fn consumer_token(&mut self, consumer: &str) -> String {
        let name = format!("consumer:{consumer}");
        let issued = self
            .ledger
            .store()
            .tokens()
            .create(Role::Consumer, Some(consumer), &name)
            .await
            .unwrap();
        self.tokens.insert(name.clone(), issued.secret);
        name
    }

    /// A second steward's token (four eyes), labelled `steward-b`; returns its name.
    pub async fn second_steward(&mut self) -> String {
        let name = "steward-b".to_owned();
        if !self.tokens.contains_key(&name) {
            let issued = self
                .ledger
                .store()
                .tokens()
                .create(Role::Steward, None, &name)
                .await
                .unwrap();
            self.tokens.insert(name.clone(), issued.secret);
        }
        name
    }

    /// A new token of `role` for `subject`; returns the name to use it by.
    pub async fn token_of(&mut self, role: Role, subject: Option<&str>) -> String {
        let name = format!("{role}:{}", subject.unwrap_or("-"));
        let issued = self
            .ledger
            .store()
            .tokens()
            .create(role, subject, &name)
            .await
            .unwrap();
        self.tokens.insert(name.clone(), issued.secret);
        name
    }

    /// The database's event count (to prove nothing was written).
    pub async fn head(&self) -> u64 {
        self.ledger.head_position().await.unwrap()
    }
}

/// The customer's consent to `service`, the purpose the test consumers process for, through
/// the consent portal.
pub async fn consent_to_service(app: &TestApp, customer: &str) {
    let reply = app
        .command(
            "consent_portal",
            customer,
            &format!("grant-{customer}"),
            json!([grant("service", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

/// Every event of the change feed `token` reads, from its start (NDJSON, one a line).
pub async fn feed(app: &TestApp, token: &str) -> Vec<Value> {
    let reply = app.get("/v1/feed", token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

pub fn provenance() -> Value {
    json!({
        "actor": {"kind": "system", "id": "sync-job"},
        "evidence": {"kind": "email_link", "reference": "link-1"}
    })
}

pub fn grant(purpose: &str, jurisdiction: &str) -> Value {
    json!({
        "op": "grant_consent", "purpose": purpose, "basis": "consent",
        "notice": {"id": "privacy-notice", "version": "2026-01", "sha256": NOTICE_SHA},
        "channel": "web", "jurisdiction": jurisdiction
    })
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a problem document with this status and code.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(self.body["code"], code, "{}", self.text);
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        assert_eq!(self.body["status"], status);
        &self.body
    }
}
