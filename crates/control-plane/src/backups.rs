//! Sandbox backups: `POST /api/sandbox/{id}/backup` has the sandbox's runner export it to S3
//! (`s3://backups/<sandbox-id>/<timestamp>.boxlite`; the runner keeps the last N of each
//! sandbox), and a row in `sandbox_backups` records it once the object is complete;
//! `GET /api/sandbox/{id}/backups` lists them, newest first; `POST /api/sandbox/{id}/restore`
//! installs one on the sandbox's runner under the same id, replacing its disk.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::{BackupRequest, RestoreRequest, SandboxState};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::app::AppState;
use crate::error::ApiError;
use crate::input::Body;
use crate::runner_client::RunnerRef;
use crate::sandboxes::{find, set_state, Owned, Sandbox};

/// A backup as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backup {
    /// Its id (what a restore names).
    pub backup_id: i64,
    /// The sandbox it is of.
    pub sandbox_id: String,
    /// The bucket holding it.
    pub bucket: String,
    /// Its key there: `<sandbox-id>/<timestamp>.boxlite`.
    pub object_key: String,
    /// `sha256:<hex>` of the whole archive.
    pub sha256: String,
    /// Its size.
    pub size_bytes: i64,
    /// The runner that made it (`None` once that runner is gone).
    pub runner_id: Option<String>,
    /// When the sandbox's disk was read (RFC 3339).
    pub exported_at: Option<String>,
    /// When the control plane recorded it (RFC 3339).
    pub created_at: String,
}

/// A backup just made, as `POST /api/sandbox/{id}/backup` answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Made {
    /// The backup.
    #[serde(flatten)]
    pub backup: Backup,
    /// How long the sandbox was paused while its disk was read.
    pub paused_ms: u64,
    /// Older backups the runner deleted to keep the last N.
    pub pruned: Vec<String>,
}

fn select() -> String {
    format!(
        "SELECT json_build_object('backupId', b.id, 'sandboxId', b.sandbox_id, 'bucket', b.bucket, \
         'objectKey', b.object_key, 'sha256', b.sha256, 'sizeBytes', b.size_bytes, \
         'runnerId', b.runner_id, 'exportedAt', {}, 'createdAt', {})::text FROM sandbox_backups b",
        crate::db::rfc3339("b.exported_at"),
        crate::db::rfc3339("b.created_at"),
    )
}

/// Has `runner` (whose id is `runner_id`) back up sandbox `id` and records the backup; rows of
/// the backups the runner pruned are deleted with it. The sandbox is left as it was.
pub(crate) async fn take(
    state: &AppState,
    runner: &RunnerRef,
    runner_id: &str,
    id: &str,
) -> Result<Made, ApiError> {
    let made = state
        .runners
        .sandbox(runner, id)
        .backup(&BackupRequest::default())
        .await?;
    let size = i64::try_from(made.size_bytes)
        .map_err(|_| ApiError::Internal(format!("a backup of {} bytes", made.size_bytes)))?;
    let mut tx = state.db.begin().await?;
    let backup_id: i64 = sqlx::query(
        "INSERT INTO sandbox_backups (sandbox_id, bucket, object_key, sha256, size_bytes, state, runner_id, exported_at) \
         VALUES ($1::uuid, $2, $3, $4, $5, 'completed', $6::uuid, $7::timestamptz) RETURNING id",
    )
    .bind(id)
    .bind(&made.bucket)
    .bind(&made.key)
    .bind(&made.sha256)
    .bind(size)
    .bind(runner_id)
    .bind(&made.exported_at)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    if !made.pruned.is_empty() {
        sqlx::query(
            "DELETE FROM sandbox_backups WHERE sandbox_id = $1::uuid AND bucket = $2 AND object_key = ANY($3)",
        )
        .bind(id)
        .bind(&made.bucket)
        .bind(&made.pruned)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(Made {
        backup: one(state, id, backup_id).await?,
        paused_ms: made.paused_ms,
        pruned: made.pruned,
    })
}

/// Backup `backup_id` of sandbox `id`, or 404.
async fn one(state: &AppState, id: &str, backup_id: i64) -> Result<Backup, ApiError> {
    let row = sqlx::query(&format!(
        "{} WHERE b.sandbox_id = $1::uuid AND b.id = $2",
        select()
    ))
    .bind(id)
    .bind(backup_id)
    .fetch_optional(&state.db)
    .await?;
    match row {
        Some(row) => crate::db::json_row(&row),
        None => Err(ApiError::NotFound(format!(
            "sandbox {id} has no backup {backup_id}: `GET /api/sandbox/{id}/backups` lists its backups"
        ))),
    }
}

/// Refuses an archive call on a sandbox that is neither started nor stopped.
fn settled(sb: &Sandbox, what: &str) -> Result<(), ApiError> {
    match sb.state.as_str() {
        "started" | "stopped" => Ok(()),
        other => Err(ApiError::Conflict(format!(
            "sandbox {} is {other}: only a started or stopped sandbox can be {what}",
            sb.id
        ))),
    }
}

/// `POST /api/sandbox/{id}/backup`: 201 and the backup. A running sandbox is paused only while
/// its disk is read, and keeps running; a failed backup leaves no object and the sandbox as it
/// was.
pub async fn backup(o: Owned) -> Result<Response, ApiError> {
    settled(&o.sandbox, "backed up")?;
    let runner = o.runner().await?;
    let runner_id = o.sandbox.runner_id.clone().unwrap_or_default();
    let (state, id) = (o.state.clone(), o.sandbox.id.clone());
    // A caller that hangs up does not cut the backup short (and leave a row unwritten).
    let made = tokio::spawn(async move { take(&state, &runner, &runner_id, &id).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the backup task failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(made)).into_response())
}

/// `GET /api/sandbox/{id}/backups`: newest first.
pub async fn list(o: Owned) -> Result<Json<Vec<Backup>>, ApiError> {
    let rows = sqlx::query(&format!(
        "{} WHERE b.sandbox_id = $1::uuid AND b.state = 'completed' ORDER BY b.created_at DESC, b.id DESC",
        select()
    ))
    .bind(&o.sandbox.id)
    .fetch_all(&o.state.db)
    .await?;
    Ok(Json(
        rows.iter()
            .map(crate::db::json_row)
            .collect::<Result<_, _>>()?,
    ))
}

/// `POST /api/sandbox/{id}/restore`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreBody {
    /// The backup (`backupId` of `GET /api/sandbox/{id}/backups`).
    pub backup_id: i64,
    /// Replace the sandbox's disk when its runner still has it (refused otherwise).
    #[serde(default)]
    pub replace: bool,
}

/// `POST /api/sandbox/{id}/restore`: the sandbox's runner installs the backup under the same id
/// (every checksum verified before anything is installed) and starts it if it was started.
/// `restoring` meanwhile; a refused restore leaves the sandbox as it was.
pub async fn restore(o: Owned, Body(body): Body<RestoreBody>) -> Result<Json<Sandbox>, ApiError> {
    let backup = one(&o.state, &o.sandbox.id, body.backup_id).await?;
    let before = match o.sandbox.state.as_str() {
        // A sandbox its runner failed is what a restore is for.
        "started" | "stopped" | "error" => o.sandbox.state.clone(),
        other => {
            return Err(ApiError::Conflict(format!(
                "sandbox {} is {other}: retry once it is started, stopped or error",
                o.sandbox.id
            )))
        }
    };
    let runner = o.runner().await?;
    let id = o.sandbox.id.clone();
    let state = o.state.clone();
    if !body.replace {
        match state.runners.sandbox(&runner, &id).get().await {
            Ok(_) => {
                return Err(ApiError::Conflict(format!(
                    "sandbox {id} exists on runner `{}`: a restore replaces its whole disk with the backup's; send `\"replace\": true` to do that",
                    runner.name
                )))
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !claim(&state, &id, &before).await? {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} changed state meanwhile: retry"
        )));
    }
    let req = RestoreRequest {
        id: id.clone(),
        key: backup.object_key,
        replace: body.replace,
        start: before != "stopped",
    };
    let task_state = state.clone();
    let outcome = tokio::spawn(async move {
        let result = task_state.runners.restore(&runner, &req).await;
        let after = match &result {
            Ok(made) => made.state,
            // Refused before anything changed: as it was.
            Err(e) if e.is_refusal() => SandboxState::parse(&before).unwrap_or(SandboxState::Error),
            // Anything else: what the runner has now.
            Err(_) => on_runner(&task_state, &runner, &req.id).await,
        };
        set_state(&task_state, &req.id, after).await?;
        result.map_err(ApiError::from)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the restore task failed: {e}")))?;
    outcome?;
    Ok(Json(find(&state, &o.who, &id).await?))
}

/// Moves sandbox `id` from `from` to `restoring`; false when it is no longer `from`.
pub(crate) async fn claim(state: &AppState, id: &str, from: &str) -> Result<bool, ApiError> {
    let n = sqlx::query(
        "UPDATE sandboxes SET state = 'restoring', updated_at = now() WHERE id = $1::uuid AND state = $2",
    )
    .bind(id)
    .bind(from)
    .execute(&state.db)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The state runner `runner` has sandbox `id` in: `error` when it does not have it or does not
/// answer.
pub(crate) async fn on_runner(state: &AppState, runner: &RunnerRef, id: &str) -> SandboxState {
    match state.runners.sandbox(runner, id).get().await {
        Ok(sb) => sb.state,
        Err(_) => SandboxState::Error,
    }
}
