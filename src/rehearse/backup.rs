//! `stack rehearse backup`: known data written, every datum fingerprinted, a snapshot taken,
//! the state dir deleted (`reset --nuke`), the stack started cold, the snapshot restored, and
//! every datum fingerprinted again: before and after must be identical. The known data (rows
//! in a scratch table, Redis keys, an object) makes the rehearsal prove something even on an
//! empty stack; it is removed at the end.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

use super::{Phase, Phases, RehearseError};
use crate::engine::Engine;
use crate::snapshot::fingerprint::{fingerprint, Counts};
use crate::snapshot::roles::{self, Role, StatefulService};
use crate::snapshot::{restore, take};

/// The scratch table, Redis key prefix and object key the rehearsal writes.
pub const SCRATCH: &str = "stack_rehearsal";

/// What a backup rehearsal found.
#[derive(Debug, Serialize)]
pub struct BackupRehearsal {
    /// The snapshot taken.
    pub snapshot: String,
    /// Is it still there? A passing rehearsal deletes it (it holds the known data).
    pub snapshot_kept: bool,
    /// Timed phases.
    pub phases: Vec<Phase>,
    /// What the fingerprints cover.
    pub counts: Counts,
    /// The known data the rehearsal wrote (and removed at the end).
    pub known_data: Vec<String>,
    /// What differed after the round trip (empty when it passed).
    pub differences: Vec<String>,
}

impl BackupRehearsal {
    /// `Err` naming every difference when the round trip lost or changed anything.
    pub fn check(&self) -> Result<(), RehearseError> {
        if self.differences.is_empty() {
            return Ok(());
        }
        Err(RehearseError::Mismatch {
            differences: self.differences.clone(),
            snapshot: self.snapshot.clone(),
        })
    }
}

fn known_err(what: &str) -> impl FnOnce(String) -> RehearseError + '_ {
    move |detail| RehearseError::KnownData {
        what: what.to_string(),
        detail,
    }
}

/// Runs the round trip on `engine`'s running stack, keeping the snapshot under `dest`.
pub async fn rehearse(
    engine: &Engine,
    dest: &Path,
    cancel: CancellationToken,
) -> Result<BackupRehearsal, RehearseError> {
    let stack = engine.stack();
    let mut phases = Phases::default();

    // The platform's components write all along (registrations, heartbeats, audit rows): they
    // are stopped from the first fingerprint to the last, so that both compare data at rest,
    // and started again at the end.
    let t = Instant::now();
    let components: Vec<String> = crate::reset::components(stack).into_iter().collect();
    let quiet = engine.running(&components);
    if !quiet.is_empty() {
        engine.down(&quiet).await?;
    }
    phases.push(
        "quiesce",
        t,
        if quiet.is_empty() {
            "no component running".to_string()
        } else {
            format!("stopped {}", quiet.join(", "))
        },
    );

    let t = Instant::now();
    let known_data = write_known(stack).await?;
    phases.push("write known data", t, known_data.join("; "));

    let t = Instant::now();
    let before = fingerprint(stack).await?;
    let counts = before.counts();
    phases.push(
        "fingerprint",
        t,
        format!(
            "{} tables ({} rows), {} keys, {} objects, {} files",
            counts.tables, counts.rows, counts.keys, counts.objects, counts.files
        ),
    );

    let t = Instant::now();
    let (snapshot, taken) = take::take(stack, dest).await?;
    phases.push(
        "backup",
        t,
        format!(
            "{} ({} files, {} bytes)",
            taken.name, taken.files, taken.size
        ),
    );

    let t = Instant::now();
    crate::reset::nuke(engine, engine.layout(), &stack.root).await?;
    phases.push(
        "reset --nuke",
        t,
        format!("{} deleted", engine.layout().root().display()),
    );

    let t = Instant::now();
    let data_services: Vec<String> = stack
        .services
        .keys()
        .filter(|s| !components.contains(s))
        .cloned()
        .collect();
    let started = if data_services.is_empty() {
        0
    } else {
        engine
            .up(&data_services, cancel.clone())
            .await?
            .started
            .len()
    };
    phases.push(
        "up",
        t,
        format!("{started} services started (the components after the compare)"),
    );

    let t = Instant::now();
    let verified = snapshot.verified()?;
    phases.push(
        "verify",
        t,
        format!("{} checksums", snapshot.manifest.files.len()),
    );

    let t = Instant::now();
    let restored = restore::restore(
        engine,
        verified,
        restore::Restart::DataServices,
        cancel.clone(),
    )
    .await?;
    phases.push("restore", t, restored.services.join("; "));

    let t = Instant::now();
    let after = fingerprint(stack).await?;
    let differences = before.diff(&after);
    phases.push(
        "compare",
        t,
        if differences.is_empty() {
            "identical".to_string()
        } else {
            format!("{} differences", differences.len())
        },
    );

    let t = Instant::now();
    remove_known(stack).await?;
    // The snapshot holds the known data: once it proved its point it goes, so that a later
    // `restore latest` cannot bring the scratch rows back. A failed rehearsal keeps it.
    let snapshot_kept = !differences.is_empty();
    if !snapshot_kept {
        std::fs::remove_dir_all(&snapshot.dir)
            .map_err(crate::snapshot::SnapshotError::io(&snapshot.dir))?;
    }
    phases.push(
        "clean up",
        t,
        if snapshot_kept {
            "known data removed; snapshot kept"
        } else {
            "known data and snapshot removed"
        },
    );

    let t = Instant::now();
    let up = engine.up(&[], cancel).await?;
    phases.push(
        "up",
        t,
        format!(
            "{} services started, the stack whole again",
            up.started.len()
        ),
    );

    Ok(BackupRehearsal {
        snapshot: snapshot.dir.display().to_string(),
        snapshot_kept,
        phases: phases.done,
        counts,
        known_data,
        differences,
    })
}

async fn pg(s: &StatefulService<'_>) -> Result<sqlx::PgConnection, RehearseError> {
    let probe = take::probe(s);
    let db = take::postgres_database(probe).unwrap_or("postgres");
    let url = take::postgres_url(probe, db).unwrap_or_default();
    sqlx::PgConnection::connect(&url)
        .await
        .map_err(|e| known_err("connect to PostgreSQL")(e.to_string()))
}

async fn redis_conn(
    s: &StatefulService<'_>,
) -> Result<redis::aio::MultiplexedConnection, RehearseError> {
    Ok(take::redis_connection(s).await?)
}

/// The rehearsal's object: its bucket (the first the snapshot takes) and key.
async fn object_target(
    s: &StatefulService<'_>,
) -> Result<Option<(aws_sdk_s3::Client, String, String)>, RehearseError> {
    let Some(client) = take::s3_client(s) else {
        return Ok(None);
    };
    let bucket = take::buckets(s, &client).await?.into_iter().next();
    Ok(bucket.map(|b| (client, b, format!("{SCRATCH}/object.bin"))))
}

/// 64 KiB that differ from one rehearsal to the next.
fn object_body() -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let mut block = Sha256::digest(seed.as_bytes()).to_vec();
    let mut out = Vec::with_capacity(64 * 1024);
    while out.len() < 64 * 1024 {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out
}

async fn write_known(stack: &crate::spec::Stack) -> Result<Vec<String>, RehearseError> {
    let mut wrote = Vec::new();
    for s in roles::stateful(stack) {
        let name = &s.spec.name;
        match s.role {
            Role::Postgres => {
                let mut c = pg(&s).await?;
                sqlx::raw_sql(&format!(
                    "DROP TABLE IF EXISTS {SCRATCH}; CREATE TABLE {SCRATCH} (id int PRIMARY KEY, note text NOT NULL, at timestamptz NOT NULL); INSERT INTO {SCRATCH} SELECT g, md5(g::text || clock_timestamp()::text), clock_timestamp() FROM generate_series(1, 100) g"
                ))
                .execute(&mut c)
                .await
                .map_err(|e| known_err("write the scratch table")(e.to_string()))?;
                wrote.push(format!("{name}: 100 rows in {SCRATCH}"));
            }
            Role::Redis => {
                let mut c = redis_conn(&s).await?;
                for i in 1..=10 {
                    redis::cmd("SET")
                        .arg(format!("{SCRATCH}:{i}"))
                        .arg(format!("value {i} {:?}", std::time::SystemTime::now()))
                        .query_async::<()>(&mut c)
                        .await
                        .map_err(|e| known_err("write Redis keys")(e.to_string()))?;
                }
                redis::cmd("HSET")
                    .arg(format!("{SCRATCH}:hash"))
                    .arg("a")
                    .arg("1")
                    .arg("b")
                    .arg("2")
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| known_err("write Redis keys")(e.to_string()))?;
                wrote.push(format!("{name}: 11 keys {SCRATCH}:*"));
            }
            Role::S3 => {
                if let Some((client, bucket, key)) = object_target(&s).await? {
                    client
                        .put_object()
                        .bucket(&bucket)
                        .key(&key)
                        .body(object_body().into())
                        .send()
                        .await
                        .map_err(|e| {
                            known_err("write the object")(
                                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                            )
                        })?;
                    wrote.push(format!("{name}: s3://{bucket}/{key} (64 KiB)"));
                }
            }
            Role::Files => {}
        }
    }
    Ok(wrote)
}

async fn remove_known(stack: &crate::spec::Stack) -> Result<(), RehearseError> {
    for s in roles::stateful(stack) {
        match s.role {
            Role::Postgres => {
                let mut c = pg(&s).await?;
                sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {SCRATCH}"))
                    .execute(&mut c)
                    .await
                    .map_err(|e| known_err("drop the scratch table")(e.to_string()))?;
            }
            Role::Redis => {
                let mut c = redis_conn(&s).await?;
                let mut del = redis::cmd("DEL");
                for i in 1..=10 {
                    del.arg(format!("{SCRATCH}:{i}"));
                }
                del.arg(format!("{SCRATCH}:hash"))
                    .query_async::<()>(&mut c)
                    .await
                    .map_err(|e| known_err("remove Redis keys")(e.to_string()))?;
            }
            Role::S3 => {
                if let Some((client, bucket, key)) = object_target(&s).await? {
                    client
                        .delete_object()
                        .bucket(&bucket)
                        .key(&key)
                        .send()
                        .await
                        .map_err(|e| {
                            known_err("remove the object")(
                                aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                            )
                        })?;
                }
            }
            Role::Files => {}
        }
    }
    Ok(())
}
