//! `stack reset --soft|--hard|--nuke [--dry-run] [--yes]`: the three reset tiers, each printing
//! its plan first. Nothing outside the state dir is ever touched.

use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};

use super::{schema::database_url, seed::seed_all, CliError, Ctx};
use crate::exit::ExitStatus;
use crate::schema;

/// Runtime tables a soft reset empties.
pub const RUNTIME_TABLES: [&str; 4] = ["sandboxes", "snapshots", "sandbox_backups", "audit_log"];
/// Tables a soft reset keeps.
pub const KEPT_TABLES: [&str; 6] = [
    "users",
    "organizations",
    "organization_users",
    "regions",
    "runners",
    "api_keys",
];

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

fn plan(args: &Args, ctx: &Ctx) -> Vec<String> {
    if args.soft {
        vec![
            format!(
                "truncate {} (identities restart)",
                RUNTIME_TABLES.join(", ")
            ),
            format!("keep {}", KEPT_TABLES.join(", ")),
            "services keep running".into(),
        ]
    } else if args.hard {
        vec![
            "stop L2 components (this stack has none yet)".into(),
            "DROP SCHEMA public CASCADE: every table of the control plane and the schema ledger"
                .into(),
            "reload sql/migrations, then re-seed (region, users, organizations, admin API key)"
                .into(),
            format!(
                "delete every object in the buckets {}",
                super::seed::BUCKETS.join(", ")
            ),
            "L1 services (postgres, redis, minio, dex, registry, caddy) keep running".into(),
        ]
    } else {
        vec![
            "stop every service (dependents first)".into(),
            format!(
                "delete {} (all data, logs, records and secrets)",
                ctx.layout.root().display()
            ),
            "nothing outside it is touched; the next `stack up` is a cold start".into(),
        ]
    }
}

fn confirm(args: &Args) -> Result<(), CliError> {
    if args.yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(
            "refusing to reset without `--yes`: stdin is not a terminal, so nobody can confirm"
                .into(),
        ));
    }
    eprint!("proceed? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Usage("reset cancelled".into()))
    }
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let tier = if args.soft {
        "soft"
    } else if args.hard {
        "hard"
    } else {
        "nuke"
    };
    eprintln!("reset --{tier} will:");
    for line in plan(&args, &ctx) {
        eprintln!("  - {line}");
    }
    if args.dry_run {
        eprintln!("(dry run: nothing changed)");
        return Ok(ExitStatus::Ok);
    }
    confirm(&args)?;
    let t0 = Instant::now();
    if args.soft {
        let url = database_url(&ctx, None)?;
        let mut c = schema::connect(&url, Duration::from_secs(5)).await?;
        sqlx::raw_sql(&format!(
            "TRUNCATE {} RESTART IDENTITY CASCADE",
            RUNTIME_TABLES.join(", ")
        ))
        .execute(&mut c)
        .await
        .map_err(|e| {
            CliError::Other(format!(
                "truncate failed: {e}\n  is the schema loaded? run `stack schema load`"
            ))
        })?;
    } else if args.hard {
        let url = database_url(&ctx, None)?;
        let files = schema::discover(&ctx.stack.root.join("sql/migrations"))?;
        let mut c = schema::connect(&url, Duration::from_secs(5)).await?;
        schema::drop_all(&mut c).await?;
        let r = schema::load(&mut c, &files).await?;
        eprintln!("schema: reloaded {} migrations", r.applied.len());
        eprintln!("{}", seed_all(&ctx, &url, None).await?);
        if let Some(client) = ctx.s3_client() {
            for b in super::seed::BUCKETS {
                let n = crate::s3::empty_bucket(&client, b)
                    .await
                    .map_err(|e| CliError::Other(format!("emptying bucket {b} failed: {e}\n  is the S3 service up? try `stack up minio`, then run this reset again")))?;
                eprintln!("s3: deleted {n} objects from {b}");
            }
        }
    } else {
        nuke(ctx).await?;
    }
    eprintln!("reset --{tier} done in {:.2}s", t0.elapsed().as_secs_f64());
    Ok(ExitStatus::Ok)
}

async fn nuke(ctx: Ctx) -> Result<(), CliError> {
    let root = ctx.layout.root().to_path_buf();
    if !root.exists() {
        return Ok(());
    }
    // Only ever delete a directory that is a stack state dir: a wrong `--state-dir` must not
    // cost anyone their files.
    let looks_like_state = root.join("stack.lock").exists() || root.join("run").is_dir();
    let empty = std::fs::read_dir(&root)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !looks_like_state && !empty {
        return Err(CliError::Usage(format!(
            "{} does not look like a stack state dir (no stack.lock, no run/): refusing to delete it",
            root.display()
        )));
    }
    if root == ctx.stack.root || ctx.stack.root.starts_with(&root) {
        return Err(CliError::Usage(format!(
            "the state dir {} contains the project itself: refusing to delete it",
            root.display()
        )));
    }
    let engine = ctx.engine();
    engine.down(&[]).await?;
    // remove_dir_all does not follow symlinks: a link inside the state dir is removed, not its target.
    std::fs::remove_dir_all(&root)
        .map_err(|e| CliError::Other(format!("cannot delete {}: {e}\n  check its permissions, then run `stack reset --nuke --yes` again", root.display())))?;
    Ok(())
}
