//! The schema SQL sees: the cluster's tables, topics and tables over files, looked up in the
//! catalog at planning time, plus what a session registered on this node only (views, temporary
//! external tables).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::SchemaProvider;
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};

use crate::cluster::Cluster;
use crate::external::ExternalTables;
use crate::table::RegionTable;
use crate::topic::TopicTable;

/// The catalog SQL names Weir's tables in (`weir.public.name`; plain `name` works too).
pub const CATALOG: &str = "weir";
/// The schema of the cluster's tables.
pub const SCHEMA: &str = "public";

/// The `public` schema: every table of the region store, every topic of the log, every table
/// over files, and what was registered on this node only. A name is looked up as a local one,
/// then a table over files, then a table, then a topic (the catalog keeps the last three apart).
#[derive(Debug)]
pub struct ClusterSchema {
    cluster: Arc<dyn Cluster>,
    /// Views and `CREATE TEMPORARY EXTERNAL TABLE`s: known to this node only.
    external: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
    /// The cluster's tables over files, as built on this node.
    files: ExternalTables,
}

impl ClusterSchema {
    /// The schema over `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>) -> ClusterSchema {
        ClusterSchema {
            cluster,
            external: RwLock::new(HashMap::new()),
            files: ExternalTables::default(),
        }
    }

    /// Forgets what this node built for the table over files `name` (it was dropped).
    pub fn forget_files(&self, name: &str) {
        self.files.forget(name);
    }

    /// What `name` names in the catalog as this node has applied it, if anything.
    async fn lookup(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.external().get(name) {
            return Ok(Some(t.clone()));
        }
        if let Some(meta) = self.cluster.external_table(name).map_err(cluster_error)? {
            return self.files.get(&meta).await.map(Some);
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
        if let Ok(files) = self.cluster.list_external_tables() {
            names.extend(files.into_iter().map(|t| t.name));
        }
        names.extend(self.external().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(t) = self.lookup(name).await? {
            return Ok(Some(t));
        }
        // A name just created through another node (or through this one, forwarded to the
        // metadata leader) may not be applied here yet; a statement naming it must find it.
        if let Err(e) = self.cluster.catalog_caught_up().await {
            tracing::debug!(table = name, error = %e, "catalog not brought up to date");
            return Ok(None);
        }
        self.lookup(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if self.cluster.table(&name).map_err(cluster_error)?.is_some()
            || self.cluster.topic(&name).map_err(cluster_error)?.is_some()
            || self
                .cluster
                .external_table(&name)
                .map_err(cluster_error)?
                .is_some()
        {
            return Err(cluster_error(crate::cluster::ClusterError::AlreadyExists(
                format!("table '{name}' already exists in the cluster"),
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
            || matches!(self.cluster.external_table(name), Ok(Some(_)))
    }
}
