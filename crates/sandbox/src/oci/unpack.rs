//! Unpacks one layer's tar stream into its own directory, ready to be an overlayfs lower dir.
//!
//! Whiteouts are converted to overlayfs's own format here, once per layer, rather than kept as a
//! list applied at mount time: a whiteout in layer N must hide files of layers below N but not a
//! file re-added by layer N+1, which only overlayfs itself can express (a whiteout in a sandbox's
//! upper dir would hide the upper layers' files too). So `.wh.<name>` becomes a character device
//! 0/0 named `<name>`, and `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its directory.
//! As root the opaque xattr is `trusted.overlay.opaque`. A runner that is not root (see
//! [`crate::userns`]) unpacks as `umoci --rootless` does: `user.overlay.opaque` instead (its
//! overlays are mounted with `userxattr`); whiteouts as they are (a 0/0 character device needs no
//! privilege since Linux 5.8); no ownership (every file is the runner's, root in the sandbox);
//! other device nodes skipped; every directory owner-writable, so that the cache and the
//! sandboxes' dirs can be removed later.
//!
//! Every entry is checked before it is written: no absolute path, no `..`, never written through
//! a symlink (each ancestor must be a real directory of this layer), hard links only to paths
//! inside the layer. Symlinks themselves may point anywhere: they are resolved inside the
//! sandbox's root, never by this code.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, HashingReader};

/// Why a layer could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry whose path is absolute or climbs out with `..`.
    #[error("entry `{entry}` leaves the layer's root")]
    Escape {
        /// The entry's path as written in the tar.
        entry: String,
    },
    /// An entry that would be written through a symlink (which may point anywhere).
    #[error("entry `{entry}` would be written through the symlink `{link}`")]
    ThroughSymlink {
        /// The entry's path.
        entry: String,
        /// The symlink on its way.
        link: PathBuf,
    },
    /// A hard link whose target is outside the layer.
    #[error("hard link `{entry}` points outside the layer, to `{target}`")]
    LinkEscape {
        /// The link's path.
        entry: String,
        /// Its target as written in the tar.
        target: String,
    },
    /// The tar stream could not be read (truncated, corrupt, bad gzip).
    #[error("the layer's tar stream cannot be read")]
    Read(#[source] io::Error),
    /// Writing an entry to disk failed.
    #[error("cannot write {path}")]
    Write {
        /// The file being written.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The uncompressed stream does not hash to the diff id the image config lists.
    #[error("the uncompressed layer hashes to {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The config's `rootfs.diff_ids` entry.
        expected: Digest,
        /// What the stream hashed to.
        actual: Digest,
    },
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT_PREFIX: &str = ".wh.";

/// Unpacks the tar stream `reader` (already decompressed) into the empty directory `dest` and
/// checks it against `diff_id`.
pub(crate) fn unpack(reader: impl Read, dest: &Path, diff_id: &Digest) -> Result<(), UnpackError> {
    let root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(root);
    archive.set_unpack_xattrs(root);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(UnpackError::Read)? {
        let entry = entry.map_err(UnpackError::Read)?;
        unpack_entry(entry, dest, root)?;
    }
    let actual = archive.into_inner().finish().map_err(UnpackError::Read)?;
    if &actual != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

/// A directory's mode as unpacked: as it is for root, owner-writable otherwise.
fn dir_mode(mode: u32, root: bool) -> u32 {
    if root {
        mode & 0o7777
    } else {
        (mode & 0o7777) | 0o700
    }
}

fn unpack_entry<R: Read>(
    mut entry: tar::Entry<'_, R>,
    dest: &Path,
    root: bool,
) -> Result<(), UnpackError> {
    let raw = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw).into_owned();
    let rel = relative(&raw).ok_or_else(|| UnpackError::Escape {
        entry: shown.clone(),
    })?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UnpackError::Write { path, source }
    };
    let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
        // The layer's own root (`./`): only its mode matters.
        if entry.header().entry_type().is_dir() {
            let mode = entry.header().mode().map_err(UnpackError::Read)?;
            fs::set_permissions(dest, fs::Permissions::from_mode(dir_mode(mode, root)))
                .map_err(write_err(dest))?;
        }
        return Ok(());
    };
    let parent = real_dirs(dest, rel.parent().unwrap_or(Path::new("")), &shown)?;
    let name_bytes = name.as_bytes();
    if name_bytes == OPAQUE.as_bytes() {
        return set_opaque(&parent, root).map_err(write_err(&parent));
    }
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        let path = parent.join(OsStr::from_bytes(hidden));
        remove_existing(&path).map_err(write_err(&path))?;
        return nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .map_err(|e| UnpackError::Write {
            path,
            source: e.into(),
        });
    }
    let path = parent.join(&name);
    let kind = entry.header().entry_type();
    if !root && (kind.is_character_special() || kind.is_block_special()) {
        // Only root may make device nodes; runc gives the sandbox its /dev anyway.
        return Ok(());
    }
    if kind.is_hard_link() {
        let target_raw = entry
            .link_name_bytes()
            .map(|c| c.into_owned())
            .unwrap_or_default();
        let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
        let escape = || UnpackError::LinkEscape {
            entry: shown.clone(),
            target: target_shown.clone(),
        };
        let target_rel = relative(&target_raw)
            .filter(|t| t.file_name().is_some())
            .ok_or_else(escape)?;
        let target_parent = real_dirs(dest, target_rel.parent().unwrap_or(Path::new("")), &shown)?;
        let target = target_parent.join(target_rel.file_name().ok_or_else(escape)?);
        remove_existing(&path).map_err(write_err(&path))?;
        return fs::hard_link(&target, &path).map_err(write_err(&path));
    }
    match fs::symlink_metadata(&path) {
        // A directory entry over an existing directory keeps its contents.
        Ok(meta) if meta.is_dir() && kind.is_dir() => {}
        Ok(_) => remove_existing(&path).map_err(write_err(&path))?,
        Err(_) => {}
    }
    entry.unpack(&path).map_err(write_err(&path))?;
    if kind.is_dir() && !root {
        let mode = entry.header().mode().map_err(UnpackError::Read)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(dir_mode(mode, root)))
            .map_err(write_err(&path))?;
    }
    Ok(())
}

/// The entry path as a relative path of normal components, or `None` when it is absolute or
/// has `..` (`./` components are dropped: most tars start every name with one).
fn relative(raw: &[u8]) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Makes sure every component of `rel` under `dest` is a real directory (creating missing ones,
/// as tars may omit them) and returns the full path: a symlink on the way is refused.
fn real_dirs(dest: &Path, rel: &Path, entry: &str) -> Result<PathBuf, UnpackError> {
    let mut dir = dest.to_path_buf();
    for c in rel.components() {
        dir.push(c);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    entry: entry.into(),
                    link: dir,
                })
            }
            Ok(_) => {
                let source = io::Error::new(io::ErrorKind::AlreadyExists, "not a directory");
                return Err(UnpackError::Write { path: dir, source });
            }
            Err(_) => fs::create_dir(&dir).map_err(|source| UnpackError::Write {
                path: dir.clone(),
                source,
            })?,
        }
    }
    Ok(dir)
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => crate::layout::remove_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn set_opaque(dir: &Path, root: bool) -> io::Result<()> {
    if root {
        xattr::set(dir, "trusted.overlay.opaque", b"y")
    } else {
        xattr::set(dir, "user.overlay.opaque", b"y")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_drops_dots_and_refuses_escapes() {
        assert_eq!(relative(b"./a/./b"), Some(PathBuf::from("a/b")));
        assert_eq!(relative(b"./"), Some(PathBuf::new()));
        assert_eq!(relative(b"/etc/passwd"), None);
        assert_eq!(relative(b"a/../../b"), None);
    }
}
