//! How a log partition keeps its records: one blob per producer batch, keyed by base offset.
//!
//! `group | TAG_BATCH | base_offset` → `max_timestamp i64 | count u32 | batch`. The batch bytes are the
//! producer's, untouched; the 12-byte prefix is what retention needs without opening the batch.
//! Readers seek to the batch holding an offset and return whole batches.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::engine::{group_key_u64, key_suffix_u64, CF_DATA};
use crate::{Engine, StorageError};

/// Key tag of partition batches within a group's range.
pub const TAG_BATCH: u8 = 1;
/// Key tag of the leader-epoch index: for each Raft term that wrote records, the first offset it
/// wrote (`group | TAG_EPOCH | term` → offset), as Kafka's leader-epoch checkpoint.
pub const TAG_EPOCH: u8 = 9;
/// Size of the prefix stored in front of each batch.
pub const PREFIX_LEN: usize = 12;

/// Offsets and size of a partition, as of its last applied entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionState {
    /// Offset the next batch gets: the high watermark.
    pub next_offset: u64,
    /// First offset still stored (moves forward with retention).
    pub earliest: u64,
    /// Bytes of stored batches.
    pub bytes: u64,
}

/// A stored batch as readers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    /// Offset of the batch's first record.
    pub base_offset: u64,
    /// Records in the batch.
    pub count: u32,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// The producer's encoded batch.
    pub batch: Bytes,
}

/// Key of the batch starting at `base` in `group`.
pub fn batch_key(group: u64, base: u64) -> Vec<u8> {
    group_key_u64(group, TAG_BATCH, base)
}

/// Key of the leader-epoch index entry of `term` in `group`.
pub fn epoch_key(group: u64, term: u64) -> Vec<u8> {
    group_key_u64(group, TAG_EPOCH, term)
}

/// Where a leader epoch ends: the largest epoch at or below the one asked for that wrote records
/// and the offset after its last record (the first offset of the next epoch that wrote, or the
/// high watermark). None when no epoch at or below the one asked for wrote anything: then the
/// first offset of the earliest later epoch (or the high watermark) ends it, with the asked epoch.
pub fn epoch_end(
    engine: &Engine,
    group: u64,
    epoch: u64,
    high_watermark: u64,
) -> Result<(Option<u64>, u64), StorageError> {
    let floor = engine
        .last_in(
            CF_DATA,
            &epoch_key(group, 0),
            &epoch_key(group, epoch.saturating_add(1)),
        )?
        .map(|(k, _)| {
            key_suffix_u64(&k).ok_or_else(|| StorageError::Corrupt("bad epoch key".into()))
        })
        .transpose()?;
    let mut end = high_watermark;
    if epoch < u64::MAX {
        engine.scan(
            CF_DATA,
            &epoch_key(group, epoch + 1),
            &crate::engine::group_key(group, &[TAG_EPOCH + 1]),
            |_, v| {
                let start: [u8; 8] = v
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("bad epoch start offset".into()))?;
                end = u64::from_be_bytes(start).min(high_watermark);
                Ok(false)
            },
        )?;
    }
    Ok((floor, end))
}

/// Every leader-epoch index entry of `group`: term → first offset it wrote.
pub fn epochs(engine: &Engine, group: u64) -> Result<Vec<(u64, u64)>, StorageError> {
    let mut out = Vec::new();
    engine.scan(
        CF_DATA,
        &epoch_key(group, 0),
        &crate::engine::group_key(group, &[TAG_EPOCH + 1]),
        |k, v| {
            let term =
                key_suffix_u64(k).ok_or_else(|| StorageError::Corrupt("bad epoch key".into()))?;
            let start: [u8; 8] = v
                .try_into()
                .map_err(|_| StorageError::Corrupt("bad epoch start offset".into()))?;
            out.push((term, u64::from_be_bytes(start)));
            Ok(true)
        },
    )?;
    Ok(out)
}

/// The stored value of a batch: prefix and producer bytes.
pub fn batch_value(count: u32, max_timestamp_ms: i64, batch: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(PREFIX_LEN + batch.len());
    v.extend_from_slice(&max_timestamp_ms.to_be_bytes());
    v.extend_from_slice(&count.to_be_bytes());
    v.extend_from_slice(batch);
    v
}

fn parse(key: &[u8], value: &[u8]) -> Result<StoredBatch, StorageError> {
    if value.len() < PREFIX_LEN {
        return Err(StorageError::Corrupt(
            "stored batch shorter than its prefix".into(),
        ));
    }
    let base_offset =
        key_suffix_u64(key).ok_or_else(|| StorageError::Corrupt("bad batch key".into()))?;
    let max_timestamp_ms = i64::from_be_bytes(value[0..8].try_into().expect("8 bytes"));
    let count = u32::from_be_bytes(value[8..12].try_into().expect("4 bytes"));
    let batch = Bytes::copy_from_slice(&value[PREFIX_LEN..]);
    Ok(StoredBatch {
        base_offset,
        count,
        max_timestamp_ms,
        batch,
    })
}

/// Reads the batches holding offsets `offset..high_watermark`, stopping once `max_bytes` is reached
/// (at least one batch is returned when there is one, as Kafka does).
pub fn read_batches(
    engine: &Engine,
    group: u64,
    offset: u64,
    high_watermark: u64,
    max_bytes: usize,
) -> Result<Vec<StoredBatch>, StorageError> {
    if offset >= high_watermark {
        return Ok(Vec::new());
    }
    let lo = batch_key(group, 0);
    let hi = batch_key(group, high_watermark);
    // The batch holding `offset` is the last one starting at or before it.
    let start = match engine.last_in(CF_DATA, &lo, &batch_key(group, offset + 1))? {
        Some((k, _)) => k,
        None => lo,
    };
    let mut out = Vec::new();
    let mut size = 0usize;
    engine.scan(CF_DATA, &start, &hi, |k, v| {
        let b = parse(k, v)?;
        if b.base_offset + u64::from(b.count) <= offset {
            return Ok(true);
        }
        size += b.batch.len();
        out.push(b);
        Ok(size < max_bytes)
    })?;
    Ok(out)
}

/// Visits every stored batch of `group` starting before `end`, in offset order.
pub fn scan_batches(
    engine: &Engine,
    group: u64,
    end: u64,
    mut visit: impl FnMut(&[u8], &[u8], &StoredBatch) -> Result<bool, StorageError>,
) -> Result<(), StorageError> {
    engine.scan(
        CF_DATA,
        &batch_key(group, 0),
        &batch_key(group, end),
        |k, v| visit(k, v, &parse(k, v)?),
    )
}

/// Base offset of the first batch still stored below `end`, if any (retention drops batches at the
/// front).
pub fn first_batch_below(
    engine: &Engine,
    group: u64,
    end: u64,
) -> Result<Option<u64>, StorageError> {
    let mut first = None;
    engine.scan(
        CF_DATA,
        &batch_key(group, 0),
        &batch_key(group, end),
        |k, _| {
            first = Some(
                key_suffix_u64(k).ok_or_else(|| StorageError::Corrupt("bad batch key".into()))?,
            );
            Ok(false)
        },
    )?;
    Ok(first)
}

/// The first offset to keep under the retention limits, if anything should be dropped. Only whole
/// batches are dropped, oldest first.
pub fn retention_cut(
    engine: &Engine,
    group: u64,
    state: &PartitionState,
    retention_ms: u64,
    retention_bytes: u64,
    now_ms: i64,
) -> Result<Option<u64>, StorageError> {
    if retention_ms == 0 && retention_bytes == 0 {
        return Ok(None);
    }
    let cutoff = now_ms.saturating_sub(i64::try_from(retention_ms).unwrap_or(i64::MAX));
    let mut remaining = state.bytes;
    let mut cut = None;
    scan_batches(engine, group, state.next_offset, |_, _, b| {
        let too_old = retention_ms > 0 && b.max_timestamp_ms < cutoff;
        let too_big = retention_bytes > 0 && remaining > retention_bytes;
        if too_old || too_big {
            remaining = remaining.saturating_sub(b.batch.len() as u64);
            cut = Some(b.base_offset + u64::from(b.count));
            Ok(true)
        } else {
            Ok(false)
        }
    })?;
    Ok(cut.filter(|c| *c > state.earliest))
}
