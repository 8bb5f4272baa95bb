//! A PostgreSQL server of a test's own, on a free port, that the test may stop and start
//! (outages, restarts) without touching the machine's shared server.

use std::path::PathBuf;
use std::process::Command;

/// A throwaway PostgreSQL cluster in a temporary directory, stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    /// Creates a cluster (`initdb`, trust authentication) and starts it. Fails the test with
    /// what is missing if PostgreSQL's server binaries are not installed.
    pub fn start() -> Self {
        let bin = bindir();
        let dir = tempfile::Builder::new()
            .prefix("idledger-pg-")
            .tempdir()
            .unwrap();
        // PostgreSQL refuses to run as root: run it as the `postgres` user, which must own
        // the data directory.
        if is_root() {
            std::os::unix::fs::chown(dir.path(), Some(postgres_uid()), None).unwrap();
        }
        let data = dir.path().join("data");
        let this = Self {
            port: free_port(),
            bin,
            dir,
        };
        this.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        this.start_server();
        this
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server at once (`immediate`: like a crash or a pulled cable).
    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    /// Starts the server again after [`stop`](Self::stop).
    pub fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&["start", "-w", "-o", &options, "-l", log.to_str().unwrap()]);
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// `program` from PostgreSQL's binaries, as the user that may run the server.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        };
        command.current_dir(self.dir.path());
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(data)
            .args(["stop", "-m", "immediate"])
            .output();
    }
}

/// Where PostgreSQL's server binaries are (`pg_config --bindir`).
fn bindir() -> PathBuf {
    let found = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists());
    found.unwrap_or_else(|| {
        panic!(
            "this test starts a PostgreSQL server of its own and needs its binaries (initdb, \
             pg_ctl; found through `pg_config --bindir`): install Debian's postgresql package \
             (`apt-get install -y postgresql`), or run `bash scripts/services.sh` as root"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn postgres_uid() -> u32 {
    let output = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .expect("runs id");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| {
            panic!("running as root, this test needs the `postgres` user to run PostgreSQL as")
        })
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
