//! `stack up --watch` (or `stack watch`): follows the `watch:` globs of the stack's components
//! and, on a change, rebuilds and restarts only the component whose files changed, re-gating its
//! dependents. A failed build is shown and the running instance keeps serving.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use globset::GlobSet;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::build::{self, Freshness};
use crate::engine::{Builds, Engine, EngineError};

/// How long the files must stay quiet before a change is acted on: an editor's save, a `git
/// checkout` or a code generator touches many files within a few milliseconds.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why watching could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No service has `watch:`.
    #[error("nothing to watch: no service of this stack has `watch:`; add globs of its sources, e.g. `watch: [\"src/**\"]`")]
    NothingToWatch,
    /// The operating system's file watcher failed.
    #[error("cannot watch {}: {source}\n  if the system's limit of watches is reached, raise it (`sysctl fs.inotify.max_user_watches=524288`) or narrow the `watch:` globs", .path.display())]
    Notify {
        /// What was to be watched.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
}

/// One line per rebuild or restart, as the watch loop prints it.
#[derive(Debug, Clone, PartialEq)]
pub enum Reaction {
    /// Rebuilt and restarted (with its dependents).
    Rebuilt {
        /// The component.
        service: String,
        /// Seconds the build took.
        build_s: f64,
        /// Seconds until it (and its dependents) were ready again.
        restart_s: f64,
    },
    /// Restarted without a build (a watched file that is no build input changed).
    Restarted {
        /// The component.
        service: String,
        /// Seconds until it was ready again.
        restart_s: f64,
    },
    /// The build or the restart failed; what runs keeps running.
    Failed {
        /// The component.
        service: String,
        /// What went wrong, with the build's last lines.
        error: String,
    },
}

/// The directories to watch for `globs`: each glob's literal base, recursively only when the
/// rest of the glob reaches below it (so `Cargo.lock` does not watch every directory of the
/// project, `target/` included).
fn watch_roots(root: &Path, globs: &[String]) -> BTreeMap<PathBuf, RecursiveMode> {
    let mut out: BTreeMap<PathBuf, RecursiveMode> = BTreeMap::new();
    for g in globs {
        let base = build::literal_base(g);
        let rest = Path::new(g).strip_prefix(&base).unwrap_or(Path::new(g));
        let deep = rest.components().count() > 1 || g.contains("**");
        let dir = root.join(&base);
        // A base that does not exist yet is watched, whole, from its nearest existing ancestor.
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .map_or_else(|| root.to_path_buf(), Path::to_path_buf);
        let mode = if deep || existing != dir {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        let entry = out.entry(existing).or_insert(mode);
        if mode == RecursiveMode::Recursive {
            *entry = RecursiveMode::Recursive;
        }
    }
    out
}

/// The services whose `watch:` globs match one of `changed` (paths relative to the root).
pub fn affected(watches: &BTreeMap<String, GlobSet>, changed: &[PathBuf]) -> Vec<String> {
    watches
        .iter()
        .filter(|(_, globs)| changed.iter().any(|p| globs.is_match(p)))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Watches until `cancel`, calling `report` once per reaction.
pub async fn run(
    engine: &Engine,
    cancel: CancellationToken,
    mut report: impl FnMut(&Reaction),
) -> Result<(), WatchError> {
    let stack = engine.stack();
    let watched: Vec<&crate::spec::ServiceSpec> = stack
        .services
        .values()
        .filter(|s| !s.watch.is_empty())
        .collect();
    if watched.is_empty() {
        return Err(WatchError::NothingToWatch);
    }
    // Compiled once: the watcher's callback matches every path of every event.
    let watches: BTreeMap<String, GlobSet> = watched
        .iter()
        .map(|s| (s.name.clone(), build::glob_set(&s.watch)))
        .collect();
    let all: Vec<String> = watched.iter().flat_map(|s| s.watch.clone()).collect();
    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let (root, state_dir, globs) = (
        stack.root.clone(),
        stack.state_dir.clone(),
        build::glob_set(&all),
    );
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(e) = event else { return };
        // Only a watched file wakes the loop: logs written under the state dir, or a build's
        // output, must not keep the debounce from ever settling.
        for p in e.paths {
            if p.starts_with(&state_dir) {
                continue;
            }
            if let Ok(rel) = p.strip_prefix(&root) {
                if globs.is_match(rel) {
                    // The receiver is gone only when watching ends.
                    let _ = tx.send(rel.to_path_buf());
                }
            }
        }
    })
    .map_err(|source| WatchError::Notify {
        path: stack.root.clone(),
        source,
    })?;
    for (dir, mode) in watch_roots(&stack.root, &all) {
        watcher
            .watch(&dir, mode)
            .map_err(|source| WatchError::Notify { path: dir, source })?;
    }
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            p = rx.recv() => match p { Some(p) => p, None => return Ok(()) },
        };
        let mut changed = vec![first];
        // Collect until the files have been quiet for DEBOUNCE.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                p = rx.recv() => match p { Some(p) => changed.push(p), None => break },
                _ = tokio::time::sleep(DEBOUNCE) => break,
            }
        }
        for service in affected(&watches, &changed) {
            if cancel.is_cancelled() {
                return Ok(());
            }
            report(&react(engine, &service, cancel.child_token()).await);
        }
    }
}

/// Rebuilds `service` when a build input changed, then restarts it and its dependents.
async fn react(engine: &Engine, service: &str, cancel: CancellationToken) -> Reaction {
    let stack = engine.stack();
    let name = vec![service.to_string()];
    let failed = |e: EngineError| Reaction::Failed {
        service: service.to_string(),
        error: e.to_string(),
    };
    let svc = &stack.services[service];
    let stale = match build::freshness(engine.layout(), &stack.root, svc) {
        Ok(f) => f != Freshness::UpToDate,
        Err(e) => return failed(EngineError::Build(e)),
    };
    let mut build_s = None;
    if stale {
        match engine.build(&name).await {
            Ok(s) => build_s = Some(s),
            Err(e) => return failed(e),
        }
    }
    let t0 = Instant::now();
    if let Err(e) = engine.restart(&name, Builds::WhenChanged, cancel).await {
        return failed(e);
    }
    let restart_s = t0.elapsed().as_secs_f64();
    match build_s {
        Some(build_s) => Reaction::Rebuilt {
            service: service.to_string(),
            build_s,
            restart_s,
        },
        None => Reaction::Restarted {
            service: service.to_string(),
            restart_s,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_reaches_only_the_services_whose_globs_match_it() {
        let watches = BTreeMap::from([
            (
                "api".to_string(),
                build::glob_set(&["crates/api/**".into()]),
            ),
            (
                "proxy".to_string(),
                build::glob_set(&["crates/proxy/**".into(), "Cargo.lock".into()]),
            ),
        ]);
        let changed = |p: &[&str]| p.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(
            affected(&watches, &changed(&["crates/api/src/main.rs"])),
            ["api"]
        );
        assert_eq!(
            affected(&watches, &changed(&["Cargo.lock", "crates/api/x"])),
            ["api", "proxy"]
        );
        assert!(affected(&watches, &changed(&["README.md"])).is_empty());
    }

    #[test]
    fn missing_bases_are_watched_from_their_nearest_existing_ancestor() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(tmp.path().join("crates")).expect("mkdir");
        let roots = watch_roots(
            tmp.path(),
            &[
                "crates/api/**".into(),
                "Cargo.lock".into(),
                "crates/*.toml".into(),
            ],
        );
        assert_eq!(
            roots,
            BTreeMap::from([
                (tmp.path().to_path_buf(), RecursiveMode::NonRecursive),
                (tmp.path().join("crates"), RecursiveMode::Recursive),
            ])
        );
    }
}
