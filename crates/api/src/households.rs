//! Households over HTTP: `POST /v1/households` creates one around its first member,
//! `PUT` / `DELETE /v1/households/{id}/members/{customer_id}` join (or change a role) and
//! leave, `GET /v1/households/{id}` lists the members. Each change is a command of the
//! member's own record (its `household` field): the same idempotency, `If-Match`,
//! provenance, authority policy and refusals as `POST /v1/customers/{id}/commands`.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use idledger_app::{Household, MembershipCommand, MembershipError, ReadError};
use idledger_domain::command::ProvenanceInput;
use idledger_domain::household::HouseholdRole;
use idledger_domain::ids::{CustomerId, HouseholdId};
use idledger_store::Executed;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;

use crate::AppState;
use crate::auth::{Authorized, Caller, Readers, Writers};
use crate::error::{ApiError, Problem};
use crate::extract::{JsonBody, PathParams, idempotency_key, if_match, truncate};
use crate::routes::{customer_param, etag, proposed, record_refusal};
use crate::views::CommandResponse;

/// `POST /v1/households`: a new household and its first member.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateHouseholdRequest {
    /// The first member (a UUIDv7).
    pub customer_id: uuid::Uuid,
    /// `member`, `head` or `guardian`; default `head`.
    #[serde(default)]
    pub role: Option<String>,
    #[schema(value_type = crate::wire::ProvenanceDoc)]
    pub provenance: ProvenanceInput,
}

/// `PUT /v1/households/{id}/members/{customer_id}`: join, or change one's role.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipRequest {
    /// `member`, `head` or `guardian`; default `member`.
    #[serde(default)]
    pub role: Option<String>,
    #[schema(value_type = crate::wire::ProvenanceDoc)]
    pub provenance: ProvenanceInput,
}

/// `DELETE /v1/households/{id}/members/{customer_id}`: leave. Who asked, like every command.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    #[schema(value_type = crate::wire::ProvenanceDoc)]
    pub provenance: ProvenanceInput,
}

/// A household: its members in id order, as the reader may see them.
#[derive(Debug, Serialize, ToSchema)]
pub struct HouseholdView {
    #[schema(value_type = uuid::Uuid)]
    pub household_id: HouseholdId,
    pub members: Vec<HouseholdMemberView>,
    /// More members than the 100 listed.
    pub truncated: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HouseholdMemberView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    /// `member`, `head` or `guardian`.
    #[schema(value_type = String)]
    pub role: HouseholdRole,
}

impl From<Household> for HouseholdView {
    fn from(h: Household) -> Self {
        Self {
            household_id: h.household_id,
            members: h
                .members
                .into_iter()
                .map(|m| HouseholdMemberView {
                    customer_id: m.customer_id,
                    role: m.role,
                })
                .collect(),
            truncated: h.truncated,
        }
    }
}

/// What a membership change did: the household as it stands after it (empty once its last
/// member left), and the member's command result (its `ETag` is the member's record's).
#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipView {
    #[schema(value_type = uuid::Uuid)]
    pub household_id: HouseholdId,
    pub members: Vec<HouseholdMemberView>,
    pub truncated: bool,
    /// The command recorded on the member's record.
    pub command: CommandResponse,
}

impl From<MembershipError> for ApiError {
    fn from(e: MembershipError) -> Self {
        match e {
            MembershipError::UnknownHousehold(household) => {
                ApiError::not_found("unknown_household", e.to_string())
                    .with("household_id", household)
            }
            MembershipError::Execute(e) => e.into(),
        }
    }
}

/// The answers every membership change gives as the commands route does; each route lists
/// its own beside them.
struct MembershipAnswers;

impl utoipa::IntoResponses for MembershipAnswers {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        [
            ("400", "missing_idempotency_key, invalid_if_match"),
            (
                "403",
                "not_authoritative (with the proposal when the writer proposes), actor_not_allowed, forbidden",
            ),
            ("410", "erased"),
            ("412", "version_conflict (If-Match)"),
            ("503", "contention: retry"),
        ]
        .into_iter()
        .map(|(code, description)| (code.to_owned(), crate::openapi::problem(description).into()))
        .collect()
    }
}

fn household_param(params: &HashMap<String, String>) -> Result<HouseholdId, ApiError> {
    let raw = params
        .get("household_id")
        .map(String::as_str)
        .unwrap_or_default();
    HouseholdId::parse(raw).map_err(|_| {
        ApiError::not_found(
            "invalid_household_id",
            format!("'{}' is not a household id (a UUID)", truncate(raw, 64)),
        )
    })
}

fn role(raw: Option<&str>, default: HouseholdRole) -> Result<HouseholdRole, ApiError> {
    raw.map_or(Ok(default), |r| {
        HouseholdRole::parse(r).map_err(|_| {
            ApiError::unprocessable(
                "invalid_value",
                "role must be one of member, head, guardian",
            )
            .with("field", "role")
        })
    })
}

fn membership(
    customer: CustomerId,
    headers: &HeaderMap,
    provenance: ProvenanceInput,
) -> Result<MembershipCommand, ApiError> {
    Ok(MembershipCommand {
        customer_id: customer,
        idempotency_key: idempotency_key(headers)?,
        provenance,
        expected_stream_version: if_match(headers)?,
    })
}

/// Create a household with its first member (roles `source`, `steward`): a new household id
/// is set as the customer's `household` field (`{"id", "role"}`) through the command path,
/// under the field's authority policy. A writer that may only propose the field gets 403
/// `not_authoritative` with the proposal recorded, as on the commands route.
#[utoipa::path(
    post, path = "/v1/households", tag = "commands",
    params(
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Unique per intended command; a retry with the same key returns the first result, with the same household id"),
        ("If-Match" = Option<String>, Header, description = "The member's record's ETag; refused with 412 if it changed since"),
    ),
    request_body = CreateHouseholdRequest,
    responses(
        MembershipAnswers,
        (status = 201, description = "Created (or the replayed first result)", body = MembershipView,
         headers(("Location" = String), ("ETag" = String))),
        (status = 404, description = "not_registered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "merged_into (the customer is merged into the record `merged_into` names: create the household there; no redirect, as the customer is in the body), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (customer_id, role)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Writers>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateHouseholdRequest>,
) -> Result<Response, ApiError> {
    let principal = caller.principal()?;
    let customer = CustomerId::try_from(body.customer_id).map_err(|e| {
        ApiError::unprocessable("invalid_value", e.to_string()).with("field", "customer_id")
    })?;
    let role = role(body.role.as_deref(), HouseholdRole::Head)?;
    let command = membership(customer, &headers, body.provenance)?;
    let (household, executed) = counted(
        state.app.create_household(&principal, role, command).await,
        |(_, executed)| executed,
    )?;
    answer(&state, &caller, household, executed, StatusCode::CREATED).await
}

/// Join a household, or change one's role in it (roles `source`, `steward`): the customer's
/// `household` field is set to `{"id": <household_id>, "role": …}` through the command path.
/// A customer is in one household at most: joining another moves them (the field's history
/// keeps where they were). The household must have a member already.
#[utoipa::path(
    put, path = "/v1/households/{household_id}/members/{customer_id}", tag = "commands",
    params(
        ("household_id" = uuid::Uuid, Path),
        ("customer_id" = uuid::Uuid, Path),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Unique per intended command; a retry with the same key returns the first result"),
        ("If-Match" = Option<String>, Header, description = "The member's record's ETag; refused with 412 if it changed since"),
    ),
    request_body = MembershipRequest,
    responses(
        MembershipAnswers,
        (status = 200, description = "Joined, role changed, or unchanged (or the replayed first result)", body = MembershipView, headers(("ETag" = String))),
        (status = 307, description = "merged_into: the customer's record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "unknown_household (nobody is in it), not_registered, invalid_household_id, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body, invalid_value (role)", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn join(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Writers>,
    PathParams(params): PathParams,
    headers: HeaderMap,
    JsonBody(body): JsonBody<MembershipRequest>,
) -> Result<Response, ApiError> {
    let household = household_param(&params)?;
    let customer = customer_param(&params)?;
    let principal = caller.principal()?;
    let role = role(body.role.as_deref(), HouseholdRole::Member)?;
    let command = membership(customer, &headers, body.provenance)?;
    let executed = counted(
        state
            .app
            .join_household(&principal, household, role, command)
            .await,
        |executed| executed,
    )?;
    answer(&state, &caller, household, executed, StatusCode::OK).await
}

/// Leave a household (roles `source`, `steward`): the customer's `household` field is
/// cleared, only if it names this household — decided on the record itself, so a
/// membership of another household is never cleared. The body says who asked.
#[utoipa::path(
    delete, path = "/v1/households/{household_id}/members/{customer_id}", tag = "commands",
    params(
        ("household_id" = uuid::Uuid, Path),
        ("customer_id" = uuid::Uuid, Path),
        ("Idempotency-Key" = String, Header, pattern = "^[!-~]{1,255}$", description = "Unique per intended command; a retry with the same key returns the first result"),
        ("If-Match" = Option<String>, Header, description = "The member's record's ETag; refused with 412 if it changed since"),
    ),
    request_body = LeaveRequest,
    responses(
        MembershipAnswers,
        (status = 200, description = "Left (or the replayed first result)", body = MembershipView, headers(("ETag" = String))),
        (status = 307, description = "merged_into: the customer's record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_registered, invalid_household_id, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "not_a_member (the customer is not in this household), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_body", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn leave(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Writers>,
    PathParams(params): PathParams,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LeaveRequest>,
) -> Result<Response, ApiError> {
    let household = household_param(&params)?;
    let customer = customer_param(&params)?;
    let principal = caller.principal()?;
    let command = membership(customer, &headers, body.provenance)?;
    let executed = counted(
        state
            .app
            .leave_household(&principal, household, command)
            .await,
        |executed| executed,
    )?;
    answer(&state, &caller, household, executed, StatusCode::OK).await
}

/// A household's members and their roles, in id order (roles `source`, `steward`,
/// `auditor`). Found through the blind index like any lookup: a source must be able to read
/// `household`, and each member it is shown is logged as a disclosure of that field. Erased
/// and merged records are in no household.
#[utoipa::path(
    get, path = "/v1/households/{household_id}", tag = "records",
    params(("household_id" = uuid::Uuid, Path)),
    responses(
        (status = 200, body = HouseholdView),
        (status = 403, description = "forbidden_role, not_readable (the source may not read household)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found (nobody is in it), invalid_household_id", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Readers>,
    PathParams(params): PathParams,
) -> Result<Json<HouseholdView>, ApiError> {
    let household = household_param(&params)?;
    let found = state.app.household(&caller.reader()?, household).await?;
    Ok(Json(found.into()))
}

/// Counts a membership command's answer as the commands route counts its own: applied,
/// replayed, or the refusal's code.
fn counted<T>(
    done: Result<T, MembershipError>,
    executed: impl Fn(&T) -> &Executed,
) -> Result<T, ApiError> {
    match done {
        Ok(done) => {
            crate::metrics::command(if executed(&done).replayed {
                "replayed"
            } else {
                "applied"
            });
            Ok(done)
        }
        Err(e) => Err(record_refusal(e.into())),
    }
}

/// The answer to a membership command: as the commands route answers a proposal, or the
/// household as the caller may now see it with the command's result.
async fn answer(
    state: &AppState,
    caller: &Caller,
    household: HouseholdId,
    executed: Executed,
    status: StatusCode,
) -> Result<Response, ApiError> {
    // The command's one change is the membership's write.
    if let Some(refused) = proposed(state, &executed, |_| true) {
        return Ok(refused);
    }
    let (members, truncated) = match state.app.household(&caller.reader()?, household).await {
        Ok(found) => {
            let view = HouseholdView::from(found);
            (view.members, view.truncated)
        }
        // Its last member left; or a writer that may not read the field (none does under
        // the shipped policy) is not shown who else is in it.
        Err(ReadError::NoHousehold(_) | ReadError::OutOfScope(_)) => (Vec::new(), false),
        Err(e) => return Err(e.into()),
    };
    let Executed {
        result, replayed, ..
    } = executed;
    let version = result.stream_version;
    let body = MembershipView {
        household_id: household,
        members,
        truncated,
        command: CommandResponse::new(result, replayed, |c| state.ledger.challenge_secret(c)),
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag(version));
    if status == StatusCode::CREATED
        && let Ok(location) = HeaderValue::from_str(&format!("/v1/households/{household}"))
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}
