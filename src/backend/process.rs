//! The process backend: each service's real program runs natively in its own process group
//! under a supervisor (see `crate::supervisor`), with its data under the state dir.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::{Backend, BackendError, Instance, PrepareError, Priority, Problem};
use crate::layout::Layout;
use crate::spec::{BackendChoice, InitPhase, InitStep, ServiceSpec};
use crate::supervisor::identity::ProcRef;
use crate::supervisor::spawn::{Group, Nice, Spawn};
use crate::supervisor::{self, log::DEFAULT_LOG_CAP, record::State, RunAs, SupervisorSpec};

/// Runs services as supervised native processes.
#[derive(Debug, Clone)]
pub struct ProcessBackend {
    layout: Layout,
    log_cap: u64,
    /// The `stack` binary that supervises (this very program when `None`).
    supervisor_exe: Option<PathBuf>,
}

impl ProcessBackend {
    /// A backend writing under `layout`. `STACK_LOG_MAX_BYTES` overrides the log cap.
    pub fn new(layout: Layout) -> ProcessBackend {
        let log_cap = std::env::var("STACK_LOG_MAX_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_LOG_CAP);
        ProcessBackend {
            layout,
            log_cap,
            supervisor_exe: None,
        }
    }

    /// Supervisors run as `EXE __supervise SPEC`. By default EXE is this very program, which is
    /// `stack`; a program that embeds the library but is not `stack` (a test) names one.
    pub fn with_supervisor_exe(mut self, exe: PathBuf) -> ProcessBackend {
        self.supervisor_exe = Some(exe);
        self
    }
}

/// Resolves the program of an argv through PATH.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    which::which(program).ok()
}

/// The program's full path when it is on PATH, else the name as written.
fn program_path(program: &str) -> String {
    resolve_program(program).map_or_else(|| program.to_string(), |x| x.display().to_string())
}

/// Why the user a service runs as is unusable.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such user.
    #[error("user `{name}` does not exist")]
    Missing {
        /// The user.
        name: String,
    },
    /// The user database cannot be read.
    #[error("cannot look up user `{name}`: {source}")]
    Lookup {
        /// The user.
        name: String,
        /// Why.
        #[source]
        source: nix::errno::Errno,
    },
}

/// The user a service runs as: its `user:` when `stack` runs as root, else nobody special.
pub fn run_as(svc: &ServiceSpec) -> Result<Option<RunAs>, UserError> {
    let Some(name) = svc.process.as_ref().and_then(|p| p.user.as_ref()) else {
        return Ok(None);
    };
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(Some(RunAs {
            name: u.name,
            uid: u.uid.as_raw(),
            gid: u.gid.as_raw(),
            home: u.dir,
        })),
        Ok(None) => Err(UserError::Missing { name: name.clone() }),
        Err(source) => Err(UserError::Lookup {
            name: name.clone(),
            source,
        }),
    }
}

/// Can `uid` traverse every ancestor of `dir`? Returns the first that blocks it.
fn blocked_ancestor(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    for a in dir.ancestors().skip(1) {
        let Ok(m) = std::fs::metadata(a) else {
            continue;
        };
        let mode = m.mode();
        let ok = if m.uid() == uid {
            mode & 0o100 != 0
        } else if m.gid() == gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Some(a.to_path_buf());
        }
    }
    None
}

/// The nice value a starting service (and its init steps) gets: -10 when urgent (on or near the
/// critical path), 10 otherwise. Only root may raise a priority, or give a lowered one back once
/// the service is ready, so only root shapes startup priority; everyone else starts at normal.
fn startup_nice(priority: Priority) -> i32 {
    if !shapes_priority() {
        return 0;
    }
    match priority {
        Priority::Urgent => -10,
        Priority::Background => 10,
        Priority::Normal => 0,
    }
}

fn shapes_priority() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates the service's data dir; when it runs as another user, hands the dir to that user
/// with mode 0700 (servers such as PostgreSQL insist on a private data dir).
pub fn prepare_data_dir(svc: &ServiceSpec) -> Result<Option<RunAs>, PrepareError> {
    let run_as = run_as(svc)?;
    let path = || svc.data_dir.clone();
    std::fs::create_dir_all(&svc.data_dir).map_err(|source| PrepareError::CreateDir {
        path: path(),
        source,
    })?;
    if let Some(u) = &run_as {
        nix::unistd::chown(&svc.data_dir, Some(u.uid.into()), Some(u.gid.into())).map_err(
            |source| PrepareError::HandOver {
                path: path(),
                user: u.name.clone(),
                source,
            },
        )?;
        std::fs::set_permissions(&svc.data_dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| PrepareError::SetMode {
                path: path(),
                source,
            },
        )?;
    }
    Ok(run_as)
}

/// Renders `svc`'s `configs:` where it reads them: secrets filled in, then the backend's
/// `${backend.*}` variables; readable by `run_as` when given.
pub(crate) fn render_configs(
    layout: &Layout,
    svc: &ServiceSpec,
    vars: crate::spec::interp::BackendVars,
    run_as: Option<&RunAs>,
) -> Result<(), PrepareError> {
    for cfg in &svc.configs {
        let text =
            crate::secrets::fill(layout, &cfg.content).map_err(|source| PrepareError::Secrets {
                path: cfg.source.clone(),
                source,
            })?;
        let text = crate::spec::interp::fill_backend(&text, vars);
        write_config(&cfg.target, &text, cfg.mode, run_as).map_err(|source| {
            PrepareError::Write {
                path: cfg.target.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Identifies the binary `svc`'s version command runs (path, size, mtime), so an unchanged
/// binary's version is not asked again.
fn program_key(svc: &ServiceSpec) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let argv = svc.process.as_ref()?.version.as_ref()?;
    let bin = resolve_program(&argv[0])?;
    let m = std::fs::metadata(&bin).ok()?;
    Some(format!(
        "{}:{}:{}:{}",
        bin.display(),
        m.len(),
        m.mtime(),
        argv.join(" ")
    ))
}

/// The program that serves `svc`, as `name version` from its `process.version` command
/// (e.g. `garage 2.5.0`), or `None` when it has none or it fails.
async fn program_version(svc: &ServiceSpec) -> Option<String> {
    let p = svc.process.as_ref()?;
    let argv = p.version.as_ref()?;
    // A version string is worth no CPU while services are starting.
    let out = Spawn::argv(argv)
        .current_dir(&p.working_dir)
        .nice(Nice::InChild(19))
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .into_owned();
    let name = Path::new(&p.command[0])
        .file_name()?
        .to_string_lossy()
        .into_owned();
    summarize_version(&name, text.lines().next()?)
}

/// The first word and the first version-like token: `garage cargo:2.5.0 [features: …]` →
/// `garage 2.5.0`; a bare `2.6.2` (caddy) → `caddy 2.6.2`.
fn summarize_version(name: &str, line: &str) -> Option<String> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let at = tokens
        .iter()
        .position(|t| t.chars().any(|c| c.is_ascii_digit()) && t.contains('.'))?;
    let version = tokens[at]
        .rsplit([':', '='])
        .next()
        .unwrap_or(tokens[at])
        .trim_start_matches('v');
    Some(format!(
        "{} {version}",
        if at == 0 { name } else { tokens[0] }
    ))
}

/// The process group of a running init step, recorded in the state dir while it runs.
struct StepGroup {
    leader: Option<ProcRef>,
    record: PathBuf,
}

impl StepGroup {
    fn new(leader: Option<ProcRef>, record: PathBuf) -> StepGroup {
        if let Some(l) = &leader {
            let _ = crate::supervisor::record::write_json(&record, l);
        }
        StepGroup { leader, record }
    }
}

impl Drop for StepGroup {
    /// Whether the step finished or its future was dropped (Ctrl-C), nothing of its group may
    /// stay behind. The group cannot have been recycled while a member of it still exists.
    fn drop(&mut self) {
        if let Some(l) = &self.leader {
            if crate::supervisor::identity::group_alive(l.pid) {
                crate::supervisor::identity::signal_group(l.pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.record);
    }
}

/// Kills what is left of an init step's group recorded by a `stack` that was killed. The group
/// is ours when its leader is still the recorded process (alive or a zombie), or when the leader
/// is gone and no other process took its pid (a pid cannot be reused while it names a group).
fn kill_stale_step(record: &Path) {
    let Ok(Some(leader)) = crate::supervisor::record::read_json::<ProcRef>(record) else {
        return;
    };
    // A leader killed with its `stack` may linger as a zombie nobody reaps: still ours.
    let ours = leader.is_present() || crate::supervisor::identity::start_time(leader.pid).is_none();
    if ours && crate::supervisor::identity::group_alive(leader.pid) {
        crate::supervisor::identity::signal_group(leader.pid, nix::sys::signal::Signal::SIGKILL);
        crate::supervisor::identity::wait_group_gone(leader.pid, crate::supervisor::KILL_REAP_WAIT);
    }
    let _ = std::fs::remove_file(record);
}

/// Writes a rendered config file when its content changed, readable by the service's user.
pub(crate) fn write_config(
    target: &Path,
    text: &str,
    mode: u32,
    run_as: Option<&RunAs>,
) -> std::io::Result<()> {
    if std::fs::read_to_string(target).is_ok_and(|old| old == text) {
        return Ok(());
    }
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = target.with_extension("stack-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if let Some(u) = run_as {
        nix::unistd::chown(&tmp, Some(u.uid.into()), Some(u.gid.into()))?;
    }
    std::fs::rename(&tmp, target)
}

fn new_instance_id(service: &str) -> String {
    let mut h = Sha256::new();
    h.update(service.as_bytes());
    h.update(std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.update(nanos.to_le_bytes());
    // A per-process random key (std seeds it from the OS), so two ids never collide even
    // within one nanosecond.
    h.update(
        std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), service)
            .to_le_bytes(),
    );
    hex::encode(&h.finalize()[..8])
}

#[async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> BackendChoice {
        BackendChoice::Process
    }

    fn preflight(&self, svc: &ServiceSpec) -> Vec<Problem> {
        let mut out = Vec::new();
        let Some(p) = &svc.process else {
            out.push(Problem {
                service: svc.name.clone(),
                message: "has no `process:` section, so the process backend cannot run it".into(),
                fix: "add `process.command`, or run it with `--backend microvm` on a host with working KVM".into(),
            });
            return out;
        };
        let hint = p
            .install_hint
            .clone()
            .unwrap_or_else(|| "install it, or fix `process.command`".into());
        // A component's program is what its build makes: before the first build only the build
        // command can be checked.
        let program = match &svc.build {
            Some(b) => ("build program", &b.command),
            None => ("program", &p.command),
        };
        for (what, argv) in std::iter::once(program)
            .chain(svc.init.iter().map(|s| ("init step program", &s.command)))
        {
            if resolve_program(&argv[0]).is_none() {
                out.push(Problem {
                    service: svc.name.clone(),
                    message: format!("{what} `{}` is not installed (not found on PATH)", argv[0]),
                    fix: hint.clone(),
                });
            }
        }
        match run_as(svc) {
            Err(e) => out.push(Problem {
                service: svc.name.clone(),
                message: e.to_string(),
                fix: format!(
                    "run `scripts/install-deps.sh`, or `useradd --system --no-create-home {}`",
                    p.user.as_deref().unwrap_or("stacksvc")
                ),
            }),
            Ok(Some(u)) => {
                // Its init steps run in the project directory, as that user.
                if let Some(a) = blocked_ancestor(&p.working_dir.join("."), u.uid, u.gid) {
                    out.push(Problem {
                        service: svc.name.clone(),
                        message: format!(
                            "user `{}` cannot enter the working directory {}: {} is not traversable",
                            u.name,
                            p.working_dir.display(),
                            a.display()
                        ),
                        fix: format!("`chmod o+x {}`, or clone the project under a world-readable path", a.display()),
                    });
                }
                if let Some(a) = blocked_ancestor(&svc.data_dir, u.uid, u.gid) {
                    out.push(Problem {
                        service: svc.name.clone(),
                        message: format!(
                            "user `{}` cannot reach its data dir: {} is not traversable",
                            u.name,
                            a.display()
                        ),
                        fix: format!(
                            "`chmod o+x {}`, or choose a state dir elsewhere with `--state-dir`",
                            a.display()
                        ),
                    });
                }
            }
            Ok(None) => {}
        }
        out
    }

    fn inspect(&self, svc: &ServiceSpec) -> Instance {
        super::supervised_instance(&self.layout, svc, || {
            svc.process
                .as_ref()
                .map(|p| program_path(&p.command[0]))
                .unwrap_or_default()
        })
    }

    async fn prepare(&self, svc: &ServiceSpec) -> Result<(), BackendError> {
        let err = |source| BackendError::Prepare {
            service: svc.name.clone(),
            source,
        };
        let run_as = prepare_data_dir(svc).map_err(err)?;
        render_configs(
            &self.layout,
            svc,
            crate::spec::interp::BackendVars::PROCESS,
            run_as.as_ref(),
        )
        .map_err(err)
    }

    async fn start(&self, svc: &ServiceSpec, priority: Priority) -> Result<Instance, BackendError> {
        let service = || svc.name.clone();
        let p = svc
            .process
            .as_ref()
            .ok_or_else(|| BackendError::NoProcess { service: service() })?;
        let run_as = run_as(svc).map_err(|e| BackendError::Prepare {
            service: service(),
            source: e.into(),
        })?;
        if supervisor::lock_held(&self.layout, &svc.name) {
            // A supervisor is already starting it (its launcher was killed mid-launch): wait
            // for it to record the process rather than start a second one.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                let inst = self.inspect(svc);
                if inst.supervised && inst.alive {
                    return Ok(inst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return Err(BackendError::LockHeld { service: service() });
        }
        let env = super::environment(
            &self.layout,
            &svc.environment,
            crate::spec::interp::BackendVars::PROCESS,
        )
        .map_err(|source| BackendError::Prepare {
            service: service(),
            source,
        })?;
        // A new instance: its id stays the same across crash restarts by its supervisor.
        let instance_id = new_instance_id(&svc.name);
        let program = program_path(&p.command[0]);
        let spec = SupervisorSpec {
            service: svc.name.clone(),
            instance_id,
            hash: svc.definition_hash(),
            program,
            command: p.command.clone(),
            env,
            working_dir: p.working_dir.clone(),
            run_as,
            stop_signal: p.stop_signal,
            stop_grace: p.stop_grace_period,
            restart: svc.restart,
            is_task: svc.is_task(),
            orphans: p.orphans,
            startup_nice: startup_nice(priority),
            ports: svc.ports.clone(),
            log_path: self.layout.log_file(&svc.name),
            log_cap: self.log_cap,
            record_path: self.layout.record(&svc.name),
            lock_path: self.layout.service_lock(&svc.name),
        };
        let (layout, exe) = (self.layout.clone(), self.supervisor_exe.clone());
        tokio::task::spawn_blocking(move || supervisor::launch(&layout, &spec, exe.as_deref()))
            .await
            .map_err(|source| BackendError::Task {
                action: "start",
                service: service(),
                source,
            })?
            .map_err(|source| BackendError::Spawn {
                service: service(),
                source,
            })?;
        Ok(self.inspect(svc))
    }

    fn settle(&self, svc: &ServiceSpec) {
        if !shapes_priority() {
            return;
        }
        if let Some(pid) = self.inspect(svc).pid {
            // SAFETY: setpriority on a process group id we just verified through the record.
            unsafe { libc::setpriority(libc::PRIO_PGRP, pid as libc::id_t, 0) };
            let _ = supervisor::identity::set_session_nice(Some(pid), 0);
        }
    }

    async fn run_step(
        &self,
        svc: &ServiceSpec,
        step: &InitStep,
        priority: Priority,
    ) -> Result<Duration, BackendError> {
        let t0 = Instant::now();
        let argv = &step.command;
        // Steps before the start prepare the service's data, as its user; later ones are clients.
        let run_as = match step.phase {
            InitPhase::BeforeStart => run_as(svc).map_err(|e| BackendError::Prepare {
                service: svc.name.clone(),
                source: e.into(),
            })?,
            _ => None,
        };
        let env = super::environment(
            &self.layout,
            &svc.environment,
            crate::spec::interp::BackendVars::PROCESS,
        )
        .map_err(|source| BackendError::Prepare {
            service: svc.name.clone(),
            source,
        })?;
        let mut launch = Spawn::argv(argv)
            .envs(&env)
            .run_as(run_as.as_ref())
            .die_with_parent();
        if let Some(p) = &svc.process {
            launch = launch.current_dir(&p.working_dir);
        }
        // Its own process group, recorded, so nothing it forks can outlive it: the group is
        // killed if this `up` is interrupted, and a group left by a killed `stack` is killed by
        // the next run before it touches the same files. A step with a shaped priority gets a
        // session of its own (a process group too): that is the scheduler group its weight is
        // felt in, as for the services (see `crate::sys::set_session_nice`).
        let nice = startup_nice(priority);
        launch = if nice == 0 {
            launch.group(Group::Own)
        } else {
            launch.group(Group::Session).nice(Nice::AfterSpawn(nice))
        };
        let record = self.layout.step_record(&svc.name);
        kill_stale_step(&record);
        let child = launch
            .spawn_async()
            .map_err(|source| BackendError::StepSpawn {
                service: svc.name.clone(),
                step: step.name.clone(),
                program: argv[0].clone(),
                source,
            })?;
        let guard = StepGroup::new(child.id().and_then(ProcRef::of), record);
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| BackendError::StepLost {
                service: svc.name.clone(),
                step: step.name.clone(),
                source,
            })?;
        drop(guard);
        if out.status.success() {
            return Ok(t0.elapsed());
        }
        let mut text = String::from_utf8_lossy(&out.stdout).to_string();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        Err(BackendError::StepFailed {
            service: svc.name.clone(),
            step: step.name.clone(),
            exit_code: out.status.code(),
            status: out.status.to_string(),
            output: lines[lines.len().saturating_sub(20)..].join("\n"),
        })
    }

    async fn program(&self, svc: &ServiceSpec) -> Option<String> {
        program_version(svc).await
    }

    fn program_key(&self, svc: &ServiceSpec) -> Option<String> {
        program_key(svc)
    }

    async fn wait_change(&self, svc: &ServiceSpec, timeout: Duration) {
        super::supervised_wait_change(&self.layout, svc, timeout).await
    }

    async fn stop(&self, svc: &str) -> Result<bool, BackendError> {
        super::supervised_stop(&self.layout, svc).await
    }

    fn kill(&self, svc: &str) {
        supervisor::kill_now(&self.layout, svc);
    }
}

impl Instance {
    /// Running (or starting) with something alive.
    pub fn is_up(&self) -> bool {
        self.alive && matches!(self.state, State::Running | State::Starting)
    }
}

#[cfg(test)]
mod tests {
    use super::summarize_version;

    #[test]
    fn versions_are_summarized_from_each_servers_own_format() {
        let cases = [
            (
                "garage",
                "garage cargo:2.5.0 [features: bundled-libs, k2v, lmdb]",
                "garage 2.5.0",
            ),
            ("caddy", "2.6.2", "caddy 2.6.2"),
            (
                "postgres",
                "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)",
                "postgres 15.18",
            ),
            (
                "redis-server",
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc",
                "Redis 7.0.15",
            ),
            (
                "docker-registry",
                "docker-registry github.com/docker/distribution 2.8.2+ds1",
                "docker-registry 2.8.2+ds1",
            ),
            ("node", "oidc-provider 9.13.3", "oidc-provider 9.13.3"),
        ];
        for (name, line, want) in cases {
            assert_eq!(
                summarize_version(name, line).as_deref(),
                Some(want),
                "{line}"
            );
        }
        assert_eq!(summarize_version("x", "no version here"), None);
    }
}
