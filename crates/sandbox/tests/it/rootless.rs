//! The driver run by an ordinary user (uid 65534, `nobody`): the test, as root, pushes an image
//! with whiteouts and an opaque dir and runs this very test binary again as that user, filtered
//! to this test with [`CHILD`] set; the child drives a sandbox's whole life through the library,
//! then the parent checks, as root, that nothing is left.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sandbox::{CreateOptions, Driver, FileError, Home, ImageRef, SandboxError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    busybox_config, busybox_layer, driver_config, sh_ok, skip_unless_root, unique_id, wait_for,
    Registry, TarBuilder,
};

/// Set in the child run as `nobody`: `<registry host> <home>`.
const CHILD: &str = "SANDBOX_ROOTLESS_CHILD";
const NOBODY: u32 = 65534;
const TEST: &str = "rootless::an_unprivileged_driver_runs_a_sandboxs_whole_life";

/// A second layer over busybox: a whiteout, an opaque dir, a read-only dir.
fn layers() -> Vec<Vec<u8>> {
    let mut base = TarBuilder::default();
    let mut lower = busybox_layer();
    // The busybox tar's end-of-archive blocks go; these entries and new ones follow.
    lower.truncate(lower.len() - 1024);
    base.dir("data", 0o755)
        .file("data/old.txt", 0o644, b"old")
        .file("data/kept.txt", 0o644, b"kept")
        .dir("opaque", 0o755)
        .file("opaque/a.txt", 0o644, b"a");
    lower.extend(base.finish());
    let upper = TarBuilder::default()
        .dir("data", 0o755)
        .file("data/.wh.old.txt", 0o644, b"")
        .dir("opaque", 0o755)
        .file("opaque/.wh..wh..opq", 0o644, b"")
        .file("opaque/b.txt", 0o644, b"b")
        .dir("ro", 0o555)
        .file("ro/f", 0o444, b"read-only")
        .finish();
    vec![lower, upper]
}

/// Why this machine cannot run the driver as `nobody`, if it cannot.
fn cannot_run_unprivileged() -> Option<String> {
    if skip_unless_root("an unprivileged driver") {
        return Some("needs root to run the test again as another user".into());
    }
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "the kernel refuses unprivileged user namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare (util-linux): {e}")),
    }
}

#[tokio::test]
async fn an_unprivileged_driver_runs_a_sandboxs_whole_life() {
    if let Ok(args) = std::env::var(CHILD) {
        let (registry, home) = args.split_once(' ').expect("`<registry> <home>`");
        return as_nobody(registry, Path::new(home)).await;
    }
    if let Some(why) = cannot_run_unprivileged() {
        eprintln!("{TEST}: skipped: {why}");
        return;
    }
    let registry = Registry::start().await;
    registry
        .push_image("test/layered", "1", &layers(), busybox_config())
        .await;
    let home = tempfile::tempdir().expect("home");
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).expect("chown home");
    let _cleanup = Cleanup(home.path().to_path_buf());
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args([TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD,
            format!("{} {}", registry.host, home.path().display()),
        )
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test binary as nobody");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the child failed: {}",
        out.status
    );

    // Nothing left on the host: no mount under the home, no holder, no runc state, every file
    // the driver made is its user's.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&home.path().display().to_string()),
        "a mount is left"
    );
    assert!(
        !home.path().join("holder.json").exists(),
        "the holder is ended"
    );
    assert_eq!(
        crate::support::entries(&home.path().join("runc")),
        Vec::<String>::new()
    );
    assert_eq!(
        crate::support::entries(&home.path().join("sandboxes")),
        Vec::<String>::new()
    );
    let mut foreign = Vec::new();
    owned_by_others(home.path(), &mut foreign);
    assert_eq!(
        foreign,
        Vec::<PathBuf>::new(),
        "files not owned by the driver's user"
    );
}

/// Kills, when the test ends, whatever a failed child left running under the home: each init
/// runc recorded and the holder, each checked by its start time (the mounts go with the holder's
/// mount namespace).
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut records: Vec<PathBuf> = vec![self.0.join("holder.json")];
        for id in crate::support::entries(&self.0.join("runc")) {
            records.push(self.0.join("runc").join(id).join("state.json"));
        }
        for record in records {
            let Ok(json) = std::fs::read(&record) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
                continue;
            };
            let pid = v["pid"].as_i64().or(v["init_process_pid"].as_i64());
            let start = v["start"].as_u64().or(v["init_process_start"].as_u64());
            if let (Some(pid), Some(start)) = (pid, start) {
                if started_at(pid as i32) == Some(start) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Field 22 of /proc/<pid>/stat: the process's start time.
fn started_at(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

fn owned_by_others(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.uid() != NOBODY {
            out.push(path.clone());
        }
        if meta.is_dir() {
            owned_by_others(&path, out);
        }
    }
}

/// Mount points under `prefix` in the mount namespace of process `pid`.
fn mounts_of(pid: i32, prefix: &Path) -> Vec<String> {
    let prefix = prefix.display().to_string();
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .expect("the holder's mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// The child's part, as `nobody`.
async fn as_nobody(registry: &str, home: &Path) {
    assert!(
        !nix::unistd::geteuid().is_root(),
        "the child runs as nobody"
    );
    let driver = Driver::open(Home::new(home), driver_config()).expect("driver");
    assert!(driver.is_rootless());
    let holder = driver.holder_pid().expect("a namespace holder");
    let reference = ImageRef::parse(&format!("{registry}/test/layered:1")).expect("reference");
    let image = driver.images().pull(&reference).await.expect("pull").image;
    let id = unique_id("rootless");
    let started = std::time::Instant::now();
    driver
        .create(&id, &image, &CreateOptions::default())
        .await
        .expect("create");
    assert_eq!(
        sh_ok(&driver, &id, "id -u; uname -n").await,
        format!("0\n{id}\n")
    );
    eprintln!(
        "unprivileged driver: create to exec-ready took {:?}",
        started.elapsed()
    );

    // The layers as overlayfs shows them: the whiteout hides, the opaque dir hides what is below.
    assert_eq!(
        sh_ok(&driver, &id, "ls /data; ls /opaque; cat /ro/f").await,
        "kept.txt\nb.txt\nread-only"
    );

    // Files, and a path leaving the root refused.
    driver
        .write_file(&id, "/srv/note.txt", b"a note".to_vec(), 0o644)
        .await
        .expect("write");
    assert_eq!(
        driver
            .read_file(&id, "/srv/note.txt", 1 << 20)
            .await
            .expect("read"),
        b"a note"
    );
    assert_eq!(sh_ok(&driver, &id, "cat /srv/note.txt").await, "a note");
    let escape = driver.read_file(&id, "/../../etc/passwd", 1 << 20).await;
    assert!(
        matches!(escape, Err(SandboxError::File(_, FileError::Escape(_)))),
        "{escape:?}"
    );

    // A server in the sandbox, reached from inside its network namespace.
    sh_ok(
        &driver,
        &id,
        "mkdir -p /www && echo hi > /www/index.html && busybox httpd -p 8080 -h /www",
    )
    .await;
    let page = wait_for("httpd in the sandbox", Duration::from_secs(10), || async {
        let mut s = driver
            .connect(&id, 8080, Duration::from_secs(2))
            .await
            .ok()?;
        s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
            .await
            .ok()?;
        let mut page = String::new();
        s.read_to_string(&mut page).await.ok()?;
        Some(page)
    })
    .await;
    assert!(
        page.starts_with("HTTP/1.") && page.ends_with("hi\n"),
        "{page}"
    );
    let refused = driver.connect(&id, 9, Duration::from_secs(2)).await;
    assert!(matches!(refused, Err(SandboxError::Net(..))), "{refused:?}");

    // Stop and start: the files are kept.
    driver
        .stop(&id, Duration::from_secs(3))
        .await
        .expect("stop");
    assert_eq!(mounts_of(holder, home), Vec::<String>::new());
    driver.start(&id).await.expect("start");
    assert_eq!(sh_ok(&driver, &id, "cat /srv/note.txt").await, "a note");

    // A new driver on the home takes the same holder and the running sandbox back.
    drop(driver);
    let driver = Driver::open(Home::new(home), driver_config()).expect("a new driver");
    assert_eq!(driver.holder_pid(), Some(holder));
    let adoption = driver.adopt().await.expect("adopt");
    assert_eq!(adoption.sandboxes.len(), 1);
    assert_eq!(adoption.sandboxes[0].id, id);
    assert_eq!(sh_ok(&driver, &id, "uname -n").await, format!("{id}\n"));
    let init = adoption.sandboxes[0].pid;

    // Delete: no mount in the holder's namespace, no runc state, no dir, no process.
    sh_ok(
        &driver,
        &id,
        "mkdir -p /tmp/locked/deep && chmod 0 /tmp/locked",
    )
    .await;
    driver.delete(&id).await.expect("delete");
    assert_eq!(mounts_of(holder, home), Vec::<String>::new());
    assert!(
        !home.join("runc").join(id.as_str()).exists(),
        "runc state left"
    );
    assert!(
        !home.join("sandboxes").join(id.as_str()).exists(),
        "dir left"
    );
    assert!(is_gone(init as i32), "the init is gone");
    // Nothing runs in it: the holder goes, and the next driver starts a new one.
    assert!(driver.release().await.expect("release"));
    assert!(is_gone(holder), "the holder is gone");

    // A holder killed under a running sandbox: the next driver starts a new one, and the
    // sandbox, out of its reach, is killed and kept stopped, to be started in the new one.
    let driver = Driver::open(Home::new(home), driver_config()).expect("a driver");
    let holder = driver.holder_pid().expect("a new holder");
    let id = unique_id("orphaned");
    driver
        .create(&id, &image, &CreateOptions::default())
        .await
        .expect("create");
    sh_ok(&driver, &id, "echo kept > /root/mark").await;
    let init = driver.state(&id).await.expect("state").expect("exists").pid;
    drop(driver);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the holder");
    wait_for(
        "the killed holder to exit",
        Duration::from_secs(5),
        || async { is_gone(holder).then_some(()) },
    )
    .await;
    let driver = Driver::open(Home::new(home), driver_config()).expect("a driver");
    assert_ne!(driver.holder_pid(), Some(holder), "a new holder");
    assert!(is_gone(init as i32), "the unreachable sandbox is killed");
    let adoption = driver.adopt().await.expect("adopt");
    assert_eq!(adoption.stopped, vec![id.clone()], "{adoption:?}");
    driver.start(&id).await.expect("start in the new holder");
    assert_eq!(sh_ok(&driver, &id, "cat /root/mark").await, "kept\n");
    driver.delete(&id).await.expect("delete");
    assert!(driver.release().await.expect("release"));
}

/// Has process `pid` exited (gone, or a zombie its parent has not reaped)?
fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}
