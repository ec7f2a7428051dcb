//! The whole platform end to end, as the README's worked example: the default stack with the
//! control plane, the preview proxy and both runners built from this repository, driven through
//! Caddy with real clients. A dex password grant, a sandbox on a real runner (runc, the stack's
//! own registry), exec, files, a web server in the sandbox reached through a signed preview URL,
//! a runner SIGKILLed and re-adopting its sandbox, the control plane SIGKILLed and finding its
//! runners and sandboxes again, a runner stopped and left out of scheduling, and no trace left
//! after a delete and a down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{block_on, default_platform, is_root, wait_until, Project};

/// The default stack on free ports, its components built in the repository.
fn platform() -> (Project, u16) {
    let (p, ports) = default_platform("sandboxes", &["api", "proxy", "runner-a", "runner-b"]);
    (p, ports["caddy"])
}

/// A call to the control plane through Caddy: its status and its JSON (or text) answer.
async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request through caddy");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned())),
    )
}

/// `POST /api/sandbox` with `body` as `auth`: its status and its JSON answer.
async fn create(client: &reqwest::Client, base: &str, auth: &str, body: Value) -> (u16, Value) {
    call(
        client
            .post(format!("{base}/sandbox"))
            .header("authorization", auth)
            .json(&body),
    )
    .await
}

/// Mount points whose path names the sandbox.
fn mounts_of(id: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_user_runs_a_sandbox_through_caddy_and_nothing_is_left_behind() {
    if !is_root() {
        eprintln!("skipped: runners run sandboxes with runc, which needs root here");
        return;
    }
    let (p, caddy) = platform();
    let up = p.run_building(&["up"]);
    assert_eq!(up.code, 0, "{}", up.text());
    let env = p.run_building(&["env", "--json"]).json();
    let issuer = env["OIDC_ISSUER"].as_str().expect("issuer").to_string();
    let base = format!("http://127.0.0.1:{caddy}/api");
    let state = p.state_dir();

    block_on(async {
        let client = reqwest::Client::new();
        let token = crate::control_plane::password_grant(&issuer, "test01@boxlite.dev").await;
        let auth = format!("Bearer {token}");

        let (status, sandbox) = create(&client, &base, &auth, json!({"name": "demo"})).await;
        assert_eq!(status, 201, "{sandbox}");
        let id = sandbox["id"].as_str().expect("id").to_string();
        assert_eq!(sandbox["state"], "started");
        assert_eq!(sandbox["image"], "boxlite/base:bookworm");

        let exec = |command: &str| {
            client
                .post(format!("{base}/toolbox/{id}/toolbox/process/execute"))
                .header("authorization", &auth)
                .json(&json!({ "command": command }))
        };
        let (status, out) = call(exec("uname -n")).await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["result"], format!("{id}\n"), "the hostname is the id");

        let (status, written) = call(
            client
                .post(format!(
                    "{base}/toolbox/{id}/toolbox/files/upload?path=/srv/index.html"
                ))
                .header("authorization", &auth)
                .body("hello from the sandbox\n"),
        )
        .await;
        assert_eq!(status, 200, "{written}");
        let (status, read) = call(
            client
                .get(format!(
                    "{base}/toolbox/{id}/toolbox/files/download?path=/srv/index.html"
                ))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(read, Value::String("hello from the sandbox\n".into()));

        let (status, out) = call(exec("busybox httpd -p 8080 -h /srv")).await;
        assert_eq!(status, 200, "{out}");
        let (status, preview) = call(
            client
                .get(format!("{base}/sandbox/{id}/ports/8080/signed-preview-url"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(status, 200, "{preview}");
        let token = preview["token"].as_str().expect("token");
        // Caddy routes on the Host header; *.localhost is loopback.
        let page = |host: String| {
            let client = client.clone();
            async move {
                client
                    .get(format!("http://127.0.0.1:{caddy}/"))
                    .header("host", host)
                    .send()
                    .await
                    .expect("preview request")
            }
        };
        let resp = page(format!("8080-{token}.localhost:{caddy}")).await;
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.text().await.expect("page"), "hello from the sandbox\n");
        let resp = page(format!("8080-{}.localhost:{caddy}", "0".repeat(32))).await;
        assert_eq!(
            resp.status().as_u16(),
            404,
            "an unknown token is never forwarded"
        );

        // The runner holding it is SIGKILLed: its supervisor starts it again, and the new one
        // takes the running sandbox back.
        let runner = sandbox["runnerId"].as_str().expect("runner id").to_string();
        let runners = p.status();
        let holder = ["runner-a", "runner-b"]
            .into_iter()
            .find(|r| {
                std::fs::read_dir(state.join("data").join(r).join("sandboxes"))
                    .map(|mut d| d.any(|e| e.is_ok_and(|e| e.file_name() == id.as_str())))
                    .unwrap_or(false)
            })
            .expect("one runner holds the sandbox");
        let pid = runners[holder]["pid"].as_u64().expect("runner pid") as i32;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL the runner");
        assert!(
            wait_until(Duration::from_secs(20), || {
                p.status()[holder]["pid"]
                    .as_u64()
                    .is_some_and(|p| p as i32 != pid)
                    && p.status()[holder]["healthy"] == true
            }),
            "{holder} is restarted"
        );
        let mut last = (0, Value::Null);
        for _ in 0..100 {
            last = call(exec("cat /srv/index.html")).await;
            if last.0 == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(state.join("logs").join(format!("{holder}.log")))
            .unwrap_or_default();
        assert_eq!(
            last.0, 200,
            "the re-adopted sandbox answers exec: {}; {holder}'s log:\n{log}",
            last.1
        );
        assert_eq!(
            last.1["result"], "hello from the sandbox\n",
            "re-adopted: {runner}"
        );
        // `status` shows each runner's sandboxes (what it answers at its `info:` URL).
        let status = p.status();
        assert_eq!(status[holder]["info"]["sandboxes"], 1, "{status:?}");

        // The control plane is SIGKILLed: its supervisor starts it again, and it finds its
        // runners (their heartbeats go on) and the sandbox, still answering.
        let admin = format!(
            "Bearer {}",
            env["ADMIN_API_KEY"].as_str().expect("ADMIN_API_KEY")
        );
        p.kill_and_await_restart("api");
        let (status, runners) = call(
            client
                .get(format!("{base}/runners"))
                .header("authorization", &admin),
        )
        .await;
        assert_eq!(status, 200, "{runners}");
        let states: Vec<(&str, &str)> = runners
            .as_array()
            .expect("runners")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(states, [("runner-a", "ready"), ("runner-b", "ready")]);
        let (status, kept) = call(
            client
                .get(format!("{base}/sandbox/{id}"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(status, 200, "{kept}");
        assert_eq!(
            (kept["state"].clone(), kept["runnerId"].clone()),
            (json!("started"), sandbox["runnerId"].clone())
        );
        let (status, out) = call(exec("cat /srv/index.html")).await;
        assert_eq!(
            (status, out["result"].clone()),
            (200, json!("hello from the sandbox\n"))
        );

        // The other runner is stopped: unresponsive once its heartbeat's TTL (6 s) is out, and
        // new sandboxes go to the one left.
        let other = if holder == "runner-a" {
            "runner-b"
        } else {
            "runner-a"
        };
        let stopped = p.run_building(&["down", other]);
        assert_eq!(stopped.code, 0, "{}", stopped.text());
        let mut seen = String::new();
        let unresponsive = {
            let mut found = false;
            for _ in 0..100 {
                let (_, runners) = call(
                    client
                        .get(format!("{base}/runners"))
                        .header("authorization", &admin),
                )
                .await;
                seen = runners.to_string();
                if runners.as_array().is_some_and(|rs| {
                    rs.iter()
                        .any(|r| r["name"] == other && r["state"] == "unresponsive")
                }) {
                    found = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            found
        };
        assert!(unresponsive, "{other} is unresponsive within 10 s: {seen}");
        for _ in 0..2 {
            let (status, s) = create(
                &client,
                &base,
                &auth,
                json!({"image": "boxlite/busybox:latest"}),
            )
            .await;
            assert_eq!(status, 201, "{s}");
            let runner_of = |name: &str| {
                runners
                    .as_array()
                    .and_then(|rs| rs.iter().find(|r| r["name"] == name))
                    .map(|r| r["id"].clone())
                    .unwrap_or_default()
            };
            assert_eq!(
                s["runnerId"],
                runner_of(holder),
                "scheduled on {holder}: {s}"
            );
            let (status, gone) = call(
                client
                    .delete(format!("{base}/sandbox/{}", s["id"].as_str().unwrap_or("")))
                    .header("authorization", &auth),
            )
            .await;
            assert_eq!(status, 200, "{gone}");
        }
        let back = p.run_building(&["up"]);
        assert_eq!(back.code, 0, "{other} comes back: {}", back.text());

        let (status, deleted) = call(
            client
                .delete(format!("{base}/sandbox/{id}"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(status, 200, "{deleted}");
        assert_eq!(deleted["state"], "destroyed");
        assert!(
            mounts_of(&id).is_empty(),
            "no mount left: {:?}",
            mounts_of(&id)
        );
        assert!(
            !state
                .join("data")
                .join(holder)
                .join("sandboxes")
                .join(&id)
                .exists(),
            "its directory is gone"
        );
        let runc_root = state.join("data").join(holder).join("runc");
        let containers: Vec<_> = std::fs::read_dir(&runc_root)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !containers.iter().any(|c| c == id.as_str()),
            "runc forgot it: {containers:?}"
        );
    });

    // A hard reset takes the sandboxes with the schema: their runners are stopped, emptied and
    // started again, and the platform takes new sandboxes right after.
    let token = block_on(crate::control_plane::password_grant(
        &issuer,
        "test01@boxlite.dev",
    ));
    let auth = format!("Bearer {token}");
    let doomed = block_on(async {
        let (status, s) = create(
            &reqwest::Client::new(),
            &base,
            &auth,
            json!({"image": "boxlite/busybox:latest"}),
        )
        .await;
        assert_eq!(status, 201, "{s}");
        s["id"].as_str().expect("id").to_string()
    });
    let reset = p.run_building(&["reset", "--hard", "--yes"]);
    assert_eq!(reset.code, 0, "{}", reset.text());
    assert!(
        reset
            .stderr
            .contains("stop api, proxy, runner-a, runner-b and delete their data"),
        "the plan names the components: {}",
        reset.stderr
    );
    assert!(mounts_of(&doomed).is_empty(), "{:?}", mounts_of(&doomed));
    block_on(async {
        let client = reqwest::Client::new();
        let (status, list) = call(
            client
                .get(format!("{base}/sandbox"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(
            (status, list),
            (200, json!([])),
            "no sandbox survives a hard reset"
        );
        let (status, s) = create(
            &client,
            &base,
            &auth,
            json!({"image": "boxlite/busybox:latest"}),
        )
        .await;
        assert_eq!(status, 201, "runners take sandboxes again: {s}");
    });

    // A sandbox is left running: `down` stops it before its runner, leaving no mount.
    block_on(async {
        let client = reqwest::Client::new();
        let token = crate::control_plane::password_grant(&issuer, "test01@boxlite.dev").await;
        let (status, s) = create(
            &client,
            &base,
            &format!("Bearer {token}"),
            json!({"image": "boxlite/busybox:latest"}),
        )
        .await;
        assert_eq!(status, 201, "{s}");
    });
    let down = p.run_building(&["down"]);
    assert_eq!(down.code, 0, "{}", down.text());
    let state_text = state.display().to_string();
    let left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&state_text))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "mounts left after down: {left:?}");
    let running = p.processes("");
    assert!(
        running.is_empty(),
        "processes left after down:\n{}",
        crate::harness::describe(&running)
    );
}
