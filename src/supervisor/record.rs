//! The per-service record in `run/<service>.json`: who supervises it, which process serves it,
//! with which definition, in which state. Written atomically by the service's supervisor.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::identity::ProcRef;

/// The lifecycle state of a service, as `status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Spawned, not yet reported healthy.
    Starting,
    /// Its process is running.
    Running,
    /// A stop was requested and is in progress.
    Stopping,
    /// Stopped on request.
    Stopped,
    /// Exited on its own with status 0 and is not restarted.
    Exited,
    /// Exited with an error and is not (or no longer) restarted.
    Failed,
    /// A one-shot task that finished with status 0.
    Completed,
}

impl State {
    /// The lowercase name used in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::Completed => "completed",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code, when it exited normally.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// When (RFC 3339).
    pub at: String,
}

impl ExitInfo {
    /// An exit on its own is clean only with status 0 (a requested stop is always clean: the
    /// record says `stopped` whatever the status, SIGTERM's 143 included).
    pub fn is_clean(&self) -> bool {
        self.code == Some(0)
    }

    /// `exit 1`, `signal 9 (SIGKILL)`, or `exit status unknown`.
    pub fn describe(&self) -> String {
        match (self.code, self.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => {
                let name = nix::sys::signal::Signal::try_from(s)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                format!("signal {s} ({name})")
            }
            (None, None) => "exit status unknown".into(),
        }
    }
}

/// Everything known about one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id of this instance: kept across its crash restarts, new after a stop.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The backend that started it (and must stop it).
    pub backend: crate::backend::BackendKind,
    /// The program serving the role (e.g. `/usr/bin/redis-server`).
    pub program: String,
    /// Definition hash the instance was started with.
    pub hash: String,
    /// Host ports.
    pub ports: BTreeMap<String, u16>,
    /// The supervisor process.
    pub supervisor: ProcRef,
    /// The service's process (leader of its own process group), while it runs.
    pub process: Option<ProcRef>,
    /// Current state.
    pub state: State,
    /// When the current process was spawned (RFC 3339).
    pub started_at: Option<String>,
    /// Milliseconds from the spawn request to the process running.
    pub spawn_ms: Option<u64>,
    /// Restarts after crashes since the instance was created.
    pub restarts: u32,
    /// How the last process ended.
    pub last_exit: Option<ExitInfo>,
}

impl Record {
    /// A new instance's record as its supervisor writes it first: starting, nothing spawned,
    /// no restarts yet.
    pub fn starting(
        backend: crate::backend::BackendKind,
        id: String,
        service: &str,
        program: &str,
        hash: &str,
        ports: &BTreeMap<String, u16>,
        supervisor: ProcRef,
    ) -> Record {
        Record {
            id,
            service: service.to_string(),
            backend,
            program: program.to_string(),
            hash: hash.to_string(),
            ports: ports.clone(),
            supervisor,
            process: None,
            state: State::Starting,
            started_at: None,
            spawn_ms: None,
            restarts: 0,
            last_exit: None,
        }
    }
}

/// What `up` learned about an instance: health and per-phase timings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// The instance id it applies to.
    pub id: String,
    /// The process it applies to (a restart invalidates it).
    pub pid: Option<u32>,
    /// Milliseconds from the start request to the process being spawned.
    pub spawned_ms: u64,
    /// Milliseconds from the start request to healthy (or completed).
    pub ready_ms: u64,
    /// Milliseconds spent in init steps.
    pub init_ms: u64,
    /// Of those, milliseconds in steps before the start (skipped once their `creates` exists).
    #[serde(default)]
    pub before_ms: u64,
    /// What a start that is not a first start (its data already there) costs, from the
    /// `ready_ms` of such starts at full speed: a floor that rises slowly (see
    /// `engine::next_warm_estimate`).
    #[serde(default)]
    pub warm_ms: Option<u64>,
    /// When it became ready (RFC 3339).
    pub at: String,
    /// The serving program and its version, e.g. `garage 2.5.0`.
    #[serde(default)]
    pub program: Option<String>,
    /// Identity of the binary `program` was read from (path, size, mtime): unchanged means the
    /// version need not be asked again.
    #[serde(default)]
    pub program_key: Option<String>,
}

/// Now, as RFC 3339 with microseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string()
}

/// Reads a JSON file; `Ok(None)` when it does not exist or is unreadable garbage (a torn write
/// cannot happen because writes are atomic, so garbage means someone else's file).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes JSON atomically (temporary file in the same directory, then rename), readable by its
/// owner only: a supervisor's spec carries the service's environment, secrets included.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}
