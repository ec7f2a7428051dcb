//! Whole-stack snapshots: a directory `<timestamp>/` holding one file or directory per stateful
//! service and a `manifest.json` (format version, stack, time, every file with its size and
//! sha256, and what was taken from each service and how). `take` writes one from the running
//! stack, `restore` verifies one completely and then replaces the services' data with it,
//! `fingerprint` summarises the live data so two states can be compared.
//!
//! Snapshots live outside the state dir (`reset --nuke` deletes that): by default in
//! `<project>/.stack-backups/`, files mode 0600, directories 0700.

pub mod fingerprint;
pub mod restore;
pub mod roles;
pub mod take;
pub mod upload;

use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use roles::{Role, StatefulService};

/// The snapshot format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The manifest's file name inside a snapshot.
pub const MANIFEST: &str = "manifest.json";

/// Where snapshots go unless `--to` says otherwise, relative to the project root.
pub const DEFAULT_DIR: &str = ".stack-backups";

/// The default snapshot directory of the project at `root`.
pub fn default_dir(root: &Path) -> PathBuf {
    root.join(DEFAULT_DIR)
}

/// A snapshot's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the `stack` that wrote it.
    pub format_version: u32,
    /// The stack's name.
    pub stack: String,
    /// When it was taken (RFC 3339, UTC).
    pub created_at: String,
    /// What was taken from each service.
    pub services: Vec<ServiceEntry>,
    /// Every file of the snapshot but the manifest, by path relative to the snapshot.
    pub files: Vec<FileEntry>,
}

/// What a snapshot holds of one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceEntry {
    /// The service.
    pub service: String,
    /// Its role, which decides how it is taken and restored.
    pub role: Role,
    /// How it was taken, in words (`pg_dump --format=custom per database`).
    pub how: String,
    /// Its directory in the snapshot.
    pub dir: String,
    /// The databases (postgres) or buckets (s3) taken.
    #[serde(default)]
    pub items: Vec<String>,
    /// The objects taken (s3): which file holds which key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectEntry>,
}

/// One S3 object in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectEntry {
    /// Its bucket.
    pub bucket: String,
    /// Its key.
    pub key: String,
    /// The file holding its body, relative to the snapshot.
    pub file: String,
}

/// One file of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    /// Path relative to the snapshot.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256:<hex>`.
    pub sha256: String,
}

/// Why a snapshot could not be written, read or trusted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or directory could not be written or read.
    #[error("{}: {source}\n  check the permissions and free space there", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No snapshot by that name or path.
    #[error("no snapshot {name}: not a directory with a manifest.json, nor one in {}\n  list them with `stack backup ls`", .dir.display())]
    NotFound {
        /// What was asked for.
        name: String,
        /// The default snapshot directory.
        dir: PathBuf,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{}: not a snapshot manifest: {source}\n  the snapshot is damaged: use another one (`stack backup ls`)", .path.display())]
    BadManifest {
        /// The manifest.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot was written by a newer `stack`.
    #[error("{}: snapshot format {found} is newer than this stack reads ({FORMAT_VERSION})\n  upgrade stack to restore it", .path.display())]
    NewerFormat {
        /// The manifest.
        path: PathBuf,
        /// Its format version.
        found: u32,
    },
    /// A file of the snapshot is missing, of the wrong size or checksum, or leaves the snapshot.
    #[error("snapshot {}: {file}: {problem}\n  nothing was changed; the snapshot is damaged: use another one (`stack backup ls`)", .snapshot.display())]
    Corrupt {
        /// The snapshot.
        snapshot: PathBuf,
        /// The file (relative path).
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A program the snapshot needs (pg_dump, redis-cli) failed or is missing.
    #[error("{service}: `{program}` failed: {detail}\n  {remedy}")]
    Tool {
        /// The service being taken or restored.
        service: String,
        /// The program.
        program: String,
        /// Its error output or why it could not run.
        detail: String,
        /// What to do.
        remedy: String,
    },
    /// A database query failed.
    #[error("{service}: {what}: {source}\n  is it running? try `stack up {service}`")]
    Database {
        /// The service.
        service: String,
        /// What was being done.
        what: String,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// An S3 request failed.
    #[error("{service}: {what}: {detail}\n  is it running? try `stack up {service}`")]
    S3 {
        /// The service.
        service: String,
        /// What was being done.
        what: String,
        /// The server's or transport's answer.
        detail: String,
    },
    /// A Redis request failed.
    #[error("{service}: {what}: {source}\n  is it running? try `stack up {service}`")]
    Redis {
        /// The service.
        service: String,
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: redis::RedisError,
    },
    /// `--to s3://` on a stack without an S3 service.
    #[error("the stack has no S3 service (one with an `s3` healthcheck) to upload to\n  give a directory to `--to` instead")]
    NoS3,
    /// Stopping or starting a service failed.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

impl SnapshotError {
    /// An I/O error at `path`.
    pub fn io(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
        move |source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl SnapshotError {
    /// A failed Redis command of `service` while doing `what`.
    pub fn redis(service: &str, what: &str) -> impl FnOnce(redis::RedisError) -> SnapshotError {
        let (service, what) = (service.to_string(), what.to_string());
        move |source| SnapshotError::Redis {
            service,
            what,
            source,
        }
    }

    /// A failed query of `service` while doing `what`.
    pub fn database(service: &str, what: &str) -> impl FnOnce(sqlx::Error) -> SnapshotError {
        let (service, what) = (service.to_string(), what.to_string());
        move |source| SnapshotError::Database {
            service,
            what,
            source,
        }
    }
}

/// Every regular file under `dir` (links and sockets are not), by path relative to it, in
/// name order.
pub fn regular_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, SnapshotError> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e.map_err(|e| SnapshotError::Io {
            path: dir.to_path_buf(),
            source: e.into(),
        })?;
        if !e.file_type().is_file() {
            continue;
        }
        if let Ok(rel) = e.path().strip_prefix(dir) {
            out.push((rel.to_string_lossy().into_owned(), e.path().to_path_buf()));
        }
    }
    Ok(out)
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn private_dir(dir: &Path) -> Result<(), SnapshotError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(SnapshotError::io(dir))
}

/// Where a snapshot keeps the secrets it carries (the admin API key).
pub const SECRETS: &str = "secrets";

/// Opens `path` for writing (created or truncated) with mode 0600.
pub fn private_file(path: &Path) -> Result<std::fs::File, SnapshotError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(SnapshotError::io(path))
}

/// `sha256:<hex>` and the size of the file at `path`.
pub fn hash_file(path: &Path) -> Result<(String, u64), SnapshotError> {
    let mut f = std::fs::File::open(path).map_err(SnapshotError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(SnapshotError::io(path))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((format!("sha256:{}", hex::encode(h.finalize())), size))
}

/// Is `rel` a plain relative path that stays inside the directory it is joined to?
pub fn stays_inside(rel: &str) -> bool {
    let p = Path::new(rel);
    !rel.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// A snapshot on disk.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Snapshot {
    /// Reads the manifest of the snapshot in `dir`, refusing a newer format. Checksums are not
    /// verified: see [`Snapshot::verify`].
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read(&path).map_err(SnapshotError::io(&path))?;
        // The version first, so a newer format whose shape changed is named as such.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let v: Version =
            serde_json::from_slice(&text).map_err(|source| SnapshotError::BadManifest {
                path: path.clone(),
                source,
            })?;
        if v.format_version > FORMAT_VERSION {
            return Err(SnapshotError::NewerFormat {
                path,
                found: v.format_version,
            });
        }
        let manifest = serde_json::from_slice(&text)
            .map_err(|source| SnapshotError::BadManifest { path, source })?;
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Finds `name`: a snapshot directory, or the name of one in `default_dir` (`latest` for
    /// the newest there).
    pub fn find(name: &str, default_dir: &Path) -> Result<Snapshot, SnapshotError> {
        let as_path = Path::new(name);
        if as_path.join(MANIFEST).is_file() {
            return Snapshot::open(as_path);
        }
        let named = if name == "latest" {
            list(default_dir)?.into_iter().last().map(|s| s.dir)
        } else {
            Some(default_dir.join(name))
                .filter(|d| stays_inside(name) && d.join(MANIFEST).is_file())
        };
        match named {
            Some(dir) => Snapshot::open(&dir),
            None => Err(SnapshotError::NotFound {
                name: name.to_string(),
                dir: default_dir.to_path_buf(),
            }),
        }
    }

    /// Checks every file the manifest lists (inside the snapshot, present, same size, same
    /// sha256), naming the first that fails.
    pub fn verify(&self) -> Result<(), SnapshotError> {
        let corrupt = |file: &str, problem: String| SnapshotError::Corrupt {
            snapshot: self.dir.clone(),
            file: file.to_string(),
            problem,
        };
        let object_files = self
            .manifest
            .services
            .iter()
            .flat_map(|s| s.objects.iter().map(|o| o.file.as_str()));
        let dirs = self.manifest.services.iter().map(|s| s.dir.as_str());
        for rel in object_files.chain(dirs) {
            if !stays_inside(rel) {
                return Err(corrupt(rel, "the path leaves the snapshot".into()));
            }
        }
        // Every file a restore will read must be one the manifest vouches for.
        let listed: std::collections::BTreeSet<&str> = self
            .manifest
            .files
            .iter()
            .map(|f| f.path.as_str())
            .collect();
        for s in &self.manifest.services {
            let needed: Vec<String> = match s.role {
                Role::Postgres => s
                    .items
                    .iter()
                    .map(|db| format!("{}/{db}.dump", s.dir))
                    .collect(),
                Role::Redis => vec![format!("{}/{}", s.dir, take::RDB)],
                Role::S3 => s.objects.iter().map(|o| o.file.clone()).collect(),
                Role::Files => Vec::new(),
            };
            if let Some(missing) = needed.iter().find(|n| !listed.contains(n.as_str())) {
                return Err(corrupt(
                    missing,
                    "is not in the manifest's file list".into(),
                ));
            }
        }
        for f in &self.manifest.files {
            if !stays_inside(&f.path) {
                return Err(corrupt(&f.path, "the path leaves the snapshot".into()));
            }
            let path = self.dir.join(&f.path);
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) => return Err(corrupt(&f.path, format!("cannot be read: {e}"))),
            };
            if !meta.is_file() {
                return Err(corrupt(&f.path, "is not a regular file".into()));
            }
            if meta.len() != f.size {
                return Err(corrupt(
                    &f.path,
                    format!("size {} differs from the manifest's {}", meta.len(), f.size),
                ));
            }
            let (sha, _) = hash_file(&path)?;
            if sha != f.sha256 {
                return Err(corrupt(
                    &f.path,
                    format!("checksum mismatch: {sha}, the manifest says {}", f.sha256),
                ));
            }
        }
        Ok(())
    }

    /// The total size of its files.
    pub fn size(&self) -> u64 {
        self.manifest.files.iter().map(|f| f.size).sum()
    }

    /// Its directory's name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The snapshots in `dir`, oldest first (names are timestamps). Directories without a readable
/// manifest, and one still being written (`.partial`), are skipped; a missing `dir` holds none.
pub fn list(dir: &Path) -> Result<Vec<Snapshot>, SnapshotError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io(dir)(e)),
    };
    let mut out: Vec<Snapshot> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().ends_with(".partial"))
        .filter(|e| e.path().join(MANIFEST).is_file())
        .filter_map(|e| Snapshot::open(&e.path()).ok())
        .collect();
    out.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_leave_the_snapshot_are_caught() {
        assert!(stays_inside("postgres/boxlite.dump"));
        assert!(!stays_inside("../escape"));
        assert!(!stays_inside("/etc/passwd"));
        assert!(!stays_inside("a/../../b"));
        assert!(!stays_inside(""));
    }

    fn snapshot_with(dir: &Path, files: Vec<FileEntry>, items: Vec<String>) -> Snapshot {
        Snapshot {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format_version: FORMAT_VERSION,
                stack: "t".into(),
                created_at: "2026-01-01T00:00:00Z".into(),
                services: vec![ServiceEntry {
                    service: "postgres".into(),
                    role: Role::Postgres,
                    how: String::new(),
                    dir: "postgres".into(),
                    items,
                    objects: Vec::new(),
                }],
                files,
            },
        }
    }

    #[test]
    fn verify_names_a_flipped_byte_and_a_file_the_manifest_does_not_vouch_for() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("postgres")).expect("mkdir");
        let dump = tmp.path().join("postgres/boxlite.dump");
        std::fs::write(&dump, b"PGDMP data").expect("write");
        let (sha256, size) = hash_file(&dump).expect("hash");
        let entry = FileEntry {
            path: "postgres/boxlite.dump".into(),
            size,
            sha256,
        };
        let good = snapshot_with(tmp.path(), vec![entry.clone()], vec!["boxlite".into()]);
        good.verify().expect("intact");

        std::fs::write(&dump, b"PGDMP dat4").expect("flip");
        let err = good.verify().expect_err("flipped");
        let text = err.to_string();
        assert!(
            text.contains("postgres/boxlite.dump: checksum mismatch"),
            "{text}"
        );

        let unlisted = snapshot_with(tmp.path(), vec![entry], vec!["other".into()]);
        let text = unlisted.verify().expect_err("unlisted").to_string();
        assert!(
            text.contains("postgres/other.dump: is not in the manifest"),
            "{text}"
        );
    }

    #[test]
    fn a_newer_format_is_refused_before_its_shape_is_read() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            tmp.path().join(MANIFEST),
            r#"{"format_version": 99, "something": "else"}"#,
        )
        .expect("write");
        let err = Snapshot::open(tmp.path()).expect_err("refused");
        assert!(err.to_string().contains("upgrade stack"), "{err}");
    }
}
