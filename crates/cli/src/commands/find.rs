//! `idledger find --email …|--phone …|--external-id SYSTEM:ID|--name "…"|--household ID`: the
//! customers an identifier finds, through the blind index (as `GET /v1/customers?email=…`
//! does), as the operator (who reads everything); a household's members by its id.

use std::io::Write;
use std::process::ExitCode;

use clap::{ArgGroup, Args};
use idledger_api::views::CustomerMatchesView;
use idledger_app::{App, Reader};
use idledger_domain::lookup::{Identifier, LookupKind};

use crate::config::Settings;
use crate::store::{self, KeyUse};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("identifier").required(true).multiple(false)))]
pub struct FindArgs {
    /// An email address (found however it is cased).
    #[arg(long, group = "identifier", value_name = "ADDRESS")]
    pub email: Option<String>,
    /// A phone number with its country code (+44 20 7946 0958, 0044…).
    #[arg(long, group = "identifier", value_name = "NUMBER")]
    pub phone: Option<String>,
    /// SYSTEM:ID, the value of the field external_id.SYSTEM (compared exactly).
    #[arg(long, group = "identifier", value_name = "SYSTEM:ID")]
    pub external_id: Option<String>,
    /// The full name, given then family name (compared whole, ignoring case and spacing).
    #[arg(long, group = "identifier", value_name = "NAME")]
    pub name: Option<String>,
    /// A household id: its members (`idledger household show` gives their roles too).
    #[arg(long, group = "identifier", value_name = "ID")]
    pub household: Option<String>,
    /// Print the API's answer (`customer_ids`, `truncated`) as JSON.
    #[arg(long)]
    pub json: bool,
}

impl FindArgs {
    /// The identifier asked for; a bad value is a usage error that does not repeat it.
    fn identifier(&self) -> Result<Identifier, clap::Error> {
        let (kind, raw) = [
            (LookupKind::Email, &self.email),
            (LookupKind::Phone, &self.phone),
            (LookupKind::ExternalId, &self.external_id),
            (LookupKind::Name, &self.name),
            (LookupKind::Household, &self.household),
        ]
        .into_iter()
        .find_map(|(kind, value)| value.as_deref().map(|v| (kind, v)))
        .ok_or_else(|| {
            clap::Error::raw(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give one of --email, --phone, --external-id, --name, --household\n",
            )
        })?;
        Identifier::parse(kind, raw).map_err(|_| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!(
                    "--{} must be {}\n",
                    kind.as_str().replace('_', "-"),
                    kind.expected()
                ),
            )
        })
    }
}

pub async fn run(
    settings: &Settings,
    args: &FindArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let identifier = match args.identifier() {
        Ok(identifier) => identifier,
        Err(e) => {
            let _ = e.print();
            return Ok(ExitCode::from(2));
        }
    };
    let app = App::new(store::open_ledger(settings, KeyUse::Required).await?);
    let matches = app.find_customers(&Reader::Overseer, &identifier).await?;
    let view = CustomerMatchesView::from(matches);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &view)?;
        writeln!(out)?;
        return Ok(ExitCode::SUCCESS);
    }
    if view.customer_ids.is_empty() {
        eprintln!("no customer has this {}", identifier.kind());
    }
    for customer in &view.customer_ids {
        writeln!(out, "{customer}")?;
    }
    if view.truncated {
        eprintln!(
            "more customers have this {}; the first {} are listed",
            identifier.kind(),
            view.customer_ids.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
