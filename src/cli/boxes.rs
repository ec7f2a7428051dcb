//! `stack box verify FILE`: checks a box archive offline.

use std::path::PathBuf;

use super::CliError;
use crate::exit::ExitStatus;

/// Arguments of `box`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BoxCommand,
}

#[derive(Debug, clap::Subcommand)]
enum BoxCommand {
    /// Check a box archive: its manifest, every member's checksum and path (exit 1 naming what
    /// is wrong).
    Verify {
        /// The archive (`<sandbox-id>.boxlite`).
        archive: PathBuf,
    },
}

/// Runs `box`: needs no stack definition.
pub fn run(args: Args, json: bool) -> Result<ExitStatus, CliError> {
    match args.command {
        BoxCommand::Verify { archive } => {
            let v = crate::boxes::verify_file(&archive)?;
            if json {
                super::print_json(&v, true)?;
            } else {
                let name = v
                    .info
                    .name
                    .as_deref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default();
                println!(
                    "{}: ok, format {}: box {}{name}, image {}@{}, exported {}, {} members, {} bytes",
                    v.path.display(),
                    v.format_version,
                    v.info.box_id,
                    v.info.image,
                    v.info.image_digest,
                    v.info.exported_at,
                    v.members,
                    v.bytes
                );
            }
            Ok(ExitStatus::Ok)
        }
    }
}
