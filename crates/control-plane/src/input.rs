//! What a request carries, checked before a handler sees it: a JSON body, path parameters and a
//! query, each refused with a 4xx `{"error": ...}` (never the framework's plain-text answer).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::Json;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The most a JSON body may be (everything but file uploads).
pub const JSON_LIMIT: usize = 1 << 20;

/// The most a file upload may be.
pub const FILE_LIMIT: usize = 64 << 20;

/// A JSON body of type `T` (its unknown fields refused by `T` itself).
pub struct Body<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) => Err(json_rejection(e)),
        }
    }
}

fn json_rejection(e: JsonRejection) -> ApiError {
    let message = match &e {
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with `Content-Type: application/json`".to_string()
        }
        _ => e.body_text(),
    };
    ApiError::Rejected {
        status: e.status(),
        message,
    }
}

/// Path parameters as `T` (a `String`, or a tuple of them).
pub struct Params<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Params(v))
            .map_err(|e: PathRejection| ApiError::Rejected {
                status: e.status(),
                message: e.body_text(),
            })
    }
}

/// The query string as `T`.
pub struct QueryOf<T>(pub T);

#[axum::async_trait]
impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryOf<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| QueryOf(v))
            .map_err(|e: QueryRejection| ApiError::Rejected {
                status: e.status(),
                message: e.body_text(),
            })
    }
}
