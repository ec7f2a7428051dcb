//! Every way a runner call fails, and the one place each becomes an HTTP status with a
//! `{"error": "..."}` body. Bad input is always a 4xx; a 5xx means the runner or its host failed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sandbox::{DriverError, FileError, PullError, SandboxError};

use crate::wire::ErrorBody;

/// Why a runner call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No `Authorization: Bearer` with the runner token.
    #[error("missing or wrong bearer token: send `Authorization: Bearer $RUNNER_TOKEN`")]
    Unauthorized,
    /// A request the runner cannot read (body, query, path, field values).
    #[error("{0}")]
    BadRequest(String),
    /// A body past the limit of its route.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// A body that should be JSON and is not labelled so.
    #[error("send the body as JSON, with `Content-Type: application/json`")]
    NotJson,
    /// No such route.
    #[error("no such route: see docs/platform.md, \"Runner HTTP API\"")]
    NoRoute,
    /// The image is not in the stack's registry.
    #[error("image `{image}` is not in the registry at {registry}: push it first (the stack's `images` task)")]
    ImageNotFound {
        /// The image as asked for.
        image: String,
        /// The registry's `host:port`.
        registry: String,
    },
    /// The registry failed or could not be reached.
    #[error("cannot pull image `{image}`: {source}")]
    Pull {
        /// The image as asked for.
        image: String,
        /// Why.
        #[source]
        source: PullError,
    },
    /// The runner holds as many sandboxes as it takes.
    #[error("runner is full: it holds {capacity} sandboxes, its capacity")]
    Full {
        /// Its capacity.
        capacity: usize,
    },
    /// Another create, start, stop or delete of the same sandbox is under way.
    #[error("sandbox {0} is busy with another call: retry")]
    Busy(String),
    /// The sandbox's port did not answer.
    #[error("port {port} of sandbox {id}: {reason}")]
    Forward {
        /// The sandbox.
        id: String,
        /// Its port.
        port: u16,
        /// What failed.
        reason: String,
    },
    /// No `RUNNER_S3_*` settings: the backup routes are off.
    #[error("backups are not configured: set RUNNER_S3_ENDPOINT, RUNNER_S3_REGION, RUNNER_S3_ACCESS_KEY_ID and RUNNER_S3_SECRET_ACCESS_KEY in the runner's environment (services/runner-a.yaml)")]
    BackupsOff,
    /// The object store failed or could not be reached: nothing was stored or installed.
    #[error("S3 failed; nothing was {done}, the sandbox is as it was")]
    Store {
        /// `stored` (a backup) or `installed` (a restore).
        done: &'static str,
        /// Why.
        #[source]
        source: Box<objectstore::StoreError>,
    },
    /// S3 failed while the backup was read: nothing was installed.
    #[error("S3 failed while {key} was read; nothing was installed")]
    BrokeOff {
        /// The backup.
        key: String,
        /// Why (the object store's error inside).
        #[source]
        source: std::io::Error,
    },
    /// A task of the runner failed (a bug).
    #[error("{0}")]
    Internal(String),
    /// The backup to restore does not exist.
    #[error(transparent)]
    NoBackup(Box<objectstore::StoreError>),
    /// The sandbox's disk could not be archived.
    #[error("cannot export the disk of sandbox {id}; nothing was stored")]
    Export {
        /// The sandbox.
        id: String,
        /// Why.
        #[source]
        source: boxarchive::ArchiveError,
    },
    /// The backup is damaged, altered or of a newer format: nothing was installed.
    #[error("backup {key} cannot be restored, nothing was installed")]
    Archive {
        /// Its key.
        key: String,
        /// What is wrong with it, naming the member.
        #[source]
        source: boxarchive::ArchiveError,
    },
    /// The backup is of another sandbox.
    #[error("backup {key} is of sandbox {found}, not {id}: a backup is restored under its own id")]
    OtherBox {
        /// The id asked for.
        id: String,
        /// The backup.
        key: String,
        /// The id it holds.
        found: String,
    },
    /// The backup's image no longer resolves to the digest it was made from.
    #[error("image `{image}` now resolves to {found} in the registry, the backup was made from {expected}: push that image back under this tag to restore it")]
    ImageChanged {
        /// The image.
        image: String,
        /// The backup's digest.
        expected: String,
        /// The registry's.
        found: String,
    },
    /// A restore onto an existing sandbox without `replace`.
    #[error("sandbox {0} exists: restore with `\"replace\": true` to replace it")]
    Exists(String),
    /// The box driver failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The box driver failed in a way only it can.
    #[error(transparent)]
    Driver(DriverError),
}

impl From<DriverError> for ApiError {
    /// The errors both drivers share keep their status (a missing sandbox is a 404 whichever
    /// driver runs it).
    fn from(e: DriverError) -> Self {
        match e {
            DriverError::Sandbox(e) => Self::Sandbox(e),
            #[allow(unreachable_patterns)]
            e => Self::Driver(e),
        }
    }
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NoRoute | Self::ImageNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Pull { .. } | Self::Forward { .. } => StatusCode::BAD_GATEWAY,
            Self::Full { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy(_) => StatusCode::CONFLICT,
            Self::BackupsOff => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store { .. } | Self::BrokeOff { .. } => StatusCode::BAD_GATEWAY,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoBackup(_) => StatusCode::NOT_FOUND,
            Self::Export { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Archive { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::OtherBox { .. } => StatusCode::BAD_REQUEST,
            Self::ImageChanged { .. } | Self::Exists(_) => StatusCode::CONFLICT,
            Self::Sandbox(e) => sandbox_status(e),
            Self::Driver(e) => driver_status(e),
        }
    }
}

fn sandbox_status(e: &SandboxError) -> StatusCode {
    match e {
        SandboxError::AlreadyExists { .. } | SandboxError::NotRunning { .. } => {
            StatusCode::CONFLICT
        }
        SandboxError::NotFound { .. } => StatusCode::NOT_FOUND,
        SandboxError::File(_, f) => match f {
            FileError::NotAbsolute(_) | FileError::Escape(_) | FileError::NotAFile(_) => {
                StatusCode::BAD_REQUEST
            }
            FileError::NotFound(_) => StatusCode::NOT_FOUND,
            FileError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            FileError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        },
        SandboxError::Net(..) => StatusCode::BAD_GATEWAY,
        SandboxError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
        // An image whose `User` a runner that is not root cannot map: the caller's choice.
        SandboxError::Bundle(_, sandbox::BundleError::Unmapped { .. }) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(feature = "microvm")]
fn driver_status(e: &DriverError) -> StatusCode {
    use sandbox::microvm::MicrovmError;
    match e {
        DriverError::Sandbox(e) => sandbox_status(e),
        // Nothing answers on the port, as for a runc sandbox.
        DriverError::Microvm(
            MicrovmError::Connect { .. } | MicrovmError::ConnectTimeout { .. },
        ) => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(not(feature = "microvm"))]
fn driver_status(e: &DriverError) -> StatusCode {
    match e {
        DriverError::Sandbox(e) => sandbox_status(e),
    }
}

/// The error with its causes, `: `-joined (a driver error's own text names only the step).
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            eprintln!("runner: {}", describe(&self));
        }
        let body = ErrorBody {
            error: describe(&self),
        };
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_a_4xx() {
        let id = sandbox::SandboxId::parse("sb-1").expect("id");
        let escape = SandboxError::File(id.clone(), FileError::Escape("/../etc".into()));
        assert_eq!(ApiError::from(escape).status(), StatusCode::BAD_REQUEST);
        let stopped = SandboxError::NotRunning { id: id.clone() };
        assert_eq!(ApiError::from(stopped).status(), StatusCode::CONFLICT);
        assert_eq!(
            ApiError::from(SandboxError::NotFound { id }).status(),
            StatusCode::NOT_FOUND
        );
        let missing = ApiError::ImageNotFound {
            image: "boxlite/nope:1".into(),
            registry: "127.0.0.1:25000".into(),
        };
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert!(missing.to_string().contains("boxlite/nope:1"));
    }
}
