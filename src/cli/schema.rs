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
    /// Apply the pending migrations to a copy of the database (dropped after), reporting each
    /// one's time and locks; the database itself is untouched.
    Rehearse,
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let files = schema::discover(&schema::migrations_dir(&ctx.stack.root))?;
    let url = ctx.exports().database_url(args.database_url)?;
    if let Command::Rehearse = args.command {
        return rehearse(&url, &files, ctx.json).await;
    }
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
        Command::Rehearse => {}
    }
    Ok(ExitStatus::Ok)
}

async fn rehearse(
    url: &str,
    files: &[schema::Migration],
    json: bool,
) -> Result<ExitStatus, CliError> {
    let report = crate::rehearse::schema::rehearse(url, files).await?;
    if json {
        super::print_json(&report, true)?;
    } else if report.migrations.is_empty() && report.failure.is_none() {
        println!(
            "schema rehearse: no pending migration ({} applied): nothing to rehearse",
            report.already
        );
    } else {
        print!("{}", crate::rehearse::render(&report.phases));
        for m in &report.migrations {
            println!("{:04}_{}: {} ms, locks:", m.version, m.name, m.elapsed_ms);
            for l in &m.locks {
                let new = if l.created { " (created by it)" } else { "" };
                println!("  {:<24} {}{new}", l.mode, l.relation);
            }
        }
        if report.failure.is_none() {
            println!(
                "schema rehearse: passed on the copy {} (dropped); {} untouched",
                report.copy, report.database
            );
        }
    }
    report.into_result()?;
    Ok(ExitStatus::Ok)
}
