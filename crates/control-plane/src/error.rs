//! Every failure of a request as one typed error, turned into its HTTP answer here and nowhere
//! else: a status and `{"error": "<what is wrong and what to do>"}`. Bad input is always a 4xx;
//! a runner's failure a 502 or 503; only the control plane's own faults are a 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::ErrorBody;

use crate::runner_client::RunnerError;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No, a malformed, an expired or a foreign credential.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid credential that may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// No such object, or not the caller's.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or a value is out of range.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with the current state (a name in use, a stopped sandbox).
    #[error("{0}")]
    Conflict(String),
    /// A body, path or query the framework refused (wrong type, too large, wrong content type).
    #[error("{message}")]
    Rejected {
        /// The status the framework chose (400, 413, 415, 422).
        status: StatusCode,
        /// Its explanation.
        message: String,
    },
    /// No runner can take a new sandbox.
    #[error("no runner can take a sandbox: {0}")]
    NoRunner(String),
    /// The sandbox's runner failed or refused.
    #[error(transparent)]
    Runner(#[from] RunnerError),
    /// PostgreSQL failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Redis failed.
    #[error("redis is unavailable: {0}; is it up? try `stack up redis`")]
    Redis(#[from] redis::RedisError),
    /// The OIDC issuer's keys cannot be fetched.
    #[error(
        "cannot fetch the OIDC issuer's keys from {url}: {why}; is dex up? try `stack up dex`"
    )]
    Jwks {
        /// The JWKS URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Something of the control plane's own failed (randomness, a stored value it cannot read).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Rejected { status, .. } => *status,
            ApiError::NoRunner(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Runner(e) => e.status(),
            ApiError::Database(e) if db_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Database(e) if crate::db::is_data_exception(e) => StatusCode::BAD_REQUEST,
            ApiError::Database(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Redis(_) | ApiError::Jwks { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// PostgreSQL cannot be reached (as opposed to a query that failed).
fn db_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

impl From<platform_proto::CheckError> for ApiError {
    fn from(e: platform_proto::CheckError) -> ApiError {
        ApiError::BadRequest(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // What the caller cannot fix also goes to the log (`stack logs api`).
            eprintln!("{} {self}", status.as_u16());
        }
        error_response(status, self.to_string())
    }
}

/// A `{"error": message}` answer with `status`.
pub fn error_response(status: StatusCode, message: String) -> Response {
    (status, Json(ErrorBody { error: message })).into_response()
}

/// Why a binary could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL cannot be reached.
    #[error(
        "cannot connect to PostgreSQL at DATABASE_URL: {0}; is it up? try `stack up postgres`"
    )]
    Database(#[source] sqlx::Error),
    /// REDIS_URL is not a Redis URL.
    #[error("REDIS_URL is not usable: {0}")]
    Redis(#[source] redis::RedisError),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[source] reqwest::Error),
    /// The port is taken or cannot be bound.
    #[error("cannot listen on 127.0.0.1:{port}: {source}; `stack doctor` names what holds it")]
    Bind {
        /// The port.
        port: u16,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped on an I/O error.
    #[error("the server failed: {0}")]
    Serve(#[source] std::io::Error),
}
