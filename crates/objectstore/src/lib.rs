//! The platform's S3 client (the runners' box backups; later `stack` itself): aws-sdk-s3 with
//! static credentials, path-style addressing and no retries of its own, on one endpoint.
//!
//! - [`Store::upload`]: a blocking producer (a `std::io::Write`, e.g. `boxarchive::write` in
//!   `spawn_blocking`) writes the object; it is cut into parts uploaded a few at a time, with
//!   bounded memory (the producer blocks while the parts in flight are full), and its sha256 and
//!   size computed on the way. On any failure (a part, the producer, the call dropped) the
//!   multipart upload is aborted: no object becomes visible. See [`upload`].
//! - [`Store::download`]: the object as a blocking `std::io::Read`, streamed. See [`download`].
//! - [`Store::list`], [`Store::delete`], [`Store::uploads_in_progress`].

pub mod download;
pub mod error;
pub mod upload;

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

pub use download::Download;
pub use error::{Request, StoreError};
pub use upload::{UploadError, UploadOptions, Uploaded};

/// How long a connection to the endpoint may take: it is on loopback or nearby.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one read of an answer may wait: a server that stops answering mid-part.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// One S3 endpoint, signed with one key.
#[derive(Clone, Debug)]
pub struct Store {
    client: aws_sdk_s3::Client,
    endpoint: String,
}

/// An object as [`Store::list`] finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written.
    pub last_modified: Option<SystemTime>,
}

impl Store {
    /// A store at `endpoint` (`http://host:port`), signing with `region` and the given key;
    /// path-style addressing (`endpoint/bucket/key`).
    pub fn new(endpoint: &str, region: &str, access_key: &str, secret_key: &str) -> Self {
        let mut conf = aws_sdk_s3::Config::builder();
        if endpoint.starts_with("http://") {
            conf.set_http_client(Some(plain_http_client()));
        }
        let timeouts = aws_sdk_s3::config::timeout::TimeoutConfig::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .build();
        let conf = conf
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(
                access_key,
                secret_key,
                None,
                None,
                "objectstore",
            ))
            .force_path_style(true)
            .timeout_config(timeouts)
            // The object's own sha256 is computed by the upload; no CRC32 per request on top.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(conf),
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    /// The endpoint, as given.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Every object of `bucket` whose key starts with `prefix`, in key order.
    pub async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<Object>, StoreError> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.failed("list", bucket, prefix, e))?;
            for o in page.contents() {
                out.push(Object {
                    key: o.key().unwrap_or_default().to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    last_modified: o
                        .last_modified()
                        .and_then(|t| SystemTime::try_from(*t).ok()),
                });
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes an object (a missing one is no error, as S3 answers).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.failed("delete", bucket, key, e))?;
        Ok(())
    }

    /// The keys of the multipart uploads of `bucket` under `prefix` begun and neither completed
    /// nor aborted (what an interrupted upload would leave).
    pub async fn uploads_in_progress(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> Result<Vec<String>, StoreError> {
        let out = self
            .client
            .list_multipart_uploads()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|e| self.failed("list the multipart uploads of", bucket, prefix, e))?;
        Ok(out
            .uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_string))
            .collect())
    }

    /// A failed request as a [`StoreError`].
    pub(crate) fn failed<E>(
        &self,
        op: &'static str,
        bucket: &str,
        key: &str,
        e: aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
    ) -> StoreError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        StoreError::request(op, &self.endpoint, bucket, key, e)
    }
}

/// The transport for a plain-http endpoint (the stack's own object store on loopback): one with
/// an empty trust store. The default one loads and parses every certificate the system trusts
/// before its first request, even when it never speaks TLS. `stack`'s own S3 client uses it too.
pub fn plain_http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    // A context with no certificates to parse cannot fail to build; if it ever did, the default
    // context (the system's store) still works, only slower.
    let tls = TlsContext::builder()
        .with_trust_store(TrustStore::empty())
        .build()
        .unwrap_or_default();
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https()
}
