//! `stack status`: what runs, which program serves each role, is it healthy, and how long each
//! phase of its last start took.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backend::Backend;
use crate::layout::Layout;
use crate::probe;
use crate::spec::{ProbeSpec, Stack};
use crate::supervisor::record::{read_json, Readiness, State};

/// Per-phase timings of the last start, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Start request to process spawned.
    pub spawned_ms: Option<u64>,
    /// Start request to healthy (or completed).
    pub ready_ms: Option<u64>,
    /// Time spent in init steps.
    pub init_ms: Option<u64>,
}

/// One row of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    /// Service.
    pub name: String,
    /// Backend running it.
    pub backend: String,
    /// Program serving the role.
    pub program: String,
    /// State.
    pub state: &'static str,
    /// Did a probe pass just now (or, without a healthcheck, is it running)?
    pub healthy: bool,
    /// Main pid while running.
    pub pid: Option<u32>,
    /// Host ports.
    pub ports: BTreeMap<String, u16>,
    /// When the current process started.
    pub started_at: Option<String>,
    /// Crash restarts.
    pub restarts: u32,
    /// Instance id.
    pub id: String,
    /// Last exit, e.g. `exit 1`.
    pub last_exit: Option<String>,
    /// Timings of the last start.
    pub timings: Timings,
    /// Probe error, when unhealthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the service says about itself at its `info:` URL (a runner: its sandboxes), while
    /// it runs and answers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub info: BTreeMap<String, serde_json::Value>,
}

/// How long `status` waits for a service's `info:` URL.
const INFO_TIMEOUT: Duration = Duration::from_secs(1);

/// The scalar fields of the JSON object at `url`; nothing when it does not answer one.
async fn fetch_info(http: &reqwest::Client, url: &str) -> BTreeMap<String, serde_json::Value> {
    let Ok(response) = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
    else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Object(fields)) = response.json().await else {
        return BTreeMap::new();
    };
    fields
        .into_iter()
        .filter(|(_, v)| !(v.is_object() || v.is_array() || v.is_null()))
        .collect()
}

/// Collects the status of every service, probing the running ones in parallel.
pub async fn collect(
    stack: &Stack,
    backend: &Arc<dyn Backend>,
    layout: &Layout,
) -> Vec<ServiceStatus> {
    let mut rows = Vec::new();
    let mut probes = tokio::task::JoinSet::new();
    let mut infos = tokio::task::JoinSet::new();
    // Only when a service has an `info:` URL; no proxy: every such URL is the stack's own.
    let http = stack
        .services
        .values()
        .any(|s| s.info.is_some())
        .then(|| {
            reqwest::Client::builder()
                .no_proxy()
                .timeout(INFO_TIMEOUT)
                .build()
                .ok()
        })
        .flatten();
    for (i, svc) in stack.services.values().enumerate() {
        let inst = backend.inspect(svc);
        let ready: Option<Readiness> = read_json(&layout.readiness(&svc.name)).ok().flatten();
        let program = ready
            .as_ref()
            .and_then(|r| r.program.clone())
            .unwrap_or_else(|| inst.program.clone());
        let timings = ready
            .filter(|r| r.id == inst.id)
            .map(|r| Timings {
                spawned_ms: Some(r.spawned_ms),
                ready_ms: Some(r.ready_ms),
                init_ms: Some(r.init_ms),
            })
            .unwrap_or(Timings {
                spawned_ms: inst.spawn_ms,
                ..Timings::default()
            });
        let up = inst.is_up();
        if let (true, Some(url), Some(http)) = (up, svc.info.clone(), http.clone()) {
            infos.spawn(async move { (i, fetch_info(&http, &url).await) });
        }
        if up {
            if let Some(hc) = svc.healthcheck.clone() {
                let (backend, spec) = (Arc::clone(backend), svc.clone());
                probes.spawn(async move {
                    let timeout = hc.timeout.min(Duration::from_secs(2));
                    let r = match &hc.probe {
                        // An exec probe runs where the service runs (inside its box, say).
                        ProbeSpec::Exec(argv) => {
                            tokio::time::timeout(timeout, backend.exec(&spec, argv))
                                .await
                                .unwrap_or(Err(probe::ProbeError::Timeout {
                                    probe: "exec",
                                    after: timeout,
                                }))
                        }
                        _ => probe::check(&hc.probe, timeout).await,
                    };
                    (i, r)
                });
            }
        }
        rows.push(ServiceStatus {
            name: svc.name.clone(),
            backend: backend.backend_for(svc).to_string(),
            program,
            state: inst.state.as_str(),
            healthy: match inst.state {
                State::Completed => true,
                _ => up && svc.healthcheck.is_none(),
            },
            pid: inst.pid,
            ports: inst.ports.clone(),
            started_at: inst.started_at.clone(),
            restarts: inst.restarts,
            id: inst.id.clone(),
            last_exit: inst.last_exit.as_ref().map(|e| e.describe()),
            timings,
            error: None,
            info: BTreeMap::new(),
        });
    }
    while let Some(Ok((i, r))) = probes.join_next().await {
        match r {
            Ok(()) => rows[i].healthy = true,
            Err(e) => {
                if rows[i].state == "running" && rows[i].timings.ready_ms.is_none() {
                    rows[i].state = State::Starting.as_str();
                }
                rows[i].error = Some(e.to_string());
            }
        }
    }
    while let Some(Ok((i, info))) = infos.join_next().await {
        rows[i].info = info;
    }
    rows
}
