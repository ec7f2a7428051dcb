//! The `runc` binary, driven as a command-line tool with `--root <runner home>/runc`: run, exec,
//! kill, delete, state and list. One method per runc command; the sandbox life cycle that strings
//! them together is the driver's.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use crate::id::SandboxId;
use crate::userns::Holder;

/// Why a runc command failed.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The binary could not be started.
    #[error(
        "cannot run `{binary}`: install runc (Debian package `runc`, see scripts/install-deps.sh)"
    )]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// runc could not be started inside the runner's user namespace (a runner that is not root).
    #[error("cannot run runc inside the sandboxes' user namespace")]
    Userns(#[source] crate::userns::UsernsError),
    /// runc ran and failed.
    #[error("`runc {command}` for sandbox {id} exited with {code}: {stderr}")]
    Failed {
        /// The runc subcommand.
        command: &'static str,
        /// The container.
        id: String,
        /// runc's exit code (-1 when killed by a signal).
        code: i32,
        /// What runc wrote to stderr.
        stderr: String,
    },
    /// runc's JSON output did not parse.
    #[error("`runc {command}` printed output that is not the JSON expected")]
    Output {
        /// The runc subcommand.
        command: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An exec'd command ran past its timeout; it and its children were killed.
    #[error("the command in sandbox {id} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The sandbox.
        id: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Reading the exec'd command's output or its pid file failed.
    #[error("cannot read the output of the command in sandbox {id}")]
    Io {
        /// The sandbox.
        id: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A container as `runc state` and `runc list` report it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ContainerState {
    /// The container id (the sandbox id).
    pub id: String,
    /// The init process's pid on the host (0 once stopped).
    pub pid: u32,
    /// `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The bundle directory.
    pub bundle: PathBuf,
}

/// A container's init process as runc recorded it: its pid and start time (clock ticks since
/// boot), which together name one process for good, whatever pid is reused later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct InitProcess {
    /// Its pid on the host.
    #[serde(rename = "init_process_pid")]
    pub pid: i32,
    /// Its start time, as in field 22 of /proc/<pid>/stat.
    #[serde(rename = "init_process_start")]
    pub start: u64,
}

impl InitProcess {
    /// Is this very process still alive (same pid and start time, not a zombie)?
    pub fn is_alive(&self) -> bool {
        read_stat(self.pid).is_some_and(|s| s.start == self.start && s.state != 'Z')
    }
}

/// What an exec'd command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Its exit code; 128 + the signal number when a signal ended it.
    pub exit_code: i32,
    /// Its standard output (at most the limit asked for).
    pub stdout: Vec<u8>,
    /// Its standard error (at most the limit asked for).
    pub stderr: Vec<u8>,
    /// Whether stdout or stderr went past the limit and was cut.
    pub truncated: bool,
}

/// How to run a command in a sandbox.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// Extra environment, on top of the sandbox's.
    pub env: Vec<(String, String)>,
    /// Working directory (default: the image's).
    pub cwd: Option<String>,
    /// How long before the command and its children are killed.
    pub timeout: Duration,
    /// Most bytes kept of each of stdout and stderr (the rest is read and dropped).
    pub output_limit: usize,
}

impl Default for ExecOptions {
    fn default() -> Self {
        Self {
            env: Vec::new(),
            cwd: None,
            timeout: Duration::from_secs(60),
            output_limit: 1 << 20,
        }
    }
}

/// The runc binary and its state dir.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    /// For a runner that is not root: every runc command runs in this holder's namespaces, as
    /// rootless runc.
    holder: Option<Arc<Holder>>,
}

/// After the command exits, how long its output pipes may take to drain: the bytes are already
/// in the pipe, so this only bounds a background child that kept the pipe open.
const DRAIN_GRACE: Duration = Duration::from_millis(500);

impl Runc {
    /// `binary` (e.g. `runc` from PATH) with its state under `root`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            root: root.into(),
            holder: None,
        }
    }

    /// The same runc run inside `holder`'s user and mount namespaces (a runner that is not root).
    pub fn in_holder(self, holder: Arc<Holder>) -> Self {
        Self {
            holder: Some(holder),
            ..self
        }
    }

    fn command(&self) -> Result<Command, RuncError> {
        let mut c = Command::new(&self.binary);
        if let Some(holder) = &self.holder {
            holder.enter(&mut c).map_err(RuncError::Userns)?;
            // Root in a user namespace: rootless cgroup handling, said rather than guessed.
            c.args(["--rootless", "true"]);
        }
        c.arg("--root").arg(&self.root);
        c.stdin(Stdio::null()).kill_on_drop(true);
        Ok(c)
    }

    /// `runc delete --force`, blocking: for a driver clearing, as it opens, the containers of a
    /// holder that is gone.
    pub(crate) fn delete_blocking(&self, id: &str) -> Result<(), RuncError> {
        let mut c = std::process::Command::new(&self.binary);
        if let Some(holder) = &self.holder {
            holder.enter(&mut c).map_err(RuncError::Userns)?;
            c.args(["--rootless", "true"]);
        }
        c.arg("--root").arg(&self.root);
        let out = c
            .args(["delete", "--force", id])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuncError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(RuncError::Failed {
            command: "delete",
            id: id.to_string(),
            code: out.status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    async fn output(
        &self,
        command: &'static str,
        id: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<Vec<u8>, RuncError> {
        let mut c = self.command()?;
        c.arg(command).args(args);
        let out = c.output().await.map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(RuncError::Failed {
                command,
                id: id.to_string(),
                code: out.status.code().unwrap_or(-1),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `runc run -d`: creates and starts the container of `bundle`; returns once its init runs.
    /// The init's stdout and stderr go to `log`.
    pub async fn run_detached(
        &self,
        id: &SandboxId,
        bundle: &Path,
        log: &Path,
    ) -> Result<(), RuncError> {
        self.launch("run", id, bundle, log).await
    }

    /// `runc create`: creates the container of `bundle`, its init waiting (in its namespaces,
    /// before its command) for [`Runc::start`]. The init's stdout and stderr go to `log`.
    pub async fn create(&self, id: &SandboxId, bundle: &Path, log: &Path) -> Result<(), RuncError> {
        self.launch("create", id, bundle, log).await
    }

    /// `runc start`: runs the command of a container made with [`Runc::create`].
    pub async fn start(&self, id: &SandboxId) -> Result<(), RuncError> {
        self.output("start", id.as_str(), &[id.as_str().as_ref()])
            .await
            .map(drop)
    }

    /// `runc run --detach` or `runc create`, the init's stdio going to `log`.
    async fn launch(
        &self,
        command: &'static str,
        id: &SandboxId,
        bundle: &Path,
        log: &Path,
    ) -> Result<(), RuncError> {
        let spawn = |source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        };
        // Not a pipe: the init inherits runc's stdio and would hold a pipe open for its life.
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(spawn)?;
        let mut c = self.command()?;
        c.arg(command);
        if command == "run" {
            c.arg("--detach");
        }
        c.arg("--bundle").arg(bundle).arg(id.as_str());
        c.stdout(file.try_clone().map_err(spawn)?).stderr(file);
        // `status`, not `output`: tokio's `output` would replace the log with pipes.
        let status = c.status().await.map_err(spawn)?;
        if status.success() {
            return Ok(());
        }
        // runc wrote its complaint to the log it was given as stderr.
        let text = fs::read(log).unwrap_or_default();
        let tail = &text[text.len().saturating_sub(2048)..];
        Err(RuncError::Failed {
            command,
            id: id.to_string(),
            code: status.code().unwrap_or(-1),
            stderr: String::from_utf8_lossy(tail).trim().to_string(),
        })
    }

    /// The init of container `id`, from runc's state file rather than a runc process (an exec's
    /// round trip pays for one runc process only): `None` when runc has no such container.
    pub fn init(&self, id: &SandboxId) -> Option<InitProcess> {
        let bytes = fs::read(self.root.join(id.as_str()).join("state.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// `runc state`: `None` when runc has no such container.
    pub async fn state(&self, id: &SandboxId) -> Result<Option<ContainerState>, RuncError> {
        match self
            .output("state", id.as_str(), &[id.as_str().as_ref()])
            .await
        {
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|source| RuncError::Output {
                    command: "state",
                    source,
                }),
            Err(RuncError::Failed { stderr, .. }) if stderr.contains("does not exist") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `runc list`: every container under this root.
    pub async fn list(&self) -> Result<Vec<ContainerState>, RuncError> {
        let out = self
            .output("list", "*", &["--format".as_ref(), "json".as_ref()])
            .await?;
        // runc prints `null` when there are none.
        let list: Option<Vec<ContainerState>> =
            serde_json::from_slice(&out).map_err(|source| RuncError::Output {
                command: "list",
                source,
            })?;
        Ok(list.unwrap_or_default())
    }

    /// `runc kill <id> <signal>`, e.g. `KILL` or `TERM`.
    pub async fn kill(&self, id: &SandboxId, signal: &str) -> Result<(), RuncError> {
        self.output(
            "kill",
            id.as_str(),
            &[id.as_str().as_ref(), signal.as_ref()],
        )
        .await
        .map(drop)
    }

    /// `runc pause`: freezes every process of the container (the cgroup freezer).
    pub async fn pause(&self, id: &SandboxId) -> Result<(), RuncError> {
        self.output("pause", id.as_str(), &[id.as_str().as_ref()])
            .await
            .map(drop)
    }

    /// `runc resume`: thaws a container frozen with [`Runc::pause`].
    pub async fn resume(&self, id: &SandboxId) -> Result<(), RuncError> {
        self.output("resume", id.as_str(), &[id.as_str().as_ref()])
            .await
            .map(drop)
    }

    /// `runc delete --force`: kills the container if it runs and removes its state and cgroups.
    pub async fn delete(&self, id: &SandboxId) -> Result<(), RuncError> {
        self.output(
            "delete",
            id.as_str(),
            &["--force".as_ref(), id.as_str().as_ref()],
        )
        .await
        .map(drop)
    }

    /// `runc exec` of `args` in the container; on timeout the command and every process it started
    /// are killed (found through /proc: killing runc alone would leave them running).
    pub async fn exec(
        &self,
        id: &SandboxId,
        args: &[String],
        opts: &ExecOptions,
        pid_file: &Path,
    ) -> Result<ExecOutput, RuncError> {
        let io_err = |source| RuncError::Io {
            id: id.to_string(),
            source,
        };
        let _ = fs::remove_file(pid_file);
        let mut c = self.command()?;
        c.arg("exec").arg("--pid-file").arg(pid_file);
        for (k, v) in &opts.env {
            let mut kv = OsString::from(k);
            kv.push("=");
            kv.push(v);
            c.arg("--env").arg(kv);
        }
        if let Some(cwd) = &opts.cwd {
            c.arg("--cwd").arg(cwd);
        }
        c.arg(id.as_str()).args(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().map_err(|source| RuncError::Spawn {
            binary: self.binary.clone(),
            source,
        })?;
        let stdout = tokio::spawn(read_capped(child.stdout.take(), opts.output_limit));
        let stderr = tokio::spawn(read_capped(child.stderr.take(), opts.output_limit));

        let status = match tokio::time::timeout(opts.timeout, child.wait()).await {
            Ok(status) => status.map_err(io_err)?,
            Err(_) => {
                if let Ok(Ok(pid)) = fs::read_to_string(pid_file).map(|s| s.trim().parse::<i32>()) {
                    let deadline = Instant::now() + Duration::from_secs(2);
                    let _ = tokio::task::spawn_blocking(move || kill_tree(pid, deadline)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
                let _ = child.kill().await;
                stdout.abort();
                stderr.abort();
                let _ = fs::remove_file(pid_file);
                return Err(RuncError::Timeout {
                    id: id.to_string(),
                    timeout: opts.timeout,
                });
            }
        };
        let _ = fs::remove_file(pid_file);
        let drained = |task: tokio::task::JoinHandle<std::io::Result<(Vec<u8>, bool)>>| async move {
            match tokio::time::timeout(DRAIN_GRACE, task).await {
                Ok(Ok(r)) => r,
                Ok(Err(join)) => Err(std::io::Error::other(join)),
                Err(_) => Ok((Vec::new(), true)),
            }
        };
        let (out, out_cut) = drained(stdout).await.map_err(io_err)?;
        let (err, err_cut) = drained(stderr).await.map_err(io_err)?;
        let exit_code = match status.code() {
            Some(code) => code,
            None => std::os::unix::process::ExitStatusExt::signal(&status).map_or(-1, |s| 128 + s),
        };
        Ok(ExecOutput {
            exit_code,
            stdout: out,
            stderr: err,
            truncated: out_cut || err_cut,
        })
    }
}

/// Reads `pipe` to its end, keeping the first `limit` bytes.
async fn read_capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    limit: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let Some(mut pipe) = pipe else {
        return Ok((Vec::new(), false));
    };
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf).await?;
        if n == 0 {
            return Ok((kept, cut));
        }
        let room = limit.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        cut |= n > room;
    }
}

/// SIGKILLs `pid` and all its descendants, again until none is left or `deadline` passes (a
/// process may fork between a scan and the kill).
fn kill_tree(pid: i32, deadline: Instant) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    loop {
        let procs = processes();
        let mut tree = descendants(&procs, pid);
        tree.push(pid);
        // A zombie is dead already: its parent (runc, or the sandbox's init) reaps it.
        let live: Vec<i32> = tree
            .into_iter()
            .filter(|p| procs.get(p).is_some_and(|s| s.state != 'Z'))
            .collect();
        if live.is_empty() || Instant::now() > deadline {
            return;
        }
        for p in live {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One process's state letter, parent and start time, from /proc/<pid>/stat.
pub(crate) struct Stat {
    pub(crate) state: char,
    ppid: i32,
    pub(crate) start: u64,
}

/// Every process of the host, by pid.
fn processes() -> HashMap<i32, Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return HashMap::new();
    };
    let pids = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok());
    pids.filter_map(|pid| Some((pid, read_stat(pid)?)))
        .collect()
}

pub(crate) fn read_stat(pid: i32) -> Option<Stat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parens: the fields after the last `)` are fixed.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 3 (state), 4 (ppid) and 22 (starttime) of proc(5), counted from 1.
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some(Stat { state, ppid, start })
}

/// Every process below `pid`.
fn descendants(procs: &HashMap<i32, Stat>, pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for (&p, s) in procs {
            if s.ppid == parent {
                out.push(p);
                queue.push(p);
            }
        }
    }
    out
}
