//! `idledger restrict <CUSTOMER_ID> --reason TEXT --as NAME [--lift]`: restrict the processing
//! of a customer's data (GDPR Art. 18), or lift the restriction, as
//! `POST /v1/customers/{id}/restriction` does.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use idledger_app::App;
use idledger_domain::decide::Outcome;
use idledger_domain::ids::{Actor, ActorKind, CustomerId};
use idledger_store::ExecuteError;

use crate::config::Settings;
use crate::store::{self, KeyUse};

#[derive(Debug, Args)]
pub struct RestrictArgs {
    /// The customer (a UUIDv7).
    #[arg(value_name = "CUSTOMER_ID", value_parser = crate::cli::parse_customer_id)]
    pub customer: CustomerId,
    /// Lift the restriction instead of setting it.
    #[arg(long)]
    pub lift: bool,
    /// Why (e.g. the ticket of the data subject's request).
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// Who decides it, recorded as the actor (an agent), e.g. dpo@example.org.
    #[arg(long = "as", value_name = "NAME")]
    pub actor: String,
}

pub async fn run(
    settings: &Settings,
    args: &RestrictArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let actor =
        Actor::new(ActorKind::Agent, &args.actor).map_err(|e| anyhow::anyhow!("--as: {e}"))?;
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    match app
        .restrict(args.customer, actor, &args.reason, !args.lift)
        .await
    {
        Ok(executed) => {
            for outcome in &executed.result.outcomes {
                if let Outcome::Restriction { .. } = outcome {
                    writeln!(out, "{}", crate::render::outcome(outcome))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ExecuteError::Refused(refused)) => {
            let mut stderr = std::io::stderr();
            writeln!(stderr, "refused ({}): {refused}", refused.refusal.code())?;
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}
