//! A sandbox as the control plane asks a runner to create it, and as the runner reports it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A sandbox's life cycle state, as the control plane stores it and the runners report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    /// Being created on its runner.
    Creating,
    /// Its processes run.
    Started,
    /// Created, not running.
    Stopped,
    /// Being restored from a backup or migrated to another runner (the control plane's state
    /// only: a runner never reports it).
    Restoring,
    /// Its runner failed it; see the control plane's answer or the runner's log.
    Error,
    /// Deleted: nothing of it is left on its runner.
    Destroyed,
}

impl SandboxState {
    /// The state's wire name (`started`).
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Started => "started",
            SandboxState::Stopped => "stopped",
            SandboxState::Restoring => "restoring",
            SandboxState::Error => "error",
            SandboxState::Destroyed => "destroyed",
        }
    }

    /// The state named `s`, if it is one.
    pub fn parse(s: &str) -> Option<SandboxState> {
        [
            SandboxState::Creating,
            SandboxState::Started,
            SandboxState::Stopped,
            SandboxState::Restoring,
            SandboxState::Error,
            SandboxState::Destroyed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The runner's `POST /sandboxes`: create (and start) the sandbox `id` from `image`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSandbox {
    /// The control plane's id for it (a UUID); the runner keeps it.
    pub id: String,
    /// An image reference in the stack's registry, e.g. `boxlite/base:bookworm`.
    pub image: String,
    /// CPUs.
    pub cpu: u32,
    /// Memory limit, MiB.
    pub memory_mib: u32,
    /// Environment of its processes.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A sandbox as a runner reports it (`POST /sandboxes`, `GET /sandboxes[/{id}]`, start, stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerSandbox {
    /// Its id.
    pub id: String,
    /// Its state.
    pub state: SandboxState,
    /// Its image reference (absent in start/stop answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The image's manifest digest, when the runner pulled it (`sha256:...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// The runner's `POST /sandboxes/{id}/backup`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackupRequest {
    /// How many of the sandbox's backups to keep, this one included (the runner's setting when
    /// absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
}

/// A backup a runner made: its archive, complete in S3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupMade {
    /// The sandbox.
    pub id: String,
    /// The bucket holding the archive.
    pub bucket: String,
    /// Its key: `<sandbox-id>/<timestamp>.boxlite`.
    pub key: String,
    /// `sha256:<hex>` of the whole object.
    pub sha256: String,
    /// Its size.
    pub size_bytes: u64,
    /// When the sandbox's disk was read (RFC 3339).
    pub exported_at: String,
    /// How long the sandbox was paused for it.
    #[serde(default)]
    pub paused_ms: u64,
    /// Older backups of the sandbox the runner deleted to keep the last N.
    #[serde(default)]
    pub pruned: Vec<String>,
}

/// The runner's `POST /sandboxes/restore`: install the archive at `key` as sandbox `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreRequest {
    /// The sandbox: the archive's own id, kept.
    pub id: String,
    /// The archive's key in the runner's backup bucket.
    pub key: String,
    /// Replace a sandbox with that id on the runner (refused otherwise).
    #[serde(default)]
    pub replace: bool,
    /// Start it once installed.
    pub start: bool,
}
