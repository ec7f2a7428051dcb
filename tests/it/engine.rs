//! `up`, `down`, `restart`, `status` and `logs` on plain programs (python http servers and
//! small scripts): ordering, idempotence, preflight, failures and their exit codes.

use std::time::Duration;

use crate::harness::{free_port, listening, wait_until, Project};

#[test]
fn up_starts_everything_healthy_warm_up_spawns_nothing_and_down_stops_dependents_first() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let p = Project::new("basic");
    p.http_service("store", a, &[])
        .http_service("app", b, &["store"])
        .http_service("edge", c, &["app"]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(listening(a) && listening(b) && listening(c));
    assert!(
        r.stderr
            .contains("3 services up (3 started, 0 already running)"),
        "{}",
        r.stderr
    );

    let st = p.status();
    for (name, s) in &st {
        assert_eq!(s["state"], "running", "{name}: {s}");
        assert_eq!(s["healthy"], true, "{name}: {s}");
        assert_eq!(s["backend"], "process");
        assert!(
            s["program"]
                .as_str()
                .unwrap_or_default()
                .contains("python3"),
            "{s}"
        );
        assert!(s["timings"]["ready_ms"].as_u64().is_some(), "{s}");
        assert!(s["started_at"].as_str().is_some(), "{s}");
    }
    let pids: Vec<u64> = st
        .values()
        .map(|s| s["pid"].as_u64().unwrap_or(0))
        .collect();

    let warm = p.run(&["up"]);
    assert_eq!(warm.code, 0, "{}", warm.text());
    assert!(
        warm.stderr.contains("(0 started, 3 already running)"),
        "{}",
        warm.stderr
    );
    let again: Vec<u64> = p
        .status()
        .values()
        .map(|s| s["pid"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(pids, again, "a warm up must not respawn anything");

    // Stopping `app` stops its dependent `edge` too, and leaves `store` alone.
    let r = p.run(&["down", "app"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!listening(b) && !listening(c) && listening(a));
    let order: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains(": stopped in"))
        .map(|l| if l.contains("edge:") { "edge" } else { "app" })
        .collect();
    assert_eq!(
        order,
        vec!["edge", "app"],
        "dependents stop first: {}",
        r.stderr
    );
    let st = p.status();
    assert_eq!(st["app"]["state"], "stopped");
    assert_eq!(st["store"]["state"], "running");

    // `up edge` brings back exactly what edge needs.
    let r = p.run(&["up", "edge"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("(2 started, 1 already running)"),
        "{}",
        r.stderr
    );
    let r = p.run(&["down"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(!listening(a) && !listening(b) && !listening(c));
    assert!(p.processes("http.server").is_empty());
}

#[test]
fn a_port_held_by_another_process_fails_preflight_naming_it_and_nothing_starts() {
    let (a, b) = (free_port(), free_port());
    let holder = std::net::TcpListener::bind(("127.0.0.1", b)).expect("hold the port");
    let p = Project::new("held");
    p.http_service("first", a, &[])
        .http_service("second", b, &["first"]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 4, "{}", r.text());
    let me = std::process::id().to_string();
    assert!(
        r.stderr.contains(&format!("port {b}")) && r.stderr.contains(&me),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("fix:"), "{}", r.stderr);
    assert!(!listening(a), "nothing may start when preflight fails");
    let d = p.run(&["doctor", "--json"]);
    assert_eq!(d.code, 4, "{}", d.text());
    let checks = d.json()["checks"].as_array().cloned().unwrap_or_default();
    assert!(
        checks
            .iter()
            .any(|c| c["status"] == "fail" && c["detail"].as_str().unwrap_or("").contains(&me)),
        "{checks:?}"
    );
    drop(holder);
    assert_eq!(p.run(&["doctor"]).code, 0);
}

#[test]
fn a_missing_program_fails_preflight_with_the_install_hint() {
    let p = Project::new("missing");
    p.service(
        "ghost",
        "process:\n  command: [definitely-not-installed-program, --flag]\n  install: apt-get install ghost-server\n",
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 4, "{}", r.text());
    assert!(
        r.stderr
            .contains("`definitely-not-installed-program` is not installed"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("apt-get install ghost-server"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_service_that_never_gets_healthy_exits_5_with_the_probe_error_and_its_log() {
    let (port, never) = (free_port(), free_port());
    let p = Project::new("unhealthy");
    p.service(
        "sulky",
        &format!(
            "ports: {{ http: {port} }}\nprocess:\n  command: [python3, -u, -c, \"print('sulky is warming up'); import time; time.sleep(60)\"]\nhealthcheck:\n  tcp: {{ port: {never} }}\n  interval: 50ms\n  retries: 5\n"
        ),
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert!(
        r.stderr.contains("`sulky` did not become ready"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("tcp 127.0.0.1:{never}")),
        "last probe error: {}",
        r.stderr
    );
    assert!(
        r.stderr.contains("sulky is warming up"),
        "last log lines: {}",
        r.stderr
    );
}

#[test]
fn a_service_that_exits_during_its_probe_fails_fast_with_its_exit_status() {
    let p = Project::new("crashy");
    let port = free_port();
    p.service(
        "crashy",
        &format!(
            "ports: {{ http: {port} }}\nprocess:\n  command: [python3, -c, \"import sys; print('bad config', file=sys.stderr); sys.exit(3)\"]\nhealthcheck:\n  tcp: {{ port: http }}\n  interval: 50ms\n  retries: 1000\nrestart: \"no\"\n"
        ),
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert!(r.stderr.contains("it exited (exit 3)"), "{}", r.stderr);
    assert!(r.stderr.contains("bad config"), "{}", r.stderr);
    assert_eq!(p.status()["crashy"]["state"], "failed");
}

#[test]
fn a_failing_dependency_keeps_its_dependents_from_starting() {
    let (a, b) = (free_port(), free_port());
    let p = Project::new("depfail");
    p.service(
        "base",
        &format!("ports: {{ http: {a} }}\nprocess:\n  command: [\"false\"]\nhealthcheck:\n  tcp: {{ port: http }}\nrestart: \"no\"\n"),
    )
    .http_service("top", b, &["base"]);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert!(
        r.stderr.contains("top: not started: base failed"),
        "{}",
        r.stderr
    );
    assert!(!listening(b));
}

#[test]
fn one_shot_tasks_complete_gate_their_dependents_and_do_not_rerun_on_a_warm_up() {
    let port = free_port();
    let p = Project::new("tasks");
    p.service(
        "migrate",
        "process:\n  command: [sh, -c, \"echo ran >> ${data_dir}/runs\"]\nrestart: \"no\"\n",
    )
    .service(
        "api",
        &format!(
            "ports: {{ http: {port} }}\ndepends_on:\n  migrate: {{ condition: service_completed_successfully }}\nprocess:\n  command: [python3, -m, http.server, \"${{port.http}}\", --bind, 127.0.0.1]\nhealthcheck:\n  http: {{ url: \"http://127.0.0.1:${{port.http}}/\" }}\n"
        ),
    );
    let plan = p.run(&["plan", "--json"]).json();
    assert_eq!(plan["waves"], serde_json::json!([["migrate"], ["api"]]));
    assert_eq!(p.run(&["up"]).code, 0);
    assert_eq!(p.run(&["up"]).code, 0);
    let runs = std::fs::read_to_string(p.state_dir().join("data/migrate/runs")).expect("task ran");
    assert_eq!(
        runs.lines().count(),
        1,
        "a completed task is not repeated on a warm up"
    );
    let st = p.status();
    assert_eq!(st["migrate"]["state"], "completed");
    assert_eq!(st["migrate"]["healthy"], true);
    assert_eq!(st["api"]["state"], "running");
}

#[test]
fn a_changed_definition_restarts_only_that_service() {
    let (a, b) = (free_port(), free_port());
    let p = Project::new("drift");
    p.http_service("one", a, &[]).http_service("two", b, &[]);
    assert_eq!(p.run(&["up"]).code, 0);
    let (one, two) = (p.pid("one"), p.pid("two"));
    let text = std::fs::read_to_string(p.dir.join("services/two.yaml")).expect("read");
    p.service(
        "two",
        &format!("{text}environment: {{ CHANGED: \"yes\" }}\n"),
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert!(
        r.stderr.contains("the definition of `two` changed"),
        "{}",
        r.stderr
    );
    assert_eq!(p.pid("one"), one, "unchanged services keep running");
    assert_ne!(p.pid("two"), two, "the changed one is restarted");
    assert!(listening(b));
}

#[test]
fn restart_replaces_the_service_and_its_dependents() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let p = Project::new("restart");
    p.http_service("db", a, &[])
        .http_service("api", b, &["db"])
        .http_service("other", c, &[]);
    assert_eq!(p.run(&["up"]).code, 0);
    let before = p.status();
    let r = p.run(&["restart", "db"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let after = p.status();
    assert_ne!(before["db"]["pid"], after["db"]["pid"]);
    assert_ne!(
        before["api"]["pid"], after["api"]["pid"],
        "dependents are restarted and re-gated"
    );
    assert_eq!(before["other"]["pid"], after["other"]["pid"]);
    assert!(listening(a) && listening(b) && listening(c));
}

#[test]
fn logs_are_prefixed_merged_tailed_and_capped() {
    let p = Project::new("logs");
    p.service(
        "talker",
        "process:\n  command: [python3, -u, -c, \"import time\\nfor i in range(3): print('talker line', i)\\ntime.sleep(60)\"]\n",
    )
    .service(
        "chatter",
        "process:\n  command: [python3, -u, -c, \"import sys,time\\nfor i in range(2000): print('chatter', i, 'x' * 100)\\nprint('chatter done', file=sys.stderr)\\ntime.sleep(60)\"]\n",
    );
    let r = p
        .cmd(&["up"])
        .env("STACK_LOG_MAX_BYTES", "65536")
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let log = p.state_dir().join("logs/chatter.log");
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("chatter 1999 ")
    }));
    let size = std::fs::metadata(&log).expect("log").len();
    assert!(size <= 65536, "the log is capped: {size} bytes");
    assert!(
        p.state_dir().join("logs/chatter.log.1").exists(),
        "the full log rotated"
    );

    assert!(wait_until(Duration::from_secs(10), || p
        .run(&["logs", "talker"])
        .stdout
        .contains("talker line 2")));
    let r = p.run(&["logs", "talker"]);
    let lines: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.contains("talker line") && !l.contains("[stack]"))
        .collect();
    assert_eq!(
        lines,
        vec![
            "talker | talker line 0",
            "talker | talker line 1",
            "talker | talker line 2"
        ]
    );
    let r = p.run(&["logs", "-n", "1"]);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
    let all = p.run(&["logs"]).stdout;
    assert!(
        all.contains("chatter | chatter done") && all.contains("talker  | talker line 0"),
        "prefixes are aligned"
    );
    assert!(
        all.contains("[stack] spawned pid"),
        "supervisor notes are in the log"
    );
    assert!(!all.contains('\x1b'), "NO_COLOR disables colors");
    let r = p.run(&["logs", "nope"]);
    assert_eq!(r.code, 2);
}

#[test]
fn logs_follow_prints_lines_written_after_it_started() {
    let p = Project::new("follow");
    p.service(
        "ticker",
        "process:\n  command: [python3, -u, -c, \"import time\\nfor i in range(600):\\n    print('tick', i)\\n    time.sleep(0.05)\"]\n",
    );
    assert_eq!(p.run(&["up"]).code, 0);
    let mut follow = p
        .cmd(&["logs", "-f", "-n", "1", "ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let reader = std::io::BufReader::new(follow.stdout.take().expect("stdout"));
    let mut ticks = Vec::new();
    for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
        if let Some(n) = line
            .strip_prefix("ticker | tick ")
            .and_then(|n| n.parse::<u32>().ok())
        {
            ticks.push(n);
        }
        if ticks.len() == 5 {
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(ticks.len(), 5, "follow keeps printing: {ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none lost: {ticks:?}"
    );
}

#[test]
fn startup_priority_favours_the_critical_path_and_is_given_back_once_ready() {
    // Only root shapes startup priority (only root can give it back); the kernel's session
    // groups are where it has to be set for the services to feel it.
    if !crate::harness::is_root() || !std::path::Path::new("/proc/self/autogroup").exists() {
        eprintln!("skipped: startup priority needs root and a kernel with scheduler autogroups");
        return;
    }
    let p = long_pole_started_twice("priority", LONG_POLE, "");
    assert!(
        last_spawn(&p, "fast").contains("nice 10 until ready: off the critical path"),
        "{}",
        last_spawn(&p, "fast")
    );
    assert!(
        last_spawn(&p, "slow").contains("nice -10 until ready: on or near the critical path"),
        "{}",
        last_spawn(&p, "slow")
    );
    for svc in ["slow", "fast"] {
        let pid = p.pid(svc).expect("running");
        let group = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).expect("autogroup");
        assert!(group.trim_end().ends_with("nice 0"), "{svc}: {group}");
        assert_eq!(nice_of(pid), "0", "{svc}'s own nice value");
    }
}

/// `svc`'s last supervisor log line "spawned pid"; it begins with its RFC 3339 stamp, so two
/// such lines sort by time.
fn last_spawn(p: &Project, svc: &str) -> String {
    let log = std::fs::read_to_string(p.state_dir().join(format!("logs/{svc}.log"))).expect("log");
    log.lines()
        .rfind(|l| l.contains("sup spawned pid"))
        .unwrap_or_else(|| panic!("no spawn in {svc}'s log:\n{log}"))
        .to_string()
}

/// How long the long pole of the priority tests takes to listen. `fast` must have more slack
/// beside it than its own start costs (a Python HTTP server: up to ~0.5 s on a loaded CI
/// machine), or `up` rightly counts it as urgent too and launches both at once.
const LONG_POLE: &str = "1.2";

/// A project with `slow`, the long pole (it listens `delay` seconds after it starts, after the
/// `init` section if one is given), and `fast`, a quick HTTP service: started, stopped and
/// started again, so that the second start plans by the first one's times.
fn long_pole_started_twice(name: &str, delay: &str, init: &str) -> Project {
    let p = Project::new(name);
    late_listener(&p, "slow", delay, init);
    p.http_service("fast", free_port(), &[]);
    started_twice(&p);
    p
}

/// Adds `name`, which listens `delay` seconds after it starts (after `init`, if given).
fn late_listener(p: &Project, name: &str, delay: &str, init: &str) {
    let port = free_port();
    p.service(
        name,
        &format!("ports: {{ http: {port} }}\n{init}process:\n  command: [python3, -c, \"import time, socket; time.sleep({delay}); s = socket.create_server(('127.0.0.1', {port})); time.sleep(60)\"]\nhealthcheck:\n  tcp: {{ port: http }}\n  interval: 50ms\n"),
    );
}

/// `up`, `down`, `up`: the first start has no history to plan by; the second plans by the
/// first one's times.
fn started_twice(p: &Project) {
    assert_eq!(p.run(&["up"]).code, 0);
    assert_eq!(p.run(&["down"]).code, 0);
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
}

#[test]
fn a_long_start_beside_the_long_pole_gets_priority_too() {
    if !crate::harness::is_root() || !std::path::Path::new("/proc/self/autogroup").exists() {
        eprintln!("skipped: startup priority needs root and a kernel with scheduler autogroups");
        return;
    }
    // `second` has ~0.3 s of slack beside the long pole, less than its own ~1.2 s start: held
    // back, it would end the start. `fast` has more slack than its start costs.
    let p = Project::new("urgent");
    late_listener(&p, "slow", "1.5", "");
    late_listener(&p, "second", "1.2", "");
    p.http_service("fast", free_port(), &[]);
    started_twice(&p);
    for (svc, expected) in [
        ("slow", "nice -10 until ready: on or near the critical path"),
        (
            "second",
            "nice -10 until ready: on or near the critical path",
        ),
        ("fast", "nice 10 until ready: off the critical path"),
    ] {
        let spawn = last_spawn(&p, svc);
        assert!(spawn.contains(expected), "{svc}: {spawn}");
    }
    assert_eq!(p.run(&["down"]).code, 0);
}

#[test]
fn the_critical_path_is_launched_first_but_never_waits_on_its_first_start_steps() {
    // `slow` is the long pole: on a first start its init step takes 0.4 s, on any start it
    // listens after LONG_POLE seconds.
    let p = long_pole_started_twice(
        "leads",
        LONG_POLE,
        "init:\n  - name: make\n    creates: ${data_dir}/made\n    command: [sh, -c, 'sleep 0.4; touch \"$1\"', sh, \"${data_dir}/made\"]\n",
    );
    let (slow, fast) = (last_spawn(&p, "slow"), last_spawn(&p, "fast"));
    assert!(
        slow < fast,
        "a warm start launches the critical path before the rest:\n{slow}\n{fast}"
    );
    assert_eq!(p.run(&["down"]).code, 0);
    // A first start again: the others must not wait out its init step.
    std::fs::remove_file(p.state_dir().join("data/slow/made")).expect("made");
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let (slow, fast) = (last_spawn(&p, "slow"), last_spawn(&p, "fast"));
    assert!(
        fast < slow,
        "`fast` waited for `slow`'s init step:\n{slow}\n{fast}"
    );
    assert_eq!(p.run(&["down"]).code, 0);
}

#[test]
fn a_service_that_never_gets_ready_does_not_keep_its_startup_priority() {
    if !crate::harness::is_root() || !std::path::Path::new("/proc/self/autogroup").exists() {
        eprintln!("skipped: startup priority needs root and a kernel with scheduler autogroups");
        return;
    }
    let port = free_port();
    let p = Project::new("priority-fail");
    // Alone, it is the critical path; it never listens, so its healthcheck gives up.
    p.service(
        "mute",
        &format!("ports: {{ http: {port} }}\nprocess:\n  command: [sleep, \"60\"]\nhealthcheck:\n  tcp: {{ port: http }}\n  interval: 50ms\n  retries: 3\n"),
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    let spawn = last_spawn(&p, "mute");
    assert!(spawn.contains("nice -10 until ready"), "{spawn}");
    let pid = p.pid("mute").expect("still running under its supervisor");
    let group = std::fs::read_to_string(format!("/proc/{pid}/autogroup")).expect("autogroup");
    assert!(group.trim_end().ends_with("nice 0"), "{group}");
    assert_eq!(nice_of(pid), "0");
    assert_eq!(p.run(&["down"]).code, 0);
}

/// A process's own nice value, from /proc.
fn nice_of(pid: u32) -> String {
    let task = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    task.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(16)
        .unwrap_or("?")
        .to_string()
}

/// `up` of one long-running service whose init step `step` (run `when`) prints `message` on
/// stderr and exits `code`: it must exit 5 naming the step and its output.
fn up_with_a_failing_step(
    project: &str,
    when: &str,
    step: &str,
    message: &str,
    code: u8,
) -> Project {
    let p = Project::new(project);
    p.service(
        "svc",
        &format!("process:\n  command: [sleep, \"60\"]\ninit:\n  - name: {step}\n    when: {when}\n    command: [sh, -c, \"echo run >> runs; echo {message} >&2; exit {code}\"]\nhealthcheck:\n  exec: [\"true\"]\n"),
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert!(
        r.stderr
            .contains(&format!("init step `{step}` of `svc` failed")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(message), "{}", r.stderr);
    p
}

#[test]
fn a_failing_init_step_exits_5_naming_the_step_and_its_output() {
    up_with_a_failing_step(
        "badinit",
        "after_healthy",
        "seed the thing",
        "cannot reach the widget",
        7,
    );
}

#[test]
fn an_after_start_step_exiting_78_is_not_retried() {
    let p = up_with_a_failing_step(
        "noretry",
        "after_start",
        "check the key",
        "the key was deleted",
        78,
    );
    let runs = std::fs::read_to_string(p.dir.join("runs")).expect("the step ran");
    assert_eq!(runs.lines().count(), 1, "run once, not retried");
}
