//! What can go wrong pulling an image, each with what to check.

use std::io;
use std::path::{Path, PathBuf};

use super::unpack::UnpackError;
use crate::digest::Digest;

/// Why [`super::ImageStore::pull`] failed. Nothing is left in the cache after any of these.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry has no such repository or tag.
    #[error("image `{image}` is not in the registry: check its name and tag, or push it first")]
    NotFound {
        /// The reference asked for.
        image: String,
    },
    /// A manifest names a blob the registry does not have.
    #[error("image `{image}` lists blob {digest}, which the registry does not have")]
    BlobNotFound {
        /// The reference asked for.
        image: String,
        /// The missing blob.
        digest: Digest,
    },
    /// The registry could not be reached or the connection broke.
    #[error("cannot fetch {url}: is the registry running?")]
    Request {
        /// The URL requested.
        url: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("the registry answered {status} to {url}")]
    Status {
        /// The URL requested.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// Content that does not hash to the digest it was asked for.
    #[error(
        "{what} {expected} hashes to {actual}: the registry served corrupted or different content"
    )]
    DigestMismatch {
        /// `manifest` or `blob`.
        what: &'static str,
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hashed to.
        actual: Digest,
    },
    /// A blob longer or shorter than its descriptor says.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// The descriptor's size.
        expected: u64,
        /// Bytes received (stops counting once past `expected`).
        actual: u64,
    },
    /// A manifest or config larger than this crate reads into memory.
    #[error("{url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL requested.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// JSON that does not parse as what it should be.
    #[error("malformed {what} at {url}")]
    Malformed {
        /// Which document.
        what: &'static str,
        /// Where it came from.
        url: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A manifest without a required field.
    #[error("the manifest of `{image}` has no `{what}`")]
    MissingField {
        /// The reference asked for.
        image: String,
        /// The missing field.
        what: &'static str,
    },
    /// A manifest or layer type this crate does not read (e.g. zstd layers).
    #[error("unsupported {what} media type `{media_type}`")]
    UnsupportedMediaType {
        /// `manifest` or `layer`.
        what: &'static str,
        /// The media type.
        media_type: String,
    },
    /// An image index with no linux/amd64 image, or a config for another architecture.
    #[error("image `{image}` has no linux/amd64 variant")]
    NoPlatform {
        /// The reference asked for.
        image: String,
    },
    /// A config whose `rootfs.diff_ids` does not match the manifest's layers.
    #[error("image `{image}` has {layers} layers but {diff_ids} diff ids in its config")]
    LayerCount {
        /// The reference asked for.
        image: String,
        /// Layers in the manifest.
        layers: usize,
        /// Diff ids in the config.
        diff_ids: usize,
    },
    /// A layer that cannot be unpacked safely.
    #[error("layer {digest} cannot be unpacked")]
    Unpack {
        /// The layer blob.
        digest: Digest,
        /// Why.
        #[source]
        source: UnpackError,
    },
    /// A cache file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The unpacking task panicked or was cancelled.
    #[error("the unpacking task did not finish")]
    Task(#[source] tokio::task::JoinError),
}

impl PullError {
    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }
}
