//! The `idledger` binary, run as a user runs it, mostly against embedded SQLite stores in
//! temporary directories; the steward's `exception` commands on both engines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
            "idledger-cli-{name}-{}-{}",
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

    fn sqlite_url(&self, file: &str) -> String {
        format!("sqlite://{}", self.0.join(file).display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one run of the binary did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn success(self) -> Self {
        assert_eq!(
            self.code,
            Some(0),
            "expected success\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Refused: a usage error (2) or a failure (1).
    #[track_caller]
    fn fail(self) -> Self {
        assert!(
            matches!(self.code, Some(1 | 2)),
            "expected a refusal\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn exit(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit status {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    #[track_caller]
    fn stdout_has(self, needles: &[&str]) -> Self {
        for needle in needles {
            assert!(
                self.stdout.contains(needle),
                "stdout lacks {needle:?}:\n{}",
                self.stdout
            );
        }
        self
    }

    #[track_caller]
    fn stderr_has(self, needles: &[&str]) -> Self {
        for needle in needles {
            assert!(
                self.stderr.contains(needle),
                "stderr lacks {needle:?}:\n{}",
                self.stderr
            );
        }
        self
    }
}

/// Runs `idledger --data-dir <dir> <args…>` with a clean configuration environment.
fn idledger<S: AsRef<std::ffi::OsStr>>(dir: &TempDir, args: &[S]) -> Run {
    idledger_with_env(dir, args, &[])
}

fn idledger_with_env<S: AsRef<std::ffi::OsStr>>(
    dir: &TempDir,
    args: &[S],
    env: &[(&str, &str)],
) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idledger"));
    for var in CONFIG_VARS {
        command.env_remove(var);
    }
    command
        .env("NO_COLOR", "1")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    let Output {
        status,
        stdout,
        stderr,
    } = command.output().expect("the idledger binary runs");
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

/// Runs the demo into `demo.db` in `dir` and returns Ada's customer id.
fn demo_into(dir: &TempDir) -> (String, Run) {
    let url = dir.sqlite_url("demo.db");
    let run = idledger(dir, &["--database", &url, "demo"]).success();
    // The demo ends with the commands to explore Ada's record: "… record <id>".
    let ada = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix("idledger "))
        .find_map(|l| l.split(" record ").nth(1))
        .expect("the demo names Ada's id")
        .trim()
        .to_owned();
    (ada, run)
}

#[test]
fn demo_runs_the_scenario_and_ends_intact_and_identical() {
    let dir = TempDir::new("demo");
    let run = idledger(&dir, &["demo"]).success().stdout_has(&[
        // The scenario runs through the API server the demo starts, as token holders.
        "api              http://127.0.0.1:",
        "tokens           idp, crm, web_app, consent_portal (role source), auditor (role auditor)",
        "POST /v1/customers  as idp  Idempotency-Key: demo-1",
        "-> 201 Created; Location: /v1/customers/",
        // The CRM's overwrite: refused, recorded as a proposal, the record unchanged.
        "POST /v1/customers/{ada}/commands  as crm",
        "-> 403 not_authoritative (Forbidden)",
        "system_of_record idp",
        "proposal recorded for email",
        "the system of record is idp",
        "email now        ada@example.org (version 1, source idp, verified by idp)",
        // The email change: pending, the old address authoritative, then verified.
        "pending: email waits for verification",
        "email now        ada@example.org (version 2, source idp, verified by idp); pending: ada@analytical-engine.example",
        "ada@analytical-engine.example (version 3, source web_app, verified by web_app)",
        // Consent granted against a notice version, then withdrawn.
        "\"notice\":{\"id\":\"privacy-notice\",\"version\":\"2026-01\"",
        "status now       withdrawn",
        // A minor's consent: refused without a guardian, accepted from one.
        "-> 422 guardian_required (Unprocessable Entity)",
        "under the age of digital consent (16) in DE",
        "status now       granted",
        // Retries.
        "Idempotent-Replayed: true",
        "replayed         the first answer comes back",
        "-> 409 idempotency_conflict (Conflict)",
        // The auditor's reads: history and the record as of an instant.
        "GET /v1/customers/{ada}/fields/email/history  as auditor",
        "history of Ada's email: 4 events, oldest first",
        "ada@analytical-engine.example verified and now in effect",
        "evidence         email_link:signup-ada",
        "GET /v1/customers/{ada}?as_of=",
        "(before the change was verified)",
        "email            ada@example.org (v2); pending: ada@analytical-engine.example",
        "email            ada@analytical-engine.example (v3)",
        "consent          marketing: withdrawn",
        "The API server has stopped and the demo's tokens are revoked.",
        "the log is intact",
        "the rebuilt projection is identical to the live one",
    ]);
    // The 403 names the proposal it recorded, and the record lists that same proposal.
    let proposal = run
        .stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("proposal_id"))
        .expect("the 403 names its proposal")
        .trim();
    assert!(uuid::Uuid::parse_str(proposal).is_ok(), "{proposal}");
    assert!(
        run.stdout
            .contains(&format!("(proposal {proposal} is among them)")),
        "{}",
        run.stdout
    );
    // The history comes in order, each event with its source.
    let history: Vec<&str> = run
        .stdout
        .lines()
        .filter_map(|l| l.trim().strip_prefix('#'))
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(
        history,
        [
            "field_set",
            "value_proposed",
            "change_requested",
            "change_verified"
        ]
    );
    // A fresh file in the data directory, and a generated key only its owner can read.
    let files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("demo-") && f.ends_with(".db")),
        "{files:?}"
    );
    let key = dir.path().join("master.key");
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim().len(), 64);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Neither the key nor any token secret is ever printed.
    let hex = std::fs::read_to_string(&key).unwrap();
    assert!(!run.stdout.contains(hex.trim()) && !run.stderr.contains(hex.trim()));
    assert!(!run.stdout.contains("idl_") && !run.stderr.contains("idl_"));
}

#[test]
fn an_unexpected_http_answer_fails_the_demo_naming_the_step() {
    let dir = TempDir::new("demo-unexpected");
    // A policy under which the CRM is authoritative for email: its unverified write is then
    // refused for another reason (email needs verification), which the demo does not expect.
    let policy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/policy.toml"
    ))
    .unwrap();
    assert!(policy.contains("crm = \"propose\", cdp"));
    let policy = policy.replacen("crm = \"propose\", cdp", "crm = \"authoritative\", cdp", 1);
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).unwrap();
    let url = dir.sqlite_url("demo.db");
    let run = idledger(
        &dir,
        &[
            "--database",
            &url,
            "--policy",
            path.to_str().unwrap(),
            "demo",
        ],
    )
    .exit(1)
    .stderr_has(&[
        "step 2: POST /v1/customers/{ada}/commands as crm: expected 403 not_authoritative, \
         got 422 Unprocessable Entity: {",
        "\"code\":\"invalid_transition\"",
    ]);
    assert!(!run.stdout.contains("The API server has stopped"));
    // The demo's tokens do not outlive it, even when it fails.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let (tokens, live): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE revoked_at IS NULL) FROM api_tokens",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        assert_eq!((tokens, live), (5, 0));
    });
}

#[test]
fn demo_refuses_a_database_that_holds_events() {
    let dir = TempDir::new("demo-twice");
    demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    idledger(&dir, &["--database", &url, "demo"])
        .exit(1)
        .stderr_has(&["needs an empty database", "holds 19 events"]);
}

#[test]
fn the_demo_takes_a_fresh_store_whatever_database_url_says_and_others_say_which_they_use() {
    let dir = TempDir::new("demo-database-url");
    // A shell set up for another tool: no server listens there, so using it would fail.
    let elsewhere = [(
        "DATABASE_URL",
        "postgres://someone:secret@127.0.0.1:1/other",
    )];
    let run = idledger_with_env(&dir, &["demo"], &elsewhere).success();
    assert!(
        run.stdout.contains("demo-"),
        "a fresh demo file: {}",
        run.stdout
    );
    assert!(!run.stderr.contains("note:"), "{}", run.stderr);
    // Another command with --data-dir (the helper names one) and DATABASE_URL: it says which
    // database it took and how to choose, without the password.
    let run = idledger_with_env(&dir, &["migrate"], &elsewhere).fail();
    assert!(
        run.stderr
            .contains("note: using the database from DATABASE_URL (postgres://someone:***@"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pass --database to choose"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("secret"), "{}", run.stderr);
    // The flag says it: no note.
    let url = dir.sqlite_url("chosen.db");
    let run = idledger_with_env(&dir, &["--database", &url, "migrate"], &elsewhere).success();
    assert!(!run.stderr.contains("note:"), "{}", run.stderr);
}

#[test]
fn migrate_then_verify_an_empty_store() {
    let dir = TempDir::new("migrate");
    idledger(&dir, &["migrate"])
        .success()
        .stdout_has(&["idledger.db", "migrations applied"]);
    idledger(&dir, &["verify"])
        .success()
        .stdout_has(&["verified 0 events in 0 streams: the log is intact"]);
    // Neither needed the master key, so neither generated one.
    assert!(!dir.path().join("master.key").exists());
}

#[test]
fn verify_json_is_a_report() {
    let dir = TempDir::new("verify-json");
    demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let run = idledger(&dir, &["--database", &url, "verify", "--json"]).success();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["events"], 19);
    assert_eq!(report["streams"], 2);
    assert!(report["first_broken"].is_null());
    let run = idledger(&dir, &["--database", &url, "rebuild", "--json"]).success();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["identical"], true);
    assert_eq!(report["customers"], 2);
}

#[test]
fn verify_names_the_first_altered_event_and_fails() {
    let dir = TempDir::new("tamper");
    demo_into(&dir);
    let db = dir.path().join("demo.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        // Someone with access to the file gets past the append-only triggers.
        sqlx::query("DROP TRIGGER events_no_update")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE events SET recorded_at = recorded_at + 1 WHERE global_position = 3")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let url = dir.sqlite_url("demo.db");
    idledger(&dir, &["--database", &url, "verify"])
        .exit(1)
        .stdout_has(&[
            "the log is BROKEN",
            "global position  3",
            "stream version   3",
            "hash does not match",
        ]);
    let run = idledger(&dir, &["--database", &url, "verify", "--json"]).exit(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["first_broken"]["global_position"], 3);
}

#[test]
fn checkpoints_are_signed_exported_and_catch_a_rewritten_log() {
    let dir = TempDir::new("checkpoints");
    demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let cli = |args: &[&str]| {
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        idledger(&dir, &all)
    };
    // The demo signed the log's 19 events; nothing has been added since.
    cli(&["checkpoint"]).success().stdout_has(&[
        "has not grown",
        "position         19",
        "key id",
        "public key",
    ]);
    let run = cli(&["checkpoint", "--json"]).success();
    let checkpoint: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(checkpoint["position"], 19);
    assert_eq!(checkpoint["log_hash"].as_str().unwrap().len(), 64);
    assert_eq!(checkpoint["signature"].as_str().unwrap().len(), 128);

    let file = dir.path().join("checkpoints.json");
    let file = file.to_str().unwrap();
    let run = cli(&["checkpoint", "export", "--out", file]).success();
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(export["format"], "idledger.checkpoints.v1");
    assert_eq!(export["checkpoints"][0], checkpoint);
    let public = export["keys"][0]["public_key"].as_str().unwrap().to_owned();
    assert_eq!(export["keys"][0]["kid"], checkpoint["kid"]);
    assert!(run.stderr.contains(&public), "{}", run.stderr);
    cli(&["checkpoint", "export", "--out", file])
        .exit(1)
        .stderr_has(&["exists"]);
    let printed: serde_json::Value =
        serde_json::from_str(&cli(&["checkpoint", "export"]).success().stdout).unwrap();
    assert_eq!(printed, export);

    cli(&["verify", "--checkpoints", file])
        .success()
        .stdout_has(&[
            "the log is intact",
            "1 checkpoint holds: the log up to position 19 is the one signed",
            "pin it with --public-key",
        ]);
    cli(&["verify", "--checkpoints", file, "--public-key", &public])
        .success()
        .stdout_has(&["checked with the pinned key"]);
    cli(&[
        "verify",
        "--checkpoints",
        file,
        "--public-key",
        &"ab".repeat(32),
    ])
    .exit(1)
    .stdout_has(&["CHECKPOINTS FAIL", "not signed by the pinned key"]);
    cli(&["verify", "--checkpoints", file, "--public-key", "abc"])
        .exit(1)
        .stderr_has(&["64 hex characters"]);
    cli(&["verify", "--public-key", &public]).exit(2);

    // Someone with the file changes an event and recomputes its stream's chain: every chain
    // holds, and only the checkpoints tell.
    let db = dir.path().join("demo.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        sqlx::query("DROP TRIGGER events_no_update")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(
            // A byte of the ciphertext changed whatever it was (set to 0xff, it stayed the
            // same one time in 256).
            "UPDATE events SET payload = substr(payload, 1, 30) \
             || CASE WHEN substr(payload, 31, 1) = x'ff' THEN x'00' ELSE x'ff' END \
             || substr(payload, 32) WHERE global_position = 3",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let log = idledger_store::Store::open(&format!("sqlite://{}", db.display()))
            .await
            .unwrap()
            .log();
        let versions = log.chain_versions().await.unwrap();
        let mut heads = std::collections::HashMap::new();
        for raw in log.read_all(0, 1000).await.unwrap() {
            let prev: Vec<u8> = heads
                .get(&raw.customer_id)
                .cloned()
                .unwrap_or(idledger_store::chain::GENESIS.to_vec());
            let hash = versions.event_hash(&prev, &raw.chain_input()).to_vec();
            sqlx::query("UPDATE events SET hash = $1 WHERE event_id = $2")
                .bind(&hash)
                .bind(raw.event_id)
                .execute(&mut conn)
                .await
                .unwrap();
            heads.insert(raw.customer_id, hash);
        }
        conn.close().await.unwrap();
    });
    cli(&["verify"]).exit(1).stdout_has(&[
        "verified 19 events in 2 streams: the log is intact",
        "CHECKPOINTS FAIL: 1 of 1 do not hold",
        "checkpoint at position 19",
        "the log changed",
    ]);
    cli(&["verify", "--checkpoints", file, "--public-key", &public])
        .exit(1)
        .stdout_has(&["checkpoint at position 19", "the log changed"]);
    let run = cli(&["verify", "--checkpoints", file, "--json"]).exit(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["first_broken"].is_null());
    assert_eq!(report["checkpoints"][0]["failure"]["kind"], "log_changed");

    // An empty store has nothing to sign.
    let empty = dir.sqlite_url("empty.db");
    idledger(&dir, &["--database", &empty, "checkpoint"])
        .success()
        .stdout_has(&["the log is empty: nothing to sign"]);
}

#[test]
fn history_and_record_show_provenance() {
    let dir = TempDir::new("history");
    let (ada, _) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    idledger(&dir, &["--database", &url, "history", &ada, "email"])
        .success()
        .stdout_has(&[
            "4 events, oldest first",
            "change_verified",
            "evidence         email_link:signup-ada",
            "actor            subject:ada",
            "causation id",
            "policy version   sha256:",
        ]);
    let run = idledger(
        &dir,
        &["--database", &url, "history", &ada, "email", "--json"],
    )
    .success();
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 4);
    assert_eq!(
        events[3]["envelope"]["event"]["payload"]["type"],
        "change_verified"
    );

    let run = idledger(&dir, &["--database", &url, "record", &ada, "--json"]).success();
    let record: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(record["consents"][0]["status"], "withdrawn");
    assert_eq!(record["proposals"].as_array().unwrap().len(), 1);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "record",
            &ada,
            "--as-of",
            "2000-01-01T00:00:00Z",
        ],
    )
    .exit(1)
    .stderr_has(&["had no events as of 2000-01-01"]);
}

#[test]
fn export_writes_json_or_a_csv_zip_whole_and_never_over_a_file() {
    let dir = TempDir::new("export");
    let (ada, _) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let run = idledger(&dir, &["--database", &url, "export", &ada]).success();
    let export: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(export["customer_id"], ada.as_str());
    assert_eq!(
        export["history"].as_array().unwrap().len() as u64,
        export["record"]["stream_version"].as_u64().unwrap()
    );
    // The export is a disclosure to the subject, from the command line (no token).
    let last = export["disclosures"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["recipient"], "subject");
    assert!(last["token_id"].is_null());

    let out = dir.path().join("ada.zip");
    let out_arg = out.to_str().unwrap();
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "export",
            &ada,
            "--format",
            "csv",
            "--out",
            out_arg,
        ],
    )
    .success();
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.starts_with(b"PK"), "a zip archive");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "personal data is readable by its owner only"
        );
    }
    // Never over an existing file: the first export stays as it was.
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "export",
            &ada,
            "--format",
            "csv",
            "--out",
            out_arg,
        ],
    )
    .exit(1)
    .stderr_has(&["exists; an export is never written over a file"]);
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let unknown = uuid::Uuid::now_v7().to_string();
    idledger(&dir, &["--database", &url, "export", &unknown])
        .exit(1)
        .stderr_has(&["is not in this store"]);
    idledger(
        &dir,
        &["--database", &url, "export", &ada, "--format", "xml"],
    )
    .exit(2);
}

#[test]
fn restrict_sets_and_lifts_a_restriction_of_processing() {
    let dir = TempDir::new("restrict");
    let (ada, _) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let restrict = |extra: &[&str]| {
        let mut args = vec![
            "--database",
            &url,
            "restrict",
            &ada,
            "--as",
            "dpo@example.org",
        ];
        args.extend_from_slice(extra);
        idledger(&dir, &args)
    };
    restrict(&["--reason", "art. 18 request #7"])
        .success()
        .stdout_has(&["processing restricted: nothing is delivered until it is lifted"]);
    restrict(&["--reason", "again"])
        .success()
        .stdout_has(&["unchanged: processing was already restricted"]);
    let run = idledger(&dir, &["--database", &url, "record", &ada, "--json"]).success();
    let record: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(record["restricted_since"].is_string());
    restrict(&["--reason", "resolved", "--lift"])
        .success()
        .stdout_has(&["restriction lifted: deliveries resume"]);
    restrict(&["--reason", " "])
        .exit(1)
        .stderr_has(&["refused (invalid_value)"]);
    restrict(&[]).exit(2);
}

#[test]
fn bad_customer_ids_and_fields_are_usage_errors() {
    let dir = TempDir::new("usage");
    idledger(&dir, &["history", "not-a-customer", "email"])
        .exit(2)
        .stderr_has(&[
            "invalid customer id",
            "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ]);
    // A UUID, but not a v7.
    idledger(
        &dir,
        &["history", "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "email"],
    )
    .exit(2)
    .stderr_has(&["customer ids are UUIDv7"]);
    idledger(
        &dir,
        &[
            "history",
            "01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f",
            "favourite_colour",
        ],
    )
    .exit(2)
    .stderr_has(&["unknown field 'favourite_colour'", "consent.<purpose>"]);
    idledger(
        &dir,
        &["history", "01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f", "email"],
    )
    .exit(1)
    .stderr_has(&["customer 01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f is not in this store"]);
}

#[test]
fn postgres_needs_an_explicit_key_and_its_password_is_never_shown() {
    let dir = TempDir::new("pg-key");
    // Port 9 (discard): nothing is contacted, the key is checked first.
    let url = "postgres://app:s3cret@127.0.0.1:9/idledger";
    let run = idledger(
        &dir,
        &[
            "--database",
            url,
            "record",
            "01964f6e-6b2a-7c3d-9e4f-0a1b2c3d4e5f",
        ],
    )
    .exit(1)
    .stderr_has(&[
        "no master key for the PostgreSQL database",
        "IDLEDGER__MASTER_KEY",
        "app:***@127.0.0.1",
    ]);
    assert!(!run.stderr.contains("s3cret"), "{}", run.stderr);
    assert!(!dir.path().join("master.key").exists());
}

#[test]
fn a_missing_key_is_not_replaced_when_the_store_has_events() {
    let dir = TempDir::new("lost-key");
    let (ada, _) = demo_into(&dir);
    let key = dir.path().join("master.key");
    let hex = std::fs::read_to_string(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let url = dir.sqlite_url("demo.db");
    idledger(&dir, &["--database", &url, "record", &ada])
        .exit(1)
        .stderr_has(&["holds 19 events but the master key file", "is missing"]);
    assert!(
        !key.exists(),
        "no new key may be generated for a store with events"
    );
    // The key given through the environment instead works.
    idledger_with_env(
        &dir,
        &["--database", &url, "record", &ada],
        &[("IDLEDGER__MASTER_KEY", hex.trim())],
    )
    .success()
    .stdout_has(&["ada@analytical-engine.example"]);
    // A wrong key is refused before anything is read or written with it.
    let wrong = "ab".repeat(32);
    idledger_with_env(
        &dir,
        &["--database", &url, "record", &ada],
        &[("IDLEDGER__MASTER_KEY", &wrong)],
    )
    .exit(1)
    .stderr_has(&["error:"]);
}

#[test]
fn a_policy_that_does_not_parse_is_named() {
    let dir = TempDir::new("policy");
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "this is not = = toml").unwrap();
    idledger(&dir, &["--policy", policy.to_str().unwrap(), "demo"])
        .exit(1)
        .stderr_has(&["policy.toml is not a valid policy"]);
}

/// `--database <url> <args…>`.
fn with_database(url: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["--database".to_owned(), url.to_owned()];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

#[test]
fn processors_are_added_listed_disabled_and_given_tokens() {
    let dir = TempDir::new("processors");
    let url = dir.sqlite_url("processors.db");
    let db = |args: &[&str]| with_database(&url, args);
    idledger(&dir, &db(&["processor", "list"]))
        .success()
        .stdout_has(&["no processors"]);
    idledger(
        &dir,
        &db(&[
            "processor",
            "add",
            "--id",
            "ads",
            "--purposes",
            "marketing",
            "--fields",
            "email,name.*",
            "--region",
            "us",
            "--transfer-basis",
            "scc",
        ]),
    )
    .success()
    .stdout_has(&[
        "registered processor ads",
        "idledger token create --role processor --processor ads",
    ]);
    let run = idledger(&dir, &db(&["processor", "list", "--json"])).success();
    let ads: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(ads["region"], "US");
    assert_eq!(ads["fields"], serde_json::json!(["email", "name.*"]));
    idledger(&dir, &db(&["processor", "list"]))
        .success()
        .stdout_has(&["ads", "enabled", "marketing", "email,name.*", "US", "scc"]);
    // Refused, with nothing registered: a taken id, a basis without a region, bad values.
    for (args, needle) in [
        (
            vec![
                "--id",
                "ads",
                "--purposes",
                "marketing",
                "--fields",
                "email",
            ],
            "already registered",
        ),
        (
            vec![
                "--id",
                "x",
                "--purposes",
                "marketing",
                "--fields",
                "email",
                "--transfer-basis",
                "scc",
            ],
            "region",
        ),
        (
            vec!["--id", "x", "--purposes", "marketing", "--fields", "shoe"],
            "shoe",
        ),
        (
            vec![
                "--id",
                "x",
                "--purposes",
                "marketing",
                "--fields",
                "email",
                "--region",
                "XX",
            ],
            "XX",
        ),
    ] {
        let mut full = vec!["processor", "add"];
        full.extend(args);
        idledger(&dir, &db(&full)).fail().stderr_has(&[needle]);
    }
    idledger(
        &dir,
        &db(&[
            "token",
            "create",
            "--role",
            "processor",
            "--processor",
            "ads",
        ]),
    )
    .success()
    .stdout_has(&["idl_"]);
    idledger(&dir, &db(&["token", "create", "--role", "processor"])).fail();
    idledger(&dir, &db(&["processor", "disable", "ads"]))
        .success()
        .stdout_has(&["disabled processor ads"]);
    idledger(&dir, &db(&["processor", "disable", "ads"]))
        .success()
        .stdout_has(&["already disabled"]);
    idledger(&dir, &db(&["processor", "disable", "nobody"]))
        .exit(1)
        .stderr_has(&["no processor 'nobody'"]);
}

#[test]
fn consumers_are_added_listed_and_disabled() {
    let dir = TempDir::new("consumers");
    // A store with events: `--start-at now` starts after them.
    demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let db = |args: &[&str]| with_database(&url, args);
    idledger(&dir, &db(&["consumer", "list"]))
        .success()
        .stdout_has(&["no consumers"]);
    idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "crm",
            "--channel",
            "nats",
            "--fields",
            "email,consent.*",
            "--purposes",
            "service",
        ]),
    )
    .success()
    .stdout_has(&[
        "registered consumer crm (nats)",
        "email, consent.*",
        "the beginning of the log",
        "idledger token create --role consumer --consumer crm",
    ]);
    let run = idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "crm-sync",
            "--channel",
            "feed",
            "--fields",
            "*",
            "--purposes",
            "marketing,analytics",
            "--pseudonymous",
            "--json",
        ]),
    )
    .success();
    let feed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(feed["channel"], "feed");
    assert_eq!(feed["pseudonymous"], true);
    assert_eq!(
        feed["purposes"],
        serde_json::json!(["marketing", "analytics"])
    );
    assert!(feed["checkpoint"].is_null());
    // A consumer abroad: where it processes, and on what transfer basis.
    idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "us-cdp",
            "--channel",
            "feed",
            "--fields",
            "email",
            "--purposes",
            "marketing",
            "--region",
            "us",
            "--transfer-basis",
            "scc",
        ]),
    )
    .success()
    .stdout_has(&["processes in", "US (transfer basis: scc)"]);
    idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "nowhere",
            "--channel",
            "feed",
            "--fields",
            "email",
            "--purposes",
            "marketing",
            "--transfer-basis",
            "scc",
        ]),
    )
    .fail()
    .stderr_has(&["--region"]);

    // A webhook's secret comes from a file (or the environment), and is never printed.
    let secret = "whsec-from-a-file-0123456789";
    let secret_file = dir.path().join("cdp.secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    let run = idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "cdp",
            "--channel",
            "webhook",
            "--url",
            "https://cdp.example/hooks/idledger",
            "--secret-file",
            secret_file.to_str().unwrap(),
            "--fields",
            "email",
            "--purposes",
            "analytics",
            "--start-at",
            "now",
        ]),
    )
    .success()
    .stdout_has(&[
        "registered consumer cdp (webhook)",
        "https://cdp.example/hooks/idledger",
        "stored (never shown)",
        "log position 19 (now)",
    ]);
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    let env_secret = "whsec-from-the-environment-42";
    let run = idledger_with_env(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "cdp-eu",
            "--channel",
            "webhook",
            "--url",
            "http://127.0.0.1:9/hook",
            "--fields",
            "email",
            "--purposes",
            "analytics",
            "--json",
        ]),
        &[("IDLEDGER__WEBHOOK_SECRET", env_secret)],
    )
    .success();
    assert!(!run.stdout.contains(env_secret), "{}", run.stdout);

    let run = idledger(&dir, &db(&["consumer", "list"]))
        .success()
        .stdout_has(&[
            "crm-sync",
            "feed",
            "enabled",
            "marketing,analytics",
            "https://cdp.example/hooks/idledger",
        ]);
    assert!(!run.stdout.contains(secret));
    let run = idledger(&dir, &db(&["consumer", "list", "--json"])).success();
    assert!(!run.stdout.contains(secret) && !run.stdout.contains(env_secret));
    let listed: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["cdp", "cdp-eu", "crm", "crm-sync", "us-cdp"]);
    assert_eq!(listed[0]["checkpoint"], 19);
    assert_eq!(listed[2]["checkpoint"], 0);

    // Each consumer's value-hash key: stable, its own, and only for registered consumers.
    let key = |id: &str| {
        idledger(&dir, &db(&["consumer", "hash-key", id]))
            .success()
            .stdout
    };
    let crm = key("crm");
    assert_eq!(crm.trim().len(), 64, "{crm}");
    assert!(crm.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{crm}");
    assert_eq!(key("crm"), crm);
    assert_ne!(key("cdp"), crm);
    let run = idledger(&dir, &db(&["consumer", "hash-key", "crm", "--json"])).success();
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(json["key"], crm.trim());
    assert_eq!(json["algorithm"], "hmac-sha256");
    // The ack signing key is another secret of the same consumer.
    let ack = idledger(&dir, &db(&["consumer", "hash-key", "crm", "--ack"]))
        .success()
        .stdout;
    assert_eq!(json["ack_key"], ack.trim());
    assert_eq!(ack.trim().len(), 64, "{ack}");
    assert_ne!(ack, crm);
    // NATS accounts: idledger's own user and one per NATS consumer, confined to its subjects.
    let accounts = idledger(&dir, &db(&["consumer", "nats-config"]))
        .success()
        .stdout;
    assert!(accounts.contains("user: \"idledger\""), "{accounts}");
    assert!(accounts.contains("user: \"crm\""), "{accounts}");
    assert!(
        accounts.contains("\"$JS.API.CONSUMER.MSG.NEXT.IDLEDGER.crm\""),
        "{accounts}"
    );
    for other in ["crm-sync", "cdp"] {
        assert!(
            !accounts.contains(&format!("user: \"{other}\"")),
            "{accounts}"
        );
    }
    idledger(&dir, &db(&["consumer", "hash-key", "nobody"]))
        .exit(1)
        .stderr_has(&["no consumer 'nobody'"]);

    // Refused: a taken id, a webhook without URL or secret, webhook options on other channels.
    for (args, env, needle) in [
        (
            vec!["--id", "crm", "--channel", "nats"],
            None,
            "already registered",
        ),
        (
            vec![
                "--id",
                "hook",
                "--channel",
                "webhook",
                "--secret-file",
                secret_file.to_str().unwrap(),
            ],
            None,
            "needs --url",
        ),
        (
            vec![
                "--id",
                "hook",
                "--channel",
                "webhook",
                "--url",
                "https://x.example/h",
            ],
            None,
            "--secret-file <PATH> or IDLEDGER__WEBHOOK_SECRET",
        ),
        (
            vec![
                "--id",
                "hook",
                "--channel",
                "webhook",
                "--url",
                "https://x.example/h",
            ],
            Some("short"),
            "at least 16 characters",
        ),
        (
            vec![
                "--id",
                "hook",
                "--channel",
                "webhook",
                "--url",
                "ftp://x.example/h",
            ],
            Some(env_secret),
            "http:// or https://",
        ),
        (
            vec![
                "--id",
                "hook",
                "--channel",
                "nats",
                "--url",
                "https://x.example/h",
            ],
            None,
            "for --channel webhook",
        ),
    ] {
        let mut all = vec!["consumer", "add"];
        all.extend(args);
        all.extend(["--fields", "email", "--purposes", "service"]);
        let env: Vec<(&str, &str)> = env
            .map(|v| vec![("IDLEDGER__WEBHOOK_SECRET", v)])
            .unwrap_or_default();
        idledger_with_env(&dir, &db(&all), &env)
            .exit(1)
            .stderr_has(&[needle]);
    }
    // Usage errors: bad id, field, channel; and no secret on the command line.
    for args in [
        vec!["--id", "CRM", "--channel", "nats"],
        vec!["--id", "x", "--channel", "smtp"],
        vec![
            "--id",
            "x",
            "--channel",
            "nats",
            "--secret",
            "whsec-0123456789abcdef",
        ],
    ] {
        let mut all = vec!["consumer", "add"];
        all.extend(args);
        all.extend(["--fields", "email", "--purposes", "service"]);
        idledger(&dir, &db(&all)).exit(2);
    }
    idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "x",
            "--channel",
            "nats",
            "--fields",
            "shoe_size",
            "--purposes",
            "service",
        ]),
    )
    .exit(2)
    .stderr_has(&["shoe_size"]);

    idledger(&dir, &db(&["consumer", "disable", "crm"]))
        .success()
        .stdout_has(&["disabled consumer crm at"]);
    idledger(&dir, &db(&["consumer", "disable", "crm"]))
        .success()
        .stdout_has(&["consumer crm was already disabled at"]);
    let run = idledger(&dir, &db(&["consumer", "disable", "crm", "--json"])).success();
    let crm: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(crm["enabled"], false);
    assert!(crm["disabled_at"].is_string());
    idledger(&dir, &db(&["consumer", "disable", "nobody"]))
        .exit(1)
        .stderr_has(&["no consumer 'nobody'"]);
    idledger(&dir, &db(&["consumer", "list"]))
        .success()
        .stdout_has(&["disabled"]);
}

#[test]
fn reconcile_compares_acks_and_snapshots_and_explains_bad_input() {
    let dir = TempDir::new("reconcile");
    let (ada, _) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let db = |args: &[&str]| with_database(&url, args);
    idledger(
        &dir,
        &db(&[
            "consumer",
            "add",
            "--id",
            "crm",
            "--channel",
            "feed",
            "--fields",
            "email",
            "--purposes",
            "service",
            "--sla-secs",
            "60",
        ]),
    )
    .success()
    .stdout_has(&["ack SLA", "60 s"]);
    idledger(&dir, &db(&["reconcile"]))
        .success()
        .stdout_has(&["acks run, all consumers", "crm (SLA 60 s)"]);
    let run = idledger(&dir, &db(&["reconcile", "--consumer", "crm", "--json"])).success();
    let run: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(run["status"], "finished");
    assert_eq!(run["trigger"], "cli");

    let snapshot = dir.path().join("crm-export.csv");
    std::fs::write(
        &snapshot,
        format!(
            "customer_id,field,value\n{ada},email,someone@else.example\n{},email,x@example.org\nnot-an-id,email,y@example.org\n",
            uuid::Uuid::now_v7()
        ),
    )
    .unwrap();
    let findings = dir.path().join("diff.ndjson");
    idledger(
        &dir,
        &db(&[
            "reconcile",
            "--consumer",
            "crm",
            "--snapshot",
            snapshot.to_str().unwrap(),
            "--findings",
            findings.to_str().unwrap(),
        ]),
    )
    .success()
    .stdout_has(&[
        "snapshot run, consumer crm",
        "snapshot (csv): 3 rows, 1 invalid",
        "extra",
    ])
    .stderr_has(&["wrote 3 findings"]);
    let diff: Vec<serde_json::Value> = std::fs::read_to_string(&findings)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(diff.len(), 3);
    assert!(
        diff.iter()
            .any(|f| f["kind"] == "invalid_row" && f["detail"]["line"] == 4)
    );
    assert!(
        diff.iter()
            .any(|f| f["kind"] == "extra" && f["detail"]["reason"] == "unknown_customer")
    );

    idledger(
        &dir,
        &db(&["reconcile", "--snapshot", snapshot.to_str().unwrap()]),
    )
    .exit(1)
    .stderr_has(&["name it with --consumer"]);
    let odd = dir.path().join("export.txt");
    std::fs::write(&odd, "").unwrap();
    idledger(
        &dir,
        &db(&[
            "reconcile",
            "--consumer",
            "crm",
            "--snapshot",
            odd.to_str().unwrap(),
        ]),
    )
    .exit(1)
    .stderr_has(&["--format ndjson or --format csv"]);
    idledger(&dir, &db(&["reconcile", "--consumer", "nobody"]))
        .exit(1)
        .stderr_has(&["no consumer 'nobody' is registered"]);
}

#[test]
fn bench_refuses_an_embedded_store_and_bad_sizes() {
    let dir = TempDir::new("bench-sqlite");
    // It needs a PostgreSQL server to make scratch databases on: told so, nothing written.
    idledger(&dir, &["bench", "--smoke", "--out", "reports"])
        .exit(1)
        .stderr_has(&["needs a PostgreSQL server", "CREATE DATABASE"]);
    assert!(!dir.path().join("idledger.db").exists());
    for bad in [["--clients", "0"], ["--duration", "0"], ["--rate", "nope"]] {
        idledger(&dir, &["bench", bad[0], bad[1]]).exit(2);
    }
}

// ---------------------------------------------------------------------------------------
// exception list|show|act, on both engines
// ---------------------------------------------------------------------------------------

use idledger_app::App;
use idledger_domain::command::Change;
use idledger_store::delivery::{ExceptionKind, NewSyncException};
use idledger_testkit::builders::{command, consumer_id, field, new_customer, set, source};
use idledger_testkit::{Engine, TestStore, on_both_engines};

struct Seeded {
    store: TestStore,
    customer: String,
    proposal: String,
    divergent: String,
}

/// A customer whose given name crm proposed to change (a `proposal` exception, opened as
/// production opens it) and whose copy at crm-sync drifted (a `divergent` one).
async fn seed_exceptions(engine: Engine) -> Seeded {
    let store = TestStore::new(engine).await;
    let app = App::new(store.ledger.clone());
    let customer = new_customer();
    let register = command(
        customer,
        "register",
        vec![
            Change::Register,
            set("name.given", serde_json::json!("Ann")),
        ],
    );
    app.run_command(&source("idp"), &register).await.unwrap();
    let propose = command(
        customer,
        "crm-1",
        vec![set("name.given", serde_json::json!("Anne"))],
    );
    app.run_command(&source("crm"), &propose).await.unwrap();
    let proposal = app
        .exceptions(&Default::default(), None)
        .await
        .unwrap()
        .exceptions;
    assert_eq!(proposal.len(), 1, "the proposal opened an exception");
    let divergent = app
        .deliveries()
        .open_exception(
            &NewSyncException::new(
                ExceptionKind::Divergent,
                consumer_id("crm-sync"),
                customer,
                Some(field("name.given")),
                serde_json::json!({"record_version": 1}),
                chrono::Utc::now(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    Seeded {
        customer: customer.to_string(),
        proposal: proposal[0].id.to_string(),
        divergent: divergent.id.to_string(),
        store,
    }
}

/// `idledger --database <the seeded store> <args…>` with its master key.
fn on_store(dir: &TempDir, seeded: &Seeded, args: &[&str]) -> Run {
    let mut all = vec!["--database", seeded.store.db.url.as_str()];
    all.extend_from_slice(args);
    idledger_with_env(
        dir,
        &all,
        &[("IDLEDGER__MASTER_KEY", seeded.store.master_hex())],
    )
}

async fn exceptions_are_listed_and_filtered(engine: Engine) {
    let seeded = seed_exceptions(engine).await;
    let dir = TempDir::new("exceptions-list");
    let listed = on_store(&dir, &seeded, &["exception", "list"])
        .success()
        .stdout_has(&[
            &seeded.proposal,
            &seeded.divergent,
            "proposal",
            "divergent",
            "crm-sync",
        ]);
    assert!(listed.stdout.contains(&seeded.customer));
    let only = on_store(&dir, &seeded, &["exception", "list", "--kind", "proposal"]).success();
    assert!(only.stdout.contains(&seeded.proposal));
    assert!(!only.stdout.contains(&seeded.divergent));
    let json = on_store(
        &dir,
        &seeded,
        &["exception", "list", "--consumer", "crm-sync", "--json"],
    )
    .success();
    let page: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let items = page["exceptions"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], seeded.divergent.as_str());
    assert_eq!(items[0]["consumer_id"], "crm-sync");
    assert_eq!(items[0]["status"], "open");
    on_store(
        &dir,
        &seeded,
        &["exception", "list", "--status", "resolved"],
    )
    .success()
    .stdout_has(&["no exceptions match"]);
}

async fn bad_filters_are_usage_errors_naming_the_option(engine: Engine) {
    let seeded = seed_exceptions(engine).await;
    let dir = TempDir::new("exceptions-bad");
    on_store(&dir, &seeded, &["exception", "list", "--status", "any"])
        .exit(2)
        .stderr_has(&["--status", "open, resolved, dismissed, all"]);
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "list",
            "--older-than",
            "100000000d",
            "--kind",
            "sideways",
        ],
    )
    .exit(2)
    .stderr_has(&["--older-than", "--kind"]);
    on_store(
        &dir,
        &seeded,
        &["exception", "show", "0190a0c4-7a4e-7b8e-9d2f-2f4b6c8d0e1f"],
    )
    .exit(1)
    .stderr_has(&["no sync exception"]);
}

async fn a_steward_dismisses_and_accepts_from_the_command_line(engine: Engine) {
    let seeded = seed_exceptions(engine).await;
    let dir = TempDir::new("exceptions-act");
    let divergent = seeded.divergent.as_str();
    // A dismissal needs a reason; refused, nothing changes.
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            divergent,
            "--action",
            "dismiss",
            "--as",
            "jane",
        ],
    )
    .exit(1)
    .stderr_has(&["invalid_value"]);
    on_store(&dir, &seeded, &["exception", "show", divergent])
        .success()
        .stdout_has(&["open"]);
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            divergent,
            "--action",
            "dismiss",
            "--as",
            "jane",
            "--reason",
            "test record at crm-sync",
        ],
    )
    .success()
    .stdout_has(&["dismissed", "steward:jane", "test record at crm-sync"]);
    let shown = on_store(&dir, &seeded, &["exception", "show", divergent, "--json"]).success();
    let shown: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "dismissed");
    assert_eq!(shown["resolved_by"], "steward:jane");
    // Acting on a closed exception is refused.
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            divergent,
            "--action",
            "dismiss",
            "--as",
            "jane",
            "--reason",
            "again",
        ],
    )
    .exit(1)
    .stderr_has(&["exception_closed"]);

    // Routing the proposal to its field's system of record records it and leaves it open;
    // an unknown action is a usage error naming the choices.
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            &seeded.proposal,
            "--action",
            "route",
            "--as",
            "jane",
        ],
    )
    .success()
    .stdout_has(&["sent to the system of record", "open"]);
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            divergent,
            "--action",
            "sideways",
            "--as",
            "jane",
        ],
    )
    .exit(2)
    .stderr_has(&["repush, accept, dismiss, route"]);

    // Jane takes the proposal; it is hers to work.
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "assign",
            &seeded.proposal,
            "--to",
            "me",
            "--as",
            "jane",
        ],
    )
    .success()
    .stdout_has(&["assigned to steward:jane"]);
    let mine = on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "list",
            "--assignee",
            "me",
            "--as",
            "jane",
            "--json",
        ],
    )
    .success();
    let mine: serde_json::Value = serde_json::from_str(&mine.stdout).unwrap();
    assert_eq!(mine["exceptions"][0]["id"], seeded.proposal.as_str());
    assert_eq!(mine["exceptions"].as_array().unwrap().len(), 1);
    on_store(&dir, &seeded, &["exception", "list", "--assignee", "me"])
        .exit(2)
        .stderr_has(&["--as"]);
    // Accepting the proposal needs a second steward (name.given is four-eyes): jane's
    // accept waits, and only another steward's approval takes crm's value into the record.
    let asked = on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "act",
            &seeded.proposal,
            "--action",
            "accept",
            "--as",
            "jane",
            "--json",
        ],
    )
    .success();
    let asked: serde_json::Value = serde_json::from_str(&asked.stdout).unwrap();
    let approval = asked["approval"]["id"].as_str().unwrap().to_owned();
    assert_eq!(asked["exception"]["status"], "open");
    on_store(&dir, &seeded, &["exception", "approvals"])
        .success()
        .stdout_has(&[&approval, "steward:jane"]);
    on_store(
        &dir,
        &seeded,
        &["exception", "approve", &approval, "--as", "jane"],
    )
    .exit(1)
    .stderr_has(&["second steward"]);
    on_store(
        &dir,
        &seeded,
        &[
            "exception",
            "approve",
            &approval,
            "--as",
            "joe",
            "--reason",
            "checked",
        ],
    )
    .success()
    .stdout_has(&["approved", "resolved"]);
    on_store(&dir, &seeded, &["record", &seeded.customer])
        .success()
        .stdout_has(&["Anne"]);
    on_store(&dir, &seeded, &["history", &seeded.customer, "name.given"])
        .success()
        .stdout_has(&["jane", "joe"]);
    on_store(
        &dir,
        &seeded,
        &["exception", "activity", "--steward", "joe"],
    )
    .success()
    .stdout_has(&["steward:joe", "approve", "name.given"]);
    on_store(
        &dir,
        &seeded,
        &["exception", "activity", "--steward", "jane"],
    )
    .success()
    .stdout_has(&["assign", "dismiss", "request_approval"]);
}

on_both_engines!(
    exceptions_are_listed_and_filtered,
    bad_filters_are_usage_errors_naming_the_option,
    a_steward_dismisses_and_accepts_from_the_command_line,
    signing_keys_rotate_list_and_remove_and_receipts_verify,
    find_prints_the_customers_an_identifier_finds,
    households_are_created_joined_left_and_shown,
    duplicates_backfill_opens_the_candidates_detection_never_saw_once,
);

#[test]
fn retention_run_counts_on_a_dry_run_then_deletes() {
    let dir = TempDir::new("retention");
    demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let policy = dir.path().join("policy.toml");
    let with_retention = |idempotency_days: u32| {
        idledger_domain::policy::DEFAULT_POLICY_TOML.replace(
            "[consent_max_age_days]",
            &format!(
                "[retention]\nidempotency_days = {idempotency_days}\n\n[consent_max_age_days]"
            ),
        )
    };
    std::fs::write(&policy, with_retention(30)).unwrap();
    let db = |args: &[&str]| {
        let mut all = with_database(&url, &["--policy", policy.to_str().unwrap()]);
        all.extend(args.iter().map(|a| (*a).to_owned()));
        all
    };
    // The demo's records are fresh: nothing to do.
    idledger(&dir, &db(&["retention", "run", "--dry-run"]))
        .success()
        .stdout_has(&[
            "retention (dry run)",
            "would delete: 0 handoffs, 0 idempotency records",
        ]);
    // Age its idempotency records by 40 days, as the clock would.
    let aged = tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let aged = sqlx::query("UPDATE idempotency SET created_at = created_at - 40 * 86400")
            .execute(&mut conn)
            .await
            .unwrap()
            .rows_affected();
        conn.close().await.unwrap();
        aged
    });
    assert!(aged > 0);
    let dry = idledger(&dir, &db(&["retention", "run", "--dry-run", "--json"])).success();
    let dry: serde_json::Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["idempotency_records_deleted"], aged);
    assert_eq!(dry["values_expired"], 0);
    idledger(&dir, &db(&["retention", "run"]))
        .success()
        .stdout_has(&[&format!("deleted: 0 handoffs, {aged} idempotency records")]);
    idledger(&dir, &db(&["retention", "run", "--json"]))
        .success()
        .stdout_has(&["\"idempotency_records_deleted\": 0"]);
    // Nonsense retention is refused naming the key.
    std::fs::write(&policy, with_retention(0)).unwrap();
    idledger(&dir, &db(&["retention", "run"]))
        .exit(1)
        .stderr_has(&["retention.idempotency_days", "at least 1 day"]);
    // A mistyped command is a usage error.
    idledger(&dir, &db(&["retention", "run", "--dry"])).exit(2);
}

/// A wrong master key is refused whatever was erased: the store keeps the key's check value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_master_key_is_refused_even_when_the_first_customer_was_erased() {
    let store = TestStore::new(Engine::Sqlite).await;
    let app = App::new(store.ledger.clone());
    let (first, second) = (new_customer(), new_customer());
    for (customer, name) in [(first, "Ann"), (second, "Bo")] {
        let register = command(
            customer,
            &format!("register-{name}"),
            vec![Change::Register, set("name.given", serde_json::json!(name))],
        );
        app.run_command(&source("idp"), &register).await.unwrap();
    }
    app.erase(
        first,
        idledger_testkit::builders::dpo(),
        "subject's request",
    )
    .await
    .unwrap();
    let dir = TempDir::new("key-check");
    let url = store.db.url.clone();
    let wrong = "11".repeat(32);
    let record = |key: &str| {
        idledger_with_env(
            &dir,
            &["--database", &url, "record", &second.to_string()],
            &[("IDLEDGER__MASTER_KEY", key)],
        )
    };
    // The first customer's key is gone; the second's still tells.
    record(&wrong)
        .exit(1)
        .stderr_has(&["is not the key the database"]);
    record(store.master_hex()).success().stdout_has(&["Bo"]);
    // Now every customer is erased: no data key is left, the check value still tells.
    app.erase(
        second,
        idledger_testkit::builders::dpo(),
        "subject's request",
    )
    .await
    .unwrap();
    record(&wrong)
        .exit(1)
        .stderr_has(&["is not the key the database"]);
}

#[test]
fn tokens_expire_and_rotate_from_the_command_line() {
    let dir = TempDir::new("token-lifecycle");
    let run = idledger(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "auditor",
            "--expires-in",
            "2d",
            "--json",
        ],
    )
    .success();
    let created: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(created["record"]["expires_at"].is_string());
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    let run = idledger(&dir, &["token", "rotate", &id, "--overlap", "1h", "--json"])
        .success()
        .stderr_has(&["keeps working until"]);
    let rotated: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_ne!(rotated["token"], created["token"]);
    assert_eq!(rotated["record"]["role"], "auditor");
    idledger(&dir, &["token", "list"])
        .success()
        .stdout_has(&["expires", "last used", &id]);
    idledger(
        &dir,
        &["token", "rotate", &uuid::Uuid::now_v7().to_string()],
    )
    .exit(1)
    .stderr_has(&["no live token"]);
    idledger(
        &dir,
        &["token", "create", "--role", "auditor", "--expires-in", "5x"],
    )
    .exit(2)
    .stderr_has(&["not a duration"]);

    // Scopes: given once or several times, kept sorted; an unknown one is a usage error.
    let run = idledger(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "source",
            "--source",
            "crm",
            "--scope",
            "reads,commands",
            "--scope",
            "reads",
            "--json",
        ],
    )
    .success();
    let scoped: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        scoped["record"]["scopes"],
        serde_json::json!(["commands", "reads"])
    );
    assert_eq!(scoped["record"]["live"], true, "the API's IssuedTokenView");
    idledger(&dir, &["token", "list"])
        .success()
        .stdout_has(&["scopes", "commands,reads"]);
    idledger(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "auditor",
            "--scope",
            "everything",
        ],
    )
    .exit(2)
    .stderr_has(&["unknown scope"]);
    // The checks of `POST /v1/tokens`: a consumer id, a label that is not blank.
    idledger(
        &dir,
        &[
            "token",
            "create",
            "--role",
            "consumer",
            "--consumer",
            "Crm Sync",
        ],
    )
    .exit(1);
    idledger(
        &dir,
        &["token", "create", "--role", "auditor", "--label", " "],
    )
    .exit(1)
    .stderr_has(&["blank"]);
}

/// `keys rewrap` moves an embedded store to a new master key: interrupted, it leaves the store
/// refusing to open until a second run finishes; then only the new key opens it and every
/// record reads as before.
#[test]
fn keys_rewrap_moves_an_embedded_store_to_a_new_master_key() {
    let dir = TempDir::new("keys-rewrap");
    let (ada, _) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    let old_key = dir.path().join("master.key");
    let new_key = dir.path().join("new.key");
    std::fs::write(&new_key, format!("{}\n", "5a".repeat(32))).unwrap();
    let new_key = new_key.to_str().unwrap();
    let record = |key: &Path| {
        idledger(
            &dir,
            &[
                "--database",
                &url,
                "--master-key-file",
                key.to_str().unwrap(),
                "record",
                &ada,
                "--json",
            ],
        )
    };
    let before = record(&old_key).success().stdout;
    let rewrap = |extra: &[&str]| {
        let mut args = vec!["--database", &url, "keys", "rewrap"];
        args.extend_from_slice(extra);
        idledger(&dir, &args)
    };
    rewrap(&["--new-key-file", new_key, "--dry-run"])
        .success()
        .stdout_has(&["would re-wrap", "data keys and the derivation root"]);
    // The current key as the new one is refused; so is a missing new key.
    rewrap(&["--new-key-file", old_key.to_str().unwrap()])
        .exit(1)
        .stderr_has(&["the new master key is the current one"]);
    rewrap(&[]).exit(1).stderr_has(&["--new-key-file"]);

    rewrap(&[
        "--new-key-file",
        new_key,
        "--batch-size",
        "1",
        "--max-batches",
        "1",
    ])
    .exit(1)
    .stdout_has(&["re-wrapped 1 data keys", "unfinished"]);
    for key in [old_key.as_path(), Path::new(new_key)] {
        record(key)
            .exit(1)
            .stderr_has(&["unfinished", "idledger keys rewrap"]);
    }
    let done = rewrap(&["--new-key-file", new_key])
        .success()
        .stdout_has(&["finished"]);
    assert!(!done.stdout.contains(&"5a".repeat(32)) && !done.stderr.contains(&"5a".repeat(32)));

    record(&old_key)
        .exit(1)
        .stderr_has(&["is not the key the database"]);
    // The same record, but for the instant it was evaluated at.
    let json = |text: &str| {
        let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["evaluated_at"] = serde_json::Value::Null;
        v
    };
    assert_eq!(
        json(&record(Path::new(new_key)).success().stdout),
        json(&before)
    );
    // Checkpoint signing goes on under the new key (its key is sealed under the derivation
    // root, which the rewrap moved whole), and the demo's checkpoint still holds.
    let with_new_key = |args: &[&str]| {
        let mut all = vec!["--database", url.as_str(), "--master-key-file", new_key];
        all.extend_from_slice(args);
        idledger(&dir, &all)
    };
    with_new_key(&[
        "restrict",
        &ada,
        "--as",
        "dpo",
        "--reason",
        "after the rewrap",
    ])
    .success();
    with_new_key(&["checkpoint"])
        .success()
        .stdout_has(&["signed a checkpoint of the log", "position         20"]);
    with_new_key(&["verify"])
        .success()
        .stdout_has(&["2 checkpoints hold: the log up to position 20 is the one signed"]);
}

// ---------------------------------------------------------------------------------------
// keys list|rotate|remove, receipt verify, on both engines
// ---------------------------------------------------------------------------------------

/// `keys rotate` prints the new kid and `keys list` shows it in use beside the retired one;
/// `receipt verify` accepts a token of the store's key (store keys, a saved key set, a
/// server's) and refuses a tampered, an expired and a removed key's token with exit 1.
async fn signing_keys_rotate_list_and_remove_and_receipts_verify(engine: Engine) {
    use idledger_store::TokenSigner;
    use idledger_store::jws;

    let store = TestStore::new(engine).await;
    let dir = TempDir::new("receipts");
    let url = store.db.url.clone();
    let cli = |args: &[&str]| {
        let mut all = vec!["--database", url.as_str()];
        all.extend_from_slice(args);
        idledger_with_env(&dir, &all, &[("IDLEDGER__MASTER_KEY", store.master_hex())])
    };
    cli(&["keys", "list"])
        .success()
        .stdout_has(&["no signing keys yet"]);

    // A receipt signed as the server signs it (the first use creates the jws key).
    let signer = TokenSigner::new(store.ledger.signing_keys(), jws::DEFAULT_REFRESH);
    let claims =
        serde_json::json!({"purpose": "marketing", "exp": chrono::Utc::now().timestamp() + 3600});
    let token = signer.sign("receipt+jwt", &claims).await.unwrap();
    let first = signer.key_pair().await.unwrap().kid.clone();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let good = write("receipt.jws", &format!("\n{token}\n"));

    let rotated = cli(&["keys", "rotate"]).success();
    let second = rotated.stdout.trim().to_owned();
    assert_eq!(second.len(), 16, "{}", rotated.stdout);
    assert_ne!(second, first);
    let checkpoint = cli(&["keys", "rotate", "--purpose", "checkpoint"]).success();
    let checkpoint = checkpoint.stdout.trim().to_owned();
    cli(&["keys", "rotate", "--purpose", "nope"]).exit(2);
    let listed = cli(&["keys", "list"]).success();
    let line = |kid: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.starts_with(kid))
            .unwrap_or_else(|| panic!("{kid} not listed:\n{}", listed.stdout))
            .to_owned()
    };
    assert!(line(&first).contains("jws") && !line(&first).contains("in use"));
    assert!(line(&second).contains("jws") && line(&second).contains("in use"));
    assert!(line(&checkpoint).contains("checkpoint") && line(&checkpoint).contains("in use"));
    let json: serde_json::Value =
        serde_json::from_str(&cli(&["keys", "list", "--json"]).success().stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3, "{json}");

    // Verified with the store's keys: the old key still verifies.
    cli(&["receipt", "verify", &good]).success().stdout_has(&[
        &first,
        "receipt+jwt",
        "\"purpose\": \"marketing\"",
    ]);
    // With a saved key set, and with a server's.
    let keys = store
        .ledger
        .signing_keys()
        .list(Some(jws::TOKEN_PURPOSE))
        .await
        .unwrap();
    let set = write("jwks.json", &jws::jwks(&keys).to_string());
    cli(&["receipt", "verify", &good, "--jwks", &set])
        .success()
        .stdout_has(&[&first]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let config = idledger_api::ApiConfig::default();
    let router = idledger_api::router(idledger_api::AppState::new(store.ledger.clone()), &config);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(idledger_api::serve(
        listener,
        router,
        async move {
            let _ = stopped.await;
        },
        &config,
    ));
    // The binary blocks this thread; the server answers on the runtime's others.
    cli(&["receipt", "verify", &good, "--server", &server])
        .success()
        .stdout_has(&[&first]);
    let _ = stop.send(());

    // Refused: tampered, expired, garbage, a removed key's.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    // One character of the payload: other claims, the same signature.
    let last = parts[1].pop().unwrap();
    parts[1].push(if last == 'A' { 'B' } else { 'A' });
    let tampered = write("tampered.jws", &parts.join("."));
    cli(&["receipt", "verify", &tampered])
        .exit(1)
        .stderr_has(&["not valid", "signature is invalid"]);
    let expired = signer
        .sign(
            "receipt+jwt",
            &serde_json::json!({"exp": chrono::Utc::now().timestamp() - 1}),
        )
        .await
        .unwrap();
    let expired = write("expired.jws", &expired);
    cli(&["receipt", "verify", &expired])
        .exit(1)
        .stderr_has(&["expired"]);
    let garbage = write("garbage.jws", "not a token");
    cli(&["receipt", "verify", &garbage])
        .exit(1)
        .stderr_has(&["malformed"]);
    cli(&["keys", "remove", &second])
        .exit(1)
        .stderr_has(&["in use", "rotate it first"]);
    cli(&["keys", "remove", &first])
        .success()
        .stdout_has(&["removed"]);
    cli(&["receipt", "verify", &good])
        .exit(1)
        .stderr_has(&["unknown key", &first]);
}

// ---------------------------------------------------------------------------------------
// find, on both engines
// ---------------------------------------------------------------------------------------

/// Ada and Byron share a phone; Ada has every other identifier. The index is then emptied
/// and its upgrade marked pending, as a store written before the index finds itself: the
/// first command with the key (here `find`) fills it.
async fn find_prints_the_customers_an_identifier_finds(engine: Engine) {
    let store = TestStore::new(engine).await;
    let (ada, byron) = (new_customer(), new_customer());
    let app = App::new(store.ledger.clone());
    let register = |customer, changes| command(customer, &format!("reg-{customer}"), changes);
    app.run_command(
        &source("idp"),
        &register(
            ada,
            vec![
                Change::Register,
                set("email", serde_json::json!("ada@example.org")),
                set("phone", serde_json::json!("+44 20 7946 0958")),
                set("external_id.crm", serde_json::json!("C-42")),
                set("name.given", serde_json::json!("Ada")),
                set("name.family", serde_json::json!("Lovelace")),
            ],
        ),
    )
    .await
    .unwrap();
    app.run_command(
        &source("idp"),
        &register(
            byron,
            vec![
                Change::Register,
                set("phone", serde_json::json!("+442079460958")),
            ],
        ),
    )
    .await
    .unwrap();
    for statement in [
        "DELETE FROM lookup_index",
        "INSERT INTO pending_upgrades (name) VALUES ('lookup_index')",
    ] {
        match store.db.engine {
            Engine::Postgres => {
                sqlx::query(statement)
                    .execute(&store.db.pg().await)
                    .await
                    .unwrap();
            }
            Engine::Sqlite => {
                sqlx::query(statement)
                    .execute(&store.db.sqlite().await)
                    .await
                    .unwrap();
            }
        }
    }
    let seeded = Seeded {
        store,
        customer: ada.to_string(),
        proposal: String::new(),
        divergent: String::new(),
    };
    let dir = TempDir::new("find");
    let (ada, byron) = (ada.to_string(), byron.to_string());
    let one = |args: &[&str]| {
        let run = on_store(&dir, &seeded, args).success();
        assert_eq!(
            run.stdout.lines().collect::<Vec<_>>(),
            [seeded.customer.as_str()]
        );
    };
    one(&["find", "--email", "ADA@example.org"]);
    one(&["find", "--external-id", "crm:C-42"]);
    one(&["find", "--name", "ada  lovelace"]);
    let mut both = [ada.as_str(), byron.as_str()];
    both.sort_unstable();
    let run = on_store(&dir, &seeded, &["find", "--phone", "0044 20 7946 0958"]).success();
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), both);
    let run = on_store(
        &dir,
        &seeded,
        &["find", "--phone", "+442079460958", "--json"],
    )
    .success();
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"customer_ids": both, "truncated": false})
    );
    // Nobody: nothing on stdout, a note on stderr, success.
    let run = on_store(&dir, &seeded, &["find", "--email", "grace@example.org"])
        .success()
        .stderr_has(&["no customer has this email"]);
    assert!(run.stdout.is_empty());
    // Usage errors: none, two, a bad value (not repeated).
    on_store(&dir, &seeded, &["find"]).exit(2);
    on_store(
        &dir,
        &seeded,
        &[
            "find",
            "--email",
            "a@example.org",
            "--phone",
            "+442079460958",
        ],
    )
    .exit(2);
    let run = on_store(&dir, &seeded, &["find", "--external-id", "secret-person"]).exit(2);
    assert!(run.stderr.contains("--external-id must be") && !run.stderr.contains("secret"));
    // Erased: found by nothing.
    seeded
        .store
        .ledger
        .erase(
            idledger_domain::ids::CustomerId::parse(&ada).unwrap(),
            &idledger_testkit::builders::admin(),
            idledger_testkit::builders::dpo(),
            "subject's request",
        )
        .await
        .unwrap();
    let run = on_store(&dir, &seeded, &["find", "--phone", "+442079460958"]).success();
    assert_eq!(run.stdout.lines().collect::<Vec<_>>(), [byron.as_str()]);
}

// ---------------------------------------------------------------------------------------
// household, on both engines
// ---------------------------------------------------------------------------------------

/// A steward creates a household around Ada, Byron joins and becomes a guardian, leaves;
/// `show` lists members as text and JSON; refusals say what is wrong.
async fn households_are_created_joined_left_and_shown(engine: Engine) {
    let store = TestStore::new(engine).await;
    let (ada, byron) = (new_customer(), new_customer());
    let app = App::new(store.ledger.clone());
    for customer in [ada, byron] {
        let register = command(customer, &format!("reg-{customer}"), vec![Change::Register]);
        app.run_command(&source("idp"), &register).await.unwrap();
    }
    let seeded = Seeded {
        store,
        customer: ada.to_string(),
        proposal: String::new(),
        divergent: String::new(),
    };
    let dir = TempDir::new("household");
    let (ada, byron) = (ada.to_string(), byron.to_string());
    let run = |args: &[&str]| on_store(&dir, &seeded, args);

    let created = run(&["household", "create", &ada, "--as", "alice", "--json"]).success();
    let json: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    let household = json["household_id"].as_str().unwrap().to_owned();
    assert_eq!(
        json["members"],
        serde_json::json!([{"customer_id": ada, "role": "head"}])
    );
    assert_eq!(json["command"]["events"][0]["type"], "field_set");
    run(&[
        "household",
        "join",
        &household,
        &byron,
        "--as",
        "alice",
        "--reason",
        "moved in",
    ])
    .success()
    .stdout_has(&[&format!("{byron} joined household {household}")]);
    run(&[
        "household",
        "join",
        &household,
        &byron,
        "--role",
        "guardian",
        "--as",
        "alice",
    ])
    .success();
    let mut expected = vec![format!("{ada}  head"), format!("{byron}  guardian")];
    expected.sort();
    let shown = run(&["household", "show", &household]).success();
    assert_eq!(shown.stdout.lines().collect::<Vec<_>>(), expected);
    // `find --household` finds the same members, ids only, as `?household=` does.
    let mut members = vec![ada.as_str(), byron.as_str()];
    members.sort_unstable();
    let found = run(&["find", "--household", &household]).success();
    assert_eq!(found.stdout.lines().collect::<Vec<_>>(), members);
    // Recorded as the steward's, with the reason.
    let history = seeded
        .store
        .ledger
        .history(
            idledger_domain::ids::CustomerId::parse(&byron).unwrap(),
            &field("household"),
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    let provenance = &history[0].envelope.event.provenance;
    assert_eq!(provenance.actor.id(), "alice");
    assert_eq!(provenance.reason.as_deref(), Some("moved in"));

    run(&["household", "leave", &household, &byron, "--as", "alice"])
        .success()
        .stdout_has(&[&format!("{byron} left household {household}"), &ada]);
    run(&["household", "leave", &household, &byron, "--as", "alice"])
        .exit(1)
        .stderr_has(&["refused (not_a_member)"]);
    let shown = run(&["household", "show", &household, "--json"]).success();
    let json: serde_json::Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "household_id": household,
            "members": [{"customer_id": ada, "role": "head"}],
            "truncated": false,
        })
    );
    let found = run(&["find", "--household", &household, "--json"]).success();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&found.stdout).unwrap(),
        serde_json::json!({"customer_ids": [ada], "truncated": false})
    );
    // Nobody in it; a household nobody is in; usage errors.
    let unknown = "0190f5a2-7c3e-7a1b-8c4d-2e6f8a9b0c1d";
    let found = run(&["find", "--household", unknown])
        .success()
        .stderr_has(&["no customer has this household"]);
    assert!(found.stdout.is_empty());
    run(&["find", "--household", "not-an-id"])
        .exit(2)
        .stderr_has(&["--household must be"]);
    run(&["household", "show", unknown])
        .exit(1)
        .stderr_has(&["no household"]);
    run(&["household", "join", unknown, &byron, "--as", "alice"])
        .exit(1)
        .stderr_has(&["refused (unknown_household)"]);
    run(&[
        "household",
        "create",
        &ada,
        "--role",
        "cousin",
        "--as",
        "alice",
    ])
    .exit(2);
    run(&["household", "show", "not-an-id"]).exit(2);
    run(&["household", "create", &ada]).exit(2);
}

#[test]
fn merge_and_undo_it_as_a_steward() {
    let dir = TempDir::new("merge");
    let (ada, demo) = demo_into(&dir);
    let url = dir.sqlite_url("demo.db");
    // The demo's other customer, Mia: the second id its registrations answer with.
    let mia = demo
        .stdout
        .lines()
        .filter_map(|l| l.split("Location: /v1/customers/").nth(1))
        .map(|rest| rest.split(';').next().unwrap_or_default().trim().to_owned())
        .find(|id| *id != ada)
        .expect("the demo registers a second customer");
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            &mia,
            "--reason",
            "test merge",
            "--as",
            "alice",
        ],
    )
    .success()
    .stdout_has(&[&format!("{mia} merged into {ada}")]);
    idledger(&dir, &["--database", &url, "record", &mia])
        .success()
        .stderr_has(&[&format!("is merged into {ada}")]);
    idledger(&dir, &["--database", &url, "record", &ada])
        .success()
        .stdout_has(&["merged into it", &mia]);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            &mia,
            "--undo",
            "--reason",
            "not the same",
            "--as",
            "alice",
        ],
    )
    .success()
    .stdout_has(&[&format!("{mia} unmerged from {ada}")]);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            &mia,
            "--undo",
            "--reason",
            "again",
            "--as",
            "alice",
        ],
    )
    .exit(1)
    .stderr_has(&["refused (not_merged)"]);
    let unknown = "01900000-0000-7000-8000-000000000000";
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            unknown,
            &ada,
            "--reason",
            "same person",
            "--as",
            "alice",
        ],
    )
    .exit(1)
    .stderr_has(&["refused (not_registered)"]);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            &ada,
            "--reason",
            "same person",
            "--as",
            "alice",
        ],
    )
    .exit(1)
    .stderr_has(&["refused (same_customer)"]);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            unknown,
            "--reason",
            " ",
            "--as",
            "alice",
        ],
    )
    .exit(2)
    .stderr_has(&["--reason"]);
    idledger(
        &dir,
        &[
            "--database",
            &url,
            "merge",
            &ada,
            "not-an-id",
            "--reason",
            "x",
            "--as",
            "alice",
        ],
    )
    .exit(2);
}

// ---------------------------------------------------------------------------------------
// duplicates backfill, on both engines
// ---------------------------------------------------------------------------------------

/// Two customers sharing a verified email, recorded straight through the ledger (as before
/// duplicate detection existed), and an erased third: the backfill opens one candidate, a
/// second run none.
async fn duplicates_backfill_opens_the_candidates_detection_never_saw_once(engine: Engine) {
    let store = TestStore::new(engine).await;
    let email = || set("email", serde_json::json!("ada@example.org"));
    let mut customers = Vec::new();
    for _ in 0..3 {
        let customer = new_customer();
        idledger_testkit::builders::run(
            &store.ledger,
            "idp",
            customer,
            vec![Change::Register, email()],
        )
        .await;
        customers.push(customer);
    }
    idledger_testkit::builders::erase(&store.ledger, customers[2]).await;
    let seeded = Seeded {
        store,
        customer: customers[0].to_string(),
        proposal: String::new(),
        divergent: String::new(),
    };
    let dir = TempDir::new("duplicates");
    let run = |args: &[&str]| on_store(&dir, &seeded, args);
    run(&["duplicates", "backfill", "--dry-run"])
        .success()
        .stdout_has(&["(dry run)", "customers read: 2", "that would open: 1"]);
    run(&["duplicates", "backfill"]).success().stdout_has(&[
        "customers read: 2",
        "candidates opened: 1",
        "already known (left as they are): 0",
    ]);
    let again = run(&["duplicates", "backfill", "--json"]).success();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&again.stdout).unwrap(),
        serde_json::json!({"dry_run": false, "customers": 2, "opened": 0, "already_known": 1})
    );
    let listed = run(&["exception", "list", "--kind", "duplicate_candidate"]).success();
    assert_eq!(
        listed
            .stdout
            .lines()
            .filter(|l| l.contains("duplicate_candidate"))
            .count(),
        1,
        "{}",
        listed.stdout
    );
}
