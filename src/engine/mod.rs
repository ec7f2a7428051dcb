//! The engine: `up`, `down`, `restart` and `rebuild` over the dependency graph. Each service is
//! a task that waits for its dependencies' conditions, so independent branches start in parallel
//! and a service starts the moment its own dependencies are ready (never later than its wave).

mod action;
mod build;
mod cost;
mod down;
mod error;
mod rebuild;
mod restart;
mod schedule;
mod start;
mod steps;
mod tasks;
mod up;

use std::sync::Arc;

use crate::backend::Backend;
use crate::layout::Layout;
use crate::progress::Progress;
use crate::spec::Stack;
use crate::supervisor;

pub use error::{EngineError, Exited, StartError, Unhealthy};
pub use up::{Builds, UpReport};

/// Runs `up`, `down`, `restart` and `rebuild` for one stack on one backend.
pub struct Engine {
    stack: Arc<Stack>,
    layout: Layout,
    backend: Arc<dyn Backend>,
    progress: Arc<Progress>,
}

impl Engine {
    /// An engine for `stack` on `backend`.
    pub fn new(stack: Stack, backend: Arc<dyn Backend>, progress: Progress) -> Engine {
        let layout = Layout::new(stack.state_dir.clone());
        Engine {
            stack: Arc::new(stack),
            layout,
            backend,
            progress: Arc::new(progress),
        }
    }

    /// The stack this engine runs.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// The state dir it runs in.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The services among `names` whose instance runs now (starting or running).
    pub fn running(&self, names: &[String]) -> Vec<String> {
        use crate::supervisor::record::State;
        names
            .iter()
            .filter(|n| {
                self.stack.services.get(*n).is_some_and(|s| {
                    matches!(
                        self.backend.inspect(s).state,
                        State::Running | State::Starting
                    )
                })
            })
            .cloned()
            .collect()
    }

    /// Takes the state dir's lock, which every command that changes what runs holds, waiting
    /// (and saying so) while another `stack` command has it.
    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, EngineError> {
        self.layout
            .create()
            .map_err(|source| supervisor::SupervisorError::Io {
                path: self.layout.root().to_path_buf(),
                source,
            })?;
        if let Some(l) = supervisor::lock_stack(&self.layout, false)? {
            return Ok(l);
        }
        self.progress
            .note("another `stack` command is running on this state dir: waiting for it");
        match supervisor::lock_stack(&self.layout, true)? {
            Some(l) => Ok(l),
            None => unreachable!("a blocking lock either succeeds or errors"),
        }
    }
}
