//! Scoped reads over real HTTP, on both engines: what each source may read of a record (the
//! read matrix: every source × every field family × record, as-of and history, against the
//! policy), what only the requester of a pending change or the parties to a proposal see, the
//! disclosure log of every read by a source, and the subject's export (JSON and CSV).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use idledger_domain::field::FieldPath;
use idledger_domain::ids::SourceId;
use idledger_domain::policy::Policy;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Engine, TestApp, grant, on_both_engines};

on_both_engines!(
    each_source_reads_what_the_policy_lets_it_and_only_overseers_read_the_past,
    pending_changes_and_proposals_show_only_to_their_parties,
    every_read_by_a_source_is_logged_as_a_disclosure,
    the_subject_export_holds_everything_and_is_logged,
    customers_are_found_by_each_identifier_within_the_readers_scope,
    lookups_follow_changes_shared_values_erasure_and_rebuild,
    bad_lookups_are_refused_with_stable_codes_and_never_quote_the_value,
);

const SOURCES: [&str; 5] = ["idp", "crm", "web_app", "consent_portal", "support_portal"];

/// A field, the source that may set it, and a value for it.
type FamilyField = (&'static str, &'static str, fn() -> Value);

/// One field of each family, and the source that may set it.
const FAMILY_FIELDS: [FamilyField; 13] = [
    ("email", "idp", || json!("ada@example.org")),
    ("phone", "idp", || json!("+14155552671")),
    ("name.given", "idp", || json!("Ada")),
    ("name.family", "idp", || json!("Lovelace")),
    ("birth_date", "idp", || json!("1990-12-10")),
    ("jurisdiction", "idp", || json!("GB")),
    ("verification.level", "idp", || json!("substantial")),
    ("external_id.crm", "idp", || json!("C-1")),
    (
        "postal_address",
        "web_app",
        || json!({"lines": ["12 St James's Square"], "locality": "London", "postal_code": "SW1Y 4JH", "country": "GB"}),
    ),
    ("locale", "web_app", || json!("en-GB")),
    ("preferences.newsletter", "web_app", || json!(true)),
    ("sharing.acme", "consent_portal", || json!(true)),
    // Consents are fields too; granted below.
    ("consent.marketing", "consent_portal", || Value::Null),
];

/// A customer with a value in every field family.
async fn full_record(app: &TestApp) -> String {
    let id = app.register("idp", json!([])).await;
    for (i, (field, source, value)) in FAMILY_FIELDS.iter().enumerate() {
        let change = if field.starts_with("consent.") {
            grant("marketing", "GB")
        } else {
            json!({"op": "set_field", "field": field, "value": value()})
        };
        let reply = app
            .command(source, &id, &format!("full-{i}"), json!([change]))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{field}: {}", reply.text);
    }
    id
}

/// The fields (and `consent.<purpose>`) a record view shows.
fn shown(record: &Value) -> BTreeSet<String> {
    let fields = record["fields"].as_array().unwrap().iter();
    let consents = record["consents"].as_array().unwrap().iter();
    fields
        .map(|f| f["field"].as_str().unwrap().to_owned())
        .chain(consents.map(|c| format!("consent.{}", c["purpose"].as_str().unwrap())))
        .collect()
}

async fn each_source_reads_what_the_policy_lets_it_and_only_overseers_read_the_past(
    engine: Engine,
) {
    let app = TestApp::start(engine).await;
    let id = full_record(&app).await;
    let policy = Policy::default_policy().unwrap();
    let all: BTreeSet<String> = FAMILY_FIELDS.iter().map(|f| f.0.to_owned()).collect();
    let path = format!("/v1/customers/{id}");
    for source in SOURCES {
        let record = app.get(&path, source).await;
        assert_eq!(record.status, StatusCode::OK, "{source}: {}", record.text);
        let expected: BTreeSet<String> = all
            .iter()
            .filter(|f| {
                let field = FieldPath::parse(f).unwrap();
                policy.readable(&field, &SourceId::parse(source).unwrap())
            })
            .cloned()
            .collect();
        assert_eq!(shown(&record.body), expected, "{source} reads");
        // The past and the history are not a source's to read, whatever the field.
        app.get(&format!("{path}?as_of=2100-01-01T00:00:00Z"), source)
            .await
            .problem(403, "forbidden_role");
        for field in &all {
            app.get(&format!("{path}/fields/{field}/history"), source)
                .await
                .problem(403, "forbidden_role");
        }
    }
    // Spot checks of the default policy, so the matrix above is not only the policy read back.
    let crm = shown(&app.get(&path, "crm").await.body);
    assert!(crm.contains("email") && crm.contains("birth_date") && crm.contains("locale"));
    assert!(!crm.contains("consent.marketing") && !crm.contains("verification.level"));
    assert!(crm.contains("phone") && !crm.contains("sharing.acme"));
    let web = shown(&app.get(&path, "web_app").await.body);
    assert!(web.contains("consent.marketing") && web.contains("verification.level"));
    assert!(!web.contains("birth_date") && !web.contains("external_id.crm"));
    let portal = shown(&app.get(&path, "consent_portal").await.body);
    assert_eq!(
        portal,
        BTreeSet::from(["consent.marketing".to_owned(), "sharing.acme".to_owned()])
    );
    // Stewards and auditors read everything, now, in the past and field by field.
    for overseer in ["steward", "auditor"] {
        assert_eq!(shown(&app.get(&path, overseer).await.body), all);
        let then = app
            .get(&format!("{path}?as_of=2100-01-01T00:00:00Z"), overseer)
            .await;
        assert_eq!(shown(&then.body), all, "{overseer} as of");
        for field in &all {
            let history = app
                .get(&format!("{path}/fields/{field}/history"), overseer)
                .await;
            assert_eq!(history.status, StatusCode::OK, "{field}: {}", history.text);
            assert!(!history.body["events"].as_array().unwrap().is_empty());
        }
    }
}

async fn pending_changes_and_proposals_show_only_to_their_parties(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "old@example.org"}]),
        )
        .await;
    let requested = app
        .command(
            "web_app",
            &id,
            "p-1",
            json!([{"op": "request_change", "field": "email", "value": "new@example.org"}]),
        )
        .await;
    assert_eq!(requested.status, StatusCode::OK, "{}", requested.text);
    // The CRM proposes a name: it and the name's system of record (idp) see the proposal.
    app.command(
        "crm",
        &id,
        "p-2",
        json!([{"op": "propose_value", "field": "name.given", "value": "Ada"}]),
    )
    .await;
    let path = format!("/v1/customers/{id}");
    let pending = |record: &Value| record["fields"][0]["pending"].clone();
    let proposals = |record: &Value| record["proposals"].as_array().unwrap().len();
    let web = app.get(&path, "web_app").await.body;
    assert_eq!(pending(&web)["value"], "new@example.org");
    assert!(pending(&web)["challenge_id"].is_string());
    assert_eq!(
        proposals(&web),
        0,
        "web_app writes names but made no proposal"
    );
    let idp = app.get(&path, "idp").await.body;
    assert!(pending(&idp).is_null(), "the requester's pending change");
    assert_eq!(idp["fields"][0]["value"], "old@example.org");
    assert_eq!(
        proposals(&idp),
        1,
        "the system of record sees what waits for it"
    );
    let crm = app.get(&path, "crm").await.body;
    assert!(pending(&crm).is_null());
    assert_eq!(proposals(&crm), 1, "its own proposal");
    let steward = app.get(&path, "steward").await.body;
    assert_eq!(pending(&steward)["value"], "new@example.org");
    assert_eq!(proposals(&steward), 1);
}

async fn every_read_by_a_source_is_logged_as_a_disclosure(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = full_record(&app).await;
    let path = format!("/v1/customers/{id}");
    let mut expected = Vec::new();
    for source in ["crm", "web_app", "crm"] {
        let record = app.get(&path, source).await;
        expected.push((source.to_owned(), shown(&record.body)));
    }
    // Overseers' reads are theirs to make and are not disclosures to a source.
    app.get(&path, "auditor").await;
    let log = app.get(&format!("{path}/disclosures"), "auditor").await;
    assert_eq!(log.status, StatusCode::OK, "{}", log.text);
    let got: Vec<(String, BTreeSet<String>)> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["customer_id"], id.as_str());
            assert_eq!(d["recipient"], "source");
            assert!(d["token_id"].is_string() && d["disclosed_at"].is_string());
            let fields = d["fields"].as_array().unwrap();
            (
                d["source_id"].as_str().unwrap().to_owned(),
                fields
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(got, expected);
    assert!(log.body["next_after"].is_null());
    // No value is in the log, only field names.
    assert!(!log.text.contains("ada@example.org"));
    // Per source, paged.
    let first = app
        .get("/v1/sources/crm/disclosures?limit=1", "steward")
        .await;
    assert_eq!(first.body["items"].as_array().unwrap().len(), 1);
    let after = first.body["next_after"].as_u64().unwrap();
    let rest = app
        .get(
            &format!("/v1/sources/crm/disclosures?after={after}"),
            "steward",
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest.body["items"][0]["source_id"], "crm");
    // A source cannot read the log, and a bad source id is named.
    app.get(&format!("{path}/disclosures"), "crm")
        .await
        .problem(403, "forbidden_role");
    app.get("/v1/sources/Not A Source/disclosures", "auditor")
        .await
        .problem(404, "invalid_source_id");
    let unknown = uuid::Uuid::now_v7();
    app.get(&format!("/v1/customers/{unknown}/disclosures"), "auditor")
        .await
        .problem(404, "not_found");
}

async fn the_subject_export_holds_everything_and_is_logged(engine: Engine) {
    let app = TestApp::start(engine).await;
    // A feed consumer of emails for marketing: reading the feed hands the email over.
    app.add_consumer(json!({"id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["marketing"]}))
        .await;
    let id = full_record(&app).await;
    let feed = app.get("/v1/feed", "consumer").await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.text);
    // A proposal opens an exception about the customer.
    app.command(
        "crm",
        &id,
        "x-1",
        json!([{"op": "propose_value", "field": "name.given", "value": "Augusta"}]),
    )
    .await;
    app.get(&format!("/v1/customers/{id}"), "crm").await;
    // The consumer asks whether it may use the email for marketing.
    let asked = app
        .send(
            reqwest::Method::POST,
            "/v1/decisions",
            Some("consumer"),
            None,
            Some(&json!({"customer_id": id, "purpose": "marketing", "fields": ["email"]})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);

    let path = format!("/v1/customers/{id}/export");
    let export = app.get(&path, "dsar").await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.text);
    let body = &export.body;
    assert_eq!(body["customer_id"], id.as_str());
    let all: BTreeSet<String> = FAMILY_FIELDS.iter().map(|f| f.0.to_owned()).collect();
    assert_eq!(shown(&body["record"]), all, "every field and consent");
    let history = body["history"].as_array().unwrap();
    assert_eq!(
        history.len() as u64,
        body["record"]["stream_version"].as_u64().unwrap(),
        "every event of the stream"
    );
    assert!(
        history
            .iter()
            .all(|e| e["provenance"]["source"].is_string())
    );
    let handoffs = body["handoffs"].as_array().unwrap();
    assert!(
        handoffs
            .iter()
            .any(|h| h["consumer_id"] == "crm-sync" && h["fields"] == json!(["email"])),
        "{handoffs:?}"
    );
    let exceptions = body["exceptions"].as_array().unwrap();
    assert!(exceptions.iter().any(|e| e["kind"] == "proposal"));
    let decisions = body["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    assert_eq!(decisions[0]["decision_id"], asked.body["decision_id"]);
    assert_eq!(decisions[0]["processor_id"], "crm-sync");
    // The crm's read, then this export, as a disclosure to the subject.
    let disclosures = body["disclosures"].as_array().unwrap();
    let last = disclosures.last().unwrap();
    assert_eq!(last["recipient"], "subject");
    assert!(last["source_id"].is_null() && last["token_id"].is_string());
    assert!(disclosures.iter().any(|d| d["source_id"] == "crm"));
    let log = app
        .get(&format!("/v1/customers/{id}/disclosures"), "auditor")
        .await;
    let subjects = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["recipient"] == "subject")
        .count();
    assert_eq!(subjects, 1);

    // The CSV form: a zip of one CSV per part.
    let zipped = app
        .client
        .get(app.url(&format!("{path}?format=csv")))
        .bearer_auth(app.token("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(zipped.status(), StatusCode::OK);
    assert_eq!(
        zipped.headers()["content-type"].to_str().unwrap(),
        "application/zip"
    );
    let bytes = zipped.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<String> = archive
        .file_names()
        .map(|n| n.unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "consents.csv",
            "customer.csv",
            "decisions.csv",
            "disclosures.csv",
            "exceptions.csv",
            "fields.csv",
            "handoffs.csv",
            "history.csv",
            "proposals.csv"
        ]
    );
    let mut fields = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("fields.csv").unwrap(), &mut fields)
        .unwrap();
    let mut rows = csv::Reader::from_reader(fields.as_bytes());
    let headers = rows.headers().unwrap().clone();
    let at = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (field, value) = (at("field"), at("value"));
    let email = rows
        .records()
        .map(Result::unwrap)
        .find(|r| &r[field] == "email")
        .unwrap();
    assert_eq!(&email[value], "ada@example.org");

    // Nothing to export of an unknown customer; an erased one has nothing left.
    app.get(
        &format!("/v1/customers/{}/export", uuid::Uuid::now_v7()),
        "dsar",
    )
    .await
    .problem(404, "not_found");
    let erased = app
        .send(
            reqwest::Method::POST,
            &format!("/v1/customers/{id}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "subject request", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    app.get(&path, "dsar").await.problem(410, "erased");
    app.get(&format!("{path}?format=xml"), "dsar")
        .await
        .problem(400, "invalid_query");
}

/// The ids a lookup answers (asserting 200).
async fn found(app: &TestApp, query: &str, as_: &str) -> Vec<String> {
    let reply = app.get(&format!("/v1/customers?{query}"), as_).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{query} as {as_}: {}",
        reply.text
    );
    assert_eq!(reply.body["truncated"], false);
    reply.body["customer_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

async fn customers_are_found_by_each_identifier_within_the_readers_scope(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = full_record(&app).await;
    let other = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "email", "value": "grace@example.org"}]),
        )
        .await;
    for query in [
        "email=ada%40example.org",
        "email=%20ADA%40Example.org",
        "phone=%2B14155552671",
        "phone=%2B1%20415%20555%202671",
        "external_id=crm%3AC-1",
        "name=Ada%20Lovelace",
        "name=ada%20%20LOVELACE",
    ] {
        assert_eq!(
            found(&app, query, "steward").await,
            std::slice::from_ref(&id),
            "{query}"
        );
    }
    assert_eq!(
        found(&app, "email=grace%40example.org", "auditor").await,
        [other]
    );
    assert!(
        found(&app, "email=nobody%40example.org", "steward")
            .await
            .is_empty()
    );
    assert!(
        found(&app, "external_id=cdp%3AC-1", "steward")
            .await
            .is_empty()
    );
    assert!(found(&app, "name=Ada", "steward").await.is_empty());

    // A source looks up by what it may read: the crm proposes emails, so it reads them; the
    // consent portal writes consents only, and finds nothing by an email — it is refused.
    assert_eq!(
        found(&app, "email=ada%40example.org", "crm").await,
        std::slice::from_ref(&id)
    );
    let refused = app
        .get("/v1/customers?email=ada%40example.org", "consent_portal")
        .await;
    assert_eq!(refused.problem(403, "not_readable")["field"], "email");
    assert!(!refused.text.contains("ada@"));
    // A name is both name fields: the web app writes them, the consent portal neither.
    assert_eq!(
        found(&app, "name=Ada%20Lovelace", "web_app").await,
        std::slice::from_ref(&id)
    );
    app.get("/v1/customers?name=Ada%20Lovelace", "consent_portal")
        .await
        .problem(403, "not_readable");
    // Not a reader's role: consumers, administrators.
    for role in ["consumer", "admin"] {
        app.get("/v1/customers?email=ada%40example.org", role)
            .await
            .problem(403, "forbidden_role");
    }

    // The crm's and the web app's lookups are disclosures of the fields looked up by; the
    // overseers' and the refused ones are not.
    let log = app
        .get(&format!("/v1/customers/{id}/disclosures"), "auditor")
        .await;
    let got: Vec<(String, Vec<String>)> = log.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["source_id"] != "idp")
        .map(|d| {
            (
                d["source_id"].as_str().unwrap().to_owned(),
                d["fields"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("crm".to_owned(), vec!["email".to_owned()]),
            (
                "web_app".to_owned(),
                vec!["name.given".to_owned(), "name.family".to_owned()]
            ),
        ]
    );
    assert!(!log.text.contains("ada@example.org"));
}

async fn lookups_follow_changes_shared_values_erasure_and_rebuild(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ada = app
        .register(
            "idp",
            json!([
                {"op": "set_field", "field": "email", "value": "ada@example.org"},
                {"op": "set_field", "field": "phone", "value": "+442079460958"},
                {"op": "set_field", "field": "external_id.crm", "value": "C-1"},
            ]),
        )
        .await;
    let byron = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "phone", "value": "+44 20 7946 0958"}]),
        )
        .await;
    // A household's phone finds both, in id order.
    let mut both = vec![ada.clone(), byron.clone()];
    both.sort();
    assert_eq!(found(&app, "phone=%2B442079460958", "idp").await, both);

    // A changed email: the old one finds nobody. A pending one is not the customer's yet.
    let changed = app
        .command(
            "idp",
            &ada,
            "change-1",
            json!([{"op": "set_field", "field": "email", "value": "countess@example.org"}]),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    assert!(
        found(&app, "email=ada%40example.org", "idp")
            .await
            .is_empty()
    );
    assert_eq!(
        found(&app, "email=countess%40example.org", "idp").await,
        std::slice::from_ref(&ada)
    );
    let pending = app
        .command(
            "web_app",
            &ada,
            "change-2",
            json!([{"op": "request_change", "field": "email", "value": "new@example.org"}]),
        )
        .await;
    assert_eq!(pending.status, StatusCode::OK, "{}", pending.text);
    assert!(
        found(&app, "email=new%40example.org", "steward")
            .await
            .is_empty()
    );
    // A cleared external id finds nobody.
    let cleared = app
        .command(
            "idp",
            &ada,
            "change-3",
            json!([{"op": "clear_field", "field": "external_id.crm"}]),
        )
        .await;
    assert_eq!(cleared.status, StatusCode::OK, "{}", cleared.text);
    assert!(
        found(&app, "external_id=crm%3AC-1", "steward")
            .await
            .is_empty()
    );

    // Rebuilt from the log: the same answers.
    let report = app.ledger.rebuild(&|_, _| {}).await.unwrap();
    assert_eq!(report.reindexed_count, 0);
    assert_eq!(found(&app, "phone=%2B442079460958", "idp").await, both);
    assert_eq!(
        found(&app, "email=countess%40example.org", "idp").await,
        std::slice::from_ref(&ada)
    );

    // Erased: found by nothing; the household's other member still is.
    let erased = app
        .send(
            reqwest::Method::POST,
            &format!("/v1/customers/{ada}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "subject request", "actor": {"kind": "agent", "id": "dpo"}})),
        )
        .await;
    assert_eq!(erased.status, StatusCode::OK, "{}", erased.text);
    assert!(
        found(&app, "email=countess%40example.org", "steward")
            .await
            .is_empty()
    );
    assert_eq!(
        found(&app, "phone=%2B442079460958", "steward").await,
        [byron]
    );
}

async fn bad_lookups_are_refused_with_stable_codes_and_never_quote_the_value(engine: Engine) {
    let app = TestApp::start(engine).await;
    let head = app.head().await;
    for query in [
        "",
        "?",
        "?email=a%40example.org&phone=%2B442079460958",
        "?email=a%40example.org&email=b%40example.org",
        "?mail=a%40example.org",
        "?email=a%40example.org&limit=3",
    ] {
        app.get(&format!("/v1/customers{query}"), "steward")
            .await
            .problem(400, "invalid_query");
    }
    for (parameter, value) in [
        ("email", "secret-person%40"),
        ("email", "secret-person%40-bad-.org"),
        ("phone", "secret-person"),
        ("external_id", "secret-person"),
        ("external_id", "Secret:person"),
        ("name", "1234-5678"),
        ("name", ""),
    ] {
        let reply = app
            .get(&format!("/v1/customers?{parameter}={value}"), "steward")
            .await;
        assert_eq!(
            reply.problem(422, "invalid_value")["parameter"],
            parameter,
            "{value}"
        );
        assert!(
            !reply.text.to_lowercase().contains("secret") && !reply.text.contains("bad-"),
            "{}",
            reply.text
        );
    }
    assert_eq!(app.head().await, head, "a lookup writes nothing");
}
