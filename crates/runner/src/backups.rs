//! Backups of sandboxes to S3 and their restore (docs/platform.md, "Box archives"): a sandbox's
//! writable layer, archived by `boxarchive` while the sandbox is paused, streamed into a
//! multipart upload at `s3://<bucket>/<id>/<timestamp>.boxlite`, the last N per sandbox kept;
//! a restore downloads one, verifies every member while it extracts into a staging dir, and only
//! then installs it under the same id.
//!
//! Each call runs in a task of its own: a caller that goes away never leaves a sandbox paused
//! or half-restored (the task finishes, and thaws or cleans up).

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxarchive::{ArchiveError, BoxInfo};
use objectstore::{Store, StoreError, UploadError, UploadOptions};
use sandbox::{CreateOptions, SandboxId};
use sha2::{Digest, Sha256};

use crate::error::{describe, ApiError};
use crate::sandboxes::{parse_id, state_of, Sandboxes};
use crate::settings::BackupSettings;
use crate::wire;

/// Exports of a sandbox that cannot be paused (a runner that is not root) tried before giving
/// up, when a file changes while it is read.
const UNPAUSED_ATTEMPTS: usize = 3;
/// The suffix of a backup's key.
const SUFFIX: &str = ".boxlite";

/// Where backups go, and how many are kept.
pub struct Backups {
    store: Store,
    bucket: String,
    keep: usize,
}

impl Backups {
    /// The backups the settings describe.
    pub fn new(settings: &BackupSettings) -> Self {
        Self {
            store: Store::new(
                &settings.endpoint,
                &settings.region,
                &settings.access_key,
                &settings.secret_key,
            ),
            bucket: settings.bucket.clone(),
            keep: settings.keep,
        }
    }

    /// Backs sandbox `id` up (see the module's docs), then deletes its backups past the number
    /// kept.
    pub async fn backup(
        self: &Arc<Self>,
        sandboxes: &Arc<Sandboxes>,
        id: &str,
        req: wire::Backup,
    ) -> Result<wire::BackedUp, ApiError> {
        let id = parse_id(id)?;
        let keep = match req.keep {
            None => self.keep,
            Some(n) if (1..=100).contains(&n) => n,
            Some(n) => {
                return Err(ApiError::BadRequest(format!(
                    "`keep` is {n}: give the number of backups kept, 1 to 100"
                )))
            }
        };
        let (me, sandboxes) = (Arc::clone(self), Arc::clone(sandboxes));
        detached(async move { me.backup_detached(&sandboxes, id, keep).await }).await
    }

    async fn backup_detached(
        &self,
        sandboxes: &Sandboxes,
        id: SandboxId,
        keep: usize,
    ) -> Result<wire::BackedUp, ApiError> {
        let _claim = sandboxes.claim(&id)?;
        let driver = sandboxes.box_driver().runc("backup")?;
        let (disk, record) = driver.export_source(&id)?;
        let mut attempt = 0;
        let (up, exported_at, paused) = loop {
            attempt += 1;
            let now = SystemTime::now();
            let key = format!("{id}/{}{SUFFIX}", Stamp::of(now).key());
            let info = BoxInfo {
                box_id: id.to_string(),
                name: None,
                image: sandboxes.short_image(&record.image),
                image_digest: record.image_digest.to_string(),
                options: serde_json::to_value(&record.options).unwrap_or_default(),
                exported_at: Stamp::of(now).rfc3339(),
            };
            let frozen = driver.freeze(&id).await?;
            let was_paused = frozen.paused;
            let disk = disk.clone();
            let stored = self
                .store
                .upload(&self.bucket, &key, UploadOptions::default(), move |w| {
                    boxarchive::write(&disk, info, w).map(drop)
                })
                .await;
            // Resumed whatever happened: a failed backup leaves the sandbox running.
            let paused = driver.thaw(&id, frozen).await?;
            match stored {
                Ok(((), up)) => break (up, Stamp::of(now).rfc3339(), paused),
                Err(UploadError::Producer(ArchiveError::Changed { .. }))
                    if !was_paused && attempt < UNPAUSED_ATTEMPTS =>
                {
                    continue
                }
                Err(UploadError::Store(source)) => {
                    return Err(ApiError::Store {
                        done: "stored",
                        source: Box::new(source),
                    })
                }
                Err(UploadError::Producer(source)) => {
                    return Err(ApiError::Export {
                        id: id.to_string(),
                        source,
                    })
                }
                Err(e @ UploadError::Panicked { .. }) => {
                    return Err(ApiError::Internal(e.to_string()))
                }
            }
        };
        let pruned = self.prune(&id, keep).await;
        Ok(wire::BackedUp {
            id: id.to_string(),
            bucket: up.bucket,
            key: up.key,
            sha256: up.sha256,
            size_bytes: up.size,
            exported_at,
            paused_ms: paused.as_millis() as u64,
            pruned,
        })
    }

    /// Deletes the backups of `id` older than the newest `keep` (keys sort by time); returns
    /// the keys deleted. The new backup is stored already: a failure here only leaves older
    /// ones behind (logged; the next backup prunes them).
    async fn prune(&self, id: &SandboxId, keep: usize) -> Vec<String> {
        let mut pruned = Vec::new();
        let listed = self.store.list(&self.bucket, &format!("{id}/")).await;
        let mut keys: Vec<String> = match listed {
            Ok(objects) => objects.into_iter().map(|o| o.key).collect(),
            Err(e) => {
                eprintln!("runner: cannot prune the backups of {id}: {}", describe(&e));
                return pruned;
            }
        };
        keys.retain(|k| k.ends_with(SUFFIX));
        keys.sort();
        let old = keys.len().saturating_sub(keep);
        for key in keys.into_iter().take(old) {
            match self.store.delete(&self.bucket, &key).await {
                Ok(()) => pruned.push(key),
                Err(e) => {
                    eprintln!("runner: cannot prune backup {key}: {}", describe(&e));
                    break;
                }
            }
        }
        pruned
    }

    /// Restores a backup as the sandbox it was of (see the module's docs).
    pub async fn restore(
        self: &Arc<Self>,
        sandboxes: &Arc<Sandboxes>,
        req: wire::Restore,
    ) -> Result<wire::Restored, ApiError> {
        let id = parse_id(&req.id)?;
        if req.key.is_empty() || req.key.starts_with('/') || req.key.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "`key` is `{}`: give the backup's key in the bucket, e.g. `{id}/20261208T011500.123Z{SUFFIX}`",
                req.key
            )));
        }
        let (me, sandboxes) = (Arc::clone(self), Arc::clone(sandboxes));
        detached(async move { me.restore_detached(&sandboxes, id, req).await }).await
    }

    async fn restore_detached(
        &self,
        sandboxes: &Sandboxes,
        id: SandboxId,
        req: wire::Restore,
    ) -> Result<wire::Restored, ApiError> {
        let _claim = sandboxes.claim(&id)?;
        let driver = sandboxes.box_driver().runc("restore")?;
        let exists = driver.state(&id).await?.is_some();
        if exists && !req.replace {
            return Err(ApiError::Exists(id.to_string()));
        }
        if !exists && sandboxes.count() >= sandboxes.capacity() {
            return Err(ApiError::Full {
                capacity: sandboxes.capacity(),
            });
        }
        let download = self
            .store
            .download(&self.bucket, &req.key)
            .await
            .map_err(|e| match e {
                e @ StoreError::NotFound { .. } => ApiError::NoBackup(Box::new(e)),
                source => ApiError::Store {
                    done: "installed",
                    source: Box::new(source),
                },
            })?;
        let staging = driver.home().restore_staging(&id);
        let _ = driver.home().remove_staging(&id);
        std::fs::create_dir_all(&staging).map_err(|source| sandbox::SandboxError::Io {
            op: "create",
            path: staging.clone(),
            source,
        })?;
        let staged = self.stage(sandboxes, &id, &req, download, &staging).await;
        let (image, options, sha256, size) = match staged {
            Ok(s) => s,
            Err(e) => {
                let _ = driver.home().remove_staging(&id);
                return Err(e);
            }
        };
        // Fully staged: only now does the sandbox it replaces go.
        if exists {
            if let Err(e) = driver.delete(&id).await {
                let _ = driver.home().remove_staging(&id);
                return Err(e.into());
            }
        }
        let start = req.start.unwrap_or(true);
        let restored = driver.restore(&id, &staging, &image, &options, start).await;
        let _ = driver.home().remove_staging(&id);
        let sandbox = restored?;
        Ok(wire::Restored {
            id: id.to_string(),
            state: state_of(&sandbox),
            image: sandboxes.short_image(&image.reference),
            digest: image.digest.to_string(),
            sha256,
            size_bytes: size,
        })
    }

    /// Extracts the backup into `staging/upper` (every member checked before it is renamed into
    /// place), checks it is of `id`, and pulls its image at the digest it was made from.
    async fn stage(
        &self,
        sandboxes: &Sandboxes,
        id: &SandboxId,
        req: &wire::Restore,
        download: objectstore::Download,
        staging: &Path,
    ) -> Result<(sandbox::Image, CreateOptions, String, u64), ApiError> {
        let upper = staging.join("upper");
        let installed = tokio::task::spawn_blocking(move || {
            let mut reader = Hashing {
                inner: download,
                hash: Sha256::new(),
                size: 0,
            };
            let manifest = boxarchive::install(&mut reader, &upper)?;
            // The rest of the object (zstd's frame end) counts in its checksum.
            std::io::copy(&mut reader, &mut std::io::sink()).map_err(ArchiveError::Corrupt)?;
            let sha256 = format!("sha256:{}", hex::encode(reader.hash.finalize()));
            Ok::<_, ArchiveError>((manifest, sha256, reader.size))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the restore task failed: {e}")))?;
        let (manifest, sha256, size) = installed.map_err(|source| self.unreadable(req, source))?;
        if manifest.info.box_id != id.as_str() {
            return Err(ApiError::OtherBox {
                id: id.to_string(),
                key: req.key.clone(),
                found: manifest.info.box_id,
            });
        }
        let options: CreateOptions = serde_json::from_value(manifest.info.options.clone())
            .map_err(|e| ApiError::Archive {
                key: req.key.clone(),
                source: ArchiveError::Manifest(e),
            })?;
        let image = sandboxes.pull(&manifest.info.image).await?;
        if image.digest.to_string() != manifest.info.image_digest {
            return Err(ApiError::ImageChanged {
                image: manifest.info.image,
                expected: manifest.info.image_digest,
                found: image.digest.to_string(),
            });
        }
        Ok((image, options, sha256, size))
    }

    /// An archive that could not be read: S3's failure when the download broke off (a 502),
    /// the archive's own fault otherwise (a 422 naming the member).
    fn unreadable(&self, req: &wire::Restore, source: ArchiveError) -> ApiError {
        let key = format!("s3://{}/{}", self.bucket, req.key);
        match source {
            ArchiveError::Corrupt(io) if io.get_ref().is_some_and(|e| e.is::<StoreError>()) => {
                ApiError::BrokeOff { key, source: io }
            }
            source => ApiError::Archive { key, source },
        }
    }
}

/// Runs `call` in a task of its own: it runs to its end (thawing what it froze, removing what
/// it staged) even when the caller goes away and its request is dropped.
async fn detached<T: Send + 'static>(
    call: impl std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(call)
        .await
        .map_err(|e| ApiError::Internal(format!("a backup task failed (a bug): {e}")))?
}

/// A reader that hashes and counts what it reads: the checksum of the whole backup object.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A moment in UTC, split for the two ways it is written.
struct Stamp {
    year: i64,
    month: u32,
    day: u32,
    secs: u64,
    millis: u32,
}

impl Stamp {
    fn of(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let days = (since.as_secs() / 86_400) as i64;
        // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Self {
            year,
            month,
            day,
            secs: since.as_secs() % 86_400,
            millis: since.subsec_millis(),
        }
    }

    fn hms(&self) -> (u64, u64, u64) {
        (self.secs / 3600, self.secs / 60 % 60, self.secs % 60)
    }

    /// `20261208T011500.123Z`: sorts as time does.
    fn key(&self) -> String {
        let (h, m, s) = self.hms();
        format!(
            "{:04}{:02}{:02}T{h:02}{m:02}{s:02}.{:03}Z",
            self.year, self.month, self.day, self.millis
        )
    }

    /// `2026-12-08T01:15:00.123Z`.
    fn rfc3339(&self) -> String {
        let (h, m, s) = self.hms();
        format!(
            "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{:03}Z",
            self.year, self.month, self.day, self.millis
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_and_sort_as_time() {
        let t = UNIX_EPOCH + Duration::from_millis(1_796_692_500_123);
        let s = Stamp::of(t);
        assert_eq!(s.key(), "20261208T011500.123Z");
        assert_eq!(s.rfc3339(), "2026-12-08T01:15:00.123Z");
        assert_eq!(Stamp::of(UNIX_EPOCH).rfc3339(), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(Stamp::of(leap).key(), "20000229T000000.000Z");
        let later = Stamp::of(t + Duration::from_secs(86_400 * 40)).key();
        assert!(later > s.key(), "{later}");
    }
}
