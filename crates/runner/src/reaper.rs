//! The runner as its sandboxes' reaper. `runc run -d` exits once a sandbox's init runs, so the
//! init is reparented to the nearest child subreaper, or to the host's pid 1 (which on these VMs
//! never reaps: a deleted sandbox's init would stay a zombie). The runner makes itself that
//! subreaper and reaps the orphans it inherits, by pid: never `waitpid(-1)`, which would steal
//! the exit status of the processes the runner waits for itself (runc, slirp4netns, unshare, its
//! own forked helpers). An inherited orphan is told from those by its pid namespace: a sandbox's
//! processes live in a pid namespace below the runner's (`NSpid` in /proc/PID/status lists one
//! pid per level, a zombie's too), the runner's own children in its own.

use std::time::Duration;

use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// Makes this process the child subreaper of everything it starts (prctl(2)).
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reaps inherited orphans on every SIGCHLD (and every few seconds, in case one was missed:
/// signals coalesce).
pub fn spawn() {
    tokio::spawn(async move {
        let mut sigchld = signal(SignalKind::child()).ok();
        let own_depth = depth("self");
        loop {
            reap_orphans(own_depth);
            let tick = tokio::time::sleep(Duration::from_secs(5));
            match sigchld.as_mut() {
                Some(s) => {
                    tokio::select! {
                        _ = s.recv() => {}
                        () = tick => {}
                    }
                }
                None => tick.await,
            }
        }
    });
}

/// How many pid namespaces process `pid` (or `self`) is seen in from /proc's: the number of
/// pids on its `NSpid` line (1 when unknown).
fn depth(pid: &str) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .map(|pids| pids.split_whitespace().count())
        })
        .unwrap_or(1)
}

/// Waits for every zombie child of this process that lived in a pid namespace below its own: a
/// sandbox's process it inherited, never a child it waits for itself.
fn reap_orphans(own_depth: usize) {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces and parens.
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let mut rest = stat[close + 1..].split_whitespace();
        let (Some(state), Some(ppid)) = (rest.next(), rest.next()) else {
            continue;
        };
        if state == "Z" && ppid == me && depth(&pid.to_string()) > own_depth {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::depth;

    #[test]
    fn a_process_is_seen_in_at_least_one_pid_namespace() {
        assert!(depth("self") >= 1);
        assert_eq!(depth("no-such-process"), 1);
    }
}
