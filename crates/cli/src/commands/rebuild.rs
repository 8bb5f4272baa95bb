//! `idledger rebuild`: re-create every projection from the log and compare with the live one.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use idledger_store::RebuildReport;
use serde::Serialize;

use crate::cli::RebuildArgs;
use crate::config::Settings;
use crate::progress::Progress;
use crate::render::kv;
use crate::store::{self, KeyUse};

/// How many differing customer ids the text report lists.
const LISTED: usize = 5;

#[derive(Debug, Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    report: &'a RebuildReport,
    elapsed_seconds: f64,
    events_per_second: f64,
}

pub async fn run(
    settings: &Settings,
    args: &RebuildArgs,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    let ledger = store::open_ledger(settings, KeyUse::Required).await?;
    let progress = Progress::new("rebuilding");
    let started = Instant::now();
    let report = ledger
        .rebuild(&|done, total| progress.update(done, total))
        .await?;
    let elapsed = started.elapsed();
    progress.finish();
    if args.json {
        let json = JsonReport {
            report: &report,
            elapsed_seconds: elapsed.as_secs_f64(),
            events_per_second: rate(report.events, elapsed),
        };
        serde_json::to_writer_pretty(&mut *out, &json)?;
        writeln!(out)?;
    } else {
        write_text(out, 0, &report, elapsed)?;
    }
    // The projection now matches the log either way; a difference is reported, not a failure.
    Ok(ExitCode::SUCCESS)
}

pub fn write_text(
    out: &mut dyn Write,
    indent: usize,
    report: &RebuildReport,
    elapsed: Duration,
) -> std::io::Result<()> {
    kv(out, indent, "events", report.events)?;
    kv(out, indent, "customers", report.customers)?;
    kv(out, indent, "rows", report.rows)?;
    kv(
        out,
        indent,
        "elapsed",
        format!("{:.3} s", elapsed.as_secs_f64()),
    )?;
    kv(
        out,
        indent,
        "rate",
        format!("{:.0} events/s", rate(report.events, elapsed)),
    )?;
    if report.resealed_count > 0 {
        writeln!(
            out,
            "{:indent$}{} customers' rows were still in the clear (written before the projection \
             was sealed) and are now sealed",
            "", report.resealed_count
        )?;
    }
    if report.reindexed_count > 0 {
        writeln!(
            out,
            "{:indent$}{} customers' lookup index rows did not match their record and were \
             rewritten",
            "", report.reindexed_count
        )?;
    }
    if report.snapshots_repaired > 0 {
        writeln!(
            out,
            "{:indent$}{} stream snapshots were missing, stale or not the fold of their events \
             and were rewritten or removed",
            "", report.snapshots_repaired
        )?;
    }
    if report.identical {
        return writeln!(
            out,
            "{:indent$}the rebuilt projection is identical to the live one",
            ""
        );
    }
    let listed: Vec<String> = report
        .differing_customers
        .iter()
        .take(LISTED)
        .map(ToString::to_string)
        .collect();
    let more = report.differing_count.saturating_sub(listed.len() as u64);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    writeln!(
        out,
        "{:indent$}the rebuilt projection DIFFERED from the live one for {} customers ({}{more}); \
         the projection was replaced by the one rebuilt from the log",
        "",
        report.differing_count,
        listed.join(", ")
    )
}

fn rate(events: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        events as f64 / secs
    } else {
        0.0
    }
}
