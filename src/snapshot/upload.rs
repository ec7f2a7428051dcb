//! `stack backup --to s3://bucket/prefix`: a snapshot, once written and complete on disk, is
//! uploaded file by file to the stack's own S3 service under `prefix/<name>/`, its manifest
//! last, so a listing that shows the manifest shows a complete snapshot.

use super::roles::{self, Role};
use super::take::{read_body, s3_client, s3_err};
use super::{Snapshot, SnapshotError, MANIFEST};
use crate::spec::Stack;

/// `(bucket, prefix)` of an `s3://bucket/prefix` destination; `None` for a directory.
pub fn parse_url(to: &str) -> Option<(String, String)> {
    let rest = to.strip_prefix("s3://")?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    Some((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// Uploads `snap` to `s3://bucket/prefix/<name>/`; returns that URL.
pub async fn upload(
    stack: &Stack,
    snap: &Snapshot,
    bucket: &str,
    prefix: &str,
) -> Result<String, SnapshotError> {
    let services = roles::stateful(stack);
    let Some((s, client)) = services
        .iter()
        .filter(|s| s.role == Role::S3)
        .find_map(|s| Some((s, s3_client(s)?)))
    else {
        return Err(SnapshotError::NoS3);
    };
    let service = &s.spec.name;
    crate::s3::ensure_buckets(&client, &[bucket])
        .await
        .map_err(|e| SnapshotError::S3 {
            service: service.clone(),
            what: format!("create bucket {bucket}"),
            detail: e.to_string(),
        })?;
    let base = if prefix.is_empty() {
        snap.name()
    } else {
        format!("{prefix}/{}", snap.name())
    };
    let paths = snap
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .chain(std::iter::once(MANIFEST));
    for rel in paths {
        let path = snap.dir.join(rel);
        let key = format!("{base}/{rel}");
        let body = read_body(&path)?;
        client
            .put_object()
            .bucket(bucket)
            .key(&key)
            .body(body)
            .send()
            .await
            .map_err(s3_err(service, format!("put s3://{bucket}/{key}")))?;
    }
    Ok(format!("s3://{bucket}/{base}/"))
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn s3_destinations_are_told_from_directories() {
        assert_eq!(
            parse_url("s3://backups/stack/"),
            Some(("backups".into(), "stack".into()))
        );
        assert_eq!(
            parse_url("s3://backups"),
            Some(("backups".into(), "".into()))
        );
        assert_eq!(parse_url("/tmp/snapshots"), None);
    }
}
