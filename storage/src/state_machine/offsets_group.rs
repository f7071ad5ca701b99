//! A consumer-offsets group: records the offsets consumer groups commit, one row per (consumer
//! group, topic, partition), all of them also kept in memory for the coordinator.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::{group_key, wrong_kind, ApplyCx, Capture, GroupState, GroupWatch, Header};
use crate::engine::{key_suffix_u64, CF_DATA};
use crate::{decode, encode, Engine, Request, Response, StorageError};

const TAG_OFFSET: u8 = 3;

/// Key of committed offsets: (consumer group, topic, partition).
pub type OffsetKey = (String, String, u32);

/// Committed offsets as last applied, published to the node.
pub(super) struct OffsetsGroup {
    tx: watch::Sender<Arc<BTreeMap<OffsetKey, u64>>>,
}

impl OffsetsGroup {
    /// Opens the offsets group `group` from what the engine holds.
    pub(super) fn open(engine: &Engine, group: u64) -> Result<OffsetsGroup, StorageError> {
        Ok(OffsetsGroup {
            tx: watch::channel(Arc::new(load_offsets(engine, group)?)).0,
        })
    }
}

impl GroupState for OffsetsGroup {
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError> {
        let Request::CommitOffsets {
            group: cg,
            topic,
            offsets,
        } = req
        else {
            return Ok(wrong_kind(cx.group, req));
        };
        let cf = CF_DATA;
        let mut map = (**self.tx.borrow()).clone();
        for (p, off) in offsets {
            let key = (cg.clone(), topic.clone(), *p);
            cx.batch
                .put(cf, offset_key(cx.group, &key)?, off.to_be_bytes());
            map.insert(key, *off);
        }
        self.tx.send_replace(Arc::new(map));
        Ok(Response::Ok)
    }

    fn publish(&mut self, _header: &Header) {
        // Published by each apply.
    }

    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError> {
        self.tx.send_replace(Arc::new(load_offsets(engine, group)?));
        Ok(())
    }

    fn watch(&self) -> GroupWatch {
        GroupWatch::Offsets(self.tx.subscribe())
    }

    fn capture(&self, group: u64, _header: &Header) -> Result<Capture, StorageError> {
        let rows = self
            .tx
            .borrow()
            .iter()
            .map(|(k, v)| Ok((offset_key(group, k)?, v.to_be_bytes().to_vec())))
            .collect::<Result<Vec<_>, StorageError>>()?;
        Ok(Capture::Rows(rows))
    }
}

fn offset_key(group: u64, key: &OffsetKey) -> Result<Vec<u8>, StorageError> {
    let mut suffix = vec![TAG_OFFSET];
    suffix.extend_from_slice(&encode(key)?);
    Ok(group_key(group, &suffix))
}

fn load_offsets(engine: &Engine, group: u64) -> Result<BTreeMap<OffsetKey, u64>, StorageError> {
    let mut map = BTreeMap::new();
    engine.scan(
        CF_DATA,
        &group_key(group, &[TAG_OFFSET]),
        &group_key(group, &[TAG_OFFSET + 1]),
        |k, v| {
            let key: OffsetKey = decode(
                k.get(9..)
                    .ok_or_else(|| StorageError::Corrupt("bad offset key".into()))?,
            )?;
            let off =
                key_suffix_u64(v).ok_or_else(|| StorageError::Corrupt("bad offset".into()))?;
            map.insert(key, off);
            Ok(true)
        },
    )?;
    Ok(map)
}
