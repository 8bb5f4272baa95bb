//! Token administration: what the CLI's `idledger token …` and the API's `/v1/tokens` share,
//! so both check a new token the same way. Secrets are returned once, at creation and
//! rotation, and never listed; the store keeps only their hashes.

use chrono::{DateTime, Duration, Utc};
use idledger_domain::command::Principal;
use idledger_domain::delivery::ConsumerId;
use idledger_domain::ids::SourceId;
use idledger_domain::policy::RESERVED_SOURCES;
use idledger_store::tokens::MAX_LABEL_CHARS;
use idledger_store::{IssuedToken, Role, Scope, StoreError, TokenRecord, Tokens};
use uuid::Uuid;

/// The longest a token may be made to last, or a rotation's overlap: 10 years.
pub const MAX_TOKEN_DAYS: i64 = 3650;

/// A token to create, as an edge parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    pub role: Role,
    /// The source id (role `source`) or consumer id (role `consumer`) it speaks for; none
    /// for the other roles.
    pub subject: Option<String>,
    /// A note for people; by default the role and the subject.
    pub label: Option<String>,
    /// It stops working this long after it is created (`None`: never).
    pub expires_in: Option<Duration>,
    /// The operation groups it is limited to (`None`: all its role allows).
    pub scopes: Option<Vec<Scope>>,
}

/// Why a token was not created, rotated or revoked.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is not a valid token (`parameter` names what is wrong).
    #[error("{message}")]
    Invalid {
        parameter: &'static str,
        message: String,
    },
    #[error("there is no token {0}")]
    Unknown(Uuid),
    /// Rotation needs a live token: revoked or expired ones are left as they are.
    #[error("token {0} no longer works (revoked or expired): there is nothing to rotate")]
    NotLive(Uuid),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(parameter: &'static str, message: impl Into<String>) -> TokenError {
    TokenError::Invalid {
        parameter,
        message: message.into(),
    }
}

/// A revocation's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    pub record: TokenRecord,
    /// False if it was revoked before (nothing changed).
    pub now: bool,
}

/// Creates, lists, rotates and revokes tokens. Needs no master key: tokens are not personal
/// data.
#[derive(Debug, Clone)]
pub struct TokenAdmin {
    tokens: Tokens,
}

impl TokenAdmin {
    pub fn new(tokens: Tokens) -> Self {
        Self { tokens }
    }

    /// Creates a token at `now` after checking it: a source token names a source id that is
    /// not reserved, a consumer token a consumer id, the others nothing; a steward's label is
    /// a valid actor id (their events record it); an expiry within 10 years; at least one
    /// scope if scopes are given.
    pub async fn create(
        &self,
        new: &NewToken,
        now: DateTime<Utc>,
    ) -> Result<IssuedToken, TokenError> {
        let subject = subject(new.role, new.subject.as_deref())?;
        let label = match &new.label {
            Some(label) if label.trim().is_empty() => {
                return Err(invalid("label", "the label is blank"));
            }
            Some(label) => label.trim().to_owned(),
            None => match &subject {
                Some(s) => format!("{} {s}", new.role),
                None => new.role.to_string(),
            },
        };
        if label.chars().count() > MAX_LABEL_CHARS {
            return Err(invalid(
                "label",
                format!("the label is longer than {MAX_LABEL_CHARS} characters"),
            ));
        }
        if new.role == Role::Steward
            && let Err(e) = Principal::steward(&label)
        {
            return Err(invalid(
                "label",
                format!(
                    "a steward's label is recorded as their actor id, and this one is not valid: {e}"
                ),
            ));
        }
        let expires_at = match new.expires_in {
            None => None,
            Some(d) if d <= Duration::zero() || d > Duration::days(MAX_TOKEN_DAYS) => {
                return Err(invalid(
                    "expires_in",
                    "a token expires after a positive time of at most 10 years",
                ));
            }
            Some(d) => Some(now + d),
        };
        if new.scopes.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid(
                "scopes",
                "a token limited to no scope could do nothing; give at least one, or leave scopes out",
            ));
        }
        Ok(self
            .tokens
            .create_scoped(
                new.role,
                subject.as_deref(),
                &label,
                expires_at,
                new.scopes.as_deref(),
            )
            .await?)
    }

    /// Every token, oldest first, revoked and expired ones included. Never a secret.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, TokenError> {
        Ok(self.tokens.list().await?)
    }

    pub async fn get(&self, id: Uuid) -> Result<TokenRecord, TokenError> {
        self.tokens.get(id).await?.ok_or(TokenError::Unknown(id))
    }

    /// A new token for the same role, system, label, expiry and scopes; the old one works
    /// for `overlap` more (or until its own expiry, if sooner).
    pub async fn rotate(&self, id: Uuid, overlap: Duration) -> Result<IssuedToken, TokenError> {
        if overlap < Duration::zero() || overlap > Duration::days(MAX_TOKEN_DAYS) {
            return Err(invalid(
                "overlap",
                "the overlap is at least 0 and at most 10 years",
            ));
        }
        match self.tokens.rotate(id, overlap).await? {
            Some(issued) => Ok(issued),
            None if self.tokens.get(id).await?.is_some() => Err(TokenError::NotLive(id)),
            None => Err(TokenError::Unknown(id)),
        }
    }

    /// Revokes a token (it stops working at once, and its steward sessions end).
    pub async fn revoke(&self, id: Uuid) -> Result<Revoked, TokenError> {
        let now = self.tokens.revoke(id).await?;
        let record = self.get(id).await?;
        Ok(Revoked { record, now })
    }
}

/// The system a token of `role` speaks for, checked.
fn subject(role: Role, subject: Option<&str>) -> Result<Option<String>, TokenError> {
    match (role, subject) {
        (Role::Source, Some(raw)) => {
            let id = SourceId::parse(raw).map_err(|e| invalid("subject", e.to_string()))?;
            if RESERVED_SOURCES.contains(&id.as_str()) {
                return Err(invalid(
                    "subject",
                    format!(
                        "'{id}' is a source id reserved for idledger itself (stewards, administrators, retention); use the steward or admin role instead"
                    ),
                ));
            }
            Ok(Some(id.as_str().to_owned()))
        }
        (Role::Consumer, Some(raw)) => ConsumerId::parse(raw)
            .map(|id| Some(id.to_string()))
            .map_err(|e| invalid("subject", e.to_string())),
        (Role::Processor, Some(raw)) => idledger_store::decisions::ProcessorId::parse(raw)
            .map(|id| Some(id.to_string()))
            .map_err(|e| invalid("subject", e.to_string())),
        (Role::Source | Role::Consumer | Role::Processor, None) => Err(invalid(
            "subject",
            format!("a {role} token names the {role} it speaks for"),
        )),
        (_, None) => Ok(None),
        (_, Some(_)) => Err(invalid(
            "subject",
            format!("{role} tokens are not bound to a system; give no subject"),
        )),
    }
}
