//! Process identity and signalling. A pid alone is never trusted: a process is "ours" only when
//! its pid, its start time (clock ticks since boot) and the boot id match. What only the OS
//! knows (start times, boot id, group members) comes from [`crate::sys`].

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
    /// Start time in clock ticks since boot (see [`crate::sys::start_time`]).
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

pub use crate::sys::boot_id;

/// The process's start time in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    crate::sys::start_time(pid)
}

fn is_zombie(pid: u32) -> bool {
    crate::sys::is_zombie(pid)
}

/// Pids whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    crate::sys::children_of(parent)
}

/// The process's command line, space-joined (empty when unreadable).
pub fn cmdline(pid: u32) -> String {
    crate::sys::cmdline(pid)
}

/// The process's real user name (or uid when it has no name).
pub fn user_of(pid: u32) -> String {
    match crate::sys::uid_of(pid) {
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

pub use crate::sys::set_session_nice;

/// Does any process of the group still run? Zombies do not count: a group whose members were
/// re-parented to an init that never reaps would otherwise look alive forever.
pub fn group_alive(pgid: u32) -> bool {
    if matches!(killpg(Pid::from_raw(pgid as i32), None), Err(Errno::ESRCH)) {
        return false;
    }
    crate::sys::group_has_live_member(pgid)
}

/// Sends `sig` to the whole process group; a group that is already gone is fine.
pub fn signal_group(pgid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pgid as i32), sig);
}

/// Sends `sig` to one process.
pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Waits until `proc` has exited (or is no longer the same process), up to `timeout`.
pub fn wait_gone(proc: &ProcRef, timeout: Duration) -> bool {
    if !proc.is_alive() {
        return true;
    }
    match crate::sys::ExitWatch::open(proc.pid) {
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
