//! `process:`: how a service runs natively: its argv, how it is stopped, as whom and where.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::checker::{join, key, Checker, Field, Key};
use super::defaults;

/// The native-process part of a service.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// argv; never a shell string.
    pub command: Vec<String>,
    /// Signal that asks for a clean stop (SIGTERM by default; PostgreSQL wants SIGINT).
    pub stop_signal: Signal,
    /// How long to wait after `stop_signal` before SIGKILL.
    pub stop_grace_period: Duration,
    /// Unprivileged user to run as when `stack` runs as root.
    pub user: Option<String>,
    /// Working directory (the project root by default).
    pub working_dir: PathBuf,
    /// What to tell a user whose machine lacks the program.
    pub install_hint: Option<String>,
    /// A command printing the program's version, for `status` (e.g. `[garage, --version]`).
    pub version: Option<Vec<String>>,
    /// What happens to the processes it leaves behind when it exits on its own.
    pub orphans: Orphans,
}

/// What the supervisor does with the processes a service leaves behind (`process.orphans`)
/// when it exits on its own. On a stop, whatever it left is killed either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Orphans {
    /// Kill them: a restarted server must find its ports and files free (PostgreSQL's
    /// backends, which leave its process group, are the case in point).
    #[default]
    Kill,
    /// Keep them for the next instance to take back: a runner's sandboxes outlive its crash.
    Keep,
}

/// The values of `process.orphans`.
const ORPHANS: &[(&str, Orphans)] = &[("kill", Orphans::Kill), ("keep", Orphans::Keep)];

/// `process:` while its keys are read; `command` is required, so it starts out missing.
struct Draft {
    command: Option<Vec<String>>,
    spec: ProcessSpec,
}

/// `process.command`, the one required key.
const COMMAND: &str = "command";

/// The keys of `process:`.
const PROCESS_KEYS: &[Key<Draft>] = &[
    key(COMMAND, |c, at, d| d.command = c.argv_at(at)),
    key("stop_signal", |c, Field { node, path, scope }, d| {
        let Some(name) = c.string(node, path, scope.vars) else {
            return;
        };
        match parse_signal(&name) {
            Some(sig) => d.spec.stop_signal = sig,
            None => c.err(
                node.line,
                path,
                format!("`{name}` is not a signal name: use e.g. `SIGTERM`, `SIGINT` or `SIGQUIT`"),
            ),
        }
    }),
    key("stop_grace_period", |c, Field { node, path, scope }, d| {
        if let Some(period) = c.duration(node, path, scope.vars) {
            d.spec.stop_grace_period = period;
        }
    }),
    key("user", |c, at, d| d.spec.user = c.string_at(at)),
    key("working_dir", |c, Field { node, path, scope }, d| {
        if let Some(dir) = c.string(node, path, scope.vars) {
            d.spec.working_dir = scope.root.join(dir);
        }
    }),
    key("install", |c, at, d| d.spec.install_hint = c.string_at(at)),
    key("version", |c, at, d| d.spec.version = c.argv_at(at)),
    key("orphans", |c, Field { node, path, scope }, d| {
        if let Some(o) = c.choice(node, path, scope.vars, "orphans policy", ORPHANS) {
            d.spec.orphans = o;
        }
    }),
];

/// Parses `process:` at `path`; `None` (with a problem reported) without a valid command.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> Option<ProcessSpec> {
    let Field { node, path, scope } = at;
    let mut d = Draft {
        command: None,
        spec: ProcessSpec {
            command: Vec::new(),
            stop_signal: defaults::STOP_SIGNAL,
            stop_grace_period: defaults::STOP_GRACE_PERIOD,
            user: None,
            working_dir: scope.root.to_path_buf(),
            install_hint: None,
            version: None,
            orphans: Orphans::Kill,
        },
    };
    c.fields(at, PROCESS_KEYS, &mut d);
    let Some(command) = d.command else {
        let command_path = join(path, COMMAND);
        // A command that was written but invalid has its own, more precise problem.
        if !c.reported_under(&command_path) {
            c.err(
                node.line,
                &command_path,
                "is required: the program and its arguments as a list",
            );
        }
        return None;
    };
    d.spec.command = command;
    Some(d.spec)
}

/// Parses `SIGTERM`, `TERM` or `sigterm`.
pub(crate) fn parse_signal(s: &str) -> Option<Signal> {
    let upper = s.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_with_or_without_the_prefix_in_any_case() {
        for name in ["SIGINT", "INT", "sigint", " int "] {
            assert_eq!(parse_signal(name), Some(Signal::SIGINT), "{name}");
        }
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
