//! Process identity and signalling. A pid alone is never trusted: a process is "ours" only when
//! its pid, its start time (clock ticks since boot, from `/proc/PID/stat`) and the boot id match.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// A process as identified by pid, start time and boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
    pub start: u64,
    /// The kernel's boot id when it was recorded.
    pub boot: String,
}

impl ProcRef {
    /// Identifies a running process, if it exists.
    pub fn of(pid: u32) -> Option<ProcRef> {
        Some(ProcRef {
            pid,
            start: start_time(pid)?,
            boot: boot_id(),
        })
    }

    /// Is the process this record describes still running (not a zombie) and the same one?
    pub fn is_alive(&self) -> bool {
        self.is_present() && !is_zombie(self.pid)
    }

    /// Does this very process still have a process-table entry (possibly as an unreaped zombie)?
    pub fn is_present(&self) -> bool {
        self.boot == boot_id() && start_time(self.pid) == Some(self.start)
    }
}

/// The current boot's id (empty where the kernel does not expose one). Read once per process:
/// it cannot change while the process runs, and `up` checks process identities every few
/// milliseconds while services start.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The process's start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    // After the name, field 3 (state) is index 0, so field 22 (starttime) is index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() == Some("Z")
}

/// Pids whose parent is `parent` (from `/proc/*/stat`).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // After the name, field 4 (ppid) is index 1.
            stat_fields(*pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// The process's command line, space-joined (empty when unreadable).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// The process's real user name (or uid when it has no name).
pub fn user_of(pid: u32) -> String {
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|u| u.parse::<u32>().ok())
        });
    match uid {
        Some(uid) => nix::unistd::User::from_uid(uid.into())
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_else(|| uid.to_string()),
        None => "?".into(),
    }
}

/// Does `pid` lead its own process group (as every service the process backend starts does)?
pub fn is_group_leader(pid: u32) -> bool {
    let p = Pid::from_raw(pid as i32);
    nix::unistd::getpgid(Some(p)).is_ok_and(|g| g == p)
}

/// Sets the CPU weight of the scheduler autogroup (the session) that `pid` belongs to; `None` is
/// this process. Where the kernel groups tasks by session (`sched_autogroup_enabled`, the default
/// on desktop distributions and on these machines) a task's own nice value only ranks it within
/// its session: every supervised service has a session of its own, so its weight against the
/// other services is the session's. A kernel without autogroups has no such file; that is fine,
/// as the task's nice value then does the job alone.
pub fn set_session_nice(pid: Option<u32>, nice: i32) -> std::io::Result<()> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/autogroup"),
        None => "/proc/self/autogroup".into(),
    };
    match std::fs::write(path, nice.to_string()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Does any process of the group still run? Zombies do not count: a group whose members were
/// re-parented to an init that never reaps would otherwise look alive forever.
pub fn group_alive(pgid: u32) -> bool {
    if matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH)) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return true;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            // After the name: state is index 0, pgrp (field 5) index 2.
            stat_fields(pid).is_some_and(|f| {
                f.first().map(String::as_str) != Some("Z")
                    && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
            })
        })
}

/// Sends `sig` to the whole process group; a group that is already gone is fine.
pub fn signal_group(pgid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), sig);
}

/// Sends `sig` to one process.
pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// A handle that becomes readable when a process (not necessarily our child) exits.
pub struct ExitWatch(OwnedFd);

impl ExitWatch {
    /// Opens a pidfd for `pid` (Linux 5.3+).
    pub fn open(pid: u32) -> Option<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        Some(ExitWatch(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Waits up to `timeout` for the process to exit; true when it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd on the stack, count 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                return true;
            }
            if n == 0 || left.is_zero() {
                return false;
            }
            // EINTR: retry until the deadline.
        }
    }
}

/// Waits until `proc` has exited (or is no longer the same process), up to `timeout`.
pub fn wait_gone(proc: &ProcRef, timeout: Duration) -> bool {
    if !proc.is_alive() {
        return true;
    }
    match ExitWatch::open(proc.pid) {
        Some(w) => w.wait(timeout) || !proc.is_alive(),
        None => {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if !proc.is_alive() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            !proc.is_alive()
        }
    }
}

/// Waits until no process of the group exists, up to `timeout`.
pub fn wait_group_gone(pgid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // A group has no exit notification; members are mostly gone within milliseconds.
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_this_process_and_rejects_a_wrong_start_time() {
        let me = ProcRef::of(std::process::id()).expect("own /proc entry");
        assert!(me.is_alive());
        let reused = ProcRef {
            start: me.start + 1,
            ..me.clone()
        };
        assert!(
            !reused.is_alive(),
            "a different start time means a different process"
        );
        let other_boot = ProcRef {
            boot: "another-boot".into(),
            ..me
        };
        assert!(!other_boot.is_alive());
    }

    #[test]
    fn start_time_survives_odd_command_names() {
        // Our own name has no parentheses, but the parser must only split after the last ')'.
        assert!(start_time(std::process::id()).is_some());
        assert!(start_time(u32::MAX - 1).is_none());
    }
}
