//! The S3 client the stack uses for its own checks (the `s3` probe) and, later, for backups:
//! aws-sdk-s3 with static credentials, path-style addressing and no retries of its own.

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::DisplayErrorContext;

/// A client for `endpoint` signing with `region` and the given key.
pub fn client(
    endpoint: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> aws_sdk_s3::Client {
    let mut conf = aws_sdk_s3::Config::builder();
    if endpoint.starts_with("http://") {
        conf.set_http_client(Some(plain_http_client()));
    }
    let conf = conf
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            access_key, secret_key, None, None, "stack",
        ))
        .force_path_style(true)
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The transport for a plain-http endpoint (the stack's own object store on loopback): one
/// with an empty trust store. The default one loads and parses every certificate the system
/// trusts (about 150 files here) before its first request, even when it never speaks TLS, and
/// `stack up` builds a client for each S3 probe.
fn plain_http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
    // Building a context with no certificates to parse cannot fail; if it ever did, the
    // default context (the system's store) still works, only slower.
    let tls = TlsContext::builder()
        .with_trust_store(TrustStore::empty())
        .build()
        .unwrap_or_default();
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(tls)
        .build_https()
}

/// A signed `ListBuckets`; the bucket names on success, the server's error otherwise.
pub async fn list_buckets(
    endpoint: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> Result<Vec<String>, String> {
    bucket_names(&client(endpoint, region, access_key, secret_key)).await
}

/// The bucket names `client` can list (a signed `ListBuckets`).
pub async fn bucket_names(client: &aws_sdk_s3::Client) -> Result<Vec<String>, String> {
    let out = client
        .list_buckets()
        .send()
        .await
        .map_err(|e| DisplayErrorContext(e).to_string())?;
    Ok(out
        .buckets()
        .iter()
        .filter_map(|b| b.name().map(String::from))
        .collect())
}

/// Creates each bucket that does not exist yet; returns the ones created.
pub async fn ensure_buckets(
    client: &aws_sdk_s3::Client,
    buckets: &[&str],
) -> Result<Vec<String>, String> {
    let existing = bucket_names(client).await?;
    let mut created = Vec::new();
    for b in buckets {
        if !existing.iter().any(|e| e == b) {
            client
                .create_bucket()
                .bucket(*b)
                .send()
                .await
                .map_err(|e| format!("create bucket {b}: {}", DisplayErrorContext(e)))?;
            created.push(b.to_string());
        }
    }
    Ok(created)
}

/// Deletes every object in `bucket`; returns how many.
pub async fn empty_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, String> {
    let mut deleted = 0;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| format!("list {bucket}: {}", DisplayErrorContext(e)))?;
        let keys: Vec<String> = page
            .contents()
            .iter()
            .filter_map(|o| o.key().map(String::from))
            .collect();
        if keys.is_empty() {
            return Ok(deleted);
        }
        for k in &keys {
            client
                .delete_object()
                .bucket(bucket)
                .key(k)
                .send()
                .await
                .map_err(|e| format!("delete s3://{bucket}/{k}: {}", DisplayErrorContext(e)))?;
            deleted += 1;
        }
    }
}
