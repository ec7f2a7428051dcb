//! Every path of a runner's home, in one type: the image cache, runc's state dir and each
//! sandbox's own dir. Nothing this crate writes lives outside the home.

use std::path::{Path, PathBuf};

use crate::id::SandboxId;

/// A runner's home directory and the paths under it:
///
/// ```text
/// <home>/images/                 the image cache (ImageStore)
/// <home>/runc/                   runc's --root: one state dir per running container
/// <home>/sandboxes/<id>/
///     sandbox.json               what the sandbox was created from
///     upper/ work/               its overlayfs writable layer and work dir
///     bundle/config.json         the OCI runtime config
///     bundle/rootfs/             the overlay's mount point
///     init.log                   the init process's stdout and stderr
/// ```
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// A home rooted at `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The home itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The image cache.
    pub fn images(&self) -> PathBuf {
        self.root.join("images")
    }

    /// runc's state directory (`runc --root`).
    pub fn runc_root(&self) -> PathBuf {
        self.root.join("runc")
    }

    /// All sandboxes' dirs.
    pub fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// One sandbox's dir.
    pub fn sandbox(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes().join(id.as_str())
    }

    /// The sandbox's record.
    pub fn record(&self, id: &SandboxId) -> PathBuf {
        self.sandbox(id).join("sandbox.json")
    }

    /// The sandbox's overlay upper dir: its whole diff against the image.
    pub fn upper(&self, id: &SandboxId) -> PathBuf {
        self.sandbox(id).join("upper")
    }

    /// The sandbox's overlay work dir.
    pub fn work(&self, id: &SandboxId) -> PathBuf {
        self.sandbox(id).join("work")
    }

    /// The sandbox's OCI bundle.
    pub fn bundle(&self, id: &SandboxId) -> PathBuf {
        self.sandbox(id).join("bundle")
    }

    /// The sandbox's root filesystem as the host sees it (the overlay's mount point).
    pub fn rootfs(&self, id: &SandboxId) -> PathBuf {
        self.bundle(id).join("rootfs")
    }

    /// The init process's log.
    pub fn init_log(&self, id: &SandboxId) -> PathBuf {
        self.sandbox(id).join("init.log")
    }
}
