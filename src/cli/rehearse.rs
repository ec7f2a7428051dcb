//! `stack rehearse backup|migration`: the end-to-end rehearsals (library: `crate::rehearse`),
//! each a table of timed phases (`--json`: a report) and exit 1 naming any difference.

use std::path::PathBuf;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::rehearse::{self, migration};

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
        /// Do not ask (required when stdin is not a terminal): the rehearsal deletes the state
        /// dir on the way.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Move sandboxes with known content to the other runner through the control plane and
    /// back, and prove that nothing was lost (ids, file hashes, exec, preview URLs); exit 1 on
    /// any difference.
    Migration {
        /// How many sandboxes.
        #[arg(long, default_value_t = 3, value_name = "N")]
        sandboxes: usize,
        /// MiB of random data written in each.
        #[arg(long, default_value_t = 16, value_name = "MB")]
        size: u32,
        /// Their image, in the stack's registry.
        #[arg(long, default_value = "boxlite/busybox:latest", value_name = "IMAGE")]
        image: String,
        /// Keep the sandboxes and their backups at the end (to look at them).
        #[arg(long)]
        keep: bool,
    },
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    match args.command {
        Command::Backup { to, yes } => backup(to, yes, ctx).await,
        Command::Migration {
            sandboxes,
            size,
            image,
            keep,
        } => {
            let options = migration::Options {
                sandboxes,
                size_mb: size,
                image,
                keep,
            };
            let json = ctx.json;
            if !json {
                eprintln!(
                    "rehearse migration: {sandboxes} sandboxes × {size} MiB ({}), there and back",
                    options.image
                );
                eprintln!("  {:<8} {:>9}  detail", "phase", "time");
            }
            // Each phase is printed as it ends: this is the table.
            let report = migration::run(&ctx.exports(), &options, |p| {
                if !json {
                    eprintln!("  {:<8} {:>9}  {}", p.name, rehearse::human(p.ms), p.detail);
                }
            })
            .await?;
            if json {
                super::print_json(&report, true)?;
            } else {
                for m in &report.mismatches {
                    println!("MISMATCH {m}");
                }
                if let Some(f) = &report.failure {
                    println!("FAILED {f}");
                }
                if report.ok {
                    println!(
                        "ok: {} sandboxes moved there and back, nothing lost (per move p50 {}, p95 {})",
                        report.sandboxes,
                        rehearse::human(report.migrate_p50_ms),
                        rehearse::human(report.migrate_p95_ms)
                    );
                } else {
                    println!(
                        "rehearsal failed: see above; `stack logs api runner-a runner-b` tells why"
                    );
                }
            }
            Ok(if report.ok {
                ExitStatus::Ok
            } else {
                ExitStatus::Failure
            })
        }
    }
}

async fn backup(to: Option<PathBuf>, yes: bool, ctx: Ctx) -> Result<ExitStatus, CliError> {
    if !ctx.json || !yes {
        eprintln!(
            "rehearse backup will take a snapshot, delete the state dir {} (`reset --nuke`), start \
             the stack cold, restore the snapshot and compare every datum; what a snapshot leaves \
             out is lost on the way: the runners' sandboxes (their rows are restored, their disks \
             are not)",
            ctx.layout.root().display()
        );
    }
    super::confirm(yes, "rehearse a backup")?;
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
