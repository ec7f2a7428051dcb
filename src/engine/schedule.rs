//! Startup priority for one `up`: which services are urgent (the critical path and those close
//! to it, weighed by [`cost`](super::cost)), which of them lead the launch, and when each of the
//! others may be launched. See "Startup priority" in docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::Priority;
use crate::graph;
use crate::layout::Layout;
use crate::spec::Stack;

use super::action::Action;
use super::cost::expected_cost;

/// The order and priority in which one `up` launches the services it starts.
pub(super) struct Schedule {
    /// Started at a priority above the others (see [`urgent`]).
    urgent: BTreeSet<String>,
    /// The urgent services with nothing to wait for: launched before everything else.
    leads: BTreeSet<String>,
    /// How many leads are not launched yet.
    leads_left: Arc<watch::Sender<usize>>,
}

impl Schedule {
    /// The schedule of `selected`, each to be handled as `actions` says.
    pub(super) fn new(
        stack: &Stack,
        layout: &Layout,
        selected: &BTreeSet<String>,
        actions: &BTreeMap<String, Action>,
    ) -> Schedule {
        let urgent = urgent(stack, layout, selected, actions);
        // The urgent services that can start at once are launched before the others: on a
        // small machine, six supervisors launched together delay the first one's spawn by 10 ms.
        let leads: BTreeSet<String> = urgent
            .iter()
            .filter(|n| {
                actions[n.as_str()] != Action::Keep
                    && stack.services[n.as_str()]
                        .depends_on
                        .keys()
                        .all(|d| !selected.contains(d) || actions[d] == Action::Keep)
            })
            .cloned()
            .collect();
        let (leads_left, _) = watch::channel(leads.len());
        Schedule {
            urgent,
            leads,
            leads_left: Arc::new(leads_left),
        }
    }

    /// The priority `name` starts at.
    pub(super) fn priority(&self, name: &str) -> Priority {
        if self.urgent.contains(name) {
            Priority::Urgent
        } else {
            Priority::Background
        }
    }

    /// When `name` may be launched.
    pub(super) fn launch(&self, name: &str) -> Launch {
        if self.leads.contains(name) {
            Launch::Lead(LeadLaunched::new(&self.leads_left))
        } else if self.urgent.contains(name) {
            Launch::Now
        } else {
            Launch::AfterLeads(self.leads_left.subscribe())
        }
    }
}

/// The services that must not wait for the CPU (see [`graph::urgent`]): the longest path to
/// ready, and the services with less slack than their own start. Each weighs what it will
/// cost this time: its last start (from its readiness file) without the first-start init
/// steps it will skip, nothing when it is kept as it is, and a flat guess before its first
/// start (so hops decide). A `service_started` dependency weighs only its spawn. `up`
/// launches these first and lets them take the CPU from the others while they start: on a
/// small machine they then run at full speed.
fn urgent(
    stack: &Stack,
    layout: &Layout,
    selected: &BTreeSet<String>,
    actions: &BTreeMap<String, Action>,
) -> BTreeSet<String> {
    let costs: BTreeMap<&str, graph::Cost> = selected
        .iter()
        .map(|n| {
            let cost = expected_cost(layout, &stack.services[n], actions[n]);
            (n.as_str(), cost)
        })
        .collect();
    graph::urgent(stack, selected, |n| {
        costs.get(n).copied().unwrap_or_default()
    })
}

/// When a service to start may be launched.
pub(super) enum Launch {
    /// At once.
    Now,
    /// At once, and it tells the others when it is launched (or failed to be).
    Lead(LeadLaunched),
    /// Once every lead has been launched: the number of leads left reaches 0.
    AfterLeads(watch::Receiver<usize>),
}

impl Launch {
    /// Returns once the service may be launched.
    pub(super) async fn turn(&self) {
        if let Launch::AfterLeads(rx) = self {
            // Nothing to wait for if the leads' tasks are gone.
            let _ = rx.clone().wait_for(|left| *left == 0).await;
        }
    }

    /// The service is launched, or has begun steps that take long (a first start's initdb): the
    /// others need not wait for it any longer.
    pub(super) fn launched(&self) {
        if let Launch::Lead(lead) = self {
            lead.done();
        }
    }
}

/// Counts one lead as launched, once: when told, or when dropped (its start failed).
pub(super) struct LeadLaunched {
    left: Arc<watch::Sender<usize>>,
    counted: AtomicBool,
}

impl LeadLaunched {
    fn new(left: &Arc<watch::Sender<usize>>) -> Self {
        LeadLaunched {
            left: Arc::clone(left),
            counted: AtomicBool::new(false),
        }
    }

    fn done(&self) {
        if !self.counted.swap(true, Ordering::Relaxed) {
            self.left.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
}

impl Drop for LeadLaunched {
    fn drop(&mut self) {
        self.done();
    }
}
