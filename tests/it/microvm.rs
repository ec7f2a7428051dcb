//! The microVM backend (built with `--features microvm`): the boot probe's verdict and its
//! deadline, `backend: auto` falling back to processes where no box can boot, and Redis in a
//! real box where one can. On hosts whose KVM cannot boot a guest (`kvm-pvm`, our CI) the
//! box-only part is skipped, printing the probe's reason.

use std::time::Duration;

use stack::backend::microvm::bootprobe;
use stack::layout::Layout;

use crate::harness::{block_on, Project};

async fn redis_roundtrip(port: u16, key: &str, value: &str) -> String {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(&mut c)
        .await
        .expect("SET");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .expect("GET")
}

fn microvm_check(p: &Project) -> (i32, serde_json::Value) {
    let r = p.run(&["doctor", "--json"]);
    let check = r.json()["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "microvm")
        .cloned()
        .expect("a microvm check");
    (r.code, check)
}

/// `stack doctor` boots a real box within the probe's deadline or says why not, in plain
/// words, with a fix; on a `kvm-pvm` host it must fail and name the hypervisor. A failed probe
/// is a warning (auto falls back), and the verdict is cached for this host boot, so the next
/// doctor boots nothing and says so.
#[test]
fn doctor_probes_a_real_boot_within_the_deadline_and_caches_the_verdict() {
    let p = Project::new("mvdoctor");
    p.write("stack.yaml", "name: mvdoctor\nbackend: auto\n")
        .default_service("redis", 26379, crate::harness::free_port());
    let (code, check) = microvm_check(&p);
    let layout = Layout::new(p.state_dir());
    let verdict = bootprobe::cached(&layout).expect("doctor probed and cached the verdict");
    eprintln!("boot probe: {verdict:?}");
    // The deadline is the contract (a slow failure would stall `up`); a few seconds more
    // cover the runtime's start-up and cleanup.
    assert!(
        verdict.elapsed_ms <= (bootprobe::DEADLINE + Duration::from_secs(10)).as_millis() as u64,
        "the probe took {} ms",
        verdict.elapsed_ms
    );
    if bootprobe::is_kvm_pvm() {
        assert!(!verdict.ok, "no guest boots on kvm-pvm");
        assert!(verdict.reason.contains("kvm-pvm"), "{}", verdict.reason);
        assert!(
            verdict.reason.contains("cannot run a stock guest kernel"),
            "{}",
            verdict.reason
        );
    }
    if verdict.ok {
        assert_eq!(check["status"], "ok", "{check}");
    } else {
        assert_eq!(check["status"], "warn", "{check}");
        let detail = check["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(&verdict.reason), "{check}");
        assert!(
            !detail.contains("cached"),
            "the first probe is measured: {check}"
        );
        assert!(
            check["fix"].as_str().is_some_and(|f| !f.is_empty()),
            "{check}"
        );
        assert_eq!(code, 0, "a failed probe alone does not fail doctor");
    }
    // The probe leaves no box and no BoxLite home behind.
    assert!(!layout.boxlite_dir().join("probe").exists());
    let (_, again) = microvm_check(&p);
    assert_eq!(again["status"], check["status"]);
    if !verdict.ok {
        assert!(
            again["detail"]
                .as_str()
                .is_some_and(|d| d.contains("cached from")),
            "{again}"
        );
    }
    assert_eq!(
        bootprobe::cached(&layout),
        Some(verdict.clone()),
        "the cache was not re-measured"
    );
    if !verdict.ok {
        // Asked for explicitly, a backend that cannot run here fails doctor, with the reason.
        let r = p.run(&["--backend", "microvm", "doctor", "--json"]);
        assert_eq!(r.code, 4, "{}", r.text());
        let failed: Vec<serde_json::Value> = r.json()["checks"]
            .as_array()
            .expect("checks")
            .iter()
            .filter(|c| c["status"] == "fail")
            .cloned()
            .collect();
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0]["name"], "backend");
        assert!(failed[0]["detail"]
            .as_str()
            .is_some_and(|d| d.contains(&verdict.reason)));
        assert!(failed[0]["fix"]
            .as_str()
            .is_some_and(|f| f.contains("--backend auto")));
    }
}

/// `backend: auto` with a Redis that has both `process:` and `image:`: a box where the probe
/// passes, a process (said once, with the reason) where it fails. Either way `up` succeeds and
/// Redis answers; `--backend microvm` refuses with exit 4 and the reason where boxes cannot boot.
#[test]
fn auto_runs_redis_as_a_box_where_boxes_boot_and_as_a_process_elsewhere() {
    let port = crate::harness::free_port();
    let p = Project::new("mvauto");
    p.write("stack.yaml", "name: mvauto\nbackend: auto\n")
        .default_service("redis", 26379, port);
    let up = p.run(&["--plain", "up"]);
    assert_eq!(up.code, 0, "{}", up.text());
    let layout = Layout::new(p.state_dir());
    let verdict = bootprobe::cached(&layout).expect("up probed and cached the verdict");
    let st = p.status();
    let backend = st["redis"]["backend"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        block_on(redis_roundtrip(port, "k", "v")),
        "v",
        "redis answers on its port"
    );
    if verdict.ok {
        assert_eq!(backend, "microvm");
        assert!(
            st["redis"]["id"].as_str().is_some_and(|id| !id.is_empty()),
            "box id recorded"
        );
    } else {
        assert_eq!(backend, "process", "{st:?}");
        let said = up.stderr.matches("backend auto: using process").count()
            + up.stdout.matches("backend auto: using process").count();
        assert_eq!(said, 1, "the fallback is said once: {}", up.text());
        assert!(up.text().contains(&verdict.reason), "{}", up.text());
        let forced = p.run(&["--backend", "microvm", "up", "redis"]);
        assert_eq!(forced.code, 4, "{}", forced.text());
        assert!(forced.stderr.contains(&verdict.reason), "{}", forced.stderr);
        eprintln!(
            "skipped: redis in a real box (the boot probe failed: {})",
            verdict.reason
        );
    }
    let down = p.run(&["down"]);
    assert_eq!(down.code, 0, "{}", down.text());
    assert!(!crate::harness::listening(port), "redis stopped");
}

/// A box that cannot boot fails `up` cleanly: exit 5 naming BoxLite's reason, the record says
/// failed, and no supervisor or BoxLite shim is left behind. The probe's cached verdict is set to
/// "passed" so `up` takes the box path even here; on a host where boxes boot, the same service
/// comes up instead, healthy by an exec probe that runs inside the box.
#[test]
fn a_box_that_cannot_boot_fails_up_cleanly_and_one_that_boots_is_probed_inside() {
    let p = Project::new("mvbox");
    p.write("stack.yaml", "name: mvbox\nbackend: microvm\n");
    stack::backend::microvm::image::build(
        &p.dir.join("images/busybox"),
        std::path::Path::new(stack::backend::microvm::image::BUSYBOX),
    )
    .expect("busybox image (install busybox-static)");
    p.service(
        "tiny",
        "image: ./images/busybox\nbox:\n  command: [/bin/sleep, \"3600\"]\n  memory: 128MiB\nhealthcheck:\n  exec: [/bin/true]\n  interval: 500ms\n  retries: 60\nrestart: \"no\"\n",
    );
    let layout = Layout::new(p.state_dir());
    // The real verdict, then what a passing probe would have cached for this host boot.
    let doctor = p.run(&["doctor"]);
    assert!(doctor.text().contains("microvm"), "{}", doctor.text());
    let real = bootprobe::cached(&layout).expect("doctor probed");
    let mut passed = real.clone();
    passed.ok = true;
    std::fs::create_dir_all(layout.boxlite_dir()).expect("mkdir");
    std::fs::write(
        layout.boot_probe(),
        serde_json::to_string(&passed).expect("json"),
    )
    .expect("write verdict");
    let up = p.run(&["--plain", "up"]);
    let st = p.status();
    assert_eq!(st["tiny"]["backend"], "microvm", "{st:?}");
    if real.ok {
        assert_eq!(up.code, 0, "{}", up.text());
        assert_eq!(st["tiny"]["healthy"], true, "{st:?}");
        assert!(st["tiny"]["id"].as_str().is_some_and(|id| !id.is_empty()));
    } else {
        assert_eq!(up.code, 5, "{}", up.text());
        assert!(up.text().contains("did not boot"), "{}", up.text());
        assert_eq!(st["tiny"]["state"], "failed", "{st:?}");
        let log = std::fs::read_to_string(layout.log_file("tiny")).unwrap_or_default();
        assert!(log.contains("boot failed"), "the log says why: {log}");
    }
    let down = p.run(&["down"]);
    assert_eq!(down.code, 0, "{}", down.text());
    let home = layout.box_home("tiny").display().to_string();
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), || {
            crate::harness::processes_matching(&[&home]).is_empty()
                && p.processes("__box").is_empty()
        }),
        "no box supervisor or shim outlives `down`: {:?}",
        crate::harness::processes_matching(&[&home])
    );
}
