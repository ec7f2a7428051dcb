//! `RUNNER_OUTBOUND`: refused unless `off` or `on`; with `on`, the runner's sandboxes reach out
//! (into a network namespace the test makes, `testbed::outside`) but never the host's loopback,
//! and each one's slirp4netns lives and ends with it through the runner's restarts.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use testbed::outside::{slirp_processes, Outside};

use crate::support::{
    free_port, skip_unless_root, unique, wait_for, ControlPlane, Registry, Runner,
};

const NOBODY: u32 = 65534;

#[test]
fn an_unknown_setting_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env_clear()
        .envs([
            ("RUNNER_NAME", "runner-x"),
            ("RUNNER_PORT", "23999"),
            ("RUNNER_HOME", "/nonexistent/runner-x"),
            ("RUNNER_TOKEN", "0123456789abcdef0123"),
            ("CONTROL_PLANE_URL", "http://127.0.0.1:1"),
            ("REGISTRY_URL", "http://127.0.0.1:1"),
            ("RUNNER_OUTBOUND", "yes"),
        ])
        .output()
        .expect("run the runner");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("`RUNNER_OUTBOUND` is `yes`: give `off`") && err.contains("`on`"),
        "{err}"
    );
}

/// The live slirp4netns processes of sandbox `id` of `runner`.
fn slirps(runner: &Runner, id: &str) -> Vec<i32> {
    let dir = runner.home.path().join("sandboxes").join(id);
    slirp_processes(&dir.display().to_string())
}

/// `busybox nc` in the sandbox to `addr`: (exit code, stdout, stderr).
async fn nc(runner: &Runner, id: &str, addr: &str) -> (i64, String, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    runner
        .exec(id, &format!("busybox nc -w 5 {host} {port} </dev/null"))
        .await
}

async fn assert_reaches(runner: &Runner, id: &str, outside: &Outside) {
    let (code, out, err) = nc(runner, id, &outside.server.to_string()).await;
    assert_eq!(
        (code, out),
        (0, format!("hello {}\n", outside.host_addr)),
        "{err}"
    );
}

#[tokio::test]
async fn an_outbound_runner_s_sandboxes_reach_out_through_its_restarts() {
    if skip_unless_root("an_outbound_runner_s_sandboxes_reach_out_through_its_restarts") {
        return;
    }
    let outside = Outside::new(1);
    let registry = Registry::with_busybox().await;
    let cp = ControlPlane::start(free_port()).await;
    let mut runner =
        Runner::start_with(&registry.host, cp.port, None, &[("RUNNER_OUTBOUND", "on")]).await;
    assert!(runner
        .log()
        .contains("outbound network access of new sandboxes: on"));

    let id = unique("out");
    runner.create(&id).await;
    let (_, addr, _) = runner.exec(&id, "busybox ip -o -4 addr show tap0").await;
    assert!(addr.contains("10.0.2.100/24"), "{addr}");
    let (_, routes, _) = runner.exec(&id, "busybox ip route").await;
    assert!(routes.contains("default via 10.0.2.2"), "{routes}");
    assert_eq!(
        runner.exec(&id, "cat /etc/resolv.conf").await.1,
        "nameserver 10.0.2.3\n"
    );
    assert_reaches(&runner, &id, &outside).await;
    // The control plane (here: its stand-in) listens on the host's loopback: out of reach.
    let (code, _, err) = nc(&runner, &id, &format!("10.0.2.2:{}", cp.port)).await;
    assert_ne!(code, 0, "the host's loopback is closed to sandboxes: {err}");
    assert_eq!(
        cp.calls.count("/heartbeat") + cp.calls.count("/register"),
        cp.calls.all().len(),
        "the control plane saw only the runner"
    );
    let slirp = slirps(&runner, &id);
    assert_eq!(slirp.len(), 1, "one slirp4netns per sandbox");

    // Killed, the runner leaves the sandbox and its slirp4netns running; the next one takes both
    // back as they are.
    runner
        .signal(Signal::SIGKILL, Duration::from_secs(10))
        .await;
    assert_eq!(
        slirps(&runner, &id),
        slirp,
        "slirp4netns outlives the runner"
    );
    runner.restart().await;
    assert!(runner.log().contains("1 adopted"), "{}", runner.log());
    assert_eq!(slirps(&runner, &id), slirp, "taken back, not replaced");
    assert_reaches(&runner, &id, &outside).await;

    // The init killed behind the runner's back (the OOM killer, say): its slirp4netns exits by
    // itself once the runner has reaped it; a start gives the sandbox a new one.
    let (_, list) = runner.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(list["state"], "started");
    let init: i32 =
        std::fs::read_to_string(runner.home.path().join("runc").join(&id).join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["init_process_pid"].as_i64())
            .expect("the init's pid") as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(init), Signal::SIGKILL).expect("kill init");
    wait_for(
        "slirp4netns to follow its init",
        Duration::from_secs(10),
        || async { slirps(&runner, &id).is_empty().then_some(()) },
    )
    .await;
    let (status, body) = runner
        .post(&format!("/sandboxes/{id}/start"), json!(null))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(slirps(&runner, &id).len(), 1);
    assert_reaches(&runner, &id, &outside).await;

    // Delete: its slirp4netns goes with it.
    let deleted = runner
        .call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(slirps(&runner, &id), Vec::<i32>::new());

    // A clean stop leaves no slirp4netns; the next start gives the resumed sandbox a new one.
    let kept = unique("out");
    runner.create(&kept).await;
    assert_eq!(slirps(&runner, &kept).len(), 1);
    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(status.success(), "{}", runner.log());
    runner.assert_nothing_running();
    let home = runner.home.path().display().to_string();
    assert_eq!(slirp_processes(&home), Vec::<i32>::new());
    runner.restart().await;
    assert!(runner.log().contains("1 resumed"), "{}", runner.log());
    assert_reaches(&runner, &kept, &outside).await;
    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(status.success(), "{}", runner.log());
    assert_eq!(slirp_processes(&home), Vec::<i32>::new());
}

/// Why this machine cannot run an unprivileged runner with outbound access, if it cannot.
fn cannot_run_unprivileged() -> Option<String> {
    if skip_unless_root("an unprivileged outbound runner") {
        return Some("needs root to start the runner as another user".into());
    }
    let probe = Command::new("sh")
        .args([
            "-c",
            "unshare --user --map-root-user --mount true && test -r /dev/net/tun -a -w /dev/net/tun",
        ])
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some("nobody may not create a user namespace or open /dev/net/tun (make it 0666: scripts/install-deps.sh)".into()),
        Err(e) => Some(format!("cannot run the probe: {e}")),
    }
}

#[tokio::test]
async fn an_unprivileged_outbound_runner_s_slirp4netns_ends_with_its_sandbox() {
    if let Some(why) = cannot_run_unprivileged() {
        eprintln!(
            "an_unprivileged_outbound_runner_s_slirp4netns_ends_with_its_sandbox: skipped: {why}"
        );
        return;
    }
    let outside = Outside::new(3);
    let registry = Registry::with_busybox().await;
    let cp = ControlPlane::start(free_port()).await;
    let mut runner = Runner::start_with(
        &registry.host,
        cp.port,
        Some(NOBODY),
        &[("RUNNER_OUTBOUND", "on")],
    )
    .await;
    let id = unique("rootless-out");
    runner.create(&id).await;
    let (_, addr, _) = runner.exec(&id, "busybox ip -o -4 addr show tap0").await;
    assert!(addr.contains("10.0.2.100/24"), "{addr}");
    assert_reaches(&runner, &id, &outside).await;
    let (code, _, _) = nc(&runner, &id, &format!("10.0.2.2:{}", cp.port)).await;
    assert_ne!(code, 0, "the host's loopback is closed to sandboxes");
    assert_eq!(slirps(&runner, &id).len(), 1);
    let deleted = runner
        .call(reqwest::Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status().as_u16(), 204);
    assert_eq!(slirps(&runner, &id), Vec::<i32>::new());

    let kept = unique("rootless-out");
    runner.create(&kept).await;
    assert_eq!(slirps(&runner, &kept).len(), 1);
    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(status.success(), "{}", runner.log());
    let home = runner.home.path().display().to_string();
    assert_eq!(slirp_processes(&home), Vec::<i32>::new());
}
