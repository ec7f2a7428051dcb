//! The BoxLite box driver (runner built with `--features microvm`): how the runner picks it from
//! the host's boot-probe verdict, and a sandbox's life in a real box where boxes boot. On hosts
//! where no guest boots (`kvm-pvm`, our CI) the booting test is skipped, printing the verdict's
//! reason; the choice of driver is tested everywhere, with verdicts written by the test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::Method;
use sandbox::verdict;
use serde_json::json;

use crate::support::{free_port, read, skip_unless_root, unique, wait_for, Registry, Runner};

/// The reason a failed verdict gives on a `kvm-pvm` host (what `stack` writes there).
const PVM: &str = "this host's KVM is `kvm-pvm`, a software nested hypervisor that cannot run a stock guest kernel";

/// A verdict file for this very host boot, as `stack` caches it.
fn verdict_file(dir: &std::path::Path, ok: bool, reason: &str) -> PathBuf {
    let path = dir.join("boot-probe.json");
    let v = json!({
        "ok": ok, "reason": reason, "fix": "", "elapsed_ms": 13412,
        "boot_id": verdict::current_boot_id(), "boxlite": verdict::BOXLITE_VERSION,
        "at": "2026-12-01T01:40:02Z",
    });
    std::fs::write(&path, v.to_string()).expect("write the verdict");
    path
}

/// Asked for explicitly where boxes cannot boot, the runner does not start: it exits 78
/// (EX_CONFIG) at once, naming the verdict's reason and runc as the way out.
#[test]
fn microvm_where_boxes_cannot_boot_refuses_to_start_with_the_reason() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let probe = verdict_file(tmp.path(), false, PVM);
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUNNER_NAME", "rt-microvm")
        .env("RUNNER_PORT", free_port().to_string())
        .env("RUNNER_HOME", tmp.path().join("home"))
        .env("RUNNER_TOKEN", crate::support::TOKEN)
        .env("CONTROL_PLANE_URL", "http://127.0.0.1:9")
        .env("REGISTRY_URL", "http://127.0.0.1:9")
        .env("RUNNER_DRIVER", "microvm")
        .env("RUNNER_BOOT_PROBE", &probe)
        .stdin(Stdio::null())
        .output()
        .expect("run the runner");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "runner: cannot start: RUNNER_DRIVER=microvm, but boxes cannot boot on this host: {PVM}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("fix: set RUNNER_DRIVER=runc"), "{stderr}");
    assert!(
        !tmp.path().join("home").exists(),
        "nothing was started on the home"
    );
}

/// `auto` (the default) where the verdict says boxes cannot boot: the runner starts on runc,
/// says so with the reason, and reports its driver in `/health`.
#[tokio::test]
async fn auto_runs_runc_where_boxes_cannot_boot_and_says_why() {
    if skip_unless_root("auto_runs_runc_where_boxes_cannot_boot_and_says_why") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let probe = verdict_file(tmp.path(), false, PVM);
    let probe = probe.display().to_string();
    // No sandbox is created: the registry is never asked.
    let runner = Runner::start_with(
        "127.0.0.1:9",
        free_port(),
        None,
        &[("RUNNER_BOOT_PROBE", &probe)],
    )
    .await;
    let (status, health) = runner.get("/health").await;
    assert_eq!(
        (status, &health["driver"]),
        (200, &json!("runc")),
        "{health}"
    );
    let log = runner.log();
    assert!(
        log.contains(&format!(
            "sandboxes on runc (boxes cannot boot on this host: {PVM})"
        )),
        "{log}"
    );
}

/// Where the verdict lives: `STACK_BOOT_PROBE`, or the repository's own stack state dir (where
/// `stack up` and `stack doctor` in this checkout cache it).
fn host_verdict_path() -> PathBuf {
    std::env::var_os("STACK_BOOT_PROBE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.stack/boxlite/boot-probe.json"),
        PathBuf::from,
    )
}

/// A sandbox's life in a real BoxLite box through the runner: create from the stack's registry,
/// exec, files, stop and start, delete, with nothing left. Runs where this host boot's verdict
/// says boxes boot; elsewhere it is skipped with the verdict's reason.
#[tokio::test]
async fn a_boxlite_sandbox_lives_and_is_deleted_through_the_runner() {
    const TEST: &str = "a BoxLite sandbox through the runner";
    let path = host_verdict_path();
    let v = match verdict::read(&path, &verdict::current_boot_id()) {
        Ok(v) if v.ok => v,
        Ok(v) => {
            eprintln!(
                "skipped: {TEST} (boxes cannot boot on this host: {})",
                v.reason
            );
            return;
        }
        Err(e) => {
            eprintln!("skipped: {TEST} (whether boxes boot here is unknown: {e})");
            return;
        }
    };
    eprintln!("boot probe passed at {}: running {TEST}", v.at);
    if skip_unless_root(TEST) {
        return;
    }
    let registry = Registry::with_busybox().await;
    let probe = path.display().to_string();
    let runner = Runner::start_with(
        &registry.host,
        free_port(),
        None,
        &[("RUNNER_DRIVER", "microvm"), ("RUNNER_BOOT_PROBE", &probe)],
    )
    .await;
    assert_eq!(runner.get("/health").await.1["driver"], "microvm");
    let id = unique("mv");
    let (status, created) = runner
        .post("/sandboxes", json!({"id": id, "image": "boxlite/busybox:latest", "cpu": 1, "memoryMib": 256, "env": {"GREETING": "hi"}}))
        .await;
    assert_eq!(status, 201, "{created}\n{}", runner.log());
    assert_eq!(created["state"], "started");

    let (status, out) = runner
        .post(&format!("/sandboxes/{id}/exec"), json!({"command": "echo $GREETING $EXTRA; pwd; echo err >&2; exit 3", "cwd": "/tmp", "env": {"EXTRA": "there"}, "timeout": 30}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out,
        json!({"exitCode": 3, "result": "hi there\n/tmp\n", "stderr": "err\n"})
    );
    // Past its timeout a command is killed and answered as timeout(1) does.
    let (status, body) = runner
        .post(
            &format!("/sandboxes/{id}/exec"),
            json!({"command": "sleep 30", "timeout": 1}),
        )
        .await;
    assert_eq!((status, &body["exitCode"]), (200, &json!(124)), "{body}");

    let files = |path: &str| format!("/sandboxes/{id}/files?path={path}");
    let bytes: Vec<u8> = (0..=255u8).collect();
    let (status, written) = read(
        runner
            .call(Method::PUT, &files("/srv/bin.dat"))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(
        (status, written),
        (200, json!({"path": "/srv/bin.dat", "size": 256}))
    );
    let got = runner
        .call(Method::GET, &files("/srv/bin.dat"))
        .send()
        .await
        .expect("download");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.expect("body").to_vec(), bytes);
    let (status, _) = read(runner.call(Method::GET, &files("/etc/../etc/passwd"))).await;
    assert_eq!(status, 400);
    let (status, _) = read(runner.call(Method::GET, &files("/nope"))).await;
    assert_eq!(status, 404);

    // Stopped, it keeps its files; started again, it has them.
    let (status, _) = runner
        .post(&format!("/sandboxes/{id}/stop"), json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = runner
        .post(&format!("/sandboxes/{id}/exec"), json!({"command": "true"}))
        .await;
    assert_eq!(status, 409);
    let (status, started) = runner
        .post(&format!("/sandboxes/{id}/start"), json!({}))
        .await;
    assert_eq!((status, &started["state"]), (200, &json!("started")));
    assert_eq!(
        runner.exec(&id, "wc -c < /srv/bin.dat").await.1.trim(),
        "256"
    );

    let (status, _) = read(runner.call(Method::DELETE, &format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 204);
    assert_eq!(runner.get("/sandboxes").await.1, json!([]));
    assert!(
        runner.sandbox_dirs().is_empty(),
        "{:?}",
        runner.sandbox_dirs()
    );
    // BoxLite keeps each box's disks and logs in `boxes/<box id>/`: removed with the box.
    let boxes = runner.home.path().join("boxlite/boxes");
    wait_for(
        "the box's files to be gone",
        Duration::from_secs(30),
        || {
            let left = boxes.read_dir().map_or(0, |d| d.count());
            async move { (left == 0).then_some(()) }
        },
    )
    .await;
}
