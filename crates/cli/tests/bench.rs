//! `idledger bench` on the real binary with real PostgreSQL and NATS: the server under test
//! is a `serve` child whose figures are reported apart, and no child outlives the bench. A
//! test binary of its own: cargo runs test binaries one after another, so the benchmark's
//! load does not compete with the other CLI tests' (its seeding timed out on a pool
//! connection when it did).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Variables that would point the binary somewhere else than the test's own directory.
const CONFIG_VARS: [&str; 7] = [
    "DATABASE_URL",
    "IDLEDGER__DATABASE_URL",
    "IDLEDGER__DATA_DIR",
    "IDLEDGER__MASTER_KEY",
    "IDLEDGER__MASTER_KEY_FILE",
    "IDLEDGER__POLICY",
    "RUST_LOG",
];

/// A directory under the system's temp dir, removed when the test ends.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let unique = format!(
            "idledger-bench-test-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `idledger bench <args…>` with a clean configuration environment, in `dir`.
fn bench_command(dir: &TempDir, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idledger"));
    for var in CONFIG_VARS {
        command.env_remove(var);
    }
    let out = dir.path().join("reports");
    command
        .current_dir(dir.path())
        .args(["bench", "--smoke", "--out"])
        .arg(out)
        .args(["--database", &idledger_testkit::admin_url()])
        .args(["--nats-url", &nats_url()])
        .args(args);
    command
}

/// The shared NATS server's URL (`IDLEDGER_TEST_NATS_URL`, else the local default).
fn nats_url() -> String {
    std::env::var("IDLEDGER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Whether `pid` is a live `idledger serve` (not a zombie; a reused pid runs something else).
fn serve_alive(pid: u64) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let running = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    running
        && String::from_utf8_lossy(&cmdline)
            .split('\0')
            .any(|a| a == "serve")
}

/// The pids of the live `idledger serve` processes whose parent is `parent`.
fn serve_children(parent: u32) -> Vec<u64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["PPid:", &parent.to_string()])
        })
        .filter(|pid| serve_alive(*pid))
        .collect()
}

/// The bench drives `idledger serve` as a child process, reports its CPU per command apart
/// from PostgreSQL's and its own, and serve's peak memory, and leaves no child behind.
#[test]
fn bench_smoke_runs_serve_in_its_own_process_and_reports_it_apart() {
    let dir = TempDir::new("smoke");
    let out = dir.path().join("reports");
    let run = bench_command(&dir, &["--duration", "1"]).output().unwrap();
    assert_eq!(
        run.status.code(),
        Some(0),
        "the smoke bench failed (it needs PostgreSQL at {} and NATS at {}; start them with \
         `bash scripts/services.sh`):\n{}",
        idledger_testkit::admin_url(),
        nats_url(),
        String::from_utf8_lossy(&run.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    // serve alone: its peak memory, and the target it is held to.
    let serve_peak = report["serve_peak_memory_kib"].as_u64().unwrap();
    assert!(serve_peak > 1024, "{serve_peak}");
    assert!(report["bench_peak_memory_kib"].as_u64().unwrap() > 0);
    assert!(
        report["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["target"]
                .as_str()
                .unwrap()
                .starts_with("serve alone <= 200 MiB")),
        "{}",
        report["targets"]
    );
    // The CPU split, per phase: serve, PostgreSQL (none on SQLite) and the bench itself.
    let phases = [
        (&report["commands_postgres"]["resources"], true),
        (&report["commands_sqlite"]["resources"], false),
        (&report["commit_to_consumer"]["resources"], true),
        (&report["decisions"]["single"][0]["resources"], true),
        (&report["decisions"]["batch"]["resources"], true),
    ];
    for (r, postgres) in phases {
        assert!(r["operations"].as_u64().unwrap() > 0, "{r}");
        for figure in [
            "serve_cpu_seconds",
            "serve_cpu_ms_per_operation",
            "bench_cpu_seconds",
        ] {
            assert!(
                r[figure].as_f64().is_some_and(|s| s >= 0.0),
                "{figure}: {r}"
            );
        }
        assert_eq!(r["postgres_cpu_ms_per_operation"].is_f64(), postgres, "{r}");
        assert!(r["serve_peak_memory_kib"].as_u64().unwrap() > 0, "{r}");
    }
    // The server did the work: it used CPU time for the commands, apart from the bench's.
    let commands = &report["commands_postgres"]["resources"];
    assert!(
        commands["serve_cpu_seconds"].as_f64().unwrap() > 0.0,
        "{commands}"
    );
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "## CPU per operation",
        "serve ms/op",
        "`serve` alone, peak resident",
    ] {
        assert!(markdown.contains(needle), "{needle} not in:\n{markdown}");
    }
    // Three children (PostgreSQL, SQLite, reads), each logged, killed, and none left running.
    let children = report["serve_processes"].as_array().unwrap();
    let names: Vec<&str> = children
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["postgres", "sqlite", "reads"]);
    for child in children {
        assert_eq!(child["ended"], "killed by the bench", "{child}");
        assert!(
            out.join(format!("serve-{}.log", child["name"].as_str().unwrap()))
                .exists()
        );
        let pid = child["pid"].as_u64().unwrap();
        assert!(!serve_alive(pid), "serve (pid {pid}) survived the bench");
    }
}

/// SIGTERM (or Ctrl-C) in the middle of a run stops it, and its `serve` child with it.
#[test]
fn an_interrupted_bench_leaves_no_serve_behind() {
    use std::io::BufRead as _;

    let dir = TempDir::new("interrupted");
    let mut bench = bench_command(&dir, &["--duration", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = bench.stderr.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = lines.send(line.unwrap_or_default());
        }
    });
    // Once the PostgreSQL commands phase runs, its serve child is up.
    let mut log = String::new();
    while !log.contains("commands over HTTP on PostgreSQL") {
        match seen.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(line) => log.push_str(&format!("{line}\n")),
            Err(_) => {
                let _ = bench.kill();
                panic!("the bench did not reach its commands phase:\n{log}");
            }
        }
    }
    let children = serve_children(bench.id());
    assert_eq!(children.len(), 1, "{children:?}\n{log}");
    let signalled = Command::new("kill")
        .args(["-TERM", &bench.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = bench.wait().unwrap();
    while let Ok(line) = seen.recv_timeout(std::time::Duration::from_secs(5)) {
        log.push_str(&format!("{line}\n"));
    }
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("interrupted"), "{log}");
    assert!(
        !serve_alive(children[0]),
        "serve (pid {}) survived the bench",
        children[0]
    );
}
