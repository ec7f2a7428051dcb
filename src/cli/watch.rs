//! `stack watch [SVC...]`: `stack up --watch`: bring the services up, then rebuild and restart a
//! component whenever its `watch:` files change, one line per rebuild.

use tokio_util::sync::CancellationToken;

use super::{interrupt_token, CliError, Ctx};
use crate::engine::Engine;
use crate::exit::ExitStatus;
use crate::watch::{self, Reaction};

/// Arguments of `watch`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to start first (with their dependencies); all when none.
    services: Vec<String>,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    let cancel = interrupt_token();
    engine.up(&args.services, cancel.clone()).await?;
    follow(&engine, cancel).await?;
    Ok(ExitStatus::Ok)
}

/// Watches until Ctrl-C, printing one line per reaction.
pub(crate) async fn follow(engine: &Engine, cancel: CancellationToken) -> Result<(), CliError> {
    eprintln!("watching for changes (Ctrl-C stops watching; the services keep running)");
    watch::run(engine, cancel, |r| match r {
        Reaction::Rebuilt {
            service,
            build_s,
            restart_s,
        } => eprintln!(
            "watch: rebuilt `{service}` in {build_s:.2}s, ready again {restart_s:.2}s later"
        ),
        Reaction::Restarted { service, restart_s } => {
            eprintln!("watch: restarted `{service}`, ready in {restart_s:.2}s")
        }
        Reaction::Failed { service, error } => eprintln!(
            "watch: `{service}` was not replaced; what runs keeps running:\n{}",
            error.trim_end()
        ),
    })
    .await?;
    eprintln!("stopped watching; the services keep running (`stack down` stops them)");
    Ok(())
}
