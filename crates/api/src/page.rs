//! The data steward's web page, under `/steward`: server-rendered HTML (maud, which escapes
//! every splice — customer data is never trusted as markup), no JavaScript, no external assets.
//! Stewards log in by pasting a steward token; the server opens a session
//! (`Tokens::open_session`) and the cookie carries the session id, never the token: the cookie
//! does not work as a bearer on the API, and the token is not kept in the browser. The session
//! is checked on every request and ends after `SessionSettings::limits` (idle, absolute), at
//! logout (deleted), or when its token is revoked or expires.
//! Every action goes through [`crate::steward::act`], as the JSON API's do.
//!
//! Cross-site requests: the cookie is `HttpOnly; SameSite=Strict; Path=/steward`, and
//! state-changing requests whose `Origin` (when sent) is not this host are refused. It is
//! also `Secure` when `SessionSettings::secure_cookies` says the page is served over TLS
//! (directly or behind a TLS-terminating proxy); `serve` itself speaks plain HTTP.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use chrono::{DateTime, Utc};
use idledger_domain::delegation::RelationshipStatus;
use idledger_domain::event::{EventPayload, StewardAction};
use idledger_domain::field::{FieldPath, FieldValue};
use idledger_domain::hashing::HashKey;
use idledger_domain::ids::{CustomerId, HouseholdId};
use idledger_domain::lookup::Identifier;
use idledger_domain::policy::FieldRule;
use idledger_domain::state::{ConsentState, CustomerState};
use idledger_store::approvals::{Approval, ApprovalStatus};
use idledger_store::delivery::{
    ConsumerFieldState, ExceptionFilter, ExceptionKind, ExceptionStatus, ExceptionSubject,
    KindCount, SyncException,
};
use idledger_store::{RecordedEvent, Role, Scope, Session, SessionLimits, StoreError, TokenRecord};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use uuid::Uuid;

use crate::AppState;
use crate::error::ApiError;
use crate::steward::{self, ActionRequest, ActionResult};
use idledger_app::{ExceptionQuery, ReadError, Reader};

/// The session cookie: a steward session's id (never the token).
pub const COOKIE: &str = "idl_steward";
const LOGIN: &str = "/steward/login";
/// What the page does: read exceptions and records, act on exceptions. A steward token
/// limited to fewer scopes does not log in.
const PAGE_SCOPES: [Scope; 2] = [Scope::Reads, Scope::Stewardship];
const PAGE_SIZE: usize = 50;

/// How the steward page's sessions last and whether their cookie is `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionSettings {
    /// Idle and absolute expiry (30 minutes and 12 hours by default).
    pub limits: SessionLimits,
    /// Mark the cookie `Secure` (the page is served over TLS, or behind a TLS proxy).
    pub secure_cookies: bool,
}

/// The steward page's routes; `router` merges them beside `/v1`.
pub fn routes(settings: SessionSettings) -> Router<AppState> {
    Router::new()
        .route("/steward", get(list))
        .route(LOGIN, get(login_form).post(login))
        .route("/steward/logout", post(logout))
        .route("/steward/exceptions/{id}", get(detail))
        .route("/steward/exceptions/{id}/act", post(act_one))
        .route("/steward/exceptions/{id}/assign", post(assign_one))
        .route("/steward/bulk", post(bulk))
        .route("/steward/approvals", get(approvals_page))
        .route("/steward/approvals/{id}/decide", post(decide_approval))
        .route("/steward/activity", get(activity_page))
        .route("/steward/customers", get(find_customer))
        .route("/steward/customers/{id}", get(customer_page))
        .route("/steward/customers/{id}/merge", post(merge_records))
        .route("/steward/customers/{id}/unmerge", post(unmerge_records))
        .route("/steward/households/{id}", get(household_page))
        .route(
            "/steward/customers/{id}/fields/{field}/history",
            get(field_history_page),
        )
        .route(
            "/steward/customers/{id}/consents/{purpose}/receipt",
            get(receipt_download),
        )
        .layer(axum::middleware::from_fn(same_origin))
        .layer(Extension(settings))
}

// ---------------------------------------------------------------------------------------
// Session and request checks
// ---------------------------------------------------------------------------------------

/// The logged-in steward: the token of a live session, checked on every request.
#[derive(Debug)]
pub struct Steward(TokenRecord);

impl FromRequestParts<AppState> for Steward {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let settings = settings(parts);
        let Some(secret) = cookie(&parts.headers, COOKIE) else {
            return Err(Redirect::to(LOGIN).into_response());
        };
        let looked_up = match parts.extensions.remove::<PageSession>() {
            Some(PageSession(session)) => Ok(session),
            None => PageSession::look_up(state, secret).await.map(|s| s.0),
        };
        match looked_up {
            Ok(Some(session)) => {
                tracing::Span::current().record("role", session.token.role.as_str());
                Ok(Self(session.token))
            }
            // Logged out, expired, or its token revoked or expired: forget the cookie and ask
            // again.
            Ok(None) => Err(with_cookie(
                Redirect::to(LOGIN).into_response(),
                &clear_cookie(settings),
            )),
            Err(e) => Err(PageError::from(ApiError::from(e)).into_response()),
        }
    }
}

/// A page request's session as looked up once for the request (by the per-token limits,
/// which count page requests against the session's token); `None`: no live session.
#[derive(Debug, Clone)]
pub struct PageSession(Option<Session>);

impl PageSession {
    /// The live session `secret` names now, its idle expiry moved on.
    pub async fn look_up(state: &AppState, secret: &str) -> Result<Self, StoreError> {
        state
            .tokens
            .session(secret, Utc::now(), state.sessions.limits)
            .await
            .map(Self)
    }

    pub fn token_id(&self) -> Option<uuid::Uuid> {
        self.0.as_ref().map(|s| s.token.id)
    }
}

fn settings(parts: &Parts) -> SessionSettings {
    parts
        .extensions
        .get::<SessionSettings>()
        .copied()
        .unwrap_or_default()
}

/// Refuses state-changing requests sent from another origin (CSRF), on top of the
/// `SameSite=Strict` cookie. Browsers send `Origin` with every POST; other clients may not.
async fn same_origin(request: Request, next: Next) -> Response {
    let safe = matches!(*request.method(), Method::GET | Method::HEAD);
    if !safe
        && let Some(origin) = request.headers().get(header::ORIGIN)
        && !origin_is_host(origin, request.headers().get(header::HOST))
    {
        return PageError::new(
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "This form was sent from another site. Open the steward page directly and try again.",
        )
        .into_response();
    }
    next.run(request).await
}

fn origin_is_host(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(HeaderValue::to_str)) else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// The steward token's secret a page request carries in its session cookie, if any.
pub fn session_secret(headers: &HeaderMap) -> Option<&str> {
    cookie(headers, COOKIE)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

fn session_cookie(secret: &str, settings: SessionSettings) -> String {
    format!(
        "{COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/steward{}",
        secure(settings)
    )
}

fn clear_cookie(settings: SessionSettings) -> String {
    format!(
        "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/steward; Max-Age=0{}",
        secure(settings)
    )
}

fn secure(settings: SessionSettings) -> &'static str {
    if settings.secure_cookies {
        "; Secure"
    } else {
        ""
    }
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Form or query pairs, keeping repeated keys (the bulk form sends one `id` per row).
fn pairs(raw: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(raw).into_owned().collect()
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

// ---------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#22313f;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1rem;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}header form{margin-left:auto}header form~form{margin-left:0}
main{padding:1rem 1.2rem;max-width:1400px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #dde1e6;padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f4;font-weight:600}
code,pre,.mono{font-family:ui-monospace,monospace;font-size:12.5px}.mono{word-break:break-all}.nowrap{white-space:nowrap}.wrap{overflow-wrap:anywhere}
pre{white-space:pre-wrap;word-break:break-all;background:#fff;border:1px solid #dde1e6;padding:.5rem;margin:0}
.filters{display:flex;flex-wrap:wrap;gap:.6rem;align-items:end;margin-bottom:1rem}
.filters label,.act label{display:flex;flex-direction:column;font-size:12px;color:#4a5561}
input,select,button{font:inherit;padding:.25rem .4rem}
button{cursor:pointer;border:1px solid #22313f;background:#22313f;color:#fff;border-radius:3px}
.msg{padding:.6rem .8rem;border-radius:3px;margin:.6rem 0}
.error{background:#fde8e8;border:1px solid #e0a0a0}.ok{background:#e6f4ea;border:1px solid #9cc9a8}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:1rem}
@media(min-width:1100px){.cols{grid-template-columns:1fr 1fr 1.5fr}}
section{background:#fff;border:1px solid #dde1e6;padding:.6rem .8rem;margin-bottom:1rem;min-width:0;overflow-x:auto}
section h2{font-size:15px;margin:.9rem 0 .5rem}section h2:first-child{margin-top:.2rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.2rem .8rem;margin:0}dt{color:#4a5561}dd{margin:0;min-width:0;overflow-wrap:anywhere}
.act{display:flex;flex-wrap:wrap;gap:1rem;margin:.6rem 0}
.act form{background:#fff;border:1px solid #dde1e6;padding:.6rem;display:flex;gap:.5rem;align-items:end}
.same{color:#1e7b34}.differs{color:#b3261e;font-weight:600}.mine{background:#fff8e1}
.status-open{color:#b35c00}.muted{color:#6b7682}
"#;

fn layout(title: &str, steward: Option<&TokenRecord>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " — idledger steward" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a href="/steward" { "idledger · sync exceptions" }
                    @if steward.is_some() {
                        a id="nav-duplicates" href="/steward?kind=duplicate_candidate" { "Duplicates" }
                        a id="nav-approvals" href="/steward/approvals" { "Approvals" }
                        a id="nav-activity" href="/steward/activity" { "Activity" }
                        form id="find-customer" method="get" action="/steward/customers" {
                            input type="search" name="q" size="38" placeholder="id, email, phone, system:id or name" aria-label="find a customer";
                            button type="submit" { "Find" }
                        }
                    }
                    @if let Some(token) = steward {
                        span.muted { "signed in as " "steward:" (token.label) }
                        form id="logout" method="post" action="/steward/logout" {
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An HTML response that no cache keeps and no other site frames or styles.
fn page(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Not `no-referrer`: browsers then send `Origin: null` with our own forms.
        (header::REFERRER_POLICY, "same-origin"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A page that says what went wrong, in words (never a problem document or a bare 500).
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: String,
    message: String,
}

impl PageError {
    fn new(status: StatusCode, title: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            title: title.to_owned(),
            message: message.into(),
        }
    }
}

/// The status a page answers for an API error. A `307 merged_into` has no URL to follow on
/// the page (its routes name exceptions and approvals, and a merged record's own page
/// shows it as merged), so it is a conflict, said in words that name the survivor.
fn shown_status(e: &ApiError) -> StatusCode {
    if e.status == StatusCode::TEMPORARY_REDIRECT {
        StatusCode::CONFLICT
    } else {
        e.status
    }
}

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        let status = shown_status(&e);
        let title = match status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::GONE => "Customer erased",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::CONFLICT => "Already closed",
            s if s.is_server_error() => "Something went wrong",
            _ => "Cannot do that",
        };
        Self::new(status, title, readable(&e))
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            h1 { (self.title) }
            p.msg.error { (self.message) }
            p { a href="/steward" { "Back to the exceptions" } }
        };
        page(self.status, layout(&self.title, None, body))
    }
}

/// What an API error means for a person at the page (5xx say nothing internal; it is logged).
fn readable(e: &ApiError) -> String {
    if e.status.is_server_error() {
        return "The server could not complete this; the cause is in its log. Try again in a moment."
            .to_owned();
    }
    e.detail.clone()
}

fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let minutes = (now - since).num_minutes().max(0);
    match minutes {
        0 => "<1m".to_owned(),
        m if m < 60 => format!("{m}m"),
        m if m < 60 * 48 => format!("{}h {}m", m / 60, m % 60),
        m => format!("{}d {}h", m / (60 * 24), (m / 60) % 24),
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

// ---------------------------------------------------------------------------------------
// Login
// ---------------------------------------------------------------------------------------

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Steward login" }
        @if let Some(error) = error {
            p.msg.error role="alert" { (error) }
        }
        form method="post" action=(LOGIN) {
            p {
                label {
                    "Steward token " br;
                    input type="password" name="token" size="60" autocomplete="off" autofocus;
                }
            }
            p.muted { "Create one with " code { "idledger token create --role steward --label <you>" } "." }
            button type="submit" { "Log in" }
        }
    };
    page(status, layout("Login", None, body))
}

async fn login(
    State(state): State<AppState>,
    Extension(settings): Extension<SessionSettings>,
    body: Bytes,
) -> Response {
    let form = pairs(&body);
    let Some(secret) = one(&form, "token") else {
        return login_page(StatusCode::UNPROCESSABLE_ENTITY, Some("Paste a token."));
    };
    let token = match state.tokens.authenticate(secret).await {
        Ok(Some(token))
            if token.role == Role::Steward && PAGE_SCOPES.iter().all(|s| token.allows(*s)) =>
        {
            token
        }
        Ok(Some(token)) if token.role == Role::Steward => {
            return login_page(
                StatusCode::FORBIDDEN,
                Some(
                    "This steward token is limited to scopes that leave out the page's: reads and stewardship.",
                ),
            );
        }
        Ok(Some(token)) => {
            return login_page(
                StatusCode::FORBIDDEN,
                Some(&format!(
                    "This is a {} token; the steward page needs a steward token.",
                    token.role
                )),
            );
        }
        Ok(None) => {
            return login_page(
                StatusCode::UNAUTHORIZED,
                Some("This token is unknown or revoked."),
            );
        }
        Err(e) => return PageError::from(ApiError::from(e)).into_response(),
    };
    match state
        .tokens
        .open_session(&token, Utc::now(), settings.limits)
        .await
    {
        Ok(opened) => with_cookie(
            Redirect::to("/steward").into_response(),
            &session_cookie(&opened.secret, settings),
        ),
        Err(e) => PageError::from(ApiError::from(e)).into_response(),
    }
}

/// Ends the session (deleted: its cookie no longer opens anything) and forgets the cookie.
async fn logout(
    State(state): State<AppState>,
    Extension(settings): Extension<SessionSettings>,
    headers: HeaderMap,
) -> Response {
    if let Some(secret) = cookie(&headers, COOKIE)
        && let Err(e) = state.tokens.end_session(secret).await
    {
        return PageError::from(ApiError::from(e)).into_response();
    }
    with_cookie(Redirect::to(LOGIN).into_response(), &clear_cookie(settings))
}

// ---------------------------------------------------------------------------------------
// The list
// ---------------------------------------------------------------------------------------

/// The list's filters as typed, kept to fill the form again.
#[derive(Debug, Default)]
struct Filters {
    consumer: String,
    kind: String,
    field: String,
    /// `open` (the default), `resolved`, `dismissed` or `all`.
    status: String,
    older_than: String,
    /// `me`, `none`, a steward's label, or empty: anyone's.
    assignee: String,
    /// `true`: only those past their SLA.
    overdue: String,
}

impl Filters {
    fn from_query(pairs: &[(String, String)]) -> Self {
        let get = |k| one(pairs, k).unwrap_or_default().to_owned();
        let status = one(pairs, "status").unwrap_or("open").to_owned();
        Self {
            consumer: get("consumer"),
            kind: get("kind"),
            field: get("field"),
            status,
            older_than: get("older_than"),
            assignee: get("assignee"),
            overdue: get("overdue"),
        }
    }

    /// The store's filter, or what is wrong with the input (the API's own parser, so the
    /// page and the API agree on every filter).
    fn to_filter(
        &self,
        now: DateTime<Utc>,
        me: &idledger_app::Steward,
    ) -> Result<ExceptionFilter, Vec<String>> {
        let pairs = [
            ("consumer", self.consumer.as_str()),
            ("kind", self.kind.as_str()),
            ("field", self.field.as_str()),
            ("status", self.status.as_str()),
            ("older_than", self.older_than.as_str()),
            ("assignee", self.assignee.as_str()),
            ("overdue", self.overdue.as_str()),
        ];
        ExceptionQuery::parse(pairs)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
            .and_then(|query| query.filter(now, Some(me)).map_err(|e| vec![e.to_string()]))
    }

    /// The query string of these filters (for paging links).
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("consumer", &self.consumer),
            ("kind", &self.kind),
            ("field", &self.field),
            ("status", &self.status),
            ("older_than", &self.older_than),
            ("assignee", &self.assignee),
            ("overdue", &self.overdue),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

async fn list(
    State(state): State<AppState>,
    Steward(token): Steward,
    RawQuery(query): RawQuery,
) -> Response {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let filters = Filters::from_query(&query);
    let now = Utc::now();
    let after = one(&query, "after").and_then(|raw| Uuid::parse_str(raw).ok());
    let me = match steward::steward_of(&token) {
        Ok(me) => me,
        Err(e) => return PageError::from(e).into_response(),
    };
    let counts = match state.app.open_counts().await {
        Ok(counts) => counts,
        Err(e) => return PageError::from(ApiError::from(e)).into_response(),
    };
    let (status, errors, mut items) = match filters.to_filter(now, &me) {
        Ok(mut filter) => {
            filter.after = after;
            // One more than a page, to know whether there is a next one.
            match state
                .deliveries
                .exceptions(&filter, PAGE_SIZE as u32 + 1)
                .await
            {
                Ok(items) => (StatusCode::OK, Vec::new(), items),
                Err(e) => return PageError::from(ApiError::from(e)).into_response(),
            }
        }
        Err(errors) => (StatusCode::UNPROCESSABLE_ENTITY, errors, Vec::new()),
    };
    let next = (items.len() > PAGE_SIZE).then(|| {
        items.truncate(PAGE_SIZE);
        items.last().map(|e| e.id)
    });
    let next = next.flatten();
    let labels = match labels(&state, &items).await {
        Ok(labels) => labels,
        Err(e) => return PageError::from(ApiError::from(e)).into_response(),
    };
    let body = html! {
        h1 { @if filters.kind == ExceptionKind::DuplicateCandidate.as_str() { "Duplicate queue" } @else { "Sync exceptions" } }
        @for error in &errors {
            p.msg.error role="alert" { (error) }
        }
        (counts_table(&counts))
        (filter_form(&filters))
        @if items.is_empty() {
            p.muted id="empty" { "No exceptions match." }
        } @else {
            form method="post" action="/steward/bulk" {
                table id="exceptions" {
                    thead { tr {
                        th { "" } th { "Kind" } th { "About" } th { "Customer" }
                        th { "Field" } th { "Age" } th { "Seen" } th { "Status" } th { "Assigned" }
                    } }
                    tbody {
                        @for e in &items {
                            tr data-id=(e.id) {
                                td { input type="checkbox" name="id" value=(e.id) aria-label="select"; }
                                td { a href={ "/steward/exceptions/" (e.id) } { (e.kind) } }
                                td { (subject_label(&e.subject)) }
                                td { a href={ "/steward/customers/" (e.customer_id) } {
                                    @match labels.get(&e.customer_id) {
                                        Some(label) => (label),
                                        None => span.mono { (e.customer_id) },
                                    }
                                } }
                                td { (e.field.as_deref().unwrap_or("—")) }
                                td title=(time(e.created_at)) { (age(e.created_at, now)) }
                                td { (e.occurrences) "×" }
                                td class={ "status-" (e.status.as_str()) } { (e.status.as_str()) }
                                td.assignee { (e.assigned_to.as_deref().unwrap_or("—")) }
                            }
                        }
                    }
                }
                div.act {
                    label { "Action"
                        select name="action" {
                            option value="dismiss" { "dismiss" }
                            option value="repush" { "re-push" }
                        }
                    }
                    label { "Reason (required to dismiss)"
                        input type="text" name="reason" size="40";
                    }
                    button type="submit" { "Apply to selected" }
                }
            }
        }
        @if let Some(next) = next {
            p { a id="next" href={ "/steward?" (filters.query()) "&after=" (next) } { "Next page →" } }
        }
    };
    page(status, layout("Exceptions", Some(&token), body))
}

fn filter_form(f: &Filters) -> Markup {
    html! {
        form.filters method="get" action="/steward" {
            label { "Consumer / system" input type="text" name="consumer" value=(f.consumer); }
            label { "Kind"
                select name="kind" {
                    option value="" { "any" }
                    @for kind in ExceptionKind::ALL {
                        option value=(kind.as_str()) selected[f.kind == kind.as_str()] { (kind.as_str()) }
                    }
                }
            }
            label { "Field" input type="text" name="field" value=(f.field) placeholder="email"; }
            label { "Status"
                select name="status" {
                    @for s in ["open", "resolved", "dismissed", "all"] {
                        option value=(s) selected[f.status == s] { (s) }
                    }
                }
            }
            label { "Older than" input type="text" name="older_than" value=(f.older_than) placeholder="90m, 4h, 2d" size="8"; }
            label { "Assigned to"
                select name="assignee" {
                    option value="" { "anyone" }
                    option value="me" selected[f.assignee == "me"] { "me" }
                    option value="none" selected[f.assignee == "none"] { "nobody" }
                    @if !["", "me", "none"].contains(&f.assignee.as_str()) {
                        option value=(f.assignee) selected { (f.assignee) }
                    }
                }
            }
            label { "Overdue only"
                input type="checkbox" name="overdue" value="true" checked[f.overdue == "true"];
            }
            button type="submit" { "Filter" }
        }
    }
}

// ---------------------------------------------------------------------------------------
// One exception
// ---------------------------------------------------------------------------------------

/// What happened on the page just before: an action's result or its refusal.
enum Notice {
    Done(String),
    Failed(String),
}

fn parse_id(raw: &str) -> Result<Uuid, PageError> {
    Uuid::parse_str(raw).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no sync exception {raw}."),
        )
    })
}

async fn detail(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let query = pairs(query.unwrap_or_default().as_bytes());
    let notice = one(&query, "done").map(|action| {
        Notice::Done(match action {
            "repush" => "Re-pushed: the record's value is on its way to the consumer again. The exception closes when the consumer acknowledges it.".to_owned(),
            "accept" => "Accepted into the record.".to_owned(),
            "dismiss" => "Dismissed.".to_owned(),
            "approval" => "A second steward must approve this change (four eyes): nothing changed yet. It waits under Approvals.".to_owned(),
            "assign" => "Assignment saved.".to_owned(),
            "approve" => "Approved: the change is in the record.".to_owned(),
            "reject" => "Rejected: nothing changed; the exception stays open.".to_owned(),
            "route" => "Sent to the system of record. The exception closes when it accepts or rejects the proposal.".to_owned(),
            other => format!("Done: {other}."),
        })
    });
    exception_page(&state, &token, id, StatusCode::OK, notice).await
}

async fn act_one(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let form = pairs(&body);
    let request = match action_request(&form) {
        Ok(request) => request,
        Err(message) => {
            return exception_page(
                &state,
                &token,
                id,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Notice::Failed(message)),
            )
            .await;
        }
    };
    match steward::act(&state, &token, id, &request).await {
        // Post/redirect/get: reloading the page does not act twice.
        Ok(done) => Ok(Redirect::to(&format!(
            "/steward/exceptions/{id}?done={}",
            if done.approval.is_some() {
                "approval"
            } else {
                done.action
            }
        ))
        .into_response()),
        Err(e) if e.status == StatusCode::NOT_FOUND && e.code == "unknown_exception" => {
            Err(e.into())
        }
        Err(e) => {
            let message = readable(&e);
            exception_page(
                &state,
                &token,
                id,
                shown_status(&e),
                Some(Notice::Failed(message)),
            )
            .await
        }
    }
}

/// The action a form asks for. `value` is JSON when it parses as JSON, else a string, so a
/// steward can type `jane@example.org` as well as `true` or `{"…": …}`.
fn action_request(form: &[(String, String)]) -> Result<ActionRequest, String> {
    let action = match one(form, "action") {
        Some("repush") => StewardAction::Repush,
        Some("accept") => StewardAction::Accept,
        Some("dismiss") => StewardAction::Dismiss,
        Some("route") => StewardAction::Route,
        Some(other) => return Err(format!("{other:?} is not an action")),
        None => return Err("Choose an action.".to_owned()),
    };
    let value = one(form, "value").map(|raw| {
        serde_json::from_str(raw).unwrap_or_else(|_| serde_json::Value::String(raw.to_owned()))
    });
    Ok(ActionRequest {
        action,
        reason: one(form, "reason").map(str::to_owned),
        value,
    })
}

/// Everything the page shows about an exception's customer, or why it cannot.
enum Record {
    Found {
        state: Box<CustomerState>,
        history: Vec<RecordedEvent>,
        /// The customer's latest decisions, newest first.
        decisions: Vec<idledger_store::decisions::DecisionEntry>,
    },
    Erased(String),
    Missing,
}

async fn load_record(
    state: &AppState,
    exception: &SyncException,
    field: Option<&FieldPath>,
) -> Result<Record, PageError> {
    let customer = exception.customer_id;
    let Some(current) = state.ledger.state(customer).await.map_err(ApiError::from)? else {
        return Ok(Record::Missing);
    };
    if let Some(erasure) = &current.erased {
        return Ok(Record::Erased(erased_message(erasure.at)));
    }
    let history = match field {
        Some(field) => match state.ledger.history(customer, field).await {
            Ok(history) => history,
            Err(StoreError::Erased { at, .. }) => {
                return Ok(Record::Erased(erased_message(at)));
            }
            Err(e) => return Err(ApiError::from(e).into()),
        },
        None => Vec::new(),
    };
    let decisions = state
        .app
        .decider()
        .decisions()
        .latest(customer, LATEST_DECISIONS)
        .await
        .map_err(ApiError::from)?;
    Ok(Record::Found {
        state: Box::new(current),
        history,
        decisions,
    })
}

/// Decisions the exception page shows of its customer.
const LATEST_DECISIONS: u32 = 10;

fn erased_message(at: DateTime<Utc>) -> String {
    format!(
        "This customer's record was erased at {}; nothing of it can be shown or changed.",
        time(at)
    )
}

async fn exception_page(
    state: &AppState,
    token: &TokenRecord,
    id: Uuid,
    status: StatusCode,
    notice: Option<Notice>,
) -> Result<Response, PageError> {
    let exception = state
        .deliveries
        .exception(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| steward::unknown_exception(id))?;
    let field = exception
        .field
        .as_deref()
        .and_then(|raw| FieldPath::parse(raw).ok());
    let record = load_record(state, &exception, field.as_ref()).await?;
    let consumer = match exception.subject.consumer() {
        Some(id) => state
            .deliveries
            .consumer(id)
            .await
            .map_err(ApiError::from)?,
        None => None,
    };
    let held_by_consumer: Vec<ConsumerFieldState> = match (&consumer, &record) {
        (Some(consumer), Record::Found { .. }) => state
            .deliveries
            .consumer_state(&consumer.id, Some(exception.customer_id))
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|s| Some(&s.field) == exception.field.as_ref())
            .collect(),
        _ => Vec::new(),
    };
    let status = match &record {
        Record::Erased(_) if status == StatusCode::OK => StatusCode::GONE,
        _ => status,
    };
    let rule = field.as_ref().map(|f| state.ledger.policy().rule(f));
    let approvals = state
        .app
        .approvals(Some(ApprovalStatus::Pending), Some(id), None, 10)
        .await
        .map_err(ApiError::from)?;
    // Hashes are keyed per consumer: the record's is shown under the consumer's key, to be
    // compared with what it acknowledged.
    let hash_key = consumer.as_ref().map(|c| state.ledger.hash_key(&c.id));
    // The other record of a duplicate pair, shown beside this one.
    let other = match (&record, exception.subject.other_customer()) {
        (Record::Found { .. }, Some(other)) => Some((
            other,
            state.ledger.state(other).await.map_err(ApiError::from)?,
        )),
        _ => None,
    };
    let title = format!("{} exception", exception.kind);
    let body = html! {
        p { a href="/steward" { "← all exceptions" } }
        h1 { (exception.kind) " · " (subject_label(&exception.subject)) " · " (exception.field.as_deref().unwrap_or("whole customer")) }
        @if let Some(other) = exception.subject.other_customer() {
            p id="other-customer" {
                "Possibly the same person as "
                a href={ "/steward/customers/" (other.as_uuid()) } { span.mono { (other.as_uuid()) } }
                " (" (exception.detail["strength"].as_str().unwrap_or("?")) " match on "
                (exception.detail["matched_on"].as_array().map(|a| a.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>().join(", ")).unwrap_or_default())
                "). Compare the two records below; merge one into the other, or dismiss this if they are not the same person."
            }
        }
        @match &notice {
            Some(Notice::Done(message)) => p.msg.ok role="status" { (message) },
            Some(Notice::Failed(message)) => p.msg.error role="alert" { (message) },
            None => {},
        }
        (lifecycle(&exception, match &record {
            Record::Found { state, .. } => display_label(state),
            _ => None,
        }))
        @if let (Record::Found { state: mine, .. }, Some((other, theirs))) = (&record, &other) {
            (side_by_side(
                (exception.customer_id, mine),
                (*other, theirs.as_ref()),
                (exception.status == ExceptionStatus::Open).then_some(exception.id),
            ))
        }
        @if exception.status == ExceptionStatus::Open && !matches!(record, Record::Erased(_)) {
            (assign_form(&exception))
            @for approval in &approvals {
                (approval_section(approval, token))
            }
            @if approvals.iter().all(|a| a.status != ApprovalStatus::Pending) {
                (action_forms(&exception, rule))
            }
        }
        @match &record {
            Record::Erased(message) => p.msg.error id="erased" role="alert" { (message) },
            Record::Missing => p.msg.error { "The customer " (exception.customer_id) " has no record." },
            Record::Found { state: current, history, decisions } => div.cols {
                (record_section(&exception, field.as_ref(), current, hash_key.as_ref()))
                (consumer_section(&exception, hash_key.as_ref(), field.as_ref(), current, &held_by_consumer))
                (history_section(&exception, history))
                (consents_section(exception.customer_id, current))
                (decisions_section(decisions))
            },
        }
        section id="evidence" {
            h2 { "Evidence" }
            pre { (pretty(&exception.detail)) }
        }
    };
    Ok(page(status, layout(&title, Some(token), body)))
}

/// Each consent with what its receipt states (the signed receipt itself is
/// `GET /v1/customers/{id}/consents/{purpose}/receipt`).
fn consents_section(customer: CustomerId, state: &CustomerState) -> Markup {
    html! {
        section id="consents" {
            h2 { "Consents and their receipts" }
            @if state.consents.is_empty() {
                p.muted { "No consent recorded." }
            } @else {
                table.compact {
                    tr { th { "purpose" } th { "state" } th { "basis" } th { "notice" } th { "collected" } th { "receipt id" } }
                    @for (purpose, c) in &state.consents {
                        tr {
                            td { code { (purpose) } }
                            td { (if c.state == ConsentState::Granted { "granted" } else { "withdrawn" }) " v" (c.version) }
                            td { (c.terms.basis) }
                            td.mono { (c.terms.notice.id()) "@" (c.terms.notice.version()) }
                            td { (c.terms.channel) " via " (c.provenance.source) ", " (time(c.withdrawn_at.unwrap_or(c.granted_at))) }
                            td.mono { a href={ "/steward/customers/" (customer) "/consents/" (purpose) "/receipt" } title="the signed receipt (compact JWS)" { (c.last_event_id) } }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /steward/customers?q=…` (or `id=…`): the header's search. A customer id opens the
/// record, a household id (a UUID no customer has) the household; anything else is an
/// identifier (`Identifier::infer`: an email, a phone, a
/// `<system>:<id>` external id or a full name) found through the blind index, as the API
/// finds it (`App::find_customers`; a steward reads everything): one customer opens their
/// record, several are listed by their labels, none says so.
async fn find_customer(
    State(state): State<AppState>,
    Steward(token): Steward,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let raw = one(&query, "q")
        .or_else(|| one(&query, "id"))
        .unwrap_or_default();
    if let Ok(household) = HouseholdId::parse(raw.trim()) {
        let customer = CustomerId::from_uuid(household.as_uuid()).ok();
        let known = match customer {
            Some(id) => state
                .ledger
                .state(id)
                .await
                .map_err(ApiError::from)?
                .is_some(),
            None => false,
        };
        if !known
            && !state
                .ledger
                .find(&Identifier::Household(household), 1)
                .await
                .map_err(ApiError::from)?
                .is_empty()
        {
            return Ok(Redirect::to(&format!("/steward/households/{household}")).into_response());
        }
    }
    if let Ok(id) = CustomerId::parse(raw) {
        return Ok(Redirect::to(&format!("/steward/customers/{id}")).into_response());
    }
    // Never quoted back: what was typed may be an email or a name.
    let identifier = Identifier::infer(raw).map_err(|_| {
        PageError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Cannot search for that",
            "Type a customer id, an email, a phone number with its country code (+44 20…), \
             an external id as system:id, or a full name.",
        )
    })?;
    let found = state
        .app
        .find_customers(&idledger_app::Reader::Overseer, &identifier)
        .await
        .map_err(ApiError::from)?;
    if let [id] = found.customer_ids.as_slice() {
        return Ok(Redirect::to(&format!("/steward/customers/{id}")).into_response());
    }
    let labels = customer_labels(&state, found.customer_ids.clone())
        .await
        .map_err(ApiError::from)?;
    let kind = identifier.kind().as_str().replace('_', " ");
    let body = html! {
        h1 { "Find a customer" }
        @if found.customer_ids.is_empty() {
            p.muted id="no-match" { "No customer has this " (kind) "." }
        } @else {
            p { (found.customer_ids.len()) " customers have this " (kind) "." }
            table id="matches" {
                thead { tr { th { "Customer" } th { "Id" } } }
                tbody { @for id in &found.customer_ids {
                    tr data-id=(id) {
                        td { a href={ "/steward/customers/" (id) } {
                            (labels.get(id).map_or("(no name or email)", String::as_str))
                        } }
                        td.mono { (id) }
                    }
                } }
            }
            @if found.truncated {
                p.muted id="truncated" { "More customers have it; the first " (found.customer_ids.len()) " are listed." }
            }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout("Find a customer", Some(&token), body),
    ))
}

fn parse_customer(raw: &str) -> Result<CustomerId, PageError> {
    CustomerId::parse(raw).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "That is not a customer id: paste the id (a UUID) of a customer.",
        )
    })
}

/// A customer's record as a steward sees it: every field with its source, version,
/// verification and pending change, proposals, consents with their receipts, the latest
/// decisions and the customer's open exceptions.
async fn customer_page(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let id = parse_customer(&raw)?;
    let query = pairs(query.unwrap_or_default().as_bytes());
    let notice = one(&query, "done").map(|done| {
        Notice::Done(match done {
            "merge" => "Merged: the other record is now part of this one (listed under Merged records); its reads and commands come here.".to_owned(),
            "unmerge" => "Unmerged: both records stand apart again, as if they had never been merged.".to_owned(),
            other => format!("Done: {other}."),
        })
    });
    record_page(&state, &token, id, StatusCode::OK, notice).await
}

/// The record page of `customer_page`, with what the action before it did or why it was
/// refused (`status` is then the refusal's).
async fn record_page(
    state: &AppState,
    token: &TokenRecord,
    id: CustomerId,
    status: StatusCode,
    notice: Option<Notice>,
) -> Result<Response, PageError> {
    let not_found = || {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no customer {id}."),
        )
    };
    let current = state
        .ledger
        .state(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(not_found)?;
    let title = format!("Customer {id}");
    if let Some(erasure) = &current.erased {
        let body = html! {
            h1 { "Customer " span.mono { (id) } }
            p.msg.error id="erased" role="alert" { (erased_message(erasure.at)) }
        };
        return Ok(page(StatusCode::GONE, layout(&title, Some(token), body)));
    }
    // The records merged into this one, by their labels (they are frozen as they were).
    let absorbed_labels = customer_labels(state, current.absorbed.keys().copied().collect())
        .await
        .map_err(ApiError::from)?;
    let survivor_label = match &current.merged_into {
        Some(link) => customer_labels(state, vec![link.customer])
            .await
            .map_err(ApiError::from)?
            .remove(&link.customer),
        None => None,
    };
    let decisions = state
        .app
        .decider()
        .decisions()
        .latest(id, LATEST_DECISIONS)
        .await
        .map_err(ApiError::from)?;
    let open = state
        .deliveries
        .exceptions(
            &ExceptionFilter {
                customer: Some(id),
                open_only: true,
                ..ExceptionFilter::default()
            },
            PAGE_SIZE as u32,
        )
        .await
        .map_err(ApiError::from)?;
    let handoffs = state
        .deliveries
        .latest_handoffs(id, LATEST_HANDOFFS)
        .await
        .map_err(ApiError::from)?;
    let body = html! {
        h1 { @match display_label(&current) {
            Some(label) => { (label) " " span.muted.mono { (id) } },
            None => { "Customer " span.mono { (id) } },
        } }
        @match &notice {
            Some(Notice::Done(message)) => p.msg.ok role="status" { (message) },
            Some(Notice::Failed(message)) => p.msg.error role="alert" { (message) },
            None => {},
        }
        @if let Some(link) = &current.merged_into {
            p.msg.error id="merged-into" role="status" {
                "This record is merged into "
                a href={ "/steward/customers/" (link.customer) } {
                    @if let Some(label) = &survivor_label { (label) " " }
                    span.mono { (link.customer) }
                }
                " since " (time(link.at)) ": it is kept as it was then, and its reads and commands go there."
            }
        }
        dl {
            dt { "Registered" } dd { (current.registered_at.map(time).unwrap_or_else(|| "—".to_owned())) }
            dt { "Stream version" } dd { (current.stream_version) }
            @if let Some(r) = &current.restricted {
                dt { "Processing" } dd id="restricted" { "restricted since " (time(r.since)) ": " (r.reason) }
            }
        }
        div.cols {
            section id="fields" {
                h2 { "Fields" }
                table.compact {
                    tr { th { "field" } th { "value" } th { "version" } th { "source" } th { "verified" } th { "pending" } }
                    @for (path, rec) in &current.fields {
                        tr {
                            td { a.history href={ "/steward/customers/" (id) "/fields/" (path) "/history" } title="the field's history" { code { (path) } } }
                            td.wrap { @match &rec.value { Some(v) => (compact(&v.to_json())), None => span.muted { "—" } } }
                            td.muted { "v" (rec.version) }
                            td { (rec.source.as_ref().map(ToString::to_string).unwrap_or_default()) }
                            td { @if let Some(v) = &rec.verification { "by " (v.verified_by) ", " (time(v.verified_at)) } }
                            td { @if let Some(p) = &rec.pending { "requested by " (p.requested_by) " until " (time(p.expires_at)) } }
                        }
                    }
                }
                @if !current.proposals.is_empty() {
                    h2 { "Proposals waiting" }
                    ul { @for (pid, p) in &current.proposals {
                        li { code { (p.field) } ": " code { (compact(&p.value.to_json())) } " from " (p.proposed_by) " " span.muted.mono { (pid) } }
                    } }
                }
            }
            @if !current.absorbed.is_empty() {
                (merged_records(id, &current, &absorbed_labels))
            }
            (household_section(&current))
            (relationships_section(&current, state.ledger.policy(), Utc::now()))
            (consents_section(id, &current))
            (decisions_section(&decisions))
            section id="handoffs" {
                h2 { "Recent handoffs" }
                @if handoffs.is_empty() {
                    p.muted { "Nothing was handed to a consumer." }
                } @else {
                    table {
                        thead { tr { th { "When (UTC)" } th { "Consumer" } th { "Kind" } th { "Fields" } th { "Channel" } } }
                        tbody { @for h in &handoffs {
                            tr data-kind=(h.handoff.kind.as_str()) {
                                td.nowrap { (time(h.handoff.delivered_at)) }
                                td { (h.handoff.consumer_id) }
                                td { (h.handoff.kind.as_str()) }
                                td.wrap { (h.handoff.fields.join(", ")) }
                                td { (h.handoff.channel.as_str()) }
                            }
                        } }
                    }
                }
            }
            section id="open-exceptions" {
                h2 { "Open exceptions" }
                @if open.is_empty() {
                    p.muted { "None." }
                } @else {
                    ul { @for e in &open {
                        li { a href={ "/steward/exceptions/" (e.id) } { (e.kind) } " · " (e.subject) " · " (e.field.as_deref().unwrap_or("whole customer")) }
                    } }
                }
            }
        }
    };
    Ok(page(status, layout(&title, Some(token), body)))
}

/// The household the customer is in (its page lists the others), and their role in it.
fn household_section(current: &CustomerState) -> Markup {
    html! {
        section id="household" {
            h2 { "Household" }
            @match current.value(&FieldPath::Household) {
                Some(FieldValue::Household(m)) => dl {
                    dt { "Household" }
                    dd { a.mono href={ "/steward/households/" (m.household_id) } { (m.household_id) } }
                    dt { "Role" } dd.role { (m.role) }
                },
                _ => p.muted { "Not in a household." },
            }
        }
    }
}

/// The guardian and delegate relationships recorded for the customer, ended ones too: who
/// may act for them, on what, until when, on what evidence, and where each stands `now`.
fn relationships_section(
    current: &CustomerState,
    policy: &idledger_domain::policy::Policy,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        section id="relationships" {
            h2 { "Relationships" }
            @if current.relationships.is_empty() {
                p.muted { "Nobody is recorded as acting for this customer." }
            } @else {
                table.compact {
                    tr { th { "representative" } th { "kind" } th { "scope" } th { "expires" } th { "evidence" } th { "status" } }
                    @for (rid, r) in &current.relationships {
                        @let status = r.status(current, None, policy, now);
                        tr data-id=(rid) data-status=(status.as_str()) {
                            td.wrap { (r.representative.id()) }
                            td { (r.representative.relationship()) }
                            td.wrap { @match &r.scope {
                                None => "everything",
                                Some(scope) => {
                                    @if !scope.purposes.is_empty() {
                                        "purposes: " (scope.purposes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                                    }
                                    @if !scope.purposes.is_empty() && !scope.fields.is_empty() { "; " }
                                    @if !scope.fields.is_empty() {
                                        "fields: " (scope.fields.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                                    }
                                },
                            } }
                            td.nowrap { (r.expires_at.map(time).unwrap_or_else(|| "never".to_owned())) }
                            td { (r.evidence.kind()) }
                            td {
                                (status.as_str().replace('_', " "))
                                @if let Some(ended) = &r.ended {
                                    " " span.muted { (time(ended.at)) " by " (ended.by) ": " (ended.reason) }
                                } @else if status == RelationshipStatus::Live {
                                    " " span.muted { "since " (time(r.recorded_at)) " by " (r.recorded_by) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /steward/households/{id}`: a household's members with their roles, each linking to
/// their record (found as the API finds them; a steward reads everything).
async fn household_page(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
) -> Result<Response, PageError> {
    let not_found = |detail: String| PageError::new(StatusCode::NOT_FOUND, "Not found", detail);
    let id = HouseholdId::parse(&raw).map_err(|_| {
        not_found("That is not a household id: paste the id (a UUID) of a household.".to_owned())
    })?;
    let household = match state.app.household(&Reader::Overseer, id).await {
        Ok(household) => household,
        Err(ReadError::NoHousehold(_)) => {
            return Err(not_found(format!("Nobody is in household {id}.")));
        }
        Err(e) => return Err(ApiError::from(e).into()),
    };
    let labels = customer_labels(
        &state,
        household.members.iter().map(|m| m.customer_id).collect(),
    )
    .await
    .map_err(ApiError::from)?;
    let title = format!("Household {id}");
    let body = html! {
        h1 { "Household " span.mono { (id) } }
        p { (household.members.len()) @if household.members.len() == 1 { " member" } @else { " members" } "." }
        table id="members" {
            thead { tr { th { "Member" } th { "Role" } th { "Id" } } }
            tbody { @for m in &household.members {
                tr data-id=(m.customer_id) {
                    td { a href={ "/steward/customers/" (m.customer_id) } {
                        (labels.get(&m.customer_id).map_or("(no name or email)", String::as_str))
                    } }
                    td.role { (m.role) }
                    td.mono { (m.customer_id) }
                }
            } }
        }
        @if household.truncated {
            p.muted id="truncated" { "More customers are in it; the first " (household.members.len()) " are listed." }
        }
    };
    Ok(page(StatusCode::OK, layout(&title, Some(&token), body)))
}

/// The records merged into `survivor`, each with a form that undoes its merge.
fn merged_records(
    survivor: CustomerId,
    current: &CustomerState,
    labels: &std::collections::HashMap<CustomerId, String>,
) -> Markup {
    html! {
        section id="merged-records" {
            h2 { "Merged records" }
            table {
                thead { tr { th { "Record" } th { "Merged (UTC)" } th { "" } } }
                tbody { @for (absorbed, link) in &current.absorbed {
                    tr data-id=(absorbed) {
                        td { a href={ "/steward/customers/" (absorbed) } {
                            @if let Some(label) = labels.get(absorbed) { (label) " " }
                            span.mono { (absorbed) }
                        } }
                        td.nowrap { (time(link.at)) }
                        td {
                            form.unmerge method="post" action={ "/steward/customers/" (survivor) "/unmerge" } {
                                input type="hidden" name="absorbed" value=(absorbed);
                                label { "Reason (required) " input type="text" name="reason" size="24" required; }
                                button type="submit" { "Unmerge" }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// `POST /steward/customers/{survivor}/merge` (form: `absorbed`, `reason`, and `exception`
/// when sent from a duplicate candidate's page, where a refusal is shown).
async fn merge_records(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    merge_or_unmerge(&state, &token, &raw, &body, false).await
}

/// `POST /steward/customers/{survivor}/unmerge` (form: `absorbed`, `reason`); a refusal is
/// shown on the survivor's record page.
async fn unmerge_records(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    merge_or_unmerge(&state, &token, &raw, &body, true).await
}

async fn merge_or_unmerge(
    state: &AppState,
    token: &TokenRecord,
    raw: &str,
    body: &[u8],
    undo: bool,
) -> Result<Response, PageError> {
    let survivor = parse_customer(raw)?;
    let form = pairs(body);
    let exception = one(&form, "exception").and_then(|raw| Uuid::parse_str(raw).ok());
    let me = steward::steward_of(token)?;
    let result = match one(&form, "absorbed").map(CustomerId::parse) {
        Some(Ok(absorbed)) => {
            // Validated (and trimmed) by the app, as the JSON API's reason is.
            let reason = one(&form, "reason").unwrap_or_default();
            let done = if undo {
                state.app.unmerge(&me, survivor, absorbed, reason).await
            } else {
                state.app.merge(&me, survivor, absorbed, reason).await
            };
            done.map_err(ApiError::from)
        }
        _ => Err(ApiError::unprocessable(
            "invalid_value",
            "Name the other record by its customer id.",
        )),
    };
    let done = if undo { "unmerge" } else { "merge" };
    match result {
        // Post/redirect/get: reloading the survivor's page does not merge twice.
        Ok(_) => {
            Ok(Redirect::to(&format!("/steward/customers/{survivor}?done={done}")).into_response())
        }
        Err(e) => {
            let message = readable(&e);
            match exception {
                Some(id) => {
                    exception_page(
                        state,
                        token,
                        id,
                        shown_status(&e),
                        Some(Notice::Failed(message)),
                    )
                    .await
                }
                None => {
                    record_page(
                        state,
                        token,
                        survivor,
                        shown_status(&e),
                        Some(Notice::Failed(message)),
                    )
                    .await
                }
            }
        }
    }
}

/// Handoffs the record browser shows, newest first.
const LATEST_HANDOFFS: u32 = 20;

/// One field's history, newest first, with each event's provenance (both stewards of a
/// four-eyes change).
async fn field_history_page(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path((raw, field)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let id = parse_customer(&raw)?;
    let field = FieldPath::parse(&field).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such field.",
        )
    })?;
    let history = state
        .ledger
        .history(id, &field)
        .await
        .map_err(ApiError::from)?;
    let title = format!("{field} of {id}");
    let body = html! {
        p { a href={ "/steward/customers/" (id) } { "← the customer's record" } }
        h1 { code { (field) } " · " span.mono { (id) } }
        @if history.is_empty() {
            p.muted id="empty" { "No events for this field." }
        } @else {
            table id="field-history" {
                thead { tr { th { "#" } th { "Event" } th { "Source / actor" } th { "When (UTC)" } th { "What" } th { "Why" } } }
                tbody {
                    @for r in history.iter().rev() {
                        @let event = &r.envelope.event;
                        tr data-type=(event.payload.type_name()) {
                            td { (r.envelope.stream_version) }
                            td { code { (event.payload.type_name()) } }
                            td.wrap {
                                (event.provenance.source) br;
                                span.muted { (event.provenance.actor) }
                                @if let Some(approver) = &event.provenance.approved_by {
                                    br; span.approved-by { "approved by " (approver) }
                                }
                            }
                            td.nowrap { (time(r.recorded_at)) }
                            td.wrap { (describe(&event.payload)) }
                            td.wrap { (event.provenance.reason.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(StatusCode::OK, layout(&title, Some(&token), body)))
}

/// The signed receipt of a consent as it stands, to download (a compact JWS that
/// `idledger receipt verify` or any JOSE library checks against `/.well-known/jwks.json`).
async fn receipt_download(
    State(state): State<AppState>,
    Steward(_): Steward,
    Path((raw, purpose)): Path<(String, String)>,
) -> Result<Response, PageError> {
    let id = parse_customer(&raw)?;
    let purpose = idledger_domain::ids::Purpose::parse(&purpose).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such consent.",
        )
    })?;
    let claims = state
        .app
        .consent_receipt(
            &idledger_app::Reader::Overseer,
            id,
            &purpose,
            &state.feed_settings.source,
        )
        .await
        .map_err(ApiError::from)?;
    let receipt = state
        .signer
        .sign(idledger_domain::receipt::RECEIPT_TYP, &claims)
        .await
        .map_err(ApiError::from)?;
    let mut response = (StatusCode::OK, receipt).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jose"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"receipt-{id}-{purpose}.jws\""
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

/// How a steward recognises a customer: their name and a masked email (`a…@example.org`), as
/// far as the record holds them; `None` for a record with neither (or an erased one).
fn display_label(state: &CustomerState) -> Option<String> {
    let name = [FieldPath::NameGiven, FieldPath::NameFamily]
        .iter()
        .filter_map(|f| match state.value(f) {
            Some(FieldValue::PersonName(n)) => Some(n.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ");
    let email = match state.value(&FieldPath::Email) {
        Some(FieldValue::Email(e)) => Some(mask_email(e.as_str())),
        _ => None,
    };
    let parts: Vec<String> = (!name.is_empty())
        .then_some(name)
        .into_iter()
        .chain(email)
        .collect();
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// The first character of the local part and the domain: enough to tell customers apart on a
/// list, not the address.
fn mask_email(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".to_owned(),
    }
}

/// Each listed exception's customer label, by customer.
async fn labels(
    state: &AppState,
    items: &[SyncException],
) -> Result<std::collections::HashMap<CustomerId, String>, StoreError> {
    customer_labels(state, items.iter().map(|e| e.customer_id).collect()).await
}

/// The customers' labels (read 8 at a time); none for an erased one or one with neither a
/// name nor an email.
async fn customer_labels(
    state: &AppState,
    mut customers: Vec<CustomerId>,
) -> Result<std::collections::HashMap<CustomerId, String>, StoreError> {
    use futures::{StreamExt as _, TryStreamExt as _};
    customers.sort_unstable();
    customers.dedup();
    futures::stream::iter(customers)
        .map(|c| async move { state.ledger.state(c).await.map(|s| (c, s)) })
        .buffer_unordered(8)
        .try_filter_map(|(c, s)| async move {
            Ok(s.filter(|s| s.erased.is_none())
                .as_ref()
                .and_then(display_label)
                .map(|label| (c, label)))
        })
        .try_collect()
        .await
}

/// The customer's latest decisions: who asked to use what, and the answer.
fn decisions_section(decisions: &[idledger_store::decisions::DecisionEntry]) -> Markup {
    html! {
        section id="decisions" {
            h2 { "Latest decisions" }
            @if decisions.is_empty() {
                p.muted { "No processor has asked about this customer." }
            } @else {
                table.compact {
                    tr { th { "when" } th { "processor" } th { "purpose" } th { "allowed" } th { "denied" } }
                    @for entry in decisions {
                        @let d = &entry.decision;
                        tr {
                            td { (time(d.decided_at)) }
                            td { (d.processor_id) }
                            td { (d.purpose) }
                            td { @for f in d.answers.iter().filter(|f| f.allowed) { code { (f.field) } " " } }
                            td { @for f in d.answers.iter().filter(|f| !f.allowed) {
                                code { (f.field) } " (" (f.reason.map_or("?", |r| r.as_str())) ") "
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// Whom an exception is about, said as what it is: a consumer, a source system, or the other
/// customer of a duplicate pair.
fn subject_label(subject: &ExceptionSubject) -> String {
    match (
        subject.consumer(),
        subject.source(),
        subject.other_customer(),
    ) {
        (Some(c), _, _) => format!("consumer {c}"),
        (None, Some(s), _) => format!("source {s}"),
        (None, None, Some(other)) => format!("customer {}", other.as_uuid()),
        (None, None, None) => subject.to_string(),
    }
}

fn lifecycle(e: &SyncException, label: Option<String>) -> Markup {
    html! {
        section id="lifecycle" {
            dl {
                dt { "Status" } dd id="status" class={ "status-" (e.status.as_str()) } { (e.status.as_str()) }
                dt { "Customer" } dd { a id="customer-link" href={ "/steward/customers/" (e.customer_id) } {
                    @if let Some(label) = &label { (label) " " }
                    span.mono { (e.customer_id) }
                } }
                dt { "Opened" } dd { (time(e.created_at)) " (" (age(e.created_at, Utc::now())) " ago), seen " (e.occurrences) "×, last " (time(e.updated_at)) }
                @if let Some(resolution) = e.resolution {
                    dt { "Resolution" } dd id="resolution" { (resolution.as_str()) }
                }
                @if let Some(by) = &e.resolved_by {
                    dt { "Resolved by" } dd id="resolved-by" { (by) }
                }
                @if let Some(at) = e.resolved_at {
                    dt { "Resolved at" } dd { (time(at)) }
                }
                @if let Some(note) = &e.resolution_note {
                    dt { "Note" } dd id="note" { (note) }
                }
                @if let Some(action) = &e.last_action {
                    dt { "Last action" } dd { code { (action.to_string()) } }
                }
                dt { "Assigned to" } dd id="assigned-to" {
                    @match (&e.assigned_to, e.assigned_at) {
                        (Some(who), Some(at)) => { (who) " since " (time(at)) },
                        (Some(who), None) => { (who) },
                        _ => span.muted { "nobody" },
                    }
                }
            }
        }
    }
}

fn action_forms(e: &SyncException, rule: Option<&FieldRule>) -> Markup {
    let steward_override = rule.map(|r| r.steward_override);
    // A proposal stewards may not accept goes to the one party that may: its system of record.
    let route_to = rule
        .filter(|r| e.kind == ExceptionKind::Proposal && !r.steward_override)
        .map(|r| &r.system_of_record);
    let routed_at = e
        .last_action
        .as_ref()
        .filter(|a| a["action"] == "route")
        .and_then(|a| a["at"].as_str());
    // A duplicate pair is merged from its side-by-side view (`side_by_side`) or dismissed
    // here: no accept, no re-push, no route.
    let about_a_consumer = e.kind.about_consumer();
    let act = format!("/steward/exceptions/{}/act", e.id);
    html! {
        div.act {
            @if about_a_consumer && e.field.is_some() {
                form id="repush" method="post" action=(act) {
                    input type="hidden" name="action" value="repush";
                    label { "Reason (optional)" input type="text" name="reason" size="24"; }
                    button type="submit" { "Re-push the record's value" }
                }
            }
            @if let Some(system_of_record) = route_to {
                form id="route" method="post" action=(act) {
                    input type="hidden" name="action" value="route";
                    label { "Reason (optional)" input type="text" name="reason" size="20"; }
                    button type="submit" { "Send to the system of record (" (system_of_record) ")" }
                    span.muted { "the policy does not let stewards override this field: " (system_of_record) " decides the proposal with its own token" }
                    @if let Some(at) = routed_at {
                        span.muted id="routed" { " · sent " (at) }
                    }
                }
            } @else if e.kind == ExceptionKind::Proposal || e.field.is_some() {
                form id="accept" method="post" action=(act) {
                    input type="hidden" name="action" value="accept";
                    @if e.kind != ExceptionKind::Proposal {
                        label { "Value to take into the record (JSON or text)" input type="text" name="value" size="28"; }
                    }
                    label { "Reason (optional)" input type="text" name="reason" size="20"; }
                    button type="submit" { @if e.kind == ExceptionKind::Proposal { "Accept the proposal" } @else { "Accept this value" } }
                    @match steward_override {
                        Some(false) => span.muted { "the policy does not let stewards override this field" },
                        _ => {},
                    }
                }
            }
            form id="dismiss" method="post" action=(act) {
                input type="hidden" name="action" value="dismiss";
                @if e.kind.about_customers() {
                    label { "Reason (required)" input type="text" name="reason" size="32" placeholder="not the same person"; }
                } @else {
                    label { "Reason (required)" input type="text" name="reason" size="32"; }
                }
                button type="submit" { "Dismiss" }
            }
        }
    }
}

/// A duplicate pair's two records side by side: one row per field and per consent with each
/// record's value (as the record page shows it), source and verification, rows that differ
/// marked; while the exception is open (`exception`), a form to merge either into the other.
fn side_by_side(
    (a, mine): (CustomerId, &CustomerState),
    (b, theirs): (CustomerId, Option<&CustomerState>),
    exception: Option<Uuid>,
) -> Markup {
    let usable = theirs.filter(|t| t.erased.is_none() && t.merged_into.is_none());
    let paths: std::collections::BTreeSet<&FieldPath> = mine
        .fields
        .keys()
        .chain(usable.into_iter().flat_map(|t| t.fields.keys()))
        .collect();
    let purposes: std::collections::BTreeSet<&idledger_domain::ids::Purpose> = mine
        .consents
        .keys()
        .chain(usable.into_iter().flat_map(|t| t.consents.keys()))
        .collect();
    let field_cells = |state: &CustomerState, path: &FieldPath| -> (String, String, String) {
        let rec = state.fields.get(path);
        (
            rec.and_then(|r| r.value.as_ref())
                .map_or_else(|| "—".to_owned(), |v| compact(&v.to_json())),
            rec.and_then(|r| r.source.as_ref())
                .map_or_else(|| "—".to_owned(), ToString::to_string),
            rec.and_then(|r| r.verification.as_ref()).map_or_else(
                || "—".to_owned(),
                |v| format!("by {}, {}", v.verified_by, time(v.verified_at)),
            ),
        )
    };
    let consent_cells = |state: &CustomerState,
                         purpose: &idledger_domain::ids::Purpose|
     -> (String, String, String) {
        match state.consents.get(purpose) {
            Some(c) => (
                format!(
                    "{} ({})",
                    if c.state == ConsentState::Granted {
                        "granted"
                    } else {
                        "withdrawn"
                    },
                    c.terms.basis
                ),
                c.provenance.source.to_string(),
                "—".to_owned(),
            ),
            None => ("—".to_owned(), "—".to_owned(), "—".to_owned()),
        }
    };
    let heading = |id: CustomerId, state: Option<&CustomerState>| {
        html! {
            a href={ "/steward/customers/" (id) } {
                @if let Some(label) = state.and_then(display_label) { (label) " " }
                span.mono { (id) }
            }
        }
    };
    let row = |name: String,
               left: (String, String, String),
               right: Option<(String, String, String)>| {
        let differs = right.as_ref().is_some_and(|r| r.0 != left.0);
        html! {
            tr class=[differs.then_some("differs")] data-row=(name) {
                td { code { (name) } }
                td.wrap.a-value { (left.0) } td.muted { (left.1) } td.muted { (left.2) }
                @match right {
                    Some(r) => { td.wrap.b-value { (r.0) } td.muted { (r.1) } td.muted { (r.2) } },
                    None => { td.b-value {} td {} td {} },
                }
                td { @if differs { "≠" } }
            }
        }
    };
    html! {
        section id="side-by-side" {
            h2 { "The two records" }
            table {
                thead {
                    tr { th {} th colspan="3" id="record-a" { "A: " (heading(a, Some(mine))) } th colspan="3" id="record-b" { "B: " (heading(b, theirs)) } th {} }
                    tr { th { "field" } th { "value" } th { "source" } th { "verified" } th { "value" } th { "source" } th { "verified" } th { "differs" } }
                }
                tbody {
                    @for path in &paths {
                        (row(path.to_string(), field_cells(mine, path), usable.map(|t| field_cells(t, path))))
                    }
                    @for purpose in &purposes {
                        (row(format!("consent.{purpose}"), consent_cells(mine, purpose), usable.map(|t| consent_cells(t, purpose))))
                    }
                }
            }
            @match theirs {
                None => p.msg.error { "B has no record." },
                Some(t) if t.erased.is_some() => p.msg.error { "B's record was erased: there is nothing to compare or merge." },
                Some(t) => { @if let Some(link) = &t.merged_into {
                    p.msg.error { "B is already merged into " a href={ "/steward/customers/" (link.customer) } { span.mono { (link.customer) } } "." }
                } },
            }
            @if let (Some(exception), Some(_)) = (exception, usable) {
                div.act {
                    (merge_form("merge-b-into-a", "Merge B into A", a, b, exception))
                    (merge_form("merge-a-into-b", "Merge A into B", b, a, exception))
                }
            }
        }
    }
}

/// A form that merges `absorbed` into `survivor`; a refusal comes back to `exception`'s page.
fn merge_form(
    id: &str,
    label: &str,
    survivor: CustomerId,
    absorbed: CustomerId,
    exception: Uuid,
) -> Markup {
    html! {
        form id=(id) method="post" action={ "/steward/customers/" (survivor) "/merge" } {
            input type="hidden" name="absorbed" value=(absorbed);
            input type="hidden" name="exception" value=(exception);
            label { "Reason (required)" input type="text" name="reason" size="28" required placeholder="same person: documents checked"; }
            button type="submit" { (label) }
        }
    }
}

/// Open exceptions per kind: how many, past their SLA, nobody's, and by age. Each kind
/// links to its list.
fn counts_table(counts: &[KindCount]) -> Markup {
    html! {
        @if !counts.is_empty() {
            table id="counts" {
                thead { tr {
                    th { "Open" } th { "Count" } th { "Overdue" } th { "Unassigned" }
                    th { "< 1 h" } th { "1 h – 1 d" } th { "1 – 7 d" } th { "> 7 d" }
                } }
                tbody {
                    @for c in counts {
                        tr data-kind=(c.kind) {
                            td { a href={ "/steward?kind=" (c.kind) } { (c.kind) } }
                            td.count { (c.open) }
                            td.overdue { @if c.overdue > 0 { a href={ "/steward?kind=" (c.kind) "&overdue=true" } { (c.overdue) } } @else { "0" } }
                            td.unassigned { (c.unassigned) }
                            td { (c.by_age.under_1h) } td { (c.by_age.under_1d) }
                            td { (c.by_age.under_7d) } td { (c.by_age.older) }
                        }
                    }
                }
            }
        }
    }
}

fn assign_form(e: &SyncException) -> Markup {
    let action = format!("/steward/exceptions/{}/assign", e.id);
    html! {
        div.act {
            form id="assign-me" method="post" action=(action) {
                input type="hidden" name="assignee" value="me";
                button type="submit" { "Assign to me" }
            }
            form id="assign" method="post" action=(action) {
                label { "Steward" input type="text" name="assignee" size="16" placeholder="label"; }
                button type="submit" { "Assign" }
            }
            @if e.assigned_to.is_some() {
                form id="unassign" method="post" action=(action) {
                    input type="hidden" name="assignee" value="";
                    button type="submit" { "Unassign" }
                }
            }
        }
    }
}

/// A pending four-eyes approval: who asked, and (for any other steward) approve or reject.
fn approval_section(approval: &Approval, token: &TokenRecord) -> Markup {
    let mine = approval.requested_by == format!("steward:{}", token.label);
    let action = format!("/steward/approvals/{}/decide", approval.id);
    html! {
        section id="approval" data-approval=(approval.id) {
            h2 { "Waiting for a second steward" }
            p { (approval.requested_by) " asked to change " code { (approval.field) } " on " (time(approval.requested_at))
                ". The policy needs a second steward for this field (four eyes); the value stays sealed until then." }
            @if mine {
                p.muted id="approval-mine" { "You asked for this change: another steward must approve or reject it." }
            } @else {
                div.act {
                    form id="approve" method="post" action=(action) {
                        input type="hidden" name="decision" value="approve";
                        label { "Reason (optional)" input type="text" name="reason" size="24"; }
                        button type="submit" { "Approve" }
                    }
                    form id="reject" method="post" action=(action) {
                        input type="hidden" name="decision" value="reject";
                        label { "Reason (optional)" input type="text" name="reason" size="24"; }
                        button type="submit" { "Reject" }
                    }
                }
            }
        }
    }
}

async fn assign_one(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let id = parse_id(&raw)?;
    let form = pairs(&body);
    let me = steward::steward_of(&token)?;
    let to = crate::workspace::assign_to(one(&form, "assignee"));
    match state.app.assign(&me, id, &to).await.map_err(ApiError::from) {
        Ok(_) => Ok(Redirect::to(&format!("/steward/exceptions/{id}?done=assign")).into_response()),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(e.into()),
        Err(e) => {
            let message = readable(&e);
            exception_page(
                &state,
                &token,
                id,
                shown_status(&e),
                Some(Notice::Failed(message)),
            )
            .await
        }
    }
}

async fn decide_approval(
    State(state): State<AppState>,
    Steward(token): Steward,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, PageError> {
    let id = Uuid::parse_str(&raw).map_err(|_| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            format!("There is no approval {raw}."),
        )
    })?;
    let form = pairs(&body);
    let me = steward::steward_of(&token)?;
    let approval = state
        .app
        .approval(id)
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::from(idledger_app::WorkflowError::UnknownApproval(id)))?;
    let reason = one(&form, "reason");
    let (result, done) = match one(&form, "decision") {
        Some("approve") => (
            crate::workspace::approve_as(&state, &me, id, reason)
                .await
                .map(|_| ()),
            "approve",
        ),
        Some("reject") => (
            state
                .app
                .reject_approval(&me, id, reason)
                .await
                .map(|_| ())
                .map_err(ApiError::from),
            "reject",
        ),
        _ => (
            Err(ApiError::unprocessable(
                "invalid_body",
                "Choose approve or reject.",
            )),
            "",
        ),
    };
    let exception = approval.exception_id;
    match result {
        Ok(()) => Ok(
            Redirect::to(&format!("/steward/exceptions/{exception}?done={done}")).into_response(),
        ),
        Err(e) => {
            let message = readable(&e);
            exception_page(
                &state,
                &token,
                exception,
                shown_status(&e),
                Some(Notice::Failed(message)),
            )
            .await
        }
    }
}

/// Pending four-eyes approvals, oldest first.
async fn approvals_page(
    State(state): State<AppState>,
    Steward(token): Steward,
) -> Result<Response, PageError> {
    let approvals = state
        .app
        .approvals(Some(ApprovalStatus::Pending), None, None, PAGE_SIZE as u32)
        .await
        .map_err(ApiError::from)?;
    let now = Utc::now();
    let body = html! {
        h1 { "Waiting for a second steward" }
        @if approvals.is_empty() {
            p.muted id="empty" { "No change is waiting for approval." }
        } @else {
            table id="approvals" {
                thead { tr { th { "Field" } th { "Customer" } th { "Asked by" } th { "Waiting" } th { "" } } }
                tbody {
                    @for a in &approvals {
                        tr data-id=(a.id) {
                            td { code { (a.field) } }
                            td.mono { a href={ "/steward/customers/" (a.customer_id) } { (a.customer_id) } }
                            td { (a.requested_by) }
                            td title=(time(a.requested_at)) { (age(a.requested_at, now)) }
                            td { a href={ "/steward/exceptions/" (a.exception_id) } { "open the exception" } }
                        }
                    }
                }
            }
        }
    };
    Ok(page(
        StatusCode::OK,
        layout("Approvals", Some(&token), body),
    ))
}

/// What a steward did (`?steward=<label>`; the signed-in steward by default), newest last.
async fn activity_page(
    State(state): State<AppState>,
    Steward(token): Steward,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let query = pairs(query.unwrap_or_default().as_bytes());
    let label = one(&query, "steward").unwrap_or(&token.label).to_owned();
    let mut params: std::collections::HashMap<String, String> = query.into_iter().collect();
    params.insert("steward".to_owned(), label.clone());
    let filter = crate::workspace::activity_filter(&params)?;
    let activity = state
        .app
        .activity(&filter, crate::workspace::ACTIVITY_PAGE)
        .await
        .map_err(ApiError::from)?;
    let next = (activity.len() == crate::workspace::ACTIVITY_PAGE as usize)
        .then(|| activity.last().map(|a| a.id))
        .flatten();
    let body = html! {
        h1 { "Activity of steward:" (label) }
        form.filters method="get" action="/steward/activity" {
            label { "Steward" input type="text" name="steward" value=(label) size="20"; }
            button type="submit" { "Show" }
        }
        @if activity.is_empty() {
            p.muted id="empty" { "Nothing recorded." }
        } @else {
            table id="activity" {
                thead { tr { th { "When" } th { "Action" } th { "Customer" } th { "Field" } th { "Detail" } th { "Why" } th { "" } } }
                tbody {
                    @for a in &activity {
                        tr data-action=(a.action) {
                            td.nowrap { (time(a.at)) }
                            td { (a.action) }
                            td.mono { a href={ "/steward/customers/" (a.customer_id) } { (a.customer_id) } }
                            td { (a.field.as_deref().unwrap_or("—")) }
                            td.wrap { (a.detail.as_deref().unwrap_or("")) }
                            td.wrap { (a.reason.as_deref().unwrap_or("")) }
                            td { @if let Some(id) = a.exception_id { a href={ "/steward/exceptions/" (id) } { "exception" } } }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            p { a id="next" href={ "/steward/activity?steward=" (label) "&after=" (next) } { "Next page →" } }
        }
    };
    Ok(page(StatusCode::OK, layout("Activity", Some(&token), body)))
}

fn record_section(
    e: &SyncException,
    field: Option<&FieldPath>,
    state: &CustomerState,
    hash_key: Option<&HashKey>,
) -> Markup {
    let record = field.and_then(|f| state.field(f));
    let held = field.zip(hash_key).and_then(|(f, key)| state.held(f, key));
    html! {
        section id="record" {
            h2 { "The record" }
            @if let Some(field) = field {
                dl {
                    dt { "Field" } dd { code { (field) } }
                    dt { "Value" } dd id="record-value" { @match record.and_then(|r| r.value.as_ref()) {
                        Some(v) => code { (compact(&v.to_json())) },
                        None => span.muted { "no value" },
                    } }
                    dt { "Version" } dd { (held.as_ref().map_or_else(|| record.map_or(0, |r| r.value_version), |h| h.version)) }
                    dt { "Source" } dd { (record.and_then(|r| r.source.as_ref()).map(ToString::to_string).unwrap_or_else(|| "—".to_owned())) }
                    dt { "Value hash" } dd.mono id="record-hash" { (held.as_ref().and_then(|h| h.value_hash.as_deref()).unwrap_or("—")) }
                    @if let Some(at) = record.and_then(|r| r.recorded_at) {
                        dt { "Recorded" } dd { (time(at)) }
                    }
                }
                @let proposals: Vec<_> = state.proposals.iter().filter(|(_, p)| &p.field == field).collect();
                @if !proposals.is_empty() {
                    h2 { "Proposals waiting" }
                    ul { @for (id, p) in proposals {
                        li { code { (compact(&p.value.to_json())) } " from " (p.proposed_by) " " span.muted.mono { (id) } }
                    } }
                }
            } @else {
                p.muted { "This exception concerns customer " (e.customer_id) " as a whole." }
            }
            h2 { "Whole record (stream version " (state.stream_version) ")" }
            table.compact {
                @for (path, rec) in &state.fields {
                    tr class=[(Some(path) == field).then_some("mine")] {
                        td { code { (path) } }
                        td.wrap { @match &rec.value { Some(v) => (compact(&v.to_json())), None => span.muted { "—" } } }
                        td.muted { "v" (rec.version) }
                        td.muted { (rec.source.as_ref().map(ToString::to_string).unwrap_or_default()) }
                    }
                }
                @for (purpose, consent) in &state.consents {
                    tr { td { code { "consent." (purpose) } } td { (if consent.state == ConsentState::Granted { "granted" } else { "withdrawn" }) } td.muted { "v" (consent.version) } td {} }
                }
            }
        }
    }
}

fn consumer_section(
    e: &SyncException,
    hash_key: Option<&HashKey>,
    field: Option<&FieldPath>,
    state: &CustomerState,
    held: &[ConsumerFieldState],
) -> Markup {
    let is_consumer = hash_key.is_some();
    let record_hash = field
        .zip(hash_key)
        .and_then(|(f, key)| state.held(f, key))
        .and_then(|h| h.value_hash);
    html! {
        section id="consumer" {
            h2 { "What " (e.subject) " holds" }
            @if !is_consumer {
                p.muted { (e.subject) " is a source system, not a consumer: it is not sent the record." }
            } @else if held.is_empty() {
                p.muted id="consumer-none" { "The consumer has not acknowledged this field for this customer." }
            }
            @for s in held {
                dl {
                    dt { "Version" } dd id="consumer-version" { (s.version) }
                    dt { "Value hash" } dd.mono id="consumer-hash" { (s.value_hash.as_deref().unwrap_or("— (holds no value)")) }
                    dt { "Compared" } dd {
                        @if s.value_hash == record_hash {
                            span.same { "same value as the record" }
                        } @else {
                            span.differs id="differs" { "differs from the record" }
                        }
                    }
                    dt { "Status" } dd { (s.status.as_str()) }
                    @if let Some(reason) = &s.reason {
                        dt { "Reason" } dd { (reason) }
                    }
                    dt { "Acknowledged" } dd { (time(s.acked_at)) }
                    dt { "Event" } dd.mono { (s.event_id) }
                }
            }
        }
    }
}

fn history_section(e: &SyncException, history: &[RecordedEvent]) -> Markup {
    html! {
        section id="history" {
            h2 { "Field history" }
            @if history.is_empty() {
                p.muted { "No events for this field." }
            } @else {
                table {
                    thead { tr { th title="position in the customer's stream" { "#" } th { "Event" } th { "Source / actor" } th { "When (UTC)" } th { "What" } } }
                    tbody {
                        @for r in history.iter().rev() {
                            @let event = &r.envelope.event;
                            @let mine = matches!(&event.payload, EventPayload::StewardActed { exception_id, .. } if *exception_id == e.id);
                            tr class=[mine.then_some("mine")] data-type=(event.payload.type_name()) {
                                td { (r.envelope.stream_version) }
                                td { code { (event.payload.type_name()) } }
                                td.wrap { (event.provenance.source) br; span.muted { (event.provenance.actor) } }
                                td.nowrap { (r.recorded_at.format("%Y-%m-%d")) br; (r.recorded_at.format("%H:%M:%S")) }
                                td.wrap { (describe(&event.payload)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// One line about an event, for the history table.
fn describe(payload: &EventPayload) -> String {
    match payload {
        p if p.value().is_some() => p.value().map(|v| compact(&v.to_json())).unwrap_or_default(),
        EventPayload::StewardActed {
            action,
            consumer_id,
            reason,
            ..
        } => {
            let mut line = format!("{} for {consumer_id}", action.as_str());
            if let Some(reason) = reason {
                line.push_str(": ");
                line.push_str(reason);
            }
            line
        }
        EventPayload::ProposalRejected { reason, .. } => format!("rejected: {reason}"),
        other => serde_json::to_value(other)
            .ok()
            .and_then(|v| {
                v.as_object().map(|m| {
                    m.iter()
                        .filter(|(k, _)| k.as_str() != "type" && k.as_str() != "field")
                        .map(|(k, v)| format!("{k}: {}", compact(v)))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            })
            .unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------------------
// Bulk
// ---------------------------------------------------------------------------------------

async fn bulk(State(state): State<AppState>, Steward(token): Steward, body: Bytes) -> Response {
    let form = pairs(&body);
    let request = match action_request(&form) {
        Ok(r) if r.action == StewardAction::Accept => {
            return bulk_refused(&token, "Accept needs a value per exception; open each one.");
        }
        Ok(r) => r,
        Err(message) => return bulk_refused(&token, &message),
    };
    let ids: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "id")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.is_empty() {
        return bulk_refused(&token, "Select at least one exception.");
    }
    let mut results: Vec<(String, Result<ActionResult, String>)> = Vec::with_capacity(ids.len());
    for raw in ids {
        let result = match Uuid::parse_str(raw) {
            Ok(id) => steward::act(&state, &token, id, &request)
                .await
                .map_err(|e| readable(&e)),
            Err(_) => Err("not an exception id".to_owned()),
        };
        results.push((raw.to_owned(), result));
    }
    let failed = results.iter().filter(|(_, r)| r.is_err()).count();
    let body = html! {
        p { a href="/steward" { "← all exceptions" } }
        h1 { (request.action.as_str()) ": " (results.len() - failed) " done, " (failed) " refused" }
        table id="results" {
            thead { tr { th { "Exception" } th { "Kind" } th { "Result" } } }
            tbody {
                @for (id, result) in &results {
                    tr data-id=(id) {
                        td.mono { a href={ "/steward/exceptions/" (id) } { (id) } }
                        @match result {
                            Ok(done) => {
                                td { (done.exception.kind) }
                                td.ok { "now " (done.exception.status.as_str()) }
                            },
                            Err(message) => {
                                td {}
                                td.error { (message) }
                            },
                        }
                    }
                }
            }
        }
    };
    page(StatusCode::OK, layout("Bulk action", Some(&token), body))
}

fn bulk_refused(token: &TokenRecord, message: &str) -> Response {
    let body = html! {
        p { a href="/steward" { "← all exceptions" } }
        p.msg.error role="alert" { (message) }
    };
    page(
        StatusCode::UNPROCESSABLE_ENTITY,
        layout("Bulk action", Some(token), body),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_must_name_this_host() {
        let host = HeaderValue::from_static("127.0.0.1:8080");
        let check = |o: &'static str| origin_is_host(&HeaderValue::from_static(o), Some(&host));
        assert!(check("http://127.0.0.1:8080"));
        assert!(check("https://127.0.0.1:8080"));
        assert!(!check("http://evil.example"));
        assert!(!check("http://127.0.0.1:8081"));
        assert!(!check("null"));
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; idl_steward=idl_abc; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("idl_abc"));
        headers.insert(header::COOKIE, HeaderValue::from_static("idl_steward="));
        assert_eq!(cookie(&headers, COOKIE), None);
    }
}
