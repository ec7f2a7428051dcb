//! A sandbox's creation options as BoxLite's `BoxOptions`, and the other pure translations
//! between the runner's contract and a box: states, exit codes, file paths, the in-box helpers
//! the file calls run. No runtime and no I/O, so all of it is unit-tested against the real types.

use std::path::{Component, Path};

use boxlite::{BoxOptions, BoxStatus, ImageRegistry, NetworkSpec, RootfsSpec};

use crate::bundle::Init;
use crate::digest::Digest;
use crate::driver::{CreateOptions, Status};
use crate::files::FileError;
use crate::oci::ImageRef;

/// The least memory a box gets: the guest kernel and BoxLite's agent run in the same VM as the
/// sandbox's processes, and a VM much smaller than this does not boot.
pub const MIN_MEMORY_MIB: u32 = 128;

/// What a box runs as its main command for [`Init::Keeper`]: a shell that waits forever and
/// reaps what is orphaned to it, as the runc driver's keeper does.
pub const KEEPER: &[&str] = &[
    "/bin/sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done",
];

/// The image a box boots: the reference pinned to the digest the runner resolved, so the box
/// runs exactly the image the create answered with, even if the tag moves meanwhile.
pub fn pinned_image(reference: &ImageRef, digest: &Digest) -> String {
    format!("{}/{}@{digest}", reference.registry, reference.repository)
}

/// The registry setting BoxLite pulls through: the stack's registry, plain HTTP, no default
/// registry searched (every reference names it).
pub fn registry(host: &str) -> ImageRegistry {
    ImageRegistry::http(host)
}

/// Why a sandbox's options cannot be a box.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OptionsError {
    /// `Init::Command` without arguments.
    #[error("the sandbox's init command is empty")]
    NoCommand,
    /// CPUs BoxLite cannot give (it counts vCPUs in a byte).
    #[error("{cpus} CPUs: a box has 1 to 255 vCPUs")]
    Cpus {
        /// The value asked for.
        cpus: f64,
    },
}

/// The box of sandbox options: `pinned` as its image, a whole number of vCPUs (a fraction
/// rounds up: a VM cannot have half a CPU), the memory limit as the VM's memory (at least
/// [`MIN_MEMORY_MIB`]), the environment, the init as the main command. The box is detached
/// (it outlives the runner, which takes it back on its next start) and kept when stopped, so a
/// stopped sandbox keeps its files; its network is on, since that is how the runner reaches
/// its ports.
pub fn box_options(pinned: &str, options: &CreateOptions) -> Result<BoxOptions, OptionsError> {
    let cpus = options.resources.cpus.ceil();
    if !(1.0..=255.0).contains(&cpus) {
        return Err(OptionsError::Cpus {
            cpus: options.resources.cpus,
        });
    }
    let memory_mib = u32::try_from(options.resources.memory_bytes >> 20)
        .unwrap_or(u32::MAX)
        .max(MIN_MEMORY_MIB);
    let (entrypoint, cmd) = match &options.init {
        // An empty entrypoint clears the image's, so the command runs as it is.
        Init::Keeper => (
            Some(Vec::new()),
            Some(KEEPER.iter().map(|s| s.to_string()).collect()),
        ),
        Init::ImageCommand => (None, None),
        Init::Command(args) if args.is_empty() => return Err(OptionsError::NoCommand),
        Init::Command(args) => (Some(Vec::new()), Some(args.clone())),
    };
    Ok(BoxOptions {
        cpus: Some(cpus as u8),
        memory_mib: Some(memory_mib),
        env: options.env.clone(),
        rootfs: RootfsSpec::Image(pinned.to_string()),
        network: NetworkSpec::default(),
        entrypoint,
        cmd,
        detach: true,
        auto_delete: Some(0),
        ..BoxOptions::default()
    })
}

/// A box's state as a sandbox's: running or paused as they are, a box never started as
/// created, everything else (stopping, stopped, failed, unknown) as stopped.
pub fn status(s: BoxStatus) -> Status {
    match s {
        BoxStatus::Running => Status::Running,
        BoxStatus::Paused => Status::Paused,
        BoxStatus::Configured => Status::Created,
        BoxStatus::Stopping | BoxStatus::Stopped | BoxStatus::Failed | BoxStatus::Unknown => {
            Status::Stopped
        }
    }
}

/// BoxLite's exit code as the runner's: a signal's death (BoxLite: the negative signal number)
/// is 128 + the signal, as a shell reports it.
pub fn exit_code(boxlite: i32) -> i32 {
    if boxlite < 0 {
        128_i32.saturating_sub(boxlite)
    } else {
        boxlite
    }
}

/// The runc driver's path rules, checked before anything reaches the box: absolute, no NUL, no
/// `..` component. Symlinks are then resolved by the guest, inside the box's own root: a box
/// has no host path to leave to.
pub fn check_path(path: &str) -> Result<(), FileError> {
    let p = Path::new(path);
    if !p.is_absolute() || path.contains('\0') {
        return Err(FileError::NotAbsolute(path.into()));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(FileError::Escape(path.into()));
    }
    Ok(())
}

/// Exit codes of the in-box file helpers, each a [`FileError`].
pub const EXIT_NOT_FOUND: i32 = 65;
/// Something that is not a regular file is at the path.
pub const EXIT_NOT_A_FILE: i32 = 66;
/// The file is larger than the caller's limit.
pub const EXIT_TOO_LARGE: i32 = 67;

/// The helper that writes stdin to `$1` with `mode` (octal), parents created: `sh -c SCRIPT sh
/// PATH`. A directory, device or socket at the path is refused, not replaced; a symlink is
/// written through, inside the box.
pub fn write_script(mode: u32) -> String {
    format!(
        "p=$1; d=${{p%/*}}; [ -z \"$d\" ] || mkdir -p -- \"$d\" || exit 1; \
         if [ -e \"$p\" ] && [ ! -f \"$p\" ]; then exit {EXIT_NOT_A_FILE}; fi; \
         cat > \"$p\" && chmod {mode:o} -- \"$p\""
    )
}

/// The helper that checks `$1` before a download: there, a regular file, at most `limit` bytes.
/// It prints nothing; the file itself is copied out with BoxLite's copy API, byte for byte.
pub fn read_check_script(limit: u64) -> String {
    format!(
        "p=$1; [ -e \"$p\" ] || exit {EXIT_NOT_FOUND}; [ -f \"$p\" ] || exit {EXIT_NOT_A_FILE}; \
         s=$(wc -c < \"$p\") || exit 1; [ \"$s\" -le {limit} ] || exit {EXIT_TOO_LARGE}"
    )
}

/// The [`FileError`] a helper's exit code stands for (`None`: the helper failed otherwise).
pub fn file_error(code: i32, path: &str, limit: u64) -> Option<FileError> {
    match code {
        EXIT_NOT_FOUND => Some(FileError::NotFound(path.into())),
        EXIT_NOT_A_FILE => Some(FileError::NotAFile(path.into())),
        EXIT_TOO_LARGE => Some(FileError::TooLarge {
            path: path.into(),
            limit,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Resources;

    fn opts(cpus: f64, memory_mib: u64, init: Init) -> CreateOptions {
        CreateOptions {
            resources: Resources {
                cpus,
                memory_bytes: memory_mib << 20,
                ..Resources::default()
            },
            env: vec![("A".into(), "1".into()), ("B".into(), "two words".into())],
            init,
        }
    }

    #[test]
    fn every_create_option_reaches_the_box() {
        let reference = ImageRef::parse("127.0.0.1:25000/boxlite/busybox:latest").expect("ref");
        let digest = Digest::parse(&format!("sha256:{}", "ab".repeat(32))).expect("digest");
        let pinned = pinned_image(&reference, &digest);
        assert_eq!(
            pinned,
            format!("127.0.0.1:25000/boxlite/busybox@sha256:{}", "ab".repeat(32))
        );
        let o = box_options(&pinned, &opts(2.0, 1024, Init::Keeper)).expect("maps");
        assert!(matches!(&o.rootfs, RootfsSpec::Image(i) if *i == pinned));
        assert_eq!((o.cpus, o.memory_mib), (Some(2), Some(1024)));
        assert_eq!(
            o.env,
            vec![("A".into(), "1".into()), ("B".into(), "two words".into())]
        );
        // The keeper runs as the box's main command, with the image's entrypoint cleared.
        assert_eq!(o.entrypoint, Some(Vec::new()));
        assert_eq!(
            o.cmd.as_deref().map(|c| c[0].as_str()),
            Some("/bin/sh"),
            "{:?}",
            o.cmd
        );
        // Outlives the runner, kept when stopped, reachable through its network.
        assert!(o.detach);
        assert_eq!(o.auto_delete, Some(0));
        assert!(
            matches!(o.network, NetworkSpec::Enabled { ref allow_net } if allow_net.is_empty())
        );
        assert!(
            o.ports.is_empty(),
            "ports are reached by tunnel, none published"
        );
        // The options survive BoxLite's own serialization (its box database keeps them).
        let text = serde_json::to_string(&o).expect("serialize");
        let back: BoxOptions = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(serde_json::to_string(&back).expect("again"), text);
    }

    #[test]
    fn resources_become_whole_vcpus_and_at_least_a_bootable_memory() {
        let o = box_options("r@sha256:x", &opts(0.5, 16, Init::Keeper)).expect("maps");
        assert_eq!((o.cpus, o.memory_mib), (Some(1), Some(MIN_MEMORY_MIB)));
        let o = box_options("r", &opts(1.5, 512, Init::Keeper)).expect("maps");
        assert_eq!((o.cpus, o.memory_mib), (Some(2), Some(512)));
        let o = box_options("r", &opts(64.0, 256 << 10, Init::Keeper)).expect("maps");
        assert_eq!((o.cpus, o.memory_mib), (Some(64), Some(256 << 10)));
        for cpus in [0.0, -1.0, 255.5, f64::NAN] {
            assert!(
                matches!(
                    box_options("r", &opts(cpus, 512, Init::Keeper)),
                    Err(OptionsError::Cpus { .. })
                ),
                "{cpus}"
            );
        }
    }

    #[test]
    fn the_init_is_the_boxs_main_command() {
        let o = box_options("r", &opts(1.0, 512, Init::ImageCommand)).expect("maps");
        assert_eq!((o.entrypoint, o.cmd), (None, None), "the image's own");
        let args = vec!["/bin/httpd".to_string(), "-f".into()];
        let o = box_options("r", &opts(1.0, 512, Init::Command(args.clone()))).expect("maps");
        assert_eq!((o.entrypoint, o.cmd), (Some(Vec::new()), Some(args)));
        assert_eq!(
            box_options("r", &opts(1.0, 512, Init::Command(Vec::new()))).err(),
            Some(OptionsError::NoCommand)
        );
    }

    #[test]
    fn box_states_are_sandbox_states() {
        assert_eq!(status(BoxStatus::Running), Status::Running);
        assert_eq!(status(BoxStatus::Paused), Status::Paused);
        assert_eq!(status(BoxStatus::Configured), Status::Created);
        for s in [
            BoxStatus::Stopping,
            BoxStatus::Stopped,
            BoxStatus::Failed,
            BoxStatus::Unknown,
        ] {
            assert_eq!(status(s), Status::Stopped, "{s:?}");
        }
    }

    #[test]
    fn a_signals_death_is_128_plus_the_signal() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(-9), 137);
        assert_eq!(exit_code(-15), 143);
        assert_eq!(exit_code(i32::MIN), i32::MAX);
    }

    #[test]
    fn paths_follow_the_runc_drivers_rules() {
        for ok in ["/a", "/srv/index.html", "/a/./b", "/", "/a//b"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for rel in ["a", "", "./a", "a/../b", "/a\0b"] {
            assert!(
                matches!(check_path(rel), Err(FileError::NotAbsolute(_))),
                "{rel}"
            );
        }
        for esc in ["/..", "/../etc/passwd", "/a/../../b", "/a/.."] {
            assert!(
                matches!(check_path(esc), Err(FileError::Escape(_))),
                "{esc}"
            );
        }
    }

    /// The helpers run with the box's `/bin/sh`: run here with the host's, they do what the
    /// file calls promise (write with parents and mode, refuse a directory, check existence,
    /// type and size).
    #[test]
    fn the_file_helpers_do_what_the_file_calls_promise() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        use std::process::{Command, Stdio};

        let tmp = tempfile::tempdir().expect("tempdir");
        let sh = |script: &str, path: &Path, stdin: &[u8]| -> i32 {
            let mut child = Command::new("/bin/sh")
                .args(["-c", script, "sh"])
                .arg(path)
                .stdin(Stdio::piped())
                .spawn()
                .expect("sh");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(stdin)
                .expect("write");
            child.wait().expect("wait").code().unwrap_or(-1)
        };
        let file = tmp.path().join("new/dir/f.bin");
        let bytes = [0u8, 159, 146, 150, b'\n', 255];
        assert_eq!(sh(&write_script(0o644), &file, &bytes), 0);
        assert_eq!(std::fs::read(&file).expect("written"), bytes);
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(sh(&write_script(0o644), tmp.path(), b"x"), EXIT_NOT_A_FILE);

        assert_eq!(sh(&read_check_script(6), &file, b""), 0);
        assert_eq!(sh(&read_check_script(5), &file, b""), EXIT_TOO_LARGE);
        assert_eq!(sh(&read_check_script(9), tmp.path(), b""), EXIT_NOT_A_FILE);
        assert_eq!(
            sh(&read_check_script(9), &tmp.path().join("nope"), b""),
            EXIT_NOT_FOUND
        );
        assert!(matches!(
            file_error(EXIT_TOO_LARGE, "/f", 5),
            Some(FileError::TooLarge { limit: 5, .. })
        ));
        assert!(matches!(
            file_error(EXIT_NOT_FOUND, "/f", 5),
            Some(FileError::NotFound(_))
        ));
        assert!(file_error(1, "/f", 5).is_none());
    }
}
