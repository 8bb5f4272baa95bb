//! The server under test as its own process: `idledger serve` started by the bench on a
//! scratch database and a free port of 127.0.0.1, so its CPU time and memory are its own.
//!
//! The child is killed when its handle is dropped — at the end of its phases, on an error, on
//! a panic, or when the run is interrupted (Ctrl-C drops the run) — and waited for, so no
//! process outlives the bench. Its stderr (its logs) goes to a file in the report directory.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::Serialize;

use crate::error::{BenchError, Step as _};
use crate::procfs;

/// How long `serve` may take to open (and migrate) its database and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one `idledger serve`.
#[derive(Debug)]
pub struct ServeCommand<'a> {
    /// The `idledger` binary (the bench's own, `std::env::current_exe()`).
    pub binary: &'a Path,
    /// What the child is for, in file names and messages: `postgres`, `sqlite`, `reads`.
    pub name: &'static str,
    pub database_url: &'a str,
    /// The master key the bench generated for the run (64 hex characters).
    pub master_key_hex: &'a str,
    /// NATS for the relay; `None` runs it without one (`--no-relay`).
    pub nats_url: Option<&'a str>,
    /// The `[nats]` stream names, as a configuration file.
    pub config_file: Option<&'a Path>,
    /// Its working directory (nothing is written there).
    pub work_dir: &'a Path,
    /// Where its stderr goes.
    pub log: PathBuf,
}

/// A running `idledger serve`. Dropping it kills the process and waits for it.
#[derive(Debug)]
pub struct ServeProcess {
    child: Child,
    pid: u32,
    name: &'static str,
    log: PathBuf,
    /// Set once the process is known to have ended.
    ended: Option<String>,
}

/// What the report keeps of one `serve` process.
#[derive(Debug, Clone, Serialize)]
pub struct ServeProcessReport {
    pub name: &'static str,
    pub pid: u32,
    /// Its peak resident memory (`VmHWM`) over its whole life, KiB.
    pub peak_memory_kib: Option<u64>,
    /// Its stderr: its own logs.
    pub log: PathBuf,
    /// `killed by the bench`, or how it ended on its own (which fails the run).
    pub ended: String,
}

impl ServeProcess {
    /// Starts `serve` and returns it with the address it listens on, once it does.
    pub fn start(command: &ServeCommand<'_>) -> Result<(Self, String), BenchError> {
        let log = std::fs::File::create(&command.log)
            .step(format!("cannot create {}", command.log.display()))?;
        let mut cmd = Command::new(command.binary);
        cmd.arg("serve")
            // Port 0: the kernel picks a free port; serve prints the address it got.
            .args(["--listen", "127.0.0.1:0"])
            // The bench measures the API and the relay: the schedules would add work at
            // moments of their own, and a per-token quota would cap the load.
            .args(["--reconcile-every", "0", "--retention-every", "0"])
            .args(["--checkpoint-every", "0"])
            .args(["--token-rate", "0", "--token-max-in-flight", "0"])
            .current_dir(command.work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        match command.nats_url {
            Some(url) => cmd.args(["--nats-url", url]),
            None => cmd.arg("--no-relay"),
        };
        if let Some(file) = command.config_file {
            cmd.arg("--config").arg(file);
        }
        // Only what the bench says: not the operator's configuration of another server.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("IDLEDGER__")) || key == "DATABASE_URL" {
                cmd.env_remove(key);
            }
        }
        // In the environment, not the command line: a URL may hold a password, and any
        // user may read a process's command line.
        cmd.env("IDLEDGER__DATABASE_URL", command.database_url)
            .env("IDLEDGER__MASTER_KEY", command.master_key_hex);
        let mut child = cmd
            .spawn()
            .step(format!("cannot start {} serve", command.binary.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take();
        let mut process = Self {
            child,
            pid,
            name: command.name,
            log: command.log.clone(),
            ended: None,
        };
        let Some(stdout) = stdout else {
            return Err(BenchError::Failed(
                "serve's stdout is not a pipe".to_owned(),
            ));
        };
        // serve's first line names its address; the rest is read and dropped, so that serve
        // never blocks on a full pipe.
        let (found, address) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout);
            let mut line = String::new();
            while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                if let Some(address) = serving_address(&line) {
                    let _ = found.send(address);
                }
                line.clear();
            }
            let _ = lines.into_inner().read_to_end(&mut Vec::new());
        });
        match address.recv_timeout(START_TIMEOUT) {
            Ok(address) => Ok((process, address)),
            Err(_) => {
                let how = process
                    .exit_status()
                    .unwrap_or_else(|| format!("did not listen within {START_TIMEOUT:?}"));
                Err(process.failed(&how))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds it has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        procfs::cpu_seconds(self.pid)
    }

    /// Its peak resident memory so far, KiB.
    pub fn peak_memory_kib(&self) -> Option<u64> {
        procfs::peak_memory_kib(self.pid)
    }

    /// An error unless it is still running: a server that died mid-phase measured nothing.
    pub fn check_running(&mut self) -> Result<(), BenchError> {
        match self.exit_status() {
            None => Ok(()),
            Some(how) => Err(self.failed(&how)),
        }
    }

    /// Kills it (after reading its peak memory) and waits for it.
    pub fn stop(mut self) -> Result<ServeProcessReport, BenchError> {
        self.check_running()?;
        let peak_memory_kib = self.peak_memory_kib();
        self.kill();
        Ok(ServeProcessReport {
            name: self.name,
            pid: self.pid,
            peak_memory_kib,
            log: self.log.clone(),
            ended: self.ended.clone().unwrap_or_default(),
        })
    }

    /// How it ended, if it has.
    fn exit_status(&mut self) -> Option<String> {
        if self.ended.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.ended = Some(format!("exited on its own ({status})"));
        }
        self.ended.clone()
    }

    fn kill(&mut self) {
        if self.ended.is_none() {
            // SIGKILL: nothing of the scratch server is worth a graceful stop.
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.ended = Some("killed by the bench".to_owned());
        }
    }

    /// The error for a server that ended or never listened, with the end of its log.
    fn failed(&mut self, how: &str) -> BenchError {
        self.kill();
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        BenchError::Failed(format!(
            "idledger serve ({}, pid {}) {how}; its log is {}{}{}",
            self.name,
            self.pid,
            self.log.display(),
            if tail.is_empty() { "" } else { ", ending:\n" },
            tail.join("\n")
        ))
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The address of serve's `idledger <version> serving http://<addr>` line.
fn serving_address(line: &str) -> Option<String> {
    let (_, url) = line.split_once(" serving ")?;
    let url = url.trim();
    url.starts_with("http://").then(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_address_comes_from_serves_first_line() {
        assert_eq!(
            super::serving_address("idledger 0.1.0 serving http://127.0.0.1:40123\n").as_deref(),
            Some("http://127.0.0.1:40123")
        );
        assert_eq!(super::serving_address("  store     postgres://x"), None);
    }
}
