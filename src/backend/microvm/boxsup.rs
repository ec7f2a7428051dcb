//! The box supervisor (`stack __box SPEC`): the microVM counterpart of `stack __supervise`. One
//! per service, outliving the `stack` command that started it. It holds the service's lock,
//! owns the service's BoxLite home (BoxLite allows one runtime per home), boots the box, writes
//! the box's output to the service log, answers exec requests on `run/<service>.sock` (exec
//! probes and init steps run inside the box), restarts the box per policy, and stops it on
//! SIGTERM. The record it writes has the same shape as a process's, with the box id as the
//! instance id (what export/import will carry) and the box's shim as its process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boxlite::{AttachOptions, BoxCommand, BoxOptions, BoxliteOptions, BoxliteRuntime, LiteBox};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

use crate::spec::RestartPolicy;
use crate::supervisor::identity::ProcRef;
use crate::supervisor::log::{LogSink, Stream};
use crate::supervisor::process::{hold_service_lock, read_spec};
use crate::supervisor::record::{now_rfc3339, write_json, ExitInfo, Record, State};
use crate::supervisor::{send_handshake, Handshake};

/// Everything the box supervisor needs, written by the backend as `run/<service>.spec.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BoxSupervisorSpec {
    /// Service.
    pub service: String,
    /// Definition hash.
    pub hash: String,
    /// The image, shown as the program.
    pub program: String,
    /// `<stack>-<service>`.
    pub box_name: String,
    /// The service's BoxLite home.
    pub home: PathBuf,
    /// The box.
    pub options: BoxOptions,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// A one-shot task.
    pub is_task: bool,
    /// Host ports.
    pub ports: BTreeMap<String, u16>,
    /// How long a boot may take.
    pub boot_timeout: Duration,
    /// How long the box may take to stop.
    pub stop_grace: Duration,
    /// Service log.
    pub log_path: PathBuf,
    /// Its cap.
    pub log_cap: u64,
    /// Record path.
    pub record_path: PathBuf,
    /// Lock path.
    pub lock_path: PathBuf,
    /// Control socket.
    pub socket_path: PathBuf,
}

/// An exec request on the control socket (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// argv.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Kill it after this long.
    pub timeout: Duration,
}

/// Its answer (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecReply {
    /// Exit code (negative: killed by that signal); `None` when it could not run.
    pub exit_code: Option<i32>,
    /// stdout then stderr, as text.
    pub output: String,
    /// Why it could not run.
    pub error: Option<String>,
}

/// Why an exec request got no answer from the box supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Nothing listens on the control socket: the box supervisor is not running.
    #[error("cannot reach the box supervisor at {}: {source}; see `stack status` and `stack logs SERVICE`, and `stack up SERVICE` to start it", socket.display())]
    Unreachable {
        /// The control socket.
        socket: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The request could not be encoded.
    #[error(transparent)]
    Encode(serde_json::Error),
    /// The connection broke before the answer.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The answer is not an [`ExecReply`].
    #[error("the box supervisor answered nonsense ({source}): {answer}")]
    Nonsense {
        /// What it answered.
        answer: String,
        /// Why it does not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends one exec request to a box supervisor and waits for the answer.
pub async fn exec(socket: &Path, req: &ExecRequest) -> Result<ExecReply, ExecError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| ExecError::Unreachable {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(ExecError::Encode)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(answer.trim()).map_err(|source| ExecError::Nonsense { answer, source })
}

/// Why a box did not boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// BoxLite failed to look the box up, or to describe it once booted.
    #[error(transparent)]
    Runtime(#[from] boxlite::BoxliteError),
    /// The box from an older definition cannot be removed.
    #[error("cannot remove the outdated box `{name}`: {source}")]
    Remove {
        /// The box.
        name: String,
        /// Why.
        #[source]
        source: boxlite::BoxliteError,
    },
    /// The box cannot be created.
    #[error("cannot create box `{name}`: {source}")]
    Create {
        /// The box.
        name: String,
        /// Why.
        #[source]
        source: boxlite::BoxliteError,
    },
    /// The image cannot be had (pulled, unpacked, stored): not a boot failure.
    #[error("box `{name}` has no image: {source}\n  fix: a registry image such as `{image}` is pulled on first use and needs network access to its registry; or set `image:` to a local OCI image layout (`./path`)")]
    ImageMissing {
        /// The box.
        name: String,
        /// The image.
        image: String,
        /// Why.
        #[source]
        source: boxlite::BoxliteError,
    },
    /// The VM did not start.
    #[error("box `{name}` did not boot: {source}\n  fix: see `stack doctor` (its microvm check boots a test box) and the box's shim.stderr under the state dir's boxlite/")]
    NotBooted {
        /// The box.
        name: String,
        /// Why.
        #[source]
        source: boxlite::BoxliteError,
    },
    /// The boot took longer than allowed.
    #[error("box `{name}` did not boot within {}s (see `stack doctor`)", .after.as_secs())]
    Timeout {
        /// The box.
        name: String,
        /// The time allowed.
        after: Duration,
    },
}

/// Runs the box supervisor for the spec at `spec_path`; returns the process exit code.
pub fn run(spec_path: &Path) -> i32 {
    let Some(spec) = read_spec::<BoxSupervisorSpec>(spec_path) else {
        return 2;
    };
    let Some(lock) = hold_service_lock(&spec.lock_path, &spec.service) else {
        return 3;
    };
    let rt = match crate::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            send_handshake(&Handshake::failed(format!(
                "cannot start an async runtime: {e}"
            )));
            return 2;
        }
    };
    let code = rt.block_on(supervise(spec));
    drop(lock);
    code
}

struct Sup {
    spec: BoxSupervisorSpec,
    log: Arc<Mutex<LogSink>>,
    record: Record,
}

impl Sup {
    fn note(&self, text: &str) {
        if let Ok(mut l) = self.log.lock() {
            l.line(Stream::Sup, text);
        }
    }

    fn save(&self) {
        let _ = write_json(&self.spec.record_path, &self.record);
    }
}

/// First restart delay after the box stops on its own; doubles per failed restart up to
/// [`MAX_BACKOFF`], as the process supervisor does.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A box that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Returns when a stop is asked for (SIGTERM, SIGINT or SIGHUP).
async fn stop_requested(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
    hup: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = hup.recv() => {}
    }
}

async fn supervise(spec: BoxSupervisorSpec) -> i32 {
    let log = match LogSink::open(&spec.log_path, spec.log_cap) {
        Ok(l) => Arc::new(Mutex::new(l)),
        Err(e) => {
            send_handshake(&Handshake::failed(format!(
                "cannot open log {}: {e}",
                spec.log_path.display()
            )));
            return 2;
        }
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        send_handshake(&Handshake::failed("cannot install signal handlers".into()));
        return 2;
    };
    let Some(me) = ProcRef::of(std::process::id()) else {
        send_handshake(&Handshake::failed("cannot read its own start time".into()));
        return 2;
    };
    let mut sup = Sup {
        // The box id becomes the instance id once the box exists.
        record: Record::starting(
            crate::backend::BackendKind::Microvm,
            String::new(),
            &spec.service,
            &spec.program,
            &spec.hash,
            &spec.ports,
            me,
        ),
        spec,
        log,
    };
    let runtime = match BoxliteRuntime::new(BoxliteOptions {
        home_dir: sup.spec.home.clone(),
        ..BoxliteOptions::default()
    }) {
        Ok(r) => r,
        Err(e) => {
            send_handshake(&Handshake::failed(format!(
                "cannot open BoxLite's home {}: {e}",
                sup.spec.home.display()
            )));
            return 2;
        }
    };
    let bx = match boot(&runtime, &mut sup).await {
        Ok(b) => b,
        Err(e) => {
            sup.note(&format!("boot failed: {e}"));
            sup.record.state = State::Failed;
            sup.save();
            send_handshake(&Handshake::failed(e.to_string()));
            let _ = runtime.shutdown(Some(5)).await;
            return 1;
        }
    };
    // The socket answers before the handshake: `up` execs probes and init steps right after.
    let _ = std::fs::remove_file(&sup.spec.socket_path);
    let current = Arc::new(tokio::sync::RwLock::new(bx));
    match UnixListener::bind(&sup.spec.socket_path) {
        Ok(listener) => {
            tokio::spawn(serve(listener, Arc::clone(&current)));
        }
        Err(e) => sup.note(&format!(
            "cannot listen on {}: {e}; exec probes and init steps will fail",
            sup.spec.socket_path.display()
        )),
    }
    send_handshake(&Handshake::ok(
        sup.record.process.as_ref().map(|p| p.pid),
        State::Running,
    ));
    let mut backoff = FIRST_BACKOFF;
    let mut booted = Instant::now();
    let code = loop {
        tokio::select! {
            _ = stop_requested(&mut term, &mut int, &mut hup) => {
                break stop(&runtime, &current, &mut sup).await
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let info = current.read().await.info().await;
        let (active, exit_code) = match &info {
            Ok(i) => (i.status.is_active(), i.exit_code),
            Err(_) => (false, None),
        };
        if active {
            continue;
        }
        let exit = ExitInfo {
            code: exit_code,
            signal: None,
            at: now_rfc3339(),
        };
        sup.note(&format!("the box stopped ({})", exit.describe()));
        let restart = match sup.spec.restart {
            RestartPolicy::No => false,
            RestartPolicy::OnFailure => !exit.is_clean(),
            _ => true,
        };
        sup.record.last_exit = Some(exit.clone());
        sup.record.process = None;
        if !restart {
            sup.record.state = match (exit.is_clean(), sup.spec.is_task) {
                (true, true) => State::Completed,
                (true, false) => State::Exited,
                _ => State::Failed,
            };
            sup.save();
            break 0;
        }
        sup.record.state = State::Starting;
        sup.save();
        // A box that ran a while crashed anew: start the backoff over.
        if booted.elapsed() >= STABLE_AFTER {
            backoff = FIRST_BACKOFF;
        }
        sup.note(&format!("restarting in {} ms", backoff.as_millis()));
        tokio::select! {
            _ = stop_requested(&mut term, &mut int, &mut hup) => {
                break stop(&runtime, &current, &mut sup).await
            }
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        match boot(&runtime, &mut sup).await {
            Ok(b) => {
                sup.record.restarts += 1;
                sup.save();
                booted = Instant::now();
                *current.write().await = b;
            }
            Err(e) => sup.note(&format!("restart failed: {e}")),
        }
    };
    let _ = std::fs::remove_file(&sup.spec.socket_path);
    let _ = runtime.shutdown(Some(5)).await;
    code
}

/// Finds or creates the box, boots it, records it, and follows its output into the log.
async fn boot(runtime: &BoxliteRuntime, sup: &mut Sup) -> Result<LiteBox, BootError> {
    let t0 = Instant::now();
    let name = sup.spec.box_name.clone();
    // A box made from another definition is replaced: its options are fixed at creation.
    let hash_file = sup.spec.home.join("stack-definition-hash");
    let same = std::fs::read_to_string(&hash_file).is_ok_and(|h| h == sup.spec.hash);
    let existing = runtime.get(&name).await?;
    let bx = match existing {
        Some(b) if same => b,
        other => {
            if other.is_some() {
                sup.note("the definition changed: replacing the box");
                runtime
                    .remove(&name, true)
                    .await
                    .map_err(|source| BootError::Remove {
                        name: name.clone(),
                        source,
                    })?;
            }
            let b = runtime
                .create(sup.spec.options.clone(), Some(name.clone()))
                .await
                .map_err(|source| BootError::Create {
                    name: name.clone(),
                    source,
                })?;
            let _ = std::fs::write(&hash_file, &sup.spec.hash);
            b
        }
    };
    sup.record.id = bx.id().to_string();
    sup.note(&format!(
        "booting box {} ({})",
        sup.record.id, sup.spec.program
    ));
    match tokio::time::timeout(sup.spec.boot_timeout, bx.start()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(start_error(name, &sup.spec.program, e)),
        Err(_) => {
            return Err(BootError::Timeout {
                name,
                after: sup.spec.boot_timeout,
            })
        }
    }
    let info = bx.info().await?;
    sup.record.process = info.pid.and_then(ProcRef::of);
    sup.record.state = State::Running;
    sup.record.started_at = Some(now_rfc3339());
    sup.record.spawn_ms = Some(t0.elapsed().as_millis() as u64);
    sup.save();
    sup.note(&format!(
        "box {} running (shim pid {:?}) in {} ms",
        sup.record.id,
        info.pid,
        t0.elapsed().as_millis()
    ));
    match bx.attach(AttachOptions::main().read_only()).await {
        Ok(mut session) => {
            let log = Arc::clone(&sup.log);
            let (out, err) = (session.stdout(), session.stderr());
            tokio::spawn(async move {
                let follow = |s: Option<boxlite::ExecStdout>| {
                    let log = Arc::clone(&log);
                    async move {
                        if let Some(mut s) = s {
                            while let Some(chunk) = s.next().await {
                                for line in chunk.lines() {
                                    if let Ok(mut l) = log.lock() {
                                        l.line(Stream::Out, line);
                                    }
                                }
                            }
                        }
                    }
                };
                let log2 = Arc::clone(&log);
                let errs = async move {
                    if let Some(mut s) = err {
                        while let Some(chunk) = s.next().await {
                            for line in chunk.lines() {
                                if let Ok(mut l) = log2.lock() {
                                    l.line(Stream::Err, line);
                                }
                            }
                        }
                    }
                };
                tokio::join!(follow(out), errs);
            });
        }
        Err(e) => sup.note(&format!("cannot follow the box's output: {e}")),
    }
    Ok(bx)
}

/// Says what went wrong starting a box, and where to look: an image that cannot be had is not a
/// boot failure.
fn start_error(name: String, image: &str, source: boxlite::BoxliteError) -> BootError {
    use boxlite::BoxliteError as E;
    match source {
        E::Image(_) | E::Storage(_) | E::Network(_) => BootError::ImageMissing {
            name,
            image: image.to_string(),
            source,
        },
        _ => BootError::NotBooted { name, source },
    }
}

/// Stops the box (graceful, bounded by the grace period) and records it stopped.
async fn stop(
    runtime: &BoxliteRuntime,
    current: &tokio::sync::RwLock<LiteBox>,
    sup: &mut Sup,
) -> i32 {
    sup.record.state = State::Stopping;
    sup.save();
    sup.note("stopping the box");
    let bx = current.read().await;
    let stopped = tokio::time::timeout(sup.spec.stop_grace, bx.stop()).await;
    if !matches!(stopped, Ok(Ok(()))) {
        sup.note("the box did not stop in time: removing it by force");
        let _ = runtime.remove(bx.id().as_str(), true).await;
    }
    sup.record.state = State::Stopped;
    sup.record.process = None;
    sup.save();
    0
}

/// Answers exec requests, one connection at a time each on its own task.
async fn serve(listener: UnixListener, current: Arc<tokio::sync::RwLock<LiteBox>>) {
    while let Ok((stream, _)) = listener.accept().await {
        let current = Arc::clone(&current);
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(r).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<ExecRequest>(line.trim()) {
                Ok(req) => run_exec(&*current.read().await, req).await,
                Err(e) => ExecReply {
                    exit_code: None,
                    output: String::new(),
                    error: Some(format!("bad request: {e}")),
                },
            };
            if let Ok(mut bytes) = serde_json::to_vec(&reply) {
                bytes.push(b'\n');
                let _ = w.write_all(&bytes).await;
            }
        });
    }
}

async fn run_exec(bx: &LiteBox, req: ExecRequest) -> ExecReply {
    let failed = |e: String| ExecReply {
        exit_code: None,
        output: String::new(),
        error: Some(e),
    };
    let Some((program, args)) = req.argv.split_first() else {
        return failed("empty command".into());
    };
    let mut cmd = BoxCommand::new(program.as_str())
        .args(args.iter().map(String::as_str))
        .timeout(req.timeout);
    for (k, v) in &req.env {
        cmd = cmd.env(k.as_str(), v.as_str());
    }
    let mut ex = match bx.exec(cmd).await {
        Ok(x) => x,
        Err(e) => return failed(e.to_string()),
    };
    let (out, err) = (ex.stdout(), ex.stderr());
    let collect = |s: Option<boxlite::ExecStdout>| async move {
        let mut text = String::new();
        if let Some(mut s) = s {
            while let Some(chunk) = s.next().await {
                text.push_str(&chunk);
            }
        }
        text
    };
    let errs = async move {
        let mut text = String::new();
        if let Some(mut s) = err {
            while let Some(chunk) = s.next().await {
                text.push_str(&chunk);
            }
        }
        text
    };
    let (o, e, r) = tokio::join!(collect(out), errs, ex.wait());
    match r {
        Ok(res) => ExecReply {
            exit_code: Some(res.exit_code),
            output: o + &e,
            error: res.error_message,
        },
        Err(e) => failed(e.to_string()),
    }
}
