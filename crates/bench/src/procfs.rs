//! What Linux's `/proc` tells about a process: CPU time used and peak resident memory, and
//! which processes are PostgreSQL's. Elsewhere (or where `/proc` hides a process) every
//! figure is `None`, and the report says "unknown".

use std::path::Path;

/// The unit of `/proc/<pid>/stat` times (`USER_HZ`): fixed at 100 by the kernel's ABI on the
/// architectures we run on, whatever the kernel's own tick rate (`getconf CLK_TCK` says so).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system, every thread) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_cpu(&stat)
}

/// CPU seconds this process has used so far.
pub fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    stat_cpu(&stat)
}

/// Peak resident memory (`VmHWM`) of a process, KiB.
pub fn peak_memory_kib(pid: u32) -> Option<u64> {
    status_kib(&format!("/proc/{pid}/status"), "VmHWM:")
}

/// Peak resident memory of this process, KiB.
pub fn own_peak_memory_kib() -> Option<u64> {
    status_kib("/proc/self/status", "VmHWM:")
}

/// Whether a process with this id exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

fn status_kib(path: &str, key: &str) -> Option<u64> {
    kib_of(&std::fs::read_to_string(path).ok()?, key)
}

/// The value of a `Key:   123 kB` line.
pub fn kib_of(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// `utime + stime` of a `/proc/<pid>/stat` line, in seconds. The command name in parentheses
/// may hold spaces and parentheses: the fields start after the last `)`.
fn stat_cpu(stat: &str) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // After the name: state (field 3), …, utime (14), stime (15).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some((tick(11)? + tick(12)?) as f64 / TICKS_PER_SECOND)
}

/// Which PostgreSQL processes a CPU figure covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgScope {
    /// The backends connected to this database, plus the server's shared processes (WAL
    /// writer, checkpointer, background writer, autovacuum, the postmaster): what the phase's
    /// database costs, without other databases' clients on a shared server.
    Database(String),
    /// Every process of the server (the target's database is not known to the bench).
    Server,
}

/// CPU seconds used so far by the PostgreSQL processes in `scope` that `/proc` shows on this
/// machine; `None` if it shows none (a server on another host, or in a hidden namespace).
///
/// Backends that exit before the phase ends take their CPU time with them (the postmaster's
/// `cutime` keeps every database's, so it cannot be split): the server's pool keeps its
/// connections open for a phase, so little is lost.
pub fn postgres_cpu_seconds(scope: &PgScope) -> Option<f64> {
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if read_trimmed(&dir.join("comm")).as_deref() != Some("postgres") {
            continue;
        }
        let title = std::fs::read(dir.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let counted = match (scope, backend_database(&title)) {
            (PgScope::Server, _) | (PgScope::Database(_), None) => true,
            (PgScope::Database(name), Some(database)) => database == name,
        };
        if counted && let Some(seconds) = cpu_seconds(pid) {
            *total.get_or_insert(0.0) += seconds;
        }
    }
    total
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// The database of a client backend, from its process title (`postgres: [cluster: ]user
/// database host(port) activity`); `None` for the server's own processes (`postgres:
/// walwriter`, the postmaster's command line), whose title has no client address.
fn backend_database(title: &str) -> Option<&str> {
    let words: Vec<&str> = title.split_whitespace().collect();
    let client = words
        .iter()
        .position(|w| *w == "[local]" || (w.contains('(') && w.ends_with(')')))?;
    // `postgres:`, the user and the database come before the client address.
    (client >= 3 && words[0] == "postgres:").then(|| words[client - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_are_read_after_the_command_name() {
        // A name with a space and a parenthesis; utime 250, stime 50, cutime 7, cstime 3.
        let stat = "42 (tokio (rt) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 9 0 1 2 3";
        assert_eq!(stat_cpu(stat), Some(3.0));
        assert_eq!(stat_cpu("42 (x) S 1"), None);
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn kib_values_are_read_from_status_lines() {
        let text = "Name:\tx\nVmHWM:\t  12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(kib_of(text, "VmHWM:"), Some(12345));
        assert_eq!(kib_of(text, "VmSwap:"), None);
    }

    #[test]
    fn backends_are_told_from_the_servers_own_processes() {
        let check = |title: &str, expect: Option<&str>| {
            assert_eq!(backend_database(title), expect, "{title}");
        };
        check(
            "postgres: 15/main: postgres idledger_bench_x_commands 127.0.0.1(51234) idle",
            Some("idledger_bench_x_commands"),
        );
        check("postgres: alice shop [local] SELECT", Some("shop"));
        check("postgres: 15/main: walwriter ", None);
        check("postgres: 15/main: autovacuum launcher ", None);
        check("/usr/lib/postgresql/15/bin/postgres -D /var/lib/x", None);
    }

    #[test]
    fn this_process_is_visible() {
        assert!(own_cpu_seconds().is_some());
        assert!(own_peak_memory_kib().is_some_and(|k| k > 0));
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
