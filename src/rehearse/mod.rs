//! Rehearsals: round trips run end to end and checked, each a table of timed phases and a JSON
//! report. `backup`: backup, `reset --nuke`, `up`, restore, and every datum compared with what
//! it was. `schema`: the pending migrations applied to a copy of the database, with their times
//! and locks. `migration`: sandboxes moved between runners and back through the control plane,
//! every file checked by hash.

pub mod backup;
pub mod migration;
pub mod schema;

use std::time::Instant;

use serde::Serialize;

use crate::engine::EngineError;
use crate::reset::ResetError;
use crate::schema::SchemaError;
use crate::snapshot::SnapshotError;

/// One timed phase of a rehearsal.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Its name (`backup`, `reset --nuke`, ...).
    pub name: String,
    /// Milliseconds it took.
    pub ms: u64,
    /// What it did, in a few words.
    pub detail: String,
}

/// Times phases as they run.
#[derive(Debug, Default)]
pub struct Phases {
    /// The phases so far.
    pub done: Vec<Phase>,
}

impl Phases {
    /// Records a phase that started at `t0`.
    pub fn push(&mut self, name: &str, t0: Instant, detail: impl Into<String>) {
        self.done.push(Phase {
            name: name.to_string(),
            ms: t0.elapsed().as_millis() as u64,
            detail: detail.into(),
        });
    }
}

/// The phases as an aligned table.
pub fn render(phases: &[Phase]) -> String {
    let width = phases
        .iter()
        .map(|p| p.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  {:>9}  detail\n", "phase", "time");
    for p in phases {
        out.push_str(&format!(
            "{:<width$}  {:>7.2} s  {}\n",
            p.name,
            p.ms as f64 / 1000.0,
            p.detail
        ));
    }
    out
}

/// A duration as a person reads it: `840 ms`, `1.24 s`.
pub fn human(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
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

/// Why a rehearsal failed.
#[derive(Debug, thiserror::Error)]
pub enum RehearseError {
    /// Taking, verifying, restoring or fingerprinting data failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The nuke failed or was refused.
    #[error(transparent)]
    Reset(#[from] ResetError),
    /// Starting or stopping services failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The schema could not be inspected, or is refused.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// The data after the round trip differs from before.
    #[error("rehearsal failed: {} difference{} after the round trip:\n{}\n  the snapshot is kept in {}", .differences.len(), if .differences.len() == 1 { "" } else { "s" }, .differences.iter().map(|d| format!("  - {d}")).collect::<Vec<_>>().join("\n"), .snapshot)]
    Mismatch {
        /// What differs.
        differences: Vec<String>,
        /// Where the snapshot is.
        snapshot: String,
    },
    /// A migration failed on the copy (the copy was dropped; the real database is untouched).
    #[error("schema rehearsal failed on the copy {copy} (dropped; {database} is untouched): {source}\n  fix the migration, then run `stack schema rehearse` again")]
    Migration {
        /// The copy's name.
        copy: String,
        /// The real database.
        database: String,
        /// The migration's error.
        #[source]
        source: SchemaError,
    },
    /// The copy's ledger does not show every migration applied.
    #[error("schema rehearsal: the copy's ledger does not explain its schema after the migrations:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Ledger(Vec<String>),
    /// The copy of the database could not be made or dropped.
    #[error("schema rehearsal: {what}: {detail}\n  check `stack status postgres`; a leftover copy is dropped by the next rehearsal")]
    Copy {
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
    /// The rehearsal's own known data could not be written or removed.
    #[error("rehearsal: {what}: {detail}")]
    KnownData {
        /// What was being done.
        what: String,
        /// Why it failed.
        detail: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_durations_as_people_read_them() {
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[30, 10, 20], 0.5), 20);
        assert_eq!(quantile(&[30, 10, 20], 0.95), 30);
        assert_eq!(quantile(&[5], 0.5), 5);
        assert_eq!(human(840), "840 ms");
        assert_eq!(human(1240), "1.24 s");
    }
}
