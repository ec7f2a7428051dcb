//! `stack env [--json]`: the connection details the services export, ready for
//! `eval "$(stack env)"` (like `supabase status -o env`).

use std::collections::BTreeMap;

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
    let mut vars = BTreeMap::new();
    for svc in ctx.stack.services.values() {
        for (k, v) in &svc.exports {
            let value = crate::secrets::fill(&ctx.layout, v).map_err(|e| {
                CliError::Other(format!(
                    "cannot read the secrets of `{}` in {}: {e}\n  check that directory's permissions",
                    svc.name,
                    ctx.layout.secrets_dir().display()
                ))
            })?;
            vars.insert(k.clone(), value);
        }
    }
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
