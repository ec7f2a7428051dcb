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
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::layout::Layout;
use crate::probe::ProbeError;
use crate::spec::{BackendChoice, InitStep, ServiceSpec};
use crate::supervisor::record::{ExitInfo, State};
use crate::supervisor::SupervisorError;

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

/// Which backend runs a service: the runtime identity of a backend, and what a record names.
/// (`spec::BackendChoice` is what the user asks for, `auto` included.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A native process under a process supervisor.
    Process,
    /// A BoxLite box under a box supervisor.
    Microvm,
}

impl BackendKind {
    /// `process` or `microvm`, as in stack files, records and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Microvm => "microvm",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a service's files could not be made ready (its data dir, its configs, its box).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The user it runs as is unusable.
    #[error(transparent)]
    User(#[from] process::UserError),
    /// A directory cannot be created.
    #[error("cannot create {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data dir cannot be given to the service's user.
    #[error("cannot hand {} to user `{user}`: {source}", path.display())]
    HandOver {
        /// The data dir.
        path: PathBuf,
        /// The user.
        user: String,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
    /// The data dir's mode cannot be set.
    #[error("cannot set the mode of {}: {source}", path.display())]
    SetMode {
        /// The data dir.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A config's secrets cannot be generated or read.
    #[error("cannot fill the secrets of {}: {source}", path.display())]
    Secrets {
        /// The config's source file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A secret named in `environment:` cannot be generated or read.
    #[error("cannot fill the secrets of `environment.{key}`: {source}")]
    EnvironmentSecrets {
        /// The variable.
        key: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file (a rendered config, a supervisor's spec) cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The service's `box:` cannot be turned into BoxLite's options.
    #[cfg(feature = "microvm")]
    #[error(transparent)]
    BoxOptions(#[from] microvm::options::BoxOptionsError),
}

/// Backend failures: which step of which service failed, and why.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The service's files could not be made ready.
    #[error("cannot start `{service}`: {source}")]
    Prepare {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: PrepareError,
    },
    /// The process backend was asked to run a service that has no `process:` section.
    #[error("cannot start `{service}`: it has no `process:` section")]
    NoProcess {
        /// Service.
        service: String,
    },
    /// A supervisor holds the service's lock (its launcher was killed mid-launch) but never
    /// recorded a process.
    #[error("cannot start `{service}`: another supervisor holds its lock but never reported a process: see `stack logs {service}`")]
    LockHeld {
        /// Service.
        service: String,
    },
    /// The supervisor could not be started, or could not start the service.
    #[error("cannot start `{service}`: {source}")]
    Spawn {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: SupervisorError,
    },
    /// Stopping failed.
    #[error("cannot stop `{service}`: {source}")]
    Stop {
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: SupervisorError,
    },
    /// The task that started or stopped the service panicked or was cancelled.
    #[error("cannot {action} `{service}`: {source}")]
    Task {
        /// `start` or `stop`.
        action: &'static str,
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: tokio::task::JoinError,
    },
    /// An init step's program could not be started.
    #[error(
        "init step `{step}` of `{service}` failed (not started):\ncannot run `{program}`: {source}"
    )]
    StepSpawn {
        /// Service.
        service: String,
        /// Step name.
        step: String,
        /// Its program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An init step was started but could not be waited for.
    #[error("init step `{step}` of `{service}` failed (lost):\n{source}")]
    StepLost {
        /// Service.
        service: String,
        /// Step name.
        step: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An init step could not be sent into the service's box.
    #[cfg(feature = "microvm")]
    #[error("init step `{step}` of `{service}` failed (not started):\n{source}")]
    StepUnreachable {
        /// Service.
        service: String,
        /// Step name.
        step: String,
        /// Why.
        #[source]
        source: microvm::boxsup::ExecError,
    },
    /// An init step ran and failed.
    #[error("init step `{step}` of `{service}` failed ({status}):\n{output}")]
    StepFailed {
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
            BackendError::StepFailed {
                exit_code: Some(EXIT_DO_NOT_RETRY),
                ..
            }
        )
    }
}

/// Runs services.
#[async_trait]
pub trait Backend: Send + Sync {
    /// `Process`, `Microvm`, or `Auto` for a backend that routes each service to one of them.
    fn name(&self) -> BackendChoice;

    /// The backend that runs `svc`. A backend that routes overrides it; any other runs every
    /// service itself.
    fn backend_for(&self, _svc: &ServiceSpec) -> BackendKind {
        match self.name() {
            BackendChoice::Microvm => BackendKind::Microvm,
            BackendChoice::Process | BackendChoice::Auto => BackendKind::Process,
        }
    }

    /// Runs an `exec` healthcheck's command where `svc` runs: passes when it exits 0.
    async fn exec(&self, _svc: &ServiceSpec, argv: &[String]) -> Result<(), ProbeError> {
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
    tokio::task::spawn_blocking(move || crate::supervisor::stop(&layout, &name))
        .await
        .map_err(|source| BackendError::Task {
            action: "stop",
            service: svc.into(),
            source,
        })?
        .map_err(|source| BackendError::Stop {
            service: svc.into(),
            source,
        })
}

/// A process's environment variables, by name.
pub type Environment = BTreeMap<String, String>;

/// `env` (a service's `environment:`, with `box.environment` over it for a box) as its
/// processes see it: `${secret.NAME}` filled from the state dir and `${backend.*}` with `vars`.
/// Both are kept unexpanded when the definition is read (`spec::checker`).
pub(crate) fn environment(
    layout: &Layout,
    env: &BTreeMap<String, String>,
    vars: crate::spec::interp::BackendVars,
) -> Result<Environment, PrepareError> {
    env.iter()
        .map(|(k, v)| {
            let v = crate::secrets::fill(layout, v).map_err(|source| {
                PrepareError::EnvironmentSecrets {
                    key: k.clone(),
                    source,
                }
            })?;
            Ok((k.clone(), crate::spec::interp::fill_backend(&v, vars)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_gets_its_secrets_and_backend_values_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = Layout::new(dir.path());
        let mut env = BTreeMap::new();
        env.insert("TOKEN".to_string(), "t=${secret.runner-token}".to_string());
        env.insert("BIND".to_string(), "${backend.bind}:1".to_string());
        let filled =
            environment(&layout, &env, crate::spec::interp::BackendVars::PROCESS).expect("filled");
        let secret = crate::secrets::get_or_create(&layout, "runner-token").expect("secret");
        assert_eq!(filled["TOKEN"], format!("t={secret}"));
        assert_eq!(filled["BIND"], "127.0.0.1:1");
    }
}
