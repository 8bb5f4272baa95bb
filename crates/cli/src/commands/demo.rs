//! `idledger demo`: the main job, walked through on a fresh store through the real HTTP API.
//! The demo serves the API in this process on 127.0.0.1, gives each source system (and an
//! auditor) its own bearer token, and sends every command and read as an HTTP request. It
//! prints each request, the status that came back and what it meant, refusals included. Any
//! answer the scenario does not expect ends the demo with an error naming the step, the status
//! and the body.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Months, SubsecRound as _, Utc};
use idledger_api::{ApiConfig, AppState};
use idledger_domain::command::ProvenanceInput;
use idledger_domain::decide::Outcome;
use idledger_domain::event::Provenance;
use idledger_domain::ids::{
    Actor, ActorKind, ChallengeId, CustomerId, Key, OnBehalfOf, ProposalId, Relationship,
};
use idledger_domain::state::{ConsentStatus, Verification};
use idledger_domain::values::{BirthDate, Evidence, NoticeRef};
use idledger_store::ledger::EventRef;
use idledger_store::{IssuedToken, Ledger, Role};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::commands::{rebuild, verify};
use crate::config::{Database, DatabaseFrom, Settings};
use crate::render::{self, kv, time};
use crate::store::{self, KeyUse};
use crate::view;

/// Pause between phases, so that each phase has its own instants for as-of reads.
const PAUSE: Duration = Duration::from_millis(20);

/// Longest the demo waits for one answer; its server is in this process, so anything near
/// this means something is stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The privacy notice shown when consent is collected; its SHA-256 goes into the grant.
const NOTICE_TEXT: &str =
    "Example Ltd may email you news and offers. You can withdraw at any time.";

/// Who calls the API: a token name, its role, and the source system it speaks for.
const CALLERS: [(&str, Role, Option<&str>); 5] = [
    ("idp", Role::Source, Some("idp")),
    ("crm", Role::Source, Some("crm")),
    ("web_app", Role::Source, Some("web_app")),
    ("consent_portal", Role::Source, Some("consent_portal")),
    ("auditor", Role::Auditor, None),
];

pub async fn run(settings: &Settings, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let settings = demo_settings(settings)?;
    let ledger = store::open_ledger(&settings, KeyUse::Required).await?;
    let events = ledger.head_position().await?;
    if events > 0 {
        bail!(
            "the demo records sample customers and needs an empty database, but {} holds {events} events; \
             leave out --database to use a fresh file in the data directory",
            settings.database
        );
    }
    writeln!(
        out,
        "idledger demo: source systems call the HTTP API of a fresh store"
    )?;
    kv(out, 2, "database", &settings.database)?;
    kv(out, 2, "policy", ledger.policy().version())?;

    let state = AppState::new(ledger.clone());
    let tokens = state.tokens.clone();
    let config = ApiConfig::default();
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("cannot listen on 127.0.0.1 for the demo's API server")?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(idledger_api::serve(
        listener,
        idledger_api::router(state, &config),
        async move {
            let _ = stopped.await;
        },
        &config,
    ));
    kv(
        out,
        2,
        "api",
        format!("http://{addr} (served by this process until the demo ends)"),
    )?;

    let mut issued = Vec::new();
    let scenario = async {
        for (name, role, subject) in CALLERS {
            let token = tokens
                .create(role, subject, &format!("idledger demo: {name}"))
                .await
                .with_context(|| format!("cannot create the demo's token for {name}"))?;
            issued.push((name, token));
        }
        kv(
            out,
            2,
            "tokens",
            "idp, crm, web_app, consent_portal (role source), auditor (role auditor)",
        )?;
        kv(
            out,
            2,
            "",
            "each sends its own bearer token; the secrets stay in memory and are never printed",
        )?;
        let client = reqwest::Client::builder()
            // The server is in this process: a proxy from the environment must not get between.
            .no_proxy()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .context("cannot build the HTTP client")?;
        let mut demo = Demo {
            client,
            base: format!("http://{addr}"),
            tokens: &issued,
            out: &mut *out,
            step: 0,
            request: String::new(),
            answer: String::new(),
            keys: 0,
        };
        demo.scenario().await
        // The client goes here, and its idle connections with it, so the graceful shutdown
        // below has no connection to wait for.
    }
    .await;

    let _ = stop.send(());
    let served = server.await;
    // The secrets die with this process, but a demo must not leave live credentials behind
    // in a database, least of all a PostgreSQL one given with --database.
    let mut revoked = Ok(());
    for (_, token) in &issued {
        if let Err(e) = tokens.revoke(token.record.id).await {
            revoked = Err(e);
        }
    }
    let ada = scenario?;
    served
        .context("the demo's API server stopped abnormally")?
        .context("the demo's API server failed")?;
    revoked.context("cannot revoke the demo's tokens")?;
    writeln!(out)?;
    writeln!(
        out,
        "The API server has stopped and the demo's tokens are revoked."
    )?;

    check_log(&ledger, out).await?;

    writeln!(out)?;
    writeln!(
        out,
        "demo finished in {:.2} s; explore Ada's record with:",
        started.elapsed().as_secs_f64()
    )?;
    let dir = settings.data_dir.display();
    let db = &settings.database;
    for what in ["history", "record"] {
        let field = if what == "history" { " email" } else { "" };
        writeln!(
            out,
            "  idledger --data-dir {dir} --database {db} {what} {ada}{field}"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings with the database replaced by a new SQLite file in the data directory,
/// unless `--database` (or `IDLEDGER__DATABASE_URL`) names one: a `DATABASE_URL` set for other
/// tools, or a configuration file's database, is no request to fill that database with
/// sample customers.
fn demo_settings(settings: &Settings) -> anyhow::Result<Settings> {
    let mut settings = settings.clone();
    if settings.database_from != DatabaseFrom::Flag {
        settings.database_from = DatabaseFrom::DataDir;
        let name = format!("demo-{}.db", Utc::now().format("%Y%m%dT%H%M%S%3fZ"));
        let path = settings.data_dir.join(name);
        if path.exists() {
            bail!("{} already exists; run the demo again", path.display());
        }
        settings.database = Database::Sqlite(path);
    }
    Ok(settings)
}

/// The last step, once the API is stopped: what an operator runs on the store itself
/// (`idledger checkpoint`, `idledger verify`, `idledger rebuild`); the HTTP API has no such
/// routes.
async fn check_log(ledger: &Ledger, out: &mut dyn Write) -> anyhow::Result<()> {
    heading(
        out,
        8,
        "The operator checks the whole log: idledger checkpoint, verify and rebuild, on the store",
    )?;
    writeln!(out, "checkpoint")?;
    if let Some(signed) = ledger.sign_checkpoint().await? {
        writeln!(
            out,
            "  signed the log hash up to position {} with key {}",
            signed.checkpoint.position, signed.checkpoint.kid
        )?;
    }
    writeln!(out, "verify")?;
    let report = ledger.verify(&|_, _| {}).await?;
    verify::write_text(out, 2, &report)?;
    if !report.intact() {
        bail!("step 8: the log failed verification");
    }
    writeln!(out, "rebuild")?;
    let started = Instant::now();
    let report = ledger.rebuild(&|_, _| {}).await?;
    rebuild::write_text(out, 2, &report, started.elapsed())?;
    if !report.identical {
        bail!("step 8: the rebuilt projection differs from the live one");
    }
    Ok(())
}

fn heading(out: &mut dyn Write, step: u32, title: &str) -> std::io::Result<()> {
    writeln!(out)?;
    writeln!(out, "== {step}. {title} ==")
}

/// A client of the demo's API server, printing as it goes.
struct Demo<'a> {
    client: reqwest::Client,
    /// `http://127.0.0.1:<port>`.
    base: String,
    tokens: &'a [(&'static str, IssuedToken)],
    out: &'a mut dyn Write,
    /// The step being run, for error messages.
    step: u32,
    /// The request being answered, as printed, for error messages.
    request: String,
    /// The last answer's status and body, for error messages.
    answer: String,
    /// Numbers this run's idempotency keys. The store is empty when the demo starts, so
    /// `demo-<n>` is unique.
    keys: u32,
}

/// A customer of the scenario, once registered.
#[derive(Debug, Clone)]
struct Person {
    id: CustomerId,
    name: &'static str,
    /// How paths show the customer's id: `{ada}`.
    var: String,
}

/// A command's body, as `POST /v1/customers` and `…/commands` take it.
#[derive(Debug, Clone, Serialize)]
struct Body {
    provenance: ProvenanceInput,
    changes: Vec<Op>,
}

/// One change of a command body, in the API's wire form (`op` first, as people write it).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Op {
    SetField {
        field: &'static str,
        value: Value,
    },
    RequestChange {
        field: &'static str,
        value: Value,
    },
    ConfirmVerification {
        field: &'static str,
        challenge_id: ChallengeId,
        secret: String,
    },
    GrantConsent {
        purpose: &'static str,
        basis: &'static str,
        notice: NoticeRef,
        channel: &'static str,
        jurisdiction: &'static str,
    },
    WithdrawConsent {
        purpose: &'static str,
    },
    RecordRelationship {
        relationship: &'static str,
        representative: &'static str,
        evidence: Value,
    },
}

/// An HTTP answer, read in full.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The problem document's `code`, if this is one.
    fn code(&self) -> Option<String> {
        let body: Value = serde_json::from_str(&self.text).ok()?;
        body.get("code")?.as_str().map(str::to_owned)
    }
}

/// The API's `CommandResponse`, as far as the demo reads it.
#[derive(Debug, PartialEq, Deserialize)]
struct CommandReply {
    customer_id: CustomerId,
    stream_version: u64,
    outcomes: Vec<OutcomeReply>,
    events: Vec<EventRef>,
    replayed: bool,
}

/// One change's outcome; a pending change's comes with the secret that confirms it.
#[derive(Debug, PartialEq, Deserialize)]
struct OutcomeReply {
    #[serde(flatten)]
    outcome: Outcome,
    secret: Option<String>,
}

/// A problem document (RFC 9457) with the members the demo shows (its `code` is checked
/// on the raw reply).
#[derive(Debug, Deserialize)]
struct Problem {
    detail: String,
    system_of_record: Option<String>,
    proposal_id: Option<ProposalId>,
    /// What a command that was turned into a proposal recorded.
    result: Option<CommandReply>,
}

/// The API's `RecordView`, as far as the demo reads it.
#[derive(Debug, Deserialize)]
struct Record {
    as_of: Option<DateTime<Utc>>,
    stream_version: u64,
    fields: Vec<RecordField>,
    consents: Vec<RecordConsent>,
    proposals: Vec<RecordProposal>,
}

#[derive(Debug, Deserialize)]
struct RecordField {
    field: String,
    value: Option<Value>,
    version: u64,
    source: Option<String>,
    verification: Option<Verification>,
    pending: Option<RecordPending>,
}

#[derive(Debug, Deserialize)]
struct RecordPending {
    value: Value,
    expires_at: DateTime<Utc>,
}

#[derive(Debug, Deserialize)]
struct RecordConsent {
    purpose: String,
    status: ConsentStatus,
    on_behalf_of: Option<OnBehalfOf>,
}

#[derive(Debug, Deserialize)]
struct RecordProposal {
    proposal_id: ProposalId,
    field: String,
    value: Value,
    proposed_by: String,
}

/// The API's `HistoryView`.
#[derive(Debug, Deserialize)]
struct History {
    events: Vec<HistoryEvent>,
}

#[derive(Debug, Deserialize)]
struct HistoryEvent {
    global_position: u64,
    stream_version: u64,
    #[serde(rename = "type")]
    event_type: String,
    recorded_at: DateTime<Utc>,
    data: Value,
    provenance: Provenance,
}

impl Record {
    fn field(&self, name: &str) -> Option<&RecordField> {
        self.fields.iter().find(|f| f.field == name)
    }

    fn value(&self, name: &str) -> Option<String> {
        self.field(name)?.value.as_ref().map(view::json_text)
    }

    fn consent(&self, purpose: &str) -> ConsentStatus {
        self.consents
            .iter()
            .find(|c| c.purpose == purpose)
            .map_or(ConsentStatus::NeverGranted, |c| c.status)
    }
}

impl Demo<'_> {
    /// Runs the scenario; returns Ada's id, for the commands to explore with afterwards.
    async fn scenario(&mut self) -> anyhow::Result<CustomerId> {
        self.heading(1, "The identity provider (idp) registers two customers")?;
        let mia_born = Utc::now()
            .date_naive()
            .checked_sub_months(Months::new(11 * 12 + 2))
            .context("cannot compute a birth date 11 years ago")?;
        let mia_born = BirthDate::from_date(mia_born)?.to_string();
        let ada = self
            .register("Ada", "Lovelace", "1990-12-10", "GB", "ada@example.org")
            .await?;
        let mia = self
            .register("Mia", "Schmidt", &mia_born, "DE", "mia@example.de")
            .await?;
        self.pause().await;

        self.heading(2, "The CRM tries to overwrite Ada's email")?;
        self.say("crm sets email = ada.l@crm.example; the policy makes idp the system of record")?;
        let body = Body {
            provenance: provenance(ActorKind::Agent, "jane@crm")?,
            changes: vec![set("email", "ada.l@crm.example")],
        };
        let key = self.key();
        let problem = self
            .expect_problem(
                "crm",
                &ada,
                &key,
                &body,
                StatusCode::FORBIDDEN,
                "not_authoritative",
            )
            .await?;
        let (Some(proposal), Some("idp")) =
            (problem.proposal_id, problem.system_of_record.as_deref())
        else {
            return Err(self.fail(
                "the 403 should name the system of record idp and the proposal it recorded",
            ));
        };
        let record = self.record("crm", &ada, None).await?;
        kv(self.out, 2, "email now", email(&record))?;
        kv(
            self.out,
            2,
            "open proposals",
            format!(
                "{} (proposal {proposal} is among them)",
                record.proposals.len()
            ),
        )?;
        if record.value("email").as_deref() != Some("ada@example.org")
            || !record.proposals.iter().any(|p| p.proposal_id == proposal)
        {
            return Err(self.fail("the record should be unchanged, with the CRM's proposal open"));
        }
        self.pause().await;

        self.heading(
            3,
            "Ada changes her email in the web app; it takes effect once verified",
        )?;
        let new_email = "ada@analytical-engine.example";
        self.say(&format!(
            "web_app requests email = {new_email} (actor subject:ada)"
        ))?;
        let body = Body {
            provenance: provenance(ActorKind::Subject, "ada")?,
            changes: vec![Op::RequestChange {
                field: "email",
                value: json!(new_email),
            }],
        };
        let key = self.key();
        let (requested, _) = self
            .expect_ok("web_app", Some(&ada), &key, &body, StatusCode::OK)
            .await?;
        let (challenge, secret, requested_event) =
            match (requested.outcomes.as_slice(), requested.events.as_slice()) {
                (
                    [
                        OutcomeReply {
                            outcome: Outcome::Pending { challenge_id, .. },
                            secret: Some(secret),
                        },
                    ],
                    [event],
                ) => (*challenge_id, secret.clone(), event.id),
                _ => {
                    return Err(self
                        .fail("the email change should be pending verification, with its secret"));
                }
            };
        let record = self.record("web_app", &ada, None).await?;
        kv(self.out, 2, "email now", email(&record))?;
        if record.value("email").as_deref() != Some("ada@example.org") {
            return Err(self.fail("the old email should stay authoritative until verification"));
        }
        self.pause().await;
        let before_confirmation = Utc::now();
        self.pause().await;
        self.say(
            "Ada follows the link sent to the new address; web_app confirms the verification",
        )?;
        let mut confirmed = provenance(ActorKind::Subject, "ada")?;
        confirmed.evidence = Some(Evidence::new(
            Key::parse("email_link")?,
            &format!("confirm-{challenge}"),
        )?);
        // The confirmation answers the request: the history links the two.
        confirmed.causation_id = Some(requested_event.as_uuid());
        let body = Body {
            provenance: confirmed,
            changes: vec![Op::ConfirmVerification {
                field: "email",
                challenge_id: challenge,
                secret,
            }],
        };
        let key = self.key();
        self.expect_ok("web_app", Some(&ada), &key, &body, StatusCode::OK)
            .await?;
        let record = self.record("web_app", &ada, None).await?;
        kv(self.out, 2, "email now", email(&record))?;
        if record.value("email").as_deref() != Some(new_email) {
            return Err(self.fail("the verified email should have taken over"));
        }
        self.pause().await;

        self.heading(
            4,
            "Ada's marketing consent: granted in the consent portal, withdrawn in the web app",
        )?;
        self.say("consent_portal grants marketing (actor subject:ada)")?;
        let body = Body {
            provenance: provenance(ActorKind::Subject, "ada")?,
            changes: vec![grant("GB")?],
        };
        let key = self.key();
        self.expect_ok("consent_portal", Some(&ada), &key, &body, StatusCode::OK)
            .await?;
        self.consent_status("consent_portal", &ada, ConsentStatus::Granted)
            .await?;
        self.pause().await;
        self.say("web_app withdraws marketing consent (actor subject:ada)")?;
        let body = Body {
            provenance: provenance(ActorKind::Subject, "ada")?,
            changes: vec![Op::WithdrawConsent {
                purpose: "marketing",
            }],
        };
        let key = self.key();
        self.expect_ok("web_app", Some(&ada), &key, &body, StatusCode::OK)
            .await?;
        self.consent_status("web_app", &ada, ConsentStatus::Withdrawn)
            .await?;
        self.pause().await;

        self.heading(
            5,
            "Mia is 11 and lives in Germany: her consent needs a guardian",
        )?;
        self.say("consent_portal grants marketing (actor subject:mia, no guardian)")?;
        let body = Body {
            provenance: provenance(ActorKind::Subject, "mia")?,
            changes: vec![grant("DE")?],
        };
        let key = self.key();
        self.expect_problem(
            "consent_portal",
            &mia,
            &key,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "guardian_required",
        )
        .await?;
        self.say(
            "consent_portal records anna.schmidt as Mia's guardian, on the custody form it checked",
        )?;
        let record_guardian = Body {
            provenance: provenance(ActorKind::System, "consent-portal-web")?,
            changes: vec![Op::RecordRelationship {
                relationship: "guardian",
                representative: "anna.schmidt",
                evidence: json!({"kind": "signed_form", "reference": "custody-mia"}),
            }],
        };
        let key = self.key();
        self.expect_ok(
            "consent_portal",
            Some(&mia),
            &key,
            &record_guardian,
            StatusCode::OK,
        )
        .await?;
        self.say("consent_portal grants marketing on behalf of guardian:anna.schmidt")?;
        let mut guardian = provenance(ActorKind::System, "consent-portal-web")?;
        guardian.on_behalf_of = Some(OnBehalfOf::new(Relationship::Guardian, "anna.schmidt")?);
        let by_guardian = Body {
            provenance: guardian,
            changes: vec![grant("DE")?],
        };
        let guardian_key = self.key();
        let (first, _) = self
            .expect_ok(
                "consent_portal",
                Some(&mia),
                &guardian_key,
                &by_guardian,
                StatusCode::OK,
            )
            .await?;
        self.consent_status("consent_portal", &mia, ConsentStatus::Granted)
            .await?;
        self.pause().await;

        self.heading(6, "Retries are idempotent")?;
        self.say(&format!(
            "consent_portal never saw that answer, so it sends the same request again (Idempotency-Key {guardian_key})"
        ))?;
        let (again, reply) = self
            .expect_ok(
                "consent_portal",
                Some(&mia),
                &guardian_key,
                &by_guardian,
                StatusCode::OK,
            )
            .await?;
        if reply.header("idempotent-replayed") != Some("true")
            || !again.replayed
            || (again.stream_version, &again.outcomes, &again.events)
                != (first.stream_version, &first.outcomes, &first.events)
        {
            return Err(self.fail(
                "the retry should have replayed the first answer, with Idempotent-Replayed: true",
            ));
        }
        self.say("consent_portal reuses that key for a different request")?;
        let mut other = by_guardian.clone();
        other.provenance.on_behalf_of =
            Some(OnBehalfOf::new(Relationship::Guardian, "someone.else")?);
        self.expect_problem(
            "consent_portal",
            &mia,
            &guardian_key,
            &other,
            StatusCode::CONFLICT,
            "idempotency_conflict",
        )
        .await?;
        self.pause().await;

        self.heading(
            7,
            "The auditor reads the email's history and Ada's record as of an earlier instant",
        )?;
        let history: History = self
            .get("auditor", &ada, "/fields/email/history", None)
            .await?;
        self.say(&format!(
            "history of Ada's email: {} events, oldest first",
            history.events.len()
        ))?;
        for event in &history.events {
            history_event(self.out, event)?;
        }
        let types: Vec<&str> = history
            .events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect();
        if types
            != [
                "field_set",
                "value_proposed",
                "change_requested",
                "change_verified",
            ]
        {
            return Err(self.fail(format!(
                "Ada's email should have a history of 4 events, not {types:?}"
            )));
        }
        let then = self
            .record("auditor", &ada, Some(before_confirmation))
            .await?;
        self.say(&format!(
            "Ada's record as of {} (before the change was verified)",
            time(then.as_of.unwrap_or(before_confirmation))
        ))?;
        summary(self.out, &then)?;
        if then.value("email").as_deref() != Some("ada@example.org") {
            return Err(self.fail("as of that instant, Ada's email should have been the old one"));
        }
        let now = self.record("auditor", &ada, None).await?;
        self.say("Ada's record now")?;
        summary(self.out, &now)?;
        Ok(ada.id)
    }

    /// Registers a customer (as idp), then records their verified email.
    async fn register(
        &mut self,
        given: &'static str,
        family: &str,
        born: &str,
        jurisdiction: &str,
        address: &str,
    ) -> anyhow::Result<Person> {
        let mut signup = provenance(ActorKind::System, "signup-service")?;
        // Whole seconds: a source's clock says when it saw the fact, not to the nanosecond.
        signup.observed_at = Some((Utc::now() - chrono::Duration::seconds(2)).trunc_subsecs(0));
        let body = Body {
            provenance: signup,
            changes: vec![
                set("name.given", given),
                set("name.family", family),
                set("birth_date", born),
                set("jurisdiction", jurisdiction),
            ],
        };
        self.say(&format!(
            "idp registers {given} {family}, born {born}, jurisdiction {jurisdiction}"
        ))?;
        let key = self.key();
        let (registered, reply) = self
            .expect_ok("idp", None, &key, &body, StatusCode::CREATED)
            .await?;
        let location = format!("/v1/customers/{}", registered.customer_id);
        if reply.header("location") != Some(location.as_str()) {
            return Err(self.fail(format!(
                "the registration should answer with Location: {location}"
            )));
        }
        let who = Person {
            id: registered.customer_id,
            name: given,
            var: format!("{{{}}}", given.to_lowercase()),
        };
        kv(
            self.out,
            2,
            "customer",
            format!("{}, {} in the paths below", who.id, who.var),
        )?;
        // Evidence belongs to a whole command, so the verified email gets its own.
        let mut verified = provenance(ActorKind::System, "signup-service")?;
        verified.observed_at = Some((Utc::now() - chrono::Duration::seconds(1)).trunc_subsecs(0));
        let evidence = format!("signup-{}", given.to_lowercase());
        verified.evidence = Some(Evidence::new(Key::parse("email_link")?, &evidence)?);
        let body = Body {
            provenance: verified,
            changes: vec![set("email", address)],
        };
        self.say(&format!(
            "idp records {given}'s verified email {address} (evidence email_link:{evidence})"
        ))?;
        let key = self.key();
        self.expect_ok("idp", Some(&who), &key, &body, StatusCode::OK)
            .await?;
        Ok(who)
    }

    /// Sends a command the scenario expects to succeed with `status`, and prints its result.
    async fn expect_ok(
        &mut self,
        caller: &'static str,
        who: Option<&Person>,
        key: &str,
        body: &Body,
        status: StatusCode,
    ) -> anyhow::Result<(CommandReply, Reply)> {
        let reply = self.post(caller, who, key, body).await?;
        if reply.status != status {
            return Err(self.unexpected(&reply, &status.to_string()));
        }
        let result: CommandReply = self.parse(&reply)?;
        self.result(&result)?;
        Ok((result, reply))
    }

    /// Sends a command the scenario expects to be refused with `status` and problem `code`,
    /// and prints the problem.
    async fn expect_problem(
        &mut self,
        caller: &'static str,
        who: &Person,
        key: &str,
        body: &Body,
        status: StatusCode,
        code: &str,
    ) -> anyhow::Result<Problem> {
        let reply = self.post(caller, Some(who), key, body).await?;
        if reply.status != status || reply.code().as_deref() != Some(code) {
            return Err(self.unexpected(&reply, &format!("{} {code}", status.as_u16())));
        }
        let problem: Problem = self.parse(&reply)?;
        kv(self.out, 2, "detail", &problem.detail)?;
        if let Some(sor) = &problem.system_of_record {
            kv(self.out, 2, "system_of_record", sor)?;
        }
        if let Some(id) = problem.proposal_id {
            kv(self.out, 2, "proposal_id", id)?;
        }
        if let Some(result) = &problem.result {
            self.result(result)?;
        }
        Ok(problem)
    }

    /// `POST /v1/customers` (no one yet) or `POST /v1/customers/{id}/commands`.
    async fn post(
        &mut self,
        caller: &'static str,
        who: Option<&Person>,
        key: &str,
        body: &Body,
    ) -> anyhow::Result<Reply> {
        let (path, shown) = match who {
            None => ("/v1/customers".to_owned(), "/v1/customers".to_owned()),
            Some(who) => (
                format!("/v1/customers/{}/commands", who.id),
                format!("/v1/customers/{}/commands", who.var),
            ),
        };
        self.request = format!("POST {shown} as {caller}");
        writeln!(
            self.out,
            "POST {shown}  as {caller}  Idempotency-Key: {key}"
        )?;
        kv(
            self.out,
            2,
            "provenance",
            serde_json::to_string(&body.provenance)?,
        )?;
        for (i, change) in body.changes.iter().enumerate() {
            kv(
                self.out,
                2,
                if i == 0 { "changes" } else { "" },
                serde_json::to_string(change)?,
            )?;
        }
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.secret(caller)?)
            .header("Idempotency-Key", key)
            .json(body);
        self.send(request).await
    }

    /// `GET /v1/customers/{id}<suffix>`, optionally `?as_of=`, expecting 200 and a `T`.
    async fn get<T: DeserializeOwned>(
        &mut self,
        caller: &'static str,
        who: &Person,
        suffix: &str,
        as_of: Option<DateTime<Utc>>,
    ) -> anyhow::Result<T> {
        let mut shown = format!("/v1/customers/{}{suffix}", who.var);
        let mut request = self
            .client
            .get(format!("{}/v1/customers/{}{suffix}", self.base, who.id))
            .bearer_auth(self.secret(caller)?);
        if let Some(at) = as_of {
            let at = time(at);
            shown.push_str(&format!("?as_of={at}"));
            request = request.query(&[("as_of", at)]);
        }
        self.request = format!("GET {shown} as {caller}");
        writeln!(self.out, "GET {shown}  as {caller}")?;
        let reply = self.send(request).await?;
        if reply.status != StatusCode::OK {
            return Err(self.unexpected(&reply, "200 OK"));
        }
        self.parse(&reply)
    }

    async fn record(
        &mut self,
        caller: &'static str,
        who: &Person,
        as_of: Option<DateTime<Utc>>,
    ) -> anyhow::Result<Record> {
        self.get(caller, who, "", as_of).await
    }

    /// Reads the record and shows the standing of `who`'s marketing consent, which must be
    /// `expected`.
    async fn consent_status(
        &mut self,
        caller: &'static str,
        who: &Person,
        expected: ConsentStatus,
    ) -> anyhow::Result<()> {
        let record = self.record(caller, who, None).await?;
        let status = record.consent("marketing");
        kv(self.out, 2, "status now", view::status(status))?;
        if status != expected {
            return Err(self.fail(format!(
                "{}'s marketing consent should be {}, not {}",
                who.name,
                view::status(expected),
                view::status(status)
            )));
        }
        Ok(())
    }

    /// Sends a request and prints the status line, with the headers worth seeing.
    async fn send(&mut self, request: RequestBuilder) -> anyhow::Result<Reply> {
        let response = request
            .send()
            .await
            .with_context(|| format!("step {}: {} got no answer", self.step, self.request))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.with_context(|| {
            format!(
                "step {}: cannot read the answer to {}",
                self.step, self.request
            )
        })?;
        let reply = Reply {
            status,
            headers,
            text,
        };
        self.answer = format!("{}: {}", reply.status, reply.text);
        let reason = status.canonical_reason().unwrap_or("");
        let mut line = match reply.code() {
            Some(code) if !status.is_success() => {
                format!("{} {code} ({reason})", status.as_u16())
            }
            _ => format!("{} {reason}", status.as_u16()),
        };
        for name in ["Location", "ETag", "Idempotent-Replayed"] {
            if let Some(value) = reply.header(name) {
                line.push_str(&format!("; {name}: {value}"));
            }
        }
        writeln!(self.out, "  -> {line}")?;
        Ok(reply)
    }

    /// A command's result: one line per outcome, then what was recorded (or replayed).
    fn result(&mut self, result: &CommandReply) -> std::io::Result<()> {
        for (i, outcome) in result.outcomes.iter().enumerate() {
            kv(
                self.out,
                2,
                if i == 0 { "outcome" } else { "" },
                render::outcome(&outcome.outcome),
            )?;
        }
        let events = result.events.len();
        let events = format!("{events} event{}", if events == 1 { "" } else { "s" });
        if result.replayed {
            kv(
                self.out,
                2,
                "replayed",
                format!(
                    "the first answer comes back ({events}, the stream still at version {}); nothing is recorded twice",
                    result.stream_version
                ),
            )
        } else {
            kv(
                self.out,
                2,
                "recorded",
                format!(
                    "{events}; the stream is at version {}",
                    result.stream_version
                ),
            )
        }
    }

    fn parse<T: DeserializeOwned>(&self, reply: &Reply) -> anyhow::Result<T> {
        serde_json::from_str(&reply.text).with_context(|| {
            format!(
                "step {}: {}: the {} answer is not what the API documents: {}",
                self.step, self.request, reply.status, reply.text
            )
        })
    }

    fn unexpected(&self, reply: &Reply, expected: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "step {}: {}: expected {expected}, got {}: {}",
            self.step,
            self.request,
            reply.status,
            reply.text
        )
    }

    /// The scenario went another way than it should have after the last answer.
    fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "step {}: {}: {what}; the answer was {}",
            self.step,
            self.request,
            self.answer
        )
    }

    fn secret(&self, caller: &str) -> anyhow::Result<&str> {
        self.tokens
            .iter()
            .find(|(name, _)| *name == caller)
            .map(|(_, token)| token.secret.as_str())
            .with_context(|| format!("the demo has no token for {caller}"))
    }

    fn key(&mut self) -> String {
        self.keys += 1;
        format!("demo-{}", self.keys)
    }

    fn heading(&mut self, step: u32, title: &str) -> std::io::Result<()> {
        self.step = step;
        heading(self.out, step, title)
    }

    fn say(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.out, "{line}")
    }

    async fn pause(&self) {
        tokio::time::sleep(PAUSE).await;
    }
}

fn provenance(kind: ActorKind, id: &str) -> anyhow::Result<ProvenanceInput> {
    Ok(ProvenanceInput {
        actor: Actor::new(kind, id)?,
        on_behalf_of: None,
        evidence: None,
        observed_at: None,
        correlation_id: None,
        causation_id: None,
        reason: None,
    })
}

fn set(field: &'static str, value: &str) -> Op {
    Op::SetField {
        field,
        value: json!(value),
    }
}

fn grant(jurisdiction: &'static str) -> anyhow::Result<Op> {
    let digest = format!("{:x}", Sha256::digest(NOTICE_TEXT.as_bytes()));
    Ok(Op::GrantConsent {
        purpose: "marketing",
        basis: "consent",
        notice: NoticeRef::new("privacy-notice", "2026-01", &digest)?,
        channel: "web",
        jurisdiction,
    })
}

/// The email field in one line: value, version, source, verification and pending change.
fn email(record: &Record) -> String {
    let Some(f) = record.field("email") else {
        return "(none)".to_owned();
    };
    let mut line = format!(
        "{} (version {}, source {}",
        render::opt(f.value.as_ref().map(view::json_text)),
        f.version,
        render::opt(f.source.as_ref())
    );
    if let Some(v) = &f.verification {
        line.push_str(&format!(", verified by {}", v.verified_by));
    }
    line.push(')');
    if let Some(p) = &f.pending {
        line.push_str(&format!(
            "; pending: {} until {}",
            view::json_text(&p.value),
            time(p.expires_at)
        ));
    }
    line
}

/// A record in a few lines: each field's value and version, pending changes, consents and
/// proposals.
fn summary(out: &mut dyn Write, record: &Record) -> std::io::Result<()> {
    for f in &record.fields {
        let mut line = format!(
            "{} (v{})",
            render::opt(f.value.as_ref().map(view::json_text)),
            f.version
        );
        if let Some(p) = &f.pending {
            line.push_str(&format!("; pending: {}", view::json_text(&p.value)));
        }
        kv(out, 2, &f.field, line)?;
    }
    for c in &record.consents {
        let by = c
            .on_behalf_of
            .as_ref()
            .map(|o| format!(" (on behalf of {o})"))
            .unwrap_or_default();
        kv(
            out,
            2,
            "consent",
            format!("{}: {}{by}", c.purpose, view::status(c.status)),
        )?;
    }
    for p in &record.proposals {
        kv(
            out,
            2,
            "proposal",
            format!(
                "{} = {} by {}",
                p.field,
                view::json_text(&p.value),
                p.proposed_by
            ),
        )?;
    }
    kv(out, 2, "stream version", record.stream_version)
}

/// One event of a field's history as the API returns it, with its provenance.
fn history_event(out: &mut dyn Write, e: &HistoryEvent) -> std::io::Result<()> {
    writeln!(
        out,
        "  #{} {} at {} (stream version {})",
        e.global_position,
        e.event_type,
        time(e.recorded_at),
        e.stream_version
    )?;
    let data = &e.data;
    let value = data.get("value").map(view::json_text).unwrap_or_default();
    let id = |key: &str| data.get(key).map(view::json_text).unwrap_or_default();
    let what = match e.event_type.as_str() {
        "field_set" => format!("{value} set"),
        "value_proposed" => format!(
            "{value} proposed (proposal {}); the record is unchanged",
            id("proposal_id")
        ),
        "change_requested" => format!(
            "{value} requested, waiting for verification (challenge {})",
            id("challenge_id")
        ),
        "change_verified" => format!(
            "{value} verified and now in effect (challenge {})",
            id("challenge_id")
        ),
        _ => data.to_string(),
    };
    kv(out, 4, "what", what)?;
    if let Some(version) = data.get("version") {
        kv(out, 4, "field version", version)?;
    }
    let p = &e.provenance;
    kv(out, 4, "source", &p.source)?;
    kv(out, 4, "actor", &p.actor)?;
    if let Some(o) = &p.on_behalf_of {
        kv(out, 4, "on behalf of", o)?;
    }
    if let Some(evidence) = &p.evidence {
        kv(out, 4, "evidence", evidence)?;
    }
    if let Some(causation) = p.causation_id {
        kv(out, 4, "causation id", causation)?;
    }
    kv(out, 4, "idempotency key", &p.idempotency_key)
}
