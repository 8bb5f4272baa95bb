//! Sync exceptions as stewards work them: the one parser of their filters, reading them, and
//! a steward's actions — each action's command and the exception's change in one transaction.

use chrono::{DateTime, Duration, Utc};
use idledger_domain::command::{Command, Principal, ProvenanceInput};
use idledger_domain::decide::Outcome;
use idledger_domain::event::StewardAction;
use idledger_domain::exception::{self, ExceptionCommand, ExceptionRefusal};
use idledger_domain::field::FieldPath;
use idledger_domain::ids::{Actor, ActorKind, CustomerId, IdempotencyKey};
use idledger_domain::values::ValueError;
use idledger_store::delivery::{
    ConsumerId, ExceptionFilter, ExceptionKind, ExceptionStatus, MAX_PAGE, SyncException,
};
use idledger_store::model::ExceptionWrite;
use idledger_store::{CommandResult, ExecuteError, StoreError};
use uuid::Uuid;

use crate::App;

/// Exceptions a page holds unless the query says otherwise.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most exceptions one bulk action covers.
pub const MAX_BULK: usize = 500;
/// The oldest `older_than` accepted: beyond that it would reach before the epoch.
const MAX_AGE: Duration = Duration::days(10 * 365);

/// Which exceptions to list, as every edge asks for them. Parsed from `name=value` pairs
/// (a query string, CLI flags) by [`ExceptionQuery::parse`]:
///
/// | name | value |
/// | --- | --- |
/// | `consumer` | a consumer's (or source system's) id |
/// | `customer` | a customer id |
/// | `kind` | an exception kind |
/// | `field` | a field path |
/// | `status` | `open` (the default), `resolved`, `dismissed` or `all` |
/// | `older_than` | an age: `45s`, `90m`, `4h`, `2d` (a bare number is minutes) |
/// | `older_than_secs` | the same in seconds |
/// | `after` | the paging cursor: the last exception id of the previous page |
/// | `limit` | 1 to 1000 (default 100) |
///
/// Empty values count as absent; unknown names are ignored (the page's form sends its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExceptionQuery {
    pub consumer: Option<ConsumerId>,
    pub customer: Option<CustomerId>,
    pub kind: Option<ExceptionKind>,
    pub field: Option<FieldPath>,
    /// `None`: every status.
    pub status: Option<ExceptionStatus>,
    pub older_than: Option<Duration>,
    pub after: Option<Uuid>,
    pub limit: u32,
}

impl Default for ExceptionQuery {
    fn default() -> Self {
        Self {
            consumer: None,
            customer: None,
            kind: None,
            field: None,
            status: Some(ExceptionStatus::Open),
            older_than: None,
            after: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// One thing wrong with a query: the parameter and why. The edges report it as
/// `invalid_query` naming the parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{parameter}: {message}")]
pub struct QueryError {
    pub parameter: &'static str,
    pub message: String,
}

impl QueryError {
    fn new(parameter: &'static str, message: impl std::fmt::Display) -> Self {
        Self {
            parameter,
            message: message.to_string(),
        }
    }
}

impl ExceptionQuery {
    /// Parses every parameter it knows; all that is wrong, in the order given.
    pub fn parse<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<QueryError>> {
        let mut query = Self::default();
        let mut errors = Vec::new();
        for (name, raw) in pairs {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            if let Err(e) = query.set(name, raw) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(query)
        } else {
            Err(errors)
        }
    }

    fn set(&mut self, name: &str, raw: &str) -> Result<(), QueryError> {
        match name {
            "consumer" => {
                self.consumer = Some(ConsumerId::parse(raw).map_err(|e| value("consumer", e))?);
            }
            "customer" => {
                let uuid = raw
                    .parse::<Uuid>()
                    .map_err(|_| QueryError::new("customer", "not a customer id (a UUID)"))?;
                self.customer =
                    Some(CustomerId::from_uuid(uuid).map_err(|e| value("customer", e))?);
            }
            "kind" => self.kind = Some(ExceptionKind::parse(raw).map_err(|e| value("kind", e))?),
            "field" => {
                self.field = Some(FieldPath::parse(raw).map_err(|e| QueryError::new("field", e))?);
            }
            "status" => {
                self.status = match raw {
                    "all" => None,
                    raw => Some(ExceptionStatus::parse(raw).map_err(|_| {
                        QueryError::new(
                            "status",
                            format!("{raw:?} is not one of: open, resolved, dismissed, all"),
                        )
                    })?),
                };
            }
            "older_than" => {
                self.older_than = Some(parse_age(raw).ok_or_else(|| {
                    QueryError::new(
                        "older_than",
                        format!("{raw:?} is not an age like 45s, 90m, 4h or 2d, up to 10 years"),
                    )
                })?);
            }
            "older_than_secs" => {
                self.older_than = Some(
                    raw.parse::<i64>()
                        .ok()
                        .and_then(Duration::try_seconds)
                        .filter(|age| *age >= Duration::zero() && *age <= MAX_AGE)
                        .ok_or_else(|| {
                            QueryError::new("older_than_secs", "must be 0 to 10 years in seconds")
                        })?,
                );
            }
            "after" => {
                self.after = Some(
                    raw.parse::<Uuid>()
                        .map_err(|_| QueryError::new("after", "not an exception id"))?,
                );
            }
            "limit" => {
                self.limit = raw
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_PAGE).contains(n))
                    .ok_or_else(|| QueryError::new("limit", "must be 1 to 1000"))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The store's filter, with ages measured from `now`.
    pub fn filter(&self, now: DateTime<Utc>) -> ExceptionFilter {
        ExceptionFilter {
            consumer: self.consumer.clone(),
            customer: self.customer,
            kind: self.kind,
            field: self.field.as_ref().map(ToString::to_string),
            status: self.status,
            created_before: self.older_than.and_then(|age| now.checked_sub_signed(age)),
            open_only: false,
            after: self.after,
        }
    }

    /// The query as `name=value` pairs, for a next page's link or a form filled again.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(c) = &self.consumer {
            out.push(("consumer", c.to_string()));
        }
        if let Some(c) = &self.customer {
            out.push(("customer", c.to_string()));
        }
        if let Some(k) = self.kind {
            out.push(("kind", k.to_string()));
        }
        if let Some(f) = &self.field {
            out.push(("field", f.to_string()));
        }
        out.push((
            "status",
            self.status
                .map_or("all", ExceptionStatus::as_str)
                .to_owned(),
        ));
        if let Some(age) = self.older_than {
            out.push(("older_than_secs", age.num_seconds().to_string()));
        }
        if self.limit != DEFAULT_LIMIT {
            out.push(("limit", self.limit.to_string()));
        }
        out
    }
}

fn value(parameter: &'static str, e: ValueError) -> QueryError {
    QueryError::new(parameter, e)
}

/// `45s`, `90m`, `4h`, `2d`, or a bare number of minutes; at most 10 years. The one parser of
/// ages and durations an edge takes (exception filters, token expiry and overlap).
pub fn parse_age(raw: &str) -> Option<Duration> {
    let (number, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "m"),
    };
    let n: i64 = number.parse().ok()?;
    let age = match unit.trim() {
        "s" => Duration::try_seconds(n),
        "m" | "min" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        _ => None,
    }?;
    (age <= MAX_AGE).then_some(age)
}

/// A page of exceptions, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionPage {
    pub exceptions: Vec<SyncException>,
    /// The next page's `after`; `None` on the last page.
    pub next_after: Option<Uuid>,
}

/// The steward acting: the label of their token (or of the CLI operator), recorded as the
/// actor of the action's events and as `steward:<label>` on the exception.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Steward {
    actor: Actor,
}

impl Steward {
    pub fn new(label: &str) -> Result<Self, ValueError> {
        Ok(Self {
            actor: Actor::new(ActorKind::Steward, label)?,
        })
    }

    /// How exceptions name the steward who closed them.
    pub fn name(&self) -> String {
        format!("steward:{}", self.actor.id())
    }
}

/// What a steward asks to do with an exception.
#[derive(Debug, Clone, PartialEq)]
pub struct StewardRequest {
    pub action: StewardAction,
    /// Why (required to dismiss).
    pub reason: Option<String>,
    /// For `accept` of a consumer's value: the value to take into the record (its natural JSON
    /// form). A proposal's value is taken from the proposal.
    pub value: Option<serde_json::Value>,
}

/// What an action did.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionDone {
    /// The exception as it stands after the action.
    pub exception: SyncException,
    /// The events the action recorded: for accept, the value's own event first.
    pub event_ids: Vec<Uuid>,
}

/// Why an action was not done. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    /// The exception's rules refused it (unknown, closed, no field, value required…).
    #[error(transparent)]
    Refused(#[from] ExceptionRefusal),
    /// The customer's record refused the action's command (e.g. the policy forbids steward
    /// override), or it could not be recorded.
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

impl From<StoreError> for ActError {
    fn from(e: StoreError) -> Self {
        Self::Execute(ExecuteError::Store(e))
    }
}

impl App {
    pub async fn exception(&self, id: Uuid) -> Result<Option<SyncException>, StoreError> {
        self.deliveries.exception(id).await
    }

    /// A page of the exceptions `query` asks for.
    pub async fn exceptions(&self, query: &ExceptionQuery) -> Result<ExceptionPage, StoreError> {
        let exceptions = self
            .deliveries
            .exceptions(&query.filter(Utc::now()), query.limit)
            .await?;
        let next_after = (exceptions.len() == query.limit as usize)
            .then(|| exceptions.last().map(|e| e.id))
            .flatten();
        Ok(ExceptionPage {
            exceptions,
            next_after,
        })
    }

    /// Applies a steward's action to exception `id`. The action is a command on the
    /// customer's record, run as the steward principal (so it is in the field's history with
    /// the steward's provenance), and the exception's change (`accept` and `dismiss` close
    /// it, `repush` records itself and leaves it open until the consumer acknowledges, `route`
    /// records itself and leaves it open until the system of record decides) is
    /// written in the command's transaction: both are recorded, or neither.
    pub async fn act(
        &self,
        steward: &Steward,
        id: Uuid,
        request: &StewardRequest,
    ) -> Result<ActionDone, ActError> {
        let exception = self
            .deliveries
            .exception(id)
            .await?
            .ok_or(ExceptionRefusal::Unknown)?;
        let state = exception.state()?;
        let changes = exception::steward_changes(
            &state,
            request.action,
            request.reason.as_deref(),
            request.value.as_ref(),
        )?;
        let reason = request
            .reason
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned);
        let command = Command {
            customer_id: state.customer_id(),
            idempotency_key: IdempotencyKey::parse(&format!("steward-{}", Uuid::now_v7()))
                .map_err(|e| StoreError::Integrity(e.to_string()))?,
            provenance: ProvenanceInput {
                actor: steward.actor.clone(),
                on_behalf_of: None,
                evidence: None,
                observed_at: None,
                correlation_id: Some(id),
                causation_id: None,
                reason: reason.clone(),
            },
            changes,
            expected_stream_version: None,
        };
        let by = steward.name();
        let action = request.action;
        let attach = |result: &CommandResult| -> Result<Option<ExceptionWrite>, ExecuteError> {
            let at = Utc::now();
            let command = match action {
                StewardAction::Repush => ExceptionCommand::Repush {
                    by: by.clone(),
                    event_id: result.events.last().map(|e| e.id),
                    reason: reason.clone(),
                    at,
                },
                StewardAction::Accept => ExceptionCommand::Accept {
                    by: by.clone(),
                    note: reason
                        .clone()
                        .unwrap_or_else(|| describe_accept(&result.outcomes)),
                    at,
                },
                StewardAction::Dismiss => ExceptionCommand::Dismiss {
                    by: by.clone(),
                    reason: reason.clone(),
                    at,
                },
                StewardAction::Route => ExceptionCommand::Route {
                    by: by.clone(),
                    event_id: result.events.last().map(|e| e.id),
                    reason: reason.clone(),
                    at,
                },
            };
            Ok(exception::decide(Some(&state), &command)?
                .into_iter()
                .next()
                .map(|event| ExceptionWrite {
                    exception_id: id,
                    event,
                }))
        };
        let executed = match self
            .ledger
            .execute_with(
                &Principal::Steward(steward.actor.clone()),
                &command,
                &attach,
            )
            .await
        {
            Ok(executed) => executed,
            // Another steward, or the consumer's acknowledgement, closed it meanwhile.
            Err(ExecuteError::ExceptionNotOpen { .. }) => {
                let status = self
                    .deliveries
                    .exception(id)
                    .await?
                    .map_or(ExceptionStatus::Resolved, |e| e.status);
                return Err(ExceptionRefusal::Closed { status }.into());
            }
            Err(e) => return Err(e.into()),
        };
        let exception = self
            .deliveries
            .exception(id)
            .await?
            .ok_or(ExceptionRefusal::Unknown)?;
        Ok(ActionDone {
            exception,
            event_ids: executed
                .result
                .events
                .iter()
                .map(|e| e.id.as_uuid())
                .collect(),
        })
    }

    /// The same action on many exceptions (at most [`MAX_BULK`], repeats acted on once);
    /// each succeeds or fails on its own, in the order given.
    pub async fn act_on_many(
        &self,
        steward: &Steward,
        ids: &[Uuid],
        request: &StewardRequest,
    ) -> Vec<(Uuid, Result<ActionDone, ActError>)> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids.iter().take(MAX_BULK) {
            if seen.insert(id) {
                out.push((id, self.act(steward, id, request).await));
            }
        }
        out
    }
}

/// The note an accepted exception keeps when the steward gave no reason.
fn describe_accept(outcomes: &[Outcome]) -> String {
    match outcomes.first() {
        Some(Outcome::Applied { field, version }) => {
            format!("accepted into the record: {field} is at version {version}")
        }
        Some(Outcome::ProposalResolved { proposal_id, .. }) => {
            format!("accepted proposal {proposal_id}")
        }
        Some(Outcome::Unchanged { field }) => {
            format!("accepted: the record already held this value of {field}")
        }
        _ => "accepted".to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[track_caller]
    fn parses(pairs: &[(&str, &str)]) -> ExceptionQuery {
        match ExceptionQuery::parse(pairs.iter().copied()) {
            Ok(q) => q,
            Err(e) => panic!("{pairs:?} should parse: {e:?}"),
        }
    }

    #[track_caller]
    fn refused(pairs: &[(&str, &str)], parameter: &str) {
        match ExceptionQuery::parse(pairs.iter().copied()) {
            Ok(q) => panic!("{pairs:?} should be refused, parsed as {q:?}"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.parameter == parameter),
                "{pairs:?}: expected an error about {parameter}, got {errors:?}"
            ),
        }
    }

    #[test]
    fn defaults_to_open_exceptions_a_hundred_at_a_time() {
        assert_eq!(parses(&[]), ExceptionQuery::default());
        assert_eq!(
            parses(&[("status", ""), ("kind", "  ")]),
            ExceptionQuery::default()
        );
        assert_eq!(
            ExceptionQuery::default().status,
            Some(ExceptionStatus::Open)
        );
        assert_eq!(ExceptionQuery::default().limit, 100);
    }

    #[test]
    fn every_parameter_is_parsed() {
        let customer = "0190a0c4-7a4e-7b8e-9d2f-2f4b6c8d0e1f";
        let q = parses(&[
            ("consumer", "crm"),
            ("customer", customer),
            ("kind", "divergent"),
            ("field", "email"),
            ("status", "all"),
            ("older_than", "4h"),
            ("after", customer),
            ("limit", "7"),
        ]);
        assert_eq!(q.consumer.as_ref().map(ConsumerId::as_str), Some("crm"));
        assert_eq!(q.customer.map(|c| c.to_string()).as_deref(), Some(customer));
        assert_eq!(q.kind, Some(ExceptionKind::Divergent));
        assert_eq!(q.field, Some(FieldPath::Email));
        assert_eq!(q.status, None);
        assert_eq!(q.older_than, Some(Duration::hours(4)));
        assert_eq!(q.after.map(|a| a.to_string()).as_deref(), Some(customer));
        assert_eq!(q.limit, 7);
    }

    #[test]
    fn ages_in_every_unit_and_in_seconds() {
        for (raw, age) in [
            ("45s", Duration::seconds(45)),
            ("90m", Duration::minutes(90)),
            ("90", Duration::minutes(90)),
            ("4h", Duration::hours(4)),
            ("2d", Duration::days(2)),
        ] {
            assert_eq!(
                parses(&[("older_than", raw)]).older_than,
                Some(age),
                "{raw}"
            );
        }
        assert_eq!(
            parses(&[("older_than_secs", "3600")]).older_than,
            Some(Duration::hours(1))
        );
    }

    #[test]
    fn bad_values_name_their_parameter() {
        refused(&[("consumer", "CRM")], "consumer");
        refused(&[("customer", "nope")], "customer");
        refused(&[("kind", "sideways")], "kind");
        refused(&[("field", "shoe_size")], "field");
        refused(&[("status", "any")], "status");
        refused(&[("older_than", "4 weeks")], "older_than");
        // Far beyond what time can go back (this once overflowed the clock and panicked).
        refused(&[("older_than", "100000000d")], "older_than");
        refused(&[("older_than", "99999999999999999999d")], "older_than");
        refused(&[("older_than_secs", "-1")], "older_than_secs");
        refused(&[("after", "12")], "after");
        refused(&[("limit", "0")], "limit");
        refused(&[("limit", "1001")], "limit");
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let errors = ExceptionQuery::parse([("kind", "x"), ("status", "y")]).unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.parameter).collect();
        assert_eq!(names, ["kind", "status"]);
    }

    #[test]
    fn pairs_parse_back_to_the_same_query() {
        let q = parses(&[
            ("consumer", "crm"),
            ("kind", "stale"),
            ("status", "dismissed"),
            ("older_than", "2d"),
            ("limit", "5"),
        ]);
        let pairs = q.pairs();
        let again = parses(
            &pairs
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(again, q);
    }

    #[test]
    fn the_age_is_measured_from_now() {
        let now = Utc::now();
        let q = parses(&[("older_than", "1h")]);
        assert_eq!(q.filter(now).created_before, Some(now - Duration::hours(1)));
        assert_eq!(parses(&[]).filter(now).created_before, None);
    }
}
