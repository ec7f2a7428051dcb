//! `stack restore SNAPSHOT [--dry-run] [--yes]`: verify every checksum, print the plan, confirm,
//! then replace every stateful service's data with the snapshot's.

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::snapshot::{self, restore, Snapshot};

/// Arguments of `restore`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A snapshot directory, the name of one in `.stack-backups/`, or `latest`.
    snapshot: String,
    /// Verify the snapshot and print the plan only.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let default_dir = snapshot::default_dir(&ctx.stack.root);
    let snap = Snapshot::find(&args.snapshot, &default_dir)?;
    let verified = snap.verified()?;
    eprintln!(
        "snapshot {} of `{}` taken {}: {} files verified",
        snap.dir.display(),
        snap.manifest.stack,
        snap.manifest.created_at,
        snap.manifest.files.len()
    );
    eprintln!("restore will replace (never merge):");
    for step in restore::plan(&ctx.stack, &snap)? {
        eprintln!("  - {step}");
    }
    if args.dry_run {
        eprintln!("(dry run: nothing changed)");
        return Ok(ExitStatus::Ok);
    }
    super::confirm(args.yes, "restore")?;
    let json = ctx.json;
    let report = restore::restore(
        &ctx.engine(),
        verified,
        restore::Restart::Everything,
        super::interrupt_token(),
    )
    .await?;
    if json {
        super::print_json(&report, true)?;
    } else {
        for line in &report.services {
            eprintln!("  {line}");
        }
        eprintln!("restore done in {:.2}s", report.elapsed_ms as f64 / 1000.0);
    }
    Ok(ExitStatus::Ok)
}
