//! The BoxLite box driver (cargo feature `microvm`): each sandbox is a BoxLite microVM, with its
//! own kernel, named after the sandbox's id (the box's name *is* the sandbox id, so anything that
//! knows one knows the other). The same calls as the runc [`Driver`](crate::Driver), with the
//! same errors where they mean the same thing, so the runner cannot tell them apart:
//!
//! - **create**: the image the runner resolved in the stack's registry (plain HTTP) is pulled by
//!   BoxLite itself, pinned to the resolved digest; cpu, memory, environment and init from
//!   [`CreateOptions`] (see [`options::box_options`]); the box is detached, so it outlives the
//!   runner, and kept when stopped;
//! - **exec** runs `/bin/sh -c` through BoxLite's exec, with the timeout enforced here;
//! - **files** go through small shell helpers in the box (a write reads stdin) and BoxLite's
//!   copy API (a read, byte for byte), after the runc driver's path rules;
//! - **connect** opens a tunnel to the port on the box's address and relays it to a loopback
//!   TCP stream, which is what the runner forwards requests over;
//! - **adopt** lists the boxes of the runner's BoxLite home and takes back the running ones.
//!
//! Everything lives under the runner's [`Home`]: BoxLite's home is `<home>/boxlite/`, and each
//! sandbox keeps `<home>/sandboxes/<id>/sandbox.json` (what it was created from) beside it.

pub mod options;
pub mod runtime;

use std::collections::HashSet;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boxlite::{
    BoxCommand, BoxInfo, BoxliteError, BoxliteOptions, BoxliteRuntime, CopyOptions, LiteBox,
};
use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};

use crate::boxdriver::DriverError;
use crate::digest::Digest;
use crate::driver::{Adoption, CreateOptions, Sandbox, SandboxError, SandboxRecord};
use crate::id::SandboxId;
use crate::layout::Home;
use crate::oci::{ImageRef, ImageStore, PullError};
use crate::runc::{ExecOptions, ExecOutput};
use options::OptionsError;

/// How long a box may take to boot (BoxLite pulls its image on the first one).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a file helper may run.
const FILE_TIMEOUT: Duration = Duration::from_secs(120);
/// What a stop may take beyond the caller's grace: the whole VM shuts down, not one process.
const STOP_MARGIN: Duration = Duration::from_secs(20);
/// Most bytes kept of a file helper's stderr.
const HELPER_OUTPUT: usize = 64 << 10;

/// The box's address on its own network (BoxLite's `net::constants::GUEST_IP`): the runner's
/// connections to a sandbox's ports go there.
pub const GUEST_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 127, 2);

/// An image resolved in the stack's registry, for BoxLite to pull: the reference as asked for
/// and the digest it named when the sandbox was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryImage {
    /// The reference (`host:port/repository:tag`).
    pub reference: ImageRef,
    /// The digest it resolved to.
    pub digest: Digest,
}

/// Settings of a [`MicrovmDriver`].
#[derive(Debug, Clone)]
pub struct MicrovmConfig {
    /// The stack's registry, `host:port`, reached over plain HTTP.
    pub registry: String,
    /// How long a box may take to boot.
    pub boot_timeout: Duration,
}

/// Why a BoxLite driver call failed (the failures a runc driver has too, a missing sandbox or a
/// refused path, are the same [`SandboxError`]s).
#[derive(Debug, thiserror::Error)]
pub enum MicrovmError {
    /// BoxLite's runtime could not be opened on the runner's home.
    #[error("cannot open BoxLite's home {}: is another process using it? (BoxLite takes one runtime per home)", path.display())]
    Open {
        /// BoxLite's home.
        path: PathBuf,
        /// BoxLite's error.
        #[source]
        source: BoxliteError,
    },
    /// The sandbox's options cannot be a box.
    #[error("sandbox {id}: its options cannot be a box")]
    Options {
        /// The sandbox.
        id: SandboxId,
        /// What is wrong.
        #[source]
        source: OptionsError,
    },
    /// A BoxLite call failed.
    #[error("sandbox {id}: BoxLite cannot {op} its box")]
    Box {
        /// The sandbox.
        id: SandboxId,
        /// What was being done.
        op: &'static str,
        /// BoxLite's error.
        #[source]
        source: BoxliteError,
    },
    /// The box did not boot (or BoxLite could not pull its image).
    #[error("sandbox {id}: the box did not boot\n  fix: `stack doctor` boots a test box and says whether boxes boot on this host; the box's shim.stderr is under {}; or run sandboxes with runc (RUNNER_DRIVER=runc)", home.display())]
    Boot {
        /// The sandbox.
        id: SandboxId,
        /// BoxLite's home, where its logs are.
        home: PathBuf,
        /// BoxLite's error.
        #[source]
        source: BoxliteError,
    },
    /// BoxLite could not get the box's image (pull, unpack, disk): not a boot failure.
    #[error("sandbox {id}: BoxLite cannot get image `{image}` from the stack's registry ready for the box")]
    Image {
        /// The sandbox.
        id: SandboxId,
        /// The pinned reference.
        image: String,
        /// BoxLite's error.
        #[source]
        source: BoxliteError,
    },
    /// The box took longer than allowed to boot.
    #[error("sandbox {id}: the box did not boot within {}s\n  fix: `stack doctor` says whether boxes boot on this host; or run sandboxes with runc (RUNNER_DRIVER=runc)", after.as_secs())]
    BootTimeout {
        /// The sandbox.
        id: SandboxId,
        /// The time allowed.
        after: Duration,
    },
    /// A stop took longer than allowed.
    #[error("sandbox {id}: the box did not stop within {}s", after.as_secs())]
    StopTimeout {
        /// The sandbox.
        id: SandboxId,
        /// The time allowed.
        after: Duration,
    },
    /// The sandbox's record is there and its box is not: it was removed behind the runner's back.
    #[error("sandbox {id} has no box any more (removed outside the runner): delete the sandbox")]
    BoxGone {
        /// The sandbox.
        id: SandboxId,
    },
    /// An exec'd command ran past its timeout and was killed.
    #[error("the command in sandbox {id} did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The sandbox.
        id: SandboxId,
        /// The timeout.
        timeout: Duration,
    },
    /// BoxLite gave an exec no standard input to write a file through.
    #[error("sandbox {id}: BoxLite gave the file helper no standard input")]
    NoStdin {
        /// The sandbox.
        id: SandboxId,
    },
    /// A file helper in the box failed for a reason other than the path.
    #[error("sandbox {id}: the file helper for `{path}` exited with {code}: {stderr}")]
    Helper {
        /// The sandbox.
        id: SandboxId,
        /// The path in the sandbox.
        path: String,
        /// Its exit code.
        code: i32,
        /// What it said.
        stderr: String,
    },
    /// `kill` in the box failed (no such signal, or the main process is gone).
    #[error("sandbox {id}: `kill -s {signal} 1` in the box exited with {code}: {stderr}")]
    Kill {
        /// The sandbox.
        id: SandboxId,
        /// The signal asked for.
        signal: String,
        /// Its exit code.
        code: i32,
        /// What it said.
        stderr: String,
    },
    /// BoxLite's copy of a file out of the box gave no regular file.
    #[error("sandbox {id}: the copy of `{path}` out of the box gave no file")]
    CopiedNothing {
        /// The sandbox.
        id: SandboxId,
        /// The path in the sandbox.
        path: String,
    },
    /// Nothing could be reached on the port.
    #[error("sandbox {id}: cannot reach port {port} in the box")]
    Connect {
        /// The sandbox.
        id: SandboxId,
        /// The port.
        port: u16,
        /// BoxLite's error.
        #[source]
        source: BoxliteError,
    },
    /// The tunnel did not open in time.
    #[error("sandbox {id}: port {port} in the box did not answer within {after:?}")]
    ConnectTimeout {
        /// The sandbox.
        id: SandboxId,
        /// The port.
        port: u16,
        /// The time allowed.
        after: Duration,
    },
    /// The loopback stream the tunnel is relayed to could not be made.
    #[error("sandbox {id}: cannot relay port {port} to a loopback connection")]
    Relay {
        /// The sandbox.
        id: SandboxId,
        /// The port.
        port: u16,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// BoxLite could not list its boxes.
    #[error("cannot list the boxes of the runner's BoxLite home")]
    List(#[source] BoxliteError),
}

/// Runs sandboxes as BoxLite boxes on one runner home.
pub struct MicrovmDriver {
    home: Home,
    runtime: BoxliteRuntime,
    /// Resolves references in the registry (its cache dirs stay empty: BoxLite pulls).
    images: ImageStore,
    boot_timeout: Duration,
    seq: AtomicU64,
}

impl std::fmt::Debug for MicrovmDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MicrovmDriver")
            .field("home", &self.home)
            .finish_non_exhaustive()
    }
}

fn box_err(id: &SandboxId, op: &'static str) -> impl FnOnce(BoxliteError) -> DriverError {
    let id = id.clone();
    move |source| MicrovmError::Box { id, op, source }.into()
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DriverError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { op, path, source }.into()
}

/// BoxLite's home inside a runner's home.
pub fn boxlite_home(home: &Home) -> PathBuf {
    home.root().join("boxlite")
}

impl MicrovmDriver {
    /// A driver on `home`: BoxLite's runtime on `<home>/boxlite/`, pulling from the stack's
    /// registry. The process must have found BoxLite's runtime first ([`runtime::export`]).
    pub fn open(home: Home, config: MicrovmConfig) -> Result<Self, DriverError> {
        let images = ImageStore::open(home.images()).map_err(SandboxError::Images)?;
        let boxlite = boxlite_home(&home);
        for dir in [boxlite.clone(), home.sandboxes()] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        let runtime = BoxliteRuntime::new(BoxliteOptions {
            home_dir: boxlite.clone(),
            image_registries: vec![options::registry(&config.registry)],
            ..BoxliteOptions::default()
        })
        .map_err(|source| MicrovmError::Open {
            path: boxlite,
            source,
        })?;
        Ok(Self {
            home,
            runtime,
            images,
            boot_timeout: config.boot_timeout,
            seq: AtomicU64::new(0),
        })
    }

    /// The runner home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The digest `reference` names in the registry now; `NotFound` when it is not there.
    /// Nothing is downloaded: BoxLite pulls the image when the box is created.
    pub async fn resolve(&self, reference: &ImageRef) -> Result<RegistryImage, PullError> {
        let digest = self.images.resolve(reference).await?;
        Ok(RegistryImage {
            reference: reference.clone(),
            digest,
        })
    }

    /// The box named `id`, if there is one (BoxLite also matches id prefixes: only an exact
    /// name counts).
    async fn find(&self, id: &SandboxId) -> Result<Option<LiteBox>, DriverError> {
        let found = self
            .runtime
            .get(id.as_str())
            .await
            .map_err(box_err(id, "look up"))?;
        Ok(found.filter(|b| b.name() == Some(id.as_str())))
    }

    fn record(&self, id: &SandboxId) -> Option<SandboxRecord> {
        fs::read(self.home.sandbox(id).record)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    fn sandbox(&self, id: SandboxId, info: &BoxInfo) -> Sandbox {
        let status = options::status(info.status);
        let pid = if info.status.is_active() {
            info.pid.unwrap_or(0)
        } else {
            0
        };
        let record = self.record(&id);
        Sandbox {
            id,
            pid,
            status,
            record,
        }
    }

    /// The sandbox `id` as its box is now (`pid` is the box's shim), `None` if it has no box.
    pub async fn state(&self, id: &SandboxId) -> Result<Option<Sandbox>, DriverError> {
        let Some(bx) = self.find(id).await? else {
            return Ok(None);
        };
        let info = bx.info().await.map_err(box_err(id, "describe"))?;
        Ok(Some(self.sandbox(id.clone(), &info)))
    }

    /// Creates sandbox `id` from `image` and boots it; returns once it runs. On failure nothing
    /// of it is left (no box, no dir).
    pub async fn create(
        &self,
        id: &SandboxId,
        image: &RegistryImage,
        options: &CreateOptions,
    ) -> Result<Sandbox, DriverError> {
        if self.find(id).await?.is_some() {
            return Err(SandboxError::AlreadyExists { id: id.clone() }.into());
        }
        let dir = self.home.sandbox(id).dir;
        // Creating the dir claims the id: a second create of the same id fails here.
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::AlreadyExists { id: id.clone() }.into())
            }
            Err(e) => return Err(io_err("create", &dir)(e)),
        }
        match self.create_claimed(id, image, options).await {
            Ok(s) => Ok(s),
            Err(e) => {
                let _ = self.delete(id).await;
                Err(e)
            }
        }
    }

    async fn create_claimed(
        &self,
        id: &SandboxId,
        image: &RegistryImage,
        options: &CreateOptions,
    ) -> Result<Sandbox, DriverError> {
        let pinned = options::pinned_image(&image.reference, &image.digest);
        let box_options =
            options::box_options(&pinned, options).map_err(|source| MicrovmError::Options {
                id: id.clone(),
                source,
            })?;
        let record = SandboxRecord {
            image: image.reference.to_string(),
            image_digest: image.digest.clone(),
            // BoxLite keeps the image's layers in its own store.
            layers: Vec::new(),
            options: options.clone(),
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            // No slirp4netns of the runner's: the box has BoxLite's own network (gvproxy),
            // whatever the runc driver's `Outbound` setting says.
            outbound: false,
        };
        let path = self.home.sandbox(id).record;
        let json =
            serde_json::to_vec_pretty(&record).map_err(|e| io_err("serialize", &path)(e.into()))?;
        fs::write(&path, json).map_err(io_err("write", &path))?;
        let bx = self
            .runtime
            .create(box_options, Some(id.to_string()))
            .await
            .map_err(box_err(id, "create"))?;
        self.boot(id, &bx).await?;
        self.state(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound { id: id.clone() }.into())
    }

    async fn boot(&self, id: &SandboxId, bx: &LiteBox) -> Result<(), DriverError> {
        match tokio::time::timeout(self.boot_timeout, bx.start()).await {
            Ok(Ok(())) => Ok(()),
            // BoxLite pulls and prepares the image on the first start.
            Ok(Err(
                source @ (BoxliteError::Image(_)
                | BoxliteError::Storage(_)
                | BoxliteError::Network(_)),
            )) => Err(MicrovmError::Image {
                id: id.clone(),
                image: bx.info().await.map(|i| i.image).unwrap_or_default(),
                source,
            }
            .into()),
            Ok(Err(source)) => Err(MicrovmError::Boot {
                id: id.clone(),
                home: boxlite_home(&self.home),
                source,
            }
            .into()),
            Err(_) => Err(MicrovmError::BootTimeout {
                id: id.clone(),
                after: self.boot_timeout,
            }
            .into()),
        }
    }

    /// The sandbox's box, checked to be running.
    async fn running(&self, id: &SandboxId) -> Result<LiteBox, DriverError> {
        let Some(bx) = self.find(id).await? else {
            return Err(SandboxError::NotFound { id: id.clone() }.into());
        };
        let info = bx.info().await.map_err(box_err(id, "describe"))?;
        if info.status.is_running() {
            Ok(bx)
        } else {
            Err(SandboxError::NotRunning { id: id.clone() }.into())
        }
    }

    /// Runs `command` with the box's `/bin/sh -c`, capturing its output and exit code; past
    /// the timeout it is killed and the answer is [`MicrovmError::Timeout`].
    pub async fn exec(
        &self,
        id: &SandboxId,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, DriverError> {
        let bx = self.running(id).await?;
        let mut cmd = BoxCommand::new("/bin/sh").args(["-c", command]);
        for (k, v) in &options.env {
            cmd = cmd.env(k.as_str(), v.as_str());
        }
        if let Some(cwd) = &options.cwd {
            cmd = cmd.working_dir(cwd.as_str());
        }
        run(id, &bx, cmd, None, options.timeout, options.output_limit).await
    }

    /// Writes `contents` to absolute `path` in the sandbox with `mode`, parents created.
    pub async fn write_file(
        &self,
        id: &SandboxId,
        path: &str,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<(), DriverError> {
        options::check_path(path).map_err(|e| SandboxError::File(id.clone(), e))?;
        let bx = self.running(id).await?;
        let cmd = BoxCommand::new("/bin/sh").args(["-c", &options::write_script(mode), "sh", path]);
        let out = run(id, &bx, cmd, Some(contents), FILE_TIMEOUT, HELPER_OUTPUT).await?;
        helper_result(id, path, 0, &out)
    }

    /// Reads absolute `path` in the sandbox, a regular file of at most `limit` bytes.
    pub async fn read_file(
        &self,
        id: &SandboxId,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, DriverError> {
        options::check_path(path).map_err(|e| SandboxError::File(id.clone(), e))?;
        let bx = self.running(id).await?;
        let cmd =
            BoxCommand::new("/bin/sh").args(["-c", &options::read_check_script(limit), "sh", path]);
        let out = run(id, &bx, cmd, None, FILE_TIMEOUT, HELPER_OUTPUT).await?;
        helper_result(id, path, limit, &out)?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.home.sandbox(id).dir.join(format!("download-{n}"));
        fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
        let read = async {
            let dst = tmp.join("file");
            bx.copy_out(path, &dst, CopyOptions::default().follow_symlinks(true))
                .await
                .map_err(box_err(id, "copy a file out of"))?;
            // BoxLite unpacks a file either as `dst` or into it, under its own name.
            let name = Path::new(path).file_name().unwrap_or_default();
            let file = [dst.clone(), dst.join(name)]
                .into_iter()
                .find(|p| p.is_file())
                .ok_or_else(|| MicrovmError::CopiedNothing {
                    id: id.clone(),
                    path: path.to_string(),
                })?;
            let bytes = fs::read(&file).map_err(io_err("read", &file))?;
            if bytes.len() as u64 > limit {
                return Err(SandboxError::File(
                    id.clone(),
                    crate::files::FileError::TooLarge {
                        path: path.to_string(),
                        limit,
                    },
                )
                .into());
            }
            Ok(bytes)
        };
        let bytes = read.await;
        let _ = fs::remove_dir_all(&tmp);
        bytes
    }

    /// A TCP connection to `port` on the box's address, relayed from a tunnel through BoxLite's
    /// network to a loopback stream.
    pub async fn connect(
        &self,
        id: &SandboxId,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, DriverError> {
        let bx = self.running(id).await?;
        let target = SocketAddr::from((GUEST_IP, port));
        let open = async { bx.network().tunnel(target).await?.connect().await };
        let conn = match tokio::time::timeout(timeout, open).await {
            Ok(Ok(c)) => c,
            Ok(Err(source)) => {
                return Err(MicrovmError::Connect {
                    id: id.clone(),
                    port,
                    source,
                }
                .into())
            }
            Err(_) => {
                return Err(MicrovmError::ConnectTimeout {
                    id: id.clone(),
                    port,
                    after: timeout,
                }
                .into())
            }
        };
        relay(conn).await.map_err(|source| {
            MicrovmError::Relay {
                id: id.clone(),
                port,
                source,
            }
            .into()
        })
    }

    /// Sends `signal` (e.g. `TERM`, `KILL`) to the box's main process.
    pub async fn kill(&self, id: &SandboxId, signal: &str) -> Result<(), DriverError> {
        let bx = self.running(id).await?;
        let cmd = BoxCommand::new("/bin/sh").args(["-c", "kill -s \"$1\" 1", "sh", signal]);
        let out = run(id, &bx, cmd, None, FILE_TIMEOUT, HELPER_OUTPUT).await?;
        if out.exit_code == 0 {
            Ok(())
        } else {
            Err(MicrovmError::Kill {
                id: id.clone(),
                signal: signal.to_string(),
                code: out.exit_code,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }
            .into())
        }
    }

    /// Stops the box and keeps it (its disk is the sandbox's files): [`MicrovmDriver::start`]
    /// boots it again. Idempotent. The whole VM shuts down, bounded by `grace` and a margin.
    pub async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), DriverError> {
        if !self.home.sandbox(id).record.is_file() {
            return Err(SandboxError::NotFound { id: id.clone() }.into());
        }
        let Some(bx) = self.find(id).await? else {
            return Ok(());
        };
        let info = bx.info().await.map_err(box_err(id, "describe"))?;
        if !info.status.is_active() {
            return Ok(());
        }
        let bound = grace + STOP_MARGIN;
        match tokio::time::timeout(bound, bx.stop()).await {
            Ok(r) => r.map_err(box_err(id, "stop")),
            Err(_) => Err(MicrovmError::StopTimeout {
                id: id.clone(),
                after: bound,
            }
            .into()),
        }
    }

    /// Boots a stopped sandbox's box again, with its own disk as it was. Starting a running
    /// sandbox returns it as it is.
    pub async fn start(&self, id: &SandboxId) -> Result<Sandbox, DriverError> {
        if !self.home.sandbox(id).record.is_file() {
            return Err(SandboxError::NotFound { id: id.clone() }.into());
        }
        let Some(bx) = self.find(id).await? else {
            return Err(MicrovmError::BoxGone { id: id.clone() }.into());
        };
        let info = bx.info().await.map_err(box_err(id, "describe"))?;
        if !info.status.is_running() {
            self.boot(id, &bx).await?;
        }
        self.state(id)
            .await?
            .ok_or_else(|| SandboxError::NotFound { id: id.clone() }.into())
    }

    /// Removes the sandbox: its box (killed if running, its disks with it) and its dir.
    /// Idempotent.
    pub async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        if let Some(bx) = self.find(id).await? {
            self.runtime
                .remove(bx.id().as_str(), true)
                .await
                .map_err(box_err(id, "remove"))?;
        }
        let dir = self.home.sandbox(id).dir;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &dir)(e)),
        }
    }

    /// What a previous runner on this home left: running boxes to take back as they are,
    /// stopped ones to start again, and leftovers (a box without a sandbox dir, or a dir
    /// without a box: a create or delete cut short) to delete.
    pub async fn adopt(&self) -> Result<Adoption, DriverError> {
        let boxes = self.runtime.list_info().await.map_err(MicrovmError::List)?;
        let mut adoption = Adoption::default();
        let mut seen = HashSet::new();
        for info in boxes {
            let Some(id) = info.name.as_deref().and_then(|n| SandboxId::parse(n).ok()) else {
                continue;
            };
            seen.insert(id.clone());
            if !self.home.sandbox(&id).record.is_file() {
                adoption.stale.push(id);
            } else if info.status.is_active() {
                adoption.sandboxes.push(self.sandbox(id, &info));
            } else {
                adoption.stopped.push(id);
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
            if !seen.contains(&id) {
                adoption.stale.push(id);
            }
        }
        Ok(adoption)
    }
}

/// Runs `cmd` in the box: `stdin` written and closed (or closed at once), stdout and stderr
/// kept up to `limit` bytes each, killed past `timeout`.
async fn run(
    id: &SandboxId,
    bx: &LiteBox,
    cmd: BoxCommand,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    limit: usize,
) -> Result<ExecOutput, DriverError> {
    let mut ex = bx
        .exec(cmd)
        .await
        .map_err(box_err(id, "run a command in"))?;
    match (ex.stdin(), stdin) {
        (Some(mut s), Some(bytes)) => {
            s.write_all(&bytes)
                .await
                .map_err(box_err(id, "write to a command in"))?;
            s.close();
        }
        (Some(mut s), None) => s.close(),
        (None, Some(_)) => return Err(MicrovmError::NoStdin { id: id.clone() }.into()),
        (None, None) => {}
    }
    let (out, err) = (ex.stdout(), ex.stderr());
    let work = async { tokio::join!(collect(out, limit), collect(err, limit), ex.wait()) };
    match tokio::time::timeout(timeout, work).await {
        Ok(((stdout, cut_out), (stderr, cut_err), Ok(result))) => Ok(ExecOutput {
            exit_code: options::exit_code(result.exit_code),
            stdout,
            stderr,
            truncated: cut_out || cut_err,
        }),
        Ok((_, _, Err(source))) => Err(box_err(id, "wait for a command in")(source)),
        Err(_) => {
            let _ = ex.kill().await;
            Err(MicrovmError::Timeout {
                id: id.clone(),
                timeout,
            }
            .into())
        }
    }
}

/// Reads a stream to its end, keeping the first `limit` bytes; `true` when more came.
async fn collect<S: Stream<Item = String> + Unpin>(s: Option<S>, limit: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut cut = false;
    if let Some(mut s) = s {
        while let Some(chunk) = s.next().await {
            let room = limit.saturating_sub(kept.len());
            let bytes = chunk.as_bytes();
            kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
            cut |= bytes.len() > room;
        }
    }
    (kept, cut)
}

/// A file helper's answer: exit 0 is done, a known exit code the [`FileError`] it stands for.
///
/// [`FileError`]: crate::files::FileError
fn helper_result(
    id: &SandboxId,
    path: &str,
    limit: u64,
    out: &ExecOutput,
) -> Result<(), DriverError> {
    if out.exit_code == 0 {
        return Ok(());
    }
    if let Some(e) = options::file_error(out.exit_code, path, limit) {
        return Err(SandboxError::File(id.clone(), e).into());
    }
    Err(MicrovmError::Helper {
        id: id.clone(),
        path: path.to_string(),
        code: out.exit_code,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
    .into())
}

/// Relays a tunnel to a loopback TCP stream, returning the runner's end: the runner forwards
/// requests over a `TcpStream`, as it does for a runc sandbox's namespaced connection.
async fn relay<S>(conn: S) -> std::io::Result<TcpStream>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let ours = TcpStream::connect(listener.local_addr()?).await?;
    let me = ours.local_addr()?;
    // Only our own connection is relayed: another local process's would be dropped here.
    let theirs = loop {
        let (s, peer) = listener.accept().await?;
        if peer == me {
            break s;
        }
    };
    drop(listener);
    tokio::spawn(async move {
        let (mut theirs, mut conn) = (theirs, conn);
        let _ = tokio::io::copy_bidirectional(&mut theirs, &mut conn).await;
    });
    Ok(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_guest_address_is_boxlites() {
        assert_eq!(GUEST_IP.to_string(), boxlite::net::constants::GUEST_IP);
    }

    #[tokio::test]
    async fn collect_keeps_the_first_bytes_and_says_when_it_cut() {
        let chunks = futures::stream::iter(vec!["héllo ".to_string(), "world".to_string()]);
        let (kept, cut) = collect(Some(chunks), 4).await;
        assert_eq!((kept.as_slice(), cut), ("hél".as_bytes(), true));
        let chunks = futures::stream::iter(vec!["ab".to_string(), "c".to_string()]);
        assert_eq!(collect(Some(chunks), 3).await, (b"abc".to_vec(), false));
        let none: Option<futures::stream::Iter<std::vec::IntoIter<String>>> = None;
        assert_eq!(collect(none, 3).await, (Vec::new(), false));
    }

    /// A stream relayed as the runner's `TcpStream` carries bytes both ways, and its end
    /// closes the other.
    #[tokio::test]
    async fn a_relayed_stream_carries_bytes_both_ways() {
        // A Unix socket pair stands in for the tunnel's connection (BoxLite makes one from a
        // descriptor the same way); only the relay is under test.
        let (a, b) = tokio::net::UnixStream::pair().expect("pair");
        let echo = tokio::spawn(async move {
            let mut b = b;
            let mut buf = [0u8; 5];
            b.read_exact(&mut buf).await.expect("read");
            b.write_all(&buf).await.expect("write");
        });
        let mut ours = relay(a).await.expect("relay");
        ours.write_all(b"hello").await.expect("send");
        let mut back = [0u8; 5];
        ours.read_exact(&mut back).await.expect("receive");
        assert_eq!(&back, b"hello");
        echo.await.expect("echo");
        let mut rest = Vec::new();
        ours.read_to_end(&mut rest).await.expect("eof");
        assert!(rest.is_empty());
    }
}
