//! The one place `stack` starts processes. A service (spawned by its supervisor), an init step,
//! a supervisor, a version command and an exec probe all describe their child here, so how a
//! child is isolated (its process group or session, its user, its death with its parent, its
//! priority) is decided once, and the `pre_exec` hooks that must be async-signal-safe live in
//! one file.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use super::RunAs;

/// Which process group (and session) the child lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// The spawner's (an exec probe, a version command).
    Inherit,
    /// A process group of its own, so a stop reaches every process it forks and nothing else.
    Own,
    /// A session of its own (a process group too): no terminal, no Ctrl-C from ours, and, where
    /// the kernel groups tasks by session, a scheduler group of its own.
    Session,
}

/// How the child gets a nice value other than its spawner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nice {
    /// Set by the child itself before exec: only a lowering works for a user that is not root.
    InChild(i32),
    /// Inherited: the spawning thread takes the value (and its session the weight, see
    /// [`crate::sys::set_session_nice`]) for the spawn, then goes back to 0. The child has it
    /// from its first instruction, whichever user it runs as (a service's user could not raise
    /// its own priority). For a spawner that is itself a session of its own.
    Inherited(i32),
    /// Set from the spawner right after the spawn, on the child and its session (best effort).
    AfterSpawn(i32),
}

/// A child to start: a program, its arguments and how it is isolated. Stdin is always
/// `/dev/null`; stdout and stderr are piped unless set otherwise.
#[derive(Debug)]
pub struct Spawn {
    cmd: std::process::Command,
    group: Group,
    die_with_parent: bool,
    nice: Option<Nice>,
}

impl Spawn {
    /// Runs `program` (a path, or a name looked up in PATH) with `args`.
    pub fn new<S: AsRef<OsStr>>(
        program: impl AsRef<OsStr>,
        args: impl IntoIterator<Item = S>,
    ) -> Spawn {
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Spawn {
            cmd,
            group: Group::Inherit,
            die_with_parent: false,
            nice: None,
        }
    }

    /// Runs `argv[0]` (looked up in PATH) with the rest of `argv`.
    pub fn argv(argv: &[String]) -> Spawn {
        Spawn::new(&argv[0], &argv[1..])
    }

    /// The name the program sees as its `argv[0]`.
    pub fn arg0(mut self, name: impl AsRef<OsStr>) -> Spawn {
        self.cmd.arg0(name);
        self
    }

    /// Adds these variables to the inherited environment.
    pub fn envs<'a>(mut self, env: impl IntoIterator<Item = (&'a String, &'a String)>) -> Spawn {
        self.cmd.envs(env);
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Spawn {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs as `user` (when `Some`), with its `HOME`, `USER` and `LOGNAME`.
    pub fn run_as(mut self, user: Option<&RunAs>) -> Spawn {
        if let Some(u) = user {
            self.cmd
                .uid(u.uid)
                .gid(u.gid)
                .env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        self
    }

    /// Where the child lives (see [`Group`]).
    pub fn group(mut self, group: Group) -> Spawn {
        self.group = group;
        self
    }

    /// The child is killed when its spawner dies (see [`crate::sys::die_with_parent`]): an init
    /// step must not outlive a `stack` that is killed, as it would race the next `up` over the
    /// same files.
    pub fn die_with_parent(mut self) -> Spawn {
        self.die_with_parent = true;
        self
    }

    /// Gives the child a nice value (see [`Nice`]).
    pub fn nice(mut self, nice: Nice) -> Spawn {
        self.nice = Some(nice);
        self
    }

    /// Where the child's stdout goes (piped by default).
    pub fn stdout(mut self, to: Stdio) -> Spawn {
        self.cmd.stdout(to);
        self
    }

    /// Where the child's stderr goes (piped by default).
    pub fn stderr(mut self, to: Stdio) -> Spawn {
        self.cmd.stderr(to);
        self
    }

    /// The command with its group and hooks set.
    fn command(mut self) -> (std::process::Command, Option<Nice>) {
        if self.group == Group::Own {
            self.cmd.process_group(0);
        }
        let (session, die) = (self.group == Group::Session, self.die_with_parent);
        let in_child = match self.nice {
            Some(Nice::InChild(n)) => Some(n),
            _ => None,
        };
        if session || die || in_child.is_some() {
            // SAFETY: prctl, setsid and setpriority are async-signal-safe and change only the
            // child, between fork and exec. std runs this hook after switching user, which
            // would otherwise clear the parent-death signal.
            unsafe {
                self.cmd.pre_exec(move || {
                    if die {
                        crate::sys::die_with_parent()?;
                    }
                    if session && libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if let Some(n) = in_child {
                        libc::setpriority(libc::PRIO_PROCESS, 0, n);
                    }
                    Ok(())
                });
            }
        }
        (self.cmd, self.nice)
    }

    /// Starts the child (blocking the calling thread for the fork).
    pub fn spawn(self) -> io::Result<std::process::Child> {
        let (mut cmd, nice) = self.command();
        let inherited = match nice {
            Some(Nice::Inherited(n)) => Some(n),
            _ => None,
        };
        if let Some(n) = inherited {
            // Best effort, as priority only shapes how fast things start.
            let _ = crate::sys::set_session_nice(None, n);
            // SAFETY: setpriority with who = 0 changes only the calling thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, n) };
        }
        let child = cmd.spawn();
        if inherited.is_some() {
            // SAFETY: as above; the spawner itself runs at normal priority.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
        }
        let child = child?;
        renice_after_spawn(nice, child.id());
        Ok(child)
    }

    /// Starts the child for async code; it is killed when its handle is dropped (a future
    /// dropped by Ctrl-C leaves nothing behind).
    pub fn spawn_async(self) -> io::Result<tokio::process::Child> {
        let (cmd, nice) = self.command();
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()?;
        if let Some(pid) = child.id() {
            renice_after_spawn(nice, pid);
        }
        Ok(child)
    }

    /// Runs the child to its end and collects its status and output.
    pub async fn output(self) -> io::Result<std::process::Output> {
        self.spawn_async()?.wait_with_output().await
    }
}

fn renice_after_spawn(nice: Option<Nice>, pid: u32) {
    if let Some(Nice::AfterSpawn(n)) = nice {
        // Set from here, as root: the child may run as a user that could not raise its own
        // priority. Best effort, as priority only shapes how fast things start.
        // SAFETY: setpriority on the child we just spawned.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, n) };
        let _ = crate::sys::set_session_nice(Some(pid), n);
    }
}
