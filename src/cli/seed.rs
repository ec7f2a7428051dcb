//! `stack seed`: idempotent seed data and the stack's buckets (see `crate::seed`).

use std::path::PathBuf;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::seed::{self, Seeded};

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

/// One line saying what a seed added; shared with `reset --hard`.
pub(crate) fn render(s: &Seeded) -> String {
    let added: u64 = s.rows.values().sum();
    let ms = s.elapsed.as_millis();
    if added == 0 && s.buckets.is_empty() {
        return format!("seed: nothing to add ({ms} ms)");
    }
    let rows: Vec<String> = s
        .rows
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(t, n)| format!("{t} +{n}"))
        .collect();
    let buckets = if s.buckets.is_empty() {
        String::new()
    } else {
        format!(", buckets +{}", s.buckets.join(" +"))
    };
    format!("seed: {}{buckets} in {ms} ms", rows.join(", "))
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let url = ctx.exports().database_url(args.database_url)?;
    let seeded = seed::seed_stack(&ctx.stack, &ctx.layout, &url, args.identities).await?;
    eprintln!("{}", render(&seeded));
    Ok(ExitStatus::Ok)
}
