//! `stack.yaml`: the project's name, its backend and the `env_file` whose values every service
//! may refer to (the process environment overrides them, as in docker compose).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::checker::{key, Checker, Field, Key, Scope};
use super::defaults;
use super::discover::read_yaml;
use super::interp::Vars;
use super::{BackendChoice, SpecError};

/// What `stack.yaml` says, with the defaults for what it leaves out.
pub(super) struct StackFile {
    /// `name:`, or the project directory's name.
    pub name: String,
    /// `backend:`.
    pub backend: BackendChoice,
    /// The env file's values under the process environment: what `${VAR}` reads.
    pub env: BTreeMap<String, String>,
}

/// `name:`, also the key path of the message about a bad name.
const NAME: &str = "name";

/// The keys of `stack.yaml`.
const STACK_KEYS: &[Key<StackFile>] = &[
    key(NAME, |c, Field { node, path, scope }, stack| {
        if let Some(name) = c.string(node, path, scope.vars) {
            stack.name = name;
        }
    }),
    key("backend", |c, Field { node, path, scope }, stack| {
        if let Some(text) = c.string(node, path, scope.vars) {
            match text.parse() {
                Ok(b) => stack.backend = b,
                Err(e) => c.err(node.line, path, e.to_string()),
            }
        }
    }),
    key("env_file", read_env_file),
];

/// Reads the stack file at `file` (`rel` in messages) of the project at `root`. Problems are
/// reported and the defaults kept, so the services can still be checked.
pub(super) fn read(
    file: &Path,
    rel: &Path,
    root: &Path,
    process_env: &HashMap<String, String>,
    errors: &mut Vec<SpecError>,
) -> StackFile {
    let mut stack = StackFile {
        name: root
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| defaults::STACK_NAME.into()),
        backend: defaults::BACKEND,
        env: BTreeMap::new(),
    };
    // stack.yaml itself sees only the process environment: the env file is not read yet.
    let vars = Vars {
        env: process_env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        own: BTreeMap::new(),
    };
    let mut c = Checker::new(rel.to_path_buf(), errors);
    if let Some(doc) = read_yaml(file, rel, c.errors) {
        let scope = Scope {
            vars: &vars,
            root,
            ports: &BTreeMap::new(),
        };
        c.fields(Field::new(&doc, "", &scope), STACK_KEYS, &mut stack);
    }
    // The process environment wins over the env file, as in docker compose.
    stack.env.extend(vars.env);
    if !stack
        .name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        let message = format!(
            "`{}` may contain only letters, digits, `-` and `_`",
            stack.name
        );
        c.err(0, NAME, message);
    }
    stack
}

/// `env_file:`: `KEY=value` lines, relative to the project root.
fn read_env_file(c: &mut Checker<'_>, at: Field<'_>, stack: &mut StackFile) {
    let Field { node, path, scope } = at;
    let Some(name) = c.string(node, path, scope.vars) else {
        return;
    };
    match dotenvy::from_path_iter(scope.root.join(&name)) {
        Ok(iter) => {
            for item in iter {
                match item {
                    Ok((k, v)) => {
                        stack.env.insert(k, v);
                    }
                    Err(e) => c.err(
                        node.line,
                        path,
                        format!("`{name}` is not a valid env file: {e}"),
                    ),
                }
            }
        }
        Err(e) => c.err(
            node.line,
            path,
            format!("cannot read `{name}`: {e}: create it or remove `{path}`"),
        ),
    }
}
