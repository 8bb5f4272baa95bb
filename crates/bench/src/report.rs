//! The report: every figure with its baseline and ratio, the targets, the machine; as JSON and
//! as Markdown.

use std::fmt::Write as _;

use serde::Serialize;

use crate::BenchConfig;
use crate::baseline::Throughput;
use crate::delivery::CommitToConsumer;
use crate::error::{BenchError, Step as _};
use crate::load::LoadResult;
use crate::process::ServeProcessReport;
use crate::procfs::kib_of;
use crate::rebuild::{Reads, RebuildResult};
use crate::scratch::Scratch;
use crate::usage::Resources;

/// The design brief's bound on `serve`'s resident memory under the commands load.
const SERVE_MEMORY_TARGET_KIB: u64 = 200 * 1024;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub idledger_version: &'static str,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub smoke: bool,
    pub elapsed_seconds: f64,
    pub machine: Machine,
    pub settings: Settings,
    pub baselines: Baselines,
    pub commands_postgres: LoadResult,
    /// Not measured when driving a `--target` (one server, on PostgreSQL).
    pub commands_sqlite: Option<LoadResult>,
    pub commit_to_consumer: CommitToConsumer,
    pub decisions: crate::decisions::Decisions,
    pub rebuild: RebuildResult,
    pub reads: Reads,
    /// `serve` alone: its peak resident memory (VmHWM) at the end of the commands phases
    /// (the larger of PostgreSQL's and SQLite's), KiB. `None` on a `--target`.
    pub serve_peak_memory_kib: Option<u64>,
    /// VmHWM of the bench process (load generator, NATS subscriber, the rebuild's fold), KiB.
    pub bench_peak_memory_kib: Option<u64>,
    /// The `idledger serve` children, each killed when its phases were done.
    pub serve_processes: Vec<ServeProcessReport>,
    pub targets: Vec<Target>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: Option<String>,
    pub memory_kib: Option<u64>,
    pub kernel: Option<String>,
    pub postgres_version: String,
    pub synchronous_commit: String,
}

impl Machine {
    pub async fn probe(scratch: &Scratch) -> Result<Self, BenchError> {
        let show = |what: &'static str| async move {
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {what}")))
                .fetch_one(scratch.admin())
                .await
                .step(format!("cannot read the server's {what}"))
        };
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned()),
            memory_kib: kib_of(&meminfo, "MemTotal:"),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|k| k.trim().to_owned()),
            postgres_version: show("server_version").await?,
            synchronous_commit: show("synchronous_commit").await?,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub clients: usize,
    pub phase_seconds: f64,
    pub paced_rate: u32,
    pub rebuild_events: u64,
    pub read_events: u64,
    pub read_samples: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baselines {
    pub postgres_insert: Throughput,
    pub sqlite_insert: Throughput,
}

/// One target of the design brief and where this run stands against it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub target: &'static str,
    pub measured: String,
    pub met: bool,
}

impl Report {
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per phase of the run"
    )]
    pub fn new(
        config: &BenchConfig,
        machine: Machine,
        baselines: Baselines,
        commands_postgres: LoadResult,
        commands_sqlite: Option<LoadResult>,
        commit_to_consumer: CommitToConsumer,
        decisions: crate::decisions::Decisions,
        rebuild: RebuildResult,
        reads: Reads,
    ) -> Self {
        Self {
            idledger_version: env!("CARGO_PKG_VERSION"),
            started_at: chrono::Utc::now(),
            smoke: config.smoke,
            elapsed_seconds: 0.0,
            machine,
            settings: Settings {
                clients: config.clients,
                phase_seconds: config.duration.as_secs_f64(),
                paced_rate: config.rate,
                rebuild_events: config.rebuild_events,
                read_events: config.read_events,
                read_samples: config.read_samples,
            },
            baselines,
            serve_peak_memory_kib: std::iter::once(&commands_postgres)
                .chain(&commands_sqlite)
                .filter_map(|c| c.resources.serve_peak_memory_kib)
                .max(),
            commands_postgres,
            commands_sqlite,
            commit_to_consumer,
            decisions,
            rebuild,
            reads,
            bench_peak_memory_kib: None,
            serve_processes: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Answers the run did not expect: a benchmark that got them measured something else.
    pub fn unexpected(&self) -> Vec<String> {
        let mut out = Vec::new();
        let none = None;
        let sqlite = self.commands_sqlite.as_ref();
        for (what, errors, first) in [
            (
                "commands on PostgreSQL",
                self.commands_postgres.errors,
                &self.commands_postgres.first_error,
            ),
            (
                "commands on SQLite",
                sqlite.map_or(0, |c| c.errors),
                sqlite.map_or(&none, |c| &c.first_error),
            ),
            (
                "commit-to-consumer commands",
                self.commit_to_consumer.errors,
                &self.commit_to_consumer.first_error,
            ),
        ] {
            if errors > 0 {
                out.push(format!(
                    "{what}: {errors} unexpected answers, the first: {}",
                    first.as_deref().unwrap_or("?")
                ));
            }
        }
        let d = &self.decisions;
        for p in d.single.iter().chain(std::iter::once(&d.batch)) {
            if p.errors > 0 {
                out.push(format!(
                    "decisions at {}/s: {} unexpected answers, the first: {}",
                    p.target_rate,
                    p.errors,
                    p.first_error.as_deref().unwrap_or("?")
                ));
            }
        }
        if self.commit_to_consumer.missing > 0 {
            out.push(format!(
                "commit-to-consumer: {} acknowledged changes never reached the NATS subscriber",
                self.commit_to_consumer.missing
            ));
        }
        out
    }

    pub fn evaluate_targets(&mut self) {
        let c = &self.commands_postgres;
        let d = &self.commit_to_consumer;
        let r = &self.rebuild;
        let reads = &self.reads;
        let read_p99 = reads.history.p99_ms.max(reads.as_of.p99_ms);
        self.targets = vec![
            Target {
                target: "commands/s over HTTP (PostgreSQL) >= 1.0x raw single-row INSERT tps",
                measured: format!("{:.2}x", c.ratio_to_insert),
                met: c.ratio_to_insert >= 1.0,
            },
            Target {
                target: "commit-to-consumer p99 <= 20 ms at 1,000 commands/s",
                measured: format!(
                    "p99 {:.1} ms at {:.0} commands/s",
                    d.latency.p99_ms, d.achieved_rate
                ),
                met: d.latency.p99_ms <= 20.0 && d.achieved_rate >= 990.0 && d.missing == 0,
            },
            Target {
                target: "decision p99 <= 5 ms at 1,000 decisions/s (fresh state, over HTTP)",
                measured: self.decisions.at(1000).map_or_else(
                    || "not measured at 1,000/s".to_owned(),
                    |p| {
                        format!(
                            "p99 {:.2} ms at {:.0} decisions/s",
                            p.latency.p99_ms, p.achieved_rate
                        )
                    },
                ),
                met: self.decisions.at(1000).is_some_and(|p| {
                    p.latency.p99_ms <= 5.0 && p.achieved_rate >= 990.0 && p.errors == 0
                }),
            },
            Target {
                target: "serve alone <= 200 MiB resident under the commands phase",
                measured: self.serve_peak_memory_kib.map_or_else(
                    || "not measured (a --target server)".to_owned(),
                    |k| format!("{} MiB peak", k / 1024),
                ),
                met: self
                    .serve_peak_memory_kib
                    .is_some_and(|k| k <= SERVE_MEMORY_TARGET_KIB),
            },
            Target {
                target: "rebuild >= 100,000 events/s",
                measured: format!("{:.0} events/s", r.rebuild_events_per_second),
                met: r.rebuild_events_per_second >= 100_000.0,
            },
            Target {
                target: "history / as-of read p99 <= 5 ms (customer with 1,000 events)",
                measured: format!(
                    "history {:.2} ms, as-of {:.2} ms",
                    reads.history.p99_ms, reads.as_of.p99_ms
                ),
                met: read_p99 <= 5.0 && reads.customer_events >= 1000,
            },
        ];
    }

    pub fn to_json(&self) -> Result<String, BenchError> {
        serde_json::to_string_pretty(self).step("cannot write the report as JSON")
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let _ = self.write_markdown(&mut s);
        s
    }

    fn write_markdown(&self, s: &mut String) -> std::fmt::Result {
        let m = &self.machine;
        let b = &self.baselines;
        writeln!(
            s,
            "# idledger benchmark{}\n",
            if self.smoke {
                " (smoke run: sizes too small to mean anything)"
            } else {
                ""
            }
        )?;
        writeln!(
            s,
            "{} — idledger {}, {} CPUs ({}), {} MiB RAM, kernel {}, PostgreSQL {} \
             (synchronous_commit = {}). {} clients, {:.0} s per timed phase; run took {:.0} s.\n",
            self.started_at.format("%Y-%m-%d %H:%M UTC"),
            self.idledger_version,
            m.cpus,
            m.cpu_model.as_deref().unwrap_or("unknown model"),
            m.memory_kib.unwrap_or(0) / 1024,
            m.kernel.as_deref().unwrap_or("?"),
            m.postgres_version,
            m.synchronous_commit,
            self.settings.clients,
            self.settings.phase_seconds,
            self.elapsed_seconds,
        )?;
        writeln!(s, "## Targets\n")?;
        writeln!(s, "| target | measured | met |\n| --- | --- | --- |")?;
        for t in &self.targets {
            writeln!(
                s,
                "| {} | {} | {} |",
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            )?;
        }
        writeln!(
            s,
            "\n## Throughput (ratios to the same engine's raw INSERT)\n"
        )?;
        writeln!(
            s,
            "| what | per second | ratio | p50 ms | p90 ms | p99 ms | max ms |\n\
             | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        let row = |s: &mut String,
                   what: &str,
                   rate: f64,
                   ratio: Option<f64>,
                   l: &crate::stats::Latency| {
            writeln!(
                s,
                "| {what} | {rate:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                ratio.map_or("1 (baseline)".to_owned(), |r| format!("{r:.2}x")),
                l.p50_ms,
                l.p90_ms,
                l.p99_ms,
                l.max_ms
            )
        };
        row(
            s,
            "PostgreSQL raw INSERT",
            b.postgres_insert.per_second,
            None,
            &b.postgres_insert.latency,
        )?;
        let c = &self.commands_postgres;
        row(
            s,
            "PostgreSQL commands over HTTP",
            c.commands_per_second,
            Some(c.ratio_to_insert),
            &c.command_latency,
        )?;
        row(
            s,
            "SQLite raw INSERT",
            b.sqlite_insert.per_second,
            None,
            &b.sqlite_insert.latency,
        )?;
        if let Some(q) = &self.commands_sqlite {
            row(
                s,
                "SQLite commands over HTTP",
                q.commands_per_second,
                Some(q.ratio_to_insert),
                &q.command_latency,
            )?;
        }
        write!(
            s,
            "\nPostgreSQL: {} commands ({} accepted, {} refused as intended, {} unexpected) and \
             {} reads (p99 {:.2} ms) in {:.1} s.",
            c.commands, c.accepted, c.refused, c.errors, c.reads, c.read_latency.p99_ms, c.seconds,
        )?;
        match &self.commands_sqlite {
            Some(q) => writeln!(
                s,
                " SQLite: {} commands ({} accepted, {} refused, {} unexpected) and {} reads \
                 (p99 {:.2} ms).",
                q.commands, q.accepted, q.refused, q.errors, q.reads, q.read_latency.p99_ms,
            )?,
            None => writeln!(s, " SQLite: not measured (a --target server).")?,
        }
        self.write_resources(s)?;
        let d = &self.commit_to_consumer;
        writeln!(s, "\n## Commit to consumer (PostgreSQL, relay → NATS)\n")?;
        writeln!(
            s,
            "Paced at {} commands/s, reached {:.0}/s; {} acknowledged, {} received, {} missing, \
             {} arrived before the HTTP answer. Command latency p99 {:.2} ms.\n",
            d.target_rate,
            d.achieved_rate,
            d.acknowledged,
            d.received,
            d.missing,
            d.before_ack,
            d.command_latency.p99_ms
        )?;
        writeln!(
            s,
            "| p50 ms | p90 ms | p99 ms | max ms |\n| --- | --- | --- | --- |\n| {:.2} | {:.2} | {:.2} | {:.2} |",
            d.latency.p50_ms, d.latency.p90_ms, d.latency.p99_ms, d.latency.max_ms
        )?;
        let q = &self.decisions;
        writeln!(
            s,
            "\n## Decisions (PostgreSQL, `POST /v1/decisions`, fresh state)\n"
        )?;
        writeln!(
            s,
            "| question | paced at /s | reached /s | p50 ms | p90 ms | p99 ms | max ms | unexpected |\n\
             | --- | --- | --- | --- | --- | --- | --- | --- |"
        )?;
        for (what, p) in q
            .single
            .iter()
            .map(|p| ("one customer".to_owned(), p))
            .chain(std::iter::once((
                format!("batch of {}", q.batch_size),
                &q.batch,
            )))
        {
            writeln!(
                s,
                "| {what} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
                p.target_rate,
                p.achieved_rate,
                p.latency.p50_ms,
                p.latency.p90_ms,
                p.latency.p99_ms,
                p.latency.max_ms,
                p.errors
            )?;
        }
        let r = &self.rebuild;
        writeln!(s, "\n## Rebuild (PostgreSQL)\n")?;
        writeln!(
            s,
            "{} events of {} customers (seeded through the ledger at {:.0} events/s).\n\n\
             | what | events/s | ratio |\n| --- | --- | --- |\n\
             | raw paged scan of `events` | {:.0} | 1 (baseline) |\n\
             | `rebuild` (decrypt, fold, compare, swap) | {:.0} | {:.3}x |\n\n\
             The rebuilt projection was {}identical to the live one.",
            r.events,
            r.customers,
            r.seed_events_per_second,
            r.scan_events_per_second,
            r.rebuild_events_per_second,
            r.ratio_to_scan,
            if r.identical { "" } else { "NOT " }
        )?;
        let x = &self.reads;
        writeln!(
            s,
            "\n## Reads (PostgreSQL, customer with {} events)\n",
            x.customer_events
        )?;
        writeln!(
            s,
            "| read | events | p50 ms | p99 ms | max ms | raw SELECT p99 ms | ratio (p99) |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n\
             | history of `name.given` over HTTP | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}x |\n\
             | record as of mid-life over HTTP | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}x |",
            x.history_events,
            x.history.p50_ms,
            x.history.p99_ms,
            x.history.max_ms,
            x.raw_history.p99_ms,
            x.history_ratio_to_raw,
            x.as_of_events,
            x.as_of.p50_ms,
            x.as_of.p99_ms,
            x.as_of.max_ms,
            x.raw_as_of.p99_ms,
            x.as_of_ratio_to_raw
        )?;
        let mib = |k: Option<u64>| k.map_or("unknown".to_owned(), |k| format!("{} MiB", k / 1024));
        writeln!(
            s,
            "\n## Memory\n\n`serve` alone, peak resident (VmHWM) under the commands phase: {}. \
             The bench process (load generator, NATS subscriber, the rebuild's fold): {}.",
            match self.serve_peak_memory_kib {
                Some(k) => format!("{} MiB", k / 1024),
                None => "not measured (a --target server)".to_owned(),
            },
            mib(self.bench_peak_memory_kib),
        )?;
        if !self.serve_processes.is_empty() {
            writeln!(s)?;
        }
        for p in &self.serve_processes {
            writeln!(
                s,
                "- `serve` for {} (pid {}): peak {} over its life, {}; log `{}`",
                p.name,
                p.pid,
                mib(p.peak_memory_kib),
                p.ended,
                p.log.display()
            )?;
        }
        Ok(())
    }

    /// Where the CPU went in each HTTP phase, per command or decision.
    fn write_resources(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "\n## CPU per operation (serve, PostgreSQL, bench apart)\n\n\
             CPU time (user + system) from `/proc` before and after each phase, divided by its \
             operations; in brackets the mean cores busy. PostgreSQL counts the backends of the \
             phase's database and the server's shared processes (on a `--target`: every process \
             of the server).\n"
        )?;
        writeln!(
            s,
            "| phase | operations | serve ms/op | PostgreSQL ms/op | bench ms/op |\n\
             | --- | --- | --- | --- | --- |"
        )?;
        let cell = |per: Option<f64>, total: Option<f64>, wall: f64| match per {
            Some(per) => format!(
                "{per:.3} ({:.2})",
                Resources::cores(total, wall).unwrap_or(0.0)
            ),
            None => "—".to_owned(),
        };
        let backlog = self
            .commands_postgres
            .relay_backlog_seconds
            .map_or(String::new(), |s| {
                format!(" (and the relay's backlog: {s:.1} s)")
            });
        let mut rows: Vec<(String, &Resources)> = vec![(
            format!("commands, PostgreSQL{backlog}"),
            &self.commands_postgres.resources,
        )];
        if let Some(q) = &self.commands_sqlite {
            rows.push(("commands, SQLite".to_owned(), &q.resources));
        }
        rows.push((
            format!(
                "commit-to-consumer at {}/s",
                self.commit_to_consumer.target_rate
            ),
            &self.commit_to_consumer.resources,
        ));
        for p in &self.decisions.single {
            rows.push((format!("decisions at {}/s", p.target_rate), &p.resources));
        }
        rows.push((
            format!("decisions in batches of {}", self.decisions.batch_size),
            &self.decisions.batch.resources,
        ));
        for (what, r) in rows {
            writeln!(
                s,
                "| {what} | {} | {} | {} | {} |",
                r.operations,
                cell(r.serve_cpu_ms_per_operation, r.serve_cpu_seconds, r.seconds),
                cell(
                    r.postgres_cpu_ms_per_operation,
                    r.postgres_cpu_seconds,
                    r.seconds
                ),
                cell(r.bench_cpu_ms_per_operation, r.bench_cpu_seconds, r.seconds),
            )?;
        }
        Ok(())
    }
}
