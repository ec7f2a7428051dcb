//! `stack down [SVC...]`: stop services, dependents first; data is kept.

use super::{CliError, Ctx};
use crate::exit::ExitStatus;

/// Arguments of `down`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to stop (with everything that depends on them); all when none.
    services: Vec<String>,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let engine = ctx.engine();
    engine.down(&args.services).await?;
    Ok(ExitStatus::Ok)
}
