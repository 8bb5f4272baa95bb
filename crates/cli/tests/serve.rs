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
    assert_eq!(record["live"], true, "the API's TokenView: {record}");
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
    let (_, steward, _) = run(&dir, &["token", "create", "--role", "steward"]);
    let steward = steward.trim().to_owned();
    let mut child = idledger(
        &dir,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--secure-cookies",
            "--session-idle-secs",
            "60",
            "--checkpoint-every",
            "1",
        ],
    )
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
        // The steward page's session cookie is Secure, as configured.
        let login = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .post(format!("http://{addr}/steward/login"))
            .form(&[("token", steward.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 303);
        let cookie = login.headers()["set-cookie"].to_str().unwrap();
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        assert!(!cookie.contains(&steward), "{cookie}");
    });
    // The log grew: within a few seconds the schedule signs a checkpoint of it.
    let mut signed = serde_json::Value::Null;
    for _ in 0..100 {
        let (code, export, _) = run(&dir, &["checkpoint", "export"]);
        assert_eq!(code, Some(0));
        let export: serde_json::Value = serde_json::from_str(&export).unwrap();
        if let Some(first) = export["checkpoints"].get(0) {
            signed = first.clone();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(signed["position"].as_u64().unwrap() >= 1, "{signed}");

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
    assert!(
        rest.iter()
            .any(|l| l.contains("/steward (sessions: 60 s idle, 43200 s at most, Secure cookie)")),
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("checkpoints signed every 1 s while the log grows")),
        "{rest:?}"
    );
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

    // A timeout of 0 would close every connection at once: refused, naming the setting.
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nheader_timeout_secs = 0\n",
    )
    .unwrap();
    let (code, _, err) = run(&dir, &["--config", config.to_str().unwrap(), "serve"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("header-timeout-secs"), "{err}");
    let (code, _, err) = run(
        &dir,
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--request-timeout-secs",
            "0",
        ],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("request-timeout-secs"), "{err}");

    // NATS settings that cannot work stop serve at start, naming what is wrong, and never
    // print a secret.
    for (file, env, needle) in [
        (
            "[nats]\nuser = \"idledger\"\n",
            &[][..],
            "IDLEDGER__NATS__PASSWORD",
        ),
        (
            "[nats]\nuser = \"idledger\"\n",
            &[
                ("IDLEDGER__NATS__PASSWORD", "s3cret-password"),
                ("IDLEDGER__NATS__TOKEN", "s3cret-token"),
            ],
            "more than one way",
        ),
        (
            "[nats]\ncreds_file = \"/nonexistent/relay.creds\"\n",
            &[],
            "/nonexistent/relay.creds",
        ),
        (
            "[nats]\ntls_cert_file = \"/tmp/c.pem\"\n",
            &[],
            "tls_cert_file and tls_key_file",
        ),
        (
            "[nats]\n",
            &[("IDLEDGER__NATS__PASSWORD", "s3cret-password")],
            "without [nats] user",
        ),
    ] {
        std::fs::write(
            &config,
            format!("[server]\nlisten = \"192.0.2.1:9\"\n{file}url = \"nats://127.0.0.1:1\"\n"),
        )
        .unwrap();
        let mut command = idledger(&dir, &["--config", config.to_str().unwrap(), "serve"]);
        command.envs(env.iter().copied());
        let output = command.output().unwrap();
        let err = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(1), "{file}: {err}");
        assert!(err.contains(needle), "{file}: {err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

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

/// The whole path on the real binary: a consumer registered with the CLI, `serve` with the
/// relay on a real NATS server, commands over HTTP, and the CloudEvent on the consumer's
/// subject — only once the customer's consent for the consumer's purpose holds.
/// The shared NATS server's URL (`IDLEDGER_TEST_NATS_URL`, else the local default).
fn nats_url() -> String {
    std::env::var("IDLEDGER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// The `[nats]` section of a configuration whose streams and subjects no other test uses:
/// streams `<NAME>_<unique>` and `<NAME>_ACKS_<unique>`, subjects under `<prefix>`.
fn nats_section(url: &str, name: &str, unique: &str, prefix: &str) -> String {
    format!(
        "[nats]\nurl = \"{url}\"\nstream = \"{name}_{unique}\"\nsubject_prefix = \"{prefix}\"\n\
         ack_subject_prefix = \"{prefix}acks\"\nack_stream = \"{name}_ACKS_{unique}\"\n"
    )
}

/// Connects to the shared NATS server, or fails saying how to start one.
fn connect_nats(runtime: &tokio::runtime::Runtime, url: &str) -> async_nats::Client {
    runtime
        .block_on(async_nats::connect(url))
        .unwrap_or_else(|e| {
            panic!(
                "NATS is not reachable at {url}: {e}\nThis test needs a real NATS server with \
             JetStream. Start one with `bash scripts/services.sh` (or `nats-server -js`), or \
             point IDLEDGER_TEST_NATS_URL at one."
            )
        })
}

/// Registers a NATS consumer `crm` of `email` for `purpose` through the command line.
fn add_nats_consumer(dir: &PathBuf, config: &str, purpose: &str) {
    let (code, _, err) = run(
        dir,
        &[
            "--config",
            config,
            "consumer",
            "add",
            "--id",
            "crm",
            "--channel",
            "nats",
            "--fields",
            "email",
            "--purposes",
            purpose,
        ],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn serve_relays_changes_to_a_nats_consumer_within_its_purpose() {
    let nats_url = nats_url();
    let dir = data_dir("relay");
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("e2e{unique}");
    let config = dir.join("idledger.toml");
    std::fs::write(&config, nats_section(&nats_url, "E2E", &unique, &prefix)).unwrap();
    let cfg = config.to_str().unwrap();
    add_nats_consumer(&dir, cfg, "marketing");
    let token = |args: &[&str]| run(&dir, args).1.trim().to_owned();
    let idp = token(&["token", "create", "--role", "source", "--source", "idp"]);
    let portal = token(&[
        "token",
        "create",
        "--role",
        "source",
        "--source",
        "consent_portal",
    ]);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let nats = connect_nats(&runtime, &nats_url);
    let mut deliveries = runtime
        .block_on(nats.subscribe(format!("{prefix}.crm.>")))
        .unwrap();

    let mut child = idledger(&dir, &["--config", cfg, "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let addr = first.split("http://").nth(1).unwrap().trim().to_owned();

    let received = runtime.block_on(async {
        use futures::StreamExt as _;
        let client = reqwest::Client::new();
        let post = |path: String, token: String, key: &'static str, body: serde_json::Value| {
            let client = client.clone();
            let addr = addr.clone();
            async move {
                let response = client
                    .post(format!("http://{addr}{path}"))
                    .bearer_auth(token)
                    .header("Idempotency-Key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap();
                assert!(status.is_success(), "{status} {body}");
                body
            }
        };
        let provenance = serde_json::json!({"actor": {"kind": "system", "id": "e2e"},
            "evidence": {"kind": "email_link", "reference": "l-1"}});
        let created = post(
            "/v1/customers".to_owned(),
            idp.clone(),
            "r1",
            serde_json::json!({"provenance": provenance,
                "changes": [{"op": "set_field", "field": "email", "value": "before@example.org"}]}),
        )
        .await;
        let customer = created["customer_id"].as_str().unwrap().to_owned();
        // Nothing may arrive before the customer consents to the consumer's purpose.
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(700), deliveries.next()).await;
        assert!(early.is_err(), "delivered without consent: {early:?}");
        post(
            format!("/v1/customers/{customer}/commands"),
            portal,
            "c1",
            serde_json::json!({"provenance": provenance, "changes": [{"op": "grant_consent",
                "purpose": "marketing", "basis": "consent", "channel": "web", "jurisdiction": "GB",
                "notice": {"id": "pn", "version": "1", "sha256": "0".repeat(64)}}]}),
        )
        .await;
        post(
            format!("/v1/customers/{customer}/commands"),
            idp,
            "s2",
            serde_json::json!({"provenance": provenance,
                "changes": [{"op": "set_field", "field": "email", "value": "after@example.org"}]}),
        )
        .await;
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            loop {
                let message = deliveries.next().await.unwrap();
                let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                if event["data"]["value"] == "after@example.org" {
                    return (message.subject.to_string(), event);
                }
            }
        })
        .await
        .expect("the change reached the NATS consumer");
        (customer, message)
    });
    let (customer, (subject, event)) = received;
    assert_eq!(subject, format!("{prefix}.crm.{customer}.email"));
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["type"], "idledger.field.changed.v1");
    assert_eq!(event["subject"], customer.as_str());

    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    runtime.block_on(async {
        let js = async_nats::jetstream::new(nats);
        let _ = js.delete_stream(format!("E2E_{unique}")).await;
        let _ = js.delete_stream(format!("E2E_ACKS_{unique}")).await;
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A PostgreSQL test database and a data directory holding the master key file (`hex`
/// repeated), for tests that start several processes on one store; and the runtime the
/// database lives on.
fn postgres_store(
    name: &str,
    hex: &str,
) -> (
    tokio::runtime::Runtime,
    idledger_testkit::TestDb,
    PathBuf,
    PathBuf,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(idledger_testkit::TestDb::new(
        idledger_testkit::Engine::Postgres,
    ));
    let dir = data_dir(name);
    // A PostgreSQL store's master key is provisioned, never generated: one file for all.
    let key_file = dir.join("master.key");
    std::fs::write(&key_file, hex.repeat(32)).unwrap();
    (runtime, db, dir, key_file)
}

/// Two `serve` processes on one PostgreSQL: a decision asked of one right after a withdrawal
/// was answered by the other never allows (each question reads the customer's state fresh).
#[test]
fn a_decision_on_one_process_sees_a_withdrawal_made_through_another() {
    let (runtime, db, dir, key_file) = postgres_store("two-processes", "ab");
    let key = key_file.to_str().unwrap();
    let with_db = |args: &[&str]| {
        let mut all = vec!["--database", db.url.as_str(), "--master-key-file", key];
        all.extend_from_slice(args);
        run(&dir, &all)
    };
    let (code, _, err) = with_db(&[
        "processor",
        "add",
        "--id",
        "journey",
        "--purposes",
        "marketing",
        "--fields",
        "email",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let token = |args: &[&str]| with_db(args).1.trim().to_owned();
    let idp = token(&["token", "create", "--role", "source", "--source", "idp"]);
    let portal = token(&[
        "token",
        "create",
        "--role",
        "source",
        "--source",
        "consent_portal",
    ]);
    let journey = token(&[
        "token",
        "create",
        "--role",
        "processor",
        "--processor",
        "journey",
    ]);
    let start = || {
        let mut child = idledger(
            &dir,
            &[
                "--database",
                db.url.as_str(),
                "--master-key-file",
                key,
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--no-relay",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.split("http://").nth(1).unwrap().trim().to_owned();
        // Kept open: a server whose standard output is closed dies on its next line.
        (child, addr, lines)
    };
    let (mut a, on_a, _a_out) = start();
    let (mut b, on_b, _b_out) = start();
    runtime.block_on(async {
        let client = reqwest::Client::new();
        let post = |addr: &str, path: String, token: &str, key: String, body: serde_json::Value| {
            client
                .post(format!("http://{addr}{path}"))
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
        };
        let provenance = serde_json::json!({"actor": {"kind": "system", "id": "e2e"},
            "evidence": {"kind": "email_link", "reference": "l-1"}});
        for n in 0..5 {
            let created = post(
                &on_a,
                "/v1/customers".to_owned(),
                &idp,
                format!("r{n}"),
                serde_json::json!({"provenance": provenance, "changes": [
                    {"op": "set_field", "field": "email", "value": format!("u{n}@example.org")}]}),
            )
            .await
            .unwrap();
            assert_eq!(created.status(), 201);
            let customer = created.json::<serde_json::Value>().await.unwrap()["customer_id"]
                .as_str()
                .unwrap()
                .to_owned();
            let change = |op: serde_json::Value, key: String| {
                post(
                    &on_a,
                    format!("/v1/customers/{customer}/commands"),
                    &portal,
                    key,
                    serde_json::json!({"provenance": provenance, "changes": [op]}),
                )
            };
            let granted = change(
                serde_json::json!({"op": "grant_consent", "purpose": "marketing", "basis": "consent",
                    "channel": "web", "jurisdiction": "DE",
                    "notice": {"id": "pn", "version": "1", "sha256": "0".repeat(64)}}),
                format!("g{n}"),
            )
            .await
            .unwrap();
            assert_eq!(granted.status(), 200);
            let ask = || {
                post(
                    &on_b,
                    "/v1/decisions".to_owned(),
                    &journey,
                    String::new(),
                    serde_json::json!({"customer_id": customer, "purpose": "marketing",
                        "fields": ["email"]}),
                )
            };
            let before: serde_json::Value = ask().await.unwrap().json().await.unwrap();
            assert_eq!(before["allowed"], true, "{before}");
            let withdrawn = change(
                serde_json::json!({"op": "withdraw_consent", "purpose": "marketing"}),
                format!("w{n}"),
            )
            .await
            .unwrap();
            assert_eq!(withdrawn.status(), 200);
            // Asked of the other process the moment the withdrawal was acknowledged.
            let after: serde_json::Value = ask().await.unwrap().json().await.unwrap();
            assert_eq!(after["allowed"], false, "{after}");
            assert_eq!(after["fields"][0]["reason"], "consent_withdrawn", "{after}");
        }
    });
    for child in [&mut a, &mut b] {
        child.kill().unwrap();
        let _ = child.wait();
    }
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two `serve` processes on one PostgreSQL, each with its relay, as two replicas behind a
/// load balancer: both take commands and see each other's writes at once; exactly one
/// delivers; when it is killed (`kill -9`) the other takes over, and every change reaches the
/// NATS consumer.
#[test]
fn two_replicas_take_commands_and_one_delivers_with_takeover_when_it_is_killed() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let nats_url = nats_url();
    let (runtime, db, dir, key_file) = postgres_store("replicas", "cd");
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("rep{unique}");
    let config = dir.join("idledger.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\nmaster_key_file = \"{}\"\n\n{}",
            db.url,
            key_file.display(),
            nats_section(&nats_url, "REP", &unique, &prefix)
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    add_nats_consumer(&dir, cfg, "service");
    let token = |source: &str| {
        run(
            &dir,
            &[
                "--config", cfg, "token", "create", "--role", "source", "--source", source,
            ],
        )
        .1
        .trim()
        .to_owned()
    };
    let (idp, portal) = (token("idp"), token("consent_portal"));

    let nats = connect_nats(&runtime, &nats_url);
    let mut deliveries = runtime
        .block_on(nats.subscribe(format!("{prefix}.crm.>")))
        .unwrap();

    // A replica: its address, and its log lines saying it leads delivery, as they come.
    let (leads_tx, leads) = mpsc::channel::<(&'static str, Instant)>();
    let start = |name: &'static str| {
        let mut child = idledger(&dir, &["--config", cfg, "serve", "--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "idledger_relay=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().unwrap().unwrap();
        let addr = first.split("http://").nth(1).unwrap().trim().to_owned();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let leads_tx = leads_tx.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if line.contains("this process leads delivery") {
                    let _ = leads_tx.send((name, Instant::now()));
                }
            }
        });
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        (child, addr)
    };
    let (mut a, on_a) = start("a");
    let (first, _) = leads.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(first, "a");
    let (mut b, on_b) = start("b");
    assert!(
        leads.recv_timeout(Duration::from_secs(2)).is_err(),
        "a second replica does not deliver while the first does"
    );

    let provenance = serde_json::json!({"actor": {"kind": "system", "id": "e2e"},
        "evidence": {"kind": "email_link", "reference": "l-1"}});
    let client = reqwest::Client::new();
    let command_at =
        |addr: &str, path: String, key: String, body: serde_json::Value, version: Option<u64>| {
            // Consents come from the consent portal, the rest from the identity provider.
            let by = if body.to_string().contains("grant_consent") {
                &portal
            } else {
                &idp
            };
            let request = client
                .post(format!("http://{addr}{path}"))
                .bearer_auth(by)
                .header("Idempotency-Key", key)
                .json(&body);
            let request = match version {
                Some(v) => request.header("If-Match", format!("\"{v}\"")),
                None => request,
            };
            async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap();
                assert!(status.is_success(), "{status} {body}");
                body
            }
        };
    let command = |addr: &str, path: String, key: String, body: serde_json::Value| {
        command_at(addr, path, key, body, None)
    };
    let grant = serde_json::json!({"op": "grant_consent", "purpose": "service",
        "basis": "contract", "channel": "web", "jurisdiction": "DE",
        "notice": {"id": "pn", "version": "1", "sha256": "0".repeat(64)}});
    let mut expected: Vec<String> = Vec::new();
    let killed_at = runtime.block_on(async {
        let mut customers = Vec::new();
        for n in 0..6 {
            let (here, there) = if n % 2 == 0 {
                (&on_a, &on_b)
            } else {
                (&on_b, &on_a)
            };
            let created = command(
                here,
                "/v1/customers".to_owned(),
                format!("r{n}"),
                serde_json::json!({"provenance": provenance, "changes": [
                    {"op": "set_field", "field": "name.given", "value": "Ada"}]}),
            )
            .await;
            let customer = created["customer_id"].as_str().unwrap().to_owned();
            command(
                there,
                format!("/v1/customers/{customer}/commands"),
                format!("g{n}"),
                serde_json::json!({"provenance": provenance, "changes": [grant.clone()]}),
            )
            .await;
            let email = format!("first{n}@example.org");
            let first = command(
                here,
                format!("/v1/customers/{customer}/commands"),
                format!("f{n}"),
                serde_json::json!({"provenance": provenance,
                    "changes": [{"op": "set_field", "field": "email", "value": email}]}),
            )
            .await;
            expected.push(email);
            let version = first["stream_version"].as_u64().unwrap();
            // The other replica sees the version at once: a command that expects it passes.
            let email = format!("second{n}@example.org");
            let next = command_at(
                there,
                format!("/v1/customers/{customer}/commands"),
                format!("s{n}"),
                serde_json::json!({"provenance": provenance,
                    "changes": [{"op": "set_field", "field": "email", "value": email}]}),
                Some(version),
            )
            .await;
            assert_eq!(next["stream_version"].as_u64(), Some(version + 1), "{next}");
            expected.push(email);
            customers.push(customer);
        }
        // Delivery is under way; the leader dies without a word.
        let killed_at = Instant::now();
        a.kill().unwrap();
        let _ = a.wait();
        for (n, customer) in customers.iter().enumerate() {
            let email = format!("third{n}@example.org");
            command(
                &on_b,
                format!("/v1/customers/{customer}/commands"),
                format!("t{n}"),
                serde_json::json!({"provenance": provenance,
                    "changes": [{"op": "set_field", "field": "email", "value": email}]}),
            )
            .await;
            expected.push(email);
        }
        killed_at
    });
    let (next, took_over_at) = leads.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(next, "b");
    let gap = took_over_at - killed_at;
    eprintln!("takeover after kill -9: {gap:?}");
    assert!(gap < Duration::from_secs(5), "took over after {gap:?}");

    let received = runtime.block_on(async {
        use futures::StreamExt as _;
        let mut seen = std::collections::BTreeSet::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while seen.len() < expected.len() {
                let message = deliveries.next().await.unwrap();
                let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
                if let Some(value) = event["data"]["value"].as_str() {
                    seen.insert(value.to_owned());
                }
            }
        })
        .await;
        seen
    });
    let wanted: std::collections::BTreeSet<String> = expected.into_iter().collect();
    assert_eq!(
        received, wanted,
        "every change reached the consumer across the takeover"
    );

    b.kill().unwrap();
    let _ = b.wait();
    runtime.block_on(async {
        let js = async_nats::jetstream::new(nats);
        let _ = js.delete_stream(format!("REP_{unique}")).await;
        let _ = js.delete_stream(format!("REP_ACKS_{unique}")).await;
    });
    drop(db);
    std::fs::remove_dir_all(&dir).unwrap();
}
