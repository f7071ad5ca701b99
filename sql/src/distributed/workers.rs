//! The workers of the cluster as a query sees them: which nodes can take tasks now, and the
//! session a node builds to run a task sent to it.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{FunctionRegistry, SessionState};
use datafusion::prelude::SessionContext;
use datafusion_distributed::{
    DistributedExt, WorkerQueryContext, WorkerResolver, WorkerSessionBuilder,
};
use url::Url;

use super::codec::ScanCodec;
use crate::cluster::Cluster;

/// The nodes a query may send tasks to, as this node's view of the cluster says now.
#[derive(Debug)]
pub struct Workers {
    cluster: Arc<dyn Cluster>,
}

impl Workers {
    /// The workers `cluster` knows of.
    pub fn new(cluster: Arc<dyn Cluster>) -> Workers {
        Workers { cluster }
    }
}

impl WorkerResolver for Workers {
    fn get_urls(&self) -> Result<Vec<Url>> {
        self.cluster
            .worker_urls()
            .iter()
            .map(|u| {
                Url::parse(u).map_err(|e| {
                    DataFusionError::Internal(format!("worker address '{u}' is no URL: {e}"))
                })
            })
            .collect()
    }
}

/// The engine whose functions a task's session offers (set once the engine exists: its
/// session holds this node's worker, which in turn builds sessions like it).
pub type EngineSlot = Arc<OnceLock<Weak<SessionContext>>>;

/// Builds the session a task sent to this node runs in: Weir's scans read through this node's
/// view of the cluster, and every function the node's SQL engine has (Weir's, the Postgres
/// protocol's) resolves as it did where the query was planned.
pub struct TaskSessions {
    cluster: Arc<dyn Cluster>,
    engine: EngineSlot,
}

impl TaskSessions {
    /// Sessions reading through `cluster`, with the functions of the engine in `engine`.
    pub fn new(cluster: Arc<dyn Cluster>, engine: EngineSlot) -> TaskSessions {
        TaskSessions { cluster, engine }
    }
}

#[async_trait]
impl WorkerSessionBuilder for TaskSessions {
    async fn build_session_state(&self, ctx: WorkerQueryContext) -> Result<SessionState> {
        let mut state = ctx
            .builder
            .with_distributed_user_codec(ScanCodec::new(self.cluster.clone()))
            .build();
        if let Some(engine) = self.engine.get().and_then(Weak::upgrade) {
            let planned = engine.state();
            for f in planned.scalar_functions().values() {
                state.register_udf(f.clone())?;
            }
            for f in planned.aggregate_functions().values() {
                state.register_udaf(f.clone())?;
            }
            for f in planned.window_functions().values() {
                state.register_udwf(f.clone())?;
            }
        }
        super::settings::apply(&ctx.headers, &mut state)?;
        Ok(state)
    }
}
