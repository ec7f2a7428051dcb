//! The command line: clap types, the shared [`Ctx`], one file per subcommand, and the mapping of
//! every error to its exit code. Clap types never leave this module.

mod backup;
mod boxes;
mod doctor;
mod down;
mod env;
mod logs;
mod plan;
mod rebuild_box;
mod rehearse;
mod reset;
mod restart;
mod restore;
mod schema;
mod seed;
mod status;
mod up;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::backend::Backend;
use crate::engine::{Engine, EngineError};
use crate::exit::{ExitStatus, EXIT_CODES_HELP};
use crate::exports::{ConnectError, Exports};
use crate::layout::Layout;
use crate::progress::Progress;
use crate::spec::{BackendChoice, LoadOptions, SpecErrors, Stack};

/// Bring up a whole local development platform and keep it healthy.
#[derive(Debug, Parser)]
#[command(name = "stack", version, after_help = EXIT_CODES_HELP)]
pub struct Cli {
    /// The stack file (default: `stack.yaml` here or in the nearest parent directory).
    /// Give it before the command: `logs -f` means follow.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    file: Option<PathBuf>,
    /// The state directory (default: `.stack/` beside stack.yaml).
    #[arg(long, global = true, env = "STACK_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Backend: process, microvm or auto (default: stack.yaml's `backend:`).
    #[arg(long, global = true, value_name = "BACKEND")]
    backend: Option<String>,
    /// Machine-readable output where the command supports it.
    #[arg(long, global = true)]
    json: bool,
    /// Plain, timestamped progress lines even on a terminal.
    #[arg(long, global = true)]
    plain: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the start waves without side effects.
    Plan(plan::Args),
    /// Start services and their dependencies; return once all are healthy.
    Up(up::Args),
    /// Stop services (dependents first); data is kept.
    Down(down::Args),
    /// Stop then start services; dependents are re-gated.
    Restart(restart::Args),
    /// Show what runs, its health and timings.
    Status(status::Args),
    /// Show service logs, merged in time order.
    Logs(logs::Args),
    /// Check ports, programs, state dir, disk and KVM.
    Doctor(doctor::Args),
    /// Print the services' connection details as shell exports (`--json` for an object).
    Env(env::Args),
    /// Load or inspect the control plane's schema (sql/migrations).
    Schema(schema::Args),
    /// Add the seed data that is missing (idempotent).
    Seed(seed::Args),
    /// Reset data: --soft (runtime rows), --hard (schema, seed, buckets) or --nuke (state dir).
    Reset(reset::Args),
    /// Snapshot every stateful service's data (`backup ls` lists the snapshots).
    Backup(backup::Args),
    /// Replace every stateful service's data with a snapshot's, after verifying it.
    Restore(restore::Args),
    /// Run a round trip end to end and prove nothing was lost (`rehearse backup|migration`).
    Rehearse(rehearse::Args),
    /// Destroy one service's instance and data, recreate and re-initialise it.
    #[command(name = "rebuild-box")]
    RebuildBox(rebuild_box::Args),
    /// `up`, then rebuild and restart a component when its `watch:` files change.
    Watch(watch::Args),
    /// Box archives: `box verify FILE` checks one offline.
    #[command(name = "box")]
    BoxArchive(boxes::Args),
    /// Internal: supervise one service (started by `up`).
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The supervisor spec file.
        spec: PathBuf,
    },
    /// Internal: supervise one service's microVM (started by `up`).
    #[command(name = "__box", hide = true)]
    Box {
        /// The box supervisor spec file.
        spec: PathBuf,
    },
}

/// Errors at the edge, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Invalid stack definition (exit 2).
    #[error("{0}")]
    Spec(#[from] SpecErrors),
    /// Bad usage (exit 2).
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The backend asked for cannot run here (exit 4).
    #[error("{0}")]
    Preflight(#[from] crate::backend::select::Refusal),
    /// An engine failure.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A schema failure.
    #[error(transparent)]
    Schema(#[from] crate::schema::SchemaError),
    /// A seed failure.
    #[error(transparent)]
    Seed(#[from] crate::seed::SeedError),
    /// A reset failure or refusal.
    #[error(transparent)]
    Reset(#[from] crate::reset::ResetError),
    /// The stack's connection details could not be read (exit 1), or name no database (exit 2).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The working directory cannot be read (exit 1).
    #[error("cannot read the current directory: {0}")]
    Cwd(#[source] std::io::Error),
    /// Watching could not start (exit 2 when nothing is to be watched, else 1).
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// JSON output could not be rendered (exit 1).
    #[error("cannot render JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A box archive did not verify (exit 1).
    #[error(transparent)]
    Archive(#[from] crate::boxes::VerifyError),
    /// The migration rehearsal could not run (exit 1; bad options: 2).
    #[error(transparent)]
    Rehearsal(#[from] crate::rehearse::migration::RehearsalError),
    /// A snapshot could not be taken, trusted or restored (exit 1, or the engine's code).
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A rehearsal failed or found a difference (exit 1, or the schema's or engine's code).
    #[error(transparent)]
    Rehearse(#[from] crate::rehearse::RehearseError),
}

/// A command asked for something it cannot do as asked (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A service name that is not in the stack.
    #[error(transparent)]
    UnknownService(#[from] crate::spec::UnknownService),
    /// `--backend` names no backend.
    #[error(transparent)]
    Backend(#[from] crate::spec::UnknownBackend),
    /// A destructive command (`reset`, `restore`) without `--yes` and nobody to confirm it.
    #[error("refusing to {0} without `--yes`: stdin is not a terminal, so nobody can confirm")]
    NeedsYes(&'static str),
    /// The user answered no.
    #[error("{0} cancelled")]
    Cancelled(&'static str),
    /// `__box` in a binary built without the microVM backend.
    #[error("this binary has no microVM support: rebuild with `--features microvm`")]
    NoMicrovm,
    /// An `s3://` argument and no S3 service or endpoint to read it from.
    #[error("no S3 endpoint: the stack has no S3 service; set S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or `eval \"$(stack env)\"` in a stack that has one)")]
    NoS3,
}

impl From<crate::spec::UnknownService> for CliError {
    fn from(e: crate::spec::UnknownService) -> CliError {
        CliError::Usage(e.into())
    }
}

impl From<crate::exports::ExportError> for CliError {
    fn from(e: crate::exports::ExportError) -> CliError {
        CliError::Connect(e.into())
    }
}

impl CliError {
    fn status(&self) -> ExitStatus {
        use crate::reset::ResetError;
        use crate::schema::SchemaError;
        let schema = |e: &SchemaError| match e {
            SchemaError::Refused(_) => ExitStatus::SchemaRefused,
            SchemaError::Files(_) => ExitStatus::Invalid,
            _ => ExitStatus::Failure,
        };
        let engine = |e: &EngineError| match e {
            EngineError::Unknown(_) => ExitStatus::Invalid,
            EngineError::Preflight(_) => ExitStatus::Preflight,
            EngineError::Unhealthy(_) => ExitStatus::Unhealthy,
            EngineError::Interrupted => ExitStatus::Interrupted,
            EngineError::Backend(_) | EngineError::Supervisor(_) | EngineError::Build(_) => {
                ExitStatus::Failure
            }
        };
        use crate::rehearse::RehearseError;
        use crate::snapshot::SnapshotError;
        match self {
            Self::Spec(_) | Self::Usage(_) => ExitStatus::Invalid,
            Self::Snapshot(SnapshotError::Engine(e)) => engine(e),
            Self::Rehearse(RehearseError::Engine(e))
            | Self::Rehearse(RehearseError::Snapshot(SnapshotError::Engine(e))) => engine(e),
            Self::Rehearse(RehearseError::Schema(e)) => schema(e),
            Self::Rehearse(RehearseError::Reset(ResetError::Engine(e))) => engine(e),
            Self::Connect(ConnectError::NoDatabase) => ExitStatus::Invalid,
            Self::Preflight(_) => ExitStatus::Preflight,
            Self::Engine(e) => engine(e),
            Self::Schema(e) => schema(e),
            Self::Reset(ResetError::Schema(e)) => schema(e),
            Self::Reset(ResetError::Engine(e)) => engine(e),
            Self::Reset(ResetError::NotAStateDir(_) | ResetError::HoldsTheProject(_)) => {
                ExitStatus::Invalid
            }
            Self::Watch(crate::watch::WatchError::NothingToWatch) => ExitStatus::Invalid,
            Self::Rehearsal(crate::rehearse::migration::RehearsalError::Options(_)) => {
                ExitStatus::Invalid
            }
            Self::Reset(_)
            | Self::Seed(_)
            | Self::Connect(_)
            | Self::Cwd(_)
            | Self::Watch(_)
            | Self::Archive(_)
            | Self::Rehearsal(_)
            | Self::Snapshot(_)
            | Self::Rehearse(_)
            | Self::Json(_) => ExitStatus::Failure,
        }
    }
}

/// What every command gets: the loaded stack, its state layout and the chosen backend.
pub struct Ctx {
    /// The stack.
    pub stack: Stack,
    /// Its state dir.
    pub layout: Layout,
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// `--json`.
    pub json: bool,
    /// `--plain`.
    pub plain: bool,
    /// Why `auto` chose what it chose, to say once.
    pub backend_note: Option<String>,
    /// What the microVM boot probe said.
    pub boxes: crate::backend::select::Boxes,
    /// Why the backend asked for cannot run here (`doctor` reports it; others exit 4).
    pub backend_refusal: Option<crate::backend::select::Refusal>,
}

impl Ctx {
    /// Loads the stack and picks its backend. `starts`: the command may start services, so
    /// `auto` may run the microVM boot probe (once per host boot).
    async fn load(cli: &Cli, starts: bool) -> Result<Ctx, CliError> {
        let cwd = std::env::current_dir().map_err(CliError::Cwd)?;
        let env: HashMap<String, String> = std::env::vars().collect();
        let stack = Stack::load(&LoadOptions {
            file: cli.file.clone(),
            cwd,
            state_dir: cli.state_dir.clone(),
            env,
            stack_exe: None,
        })?;
        let choice = match &cli.backend {
            Some(b) => b.parse::<BackendChoice>().map_err(UsageError::Backend)?,
            None => stack.backend,
        };
        let layout = Layout::new(stack.state_dir.clone());
        let mut backend_refusal = None;
        let selected = match crate::backend::select::select(&stack, &layout, choice, starts).await {
            Ok(s) => s,
            // `doctor` reports a backend that cannot run here as one of its checks.
            Err(why) if matches!(cli.command, Command::Doctor(_)) => {
                backend_refusal = Some(why);
                crate::backend::select::select(&stack, &layout, BackendChoice::Auto, starts).await?
            }
            Err(why) => return Err(why.into()),
        };
        // Only commands that start services say which backend `auto` chose.
        let backend_note = selected.note.filter(|_| starts);
        let (backend, boxes) = (selected.backend, selected.boxes);
        Ok(Ctx {
            stack,
            layout,
            backend,
            json: cli.json,
            plain: cli.plain,
            backend_note,
            boxes,
            backend_refusal,
        })
    }

    /// The stack's connection details (`exports:` of its services).
    pub fn exports(&self) -> Exports {
        Exports::new(&self.stack, &self.layout)
    }

    /// An engine with progress output.
    pub fn engine(self) -> Engine {
        let progress = Progress::new(self.plain, self.json);
        if let Some(note) = &self.backend_note {
            progress.note(note);
        }
        Engine::new(self.stack, self.backend, progress)
    }
}

/// Parses the command line, runs the command and returns its exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Supervise { spec } = &cli.command {
        // No async runtime here: the supervisor is a small threaded program that forks children.
        return std::process::ExitCode::from(crate::supervisor::process::run(spec) as u8);
    }
    #[cfg(feature = "microvm")]
    {
        // Before any thread starts: the `boxlite` crate reads its runtime dir from the
        // environment, and `stack` finds the runtime so users never set it.
        crate::backend::microvm::runtime::export();
        if let Command::Box { spec } = &cli.command {
            return std::process::ExitCode::from(crate::backend::microvm::boxsup::run(spec) as u8);
        }
    }
    let rt = match crate::runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(ExitStatus::Failure.code());
        }
    };
    let status = match rt.block_on(run(cli)) {
        Ok(s) => s,
        Err(e) => {
            let text = e.to_string();
            eprintln!("error: {}", text.trim_end());
            e.status()
        }
    };
    std::process::ExitCode::from(status.code())
}

async fn run(cli: Cli) -> Result<ExitStatus, CliError> {
    // Reads one file: no stack definition needed.
    if let Command::BoxArchive(a) = &cli.command {
        return boxes::run(a.clone(), &cli).await;
    }
    let starts = matches!(
        cli.command,
        Command::Up(_)
            | Command::Restart(_)
            | Command::RebuildBox(_)
            | Command::Doctor(_)
            | Command::Watch(_)
            | Command::Restore(_)
            | Command::Rehearse(_)
    );
    let ctx = Ctx::load(&cli, starts).await?;
    match cli.command {
        Command::Plan(a) => plan::run(a, ctx),
        Command::Up(a) => up::run(a, ctx).await,
        Command::Down(a) => down::run(a, ctx).await,
        Command::Restart(a) => restart::run(a, ctx).await,
        Command::Status(a) => status::run(a, ctx).await,
        Command::Logs(a) => logs::run(a, ctx).await,
        Command::Doctor(a) => doctor::run(a, ctx),
        Command::Env(a) => env::run(a, ctx),
        Command::Schema(a) => schema::run(a, ctx).await,
        Command::Seed(a) => seed::run(a, ctx).await,
        Command::Reset(a) => reset::run(a, ctx).await,
        Command::RebuildBox(a) => rebuild_box::run(a, ctx).await,
        Command::Backup(a) => backup::run(a, ctx).await,
        Command::Restore(a) => restore::run(a, ctx).await,
        Command::Rehearse(a) => rehearse::run(a, ctx).await,
        Command::Watch(a) => watch::run(a, ctx).await,
        Command::Supervise { .. } | Command::BoxArchive(_) => Ok(ExitStatus::Ok),
        Command::Box { .. } => Err(UsageError::NoMicrovm.into()),
    }
}

/// Asks on the terminal before a destructive `verb` unless `yes`; refuses without a terminal.
pub(crate) fn confirm(yes: bool, verb: &'static str) -> Result<(), CliError> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError::NeedsYes(verb).into());
    }
    eprint!("proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(UsageError::Cancelled(verb).into())
    }
}

/// Prints `value` as JSON on stdout (`--json` output of every command).
pub(crate) fn print_json(value: &impl serde::Serialize, pretty: bool) -> Result<(), CliError> {
    let text = if pretty {
        serde_json::to_string_pretty(value)
    } else {
        serde_json::to_string(value)
    };
    println!("{}", text?);
    Ok(())
}

/// A token cancelled by the first Ctrl-C (or SIGTERM).
pub(crate) fn interrupt_token() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = sigterm => {},
        }
        t.cancel();
    });
    token
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
