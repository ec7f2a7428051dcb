//! The runner's own restarts: killed, it takes its running sandboxes back as they are; stopped
//! with SIGTERM, it stops them, leaving nothing running or mounted, and its next start resumes
//! them.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::support::{for_root, free_port, unique};

#[tokio::test]
async fn a_killed_runner_takes_its_sandboxes_back_and_cleans_leftovers() {
    let Some((_registry, mut runner)) = for_root(free_port()).await else {
        return;
    };
    let id = unique("adopt");
    runner.create(&id).await;
    runner.exec(&id, "echo before > /tmp/mark").await;
    let pids = runner.sandbox_processes();

    runner
        .signal(Signal::SIGKILL, Duration::from_secs(10))
        .await;
    // Killed: the sandbox runs on without its runner.
    assert_eq!(runner.sandbox_processes(), pids);
    // What a create cut short by the kill would leave: a dir without a container.
    let stale = unique("stale");
    let stale_dir = runner.home.path().join("sandboxes").join(&stale);
    std::fs::create_dir_all(stale_dir.join("upper")).expect("a stale sandbox dir");
    runner.restart().await;
    let log = runner.log();
    assert!(
        log.contains("1 adopted") && log.contains("1 leftovers cleaned"),
        "{log}"
    );
    assert!(!stale_dir.exists(), "the stale dir is cleaned");
    assert_eq!(
        runner.exec(&id, "cat /tmp/mark; uname -n").await.1,
        format!("before\n{id}\n")
    );
    let (_, list) = runner.get("/sandboxes").await;
    assert_eq!(list[0]["state"], "started", "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn sigterm_stops_the_sandboxes_and_the_next_start_resumes_them() {
    let Some((_registry, mut runner)) = for_root(free_port()).await else {
        return;
    };
    let (a, b, kept) = (unique("term"), unique("term"), unique("kept"));
    for id in [&a, &b, &kept] {
        runner.create(id).await;
        runner.exec(id, &format!("echo {id} > /root/name")).await;
    }
    // One stopped on purpose: it stays stopped across the restart.
    assert_eq!(
        runner
            .post(&format!("/sandboxes/{kept}/stop"), serde_json::json!(null))
            .await
            .0,
        200
    );

    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(
        status.success(),
        "the runner exits 0 on SIGTERM: {status}\n{}",
        runner.log()
    );
    runner.assert_nothing_running();
    assert_eq!(runner.sandbox_dirs().len(), 3, "the sandboxes are kept");

    runner.restart().await;
    assert!(
        runner.log().contains("2 resumed, 1 kept stopped"),
        "{}",
        runner.log()
    );
    for id in [&a, &b] {
        assert_eq!(runner.exec(id, "cat /root/name").await.1, format!("{id}\n"));
    }
    let (_, state) = runner.get(&format!("/sandboxes/{kept}")).await;
    assert_eq!(state["state"], "stopped");
}
