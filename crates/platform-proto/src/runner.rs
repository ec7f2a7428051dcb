//! A runner's side of the control plane: how it registers, how it heartbeats, and what its
//! `GET /health` answers.

use serde::{Deserialize, Serialize};

/// `POST /api/runners/register` (runner token): who the runner is and what it can hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunnerRegistration {
    /// Unique name (`runner-a`), see [`crate::check::name`].
    pub name: String,
    /// Where the control plane and the preview proxy reach it, e.g. `http://127.0.0.1:23003`.
    pub api_url: String,
    /// CPUs it offers.
    pub cpu: u32,
    /// Memory it offers, MiB.
    pub memory_mib: u32,
    /// Disk it offers, GiB.
    pub disk_gib: u32,
    /// How many sandboxes it holds at most.
    pub capacity: u32,
}

/// `POST /api/runners/{name}/heartbeat` (runner token): the runner is alive and holds this many
/// sandboxes. The control plane answers 204, or 404 when the runner must register again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// Sandboxes the runner holds now.
    pub sandboxes: u32,
}

/// A runner's `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunnerHealth {
    /// The runner's name.
    pub name: String,
    /// Sandboxes it holds.
    pub sandboxes: u32,
    /// How many it can hold.
    pub capacity: u32,
}
