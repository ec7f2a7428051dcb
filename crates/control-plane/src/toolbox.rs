//! The toolbox: run a command in a sandbox, upload and download its files. Each call is checked
//! here (absolute paths without `..`, environment names, timeouts) and forwarded to the
//! sandbox's runner, which also refuses paths that leave the sandbox's root through symlinks.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::{check, ExecRequest, ExecResponse, FileQuery, FileWritten};

use crate::app::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::input::{Body, Params, QueryOf};
use crate::sandboxes::{find, runner_of};

/// `POST /api/toolbox/{id}/toolbox/process/execute`.
pub async fn execute(
    who: Principal,
    State(state): State<AppState>,
    Params(id): Params<String>,
    Body(exec): Body<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    exec.check()?;
    let sb = find(&state, &who, &id).await?;
    if sb.state != "started" {
        return Err(ApiError::Conflict(format!(
            "sandbox {} is {}: start it first (POST /api/sandbox/{}/start)",
            sb.id, sb.state, sb.id
        )));
    }
    let runner = runner_of(&state, &sb).await?;
    Ok(Json(state.runners.exec(&runner, &sb.id, &exec).await?))
}

/// `POST /api/toolbox/{id}/toolbox/files/upload?path=/abs`: the raw body is the file.
pub async fn upload(
    who: Principal,
    State(state): State<AppState>,
    Params(id): Params<String>,
    QueryOf(q): QueryOf<FileQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FileWritten>, ApiError> {
    let path = check::absolute_path(&q.path)?;
    let bytes = body.map_err(|e| ApiError::Rejected {
        status: e.status(),
        message: e.body_text(),
    })?;
    let sb = find(&state, &who, &id).await?;
    let runner = runner_of(&state, &sb).await?;
    Ok(Json(
        state.runners.put_file(&runner, &sb.id, path, bytes).await?,
    ))
}

/// `GET /api/toolbox/{id}/toolbox/files/download?path=/abs`: the file's bytes.
pub async fn download(
    who: Principal,
    State(state): State<AppState>,
    Params(id): Params<String>,
    QueryOf(q): QueryOf<FileQuery>,
) -> Result<Response, ApiError> {
    let path = check::absolute_path(&q.path)?;
    let sb = find(&state, &who, &id).await?;
    let runner = runner_of(&state, &sb).await?;
    let bytes = state.runners.get_file(&runner, &sb.id, path).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
