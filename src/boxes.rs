//! Box archives seen from `stack` (`stack box verify`): the format is the platform's own
//! (`crates/boxarchive`, shared with the runners); here an archive is checked offline, as
//! `restic check` checks a repository, and summarised: a file, or an object in S3 read as a
//! stream (never saved to disk).

use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why an archive did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file could not be opened.
    #[error("cannot open {}: {source}; check the path", .path.display())]
    Open {
        /// The archive.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `s3://` without a bucket and a key.
    #[error("`{0}` is not an S3 object: give s3://BUCKET/KEY, e.g. s3://backups/<sandbox-id>/<timestamp>.boxlite")]
    BadUrl(String),
    /// The object could not be fetched.
    #[error("cannot read {url}: {}; check the key (`aws s3 ls` after `eval \"$(stack env)\"`) and that the S3 service is up", aws_sdk_s3::error::DisplayErrorContext(&**.source))]
    Fetch {
        /// The object.
        url: String,
        /// Why.
        #[source]
        source: Box<
            aws_sdk_s3::error::SdkError<
                aws_sdk_s3::operation::get_object::GetObjectError,
                aws_sdk_s3::config::http::HttpResponse,
            >,
        >,
    },
    /// The archive is damaged or refused, naming what is wrong.
    #[error("{} does not verify: {source}", .path.display())]
    Refused {
        /// The archive (a path, or the `s3://` URL).
        path: PathBuf,
        /// What is wrong (a member's checksum, a path, the format, ...).
        #[source]
        source: boxarchive::ArchiveError,
    },
}

/// What a verified archive holds.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verified {
    /// The archive.
    pub path: PathBuf,
    /// Its format version.
    pub format_version: u32,
    /// The box: id, name, image, options, when it was exported.
    #[serde(flatten)]
    pub info: boxarchive::BoxInfo,
    /// How many members its disk has.
    pub members: usize,
    /// Their files' bytes.
    pub bytes: u64,
}

/// Reads the archive at `path` whole and checks every member against its manifest.
pub fn verify_file(path: &Path) -> Result<Verified, VerifyError> {
    let file = std::fs::File::open(path).map_err(|source| VerifyError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let manifest = boxarchive::verify(std::io::BufReader::new(file)).map_err(|source| {
        VerifyError::Refused {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(Verified {
        path: path.to_path_buf(),
        format_version: manifest.format_version,
        members: manifest.members.len(),
        bytes: manifest.members.iter().map(|m| m.size).sum(),
        info: manifest.info,
    })
}

/// `s3://bucket/key` → (bucket, key); `None` for anything else.
pub fn s3_object(url: &str) -> Option<Result<(String, String), VerifyError>> {
    let rest = url.strip_prefix("s3://")?;
    Some(match rest.split_once('/') {
        Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
            Ok((bucket.to_string(), key.to_string()))
        }
        _ => Err(VerifyError::BadUrl(url.to_string())),
    })
}

/// Reads the archive at `s3://bucket/key` as a stream and checks it as [`verify_file`] does.
pub async fn verify_object(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
) -> Result<Verified, VerifyError> {
    let url = format!("s3://{bucket}/{key}");
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| VerifyError::Fetch {
            url: url.clone(),
            source: Box::new(e),
        })?;
    let stream = tokio_util::io::SyncIoBridge::new(object.body.into_async_read());
    let path = PathBuf::from(&url);
    let checked = tokio::task::spawn_blocking(move || {
        boxarchive::verify(std::io::BufReader::with_capacity(1 << 20, stream))
    })
    .await
    .map_err(|e| VerifyError::Refused {
        path: path.clone(),
        source: boxarchive::ArchiveError::Corrupt(std::io::Error::other(e.to_string())),
    })?;
    let manifest = checked.map_err(|source| VerifyError::Refused {
        path: path.clone(),
        source,
    })?;
    Ok(Verified {
        path,
        format_version: manifest.format_version,
        members: manifest.members.len(),
        bytes: manifest.members.iter().map(|m| m.size).sum(),
        info: manifest.info,
    })
}
