//! The toolbox: run a command in a sandbox, upload and download its files. Each call is checked
//! here (absolute paths without `..`, environment names, timeouts) and forwarded to the
//! sandbox's runner, which also refuses paths that leave the sandbox's root through symlinks.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::{check, ExecRequest, ExecResponse, FileQuery, FileWritten};

use crate::error::ApiError;
use crate::input::{Body, QueryOf};
use crate::sandboxes::Owned;

/// `POST /api/toolbox/{id}/toolbox/process/execute`.
pub async fn execute(
    o: Owned,
    Body(exec): Body<ExecRequest>,
) -> Result<Json<ExecResponse>, ApiError> {
    exec.check()?;
    let sb = &o.sandbox;
    if sb.state != "started" {
        return Err(ApiError::Conflict(format!(
            "sandbox {} is {}: start it first (POST /api/sandbox/{}/start)",
            sb.id, sb.state, sb.id
        )));
    }
    let runner = o.runner().await?;
    Ok(Json(
        o.state.runners.sandbox(&runner, &sb.id).exec(&exec).await?,
    ))
}

/// `POST /api/toolbox/{id}/toolbox/files/upload?path=/abs`: the raw body is the file (at most
/// [`crate::input::FILE_LIMIT`] bytes).
pub async fn upload(
    o: Owned,
    QueryOf(q): QueryOf<FileQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<FileWritten>, ApiError> {
    let path = check::absolute_path(&q.path)?;
    let bytes = body.map_err(|e| ApiError::Rejected {
        status: e.status(),
        message: e.body_text(),
    })?;
    let runner = o.runner().await?;
    let on = o.state.runners.sandbox(&runner, &o.sandbox.id);
    Ok(Json(on.put_file(path, bytes).await?))
}

/// `GET /api/toolbox/{id}/toolbox/files/download?path=/abs`: the file's bytes.
pub async fn download(o: Owned, QueryOf(q): QueryOf<FileQuery>) -> Result<Response, ApiError> {
    let path = check::absolute_path(&q.path)?;
    let runner = o.runner().await?;
    let bytes = o
        .state
        .runners
        .sandbox(&runner, &o.sandbox.id)
        .get_file(path)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}
