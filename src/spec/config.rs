//! `configs:`: templates in the project rendered into a service's files before each start, with
//! `${secret.NAME}` and the backend's values left for start time.

use std::path::PathBuf;

use super::checker::{join, key, Checker, Field, Key};
use super::defaults;
use super::display_path;

/// A file rendered from a template in the project (`configs:`).
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// The template.
    pub source: PathBuf,
    /// Where it is written (absolute; usually under `${data_dir}`).
    pub target: PathBuf,
    /// The rendered text, `${secret.NAME}` references still in place.
    pub content: String,
    /// File mode.
    pub mode: u32,
}

/// An entry while its keys are read.
struct Draft {
    /// The template and the line that names it.
    source: Option<(PathBuf, usize)>,
    target: Option<PathBuf>,
    mode: u32,
}

const SOURCE: &str = "source";
const TARGET: &str = "target";

/// The keys of one `configs:` entry.
const CONFIG_KEYS: &[Key<Draft>] = &[
    key(SOURCE, |c, Field { node, path, scope }, d| {
        d.source = c
            .string(node, path, scope.vars)
            .map(|s| (scope.root.join(s), node.line))
    }),
    key(TARGET, |c, at, d| {
        d.target = c.string_at(at).map(PathBuf::from)
    }),
    key("mode", |c, Field { node, path, scope }, d| {
        let Some(text) = c.string(node, path, scope.vars) else {
            return;
        };
        match u32::from_str_radix(text.trim_start_matches("0o"), 8) {
            Ok(mode) => d.mode = mode,
            Err(_) => c.err(node.line, path, "must be an octal file mode such as `0600`"),
        }
    }),
];

/// Parses the entry at `path` (`configs[i]`) and renders its template.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> Option<ConfigFile> {
    let Field { node, path, scope } = at;
    let mut d = Draft {
        source: None,
        target: None,
        mode: defaults::CONFIG_MODE,
    };
    c.fields(at, CONFIG_KEYS, &mut d);
    let (Some((source, line)), Some(target)) = (d.source, d.target) else {
        c.err(
            node.line,
            path,
            format!("needs both `{SOURCE}` (a template in the project) and `{TARGET}`"),
        );
        return None;
    };
    if !target.is_absolute() {
        c.err(
            node.line,
            &join(path, TARGET),
            "must be an absolute path, e.g. `${data_dir}/app.conf`",
        );
        return None;
    }
    let source_path = join(path, SOURCE);
    let text = match std::fs::read_to_string(&source) {
        Ok(t) => t,
        Err(e) => {
            c.err(
                line,
                &source_path,
                format!("cannot read {}: {e}", source.display()),
            );
            return None;
        }
    };
    // Secrets are filled in at start (they may not exist yet, and `plan` must not create them).
    match scope.vars.expand_keeping_secrets(&text) {
        Ok(content) => Some(ConfigFile {
            source,
            target,
            content,
            mode: d.mode,
        }),
        Err(e) => {
            c.err(
                line,
                &source_path,
                format!("in {}: {e}", display_path(&source, scope.root).display()),
            );
            None
        }
    }
}
