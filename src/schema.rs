//! The control plane's schema: ordered migrations in `sql/migrations/NNNN_name.sql`, applied each
//! in its own transaction and recorded (version, name, sha256) in a ledger table. A database the
//! ledger does not explain (objects created from outside, or an applied file edited since) is
//! refused, never patched over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, Row};

/// The ledger table.
pub const LEDGER: &str = "stack_schema_migrations";

/// One migration file.
#[derive(Debug, Clone, Serialize)]
pub struct Migration {
    /// `NNNN` from the file name.
    pub version: i64,
    /// The rest of the file name.
    pub name: String,
    /// The file.
    #[serde(skip)]
    pub path: PathBuf,
    /// Its SQL.
    #[serde(skip)]
    pub sql: String,
    /// Hex SHA-256 of the SQL.
    pub sha256: String,
}

/// A migration as the ledger records it.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Version.
    pub version: i64,
    /// Name.
    pub name: String,
    /// SHA-256 when it was applied.
    pub sha256: String,
    /// When (RFC 3339).
    pub applied_at: String,
}

/// Why the schema could not be loaded or inspected.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A problem with the migration files themselves (exit 2: the project must be fixed).
    #[error(transparent)]
    Files(#[from] MigrationFileError),
    /// PostgreSQL could not be reached.
    #[error("cannot connect to {url}: {cause}\n  is postgres running? try `stack up postgres`")]
    Unreachable {
        /// The URL tried (password hidden).
        url: String,
        /// Why.
        #[source]
        cause: Unreachable,
    },
    /// The database holds schema state the ledger does not explain.
    #[error("refusing to load the schema: the database is not in a state the ledger explains:\n{}\n  remedy: `stack reset --hard` drops and reloads the schema (the data in it is lost)", .0.iter().map(|r| format!("  - {r}")).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<String>),
    /// A migration failed; its transaction was rolled back.
    #[error("migration {version:04}_{name} failed and was rolled back: {source}")]
    Migration {
        /// Version.
        version: i64,
        /// Name.
        name: String,
        /// The server's error.
        #[source]
        source: sqlx::Error,
    },
    /// Another query failed.
    #[error("schema ledger query failed: {0}")]
    Query(#[source] sqlx::Error),
}

/// Why PostgreSQL could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// The driver's error (refused, bad password, no such database, ...).
    #[error(transparent)]
    Driver(#[from] sqlx::Error),
    /// Nothing answered in time.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// A migration file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MigrationFileError {
    /// The migrations directory cannot be listed.
    #[error("cannot read the migrations in {}: {source}", .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not named `NNNN_name.sql`.
    #[error("{} is not named NNNN_name.sql: rename it, e.g. 0004_{stem}.sql", .path.display())]
    Name {
        /// The file.
        path: PathBuf,
        /// Its stem.
        stem: String,
    },
    /// Two files share a version.
    #[error("{} and {} share version {version}: renumber one of them", .first.display(), .second.display())]
    Version {
        /// The version.
        version: i64,
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
    },
    /// A file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The migrations directory of a project: `sql/migrations` under its root.
pub fn migrations_dir(project_root: &Path) -> PathBuf {
    project_root.join(MIGRATIONS_DIR)
}

/// Where a project keeps its migrations, relative to its root.
pub const MIGRATIONS_DIR: &str = "sql/migrations";

/// How long `schema`, `seed` and `reset` wait for PostgreSQL to answer a connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `dir/NNNN_name.sql` in version order.
pub fn discover(dir: &Path) -> Result<Vec<Migration>, SchemaError> {
    let entries = std::fs::read_dir(dir).map_err(|source| MigrationFileError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<Migration> = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("sql") {
            continue;
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        let (num, name) = stem.split_once('_').unwrap_or((&stem, ""));
        let version: i64 = num.parse().map_err(|_| MigrationFileError::Name {
            path: path.clone(),
            stem: stem.clone(),
        })?;
        if let Some(other) = out.iter().find(|m| m.version == version) {
            return Err(MigrationFileError::Version {
                version,
                first: other.path.clone(),
                second: path,
            }
            .into());
        }
        let sql = std::fs::read_to_string(&path).map_err(|source| MigrationFileError::Read {
            path: path.clone(),
            source,
        })?;
        let sha256 = hex::encode(Sha256::digest(sql.as_bytes()));
        out.push(Migration {
            version,
            name: name.to_string(),
            path,
            sql,
            sha256,
        });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// The URL with its password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Connects, failing within `timeout` with the URL named.
pub async fn connect(url: &str, timeout: Duration) -> Result<PgConnection, SchemaError> {
    let unreachable = |cause: Unreachable| SchemaError::Unreachable {
        url: redact(url),
        cause,
    };
    match tokio::time::timeout(timeout, PgConnection::connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(unreachable(Unreachable::Driver(e))),
        Err(_) => Err(unreachable(Unreachable::Timeout(timeout))),
    }
}

async fn ledger_exists(c: &mut PgConnection) -> Result<bool, SchemaError> {
    let row = sqlx::query("SELECT to_regclass($1) IS NOT NULL")
        .bind(format!("public.{LEDGER}"))
        .fetch_one(&mut *c)
        .await
        .map_err(SchemaError::Query)?;
    Ok(row.get::<bool, _>(0))
}

/// The ledger's rows (empty when the ledger does not exist yet).
pub async fn applied(c: &mut PgConnection) -> Result<Vec<Applied>, SchemaError> {
    if !ledger_exists(c).await? {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(&format!(
        "SELECT version, name, sha256, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM {LEDGER} ORDER BY version"
    ))
    .fetch_all(&mut *c)
    .await
    .map_err(SchemaError::Query)?;
    Ok(rows
        .iter()
        .map(|r| Applied {
            version: r.get(0),
            name: r.get(1),
            sha256: r.get(2),
            applied_at: r.get(3),
        })
        .collect())
}

/// The objects a migration creates (`CREATE TABLE|INDEX|TYPE|SEQUENCE|VIEW name`).
pub fn created_objects(sql: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for stmt in statements(sql) {
        let words: Vec<String> = stmt
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '(' || c == ';').to_string())
            .collect();
        let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
        if upper.first().map(String::as_str) != Some("CREATE") {
            continue;
        }
        let mut i = 1;
        while i < upper.len()
            && matches!(
                upper[i].as_str(),
                "UNIQUE" | "OR" | "REPLACE" | "UNLOGGED" | "TEMP" | "TEMPORARY"
            )
        {
            i += 1;
        }
        let Some(kind) = upper.get(i).cloned() else {
            continue;
        };
        if !matches!(
            kind.as_str(),
            "TABLE" | "INDEX" | "TYPE" | "SEQUENCE" | "VIEW"
        ) {
            continue;
        }
        i += 1;
        if upper.get(i).map(String::as_str) == Some("IF") {
            i += 3; // IF NOT EXISTS
        }
        if let Some(name) = words.get(i) {
            let name = name.replace('"', "");
            let name = name.strip_prefix("public.").unwrap_or(&name).to_string();
            if !name.is_empty() && !name.eq_ignore_ascii_case("ON") {
                out.push((kind.to_ascii_lowercase(), name));
            }
        }
    }
    out
}

/// The tables the migrations create, in the order they create them.
pub fn tables(files: &[Migration]) -> Vec<String> {
    files
        .iter()
        .flat_map(|m| created_objects(&m.sql))
        .filter(|(kind, _)| kind == "table")
        .map(|(_, name)| name)
        .collect()
}

/// Splits SQL into statements, ignoring `;` inside quotes, dollar quotes and comments.
pub fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut dollar: Option<String> = None;
    while let Some(c) = chars.next() {
        if let Some(tag) = &dollar {
            cur.push(c);
            if cur.ends_with(tag.as_str()) && cur.len() > tag.len() {
                dollar = None;
            }
            continue;
        }
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                cur.push('\n');
            }
            '\'' | '"' => {
                quote = Some(c);
                cur.push(c);
            }
            '$' => {
                let mut tag = String::from("$");
                while let Some(&n) = chars.peek() {
                    chars.next();
                    tag.push(n);
                    if n == '$' || !(n.is_alphanumeric() || n == '_') {
                        break;
                    }
                }
                cur.push_str(&tag);
                if tag.ends_with('$') && tag.len() >= 2 {
                    dollar = Some(tag);
                }
            }
            ';' => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

async fn existing(c: &mut PgConnection, kind: &str, name: &str) -> Result<bool, SchemaError> {
    let sql = if kind == "type" {
        "SELECT EXISTS (SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = 'public' AND t.typname = $1)"
    } else {
        "SELECT to_regclass('public.' || quote_ident($1)) IS NOT NULL"
    };
    let row = sqlx::query(sql)
        .bind(name)
        .fetch_one(&mut *c)
        .await
        .map_err(SchemaError::Query)?;
    Ok(row.get::<bool, _>(0))
}

/// Applied, pending and the problems that would make `load` refuse.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// In the ledger.
    pub applied: Vec<Applied>,
    /// Not yet applied.
    pub pending: Vec<Migration>,
    /// Why a load would be refused (empty when it would proceed).
    pub problems: Vec<String>,
}

/// Compares the files with the ledger and the database.
pub async fn inspect(c: &mut PgConnection, files: &[Migration]) -> Result<Status, SchemaError> {
    let applied = applied(c).await?;
    let mut problems = Vec::new();
    for a in &applied {
        match files.iter().find(|m| m.version == a.version) {
            None => problems.push(format!(
                "migration {:04}_{} is recorded as applied but its file is gone from sql/migrations",
                a.version, a.name
            )),
            Some(m) if m.sha256 != a.sha256 => problems.push(format!(
                "{} was edited after it was applied (sha256 {} in the ledger, {} on disk): add a new migration instead of editing an applied one",
                m.path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
                &a.sha256[..12],
                &m.sha256[..12]
            )),
            Some(_) => {}
        }
    }
    let done: BTreeSet<i64> = applied.iter().map(|a| a.version).collect();
    let pending: Vec<Migration> = files
        .iter()
        .filter(|m| !done.contains(&m.version))
        .cloned()
        .collect();
    for m in &pending {
        for (kind, name) in created_objects(&m.sql) {
            if existing(c, &kind, &name).await? {
                problems.push(format!(
                    "{kind} `{name}` already exists, but migration {:04}_{} that creates it is not in the ledger (half-applied, or created by hand)",
                    m.version, m.name
                ));
            }
        }
    }
    Ok(Status {
        applied,
        pending,
        problems,
    })
}

/// What `load` did.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Migrations applied now.
    pub applied: Vec<String>,
    /// Already applied before.
    pub already: usize,
    /// Statements executed.
    pub statements: usize,
    /// Time taken.
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Applies every pending migration, each in its own transaction with its ledger row; refuses a
/// database the ledger does not explain. Serialised across processes by an advisory lock.
pub async fn load(c: &mut PgConnection, files: &[Migration]) -> Result<LoadReport, SchemaError> {
    let t0 = Instant::now();
    sqlx::query("SELECT pg_advisory_lock(hashtext('stack schema load'))")
        .execute(&mut *c)
        .await
        .map_err(SchemaError::Query)?;
    let result = load_locked(c, files, t0).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext('stack schema load'))")
        .execute(&mut *c)
        .await;
    result
}

async fn load_locked(
    c: &mut PgConnection,
    files: &[Migration],
    t0: Instant,
) -> Result<LoadReport, SchemaError> {
    let status = inspect(c, files).await?;
    if !status.problems.is_empty() {
        return Err(SchemaError::Refused(status.problems));
    }
    let mut report = LoadReport {
        applied: Vec::new(),
        already: status.applied.len(),
        statements: 0,
        elapsed: Duration::ZERO,
    };
    if status.pending.is_empty() {
        report.elapsed = t0.elapsed();
        return Ok(report);
    }
    ensure_ledger(c).await?;
    for m in &status.pending {
        let done = apply_one(c, m, false).await?;
        report.statements += done.statements;
        report.applied.push(format!("{:04}_{}", m.version, m.name));
    }
    report.elapsed = t0.elapsed();
    Ok(report)
}

/// Creates the ledger table if it is missing.
pub async fn ensure_ledger(c: &mut PgConnection) -> Result<(), SchemaError> {
    sqlx::raw_sql(&format!(
        "CREATE TABLE IF NOT EXISTS {LEDGER} (version bigint PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), duration_ms integer NOT NULL)"
    ))
    .execute(&mut *c)
    .await
    .map_err(SchemaError::Query)?;
    Ok(())
}

/// A relation lock a migration's transaction held just before it committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldLock {
    /// `schema.table` (or `oid N` for a relation the migration dropped).
    pub relation: String,
    /// PostgreSQL's lock mode (`AccessExclusiveLock`, `ShareLock`, ...).
    pub mode: String,
    /// The migration created this relation: nobody else could have been waiting on it.
    pub created: bool,
}

/// One migration applied now.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedNow {
    /// Version.
    pub version: i64,
    /// Name.
    pub name: String,
    /// Statements in it.
    pub statements: usize,
    /// Milliseconds from its `BEGIN` to its `COMMIT`.
    pub elapsed_ms: u64,
    /// The relation locks it held before committing (when asked for).
    pub locks: Vec<HeldLock>,
}

/// Applies one migration in its own transaction with its ledger row. With `observe_locks`, the
/// relation locks the transaction holds after the migration's SQL are read from `pg_locks`
/// before it commits (a lock is held until commit, so that is every lock it took).
pub async fn apply_one(
    c: &mut PgConnection,
    m: &Migration,
    observe_locks: bool,
) -> Result<AppliedNow, SchemaError> {
    let t = Instant::now();
    let fail = |e: sqlx::Error| SchemaError::Migration {
        version: m.version,
        name: m.name.clone(),
        source: e,
    };
    let before: BTreeSet<i64> = if observe_locks {
        sqlx::query("SELECT oid::int8 FROM pg_class")
            .fetch_all(&mut *c)
            .await
            .map_err(SchemaError::Query)?
            .iter()
            .map(|r| r.get::<i64, _>(0))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut tx = c.begin().await.map_err(fail)?;
    sqlx::raw_sql(&m.sql)
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
    let mut locks = Vec::new();
    if observe_locks {
        let rows = sqlx::query(
            "SELECT l.relation::int8, coalesce(n.nspname || '.' || c.relname, 'oid ' || l.relation::text), l.mode \
             FROM pg_locks l LEFT JOIN pg_class c ON c.oid = l.relation \
             LEFT JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE l.pid = pg_backend_pid() AND l.granted AND l.locktype = 'relation' \
             AND coalesce(n.nspname, '') NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
             ORDER BY 2, 3",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(fail)?;
        locks = rows
            .iter()
            .map(|r| HeldLock {
                relation: r.get(1),
                mode: r.get(2),
                created: !before.contains(&r.get::<i64, _>(0)),
            })
            .collect();
    }
    let elapsed_ms = t.elapsed().as_millis() as u64;
    sqlx::query(&format!(
        "INSERT INTO {LEDGER} (version, name, sha256, duration_ms) VALUES ($1, $2, $3, $4)"
    ))
    .bind(m.version)
    .bind(&m.name)
    .bind(&m.sha256)
    .bind(elapsed_ms as i32)
    .execute(&mut *tx)
    .await
    .map_err(fail)?;
    tx.commit().await.map_err(fail)?;
    Ok(AppliedNow {
        version: m.version,
        name: m.name.clone(),
        statements: statements(&m.sql).len(),
        elapsed_ms: t.elapsed().as_millis() as u64,
        locks,
    })
}

/// `url` with its database replaced by `database` (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The database a URL names (`postgres` when it names none).
pub fn database_of(url: &str) -> String {
    let base = url.split('?').next().unwrap_or(url);
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    base[authority_start..]
        .split_once('/')
        .map(|(_, db)| db.to_string())
        .filter(|db| !db.is_empty())
        .unwrap_or_else(|| "postgres".to_string())
}

/// Drops everything in the `public` schema (tables, types, the ledger) and recreates it empty.
pub async fn drop_all(c: &mut PgConnection) -> Result<(), SchemaError> {
    sqlx::raw_sql("DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;")
        .execute(&mut *c)
        .await
        .map_err(SchemaError::Query)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_outside_quotes_comments_and_dollar_quotes() {
        let sql = "CREATE TABLE a (x text DEFAULT ';'); -- a; comment\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1; $$ LANGUAGE sql;\nINSERT INTO a VALUES ('x;y')";
        let s = statements(sql);
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s[1].contains("SELECT 1;"));
    }

    #[test]
    fn created_objects_are_found_with_their_kind() {
        let sql = "CREATE TABLE users (id int);\nCREATE UNIQUE INDEX users_x ON users (id);\nCREATE TABLE IF NOT EXISTS \"public\".other (x int);\nCREATE TYPE mood AS ENUM ('a');\nINSERT INTO users VALUES (1);";
        assert_eq!(
            created_objects(sql),
            vec![
                ("table".to_string(), "users".to_string()),
                ("index".to_string(), "users_x".to_string()),
                ("table".to_string(), "other".to_string()),
                ("type".to_string(), "mood".to_string()),
            ]
        );
    }

    #[test]
    fn a_url_names_its_database_and_can_name_another() {
        let url = "postgresql://u:p@h:5/boxlite?sslmode=disable";
        assert_eq!(database_of(url), "boxlite");
        assert_eq!(
            with_database(url, "postgres"),
            "postgresql://u:p@h:5/postgres?sslmode=disable"
        );
        assert_eq!(with_database("postgresql://h:5", "x"), "postgresql://h:5/x");
        assert_eq!(database_of("postgresql://h:5"), "postgres");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgresql://u:secret@h:1/db"),
            "postgresql://u:***@h:1/db"
        );
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
    }
}
