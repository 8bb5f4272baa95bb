//! Typed settings, resolved once from the command line, the environment and an optional
//! configuration file, and passed to each command. Precedence: command-line flag, then
//! `IDLEDGER__…` variable, then (for the database only) `DATABASE_URL`, then the file named by
//! `--config`, then the default.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use idledger_domain::policy::Policy;
use zeroize::Zeroizing;

use crate::cli::GlobalArgs;

/// The environment variable that may hold the master key itself (64 hex characters).
pub const MASTER_KEY_ENV: &str = "IDLEDGER__MASTER_KEY";
/// File name of the embedded database inside the data directory.
pub const DB_FILE: &str = "idledger.db";
/// File name of the generated master key inside the data directory.
pub const KEY_FILE: &str = "master.key";

/// The configuration file (`--config`, TOML). Every key is optional.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data_dir: Option<PathBuf>,
    /// May hold a password: keep the file private, or use DATABASE_URL.
    pub database_url: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub policy: Option<PathBuf>,
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub nats: NatsFile,
    #[serde(default)]
    pub relay: RelayFile,
    #[serde(default)]
    pub reconcile: ReconcileFile,
    #[serde(default)]
    pub retention: RetentionFile,
    #[serde(default)]
    pub checkpoints: CheckpointsFile,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointsFile {
    /// Seconds between signed checkpoints in `serve`; 0: none. [default: 600]
    pub interval_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionFile {
    /// Seconds between scheduled retention runs in `serve`; 0: none. [default: 86400]
    pub interval_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileFile {
    /// Seconds between scheduled reconciliation runs in `serve`; 0: none. [default: 3600]
    pub interval_secs: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsFile {
    pub url: Option<String>,
    /// JetStream stream name. [default: IDLEDGER]
    pub stream: Option<String>,
    /// Deliveries go to `<subject_prefix>.<consumer>.<customer>.<field>`. [default: idledger.v1]
    pub subject_prefix: Option<String>,
    /// Consumers acknowledge on `<ack_subject_prefix>.<consumer>`. [default: idledger.acks.v1]
    pub ack_subject_prefix: Option<String>,
    /// The work-queue stream that keeps acks while the relay is down. [default: IDLEDGER_ACKS]
    pub ack_stream: Option<String>,
    /// Stream replicas (3 in a cluster). [default: 1]
    pub replicas: Option<usize>,
    /// JetStream's duplicate-detection window, in seconds. [default: 120]
    pub duplicate_window_secs: Option<u64>,
    /// NATS user; the password comes from IDLEDGER__NATS__PASSWORD (never from this file).
    pub user: Option<String>,
    /// A file holding the relay's nkey seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and nkey seed).
    pub creds_file: Option<PathBuf>,
    /// PEM CA file the server's certificate must chain to.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate and key (mutual TLS): both or neither.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Refuse a NATS connection without TLS. [default: false]
    pub tls_required: Option<bool>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayFile {
    pub disabled: Option<bool>,
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<std::net::SocketAddr>,
    pub max_body_bytes: Option<usize>,
    pub max_concurrency: Option<usize>,
    pub shutdown_grace_secs: Option<u64>,
    /// Steward page sessions: seconds without a request, seconds at most. [default: 1800, 43200]
    pub session_idle_secs: Option<u64>,
    pub session_max_secs: Option<u64>,
    /// Mark the steward page's session cookie `Secure` (served over HTTPS). [default: false]
    pub secure_cookies: Option<bool>,
    pub max_upload_bytes: Option<u64>,
    pub header_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub long_request_timeout_secs: Option<u64>,
    pub token_rate: Option<u32>,
    pub token_burst: Option<u32>,
    pub token_max_in_flight: Option<u32>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the configuration file {}", path.display()))?;
        toml::from_str(&text).with_context(|| {
            format!(
                "the configuration file {} is not valid (see deploy/idledger.toml)",
                path.display()
            )
        })
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub database: Database,
    /// Where the database setting came from.
    pub database_from: DatabaseFrom,
    /// Whether the data directory was named (flag or `IDLEDGER__DATA_DIR`), not defaulted.
    pub data_dir_given: bool,
    pub master_key: KeySource,
    pub policy: PolicySource,
    /// The configuration file's `[server]` table (flags and variables override it in `serve`).
    pub server: ServerFile,
    pub nats: NatsFile,
    pub relay: RelayFile,
    pub reconcile: ReconcileFile,
    pub retention: RetentionFile,
    pub checkpoints: CheckpointsFile,
    /// NATS secrets from the environment (IDLEDGER__NATS__PASSWORD, IDLEDGER__NATS__TOKEN).
    pub nats_secrets: NatsSecrets,
}

/// Where [`Settings::database`] came from, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFrom {
    /// `--database` or `IDLEDGER__DATABASE_URL`: said to idledger itself.
    Flag,
    /// The generic `DATABASE_URL` variable (often set for other tools in the same shell).
    DatabaseUrl,
    /// The configuration file's `database_url`.
    File,
    /// The embedded store in the data directory.
    DataDir,
}

/// The environment variable holding the NATS password of `[nats] user`.
pub const NATS_PASSWORD_ENV: &str = "IDLEDGER__NATS__PASSWORD";
/// The environment variable holding a NATS token.
pub const NATS_TOKEN_ENV: &str = "IDLEDGER__NATS__TOKEN";

/// NATS secrets, taken from the environment only; never shown by `Debug`.
#[derive(Clone, Default)]
pub struct NatsSecrets {
    pub password: Option<Zeroizing<String>>,
    pub token: Option<Zeroizing<String>>,
}

impl fmt::Debug for NatsSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSecrets")
            .field("password", &self.password.as_ref().map(|_| "…"))
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

/// Which database to open.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Sqlite(PathBuf),
    /// The URL as given; it may carry a password, so it is only ever shown through `Display`,
    /// which redacts it.
    Postgres(String),
}

/// Where the master key comes from.
#[derive(Clone)]
pub enum KeySource {
    /// The key itself, from [`MASTER_KEY_ENV`].
    Env(Zeroizing<String>),
    /// A key file; `explicit` when named by a flag or the environment.
    File { path: PathBuf, explicit: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    Default,
    File(PathBuf),
}

impl Settings {
    /// Resolves the settings from parsed arguments (which already folded in the variables
    /// clap reads) and `env` for the variables it does not: `DATABASE_URL` and the key.
    pub fn resolve(
        args: &GlobalArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let file = match args.config.as_deref().filter(|p| !p.as_os_str().is_empty()) {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Self::resolve_with(args, file, env)
    }

    /// [`Settings::resolve`] with the configuration file already read.
    pub fn resolve_with(
        args: &GlobalArgs,
        file: ConfigFile,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        if data_dir.as_os_str().is_empty() {
            bail!("--data-dir (IDLEDGER__DATA_DIR) must not be empty");
        }
        let given = args
            .database
            .clone()
            .filter(|url| !url.trim().is_empty())
            .map(|url| (url, DatabaseFrom::Flag))
            .or_else(|| env("DATABASE_URL").map(|url| (url, DatabaseFrom::DatabaseUrl)))
            .or(file
                .database_url
                .filter(|url| !url.trim().is_empty())
                .map(|url| (url, DatabaseFrom::File)));
        let (database, database_from) = match &given {
            Some((url, from)) => (Database::parse(url)?, *from),
            None => (
                Database::Sqlite(data_dir.join(DB_FILE)),
                DatabaseFrom::DataDir,
            ),
        };
        let key_file = args
            .master_key_file
            .clone()
            .or(file.master_key_file)
            .filter(|p| !p.as_os_str().is_empty());
        let master_key = match (env(MASTER_KEY_ENV), key_file) {
            (Some(_), Some(path)) => bail!(
                "both {MASTER_KEY_ENV} and a master key file ({}) are set; keep one, so that \
                 it is clear which key protects the data",
                path.display()
            ),
            (Some(key), None) => KeySource::Env(Zeroizing::new(key)),
            (None, Some(path)) => KeySource::File {
                path,
                explicit: true,
            },
            (None, None) => KeySource::File {
                path: data_dir.join(KEY_FILE),
                explicit: false,
            },
        };
        let policy = match args
            .policy
            .clone()
            .or(file.policy)
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => PolicySource::File(path),
            None => PolicySource::Default,
        };
        Ok(Self {
            data_dir,
            database,
            database_from,
            data_dir_given: args.data_dir.is_some(),
            master_key,
            policy,
            server: file.server,
            nats: file.nats,
            relay: file.relay,
            reconcile: file.reconcile,
            retention: file.retention,
            checkpoints: file.checkpoints,
            nats_secrets: NatsSecrets {
                password: env(NATS_PASSWORD_ENV).map(Zeroizing::new),
                token: env(NATS_TOKEN_ENV).map(Zeroizing::new),
            },
        })
    }

    /// Whether a database was named at all (else the data directory's embedded store).
    pub fn database_given(&self) -> bool {
        self.database_from != DatabaseFrom::DataDir
    }

    /// What a user should know about how the settings were read: a data directory named
    /// while a database from elsewhere wins over its embedded store.
    pub fn notes(&self) -> Vec<String> {
        let from = match self.database_from {
            DatabaseFrom::DatabaseUrl => "DATABASE_URL",
            DatabaseFrom::File => "the configuration file's database_url",
            DatabaseFrom::Flag | DatabaseFrom::DataDir => return Vec::new(),
        };
        if !self.data_dir_given {
            return Vec::new();
        }
        vec![format!(
            "note: using the database from {from} ({}), not the embedded store in --data-dir {} \
             (which still holds the master key file, unless one is named); pass --database to \
             choose: --database sqlite://{}",
            self.database,
            self.data_dir.display(),
            self.data_dir.join(DB_FILE).display()
        )]
    }

    /// Loads the authority policy, naming the file when it does not parse.
    pub fn load_policy(&self) -> anyhow::Result<Policy> {
        match &self.policy {
            PolicySource::Default => {
                Policy::default_policy().context("the built-in default policy is invalid")
            }
            PolicySource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the policy file {}", path.display()))?;
                Policy::from_toml(&text).with_context(|| {
                    format!("the policy file {} is not a valid policy", path.display())
                })
            }
        }
    }

    /// Creates the data directory if it is missing.
    pub fn ensure_data_dir(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                self.data_dir.display()
            )
        })
    }
}

impl Database {
    /// Parses `postgres://…`, `postgresql://…`, `sqlite://<path>`, `sqlite:<path>` or a bare
    /// file path (SQLite).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                bail!("the database URL '{url}' names no SQLite file; use sqlite://<path>");
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some((scheme, _)) = url.split_once("://") {
            bail!(
                "unsupported database URL scheme '{scheme}': use postgres://… for PostgreSQL or sqlite://<path> for SQLite"
            );
        }
        Ok(Self::Sqlite(PathBuf::from(url)))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// The URL to hand to the store. Not for display: it may hold a password.
    pub fn url(&self) -> anyhow::Result<String> {
        match self {
            Self::Postgres(url) => Ok(url.clone()),
            Self::Sqlite(path) => match path.to_str() {
                Some(p) => Ok(format!("sqlite://{p}")),
                None => bail!("the SQLite path {} is not valid UTF-8", path.display()),
            },
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(path) => Some(path),
            Self::Postgres(_) => None,
        }
    }
}

/// Shows the URL with any password replaced by `***`.
impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Database({self})")
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(_) => write!(f, "KeySource::Env({MASTER_KEY_ENV})"),
            Self::File { path, explicit } => write!(
                f,
                "KeySource::File({}, explicit: {explicit})",
                path.display()
            ),
        }
    }
}

pub use idledger_store::redact_url;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn args(database: Option<&str>, key_file: Option<&str>) -> GlobalArgs {
        GlobalArgs {
            config: None,
            data_dir: Some(PathBuf::from("/var/lib/idledger")),
            database: database.map(str::to_owned),
            master_key_file: key_file.map(PathBuf::from),
            policy: None,
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// The annotated example names every key the server reads, so it must parse.
    #[test]
    fn the_example_configuration_file_is_valid() {
        let file: ConfigFile = toml::from_str(include_str!("../../../deploy/idledger.toml"))
            .expect("deploy/idledger.toml");
        let server = file.server;
        assert_eq!(server.header_timeout_secs, Some(10));
        assert_eq!(server.token_rate, Some(1000));
        assert_eq!(server.max_upload_bytes, Some(1 << 30));
    }

    #[test]
    fn database_precedence_is_flag_then_database_url_then_data_dir() {
        let s = Settings::resolve(&args(None, None), env(&[])).unwrap();
        assert_eq!(
            s.database,
            Database::Sqlite(PathBuf::from("/var/lib/idledger/idledger.db"))
        );
        assert!(!s.database_given());
        assert_eq!(s.database_from, DatabaseFrom::DataDir);
        let s = Settings::resolve(
            &args(None, None),
            env(&[("DATABASE_URL", "postgres://h/db")]),
        )
        .unwrap();
        assert_eq!(s.database, Database::Postgres("postgres://h/db".to_owned()));
        assert_eq!(s.database_from, DatabaseFrom::DatabaseUrl);
        // The data directory was named (the helper names one): the user is told which wins.
        let notes = s.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("DATABASE_URL"), "{notes:?}");
        assert!(notes[0].contains("--database sqlite:///var/lib/idledger/idledger.db"));
        let mut unnamed = args(None, None);
        unnamed.data_dir = None;
        let s = Settings::resolve(&unnamed, env(&[("DATABASE_URL", "postgres://h/db")])).unwrap();
        assert!(
            s.notes().is_empty(),
            "no data directory named: nothing to say"
        );
        let s = Settings::resolve(
            &args(Some("sqlite://x.db"), None),
            env(&[("DATABASE_URL", "postgres://h/db")]),
        )
        .unwrap();
        assert_eq!(s.database, Database::Sqlite(PathBuf::from("x.db")));
        assert_eq!(s.database_from, DatabaseFrom::Flag);
        assert!(s.notes().is_empty(), "the flag said it");
        let s = Settings::resolve(&args(None, None), env(&[("DATABASE_URL", "  ")])).unwrap();
        assert!(!s.database_given());
    }

    #[test]
    fn the_config_file_fills_in_what_flags_and_environment_leave_open() {
        let file: ConfigFile = toml::from_str(
            r#"
            data_dir = "/srv/idledger"
            database_url = "postgres://file/db"
            policy = "/etc/idledger/policy.toml"
            [server]
            listen = "0.0.0.0:9000"
            "#,
        )
        .unwrap();
        let mut bare = args(None, None);
        bare.data_dir = None;
        let s = Settings::resolve_with(&bare, file.clone(), env(&[])).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/srv/idledger"));
        assert_eq!(
            s.database,
            Database::Postgres("postgres://file/db".to_owned())
        );
        assert_eq!(
            s.policy,
            PolicySource::File(PathBuf::from("/etc/idledger/policy.toml"))
        );
        assert_eq!(s.server.listen, Some("0.0.0.0:9000".parse().unwrap()));
        let s = Settings::resolve_with(
            &args(Some("sqlite://flag.db"), None),
            file.clone(),
            env(&[]),
        )
        .unwrap();
        assert_eq!(s.database, Database::Sqlite(PathBuf::from("flag.db")));
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/idledger"), "flag wins");
        let s = Settings::resolve_with(&bare, file, env(&[("DATABASE_URL", "postgres://env/db")]))
            .unwrap();
        assert_eq!(
            s.database,
            Database::Postgres("postgres://env/db".to_owned())
        );
        assert!(
            toml::from_str::<ConfigFile>("databse_url = 'x'").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn master_key_comes_from_one_place() {
        let s = Settings::resolve(&args(None, None), env(&[])).unwrap();
        assert!(
            matches!(s.master_key, KeySource::File { explicit: false, ref path } if path.ends_with("master.key"))
        );
        let s = Settings::resolve(&args(None, Some("/k")), env(&[])).unwrap();
        assert!(matches!(
            s.master_key,
            KeySource::File { explicit: true, .. }
        ));
        let s = Settings::resolve(&args(None, None), env(&[(MASTER_KEY_ENV, "ab")])).unwrap();
        assert!(matches!(s.master_key, KeySource::Env(_)));
        assert_eq!(
            format!("{:?}", s.master_key),
            "KeySource::Env(IDLEDGER__MASTER_KEY)"
        );
        let err =
            Settings::resolve(&args(None, Some("/k")), env(&[(MASTER_KEY_ENV, "ab")])).unwrap_err();
        assert!(err.to_string().contains("keep one"), "{err}");
    }

    #[test]
    fn database_urls_parse_by_scheme() {
        assert_eq!(
            Database::parse("sqlite:///tmp/a.db").unwrap(),
            Database::Sqlite(PathBuf::from("/tmp/a.db"))
        );
        assert_eq!(
            Database::parse("sqlite:a.db").unwrap(),
            Database::Sqlite(PathBuf::from("a.db"))
        );
        assert_eq!(
            Database::parse("a.db").unwrap(),
            Database::Sqlite(PathBuf::from("a.db"))
        );
        assert!(Database::parse("postgresql://u@h/d").unwrap().is_postgres());
        assert!(Database::parse("sqlite://").is_err());
        assert!(
            Database::parse("mysql://h/d")
                .unwrap_err()
                .to_string()
                .contains("mysql")
        );
    }

    #[track_caller]
    fn check_redact(url: &str, expect: &str) {
        assert_eq!(redact_url(url), expect);
        assert!(
            !Database::Postgres(url.to_owned())
                .to_string()
                .contains("s3cret")
        );
    }

    #[test]
    fn passwords_never_show() {
        check_redact(
            "postgres://app:s3cret@db:5432/idledger",
            "postgres://app:***@db:5432/idledger",
        );
        check_redact("postgres://app:s3cret@db", "postgres://app:***@db");
        check_redact("postgres://app@db/x", "postgres://app@db/x");
        check_redact(
            "postgres://db/x?user=a&password=s3cret&sslmode=require",
            "postgres://db/x?user=a&password=***&sslmode=require",
        );
        check_redact("postgres://a:b:s3cret@db/x", "postgres://a:***@db/x");
        check_redact("postgres://a:s3cret@x@db/x", "postgres://a:***@db/x");
        check_redact("postgres://a:s3/cret@db/x", "postgres://a:***@db/x");
        check_redact("postgres://db/x?user=a@b", "postgres://db/x?user=a@b");
        // A NATS URL's lone userinfo is a token.
        check_redact("nats://s3cret@nats:4222", "nats://***@nats:4222");
        check_redact("tls://relay:s3cret@nats:4222", "tls://relay:***@nats:4222");
        check_redact("nats://nats:4222", "nats://nats:4222");
    }
}
