//! The microVM boot probe's verdict, as `stack` caches it (docs/microvm.md, "Choosing the
//! backend"): `<state dir>/boxlite/boot-probe.json`, written once per host boot by the first
//! command that starts services (or by `stack doctor`). A runner reads it to decide whether its
//! sandboxes can be microVMs; it never boots a probe of its own, so one host boot pays for one
//! probe, whoever asks.
//!
//! Only the fields a runner needs are read, and unknown ones are ignored: the file is `stack`'s,
//! and this is a reader of it, not a second writer.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The `boxlite` crate version the verdict must have been measured with: the one this workspace
/// pins (`=0.10.8`, in the root crate and in this crate's `microvm` feature).
pub const BOXLITE_VERSION: &str = "0.10.8";

/// A boot probe's verdict, as cached by `stack`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BootVerdict {
    /// A test box booted and ran a command.
    pub ok: bool,
    /// Why not, in plain words (empty when ok).
    #[serde(default)]
    pub reason: String,
    /// What to do about it on this host (empty when ok, or when there is nothing to fix).
    #[serde(default)]
    pub fix: String,
    /// The host boot it was measured in.
    pub boot_id: String,
    /// The BoxLite version probed.
    pub boxlite: String,
    /// When it was measured (RFC 3339).
    #[serde(default)]
    pub at: String,
}

/// Why no verdict applies to this host boot.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    /// No verdict file: nothing has probed since the state dir was made.
    #[error("no boot-probe verdict at {}: `stack up` or `stack doctor` (built with `--features microvm`) probes once per host boot and caches it there", path.display())]
    Missing {
        /// The file looked for.
        path: PathBuf,
    },
    /// A verdict from another host boot or another BoxLite version: it says nothing about now.
    #[error("the boot-probe verdict at {} is stale ({why}): `stack doctor` (built with `--features microvm`) probes again", path.display())]
    Stale {
        /// The file.
        path: PathBuf,
        /// What does not match.
        why: String,
    },
    /// The file exists and cannot be read.
    #[error("cannot read the boot-probe verdict at {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a verdict.
    #[error("the boot-probe verdict at {} does not parse: delete it, and `stack doctor` probes again", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

/// This host boot's id (`/proc/sys/kernel/random/boot_id`), as `stack` keys its cache.
pub fn current_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The verdict cached at `path`, if it applies to this host boot (`boot_id`) and this BoxLite.
pub fn read(path: &Path, boot_id: &str) -> Result<BootVerdict, VerdictError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VerdictError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(VerdictError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let verdict: BootVerdict =
        serde_json::from_slice(&bytes).map_err(|source| VerdictError::Malformed {
            path: path.to_path_buf(),
            source,
        })?;
    let why = if verdict.boot_id != boot_id {
        Some(format!("measured in another host boot, at {}", verdict.at))
    } else if verdict.boxlite != BOXLITE_VERSION {
        Some(format!(
            "measured with BoxLite {}, this build has {BOXLITE_VERSION}",
            verdict.boxlite
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(VerdictError::Stale {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A verdict file exactly as `stack` writes it (`BootVerdict` in src/backend/select.rs,
    /// serialized by the probe), for a host where no guest boots.
    const STACK_WRITES: &str = r#"{
  "ok": false,
  "reason": "this host's KVM is `kvm-pvm`, a software nested hypervisor that cannot run a stock guest kernel",
  "fix": "",
  "elapsed_ms": 13412,
  "boot_id": "4f0c2f9e-2b1a-4d4e-9a63-0d7f3c1e2a11",
  "boxlite": "0.10.8",
  "at": "2026-12-01T01:40:02Z"
}"#;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("boot-probe.json");
        std::fs::write(&path, text).expect("write verdict");
        path
    }

    #[test]
    fn reads_the_verdict_stack_caches_for_this_boot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = write(tmp.path(), STACK_WRITES);
        let v = read(&path, "4f0c2f9e-2b1a-4d4e-9a63-0d7f3c1e2a11").expect("fresh verdict");
        assert!(!v.ok);
        assert!(v.reason.contains("kvm-pvm"), "{}", v.reason);
        assert_eq!(v.at, "2026-12-01T01:40:02Z");
    }

    #[test]
    fn a_verdict_of_another_boot_or_boxlite_does_not_apply() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = write(tmp.path(), STACK_WRITES);
        let e = read(&path, "another-boot").expect_err("stale");
        assert!(matches!(e, VerdictError::Stale { .. }), "{e:?}");
        assert!(e.to_string().contains("another host boot"), "{e}");
        let other = STACK_WRITES.replace("\"0.10.8\"", "\"0.11.0\"");
        let path = write(tmp.path(), &other);
        let e = read(&path, "4f0c2f9e-2b1a-4d4e-9a63-0d7f3c1e2a11").expect_err("stale");
        assert!(e.to_string().contains("BoxLite 0.11.0"), "{e}");
    }

    #[test]
    fn a_missing_or_broken_verdict_says_how_to_get_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let e = read(&tmp.path().join("none.json"), "b").expect_err("missing");
        assert!(matches!(e, VerdictError::Missing { .. }));
        assert!(e.to_string().contains("stack doctor"), "{e}");
        let path = write(tmp.path(), "{\"ok\": tru");
        let e = read(&path, "b").expect_err("malformed");
        assert!(matches!(e, VerdictError::Malformed { .. }), "{e:?}");
    }

    #[test]
    fn this_hosts_boot_id_is_known() {
        // Every Linux host has one; an empty id would match no verdict and hide the cache.
        assert_eq!(current_boot_id().len(), 36, "{}", current_boot_id());
    }
}
