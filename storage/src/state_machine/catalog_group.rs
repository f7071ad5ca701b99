//! The metadata group (group 0): applies catalog commands to the cluster catalog, which is kept
//! whole in memory and stored as one row.

use std::sync::Arc;

use tokio::sync::watch;

use super::{group_key, wrong_kind, ApplyCx, Capture, GroupState, GroupWatch, Header};
use crate::catalog::{Catalog, MetaResponse};
use crate::engine::CF_DATA;
use crate::{decode, encode, Engine, Request, Response, StorageError};

const TAG_CATALOG: u8 = 2;

/// The catalog as last applied, published to the node.
pub(super) struct CatalogGroup {
    tx: watch::Sender<Arc<Catalog>>,
}

impl CatalogGroup {
    /// Opens the metadata group `group` from what the engine holds.
    pub(super) fn open(engine: &Engine, group: u64) -> Result<CatalogGroup, StorageError> {
        Ok(CatalogGroup {
            tx: watch::channel(Arc::new(load(engine, group)?)).0,
        })
    }
}

fn catalog_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_CATALOG])
}

fn load(engine: &Engine, group: u64) -> Result<Catalog, StorageError> {
    Ok(match engine.get(CF_DATA, &catalog_key(group))? {
        Some(v) => decode(&v)?,
        None => Catalog::default(),
    })
}

impl GroupState for CatalogGroup {
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError> {
        let Request::Meta(cmd) = req else {
            return Ok(wrong_kind(cx.group, req));
        };
        let mut catalog = (**self.tx.borrow()).clone();
        let resp = catalog.apply(cmd);
        if !matches!(resp, MetaResponse::Rejected(..)) {
            cx.batch
                .put(CF_DATA, catalog_key(cx.group), encode(&catalog)?);
            self.tx.send_replace(Arc::new(catalog));
        }
        Ok(Response::Meta(resp))
    }

    fn publish(&mut self, _header: &Header) {
        // Published by each apply: the next command reads the catalog the previous one made.
    }

    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError> {
        self.tx.send_replace(Arc::new(load(engine, group)?));
        Ok(())
    }

    fn watch(&self) -> GroupWatch {
        GroupWatch::Catalog(self.tx.subscribe())
    }

    fn capture(&self, group: u64, _header: &Header) -> Result<Capture, StorageError> {
        // An encode failure fails the snapshot rather than writing an empty catalog.
        Ok(Capture::Rows(vec![(
            catalog_key(group),
            encode(&**self.tx.borrow())?,
        )]))
    }
}
