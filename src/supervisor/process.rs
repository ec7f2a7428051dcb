//! The process supervisor, one per service (`stack __supervise SPEC`). It outlives the `stack`
//! command that started it, owns exactly one service's process group, restarts it per policy,
//! writes its logs and record, and stops it on SIGTERM. The service's stdout and stderr are
//! pipes to this process, so a service is never left running without its supervisor on purpose:
//! if a supervisor is killed, the next `up` restarts the service under a new one. One supervisor
//! per service is enforced by an exclusive lock on `run/<service>.lock`, held for the supervisor's whole life.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};

use super::identity::{self, ProcRef};
use super::log::{LogSink, Stream};
use super::record::{now_rfc3339, read_json, write_json, ExitInfo, Record, State};
use super::spawn::{Group, Nice, Spawn};
use super::{Handshake, SupervisorSpec};
use crate::spec::RestartPolicy;

/// First restart delay; doubles per consecutive crash up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A process that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Why the supervisor could not run its service; sent back in the handshake.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The service's log cannot be opened.
    #[error("cannot open log {}: {source}", path.display())]
    OpenLog {
        /// The log file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stop signals cannot be caught.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    /// The supervisor cannot identify itself (its start time), so its record would be useless.
    #[error("cannot read its own process identity")]
    OwnIdentity,
    /// The service's program cannot be started.
    #[error("cannot run `{program}` for `{service}`: {source}")]
    Spawn {
        /// The program, as the service file names it.
        program: String,
        /// Service.
        service: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

enum Event {
    Exited(u32, ExitInfo),
    Stop,
    /// SIGCHLD: an orphaned descendant may need reaping.
    Reap,
}

/// Runs the supervisor for the spec at `spec_path`; returns the process exit code.
pub fn run(spec_path: &Path) -> i32 {
    let Some(spec) = read_spec::<SupervisorSpec>(spec_path) else {
        return 2;
    };
    let Some(lock) = hold_service_lock(&spec.lock_path, &spec.service) else {
        return 3;
    };
    let mut sup = match Supervisor::new(spec) {
        Ok(s) => s,
        Err(e) => {
            handshake(&Handshake::failed(e.to_string()));
            return 2;
        }
    };
    let code = sup.run();
    drop(lock);
    code
}

/// Reads a supervisor's spec file; when it cannot, says so in the handshake and returns `None`.
pub fn read_spec<T: for<'de> serde::Deserialize<'de>>(path: &Path) -> Option<T> {
    let why = match read_json(path) {
        Ok(Some(s)) => return Some(s),
        Ok(None) => "it does not exist".to_string(),
        Err(e) => e.to_string(),
    };
    handshake(&Handshake::failed(format!(
        "cannot read supervisor spec {}: {why}",
        path.display()
    )));
    None
}

/// Takes the service's supervisor lock for the caller's lifetime; when another supervisor holds
/// it, says so in the handshake and returns `None`.
pub fn hold_service_lock(path: &Path, service: &str) -> Option<Flock<File>> {
    match File::create(path).map_err(|e| e.to_string()).and_then(|f| {
        Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e.to_string())
    }) {
        Ok(l) => Some(l),
        Err(e) => {
            handshake(&Handshake::failed(format!(
                "`{service}` already has a supervisor ({e})"
            )));
            None
        }
    }
}

/// Sends the one-line handshake on stdout, then detaches stdout from the launching command.
pub fn handshake(h: &Handshake) {
    let mut out = std::io::stdout();
    let _ = serde_json::to_writer(&mut out, h);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 2);
    }
}

struct Supervisor {
    spec: SupervisorSpec,
    log: Arc<Mutex<LogSink>>,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    record: Record,
    handshaken: bool,
}

impl Supervisor {
    fn new(spec: SupervisorSpec) -> Result<Supervisor, SuperviseError> {
        let log = LogSink::open(&spec.log_path, spec.log_cap).map_err(|source| {
            SuperviseError::OpenLog {
                path: spec.log_path.clone(),
                source,
            }
        })?;
        let (tx, rx) = mpsc::channel();
        // Stop requests arrive as signals; a thread turns them into events.
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGHUP,
            signal_hook::consts::SIGCHLD,
        ])
        .map_err(SuperviseError::Signals)?;
        let stop_tx = tx.clone();
        std::thread::spawn(move || {
            for sig in signals.forever() {
                let ev = if sig == signal_hook::consts::SIGCHLD {
                    Event::Reap
                } else {
                    Event::Stop
                };
                if stop_tx.send(ev).is_err() {
                    break;
                }
            }
        });
        // Orphaned grandchildren are re-parented to us, so we can reap them and see the group
        // empty. Best effort: without it they go to init, and only the reaping is lost.
        let _ = crate::sys::become_subreaper();
        let me = ProcRef::of(std::process::id()).ok_or(SuperviseError::OwnIdentity)?;
        let previous: Option<Record> = read_json(&spec.record_path).ok().flatten();
        let record = Record {
            // A crash restart of the same instance keeps counting.
            restarts: previous
                .as_ref()
                .filter(|p| p.id == spec.instance_id)
                .map_or(0, |p| p.restarts),
            last_exit: previous.and_then(|p| p.last_exit),
            ..Record::starting(
                crate::backend::BackendKind::Process,
                spec.instance_id.clone(),
                &spec.service,
                &spec.program,
                &spec.hash,
                &spec.ports,
                me,
            )
        };
        Ok(Supervisor {
            spec,
            log: Arc::new(Mutex::new(log)),
            tx,
            rx,
            record,
            handshaken: false,
        })
    }

    fn note(&self, text: &str) {
        if let Ok(mut l) = self.log.lock() {
            l.line(Stream::Sup, text);
        }
    }

    fn save(&self) {
        if let Err(e) = write_json(&self.spec.record_path, &self.record) {
            self.note(&format!("cannot write record: {e}"));
        }
    }

    fn reply(&mut self, h: Handshake) {
        if !self.handshaken {
            handshake(&h);
            self.handshaken = true;
        }
    }

    fn run(&mut self) -> i32 {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let since = Instant::now();
            let pid = match self.spawn() {
                Ok(child) => child.pid,
                Err(e) => {
                    let e = e.to_string();
                    self.note(&e);
                    self.record.state = State::Failed;
                    self.record.process = None;
                    self.save();
                    self.reply(Handshake::failed(e));
                    return 1;
                }
            };
            self.reply(Handshake::ok(Some(pid), State::Running));
            let exit = loop {
                match self.rx.recv() {
                    Ok(Event::Exited(p, info)) if p == pid => break Some(info),
                    Ok(Event::Exited(..)) => {}
                    Ok(Event::Reap) => reap_orphans(pid),
                    Ok(Event::Stop) | Err(_) => break None,
                }
            };
            let Some(info) = exit else {
                self.stop(pid);
                return 0;
            };
            // The leader is gone; stragglers of its group must not keep ports or files busy.
            // What left the group is killed too, unless the service keeps it for its next
            // instance (a runner's sandboxes).
            self.drain(
                pid,
                Duration::from_secs(2),
                self.spec.orphans == crate::spec::Orphans::Keep,
            );
            let clean = info.is_clean();
            self.note(&format!("exited: {}", info.describe()));
            self.record.last_exit = Some(info);
            self.record.process = None;
            let restart = match self.spec.restart {
                RestartPolicy::Always => true,
                RestartPolicy::OnFailure => !clean,
                RestartPolicy::No => false,
            };
            if !restart {
                self.record.state = if clean && self.spec.is_task {
                    State::Completed
                } else if clean {
                    State::Exited
                } else {
                    State::Failed
                };
                self.save();
                return 0;
            }
            if since.elapsed() >= STABLE_AFTER {
                backoff = FIRST_BACKOFF;
            }
            self.record.restarts += 1;
            self.record.state = State::Starting;
            self.save();
            self.note(&format!(
                "restarting in {} (restart {})",
                humantime::format_duration(backoff),
                self.record.restarts
            ));
            let resume = Instant::now() + backoff;
            loop {
                match self
                    .rx
                    .recv_timeout(resume.saturating_duration_since(Instant::now()))
                {
                    Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        self.record.state = State::Stopped;
                        self.save();
                        return 0;
                    }
                    Ok(Event::Reap) => reap_orphans(pid),
                    Ok(Event::Exited(..)) => {}
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn spawn(&mut self) -> Result<ProcRef, SuperviseError> {
        let spec = &self.spec;
        // The first start runs at the priority `up` asked for (higher on or near the critical
        // path, lower off it) until `up` settles it; a restart runs at normal weight, even if
        // that `up` is gone.
        let first = self.record.started_at.is_none();
        let nice = if first { spec.startup_nice } else { 0 };
        // The program `up` resolved through PATH (no second search, and what `status` shows),
        // still called by the name the service file gives it.
        let mut launch = Spawn::new(&spec.program, &spec.command[1..])
            .arg0(&spec.command[0])
            .envs(&spec.env)
            .current_dir(&spec.working_dir)
            .run_as(spec.run_as.as_ref())
            .group(Group::Own);
        if spec.startup_nice != 0 {
            // This session is the service's scheduler group, and the child inherits the nice
            // value whichever user it then runs as.
            launch = launch.nice(Nice::Inherited(nice));
        }
        let t0 = Instant::now();
        let mut child = launch.spawn().map_err(|source| SuperviseError::Spawn {
            program: spec.command[0].clone(),
            service: spec.service.clone(),
            source,
        })?;
        let pid = child.id();
        let me = ProcRef::of(pid).unwrap_or(ProcRef {
            pid,
            start: 0,
            boot: identity::boot_id(),
        });
        for (stream, pipe) in [
            (
                Stream::Out,
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
            (
                Stream::Err,
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            ),
        ] {
            if let Some(pipe) = pipe {
                let log = Arc::clone(&self.log);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(pipe);
                    let mut buf = Vec::new();
                    while reader
                        .read_until(b'\n', &mut buf)
                        .map(|n| n > 0)
                        .unwrap_or(false)
                    {
                        if let Ok(mut l) = log.lock() {
                            l.line(stream, &String::from_utf8_lossy(&buf));
                        }
                        buf.clear();
                    }
                });
            }
        }
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let info = match child.wait() {
                Ok(st) => ExitInfo {
                    code: st.code(),
                    signal: st.signal(),
                    at: now_rfc3339(),
                },
                Err(_) => ExitInfo {
                    code: None,
                    signal: None,
                    at: now_rfc3339(),
                },
            };
            let _ = tx.send(Event::Exited(pid, info));
        });
        self.record.process = Some(me.clone());
        self.record.state = State::Running;
        self.record.started_at = Some(now_rfc3339());
        self.record.spawn_ms = Some(t0.elapsed().as_millis() as u64);
        self.save();
        let priority = match nice {
            0 => String::new(),
            n if n < 0 => format!(" (nice {n} until ready: on or near the critical path)"),
            n => format!(" (nice {n} until ready: off the critical path)"),
        };
        self.note(&format!(
            "spawned pid {pid}{priority}: {}",
            show_argv(&spec.command)
        ));
        Ok(me)
    }

    /// Stop on request: the configured signal to the group, the grace period, then SIGKILL, then
    /// wait until the group is empty.
    fn stop(&mut self, pid: u32) {
        let t0 = Instant::now();
        self.record.state = State::Stopping;
        self.save();
        let sig = self.spec.stop_signal;
        self.note(&format!(
            "stop requested: {} to process group {pid}",
            sig.as_str()
        ));
        identity::signal_group(pid, sig);
        let deadline = t0 + self.spec.stop_grace;
        let mut exit = self.wait_exit(pid, deadline);
        if exit.is_none() {
            self.note(&format!(
                "still running after {}: SIGKILL to process group {pid}",
                humantime::format_duration(self.spec.stop_grace)
            ));
            identity::signal_group(pid, Signal::SIGKILL);
            exit = self.wait_exit(pid, Instant::now() + super::KILL_REAP_WAIT);
        }
        self.drain(pid, super::KILL_REAP_WAIT, false);
        let info = exit.unwrap_or(ExitInfo {
            code: None,
            signal: Some(libc::SIGKILL),
            at: now_rfc3339(),
        });
        self.note(&format!(
            "stopped ({}) in {} ms",
            info.describe(),
            t0.elapsed().as_millis()
        ));
        self.record.last_exit = Some(info);
        self.record.process = None;
        self.record.state = State::Stopped;
        self.save();
    }

    fn wait_exit(&self, pid: u32, deadline: Instant) -> Option<ExitInfo> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Event::Exited(p, info)) if p == pid => return Some(info),
                Ok(Event::Reap) => reap_orphans(pid),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// After the leader exited (and was reaped): kills what is left of its group, then reaps
    /// every descendant that was re-parented to us. Processes that left the group (PostgreSQL's
    /// backends call setsid) get a moment to notice their parent's death, then SIGKILL, unless
    /// `keep_orphans`: then they stay (still reaped here when they exit).
    fn drain(&self, pgid: u32, timeout: Duration, keep_orphans: bool) {
        let t0 = Instant::now();
        let me = std::process::id();
        if identity::group_alive(pgid) {
            identity::signal_group(pgid, Signal::SIGKILL);
        }
        let mut killed_orphans = false;
        loop {
            // The leader is already reaped, so reaping any child here steals nobody's status.
            while let Ok(st) = waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG)) {
                if st == nix::sys::wait::WaitStatus::StillAlive {
                    break;
                }
            }
            let orphans = identity::children_of(me);
            if orphans.is_empty() && !identity::group_alive(pgid) {
                return;
            }
            if keep_orphans && !identity::group_alive(pgid) {
                self.note(&format!(
                    "keeping {} processes it left for its next instance (process.orphans: keep)",
                    orphans.len()
                ));
                return;
            }
            if t0.elapsed() >= timeout {
                self.note(&format!(
                    "{} orphaned processes did not exit",
                    orphans.len()
                ));
                return;
            }
            if !killed_orphans && t0.elapsed() >= timeout / 2 {
                for pid in orphans {
                    if let Some(p) = ProcRef::of(pid) {
                        self.note(&format!(
                            "killing orphaned pid {pid}: {}",
                            identity::cmdline(pid)
                        ));
                        identity::signal(p.pid, Signal::SIGKILL);
                    }
                }
                killed_orphans = true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Reaps exited children other than the group leader (whose waiter thread owns it).
fn reap_orphans(leader: u32) {
    loop {
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peek {
            Ok(status) => status.pid(),
            Err(_) => None,
        };
        match pid {
            Some(p) if p.as_raw() as u32 != leader => {
                let _ = waitpid(p, None);
            }
            _ => return,
        }
    }
}

/// An argv as one readable line: arguments with spaces or control characters are quoted.
fn show_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '"')
            {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
