//! Taking a snapshot of the running stack, each service in the way that is consistent for it
//! (see [`Role`]). The snapshot is written under `<name>.partial/` and renamed into place once
//! its manifest is complete, so a failed or interrupted backup never looks like a snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use sqlx::{Connection, Row};

use super::roles::{self, Role, StatefulService, BACKUPS_BUCKET};
use super::{
    hash_file, private_dir, private_file, regular_files, FileEntry, Manifest, ObjectEntry,
    ServiceEntry, Snapshot, SnapshotError, FORMAT_VERSION, MANIFEST,
};
use crate::spec::{ProbeSpec, Stack};

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TakeReport {
    /// The snapshot's directory.
    pub snapshot: PathBuf,
    /// Its name (the timestamp).
    pub name: String,
    /// Total bytes of its files.
    pub size: u64,
    /// Number of files.
    pub files: usize,
    /// Per service: what was taken.
    pub services: Vec<ServiceEntry>,
    /// Milliseconds taken.
    pub elapsed_ms: u64,
}

/// Takes a snapshot of every stateful service of `stack` into a new directory under `dest`.
pub async fn take(stack: &Stack, dest: &Path) -> Result<(Snapshot, TakeReport), SnapshotError> {
    let t0 = Instant::now();
    private_dir(dest)?;
    let created_at = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let name = unique_name(dest, &created_at);
    let partial = dest.join(format!("{name}.partial"));
    let fin = dest.join(&name);
    let result = write(stack, &partial, created_at).await;
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, &fin).map_err(SnapshotError::io(&fin))?;
    let snapshot = Snapshot {
        dir: fin.clone(),
        manifest,
    };
    let report = TakeReport {
        snapshot: fin,
        name,
        size: snapshot.size(),
        files: snapshot.manifest.files.len(),
        services: snapshot.manifest.services.clone(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    Ok((snapshot, report))
}

/// `20261208T011500Z` from an RFC 3339 time, with `-2`, `-3`... when taken twice in a second.
fn unique_name(dest: &Path, created_at: &str) -> String {
    let base: String = created_at
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let mut name = base.clone();
    let mut n = 1;
    while dest.join(&name).exists() || dest.join(format!("{name}.partial")).exists() {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

async fn write(stack: &Stack, dir: &Path, created_at: String) -> Result<Manifest, SnapshotError> {
    private_dir(dir)?;
    let mut services = Vec::new();
    for s in roles::stateful(stack) {
        let sub = dir.join(&s.spec.name);
        private_dir(&sub)?;
        let mut entry = ServiceEntry {
            service: s.spec.name.clone(),
            role: s.role,
            how: s.role.how().to_string(),
            dir: s.spec.name.clone(),
            items: Vec::new(),
            objects: Vec::new(),
        };
        match s.role {
            Role::Postgres => entry.items = take_postgres(&s, &sub).await?,
            Role::Redis => take_redis(&s, &sub).await?,
            Role::S3 => {
                let (buckets, objects) = take_s3(&s, &sub).await?;
                entry.items = buckets;
                entry.objects = objects;
            }
            Role::Files => copy_tree(&s.spec.data_dir, &sub, &mut Vec::new())?,
        }
        services.push(entry);
    }
    take_admin_key(stack, dir)?;
    let files = list_files(dir)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        stack: stack.name.clone(),
        created_at,
        services,
        files,
    };
    let path = dir.join(MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| SnapshotError::Io {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    std::fs::write(private_path(&path)?, text).map_err(SnapshotError::io(&path))?;
    Ok(manifest)
}

/// The admin API key goes with the data: the database holds only its hash, so a snapshot
/// restored onto a new state dir (after `reset --nuke`, or on another machine) brings back the
/// key that hash is of, and the `ADMIN_API_KEY` scripts use keeps working. The stack's other
/// generated secrets are internal and made again consistently.
fn take_admin_key(stack: &Stack, dir: &Path) -> Result<(), SnapshotError> {
    let from = crate::layout::Layout::new(stack.state_dir.clone())
        .secrets_dir()
        .join(crate::seed::ADMIN_API_KEY);
    let Ok(key) = std::fs::read(&from) else {
        return Ok(());
    };
    let to_dir = dir.join(super::SECRETS);
    private_dir(&to_dir)?;
    let to = to_dir.join(crate::seed::ADMIN_API_KEY);
    std::fs::write(private_path(&to)?, key).map_err(SnapshotError::io(&to))
}

/// Creates `path` with mode 0600 (so a later write keeps that mode) and returns it.
fn private_path(path: &Path) -> Result<&Path, SnapshotError> {
    private_file(path)?;
    Ok(path)
}

/// Every regular file under `dir` but the manifest, with its size and checksum.
fn list_files(dir: &Path) -> Result<Vec<FileEntry>, SnapshotError> {
    let mut out = Vec::new();
    for (rel, path) in regular_files(dir)? {
        if rel == MANIFEST {
            continue;
        }
        let (sha256, size) = hash_file(&path)?;
        out.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(out)
}

/// A PostgreSQL service's connection URL for `database`, from its healthcheck.
pub fn postgres_url(probe: &ProbeSpec, database: &str) -> Option<String> {
    let ProbeSpec::Postgres {
        host,
        port,
        user,
        password,
        ..
    } = probe
    else {
        return None;
    };
    let auth = match password {
        Some(p) => format!("{user}:{p}"),
        None => user.clone(),
    };
    Some(format!("postgresql://{auth}@{host}:{port}/{database}"))
}

/// The database a PostgreSQL service's healthcheck connects to.
pub fn postgres_database(probe: &ProbeSpec) -> Option<&str> {
    match probe {
        ProbeSpec::Postgres { database, .. } => Some(database),
        _ => None,
    }
}

/// The probe of a stateful service (it has one: that is how its role was found).
pub(crate) fn probe<'a>(s: &StatefulService<'a>) -> &'a ProbeSpec {
    match &s.spec.healthcheck {
        Some(h) => &h.probe,
        None => unreachable!("a stateful service is found by its healthcheck"),
    }
}

/// How long a backup waits for a server to answer a connect.
const CONNECT: Duration = Duration::from_secs(5);

/// The databases of a PostgreSQL service worth taking: every one that accepts connections but
/// the templates and the `postgres` maintenance database.
pub(crate) async fn databases(s: &StatefulService<'_>) -> Result<Vec<String>, SnapshotError> {
    let p = probe(s);
    let main = postgres_database(p).unwrap_or("postgres");
    let url = postgres_url(p, main).unwrap_or_default();
    let db_err = |what: &str| SnapshotError::database(&s.spec.name, what);
    let mut c = tokio::time::timeout(CONNECT, sqlx::PgConnection::connect(&url))
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
        .map_err(db_err("connect"))?;
    let rows = sqlx::query(
        "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> 'postgres' ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .map_err(db_err("list databases"))?;
    Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
}

/// Runs `argv` with stdout into `out` (when given), failing with its stderr.
pub(crate) async fn run_tool(
    service: &str,
    argv: &[String],
    out: Option<std::fs::File>,
    remedy: &str,
) -> Result<(), SnapshotError> {
    let tool = |detail: String| SnapshotError::Tool {
        service: service.to_string(),
        program: argv.first().cloned().unwrap_or_default(),
        detail,
        remedy: remedy.to_string(),
    };
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    match out {
        Some(f) => cmd.stdout(f),
        None => cmd.stdout(std::process::Stdio::null()),
    };
    // Not `output()`: it would pipe stdout whatever was asked.
    let output = cmd
        .spawn()
        .map_err(|e| tool(e.to_string()))?
        .wait_with_output()
        .await
        .map_err(|e| tool(e.to_string()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(tool(format!("{}: {}", output.status, stderr.trim())))
}

async fn take_postgres(s: &StatefulService<'_>, sub: &Path) -> Result<Vec<String>, SnapshotError> {
    let dbs = databases(s).await?;
    for db in &dbs {
        let url = postgres_url(probe(s), db).unwrap_or_default();
        let file = sub.join(format!("{db}.dump"));
        let out = private_file(&file)?;
        let argv = [
            "pg_dump".to_string(),
            "--format=custom".into(),
            format!("--dbname={url}"),
        ];
        run_tool(
            &s.spec.name,
            &argv,
            Some(out),
            "install the PostgreSQL client (scripts/install-deps.sh), and check the database with `stack status`",
        )
        .await?;
    }
    Ok(dbs)
}

/// A Redis service's host and port, from its healthcheck.
pub(crate) fn redis_addr(s: &StatefulService<'_>) -> (String, u16) {
    match probe(s) {
        ProbeSpec::Redis { host, port } => (host.clone(), *port),
        _ => ("127.0.0.1".into(), 6379),
    }
}

/// The RDB file's name in a snapshot.
pub const RDB: &str = "dump.rdb";

/// A connection to a Redis service.
pub(crate) async fn redis_connection(
    s: &StatefulService<'_>,
) -> Result<redis::aio::MultiplexedConnection, SnapshotError> {
    let (host, port) = redis_addr(s);
    let err = |e| SnapshotError::redis(&s.spec.name, "connect")(e);
    redis::Client::open(format!("redis://{host}:{port}/"))
        .map_err(err)?
        .get_multiplexed_async_connection()
        .await
        .map_err(err)
}

/// One field of `INFO persistence`.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// The server's RDB, consistent as of one moment: a background save (`BGSAVE SCHEDULE` waits
/// for a running one or an AOF rewrite), waited on, then its file copied. Replication
/// (`redis-cli --rdb`) would give the same bytes, but a diskless sync waits 5 s first.
async fn take_redis(s: &StatefulService<'_>, sub: &Path) -> Result<(), SnapshotError> {
    let mut c = redis_connection(s).await?;
    let err = |what: &str| SnapshotError::redis(&s.spec.name, what);
    let info = || redis::cmd("INFO").arg("persistence").to_owned();
    let text: String = info()
        .query_async(&mut c)
        .await
        .map_err(err("INFO persistence"))?;
    let saves = |t: &str| info_field(t, "rdb_saves").and_then(|n| n.parse::<u64>().ok());
    let before = saves(&text).unwrap_or(0);
    redis::cmd("BGSAVE")
        .arg("SCHEDULE")
        .query_async::<()>(&mut c)
        .await
        .map_err(err("BGSAVE"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let text: String = info()
            .query_async(&mut c)
            .await
            .map_err(err("INFO persistence"))?;
        let idle = info_field(&text, "rdb_bgsave_in_progress") == Some("0");
        if idle && saves(&text).unwrap_or(0) > before {
            if info_field(&text, "rdb_last_bgsave_status") != Some("ok") {
                return Err(SnapshotError::Tool {
                    service: s.spec.name.clone(),
                    program: "BGSAVE".into(),
                    detail: "the background save failed".into(),
                    remedy: format!("see `stack logs {}`", s.spec.name),
                });
            }
            break;
        }
        if Instant::now() > deadline {
            return Err(SnapshotError::Tool {
                service: s.spec.name.clone(),
                program: "BGSAVE".into(),
                detail: "still saving after 10 minutes".into(),
                remedy: format!("see `stack logs {}`", s.spec.name),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut path = PathBuf::new();
    for key in ["dir", "dbfilename"] {
        let (_, value): (String, String) = redis::cmd("CONFIG")
            .arg("GET")
            .arg(key)
            .query_async(&mut c)
            .await
            .map_err(err("CONFIG GET"))?;
        path.push(value);
    }
    let file = sub.join(RDB);
    let mut src = std::fs::File::open(&path).map_err(SnapshotError::io(&path))?;
    let mut dst = private_file(&file)?;
    std::io::copy(&mut src, &mut dst).map_err(SnapshotError::io(&file))?;
    Ok(())
}

/// An S3 client for an S3 service, from its healthcheck.
pub(crate) fn s3_client(s: &StatefulService<'_>) -> Option<aws_sdk_s3::Client> {
    crate::s3::client_for(probe(s))
}

/// An S3 failure of `service` while doing `what`.
pub(crate) fn s3_err<E: std::error::Error + 'static>(
    service: &str,
    what: String,
) -> impl FnOnce(E) -> SnapshotError + '_ {
    move |e| SnapshotError::S3 {
        service: service.to_string(),
        what,
        detail: aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
    }
}

/// The buckets of an S3 service a snapshot takes: all but [`BACKUPS_BUCKET`].
pub(crate) async fn buckets(
    s: &StatefulService<'_>,
    client: &aws_sdk_s3::Client,
) -> Result<Vec<String>, SnapshotError> {
    let mut names = crate::s3::bucket_names(client)
        .await
        .map_err(s3_err(&s.spec.name, "list buckets".into()))?;
    names.retain(|b| b != BACKUPS_BUCKET);
    names.sort();
    Ok(names)
}

/// Every key of `bucket`.
pub(crate) async fn keys(
    service: &str,
    client: &aws_sdk_s3::Client,
    bucket: &str,
) -> Result<Vec<String>, SnapshotError> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token.take())
            .send()
            .await
            .map_err(s3_err(service, format!("list bucket {bucket}")))?;
        out.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(String::from)),
        );
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// A file as an object's body. Read whole: a body streamed from a file is sent with
/// `aws-chunked` encoding and a trailing checksum, which Garage refuses ("Invalid payload
/// signature").
pub(crate) fn read_body(path: &Path) -> Result<aws_sdk_s3::primitives::ByteStream, SnapshotError> {
    let bytes = std::fs::read(path).map_err(SnapshotError::io(path))?;
    Ok(bytes.into())
}

/// The body of `bucket/key`.
pub(crate) async fn get_object(
    service: &str,
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Vec<u8>, SnapshotError> {
    let what = || format!("get s3://{bucket}/{key}");
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(s3_err(service, what()))?;
    let body = out.body.collect().await.map_err(s3_err(service, what()))?;
    Ok(body.into_bytes().to_vec())
}

async fn take_s3(
    s: &StatefulService<'_>,
    sub: &Path,
) -> Result<(Vec<String>, Vec<ObjectEntry>), SnapshotError> {
    let Some(client) = s3_client(s) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let names = buckets(s, &client).await?;
    let mut objects = Vec::new();
    for bucket in &names {
        private_dir(&sub.join(bucket))?;
        for (i, key) in keys(&s.spec.name, &client, bucket)
            .await?
            .into_iter()
            .enumerate()
        {
            let body = get_object(&s.spec.name, &client, bucket, &key).await?;
            // Objects are stored by number: a key is not always a safe file name.
            let rel = format!("{}/{bucket}/{:06}", s.spec.name, i + 1);
            let path = sub.join(bucket).join(format!("{:06}", i + 1));
            std::fs::write(private_path(&path)?, body).map_err(SnapshotError::io(&path))?;
            objects.push(ObjectEntry {
                bucket: bucket.clone(),
                key,
                file: rel,
            });
        }
    }
    Ok((names, objects))
}

/// Is this file a writer's temporary (written then renamed into place)? Such files are not
/// state: a copy skips them.
pub(crate) fn is_temporary(name: &str) -> bool {
    name.ends_with(".tmp") || name.ends_with(".partial")
}

/// Copies every regular file under `from` to the same relative path under `to` (directories
/// 0700, files 0600). Sockets, links and writers'
/// temporaries are skipped. The copied relative paths are appended to `copied`.
pub(crate) fn copy_tree(
    from: &Path,
    to: &Path,
    copied: &mut Vec<PathBuf>,
) -> Result<(), SnapshotError> {
    if !from.exists() {
        return Ok(());
    }
    for e in walkdir::WalkDir::new(from).sort_by_file_name() {
        let e = e.map_err(|e| SnapshotError::Io {
            path: from.to_path_buf(),
            source: e.into(),
        })?;
        let Ok(rel) = e.path().strip_prefix(from) else {
            continue;
        };
        let target = to.join(rel);
        if e.file_type().is_dir() {
            private_dir(&target)?;
        } else if e.file_type().is_file() && !is_temporary(&e.file_name().to_string_lossy()) {
            let mut src = std::fs::File::open(e.path()).map_err(SnapshotError::io(e.path()))?;
            let mut dst = private_file(&target)?;
            std::io::copy(&mut src, &mut dst).map_err(SnapshotError::io(&target))?;
            copied.push(rel.to_path_buf());
        }
    }
    Ok(())
}
