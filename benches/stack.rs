//! `cargo bench --bench stack` (or `scripts/bench.sh`): the default stack's cold `up`, warm `up`,
//! `down` and warm start after `down`, each against a limit measured in the same run with the
//! same programs and probes but no orchestrator:
//!
//! * standalone: each service alone, fresh data dir, its init steps, spawn, probe every 5 ms;
//! * critical-path limit: those times summed along the longest dependency chain (what a perfect
//!   parallel orchestrator could reach), where a `service_started` dependency adds only its
//!   time to spawned (caddy may start as soon as dex is spawned, so dex's start is not on
//!   caddy's path). The warm start is also shown against the plain chain sum, every dependency
//!   waited out to ready, as the engine issue words the limit;
//! * sequential baseline: the services started one after another, each polled until healthy
//!   (the reference's shell-script way), then stopped and started so again with their data;
//!   against it, a parallel start can at best reach the graph's bound: the baseline's own
//!   service times summed, over their critical path;
//! * down limit: for each reverse wave the slowest service's own clean stop, summed;
//! * core floor: the larger of the critical path and the services' own CPU time (each measured
//!   standalone, init steps included) divided by the machine's cores: what even a perfect
//!   scheduler cannot beat on this machine. Reported beside the critical-path ratios, with a
//!   line saying so when it puts 1.15x the critical path out of any orchestrator's reach, and
//!   as this machine's bound over the sequential baseline (the summed times over the floor).
//!
//! Each is measured twice: for the infrastructure tier alone, then for the whole stack with the
//! platform tier (its components built from source before the rounds; a fresh state dir still
//! asks cargo whether they are fresh, in `up` and in the limits alike). `BENCH_TIER=
//! infrastructure` or `platform` measures one.
//!
//! Results are ratios, never assertions. Ports of the default stack must be free.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stack::backend::process::{prepare_data_dir, ProcessBackend};
use stack::backend::Backend;
use stack::graph;
use stack::layout::Layout;
use stack::spec::{InitPhase, LoadOptions, ServiceSpec, Stack};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn load(root: &Path, state: &Path) -> Stack {
    Stack::load(&LoadOptions {
        file: Some(root.join("stack.yaml")),
        cwd: root.to_path_buf(),
        state_dir: Some(state.to_path_buf()),
        env: std::env::vars().collect(),
        stack_exe: Some(PathBuf::from(env!("CARGO_BIN_EXE_stack"))),
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

struct Standalone {
    /// Its build, when its inputs changed since the last one (a component built from source;
    /// in a fresh state dir cargo finds it fresh): cold and warm. Kept apart from the start
    /// times, since a build needs none of the dependencies and `up` runs it while they start.
    cold_build: Duration,
    warm_build: Duration,
    cold: Duration,
    warm: Duration,
    /// Time to spawned (init steps before the start included), cold and warm: what a
    /// `service_started` dependent waits for.
    cold_started: Duration,
    warm_started: Duration,
    stop: Duration,
    /// CPU time (user + system) its cold start took, init steps included.
    cold_cpu: Duration,
    /// The same for a warm start.
    warm_cpu: Duration,
}

impl Standalone {
    /// Its cold start's timing.
    fn cold(&self) -> Timing {
        Timing {
            build: self.cold_build,
            started: self.cold_started,
            ready: self.cold,
        }
    }

    /// Its warm start's timing.
    fn warm(&self) -> Timing {
        Timing {
            build: self.warm_build,
            started: self.warm_started,
            ready: self.warm,
        }
    }

    /// Its warm start's, as if a `service_started` dependent waited for it to be ready.
    fn warm_chain(&self) -> Timing {
        Timing {
            started: self.warm,
            ..self.warm()
        }
    }
}

/// CPU time used so far by this process's waited-for children.
fn children_cpu() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn wait_probe(svc: &ServiceSpec, child: &mut Child) {
    if let Some(hc) = &svc.healthcheck {
        // One set of clients for every attempt, as `up` does.
        let prober = stack::probe::Prober::new(&hc.probe).expect("probe clients");
        while let Err(e) = prober.check(hc.timeout).await {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "`{}` exited ({status}) before its probe passed: {e}",
                    svc.name
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

fn spawn(svc: &ServiceSpec, layout: &Layout) -> Child {
    let p = svc.process.as_ref().expect("process section");
    // As the process backend gives it: secrets from the state dir, `${backend.*}` filled.
    let env = svc.environment.iter().map(|(k, v)| {
        let v = stack::secrets::fill(layout, v).expect("the state dir's secrets");
        (
            k,
            stack::spec::interp::fill_backend(&v, stack::spec::interp::BackendVars::PROCESS),
        )
    });
    let mut cmd = Command::new(&p.command[0]);
    cmd.args(&p.command[1..])
        .envs(env)
        .current_dir(&p.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(u) = prepare_data_dir(svc).expect("data dir and service user") {
        cmd.uid(u.uid).gid(u.gid);
    }
    cmd.spawn().expect("spawn the service program")
}

fn stop(svc: &ServiceSpec, mut child: Child) -> Duration {
    let t0 = Instant::now();
    let sig = svc.process.as_ref().expect("process").stop_signal;
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), sig);
    let _ = child.wait();
    t0.elapsed()
}

/// Starts one service without the orchestrator; returns the running child and its timing: its
/// build, then the time to spawned and to ready after it.
async fn start_alone(
    backend: &ProcessBackend,
    at: (&Path, &Layout),
    svc: &ServiceSpec,
) -> (Child, Timing) {
    let t_build = Instant::now();
    // A component built from source is built first when its inputs changed since the last
    // build recorded in this state dir, as `up` does: in a fresh one, cargo finds it fresh.
    let (root, layout) = at;
    let stale = stack::build::freshness(layout, root, svc)
        .unwrap_or_else(|e| panic!("inputs of `{}`: {e}", svc.name))
        != stack::build::Freshness::UpToDate;
    if stale {
        stack::build::run(layout, root, svc)
            .await
            .unwrap_or_else(|e| panic!("build of `{}`: {e}", svc.name));
    }
    let build = t_build.elapsed();
    let t0 = Instant::now();
    backend.prepare(svc).await.expect("data dir and configs");
    for step in svc
        .init
        .iter()
        .filter(|s| s.phase == InitPhase::BeforeStart)
    {
        if !step.creates.as_ref().is_some_and(|c| c.exists()) {
            backend
                .run_step(svc, step, stack::backend::Priority::Normal)
                .await
                .expect("init step");
        }
    }
    let mut child = spawn(svc, layout);
    let started = t0.elapsed();
    for step in svc.init.iter().filter(|s| s.phase == InitPhase::AfterStart) {
        // Talks to a server that is still starting: retry, as `up` does.
        while backend
            .run_step(svc, step, stack::backend::Priority::Normal)
            .await
            .is_err()
        {
            assert!(
                child.try_wait().ok().flatten().is_none(),
                "`{}` exited during init",
                svc.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if svc.is_task() {
        let status = child.wait().expect("wait for the task");
        assert!(status.success(), "task `{}` failed: {status}", svc.name);
    }
    wait_probe(svc, &mut child).await;
    for step in svc
        .init
        .iter()
        .filter(|s| s.phase == InitPhase::AfterHealthy)
    {
        backend
            .run_step(svc, step, stack::backend::Priority::Normal)
            .await
            .expect("init step");
    }
    let timing = Timing {
        build,
        started,
        ready: t0.elapsed(),
    };
    (child, timing)
}

/// One standalone measurement of one service: cold start, stop, warm start, stop. A service that
/// needs others (a schema task needs PostgreSQL) gets them started first, outside the timing.
async fn standalone(root: &Path, name: &str) -> Standalone {
    let tmp = tempdir();
    let stack = load(root, &tmp);
    let layout = Layout::new(tmp.clone());
    let backend = ProcessBackend::new(layout.clone());
    let at = (root, &layout);
    let deps = graph::closure(&stack, &[name.to_string()]);
    let mut running = Vec::new();
    for dep in graph::plan(&stack, &deps).services().filter(|d| *d != name) {
        let d = &stack.services[dep];
        let (child, _) = start_alone(&backend, at, d).await;
        running.push((d.clone(), child));
    }
    let svc = &stack.services[name];
    let c0 = children_cpu();
    let (child, cold) = start_alone(&backend, at, svc).await;
    let stop1 = stop(svc, child);
    let c1 = children_cpu();
    let (child, warm) = start_alone(&backend, at, svc).await;
    let stop2 = stop(svc, child);
    let c2 = children_cpu();
    for (d, child) in running.into_iter().rev() {
        stop(&d, child);
    }
    Standalone {
        cold_build: cold.build,
        warm_build: warm.build,
        cold: cold.ready,
        warm: warm.ready,
        cold_started: cold.started,
        warm_started: warm.started,
        stop: stop1.max(stop2),
        cold_cpu: c1 - c0,
        warm_cpu: c2 - c1,
    }
}

/// Where this run's scratch dirs live. None is deleted before the run ends: on a filesystem without
/// a journal (these machines' ext4), creating inodes in a block group where thousands were freed
/// in the last half minute costs a scan per inode (`recently_deleted`), and freeing blocks issues
/// synchronous discards. Deleting one measurement's PostgreSQL cluster just before the next
/// measurement would slow whichever came second by up to 2x, and not the other.
fn scratch_root() -> PathBuf {
    std::env::temp_dir().join(format!("stack-bench-{}", std::process::id()))
}

fn tempdir() -> PathBuf {
    let root = scratch_root();
    std::fs::create_dir_all(&root).expect("scratch root");
    let _ = std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    let dir = tempfile::Builder::new()
        .prefix("run-")
        .tempdir_in(&root)
        .expect("temp dir")
        .keep();
    // The unprivileged service user must reach its data dir.
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755));
    dir
}

/// The project as the bench measures it: the infrastructure tier alone. Components built from
/// source (`build:`) and what depends on them are left out: their builds and their own start
/// (a runner registers with the control plane) are not what this bench compares with its
/// standalone limits. A scratch dir links every file of the project but the left-out services.
fn infrastructure_of(project: &Path) -> PathBuf {
    let probe = tempdir();
    let full = load(project, &probe);
    let mut out: std::collections::BTreeSet<String> = full
        .services
        .values()
        .filter(|s| s.build.is_some())
        .map(|s| s.name.clone())
        .collect();
    // Whatever depends on a left-out service goes too.
    loop {
        let more: Vec<String> = full
            .services
            .values()
            .filter(|s| !out.contains(&s.name) && s.depends_on.keys().any(|d| out.contains(d)))
            .map(|s| s.name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        out.extend(more);
    }
    let view = scratch_root().join("infrastructure");
    let _ = std::fs::remove_dir_all(&view);
    std::fs::create_dir_all(view.join("services")).expect("scratch project");
    let link = |from: PathBuf, to: PathBuf| {
        std::os::unix::fs::symlink(from, to).expect("link into the scratch project")
    };
    for e in std::fs::read_dir(project).expect("project dir").flatten() {
        let name = e.file_name();
        if name == "stack.yaml" {
            // Copied: a link would be resolved, and the project found where the link points.
            std::fs::copy(e.path(), view.join(&name)).expect("copy stack.yaml");
        } else if name != "services" && name != ".stack" {
            link(e.path(), view.join(&name));
        }
    }
    for e in std::fs::read_dir(project.join("services"))
        .expect("services")
        .flatten()
    {
        let path = e.path();
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string());
        let is_file = path.extension().is_some_and(|x| x == "yaml" || x == "yml");
        let left_out = is_file
            && stem.is_some_and(|stem| {
                full.services
                    .values()
                    .any(|s| out.contains(&s.name) && s.file == path)
                    || out.contains(&stem)
            });
        if !left_out {
            link(path, view.join("services").join(e.file_name()));
        }
    }
    if !out.is_empty() {
        println!(
            "(the platform tier is left out: {})",
            out.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    view
}

fn stack_cmd(root: &Path, state: &Path, args: &[&str]) -> Duration {
    let t0 = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_stack"))
        .args(["-f"])
        .arg(root.join("stack.yaml"))
        .args(["--state-dir"])
        .arg(state)
        .args(["--backend", "process", "--plain"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stack");
    let t = t0.elapsed();
    assert!(
        out.status.success(),
        "stack {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    t
}

/// One service's start measured alone: its build (zero without one), then its time to spawned
/// and to ready.
#[derive(Clone, Copy)]
struct Timing {
    build: Duration,
    started: Duration,
    ready: Duration,
}

/// Each service's timing, by name.
type Times = BTreeMap<String, Timing>;

/// The critical-path limit: the latest of the services' earliest ready times with unlimited
/// cores, each costing what `times` says, as `up` plans it ([`graph::earliest`]: a
/// `service_started` dependent waits only for the spawn). A build needs none of the
/// dependencies: it runs from the start, and the service starts once both it and its
/// dependencies allow.
fn critical_path(stack: &Stack, times: &Times) -> Duration {
    let all = stack.services.keys().cloned().collect();
    let plan = graph::plan(stack, &all);
    let mut at: BTreeMap<&str, (Duration, Duration)> = BTreeMap::new();
    for n in plan.services() {
        let t = times[n];
        let deps = stack.services[n]
            .depends_on
            .iter()
            .filter_map(|(d, cond)| {
                let (d_start, d_ready) = at.get(d.as_str())?;
                Some(match cond {
                    stack::spec::Condition::ServiceStarted => *d_start + times[d].started,
                    _ => *d_ready,
                })
            })
            .max()
            .unwrap_or_default();
        let start = deps.max(t.build);
        at.insert(n, (start, start + t.ready));
    }
    at.values()
        .map(|(_, ready)| *ready)
        .max()
        .unwrap_or_default()
}

/// The sequential baseline, cold or warm: its total time and the bound a parallel start can
/// reach against it, from the same run's own service times (their sum over their critical path).
#[derive(Clone, Copy)]
struct Sequential {
    total: Duration,
    /// The services' times summed.
    sum: Duration,
    /// Their critical path.
    critical: Duration,
}

impl Sequential {
    fn new(stack: &Stack, total: Duration, times: &Times) -> Sequential {
        Sequential {
            total,
            sum: times.values().map(|t| t.build + t.ready).sum(),
            critical: critical_path(stack, times),
        }
    }

    /// The graph's bound: the speed-up of a parallel start with unlimited cores.
    fn bound(&self) -> f64 {
        ratio(self.sum, self.critical)
    }

    /// The same on this machine, where no start beats the services' CPU time over the cores.
    fn machine_bound(&self, cpu_floor: Duration) -> f64 {
        ratio(self.sum, self.critical.max(cpu_floor))
    }
}

/// Everything measured in one round; rounds interleave the baselines and `stack` so that both
/// see the same machine conditions (fsync speed on these disks varies by 2x over minutes).
struct Round {
    alone: BTreeMap<String, Standalone>,
    cold_limit: Duration,
    warm_limit: Duration,
    /// The warm limit summed along the longest chain as if every dependency were waited out
    /// to ready: the engine issue's wording, looser where a dependent needs a service only
    /// started (caddy after dex).
    warm_chain: Duration,
    /// The services' summed CPU time over the cores: no schedule finishes sooner.
    cold_cpu_floor: Duration,
    warm_cpu_floor: Duration,
    down_limit: Duration,
    sequential_cold: Sequential,
    sequential_warm: Sequential,
    cold: Duration,
    warm: Duration,
    down: Duration,
    warm_start: Duration,
}

fn round(rt: &tokio::runtime::Runtime, root: &Path, stack: &Stack) -> Round {
    let plan = graph::plan(stack, &stack.services.keys().cloned().collect());
    let mut alone = BTreeMap::new();
    for name in stack.services.keys() {
        alone.insert(name.clone(), rt.block_on(standalone(root, name)));
    }
    let down_limit = plan
        .waves
        .iter()
        .map(|w| w.iter().map(|n| alone[n].stop).max().unwrap_or_default())
        .sum();

    // Sequential baseline: one service after another, each polled until healthy; all stopped;
    // then the same again with their data there.
    let tmp = tempdir();
    let st = load(root, &tmp);
    let layout = Layout::new(tmp.clone());
    let backend = ProcessBackend::new(layout.clone());
    let mut sequential = Vec::new();
    for _ in ["cold", "warm"] {
        let t0 = Instant::now();
        let mut running = Vec::new();
        let mut times = Times::new();
        for name in plan.services() {
            let svc = &st.services[name];
            let (child, timing) = rt.block_on(start_alone(&backend, (root, &layout), svc));
            running.push((svc.clone(), child));
            times.insert(name.clone(), timing);
        }
        sequential.push(Sequential::new(stack, t0.elapsed(), &times));
        for (svc, child) in running.into_iter().rev() {
            stop(&svc, child);
        }
    }

    let state = tempdir();
    let cold = stack_cmd(root, &state, &["up"]);
    let warm = median((0..5).map(|_| stack_cmd(root, &state, &["up"])).collect());
    let down = stack_cmd(root, &state, &["down"]);
    let warm_start = stack_cmd(root, &state, &["up"]);
    stack_cmd(root, &state, &["down"]);
    // However well it schedules, an orchestrator on N cores cannot finish before the services'
    // own CPU work, spread perfectly over those cores, is done.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let cold_cpu: Duration = alone.values().map(|s| s.cold_cpu).sum();
    let warm_cpu: Duration = alone.values().map(|s| s.warm_cpu).sum();
    let times = |pick: fn(&Standalone) -> Timing| -> Times {
        alone.iter().map(|(n, s)| (n.clone(), pick(s))).collect()
    };
    Round {
        cold_limit: critical_path(stack, &times(Standalone::cold)),
        warm_limit: critical_path(stack, &times(Standalone::warm)),
        warm_chain: critical_path(stack, &times(Standalone::warm_chain)),
        cold_cpu_floor: cold_cpu / cores,
        warm_cpu_floor: warm_cpu / cores,
        sequential_cold: sequential[0],
        sequential_warm: sequential[1],
        alone,
        down_limit,
        cold,
        warm,
        down,
        warm_start,
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --all-targets` runs this binary without `--bench`: it is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmarks run with `cargo bench --bench stack` (or scripts/bench.sh): 0 passed, 0 failed");
        return;
    }
    let project = std::env::var_os("STACK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    // What `cargo bench` sets for this binary would reach the components' cargo builds, and a
    // changed CARGO_MANIFEST_DIR alone reruns build scripts (ring's) and half the build. The
    // target dir stays: `${CARGO_TARGET_DIR:-target}` finds the built binaries through it.
    for (k, _) in std::env::vars() {
        if k.starts_with("CARGO_") && k != "CARGO_HOME" && k != "CARGO_TARGET_DIR" {
            std::env::remove_var(k);
        }
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let tier = std::env::var("BENCH_TIER").unwrap_or_default();
    if tier != "platform" {
        bench(&rt, &infrastructure_of(&project), runs);
    }
    if tier != "infrastructure" {
        println!();
        // Built once before any timing, as a user's first `up` would; every measured start
        // then finds them fresh (a fresh state dir still asks cargo, in the timings).
        let probe_state = tempdir();
        let full = load(&project, &probe_state);
        let layout = Layout::new(probe_state.clone());
        for svc in full.services.values().filter(|s| s.build.is_some()) {
            rt.block_on(stack::build::run(&layout, &project, svc))
                .unwrap_or_else(|e| panic!("build of `{}`: {e}", svc.name));
        }
        println!("(the whole stack, platform tier included: its components built from source before the rounds)");
        bench(&rt, &project, runs);
    }
    let _ = std::fs::remove_dir_all(scratch_root());
}

/// Every measurement of the stack at `root`, over `runs` interleaved rounds.
fn bench(rt: &tokio::runtime::Runtime, root: &Path, runs: usize) {
    let root = root.to_path_buf();
    let probe_state = tempdir();
    let stack = load(&root, &probe_state);
    for svc in stack.services.values() {
        for port in svc.ports.values() {
            assert!(
                stack::doctor::port_free(*port),
                "port {port} of `{}` is busy: run `stack down` first",
                svc.name
            );
        }
    }
    println!(
        "benchmark of {} ({} services, {runs} interleaved rounds, medians)",
        root.display(),
        stack.services.len()
    );
    let rounds: Vec<Round> = (0..runs).map(|_| round(rt, &root, &stack)).collect();
    let med = |f: &dyn Fn(&Round) -> Duration| median(rounds.iter().map(f).collect());
    let medr = |f: &dyn Fn(&Round) -> f64| median_f(rounds.iter().map(f).collect());
    for (name, svc) in &stack.services {
        // A component's build (cargo, finding it fresh) runs beside its dependencies' starts.
        let build = if svc.build.is_some() {
            format!(
                "  (build first: cold {})",
                secs(med(&|r| r.alone[name].cold_build))
            )
        } else {
            String::new()
        };
        println!(
            "  standalone {name:<10} cold {}  warm {}  stop {}{build}",
            secs(med(&|r| r.alone[name].cold)),
            secs(med(&|r| r.alone[name].warm)),
            secs(med(&|r| r.alone[name].stop))
        );
    }
    println!();
    println!(
        "  {:<34} {:>9} {:>9} {:>8} {:>9}",
        "measure", "stack", "limit", "ratio", "target"
    );
    println!(
        "  {:<34} {:>9} {:>9} {:>8} {:>9}",
        "warm up (all running)",
        secs(med(&|r| r.warm)),
        "-",
        "-",
        "<= 0.150s"
    );
    // Each ratio row: its label, a round's (stack's time, the limit), and the target.
    type Pick = fn(&Round) -> (Duration, Duration);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cold_floor = format!("cold up vs {cores}-core floor");
    let warm_floor = format!("warm start vs {cores}-core floor");
    let rows: [(&str, Pick, &str); 6] = [
        (
            "cold up vs critical path",
            |r| (r.cold, r.cold_limit),
            "<= 1.15",
        ),
        (
            "down vs slowest stop per wave",
            |r| (r.down, r.down_limit),
            "<= 1.10",
        ),
        (
            "warm start after down vs limit",
            |r| (r.warm_start, r.warm_limit),
            "<= 1.15",
        ),
        (
            "  the same vs the plain chain sum",
            |r| (r.warm_start, r.warm_chain),
            "",
        ),
        // The larger of the critical path and the CPU floor.
        (
            &cold_floor,
            |r| (r.cold, r.cold_limit.max(r.cold_cpu_floor)),
            "",
        ),
        (
            &warm_floor,
            |r| (r.warm_start, r.warm_limit.max(r.warm_cpu_floor)),
            "",
        ),
    ];
    for (label, pick, target) in rows {
        println!(
            "  {label:<34} {:>9} {:>9} {:>8.2} {target:>9}",
            secs(med(&|r| pick(r).0)),
            secs(med(&|r| pick(r).1)),
            medr(&|r| ratio(pick(r).0, pick(r).1)),
        );
    }
    println!(
        "  (floor: the larger of the critical path and the services' own CPU time, {} cold and {} warm, spread over {cores} cores)",
        secs(med(&|r| r.cold_cpu_floor * cores as u32)),
        secs(med(&|r| r.warm_cpu_floor * cores as u32)),
    );
    // Whether a target against the critical path can be met here at all: not when the services'
    // own CPU time, spread perfectly over the cores, already takes longer than 1.15x the path.
    type Limits = fn(&Round) -> (Duration, Duration);
    let limits: [(&str, Limits); 2] = [
        ("cold up", |r| (r.cold_limit, r.cold_cpu_floor)),
        ("warm start", |r| (r.warm_limit, r.warm_cpu_floor)),
    ];
    for (label, limits) in limits {
        let (path, floor) = (med(&|r| limits(r).0), med(&|r| limits(r).1));
        if floor > path.mul_f64(1.15) {
            println!(
                "  {label}: no orchestrator can meet 1.15x the critical path on {cores} cores: the services' own CPU time alone takes {} of them, more than 1.15 x {} = {}",
                secs(floor),
                secs(path),
                secs(path.mul_f64(1.15))
            );
        }
    }
    println!();
    // Against the baseline, the best a parallel start can do is the graph's bound: the
    // baseline's service times summed, over their critical path. On this machine it is lower:
    // the services' CPU time over the cores bounds the parallel start too.
    type Versus = fn(&Round) -> (Sequential, Duration, Duration);
    let baselines: [(&str, Versus); 2] = [
        ("cold", |r| (r.sequential_cold, r.cold, r.cold_cpu_floor)),
        ("warm start", |r| {
            (r.sequential_warm, r.warm_start, r.warm_cpu_floor)
        }),
    ];
    for (label, versus) in baselines {
        let speed_up = |r: &Round| ratio(versus(r).0.total, versus(r).1);
        println!(
            "  sequential baseline, {label}: {} -> speed-up {:.2}x of the graph's {:.2}x bound = {:.0}% (of this machine's {:.2}x = {:.0}%)   target >= 85%",
            secs(med(&|r| versus(r).0.total)),
            medr(&speed_up),
            medr(&|r| versus(r).0.bound()),
            100.0 * medr(&|r| speed_up(r) / versus(r).0.bound()),
            medr(&|r| versus(r).0.machine_bound(versus(r).2)),
            100.0 * medr(&|r| speed_up(r) / versus(r).0.machine_bound(versus(r).2)),
        );
    }
    // The reset tiers of the infrastructure (the platform's hard tier restarts its builds).
    if stack.services.contains_key("schema") && stack.services.values().all(|s| s.build.is_none()) {
        data_lifecycle(&root);
    }
}

fn stack_out(root: &Path, state: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_stack"))
        .arg("-f")
        .arg(root.join("stack.yaml"))
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stack");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Schema load, the no-op check on a loaded schema, and each reset tier's time to a usable stack.
fn data_lifecycle(root: &Path) {
    let state = tempdir();
    stack_cmd(root, &state, &["up"]);
    // The schema task's own report: "applied ... (N statements) in M ms".
    let log = stack_out(root, &state, &["logs", "schema"]);
    let (statements, ms) = log
        .lines()
        .find_map(|l| {
            let s = l.split_once("(")?.1;
            let n: f64 = s.split_whitespace().next()?.parse().ok()?;
            let m: f64 = s
                .split(" in ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((n, m))
        })
        .unwrap_or((0.0, 0.0));
    let noop = median(
        (0..7)
            .map(|_| stack_cmd(root, &state, &["schema", "load"]))
            .collect(),
    );
    let soft = median(
        (0..3)
            .map(|_| stack_cmd(root, &state, &["reset", "--soft", "--yes"]))
            .collect(),
    );
    let hard = median(
        (0..3)
            .map(|_| stack_cmd(root, &state, &["reset", "--hard", "--yes"]))
            .collect(),
    );
    let nuke = stack_cmd(root, &state, &["reset", "--nuke", "--yes"]);
    let up = stack_cmd(root, &state, &["up"]);
    stack_cmd(root, &state, &["down"]);
    println!();
    println!(
        "  schema load: {statements} statements in {ms} ms ({:.0} statements/s)",
        statements / (ms / 1000.0).max(1e-9)
    );
    println!("  schema load on a loaded schema (whole `stack schema load` command): {}   target <= 0.050s", secs(noop));
    println!("  reset --soft, stack usable again: {}", secs(soft));
    println!("  reset --hard, stack usable again: {}", secs(hard));
    println!(
        "  reset --nuke then up, stack usable again: {} ({} + cold up {})",
        secs(nuke + up),
        secs(nuke),
        secs(up)
    );
}
