//! `restart`: stop a set of services and their dependents, then `up` them again.

use tokio_util::sync::CancellationToken;

use crate::graph;

use super::error::EngineError;
use super::up::{Builds, UpReport};
use super::Engine;

impl Engine {
    /// Stops then starts `names` (all when empty); their dependents are stopped first and
    /// started again after them. With [`Builds::Always`] the components among `names` are built
    /// first, and nothing is stopped unless every build succeeds.
    pub async fn restart(
        &self,
        names: &[String],
        builds: Builds,
        cancel: CancellationToken,
    ) -> Result<UpReport, EngineError> {
        self.stack.check_names(names)?;
        if builds == Builds::Always {
            self.build(names).await?;
        }
        let set = graph::dependents_closure(&self.stack, names);
        {
            let _lock = self.lock()?;
            self.stop_set(&set, false).await;
        }
        let all: Vec<String> = set.into_iter().collect();
        self.up(&all, cancel).await
    }
}
