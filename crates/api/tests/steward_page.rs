//! The steward web page: a steward logs in, filters exceptions, opens one, resolves it and
//! resolves another in bulk — in headless Chromium driven over WebDriver (chromedriver), on a
//! real server over PostgreSQL. Then, without a browser, the page's guards on both engines:
//! login redirects, role and revocation checks, sessions (the cookie is a session id, not the
//! token, and no bearer; logout, idle and absolute expiry end it; `Secure` when configured),
//! cross-origin POSTs, escaping, 404 and 410.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use fantoccini::{Client, ClientBuilder, Locator};
use idledger_api::ApiConfig;
use idledger_api::page::SessionSettings;
use idledger_domain::ids::CustomerId;
use idledger_store::Role;
use idledger_store::SessionLimits;
use idledger_store::delivery::{
    Deliveries, ExceptionFilter, ExceptionKind, ExceptionStatus, NewSyncException, SyncException,
};
use idledger_testkit::builders::{self, consumer_id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Engine, Reply, TestApp, grant, on_both_engines};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// A value hash the consumer claims that is not the record's: the consumer drifted.
const DRIFTED_HASH: &str =
    "hmac-sha256:1111111111111111111111111111111111111111111111111111111111111111";

on_both_engines!(
    pages_need_a_steward_session,
    the_session_cookie_is_not_the_token_and_no_bearer,
    logout_ends_the_session,
    sessions_end_when_idle_and_at_their_lifetime,
    the_cookie_is_secure_when_configured,
    cross_origin_posts_are_refused,
    customer_data_is_escaped_and_refusals_are_readable,
    unknown_and_erased_are_readable_pages,
    an_exception_shows_its_customers_consents_and_latest_decisions,
    a_customers_record_shows_fields_consents_receipts_decisions_and_exceptions,
    a_steward_finds_customers_by_any_identifier,
    a_proposal_stewards_may_not_accept_is_sent_to_its_system_of_record,
    a_refused_merge_is_shown_readably_and_records_nothing,
    households_and_relationships_are_escaped_and_unknown_ones_readable,
    acting_on_a_merged_records_exception_names_the_survivor,
);

// ---------------------------------------------------------------------------------------
// Seeding: a consumer, customers, deliveries and acks through the API; exceptions as
// reconciliation opens them.
// ---------------------------------------------------------------------------------------

struct Seeded {
    divergent: SyncException,
    stale: SyncException,
    /// The divergent customer's email, as the record holds it.
    email: String,
}

fn deliveries(app: &TestApp) -> Deliveries {
    app.ledger.store().deliveries()
}

async fn customer(app: &TestApp, changes: Value) -> String {
    let c = app.register("idp", changes).await;
    let reply = app
        .command(
            "consent_portal",
            &c,
            &format!("grant-{c}"),
            json!([grant("service", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    c
}

async fn ack(app: &TestApp, event: &Value, value_hash: &Value) {
    let body = json!({
        "event_id": event["id"], "customer_id": event["subject"], "field": event["data"]["field"],
        "version": event["data"]["version"], "value_hash": value_hash, "status": "applied",
    });
    let reply = app
        .send(
            Method::POST,
            "/v1/acks",
            Some("consumer"),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.body["outcome"], "recorded", "{}", reply.text);
}

async fn open(
    app: &TestApp,
    customer: &str,
    field: &str,
    kind: ExceptionKind,
    detail: Value,
    age: chrono::Duration,
) -> SyncException {
    deliveries(app)
        .open_exception(
            &NewSyncException::new(
                kind,
                consumer_id("crm-sync"),
                CustomerId::parse(customer).unwrap(),
                Some(builders::field(field)),
                detail,
                Utc::now() - age,
            )
            .unwrap(),
        )
        .await
        .unwrap()
}

/// crm-sync receives email; Ann's copy drifted (same version, other value), Bob's is stale
/// (it acknowledged his first address, not the second).
async fn seed(app: &TestApp) -> Seeded {
    app.add_consumer(json!({
        "id": "crm-sync", "channel": "feed", "fields": ["email"], "purposes": ["service"],
    }))
    .await;
    let email = "ann@example.org".to_owned();
    let ann = customer(
        app,
        json!([{"op": "set_field", "field": "email", "value": email}]),
    )
    .await;
    let bob = customer(
        app,
        json!([{"op": "set_field", "field": "email", "value": "bob@example.org"}]),
    )
    .await;
    let reply = app
        .command(
            "idp",
            &bob,
            "bob-moves",
            json!([{"op": "set_field", "field": "email", "value": "bob@example.net"}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let feed = app.get("/v1/feed", "consumer").await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.text);
    let events: Vec<Value> = feed
        .text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |c: &str| -> Vec<&Value> { events.iter().filter(|e| e["subject"] == c).collect() };
    let (ann_events, bob_events) = (of(&ann), of(&bob));
    assert_eq!(
        (ann_events.len(), bob_events.len()),
        (1, 2),
        "{}",
        feed.text
    );
    ack(app, ann_events[0], &json!(DRIFTED_HASH)).await;
    ack(app, bob_events[0], &bob_events[0]["data"]["value_hash"]).await;

    let divergent = open(
        app,
        &ann,
        "email",
        ExceptionKind::Divergent,
        json!({
            "record": {"version": ann_events[0]["data"]["version"], "value_hash": ann_events[0]["data"]["value_hash"]},
            "consumer": {"version": ann_events[0]["data"]["version"], "value_hash": DRIFTED_HASH},
        }),
        chrono::Duration::minutes(5),
    )
    .await;
    let stale = open(
        app,
        &bob,
        "email",
        ExceptionKind::Stale,
        json!({
            "record": {"version": bob_events[1]["data"]["version"]},
            "consumer": {"version": bob_events[0]["data"]["version"]},
            "sla_secs": 300,
        }),
        chrono::Duration::hours(3),
    )
    .await;
    Seeded {
        divergent,
        stale,
        email,
    }
}

// ---------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------

/// chromedriver on a free port, in its own process group so that dropping it also ends the
/// Chromium it started, whatever state the test ended in.
struct Driver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Driver {
    fn start() -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the steward page's browser test needs Debian's {package} package. \
                 Install it with `apt-get install -y chromium chromium-driver` (as root), or run \
                 `bash scripts/services.sh` as root, which does that."
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(CHROMEDRIVER);
        command
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start chromedriver");
        Self {
            child,
            port,
            profile: tempfile::tempdir().unwrap(),
        }
    }

    /// A WebDriver session on headless Chromium; waits for chromedriver to listen first.
    async fn browser(&self) -> Client {
        let url = format!("http://127.0.0.1:{}", self.port);
        let mut attempts = 0;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            attempts += 1;
            assert!(attempts < 200, "chromedriver did not listen on {url}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", self.profile.path().display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .expect("a WebDriver session on headless Chromium")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text(browser: &Client, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .text()
        .await
        .unwrap()
}

async fn listed_ids(browser: &Client) -> Vec<String> {
    let mut ids = Vec::new();
    for row in browser
        .find_all(Locator::Css("#exceptions tbody tr"))
        .await
        .unwrap()
    {
        ids.push(row.attr("data-id").await.unwrap().unwrap());
    }
    ids
}

async fn fill(browser: &Client, css: &str, value: &str) {
    let input = browser.find(Locator::Css(css)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(value).await.unwrap();
}

async fn click(browser: &Client, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
        .click()
        .await
        .unwrap();
}

/// Clicks a button or link that loads another page, and waits until that page has loaded:
/// WebDriver's click can return before a form's navigation starts.
async fn submit(browser: &Client, css: &str) {
    let old = browser.find(Locator::Css("html")).await.unwrap();
    click(browser, css).await;
    // The old document's root goes stale once the new document replaces it.
    let mut polls = 0;
    while old.tag_name().await.is_ok() {
        polls += 1;
        assert!(polls < 1000, "clicking {css} loaded no new page");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while browser
        .execute("return document.readyState", vec![])
        .await
        .ok()
        .and_then(|state| state.as_str().map(|s| s == "complete"))
        != Some(true)
    {
        polls += 1;
        assert!(
            polls < 1000,
            "the page after clicking {css} did not finish loading"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steward_resolves_exceptions_in_a_browser() {
    let mut app = TestApp::start(Engine::Postgres).await;
    let second = app.second_steward().await;
    let seeded = seed(&app).await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    steward_session(&app, &browser, &seeded).await;
    routing_session(&app, &browser).await;
    four_eyes_session(&app, &browser, &second).await;
    browser.close().await.unwrap();

    // What the browser did is in the store: closed by the steward, recorded in the history.
    let store = deliveries(&app);
    for (exception, reason) in [
        (
            &seeded.divergent,
            "CRM re-imported the customer; drift explained",
        ),
        (&seeded.stale, "consumer retired this week"),
    ] {
        let now = store.exception(exception.id).await.unwrap().unwrap();
        assert_eq!(now.status, ExceptionStatus::Dismissed, "{now:?}");
        assert_eq!(now.resolved_by.as_deref(), Some("steward:steward"));
        assert_eq!(now.resolution_note.as_deref(), Some(reason));
        let history = app
            .ledger
            .history(exception.customer_id, &builders::field("email"))
            .await
            .unwrap();
        let acted: Vec<_> = history
            .iter()
            .filter(|e| e.envelope.event.payload.type_name() == "steward_acted")
            .collect();
        assert_eq!(acted.len(), 1, "one steward_acted event per dismissal");
        assert_eq!(acted[0].envelope.event.provenance.actor.id(), "steward");
    }
}

/// A proposal stewards may not accept: the page offers to send it to its system of record,
/// the button does, and the system of record's own decision closes it.
async fn routing_session(app: &TestApp, browser: &Client) {
    let (email_exc, _) = crm_proposals(app).await;
    // The session before ended with a logout.
    browser.goto(&app.url("/steward/login")).await.unwrap();
    fill(browser, "input[name=token]", app.token("steward")).await;
    submit(browser, "button[type=submit]").await;
    browser
        .goto(&app.url(&format!("/steward/exceptions/{email_exc}")))
        .await
        .unwrap();
    assert_eq!(
        text(browser, "#route button").await,
        "Send to the system of record (idp)"
    );
    assert!(
        browser.find(Locator::Css("#accept")).await.is_err(),
        "no Accept where the policy forbids steward override"
    );
    submit(browser, "#route button").await;
    assert!(
        text(browser, ".msg.ok")
            .await
            .starts_with("Sent to the system of record."),
    );
    assert_eq!(text(browser, "#status").await, "open");
    assert!(browser.find(Locator::Css("#routed")).await.is_ok());
    // idp finds it and accepts it with its own token; the page shows it closed by idp.
    let listed = app.get("/v1/proposals?system_of_record=me", "idp").await;
    let proposal = listed.body["proposals"][0].clone();
    assert_eq!(
        proposal["exception_id"],
        email_exc.as_str(),
        "{}",
        listed.text
    );
    assert_eq!(proposal["routed"], true);
    let customer = proposal["customer_id"].as_str().unwrap();
    let accepted = app
        .command(
            "idp",
            customer,
            "idp-accepts",
            json!([{"op": "accept_proposal", "proposal_id": proposal["proposal_id"]}]),
        )
        .await;
    assert_eq!(accepted.status, StatusCode::OK, "{}", accepted.text);
    browser.refresh().await.unwrap();
    assert_eq!(text(browser, "#status").await, "resolved");
    assert_eq!(text(browser, "#resolved-by").await, "source:idp");
}

/// A steward takes an exception (assign to me, then the "mine" list), accepts a name it may
/// override only with a second steward: it waits; the second steward approves it from the
/// approvals page, and both show in the activity view.
async fn four_eyes_session(app: &TestApp, browser: &Client, second: &str) {
    let (_, name_exc) = crm_proposals(app).await;
    let page = app.url(&format!("/steward/exceptions/{name_exc}"));
    browser.goto(&page).await.unwrap();
    assert_eq!(text(browser, "#assigned-to").await, "nobody");
    submit(browser, "#assign-me button").await;
    assert_eq!(text(browser, ".msg.ok").await, "Assignment saved.");
    assert!(
        text(browser, "#assigned-to")
            .await
            .starts_with("steward:steward since"),
    );
    browser
        .goto(&app.url("/steward?assignee=me"))
        .await
        .unwrap();
    assert_eq!(listed_ids(browser).await, std::slice::from_ref(&name_exc));
    assert!(text(browser, "#counts").await.contains("proposal"));
    browser.goto(&page).await.unwrap();
    submit(browser, "#accept button").await;
    assert!(
        text(browser, ".msg.ok")
            .await
            .starts_with("A second steward must approve this change"),
    );
    assert_eq!(text(browser, "#status").await, "open");
    assert!(browser.find(Locator::Css("#approval-mine")).await.is_ok());
    assert!(
        browser.find(Locator::Css("#approve")).await.is_err(),
        "the steward who asked cannot approve"
    );
    submit(browser, "#logout button").await;
    // The second steward finds it under Approvals and approves it.
    fill(browser, "input[name=token]", app.token(second)).await;
    submit(browser, "button[type=submit]").await;
    submit(browser, "#nav-approvals").await;
    let row = format!("#approvals tr a[href='/steward/exceptions/{name_exc}']");
    submit(browser, &row).await;
    fill(
        browser,
        "#approve input[name=reason]",
        "checked the passport",
    )
    .await;
    submit(browser, "#approve button").await;
    assert_eq!(
        text(browser, ".msg.ok").await,
        "Approved: the change is in the record."
    );
    assert_eq!(text(browser, "#status").await, "resolved");
    submit(browser, "#nav-activity").await;
    assert!(
        browser
            .find(Locator::Css("#activity tr[data-action=approve]"))
            .await
            .is_ok(),
        "the approval is in the second steward's activity"
    );
    browser
        .goto(&app.url("/steward/activity?steward=steward"))
        .await
        .unwrap();
    for action in ["assign", "request_approval"] {
        assert!(
            browser
                .find(Locator::Css(&format!("#activity tr[data-action={action}]")))
                .await
                .is_ok(),
            "{action} in the first steward's activity"
        );
    }
    // Every page is usable at 1280 px: nothing wider than the window.
    browser.set_window_size(1280, 900).await.unwrap();
    let exception = deliveries(app)
        .exception(name_exc.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let customer = exception.customer_id;
    for path in [
        "/steward?status=all".to_owned(),
        format!("/steward/exceptions/{name_exc}"),
        format!("/steward/customers/{customer}"),
        format!("/steward/customers/{customer}/fields/name.given/history"),
        "/steward/approvals".to_owned(),
        "/steward/activity?steward=steward".to_owned(),
    ] {
        browser.goto(&app.url(&path)).await.unwrap();
        let widths = browser
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                vec![],
            )
            .await
            .unwrap();
        let (scroll, client) = (widths[0].as_u64().unwrap(), widths[1].as_u64().unwrap());
        assert!(
            scroll <= client,
            "{path} is {scroll} px wide in a {client} px window"
        );
    }
}

async fn steward_session(app: &TestApp, browser: &Client, seeded: &Seeded) {
    let (divergent, stale) = (seeded.divergent.id.to_string(), seeded.stale.id.to_string());

    // Not logged in: the login page.
    browser.goto(&app.url("/steward")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/steward/login"),
        "redirected to the login page"
    );
    // A source's token is not a steward's.
    fill(browser, "input[name=token]", app.token("crm")).await;
    submit(browser, "button[type=submit]").await;
    let error = text(browser, ".msg.error").await;
    assert!(error.contains("source token"), "{error}");

    fill(browser, "input[name=token]", app.token("steward")).await;
    submit(browser, "button[type=submit]").await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/steward");
    let mut both = listed_ids(browser).await;
    both.sort();
    let mut expected = vec![divergent.clone(), stale.clone()];
    expected.sort();
    assert_eq!(both, expected, "both open exceptions are listed");

    // Filter by kind.
    browser
        .find(Locator::Css("select[name=kind]"))
        .await
        .unwrap()
        .select_by_value("divergent")
        .await
        .unwrap();
    submit(browser, ".filters button").await;
    assert_eq!(listed_ids(browser).await, vec![divergent.clone()]);

    // Open it: the record, the consumer's view and the field's history side by side.
    submit(browser, "#exceptions tbody tr a").await;
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with(&divergent)
    );
    assert_eq!(text(browser, "#record-value").await, seeded.email);
    assert_eq!(text(browser, "#consumer-hash").await, DRIFTED_HASH);
    assert!(
        text(browser, "#record-hash")
            .await
            .starts_with("hmac-sha256:")
    );
    assert_eq!(text(browser, "#differs").await, "differs from the record");
    let history = text(browser, "#history").await;
    assert!(history.contains("field_set"), "{history}");
    assert!(history.contains(&seeded.email), "{history}");
    assert_eq!(text(browser, "#status").await, "open");

    // Dismissing needs a reason: refused on the page, still open.
    submit(browser, "#dismiss button").await;
    let error = text(browser, ".msg.error").await;
    assert!(error.to_lowercase().contains("reason"), "{error}");
    assert_eq!(text(browser, "#status").await, "open");

    fill(
        browser,
        "#dismiss input[name=reason]",
        "CRM re-imported the customer; drift explained",
    )
    .await;
    submit(browser, "#dismiss button").await;
    assert_eq!(text(browser, ".msg.ok").await, "Dismissed.");
    assert_eq!(text(browser, "#status").await, "dismissed");
    assert_eq!(text(browser, "#resolved-by").await, "steward:steward");
    assert!(
        text(browser, "#history").await.contains("steward_acted"),
        "the dismissal is in the field's history"
    );
    assert!(
        browser.find(Locator::Css("#dismiss")).await.is_err(),
        "no actions on a closed exception"
    );

    // The customer's whole record is a click away, and any record can be opened by id.
    submit(browser, "#customer-link").await;
    let customer = seeded.divergent.customer_id.to_string();
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{customer}")
    );
    assert!(text(browser, "#fields").await.contains(&seeded.email));
    assert!(text(browser, "#consents").await.contains("service"));
    browser.goto(&app.url("/steward")).await.unwrap();
    fill(browser, "#find-customer input[name=q]", &customer).await;
    submit(browser, "#find-customer button").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{customer}")
    );
    // The same box finds a customer by email (one match opens the record), and says when
    // nobody has one.
    browser.goto(&app.url("/steward")).await.unwrap();
    fill(
        browser,
        "#find-customer input[name=q]",
        &seeded.email.to_uppercase(),
    )
    .await;
    submit(browser, "#find-customer button").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{customer}")
    );
    fill(
        browser,
        "#find-customer input[name=q]",
        "nobody@example.org",
    )
    .await;
    submit(browser, "#find-customer button").await;
    assert!(
        text(browser, "#no-match")
            .await
            .contains("No customer has this email")
    );

    // The open list no longer has it; dismiss the other one in bulk.
    browser.goto(&app.url("/steward")).await.unwrap();
    assert_eq!(listed_ids(browser).await, vec![stale.clone()]);
    click(browser, &format!("input[name=id][value='{stale}']")).await;
    browser
        .find(Locator::Css("select[name=action]"))
        .await
        .unwrap()
        .select_by_value("dismiss")
        .await
        .unwrap();
    fill(
        browser,
        ".act input[name=reason]",
        "consumer retired this week",
    )
    .await;
    submit(browser, ".act button").await;
    let result = text(browser, &format!("#results tr[data-id='{stale}']")).await;
    assert!(result.contains("now dismissed"), "{result}");

    browser.goto(&app.url("/steward")).await.unwrap();
    assert!(listed_ids(browser).await.is_empty());
    assert!(text(browser, "#empty").await.contains("No exceptions"));

    // Logging out ends the session: the page asks to log in again.
    submit(browser, "#logout button").await;
    browser.goto(&app.url("/steward")).await.unwrap();
    assert!(
        browser
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/steward/login"),
        "logged out"
    );
}

// ---------------------------------------------------------------------------------------
// Without a browser
// ---------------------------------------------------------------------------------------

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

struct Page {
    status: StatusCode,
    location: Option<String>,
    set_cookie: Option<String>,
    html: String,
}

async fn request(
    app: &TestApp,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    form: &[(&str, &str)],
) -> Page {
    let mut request = client().request(method.clone(), app.url(path));
    if let Some(secret) = cookie {
        request = request.header("cookie", format!("idl_steward={secret}"));
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if method == Method::POST {
        request = request.form(form);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Page {
        status: response.status(),
        location: header("location"),
        set_cookie: header("set-cookie"),
        html: response.text().await.unwrap(),
    }
}

async fn pages_need_a_steward_session(engine: Engine) {
    let app = TestApp::start(engine).await;
    for path in [
        "/steward",
        "/steward/exceptions/0190a4c6-0000-7000-8000-000000000000",
    ] {
        let page = request(&app, Method::GET, path, None, None, &[]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(page.location.as_deref(), Some("/steward/login"), "{path}");
    }
    // A token of another role logs nobody in, and neither does it work as a cookie.
    let login = request(
        &app,
        Method::POST,
        "/steward/login",
        None,
        None,
        &[("token", app.token("auditor"))],
    )
    .await;
    assert_eq!(login.status, StatusCode::FORBIDDEN);
    assert!(login.html.contains("auditor token"), "{}", login.html);
    assert!(login.set_cookie.is_none());
    let page = request(
        &app,
        Method::GET,
        "/steward",
        Some(app.token("auditor")),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let unknown = request(
        &app,
        Method::POST,
        "/steward/login",
        None,
        None,
        &[("token", "idl_nope")],
    )
    .await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert!(
        unknown.html.contains("unknown or revoked"),
        "{}",
        unknown.html
    );

    // A steward token: a session, then the list.
    let session = log_in(&app).await;
    let page = request(&app, Method::GET, "/steward", Some(&session), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("Sync exceptions"));
    // The token itself is no cookie.
    let page = request(
        &app,
        Method::GET,
        "/steward",
        Some(app.token("steward")),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/steward/login"));

    // Revoking the token ends the session on the next request.
    let tokens = app.ledger.store().tokens();
    let record = tokens
        .authenticate(app.token("steward"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.role, Role::Steward);
    assert!(tokens.revoke(record.id).await.unwrap());
    let page = request(&app, Method::GET, "/steward", Some(&session), None, &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/steward/login"));
    assert!(
        page.set_cookie.unwrap().contains("Max-Age=0"),
        "the cookie is cleared"
    );

    let logout = request(&app, Method::POST, "/steward/logout", None, None, &[]).await;
    assert_eq!(logout.location.as_deref(), Some("/steward/login"));
}

/// Logs in with the steward token; returns the session cookie's value.
async fn log_in(app: &TestApp) -> String {
    log_in_with(app, app.token("steward")).await.0
}

/// Logs in with `token`; returns the session cookie's value and the whole `Set-Cookie`.
async fn log_in_with(app: &TestApp, token: &str) -> (String, String) {
    let login = request(
        app,
        Method::POST,
        "/steward/login",
        None,
        None,
        &[("token", token)],
    )
    .await;
    assert_eq!(login.status, StatusCode::SEE_OTHER, "{}", login.html);
    assert_eq!(login.location.as_deref(), Some("/steward"));
    let set_cookie = login.set_cookie.expect("a session cookie");
    let value = set_cookie
        .strip_prefix("idl_steward=")
        .and_then(|rest| rest.split(';').next())
        .expect("the idl_steward cookie")
        .to_owned();
    (value, set_cookie)
}

async fn the_session_cookie_is_not_the_token_and_no_bearer(engine: Engine) {
    let app = TestApp::start(engine).await;
    let token = app.token("steward");
    let (session, set_cookie) = log_in_with(&app, token).await;
    assert_ne!(session, token);
    assert!(!set_cookie.contains(token), "{set_cookie}");
    assert!(
        session.len() >= 43,
        "at least 256 bits, base64url: {session}"
    );
    assert_eq!(
        set_cookie,
        format!("idl_steward={session}; HttpOnly; SameSite=Strict; Path=/steward"),
        "not Secure unless configured"
    );
    // Two logins, two sessions.
    assert_ne!(log_in(&app).await, session);

    // The session id opens the page, and nothing under /v1: not as a bearer, not as a cookie.
    let page = request(&app, Method::GET, "/steward", Some(&session), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    for path in ["/v1/me", "/v1/exceptions"] {
        let reply = Reply::from(
            app.client
                .get(app.url(path))
                .bearer_auth(&session)
                .send()
                .await
                .unwrap(),
        )
        .await;
        reply.problem(401, "invalid_token");
        let reply = Reply::from(
            app.client
                .get(app.url(path))
                .header("cookie", format!("idl_steward={session}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        reply.problem(401, "unauthenticated");
    }
    // The token still works on the API.
    assert_eq!(app.get("/v1/me", "steward").await.status, StatusCode::OK);
}

async fn logout_ends_the_session(engine: Engine) {
    let app = TestApp::start(engine).await;
    let session = log_in(&app).await;
    let other = log_in(&app).await;
    let logout = request(
        &app,
        Method::POST,
        "/steward/logout",
        Some(&session),
        None,
        &[],
    )
    .await;
    assert_eq!(logout.status, StatusCode::SEE_OTHER);
    assert_eq!(logout.location.as_deref(), Some("/steward/login"));
    assert!(logout.set_cookie.unwrap().contains("Max-Age=0"));
    // The old cookie, sent again (a copy kept, a replay), opens nothing.
    let page = request(&app, Method::GET, "/steward", Some(&session), None, &[]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert_eq!(page.location.as_deref(), Some("/steward/login"));
    // Another session of the same token is its own.
    let page = request(&app, Method::GET, "/steward", Some(&other), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
}

async fn sessions_end_when_idle_and_at_their_lifetime(engine: Engine) {
    let config = ApiConfig {
        sessions: SessionSettings {
            limits: SessionLimits {
                idle: chrono::Duration::seconds(2),
                absolute: chrono::Duration::seconds(3),
            },
            secure_cookies: false,
        },
        ..ApiConfig::default()
    };
    let app = TestApp::start_with(engine, config).await;
    let open = |session: String| {
        let app = &app;
        async move {
            request(app, Method::GET, "/steward", Some(&session), None, &[])
                .await
                .status
        }
    };

    // Idle: unused for longer than 2 s, it ends.
    let idle = log_in(&app).await;
    assert_eq!(open(idle.clone()).await, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(open(idle).await, StatusCode::SEE_OTHER);

    // Absolute: used every second (each use moves the idle expiry on), it still ends 3 s
    // after login.
    let busy = log_in(&app).await;
    let started = std::time::Instant::now();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(open(busy.clone()).await, StatusCode::OK);
    }
    tokio::time::sleep(Duration::from_millis(3200).saturating_sub(started.elapsed())).await;
    assert_eq!(open(busy).await, StatusCode::SEE_OTHER);
}

async fn the_cookie_is_secure_when_configured(engine: Engine) {
    let config = ApiConfig {
        sessions: SessionSettings {
            secure_cookies: true,
            ..SessionSettings::default()
        },
        ..ApiConfig::default()
    };
    let app = TestApp::start_with(engine, config).await;
    let (session, set_cookie) = log_in_with(&app, app.token("steward")).await;
    assert_eq!(
        set_cookie,
        format!("idl_steward={session}; HttpOnly; SameSite=Strict; Path=/steward; Secure")
    );
    let logout = request(
        &app,
        Method::POST,
        "/steward/logout",
        Some(&session),
        None,
        &[],
    )
    .await;
    assert_eq!(
        logout.set_cookie.as_deref(),
        Some("idl_steward=; HttpOnly; SameSite=Strict; Path=/steward; Max-Age=0; Secure")
    );
}

async fn cross_origin_posts_are_refused(engine: Engine) {
    let app = TestApp::start(engine).await;
    let seeded = seed(&app).await;
    let session = log_in(&app).await;
    let secret = session.as_str();
    let act = format!("/steward/exceptions/{}/act", seeded.divergent.id);
    let form = [("action", "dismiss"), ("reason", "a forged form")];
    for origin in ["http://evil.example", "null"] {
        let page = request(&app, Method::POST, &act, Some(secret), Some(origin), &form).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{origin}");
        assert!(
            page.html.contains("Cross-site request refused"),
            "{}",
            page.html
        );
    }
    let forged_bulk = request(
        &app,
        Method::POST,
        "/steward/bulk",
        Some(secret),
        Some("http://evil.example"),
        &[
            ("id", &seeded.stale.id.to_string()),
            ("action", "dismiss"),
            ("reason", "forged"),
        ],
    )
    .await;
    assert_eq!(forged_bulk.status, StatusCode::FORBIDDEN);
    let store = deliveries(&app);
    for id in [seeded.divergent.id, seeded.stale.id] {
        let now = store.exception(id).await.unwrap().unwrap();
        assert_eq!(
            now.status,
            ExceptionStatus::Open,
            "nothing forged went through"
        );
    }
    // The same form from the page's own origin goes through.
    let own = app.url("");
    let page = request(&app, Method::POST, &act, Some(secret), Some(&own), &form).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let now = store.exception(seeded.divergent.id).await.unwrap().unwrap();
    assert_eq!(now.status, ExceptionStatus::Dismissed);
}

async fn customer_data_is_escaped_and_refusals_are_readable(engine: Engine) {
    let app = TestApp::start(engine).await;
    let seeded = seed(&app).await;
    let session = log_in(&app).await;
    let secret = session.as_str();
    let script = r#"<script>alert("pwned")</script>"#;
    let evil = app
        .register(
            "idp",
            json!([{"op": "set_field", "field": "name.given", "value": script}]),
        )
        .await;
    let exception = open(
        &app,
        &evil,
        "name.given",
        ExceptionKind::Rejected,
        json!({"consumer_reason": script}),
        chrono::Duration::minutes(1),
    )
    .await;
    let page = request(
        &app,
        Method::GET,
        &format!("/steward/exceptions/{}", exception.id),
        Some(secret),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert!(
        !page.html.contains("<script"),
        "no markup from customer data:\n{}",
        page.html
    );
    assert!(
        page.html.contains("&lt;script&gt;alert("),
        "shown as text:\n{}",
        page.html
    );

    // Filters: by age (the stale one is three hours old), and bad input explained.
    let page = request(
        &app,
        Method::GET,
        "/steward?older_than=2h",
        Some(secret),
        None,
        &[],
    )
    .await;
    assert!(page.html.contains(&seeded.stale.id.to_string()));
    assert!(!page.html.contains(&seeded.divergent.id.to_string()));
    let page = request(
        &app,
        Method::GET,
        "/steward?older_than=soon&kind=bogus",
        Some(secret),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.html.contains("not an age like"), "{}", page.html);
    assert!(page.html.contains("bogus"), "{}", page.html);
    // An age beyond the clock's range is refused like any other (it once panicked).
    let page = request(
        &app,
        Method::GET,
        "/steward?older_than=100000000d",
        Some(secret),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.html.contains("not an age like"), "{}", page.html);

    // The policy forbids stewards to override email: a readable 403, not a 500.
    let act = format!("/steward/exceptions/{}/act", seeded.divergent.id);
    let page = request(
        &app,
        Method::POST,
        &act,
        Some(secret),
        None,
        &[("action", "accept"), ("value", "ann@crm.example")],
    )
    .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN, "{}", page.html);
    assert!(page.html.contains(r#"class="msg error""#), "{}", page.html);
    assert!(
        page.html
            .contains("the policy does not let stewards override this field")
    );
    // A re-push leaves it open, noted; a second dismissal of a closed one is a 409 page.
    let page = request(
        &app,
        Method::POST,
        &act,
        Some(secret),
        None,
        &[("action", "repush")],
    )
    .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.html);
    let store = deliveries(&app);
    let now = store.exception(seeded.divergent.id).await.unwrap().unwrap();
    assert_eq!(now.status, ExceptionStatus::Open);
    assert_eq!(now.last_action.unwrap()["action"], "repush");
    let dismiss = [("action", "dismiss"), ("reason", "explained")];
    let page = request(&app, Method::POST, &act, Some(secret), None, &dismiss).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    let page = request(&app, Method::POST, &act, Some(secret), None, &dismiss).await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    assert!(page.html.contains("already dismissed"), "{}", page.html);
}

async fn unknown_and_erased_are_readable_pages(engine: Engine) {
    let app = TestApp::start(engine).await;
    let seeded = seed(&app).await;
    let session = log_in(&app).await;
    let secret = session.as_str();
    for id in ["0190a4c6-0000-7000-8000-000000000000", "not-an-id"] {
        let page = request(
            &app,
            Method::GET,
            &format!("/steward/exceptions/{id}"),
            Some(secret),
            None,
            &[],
        )
        .await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{id}");
        assert!(page.html.contains("no sync exception"), "{}", page.html);
    }
    let customer = seeded.divergent.customer_id;
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{customer}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "ticket DSR-1", "actor": {"kind": "agent", "id": "dpo@example.org"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let path = format!("/steward/exceptions/{}", seeded.divergent.id);
    let page = request(&app, Method::GET, &path, Some(secret), None, &[]).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.html.contains("was erased at"), "{}", page.html);
    assert!(!page.html.contains(&seeded.email), "nothing of the record");
    // Erasure closed it, so acting on it is refused readably too.
    let act = format!("{path}/act");
    let page = request(
        &app,
        Method::POST,
        &act,
        Some(secret),
        None,
        &[("action", "dismiss"), ("reason", "gone")],
    )
    .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.html);
    assert!(page.html.contains("already resolved"), "{}", page.html);
}

async fn an_exception_shows_its_customers_consents_and_latest_decisions(engine: Engine) {
    let app = TestApp::start(engine).await;
    let seeded = seed(&app).await;
    let cookie = log_in(&app).await;
    let path = format!("/steward/exceptions/{}", seeded.divergent.id);
    let before = request(&app, Method::GET, &path, Some(&cookie), None, &[]).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.html);
    assert!(
        section(&before.html, "decisions").contains("No processor has asked"),
        "{}",
        before.html
    );

    let ann = &seeded.divergent.customer_id.to_string();
    let reply = app
        .command(
            "consent_portal",
            ann,
            "ann-grants",
            json!([support::grant("marketing", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let grant_event = reply.body["events"][0]["id"].as_str().unwrap().to_owned();
    let asked = app
        .send(
            Method::POST,
            "/v1/decisions",
            Some("consumer"),
            None,
            Some(&json!({"customer_id": ann, "purpose": "service", "fields": ["email", "phone"]})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);

    let after = request(&app, Method::GET, &path, Some(&cookie), None, &[]).await;
    let consents = section(&after.html, "consents");
    assert!(consents.contains("<code>marketing</code>"), "{consents}");
    assert!(consents.contains("<code>service</code>"), "{consents}");
    assert!(consents.contains("privacy-notice@2026-01"), "{consents}");
    assert!(
        consents.contains(&grant_event),
        "the receipt id: {consents}"
    );
    let decisions = section(&after.html, "decisions");
    assert!(decisions.contains("crm-sync"), "{decisions}");
    assert!(
        decisions.contains("field_not_allowed_for_processor"),
        "{decisions}"
    );
}

async fn a_customers_record_shows_fields_consents_receipts_decisions_and_exceptions(
    engine: Engine,
) {
    let app = TestApp::start(engine).await;
    let seeded = seed(&app).await;
    let cookie = log_in(&app).await;
    let ann = seeded.divergent.customer_id.to_string();
    let reply = app
        .command(
            "consent_portal",
            &ann,
            "ann-grants",
            json!([support::grant("marketing", "DE")]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let asked = app
        .send(
            Method::POST,
            "/v1/decisions",
            Some("consumer"),
            None,
            Some(&json!({"customer_id": ann, "purpose": "service", "fields": ["email"]})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{}", asked.text);

    // Customers are named readably on the list: a masked email, never the address, and what
    // each exception is about (a consumer here).
    let reply = app
        .command(
            "idp",
            &ann,
            "ann-named",
            json!([
                {"op": "set_field", "field": "name.given", "value": "Ann"},
                {"op": "set_field", "field": "name.family", "value": "Lee"}
            ]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let list = request(
        &app,
        Method::GET,
        "/steward?status=all",
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.html);
    assert!(
        list.html.contains("Ann Lee · a…@example.org"),
        "{}",
        list.html
    );
    assert!(list.html.contains("b…@example.net"), "{}", list.html);
    assert!(list.html.contains("consumer crm-sync"), "{}", list.html);
    assert!(!list.html.contains(&seeded.email), "the address is masked");

    let path = format!("/steward/customers/{ann}");
    let page = request(&app, Method::GET, &path, Some(&cookie), None, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    assert!(
        page.html.contains("<h1>Ann Lee · a…@example.org"),
        "{}",
        page.html
    );
    let fields = section(&page.html, "fields");
    assert!(fields.contains("<code>email</code>"), "{fields}");
    assert!(fields.contains(&seeded.email), "{fields}");
    assert!(fields.contains("idp"), "the source: {fields}");
    let consents = section(&page.html, "consents");
    assert!(consents.contains("<code>marketing</code>"), "{consents}");
    let decisions = section(&page.html, "decisions");
    assert!(decisions.contains("crm-sync"), "{decisions}");
    let open = section(&page.html, "open-exceptions");
    assert!(
        open.contains(&format!("/steward/exceptions/{}", seeded.divergent.id)),
        "{open}"
    );
    // The exception's page names its customer readably too.
    let exception_page = request(
        &app,
        Method::GET,
        &format!("/steward/exceptions/{}", seeded.divergent.id),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert!(
        exception_page.html.contains("Ann Lee · a…@example.org"),
        "{}",
        exception_page.html
    );
    // What was handed to consumers, newest first, and each field's history one click away.
    let handoffs = section(&page.html, "handoffs");
    assert!(handoffs.contains("crm-sync"), "{handoffs}");
    assert!(handoffs.contains("data-kind=\"change\""), "{handoffs}");
    let history_link = format!("{path}/fields/name.given/history");
    assert!(fields.contains(&history_link), "{fields}");
    let history = request(&app, Method::GET, &history_link, Some(&cookie), None, &[]).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.html);
    assert!(
        history.html.contains("data-type=\"field_set\"") && history.html.contains("Ann"),
        "{}",
        history.html
    );
    let bogus = request(
        &app,
        Method::GET,
        &format!("{path}/fields/shoe_size/history"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(bogus.status, StatusCode::NOT_FOUND);

    // Each consent's signed receipt downloads as a compact JWS the key set verifies.
    let receipt = client()
        .get(app.url(&format!("{path}/consents/marketing/receipt")))
        .header("cookie", format!("idl_steward={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(receipt.status(), StatusCode::OK);
    assert_eq!(
        receipt.headers()["content-type"].to_str().unwrap(),
        "application/jose"
    );
    assert!(
        receipt.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment;")
    );
    let jws = receipt.text().await.unwrap();
    let keys = app
        .ledger
        .signing_keys()
        .list(Some(idledger_store::jws::TOKEN_PURPOSE))
        .await
        .unwrap();
    let verified = idledger_store::jws::verify_compact(&jws, &keys).unwrap();
    assert_eq!(verified.claims["sub"], ann.as_str());
    assert_eq!(verified.claims["purpose"], "marketing");
    let none = request(
        &app,
        Method::GET,
        &format!("{path}/consents/analytics/receipt"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND, "{}", none.html);

    // The header's form opens a record by id; what is not one is a readable 404.
    let found = request(
        &app,
        Method::GET,
        &format!("/steward/customers?id=+{ann}+"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(found.status, StatusCode::SEE_OTHER);
    assert_eq!(found.location.as_deref(), Some(path.as_str()));
    for raw in ["not-an-id", "0190a4c6-0000-7000-8000-000000000000"] {
        let page = request(
            &app,
            Method::GET,
            &format!("/steward/customers/{raw}"),
            Some(&cookie),
            None,
            &[],
        )
        .await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{raw}");
        assert!(page.html.contains("customer"), "{}", page.html);
    }
    // No session, no record.
    let anonymous = request(&app, Method::GET, &path, None, None, &[]).await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);

    // Erased: nothing of the record is shown.
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{ann}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "ticket DSR-2", "actor": {"kind": "agent", "id": "dpo@example.org"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let page = request(&app, Method::GET, &path, Some(&cookie), None, &[]).await;
    assert_eq!(page.status, StatusCode::GONE);
    assert!(page.html.contains("was erased at"), "{}", page.html);
    assert!(!page.html.contains(&seeded.email));
}

/// The HTML of the `<section id="…">` of a page.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("<section id=\"{id}\""))
        .unwrap_or_else(|| panic!("no section {id}: {html}"));
    let end = html[start..]
        .find("</section>")
        .map_or(html.len(), |e| start + e);
    &html[start..end]
}

/// The header's search: an id or an identifier of any kind; one customer opens the record,
/// several are listed by their labels, none says so; an erased customer is never found.
async fn a_steward_finds_customers_by_any_identifier(engine: Engine) {
    let app = TestApp::start(engine).await;
    let ada = customer(
        &app,
        json!([
            {"op": "set_field", "field": "email", "value": "ada@example.org"},
            {"op": "set_field", "field": "phone", "value": "+442079460958"},
            {"op": "set_field", "field": "external_id.crm", "value": "C-42"},
            {"op": "set_field", "field": "name.given", "value": "Ada"},
            {"op": "set_field", "field": "name.family", "value": "Lovelace"},
        ]),
    )
    .await;
    let byron = customer(
        &app,
        json!([
            {"op": "set_field", "field": "phone", "value": "+44 20 7946 0958"},
            {"op": "set_field", "field": "name.given", "value": "Byron"},
        ]),
    )
    .await;
    let cookie = log_in(&app).await;
    let record = format!("/steward/customers/{ada}");
    for q in [
        "  ADA@example.org ",
        "crm:C-42",
        "ada   lovelace",
        ada.as_str().trim(),
    ] {
        let page = search(&app, &cookie, q).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{q}: {}", page.html);
        assert_eq!(page.location.as_deref(), Some(record.as_str()), "{q}");
    }
    // The household's phone: both, each by its label.
    let page = search(&app, &cookie, "+44 (0)20 7946 0958").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let matches = section_by_id(&page.html, "matches");
    for (id, label) in [(&ada, "Ada Lovelace · a…@example.org"), (&byron, "Byron")] {
        assert!(
            matches.contains(&format!("href=\"/steward/customers/{id}\"")),
            "{matches}"
        );
        assert!(matches.contains(label), "{matches}");
    }
    // Nobody, and what cannot be searched for: readable, never quoting what was typed.
    let page = search(&app, &cookie, "grace@example.org").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.html.contains("id=\"no-match\""), "{}", page.html);
    assert!(!page.html.contains("grace@"));
    let page = search(&app, &cookie, "12345").await;
    assert_eq!(
        page.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        page.html
    );
    assert!(page.html.contains("Type a customer id") && !page.html.contains("12345"));
    // The old form's parameter still opens a record by id.
    let page = request(
        &app,
        Method::GET,
        &format!("/steward/customers?id={ada}"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(page.location.as_deref(), Some(record.as_str()));
    // Erased: the phone finds Byron alone (his record opens), the email nobody.
    let reply = app
        .send(
            Method::POST,
            &format!("/v1/customers/{ada}/erasure"),
            Some("admin"),
            None,
            Some(&json!({"reason": "ticket DSR-3", "actor": {"kind": "agent", "id": "dpo@example.org"}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let page = search(&app, &cookie, "+442079460958").await;
    assert_eq!(
        page.location.as_deref(),
        Some(format!("/steward/customers/{byron}").as_str())
    );
    let page = search(&app, &cookie, "ada@example.org").await;
    assert!(page.html.contains("id=\"no-match\""), "{}", page.html);
    // No session, no search.
    let anonymous = request(
        &app,
        Method::GET,
        "/steward/customers?q=ada%40example.org",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
}

/// The header's search for `q`, with a session.
async fn search(app: &TestApp, cookie: &str, q: &str) -> Page {
    let path = format!(
        "/steward/customers?q={}",
        form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    request(app, Method::GET, &path, Some(cookie), None, &[]).await
}

/// The HTML of the element `id="…"` onwards to its table's end.
fn section_by_id<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[start..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}

/// The CRM proposes an email (stewards may not override it: idp decides) and a given name
/// (stewards may); the exceptions' ids, in that order.
async fn crm_proposals(app: &TestApp) -> (String, String) {
    let c = customer(
        app,
        json!([{"op": "set_field", "field": "email", "value": "ann@example.org"}, {"op": "set_field", "field": "name.given", "value": "Ann"}]),
    )
    .await;
    for (field, value) in [("email", "ann@crm.example"), ("name.given", "Anne")] {
        app.command(
            "crm",
            &c,
            &format!("crm-{field}-{c}"),
            json!([{"op": "set_field", "field": field, "value": value}]),
        )
        .await
        .problem(403, "not_authoritative");
    }
    let id_of = async |field: &str| {
        let list = app
            .get(
                &format!("/v1/exceptions?kind=proposal&field={field}&customer={c}"),
                "steward",
            )
            .await;
        list.body["exceptions"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    (id_of("email").await, id_of("name.given").await)
}

async fn a_proposal_stewards_may_not_accept_is_sent_to_its_system_of_record(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (email_exc, name_exc) = crm_proposals(&app).await;
    let cookie = log_in(&app).await;
    let page = |id: String| {
        let cookie = cookie.clone();
        let app = &app;
        async move {
            let page = request(
                app,
                Method::GET,
                &format!("/steward/exceptions/{id}"),
                Some(&cookie),
                None,
                &[],
            )
            .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.html);
            page.html
        }
    };
    let email = page(email_exc.clone()).await;
    assert!(email.contains("id=\"route\""), "{email}");
    assert!(
        email.contains("Send to the system of record (idp)"),
        "{email}"
    );
    assert!(
        !email.contains("id=\"accept\""),
        "no Accept where stewards may not: {email}"
    );
    assert!(!email.contains("Accept the proposal"), "{email}");
    let name = page(name_exc.clone()).await;
    assert!(name.contains("Accept the proposal"), "{name}");
    assert!(!name.contains("id=\"route\""), "{name}");

    // The form routes it: recorded, left open, shown as sent.
    let own = app.url("");
    let act = format!("/steward/exceptions/{email_exc}/act");
    let sent = request(
        &app,
        Method::POST,
        &act,
        Some(&cookie),
        Some(&own),
        &[("action", "route"), ("reason", "")],
    )
    .await;
    assert_eq!(sent.status, StatusCode::SEE_OTHER, "{}", sent.html);
    let location = sent.location.unwrap();
    assert!(location.ends_with("done=route"), "{location}");
    let now = deliveries(&app)
        .exception(email_exc.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.status, ExceptionStatus::Open);
    assert_eq!(now.last_action.unwrap()["action"], "route");
    let after = request(&app, Method::GET, &location, Some(&cookie), None, &[]).await;
    assert!(
        after.html.contains("Sent to the system of record."),
        "{}",
        after.html
    );
    assert!(after.html.contains("id=\"routed\""), "{}", after.html);
}

// ---------------------------------------------------------------------------------------
// Duplicate pairs: side by side, merge and unmerge
// ---------------------------------------------------------------------------------------

/// Two customers the idp registers with the same email and name but other phones (its
/// commands carry evidence, so the address is verified): a duplicate candidate opens. Returns A (the exception's customer,
/// the lower id), B and the exception.
async fn duplicate_pair(app: &TestApp) -> (String, String, SyncException) {
    let first = app
        .register(
            "idp",
            json!([
                {"op": "set_field", "field": "email", "value": "ada@example.org"},
                {"op": "set_field", "field": "name.given", "value": "Ada"},
                {"op": "set_field", "field": "phone", "value": "+442079460958"},
            ]),
        )
        .await;
    let second = app
        .register(
            "idp",
            json!([
                {"op": "set_field", "field": "email", "value": "ada@example.org"},
                {"op": "set_field", "field": "name.given", "value": "Ada"},
                {"op": "set_field", "field": "phone", "value": "+442079460959"},
            ]),
        )
        .await;
    let filter = ExceptionFilter {
        kind: Some(ExceptionKind::DuplicateCandidate),
        open_only: true,
        ..ExceptionFilter::default()
    };
    let open = deliveries(app).exceptions(&filter, 10).await.unwrap();
    assert_eq!(open.len(), 1, "one duplicate candidate: {open:#?}");
    let exception = open[0].clone();
    let (a, b) = if first < second {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(exception.customer_id.to_string(), a);
    assert_eq!(
        exception.subject.other_customer().map(|c| c.to_string()),
        Some(b.clone())
    );
    (a, b, exception)
}

/// The duplicate queue in the header, a pair's two records side by side (the other phones
/// marked), "Merge B into A" with a reason, the survivor's page listing the merged record (whose own page says where it
/// went), then "Unmerge" there: the two stand apart again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steward_merges_and_unmerges_a_duplicate_pair_in_a_browser() {
    let app = TestApp::start(Engine::Postgres).await;
    let (a, b, exception) = duplicate_pair(&app).await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&app.url("/steward/login")).await.unwrap();
    fill(&browser, "input[name=token]", app.token("steward")).await;
    submit(&browser, "button[type=submit]").await;

    submit(&browser, "#nav-duplicates").await;
    assert_eq!(text(&browser, "h1").await, "Duplicate queue");
    assert_eq!(listed_ids(&browser).await, vec![exception.id.to_string()]);
    submit(&browser, "#exceptions tbody tr a").await;

    // Both columns, labelled by name and masked email; the phones differ, the shared email
    // does not.
    let column_a = text(&browser, "#record-a").await;
    assert!(
        column_a.contains(&a) && column_a.contains("Ada · a…@example.org"),
        "{column_a}"
    );
    assert!(text(&browser, "#record-b").await.contains(&b));
    assert_eq!(
        text(&browser, "tr[data-row=email] .a-value").await,
        "ada@example.org"
    );
    assert_eq!(
        text(&browser, "tr[data-row=email] .b-value").await,
        "ada@example.org"
    );
    assert!(
        browser
            .find(Locator::Css("tr[data-row=email].differs"))
            .await
            .is_err()
    );
    let phones = text(&browser, "tr[data-row=phone].differs").await;
    assert!(
        phones.contains("+442079460958") && phones.contains("+442079460959"),
        "{phones}"
    );
    assert!(
        browser
            .find(Locator::Css("tr[data-row='consent.service']"))
            .await
            .is_err()
    );
    assert_eq!(
        text(&browser, "#merge-a-into-b button").await,
        "Merge A into B"
    );

    fill(
        &browser,
        "#merge-b-into-a input[name=reason]",
        "same person: documents checked",
    )
    .await;
    submit(&browser, "#merge-b-into-a button").await;
    let url = browser.current_url().await.unwrap();
    assert_eq!(url.path(), format!("/steward/customers/{a}"));
    assert!(text(&browser, ".msg.ok").await.starts_with("Merged:"));
    let merged = text(&browser, &format!("#merged-records tr[data-id='{b}']")).await;
    assert!(merged.contains(&b), "{merged}");
    // The merge closed the pair's exception.
    let closed = deliveries(&app)
        .exception(exception.id)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(closed.status, ExceptionStatus::Open, "{closed:?}");

    // The absorbed record's page says where it went, and links there.
    submit(&browser, &format!("#merged-records tr[data-id='{b}'] a")).await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{b}")
    );
    assert!(text(&browser, "#merged-into").await.contains(&a));
    submit(&browser, "#merged-into a").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{a}")
    );

    fill(
        &browser,
        "#merged-records form.unmerge input[name=reason]",
        "not the same person after all",
    )
    .await;
    submit(&browser, "#merged-records form.unmerge button").await;
    assert!(text(&browser, ".msg.ok").await.starts_with("Unmerged:"));
    assert!(
        browser.find(Locator::Css("#merged-records")).await.is_err(),
        "no merged record left"
    );
    browser.close().await.unwrap();

    let (a_id, b_id) = (
        CustomerId::parse(&a).unwrap(),
        CustomerId::parse(&b).unwrap(),
    );
    let survivor = app.ledger.state(a_id).await.unwrap().unwrap();
    assert!(survivor.absorbed.is_empty(), "{:?}", survivor.absorbed);
    let absorbed = app.ledger.state(b_id).await.unwrap().unwrap();
    assert_eq!(absorbed.merged_into, None);
}

/// Without a browser: the pair's page shows both records and both merge forms; a merge with
/// no reason, of an unknown record or an unmerge of a pair never merged, comes back as the
/// page with the refusal in words, and records nothing.
async fn a_refused_merge_is_shown_readably_and_records_nothing(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (a, b, exception) = duplicate_pair(&app).await;
    let session = log_in(&app).await;
    let secret = Some(session.as_str());
    let exception_page = format!("/steward/exceptions/{}", exception.id);
    let page = request(&app, Method::GET, &exception_page, secret, None, &[]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let pair = section_by_id(&page.html, "side-by-side");
    assert!(pair.contains(&a) && pair.contains(&b), "{pair}");
    for survivor in [&a, &b] {
        let form = format!(r#"action="/steward/customers/{survivor}/merge""#);
        assert!(page.html.contains(&form), "{}", page.html);
    }
    let head = app.head().await;
    let id = exception.id.to_string();

    // No reason: 422, the exception's page again with why, nothing written.
    let refused = request(
        &app,
        Method::POST,
        &format!("/steward/customers/{a}/merge"),
        secret,
        None,
        &[("absorbed", &b), ("exception", &id), ("reason", "  ")],
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.html
    );
    assert!(
        refused.html.contains("a reason is required"),
        "{}",
        refused.html
    );
    assert!(
        refused.html.contains(r#"id="side-by-side""#),
        "{}",
        refused.html
    );
    // No other record named: said so.
    let unnamed = request(
        &app,
        Method::POST,
        &format!("/steward/customers/{a}/merge"),
        secret,
        None,
        &[
            ("absorbed", ""),
            ("exception", &id),
            ("reason", "same person"),
        ],
    )
    .await;
    assert_eq!(
        unnamed.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unnamed.html
    );
    assert!(
        unnamed.html.contains("Name the other record"),
        "{}",
        unnamed.html
    );
    // An unmerge of a pair never merged: 409 on the record page.
    let unmerge = request(
        &app,
        Method::POST,
        &format!("/steward/customers/{a}/unmerge"),
        secret,
        None,
        &[("absorbed", &b), ("reason", "undo")],
    )
    .await;
    assert_eq!(unmerge.status, StatusCode::CONFLICT, "{}", unmerge.html);
    assert!(
        unmerge
            .html
            .contains(&format!("customer {b} is not merged into {a}")),
        "{}",
        unmerge.html
    );
    assert!(
        unmerge.html.contains(r#"id="fields""#),
        "the record page: {}",
        unmerge.html
    );
    assert_eq!(app.head().await, head, "nothing was written");
    let still = deliveries(&app)
        .exception(exception.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.status, ExceptionStatus::Open);

    // With a reason it merges (303 to the survivor), and the absorbed record's page says so.
    let merged = request(
        &app,
        Method::POST,
        &format!("/steward/customers/{b}/merge"),
        secret,
        None,
        &[
            ("absorbed", &a),
            ("exception", &id),
            ("reason", "same person"),
        ],
    )
    .await;
    assert_eq!(merged.status, StatusCode::SEE_OTHER, "{}", merged.html);
    assert_eq!(
        merged.location.as_deref(),
        Some(format!("/steward/customers/{b}?done=merge").as_str())
    );
    let absorbed = request(
        &app,
        Method::GET,
        &format!("/steward/customers/{a}"),
        secret,
        None,
        &[],
    )
    .await;
    assert_eq!(absorbed.status, StatusCode::OK, "{}", absorbed.html);
    assert!(
        section_by_id(&absorbed.html, "merged-into").contains(&b),
        "{}",
        absorbed.html
    );
}

// ---------------------------------------------------------------------------------------
// Households and relationships
// ---------------------------------------------------------------------------------------

/// A household's head and a guardian in it; the head's record holds a live delegate
/// (scoped, expiring) and an ended one (unscoped). Returns the household id, the head and
/// the guardian.
async fn household_with_relationships(app: &TestApp) -> (String, String, String) {
    let ada = customer(
        app,
        json!([{"op": "set_field", "field": "name.given", "value": "Ada"}]),
    )
    .await;
    let byron = customer(
        app,
        json!([{"op": "set_field", "field": "name.given", "value": "Byron"}]),
    )
    .await;
    let created = app
        .send(
            Method::POST,
            "/v1/households",
            Some("web_app"),
            Some("hh-1"),
            Some(&json!({"customer_id": ada, "provenance": support::provenance()})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let household = created.body["household_id"].as_str().unwrap().to_owned();
    let joined = app
        .send(
            Method::PUT,
            &format!("/v1/households/{household}/members/{byron}"),
            Some("web_app"),
            Some("hh-2"),
            Some(&json!({"role": "guardian", "provenance": support::provenance()})),
        )
        .await;
    assert_eq!(joined.status, StatusCode::OK, "{}", joined.text);
    let relationship = |kind: &str, id: &str, extra: Value| {
        let mut change = json!({
            "op": "record_relationship", "relationship": kind, "representative": id,
            "evidence": {"kind": "signed_form", "reference": "form-77"},
        });
        for (k, v) in extra.as_object().unwrap() {
            change[k] = v.clone();
        }
        change
    };
    let reply = app
        .command(
            "steward",
            &ada,
            "rel-1",
            json!([
                relationship(
                    "delegate",
                    "assistant-1",
                    json!({"scope": {"purposes": ["marketing"], "fields": ["email"]},
                           "expires_at": "2100-01-01T00:00:00Z"})
                ),
                relationship("delegate", "old-assistant", json!({})),
            ]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let ended = reply.body["outcomes"][1]["relationship_id"].clone();
    let reply = app
        .command(
            "steward",
            &ada,
            "rel-2",
            json!([{"op": "end_relationship", "relationship_id": ended, "reason": "moved away"}]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    (household, ada, byron)
}

/// A customer's page shows their household (linking to the household's page, which lists
/// its members with their roles and links back) and the relationships recorded for them;
/// the header's search opens a household by its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steward_follows_a_household_and_reads_relationships_in_a_browser() {
    let app = TestApp::start(Engine::Postgres).await;
    let (household, ada, byron) = household_with_relationships(&app).await;
    let driver = Driver::start();
    let browser = driver.browser().await;
    browser.goto(&app.url("/steward/login")).await.unwrap();
    fill(&browser, "input[name=token]", app.token("steward")).await;
    submit(&browser, "button[type=submit]").await;

    browser
        .goto(&app.url(&format!("/steward/customers/{ada}")))
        .await
        .unwrap();
    assert_eq!(text(&browser, "#household a").await, household);
    assert_eq!(text(&browser, "#household .role").await, "head");
    // Each relationship: who, what kind, on what, until when, on what evidence, where it
    // stands.
    let live = text(&browser, "#relationships tr[data-status=live]").await;
    for part in [
        "assistant-1",
        "delegate",
        "purposes: marketing; fields: email",
        "2100-01-01",
        "signed_form",
        "live",
    ] {
        assert!(live.contains(part), "{part} in {live}");
    }
    let ended = text(&browser, "#relationships tr[data-status=ended]").await;
    for part in [
        "old-assistant",
        "everything",
        "never",
        "ended",
        "moved away",
    ] {
        assert!(ended.contains(part), "{part} in {ended}");
    }

    // The household's page: both members, in id order, with their roles.
    submit(&browser, "#household a").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/households/{household}")
    );
    let mut expected = [(ada.clone(), "head"), (byron.clone(), "guardian")];
    expected.sort();
    let mut shown = Vec::new();
    for row in browser
        .find_all(Locator::Css("#members tbody tr"))
        .await
        .unwrap()
    {
        let id = row.attr("data-id").await.unwrap().unwrap();
        let role = row
            .find(Locator::Css(".role"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        shown.push((id, role));
    }
    assert_eq!(
        shown,
        expected
            .iter()
            .map(|(id, role)| (id.clone(), (*role).to_owned()))
            .collect::<Vec<_>>()
    );
    assert!(
        text(&browser, &format!("#members tr[data-id='{byron}']"))
            .await
            .contains("Byron")
    );
    submit(&browser, &format!("#members tr[data-id='{byron}'] a")).await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/customers/{byron}")
    );
    assert_eq!(text(&browser, "#household .role").await, "guardian");
    assert!(
        text(&browser, "#relationships")
            .await
            .contains("Nobody is recorded"),
        "Byron has none"
    );

    // The header's search takes a household id too.
    fill(&browser, "#find-customer input[name=q]", &household).await;
    submit(&browser, "#find-customer button").await;
    assert_eq!(
        browser.current_url().await.unwrap().path(),
        format!("/steward/households/{household}")
    );
    browser.close().await.unwrap();
}

/// Without a browser: what relationships hold is shown as text; households nobody is in,
/// and what is not a household id, are readable 404 pages; a customer in none says so.
async fn households_and_relationships_are_escaped_and_unknown_ones_readable(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (household, ada, _) = household_with_relationships(&app).await;
    let cookie = log_in(&app).await;
    let script = r#"<script>alert("pwned")</script>"#;
    let reply = app
        .command(
            "steward",
            &ada,
            "rel-3",
            json!([{
                "op": "record_relationship", "relationship": "delegate", "representative": script,
                "evidence": {"kind": "signed_form", "reference": script},
            }]),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let page = request(
        &app,
        Method::GET,
        &format!("/steward/customers/{ada}"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.html);
    let relationships = section(&page.html, "relationships");
    assert!(!relationships.contains("<script"), "{relationships}");
    assert!(
        relationships.contains("&lt;script&gt;alert("),
        "{relationships}"
    );
    assert!(
        section(&page.html, "household")
            .contains(&format!("href=\"/steward/households/{household}\"")),
        "{}",
        page.html
    );

    for (path, says) in [
        (
            "/steward/households/0190a4c6-0000-7000-8000-000000000000".to_owned(),
            "Nobody is in household",
        ),
        (
            "/steward/households/not-an-id".to_owned(),
            "not a household id",
        ),
    ] {
        let page = request(&app, Method::GET, &path, Some(&cookie), None, &[]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.html.contains(says), "{}", page.html);
    }
    let anonymous = request(
        &app,
        Method::GET,
        &format!("/steward/households/{household}"),
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);

    let alone = customer(
        &app,
        json!([{"op": "set_field", "field": "name.given", "value": "Cleo"}]),
    )
    .await;
    let page = request(
        &app,
        Method::GET,
        &format!("/steward/customers/{alone}"),
        Some(&cookie),
        None,
        &[],
    )
    .await;
    assert!(section(&page.html, "household").contains("Not in a household."));
    assert!(section(&page.html, "relationships").contains("Nobody is recorded"));
}

/// An exception about a record merged since: acting on it from the page is refused as a
/// conflict naming the survivor — never a redirect without a `Location`.
async fn acting_on_a_merged_records_exception_names_the_survivor(engine: Engine) {
    let app = TestApp::start(engine).await;
    let (email, _) = crm_proposals(&app).await;
    let exception = app.get(&format!("/v1/exceptions/{email}"), "steward").await;
    let absorbed = exception.body["customer_id"].as_str().unwrap().to_owned();
    let survivor = customer(&app, json!([])).await;
    let merged = app
        .send(
            Method::POST,
            &format!("/v1/customers/{survivor}/merge"),
            Some("steward"),
            None,
            Some(&json!({"absorbed": absorbed, "reason": "same person"})),
        )
        .await;
    assert_eq!(merged.status, StatusCode::OK, "{}", merged.text);
    let session = log_in(&app).await;
    let page = request(
        &app,
        Method::POST,
        &format!("/steward/exceptions/{email}/act"),
        Some(&session),
        None,
        &[("action", "accept")],
    )
    .await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.html);
    assert_eq!(page.location, None);
    assert!(page.html.contains(&survivor), "{}", page.html);
}
