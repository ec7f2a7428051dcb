//! `stack backup [--to DIR|s3://bucket/prefix]` and `stack backup ls`: snapshots of every
//! stateful service (see `crate::snapshot`).

use std::path::PathBuf;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::snapshot::{self, take};

/// Arguments of `backup`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where to write the snapshot: a directory (default: `.stack-backups/` beside stack.yaml,
    /// which `reset --nuke` keeps), or `s3://bucket/prefix` to upload it to the stack's S3.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    to: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the snapshots: time, size, services.
    Ls {
        /// The directory to list (default: `.stack-backups/` beside stack.yaml).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `1.2 MiB`.
pub(super) fn human_bytes(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let default_dir = snapshot::default_dir(&ctx.stack.root);
    if let Some(Command::Ls { dir }) = args.command {
        return ls(&dir.unwrap_or(default_dir), ctx.json);
    }
    let upload = args.to.as_deref().and_then(snapshot::upload::parse_url);
    let dest = match (&args.to, &upload) {
        (Some(to), None) => PathBuf::from(to),
        _ => default_dir,
    };
    let (snap, report) = take::take(&ctx.stack, &dest).await?;
    let uploaded = match upload {
        Some((bucket, prefix)) => {
            Some(snapshot::upload::upload(&ctx.stack, &snap, &bucket, &prefix).await?)
        }
        None => None,
    };
    if ctx.json {
        super::print_json(&report, true)?;
        return Ok(ExitStatus::Ok);
    }
    for s in &report.services {
        let what = if s.items.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.items.join(", "))
        };
        eprintln!("  {}: {}{what}", s.service, s.how);
    }
    eprintln!(
        "backup: {} ({} files, {}) in {:.2}s",
        report.snapshot.display(),
        report.files,
        human_bytes(report.size),
        report.elapsed_ms as f64 / 1000.0
    );
    if let Some(url) = uploaded {
        eprintln!("uploaded to {url}");
    }
    Ok(ExitStatus::Ok)
}

fn ls(dir: &std::path::Path, json: bool) -> Result<ExitStatus, CliError> {
    let snaps = snapshot::list(dir)?;
    if json {
        let rows: Vec<serde_json::Value> = snaps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name(),
                    "path": s.dir,
                    "created_at": s.manifest.created_at,
                    "size": s.size(),
                    "services": s.manifest.services.iter().map(|e| &e.service).collect::<Vec<_>>(),
                })
            })
            .collect();
        super::print_json(&serde_json::json!({ "snapshots": rows }), true)?;
        return Ok(ExitStatus::Ok);
    }
    if snaps.is_empty() {
        eprintln!(
            "no snapshots in {}: take one with `stack backup`",
            dir.display()
        );
        return Ok(ExitStatus::Ok);
    }
    println!(
        "{:<20}  {:<20}  {:>10}  services",
        "name", "created", "size"
    );
    for s in &snaps {
        let services: Vec<&str> = s
            .manifest
            .services
            .iter()
            .map(|e| e.service.as_str())
            .collect();
        println!(
            "{:<20}  {:<20}  {:>10}  {}",
            s.name(),
            s.manifest.created_at,
            human_bytes(s.size()),
            services.join(", ")
        );
    }
    Ok(ExitStatus::Ok)
}
