//! A data subject's access and portability export over HTTP: `GET
//! /v1/customers/{id}/export[?format=json|csv]`, as one JSON document or a zip of CSV files.
//! The CLI's `idledger export` renders the same view.

use std::io::Write as _;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use idledger_app::SubjectExport;
use idledger_domain::ids::CustomerId;
use idledger_domain::policy::Policy;
use idledger_domain::scope::ReadScope;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Authorized, Exporters};
use crate::decisions::DecisionLogView;
use crate::error::{ApiError, Problem};
use crate::extract::{PathParams, QueryParams};
use crate::routes::customer_param;
use crate::views::{DisclosureView, EventView, ExceptionView, HandoffView, RecordView};

/// Everything idledger holds about one customer, and to whom it went.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportView {
    #[schema(value_type = uuid::Uuid)]
    pub customer_id: CustomerId,
    pub exported_at: DateTime<Utc>,
    /// The record now: every field and consent, with verification and pending changes.
    pub record: RecordView,
    /// Every event of the customer's stream with its provenance, oldest first: each field's
    /// history, consents granted and withdrawn, proposals, steward actions. A survivor's
    /// holds the events of the records merged into it too (`customer_id` names the stream).
    pub history: Vec<EventView>,
    /// Every message sent to a consumer: who received which fields, when, on which basis.
    pub handoffs: Vec<HandoffView>,
    /// Every read of the record by a source system, and every export (this one included).
    pub disclosures: Vec<DisclosureView>,
    /// Every question a processor asked about the customer's data, and the answer.
    pub decisions: Vec<DecisionLogView>,
    /// Every sync exception about the customer, open or closed.
    pub exceptions: Vec<ExceptionView>,
}

impl ExportView {
    pub fn new(export: SubjectExport, policy: &Policy) -> Self {
        let SubjectExport {
            customer_id,
            exported_at,
            state,
            events,
            handoffs,
            disclosures,
            decisions,
            exceptions,
        } = export;
        Self {
            customer_id,
            exported_at,
            record: RecordView::new(
                customer_id,
                &state,
                policy,
                exported_at,
                None,
                &ReadScope::Everything,
            ),
            history: events.into_iter().map(EventView::new).collect(),
            handoffs: handoffs.into_iter().map(HandoffView::from).collect(),
            disclosures: disclosures.into_iter().map(DisclosureView::from).collect(),
            decisions: decisions.into_iter().map(DecisionLogView::from).collect(),
            exceptions: exceptions.into_iter().map(ExceptionView::from).collect(),
        }
    }

    /// The CSV form: a zip with one file per part (`fields.csv`, `consents.csv`,
    /// `proposals.csv`, `history.csv`, `handoffs.csv`, `disclosures.csv`, `decisions.csv`,
    /// `exceptions.csv`)
    /// and the record's header in `customer.csv`. Each row is one item; nested members are
    /// JSON text in their cell.
    pub fn to_zip(&self) -> Result<Vec<u8>, ExportError> {
        let customer = serde_json::json!({
            "customer_id": self.customer_id,
            "exported_at": self.exported_at,
            "registered_at": self.record.registered_at,
            "stream_version": self.record.stream_version,
        });
        let parts: [(&str, Vec<Value>); 9] = [
            ("customer.csv", vec![customer]),
            ("fields.csv", values(&self.record.fields)?),
            ("consents.csv", values(&self.record.consents)?),
            ("proposals.csv", values(&self.record.proposals)?),
            ("history.csv", values(&self.history)?),
            ("handoffs.csv", values(&self.handoffs)?),
            ("disclosures.csv", values(&self.disclosures)?),
            ("decisions.csv", values(&self.decisions)?),
            ("exceptions.csv", values(&self.exceptions)?),
        ];
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, rows) in parts {
            zip.start_file(name, options)?;
            zip.write_all(&csv_of(&rows)?)?;
        }
        Ok(zip.finish()?.into_inner())
    }
}

/// Why an export could not be rendered (never the data's fault: a bug or I/O).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("could not render the export as CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error("could not render the export as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("could not write the export's zip: {0}")]
    Zip(#[from] zip::result::ZipError),
    #[error("could not write the export: {0}")]
    Io(#[from] std::io::Error),
}

fn values<T: Serialize>(items: &[T]) -> Result<Vec<Value>, serde_json::Error> {
    items.iter().map(serde_json::to_value).collect()
}

/// One CSV of JSON objects: a column per member (in the order of the first row that has it),
/// strings as they are, `null` as an empty cell, anything else as JSON text.
fn csv_of(rows: &[Value]) -> Result<Vec<u8>, ExportError> {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Value::Object(members) = row {
            for key in members.keys() {
                if !columns.contains(&key.as_str()) {
                    columns.push(key);
                }
            }
        }
    }
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(&columns)?;
    for row in rows {
        let cells = columns.iter().map(|c| match row.get(c) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        });
        out.write_record(cells)?;
    }
    out.into_inner()
        .map_err(|e| ExportError::Io(e.into_error()))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// One JSON document (`ExportView`).
    #[default]
    Json,
    /// A zip of CSV files, one per part.
    Csv,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `json` (default) or `csv` (a zip of CSV files).
    pub format: Option<ExportFormat>,
}

/// Everything about a customer for the data subject (access and portability): the record,
/// every event with provenance, every handoff, disclosure and sync exception (roles `admin`,
/// `dsar`) — a survivor's with those of every record merged into it, each item naming its
/// record. The export is itself logged as a disclosure to the subject (of each record).
#[utoipa::path(
    get, path = "/v1/customers/{customer_id}/export", tag = "records",
    params(("customer_id" = uuid::Uuid, Path), ExportQuery),
    responses(
        (status = 200, body = ExportView, description = "JSON, or with format=csv an application/zip of CSV files"),
        (status = 307, description = "merged_into: the record is merged into another; Location names the same request there", body = Problem, content_type = "application/problem+json"),
        (status = 400, description = "invalid_query", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "not_found, invalid_customer_id", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "erased", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn export(
    State(state): State<AppState>,
    Authorized(caller, ..): Authorized<Exporters>,
    PathParams(params): PathParams,
    QueryParams(query): QueryParams<ExportQuery>,
) -> Result<Response, ApiError> {
    let customer = customer_param(&params)?;
    let export = state.app.export(customer, Some(caller.token.id)).await?;
    let view = ExportView::new(export, state.ledger.policy());
    match query.format.unwrap_or_default() {
        ExportFormat::Json => Ok(Json(view).into_response()),
        ExportFormat::Csv => {
            let zip = view.to_zip().map_err(|e| ApiError::internal(&e))?;
            let name = format!("attachment; filename=\"idledger-export-{customer}.zip\"");
            Ok((
                [
                    (header::CONTENT_TYPE, "application/zip".to_owned()),
                    (header::CONTENT_DISPOSITION, name),
                ],
                zip,
            )
                .into_response())
        }
    }
}
