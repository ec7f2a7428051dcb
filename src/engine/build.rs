//! Builds ahead of a restart (`restart --build`, a change under `up --watch`): every build runs
//! before anything is stopped, so a failed one leaves the running instance serving.

use std::collections::BTreeSet;

use super::error::{EngineError, StartError, Unhealthy};
use super::tasks::ServiceTasks;
use super::Engine;

impl Engine {
    /// Builds the components among `names` (all components when empty), side by side. Returns
    /// the slowest build's seconds; fails, building on, with every build that failed (exit 5).
    pub async fn build(&self, names: &[String]) -> Result<f64, EngineError> {
        self.stack.check_names(names)?;
        let wanted: BTreeSet<&String> = self
            .stack
            .services
            .values()
            .filter(|s| s.build.is_some() && (names.is_empty() || names.contains(&s.name)))
            .map(|s| &s.name)
            .collect();
        let mut builds = ServiceTasks::new();
        // The same build for two components runs once.
        let batch = std::sync::Arc::new(crate::build::Batch::default());
        for name in wanted {
            let svc = self.stack.services[name].clone();
            let (layout, root) = (self.layout.clone(), self.stack.root.clone());
            let batch = std::sync::Arc::clone(&batch);
            self.progress.phase(name, "building");
            builds.spawn(name, async move { batch.run(&layout, &root, &svc).await });
        }
        let mut slowest = 0f64;
        let mut failures = Vec::new();
        while let Some((name, joined)) = builds.join_next().await {
            match joined {
                Ok(Ok(took)) => {
                    slowest = slowest.max(took.as_secs_f64());
                    self.progress
                        .done(&name, &format!("built in {:.2}s", took.as_secs_f64()));
                }
                Ok(Err(e)) => {
                    self.progress.failed(&name, "build failed");
                    failures.push(Unhealthy::new(&self.layout, &name, StartError::Build(e)));
                }
                // A build task does not panic; if one ever did, say so under its service.
                Err(e) => {
                    failures.push(Unhealthy::new(&self.layout, &name, StartError::Internal(e)))
                }
            }
        }
        if failures.is_empty() {
            Ok(slowest)
        } else {
            failures.sort_by(|a, b| a.service.cmp(&b.service));
            Err(EngineError::Unhealthy(failures))
        }
    }
}
