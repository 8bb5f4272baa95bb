//! A run's report: per consumer, per kind, counts and a few examples; and its readable
//! summary. Bounded: examples are capped per kind, so a report's size does not grow with the
//! number of customers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use idledger_store::runs::{Run, RunStatus};

/// Examples kept per consumer and kind.
pub const EXAMPLES_PER_KIND: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub consumers: Vec<ConsumerReport>,
    pub totals: Totals,
    /// Snapshot runs: what the upload held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub customers_checked: u64,
    pub fields_checked: u64,
    pub in_sync: u64,
    /// Changes still within the consumer's SLA: not yet a finding.
    pub in_flight: u64,
    pub findings: u64,
    pub by_kind: BTreeMap<String, u64>,
    pub exceptions_opened: u64,
    pub exceptions_closed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerReport {
    pub consumer_id: String,
    pub sla_secs: u64,
    pub customers_checked: u64,
    pub fields_checked: u64,
    pub in_sync: u64,
    pub in_flight: u64,
    pub counts: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, Vec<Example>>,
    pub exceptions_opened: u64,
    pub exceptions_closed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub customer_id: String,
    pub field: String,
    pub detail: serde_json::Value,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotStats {
    pub format: String,
    pub rows: u64,
    pub invalid_rows: u64,
    pub duplicate_rows: u64,
}

impl ConsumerReport {
    pub fn new(consumer_id: &str, sla_secs: u64) -> Self {
        Self {
            consumer_id: consumer_id.to_owned(),
            sla_secs,
            ..Self::default()
        }
    }

    /// Counts a finding, keeping it as an example while there is room.
    pub fn count(
        &mut self,
        kind: &str,
        customer_id: &str,
        field: &str,
        detail: &serde_json::Value,
    ) {
        *self.counts.entry(kind.to_owned()).or_default() += 1;
        let examples = self.examples.entry(kind.to_owned()).or_default();
        if examples.len() < EXAMPLES_PER_KIND {
            examples.push(Example {
                customer_id: customer_id.to_owned(),
                field: field.to_owned(),
                detail: detail.clone(),
            });
        }
    }
}

impl Report {
    /// Recomputes the totals from the consumers' sections.
    pub fn total(&mut self) {
        let mut t = Totals::default();
        for c in &self.consumers {
            t.customers_checked = t.customers_checked.max(c.customers_checked);
            t.fields_checked += c.fields_checked;
            t.in_sync += c.in_sync;
            t.in_flight += c.in_flight;
            t.exceptions_opened += c.exceptions_opened;
            t.exceptions_closed += c.exceptions_closed;
            for (kind, n) in &c.counts {
                t.findings += n;
                *t.by_kind.entry(kind.clone()).or_default() += n;
            }
        }
        self.totals = t;
    }
}

/// The run's report for people: what was checked, then per consumer the counts per kind and
/// an example of each.
pub fn summary(run: &Run) -> String {
    let mut out = String::new();
    let scope = run
        .consumer_id
        .as_ref()
        .map_or_else(|| "all consumers".to_owned(), |c| format!("consumer {c}"));
    let _ = writeln!(
        out,
        "Reconciliation {} ({} run, {scope}, by {} via {})",
        run.id,
        run.kind.as_str(),
        run.requested_by,
        run.trigger
    );
    let status = match (run.status, run.finished_at) {
        (RunStatus::Finished, Some(at)) => format!("finished {}", at.to_rfc3339()),
        (RunStatus::Failed, _) => format!(
            "FAILED: {}",
            run.error.as_deref().unwrap_or("no reason recorded")
        ),
        _ => "running".to_owned(),
    };
    let _ = writeln!(out, "  started {}, {status}", run.started_at.to_rfc3339());
    let report: Report = serde_json::from_value(run.report.clone()).unwrap_or_default();
    if let Some(s) = &report.snapshot {
        let _ = writeln!(
            out,
            "  snapshot ({}): {} rows, {} invalid, {} duplicate",
            s.format, s.rows, s.invalid_rows, s.duplicate_rows
        );
    }
    let t = &report.totals;
    let _ = writeln!(
        out,
        "  {} customers, {} fields checked: {} in sync, {} in flight, {} findings; exceptions {} opened, {} closed",
        t.customers_checked,
        t.fields_checked,
        t.in_sync,
        t.in_flight,
        t.findings,
        t.exceptions_opened,
        t.exceptions_closed
    );
    for c in &report.consumers {
        let _ = writeln!(
            out,
            "\n  {} (SLA {} s): {} customers, {} fields, {} in sync, {} in flight",
            c.consumer_id,
            c.sla_secs,
            c.customers_checked,
            c.fields_checked,
            c.in_sync,
            c.in_flight
        );
        if c.counts.is_empty() {
            let _ = writeln!(out, "    no findings");
        }
        for (kind, n) in &c.counts {
            let _ = write!(out, "    {kind:<24} {n:>8}");
            if let Some(e) = c.examples.get(kind).and_then(|e| e.first()) {
                let field = if e.field.is_empty() { "-" } else { &e.field };
                let _ = write!(out, "   e.g. customer {} field {field}", e.customer_id);
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Erasure scrubs stored reports without knowing this crate: the store relies on the
    /// serialised shape (`consumers[].examples.<kind>[].customer_id`), which this pins.
    #[test]
    fn the_store_finds_and_drops_a_customers_examples() {
        let mut section = ConsumerReport::new("crm", 300);
        let detail = serde_json::json!({"record": {"value_hash": "sha256:00"}});
        section.count("divergent", "erased-one", "email", &detail);
        section.count("divergent", "kept-one", "email", &detail);
        section.count("stale", "erased-one", "phone", &detail);
        let mut report = Report {
            consumers: vec![section],
            ..Report::default()
        };
        report.total();
        let mut stored = serde_json::to_value(&report).unwrap();
        assert!(idledger_store::runs::drop_examples(&mut stored, |c| c == "erased-one"));
        let scrubbed: Report = serde_json::from_value(stored).unwrap();
        let examples = &scrubbed.consumers[0].examples;
        let left: Vec<(&str, &str)> = examples
            .iter()
            .flat_map(|(kind, list)| {
                list.iter()
                    .map(move |e| (kind.as_str(), e.customer_id.as_str()))
            })
            .collect();
        assert_eq!(left, [("divergent", "kept-one")]);
        assert_eq!(scrubbed.consumers[0].counts, report.consumers[0].counts);
        assert_eq!(scrubbed.totals, report.totals);
    }
}
