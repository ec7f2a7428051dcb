//! The JSON the runner exchanges (docs/platform.md, "Runner HTTP API" and the control plane's
//! register and heartbeat calls), camelCase as the contract writes it. Kept in this one module so
//! it can be replaced by the shared `platform-proto` crate's types without touching the rest.
//! Requests refuse unknown fields: a misspelt option is an error, not silently ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sandbox's state as the runner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Its init runs: exec, files and ports work.
    Started,
    /// Kept (files, record) with nothing running: `start` runs it again.
    Stopped,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// The runner's name.
    pub name: String,
    /// Sandboxes it holds (started or stopped).
    pub sandboxes: usize,
    /// Most sandboxes it takes.
    pub capacity: usize,
    /// The box driver its sandboxes run on: `runc` or `microvm`.
    pub driver: String,
}

/// `POST /sandboxes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandbox {
    /// The id the control plane chose (a DNS label: it is also the hostname).
    pub id: String,
    /// `repository:tag` in the stack's registry (e.g. `boxlite/busybox:latest`).
    pub image: String,
    /// CPUs (default 1).
    #[serde(default)]
    pub cpu: Option<f64>,
    /// Memory limit in MiB (default 512).
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Environment of every process in the sandbox, over the image's.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// The control plane's labels: checked, not kept (the control plane keeps them).
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The answer to `POST /sandboxes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Created {
    /// The sandbox id.
    pub id: String,
    /// `started`.
    pub state: SandboxState,
    /// The image as asked for.
    pub image: String,
    /// The digest it resolved to in the registry.
    pub digest: String,
}

/// A sandbox in `GET /sandboxes` and `GET /sandboxes/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxInfo {
    /// The sandbox id.
    pub id: String,
    /// Its state.
    pub state: SandboxState,
    /// Its image, as asked for at create time.
    pub image: String,
}

/// The answer to `POST /sandboxes/{id}/start` and `/stop`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChanged {
    /// The sandbox id.
    pub id: String,
    /// Its state now.
    pub state: SandboxState,
}

/// `POST /sandboxes/{id}/exec`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Exec {
    /// Run by the sandbox's `/bin/sh -c`.
    pub command: String,
    /// Absolute working directory (default: the image's).
    #[serde(default)]
    pub cwd: Option<String>,
    /// Extra environment for this command.
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Seconds before the command and its children are killed (default 60).
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// The answer to an exec.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResult {
    /// The exit code (128 + signal when a signal ended it, 124 on timeout).
    pub exit_code: i32,
    /// Its standard output.
    pub result: String,
    /// Its standard error.
    pub stderr: String,
}

/// `?path=/abs` of the files calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePath {
    /// An absolute path inside the sandbox.
    pub path: String,
}

/// The answer to an upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileWritten {
    /// The path written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// `POST /sandboxes/{id}/backup`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backup {
    /// Backups of this sandbox kept, this one included (default `RUNNER_BACKUP_KEEP`), 1 to 100.
    #[serde(default)]
    pub keep: Option<usize>,
}

/// The answer to `POST /sandboxes/{id}/backup`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackedUp {
    /// The sandbox.
    pub id: String,
    /// The bucket the backup is in.
    pub bucket: String,
    /// Its key: `<id>/<timestamp>.boxlite`, sorting by time.
    pub key: String,
    /// `sha256:<hex>` of the whole object.
    pub sha256: String,
    /// The object's size.
    pub size_bytes: u64,
    /// When its disk was read (RFC 3339, UTC).
    pub exported_at: String,
    /// How long the sandbox was paused while its disk was read (0 when it was stopped, or when
    /// the runner is not root and cannot pause it).
    pub paused_ms: u64,
    /// Older backups of the sandbox deleted, past the number kept.
    pub pruned: Vec<String>,
}

/// `POST /sandboxes/restore`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Restore {
    /// The sandbox id: the archive's box id must be the same.
    pub id: String,
    /// The backup's key in the runner's backup bucket.
    pub key: String,
    /// Replace a sandbox with this id (default false: refused with 409).
    #[serde(default)]
    pub replace: bool,
    /// Start it once installed (default true).
    #[serde(default)]
    pub start: Option<bool>,
}

/// The answer to `POST /sandboxes/restore`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Restored {
    /// The sandbox id.
    pub id: String,
    /// `started`, or `stopped` when asked not to start it.
    pub state: SandboxState,
    /// Its image as the backup names it (`repository:tag`).
    pub image: String,
    /// The image's digest (the backup's, checked against the registry's).
    pub digest: String,
    /// `sha256:<hex>` of the backup object read.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
}

/// Every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong and what to do.
    pub error: String,
}

/// `POST $CONTROL_PLANE_URL/api/runners/register`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Register {
    /// The runner's name.
    pub name: String,
    /// Where the control plane reaches it (`http://127.0.0.1:<port>`).
    pub api_url: String,
    /// The host's CPUs.
    pub cpu: u32,
    /// The host's memory in MiB.
    pub memory_mib: u64,
    /// Free disk under the runner's home, in GiB.
    pub disk_gib: u64,
    /// Most sandboxes it takes.
    pub capacity: usize,
}

/// `POST $CONTROL_PLANE_URL/api/runners/{name}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    /// Sandboxes it holds.
    pub sandboxes: usize,
}
