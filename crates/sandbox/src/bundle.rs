//! A sandbox's OCI runtime bundle: its root filesystem (an overlayfs of the image's cached layers
//! under the sandbox's own writable layer) and the `config.json` runc reads.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::id::SandboxId;
use crate::oci::ImageConfig;

/// The PATH a process gets when the image sets none.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The keeper init: `wait` in sh and dash waits for any child, so orphans are reaped as they die.
const KEEPER: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
];

/// cgroup v1 CFS period: a quota of `cpus * PERIOD` microseconds per period.
const CPU_PERIOD: u64 = 100_000;

/// The capabilities of a sandbox's processes: Docker's default set, which what users run in
/// containers expects (package managers chown, servers bind low ports).
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
];

/// CPU, memory and process limits of a sandbox (cgroup v1 controllers on these machines).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPUs' worth of time per period (e.g. 0.5 or 2).
    pub cpus: f64,
    /// Memory limit in bytes.
    pub memory_bytes: u64,
    /// Most processes at once.
    pub pids: i64,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpus: 1.0,
            memory_bytes: 512 << 20,
            pids: 1024,
        }
    }
}

/// What runs as a sandbox's init (pid 1), which keeps the sandbox alive between execs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Init {
    /// A shell that waits forever and reaps what is orphaned to it (a bare `sleep infinity` as pid
    /// 1 would leave the zombies of every exec'd command's background children). The image's own
    /// command often exits at once without a terminal (busybox's is `sh`).
    #[default]
    Keeper,
    /// The image's `Entrypoint` followed by its `Cmd`.
    ImageCommand,
    /// These arguments.
    Command(Vec<String>),
}

/// Everything `config.json` is made from.
#[derive(Debug, Clone)]
pub(crate) struct Spec<'a> {
    pub id: &'a SandboxId,
    pub image: &'a ImageConfig,
    pub args: Vec<String>,
    pub env: &'a [(String, String)],
    pub resources: &'a Resources,
    pub cgroup_parent: &'a str,
    /// The init's uid and gid (see [`resolve_user`]).
    pub user: (u32, u32),
    /// Run by a runner that is not root, in its user namespace: no cgroup (no limits) and only
    /// root mapped (see [`crate::userns`]).
    pub rootless: bool,
    /// The file bind-mounted on the sandbox's `/etc/resolv.conf` (a sandbox with outbound
    /// access); `None`: the image's own, as it is.
    pub resolv_conf: Option<&'a Path>,
}

/// Why a bundle could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// `Init::ImageCommand` on an image with neither Entrypoint nor Cmd.
    #[error("the image has no Entrypoint or Cmd to run as the sandbox's init")]
    NoCommand,
    /// An image `User` whose name is not in the image's /etc/passwd or /etc/group.
    #[error("image user `{0}` is not in the image's /etc/passwd or /etc/group")]
    User(String),
    /// A path that cannot go into overlayfs's mount options.
    #[error("path {0} has a `,` or `:`, which overlayfs mount options cannot hold")]
    PathChars(PathBuf),
    /// The layers' paths do not fit the one page overlayfs accepts for its options.
    #[error("the overlay's options are {0} bytes, more than the 4096 the kernel accepts: too many layers or a too long home path")]
    TooManyLayers(usize),
    /// An image `User` other than root in a runner that is not root: its user namespace maps the
    /// runner's own uid only, as root.
    #[error("image user `{user}` (uid {uid}, gid {gid}) cannot run here: this runner is not root, and its sandboxes' user namespace maps root only; use an image without a `User`, or run the runner as root")]
    Unmapped {
        /// The image's `User`.
        user: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
    },
    /// Mounting or unmounting the overlay in the runner's user namespace failed.
    #[error("cannot {op} the overlay at {target} in the sandboxes' user namespace")]
    Userns {
        /// `mount` or `unmount`.
        op: &'static str,
        /// The mount point.
        target: PathBuf,
        /// Why.
        #[source]
        source: crate::userns::UsernsError,
    },
    /// Mounting or unmounting the overlay failed.
    #[error("cannot {op} the overlay at {target}")]
    Mount {
        /// `mount` or `unmount`.
        op: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
}

impl Init {
    /// The init process's arguments for an image.
    pub(crate) fn args(&self, image: &ImageConfig) -> Result<Vec<String>, BundleError> {
        match self {
            Init::Keeper => Ok(KEEPER.iter().map(|s| s.to_string()).collect()),
            Init::ImageCommand => {
                let args: Vec<String> =
                    image.entrypoint.iter().chain(&image.cmd).cloned().collect();
                if args.is_empty() {
                    return Err(BundleError::NoCommand);
                }
                Ok(args)
            }
            Init::Command(args) if args.is_empty() => Err(BundleError::NoCommand),
            Init::Command(args) => Ok(args.clone()),
        }
    }
}

/// The image's env with `extra` on top (same key: `extra` wins), and a PATH if none.
pub(crate) fn environment(image: &[String], extra: &[(String, String)]) -> Vec<String> {
    let mut env: Vec<String> = image
        .iter()
        .filter(|kv| {
            let key = kv.split('=').next().unwrap_or_default();
            !extra.iter().any(|(k, _)| k == key)
        })
        .cloned()
        .collect();
    env.extend(extra.iter().map(|(k, v)| format!("{k}={v}")));
    if !env.iter().any(|kv| kv.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.to_string());
    }
    env
}

/// The uid and gid of an image's `User` (`name`, `uid`, `name:group`, `uid:gid`, ...): names are
/// looked up in the sandbox's own /etc/passwd and /etc/group, read inside its root; without a
/// group, the user's primary group (or 0 for a uid the image does not list).
pub(crate) fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<(u32, u32), BundleError> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok((0, 0));
    };
    let unknown = || BundleError::User(user.to_string());
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    // passwd: name:x:uid:gid:...; group: name:x:gid:...
    let passwd = database(rootfs, "/etc/passwd");
    let entry = passwd.iter().find(|f| f[0] == name || f[2] == name);
    let uid = match name.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.and_then(|f| f[2].parse().ok()).ok_or_else(unknown)?,
    };
    let gid = match group {
        None => entry.and_then(|f| f.get(3)?.parse().ok()).unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                let groups = database(rootfs, "/etc/group");
                let found = groups.iter().find(|f| f[0] == g);
                found.and_then(|f| f[2].parse().ok()).ok_or_else(unknown)?
            }
        },
    };
    Ok((uid, gid))
}

/// The `:`-separated lines of a passwd-like file of the sandbox with at least 3 fields (none when
/// it is missing or unreadable).
fn database(rootfs: &Path, path: &str) -> Vec<Vec<String>> {
    let text = crate::files::read(rootfs, path, 1 << 20).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
        .collect()
}

/// The bundle's `config.json`: the namespaces, mounts and limits of a sandbox. No `rlimits`: the
/// sandbox inherits the runner's, since raising a hard limit needs CAP_SYS_RESOURCE, which these
/// machines' root lacks.
pub(crate) fn config_json(spec: &Spec<'_>) -> serde_json::Value {
    let mut config = root_config_json(spec);
    if let (Some(path), Some(mounts)) = (spec.resolv_conf, config["mounts"].as_array_mut()) {
        mounts.push(json!({
            "destination": "/etc/resolv.conf", "type": "bind", "source": path,
            "options": ["bind", "nosuid", "nodev", "noexec"]
        }));
    }
    if spec.rootless {
        rootless(&mut config);
    }
    config
}

/// What rootless runc (root in a user namespace that maps one uid, no cgroup delegation) needs:
/// no cgroup path and no limits (runc skips the cgroups it may not create only when neither is
/// asked for; the device rules are ignored), and no `gid=5` for devpts (an unmapped group).
fn rootless(config: &mut serde_json::Value) {
    if let Some(linux) = config["linux"].as_object_mut() {
        linux.remove("cgroupsPath");
        linux.insert("resources".into(), json!({}));
    }
    if let Some(mounts) = config["mounts"].as_array_mut() {
        for m in mounts.iter_mut().filter(|m| m["type"] == "devpts") {
            if let Some(options) = m["options"].as_array_mut() {
                options.retain(|o| o != "gid=5");
            }
        }
    }
}

fn root_config_json(spec: &Spec<'_>) -> serde_json::Value {
    let (uid, gid) = spec.user;
    let caps = CAPABILITIES;
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": uid, "gid": gid },
            "args": spec.args,
            "env": environment(&spec.image.env, spec.env),
            "cwd": spec.image.working_dir.as_deref().unwrap_or("/"),
            "capabilities": { "bounding": caps, "effective": caps, "permitted": caps },
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": spec.id.as_str(),
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
            { "destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
            { "destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
            { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"] },
            { "destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"] }
        ],
        "linux": {
            "cgroupsPath": format!("/{}/{}", spec.cgroup_parent, spec.id),
            "resources": {
                "devices": [{ "allow": false, "access": "rwm" }],
                "memory": { "limit": spec.resources.memory_bytes },
                "cpu": { "quota": (spec.resources.cpus * CPU_PERIOD as f64) as i64, "period": CPU_PERIOD },
                "pids": { "limit": spec.resources.pids }
            },
            "namespaces": [
                { "type": "pid" }, { "type": "network" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// The overlayfs options of `lowers` (bottom first) under `upper`: with `userxattr` for a mount in
/// a user namespace, whose opaque dirs carry `user.overlay.opaque` (trusted.* needs real root).
pub(crate) fn overlay_options(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    userxattr: bool,
) -> Result<String, BundleError> {
    for p in lowers.iter().map(PathBuf::as_path).chain([upper, work]) {
        let s = p.as_os_str().as_encoded_bytes();
        if s.contains(&b',') || s.contains(&b':') {
            return Err(BundleError::PathChars(p.to_path_buf()));
        }
    }
    // overlayfs lists lower dirs top first.
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let options = format!(
        "{}lowerdir={},upperdir={},workdir={}",
        if userxattr { "userxattr," } else { "" },
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    if options.len() >= 4096 {
        return Err(BundleError::TooManyLayers(options.len()));
    }
    Ok(options)
}

/// Mounts an overlay of `lowers` (bottom first) under `upper` at `target`.
pub(crate) fn mount_overlay(
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), BundleError> {
    let options = overlay_options(lowers, upper, work, false)?;
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| BundleError::Mount {
        op: "mount",
        target: target.to_path_buf(),
        source: e.into(),
    })
}

/// Unmounts `target` if something is mounted there.
pub(crate) fn unmount(target: &Path) -> Result<(), BundleError> {
    let err = |e: nix::errno::Errno| BundleError::Mount {
        op: "unmount",
        target: target.to_path_buf(),
        source: e.into(),
    };
    while is_mount_point(target).map_err(|e| BundleError::Mount {
        op: "unmount",
        target: target.to_path_buf(),
        source: e,
    })? {
        match nix::mount::umount2(target, nix::mount::MntFlags::empty()) {
            Ok(()) => {}
            // Still in use (a process of the sandbox not yet gone): detach it, the kernel frees it
            // when the last user leaves.
            Err(nix::errno::Errno::EBUSY) => {
                nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}

/// Is `path` a mount point in this process's mount namespace (per /proc/self/mountinfo)?
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    is_mount_point_in(Path::new("/proc/self/mountinfo"), path)
}

/// Is `path` a mount point per the mountinfo file `mountinfo` (`/proc/<pid>/mountinfo`)?
pub fn is_mount_point_in(mountinfo: &Path, path: &Path) -> io::Result<bool> {
    let info = fs::read_to_string(mountinfo)?;
    let wanted = path.display().to_string();
    // Field 5 is the mount point, with spaces and the like escaped as octal.
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == wanted))
}

fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_adds_path_and_lets_extra_win() {
        let image = vec!["A=1".to_string(), "B=2".to_string()];
        let env = environment(&image, &[("B".into(), "3".into())]);
        assert_eq!(env, [DEFAULT_PATH, "A=1", "B=3"]);
    }

    #[test]
    fn users_by_name_or_number() {
        let root = tempfile::tempdir().expect("temp rootfs");
        fs::create_dir(root.path().join("etc")).expect("etc");
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        fs::write(root.path().join("etc/passwd"), passwd).expect("passwd");
        fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("group");
        let resolve = |u: Option<&str>| resolve_user(u, root.path()).ok();
        assert_eq!(resolve(None), Some((0, 0)));
        assert_eq!(resolve(Some("app")), Some((1000, 1001)));
        assert_eq!(resolve(Some("app:staff")), Some((1000, 50)));
        assert_eq!(resolve(Some("1000")), Some((1000, 1001)));
        assert_eq!(resolve(Some("42")), Some((42, 0)));
        assert_eq!(resolve(Some("42:7")), Some((42, 7)));
        assert_eq!(resolve(Some("ghost")), None);
        assert_eq!(resolve(Some("app:ghost")), None);
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn init_args() {
        let image = ImageConfig {
            cmd: vec!["sh".into()],
            ..Default::default()
        };
        assert_eq!(
            Init::ImageCommand.args(&image).ok(),
            Some(vec!["sh".to_string()])
        );
        assert!(Init::ImageCommand.args(&ImageConfig::default()).is_err());
        assert_eq!(Init::Keeper.args(&image).ok().map(|a| a.len()), Some(3));
    }
}
