//! `init:`: a service's idempotent initialisation steps, each with the phase it runs in and,
//! optionally, the one backend it runs on.

use std::path::{Path, PathBuf};

use super::checker::{join, key, Checker, Field, Key};
use super::defaults;
use super::BackendChoice;

/// When an init step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitPhase {
    /// Before the service's process is spawned (e.g. `initdb`).
    BeforeStart,
    /// Right after it is spawned, before its healthcheck; retried until it succeeds, since the
    /// server may still be starting (e.g. a bootstrap the healthcheck depends on).
    AfterStart,
    /// Once the service is healthy (e.g. creating a database or buckets).
    AfterHealthy,
}

/// One idempotent initialisation step.
#[derive(Debug, Clone)]
pub struct InitStep {
    /// Name shown in progress and errors.
    pub name: String,
    /// argv.
    pub command: Vec<String>,
    /// Skip the step when this path exists.
    pub creates: Option<PathBuf>,
    /// When it runs.
    pub phase: InitPhase,
    /// Only on this backend (`Process` or `Microvm`); `None` runs it on both.
    pub backend: Option<BackendChoice>,
}

impl InitStep {
    /// Does this step run on `backend` (a backend's `backend_for` the service)?
    pub fn runs_on(&self, backend: crate::backend::BackendKind) -> bool {
        self.backend.is_none_or(|b| b.as_str() == backend.as_str())
    }
}

/// The values of `when:`.
const PHASES: &[(&str, InitPhase)] = &[
    ("before_start", InitPhase::BeforeStart),
    ("after_start", InitPhase::AfterStart),
    ("after_healthy", InitPhase::AfterHealthy),
];

/// A step while its keys are read.
struct Draft {
    name: Option<String>,
    command: Option<Vec<String>>,
    creates: Option<PathBuf>,
    phase: InitPhase,
    backend: Option<BackendChoice>,
}

/// `command:`, the one required key.
const COMMAND: &str = "command";

/// The keys of one step.
const STEP_KEYS: &[Key<Draft>] = &[
    key("name", |c, at, d| d.name = c.string_at(at)),
    key(COMMAND, |c, at, d| d.command = c.argv_at(at)),
    key("creates", |c, at, d| {
        d.creates = c.string_at(at).map(|s| at.scope.root.join(s))
    }),
    key("when", |c, Field { node, path, scope }, d| {
        if let Some(phase) = c.choice(node, path, scope.vars, "phase", PHASES) {
            d.phase = phase;
        }
    }),
    key("backend", |c, Field { node, path, scope }, d| {
        match c.string(node, path, scope.vars).map(|b| b.parse()) {
            Some(Ok(BackendChoice::Auto)) => c.err(
                node.line,
                path,
                "a step runs on `process` or `microvm`; leave `backend` out to run it on both",
            ),
            Some(Ok(b)) => d.backend = Some(b),
            Some(Err(e)) => c.err(node.line, path, e.to_string()),
            None => {}
        }
    }),
];

/// Parses the step at `path` (`init[i]`); `None` (with a problem reported) without a command.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> Option<InitStep> {
    let Field { node, path, .. } = at;
    let mut d = Draft {
        name: None,
        command: None,
        creates: None,
        phase: defaults::INIT_PHASE,
        backend: None,
    };
    c.fields(at, STEP_KEYS, &mut d);
    let Some(command) = d.command else {
        c.err(
            node.line,
            &join(path, COMMAND),
            "is required: the program and its arguments as a list",
        );
        return None;
    };
    Some(InitStep {
        // Unnamed steps are shown by their program's file name.
        name: d.name.unwrap_or_else(|| {
            Path::new(&command[0])
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        }),
        command,
        creates: d.creates,
        phase: d.phase,
        backend: d.backend,
    })
}
