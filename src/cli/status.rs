//! `stack status`: a table, or `--json` with the shape documented in design.md section 5.

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::status;

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(_args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    let rows = status::collect(&ctx.stack, &ctx.backend, &ctx.layout).await;
    if ctx.json {
        let doc = serde_json::json!({ "services": rows });
        super::print_json(&doc, true)?;
        return Ok(ExitStatus::Ok);
    }
    // An INFO column only when a service tells something about itself (`info:`).
    let with_info = rows.iter().any(|r| !r.info.is_empty());
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
                r.name.clone(),
                r.state.to_string(),
                if r.healthy { "yes".into() } else { "no".into() },
                r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                {
                    let mut ports: Vec<u16> = r.ports.values().copied().collect();
                    ports.sort_unstable();
                    ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                r.timings
                    .ready_ms
                    .map(|m| format!("{:.2}s", m as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                format!("{} {}", r.backend, r.program),
            ];
            if with_info {
                row.push(
                    r.info
                        .iter()
                        .map(|(k, v)| match v {
                            serde_json::Value::String(s) => format!("{k}={s}"),
                            other => format!("{k}={other}"),
                        })
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            row
        })
        .collect();
    let mut header = vec![
        "NAME",
        "STATE",
        "HEALTHY",
        "PID",
        "PORTS",
        "READY IN",
        "BACKEND PROGRAM",
    ];
    if with_info {
        header.push("INFO");
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &table {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let header: Vec<String> = header.into_iter().map(String::from).collect();
    println!("{}", line(&header));
    for row in &table {
        println!("{}", line(row));
    }
    for r in rows
        .iter()
        .filter(|r| r.error.is_some() || r.state == "failed")
    {
        let why = r
            .error
            .clone()
            .or_else(|| r.last_exit.clone())
            .unwrap_or_default();
        println!("{}: {why} (see `stack logs {}`)", r.name, r.name);
    }
    Ok(ExitStatus::Ok)
}
