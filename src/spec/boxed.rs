//! `box:`: the options of a service's BoxLite microVM (size, argv overrides, volumes, the guest
//! port behind each named host port, box-only environment).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::checker::{join, key, Checker, Field, Key};
use super::yaml::Value;

/// MicroVM options (`box:`).
#[derive(Debug, Clone, Default)]
pub struct BoxSpec {
    /// vCPUs.
    pub cpus: Option<u32>,
    /// Memory in MiB.
    pub memory_mib: Option<u32>,
    /// Entrypoint override.
    pub entrypoint: Vec<String>,
    /// Command override.
    pub command: Vec<String>,
    /// Working directory inside the box.
    pub working_dir: Option<String>,
    /// `host_dir:guest_dir` volumes; host dirs relative to the data dir.
    pub volumes: Vec<(PathBuf, String)>,
    /// Guest port per named host port.
    pub guest_ports: BTreeMap<String, u16>,
    /// Environment only the box gets (merged over `environment:`).
    pub environment: BTreeMap<String, String>,
}

/// The keys of `box:`.
const BOX_KEYS: &[Key<BoxSpec>] = &[
    key("cpus", |c, at, spec| spec.cpus = c.uint_at(at)),
    key("memory", |c, Field { node, path, scope }, spec| {
        let Some(text) = c.string(node, path, scope.vars) else {
            return;
        };
        let mib = text.trim().trim_end_matches("MiB").trim_end_matches('M');
        match mib.parse() {
            Ok(m) => spec.memory_mib = Some(m),
            Err(_) => c.err(
                node.line,
                path,
                format!("`{text}` is not a size in MiB (e.g. `512` or `512MiB`)"),
            ),
        }
    }),
    key("entrypoint", |c, at, spec| {
        spec.entrypoint = c.argv_at(at).unwrap_or_default()
    }),
    key("command", |c, at, spec| {
        spec.command = c.argv_at(at).unwrap_or_default()
    }),
    key("working_dir", |c, at, spec| {
        spec.working_dir = c.string_at(at)
    }),
    key("volumes", read_volumes),
    key("ports", read_guest_ports),
    key("environment", |c, Field { node, path, scope }, spec| {
        spec.environment = c.string_map(node, path, scope.vars, false)
    }),
];

/// Parses `box:` at `path`; invalid options are reported and left at their defaults.
pub(super) fn read(c: &mut Checker<'_>, at: Field<'_>) -> BoxSpec {
    let mut spec = BoxSpec::default();
    c.fields(at, BOX_KEYS, &mut spec);
    spec
}

/// `volumes:`: a list of `host_dir:/guest/path`.
fn read_volumes(c: &mut Checker<'_>, at: Field<'_>, spec: &mut BoxSpec) {
    let Field { node, path, scope } = at;
    let Value::Seq(items) = &node.value else {
        c.err(node.line, path, "must be a list of `host_dir:/guest/path`");
        return;
    };
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(text) = c.string(item, &ipath, scope.vars) else {
            continue;
        };
        match text.split_once(':') {
            Some((host, guest)) if guest.starts_with('/') => {
                spec.volumes.push((PathBuf::from(host), guest.to_string()))
            }
            _ => c.err(
                item.line,
                &ipath,
                format!("`{text}` must be `host_dir:/guest/path`"),
            ),
        }
    }
}

/// `ports:`: the guest port behind each of the service's named host ports.
fn read_guest_ports(c: &mut Checker<'_>, at: Field<'_>, spec: &mut BoxSpec) {
    let Field { node, path, scope } = at;
    for (name, pnode) in c.map(node, path, &[]) {
        let ppath = join(path, &name);
        if !scope.ports.contains_key(&name) {
            c.err(
                pnode.line,
                &ppath,
                format!("`{name}` is not one of this service's `ports:`"),
            );
        } else if let Some(port) = c.port(pnode, &ppath, scope.vars) {
            spec.guest_ports.insert(name, port);
        }
    }
}
