//! PostgreSQL over TLS: the database URL's `sslmode` and `sslrootcert` are honoured, against a
//! private server with TLS on (a CA of its own) and one without TLS.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use idledger_store::{Store, StoreError};
use idledger_testkit::PrivatePostgres;
use sqlx::Connection as _;

/// Each connection attempt here is local; a hang is a failure, not a wait.
const BOUND: Duration = Duration::from_secs(20);

/// `url` with `params` added to its query.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

async fn open(url: &str) -> Result<Store, StoreError> {
    tokio::time::timeout(BOUND, Store::open(url))
        .await
        .unwrap_or_else(|_| panic!("opening {url} took over {BOUND:?}"))
}

/// How many of the connections named `application` (a store's pool) are encrypted, and how
/// many there are. Asked over a connection of its own without TLS.
async fn connections_encrypted(server_url: &str, application: &str) -> (i64, i64) {
    let mut probe = sqlx::PgConnection::connect(&with_params(server_url, "sslmode=disable"))
        .await
        .unwrap();
    let (own_ssl,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut probe)
            .await
            .unwrap();
    assert!(!own_ssl, "the probe asked for no TLS");
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(application)
    .fetch_one(&mut probe)
    .await
    .unwrap()
}

#[tokio::test]
async fn require_and_prefer_encrypt_and_disable_and_the_loopback_default_do_not() {
    let pg = PrivatePostgres::start_tls();

    let url = with_params(&pg.url(), "sslmode=require&application_name=require");
    let store = open(&url).await.unwrap();
    let (encrypted, all) = connections_encrypted(&pg.url(), "require").await;
    assert!(all >= 1, "the store holds a connection");
    assert_eq!(
        encrypted, all,
        "sslmode=require: every connection is encrypted"
    );
    drop(store);

    // prefer takes TLS when the server offers it.
    let store = open(&with_params(
        &pg.url(),
        "sslmode=prefer&application_name=prefer",
    ))
    .await
    .unwrap();
    let (encrypted, all) = connections_encrypted(&pg.url(), "prefer").await;
    assert!(all >= 1);
    assert_eq!(encrypted, all, "prefer takes the TLS the server offers");
    drop(store);

    // No sslmode, on a loopback address: no TLS (it protects nothing there and costs most of
    // the throughput); elsewhere the default is libpq's prefer (`pg_connect_options`' unit
    // tests). PGSSLMODE, when set, is the default's default, as for libpq.
    if std::env::var_os("PGSSLMODE").is_none() {
        let store = open(&with_params(&pg.url(), "application_name=default"))
            .await
            .unwrap();
        let (encrypted, all) = connections_encrypted(&pg.url(), "default").await;
        assert!(all >= 1);
        assert_eq!(encrypted, 0, "the default on loopback is plain");
        drop(store);
    }

    // The control: the same check sees a connection without TLS.
    let url = with_params(&pg.url(), "sslmode=disable&application_name=disable");
    let _store = open(&url).await.unwrap();
    let (encrypted, all) = connections_encrypted(&pg.url(), "disable").await;
    assert!(all >= 1);
    assert_eq!(encrypted, 0, "sslmode=disable: no connection is encrypted");
}

#[tokio::test]
async fn verify_full_checks_the_ca_and_the_host_name() {
    let pg = PrivatePostgres::start_tls();
    let ca = pg.ca_cert();

    // The certificate names `localhost`: verify-full connects to that name, verify-ca (which
    // checks the CA, not the name) to 127.0.0.1 too.
    for (mode, host) in [("verify-full", "localhost"), ("verify-ca", "127.0.0.1")] {
        let url = with_params(
            &pg.url().replacen("127.0.0.1", host, 1),
            &format!(
                "sslmode={mode}&sslrootcert={}&application_name={mode}",
                ca.display()
            ),
        );
        let store = open(&url)
            .await
            .unwrap_or_else(|e| panic!("{mode} to {host} with the server's CA: {e}"));
        let (encrypted, all) = connections_encrypted(&pg.url(), mode).await;
        assert!(all >= 1);
        assert_eq!(encrypted, all, "{mode}: every connection is encrypted");
        drop(store);
    }

    // The right CA, but a host name the certificate does not hold.
    let url = with_params(
        &pg.url(),
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let error = open(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("the TLS handshake failed"), "{message}");
    assert!(
        message.contains("not valid for name \"127.0.0.1\""),
        "{message}"
    );

    // A CA that did not sign the server's certificate: refused, and said so.
    let url = with_params(
        &pg.url().replacen("127.0.0.1", "localhost", 1),
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pg.other_ca_cert().display()
        ),
    );
    let error = open(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("over TLS (sslmode=verify-full)"),
        "{message}"
    );
    assert!(message.contains("the TLS handshake failed"), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(
        message.contains("postgres://postgres@localhost:"),
        "names the database: {message}"
    );
    assert!(
        message.contains("sslrootcert"),
        "says what to check: {message}"
    );
    // A connection without verification still works: the refusal was the certificate's.
    open(&with_params(&pg.url(), "sslmode=require"))
        .await
        .unwrap();

    // A root certificate file that is not there.
    let url = with_params(
        &pg.url(),
        "sslmode=verify-full&sslrootcert=/nonexistent/idledger-ca.pem",
    );
    let error = open(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("cannot read a certificate or key file"),
        "{error}"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_is_refused() {
    // A server of our own: the machine's may well have TLS on (Debian turns it on). A
    // password in the URL must not reach the error.
    let pg = PrivatePostgres::start();
    let plain = open(&with_params(&pg.url(), "sslmode=prefer"))
        .await
        .unwrap();
    drop(plain);
    let url = with_params(
        &pg.url().replacen("postgres@", "postgres:s3cret-pw@", 1),
        "sslmode=require",
    );
    assert!(url.contains("s3cret-pw"), "{url}");
    let error = open(&url).await.unwrap_err();
    assert!(matches!(error, StoreError::Config(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains("TLS was required (sslmode=require)")
            && message.contains("does not offer it"),
        "{message}"
    );
    assert!(
        message.contains("postgres://postgres@127.0.0.1:"),
        "names the database: {message}"
    );
    assert!(!message.contains("s3cret-pw"), "{message}");
    assert!(!format!("{error:?}").contains("s3cret-pw"), "{error:?}");
}
