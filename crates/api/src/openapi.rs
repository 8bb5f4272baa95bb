//! The OpenAPI 3.1 document, generated from the handlers' annotations and the request and
//! response types, served at `/v1/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{delivery, error, export, reconcile, routes, steward, views, wire};

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
        routes::history,
        routes::erase,
        delivery::register_consumer,
        delivery::list_consumers,
        delivery::get_consumer,
        delivery::disable_consumer,
        delivery::feed,
        delivery::ack,
        delivery::customer_handoffs,
        routes::customer_disclosures,
        routes::restrict,
        export::export,
        routes::source_disclosures,
        delivery::consumer_handoffs,
        delivery::consumer_state,
        reconcile::list_exceptions,
        reconcile::get_exception,
        reconcile::act_on_exception,
        reconcile::act_in_bulk,
        reconcile::start_reconciliation,
        reconcile::list_reconciliations,
        reconcile::get_reconciliation,
        reconcile::list_findings,
        reconcile::upload_snapshot,
        routes::me,
        routes::healthz,
        routes::readyz,
        routes::prometheus,
        routes::openapi,
    ),
    components(schemas(
        error::Problem,
        wire::RegisterRequest,
        wire::CommandRequest,
        wire::ChangeBody,
        wire::ProvenanceDoc,
        wire::NoticeDoc,
        wire::ErasureRequest,
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
        views::HistoryView,
        views::EventView,
        views::WhoAmI,
        views::ErasureView,
        views::ConsumerView,
        views::ConsumerListView,
        views::HandoffView,
        views::HandoffPageView,
        views::ConsumerStateView,
        views::FieldStateView,
        views::AckView,
        steward::ActionRequest,
        steward::ActionResult,
        views::ExceptionPageView,
        views::ExceptionView,
        views::RunView,
        views::FindingView,
        reconcile::BulkActionRequest,
        reconcile::BulkItem,
        reconcile::BulkResult,
        reconcile::ReconcileRequest,
        reconcile::RunPage,
        reconcile::FindingPage,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "commands", description = "Changes to customers' records"),
        (name = "records", description = "Golden records and history"),
        (name = "delivery", description = "Consumers, the change feed, acknowledgements, the handoff log"),
        (name = "stewardship", description = "Sync exceptions, steward actions, reconciliation runs and snapshot diffs"),
        (name = "meta", description = "Health, metrics, identity, this document"),
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

/// The API's OpenAPI document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
