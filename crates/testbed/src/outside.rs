//! "The outside" for the tests of a sandbox's outbound network, without the internet: a network
//! namespace the test makes itself, joined to the host's by a veth pair on a /30 of
//! 10.213.0.0/24, with a TCP server inside that greets each client with the address it came
//! from. Traffic from a sandbox through slirp4netns leaves from the host's namespace, which
//! routes it over the veth: reaching the server proves the sandbox reaches out. Everything
//! (namespace, links, server thread) goes when the guard is dropped, a failed test's too.
//! Needs root (`unshare`, `ip link`).
//!
//! The namespace is held by a process of the guard's own (`unshare --net sleep`), not named
//! under /run/netns: `ip netns add` run by two tests at once can race on making /run/netns a
//! mount point, hiding one of the new namespaces' bind mounts (then `ip -n` fails with EINVAL).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A network namespace with a greeting server, reached from the host over a veth pair.
pub struct Outside {
    /// The process holding the namespace (`unshare --net sleep infinity`).
    holder: Child,
    host_link: String,
    /// The host's end of the veth pair.
    pub host_addr: Ipv4Addr,
    /// Where the server listens, inside the namespace.
    pub server: SocketAddr,
    /// The peer address of every connection the server took.
    pub peers: Arc<Mutex<Vec<Ipv4Addr>>>,
    stop: Arc<AtomicBool>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Outside {
    /// Makes the namespace on the `/30` numbered `subnet` (0-63: 10.213.0.<4 * subnet>/30; give
    /// each concurrently running test its own), the host's end `.1`, the namespace's `.2`.
    pub fn new(subnet: u8) -> Outside {
        assert!(subnet < 64, "a /30 of 10.213.0.0/24");
        let me = std::process::id();
        // Interface names: at most 15 bytes.
        let host_link = format!("ob{}h{subnet}", me % 1_000_000);
        let inner_link = format!("ob{}n{subnet}", me % 1_000_000);
        let base = 4 * subnet;
        let host_addr = Ipv4Addr::new(10, 213, 0, base + 1);
        let inner_addr = Ipv4Addr::new(10, 213, 0, base + 2);
        // The shell says so once it runs in the new namespace, then becomes the sleep holding it.
        let mut holder = Command::new("unshare")
            .args(["--net", "sh", "-c", "echo ready && exec sleep infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start `unshare --net sh`");
        let mut ready = [0u8; 6];
        holder
            .stdout
            .take()
            .expect("its stdout")
            .read_exact(&mut ready)
            .expect("unshare --net says it is ready");
        assert_eq!(&ready, b"ready\n");
        let pid = holder.id().to_string();
        // From here on, a failed step still removes what was made.
        let mut outside = Outside {
            holder,
            host_link,
            host_addr,
            server: SocketAddr::from((inner_addr, 0)),
            peers: Arc::default(),
            stop: Arc::default(),
        };
        ip(&[
            "link",
            "add",
            &outside.host_link,
            "type",
            "veth",
            "peer",
            "name",
            &inner_link,
            "netns",
            &pid,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &outside.host_link,
        ]);
        ip(&["link", "set", &outside.host_link, "up"]);
        let inside = |args: &[&str]| {
            let mut all = vec!["--target", pid.as_str(), "--net", "ip"];
            all.extend_from_slice(args);
            let out = Command::new("nsenter")
                .args(&all)
                .output()
                .expect("run nsenter");
            assert!(
                out.status.success(),
                "nsenter {}: {}",
                all.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        };
        inside(&[
            "addr",
            "add",
            &format!("{inner_addr}/30"),
            "dev",
            &inner_link,
        ]);
        inside(&["link", "set", &inner_link, "up"]);
        inside(&["link", "set", "lo", "up"]);
        outside.server = outside.serve(inner_addr);
        outside
    }

    /// Starts the greeting server on a thread that lives in the namespace.
    fn serve(&self, addr: Ipv4Addr) -> SocketAddr {
        let ns =
            File::open(format!("/proc/{}/ns/net", self.holder.id())).expect("the namespace's file");
        let (tx, rx) = std::sync::mpsc::channel();
        let peers = Arc::clone(&self.peers);
        let stop = Arc::clone(&self.stop);
        std::thread::spawn(move || {
            // A thread of its own: it stays in the namespace and ends with the guard.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the outside namespace");
            let listener = TcpListener::bind((addr, 0)).expect("bind in the outside namespace");
            tx.send(listener.local_addr().expect("its address"))
                .expect("send the address");
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let Ok(SocketAddr::V4(peer)) = conn.peer_addr() else {
                    continue;
                };
                peers.lock().expect("peers").push(*peer.ip());
                let _ = conn.write_all(format!("hello {}\n", peer.ip()).as_bytes());
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the outside server's address")
    }

    /// Asks the server from the host, as a check that the outside is up: `hello 10.213.0.<.1>`.
    pub fn greet_from_host(&self) -> String {
        let mut s = TcpStream::connect_timeout(&self.server, Duration::from_secs(5))
            .expect("reach the outside server from the host");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the greeting");
        text
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then ends.
        let _ = TcpStream::connect_timeout(&self.server, Duration::from_secs(1));
        // Its own child: killing it ends the namespace once the server thread has left it.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // The pair goes with the namespace; this deletes it at once (and after a failed step).
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .output();
    }
}

/// Live (not zombie) slirp4netns processes whose `SANDBOX_DIR` (set by the sandbox driver)
/// starts with `prefix`: a sandbox's dir, or a runner home's. Needs root to read their environ.
pub fn slirp_processes(prefix: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let live = rest.split_whitespace().next().is_some_and(|s| s != "Z");
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let marker = format!("SANDBOX_DIR={prefix}");
            live && head.ends_with("(slirp4netns")
                && environ
                    .split(|b| *b == 0)
                    .any(|kv| kv.starts_with(marker.as_bytes()))
        })
        .collect()
}

/// SIGKILLs every slirp4netns [`slirp_processes`] finds under `prefix`: a failed test's leftovers.
pub fn kill_slirps(prefix: &str) {
    for pid in slirp_processes(prefix) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
