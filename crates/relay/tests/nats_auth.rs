//! NATS trust boundaries against real nats-servers: a server started with the accounts
//! `idledger consumer nats-config` writes confines each consumer to its own deliveries and acks
//! and lets idledger alone publish deliveries; on any server, an ack that is not signed with
//! its consumer's ack key is refused and counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use idledger_relay::access;
use idledger_relay::envelope::CloudEvent;
use idledger_relay::{NatsAuth, NatsConfig, NatsTls};
use idledger_store::delivery::{Channel, ConsumerId};
use serde_json::json;
use sha2::Sha256;
use support::*;
use zeroize::Zeroizing;

const RELAY_PASSWORD: &str = "relay-secret-1";
const CRM_PASSWORD: &str = "crm-secret-2";
const CDP_PASSWORD: &str = "cdp-secret-3";

/// A consumer's connection, with the server errors it was sent.
struct Client {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

impl Client {
    async fn connect(url: &str, user: &str, password: &str) -> Result<Self, String> {
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = errors.clone();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            password.to_owned(),
        )
        .custom_inbox_prefix(access::inbox_prefix(&ConsumerId::parse(user).unwrap()))
        .event_callback(move |event| {
            let seen = seen.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string().to_lowercase());
                }
            }
        })
        .connect(url)
        .await
        .map_err(|e| e.to_string())?;
        Ok(Self { client, errors })
    }

    /// Waits for the server to report a permissions violation naming `subject`.
    async fn violation(&self, subject: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            self.client.flush().await.ok();
            if self
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("permissions violation") && e.contains(&subject.to_lowercase()))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no permissions violation for {subject}; errors: {:?}",
                self.errors.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_permissions_confine_each_consumer_to_its_own_subjects() {
    let store = TestStore::new(Engine::Sqlite).await;
    for id in ["crm", "cdp"] {
        store
            .register(consumer(id, Channel::Nats, &["email"], &["crm"]))
            .await;
    }
    let crm = ConsumerId::parse("crm").unwrap();
    let cdp = ConsumerId::parse("cdp").unwrap();
    let mut nats = unique_nats("");
    let accounts = access::server_accounts(&nats, &[crm.clone(), cdp.clone()]).unwrap();
    let server = OwnNats::start_with_config(
        &accounts,
        &[
            ("NATS_PASSWORD_IDLEDGER", RELAY_PASSWORD),
            ("NATS_PASSWORD_CRM", CRM_PASSWORD),
            ("NATS_PASSWORD_CDP", CDP_PASSWORD),
        ],
    )
    .await;
    let url = server.url.clone();

    // Without the right password nobody gets in.
    let refused = Client::connect(&url, "crm", "wrong").await.err();
    assert!(
        refused.as_deref().is_some_and(|e| e.contains("authoriz")),
        "{refused:?}"
    );

    // Configured credentials are used; so are credentials in the URL (the relay's, below).
    let configured = |password: &str| {
        let mut config = nats.clone();
        config.url.clone_from(&url);
        config.auth = NatsAuth::UserPassword {
            user: "cdp".to_owned(),
            password: Zeroizing::new(password.to_owned()),
        };
        idledger_relay::nats::connect_options(&config)
            .unwrap()
            .connect(url.clone())
    };
    configured(CDP_PASSWORD).await.unwrap();
    assert!(configured("wrong").await.is_err());
    nats.url = format!(
        "nats://{}:{RELAY_PASSWORD}@127.0.0.1:{}",
        access::RELAY_USER,
        server.port
    );
    let ledger = &store.ledger;
    let customer = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    store.caught_up("cdp", Duration::from_secs(20)).await;
    let stream = nats.stream.name.as_str();
    let prefix = nats.stream.subject_prefix.as_str();

    // crm reads its own deliveries from its durable and acknowledges them.
    let a = Client::connect(&url, "crm", CRM_PASSWORD).await.unwrap();
    let js = jetstream::new(a.client.clone());
    let durable: jetstream::consumer::Consumer<pull::Config> =
        js.get_consumer_from_stream("crm", stream).await.unwrap();
    let mut batch = durable
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut received = Vec::new();
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        message.ack().await.unwrap();
        received.push(message);
    }
    assert_eq!(received.len(), 1, "crm's one delivery");
    let event: CloudEvent = serde_json::from_slice(&received[0].payload).unwrap();
    assert_eq!(event.data["field"], "email");
    assert!(
        received[0]
            .subject
            .as_str()
            .starts_with(&format!("{prefix}.crm.")),
        "{}",
        received[0].subject
    );

    // crm cannot read cdp's durable, nor the stream, nor subscribe to cdp's subjects.
    let theirs = tokio::time::timeout(
        Duration::from_secs(2),
        js.get_consumer_from_stream::<pull::Config, _, _>("cdp", stream),
    )
    .await;
    assert!(!matches!(theirs, Ok(Ok(_))), "crm opened cdp's durable");
    a.violation(&format!("$JS.API.CONSUMER.INFO.{stream}.cdp"))
        .await;
    a.client
        .publish(
            format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.cdp"),
            "1".into(),
        )
        .await
        .unwrap();
    a.violation(&format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.cdp"))
        .await;
    let info = tokio::time::timeout(Duration::from_secs(2), js.get_stream(stream)).await;
    assert!(
        info.map(|r| r.is_err()).unwrap_or(true),
        "crm read the stream"
    );
    a.violation(&format!("$JS.API.STREAM.INFO.{stream}")).await;
    let _sub = a.client.subscribe(format!("{prefix}.cdp.>")).await.unwrap();
    a.violation(&format!("{prefix}.cdp.>")).await;
    let _inbox = a.client.subscribe("_INBOX_cdp.>").await.unwrap();
    a.violation("_INBOX_cdp.>").await;

    // crm cannot publish a delivery, nor ack for cdp.
    let forged = format!("{prefix}.cdp.{customer}.email");
    a.client
        .publish(forged.clone(), b"{}".as_slice().into())
        .await
        .unwrap();
    a.violation(&forged).await;
    let ack_for_cdp = format!("{}.cdp", nats.ack_subject_prefix);
    a.client
        .publish(ack_for_cdp.clone(), b"{}".as_slice().into())
        .await
        .unwrap();
    a.violation(&ack_for_cdp).await;

    // What the stream holds is what idledger published: one delivery per consumer.
    let relay_view = jetstream::new(
        async_nats::ConnectOptions::with_user_and_password(
            access::RELAY_USER.to_owned(),
            RELAY_PASSWORD.to_owned(),
        )
        .connect(&url)
        .await
        .unwrap(),
    );
    let held = stream_messages(&relay_view, stream).await;
    assert_eq!(held.len(), 2, "{held:?}");
    for (subject, body) in &held {
        let event: CloudEvent = serde_json::from_slice(body).unwrap();
        assert_eq!(event.data["field"], "email", "{subject}");
    }

    // crm's own ack, signed, is taken.
    let body = serde_json::to_vec(&json!({
        "event_id": event.id, "customer_id": event.subject, "field": "email",
        "version": event.idledgerversion, "value_hash": event.data["value_hash"],
        "status": "applied",
    }))
    .unwrap();
    js.publish_with_headers(
        format!("{}.crm", nats.ack_subject_prefix),
        signed(&ledger.ack_key(&crm), &body),
        body.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store
        .deliveries
        .consumer_state(&crm, Some(customer))
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "crm's ack was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.stop().await;
}

/// The ack key as a consumer holds it (hex, from the API), used the way the contract says.
fn sign_as_contract_says(key_hex: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_an_open_nats_forged_acks_are_refused_and_counted() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Sqlite).await;
    let nats: NatsConfig = unique_nats(&url);
    for id in ["crm", "cdp"] {
        store
            .register(consumer(id, Channel::Nats, &["email"], &["crm"]))
            .await;
    }
    let ledger = &store.ledger;
    let customer = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    run(ledger, "idp", customer, vec![set("email", email(2))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    let js = jetstream(&url).await;
    let delivered: Vec<CloudEvent> = read_stream(
        &js,
        &nats.stream.name,
        &format!("{}.crm.>", nats.stream.subject_prefix),
    )
    .await
    .into_iter()
    .map(|d| d.event)
    .collect();
    assert_eq!(delivered.len(), 2);
    let ack = |e: &CloudEvent, status: &str| {
        let mut body = json!({
            "event_id": e.id, "customer_id": e.subject, "field": "email",
            "version": e.idledgerversion, "value_hash": e.data["value_hash"], "status": status,
        });
        if status == "rejected" {
            body["reason"] = json!("forged");
        }
        serde_json::to_vec(&body).unwrap()
    };
    let crm = ConsumerId::parse("crm").unwrap();
    let crm_key = ledger.ack_key(&crm).to_hex();
    let cdp_key = ledger.ack_key(&ConsumerId::parse("cdp").unwrap()).to_hex();
    let subject = format!("{}.crm", nats.ack_subject_prefix);
    let send = |body: Vec<u8>, signature: Option<String>| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(signature) = signature {
                headers.insert(idledger_relay::acks::SIGNATURE_HEADER, signature.as_str());
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                // The relay creates the ack stream when it starts.
                if let Ok(sent) = js
                    .publish_with_headers(subject.clone(), headers.clone(), body.clone().into())
                    .await
                    && sent.await.is_ok()
                {
                    return;
                }
                assert!(tokio::time::Instant::now() < deadline, "cannot publish");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // Forgeries of a later version, which would win over the genuine ack below if taken:
    // unsigned, signed with another consumer's key, and a signed body altered afterwards.
    let later = ack(&delivered[1], "rejected");
    send(later.clone(), None).await;
    send(later.clone(), Some(sign_as_contract_says(&cdp_key, &later))).await;
    let genuine_later = ack(&delivered[1], "applied");
    send(
        later.clone(),
        Some(sign_as_contract_says(&crm_key, &genuine_later)),
    )
    .await;
    // The genuine ack, signed as the contract says with crm's key.
    let earlier = ack(&delivered[0], "applied");
    send(
        earlier.clone(),
        Some(sign_as_contract_says(&crm_key, &earlier)),
    )
    .await;

    // Acks are read in order: once the genuine one is recorded, the forgeries were handled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let state = loop {
        let state = store
            .deliveries
            .consumer_state(&crm, Some(customer))
            .await
            .unwrap();
        if !state.is_empty() {
            break state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the genuine ack was not recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(state.len(), 1);
    assert_eq!(Some(state[0].version), delivered[0].idledgerversion);
    assert_eq!(state[0].event_id.to_string(), delivered[0].id);

    let text = metrics.render();
    let count = |outcome: &str| -> u64 {
        text.lines()
            .find(|l| {
                l.starts_with("idledger_acks_total{")
                    && l.contains("channel=\"nats\"")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |n| n.parse().unwrap())
    };
    assert_eq!(count("unsigned"), 1, "{text}");
    assert_eq!(count("bad_signature"), 2, "{text}");
    assert_eq!(count("recorded"), 1, "{text}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_reaches_nats_over_mutual_tls_and_refuses_a_server_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let certs = idledger_testkit::TestCerts::write(dir.path());
    let server = OwnNats::start_with_config(
        &format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
            certs.server_cert.display(),
            certs.server_key.display(),
            certs.ca.display()
        ),
        &[],
    )
    .await;
    let mut nats = unique_nats(&format!("nats://localhost:{}", server.port));
    nats.tls = NatsTls {
        ca_file: Some(certs.ca.clone()),
        client_cert: Some((certs.client_cert.clone(), certs.client_key.clone())),
        required: true,
    };
    let attempt = |config: NatsConfig| async move {
        let options = idledger_relay::nats::connect_options(&config).map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            Duration::from_secs(10),
            options.connect(config.url.as_str()),
        )
        .await
        {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 10 s".to_owned()),
        }
    };
    attempt(nats.clone()).await.unwrap();
    // The server wants a client certificate.
    let mut without_cert = nats.clone();
    without_cert.tls.client_cert = None;
    assert!(attempt(without_cert).await.is_err());
    // A server whose certificate the configured CA did not sign is refused.
    let mut other_ca = nats.clone();
    other_ca.tls.ca_file = Some(certs.other_ca.clone());
    assert!(attempt(other_ca).await.is_err());
    // Files that cannot be read are refused before any connection.
    let mut missing = nats.clone();
    missing.tls.ca_file = Some(dir.path().join("missing.pem"));
    let refused = idledger_relay::nats::connect_options(&missing).unwrap_err();
    assert!(refused.to_string().contains("missing.pem"), "{refused}");

    // Deliveries flow over it.
    let store = TestStore::new(Engine::Sqlite).await;
    store
        .register(consumer("crm", Channel::Nats, &["email"], &["crm"]))
        .await;
    let ledger = &store.ledger;
    let customer = customer_consenting(ledger, &["crm"]).await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("crm", Duration::from_secs(20)).await;
    let js = jetstream::new(attempt(nats.clone()).await.unwrap());
    assert_eq!(stream_messages(&js, &nats.stream.name).await.len(), 1);
    relay.stop().await;
}

#[test]
fn credentials_in_the_url_are_used_and_must_not_be_given_twice() {
    let mut config = unique_nats("nats://relay:s3cret@127.0.0.1:4222");
    assert!(idledger_relay::nats::connect_options(&config).is_ok());
    config.auth = NatsAuth::Token(Zeroizing::new("t0ken".to_owned()));
    let twice = idledger_relay::nats::connect_options(&config).unwrap_err();
    assert!(twice.to_string().contains("both in the URL"), "{twice}");
    assert!(!twice.to_string().contains("s3cret"), "{twice}");
    let mut config = unique_nats("nats://a:one@h1:4222,nats://a:two@h2:4222");
    let differ = idledger_relay::nats::connect_options(&config).unwrap_err();
    assert!(
        differ.to_string().contains("different credentials"),
        "{differ}"
    );
    config.url = "nats://127.0.0.1:4222".to_owned();
    config.auth = NatsAuth::NKey(Zeroizing::new("SUnotaseed".to_owned()));
    let seed = idledger_relay::nats::connect_options(&config).unwrap_err();
    assert!(seed.to_string().contains("nkey seed"), "{seed}");
    assert!(!seed.to_string().contains("SUnotaseed"), "{seed}");
}
