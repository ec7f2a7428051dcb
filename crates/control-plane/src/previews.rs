//! Signed preview URLs: a random token in Redis (`preview:{token}`, with the preview TTL) that
//! names a sandbox's port and its runner; the preview proxy resolves it on every request, so an
//! expired or unknown token is never forwarded. Each sandbox's tokens are listed in
//! `sandbox:{id}:previews`, so that a migration points them at the sandbox's new runner
//! ([`repoint`]) and URLs handed out before it keep working.

use std::io::Read;
use std::time::SystemTime;

use axum::Json;
use serde::{Deserialize, Serialize};

use crate::cache::Cache;
use crate::error::ApiError;
use crate::input::Params;
use crate::sandboxes::Owned;

/// What a preview token stands for, as stored in Redis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    /// The sandbox.
    pub sandbox_id: String,
    /// Its port.
    pub port: u16,
    /// Its runner's name.
    pub runner: String,
    /// Its runner's base URL.
    pub runner_url: String,
}

/// `GET /api/sandbox/{id}/ports/{port}/signed-preview-url`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignedUrl {
    /// The URL to open (through Caddy's preview-host route).
    pub url: String,
    /// The token in it.
    pub token: String,
    /// When it stops working (RFC 3339).
    pub expires_at: String,
}

fn key(token: &str) -> String {
    format!("preview:{token}")
}

fn index_key(sandbox_id: &str) -> String {
    format!("sandbox:{sandbox_id}:previews")
}

/// `2 * n` lowercase hex characters from the kernel's random source.
pub fn random_hex(n: usize) -> Result<String, ApiError> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| ApiError::Internal(format!("cannot read /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// A port number from a path: 1-65535.
pub fn port(raw: &str) -> Result<u16, ApiError> {
    match raw.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ApiError::BadRequest(format!(
            "`{}` is not a port number (1-65535)",
            raw.chars().take(20).collect::<String>()
        ))),
    }
}

/// Issues a signed preview URL for the caller's sandbox `id`'s `port`.
pub async fn signed_url(
    o: Owned,
    Params((_, raw_port)): Params<(String, String)>,
) -> Result<Json<SignedUrl>, ApiError> {
    let port = port(&raw_port)?;
    let runner = o.runner().await?;
    let state = &o.state;
    let token = random_hex(16)?;
    let grant = Grant {
        sandbox_id: o.sandbox.id.clone(),
        port,
        runner: runner.name,
        runner_url: runner.api_url,
    };
    let value = serde_json::to_string(&grant).map_err(|e| ApiError::Internal(e.to_string()))?;
    let ttl = state.config.preview_ttl;
    state.cache.set_ex(&key(&token), &value, ttl).await?;
    state
        .cache
        .add_to_set(&index_key(&grant.sandbox_id), &token, ttl)
        .await?;
    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string();
    let url = state
        .config
        .preview_url_base
        .replace("{port}", &port.to_string())
        .replace("{token}", &token);
    Ok(Json(SignedUrl {
        url,
        token,
        expires_at: expires,
    }))
}

/// Points every live preview token of sandbox `sandbox_id` at `runner`; expired ones are
/// dropped from its index. Returns how many were repointed.
pub async fn repoint(
    cache: &Cache,
    sandbox_id: &str,
    runner: &crate::runner_client::RunnerRef,
) -> Result<usize, redis::RedisError> {
    let index = index_key(sandbox_id);
    let mut repointed = 0;
    for token in cache.members(&index).await? {
        let grant = cache
            .get(&key(&token))
            .await?
            .and_then(|v| serde_json::from_str::<Grant>(&v).ok());
        let Some(mut grant) = grant else {
            cache.remove_from_set(&index, &token).await?;
            continue;
        };
        grant.runner = runner.name.clone();
        grant.runner_url = runner.api_url.clone();
        let Ok(value) = serde_json::to_string(&grant) else {
            continue;
        };
        if cache.replace_keep_ttl(&key(&token), &value).await? {
            repointed += 1;
        } else {
            cache.remove_from_set(&index, &token).await?;
        }
    }
    Ok(repointed)
}

/// The grant of `token`, if it exists and has not expired. Tokens are lowercase hex; anything
/// else is unknown without asking Redis.
pub async fn resolve(cache: &Cache, token: &str) -> Result<Option<Grant>, redis::RedisError> {
    let plausible = !token.is_empty()
        && token.len() <= 64
        && token
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase());
    if !plausible {
        return Ok(None);
    }
    Ok(cache
        .get(&key(token))
        .await?
        .and_then(|v| serde_json::from_str(&v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_tokens() {
        assert_eq!(port("8080").ok(), Some(8080));
        for bad in ["0", "65536", "-1", "http", ""] {
            assert!(port(bad).is_err(), "{bad}");
        }
        let t = random_hex(16).expect("random");
        assert_eq!(t.len(), 32);
        assert!(t
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(t, random_hex(16).expect("random"));
    }
}
