//! `idledger exception list|show|act|assign|approvals|approve|reject|activity`: the data steward's work queue from the command line,
//! on the same use cases as the API and the steward page (`idledger_app`): the same filters,
//! parsed by the same parser, and the same actions, each one transaction with the command it
//! records. `--json` prints the API's shapes.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use chrono::Utc;
use clap::{Args, Subcommand};
use idledger_api::views::{ExceptionPageView, ExceptionView};
use idledger_api::workspace::{ActivityView, ApprovalView};
use idledger_app::{
    ActError, App, AssignTo, ExceptionQuery, ListError, Steward, StewardRequest, WorkflowError,
};
use idledger_domain::event::StewardAction;
use idledger_store::approvals::ApprovalStatus;
use idledger_store::delivery::ActivityFilter;
use idledger_store::delivery::SyncException;
use uuid::Uuid;

use crate::config::Settings;
use crate::render::{kv, opt, time};
use crate::store::{self, KeyUse};

#[derive(Debug, Subcommand)]
pub enum ExceptionCommand {
    /// List sync exceptions, oldest first (open ones unless --status says otherwise).
    List(ListArgs),
    /// Show one exception: what it is about, its evidence and where it stands.
    Show(ShowArgs),
    /// Act on an exception as a data steward: repush the record's value to the consumer,
    /// accept a proposal (or the consumer's value, with --value) into the record, or dismiss
    /// it with a reason. The action is an event in the field's history.
    Act(ActArgs),
    /// Assign an exception to a steward (--to me or a steward's label), or --unassign it.
    Assign(AssignArgs),
    /// List four-eyes approvals (pending ones unless --status says otherwise).
    Approvals(ApprovalsArgs),
    /// Approve a pending four-eyes approval as a second steward: the first steward's change
    /// is made now, recorded with both.
    Approve(DecideArgs),
    /// Reject a pending four-eyes approval: nothing changes, the exception stays open.
    Reject(DecideArgs),
    /// What stewards did, oldest first: actions, assignments, approvals.
    Activity(ActivityArgs),
}

#[derive(Debug, Args)]
pub struct AssignArgs {
    /// The exception's id.
    #[arg(value_name = "EXCEPTION_ID")]
    pub id: Uuid,
    /// `me` (the steward of --as) or another steward's label.
    #[arg(
        long,
        value_name = "STEWARD",
        conflicts_with = "unassign",
        required_unless_present = "unassign"
    )]
    pub to: Option<String>,
    /// Take it from whoever has it.
    #[arg(long)]
    pub unassign: bool,
    /// Who assigns: the steward's name.
    #[arg(long = "as", value_name = "NAME")]
    pub steward: String,
}

#[derive(Debug, Args)]
pub struct ApprovalsArgs {
    /// pending, approved, rejected, void or all. [default: pending]
    #[arg(long, value_name = "STATUS", default_value = "pending")]
    pub status: String,
    /// Print JSON (the API's shapes) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The approval's id.
    #[arg(value_name = "APPROVAL_ID")]
    pub id: Uuid,
    /// Who decides: a steward other than the one who asked.
    #[arg(long = "as", value_name = "NAME")]
    pub steward: String,
    /// Why.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ActivityArgs {
    /// Only this steward's (their label).
    #[arg(long, value_name = "NAME")]
    pub steward: Option<String>,
    /// Only about this customer (a UUID).
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// Print JSON (the API's shape) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The filters, as `GET /v1/exceptions` takes them (and checked by the same parser).
#[derive(Debug, Args)]
pub struct ListArgs {
    /// The consumer (or, for proposal and refused_write, the source system) it is about.
    #[arg(long, value_name = "ID")]
    pub consumer: Option<String>,
    /// The customer (a UUID).
    #[arg(long, value_name = "ID")]
    pub customer: Option<String>,
    /// undelivered, stale, divergent, rejected, withdrawal_unconfirmed, webhook_rejected,
    /// undeliverable, delivery_failing, proposal or refused_write.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// The field, e.g. email or consent.marketing.
    #[arg(long, value_name = "FIELD")]
    pub field: Option<String>,
    /// open, resolved, dismissed or all. [default: open]
    #[arg(long, value_name = "STATUS")]
    pub status: Option<String>,
    /// Only those opened at least this long ago: 45s, 90m, 4h, 2d.
    #[arg(long, value_name = "AGE")]
    pub older_than: Option<String>,
    /// Paging: the last id of the previous page.
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// At most this many (1 to 1000). [default: 100]
    #[arg(long, value_name = "N")]
    pub limit: Option<String>,
    /// me (the steward of --as), none, or a steward's label.
    #[arg(long, value_name = "STEWARD")]
    pub assignee: Option<String>,
    /// Only open exceptions past their SLA.
    #[arg(long)]
    pub overdue: bool,
    /// The steward asking, for --assignee me.
    #[arg(long = "as", value_name = "NAME")]
    pub steward: Option<String>,
    /// Print JSON (the API's page) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The exception's id.
    #[arg(value_name = "EXCEPTION_ID")]
    pub id: Uuid,
    /// Print JSON (the API's shape) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// The exception's id.
    #[arg(value_name = "EXCEPTION_ID")]
    pub id: Uuid,
    /// repush, accept, dismiss or route (a proposal, to its field's system of record).
    #[arg(long, value_name = "ACTION", value_parser = parse_action)]
    pub action: StewardAction,
    /// Who acts: the steward's name, recorded as the actor of the event and as
    /// steward:<NAME> on the exception.
    #[arg(long = "as", value_name = "NAME")]
    pub steward: String,
    /// Why (required to dismiss).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// To accept a consumer's value: the value, as JSON (e.g. '"ann@example.com"'). A
    /// proposal's value is taken from the proposal.
    #[arg(long, value_name = "JSON")]
    pub value: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_action(raw: &str) -> Result<StewardAction, String> {
    match raw {
        "repush" => Ok(StewardAction::Repush),
        "accept" => Ok(StewardAction::Accept),
        "dismiss" => Ok(StewardAction::Dismiss),
        "route" => Ok(StewardAction::Route),
        other => Err(format!(
            "'{other}' is not one of: repush, accept, dismiss, route"
        )),
    }
}

/// Exit status of an action the exception's rules or the record refused (nothing recorded).
const REFUSED: u8 = 1;
/// Exit status of bad input (a filter or value that does not parse), as clap's usage errors.
const USAGE: u8 = 2;

pub async fn run(
    settings: &Settings,
    command: &ExceptionCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    // Listing and showing read no payloads; acting runs a command on the record.
    let key_use = match command {
        ExceptionCommand::Act(_) | ExceptionCommand::Approve(_) => KeyUse::Required,
        _ => KeyUse::NotNeeded,
    };
    let app = App::new(store::open_ledger(settings, key_use).await?);
    match command {
        ExceptionCommand::List(args) => list(&app, args, out).await,
        ExceptionCommand::Show(args) => show(&app, args, out).await,
        ExceptionCommand::Act(args) => act(&app, args, out).await,
        ExceptionCommand::Assign(args) => assign(&app, args, out).await,
        ExceptionCommand::Approvals(args) => approvals(&app, args, out).await,
        ExceptionCommand::Approve(args) => decide(&app, args, true, out).await,
        ExceptionCommand::Reject(args) => decide(&app, args, false, out).await,
        ExceptionCommand::Activity(args) => activity(&app, args, out).await,
    }
}

async fn list(app: &App, args: &ListArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let given = [
        ("consumer", &args.consumer),
        ("customer", &args.customer),
        ("kind", &args.kind),
        ("field", &args.field),
        ("status", &args.status),
        ("older_than", &args.older_than),
        ("after", &args.after),
        ("limit", &args.limit),
        ("assignee", &args.assignee),
        ("overdue", &args.overdue.then(|| "true".to_owned())),
    ];
    let query = match ExceptionQuery::parse(
        given
            .iter()
            .filter_map(|(name, value)| value.as_deref().map(|v| (*name, v))),
    ) {
        Ok(query) => query,
        Err(errors) => {
            for e in errors {
                eprintln!("error: --{}: {}", e.parameter.replace('_', "-"), e.message);
            }
            return Ok(ExitCode::from(USAGE));
        }
    };
    let me = match args.steward.as_deref().map(Steward::new).transpose() {
        Ok(me) => me,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let page = match app.exceptions(&query, me.as_ref()).await {
        Ok(page) => page,
        Err(ListError::Query(e)) => {
            eprintln!("error: --{}: {} (give --as NAME)", e.parameter, e.message);
            return Ok(ExitCode::from(USAGE));
        }
        Err(ListError::Store(e)) => return Err(e.into()),
    };
    if args.json {
        let view = ExceptionPageView {
            next_after: page.next_after,
            exceptions: page
                .exceptions
                .into_iter()
                .map(ExceptionView::from)
                .collect(),
        };
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if page.exceptions.is_empty() {
        writeln!(out, "no exceptions match")?;
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<36}  {:<22}  {:<16}  {:<36}  {:<18}  {:>5}  {:<9}  opened",
        "id", "kind", "consumer/system", "customer", "field", "seen", "status"
    )?;
    let now = Utc::now();
    for e in &page.exceptions {
        writeln!(
            out,
            "{:<36}  {:<22}  {:<16}  {:<36}  {:<18}  {:>4}×  {:<9}  {} ago",
            e.id,
            e.kind.as_str(),
            e.subject.as_str(),
            e.customer_id,
            e.field.as_deref().unwrap_or("-"),
            e.occurrences,
            e.status.as_str(),
            age(now - e.created_at),
        )?;
    }
    if let Some(next) = page.next_after {
        writeln!(
            out,
            "more: idledger exception list --after {next} (with the same filters)"
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(app: &App, args: &ShowArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let Some(exception) = app.exception(args.id).await? else {
        eprintln!("error: there is no sync exception {}", args.id);
        return Ok(ExitCode::from(REFUSED));
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &ExceptionView::from(exception))?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    describe(out, &exception)?;
    Ok(ExitCode::SUCCESS)
}

async fn act(app: &App, args: &ActArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let steward = match Steward::new(&args.steward) {
        Ok(steward) => steward,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let value = match &args.value {
        None => None,
        Some(raw) => match serde_json::from_str(raw) {
            Ok(value) => Some(value),
            Err(e) => {
                eprintln!(
                    "error: --value: not JSON ({e}); quote a string as JSON, e.g. '\"ann@example.com\"'"
                );
                return Ok(ExitCode::from(USAGE));
            }
        },
    };
    let request = StewardRequest {
        action: args.action,
        reason: args.reason.clone(),
        value,
    };
    let done = match app.act(&steward, args.id, &request).await {
        Ok(done) => done,
        Err(ActError::Refused(refusal)) => {
            eprintln!("refused ({}): {refusal}", refusal.code());
            return Ok(ExitCode::from(REFUSED));
        }
        Err(ActError::Execute(idledger_store::ExecuteError::Refused(refused))) => {
            eprintln!("refused ({}): {refused}", refused.refusal.code());
            return Ok(ExitCode::from(REFUSED));
        }
        Err(ActError::Execute(e)) => {
            return Err(e).context("the action could not be recorded; nothing was changed");
        }
        Err(ActError::Approval(idledger_store::approvals::ApprovalError::Store(e))) => {
            return Err(e).context("the approval could not be recorded; nothing was changed");
        }
        Err(ActError::Approval(e)) => {
            eprintln!("refused: {e}");
            return Ok(ExitCode::from(REFUSED));
        }
    };
    if let Some(approval) = done.approval.as_ref().filter(|_| !args.json) {
        writeln!(
            out,
            "exception {}: a second steward must approve this change (four eyes); nothing changed yet",
            args.id
        )?;
        kv(out, 2, "approval", approval.id)?;
        writeln!(
            out,
            "  another steward: idledger exception approve {} --as NAME",
            approval.id
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.json {
        let view = serde_json::json!({
            "exception_id": args.id,
            "action": args.action.as_str(),
            "exception": ExceptionView::from(done.exception),
            "event_ids": done.event_ids,
            "approval": done.approval.map(ApprovalView::from),
        });
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let verb = match args.action {
        StewardAction::Repush => {
            "re-pushed; it closes when the consumer acknowledges the record's value"
        }
        StewardAction::Accept => "accepted",
        StewardAction::Dismiss => "dismissed",
        StewardAction::Route => {
            "sent to the system of record; it closes when the system of record decides it"
        }
    };
    writeln!(out, "exception {}: {verb}", args.id)?;
    for id in &done.event_ids {
        kv(out, 2, "event", id)?;
    }
    describe(out, &done.exception)?;
    Ok(ExitCode::SUCCESS)
}

fn steward_arg(raw: &str) -> Result<Steward, ExitCode> {
    Steward::new(raw).map_err(|e| {
        eprintln!("error: --as: {e}");
        ExitCode::from(USAGE)
    })
}

/// A workflow refusal: printed with its reason, exit 1; a failure to record, an error.
fn refused(e: WorkflowError) -> anyhow::Result<ExitCode> {
    match e {
        WorkflowError::Store(e) => Err(e).context("nothing was changed"),
        WorkflowError::Act(ActError::Execute(idledger_store::ExecuteError::Store(e))) => {
            Err(e).context("nothing was changed")
        }
        e => {
            eprintln!("refused: {e}");
            Ok(ExitCode::from(REFUSED))
        }
    }
}

async fn assign(app: &App, args: &AssignArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let steward = match steward_arg(&args.steward) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let to = match (&args.to, args.unassign) {
        (_, true) | (None, _) => AssignTo::Nobody,
        (Some(me), false) if me == "me" => AssignTo::Me,
        (Some(label), false) => AssignTo::Steward(label.clone()),
    };
    match app.assign(&steward, args.id, &to).await {
        Ok(e) => {
            writeln!(
                out,
                "exception {}: assigned to {}",
                e.id,
                e.assigned_to.as_deref().unwrap_or("nobody")
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refused(e),
    }
}

async fn approvals(
    app: &App,
    args: &ApprovalsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let status = match args.status.as_str() {
        "pending" => Some(ApprovalStatus::Pending),
        "approved" => Some(ApprovalStatus::Approved),
        "rejected" => Some(ApprovalStatus::Rejected),
        "void" => Some(ApprovalStatus::Void),
        "all" => None,
        other => {
            eprintln!("error: --status: {other:?} is not pending, approved, rejected, void or all");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let approvals = app.approvals(status, None, None, 1000).await?;
    if args.json {
        let views: Vec<ApprovalView> = approvals.into_iter().map(ApprovalView::from).collect();
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if approvals.is_empty() {
        writeln!(out, "no approvals match")?;
    }
    for a in &approvals {
        writeln!(
            out,
            "{}  {:<8}  {:<18}  customer {}  asked by {} at {}",
            a.id,
            a.status.as_str(),
            a.field,
            a.customer_id,
            a.requested_by,
            time(a.requested_at)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn decide(
    app: &App,
    args: &DecideArgs,
    approve: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let steward = match steward_arg(&args.steward) {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if approve {
        match app.approve(&steward, args.id, args.reason.as_deref()).await {
            Ok(done) => {
                writeln!(
                    out,
                    "approval {}: approved; the change is in the record",
                    args.id
                )?;
                for id in &done.event_ids {
                    kv(out, 2, "event", id)?;
                }
                describe(out, &done.exception)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refused(e),
        }
    } else {
        match app
            .reject_approval(&steward, args.id, args.reason.as_deref())
            .await
        {
            Ok(_) => {
                writeln!(out, "approval {}: rejected; nothing changed", args.id)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => refused(e),
        }
    }
}

async fn activity(app: &App, args: &ActivityArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let steward = match args.steward.as_deref().map(Steward::new).transpose() {
        Ok(s) => s.map(|s| s.name()),
        Err(e) => {
            eprintln!("error: --steward: {e}");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let customer = match args.customer.as_deref().map(|raw| {
        raw.parse::<Uuid>()
            .ok()
            .and_then(|u| idledger_domain::ids::CustomerId::from_uuid(u).ok())
    }) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            eprintln!("error: --customer: not a customer id (a UUID)");
            return Ok(ExitCode::from(USAGE));
        }
    };
    let filter = ActivityFilter {
        steward,
        customer,
        after: None,
    };
    let activity = app.activity(&filter, 1000).await?;
    if args.json {
        let views: Vec<ActivityView> = activity.into_iter().map(ActivityView::from).collect();
        serde_json::to_writer_pretty(&mut *out, &views)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if activity.is_empty() {
        writeln!(out, "no steward activity matches")?;
    }
    for a in &activity {
        writeln!(
            out,
            "{}  {:<20}  {:<16}  customer {}  {}{}",
            time(a.at),
            a.steward,
            a.action,
            a.customer_id,
            a.field.as_deref().unwrap_or("-"),
            a.detail
                .as_deref()
                .map(|d| format!("  ({d})"))
                .unwrap_or_default(),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(out: &mut dyn Write, e: &SyncException) -> std::io::Result<()> {
    kv(out, 0, "exception", e.id)?;
    kv(out, 0, "kind", e.kind.as_str())?;
    kv(out, 0, "consumer/system", e.subject.as_str())?;
    kv(out, 0, "customer", e.customer_id)?;
    kv(out, 0, "field", opt(e.field.as_deref()))?;
    kv(out, 0, "status", e.status.as_str())?;
    kv(out, 0, "seen", format!("{}×", e.occurrences))?;
    kv(out, 0, "opened", time(e.created_at))?;
    kv(out, 0, "updated", time(e.updated_at))?;
    if let Some(resolution) = e.resolution {
        kv(out, 0, "resolution", resolution.as_str())?;
        kv(out, 0, "resolved by", opt(e.resolved_by.as_deref()))?;
        kv(out, 0, "resolved at", opt(e.resolved_at.map(time)))?;
        kv(out, 0, "note", opt(e.resolution_note.as_deref()))?;
    }
    if let Some(action) = &e.last_action {
        kv(out, 0, "last action", action)?;
    }
    kv(out, 0, "assigned to", opt(e.assigned_to.as_deref()))?;
    kv(out, 0, "evidence", &e.detail)?;
    Ok(())
}

/// A duration in its largest whole unit: 45s, 12m, 3h, 2d.
fn age(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
