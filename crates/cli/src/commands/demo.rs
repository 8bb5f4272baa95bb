//! `idledger demo`: the main job, walked through on a fresh store. Source systems send
//! commands straight to the ledger (there is no HTTP API yet) and each outcome or refusal is
//! printed as it happens. Any refusal the scenario does not expect ends the demo with an error.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{Months, Utc};
use idledger_domain::command::{Change, Command, Principal, ProvenanceInput, Refused};
use idledger_domain::decide::Outcome;
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::ids::{
    Actor, ActorKind, ChallengeId, CustomerId, IdempotencyKey, Key, OnBehalfOf, Purpose,
    Relationship, SourceId,
};
use idledger_domain::state::CustomerState;
use idledger_domain::values::{
    BirthDate, ConsentChannel, Evidence, Jurisdiction, LegalBasis, NoticeRef,
};
use idledger_store::{ExecuteError, Executed, Ledger};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::commands::{rebuild, verify};
use crate::config::{Database, Settings};
use crate::render::{self, kv, time};
use crate::store::{self, KeyUse};
use crate::view;

/// Pause between phases, so that each phase has its own instants for as-of reads.
const PAUSE: Duration = Duration::from_millis(20);

/// The privacy notice shown when consent is collected; its SHA-256 goes into the grant.
const NOTICE_TEXT: &str =
    "Example Ltd may email you news and offers. You can withdraw at any time.";

pub async fn run(settings: &Settings, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let settings = demo_settings(settings)?;
    let ledger = store::open_ledger(&settings, KeyUse::Required).await?;
    let events = ledger.head_position().await?;
    if events > 0 {
        bail!(
            "the demo records sample customers and needs an empty database, but {} holds {events} events; \
             leave out --database (and DATABASE_URL) to use a fresh file in the data directory",
            settings.database
        );
    }
    writeln!(
        out,
        "idledger demo: source systems send commands to a fresh store"
    )?;
    kv(out, 2, "database", &settings.database)?;
    kv(out, 2, "policy", ledger.policy().version())?;
    let mut demo = Demo {
        ledger,
        out,
        run: Uuid::now_v7().simple().to_string(),
        commands: 0,
    };
    let ada = demo.scenario().await?;
    writeln!(demo.out)?;
    writeln!(
        demo.out,
        "demo finished in {:.2} s; explore Ada's record with:",
        started.elapsed().as_secs_f64()
    )?;
    let dir = settings.data_dir.display();
    let db = &settings.database;
    for what in ["history", "record"] {
        let field = if what == "history" { " email" } else { "" };
        writeln!(
            demo.out,
            "  idledger --data-dir {dir} --database {db} {what} {ada}{field}"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The settings with the database replaced by a new SQLite file in the data directory,
/// unless a database was given.
fn demo_settings(settings: &Settings) -> anyhow::Result<Settings> {
    let mut settings = settings.clone();
    if !settings.database_given {
        let name = format!("demo-{}.db", Utc::now().format("%Y%m%dT%H%M%S%3fZ"));
        let path = settings.data_dir.join(name);
        if path.exists() {
            bail!("{} already exists; run the demo again", path.display());
        }
        settings.database = Database::Sqlite(path);
    }
    Ok(settings)
}

struct Demo<'a> {
    ledger: Ledger,
    out: &'a mut dyn Write,
    /// Makes this run's idempotency keys unique.
    run: String,
    commands: u32,
}

/// A customer of the scenario.
#[derive(Debug, Clone, Copy)]
struct Person {
    id: CustomerId,
    name: &'static str,
}

impl Demo<'_> {
    /// Runs the scenario; returns Ada's id, for the commands to explore with afterwards.
    async fn scenario(&mut self) -> anyhow::Result<CustomerId> {
        let ada = Person {
            id: CustomerId::generate(),
            name: "Ada",
        };
        let mia = Person {
            id: CustomerId::generate(),
            name: "Mia",
        };

        self.heading(1, "The identity provider (idp) registers two customers")?;
        let mia_born = Utc::now()
            .date_naive()
            .checked_sub_months(Months::new(11 * 12 + 2))
            .context("cannot compute a birth date 11 years ago")?;
        let mia_born = BirthDate::from_date(mia_born)?.to_string();
        self.register(
            ada,
            "Ada",
            "Lovelace",
            "1990-12-10",
            "GB",
            "ada@example.org",
        )
        .await?;
        self.register(mia, "Mia", "Schmidt", &mia_born, "DE", "mia@example.de")
            .await?;
        self.pause().await;

        self.heading(2, "The CRM tries to overwrite Ada's email")?;
        let command = self.command(
            ada,
            provenance(ActorKind::Agent, "jane@crm")?,
            vec![set("email", json!("ada.l@crm.example"))?],
        )?;
        self.say("crm sets email = ada.l@crm.example")?;
        let executed = self.expect_ok("crm", &command).await?;
        if !matches!(
            executed.result.outcomes.as_slice(),
            [Outcome::Proposed { .. }]
        ) {
            bail!("step 2: the CRM's write should have become a proposal");
        }
        let state = self.state(ada).await?;
        kv(self.out, 2, "email now", email(&state))?;
        kv(self.out, 2, "open proposals", state.proposals.len())?;
        self.pause().await;

        self.heading(
            3,
            "Ada changes her email in the web app; it takes effect once verified",
        )?;
        let new_email = "ada@analytical-engine.example";
        let command = self.command(
            ada,
            provenance(ActorKind::Subject, "ada")?,
            vec![Change::RequestChange {
                field: FieldPath::Email,
                value: FieldValue::parse(&FieldPath::Email, &json!(new_email))?,
                expected_version: None,
            }],
        )?;
        self.say(&format!(
            "web_app requests email = {new_email} (actor subject:ada)"
        ))?;
        let executed = self.expect_ok("web_app", &command).await?;
        let (challenge, requested_event) = match (
            executed.result.outcomes.as_slice(),
            executed.result.events.as_slice(),
        ) {
            ([Outcome::Pending { challenge_id, .. }], [event]) => (*challenge_id, event.id),
            _ => bail!("step 3: the email change should be pending verification"),
        };
        let state = self.state(ada).await?;
        kv(self.out, 2, "email now", email(&state))?;
        self.pause().await;
        let before_confirmation = Utc::now();
        self.pause().await;
        self.confirm(ada, challenge, requested_event.as_uuid())
            .await?;
        let state = self.state(ada).await?;
        kv(self.out, 2, "email now", email(&state))?;
        if state.value(&FieldPath::Email).map(render::value).as_deref() != Some(new_email) {
            bail!("step 3: the verified email should have taken over");
        }
        self.pause().await;

        self.heading(
            4,
            "Ada's marketing consent: granted in the consent portal, withdrawn in the web app",
        )?;
        let marketing = Purpose::parse("marketing")?;
        let command = self.command(
            ada,
            provenance(ActorKind::Subject, "ada")?,
            vec![grant(&marketing, "GB")?],
        )?;
        self.say("consent_portal grants marketing (actor subject:ada)")?;
        if let Change::GrantConsent { notice, .. } = &command.changes[0] {
            kv(self.out, 2, "notice", notice)?;
        }
        self.expect_ok("consent_portal", &command).await?;
        self.consent_status(ada, &marketing).await?;
        self.pause().await;
        let command = self.command(
            ada,
            provenance(ActorKind::Subject, "ada")?,
            vec![Change::WithdrawConsent {
                purpose: marketing.clone(),
            }],
        )?;
        self.say("web_app withdraws marketing consent (actor subject:ada)")?;
        self.expect_ok("web_app", &command).await?;
        self.consent_status(ada, &marketing).await?;
        self.pause().await;

        self.heading(
            5,
            "Mia is 11 and lives in Germany: her consent needs a guardian",
        )?;
        let command = self.command(
            mia,
            provenance(ActorKind::Subject, "mia")?,
            vec![grant(&marketing, "DE")?],
        )?;
        self.say("consent_portal grants marketing (actor subject:mia, no guardian)")?;
        match self.execute(&principal("consent_portal")?, &command).await {
            Err(ExecuteError::Refused(refused))
                if refused.refusal.code() == "guardian_required" =>
            {
                self.refused(&refused)?;
            }
            Err(e) => return Err(e).context("step 5: expected the refusal guardian_required"),
            Ok(_) => bail!("step 5: a minor's consent without a guardian should have been refused"),
        }
        let mut guardian = provenance(ActorKind::System, "consent-portal-web")?;
        guardian.on_behalf_of = Some(OnBehalfOf::new(Relationship::Guardian, "anna.schmidt")?);
        let by_guardian = self.command(mia, guardian, vec![grant(&marketing, "DE")?])?;
        self.say("consent_portal grants marketing on behalf of guardian:anna.schmidt")?;
        let first = self.expect_ok("consent_portal", &by_guardian).await?;
        self.consent_status(mia, &marketing).await?;
        self.pause().await;

        self.heading(6, "Retries are idempotent")?;
        self.say(&format!(
            "consent_portal sends the same command again (idempotency key {})",
            by_guardian.idempotency_key
        ))?;
        let again = self
            .execute(&principal("consent_portal")?, &by_guardian)
            .await
            .context("step 6: the retry failed")?;
        if !again.replayed || again.result != first.result {
            bail!("step 6: the retry should have returned the first result");
        }
        kv(
            self.out,
            2,
            "outcome",
            format!(
                "replayed: the first result comes back and nothing is recorded twice (stream version still {})",
                again.result.stream_version
            ),
        )?;
        let mut other_body = by_guardian.clone();
        other_body.provenance.on_behalf_of =
            Some(OnBehalfOf::new(Relationship::Guardian, "someone.else")?);
        self.say("consent_portal reuses that key for a different command")?;
        match self
            .execute(&principal("consent_portal")?, &other_body)
            .await
        {
            Err(e @ ExecuteError::IdempotencyConflict { .. }) => {
                kv(self.out, 2, "refused", format!("idempotency_conflict: {e}"))?
            }
            Err(e) => return Err(e).context("step 6: expected an idempotency conflict"),
            Ok(_) => bail!(
                "step 6: reusing an idempotency key for another body should have been refused"
            ),
        }
        self.pause().await;

        self.heading(
            7,
            "Audit: history, the record as of an instant, verify and rebuild",
        )?;
        let history = self.ledger.history(ada.id, &FieldPath::Email).await?;
        self.say(&format!(
            "history of Ada's email ({} events)",
            history.len()
        ))?;
        for event in &history {
            render::event(self.out, 2, event)?;
        }
        let Some(then) = self.ledger.state_as_of(ada.id, before_confirmation).await? else {
            bail!("step 7: Ada had no record before her email change");
        };
        self.say(&format!(
            "Ada's record as of {} (before the change was verified)",
            time(before_confirmation)
        ))?;
        summary(self.out, &then)?;
        self.say("Ada's record now")?;
        let now = self.state(ada).await?;
        summary(self.out, &now)?;

        self.say("verify")?;
        let report = self.ledger.verify(&|_, _| {}).await?;
        verify::write_text(self.out, 2, &report)?;
        if report.first_broken.is_some() {
            bail!("step 7: the log failed verification");
        }
        self.say("rebuild")?;
        let started = Instant::now();
        let report = self.ledger.rebuild(&|_, _| {}).await?;
        rebuild::write_text(self.out, 2, &report, started.elapsed())?;
        if !report.identical {
            bail!("step 7: the rebuilt projection differs from the live one");
        }
        Ok(ada.id)
    }

    async fn register(
        &mut self,
        who: Person,
        given: &str,
        family: &str,
        born: &str,
        jurisdiction: &str,
        address: &str,
    ) -> anyhow::Result<()> {
        let mut signup = provenance(ActorKind::System, "signup-service")?;
        signup.observed_at = Some(Utc::now() - chrono::Duration::seconds(2));
        let command = self.command(
            who,
            signup,
            vec![
                Change::Register,
                set("name.given", json!(given))?,
                set("name.family", json!(family))?,
                set("birth_date", json!(born))?,
                set("jurisdiction", json!(jurisdiction))?,
            ],
        )?;
        self.say(&format!(
            "idp registers {given} {family}, born {born}, jurisdiction {jurisdiction}"
        ))?;
        kv(self.out, 2, "customer", who.id)?;
        self.expect_ok("idp", &command).await?;
        // Evidence belongs to a whole command, so the verified email gets its own.
        let mut verified = provenance(ActorKind::System, "signup-service")?;
        verified.observed_at = Some(Utc::now() - chrono::Duration::seconds(1));
        let evidence = format!("signup-{}", who.name.to_lowercase());
        verified.evidence = Some(Evidence::new(Key::parse("email_link")?, &evidence)?);
        let command = self.command(who, verified, vec![set("email", json!(address))?])?;
        self.say(&format!(
            "idp records {given}'s verified email {address} (evidence email_link:{evidence})"
        ))?;
        self.expect_ok("idp", &command).await?;
        Ok(())
    }

    async fn confirm(
        &mut self,
        who: Person,
        challenge: ChallengeId,
        requested_event: Uuid,
    ) -> anyhow::Result<()> {
        let mut confirmed = provenance(ActorKind::Subject, "ada")?;
        confirmed.evidence = Some(Evidence::new(
            Key::parse("email_link")?,
            &format!("confirm-{challenge}"),
        )?);
        confirmed.causation_id = Some(requested_event);
        let command = self.command(
            who,
            confirmed,
            vec![Change::ConfirmVerification {
                field: FieldPath::Email,
                challenge_id: challenge,
            }],
        )?;
        self.say(
            "Ada follows the link sent to the new address; web_app confirms the verification",
        )?;
        self.expect_ok("web_app", &command).await?;
        Ok(())
    }

    fn command(
        &mut self,
        who: Person,
        provenance: ProvenanceInput,
        changes: Vec<Change>,
    ) -> anyhow::Result<Command> {
        self.commands += 1;
        Ok(Command {
            customer_id: who.id,
            idempotency_key: IdempotencyKey::parse(&format!(
                "demo-{}-{}",
                self.run, self.commands
            ))?,
            provenance,
            changes,
            expected_stream_version: None,
        })
    }

    async fn execute(
        &self,
        source: &Principal,
        command: &Command,
    ) -> Result<Executed, ExecuteError> {
        self.ledger.execute(source, command).await
    }

    /// Runs a command the scenario expects to succeed and prints its outcomes.
    async fn expect_ok(&mut self, source: &str, command: &Command) -> anyhow::Result<Executed> {
        let executed = match self.execute(&principal(source)?, command).await {
            Ok(executed) => executed,
            Err(ExecuteError::Refused(refused)) => {
                self.refused(&refused)?;
                bail!(
                    "unexpected refusal of {source}'s command ({}): {refused}",
                    refused.refusal.code()
                );
            }
            Err(e) => return Err(e).with_context(|| format!("{source}'s command failed")),
        };
        for (i, outcome) in executed.result.outcomes.iter().enumerate() {
            kv(
                self.out,
                2,
                if i == 0 { "outcome" } else { "" },
                render::outcome(outcome),
            )?;
        }
        kv(
            self.out,
            2,
            "recorded",
            format!(
                "{} event{}; the stream is at version {}",
                executed.result.events.len(),
                if executed.result.events.len() == 1 {
                    ""
                } else {
                    "s"
                },
                executed.result.stream_version
            ),
        )?;
        Ok(executed)
    }

    fn refused(&mut self, refused: &Refused) -> std::io::Result<()> {
        kv(
            self.out,
            2,
            "refused",
            format!("{}: {refused}", refused.refusal.code()),
        )
    }

    async fn state(&self, who: Person) -> anyhow::Result<CustomerState> {
        self.ledger
            .state(who.id)
            .await?
            .with_context(|| format!("{} has no record", who.name))
    }

    async fn consent_status(&mut self, who: Person, purpose: &Purpose) -> anyhow::Result<()> {
        let state = self.state(who).await?;
        let status = state.consent_status(purpose, self.ledger.policy(), Utc::now());
        kv(self.out, 2, "status now", view::status(status))?;
        Ok(())
    }

    fn heading(&mut self, step: u32, title: &str) -> std::io::Result<()> {
        writeln!(self.out)?;
        writeln!(self.out, "== {step}. {title} ==")
    }

    fn say(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.out, "{line}")
    }

    async fn pause(&self) {
        tokio::time::sleep(PAUSE).await;
    }
}

fn principal(source: &str) -> anyhow::Result<Principal> {
    Ok(Principal::Source(SourceId::parse(source)?))
}

fn provenance(kind: ActorKind, id: &str) -> anyhow::Result<ProvenanceInput> {
    Ok(ProvenanceInput {
        actor: Actor::new(kind, id)?,
        on_behalf_of: None,
        evidence: None,
        observed_at: None,
        correlation_id: Some(Uuid::now_v7()),
        causation_id: None,
        reason: None,
    })
}

fn set(field: &str, value: serde_json::Value) -> anyhow::Result<Change> {
    let field = FieldPath::parse(field)?;
    let value = FieldValue::parse(&field, &value)?;
    Ok(Change::SetField {
        field,
        value,
        expected_version: None,
    })
}

fn grant(purpose: &Purpose, jurisdiction: &str) -> anyhow::Result<Change> {
    let digest = format!("{:x}", Sha256::digest(NOTICE_TEXT.as_bytes()));
    Ok(Change::GrantConsent {
        purpose: purpose.clone(),
        basis: LegalBasis::Consent,
        notice: NoticeRef::new("privacy-notice", "2026-01", &digest)?,
        channel: ConsentChannel::Web,
        jurisdiction: Jurisdiction::parse(jurisdiction)?,
        expires_at: None,
    })
}

/// The email field in one line: value, version, source, verification and pending change.
fn email(state: &CustomerState) -> String {
    let Some(rec) = state.field(&FieldPath::Email) else {
        return "(none)".to_owned();
    };
    let mut line = format!(
        "{} (version {}, source {}",
        render::opt(rec.value.as_ref().map(render::value)),
        rec.version,
        render::opt(rec.source.as_ref())
    );
    if let Some(v) = &rec.verification {
        line.push_str(&format!(", verified by {}", v.verified_by));
    }
    line.push(')');
    if let Some(p) = &rec.pending {
        line.push_str(&format!(
            "; pending: {} until {}",
            render::value(&p.value),
            time(p.expires_at)
        ));
    }
    line
}

/// A record in a few lines: each field's value and version, pending changes, proposals.
fn summary(out: &mut dyn Write, state: &CustomerState) -> std::io::Result<()> {
    for (field, rec) in &state.fields {
        let mut line = format!(
            "{} (v{})",
            render::opt(rec.value.as_ref().map(render::value)),
            rec.version
        );
        if let Some(p) = &rec.pending {
            line.push_str(&format!("; pending: {}", render::value(&p.value)));
        }
        kv(out, 2, &field.to_string(), line)?;
    }
    for p in state.proposals.values() {
        kv(
            out,
            2,
            "proposal",
            format!(
                "{} = {} by {}",
                p.field,
                render::value(&p.value),
                p.proposed_by
            ),
        )?;
    }
    Ok(())
}
