//! `stack up [SVC...] [--build] [--watch]`: start services and their dependencies; return once
//! all are ready, or with `--watch` stay and rebuild and restart what changes.

use super::{interrupt_token, CliError, Ctx};
use crate::engine::Builds;
use crate::exit::ExitStatus;

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to start (with their dependencies); all when none.
    services: Vec<String>,
    /// Build the selected components even when their inputs did not change.
    #[arg(long)]
    build: bool,
    /// Then stay in the foreground: rebuild and restart a component when its `watch:` files
    /// change (Ctrl-C stops watching; the services keep running).
    #[arg(long)]
    watch: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    let builds = Builds::forced(args.build);
    let cancel = interrupt_token();
    engine
        .up_with(&args.services, builds, cancel.clone())
        .await?;
    if args.watch {
        super::watch::follow(&engine, cancel).await?;
    }
    Ok(ExitStatus::Ok)
}
