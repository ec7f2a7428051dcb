//! The operating-system seam: every call that only Linux answers (`/proc`, pidfd, the child
//! subreaper, the parent-death signal, scheduler autogroups, the boot id) goes through the
//! functions here, so a port to another OS (macOS first: "The OS seam" in docs/architecture.md)
//! adds one file beside `linux.rs` and touches nothing else. POSIX calls (kill, killpg, getpgid,
//! setsid, setpriority, waitpid) stay where they are used.
//!
//! The seam is plain functions rather than a trait: there is one implementation per target,
//! chosen at compile time, and no test fakes it (tests run real processes).

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as imp;

use std::time::Duration;

/// The current boot's id (empty where the kernel does not expose one). Read once per process:
/// it cannot change while the process runs, and `up` checks process identities every few
/// milliseconds while services start.
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID.get_or_init(imp::boot_id).clone()
}

/// The process's start time in clock ticks since boot (`None` when it does not exist). With
/// the pid and the boot id it identifies a process: a reused pid has another start time.
pub fn start_time(pid: u32) -> Option<u64> {
    imp::start_time(pid)
}

/// Has the process exited without being reaped yet (a zombie)?
pub fn is_zombie(pid: u32) -> bool {
    imp::is_zombie(pid)
}

/// Pids whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    imp::children_of(parent)
}

/// Does a process of group `pgid` exist that is not a zombie? (A group whose members were
/// re-parented to an init that never reaps would otherwise look alive forever.)
pub fn group_has_live_member(pgid: u32) -> bool {
    imp::group_has_live_member(pgid)
}

/// The process's command line, space-joined (empty when unreadable).
pub fn cmdline(pid: u32) -> String {
    imp::cmdline(pid)
}

/// The process's real uid, when it can be read.
pub fn uid_of(pid: u32) -> Option<u32> {
    imp::uid_of(pid)
}

/// Pids of the processes holding a listening TCP socket (IPv4 or IPv6, any address) on `port`;
/// only those this user may inspect.
pub fn listeners_of(port: u16) -> Vec<u32> {
    imp::listeners_of(port)
}

/// The mount points of this process's mount namespace that lie under `dir` (itself included).
pub fn mounts_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    imp::mounts_under(dir)
}

/// Sets the CPU weight of the scheduler group the session of `pid` forms (`None` is this
/// process). Where the kernel groups tasks by session (Linux's `sched_autogroup_enabled`, the
/// default on desktop distributions) a task's own nice value only ranks it within its session:
/// every supervised service has a session of its own, so its weight against the other services
/// is the session's. Where there is no such grouping this does nothing, as the task's nice
/// value then does the job alone.
pub fn set_session_nice(pid: Option<u32>, nice: i32) -> std::io::Result<()> {
    imp::set_session_nice(pid, nice)
}

/// Makes this process the reaper of its orphaned descendants, so a supervisor can reap what
/// its service forked and see the service's group empty.
pub fn become_subreaper() -> std::io::Result<()> {
    imp::become_subreaper()
}

/// Has the kernel kill the calling process with SIGKILL when its parent dies. Runs between
/// fork and exec (async-signal-safe), so an init step never outlives a `stack` that is killed.
pub fn die_with_parent() -> std::io::Result<()> {
    imp::die_with_parent()
}

/// A handle that becomes ready when a process (not necessarily our child) exits.
pub struct ExitWatch(imp::ExitWatch);

impl ExitWatch {
    /// Watches `pid`; `None` where the kernel cannot (the caller then polls).
    pub fn open(pid: u32) -> Option<ExitWatch> {
        imp::ExitWatch::open(pid).map(ExitWatch)
    }

    /// Waits up to `timeout` for the process to exit; true when it has.
    pub fn wait(&self, timeout: Duration) -> bool {
        self.0.wait(timeout)
    }
}
