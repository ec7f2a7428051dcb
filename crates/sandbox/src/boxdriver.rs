//! The box driver a runner runs its sandboxes through: runc ([`Driver`]) or, with the cargo
//! feature `microvm`, BoxLite ([`MicrovmDriver`](crate::microvm::MicrovmDriver)). One enum
//! dispatching each call to the driver chosen when the runner started; both answer with the
//! same types and the same [`SandboxError`]s for the same failures (a missing or stopped
//! sandbox, a refused path), and with errors of their own for what only they can do wrong.

use std::time::Duration;

use crate::digest::Digest;
use crate::driver::{Adoption, CreateOptions, Driver, Sandbox, SandboxError};
use crate::id::SandboxId;
use crate::layout::Home;
use crate::oci::{Image, ImageRef, PullError};
use crate::runc::{ExecOptions, ExecOutput, RuncError};

#[cfg(feature = "microvm")]
use crate::microvm::{MicrovmDriver, MicrovmError, RegistryImage};

/// Why a box driver call failed.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The runc driver's errors, and the ones both drivers share.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// What only BoxLite does wrong.
    #[cfg(feature = "microvm")]
    #[error(transparent)]
    Microvm(#[from] MicrovmError),
    /// An image prepared by one driver given to the other (a runner bug, not an input's).
    #[cfg(feature = "microvm")]
    #[error("sandbox {id}: the image was prepared for another box driver than {driver}")]
    ForeignImage {
        /// The sandbox.
        id: SandboxId,
        /// The driver it was given to.
        driver: &'static str,
    },
}

impl DriverError {
    /// The message of an exec that ran past its timeout and was killed, if this is one (the
    /// runner answers it as `timeout(1)` does).
    pub fn timed_out(&self) -> Option<String> {
        match self {
            Self::Sandbox(SandboxError::Runc(_, e @ RuncError::Timeout { .. })) => {
                Some(e.to_string())
            }
            #[cfg(feature = "microvm")]
            Self::Microvm(e @ MicrovmError::Timeout { .. }) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// An image ready for [`BoxDriver::create`].
#[derive(Debug, Clone)]
pub enum SandboxImage {
    /// Pulled and unpacked into the runner's image cache (runc).
    Unpacked(Image),
    /// Resolved in the registry, pulled by BoxLite when the box is created.
    #[cfg(feature = "microvm")]
    Registry(RegistryImage),
}

impl SandboxImage {
    /// The digest the reference resolved to.
    pub fn digest(&self) -> &Digest {
        match self {
            Self::Unpacked(i) => &i.digest,
            #[cfg(feature = "microvm")]
            Self::Registry(r) => &r.digest,
        }
    }
}

/// A runner's box driver.
#[derive(Debug)]
pub enum BoxDriver {
    /// Sandboxes are runc containers.
    Runc(Driver),
    /// Sandboxes are BoxLite microVMs.
    #[cfg(feature = "microvm")]
    Microvm(MicrovmDriver),
}

impl BoxDriver {
    /// `runc` or `microvm`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Runc(_) => "runc",
            #[cfg(feature = "microvm")]
            Self::Microvm(_) => "microvm",
        }
    }

    /// The runner home.
    pub fn home(&self) -> &Home {
        match self {
            Self::Runc(d) => d.home(),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.home(),
        }
    }

    /// The runc driver, for what only it does (export and import of a sandbox's disk); a clear
    /// "not supported yet" for BoxLite boxes.
    #[cfg_attr(not(feature = "microvm"), allow(unused_variables))]
    pub fn runc(&self, what: &'static str) -> Result<&Driver, DriverError> {
        match self {
            Self::Runc(d) => Ok(d),
            #[cfg(feature = "microvm")]
            Self::Microvm(_) => Err(SandboxError::Unsupported {
                what,
                driver: "microVM",
            }
            .into()),
        }
    }

    /// Gets `reference` ready to create sandboxes from: runc pulls and unpacks it into the
    /// image cache, BoxLite only resolves it (it pulls on create). An image that is not in the
    /// registry is `PullError::NotFound` either way.
    pub async fn pull(&self, reference: &ImageRef) -> Result<SandboxImage, PullError> {
        match self {
            Self::Runc(d) => Ok(SandboxImage::Unpacked(
                d.images().pull(reference).await?.image,
            )),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => Ok(SandboxImage::Registry(d.resolve(reference).await?)),
        }
    }

    /// Creates and starts sandbox `id`; on failure nothing of it is left.
    pub async fn create(
        &self,
        id: &SandboxId,
        image: &SandboxImage,
        options: &CreateOptions,
    ) -> Result<Sandbox, DriverError> {
        match (self, image) {
            (Self::Runc(d), SandboxImage::Unpacked(i)) => Ok(d.create(id, i, options).await?),
            #[cfg(feature = "microvm")]
            (Self::Microvm(d), SandboxImage::Registry(i)) => d.create(id, i, options).await,
            #[cfg(feature = "microvm")]
            (d, _) => Err(DriverError::ForeignImage {
                id: id.clone(),
                driver: d.kind(),
            }),
        }
    }

    /// The sandbox as it is now, `None` if there is no such sandbox.
    pub async fn state(&self, id: &SandboxId) -> Result<Option<Sandbox>, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.state(id).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.state(id).await,
        }
    }

    /// Runs `command` with the sandbox's `/bin/sh -c`.
    pub async fn exec(
        &self,
        id: &SandboxId,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.exec(id, command, options).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.exec(id, command, options).await,
        }
    }

    /// Writes a file at absolute `path` in the sandbox.
    pub async fn write_file(
        &self,
        id: &SandboxId,
        path: &str,
        contents: Vec<u8>,
        mode: u32,
    ) -> Result<(), DriverError> {
        match self {
            Self::Runc(d) => Ok(d.write_file(id, path, contents, mode).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.write_file(id, path, contents, mode).await,
        }
    }

    /// Reads the regular file at absolute `path` in the sandbox, up to `limit` bytes.
    pub async fn read_file(
        &self,
        id: &SandboxId,
        path: &str,
        limit: u64,
    ) -> Result<Vec<u8>, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.read_file(id, path, limit).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.read_file(id, path, limit).await,
        }
    }

    /// A TCP connection to one of the sandbox's ports.
    pub async fn connect(
        &self,
        id: &SandboxId,
        port: u16,
        timeout: Duration,
    ) -> Result<tokio::net::TcpStream, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.connect(id, port, timeout).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.connect(id, port, timeout).await,
        }
    }

    /// Sends `signal` to the sandbox's init.
    pub async fn kill(&self, id: &SandboxId, signal: &str) -> Result<(), DriverError> {
        match self {
            Self::Runc(d) => Ok(d.kill(id, signal).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.kill(id, signal).await,
        }
    }

    /// Stops the sandbox, keeping its files.
    pub async fn stop(&self, id: &SandboxId, grace: Duration) -> Result<(), DriverError> {
        match self {
            Self::Runc(d) => Ok(d.stop(id, grace).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.stop(id, grace).await,
        }
    }

    /// Runs a stopped sandbox again.
    pub async fn start(&self, id: &SandboxId) -> Result<Sandbox, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.start(id).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.start(id).await,
        }
    }

    /// Removes the sandbox and everything of it.
    pub async fn delete(&self, id: &SandboxId) -> Result<(), DriverError> {
        match self {
            Self::Runc(d) => Ok(d.delete(id).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.delete(id).await,
        }
    }

    /// What a previous driver on this home left: sandboxes to take back, leftovers to clean.
    pub async fn adopt(&self) -> Result<Adoption, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.adopt().await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(d) => d.adopt().await,
        }
    }

    /// Gives an adopted running sandbox back the outbound network its record asks for (runc:
    /// restarts its slirp4netns if it is gone, ends it if outbound is now off); `true` when the
    /// sandbox has outbound access. BoxLite boxes have BoxLite's own network, which a restart of
    /// the runner does not take from them: for them it does nothing and answers `false` (there
    /// is no slirp4netns of the runner's to take back).
    pub async fn reconnect(&self, id: &SandboxId) -> Result<bool, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.reconnect(id).await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(_) => Ok(false),
        }
    }

    /// The pid of the user namespace holder of a runc driver that is not root; `None` as root
    /// and for BoxLite (its boxes need no holder).
    pub fn holder_pid(&self) -> Option<i32> {
        match self {
            Self::Runc(d) => d.holder_pid(),
            #[cfg(feature = "microvm")]
            Self::Microvm(_) => None,
        }
    }

    /// Ends the user namespace holder of a runc driver that is not root when no sandbox runs in
    /// it; `true` when it was ended. BoxLite has nothing to end: `false`.
    pub async fn release(&self) -> Result<bool, DriverError> {
        match self {
            Self::Runc(d) => Ok(d.release().await?),
            #[cfg(feature = "microvm")]
            Self::Microvm(_) => Ok(false),
        }
    }
}
