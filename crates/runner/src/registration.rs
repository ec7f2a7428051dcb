//! Registration with the control plane and the heartbeat after it: register, then heartbeat every
//! 2 s with the sandbox count. A control plane that is down is retried with a capped backoff; one
//! that answers a heartbeat with 404 or 401 (restarted and lost the runner, or a new token) gets
//! the registration again. None of this blocks the sandbox API: the runner serves it throughout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::sandboxes::Sandboxes;
use crate::settings::Settings;
use crate::wire;

/// Between heartbeats.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// First wait after a failed registration, doubled up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// One call's timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How one call to the control plane went.
enum Outcome {
    Ok,
    /// 404 or 401: the control plane does not know this runner (any more).
    Unknown,
    /// Unreachable, or another status: worth retrying as it is.
    Failed(String),
}

/// Registers and heartbeats for as long as the runner runs; `registered` is set once the control
/// plane has taken the first registration.
pub fn spawn(settings: &Settings, sandboxes: Arc<Sandboxes>, registered: Arc<AtomicBool>) {
    let client = match reqwest::Client::builder().timeout(CALL_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("runner: cannot build the control plane's HTTP client: {e}");
            return;
        }
    };
    let caller = Caller {
        client,
        base: settings.control_plane.clone(),
        token: settings.token.clone(),
    };
    let register = wire::Register {
        name: settings.name.clone(),
        api_url: format!("http://127.0.0.1:{}", settings.port),
        cpu: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_mib: memory_mib(),
        disk_gib: disk_gib(&settings.home),
        capacity: settings.capacity,
    };
    tokio::spawn(async move {
        let heartbeat_url = format!("/api/runners/{}/heartbeat", register.name);
        let mut backoff = BACKOFF_START;
        let mut last_error = None::<String>;
        loop {
            match caller.post("/api/runners/register", &register).await {
                Outcome::Ok => {
                    eprintln!("runner: registered with {}", caller.base);
                    registered.store(true, Ordering::Release);
                    backoff = BACKOFF_START;
                    last_error = None;
                }
                failed => {
                    let why = match failed {
                        Outcome::Failed(why) => why,
                        _ => "the control plane refused the registration (401/404): check RUNNER_TOKEN".into(),
                    };
                    report(&mut last_error, why);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
            // Heartbeats until the control plane no longer knows this runner.
            loop {
                tokio::time::sleep(HEARTBEAT_EVERY).await;
                let beat = wire::Heartbeat {
                    sandboxes: sandboxes.count(),
                };
                match caller.post(&heartbeat_url, &beat).await {
                    Outcome::Ok => last_error = None,
                    Outcome::Unknown => {
                        eprintln!("runner: the control plane no longer knows this runner: registering again");
                        break;
                    }
                    // Down or restarting: the next heartbeat, at the same pace, tries again.
                    Outcome::Failed(why) => report(&mut last_error, why),
                }
            }
        }
    });
}

/// Prints a control-plane problem once, not on every retry.
fn report(last: &mut Option<String>, why: String) {
    if last.as_deref() != Some(why.as_str()) {
        eprintln!("runner: {why} (retrying; sandboxes are still served)");
        *last = Some(why);
    }
}

struct Caller {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Caller {
    async fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Outcome {
        let url = format!("{}{path}", self.base);
        let sent = self
            .client
            .post(&url)
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Outcome::Ok,
            Ok(r) if matches!(r.status().as_u16(), 401 | 404) => Outcome::Unknown,
            Ok(r) => Outcome::Failed(format!(
                "the control plane answered {} to {url}",
                r.status()
            )),
            Err(e) => Outcome::Failed(format!("cannot reach the control plane at {url}: {e}")),
        }
    }
}

/// The host's memory, from /proc/meminfo.
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kib| kib / 1024)
}

/// Space available under `path`.
fn disk_gib(path: &std::path::Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct we own; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >> 30
}
