//! [`Store`]: the one handle on a database. Opening it applies pending migrations; each area
//! of the schema is reached through it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::delivery::Deliveries;
use crate::disclosures::Disclosures;
use crate::error::StoreError;
use crate::log::EventLog;
use crate::log_watch::LogWatch;
use crate::runs::Runs;
use crate::sql::{Db, Engine};
use crate::token_cache::{TokenCache, spawn_listener};
use crate::tokens::Tokens;

/// How long a PostgreSQL statement waits for a pooled connection before the store reports
/// itself unavailable.
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(800);

/// An open, migrated database. Cheap to clone (the pool and the token cache are shared).
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
    token_cache: Arc<TokenCache>,
    log_watch: Arc<LogWatch>,
}

impl Store {
    /// Opens the database a URL names: `postgres://…` or `sqlite://<path>` (or a bare file
    /// path, for SQLite), and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::postgres(url, 16).await;
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url);
        if path.is_empty() {
            return Err(StoreError::config("the SQLite URL names no file"));
        }
        Self::sqlite(Path::new(path)).await
    }

    /// Connects to PostgreSQL with a pool of at most `max_connections`, and migrates.
    ///
    /// The URL goes to sqlx whole, so libpq's TLS parameters apply: `sslmode` (`disable`,
    /// `prefer` (the default, or `PGSSLMODE`; but see [`pg_connect_options`] for a loopback
    /// host), `require`, `verify-ca`, `verify-full`),
    /// `sslrootcert`, and `sslcert`/`sslkey` for a client certificate.
    pub async fn postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let options = pg_connect_options(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            // While PostgreSQL is down a request waits this long for a connection before it
            // is answered 503: short, so callers learn it at once and retry elsewhere/later.
            .acquire_timeout(PG_ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(|e| first_connection_error(&options, e))?;
        Self::migrated(Db::Postgres(pool)).await
    }

    /// Opens (creating if missing) the SQLite file at `path`, and migrates.
    ///
    /// SQLite admits one writer at a time; WAL mode lets readers run alongside it and
    /// `synchronous = FULL` makes a commit durable before a command is acknowledged.
    pub async fn sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            // Deleted rows (an erased customer's projection and data key) are overwritten
            // rather than left readable in free pages.
            .pragma("secure_delete", "on")
            // A ledger's writer has the log checkpointed beside it (`ledger::checkpointer`),
            // so its commits need not: a commit checkpoints only once the log holds this many
            // pages (40 MiB), if that falls behind or no ledger writes (SQLite's default is
            // 1,000).
            .pragma("wal_autocheckpoint", "10000")
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Self::migrated(Db::Sqlite(pool)).await
    }

    async fn migrated(db: Db) -> Result<Self, StoreError> {
        crate::log::migrate(&db).await?;
        // PostgreSQL: usable once the change listener is connected (see `token_cache`).
        let token_cache = Arc::new(TokenCache::new(db.engine() == Engine::Sqlite));
        let log_watch = LogWatch::new(db.pg().cloned());
        Ok(Self {
            db,
            token_cache,
            log_watch,
        })
    }

    /// Which engine it runs on.
    pub fn engine(&self) -> Engine {
        self.db.engine()
    }

    /// The raw event log (see [`EventLog`]; commands go through [`crate::Ledger`]).
    pub fn log(&self) -> EventLog {
        EventLog::new(self.db.clone(), self.log_watch.clone())
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }

    /// Signed checkpoints and the public keys that sign them (signing is the ledger's).
    pub fn checkpoints(&self) -> crate::checkpoints::Checkpoints {
        crate::checkpoints::Checkpoints::new(self.db.clone())
    }

    /// The wrapped keys and the master key's rewrap.
    pub fn keys(&self) -> crate::keys::Keys {
        crate::keys::Keys::new(self.db.clone())
    }

    pub fn tokens(&self) -> Tokens {
        Tokens::new(self.db.clone(), self.token_cache())
    }

    /// The token cache, with its change listener started (PostgreSQL).
    fn token_cache(&self) -> Arc<TokenCache> {
        if let Some(pool) = self.db.pg()
            && tokio::runtime::Handle::try_current().is_ok()
            && !self.token_cache.listening.swap(true, Ordering::SeqCst)
        {
            spawn_listener(pool.clone(), Arc::downgrade(&self.token_cache));
        }
        self.token_cache.clone()
    }

    /// How long a token read from the database is trusted before it is read again: the most
    /// a revocation by another process takes to reach this one (default
    /// [`token_cache::DEFAULT_TTL`](crate::token_cache::DEFAULT_TTL); zero turns the cache
    /// off). Clears the cache.
    pub fn set_token_cache_ttl(&self, ttl: Duration) {
        self.token_cache.set_ttl(ttl);
    }

    /// The consumer registry, handoff log, consumer state and sync exceptions.
    pub fn deliveries(&self) -> Deliveries {
        Deliveries::new(self.db.clone(), self.token_cache())
    }

    /// The processor registry and the decision log.
    pub fn decisions(&self) -> crate::decisions::Decisions {
        crate::decisions::Decisions::new(self.db.clone(), self.token_cache())
    }

    /// The disclosure log: who read which fields of whom.
    pub fn disclosures(&self) -> Disclosures {
        Disclosures::new(self.db.clone())
    }

    /// Reconciliation runs, findings and staged snapshots.
    pub fn runs(&self) -> Runs {
        Runs::new(self.db.clone())
    }
}

/// The connection options a PostgreSQL URL names, as libpq reads them, but for one default:
/// a server on a loopback address (`localhost`, `127.0.0.0/8`, `::1`) or a Unix socket is
/// reached without TLS unless the URL's `sslmode` or `PGSSLMODE` asks for it. TLS there
/// protects nothing (whoever can read loopback traffic can read the process), and through
/// sqlx's rustls socket it costs most of the command throughput (docs/benchmarks.md, run 7).
/// Any other host keeps libpq's `prefer`.
pub fn pg_connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    connect_options(url, std::env::var_os("PGSSLMODE").is_some())
}

fn connect_options(url: &str, pgsslmode_set: bool) -> Result<PgConnectOptions, StoreError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|e| StoreError::Config(format!("bad PostgreSQL URL: {e}")))?;
    let asked = pgsslmode_set
        || url::Url::parse(url)
            .map(|u| {
                u.query_pairs()
                    .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
            })
            .unwrap_or(true);
    if asked || !is_local(options.get_host()) {
        return Ok(options);
    }
    Ok(options.ssl_mode(PgSslMode::Disable))
}

/// A loopback address or a Unix socket directory.
fn is_local(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why the first connection to PostgreSQL failed. A TLS failure there is the URL's `sslmode`
/// and the server disagreeing (or a certificate file missing): a configuration error, said
/// with the database it was for (never the password) and what the URL demanded. Other
/// failures keep their kind (an unreachable server stays "unavailable").
fn first_connection_error(options: &PgConnectOptions, e: sqlx::Error) -> StoreError {
    let mode = ssl_mode_name(options.get_ssl_mode());
    let uses_tls = !matches!(
        options.get_ssl_mode(),
        PgSslMode::Disable | PgSslMode::Allow
    );
    let target = format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("")
    );
    match e {
        // sqlx's own words for a server that answered "no" to TLS; the TLS test holds us to
        // them.
        sqlx::Error::Tls(reason) if reason.to_string().contains("does not support TLS") => {
            StoreError::Config(format!(
                "cannot connect to PostgreSQL {target}: TLS was required (sslmode={mode}) but \
                 the server does not offer it; enable ssl on the server, or lower sslmode"
            ))
        }
        sqlx::Error::Tls(reason) => handshake_failed(&target, mode, &reason.to_string()),
        // rustls's refusals (a certificate that does not verify) reach us as I/O errors.
        sqlx::Error::Io(io)
            if uses_tls
                && io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>()) =>
        {
            handshake_failed(&target, mode, &io.to_string())
        }
        // Reading sslrootcert, sslcert or sslkey: a network failure is never "not found".
        sqlx::Error::Io(io)
            if uses_tls
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
        {
            StoreError::Config(format!(
                "cannot connect to PostgreSQL {target} over TLS (sslmode={mode}): cannot read \
                 a certificate or key file the URL names (sslrootcert, sslcert, sslkey): {io}"
            ))
        }
        other => StoreError::Database(other),
    }
}

fn handshake_failed(target: &str, mode: &str, reason: &str) -> StoreError {
    StoreError::Config(format!(
        "cannot connect to PostgreSQL {target} over TLS (sslmode={mode}): the TLS handshake \
         failed: {reason}; with verify-ca or verify-full the server's certificate must be \
         signed by the CA in sslrootcert (or a public CA), and with verify-full it must name \
         the host"
    ))
}

/// The URL's spelling of an sslmode.
fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mode(url: &str, pgsslmode_set: bool) -> &'static str {
        ssl_mode_name(connect_options(url, pgsslmode_set).unwrap().get_ssl_mode())
    }

    /// What sqlx alone makes of the URL (libpq's rules, PGSSLMODE included).
    fn libpq(url: &str) -> &'static str {
        ssl_mode_name(url.parse::<PgConnectOptions>().unwrap().get_ssl_mode())
    }

    #[test]
    fn loopback_defaults_to_no_tls_and_an_asked_sslmode_always_wins() {
        for local in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@127.1.2.3/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]:5432/db",
        ] {
            assert_eq!(mode(local, false), "disable", "{local}");
            // PGSSLMODE set: libpq's reading of it stands.
            assert_eq!(mode(local, true), libpq(local), "{local}");
        }
        for remote in [
            "postgres://u@db.internal:5432/db",
            "postgres://u@10.0.0.7/db",
        ] {
            assert_eq!(mode(remote, false), libpq(remote), "{remote}");
            assert_ne!(libpq(&format!("{remote}?sslmode=prefer")), "disable");
        }
        assert_eq!(
            mode("postgres://u@127.0.0.1/db?sslmode=require", false),
            "require"
        );
        assert_eq!(
            mode("postgres://u@localhost/db?sslmode=prefer", false),
            "prefer"
        );
        assert_eq!(
            mode("postgres://u@10.0.0.7/db?ssl-mode=disable", false),
            "disable"
        );
        assert!(connect_options("postgres://u@[bad/db", false).is_err());
    }
}
