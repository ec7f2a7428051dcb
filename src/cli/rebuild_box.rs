//! `stack rebuild-box NAME`: destroy one service's instance and data, recreate it, re-run its
//! init, wait until healthy, and restart the dependents it had to stop.

use super::{interrupt_token, CliError, Ctx};
use crate::exit::ExitStatus;

/// Arguments of `rebuild-box`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The service to rebuild.
    name: String,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    ctx.stack.service(&args.name)?;
    let engine = ctx.engine();
    engine.rebuild(&args.name, interrupt_token()).await?;
    Ok(ExitStatus::Ok)
}
