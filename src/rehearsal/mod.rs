//! Rehearsals: end-to-end round trips run on the local stack, each verified with checksums,
//! reported as a table of phases with their timings (and as JSON), and failed on any mismatch.
//! [`migration`] moves sandboxes between runners and back.

pub mod migration;

use std::time::{Duration, Instant};

use serde::Serialize;

/// One phase of a rehearsal: what it did and how long it took.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Its name.
    pub name: String,
    /// How long it took.
    pub ms: u64,
    /// What it did or found.
    pub detail: String,
}

/// The phases of a rehearsal so far, timed as they end.
#[derive(Debug, Default)]
pub struct Phases {
    done: Vec<Phase>,
    since: Option<Instant>,
}

impl Phases {
    /// Starts timing the next phase.
    pub fn start(&mut self) {
        self.since = Some(Instant::now());
    }

    /// Ends the phase started last, as `name` with `detail`.
    pub fn end(&mut self, name: &str, detail: String) {
        let took = self.since.take().map(|s| s.elapsed()).unwrap_or_default();
        self.done.push(Phase {
            name: name.into(),
            ms: millis(took),
            detail,
        });
    }

    /// The phases ended so far.
    pub fn list(&self) -> &[Phase] {
        &self.done
    }
}

/// Whole milliseconds.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A duration as a person reads it: `840 ms`, `1.24 s`.
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

/// The phase table: one line per phase.
pub fn table(phases: &[Phase]) -> String {
    let width = phases
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:width$}  {:>9}  result\n", "phase", "time");
    for p in phases {
        out.push_str(&format!(
            "{:width$}  {:>9}  {}\n",
            p.name,
            human(p.ms),
            p.detail
        ));
    }
    out
}

/// The `q`-quantile (0..=1) of `values`, nearest rank; 0 when empty.
pub fn quantile(values: &[u64], q: f64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_durations() {
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[30, 10, 20], 0.5), 20);
        assert_eq!(quantile(&[30, 10, 20], 0.95), 30);
        assert_eq!(quantile(&[5], 0.5), 5);
        assert_eq!(human(840), "840 ms");
        assert_eq!(human(1240), "1.24 s");
        let t = table(&[Phase {
            name: "create".into(),
            ms: 12,
            detail: "3 sandboxes".into(),
        }]);
        assert_eq!(
            t,
            "phase       time  result\ncreate     12 ms  3 sandboxes\n"
        );
    }
}
