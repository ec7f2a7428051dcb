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
