//! `down`, and the stop of a set of services that `down`, `restart`, `rebuild` and an
//! interrupted `up` share: dependents first, independent ones in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::graph;
use crate::progress::Progress;

use super::error::EngineError;
use super::tasks::ServiceTasks;
use super::Engine;

impl Engine {
    /// Stops `names` and everything that depends on them (all services when empty), dependents
    /// first. Data is kept.
    pub async fn down(&self, names: &[String]) -> Result<Vec<String>, EngineError> {
        self.stack.check_names(names)?;
        let _lock = self.lock()?;
        let set = graph::dependents_closure(&self.stack, names);
        let stopped = self.stop_set(&set, false).await;
        self.progress.summary(&format!(
            "{} service{} stopped",
            stopped.len(),
            if stopped.len() == 1 { "" } else { "s" }
        ));
        Ok(stopped)
    }

    /// Stops every service of `set` in reverse dependency order, in parallel where possible, and
    /// returns those that were running. When `interrupted` (a first Ctrl-C), a second Ctrl-C
    /// kills what is left at once.
    pub(super) async fn stop_set(&self, set: &BTreeSet<String>, interrupted: bool) -> Vec<String> {
        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for n in set {
            let (tx, rx) = watch::channel(false);
            senders.insert(n.clone(), tx);
            receivers.insert(n.clone(), rx);
        }
        let mut tasks = ServiceTasks::new();
        for name in set {
            // Wait for every dependent in the set to be down first.
            let waits: Vec<(String, watch::Receiver<bool>)> = self
                .stack
                .services
                .iter()
                .filter(|(other, s)| set.contains(*other) && s.depends_on.contains_key(name))
                .map(|(other, _)| (other.clone(), receivers[other].clone()))
                .collect();
            let tx = senders.remove(name).expect("one sender per service");
            let (backend, progress) = (Arc::clone(&self.backend), Arc::clone(&self.progress));
            tasks.spawn(name, stop_one(backend, progress, name.clone(), waits, tx));
        }
        let mut stopped = Vec::new();
        let second = async {
            if interrupted {
                // A first Ctrl-C brought us here; a second one kills what is left at once.
                let _ = tokio::signal::ctrl_c().await;
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::pin!(second);
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some((name, Ok(true))) => stopped.push(name),
                    Some(_) => {}
                },
                _ = &mut second => {
                    for n in set {
                        self.backend.kill(n);
                    }
                    tasks.abort_all();
                    break;
                }
            }
        }
        stopped.sort();
        stopped
    }
}

/// Stops `name` once every dependent in `waits` is down, then tells its own dependencies through
/// `tx`. True when it was running.
async fn stop_one(
    backend: Arc<dyn Backend>,
    progress: Arc<Progress>,
    name: String,
    waits: Vec<(String, watch::Receiver<bool>)>,
    tx: watch::Sender<bool>,
) -> bool {
    for (other, mut rx) in waits {
        progress.phase(&name, &format!("waiting for {other} to stop"));
        let _ = rx.wait_for(|done| *done).await;
    }
    let t0 = Instant::now();
    progress.phase(&name, "stopping");
    let r = backend.stop(&name).await;
    match &r {
        Ok(true) => progress.done(
            &name,
            &format!("stopped in {} ms", t0.elapsed().as_millis()),
        ),
        Ok(false) => progress.done(&name, "not running"),
        Err(e) => progress.failed(&name, &e.to_string()),
    }
    let _ = tx.send(true);
    matches!(r, Ok(true))
}
