//! Relay settings, with defaults that suit one instance on one machine.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use zeroize::Zeroizing;

/// The CloudEvents `source` when none is configured. Set a real one per instance (e.g.
/// `urn:idledger:prod-eu`): consumers may receive from several.
pub const DEFAULT_SOURCE: &str = "urn:idledger:default";

/// Everything the relay needs besides the ledger.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The CloudEvents `source` of every message: names this idledger instance.
    pub source: String,
    /// NATS JetStream delivery and ack intake; `None` serves webhook consumers only.
    pub nats: Option<NatsConfig>,
    pub webhook: WebhookConfig,
    /// Events read from the log per step.
    pub batch_size: u32,
    /// How long an idle consumer waits before looking for new events when nothing wakes it:
    /// the log's growth does at once (`Ledger::log_growth`), so this is the fallback for an
    /// announcement lost while the store's listener reconnected, and for changes that are not
    /// appends (a consumer's checkpoint moved by an administrator).
    pub poll_interval: Duration,
    /// How often the consumer registry is re-read (new, disabled, changed consumers).
    pub registry_refresh: Duration,
    /// How often each consumer's customers are checked for a basis that ran out without an
    /// event (a consent's expiry or maximum age): they get their withdrawal notice then.
    pub expiry_sweep_interval: Duration,
    /// Back-off after a failure of the database or NATS.
    pub retry: Backoff,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            source: DEFAULT_SOURCE.to_owned(),
            nats: Some(NatsConfig::default()),
            webhook: WebhookConfig::default(),
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            registry_refresh: Duration::from_secs(2),
            expiry_sweep_interval: Duration::from_secs(300),
            retry: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
            },
        }
    }
}

/// How to reach NATS and shape the stream.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// May carry `user:password@` or `token@` (then `auth` must be `None`); only ever shown
    /// redacted.
    pub url: String,
    /// How the relay authenticates to NATS besides the URL.
    pub auth: NatsAuth,
    pub tls: NatsTls,
    pub stream: StreamSettings,
    /// Consumers publish acknowledgements to `<ack_subject_prefix>.<consumer id>`. Outside the
    /// delivery stream's subjects, so acks are never stored as deliveries.
    pub ack_subject_prefix: String,
    /// The work-queue stream that holds acknowledgements until they are recorded.
    pub ack_stream: String,
    /// The durable JetStream consumer the relay reads acknowledgements with.
    pub ack_durable: String,
    /// Most publishes awaiting their PubAck at once (per consumer).
    pub max_in_flight: usize,
    /// How long a publish waits for its PubAck before it counts as failed (and is retried).
    pub publish_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            auth: NatsAuth::None,
            tls: NatsTls::default(),
            stream: StreamSettings::default(),
            ack_subject_prefix: "idledger.acks.v1".to_owned(),
            ack_stream: "IDLEDGER_ACKS".to_owned(),
            ack_durable: "idledger-ack-intake".to_owned(),
            max_in_flight: 512,
            publish_timeout: Duration::from_secs(5),
        }
    }
}

/// The relay's credentials for NATS. Secrets are held in memory only as long as the
/// configuration lives, and never shown by `Debug`.
#[derive(Clone, Default)]
pub enum NatsAuth {
    /// None, or what the URL carries.
    #[default]
    None,
    UserPassword {
        user: String,
        password: Zeroizing<String>,
    },
    Token(Zeroizing<String>),
    /// An nkey seed (`SU…`): NATS challenges, the relay signs.
    NKey(Zeroizing<String>),
    /// The contents of a `.creds` file: a user JWT and its nkey seed (decentralised auth).
    Credentials(Zeroizing<String>),
}

impl fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::UserPassword { .. } => "UserPassword(…)",
            Self::Token(_) => "Token(…)",
            Self::NKey(_) => "NKey(…)",
            Self::Credentials(_) => "Credentials(…)",
        })
    }
}

/// TLS to NATS (a `tls://` URL, or a server that requires it, turns it on too).
#[derive(Debug, Clone, Default)]
pub struct NatsTls {
    /// PEM file of the CA(s) the server's certificate must chain to, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate and key files the relay presents (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Refuse to talk to NATS without TLS.
    pub required: bool,
}

/// The delivery stream. Created if missing and updated to these settings if it differs.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    /// Messages are published on `<subject_prefix>.<consumer>.<customer>.<field path>`; the
    /// stream captures `<subject_prefix>.>`.
    pub subject_prefix: String,
    pub retention: Retention,
    /// How long messages are kept; `None` = until other limits apply.
    pub max_age: Option<Duration>,
    pub replicas: usize,
    /// How long JetStream remembers `Nats-Msg-Id`s to drop re-publishes.
    pub duplicate_window: Duration,
    /// File (durable) or memory storage.
    pub file_storage: bool,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            name: "IDLEDGER".to_owned(),
            subject_prefix: "idledger.v1".to_owned(),
            retention: Retention::Limits,
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            file_storage: true,
        }
    }
}

/// JetStream retention policy of the delivery stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Kept until age/size limits: consumers can replay.
    Limits,
    /// Kept while some JetStream consumer has not acknowledged it.
    Interest,
    /// Removed once one JetStream consumer acknowledged it.
    WorkQueue,
}

/// How webhooks are sent and retried.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Per request, connection included.
    pub timeout: Duration,
    /// Between attempts after a 5xx, 408, 429 or a connection failure; retried until the
    /// endpoint answers.
    pub backoff: Backoff,
    /// The longest `Retry-After` honoured.
    pub max_retry_after: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            backoff: Backoff {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(300),
            },
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// Exponential back-off with jitter: attempt n waits a random time in `[d/2, d]` with
/// `d = min(initial * 2^n, max)`, so that many retrying senders do not stay in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt` (0-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        use rand::Rng;
        let factor = 2u32.saturating_pow(attempt.min(20));
        let full = self.initial.saturating_mul(factor).min(self.max);
        let half = full / 2;
        let spread = u64::try_from(full.saturating_sub(half).as_millis()).unwrap_or(u64::MAX);
        let jitter = rand::thread_rng().gen_range(0..=spread);
        half + Duration::from_millis(jitter)
    }
}
