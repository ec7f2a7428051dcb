//! How an engine command fails: [`EngineError`] for the command, and per service that did not
//! come up an [`Unhealthy`] whose [`StartError`] says which part of its start failed and why.

use crate::backend::{BackendError, Problem};
use crate::build::BuildError;
use crate::layout::Layout;
use crate::probe::ProbeFailure;
use crate::supervisor::{self, record::ExitInfo};

/// Why an engine command failed; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A service name that is not in the stack (exit 2).
    #[error(transparent)]
    Unknown(#[from] crate::spec::UnknownService),
    /// Preflight found problems; nothing was started (exit 4).
    #[error("preflight failed, nothing was started:\n{}", render_problems(.0))]
    Preflight(Vec<Problem>),
    /// A service did not become healthy or its init failed (exit 5).
    #[error("{}", render_unhealthy(.0))]
    Unhealthy(Vec<Unhealthy>),
    /// Another backend failure (exit 1).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The state dir could not be used (exit 1).
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// A component's build inputs could not be read (exit 1).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Ctrl-C (exit 130).
    #[error("interrupted: stopped what this command had started")]
    Interrupted,
}

/// One service that failed to come up.
#[derive(Debug)]
pub struct Unhealthy {
    /// Service.
    pub service: String,
    /// What went wrong.
    pub reason: StartError,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
    /// Where the full log is.
    pub log_path: String,
}

/// How many of its last log lines a service that did not come up shows.
const LOG_TAIL_LINES: usize = 15;

impl Unhealthy {
    /// `service` did not come up because of `reason`; with the end of its log, or of its
    /// build's output when the build failed.
    pub fn new(layout: &Layout, service: &str, reason: StartError) -> Unhealthy {
        let (path, log_tail) = match &reason {
            StartError::Build(
                BuildError::Failed { log, .. } | BuildError::SharedFailed { log, .. },
            ) => (log.clone(), crate::build::tail(log, LOG_TAIL_LINES)),
            _ => {
                let path = layout.log_file(service);
                let tail = supervisor::log::tail(&path, LOG_TAIL_LINES);
                (path, tail)
            }
        };
        Unhealthy {
            service: service.to_string(),
            reason,
            log_tail,
            log_path: path.display().to_string(),
        }
    }
}

/// Why one service's start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The backend could not stop, prepare or start it, or one of its init steps failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Its healthcheck did not pass in time, or it exited while being probed.
    #[error(transparent)]
    Probe(#[from] ProbeFailure),
    /// Its build failed (the instance already running, if any, keeps running).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// It exited while an `after_start` step was being retried against it.
    #[error("{exited} during init step `{step}`; {cause}")]
    ExitedDuringStep {
        /// How it exited.
        exited: Exited,
        /// The step being retried.
        step: String,
        /// The step's last failure.
        #[source]
        cause: BackendError,
    },
    /// A one-shot task ended without success.
    #[error("the task failed ({})", describe(.last_exit))]
    TaskFailed {
        /// How its process ended.
        last_exit: Option<ExitInfo>,
    },
    /// A task of `up` panicked or was cancelled: a bug, not the service's fault. What it had
    /// started keeps running and a new `up` picks it up.
    #[error(
        "internal task failure ({0}): a bug in stack, please report it; run `stack up` again to \
         resume, or `stack down` to stop what was started"
    )]
    Internal(#[source] tokio::task::JoinError),
}

/// A service's process has exited for good.
#[derive(Debug, thiserror::Error)]
#[error("it exited ({})", describe(.last_exit))]
pub struct Exited {
    /// How it ended, when known.
    pub last_exit: Option<ExitInfo>,
}

impl Exited {
    /// How it ended, e.g. `exit 1`.
    pub fn status(&self) -> String {
        describe(&self.last_exit)
    }
}

/// How a process ended, for a message.
fn describe(last_exit: &Option<ExitInfo>) -> String {
    last_exit
        .as_ref()
        .map_or_else(|| "no status".into(), |e| e.describe())
}

fn render_problems(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| format!("  - {}: {}\n    fix: {}", p.service, p.message, p.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_unhealthy(us: &[Unhealthy]) -> String {
    us.iter()
        .map(|u| {
            let mut s = format!("`{}` did not become ready: {}", u.service, u.reason);
            if !u.log_tail.is_empty() {
                s.push_str(&format!("\n  last log lines ({}):", u.log_path));
                for l in &u.log_tail {
                    s.push_str(&format!("\n    {l}"));
                }
            }
            s.push_str(&format!("\n  see `stack logs {}`", u.service));
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
}
