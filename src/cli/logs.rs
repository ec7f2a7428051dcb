//! `stack logs [SVC...] [-f] [-n N]`: every service's log, merged in time order, one color and
//! prefix per service (NO_COLOR honoured).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::{CliError, Ctx};
use crate::exit::ExitStatus;
use crate::supervisor::log::{parse_line, read_entries};

/// Arguments of `logs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Services to show; all when none.
    services: Vec<String>,
    /// Keep printing new lines as they arrive.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines (of the merged output).
    #[arg(short = 'n', long = "tail", value_name = "N")]
    tail: Option<usize>,
}

const COLORS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

struct Printer {
    color: bool,
    width: usize,
    colors: BTreeMap<String, &'static str>,
}

impl Printer {
    fn print(&self, out: &mut impl Write, svc: &str, stream: &str, text: &str) {
        let prefix = format!("{svc:<w$} |", w = self.width);
        let marker = if stream == "sup" { "[stack] " } else { "" };
        let _ = if self.color {
            writeln!(
                out,
                "\x1b[{}m{prefix}\x1b[0m {marker}{text}",
                self.colors[svc]
            )
        } else {
            writeln!(out, "{prefix} {marker}{text}")
        };
    }
}

pub async fn run(args: Args, ctx: Ctx) -> Result<ExitStatus, CliError> {
    ctx.stack.check_names(&args.services)?;
    let names: Vec<String> = if args.services.is_empty() {
        ctx.stack.services.keys().cloned().collect()
    } else {
        args.services.clone()
    };
    let printer = Printer {
        color: std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
        width: names.iter().map(String::len).max().unwrap_or(0),
        colors: names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), COLORS[i % COLORS.len()]))
            .collect(),
    };
    let mut merged = Vec::new();
    for n in &names {
        for e in read_entries(&ctx.layout.log_file(n)) {
            merged.push((e.ts.clone(), n.clone(), e));
        }
    }
    // Stable sort: lines of one service keep their order even with equal timestamps.
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = args.tail.map_or(0, |n| merged.len().saturating_sub(n));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (_, svc, e) in &merged[skip..] {
        printer.print(&mut out, svc, &e.stream, &e.text);
    }
    let _ = out.flush();
    drop(out);
    if !args.follow {
        return Ok(ExitStatus::Ok);
    }
    let mut offsets: BTreeMap<String, (PathBuf, u64)> = names
        .iter()
        .map(|n| {
            let p = ctx.layout.log_file(n);
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (n.clone(), (p, len))
        })
        .collect();
    let mut partial: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut fresh = Vec::new();
        for (n, (path, off)) in offsets.iter_mut() {
            let len = std::fs::metadata(&*path).map(|m| m.len()).unwrap_or(0);
            if len < *off {
                *off = 0; // rotated
            }
            if len == *off {
                continue;
            }
            let Ok(mut f) = std::fs::File::open(&*path) else {
                continue;
            };
            if f.seek(SeekFrom::Start(*off)).is_err() {
                continue;
            }
            let mut buf = String::new();
            if f.read_to_string(&mut buf).is_err() {
                continue;
            }
            *off += buf.len() as u64;
            let carry = partial.entry(n.clone()).or_default();
            carry.push_str(&buf);
            while let Some(i) = carry.find('\n') {
                let line: String = carry.drain(..=i).collect();
                let e = parse_line(line.trim_end_matches('\n'));
                fresh.push((e.ts.clone(), n.clone(), e));
            }
        }
        fresh.sort_by(|a, b| a.0.cmp(&b.0));
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (_, svc, e) in &fresh {
            printer.print(&mut out, svc, &e.stream, &e.text);
        }
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(ExitStatus::Ok),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
