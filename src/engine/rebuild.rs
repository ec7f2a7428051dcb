//! `rebuild`: destroy one service's instance and data and start it again as on a first start,
//! with the dependents that had to stop.

use tokio_util::sync::CancellationToken;

use crate::graph;
use crate::supervisor;

use super::error::EngineError;
use super::up::UpReport;
use super::Engine;

impl Engine {
    /// Destroys `name`'s instance and data, then starts it again (its init runs as on a first
    /// start) together with the dependents that had to stop. One-shot tasks among those
    /// dependents run again, so rebuilding postgres reloads the schema and the seed.
    pub async fn rebuild(
        &self,
        name: &str,
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.stack.service(name)?;
        let set = graph::dependents_closure(&self.stack, &[name.to_string()]);
        {
            let _lock = self.lock()?;
            self.stop_set(&set, false).await;
            let svc = &self.stack.services[name];
            self.progress
                .phase(name, &format!("deleting {}", svc.data_dir.display()));
            // Its data, and a box's BoxLite home (the box and its disks) when it ran as one.
            for dir in [svc.data_dir.clone(), self.layout.box_home(name)] {
                match std::fs::remove_dir_all(&dir) {
                    Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                        return Err(supervisor::SupervisorError::Io { path: dir, source }.into())
                    }
                    _ => {}
                }
            }
            // What the engine knows of them, so they start as new: the service itself, and
            // the one-shot tasks that must run again against its fresh data.
            for n in &set {
                if n == name || self.stack.services[n].is_task() {
                    for f in [
                        self.layout.record(n),
                        self.layout.readiness(n),
                        self.layout.supervisor_spec(n),
                    ] {
                        let _ = std::fs::remove_file(f);
                    }
                }
            }
        }
        let all: Vec<String> = set.into_iter().collect();
        self.up(&all, cancel).await
    }
}
