//! Processes of the driver's own that outlive a runner (the namespace holder, slirp4netns),
//! named for good by their pid and start time and ended through a pidfd (pidfd_open(2)): the
//! descriptor is opened first, then checked to be the recorded process, then signalled and
//! waited on, so a reused pid is never hit.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::runc::read_stat;

/// Is process `pid`, started at `start` (field 22 of /proc/<pid>/stat), still running (not a
/// zombie)?
pub fn is_alive(pid: i32, start: u64) -> bool {
    read_stat(pid).is_some_and(|s| s.start == start && s.state != 'Z')
}

/// pidfd_open(2).
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILLs process `pid` if it is still the one started at `start`, waits up to `timeout` until
/// it has exited, and reaps it when it is this process's child (a pidfd's waitid never reaps
/// another). Nothing to do when it is gone, or the pid is another process's now.
pub fn kill_and_wait(pid: i32, start: u64, timeout: Duration) -> io::Result<()> {
    let pidfd = match open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    // A zombie of it counts as it: it is still to be reaped.
    if read_stat(pid).is_none_or(|s| s.start != start) {
        return Ok(());
    }
    if is_alive(pid, start) {
        // SAFETY: pidfd_send_signal(2) on a valid pidfd, no siginfo.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        let e = io::Error::last_os_error();
        // ESRCH: it exited in between.
        if sent != 0 && e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
        // Readable once the process has exited.
        if !wait_readable(pidfd.as_raw_fd(), timeout)? {
            return Err(io::Error::from(io::ErrorKind::TimedOut));
        }
    }
    reap(&pidfd);
    Ok(())
}

/// Reaps the exited child `pidfd` names, without waiting: its exit, when it was this process's
/// child and had exited.
pub fn reap(pidfd: &OwnedFd) -> Option<libc::siginfo_t> {
    // SAFETY: waitid(2) with P_PIDFD on a valid pidfd and a zeroed siginfo on the stack.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        );
        (rc == 0 && info.si_pid() != 0).then_some(info)
    }
}

/// Waits up to `timeout` for `fd` to be readable (or closed): `false` when the time ran out.
pub fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one pollfd on the stack, for one valid descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            // A signal to the runner interrupted the wait: wait on.
            _ if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => continue,
            _ => return Err(io::Error::last_os_error()),
        }
    }
}
