//! The cost model behind startup priority: what a service's start will cost this time, by the
//! readiness file its last start left, and the warm-start estimate each start leaves for the
//! next. See "Startup priority" in docs/architecture.md.

use crate::graph::Cost;
use crate::layout::Layout;
use crate::spec::{InitPhase, ServiceSpec};
use crate::supervisor::record::{read_json, Readiness};

use super::action::Action;

/// What a service costs before its first start, in milliseconds: the same for every service, so
/// the number of hops on a path decides.
const UNKNOWN_COST_MS: u64 = 1000;

/// What starting `svc` will cost this time, to spawned and to ready, in milliseconds: nothing
/// when it is kept as it is.
pub(super) fn expected_cost(layout: &Layout, svc: &ServiceSpec, action: Action) -> Cost {
    if action == Action::Keep {
        return Cost::default();
    }
    let first = first_start(svc);
    let Some(r) = read_json::<Readiness>(&layout.readiness(&svc.name))
        .ok()
        .flatten()
    else {
        return Cost::ready(UNKNOWN_COST_MS);
    };
    expected_from(&r, first)
}

/// Is this `svc`'s first start: does an init step still have to create its data? A step
/// without `creates` runs on every start, so it says nothing either way.
pub(super) fn first_start(svc: &ServiceSpec) -> bool {
    svc.init.iter().any(|s| {
        s.phase == InitPhase::BeforeStart && s.creates.as_ref().is_some_and(|c| !c.exists())
    })
}

/// What a start costs by the service's last readiness file, to spawned and to ready. A first
/// start (its data not there yet) costs what the last first start did. Any other start costs its
/// warm estimate; without one yet, the last start less its steps before the start: a warm start
/// skips those (they prepare the data, as initdb does). Steps after the start run again; a first
/// start's bootstrap costs more than a warm start's check, so this errs long, and the warm start
/// that follows records the real cost.
fn expected_from(r: &Readiness, first: bool) -> Cost {
    let (started, ready) = if first {
        (r.spawned_ms, r.ready_ms)
    } else {
        (
            r.spawned_ms.saturating_sub(r.before_ms),
            r.warm_ms.unwrap_or(r.ready_ms.saturating_sub(r.before_ms)),
        )
    };
    let ready = ready.max(1);
    Cost {
        started: started.min(ready),
        ready,
    }
}

/// The warm-start cost to plan the next start by. Services started together slow each other
/// down, and the ones `up` deprioritised most, so the latest time alone would make yesterday's
/// background service look like today's long pole. The estimate is a floor that drops at once
/// to a faster observation and rises by at most a quarter per start, following a service that
/// really got slower (more data to recover) without chasing contention. A start that was held
/// back (`background`) only shows what the service costs at most: it may lower the estimate but
/// neither set nor raise it (until a start at full speed sets it, `up` plans by the latest time;
/// see [`expected_from`]).
pub(super) fn next_warm_estimate(
    previous: Option<u64>,
    observed: u64,
    background: bool,
) -> Option<u64> {
    match previous {
        Some(p) if background => Some(observed.min(p)),
        Some(p) => Some(observed.min(p + p / 4 + 1)),
        None if background => None,
        None => Some(observed),
    }
}

#[cfg(test)]
mod tests {
    use super::{expected_from, next_warm_estimate};
    use crate::graph::Cost;
    use crate::supervisor::record::Readiness;

    fn readiness(spawned_ms: u64, ready_ms: u64, init_ms: u64, before_ms: u64) -> Readiness {
        Readiness {
            id: "i".into(),
            pid: None,
            spawned_ms,
            ready_ms,
            init_ms,
            before_ms,
            warm_ms: None,
            at: String::new(),
            program: None,
            program_key: None,
        }
    }

    #[test]
    fn a_warm_start_without_history_skips_only_the_steps_before_the_start() {
        // PostgreSQL after its first start: initdb (before the start) is not run again.
        let pg = readiness(1095, 1130, 1088, 1088);
        assert_eq!(
            expected_from(&pg, false),
            Cost {
                started: 7,
                ready: 42
            }
        );
        assert_eq!(
            expected_from(&pg, true),
            Cost {
                started: 1095,
                ready: 1130
            }
        );
        // Garage after its first start: its bootstrap (after the start) runs again, so its
        // time stays in, though a warm start's check costs less.
        let garage = readiness(22, 662, 637, 0);
        assert_eq!(expected_from(&garage, false).ready, 662);
        // Once a warm start was measured, that is what counts.
        let known = Readiness {
            warm_ms: Some(80),
            ..garage
        };
        assert_eq!(expected_from(&known, false).ready, 80);
    }

    #[test]
    fn warm_estimate_drops_at_once_and_rises_slowly() {
        let next = |p, o| next_warm_estimate(p, o, false);
        assert_eq!(next(None, 180), Some(180));
        // Slowed down by the others once: barely moves.
        assert_eq!(next(Some(100), 300), Some(126));
        // Faster than ever: taken as is.
        assert_eq!(next(Some(126), 90), Some(90));
        // Really slower for good: reaches it within a few starts.
        let mut e = Some(100);
        for _ in 0..5 {
            e = next(e, 300);
        }
        assert_eq!(e, Some(300));
    }

    #[test]
    fn a_start_held_back_can_only_lower_the_warm_estimate() {
        // A cold start in the background (a fresh Garage bootstrapping behind initdb) says
        // nothing about a warm start.
        assert_eq!(next_warm_estimate(None, 689, true), None);
        assert_eq!(next_warm_estimate(Some(170), 400, true), Some(170));
        assert_eq!(next_warm_estimate(Some(170), 120, true), Some(120));
    }
}
