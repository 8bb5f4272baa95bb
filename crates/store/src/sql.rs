//! SQL written once for both engines.
//!
//! Statements use `$n` parameters, which PostgreSQL and SQLite both accept, and are run through
//! [`Db`] (a pool of either engine) or [`Tx`] (a transaction on one). What the engines store
//! differently is hidden here, so the statements above this module need not know:
//!
//! - **Times**: `TIMESTAMPTZ` on PostgreSQL, integer microseconds since the epoch on SQLite.
//!   A `DateTime<Utc>` binds as either ([`Arg::Time`]) and reads back from either
//!   ([`Column`]).
//!   A column the database's clock fills in (`idempotency.created_at`: `unixepoch()`, seconds,
//!   on SQLite) is compared with [`Arg::DbClockTime`].
//! - **Write transactions**: SQLite's take the write lock up front (`BEGIN IMMEDIATE`), so two
//!   writers never deadlock upgrading a read lock; PostgreSQL's are plain `BEGIN`.
//! - **Lists and rows of values**: a list ([`Sql::push_in`]) or the rows of an `INSERT`
//!   ([`Sql::push_values`]) bind as one array per column on PostgreSQL (`= ANY($n)`,
//!   `SELECT * FROM UNNEST($n, …)`), so that the statement's text, and with it the prepared
//!   statement and its plan, is the same whatever the number of items; SQLite, which has no
//!   arrays, gets `IN ($1, $2, …)` and `VALUES (…), (…)`, chunked to its limit on bound
//!   parameters ([`Db::max_params`]).
//!
//! What really differs (the append lock, PostgreSQL's array-bound bulk append) stays in the
//! engine modules, reached through [`Db::pg`].

use std::future::Future;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Postgres, Row as _, Sqlite, Transaction};
use uuid::Uuid;

use crate::error::StoreError;
use crate::model::{from_micros, micros};

/// The advisory lock that serialises appends on PostgreSQL ("idledger" in ASCII).
pub const LOG_LOCK: i64 = 0x6964_6c65_6467_6572;

/// A connection pool of either engine.
#[derive(Debug, Clone)]
pub enum Db {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Which engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

impl Engine {
    /// "postgres" or "sqlite".
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// Whether a commit waits to be on disk (PostgreSQL's `synchronous_commit`).
#[derive(Debug, Clone, Copy)]
enum Flush {
    Wait,
    Later,
}

impl Db {
    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// The PostgreSQL pool, for the few statements only PostgreSQL has.
    pub fn pg(&self) -> Option<&PgPool> {
        match self {
            Self::Postgres(pool) => Some(pool),
            Self::Sqlite(_) => None,
        }
    }

    /// How many parameters one statement may bind (PostgreSQL: 65,535; SQLite's default
    /// `SQLITE_MAX_VARIABLE_NUMBER`: 32,766), with room to spare.
    pub fn max_params(&self) -> usize {
        match self {
            Self::Postgres(_) => 60_000,
            Self::Sqlite(_) => 30_000,
        }
    }

    /// How many rows of `columns` parameters fit one statement.
    pub fn rows_per_statement(&self, columns: usize) -> usize {
        (self.max_params() / columns.max(1)).max(1)
    }

    /// Runs statements that write as one, all or none. On PostgreSQL they are one statement
    /// (the others as `WITH` parts of the last): one round trip, no `BEGIN` or `COMMIT`. On
    /// SQLite, one transaction. The parts must write different rows and not read what
    /// another writes (PostgreSQL runs them on one snapshot, in no set order), must not have
    /// a `WITH` of their own, and bind every value (`$n` is renumbered wherever it appears).
    pub async fn write_together(&self, parts: Vec<Sql>) -> Result<(), StoreError> {
        self.write_parts(parts, Flush::Wait).await
    }

    /// [`Db::write_together`], but PostgreSQL does not wait for the commit to be on disk
    /// (`synchronous_commit = off` for that one statement): for rows a later, flushed
    /// commit makes durable with it.
    pub async fn write_together_unflushed(&self, parts: Vec<Sql>) -> Result<(), StoreError> {
        self.write_parts(parts, Flush::Later).await
    }

    async fn write_parts(&self, parts: Vec<Sql>, flush: Flush) -> Result<(), StoreError> {
        if parts.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(_) => {
                let mut parts = parts.into_iter();
                // The main statement: the last part, or the setting for this one commit
                // (data-modifying `WITH` parts run whether or not it reads them).
                let last = match flush {
                    Flush::Wait => parts.next_back(),
                    Flush::Later => {
                        Some(sql("SELECT set_config('synchronous_commit', 'off', true)"))
                    }
                };
                let mut q = Sql::default();
                for (i, part) in parts.enumerate() {
                    q.push(if i == 0 { "WITH " } else { ", " })
                        .push(&format!("w{i} AS ("))
                        .push_sql(part)
                        .push(") ");
                }
                if let Some(last) = last {
                    q.push_sql(last);
                }
                q.execute(self).await?;
            }
            Self::Sqlite(_) => {
                let mut tx = self.begin().await?;
                for part in parts {
                    part.execute(&mut tx).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Starts a transaction that will write (on SQLite, holding the write lock from the start).
    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Postgres(pool) => Tx::Postgres(pool.begin().await?),
            Self::Sqlite(pool) => Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// SQLite: copies the write-ahead log into the database file and truncates it, so that no
    /// older image of a page (one holding rows deleted since, e.g. an erased customer's)
    /// stays in the WAL. `Ok(false)` when readers or a writer kept it from completing within
    /// a short wait; PostgreSQL has nothing to do here (`Ok(true)`).
    pub async fn truncate_wal(&self) -> Result<bool, StoreError> {
        use sqlx::Connection as _;
        let Self::Sqlite(pool) = self else {
            return Ok(true);
        };
        let mut conn = pool.acquire().await?;
        // Not the pool's 30 s: the checkpoint holds the write lock while it waits for readers.
        sqlx::query("PRAGMA busy_timeout = 200")
            .execute(&mut *conn)
            .await?;
        let checkpoint = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await;
        // Closed rather than returned to the pool with a busy timeout unlike its siblings'.
        if let Err(e) = conn.detach().close().await {
            tracing::debug!(error = %e, "closing the checkpoint's connection failed");
        }
        match checkpoint {
            // The first column is 1 when the checkpoint could not complete.
            Ok(row) => Ok(row.try_get::<i64, _>(0)? == 0),
            Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| is_busy(&c)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// SQLite: copies the write-ahead log's committed frames into the database file, waiting
    /// for no reader or writer (`PASSIVE`), so that the writer's commits do not run the
    /// checkpoint themselves. PostgreSQL has nothing to do here.
    pub async fn checkpoint_passive(&self) -> Result<(), StoreError> {
        if let Self::Sqlite(pool) = self {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(pool)
                .await?;
        }
        Ok(())
    }

    /// Starts a transaction that holds off every append until it ends: the append lock on
    /// PostgreSQL, the write lock on SQLite.
    pub async fn begin_exclusive(&self) -> Result<Tx, StoreError> {
        Ok(match self {
            Self::Postgres(pool) => Tx::Postgres(begin_appending(pool).await?),
            Self::Sqlite(_) => self.begin().await?,
        })
    }
}

/// A PostgreSQL transaction holding the append lock: `BEGIN` and the lock in one round trip
/// (a simple query of two statements), as every batch of appends starts.
pub(crate) async fn begin_appending(
    pool: &PgPool,
) -> Result<Transaction<'static, Postgres>, StoreError> {
    static BEGIN: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("BEGIN; SELECT pg_advisory_xact_lock({LOG_LOCK})"));
    Ok(pool.begin_with(AssertSqlSafe(BEGIN.as_str())).await?)
}

/// SQLITE_BUSY or SQLITE_LOCKED, plain or extended (the low byte is the primary code).
fn is_busy(code: &str) -> bool {
    code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// A transaction on either engine. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub enum Tx {
    Postgres(Transaction<'static, Postgres>),
    Sqlite(Transaction<'static, Sqlite>),
}

impl Tx {
    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    pub async fn commit(self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

/// A value bound to a parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Int4(Option<i32>),
    Uuid(Option<Uuid>),
    Bytes(Option<Vec<u8>>),
    /// `TIMESTAMPTZ` on PostgreSQL, microseconds on SQLite.
    Time(Option<DateTime<Utc>>),
    /// A time compared with a column the database's own clock filled in by default:
    /// `TIMESTAMPTZ` (`now()`) on PostgreSQL, whole seconds (`unixepoch()`) on SQLite — only
    /// `idempotency.created_at`. Seconds round down, so `column < $n` never takes a row from
    /// the second of the bound time or later.
    DbClockTime(Option<DateTime<Utc>>),
    /// A list as one PostgreSQL array ([`Sql::push_in`], [`Sql::push_values`]).
    Array(Array),
}

/// The values of a list or of one column of rows, all of one kind: one PostgreSQL array.
#[derive(Debug, Clone, PartialEq)]
pub enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Int4(Vec<Option<i32>>),
    Uuid(Vec<Option<Uuid>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

/// The kind of an [`Arg`] that can be an element of an [`Array`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Int4,
    Uuid,
    Bytes,
    Time,
}

impl Kind {
    fn of(arg: &Arg) -> Option<Self> {
        Some(match arg {
            Arg::Text(_) => Self::Text,
            Arg::Int(_) => Self::Int,
            Arg::Int4(_) => Self::Int4,
            Arg::Uuid(_) => Self::Uuid,
            Arg::Bytes(_) => Self::Bytes,
            Arg::Time(_) | Arg::DbClockTime(_) => Self::Time,
            Arg::Array(_) => return None,
        })
    }

    /// The one kind of all `values`; `None` when there are none (no element type to give
    /// an array) or they are not all of one kind.
    fn shared<'a>(values: impl IntoIterator<Item = &'a Arg>) -> Option<Self> {
        let mut values = values.into_iter();
        let kind = Self::of(values.next()?)?;
        values.all(|v| Self::of(v) == Some(kind)).then_some(kind)
    }
}

impl Array {
    /// The values as one array, moved, not copied; given back when they are not all of one
    /// kind.
    fn of(values: Vec<Arg>) -> Result<Self, Vec<Arg>> {
        match Kind::shared(&values) {
            Some(kind) => Ok(Self::gather(kind, values)),
            None => Err(values),
        }
    }

    /// `values`, all of `kind` (checked by the caller), as one array.
    fn gather(kind: Kind, values: Vec<Arg>) -> Self {
        macro_rules! gather {
            ($variant:ident, $($arg:ident)|+) => {
                Array::$variant(
                    values
                        .into_iter()
                        .filter_map(|v| match v {
                            $(Arg::$arg(v))|+ => Some(v),
                            _ => None,
                        })
                        .collect(),
                )
            };
        }
        match kind {
            Kind::Text => gather!(Text, Text),
            Kind::Int => gather!(Int, Int),
            Kind::Int4 => gather!(Int4, Int4),
            Kind::Uuid => gather!(Uuid, Uuid),
            Kind::Bytes => gather!(Bytes, Bytes),
            Kind::Time => gather!(Time, Time | DbClockTime),
        }
    }

    /// The cast that gives the parameter its type in the statement's text.
    fn pg_type(&self) -> &'static str {
        match self {
            Self::Text(_) => "text[]",
            Self::Int(_) => "int8[]",
            Self::Int4(_) => "int4[]",
            Self::Uuid(_) => "uuid[]",
            Self::Bytes(_) => "bytea[]",
            Self::Time(_) => "timestamptz[]",
        }
    }
}

macro_rules! arg_from {
    ($variant:ident: $($ty:ty => |$v:ident| $conv:expr),+ $(,)?) => {$(
        impl From<$ty> for Arg {
            fn from($v: $ty) -> Self {
                Arg::$variant(Some($conv))
            }
        }
        impl From<Option<$ty>> for Arg {
            fn from(v: Option<$ty>) -> Self {
                Arg::$variant(v.map(|$v| $conv))
            }
        }
    )+};
}

arg_from!(Text: String => |v| v, &str => |v| v.to_owned(), &String => |v| v.clone());
arg_from!(Int: i64 => |v| v);
arg_from!(Int4: i32 => |v| v);
arg_from!(Uuid: Uuid => |v| v, &Uuid => |v| *v);
arg_from!(Bytes: Vec<u8> => |v| v, &[u8] => |v| v.to_vec(), &Vec<u8> => |v| v.clone());
arg_from!(Time: DateTime<Utc> => |v| v, &DateTime<Utc> => |v| *v);

impl From<u64> for Arg {
    /// Positions, versions and counts: stored as BIGINT / INTEGER.
    fn from(v: u64) -> Self {
        Arg::Int(Some(i64::try_from(v).unwrap_or(i64::MAX)))
    }
}

impl From<bool> for Arg {
    /// Flags: stored as an integer, 0 or 1, on both engines.
    fn from(v: bool) -> Self {
        Arg::Int4(Some(i32::from(v)))
    }
}

impl From<u32> for Arg {
    fn from(v: u32) -> Self {
        Arg::Int(Some(i64::from(v)))
    }
}

/// A statement and its parameters. Build a static one with [`sql`] and [`Sql::bind`], a
/// dynamic one with [`Sql::push`], [`Sql::push_bind`], [`Sql::push_list`] and
/// [`Sql::push_values`]; parameters are always bound, never spliced into the text.
#[derive(Debug, Clone, Default)]
pub struct Sql {
    text: String,
    args: Vec<Arg>,
}

/// Counts (`dry_run`) or deletes the rows of `from_where` (`<table> WHERE …` with `$n`
/// parameters, bound from `args`): how many there are, or how many went. Retention's one
/// shape, so a dry run counts exactly what the real run deletes.
pub async fn count_or_delete(
    on: impl Conn,
    dry_run: bool,
    from_where: &str,
    args: impl IntoIterator<Item = Arg>,
) -> Result<u64, StoreError> {
    let verb = if dry_run {
        "SELECT COUNT(*) AS n FROM "
    } else {
        "DELETE FROM "
    };
    let mut q = sql(verb);
    q.push(from_where);
    for arg in args {
        q = q.bind(arg);
    }
    if dry_run {
        q.fetch_optional(on)
            .await?
            .map_or(Ok(0), |row| row.get_u64("n"))
    } else {
        q.execute(on).await
    }
}

/// A statement with `$n` parameters, bound in order with [`Sql::bind`].
pub fn sql(text: &str) -> Sql {
    Sql {
        text: text.to_owned(),
        args: Vec::new(),
    }
}

impl Sql {
    /// Binds the next `$n`.
    pub fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Appends SQL text (never a value: those go through `push_bind`).
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a new parameter `$n` bound to `value`.
    pub fn push_bind(&mut self, value: impl Into<Arg>) -> &mut Self {
        self.args.push(value.into());
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Appends `($n, $n+1, …)`, one parameter per item. An empty list becomes `(NULL)`, which
    /// matches nothing, so `x IN ()` needs no special case.
    pub fn push_list<T: Into<Arg>>(&mut self, items: impl IntoIterator<Item = T>) -> &mut Self {
        self.text.push('(');
        let mut first = true;
        for item in items {
            if !first {
                self.text.push_str(", ");
            }
            first = false;
            self.push_bind(item);
        }
        if first {
            self.text.push_str("NULL");
        }
        self.text.push(')');
        self
    }

    /// Appends ` IN (…)` of `items` for `engine`: on PostgreSQL ` = ANY($n)`, the items bound
    /// as one array. No items match nothing, on either engine.
    pub fn push_in<T: Into<Arg>>(
        &mut self,
        engine: Engine,
        items: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        let mut items: Vec<Arg> = items.into_iter().map(Into::into).collect();
        if engine == Engine::Postgres {
            match Array::of(items) {
                Ok(array) => {
                    self.text.push_str(" = ANY(");
                    self.push_array(array);
                    self.text.push(')');
                    return self;
                }
                Err(given_back) => items = given_back,
            }
        }
        self.text.push_str(" IN ");
        self.push_list(items)
    }

    /// Appends the rows of an `INSERT` for `engine`, each row's values given by `row`: on
    /// PostgreSQL `SELECT * FROM UNNEST($n, …)`, a column an array, elsewhere (or when a
    /// column's values are not of one kind) `VALUES (…), (…)`.
    pub fn push_values<R>(
        &mut self,
        engine: Engine,
        rows: impl IntoIterator<Item = R>,
        mut row: impl FnMut(R) -> Vec<Arg>,
    ) -> &mut Self {
        let mut rows: Vec<Vec<Arg>> = rows.into_iter().map(&mut row).collect();
        if engine == Engine::Postgres {
            match columns_of(rows) {
                Ok(columns) => {
                    self.text.push_str("SELECT * FROM UNNEST(");
                    for (i, column) in columns.into_iter().enumerate() {
                        if i > 0 {
                            self.text.push_str(", ");
                        }
                        self.push_array(column);
                    }
                    self.text.push(')');
                    return self;
                }
                Err(given_back) => rows = given_back,
            }
        }
        self.text.push_str("VALUES ");
        for (i, values) in rows.into_iter().enumerate() {
            if i > 0 {
                self.text.push_str(", ");
            }
            self.push_list(values);
        }
        self
    }

    /// Appends `other`, its `$n` renumbered to follow this statement's parameters.
    pub fn push_sql(&mut self, other: Sql) -> &mut Self {
        let offset = self.args.len();
        let mut rest = other.text.as_str();
        while let Some(at) = rest.find('$') {
            self.text.push_str(&rest[..=at]);
            rest = &rest[at + 1..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            match rest[..digits].parse::<usize>() {
                Ok(n) => self.text.push_str(&(n + offset).to_string()),
                Err(_) => self.text.push_str(&rest[..digits]),
            }
            rest = &rest[digits..];
        }
        self.text.push_str(rest);
        self.args.extend(other.args);
        self
    }

    /// Appends `$n::type[]`, the parameter bound to `array`.
    fn push_array(&mut self, array: Array) {
        let cast = array.pg_type();
        self.push_bind(Arg::Array(array));
        self.text.push_str("::");
        self.text.push_str(cast);
    }

    /// The number of parameters bound so far.
    pub fn param_count(&self) -> usize {
        self.args.len()
    }

    pub async fn execute(self, on: impl Conn) -> Result<u64, StoreError> {
        on.execute(self).await
    }

    pub async fn fetch_all(self, on: impl Conn) -> Result<Vec<Row>, StoreError> {
        on.fetch_all(self).await
    }

    pub async fn fetch_optional(self, on: impl Conn) -> Result<Option<Row>, StoreError> {
        on.fetch_optional(self).await
    }

    pub async fn fetch_one(self, on: impl Conn) -> Result<Row, StoreError> {
        on.fetch_optional(self)
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))
    }

    fn pg(self) -> Result<sqlx::query::Query<'static, Postgres, PgArguments>, StoreError> {
        let mut args = PgArguments::default();
        for arg in self.args {
            match arg {
                Arg::Text(v) => args.add(v),
                Arg::Int(v) => args.add(v),
                Arg::Int4(v) => args.add(v),
                Arg::Uuid(v) => args.add(v),
                Arg::Bytes(v) => args.add(v),
                Arg::Time(v) | Arg::DbClockTime(v) => args.add(v),
                Arg::Array(Array::Text(v)) => args.add(v),
                Arg::Array(Array::Int(v)) => args.add(v),
                Arg::Array(Array::Int4(v)) => args.add(v),
                Arg::Array(Array::Uuid(v)) => args.add(v),
                Arg::Array(Array::Bytes(v)) => args.add(v),
                Arg::Array(Array::Time(v)) => args.add(v),
            }
            .map_err(StoreError::bind)?;
        }
        Ok(sqlx::query_with(AssertSqlSafe(self.text), args))
    }

    fn sqlite(self) -> Result<sqlx::query::Query<'static, Sqlite, SqliteArguments>, StoreError> {
        let mut args = SqliteArguments::default();
        for arg in self.args {
            match arg {
                Arg::Text(v) => args.add(v),
                Arg::Int(v) => args.add(v),
                Arg::Int4(v) => args.add(v),
                Arg::Uuid(v) => args.add(v),
                Arg::Bytes(v) => args.add(v),
                Arg::Time(v) => args.add(v.map(micros)),
                Arg::DbClockTime(v) => args.add(v.map(|t| t.timestamp())),
                // Built only for PostgreSQL (`push_in`, `push_values`).
                Arg::Array(_) => Err("an array bound on SQLite".into()),
            }
            .map_err(StoreError::bind)?;
        }
        Ok(sqlx::query_with(AssertSqlSafe(self.text), args))
    }
}

/// Rows of values as one array per column, the values moved, not copied; the rows given back
/// when there are none, they differ in length, or a column's values are not of one kind.
fn columns_of(rows: Vec<Vec<Arg>>) -> Result<Vec<Array>, Vec<Vec<Arg>>> {
    let width = rows.first().map_or(0, Vec::len);
    if width == 0 || rows.iter().any(|r| r.len() != width) {
        return Err(rows);
    }
    let Some(kinds) = (0..width)
        .map(|c| Kind::shared(rows.iter().map(|r| &r[c])))
        .collect::<Option<Vec<Kind>>>()
    else {
        return Err(rows);
    };
    let mut columns: Vec<Vec<Arg>> = (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    Ok(kinds
        .into_iter()
        .zip(columns)
        .map(|(kind, values)| Array::gather(kind, values))
        .collect())
}

/// Where a statement runs: a pool ([`Db`]) or a transaction ([`Tx`]).
pub trait Conn: Send {
    fn execute(self, q: Sql) -> impl Future<Output = Result<u64, StoreError>> + Send;
    fn fetch_all(self, q: Sql) -> impl Future<Output = Result<Vec<Row>, StoreError>> + Send;
    fn fetch_optional(self, q: Sql)
    -> impl Future<Output = Result<Option<Row>, StoreError>> + Send;
}

impl Conn for &Db {
    async fn execute(self, q: Sql) -> Result<u64, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => q.pg()?.execute(pool).await?.rows_affected(),
            Db::Sqlite(pool) => q.sqlite()?.execute(pool).await?.rows_affected(),
        })
    }

    async fn fetch_all(self, q: Sql) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => rows(q.pg()?.fetch_all(pool).await?, Row::Postgres),
            Db::Sqlite(pool) => rows(q.sqlite()?.fetch_all(pool).await?, Row::Sqlite),
        })
    }

    async fn fetch_optional(self, q: Sql) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Db::Postgres(pool) => q.pg()?.fetch_optional(pool).await?.map(Row::Postgres),
            Db::Sqlite(pool) => q.sqlite()?.fetch_optional(pool).await?.map(Row::Sqlite),
        })
    }
}

impl Conn for &mut Tx {
    async fn execute(self, q: Sql) -> Result<u64, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => q.pg()?.execute(&mut **tx).await?.rows_affected(),
            Tx::Sqlite(tx) => q.sqlite()?.execute(&mut **tx).await?.rows_affected(),
        })
    }

    async fn fetch_all(self, q: Sql) -> Result<Vec<Row>, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => rows(q.pg()?.fetch_all(&mut **tx).await?, Row::Postgres),
            Tx::Sqlite(tx) => rows(q.sqlite()?.fetch_all(&mut **tx).await?, Row::Sqlite),
        })
    }

    async fn fetch_optional(self, q: Sql) -> Result<Option<Row>, StoreError> {
        Ok(match self {
            Tx::Postgres(tx) => q.pg()?.fetch_optional(&mut **tx).await?.map(Row::Postgres),
            Tx::Sqlite(tx) => q
                .sqlite()?
                .fetch_optional(&mut **tx)
                .await?
                .map(Row::Sqlite),
        })
    }
}

fn rows<R>(raw: Vec<R>, wrap: fn(R) -> Row) -> Vec<Row> {
    raw.into_iter().map(wrap).collect()
}

/// A result row of either engine.
#[derive(Debug)]
pub enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

impl Row {
    /// The column `name`, decoded as `T` the same way on both engines.
    pub fn try_get<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        Ok(match self {
            Self::Postgres(row) => T::from_pg(row, name)?,
            Self::Sqlite(row) => T::from_sqlite(row, name)?,
        })
    }

    /// A text column parsed as `T`; one that does not parse is an integrity error.
    pub fn parse<T>(&self, name: &str) -> Result<T, StoreError>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let raw: String = self.try_get(name)?;
        raw.parse()
            .map_err(|e| StoreError::Integrity(format!("stored {name}: {e}")))
    }

    /// A position, version or count, stored signed.
    pub fn get_u64(&self, name: &str) -> Result<u64, StoreError> {
        Ok(u64::try_from(self.try_get::<i64>(name)?).unwrap_or_default())
    }
}

/// A Rust type a column can be read as on either engine.
pub trait Column: Sized {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error>;
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error>;
}

macro_rules! column_as_is {
    ($($ty:ty),+) => {$(
        impl Column for $ty {
            fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
                row.try_get(name)
            }
            fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
                row.try_get(name)
            }
        }
        impl Column for Option<$ty> {
            fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
                row.try_get(name)
            }
            fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
                row.try_get(name)
            }
        }
    )+};
}

column_as_is!(String, i64, i32, Uuid, Vec<u8>);

impl Column for bool {
    /// Flags are stored as an integer, 0 or 1 (see `From<bool> for Arg`).
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
        i32::from_pg(row, name).map(|v| v != 0)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
        i32::from_sqlite(row, name).map(|v| v != 0)
    }
}

impl Column for DateTime<Utc> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get::<i64, _>(name).map(from_micros)
    }
}

impl Column for Option<DateTime<Utc>> {
    fn from_pg(row: &PgRow, name: &str) -> Result<Self, sqlx::Error> {
        row.try_get(name)
    }
    fn from_sqlite(row: &SqliteRow, name: &str) -> Result<Self, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(from_micros))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn a_list_binds_as_one_array_on_postgresql_and_item_by_item_on_sqlite() {
        for n in [1, 3, 200] {
            let mut pg = sql("SELECT 1 FROM t WHERE a = $1 AND id");
            pg = pg.bind("x");
            pg.push_in(Engine::Postgres, ids(n)).push(" AND b = ");
            pg.push_bind(7_i64);
            // The same text whatever the number of items: one prepared statement.
            assert_eq!(
                pg.text,
                "SELECT 1 FROM t WHERE a = $1 AND id = ANY($2::uuid[]) AND b = $3"
            );
            assert!(matches!(&pg.args[1], Arg::Array(Array::Uuid(v)) if v.len() == n));
            let mut lite = sql("SELECT 1 FROM t WHERE id");
            lite.push_in(Engine::Sqlite, ids(n));
            assert_eq!(lite.param_count(), n);
            assert!(lite.text.starts_with("SELECT 1 FROM t WHERE id IN ($1"));
        }
    }

    #[test]
    fn no_items_match_nothing_on_either_engine() {
        for engine in [Engine::Postgres, Engine::Sqlite] {
            let mut q = sql("SELECT 1 FROM t WHERE id");
            q.push_in(engine, Vec::<Uuid>::new());
            assert_eq!(q.text, "SELECT 1 FROM t WHERE id IN (NULL)");
            assert_eq!(q.param_count(), 0);
        }
    }

    #[test]
    fn rows_bind_a_column_an_array_on_postgresql() {
        let rows = |n: usize| {
            (0..n)
                .map(|i| {
                    vec![
                        Arg::from(format!("k{i}")),
                        Arg::from(i as u64),
                        Arg::from(i % 2 == 0),
                        Arg::from(None::<DateTime<Utc>>),
                        Arg::from(vec![1_u8, 2]),
                    ]
                })
                .collect::<Vec<_>>()
        };
        for n in [1, 50] {
            let mut q = sql("INSERT INTO t (a, b, c, d, e) ");
            q.push_values(Engine::Postgres, rows(n), |r| r);
            assert_eq!(
                q.text,
                "INSERT INTO t (a, b, c, d, e) SELECT * FROM UNNEST($1::text[], $2::int8[], \
                 $3::int4[], $4::timestamptz[], $5::bytea[])"
            );
            let mut lite = sql("INSERT INTO t (a, b, c, d, e) ");
            lite.push_values(Engine::Sqlite, rows(n), |r| r);
            assert_eq!(lite.param_count(), 5 * n);
            assert!(lite.text.contains("VALUES ($1, $2, $3, $4, $5)"));
        }
    }

    #[test]
    fn a_column_of_mixed_kinds_keeps_its_values_apart() {
        let rows = vec![vec![Arg::from("a")], vec![Arg::from(1_i64)]];
        let mut q = sql("INSERT INTO t (a) ");
        q.push_values(Engine::Postgres, rows, |r| r);
        assert_eq!(q.text, "INSERT INTO t (a) VALUES ($1), ($2)");
    }

    #[test]
    fn an_appended_statement_s_parameters_follow_the_first_s() {
        let mut q = sql("WITH a AS (DELETE FROM t WHERE k = $1 AND v = $2)")
            .bind("k")
            .bind(1_i64);
        let part = sql("UPDATE u SET x = $2 WHERE k = $1 AND x < $2 AND y = $10")
            .bind("k")
            .bind(2_i64);
        q.push(" ").push_sql(part);
        assert_eq!(
            q.text,
            "WITH a AS (DELETE FROM t WHERE k = $1 AND v = $2) \
             UPDATE u SET x = $4 WHERE k = $3 AND x < $4 AND y = $12"
        );
        assert_eq!(q.param_count(), 4);
        // A `$` not followed by a number is left as it is.
        let mut q = sql("SELECT 1");
        q.push_sql(sql(" WHERE a = '$' AND b = $1").bind(1_i64));
        assert_eq!(q.text, "SELECT 1 WHERE a = '$' AND b = $1");
    }
}
