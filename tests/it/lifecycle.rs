//! Faults: crashed services, `stack` killed mid-`up`, concurrent commands, Ctrl-C, a dead
//! supervisor, and a record whose pid now belongs to someone else.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use stack::backend::{Backend, BackendError, Instance, Priority, Problem};
use stack::engine::{Engine, EngineError};
use stack::progress::Progress;
use stack::spec::{InitStep, ServiceSpec};

use crate::harness::{block_on, describe, free_port, listening, wait_until, Project};

fn kill(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(ok.success(), "kill {sig} {pid}");
}

/// Has `pid` exited (no process, or an unreaped zombie)?
fn gone(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'))
    })
}

fn record(p: &Project, svc: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(p.state_dir().join(format!("run/{svc}.json"))).expect("record");
    serde_json::from_str(&text).expect("record JSON")
}

#[test]
fn a_crashed_service_is_restarted_with_backoff_and_counted() {
    let port = free_port();
    let p = Project::new("crash");
    p.http_service("web", port, &[]);
    assert_eq!(p.run(&["up"]).code, 0);
    let first = p.pid("web").expect("pid");
    kill(first, "-9");
    assert!(
        wait_until(Duration::from_secs(5), || p
            .pid("web")
            .is_some_and(|n| n != first)
            && listening(port)),
        "restarted after SIGKILL"
    );
    let st = p.status();
    assert_eq!(st["web"]["restarts"], 1);
    assert_eq!(st["web"]["last_exit"], "signal 9 (SIGKILL)");
    let log = std::fs::read_to_string(p.state_dir().join("logs/web.log")).expect("log");
    assert!(log.contains("restarting in 100ms (restart 1)"), "{log}");
    assert_eq!(p.processes("http.server").len(), 1);
}

#[test]
fn on_failure_does_not_restart_a_clean_exit_but_always_does() {
    let p = Project::new("policies");
    let script = "import sys, os; open(os.environ['MARK'], 'a').write('x'); sys.exit(int(os.environ['CODE']))";
    for (name, policy, code) in [
        ("clean", "on-failure", 0),
        ("again", "always", 0),
        ("broken", "on-failure", 1),
    ] {
        p.service(
            name,
            &format!("environment: {{ MARK: \"${{data_dir}}/runs\", CODE: \"{code}\" }}\nprocess:\n  command: [python3, -c, \"{script}\"]\nrestart: {policy}\n"),
        );
    }
    assert_eq!(p.run(&["up"]).code, 0);
    let runs = |svc: &str| {
        std::fs::read_to_string(p.state_dir().join(format!("data/{svc}/runs")))
            .unwrap_or_default()
            .len()
    };
    assert!(
        wait_until(Duration::from_secs(10), || runs("again") >= 3
            && runs("broken") >= 3),
        "restarted"
    );
    assert!(wait_until(Duration::from_secs(5), || p.status()["clean"]
        ["state"]
        == "exited"));
    assert_eq!(
        runs("clean"),
        1,
        "a clean exit is not restarted under on-failure"
    );
}

#[test]
fn killing_stack_mid_up_then_rerunning_leaves_exactly_one_copy_of_each_service() {
    let (a, b) = (free_port(), free_port());
    let p = Project::new("midup");
    p.http_service("fast", a, &[]);
    // `slow` needs a while to pass its probe, so `stack up` is still running when we kill it.
    p.service(
        "slow",
        &format!(
            "ports: {{ http: {b} }}\ndepends_on:\n  fast: {{ condition: service_healthy }}\nprocess:\n  command: [python3, -c, \"import time, http.server, socketserver; time.sleep(1.5); http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port={b}, bind='127.0.0.1')\", \"${{data_dir}}\"]\nhealthcheck:\n  tcp: {{ port: http }}\n  interval: 50ms\n"
        ),
    );
    let mut up: Child = p
        .cmd(&["up"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    assert!(wait_until(Duration::from_secs(10), || listening(a)));
    assert!(wait_until(Duration::from_secs(5), || !p
        .processes("time.sleep(1.5)")
        .is_empty()));
    kill(up.id(), "-9");
    let _ = up.wait();
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(listening(a) && listening(b));
    assert_eq!(p.processes("-m http.server").len(), 1, "one `fast`");
    assert_eq!(p.processes("time.sleep(1.5)").len(), 1, "one `slow`");
    let r = p.run(&["up"]);
    assert!(
        r.stderr.contains("(0 started, 2 already running)"),
        "{}",
        r.stderr
    );
}

#[test]
fn concurrent_ups_serialize_and_start_one_instance_each() {
    let (a, b) = (free_port(), free_port());
    let p = Project::new("concurrent");
    p.http_service("one", a, &[])
        .http_service("two", b, &["one"]);
    let children: Vec<Child> = (0..3)
        .map(|_| {
            p.cmd(&["up"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        p.processes("http.server").len(),
        2,
        "exactly one instance per service"
    );
}

#[test]
fn ctrl_c_during_up_stops_what_that_up_started() {
    let (a, never) = (free_port(), free_port());
    let p = Project::new("ctrlc");
    p.http_service("quick", a, &[]).service(
        "stuck",
        &format!(
            "depends_on:\n  quick: {{ condition: service_healthy }}\nprocess:\n  command: [python3, -c, \"import time; time.sleep(120)\", \"${{data_dir}}\"]\nhealthcheck:\n  tcp: {{ port: {never} }}\n  interval: 100ms\n"
        ),
    );
    let up = p
        .cmd(&["up"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_until(Duration::from_secs(10), || !p
        .processes("time.sleep(120)")
        .is_empty()));
    kill(up.id(), "-INT");
    let out = up.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!listening(a));
    assert!(
        p.processes("").is_empty(),
        "nothing of this stack is left running"
    );
    let st = p.status();
    assert_eq!(st["quick"]["state"], "stopped");
    assert_eq!(st["stuck"]["state"], "stopped");
}

#[test]
fn a_service_whose_supervisor_died_is_restarted_under_a_new_one_not_duplicated() {
    let port = free_port();
    let p = Project::new("orphan");
    p.http_service("web", port, &[]);
    assert_eq!(p.run(&["up"]).code, 0);
    let pid = p.pid("web").expect("pid");
    let sup = record(&p, "web")["supervisor"]["pid"]
        .as_u64()
        .expect("supervisor pid") as u32;
    kill(sup, "-9");
    // A SIGKILLed process dies when it next runs: on a loaded machine, in a write to disk, that
    // can take a while, and an `up` before it would rightly find it still supervising.
    assert!(
        wait_until(Duration::from_secs(10), || gone(sup)),
        "the supervisor outlived SIGKILL"
    );
    let st = p.status();
    assert_eq!(
        st["web"]["state"], "running",
        "the service outlives its supervisor"
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("`web` lost its supervisor"),
        "{}",
        r.stderr
    );
    let new = p.pid("web").expect("pid");
    assert_ne!(new, pid);
    assert_eq!(
        p.processes("http.server").len(),
        1,
        "the orphan was stopped, not duplicated"
    );
    // Supervised again: a crash is noticed and restarted.
    kill(new, "-9");
    assert!(wait_until(Duration::from_secs(5), || p
        .pid("web")
        .is_some_and(|n| n != new)
        && listening(port)));
}

#[test]
fn a_stale_record_whose_pid_was_reused_never_gets_that_process_signalled() {
    let port = free_port();
    let p = Project::new("stale");
    p.http_service("web", port, &[]);
    assert_eq!(p.run(&["up"]).code, 0);
    assert_eq!(p.run(&["down"]).code, 0);
    // An unrelated program now owns a pid the record points at (same pid, other start time).
    let mut bystander = Command::new("sleep").arg("300").spawn().expect("sleep");
    let path = p.state_dir().join("run/web.json");
    let mut rec = record(&p, "web");
    let fake =
        serde_json::json!({ "pid": bystander.id(), "start": 1, "boot": rec["supervisor"]["boot"] });
    rec["process"] = fake.clone();
    rec["supervisor"] = fake;
    rec["state"] = "running".into();
    std::fs::write(&path, serde_json::to_vec(&rec).expect("json")).expect("write");

    assert_eq!(
        p.status()["web"]["state"],
        "failed",
        "a record whose processes are gone is not running"
    );
    assert_eq!(p.run(&["down"]).code, 0);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(listening(port));
    assert_eq!(p.run(&["down"]).code, 0);
    assert!(
        bystander.try_wait().expect("try_wait").is_none(),
        "the bystander was never signalled"
    );
    bystander.kill().expect("kill");
    let _ = bystander.wait();
}

#[test]
fn a_second_ctrl_c_kills_what_a_slow_stop_left() {
    let never = free_port();
    let p = Project::new("ctrlc2");
    // `deaf` ignores SIGTERM and has a long grace period: a first Ctrl-C would wait 60 s for it.
    p.service(
        "deaf",
        "process:\n  command: [python3, -c, \"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)\", \"${data_dir}\"]\n  stop_grace_period: 60s\n",
    )
    .service(
        "stuck",
        &format!(
            "depends_on:\n  deaf: {{ condition: service_started }}\nprocess:\n  command: [python3, -c, \"import time; time.sleep(300)\", \"${{data_dir}}\"]\nhealthcheck:\n  tcp: {{ port: {never} }}\n  interval: 100ms\n"
        ),
    );
    let up = p
        .cmd(&["up"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    assert!(wait_until(Duration::from_secs(10), || p
        .processes("time.sleep(300)")
        .len()
        == 2));
    kill(up.id(), "-INT");
    let log = p.state_dir().join("logs/deaf.log");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stop requested")
    }));
    let t0 = std::time::Instant::now();
    kill(up.id(), "-INT");
    let out = up.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "the second Ctrl-C did not wait for the grace period"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || p.processes("").is_empty()),
        "nothing of this stack is left running:\n{}\n{stderr}",
        describe(&p.processes(""))
    );
}

/// The process backend, except that a start returns `hold` after its service was spawned, as a
/// microVM's start does after its boot, and that Ctrl-C (`interrupt`) comes in between.
struct InterruptedLaunch {
    inner: stack::backend::process::ProcessBackend,
    interrupt: tokio_util::sync::CancellationToken,
    hold: Duration,
}

#[async_trait::async_trait]
impl Backend for InterruptedLaunch {
    fn name(&self) -> stack::spec::BackendChoice {
        self.inner.name()
    }
    fn preflight(&self, svc: &ServiceSpec) -> Vec<Problem> {
        self.inner.preflight(svc)
    }
    fn inspect(&self, svc: &ServiceSpec) -> Instance {
        self.inner.inspect(svc)
    }
    async fn prepare(&self, svc: &ServiceSpec) -> Result<(), BackendError> {
        self.inner.prepare(svc).await
    }
    async fn start(&self, svc: &ServiceSpec, priority: Priority) -> Result<Instance, BackendError> {
        let started = self.inner.start(svc, priority).await;
        self.interrupt.cancel();
        tokio::time::sleep(self.hold).await;
        started
    }
    fn settle(&self, svc: &ServiceSpec) {
        self.inner.settle(svc)
    }
    async fn run_step(
        &self,
        svc: &ServiceSpec,
        step: &InitStep,
        priority: Priority,
    ) -> Result<Duration, BackendError> {
        self.inner.run_step(svc, step, priority).await
    }
    async fn program(&self, svc: &ServiceSpec) -> Option<String> {
        self.inner.program(svc).await
    }
    fn program_key(&self, svc: &ServiceSpec) -> Option<String> {
        self.inner.program_key(svc)
    }
    async fn wait_change(&self, svc: &ServiceSpec, timeout: Duration) {
        self.inner.wait_change(svc, timeout).await
    }
    async fn stop(&self, svc: &str) -> Result<bool, BackendError> {
        self.inner.stop(svc).await
    }
    fn kill(&self, svc: &str) {
        self.inner.kill(svc)
    }
}

#[test]
fn ctrl_c_while_a_start_is_in_flight_stops_that_service_too() {
    // Ctrl-C lands after the supervisor spawned `web` but before its start returned to `up`:
    // `up` must wait for that start and stop `web` with the rest, not leave it running.
    let p = Project::new("inflight");
    p.http_service("web", free_port(), &[]);
    let exe = std::path::PathBuf::from(env!("CARGO_BIN_EXE_stack"));
    let stack = p.load();
    let layout = stack::layout::Layout::new(stack.state_dir.clone());
    let interrupt = tokio_util::sync::CancellationToken::new();
    let backend = InterruptedLaunch {
        inner: stack::backend::process::ProcessBackend::new(layout).with_supervisor_exe(exe),
        interrupt: interrupt.clone(),
        hold: Duration::from_millis(300),
    };
    let engine = Engine::new(stack, Arc::new(backend), Progress::new(true, true));
    let result = block_on(engine.up(&[], interrupt));
    assert!(
        matches!(result, Err(EngineError::Interrupted)),
        "{result:?}"
    );
    assert!(
        p.processes("").is_empty(),
        "left running:\n{}",
        describe(&p.processes(""))
    );
    assert_eq!(p.status()["web"]["state"], "stopped");
}
