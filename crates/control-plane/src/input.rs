//! What a request carries, checked before a handler sees it: a JSON body, path parameters and a
//! query, each refused with a 4xx `{"error": ...}` (never the framework's plain-text answer).

use axum::extract::rejection::JsonRejection;
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

/// Declares `$name<T>`: axum's `$inner<T>` extractor whose rejection is an [`ApiError`] with
/// the framework's status and explanation.
macro_rules! checked_parts {
    ($(#[$doc:meta])* $name:ident, $inner:ident) => {
        $(#[$doc])*
        pub struct $name<T>(pub T);

        #[axum::async_trait]
        impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for $name<T> {
            type Rejection = ApiError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                match $inner::<T>::from_request_parts(parts, state).await {
                    Ok($inner(v)) => Ok($name(v)),
                    Err(e) => Err(ApiError::Rejected {
                        status: e.status(),
                        message: e.body_text(),
                    }),
                }
            }
        }
    };
}

checked_parts!(
    /// Path parameters as `T` (a `String`, a tuple or a map of them).
    Params,
    Path
);
checked_parts!(
    /// The query string as `T`.
    QueryOf,
    Query
);
