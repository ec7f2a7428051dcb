//! The start of one service within `up`: wait for its dependencies' conditions, launch it in
//! its turn, wait until it is healthy (or, for a one-shot task, completed), run its init steps
//! and record what the start cost. The result is an [`Outcome`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, Instance, Priority};
use crate::layout::Layout;
use crate::probe;
use crate::progress::Progress;
use crate::spec::{Condition, InitPhase, ServiceSpec};
use crate::supervisor::record::{now_rfc3339, read_json, write_json, Readiness, State};

use super::action::Action;
use super::cost::{first_start, next_warm_estimate};
use super::error::{Exited, StartError, Unhealthy};
use super::schedule::Launch;

/// How long a one-shot task is waited for before its state is read again. The backend returns
/// as soon as the task's supervisor exits (having written the final record); this only bounds
/// how long a change it cannot see goes unnoticed.
const TASK_RECHECK_EVERY: Duration = Duration::from_secs(1);

/// How far a service has come, as its dependents see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reached {
    /// Not started yet.
    Pending,
    /// Spawned: enough for a `service_started` dependent.
    Started,
    /// Healthy, completed (a task), or kept as it was.
    Ready,
    /// Will not get ready: it failed, or was skipped for a failed dependency.
    Failed,
}

/// A dependency a service waits for.
pub(super) struct Dependency {
    /// The service depended on.
    pub(super) name: String,
    /// What it must have reached.
    pub(super) condition: Condition,
    /// How far it has come.
    pub(super) reached: watch::Receiver<Reached>,
}

/// How one service's part of `up` ended.
#[derive(Debug)]
pub(super) enum Outcome {
    /// It was up and ready: left alone.
    Kept,
    /// It is ready now: started by this `up`, or found running and seen ready (`up` reports as
    /// started only what its launches started: `ServiceRun::started`).
    Started,
    /// Not attempted because this dependency failed (that failure is reported on its own).
    Skipped {
        /// The dependency that failed.
        failed_dependency: String,
    },
    /// It did not become ready.
    Failed(Box<Unhealthy>),
}

/// What one service's task needs.
pub(super) struct ServiceRun {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) progress: Arc<Progress>,
    pub(super) layout: Layout,
    /// What this `up` started, in the order their launches returned.
    pub(super) started: Arc<Mutex<Vec<String>>>,
    /// The launches in flight: an interrupted `up` waits for them before it stops `started`.
    pub(super) launches: TaskTracker,
    /// The priority it starts at, given back once it is ready.
    pub(super) priority: Priority,
    /// When it may be launched.
    pub(super) launch: Launch,
    /// Build it before it is launched (its inputs changed, or `restart --build`).
    pub(super) build: bool,
    /// The builds of this `up`: the same build for two components runs once.
    pub(super) builds: Arc<crate::build::Batch>,
    /// The project root its build runs in.
    pub(super) root: std::path::PathBuf,
}

impl ServiceRun {
    /// Brings `svc` up as `action` says, once its dependencies allow, and tells its dependents
    /// through `tx` when it has started and how it ended.
    pub(super) async fn bring_up(
        &self,
        svc: &ServiceSpec,
        action: Action,
        deps: Vec<Dependency>,
        tx: &watch::Sender<Reached>,
    ) -> Outcome {
        let name = &svc.name;
        // A build needs none of the dependencies: it runs while they start.
        let (waited, built) = tokio::join!(self.wait_for(name, deps), self.build(svc));
        let outcome = match (waited, built) {
            (_, Err(e)) => Outcome::Failed(Box::new(self.unhealthy(name, e.into()))),
            (Some(failed_dependency), _) => Outcome::Skipped { failed_dependency },
            (None, Ok(())) if action == Action::Keep => {
                self.progress.done(name, "already running");
                Outcome::Kept
            }
            (None, Ok(())) => match self.start(svc, action, tx).await {
                Ok(()) => Outcome::Started,
                Err(reason) => Outcome::Failed(Box::new(self.unhealthy(name, reason))),
            },
        };
        let reached = match &outcome {
            Outcome::Kept | Outcome::Started => Reached::Ready,
            Outcome::Skipped { failed_dependency } => {
                self.progress
                    .failed(name, &format!("not started: {failed_dependency} failed"));
                Reached::Failed
            }
            // Reported with the others once every task has ended.
            Outcome::Failed(_) => Reached::Failed,
        };
        let _ = tx.send(reached);
        outcome
    }

    /// Builds `svc` when this `up` must (see [`ServiceRun::build`]).
    async fn build(&self, svc: &ServiceSpec) -> Result<(), crate::build::BuildError> {
        if !self.build {
            return Ok(());
        }
        self.progress.phase(&svc.name, "building");
        let took = self.builds.run(&self.layout, &self.root, svc).await?;
        self.progress.note(&format!(
            "built `{}` in {:.2}s",
            svc.name,
            took.as_secs_f64()
        ));
        Ok(())
    }

    /// Waits until every dependency has reached what its condition requires; returns the first
    /// one that failed instead.
    async fn wait_for(&self, name: &str, deps: Vec<Dependency>) -> Option<String> {
        for mut dep in deps {
            if *dep.reached.borrow() != Reached::Ready {
                self.progress.phase(
                    name,
                    &format!("waiting on {} ({})", dep.name, dep.condition),
                );
            }
            let need_started = dep.condition == Condition::ServiceStarted;
            let r = dep
                .reached
                .wait_for(|r| match r {
                    Reached::Started => need_started,
                    Reached::Ready | Reached::Failed => true,
                    Reached::Pending => false,
                })
                .await
                .map(|r| *r)
                // Its task is gone without a word (it panicked): it will not get ready.
                .unwrap_or(Reached::Failed);
            if r == Reached::Failed {
                return Some(dep.name);
            }
        }
        None
    }

    /// Starts (or, for [`Action::Verify`], only checks) `svc` until it is ready, then records
    /// what the start cost in its readiness file.
    async fn start(
        &self,
        svc: &ServiceSpec,
        action: Action,
        tx: &watch::Sender<Reached>,
    ) -> Result<(), StartError> {
        let name = &svc.name;
        let t0 = Instant::now();
        // What the last start learned: the program's version, kept while the binary is the same.
        let previous: Option<Readiness> = read_json(&self.layout.readiness(name)).ok().flatten();
        let mut init_ms = 0u64;
        let mut spawned_ms = 0u64;
        let mut before_ms = 0u64;
        let mut program = previous.as_ref().and_then(|r| r.program.clone());
        let mut program_key = previous.as_ref().and_then(|r| r.program_key.clone());
        let mut version = None;
        let first = first_start(svc);
        if action.launches() {
            before_ms = self.launch(svc, action, first).await?;
            init_ms += before_ms;
            spawned_ms = t0.elapsed().as_millis() as u64;
            // Ask the program's version while the service comes up, for `status`, unless the
            // same binary was asked before (a warm start spawns nothing it does not need).
            let key = self.backend.program_key(svc);
            if program.is_none() || key != program_key {
                let (backend, spec) = (Arc::clone(&self.backend), svc.clone());
                version = Some(tokio::spawn(async move { backend.program(&spec).await }));
                program_key = key;
            }
            let _ = tx.send(Reached::Started);
            init_ms += self.run_steps(svc, InitPhase::AfterStart).await?;
        } else {
            let _ = tx.send(Reached::Started);
        }
        let kind = self.wait_until_ready(svc).await?;
        init_ms += self.run_steps(svc, InitPhase::AfterHealthy).await?;
        if self.priority != Priority::Normal {
            self.backend.settle(svc);
        }
        let ready_ms = t0.elapsed().as_millis() as u64;
        let inst = self.backend.inspect(svc);
        if let Some(task) = version {
            program = task.await.ok().flatten();
        }
        let readiness = Readiness {
            id: inst.id.clone(),
            pid: inst.pid,
            spawned_ms,
            ready_ms,
            init_ms,
            before_ms,
            warm_ms: if first || spawned_ms == 0 {
                previous.as_ref().and_then(|r| r.warm_ms)
            } else {
                next_warm_estimate(
                    previous.as_ref().and_then(|r| r.warm_ms),
                    ready_ms,
                    self.priority == Priority::Background,
                )
            },
            at: now_rfc3339(),
            program,
            program_key,
        };
        let _ = write_json(&self.layout.readiness(name), &readiness);
        self.progress
            .done(name, &format!("{kind} in {:.2}s", ready_ms as f64 / 1000.0));
        Ok(())
    }

    /// Launches `svc` in its turn: stops the instance it replaces, prepares its files, runs its
    /// `before_start` steps and spawns it. Returns the milliseconds its steps took.
    async fn launch(
        &self,
        svc: &ServiceSpec,
        action: Action,
        first: bool,
    ) -> Result<u64, StartError> {
        let name = &svc.name;
        self.launch.turn().await;
        if action.replaces() {
            self.progress.phase(name, "stopping the outdated instance");
            self.backend.stop(name).await?;
        }
        self.backend.prepare(svc).await?;
        if first {
            // Its first-start steps (initdb) take long: the others need not wait for them.
            self.launch.launched();
        }
        let before_ms = self.run_steps(svc, InitPhase::BeforeStart).await?;
        self.progress.phase(name, "starting");
        self.start_detached(svc).await?;
        self.launch.launched();
        Ok(before_ms)
    }

    /// Starts `svc` in a task of its own that runs to its end even if this one is aborted (an
    /// interrupted `up`), and that records the service as started by this `up` once it is.
    async fn start_detached(&self, svc: &ServiceSpec) -> Result<Instance, StartError> {
        let (backend, spec) = (Arc::clone(&self.backend), svc.clone());
        let (started, priority) = (Arc::clone(&self.started), self.priority);
        let instance = self
            .launches
            .spawn(async move {
                let r = backend.start(&spec, priority).await;
                if r.is_ok() {
                    if let Ok(mut s) = started.lock() {
                        s.push(spec.name.clone());
                    }
                }
                r
            })
            .await
            .map_err(StartError::Internal)??;
        Ok(instance)
    }

    /// Waits until `svc` counts as ready: a one-shot task completed, a service with a
    /// healthcheck healthy, any other running. Returns which, for the progress line.
    async fn wait_until_ready(&self, svc: &ServiceSpec) -> Result<&'static str, StartError> {
        let name = &svc.name;
        if svc.is_task() {
            self.progress.phase(name, "running to completion");
            self.wait_completed(svc).await?;
            return Ok("completed");
        }
        let Some(hc) = &svc.healthcheck else {
            return Ok("running");
        };
        self.progress
            .phase(name, &format!("probing ({})", hc.probe.kind()));
        let backend = Arc::clone(&self.backend);
        let spec = svc.clone();
        let exec = |argv: Vec<String>| {
            let (backend, spec) = (Arc::clone(&self.backend), svc.clone());
            async move { backend.exec(&spec, &argv).await }
        };
        let alive = move || {
            exited(backend.as_ref(), &spec)
                .map_err(|e| probe::StopReason::Exited { status: e.status() })
        };
        probe::wait_ready(hc, alive, exec).await?;
        Ok("healthy")
    }

    /// Waits until the one-shot task `svc` has ended, and fails unless it completed.
    async fn wait_completed(&self, svc: &ServiceSpec) -> Result<(), StartError> {
        loop {
            let inst = self.backend.inspect(svc);
            match inst.state {
                State::Completed => return Ok(()),
                State::Failed | State::Exited | State::Stopped => {
                    return Err(StartError::TaskFailed {
                        last_exit: inst.last_exit,
                    })
                }
                _ => {}
            }
            self.backend.wait_change(svc, TASK_RECHECK_EVERY).await;
        }
    }

    /// `svc` did not come up because of `reason`.
    fn unhealthy(&self, svc: &str, reason: StartError) -> Unhealthy {
        Unhealthy::new(&self.layout, svc, reason)
    }
}

/// `Err` with the exit status when the service's process has exited for good.
pub(super) fn exited(backend: &dyn Backend, svc: &ServiceSpec) -> Result<(), Exited> {
    let inst = backend.inspect(svc);
    match inst.state {
        State::Failed | State::Exited | State::Stopped if !inst.alive => Err(Exited {
            last_exit: inst.last_exit,
        }),
        _ => Ok(()),
    }
}
