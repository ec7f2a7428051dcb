//! A fingerprint of the live data of every stateful service, to prove two states identical:
//! every table's row count and the md5 of its rows in order, every persistent Redis key's
//! `DUMP` (keys with a time to live are volatile and left out), every
//! object's sha256, every file of a file-kept service (for a registry: every blob, manifest and
//! tag link, so every manifest digest). Keys name what they cover
//! (`postgres/boxlite/public.users`), so a difference names what changed.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};
use sqlx::{Connection, Row};

use super::roles::{self, Role, StatefulService};
use super::take::{self, postgres_url};
use super::SnapshotError;
use crate::spec::Stack;

/// What was fingerprinted -> its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Fingerprint {
    /// `service/what` -> digest (`rows=3 md5=...`, `sha256:...`).
    pub entries: BTreeMap<String, String>,
}

/// How many things of each kind a fingerprint covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Tables.
    pub tables: usize,
    /// Rows over all tables.
    pub rows: u64,
    /// Redis keys.
    pub keys: usize,
    /// S3 objects.
    pub objects: usize,
    /// Files of file-kept services.
    pub files: usize,
}

impl Fingerprint {
    /// What differs from `after`, one line per entry: changed, missing or new.
    pub fn diff(&self, after: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.entries {
            match after.entries.get(k) {
                None => out.push(format!("{k}: missing after restore (was {v})")),
                Some(w) if w != v => out.push(format!("{k}: {v} before, {w} after")),
                Some(_) => {}
            }
        }
        for (k, w) in &after.entries {
            if !self.entries.contains_key(k) {
                out.push(format!("{k}: new after restore ({w})"));
            }
        }
        out
    }

    /// What it covers.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for (k, v) in &self.entries {
            match k.split('/').nth(1) {
                Some("table") => {
                    c.tables += 1;
                    c.rows += v
                        .strip_prefix("rows=")
                        .and_then(|r| r.split_whitespace().next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0);
                }
                Some("key") => c.keys += 1,
                Some("object") => c.objects += 1,
                Some("file") => c.files += 1,
                _ => {}
            }
        }
        c
    }
}

/// Fingerprints every stateful service of `stack`.
pub async fn fingerprint(stack: &Stack) -> Result<Fingerprint, SnapshotError> {
    let mut fp = Fingerprint::default();
    for s in roles::stateful(stack) {
        let name = s.spec.name.clone();
        let mut add = |kind: &str, what: String, digest: String| {
            fp.entries.insert(format!("{name}/{kind}/{what}"), digest);
        };
        match s.role {
            Role::Postgres => {
                for (what, digest) in postgres(&s).await? {
                    add("table", what, digest);
                }
            }
            Role::Redis => {
                for (what, digest) in redis_keys(&s).await? {
                    add("key", what, digest);
                }
            }
            Role::S3 => {
                for (what, digest) in objects(&s).await? {
                    add("object", what, digest);
                }
            }
            Role::Files => {
                for (what, digest) in files(&s)? {
                    add("file", what, digest);
                }
            }
        }
    }
    Ok(fp)
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

async fn postgres(s: &StatefulService<'_>) -> Result<Vec<(String, String)>, SnapshotError> {
    let mut out = Vec::new();
    for db in take::databases(s).await? {
        let url = postgres_url(take::probe(s), &db).unwrap_or_default();
        let db_err = |what: String| SnapshotError::database(&s.spec.name, &what);
        let mut c = sqlx::PgConnection::connect(&url)
            .await
            .map_err(db_err(format!("connect to {db}")))?;
        let tables = sqlx::query(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2",
        )
        .fetch_all(&mut c)
        .await
        .map_err(db_err(format!("list the tables of {db}")))?;
        for t in tables {
            let (schema, table): (String, String) = (t.get(0), t.get(1));
            let q = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
            let row = sqlx::query(&format!(
                "SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t::text)), '') FROM {}.{} t",
                q(&schema),
                q(&table)
            ))
            .fetch_one(&mut c)
            .await
            .map_err(db_err(format!("checksum {db}.{schema}.{table}")))?;
            let (n, md5): (i64, String) = (row.get(0), row.get(1));
            out.push((
                format!("{db}.{schema}.{table}"),
                format!("rows={n} md5={md5}"),
            ));
        }
    }
    Ok(out)
}

async fn redis_keys(s: &StatefulService<'_>) -> Result<Vec<(String, String)>, SnapshotError> {
    let err = |what: &str| SnapshotError::redis(&s.spec.name, what);
    let mut c = take::redis_connection(s).await?;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut c)
        .await
        .map_err(err("INFO keyspace"))?;
    let dbs: Vec<u32> = info
        .lines()
        .filter_map(|l| l.strip_prefix("db")?.split(':').next()?.parse().ok())
        .collect();
    let mut out = Vec::new();
    for db in dbs {
        redis::cmd("SELECT")
            .arg(db)
            .query_async::<()>(&mut c)
            .await
            .map_err(err("SELECT"))?;
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(err("SCAN"))?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        keys.sort();
        keys.dedup();
        // Pipelined: two round trips per thousand keys, not one per key.
        for batch in keys.chunks(1000) {
            // A key with a time to live (a liveness mark, a preview token, a cache entry) is
            // volatile: whether it is still there depends on when it is looked at, not on
            // what was backed up. Only persistent keys are compared.
            let mut pipe = redis::pipe();
            for k in batch {
                pipe.cmd("PTTL").arg(k);
            }
            let ttls: Vec<i64> = pipe.query_async(&mut c).await.map_err(err("PTTL"))?;
            let batch: Vec<&Vec<u8>> = batch
                .iter()
                .zip(ttls)
                .filter(|(_, ttl)| *ttl == -1)
                .map(|(k, _)| k)
                .collect();
            if batch.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for k in &batch {
                pipe.cmd("DUMP").arg(*k);
            }
            let dumps: Vec<Option<Vec<u8>>> =
                pipe.query_async(&mut c).await.map_err(err("DUMP"))?;
            for (k, dump) in batch.iter().zip(dumps) {
                out.push((
                    format!("db{db}/{}", String::from_utf8_lossy(k)),
                    dump.map(|d| sha(&d)).unwrap_or_default(),
                ));
            }
        }
    }
    Ok(out)
}

async fn objects(s: &StatefulService<'_>) -> Result<Vec<(String, String)>, SnapshotError> {
    let Some(client) = take::s3_client(s) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for bucket in take::buckets(s, &client).await? {
        for key in take::keys(&s.spec.name, &client, &bucket).await? {
            let body = take::get_object(&s.spec.name, &client, &bucket, &key).await?;
            out.push((format!("{bucket}/{key}"), sha(&body)));
        }
    }
    Ok(out)
}

fn files(s: &StatefulService<'_>) -> Result<Vec<(String, String)>, SnapshotError> {
    let dir = &s.spec.data_dir;
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (rel, path) in super::regular_files(dir)? {
        if take::is_temporary(&rel) {
            continue;
        }
        out.push((rel, super::hash_file(&path)?.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(entries: &[(&str, &str)]) -> Fingerprint {
        Fingerprint {
            entries: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_difference_names_what_changed_went_missing_or_appeared() {
        let before = fp(&[
            ("postgres/table/boxlite.public.users", "rows=2 md5=aa"),
            ("redis/key/db0/session:1", "sha256:11"),
            ("minio/object/boxlite/a.txt", "sha256:22"),
        ]);
        let after = fp(&[
            ("postgres/table/boxlite.public.users", "rows=1 md5=bb"),
            ("minio/object/boxlite/a.txt", "sha256:22"),
            ("minio/object/boxlite/b.txt", "sha256:33"),
        ]);
        assert_eq!(
            before.diff(&after),
            [
                "postgres/table/boxlite.public.users: rows=2 md5=aa before, rows=1 md5=bb after",
                "redis/key/db0/session:1: missing after restore (was sha256:11)",
                "minio/object/boxlite/b.txt: new after restore (sha256:33)",
            ]
        );
        assert!(before.diff(&before).is_empty());
        let counts = before.counts();
        assert_eq!(
            (counts.tables, counts.rows, counts.keys, counts.objects),
            (1, 2, 1, 1)
        );
    }
}
