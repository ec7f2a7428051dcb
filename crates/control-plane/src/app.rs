//! The control plane's HTTP API: its shared state, its routes (docs/platform.md) with their
//! body limits and the audit layer, and the server's life from bind to SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use sqlx::PgPool;

use crate::auth::Jwks;
use crate::cache::Cache;
use crate::config::Config;
use crate::error::{error_response, StartError};
use crate::input::{FILE_LIMIT, JSON_LIMIT};
use crate::runner_client::RunnerClient;
use crate::{audit, backups, migration, previews, runners, sandboxes, toolbox};

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// PostgreSQL.
    pub db: PgPool,
    /// Redis.
    pub cache: Cache,
    /// The OIDC issuer's keys.
    pub jwks: Arc<Jwks>,
    /// Calls to runners.
    pub runners: RunnerClient,
    /// The settings.
    pub config: Arc<Config>,
}

/// The API's routes over `state`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/sandbox", post(sandboxes::create).get(sandboxes::list))
        .route(
            "/api/sandbox/:id",
            get(sandboxes::get).delete(sandboxes::delete),
        )
        .route("/api/sandbox/:id/start", post(sandboxes::start))
        .route("/api/sandbox/:id/stop", post(sandboxes::stop))
        .route("/api/sandbox/:id/backup", post(backups::backup))
        .route("/api/sandbox/:id/backups", get(backups::list))
        .route("/api/sandbox/:id/restore", post(backups::restore))
        .route("/api/sandbox/:id/migrate", post(migration::migrate))
        .route(
            "/api/sandbox/:id/ports/:port/signed-preview-url",
            get(previews::signed_url),
        )
        .route(
            "/api/toolbox/:id/toolbox/process/execute",
            post(toolbox::execute),
        )
        .route(
            "/api/toolbox/:id/toolbox/files/upload",
            post(toolbox::upload).layer(DefaultBodyLimit::max(FILE_LIMIT)),
        )
        .route(
            "/api/toolbox/:id/toolbox/files/download",
            get(toolbox::download),
        )
        .route("/api/runners", get(runners::list))
        .route("/api/runners/register", post(runners::register))
        .route("/api/runners/:name/drain", post(migration::drain))
        .route("/api/runners/:name/enable", post(migration::enable))
        .route("/api/runners/:name/heartbeat", post(runners::heartbeat))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record))
        .route("/api/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .with_state(state)
}

/// `GET /api/health`: 200 `{"status": "ok"}` once serving (no authentication).
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such API path: see docs/platform.md for the control plane's routes".into(),
    )
}

async fn method_not_allowed() -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "this path does not take that method: see docs/platform.md".into(),
    )
}

/// Connects to PostgreSQL and Redis, then serves on 127.0.0.1:`config.port` until SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartError> {
    let db = crate::db::connect(&config.database_url)
        .await
        .map_err(StartError::Database)?;
    let cache = Cache::new(&config.redis_url).map_err(StartError::Redis)?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .build()
        .map_err(StartError::Http)?;
    let state = AppState {
        db,
        cache,
        jwks: Arc::new(Jwks::new(
            &config.oidc_issuer,
            &config.oidc_client_id,
            http.clone(),
        )),
        runners: RunnerClient::new(http, &config.runner_token),
        config: Arc::new(config),
    };
    // Moves a previous control plane left half done are finished or rolled back.
    tokio::spawn(migration::recover(state.clone()));
    let port = state.config.port;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| StartError::Bind { port, source })?;
    eprintln!("control-plane: listening on 127.0.0.1:{port}");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(crate::shutdown_signal())
        .await
        .map_err(StartError::Serve)
}
