//! `stack restart [SVC...]`: stop then start; dependents are stopped first and re-gated.

use super::{interrupt_token, CliError, Ctx};
use crate::exit::ExitStatus;

/// Arguments of `restart`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to restart (with their dependents); all when none.
    services: Vec<String>,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    engine.restart(&args.services, interrupt_token()).await?;
    Ok(ExitStatus::Ok)
}
