//! What `up` does with each selected service, decided from its instance (and, for one that runs,
//! its readiness file) before anything is started or stopped.

use crate::backend::Instance;
use crate::layout::Layout;
use crate::spec::ServiceSpec;
use crate::supervisor::record::{read_json, Readiness, State};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Up and ready: nothing to do.
    Keep,
    /// Running, but `up` has not seen it ready (or its after_healthy init) yet.
    Verify,
    /// Not running: start it.
    Start,
    /// Alive, but its supervisor died: its log pipes are gone with it, so it is stopped
    /// (checked by pid and start time) and started again under a new supervisor.
    Orphaned,
    /// Running with an outdated definition: stop, then start.
    Replace,
}

impl Action {
    /// What to do with `svc`, whose instance is `inst`.
    pub(super) fn decide(layout: &Layout, svc: &ServiceSpec, inst: &Instance) -> Action {
        let same = inst.hash == svc.definition_hash();
        if svc.is_task() {
            return match inst.state {
                State::Completed if same => Action::Keep,
                _ if inst.is_up() => Action::Verify,
                _ => Action::Start,
            };
        }
        if !inst.is_up() {
            return Action::Start;
        }
        if !same {
            return Action::Replace;
        }
        if !inst.supervised {
            return Action::Orphaned;
        }
        let ready: Option<Readiness> = read_json(&layout.readiness(&svc.name)).ok().flatten();
        match ready {
            Some(r) if r.id == inst.id && r.pid == inst.pid => Action::Keep,
            _ => Action::Verify,
        }
    }

    /// Does it launch a new instance (preflighted, then started)?
    pub(super) fn launches(self) -> bool {
        matches!(self, Action::Start | Action::Replace | Action::Orphaned)
    }

    /// Does it stop a running instance first? That one holds the service's ports until then.
    pub(super) fn replaces(self) -> bool {
        matches!(self, Action::Replace | Action::Orphaned)
    }
}
