//! `stack env [--json]`: the connection details the services export, ready for
//! `eval "$(stack env)"` (like `supabase status -o env`).

use super::{CliError, Ctx};
use crate::exit::ExitStatus;

/// Arguments of `env`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Single-quotes a value for POSIX shells.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

pub fn run(_args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let vars = ctx.exports().all()?;
    if ctx.json {
        super::print_json(&vars, true)?;
    } else {
        println!(
            "# connection details of `{}`: eval \"$(stack env)\"",
            ctx.stack.name
        );
        for (k, v) in &vars {
            println!("export {k}={}", shell_quote(v));
        }
    }
    Ok(ExitStatus::Ok)
}
