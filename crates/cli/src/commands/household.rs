//! `idledger household create|join|leave|show`: households from the command line, as
//! `POST /v1/households`, `PUT` / `DELETE /v1/households/{id}/members/{customer}` and
//! `GET /v1/households/{id}` do. Changes are made as a data steward (`--as NAME`), under the
//! `household` field's policy (stewards write it where `steward_override` allows); `show`
//! reads as the operator, who reads everything.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use idledger_api::households::{HouseholdView, MembershipView};
use idledger_api::views::CommandResponse;
use idledger_app::{App, MembershipCommand, MembershipError, ReadError, Reader, Steward};
use idledger_domain::command::{Principal, ProvenanceInput};
use idledger_domain::household::HouseholdRole;
use idledger_domain::ids::{CustomerId, HouseholdId, IdempotencyKey};
use idledger_store::{ExecuteError, Executed};

use crate::config::Settings;
use crate::store::{self, KeyUse};

#[derive(Debug, Subcommand)]
pub enum HouseholdCommand {
    /// Create a household with CUSTOMER_ID as its first member (role head unless --role);
    /// prints the new household's id.
    Create(CreateArgs),
    /// Add CUSTOMER_ID to HOUSEHOLD_ID, or change their role in it (a customer is in one
    /// household at most: joining another moves them).
    Join(JoinArgs),
    /// Take CUSTOMER_ID out of HOUSEHOLD_ID.
    Leave(LeaveArgs),
    /// List HOUSEHOLD_ID's members and their roles, in id order.
    Show(ShowArgs),
}

/// Who makes the change, and why.
#[derive(Debug, Args)]
pub struct StewardArgs {
    /// The steward making the change (recorded as the actor of its events).
    #[arg(long = "as", value_name = "NAME")]
    pub steward: String,
    /// Why (recorded with the events; do not quote the record).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Print the result as JSON (the API's answer).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The first member (a UUIDv7).
    #[arg(value_name = "CUSTOMER_ID", value_parser = crate::cli::parse_customer_id)]
    pub customer: CustomerId,
    /// member, head or guardian.
    #[arg(long, value_name = "ROLE", default_value = "head", value_parser = parse_role)]
    pub role: HouseholdRole,
    #[command(flatten)]
    pub by: StewardArgs,
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[arg(value_name = "HOUSEHOLD_ID", value_parser = parse_household_id)]
    pub household: HouseholdId,
    #[arg(value_name = "CUSTOMER_ID", value_parser = crate::cli::parse_customer_id)]
    pub customer: CustomerId,
    /// member, head or guardian.
    #[arg(long, value_name = "ROLE", default_value = "member", value_parser = parse_role)]
    pub role: HouseholdRole,
    #[command(flatten)]
    pub by: StewardArgs,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    #[arg(value_name = "HOUSEHOLD_ID", value_parser = parse_household_id)]
    pub household: HouseholdId,
    #[arg(value_name = "CUSTOMER_ID", value_parser = crate::cli::parse_customer_id)]
    pub customer: CustomerId,
    #[command(flatten)]
    pub by: StewardArgs,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[arg(value_name = "HOUSEHOLD_ID", value_parser = parse_household_id)]
    pub household: HouseholdId,
    /// Print the API's answer (`household_id`, `members`, `truncated`) as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a create, join or leave asks for.
enum Change {
    Create(HouseholdRole),
    Join(HouseholdId, HouseholdRole),
    Leave(HouseholdId),
}

fn parse_role(raw: &str) -> Result<HouseholdRole, String> {
    HouseholdRole::parse(raw).map_err(|_| "expected member, head or guardian".to_owned())
}

fn parse_household_id(raw: &str) -> Result<HouseholdId, String> {
    HouseholdId::parse(raw).map_err(|e| e.to_string())
}

pub async fn run(
    settings: &Settings,
    command: &HouseholdCommand,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let (customer, by, change) = match command {
        HouseholdCommand::Show(args) => return show(settings, args, out).await,
        HouseholdCommand::Create(a) => (a.customer, &a.by, Change::Create(a.role)),
        HouseholdCommand::Join(a) => (a.customer, &a.by, Change::Join(a.household, a.role)),
        HouseholdCommand::Leave(a) => (a.customer, &a.by, Change::Leave(a.household)),
    };
    let steward = match Steward::new(&by.steward) {
        Ok(steward) => steward,
        Err(e) => {
            eprintln!("error: --as: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let principal = Principal::Steward(steward.actor().clone());
    let membership = MembershipCommand {
        customer_id: customer,
        idempotency_key: IdempotencyKey::parse(&format!("household:{}", uuid::Uuid::now_v7()))?,
        provenance: ProvenanceInput {
            actor: steward.actor().clone(),
            on_behalf_of: None,
            evidence: None,
            observed_at: None,
            correlation_id: None,
            causation_id: None,
            reason: by.reason.clone(),
        },
        expected_stream_version: None,
    };
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let done = match change {
        Change::Create(role) => app
            .create_household(&principal, role, membership)
            .await
            .map(|(household, executed)| (household, executed, "created")),
        Change::Join(household, role) => app
            .join_household(&principal, household, role, membership)
            .await
            .map(|executed| (household, executed, "joined")),
        Change::Leave(household) => app
            .leave_household(&principal, household, membership)
            .await
            .map(|executed| (household, executed, "left")),
    };
    let (household, executed, what) = match done {
        Ok(done) => done,
        Err(MembershipError::Execute(ExecuteError::Refused(refused))) => {
            eprintln!("refused ({}): {refused}", refused.refusal.code());
            return Ok(ExitCode::FAILURE);
        }
        Err(e @ MembershipError::UnknownHousehold(_)) => {
            eprintln!("refused (unknown_household): {e}");
            return Ok(ExitCode::FAILURE);
        }
        Err(MembershipError::Execute(e)) => return Err(e.into()),
    };
    let members = match app.household(&Reader::Overseer, household).await {
        Ok(found) => HouseholdView::from(found),
        Err(ReadError::NoHousehold(_)) => HouseholdView {
            household_id: household,
            members: Vec::new(),
            truncated: false,
        },
        Err(e) => return Err(e.into()),
    };
    if by.json {
        let Executed {
            result, replayed, ..
        } = executed;
        let view = MembershipView {
            household_id: household,
            members: members.members,
            truncated: members.truncated,
            command: CommandResponse::new(result, replayed, |c| app.ledger().challenge_secret(c)),
        };
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let changed = !executed.result.events.is_empty();
    writeln!(
        out,
        "{customer} {} household {household}",
        if changed { what } else { "unchanged in" }
    )?;
    print_members(out, &members)?;
    Ok(ExitCode::SUCCESS)
}

async fn show(
    settings: &Settings,
    args: &ShowArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let view = match app.household(&Reader::Overseer, args.household).await {
        Ok(found) => HouseholdView::from(found),
        Err(e @ ReadError::NoHousehold(_)) => {
            eprintln!("{e}: nobody is in it");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
    } else {
        print_members(out, &view)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One member a line: id and role; a note on stderr when the list is cut short.
fn print_members(out: &mut dyn Write, view: &HouseholdView) -> std::io::Result<()> {
    for m in &view.members {
        writeln!(out, "{}  {}", m.customer_id, m.role)?;
    }
    if view.truncated {
        eprintln!(
            "more customers are in the household; the first {} are listed",
            view.members.len()
        );
    }
    Ok(())
}
