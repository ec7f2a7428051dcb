//! Why a request to the object store failed: each error names the object (or bucket and prefix)
//! and the endpoint, and says what to do.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};

/// The SDK's error, type-erased (each operation has its own type).
pub type SdkCause = Box<dyn std::error::Error + Send + Sync>;

/// What a failed request was doing, and on what.
#[derive(Debug, Clone)]
pub struct Request {
    /// What was being done (`upload`, `list`, ...).
    pub op: &'static str,
    /// The endpoint.
    pub endpoint: String,
    /// The bucket.
    pub bucket: String,
    /// The key (or prefix).
    pub key: String,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot {} s3://{}/{}", self.op, self.bucket, self.key)
    }
}

/// Why an object store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing answered at the endpoint (refused, timed out, reset).
    #[error("{at}: the object store at {} does not answer ({detail}): is it running? (`stack status minio`)", .at.endpoint)]
    Unreachable {
        /// The request.
        at: Request,
        /// The transport's own words.
        detail: String,
        /// The SDK's error.
        #[source]
        source: SdkCause,
    },
    /// The server answered with an error.
    #[error("{at} at {}: {detail}", .at.endpoint)]
    Refused {
        /// The request.
        at: Request,
        /// The server's answer, with its context.
        detail: String,
        /// The SDK's error.
        #[source]
        source: SdkCause,
    },
    /// No such object.
    #[error(
        "s3://{bucket}/{key} does not exist (at {endpoint}): list the bucket for the keys it holds"
    )]
    NotFound {
        /// The endpoint.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// No such bucket.
    #[error("bucket {bucket} does not exist at {endpoint}: create it (the stack's `minio` bootstrap creates `boxlite` and `backups`)")]
    NoBucket {
        /// The endpoint.
        endpoint: String,
        /// The bucket.
        bucket: String,
    },
    /// The body of a download broke off.
    #[error("reading s3://{bucket}/{key} from {endpoint} broke off after {read} bytes: retry, or check the object store")]
    Interrupted {
        /// The endpoint.
        endpoint: String,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// Bytes read before.
        read: u64,
        /// Why.
        #[source]
        source: SdkCause,
    },
}

impl StoreError {
    /// Sorts an SDK error: no answer, a missing object or bucket, or the server's refusal.
    pub(crate) fn request<E>(
        op: &'static str,
        endpoint: &str,
        bucket: &str,
        key: &str,
        e: SdkError<E, HttpResponse>,
    ) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let at = Request {
            op,
            endpoint: endpoint.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
        };
        let detail = DisplayErrorContext(&e).to_string();
        let status = e.raw_response().map(|r| r.status().as_u16());
        let unreachable = match &e {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => true,
            SdkError::ResponseError(_) => status.is_none(),
            _ => false,
        };
        if unreachable {
            return Self::Unreachable {
                at,
                detail,
                source: Box::new(e),
            };
        }
        if detail.contains("NoSuchBucket") {
            return Self::NoBucket {
                endpoint: at.endpoint,
                bucket: at.bucket,
            };
        }
        if detail.contains("NoSuchKey") || (status == Some(404) && op == "download") {
            return Self::NotFound {
                endpoint: at.endpoint,
                bucket: at.bucket,
                key: at.key,
            };
        }
        Self::Refused {
            at,
            detail,
            source: Box::new(e),
        }
    }

    /// Did the object store fail to answer at all (rather than refuse)?
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}
