//! API tokens: bearer secrets bound to one principal (a role, and for sources and consumers
//! the system they speak for). Only each token's SHA-256 is stored; the secret is returned
//! once, when it is created.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{from_micros, micros, truncate_to_micros};
use crate::sql::{Db, Row, Sql, sql};
use crate::token_cache::TokenCache;

/// Every token starts with this, so leaked tokens are easy to find by secret scanners.
pub const TOKEN_PREFIX: &str = "idl_";
/// Longest label accepted for a token.
pub const MAX_LABEL_CHARS: usize = 200;

/// What a token's holder may do; the API enforces it per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A source system: sends commands; events record its id as their source.
    Source,
    /// A CRM/CDP integration: receives changes, reports what it applied.
    Consumer,
    /// A data steward: resolves proposals and sync exceptions.
    Steward,
    /// Reads history, records as of an instant, handoffs; writes nothing.
    Auditor,
    /// Operates the instance (erasure, consumers, tokens).
    Admin,
    /// Answers data subjects' access and portability requests: exports a customer's data.
    Dsar,
    /// A system that uses customers' data (a consumer, or one that only asks): asks whether
    /// it may, before each use.
    Processor,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Source,
        Role::Consumer,
        Role::Steward,
        Role::Auditor,
        Role::Admin,
        Role::Dsar,
        Role::Processor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Consumer => "consumer",
            Role::Steward => "steward",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Dsar => "dsar",
            Role::Processor => "processor",
        }
    }

    /// Sources, consumers and processors are bound to the system they speak for; the others
    /// to no one.
    pub fn needs_subject(self) -> bool {
        matches!(self, Role::Source | Role::Consumer | Role::Processor)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                StoreError::Config(format!(
                    "unknown role '{s}'; the roles are source, consumer, steward, auditor, admin, dsar, processor"
                ))
            })
    }
}

/// An operation group a token may be limited to (its scopes), within what its role allows:
/// a request needs the role *and* the scope. A token without scopes may do everything its
/// role allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Registering customers and sending commands.
    Commands,
    /// Reading records, history, disclosures, handoffs, consumer state, sync exceptions and
    /// reconciliation reports.
    Reads,
    /// The change feed.
    Feed,
    /// Acknowledgements.
    Acks,
    /// Starting reconciliation runs and uploading snapshots.
    Reconcile,
    /// Acting on sync exceptions (the API's actions and the steward page).
    Stewardship,
    /// Operating the instance: erasure, restriction, retention, consumers, tokens.
    Admin,
    /// Data subjects' exports.
    Export,
    /// Asking for decisions at the moment of use.
    Decisions,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::Commands,
        Scope::Reads,
        Scope::Feed,
        Scope::Acks,
        Scope::Reconcile,
        Scope::Stewardship,
        Scope::Admin,
        Scope::Export,
        Scope::Decisions,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Commands => "commands",
            Scope::Reads => "reads",
            Scope::Feed => "feed",
            Scope::Acks => "acks",
            Scope::Reconcile => "reconcile",
            Scope::Stewardship => "stewardship",
            Scope::Admin => "admin",
            Scope::Export => "export",
            Scope::Decisions => "decisions",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                StoreError::Config(format!(
                    "unknown scope '{s}'; the scopes are {}",
                    Scope::ALL.map(Scope::as_str).join(", ")
                ))
            })
    }
}

/// A token as stored: everything but the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: Uuid,
    pub role: Role,
    /// The source id (role `source`) or consumer id (role `consumer`) it is bound to.
    pub subject: Option<String>,
    pub label: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it stops working, if it expires.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used to authenticate, to the minute (`None`: never).
    #[serde(default)]
    pub last_used_at: Option<DateTime<Utc>>,
    /// The operation groups it is limited to, sorted (`None`: all its role allows).
    #[serde(default)]
    pub scopes: Option<Vec<Scope>>,
}

impl TokenRecord {
    /// Whether it authenticates at `now`: not revoked, not expired.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    /// Whether its scopes allow `scope` (a token without scopes allows every one; its role
    /// is checked separately).
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&scope))
    }

    /// Whether its last use should be recorded again (once a minute at most).
    pub fn use_is_stale(&self, now: DateTime<Utc>) -> bool {
        self.last_used_at
            .is_none_or(|at| now - at >= chrono::Duration::seconds(LAST_USED_RESOLUTION_SECS))
    }
}

/// How often a token's last use is written: often enough to tell an unused token, rarely
/// enough that authenticating stays a read.
pub const LAST_USED_RESOLUTION_SECS: i64 = 60;

/// A token just created: the only time its secret is known.
#[derive(Clone)]
pub struct IssuedToken {
    pub record: TokenRecord,
    pub secret: String,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("record", &self.record)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Creates, checks, lists and revokes tokens. Authenticating goes through the store's token
/// cache (see [`crate::token_cache`] for how late a revocation may take effect).
#[derive(Debug, Clone)]
pub struct Tokens {
    db: Db,
    cache: Arc<TokenCache>,
}

/// Token times are stored as microseconds on both engines (`BIGINT` / `INTEGER`).
const TOKEN_COLUMNS: &str =
    "token_id, role, subject, label, created_at, revoked_at, expires_at, last_used_at, scopes";

impl Tokens {
    pub(crate) fn new(db: Db, cache: Arc<TokenCache>) -> Self {
        Self { db, cache }
    }

    /// Creates a token. `subject` must be given for sources and consumers (and is checked by
    /// the caller to be a valid source or consumer id), and must not be given otherwise.
    pub async fn create(
        &self,
        role: Role,
        subject: Option<&str>,
        label: &str,
    ) -> Result<IssuedToken, StoreError> {
        self.create_expiring(role, subject, label, None).await
    }

    /// [`create`](Self::create), with an expiry (`None`: it never expires).
    pub async fn create_expiring(
        &self,
        role: Role,
        subject: Option<&str>,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<IssuedToken, StoreError> {
        self.create_scoped(role, subject, label, expires_at, None)
            .await
    }

    /// [`create_expiring`](Self::create_expiring), limited to `scopes` (`None`: all its role
    /// allows; an empty set is refused).
    pub async fn create_scoped(
        &self,
        role: Role,
        subject: Option<&str>,
        label: &str,
        expires_at: Option<DateTime<Utc>>,
        scopes: Option<&[Scope]>,
    ) -> Result<IssuedToken, StoreError> {
        let issued = issue(role, subject, label, expires_at, scopes)?;
        insert(&issued).execute(&self.db).await?;
        Ok(issued)
    }

    /// Replaces a live token with a new one for the same role, system and label; the old one
    /// keeps working for `overlap` (or until its own expiry, if sooner), so clients can switch
    /// without an outage. `None` if there is no such live token.
    pub async fn rotate(
        &self,
        id: Uuid,
        overlap: chrono::Duration,
    ) -> Result<Option<IssuedToken>, StoreError> {
        let now = Utc::now();
        let Some(old) = self.get(id).await?.filter(|t| t.live_at(now)) else {
            return Ok(None);
        };
        let new = issue(
            old.role,
            old.subject.as_deref(),
            &old.label,
            old.expires_at,
            old.scopes.as_deref(),
        )?;
        // Both or neither: never a second live token nobody holds the secret of.
        let mut tx = self.db.begin().await?;
        insert(&new).execute(&mut tx).await?;
        sql("UPDATE api_tokens SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END WHERE token_id = $2")
            .bind(micros(now + overlap))
            .bind(id)
            .execute(&mut tx)
            .await?;
        crate::token_cache::announce(&mut tx, &id.to_string()).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(Some(new))
    }

    /// One token by id, whatever its state.
    pub async fn get(&self, id: Uuid) -> Result<Option<TokenRecord>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(TOKEN_COLUMNS)
            .push(" FROM api_tokens WHERE token_id = ")
            .push_bind(id);
        q.fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(token)
            .transpose()
    }

    /// Whether authenticating may answer from the cache now (on PostgreSQL: the change
    /// listener is connected). For tests and diagnostics.
    pub fn cache_is_live(&self) -> bool {
        self.cache.is_usable()
    }

    /// Notes in the cache that a token was used at `at`, so that the requests after this one
    /// do not find its last use stale too; the caller then [`touch`](Self::touch)es it.
    pub fn note_use(&self, id: Uuid, at: DateTime<Utc>) {
        self.cache.note_use(id, at);
    }

    /// Records that a token was used at `at` (callers do it at most once a minute per token:
    /// see [`TokenRecord::use_is_stale`]).
    pub async fn touch(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        sql("UPDATE api_tokens SET last_used_at = $1 WHERE token_id = $2")
            .bind(micros(at))
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// The live token a bearer secret names; `None` if unknown, revoked or expired.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>, StoreError> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let hash = token_hash(secret);
        let now = Utc::now();
        if let Some(cached) = self.cache.get(&hash, now) {
            return Ok(Some(cached));
        }
        let epoch = self.cache.epoch();
        let mut q = sql("SELECT ");
        q.push(TOKEN_COLUMNS)
            .push(" FROM api_tokens WHERE token_hash = ")
            .push_bind(hash.clone());
        let record = q
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(token)
            .transpose()?
            .filter(|r| r.live_at(now));
        if let Some(record) = &record {
            self.cache.insert(hash, record, epoch);
        }
        Ok(record)
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(TOKEN_COLUMNS)
            .push(" FROM api_tokens ORDER BY created_at, token_id");
        q.fetch_all(&self.db).await?.iter().map(token).collect()
    }

    /// Revokes a token and ends its steward sessions; returns false if there is no such
    /// token, or it was already revoked.
    pub async fn revoke(&self, id: Uuid) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let done =
            sql("UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL")
                .bind(micros(Utc::now()))
                .bind(id)
                .execute(&mut tx)
                .await?;
        sql("DELETE FROM steward_sessions WHERE token_id = $1")
            .bind(id)
            .execute(&mut tx)
            .await?;
        crate::token_cache::announce(&mut tx, &id.to_string()).await?;
        tx.commit().await?;
        self.cache.clear();
        Ok(done == 1)
    }

    /// Opens a steward session for a live steward token at `now`: a new random session id
    /// (returned once; only its hash is stored) that ends after `limits.idle` without use, or
    /// `limits.absolute` after now, or when the token stops working. Sessions that have ended
    /// are deleted on the way.
    pub async fn open_session(
        &self,
        token: &TokenRecord,
        now: DateTime<Utc>,
        limits: SessionLimits,
    ) -> Result<OpenedSession, StoreError> {
        if token.role != Role::Steward || !token.live_at(now) {
            return Err(StoreError::Config(
                "only a live steward token opens a steward session".to_owned(),
            ));
        }
        let secret = format!("{SESSION_PREFIX}{}", random_secret());
        let now = truncate_to_micros(now);
        let expires_at = now + limits.absolute;
        let idle_expires_at = (now + limits.idle).min(expires_at);
        let mut tx = self.db.begin().await?;
        sql("DELETE FROM steward_sessions WHERE idle_expires_at <= $1 OR expires_at <= $1")
            .bind(micros(now))
            .execute(&mut tx)
            .await?;
        sql(
            "INSERT INTO steward_sessions (session_hash, token_id, created_at, idle_expires_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash(&secret))
        .bind(token.id)
        .bind(micros(now))
        .bind(micros(idle_expires_at))
        .bind(micros(expires_at))
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok(OpenedSession {
            secret,
            session: Session {
                token: token.clone(),
                created_at: now,
                idle_expires_at,
                expires_at,
            },
        })
    }

    /// The live steward session a session id names at `now`, its idle expiry moved on to
    /// `now + limits.idle` (never past its absolute expiry). `None` if unknown, ended (idle,
    /// absolute expiry, logged out) or its token no longer works; an ended session is deleted.
    pub async fn session(
        &self,
        secret: &str,
        now: DateTime<Utc>,
        limits: SessionLimits,
    ) -> Result<Option<Session>, StoreError> {
        if !secret.starts_with(SESSION_PREFIX) {
            return Ok(None);
        }
        let hash = token_hash(secret);
        let mut q = sql("SELECT ");
        let columns: Vec<String> = TOKEN_COLUMNS
            .split(", ")
            .map(|c| format!("t.{c}"))
            .collect();
        q.push(&columns.join(", "))
            .push(
                ", s.created_at AS session_created_at, s.idle_expires_at, \
                 s.expires_at AS session_expires_at \
                 FROM steward_sessions s JOIN api_tokens t ON t.token_id = s.token_id \
                 WHERE s.session_hash = ",
            )
            .push_bind(hash.clone());
        let Some(row) = q.fetch_optional(&self.db).await? else {
            return Ok(None);
        };
        let session = Session {
            token: token(&row)?,
            created_at: from_micros(row.try_get("session_created_at")?),
            idle_expires_at: from_micros(row.try_get("idle_expires_at")?),
            expires_at: from_micros(row.try_get("session_expires_at")?),
        };
        if !session.live_at(now) {
            sql("DELETE FROM steward_sessions WHERE session_hash = $1")
                .bind(hash)
                .execute(&self.db)
                .await?;
            return Ok(None);
        }
        let idle_expires_at = truncate_to_micros(now + limits.idle).min(session.expires_at);
        sql("UPDATE steward_sessions SET idle_expires_at = $1 WHERE session_hash = $2")
            .bind(micros(idle_expires_at))
            .bind(hash)
            .execute(&self.db)
            .await?;
        Ok(Some(Session {
            idle_expires_at,
            ..session
        }))
    }

    /// Ends a steward session (logout); false if there was no such session.
    pub async fn end_session(&self, secret: &str) -> Result<bool, StoreError> {
        let done = sql("DELETE FROM steward_sessions WHERE session_hash = $1")
            .bind(token_hash(secret))
            .execute(&self.db)
            .await?;
        Ok(done == 1)
    }
}

/// Every steward session id starts with this, never with [`TOKEN_PREFIX`]: a session id is
/// not a bearer token and is refused as one.
pub const SESSION_PREFIX: &str = "idls_";

/// How long a steward session lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// It ends after this long without a request.
    pub idle: chrono::Duration,
    /// It ends this long after login, however busy.
    pub absolute: chrono::Duration,
}

impl Default for SessionLimits {
    /// 30 minutes idle, 12 hours in all.
    fn default() -> Self {
        Self {
            idle: chrono::Duration::minutes(30),
            absolute: chrono::Duration::hours(12),
        }
    }
}

/// A live steward session: the token it is bound to (the steward acting) and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub token: TokenRecord,
    pub created_at: DateTime<Utc>,
    /// When it ends unless used again before.
    pub idle_expires_at: DateTime<Utc>,
    /// When it ends, used or not.
    pub expires_at: DateTime<Utc>,
}

impl Session {
    /// Whether it is live at `now`: neither expiry reached, and its token a live steward's.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        now < self.idle_expires_at
            && now < self.expires_at
            && self.token.role == Role::Steward
            && self.token.live_at(now)
    }
}

/// A session just opened: the only time its id (the cookie's value) is known.
#[derive(Clone)]
pub struct OpenedSession {
    pub secret: String,
    pub session: Session,
}

impl fmt::Debug for OpenedSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenedSession")
            .field("session", &self.session)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// 256 random bits, base64url.
fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A new token's secret and record, checked; not yet stored.
fn issue(
    role: Role,
    subject: Option<&str>,
    label: &str,
    expires_at: Option<DateTime<Utc>>,
    scopes: Option<&[Scope]>,
) -> Result<IssuedToken, StoreError> {
    match (role.needs_subject(), subject) {
        (true, None) => {
            return Err(StoreError::Config(format!(
                "{role} tokens must name the {role} they speak for"
            )));
        }
        (false, Some(_)) => {
            return Err(StoreError::Config(format!(
                "{role} tokens are not bound to a system; give no subject"
            )));
        }
        _ => {}
    }
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(StoreError::Config(format!(
            "the label is longer than {MAX_LABEL_CHARS} characters"
        )));
    }
    if scopes.is_some_and(<[Scope]>::is_empty) {
        return Err(StoreError::Config(
            "a token limited to no scope could do nothing; give at least one, or none at all"
                .to_owned(),
        ));
    }
    let scopes = scopes.map(|s| {
        let mut s = s.to_vec();
        s.sort_unstable();
        s.dedup();
        s
    });
    let secret = format!("{TOKEN_PREFIX}{}", random_secret());
    let record = TokenRecord {
        id: Uuid::now_v7(),
        role,
        subject: subject.map(str::to_owned),
        label: label.to_owned(),
        created_at: truncate_to_micros(Utc::now()),
        revoked_at: None,
        expires_at: expires_at.map(truncate_to_micros),
        last_used_at: None,
        scopes,
    };
    Ok(IssuedToken { record, secret })
}

fn insert(issued: &IssuedToken) -> Sql {
    let record = &issued.record;
    sql(
        "INSERT INTO api_tokens (token_id, token_hash, role, subject, label, created_at, expires_at, scopes) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(record.id)
    .bind(token_hash(&issued.secret))
    .bind(record.role.as_str())
    .bind(record.subject.clone())
    .bind(record.label.clone())
    .bind(micros(record.created_at))
    .bind(record.expires_at.map(micros))
    .bind(record.scopes.as_ref().map(|s| {
        serde_json::to_string(s).unwrap_or_else(|_| unreachable!("a list of names"))
    }))
}

/// The stored form of a secret. Tokens carry 256 random bits, so a fast hash is enough: there
/// is nothing to brute-force.
pub fn token_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

fn token(row: &Row) -> Result<TokenRecord, StoreError> {
    let id: Uuid = row.try_get("token_id")?;
    let role: String = row.try_get("role")?;
    Ok(TokenRecord {
        id,
        role: role
            .parse()
            .map_err(|_| StoreError::Integrity(format!("token {id} has unknown role '{role}'")))?,
        subject: row.try_get("subject")?,
        label: row.try_get("label")?,
        created_at: from_micros(row.try_get("created_at")?),
        revoked_at: row.try_get::<Option<i64>>("revoked_at")?.map(from_micros),
        expires_at: row.try_get::<Option<i64>>("expires_at")?.map(from_micros),
        last_used_at: row.try_get::<Option<i64>>("last_used_at")?.map(from_micros),
        scopes: row
            .try_get::<Option<String>>("scopes")?
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Integrity(format!("token {id} has unreadable scopes: {e}")))?,
    })
}
