//! The runc box driver: a sandbox's whole life (create, exec, stop, start, kill, delete) and the re-adoption
//! of running sandboxes by a new driver after a runner restart. It keeps no state in memory:
//! everything is derived from the sandbox id, the runner's [`Home`] and runc's own state, so any
//! driver instance on the same home can take over.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bundle::{self, BundleError, Init, Resources, Spec};
use crate::digest::Digest;
use crate::files::{self, FileError};
use crate::id::SandboxId;
use crate::layout::Home;
use crate::net::{self, NetError};
use crate::oci::{Image, ImageStore, PullError};
use crate::outbound::{self, Outbound, OutboundError};
use crate::runc::{ExecOptions, ExecOutput, InitProcess, Runc, RuncError};
use crate::userns::{self, Holder, UsernsError};

/// Why a driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A sandbox with this id exists already (its dir or its runc container).
    #[error("sandbox {id} already exists")]
    AlreadyExists {
        /// The id.
        id: SandboxId,
    },
    /// No sandbox with this id.
    #[error("sandbox {id} does not exist")]
    NotFound {
        /// The id.
        id: SandboxId,
    },
    /// The sandbox exists but is stopped or its init has exited: start it (or delete it).
    #[error("sandbox {id} is not running: start it first")]
    NotRunning {
        /// The id.
        id: SandboxId,
    },
    /// The image's layer is not in the cache.
    #[error(
        "layer {layer} of the sandbox's image is not in the image cache: pull the image first"
    )]
    LayerMissing {
        /// The missing layer.
        layer: Digest,
    },
    /// The image cache could not be opened.
    #[error("cannot open the image cache")]
    Images(#[source] PullError),
    /// The bundle (overlay, config) could not be made or unmade.
    #[error("sandbox {0}: cannot prepare its bundle")]
    Bundle(SandboxId, #[source] BundleError),
    /// runc failed.
    #[error("sandbox {0}: runc failed")]
    Runc(SandboxId, #[source] RuncError),
    /// A file operation inside the sandbox failed.
    #[error("sandbox {0}: file operation refused or failed")]
    File(SandboxId, #[source] FileError),
    /// A connection into the sandbox failed.
    #[error("sandbox {0}: cannot connect to one of its ports")]
    Net(SandboxId, #[source] NetError),
    /// A blocking task panicked or was cancelled.
    #[error("a file task of the driver did not finish")]
    Task(#[source] tokio::task::JoinError),
    /// The user namespace of a runner that is not root could not be set up or entered.
    #[error("the sandboxes' user namespace (the runner is not root) failed")]
    Userns(#[source] UsernsError),
    /// A container left in a namespace holder that is gone could not be removed.
    #[error("cannot remove container {container}, left by a namespace holder that is gone: remove it with `runc --root <home>/runc delete --force {container}`")]
    Unreachable {
        /// The container's name.
        container: String,
        /// Why.
        #[source]
        source: RuncError,
    },
    /// `runc list` failed.
    #[error("cannot list the runner's containers")]
    List(#[source] RuncError),
    /// The driver's sandboxes are to have outbound access and cannot (checked as it opens).
    #[error("the sandboxes' outbound network (slirp4netns) cannot be set up")]
    OutboundSetup(#[source] OutboundError),
    /// The sandbox's outbound network (its slirp4netns) could not be started or ended.
    #[error("sandbox {0}: its outbound network (slirp4netns) failed")]
    Outbound(SandboxId, #[source] OutboundError),
    /// The box driver cannot do this (yet).
    #[error("{what} is not supported for {driver} boxes yet")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// The driver.
        driver: &'static str,
    },
    /// A file of the sandbox's dir could not be written, read or removed.
    #[error("cannot {op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Maps an error about sandbox `id` into `variant` of [`SandboxError`].
fn about<E>(
    id: &SandboxId,
    variant: fn(SandboxId, E) -> SandboxError,
) -> impl FnOnce(E) -> SandboxError {
    let id = id.clone();
    move |e| variant(id, e)
}

/// How a sandbox is created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOptions {
    /// cgroup limits.
    pub resources: Resources,
    /// Environment on top of the image's (`KEY`, `value`).
    pub env: Vec<(String, String)>,
    /// What runs as pid 1.
    pub init: Init,
}

/// What a sandbox was created from, kept as `sandbox.json` in its dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxRecord {
    /// The image reference.
    pub image: String,
    /// The digest it resolved to.
    pub image_digest: Digest,
    /// Its layers, bottom first (the overlay's lower dirs).
    pub layers: Vec<Digest>,
    /// The options it was created with.
    pub options: CreateOptions,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// Created with outbound access (its driver's [`Outbound`] then): it keeps it for life, as
    /// long as the driver running it allows it. Records written before the setting: `false`.
    #[serde(default)]
    pub outbound: bool,
}

/// A runc container's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created, init not started.
    Created,
    /// Init is running.
    Running,
    /// Frozen.
    Paused,
    /// Init has exited, or the sandbox was stopped with [`Driver::stop`] (then its pid is 0 and
    /// it has no container: [`Driver::start`] runs it again).
    Stopped,
}

/// A sandbox as the driver sees it now.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// Its id.
    pub id: SandboxId,
    /// Its init's pid on the host (0 once stopped): the way into its namespaces.
    pub pid: u32,
    /// Its state.
    pub status: Status,
    /// What it was created from (`None` if its record is unreadable).
    pub record: Option<SandboxRecord>,
}

/// What a new driver finds on its home: sandboxes to take back, and leftovers to clean.
#[derive(Debug, Clone, Default)]
pub struct Adoption {
    /// Sandboxes runc knows (running, or stopped and not yet deleted).
    pub sandboxes: Vec<Sandbox>,
    /// Sandboxes stopped with [`Driver::stop`]: no container, their files kept, to `start` again.
    pub stopped: Vec<SandboxId>,
    /// Sandbox dirs runc has no container for and that were not stopped (a create cut short):
    /// `delete` them.
    pub stale: Vec<SandboxId>,
}

/// A sandbox as [`Driver::freeze`] left it.
#[derive(Debug)]
#[must_use = "thaw what was frozen"]
pub struct Frozen {
    /// Was it paused (a running sandbox of a root runner)?
    pub paused: bool,
    since: Instant,
}

/// Settings of a [`Driver`].
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The runc binary (default `runc`, from PATH).
    pub runc: PathBuf,
    /// The cgroup under which each sandbox gets `<parent>/<id>` (default `stack-sandboxes`).
    pub cgroup_parent: String,
    /// Whether new sandboxes get outbound access, and whether any sandbox keeps it (default
    /// off: only `lo`). See [`crate::outbound`].
    pub outbound: Outbound,
    /// The slirp4netns binary for [`Outbound::On`] (default `slirp4netns`, from PATH).
    pub slirp4netns: PathBuf,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            runc: "runc".into(),
            cgroup_parent: "stack-sandboxes".into(),
            outbound: Outbound::Off,
            slirp4netns: "slirp4netns".into(),
        }
    }
}

/// Runs sandboxes with runc on one runner home.
#[derive(Debug)]
pub struct Driver {
    home: Home,
    runc: Runc,
    images: ImageStore,
    cgroup_parent: String,
    exec_seq: AtomicU64,
    /// The namespace holder when the runner is not root (see [`crate::userns`]); `None` as root.
    holder: Option<Arc<Holder>>,
    /// Outbound access, and the slirp4netns that gives it.
    outbound: Outbound,
    slirp4netns: PathBuf,
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { op, path, source }
}

impl Driver {
    /// A driver on `home`, opening its image cache. When this process is not root, its sandboxes
    /// run in the home's user namespace: the namespace holder a previous driver left is taken
    /// back, or a new one started (and then whatever ran in the old one, out of reach now, is
    /// killed and its sandboxes kept stopped).
    pub fn open(home: Home, config: DriverConfig) -> Result<Self, SandboxError> {
        let images = ImageStore::open(home.images()).map_err(SandboxError::Images)?;
        for dir in [home.runc_root(), home.sandboxes()] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let mut runc = Runc::new(config.runc, home.runc_root());
        let mut holder = None;
        let rootless = !nix::unistd::geteuid().is_root();
        // Checked now, not at the first create: a runner that cannot give what it is set to give
        // refuses to start, saying why.
        if config.outbound.is_on() {
            outbound::check(&config.slirp4netns, rootless).map_err(SandboxError::OutboundSetup)?;
        }
        if rootless {
            let (h, fresh) = Holder::open(home.root()).map_err(SandboxError::Userns)?;
            let h = Arc::new(h);
            runc = runc.in_holder(Arc::clone(&h));
            holder = Some(h);
            if fresh {
                clear_unreachable(&home, &runc)?;
            }
        }
        Ok(Self {
            home,
            runc,
            images,
            cgroup_parent: config.cgroup_parent,
            exec_seq: AtomicU64::new(0),
            holder,
            outbound: config.outbound,
            slirp4netns: config.slirp4netns,
        })
    }

    /// The driver's outbound setting.
    pub fn outbound(&self) -> Outbound {
        self.outbound
    }

    /// Does a sandbox created as `record` says get outbound access from this driver? Only when
    /// it was created with it and the driver allows it: `off` wins.
    fn wants_outbound(&self, record: &SandboxRecord) -> bool {
        self.outbound.is_on() && record.outbound
    }

    /// Runs the sandbox's init from its bundle. With outbound access, the init is created first,
    /// its network set up, and only then its command started: it never runs without its network.
    async fn launch(
        &self,
        id: &SandboxId,
        paths: &crate::layout::SandboxPaths,
        outbound: bool,
    ) -> Result<(), SandboxError> {
        if !outbound {
            return self
                .runc
                .run_detached(id, &paths.bundle, &paths.init_log)
                .await
                .map_err(about(id, SandboxError::Runc));
        }
        self.runc
            .create(id, &paths.bundle, &paths.init_log)
            .await
            .map_err(about(id, SandboxError::Runc))?;
        self.connect_outbound(id).await?;
        self.runc
            .start(id)
            .await
            .map_err(about(id, SandboxError::Runc))
    }

    /// Starts the sandbox's slirp4netns (see [`crate::outbound`]) and waits until its `tap0` is up.
    async fn connect_outbound(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let init = self
            .runc
            .init(id)
            .ok_or_else(|| SandboxError::NotRunning { id: id.clone() })?;
        let binary = self.slirp4netns.clone();
        let dir = self.home.sandbox(id).dir;
        let rootless = self.is_rootless();
        tokio::task::spawn_blocking(move || outbound::start(&binary, init, &dir, rootless))
            .await
            .map_err(SandboxError::Task)?
            .map(drop)
            .map_err(about(id, SandboxError::Outbound))
    }

    /// Ends the sandbox's slirp4netns, if it has one.
    async fn disconnect_outbound(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let dir = self.home.sandbox(id).dir;
        tokio::task::spawn_blocking(move || outbound::end(&dir))
            .await
            .map_err(SandboxError::Task)?
            .map_err(about(id, SandboxError::Outbound))
    }

    /// The pid of the sandbox's slirp4netns, if it has one running.
    pub fn outbound_pid(&self, id: &SandboxId) -> Option<i32> {
        outbound::running(&self.home.sandbox(id).dir).map(|s| s.pid)
    }

    /// Takes back the outbound network of a running sandbox that a previous driver left (call it
    /// for each running sandbox [`Driver::adopt`] lists): its slirp4netns if that very process
    /// still runs, a new one otherwise; one left running is ended when this driver's setting is
    /// off. `true` when the sandbox has outbound access now.
    pub async fn reconnect(&self, id: &SandboxId) -> Result<bool, SandboxError> {
        self.running_init(id)?;
        let record = self.record(id)?;
        if !self.wants_outbound(&record) {
            self.disconnect_outbound(id).await?;
            return Ok(false);
        }
        if outbound::running(&self.home.sandbox(id).dir).is_none() {
            self.connect_outbound(id).await?;
        }
        Ok(true)
    }

    /// The sandbox's `sandbox.json`.
    fn record(&self, id: &SandboxId) -> Result<SandboxRecord, SandboxError> {
        let path = self.home.sandbox(id).record;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SandboxError::NotFound { id: id.clone() })
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| io_err("parse", &path)(e.into()))
    }

    /// Does this driver run its sandboxes as an ordinary user, in a user namespace? Then no cgroup
    /// limit (cpu, memory, pids) is applied: there is no cgroup delegation to apply them in.
    pub fn is_rootless(&self) -> bool {
        self.holder.is_some()
    }

    /// The pid of the namespace holder of a driver that is not root.
    pub fn holder_pid(&self) -> Option<i32> {
        self.holder.as_ref().map(|h| h.pid())
    }

    /// Ends the namespace holder of a driver that is not root when no container is left in it
    /// (every sandbox stopped or deleted): a runner's clean stop leaves no process behind. The
    /// next driver on the home starts a new one. `true` when it was ended. Call it when no
    /// create or start is under way (a runner once it has stopped serving).
    pub async fn release(&self) -> Result<bool, SandboxError> {
        let Some(holder) = &self.holder else {
            return Ok(false);
        };
        if !self
            .runc
            .list()
            .await
            .map_err(SandboxError::List)?
            .is_empty()
        {
            return Ok(false);
        }
        holder.end().map_err(SandboxError::Userns)?;
        Ok(true)
    }

    /// Mounts the sandbox's overlay: in this process's mount namespace as root, in the holder's
    /// otherwise.
    async fn mount(
        &self,
        id: &SandboxId,
        lowers: &[PathBuf],
        paths: &crate::layout::SandboxPaths,
    ) -> Result<(), SandboxError> {
        let Some(holder) = &self.holder else {
            return bundle::mount_overlay(lowers, &paths.upper, &paths.work, &paths.rootfs)
                .map_err(about(id, SandboxError::Bundle));
        };
        let options = bundle::overlay_options(lowers, &paths.upper, &paths.work, true)
            .map_err(about(id, SandboxError::Bundle))?;
        let (holder, target) = (Arc::clone(holder), paths.rootfs.clone());
        tokio::task::spawn_blocking(move || {
            holder
                .mount_overlay(&target, &options)
                .map_err(|source| BundleError::Userns {
                    op: "mount",
                    target,
                    source,
                })
        })
        .await
        .map_err(SandboxError::Task)?
        .map_err(about(id, SandboxError::Bundle))
    }

    /// Unmounts the sandbox's overlay if it is mounted.
    async fn unmount(&self, id: &SandboxId) -> Result<(), SandboxError> {
        let target = self.home.sandbox(id).rootfs;
        let Some(holder) = &self.holder else {
            return bundle::unmount(&target).map_err(about(id, SandboxError::Bundle));
        };
        let holder = Arc::clone(holder);
        tokio::task::spawn_blocking(move || {
            holder
                .unmount(&target)
                .map_err(|source| BundleError::Userns {
                    op: "unmount",
                    target,
                    source,
                })
        })
        .await
        .map_err(SandboxError::Task)?
        .map_err(about(id, SandboxError::Bundle))
    }

    /// `path` as this process reaches it: itself as root, through the holder's mount namespace
    /// (where the overlays are mounted) otherwise.
    fn view(&self, path: &Path) -> PathBuf {
        match &self.holder {
            Some(holder) => holder.view(path),
            None => path.to_path_buf(),
        }
    }

    /// The runner home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The image cache, to pull images into before [`Driver::create`].
    pub fn images(&self) -> &ImageStore {
        &self.images
    }

    /// Creates and starts sandbox `id` from the cached `image`; returns once its init runs.
    /// On failure nothing of it is left (no dir, mount or container).
    pub async fn create(
        &self,
        id: &SandboxId,
        image: &Image,
        options: &CreateOptions,
    ) -> Result<Sandbox, SandboxError> {
        let dir = self.home.sandbox(id).dir;
        if self.runc_knows(id) {
            return Err(SandboxError::AlreadyExists { id: id.clone() });
        }
        // Creating the dir claims the id: a second create of the same id fails here.
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::AlreadyExists { id: id.clone() })
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        match self.create_claimed(id, image, options, true).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = self.delete(id).await;
                Err(e)
            }
        }
    }

    /// Makes the bundle of a sandbox whose dir is claimed (its `upper/` may hold a restored
    /// disk already) and, with `launch`, starts it; without, leaves it stopped.
    async fn create_claimed(
        &self,
        id: &SandboxId,
        image: &Image,
        options: &CreateOptions,
        launch: bool,
    ) -> Result<Sandbox, SandboxError> {
        let lowers = image
            .layers
            .iter()
            .map(|l| self.cached_layer(&l.digest))
            .collect::<Result<Vec<_>, _>>()?;
        let paths = self.home.sandbox(id);
        for d in [&paths.upper, &paths.work, &paths.rootfs] {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        let record = SandboxRecord {
            image: image.reference.clone(),
            image_digest: image.digest.clone(),
            layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
            options: options.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            outbound: self.outbound.is_on(),
        };
        write_json(&paths.record, &record)?;
        let resolv_conf = outbound::resolv_conf_path(&paths.dir);
        if record.outbound {
            fs::write(&resolv_conf, outbound::RESOLV_CONF)
                .map_err(io_err("write", &resolv_conf))?;
        }
        // Mounted first: the image's user names are looked up in its own /etc/passwd.
        self.mount(id, &lowers, &paths).await?;
        let image_user = image.config.user.as_deref();
        let user = bundle::resolve_user(image_user, &self.view(&paths.rootfs))
            .map_err(about(id, SandboxError::Bundle))?;
        if self.is_rootless() && user != (0, 0) {
            let (uid, gid) = user;
            let user = image_user.unwrap_or_default().to_string();
            let e = BundleError::Unmapped { user, uid, gid };
            return Err(SandboxError::Bundle(id.clone(), e));
        }
        let spec = Spec {
            id,
            image: &image.config,
            args: options
                .init
                .args(&image.config)
                .map_err(about(id, SandboxError::Bundle))?,
            env: &options.env,
            resources: &options.resources,
            cgroup_parent: &self.cgroup_parent,
            user,
            rootless: self.is_rootless(),
            resolv_conf: record.outbound.then_some(resolv_conf.as_path()),
        };
        write_json(&paths.config, &bundle::config_json(&spec))?;
        if !launch {
            fs::write(&paths.stopped, b"").map_err(io_err("write", &paths.stopped))?;
            self.unmount(id).await?;
            return self
                .state(id)
                .await?
                .ok_or_else(|| SandboxError::NotFound { id: id.clone() });
        }
        self.launch(id, &paths, self.wants_outbound(&record))
            .await?;
        self.state(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound { id: id.clone() })
    }

    /// What an export of sandbox `id` reads: its writable layer (the overlay's upper dir, its
    /// whole diff against its image) and its record.
    pub fn export_source(&self, id: &SandboxId) -> Result<(PathBuf, SandboxRecord), SandboxError> {
        let record = self.record(id)?;
        // A plain dir of the home, reachable as it is whether or not the runner is root.
        Ok((self.home.sandbox(id).upper, record))
    }

    /// Freezes a running sandbox (`runc pause`: the cgroup freezer) so its writable layer can be
    /// read whole and consistent; a stopped one needs nothing. A runner that is not root has no
    /// cgroup to freeze: its sandbox keeps running, and [`Frozen::paused`] says so (the export
    /// then relies on the archive's own check that no file changed while it was read).
    /// Always [`Driver::thaw`] what this returns, whatever happened in between.
    pub async fn freeze(&self, id: &SandboxId) -> Result<Frozen, SandboxError> {
        let running = match self.runc.init(id) {
            Some(init) => init.is_alive(),
            None if self.home.sandbox(id).record.is_file() => false,
            None => return Err(SandboxError::NotFound { id: id.clone() }),
        };
        let paused = running && !self.is_rootless();
        if paused {
            self.runc
                .pause(id)
                .await
                .map_err(about(id, SandboxError::Runc))?;
        }
        Ok(Frozen {
            paused,
            since: Instant::now(),
        })
    }

    /// Thaws what [`Driver::freeze`] froze (`runc resume`); returns how long it was frozen.
    pub async fn thaw(&self, id: &SandboxId, frozen: Frozen) -> Result<Duration, SandboxError> {
        if frozen.paused {
            self.runc
                .resume(id)
                .await
                .map_err(about(id, SandboxError::Runc))?;
            return Ok(frozen.since.elapsed());
        }
        Ok(Duration::ZERO)
    }

    /// Installs a restored sandbox `id` from `staged`, a dir under the home's `sandboxes/` (see
    /// [`Home::restore_staging`]) whose `upper/` holds its verified disk: renames it into place,
    /// then makes its bundle from `image` and `options` as a create does, and starts it when
    /// `start` says so (stopped otherwise). Until its container runs or its `stopped` marker is
    /// written, the dir is what a new driver's [`Driver::adopt`] calls stale and deletes: a
    /// runner killed midway leaves no half-installed sandbox. On failure nothing of it is left.
    pub async fn restore(
        &self,
        id: &SandboxId,
        staged: &Path,
        image: &Image,
        options: &CreateOptions,
        start: bool,
    ) -> Result<Sandbox, SandboxError> {
        let dir = self.home.sandbox(id).dir;
        if self.runc_knows(id) || dir.exists() {
            return Err(SandboxError::AlreadyExists { id: id.clone() });
        }
        fs::rename(staged, &dir).map_err(io_err("rename into place", staged))?;
        match self.create_claimed(id, image, options, start).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = self.delete(id).await;
                Err(e)
            }
        }
    }

    /// Does runc have a container `id`? A file read, no runc process.
    fn runc_knows(&self, id: &SandboxId) -> bool {
        self.runc.init(id).is_some()
    }

    /// The sandbox's init, checked to be running.
    fn running_init(&self, id: &SandboxId) -> Result<InitProcess, SandboxError> {
        match self.runc.init(id) {
            None => Err(self.absent(id)),
            Some(init) if !init.is_alive() => Err(SandboxError::NotRunning { id: id.clone() }),
            Some(init) => Ok(init),
        }
    }

    /// Why a sandbox without a container cannot be used: stopped (`NotRunning`) or unknown.
    fn absent(&self, id: &SandboxId) -> SandboxError {
        if self.is_stopped(id) {
            SandboxError::NotRunning { id: id.clone() }
        } else {
            SandboxError::NotFound { id: id.clone() }
        }
    }

    /// Was the sandbox stopped with [`Driver::stop`] (and not started since)?
    fn is_stopped(&self, id: &SandboxId) -> bool {
        self.home.sandbox(id).stopped.exists()
    }

    /// The sandbox `id` as runc reports it, a stopped one (pid 0, `Stopped`) when it was
    /// stopped with [`Driver::stop`], `None` if there is no such sandbox.
    pub async fn state(&self, id: &SandboxId) -> Result<Option<Sandbox>, SandboxError> {
        let state = self
            .runc
            .state(id)
            .await
            .map_err(about(id, SandboxError::Runc))?;
        Ok(match state {
            Some(s) => Some(self.sandbox(id.clone(), s.pid, &s.status)),
            None if self.is_stopped(id) => Some(self.sandbox(id.clone(), 0, "stopped")),
            None => None,
        })
    }

    fn sandbox(&self, id: SandboxId, pid: u32, status: &str) -> Sandbox {
        let status = match status {
            "created" => Status::Created,
            "running" => Status::Running,
            "paused" => Status::Paused,
            _ => Status::Stopped,
        };
        let record = fs::read(self.home.sandbox(&id).record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Sandbox {
            id,
            pid,
            status,
            record,
        }
    }

    /// Runs `command` with the sandbox's `/bin/sh -c`, capturing its output and exit code.
    pub async fn exec(
        &self,
        id: &SandboxId,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, SandboxError> {
        self.running_init(id)?;
        let n = self.exec_seq.fetch_add(1, Ordering::Relaxed);
        let pid_file = self
            .home
            .sandbox(id)
            .dir
            .join(format!("exec-{}-{n}.pid", std::process::id()));
        let args = ["/bin/sh".to_string(), "-c".to_string(), command.to_string()];
        self.runc
            .exec(id, &args, options, &pid_file)
            .await
            .map_err(about(id, SandboxError::Runc))
    }

    /// The sandbox's root as the host sees it, if it is mounted (a file written to the bare
    /// mount point would be hidden by the overlay and lost).
    fn mounted_rootfs(&self, id: &SandboxId) -> Result<PathBuf, SandboxError> {
        let rootfs = self.home.sandbox(id).rootfs;
        let mountinfo = match &self.holder {
            Some(holder) => holder.mountinfo(),
            None => PathBuf::from("/proc/self/mountinfo"),
        };
        match bundle::is_mount_point_in(&mountinfo, &rootfs) {
            Ok(true) => Ok(self.view(&rootfs)),
            Ok(false) => Err(self.absent(id)),
            Err(e) => Err(io_err("read the mountinfo for", &rootfs)(e)),
        }
    }

    /// Writes `contents` to absolute `path` in the sandbox (see [`files::write`]).
    pub async fn write_file(
        &self,
        id: &SandboxId,
        path: &str,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<(), SandboxError> {
        let path = path.to_string();
        self.in_rootfs(id, move |root| files::write(root, &path, &contents, mode))
            .await
    }

    /// Reads absolute `path` in the sandbox, up to `limit` bytes (see [`files::read`]).
    pub async fn read_file(
        &self,
        id: &SandboxId,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, SandboxError> {
        let path = path.to_string();
        self.in_rootfs(id, move |root| files::read(root, &path, limit))
            .await
    }

    /// Runs a blocking file operation on the sandbox's mounted root, off the async threads.
    async fn in_rootfs<T: Send + 'static>(
        &self,
        id: &SandboxId,
        op: impl FnOnce(&Path) -> Result<T, FileError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let rootfs = self.mounted_rootfs(id)?;
        tokio::task::spawn_blocking(move || op(&rootfs))
            .await
            .map_err(SandboxError::Task)?
            .map_err(about(id, SandboxError::File))
    }

    /// A TCP connection to `127.0.0.1:port` inside the sandbox's own network namespace.
    pub async fn connect(
        &self,
        id: &SandboxId,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, SandboxError> {
        let init = self.running_init(id)?;
        if self.is_rootless() {
            return self.connect_rootless(id, init, port, timeout).await;
        }
        let netns = net::open_namespace(init.pid).map_err(about(id, SandboxError::Net))?;
        // Checked again once the namespace is open: had the init exited in between and its pid
        // been reused, the namespace would be another process's.
        if !init.is_alive() {
            return Err(SandboxError::NotRunning { id: id.clone() });
        }
        net::connect(netns, port, timeout)
            .await
            .map_err(about(id, SandboxError::Net))
    }

    /// [`Driver::connect`] for a runner that is not root: it may not enter the sandbox's network
    /// namespace itself (it is multithreaded, and the namespace belongs to the sandboxes' user
    /// namespace), so a forked child enters both, connects and passes the socket back.
    async fn connect_rootless(
        &self,
        id: &SandboxId,
        init: InitProcess,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, SandboxError> {
        let ns = userns::open_namespaces(
            init.pid,
            &[("user", libc::CLONE_NEWUSER), ("net", libc::CLONE_NEWNET)],
        )
        .map_err(SandboxError::Userns)?;
        if !init.is_alive() {
            return Err(SandboxError::NotRunning { id: id.clone() });
        }
        let connected = tokio::task::spawn_blocking(move || userns::connect_in(&ns, port, timeout))
            .await
            .map_err(SandboxError::Task)?
            .map_err(SandboxError::Userns)?;
        let stream = connected
            .and_then(|s| {
                s.set_nonblocking(true)?;
                tokio::net::TcpStream::from_std(s)
            })
            .map_err(|source| NetError::Connect { port, source })
            .map_err(about(id, SandboxError::Net))?;
        Ok(stream)
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the sandbox's init. A slirp4netns of the sandbox
    /// exits by itself once the init has exited and been reaped (its `--exit-fd` is the init's
    /// pidfd), and is ended by the next stop, start or delete in any case.
    pub async fn kill(&self, id: &SandboxId, signal: &str) -> Result<(), SandboxError> {
        if !self.runc_knows(id) {
            return Err(SandboxError::NotFound { id: id.clone() });
        }
        self.runc
            .kill(id, signal)
            .await
            .map_err(about(id, SandboxError::Runc))
    }

    /// Stops the sandbox and keeps it: its init gets SIGTERM and up to `grace` to exit, then its
    /// container is removed (every process left is killed) and its overlay unmounted; its dir,
    /// writable layer and record stay, and [`Driver::start`] runs it again with the same files.
    /// Idempotent: stopping a stopped sandbox does nothing.
    pub async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), SandboxError> {
        let paths = self.home.sandbox(id);
        if !paths.record.is_file() {
            return Err(SandboxError::NotFound { id: id.clone() });
        }
        // The marker first: a stop cut short leaves a stopped sandbox, never one `adopt` would
        // call stale and have deleted.
        fs::write(&paths.stopped, b"").map_err(io_err("write", &paths.stopped))?;
        if let Some(init) = self.runc.init(id) {
            if init.is_alive() {
                // The keeper init exits on TERM; an image's own command may need its grace.
                let _ = self.runc.kill(id, "TERM").await;
                let deadline = Instant::now() + grace;
                while init.is_alive() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        self.remove_container(id).await?;
        self.unmount(id).await
    }

    /// Runs a stopped sandbox again: mounts its overlay (its own writable layer, as it was) and
    /// starts its init with the config it was created with. Starting a running sandbox returns it
    /// as it is. On failure the sandbox stays stopped, with nothing mounted or running.
    pub async fn start(&self, id: &SandboxId) -> Result<Sandbox, SandboxError> {
        let paths = self.home.sandbox(id);
        if let Some(init) = self.runc.init(id) {
            if init.is_alive() {
                return self
                    .state(id)
                    .await?
                    .ok_or_else(|| SandboxError::NotFound { id: id.clone() });
            }
            // Its init exited on its own: the dead container goes, the sandbox starts afresh.
            self.remove_container(id).await?;
        }
        let record = self.record(id)?;
        let lowers = record
            .layers
            .iter()
            .map(|l| self.cached_layer(l))
            .collect::<Result<Vec<_>, _>>()?;
        let started = async {
            self.unmount(id).await?;
            self.mount(id, &lowers, &paths).await?;
            self.launch(id, &paths, self.wants_outbound(&record)).await
        };
        if let Err(e) = started.await {
            let _ = self.remove_container(id).await;
            let _ = self.unmount(id).await;
            return Err(e);
        }
        match fs::remove_file(&paths.stopped) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove", &paths.stopped)(e)),
        }
        self.state(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound { id: id.clone() })
    }

    /// The unpacked layer `digest` of the image cache, as an overlay lower dir.
    fn cached_layer(&self, digest: &Digest) -> Result<PathBuf, SandboxError> {
        let dir = self.images.layer_dir(digest);
        dir.is_dir()
            .then_some(dir)
            .ok_or_else(|| SandboxError::LayerMissing {
                layer: digest.clone(),
            })
    }

    /// `runc delete --force` of the sandbox's container, if it has one, and the end of its
    /// slirp4netns, if it has one: the sandbox's network goes with its init.
    async fn remove_container(&self, id: &SandboxId) -> Result<(), SandboxError> {
        if self.runc_knows(id) {
            match self.runc.delete(id).await {
                Ok(()) => {}
                // Gone between the check and the delete.
                Err(RuncError::Failed { stderr, .. }) if stderr.contains("does not exist") => {}
                Err(source) => return Err(about(id, SandboxError::Runc)(source)),
            }
        }
        self.disconnect_outbound(id).await
    }

    /// Removes the sandbox: its container (killed if running), its overlay mount and its dir.
    /// Idempotent: whatever is already gone is skipped.
    pub async fn delete(&self, id: &SandboxId) -> Result<(), SandboxError> {
        self.remove_container(id).await?;
        self.unmount(id).await?;
        let dir = self.home.sandbox(id).dir;
        crate::layout::remove_all(&dir).map_err(io_err("remove", &dir))
    }

    /// Finds what a previous driver on this home left running, to take it back (then
    /// [`Driver::reconnect`] each running sandbox: its outbound network). A listing only: it
    /// changes nothing, and may be called any time.
    pub async fn adopt(&self) -> Result<Adoption, SandboxError> {
        let containers = self.runc.list().await.map_err(SandboxError::List)?;
        let mut adoption = Adoption::default();
        for c in containers {
            if let Ok(id) = SandboxId::parse(&c.id) {
                adoption.sandboxes.push(self.sandbox(id, c.pid, &c.status));
            }
        }
        let dir = self.home.sandboxes();
        for entry in fs::read_dir(&dir).map_err(io_err("read", &dir))?.flatten() {
            let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| SandboxId::parse(n).ok())
            else {
                continue;
            };
            if adoption.sandboxes.iter().any(|s| s.id == id) {
                continue;
            }
            if self.is_stopped(&id) {
                adoption.stopped.push(id);
            } else {
                adoption.stale.push(id);
            }
        }
        Ok(adoption)
    }
}

/// With a new namespace holder, the containers runc still lists ran in the old one's user
/// namespace (the holder was killed, or the host rebooted): no runc command can enter them now.
/// Each is killed and removed (signals need no namespace), and its sandbox kept stopped, as a
/// sandbox whose init died while the runner was away is.
fn clear_unreachable(home: &Home, runc: &Runc) -> Result<(), SandboxError> {
    let root = home.runc_root();
    for entry in fs::read_dir(&root)
        .map_err(io_err("read", &root))?
        .flatten()
    {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        runc.delete_blocking(&name)
            .map_err(|source| SandboxError::Unreachable {
                container: name.clone(),
                source,
            })?;
        if let Ok(id) = SandboxId::parse(&name) {
            let paths = home.sandbox(&id);
            // Its slirp4netns served a namespace that is gone with its init.
            outbound::end(&paths.dir).map_err(about(&id, SandboxError::Outbound))?;
            if paths.record.is_file() {
                fs::write(&paths.stopped, b"").map_err(io_err("write", &paths.stopped))?;
            }
        }
    }
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SandboxError> {
    let bytes =
        serde_json::to_vec_pretty(value).map_err(|e| io_err("serialize", path)(e.into()))?;
    fs::write(path, bytes).map_err(io_err("write", path))
}
