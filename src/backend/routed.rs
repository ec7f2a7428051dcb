//! `backend: auto` (and `microvm`, which still runs image-less services natively): sends each
//! service to the backend that runs it. A service with an `image:` runs as a box when a microVM
//! backend is present (the boot probe passed); everything else runs as a process. Both write
//! the same supervisor record, which names its backend, so a running instance is always
//! stopped by the backend that started it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::{Backend, BackendError, BackendKind, Instance, Priority, Problem};
use crate::layout::Layout;
use crate::probe::ProbeError;
use crate::spec::{BackendChoice, InitStep, ServiceSpec};
use crate::supervisor::record::{read_json, Record};

/// Routes each service to the process or the microVM backend.
pub struct Routed {
    layout: Layout,
    process: Arc<dyn Backend>,
    microvm: Option<Arc<dyn Backend>>,
}

impl Routed {
    /// Routes between `process` and, when this host can boot boxes, `microvm`.
    pub fn new(
        layout: Layout,
        process: Arc<dyn Backend>,
        microvm: Option<Arc<dyn Backend>>,
    ) -> Routed {
        Routed {
            layout,
            process,
            microvm,
        }
    }

    /// The backend that runs `svc`: the one its running instance was started by, else a box
    /// for an image when boxes can run, else a process.
    fn pick(&self, svc: &ServiceSpec) -> &Arc<dyn Backend> {
        let Some(m) = &self.microvm else {
            // No boxes here: everything is a process. (A box left running from an earlier
            // boot is still stopped through its record, which both backends share.)
            return &self.process;
        };
        self.by_record(&svc.name).unwrap_or(if svc.image.is_some() {
            m
        } else {
            &self.process
        })
    }

    fn by_record(&self, name: &str) -> Option<&Arc<dyn Backend>> {
        let rec: Record = read_json(&self.layout.record(name)).ok().flatten()?;
        let live = rec.supervisor.is_alive() || rec.process.as_ref().is_some_and(|p| p.is_alive());
        if !live {
            return None;
        }
        if rec.backend == BackendKind::Microvm {
            self.microvm.as_ref()
        } else {
            Some(&self.process)
        }
    }
}

#[async_trait]
impl Backend for Routed {
    fn name(&self) -> BackendChoice {
        BackendChoice::Auto
    }

    fn backend_for(&self, svc: &ServiceSpec) -> BackendKind {
        self.pick(svc).backend_for(svc)
    }

    async fn exec(&self, svc: &ServiceSpec, argv: &[String]) -> Result<(), ProbeError> {
        self.pick(svc).exec(svc, argv).await
    }

    fn preflight(&self, svc: &ServiceSpec) -> Vec<Problem> {
        self.pick(svc).preflight(svc)
    }

    fn inspect(&self, svc: &ServiceSpec) -> Instance {
        self.pick(svc).inspect(svc)
    }

    async fn prepare(&self, svc: &ServiceSpec) -> Result<(), BackendError> {
        self.pick(svc).prepare(svc).await
    }

    async fn start(&self, svc: &ServiceSpec, priority: Priority) -> Result<Instance, BackendError> {
        self.pick(svc).start(svc, priority).await
    }

    fn settle(&self, svc: &ServiceSpec) {
        self.pick(svc).settle(svc)
    }

    async fn run_step(
        &self,
        svc: &ServiceSpec,
        step: &InitStep,
        priority: Priority,
    ) -> Result<Duration, BackendError> {
        self.pick(svc).run_step(svc, step, priority).await
    }

    async fn program(&self, svc: &ServiceSpec) -> Option<String> {
        self.pick(svc).program(svc).await
    }

    fn program_key(&self, svc: &ServiceSpec) -> Option<String> {
        self.pick(svc).program_key(svc)
    }

    async fn wait_change(&self, svc: &ServiceSpec, timeout: Duration) {
        self.pick(svc).wait_change(svc, timeout).await
    }

    async fn stop(&self, svc: &str) -> Result<bool, BackendError> {
        self.by_record(svc).unwrap_or(&self.process).stop(svc).await
    }

    fn kill(&self, svc: &str) {
        self.by_record(svc).unwrap_or(&self.process).kill(svc)
    }
}
