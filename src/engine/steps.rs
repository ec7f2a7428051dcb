//! A service's init steps in one phase of its start. Steps right after the start talk to a
//! server that may still be coming up, so they are retried, the way probes poll.

use std::time::{Duration, Instant};

use crate::spec::{InitPhase, ServiceSpec};

use super::error::StartError;
use super::start::{exited, ServiceRun};

/// The first delay between two tries of an `after_start` step.
const STEP_FIRST_DELAY: Duration = Duration::from_millis(20);

/// How long after a service's start its `after_start` steps are retried at the first, short
/// delay ([`STEP_FIRST_DELAY`]) before backing off.
const STEP_FAST_PHASE: Duration = Duration::from_secs(2);

/// The longest delay between two tries, once backed off.
const STEP_MAX_DELAY: Duration = Duration::from_millis(500);

/// How long `after_start` steps are retried for a service without a healthcheck (one with a
/// healthcheck gets its probe's budget).
const STEP_BUDGET_WITHOUT_HEALTHCHECK: Duration = Duration::from_secs(60);

impl ServiceRun {
    /// Runs `svc`'s init steps of `phase`, skipping those whose `creates` path exists. Steps
    /// right after the start talk to a server that may still be coming up, so they are retried
    /// (fast at first) until they pass, the service exits, the step exits
    /// [`EXIT_DO_NOT_RETRY`](crate::backend::EXIT_DO_NOT_RETRY), or the healthcheck budget is
    /// spent.
    /// Returns the milliseconds spent.
    pub(super) async fn run_steps(
        &self,
        svc: &ServiceSpec,
        phase: InitPhase,
    ) -> Result<u64, StartError> {
        let t0 = Instant::now();
        let budget = svc
            .healthcheck
            .as_ref()
            .map_or(STEP_BUDGET_WITHOUT_HEALTHCHECK, |h| {
                h.start_period + h.interval * h.retries
            });
        let on = self.backend.backend_for(svc);
        for step in svc
            .init
            .iter()
            .filter(|s| s.phase == phase && s.runs_on(on))
        {
            if step.creates.as_ref().is_some_and(|p| p.exists()) {
                continue;
            }
            self.progress
                .phase(&svc.name, &format!("init: {}", step.name));
            let mut delay = STEP_FIRST_DELAY;
            loop {
                match self.backend.run_step(svc, step, self.priority).await {
                    Ok(_) => break,
                    Err(e) if phase != InitPhase::AfterStart || e.is_permanent() => {
                        return Err(e.into())
                    }
                    Err(cause) => {
                        if let Err(exited) = exited(self.backend.as_ref(), svc) {
                            return Err(StartError::ExitedDuringStep {
                                exited,
                                step: step.name.clone(),
                                cause,
                            });
                        }
                        if t0.elapsed() >= budget {
                            return Err(cause.into());
                        }
                    }
                }
                // Like the probes: often at first (a server is usually up within a second, and
                // a doubling delay would overshoot it by as much again), then backing off.
                tokio::time::sleep(delay).await;
                if t0.elapsed() >= STEP_FAST_PHASE {
                    delay = (delay * 2).min(STEP_MAX_DELAY);
                }
            }
        }
        Ok(t0.elapsed().as_millis() as u64)
    }
}
