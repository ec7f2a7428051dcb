//! Supervision of native processes: one small supervisor process per service (see [`process`]),
//! records with pid *and* start time, size-capped logs, and the client side used by the process
//! backend to launch, observe and stop supervised services.
//!
//! Why a supervisor per service rather than children of `stack` itself: services must keep
//! running after `stack up` returns, be restarted within a second when they crash, and survive
//! `stack` being SIGKILLed at any moment. A per-service lock held by the supervisor makes a
//! second copy impossible; a record checked by start time makes a reused pid harmless.

pub mod identity;
pub mod log;
pub mod process;
pub mod record;
pub mod spawn;

pub use process::handshake as send_handshake;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::layout::Layout;
use crate::spec::RestartPolicy;
use identity::ProcRef;
use record::{read_json, write_json, Record, State};

/// How long a process group may take to vanish after SIGKILL: the kernel frees it at once, but
/// a loaded machine can take a while to reap, and a stop must not report success too early.
pub const KILL_REAP_WAIT: Duration = Duration::from_secs(5);

/// A resolved unprivileged user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunAs {
    /// User name.
    pub name: String,
    /// Numeric uid.
    pub uid: u32,
    /// Numeric primary gid.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Everything a supervisor needs to run one service; written to `run/<service>.spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SupervisorSpec {
    /// Service name.
    pub service: String,
    /// Instance id (kept across crash restarts).
    pub instance_id: String,
    /// Definition hash.
    pub hash: String,
    /// Program that serves the role.
    pub program: String,
    /// argv.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: PathBuf,
    /// User to run as.
    pub run_as: Option<RunAs>,
    /// Stop signal.
    #[serde(with = "signal_name")]
    pub stop_signal: Signal,
    /// Grace period before SIGKILL.
    pub stop_grace: Duration,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// One-shot task?
    pub is_task: bool,
    /// Keep or kill what the service leaves behind when it exits on its own.
    #[serde(default)]
    pub orphans: crate::spec::Orphans,
    /// Nice value of the first spawn (restored by `up` once ready); restarts use 0.
    #[serde(default)]
    pub startup_nice: i32,
    /// Host ports (for the record).
    pub ports: BTreeMap<String, u16>,
    /// Log file.
    pub log_path: PathBuf,
    /// Log size cap in bytes.
    pub log_cap: u64,
    /// Record file.
    pub record_path: PathBuf,
    /// Lock file held for the supervisor's life.
    pub lock_path: PathBuf,
}

mod signal_name {
    use nix::sys::signal::Signal;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &Signal, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Signal, D::Error> {
        let s = String::deserialize(de)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The supervisor's first line on stdout: did the service start?
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Handshake {
    /// Started.
    pub ok: bool,
    /// The service's pid.
    pub pid: Option<u32>,
    /// Its state.
    pub state: Option<State>,
    /// Why not.
    pub error: Option<String>,
}

impl Handshake {
    /// The service is up.
    pub fn ok(pid: Option<u32>, state: State) -> Handshake {
        Handshake {
            ok: true,
            pid,
            state: Some(state),
            error: None,
        }
    }
    /// It could not start, and why.
    pub fn failed(error: String) -> Handshake {
        Handshake {
            ok: false,
            pid: None,
            state: None,
            error: Some(error),
        }
    }
}

/// Supervisor failures seen by the client.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The state dir could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The supervisor could not start the service, and said why in its handshake (the text of
    /// its own error, which crossed a pipe).
    #[error("{reason}")]
    Refused {
        /// What the supervisor said.
        reason: String,
    },
    /// The supervisor exited before its handshake.
    #[error("the supervisor of `{service}` exited without a word: see {}", log.display())]
    Silent {
        /// Service.
        service: String,
        /// Its log, where the supervisor's notes are.
        log: PathBuf,
    },
    /// The service did not stop.
    #[error(
        "`{service}` (process group {pgid}) did not stop even after SIGKILL: check `ps -g {pgid}`"
    )]
    Unstoppable {
        /// Service.
        service: String,
        /// Its group.
        pgid: u32,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError + '_ {
    move |source| SupervisorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What is known about a service's instance right now.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The record, if the service ever started.
    pub record: Option<Record>,
    /// Is its supervisor alive (checked by start time)?
    pub supervised: bool,
    /// Is its process alive (checked by start time)?
    pub alive: bool,
}

impl Observed {
    /// The effective state: the record's, corrected by what is actually alive.
    pub fn state(&self) -> State {
        match &self.record {
            None => State::Stopped,
            Some(r) => match r.state {
                State::Running | State::Starting | State::Stopping if self.alive => r.state,
                // The supervisor is between restarts, or has not yet written what it saw.
                State::Running | State::Starting if self.supervised => State::Starting,
                // Both the supervisor and the process died without a word: report the failure.
                State::Running | State::Starting => State::Failed,
                State::Stopping => State::Stopped,
                s => s,
            },
        }
    }
}

/// Reads the record of `service` and checks its processes.
pub fn observe(layout: &Layout, service: &str) -> Observed {
    let record: Option<Record> = read_json(&layout.record(service)).ok().flatten();
    let supervised = record.as_ref().is_some_and(|r| r.supervisor.is_alive());
    let alive = record
        .as_ref()
        .and_then(|r| r.process.as_ref())
        .is_some_and(ProcRef::is_alive);
    Observed {
        record,
        supervised,
        alive,
    }
}

/// Is some live process holding the service's supervisor lock?
pub fn lock_held(layout: &Layout, service: &str) -> bool {
    let Ok(f) = File::open(layout.service_lock(service)) else {
        return false;
    };
    Flock::lock(f, FlockArg::LockSharedNonblock).is_err()
}

/// Starts a supervisor for `spec` and waits for its handshake (the service spawned or failed).
pub fn launch(
    layout: &Layout,
    spec: &SupervisorSpec,
    exe: Option<&Path>,
) -> Result<Handshake, SupervisorError> {
    let spec_path = layout.supervisor_spec(&spec.service);
    write_json(&spec_path, spec).map_err(io_err(&spec_path))?;
    spawn_supervisor(
        exe,
        "__supervise",
        &spec_path,
        &spec.service,
        &spec.log_path,
    )
}

/// Starts `stack <subcommand> <spec_path>` (a process or box supervisor) in its own session and
/// waits for its one-line handshake. `exe` is the `stack` binary; this very program when `None`.
pub fn spawn_supervisor(
    exe: Option<&Path>,
    subcommand: &str,
    spec_path: &Path,
    service: &str,
    log_path: &Path,
) -> Result<Handshake, SupervisorError> {
    let exe = match exe {
        Some(exe) => exe.to_path_buf(),
        None => std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?,
    };
    // A new session detaches the supervisor from our terminal and process group, so Ctrl-C and
    // the death of `stack` never reach it.
    let mut child = spawn::Spawn::new(exe, [OsStr::new(subcommand), spec_path.as_os_str()])
        .stderr(Stdio::null())
        .group(spawn::Group::Session)
        .spawn()
        .map_err(io_err(spec_path))?;
    let stdout = child.stdout.take();
    // Reap the supervisor if it exits while we still live; afterwards init adopts it.
    std::thread::spawn(move || child.wait());
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    match serde_json::from_str::<Handshake>(line.trim()) {
        Ok(h) if h.ok => Ok(h),
        Ok(h) => Err(SupervisorError::Refused {
            reason: h.error.unwrap_or_else(|| "the supervisor failed".into()),
        }),
        Err(_) => Err(SupervisorError::Silent {
            service: service.into(),
            log: log_path.to_path_buf(),
        }),
    }
}

/// Stops `service` if it runs: asks its supervisor, or (when the supervisor is gone) stops the
/// recorded process group itself. Never signals a process whose start time does not match.
pub fn stop(layout: &Layout, service: &str) -> Result<bool, SupervisorError> {
    let obs = observe(layout, service);
    let Some(mut record) = obs.record.clone() else {
        return Ok(false);
    };
    let saved: Option<SupervisorSpec> = read_json(&layout.supervisor_spec(service)).ok().flatten();
    let (sig, grace) = saved
        .as_ref()
        .map_or((Signal::SIGTERM, Duration::from_secs(10)), |s| {
            (s.stop_signal, s.stop_grace)
        });
    let mut did = false;
    if obs.supervised {
        did = true;
        identity::signal(record.supervisor.pid, Signal::SIGTERM);
        if !identity::wait_gone(&record.supervisor, grace + Duration::from_secs(7)) {
            identity::signal(record.supervisor.pid, Signal::SIGKILL);
            identity::wait_gone(&record.supervisor, Duration::from_secs(2));
        }
    }
    // Re-read: the supervisor may have stopped the process and updated the record.
    if let Some(r) = read_json::<Record>(&layout.record(service)).ok().flatten() {
        record = r;
    }
    if let Some(p) = record.process.clone().filter(ProcRef::is_alive) {
        did = true;
        if !identity::is_group_leader(p.pid) {
            // Not a group we made (a box's shim, started by BoxLite): signal it alone.
            identity::signal(p.pid, sig);
            if !identity::wait_gone(&p, grace) {
                identity::signal(p.pid, Signal::SIGKILL);
                identity::wait_gone(&p, KILL_REAP_WAIT);
            }
            record.process = None;
        }
    }
    if let Some(p) = record.process.clone().filter(ProcRef::is_alive) {
        did = true;
        let t0 = Instant::now();
        identity::signal_group(p.pid, sig);
        if !identity::wait_gone(&p, grace) {
            identity::signal_group(p.pid, Signal::SIGKILL);
        }
        if !identity::wait_group_gone(
            p.pid,
            KILL_REAP_WAIT.max(grace.saturating_sub(t0.elapsed())),
        ) {
            return Err(SupervisorError::Unstoppable {
                service: service.into(),
                pgid: p.pid,
            });
        }
    }
    // Whatever stopped it (its supervisor, us, or a crash nobody saw), the record says stopped.
    if record.process.is_some()
        || matches!(
            record.state,
            State::Running | State::Starting | State::Stopping
        )
    {
        record.process = None;
        record.state = State::Stopped;
        let path = layout.record(service);
        write_json(&path, &record).map_err(io_err(&path))?;
    }
    // The readiness file stays: its timings tell the next `up` which services are slow. It
    // names the process it applies to, so it never vouches for a new one.
    Ok(did)
}

/// Kills a service's supervisor and process group at once (second Ctrl-C).
pub fn kill_now(layout: &Layout, service: &str) {
    let obs = observe(layout, service);
    if let Some(r) = obs.record {
        if r.supervisor.is_alive() {
            identity::signal(r.supervisor.pid, Signal::SIGKILL);
        }
        if let Some(p) = r.process.filter(ProcRef::is_alive) {
            if identity::is_group_leader(p.pid) {
                identity::signal_group(p.pid, Signal::SIGKILL);
            } else {
                identity::signal(p.pid, Signal::SIGKILL);
            }
        }
    }
}

/// Blocks until no other command holds the stack lock, then holds it until dropped.
pub fn lock_stack(layout: &Layout, wait: bool) -> Result<Option<Flock<File>>, SupervisorError> {
    let path = layout.stack_lock();
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err(_) if !wait => Ok(None),
        Err((_, e)) => Err(SupervisorError::Io {
            path,
            source: e.into(),
        }),
    }
}
