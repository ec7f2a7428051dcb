//! The reset tiers, lightest first: what each touches, derived from the stack's own services and
//! the tables its migrations create, and the doing of it. Nothing outside the state dir is ever
//! touched, and an interrupted reset is finished by running the same tier again.

use std::fmt;
use std::path::{Path, PathBuf};

use std::collections::BTreeSet;

use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineError};
use crate::layout::Layout;
use crate::schema::{self, Migration, SchemaError};
use crate::seed::{self, SeedError, Seeded};
use crate::spec::Stack;

/// The tables of runtime rows: what users and runners create while the platform runs. A soft
/// reset empties these and keeps every other table of the schema.
pub const RUNTIME_TABLES: [&str; 5] = [
    "sandboxes",
    "snapshots",
    "sandbox_backups",
    "sandbox_migrations",
    "audit_log",
];

/// How much a reset destroys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Empty the runtime tables; everything keeps running.
    Soft,
    /// Drop and reload the schema, re-seed, empty the buckets; services keep running.
    Hard,
    /// Stop everything and delete the state dir.
    Nuke,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Soft => "soft",
            Self::Hard => "hard",
            Self::Nuke => "nuke",
        })
    }
}

/// Why a reset failed or was refused.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// The migrations could not be read, or the database not reached or reloaded.
    #[error(transparent)]
    Schema(#[from] SchemaError),
    /// Re-seeding failed.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The runtime tables could not be emptied.
    #[error("truncate failed: {0}\n  is the schema loaded? run `stack schema load`")]
    Truncate(#[source] sqlx::Error),
    /// A bucket could not be emptied.
    #[error("emptying bucket {bucket} failed: {source}\n  is the S3 service up? try `stack up minio`, then run this reset again")]
    EmptyBucket {
        /// The bucket.
        bucket: String,
        /// The S3 error.
        #[source]
        source: crate::s3::S3Error,
    },
    /// `--state-dir` points at something that is not a state dir.
    #[error("{} does not look like a stack state dir (no stack.lock, no run/): refusing to delete it", .0.display())]
    NotAStateDir(PathBuf),
    /// The state dir holds the project.
    #[error("the state dir {} contains the project itself: refusing to delete it", .0.display())]
    HoldsTheProject(PathBuf),
    /// Stopping or starting the services failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A component's data dir still has something mounted in it (a sandbox its runner did not
    /// unmount): deleting through it could reach what the mount shows.
    #[error("cannot delete the data of `{service}`: {} is still mounted\n  stop it (`stack down {service}`), check `grep {} /proc/self/mountinfo`, then run this reset again", .mount.display(), .dir.display())]
    StillMounted {
        /// The component.
        service: String,
        /// Its data dir.
        dir: PathBuf,
        /// A mount point under it.
        mount: PathBuf,
    },
    /// A component's data could not be deleted.
    #[error("cannot delete {}: {source}\n  check its permissions, then run this reset again", .path.display())]
    DeleteData {
        /// The data dir.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state dir could not be deleted.
    #[error("cannot delete {}: {source}\n  check its permissions, then run `stack reset --nuke --yes` again", .path.display())]
    Delete {
        /// The state dir.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What a tier will do, one step a line, for the user to read before it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The tier.
    pub tier: Tier,
    /// The steps, in order.
    pub steps: Vec<String>,
}

/// The tables the soft tier empties and keeps: the runtime tables the migrations create, and
/// every other table they create.
pub fn split_tables(files: &[Migration]) -> (Vec<String>, Vec<String>) {
    let (mut runtime, kept): (Vec<String>, Vec<String>) = schema::tables(files)
        .into_iter()
        .partition(|t| RUNTIME_TABLES.contains(&t.as_str()));
    runtime.sort_by_key(|t| RUNTIME_TABLES.iter().position(|r| r == t));
    (runtime, kept)
}

/// The platform's components (services built from source, `build:`) and what depends on them:
/// a hard reset starts them again on an empty state, as their state goes with the schema (a
/// runner's sandboxes belong to the sandboxes table it drops).
pub fn components(stack: &Stack) -> BTreeSet<String> {
    let built: Vec<String> = stack
        .services
        .values()
        .filter(|s| s.build.is_some())
        .map(|s| s.name.clone())
        .collect();
    if built.is_empty() {
        return BTreeSet::new();
    }
    crate::graph::dependents_closure(stack, &built)
}

/// The services a tier leaves running: every long-running service of the stack but `except`.
fn running_services<'a>(stack: &'a Stack, except: &BTreeSet<String>) -> Vec<&'a str> {
    stack
        .services
        .values()
        .filter(|s| !s.is_task() && !except.contains(&s.name))
        .map(|s| s.name.as_str())
        .collect()
}

/// Does the stack have an S3 store whose buckets the seed fills?
fn has_buckets(stack: &Stack) -> bool {
    stack
        .services
        .values()
        .any(|s| s.exports.contains_key("S3_ENDPOINT"))
}

/// What `tier` will do to `stack`, whose migrations are `files`.
pub fn plan(tier: Tier, stack: &Stack, layout: &Layout, files: &[Migration]) -> Plan {
    let restarted = match tier {
        Tier::Hard => components(stack),
        Tier::Soft | Tier::Nuke => BTreeSet::new(),
    };
    let running = running_services(stack, &restarted);
    let still_running = if running.is_empty() {
        "nothing is running to stop".to_string()
    } else {
        format!("{} keep running", running.join(", "))
    };
    let steps = match tier {
        Tier::Soft => {
            let (runtime, kept) = split_tables(files);
            vec![
                format!("truncate {} (identities restart)", runtime.join(", ")),
                format!("keep {}", kept.join(", ")),
                still_running,
            ]
        }
        Tier::Hard => {
            let mut steps = vec![
                format!(
                    "DROP SCHEMA public CASCADE: every table of the schema ({}) and the schema ledger",
                    schema::tables(files).len()
                ),
                format!(
                    "reload {} ({} migrations), then re-seed (region, users, organizations, admin API key)",
                    schema::MIGRATIONS_DIR,
                    files.len()
                ),
            ];
            if has_buckets(stack) {
                steps.push(format!(
                    "delete every object in the buckets {}",
                    seed::BUCKETS.join(", ")
                ));
            }
            if !restarted.is_empty() {
                let names: Vec<&str> = restarted.iter().map(String::as_str).collect();
                steps.insert(
                    0,
                    format!(
                        "stop {} and delete their data (a runner's sandboxes, caches and records)",
                        names.join(", ")
                    ),
                );
                steps.push(format!("start {} again", names.join(", ")));
            }
            steps.push(still_running);
            steps
        }
        Tier::Nuke => vec![
            "stop every service (dependents first)".into(),
            format!(
                "delete {} (all data, logs, records and secrets)",
                layout.root().display()
            ),
            "nothing outside it is touched; the next `stack up` is a cold start".into(),
        ],
    };
    Plan { tier, steps }
}

/// Empties the runtime tables of the database at `url`.
pub async fn soft(url: &str, files: &[Migration]) -> Result<(), ResetError> {
    let (runtime, _) = split_tables(files);
    if runtime.is_empty() {
        return Ok(());
    }
    let mut c = schema::connect(url, schema::CONNECT_TIMEOUT).await?;
    sqlx::raw_sql(&format!(
        "TRUNCATE {} RESTART IDENTITY CASCADE",
        runtime.join(", ")
    ))
    .execute(&mut c)
    .await
    .map_err(ResetError::Truncate)?;
    Ok(())
}

/// What a hard reset did.
#[derive(Debug, Clone, Default)]
pub struct HardReport {
    /// Migrations reloaded.
    pub migrations: usize,
    /// What the seed added back.
    pub seeded: Seeded,
    /// Objects deleted per bucket, in [`seed::BUCKETS`] order.
    pub emptied: Vec<(String, usize)>,
    /// Components stopped, emptied and started again.
    pub restarted: Vec<String>,
}

/// Stops the platform's [`components`] and deletes their data, drops and reloads the schema of
/// the database at `url`, re-seeds it, empties the buckets, and starts the components again.
pub async fn hard(
    engine: &Engine,
    url: &str,
    files: &[Migration],
    cancel: CancellationToken,
) -> Result<HardReport, ResetError> {
    let (stack, layout) = (engine.stack(), engine.layout());
    let restarted: Vec<String> = components(stack).into_iter().collect();
    if !restarted.is_empty() {
        engine.down(&restarted).await?;
        for name in &restarted {
            delete_data(layout, name)?;
        }
    }
    let mut c = schema::connect(url, schema::CONNECT_TIMEOUT).await?;
    schema::drop_all(&mut c).await?;
    let loaded = schema::load(&mut c, files).await?;
    let seeded = seed::seed_stack(stack, layout, url, None).await?;
    let mut emptied = Vec::new();
    let exports = crate::exports::Exports::new(stack, layout);
    if let Some(client) = exports.s3_client().map_err(SeedError::from)? {
        for bucket in seed::BUCKETS {
            let n = crate::s3::empty_bucket(&client, bucket)
                .await
                .map_err(|source| ResetError::EmptyBucket {
                    bucket: bucket.to_string(),
                    source,
                })?;
            emptied.push((bucket.to_string(), n));
        }
    }
    if !restarted.is_empty() {
        engine.up(&restarted, cancel).await?;
    }
    Ok(HardReport {
        migrations: loaded.applied.len(),
        seeded,
        emptied,
        restarted,
    })
}

/// Deletes `service`'s data dir, refusing while anything is mounted under it.
fn delete_data(layout: &Layout, service: &str) -> Result<(), ResetError> {
    let dir = layout.data_dir(service);
    if let Some(mount) = crate::sys::mounts_under(&dir).into_iter().next() {
        return Err(ResetError::StillMounted {
            service: service.to_string(),
            dir,
            mount,
        });
    }
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ResetError::DeleteData {
            path: dir,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Refuses to delete `state_dir` unless it is a stack state dir (or empty) that does not hold
/// the project at `project_root`: a wrong `--state-dir` must not cost anyone their files.
pub fn check_deletable(state_dir: &Path, project_root: &Path) -> Result<(), ResetError> {
    let looks_like_state = state_dir.join("stack.lock").exists() || state_dir.join("run").is_dir();
    let empty = std::fs::read_dir(state_dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !looks_like_state && !empty {
        return Err(ResetError::NotAStateDir(state_dir.to_path_buf()));
    }
    if state_dir == project_root || project_root.starts_with(state_dir) {
        return Err(ResetError::HoldsTheProject(state_dir.to_path_buf()));
    }
    Ok(())
}

/// Stops every service of `engine`'s stack, then deletes `layout`'s state dir.
pub async fn nuke(engine: &Engine, layout: &Layout, project_root: &Path) -> Result<(), ResetError> {
    let root = layout.root();
    if !root.exists() {
        return Ok(());
    }
    check_deletable(root, project_root)?;
    engine.down(&[]).await?;
    // remove_dir_all does not follow symlinks: a link inside the state dir is removed, not its
    // target.
    std::fs::remove_dir_all(root).map_err(|source| ResetError::Delete {
        path: root.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_tier_splits_the_schemas_own_tables() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(schema::MIGRATIONS_DIR);
        let files = schema::discover(&dir).expect("the project's migrations");
        let (runtime, kept) = split_tables(&files);
        assert_eq!(
            runtime,
            [
                "sandboxes",
                "snapshots",
                "sandbox_backups",
                "sandbox_migrations",
                "audit_log"
            ]
        );
        assert_eq!(
            kept,
            [
                "users",
                "organizations",
                "organization_users",
                "api_keys",
                "regions",
                "runners"
            ]
        );
        // Every runtime table is one the migrations create: a renamed table must not be
        // silently left out of a soft reset.
        assert_eq!(runtime, RUNTIME_TABLES);
    }

    #[test]
    fn nuke_refuses_a_directory_that_is_not_a_state_dir_or_holds_the_project() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("files");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("notes.txt"), "mine").expect("write");
        assert!(matches!(
            check_deletable(&dir, tmp.path()),
            Err(ResetError::NotAStateDir(_))
        ));
        std::fs::create_dir_all(dir.join("run")).expect("mkdir");
        let project = dir.join("project");
        assert!(matches!(
            check_deletable(&dir, &project),
            Err(ResetError::HoldsTheProject(_))
        ));
        assert!(check_deletable(&dir, tmp.path()).is_ok());
    }
}
