//! The engine's per-service tasks: a `JoinSet` that remembers which service each task runs, so
//! that a task that panicked or was cancelled is still reported under its service's name.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};

/// One task per service, joined as they end.
pub(super) struct ServiceTasks<T> {
    set: JoinSet<T>,
    names: HashMap<Id, String>,
}

impl<T: Send + 'static> ServiceTasks<T> {
    pub(super) fn new() -> Self {
        ServiceTasks {
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// Runs `task` for the service `name`.
    pub(super) fn spawn(&mut self, name: &str, task: impl Future<Output = T> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name.to_string());
    }

    /// The next task to end, with its service's name; `None` when all have ended.
    pub(super) async fn join_next(&mut self) -> Option<(String, Result<T, JoinError>)> {
        let (id, result) = match self.set.join_next_with_id().await? {
            Ok((id, value)) => (id, Ok(value)),
            Err(e) => (e.id(), Err(e)),
        };
        // A task's id is unique while it runs, and each is removed here once it has ended.
        let name = self
            .names
            .remove(&id)
            .expect("every task is spawned with its service's name");
        Some((name, result))
    }

    /// Cancels every task; each still ends through [`join_next`](Self::join_next).
    pub(super) fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::ServiceTasks;

    #[tokio::test]
    async fn a_panicked_or_cancelled_task_is_reported_under_its_service() {
        let mut tasks = ServiceTasks::new();
        tasks.spawn("postgres", async { panic!("a bug") });
        tasks.spawn("redis", async { "ready" });
        let mut ended = BTreeMap::new();
        while let Some((name, result)) = tasks.join_next().await {
            ended.insert(name, result.map_err(|e| e.is_panic()));
        }
        assert_eq!(ended["postgres"], Err(true));
        assert_eq!(ended["redis"], Ok("ready"));

        tasks.spawn("garage", std::future::pending());
        tasks.abort_all();
        let (name, result) = tasks.join_next().await.expect("one task");
        assert_eq!(name, "garage");
        assert!(result.expect_err("aborted").is_cancelled());
        assert!(tasks.join_next().await.is_none());
    }
}
