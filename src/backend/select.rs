//! Which backend runs a stack: `process`, `microvm` or `auto` (design.md section 2). `auto`
//! runs services with an `image:` as boxes only where the microVM boot probe passed, and says
//! once which it chose and why.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::process::ProcessBackend;
use super::routed::Routed;
use super::Backend;
use crate::layout::Layout;
use crate::spec::{BackendChoice, Stack};

/// The chosen backend and what to tell the user about the choice.
pub struct Selected {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Why `auto` chose what it chose (said once by commands that start services).
    pub note: Option<String>,
    /// What the boot probe said (for `doctor`).
    pub boxes: Boxes,
}

/// The microVM boot probe's answer (see `backend::microvm::bootprobe`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BootVerdict {
    /// A box booted and ran a command.
    pub ok: bool,
    /// Why not, in plain words (empty when ok).
    pub reason: String,
    /// What to do about it on this host; empty when ok, or when there is nothing to fix (no
    /// hardware KVM: processes serve everything).
    pub fix: String,
    /// How long the probe took.
    pub elapsed_ms: u64,
    /// The host boot it applies to.
    pub boot_id: String,
    /// The BoxLite version probed.
    pub boxlite: String,
    /// When it was measured (RFC 3339).
    pub at: String,
    /// Read from the cache rather than measured now.
    #[serde(skip)]
    pub cached: bool,
}

/// What is known about running boxes here.
#[derive(Debug, Clone)]
pub enum Boxes {
    /// This build has no microVM backend.
    NotBuilt,
    /// The stack has no service with an `image:`, so nothing was asked.
    NoImages,
    /// Not asked (a command that starts nothing found no cached verdict).
    Unknown,
    /// The boot probe's verdict.
    Probed(BootVerdict),
}

/// Why the backend asked for cannot run here: `--backend microvm` where no box can boot.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the microvm backend cannot run here: {reason}\n  fix: {fix}")]
pub struct Refusal {
    /// Why.
    pub reason: String,
    /// What to do.
    pub fix: String,
}

/// Picks the backend for `choice`. `may_probe`: the command starts services, so it may pay for
/// a boot probe (once per host boot; later calls read the cached verdict).
pub async fn select(
    stack: &Stack,
    layout: &Layout,
    choice: BackendChoice,
    may_probe: bool,
) -> Result<Selected, Refusal> {
    let process: Arc<dyn Backend> = Arc::new(ProcessBackend::new(layout.clone()));
    if choice == BackendChoice::Process {
        return Ok(Selected {
            backend: process,
            note: None,
            boxes: Boxes::Unknown,
        });
    }
    let boxes = if stack.services.values().any(|s| s.image.is_some()) {
        boxes(layout, may_probe || choice == BackendChoice::Microvm).await
    } else {
        Boxes::NoImages
    };
    let microvm = match &boxes {
        Boxes::Probed(v) if v.ok => microvm_backend(stack, layout),
        _ => None,
    };
    let routed =
        |m| -> Arc<dyn Backend> { Arc::new(Routed::new(layout.clone(), Arc::clone(&process), m)) };
    let (backend, note) = match (choice, &boxes) {
        (BackendChoice::Microvm, Boxes::NotBuilt) => {
            return Err(Refusal {
                reason: "this binary was built without it".into(),
                fix: "rebuild with `--features microvm` (see docs/microvm.md), or use `--backend process`".into(),
            })
        }
        (BackendChoice::Microvm, Boxes::Probed(v)) if !v.ok => {
            let on_host = if v.fix.is_empty() {
                String::new()
            } else {
                format!("{}; or ", v.fix)
            };
            return Err(Refusal {
                reason: v.reason.clone(),
                fix: format!("{on_host}use `--backend auto` (boxes where they boot, processes elsewhere) or `--backend process`"),
            });
        }
        (BackendChoice::Microvm, _) => (routed(microvm), None),
        (_, Boxes::Probed(v)) if v.ok => (
            routed(microvm),
            Some("backend auto: services with an image run as microVMs (the boot probe passed); the rest as processes".into()),
        ),
        (_, Boxes::Probed(v)) => (
            routed(None),
            Some(format!("backend auto: using process: {}", v.reason)),
        ),
        (_, Boxes::NotBuilt) => (
            routed(None),
            Some("backend auto: using process (this build has no microVM support; see `stack doctor`)".into()),
        ),
        (_, Boxes::NoImages | Boxes::Unknown) => (routed(None), None),
    };
    Ok(Selected {
        backend,
        note,
        boxes,
    })
}

#[cfg(feature = "microvm")]
async fn boxes(layout: &Layout, may_probe: bool) -> Boxes {
    use super::microvm::bootprobe;
    if may_probe {
        Boxes::Probed(bootprobe::verdict_for_boot(layout).await)
    } else {
        bootprobe::cached(layout).map_or(Boxes::Unknown, Boxes::Probed)
    }
}

#[cfg(not(feature = "microvm"))]
async fn boxes(_layout: &Layout, _may_probe: bool) -> Boxes {
    Boxes::NotBuilt
}

#[cfg(feature = "microvm")]
fn microvm_backend(stack: &Stack, layout: &Layout) -> Option<Arc<dyn Backend>> {
    Some(Arc::new(super::microvm::MicrovmBackend::new(
        layout.clone(),
        &stack.name,
        stack.root.clone(),
    )))
}

#[cfg(not(feature = "microvm"))]
fn microvm_backend(_stack: &Stack, _layout: &Layout) -> Option<Arc<dyn Backend>> {
    None
}
