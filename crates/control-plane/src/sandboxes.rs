//! Sandboxes: create (placed on a runner), list, get, delete, start and stop. A caller sees only
//! its organization's sandboxes (the admin sees all); any other id is 404. A runner that fails
//! leaves the sandbox `error` and the caller a 502/503 with the runner's message; a runner that
//! refuses a creation for the caller's reason (no such image) leaves nothing behind.

use std::collections::BTreeMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use platform_proto::{check, CreateSandbox, SandboxState};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::app::AppState;
use crate::audit::AuditTarget;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::input::{Body, Params};
use crate::runner_client::{RunnerError, RunnerRef};

/// `POST /api/sandbox`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    /// Unique in the organization; `sandbox-<8 hex>` when absent.
    pub name: Option<String>,
    /// An image in the stack's registry; the configured default when absent.
    pub image: Option<String>,
    /// CPUs (1-16, default 1).
    pub cpu: Option<u32>,
    /// Memory, MiB (64-65536, default 1024).
    pub memory_mib: Option<u32>,
    /// Environment of its processes.
    pub env: Option<BTreeMap<String, String>>,
    /// Free-form labels.
    pub labels: Option<BTreeMap<String, String>>,
    /// The runner to place it on (admin key only; the least loaded ready runner when absent).
    pub runner: Option<String>,
}

/// A sandbox as the API answers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    /// Its id (a UUID).
    pub id: String,
    /// Its name.
    pub name: String,
    /// `creating`, `started`, `stopped`, `restoring`, `error` or `destroyed`.
    pub state: String,
    /// The runner holding it.
    pub runner_id: Option<String>,
    /// Its image reference.
    pub image: String,
    /// CPUs.
    pub cpu: i32,
    /// Memory, MiB.
    pub memory_mib: i32,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// The organization owning it.
    pub organization_id: String,
}

fn select() -> String {
    format!(
        "SELECT json_build_object('id', s.id, 'name', s.name, 'state', s.state, 'runnerId', s.runner_id, \
         'image', s.image, 'cpu', s.cpu, 'memoryMib', s.memory_mib, 'labels', s.labels, \
         'createdAt', {}, 'organizationId', s.organization_id)::text FROM sandboxes s",
        crate::db::rfc3339("s.created_at")
    )
}

/// The caller's sandbox `raw_id` (any organization's for the admin), or 404.
pub async fn find(state: &AppState, who: &Principal, raw_id: &str) -> Result<Sandbox, ApiError> {
    let id = check::id(raw_id)?;
    let row = sqlx::query(&format!(
        "{} WHERE s.id = $1::uuid AND ($2::uuid IS NULL OR s.organization_id = $2::uuid)",
        select()
    ))
    .bind(&id)
    .bind((!who.admin).then_some(who.org.as_str()))
    .fetch_optional(&state.db)
    .await?;
    match row {
        Some(row) => crate::db::json_row(&row),
        None => Err(ApiError::NotFound(format!("sandbox {id} not found"))),
    }
}

/// A call about one of the caller's sandboxes (`/api/sandbox/{id}/...`,
/// `/api/toolbox/{id}/...`): the caller authenticated, the id checked, the sandbox found (an id
/// that is not the caller's is 404).
pub struct Owned {
    /// The shared state.
    pub state: AppState,
    /// The caller.
    pub who: Principal,
    /// Its sandbox.
    pub sandbox: Sandbox,
}

#[axum::async_trait]
impl FromRequestParts<AppState> for Owned {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let who = Principal::from_request_parts(parts, state).await?;
        let Params(params) =
            Params::<BTreeMap<String, String>>::from_request_parts(parts, state).await?;
        let id = params.get("id").map(String::as_str).unwrap_or_default();
        let sandbox = find(state, &who, id).await?;
        Ok(Owned {
            state: state.clone(),
            who,
            sandbox,
        })
    }
}

impl Owned {
    /// The runner holding the sandbox, or 409 when it has none any more or is being restored or
    /// migrated (until then no call may reach either copy).
    pub async fn runner(&self) -> Result<RunnerRef, ApiError> {
        if self.sandbox.state == SandboxState::Restoring.as_str() {
            return Err(ApiError::Conflict(format!(
                "sandbox {} is being restored or migrated: retry once it is started or stopped (`GET /api/sandbox/{}`)",
                self.sandbox.id, self.sandbox.id
            )));
        }
        let runner = match &self.sandbox.runner_id {
            Some(id) => crate::runners::by_id(&self.state, id).await?,
            None => None,
        };
        runner.map(|r| r.reference()).ok_or_else(|| {
            ApiError::Conflict(format!(
                "sandbox {} has no runner (its runner was removed): delete it and create another",
                self.sandbox.id
            ))
        })
    }
}

pub(crate) async fn set_state(
    state: &AppState,
    id: &str,
    to: SandboxState,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE sandboxes SET state = $2, updated_at = now() WHERE id = $1::uuid")
        .bind(id)
        .bind(to.as_str())
        .execute(&state.db)
        .await?;
    Ok(())
}

/// A runner's failure: a refusal (4xx) is passed on as is; anything else leaves the sandbox
/// `error`.
async fn failed(state: &AppState, id: &str, e: RunnerError) -> ApiError {
    if !e.is_refusal() {
        if let Err(db) = set_state(state, id, SandboxState::Error).await {
            return db;
        }
    }
    ApiError::Runner(e)
}

/// `POST /api/sandbox`: 201 and the sandbox, placed on the least loaded responsive runner.
pub async fn create(
    who: Principal,
    State(state): State<AppState>,
    Body(body): Body<CreateBody>,
) -> Result<Response, ApiError> {
    let name = match &body.name {
        Some(n) => check::name(n)?.to_string(),
        None => format!("sandbox-{}", crate::previews::random_hex(4)?),
    };
    let image = body
        .image
        .clone()
        .unwrap_or_else(|| state.config.default_image.clone());
    if image.is_empty()
        || image.len() > 512
        || image.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ApiError::BadRequest(
            "`image` must be an image reference such as boxlite/base:bookworm".into(),
        ));
    }
    let cpu = check::range("cpu", u64::from(body.cpu.unwrap_or(1)), 1, 16)? as u32;
    let memory_mib = check::range(
        "memoryMib",
        u64::from(body.memory_mib.unwrap_or(1024)),
        64,
        65536,
    )? as u32;
    let env = body.env.unwrap_or_default();
    check::env(&env)?;
    let labels = body.labels.unwrap_or_default();
    if labels.len() > 64 {
        return Err(ApiError::BadRequest("at most 64 labels".into()));
    }
    let runner = match &body.runner {
        None => crate::runners::pick(&state).await?,
        Some(_) if !who.admin => {
            return Err(ApiError::Forbidden(
                "only the admin API key places a sandbox on a given runner: leave out `runner`"
                    .into(),
            ))
        }
        Some(name) => crate::runners::placeable(&state, name).await?,
    };
    let to_json = |m: &BTreeMap<String, String>| {
        serde_json::to_string(m).map_err(|e| ApiError::Internal(e.to_string()))
    };
    let inserted = sqlx::query(
        "INSERT INTO sandboxes (organization_id, region_id, runner_id, name, state, cpu, memory_mib, env, labels, image) \
         SELECT $1::uuid, r.region_id, r.id, $3, 'creating', $4, $5, $6::jsonb, $7::jsonb, $8 FROM runners r WHERE r.id = $2::uuid \
         RETURNING id::text",
    )
    .bind(&who.org)
    .bind(&runner.id)
    .bind(&name)
    .bind(cpu as i32)
    .bind(memory_mib as i32)
    .bind(to_json(&env)?)
    .bind(to_json(&labels)?)
    .bind(&image)
    .fetch_one(&state.db)
    .await;
    let id: String = match inserted {
        Ok(row) => row.try_get(0)?,
        Err(e) if crate::db::is_unique_violation(&e) => {
            return Err(ApiError::Conflict(format!(
                "a sandbox named `{name}` exists in your organization: choose another name or delete it"
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let spec = CreateSandbox {
        id: id.clone(),
        image,
        cpu,
        memory_mib,
        env,
        labels,
    };
    match state.runners.create(&runner.reference(), &spec).await {
        Ok(made) => {
            let st = match made.state {
                SandboxState::Creating | SandboxState::Destroyed => SandboxState::Started,
                s => s,
            };
            set_state(&state, &id, st).await?;
        }
        Err(e) if e.is_refusal() => {
            // Nothing was created on the runner: nothing stays here either.
            sqlx::query("DELETE FROM sandboxes WHERE id = $1::uuid")
                .bind(&id)
                .execute(&state.db)
                .await?;
            return Err(ApiError::Runner(e));
        }
        Err(e) => return Err(failed(&state, &id, e).await),
    }
    let sb = find(&state, &who, &id).await?;
    let mut resp = (StatusCode::CREATED, Json(sb)).into_response();
    resp.extensions_mut().insert(AuditTarget(id));
    Ok(resp)
}

/// `GET /api/sandbox`: the caller's sandboxes, newest first.
pub async fn list(
    who: Principal,
    State(state): State<AppState>,
) -> Result<Json<Vec<Sandbox>>, ApiError> {
    let rows = sqlx::query(&format!(
        "{} WHERE ($1::uuid IS NULL OR s.organization_id = $1::uuid) ORDER BY s.created_at DESC, s.id",
        select()
    ))
    .bind((!who.admin).then_some(who.org.as_str()))
    .fetch_all(&state.db)
    .await?;
    Ok(Json(
        rows.iter()
            .map(crate::db::json_row)
            .collect::<Result<_, _>>()?,
    ))
}

/// `GET /api/sandbox/{id}`.
pub async fn get(o: Owned) -> Json<Sandbox> {
    Json(o.sandbox)
}

/// `DELETE /api/sandbox/{id}`: removed from its runner, then from the table; answers the
/// sandbox with `state: destroyed`.
pub async fn delete(o: Owned) -> Result<Json<Sandbox>, ApiError> {
    if o.sandbox.runner_id.is_some() {
        let runner = o.runner().await?;
        let on = o.state.runners.sandbox(&runner, &o.sandbox.id);
        if let Err(e) = on.delete().await {
            return Err(failed(&o.state, &o.sandbox.id, e).await);
        }
    }
    sqlx::query("DELETE FROM sandboxes WHERE id = $1::uuid")
        .bind(&o.sandbox.id)
        .execute(&o.state.db)
        .await?;
    let mut sb = o.sandbox;
    sb.state = SandboxState::Destroyed.as_str().into();
    Ok(Json(sb))
}

/// `POST /api/sandbox/{id}/start` and `/stop` (`action`): the runner's new state.
async fn lifecycle(o: Owned, action: &str) -> Result<Json<Sandbox>, ApiError> {
    let runner = o.runner().await?;
    let id = &o.sandbox.id;
    match o.state.runners.sandbox(&runner, id).lifecycle(action).await {
        Ok(r) => set_state(&o.state, id, r.state).await?,
        Err(e) => return Err(failed(&o.state, id, e).await),
    }
    Ok(Json(find(&o.state, &o.who, id).await?))
}

/// `POST /api/sandbox/{id}/start`.
pub async fn start(o: Owned) -> Result<Json<Sandbox>, ApiError> {
    lifecycle(o, "start").await
}

/// `POST /api/sandbox/{id}/stop`.
pub async fn stop(o: Owned) -> Result<Json<Sandbox>, ApiError> {
    lifecycle(o, "stop").await
}
