//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types, served at `/v1/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    decisions, delivery, duplicates, error, export, households, jwks, merges, proposals, reconcile,
    retention, routes, steward, tokens, views, wire, workspace,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idledger",
        description = "Customer identity system of record: attribute-level commands checked against each field's authority policy, per-field golden records, full history with provenance; purpose-limited delivery to consumers (registry, change feed, acknowledgements, handoff log). Errors are application/problem+json with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    paths(
        routes::register,
        routes::command,
        routes::record,
        routes::find,
        routes::history,
        routes::erase,
        delivery::register_consumer,
        delivery::list_consumers,
        delivery::get_consumer,
        delivery::disable_consumer,
        delivery::hash_key,
        delivery::feed,
        delivery::ack,
        delivery::customer_handoffs,
        routes::customer_disclosures,
        routes::restrict,
        export::export,
        routes::source_disclosures,
        delivery::consumer_handoffs,
        delivery::consumer_state,
        proposals::list_proposals,
        reconcile::list_exceptions,
        reconcile::get_exception,
        reconcile::act_on_exception,
        reconcile::act_in_bulk,
        workspace::assign,
        merges::merge,
        merges::unmerge,
        households::create,
        households::join,
        households::leave,
        households::show,
        workspace::counts,
        workspace::list_approvals,
        workspace::get_approval,
        workspace::approve,
        workspace::reject,
        workspace::activity,
        reconcile::start_reconciliation,
        reconcile::list_reconciliations,
        reconcile::get_reconciliation,
        reconcile::list_findings,
        reconcile::upload_snapshot,
        retention::run_retention,
        duplicates::backfill,
        tokens::list_tokens,
        tokens::create_token,
        tokens::get_token,
        tokens::rotate_token,
        tokens::revoke_token,
        decisions::decide,
        decisions::decide_batch,
        decisions::list_decisions,
        decisions::register_processor,
        decisions::list_processors,
        decisions::get_processor,
        decisions::disable_processor,
        decisions::consent_receipt,
        routes::me,
        routes::healthz,
        routes::readyz,
        routes::prometheus,
        routes::openapi,
        jwks::jwks,
    ),
    components(schemas(
        error::Problem,
        wire::RegisterRequest,
        wire::CommandRequest,
        wire::ChangeBody,
        wire::ScopeBody,
        wire::ProvenanceDoc,
        wire::ActorDoc,
        wire::ActorKindDoc,
        wire::NoticeDoc,
        wire::ErasureRequest,
        retention::RetentionRequest,
        retention::RetentionReportView,
        duplicates::BackfillRequest,
        duplicates::BackfillReportView,
        wire::ConsumerRequest,
        wire::WebhookRequest,
        wire::AckDoc,
        views::CommandResponse,
        views::RestrictionView,
        wire::RestrictionRequest,
        views::DisclosurePageView,
        export::ExportView,
        export::ExportFormat,
        views::DisclosureView,
        views::RecordView,
        views::FieldView,
        views::PendingView,
        views::ConsentView,
        views::ProposalView,
        proposals::ProposalPageView,
        proposals::AddressedProposalView,
        views::HistoryView,
        views::EventView,
        views::WhoAmI,
        views::ErasureView,
        views::CustomerMatchesView,
        views::ConsumerView,
        views::HashKeyView,
        views::ConsumerListView,
        views::HandoffView,
        views::HandoffPageView,
        views::ConsumerStateView,
        views::FieldStateView,
        views::AckView,
        steward::ActionRequest,
        steward::ActionName,
        steward::ActionResult,
        views::ExceptionPageView,
        views::ExceptionView,
        views::RunView,
        views::FindingView,
        reconcile::BulkActionRequest,
        workspace::AssignmentRequest,
        merges::MergeRequest,
        merges::MergeView,
        views::MergeLinkView,
        households::CreateHouseholdRequest,
        households::MembershipRequest,
        households::LeaveRequest,
        households::HouseholdView,
        households::HouseholdMemberView,
        households::MembershipView,
        workspace::KindCountView,
        workspace::CountsView,
        workspace::ApprovalView,
        workspace::ApprovalPageView,
        workspace::ApprovalDecisionRequest,
        workspace::ActivityView,
        workspace::ActivityPageView,
        reconcile::BulkItem,
        reconcile::BulkResult,
        reconcile::ReconcileRequest,
        reconcile::RunPage,
        reconcile::FindingPage,
        tokens::TokenView,
        tokens::TokenListView,
        tokens::IssuedTokenView,
        tokens::TokenRequest,
        tokens::RotateRequest,
        decisions::DecisionRequest,
        decisions::BatchDecisionRequest,
        decisions::DecisionView,
        decisions::FieldAnswerView,
        decisions::BasisView,
        decisions::DecisionLogView,
        decisions::DecisionPageView,
        decisions::ProcessorRequest,
        decisions::ProcessorView,
        decisions::ReceiptView,
        jwks::JwksView,
        jwks::JwkView,
    )),
    modifiers(&BearerAuth, &CommonProblems),
    tags(
        (name = "commands", description = "Changes to customers' records"),
        (name = "records", description = "Golden records and history"),
        (name = "delivery", description = "Consumers, the change feed, acknowledgements, the handoff log"),
        (name = "stewardship", description = "Sync exceptions, steward actions, reconciliation runs and snapshot diffs"),
        (name = "tokens", description = "API tokens: create, list, rotate, revoke (admin)"),
        (name = "decisions", description = "Decisions at the moment of use: may a processor use fields of a customer for a purpose, now; the decision log; the processor registry"),
        (name = "meta", description = "Health, metrics, identity, this document, the token signing keys"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `idledger token create`; its role decides the routes it may use",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds the problem answers every route of a kind can give, where its annotation does not
/// list them: 408 on every route (its time bound), 401, 403 and 429 on authenticated routes (a
/// missing or revoked token, another role, the token's rate or requests in progress),
/// 400 on routes with query parameters (`invalid_query`), 400/413/415/422 on routes with a
/// body (`malformed_json`, `payload_too_large`, `unsupported_media_type`, `invalid_body`), and
/// 503 on every route that reads the store. Listing them by hand on each route is how they
/// went missing; a schema-driven client needs them all.
struct CommonProblems;

impl Modify for CommonProblems {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for op in operations.into_iter().flatten() {
                let secured = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let has_query = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let has_path = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Path));
                let has_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses
                        .entry(code.to_owned())
                        .or_insert_with(|| problem(description).into());
                };
                if secured {
                    add("401", "unauthenticated, invalid_token");
                    add("403", "forbidden_role, out_of_scope");
                    add(
                        "429",
                        "rate_limited, too_many_in_flight: the token's limits (retry after Retry-After)",
                    );
                }
                add(
                    "408",
                    "request_timeout: no answer within the server's bound",
                );
                if has_query {
                    add("400", "invalid_query");
                }
                if has_path {
                    add(
                        "400",
                        "invalid_id, invalid_path: a path segment that does not parse",
                    );
                }
                if has_body {
                    add("400", "malformed_json, unreadable_body");
                    add("413", "payload_too_large");
                    add("415", "unsupported_media_type");
                    add("422", "invalid_body");
                }
                if path.starts_with("/v1/") && path != "/v1/openapi.json" {
                    add(
                        "503",
                        "store_unavailable, contention (retry after Retry-After)",
                    );
                }
            }
        }
    }
}

/// A problem answer (`application/problem+json`, the `Problem` schema) described by the codes
/// it may carry.
pub(crate) fn problem(description: &str) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// The API's OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The operations whose query parameters read an empty value as absent (the steward page's
/// filter form sends every field, filled or not): their parameters say `allowEmptyValue`.
const EMPTY_MEANS_ABSENT: &[&str] = &[
    "/v1/exceptions",
    "/v1/reconciliations",
    "/v1/reconciliations/{run_id}/findings",
];

/// The document as served. utoipa has no `allowEmptyValue` (OpenAPI keeps it, deprecated, and
/// schema-driven clients read it), so it is added here for [`EMPTY_MEANS_ABSENT`].
pub fn document_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    for path in EMPTY_MEANS_ABSENT {
        let Some(get) = doc
            .pointer_mut(&format!(
                "/paths/{}/get/parameters",
                path.replace('/', "~1")
            ))
            .and_then(serde_json::Value::as_array_mut)
        else {
            continue;
        };
        for parameter in get.iter_mut().filter(|p| p["in"] == "query") {
            parameter["allowEmptyValue"] = serde_json::Value::Bool(true);
        }
    }
    doc
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    fn document() -> Value {
        super::document_json()
    }

    /// Every `allOf` in the document, with where it is.
    fn all_ofs<'a>(at: &str, value: &'a Value, found: &mut Vec<(String, &'a Vec<Value>)>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "allOf"
                        && let Value::Array(parts) = v
                    {
                        found.push((at.to_owned(), parts));
                    }
                    all_ofs(&format!("{at}/{k}"), v, found);
                }
            }
            Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    all_ofs(&format!("{at}/{i}"), v, found);
                }
            }
            _ => {}
        }
    }

    /// A part of an `allOf` that forbids members it does not list makes the whole schema
    /// unsatisfiable as soon as another part lists a member: a schema-driven client could not
    /// build a valid body.
    #[test]
    fn no_all_of_has_a_closed_part() {
        let doc = document();
        let mut found = Vec::new();
        all_ofs("", &doc, &mut found);
        for (at, parts) in found {
            for part in parts {
                assert_ne!(
                    part.get("additionalProperties"),
                    Some(&Value::Bool(false)),
                    "a closed object inside allOf at {at}"
                );
            }
        }
    }

    #[test]
    fn parameters_that_read_empty_as_absent_say_so_and_no_others() {
        let doc = document();
        let params = |path: &str| {
            doc["paths"][path]["get"]["parameters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let exceptions = params("/v1/exceptions");
        assert!(exceptions.len() >= 9, "{exceptions:?}");
        for p in exceptions {
            assert_eq!(p["allowEmptyValue"], true, "{p}");
        }
        let feed = params("/v1/feed");
        assert!(!feed.is_empty());
        for p in feed {
            assert!(p.get("allowEmptyValue").is_none(), "{p}");
        }
    }

    #[test]
    fn a_bulk_action_request_is_one_closed_object_with_every_member() {
        let doc = document();
        let schema = &doc["components"]["schemas"]["BulkActionRequest"];
        assert_eq!(schema["type"], "object", "{schema}");
        assert_eq!(schema["additionalProperties"], false, "{schema}");
        let mut members: Vec<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        members.sort_unstable();
        assert_eq!(members, ["action", "exception_ids", "reason", "value"]);
        assert_eq!(
            schema["required"],
            serde_json::json!(["exception_ids", "action"])
        );
        let action = &doc["components"]["schemas"]["ActionName"];
        assert_eq!(
            action["enum"],
            serde_json::json!(["repush", "accept", "dismiss", "route"])
        );
    }
}
