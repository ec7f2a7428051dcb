//! Seed data for the control plane, idempotent: a second run changes nothing and a missing row
//! is added back. Region `us`; the admin user `boxlite-admin` with its personal organization and
//! owner role; one user (and personal organization) per OIDC identity in the Dex config; an admin
//! API key whose clear value lives only in the state dir (`secrets/admin-api-key`, 0600) and
//! whose SHA-256 is in the database.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use saphyr::{LoadableYamlNode, Yaml};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

/// The seeded admin's user id.
pub const ADMIN_USER: &str = "boxlite-admin";

/// A user to seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// OIDC subject (the users table's key).
    pub sub: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// `admin` or `user`.
    pub role: String,
}

/// Seeding failures.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The Dex config could not be read.
    #[error("cannot read the OIDC identities from {}: {source}", .path.display())]
    IdentitiesRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Dex config is not YAML.
    #[error("cannot read the OIDC identities from {}: {source}", .path.display())]
    IdentitiesYaml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: saphyr::ScanError,
    },
    /// A `staticPasswords` entry lacks a field the seed needs.
    #[error("cannot read the OIDC identities from {}: every staticPasswords entry needs `email` and `userID`", .path.display())]
    IdentityFields {
        /// The file.
        path: PathBuf,
    },
    /// The admin API key could not be created in the state dir.
    #[error("cannot create the admin API key in {}: {source}", .dir.display())]
    ApiKey {
        /// The state dir.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::schema::SchemaError),
    /// A query failed (is the schema loaded?).
    #[error("seeding failed: {0}\n  is the schema loaded? run `stack schema load`")]
    Query(#[source] sqlx::Error),
    /// The stack's S3 connection details could not be read.
    #[error(transparent)]
    Exports(#[from] crate::exports::ExportError),
    /// The buckets could not be created.
    #[error("seeding the buckets failed: {0}\n  is the S3 service up? try `stack up minio`")]
    Buckets(#[source] crate::s3::S3Error),
}

/// The buckets every stack with an S3 service has: images and files, and box backups.
pub const BUCKETS: [&str; 2] = ["boxlite", "backups"];

/// The Dex config whose `staticPasswords` become users, relative to the project root (the
/// default stack's OIDC provider reads it; `stack seed --identities` names another).
pub const IDENTITIES: &str = "services/dex/config.yaml";

/// What one seed of a whole stack added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Seeded {
    /// Rows added per table (zero counts included).
    pub rows: SeedReport,
    /// Buckets created.
    pub buckets: Vec<String>,
    /// How long it took.
    #[serde(skip)]
    pub elapsed: std::time::Duration,
}

/// Seeds the database at `url` (identities from `identities`, else [`IDENTITIES`] under the
/// project root, when that file exists) and, when the stack exports an S3 endpoint, its
/// [`BUCKETS`]. Shared by `stack seed` and `reset --hard`.
pub async fn seed_stack(
    stack: &crate::spec::Stack,
    layout: &crate::layout::Layout,
    url: &str,
    identities: Option<PathBuf>,
) -> Result<Seeded, SeedError> {
    let t0 = std::time::Instant::now();
    let path = identities.unwrap_or_else(|| stack.root.join(IDENTITIES));
    let ids = if path.exists() {
        dex_identities(&path)?
    } else {
        Vec::new()
    };
    let key = crate::secrets::get_or_create(layout, ADMIN_API_KEY).map_err(|source| {
        SeedError::ApiKey {
            dir: layout.root().to_path_buf(),
            source,
        }
    })?;
    let mut conn = crate::schema::connect(url, crate::schema::CONNECT_TIMEOUT).await?;
    let rows = run(&mut conn, &ids, &key).await?;
    let mut buckets = Vec::new();
    if let Some(client) = crate::exports::Exports::new(stack, layout).s3_client()? {
        buckets = crate::s3::ensure_buckets(&client, &BUCKETS)
            .await
            .map_err(SeedError::Buckets)?;
    }
    Ok(Seeded {
        rows,
        buckets,
        elapsed: t0.elapsed(),
    })
}

/// The secret holding the admin API key in clear (`secrets/admin-api-key`).
pub const ADMIN_API_KEY: &str = "admin-api-key";

/// Dex's subject for a static password user: base64url (no padding) of the protobuf message
/// `{1: user_id, 2: connector_id}`.
pub fn dex_subject(user_id: &str, connector: &str) -> String {
    let mut msg = Vec::new();
    for (field, value) in [(1u8, user_id), (2u8, connector)] {
        msg.push((field << 3) | 2);
        let mut n = value.len();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                msg.push(byte);
                break;
            }
            msg.push(byte | 0x80);
        }
        msg.extend_from_slice(value.as_bytes());
    }
    base64url(&msg)
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// The `staticPasswords` of a Dex config, as identities.
pub fn dex_identities(path: &Path) -> Result<Vec<Identity>, SeedError> {
    let text = std::fs::read_to_string(path).map_err(|source| SeedError::IdentitiesRead {
        path: path.to_path_buf(),
        source,
    })?;
    let docs = Yaml::load_from_str(&text).map_err(|source| SeedError::IdentitiesYaml {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(doc) = docs.first() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    if let Some(list) = doc["staticPasswords"].as_vec() {
        for p in list {
            let field = |k: &str| p[k].as_str().map(str::to_string);
            let (Some(email), Some(user_id)) = (field("email"), field("userID")) else {
                return Err(SeedError::IdentityFields {
                    path: path.to_path_buf(),
                });
            };
            out.push(Identity {
                sub: dex_subject(&user_id, "local"),
                name: field("username").unwrap_or_else(|| email.clone()),
                email,
                role: "user".into(),
            });
        }
    }
    Ok(out)
}

/// Rows added by one seed run, per table.
pub type SeedReport = BTreeMap<String, u64>;

/// Seeds `identities` plus the admin and its API key (`admin_key` in clear), in one transaction.
pub async fn run(
    c: &mut PgConnection,
    identities: &[Identity],
    admin_key: &str,
) -> Result<SeedReport, SeedError> {
    let q = SeedError::Query;
    let mut report = SeedReport::new();
    let mut add = |table: &str, n: u64| *report.entry(table.to_string()).or_default() += n;
    let mut tx = c.begin().await.map_err(q)?;
    let n = sqlx::query(
        "INSERT INTO regions (id, name) VALUES ('us', 'United States') ON CONFLICT (id) DO NOTHING",
    )
    .execute(&mut *tx)
    .await
    .map_err(q)?;
    add("regions", n.rows_affected());
    let admin = Identity {
        sub: ADMIN_USER.into(),
        email: "boxlite-admin@boxlite.local".into(),
        name: ADMIN_USER.into(),
        role: "admin".into(),
    };
    for who in std::iter::once(&admin).chain(identities) {
        let n = sqlx::query("INSERT INTO users (id, email, name, role) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING")
            .bind(&who.sub)
            .bind(&who.email)
            .bind(&who.name)
            .bind(&who.role)
            .execute(&mut *tx)
            .await
            .map_err(q)?;
        add("users", n.rows_affected());
        let n = sqlx::query(
            "INSERT INTO organizations (name, personal, created_by) SELECT $2, true, $1 \
             WHERE NOT EXISTS (SELECT 1 FROM organizations WHERE created_by = $1 AND personal)",
        )
        .bind(&who.sub)
        .bind(format!("{} (personal)", who.name))
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        add("organizations", n.rows_affected());
        let n = sqlx::query(
            "INSERT INTO organization_users (organization_id, user_id, role) \
             SELECT id, $1, 'owner' FROM organizations WHERE created_by = $1 AND personal \
             ON CONFLICT (organization_id, user_id) DO NOTHING",
        )
        .bind(&who.sub)
        .execute(&mut *tx)
        .await
        .map_err(q)?;
        add("organization_users", n.rows_affected());
    }
    // The stored hash follows the state dir's key (a new key after a nuke replaces it).
    let hash = hex::encode(Sha256::digest(admin_key.as_bytes()));
    let n = sqlx::query(
        "INSERT INTO api_keys (organization_id, user_id, name, key_hash, permissions) \
         SELECT id, $1, 'admin', $2, '{*}' FROM organizations WHERE created_by = $1 AND personal \
         ON CONFLICT (organization_id, name) DO UPDATE SET key_hash = EXCLUDED.key_hash \
         WHERE api_keys.key_hash <> EXCLUDED.key_hash",
    )
    .bind(ADMIN_USER)
    .bind(&hash)
    .execute(&mut *tx)
    .await
    .map_err(q)?;
    add("api_keys", n.rows_affected());
    tx.commit().await.map_err(q)?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dex_subjects_match_what_dex_issues() {
        assert_eq!(dex_subject("1234", "local"), "CgQxMjM0EgVsb2NhbA");
        assert_eq!(dex_subject("5678", "local"), "CgQ1Njc4EgVsb2NhbA");
    }

    #[test]
    fn the_default_dex_config_yields_both_dev_identities() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("services/dex/config.yaml");
        let ids = dex_identities(&path).unwrap();
        let emails: Vec<&str> = ids.iter().map(|i| i.email.as_str()).collect();
        assert_eq!(emails, vec!["admin@boxlite.dev", "test01@boxlite.dev"]);
        assert_eq!(ids[0].sub, "CgQxMjM0EgVsb2NhbA");
    }
}
