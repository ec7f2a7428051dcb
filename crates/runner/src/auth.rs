//! The runner token check every call but `/healthz` passes: `Authorization: Bearer
//! $RUNNER_TOKEN`, compared in constant time (SHA-256 of both sides, so lengths leak nothing).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// The expected token, kept only as its SHA-256.
#[derive(Clone)]
pub struct Token(Arc<[u8; 32]>);

impl Token {
    /// The token the runner was given.
    pub fn new(token: &str) -> Self {
        Self(Arc::new(Sha256::digest(token.as_bytes()).into()))
    }

    /// Is `header` (an `Authorization` value) `Bearer <this token>`?
    pub fn admits(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let given: [u8; 32] = Sha256::digest(given).into();
        given.ct_eq(&self.0[..]).into()
    }
}

/// Middleware: 401 unless the request carries the token.
pub async fn require(State(token): State<Token>, req: Request, next: Next) -> Response {
    let header = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if token.admits(header) {
        next.run(req).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_is_admitted() {
        let t = Token::new("s3cret-s3cret-s3cret");
        assert!(t.admits(Some(b"Bearer s3cret-s3cret-s3cret")));
        for bad in [
            &b"Bearer s3cret-s3cret-s3cre"[..],
            b"Bearer s3cret-s3cret-s3cret ",
            b"bearer s3cret-s3cret-s3cret",
            b"s3cret-s3cret-s3cret",
            b"Bearer ",
        ] {
            assert!(!t.admits(Some(bad)), "{}", String::from_utf8_lossy(bad));
        }
        assert!(!t.admits(None));
    }
}
