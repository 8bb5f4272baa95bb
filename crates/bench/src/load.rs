//! Command throughput over HTTP: N clients, each with its own customers, sending a realistic
//! mix for a fixed time.
//!
//! The mix, per request drawn: 30% a name set by the web app; 10% a preference; 15% an email
//! change (request, then confirmation of the challenge: two commands); 15% a marketing consent
//! granted or withdrawn; 20% a record read; 10% a refused write (the confirmation of a
//! challenge that does not exist: decided, refused, nothing written).

use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{BenchError, Step as _};
use crate::server::{PURPOSE, Server};
use crate::stats::{self, Latency};
use crate::usage::{Meter, Resources};

/// Customers per client: enough to interleave, few enough that each is written often.
const CUSTOMERS_PER_CLIENT: usize = 4;

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub seconds: f64,
    /// Every HTTP request answered (commands and reads).
    pub requests: u64,
    /// Command requests (POST), accepted or refused.
    pub commands: u64,
    /// Commands answered 2xx.
    pub accepted: u64,
    /// Commands refused as the mix intends (4xx), nothing written.
    pub refused: u64,
    pub reads: u64,
    /// Answers the mix did not expect (5xx, or a refusal of a valid command).
    pub errors: u64,
    pub first_error: Option<String>,
    pub requests_per_second: f64,
    pub commands_per_second: f64,
    pub accepted_per_second: f64,
    pub command_latency: Latency,
    pub read_latency: Latency,
    /// Commands per second over the same engine's raw single-row INSERTs per second.
    pub ratio_to_insert: f64,
    /// With a relay: seconds after the timed window until it had delivered the phase's
    /// changes. Its work in that time is the phase's, so the CPU figures include it.
    pub relay_backlog_seconds: Option<f64>,
    /// CPU per command (server, PostgreSQL, bench) and the server's peak memory.
    pub resources: Resources,
}

#[derive(Debug)]
struct ClientStats {
    commands: hdrhistogram::Histogram<u64>,
    reads: hdrhistogram::Histogram<u64>,
    accepted: u64,
    refused: u64,
    errors: u64,
    first_error: Option<String>,
}

impl ClientStats {
    fn new() -> Result<Self, BenchError> {
        Ok(Self {
            commands: stats::histogram()?,
            reads: stats::histogram()?,
            accepted: 0,
            refused: 0,
            errors: 0,
            first_error: None,
        })
    }

    fn error(&mut self, what: &str, status: StatusCode, body: &Value) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {status} {body}"));
        }
    }
}

/// Runs the mix against `server` for `duration` with `clients` clients.
pub async fn run(
    server: &Server,
    clients: usize,
    duration: Duration,
    insert_per_second: f64,
) -> Result<LoadResult, BenchError> {
    // Setup (not timed): every client's customers, registered with a verified email and a
    // marketing consent, so the relay has something to deliver.
    let mut customers = Vec::with_capacity(clients);
    for client in 0..clients {
        let mut own = Vec::with_capacity(CUSTOMERS_PER_CLIENT);
        for i in 0..CUSTOMERS_PER_CLIENT {
            let key = format!("load-{client}-{i}");
            let customer = register(server, &key).await?;
            grant(server, customer, &format!("{key}-grant")).await?;
            own.push(customer);
        }
        customers.push(own);
    }
    // Everything written so far (the setup) delivered: the meter sees only the phase's work.
    server.wait_caught_up().await?;
    let meter = Meter::start(server);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks = customers.into_iter().enumerate().map(|(client, own)| {
        let server = Handle::of(server);
        tokio::spawn(async move { drive(&server, client, own, deadline).await })
    });
    let joined = futures::future::join_all(tasks).await;
    let elapsed = started.elapsed();
    let mut commands = stats::histogram()?;
    let mut reads = stats::histogram()?;
    let (mut accepted, mut refused, mut errors, mut first_error) = (0, 0, 0, None);
    for client in joined {
        let client = client.step("a load client panicked")??;
        commands
            .add(&client.commands)
            .step("cannot merge histograms")?;
        reads.add(&client.reads).step("cannot merge histograms")?;
        accepted += client.accepted;
        refused += client.refused;
        errors += client.errors;
        first_error = first_error.or(client.first_error);
    }
    let relay_backlog_seconds = match &server.nats {
        Some(_) => {
            let t = Instant::now();
            server.wait_caught_up().await?;
            Some(t.elapsed().as_secs_f64())
        }
        None => None,
    };
    let resources = meter.finish(commands.len());
    let commands_per_second = stats::rate(commands.len(), elapsed);
    Ok(LoadResult {
        clients,
        seconds: elapsed.as_secs_f64(),
        requests: commands.len() + reads.len(),
        commands: commands.len(),
        accepted,
        refused,
        reads: reads.len(),
        errors,
        first_error,
        requests_per_second: stats::rate(commands.len() + reads.len(), elapsed),
        commands_per_second,
        accepted_per_second: stats::rate(accepted, elapsed),
        command_latency: Latency::of(&commands),
        read_latency: Latency::of(&reads),
        ratio_to_insert: stats::ratio(commands_per_second, insert_per_second),
        relay_backlog_seconds,
        resources,
    })
}

/// What a client task needs of the server (cheap to clone, `'static`).
#[derive(Debug, Clone)]
pub(crate) struct Handle {
    pub base: String,
    pub client: reqwest::Client,
    pub web_app: String,
    pub consent_portal: String,
    pub auditor: String,
}

impl Handle {
    pub(crate) fn of(server: &Server) -> Self {
        Self {
            base: server.base.clone(),
            client: server.client.clone(),
            web_app: server.callers.web_app.clone(),
            consent_portal: server.callers.consent_portal.clone(),
            auditor: server.callers.auditor.clone(),
        }
    }

    pub(crate) async fn command(
        &self,
        token: &str,
        customer: Uuid,
        key: &str,
        body: &Value,
    ) -> Result<(StatusCode, Value), BenchError> {
        let url = format!("{}/v1/customers/{customer}/commands", self.base);
        post(&self.client, &url, token, key, body).await
    }
}

async fn drive(
    server: &Handle,
    client: usize,
    own: Vec<Uuid>,
    deadline: Instant,
) -> Result<ClientStats, BenchError> {
    let mut tally = ClientStats::new()?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    // Whether each customer's marketing consent is granted (all start granted).
    let mut granted = vec![true; own.len()];
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let which = rng.gen_range(0..own.len());
        let customer = own[which];
        let key = format!("mix-{client}-{n}");
        let roll = rng.gen_range(0..100u32);
        let t = Instant::now();
        match roll {
            0..30 => {
                let body = set("name.given", json!(name(n)));
                let (status, answer) = server
                    .command(&server.web_app, customer, &key, &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                expect_ok(&mut tally, "set name.given", status, &answer);
            }
            30..40 => {
                let body = set("preferences.newsletter", json!(n.is_multiple_of(2)));
                let (status, answer) = server
                    .command(&server.web_app, customer, &key, &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                expect_ok(&mut tally, "set a preference", status, &answer);
            }
            40..55 => {
                let body = json!({"provenance": actor("subject"), "changes": [{"op": "request_change",
                    "field": "email", "value": format!("c{client}n{n}@example.org")}]});
                let (status, answer) = server
                    .command(&server.web_app, customer, &key, &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                if !expect_ok(&mut tally, "request an email change", status, &answer) {
                    continue;
                }
                let pending = &answer["outcomes"][0];
                let (Some(challenge), Some(secret)) =
                    (pending["challenge_id"].as_str(), pending["secret"].as_str())
                else {
                    tally.error("request an email change (no challenge)", status, &answer);
                    continue;
                };
                let body = confirm(challenge, secret);
                let t = Instant::now();
                let (status, answer) = server
                    .command(&server.web_app, customer, &format!("{key}-confirm"), &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                expect_ok(&mut tally, "confirm an email change", status, &answer);
            }
            55..70 => {
                let body = if granted[which] {
                    json!({"provenance": actor("subject"), "changes": [{"op": "withdraw_consent",
                        "purpose": PURPOSE}]})
                } else {
                    grant_body()
                };
                let (status, answer) = server
                    .command(&server.consent_portal, customer, &key, &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                if expect_ok(&mut tally, "grant or withdraw consent", status, &answer) {
                    granted[which] = !granted[which];
                }
            }
            70..90 => {
                let response = server
                    .client
                    .get(format!("{}/v1/customers/{customer}", server.base))
                    .bearer_auth(&server.auditor)
                    .send()
                    .await
                    .step("a read failed")?;
                let status = response.status();
                let body = response.bytes().await.step("a read's body failed")?;
                stats::record(&mut tally.reads, t.elapsed());
                if status != StatusCode::OK {
                    let body = Value::String(String::from_utf8_lossy(&body).into_owned());
                    tally.error("read the record", status, &body);
                }
            }
            _ => {
                // A stale verification link: a challenge that was never issued.
                let body = confirm(&Uuid::now_v7().to_string(), &"0".repeat(64));
                let (status, answer) = server
                    .command(&server.web_app, customer, &key, &body)
                    .await?;
                stats::record(&mut tally.commands, t.elapsed());
                if status.is_client_error() {
                    tally.refused += 1;
                } else {
                    tally.error("a confirmation that must be refused", status, &answer);
                }
            }
        }
    }
    Ok(tally)
}

fn expect_ok(tally: &mut ClientStats, what: &str, status: StatusCode, body: &Value) -> bool {
    if status.is_success() {
        tally.accepted += 1;
        true
    } else {
        tally.error(what, status, body);
        false
    }
}

/// A person's name from a number (names are letters, spaces and a few marks).
pub(crate) fn name(n: u64) -> String {
    let mut n = n;
    let mut letters = String::new();
    loop {
        letters.push(char::from(b'a' + (n % 26) as u8));
        n /= 26;
        if n == 0 {
            break;
        }
    }
    format!("Ada {letters}")
}

pub(crate) fn actor(kind: &str) -> Value {
    json!({"actor": {"kind": kind, "id": "bench"}})
}

pub(crate) fn set(field: &str, value: Value) -> Value {
    json!({"provenance": actor("system"), "changes": [{"op": "set_field", "field": field, "value": value}]})
}

/// The confirmation of a pending change: its challenge and the secret its requester got.
fn confirm(challenge: &str, secret: &str) -> Value {
    json!({"provenance": {"actor": {"kind": "subject", "id": "bench"},
        "evidence": {"kind": "email_link", "reference": format!("confirm-{challenge}")}},
        "changes": [{"op": "confirm_verification", "field": "email", "challenge_id": challenge,
            "secret": secret}]})
}

fn grant_body() -> Value {
    json!({"provenance": actor("subject"), "changes": [{"op": "grant_consent",
        "purpose": PURPOSE, "basis": "consent", "channel": "web", "jurisdiction": "GB",
        "notice": {"id": "pn", "version": "1", "sha256": "0".repeat(64)}}]})
}

pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> Result<(StatusCode, Value), BenchError> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .step(format!("POST {url} failed"))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .step(format!("POST {url}: reading the answer failed"))?;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, value))
}

/// Registers a customer through the identity provider, with a verified email and a name.
pub(crate) async fn register(server: &Server, key: &str) -> Result<Uuid, BenchError> {
    let body = json!({"provenance": {"actor": {"kind": "system", "id": "bench"},
            "evidence": {"kind": "email_link", "reference": key}},
        "changes": [{"op": "set_field", "field": "email", "value": format!("{key}@example.org")},
                    {"op": "set_field", "field": "name.given", "value": "Ada"}]});
    let url = format!("{}/v1/customers", server.base);
    let (status, answer) = post(&server.client, &url, &server.callers.idp, key, &body).await?;
    if status != StatusCode::CREATED {
        return Err(BenchError::Failed(format!(
            "registering a customer answered {status} {answer}"
        )));
    }
    answer["customer_id"]
        .as_str()
        .and_then(|id| Uuid::parse_str(id).ok())
        .ok_or_else(|| {
            BenchError::Failed(format!("registration answered no customer id: {answer}"))
        })
}

/// Grants the consumer's purpose, so that the customer's changes are delivered.
pub(crate) async fn grant(server: &Server, customer: Uuid, key: &str) -> Result<(), BenchError> {
    let (status, answer) = Handle::of(server)
        .command(&server.callers.consent_portal, customer, key, &grant_body())
        .await?;
    if !status.is_success() {
        return Err(BenchError::Failed(format!(
            "granting consent answered {status} {answer}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_letters_and_distinct() {
        assert_eq!(super::name(0), "Ada a");
        assert_eq!(super::name(27), "Ada bb");
        assert_ne!(super::name(1), super::name(26));
    }
}
