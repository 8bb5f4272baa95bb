//! What a phase cost, apart per process: CPU time of `idledger serve` (API and relay), of
//! PostgreSQL and of the bench itself, read from `/proc` before and after the phase, and
//! `serve`'s peak memory at its end.

use std::time::Instant;

use serde::Serialize;

use crate::procfs::{self, PgScope};
use crate::server::Server;

/// One phase's resources. A figure is `None` where it was not measured: `serve` on a
/// `--target` (not the bench's child), PostgreSQL on SQLite or where `/proc` does not show
/// its processes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    /// The wall time metered.
    pub seconds: f64,
    /// What the per-operation figures divide by: commands, or decisions.
    pub operations: u64,
    pub serve_cpu_seconds: Option<f64>,
    pub serve_cpu_ms_per_operation: Option<f64>,
    /// The backends of the phase's database and the server's shared processes (WAL writer,
    /// checkpointer…); on a target, every process of the server.
    pub postgres_cpu_seconds: Option<f64>,
    pub postgres_cpu_ms_per_operation: Option<f64>,
    /// The load generator (and NATS subscriber): this process.
    pub bench_cpu_seconds: Option<f64>,
    pub bench_cpu_ms_per_operation: Option<f64>,
    /// `serve`'s peak resident memory (`VmHWM`) at the end of the phase: its peak since it
    /// started, this phase included. KiB.
    pub serve_peak_memory_kib: Option<u64>,
}

impl Resources {
    /// Mean cores busy over the metered time, for the report.
    pub fn cores(seconds: Option<f64>, wall: f64) -> Option<f64> {
        seconds.map(|s| crate::stats::ratio(s, wall))
    }
}

/// The counters at a phase's start.
#[derive(Debug)]
pub struct Meter {
    started: Instant,
    serve_pid: Option<u32>,
    scope: Option<PgScope>,
    serve: Option<f64>,
    postgres: Option<f64>,
    bench: Option<f64>,
}

impl Meter {
    pub fn start(server: &Server) -> Self {
        let serve_pid = server.process().map(crate::process::ServeProcess::pid);
        let scope = server.postgres_scope().cloned();
        Self {
            serve: serve_pid.and_then(procfs::cpu_seconds),
            postgres: scope.as_ref().and_then(procfs::postgres_cpu_seconds),
            bench: procfs::own_cpu_seconds(),
            started: Instant::now(),
            serve_pid,
            scope,
        }
    }

    pub fn finish(self, operations: u64) -> Resources {
        let seconds = self.started.elapsed().as_secs_f64();
        let used = |before: Option<f64>, after: Option<f64>| match (before, after) {
            // A backend that exited takes its time with it: never below zero.
            (Some(b), Some(a)) => Some((a - b).max(0.0)),
            _ => None,
        };
        let serve = used(self.serve, self.serve_pid.and_then(procfs::cpu_seconds));
        let postgres = used(
            self.postgres,
            self.scope.as_ref().and_then(procfs::postgres_cpu_seconds),
        );
        let bench = used(self.bench, procfs::own_cpu_seconds());
        let per = |s: Option<f64>| {
            s.filter(|_| operations > 0)
                .map(|s| s * 1000.0 / operations as f64)
        };
        Resources {
            seconds,
            operations,
            serve_cpu_seconds: serve,
            serve_cpu_ms_per_operation: per(serve),
            postgres_cpu_seconds: postgres,
            postgres_cpu_ms_per_operation: per(postgres),
            bench_cpu_seconds: bench,
            bench_cpu_ms_per_operation: per(bench),
            serve_peak_memory_kib: self.serve_pid.and_then(procfs::peak_memory_kib),
        }
    }
}
