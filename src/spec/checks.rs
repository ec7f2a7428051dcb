//! The checks across services, run once every file is parsed: each is a named function over
//! all the services, and all of them run, so every problem is reported together.

use std::collections::BTreeMap;

use super::service::ParsedService;
use super::{Condition, ServiceSpec, SpecError};

/// Every service as parsed, in file order, and which definition of each name counts.
pub(super) struct Defined {
    /// All parsed services, duplicates included (their ports still clash).
    all: Vec<ParsedService>,
    /// Name to index in `all` of its first definition; later ones are reported.
    kept: BTreeMap<String, usize>,
}

impl Defined {
    fn kept(&self) -> impl Iterator<Item = (&String, &ParsedService)> {
        self.kept.iter().map(|(name, i)| (name, &self.all[*i]))
    }

    fn get(&self, name: &str) -> Option<&ParsedService> {
        self.kept.get(name).map(|i| &self.all[*i])
    }
}

/// One check across services: it appends what it finds.
type Check = fn(&Defined, &mut Vec<SpecError>);

/// Every check, by name, in the order they run.
pub(super) const CHECKS: &[(&str, Check)] = &[
    ("host ports are distinct", distinct_ports),
    ("service names are distinct", distinct_names),
    ("dependencies are services", known_dependencies),
    ("conditions can be met", reachable_conditions),
    ("dependencies have no cycle", no_cycles),
];

/// Runs every check over `parsed` (in file order) and returns the services by name.
pub(super) fn check(
    parsed: Vec<ParsedService>,
    errors: &mut Vec<SpecError>,
) -> BTreeMap<String, ServiceSpec> {
    let mut kept = BTreeMap::new();
    for (i, p) in parsed.iter().enumerate() {
        kept.entry(p.spec.name.clone()).or_insert(i);
    }
    let defined = Defined { all: parsed, kept };
    for (_, check) in CHECKS {
        check(&defined, errors);
    }
    let Defined { all, kept } = defined;
    let mut all: Vec<Option<ParsedService>> = all.into_iter().map(Some).collect();
    kept.into_iter()
        .filter_map(|(name, i)| all[i].take().map(|p| (name, p.spec)))
        .collect()
}

fn problem(p: &ParsedService, line: usize, path: String, message: String) -> SpecError {
    SpecError {
        file: p.rel.clone(),
        line,
        path,
        message,
    }
}

/// No two services publish the same host port.
fn distinct_ports(d: &Defined, errors: &mut Vec<SpecError>) {
    let mut owner: BTreeMap<u16, (&ParsedService, usize)> = BTreeMap::new();
    for p in &d.all {
        for (name, port) in &p.spec.ports {
            let line = p.port_lines.get(name).copied().unwrap_or(0);
            match owner.get(port) {
                Some((first, first_line)) => errors.push(problem(
                    p,
                    line,
                    format!("ports.{name}"),
                    format!(
                        "host port {port} is also used by `{}` ({}:{first_line}): give one of them another port",
                        first.spec.name,
                        first.rel.display()
                    ),
                )),
                None => {
                    owner.insert(*port, (p, line));
                }
            }
        }
    }
}

/// No two files define the same service name.
fn distinct_names(d: &Defined, errors: &mut Vec<SpecError>) {
    for (i, p) in d.all.iter().enumerate() {
        let first = d.kept[&p.spec.name];
        if first != i {
            errors.push(problem(
                p,
                p.name_line,
                "name".into(),
                format!(
                    "service `{}` is already defined in {}: rename one of them",
                    p.spec.name,
                    d.all[first].rel.display()
                ),
            ));
        }
    }
}

/// Calls `f` with each dependency of each kept service and the line it is written on.
fn each_dependency<'d>(
    d: &'d Defined,
    mut f: impl FnMut(&'d ParsedService, &'d str, Condition, usize),
) {
    for (_, p) in d.kept() {
        for (dep, cond) in &p.spec.depends_on {
            let line = p.dep_lines.get(dep).copied().unwrap_or(0);
            f(p, dep, *cond, line);
        }
    }
}

/// Every dependency names a service of the stack.
fn known_dependencies(d: &Defined, errors: &mut Vec<SpecError>) {
    each_dependency(d, |p, dep, _, line| {
        if d.get(dep).is_none() {
            let known: Vec<&str> = d.kept.keys().map(String::as_str).collect();
            errors.push(problem(
                p,
                line,
                format!("depends_on.{dep}"),
                format!(
                    "`{}` depends on `{dep}`, which is not a service of this stack (known: {})",
                    p.spec.name,
                    known.join(", ")
                ),
            ));
        }
    });
}

/// A dependency's condition is one its target can reach.
fn reachable_conditions(d: &Defined, errors: &mut Vec<SpecError>) {
    each_dependency(d, |p, dep, cond, line| {
        let Some(target) = d.get(dep) else { return };
        let message = match cond {
            // A healthcheck that was written but is invalid has its own problem already.
            Condition::ServiceHealthy
                if target.spec.healthcheck.is_none() && !target.wrote_healthcheck =>
            {
                format!(
                    "`{dep}` has no healthcheck, so it can never be `service_healthy`: add a healthcheck to `{dep}` or use `service_started`"
                )
            }
            Condition::ServiceCompletedSuccessfully if !target.spec.is_task() => format!(
                "`{dep}` is not a one-shot task (it needs `restart: \"no\"` and no healthcheck) so it never completes: use `service_healthy` or `service_started`"
            ),
            _ => return,
        };
        errors.push(problem(p, line, format!("depends_on.{dep}"), message));
    });
}

/// The dependencies form no cycle; each cycle is named member by member.
fn no_cycles(d: &Defined, errors: &mut Vec<SpecError>) {
    let edges: BTreeMap<String, Vec<String>> = d
        .kept()
        .map(|(name, p)| {
            let deps = p.spec.depends_on.keys();
            let known = deps.filter(|dep| d.kept.contains_key(*dep)).cloned();
            (name.clone(), known.collect())
        })
        .collect();
    for cycle in crate::graph::cycles(&edges) {
        let first = &cycle[0];
        let next = &cycle[1 % cycle.len()];
        let Some(p) = d.get(first) else { continue };
        let mut shown = cycle.clone();
        shown.push(first.clone());
        errors.push(problem(
            p,
            p.dep_lines.get(next).copied().unwrap_or(0),
            format!("depends_on.{next}"),
            format!(
                "dependency cycle: {}: remove one of these dependencies",
                shown.join(" -> ")
            ),
        ));
    }
}
