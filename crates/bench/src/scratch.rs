//! Scratch PostgreSQL databases, created beside the one the operator named and dropped at the
//! end, so a run never touches real data and leaves nothing behind.

use std::sync::Mutex;

use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::error::{BenchError, Step as _};

#[derive(Debug)]
pub struct Scratch {
    admin_url: String,
    admin: PgPool,
    /// Unique per run, so that two runs on one server do not collide.
    prefix: String,
    created: Mutex<Vec<String>>,
}

impl Scratch {
    pub async fn new(admin_url: &str) -> Result<Self, BenchError> {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(admin_url)
            .await
            .step(format!(
                "cannot connect to PostgreSQL at {}; the benchmark needs a server where this \
                 user may CREATE DATABASE",
                redact(admin_url)
            ))?;
        let unique = uuid::Uuid::now_v7().simple().to_string();
        Ok(Self {
            admin_url: admin_url.to_owned(),
            admin,
            prefix: format!("idledger_bench_{}", &unique[unique.len() - 10..]),
            created: Mutex::new(Vec::new()),
        })
    }

    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// The name of the database [`create`](Self::create) makes for `phase`.
    pub fn database_name(&self, phase: &str) -> String {
        format!("{}_{phase}", self.prefix)
    }

    /// `CHECKPOINT` of the server: what earlier phases left in its buffers is written out now
    /// rather than during the next phase. `Err` with why when this user may not (it needs
    /// superuser or `pg_checkpoint`).
    pub async fn checkpoint(&self) -> Result<(), String> {
        sqlx::raw_sql("CHECKPOINT")
            .execute(&self.admin)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Creates an empty database for one phase and returns its URL.
    pub async fn create(&self, phase: &str) -> Result<String, BenchError> {
        let name = self.database_name(phase);
        // The name is ours (a fixed prefix, hex and a phase name): nothing to quote.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&self.admin)
            .await
            .step(format!("cannot create the scratch database {name}"))?;
        if let Ok(mut created) = self.created.lock() {
            created.push(name.clone());
        }
        with_database(&self.admin_url, &name)
    }

    /// Drops every scratch database (closing whatever connections are left on them).
    pub async fn drop_all(&self) -> Result<(), BenchError> {
        let names = self
            .created
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        let mut failed = None;
        for name in names {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&self.admin)
                .await
            {
                failed = Some(BenchError::Failed(format!(
                    "cannot drop the scratch database {name}: {e}"
                )));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

/// The URL with its database replaced by `name` (query parameters kept).
pub fn with_database(url: &str, name: &str) -> Result<String, BenchError> {
    let bad = || BenchError::Failed(format!("'{}' is not a PostgreSQL URL", redact(url)));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if scheme != "postgres" && scheme != "postgresql" {
        return Err(bad());
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or_default();
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// A URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match url.split_once("://").and_then(|(scheme, rest)| {
        rest.split_once('@')
            .map(|(creds, host)| (scheme, creds, host))
    }) {
        Some((scheme, creds, host)) if creds.contains(':') => {
            let user = creds.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    #[track_caller]
    fn check(url: &str, expect: &str) {
        assert_eq!(with_database(url, "x").unwrap(), expect);
    }

    #[test]
    fn the_database_is_replaced_and_the_rest_kept() {
        check("postgres://u@h:5432/postgres", "postgres://u@h:5432/x");
        check("postgres://u@h", "postgres://u@h/x");
        check(
            "postgresql://u:p@h/db?sslmode=disable",
            "postgresql://u:p@h/x?sslmode=disable",
        );
        assert!(with_database("sqlite://a.db", "x").is_err());
        assert!(with_database("nonsense", "x").is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
