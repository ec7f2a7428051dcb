//! The engine: `up`, `down` and `restart` over the dependency graph. Each service is a task that
//! waits for its dependencies' conditions, so independent branches start in parallel and a
//! service starts the moment its own dependencies are ready (never later than its wave).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, BackendError, Instance, Priority, Problem};
use crate::graph;
use crate::layout::Layout;
use crate::probe::{self, ProbeFailure};
use crate::progress::Progress;
use crate::spec::{Condition, InitPhase, ServiceSpec, Stack};
use crate::supervisor::{
    self, log,
    record::{now_rfc3339, read_json, write_json, Readiness, State},
};

/// Why an engine command failed; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A service name that is not in the stack (exit 2).
    #[error(transparent)]
    Unknown(#[from] crate::spec::UnknownService),
    /// Preflight found problems; nothing was started (exit 4).
    #[error("preflight failed, nothing was started:\n{}", render_problems(.0))]
    Preflight(Vec<Problem>),
    /// A service did not become healthy or its init failed (exit 5).
    #[error("{}", render_unhealthy(.0))]
    Unhealthy(Vec<Unhealthy>),
    /// Another backend failure (exit 1).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The state dir could not be used (exit 1).
    #[error(transparent)]
    Supervisor(#[from] supervisor::SupervisorError),
    /// Ctrl-C (exit 130).
    #[error("interrupted: stopped what this command had started")]
    Interrupted,
}

/// One service that failed to come up.
#[derive(Debug)]
pub struct Unhealthy {
    /// Service.
    pub service: String,
    /// What went wrong.
    pub reason: String,
    /// The last lines of its log.
    pub log_tail: Vec<String>,
    /// Where the full log is.
    pub log_path: String,
}

fn render_problems(ps: &[Problem]) -> String {
    ps.iter()
        .map(|p| format!("  - {}: {}\n    fix: {}", p.service, p.message, p.fix))
        .collect::<Vec<_>>()
        .join("\n")
}

fn render_unhealthy(us: &[Unhealthy]) -> String {
    us.iter()
        .map(|u| {
            let mut s = format!("`{}` did not become ready: {}", u.service, u.reason);
            if !u.log_tail.is_empty() {
                s.push_str(&format!("\n  last log lines ({}):", u.log_path));
                for l in &u.log_tail {
                    s.push_str(&format!("\n    {l}"));
                }
            }
            s.push_str(&format!("\n  see `stack logs {}`", u.service));
            s
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `up` did.
#[derive(Debug, Default, Clone)]
pub struct UpReport {
    /// Services started (or restarted) by this call.
    pub started: Vec<String>,
    /// Services that were already up and left alone.
    pub kept: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reached {
    Pending,
    Started,
    Ready,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
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

/// Runs `up`, `down` and `restart` for one stack on one backend.
pub struct Engine {
    stack: Arc<Stack>,
    layout: Layout,
    backend: Arc<dyn Backend>,
    progress: Arc<Progress>,
}

impl Engine {
    /// An engine for `stack` on `backend`.
    pub fn new(stack: Stack, backend: Arc<dyn Backend>, progress: Progress) -> Engine {
        let layout = Layout::new(stack.state_dir.clone());
        Engine {
            stack: Arc::new(stack),
            layout,
            backend,
            progress: Arc::new(progress),
        }
    }

    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, EngineError> {
        self.layout
            .create()
            .map_err(|source| supervisor::SupervisorError::Io {
                path: self.layout.root().to_path_buf(),
                source,
            })?;
        if let Some(l) = supervisor::lock_stack(&self.layout, false)? {
            return Ok(l);
        }
        self.progress
            .note("another `stack` command is running on this state dir: waiting for it");
        match supervisor::lock_stack(&self.layout, true)? {
            Some(l) => Ok(l),
            None => unreachable!("a blocking lock either succeeds or errors"),
        }
    }

    fn decide(&self, svc: &ServiceSpec, inst: &Instance) -> Action {
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
        let ready: Option<Readiness> = read_json(&self.layout.readiness(&svc.name)).ok().flatten();
        match ready {
            Some(r) if r.id == inst.id && r.pid == inst.pid => Action::Keep,
            _ => Action::Verify,
        }
    }

    /// Starts `names` and their dependencies (all services when empty) and returns once every
    /// one is healthy or completed.
    pub async fn up(
        &self,
        names: &[String],
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.stack.check_names(names)?;
        let _lock = self.lock()?;
        let selected = graph::closure(&self.stack, names);
        let mut actions = BTreeMap::new();
        for name in &selected {
            let svc = &self.stack.services[name];
            let inst = self.backend.inspect(svc);
            let action = self.decide(svc, &inst);
            match action {
                Action::Replace => self.progress.note(&format!(
                    "the definition of `{name}` changed since it started: restarting it"
                )),
                Action::Orphaned => self.progress.note(&format!(
                    "`{name}` lost its supervisor (pid {}): restarting it under a new one",
                    inst.pid.unwrap_or(0)
                )),
                _ => {}
            }
            actions.insert(name.clone(), action);
        }
        // Preflight everything that will be spawned, before spawning anything.
        let to_start: Vec<String> = actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Start | Action::Replace | Action::Orphaned))
            .map(|(n, _)| n.clone())
            .collect();
        let mut problems: Vec<Problem> = to_start
            .iter()
            .flat_map(|n| self.backend.preflight(&self.stack.services[n]))
            .collect();
        problems.extend(crate::doctor::port_problems(&self.stack, &to_start, |n| {
            // A service being replaced holds its own ports until it is stopped.
            matches!(actions.get(n), Some(Action::Replace | Action::Orphaned))
        }));
        if !problems.is_empty() {
            return Err(EngineError::Preflight(problems));
        }

        let mut senders: BTreeMap<String, watch::Sender<Reached>> = BTreeMap::new();
        let mut receivers: BTreeMap<String, watch::Receiver<Reached>> = BTreeMap::new();
        for n in &selected {
            let (tx, rx) = watch::channel(Reached::Pending);
            senders.insert(n.clone(), tx);
            receivers.insert(n.clone(), rx);
        }
        let urgent = self.urgent(&selected, &actions);
        // The urgent services that can start at once are launched before the others: on a
        // small machine, six supervisors launched together delay the first one's spawn by 10 ms.
        let leads: BTreeSet<&String> = urgent
            .iter()
            .filter(|n| {
                actions[n.as_str()] != Action::Keep
                    && self.stack.services[n.as_str()]
                        .depends_on
                        .keys()
                        .all(|d| !selected.contains(d) || actions[d] == Action::Keep)
            })
            .collect();
        let (leads_left, leads_rx) = watch::channel(leads.len());
        let leads_left = Arc::new(leads_left);
        let started = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let launches = TaskTracker::new();
        let mut tasks = tokio::task::JoinSet::new();
        for name in &selected {
            let svc = self.stack.services[name].clone();
            let action = actions[name];
            let deps: Vec<(String, Condition, watch::Receiver<Reached>)> = svc
                .depends_on
                .iter()
                .filter_map(|(d, c)| receivers.get(d).map(|r| (d.clone(), *c, r.clone())))
                .collect();
            let tx = senders
                .remove(name)
                .expect("one sender per selected service");
            let ctx = ServiceRun {
                backend: Arc::clone(&self.backend),
                progress: Arc::clone(&self.progress),
                layout: self.layout.clone(),
                started: Arc::clone(&started),
                launches: launches.clone(),
                priority: if urgent.contains(name) {
                    Priority::Urgent
                } else {
                    Priority::Background
                },
                launch: if leads.contains(name) {
                    Launch::Lead(LeadLaunched::new(&leads_left))
                } else if urgent.contains(name) {
                    Launch::Now
                } else {
                    Launch::AfterLeads(leads_rx.clone())
                },
            };
            tasks.spawn(async move {
                let result = ctx.bring_up(&svc, action, deps, &tx).await;
                let _ = tx.send(if result.is_ok() {
                    Reached::Ready
                } else {
                    Reached::Failed
                });
                (svc.name.clone(), result)
            });
        }
        let mut failures = Vec::new();
        let mut report = UpReport::default();
        loop {
            tokio::select! {
                next = tasks.join_next() => match next {
                    None => break,
                    Some(Ok((name, Ok(kept)))) => {
                        if kept { report.kept.push(name) }
                    }
                    Some(Ok((_, Err(Some(u))))) => failures.push(u),
                    Some(Ok((_, Err(None)))) => {}
                    Some(Err(e)) => failures.push(Unhealthy {
                        service: "?".into(),
                        reason: internal_failure(&e),
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

    /// The services that must not wait for the CPU (see [`graph::urgent`]): the longest path to
    /// ready, and the services with less slack than their own start. Each weighs what it will
    /// cost this time: its last start (from its readiness file) without the first-start init
    /// steps it will skip, nothing when it is kept as it is, and a flat guess before its first
    /// start (so hops decide). A `service_started` dependency weighs only its spawn. `up`
    /// launches these first and lets them take the CPU from the others while they start: on a
    /// small machine they then run at full speed.
    fn urgent(
        &self,
        selected: &BTreeSet<String>,
        actions: &BTreeMap<String, Action>,
    ) -> BTreeSet<String> {
        let costs: BTreeMap<&str, graph::Cost> = selected
            .iter()
            .map(|n| (n.as_str(), self.expected_cost(n, actions.get(n))))
            .collect();
        graph::urgent(&self.stack, selected, |n| {
            costs.get(n).copied().unwrap_or_default()
        })
    }

    /// What starting `name` will cost this time, to spawned and to ready, in milliseconds.
    fn expected_cost(&self, name: &str, action: Option<&Action>) -> graph::Cost {
        if action == Some(&Action::Keep) {
            return graph::Cost::default();
        }
        let first = first_start(&self.stack.services[name]);
        let Some(r) = read_json::<Readiness>(&self.layout.readiness(name))
            .ok()
            .flatten()
        else {
            return graph::Cost::ready(1000);
        };
        expected_from(&r, first)
    }

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

    /// Stops then starts `names` (all when empty); their dependents are stopped first and
    /// started again after them.
    pub async fn restart(
        &self,
        names: &[String],
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.stack.check_names(names)?;
        let set = graph::dependents_closure(&self.stack, names);
        {
            let _lock = self.lock()?;
            self.stop_set(&set, false).await;
        }
        let all: Vec<String> = set.into_iter().collect();
        self.up(&all, cancel).await
    }

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

    /// Stops every service of `set` in reverse dependency order, in parallel where possible.
    /// When `interrupted` (a first Ctrl-C), a second Ctrl-C kills what is left at once.
    async fn stop_set(&self, set: &BTreeSet<String>, interrupted: bool) -> Vec<String> {
        let mut senders = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for n in set {
            let (tx, rx) = watch::channel(false);
            senders.insert(n.clone(), tx);
            receivers.insert(n.clone(), rx);
        }
        let mut tasks = tokio::task::JoinSet::new();
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
            let backend = Arc::clone(&self.backend);
            let progress = Arc::clone(&self.progress);
            let name = name.clone();
            tasks.spawn(async move {
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
                (name, matches!(r, Ok(true)))
            });
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
                    Some(Ok((name, true))) => stopped.push(name),
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

/// What one service's task needs.
struct ServiceRun {
    backend: Arc<dyn Backend>,
    progress: Arc<Progress>,
    layout: Layout,
    /// What this `up` started, in the order their launches returned.
    started: Arc<std::sync::Mutex<Vec<String>>>,
    /// The launches in flight: an interrupted `up` waits for them before it stops `started`.
    launches: TaskTracker,
    priority: Priority,
    launch: Launch,
}

/// When a service to start may be launched.
enum Launch {
    /// At once.
    Now,
    /// At once, and it tells the others when it is launched (or failed to be).
    Lead(LeadLaunched),
    /// Once every lead has been launched: the number of leads left reaches 0.
    AfterLeads(watch::Receiver<usize>),
}

/// Counts one lead as launched, once: when told, or when dropped (its start failed).
struct LeadLaunched {
    left: Arc<watch::Sender<usize>>,
    counted: std::sync::atomic::AtomicBool,
}

impl LeadLaunched {
    fn new(left: &Arc<watch::Sender<usize>>) -> Self {
        LeadLaunched {
            left: Arc::clone(left),
            counted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn done(&self) {
        if !self
            .counted
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.left.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for LeadLaunched {
    fn drop(&mut self) {
        self.done();
    }
}

impl ServiceRun {
    fn unhealthy(&self, svc: &str, reason: String) -> Option<Unhealthy> {
        let path = self.layout.log_file(svc);
        Some(Unhealthy {
            service: svc.to_string(),
            reason,
            log_tail: log::tail(&path, 15),
            log_path: path.display().to_string(),
        })
    }

    /// Starts `svc` in a task of its own that runs to its end even if this one is aborted (an
    /// interrupted `up`), and that records the service as started by this `up` once it is.
    async fn start_detached(&self, svc: &ServiceSpec) -> Result<Instance, Option<Unhealthy>> {
        let (backend, spec) = (Arc::clone(&self.backend), svc.clone());
        let (started, priority) = (Arc::clone(&self.started), self.priority);
        self.launches
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
            .map_err(|e| self.unhealthy(&svc.name, internal_failure(&e)))?
            .map_err(|e| self.unhealthy(&svc.name, e.to_string()))
    }

    /// Brings one service up. `Ok(true)` when it was already up, `Err(None)` when it was not
    /// attempted because a dependency failed (that failure is reported on its own).
    async fn bring_up(
        &self,
        svc: &ServiceSpec,
        action: Action,
        deps: Vec<(String, Condition, watch::Receiver<Reached>)>,
        tx: &watch::Sender<Reached>,
    ) -> Result<bool, Option<Unhealthy>> {
        let name = &svc.name;
        for (dep, cond, mut rx) in deps {
            if *rx.borrow() != Reached::Ready {
                self.progress
                    .phase(name, &format!("waiting on {dep} ({cond})"));
            }
            let need_started = cond == Condition::ServiceStarted;
            let r = rx
                .wait_for(|r| match r {
                    Reached::Started => need_started,
                    Reached::Ready | Reached::Failed => true,
                    Reached::Pending => false,
                })
                .await
                .map(|r| *r)
                .unwrap_or(Reached::Failed);
            if r == Reached::Failed {
                self.progress
                    .failed(name, &format!("not started: {dep} failed"));
                return Err(None);
            }
        }
        if action == Action::Keep {
            self.progress.done(name, "already running");
            return Ok(true);
        }
        let t0 = Instant::now();
        // What the last start learned: the program's version, kept while the binary is the same.
        let previous: Option<Readiness> = read_json(&self.layout.readiness(name)).ok().flatten();
        let mut init_ms = 0u64;
        let mut spawned_ms = 0u64;
        let mut before_ms = 0u64;
        let mut program = previous.as_ref().and_then(|r| r.program.clone());
        let mut program_key = previous.as_ref().and_then(|r| r.program_key.clone());
        let mut version = None;
        let fail = |e: BackendError| self.unhealthy(name, e.to_string());
        let first = first_start(svc);
        if matches!(action, Action::Start | Action::Replace | Action::Orphaned) {
            if let Launch::AfterLeads(rx) = &self.launch {
                // Nothing to wait for if the leads' tasks are gone.
                let _ = rx.clone().wait_for(|left| *left == 0).await;
            }
            if action != Action::Start {
                self.progress.phase(name, "stopping the outdated instance");
                self.backend.stop(name).await.map_err(fail)?;
            }
            self.backend.prepare(svc).await.map_err(fail)?;
            if let (Launch::Lead(lead), true) = (&self.launch, first) {
                // Its first-start steps (initdb) take long: the others need not wait for them.
                lead.done();
            }
            before_ms = self.run_steps(svc, InitPhase::BeforeStart).await?;
            init_ms += before_ms;
            self.progress.phase(name, "starting");
            self.start_detached(svc).await?;
            if let Launch::Lead(lead) = &self.launch {
                lead.done();
            }
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
        let kind = if svc.is_task() {
            self.progress.phase(name, "running to completion");
            self.wait_completed(svc).await?;
            "completed"
        } else if let Some(hc) = &svc.healthcheck {
            self.progress
                .phase(name, &format!("probing ({})", hc.probe.kind()));
            let backend = Arc::clone(&self.backend);
            let spec = svc.clone();
            let exec = |argv: Vec<String>| {
                let (backend, spec) = (Arc::clone(&self.backend), svc.clone());
                async move { backend.exec(&spec, &argv).await }
            };
            probe::wait_ready(hc, move || exited(backend.as_ref(), &spec), exec)
                .await
                .map_err(|f: ProbeFailure| self.unhealthy(name, f.to_string()))?;
            "healthy"
        } else {
            "running"
        };
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
        Ok(false)
    }

    /// Runs `svc`'s init steps of `phase`, skipping those whose `creates` path exists. Steps
    /// right after the start talk to a server that may still be coming up, so they are retried
    /// (fast at first) until they pass, the service exits, the step exits
    /// [`EXIT_DO_NOT_RETRY`](crate::backend::EXIT_DO_NOT_RETRY), or the healthcheck budget is
    /// spent.
    /// Returns the milliseconds spent.
    async fn run_steps(
        &self,
        svc: &ServiceSpec,
        phase: InitPhase,
    ) -> Result<u64, Option<Unhealthy>> {
        let t0 = Instant::now();
        let budget = svc
            .healthcheck
            .as_ref()
            .map_or(Duration::from_secs(60), |h| {
                h.start_period + h.interval * h.retries
            });
        let on = self.backend.backend_for(svc);
        for step in svc
            .init
            .iter()
            .filter(|s| s.phase == phase && s.runs_on(on))
        {
            if step.creates.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            self.progress
                .phase(&svc.name, &format!("init: {}", step.name));
            let mut delay = Duration::from_millis(20);
            loop {
                match self.backend.run_step(svc, step, self.priority).await {
                    Ok(_) => break,
                    Err(e) if phase != InitPhase::AfterStart || e.is_permanent() => {
                        return Err(self.unhealthy(&svc.name, e.to_string()))
                    }
                    Err(e) => {
                        if let Err(why) = exited(self.backend.as_ref(), svc) {
                            return Err(self.unhealthy(
                                &svc.name,
                                format!("{why} during init step `{}`; {e}", step.name),
                            ));
                        }
                        if t0.elapsed() >= budget {
                            return Err(self.unhealthy(&svc.name, e.to_string()));
                        }
                    }
                }
                // Like the probes: often at first (a server is usually up within a second, and
                // a doubling delay would overshoot it by as much again), then backing off.
                tokio::time::sleep(delay).await;
                if t0.elapsed() >= STEP_FAST_PHASE {
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
        Ok(t0.elapsed().as_millis() as u64)
    }

    async fn wait_completed(&self, svc: &ServiceSpec) -> Result<(), Option<Unhealthy>> {
        loop {
            let inst = self.backend.inspect(svc);
            match inst.state {
                State::Completed => return Ok(()),
                State::Failed | State::Exited | State::Stopped => {
                    return Err(self
                        .unhealthy(&svc.name, format!("the task failed ({})", last_exit(&inst))))
                }
                _ => {}
            }
            self.backend.wait_change(svc, Duration::from_secs(1)).await;
        }
    }
}

/// How long after a service's start its `after_start` steps are retried at the first, short
/// delay (20 ms) before backing off.
const STEP_FAST_PHASE: Duration = Duration::from_secs(2);

/// Is this `svc`'s first start: does an init step still have to create its data? A step
/// without `creates` runs on every start, so it says nothing either way.
fn first_start(svc: &ServiceSpec) -> bool {
    svc.init.iter().any(|s| {
        s.phase == InitPhase::BeforeStart && s.creates.as_ref().is_some_and(|c| !c.exists())
    })
}

/// The reason given when a task of `up` panicked or was cancelled: a bug, not the service's
/// fault; what it had started keeps running and a new `up` picks it up.
fn internal_failure(e: &tokio::task::JoinError) -> String {
    format!(
        "internal task failure ({e}): a bug in stack, please report it; run `stack up` again to \
         resume, or `stack down` to stop what was started"
    )
}

/// What a start costs by the service's last readiness file, to spawned and to ready. A first
/// start (its data not there yet) costs what the last first start did. Any other start costs its
/// warm estimate; without one yet, the last start less its steps before the start: a warm start
/// skips those (they prepare the data, as initdb does). Steps after the start run again; a first
/// start's bootstrap costs more than a warm start's check, so this errs long, and the warm start
/// that follows records the real cost.
fn expected_from(r: &Readiness, first: bool) -> graph::Cost {
    let (started, ready) = if first {
        (r.spawned_ms, r.ready_ms)
    } else {
        (
            r.spawned_ms.saturating_sub(r.before_ms),
            r.warm_ms.unwrap_or(r.ready_ms.saturating_sub(r.before_ms)),
        )
    };
    let ready = ready.max(1);
    graph::Cost {
        started: started.min(ready),
        ready,
    }
}

/// The warm-start cost to plan the next start by. Services started together slow each other
/// down, and the ones `up` deprioritised most, so the latest time alone would make yesterday's
/// background service look like today's long pole. The estimate is a floor that drops at once
/// to a faster observation and rises by at most a quarter per start, following a service that
/// really got slower (more data to recover) without chasing contention. A start that was held
/// back (`background`) only shows what the service costs at most: it may lower the estimate but
/// neither set nor raise it (until a start at full speed sets it, `up` plans by the latest time;
/// see [`expected_from`]).
fn next_warm_estimate(previous: Option<u64>, observed: u64, background: bool) -> Option<u64> {
    match previous {
        Some(p) if background => Some(observed.min(p)),
        Some(p) => Some(observed.min(p + p / 4 + 1)),
        None if background => None,
        None => Some(observed),
    }
}

/// `Err` with the exit status when the service's process has exited for good.
fn exited(backend: &dyn Backend, svc: &ServiceSpec) -> Result<(), probe::StopReason> {
    let inst = backend.inspect(svc);
    match inst.state {
        State::Failed | State::Exited | State::Stopped if !inst.alive => {
            Err(probe::StopReason::Exited {
                status: last_exit(&inst),
            })
        }
        _ => Ok(()),
    }
}

fn last_exit(inst: &Instance) -> String {
    inst.last_exit
        .as_ref()
        .map_or_else(|| "no status".into(), |e| e.describe())
}

#[cfg(test)]
mod tests {
    use super::{expected_from, next_warm_estimate};
    use crate::graph::Cost;
    use crate::supervisor::record::Readiness;

    fn readiness(spawned_ms: u64, ready_ms: u64, init_ms: u64, before_ms: u64) -> Readiness {
        Readiness {
            id: "i".into(),
            pid: None,
            spawned_ms,
            ready_ms,
            init_ms,
            before_ms,
            warm_ms: None,
            at: String::new(),
            program: None,
            program_key: None,
        }
    }

    #[test]
    fn a_warm_start_without_history_skips_only_the_steps_before_the_start() {
        // PostgreSQL after its first start: initdb (before the start) is not run again.
        let pg = readiness(1095, 1130, 1088, 1088);
        assert_eq!(
            expected_from(&pg, false),
            Cost {
                started: 7,
                ready: 42
            }
        );
        assert_eq!(
            expected_from(&pg, true),
            Cost {
                started: 1095,
                ready: 1130
            }
        );
        // Garage after its first start: its bootstrap (after the start) runs again, so its
        // time stays in, though a warm start's check costs less.
        let garage = readiness(22, 662, 637, 0);
        assert_eq!(expected_from(&garage, false).ready, 662);
        // Once a warm start was measured, that is what counts.
        let known = Readiness {
            warm_ms: Some(80),
            ..garage
        };
        assert_eq!(expected_from(&known, false).ready, 80);
    }

    #[test]
    fn warm_estimate_drops_at_once_and_rises_slowly() {
        let next = |p, o| next_warm_estimate(p, o, false);
        assert_eq!(next(None, 180), Some(180));
        // Slowed down by the others once: barely moves.
        assert_eq!(next(Some(100), 300), Some(126));
        // Faster than ever: taken as is.
        assert_eq!(next(Some(126), 90), Some(90));
        // Really slower for good: reaches it within a few starts.
        let mut e = Some(100);
        for _ in 0..5 {
            e = next(e, 300);
        }
        assert_eq!(e, Some(300));
    }

    #[test]
    fn a_start_held_back_can_only_lower_the_warm_estimate() {
        // A cold start in the background (a fresh Garage bootstrapping behind initdb) says
        // nothing about a warm start.
        assert_eq!(next_warm_estimate(None, 689, true), None);
        assert_eq!(next_warm_estimate(Some(170), 400, true), Some(170));
        assert_eq!(next_warm_estimate(Some(170), 120, true), Some(120));
    }
}
