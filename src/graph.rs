//! The dependency graph: start waves for `plan` and `up`, the closure of a selection, and the
//! reverse order for `down`. Built on petgraph.

use std::collections::{BTreeMap, BTreeSet};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;
use serde::Serialize;

use crate::spec::{Condition, Stack};

/// The start order: services in one wave depend only on earlier waves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Waves in start order; names sorted within a wave.
    pub waves: Vec<Vec<String>>,
}

impl Plan {
    /// Every service in the plan, in start order.
    pub fn services(&self) -> impl Iterator<Item = &String> {
        self.waves.iter().flatten()
    }

    /// Number of services.
    pub fn len(&self) -> usize {
        self.waves.iter().map(Vec::len).sum()
    }

    /// True when nothing is selected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every elementary cycle's members in dependency order, one per strongly connected component.
/// `edges` maps a service to the services it depends on.
pub fn cycles(edges: &BTreeMap<String, Vec<String>>) -> Vec<Vec<String>> {
    let mut g: DiGraphMap<&str, ()> = DiGraphMap::new();
    for (n, deps) in edges {
        g.add_node(n);
        for d in deps {
            g.add_edge(n, d, ());
        }
    }
    let mut out = Vec::new();
    for scc in tarjan_scc(&g) {
        let self_loop = scc.len() == 1 && g.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk from the smallest member along edges that stay in the component until we return.
        let members: BTreeSet<&str> = scc.iter().copied().collect();
        let start = *members.iter().next().unwrap_or(&scc[0]);
        let mut path = vec![start];
        let mut seen = BTreeSet::from([start]);
        let mut cur = start;
        loop {
            let mut nexts: Vec<&str> = g.neighbors(cur).filter(|n| members.contains(n)).collect();
            nexts.sort_unstable();
            if nexts.contains(&start) && (path.len() > 1 || self_loop) {
                break;
            }
            match nexts.into_iter().find(|n| !seen.contains(n)) {
                Some(n) => {
                    seen.insert(n);
                    path.push(n);
                    cur = n;
                }
                None => break,
            }
        }
        out.push(path.into_iter().map(String::from).collect());
    }
    out.sort();
    out
}

/// `names` plus everything they depend on, transitively (all services when `names` is empty).
pub fn closure(stack: &Stack, names: &[String]) -> BTreeSet<String> {
    reach(stack, names, |n| {
        stack
            .services
            .get(n)
            .map(|s| s.depends_on.keys().cloned().collect())
            .unwrap_or_default()
    })
}

/// `names` plus everything that depends on them, transitively (all services when `names` is empty).
pub fn dependents_closure(stack: &Stack, names: &[String]) -> BTreeSet<String> {
    reach(stack, names, |n| {
        stack
            .services
            .iter()
            .filter(|(_, s)| s.depends_on.contains_key(n))
            .map(|(other, _)| other.clone())
            .collect()
    })
}

fn reach(stack: &Stack, names: &[String], next: impl Fn(&str) -> Vec<String>) -> BTreeSet<String> {
    if names.is_empty() {
        return stack.services.keys().cloned().collect();
    }
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = names.to_vec();
    while let Some(n) = todo.pop() {
        if out.insert(n.clone()) {
            todo.extend(next(&n));
        }
    }
    out
}

/// The start waves of `selected` (each wave's services depend only on earlier waves).
/// Dependencies outside `selected` are ignored, so callers pass a closed set.
pub fn plan(stack: &Stack, selected: &BTreeSet<String>) -> Plan {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    // The stack is acyclic (validated at load), so repeated relaxation terminates.
    fn depth<'a>(
        stack: &'a Stack,
        sel: &BTreeSet<String>,
        n: &'a str,
        memo: &mut BTreeMap<&'a str, usize>,
    ) -> usize {
        if let Some(d) = memo.get(n) {
            return *d;
        }
        let d = stack.services[n]
            .depends_on
            .keys()
            .filter(|dep| sel.contains(*dep))
            .map(|dep| depth(stack, sel, dep, memo) + 1)
            .max()
            .unwrap_or(0);
        memo.insert(n, d);
        d
    }
    for n in selected {
        if stack.services.contains_key(n) {
            depth(stack, selected, n, &mut level);
        }
    }
    let mut waves: Vec<Vec<String>> = Vec::new();
    for (n, d) in level {
        if waves.len() <= d {
            waves.resize(d + 1, Vec::new());
        }
        waves[d].push(n.to_string());
    }
    Plan { waves }
}

/// What one service costs on the way up, in any unit: until it counts as started (its
/// before-start steps and its spawn) and until it is ready (healthy, or completed for a task).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// From its own start to `service_started`.
    pub started: u64,
    /// From its own start to ready; at least `started`.
    pub ready: u64,
}

impl Cost {
    /// A service that is ready as soon as it is spawned (or whose spawn costs nothing).
    pub fn ready(ready: u64) -> Self {
        Cost { started: 0, ready }
    }
}

/// When each service of `selected` could start and be ready with unlimited cores, each costing
/// `cost`: `(start, ready)`. A dependent waits for what its condition names: a
/// `service_started` dependency only until it started, the others until it is ready. The
/// largest `ready` is the critical-path limit: no orchestrator can be done sooner.
pub fn earliest(
    stack: &Stack,
    selected: &BTreeSet<String>,
    cost: impl Fn(&str) -> Cost,
) -> BTreeMap<String, (u64, u64)> {
    let mut at: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for n in plan(stack, selected).services() {
        let start = stack.services[n]
            .depends_on
            .iter()
            .filter_map(|(d, cond)| {
                let (d_start, d_ready) = at.get(d)?;
                Some(match cond {
                    Condition::ServiceStarted => d_start + cost(d).started,
                    _ => *d_ready,
                })
            })
            .max()
            .unwrap_or(0);
        at.insert(n.clone(), (start, start + cost(n).ready));
    }
    at
}

/// How long each service of `selected` could be late without delaying the whole start (see
/// [`earliest`]), and the whole start's length. A dependent's latest start bounds a service's
/// latest ready; through its start only, for `service_started`.
pub fn slack(
    stack: &Stack,
    selected: &BTreeSet<String>,
    cost: impl Fn(&str) -> Cost,
) -> (BTreeMap<String, u64>, u64) {
    let at = earliest(stack, selected, &cost);
    let total = at.values().map(|(_, r)| *r).max().unwrap_or(0);
    // The latest each may be ready without delaying the end, walking the waves backwards.
    let mut latest_ready: BTreeMap<&str, u64> = BTreeMap::new();
    let waves = plan(stack, selected).waves;
    for n in waves.iter().rev().flatten() {
        let c = cost(n);
        let l = selected
            .iter()
            .filter_map(|m| {
                let cond = stack.services[m.as_str()].depends_on.get(n)?;
                let m_latest_start = latest_ready[m.as_str()].saturating_sub(cost(m).ready);
                Some(match cond {
                    Condition::ServiceStarted => {
                        (m_latest_start + c.ready).saturating_sub(c.started)
                    }
                    _ => m_latest_start,
                })
            })
            .fold(total, u64::min);
        latest_ready.insert(n, l);
    }
    let slack = at
        .iter()
        .map(|(n, (_, ready))| (n.clone(), latest_ready[n.as_str()].saturating_sub(*ready)))
        .collect();
    (slack, total)
}

/// Slack within 10% of the whole start's length counts as none: estimates are not that exact.
fn no_slack(slack: u64, total: u64) -> bool {
    slack <= total / 10
}

/// The services of `selected` with (almost) no slack on the longest weighted path (see
/// [`earliest`]): delaying one of them delays the whole start. Within 10% of the total counts
/// as no slack. A dependent that only needs a service started does not put that service's
/// whole start on its path.
pub fn critical_path(
    stack: &Stack,
    selected: &BTreeSet<String>,
    cost: impl Fn(&str) -> Cost,
) -> BTreeSet<String> {
    let (slack, total) = slack(stack, selected, cost);
    slack
        .into_iter()
        .filter(|(_, s)| no_slack(*s, total))
        .map(|(n, _)| n)
        .collect()
}

/// The services of `selected` that must not wait for the CPU: the critical path, and every
/// service whose slack is shorter than its own start. On a machine with fewer cores than
/// services, the ones that wait start slower than alone, and such a service, held back, becomes
/// the end of the start. A second long start beside the longest one is the usual case (Garage
/// beside the OIDC provider, half of its start a wait in its RPC handshake): started early, it
/// waits while the others use the CPU.
pub fn urgent(
    stack: &Stack,
    selected: &BTreeSet<String>,
    cost: impl Fn(&str) -> Cost,
) -> BTreeSet<String> {
    let (slack, total) = slack(stack, selected, &cost);
    slack
        .into_iter()
        .filter(|(n, s)| no_slack(*s, total) || *s < cost(n).ready)
        .map(|(n, _)| n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(list: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        list.iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn finds_every_member_of_a_cycle_in_order() {
        let e = edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
        assert_eq!(cycles(&e), vec![vec!["a", "b", "c"]]);
    }

    #[test]
    fn finds_self_loops_and_separate_cycles() {
        let e = edges(&[("a", &["a"]), ("x", &["y"]), ("y", &["x"]), ("z", &[])]);
        assert_eq!(cycles(&e), vec![vec!["a"], vec!["x", "y"]]);
    }

    #[test]
    fn acyclic_graphs_have_no_cycles() {
        let e = edges(&[("a", &["b", "c"]), ("b", &["d"]), ("c", &["d"]), ("d", &[])]);
        assert!(cycles(&e).is_empty());
    }
}
