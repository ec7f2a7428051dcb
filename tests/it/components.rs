//! Native components (`build:`, `watch:`): built before they start and only when their inputs
//! changed, built while their dependencies start, a failed build leaves the old instance serving,
//! `restart --build`, and `stack watch` rebuilding and restarting on a change.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::harness::{free_port, wait_until, Project};

/// A component: `build.sh` copies `src/page.html` to `out/` (failing when the page says
/// BROKEN) and counts its runs; python's http.server serves `out/`.
fn component(p: &Project, port: u16, deps: &str) {
    p.write("src/page.html", "version 1\n").write(
        "build.sh",
        "set -e\necho \"building $(cat src/page.html)\"\necho run >> builds.count\nif grep -q BROKEN src/page.html; then echo 'error: page.html is broken' >&2; exit 1; fi\nmkdir -p out\ncp src/page.html out/index.html\n",
    );
    p.service(
        "web",
        &format!(
            "ports: {{ http: {port} }}\n{deps}build:\n  command: [sh, build.sh]\n  inputs: [\"src/**\", build.sh]\nwatch: [\"src/**\"]\nprocess:\n  command: [python3, -m, http.server, \"${{port.http}}\", --bind, 127.0.0.1, --directory, out]\nhealthcheck:\n  http: {{ url: \"http://127.0.0.1:${{port.http}}/\" }}\n  interval: 100ms\n"
        ),
    );
}

fn builds(p: &Project) -> usize {
    std::fs::read_to_string(p.dir.join("builds.count"))
        .unwrap_or_default()
        .lines()
        .count()
}

fn page(port: u16) -> String {
    let out = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_component_is_built_once_rebuilt_on_change_and_a_failed_build_keeps_the_old_one() {
    let p = Project::new("components");
    let port = free_port();
    component(&p, port, "");

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), 1, "built before its first start");
    assert_eq!(page(port), "version 1\n");
    let pid = p.pid("web");

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), 1, "a warm up builds nothing: {}", r.stderr);
    assert_eq!(p.pid("web"), pid, "and restarts nothing");

    // Touching a file without changing it is no change.
    p.write("src/page.html", "version 1\n");
    assert_eq!(p.run(&["up"]).code, 0);
    assert_eq!(builds(&p), 1, "content, not mtimes, decides");

    p.write("src/page.html", "version 2\n");
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), 2);
    assert_ne!(p.pid("web"), pid, "restarted on the new build");
    assert_eq!(page(port), "version 2\n");
    let pid = p.pid("web");

    p.write("src/page.html", "BROKEN\n");
    let r = p.run(&["up"]);
    assert_eq!(r.code, 5, "a failed build is exit 5: {}", r.text());
    assert!(
        r.stderr.contains("its build failed (exit 1)")
            && r.stderr.contains("error: page.html is broken")
            && r.stderr.contains("web.build.log"),
        "the build's last lines: {}",
        r.stderr
    );
    assert_eq!(p.pid("web"), pid, "the old instance keeps running");
    assert_eq!(page(port), "version 2\n", "and serving");

    // Fixed: the next up builds again (the failure was not recorded as a build).
    p.write("src/page.html", "version 3\n");
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(page(port), "version 3\n");

    let before = builds(&p);
    let r = p.run(&["restart", "--build", "web"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(
        builds(&p),
        before + 1,
        "restart --build builds even unchanged"
    );
    let r = p.run(&["up", "--build"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), before + 2, "up --build builds even unchanged");

    p.write("src/page.html", "BROKEN\n");
    let pid = p.pid("web");
    let r = p.run(&["restart", "--build", "web"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert_eq!(p.pid("web"), pid, "nothing is stopped when the build fails");
}

#[test]
fn a_build_runs_while_its_dependencies_start() {
    // The dependency becomes healthy only once the build has run: were the build to wait for
    // its dependencies, this stack could never come up.
    let p = Project::new("parallel");
    let port = free_port();
    p.service(
        "gate",
        "process:\n  command: [sleep, \"60\"]\nhealthcheck:\n  exec: [test, -e, out/index.html]\n  interval: 50ms\n",
    );
    component(
        &p,
        port,
        "depends_on:\n  gate: { condition: service_healthy }\n",
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(page(port), "version 1\n");
}

#[test]
fn two_components_with_the_same_build_share_one_run_and_its_failure() {
    // `web` and a twin served from the same output, built by the same command over the same
    // inputs (as `api` and `proxy` are by `cargo build -p control-plane`).
    let p = Project::new("shared-build");
    let (port, twin) = (free_port(), free_port());
    component(&p, port, "");
    let web = std::fs::read_to_string(p.dir.join("services/web.yaml")).expect("web.yaml");
    p.service("twin", &web.replace(&port.to_string(), &twin.to_string()));

    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), 1, "one run for both: {}", r.stderr);
    assert_eq!(
        (page(port), page(twin)),
        ("version 1\n".into(), "version 1\n".into())
    );
    let logs = ["web", "twin"].map(|s| {
        std::fs::read_to_string(p.state_dir().join(format!("logs/{s}.build.log")))
            .unwrap_or_default()
    });
    assert!(
        logs.iter().any(|l| l.contains("building version 1"))
            && logs
                .iter()
                .any(|l| l.starts_with("built by the same run as `")),
        "one log has the build, the other says whose it was: {logs:?}"
    );
    let r = p.run(&["up"]);
    assert_eq!(r.code, 0, "{}", r.text());
    assert_eq!(builds(&p), 1, "both recorded it: a warm up builds nothing");

    // Broken: one run fails, and both components say so, each naming the log with the cause.
    p.write("src/page.html", "BROKEN\n");
    let r = p.run(&["restart", "--build"]);
    assert_eq!(r.code, 5, "{}", r.text());
    assert_eq!(builds(&p), 2, "still one run: {}", r.stderr);
    assert!(
        r.stderr.matches("error: page.html is broken").count() >= 2,
        "each failure shows the failed run's last lines: {}",
        r.stderr
    );
    assert!(r.stderr.contains("which failed (exit 1)"), "{}", r.stderr);
    assert_eq!(
        (page(port), page(twin)),
        ("version 1\n".into(), "version 1\n".into())
    );
    assert_eq!(p.run(&["down"]).code, 0);
}

/// `stack watch` running in the background, its stderr lines sent to a channel.
struct Watching {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watching {
    fn start(p: &Project) -> Watching {
        let mut child = p
            .cmd(&["--plain", "watch"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("stack watch");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watching { child, lines }
    }

    /// Waits for a line containing `needle`; returns what was read up to it.
    fn expect(&self, needle: &str) -> String {
        let mut seen = String::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    if line.contains(needle) {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with `{needle}` from stack watch; it printed:\n{seen}");
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn watch_rebuilds_and_restarts_on_a_change_and_keeps_the_old_one_when_the_build_breaks() {
    let p = Project::new("watching");
    let port = free_port();
    component(&p, port, "");
    let w = Watching::start(&p);
    w.expect("watching for changes");
    assert_eq!(page(port), "version 1\n");

    p.write("src/page.html", "version 2\n");
    let seen = w.expect("watch: rebuilt `web`");
    assert!(seen.contains("ready again"), "{seen}");
    assert!(
        wait_until(Duration::from_secs(10), || page(port) == "version 2\n"),
        "the new build serves"
    );
    let pid = p.pid("web");

    p.write("src/page.html", "BROKEN\n");
    let seen = w.expect("was not replaced");
    let rest = w.expect("page.html is broken");
    assert!(seen.contains("`web`"), "{seen}{rest}");
    assert_eq!(p.pid("web"), pid, "the old instance keeps running");
    assert_eq!(page(port), "version 2\n");

    // A file outside `watch:` changes nothing.
    p.write("notes.txt", "hello\n");
    p.write("src/page.html", "version 3\n");
    w.expect("watch: rebuilt `web`");
    assert!(wait_until(Duration::from_secs(10), || page(port) == "version 3\n"));

    // Ctrl-C ends watching with exit 0; the services keep running.
    let mut w = w;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(w.child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    w.expect("stopped watching");
    let status = w.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0));
    assert_eq!(page(port), "version 3\n", "still serving after watch ends");
}

#[test]
fn watch_without_watched_services_says_what_to_add() {
    let p = Project::new("nowatch");
    p.http_service("web", free_port(), &[]);
    let r = p.run(&["watch"]);
    assert_eq!(r.code, 2, "{}", r.text());
    assert!(
        r.stderr.contains("add globs of its sources"),
        "{}",
        r.stderr
    );
}
