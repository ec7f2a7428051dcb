//! Preflight checks, shared by `stack doctor` and the start of `stack up`: host ports (naming the
//! holder's pid, command and user), programs, users, state dir, free disk, KVM.

use std::net::TcpListener;
use std::path::Path;

use serde::Serialize;

use crate::backend::select::Boxes;
use crate::backend::{Backend, Problem};
use crate::spec::Stack;
use crate::supervisor::identity;

/// A process listening on a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortHolder {
    /// Its pid.
    pub pid: u32,
    /// Its command line.
    pub command: String,
    /// Its user.
    pub user: String,
}

/// Who listens on TCP `port` (any address), as far as this user may see (see
/// [`crate::sys::listeners_of`]).
pub fn port_holders(port: u16) -> Vec<PortHolder> {
    crate::sys::listeners_of(port)
        .into_iter()
        .map(|pid| PortHolder {
            pid,
            command: identity::cmdline(pid),
            user: identity::user_of(pid),
        })
        .collect()
}

/// Can we bind 127.0.0.1:`port` right now?
pub fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name, e.g. `port 25432 (postgres)`.
    pub name: String,
    /// `ok`, `warn` or `fail`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
    /// What to do (empty when ok).
    pub fix: String,
}

impl Check {
    fn ok(name: String, detail: String) -> Check {
        Check {
            name,
            status: "ok",
            detail,
            fix: String::new(),
        }
    }
}

/// The doctor's whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check in order.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != "fail")
    }
}

/// Port problems for `services`: each host port must be free or held by that service's own
/// running instance (`own(service)` tells whether it runs).
pub fn port_problems(
    stack: &Stack,
    services: &[String],
    own: impl Fn(&str) -> bool,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for name in services {
        let Some(svc) = stack.services.get(name) else {
            continue;
        };
        if own(name) {
            continue;
        }
        for (pname, port) in &svc.ports {
            if port_free(*port) {
                continue;
            }
            let holders = port_holders(*port);
            let who = if holders.is_empty() {
                "another process (not visible to this user)".to_string()
            } else {
                holders
                    .iter()
                    .map(|h| format!("pid {} ({}, user {})", h.pid, h.command, h.user))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push(Problem {
                service: name.clone(),
                message: format!("port {port} (`ports.{pname}`) is in use by {who}"),
                fix: format!(
                    "stop that process{}, or change `ports.{pname}` in {}",
                    holders
                        .first()
                        .map(|h| format!(" (`kill {}`)", h.pid))
                        .unwrap_or_default(),
                    crate::spec::display_path(&svc.file, &stack.root).display()
                ),
            });
        }
    }
    out
}

/// Free bytes on the filesystem holding `path` (or its nearest existing ancestor).
pub fn free_bytes(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|a| a.exists())?;
    let st = nix::sys::statvfs::statvfs(existing).ok()?;
    Some(st.blocks_available() as u64 * st.fragment_size() as u64)
}

/// The microVM verdict: can this host boot a box (the boot probe, not just /dev/kvm)?
fn microvm_check(boxes: &Boxes) -> Check {
    let name = "microvm".to_string();
    let kvm = Path::new("/dev/kvm").exists();
    match boxes {
        Boxes::Probed(v) if v.ok => Check::ok(
            name,
            format!(
                "a test box booted and ran a command in {:.1}s{}: services with an image run as microVMs",
                v.elapsed_ms as f64 / 1000.0,
                if v.cached { format!(" (probed at {}, this host boot)", v.at) } else { String::new() }
            ),
        ),
        Boxes::Probed(v) => Check {
            name,
            // `auto` falls back to processes, so this is a warning, not a failure.
            status: "warn",
            detail: format!(
                "no box can boot here ({:.1}s probe{}): {}",
                v.elapsed_ms as f64 / 1000.0,
                if v.cached { format!(", cached from {}", v.at) } else { String::new() },
                v.reason
            ),
            fix: if v.fix.is_empty() {
                "nothing to do: `backend: auto` runs every service as a process here; on a host with hardware KVM (VT-x/AMD-V) services with an image run as microVMs".into()
            } else {
                v.fix.clone()
            },
        },
        Boxes::NotBuilt if kvm => Check::ok(
            name,
            "/dev/kvm exists, but this build has no microVM backend (cargo feature `microvm`); every service runs as a process".into(),
        ),
        Boxes::NotBuilt => Check::ok(
            name,
            "no /dev/kvm and no microVM backend in this build: every service runs as a process".into(),
        ),
        Boxes::NoImages => Check::ok(name, "no service has an `image:`: nothing to boot".into()),
        Boxes::Unknown => Check::ok(name, "not probed (`--backend process`)".into()),
    }
}

/// Runs every check for `services` of `stack` on `backend`.
pub fn diagnose(
    stack: &Stack,
    backend: &dyn Backend,
    services: &[String],
    boxes: &Boxes,
    own: impl Fn(&str) -> bool,
) -> Report {
    let mut checks = Vec::new();
    let port_fail = port_problems(stack, services, &own);
    for name in services {
        let Some(svc) = stack.services.get(name) else {
            continue;
        };
        for (pname, port) in &svc.ports {
            let label = format!("port {port} ({name}.{pname})");
            match port_fail
                .iter()
                .find(|p| p.service == *name && p.message.starts_with(&format!("port {port} ")))
            {
                Some(p) => checks.push(Check {
                    name: label,
                    status: "fail",
                    detail: p.message.clone(),
                    fix: p.fix.clone(),
                }),
                None if own(name) => {
                    checks.push(Check::ok(label, "held by this stack's own service".into()))
                }
                None => checks.push(Check::ok(label, "free".into())),
            }
        }
        let problems = backend.preflight(svc);
        if problems.is_empty() {
            checks.push(Check::ok(format!("{name}: programs"), "installed".into()));
        }
        for p in problems {
            checks.push(Check {
                name: format!("{name}: preflight"),
                status: "fail",
                detail: p.message,
                fix: p.fix,
            });
        }
    }
    // The state dir: writable, with room to spare.
    let state = &stack.state_dir;
    let probe_dir = state.ancestors().find(|a| a.exists()).unwrap_or(state);
    let writable = nix::unistd::access(probe_dir, nix::unistd::AccessFlags::W_OK).is_ok();
    checks.push(if writable {
        Check::ok(
            "state dir".into(),
            format!("{} is writable", state.display()),
        )
    } else {
        Check {
            name: "state dir".into(),
            status: "fail",
            detail: format!("{} is not writable", probe_dir.display()),
            fix: "fix its permissions or pass `--state-dir DIR`".into(),
        }
    });
    match free_bytes(state) {
        Some(b) if b < 1 << 30 => checks.push(Check {
            name: "disk".into(),
            status: if b < 200 << 20 { "fail" } else { "warn" },
            detail: format!("{} MiB free under {}", b >> 20, probe_dir.display()),
            fix: "free some disk space: PostgreSQL alone needs about 40 MiB on first start".into(),
        }),
        Some(b) => checks.push(Check::ok("disk".into(), format!("{} GiB free", b >> 30))),
        None => {}
    }
    checks.push(microvm_check(boxes));
    Report { checks }
}
