//! The audit log: one `audit_log` row per mutating call (create, delete, start, stop, execute,
//! upload, runner registration), whatever its outcome, written before the answer leaves. Runner
//! heartbeats are liveness, not changes anyone made, and are not logged.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Mutex;

use crate::app::AppState;

/// An actor (a user id, `api-key:<uuid>`, `runner`) and the organization it acts in.
type Who = (String, Option<String>);

/// Who made the call, filled in by the authentication extractors while the call runs.
#[derive(Debug, Clone, Default)]
pub struct AuditSlot(Arc<Mutex<Option<Who>>>);

impl AuditSlot {
    /// Records the actor and the organization it acts in.
    pub async fn set(&self, actor: String, org: Option<String>) {
        *self.0.lock().await = Some((actor, org));
    }
}

/// Put on a response by a handler whose target the path does not name (a new sandbox's id, a
/// runner's name).
#[derive(Debug, Clone)]
pub struct AuditTarget(pub String);

/// The action and target type of a mutating route, `None` for what is not audited.
pub fn action(method: &Method, route: &str) -> Option<(&'static str, &'static str)> {
    Some(match (method.as_str(), route) {
        ("POST", "/api/sandbox") => ("sandbox.create", "sandbox"),
        ("DELETE", "/api/sandbox/:id") => ("sandbox.delete", "sandbox"),
        ("POST", "/api/sandbox/:id/start") => ("sandbox.start", "sandbox"),
        ("POST", "/api/sandbox/:id/stop") => ("sandbox.stop", "sandbox"),
        ("POST", "/api/toolbox/:id/toolbox/process/execute") => ("toolbox.execute", "sandbox"),
        ("POST", "/api/toolbox/:id/toolbox/files/upload") => ("toolbox.upload", "sandbox"),
        ("POST", "/api/sandbox/:id/backup") => ("sandbox.backup", "sandbox"),
        ("POST", "/api/sandbox/:id/restore") => ("sandbox.restore", "sandbox"),
        ("POST", "/api/sandbox/:id/migrate") => ("sandbox.migrate", "sandbox"),
        ("POST", "/api/runners/register") => ("runner.register", "runner"),
        ("POST", "/api/runners/:name/drain") => ("runner.drain", "runner"),
        ("POST", "/api/runners/:name/enable") => ("runner.enable", "runner"),
        _ => return None,
    })
}

/// Middleware: runs the call, then writes its row (actor, organization, action, target,
/// status). A row that cannot be written is reported in the log; the answer stands.
pub async fn record(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    let Some((action, target_type)) = action(req.method(), &route) else {
        return next.run(req).await;
    };
    let slot = AuditSlot::default();
    req.extensions_mut().insert(slot.clone());
    let path = req.uri().path().to_string();
    // `/api/sandbox/{id}/...`, `/api/toolbox/{id}/...` and `/api/runners/{name}/...` name
    // their target.
    let path_target = path
        .split('/')
        .nth(3)
        .filter(|_| target_type == "sandbox" || route.starts_with("/api/runners/:name"))
        .map(|s| s.chars().take(64).collect::<String>());
    let resp = next.run(req).await;
    let target = resp
        .extensions()
        .get::<AuditTarget>()
        .map(|t| t.0.clone())
        .or(path_target);
    let who = slot.0.lock().await.take();
    let (actor, org) = match who {
        Some((a, o)) => (Some(a), o),
        None => (None, None),
    };
    let metadata = serde_json::json!({ "path": path.chars().take(256).collect::<String>() });
    let r = sqlx::query(
        "INSERT INTO audit_log (organization_id, actor_id, action, target_type, target_id, status_code, metadata) \
         VALUES ($1::uuid, $2, $3, $4, $5, $6, $7::jsonb)",
    )
    .bind(org)
    .bind(actor)
    .bind(action)
    .bind(target_type)
    .bind(target)
    .bind(i32::from(resp.status().as_u16()))
    .bind(metadata.to_string())
    .execute(&state.db)
    .await;
    if let Err(e) = r {
        eprintln!("audit: cannot record {action} on {path}: {e}");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutating_routes_are_audited_reads_and_heartbeats_are_not() {
        let audited = [
            (Method::POST, "/api/sandbox", "sandbox.create"),
            (Method::DELETE, "/api/sandbox/:id", "sandbox.delete"),
            (Method::POST, "/api/sandbox/:id/stop", "sandbox.stop"),
            (
                Method::POST,
                "/api/toolbox/:id/toolbox/files/upload",
                "toolbox.upload",
            ),
            (Method::POST, "/api/runners/register", "runner.register"),
            (Method::POST, "/api/sandbox/:id/backup", "sandbox.backup"),
            (Method::POST, "/api/sandbox/:id/migrate", "sandbox.migrate"),
            (Method::POST, "/api/runners/:name/drain", "runner.drain"),
        ];
        for (method, route, name) in audited {
            assert_eq!(action(&method, route).map(|a| a.0), Some(name), "{route}");
        }
        for (method, route) in [
            (Method::GET, "/api/sandbox"),
            (
                Method::GET,
                "/api/sandbox/:id/ports/:port/signed-preview-url",
            ),
            (Method::GET, "/api/toolbox/:id/toolbox/files/download"),
            (Method::GET, "/api/sandbox/:id/backups"),
            (Method::POST, "/api/runners/:name/heartbeat"),
        ] {
            assert_eq!(action(&method, route), None, "{method} {route}");
        }
    }
}
