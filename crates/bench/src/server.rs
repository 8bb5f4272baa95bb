//! The server under test, as `idledger serve` runs it: the API router on 127.0.0.1:0 and,
//! for PostgreSQL, the relay publishing to NATS JetStream — in this process.

use std::net::Ipv4Addr;
use std::time::Duration;

use chrono::Utc;
use idledger_api::{ApiConfig, AppState};
use idledger_domain::ids::Purpose;
use idledger_domain::policy::Policy;
use idledger_relay::{NatsConfig, Relay, RelayConfig};
use idledger_store::delivery::{Channel, ConsumerId, FieldSelector, NewConsumer, StartAt};
use idledger_store::{Ledger, LedgerOptions, MasterKey, Role};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{BenchError, Step as _};

/// The consumer the relay delivers to during the benchmark.
pub const CONSUMER: &str = "bench";
/// Its purpose: customers who granted it receive deliveries.
pub const PURPOSE: &str = "marketing";

/// Bearer tokens of the callers the load uses.
#[derive(Debug, Clone)]
pub struct Callers {
    pub idp: String,
    pub web_app: String,
    pub consent_portal: String,
    pub auditor: String,
}

/// Where the relay publishes, and the streams to delete afterwards.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    pub url: String,
    pub subject_prefix: String,
    stream: String,
    ack_stream: String,
}

#[derive(Debug)]
pub struct Server {
    pub base: String,
    pub ledger: Ledger,
    pub callers: Callers,
    pub client: reqwest::Client,
    pub nats: Option<NatsTarget>,
    stop: tokio::sync::oneshot::Sender<()>,
    served: JoinHandle<std::io::Result<()>>,
    relay: Option<(
        CancellationToken,
        JoinHandle<Result<(), idledger_relay::RelayError>>,
    )>,
}

impl Server {
    /// Opens (and migrates) the database, registers the benchmark's consumer and tokens, and
    /// starts the API — and the relay when `nats_url` is given.
    pub async fn start(url: &str, nats_url: Option<&str>) -> Result<Self, BenchError> {
        Self::serve(open_ledger(url).await?, nats_url).await
    }

    /// The same on a ledger already open.
    pub async fn serve(ledger: Ledger, nats_url: Option<&str>) -> Result<Self, BenchError> {
        let state = AppState::new(ledger.clone());
        let tokens = state.tokens.clone();
        let token = |role: Role, source: Option<&'static str>| {
            let tokens = tokens.clone();
            async move {
                tokens
                    .create(role, source, "idledger bench")
                    .await
                    .map(|t| t.secret)
                    .step("cannot create a benchmark token")
            }
        };
        let callers = Callers {
            idp: token(Role::Source, Some("idp")).await?,
            web_app: token(Role::Source, Some("web_app")).await?,
            consent_portal: token(Role::Source, Some("consent_portal")).await?,
            auditor: token(Role::Auditor, None).await?,
        };
        let (nats, relay) = match nats_url {
            Some(nats_url) => {
                let (target, relay) = start_relay(&ledger, nats_url).await?;
                (Some(target), Some(relay))
            }
            None => (None, None),
        };
        let config = ApiConfig {
            shutdown_grace: Duration::from_secs(5),
            // The benchmark measures the server: a few tokens make all its load, which a
            // per-token quota would cap.
            token_limits: idledger_api::limits::TokenLimits::UNLIMITED,
            ..ApiConfig::default()
        };
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .step("cannot listen on 127.0.0.1 for the benchmark's API server")?;
        let addr = listener.local_addr().step("no local address")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(idledger_api::serve(
            listener,
            idledger_api::router(state, &config),
            async move {
                let _ = stopped.await;
            },
            &config,
        ));
        let client = reqwest::Client::builder()
            // The server is in this process: no proxy from the environment between.
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1024)
            .build()
            .step("cannot build the HTTP client")?;
        Ok(Self {
            base: format!("http://{addr}"),
            ledger,
            callers,
            client,
            nats,
            stop,
            served,
            relay,
        })
    }

    /// Stops the API (in-flight requests finish), then the relay, and deletes the NATS streams.
    pub async fn stop(self) -> Result<(), BenchError> {
        let Self {
            client,
            stop,
            served,
            relay,
            nats,
            ..
        } = self;
        // Idle keep-alive connections would hold the graceful stop for its grace period.
        drop(client);
        let _ = stop.send(());
        let served = served.await;
        if let Some((cancel, relay)) = relay {
            cancel.cancel();
            match relay.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(BenchError::Failed(format!("the relay failed: {e}"))),
                Err(e) => return Err(BenchError::Failed(format!("the relay panicked: {e}"))),
            }
        }
        if let Some(nats) = nats
            && let Ok(client) = async_nats::connect(&nats.url).await
        {
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(&nats.stream).await;
            let _ = js.delete_stream(&nats.ack_stream).await;
        }
        served
            .step("the benchmark's API server panicked")?
            .step("the benchmark's API server failed")
    }
}

pub async fn open_ledger(url: &str) -> Result<Ledger, BenchError> {
    let store = idledger_store::Store::open(url)
        .await
        .step("cannot open the benchmark's database")?;
    let policy = Policy::default_policy()
        .map_err(|e| BenchError::Failed(format!("the default policy does not load: {e}")))?;
    Ok(Ledger::new(
        &store,
        MasterKey::generate(),
        policy,
        LedgerOptions::default(),
    ))
}

type RelayTask = (
    CancellationToken,
    JoinHandle<Result<(), idledger_relay::RelayError>>,
);

async fn start_relay(
    ledger: &Ledger,
    nats_url: &str,
) -> Result<(NatsTarget, RelayTask), BenchError> {
    let invalid = |e: idledger_domain::values::ValueError| BenchError::Failed(e.to_string());
    let consumer = NewConsumer::new(
        ConsumerId::parse(CONSUMER).map_err(invalid)?,
        Channel::Nats,
        vec![FieldSelector::parse("*").map_err(invalid)?],
        vec![Purpose::parse(PURPOSE).map_err(|e| BenchError::Failed(e.to_string()))?],
        StartAt::Beginning,
    )
    .map_err(invalid)?;
    ledger
        .store()
        .deliveries()
        .register_consumer(consumer, Utc::now())
        .await
        .step("cannot register the benchmark's consumer")?;
    // Unique names: the run shares the NATS server with whatever else uses it.
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let unique = &unique[unique.len() - 10..];
    let mut nats = NatsConfig {
        url: nats_url.to_owned(),
        ack_subject_prefix: format!("bench{unique}acks"),
        ack_stream: format!("BENCH_ACKS_{unique}"),
        ..NatsConfig::default()
    };
    nats.stream.name = format!("BENCH_{unique}");
    nats.stream.subject_prefix = format!("bench{unique}");
    nats.stream.max_age = Some(Duration::from_secs(3600));
    let target = NatsTarget {
        url: nats_url.to_owned(),
        subject_prefix: nats.stream.subject_prefix.clone(),
        stream: nats.stream.name.clone(),
        ack_stream: nats.ack_stream.clone(),
    };
    let config = RelayConfig {
        nats: Some(nats),
        ..RelayConfig::default()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Relay::new(ledger.clone(), config).run(cancel.clone()));
    Ok((target, (cancel, task)))
}
