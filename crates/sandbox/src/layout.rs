//! Every path of a runner's home, in one type: the image cache, runc's state dir and each
//! sandbox's own dir. Nothing this crate writes lives outside the home.

use std::path::{Path, PathBuf};

use crate::id::SandboxId;

/// The name of a restore's staging dir, before the id.
const RESTORE_PREFIX: &str = ".restore-";

/// A runner's home directory and the paths under it:
///
/// ```text
/// <home>/images/                 the image cache (ImageStore)
/// <home>/runc/                   runc's --root: one state dir per running container
/// <home>/holder.json, .lock, .log  a runner that is not root: its namespace holder (crate::userns)
/// <home>/sandboxes/.restore-<id>/  a restore being staged (never a sandbox: ids have no `.`)
/// <home>/sandboxes/<id>/
///     sandbox.json               what the sandbox was created from
///     upper/ work/               its overlayfs writable layer and work dir
///     bundle/config.json         the OCI runtime config
///     bundle/rootfs/             the overlay's mount point
///     init.log                   the init process's stdout and stderr
///     stopped                    present while the sandbox is stopped (kept, not running)
///     slirp.json, slirp.log      outbound access on: its slirp4netns's pid and start time, log
///     resolv.conf                outbound access on: bind-mounted on its /etc/resolv.conf
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

    /// Where a restore of sandbox `id` is staged before it is renamed into place: a name no
    /// sandbox id can take, so nothing lists it as a sandbox.
    pub fn restore_staging(&self, id: &SandboxId) -> PathBuf {
        self.sandboxes().join(format!("{RESTORE_PREFIX}{id}"))
    }

    /// Removes the staging dir of a restore of `id` (directories without write permission
    /// included); missing: not an error.
    pub fn remove_staging(&self, id: &SandboxId) -> std::io::Result<()> {
        remove_all(&self.restore_staging(id))
    }

    /// Removes what restores cut short (a runner killed midway) left staged; returns their
    /// names.
    pub fn clear_staging(&self) -> std::io::Result<Vec<String>> {
        let mut cleared = Vec::new();
        let dir = match std::fs::read_dir(self.sandboxes()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(cleared),
            Err(e) => return Err(e),
        };
        for entry in dir {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with(RESTORE_PREFIX) {
                remove_all(&self.sandboxes().join(&name))?;
                cleared.push(name);
            }
        }
        Ok(cleared)
    }

    /// The paths of sandbox `id`.
    pub fn sandbox(&self, id: &SandboxId) -> SandboxPaths {
        let dir = self.sandboxes().join(id.as_str());
        let bundle = dir.join("bundle");
        SandboxPaths {
            record: dir.join("sandbox.json"),
            upper: dir.join("upper"),
            work: dir.join("work"),
            config: bundle.join("config.json"),
            rootfs: bundle.join("rootfs"),
            init_log: dir.join("init.log"),
            stopped: dir.join("stopped"),
            bundle,
            dir,
        }
    }
}

/// The paths of one sandbox under a [`Home`].
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    /// The sandbox's dir: removing it removes every file of the sandbox.
    pub dir: PathBuf,
    /// `sandbox.json`: what the sandbox was created from.
    pub record: PathBuf,
    /// The overlay's upper dir: the sandbox's whole diff against its image.
    pub upper: PathBuf,
    /// The overlay's work dir (same filesystem as `upper`, as overlayfs requires).
    pub work: PathBuf,
    /// The OCI bundle runc is given.
    pub bundle: PathBuf,
    /// The bundle's `config.json`.
    pub config: PathBuf,
    /// The root filesystem as the host sees it (the overlay's mount point).
    pub rootfs: PathBuf,
    /// The init's stdout and stderr.
    pub init_log: PathBuf,
    /// A marker present while the sandbox is stopped: its dir is kept on purpose, not a leftover.
    pub stopped: PathBuf,
}

/// Removes `path` and everything under it, like `fs::remove_dir_all`; a directory the owner may
/// not list or write (an overlay's `work/work` is mode 0, an image may hold 0555 dirs) is made
/// owner-accessible first, which root never needs but a runner that is not root does. Symlinks
/// are removed, never followed. Missing: not an error.
pub(crate) fn remove_all(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            open_up(path)?;
            std::fs::remove_dir_all(path)
        }
        Err(e) => Err(e),
    }
}

/// Gives the owner rwx on every directory under `path` (itself included), not following links.
fn open_up(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mode = meta.permissions().mode();
    if mode & 0o700 != 0o700 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700))?;
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            open_up(&entry.path())?;
        }
    }
    Ok(())
}
