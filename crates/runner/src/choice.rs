//! Which box driver runs this runner's sandboxes (`RUNNER_DRIVER`): runc, or BoxLite microVMs
//! where the runner is built with the `microvm` feature and the host's boot probe says boxes
//! boot. The verdict is the one `stack` caches per host boot (`RUNNER_BOOT_PROBE`), the same one
//! that decides whether the infrastructure's services run as boxes, so on one host both tiers
//! agree. Decided once, before the runner starts serving.

use std::path::PathBuf;

use sandbox::verdict::BootVerdict;
use sandbox::{BoxDriver, Driver, DriverConfig, DriverError, Home, Outbound};

/// `RUNNER_DRIVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverSetting {
    /// BoxLite where boxes boot, runc elsewhere (the default).
    Auto,
    /// runc, whatever the host can do.
    Runc,
    /// BoxLite, or refuse to start.
    Microvm,
}

impl DriverSetting {
    /// `auto`, `runc` or `microvm`.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "auto" => Some(Self::Auto),
            "runc" => Some(Self::Runc),
            "microvm" => Some(Self::Microvm),
            _ => None,
        }
    }
}

/// The driver chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// runc containers.
    Runc,
    /// BoxLite microVMs.
    Microvm,
}

impl DriverKind {
    /// `runc` or `microvm`, as the runner reports it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Microvm => "microvm",
        }
    }
}

/// What this runner knows about running boxes on this host.
#[derive(Debug, Clone)]
pub enum Boxes {
    /// It is built without the `microvm` feature.
    NotBuilt,
    /// The boot probe's verdict for this host boot, or why there is none to read.
    Probed(Result<BootVerdict, String>),
    /// The verdict says boxes boot, and BoxLite's runtime is not installed for this process.
    NoRuntime(String),
}

/// The driver and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The driver.
    pub kind: DriverKind,
    /// Why, for the startup line.
    pub why: String,
}

/// `RUNNER_DRIVER=microvm` on a host or build where boxes cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RUNNER_DRIVER=microvm, but {reason}\n  fix: {fix}")]
pub struct Refusal {
    /// Why boxes cannot run.
    pub reason: String,
    /// What to do.
    pub fix: String,
}

/// Where `RUNNER_DRIVER=microvm` is refused, the way out that always works.
const USE_RUNC: &str =
    "set RUNNER_DRIVER=runc (or auto, which uses runc wherever boxes cannot boot)";

/// Picks the driver for `setting`. `boxes` is asked only when the setting is not `runc`.
pub fn choose(setting: DriverSetting, boxes: impl FnOnce() -> Boxes) -> Result<Choice, Refusal> {
    if setting == DriverSetting::Runc {
        return Ok(Choice {
            kind: DriverKind::Runc,
            why: "RUNNER_DRIVER=runc".into(),
        });
    }
    let (reason, fix) = match boxes() {
        Boxes::Probed(Ok(v)) if v.ok => {
            return Ok(Choice {
                kind: DriverKind::Microvm,
                why: format!("the boot probe passed (at {})", v.at),
            })
        }
        Boxes::NotBuilt => (
            "this runner is built without the `microvm` feature".to_string(),
            format!("build it with `cargo build -p runner --features microvm`; or {USE_RUNC}"),
        ),
        Boxes::Probed(Ok(v)) => (
            format!("boxes cannot boot on this host: {}", v.reason),
            if v.fix.is_empty() {
                USE_RUNC.to_string()
            } else {
                format!("{}; or {USE_RUNC}", v.fix)
            },
        ),
        Boxes::Probed(Err(why)) => (
            format!("whether boxes boot here is unknown: {why}"),
            USE_RUNC.to_string(),
        ),
        Boxes::NoRuntime(why) => (why, USE_RUNC.to_string()),
    };
    match setting {
        DriverSetting::Microvm => Err(Refusal { reason, fix }),
        _ => Ok(Choice {
            kind: DriverKind::Runc,
            why: reason,
        }),
    }
}

/// What this runner, as built, knows about boxes here: the verdict cached at `boot_probe`
/// (`RUNNER_BOOT_PROBE`) for this host boot and, when it says boxes boot, BoxLite's runtime
/// found and exported for the `boxlite` crate. Call it before any thread starts (the export
/// sets an environment variable).
pub fn boxes(boot_probe: Option<&PathBuf>) -> Boxes {
    if !cfg!(feature = "microvm") {
        return Boxes::NotBuilt;
    }
    let Some(path) = boot_probe else {
        return Boxes::Probed(Err("RUNNER_BOOT_PROBE is not set: point it at the stack's `${state_dir}/boxlite/boot-probe.json` (the runners' service files do)".into()));
    };
    let verdict = sandbox::verdict::read(path, &sandbox::verdict::current_boot_id())
        .map_err(|e| crate::error::describe(&e));
    match verdict {
        Ok(v) if v.ok => match export_runtime() {
            Ok(()) => Boxes::Probed(Ok(v)),
            Err(why) => Boxes::NoRuntime(why),
        },
        other => Boxes::Probed(other),
    }
}

#[cfg(feature = "microvm")]
fn export_runtime() -> Result<(), String> {
    sandbox::microvm::runtime::export()
        .map(drop)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "microvm"))]
fn export_runtime() -> Result<(), String> {
    Err("this runner is built without the `microvm` feature".into())
}

/// Why the chosen driver could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The driver failed to open the runner's home.
    #[error("cannot open the runner's home with the {driver} driver")]
    Home {
        /// `runc` or `microvm`.
        driver: &'static str,
        /// Why (boxed: the runc driver's errors are large, and this one is returned once).
        #[source]
        source: Box<DriverError>,
    },
    /// A microVM driver chosen in a build without it (never: [`boxes`] says `NotBuilt`).
    #[cfg(not(feature = "microvm"))]
    #[error("this runner is built without the `microvm` feature: set RUNNER_DRIVER=runc")]
    NotBuilt,
}

/// Opens the chosen driver on the runner's home; runc sandboxes of runner `name` go in their
/// own cgroup subtree and get `outbound` network access as `RUNNER_OUTBOUND` says, BoxLite
/// pulls from the stack's `registry` and gives its boxes its own network (egress through its
/// gvproxy), whatever `outbound` says.
pub fn open(
    kind: DriverKind,
    home: PathBuf,
    name: &str,
    registry: &str,
    outbound: Outbound,
) -> Result<BoxDriver, OpenError> {
    let home = Home::new(home);
    let failed = |source: DriverError| OpenError::Home {
        driver: kind.name(),
        source: Box::new(source),
    };
    match kind {
        DriverKind::Runc => {
            let config = DriverConfig {
                // One cgroup subtree per runner: two runners on a host never share a parent.
                cgroup_parent: format!("stack-sandboxes/{name}"),
                outbound,
                ..DriverConfig::default()
            };
            Driver::open(home, config)
                .map(BoxDriver::Runc)
                .map_err(|e| failed(e.into()))
        }
        #[cfg(feature = "microvm")]
        DriverKind::Microvm => {
            use sandbox::microvm::{MicrovmConfig, MicrovmDriver, BOOT_TIMEOUT};
            let config = MicrovmConfig {
                registry: registry.to_string(),
                boot_timeout: BOOT_TIMEOUT,
            };
            MicrovmDriver::open(home, config)
                .map(BoxDriver::Microvm)
                .map_err(failed)
        }
        #[cfg(not(feature = "microvm"))]
        DriverKind::Microvm => {
            let _ = (registry, outbound);
            Err(OpenError::NotBuilt)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(ok: bool, reason: &str, fix: &str) -> BootVerdict {
        BootVerdict {
            ok,
            reason: reason.into(),
            fix: fix.into(),
            boot_id: "b".into(),
            boxlite: sandbox::verdict::BOXLITE_VERSION.into(),
            at: "2026-12-01T01:40:02Z".into(),
        }
    }

    const PVM: &str = "this host's KVM is `kvm-pvm`, a software nested hypervisor";

    #[test]
    fn runc_is_runc_without_asking_about_boxes() {
        let c = choose(DriverSetting::Runc, || panic!("boxes asked for runc")).expect("runc");
        assert_eq!(c.kind, DriverKind::Runc);
    }

    #[test]
    fn auto_uses_boxes_only_where_the_probe_passed() {
        let passed = choose(DriverSetting::Auto, || {
            Boxes::Probed(Ok(verdict(true, "", "")))
        })
        .expect("auto");
        assert_eq!(passed.kind, DriverKind::Microvm);
        assert!(passed.why.contains("boot probe passed"), "{}", passed.why);
        for boxes in [
            Boxes::NotBuilt,
            Boxes::Probed(Ok(verdict(false, PVM, ""))),
            Boxes::Probed(Err("no boot-probe verdict at /x".into())),
            Boxes::NoRuntime("BoxLite's 0.10.8 runtime is not installed".into()),
        ] {
            let c = choose(DriverSetting::Auto, || boxes.clone()).expect("auto never refuses");
            assert_eq!(c.kind, DriverKind::Runc, "{boxes:?}");
            // It says why, in the words of what it found.
            let said = match &boxes {
                Boxes::NotBuilt => "without the `microvm` feature",
                Boxes::Probed(Ok(_)) => "kvm-pvm",
                Boxes::Probed(Err(_)) => "no boot-probe verdict at /x",
                Boxes::NoRuntime(_) => "not installed",
            };
            assert!(c.why.contains(said), "{boxes:?}: {}", c.why);
        }
    }

    #[test]
    fn microvm_where_boxes_cannot_boot_is_refused_with_the_reason_and_runc_as_the_way_out() {
        let e = choose(DriverSetting::Microvm, || {
            Boxes::Probed(Ok(verdict(false, PVM, "")))
        })
        .expect_err("refused");
        assert_eq!(e.reason, format!("boxes cannot boot on this host: {PVM}"));
        assert_eq!(e.fix, USE_RUNC);
        let text = e.to_string();
        assert!(
            text.starts_with("RUNNER_DRIVER=microvm, but boxes cannot boot"),
            "{text}"
        );
        assert!(text.contains("RUNNER_DRIVER=runc"), "{text}");

        // The host's own fix comes first, when it has one.
        let e = choose(DriverSetting::Microvm, || {
            Boxes::Probed(Ok(verdict(
                false,
                "/dev/kvm cannot be opened",
                "add your user to `kvm`",
            )))
        })
        .expect_err("refused");
        assert_eq!(e.fix, format!("add your user to `kvm`; or {USE_RUNC}"));

        let e = choose(DriverSetting::Microvm, || Boxes::NotBuilt).expect_err("refused");
        assert!(e.fix.contains("--features microvm"), "{e}");
        let e = choose(DriverSetting::Microvm, || {
            Boxes::Probed(Err("no boot-probe verdict at /x".into()))
        })
        .expect_err("refused");
        assert!(
            e.reason.contains("unknown: no boot-probe verdict at /x"),
            "{e}"
        );
        let e = choose(DriverSetting::Microvm, || {
            Boxes::NoRuntime("not installed".into())
        })
        .expect_err("refused");
        assert_eq!(e.reason, "not installed");
    }

    #[test]
    fn microvm_where_the_probe_passed_is_microvm() {
        let c = choose(DriverSetting::Microvm, || {
            Boxes::Probed(Ok(verdict(true, "", "")))
        })
        .expect("microvm");
        assert_eq!(c.kind, DriverKind::Microvm);
    }

    #[test]
    fn settings_values_parse() {
        assert_eq!(DriverSetting::parse("auto"), Some(DriverSetting::Auto));
        assert_eq!(DriverSetting::parse("runc"), Some(DriverSetting::Runc));
        assert_eq!(
            DriverSetting::parse("microvm"),
            Some(DriverSetting::Microvm)
        );
        assert_eq!(DriverSetting::parse("boxlite"), None);
        assert_eq!(DriverSetting::parse("Auto"), None);
    }

    /// What this build reads from the host: without the feature it never looks; with it, a
    /// missing verdict file is reported as such (never taken as a pass).
    #[test]
    fn the_verdict_is_read_from_the_stacks_cache() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let missing = tmp.path().join("boot-probe.json");
        let built = cfg!(feature = "microvm");
        let got = boxes(Some(&missing));
        if built {
            assert!(
                matches!(&got, Boxes::Probed(Err(why)) if why.contains("no boot-probe verdict at")),
                "{got:?}"
            );
            let unset = boxes(None);
            assert!(
                matches!(&unset, Boxes::Probed(Err(why)) if why.contains("RUNNER_BOOT_PROBE is not set")),
                "{unset:?}"
            );
        } else {
            assert!(matches!(got, Boxes::NotBuilt), "{got:?}");
        }
        // A failed verdict for this very boot is read as it is.
        let text = serde_json::json!({
            "ok": false, "reason": PVM, "fix": "", "elapsed_ms": 1,
            "boot_id": sandbox::verdict::current_boot_id(),
            "boxlite": sandbox::verdict::BOXLITE_VERSION, "at": "now",
        });
        std::fs::write(&missing, text.to_string()).expect("write");
        let got = boxes(Some(&missing));
        if built {
            assert!(
                matches!(&got, Boxes::Probed(Ok(v)) if !v.ok && v.reason == PVM),
                "{got:?}"
            );
        } else {
            assert!(matches!(got, Boxes::NotBuilt), "{got:?}");
        }
    }
}
