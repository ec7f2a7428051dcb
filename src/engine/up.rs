//! `up`: decide what each selected service needs, preflight everything that will be spawned,
//! then run one task per service, in the order and at the priority the [`Schedule`] gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Problem;
use crate::graph;

use super::action::Action;
use super::error::{EngineError, StartError, Unhealthy};
use super::schedule::Schedule;
use super::start::{Dependency, Outcome, Reached, ServiceRun};
use super::tasks::ServiceTasks;
use super::Engine;

/// How `up` treats the components it builds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Builds {
    /// Build a component whose inputs changed since its last successful build.
    #[default]
    WhenChanged,
    /// Build every selected component, and restart it (`restart --build`).
    Always,
}

impl Builds {
    /// [`Builds::Always`] when `forced` (a `--build` flag), else [`Builds::WhenChanged`].
    pub fn forced(forced: bool) -> Builds {
        if forced {
            Builds::Always
        } else {
            Builds::WhenChanged
        }
    }
}

/// What `up` did.
#[derive(Debug, Default, Clone)]
pub struct UpReport {
    /// Services started (or restarted) by this call.
    pub started: Vec<String>,
    /// Services that were already up and left alone.
    pub kept: Vec<String>,
}

impl Engine {
    /// Starts `names` and their dependencies (all services when empty) and returns once every
    /// one is healthy or completed.
    pub async fn up(
        &self,
        names: &[String],
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.up_with(names, Builds::WhenChanged, cancel).await
    }

    /// [`Engine::up`], building components as `builds` says.
    pub async fn up_with(
        &self,
        names: &[String],
        builds: Builds,
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.stack.check_names(names)?;
        let _lock = self.lock()?;
        let selected = graph::closure(&self.stack, names);
        let to_build = self.to_build(&selected, names, builds)?;
        let actions = self.actions(&selected, &to_build);
        self.preflight(&actions)?;

        let mut senders: BTreeMap<String, watch::Sender<Reached>> = BTreeMap::new();
        let mut receivers: BTreeMap<String, watch::Receiver<Reached>> = BTreeMap::new();
        for n in &selected {
            let (tx, rx) = watch::channel(Reached::Pending);
            senders.insert(n.clone(), tx);
            receivers.insert(n.clone(), rx);
        }
        let schedule = Schedule::new(&self.stack, &self.layout, &selected, &actions);
        let started = Arc::new(Mutex::new(Vec::<String>::new()));
        let launches = TaskTracker::new();
        let mut tasks = ServiceTasks::new();
        let builds = Arc::new(crate::build::Batch::background());
        for name in &selected {
            let svc = self.stack.services[name].clone();
            let action = actions[name];
            let deps: Vec<Dependency> = svc
                .depends_on
                .iter()
                .filter_map(|(d, c)| {
                    receivers.get(d).map(|r| Dependency {
                        name: d.clone(),
                        condition: *c,
                        reached: r.clone(),
                    })
                })
                .collect();
            let tx = senders
                .remove(name)
                .expect("one sender per selected service");
            let run = ServiceRun {
                backend: Arc::clone(&self.backend),
                progress: Arc::clone(&self.progress),
                layout: self.layout.clone(),
                started: Arc::clone(&started),
                launches: launches.clone(),
                priority: schedule.priority(name),
                launch: schedule.launch(name),
                build: to_build.contains(name),
                builds: Arc::clone(&builds),
                root: self.stack.root.clone(),
            };
            tasks.spawn(
                name,
                async move { run.bring_up(&svc, action, deps, &tx).await },
            );
        }
        let mut failures = Vec::new();
        let mut report = UpReport::default();
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some((name, Ok(outcome))) => match outcome {
                        Outcome::Kept => report.kept.push(name),
                        // Counted from the launches below: a service only verified was not
                        // started by this `up`.
                        Outcome::Started => {}
                        // Its dependency's failure is the one to report.
                        Outcome::Skipped { .. } => {}
                        Outcome::Failed(unhealthy) => failures.push(*unhealthy),
                    },
                    Some((name, Err(e))) => failures.push(Unhealthy {
                        service: name,
                        reason: StartError::Internal(e),
                        log_tail: Vec::new(),
                        log_path: String::new(),
                    }),
                },
                _ = cancel.cancelled() => {
                    self.progress.note("interrupted: stopping what this `up` started (Ctrl-C again to kill at once)");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    // A launch in flight outlives its aborted task: wait for it, so that what it
                    // spawns is stopped below rather than left running.
                    launches.close();
                    launches.wait().await;
                    let mine: Vec<String> = started.lock().map(|v| v.clone()).unwrap_or_default();
                    self.stop_set(&mine.into_iter().collect(), true).await;
                    return Err(EngineError::Interrupted);
                }
            }
        }
        report.started = started.lock().map(|v| v.clone()).unwrap_or_default();
        report.started.sort();
        report.kept.sort();
        if failures.is_empty() {
            let n = selected.len();
            self.progress.summary(&format!(
                "{n} service{} up ({} started, {} already running)",
                if n == 1 { "" } else { "s" },
                report.started.len(),
                report.kept.len()
            ));
            Ok(report)
        } else {
            // A service that never got ready keeps running (its supervisor retries it); it must
            // not keep the priority it was started with.
            for name in &report.started {
                self.backend.settle(&self.stack.services[name]);
            }
            failures.sort_by(|a, b| a.service.cmp(&b.service));
            Err(EngineError::Unhealthy(failures))
        }
    }

    /// The components of `selected` to build: those whose inputs changed since their last
    /// successful build, and with [`Builds::Always`] every one of `names` (all when empty).
    fn to_build(
        &self,
        selected: &BTreeSet<String>,
        names: &[String],
        builds: Builds,
    ) -> Result<BTreeSet<String>, EngineError> {
        let mut out = BTreeSet::new();
        for name in selected {
            let svc = &self.stack.services[name];
            if svc.build.is_none() {
                continue;
            }
            let forced = builds == Builds::Always && (names.is_empty() || names.contains(name));
            if forced
                || crate::build::freshness(&self.layout, &self.stack.root, svc)?
                    != crate::build::Freshness::UpToDate
            {
                out.insert(name.clone());
            }
        }
        Ok(out)
    }

    /// What to do with each of `selected`, saying why when a running service is restarted. A
    /// component to build that runs is replaced once its build succeeds.
    fn actions(
        &self,
        selected: &BTreeSet<String>,
        to_build: &BTreeSet<String>,
    ) -> BTreeMap<String, Action> {
        let mut actions = BTreeMap::new();
        for name in selected {
            let svc = &self.stack.services[name];
            let inst = self.backend.inspect(svc);
            let mut action = Action::decide(&self.layout, svc, &inst);
            if to_build.contains(name) && matches!(action, Action::Keep | Action::Verify) {
                action = Action::Replace;
                self.progress.note(&format!(
                    "`{name}` is to be built: restarting it once the build succeeds"
                ));
            } else if action == Action::Replace {
                self.progress.note(&format!(
                    "the definition of `{name}` changed since it started: restarting it"
                ));
            } else if action == Action::Orphaned {
                self.progress.note(&format!(
                    "`{name}` lost its supervisor (pid {}): restarting it under a new one",
                    inst.pid.unwrap_or(0)
                ));
            }
            actions.insert(name.clone(), action);
        }
        actions
    }

    /// Preflights everything that will be spawned, before spawning anything.
    fn preflight(&self, actions: &BTreeMap<String, Action>) -> Result<(), EngineError> {
        let to_start: Vec<String> = actions
            .iter()
            .filter(|(_, a)| a.launches())
            .map(|(n, _)| n.clone())
            .collect();
        let mut problems: Vec<Problem> = to_start
            .iter()
            .flat_map(|n| self.backend.preflight(&self.stack.services[n]))
            .collect();
        problems.extend(crate::doctor::port_problems(&self.stack, &to_start, |n| {
            // A service being replaced holds its own ports until it is stopped.
            actions.get(n).is_some_and(|a| a.replaces())
        }));
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EngineError::Preflight(problems))
        }
    }
}
