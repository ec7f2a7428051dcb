//! The microVM backend (cargo feature `microvm`): each service's OCI `image` runs as a BoxLite
//! box through the `boxlite` crate, under its own box supervisor (`stack __box`, see
//! [`boxsup`]). Ports are published on 127.0.0.1 only; volumes come from the service's data
//! dir; exec probes and init steps run inside the box. Whether this host can boot a box at all
//! is the [`bootprobe`]'s question, asked once per host boot.

pub mod bootprobe;
pub mod boxsup;
pub mod image;
pub mod options;
pub mod runtime;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Backend, BackendError, BackendKind, Instance, PrepareError, Priority, Problem};
use crate::layout::Layout;
use crate::probe::ProbeError;
use crate::spec::{BackendChoice, InitPhase, InitStep, ServiceSpec};
use crate::supervisor::{self, log::DEFAULT_LOG_CAP};
use boxsup::{BoxSupervisorSpec, ExecRequest};

/// How long a box may take to boot before its start counts as failed.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a box may take to stop before it is removed by force.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Inside a box a server listens on every interface of the guest (only its published ports,
/// bound to the host's loopback, reach it) and finds the stack's other services through
/// BoxLite's alias for the host's loopback.
const BOX_VARS: crate::spec::interp::BackendVars = crate::spec::interp::BackendVars {
    bind: "0.0.0.0",
    host: "host.boxlite.internal",
};

/// Runs services as BoxLite boxes.
#[derive(Debug, Clone)]
pub struct MicrovmBackend {
    layout: Layout,
    stack: String,
    project_dir: PathBuf,
}

impl MicrovmBackend {
    /// A backend for the stack called `stack` in `project_dir`, writing under `layout`.
    pub fn new(layout: Layout, stack: &str, project_dir: PathBuf) -> MicrovmBackend {
        MicrovmBackend {
            layout,
            stack: stack.to_string(),
            project_dir,
        }
    }

    /// The box's environment, secrets filled in (a secret that cannot be read stays as written:
    /// `start` has already failed on it, saying why).
    fn env_of(&self, svc: &ServiceSpec) -> Vec<(String, String)> {
        let mut env = svc.environment.clone();
        if let Some(b) = &svc.boxed {
            env.extend(b.environment.clone());
        }
        crate::secrets::fill_env(&self.layout, &env)
            .unwrap_or(env)
            .into_iter()
            .collect()
    }
}

#[async_trait]
impl Backend for MicrovmBackend {
    fn name(&self) -> BackendChoice {
        BackendChoice::Microvm
    }

    fn preflight(&self, svc: &ServiceSpec) -> Vec<Problem> {
        let mut out = Vec::new();
        let problem = |message: String, fix: &str| Problem {
            service: svc.name.clone(),
            message,
            fix: fix.into(),
        };
        let Some(image) = &svc.image else {
            out.push(problem(
                "has no `image:`, so the microvm backend cannot run it".into(),
                "add `image:`, or run it with `--backend process` (or `auto`)",
            ));
            return out;
        };
        if let boxlite::RootfsSpec::RootfsPath(p) = options::rootfs(image, &self.project_dir) {
            if !PathBuf::from(&p).join("oci-layout").is_file() {
                out.push(problem(
                    format!("image `{image}` is a path but {p} is not an OCI image layout (no `oci-layout` file)"),
                    "point `image:` at an OCI image layout directory, or at a registry reference",
                ));
            }
        }
        if let Err(e) = options::box_options(svc, &self.project_dir) {
            out.push(problem(e.to_string(), "fix the service's `box:` section"));
        }
        for step in svc.init.iter().filter(|s| s.runs_on(BackendKind::Microvm)) {
            if step.phase == InitPhase::BeforeStart {
                out.push(problem(
                    format!(
                        "init step `{}` runs before the start, when there is no box to run it in",
                        step.name
                    ),
                    "give the step `backend: process`, or `when: after_start`",
                ));
            }
        }
        let socket = self.layout.box_socket(&svc.name);
        // sun_path holds 108 bytes, the terminating NUL included.
        if socket.as_os_str().len() > 107 {
            out.push(problem(
                format!("the box's control socket path {} is longer than a Unix socket allows (107 bytes)", socket.display()),
                "use a shorter state dir: `--state-dir DIR` or STACK_STATE_DIR",
            ));
        }
        if let Err(e) = runtime::find() {
            out.push(problem(e.to_string(), runtime::INSTALL_FIX));
        }
        out
    }

    fn inspect(&self, svc: &ServiceSpec) -> Instance {
        super::supervised_instance(&self.layout, svc, || svc.image.clone().unwrap_or_default())
    }

    async fn prepare(&self, svc: &ServiceSpec) -> Result<(), BackendError> {
        let err = |source: PrepareError| BackendError::Prepare {
            service: svc.name.clone(),
            source,
        };
        let opts = options::box_options(svc, &self.project_dir).map_err(|e| err(e.into()))?;
        for dir in std::iter::once(svc.data_dir.clone()).chain(options::volume_dirs(&opts)) {
            std::fs::create_dir_all(&dir)
                .map_err(|source| err(PrepareError::CreateDir { path: dir, source }))?;
        }
        super::process::render_configs(&self.layout, svc, BOX_VARS, None).map_err(err)
    }

    async fn start(
        &self,
        svc: &ServiceSpec,
        _priority: Priority,
    ) -> Result<Instance, BackendError> {
        let err = |source: PrepareError| BackendError::Prepare {
            service: svc.name.clone(),
            source,
        };
        let mut options =
            options::box_options(svc, &self.project_dir).map_err(|e| err(e.into()))?;
        for (_, value) in options.env.iter_mut() {
            *value = crate::secrets::fill(&self.layout, value).map_err(|source| {
                err(PrepareError::Secrets {
                    path: svc.file.clone(),
                    source,
                })
            })?;
        }
        let home = self.layout.box_home(&svc.name);
        std::fs::create_dir_all(&home).map_err(|source| {
            err(PrepareError::CreateDir {
                path: home.clone(),
                source,
            })
        })?;
        let spec = BoxSupervisorSpec {
            service: svc.name.clone(),
            hash: svc.definition_hash(),
            program: svc.image.clone().unwrap_or_default(),
            box_name: options::box_name(&self.stack, &svc.name),
            home,
            options,
            restart: svc.restart,
            is_task: svc.is_task(),
            ports: svc.ports.clone(),
            boot_timeout: BOOT_TIMEOUT,
            stop_grace: STOP_GRACE,
            log_path: self.layout.log_file(&svc.name),
            log_cap: DEFAULT_LOG_CAP,
            record_path: self.layout.record(&svc.name),
            lock_path: self.layout.service_lock(&svc.name),
            socket_path: self.layout.box_socket(&svc.name),
        };
        let spec_path = self.layout.supervisor_spec(&svc.name);
        crate::supervisor::record::write_json(&spec_path, &spec).map_err(|source| {
            err(PrepareError::Write {
                path: spec_path.clone(),
                source,
            })
        })?;
        let (name, log) = (svc.name.clone(), spec.log_path.clone());
        tokio::task::spawn_blocking(move || {
            supervisor::spawn_supervisor(None, "__box", &spec_path, &name, &log)
        })
        .await
        .map_err(|source| BackendError::Task {
            action: "start",
            service: svc.name.clone(),
            source,
        })?
        .map_err(|source| BackendError::Spawn {
            service: svc.name.clone(),
            source,
        })?;
        Ok(self.inspect(svc))
    }

    fn settle(&self, _svc: &ServiceSpec) {}

    async fn run_step(
        &self,
        svc: &ServiceSpec,
        step: &InitStep,
        _priority: Priority,
    ) -> Result<Duration, BackendError> {
        let t0 = Instant::now();
        let req = ExecRequest {
            argv: step.command.clone(),
            env: self.env_of(svc),
            timeout: Duration::from_secs(300),
        };
        let init_err =
            |status: String, exit_code: Option<i32>, output: String| BackendError::StepFailed {
                service: svc.name.clone(),
                step: step.name.clone(),
                status,
                exit_code,
                output,
            };
        let reply = boxsup::exec(&self.layout.box_socket(&svc.name), &req)
            .await
            .map_err(|source| BackendError::StepUnreachable {
                service: svc.name.clone(),
                step: step.name.clone(),
                source,
            })?;
        match reply.exit_code {
            Some(0) => Ok(t0.elapsed()),
            Some(c) => {
                let lines: Vec<&str> = reply.output.lines().collect();
                Err(init_err(
                    format!("exit {c}"),
                    Some(c),
                    lines[lines.len().saturating_sub(20)..].join("\n"),
                ))
            }
            None => Err(init_err(
                "not run".into(),
                None,
                reply.error.unwrap_or_default(),
            )),
        }
    }

    async fn program(&self, svc: &ServiceSpec) -> Option<String> {
        svc.image.clone()
    }

    fn program_key(&self, svc: &ServiceSpec) -> Option<String> {
        svc.image.clone()
    }

    async fn exec(&self, svc: &ServiceSpec, argv: &[String]) -> Result<(), ProbeError> {
        let req = ExecRequest {
            argv: argv.to_vec(),
            env: self.env_of(svc),
            timeout: Duration::from_secs(30),
        };
        let reply = boxsup::exec(&self.layout.box_socket(&svc.name), &req).await?;
        match reply.exit_code {
            Some(0) => Ok(()),
            Some(code) => Err(ProbeError::BoxExit {
                command: argv.join(" "),
                code,
                output: reply.output.trim().to_string(),
            }),
            None => Err(ProbeError::BoxNotRun {
                command: argv.join(" "),
                reason: reply.error.unwrap_or_default(),
            }),
        }
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

#[cfg(test)]
mod tests;
