//! `stack reset --soft|--hard|--nuke [--dry-run] [--yes]`: the plan of the tier (see
//! `crate::reset`), a confirmation, then the reset.

use std::time::Instant;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::reset::{self, Tier};
use crate::schema;

/// Arguments of `reset`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("tier").required(true).args(["soft", "hard", "nuke"])))]
pub struct Args {
    /// Empty the runtime tables; keep identities, regions, runners, API keys; services keep running.
    #[arg(long)]
    soft: bool,
    /// Drop and reload the schema, re-seed, empty the buckets; infrastructure keeps running.
    #[arg(long)]
    hard: bool,
    /// Stop everything and delete the whole state dir; the next `up` is a cold start.
    #[arg(long)]
    nuke: bool,
    /// Print the plan only.
    #[arg(long)]
    dry_run: bool,
    /// Do not ask (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
}

impl Args {
    fn tier(&self) -> Tier {
        if self.soft {
            Tier::Soft
        } else if self.hard {
            Tier::Hard
        } else {
            Tier::Nuke
        }
    }
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let tier = args.tier();
    // Nuke needs no migrations: it must work on a project whose schema is broken.
    let files = match tier {
        Tier::Nuke => Vec::new(),
        Tier::Soft | Tier::Hard => schema::discover(&schema::migrations_dir(&ctx.stack.root))?,
    };
    let plan = reset::plan(tier, &ctx.stack, &ctx.layout, &files);
    eprintln!("reset --{tier} will:");
    for step in &plan.steps {
        eprintln!("  - {step}");
    }
    if args.dry_run {
        eprintln!("(dry run: nothing changed)");
        return Ok(ExitStatus::Ok);
    }
    super::confirm(args.yes, "reset")?;
    let t0 = Instant::now();
    match tier {
        Tier::Soft => reset::soft(&ctx.exports().database_url(None)?, &files).await?,
        Tier::Hard => {
            let url = ctx.exports().database_url(None)?;
            let r = reset::hard(&ctx.engine(), &url, &files, super::interrupt_token()).await?;
            eprintln!("schema: reloaded {} migrations", r.migrations);
            eprintln!("{}", super::seed::render(&r.seeded));
            for (bucket, n) in &r.emptied {
                eprintln!("s3: deleted {n} objects from {bucket}");
            }
        }
        Tier::Nuke => {
            let (layout, root) = (ctx.layout.clone(), ctx.stack.root.clone());
            reset::nuke(&ctx.engine(), &layout, &root).await?;
        }
    }
    eprintln!("reset --{tier} done in {:.2}s", t0.elapsed().as_secs_f64());
    Ok(ExitStatus::Ok)
}
