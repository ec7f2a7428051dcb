//! Sandboxes of a runner that is not root: one long-lived **namespace holder** per runner home,
//! `unshare --user --map-root-user --mount --propagation private sleep infinity`, in whose user
//! namespace the runner's uid is root. The sandboxes' overlay mounts live in the holder's mount
//! namespace and every runc command runs inside both of its namespaces (runc then sees itself as
//! root in a user namespace: rootless runc). The holder is started in its own session, so it
//! outlives a runner crash; its pid and start time are kept in `<home>/holder.json` and a new
//! driver takes it back only when both still match.
//!
//! A multithreaded process cannot enter a user namespace (setns(2)), so the runner never does:
//! runc is started with a `pre_exec` that enters the holder's namespaces in the forked child, and
//! the few things done without a program (mounting, unmounting, connecting to a port inside a
//! sandbox) run in a forked child that only makes system calls ([`run_in`]) and reports back over
//! a pipe (and, for a connection, passes the connected socket back with `SCM_RIGHTS`).

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runc::read_stat;

/// How long the holder may take to set up its namespaces (it only unshares and writes two maps).
const HOLDER_START: Duration = Duration::from_secs(10);
/// How long a SIGKILLed holder may take to be gone.
const HOLDER_END: Duration = Duration::from_secs(5);

/// Why the user namespace of a runner that is not root could not be set up or entered.
#[derive(Debug, thiserror::Error)]
pub enum UsernsError {
    /// `unshare` could not be started.
    #[error(
        "cannot start `unshare` for the sandboxes' user namespace: install util-linux (Debian package `util-linux`)"
    )]
    Spawn(#[source] io::Error),
    /// `unshare` exited instead of holding the namespaces.
    #[error(
        "`unshare --user --map-root-user --mount` exited with {status}: {stderr}; unprivileged user namespaces are probably disabled: \
         allow them (sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0, or the AppArmor restriction \
         kernel.apparmor_restrict_unprivileged_userns=0), or run the runner as root"
    )]
    Exited {
        /// Its exit status.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// The holder did not exec its pause program in time.
    #[error("the namespace holder (pid {pid}) did not set up its namespaces within {timeout:?}: the machine is overloaded?")]
    Slow {
        /// Its pid.
        pid: u32,
        /// How long it was given.
        timeout: Duration,
    },
    /// The holder is gone (killed, or the host rebooted): a new driver starts a new one.
    #[error("the sandboxes' namespace holder (pid {pid}) is gone: restart the runner, which starts a new one (running sandboxes are then stopped)")]
    Gone {
        /// Its pid.
        pid: i32,
    },
    /// A namespace of a process could not be opened (the process is gone?).
    #[error("cannot open the namespace {path}")]
    Namespace {
        /// The `/proc/<pid>/ns/<kind>` file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The holder's record or lock could not be read or written.
    #[error("cannot {op} {path}")]
    Record {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Forking the child that works inside the namespaces failed, or it could not enter them.
    #[error("cannot {op} inside the sandboxes' user namespace")]
    Child {
        /// What the child was to do.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// The holder as recorded in `<home>/holder.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    pid: i32,
    /// Field 22 of /proc/<pid>/stat: with the pid, names this one process for good.
    start: u64,
}

/// The namespace holder of one runner home.
#[derive(Debug)]
pub struct Holder {
    pid: i32,
    start: u64,
    record: PathBuf,
    /// The `unshare` child when this process started it, to reap it when it is ended.
    child: Mutex<Option<Child>>,
}

/// A namespace to enter: the open `/proc/<pid>/ns/<kind>` file and its `CLONE_NEW*` flag.
pub(crate) type Namespace = (File, libc::c_int);

impl Holder {
    /// Takes back the holder recorded under `home` if that very process (pid and start time)
    /// still runs, or starts a new one. `true` with a new holder: whatever ran in a previous one
    /// is out of reach.
    pub fn open(home: &Path) -> Result<(Holder, bool), UsernsError> {
        let record = home.join("holder.json");
        let lock_path = home.join("holder.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(record_err("open", &lock_path))?;
        // Two drivers opening the same home at once start one holder, not two.
        let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| record_err("lock", &lock_path)(e.into()))?;
        if let Some(r) = read_record(&record)? {
            if is_alive(r.pid, r.start) {
                let holder = Holder {
                    pid: r.pid,
                    start: r.start,
                    record,
                    child: Mutex::new(None),
                };
                return Ok((holder, false));
            }
        }
        let holder = Self::start(home, record)?;
        Ok((holder, true))
    }

    fn start(home: &Path, record: PathBuf) -> Result<Holder, UsernsError> {
        let log_path = home.join("holder.log");
        let log = File::create(&log_path).map_err(record_err("create", &log_path))?;
        let mut cmd = std::process::Command::new("unshare");
        // `ready` once unshare has set the namespaces and maps up and exec'd the shell; then the
        // shell becomes the pause.
        cmd.args([
            "--user",
            "--map-root-user",
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            "echo ready && exec sleep infinity",
        ])
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        // SAFETY: setsid(2) is async-signal-safe and touches no memory of ours. A session of its
        // own: the holder outlives the runner and no signal to the runner's group reaches it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(UsernsError::Spawn)?;
        let pid = child.id();
        let ready = child.stdout.take().map(|out| wait_ready(out, HOLDER_START));
        match ready {
            Some(Ok(true)) => {}
            Some(Ok(false)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(UsernsError::Slow {
                    pid,
                    timeout: HOLDER_START,
                });
            }
            // It exited (or its pipe failed): say why, from its stderr.
            _ => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                let stderr = fs::read_to_string(&log_path).unwrap_or_default();
                return Err(UsernsError::Exited {
                    status,
                    stderr: stderr.trim().to_string(),
                });
            }
        }
        let pid = pid as i32;
        let start = read_stat(pid)
            .map(|s| s.start)
            .ok_or(UsernsError::Gone { pid })?;
        let json = serde_json::to_vec(&Record { pid, start }).unwrap_or_default();
        let tmp = record.with_extension("json.tmp");
        fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, &record))
            .map_err(record_err("write", &record))?;
        Ok(Holder {
            pid,
            start,
            record,
            child: Mutex::new(Some(child)),
        })
    }

    /// The holder's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `path` of the holder's mount namespace, as this process reaches it
    /// (`/proc/<holder>/root/<path>`).
    pub fn view(&self, path: &Path) -> PathBuf {
        let rel = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(rel)
    }

    /// The holder's `/proc/<pid>/mountinfo`.
    pub fn mountinfo(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/mountinfo", self.pid))
    }

    /// Is the holder still the process it was?
    pub fn is_alive(&self) -> bool {
        is_alive(self.pid, self.start)
    }

    /// The holder's user and mount namespaces, opened now and checked to be its own.
    pub(crate) fn namespaces(&self) -> Result<Vec<Namespace>, UsernsError> {
        let ns = open_namespaces(
            self.pid,
            &[("user", libc::CLONE_NEWUSER), ("mnt", libc::CLONE_NEWNS)],
        )?;
        // Checked once they are open: a pid reused in between would be another process's.
        if !self.is_alive() {
            return Err(UsernsError::Gone { pid: self.pid });
        }
        Ok(ns)
    }

    /// Makes `cmd` run inside the holder's namespaces (entered by the forked child before exec).
    pub(crate) fn enter(&self, cmd: &mut impl PreExec) -> Result<(), UsernsError> {
        let ns = self.namespaces()?;
        cmd.enter(ns);
        Ok(())
    }

    /// Mounts an overlay with `options` at `target` in the holder's mount namespace.
    pub(crate) fn mount_overlay(&self, target: &Path, options: &str) -> Result<(), UsernsError> {
        let ns = self.namespaces()?;
        let target = c_path(target)?;
        let data = CString::new(options).map_err(|e| child_err("mount the overlay")(e.into()))?;
        run_in(&ns, "mount the overlay", || {
            // SAFETY: every pointer is a NUL-terminated string that outlives the call.
            let rc = unsafe {
                libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            errno_of(rc)
        })
    }

    /// Unmounts `target` in the holder's mount namespace if something is mounted there (lazily
    /// when still busy).
    pub(crate) fn unmount(&self, target: &Path) -> Result<(), UsernsError> {
        let mounted = || {
            crate::bundle::is_mount_point_in(&self.mountinfo(), target)
                .map_err(record_err("read", &self.mountinfo()))
        };
        while mounted()? {
            let ns = self.namespaces()?;
            let c_target = c_path(target)?;
            run_in(&ns, "unmount the overlay", || {
                // SAFETY: a NUL-terminated string that outlives the call.
                let rc = unsafe { libc::umount2(c_target.as_ptr(), 0) };
                match errno_of(rc) {
                    // A process of the sandbox not yet gone: detach it, the kernel frees it when
                    // the last user leaves.
                    Err(libc::EBUSY) => {
                        // SAFETY: as above.
                        errno_of(unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) })
                    }
                    other => other,
                }
            })?;
        }
        Ok(())
    }

    /// Ends the holder (SIGKILL, after checking it is still the same process), waits until it
    /// has exited, and forgets it.
    pub fn end(&self) -> Result<(), UsernsError> {
        crate::pidfd::kill_and_wait(self.pid, self.start, HOLDER_END)
            .map_err(child_err("end the namespace holder"))?;
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.wait();
        }
        match fs::remove_file(&self.record) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(record_err("remove", &self.record)(e)),
        }
    }
}

/// Waits up to `timeout` for the holder's `ready` line: `Ok(false)` when it did not come in time,
/// an error when the holder exited first (its pipe closed) or the wait failed.
fn wait_ready(out: std::process::ChildStdout, timeout: Duration) -> io::Result<bool> {
    if !crate::pidfd::wait_readable(out.as_raw_fd(), timeout)? {
        return Ok(false);
    }
    let mut line = [0u8; 6];
    let mut out = out;
    out.read_exact(&mut line)?;
    if &line == b"ready\n" {
        Ok(true)
    } else {
        Err(io::Error::other(
            "the holder wrote something else than `ready`",
        ))
    }
}

/// A command that can enter namespaces before it execs: std's and tokio's.
pub(crate) trait PreExec {
    /// Enters `ns`, in order, in the forked child.
    fn enter(&mut self, ns: Vec<Namespace>);
}

/// The `pre_exec` hook that enters `ns`: setns(2) only, async-signal-safe.
fn setns_hook(ns: Vec<Namespace>) -> impl FnMut() -> io::Result<()> + Send + Sync + 'static {
    move || {
        for (file, kind) in &ns {
            // SAFETY: a valid descriptor and a CLONE_NEW* flag.
            if unsafe { libc::setns(file.as_raw_fd(), *kind) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

impl PreExec for tokio::process::Command {
    fn enter(&mut self, ns: Vec<Namespace>) {
        // SAFETY: the hook only calls setns(2).
        unsafe {
            self.pre_exec(setns_hook(ns));
        }
    }
}

impl PreExec for std::process::Command {
    fn enter(&mut self, ns: Vec<Namespace>) {
        // SAFETY: the hook only calls setns(2).
        unsafe {
            self.pre_exec(setns_hook(ns));
        }
    }
}

/// Opens the namespaces `kinds` (`/proc/<pid>/ns/<name>`, `CLONE_NEW*`) of process `pid`.
pub(crate) fn open_namespaces(
    pid: i32,
    kinds: &[(&str, libc::c_int)],
) -> Result<Vec<Namespace>, UsernsError> {
    kinds
        .iter()
        .map(|(name, flag)| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
            File::open(&path)
                .map(|f| (f, *flag))
                .map_err(|source| UsernsError::Namespace { path, source })
        })
        .collect()
}

/// Connects to `127.0.0.1:port` inside namespaces `ns` (the sandbox's user and network
/// namespaces): a forked child enters them, connects and passes the socket back. A socket stays
/// in the namespace it was created in, so it works from the runner afterwards.
pub(crate) fn connect_in(
    ns: &[Namespace],
    port: u16,
    timeout: Duration,
) -> Result<Result<std::net::TcpStream, io::Error>, UsernsError> {
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Datagram,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| child_err("connect")(e.into()))?;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let theirs_fd = theirs.as_raw_fd();
    // The connection's own error is a result of the child, not a failure to run it.
    let outcome = run_in(ns, "connect", || {
        // SAFETY: plain system calls on descriptors and stack values that outlive them.
        unsafe {
            let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if s < 0 {
                return Err(errno());
            }
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                s,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ) != 0
            {
                // Reported as the datagram's payload, with no descriptor.
                let e = errno();
                let bytes = e.to_ne_bytes();
                libc::send(theirs_fd, bytes.as_ptr().cast(), bytes.len(), 0);
                return Ok(());
            }
            send_fd(theirs_fd, s)
        }
    });
    drop(theirs);
    outcome?;
    receive_fd(&ours).map_err(child_err("receive the connection"))
}

/// Sends descriptor `fd` over unix socket `sock` (a one-byte datagram with `SCM_RIGHTS`),
/// without allocating: this runs in a forked child.
///
/// # Safety
/// `sock` and `fd` must be open descriptors.
unsafe fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    #[repr(C, align(8))]
    struct Control([u8; 64]);
    let mut control = Control([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    if libc::sendmsg(sock, &msg, 0) < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Receives the child's answer: a connected socket, or the errno of its failed connect.
fn receive_fd(sock: &OwnedFd) -> io::Result<Result<std::net::TcpStream, io::Error>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 4];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io::Error::from)?;
    let bytes = msg.bytes;
    let fd = msg.cmsgs().map_err(io::Error::from)?.find_map(|c| match c {
        ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
        _ => None,
    });
    match fd {
        // SAFETY: a descriptor just received, owned by nothing else.
        Some(fd) => Ok(Ok(unsafe { std::net::TcpStream::from_raw_fd(fd) })),
        None if bytes == 4 => Ok(Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)))),
        None => Err(io::Error::other("the connecting child sent nothing")),
    }
}

/// Runs `op` in a forked child that first enters `ns`; `op`'s `Err` is an errno. The child of a
/// multithreaded process may only make async-signal-safe calls: `op` must not allocate, lock or
/// print (system calls on values prepared beforehand only).
pub(crate) fn run_in(
    ns: &[Namespace],
    what: &'static str,
    op: impl FnOnce() -> Result<(), i32>,
) -> Result<(), UsernsError> {
    let fail = child_err(what);
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(e.into()))?;
    let fds: Vec<(RawFd, libc::c_int)> = ns.iter().map(|(f, k)| (f.as_raw_fd(), *k)).collect();
    let w = write_end.as_raw_fd();
    // SAFETY: the child only makes system calls (setns, `op`'s, write, _exit) and never returns.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(fail(io::Error::last_os_error()));
    }
    if pid == 0 {
        // The child: stage 1 is entering the namespaces, stage 2 is `op`.
        for &(fd, kind) in &fds {
            // SAFETY: a valid descriptor and a CLONE_NEW* flag.
            if unsafe { libc::setns(fd, kind) } != 0 {
                report(w, 1, errno());
            }
        }
        match op() {
            // SAFETY: _exit(2) ends the child without running anything of the parent's.
            Ok(()) => unsafe { libc::_exit(0) },
            Err(e) => report(w, 2, e),
        }
    }
    drop(write_end);
    let mut msg = Vec::new();
    let read = File::from(read_end).read_to_end(&mut msg);
    // Reaped here, unless a subreaper's reaper got to it first (then ECHILD: nothing to do).
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    read.map_err(&fail)?;
    if msg.len() < 8 {
        return Ok(());
    }
    let stage = u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]);
    let e = io::Error::from_raw_os_error(i32::from_ne_bytes([msg[4], msg[5], msg[6], msg[7]]));
    Err(if stage == 1 {
        child_err("enter the sandboxes' user namespace")(e)
    } else {
        fail(e)
    })
}

/// Ends the forked child after writing `stage` and errno `e` to the pipe `w`.
fn report(w: RawFd, stage: u32, e: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&stage.to_ne_bytes());
    msg[4..].copy_from_slice(&e.to_ne_bytes());
    // SAFETY: write(2) of a stack buffer, then _exit(2).
    unsafe {
        libc::write(w, msg.as_ptr().cast(), msg.len());
        libc::_exit(1)
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn errno_of(rc: libc::c_int) -> Result<(), i32> {
    if rc == 0 {
        Ok(())
    } else {
        Err(errno())
    }
}

fn c_path(path: &Path) -> Result<CString, UsernsError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| child_err("use a path")(e.into()))
}

fn child_err(op: &'static str) -> impl Fn(io::Error) -> UsernsError {
    move |source| UsernsError::Child { op, source }
}

fn record_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UsernsError {
    let path = path.to_path_buf();
    move |source| UsernsError::Record { op, path, source }
}

fn read_record(path: &Path) -> Result<Option<Record>, UsernsError> {
    match fs::read(path) {
        // An unreadable record names no process to trust: a new holder is started.
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(record_err("read", path)(e)),
    }
}

fn is_alive(pid: i32, start: u64) -> bool {
    crate::pidfd::is_alive(pid, start)
}
