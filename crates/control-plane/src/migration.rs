//! Moving sandboxes between runners: `POST /api/sandbox/{id}/migrate` and
//! `POST /api/runners/{name}/drain` (admin key), and what a control plane restarted in the middle
//! of one does ([`recover`]).
//!
//! A move is a ledger row in `sandbox_migrations` walked through its phases:
//!
//! 1. `backup`: the sandbox is `restoring`; a started one is stopped on its source (its
//!    processes end: nothing written after the backup can be lost), then backed up to S3;
//! 2. `restore`: its target installs the backup under the same id (every checksum verified
//!    first) and starts it if it was started;
//! 3. the switch, one transaction: the sandbox's runner is the target, its state the target's,
//!    the phase `cleanup`; then its preview tokens are pointed at the target, so URLs handed out
//!    before keep working;
//! 4. `cleanup`: the source's copy is deleted; then `done`.
//!
//! A failure before the switch rolls back (the target's copy deleted, the sandbox started again
//! on its source if it was started); after it, the move is finished. A control plane that
//! restarts finds the open rows and does the same, retrying while a runner does not answer:
//! the sandbox ends on exactly one runner, never lost.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use platform_proto::{RestoreRequest, SandboxState};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tokio::task::JoinSet;

use crate::app::AppState;
use crate::auth::Admin;
use crate::backups;
use crate::error::ApiError;
use crate::input::{Body, Params};
use crate::runner_client::RunnerRef;
use crate::runners::{self, Runner};

/// Sandboxes a drain moves at once.
const DRAIN_PARALLEL: usize = 2;
/// How long [`recover`] waits before asking a runner that did not answer again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// `POST /api/sandbox/{id}/migrate`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrateBody {
    /// The runner to move it to (its name).
    pub runner: String,
}

/// A move, as migrate and drain answer it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    /// The sandbox (its id is kept).
    pub id: String,
    /// The runner it left.
    pub from: String,
    /// The runner it is on now.
    pub to: String,
    /// Its state there.
    pub state: String,
    /// The backup the move went through.
    pub backup_id: i64,
    /// The archive's size.
    pub size_bytes: i64,
    /// Preview tokens pointed at the new runner.
    pub previews: usize,
    /// Stopping it on its source (0 when it was stopped).
    pub stop_ms: u64,
    /// Its backup on the source.
    pub backup_ms: u64,
    /// Its restore (and start) on the target.
    pub restore_ms: u64,
    /// The switch and the deletion of the source's copy.
    pub switch_ms: u64,
    /// The whole move.
    pub total_ms: u64,
    /// The source's copy could not be deleted yet (retried by the control plane).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leftover: Option<String>,
}

/// `POST /api/runners/{name}/drain`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drained {
    /// The runner.
    pub runner: String,
    /// `disabled` once it holds no sandbox, `draining` while some could not be moved.
    pub state: String,
    /// The sandboxes moved.
    pub migrated: Vec<Moved>,
    /// The sandboxes that could not be moved, and why (each left as it was, on this runner).
    pub failed: Vec<Failure>,
    /// The whole drain.
    pub total_ms: u64,
}

/// A sandbox a drain could not move.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The sandbox.
    pub id: String,
    /// Why.
    pub error: String,
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}

/// `POST /api/sandbox/{id}/migrate` (admin key): 200 and the move.
pub async fn migrate(
    Admin(who): Admin,
    State(state): State<AppState>,
    Params(id): Params<String>,
    Body(body): Body<MigrateBody>,
) -> Result<Json<Moved>, ApiError> {
    let sandbox = crate::sandboxes::find(&state, &who, &id).await?;
    let target = runners::by_name(&state, &body.runner).await?;
    // A caller that hangs up does not cut the move short.
    let moved = tokio::spawn(async move { move_one(&state, &sandbox.id, &target).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the migration task failed: {e}")))??;
    Ok(Json(moved))
}

/// `POST /api/runners/{name}/drain` (admin key): the runner takes no new sandbox (`draining`),
/// each of its sandboxes moves to the least loaded other runner, and once it holds none it is
/// `disabled`. Sandboxes on other runners are not touched.
pub async fn drain(
    _admin: Admin,
    State(state): State<AppState>,
    Params(name): Params<String>,
) -> Result<Json<Drained>, ApiError> {
    let runner = runners::by_name(&state, &name).await?;
    let drained = tokio::spawn(async move { drain_runner(&state, &runner).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the drain task failed: {e}")))??;
    Ok(Json(drained))
}

/// `POST /api/runners/{name}/enable` (admin key): a draining or disabled runner takes new
/// sandboxes again (`ready` while its heartbeats arrive).
pub async fn enable(
    _admin: Admin,
    State(state): State<AppState>,
    Params(name): Params<String>,
) -> Result<Json<Runner>, ApiError> {
    let runner = runners::by_name(&state, &name).await?;
    sqlx::query("UPDATE runners SET state = 'ready' WHERE id = $1::uuid AND state IN ('draining', 'disabled')")
        .bind(&runner.id)
        .execute(&state.db)
        .await?;
    Ok(Json(runners::by_name(&state, &name).await?))
}

async fn drain_runner(state: &AppState, runner: &Runner) -> Result<Drained, ApiError> {
    let started = Instant::now();
    sqlx::query(
        "UPDATE runners SET state = 'draining' WHERE id = $1::uuid AND state <> 'disabled'",
    )
    .bind(&runner.id)
    .execute(&state.db)
    .await?;
    let ids: Vec<String> = sqlx::query(
        "SELECT id::text FROM sandboxes WHERE runner_id = $1::uuid AND state <> 'destroyed' ORDER BY created_at, id",
    )
    .bind(&runner.id)
    .fetch_all(&state.db)
    .await?
    .iter()
    .map(|r| r.try_get(0))
    .collect::<Result<_, _>>()?;
    let mut migrated = Vec::new();
    let mut failed = Vec::new();
    let mut tasks = JoinSet::new();
    let mut queue = ids.into_iter();
    loop {
        while tasks.len() < DRAIN_PARALLEL {
            let Some(id) = queue.next() else { break };
            let state = state.clone();
            tasks.spawn(async move {
                let result = match runners::pick(&state).await {
                    Ok(target) => move_one(&state, &id, &target).await,
                    Err(e) => Err(e),
                };
                (id, result)
            });
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok((_, Ok(moved))) => migrated.push(moved),
            Ok((id, Err(e))) => failed.push(Failure {
                id,
                error: e.to_string(),
            }),
            Err(e) => failed.push(Failure {
                id: String::new(),
                error: format!("a migration task failed: {e}"),
            }),
        }
    }
    let left: i64 = sqlx::query(
        "SELECT count(*) FROM sandboxes WHERE runner_id = $1::uuid AND state <> 'destroyed'",
    )
    .bind(&runner.id)
    .fetch_one(&state.db)
    .await?
    .try_get(0)?;
    let to = if left == 0 { "disabled" } else { "draining" };
    sqlx::query(
        "UPDATE runners SET state = $2 WHERE id = $1::uuid AND state IN ('draining', 'disabled')",
    )
    .bind(&runner.id)
    .bind(to)
    .execute(&state.db)
    .await?;
    migrated.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Drained {
        runner: runner.name.clone(),
        state: to.into(),
        migrated,
        failed,
        total_ms: ms(started),
    })
}

/// One open row of `sandbox_migrations`.
#[derive(Debug, Clone)]
struct Ledger {
    id: i64,
    sandbox: String,
    source: RunnerRef,
    target: RunnerRef,
    state_before: String,
}

/// Moves sandbox `id` to `target`, walking its ledger row through the phases (module docs).
pub async fn move_one(state: &AppState, id: &str, target: &Runner) -> Result<Moved, ApiError> {
    let started = Instant::now();
    let row = sqlx::query(
        "SELECT s.state, s.runner_id::text, r.name, r.api_url FROM sandboxes s \
         LEFT JOIN runners r ON r.id = s.runner_id WHERE s.id = $1::uuid",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("sandbox {id} not found")))?;
    let before: String = row.try_get(0)?;
    let source_id: Option<String> = row.try_get(1)?;
    let (Some(source_id), Some(name), Some(api_url)) = (
        source_id,
        row.try_get::<Option<String>, _>(2)?,
        row.try_get::<Option<String>, _>(3)?,
    ) else {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} has no runner (its runner was removed): it cannot be moved"
        )));
    };
    let source = RunnerRef { name, api_url };
    if source_id == target.id {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} is already on runner `{}`",
            target.name
        )));
    }
    // Ready, responsive and with room, as it is now.
    let target = &runners::placeable(state, &target.name).await?;
    if !matches!(before.as_str(), "started" | "stopped") {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} is {before}: only a started or stopped sandbox moves"
        )));
    }
    let ledger = open(state, id, &source_id, &source, target, &before).await?;

    // 1. Stop it on the source, then back it up.
    let t = Instant::now();
    let on_source = state.runners.sandbox(&ledger.source, id);
    if before == "started" {
        if let Err(e) = on_source.lifecycle("stop").await {
            return Err(roll_back(state, &ledger, e.into()).await);
        }
    }
    let stop_ms = ms(t);
    let t = Instant::now();
    let made = match backups::take(state, &ledger.source, &source_id, id).await {
        Ok(made) => made,
        Err(e) => return Err(roll_back(state, &ledger, e).await),
    };
    let backup_ms = ms(t);
    sqlx::query("UPDATE sandbox_migrations SET phase = 'restore', backup_id = $2 WHERE id = $1")
        .bind(ledger.id)
        .bind(made.backup.backup_id)
        .execute(&state.db)
        .await?;

    // 2. Restore it on the target.
    let t = Instant::now();
    let req = RestoreRequest {
        id: id.to_string(),
        key: made.backup.object_key.clone(),
        // A copy there can only be a leftover of an earlier move that failed: the ledger
        // says the sandbox is on its source.
        replace: true,
        start: before == "started",
    };
    let restored = match state.runners.restore(&ledger.target, &req).await {
        Ok(r) => r,
        Err(e) => return Err(roll_back(state, &ledger, e.into()).await),
    };
    let restore_ms = ms(t);

    // 3. The switch.
    let t = Instant::now();
    let after = match restored.state {
        SandboxState::Started | SandboxState::Stopped => restored.state,
        _ => SandboxState::Error,
    };
    let mut tx = state.db.begin().await?;
    sqlx::query("UPDATE sandboxes SET runner_id = $2::uuid, state = $3, updated_at = now() WHERE id = $1::uuid")
        .bind(id)
        .bind(&target.id)
        .bind(after.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE sandbox_migrations SET phase = 'cleanup' WHERE id = $1")
        .bind(ledger.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let previews = match crate::previews::repoint(&state.cache, id, &ledger.target).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("migration of {id}: its preview tokens could not be repointed: {e}");
            0
        }
    };

    // 4. The source's copy.
    let leftover = match finish(state, &ledger).await {
        Ok(()) => None,
        Err(e) => {
            let note = format!(
                "its copy on runner `{}` is not deleted yet ({e}); the control plane retries",
                ledger.source.name
            );
            let (state, ledger) = (state.clone(), ledger.clone());
            tokio::spawn(async move { settle_until_done(&state, &ledger).await });
            Some(note)
        }
    };
    Ok(Moved {
        id: id.to_string(),
        from: ledger.source.name.clone(),
        to: target.name.clone(),
        state: after.as_str().into(),
        backup_id: made.backup.backup_id,
        size_bytes: made.backup.size_bytes,
        previews,
        stop_ms,
        backup_ms,
        restore_ms,
        switch_ms: ms(t),
        total_ms: ms(started),
        leftover,
    })
}

/// Writes the ledger row and marks the sandbox `restoring`, in one transaction.
async fn open(
    state: &AppState,
    id: &str,
    source_id: &str,
    source: &RunnerRef,
    target: &Runner,
    before: &str,
) -> Result<Ledger, ApiError> {
    let mut tx = state.db.begin().await?;
    let n = sqlx::query(
        "UPDATE sandboxes SET state = 'restoring', updated_at = now() \
         WHERE id = $1::uuid AND state = $2 AND runner_id = $3::uuid",
    )
    .bind(id)
    .bind(before)
    .bind(source_id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if n != 1 {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} changed meanwhile (another move or call): retry"
        )));
    }
    let inserted = sqlx::query(
        "INSERT INTO sandbox_migrations (sandbox_id, source_runner_id, target_runner_id, state_before) \
         VALUES ($1::uuid, $2::uuid, $3::uuid, $4) RETURNING id",
    )
    .bind(id)
    .bind(source_id)
    .bind(&target.id)
    .bind(before)
    .fetch_one(&mut *tx)
    .await;
    let ledger_id: i64 = match inserted {
        Ok(row) => row.try_get(0)?,
        Err(e) if crate::db::is_unique_violation(&e) => {
            return Err(ApiError::Conflict(format!(
                "sandbox {id} is being moved already: retry once it is started or stopped"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(Ledger {
        id: ledger_id,
        sandbox: id.to_string(),
        source: source.clone(),
        target: target.reference(),
        state_before: before.to_string(),
    })
}

/// Undoes a move that failed before its switch: the target's copy deleted, the sandbox as it
/// was on its source; returns `cause`, or why the roll back itself failed (retried later).
async fn roll_back(state: &AppState, ledger: &Ledger, cause: ApiError) -> ApiError {
    match undo(state, ledger, &cause.to_string()).await {
        Ok(()) => cause,
        Err(e) => {
            let (state, ledger) = (state.clone(), ledger.clone());
            tokio::spawn(async move { settle_until_done(&state, &ledger).await });
            ApiError::Internal(format!(
                "{cause}; rolling the move back failed too ({e}): the control plane retries, the sandbox stays `restoring` until then"
            ))
        }
    }
}

async fn undo(state: &AppState, ledger: &Ledger, why: &str) -> Result<(), ApiError> {
    state
        .runners
        .sandbox(&ledger.target, &ledger.sandbox)
        .delete()
        .await?;
    let on_source = state.runners.sandbox(&ledger.source, &ledger.sandbox);
    let now = if ledger.state_before == "started" {
        on_source.lifecycle("start").await?.state
    } else {
        on_source.get().await?.state
    };
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "UPDATE sandboxes SET state = $2, updated_at = now() WHERE id = $1::uuid AND state = 'restoring'",
    )
    .bind(&ledger.sandbox)
    .bind(now.as_str())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE sandbox_migrations SET phase = 'rolled_back', error = $2, finished_at = now() WHERE id = $1",
    )
    .bind(ledger.id)
    .bind(why)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the source's copy of a switched move and closes its row.
async fn finish(state: &AppState, ledger: &Ledger) -> Result<(), ApiError> {
    state
        .runners
        .sandbox(&ledger.source, &ledger.sandbox)
        .delete()
        .await?;
    sqlx::query("UPDATE sandbox_migrations SET phase = 'done', finished_at = now() WHERE id = $1")
        .bind(ledger.id)
        .execute(&state.db)
        .await?;
    Ok(())
}

/// Rolls back or finishes `ledger` per its phase, again and again until it worked.
async fn settle_until_done(state: &AppState, ledger: &Ledger) {
    loop {
        match settle(state, ledger).await {
            Ok(()) => return,
            Err(e) => {
                eprintln!(
                    "migration {} of sandbox {}: cannot settle it yet: {e}; retrying in {}s",
                    ledger.id,
                    ledger.sandbox,
                    RETRY_AFTER.as_secs()
                );
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

async fn settle(state: &AppState, ledger: &Ledger) -> Result<(), ApiError> {
    let phase: Option<String> = sqlx::query("SELECT phase FROM sandbox_migrations WHERE id = $1")
        .bind(ledger.id)
        .fetch_optional(&state.db)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    match phase.as_deref() {
        Some("backup" | "restore") => {
            undo(state, ledger, "the control plane stopped during the move").await
        }
        Some("cleanup") => finish(state, ledger).await,
        // Settled meanwhile, or its sandbox deleted.
        _ => Ok(()),
    }
}

/// What a control plane does as it starts: every move left open by the previous one is rolled
/// back (not switched yet) or finished (switched), each retried until its runners answer.
pub async fn recover(state: AppState) {
    let rows = sqlx::query(
        "SELECT m.id, m.sandbox_id::text, s.name, s.api_url, t.name, t.api_url, m.state_before \
         FROM sandbox_migrations m JOIN runners s ON s.id = m.source_runner_id \
         JOIN runners t ON t.id = m.target_runner_id \
         WHERE m.phase IN ('backup', 'restore', 'cleanup') ORDER BY m.id",
    )
    .fetch_all(&state.db)
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("cannot read the open migrations: {e}");
            return;
        }
    };
    let mut tasks = JoinSet::new();
    for row in rows {
        let ledger = (|| -> Result<Ledger, sqlx::Error> {
            Ok(Ledger {
                id: row.try_get(0)?,
                sandbox: row.try_get(1)?,
                source: RunnerRef {
                    name: row.try_get(2)?,
                    api_url: row.try_get(3)?,
                },
                target: RunnerRef {
                    name: row.try_get(4)?,
                    api_url: row.try_get(5)?,
                },
                state_before: row.try_get(6)?,
            })
        })();
        match ledger {
            Ok(ledger) => {
                eprintln!(
                    "migration {} of sandbox {} ({} → {}) was cut short: settling it",
                    ledger.id, ledger.sandbox, ledger.source.name, ledger.target.name
                );
                let state = state.clone();
                tasks.spawn(async move { settle_until_done(&state, &ledger).await });
            }
            Err(e) => eprintln!("cannot read an open migration: {e}"),
        }
    }
    while tasks.join_next().await.is_some() {}
}
