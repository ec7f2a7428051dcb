//! `stack schema rehearse`: the pending migrations applied to a copy of the database, never to
//! it. The copy is made with `CREATE DATABASE copy TEMPLATE db` (a file-level copy, which needs
//! the database to have no other session) or, when something is connected, with
//! `pg_dump | pg_restore` into a fresh database. Each migration runs in its own transaction as
//! `schema load` runs it, and the relation locks it holds are read from `pg_locks` before it
//! commits. The copy's ledger is then checked, and the copy dropped, whatever happened.

use std::time::Instant;

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::{Phase, Phases, RehearseError};
use crate::schema::{self, AppliedNow, Migration, SchemaError};

/// What a schema rehearsal did.
#[derive(Debug, Serialize)]
pub struct SchemaRehearsal {
    /// The real database (untouched).
    pub database: String,
    /// The copy the migrations ran on (dropped at the end).
    pub copy: String,
    /// How the copy was made: `template` or `pg_dump`.
    pub method: String,
    /// Migrations already applied.
    pub already: usize,
    /// The migrations applied to the copy, with times and locks.
    pub migrations: Vec<AppliedNow>,
    /// Did the copy's ledger show every migration applied, with nothing unexplained?
    pub ledger_verified: bool,
    /// Timed phases.
    pub phases: Vec<Phase>,
    /// Why it failed, if it did.
    pub failed: Option<String>,
    /// The failure, for the exit status.
    #[serde(skip)]
    pub failure: Option<RehearseError>,
}

impl SchemaRehearsal {
    /// `Err` when the rehearsal failed.
    pub fn into_result(mut self) -> Result<SchemaRehearsal, RehearseError> {
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(self),
        }
    }
}

fn copy_err(what: &str) -> impl FnOnce(String) -> RehearseError + '_ {
    move |detail| RehearseError::Copy {
        what: what.to_string(),
        detail,
    }
}

/// Rehearses the pending migrations `files` against a copy of the database at `url`. `Ok` with
/// no migrations when none is pending; `Err` only when the rehearsal could not start (database
/// unreachable, schema refused); a failure on the copy is in the report.
pub async fn rehearse(url: &str, files: &[Migration]) -> Result<SchemaRehearsal, RehearseError> {
    let mut phases = Phases::default();
    let t = Instant::now();
    let mut real = schema::connect(url, schema::CONNECT_TIMEOUT).await?;
    let status = schema::inspect(&mut real, files).await?;
    if !status.problems.is_empty() {
        return Err(SchemaError::Refused(status.problems).into());
    }
    drop(real);
    let database = schema::database_of(url);
    let mut report = SchemaRehearsal {
        // PostgreSQL names are at most 63 bytes.
        copy: format!("{}_rehearse", database.chars().take(20).collect::<String>()),
        database,
        method: String::new(),
        already: status.applied.len(),
        migrations: Vec::new(),
        ledger_verified: false,
        phases: Vec::new(),
        failed: None,
        failure: None,
    };
    phases.push(
        "inspect",
        t,
        format!(
            "{} applied, {} pending",
            status.applied.len(),
            status.pending.len()
        ),
    );
    if status.pending.is_empty() {
        report.ledger_verified = true;
        report.phases = phases.done;
        return Ok(report);
    }
    let admin_url = schema::with_database(url, "postgres");
    let mut admin = schema::connect(&admin_url, schema::CONNECT_TIMEOUT).await?;
    // One rehearsal at a time per server (the lock goes with this connection), so the copy's
    // fixed name is this rehearsal's, and a copy left by one that was killed is dropped here.
    sqlx::query("SELECT pg_advisory_lock(hashtext('stack schema rehearse'))")
        .execute(&mut admin)
        .await
        .map_err(SchemaError::Query)?;
    let copy_ident = ident(&report.copy);
    drop_copy(&mut admin, &copy_ident).await?;
    let t = Instant::now();
    let made = make_copy(&mut admin, url, &report.database, &report.copy).await;
    let outcome = match made {
        Ok(method) => {
            report.method = method.to_string();
            phases.push(
                "copy",
                t,
                format!("{} -> {} ({method})", report.database, report.copy),
            );
            run_on_copy(url, &status.pending, files, &mut report, &mut phases).await
        }
        Err(e) => Err(e),
    };
    let t = Instant::now();
    let dropped = drop_copy(&mut admin, &copy_ident).await;
    phases.push("drop copy", t, report.copy.clone());
    report.phases = phases.done;
    if let Err(e) = outcome.and(dropped) {
        report.failed = Some(e.to_string());
        report.failure = Some(e);
    }
    Ok(report)
}

/// A quoted identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

async fn drop_copy(admin: &mut PgConnection, copy: &str) -> Result<(), RehearseError> {
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {copy} WITH (FORCE)"))
        .execute(&mut *admin)
        .await
        .map_err(|e| copy_err("drop the copy")(e.to_string()))?;
    Ok(())
}

/// Makes the copy; returns how.
async fn make_copy(
    admin: &mut PgConnection,
    url: &str,
    database: &str,
    copy: &str,
) -> Result<&'static str, RehearseError> {
    // PostgreSQL waits 5 s for the template's other sessions to go before it gives up: ask first.
    let sessions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
            .bind(database)
            .fetch_one(&mut *admin)
            .await
            .map_err(|e| copy_err("count the database's sessions")(e.to_string()))?;
    if sessions == 0 {
        let template = sqlx::raw_sql(&format!(
            "CREATE DATABASE {} TEMPLATE {}",
            ident(copy),
            ident(database)
        ))
        .execute(&mut *admin)
        .await;
        if template.is_ok() {
            return Ok("template");
        }
    }
    // Other sessions are connected to the database: dump it into a fresh one instead.
    sqlx::raw_sql(&format!("CREATE DATABASE {}", ident(copy)))
        .execute(&mut *admin)
        .await
        .map_err(|e| copy_err("create the copy")(e.to_string()))?;
    let copy_url = schema::with_database(url, copy);
    let (url, copy_url) = (url.to_string(), copy_url.clone());
    tokio::task::spawn_blocking(move || dump_into(&url, &copy_url))
        .await
        .map_err(|e| copy_err("copy with pg_dump | pg_restore")(e.to_string()))??;
    Ok("pg_dump")
}

/// `pg_dump --format=custom FROM | pg_restore --dbname=TO`.
fn dump_into(from: &str, to: &str) -> Result<(), RehearseError> {
    use std::process::{Command, Stdio};
    let fail = copy_err("copy with pg_dump | pg_restore");
    let mut dump = Command::new("pg_dump")
        .args(["--format=custom", &format!("--dbname={from}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| copy_err("run pg_dump")(e.to_string()))?;
    let Some(out) = dump.stdout.take() else {
        return Err(fail("pg_dump has no output".into()));
    };
    let restore = Command::new("pg_restore")
        .args(["--exit-on-error", &format!("--dbname={to}")])
        .stdin(out)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| copy_err("run pg_restore")(e.to_string()))?;
    let dumped = dump
        .wait_with_output()
        .map_err(|e| copy_err("wait for pg_dump")(e.to_string()))?;
    for (ok, stderr) in [
        (dumped.status.success(), dumped.stderr),
        (restore.status.success(), restore.stderr),
    ] {
        if !ok {
            return Err(copy_err("copy with pg_dump | pg_restore")(
                String::from_utf8_lossy(&stderr).trim().to_string(),
            ));
        }
    }
    Ok(())
}

async fn run_on_copy(
    url: &str,
    pending: &[Migration],
    files: &[Migration],
    report: &mut SchemaRehearsal,
    phases: &mut Phases,
) -> Result<(), RehearseError> {
    let copy_url = schema::with_database(url, &report.copy);
    let mut c = schema::connect(&copy_url, schema::CONNECT_TIMEOUT).await?;
    schema::ensure_ledger(&mut c).await?;
    for m in pending {
        let t = Instant::now();
        match schema::apply_one(&mut c, m, true).await {
            Ok(done) => {
                let locks = done
                    .locks
                    .iter()
                    .filter(|l| !l.created)
                    .map(|l| format!("{} on {}", l.mode, l.relation))
                    .collect::<Vec<_>>();
                let detail = if locks.is_empty() {
                    "no lock on an existing relation".to_string()
                } else {
                    locks.join(", ")
                };
                phases.push(&format!("{:04}_{}", m.version, m.name), t, detail);
                report.migrations.push(done);
            }
            Err(source) => {
                phases.push(&format!("{:04}_{}", m.version, m.name), t, "FAILED");
                return Err(RehearseError::Migration {
                    copy: report.copy.clone(),
                    database: report.database.clone(),
                    source,
                });
            }
        }
    }
    let t = Instant::now();
    let after = schema::inspect(&mut c, files).await?;
    let mut problems = after.problems;
    problems.extend(
        after
            .pending
            .iter()
            .map(|m| format!("{:04}_{} is still pending", m.version, m.name)),
    );
    if !problems.is_empty() {
        return Err(RehearseError::Ledger(problems));
    }
    report.ledger_verified = true;
    phases.push(
        "verify ledger",
        t,
        format!("{} migrations in the copy's ledger", after.applied.len()),
    );
    let _ = c.close().await;
    Ok(())
}
