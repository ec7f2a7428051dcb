//! The S3 client the stack uses for its own checks (the `s3` probe) and, later, for backups:
//! aws-sdk-s3 with static credentials, path-style addressing and no retries of its own.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::create_bucket::CreateBucketError;
use aws_sdk_s3::operation::delete_object::DeleteObjectError;
use aws_sdk_s3::operation::list_buckets::ListBucketsError;
use aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Error;

/// A client for `endpoint` signing with `region` and the given key.
pub fn client(
    endpoint: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> aws_sdk_s3::Client {
    let mut conf = aws_sdk_s3::Config::builder();
    if endpoint.starts_with("http://") {
        // The transport with an empty trust store: no system certificates parsed per client
        // (`stack up` builds one for each S3 probe).
        conf.set_http_client(Some(objectstore::plain_http_client()));
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

/// A client for the endpoint and key an `s3` healthcheck names; `None` for another probe.
pub fn client_for(probe: &crate::spec::ProbeSpec) -> Option<aws_sdk_s3::Client> {
    match probe {
        crate::spec::ProbeSpec::S3 {
            endpoint,
            region,
            access_key,
            secret_key,
        } => Some(client(endpoint, region, access_key, secret_key)),
        _ => None,
    }
}

/// Why an S3 request failed; the message includes the server's answer (or the transport's
/// error) with its context, and the SDK's error is the `source()`.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// `ListBuckets` failed (a wrong key, the server not up).
    #[error("{}", DisplayErrorContext(&**.0))]
    ListBuckets(#[source] Box<SdkError<ListBucketsError, HttpResponse>>),
    /// `CreateBucket` failed.
    #[error("create bucket {bucket}: {}", DisplayErrorContext(&**.source))]
    CreateBucket {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<SdkError<CreateBucketError, HttpResponse>>,
    },
    /// Listing a bucket's objects failed.
    #[error("list {bucket}: {}", DisplayErrorContext(&**.source))]
    ListObjects {
        /// The bucket.
        bucket: String,
        /// Why.
        #[source]
        source: Box<SdkError<ListObjectsV2Error, HttpResponse>>,
    },
    /// Deleting an object failed.
    #[error("delete s3://{bucket}/{key}: {}", DisplayErrorContext(&**.source))]
    DeleteObject {
        /// The bucket.
        bucket: String,
        /// The object's key.
        key: String,
        /// Why.
        #[source]
        source: Box<SdkError<DeleteObjectError, HttpResponse>>,
    },
}

/// A signed `ListBuckets`; the bucket names on success, the server's error otherwise.
pub async fn list_buckets(
    endpoint: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> Result<Vec<String>, S3Error> {
    bucket_names(&client(endpoint, region, access_key, secret_key)).await
}

/// The bucket names `client` can list (a signed `ListBuckets`).
pub async fn bucket_names(client: &aws_sdk_s3::Client) -> Result<Vec<String>, S3Error> {
    let out = client
        .list_buckets()
        .send()
        .await
        .map_err(|e| S3Error::ListBuckets(Box::new(e)))?;
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
) -> Result<Vec<String>, S3Error> {
    let existing = bucket_names(client).await?;
    let mut created = Vec::new();
    for b in buckets {
        if !existing.iter().any(|e| e == b) {
            client
                .create_bucket()
                .bucket(*b)
                .send()
                .await
                .map_err(|source| S3Error::CreateBucket {
                    bucket: b.to_string(),
                    source: Box::new(source),
                })?;
            created.push(b.to_string());
        }
    }
    Ok(created)
}

/// Deletes every object in `bucket`; returns how many.
pub async fn empty_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<usize, S3Error> {
    delete_prefix(client, bucket, "").await
}

/// Deletes every object in `bucket` whose key starts with `prefix`; returns how many.
pub async fn delete_prefix(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    prefix: &str,
) -> Result<usize, S3Error> {
    let mut deleted = 0;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .send()
            .await
            .map_err(|source| S3Error::ListObjects {
                bucket: bucket.to_string(),
                source: Box::new(source),
            })?;
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
                .map_err(|source| S3Error::DeleteObject {
                    bucket: bucket.to_string(),
                    key: k.clone(),
                    source: Box::new(source),
                })?;
            deleted += 1;
        }
    }
}
