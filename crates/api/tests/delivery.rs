//! Delivery over real HTTP, on both engines: the consumer registry, the change feed as NDJSON
//! and as Server-Sent Events (purpose-limited, resumable), acknowledgements becoming consumer
//! state, the handoff log per customer and per consumer, and the 4xx for bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::{Engine, Reply, TestApp, grant, on_both_engines};

on_both_engines!(
    consumers_are_registered_listed_and_disabled,
    bad_registrations_are_refused_and_register_nothing,
    the_feed_serves_what_the_purpose_allows_as_ndjson,
    the_event_stream_resumes_from_last_event_id,
    acks_become_consumer_state,
    acks_that_match_nothing_delivered_are_refused_and_change_nothing,
    a_consumer_computes_value_hashes_with_its_own_key,
    a_pseudonymous_consumer_sees_and_answers_with_its_own_aliases,
    the_consumer_state_route_checks_its_input,
    handoffs_are_paged_per_customer_and_per_consumer,
    the_feed_refuses_callers_and_input_it_should,
    an_erased_customer_brings_one_erasure_notice,
    an_expired_value_reaches_the_feed_as_cleared,
    a_restriction_pauses_delivery_with_a_notice_and_a_resume,
    a_token_holds_a_bounded_number_of_event_streams,
    a_consumer_selecting_household_receives_membership_changes,
);

const SECRET: &str = "whsec-0123456789abcdef-never-shown";

fn feed_consumer(id: &str, purposes: &[&str]) -> Value {
    json!({"id": id, "channel": "feed", "fields": ["email"], "purposes": purposes})
}

fn set_email(n: u32) -> Value {
    json!([{"op": "set_field", "field": "email", "value": format!("user{n}@example.org")}])
}

/// A registered customer with an email, who consented to `purposes`.
async fn customer(app: &TestApp, n: u32, purposes: &[&str]) -> String {
    let c = app.register("idp", set_email(n)).await;
    for p in purposes {
        let reply = app
            .command(
                "consent_portal",
                &c,
                &format!("grant-{c}-{p}"),
                json!([grant(p, "DE")]),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    c
}

async fn withdraw(app: &TestApp, c: &str, purpose: &str) {
    let reply = app
        .command(
            "consent_portal",
            c,
            &format!("withdraw-{c}-{purpose}"),
            json!([{"op": "withdraw_consent", "purpose": purpose}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

/// One NDJSON page of the feed as `token`: the CloudEvents and `Idledger-Next-After`.
async fn feed_page(app: &TestApp, token: &str, query: &str) -> (Vec<Value>, u64) {
    let reply = app.get(&format!("/v1/feed{query}"), token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
    let next = reply
        .header("idledger-next-after")
        .unwrap()
        .parse()
        .unwrap();
    let events = reply
        .text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    (events, next)
}

/// `(type, subject)` of each CloudEvent.
fn kinds(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn change(c: &str) -> (String, String) {
    ("idledger.field.changed.v1".to_owned(), c.to_owned())
}

async fn consumers_are_registered_listed_and_disabled(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.register("idp", set_email(1)).await;
    let head = app.head().await;
    let reply = app
        .send(
            Method::POST,
            "/v1/consumers",
            Some("admin"),
            None,
            Some(&json!({
                "id": "cdp", "channel": "webhook",
                "webhook": {"url": "https://cdp.example/hooks/idledger", "secret": SECRET},
                "fields": ["email", "consent.*", "email"], "purposes": ["analytics"],
                "start_at": "now",
            })),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    assert_eq!(reply.header("location"), Some("/v1/consumers/cdp"));
    assert!(!reply.text.contains(SECRET), "the secret is never echoed");
    assert_eq!(reply.body["channel"], "webhook");
    assert_eq!(
        reply.body["webhook_url"],
        "https://cdp.example/hooks/idledger"
    );
    assert_eq!(reply.body["fields"], json!(["email", "consent.*"]));
    assert_eq!(reply.body["purposes"], json!(["analytics"]));
    assert_eq!(reply.body["enabled"], true);
    assert_eq!(reply.body["region"], Value::Null, "where the controller is");
    assert_eq!(reply.body["transfer_basis"], Value::Null);
    assert_eq!(
        reply.body["checkpoint"], head,
        "start_at now: from the head"
    );
    let crm = app
        .add_consumer(
            json!({"id": "crm", "channel": "nats", "fields": ["*"], "purposes": ["service"]}),
        )
        .await;
    assert_eq!(crm["checkpoint"], 0, "start_at beginning by default");
    let abroad = app
        .add_consumer(json!({
            "id": "us-crm", "channel": "nats", "fields": ["email"], "purposes": ["service"],
            "region": "us", "transfer_basis": "scc",
        }))
        .await;
    assert_eq!(abroad["region"], "US");
    assert_eq!(abroad["transfer_basis"], "scc");
    assert_eq!(app.get("/v1/consumers/us-crm", "admin").await.body, abroad);
    let feed = app
        .add_consumer(feed_consumer("crm-sync", &["service"]))
        .await;
    assert_eq!(
        feed["checkpoint"],
        Value::Null,
        "a feed consumer keeps its own position"
    );

    let list = app.get("/v1/consumers", "admin").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    assert!(!list.text.contains(SECRET));
    let ids: Vec<&str> = list.body["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["cdp", "crm", "crm-sync", "us-crm"]);
    let one = app.get("/v1/consumers/cdp", "admin").await;
    assert_eq!(one.status, StatusCode::OK);
    assert!(!one.text.contains(SECRET));
    assert_eq!(one.body["id"], "cdp");
    app.get("/v1/consumers/nobody", "admin")
        .await
        .problem(404, "consumer_not_found");
    app.get("/v1/consumers/Not.An.Id", "admin")
        .await
        .problem(404, "invalid_consumer_id");
    app.send(
        Method::POST,
        "/v1/consumers",
        Some("admin"),
        None,
        Some(&feed_consumer("crm", &["service"])),
    )
    .await
    .problem(409, "consumer_exists");

    let disabled = app
        .send(
            Method::POST,
            "/v1/consumers/crm/disable",
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.text);
    assert_eq!(disabled.body["enabled"], false);
    let at = disabled.body["disabled_at"].clone();
    assert!(at.is_string());
    let again = app
        .send(
            Method::POST,
            "/v1/consumers/crm/disable",
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(
        again.body["disabled_at"], at,
        "disabling twice changes nothing"
    );
    app.send(
        Method::POST,
        "/v1/consumers/nobody/disable",
        Some("admin"),
        None,
        None,
    )
    .await
    .problem(404, "consumer_not_found");
    let listed = app.get("/v1/consumers", "admin").await;
    assert_eq!(
        listed.body["consumers"][1]["enabled"], false,
        "kept, disabled"
    );
}

async fn bad_registrations_are_refused_and_register_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ok = json!({"id": "crm", "channel": "nats", "fields": ["email"], "purposes": ["service"]});
    let with = |key: &str, value: Value| {
        let mut body = ok.clone();
        body[key] = value;
        body
    };
    let webhook = |url: &str, secret: &str| {
        let mut body = with("channel", json!("webhook"));
        body["webhook"] = json!({"url": url, "secret": secret});
        body
    };
    let cases: Vec<(Value, &str)> = vec![
        (with("id", json!("Crm")), "id"),
        (with("id", json!("crm.eu")), "id"),
        (with("id", json!("")), "id"),
        (with("id", json!("x".repeat(65))), "id"),
        (with("channel", json!("smtp")), "channel"),
        (with("channel", json!("webhook")), "webhook"),
        (
            with(
                "webhook",
                json!({"url": "https://x.example", "secret": SECRET}),
            ),
            "webhook",
        ),
        (webhook("ftp://x.example/hook", SECRET), "webhook.url"),
        (webhook("https://", SECRET), "webhook.url"),
        (webhook("https://x.example/hook", "short"), "webhook.secret"),
        (
            webhook("https://x.example/hook", "sixteen chars with spaces"),
            "webhook.secret",
        ),
        (with("fields", json!([])), "fields"),
        (with("fields", json!(["shoe_size"])), "fields"),
        (with("purposes", json!([])), "purposes"),
        (with("purposes", json!(["Not A Purpose"])), "purposes"),
        (with("start_at", json!("yesterday")), "start_at"),
        (with("region", json!("UK")), "region"),
        (with("transfer_basis", json!("scc")), "transfer_basis"),
        (
            {
                let mut body = with("region", json!("US"));
                body["transfer_basis"] = json!("handshake");
                body
            },
            "transfer_basis",
        ),
    ];
    for (i, (body, field)) in cases.iter().enumerate() {
        let reply = app
            .send(
                Method::POST,
                "/v1/consumers",
                Some("admin"),
                None,
                Some(body),
            )
            .await;
        let problem = reply.problem(422, "invalid_value");
        assert_eq!(problem["field"], *field, "case {i}: {}", reply.text);
        assert!(!reply.text.contains(SECRET), "case {i}");
    }
    for (body, status, code) in [
        (
            with("colour", json!("blue")).to_string(),
            422,
            "invalid_body",
        ),
        (
            with("fields", json!("email")).to_string(),
            422,
            "invalid_body",
        ),
        ("{\"id\":".to_owned(), 400, "malformed_json"),
    ] {
        let response = app
            .client
            .post(app.url("/v1/consumers"))
            .bearer_auth(app.token("admin"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        let problem: Value = response.json().await.unwrap();
        assert_eq!(problem["code"], code);
    }
    let list = app.get("/v1/consumers", "admin").await;
    assert_eq!(list.body["consumers"], json!([]), "nothing was registered");
}

async fn the_feed_serves_what_the_purpose_allows_as_ndjson(engine: Engine) {
    let app = TestApp::start(engine).await;
    // The consumer token's subject is crm-sync: a marketing tool fed over HTTP.
    app.add_consumer(feed_consumer("crm-sync", &["marketing"]))
        .await;
    let a = customer(&app, 1, &["marketing"]).await;
    let b = customer(&app, 2, &[]).await;
    let (events, next) = feed_page(&app, "consumer", "").await;
    assert_eq!(
        kinds(&events),
        [change(&a)],
        "B never consented: nothing of B"
    );
    assert_eq!(next, app.head().await, "the page reached the head");
    let e = &events[0];
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["source"], "urn:idledger:test");
    assert_eq!(e["idledgerconsumer"], "crm-sync");
    assert_eq!(e["data"]["field"], "email");
    assert_eq!(e["data"]["value"], "user1@example.org");
    // At the head: nothing new, the cursor stays.
    let (none, same) = feed_page(&app, "consumer", &format!("?after={next}")).await;
    assert!(none.is_empty());
    assert_eq!(same, next);

    // A withdraws marketing: one withdrawal notice, then nothing of A (B still nothing).
    withdraw(&app, &a, "marketing").await;
    for (c, n) in [(&a, 3), (&b, 4)] {
        let reply = app
            .command("idp", c, &format!("email-{n}"), set_email(n))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let (events, _) = feed_page(&app, "consumer", &format!("?after={next}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.consent.withdrawn.v1".to_owned(), a.clone())]
    );
    assert_eq!(events[0]["data"]["reason"], "withdrawn");
    assert_eq!(events[0]["data"]["action"], "stop_processing_and_delete");
    // Small pages walk the same log: the cursor moves even over pages that carry nothing.
    let mut after = 0;
    let mut walked = Vec::new();
    loop {
        let (events, next) = feed_page(&app, "consumer", &format!("?after={after}&limit=1")).await;
        walked.extend(kinds(&events));
        if next == after {
            break;
        }
        after = next;
    }
    assert_eq!(after, app.head().await);
    assert_eq!(
        walked,
        Vec::<(String, String)>::new(),
        "re-reading the log decides on today's state: A's basis is gone and the notice was given"
    );
}

/// Server-Sent Events as read off the wire.
#[derive(Debug, Default, Clone)]
struct Sse {
    id: Option<u64>,
    event: Option<String>,
    data: String,
}

struct SseReader {
    response: reqwest::Response,
    buffer: String,
    /// Comment lines seen (keep-alives).
    comments: usize,
}

impl SseReader {
    async fn open(app: &TestApp, token: &str, last_event_id: Option<&str>) -> Self {
        let mut request = app
            .client
            .get(app.url("/v1/feed"))
            .bearer_auth(app.token(token))
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        Self {
            response,
            buffer: String::new(),
            comments: 0,
        }
    }

    /// The next event; `None` when the stream ended. Panics after `within`.
    async fn next(&mut self, within: Duration) -> Option<Sse> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                let mut is_event = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some((key, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        is_event = true;
                        match key {
                            "id" => sse.id = Some(value.parse().unwrap()),
                            "event" => sse.event = Some(value.to_owned()),
                            "data" => sse.data.push_str(value),
                            _ => {}
                        }
                    }
                }
                if is_event {
                    return Some(sse);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("no event in time")
                .unwrap()?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Waits for `n` events.
    async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::new();
        while out.len() < n {
            out.push(
                self.next(Duration::from_secs(10))
                    .await
                    .expect("stream ended"),
            );
        }
        out
    }
}

fn cloud(sse: &Sse) -> Value {
    serde_json::from_str(&sse.data).unwrap()
}

async fn the_event_stream_resumes_from_last_event_id(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["service"]))
        .await;
    let customers = [
        customer(&app, 1, &["service"]).await,
        customer(&app, 2, &["service"]).await,
        customer(&app, 3, &["service"]).await,
    ];
    let mut stream = SseReader::open(&app, "consumer", None).await;
    let first = stream.take(3).await;
    for (sse, c) in first.iter().zip(&customers) {
        let event = cloud(sse);
        assert_eq!(sse.event.as_deref(), Some("idledger.field.changed.v1"));
        assert_eq!(event["subject"], c.as_str());
        assert_eq!(
            sse.id,
            Some(event["idledgerposition"].as_u64().unwrap()),
            "id: is the log position"
        );
    }
    // Open at the head: new events arrive as they are written; keep-alives meanwhile.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reply = app
        .command("idp", &customers[0], "later", set_email(9))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let live = stream.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(cloud(&live)["data"]["value"], "user9@example.org");
    assert!(stream.comments > 0, "keep-alive comments while idle");
    drop(stream);

    // Reconnect after the second event: the third and the later one follow, nothing before.
    let resume_from = first[1].id.unwrap().to_string();
    let mut resumed = SseReader::open(&app, "consumer", Some(&resume_from)).await;
    let again = resumed.take(2).await;
    assert_eq!(cloud(&again[0])["id"], cloud(&first[2])["id"]);
    assert_eq!(
        again[0].data, first[2].data,
        "a re-sent message is the same message"
    );
    assert_eq!(cloud(&again[1])["id"], cloud(&live)["id"]);
    drop(resumed);
    // `after` works for streams too; Last-Event-ID wins over it.
    let mut from_query = {
        let response = app
            .client
            .get(app.url(&format!("/v1/feed?after={resume_from}")))
            .bearer_auth(app.token("consumer"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        SseReader {
            response,
            buffer: String::new(),
            comments: 0,
        }
    };
    assert_eq!(from_query.take(1).await[0].data, first[2].data);
    let bad = app
        .client
        .get(app.url("/v1/feed"))
        .bearer_auth(app.token("consumer"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["code"], "invalid_last_event_id");
    // A graceful stop ends open streams at once rather than waiting out the grace period.
    let mut open = SseReader::open(&app, "consumer", None).await;
    open.take(1).await;
    app.shut_down();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while open.next(Duration::from_secs(5)).await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the stream ended with the server's stop");
}

/// A feed consumer that was sent two versions of a customer's email, and a token of a
/// consumer that is not registered.
async fn acks_scene(engine: Engine) -> (TestApp, String, String, Vec<Value>) {
    let mut app = TestApp::start(engine).await;
    let ghost = app.consumer_token("ghost").await;
    app.add_consumer(feed_consumer("crm-sync", &["service"]))
        .await;
    let c = customer(&app, 1, &["service"]).await;
    let reply = app.command("idp", &c, "second", set_email(2)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let (events, _) = feed_page(&app, "consumer", "").await;
    assert_eq!(events.len(), 2);
    (app, ghost, c, events)
}

fn applied_ack(e: &Value) -> Value {
    json!({
        "event_id": e["id"], "customer_id": e["subject"], "field": e["data"]["field"],
        "version": e["data"]["version"], "value_hash": e["data"]["value_hash"],
        "status": "applied",
    })
}

async fn post_ack(app: &TestApp, token: &str, body: &Value) -> Reply {
    app.send(Method::POST, "/v1/acks", Some(token), None, Some(body))
        .await
}

async fn acks_become_consumer_state(engine: Engine) {
    let (app, _, c, events) = acks_scene(engine).await;
    let recorded = post_ack(&app, "consumer", &applied_ack(&events[1])).await;
    assert_eq!(recorded.status, StatusCode::OK, "{}", recorded.text);
    assert_eq!(recorded.body["outcome"], "recorded");
    let older = post_ack(&app, "consumer", &applied_ack(&events[0])).await;
    assert_eq!(older.status, StatusCode::OK, "{}", older.text);
    assert_eq!(older.body["outcome"], "superseded");
    assert_eq!(older.body["stored_version"], events[1]["data"]["version"]);

    let state = app
        .get(
            &format!("/v1/consumers/crm-sync/state?customer={c}"),
            "auditor",
        )
        .await;
    assert_eq!(state.status, StatusCode::OK, "{}", state.text);
    let field = &state.body["fields"][0];
    assert_eq!(field["field"], "email");
    assert_eq!(field["status"], "applied");
    assert_eq!(field["event_id"], events[1]["id"]);
    assert_eq!(field["value_hash"], events[1]["data"]["value_hash"]);
    // A rejection, with its reason, is state too.
    let mut rejected = applied_ack(&events[1]);
    rejected["status"] = json!("rejected");
    rejected["reason"] = json!("the CRM refuses addresses at example.org");
    assert_eq!(
        post_ack(&app, "consumer", &rejected).await.status,
        StatusCode::OK
    );
    let state = app
        .get(
            &format!("/v1/consumers/crm-sync/state?customer={c}"),
            "steward",
        )
        .await;
    assert_eq!(state.body["fields"][0]["status"], "rejected");
    assert_eq!(
        state.body["fields"][0]["reason"],
        "the CRM refuses addresses at example.org"
    );
}

async fn acks_that_match_nothing_delivered_are_refused_and_change_nothing(engine: Engine) {
    let (app, ghost, c, events) = acks_scene(engine).await;
    let ack = applied_ack;
    let post = async |token: &str, body: &Value| post_ack(&app, token, body).await;
    assert_eq!(
        post("consumer", &ack(&events[1])).await.status,
        StatusCode::OK
    );
    let mut bad = Vec::new();
    for (key, value) in [
        ("event_id", json!(uuid::Uuid::now_v7())),
        ("field", json!("phone")),
        ("status", json!("maybe")),
        ("value_hash", json!("md5:abc")),
        ("version", json!(-1)),
        ("extra", json!(1)),
    ] {
        let mut body = ack(&events[1]);
        body[key] = value;
        bad.push(body);
    }
    let mut no_reason = ack(&events[1]);
    no_reason["status"] = json!("rejected");
    bad.push(no_reason);
    bad.push(json!([1, 2, 3]));
    for body in &bad {
        post("consumer", body).await.problem(422, "invalid_ack");
    }
    let response = app
        .client
        .post(app.url("/v1/acks"))
        .bearer_auth(app.token("consumer"))
        .header("content-type", "application/json")
        .body("{\"event_id\":")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .client
        .post(app.url("/v1/acks"))
        .bearer_auth(app.token("consumer"))
        .body(ack(&events[1]).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let mut rejected = ack(&events[1]);
    rejected["status"] = json!("rejected");
    rejected["reason"] = json!("refused by the wrong consumer");
    post(&ghost, &rejected)
        .await
        .problem(403, "consumer_not_registered");
    post("idp", &rejected).await.problem(403, "forbidden_role");
    let state = app
        .get(
            &format!("/v1/consumers/crm-sync/state?customer={c}"),
            "auditor",
        )
        .await;
    assert_eq!(state.body["fields"][0]["status"], "applied", "unchanged");
    assert_eq!(state.body["fields"][0]["event_id"], events[1]["id"]);
}

async fn a_consumer_computes_value_hashes_with_its_own_key(engine: Engine) {
    let (app, ghost, c, events) = acks_scene(engine).await;
    app.add_consumer(feed_consumer("cdp", &["service"])).await;
    let route = "/v1/consumers/crm-sync/hash-key";
    let own = app.get(route, "consumer").await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.header("cache-control"), Some("no-store"));
    assert_eq!(own.body["algorithm"], "hmac-sha256");
    let key = hex::decode(own.body["key"].as_str().unwrap()).unwrap();
    // The ack signing key is a second secret of the consumer's, the one the relay checks.
    let crm = idledger_store::delivery::ConsumerId::parse("crm-sync").unwrap();
    assert_eq!(own.body["ack_key"], app.ledger.ack_key(&crm).to_hex());
    assert_ne!(own.body["ack_key"], own.body["key"]);
    // What the contract says, computed by the consumer: HMAC-SHA256 of the value's JSON.
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(json!("user2@example.org").to_string().as_bytes());
    let expected = format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(events[1]["data"]["value_hash"], expected.as_str());
    let mut ack = applied_ack(&events[1]);
    ack["value_hash"] = json!(expected);
    assert_eq!(
        post_ack(&app, "consumer", &ack).await.status,
        StatusCode::OK
    );
    let state = app
        .get(
            &format!("/v1/consumers/crm-sync/state?customer={c}"),
            "auditor",
        )
        .await;
    assert_eq!(state.body["fields"][0]["value_hash"], expected.as_str());
    // An unkeyed SHA-256 of the value is refused: it would expose the value to a dictionary.
    let unkeyed = hex::encode(Sha256::digest(b"\"user2@example.org\""));
    ack["value_hash"] = json!(format!("sha256:{unkeyed}"));
    post_ack(&app, "consumer", &ack)
        .await
        .problem(422, "invalid_ack");

    // An admin reads any consumer's key; each consumer has its own.
    assert_eq!(app.get(route, "admin").await.body["key"], own.body["key"]);
    let other = app.get("/v1/consumers/cdp/hash-key", "admin").await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    assert_ne!(other.body["key"], own.body["key"]);
    // Nobody else reads one.
    app.get("/v1/consumers/cdp/hash-key", "consumer")
        .await
        .problem(403, "forbidden_consumer");
    app.get(route, &ghost)
        .await
        .problem(403, "forbidden_consumer");
    for role in ["idp", "steward", "auditor"] {
        app.get(route, role).await.problem(403, "forbidden_role");
    }
    app.get("/v1/consumers/nobody/hash-key", "admin")
        .await
        .problem(404, "consumer_not_found");
}

async fn a_pseudonymous_consumer_sees_and_answers_with_its_own_aliases(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    let mut crm = feed_consumer("crm-sync", &["service"]);
    crm["pseudonymous"] = json!(true);
    crm["fields"] = json!(["email", "phone"]);
    let registered = app.add_consumer(crm).await;
    assert_eq!(registered["pseudonymous"], true, "{registered}");
    let mut other = feed_consumer("cdp", &["service"]);
    other["pseudonymous"] = json!(true);
    app.add_consumer(other).await;
    let cdp = app.consumer_token("cdp").await;
    let a = customer(&app, 1, &["service"]).await;
    let b = customer(&app, 2, &["service"]).await;
    let reply = app.command("idp", &a, "second", set_email(3)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);

    // Subjects are aliases: stable per customer, one per consumer, never the id.
    let (events, _) = feed_page(&app, "consumer", "").await;
    let page = app.get("/v1/feed", "consumer").await.text;
    assert!(!page.contains(&a) && !page.contains(&b), "{page}");
    let subjects: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 3, "{subjects:?}");
    assert_eq!(subjects[0], subjects[2], "one alias per customer");
    assert_ne!(subjects[0], subjects[1]);
    let (cdp_events, _) = feed_page(&app, &cdp, "").await;
    assert_ne!(
        cdp_events[0]["subject"], events[0]["subject"],
        "another consumer's alias"
    );

    // Acks name the customer by alias; the id itself is not this consumer's name for it.
    let latest = &events[2];
    let ack = applied_ack(latest);
    assert_eq!(
        post_ack(&app, "consumer", &ack).await.status,
        StatusCode::OK
    );
    let state = app
        .get(
            &format!("/v1/consumers/crm-sync/state?customer={a}"),
            "auditor",
        )
        .await;
    assert_eq!(
        state.body["fields"][0]["event_id"], latest["id"],
        "{}",
        state.text
    );
    let mut by_id = ack.clone();
    by_id["customer_id"] = json!(a);
    post_ack(&app, "consumer", &by_id)
        .await
        .problem(422, "invalid_ack");
    let mut by_other_alias = ack.clone();
    by_other_alias["customer_id"] = cdp_events[0]["subject"].clone();
    post_ack(&app, "consumer", &by_other_alias)
        .await
        .problem(422, "invalid_ack");

    // Its snapshot names customers by alias too, and its answer never shows their ids. An
    // alias this consumer was never given (another's, or one of a customer the record never
    // held) is an invalid row, not an unknown customer.
    let never_held = app
        .ledger
        .customer_names(
            &app.ledger
                .store()
                .deliveries()
                .consumer(&idledger_store::delivery::ConsumerId::parse("crm-sync").unwrap())
                .await
                .unwrap()
                .unwrap(),
        )
        .show(idledger_domain::ids::CustomerId::generate());
    let csv = format!(
        "customer_id,field,value\n{},email,user3@example.org\n{},email,wrong@example.org\n{},email,user3@example.org\n{never_held},email,user3@example.org\n",
        subjects[0],
        subjects[1],
        cdp_events[0]["subject"].as_str().unwrap()
    );
    let reply = app
        .client
        .post(app.url("/v1/consumers/crm-sync/snapshots"))
        .bearer_auth(app.token("consumer"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    let reply = Reply::from(reply).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text);
    let report = &reply.body["report"]["consumers"][0];
    assert_eq!(report["in_sync"], 1, "{}", reply.text);
    assert_eq!(report["counts"]["different"], 1, "{}", reply.text);
    assert_eq!(
        report["counts"]["invalid_row"], 2,
        "another's alias, and one never given: {}",
        reply.text
    );
    assert_eq!(
        report["examples"]["different"][0]["customer_id"], subjects[1],
        "{}",
        reply.text
    );
    assert!(
        !reply.text.contains(&a) && !reply.text.contains(&b),
        "{}",
        reply.text
    );
    // A steward reads the same run with the customers' ids.
    let run = app
        .get(
            &format!("/v1/reconciliations/{}", reply.body["id"].as_str().unwrap()),
            "steward",
        )
        .await;
    assert!(run.text.contains(&b), "{}", run.text);
}

async fn the_consumer_state_route_checks_its_input(engine: Engine) {
    let (app, _, c, _) = acks_scene(engine).await;
    app.get("/v1/consumers/crm-sync/state", "auditor")
        .await
        .problem(400, "invalid_query");
    app.get("/v1/consumers/crm-sync/state?customer=42", "auditor")
        .await
        .problem(400, "invalid_query");
    app.get(
        &format!("/v1/consumers/nobody/state?customer={c}"),
        "auditor",
    )
    .await
    .problem(404, "consumer_not_found");
}

async fn handoffs_are_paged_per_customer_and_per_consumer(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["marketing"]))
        .await;
    let a = customer(&app, 1, &["marketing"]).await;
    let b = customer(&app, 2, &[]).await;
    for n in 3..6 {
        let reply = app.command("idp", &a, &format!("e{n}"), set_email(n)).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let (mut events, next) = feed_page(&app, "consumer", "").await;
    assert_eq!(events.len(), 4, "4 changes");
    // Read again (a consumer that lost its position): the same messages, logged once.
    let (again, _) = feed_page(&app, "consumer", "").await;
    assert_eq!(again, events);
    withdraw(&app, &a, "marketing").await;
    let (notice, _) = feed_page(&app, "consumer", &format!("?after={next}")).await;
    assert_eq!(notice.len(), 1, "1 notice");
    events.extend(notice);

    let of_a = app
        .get(&format!("/v1/customers/{a}/handoffs"), "auditor")
        .await;
    assert_eq!(of_a.status, StatusCode::OK, "{}", of_a.text);
    let items = of_a.body["items"].as_array().unwrap();
    let kinds: Vec<&str> = items.iter().map(|h| h["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["change", "change", "change", "change", "notice"]);
    assert_eq!(of_a.body["next_after"], Value::Null, "one page");
    let first = &items[0];
    assert_eq!(first["consumer_id"], "crm-sync");
    assert_eq!(first["channel"], "feed");
    assert_eq!(first["fields"], json!(["email"]));
    assert_eq!(first["message_id"], events[0]["id"]);
    assert_eq!(first["basis"][0]["purpose"], "marketing");
    assert_eq!(first["basis"][0]["status"], "granted");
    assert_eq!(items[4]["basis"][0]["status"], "withdrawn");
    let of_b = app
        .get(&format!("/v1/customers/{b}/handoffs"), "steward")
        .await;
    assert_eq!(of_b.body["items"], json!([]), "nothing of B was handed off");

    // Paging through the consumer's log, two at a time.
    let mut after: Option<u64> = None;
    let mut seen = Vec::new();
    loop {
        let query = match after {
            Some(a) => format!("?limit=2&after={a}"),
            None => "?limit=2".to_owned(),
        };
        let page = app
            .get(
                &format!("/v1/consumers/crm-sync/handoffs{query}"),
                "auditor",
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        for h in page.body["items"].as_array().unwrap() {
            seen.push(h["message_id"].as_str().unwrap().to_owned());
        }
        match page.body["next_after"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let ids: Vec<String> = events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen, ids,
        "every handoff once, in order (re-served ones too)"
    );
    // Bad input.
    for path in [
        format!("/v1/customers/{a}/handoffs?limit=0"),
        format!("/v1/customers/{a}/handoffs?limit=1001"),
        format!("/v1/customers/{a}/handoffs?after=-1"),
        // Past the largest position the document's int64 allows: refused, not wrapped.
        format!("/v1/customers/{a}/handoffs?after=9223372036854775808"),
        format!("/v1/customers/{a}/disclosures?after=9223372036854775808"),
        format!("/v1/customers/{a}/handoffs?page=2"),
        "/v1/consumers/crm-sync/handoffs?limit=x".to_owned(),
    ] {
        app.get(&path, "auditor")
            .await
            .problem(400, "invalid_query");
    }
    let unknown = uuid::Uuid::now_v7();
    app.get(&format!("/v1/customers/{unknown}/handoffs"), "auditor")
        .await
        .problem(404, "not_found");
    app.get("/v1/customers/not-a-uuid/handoffs", "auditor")
        .await
        .problem(404, "invalid_customer_id");
    app.get("/v1/consumers/nobody/handoffs", "auditor")
        .await
        .problem(404, "consumer_not_found");
}

async fn the_feed_refuses_callers_and_input_it_should(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["service"]))
        .await;
    app.add_consumer(
        json!({"id": "crm", "channel": "nats", "fields": ["email"], "purposes": ["service"]}),
    )
    .await;
    customer(&app, 1, &["service"]).await;
    let ghost = app.consumer_token("ghost").await;
    app.get("/v1/feed", &ghost)
        .await
        .problem(403, "consumer_not_registered");
    let nats = app.consumer_token("crm").await;
    let problem = app.get("/v1/feed", &nats).await;
    assert_eq!(
        problem.problem(403, "not_a_feed_consumer")["channel"],
        "nats"
    );
    app.get("/v1/feed", "idp")
        .await
        .problem(403, "forbidden_role");
    app.send(Method::GET, "/v1/feed", None, None, None)
        .await
        .problem(401, "unauthenticated");
    for query in [
        "?limit=0",
        "?limit=1001",
        "?after=-3",
        "?after=abc",
        "?after=9223372036854775808",
        "?from=1",
    ] {
        app.get(&format!("/v1/feed{query}"), "consumer")
            .await
            .problem(400, "invalid_query");
    }
    let accept = async |value: &str| -> Reply {
        let response = app
            .client
            .get(app.url("/v1/feed"))
            .bearer_auth(app.token("consumer"))
            .header("accept", value)
            .send()
            .await
            .unwrap();
        Reply::from(response).await
    };
    let doc = app
        .send(Method::GET, "/v1/openapi.json", None, None, None)
        .await;
    let content = &doc.body["paths"]["/v1/feed"]["get"]["responses"]["200"]["content"];
    assert!(
        content["application/x-ndjson"].is_object() && content["text/event-stream"].is_object()
    );
    accept("application/xml")
        .await
        .problem(406, "not_acceptable");
    for ok in [
        "*/*",
        "application/x-ndjson",
        "application/*;q=0.5, text/html",
    ] {
        assert_eq!(accept(ok).await.status, StatusCode::OK, "{ok}");
    }

    // An open stream ends when its consumer is disabled; then the feed refuses it.
    let mut stream = SseReader::open(&app, "consumer", None).await;
    stream.take(1).await;
    let disabled = app
        .send(
            Method::POST,
            "/v1/consumers/crm-sync/disable",
            Some("admin"),
            None,
            None,
        )
        .await;
    assert_eq!(disabled.status, StatusCode::OK);
    assert!(
        stream.next(Duration::from_secs(10)).await.is_none(),
        "the stream ends"
    );
    app.get("/v1/feed", "consumer")
        .await
        .problem(403, "consumer_disabled");
}

async fn an_erased_customer_brings_one_erasure_notice(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["service"]))
        .await;
    let a = customer(&app, 1, &["service"]).await;
    let b = customer(&app, 2, &["service"]).await;
    let (events, next) = feed_page(&app, "consumer", "").await;
    assert_eq!(kinds(&events), [change(&a), change(&b)]);
    let reply = app.command("idp", &a, "late", set_email(3)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let erased = app
        .send(
            Method::POST,
            &format!("/v1/customers/{a}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "DSR-1", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    // The change written before the erasure is shredded: not delivered; one erasure notice.
    let (events, _) = feed_page(&app, "consumer", &format!("?after={next}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.customer.erased.v1".to_owned(), a.clone())]
    );
    assert_eq!(events[0]["data"]["action"], "delete_all");
    assert_eq!(events[0]["data"]["erased_at"], erased.body["erased_at"]);
    // Re-reading the whole log: nothing of A but nothing more either (the notice was given).
    let (all, _) = feed_page(&app, "consumer", "").await;
    assert_eq!(kinds(&all), [change(&b)]);
    // The handoff log keeps the record of disclosure, erasure notice included.
    let log = app
        .get(&format!("/v1/customers/{a}/handoffs"), "auditor")
        .await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let kinds: Vec<&str> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["change", "erasure"]);
}

/// Retention: an expired value goes to the consumer as `cleared`, from the retention source;
/// an expired consent record ends the basis, and the consumer gets the withdrawal notice.
async fn an_expired_value_reaches_the_feed_as_cleared(engine: Engine) {
    let policy = idledger_domain::policy::DEFAULT_POLICY_TOML
        .replace(
            "[fields.\"preferences.*\"]\n",
            "[fields.\"preferences.*\"]\nretain_days = 730\n",
        )
        .replace(
            "[consent_max_age_days]",
            "[consent_retention_days]\nmarketing = 1095\n\n[consent_max_age_days]",
        );
    let policy = idledger_domain::policy::Policy::from_toml(&policy).unwrap();
    let app = TestApp::start_with_policy(engine, idledger_api::ApiConfig::default(), policy).await;
    app.add_consumer(
        json!({"id": "crm-sync", "channel": "feed", "fields": ["preferences.*"], "purposes": ["marketing"]}),
    )
    .await;
    let c = customer(&app, 1, &["marketing"]).await;
    let reply = app
        .command(
            "web_app",
            &c,
            "pref-1",
            json!([{"op": "set_field", "field": "preferences.newsletter", "value": true}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let (events, after) = feed_page(&app, "consumer", "").await;
    assert_eq!(kinds(&events), [change(&c)]);

    let retention = idledger_app::App::new(app.ledger.clone());
    let start = chrono::Utc::now();
    let report = retention
        .retention_run(start + chrono::Duration::days(731), false, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.values_expired, 1);
    let (events, after) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.field.cleared.v1".to_owned(), c.clone())]
    );
    let data = &events[0]["data"];
    assert_eq!(data["field"], "preferences.newsletter");
    assert_eq!(data["value"], Value::Null);
    assert_eq!(data["value_hash"], Value::Null);
    assert_eq!(data["provenance"]["source"], "retention");

    let report = retention
        .retention_run(start + chrono::Duration::days(1096), false, &|_| {})
        .await
        .unwrap();
    assert_eq!(report.consents_expired, 1);
    let (events, _) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.consent.withdrawn.v1".to_owned(), c.clone())]
    );
    assert_eq!(events[0]["data"]["reason"], "never_granted");
}

async fn restrict(app: &TestApp, c: &str, restricted: bool) -> Value {
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{c}/restriction"),
            Some("admin"),
            None,
            Some(&json!({"restricted": restricted, "reason": "art. 18 request #7", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.body
}

async fn a_restriction_pauses_delivery_with_a_notice_and_a_resume(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["marketing"]))
        .await;
    let ada = customer(&app, 1, &["marketing"]).await;
    let (events, mut after) = feed_page(&app, "consumer", "").await;
    assert_eq!(kinds(&events), [change(&ada)]);

    // Restricted: one notice (keep, do not use), then nothing of the customer.
    let body = restrict(&app, &ada, true).await;
    assert_eq!(
        (body["restricted"].as_bool(), body["changed"].as_bool()),
        (Some(true), Some(true))
    );
    let again = restrict(&app, &ada, true).await;
    assert_eq!(again["changed"], false, "restricting twice records nothing");
    let record = app.get(&format!("/v1/customers/{ada}"), "auditor").await;
    assert!(record.body["restricted_since"].is_string());
    app.command("idp", &ada, "during", set_email(2)).await;
    let (events, next) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    after = next;
    assert_eq!(
        kinds(&events),
        [("idledger.processing.restricted.v1".to_owned(), ada.clone())]
    );
    assert_eq!(events[0]["data"]["action"], "restrict");
    assert_eq!(events[0]["data"]["fields"], json!(["email"]));
    // Lifted: a resume notice at once; then changes flow again.
    let lifted = restrict(&app, &ada, false).await;
    assert_eq!(lifted["changed"], true);
    let (events, next) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    after = next;
    assert_eq!(
        kinds(&events),
        [("idledger.consent.granted.v1".to_owned(), ada.clone())]
    );
    app.command("idp", &ada, "after-lift", set_email(3)).await;
    let (events, next) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    after = next;
    assert_eq!(kinds(&events), [change(&ada)]);
    assert_eq!(events[0]["data"]["value"], "user3@example.org");

    // A withdrawal while restricted: the consumer holds the data, so it is told to delete it.
    // (Read together, the two would be one withdrawal notice: decided on the state now.)
    restrict(&app, &ada, true).await;
    let (events, next) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    after = next;
    assert_eq!(
        kinds(&events),
        [("idledger.processing.restricted.v1".to_owned(), ada.clone())]
    );
    withdraw(&app, &ada, "marketing").await;
    let (events, _) = feed_page(&app, "consumer", &format!("?after={after}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.consent.withdrawn.v1".to_owned(), ada.clone())]
    );

    // Only admins restrict; a reason is required; an unknown customer is named.
    let path = format!("/v1/customers/{ada}/restriction");
    let body = json!({"restricted": true, "reason": "x", "actor": {"kind": "agent", "id": "dpo"}});
    app.send(Method::POST, &path, Some("steward"), None, Some(&body))
        .await
        .problem(403, "forbidden_role");
    let blank = json!({"restricted": true, "reason": " ", "actor": {"kind": "agent", "id": "dpo"}});
    app.send(Method::POST, &path, Some("admin"), None, Some(&blank))
        .await
        .problem(422, "invalid_value");
    let unknown = format!("/v1/customers/{}/restriction", uuid::Uuid::now_v7());
    app.send(Method::POST, &unknown, Some("admin"), None, Some(&body))
        .await
        .problem(404, "not_registered");
}

async fn a_token_holds_a_bounded_number_of_event_streams(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(feed_consumer("crm-sync", &["marketing"]))
        .await;
    let max = idledger_api::FeedSettings::default().max_streams_per_token;
    let mut open = Vec::new();
    for _ in 0..max {
        open.push(SseReader::open(&app, "consumer", None).await);
    }
    let refused = app
        .client
        .get(app.url("/v1/feed"))
        .bearer_auth(app.token("consumer"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["code"], "too_many_streams");
    // Pages are not streams: NDJSON still answers.
    feed_page(&app, "consumer", "").await;
    // Closing a stream gives its place back.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let again = app
            .client
            .get(app.url("/v1/feed"))
            .bearer_auth(app.token("consumer"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Household membership is the `household` field of each member's record: a consumer that
/// selects it receives joining and leaving through the ordinary delivery (issue 17).
async fn a_consumer_selecting_household_receives_membership_changes(engine: Engine) {
    let app = TestApp::start(engine).await;
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["household"], "purposes": ["marketing"]
    }))
    .await;
    let a = customer(&app, 1, &["marketing"]).await;
    let household = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";
    let joined = json!([{"op": "set_field", "field": "household",
                         "value": {"id": household, "role": "head"}}]);
    let reply = app.command("web_app", &a, "join-1", joined).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let bad = json!([{"op": "set_field", "field": "household",
                      "value": {"id": household, "role": "cousin"}}]);
    app.command("web_app", &a, "join-2", bad)
        .await
        .problem(422, "invalid_value");

    let (events, next) = feed_page(&app, "consumer", "").await;
    assert_eq!(kinds(&events), [change(&a)], "the email is not selected");
    assert_eq!(events[0]["data"]["field"], "household");
    assert_eq!(
        events[0]["data"]["value"],
        json!({"id": household, "role": "head"})
    );

    let left = json!([{"op": "clear_field", "field": "household"}]);
    let reply = app.command("web_app", &a, "leave-1", left).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let (events, _) = feed_page(&app, "consumer", &format!("?after={next}")).await;
    assert_eq!(
        kinds(&events),
        [("idledger.field.cleared.v1".to_owned(), a.clone())]
    );
    assert_eq!(events[0]["data"]["field"], "household");
}
