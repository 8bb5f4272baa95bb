//! `idledger token …` and `idledger serve`, run as a user runs them: a token created on the
//! command line authenticates against the served API; SIGTERM stops the server cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

const CONFIG_VARS: [&str; 8] = [
    "DATABASE_URL",
    "IDLEDGER__DATABASE_URL",
    "IDLEDGER__DATA_DIR",
    "IDLEDGER__MASTER_KEY",
    "IDLEDGER__MASTER_KEY_FILE",
    "IDLEDGER__POLICY",
    "IDLEDGER__CONFIG",
    "IDLEDGER__SERVER__LISTEN",
];

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "idledger-serve-{name}-{}",
        uuid::Uuid::now_v7().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idledger(dir: &PathBuf, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_idledger"));
    for var in CONFIG_VARS {
        command.env_remove(var);
    }
    command
        .env("NO_COLOR", "1")
        .arg("--data-dir")
        .arg(dir)
        .args(args);
    command
}

fn run(dir: &PathBuf, args: &[&str]) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = idledger(dir, args).output().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn tokens_are_created_once_listed_and_revoked() {
    let dir = data_dir("tokens");
    let (code, secret, err) = run(
        &dir,
        &["token", "create", "--role", "source", "--source", "crm"],
    );
    assert_eq!(code, Some(0), "{err}");
    let secret = secret.trim().to_owned();
    assert!(secret.starts_with("idl_") && secret.len() > 40, "{secret}");
    assert!(err.contains("shown only this once"), "{err}");

    let (code, list, _) = run(&dir, &["token", "list"]);
    assert_eq!(code, Some(0));
    assert!(list.contains("source") && list.contains("crm"), "{list}");
    assert!(!list.contains(&secret), "the secret is never listed");
    let (_, json, _) = run(&dir, &["token", "list", "--json"]);
    let record: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    let id = record["id"].as_str().unwrap().to_owned();
    assert!(
        !std::fs::read(dir.join("idledger.db"))
            .unwrap()
            .windows(secret.len())
            .any(|w| w == secret.as_bytes())
    );

    // Usage and policy errors: nothing created.
    for args in [
        &["token", "create", "--role", "source"][..],
        &["token", "create", "--role", "wizard"],
        &["token", "create", "--role", "auditor", "--source", "crm"],
        &["token", "create", "--role", "source", "--source", "steward"],
        &[
            "token",
            "create",
            "--role",
            "source",
            "--source",
            "Not Valid!",
        ],
    ] {
        let (code, _, err) = run(&dir, args);
        assert_ne!(code, Some(0), "{args:?}");
        assert!(!err.is_empty());
    }
    let (_, json, _) = run(&dir, &["token", "list", "--json"]);
    assert_eq!(json.lines().count(), 1);

    let (code, out, _) = run(&dir, &["token", "revoke", &id]);
    assert_eq!(code, Some(0));
    assert!(out.contains("revoked"));
    let (code, _, err) = run(&dir, &["token", "revoke", &id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no live token"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn serve_answers_with_command_line_tokens_and_stops_on_sigterm() {
    let dir = data_dir("serve");
    let (_, secret, _) = run(
        &dir,
        &["token", "create", "--role", "source", "--source", "idp"],
    );
    let secret = secret.trim().to_owned();
    let mut child = idledger(&dir, &["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first
        .split("http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no address in {first:?}"))
        .trim()
        .to_owned();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let ready = client
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        let created = client
            .post(format!("http://{addr}/v1/customers"))
            .bearer_auth(&secret)
            .header("Idempotency-Key", "k1")
            .json(&serde_json::json!({"provenance": {"actor": {"kind": "system", "id": "test"}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), 201);
        let anonymous = client
            .post(format!("http://{addr}/v1/customers"))
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);
    });

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(rest.last().map(String::as_str), Some("stopped"), "{rest:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_file_configures_serve_and_bad_ones_are_named() {
    let dir = data_dir("config");
    let config = dir.join("idledger.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 1024\n",
    )
    .unwrap();
    let mut child = idledger(&dir, &["--config", config.to_str().unwrap(), "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("serving http://127.0.0.1:"), "{first}");
    child.kill().unwrap();
    let _ = child.wait();

    std::fs::write(&config, "[server]\nlisten = 8080\n").unwrap();
    let (code, _, err) = run(
        &dir,
        &["--config", config.to_str().unwrap(), "token", "list"],
    );
    assert_eq!(code, Some(1));
    assert!(
        err.contains("idledger.toml") && err.contains("not valid"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
