//! `stack doctor`: the preflight checks, reported all together; exit 4 when one fails.

use super::{CliError, Ctx};
use crate::doctor;
use crate::exit::ExitStatus;

/// Arguments of `doctor`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let names: Vec<String> = ctx.stack.services.keys().cloned().collect();
    let backend = ctx.backend.as_ref();
    let mut report = doctor::diagnose(&ctx.stack, backend, &names, &ctx.boxes, |n| {
        ctx.stack
            .services
            .get(n)
            .is_some_and(|s| backend.inspect(s).is_up())
    });
    if let Some(why) = &ctx.backend_refusal {
        report.checks.push(doctor::Check {
            name: "backend".into(),
            status: "fail",
            detail: format!("the microvm backend cannot run here: {}", why.reason),
            fix: why.fix.clone(),
        });
    }
    if ctx.json {
        let doc = serde_json::json!({ "passed": report.passed(), "backend": backend.name(), "checks": report.checks });
        super::print_json(&doc, true)?;
    } else {
        if let Some(n) = &ctx.backend_note {
            println!("note  {n}");
        }
        for c in &report.checks {
            println!("{:<5} {}: {}", c.status, c.name, c.detail);
            if !c.fix.is_empty() {
                println!("      fix: {}", c.fix);
            }
        }
    }
    Ok(if report.passed() {
        ExitStatus::Ok
    } else {
        ExitStatus::Preflight
    })
}
