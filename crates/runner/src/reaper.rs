//! The runner as its sandboxes' reaper. `runc run -d` exits once a sandbox's init runs, so the
//! init is reparented to the nearest child subreaper, or to the host's pid 1 (which on these VMs
//! never reaps: a deleted sandbox's init would stay a zombie). The runner makes itself that
//! subreaper and reaps the orphans it inherits, by pid: never `waitpid(-1)`, which would steal
//! the exit status of the runc processes tokio is waiting for.

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
/// signals coalesce). `own` is the command name of the children tokio waits for itself (runc).
pub fn spawn(own: String) {
    tokio::spawn(async move {
        let mut sigchld = signal(SignalKind::child()).ok();
        loop {
            reap_orphans(&own);
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

/// Waits for every zombie child of this process whose command is not `own`.
fn reap_orphans(own: &str) {
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
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let mut rest = stat[close + 1..].split_whitespace();
        let (Some(state), Some(ppid)) = (rest.next(), rest.next()) else {
            continue;
        };
        if state == "Z" && ppid == me && comm != own {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}
