//! `stack box verify FILE|s3://BUCKET/KEY`: checks a box archive offline.

use super::CliError;
use crate::exit::ExitStatus;

/// Arguments of `box`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BoxCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
enum BoxCommand {
    /// Check a box archive: its manifest, every member's checksum and path (exit 1 naming what
    /// is wrong). An `s3://` object is read as a stream from the stack's S3 service (or the
    /// endpoint in S3_ENDPOINT and the key in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY).
    Verify {
        /// The archive: a file (`<sandbox-id>.boxlite`) or `s3://BUCKET/KEY`.
        archive: String,
    },
}

/// Runs `box`: a file needs no stack definition; an S3 object reads the stack's S3 exports
/// unless the environment names an endpoint and a key.
pub async fn run(args: Args, cli: &super::Cli) -> Result<ExitStatus, CliError> {
    let json = cli.json;
    match args.command {
        BoxCommand::Verify { archive } => {
            let v = match crate::boxes::s3_object(&archive) {
                None => crate::boxes::verify_file(std::path::Path::new(&archive))?,
                Some(object) => {
                    let (bucket, key) = object?;
                    let client = s3_client(cli).await?;
                    crate::boxes::verify_object(&client, &bucket, &key).await?
                }
            };
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

/// The S3 client `box verify s3://...` reads with: the environment's endpoint and key (as
/// `eval "$(stack env)"` sets them), else the stack's S3 service's exports.
async fn s3_client(cli: &super::Cli) -> Result<aws_sdk_s3::Client, CliError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(endpoint), Some(key), Some(secret)) = (
        var("S3_ENDPOINT").or_else(|| var("AWS_ENDPOINT_URL")),
        var("AWS_ACCESS_KEY_ID"),
        var("AWS_SECRET_ACCESS_KEY"),
    ) {
        let region = var("AWS_REGION").unwrap_or_else(|| crate::exports::DEFAULT_S3_REGION.into());
        return Ok(crate::s3::client(&endpoint, &region, &key, &secret));
    }
    let ctx = super::Ctx::load(cli, false).await?;
    crate::exports::Exports::new(&ctx.stack, &ctx.layout)
        .s3_client()?
        .ok_or(CliError::Usage(super::UsageError::NoS3))
}
