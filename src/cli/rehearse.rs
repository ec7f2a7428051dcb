//! `stack rehearse backup`: the whole-stack backup round trip, proven with checksums.

use std::path::PathBuf;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::rehearse;

/// Arguments of `rehearse`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Back up, `reset --nuke`, `up`, restore, then compare every table, key, object and file;
    /// exit 1 naming any difference.
    Backup {
        /// Where to keep the snapshot (default: `.stack-backups/` beside stack.yaml).
        #[arg(long, value_name = "DIR")]
        to: Option<PathBuf>,
    },
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let Command::Backup { to } = args.command;
    let dest = to.unwrap_or_else(|| crate::snapshot::default_dir(&ctx.stack.root));
    let json = ctx.json;
    let engine = ctx.engine();
    let report = rehearse::backup::rehearse(&engine, &dest, super::interrupt_token()).await?;
    if json {
        super::print_json(&report, true)?;
    } else {
        print!("{}", rehearse::render(&report.phases));
        if report.differences.is_empty() {
            println!(
                "rehearse backup: passed: {} tables ({} rows), {} keys, {} objects, {} files identical after the round trip",
                report.counts.tables,
                report.counts.rows,
                report.counts.keys,
                report.counts.objects,
                report.counts.files
            );
        }
    }
    report.check()?;
    Ok(ExitStatus::Ok)
}
