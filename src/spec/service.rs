//! One service file (`services/NAME.yaml`) parsed into a [`ServiceSpec`], every `${...}`
//! expanded. Its sections (`process:`, `box:`, `healthcheck:`, ...) are read by their own modules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::checker::{join, key, Checker, Field, Key, Scope};
use super::discover::ServiceFile;
use super::interp::Vars;
use super::yaml::{Node, Value};
use super::{boxed, build, config, defaults, health, init, process};
use super::{
    BoxSpec, BuildSpec, Condition, ConfigFile, Healthcheck, InitStep, ProcessSpec, RestartPolicy,
    ServiceSpec,
};

/// `name:`; also read before parsing, by the table of every service's ports.
pub(super) const NAME: &str = "name";
/// `ports:`; also read before parsing, by the table of every service's ports.
pub(super) const PORTS: &str = "ports";

/// A service as parsed, with the positions the cross-service checks point at.
pub(super) struct ParsedService {
    /// The service, complete even when parts were invalid (their problems are reported).
    pub spec: ServiceSpec,
    /// Its file relative to the project root, as messages show it.
    pub rel: PathBuf,
    /// The line of `name:` (0 when the name is the file's).
    pub name_line: usize,
    /// The line of each named port.
    pub port_lines: BTreeMap<String, usize>,
    /// The line of each dependency.
    pub dep_lines: BTreeMap<String, usize>,
    /// A healthcheck was written, even if invalid (its own problem is already reported).
    pub wrote_healthcheck: bool,
}

/// A service while its keys are read: values so far, and the variables they may use.
struct Draft<'a> {
    /// The environment and the shared variables, without the service's own.
    base: &'a Vars,
    root: &'a Path,
    state_dir: &'a Path,
    /// `base` plus the service's own variables (`${data_dir}`, `${port.NAME}`, ...).
    vars: Vars,
    name: String,
    name_line: usize,
    data_dir: PathBuf,
    description: Option<String>,
    ports: BTreeMap<String, u16>,
    port_lines: BTreeMap<String, usize>,
    environment: BTreeMap<String, String>,
    depends_on: BTreeMap<String, Condition>,
    dep_lines: BTreeMap<String, usize>,
    process: Option<ProcessSpec>,
    wrote_process: bool,
    image: Option<String>,
    boxed: Option<BoxSpec>,
    healthcheck: Option<Healthcheck>,
    wrote_healthcheck: bool,
    restart: RestartPolicy,
    init: Vec<InitStep>,
    configs: Vec<ConfigFile>,
    exports: BTreeMap<String, String>,
    build: Option<BuildSpec>,
    build_line: usize,
    watch: Vec<String>,
    info: Option<String>,
}

impl<'a> Draft<'a> {
    fn new(base: &'a Vars, root: &'a Path, state_dir: &'a Path, stem: &str) -> Self {
        let mut draft = Draft {
            base,
            root,
            state_dir,
            vars: base.clone(),
            name: stem.to_string(),
            name_line: 0,
            data_dir: PathBuf::new(),
            description: None,
            ports: BTreeMap::new(),
            port_lines: BTreeMap::new(),
            environment: BTreeMap::new(),
            depends_on: BTreeMap::new(),
            dep_lines: BTreeMap::new(),
            process: None,
            wrote_process: false,
            image: None,
            boxed: None,
            healthcheck: None,
            wrote_healthcheck: false,
            restart: defaults::RESTART,
            init: Vec::new(),
            configs: Vec::new(),
            exports: BTreeMap::new(),
            build: None,
            build_line: 0,
            watch: Vec::new(),
            info: None,
        };
        draft.set_identity();
        draft
    }

    /// The variables that follow from the service's name.
    fn set_identity(&mut self) {
        self.data_dir = self.state_dir.join("data").join(&self.name);
        let own = &mut self.vars.own;
        own.insert("data_dir".into(), self.data_dir.display().to_string());
        own.insert("state_dir".into(), self.state_dir.display().to_string());
        own.insert("project_dir".into(), self.root.display().to_string());
        own.insert("service".into(), self.name.clone());
    }

    fn scope(&self) -> Scope<'_> {
        Scope {
            vars: &self.vars,
            root: self.root,
            ports: &self.ports,
        }
    }
}

/// Reads one key of a service into the draft; the key's name is its path.
type ReadService = fn(&mut Checker<'_>, &Node, &str, &mut Draft<'_>);

/// The keys of a service file, read in this order whatever the file's order: `name` and `ports`
/// first, since every other value may refer to them.
const SERVICE_KEYS: &[(&str, ReadService)] = &[
    (NAME, |c, node, path, d| {
        // The name may use the environment, not the variables that follow from the name.
        if let Some(name) = c.string(node, path, d.base) {
            d.name = name;
        }
        d.name_line = node.line;
        d.set_identity();
    }),
    ("description", |_, node, _, d| {
        d.description = node.scalar_text()
    }),
    (PORTS, |c, node, path, d| {
        for (name, pnode) in c.map(node, path, &[]) {
            if let Some(port) = c.port(pnode, &join(path, &name), &d.vars) {
                d.ports.insert(name.clone(), port);
                d.port_lines.insert(name, pnode.line);
            }
        }
        // Only after all are read: a port may not refer to another.
        for (name, port) in &d.ports {
            d.vars.own.insert(format!("port.{name}"), port.to_string());
        }
    }),
    ("environment", |c, node, path, d| {
        d.environment = c.string_map(node, path, &d.vars, true)
    }),
    ("depends_on", read_depends_on),
    ("process", |c, node, path, d| {
        d.wrote_process = true;
        d.process = process::read(c, Field::new(node, path, &d.scope()));
    }),
    ("image", |c, node, path, d| {
        d.image = c.string(node, path, &d.vars)
    }),
    ("box", |c, node, path, d| {
        d.boxed = Some(boxed::read(c, Field::new(node, path, &d.scope())))
    }),
    ("healthcheck", |c, node, path, d| {
        d.wrote_healthcheck = true;
        d.healthcheck = health::read(c, Field::new(node, path, &d.scope()));
    }),
    ("restart", |c, node, path, d| {
        d.restart = match node.value {
            // `restart: false` reads as never, as `"no"` does.
            Value::Bool(false) => RestartPolicy::No,
            _ => c
                .choice(node, path, &d.vars, "restart policy", RESTART_POLICIES)
                .unwrap_or(defaults::RESTART),
        }
    }),
    ("init", |c, node, path, d| {
        let scope = d.scope();
        let steps = c.list(node, path, "steps", |c, item, p| {
            init::read(c, Field::new(item, p, &scope))
        });
        d.init = steps;
    }),
    ("configs", |c, node, path, d| {
        let scope = d.scope();
        let files = c.list(node, path, "{source, target} entries", |c, item, p| {
            config::read(c, Field::new(item, p, &scope))
        });
        d.configs = files;
    }),
    ("exports", read_exports),
    ("build", |c, node, path, d| {
        d.build_line = node.line;
        d.build = build::read(c, Field::new(node, path, &d.scope()));
    }),
    ("watch", |c, node, path, d| {
        d.watch = build::globs(c, Field::new(node, path, &d.scope())).unwrap_or_default();
    }),
    ("info", |c, node, path, d| {
        d.info = match c.string(node, path, &d.vars) {
            Some(url) if health::is_http_url(&url) => Some(url),
            Some(url) => {
                let message = format!(
                    "`{url}` must start with `http://` or `https://`: the URL `status` reads the service's JSON details from"
                );
                c.err(node.line, path, message);
                None
            }
            None => None,
        }
    }),
];

/// The values of `restart:`; `unless-stopped` is compose's name for `always`.
const RESTART_POLICIES: &[(&str, RestartPolicy)] = &[
    ("no", RestartPolicy::No),
    ("on-failure", RestartPolicy::OnFailure),
    ("always", RestartPolicy::Always),
    ("unless-stopped", RestartPolicy::Always),
];

/// The values of a dependency's `condition:`.
const CONDITIONS: &[(&str, Condition)] = &[
    ("service_started", Condition::ServiceStarted),
    ("service_healthy", Condition::ServiceHealthy),
    (
        "service_completed_successfully",
        Condition::ServiceCompletedSuccessfully,
    ),
];

/// The keys of one `depends_on` entry written as a mapping.
const DEPENDENCY_KEYS: &[Key<Condition>] = &[key(
    "condition",
    |c, Field { node, path, scope }, condition| {
        if let Some(cond) = c.choice(node, path, scope.vars, "condition", CONDITIONS) {
            *condition = cond;
        }
    },
)];

/// Parses one service file. The service is returned even when parts were invalid, so the
/// cross-service checks still see it; the stack is refused if any problem was reported.
pub(super) fn read(
    c: &mut Checker<'_>,
    file: &ServiceFile,
    env: &BTreeMap<String, String>,
    shared: &BTreeMap<String, String>,
    state_dir: &Path,
    root: &Path,
) -> ParsedService {
    let base = Vars {
        env: env.clone(),
        own: shared.clone(),
    };
    let mut d = Draft::new(&base, root, state_dir, &file.stem);
    let names: Vec<&str> = SERVICE_KEYS.iter().map(|(name, _)| *name).collect();
    let entries = c.map(&file.doc, "", &names);
    for (name, read) in SERVICE_KEYS {
        if let Some((_, node)) = entries.iter().find(|(key, _)| key == name) {
            read(c, node, name, &mut d);
        }
    }
    if !valid_name(&d.name) {
        c.err(
            d.name_line,
            NAME,
            format!(
                "service name `{}` may contain only lowercase letters, digits, `-` and `_`",
                d.name
            ),
        );
    }
    if !d.wrote_process && d.image.is_none() {
        c.err(
            file.doc.line,
            "",
            format!(
                "service `{}` has neither `process:` nor `image:`: add `process.command` to run it natively",
                d.name
            ),
        );
    }
    if d.build.is_some() && !d.wrote_process {
        c.err(
            d.build_line,
            "build",
            "builds a native component, which needs `process:`: add `process.command` to run what it builds",
        );
    }
    ParsedService {
        spec: ServiceSpec {
            name: d.name,
            file: root.join(&c.file),
            description: d.description,
            ports: d.ports,
            environment: d.environment,
            depends_on: d.depends_on,
            process: d.process,
            image: d.image,
            boxed: d.boxed,
            healthcheck: d.healthcheck,
            restart: d.restart,
            init: d.init,
            configs: d.configs,
            exports: d.exports,
            data_dir: d.data_dir,
            build: d.build,
            watch: d.watch,
            info: d.info,
        },
        rel: c.file.clone(),
        name_line: d.name_line,
        port_lines: d.port_lines,
        dep_lines: d.dep_lines,
        wrote_healthcheck: d.wrote_healthcheck,
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `depends_on:`, either a list of names (each `service_started`) or a mapping of names to
/// `{ condition: ... }`.
fn read_depends_on(c: &mut Checker<'_>, node: &Node, path: &str, d: &mut Draft<'_>) {
    let mut depends_on = BTreeMap::new();
    let mut lines = BTreeMap::new();
    match &node.value {
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(dep) = c.string(item, &format!("{path}[{i}]"), &d.vars) {
                    lines.insert(dep.clone(), item.line);
                    depends_on.insert(dep, defaults::CONDITION);
                }
            }
        }
        _ => {
            let scope = d.scope();
            for (dep, dnode) in c.map(node, path, &[]) {
                lines.insert(dep.clone(), dnode.line);
                let mut condition = defaults::CONDITION;
                let dpath = join(path, &dep);
                c.fields(
                    Field::new(dnode, &dpath, &scope),
                    DEPENDENCY_KEYS,
                    &mut condition,
                );
                depends_on.insert(dep, condition);
            }
        }
    }
    d.depends_on = depends_on;
    d.dep_lines = lines;
}

/// `exports:`: connection details for `stack env`, secrets left as `${secret.NAME}`.
fn read_exports(c: &mut Checker<'_>, node: &Node, path: &str, d: &mut Draft<'_>) {
    for (k, v) in c.map(node, path, &[]) {
        let kpath = join(path, &k);
        if !k
            .chars()
            .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
        {
            c.err(
                v.line,
                &kpath,
                "must be an environment variable name (A-Z, 0-9, _)",
            );
        } else if let Some(text) = v.scalar_text() {
            match d.vars.expand_keeping_secrets(&text) {
                Ok(value) => {
                    d.exports.insert(k, value);
                }
                Err(e) => c.err(v.line, &kpath, e.to_string()),
            }
        }
    }
}
