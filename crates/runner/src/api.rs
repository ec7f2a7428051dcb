//! The runner's HTTP API (docs/platform.md, "Runner HTTP API"): the routes, their body limits and
//! the token check in front of all of them but `/healthz`, `/readyz` and `/info`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;

use crate::auth::{self, Token};
use crate::backups::Backups;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::forward;
use crate::sandboxes::Sandboxes;
use crate::wire;

/// Largest JSON body (create, exec).
pub const JSON_LIMIT: usize = 64 << 10;
/// Largest upload.
pub const UPLOAD_LIMIT: usize = 64 << 20;

/// What every handler reaches.
#[derive(Clone)]
pub struct App {
    /// The runner's name.
    pub name: String,
    /// Its sandboxes.
    pub sandboxes: Arc<Sandboxes>,
    /// Has the control plane taken its registration since it started? (`/readyz`)
    pub registered: Arc<AtomicBool>,
    /// Backups to S3, when configured.
    pub backups: Option<Arc<Backups>>,
}

impl App {
    fn backups(&self) -> Result<&Arc<Backups>, ApiError> {
        self.backups.as_ref().ok_or(ApiError::BackupsOff)
    }
}

/// The router: every route behind the token, and the unauthenticated `/healthz`, `/readyz` and
/// `/info`.
pub fn router(app: App, token: Token) -> Router {
    let ports = any(port_root);
    Router::new()
        .route("/health", get(health))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/:id", get(get_one).delete(delete))
        .route("/sandboxes/:id/start", post(start))
        .route("/sandboxes/:id/stop", post(stop))
        .route("/sandboxes/:id/backup", post(backup))
        .route("/sandboxes/restore", post(restore))
        .route("/sandboxes/:id/exec", post(exec))
        .route(
            "/sandboxes/:id/files",
            get(download)
                .put(upload)
                .layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .route("/sandboxes/:id/ports/:port", ports.clone())
        .route("/sandboxes/:id/ports/:port/", ports)
        .route("/sandboxes/:id/ports/:port/*path", any(port_path))
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(token, auth::require))
        // Added after the token layer, so outside it: a liveness probe that reveals nothing.
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/info", get(info))
        .with_state(app)
}

async fn no_route() -> ApiError {
    ApiError::NoRoute
}

async fn wrong_method() -> Response {
    let body = wire::ErrorBody {
        error: "method not allowed on this route: see docs/platform.md, \"Runner HTTP API\"".into(),
    };
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
}

async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

/// Ready once the control plane has taken its registration: from then on it can be given
/// sandboxes. Before that 503, saying so (the readiness probe of the runners' service files, so
/// that `stack up` returns once sandboxes can be created).
async fn readyz(State(app): State<App>) -> Response {
    if app.registered.load(Ordering::Acquire) {
        axum::Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        let body = wire::ErrorBody {
            error: "not registered with the control plane yet: see this runner's log".into(),
        };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// Counts only, for `stack status` (the `info:` of the runners' service files): how many
/// sandboxes it holds, and how many it takes.
async fn info(State(app): State<App>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "sandboxes": app.sandboxes.count(),
        "capacity": app.sandboxes.capacity(),
    }))
}

async fn health(State(app): State<App>) -> axum::Json<wire::Health> {
    axum::Json(wire::Health {
        name: app.name.clone(),
        sandboxes: app.sandboxes.count(),
        capacity: app.sandboxes.capacity(),
        driver: app.sandboxes.driver().to_string(),
    })
}

async fn create(
    State(app): State<App>,
    Json(req): Json<wire::CreateSandbox>,
) -> Result<(StatusCode, axum::Json<wire::Created>), ApiError> {
    let created = app.sandboxes.create(req).await?;
    Ok((StatusCode::CREATED, axum::Json(created)))
}

async fn list(State(app): State<App>) -> Result<axum::Json<Vec<wire::SandboxInfo>>, ApiError> {
    Ok(axum::Json(app.sandboxes.list().await?))
}

async fn get_one(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<axum::Json<wire::SandboxInfo>, ApiError> {
    Ok(axum::Json(app.sandboxes.get(&id).await?))
}

async fn delete(State(app): State<App>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    app.sandboxes.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<axum::Json<wire::StateChanged>, ApiError> {
    Ok(axum::Json(app.sandboxes.start(&id).await?))
}

async fn stop(
    State(app): State<App>,
    Path(id): Path<String>,
) -> Result<axum::Json<wire::StateChanged>, ApiError> {
    Ok(axum::Json(app.sandboxes.stop(&id).await?))
}

async fn backup(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(req): Json<wire::Backup>,
) -> Result<(StatusCode, axum::Json<wire::BackedUp>), ApiError> {
    let done = app.backups()?.backup(&app.sandboxes, &id, req).await?;
    Ok((StatusCode::CREATED, axum::Json(done)))
}

async fn restore(
    State(app): State<App>,
    Json(req): Json<wire::Restore>,
) -> Result<(StatusCode, axum::Json<wire::Restored>), ApiError> {
    let done = app.backups()?.restore(&app.sandboxes, req).await?;
    Ok((StatusCode::CREATED, axum::Json(done)))
}

async fn exec(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(req): Json<wire::Exec>,
) -> Result<axum::Json<wire::ExecResult>, ApiError> {
    Ok(axum::Json(app.sandboxes.exec(&id, req).await?))
}

async fn upload(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<wire::FilePath>,
    req: Request,
) -> Result<axum::Json<wire::FileWritten>, ApiError> {
    let bytes = axum::body::to_bytes(req.into_body(), UPLOAD_LIMIT)
        .await
        .map_err(|e| {
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<http_body_util::LengthLimitError>() {
                    return ApiError::TooLarge {
                        limit: UPLOAD_LIMIT,
                    };
                }
                cause = c.source();
            }
            ApiError::BadRequest(format!("cannot read the request body: {e}"))
        })?;
    let written = app
        .sandboxes
        .write_file(&id, &q.path, bytes.to_vec())
        .await?;
    Ok(axum::Json(written))
}

async fn download(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(q): Query<wire::FilePath>,
) -> Result<Response, ApiError> {
    let bytes = app.sandboxes.read_file(&id, &q.path).await?;
    Ok(Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from(bytes))
        .unwrap_or_default())
}

async fn port_root(
    State(app): State<App>,
    Path((id, port)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward::forward(&app.sandboxes, &id, &port, "", req).await
}

async fn port_path(
    State(app): State<App>,
    Path((id, port, path)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    forward::forward(&app.sandboxes, &id, &port, &path, req).await
}
