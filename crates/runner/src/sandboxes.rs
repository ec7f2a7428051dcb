//! The runner's sandboxes: what each API call does with the box driver (images resolved against
//! the stack's registry, capacity, one life-cycle call per sandbox at a time), and the runner's
//! own start and stop: take back what a previous runner left, stop everything on shutdown and
//! bring it back on the next start (the ids are kept in `<home>/resume.json` meanwhile).

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandbox::{
    BoxDriver, CreateOptions, DriverError, ExecOptions, ImageRef, PullError, Resources, Sandbox,
    SandboxError, SandboxId, Status,
};

use crate::error::ApiError;
use crate::wire::{self, SandboxState};

/// Largest file read back by a download.
pub const DOWNLOAD_LIMIT: u64 = 64 << 20;
/// Most bytes kept of an exec's stdout and of its stderr.
const EXEC_OUTPUT_LIMIT: usize = 1 << 20;
/// An exec's timeout when the call gives none, and the longest one may ask for.
const EXEC_TIMEOUT: Duration = Duration::from_secs(60);
const EXEC_TIMEOUT_MAX: u64 = 3600;
/// How long a connection to a sandbox's port may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The one DNS label that cannot be a sandbox id: `/sandboxes/restore` is a route.
const RESERVED_ID: &str = "restore";
/// How long a sandbox's init has to exit on SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// The runner's sandboxes on its box driver.
pub struct Sandboxes {
    driver: BoxDriver,
    /// The stack's registry, `host:port`.
    registry: String,
    capacity: usize,
    /// Sandboxes with a create, start, stop, delete, backup or restore under way.
    busy: Mutex<HashSet<SandboxId>>,
}

/// A sandbox claimed for one life-cycle call; released when dropped.
pub(crate) struct Claim<'a> {
    busy: &'a Mutex<HashSet<SandboxId>>,
    id: SandboxId,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.remove(&self.id);
        }
    }
}

/// What [`Sandboxes::boot`] did.
#[derive(Debug, Default)]
pub struct Boot {
    /// Running sandboxes taken back as they were.
    pub adopted: Vec<SandboxId>,
    /// Sandboxes the last shutdown stopped, started again.
    pub resumed: Vec<SandboxId>,
    /// Sandboxes kept stopped.
    pub stopped: Vec<SandboxId>,
    /// Leftovers of creates and restores cut short, deleted.
    pub cleaned: Vec<SandboxId>,
    /// Staging dirs of restores cut short, deleted.
    pub staged: Vec<String>,
    /// Sandboxes that could not be taken back, and why (they are kept, stopped).
    pub failed: Vec<(SandboxId, String)>,
}

impl Sandboxes {
    /// The sandboxes of `driver` (opened on the runner's home, see `choice::open`).
    pub fn new(driver: BoxDriver, registry: String, capacity: usize) -> Self {
        Self {
            driver,
            registry,
            capacity,
            busy: Mutex::new(HashSet::new()),
        }
    }

    /// The box driver's name: `runc` or `microvm`.
    pub fn driver(&self) -> &'static str {
        self.driver.kind()
    }

    /// The pid of the sandboxes' user namespace holder, when the runner is not root.
    pub fn holder_pid(&self) -> Option<i32> {
        self.driver.holder_pid()
    }

    /// Ends the user namespace holder of a runner that is not root if no sandbox runs in it.
    pub async fn release(&self) -> Result<bool, DriverError> {
        self.driver.release().await
    }

    /// Most sandboxes this runner takes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sandboxes held (started or stopped): the dirs under the home named as sandboxes, a file
    /// listing (a restore's staging dir is not one).
    pub fn count(&self) -> usize {
        std::fs::read_dir(self.driver.home().sandboxes())
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| SandboxId::parse(n).is_ok())
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// The box driver.
    pub(crate) fn box_driver(&self) -> &BoxDriver {
        &self.driver
    }

    pub(crate) fn claim(&self, id: &SandboxId) -> Result<Claim<'_>, ApiError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id.clone()) {
            return Err(ApiError::Busy(id.to_string()));
        }
        Ok(Claim {
            busy: &self.busy,
            id: id.clone(),
        })
    }

    /// Pulls the image and creates the sandbox; an image not in the registry creates nothing.
    pub async fn create(&self, req: wire::CreateSandbox) -> Result<wire::Created, ApiError> {
        let id = parse_id(&req.id)?;
        if id.as_str() == RESERVED_ID {
            return Err(ApiError::BadRequest(format!(
                "`id` is `{RESERVED_ID}`: a route of the runner's API (`POST /sandboxes/{RESERVED_ID}`), never a sandbox's id; choose another"
            )));
        }
        let reference = self.image_ref(&req.image)?;
        let options = create_options(&req)?;
        let _claim = self.claim(&id)?;
        if self.driver.state(&id).await?.is_some() {
            return Err(SandboxError::AlreadyExists { id }.into());
        }
        if self.count() >= self.capacity {
            return Err(ApiError::Full {
                capacity: self.capacity,
            });
        }
        let image = self
            .driver
            .pull(&reference)
            .await
            .map_err(|source| self.pull_error(&req.image, source))?;
        self.driver.create(&id, &image, &options).await?;
        Ok(wire::Created {
            id: id.to_string(),
            state: SandboxState::Started,
            image: req.image,
            digest: image.digest().to_string(),
        })
    }

    /// `host:port/repository:tag` for an image named in the stack's registry.
    fn image_ref(&self, image: &str) -> Result<ImageRef, ApiError> {
        let bad = |why: String| ApiError::BadRequest(format!("`image`: {why}"));
        if image.is_empty() || image.len() > 255 {
            return Err(bad("give `repository:tag`, at most 255 characters".into()));
        }
        let first = image.split('/').next().unwrap_or_default();
        let names_host = first.contains(['.', ':']) || first == "localhost";
        let full = match (
            names_host,
            image.strip_prefix(&format!("{}/", self.registry)),
        ) {
            (false, _) => format!("{}/{image}", self.registry),
            (true, Some(_)) => image.to_string(),
            (true, None) => {
                return Err(bad(format!(
                    "`{image}` names another registry: images come from the stack's registry ({})",
                    self.registry
                )))
            }
        };
        ImageRef::parse(&full).map_err(|e| bad(e.to_string()))
    }

    /// Pulls `image` (as a caller names it) into the runc driver's image cache; an image not in
    /// the registry is a 404.
    pub(crate) async fn pull(&self, image: &str) -> Result<sandbox::Image, ApiError> {
        let reference = self.image_ref(image)?;
        let driver = self.driver.runc("restore")?;
        let pulled = driver
            .images()
            .pull(&reference)
            .await
            .map_err(|source| self.pull_error(image, source))?;
        Ok(pulled.image)
    }

    fn pull_error(&self, image: &str, source: PullError) -> ApiError {
        match source {
            PullError::NotFound { .. } => ApiError::ImageNotFound {
                image: image.to_string(),
                registry: self.registry.clone(),
            },
            source => ApiError::Pull {
                image: image.to_string(),
                source,
            },
        }
    }

    /// The image as the caller named it: without the stack's registry in front.
    pub(crate) fn short_image(&self, reference: &str) -> String {
        reference
            .strip_prefix(&format!("{}/", self.registry))
            .unwrap_or(reference)
            .to_string()
    }

    fn info(&self, sandbox: &Sandbox) -> wire::SandboxInfo {
        wire::SandboxInfo {
            id: sandbox.id.to_string(),
            state: state_of(sandbox),
            image: sandbox
                .record
                .as_ref()
                .map(|r| self.short_image(&r.image))
                .unwrap_or_default(),
        }
    }

    /// Every sandbox, started or stopped (creates under way are not listed yet).
    pub async fn list(&self) -> Result<Vec<wire::SandboxInfo>, ApiError> {
        let adoption = self.driver.adopt().await?;
        let mut out: Vec<_> = adoption.sandboxes.iter().map(|s| self.info(s)).collect();
        for id in &adoption.stopped {
            if let Some(s) = self.driver.state(id).await? {
                out.push(self.info(&s));
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// One sandbox.
    pub async fn get(&self, id: &str) -> Result<wire::SandboxInfo, ApiError> {
        let id = parse_id(id)?;
        Ok(self.info(&self.existing(&id).await?))
    }

    async fn existing(&self, id: &SandboxId) -> Result<Sandbox, ApiError> {
        self.driver
            .state(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound { id: id.clone() }.into())
    }

    /// Starts a stopped sandbox (a started one is left as it is).
    pub async fn start(&self, id: &str) -> Result<wire::StateChanged, ApiError> {
        let id = parse_id(id)?;
        let _claim = self.claim(&id)?;
        let sandbox = self.driver.start(&id).await?;
        Ok(wire::StateChanged {
            id: id.to_string(),
            state: state_of(&sandbox),
        })
    }

    /// Stops a sandbox, keeping its files (a stopped one is left as it is).
    pub async fn stop(&self, id: &str) -> Result<wire::StateChanged, ApiError> {
        let id = parse_id(id)?;
        let _claim = self.claim(&id)?;
        self.existing(&id).await?;
        self.driver.stop(&id, STOP_GRACE).await?;
        Ok(wire::StateChanged {
            id: id.to_string(),
            state: SandboxState::Stopped,
        })
    }

    /// Deletes a sandbox and everything of it.
    pub async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let id = parse_id(id)?;
        let _claim = self.claim(&id)?;
        self.existing(&id).await?;
        Ok(self.driver.delete(&id).await?)
    }

    /// Runs `/bin/sh -c command` in a started sandbox.
    pub async fn exec(&self, id: &str, req: wire::Exec) -> Result<wire::ExecResult, ApiError> {
        let id = parse_id(id)?;
        let options = exec_options(&req)?;
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self.driver.exec(&id, &req.command, &options).await {
            Ok(out) => Ok(wire::ExecResult {
                exit_code: out.exit_code,
                result: text(&out.stdout),
                stderr: text(&out.stderr),
            }),
            Err(e) => match e.timed_out() {
                // As timeout(1) does: the command was killed, its answer is exit code 124.
                Some(why) => Ok(wire::ExecResult {
                    exit_code: 124,
                    result: String::new(),
                    stderr: why,
                }),
                None => Err(e.into()),
            },
        }
    }

    /// Writes a file in a started sandbox.
    pub async fn write_file(
        &self,
        id: &str,
        path: &str,
        contents: Vec<u8>,
    ) -> Result<wire::FileWritten, ApiError> {
        let id = parse_id(id)?;
        let size = contents.len() as u64;
        self.driver.write_file(&id, path, contents, 0o644).await?;
        Ok(wire::FileWritten {
            path: path.to_string(),
            size,
        })
    }

    /// Reads a file of a started sandbox.
    pub async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ApiError> {
        let id = parse_id(id)?;
        Ok(self.driver.read_file(&id, path, DOWNLOAD_LIMIT).await?)
    }

    /// A connection to `port` inside the sandbox's network namespace.
    pub async fn connect(
        &self,
        id: &SandboxId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, ApiError> {
        Ok(self.driver.connect(id, port, CONNECT_TIMEOUT).await?)
    }

    fn resume_file(&self) -> PathBuf {
        self.driver.home().root().join("resume.json")
    }

    /// Takes back what a previous runner on this home left: running sandboxes as they are,
    /// those the last shutdown stopped started again, leftovers of cut-short creates and
    /// restores deleted (a restore renamed into place but neither started nor stopped is one).
    pub async fn boot(&self) -> Result<Boot, DriverError> {
        let home = self.driver.home();
        let staged = home.clear_staging().map_err(|source| SandboxError::Io {
            op: "remove the restores staged in",
            path: home.sandboxes(),
            source,
        })?;
        let adoption = self.driver.adopt().await?;
        let resume: HashSet<SandboxId> = std::fs::read(self.resume_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default()
            .iter()
            .filter_map(|s| SandboxId::parse(s).ok())
            .collect();
        let mut boot = Boot {
            staged,
            ..Boot::default()
        };
        for id in adoption.stale {
            match self.driver.delete(&id).await {
                Ok(()) => boot.cleaned.push(id),
                Err(e) => boot.failed.push((id, e.to_string())),
            }
        }
        let mut kept = adoption.stopped;
        for s in adoption.sandboxes {
            if s.status == Status::Running {
                // Its slirp4netns taken back (or started again, or ended with outbound off). A
                // sandbox that cannot have the network it was created with is stopped, kept.
                match self.driver.reconnect(&s.id).await {
                    Ok(_) => boot.adopted.push(s.id),
                    Err(e) => {
                        let _ = self.driver.stop(&s.id, STOP_GRACE).await;
                        boot.failed.push((s.id, e.to_string()));
                    }
                }
                continue;
            }
            // Its init died with the runner away (or the host rebooted): keep it, stopped.
            match self.driver.stop(&s.id, Duration::ZERO).await {
                Ok(()) => kept.push(s.id),
                Err(e) => boot.failed.push((s.id, e.to_string())),
            }
        }
        for id in kept {
            if !resume.contains(&id) {
                boot.stopped.push(id);
                continue;
            }
            match self.driver.start(&id).await {
                Ok(_) => boot.resumed.push(id),
                Err(e) => boot.failed.push((id, e.to_string())),
            }
        }
        let _ = std::fs::remove_file(self.resume_file());
        Ok(boot)
    }

    /// Stops every started sandbox, all at once, keeping them and noting them in
    /// `resume.json` (first, so a shutdown cut short still brings them back).
    pub async fn shutdown(self: &Arc<Self>) -> Result<Vec<SandboxId>, DriverError> {
        let adoption = self.driver.adopt().await?;
        let running: Vec<SandboxId> = adoption
            .sandboxes
            .into_iter()
            .filter(|s| s.status == Status::Running)
            .map(|s| s.id)
            .collect();
        let names: Vec<&str> = running.iter().map(SandboxId::as_str).collect();
        let resume = self.resume_file();
        let tmp = resume.with_extension("json.tmp");
        let json = serde_json::to_vec(&names).unwrap_or_default();
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, &resume))
            .map_err(|source| SandboxError::Io {
                op: "write",
                path: resume.clone(),
                source,
            })
            .map_err(DriverError::from)?;
        let mut stops = tokio::task::JoinSet::new();
        for id in running.clone() {
            let me = Arc::clone(self);
            stops.spawn(async move {
                let r = me.driver.stop(&id, STOP_GRACE).await;
                (id, r)
            });
        }
        while let Some(done) = stops.join_next().await {
            if let Ok((id, Err(e))) = done {
                eprintln!("runner: cannot stop sandbox {id}: {e}");
            }
        }
        Ok(running)
    }
}

pub(crate) fn state_of(sandbox: &Sandbox) -> SandboxState {
    match sandbox.status {
        Status::Running => SandboxState::Started,
        _ => SandboxState::Stopped,
    }
}

pub(crate) fn parse_id(id: &str) -> Result<SandboxId, ApiError> {
    SandboxId::parse(id).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// No NUL (it cannot reach a process), and a name that is a name.
fn check_env(
    what: &str,
    env: Option<&BTreeMap<String, String>>,
) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for (k, v) in env.into_iter().flatten() {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "`{what}`: `{k}` is not a valid variable (a name without `=` or NUL, a value without NUL)"
            )));
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

fn create_options(req: &wire::CreateSandbox) -> Result<CreateOptions, ApiError> {
    let defaults = Resources::default();
    let cpus = req.cpu.unwrap_or(defaults.cpus);
    if !(cpus > 0.0 && cpus <= 64.0) {
        return Err(ApiError::BadRequest(format!(
            "`cpu` is {cpus}: give more than 0 and at most 64"
        )));
    }
    let memory_mib = req.memory_mib.unwrap_or(defaults.memory_bytes >> 20);
    if !(16..=(256 << 10)).contains(&memory_mib) {
        return Err(ApiError::BadRequest(format!(
            "`memoryMib` is {memory_mib}: give 16 to 262144"
        )));
    }
    check_env("labels", req.labels.as_ref())?;
    Ok(CreateOptions {
        resources: Resources {
            cpus,
            memory_bytes: memory_mib << 20,
            ..defaults
        },
        env: check_env("env", req.env.as_ref())?,
        ..CreateOptions::default()
    })
}

fn exec_options(req: &wire::Exec) -> Result<ExecOptions, ApiError> {
    if req.command.trim().is_empty() || req.command.contains('\0') {
        return Err(ApiError::BadRequest(
            "`command` must be a non-empty shell command without NUL".into(),
        ));
    }
    if let Some(cwd) = &req.cwd {
        if !cwd.starts_with('/') || cwd.contains('\0') {
            return Err(ApiError::BadRequest(format!(
                "`cwd` is `{cwd}`: give an absolute path"
            )));
        }
    }
    let timeout = match req.timeout {
        None => EXEC_TIMEOUT,
        Some(s) if (1..=EXEC_TIMEOUT_MAX).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            return Err(ApiError::BadRequest(format!(
                "`timeout` is {s}: give 1 to {EXEC_TIMEOUT_MAX} seconds"
            )))
        }
    };
    Ok(ExecOptions {
        env: check_env("env", req.env.as_ref())?,
        cwd: req.cwd.clone(),
        timeout,
        output_limit: EXEC_OUTPUT_LIMIT,
    })
}
