//! Finding BoxLite's runtime (shim, guest agent, libkrunfw) for the pinned crate version. The
//! `boxlite` crate is built in stub mode (`.cargo/config.toml`), so it embeds no runtime: it
//! must be told where one is, through `BOXLITE_RUNTIME_DIR`. `stack` finds it itself, so users
//! never set the variable.

use std::path::{Path, PathBuf};

/// The `boxlite` crate version this build links (pinned in Cargo.toml); its runtime must match.
pub const BOXLITE_VERSION: &str = "0.10.8";

/// Where `scripts/install-deps.sh --microvm` installs the runtime.
pub const INSTALLED_RUNTIME: &str = "/opt/stack-tools/boxlite-0.10.8/runtime";

/// The files a usable runtime dir holds.
const REQUIRED: &[&str] = &["boxlite-shim", "boxlite-guest", "libkrunfw.so.5"];

fn complete(dir: &Path) -> bool {
    REQUIRED.iter().all(|f| dir.join(f).is_file())
}

/// The runtime dir to use: `$BOXLITE_RUNTIME_DIR` when it holds a runtime, else the installed
/// one, else the cache the BoxLite Python wheel extracts itself to
/// (`~/.local/share/boxlite/runtimes/v0.10.8-*`).
pub fn find() -> Result<PathBuf, RuntimeMissing> {
    if let Some(v) = std::env::var_os("BOXLITE_RUNTIME_DIR") {
        for dir in std::env::split_paths(&v) {
            if complete(&dir) {
                return Ok(dir);
            }
        }
    }
    let installed = PathBuf::from(INSTALLED_RUNTIME);
    if complete(&installed) {
        return Ok(installed);
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cache = PathBuf::from(home).join(".local/share/boxlite/runtimes");
        let prefix = format!("v{BOXLITE_VERSION}-");
        if let Ok(entries) = std::fs::read_dir(&cache) {
            let mut dirs: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .filter(|d| complete(d))
                .collect();
            dirs.sort();
            if let Some(d) = dirs.pop() {
                return Ok(d);
            }
        }
    }
    Err(RuntimeMissing)
}

/// No complete BoxLite runtime of the pinned version was found ([`INSTALL_FIX`] says what to do).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "BoxLite's {BOXLITE_VERSION} runtime (boxlite-shim, boxlite-guest, libkrunfw) is not installed"
)]
pub struct RuntimeMissing;

/// What to do when [`find`] fails.
pub const INSTALL_FIX: &str =
    "run `scripts/install-deps.sh --microvm` (or set BOXLITE_RUNTIME_DIR to a 0.10.8 runtime dir)";

/// Points `BOXLITE_RUNTIME_DIR` at the runtime found, for the `boxlite` crate. Call it before any
/// thread starts (`main` does): the environment is process-wide.
pub fn export() {
    if let Ok(dir) = find() {
        std::env::set_var("BOXLITE_RUNTIME_DIR", dir);
    }
}

/// Does this process's environment point BoxLite at a complete runtime?
pub fn exported() -> bool {
    std::env::var_os("BOXLITE_RUNTIME_DIR")
        .is_some_and(|v| std::env::split_paths(&v).any(|d| complete(&d)))
}
