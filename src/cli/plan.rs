//! `stack plan [SVC...]`: the start waves, without side effects.

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::graph;

/// Arguments of `plan`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to plan for (with their dependencies); all when none.
    services: Vec<String>,
}

pub fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    ctx.stack.check_names(&args.services)?;
    let plan = graph::plan(&ctx.stack, &graph::closure(&ctx.stack, &args.services));
    if ctx.json {
        super::print_json(&plan, false)?;
    } else {
        for (i, wave) in plan.waves.iter().enumerate() {
            let items: Vec<String> = wave
                .iter()
                .map(|n| {
                    let deps: Vec<String> = ctx.stack.services[n]
                        .depends_on
                        .iter()
                        .map(|(d, c)| format!("{d} {c}"))
                        .collect();
                    if deps.is_empty() {
                        n.clone()
                    } else {
                        format!("{n} (after {})", deps.join(", "))
                    }
                })
                .collect();
            println!("wave {}: {}", i + 1, items.join(", "));
        }
    }
    Ok(ExitStatus::Ok)
}
