//! Backups, restores and moves of sandboxes between runners, end to end: the default stack with
//! the control plane, both runners and Garage, driven through Caddy with real clients. A backup
//! to S3 and its listing; a restore that replaces the disk (refused without `replace`); a move
//! to the other runner keeping the id, the files (checked by hash) and a preview URL handed out
//! before it; a drain; and the control plane SIGKILLed in the middle of a move, after which the
//! sandbox is on exactly one runner, in a known state.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{block_on, default_platform, is_root};

/// A caller of the control plane through Caddy.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    user: String,
    admin: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        auth: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("authorization", auth);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request through caddy");
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.expect("body");
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, &self.user.clone(), Some(body))
            .await
    }

    async fn admin_post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, &self.admin.clone(), Some(body))
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, &self.user.clone(), None)
            .await
    }

    /// Runs `command` in sandbox `id`; its stdout.
    async fn exec(&self, id: &str, command: &str) -> String {
        let (status, out) = self
            .post(
                &format!("/toolbox/{id}/toolbox/process/execute"),
                json!({ "command": command, "timeout": 120 }),
            )
            .await;
        assert_eq!(status, 200, "{command}: {out}");
        assert_eq!(out["exitCode"], 0, "{command}: {out}");
        out["result"].as_str().unwrap_or_default().to_string()
    }

    /// The runners, name -> (id, state).
    async fn runners(&self) -> BTreeMap<String, (String, String)> {
        let (status, rs) = self
            .call(reqwest::Method::GET, "/runners", &self.admin.clone(), None)
            .await;
        assert_eq!(status, 200, "{rs}");
        rs.as_array()
            .expect("runners")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_string(),
                    (
                        r["id"].as_str().unwrap_or_default().to_string(),
                        r["state"].as_str().unwrap_or_default().to_string(),
                    ),
                )
            })
            .collect()
    }

    /// The name of the runner holding sandbox `id`.
    async fn holder(&self, id: &str) -> String {
        let (status, sb) = self.get(&format!("/sandbox/{id}")).await;
        assert_eq!(status, 200, "{sb}");
        let runner = sb["runnerId"].as_str().unwrap_or_default().to_string();
        self.runners()
            .await
            .into_iter()
            .find(|(_, (rid, _))| *rid == runner)
            .map(|(name, _)| name)
            .unwrap_or_else(|| panic!("sandbox {id} is on no known runner: {sb}"))
    }
}

/// Does runner `port` hold sandbox `id` (asked with the runner token)?
async fn runner_has(port: u16, token: &str, id: &str) -> bool {
    let resp = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/sandboxes/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("runner answers");
    match resp.status().as_u16() {
        200 => true,
        404 => false,
        other => panic!("runner on {port} answered {other} for {id}"),
    }
}

fn other(runner: &str) -> &'static str {
    if runner == "runner-a" {
        "runner-b"
    } else {
        "runner-a"
    }
}

#[test]
fn sandboxes_are_backed_up_restored_and_moved_between_runners_with_nothing_lost() {
    if !is_root() {
        eprintln!("skipped: runners run sandboxes with runc, which needs root here");
        return;
    }
    let (p, ports) = default_platform("migration", &["api", "proxy", "runner-a", "runner-b"]);
    let up = p.run_building(&["up"]);
    assert_eq!(up.code, 0, "{}", up.text());
    let env = p.run_building(&["env", "--json"]).json();
    let caddy = ports["caddy"];
    let runner_port = |name: &str| {
        ports[if name == "runner-a" {
            "runner-a"
        } else {
            "runner-b"
        }]
    };
    let runner_token = env["RUNNER_TOKEN"]
        .as_str()
        .expect("RUNNER_TOKEN")
        .to_string();
    let issuer = env["OIDC_ISSUER"].as_str().expect("issuer").to_string();

    block_on(async {
        let token = crate::control_plane::password_grant(&issuer, "test01@boxlite.dev").await;
        let api = Api {
            client: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{caddy}/api"),
            user: format!("Bearer {token}"),
            admin: format!(
                "Bearer {}",
                env["ADMIN_API_KEY"].as_str().expect("ADMIN_API_KEY")
            ),
        };
        let (status, sb) = api
            .post(
                "/sandbox",
                json!({"name": "mover", "image": "boxlite/busybox:latest"}),
            )
            .await;
        assert_eq!(status, 201, "{sb}");
        let id = sb["id"].as_str().expect("id").to_string();
        api.exec(&id, "mkdir -p /srv /data && echo 'hello from the sandbox' > /srv/index.html && dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null").await;
        let hashes = "sha256sum /srv/index.html /data/blob";
        let before = api.exec(&id, hashes).await;

        // A backup: recorded, listed, its object in S3 under the sandbox's id.
        let (status, backup) = api.post(&format!("/sandbox/{id}/backup"), json!({})).await;
        assert_eq!(status, 201, "{backup}");
        let key = backup["objectKey"].as_str().expect("objectKey").to_string();
        assert!(
            key.starts_with(&format!("{id}/")) && key.ends_with(".boxlite"),
            "{backup}"
        );
        assert!(
            backup["sha256"]
                .as_str()
                .is_some_and(|s| s.starts_with("sha256:")),
            "{backup}"
        );
        assert!(
            backup["sizeBytes"]
                .as_i64()
                .is_some_and(|n| n > 8 << 20 >> 1),
            "{backup}"
        );
        // `stack box verify` reads it from S3 as a stream and checks every member.
        let verified = p.run(&["--json", "box", "verify", &format!("s3://backups/{key}")]);
        assert_eq!(verified.code, 0, "{}", verified.text());
        assert_eq!(verified.json()["boxId"], id.as_str(), "{}", verified.text());
        let missing = p.run(&[
            "box",
            "verify",
            &format!("s3://backups/{id}/missing.boxlite"),
        ]);
        assert_eq!(missing.code, 1, "{}", missing.text());
        assert!(
            missing.stderr.contains("cannot read s3://backups/"),
            "{}",
            missing.text()
        );
        let (status, list) = api.get(&format!("/sandbox/{id}/backups")).await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["backupId"], backup["backupId"]);
        // The sandbox kept running through it.
        assert_eq!(
            api.get(&format!("/sandbox/{id}")).await.1["state"],
            "started"
        );

        // A restore replaces the whole disk: refused without `replace`, then done with it.
        api.exec(&id, "echo later > /srv/later.txt && rm /srv/index.html")
            .await;
        let (status, refused) = api
            .post(
                &format!("/sandbox/{id}/restore"),
                json!({"backupId": backup["backupId"]}),
            )
            .await;
        assert_eq!(status, 409, "{refused}");
        assert!(
            refused["error"]
                .as_str()
                .is_some_and(|e| e.contains("replace")),
            "{refused}"
        );
        let (status, restored) = api
            .post(
                &format!("/sandbox/{id}/restore"),
                json!({"backupId": backup["backupId"], "replace": true}),
            )
            .await;
        assert_eq!(status, 200, "{restored}");
        assert_eq!(restored["state"], "started", "{restored}");
        assert_eq!(
            api.exec(&id, hashes).await,
            before,
            "the backup's files, byte for byte"
        );
        assert_eq!(
            api.exec(&id, "ls /srv").await,
            "index.html\n",
            "nothing written after it"
        );
        let (status, missing) = api
            .post(
                &format!("/sandbox/{id}/restore"),
                json!({"backupId": 999999, "replace": true}),
            )
            .await;
        assert_eq!(status, 404, "{missing}");

        // A preview URL handed out before the move keeps working after it.
        api.exec(&id, "busybox httpd -p 8080 -h /srv").await;
        let (status, preview) = api
            .get(&format!("/sandbox/{id}/ports/8080/signed-preview-url"))
            .await;
        assert_eq!(status, 200, "{preview}");
        let host = format!(
            "8080-{}.localhost:{caddy}",
            preview["token"].as_str().expect("token")
        );
        let page = || async {
            let resp = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{caddy}/"))
                .header("host", &host)
                .send()
                .await
                .expect("preview request");
            (
                resp.status().as_u16(),
                resp.text().await.unwrap_or_default(),
            )
        };
        assert_eq!(page().await, (200, "hello from the sandbox\n".to_string()));

        // Only the admin moves sandboxes.
        let from = api.holder(&id).await;
        let to = other(&from);
        let (status, _) = api
            .post(&format!("/sandbox/{id}/migrate"), json!({"runner": to}))
            .await;
        assert_eq!(status, 403);
        let (status, moved) = api
            .admin_post(&format!("/sandbox/{id}/migrate"), json!({"runner": to}))
            .await;
        assert_eq!(status, 200, "{moved}");
        assert_eq!(
            (moved["from"].as_str(), moved["to"].as_str()),
            (Some(from.as_str()), Some(to))
        );
        assert_eq!(moved["state"], "started");
        assert_eq!(moved["previews"], 1, "{moved}");
        assert_eq!(api.holder(&id).await, to);
        assert!(runner_has(runner_port(to), &runner_token, &id).await);
        assert!(
            !runner_has(runner_port(&from), &runner_token, &id).await,
            "the source's copy is gone"
        );
        assert_eq!(api.exec(&id, hashes).await, before, "moved byte for byte");
        assert_eq!(
            api.exec(&id, "hostname").await,
            format!("{id}\n"),
            "same id inside"
        );
        // Processes do not move (the sandbox starts again on its new runner): start the server
        // again, and the old URL reaches it there.
        api.exec(&id, "busybox httpd -p 8080 -h /srv").await;
        assert_eq!(page().await, (200, "hello from the sandbox\n".to_string()));
        let (status, same) = api
            .admin_post(&format!("/sandbox/{id}/migrate"), json!({"runner": to}))
            .await;
        assert_eq!(status, 409, "{same}");

        // A drain moves it back and leaves the runner disabled; other runners' sandboxes are
        // not touched; an enabled runner takes sandboxes again.
        let (status, drained) = api
            .admin_post(&format!("/runners/{to}/drain"), json!({}))
            .await;
        assert_eq!(status, 200, "{drained}");
        assert_eq!(drained["state"], "disabled", "{drained}");
        assert_eq!(
            drained["migrated"].as_array().map(Vec::len),
            Some(1),
            "{drained}"
        );
        assert_eq!(api.holder(&id).await, from);
        assert_eq!(api.runners().await[to].1, "disabled");
        assert_eq!(api.exec(&id, hashes).await, before);
        let (status, enabled) = api
            .admin_post(&format!("/runners/{to}/enable"), json!({}))
            .await;
        assert_eq!(status, 200, "{enabled}");
        assert_eq!(enabled["state"], "ready", "{enabled}");

        // The control plane SIGKILLed in the middle of a move: once it is back, the sandbox is
        // on exactly one runner, started, with its files.
        api.exec(
            &id,
            "dd if=/dev/urandom of=/data/big bs=1M count=64 2>/dev/null",
        )
        .await;
        let hashes = "sha256sum /srv/index.html /data/blob /data/big";
        let before = api.exec(&id, hashes).await;
        let database = env["DATABASE_URL"]
            .as_str()
            .expect("DATABASE_URL")
            .to_string();
        let mover = api.clone();
        let (sid, target) = (id.clone(), to.to_string());
        let call = tokio::spawn(async move {
            mover
                .admin_post(
                    &format!("/sandbox/{sid}/migrate"),
                    json!({"runner": target}),
                )
                .await
        });
        let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&database)
            .await
            .expect("psql");
        let started = Instant::now();
        let phase = loop {
            let phase: Option<String> = sqlx::query_scalar(
                "SELECT phase FROM sandbox_migrations WHERE sandbox_id = $1::uuid AND phase IN ('backup', 'restore') ORDER BY id DESC LIMIT 1",
            )
            .bind(&id)
            .fetch_optional(&mut db)
            .await
            .expect("ledger");
            if let Some(phase) = phase {
                break phase;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the move never started"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        p.kill_and_await_restart("api");
        let _ = call.await;
        let settled = {
            let mut last = Value::Null;
            for _ in 0..300 {
                let (_, sb) = api.get(&format!("/sandbox/{id}")).await;
                if sb["state"] != "restoring" {
                    last = sb;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            last
        };
        assert_eq!(
            settled["state"], "started",
            "killed in phase {phase}: {settled}"
        );
        let holder = api.holder(&id).await;
        let on: Vec<bool> = [
            runner_has(runner_port("runner-a"), &runner_token, &id).await,
            runner_has(runner_port("runner-b"), &runner_token, &id).await,
        ]
        .to_vec();
        assert_eq!(
            on.iter().filter(|h| **h).count(),
            1,
            "killed in phase {phase}: on {on:?}"
        );
        assert!(runner_has(runner_port(&holder), &runner_token, &id).await);
        assert_eq!(
            api.exec(&id, hashes).await,
            before,
            "killed in phase {phase}"
        );
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sandbox_migrations WHERE phase IN ('backup', 'restore', 'cleanup')",
        )
        .fetch_one(&mut db)
        .await
        .expect("ledger");
        assert_eq!(open, 0, "every move settled");
        eprintln!("control plane killed in phase {phase}: the sandbox ended on {holder}");
    });
    // The rehearsal a user runs: the same round trip from the command line, proven by hash.
    let r = p.run(&[
        "--json",
        "rehearse",
        "migration",
        "--sandboxes",
        "2",
        "--size",
        "4",
    ]);
    assert_eq!(r.code, 0, "{}", r.text());
    let report = r.json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
    assert_eq!(
        report["moves"].as_array().map(Vec::len),
        Some(4),
        "{report}"
    );
    let phases = crate::harness::fields(&report, "phases", "name");
    assert_eq!(
        phases,
        ["runners", "create", "write", "migrate", "verify", "back", "verify", "cleanup"]
    );
    let r = p.run(&["rehearse", "migration", "--sandboxes", "0"]);
    assert_eq!(r.code, 2, "{}", r.text());

    // The backup rehearsal on the whole platform: identical data at rest, and afterwards the
    // admin API key `stack env` gives is still the one the restored database knows.
    // It starts the components again after the nuke: they are built (nothing changed, so
    // cargo only checks) where the test built them.
    let r = p.run_building(&["rehearse", "backup", "--yes"]);
    assert_eq!(r.code, 0, "{}", r.text());
    let after = p.run(&["env", "--json"]).json();
    assert_eq!(after["ADMIN_API_KEY"], env["ADMIN_API_KEY"], "the same key");
    let status = block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{caddy}/api/runners"))
            .bearer_auth(after["ADMIN_API_KEY"].as_str().unwrap_or_default())
            .send()
            .await
            .expect("through caddy")
            .status()
            .as_u16()
    });
    assert_eq!(status, 200, "the admin key works after the round trip");
    let down = p.run(&["down"]);
    assert_eq!(down.code, 0, "{}", down.text());
}
