//! `stack seed`: idempotent seed data (see `crate::seed`), plus the stack's buckets.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{schema::database_url, CliError, Ctx};
use crate::exit::ExitStatus;
use crate::{schema, secrets, seed};

/// Arguments of `seed`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The database (default: the stack's exported DATABASE_URL).
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// A Dex config whose staticPasswords become users (default: services/dex/config.yaml).
    #[arg(long, value_name = "FILE")]
    identities: Option<PathBuf>,
}

/// The buckets every stack with an S3 service has.
pub const BUCKETS: [&str; 2] = ["boxlite", "backups"];

/// Seeds the database and the buckets; shared with `reset --hard`.
pub(crate) async fn seed_all(
    ctx: &Ctx,
    url: &str,
    identities: Option<PathBuf>,
) -> Result<String, CliError> {
    let t0 = Instant::now();
    let path = identities.unwrap_or_else(|| ctx.stack.root.join("services/dex/config.yaml"));
    let ids = if path.exists() {
        seed::dex_identities(&path)?
    } else {
        Vec::new()
    };
    let key = secrets::get_or_create(&ctx.layout, "admin-api-key").map_err(|e| {
        CliError::Other(format!(
            "cannot create the admin API key in {}: {e}",
            ctx.layout.root().display()
        ))
    })?;
    let mut conn = schema::connect(url, Duration::from_secs(5)).await?;
    let report = seed::run(&mut conn, &ids, &key).await?;
    let mut created = Vec::new();
    if let Some(client) = ctx.s3_client() {
        created = crate::s3::ensure_buckets(&client, &BUCKETS)
            .await
            .map_err(|e| {
                CliError::Other(format!(
                    "seeding the buckets failed: {e}\n  is the S3 service up? try `stack up minio`"
                ))
            })?;
    }
    let added: u64 = report.values().sum();
    Ok(if added == 0 && created.is_empty() {
        format!("seed: nothing to add ({} ms)", t0.elapsed().as_millis())
    } else {
        let rows: Vec<String> = report
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{t} +{n}"))
            .collect();
        format!(
            "seed: {}{} in {} ms",
            rows.join(", "),
            if created.is_empty() {
                String::new()
            } else {
                format!(", buckets +{}", created.join(" +"))
            },
            t0.elapsed().as_millis()
        )
    })
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let url = database_url(&ctx, args.database_url)?;
    let line = seed_all(&ctx, &url, args.identities).await?;
    eprintln!("{line}");
    Ok(ExitStatus::Ok)
}
