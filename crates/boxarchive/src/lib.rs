//! The archive of one sandbox (`<sandbox-id>.boxlite`): a zstd-compressed tar whose first member
//! is `manifest.json` (format version, the box's id, name, image and options, when it was
//! exported, and every member of its disk with its size and `sha256:`), followed by the disk
//! under `disk/`: for a runc sandbox its writable layer, whiteouts kept (as OCI layers write them,
//! `.wh.<name>`).
//!
//! [`write`] streams: the disk is read twice (once to checksum every file for the manifest, once
//! into the tar), never copied. [`verify`] reads an archive and checks all of it; [`install`]
//! extracts into a scratch dir beside the destination, checks every member, and only then renames
//! it into place: a failed or interrupted install leaves nothing at the destination. Reading
//! refuses, naming the member: a checksum mismatch, a member outside the archive's root (absolute,
//! `..`, or through a link), a device node or hard link, a member the manifest does not list (or
//! one it lists but the archive lacks), a newer format ("upgrade stack"), a missing manifest.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format this build writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The first member.
pub const MANIFEST: &str = "manifest.json";
/// Where the disk's members live in the tar.
const DISK: &str = "disk/";
/// How OCI layers (and this archive) name a whiteout: `.wh.<the name it hides>`.
const WHITEOUT: &str = ".wh.";
/// How OCI layers (and this archive) mark an opaque directory: a member of it with this name.
const OPAQUE: &str = ".wh..wh..opq";
/// The xattrs overlayfs marks an opaque directory with: as root, and in a user namespace
/// (`userxattr`).
const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];
/// The largest manifest read (a disk of a million files lists in about 150 MB).
const MANIFEST_LIMIT: u64 = 256 << 20;
/// zstd's level: its default, fast enough to keep up with a disk.
const LEVEL: i32 = 3;

/// Why an archive could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file of the disk could not be read.
    #[error("cannot read {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The archive could not be written.
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
    /// The disk holds something an archive does not carry.
    #[error("{}: a {what} cannot be archived", .path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
    },
    /// A file changed between its checksum and its copy into the archive.
    #[error("{} changed while it was archived: pause the sandbox while it is exported", .path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// The compressed stream or the tar inside is damaged.
    #[error("the archive is damaged (it cannot be decompressed or read as a tar): use another backup of this box")]
    Corrupt(#[source] io::Error),
    /// The first member is not the manifest.
    #[error("the archive does not start with {MANIFEST} (found {found}): it is not a box archive, or it is damaged")]
    MissingManifest {
        /// What came first.
        found: String,
    },
    /// The manifest is not valid JSON of this format.
    #[error(
        "{MANIFEST} is invalid: it was not written by this box archive format, or it was altered"
    )]
    Manifest(#[source] serde_json::Error),
    /// Written by a newer format.
    #[error("the archive is format version {found}; this build reads up to version {FORMAT_VERSION}: upgrade stack")]
    NewerFormat {
        /// Its version.
        found: u64,
    },
    /// A member's path leaves the archive's root.
    #[error(
        "member {member}: its path leaves the archive's root (absolute, `..`, or not under {DISK}): the archive was damaged or altered; use another backup of this box"
    )]
    OutsideRoot {
        /// The member as the tar names it.
        member: String,
    },
    /// A member's path goes through a link made by an earlier member.
    #[error("member {member}: its path goes through the link {link}: the archive was damaged or altered; use another backup of this box")]
    ThroughLink {
        /// The member.
        member: String,
        /// The link.
        link: String,
    },
    /// A member of a kind an archive never holds.
    #[error("member {member}: a {what}, which a box archive never holds: the archive was damaged or altered; use another backup of this box")]
    Refused {
        /// The member.
        member: String,
        /// What it is (a device node, a hard link, ...).
        what: &'static str,
    },
    /// A member's content differs from its checksum in the manifest.
    #[error("member {member}: checksum mismatch: the manifest says {expected} ({expected_size} bytes), the archive holds {found} ({found_size} bytes): the archive was damaged or altered; use another backup of this box")]
    Checksum {
        /// The member.
        member: String,
        /// The manifest's checksum.
        expected: String,
        /// Its size there.
        expected_size: u64,
        /// The content's.
        found: String,
        /// Its size.
        found_size: u64,
    },
    /// A member differs from its entry in the manifest (kind, link target).
    #[error("member {member}: it is a {found}, the manifest lists a {expected}: the archive was damaged or altered; use another backup of this box")]
    Mismatch {
        /// The member.
        member: String,
        /// What the manifest says.
        expected: String,
        /// What the archive holds.
        found: String,
    },
    /// A member the manifest does not list, or lists twice.
    #[error("member {member} is not in the manifest (or appears twice): the archive was damaged or altered; use another backup of this box")]
    Unlisted {
        /// The member.
        member: String,
    },
    /// A member the manifest lists but the archive lacks.
    #[error("member {member} is listed in the manifest but missing from the archive (truncated?): the archive was damaged or altered; use another backup of this box")]
    Missing {
        /// The member.
        member: String,
    },
    /// The destination of an install exists.
    #[error("{} exists: a restore replaces nothing by itself; remove it first", .path.display())]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// A member could not be written out.
    #[error("cannot write {}", .path.display())]
    Extract {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// What kind of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (its target kept as it is: it is resolved inside the box).
    Symlink,
    /// An overlay whiteout: the name is deleted from the layers below.
    Whiteout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Whiteout => "whiteout",
        }
    }
}

/// One member of the disk, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Member {
    /// Its path under the disk, `/`-separated, relative.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Its permission bits (and setuid, setgid, sticky).
    pub mode: u32,
    /// Its size in bytes (files).
    #[serde(default)]
    pub size: u64,
    /// `sha256:<hex>` of its content (files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where it points (symlinks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// An opaque directory (overlayfs): nothing of the layers below shows through it. Written
    /// as OCI layers write it, a member `.wh..wh..opq` in it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
}

/// What an archive says about the box, besides its disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BoxInfo {
    /// The box's id: restored under the same one.
    pub box_id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// The image it was created from.
    pub image: String,
    /// The digest that image resolved to.
    pub image_digest: String,
    /// The options it was created with (the driver's own record).
    #[serde(default)]
    pub options: serde_json::Value,
    /// When it was exported (RFC 3339).
    pub exported_at: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`FORMAT_VERSION`] of the build that wrote it.
    pub format_version: u32,
    /// The box.
    #[serde(flatten)]
    pub info: BoxInfo,
    /// Every member of the disk, parents before children.
    pub members: Vec<Member>,
}

/// Writes the archive of the box `info` whose disk is the directory `disk` to `out`, streaming;
/// returns the manifest and `out`.
pub fn write<W: Write>(disk: &Path, info: BoxInfo, out: W) -> Result<(Manifest, W), ArchiveError> {
    let mut members = Vec::new();
    list(disk, "", &mut members)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        info,
        members,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Write(e.into()))?;
    let mut encoder = zstd::Encoder::new(out, LEVEL).map_err(ArchiveError::Write)?;
    encoder
        .include_checksum(true)
        .map_err(ArchiveError::Write)?;
    let mut tar = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o600);
    header.set_size(json.len() as u64);
    tar.append_data(&mut header, MANIFEST, json.as_slice())
        .map_err(ArchiveError::Write)?;
    for m in &manifest.members {
        append(&mut tar, disk, m)?;
    }
    let encoder = tar.into_inner().map_err(ArchiveError::Write)?;
    let out = encoder.finish().map_err(ArchiveError::Write)?;
    Ok((manifest, out))
}

/// Lists `dir` (the disk, or a directory of it at `rel`) into `out`, sorted, parents first.
fn list(dir: &Path, rel: &str, out: &mut Vec<Member>) -> Result<(), ArchiveError> {
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Read { path, source }
    };
    let mut names: Vec<_> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(read_err(dir))?;
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let Some(name) = name.to_str() else {
            return Err(ArchiveError::Unsupported {
                path,
                what: "name that is not UTF-8",
            });
        };
        let member = format!("{rel}{name}");
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let ft = meta.file_type();
        let mode = meta.mode() & 0o7777;
        let entry = |kind| Member {
            path: member.clone(),
            kind,
            mode,
            size: 0,
            sha256: None,
            target: None,
            opaque: false,
        };
        if ft.is_dir() {
            out.push(Member {
                opaque: is_opaque(&path),
                ..entry(Kind::Dir)
            });
            list(&path, &format!("{member}/"), out)?;
        } else if ft.is_file() {
            let (sha256, size) = checksum(&path)?;
            out.push(Member {
                size,
                sha256: Some(sha256),
                ..entry(Kind::File)
            });
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(read_err(&path))?;
            let Some(target) = target.to_str() else {
                return Err(ArchiveError::Unsupported {
                    path,
                    what: "link whose target is not UTF-8",
                });
            };
            out.push(Member {
                target: Some(target.to_string()),
                ..entry(Kind::Symlink)
            });
        } else if ft.is_char_device() && meta.rdev() == 0 {
            out.push(entry(Kind::Whiteout));
        } else if ft.is_socket() {
            // A socket is a live endpoint, not data: no archiver carries one.
            continue;
        } else {
            let what = if ft.is_fifo() { "FIFO" } else { "device node" };
            return Err(ArchiveError::Unsupported { path, what });
        }
    }
    Ok(())
}

/// Does overlayfs take the directory at `path` as opaque?
fn is_opaque(path: &Path) -> bool {
    OPAQUE_XATTRS
        .iter()
        .any(|name| xattr::get(path, name).ok().flatten().as_deref() == Some(b"y"))
}

/// `sha256:<hex>` and the size of the file at `path`.
fn checksum(path: &Path) -> Result<(String, u64), ArchiveError> {
    let err = |source| ArchiveError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = fs::File::open(path).map_err(err)?;
    let mut h = Hashing::new(io::sink());
    let size = io::copy(&mut f, &mut h).map_err(err)?;
    Ok((h.digest(), size))
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }

    fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hash.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what it reads.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    read: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Appends member `m` of the disk to the tar.
fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    disk: &Path,
    m: &Member,
) -> Result<(), ArchiveError> {
    let path = disk.join(&m.path);
    let mut header = tar::Header::new_gnu();
    header.set_mode(m.mode);
    header.set_uid(0);
    header.set_gid(0);
    let name = format!("{DISK}{}", m.path);
    match m.kind {
        Kind::Dir => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, &name, io::empty())
                .map_err(ArchiveError::Write)?;
            if !m.opaque {
                return Ok(());
            }
            let mut marker = tar::Header::new_gnu();
            marker.set_entry_type(tar::EntryType::Regular);
            marker.set_mode(0o600);
            marker.set_size(0);
            tar.append_data(&mut marker, format!("{name}/{OPAQUE}"), io::empty())
        }
        Kind::Symlink => {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, &name, m.target.as_deref().unwrap_or_default())
        }
        Kind::Whiteout => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            tar.append_data(&mut header, whiteout_name(&name), io::empty())
        }
        Kind::File => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(m.size);
            let f = fs::File::open(&path).map_err(|source| ArchiveError::Read {
                path: path.clone(),
                source,
            })?;
            // Exactly the size the manifest states: a file that grew since its checksum would
            // otherwise overrun its tar entry.
            let mut reader = HashingReader {
                inner: f.take(m.size),
                hash: Sha256::new(),
                read: 0,
            };
            tar.append_data(&mut header, &name, &mut reader)
                .map_err(ArchiveError::Write)?;
            let digest = format!("sha256:{}", hex::encode(reader.hash.finalize()));
            if reader.read != m.size || Some(&digest) != m.sha256.as_ref() {
                return Err(ArchiveError::Changed { path });
            }
            return Ok(());
        }
    }
    .map_err(ArchiveError::Write)
}

/// `dir/name` → `dir/.wh.name`.
fn whiteout_name(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{WHITEOUT}{name}"),
        None => format!("{WHITEOUT}{path}"),
    }
}

/// Reads the whole archive and checks it (every member's checksum, the manifest, the paths);
/// writes nothing. Returns its manifest.
pub fn verify<R: Read>(input: R) -> Result<Manifest, ArchiveError> {
    read(input, None)
}

/// Extracts the archive into `dest`, which must not exist: into a scratch dir beside it first,
/// renamed into place once every member checked out. Returns its manifest.
pub fn install<R: Read>(input: R, dest: &Path) -> Result<Manifest, ArchiveError> {
    if dest.symlink_metadata().is_ok() {
        return Err(ArchiveError::Exists {
            path: dest.to_path_buf(),
        });
    }
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scratch = dest.with_file_name(format!(".{file_name}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let extract_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Extract { path, source }
    };
    fs::create_dir(&scratch).map_err(extract_err(&scratch))?;
    let result = read(input, Some(&scratch)).and_then(|manifest| {
        fs::rename(&scratch, dest).map_err(extract_err(dest))?;
        Ok(manifest)
    });
    if result.is_err() {
        remove_all(&scratch);
    }
    result
}

/// Removes `dir` even where an extraction left directories without write permission.
fn remove_all(dir: &Path) {
    if fs::remove_dir_all(dir).is_ok() {
        return;
    }
    fn open_up(dir: &Path) {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
    open_up(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Reads the archive, checking it; extracts it into `into` when given.
fn read<R: Read>(input: R, into: Option<&Path>) -> Result<Manifest, ArchiveError> {
    let decoder = zstd::Decoder::new(input).map_err(ArchiveError::Corrupt)?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(ArchiveError::Corrupt)?;
    let first = entries
        .next()
        .ok_or_else(|| ArchiveError::MissingManifest {
            found: "an empty archive".into(),
        })?;
    let first = first.map_err(ArchiveError::Corrupt)?;
    let name = String::from_utf8_lossy(&first.path_bytes()).into_owned();
    if name != MANIFEST || first.header().entry_type() != tar::EntryType::Regular {
        return Err(ArchiveError::MissingManifest { found: name });
    }
    let mut json = Vec::new();
    first
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut json)
        .map_err(ArchiveError::Corrupt)?;
    // The version first: a newer format's other fields may not parse here.
    let value: serde_json::Value = serde_json::from_slice(&json).map_err(ArchiveError::Manifest)?;
    let version = value
        .get("formatVersion")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    if version > u64::from(FORMAT_VERSION) {
        return Err(ArchiveError::NewerFormat { found: version });
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(ArchiveError::Manifest)?;
    let mut expected: BTreeMap<&str, &Member> = BTreeMap::new();
    // Opaque directories whose marker has not come yet.
    let mut opaque: BTreeMap<&str, &Member> = BTreeMap::new();
    for m in &manifest.members {
        if m.opaque && m.kind == Kind::Dir {
            opaque.insert(&m.path, m);
        }
        if !is_inside(&m.path) {
            return Err(ArchiveError::OutsideRoot {
                member: m.path.clone(),
            });
        }
        if expected.insert(&m.path, m).is_some() {
            return Err(ArchiveError::Unlisted {
                member: m.path.clone(),
            });
        }
    }
    let mut extract = into.map(|root| Extract {
        root,
        dirs: Vec::new(),
        links: HashSet::new(),
    });
    for entry in entries {
        let mut entry = entry.map_err(ArchiveError::Corrupt)?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let member = raw.trim_end_matches('/').to_string();
        let Some(rel) = member.strip_prefix(DISK).filter(|r| is_inside(r)) else {
            return Err(ArchiveError::OutsideRoot { member });
        };
        if let Some(dir) = rel.strip_suffix(OPAQUE).and_then(|d| d.strip_suffix('/')) {
            // The marker of an opaque dir listed as such and already extracted.
            let Some(m) = opaque
                .remove(dir)
                .filter(|_| !expected.contains_key(dir) && entry.size() == 0)
                .filter(|_| entry.header().entry_type() == tar::EntryType::Regular)
            else {
                return Err(ArchiveError::Unlisted { member });
            };
            if let Some(x) = &mut extract {
                x.opaque(&member, m)?;
            }
            continue;
        }
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => Kind::Symlink,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if rel
                    .rsplit('/')
                    .next()
                    .is_some_and(|n| n.starts_with(WHITEOUT))
                {
                    Kind::Whiteout
                } else {
                    Kind::File
                }
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(ArchiveError::Refused {
                    member,
                    what: "device node",
                })
            }
            tar::EntryType::Link => {
                return Err(ArchiveError::Refused {
                    member,
                    what: "hard link",
                })
            }
            _ => {
                return Err(ArchiveError::Refused {
                    member,
                    what: "special file",
                })
            }
        };
        // A whiteout is listed under the name it hides.
        let rel = if kind == Kind::Whiteout {
            unwhiteout(rel)
        } else {
            rel.to_string()
        };
        let Some(m) = expected.remove(rel.as_str()) else {
            return Err(ArchiveError::Unlisted { member });
        };
        if m.kind != kind {
            return Err(ArchiveError::Mismatch {
                member,
                expected: m.kind.name().into(),
                found: kind.name().into(),
            });
        }
        match kind {
            Kind::File => {
                let sink: Box<dyn Write> = match &mut extract {
                    Some(x) => Box::new(x.file(&member, m)?),
                    None => Box::new(io::sink()),
                };
                let mut h = Hashing::new(sink);
                let size = io::copy(&mut entry, &mut h).map_err(ArchiveError::Corrupt)?;
                let found = h.digest();
                if Some(&found) != m.sha256.as_ref() || size != m.size {
                    return Err(ArchiveError::Checksum {
                        member,
                        expected: m.sha256.clone().unwrap_or_default(),
                        expected_size: m.size,
                        found,
                        found_size: size,
                    });
                }
            }
            Kind::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                if Some(&target) != m.target.as_ref() {
                    return Err(ArchiveError::Mismatch {
                        member,
                        expected: format!("symlink to {}", m.target.as_deref().unwrap_or("")),
                        found: format!("symlink to {target}"),
                    });
                }
                if let Some(x) = &mut extract {
                    x.symlink(&member, m)?;
                }
            }
            Kind::Dir => {
                if let Some(x) = &mut extract {
                    x.dir(&member, m)?;
                }
            }
            Kind::Whiteout => {
                if let Some(x) = &mut extract {
                    x.whiteout(&member, m)?;
                }
            }
        }
    }
    if let Some(missing) = expected.keys().next() {
        return Err(ArchiveError::Missing {
            member: format!("{DISK}{missing}"),
        });
    }
    if let Some(dir) = opaque.keys().next() {
        return Err(ArchiveError::Missing {
            member: format!("{DISK}{dir}/{OPAQUE}"),
        });
    }
    // The tar ends before the compressed stream does: reading the stream to its end checks
    // zstd's own checksum of everything (the tar's padding and end blocks included), so a
    // damaged byte anywhere is refused, not only one inside a member.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(ArchiveError::Corrupt)?;
    if let Some(x) = extract {
        x.finish()?;
    }
    Ok(manifest)
}

/// `a/.wh.b` → `a/b`.
fn unwhiteout(rel: &str) -> String {
    match rel.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{}", name.strip_prefix(WHITEOUT).unwrap_or(name)),
        None => rel.strip_prefix(WHITEOUT).unwrap_or(rel).to_string(),
    }
}

/// A relative path with only normal components: nothing absolute, no `..`, no `.`, not empty.
fn is_inside(rel: &str) -> bool {
    !rel.is_empty()
        && !rel.starts_with('/')
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
}

/// An extraction in progress: what it made, so nothing is written through a link it made, and
/// directories get their modes once their contents are in.
struct Extract<'a> {
    root: &'a Path,
    /// Directories made, with their modes, parents first.
    dirs: Vec<(PathBuf, u32)>,
    /// Links made, by their path under the disk.
    links: HashSet<String>,
}

impl Extract<'_> {
    /// Where `m` goes, once no ancestor of it is a link this extraction made.
    fn place(&self, member: &str, m: &Member) -> Result<PathBuf, ArchiveError> {
        let mut prefix = String::new();
        for part in m.path.split('/') {
            if !prefix.is_empty() && self.links.contains(&prefix) {
                return Err(ArchiveError::ThroughLink {
                    member: member.into(),
                    link: format!("{DISK}{prefix}"),
                });
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
        }
        Ok(self.root.join(&m.path))
    }

    fn err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError {
        let path = path.to_path_buf();
        move |source| ArchiveError::Extract { path, source }
    }

    fn dir(&mut self, member: &str, m: &Member) -> Result<(), ArchiveError> {
        let path = self.place(member, m)?;
        // Writable while its contents come in; its own mode once they are all there.
        fs::create_dir(&path).map_err(Self::err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).map_err(Self::err(&path))?;
        self.dirs.push((path, m.mode));
        Ok(())
    }

    fn file(&mut self, member: &str, m: &Member) -> Result<fs::File, ArchiveError> {
        let path = self.place(member, m)?;
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(m.mode & 0o777)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .and_then(|f| {
                f.set_permissions(fs::Permissions::from_mode(m.mode))?;
                Ok(f)
            })
            .map_err(Self::err(&path))
    }

    fn symlink(&mut self, member: &str, m: &Member) -> Result<(), ArchiveError> {
        let path = self.place(member, m)?;
        std::os::unix::fs::symlink(m.target.as_deref().unwrap_or_default(), &path)
            .map_err(Self::err(&path))?;
        self.links.insert(m.path.clone());
        Ok(())
    }

    fn whiteout(&mut self, member: &str, m: &Member) -> Result<(), ArchiveError> {
        let path = self.place(member, m)?;
        // A character device 0:0, as overlayfs writes a whiteout (allowed without privilege
        // since Linux 5.8).
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(m.mode & 0o777),
            0,
        )
        .map_err(|e| ArchiveError::Extract {
            path: path.clone(),
            source: e.into(),
        })
    }

    /// Marks the extracted directory `m` opaque, as overlayfs reads it: `trusted.overlay.opaque`
    /// as root, `user.overlay.opaque` otherwise (an overlay mounted with `userxattr`).
    fn opaque(&mut self, member: &str, m: &Member) -> Result<(), ArchiveError> {
        let path = self.place(member, m)?;
        let name = if nix::unistd::geteuid().is_root() {
            OPAQUE_XATTRS[0]
        } else {
            OPAQUE_XATTRS[1]
        };
        xattr::set(&path, name, b"y").map_err(Self::err(&path))
    }

    /// Gives every directory its mode, children before parents.
    fn finish(self) -> Result<(), ArchiveError> {
        for (path, mode) in self.dirs.iter().rev() {
            fs::set_permissions(path, fs::Permissions::from_mode(*mode))
                .map_err(Self::err(path))?;
        }
        Ok(())
    }
}
