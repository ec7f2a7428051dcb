//! The seam between the engine and what actually runs a service. `process` runs native programs
//! under per-service supervisors; `microvm` (feature `microvm`) runs OCI images as BoxLite
//! boxes; `routed` sends each service to one of them (`backend: auto`). Nothing here assumes
//! processes: an instance has an id, a state and optional details.

#[cfg(feature = "microvm")]
pub mod microvm;
pub mod process;
pub mod routed;
pub mod select;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::layout::Layout;
use crate::spec::{InitStep, ServiceSpec};
use crate::supervisor::record::{ExitInfo, State};

/// What a backend knows about one service's instance.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    /// Stable instance id (empty when never started).
    pub id: String,
    /// Effective state.
    pub state: State,
    /// Main process id (process backend) while running.
    pub pid: Option<u32>,
    /// The program serving the role.
    pub program: String,
    /// Definition hash it runs with.
    pub hash: String,
    /// Host ports.
    pub ports: BTreeMap<String, u16>,
    /// When the current process started.
    pub started_at: Option<String>,
    /// Crash restarts so far.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitInfo>,
    /// Is something of the instance alive (a process, a box)?
    pub alive: bool,
    /// Is it under supervision (restarted when it crashes)?
    pub supervised: bool,
    /// Milliseconds from the start request to the instance running.
    pub spawn_ms: Option<u64>,
}

/// How much CPU a starting service may take from the others (`up` gives the machine to the
/// urgent services, the critical path and those close to it, like systemd's
/// `StartupCPUWeight`). Both shaped priorities last until `settle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// As any process.
    #[default]
    Normal,
    /// Goes first while it starts: it is on or near the critical path (see
    /// [`crate::graph::urgent`]), so a moment it waits for the CPU delays the whole start.
    Urgent,
    /// Yields the CPU while it starts (it has slack to spare).
    Background,
}

/// A problem that prevents a service from starting, found before anything is spawned.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    /// Service.
    pub service: String,
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub fix: String,
}

/// Backend failures.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Starting failed.
    #[error("cannot start `{service}`: {message}")]
    Start {
        /// Service.
        service: String,
        /// Why.
        message: String,
    },
    /// Stopping failed.
    #[error("cannot stop `{service}`: {message}")]
    Stop {
        /// Service.
        service: String,
        /// Why.
        message: String,
    },
    /// An init step failed.
    #[error("init step `{step}` of `{service}` failed ({status}):\n{output}")]
    Init {
        /// Service.
        service: String,
        /// Step name.
        step: String,
        /// Exit status.
        status: String,
        /// Its exit code, when it exited.
        exit_code: Option<i32>,
        /// Its output (tail).
        output: String,
    },
}

/// The exit code (sysexits' `EX_CONFIG`) by which an init step says that running it again cannot
/// help: an `after_start` step is otherwise retried until its server answers, which would turn a
/// permanent fault into a wait for the whole healthcheck budget.
pub const EXIT_DO_NOT_RETRY: i32 = 78;

impl BackendError {
    /// Did an init step fail in a way retrying cannot fix (it exited [`EXIT_DO_NOT_RETRY`])?
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            BackendError::Init {
                exit_code: Some(EXIT_DO_NOT_RETRY),
                ..
            }
        )
    }
}

/// Runs services.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `process`, `microvm`, or `auto` for a backend that routes each service to one of them.
    fn name(&self) -> &'static str;

    /// The backend that runs `svc` (`process` or `microvm`).
    fn backend_for(&self, _svc: &ServiceSpec) -> &'static str {
        self.name()
    }

    /// Runs an `exec` healthcheck's command where `svc` runs: passes when it exits 0.
    async fn exec(&self, _svc: &ServiceSpec, argv: &[String]) -> Result<(), String> {
        crate::probe::host_exec(argv).await
    }

    /// Problems that would stop `svc` from starting (missing program, missing user, ...).
    fn preflight(&self, svc: &ServiceSpec) -> Vec<Problem>;

    /// The current state of `svc`'s instance.
    fn inspect(&self, svc: &ServiceSpec) -> Instance;

    /// Makes `svc`'s files ready before its init steps and start: its data dir, and its
    /// `configs:` rendered (secrets filled in) where it will read them.
    async fn prepare(&self, svc: &ServiceSpec) -> Result<(), BackendError>;

    /// Starts (or adopts) `svc` and returns once it is running.
    async fn start(&self, svc: &ServiceSpec, priority: Priority) -> Result<Instance, BackendError>;

    /// The service is ready: it gets its normal share of the CPU back.
    fn settle(&self, svc: &ServiceSpec);

    /// Runs one init step for `svc`; returns its duration. `before_start` steps prepare the
    /// service's data and run as the service; `after_healthy` steps are clients of it.
    async fn run_step(
        &self,
        svc: &ServiceSpec,
        step: &InitStep,
        priority: Priority,
    ) -> Result<Duration, BackendError>;

    /// The program serving `svc` and its version, e.g. `garage 2.5.0`, for `status`.
    async fn program(&self, svc: &ServiceSpec) -> Option<String>;

    /// Identifies what `program` would describe (a binary's path, size and mtime): while it is
    /// unchanged the description need not be asked again.
    fn program_key(&self, svc: &ServiceSpec) -> Option<String>;

    /// Returns when `svc`'s state may have changed (its process ended), or after `timeout`.
    async fn wait_change(&self, svc: &ServiceSpec, timeout: Duration);

    /// Stops `svc`; true when something was running.
    async fn stop(&self, svc: &str) -> Result<bool, BackendError>;

    /// Kills `svc` at once, no grace (second Ctrl-C).
    fn kill(&self, svc: &str);
}

/// The instance of a service run under a supervisor (a process or a box supervisor: both write
/// the same record), as its record and the liveness of its processes say.
pub(crate) fn supervised_instance(
    layout: &Layout,
    svc: &ServiceSpec,
    program: impl FnOnce() -> String,
) -> Instance {
    let obs = crate::supervisor::observe(layout, &svc.name);
    let state = obs.state();
    match obs.record {
        None => Instance {
            id: String::new(),
            state,
            pid: None,
            program: program(),
            hash: String::new(),
            ports: svc.ports.clone(),
            started_at: None,
            restarts: 0,
            last_exit: None,
            alive: false,
            supervised: false,
            spawn_ms: None,
        },
        Some(r) => Instance {
            id: r.id,
            state,
            pid: r.process.filter(|_| obs.alive).map(|p| p.pid),
            program: r.program,
            hash: r.hash,
            ports: r.ports,
            started_at: r.started_at,
            restarts: r.restarts,
            last_exit: r.last_exit,
            alive: obs.alive,
            supervised: obs.supervised,
            spawn_ms: r.spawn_ms,
        },
    }
}

/// Returns when the supervised service's state may have changed: its supervisor exited (a
/// task's supervisor writes the final record and exits), or after `timeout`.
pub(crate) async fn supervised_wait_change(layout: &Layout, svc: &ServiceSpec, timeout: Duration) {
    let obs = crate::supervisor::observe(layout, &svc.name);
    match obs.record.filter(|_| obs.supervised) {
        Some(r) => {
            let sup = r.supervisor;
            let _ = tokio::task::spawn_blocking(move || {
                crate::supervisor::identity::wait_gone(&sup, timeout)
            })
            .await;
        }
        None => tokio::time::sleep(timeout.min(Duration::from_millis(10))).await,
    }
}

/// Stops a supervised service (see `supervisor::stop`); true when something was running.
pub(crate) async fn supervised_stop(layout: &Layout, svc: &str) -> Result<bool, BackendError> {
    let (layout, name) = (layout.clone(), svc.to_string());
    let stop_err = |message: String| BackendError::Stop {
        service: svc.into(),
        message,
    };
    tokio::task::spawn_blocking(move || crate::supervisor::stop(&layout, &name))
        .await
        .map_err(|e| stop_err(e.to_string()))?
        .map_err(|e| stop_err(e.to_string()))
}
