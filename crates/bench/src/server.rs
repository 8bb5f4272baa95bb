//! The server under test, reached over HTTP only: an `idledger serve` child the bench started
//! on a scratch database ([`Server::spawn`]), or a server already running elsewhere
//! ([`Server::attach`], `--target`). Either way the bench provisions what its phases need —
//! tokens, the relay's consumer, the decisions' processor — through the admin API, with names
//! unique to the run, and retires them at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use idledger_store::{Role, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{BenchError, Step as _};
use crate::process::{ServeCommand, ServeProcess, ServeProcessReport};
use crate::procfs::PgScope;

/// The purpose of the relay's consumer and of the decisions' processor: customers who
/// granted it receive deliveries and are allowed.
pub const PURPOSE: &str = "marketing";

/// Bearer tokens of the callers the load uses.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    pub idp: String,
    pub web_app: String,
    pub consent_portal: String,
    pub auditor: String,
}

/// The consumer the relay delivers to, and where.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub subject_prefix: String,
    pub consumer: String,
    /// The streams the bench made for its child, deleted at the end (none on a target).
    streams: Option<(String, String)>,
}

/// A NATS server for the relay, and for a target the subject prefix its relay publishes under.
#[derive(Debug, Clone)]
pub struct NatsSpec<'a> {
    pub url: &'a str,
    pub subject_prefix: Option<&'a str>,
}

/// How to start a child server.
#[derive(Debug)]
pub struct Spawn<'a> {
    pub binary: &'a Path,
    pub name: &'static str,
    pub database_url: &'a str,
    pub master_key_hex: &'a str,
    /// The scratch PostgreSQL database's name, for the PostgreSQL CPU figures.
    pub postgres_database: Option<String>,
    pub nats_url: Option<&'a str>,
    /// A directory for its configuration file.
    pub work_dir: &'a Path,
    /// The report directory (its log goes there).
    pub out_dir: &'a Path,
}

#[derive(Debug)]
pub struct Server {
    pub base: String,
    pub callers: Callers,
    pub client: reqwest::Client,
    pub nats: Option<NatsTarget>,
    /// The run's suffix for names on the server (consumer, processor).
    pub unique: String,
    admin: String,
    /// What the run created, as the admin API's POSTs that end it (revoke, disable): run
    /// at the end on a target, which keeps running.
    retire: Vec<String>,
    process: Option<ServeProcess>,
    postgres: Option<PgScope>,
}

impl Server {
    /// Starts `idledger serve` on `spawn.database_url` (migrating it), with an admin token
    /// created in the database beforehand, and provisions the phases' callers.
    pub async fn spawn(spawn: &Spawn<'_>) -> Result<Self, BenchError> {
        let unique = unique();
        let store = Store::open(spawn.database_url)
            .await
            .step("cannot open the benchmark's database")?;
        let admin = store
            .tokens()
            .create(Role::Admin, None, "idledger bench")
            .await
            .step("cannot create the benchmark's admin token")?
            .secret;
        drop(store);
        let (config_file, streams) = match spawn.nats_url {
            Some(_) => {
                let streams = (format!("BENCH_{unique}"), format!("BENCH_ACKS_{unique}"));
                // The run shares the NATS server with whatever else uses it: names of its own.
                let file = spawn.work_dir.join(format!("serve-{}.toml", spawn.name));
                let text = format!(
                    "[nats]\nstream = \"{}\"\nsubject_prefix = \"bench{unique}\"\n\
                     ack_subject_prefix = \"bench{unique}acks\"\nack_stream = \"{}\"\n",
                    streams.0, streams.1
                );
                std::fs::write(&file, text).step(format!("cannot write {}", file.display()))?;
                (Some(file), Some(streams))
            }
            None => (None, None),
        };
        let (process, base) = ServeProcess::start(&ServeCommand {
            binary: spawn.binary,
            name: spawn.name,
            database_url: spawn.database_url,
            master_key_hex: spawn.master_key_hex,
            nats_url: spawn.nats_url,
            config_file: config_file.as_deref(),
            work_dir: spawn.work_dir,
            log: spawn.out_dir.join(format!("serve-{}.log", spawn.name)),
        })?;
        let nats = match (spawn.nats_url, streams) {
            (Some(url), Some(streams)) => Some(NatsTarget {
                url: url.to_owned(),
                subject_prefix: format!("bench{unique}"),
                consumer: format!("bench-{unique}"),
                streams: Some(streams),
            }),
            _ => None,
        };
        let mut server = Self {
            base,
            callers: Callers::default(),
            client: client()?,
            nats,
            unique,
            admin,
            retire: Vec::new(),
            process: Some(process),
            postgres: spawn.postgres_database.clone().map(PgScope::Database),
        };
        server.provision().await?;
        Ok(server)
    }

    /// A server already running at `base`, driven with `admin_token`. Its relay, if the
    /// commit-to-consumer phase is to measure it, publishes to `nats`.
    pub async fn attach(
        base: &str,
        admin_token: &str,
        nats: Option<NatsSpec<'_>>,
    ) -> Result<Self, BenchError> {
        let unique = unique();
        let nats = nats.map(|n| NatsTarget {
            url: n.url.to_owned(),
            subject_prefix: n.subject_prefix.unwrap_or("idledger.v1").to_owned(),
            consumer: format!("bench-{unique}"),
            streams: None,
        });
        let mut server = Self {
            base: base.trim_end_matches('/').to_owned(),
            callers: Callers::default(),
            client: client()?,
            nats,
            unique,
            admin: admin_token.to_owned(),
            retire: Vec::new(),
            process: None,
            // Which database the target uses is not known here: its whole server is counted.
            postgres: Some(PgScope::Server),
        };
        server.provision().await?;
        Ok(server)
    }

    /// The child process, when the bench started the server.
    pub fn process(&self) -> Option<&ServeProcess> {
        self.process.as_ref()
    }

    /// Which PostgreSQL processes the phases' CPU figures count, if any.
    pub fn postgres_scope(&self) -> Option<&PgScope> {
        self.postgres.as_ref()
    }

    /// An error if the child has ended: what it answered after that is not a measurement.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        self.process
            .as_mut()
            .map_or(Ok(()), ServeProcess::check_running)
    }

    /// Callers' tokens, and the relay's consumer when NATS is used.
    async fn provision(&mut self) -> Result<(), BenchError> {
        self.callers = Callers {
            idp: self.token("source", Some("idp")).await?,
            web_app: self.token("source", Some("web_app")).await?,
            consent_portal: self.token("source", Some("consent_portal")).await?,
            auditor: self.token("auditor", None).await?,
        };
        if let Some(nats) = &self.nats {
            let body = json!({"id": nats.consumer, "channel": "nats", "fields": ["*"],
                "purposes": [PURPOSE], "start_at": "now"});
            self.admin_post("/v1/consumers", &body, StatusCode::CREATED)
                .await?;
            self.retire
                .push(format!("/v1/consumers/{}/disable", nats.consumer));
        }
        Ok(())
    }

    /// Creates a token with the admin API and returns its secret.
    pub async fn token(&mut self, role: &str, subject: Option<&str>) -> Result<String, BenchError> {
        let body = json!({"role": role, "subject": subject, "label": "idledger bench"});
        let answer = self
            .admin_post("/v1/tokens", &body, StatusCode::CREATED)
            .await?;
        if let Some(id) = answer["record"]["id"].as_str() {
            self.retire.push(format!("/v1/tokens/{id}/revoke"));
        }
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BenchError::Failed("POST /v1/tokens answered no token".to_owned()))
    }

    /// Registers a processor with the admin API (disabled at the end on a target).
    pub async fn register_processor(&mut self, body: &Value) -> Result<(), BenchError> {
        self.admin_post("/v1/processors", body, StatusCode::CREATED)
            .await?;
        if let Some(id) = body["id"].as_str() {
            self.retire.push(format!("/v1/processors/{id}/disable"));
        }
        Ok(())
    }

    /// A POST with the admin token that must answer `expect`; returns the body.
    pub async fn admin_post(
        &self,
        path: &str,
        body: &Value,
        expect: StatusCode,
    ) -> Result<Value, BenchError> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .json(body)
            .send()
            .await
            .step(format!("POST {path} to {} failed", self.base))?;
        let status = response.status();
        let text = response.text().await.step(format!("POST {path}"))?;
        if status != expect {
            return Err(BenchError::Failed(format!(
                "POST {path} answered {status} {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        serde_json::from_str(&text).step(format!("POST {path} answered no JSON"))
    }

    /// The global position of a new event: the head of the log once the bench's own writes
    /// before it are in. It registers a customer and reads their email's history.
    pub async fn mark(&self) -> Result<u64, BenchError> {
        let key = format!("mark-{}", Uuid::now_v7());
        let customer = crate::load::register(self, &key).await?;
        let url = format!("{}/v1/customers/{customer}/fields/email/history", self.base);
        let response = self
            .client
            .get(&url)
            .bearer_auth(&self.callers.auditor)
            .send()
            .await
            .step("reading a marker's history failed")?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .step("a marker's history is not JSON")?;
        body["events"]
            .as_array()
            .and_then(|events| {
                events
                    .iter()
                    .filter_map(|e| e["global_position"].as_u64())
                    .max()
            })
            .ok_or_else(|| {
                BenchError::Failed(format!(
                    "a marker's history answered {status} without events"
                ))
            })
    }

    /// Waits until the relay has delivered everything the bench wrote so far, so that a
    /// timed phase measures fresh work, not a backlog. A no-op without a relay.
    pub async fn wait_caught_up(&self) -> Result<(), BenchError> {
        let Some(nats) = &self.nats else {
            return Ok(());
        };
        let head = self.mark().await?;
        let url = format!("{}/v1/consumers/{}", self.base, nats.consumer);
        let until = Instant::now() + Duration::from_secs(120);
        loop {
            let view: Value = self
                .client
                .get(&url)
                .bearer_auth(&self.admin)
                .send()
                .await
                .step("reading the consumer's checkpoint failed")?
                .json()
                .await
                .step("the consumer's view is not JSON")?;
            let at = view["checkpoint"].as_u64().unwrap_or(0);
            if at >= head {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(BenchError::Failed(format!(
                    "the relay did not deliver to {} within 120 s (at position {at} of {head}); \
                     does the server run its relay with NATS{}?",
                    nats.consumer,
                    if nats.streams.is_none() {
                        " and the subject prefix given by --target-subject-prefix"
                    } else {
                        ""
                    }
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Ends the server: a child is killed (its report returned) and its NATS streams deleted;
    /// on a target, the run's consumer, processor and tokens are disabled and revoked.
    pub async fn stop(self) -> Result<Option<ServeProcessReport>, BenchError> {
        let Self {
            base,
            client,
            nats,
            admin,
            retire,
            process,
            ..
        } = self;
        let report = process.map(ServeProcess::stop).transpose();
        if let Some(nats) = &nats
            && let Some((stream, ack_stream)) = &nats.streams
            && let Ok(nats) = async_nats::connect(&nats.url).await
        {
            let js = async_nats::jetstream::new(nats);
            let _ = js.delete_stream(stream).await;
            let _ = js.delete_stream(ack_stream).await;
        }
        if report.as_ref().is_ok_and(Option::is_none) {
            // A target keeps running: leave nothing of the run able to act on it. Best effort.
            for path in retire {
                let _ = client
                    .post(format!("{base}{path}"))
                    .bearer_auth(&admin)
                    .json(&json!({}))
                    .send()
                    .await;
            }
        }
        report
    }
}

fn unique() -> String {
    let unique = Uuid::now_v7().simple().to_string();
    unique[unique.len() - 10..].to_owned()
}

fn client() -> Result<reqwest::Client, BenchError> {
    reqwest::Client::builder()
        // The server is on this machine or named by the operator: no proxy between.
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1024)
        .build()
        .step("cannot build the HTTP client")
}
