//! The datastore: every SQL statement of the controller lives under this module,
//! one file per table group ([`identity`], [`images`], [`placement`], and for
//! the compute and network APIs [`flavors`] (with key pairs), [`instances`],
//! [`hosts`] (services, compute nodes, aggregates), [`server_groups`],
//! [`quotas`] and [`network`]), and [`consoles`] (console tokens).
//!
//! # One code path for PostgreSQL and SQLite
//!
//! The pool is sqlx's `Any` driver, so each query is written once and runs on
//! both databases. That works because the SQL is kept to what both accept the
//! same way:
//!
//! - placeholders are `$1, $2, …` (native in PostgreSQL; sqlx's SQLite driver
//!   maps `$N` to the N-th argument);
//! - column types are `TEXT`, `BIGINT`, `BOOLEAN` and `DOUBLE PRECISION`, the
//!   types `Any` carries. Ids are text (UUIDs), timestamps are text in one
//!   fixed-width UTC format ([`Timestamp`]) that sorts and compares as time;
//! - aggregates whose PostgreSQL type `Any` cannot carry (`SUM(bigint)` is
//!   `numeric`) are cast back to `BIGINT` in the query;
//! - upserts use `INSERT … ON CONFLICT … DO UPDATE`, results use `RETURNING`,
//!   both supported by PostgreSQL and by SQLite ≥ 3.35 (bundled).
//!
//! DDL is where the dialects differ (identity columns, for one), so migrations
//! come in two folders, `migrations/postgres` and `migrations/sqlite`, with the
//! same file names; a test checks that both produce the same tables, columns
//! and indexes. Migrations are embedded in the binary, applied by
//! `mica-controller db sync` (and at start by `all`), and never edited once
//! released: sqlx refuses to run when an applied migration's checksum changed.
//!
//! # Transactions and concurrency
//!
//! [`Db::begin`] opens a write transaction: `BEGIN` on PostgreSQL (read
//! committed) and `BEGIN IMMEDIATE` on SQLite, which takes SQLite's single
//! write lock up front so a transaction that reads before it writes cannot
//! fail on upgrade. On PostgreSQL, writers that must not interleave serialize
//! on a row: they first bump the generation of the record they change
//! (`UPDATE … SET generation = generation + 1 WHERE … [AND generation = $seen]`),
//! which takes that row's lock until commit; the checks that follow then see
//! every committed competitor. A transaction that loses a race with a deadlock,
//! a serialization failure or a busy SQLite is retried by [`Db::retry`].

pub mod consoles;
pub mod flavors;
pub mod hosts;
pub mod identity;
pub mod images;
pub mod instances;
pub mod network;
pub mod passwords;
pub mod placement;
pub mod quotas;
pub mod sagas;
pub mod scheduler;
pub mod server_groups;

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::any::{AnyPoolOptions, AnyTypeInfo};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor};

use crate::config;
use crate::error::{Error, Result};

/// A write transaction.
pub type Tx = sqlx::Transaction<'static, Any>;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Backend {
    /// The backend of a database URL.
    pub fn of_url(url: &str) -> Result<Backend> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            Err(Error::bad_request(format!(
                "unsupported database URL `{}`: use postgres://… or sqlite://…",
                redact_url(url)
            )))
        }
    }
}

/// The database pool and what kind of database it is.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    max_retries: u32,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .finish()
    }
}

/// The URL without its password, for messages and logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl Db {
    /// Connects to the database of `cfg`, creating a SQLite file (and its
    /// folder) when missing. Does not migrate.
    pub async fn connect(cfg: &config::Database) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of_url(&cfg.url)?;
        let mut url = cfg.url.clone();
        if backend == Backend::Sqlite {
            let path = sqlite_path(&url);
            if let Some(parent) = Path::new(&path).parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent)?;
            }
            if !url.contains("mode=") {
                url.push_str(if url.contains('?') { "&" } else { "?" });
                url.push_str("mode=rwc");
            }
        }
        let busy_ms = cfg.sqlite_busy_timeout_ms;
        let pool = AnyPoolOptions::new()
            .max_connections(cfg.max_connections.max(1))
            .min_connections(cfg.min_connections)
            .acquire_timeout(Duration::from_secs(cfg.acquire_timeout_secs))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA busy_timeout = {busy_ms}").as_str())
                            .await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| {
                Error::new(
                    crate::error::Kind::ServiceUnavailable,
                    format!("cannot connect to {}", redact_url(&cfg.url)),
                )
                .with_source(e)
            })?;
        Ok(Db {
            pool,
            backend,
            max_retries: cfg.max_retries,
        })
    }

    /// Applies the migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| Error::internal("applying migrations", e))
    }

    /// The migrations embedded in this binary: (version, description).
    pub fn known_migrations(&self) -> Vec<(i64, String)> {
        let migrator = match self.backend {
            Backend::Postgres => &POSTGRES_MIGRATIONS,
            Backend::Sqlite => &SQLITE_MIGRATIONS,
        };
        migrator
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect()
    }

    /// The migrations of this binary that the database has not applied.
    pub async fn missing_migrations(&self) -> Result<Vec<(i64, String)>> {
        // A database never migrated has no table: everything is missing.
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        Ok(self
            .known_migrations()
            .into_iter()
            .filter(|(v, _)| !applied.contains(v))
            .collect())
    }

    /// Tables, and for each its columns and index names, sorted: what the
    /// schema-parity test compares across backends.
    pub async fn schema_outline(&self) -> Result<Vec<(String, Vec<String>, Vec<String>)>> {
        let tables: Vec<String> = match self.backend {
            Backend::Postgres => {
                sqlx::query_scalar(
                    "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                     WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations' ORDER BY 1",
                )
                .fetch_all(&self.pool)
                .await?
            }
            Backend::Sqlite => {
                sqlx::query_scalar(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite_%' AND name <> '_sqlx_migrations' ORDER BY 1",
                )
                .fetch_all(&self.pool)
                .await?
            }
        };
        let mut out = Vec::new();
        for t in tables {
            let (mut cols, mut idx): (Vec<String>, Vec<String>) = match self.backend {
                Backend::Postgres => (
                    sqlx::query_scalar(
                        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
                         WHERE table_schema = current_schema() AND table_name = $1",
                    )
                    .bind(&t)
                    .fetch_all(&self.pool)
                    .await?,
                    sqlx::query_scalar(
                        "SELECT CAST(indexname AS TEXT) FROM pg_indexes \
                         WHERE schemaname = current_schema() AND tablename = $1 \
                         AND indexname NOT LIKE '%_pkey' AND indexname NOT LIKE '%_key'",
                    )
                    .bind(&t)
                    .fetch_all(&self.pool)
                    .await?,
                ),
                Backend::Sqlite => (
                    sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                        .bind(&t)
                        .fetch_all(&self.pool)
                        .await?,
                    sqlx::query_scalar("SELECT name FROM pragma_index_list($1) WHERE origin = 'c'")
                        .bind(&t)
                        .fetch_all(&self.pool)
                        .await?,
                ),
            };
            cols.sort();
            idx.sort();
            out.push((t, cols, idx));
        }
        Ok(out)
    }

    /// The pool, for read-only statements outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Opens a write transaction (see the module doc).
    pub async fn begin(&self) -> Result<Tx> {
        let stmt: Cow<'static, str> = match self.backend {
            Backend::Postgres => "BEGIN".into(),
            Backend::Sqlite => "BEGIN IMMEDIATE".into(),
        };
        Ok(self.pool.begin_with(stmt).await?)
    }

    /// Runs `f` until it succeeds, fails with a non-retryable error, or has
    /// been retried `[database] max_retries` times. `f` must be a whole
    /// transaction (begin … commit) so that a retry starts from scratch.
    pub async fn retry<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Err(e) if attempt < self.max_retries && is_retryable(&e) => {
                    attempt += 1;
                    tracing::debug!(attempt, error = ?e, "transaction lost a race; retrying");
                    // A little jitter so competitors don't collide again.
                    let jitter = u64::from(random_u32() % 20) + 1;
                    tokio::time::sleep(Duration::from_millis(jitter * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Error {
    /// Attaches an internal cause to an error (logged, never shown).
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Box::new(source));
        self
    }
}

fn check_identifier(name: &str) -> Result<()> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(Error::bad_request(format!(
            "`{name}` is not a plain database name"
        )));
    }
    Ok(())
}

/// Creates database `name` on the PostgreSQL server of `admin_url` (tests
/// and benchmarks make one each).
pub async fn create_postgres_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection;
    check_identifier(name)?;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// Drops database `name` of the PostgreSQL server of `admin_url`, closing
/// its connections.
pub async fn drop_postgres_database(admin_url: &str, name: &str) -> Result<()> {
    use sqlx::Connection;
    check_identifier(name)?;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(admin_url).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn sqlite_path(url: &str) -> String {
    let rest = url.trim_start_matches("sqlite:");
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    rest.split('?').next().unwrap_or_default().to_owned()
}

/// Whether the error is a lost race worth retrying: PostgreSQL deadlock or
/// serialization failure, SQLite busy or locked.
pub fn is_retryable(e: &Error) -> bool {
    let Some(src) = e.source.as_deref() else {
        return false;
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(src);
    while let Some(err) = cur {
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>() {
            let code = db.code();
            return matches!(
                code.as_deref(),
                // PostgreSQL: serialization failure, deadlock. SQLite: BUSY,
                // LOCKED and their extended codes.
                Some("40001")
                    | Some("40P01")
                    | Some("5")
                    | Some("261")
                    | Some("517")
                    | Some("773")
                    | Some("6")
                    | Some("262")
            );
        }
        cur = err.source();
    }
    false
}

pub(crate) fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("the OS random source works");
    u32::from_le_bytes(b)
}

/// A point in time as the database stores it: UTC text with microseconds in a
/// fixed width (`2025-01-31T12:00:00.000000Z`), so that string order is time
/// order on both databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Now, truncated to microseconds (what the database keeps).
    pub fn now() -> Timestamp {
        Timestamp(Utc::now().trunc_subsecs(6))
    }

    /// The stored form.
    pub fn to_db(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
    }

    /// Keystone's form: `2025-01-31T12:00:00.000000Z`.
    pub fn keystone(&self) -> String {
        self.to_db()
    }

    /// Glance's form: `2025-01-31T12:00:00Z`.
    pub fn seconds(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }

    /// `self` plus `secs` seconds.
    pub fn plus_secs(&self, secs: i64) -> Timestamp {
        Timestamp(self.0 + chrono::Duration::seconds(secs))
    }
}

impl FromStr for Timestamp {
    type Err = chrono::ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Timestamp(
            DateTime::parse_from_rfc3339(s)?.with_timezone(&Utc),
        ))
    }
}

impl sqlx::Type<Any> for Timestamp {
    fn type_info() -> AnyTypeInfo {
        <String as sqlx::Type<Any>>::type_info()
    }
    fn compatible(ty: &AnyTypeInfo) -> bool {
        <String as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, Any> for Timestamp {
    fn encode_by_ref(
        &self,
        buf: &mut <Any as sqlx::Database>::ArgumentBuffer<'q>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<'q, Any>>::encode(self.to_db(), buf)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Timestamp {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let s = <&str as sqlx::Decode<'r, Any>>::decode(value)?;
        Ok(s.parse()?)
    }
}

/// A boolean column as either database stores it: PostgreSQL `BOOLEAN`,
/// SQLite `INTEGER` 0/1 (sqlx's `Any` driver cannot carry SQLite's boolean
/// type, so the SQLite migrations declare flags as integers). Row structs
/// read flags with `#[sqlx(try_from = "Flag")]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

fn flag_compatible(ty: &AnyTypeInfo) -> bool {
    use sqlx::any::AnyTypeInfoKind as K;
    matches!(ty.kind(), K::Bool | K::SmallInt | K::Integer | K::BigInt)
}

fn decode_flag(value: sqlx::any::AnyValueRef<'_>) -> Result<bool, sqlx::error::BoxDynError> {
    match <bool as sqlx::Decode<Any>>::decode(value.clone()) {
        Ok(b) => Ok(b),
        Err(_) => Ok(<i64 as sqlx::Decode<Any>>::decode(value)? != 0),
    }
}

impl sqlx::Type<Any> for Flag {
    fn type_info() -> AnyTypeInfo {
        <bool as sqlx::Type<Any>>::type_info()
    }
    fn compatible(ty: &AnyTypeInfo) -> bool {
        flag_compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        decode_flag(value).map(Flag)
    }
}

/// A nullable [`Flag`] (from an outer join); read with
/// `#[sqlx(try_from = "OptFlag")]` into an `Option<bool>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptFlag(pub Option<bool>);

impl From<OptFlag> for Option<bool> {
    fn from(f: OptFlag) -> Option<bool> {
        f.0
    }
}

impl sqlx::Type<Any> for OptFlag {
    fn type_info() -> AnyTypeInfo {
        <bool as sqlx::Type<Any>>::type_info()
    }
    fn compatible(ty: &AnyTypeInfo) -> bool {
        flag_compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for OptFlag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef;
        if value.is_null() {
            return Ok(OptFlag(None));
        }
        decode_flag(value).map(|b| OptFlag(Some(b)))
    }
}

/// Builds a statement with a variable number of `$N` placeholders (the one
/// thing sqlx's `QueryBuilder` does not do portably for `Any`).
#[derive(Default)]
pub struct Sql {
    text: String,
    args: sqlx::any::AnyArguments<'static>,
    n: usize,
}

impl Sql {
    /// Starts a statement.
    pub fn new(text: impl AsRef<str>) -> Sql {
        Sql {
            text: text.as_ref().to_owned(),
            ..Default::default()
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, text: impl AsRef<str>) -> &mut Sql {
        self.text.push_str(text.as_ref());
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn bind<T>(&mut self, value: T) -> &mut Sql
    where
        T: 'static + sqlx::Encode<'static, Any> + sqlx::Type<Any> + Send,
    {
        use sqlx::Arguments;
        self.n += 1;
        self.text.push_str(&format!("${}", self.n));
        self.args.add(value).expect("Any encodes its own types");
        self
    }

    /// Appends `$a, $b, …` bound to `values`.
    pub fn bind_list<T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Sql
    where
        T: 'static + sqlx::Encode<'static, Any> + sqlx::Type<Any> + Send,
    {
        let mut first = true;
        for v in values {
            if !first {
                self.push(", ");
            }
            first = false;
            self.bind(v);
        }
        if first {
            // An empty list: `IN (NULL)` matches nothing on both databases.
            self.push("NULL");
        }
        self
    }

    /// The statement text (for tests and logs).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Runs the statement; returns the number of rows affected.
    pub async fn execute<'e, E>(self, ex: E) -> Result<u64>
    where
        E: Executor<'e, Database = Any>,
    {
        let text = self.text;
        Ok(sqlx::query_with(&text, self.args)
            .execute(ex)
            .await?
            .rows_affected())
    }

    /// Runs the statement and maps every row to `T`.
    pub async fn fetch_all<'e, T, E>(self, ex: E) -> Result<Vec<T>>
    where
        E: Executor<'e, Database = Any>,
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let text = self.text;
        Ok(sqlx::query_as_with(&text, self.args).fetch_all(ex).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_text() {
        let a: Timestamp = "2025-01-31T09:00:00.5Z".parse().unwrap();
        let b: Timestamp = "2025-01-31T10:00:00Z".parse().unwrap();
        assert!(a < b);
        assert!(a.to_db() < b.to_db());
        assert_eq!(a.to_db(), "2025-01-31T09:00:00.500000Z");
        assert_eq!(a.seconds(), "2025-01-31T09:00:00Z");
        assert_eq!(a.to_db().parse::<Timestamp>().unwrap(), a);
    }

    #[test]
    fn urls() {
        assert_eq!(Backend::of_url("sqlite:///x.db").unwrap(), Backend::Sqlite);
        assert_eq!(
            Backend::of_url("postgres://a:b@h/d").unwrap(),
            Backend::Postgres
        );
        assert!(Backend::of_url("mysql://x").is_err());
        assert_eq!(
            redact_url("postgres://mica:secret@127.0.0.1:5432/mica"),
            "postgres://mica:***@127.0.0.1:5432/mica"
        );
        assert_eq!(
            sqlite_path("sqlite:///var/lib/x.db?mode=rwc"),
            "/var/lib/x.db"
        );
        assert_eq!(sqlite_path("sqlite://rel.db"), "rel.db");
    }

    #[test]
    fn sql_numbers_placeholders() {
        let mut q = Sql::new("SELECT * FROM t WHERE a = ");
        q.bind(1i64)
            .push(" AND b IN (")
            .bind_list(["x", "y"])
            .push(")");
        assert_eq!(q.text(), "SELECT * FROM t WHERE a = $1 AND b IN ($2, $3)");
        let mut q = Sql::new("SELECT 1 WHERE 1 IN (");
        q.bind_list(Vec::<i64>::new()).push(")");
        assert_eq!(q.text(), "SELECT 1 WHERE 1 IN (NULL)");
    }
}
