//! The schema SQL sees: the cluster's tables and topics, looked up in the catalog at planning
//! time, plus external tables over files registered on this node.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use crate::cluster::Cluster;
use crate::table::RegionTable;
use crate::topic::TopicTable;

/// The `public` schema: every table of the region store, every topic of the log, and this node's
/// external tables. A name is looked up as an external table, then a table, then a topic.
#[derive(Debug)]
pub struct ClusterSchema {
    cluster: Arc<dyn Cluster>,
    /// Tables over files (`CREATE EXTERNAL TABLE`), known to this node only.
    external: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
}

impl ClusterSchema {
    /// The schema over `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>) -> ClusterSchema {
        ClusterSchema {
            cluster,
            external: RwLock::new(HashMap::new()),
        }
    }

    fn external(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<dyn TableProvider>>> {
        self.external.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn cluster_error(e: crate::cluster::ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

#[async_trait]
impl SchemaProvider for ClusterSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .cluster
            .list_tables()
            .map(|t| t.into_iter().map(|t| t.name).collect())
            .unwrap_or_default();
        if let Ok(topics) = self.cluster.list_topics() {
            names.extend(topics.into_iter().map(|t| t.name));
        }
        names.extend(self.external().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.external().get(name) {
            return Ok(Some(t.clone()));
        }
        if let Some(meta) = self.cluster.table(name).map_err(cluster_error)? {
            return Ok(Some(Arc::new(RegionTable::new(self.cluster.clone(), meta))));
        }
        Ok(self
            .cluster
            .topic(name)
            .map_err(cluster_error)?
            .map(|meta| Arc::new(TopicTable::new(self.cluster.clone(), meta)) as _))
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.cluster.table(&name).map_err(cluster_error)?.is_some()
            || self.cluster.topic(&name).map_err(cluster_error)?.is_some()
        {
            return Err(DataFusionError::Plan(format!(
                "'{name}' already exists in the cluster"
            )));
        }
        let mut ext = self.external.write().unwrap_or_else(|p| p.into_inner());
        Ok(ext.insert(name, table))
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let mut ext = self.external.write().unwrap_or_else(|p| p.into_inner());
        Ok(ext.remove(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.external().contains_key(name)
            || matches!(self.cluster.table(name), Ok(Some(_)))
            || matches!(self.cluster.topic(name), Ok(Some(_)))
    }
}
