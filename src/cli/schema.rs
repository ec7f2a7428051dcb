//! `stack schema load|status`: the control plane's migrations against the stack's PostgreSQL.

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::schema;

/// Arguments of `schema`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
    /// The database (default: the stack's exported DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Apply pending migrations (a no-op on a loaded database); refuse a half-applied one (exit 3).
    Load,
    /// List applied and pending migrations, and what a load would refuse.
    Status,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let files = schema::discover(&schema::migrations_dir(&ctx.stack.root))?;
    let url = ctx.exports().database_url(args.database_url)?;
    let mut conn = schema::connect(&url, schema::CONNECT_TIMEOUT).await?;
    match args.command {
        Command::Load => {
            let r = schema::load(&mut conn, &files).await?;
            if ctx.json {
                super::print_json(&r, false)?;
            } else if r.applied.is_empty() {
                eprintln!(
                    "schema: up to date ({} migrations applied) in {} ms",
                    r.already,
                    r.elapsed.as_millis()
                );
            } else {
                eprintln!(
                    "schema: applied {} ({} statements) in {} ms",
                    r.applied.join(", "),
                    r.statements,
                    r.elapsed.as_millis()
                );
            }
        }
        Command::Status => {
            let st = schema::inspect(&mut conn, &files).await?;
            if ctx.json {
                super::print_json(&st, true)?;
            } else {
                for a in &st.applied {
                    println!("applied  {:04}_{}  {}", a.version, a.name, a.applied_at);
                }
                for p in &st.pending {
                    println!("pending  {:04}_{}", p.version, p.name);
                }
                for p in &st.problems {
                    println!("problem  {p}");
                }
            }
        }
    }
    Ok(ExitStatus::Ok)
}
