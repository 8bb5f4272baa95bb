//! Proposals go where they can be decided, over real HTTP on both engines: the field's system
//! of record lists the proposals addressed to it (`GET /v1/proposals`), accepts or rejects
//! them with its own token, and the `proposal` exception closes itself; no other source
//! decides them; a steward routes a proposal to its system of record.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use idledger_relay::{NatsConfig, Relay, RelayConfig, StreamSettings};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, consent_to_service, feed, on_both_engines};

on_both_engines!(
    the_system_of_record_accepts_and_the_exception_closes,
    the_system_of_record_rejects_and_the_exception_is_dismissed,
    no_other_source_decides_a_proposal,
    a_steward_routes_a_proposal_to_its_system_of_record,
    only_a_proposal_is_routed,
    the_listing_is_scoped_to_the_caller_and_paged,
    a_routed_proposal_is_delivered_to_its_system_of_record_alone,
);

fn set(field: &str, value: &str) -> Value {
    json!({"op": "set_field", "field": field, "value": value})
}

/// A customer with an idp-verified email; the CRM proposed another one (email's system of
/// record is idp, and the policy forbids stewards to override it). The customer, the
/// proposal's id, its exception's id.
async fn proposed_email(app: &TestApp, proposed: &str) -> (String, String, String) {
    let c = app
        .register("idp", json!([set("email", "ada@example.org")]))
        .await;
    let reply = app
        .command(
            "crm",
            &c,
            &format!("crm-{proposed}"),
            json!([set("email", proposed)]),
        )
        .await;
    reply.problem(403, "not_authoritative");
    let proposal = reply.body["proposal_id"].as_str().unwrap().to_owned();
    let exceptions = app
        .get(
            &format!("/v1/exceptions?kind=proposal&customer={c}"),
            "steward",
        )
        .await;
    let exc = exceptions.body["exceptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    (c, proposal, exc)
}

async fn exception(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/v1/exceptions/{id}"), "steward")
        .await
        .body
}

async fn email_of(app: &TestApp, c: &str) -> Value {
    let record = app.get(&format!("/v1/customers/{c}"), "steward").await.body;
    record["fields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["field"] == "email")
        .map(|f| f["value"].clone())
        .unwrap_or(Value::Null)
}

async fn proposals(app: &TestApp, query: &str, as_: &str) -> Reply {
    app.get(&format!("/v1/proposals?{query}"), as_).await
}

async fn act(app: &TestApp, id: &str, body: Value) -> Reply {
    app.send(
        Method::POST,
        &format!("/v1/exceptions/{id}/actions"),
        Some("steward"),
        None,
        Some(&body),
    )
    .await
}

async fn the_system_of_record_accepts_and_the_exception_closes(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (c, proposal, exc) = proposed_email(&app, "ada@crm.example").await;
    let listed = proposals(&app, "system_of_record=me", "idp").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text);
    let items = listed.body["proposals"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{}", listed.body);
    assert_eq!(items[0]["proposal_id"], proposal.as_str());
    assert_eq!(items[0]["customer_id"], c.as_str());
    assert_eq!(items[0]["field"], "email");
    assert_eq!(items[0]["value"], "ada@crm.example");
    assert_eq!(items[0]["proposed_by"], "crm");
    assert_eq!(items[0]["exception_id"], exc.as_str());
    assert_eq!(items[0]["routed"], false);
    assert!(items[0]["proposed_at"].is_string());
    assert!(listed.body.get("next_after").is_none(), "{}", listed.body);

    // The idp accepts with its own token (and, email requiring verification, the evidence
    // its provenance carries).
    let accepted = app
        .command(
            "idp",
            &c,
            "idp-accept",
            json!([{"op": "accept_proposal", "proposal_id": proposal}]),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(email_of(&app, &c).await, "ada@crm.example");
    let closed = exception(&app, &exc).await;
    assert_eq!(closed["status"], "resolved", "{closed}");
    assert_eq!(closed["resolution"], "accepted");
    assert_eq!(closed["resolved_by"], "source:idp");
    assert!(
        closed["resolution_note"].as_str().unwrap().contains("idp"),
        "{closed}"
    );
    // The field's history says who decided it.
    let history = app
        .get(
            &format!("/v1/customers/{c}/fields/email/history"),
            "steward",
        )
        .await;
    let last = history.body["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["type"], "field_set", "{last}");
    assert_eq!(last["provenance"]["source"], "idp", "{last}");
    // Nothing is left to decide; a retry replays the same answer and changes nothing.
    let listed = proposals(&app, "system_of_record=me", "idp").await;
    assert_eq!(listed.body["proposals"], json!([]));
    let again = app
        .command(
            "idp",
            &c,
            "idp-accept",
            json!([{"op": "accept_proposal", "proposal_id": proposal}]),
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(exception(&app, &exc).await["resolved_by"], "source:idp");
}

async fn the_system_of_record_rejects_and_the_exception_is_dismissed(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (c, proposal, exc) = proposed_email(&app, "typo@crm.example").await;
    let rejected = app
        .command(
            "idp",
            &c,
            "idp-reject",
            json!([{"op": "reject_proposal", "proposal_id": proposal, "reason": "not verified with the customer"}]),
        )
        .await;
    assert_eq!(rejected.status, StatusCode::OK, "{}", rejected.text);
    assert_eq!(email_of(&app, &c).await, "ada@example.org");
    let closed = exception(&app, &exc).await;
    assert_eq!(closed["status"], "dismissed", "{closed}");
    assert_eq!(closed["resolution"], "dismissed");
    assert_eq!(closed["resolved_by"], "source:idp");
    let note = closed["resolution_note"].as_str().unwrap();
    assert!(
        note.contains("rejected") && note.contains("not verified"),
        "{note}"
    );
    assert_eq!(
        proposals(&app, "system_of_record=me", "idp").await.body["proposals"],
        json!([])
    );
}

async fn no_other_source_decides_a_proposal(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (c, proposal, exc) = proposed_email(&app, "ada@crm.example").await;
    let head = app.head().await;
    for (source, change) in [
        (
            "crm",
            json!({"op": "accept_proposal", "proposal_id": proposal}),
        ),
        (
            "web_app",
            json!({"op": "accept_proposal", "proposal_id": proposal}),
        ),
        (
            "support_portal",
            json!({"op": "reject_proposal", "proposal_id": proposal, "reason": "mine"}),
        ),
    ] {
        let reply = app
            .command(source, &c, &format!("{source}-decides"), json!([change]))
            .await;
        let problem = reply.problem(403, "forbidden");
        assert!(
            problem["detail"].as_str().unwrap().contains("(idp)"),
            "{problem}"
        );
    }
    // Stewards may not accept it either: the policy forbids overriding email.
    act(&app, &exc, json!({"action": "accept"}))
        .await
        .problem(403, "forbidden");
    assert_eq!(app.head().await, head, "refused decisions write nothing");
    assert_eq!(exception(&app, &exc).await["status"], "open");
    assert_eq!(email_of(&app, &c).await, "ada@example.org");
}

async fn a_steward_routes_a_proposal_to_its_system_of_record(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (c, proposal, exc) = proposed_email(&app, "ada@crm.example").await;
    let routed = act(
        &app,
        &exc,
        json!({"action": "route", "reason": "idp verifies emails"}),
    )
    .await;
    assert_eq!(routed.status, StatusCode::OK, "{}", routed.text);
    assert_eq!(routed.body["action"], "route");
    assert_eq!(routed.body["event_ids"].as_array().unwrap().len(), 1);
    let open = &routed.body["exception"];
    assert_eq!(open["status"], "open", "{open}");
    assert_eq!(open["last_action"]["action"], "route");
    assert_eq!(open["last_action"]["by"], "steward:steward");
    assert_eq!(open["last_action"]["reason"], "idp verifies emails");
    // Recorded in the customer's log as the steward's action.
    let history = app
        .get(
            &format!("/v1/customers/{c}/fields/email/history"),
            "steward",
        )
        .await;
    let last = history.body["events"].as_array().unwrap().last().unwrap();
    assert_eq!(last["type"], "steward_acted", "{last}");
    assert_eq!(last["event_id"], routed.body["event_ids"][0]);
    assert_eq!(last["data"]["action"], "route", "{last}");
    // The system of record sees it routed.
    let listed = proposals(&app, "system_of_record=me", "idp").await;
    assert_eq!(
        listed.body["proposals"][0]["routed"], true,
        "{}",
        listed.body
    );
    assert!(listed.body["proposals"][0]["routed_at"].is_string());
    // Only stewards route.
    app.send(
        Method::POST,
        &format!("/v1/exceptions/{exc}/actions"),
        Some("idp"),
        None,
        Some(&json!({"action": "route"})),
    )
    .await
    .problem(403, "forbidden_role");
    // The idp decides; the routed exception closes as any other.
    let accepted = app
        .command(
            "idp",
            &c,
            "idp-accept",
            json!([{"op": "accept_proposal", "proposal_id": proposal}]),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(exception(&app, &exc).await["status"], "resolved");
    // Routing a closed exception is a conflict.
    act(&app, &exc, json!({"action": "route"}))
        .await
        .problem(409, "exception_closed");
}

async fn only_a_proposal_is_routed(engine: Engine) {
    let app = TestApp::start(engine).await;
    let c = app
        .register("idp", json!([set("email", "ada@example.org")]))
        .await;
    // The CRM may not write verification.level at all: a refused write, not a proposal.
    app.command(
        "crm",
        &c,
        "crm-level",
        json!([set("verification.level", "high")]),
    )
    .await
    .problem(403, "not_authoritative");
    let refused = app
        .get("/v1/exceptions?kind=refused_write", "steward")
        .await;
    let exc = refused.body["exceptions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let head = app.head().await;
    let problem = act(&app, &exc, json!({"action": "route"})).await;
    problem.problem(422, "not_a_proposal");
    assert_eq!(app.head().await, head);
    assert_eq!(exception(&app, &exc).await["status"], "open");
    assert!(exception(&app, &exc).await.get("last_action").is_none());
}

async fn the_listing_is_scoped_to_the_caller_and_paged(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    let (c1, p1, _) = proposed_email(&app, "one@crm.example").await;
    let (_, p2, _) = proposed_email(&app, "two@crm.example").await;
    // A proposal for web_app (postal_address's system of record), not for idp.
    let c3 = app.register("web_app", json!([])).await;
    app.command(
        "crm",
        &c3,
        "crm-address",
        json!([{"op": "set_field", "field": "postal_address", "value": {"lines": ["12 St James's Sq"], "locality": "London", "postal_code": "SW1Y 4LB", "country": "GB"}}]),
    )
    .await
    .problem(403, "not_authoritative");

    let ids = |r: &Reply| -> Vec<String> {
        r.body["proposals"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["proposal_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let idp = proposals(&app, "system_of_record=me", "idp").await;
    assert_eq!(ids(&idp), [p1.clone(), p2.clone()]);
    // Paged one at a time, oldest first.
    let first = proposals(&app, "system_of_record=me&limit=1", "idp").await;
    assert_eq!(ids(&first), [p1.as_str()]);
    let after = first.body["next_after"].as_str().unwrap();
    let second = proposals(
        &app,
        &format!("system_of_record=idp&limit=1&after={after}"),
        "idp",
    )
    .await;
    assert_eq!(ids(&second), [p2.as_str()]);
    let after = second.body["next_after"].as_str().unwrap();
    let third = proposals(&app, &format!("system_of_record=me&after={after}"), "idp").await;
    assert_eq!(ids(&third), Vec::<String>::new());

    // web_app sees its own, with the value; not idp's.
    let web = proposals(&app, "system_of_record=me", "web_app").await;
    assert_eq!(
        web.body["proposals"].as_array().unwrap().len(),
        1,
        "{}",
        web.body
    );
    assert_eq!(web.body["proposals"][0]["field"], "postal_address");
    assert_eq!(web.body["proposals"][0]["value"]["locality"], "London");
    // The CRM decides nothing; it may not ask for idp's.
    assert_eq!(
        proposals(&app, "system_of_record=me", "crm").await.body["proposals"],
        json!([])
    );
    proposals(&app, "system_of_record=idp", "crm")
        .await
        .problem(403, "forbidden");
    // Overseers name a source; `me` is a source's word; bad input names its parameter.
    let steward = proposals(&app, "system_of_record=idp", "steward").await;
    assert_eq!(ids(&steward), [p1.clone(), p2.clone()]);
    assert_eq!(steward.body["proposals"][0]["value"], "one@crm.example");
    let auditor = proposals(&app, "system_of_record=web_app", "auditor").await;
    assert_eq!(auditor.status, StatusCode::OK);
    let admin = proposals(&app, "system_of_record=idp", "admin").await;
    assert_eq!(ids(&admin).len(), 2);
    for (query, parameter) in [
        ("system_of_record=me", "system_of_record"),
        ("", "system_of_record"),
        ("system_of_record=NOT%20A%20SOURCE", "system_of_record"),
        ("system_of_record=idp&limit=0", "limit"),
        ("system_of_record=idp&after=12", "after"),
    ] {
        let problem = proposals(&app, query, "steward").await;
        assert_eq!(
            problem.problem(400, "invalid_query")["parameter"],
            parameter,
            "{query}"
        );
    }
    let consumer = app.consumer_token("crm-sync").await;
    proposals(&app, "system_of_record=me", &consumer)
        .await
        .problem(403, "forbidden_role");

    // What a source was shown is in the disclosure log: the email of each customer listed.
    let log = app.get("/v1/sources/idp/disclosures", "auditor").await;
    let entries = log.body["items"].as_array().unwrap();
    assert!(
        entries
            .iter()
            .any(|d| d["customer_id"] == c1.as_str() && d["fields"] == json!(["email"])),
        "{}",
        log.body
    );
}

const ROUTED: &str = "idledger.proposal.routed.v1";

async fn a_routed_proposal_is_delivered_to_its_system_of_record_alone(engine: Engine) {
    let mut app = TestApp::start(engine).await;
    // idp is also a consumer (the same id as the source); crm-sync is another.
    for id in ["idp", "crm-sync"] {
        app.add_consumer(json!({
            "id": id, "channel": "feed", "fields": ["email"], "purposes": ["service"],
        }))
        .await;
    }
    let (c, proposal, exc) = proposed_email(&app, "ada@crm.example").await;
    consent_to_service(&app, &c).await;
    let idp = app.consumer_token("idp").await;
    let other = app.consumer_token("crm-sync").await;
    let types = |events: &[Value]| -> Vec<String> {
        events
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    // Recorded, not routed: nothing about the proposal yet.
    assert!(!types(&feed(&app, &idp).await).contains(&ROUTED.to_owned()));
    let routed = act(
        &app,
        &exc,
        json!({"action": "route", "reason": "yours to decide"}),
    )
    .await;
    assert_eq!(routed.status, StatusCode::OK, "{}", routed.text);
    let events = feed(&app, &idp).await;
    let sent: Vec<&Value> = events.iter().filter(|e| e["type"] == ROUTED).collect();
    assert_eq!(sent.len(), 1, "{events:?}");
    let message = sent[0];
    assert_eq!(message["subject"], c.as_str());
    assert_eq!(message["id"], routed.body["event_ids"][0]);
    assert_eq!(message["idledgerconsumer"], "idp");
    let data = &message["data"];
    assert_eq!(data["field"], "email");
    assert_eq!(data["proposal_id"], proposal.as_str());
    assert_eq!(data["value"], "ada@crm.example");
    assert_eq!(data["proposed_by"], "crm");
    assert_eq!(data["exception_id"], exc.as_str());
    assert_eq!(data["reason"], "yours to decide");
    assert!(
        data["provenance"].get("idempotency_key").is_none(),
        "{data}"
    );
    // Another consumer selecting email is not sent it.
    assert!(!types(&feed(&app, &other).await).contains(&ROUTED.to_owned()));
}

/// End to end over a real NATS with the relay: a steward routes the CRM's proposed email, the
/// CloudEvent reaches idp (a NATS consumer as well as the email's system of record) on
/// `<prefix>.idp.<customer>.email`, idp accepts with its source token, the exception closes,
/// and the accepted value follows as an ordinary change.
#[tokio::test]
async fn a_routed_proposal_reaches_its_system_of_record_over_nats() {
    let url = std::env::var("IDLEDGER_TEST_NATS_URL")
        .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let client = match tokio::time::timeout(Duration::from_secs(3), async_nats::connect(&url)).await
    {
        Ok(Ok(client)) => client,
        _ => panic!(
            "NATS with JetStream is not reachable at {url}: start it with `bash scripts/services.sh` \
             (or `nats-server -js`), or point IDLEDGER_TEST_NATS_URL at one"
        ),
    };
    let app = TestApp::start(Engine::Postgres).await;
    app.add_consumer(json!({
        "id": "idp", "channel": "nats", "fields": ["email"], "purposes": ["service"],
    }))
    .await;
    let (c, proposal, exc) = proposed_email(&app, "ada@crm.example").await;
    consent_to_service(&app, &c).await;

    let token = uuid::Uuid::now_v7().simple().to_string();
    let token = &token[token.len() - 12..];
    let nats = NatsConfig {
        url: url.clone(),
        stream: StreamSettings {
            name: format!("P{token}"),
            subject_prefix: format!("p{token}.v1"),
            max_age: Some(Duration::from_secs(600)),
            ..StreamSettings::default()
        },
        ack_subject_prefix: format!("p{token}.acks"),
        ack_stream: format!("P{token}_ACKS"),
        ack_durable: "acks".to_owned(),
        ..NatsConfig::default()
    };
    let prefix = nats.stream.subject_prefix.clone();
    let mut deliveries = client.subscribe(format!("{prefix}.idp.>")).await.unwrap();
    let config = RelayConfig {
        source: "urn:idledger:test".to_owned(),
        nats: Some(nats),
        poll_interval: Duration::from_millis(10),
        registry_refresh: Duration::from_millis(100),
        ..RelayConfig::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let relay = tokio::spawn(Relay::new(app.ledger.clone(), config).run(stop.clone()));
    let next = async |deliveries: &mut async_nats::Subscriber| -> (String, Value) {
        let msg = tokio::time::timeout(
            Duration::from_secs(20),
            futures::StreamExt::next(deliveries),
        )
        .await
        .expect("no delivery within 20 s")
        .unwrap();
        (
            msg.subject.to_string(),
            serde_json::from_slice(&msg.payload).unwrap(),
        )
    };

    // The record's email first (idp selects it and the customer consents).
    let (_, first) = next(&mut deliveries).await;
    assert_eq!(first["type"], "idledger.field.changed.v1", "{first}");
    assert_eq!(first["data"]["value"], "ada@example.org");

    let routed = act(&app, &exc, json!({"action": "route"})).await;
    assert_eq!(routed.status, StatusCode::OK, "{}", routed.text);
    let (subject, message) = next(&mut deliveries).await;
    assert_eq!(message["type"], ROUTED, "{message}");
    assert_eq!(subject, format!("{prefix}.idp.{c}.email"));
    assert_eq!(message["data"]["proposal_id"], proposal.as_str());
    assert_eq!(message["data"]["value"], "ada@crm.example");
    assert_eq!(message["data"]["exception_id"], exc.as_str());

    // idp decides with its own source token, as the message says.
    let accepted = app
        .command(
            "idp",
            &c,
            "idp-accepts",
            json!([{"op": "accept_proposal", "proposal_id": message["data"]["proposal_id"]}]),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    assert_eq!(exception(&app, &exc).await["status"], "resolved");
    let (_, change) = next(&mut deliveries).await;
    assert_eq!(change["type"], "idledger.field.changed.v1", "{change}");
    assert_eq!(change["data"]["value"], "ada@crm.example");
    // Logged like any other message.
    let handoffs = app
        .get(&format!("/v1/customers/{c}/handoffs"), "auditor")
        .await;
    assert!(
        handoffs
            .text
            .contains(routed.body["event_ids"][0].as_str().unwrap()),
        "{}",
        handoffs.text
    );

    stop.cancel();
    relay.await.unwrap().unwrap();
}
