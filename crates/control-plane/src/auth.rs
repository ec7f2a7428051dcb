//! Who is calling. Users and the admin present `Authorization: Bearer <token>`: the seeded
//! admin API key (matched by its SHA-256 in `api_keys`) or a dex-issued access token (an RS256
//! JWT checked against the issuer's keys: signature, `iss`, `aud`, `exp`), whose `sub` is a
//! seeded user, mapped to their personal organization. Runners present the runner token.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use tokio::sync::RwLock;

use crate::app::AppState;
use crate::audit::AuditSlot;
use crate::error::ApiError;

/// An authenticated user or API key.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The audit log's actor: a user id, or `api-key:<uuid>`.
    pub actor: String,
    /// The organization it acts in (its personal one).
    pub org: String,
    /// An admin sees every organization's sandboxes and the runners.
    pub admin: bool,
}

/// A caller that presented the runner token.
#[derive(Debug, Clone, Copy)]
pub struct RunnerCaller;

/// A [`Principal`] that is an admin (the admin API key).
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

/// The `Bearer` token of a request, or why there is none.
pub fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "missing `Authorization: Bearer <token>`: use the admin API key (`stack env` shows ADMIN_API_KEY) or an access token from dex".into(),
        ));
    };
    let text = value.to_str().unwrap_or_default();
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(
            "malformed `Authorization` header: expected `Bearer <token>`".into(),
        )),
    }
}

#[axum::async_trait]
impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let p = if token.matches('.').count() == 2 {
            let sub = state.jwks.verify(token).await?;
            user(state, &sub).await?
        } else {
            api_key(state, token).await?
        };
        if let Some(slot) = parts.extensions.get::<AuditSlot>() {
            slot.set(p.actor.clone(), Some(p.org.clone())).await;
        }
        Ok(p)
    }
}

#[axum::async_trait]
impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let p = Principal::from_request_parts(parts, state).await?;
        if !p.admin {
            return Err(ApiError::Forbidden(
                "only the admin API key may do this (`stack env` shows ADMIN_API_KEY)".into(),
            ));
        }
        Ok(Admin(p))
    }
}

#[axum::async_trait]
impl FromRequestParts<AppState> for RunnerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        if !same(token.as_bytes(), state.config.runner_token.as_bytes()) {
            return Err(ApiError::Unauthorized(
                "not the runner token: runners present `RUNNER_TOKEN` (`${secret.runner-token}`)"
                    .into(),
            ));
        }
        if let Some(slot) = parts.extensions.get::<AuditSlot>() {
            slot.set("runner".into(), None).await;
        }
        Ok(RunnerCaller)
    }
}

/// Compares secrets in time independent of where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn api_key(state: &AppState, key: &str) -> Result<Principal, ApiError> {
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    let row = sqlx::query(
        "SELECT k.id::text AS id, k.organization_id::text AS org, \
         (u.role = 'admin' OR '*' = ANY(k.permissions)) AS admin \
         FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::Unauthorized(
            "unknown API key (and not a JWT): use ADMIN_API_KEY from `stack env` or a dex access token".into(),
        ));
    };
    Ok(Principal {
        actor: format!("api-key:{}", row.try_get::<String, _>("id")?),
        org: row.try_get("org")?,
        admin: row.try_get("admin")?,
    })
}

async fn user(state: &AppState, sub: &str) -> Result<Principal, ApiError> {
    let row = sqlx::query(
        "SELECT o.id::text AS org, u.role = 'admin' AS admin FROM users u \
         JOIN organizations o ON o.created_by = u.id AND o.personal WHERE u.id = $1",
    )
    .bind(sub)
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else {
        return Err(ApiError::Forbidden(format!(
            "user `{sub}` has no organization here: is it in services/dex/config.yaml? run `stack seed`"
        )));
    };
    Ok(Principal {
        actor: sub.to_string(),
        org: row.try_get("org")?,
        admin: row.try_get("admin")?,
    })
}

/// The claims the control plane reads from an access token.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

/// The issuer's signing keys, fetched on first use and again when a token names a key id they
/// do not hold (the issuer rotated its keys), at most once every [`REFETCH_EVERY`].
pub struct Jwks {
    issuer: String,
    audience: String,
    url: String,
    http: reqwest::Client,
    cached: RwLock<Fetched>,
}

#[derive(Default)]
struct Fetched {
    keys: Option<Arc<JwkSet>>,
    at: Option<Instant>,
}

/// The shortest time between two fetches of the keys (a flood of tokens naming unknown keys
/// must not become a flood of requests to the issuer).
pub const REFETCH_EVERY: Duration = Duration::from_secs(2);

impl Jwks {
    /// The keys of `issuer` (`$issuer/keys`) for tokens meant for `audience`.
    pub fn new(issuer: &str, audience: &str, http: reqwest::Client) -> Jwks {
        Jwks {
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            url: format!("{issuer}/keys"),
            http,
            cached: RwLock::new(Fetched::default()),
        }
    }

    /// Checks `token` (RS256, a known key, `iss`, `aud`, `exp`) and returns its `sub`.
    pub async fn verify(&self, token: &str) -> Result<String, ApiError> {
        let bad = |why: String| ApiError::Unauthorized(why);
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| bad(format!("malformed token: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(bad(format!(
                "token signed with {:?}: only RS256 is accepted",
                header.alg
            )));
        }
        // The issuer first, unverified: a foreign token must not make us fetch our keys again.
        let mut peek = Validation::new(Algorithm::RS256);
        peek.insecure_disable_signature_validation();
        peek.validate_exp = false;
        peek.validate_aud = false;
        peek.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(&[]), &peek)
            .map_err(|e| bad(format!("malformed token: {e}")))?
            .claims;
        if claims.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(bad(format!(
                "token issued by {}, not by this stack's issuer {}",
                claims.iss.as_deref().unwrap_or("nobody (no `iss`)"),
                self.issuer
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| bad("token names no signing key (`kid`)".into()))?;
        let key = self.key(&kid).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            bad(match e.kind() {
                K::ExpiredSignature => "token expired: get a new one from dex".into(),
                K::InvalidAudience => format!("token not meant for `{}` (`aud`)", self.audience),
                K::InvalidSignature => {
                    "token signature does not verify with the issuer's keys".into()
                }
                _ => format!("invalid token: {e}"),
            })
        })?;
        data.claims
            .sub
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("token has no subject (`sub`)".into()))
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, ApiError> {
        {
            let c = self.cached.read().await;
            if let Some(jwk) = c.keys.as_ref().and_then(|k| k.find(kid)) {
                return decoding_key(jwk);
            }
        }
        let mut c = self.cached.write().await;
        // Another request may have fetched them meanwhile.
        if let Some(jwk) = c.keys.as_ref().and_then(|k| k.find(kid)) {
            return decoding_key(jwk);
        }
        if c.at.is_none_or(|at| at.elapsed() >= REFETCH_EVERY) {
            c.at = Some(Instant::now());
            c.keys = Some(Arc::new(self.fetch().await?));
        }
        match c.keys.as_ref().and_then(|k| k.find(kid)) {
            Some(jwk) => decoding_key(jwk),
            None => Err(ApiError::Unauthorized(format!(
                "token signed with key `{kid}`, which {} does not publish",
                self.url
            ))),
        }
    }

    async fn fetch(&self) -> Result<JwkSet, ApiError> {
        let err = |why: String| ApiError::Jwks {
            url: self.url.clone(),
            why,
        };
        let resp = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(err(format!("it answered {}", resp.status())));
        }
        resp.json::<JwkSet>().await.map_err(|e| err(e.to_string()))
    }
}

fn decoding_key(jwk: &jsonwebtoken::jwk::Jwk) -> Result<DecodingKey, ApiError> {
    DecodingKey::from_jwk(jwk)
        .map_err(|e| ApiError::Unauthorized(format!("the token's key is unusable: {e}")))
}
