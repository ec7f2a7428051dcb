//! Restoring a verified snapshot: every service's data is replaced, never merged. PostgreSQL:
//! each database dropped (its sessions ended), recreated and `pg_restore`d. Redis and the
//! file-kept services (registry, OIDC provider): stopped through the engine, their data put in
//! place, started again with everything the stop took down. S3: each bucket emptied, then
//! filled with the snapshot's objects.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::roles::{self, Role, StatefulService, BACKUPS_BUCKET};
use super::take::{self, postgres_url, read_body, run_tool, s3_client, s3_err, RDB};
use super::{private_dir, ServiceEntry, Snapshot, SnapshotError};
use crate::engine::Engine;
use crate::spec::Stack;

/// A snapshot whose every file matched its manifest when it was verified.
#[derive(Debug)]
pub struct Verified<'a>(&'a Snapshot);

impl Snapshot {
    /// [`Snapshot::verify`], returning the proof `restore` asks for.
    pub fn verified(&self) -> Result<Verified<'_>, SnapshotError> {
        self.verify()?;
        Ok(Verified(self))
    }
}

/// The snapshot's services matched with this stack's, refusing one the stack lacks or runs in
/// another role.
fn matched<'a, 's>(
    stack: &'a Stack,
    snapshot: &'s Snapshot,
) -> Result<Vec<(&'s ServiceEntry, StatefulService<'a>)>, SnapshotError> {
    let live = roles::stateful(stack);
    snapshot
        .manifest
        .services
        .iter()
        .map(|entry| {
            live.iter()
                .find(|s| s.spec.name == entry.service && s.role == entry.role)
                .map(|s| (entry, s.clone()))
                .ok_or_else(|| SnapshotError::Corrupt {
                    snapshot: snapshot.dir.clone(),
                    file: super::MANIFEST.into(),
                    problem: format!(
                        "service `{}` ({:?}) is not a stateful service of this stack in that role",
                        entry.service, entry.role
                    ),
                })
        })
        .collect()
}

/// What a restore of `snapshot` into `stack` will do, one step a line.
pub fn plan(stack: &Stack, snapshot: &Snapshot) -> Result<Vec<String>, SnapshotError> {
    let mut steps = Vec::new();
    for (entry, s) in matched(stack, snapshot)? {
        let name = &entry.service;
        steps.push(match s.role {
            Role::Postgres => format!(
                "{name}: drop and recreate the databases {} (their sessions are ended), then pg_restore each",
                entry.items.join(", ")
            ),
            Role::Redis => format!(
                "{name}: stop it (and what depends on it), replace its data with the snapshot's RDB, start again"
            ),
            Role::S3 => format!(
                "{name}: empty every bucket but `{BACKUPS_BUCKET}`, then upload {} objects into {}",
                entry.objects.len(),
                entry.items.join(", ")
            ),
            Role::Files => format!(
                "{name}: stop it (and what depends on it), replace {} with the snapshot's copy, start again",
                s.spec.data_dir.display()
            ),
        });
    }
    let components: Vec<String> = crate::reset::components(stack).into_iter().collect();
    if !components.is_empty() {
        steps.insert(
            0,
            format!(
                "stop {} (those running) while the data is replaced, start them again after",
                components.join(", ")
            ),
        );
    }
    let left = roles::left_out(stack);
    if !left.is_empty() {
        steps.push(format!("untouched: {}", left.join(", ")));
    }
    Ok(steps)
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreReport {
    /// Per service, what was put back.
    pub services: Vec<String>,
    /// Services stopped and started again.
    pub restarted: Vec<String>,
    /// Milliseconds taken.
    pub elapsed_ms: u64,
}

/// What a restore starts again once the data is in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Every service it stopped, the platform's components included.
    Everything,
    /// The data services only: the components stay stopped, so nothing writes to the restored
    /// data until the caller starts them (a rehearsal compares it first).
    DataServices,
}

/// Replaces the data of `engine`'s stack with the verified snapshot's; the services stopped for
/// it are started again (all, or the data services only, per `restart`) and waited on until
/// healthy.
pub async fn restore(
    engine: &Engine,
    snapshot: Verified<'_>,
    restart: Restart,
    cancel: CancellationToken,
) -> Result<RestoreReport, SnapshotError> {
    let t0 = Instant::now();
    let snapshot = snapshot.0;
    let pairs = matched(engine.stack(), snapshot)?;
    let offline: Vec<String> = pairs
        .iter()
        .filter(|(_, s)| matches!(s.role, Role::Redis | Role::Files))
        .map(|(e, _)| e.service.clone())
        .collect();
    let online: Vec<String> = pairs
        .iter()
        .filter(|(_, s)| matches!(s.role, Role::Postgres | Role::S3))
        .map(|(e, _)| e.service.clone())
        .collect();
    let mut report = RestoreReport::default();
    let mut stopped: BTreeSet<String> = BTreeSet::new();
    // The platform's components (and what depends on them) hold connections and caches of
    // the data being replaced: they are stopped first and started again after.
    let components: Vec<String> = crate::reset::components(engine.stack())
        .into_iter()
        .collect();
    let running = engine.running(&components);
    if !running.is_empty() {
        stopped.extend(engine.down(&running).await?);
    }
    if !offline.is_empty() {
        stopped.extend(engine.down(&offline).await?);
        stopped.extend(offline.iter().cloned());
    }
    for (entry, s) in pairs.iter().filter(|(_, s)| offline.contains(&s.spec.name)) {
        let from = snapshot.dir.join(&entry.dir);
        match s.role {
            Role::Redis => put_rdb(&from.join(RDB), &s.spec.data_dir)?,
            _ => replace_dir(&from, &s.spec.data_dir)?,
        }
        report
            .services
            .push(format!("{}: data replaced", entry.service));
    }
    if !online.is_empty() {
        engine.up(&online, cancel.clone()).await?;
    }
    for (entry, s) in pairs.iter().filter(|(_, s)| online.contains(&s.spec.name)) {
        let from = snapshot.dir.join(&entry.dir);
        let line = match s.role {
            Role::Postgres => restore_postgres(s, entry, &from).await?,
            _ => restore_s3(s, entry, &snapshot.dir).await?,
        };
        report.services.push(line);
    }
    // The admin API key the restored database holds the hash of (see `take`).
    let key = snapshot
        .dir
        .join(super::SECRETS)
        .join(crate::seed::ADMIN_API_KEY);
    if key.is_file() {
        let to = engine
            .layout()
            .secrets_dir()
            .join(crate::seed::ADMIN_API_KEY);
        let bytes = std::fs::read(&key).map_err(SnapshotError::io(&key))?;
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(SnapshotError::io(dir))?;
        }
        let mut file = super::private_file(&to)?;
        std::io::Write::write_all(&mut file, &bytes).map_err(SnapshotError::io(&to))?;
        report
            .services
            .push("the admin API key: put back".to_string());
    }
    if restart == Restart::DataServices {
        stopped.retain(|s| !components.contains(s));
    }
    if !stopped.is_empty() {
        let names: Vec<String> = stopped.into_iter().collect();
        engine.up(&names, cancel).await?;
        report.restarted = names;
    }
    report.elapsed_ms = t0.elapsed().as_millis() as u64;
    Ok(report)
}

/// The owner of `dir` (or of its parent when it does not exist): what a restored file gets.
fn owner(dir: &Path) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .or_else(|_| std::fs::metadata(dir.parent().unwrap_or(dir)))
        .ok()?;
    Some((meta.uid(), meta.gid()))
}

/// Gives `path` and everything under it to `owner`.
fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> Result<(), SnapshotError> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    for e in walkdir::WalkDir::new(path) {
        let e = e.map_err(|e| SnapshotError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid))
            .map_err(SnapshotError::io(e.path()))?;
    }
    Ok(())
}

/// Empties `dir` (keeping the directory itself, and its owner) or creates it.
fn clear_dir(dir: &Path) -> Result<(), SnapshotError> {
    if !dir.exists() {
        return private_dir(dir);
    }
    for e in std::fs::read_dir(dir).map_err(SnapshotError::io(dir))? {
        let e = e.map_err(SnapshotError::io(dir))?;
        let path = e.path();
        let gone = if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        gone.map_err(SnapshotError::io(&path))?;
    }
    Ok(())
}

/// Replaces the contents of `data_dir` with the snapshot's copy in `from`.
fn replace_dir(from: &Path, data_dir: &Path) -> Result<(), SnapshotError> {
    let who = owner(data_dir);
    clear_dir(data_dir)?;
    take::copy_tree(from, data_dir, &mut Vec::new())?;
    chown_tree(data_dir, who)
}

/// Puts an RDB in place as Redis reads it at start: `dump.rdb`, and, for a server with the
/// append-only file on (which then ignores `dump.rdb`), as the base of a fresh multi-part AOF.
fn put_rdb(rdb: &Path, data_dir: &Path) -> Result<(), SnapshotError> {
    let who = owner(data_dir);
    clear_dir(data_dir)?;
    let copy = |to: &Path| -> Result<(), SnapshotError> {
        let mut src = std::fs::File::open(rdb).map_err(SnapshotError::io(rdb))?;
        let mut dst = super::private_file(to)?;
        std::io::copy(&mut src, &mut dst).map_err(SnapshotError::io(to))?;
        Ok(())
    };
    copy(&data_dir.join(RDB))?;
    let aof = data_dir.join("appendonlydir");
    private_dir(&aof)?;
    copy(&aof.join("appendonly.aof.1.base.rdb"))?;
    let manifest = aof.join("appendonly.aof.manifest");
    std::fs::write(&manifest, "file appendonly.aof.1.base.rdb seq 1 type b\n")
        .map_err(SnapshotError::io(&manifest))?;
    chown_tree(data_dir, who)
}

async fn restore_postgres(
    s: &StatefulService<'_>,
    entry: &ServiceEntry,
    from: &Path,
) -> Result<String, SnapshotError> {
    let probe = take::probe(s);
    let admin = postgres_url(probe, "postgres").unwrap_or_default();
    let db_err = |what: String| SnapshotError::database(&s.spec.name, &what);
    let mut c = sqlx::PgConnection::connect(&admin).await.map_err(db_err(
        "connect to the maintenance database `postgres`".into(),
    ))?;
    for db in &entry.items {
        let ident = format!("\"{}\"", db.replace('"', "\"\""));
        sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {ident} WITH (FORCE)"))
            .execute(&mut c)
            .await
            .map_err(db_err(format!("drop database {db}")))?;
        sqlx::raw_sql(&format!("CREATE DATABASE {ident}"))
            .execute(&mut c)
            .await
            .map_err(db_err(format!("create database {db}")))?;
        let url = postgres_url(probe, db).unwrap_or_default();
        let argv = [
            "pg_restore".to_string(),
            "--exit-on-error".into(),
            format!("--dbname={url}"),
            from.join(format!("{db}.dump"))
                .to_string_lossy()
                .into_owned(),
        ];
        run_tool(
            &s.spec.name,
            &argv,
            None,
            "install the PostgreSQL client (scripts/install-deps.sh); run this restore again, it starts over",
        )
        .await?;
    }
    Ok(format!(
        "{}: restored databases {}",
        s.spec.name,
        entry.items.join(", ")
    ))
}

async fn restore_s3(
    s: &StatefulService<'_>,
    entry: &ServiceEntry,
    root: &Path,
) -> Result<String, SnapshotError> {
    let Some(client) = s3_client(s) else {
        return Ok(format!("{}: no client", s.spec.name));
    };
    let name = &s.spec.name;
    let wanted: Vec<&str> = entry.items.iter().map(String::as_str).collect();
    crate::s3::ensure_buckets(&client, &wanted)
        .await
        .map_err(|e| SnapshotError::S3 {
            service: name.clone(),
            what: "create buckets".into(),
            detail: e.to_string(),
        })?;
    for bucket in take::buckets(s, &client).await? {
        crate::s3::empty_bucket(&client, &bucket)
            .await
            .map_err(|e| SnapshotError::S3 {
                service: name.clone(),
                what: format!("empty bucket {bucket}"),
                detail: e.to_string(),
            })?;
    }
    for o in &entry.objects {
        let path = root.join(&o.file);
        let body = read_body(&path)?;
        client
            .put_object()
            .bucket(&o.bucket)
            .key(&o.key)
            .body(body)
            .send()
            .await
            .map_err(s3_err(name, format!("put s3://{}/{}", o.bucket, o.key)))?;
    }
    Ok(format!(
        "{name}: {} objects into {}",
        entry.objects.len(),
        entry.items.join(", ")
    ))
}
