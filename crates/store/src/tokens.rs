//! API tokens: bearer secrets bound to one principal (a role, and for sources and consumers
//! the system they speak for). Only each token's SHA-256 is stored; the secret is returned
//! once, when it is created.

use std::fmt;
use std::str::FromStr;

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
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Source,
        Role::Consumer,
        Role::Steward,
        Role::Auditor,
        Role::Admin,
        Role::Dsar,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Consumer => "consumer",
            Role::Steward => "steward",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
            Role::Dsar => "dsar",
        }
    }

    /// Sources and consumers are bound to the system they speak for; the others to no one.
    pub fn needs_subject(self) -> bool {
        matches!(self, Role::Source | Role::Consumer)
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
                    "unknown role '{s}'; the roles are source, consumer, steward, auditor, admin, dsar"
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
}

impl TokenRecord {
    /// Whether it authenticates at `now`: not revoked, not expired.
    pub fn live_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
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

/// Creates, checks, lists and revokes tokens.
#[derive(Debug, Clone)]
pub struct Tokens {
    db: Db,
}

/// Token times are stored as microseconds on both engines (`BIGINT` / `INTEGER`).
const TOKEN_COLUMNS: &str =
    "token_id, role, subject, label, created_at, revoked_at, expires_at, last_used_at";

impl Tokens {
    pub(crate) fn new(db: Db) -> Self {
        Self { db }
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
        let issued = issue(role, subject, label, expires_at)?;
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
        let new = issue(old.role, old.subject.as_deref(), &old.label, old.expires_at)?;
        // Both or neither: never a second live token nobody holds the secret of.
        let mut tx = self.db.begin().await?;
        insert(&new).execute(&mut tx).await?;
        sql("UPDATE api_tokens SET expires_at = CASE WHEN expires_at IS NULL OR expires_at > $1 THEN $1 ELSE expires_at END WHERE token_id = $2")
            .bind(micros(now + overlap))
            .bind(id)
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
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
        let mut q = sql("SELECT ");
        q.push(TOKEN_COLUMNS)
            .push(" FROM api_tokens WHERE token_hash = ")
            .push_bind(token_hash(secret));
        let record = q
            .fetch_optional(&self.db)
            .await?
            .as_ref()
            .map(token)
            .transpose()?;
        Ok(record.filter(|r| r.live_at(Utc::now())))
    }

    /// Every token, oldest first, revoked ones included.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut q = sql("SELECT ");
        q.push(TOKEN_COLUMNS)
            .push(" FROM api_tokens ORDER BY created_at, token_id");
        q.fetch_all(&self.db).await?.iter().map(token).collect()
    }

    /// Revokes a token; returns false if there is no such live token.
    pub async fn revoke(&self, id: Uuid) -> Result<bool, StoreError> {
        let done =
            sql("UPDATE api_tokens SET revoked_at = $1 WHERE token_id = $2 AND revoked_at IS NULL")
                .bind(micros(Utc::now()))
                .bind(id)
                .execute(&self.db)
                .await?;
        Ok(done == 1)
    }
}

/// A new token's secret and record, checked; not yet stored.
fn issue(
    role: Role,
    subject: Option<&str>,
    label: &str,
    expires_at: Option<DateTime<Utc>>,
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
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let record = TokenRecord {
        id: Uuid::now_v7(),
        role,
        subject: subject.map(str::to_owned),
        label: label.to_owned(),
        created_at: truncate_to_micros(Utc::now()),
        revoked_at: None,
        expires_at: expires_at.map(truncate_to_micros),
        last_used_at: None,
    };
    Ok(IssuedToken { record, secret })
}

fn insert(issued: &IssuedToken) -> Sql {
    let record = &issued.record;
    sql(
        "INSERT INTO api_tokens (token_id, token_hash, role, subject, label, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(record.id)
    .bind(token_hash(&issued.secret))
    .bind(record.role.as_str())
    .bind(record.subject.clone())
    .bind(record.label.clone())
    .bind(micros(record.created_at))
    .bind(record.expires_at.map(micros))
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
    })
}
