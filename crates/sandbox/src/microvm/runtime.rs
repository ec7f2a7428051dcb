//! Finding BoxLite's runtime (shim, guest agent, libkrunfw) for the pinned crate version. The
//! crate is built in stub mode (the workspace's `.cargo/config.toml`), so it embeds no runtime
//! and finds one through `BOXLITE_RUNTIME_DIR`. The places looked in are `stack`'s own
//! (src/backend/microvm/runtime.rs, which `scripts/install-deps.sh --microvm` installs for), so a
//! host where `stack` runs boxes is one where a runner does.

use std::path::{Path, PathBuf};

use crate::verdict::BOXLITE_VERSION;

/// Where `scripts/install-deps.sh --microvm` installs the runtime.
pub const INSTALLED_RUNTIME: &str = "/opt/stack-tools/boxlite-0.10.8/runtime";

/// The files a usable runtime dir holds.
const REQUIRED: &[&str] = &["boxlite-shim", "boxlite-guest", "libkrunfw.so.5"];

fn complete(dir: &Path) -> bool {
    REQUIRED.iter().all(|f| dir.join(f).is_file())
}

/// No complete BoxLite runtime of the pinned version was found.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("BoxLite's {BOXLITE_VERSION} runtime (boxlite-shim, boxlite-guest, libkrunfw) is not installed: run `scripts/install-deps.sh --microvm` (or set BOXLITE_RUNTIME_DIR to a {BOXLITE_VERSION} runtime dir)")]
pub struct RuntimeMissing;

/// The runtime dir to use: `$BOXLITE_RUNTIME_DIR` when it holds a runtime, else the installed
/// one, else the cache BoxLite's Python wheel extracts itself to
/// (`~/.local/share/boxlite/runtimes/v0.10.8-*`).
pub fn find() -> Result<PathBuf, RuntimeMissing> {
    if let Some(v) = std::env::var_os("BOXLITE_RUNTIME_DIR") {
        if let Some(dir) = std::env::split_paths(&v).find(|d| complete(d)) {
            return Ok(dir);
        }
    }
    let installed = PathBuf::from(INSTALLED_RUNTIME);
    if complete(&installed) {
        return Ok(installed);
    }
    let cache = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".local/share/boxlite/runtimes"))
        .and_then(|c| std::fs::read_dir(c).ok());
    let prefix = format!("v{BOXLITE_VERSION}-");
    let mut dirs: Vec<PathBuf> = cache
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .filter(|d| complete(d))
        .collect();
    dirs.sort();
    dirs.pop().ok_or(RuntimeMissing)
}

/// Finds the runtime and points `BOXLITE_RUNTIME_DIR` at it, for the `boxlite` crate (which also
/// finds its helpers, mke2fs and the shim, only through the environment). Call it before any
/// thread starts: the environment is process-wide.
pub fn export() -> Result<PathBuf, RuntimeMissing> {
    let dir = find()?;
    // Written only when it changes: another thread may be reading the environment.
    if std::env::var_os("BOXLITE_RUNTIME_DIR").as_deref() != Some(dir.as_os_str()) {
        std::env::set_var("BOXLITE_RUNTIME_DIR", &dir);
    }
    Ok(dir)
}
