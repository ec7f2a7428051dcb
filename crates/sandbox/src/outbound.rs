//! A sandbox's outbound network, the runner's setting (off by default): user-mode networking with
//! `slirp4netns`, one process per sandbox. It puts a `tap0` (10.0.2.100/24, default route via
//! 10.0.2.2, DNS at 10.0.2.3) in the sandbox's network namespace and turns the sandbox's packets
//! into ordinary sockets of its own in the host's namespace, so nothing of the host's
//! configuration changes (no bridge, no iptables, no sysctl). `--disable-host-loopback` is always
//! given: 10.0.2.2 never leads to the host's 127.0.0.1, where the stack's services listen.
//!
//! Its life is the sandbox's: started once the init exists (before its command runs), with the
//! init's pidfd as its `--exit-fd` (it exits by itself once the init has exited and been reaped),
//! and ended by the driver with the sandbox's container. It runs in a session of its own, so it
//! outlives a runner crash as the sandbox does; its pid and start time are kept in
//! `<sandbox dir>/slirp.json` and a new driver takes it back only when both still match. It is
//! signalled and reaped through a pidfd only, so a reused pid is never hit.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runc::{read_stat, InitProcess};

/// How long slirp4netns may take to configure `tap0` (about 15 ms on an idle machine).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGKILLed slirp4netns may take to be gone.
const END_TIMEOUT: Duration = Duration::from_secs(5);
/// The `/etc/resolv.conf` of a sandbox with outbound access: slirp4netns's DNS forwarder.
pub const RESOLV_CONF: &str = "nameserver 10.0.2.3\n";
/// The tap device slirp4netns makes in the sandbox.
pub const TAP: &str = "tap0";

/// Whether a driver's sandboxes may open connections out of the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outbound {
    /// Only `lo` in a sandbox: no route out (the default).
    #[default]
    Off,
    /// A `tap0` through slirp4netns, the host's loopback excepted.
    On,
}

impl Outbound {
    /// `off` or `on`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "on" => Some(Self::On),
            _ => None,
        }
    }

    /// Is it `On`?
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

/// Why a sandbox's outbound network could not be set up or ended.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The binary could not be run.
    #[error("cannot run `{binary}` for the sandboxes' outbound network: install slirp4netns (Debian package `slirp4netns`, scripts/install-deps.sh) or set RUNNER_OUTBOUND=off")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A runner that is not root cannot open the tun device slirp4netns needs.
    #[error("/dev/net/tun cannot be opened by uid {uid}: slirp4netns, run by a runner that is not root, opens it itself; make it mode 0666 as udev's default rule does (scripts/install-deps.sh does), or set RUNNER_OUTBOUND=off")]
    Tun {
        /// The runner's uid.
        uid: u32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// slirp4netns exited before it had configured the sandbox's network.
    #[error("slirp4netns exited before configuring the sandbox's network ({status}): {log}")]
    Exited {
        /// Its exit status.
        status: String,
        /// The end of its log.
        log: String,
    },
    /// slirp4netns did not say it was ready in time.
    #[error("slirp4netns (pid {pid}) did not configure the sandbox's network within {timeout:?}: the machine is overloaded?")]
    Slow {
        /// Its pid.
        pid: u32,
        /// How long it was given.
        timeout: Duration,
    },
    /// The sandbox's init is gone: there is no network namespace to connect.
    #[error("the sandbox's init (pid {pid}) is gone: start the sandbox again")]
    InitGone {
        /// The init's pid.
        pid: i32,
    },
    /// A namespace or pidfd of the sandbox's init could not be opened.
    #[error("cannot open {what} of the sandbox's init (pid {pid})")]
    Init {
        /// `its network namespace`, ...
        what: &'static str,
        /// The init's pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file of the sandbox's dir (record, log, pipe) failed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// slirp4netns could not be signalled or did not end.
    #[error("cannot end slirp4netns (pid {pid})")]
    End {
        /// Its pid.
        pid: i32,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A sandbox's slirp4netns as recorded in its `slirp.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slirp {
    /// Its pid.
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat: with the pid, names this one process for good.
    pub start: u64,
}

impl Slirp {
    /// Is this very process still running (not a zombie)?
    pub fn is_alive(&self) -> bool {
        crate::pidfd::is_alive(self.pid, self.start)
    }
}

/// `<sandbox dir>/slirp.json`.
pub fn record_path(dir: &Path) -> PathBuf {
    dir.join("slirp.json")
}

/// `<sandbox dir>/resolv.conf`, bind-mounted on the sandbox's `/etc/resolv.conf`.
pub fn resolv_conf_path(dir: &Path) -> PathBuf {
    dir.join("resolv.conf")
}

fn log_path(dir: &Path) -> PathBuf {
    dir.join("slirp.log")
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OutboundError {
    let path = path.to_path_buf();
    move |source| OutboundError::Io { op, path, source }
}

/// Checks, once, what every sandbox's slirp4netns will need: the binary, and for a runner that
/// is not root, a tun device it may open.
pub fn check(binary: &Path, rootless: bool) -> Result<(), OutboundError> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| OutboundError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(OutboundError::Spawn {
            binary: binary.to_path_buf(),
            source: io::Error::other(format!("`--version` exited with {}", out.status)),
        });
    }
    if rootless {
        let flags = nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK;
        nix::unistd::access("/dev/net/tun", flags).map_err(|e| OutboundError::Tun {
            uid: nix::unistd::geteuid().as_raw(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// The slirp4netns recorded in `dir`, if that very process still runs.
pub fn running(dir: &Path) -> Option<Slirp> {
    let bytes = fs::read(record_path(dir)).ok()?;
    let slirp: Slirp = serde_json::from_slice(&bytes).ok()?;
    slirp.is_alive().then_some(slirp)
}

/// Starts slirp4netns for the sandbox whose init is `init` and whose dir is `dir`, and waits
/// until `tap0` is configured. `rootless`: the init's user namespace is entered too (a runner
/// that is not root: the sandbox's network namespace belongs to the holder's user namespace).
/// Blocking.
pub fn start(
    binary: &Path,
    init: InitProcess,
    dir: &Path,
    rootless: bool,
) -> Result<Slirp, OutboundError> {
    let pid = init.pid;
    let open = |what: &'static str, path: String| {
        File::open(path).map_err(|source| OutboundError::Init { what, pid, source })
    };
    // Opened before the init is checked: had its pid been reused in between, the check fails.
    let netns = open("its network namespace", format!("/proc/{pid}/ns/net"))?;
    let userns = match rootless {
        true => Some(open("its user namespace", format!("/proc/{pid}/ns/user"))?),
        false => None,
    };
    let pidfd = crate::pidfd::open(pid).map_err(|source| OutboundError::Init {
        what: "a pidfd",
        pid,
        source,
    })?;
    if !init.is_alive() {
        return Err(OutboundError::InitGone { pid });
    }
    let (ready_read, ready_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_err("create a pipe for", &log_path(dir))(e.into()))?;
    let log_file = log_path(dir);
    let log = File::create(&log_file).map_err(io_err("create", &log_file))?;
    let log2 = log.try_clone().map_err(io_err("open", &log_file))?;

    let fd = |f: &dyn AsRawFd| f.as_raw_fd();
    let mut inherited: Vec<RawFd> = vec![fd(&netns), fd(&pidfd), fd(&ready_write)];
    let mut cmd = std::process::Command::new(binary);
    // A seccomp filter always; as root, also its own mount namespace and every capability but
    // CAP_NET_BIND_SERVICE dropped (`--enable-sandbox`). Not for a runner that is not root: there
    // it would enter the holder's user namespace, whose `setgroups` is denied, and fail at
    // setegid(0); it runs as the runner's user, without capabilities, anyway.
    cmd.args([
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-seccomp",
    ])
    .arg(format!("--ready-fd={}", fd(&ready_write)))
    .arg(format!("--exit-fd={}", fd(&pidfd)));
    match &userns {
        Some(userns) => {
            cmd.arg(format!("--userns-path=/proc/self/fd/{}", fd(userns)));
            inherited.push(fd(userns));
        }
        None => {
            cmd.arg("--enable-sandbox");
        }
    }
    cmd.args(["--netns-type=path"])
        .arg(format!("/proc/self/fd/{}", fd(&netns)))
        .arg(TAP)
        // Names the sandbox for whoever looks at the process (`ps e`, the tests).
        .env("SANDBOX_DIR", dir)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid(2) and fcntl(2) are async-signal-safe and touch no memory of ours. A session
    // of its own: it outlives the runner, and no signal to the runner's group reaches it. The
    // descriptors it is given lose their close-on-exec flag in the child only.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| OutboundError::Spawn {
        binary: binary.to_path_buf(),
        source,
    })?;
    // Ours closed: its end of the pipe then reads EOF if it exits without writing.
    drop(ready_write);
    let child_pid = child.id();
    // Not waited on through `child`: it is reaped through its pidfd when it is ended (or by the
    // runner, its subreaper, when it exits by itself). Dropping a `Child` neither kills nor waits.
    drop(child);
    let slirp_pid = child_pid as i32;
    let start = read_stat(slirp_pid).map(|s| s.start);
    let mut ready = File::from(ready_read);
    match crate::pidfd::wait_readable(ready.as_raw_fd(), START_TIMEOUT) {
        Ok(true) => {}
        Ok(false) => {
            if let Some(start) = start {
                let _ = end_process(Slirp {
                    pid: slirp_pid,
                    start,
                });
            }
            return Err(OutboundError::Slow {
                pid: child_pid,
                timeout: START_TIMEOUT,
            });
        }
        Err(e) => return Err(io_err("wait for slirp4netns through", &log_file)(e)),
    }
    let mut byte = [0u8; 1];
    let n = ready.read(&mut byte).unwrap_or(0);
    let Some(start) = start.filter(|_| n == 1 && byte[0] == b'1') else {
        // It exited (the pipe closed unwritten): say why, from its log.
        let status = reap_pid(slirp_pid);
        let text = fs::read(&log_file).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(1024)..];
        return Err(OutboundError::Exited {
            status,
            log: String::from_utf8_lossy(tail).trim().to_string(),
        });
    };
    let slirp = Slirp {
        pid: slirp_pid,
        start,
    };
    let record = record_path(dir);
    let tmp = record.with_extension("json.tmp");
    let json = serde_json::to_vec(&slirp).map_err(|e| io_err("serialize", &record)(e.into()))?;
    if let Err(e) = fs::write(&tmp, json).and_then(|()| fs::rename(&tmp, &record)) {
        let _ = end_process(slirp);
        return Err(io_err("write", &record)(e));
    }
    Ok(slirp)
}

/// Ends the slirp4netns recorded in `dir`, if it still runs, and forgets it. Blocking.
pub fn end(dir: &Path) -> Result<(), OutboundError> {
    let record = record_path(dir);
    let slirp = match fs::read(&record) {
        // An unreadable record names no process to trust.
        Ok(bytes) => serde_json::from_slice::<Slirp>(&bytes).ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &record)(e)),
    };
    if let Some(slirp) = slirp {
        end_process(slirp)?;
    }
    match fs::remove_file(&record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &record)(e)),
    }
}

/// SIGKILLs `slirp` if that very process still runs, waits until it has exited and reaps it when
/// it is this process's child. Through a pidfd: opened first, then checked to be the recorded
/// process, so a reused pid is never signalled.
fn end_process(slirp: Slirp) -> Result<(), OutboundError> {
    crate::pidfd::kill_and_wait(slirp.pid, slirp.start, END_TIMEOUT).map_err(|source| {
        OutboundError::End {
            pid: slirp.pid,
            source,
        }
    })
}

/// Reaps our child `pid` that has exited (its ready pipe closed): its status, for the error.
fn reap_pid(pid: i32) -> String {
    let Ok(pidfd) = crate::pidfd::open(pid) else {
        return "exited".into();
    };
    if crate::pidfd::wait_readable(pidfd.as_raw_fd(), END_TIMEOUT).is_err() {
        return "exited".into();
    }
    match crate::pidfd::reap(&pidfd) {
        // SAFETY: filled in by a successful waitid(2) for an exited child.
        Some(info) => match info.si_code {
            libc::CLD_EXITED => format!("exit status {}", unsafe { info.si_status() }),
            _ => format!("killed by signal {}", unsafe { info.si_status() }),
        },
        None => "exited".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_on_and_off_only() {
        assert_eq!(Outbound::parse("on"), Some(Outbound::On));
        assert_eq!(Outbound::parse("off"), Some(Outbound::Off));
        assert_eq!(Outbound::parse("ON"), None);
        assert_eq!(Outbound::parse("yes"), None);
        assert_eq!(Outbound::default(), Outbound::Off);
    }

    #[test]
    fn a_missing_binary_names_the_remedy() {
        let e = check(Path::new("/nonexistent/slirp4netns"), false).expect_err("missing");
        let text = e.to_string();
        assert!(text.contains("install slirp4netns") && text.contains("RUNNER_OUTBOUND=off"));
    }
}
