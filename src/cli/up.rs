//! `stack up [SVC...]`: start services and their dependencies; return once all are ready.

use super::{interrupt_token, CliError, Ctx};
use crate::exit::ExitStatus;

/// Arguments of `up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to start (with their dependencies); all when none.
    services: Vec<String>,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    engine.up(&args.services, interrupt_token()).await?;
    Ok(ExitStatus::Ok)
}
