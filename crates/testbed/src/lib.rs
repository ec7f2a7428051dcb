//! What the integration tests of the platform's crates (`sandbox`, `runner`, `objectstore`)
//! share: a real `docker-registry` and a real Garage (S3) on free loopback ports, waits on conditions with deadlines (never bare
//! sleeps), the root check of tests that run runc, the benches' percentiles, and an "outside"
//! network namespace for the tests of a sandbox's outbound network ([`outside`]).

pub mod garage;
pub mod outside;
mod registry;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub use garage::Garage;
pub use registry::Registry;

/// Prints why a test skips and returns true when it must: tests that mount, create device nodes
/// or run runc need root (CI runs as root).
pub fn skip_unless_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return false;
    }
    eprintln!("{test}: skipped: needs root (overlayfs mounts, device nodes, runc)");
    true
}

/// Polls `cond` every 20 ms until it returns `Some`; panics naming `what` once `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port free at the time of the call, never handed out before by this test binary
/// (the kernel may give a just-released port again, to the next caller).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
        let port = l.local_addr().expect("local addr").port();
        if given.insert(port) {
            return port;
        }
    }
}

/// Timings of one thing measured again and again, for a bench's percentiles.
#[derive(Debug, Default, Clone)]
pub struct Samples(Vec<Duration>);

impl Samples {
    /// Adds one timing.
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The `p` percentile (0 to 1), nearest rank; zero when empty.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted
            .get(i.min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Samples {
    /// `over N: p50 X, p95 Y`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "over {}: p50 {:?}, p95 {:?}",
            self.0.len(),
            self.percentile(0.5),
            self.percentile(0.95)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        for ms in (1..=20).rev() {
            s.push(Duration::from_millis(ms));
        }
        assert_eq!(s.percentile(0.5), Duration::from_millis(11));
        assert_eq!(s.percentile(0.95), Duration::from_millis(19));
        assert_eq!(s.percentile(1.0), Duration::from_millis(20));
        assert_eq!(s.to_string(), "over 20: p50 11ms, p95 19ms");
        assert_eq!(Samples::default().percentile(0.5), Duration::ZERO);
    }
}
