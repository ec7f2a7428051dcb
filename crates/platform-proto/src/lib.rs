//! The JSON the control plane and the runners exchange (docs/platform.md): camelCase fields,
//! unknown fields refused, and the checks both sides apply to what they receive.
//!
//! Types are grouped by the noun they describe: [`runner`] (registration, heartbeat, health),
//! [`sandbox`] (a sandbox as a runner holds it), [`toolbox`] (exec and files) and [`check`]
//! (validation of names, ids and paths). Every error body is an [`ErrorBody`].

#![warn(missing_docs)]

pub mod check;
pub mod runner;
pub mod sandbox;
pub mod toolbox;

pub use check::CheckError;
pub use runner::{Heartbeat, RunnerHealth, RunnerRegistration};
pub use sandbox::{
    BackupMade, BackupRequest, CreateSandbox, RestoreRequest, RunnerSandbox, SandboxState,
};
pub use toolbox::{ExecRequest, ExecResponse, FileQuery, FileWritten};

use serde::{Deserialize, Serialize};

/// The body of every error answer, from the control plane, the preview proxy and the runners:
/// `{"error": "<what is wrong and what to do>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What is wrong and, when the caller can fix it, what to do.
    pub error: String,
}
