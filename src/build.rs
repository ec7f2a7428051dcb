//! Building native components (`build:`): the content hash of a component's inputs, the build
//! itself (its output in `logs/<svc>.build.log`), and the record of the last successful build
//! (`run/<svc>.build.json`), which lets a warm `up` build nothing.

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::layout::Layout;
use crate::spec::{build::glob, BuildSpec, ServiceSpec};
use crate::supervisor::record::{now_rfc3339, read_json, write_json};
use crate::supervisor::spawn::{Group, Nice, Spawn};

/// Directory names never walked for inputs: version control and the stack's own state.
const NEVER_INPUTS: &[&str] = &[".git", ".stack"];

/// Why a component could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An input could not be read.
    #[error("cannot read the build input {}: {source}\n  check its permissions, or leave it out of `build.inputs`", .path.display())]
    Input {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The build command could not be started.
    #[error(
        "cannot run the build command `{program}`: {source}\n  install it, or fix `build.command`"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The build ran and failed; its output is in `log`.
    #[error("its build failed ({status}); the last build still runs, if there is one")]
    Failed {
        /// How the command ended.
        status: String,
        /// The whole output.
        log: PathBuf,
    },
    /// The same build (command, directory and inputs) ran for another component, and failed.
    #[error("its build is `{with}`'s, which failed ({status}); the last build still runs, if there is one")]
    SharedFailed {
        /// The component whose build ran.
        with: String,
        /// How the command ended.
        status: String,
        /// Its output.
        log: PathBuf,
    },
    /// Its log could not be written.
    #[error("cannot write the build log {}: {source}\n  check the state dir's permissions and free space (`stack doctor`)", .path.display())]
    Log {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The last successful build of a component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The hash of its inputs' content and its command then.
    pub hash: String,
    /// The hash of its inputs' paths, sizes and modification times then: while it holds, a
    /// warm `up` reads no input's content.
    #[serde(default)]
    pub stamp: String,
    /// When it finished.
    pub at: String,
    /// How long it took.
    pub duration_ms: u64,
}

/// The files a build reads: every file under the project `root` matching one of `globs`,
/// sorted, relative to the root.
pub fn input_files(root: &Path, globs: &[String]) -> Result<Vec<PathBuf>, BuildError> {
    let set = glob_set(globs);
    let mut files = BTreeSet::new();
    for (base, deep) in walk_bases(globs) {
        let dir = root.join(&base);
        if !dir.exists() {
            continue;
        }
        let walk = walkdir::WalkDir::new(&dir)
            .max_depth(if deep { usize::MAX } else { 1 })
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| {
                !(e.file_type().is_dir()
                    && NEVER_INPUTS.contains(&e.file_name().to_string_lossy().as_ref()))
            });
        for entry in walk {
            let entry = entry.map_err(|e| BuildError::Input {
                path: e.path().map_or_else(|| dir.clone(), Path::to_path_buf),
                source: e.into(),
            })?;
            if entry.file_type().is_dir() {
                continue;
            }
            if let Ok(rel) = entry.path().strip_prefix(root) {
                if set.is_match(rel) {
                    files.insert(rel.to_path_buf());
                }
            }
        }
    }
    Ok(files.into_iter().collect())
}

/// Where [`input_files`] walks for `globs`: each glob's literal base, and whether below its own
/// entries (`true` when the rest of a glob reaches deeper). `Cargo.lock` reads the root's own
/// entries, not every directory of the project (`target/` and its hundred thousand files).
fn walk_bases(globs: &[String]) -> std::collections::BTreeMap<PathBuf, bool> {
    let mut bases: std::collections::BTreeMap<PathBuf, bool> = Default::default();
    for g in globs {
        let base = literal_base(g);
        let rest = Path::new(g).strip_prefix(&base).unwrap_or(Path::new(g));
        let deep = rest.components().count() > 1 || g.contains("**");
        *bases.entry(base).or_default() |= deep;
    }
    bases
}

/// The directory a glob's matches all lie under: its leading components without a wildcard
/// (`crates/api/**/*.rs` → `crates/api`), so that only that part of the project is walked.
pub fn literal_base(glob: &str) -> PathBuf {
    let mut base = PathBuf::new();
    let parts: Vec<&str> = glob.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last || part.contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(part);
    }
    base
}

/// The hash of what decides whether a build is still good: its command, and each input file's
/// path and content.
pub fn input_hash(root: &Path, spec: &BuildSpec) -> Result<String, BuildError> {
    content_hash(root, spec, &input_files(root, &spec.inputs)?)
}

/// [`input_hash`] of the input `files` already found.
fn content_hash(root: &Path, spec: &BuildSpec, files: &[PathBuf]) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for arg in &spec.command {
        h.update(arg.as_bytes());
        h.update([0]);
    }
    h.update([1]);
    let mut buf = vec![0u8; 64 * 1024];
    for rel in files {
        let path = root.join(rel);
        let read_err = |source| BuildError::Input {
            path: path.clone(),
            source,
        };
        h.update(rel.to_string_lossy().as_bytes());
        h.update([0]);
        if std::fs::symlink_metadata(&path)
            .map_err(read_err)?
            .file_type()
            .is_symlink()
        {
            // A link's target is what the link is; following it could leave the project.
            let target = std::fs::read_link(&path).map_err(read_err)?;
            h.update(target.to_string_lossy().as_bytes());
        } else {
            let mut f = std::fs::File::open(&path).map_err(read_err)?;
            loop {
                let n = f.read(&mut buf).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        h.update([0]);
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// The cheap check before [`input_hash`]: each input's path, size, inode and modification time,
/// and the command. Equal stamps mean unchanged inputs; different stamps say nothing (a file
/// touched without a change), and the content decides.
pub fn input_stamp(root: &Path, spec: &BuildSpec) -> Result<String, BuildError> {
    stamp(root, spec, &input_files(root, &spec.inputs)?)
}

/// [`input_stamp`] of the input `files` already found.
fn stamp(root: &Path, spec: &BuildSpec, files: &[PathBuf]) -> Result<String, BuildError> {
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    for arg in &spec.command {
        h.update(arg.as_bytes());
        h.update([0]);
    }
    for rel in files {
        let path = root.join(rel);
        let m = std::fs::symlink_metadata(&path).map_err(|source| BuildError::Input {
            path: path.clone(),
            source,
        })?;
        h.update(rel.to_string_lossy().as_bytes());
        for n in [m.size(), m.ino(), m.mtime() as u64, m.mtime_nsec() as u64] {
            h.update(n.to_le_bytes());
        }
    }
    Ok(hex::encode(&h.finalize()[..16]))
}

/// What a component's build needs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Its last successful build had these very inputs.
    UpToDate,
    /// Its inputs (or command) changed, or it was never built: build it.
    Stale,
}

/// Compares `svc`'s inputs now with its last successful build.
pub fn freshness(layout: &Layout, root: &Path, svc: &ServiceSpec) -> Result<Freshness, BuildError> {
    let Some(spec) = &svc.build else {
        return Ok(Freshness::UpToDate);
    };
    let path = layout.build_record(&svc.name);
    let Some(mut last) = read_json::<BuildRecord>(&path).ok().flatten() else {
        return Ok(Freshness::Stale);
    };
    // One walk of the inputs; their content is read only when the stamp differs.
    let files = input_files(root, &spec.inputs)?;
    let stamp = stamp(root, spec, &files)?;
    if stamp == last.stamp {
        return Ok(Freshness::UpToDate);
    }
    if content_hash(root, spec, &files)? != last.hash {
        return Ok(Freshness::Stale);
    }
    // Touched, not changed: remember the new stamp, so the next `up` reads no content again.
    // Unrecorded, it only reads the content again.
    last.stamp = stamp;
    let _ = write_json(&path, &last);
    Ok(Freshness::UpToDate)
}

/// Runs `svc`'s build, its output replacing its build log's. On success the inputs' hash is
/// recorded (computed before the build ran, so an input edited during the build makes the next
/// `up` build again). Returns how long it took.
pub async fn run(layout: &Layout, root: &Path, svc: &ServiceSpec) -> Result<Duration, BuildError> {
    let Some(spec) = &svc.build else {
        return Ok(Duration::ZERO);
    };
    let record = run_recorded(layout, root, &svc.name, spec, None).await?;
    Ok(Duration::from_millis(record.duration_ms))
}

/// The builds of one command (`up`, `restart --build`, a change under `watch`): components whose
/// builds are the same command in the same directory over the same inputs share one run, as
/// `api` and `proxy` do (`cargo build -p control-plane`). Run side by side, they would only
/// queue on cargo's lock and each find the other's work done.
#[derive(Debug, Default)]
pub struct Batch {
    runs: std::sync::Mutex<std::collections::HashMap<String, Arc<SharedRun>>>,
    /// The nice value its builds run at, when not the spawner's.
    nice: Option<i32>,
}

/// One shared build, once it ended: the component it ran for, and its record or how it failed
/// (with its log).
type SharedRun = tokio::sync::OnceCell<(String, Result<BuildRecord, (String, PathBuf)>)>;

impl Batch {
    /// A batch whose builds yield the CPU to the services starting beside them: the builds of a
    /// cold `up` run while the infrastructure starts, and a component waits for its
    /// dependencies anyway (measured: cargo finding two crates fresh took 0.6 s of CPU in the
    /// first second of the default stack's cold start, where PostgreSQL's initdb runs).
    pub fn background() -> Batch {
        Batch {
            nice: Some(BACKGROUND_NICE),
            ..Batch::default()
        }
    }

    /// Builds `svc`, or waits for the same build already running for another component of this
    /// batch and records its result as `svc`'s own (its build log says whose run it was).
    pub async fn run(
        &self,
        layout: &Layout,
        root: &Path,
        svc: &ServiceSpec,
    ) -> Result<Duration, BuildError> {
        let Some(spec) = &svc.build else {
            return Ok(Duration::ZERO);
        };
        let key = serde_json::json!([spec.command, spec.working_dir, spec.inputs]).to_string();
        let shared = Arc::clone(
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key)
                .or_default(),
        );
        // This component's own failure, with its cause, when the run was its own.
        let mut own: Option<BuildError> = None;
        let (ran_for, outcome) = shared
            .get_or_init(|| async {
                let outcome = match run_recorded(layout, root, &svc.name, spec, self.nice).await {
                    Ok(record) => Ok(record),
                    Err(e) => {
                        let failed = match &e {
                            BuildError::Failed { status, log } => (status.clone(), log.clone()),
                            other => (other.to_string(), layout.build_log(&svc.name)),
                        };
                        own = Some(e);
                        Err(failed)
                    }
                };
                (svc.name.clone(), outcome)
            })
            .await;
        if let Some(e) = own {
            return Err(e);
        }
        match outcome {
            Err((status, log)) => Err(BuildError::SharedFailed {
                with: ran_for.clone(),
                status: status.clone(),
                log: log.clone(),
            }),
            Ok(record) if *ran_for == svc.name => Ok(Duration::from_millis(record.duration_ms)),
            Ok(record) => {
                // Unrecorded, the next `up` builds again: slower, never wrong.
                let _ = std::fs::create_dir_all(layout.logs_dir()).and_then(|()| {
                    std::fs::write(
                        layout.build_log(&svc.name),
                        format!("built by the same run as `{ran_for}`: see {ran_for}.build.log\n"),
                    )
                });
                let _ = std::fs::create_dir_all(layout.run_dir())
                    .and_then(|()| write_json(&layout.build_record(&svc.name), record));
                Ok(Duration::from_millis(record.duration_ms))
            }
        }
    }
}

/// The nice value of a [`Batch::background`] build.
const BACKGROUND_NICE: i32 = 10;

/// Runs the build `spec` of component `name` (see [`run`]), at `nice` when given, and returns
/// its record.
async fn run_recorded(
    layout: &Layout,
    root: &Path,
    name: &str,
    spec: &BuildSpec,
    nice: Option<i32>,
) -> Result<BuildRecord, BuildError> {
    let files = input_files(root, &spec.inputs)?;
    let (hash, stamp) = (
        content_hash(root, spec, &files)?,
        stamp(root, spec, &files)?,
    );
    let log = layout.build_log(name);
    let log_err = |source| BuildError::Log {
        path: log.clone(),
        source,
    };
    std::fs::create_dir_all(layout.logs_dir()).map_err(log_err)?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&log)
        .map_err(log_err)?;
    let err = out.try_clone().map_err(log_err)?;
    let t0 = Instant::now();
    let mut spawn = Spawn::argv(&spec.command);
    if let Some(n) = nice {
        spawn = spawn.nice(Nice::InChild(n));
    }
    let spawned = spawn
        .current_dir(&spec.working_dir)
        .stdout(out.into())
        .stderr(err.into())
        // Its own group, and gone with `stack`: a build in flight when `up` is interrupted
        // must not outlive it (the handle kills it when dropped).
        .group(Group::Own)
        .die_with_parent()
        .spawn_async();
    let spawn_err = |source| BuildError::Spawn {
        program: spec.command[0].clone(),
        source,
    };
    let status = spawned
        .map_err(spawn_err)?
        .wait()
        .await
        .map_err(spawn_err)?;
    let took = t0.elapsed();
    if !status.success() {
        return Err(BuildError::Failed {
            status: describe(status),
            log,
        });
    }
    let record = BuildRecord {
        hash,
        stamp,
        at: now_rfc3339(),
        duration_ms: took.as_millis() as u64,
    };
    // Unrecorded, the next `up` builds again: slower, never wrong.
    let _ = std::fs::create_dir_all(layout.run_dir())
        .and_then(|()| write_json(&layout.build_record(name), &record));
    Ok(record)
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "no status".into(),
    }
}

/// The last `n` lines of a build log.
pub fn tail(log: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// `globs` compiled once into one matcher of paths relative to the project root. The spec
/// loader checked every glob; one that still fails to compile matches nothing.
pub fn glob_set(globs: &[String]) -> globset::GlobSet {
    let mut set = globset::GlobSetBuilder::new();
    for compiled in globs.iter().filter_map(|g| glob(g).ok()) {
        set.add(compiled);
    }
    set.build().unwrap_or_else(|_| globset::GlobSet::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(inputs: &[&str]) -> BuildSpec {
        BuildSpec {
            command: vec!["true".into()],
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            working_dir: PathBuf::from("."),
        }
    }

    fn component(root: &Path, name: &str, command: &str) -> ServiceSpec {
        ServiceSpec {
            name: name.into(),
            file: root.join(format!("services/{name}.yaml")),
            description: None,
            ports: Default::default(),
            environment: Default::default(),
            depends_on: Default::default(),
            process: None,
            image: None,
            boxed: None,
            healthcheck: None,
            restart: crate::spec::RestartPolicy::OnFailure,
            init: Vec::new(),
            configs: Vec::new(),
            exports: Default::default(),
            data_dir: root.join(".stack/data").join(name),
            build: Some(BuildSpec {
                command: vec!["sh".into(), "-c".into(), command.into()],
                inputs: vec!["src/**".into()],
                working_dir: root.to_path_buf(),
            }),
            watch: Vec::new(),
            info: None,
        }
    }

    #[tokio::test]
    async fn a_build_in_a_fresh_state_dir_is_recorded_and_shared_runs_once() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/a.rs"), "fn a() {}").expect("write");
        // A state dir nothing else has made yet: no run/ dir for the record.
        let layout = Layout::new(root.join(".stack"));
        let count = "echo run >> runs.count";
        let a = component(root, "a", count);
        run(&layout, root, &a).await.expect("build");
        assert_eq!(
            freshness(&layout, root, &a).expect("freshness"),
            Freshness::UpToDate
        );
        let batch = Batch::default();
        let (c, d) = (component(root, "c", count), component(root, "d", count));
        let (rc, rd) = tokio::join!(batch.run(&layout, root, &c), batch.run(&layout, root, &d));
        rc.expect("c built");
        rd.expect("d built");
        let runs = std::fs::read_to_string(root.join("runs.count")).expect("count");
        assert_eq!(
            runs.lines().count(),
            2,
            "a once, then c and d once together"
        );
        for svc in [&c, &d] {
            assert_eq!(
                freshness(&layout, root, svc).expect("freshness"),
                Freshness::UpToDate,
                "{} recorded",
                svc.name
            );
        }
    }

    #[test]
    fn globs_walk_only_their_base_and_star_stays_in_one_directory() {
        assert_eq!(literal_base("crates/api/**/*.rs"), Path::new("crates/api"));
        assert_eq!(literal_base("Cargo.lock"), Path::new(""));
        assert_eq!(literal_base("src/*.rs"), Path::new("src"));
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        for f in ["src/main.rs", "src/deep/mod.rs", "README.md", ".git/config"] {
            std::fs::create_dir_all(root.join(f).parent().expect("parent")).expect("mkdir");
            std::fs::write(root.join(f), f).expect("write");
        }
        let files = input_files(root, &["src/*.rs".into()]).expect("walk");
        assert_eq!(files, [PathBuf::from("src/main.rs")]);
        let files = input_files(root, &["src/**".into(), "README.md".into()]).expect("walk");
        assert_eq!(
            files,
            ["README.md", "src/deep/mod.rs", "src/main.rs"].map(PathBuf::from)
        );
        let files = input_files(root, &["**".into()]).expect("walk");
        assert!(!files.iter().any(|f| f.starts_with(".git")), "{files:?}");
        // A file at the root is read from the root's own entries: the project is not walked.
        let plan: Vec<(PathBuf, bool)> = walk_bases(&[
            "Cargo.lock".into(),
            "src/*.rs".into(),
            "crates/api/**".into(),
            "crates/api/x".into(),
            "docs/*/index.md".into(),
        ])
        .into_iter()
        .collect();
        assert_eq!(
            plan,
            [
                (PathBuf::from(""), false),
                (PathBuf::from("crates/api"), true),
                (PathBuf::from("docs"), true),
                (PathBuf::from("src"), false),
            ]
        );
    }

    #[test]
    fn the_hash_follows_content_paths_and_command_not_mtimes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        std::fs::create_dir_all(root.join("src")).expect("mkdir");
        std::fs::write(root.join("src/a.rs"), "fn a() {}").expect("write");
        let s = spec(&["src/**"]);
        let first = input_hash(root, &s).expect("hash");
        std::fs::write(root.join("src/a.rs"), "fn a() {}").expect("rewrite, same content");
        assert_eq!(input_hash(root, &s).expect("hash"), first);
        std::fs::write(root.join("src/a.rs"), "fn a() { }").expect("edit");
        let edited = input_hash(root, &s).expect("hash");
        assert_ne!(edited, first);
        std::fs::rename(root.join("src/a.rs"), root.join("src/b.rs")).expect("rename");
        assert_ne!(input_hash(root, &s).expect("hash"), edited);
        let stamp = input_stamp(root, &s).expect("stamp");
        assert_eq!(input_stamp(root, &s).expect("stamp"), stamp, "stable");
        std::fs::write(root.join("src/b.rs"), "fn a() { }").expect("touch");
        assert_ne!(
            input_stamp(root, &s).expect("stamp"),
            stamp,
            "a touch changes the stamp (and the content then decides)"
        );
        let mut other = s.clone();
        other.command.push("--release".into());
        assert_ne!(
            input_hash(root, &other).expect("hash"),
            input_hash(root, &s).expect("hash")
        );
    }
}
