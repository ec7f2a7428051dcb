//! The microVM boot probe: can this host actually boot a box? Opening /dev/kvm is not enough
//! (on a `kvm-pvm` host BoxLite's own KVM smoke test passes and every real guest dies), so the
//! probe boots a tiny busybox image and runs `true` in it, within a deadline. A verdict from a
//! real boot is cached for the host's boot (keyed by its boot id and the BoxLite version), so
//! `up` pays for it once per boot, not on every run.

use std::path::Path;
use std::time::{Duration, Instant};

use boxlite::{BoxCommand, BoxOptions, BoxliteOptions, BoxliteRuntime, RootfsSpec};
use nix::fcntl::{Flock, FlockArg};

use super::{image, runtime};
use crate::layout::Layout;
use crate::supervisor::record::{now_rfc3339, read_json, write_json};
use crate::sys::boot_id;

/// The longest a boot may take before the probe gives up.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub use crate::backend::select::BootVerdict as Verdict;

/// Is the host's KVM the `kvm-pvm` software nested hypervisor?
pub fn is_kvm_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

fn verdict(ok: bool, reason: String, fix: &str, t0: Instant) -> Verdict {
    Verdict {
        ok,
        reason,
        fix: fix.into(),
        elapsed_ms: t0.elapsed().as_millis() as u64,
        boot_id: boot_id(),
        boxlite: runtime::BOXLITE_VERSION.into(),
        at: now_rfc3339(),
        cached: false,
    }
}

/// A host that cannot boot guests has nothing to fix (processes serve everything): no fix.
const NO_FIX: &str = "";

/// Explains a failed boot in plain words, keeping BoxLite's own message.
fn explain(err: &str) -> (String, &'static str) {
    if is_kvm_pvm() {
        (
            format!("this host's KVM is `kvm-pvm`, a software nested hypervisor that cannot run a stock guest kernel: the VM dies with KVM_EXIT_INTERNAL_ERROR before the guest prints anything (BoxLite: {err})"),
            NO_FIX,
        )
    } else {
        (
            format!("a test box did not boot: {err}"),
            "check `dmesg` for KVM errors and the box's shim.stderr under the state dir's boxlite/probe/boxes/; or use `--backend process`",
        )
    }
}

fn fresh(v: &Verdict) -> bool {
    v.boot_id == boot_id() && v.boxlite == runtime::BOXLITE_VERSION
}

/// The cached verdict for this host boot, if a probe ran since the host booted.
pub fn cached(layout: &Layout) -> Option<Verdict> {
    let mut v = read_json::<Verdict>(&layout.boot_probe()).ok().flatten()?;
    v.cached = true;
    fresh(&v).then_some(v)
}

/// The verdict for this host boot: the cached one, or a fresh probe (cached when it got as far
/// as booting). Concurrent callers wait for one probe rather than booting twice.
pub async fn verdict_for_boot(layout: &Layout) -> Verdict {
    let path = layout.boot_probe();
    if let Some(v) = cached(layout) {
        return v;
    }
    let _ = std::fs::create_dir_all(layout.boxlite_dir());
    let lock_path = layout.boxlite_dir().join("probe.lock");
    let lock = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::create(lock_path).ok()?;
        Flock::lock(f, FlockArg::LockExclusive).ok()
    })
    .await
    .ok()
    .flatten();
    if let Some(v) = cached(layout) {
        return v;
    }
    let (v, definitive) = probe(layout, DEADLINE).await;
    if definitive {
        let _ = write_json(&path, &v);
    }
    drop(lock);
    v
}

/// Boots the probe image once (the process must have exported the runtime dir, see
/// [`runtime::export`]). Returns the verdict and whether it is definitive (a boot was
/// attempted), as opposed to something missing that an install fixes.
pub async fn probe(layout: &Layout, deadline: Duration) -> (Verdict, bool) {
    let t0 = Instant::now();
    let kvm = Path::new("/dev/kvm");
    if !kvm.exists() {
        return (
            verdict(
                false,
                "/dev/kvm does not exist: this host has no KVM".into(),
                NO_FIX,
                t0,
            ),
            true,
        );
    }
    if let Err(e) = std::fs::File::options().read(true).write(true).open(kvm) {
        return (
            verdict(
                false,
                format!("/dev/kvm cannot be opened for writing: {e}"),
                "add your user to the `kvm` group (`sudo usermod -aG kvm $USER`, then log in again)",
                t0,
            ),
            false,
        );
    }
    if let Err(e) = runtime::find() {
        return (
            verdict(false, e.to_string(), runtime::INSTALL_FIX, t0),
            false,
        );
    }
    if !runtime::exported() {
        // BoxLite finds its helpers (mke2fs, the shim) only through the environment, and
        // panics without them.
        return (
            verdict(
                false,
                "BOXLITE_RUNTIME_DIR is not set in this process".into(),
                "call `backend::microvm::runtime::export()` at start, before any thread (the `stack` binary does)",
                t0,
            ),
            false,
        );
    }
    let img = match image::build(
        &layout.boxlite_dir().join("probe-image"),
        Path::new(image::BUSYBOX),
    ) {
        Ok(p) => p,
        Err(e) => {
            return (
                verdict(false, e.to_string(), runtime::INSTALL_FIX, t0),
                false,
            )
        }
    };
    let home = layout.boxlite_dir().join("probe");
    // A probe home holds nothing worth keeping; a stale one from a killed probe is discarded.
    let _ = std::fs::remove_dir_all(&home);
    if let Err(e) = std::fs::create_dir_all(&home) {
        return (
            verdict(
                false,
                format!("cannot create {}: {e}", home.display()),
                "",
                t0,
            ),
            false,
        );
    }
    let outcome = boot_once(&home, &img, deadline).await;
    let _ = std::fs::remove_dir_all(&home);
    match outcome {
        Ok(()) => (verdict(true, String::new(), "", t0), true),
        Err(e) => {
            let (reason, fix) = explain(&e.to_string());
            (verdict(false, reason, fix, t0), true)
        }
    }
}

/// Why the test box did not boot and run `true`.
#[derive(Debug, thiserror::Error)]
pub enum TestBootError {
    /// BoxLite failed (its runtime, the box's creation or start, the exec).
    #[error(transparent)]
    Boxlite(#[from] boxlite::BoxliteError),
    /// `true` ran in the box and failed.
    #[error("`true` in the box exited with {code}")]
    TrueFailed {
        /// Its exit code.
        code: i32,
    },
    /// The boot took longer than the probe's deadline.
    #[error("the test box did not boot within {}s", .after.as_secs())]
    Timeout {
        /// The deadline.
        after: Duration,
    },
}

async fn boot_once(home: &Path, img: &Path, deadline: Duration) -> Result<(), TestBootError> {
    let rt = BoxliteRuntime::new(BoxliteOptions {
        home_dir: home.to_path_buf(),
        ..BoxliteOptions::default()
    })?;
    let opts = BoxOptions {
        rootfs: RootfsSpec::RootfsPath(img.to_string_lossy().into_owned()),
        cpus: Some(1),
        memory_mib: Some(128),
        cmd: Some(vec!["/bin/sleep".into(), "3600".into()]),
        auto_delete: Some(0),
        ..BoxOptions::default()
    };
    let attempt = async {
        let bx = rt.create(opts, Some("stack-boot-probe".into())).await?;
        let id = bx.id().to_string();
        let run = async {
            bx.start().await?;
            let exec = bx
                .exec(BoxCommand::new("true").timeout(Duration::from_secs(5)))
                .await?;
            let r = exec.wait().await?;
            if r.success() {
                Ok(())
            } else {
                Err(TestBootError::TrueFailed { code: r.exit_code })
            }
        };
        let r = run.await;
        let _ = rt.remove(&id, true).await;
        r
    };
    let r = match tokio::time::timeout(deadline, attempt).await {
        Ok(r) => r,
        Err(_) => Err(TestBootError::Timeout { after: deadline }),
    };
    let _ = rt.shutdown(Some(5)).await;
    r
}
