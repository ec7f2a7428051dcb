//! Runners: registration and heartbeats (runner token), the list (admin key), and scheduling.
//! A runner is responsive while its Redis key `runner:{name}:alive` lives (each heartbeat sets
//! it for the runner TTL); a new sandbox goes to the responsive, ready runner with room that
//! holds the fewest sandboxes.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::{check, Heartbeat, RunnerRegistration};
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::audit::AuditTarget;
use crate::auth::{Admin, RunnerCaller};
use crate::error::ApiError;
use crate::input::{Body, Params};
use crate::runner_client::RunnerRef;

/// A runner as `GET /api/runners` and registration answer it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runner {
    /// Its id (sandboxes' `runnerId`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// `ready`, `unresponsive`, `draining`, `disabled` or `initializing`.
    pub state: String,
    /// Where it is reached.
    pub api_url: String,
    /// CPUs.
    pub cpu: i32,
    /// Memory, MiB.
    pub memory_mib: i32,
    /// Disk, GiB.
    pub disk_gib: i32,
    /// Sandboxes it may hold.
    pub capacity: i32,
    /// Sandboxes the control plane placed on it (not destroyed).
    pub sandboxes: i64,
    /// Its last heartbeat (RFC 3339), if any.
    pub last_heartbeat: Option<String>,
    /// Left out of scheduling by an operator.
    #[serde(skip_serializing)]
    unschedulable: bool,
}

impl Runner {
    /// Where to call it.
    pub fn reference(&self) -> RunnerRef {
        RunnerRef {
            name: self.name.clone(),
            api_url: self.api_url.clone(),
        }
    }
}

fn select() -> String {
    format!(
        "SELECT json_build_object('id', r.id, 'name', r.name, 'state', r.state, 'apiUrl', r.api_url, \
         'cpu', r.cpu, 'memoryMib', r.memory_mib, 'diskGib', r.disk_gib, 'capacity', r.capacity, \
         'unschedulable', r.unschedulable, 'lastHeartbeat', {}, \
         'sandboxes', (SELECT count(*) FROM sandboxes s WHERE s.runner_id = r.id AND s.state <> 'destroyed'))::text \
         FROM runners r",
        crate::db::rfc3339("r.last_heartbeat")
    )
}

fn alive_key(name: &str) -> String {
    format!("runner:{name}:alive")
}

/// Every runner, with `state` `unresponsive` where its heartbeat expired (also written back, so
/// the table tells the same story).
pub async fn all(state: &AppState) -> Result<Vec<Runner>, ApiError> {
    let rows = sqlx::query(&format!("{} ORDER BY r.name", select()))
        .fetch_all(&state.db)
        .await?;
    let mut runners = rows
        .iter()
        .map(crate::db::json_row::<Runner>)
        .collect::<Result<Vec<_>, _>>()?;
    let keys: Vec<String> = runners.iter().map(|r| alive_key(&r.name)).collect();
    let alive = state.cache.get_many(&keys).await?;
    let mut silent = Vec::new();
    for (r, a) in runners.iter_mut().zip(alive) {
        if a.is_none() && matches!(r.state.as_str(), "ready" | "initializing") {
            r.state = "unresponsive".into();
            silent.push(r.name.clone());
        }
    }
    if !silent.is_empty() {
        sqlx::query(
            "UPDATE runners SET state = 'unresponsive' WHERE name = ANY($1) AND state IN ('ready', 'initializing')",
        )
        .bind(&silent)
        .execute(&state.db)
        .await?;
    }
    Ok(runners)
}

/// The runner a new sandbox goes to, or why there is none.
pub async fn pick(state: &AppState) -> Result<Runner, ApiError> {
    let runners = all(state).await?;
    if runners.is_empty() {
        return Err(ApiError::NoRunner(
            "no runner is registered; start one with `stack up runner-a`".into(),
        ));
    }
    let best = runners
        .iter()
        .filter(|r| r.state == "ready" && !r.unschedulable && r.sandboxes < i64::from(r.capacity))
        .min_by(|a, b| {
            a.sandboxes
                .cmp(&b.sandboxes)
                .then_with(|| a.name.cmp(&b.name))
        });
    match best {
        Some(r) => Ok(r.clone()),
        None => Err(ApiError::NoRunner(format!(
            "no runner is responsive with room ({}); see `stack status` and `stack logs <runner>`",
            runners
                .iter()
                .map(|r| format!(
                    "{}: {}, {}/{} sandboxes",
                    r.name, r.state, r.sandboxes, r.capacity
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}

/// The runner with id `id`.
pub async fn by_id(state: &AppState, id: &str) -> Result<Option<Runner>, ApiError> {
    let row = sqlx::query(&format!("{} WHERE r.id = $1::uuid", select()))
        .bind(id)
        .fetch_optional(&state.db)
        .await?;
    row.as_ref().map(crate::db::json_row).transpose()
}

/// The runner named `name` (liveness applied, as [`all`] gives it), or 404.
pub async fn by_name(state: &AppState, name: &str) -> Result<Runner, ApiError> {
    check::name(name)?;
    all(state)
        .await?
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no runner is named `{name}`: `GET /api/runners` lists them"
            ))
        })
}

/// The runner named `name` if it can take a sandbox now (ready, responsive, with room), else
/// why not (404 for no such runner, 409 otherwise).
pub async fn placeable(state: &AppState, name: &str) -> Result<Runner, ApiError> {
    let r = by_name(state, name).await?;
    if r.state != "ready" || r.unschedulable {
        return Err(ApiError::Conflict(format!(
            "runner `{name}` is {}: it takes sandboxes only when ready (`GET /api/runners`)",
            r.state
        )));
    }
    if r.sandboxes >= i64::from(r.capacity) {
        return Err(ApiError::Conflict(format!(
            "runner `{name}` is full ({}/{} sandboxes)",
            r.sandboxes, r.capacity
        )));
    }
    Ok(r)
}

/// `GET /api/runners` (admin key only).
pub async fn list(
    _admin: Admin,
    State(state): State<AppState>,
) -> Result<Json<Vec<Runner>>, ApiError> {
    Ok(Json(all(&state).await?))
}

/// `POST /api/runners/register` (runner token): creates the runner or updates its address and
/// resources; it is `ready` and responsive at once.
pub async fn register(
    _runner: RunnerCaller,
    State(state): State<AppState>,
    Body(reg): Body<RunnerRegistration>,
) -> Result<Response, ApiError> {
    check::name(&reg.name)?;
    let url = reqwest::Url::parse(&reg.api_url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`apiUrl` `{}` is not an http(s) URL such as http://127.0.0.1:23003",
                reg.api_url.chars().take(80).collect::<String>()
            ))
        })?;
    let int = |field: &'static str, v: u32, max: u64| -> Result<i32, ApiError> {
        Ok(check::range(field, u64::from(v), 1, max)? as i32)
    };
    let (cpu, mem, disk, cap) = (
        int("cpu", reg.cpu, 1024)?,
        int("memoryMib", reg.memory_mib, 1 << 24)?,
        int("diskGib", reg.disk_gib, 1 << 20)?,
        int("capacity", reg.capacity, 10_000)?,
    );
    let r = sqlx::query(
        "INSERT INTO runners (region_id, name, api_url, state, cpu, memory_mib, disk_gib, capacity, last_heartbeat) \
         VALUES ('us', $1, $2, 'ready', $3, $4, $5, $6, now()) \
         ON CONFLICT (name) DO UPDATE SET api_url = EXCLUDED.api_url, cpu = EXCLUDED.cpu, \
         memory_mib = EXCLUDED.memory_mib, disk_gib = EXCLUDED.disk_gib, capacity = EXCLUDED.capacity, \
         last_heartbeat = now(), \
         state = CASE WHEN runners.state IN ('draining', 'disabled') THEN runners.state ELSE 'ready' END",
    )
    .bind(&reg.name)
    .bind(url.as_str().trim_end_matches('/'))
    .bind(cpu)
    .bind(mem)
    .bind(disk)
    .bind(cap)
    .execute(&state.db)
    .await;
    match r {
        Err(e) if crate::db::is_foreign_key_violation(&e) => {
            return Err(ApiError::Conflict(
                "region `us` is not seeded: run `stack seed`".into(),
            ))
        }
        r => r?,
    };
    state
        .cache
        .set_ex(&alive_key(&reg.name), "0", state.config.runner_ttl)
        .await?;
    let runner = all(&state)
        .await?
        .into_iter()
        .find(|r| r.name == reg.name)
        .ok_or_else(|| {
            ApiError::Internal(format!("runner `{}` vanished after registering", reg.name))
        })?;
    let mut resp = Json(runner).into_response();
    resp.extensions_mut().insert(AuditTarget(reg.name));
    Ok(resp)
}

/// `POST /api/runners/{name}/heartbeat` (runner token): 204, or 404 when it must register.
pub async fn heartbeat(
    _runner: RunnerCaller,
    State(state): State<AppState>,
    Params(name): Params<String>,
    Body(beat): Body<Heartbeat>,
) -> Result<StatusCode, ApiError> {
    check::name(&name)?;
    let n = sqlx::query(
        "UPDATE runners SET last_heartbeat = now(), \
         state = CASE WHEN state IN ('draining', 'disabled') THEN state ELSE 'ready' END WHERE name = $1",
    )
    .bind(&name)
    .execute(&state.db)
    .await?
    .rows_affected();
    if n == 0 {
        return Err(ApiError::NotFound(format!(
            "runner `{name}` is not registered: POST /api/runners/register first"
        )));
    }
    state
        .cache
        .set_ex(
            &alive_key(&name),
            &beat.sandboxes.to_string(),
            state.config.runner_ttl,
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
