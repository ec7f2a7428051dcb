//! The [`Checker`]: typed getters over the YAML tree that record every problem with file, line
//! and key path and carry on, and [`Key`], the table entry that names a key once for the parser,
//! the allowed-key check and the messages alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::interp::Vars;
use super::yaml::{Node, Value};
use super::SpecError;

/// What a section's values may refer to.
pub(super) struct Scope<'a> {
    /// `${...}` variables.
    pub vars: &'a Vars,
    /// The project root, which relative paths are resolved against.
    pub root: &'a Path,
    /// The service's named host ports (empty outside a service).
    pub ports: &'a BTreeMap<String, u16>,
}

/// A value to read: its node, its full key path and what it may refer to.
#[derive(Clone, Copy)]
pub(super) struct Field<'a> {
    /// The value.
    pub node: &'a Node,
    /// Its key path, e.g. `healthcheck.tcp.port`.
    pub path: &'a str,
    /// The variables, root and ports it may use.
    pub scope: &'a Scope<'a>,
}

impl<'a> Field<'a> {
    /// The value `node` at key path `path`, read in `scope`.
    pub fn new(node: &'a Node, path: &'a str, scope: &'a Scope<'a>) -> Self {
        Field { node, path, scope }
    }
}

/// Reads one key's value into a section's draft `T`.
pub(super) type Read<T> = fn(&mut Checker<'_>, Field<'_>, &mut T);

/// One key of a section: its name, written only here, and what reads its value.
pub(super) struct Key<T> {
    /// The key as written in YAML.
    pub name: &'static str,
    /// Parses the value into the draft, reporting problems on the checker.
    pub read: Read<T>,
}

/// A table entry: `key("user", |c, at, d| d.user = c.string_at(at))`.
pub(super) const fn key<T>(name: &'static str, read: Read<T>) -> Key<T> {
    Key { name, read }
}

/// The names of a key table, in table order (the order messages list them in).
pub(super) fn names<T>(keys: &[Key<T>]) -> Vec<&'static str> {
    keys.iter().map(|k| k.name).collect()
}

/// `a`, `b` or `c`, each in backticks, for messages listing what may be written. Words that
/// YAML 1.1 tools (and many compose files) read as booleans are shown quoted, as is safest.
pub(super) fn one_of(names: &[&str]) -> String {
    let shown: Vec<String> = names
        .iter()
        .map(|n| match *n {
            "no" | "yes" | "on" | "off" | "true" | "false" => format!("`\"{n}\"`"),
            _ => format!("`{n}`"),
        })
        .collect();
    match shown.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// A TCP port number, 1 to 65535.
pub(super) fn port_number(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|p| *p > 0)
}

/// `path.key`, or `key` at the top of a file.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Collects the problems of one file.
pub(super) struct Checker<'a> {
    /// The file, relative to the project root, as messages show it.
    pub file: PathBuf,
    /// Where problems go; shared by every file of the stack.
    pub errors: &'a mut Vec<SpecError>,
}

impl<'a> Checker<'a> {
    /// A checker reporting problems of `file` into `errors`.
    pub fn new(file: PathBuf, errors: &'a mut Vec<SpecError>) -> Self {
        Checker { file, errors }
    }

    /// Records a problem at `line` (0: not tied to a line) and key `path`.
    pub fn err(&mut self, line: usize, path: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.clone(),
            line,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Has a problem already been reported at `path` or below it?
    pub fn reported_under(&self, path: &str) -> bool {
        self.errors
            .iter()
            .any(|e| e.file == self.file && e.path.starts_with(path))
    }

    /// The entries of a mapping; unknown keys (not in `allowed`, unless empty) are reported.
    pub fn map<'n>(
        &mut self,
        node: &'n Node,
        path: &str,
        allowed: &[&str],
    ) -> Vec<(String, &'n Node)> {
        let Value::Map(entries) = &node.value else {
            if !matches!(node.value, Value::Null) {
                self.err(
                    node.line,
                    path,
                    format!("must be a mapping, found {}", node.kind()),
                );
            }
            return Vec::new();
        };
        let mut out: Vec<(String, &Node)> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.scalar_text() else {
                self.err(k.line, path, "keys must be plain strings");
                continue;
            };
            let kpath = join(path, &key);
            if !allowed.is_empty() && !allowed.contains(&key.as_str()) {
                self.err(
                    k.line,
                    &kpath,
                    format!("unknown key `{key}`: expected one of {}", one_of(allowed)),
                );
                continue;
            }
            if out.iter().any(|(seen, _)| *seen == key) {
                self.err(k.line, &kpath, format!("duplicate key `{key}`"));
                continue;
            }
            out.push((key, v));
        }
        out
    }

    /// Reads the mapping `at`, whose keys are those of `keys`, in file order, into `draft`.
    pub fn fields<T>(&mut self, at: Field<'_>, keys: &[Key<T>], draft: &mut T) {
        for (name, node) in self.map(at.node, at.path, &names(keys)) {
            if let Some(key) = keys.iter().find(|k| k.name == name) {
                (key.read)(
                    self,
                    Field::new(node, &join(at.path, &name), at.scope),
                    draft,
                );
            }
        }
    }

    /// The items of a list, each parsed by `item` with its own key path (`key[i]`).
    pub fn list<T>(
        &mut self,
        node: &Node,
        key: &str,
        what: &str,
        mut item: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Vec<T> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node.line,
                key,
                format!("must be a list of {what}, found {}", node.kind()),
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| item(self, n, &format!("{key}[{i}]")))
            .collect()
    }

    /// [`Checker::string`] of a field.
    pub fn string_at(&mut self, at: Field<'_>) -> Option<String> {
        self.string(at.node, at.path, at.scope.vars)
    }

    /// [`Checker::argv`] of a field.
    pub fn argv_at(&mut self, at: Field<'_>) -> Option<Vec<String>> {
        self.argv(at.node, at.path, at.scope.vars)
    }

    /// [`Checker::uint`] of a field.
    pub fn uint_at(&mut self, at: Field<'_>) -> Option<u32> {
        self.uint(at.node, at.path, at.scope.vars)
    }

    /// [`Checker::duration`] of a field.
    pub fn duration_at(&mut self, at: Field<'_>) -> Option<Duration> {
        self.duration(at.node, at.path, at.scope.vars)
    }

    /// A scalar with every `${...}` expanded.
    pub fn string(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<String> {
        self.string_with(node, path, |raw| vars.expand(raw))
    }

    /// A scalar expanded by `expand`; a problem (at `path`) when it is not a scalar or does not
    /// expand.
    fn string_with(
        &mut self,
        node: &Node,
        path: &str,
        expand: impl FnOnce(&str) -> Result<String, super::interp::InterpError>,
    ) -> Option<String> {
        let Some(raw) = node.scalar_text() else {
            self.err(
                node.line,
                path,
                format!("must be a string, found {}", node.kind()),
            );
            return None;
        };
        match expand(&raw) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(node.line, path, e.to_string());
                None
            }
        }
    }

    /// One of the names of `table`, as its value; `what` names the kind of value in messages.
    pub fn choice<T: Copy>(
        &mut self,
        node: &Node,
        path: &str,
        vars: &Vars,
        what: &str,
        table: &[(&str, T)],
    ) -> Option<T> {
        let text = self.string(node, path, vars)?;
        if let Some((_, value)) = table.iter().find(|(name, _)| *name == text) {
            return Some(*value);
        }
        let names: Vec<&str> = table.iter().map(|(name, _)| *name).collect();
        self.err(
            node.line,
            path,
            format!("unknown {what} `{text}`: use {}", one_of(&names)),
        );
        None
    }

    /// A program and its arguments: a non-empty list, never a shell string.
    pub fn argv(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<Vec<String>> {
        let Value::Seq(items) = &node.value else {
            self.err(
                node.line,
                path,
                format!(
                    "must be a list of arguments (an argv array, never a shell string), found {}",
                    node.kind()
                ),
            );
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            out.push(self.string(item, &format!("{path}[{i}]"), vars)?);
        }
        if out.is_empty() {
            self.err(node.line, path, "must name at least the program to run");
            return None;
        }
        Some(out)
    }

    /// A duration such as `250ms` or `1m30s`; a bare `0` is zero.
    pub fn duration(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<Duration> {
        let text = self.string(node, path, vars)?;
        match humantime::parse_duration(&text) {
            Ok(d) => Some(d),
            Err(_) if text.trim() == "0" => Some(Duration::ZERO),
            Err(e) => {
                self.err(
                    node.line,
                    path,
                    format!(
                        "`{text}` is not a duration ({e}): write e.g. `250ms`, `2s` or `1m30s`"
                    ),
                );
                None
            }
        }
    }

    /// A TCP port number, 1 to 65535.
    pub fn port(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<u16> {
        let text = self.string(node, path, vars)?;
        let port = port_number(&text);
        if port.is_none() {
            let message = format!("`{text}` is not a port number (1-65535)");
            self.err(node.line, path, message);
        }
        port
    }

    /// A non-negative integer.
    pub fn uint(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<u32> {
        let text = self.string(node, path, vars)?;
        match text.parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                self.err(
                    node.line,
                    path,
                    format!("`{text}` is not a non-negative integer"),
                );
                None
            }
        }
    }

    /// A mapping of names to strings, e.g. `environment:`. A null value is the empty string
    /// when `null_is_empty` (as `FOO:` in compose's `environment:`), a problem otherwise.
    /// `${secret.NAME}` is kept, for the backend to fill when it starts the service.
    pub fn string_map(
        &mut self,
        node: &Node,
        path: &str,
        vars: &Vars,
        null_is_empty: bool,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.map(node, path, &[]) {
            let value = if null_is_empty && matches!(v.value, Value::Null) {
                Some(String::new())
            } else {
                self.string_with(v, &join(path, &k), |raw| {
                    vars.expand_keeping_only_secrets(raw)
                })
            };
            if let Some(value) = value {
                out.insert(k, value);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_read_as_prose_with_yaml_booleans_quoted() {
        assert_eq!(one_of(&["a"]), "`a`");
        assert_eq!(one_of(&["a", "b"]), "`a` or `b`");
        assert_eq!(
            one_of(&["no", "on-failure", "always"]),
            "`\"no\"`, `on-failure` or `always`"
        );
        assert_eq!(join("", "name"), "name");
        assert_eq!(join("process", "user"), "process.user");
    }
}
