//! The stack's connection details: what its services export (`exports:`), with generated
//! secrets filled in. `stack env` prints them; `schema`, `seed` and `reset` connect with them.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

use crate::layout::Layout;
use crate::spec::Stack;

/// The region an S3 client signs with when the stack exports none (every SDK's default).
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// A service's exports could not be completed.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read the secrets of `{service}` in {}: {source}\n  check that directory's permissions",
    .dir.display()
)]
pub struct ExportError {
    /// The service whose exports name a secret.
    pub service: String,
    /// The secrets directory.
    pub dir: PathBuf,
    /// Why the secret could not be read or created.
    #[source]
    pub source: io::Error,
}

/// The stack's database cannot be named.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No service exports `DATABASE_URL` and none was given.
    #[error("no database: no service exports DATABASE_URL; pass `--database-url URL`")]
    NoDatabase,
    /// The export names a secret that cannot be read.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Variable name -> value, sorted by name.
pub type ExportedVars = BTreeMap<String, String>;

/// What the stack's services export, by variable name. Secrets are filled in when a value is
/// asked for, so looking up `DATABASE_URL` creates no unrelated secret.
#[derive(Debug, Clone)]
pub struct Exports {
    /// Variable -> (the exporting service, the value with `${secret.NAME}` still in place).
    raw: BTreeMap<String, (String, String)>,
    layout: Layout,
}

impl Exports {
    /// The exports of every service of `stack`, whose secrets live in `layout`.
    pub fn new(stack: &Stack, layout: &Layout) -> Exports {
        let raw = stack
            .services
            .values()
            .flat_map(|svc| {
                svc.exports
                    .iter()
                    .map(|(k, v)| (k.clone(), (svc.name.clone(), v.clone())))
            })
            .collect();
        Exports {
            raw,
            layout: layout.clone(),
        }
    }

    /// The value of `key` (its secrets created on first use), if a service exports it.
    pub fn get(&self, key: &str) -> Result<Option<String>, ExportError> {
        let Some((service, raw)) = self.raw.get(key) else {
            return Ok(None);
        };
        crate::secrets::fill(&self.layout, raw)
            .map(Some)
            .map_err(|source| ExportError {
                service: service.clone(),
                dir: self.layout.secrets_dir(),
                source,
            })
    }

    /// Every variable with its value, sorted by name.
    pub fn all(&self) -> Result<ExportedVars, ExportError> {
        self.raw
            .keys()
            .map(|k| Ok((k.clone(), self.get(k)?.unwrap_or_default())))
            .collect()
    }

    /// `flag` when given, else the exported `DATABASE_URL`.
    pub fn database_url(&self, flag: Option<String>) -> Result<String, ConnectError> {
        match flag {
            Some(url) => Ok(url),
            None => self.get("DATABASE_URL")?.ok_or(ConnectError::NoDatabase),
        }
    }

    /// An S3 client for the exported endpoint and key, when the stack has an S3 service.
    pub fn s3_client(&self) -> Result<Option<aws_sdk_s3::Client>, ExportError> {
        let (Some(endpoint), Some(key), Some(secret)) = (
            self.get("S3_ENDPOINT")?,
            self.get("AWS_ACCESS_KEY_ID")?,
            self.get("AWS_SECRET_ACCESS_KEY")?,
        ) else {
            return Ok(None);
        };
        let region = self
            .get("AWS_REGION")?
            .unwrap_or_else(|| DEFAULT_S3_REGION.to_string());
        Ok(Some(crate::s3::client(&endpoint, &region, &key, &secret)))
    }
}
