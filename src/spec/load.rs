//! Reading and validating the stack files. Parse everything, collect every problem, then either
//! return a fully typed [`Stack`] or all the problems together.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use super::yaml::{self, Node, Value};
use super::*;

/// Where to find the stack and the state dir.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `-f FILE`; searched upward from `cwd` when absent.
    pub file: Option<PathBuf>,
    /// Directory to search from.
    pub cwd: PathBuf,
    /// `--state-dir` or `STACK_STATE_DIR`; `.stack/` beside stack.yaml when absent.
    pub state_dir: Option<PathBuf>,
    /// The process environment used for interpolation.
    pub env: HashMap<String, String>,
    /// `${stack_exe}`: the `stack` binary tasks call (this executable when absent).
    pub stack_exe: Option<PathBuf>,
}

/// Finds `stack.yaml` in `start` or the nearest ancestor.
pub fn find_stack_file(start: &Path) -> Option<PathBuf> {
    start.ancestors().find_map(|dir| {
        ["stack.yaml", "stack.yml"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    })
}

const STACK_KEYS: &[&str] = &["name", "backend", "env_file"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "description",
    "ports",
    "environment",
    "depends_on",
    "process",
    "image",
    "box",
    "healthcheck",
    "restart",
    "init",
    "configs",
    "exports",
];
const PROCESS_KEYS: &[&str] = &[
    "command",
    "stop_signal",
    "stop_grace_period",
    "user",
    "working_dir",
    "install",
    "version",
];
const BOX_KEYS: &[&str] = &[
    "cpus",
    "memory",
    "entrypoint",
    "command",
    "working_dir",
    "volumes",
    "ports",
    "environment",
];
const HEALTH_KEYS: &[&str] = &[
    "tcp",
    "http",
    "exec",
    "postgres",
    "redis",
    "s3",
    "oidc",
    "interval",
    "timeout",
    "start_period",
    "retries",
];
const INIT_KEYS: &[&str] = &["name", "command", "creates", "when", "backend"];

/// Collects problems for one file.
struct Checker<'a> {
    file: PathBuf,
    errors: &'a mut Vec<SpecError>,
}

impl Checker<'_> {
    fn err(&mut self, line: usize, path: &str, message: impl Into<String>) {
        self.errors.push(SpecError {
            file: self.file.clone(),
            line,
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// The entries of a mapping; unknown keys (not in `allowed`, unless empty) are reported.
    fn map<'n>(&mut self, node: &'n Node, path: &str, allowed: &[&str]) -> Vec<(String, &'n Node)> {
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
                    format!(
                        "unknown key `{key}`: expected one of {}",
                        allowed.join(", ")
                    ),
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

    /// The items of a list, each parsed by `item` with its own key path (`key[i]`).
    fn list<T>(
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

    fn string(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<String> {
        let Some(raw) = node.scalar_text() else {
            self.err(
                node.line,
                path,
                format!("must be a string, found {}", node.kind()),
            );
            return None;
        };
        match vars.expand(&raw) {
            Ok(s) => Some(s),
            Err(e) => {
                self.err(node.line, path, e.to_string());
                None
            }
        }
    }

    fn argv(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<Vec<String>> {
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

    fn duration(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<Duration> {
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

    fn port(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<u16> {
        let text = self.string(node, path, vars)?;
        match text.parse::<u16>() {
            Ok(p) if p > 0 => Some(p),
            _ => {
                self.err(
                    node.line,
                    path,
                    format!("`{text}` is not a port number (1-65535)"),
                );
                None
            }
        }
    }

    fn uint(&mut self, node: &Node, path: &str, vars: &Vars) -> Option<u32> {
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
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn read_yaml(path: &Path, rel: &Path, errors: &mut Vec<SpecError>) -> Option<Node> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            errors.push(SpecError {
                file: rel.to_path_buf(),
                line: 0,
                path: String::new(),
                message: format!("cannot read the file: {e}"),
            });
            return None;
        }
    };
    match yaml::parse(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            errors.push(SpecError {
                file: rel.to_path_buf(),
                line: e.line,
                path: String::new(),
                message: format!("invalid YAML at column {}: {}", e.col, e.message),
            });
            None
        }
    }
}

pub(super) fn load(opts: &LoadOptions) -> Result<Stack, SpecErrors> {
    let file = match &opts.file {
        Some(f) => opts.cwd.join(f),
        None => find_stack_file(&opts.cwd).ok_or_else(|| {
            SpecErrors(vec![SpecError {
                file: PathBuf::from("stack.yaml"),
                line: 0,
                path: String::new(),
                message: format!(
                    "no stack.yaml in {} or any parent directory: run `stack` inside a project or pass `-f PATH`",
                    opts.cwd.display()
                ),
            }])
        })?,
    };
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    let root = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let state_dir = match &opts.state_dir {
        Some(d) => opts.cwd.join(d),
        None => root.join(".stack"),
    };
    let mut errors = Vec::new();
    let rel_stack = display_path(&file, &root);

    let mut name = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "stack".into());
    let mut backend = BackendChoice::Auto;
    let mut env: BTreeMap<String, String> = BTreeMap::new();

    let base_vars = Vars {
        env: opts
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        own: BTreeMap::new(),
    };
    if let Some(doc) = read_yaml(&file, &rel_stack, &mut errors) {
        let mut c = Checker {
            file: rel_stack.clone(),
            errors: &mut errors,
        };
        for (key, node) in c.map(&doc, "", STACK_KEYS) {
            match key.as_str() {
                "name" => {
                    if let Some(n) = c.string(node, "name", &base_vars) {
                        name = n;
                    }
                }
                "backend" => {
                    if let Some(b) = c.string(node, "backend", &base_vars) {
                        match b.parse() {
                            Ok(b) => backend = b,
                            Err(e) => c.err(node.line, "backend", e.to_string()),
                        }
                    }
                }
                "env_file" => {
                    if let Some(p) = c.string(node, "env_file", &base_vars) {
                        let path = root.join(&p);
                        match dotenvy::from_path_iter(&path) {
                            Ok(iter) => {
                                for item in iter {
                                    match item {
                                        Ok((k, v)) => {
                                            env.insert(k, v);
                                        }
                                        Err(e) => c.err(
                                            node.line,
                                            "env_file",
                                            format!("`{p}` is not a valid env file: {e}"),
                                        ),
                                    }
                                }
                            }
                            Err(e) => c.err(
                                node.line,
                                "env_file",
                                format!("cannot read `{p}`: {e}: create it or remove `env_file`"),
                            ),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // The process environment wins over the env file, as in docker compose.
    for (k, v) in &opts.env {
        env.insert(k.clone(), v.clone());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        errors.push(SpecError {
            file: rel_stack.clone(),
            line: 0,
            path: "name".into(),
            message: format!("`{name}` may contain only letters, digits, `-` and `_`"),
        });
    }

    let mut services: BTreeMap<String, ServiceSpec> = BTreeMap::new();
    let mut dep_lines: BTreeMap<String, (PathBuf, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut wrote_healthcheck: BTreeMap<String, bool> = BTreeMap::new();
    let svc_dir = root.join("services");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&svc_dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && matches!(
                            p.extension().and_then(|e| e.to_str()),
                            Some("yaml") | Some("yml")
                        )
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let rel = display_path(&path, &root);
        if let Some(doc) = read_yaml(&path, &rel, &mut errors) {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            docs.push((rel, stem, doc));
        }
    }
    // Every service's ports, so any service can refer to another's: ${services.NAME.ports.PORT}.
    let env_vars = Vars {
        env: env.clone(),
        own: BTreeMap::new(),
    };
    let mut shared = BTreeMap::new();
    for (_, stem, doc) in &docs {
        let Value::Map(entries) = &doc.value else {
            continue;
        };
        let field = |k: &str| {
            entries
                .iter()
                .find(|(key, _)| key.scalar_text().as_deref() == Some(k))
                .map(|(_, v)| v)
        };
        let name = field("name")
            .and_then(|n| n.scalar_text())
            .unwrap_or_else(|| stem.clone());
        if let Some(Value::Map(ports)) = field("ports").map(|n| &n.value) {
            for (k, v) in ports {
                let port = v.scalar_text().and_then(|t| env_vars.expand(&t).ok());
                if let (Some(k), Some(port)) = (k.scalar_text(), port) {
                    shared.insert(format!("services.{name}.ports.{k}"), port);
                }
            }
        }
    }
    // This very binary, so one-shot tasks can run `stack schema load` and the like.
    if let Some(exe) = opts
        .stack_exe
        .clone()
        .or_else(|| std::env::current_exe().ok())
    {
        shared.insert("stack_exe".into(), exe.display().to_string());
    }
    let mut port_owner: BTreeMap<u16, (String, PathBuf, usize)> = BTreeMap::new();
    for (rel, stem, doc) in docs {
        let mut c = Checker {
            file: rel.clone(),
            errors: &mut errors,
        };
        let parsed = service(&mut c, &doc, &stem, &env, &shared, &state_dir, &root);
        let Some((svc, deps)) = parsed else { continue };
        for (pname, port) in &svc.ports {
            let line = deps.port_lines.get(pname).copied().unwrap_or(0);
            if let Some((other, ofile, oline)) = port_owner.get(port) {
                c.err(
                    line,
                    &format!("ports.{pname}"),
                    format!(
                        "host port {port} is also used by `{other}` ({}:{oline}): give one of them another port",
                        ofile.display()
                    ),
                );
            } else {
                port_owner.insert(*port, (svc.name.clone(), rel.clone(), line));
            }
        }
        if let Some(prev) = services.get(&svc.name) {
            c.err(
                0,
                "name",
                format!(
                    "service `{}` is already defined in {}: rename one of them",
                    svc.name,
                    display_path(&prev.file, &root).display()
                ),
            );
            continue;
        }
        dep_lines.insert(svc.name.clone(), (rel.clone(), deps.dep_lines));
        wrote_healthcheck.insert(svc.name.clone(), deps.has_healthcheck_key);
        services.insert(svc.name.clone(), svc);
    }

    // Cross-service checks: unknown dependencies, conditions the target cannot meet, cycles.
    for (name, svc) in &services {
        let (rel, lines) = &dep_lines[name];
        for (dep, cond) in &svc.depends_on {
            let line = lines.get(dep).copied().unwrap_or(0);
            let path = format!("depends_on.{dep}");
            let err = |message: String| SpecError {
                file: rel.clone(),
                line,
                path: path.clone(),
                message,
            };
            match services.get(dep) {
                None => errors.push(err(format!(
                    "`{name}` depends on `{dep}`, which is not a service of this stack (known: {})",
                    services.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
                Some(target) => match cond {
                    Condition::ServiceHealthy
                        if target.healthcheck.is_none() && !wrote_healthcheck[dep] =>
                    {
                        errors.push(err(format!(
                        "`{dep}` has no healthcheck, so it can never be `service_healthy`: add a healthcheck to `{dep}` or use `service_started`"
                    )))
                    }
                    Condition::ServiceCompletedSuccessfully if !target.is_task() => errors.push(err(format!(
                        "`{dep}` is not a one-shot task (it needs `restart: \"no\"` and no healthcheck) so it never completes: use `service_healthy` or `service_started`"
                    ))),
                    _ => {}
                },
            }
        }
    }
    let edges: BTreeMap<String, Vec<String>> = services
        .iter()
        .map(|(n, s)| {
            (
                n.clone(),
                s.depends_on
                    .keys()
                    .filter(|d| services.contains_key(*d))
                    .cloned()
                    .collect(),
            )
        })
        .collect();
    for cycle in crate::graph::cycles(&edges) {
        let first = &cycle[0];
        let (rel, lines) = &dep_lines[first];
        let next = &cycle[1 % cycle.len()];
        let mut shown = cycle.clone();
        shown.push(first.clone());
        errors.push(SpecError {
            file: rel.clone(),
            line: lines.get(next).copied().unwrap_or(0),
            path: format!("depends_on.{next}"),
            message: format!(
                "dependency cycle: {}: remove one of these dependencies",
                shown.join(" -> ")
            ),
        });
    }

    errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    if errors.is_empty() {
        Ok(Stack {
            name,
            backend,
            root,
            file,
            state_dir,
            services,
        })
    } else {
        Err(SpecErrors(errors))
    }
}

/// Line numbers kept for the cross-file checks.
struct Lines {
    port_lines: BTreeMap<String, usize>,
    dep_lines: BTreeMap<String, usize>,
    /// A healthcheck was written, even if invalid (its own error is already reported).
    has_healthcheck_key: bool,
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn service(
    c: &mut Checker<'_>,
    doc: &Node,
    stem: &str,
    env: &BTreeMap<String, String>,
    shared: &BTreeMap<String, String>,
    state_dir: &Path,
    root: &Path,
) -> Option<(ServiceSpec, Lines)> {
    let entries = c.map(doc, "", SERVICE_KEYS);
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, n)| *n);
    let mut vars = Vars {
        env: env.clone(),
        own: shared.clone(),
    };
    let name = match get("name") {
        Some(n) => c
            .string(n, "name", &vars)
            .unwrap_or_else(|| stem.to_string()),
        None => stem.to_string(),
    };
    if !valid_name(&name) {
        c.err(
            get("name").map_or(0, |n| n.line),
            "name",
            format!(
                "service name `{name}` may contain only lowercase letters, digits, `-` and `_`"
            ),
        );
    }
    let data_dir = state_dir.join("data").join(&name);
    vars.own
        .insert("data_dir".into(), data_dir.display().to_string());
    vars.own
        .insert("state_dir".into(), state_dir.display().to_string());
    vars.own
        .insert("project_dir".into(), root.display().to_string());
    vars.own.insert("service".into(), name.clone());

    // Ports first: every other field may refer to them.
    let mut ports = BTreeMap::new();
    let mut port_lines = BTreeMap::new();
    if let Some(node) = get("ports") {
        for (pname, pnode) in c.map(node, "ports", &[]) {
            if let Some(p) = c.port(pnode, &format!("ports.{pname}"), &vars) {
                ports.insert(pname.clone(), p);
                port_lines.insert(pname, pnode.line);
            }
        }
    }
    for (pname, p) in &ports {
        vars.own.insert(format!("port.{pname}"), p.to_string());
    }

    let mut environment = BTreeMap::new();
    if let Some(node) = get("environment") {
        for (k, v) in c.map(node, "environment", &[]) {
            let val = if matches!(v.value, Value::Null) {
                Some(String::new())
            } else {
                c.string(v, &format!("environment.{k}"), &vars)
            };
            if let Some(val) = val {
                environment.insert(k, val);
            }
        }
    }

    let mut depends_on = BTreeMap::new();
    let mut dep_lines = BTreeMap::new();
    if let Some(node) = get("depends_on") {
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(d) = c.string(item, &format!("depends_on[{i}]"), &vars) {
                        dep_lines.insert(d.clone(), item.line);
                        depends_on.insert(d, Condition::ServiceStarted);
                    }
                }
            }
            _ => {
                for (dep, dnode) in c.map(node, "depends_on", &[]) {
                    let path = format!("depends_on.{dep}");
                    dep_lines.insert(dep.clone(), dnode.line);
                    let mut cond = Condition::ServiceStarted;
                    for (k, v) in c.map(dnode, &path, &["condition"]) {
                        if k == "condition" {
                            match c.string(v, &format!("{path}.condition"), &vars).as_deref() {
                                Some("service_started") => cond = Condition::ServiceStarted,
                                Some("service_healthy") => cond = Condition::ServiceHealthy,
                                Some("service_completed_successfully") => {
                                    cond = Condition::ServiceCompletedSuccessfully
                                }
                                Some(other) => c.err(
                                    v.line,
                                    &format!("{path}.condition"),
                                    format!("unknown condition `{other}`: use service_started, service_healthy or service_completed_successfully"),
                                ),
                                None => {}
                            }
                        }
                    }
                    depends_on.insert(dep, cond);
                }
            }
        }
    }

    let process = get("process").and_then(|node| process(c, node, &vars, root));
    let image = get("image").and_then(|n| c.string(n, "image", &vars));
    let boxed = get("box").map(|node| box_spec(c, node, &vars, &ports));
    if get("process").is_none() && image.is_none() {
        c.err(
            doc.line,
            "",
            format!("service `{name}` has neither `process:` nor `image:`: add `process.command` to run it natively"),
        );
    }

    let healthcheck = get("healthcheck").and_then(|node| healthcheck(c, node, &vars, &ports));

    let restart = match get("restart") {
        None => RestartPolicy::OnFailure,
        Some(n) => {
            match n.value {
                Value::Bool(false) => RestartPolicy::No,
                _ => match c.string(n, "restart", &vars).as_deref() {
                    Some("no") => RestartPolicy::No,
                    Some("on-failure") => RestartPolicy::OnFailure,
                    Some("always") | Some("unless-stopped") => RestartPolicy::Always,
                    Some(other) => {
                        c.err(
                        n.line,
                        "restart",
                        format!("unknown restart policy `{other}`: use \"no\", on-failure or always"),
                    );
                        RestartPolicy::OnFailure
                    }
                    None => RestartPolicy::OnFailure,
                },
            }
        }
    };

    let mut exports = BTreeMap::new();
    if let Some(node) = get("exports") {
        for (k, v) in c.map(node, "exports", &[]) {
            if !k
                .chars()
                .all(|ch| ch.is_ascii_uppercase() || ch.is_ascii_digit() || ch == '_')
            {
                c.err(
                    v.line,
                    &format!("exports.{k}"),
                    "must be an environment variable name (A-Z, 0-9, _)",
                );
            } else if let Some(text) = v.scalar_text() {
                match vars.expand_keeping_secrets(&text) {
                    Ok(val) => {
                        exports.insert(k, val);
                    }
                    Err(e) => c.err(v.line, &format!("exports.{k}"), e.to_string()),
                }
            }
        }
    }

    let configs = get("configs").map_or_else(Vec::new, |node| {
        c.list(
            node,
            "configs",
            "{source, target} entries",
            |c, item, path| config_file(c, item, path, &vars, root),
        )
    });
    let init = get("init").map_or_else(Vec::new, |node| {
        c.list(node, "init", "steps", |c, item, path| {
            init_step(c, item, path, &vars, root)
        })
    });

    // Returned even when parts were invalid, so cross-service checks (ports, dependencies)
    // still see it; the caller refuses the whole stack if any error was reported.
    Some((
        ServiceSpec {
            name,
            file: root.join(&c.file),
            description: get("description").and_then(|n| n.scalar_text()),
            ports,
            environment,
            depends_on,
            process,
            image,
            boxed,
            healthcheck,
            restart,
            init,
            configs,
            exports,
            data_dir,
        },
        Lines {
            port_lines,
            dep_lines,
            has_healthcheck_key: get("healthcheck").is_some(),
        },
    ))
}

fn process(c: &mut Checker<'_>, node: &Node, vars: &Vars, root: &Path) -> Option<ProcessSpec> {
    let entries = c.map(node, "process", PROCESS_KEYS);
    let mut command = None;
    let mut spec = ProcessSpec {
        command: Vec::new(),
        stop_signal: Signal::SIGTERM,
        stop_grace_period: Duration::from_secs(10),
        user: None,
        working_dir: root.to_path_buf(),
        install_hint: None,
        version: None,
    };
    for (key, v) in entries {
        let path = format!("process.{key}");
        match key.as_str() {
            "command" => command = c.argv(v, &path, vars),
            "stop_signal" => {
                if let Some(s) = c.string(v, &path, vars) {
                    match parse_signal(&s) {
                        Some(sig) => spec.stop_signal = sig,
                        None => c.err(
                            v.line,
                            &path,
                            format!(
                                "`{s}` is not a signal name: use e.g. SIGTERM, SIGINT or SIGQUIT"
                            ),
                        ),
                    }
                }
            }
            "stop_grace_period" => {
                if let Some(d) = c.duration(v, &path, vars) {
                    spec.stop_grace_period = d;
                }
            }
            "user" => spec.user = c.string(v, &path, vars),
            "working_dir" => {
                if let Some(d) = c.string(v, &path, vars) {
                    spec.working_dir = root.join(d);
                }
            }
            "install" => spec.install_hint = c.string(v, &path, vars),
            "version" => spec.version = c.argv(v, &path, vars),
            _ => {}
        }
    }
    match command {
        Some(cmd) => {
            spec.command = cmd;
            Some(spec)
        }
        None => {
            if !c
                .errors
                .iter()
                .any(|e| e.path.starts_with("process.command"))
            {
                c.err(
                    node.line,
                    "process.command",
                    "is required: the program and its arguments as a list",
                );
            }
            None
        }
    }
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

fn box_spec(
    c: &mut Checker<'_>,
    node: &Node,
    vars: &Vars,
    ports: &BTreeMap<String, u16>,
) -> BoxSpec {
    let mut spec = BoxSpec::default();
    for (key, v) in c.map(node, "box", BOX_KEYS) {
        let path = format!("box.{key}");
        match key.as_str() {
            "cpus" => spec.cpus = c.uint(v, &path, vars),
            "memory" => {
                if let Some(text) = c.string(v, &path, vars) {
                    let t = text.trim().trim_end_matches("MiB").trim_end_matches('M');
                    match t.parse() {
                        Ok(m) => spec.memory_mib = Some(m),
                        Err(_) => c.err(
                            v.line,
                            &path,
                            format!("`{text}` is not a size in MiB (e.g. 512 or 512MiB)"),
                        ),
                    }
                }
            }
            "entrypoint" => spec.entrypoint = c.argv(v, &path, vars).unwrap_or_default(),
            "command" => spec.command = c.argv(v, &path, vars).unwrap_or_default(),
            "working_dir" => spec.working_dir = c.string(v, &path, vars),
            "environment" => {
                for (k, ev) in c.map(v, &path, &[]) {
                    if let Some(val) = c.string(ev, &format!("{path}.{k}"), vars) {
                        spec.environment.insert(k, val);
                    }
                }
            }
            "volumes" => {
                if let Value::Seq(items) = &v.value {
                    for (i, item) in items.iter().enumerate() {
                        let ipath = format!("{path}[{i}]");
                        if let Some(s) = c.string(item, &ipath, vars) {
                            match s.split_once(':') {
                                Some((h, g)) if g.starts_with('/') => {
                                    spec.volumes.push((PathBuf::from(h), g.to_string()))
                                }
                                _ => c.err(
                                    item.line,
                                    &ipath,
                                    format!("`{s}` must be `host_dir:/guest/path`"),
                                ),
                            }
                        }
                    }
                } else {
                    c.err(v.line, &path, "must be a list of `host_dir:/guest/path`");
                }
            }
            "ports" => {
                for (pname, pnode) in c.map(v, &path, &[]) {
                    let ppath = format!("{path}.{pname}");
                    if !ports.contains_key(&pname) {
                        c.err(
                            pnode.line,
                            &ppath,
                            format!("`{pname}` is not one of this service's `ports:`"),
                        );
                    } else if let Some(p) = c.port(pnode, &ppath, vars) {
                        spec.guest_ports.insert(pname, p);
                    }
                }
            }
            _ => {}
        }
    }
    spec
}

fn named_port(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    vars: &Vars,
    ports: &BTreeMap<String, u16>,
) -> Option<u16> {
    let text = c.string(node, path, vars)?;
    if let Some(p) = ports.get(&text) {
        return Some(*p);
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            c.err(
                node.line,
                path,
                format!(
                    "`{text}` is neither a port number nor one of this service's `ports:` ({})",
                    ports.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            None
        }
    }
}

fn healthcheck(
    c: &mut Checker<'_>,
    node: &Node,
    vars: &Vars,
    ports: &BTreeMap<String, u16>,
) -> Option<Healthcheck> {
    let mut probes = Vec::new();
    let mut hc = Healthcheck {
        probe: ProbeSpec::Exec(Vec::new()),
        interval: Duration::from_millis(250),
        timeout: Duration::from_secs(2),
        start_period: Duration::ZERO,
        retries: 120,
    };
    let only_port = || (ports.len() == 1).then(|| *ports.values().next().unwrap_or(&0));
    for (key, v) in c.map(node, "healthcheck", HEALTH_KEYS) {
        let path = format!("healthcheck.{key}");
        match key.as_str() {
            "interval" => hc.interval = c.duration(v, &path, vars).unwrap_or(hc.interval),
            "timeout" => hc.timeout = c.duration(v, &path, vars).unwrap_or(hc.timeout),
            "start_period" => {
                hc.start_period = c.duration(v, &path, vars).unwrap_or(hc.start_period)
            }
            "retries" => hc.retries = c.uint(v, &path, vars).unwrap_or(hc.retries),
            "exec" => {
                if let Some(argv) = c.argv(v, &path, vars) {
                    probes.push(ProbeSpec::Exec(argv));
                }
            }
            "http" => {
                let mut url = None;
                let mut status = Vec::new();
                for (k, n) in c.map(v, &path, &["url", "status"]) {
                    let p = format!("{path}.{k}");
                    match k.as_str() {
                        "url" => url = c.string(n, &p, vars),
                        "status" => match &n.value {
                            Value::Seq(items) => {
                                for (i, it) in items.iter().enumerate() {
                                    if let Some(s) = c.uint(it, &format!("{p}[{i}]"), vars) {
                                        status.push(s as u16);
                                    }
                                }
                            }
                            _ => {
                                if let Some(s) = c.uint(n, &p, vars) {
                                    status.push(s as u16);
                                }
                            }
                        },
                        _ => {}
                    }
                }
                match url {
                    Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
                        probes.push(ProbeSpec::Http { url, status })
                    }
                    Some(url) => c.err(
                        v.line,
                        &format!("{path}.url"),
                        format!("`{url}` must start with http:// or https://"),
                    ),
                    None => c.err(v.line, &format!("{path}.url"), "is required"),
                }
            }
            "s3" => {
                let mut f: BTreeMap<String, String> = BTreeMap::new();
                let mut port = None;
                for (k, n) in c.map(
                    v,
                    &path,
                    &["host", "port", "region", "access_key", "secret_key"],
                ) {
                    let p = format!("{path}.{k}");
                    if k == "port" {
                        port = named_port(c, n, &p, vars, ports);
                    } else if let Some(val) = c.string(n, &p, vars) {
                        f.insert(k, val);
                    }
                }
                let (Some(access_key), Some(secret_key)) =
                    (f.remove("access_key"), f.remove("secret_key"))
                else {
                    c.err(v.line, &path, "needs `access_key` and `secret_key`");
                    continue;
                };
                let Some(port) = port.or_else(only_port) else {
                    c.err(
                        v.line,
                        &format!("{path}.port"),
                        "is required when the service has more than one port",
                    );
                    continue;
                };
                let host = f.remove("host").unwrap_or_else(|| "127.0.0.1".into());
                probes.push(ProbeSpec::S3 {
                    endpoint: format!("http://{host}:{port}"),
                    region: f.remove("region").unwrap_or_else(|| "us-east-1".into()),
                    access_key,
                    secret_key,
                });
            }
            "oidc" => {
                let mut issuer = None;
                for (k, n) in c.map(v, &path, &["issuer"]) {
                    issuer = c.string(n, &format!("{path}.{k}"), vars);
                }
                match issuer {
                    Some(i) if i.starts_with("http://") || i.starts_with("https://") => probes
                        .push(ProbeSpec::Oidc {
                            issuer: i.trim_end_matches('/').to_string(),
                        }),
                    _ => c.err(
                        v.line,
                        &format!("{path}.issuer"),
                        "is required: the issuer URL, e.g. http://localhost:25556/dex",
                    ),
                }
            }
            "tcp" | "redis" | "postgres" => {
                let allowed: &[&str] = if key == "postgres" {
                    &["host", "port", "user", "password", "database"]
                } else {
                    &["host", "port"]
                };
                let mut host = "127.0.0.1".to_string();
                let mut port = None;
                let mut user = "postgres".to_string();
                let mut password = None;
                let mut database = None;
                for (k, n) in c.map(v, &path, allowed) {
                    let p = format!("{path}.{k}");
                    match k.as_str() {
                        "host" => host = c.string(n, &p, vars).unwrap_or(host),
                        "port" => port = named_port(c, n, &p, vars, ports),
                        "user" => user = c.string(n, &p, vars).unwrap_or(user),
                        "password" => password = c.string(n, &p, vars),
                        "database" => database = c.string(n, &p, vars),
                        _ => {}
                    }
                }
                let Some(port) = port.or_else(only_port) else {
                    c.err(
                        v.line,
                        &format!("{path}.port"),
                        "is required when the service has more than one port",
                    );
                    continue;
                };
                probes.push(match key.as_str() {
                    "tcp" => ProbeSpec::Tcp { host, port },
                    "redis" => ProbeSpec::Redis { host, port },
                    _ => ProbeSpec::Postgres {
                        database: database.unwrap_or_else(|| user.clone()),
                        host,
                        port,
                        user,
                        password,
                    },
                });
            }
            _ => {}
        }
    }
    match probes.len() {
        1 => {
            hc.probe = probes.remove(0);
            Some(hc)
        }
        0 => {
            c.err(
                node.line,
                "healthcheck",
                "names no probe: add one of tcp, http, exec, postgres, redis, s3, oidc",
            );
            None
        }
        _ => {
            c.err(
                node.line,
                "healthcheck",
                "names more than one probe: keep exactly one of tcp, http, exec, postgres, redis, s3, oidc",
            );
            None
        }
    }
}

fn init_step(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    vars: &Vars,
    root: &Path,
) -> Option<InitStep> {
    let mut name = None;
    let mut command = None;
    let mut creates = None;
    let mut phase = InitPhase::BeforeStart;
    let mut backend = None;
    for (k, v) in c.map(node, path, INIT_KEYS) {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "name" => name = c.string(v, &p, vars),
            "command" => command = c.argv(v, &p, vars),
            "creates" => creates = c.string(v, &p, vars).map(|s| root.join(s)),
            "when" => match c.string(v, &p, vars).as_deref() {
                Some("before_start") => phase = InitPhase::BeforeStart,
                Some("after_start") => phase = InitPhase::AfterStart,
                Some("after_healthy") => phase = InitPhase::AfterHealthy,
                Some(other) => c.err(
                    v.line,
                    &p,
                    format!(
                        "unknown phase `{other}`: use before_start, after_start or after_healthy"
                    ),
                ),
                None => {}
            },
            "backend" => match c.string(v, &p, vars).map(|b| b.parse::<BackendChoice>()) {
                Some(Ok(BackendChoice::Auto)) => c.err(
                    v.line,
                    &p,
                    "a step runs on `process` or `microvm`; leave `backend` out to run it on both",
                ),
                Some(Ok(b)) => backend = Some(b),
                Some(Err(e)) => c.err(v.line, &p, e.to_string()),
                None => {}
            },
            _ => {}
        }
    }
    let Some(command) = command else {
        c.err(node.line, &format!("{path}.command"), "is required");
        return None;
    };
    Some(InitStep {
        name: name.unwrap_or_else(|| {
            Path::new(&command[0])
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default()
        }),
        command,
        creates,
        phase,
        backend,
    })
}

const CONFIG_KEYS: &[&str] = &["source", "target", "mode"];

/// A `configs:` entry: a template in the project rendered into the service's files at start.
fn config_file(
    c: &mut Checker<'_>,
    node: &Node,
    path: &str,
    vars: &Vars,
    root: &Path,
) -> Option<ConfigFile> {
    let mut source = None;
    let mut target = None;
    let mut mode = 0o644;
    for (k, v) in c.map(node, path, CONFIG_KEYS) {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "source" => source = c.string(v, &p, vars).map(|s| (root.join(s), v.line)),
            "target" => target = c.string(v, &p, vars).map(PathBuf::from),
            "mode" => match c
                .string(v, &p, vars)
                .map(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8))
            {
                Some(Ok(m)) => mode = m,
                Some(Err(_)) => c.err(v.line, &p, "must be an octal file mode such as 0600"),
                None => {}
            },
            _ => {}
        }
    }
    let (Some((source, line)), Some(target)) = (source, target) else {
        c.err(
            node.line,
            path,
            "needs both `source` (a template in the project) and `target`",
        );
        return None;
    };
    if !target.is_absolute() {
        c.err(
            node.line,
            &format!("{path}.target"),
            "must be an absolute path, e.g. `${data_dir}/app.conf`",
        );
        return None;
    }
    let text = match std::fs::read_to_string(&source) {
        Ok(t) => t,
        Err(e) => {
            c.err(
                line,
                &format!("{path}.source"),
                format!("cannot read {}: {e}", source.display()),
            );
            return None;
        }
    };
    // Secrets are filled in at start (they may not exist yet, and `plan` must not create them).
    match vars.expand_keeping_secrets(&text) {
        Ok(content) => Some(ConfigFile {
            source,
            target,
            content,
            mode,
        }),
        Err(e) => {
            c.err(
                line,
                &format!("{path}.source"),
                format!("in {}: {e}", display_path(&source, root).display()),
            );
            None
        }
    }
}
