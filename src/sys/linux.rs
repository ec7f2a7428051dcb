//! The Linux side of the OS seam: `/proc` parsing, pidfd, `prctl`, autogroups.

use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub(super) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The fields of `/proc/PID/stat` after the command name: field 3 (state) is index 0.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

pub(super) fn start_time(pid: u32) -> Option<u64> {
    // Field 22 (starttime) is index 19.
    stat_fields(pid)?.get(19)?.parse().ok()
}

pub(super) fn is_zombie(pid: u32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() == Some("Z")
}

/// Every pid in `/proc` (`None` when it cannot be read).
fn pids() -> Option<Vec<u32>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(
        dir.filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .collect(),
    )
}

pub(super) fn children_of(parent: u32) -> Vec<u32> {
    pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            // Field 4 (ppid) is index 1.
            stat_fields(*pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

pub(super) fn group_has_live_member(pgid: u32) -> bool {
    let Some(pids) = pids() else {
        // No /proc to look in: the group lives, as the caller's killpg said.
        return true;
    };
    pids.into_iter().any(|pid| {
        // State is index 0, pgrp (field 5) index 2.
        stat_fields(pid).is_some_and(|f| {
            f.first().map(String::as_str) != Some("Z")
                && f.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(pgid)
        })
    })
}

pub(super) fn cmdline(pid: u32) -> String {
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

pub(super) fn uid_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// From `/proc/net/tcp{,6}` (the socket inodes listening on the port), then `/proc/*/fd` (who
/// holds them).
pub(super) fn listeners_of(port: u16) -> Vec<u32> {
    let mut inodes = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue; // 0A = LISTEN
            }
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|h| u16::from_str_radix(h, 16).ok());
            if local_port == Some(port) {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return Vec::new();
    }
    pids()
        .unwrap_or_default()
        .into_iter()
        .filter(|pid| {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                return false;
            };
            fds.filter_map(Result::ok).any(|fd| {
                std::fs::read_link(fd.path())
                    .map(|l| inodes.contains(&*l.to_string_lossy()))
                    .unwrap_or(false)
            })
        })
        .collect()
}

/// Writes the session's autogroup nice value; a kernel without autogroups has no such file.
pub(super) fn set_session_nice(pid: Option<u32>, nice: i32) -> std::io::Result<()> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/autogroup"),
        None => "/proc/self/autogroup".into(),
    };
    match std::fs::write(path, nice.to_string()) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

pub(super) fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER only changes this process's own attribute.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

pub(super) fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl is async-signal-safe and changes only the calling process's attribute.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd (Linux 5.3+): readable once its process has exited.
pub(super) struct ExitWatch(OwnedFd);

impl ExitWatch {
    pub(super) fn open(pid: u32) -> Option<ExitWatch> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        Some(ExitWatch(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    pub(super) fn wait(&self, timeout: Duration) -> bool {
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

/// Mount points under `dir`, from `/proc/self/mountinfo` (field 5; octal escapes such as `\040`
/// for a space are decoded).
pub(super) fn mounts_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| std::path::PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect()
}

fn unescape_mount(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
