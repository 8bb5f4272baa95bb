//! Bearer-token authentication and per-route roles. The caller's principal — and so the
//! source recorded on every event — comes from the token, never from a request body.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use idledger_app::Reader;
use idledger_domain::command::Principal;
use idledger_domain::delivery::ConsumerId;
use idledger_domain::ids::SourceId;
use idledger_store::{Role, Scope, TokenRecord};

use crate::AppState;
use crate::error::ApiError;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token: TokenRecord,
}

impl Caller {
    /// Refuses the request (403) unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.token.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ApiError::forbidden(
            "forbidden_role",
            format!(
                "this route is for the role(s) {}; the token's role is {}",
                allowed.join(", "),
                self.token.role
            ),
        )
        .with("role", self.token.role)
        .with("allowed_roles", allowed))
    }

    /// Refuses (403 `forbidden_consumer`) a consumer token acting for another consumer than its
    /// own; every other role the route admits acts for any consumer.
    pub fn act_for(&self, consumer: &ConsumerId) -> Result<(), ApiError> {
        if self.token.role == Role::Consumer && self.subject() != Some(consumer.as_str()) {
            return Err(ApiError::forbidden(
                "forbidden_consumer",
                "a consumer token acts only for its own consumer",
            )
            .with("consumer_id", consumer));
        }
        Ok(())
    }

    /// Refuses the request (403 `out_of_scope`) unless the token's scopes allow `scope`.
    pub fn require_scope(&self, scope: Scope) -> Result<(), ApiError> {
        if self.token.allows(scope) {
            return Ok(());
        }
        let scopes: Vec<&str> = self
            .token
            .scopes
            .iter()
            .flatten()
            .map(|s| s.as_str())
            .collect();
        Err(ApiError::forbidden(
            "out_of_scope",
            format!(
                "this route needs the scope {scope}; the token is limited to {}",
                scopes.join(", ")
            ),
        )
        .with("scope", scope)
        .with("token_scopes", scopes))
    }

    /// The principal commands run as: a source system or a steward.
    pub fn principal(&self) -> Result<Principal, ApiError> {
        match (self.token.role, &self.token.subject) {
            (Role::Source, Some(subject)) => SourceId::parse(subject)
                .map(Principal::Source)
                .map_err(|e| ApiError::internal(&e)),
            (Role::Steward, _) => {
                Principal::steward(&self.token.label).map_err(|e| ApiError::internal(&e))
            }
            _ => Err(ApiError::forbidden(
                "forbidden_role",
                format!("a {} token cannot send commands", self.token.role),
            )),
        }
    }

    /// Who reads a record: a source system (scoped by the policy, its reads logged) or one of
    /// the people overseeing the record.
    pub fn reader(&self) -> Result<Reader, ApiError> {
        match (self.token.role, &self.token.subject) {
            (Role::Source, Some(subject)) => SourceId::parse(subject)
                .map(|source| Reader::Source {
                    source,
                    token_id: self.token.id,
                })
                .map_err(|e| ApiError::internal(&e)),
            (Role::Source | Role::Consumer | Role::Dsar | Role::Processor, _) => {
                Err(ApiError::forbidden(
                    "forbidden_role",
                    format!("a {} token cannot read records", self.token.role),
                ))
            }
            (Role::Steward | Role::Auditor | Role::Admin, _) => Ok(Reader::Overseer),
        }
    }

    /// The system the caller speaks for (sources and consumers), for logs and errors.
    pub fn subject(&self) -> Option<&str> {
        self.token.subject.as_deref()
    }
}

/// A request's bearer token, already looked up (by the per-token limits, which need to know
/// whose request it is): the caller, or `None` for an unknown, revoked or expired token.
#[derive(Debug, Clone)]
pub struct Authentication(pub Option<Caller>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let secret = bearer(&parts.headers)?;
        let caller = match parts.extensions.get::<Authentication>() {
            Some(Authentication(caller)) => caller.clone(),
            None => Caller::authenticate(state, secret).await?,
        };
        caller.ok_or_else(|| {
            ApiError::unauthenticated("invalid_token", "the token is unknown, revoked or expired")
        })
    }
}

impl Caller {
    /// Looks a bearer secret up: the caller, or `None` when no live token has it.
    pub async fn authenticate(state: &AppState, secret: &str) -> Result<Option<Self>, ApiError> {
        let Some(token) = state.tokens.authenticate(secret).await? else {
            return Ok(None);
        };
        let now = chrono::Utc::now();
        if token.use_is_stale(now) {
            state.tokens.note_use(token.id, now);
            // Off the request's path: the answer never waits for this write (on SQLite it
            // would queue behind the writer), and a failure only leaves it less fresh.
            let (tokens, id) = (state.tokens.clone(), token.id);
            tokio::spawn(async move {
                if let Err(e) = tokens.touch(id, now).await {
                    tracing::debug!(error = %e, "could not record a token's last use");
                }
            });
        }
        tracing::Span::current().record("role", token.role.as_str());
        if let Some(subject) = &token.subject {
            tracing::Span::current().record("subject", subject.as_str());
        }
        Ok(Some(Caller { token }))
    }
}

/// The bearer secret of a request.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthenticated(
            "unauthenticated",
            "this route needs a bearer token: Authorization: Bearer idl_…",
        ));
    };
    value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthenticated(
                "unauthenticated",
                "the Authorization header must be 'Bearer <token>'",
            )
        })
}

/// A set of roles a route admits, and the operation group (scope) the route belongs to.
pub trait Roles: Send + Sync + 'static {
    const ROLES: &'static [Role];
    /// The scope a token limited to scopes needs for the route; `None`: any token of the
    /// roles (`/v1/me`).
    const SCOPE: Option<Scope>;
}

/// The caller, once its role is checked against `R` and its scopes against `R::SCOPE` —
/// before the body is read, so a caller without them learns nothing from body validation.
/// This is the one place scopes are enforced on the API.
#[derive(Debug)]
pub struct Authorized<R: Roles>(pub Caller, pub PhantomData<R>);

impl<R: Roles> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(R::ROLES)?;
        if let Some(scope) = R::SCOPE {
            caller.require_scope(scope)?;
        }
        Ok(Self(caller, PhantomData))
    }
}

macro_rules! roles {
    ($($(#[$meta:meta])* $name:ident = [$($role:ident),+] in $scope:ident;)+) => {$(
        $(#[$meta])*
        #[derive(Debug)]
        pub struct $name;
        impl Roles for $name {
            const ROLES: &'static [Role] = &[$(Role::$role),+];
            const SCOPE: Option<Scope> = Some(Scope::$scope);
        }
    )+};
}

roles! {
    /// Registering customers.
    Sources = [Source] in Commands;
    /// Sending commands: sources, and stewards resolving proposals.
    Writers = [Source, Steward] in Commands;
    /// Reading the golden record and a field's history (what each may see: `ReadScope`).
    Readers = [Source, Steward, Auditor] in Reads;
    /// A data subject's access and portability export.
    Exporters = [Admin, Dsar] in Export;
    /// Operating the instance: erasure, restriction, retention, the consumer registry,
    /// tokens.
    Admins = [Admin] in Admin;
    /// Receiving deliveries: the change feed (the consumer id comes from the token).
    FeedReaders = [Consumer] in Feed;
    /// Acknowledging deliveries (the consumer id comes from the token).
    Ackers = [Consumer] in Acks;
    /// Reading delivery records: the handoff log and what consumers acknowledged.
    Auditors = [Steward, Auditor] in Reads;
    /// Reading sync exceptions and reconciliation reports.
    Overseers = [Steward, Auditor, Admin] in Reads;
    /// Reading the open proposals addressed to a system of record: a source its own,
    /// overseers any source's.
    ProposalReaders = [Source, Steward, Auditor, Admin] in Reads;
    /// Acting on sync exceptions.
    Stewards = [Steward] in Stewardship;
    /// Asking for decisions at the moment of use: processors, and consumers (which are
    /// processors too) — the processor is the token's.
    Askers = [Processor, Consumer] in Decisions;
    /// Starting reconciliation runs.
    Reconcilers = [Steward, Admin] in Reconcile;
    /// Uploading a consumer's snapshot: stewards and admins for any consumer, a consumer for
    /// itself.
    Uploaders = [Steward, Admin, Consumer] in Reconcile;
    /// Reading a consumer's value-hash key, which acks are computed with: admins for any
    /// consumer, a consumer for itself.
    KeyHolders = [Admin, Consumer] in Acks;
}

/// Any valid token, whatever its role and scopes (so a new role can never be left out).
#[derive(Debug)]
pub struct Anyone;

impl Roles for Anyone {
    const ROLES: &'static [Role] = &Role::ALL;
    const SCOPE: Option<Scope> = None;
}

/// The roles among `Readers` that read a record's past (`as_of`, history): those
/// `Caller::reader` makes overseers, not sources.
pub fn past_readers() -> Vec<&'static str> {
    Readers::ROLES
        .iter()
        .filter(|r| **r != Role::Source)
        .map(|r| r.as_str())
        .collect()
}
