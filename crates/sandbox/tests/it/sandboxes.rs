//! Real runc sandboxes on the busybox image: life cycle, limits, exec, re-adoption, cleanup.

use std::time::{Duration, Instant};

use sandbox::{
    CreateOptions, Driver, ExecOptions, Home, Resources, RuncError, SandboxError, Status,
};

use crate::support::{self, assert_no_trace, exec_opts, sh, sh_ok, unique_id, wait_for, Fixture};

#[tokio::test]
async fn a_sandbox_runs_isolated_and_delete_leaves_nothing() {
    let Some(fx) = Fixture::for_root("a_sandbox_runs_isolated_and_delete_leaves_nothing").await
    else {
        return;
    };
    let id = unique_id("life");
    let resources = Resources {
        cpus: 0.5,
        memory_bytes: 64 << 20,
        pids: 100,
    };
    let opts = CreateOptions {
        resources,
        env: vec![("EXTRA".into(), "1".into())],
        ..Default::default()
    };
    let sb = fx
        .driver
        .create(&id, &fx.image, &opts)
        .await
        .expect("create");
    assert_eq!(sb.status, Status::Running);
    assert!(sb.pid > 0);

    assert_eq!(
        sh(&fx.driver, &id, "uname -n").await,
        (0, format!("{id}\n"), String::new())
    );
    let (code, out, _) = sh(&fx.driver, &id, "echo $GREETING $EXTRA; pwd").await;
    assert_eq!(
        (code, out.as_str()),
        (0, "hello 1\n/root\n"),
        "image env and working dir"
    );
    // An exec's own env and cwd win; output past the limit is read and dropped.
    let opts = ExecOptions {
        env: vec![("GREETING".into(), "bye".into())],
        cwd: Some("/tmp".into()),
        output_limit: 1000,
        ..exec_opts()
    };
    let big = "echo $GREETING; pwd; head -c 300000 /bin/busybox";
    let out = fx.driver.exec(&id, big, &opts).await.expect("exec");
    assert!(out.stdout.starts_with(b"bye\n/tmp\n"));
    assert_eq!(
        (out.stdout.len(), out.truncated, out.exit_code),
        (1000, true, 0)
    );
    assert_eq!(
        sh(&fx.driver, &id, "echo oops >&2; exit 3").await,
        (3, String::new(), "oops\n".into())
    );
    let (_, ps, _) = sh(&fx.driver, &id, "ps -o pid,args").await;
    assert!(
        ps.lines()
            .nth(1)
            .is_some_and(|l| l.trim_start().starts_with("1 ")),
        "own pid namespace:\n{ps}"
    );
    let (_, links, _) = sh(&fx.driver, &id, "ls /sys/class/net").await;
    assert_eq!(
        links.split_whitespace().collect::<Vec<_>>(),
        ["lo"],
        "own network namespace"
    );

    let net = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("netns link");
    assert_ne!(net(&sb.pid.to_string()), net("self"));
    let cgroup = std::path::Path::new("/sys/fs/cgroup")
        .join("memory")
        .join(support::CGROUP_PARENT)
        .join(id.as_str());
    let limit =
        std::fs::read_to_string(cgroup.join("memory.limit_in_bytes")).expect("memory cgroup");
    assert_eq!(limit.trim(), (64u64 << 20).to_string());
    let cpu = std::path::Path::new("/sys/fs/cgroup/cpu")
        .join(support::CGROUP_PARENT)
        .join(id.as_str());
    let quota = std::fs::read_to_string(cpu.join("cpu.cfs_quota_us")).expect("cpu cgroup");
    assert_eq!(quota.trim(), "50000");

    // Writes land in the sandbox's upper dir, never in the shared layer.
    assert_eq!(
        sh(&fx.driver, &id, "echo mine > /root/note && rm /bin/cat")
            .await
            .0,
        0
    );
    let upper = fx
        .home
        .path()
        .join("sandboxes")
        .join(id.as_str())
        .join("upper");
    assert!(upper.join("root/note").is_file());
    assert!(fx
        .driver
        .images()
        .layer_dir(&fx.image.layers[0].digest)
        .join("bin/cat")
        .exists());

    fx.driver.delete(&id).await.expect("delete");
    assert_no_trace(fx.home.path(), &id, sb.pid);
    fx.driver
        .delete(&id)
        .await
        .expect("a second delete is a no-op");
    assert!(matches!(
        fx.driver.exec(&id, "true", &exec_opts()).await,
        Err(SandboxError::NotFound { .. })
    ));
}

#[tokio::test]
async fn exec_timeout_kills_its_tree_and_term_stops_the_sandbox() {
    let Some(fx) =
        Fixture::for_root("exec_timeout_kills_its_tree_and_term_stops_the_sandbox").await
    else {
        return;
    };
    let id = fx.sandbox("timeout").await;
    let started = Instant::now();
    let opts = ExecOptions {
        timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let result = fx.driver.exec(&id, "sleep 301 & sleep 302", &opts).await;
    assert!(
        matches!(
            result,
            Err(SandboxError::Runc(_, RuncError::Timeout { .. }))
        ),
        "expected a timeout, got {result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let (_, ps, _) = sh(&fx.driver, &id, "ps -o args").await;
    assert!(
        !ps.contains("sleep 301") && !ps.contains("sleep 302"),
        "children left:\n{ps}"
    );

    // The keeper init exits on TERM; the sandbox is then stopped until deleted.
    fx.driver.kill(&id, "TERM").await.expect("kill");
    let d = &fx.driver;
    wait_for("the sandbox to stop", Duration::from_secs(10), || async {
        let state = d.state(&id).await.expect("state")?;
        (state.status == Status::Stopped).then_some(())
    })
    .await;
    let exec = fx.driver.exec(&id, "true", &exec_opts()).await;
    assert!(
        matches!(exec, Err(SandboxError::NotRunning { .. })),
        "{exec:?}"
    );
    let connect = fx.driver.connect(&id, 8080, Duration::from_secs(1)).await;
    assert!(
        matches!(connect, Err(SandboxError::NotRunning { .. })),
        "{connect:?}"
    );
    fx.driver.delete(&id).await.expect("delete");
}

#[tokio::test]
async fn a_new_driver_adopts_running_sandboxes() {
    let Some(fx) = Fixture::for_root("a_new_driver_adopts_running_sandboxes").await else {
        return;
    };
    let id = unique_id("adopt");
    let sb = fx
        .driver
        .create(&id, &fx.image, &CreateOptions::default())
        .await
        .expect("create");
    let ghost = unique_id("ghost");
    std::fs::create_dir_all(
        fx.home
            .path()
            .join("sandboxes")
            .join(ghost.as_str())
            .join("upper"),
    )
    .expect("ghost dir");

    // A restarted runner: a new driver on the same home.
    let driver = Driver::open(Home::new(fx.home.path()), support::driver_config()).expect("reopen");
    let adoption = driver.adopt().await.expect("adopt");
    let found = adoption
        .sandboxes
        .iter()
        .find(|s| s.id == id)
        .expect("sandbox adopted");
    assert_eq!((found.pid, found.status), (sb.pid, Status::Running));
    assert_eq!(
        found.record.as_ref().map(|r| &r.image_digest),
        Some(&fx.image.digest)
    );
    assert_eq!(adoption.stale, std::slice::from_ref(&ghost));
    assert_eq!(sh(&driver, &id, "hostname").await.1, format!("{id}\n"));

    driver.delete(&ghost).await.expect("delete stale");
    driver.delete(&id).await.expect("delete adopted");
    assert_no_trace(fx.home.path(), &id, sb.pid);
    assert!(driver.adopt().await.expect("adopt").sandboxes.is_empty());
}

#[tokio::test]
async fn a_failed_create_leaves_nothing() {
    let Some(fx) = Fixture::for_root("a_failed_create_leaves_nothing").await else {
        return;
    };
    let id = fx.sandbox("dup").await;
    let again = fx
        .driver
        .create(&id, &fx.image, &CreateOptions::default())
        .await;
    assert!(
        matches!(again, Err(SandboxError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        sh(&fx.driver, &id, "true").await.0,
        0,
        "the first one is untouched"
    );
    fx.driver.delete(&id).await.expect("delete");

    // An image whose layer is not in the cache; a user its /etc/passwd does not list; an init
    // that cannot start (runc fails after the overlay was mounted).
    let mut missing = fx.image.clone();
    missing.layers[0].digest = sandbox::Digest::of(b"not pulled");
    let mut ghost = fx.image.clone();
    ghost.config.user = Some("ghost".into());
    let bad_init = CreateOptions {
        init: sandbox::Init::Command(vec!["/no/such/program".into()]),
        ..Default::default()
    };
    let defaults = CreateOptions::default();
    let cases = [
        (&missing, &defaults),
        (&ghost, &defaults),
        (&fx.image, &bad_init),
    ];
    let mut errors = Vec::new();
    for (image, options) in cases {
        let id = unique_id("failed");
        errors.push(fx.driver.create(&id, image, options).await);
        assert_no_trace(fx.home.path(), &id, 0);
    }
    assert!(
        matches!(
            errors.as_slice(),
            [
                Err(SandboxError::LayerMissing { .. }),
                Err(SandboxError::Bundle(..)),
                Err(SandboxError::Runc(..))
            ]
        ),
        "{errors:?}"
    );
}

#[tokio::test]
async fn the_image_user_runs_the_sandbox() {
    let Some(fx) = Fixture::for_root("the_image_user_runs_the_sandbox").await else {
        return;
    };
    let mut config = support::busybox_config();
    config["User"] = "nobody".into();
    fx.registry
        .push_image("test/nobody", "1", &[support::busybox_layer()], config)
        .await;
    let reference = sandbox::ImageRef::parse(&fx.registry.image("test/nobody:1")).expect("ref");
    let image = fx
        .driver
        .images()
        .pull(&reference)
        .await
        .expect("pull")
        .image;
    assert!(
        image.layers == fx.image.layers,
        "the same layer, cached once"
    );
    let id = unique_id("nobody");
    fx.driver
        .create(&id, &image, &CreateOptions::default())
        .await
        .expect("create");
    assert_eq!(
        sh(&fx.driver, &id, "id -u; id -g").await.1,
        "65534\n65534\n"
    );
    fx.driver.delete(&id).await.expect("delete");
}

#[tokio::test]
async fn stop_keeps_the_files_and_start_runs_them_again() {
    let Some(fx) = Fixture::for_root("stop_keeps_the_files_and_start_runs_them_again").await else {
        return;
    };
    let id = fx.sandbox("stop").await;
    let first = fx.driver.state(&id).await.expect("state").expect("exists");
    fx.driver
        .write_file(&id, "/srv/kept.txt", b"kept".to_vec(), 0o644)
        .await
        .expect("write");

    fx.driver
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("stop");
    // Nothing runs or is mounted, no runc state; the dir, record and writable layer stay.
    let home = fx.home.path();
    let dir = home.join("sandboxes").join(id.as_str());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(dir.to_str().expect("utf-8")),
        "mount left"
    );
    assert!(
        !home.join("runc").join(id.as_str()).exists(),
        "runc state left"
    );
    assert!(
        dir.join("upper/srv/kept.txt").is_file(),
        "writable layer kept"
    );
    let stopped = fx.driver.state(&id).await.expect("state").expect("kept");
    assert_eq!((stopped.status, stopped.pid), (Status::Stopped, 0));
    assert!(matches!(
        fx.driver.exec(&id, "true", &exec_opts()).await,
        Err(SandboxError::NotRunning { .. })
    ));
    assert!(matches!(
        fx.driver.read_file(&id, "/srv/kept.txt", 100).await,
        Err(SandboxError::NotRunning { .. })
    ));
    fx.driver
        .stop(&id, Duration::from_secs(5))
        .await
        .expect("a second stop does nothing");

    // A new driver finds it stopped, not stale.
    let driver = Driver::open(Home::new(home), support::driver_config()).expect("reopen");
    let adoption = driver.adopt().await.expect("adopt");
    assert_eq!(adoption.stopped, std::slice::from_ref(&id));
    assert!(adoption.stale.is_empty() && adoption.sandboxes.is_empty());

    let started = driver.start(&id).await.expect("start");
    assert_eq!(started.status, Status::Running);
    assert_ne!(started.pid, first.pid);
    assert_eq!(
        sh_ok(&driver, &id, "cat /srv/kept.txt; uname -n").await,
        format!("kept{id}\n")
    );
    let again = driver.start(&id).await.expect("start a running sandbox");
    assert_eq!(again.pid, started.pid, "left as it was");

    // A stopped sandbox deletes like any other, and is then gone for good.
    driver
        .stop(&id, Duration::from_millis(10))
        .await
        .expect("stop again");
    driver.delete(&id).await.expect("delete");
    assert_no_trace(home, &id, started.pid);
    assert_no_trace(home, &id, first.pid);
    assert!(driver.state(&id).await.expect("state").is_none());
    assert!(matches!(
        driver.start(&id).await,
        Err(SandboxError::NotFound { .. })
    ));
}
