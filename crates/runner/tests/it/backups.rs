//! Backups of sandboxes to a real Garage and their restore on a second runner (a second home),
//! with the real registry and runc: content hashes across the round trip, pruning, refusals
//! (a corrupted object, another box's backup, an existing id), S3 dying mid-upload, a runner
//! killed mid-restore, and a backup under constant writes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{unique, wait_for, ControlPlane, Registry, Runner};

const BUCKET: &str = "backups";

/// Garage with the backups bucket, a registry with busybox, a control plane, and `runners`
/// runners backing up to that Garage; `None` when not root.
struct Bed {
    garage: testbed::Garage,
    registry: Registry,
    _cp: ControlPlane,
    runners: Vec<Runner>,
}

impl Bed {
    async fn start(runners: usize) -> Option<Bed> {
        let thread = std::thread::current();
        if testbed::skip_unless_root(thread.name().unwrap_or("a backup test")) {
            return None;
        }
        let garage = tokio::task::spawn_blocking(|| testbed::Garage::start(&[BUCKET]))
            .await
            .expect("garage");
        let registry = Registry::with_busybox().await;
        let cp = ControlPlane::start(testbed::free_port()).await;
        let mut bed = Bed {
            garage,
            registry,
            _cp: cp,
            runners: Vec::new(),
        };
        for _ in 0..runners {
            let r = bed.runner().await;
            bed.runners.push(r);
        }
        Some(bed)
    }

    async fn runner(&self) -> Runner {
        self.runner_as(None).await
    }

    /// A runner run as `uid` (as root for `None`).
    async fn runner_as(&self, uid: Option<u32>) -> Runner {
        let endpoint = self.garage.endpoint();
        let env = [
            ("RUNNER_S3_ENDPOINT", endpoint.as_str()),
            ("RUNNER_S3_REGION", testbed::garage::REGION),
            ("RUNNER_S3_ACCESS_KEY_ID", testbed::garage::ACCESS_KEY),
            ("RUNNER_S3_SECRET_ACCESS_KEY", testbed::garage::SECRET_KEY),
        ];
        Runner::start_with(&self.registry.host, self._cp.port, uid, &env).await
    }

    fn store(&self) -> objectstore::Store {
        objectstore::Store::new(
            &self.garage.endpoint(),
            testbed::garage::REGION,
            testbed::garage::ACCESS_KEY,
            testbed::garage::SECRET_KEY,
        )
    }

    async fn keys(&self, id: &str) -> Vec<String> {
        let objects = self
            .store()
            .list(BUCKET, &format!("{id}/"))
            .await
            .expect("list");
        objects.into_iter().map(|o| o.key).collect()
    }
}

/// Creates a busybox sandbox on `runner` and runs `setup` in it, expecting exit code 0.
async fn sandbox_with(runner: &Runner, setup: &str) -> String {
    let id = unique("bk");
    runner.create(&id).await;
    let (code, _, err) = runner.exec(&id, setup).await;
    assert_eq!(code, 0, "{setup}: {err}");
    id
}

async fn backup(runner: &Runner, id: &str, body: Value) -> (u16, Value) {
    runner.post(&format!("/sandboxes/{id}/backup"), body).await
}

/// `sha256sum` of every file under /data in the sandbox, sorted.
async fn hashes(runner: &Runner, id: &str) -> String {
    let (code, out, err) = runner
        .exec(id, "cd /data && find . -type f | sort | xargs sha256sum")
        .await;
    assert_eq!(code, 0, "hashes in {id}: {err}");
    out
}

/// No dir of `id` and no staging dir left in the runner's home.
fn assert_nothing_installed(runner: &Runner, id: &str) {
    let dirs = runner.sandbox_dirs();
    assert!(
        !dirs.iter().any(|d| d == id || d.starts_with(".restore-")),
        "left in the home: {dirs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_restores_on_a_second_runner_with_the_same_id() {
    let Some(bed) = Bed::start(2).await else {
        return;
    };
    let (a, b) = (&bed.runners[0], &bed.runners[1]);
    let id = sandbox_with(
        a,
        "mkdir -p /data/sub && dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null \
             && echo hello > /data/sub/hello && ln -s sub/hello /data/link && rm /etc/group",
    )
    .await;
    let before = hashes(a, &id).await;

    let (status, up) = backup(a, &id, json!({})).await;
    assert_eq!(status, 201, "{up}");
    let key = up["key"].as_str().expect("key").to_string();
    assert!(
        key.starts_with(&format!("{id}/")) && key.ends_with(".boxlite"),
        "{key}"
    );
    assert_eq!(up["bucket"], BUCKET);
    assert!(
        up["sha256"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{up}"
    );
    assert!(
        up["sizeBytes"].as_u64().is_some_and(|n| n > 8 << 20),
        "{up}"
    );
    eprintln!("backup of {id}: {up}");
    // The source keeps running.
    assert_eq!(a.exec(&id, "echo up").await.1, "up\n");

    let (status, back) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 201, "{back}");
    assert_eq!(
        (
            back["id"].as_str(),
            back["state"].as_str(),
            back["image"].as_str()
        ),
        (
            Some(id.as_str()),
            Some("started"),
            Some("boxlite/busybox:latest")
        )
    );
    assert_eq!(
        (&back["sha256"], &back["sizeBytes"]),
        (&up["sha256"], &up["sizeBytes"])
    );
    assert_eq!(
        hashes(b, &id).await,
        before,
        "the files differ after the round trip"
    );
    assert_eq!(
        b.exec(&id, "readlink /data/link; test -e /etc/group || echo gone")
            .await
            .1,
        "sub/hello\ngone\n"
    );

    // An id that exists: refused without `replace`, replaced with it.
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 409, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|t| t.contains("replace")),
        "{e}"
    );
    b.exec(&id, "echo changed > /data/sub/hello").await;
    let (status, again) = b
        .post(
            "/sandboxes/restore",
            json!({"id": id, "key": key, "replace": true, "start": false}),
        )
        .await;
    assert_eq!(
        (status, again["state"].as_str()),
        (201, Some("stopped")),
        "{again}"
    );
    let (status, _) = b.post(&format!("/sandboxes/{id}/start"), json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(hashes(b, &id).await, before, "replace restored the backup");

    // Another box's backup, a key that does not exist.
    let other = unique("bk");
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": other, "key": key}))
        .await;
    assert_eq!(status, 400, "{e}");
    assert_nothing_installed(b, &other);
    let missing = format!("{id}/19700101T000000.000Z.boxlite");
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": other, "key": missing}))
        .await;
    assert_eq!(status, 404, "{e}");
    assert!(
        e["error"].as_str().is_some_and(|t| t.contains(&missing)),
        "{e}"
    );

    // Keep the last N: older ones go once the new one is stored, the newest two stay.
    let mut made = vec![key];
    let mut pruned = Vec::new();
    for _ in 0..3 {
        let (status, up) = backup(a, &id, json!({"keep": 2})).await;
        assert_eq!(status, 201, "{up}");
        made.push(up["key"].as_str().expect("key").to_string());
        let gone: Vec<String> = serde_json::from_value(up["pruned"].clone()).expect("pruned");
        pruned.extend(gone);
    }
    assert_eq!(pruned, made[..2], "the oldest two, in order");
    assert_eq!(bed.keys(&id).await, made[2..], "the newest two are kept");

    // Unknown sandbox, bad keep, the id that is a route.
    let restore = json!({"id": "restore", "image": "boxlite/busybox:latest"});
    assert_eq!(a.post("/sandboxes", restore).await.0, 400);
    let (status, _) = backup(a, &unique("nope"), json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = backup(a, &id, json!({"keep": 0})).await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_backup_is_refused_naming_the_member_and_installs_nothing() {
    let Some(bed) = Bed::start(2).await else {
        return;
    };
    let (a, b) = (&bed.runners[0], &bed.runners[1]);
    let id = sandbox_with(a, "mkdir /data && echo hello-backup-content > /data/hello").await;
    let (status, up) = backup(a, &id, json!({})).await;
    assert_eq!(status, 201, "{up}");
    let key = up["key"].as_str().expect("key").to_string();

    // One byte of the file's content flipped inside the archive, recompressed: the archive
    // decodes, the member's checksum does not match.
    let store = bed.store();
    let original = read_object(&store, &key).await;
    let mut tar = zstd::decode_all(original.as_slice()).expect("decompress");
    let at = tar
        .windows(20)
        .position(|w| w == b"hello-backup-content")
        .expect("the file's content in the tar");
    tar[at] ^= 0x01;
    let flipped = zstd::encode_all(tar.as_slice(), 3).expect("recompress");
    put_object(&store, &key, flipped).await;
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 422, "{e}");
    let text = e["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("member disk/data/hello: checksum mismatch"),
        "{text}"
    );
    assert_nothing_installed(b, &id);

    // One byte of the compressed object flipped (in zstd's checksum of the whole content, its
    // last four bytes: a flip in the middle may land on a bit that decodes the same): refused
    // as damaged.
    let mut raw = original.clone();
    let last = raw.len() - 1;
    raw[last] ^= 0x01;
    put_object(&store, &key, raw).await;
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 422, "{e}");
    assert_nothing_installed(b, &id);

    // The original restores.
    put_object(&store, &key, original).await;
    let (status, e) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 201, "{e}");
}

async fn read_object(store: &objectstore::Store, key: &str) -> Vec<u8> {
    let download = store.download(BUCKET, key).await.expect("download");
    tokio::task::spawn_blocking(move || {
        let mut download = download;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut download, &mut bytes).map(|_| bytes)
    })
    .await
    .expect("join")
    .expect("read")
}

async fn put_object(store: &objectstore::Store, key: &str, bytes: Vec<u8>) {
    store
        .upload(
            BUCKET,
            key,
            objectstore::UploadOptions::default(),
            move |w| std::io::Write::write_all(w, &bytes),
        )
        .await
        .expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_dying_mid_upload_leaves_no_object_and_the_sandbox_running() {
    let Some(mut bed) = Bed::start(1).await else {
        return;
    };
    let a = &bed.runners[0];
    let id = sandbox_with(
        a,
        "mkdir /data && dd if=/dev/urandom of=/data/big bs=1M count=200 2>/dev/null",
    )
    .await;
    let request = a
        .call(reqwest::Method::POST, &format!("/sandboxes/{id}/backup"))
        .json(&json!({}));
    let answer = tokio::spawn(crate::support::read(request));
    let store = bed.store();
    let prefix = format!("{id}/");
    wait_for(
        "a multipart upload under way",
        Duration::from_secs(60),
        || {
            let (store, prefix) = (store.clone(), prefix.clone());
            async move {
                let uploads = store.uploads_in_progress(BUCKET, &prefix).await.ok()?;
                (!uploads.is_empty()).then_some(())
            }
        },
    )
    .await;
    bed.garage.kill();
    let (status, e) = answer.await.expect("answer");
    assert_eq!(status, 502, "{e}");
    let text = e["error"].as_str().unwrap_or_default();
    assert!(
        text.contains("S3") && text.contains("nothing was stored"),
        "{text}"
    );
    let a = &bed.runners[0];
    assert_eq!(a.exec(&id, "echo still running").await.1, "still running\n");
    let (_, info) = a.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(info["state"], "started");

    bed.garage.restart();
    let store = bed.store();
    let objects = wait_for("garage back", Duration::from_secs(30), || {
        let (store, prefix) = (store.clone(), prefix.clone());
        async move { store.list(BUCKET, &prefix).await.ok() }
    })
    .await;
    assert!(objects.is_empty(), "an object is visible: {objects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_killed_mid_restore_leaves_nothing_half_installed() {
    let Some(mut bed) = Bed::start(2).await else {
        return;
    };
    let a = &bed.runners[0];
    let id = sandbox_with(
        a,
        "mkdir /data && dd if=/dev/urandom of=/data/big bs=1M count=100 2>/dev/null",
    )
    .await;
    let before = hashes(a, &id).await;
    let (status, up) = backup(a, &id, json!({})).await;
    assert_eq!(status, 201, "{up}");
    let key = up["key"].as_str().expect("key").to_string();

    let b = &mut bed.runners[1];
    let request = b
        .call(reqwest::Method::POST, "/sandboxes/restore")
        .json(&json!({"id": id, "key": key}));
    let answer = tokio::spawn(async move { request.send().await.map(|r| r.status()) });
    let staging = b
        .home
        .path()
        .join("sandboxes")
        .join(format!(".restore-{id}"));
    wait_for("the restore staged", Duration::from_secs(60), || {
        let staged = staging.exists();
        async move { staged.then_some(()) }
    })
    .await;
    b.signal(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .await;
    let _ = answer.await;
    b.restart().await;
    assert_nothing_installed(b, &id);
    let (status, _) = b.get(&format!("/sandboxes/{id}")).await;
    assert_eq!(status, 404);

    let (status, back) = b
        .post("/sandboxes/restore", json!({"id": id, "key": key}))
        .await;
    assert_eq!(status, 201, "{back}");
    assert_eq!(hashes(b, &id).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_constant_writes_restores_a_consistent_prefix() {
    let Some(bed) = Bed::start(2).await else {
        return;
    };
    let (a, b) = (&bed.runners[0], &bed.runners[1]);
    // A writer appending numbered lines as fast as it can, detached from the exec.
    let id = sandbox_with(
        a,
        "mkdir /data && (i=0; while :; do i=$((i+1)); echo \"line $i end\" >> /data/log; done) >/dev/null 2>&1 &",
    )
    .await;
    let lines = |out: String| out.trim().parse::<u64>().unwrap_or(0);
    wait_for(
        "the writer's first lines",
        Duration::from_secs(10),
        || async { (lines(a.exec(&id, "wc -l < /data/log").await.1) > 100).then_some(()) },
    )
    .await;
    let (status, up) = backup(a, &id, json!({})).await;
    assert_eq!(status, 201, "{up}");
    eprintln!("backup under load: paused {} ms", up["pausedMs"]);
    let at_backup = lines(a.exec(&id, "wc -l < /data/log").await.1);
    wait_for("the writer to go on", Duration::from_secs(10), || async {
        (lines(a.exec(&id, "wc -l < /data/log").await.1) > at_backup).then_some(())
    })
    .await;

    let (status, back) = b
        .post("/sandboxes/restore", json!({"id": id, "key": up["key"]}))
        .await;
    assert_eq!(status, 201, "{back}");
    let bytes = b
        .call(
            reqwest::Method::GET,
            &format!("/sandboxes/{id}/files?path=/data/log"),
        )
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    let text = String::from_utf8(bytes.to_vec()).expect("utf-8");
    assert!(
        text.ends_with('\n'),
        "the last line is cut: {:?}",
        &text[text.len().saturating_sub(40)..]
    );
    for (n, line) in text.lines().enumerate() {
        assert_eq!(
            line,
            format!("line {} end", n + 1),
            "line {} of the restored log",
            n + 1
        );
    }
    assert!(text.lines().count() > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unprivileged_runner_backs_up_without_pausing_and_restores() {
    if let Some(why) = crate::rootless::cannot_run_unprivileged() {
        eprintln!("an_unprivileged_runner_backs_up_without_pausing_and_restores: skipped: {why}");
        return;
    }
    let Some(bed) = Bed::start(1).await else {
        return;
    };
    let root = &bed.runners[0];
    let nobody = bed.runner_as(Some(crate::rootless::NOBODY)).await;
    let id = sandbox_with(
        &nobody,
        "mkdir -p /data/sub && dd if=/dev/urandom of=/data/blob bs=1M count=4 2>/dev/null \
         && echo hello > /data/sub/hello && rm /etc/group",
    )
    .await;
    let before = hashes(&nobody, &id).await;
    let (status, up) = backup(&nobody, &id, json!({})).await;
    assert_eq!(status, 201, "{up}\n{}", nobody.log());
    assert_eq!(up["pausedMs"], 0, "no cgroup to freeze: {up}");
    assert_eq!(nobody.exec(&id, "echo up").await.1, "up\n");
    let (status, back) = root
        .post("/sandboxes/restore", json!({"id": id, "key": up["key"]}))
        .await;
    assert_eq!(status, 201, "{back}");
    assert_eq!(hashes(root, &id).await, before);
    // And back onto the unprivileged runner, replacing its own.
    let (status, back) = nobody
        .post(
            "/sandboxes/restore",
            json!({"id": id, "key": up["key"], "replace": true}),
        )
        .await;
    assert_eq!(status, 201, "{back}\n{}", nobody.log());
    assert_eq!(hashes(&nobody, &id).await, before);
    assert_eq!(
        nobody.exec(&id, "test -e /etc/group || echo gone").await.1,
        "gone\n"
    );
}

/// Megabytes of random data the bench writes in its sandbox (`BACKUP_BENCH_MB`, default 256).
fn bench_mb() -> u64 {
    std::env::var("BACKUP_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, not a check: run with --ignored"]
async fn bench_backup_and_restore_throughput() {
    let Some(bed) = Bed::start(2).await else {
        return;
    };
    let (a, b) = (&bed.runners[0], &bed.runners[1]);
    let mb = bench_mb();
    let id = sandbox_with(
        a,
        &format!("mkdir /data && dd if=/dev/urandom of=/data/big bs=1M count={mb} 2>/dev/null"),
    )
    .await;
    let start = std::time::Instant::now();
    let (status, up) = backup(a, &id, json!({})).await;
    let backed_up = start.elapsed();
    assert_eq!(status, 201, "{up}");
    let start = std::time::Instant::now();
    let (status, back) = b
        .post("/sandboxes/restore", json!({"id": id, "key": up["key"]}))
        .await;
    let restored = start.elapsed();
    assert_eq!(status, 201, "{back}");
    let rate = |d: Duration| mb as f64 / d.as_secs_f64();
    println!(
        "sandbox with {mb} MB written: backup {backed_up:?} ({:.0} MB/s, paused {} ms, object {} bytes), restore to exec-ready {restored:?} ({:.0} MB/s)",
        rate(backed_up),
        up["pausedMs"],
        up["sizeBytes"],
        rate(restored)
    );

    // The baselines, on the same layer in the same run: what a plain `tar | zstd -3` of it
    // takes, and what the AWS CLI takes to copy the same bytes to the same Garage and back.
    let upper = a.home.path().join("sandboxes").join(&id).join("upper");
    let scratch = tempfile::tempdir().expect("scratch");
    let tarball = scratch.path().join("layer.tar.zst");
    let sh = |script: String| {
        let start = std::time::Instant::now();
        let out = std::process::Command::new("bash")
            .args(["-c", &script])
            .env("AWS_ACCESS_KEY_ID", testbed::garage::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", testbed::garage::SECRET_KEY)
            .env("AWS_DEFAULT_REGION", testbed::garage::REGION)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        start.elapsed()
    };
    let zstd = sh(format!(
        "tar -C {} -cf - . | zstd -3 -q -T1 -o {}",
        upper.display(),
        tarball.display()
    ));
    let endpoint = bed.garage.endpoint();
    let aws = which_aws();
    let (put, get) = match &aws {
        Some(aws) => (
            Some(sh(format!(
                "{aws} --endpoint-url {endpoint} s3 cp --quiet {} s3://{BUCKET}/baseline.tar.zst",
                tarball.display()
            ))),
            Some(sh(format!(
                "{aws} --endpoint-url {endpoint} s3 cp --quiet s3://{BUCKET}/baseline.tar.zst {}/back",
                scratch.path().display()
            ))),
        ),
        None => (None, None),
    };
    let secs = |d: Option<Duration>| d.map_or("(no aws CLI)".to_string(), |d| format!("{d:.2?}"));
    println!(
        "baseline: tar | zstd -3 of the layer {zstd:.2?}; aws s3 cp of the archive up {}, down {}",
        secs(put),
        secs(get)
    );
    let slower_up = put.map_or(zstd, |p| p.max(zstd));
    let slower_down = get.map_or(zstd, |g| g.max(zstd));
    println!(
        "ratio: backup {:.2} and restore {:.2} of the slower baseline's speed (target >= 0.50)",
        slower_up.as_secs_f64() / backed_up.as_secs_f64(),
        slower_down.as_secs_f64() / restored.as_secs_f64()
    );
}

/// The AWS CLI, if installed.
fn which_aws() -> Option<String> {
    std::process::Command::new("bash")
        .args(["-c", "command -v aws"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}
