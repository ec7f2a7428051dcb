//! The stack definition: `stack.yaml` plus `services/*.yaml`, loaded, interpolated and validated
//! into typed values. Every problem is reported at once, each with file, line and key path.
//!
//! `load` reads and assembles: `discover` finds and parses the files, `stack_file` reads
//! `stack.yaml`, `service` one service file (with `process`, `boxed`, `health`, `init` and
//! `config` for its sections), `checks` runs the checks across services. Every section's keys
//! are a table of `checker::Key`s, so a key is named once; defaults live in [`defaults`].

mod backend_choice;
mod boxed;
pub mod build;
mod checker;
mod checks;
mod config;
pub mod defaults;
mod discover;
mod health;
mod init;
pub mod interp;
mod load;
mod process;
mod service;
mod shared;
mod stack_file;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

pub use backend_choice::{BackendChoice, UnknownBackend};
pub use boxed::BoxSpec;
pub use build::BuildSpec;
pub use config::ConfigFile;
pub use discover::find_stack_file;
pub use health::{Healthcheck, ProbeSpec};
pub use init::{InitPhase, InitStep};
pub use interp::{InterpError, Vars};
pub use load::LoadOptions;
pub use process::{Orphans, ProcessSpec};

/// A whole, validated stack definition.
#[derive(Debug, Clone)]
pub struct Stack {
    /// Project name (`name:` in stack.yaml, or the directory's name).
    pub name: String,
    /// The backend stack.yaml asks for.
    pub backend: BackendChoice,
    /// The directory holding stack.yaml; commands run from here.
    pub root: PathBuf,
    /// The stack.yaml path.
    pub file: PathBuf,
    /// The state directory every runtime file lives under.
    pub state_dir: PathBuf,
    /// Services by name.
    pub services: BTreeMap<String, ServiceSpec>,
}

impl Stack {
    /// Loads and validates a stack; see [`LoadOptions`].
    pub fn load(opts: &LoadOptions) -> Result<Stack, SpecErrors> {
        load::load(opts)
    }

    /// The service called `name`, or an error listing the valid names.
    pub fn service(&self, name: &str) -> Result<&ServiceSpec, UnknownService> {
        self.services.get(name).ok_or_else(|| UnknownService {
            name: name.to_string(),
            known: self.services.keys().cloned().collect(),
        })
    }

    /// Checks that every name is a service of this stack.
    pub fn check_names(&self, names: &[String]) -> Result<(), UnknownService> {
        for n in names {
            self.service(n)?;
        }
        Ok(())
    }
}

/// A service name that is not in the stack.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no service named `{name}` in this stack: valid names are {}", .known.join(", "))]
pub struct UnknownService {
    /// The name asked for.
    pub name: String,
    /// The stack's service names.
    pub known: Vec<String>,
}

/// One service, with every `${...}` already expanded.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Service name (file stem unless `name:` says otherwise).
    pub name: String,
    /// The file that defines it.
    pub file: PathBuf,
    /// A one-line description for `status` and `doctor`.
    pub description: Option<String>,
    /// Named host ports.
    pub ports: BTreeMap<String, u16>,
    /// Extra environment for the service.
    pub environment: BTreeMap<String, String>,
    /// Dependencies and the condition each must reach first.
    pub depends_on: BTreeMap<String, Condition>,
    /// How to run it natively.
    pub process: Option<ProcessSpec>,
    /// The OCI image for the microVM backend.
    pub image: Option<String>,
    /// MicroVM options.
    pub boxed: Option<BoxSpec>,
    /// Readiness probe.
    pub healthcheck: Option<Healthcheck>,
    /// What to do when it exits on its own.
    pub restart: RestartPolicy,
    /// Idempotent initialisation steps.
    pub init: Vec<InitStep>,
    /// Files rendered from templates before each start.
    pub configs: Vec<ConfigFile>,
    /// Connection details printed by `stack env` (secrets still as `${secret.NAME}`).
    pub exports: BTreeMap<String, String>,
    /// This service's data directory (`${data_dir}`).
    pub data_dir: PathBuf,
    /// How to build it before it starts (a native component built from source).
    pub build: Option<BuildSpec>,
    /// Globs `stack up --watch` follows: on a change it is rebuilt and restarted.
    pub watch: Vec<String>,
    /// An HTTP endpoint answering a flat JSON object (`{"sandboxes": 2}`) that `status` shows
    /// beside the service while it runs.
    pub info: Option<String>,
}

impl ServiceSpec {
    /// A one-shot task: it is expected to exit 0 and then counts as completed.
    pub fn is_task(&self) -> bool {
        self.restart == RestartPolicy::No && self.healthcheck.is_none()
    }

    /// Hash of everything whose change requires a restart (command, environment, user, ports).
    pub fn definition_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut feed = |label: &str, value: &str| {
            h.update(label.as_bytes());
            h.update([0]);
            h.update(value.as_bytes());
            h.update([0]);
        };
        if let Some(p) = &self.process {
            for a in &p.command {
                feed("arg", a);
            }
            feed("user", p.user.as_deref().unwrap_or(""));
            feed("cwd", &p.working_dir.to_string_lossy());
        }
        if let Some(i) = &self.image {
            feed("image", i);
        }
        for (k, v) in &self.environment {
            feed(k, v);
        }
        for (k, v) in &self.ports {
            feed(k, &v.to_string());
        }
        for cfg in &self.configs {
            feed(&cfg.target.to_string_lossy(), &cfg.content);
        }
        if let Some(b) = &self.boxed {
            // A box's options are fixed when it is created: any change means a new box.
            feed("box", &format!("{b:?}"));
        }
        hex::encode(&h.finalize()[..12])
    }
}

/// How a dependency must have progressed before a dependent starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Its process has been spawned.
    ServiceStarted,
    /// Its healthcheck passes.
    ServiceHealthy,
    /// It ran to completion with exit status 0.
    ServiceCompletedSuccessfully,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ServiceStarted => "started",
            Self::ServiceHealthy => "healthy",
            Self::ServiceCompletedSuccessfully => "completed",
        })
    }
}

/// When a service exits on its own, start it again?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    No,
    /// Only after a non-zero exit or a signal.
    OnFailure,
    /// Always.
    Always,
}

/// One problem in the stack definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 when the problem is not tied to a line).
    pub line: usize,
    /// Dotted key path, e.g. `healthcheck.interval`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.path.is_empty() {
            write!(f, ": `{}`", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a stack definition.
#[derive(Debug, Clone, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "the stack definition has {n} problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// Shortens `path` relative to `base` for messages.
pub(crate) fn display_path(path: &Path, base: &Path) -> PathBuf {
    path.strip_prefix(base)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}
