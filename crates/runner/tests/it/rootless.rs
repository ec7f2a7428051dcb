//! The runner run by an ordinary user (uid 65534, `nobody`): a sandbox's whole life through the
//! API, the runner's restarts, and nothing left behind. The test itself must be root, to start
//! the runner as another user (CI runs as root).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use reqwest::Method;
use serde_json::json;

use crate::support::{
    free_port, holder_pid, mounts_of, processes_in, read, skip_unless_root, unique, user_namespace,
    wait_for, ControlPlane, Registry, Runner,
};

/// The unprivileged user the runner runs as.
pub const NOBODY: u32 = 65534;

/// Why this machine cannot run a runner as `NOBODY`, if it cannot: not root (the test cannot
/// switch users), or no unprivileged user namespaces.
pub fn cannot_run_unprivileged() -> Option<String> {
    if skip_unless_root("an unprivileged runner") {
        return Some("needs root to start the runner as another user".into());
    }
    let probe = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "true",
        ])
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the kernel refuses unprivileged user namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run setpriv and unshare (util-linux): {e}")),
    }
}

/// How long from `POST /sandboxes` to the first exec's answer.
async fn create_to_exec(runner: &Runner, id: &str) -> Duration {
    let started = Instant::now();
    runner.create(id).await;
    assert_eq!(runner.exec(id, "true").await.0, 0);
    started.elapsed()
}

#[tokio::test]
async fn an_unprivileged_runner_runs_a_sandboxs_whole_life() {
    if let Some(why) = cannot_run_unprivileged() {
        eprintln!("an_unprivileged_runner_runs_a_sandboxs_whole_life: skipped: {why}");
        return;
    }
    let registry = Registry::with_busybox().await;
    let cp = ControlPlane::start(free_port()).await;
    let mut runner = Runner::start_as(&registry, cp.port, Some(NOBODY)).await;
    let home = runner.home.path().to_path_buf();
    let holder = holder_pid(&home).expect("the runner records its namespace holder");
    let userns = user_namespace(holder).expect("the holder runs");
    assert!(
        runner.log().contains("not root") && runner.log().contains("not applied"),
        "the runner says it is unprivileged and what that costs: {}",
        runner.log()
    );

    // Create, then exec: root inside (the runner's uid mapped), the sandbox's own hostname.
    let id = unique("rootless");
    let took = create_to_exec(&runner, &id).await;
    eprintln!("unprivileged runner: create (image pulled) to exec-ready took {took:?}");
    assert_eq!(
        runner.exec(&id, "id -u; uname -n").await,
        (0, format!("0\n{id}\n"), String::new())
    );

    // Files: upload, download, paths leaving the root refused, a symlink resolved inside it.
    let files = |path: &str| format!("/sandboxes/{id}/files?path={path}");
    let (status, body) = read(
        runner
            .call(Method::PUT, &files("/srv/note.txt"))
            .body("a note"),
    )
    .await;
    assert_eq!(
        (status, body),
        (200, json!({"path": "/srv/note.txt", "size": 6}))
    );
    let got = runner
        .call(Method::GET, &files("/srv/note.txt"))
        .send()
        .await
        .expect("download");
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.bytes().await.expect("bytes").as_ref(), b"a note");
    assert_eq!(runner.exec(&id, "cat /srv/note.txt").await.1, "a note");
    let (status, body) = read(runner.call(Method::GET, &files("/../../etc/passwd"))).await;
    assert_eq!(status, 400, "{body}");
    let host_file = home.join("holder.json");
    runner
        .exec(&id, &format!("ln -s {} /tmp/out", host_file.display()))
        .await;
    let (status, body) = read(runner.call(Method::GET, &files("/tmp/out"))).await;
    assert_eq!(status, 404, "the host's file is never read: {body}");

    // A server in the sandbox, reached through the runner from inside its network namespace.
    runner
        .exec(
            &id,
            "mkdir -p /www && echo hello-rootless > /www/index.html && httpd -p 8080 -h /www",
        )
        .await;
    let page = wait_for("httpd through the runner", Duration::from_secs(10), || {
        let req = runner.call(
            Method::GET,
            &format!("/sandboxes/{id}/ports/8080/index.html"),
        );
        async move {
            let r = req.send().await.ok()?;
            r.status().is_success().then_some(r.text().await.ok()?)
        }
    })
    .await;
    assert_eq!(page, "hello-rootless\n");
    let (status, body) = read(runner.call(Method::GET, &format!("/sandboxes/{id}/ports/9/"))).await;
    assert_eq!(status, 502, "nothing listens on 9: {body}");

    // Stop: nothing mounted or running; start: its files are back.
    let rootfs = home.join("sandboxes").join(&id);
    assert_eq!(
        runner
            .post(&format!("/sandboxes/{id}/stop"), json!(null))
            .await
            .0,
        200
    );
    assert_eq!(
        mounts_of(&holder.to_string(), &rootfs),
        Vec::<String>::new()
    );
    assert_eq!(runner.runc_state(), Vec::<String>::new());
    assert_eq!(
        processes_in(&userns),
        vec![holder],
        "only the holder is left"
    );
    assert_eq!(
        runner
            .post(&format!("/sandboxes/{id}/start"), json!(null))
            .await
            .0,
        200
    );
    assert_eq!(runner.exec(&id, "cat /srv/note.txt").await.1, "a note");

    // Killed, the runner leaves the sandbox running; the next one takes it (and the holder) back.
    runner
        .signal(Signal::SIGKILL, Duration::from_secs(10))
        .await;
    runner.restart().await;
    assert!(runner.log().contains("1 adopted"), "{}", runner.log());
    assert_eq!(
        holder_pid(&home),
        Some(holder),
        "the same holder is taken back"
    );
    assert_eq!(
        runner.exec(&id, "cat /srv/note.txt; uname -n").await.1,
        format!("a note{id}\n")
    );

    // Delete: no mount (neither in the holder's mount namespace nor the host's), no runc state,
    // no dir, no process but the holder.
    let (status, _) = read(runner.call(Method::DELETE, &format!("/sandboxes/{id}"))).await;
    assert_eq!(status, 204);
    assert_eq!(mounts_of(&holder.to_string(), &home), Vec::<String>::new());
    assert_eq!(mounts_of("self", &home), Vec::<String>::new());
    assert_eq!(runner.runc_state(), Vec::<String>::new());
    assert!(!rootfs.exists(), "the sandbox's dir is removed");
    assert_eq!(
        processes_in(&userns),
        vec![holder],
        "only the holder is left"
    );

    // A stop of the runner stops its sandboxes and ends the holder: no process is left at all;
    // the next start resumes the sandbox in a new holder.
    let kept = unique("rootless-kept");
    let took = create_to_exec(&runner, &kept).await;
    eprintln!("unprivileged runner: create (image cached) to exec-ready took {took:?}");
    runner.exec(&kept, "echo kept > /root/mark").await;
    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(
        status.success(),
        "exits 0 on SIGTERM: {status}\n{}",
        runner.log()
    );
    assert!(
        processes_in(&userns).is_empty(),
        "the holder and its sandboxes are gone"
    );
    assert_eq!(holder_pid(&home), None, "the holder's record is removed");
    assert_eq!(runner.runc_state(), Vec::<String>::new());
    runner.restart().await;
    assert!(runner.log().contains("1 resumed"), "{}", runner.log());
    assert_eq!(runner.exec(&kept, "cat /root/mark").await.1, "kept\n");
    let (status, _) = read(runner.call(Method::DELETE, &format!("/sandboxes/{kept}"))).await;
    assert_eq!(status, 204);
    let new_ns = holder_pid(&home)
        .and_then(user_namespace)
        .expect("a new holder");
    let status = runner
        .signal(Signal::SIGTERM, Duration::from_secs(30))
        .await;
    assert!(status.success(), "{status}");
    assert!(
        processes_in(&new_ns).is_empty(),
        "nothing left of the new holder"
    );
    assert_eq!(mounts_of("self", &home), Vec::<String>::new());
    assert_eq!(runner.sandbox_dirs(), Vec::<String>::new());
    assert_no_root_files(&home);

    // The same measure on a root runner, for comparison.
    let root_runner = Runner::start(&registry, cp.port).await;
    let took = create_to_exec(&root_runner, &unique("rooted")).await;
    eprintln!("root runner: create (image pulled) to exec-ready took {took:?}");
    let took = create_to_exec(&root_runner, &unique("rooted")).await;
    eprintln!("root runner: create (image cached) to exec-ready took {took:?}");
    cp.stop().await;
}

/// Everything the unprivileged runner wrote under its home is its own (the test's log aside):
/// nothing it made needs root to remove.
fn assert_no_root_files(home: &Path) {
    use std::os::unix::fs::MetadataExt;
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.uid() != NOBODY && !path.ends_with("runner.log") {
                out.push(path.display().to_string());
            }
            if meta.is_dir() {
                walk(&path, out);
            }
        }
    }
    let mut foreign = Vec::new();
    walk(home, &mut foreign);
    assert_eq!(
        foreign,
        Vec::<String>::new(),
        "files not owned by the runner's user"
    );
}
