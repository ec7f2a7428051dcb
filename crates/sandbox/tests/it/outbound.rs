//! A sandbox's outbound network: none by default (only `lo`), and with the driver's setting on,
//! a `tap0` through slirp4netns that reaches out of the host (here: into a network namespace the
//! test makes, see `testbed::outside`) but never the host's loopback; its slirp4netns lives and
//! ends with the sandbox, and a new driver takes it back.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sandbox::{CreateOptions, Driver, DriverConfig, Home, ImageRef, Outbound, SandboxId};
use testbed::outside::{slirp_processes, Outside};

use crate::support::{
    assert_no_trace, busybox_config, busybox_layer, driver_config, sh, sh_ok, skip_unless_root,
    unique_id, wait_for, Fixture, Registry,
};

fn config(outbound: Outbound) -> DriverConfig {
    DriverConfig {
        outbound,
        ..driver_config()
    }
}

/// The sandbox's dir, as slirp4netns's `SANDBOX_DIR` names it.
fn dir_of(home: &Path, id: &SandboxId) -> String {
    home.join("sandboxes")
        .join(id.as_str())
        .display()
        .to_string()
}

/// Has process `pid` exited (gone, or a zombie nobody reaped)?
fn is_gone(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// What `busybox nc` gets from `addr`, run in the sandbox: (exit code, stdout, stderr).
async fn nc(driver: &Driver, id: &SandboxId, addr: &str) -> (i32, String, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    sh(
        driver,
        id,
        &format!("busybox nc -w 5 {host} {port} </dev/null"),
    )
    .await
}

/// A server on the host's 127.0.0.1 that must never see a sandbox's connection.
fn loopback_server() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn assert_nothing_accepted(l: &TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the host's loopback server took a connection: {other:?}"),
    }
}

/// The network a sandbox sees, for the assertions: addresses, routes, resolv.conf.
async fn network_of(driver: &Driver, id: &SandboxId) -> (String, String, String) {
    let addr = sh_ok(driver, id, "busybox ip -o -4 addr show").await;
    let routes = sh_ok(driver, id, "busybox ip route").await;
    let (_, resolv, _) = sh(driver, id, "cat /etc/resolv.conf").await;
    (addr, routes, resolv)
}

fn assert_has_outbound(addr: &str, routes: &str, resolv: &str) {
    assert!(
        addr.contains("tap0") && addr.contains("10.0.2.100/24"),
        "{addr}"
    );
    assert!(routes.contains("default via 10.0.2.2 dev tap0"), "{routes}");
    assert_eq!(resolv, "nameserver 10.0.2.3\n");
}

#[tokio::test]
async fn without_the_setting_a_sandbox_has_no_way_out() {
    let Some(fx) = Fixture::for_root("without_the_setting_a_sandbox_has_no_way_out").await else {
        return;
    };
    assert_eq!(fx.driver.outbound(), Outbound::Off, "off by default");
    let id = fx.sandbox("closed").await;
    let d = &fx.driver;
    assert_eq!(
        sh_ok(d, &id, "busybox ip -o link | busybox cut -d: -f2").await,
        " lo\n"
    );
    // The routing table: its header line only.
    assert_eq!(
        sh_ok(d, &id, "busybox wc -l < /proc/net/route")
            .await
            .trim(),
        "1"
    );
    // Nowhere to send a packet: refused at once, not after a timeout.
    let server = loopback_server();
    let port = server.local_addr().expect("addr").port();
    for addr in [format!("10.0.2.2:{port}"), "10.213.0.2:80".to_string()] {
        let started = Instant::now();
        let (code, _, err) = nc(d, &id, &addr).await;
        assert_ne!(code, 0, "{addr}");
        assert!(err.contains("unreachable"), "{addr}: {err}");
        assert!(started.elapsed() < Duration::from_secs(3), "{addr}: fast");
    }
    assert_nothing_accepted(&server);
    assert_eq!(
        slirp_processes(&dir_of(fx.home.path(), &id)),
        Vec::<i32>::new()
    );
    assert_eq!(d.outbound_pid(&id), None);
    // The image's /etc is as it was: no resolv.conf mounted over it.
    assert_ne!(sh(d, &id, "cat /etc/resolv.conf").await.0, 0);
    d.delete(&id).await.expect("delete");
}

#[tokio::test]
async fn with_the_setting_a_sandbox_reaches_out_but_never_the_hosts_loopback() {
    if skip_unless_root("with_the_setting_a_sandbox_reaches_out") {
        return;
    }
    let outside = Outside::new(0);
    assert_eq!(
        outside.greet_from_host(),
        format!("hello {}\n", outside.host_addr)
    );
    let fx = Fixture::busybox_with(config(Outbound::On)).await;
    let d = &fx.driver;
    let home = fx.home.path();

    // What the network costs a create: one sandbox without, one with (the image is cached).
    let off = Driver::open(Home::new(home), config(Outbound::Off)).expect("a driver with off");
    let closed = unique_id("closed");
    let started = Instant::now();
    off.create(&closed, &fx.image, &CreateOptions::default())
        .await
        .expect("create without");
    let without = started.elapsed();
    let id = unique_id("open");
    let started = Instant::now();
    d.create(&id, &fx.image, &CreateOptions::default())
        .await
        .expect("create with");
    eprintln!(
        "create without outbound: {without:?}, with (runc create, slirp4netns, runc start): {:?}",
        started.elapsed()
    );
    off.delete(&closed).await.expect("delete");

    let (addr, routes, resolv) = network_of(d, &id).await;
    assert_has_outbound(&addr, &routes, &resolv);
    // Out: the server in the test's namespace sees the connection come from the host's side of
    // the veth, where slirp4netns opened it.
    let server = outside.server.to_string();
    let (code, out, err) = nc(d, &id, &server).await;
    assert_eq!(
        (code, out.as_str()),
        (0, format!("hello {}\n", outside.host_addr).as_str()),
        "{err}"
    );
    // Never the host's loopback: 10.0.2.2 leads nowhere.
    let loopback = loopback_server();
    let port = loopback.local_addr().expect("addr").port();
    let (code, _, err) = nc(d, &id, &format!("10.0.2.2:{port}")).await;
    assert_ne!(code, 0, "the host's loopback is closed to sandboxes: {err}");
    let (code, _, _) = nc(d, &id, &format!("127.0.0.1:{port}")).await;
    assert_ne!(code, 0, "127.0.0.1 in the sandbox is its own");
    assert_nothing_accepted(&loopback);

    // One slirp4netns, recorded; stop ends it, start makes a new one.
    let dir = dir_of(home, &id);
    let first = d.outbound_pid(&id).expect("a slirp4netns");
    assert_eq!(slirp_processes(&dir), vec![first]);
    d.stop(&id, Duration::from_secs(3)).await.expect("stop");
    assert!(is_gone(first), "slirp4netns ends with a stop");
    assert_eq!(slirp_processes(&dir), Vec::<i32>::new());
    d.start(&id).await.expect("start");
    let second = d.outbound_pid(&id).expect("a new slirp4netns");
    assert_ne!(second, first);
    assert!(nc(d, &id, &server).await.1.starts_with("hello"));

    // A new driver (a restarted runner) takes the same one back.
    let again = Driver::open(Home::new(home), config(Outbound::On)).expect("a new driver");
    assert!(again.reconnect(&id).await.expect("reconnect"));
    assert_eq!(again.outbound_pid(&id), Some(second));
    // One that died meanwhile is replaced.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(second),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill slirp4netns");
    wait_for(
        "the killed slirp4netns to exit",
        Duration::from_secs(5),
        || async { is_gone(second).then_some(()) },
    )
    .await;
    let (code, _, _) = nc(d, &id, &server).await;
    assert_ne!(code, 0, "no way out without its slirp4netns");
    assert!(again.reconnect(&id).await.expect("reconnect"));
    let third = again.outbound_pid(&id).expect("a restarted slirp4netns");
    assert_ne!(third, second);
    assert!(nc(d, &id, &server).await.1.starts_with("hello"));
    // A driver whose setting is off ends it: off wins over what the sandbox was created with.
    let off = Driver::open(Home::new(home), config(Outbound::Off)).expect("a driver with off");
    assert!(!off.reconnect(&id).await.expect("reconnect with off"));
    assert!(is_gone(third));
    assert_eq!(
        sh_ok(d, &id, "busybox ip -o link | busybox wc -l")
            .await
            .trim(),
        "1"
    );

    // Delete: no slirp4netns, nothing else left.
    assert!(again.reconnect(&id).await.expect("reconnect"));
    let last = again.outbound_pid(&id).expect("slirp4netns");
    let init = d.state(&id).await.expect("state").expect("exists").pid;
    d.delete(&id).await.expect("delete");
    assert!(is_gone(last), "slirp4netns ends with a delete");
    assert_eq!(
        slirp_processes(&home.display().to_string()),
        Vec::<i32>::new()
    );
    assert_no_trace(home, &id, init);
}

/// Set in the child run as `nobody`: `<registry host> <home> <outside server>`.
const CHILD: &str = "SANDBOX_OUTBOUND_CHILD";
const NOBODY: u32 = 65534;
const ROOTLESS_TEST: &str = "outbound::an_unprivileged_driver_gives_outbound_access_too";

/// Why this machine cannot run slirp4netns as `nobody`, if it cannot.
fn cannot_run_unprivileged() -> Option<String> {
    if skip_unless_root("an unprivileged driver with outbound access") {
        return Some("needs root to run the test again as another user".into());
    }
    let probe = Command::new("sh")
        .args(["-c", "unshare --user --map-root-user --mount true && test -r /dev/net/tun -a -w /dev/net/tun"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some(
            "nobody may not create a user namespace or open /dev/net/tun (make it 0666: scripts/install-deps.sh)"
                .into(),
        ),
        Err(e) => Some(format!("cannot run the probe: {e}")),
    }
}

#[tokio::test]
async fn an_unprivileged_driver_gives_outbound_access_too() {
    if let Ok(args) = std::env::var(CHILD) {
        let mut args = args.split(' ');
        let (Some(registry), Some(home), Some(server)) = (args.next(), args.next(), args.next())
        else {
            panic!("`<registry> <home> <server>`");
        };
        return as_nobody(registry, Path::new(home), server).await;
    }
    if let Some(why) = cannot_run_unprivileged() {
        eprintln!("{ROOTLESS_TEST}: skipped: {why}");
        return;
    }
    let outside = Outside::new(2);
    let registry = Registry::start().await;
    registry
        .push_image("test/busybox", "1", &[busybox_layer()], busybox_config())
        .await;
    let home = tempfile::tempdir().expect("home");
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).expect("chown home");
    let home_text = home.path().display().to_string();
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args([ROOTLESS_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD,
            format!("{} {home_text} {}", registry.host, outside.server),
        )
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run the test binary as nobody");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{text}");
    let left = slirp_processes(&home_text);
    testbed::outside::kill_slirps(&home_text);
    kill_holder(home.path());
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the child failed: {}",
        out.status
    );
    assert_eq!(left, Vec::<i32>::new(), "slirp4netns left running");
    let peers = outside.peers.lock().expect("peers").clone();
    assert!(
        peers.contains(&outside.host_addr),
        "the sandbox reached the outside server: {peers:?}"
    );
}

/// Kills the namespace holder a failed child left (checked by its start time), and with it the
/// sandboxes in its namespaces.
fn kill_holder(home: &Path) {
    let Ok(json) = std::fs::read(home.join("holder.json")) else {
        return;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&json) else {
        return;
    };
    let (Some(pid), Some(start)) = (v["pid"].as_i64(), v["start"].as_u64()) else {
        return;
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let started = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(19)?.parse::<u64>().ok());
    if started == Some(start) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The child's part, as `nobody`.
async fn as_nobody(registry: &str, home: &Path, server: &str) {
    assert!(
        !nix::unistd::geteuid().is_root(),
        "the child runs as nobody"
    );
    let driver = Driver::open(Home::new(home), config(Outbound::On)).expect("driver");
    assert!(driver.is_rootless());
    let reference = ImageRef::parse(&format!("{registry}/test/busybox:1")).expect("reference");
    let image = driver.images().pull(&reference).await.expect("pull").image;
    let id = unique_id("rootless-open");
    let started = Instant::now();
    driver
        .create(&id, &image, &CreateOptions::default())
        .await
        .expect("create");
    eprintln!(
        "unprivileged driver, outbound on: create took {:?}",
        started.elapsed()
    );
    let (addr, routes, resolv) = network_of(&driver, &id).await;
    assert_has_outbound(&addr, &routes, &resolv);
    let (code, out, err) = nc(&driver, &id, server).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("hello "), "{out}");
    let loopback = loopback_server();
    let port = loopback.local_addr().expect("addr").port();
    assert_ne!(nc(&driver, &id, &format!("10.0.2.2:{port}")).await.0, 0);
    assert_nothing_accepted(&loopback);

    let slirp = driver.outbound_pid(&id).expect("a slirp4netns");
    driver
        .stop(&id, Duration::from_secs(3))
        .await
        .expect("stop");
    assert!(is_gone(slirp), "slirp4netns ends with a stop");
    driver.start(&id).await.expect("start");
    let slirp = driver.outbound_pid(&id).expect("a new slirp4netns");
    assert!(nc(&driver, &id, server).await.1.starts_with("hello "));
    driver.delete(&id).await.expect("delete");
    assert!(is_gone(slirp), "slirp4netns ends with a delete");
    assert!(driver.release().await.expect("release"));
}
