//! Recorded delegation over real HTTP, on both engines (issue 17): `on_behalf_of` claims are
//! checked against relationships recorded on the customer's record; a minor's consent needs
//! a recorded guardian, judged on the recorded jurisdiction and birth date.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, grant, on_both_engines, provenance};

on_both_engines!(
    a_claim_is_checked_against_the_recorded_relationships,
    a_minors_consent_needs_a_recorded_guardian_judged_where_the_record_says,
);

/// A command as `source`, on behalf of `relationship`:`id`.
async fn on_behalf(
    app: &TestApp,
    source: &str,
    customer: &str,
    key: &str,
    (relationship, id): (&str, &str),
    changes: Value,
) -> Reply {
    let mut provenance = provenance();
    provenance["on_behalf_of"] = json!({"relationship": relationship, "id": id});
    app.send(
        Method::POST,
        &format!("/v1/customers/{customer}/commands"),
        Some(source),
        Some(key),
        Some(&json!({"provenance": provenance, "changes": changes})),
    )
    .await
}

fn record_change(relationship: &str, id: &str, scope: Option<Value>) -> Value {
    let mut change = json!({
        "op": "record_relationship",
        "relationship": relationship,
        "representative": id,
        "evidence": {"kind": "signed_form", "reference": "form-77"},
    });
    if let Some(scope) = scope {
        change["scope"] = scope;
    }
    change
}

/// `YYYY-MM-DD`, `years` years and `days` days before today.
fn born_ago(years: u32, days: u64) -> String {
    let today = chrono::Utc::now().date_naive();
    let date = today
        .checked_sub_months(chrono::Months::new(years * 12))
        .and_then(|d| d.checked_sub_days(chrono::Days::new(days)))
        .unwrap();
    date.to_string()
}

async fn a_claim_is_checked_against_the_recorded_relationships(engine: Engine) {
    let app = TestApp::start(engine).await;
    let id = app.register("idp", json!([])).await;
    let delegate = ("delegate", "assistant-1");
    let locale = json!([{"op": "set_field", "field": "locale", "value": "de-DE"}]);

    // Unrecorded: refused, nothing written, the representative not named.
    let before = app.head().await;
    let reply = on_behalf(&app, "web_app", &id, "d-1", delegate, locale.clone()).await;
    let problem = reply.problem(403, "unrecorded_representative");
    assert_eq!(problem["relationship"], "delegate");
    assert_eq!(problem["change_index"], 0);
    assert!(!reply.text.contains("assistant-1"), "{}", reply.text);
    assert_eq!(app.head().await, before, "nothing written");

    // A source the policy does not name may not record one.
    app.command(
        "crm",
        &id,
        "r-0",
        json!([record_change("delegate", "assistant-1", None)]),
    )
    .await
    .problem(403, "forbidden");

    // Recorded by a steward, scoped to the locale and the marketing consent.
    let scope = json!({"purposes": ["marketing"], "fields": ["locale"]});
    let reply = app
        .command(
            "steward",
            &id,
            "r-1",
            json!([record_change("delegate", "assistant-1", Some(scope))]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcomes"][0]["outcome"], "relationship");
    let relationship_id = reply.body["outcomes"][0]["relationship_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let reply = on_behalf(&app, "web_app", &id, "d-2", delegate, locale.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcomes"][0]["outcome"], "applied");
    // Outside the scope: another field, another purpose.
    let reply = on_behalf(
        &app,
        "web_app",
        &id,
        "d-3",
        delegate,
        json!([{"op": "set_field", "field": "preferences.newsletter", "value": true}]),
    )
    .await;
    let problem = reply.problem(403, "outside_delegated_scope");
    assert_eq!(problem["field"], "preferences.newsletter");
    on_behalf(
        &app,
        "consent_portal",
        &id,
        "d-4",
        delegate,
        json!([grant("profiling", "DE")]),
    )
    .await
    .problem(403, "outside_delegated_scope");

    // The record read shows it to stewards and recorders, not to other sources.
    let record = app.get(&format!("/v1/customers/{id}"), "steward").await;
    let shown = &record.body["relationships"][0];
    assert_eq!(shown["relationship_id"], relationship_id.as_str());
    assert_eq!(shown["representative"], "assistant-1");
    assert_eq!(shown["status"], "live");
    assert_eq!(shown["scope"]["fields"][0], "locale");
    let by_idp = app.get(&format!("/v1/customers/{id}"), "idp").await;
    assert_eq!(by_idp.body["relationships"][0]["status"], "live");
    let by_crm = app.get(&format!("/v1/customers/{id}"), "crm").await;
    assert_eq!(by_crm.status, StatusCode::OK, "{}", by_crm.text);
    assert!(
        by_crm.body.get("relationships").is_none(),
        "{}",
        by_crm.text
    );

    // Ended: refused again, and saying so; ending it twice is a 404.
    let end = json!([{"op": "end_relationship", "relationship_id": relationship_id, "reason": "revoked"}]);
    let reply = app.command("idp", &id, "e-1", end.clone()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = on_behalf(&app, "web_app", &id, "d-5", delegate, locale.clone()).await;
    assert_eq!(
        reply.problem(403, "unrecorded_representative")["standing"],
        "ended"
    );
    app.command("idp", &id, "e-2", end)
        .await
        .problem(404, "unknown_relationship");
    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    assert_eq!(record.body["relationships"][0]["status"], "ended");
    assert_eq!(
        record.body["relationships"][0]["ended"]["reason"],
        "revoked"
    );

    // Expiring: an expiry in the past is refused outright.
    let mut expired = record_change("delegate", "assistant-1", None);
    expired["expires_at"] = json!((chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    app.command("idp", &id, "r-2", json!([expired]))
        .await
        .problem(422, "invalid_value");
}

async fn a_minors_consent_needs_a_recorded_guardian_judged_where_the_record_says(engine: Engine) {
    let app = TestApp::start(engine).await;
    // 14 (and some days): of age in the US (13), a minor in Germany (16) and France (15).
    let id = app
        .register(
            "idp",
            json!([
                {"op": "set_field", "field": "birth_date", "value": born_ago(14, 10)},
                {"op": "set_field", "field": "jurisdiction", "value": "DE"},
            ]),
        )
        .await;
    let guardian = ("guardian", "anna.schmidt");

    // The grant says US, the record says DE: judged in DE.
    let reply = app
        .command(
            "consent_portal",
            &id,
            "g-1",
            json!([grant("marketing", "US")]),
        )
        .await;
    let problem = reply.problem(422, "guardian_required");
    assert_eq!(problem["jurisdiction"], "DE");
    assert_eq!(problem["age_of_digital_consent"], 16);

    // A guardian claim counts only once recorded.
    on_behalf(
        &app,
        "consent_portal",
        &id,
        "g-2",
        guardian,
        json!([grant("marketing", "US")]),
    )
    .await
    .problem(403, "unrecorded_representative");
    let reply = app
        .command(
            "consent_portal",
            &id,
            "r-1",
            json!([record_change("guardian", "anna.schmidt", None)]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = on_behalf(
        &app,
        "consent_portal",
        &id,
        "g-3",
        guardian,
        json!([grant("marketing", "US")]),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    assert_eq!(record.body["consents"][0]["status"], "granted");

    // Recorded as living where 14 is of age (the US: 13): the guardianship has ended, and the
    // consent the guardian gave still counts (the subject needs none now).
    let reply = app
        .command(
            "idp",
            &id,
            "j-1",
            json!([{"op": "set_field", "field": "jurisdiction", "value": "US"}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let reply = on_behalf(
        &app,
        "consent_portal",
        &id,
        "g-4",
        guardian,
        json!([grant("profiling", "US")]),
    )
    .await;
    assert_eq!(
        reply.problem(403, "unrecorded_representative")["standing"],
        "came_of_age"
    );
    let record = app.get(&format!("/v1/customers/{id}"), "auditor").await;
    assert_eq!(record.body["relationships"][0]["status"], "came_of_age");
    assert_eq!(record.body["consents"][0]["status"], "granted");
    // And the subject gives their own now.
    let reply = app
        .command(
            "consent_portal",
            &id,
            "g-5",
            json!([grant("profiling", "US")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}
