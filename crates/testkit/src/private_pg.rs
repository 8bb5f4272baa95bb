//! A PostgreSQL server of a test's own, on a free port, that the test may stop and start
//! (outages, restarts, TLS) without touching the machine's shared server.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::certs::certificate_authority;

/// A throwaway PostgreSQL cluster in a temporary directory, stopped when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    tls: bool,
}

/// File names, in the cluster's directory, of the TLS material [`PrivatePostgres::start_tls`]
/// makes.
const SERVER_CERT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const CA_CERT: &str = "ca.pem";
const OTHER_CA_CERT: &str = "other-ca.pem";

impl PrivatePostgres {
    /// Creates a cluster (`initdb`, trust authentication) and starts it. Fails the test with
    /// what is missing if PostgreSQL's server binaries are not installed.
    pub fn start() -> Self {
        Self::create(false)
    }

    /// Like [`start`](Self::start), with TLS on (`ssl = on`): the server's certificate names
    /// `localhost` only (not `127.0.0.1`, so a test can tell `verify-full` from `verify-ca`)
    /// and is signed by a CA made for this server alone ([`ca_cert`](Self::ca_cert)). Clients
    /// may still connect without TLS.
    pub fn start_tls() -> Self {
        Self::create(true)
    }

    fn create(tls: bool) -> Self {
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
            tls,
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
        if tls {
            this.write_tls_material();
        }
        this.start_server();
        this
    }

    /// The PEM certificate of the CA that signed this server's certificate.
    pub fn ca_cert(&self) -> PathBuf {
        assert!(
            self.tls,
            "ca_cert: this server was not started with start_tls"
        );
        self.dir.path().join(CA_CERT)
    }

    /// The PEM certificate of a CA that did not sign this server's certificate.
    pub fn other_ca_cert(&self) -> PathBuf {
        assert!(
            self.tls,
            "other_ca_cert: this server was not started with start_tls"
        );
        self.dir.path().join(OTHER_CA_CERT)
    }

    /// A CA, a server certificate it signs, and an unrelated CA, written beside the data.
    fn write_tls_material(&self) {
        let ca = certificate_authority("idledger test CA");
        let other_ca = certificate_authority("idledger unrelated test CA");
        let server_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "idledger test server");
        let server = params.signed_by(&server_key, &ca).unwrap();
        let dir = self.dir.path();
        self.write_private(&dir.join(SERVER_CERT), &server.pem());
        // PostgreSQL refuses a key file others may read.
        self.write_private(&dir.join(SERVER_KEY), &server_key.serialize_pem());
        std::fs::write(dir.join(CA_CERT), ca.pem()).unwrap();
        std::fs::write(dir.join(OTHER_CA_CERT), other_ca.pem()).unwrap();
    }

    /// Writes a file only the server's user may read.
    fn write_private(&self, path: &Path, contents: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if is_root() {
            std::os::unix::fs::chown(path, Some(postgres_uid()), None).unwrap();
        }
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
        let dir = self.dir.path();
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            dir.display()
        );
        if self.tls {
            options.push_str(&format!(
                " -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
                dir.join(SERVER_CERT).display(),
                dir.join(SERVER_KEY).display()
            ));
        }
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

/// A self-signed CA that can sign certificates.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
