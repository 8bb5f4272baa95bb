//! Purpose limitation at delivery, on a real NATS: a consumer gets a customer's data only while
//! the basis for its purposes holds; withdrawal or expiry brings one notice and then nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use chrono::Utc;
use idledger_domain::ids::CustomerId;
use idledger_domain::state::ConsentStatus;
use idledger_domain::usage::Location;
use idledger_domain::values::{CountryCode, TransferBasis};
use idledger_relay::envelope::{
    CONSENT_CHANGED, CONSENT_GRANTED, CONSENT_WITHDRAWN, CloudEvent, FIELD_CHANGED,
};
use idledger_store::delivery::{Channel, HandoffFilter, HandoffKind};
use support::*;

on_both_engines!(
    purpose_limitation_withdrawal_and_resume,
    a_consumer_abroad_is_sent_only_what_may_lawfully_go_there
);

fn of(events: &[CloudEvent], customer: CustomerId) -> Vec<(String, Option<String>)> {
    events
        .iter()
        .filter(|e| e.subject == customer.to_string())
        .map(|e| {
            (
                e.event_type.clone(),
                e.data["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn kinds(kinds: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    kinds
        .iter()
        .map(|(t, v)| ((*t).to_owned(), v.map(str::to_owned)))
        .collect()
}

async fn purpose_limitation_withdrawal_and_resume(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    // Marketing tool: email for marketing. CRM: email and consent flags for customer service.
    store
        .register(consumer("mkt", Channel::Nats, &["email"], &["marketing"]))
        .await;
    store
        .register(consumer(
            "crm",
            Channel::Nats,
            &["email", "consent.*"],
            &["service"],
        ))
        .await;
    let ledger = &store.ledger;
    let a = customer_consenting(ledger, &["marketing", "service"]).await;
    let b = customer_consenting(ledger, &["service"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    run(ledger, "idp", b, vec![set("email", email(2))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    store.caught_up("mkt", Duration::from_secs(20)).await;

    // A withdraws marketing; later changes of A reach the CRM but not the marketing tool.
    run(ledger, "consent_portal", a, vec![withdraw("marketing")]).await;
    run(ledger, "idp", a, vec![set("email", email(3))]).await;
    run(ledger, "idp", b, vec![set("email", email(4))]).await;
    store.caught_up("mkt", Duration::from_secs(20)).await;
    store.caught_up("crm", Duration::from_secs(20)).await;
    // Granted again: a resume notice, then changes flow again.
    run(ledger, "consent_portal", a, vec![grant("marketing", None)]).await;
    run(ledger, "idp", a, vec![set("email", email(5))]).await;
    store.caught_up("mkt", Duration::from_secs(20)).await;
    store.caught_up("crm", Duration::from_secs(20)).await;

    let js = jetstream(&url).await;
    let prefix = &nats.stream.subject_prefix;
    let mkt: Vec<CloudEvent> =
        dedupe(&read_stream(&js, &nats.stream.name, &format!("{prefix}.mkt.>")).await)
            .into_iter()
            .map(|d| d.event)
            .collect();
    assert_eq!(
        of(&mkt, b),
        vec![],
        "B never consented to marketing: the marketing tool gets nothing of B"
    );
    let e1 = email(1).as_str().unwrap().to_owned();
    let e5 = email(5).as_str().unwrap().to_owned();
    assert_eq!(
        of(&mkt, a),
        kinds(&[
            (FIELD_CHANGED, Some(&e1)),
            (CONSENT_WITHDRAWN, None),
            (CONSENT_GRANTED, None),
            (FIELD_CHANGED, Some(&e5)),
        ]),
        "one notice on withdrawal, nothing while withdrawn, a resume before the next change"
    );
    let notice = mkt
        .iter()
        .find(|e| e.event_type == CONSENT_WITHDRAWN)
        .unwrap();
    assert_eq!(notice.data["reason"], "withdrawn");
    assert_eq!(notice.data["action"], "stop_processing_and_delete");
    assert_eq!(notice.data["field"], "consent.marketing");
    assert_eq!(notice.data["fields"], serde_json::json!(["email"]));
    assert_ne!(notice.id, notice.idledgerevent, "a notice has its own id");

    let crm: Vec<CloudEvent> =
        dedupe(&read_stream(&js, &nats.stream.name, &format!("{prefix}.crm.>")).await)
            .into_iter()
            .map(|d| d.event)
            .collect();
    let crm_a: Vec<String> = crm
        .iter()
        .filter(|e| e.subject == a.to_string())
        .map(|e| format!("{} {}", e.event_type, e.data["field"].as_str().unwrap()))
        .collect();
    assert_eq!(
        crm_a,
        [
            format!("{CONSENT_CHANGED} consent.marketing"),
            format!("{CONSENT_CHANGED} consent.service"),
            format!("{FIELD_CHANGED} email"),
            format!("{CONSENT_CHANGED} consent.marketing"),
            format!("{FIELD_CHANGED} email"),
            format!("{CONSENT_CHANGED} consent.marketing"),
            format!("{FIELD_CHANGED} email"),
        ],
        "the CRM's own basis (service) held throughout"
    );
    let withdrawn = crm
        .iter()
        .filter(|e| e.subject == a.to_string())
        .nth(3)
        .unwrap();
    assert_eq!(withdrawn.data["value"], "withdrawn");

    // Each consent change carries its signed receipt, which the subscriber checks offline
    // with the public key set alone (and another JOSE implementation than the signer's).
    let keys = ledger
        .signing_keys()
        .list(Some(idledger_store::jws::TOKEN_PURPOSE))
        .await
        .unwrap();
    let set = idledger_store::jws::jwks(&keys);
    let consents: Vec<&CloudEvent> = crm
        .iter()
        .filter(|e| e.subject == a.to_string() && e.event_type == CONSENT_CHANGED)
        .collect();
    assert_eq!(consents.len(), 4);
    for event in &consents {
        let claims = verify_receipt(&set, event.data["receipt"].as_str().unwrap());
        assert_eq!(
            claims["jti"],
            event.idledgerevent.as_str(),
            "the consent's event"
        );
        assert_eq!(claims["sub"], a.to_string());
        assert_eq!(claims["state"], event.data["value"]);
        assert_eq!(
            claims["purpose"],
            event.data["field"].as_str().unwrap()[8..]
        );
        assert_eq!(claims["consent_version"], event.idledgerversion.unwrap());
        assert_eq!(claims["collection_method"], "web");
        assert_eq!(claims["notice"]["id"], "privacy-notice");
        assert_eq!(claims["controller"], "Example Retail Ltd");
    }
    assert_eq!(
        withdrawn.data["value_hash"],
        serde_json::json!(
            ledger
                .hash_key(&idledger_store::delivery::ConsumerId::parse("crm").unwrap())
                .consent(false)
        )
    );

    // The handoff log: what went to whom, on which basis.
    let log = store
        .deliveries
        .handoffs(&HandoffFilter::Customer(a), None, 100)
        .await
        .unwrap();
    let mkt_log: Vec<_> = log
        .items
        .iter()
        .filter(|h| h.handoff.consumer_id.as_str() == "mkt")
        .map(|h| &h.handoff)
        .collect();
    assert_eq!(
        mkt_log.iter().map(|h| h.kind).collect::<Vec<_>>(),
        [
            HandoffKind::Change,
            HandoffKind::Notice,
            HandoffKind::Resume,
            HandoffKind::Change
        ]
    );
    assert_eq!(mkt_log[0].basis[0].status, ConsentStatus::Granted);
    assert_eq!(mkt_log[0].fields, ["email"]);
    assert_eq!(mkt_log[1].basis[0].status, ConsentStatus::Withdrawn);
    let of_b = store
        .deliveries
        .handoffs(&HandoffFilter::Customer(b), None, 100)
        .await
        .unwrap();
    assert!(
        of_b.items
            .iter()
            .all(|h| h.handoff.consumer_id.as_str() == "crm"),
        "nothing of B was handed to the marketing tool"
    );
    relay.stop().await;
}

/// Consumers are processors: one registered in a region of its own is sent a customer's data
/// only while the transfer there is lawful under the policy's rules, judged on the
/// customer's recorded jurisdiction (else the consent's) — the rule decisions apply.
async fn a_consumer_abroad_is_sent_only_what_may_lawfully_go_there(engine: Engine) {
    let url = shared_nats().await;
    let store = TestStore::new(engine).await;
    let nats = unique_nats(&url);
    let abroad = |id: &str, region: &str, basis: Option<TransferBasis>| {
        let location = Location::new(Some(CountryCode::parse(region).unwrap()), basis).unwrap();
        consumer(id, Channel::Nats, &["email"], &["marketing"]).located(location)
    };
    // Japan has an adequacy decision; the US needs SCCs (deploy/policy.toml's rules).
    store
        .register(abroad("jp", "JP", Some(TransferBasis::Adequacy)))
        .await;
    store.register(abroad("us", "US", None)).await;
    store
        .register(abroad("us_scc", "US", Some(TransferBasis::Scc)))
        .await;
    let ledger = &store.ledger;
    // Consented under French law (the builder's grant).
    let a = customer_consenting(ledger, &["marketing"]).await;
    run(ledger, "idp", a, vec![set("email", email(1))]).await;
    let relay = RunningRelay::start(ledger.clone(), test_config(Some(nats.clone())));
    // Delivery is decided on the state when the relay gets there: each step is caught up.
    let caught_up = || async {
        for id in ["jp", "us", "us_scc"] {
            store.caught_up(id, Duration::from_secs(20)).await;
        }
    };
    caught_up().await;
    // Moves to Brazil: no rule lets a Brazilian subject's data go to Japan or the US.
    run(
        ledger,
        "idp",
        a,
        vec![set("jurisdiction", serde_json::json!("BR"))],
    )
    .await;
    run(ledger, "idp", a, vec![set("email", email(2))]).await;
    caught_up().await;
    // Back in the EEA: deliveries resume where the transfer is lawful again.
    run(
        ledger,
        "idp",
        a,
        vec![set("jurisdiction", serde_json::json!("DE"))],
    )
    .await;
    run(ledger, "idp", a, vec![set("email", email(3))]).await;
    caught_up().await;

    let js = jetstream(&url).await;
    let prefix = &nats.stream.subject_prefix;
    let mut sent = std::collections::BTreeMap::new();
    for id in ["jp", "us", "us_scc"] {
        let events: Vec<CloudEvent> =
            dedupe(&read_stream(&js, &nats.stream.name, &format!("{prefix}.{id}.>")).await)
                .into_iter()
                .map(|d| d.event)
                .collect();
        sent.insert(id, events);
    }
    let e1 = email(1).as_str().unwrap().to_owned();
    let e3 = email(3).as_str().unwrap().to_owned();
    let lawful_twice = kinds(&[
        (FIELD_CHANGED, Some(&e1)),
        (CONSENT_WITHDRAWN, None),
        (CONSENT_GRANTED, None),
        (FIELD_CHANGED, Some(&e3)),
    ]);
    assert_eq!(of(&sent["jp"], a), lawful_twice);
    assert_eq!(of(&sent["us_scc"], a), lawful_twice);
    assert_eq!(
        of(&sent["us"], a),
        vec![],
        "no transfer basis: nothing of an EEA subject goes to the US"
    );
    let notice = sent["jp"]
        .iter()
        .find(|e| e.event_type == CONSENT_WITHDRAWN)
        .unwrap();
    assert_eq!(notice.data["reason"], "transfer_without_basis");
    assert_eq!(notice.data["action"], "stop_processing_and_delete");
    assert_eq!(
        notice.data["basis"][0]["transfer"],
        serde_json::json!({"region": "JP", "basis": "adequacy", "lawful": false})
    );
    assert_eq!(notice.data["basis"][0]["status"], "granted");

    // The handoff log agrees: each change to Japan on a lawful transfer, nothing handed to the
    // consumer without a basis.
    let log = store
        .deliveries
        .handoffs(&HandoffFilter::Customer(a), None, 100)
        .await
        .unwrap();
    assert!(
        log.items
            .iter()
            .all(|h| h.handoff.consumer_id.as_str() != "us"),
        "{log:?}"
    );
    let to_japan: Vec<_> = log
        .items
        .iter()
        .map(|h| &h.handoff)
        .filter(|h| h.consumer_id.as_str() == "jp" && h.kind == HandoffKind::Change)
        .collect();
    assert_eq!(to_japan.len(), 2);
    for h in to_japan {
        let transfer = h.basis[0].transfer.as_ref().unwrap();
        assert!(transfer.lawful);
        assert_eq!(transfer.region.as_str(), "JP");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consent_that_expires_while_the_customer_is_quiet_brings_a_notice() {
    let url = shared_nats().await;
    let store = TestStore::new(Engine::Sqlite).await;
    let nats = unique_nats(&url);
    store
        .register(consumer("mkt", Channel::Nats, &["email"], &["marketing"]))
        .await;
    let ledger = &store.ledger;
    let customer = CustomerId::generate();
    run(
        ledger,
        "idp",
        customer,
        vec![idledger_domain::Change::Register],
    )
    .await;
    let expires = Utc::now() + chrono::Duration::milliseconds(1500);
    run(
        ledger,
        "consent_portal",
        customer,
        vec![grant("marketing", Some(expires))],
    )
    .await;
    run(ledger, "idp", customer, vec![set("email", email(1))]).await;
    let mut config = test_config(Some(nats.clone()));
    config.expiry_sweep_interval = Duration::from_millis(300);
    let relay = RunningRelay::start(ledger.clone(), config);
    store.caught_up("mkt", Duration::from_secs(20)).await;

    let js = jetstream(&url).await;
    let filter = format!("{}.mkt.>", nats.stream.subject_prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events: Vec<CloudEvent> = dedupe(&read_stream(&js, &nats.stream.name, &filter).await)
            .into_iter()
            .map(|d| d.event)
            .collect();
        if events.len() >= 2 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no notice after expiry: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        events
            .iter()
            .map(|e| e.event_type.as_str())
            .collect::<Vec<_>>(),
        [FIELD_CHANGED, CONSENT_WITHDRAWN]
    );
    assert_eq!(events[1].data["reason"], "expired");
    assert_eq!(
        events[1].time.timestamp_micros(),
        expires.timestamp_micros(),
        "the notice is dated when the consent ran out"
    );
    // Further changes are not delivered, and the sweep does not repeat the notice.
    run(ledger, "idp", customer, vec![set("email", email(2))]).await;
    store.caught_up("mkt", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let again = read_stream(&js, &nats.stream.name, &filter).await;
    assert_eq!(dedupe(&again).len(), 2, "{again:?}");
    relay.stop().await;
}

/// The claims of a consent receipt, verified by jwt-compact against the key set.
fn verify_receipt(set: &serde_json::Value, receipt: &str) -> serde_json::Value {
    use jwt_compact::alg::Ed25519;
    use jwt_compact::jwk::JsonWebKey;
    use jwt_compact::{AlgorithmExt as _, UntrustedToken};
    let untrusted = UntrustedToken::new(receipt).unwrap();
    assert_eq!(
        untrusted.header().token_type.as_deref(),
        Some("idledger-consent-receipt+jwt")
    );
    let kid = untrusted.header().key_id.clone().unwrap();
    let jwk = set["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap();
    let jwk: JsonWebKey<'_> = serde_json::from_value(jwk.clone()).unwrap();
    let key = ed25519_dalek::VerifyingKey::try_from(&jwk).unwrap();
    Ed25519
        .validator::<serde_json::Value>(&key)
        .validate(&untrusted)
        .unwrap()
        .claims()
        .custom
        .clone()
}
