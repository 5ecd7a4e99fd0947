//! The load of the router and of the pools, for status pages. ractor does not expose an
//! actor's mailbox length; the queues that hold waiting work are the factories' (runner and
//! preprocessor pools) and the router's own.

use std::collections::HashMap;
use std::time::Duration;

use super::handle::ServiceHandle;
use crate::router::{RouterMsg, RouterStats};

/// One runnable's live load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnableLoad {
    pub running: usize,
    /// Jobs waiting for its `concurrency` limit.
    pub waiting: usize,
}

/// A ractor factory's queue: `None` when it did not answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLoad {
    pub queued: Option<usize>,
    pub active: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolsLoad {
    pub runner_pool: PoolLoad,
    pub preprocessor_pool: PoolLoad,
}

/// How long a status page waits for a pool's answer.
const POOL_WAIT: Duration = Duration::from_secs(2);

fn answered<E>(r: Result<ractor::rpc::CallResult<usize>, E>) -> Option<usize> {
    match r {
        Ok(ractor::rpc::CallResult::Success(n)) => Some(n),
        _ => None,
    }
}

impl ServiceHandle {
    /// What the router holds; `None` when it did not answer (it is stopping).
    pub async fn router_stats(&self) -> Option<RouterStats> {
        ractor::call!(self.router, RouterMsg::Stats).ok()
    }

    /// Each runnable's load, by name; runnables the router has not run yet are missing (idle).
    pub async fn runnable_stats(&self) -> HashMap<String, RunnableLoad> {
        ractor::call!(self.router, RouterMsg::RunnableStats)
            .unwrap_or_default()
            .into_iter()
            .map(|(name, (running, waiting))| (name, RunnableLoad { running, waiting }))
            .collect()
    }

    /// The runner and preprocessor pools' queues.
    pub async fn pools_load(&self) -> PoolsLoad {
        let wait = Some(POOL_WAIT);
        let pre = self.intake.preprocessors.actor();
        PoolsLoad {
            runner_pool: PoolLoad {
                queued: answered(self.runner_pool.queue_depth(wait).await),
                active: answered(self.runner_pool.active_workers(wait).await),
            },
            preprocessor_pool: PoolLoad {
                queued: answered(pre.queue_depth(wait).await),
                active: answered(pre.active_workers(wait).await),
            },
        }
    }
}
