//! The stack definition: `stack.yaml` plus `services/*.yaml`, loaded, interpolated and validated
//! into typed values. Every problem is reported at once, each with file, line and key path.

pub mod interp;
mod load;
mod yaml;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use interp::Vars;
pub use load::{find_stack_file, LoadOptions};

/// Which backend runs the stack's services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Native processes (the default that works everywhere).
    Process,
    /// BoxLite microVMs.
    Microvm,
    /// MicroVMs where a boot probe passes, processes otherwise.
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "process" => Ok(Self::Process),
            "microvm" => Ok(Self::Microvm),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "unknown backend `{other}`: use `process`, `microvm` or `auto`"
            )),
        }
    }
}

impl BackendChoice {
    /// The name used in stack files, records and `status` (a backend's `name()`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Microvm => "microvm",
            Self::Auto => "auto",
        }
    }
}

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

/// The native-process part of a service.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// argv; never a shell string.
    pub command: Vec<String>,
    /// Signal that asks for a clean stop (SIGTERM by default; PostgreSQL wants SIGINT).
    pub stop_signal: Signal,
    /// How long to wait after `stop_signal` before SIGKILL.
    pub stop_grace_period: Duration,
    /// Unprivileged user to run as when `stack` runs as root.
    pub user: Option<String>,
    /// Working directory (the project root by default).
    pub working_dir: PathBuf,
    /// What to tell a user whose machine lacks the program.
    pub install_hint: Option<String>,
    /// A command printing the program's version, for `status` (e.g. `[garage, --version]`).
    pub version: Option<Vec<String>>,
}

/// MicroVM options (`box:`).
#[derive(Debug, Clone, Default)]
pub struct BoxSpec {
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// Entrypoint override.
    pub entrypoint: Vec<String>,
    /// Command override.
    pub command: Vec<String>,
    /// Working directory inside the box.
    pub working_dir: Option<String>,
    /// `host_dir:guest_dir` volumes; host dirs relative to the data dir.
    pub volumes: Vec<(PathBuf, String)>,
    /// Guest port per named host port.
    pub guest_ports: BTreeMap<String, u16>,
    /// Environment only the box gets (merged over `environment:`).
    pub environment: BTreeMap<String, String>,
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

/// A readiness probe and its timing.
#[derive(Debug, Clone)]
pub struct Healthcheck {
    /// What to check.
    pub probe: ProbeSpec,
    /// Pause between attempts once the first fast polls are over.
    pub interval: Duration,
    /// Deadline of one attempt.
    pub timeout: Duration,
    /// Failures during this initial period do not count against `retries`.
    pub start_period: Duration,
    /// Failed attempts allowed before the service counts as unhealthy.
    pub retries: u32,
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeSpec {
    /// A TCP connect.
    Tcp {
        /// Host to connect to.
        host: String,
        /// Port.
        port: u16,
    },
    /// An HTTP GET answered with an accepted status.
    Http {
        /// URL.
        url: String,
        /// Accepted statuses (2xx and 3xx when empty).
        status: Vec<u16>,
    },
    /// A command that must exit 0.
    Exec(Vec<String>),
    /// A real PostgreSQL connection running `SELECT 1`.
    Postgres {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// Role.
        user: String,
        /// Password, if any.
        password: Option<String>,
        /// Database.
        database: String,
    },
    /// Redis `PING` answered by `PONG`.
    Redis {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A signed S3 `ListBuckets` with the stack's key.
    S3 {
        /// Endpoint URL, e.g. `http://127.0.0.1:29000`.
        endpoint: String,
        /// Region the server signs with.
        region: String,
        /// Access key id.
        access_key: String,
        /// Secret access key.
        secret_key: String,
    },
    /// The OIDC discovery document answers 200 and names this issuer.
    Oidc {
        /// The issuer URL.
        issuer: String,
    },
}

impl ProbeSpec {
    /// Short name of the probe kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp { .. } => "tcp",
            Self::Http { .. } => "http",
            Self::Exec(_) => "exec",
            Self::Postgres { .. } => "postgres",
            Self::Redis { .. } => "redis",
            Self::S3 { .. } => "s3",
            Self::Oidc { .. } => "oidc",
        }
    }
}

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

/// A file rendered from a template in the project (`configs:`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The template.
    pub source: PathBuf,
    /// Where it is written (absolute; usually under `${data_dir}`).
    pub target: PathBuf,
    /// The rendered text, `${secret.NAME}` references still in place.
    pub content: String,
    /// File mode.
    pub mode: u32,
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
