//! Registration and heartbeats, against a stand-in control plane (the real one is written on
//! another branch): registered at start, a heartbeat every 2 s with the sandbox count, sandboxes
//! served while the control plane is away, and a new registration once it is back.

use std::time::Duration;

use serde_json::json;

use crate::support::{for_root, free_port, unique, wait_for, ControlPlane, CAPACITY};

#[tokio::test]
async fn registers_heartbeats_and_registers_again_after_a_control_plane_restart() {
    let cp_port = free_port();
    let cp = ControlPlane::start(cp_port).await;
    let Some((_registry, runner)) = for_root(cp_port).await else {
        return;
    };

    let calls = cp.calls.clone();
    let register = wait_for("the registration", Duration::from_secs(10), || {
        let r = calls.last("/register");
        async move { r }
    })
    .await;
    assert_eq!(register["name"], runner.name.as_str());
    assert_eq!(
        register["apiUrl"],
        format!("http://127.0.0.1:{}", runner.port)
    );
    assert_eq!(register["capacity"], CAPACITY);
    for field in ["cpu", "memoryMib", "diskGib"] {
        assert!(
            register[field].as_u64().is_some_and(|n| n > 0),
            "{field}: {register}"
        );
    }
    let id = unique("beat");
    runner.create(&id).await;
    let beat = wait_for(
        "a heartbeat counting the sandbox",
        Duration::from_secs(10),
        || {
            let b = calls.last("/heartbeat").filter(|b| b["sandboxes"] == 1);
            async move { b }
        },
    )
    .await;
    assert_eq!(beat, json!({"sandboxes": 1}));
    assert_eq!(
        calls.count("/register"),
        1,
        "registered once while the control plane is up"
    );

    // The control plane goes away: the runner keeps serving its sandboxes.
    cp.stop().await;
    assert_eq!(runner.exec(&id, "echo still").await.1, "still\n");
    assert_eq!(runner.get("/health").await.0, 200);

    // It comes back without the runner (a fresh state): the runner's heartbeat gets a 404 and it
    // registers again.
    let cp = ControlPlane::start(cp_port).await;
    let calls = cp.calls.clone();
    wait_for("a new registration", Duration::from_secs(15), || {
        let r = calls.last("/register");
        async move { r }
    })
    .await;
    wait_for("heartbeats again", Duration::from_secs(10), || {
        let n = calls.count("/heartbeat");
        async move { (n > 0).then_some(()) }
    })
    .await;
    assert!(
        runner.log().contains("registering again") || runner.log().contains("registered"),
        "{}",
        runner.log()
    );
    cp.stop().await;
}

#[tokio::test]
async fn ready_only_once_the_control_plane_took_its_registration() {
    // No control plane yet: the runner lives (`/healthz`) but is not ready (`/readyz`).
    let cp_port = free_port();
    let Some((_registry, runner)) = for_root(cp_port).await else {
        return;
    };
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), runner.url(path));
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(status("/healthz").await, 200);
    assert_eq!(status("/readyz").await, 503, "not registered anywhere yet");

    let _cp = ControlPlane::start(cp_port).await;
    wait_for("readiness once registered", Duration::from_secs(15), || {
        let s = status("/readyz");
        async move { (s.await == 200).then_some(()) }
    })
    .await;
}
