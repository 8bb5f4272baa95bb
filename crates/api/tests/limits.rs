//! What one client may take of a real server (on 127.0.0.1, over a fresh database): slow and
//! idle connections are closed, a request over its time is answered 408, a token over its
//! rate or its requests in progress 429 with `Retry-After` (another token unaffected), an
//! upload over its cap 413 with nothing stored, one reconciliation run per consumer at a time
//! (409), and no query value makes the server fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use idledger_api::ApiConfig;
use idledger_api::limits::TokenLimits;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, TestApp, on_both_engines, provenance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_engines!(
    a_second_run_of_a_consumer_waits_for_the_first,
    an_upload_over_the_cap_is_413_and_stores_nothing,
    an_upload_stopped_by_its_time_bound_leaves_no_run_running,
    an_upload_that_stops_sending_is_answered_408,
);

/// Far beyond any bound under test: a test that hangs fails instead.
const PATIENCE: Duration = Duration::from_secs(20);

fn config() -> ApiConfig {
    ApiConfig {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        long_request_timeout: Duration::from_secs(2),
        ..ApiConfig::default()
    }
}

/// Reads until the server closes the connection (or `PATIENCE` runs out: a failure);
/// returns what it sent and how long that took.
async fn read_to_close(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {PATIENCE:?}; it sent: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&got).into_owned(),
        started.elapsed(),
    )
}

/// Reads one answer to a request (headers and a `Content-Length` body).
async fn read_answer(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                let status = text[9..12].parse().unwrap();
                return (status, text[end + 4..].to_owned());
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before the answer: {text}");
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_slow_header_a_silent_socket_and_an_idle_connection_are_closed() {
    let app = TestApp::start_with(Engine::Sqlite, config()).await;
    // Half a request header, then nothing.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    // A connection that never says anything.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // A kept-alive connection after one answer.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_answer(&mut idle).await;
    assert_eq!(status, 200);
    for (name, stream) in [
        ("slow header", &mut slow),
        ("silent", &mut silent),
        ("idle", &mut idle),
    ] {
        let (rest, took) = read_to_close(stream).await;
        assert!(
            !rest.contains("200 OK"),
            "{name}: answered a request never completed: {rest}"
        );
        assert!(
            took < Duration::from_secs(5),
            "{name}: closed after {took:?}"
        );
    }
    // The server itself is fine.
    assert_eq!(app.get("/v1/me", "idp").await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_request_over_its_time_is_answered_408() {
    let app = TestApp::start_with(Engine::Sqlite, config()).await;
    let customer = app.register("idp", json!([])).await;
    // The header and part of the body of a command, then nothing: the handler waits on the
    // body until the request's time is up.
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/customers/{customer}/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nIdempotency-Key: slow-1\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"changes\": ",
        app.token("idp")
    );
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_answer(&mut stream).await;
    let took = started.elapsed();
    assert_eq!(status, 408, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "request_timeout");
    assert_eq!(problem["type"], "urn:idledger:problem:request_timeout");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

fn limited(rate_per_sec: u32, burst: u32, max_in_flight: u32) -> ApiConfig {
    ApiConfig {
        token_limits: TokenLimits {
            rate_per_sec,
            burst,
            max_in_flight,
        },
        ..ApiConfig::default()
    }
}

#[tokio::test]
async fn a_token_over_its_rate_is_answered_429_and_another_is_not() {
    // One request a second on average, three at once: the fourth in a row is over.
    let app = TestApp::start_with(Engine::Sqlite, limited(1, 3, 0)).await;
    for _ in 0..3 {
        assert_eq!(app.get("/v1/me", "idp").await.status, StatusCode::OK);
    }
    let reply = app.get("/v1/me", "idp").await;
    assert_eq!(
        reply.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        reply.text
    );
    assert_eq!(reply.body["code"], "rate_limited");
    assert_eq!(reply.body["status"], 429);
    let retry: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "Retry-After: {retry}");
    // Another token has its own budget; a request without a token is not counted.
    assert_eq!(app.get("/v1/me", "crm").await.status, StatusCode::OK);
    let anonymous = app.send(Method::GET, "/v1/me", None, None, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    // Once the wait is over the token is served again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(app.get("/v1/me", "idp").await.status, StatusCode::OK);
}

/// Opens a command whose body stays incomplete: a request in progress until `finish`.
async fn hold_a_request(app: &TestApp, token: &str, customer: &str) -> TcpStream {
    let body = json!({"provenance": provenance(), "changes": [
        {"op": "set_field", "field": "name.given", "value": "Ada"}
    ]})
    .to_string();
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/customers/{customer}/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nIdempotency-Key: held-{}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.token(token),
        uuid::Uuid::now_v7(),
        body.len() + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn a_token_with_too_many_requests_in_progress_is_answered_429() {
    let app = TestApp::start_with(Engine::Sqlite, limited(0, 0, 1)).await;
    let customer = app.register("idp", json!([])).await;
    let mut held = hold_a_request(&app, "idp", &customer).await;
    // The held request is in progress once its handler waits on the body; poll until then.
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        let reply = app.get("/v1/me", "idp").await;
        if reply.status == StatusCode::TOO_MANY_REQUESTS {
            break reply;
        }
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
        assert!(Instant::now() < deadline, "the held request never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.body["code"], "too_many_in_flight");
    assert!(refused.headers.contains_key("retry-after"));
    // Another token is not held back.
    assert_eq!(app.get("/v1/me", "crm").await.status, StatusCode::OK);
    // The held request completes (its last byte: whitespace after the JSON)…
    held.write_all(b" ").await.unwrap();
    let (status, body) = read_answer(&mut held).await;
    assert!(status != 429 && status < 500, "{status} {body}");
    // …and gives its place back.
    assert_eq!(app.get("/v1/me", "idp").await.status, StatusCode::OK);
}

async fn add_consumers(app: &TestApp) {
    for id in ["crm-sync", "billing"] {
        app.add_consumer(json!({
            "id": id, "channel": "feed", "fields": ["email"], "purposes": ["service"],
        }))
        .await;
    }
}

async fn runs(app: &TestApp) -> Vec<Value> {
    let reply = app.get("/v1/reconciliations?limit=100", "steward").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body["runs"].as_array().unwrap().clone()
}

/// Starts a snapshot upload of `consumer` that sends its header and first row, then waits:
/// its run is running until the rest comes (or the request's time is up).
async fn open_upload(app: &TestApp, consumer: &str, customer: &str) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /v1/consumers/{consumer}/snapshots HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {}\r\nContent-Type: text/csv\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        app.token("steward")
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    send_chunk(
        &mut stream,
        &format!("customer_id,field,value\n{customer},email,ada@example.org\n"),
    )
    .await;
    stream
}

async fn send_chunk(stream: &mut TcpStream, data: &str) {
    let chunk = format!("{:x}\r\n{data}\r\n", data.len());
    stream.write_all(chunk.as_bytes()).await.unwrap();
}

/// Waits until `consumer` has a running run.
async fn until_running(app: &TestApp, consumer: &str) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(run) = runs(app)
            .await
            .into_iter()
            .find(|r| r["consumer_id"] == consumer && r["status"] == "running")
        {
            return run;
        }
        assert!(Instant::now() < deadline, "no run of {consumer} started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn start_run(app: &TestApp, consumer: &str) -> support::Reply {
    app.send(
        Method::POST,
        "/v1/reconciliations",
        Some("steward"),
        None,
        Some(&json!({"consumer_id": consumer})),
    )
    .await
}

async fn a_second_run_of_a_consumer_waits_for_the_first(engine: Engine) {
    let app = TestApp::start(engine).await;
    add_consumers(&app).await;
    let customer = app.register("idp", json!([])).await;
    let mut upload = open_upload(&app, "crm-sync", &customer).await;
    let first = until_running(&app, "crm-sync").await;
    // Neither another upload nor an acks run of the same consumer starts meanwhile.
    let reply = start_run(&app, "crm-sync").await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text);
    assert_eq!(reply.body["code"], "run_in_progress");
    assert_eq!(reply.body["consumer_id"], "crm-sync");
    assert!(reply.headers.contains_key("retry-after"));
    let reply = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "text/csv")
        .body("customer_id,field,value\n")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CONFLICT);
    // Another consumer's run goes ahead.
    let other = start_run(&app, "billing").await;
    assert_eq!(other.status, StatusCode::ACCEPTED, "{}", other.text);
    // The refused starts recorded nothing.
    let all = runs(&app).await;
    let of_crm: Vec<_> = all
        .iter()
        .filter(|r| r["consumer_id"] == "crm-sync")
        .collect();
    assert_eq!(of_crm.len(), 1, "{all:?}");
    // The first completes; then the consumer's next run starts.
    send_chunk(&mut upload, "").await;
    let (status, body) = read_answer(&mut upload).await;
    assert_eq!(status, 201, "{body}");
    let done: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(done["id"], first["id"]);
    assert_eq!(done["status"], "finished");
    let next = start_run(&app, "crm-sync").await;
    assert_eq!(next.status, StatusCode::ACCEPTED, "{}", next.text);
}

async fn an_upload_over_the_cap_is_413_and_stores_nothing(engine: Engine) {
    let app = TestApp::start_with(
        engine,
        ApiConfig {
            max_upload_bytes: 200,
            ..ApiConfig::default()
        },
    )
    .await;
    add_consumers(&app).await;
    let customer = app.register("idp", json!([])).await;
    let row = format!("{customer},email,ada@example.org\n");
    let big = format!("customer_id,field,value\n{}", row.repeat(10));
    // Declared too big: refused before anything starts.
    let reply = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "text/csv")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let problem: Value = reply.json().await.unwrap();
    assert_eq!(problem["code"], "payload_too_large");
    assert_eq!(problem["max_bytes"], 200);
    // Streamed without a length: refused once it crosses the cap, its run discarded.
    // (One chunk over the cap, and nothing after it: the server reads all that was sent, so
    // it closes the connection cleanly after its answer.)
    let mut stream = open_upload(&app, "crm-sync", &customer).await;
    send_chunk(&mut stream, &row.repeat(4)).await;
    let (status, body) = read_answer(&mut stream).await;
    assert_eq!(status, 413, "{body}");
    assert!(runs(&app).await.is_empty(), "{:?}", runs(&app).await);
    // Within the cap the same consumer's upload is compared.
    let small = format!("customer_id,field,value\n{row}");
    let reply = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("steward"))
        .header("content-type", "text/csv")
        .body(small)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    assert_eq!(runs(&app).await.len(), 1);
}

/// Waits until the run is no longer running; returns it.
async fn until_ended(app: &TestApp, run: &Value) -> Value {
    let path = format!("/v1/reconciliations/{}", run["id"].as_str().unwrap());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = app.get(&path, "steward").await;
        if reply.body["status"] != "running" {
            return reply.body;
        }
        assert!(Instant::now() < deadline, "the run stayed running");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn an_upload_stopped_by_its_time_bound_leaves_no_run_running(engine: Engine) {
    let app = TestApp::start_with(engine, config()).await;
    add_consumers(&app).await;
    let customer = app.register("idp", json!([])).await;
    let upload = open_upload(&app, "crm-sync", &customer).await;
    let run = until_running(&app, "crm-sync").await;
    // It keeps sending (so it is never idle), more slowly than the route's bound allows.
    let (mut answer, mut rows) = upload.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            let chunk = format!("{customer},email,ada@example.org\n");
            let chunk = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            if rows.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let started = Instant::now();
    let (status, body) = read_answer(&mut answer).await;
    assert_eq!(status, 408, "{body}");
    assert!(started.elapsed() < Duration::from_secs(10));
    trickle.abort();
    // Dropping the request cancelled the run: it is marked failed (just after the answer),
    // and the consumer's next run starts.
    let ended = until_ended(&app, &run).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let next = start_run(&app, "crm-sync").await;
    assert_eq!(next.status, StatusCode::ACCEPTED, "{}", next.text);
}

async fn an_upload_that_stops_sending_is_answered_408(engine: Engine) {
    let app = TestApp::start_with(
        engine,
        ApiConfig {
            request_timeout: Duration::from_secs(1),
            long_request_timeout: Duration::from_secs(600),
            ..ApiConfig::default()
        },
    )
    .await;
    add_consumers(&app).await;
    let customer = app.register("idp", json!([])).await;
    let mut upload = open_upload(&app, "crm-sync", &customer).await;
    let run = until_running(&app, "crm-sync").await;
    let started = Instant::now();
    let (status, body) = read_answer(&mut upload).await;
    assert_eq!(status, 408, "{body}");
    let problem: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["code"], "request_timeout");
    // Long before the route's own bound.
    assert!(started.elapsed() < Duration::from_secs(10));
    let ended = until_ended(&app, &run).await;
    assert_eq!(ended["status"], "failed", "{ended}");
    let next = start_run(&app, "crm-sync").await;
    assert_eq!(next.status, StatusCode::ACCEPTED, "{}", next.text);
}

#[tokio::test]
async fn no_query_value_makes_the_server_fail() {
    let app = TestApp::start(Engine::Sqlite).await;
    let customer = app.register("idp", json!([])).await;
    let huge = "99999999999999999999999999";
    let paths = [
        format!("/v1/exceptions?older_than={huge}d"),
        "/v1/exceptions?older_than=100000000d".to_owned(),
        format!("/v1/exceptions?older_than_secs={huge}"),
        "/v1/exceptions?older_than_secs=-9223372036854775808".to_owned(),
        format!("/v1/exceptions?limit={huge}"),
        "/v1/exceptions?after=zzz".to_owned(),
        format!("/v1/customers/{customer}?as_of=9999-12-31T23:59:59-23:59"),
        format!("/v1/customers/{customer}?as_of=0000-01-01T00:00:00%2B23:59"),
        format!("/v1/customers/{customer}?as_of=+262143-01-01T00:00:00Z"),
        format!("/v1/customers/{customer}/disclosures?after={huge}&limit={huge}"),
        format!("/v1/customers/{customer}/disclosures?after=18446744073709551615"),
        format!("/v1/customers/{customer}/handoffs?after=18446744073709551615&limit=0"),
        format!("/v1/reconciliations?limit={huge}"),
    ];
    for path in paths {
        let reply = app.get(&path, "steward").await;
        assert!(
            reply.status.is_success() || reply.status.is_client_error(),
            "{path}: {} {}",
            reply.status,
            reply.text
        );
    }
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["service"],
    }))
    .await;
    // Past the largest position (an int64, as the document says): refused, not wrapped.
    app.get("/v1/feed?after=18446744073709551615", "consumer")
        .await
        .problem(400, "invalid_query");
    let feed = app
        .get("/v1/feed?after=9223372036854775807", "consumer")
        .await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.text);
    let feed = app.get("/v1/feed?limit=4294967295", "consumer").await;
    assert_eq!(feed.status, StatusCode::BAD_REQUEST, "{}", feed.text);
}

#[tokio::test]
async fn the_steward_page_counts_against_its_token() {
    let app = TestApp::start_with(Engine::Sqlite, limited(1, 2, 0)).await;
    // Logging in carries no token yet: it is not counted.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = client
        .post(app.url("/steward/login"))
        .header("origin", app.url("").trim_end_matches('/'))
        .form(&[("token", app.token("steward"))])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let session = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = |app: &TestApp| {
        client
            .get(app.url("/steward"))
            .header("cookie", session.clone())
            .send()
    };
    // Its session cookie and its bearer token are one token with one budget.
    assert_eq!(page(&app).await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.get("/v1/me", "steward").await.status, StatusCode::OK);
    let over = page(&app).await.unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers().contains_key("retry-after"));
    let reply = app.get("/v1/me", "steward").await;
    assert_eq!(reply.body["code"], "rate_limited", "{}", reply.text);
}
