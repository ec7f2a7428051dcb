//! `stack restart [SVC...] [--build]`: stop then start; dependents are stopped first and
//! re-gated.

use super::{interrupt_token, CliError, Ctx};
use crate::engine::Builds;
use crate::exit::ExitStatus;

/// Arguments of `restart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to restart (with their dependents); all when none.
    services: Vec<String>,
    /// Build the components among them first; nothing is stopped unless every build succeeds.
    #[arg(long)]
    build: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    let builds = Builds::forced(args.build);
    engine
        .restart(&args.services, builds, interrupt_token())
        .await?;
    Ok(ExitStatus::Ok)
}
