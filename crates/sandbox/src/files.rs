//! Files inside a sandbox's root, reached from the host: every path is resolved by the kernel
//! inside the root (`openat2` with `RESOLVE_IN_ROOT`), so `..` and symlinks, absolute or not, can
//! never lead out of it; a path with `..` is refused outright, and only regular files are opened
//! (a device node in an image must not give the host's files API a way to the host's devices).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

/// Why a file operation in a sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The path is not absolute.
    #[error("`{0}` is not an absolute path")]
    NotAbsolute(String),
    /// The path has a `..` component.
    #[error("`{0}` leaves the sandbox's root: `..` is not allowed")]
    Escape(String),
    /// Nothing at that path (or a parent is missing, for a read).
    #[error("`{0}` does not exist in the sandbox")]
    NotFound(String),
    /// Something at that path that is not a regular file (a dir, a device, a socket).
    #[error("`{0}` is not a regular file")]
    NotAFile(String),
    /// A read of a file larger than the caller's limit.
    #[error("`{path}` is larger than {limit} bytes")]
    TooLarge {
        /// The path in the sandbox.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// The OS refused.
    #[error("cannot {op} `{path}` in the sandbox")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path in the sandbox.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The path's components below the root, refusing relative paths and `..`.
fn components(path: &str) -> Result<Vec<&std::ffi::OsStr>, FileError> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(FileError::NotAbsolute(path.into()));
    }
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(FileError::Escape(path.into()))
            }
        }
    }
    Ok(out)
}

fn open_in_root(root: &OwnedFd, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    // An empty relative path means the root itself.
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let fd = nix::fcntl::openat2(root.as_raw_fd(), rel, how)?;
    // SAFETY: openat2 returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    open_in_root(root, rel, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
}

impl FileError {
    fn io<'a, E: Into<std::io::Error>>(
        op: &'static str,
        path: &'a str,
    ) -> impl FnOnce(E) -> Self + 'a {
        move |e| Self::Io {
            op,
            path: path.into(),
            source: e.into(),
        }
    }
}

fn open_root(root: &Path, path: &str) -> Result<OwnedFd, FileError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(root)
        .map_err(FileError::io("open the root of", path))?;
    Ok(dir.into())
}

/// Reopens an `O_PATH` descriptor of a regular file for I/O, after checking its type: opening a
/// device or FIFO could have effects (or block), an `O_PATH` open and `fstat` cannot.
fn reopen_regular(fd: &OwnedFd, options: &OpenOptions, path: &str) -> Result<File, FileError> {
    let stat = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(FileError::io("stat", path))?;
    if SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        return Err(FileError::NotAFile(path.into()));
    }
    options
        .open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(FileError::io("open", path))
}

/// Reads the regular file at absolute `path` inside `root`, up to `limit` bytes.
pub fn read(root: &Path, path: &str, limit: u64) -> Result<Vec<u8>, FileError> {
    let rel: PathBuf = components(path)?.into_iter().collect();
    let root_fd = open_root(root, path)?;
    let fd = open_in_root(&root_fd, &rel, OFlag::O_PATH, Mode::empty()).map_err(|e| match e {
        Errno::ENOENT | Errno::ENOTDIR => FileError::NotFound(path.into()),
        e => FileError::io("open", path)(e),
    })?;
    let file = reopen_regular(&fd, OpenOptions::new().read(true), path)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(FileError::io("read", path))?;
    if bytes.len() as u64 > limit {
        return Err(FileError::TooLarge {
            path: path.into(),
            limit,
        });
    }
    Ok(bytes)
}

/// Writes `contents` to absolute `path` inside `root` (replacing a regular file, creating it
/// with `mode` and any missing parent directories otherwise).
pub fn write(root: &Path, path: &str, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let parts = components(path)?;
    let Some((name, parents)) = parts.split_last() else {
        return Err(FileError::NotAFile(path.into()));
    };
    let root_fd = open_root(root, path)?;

    // Parents, one at a time so that each is created inside what the kernel resolved so far.
    let mut dir = PathBuf::new();
    for part in parents {
        dir.push(part);
        match open_dir(&root_fd, &dir) {
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = dir.parent().unwrap_or(Path::new(""));
                let parent_fd =
                    open_dir(&root_fd, parent).map_err(FileError::io("open a parent of", path))?;
                match nix::sys::stat::mkdirat(
                    Some(parent_fd.as_raw_fd()),
                    *part,
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(FileError::io("create a parent of", path)(e)),
                }
            }
            Err(Errno::ENOTDIR) => return Err(FileError::NotAFile(path.into())),
            Err(e) => return Err(FileError::io("open a parent of", path)(e)),
        }
    }
    let rel = dir.join(name);
    let mut file = match open_in_root(&root_fd, &rel, OFlag::O_PATH, Mode::empty()) {
        Ok(fd) => reopen_regular(&fd, OpenOptions::new().write(true).truncate(true), path)?,
        Err(Errno::ENOENT) => {
            // O_EXCL: a new regular file, never something that appeared in between.
            let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL;
            let fd = open_in_root(
                &root_fd,
                &rel,
                flags,
                Mode::from_bits_truncate(mode & 0o7777),
            )
            .map_err(|e| match e {
                // A parent that is a symlink to nowhere.
                Errno::ENOENT => FileError::NotFound(path.into()),
                e => FileError::io("create", path)(e),
            })?;
            File::from(fd)
        }
        Err(e) => return Err(FileError::io("open", path)(e)),
    };
    file.write_all(contents)
        .map_err(FileError::io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_without_dotdot() {
        assert!(matches!(
            components("etc/passwd"),
            Err(FileError::NotAbsolute(_))
        ));
        assert!(matches!(
            components("/a/../../etc"),
            Err(FileError::Escape(_))
        ));
        assert_eq!(components("/a/./b/").ok().map(|c| c.len()), Some(2));
    }
}
