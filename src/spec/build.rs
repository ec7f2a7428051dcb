//! `build:` and `watch:`: how a native component is built from its sources, which files decide
//! whether it must be built again, and which files `stack up --watch` follows.

use std::path::PathBuf;

use super::checker::{join, key, Checker, Field, Key};

/// How to build a component before it starts (`build:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildSpec {
    /// argv, run in `working_dir` as the user running `stack`.
    pub command: Vec<String>,
    /// Globs, relative to the project root, of the files whose content decides whether the last
    /// successful build is still good (`**` crosses directories, `*` does not).
    pub inputs: Vec<String>,
    /// Where the command runs (the project root by default).
    pub working_dir: PathBuf,
}

/// `build:` while its keys are read.
struct Draft {
    command: Option<Vec<String>>,
    inputs: Option<Vec<String>>,
    working_dir: Option<PathBuf>,
}

/// The keys of `build:`.
const BUILD_KEYS: &[Key<Draft>] = &[
    key("command", |c, at, d| d.command = c.argv_at(at)),
    key("inputs", |c, at, d| d.inputs = globs(c, at)),
    key("working_dir", |c, Field { node, path, scope }, d| {
        d.working_dir = c.string(node, path, scope.vars).map(|p| scope.root.join(p));
    }),
];

/// Parses `build:`; `None` (with a problem reported) without a command or inputs.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> Option<BuildSpec> {
    let Field { node, path, scope } = at;
    let mut d = Draft {
        command: None,
        inputs: None,
        working_dir: None,
    };
    c.fields(at, BUILD_KEYS, &mut d);
    for (key, missing, what) in [
        ("command", d.command.is_none(), "the build command as a list, e.g. `[cargo, build, --release]`"),
        ("inputs", d.inputs.is_none(), "the globs of the files the build reads, e.g. `[\"src/**\", Cargo.lock]`: a warm `up` builds only when their content changed"),
    ] {
        let kpath = join(path, key);
        if missing && !c.reported_under(&kpath) {
            c.err(node.line, &kpath, format!("is required: {what}"));
        }
    }
    Some(BuildSpec {
        command: d.command?,
        inputs: d.inputs?,
        working_dir: d.working_dir.unwrap_or_else(|| scope.root.to_path_buf()),
    })
}

/// A list of globs relative to the project root, each checked to compile.
pub(super) fn globs(c: &mut Checker<'_>, at: Field<'_>) -> Option<Vec<String>> {
    let Field { node, path, scope } = at;
    let list = c.list(node, path, "globs", |c, item, p| {
        let text = c.string(item, p, scope.vars)?;
        if text.starts_with('/') || text.split('/').any(|part| part == "..") {
            c.err(
                item.line,
                p,
                format!("`{text}` leaves the project: write a glob relative to the project root"),
            );
            return None;
        }
        match glob(&text) {
            Ok(_) => Some(text),
            Err(e) => {
                c.err(item.line, p, format!("`{text}` is not a valid glob: {e}"));
                None
            }
        }
    });
    if list.is_empty() && !c.reported_under(path) {
        c.err(node.line, path, "names no file: give at least one glob");
        return None;
    }
    Some(list)
}

/// `text` as a glob in which `*` stays within one directory and `**` crosses them.
pub fn glob(text: &str) -> Result<globset::Glob, globset::Error> {
    globset::GlobBuilder::new(text)
        .literal_separator(true)
        .build()
}
