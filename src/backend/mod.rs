//! The seam between the engine and what actually runs a service. `process` runs native programs
//! under per-service supervisors; `microvm` (feature `microvm`) will run OCI images as BoxLite
//! boxes. Nothing here assumes processes: an instance has an id, a state and optional details.

pub mod process;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

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

/// How much CPU a starting service may take from the others (`up` gives the critical path the
/// machine, like systemd's `StartupCPUWeight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    /// As any process.
    #[default]
    Normal,
    /// Yields the CPU while it starts (off the critical path); restored by `settle`.
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
        /// Its output (tail).
        output: String,
    },
}

/// Runs services.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `process` or `microvm`.
    fn name(&self) -> &'static str;

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
