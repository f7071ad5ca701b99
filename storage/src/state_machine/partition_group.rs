//! A log partition's group: appends batches (de-duplicating idempotent producers' retries) and
//! trims whole batches for retention. Offsets and size live in the shared header, so they are
//! written with the applied index in every apply.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir_proto::kafka_batch;

use super::{group_key, wrong_kind, ApplyCx, Capture, GroupState, GroupWatch, Header};
use crate::engine::{key_suffix_u64, CF_DATA};
use crate::partition::{self, PartitionState};
use crate::{decode, encode, Engine, Request, Response, StorageError};

pub(super) const TAG_PRODUCER: u8 = 4;
/// Batches remembered per producer for de-duplication (as Kafka's five in-flight batches).
const PRODUCER_WINDOW: usize = 5;
/// Producers remembered per partition; the least recently active is forgotten first.
const MAX_PRODUCERS: usize = 10_000;

/// The last batches an idempotent producer wrote to a partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct ProducerState {
    /// Log index of the producer's last write (orders eviction the same way on every replica).
    last_index: u64,
    /// (sequence, base offset, count) of the last batches, oldest first.
    batches: VecDeque<(u64, u64, u32)>,
    /// A jumping producer (see [`crate::types::ProducerSeq::jumping`]): never forgotten.
    pinned: bool,
    /// A jumping producer's highest epoch seen.
    epoch: u64,
}

/// A partition's idempotent producers, with the forgettable ones ordered by their last write so
/// the least recently active is found without a scan (one HTTP request is one producer, so a busy
/// partition meets the limit often).
#[derive(Default)]
struct Producers {
    by_id: BTreeMap<u64, ProducerState>,
    /// `(last_index, id)` of every producer in `by_id` that is not pinned.
    by_age: BTreeSet<(u64, u64)>,
}

impl Producers {
    /// The state of producer `id`, a fresh one if it has none; its last write and pin are changed
    /// only through [`Producers::written`], which keeps the age order.
    fn state(&mut self, id: u64) -> &mut ProducerState {
        let by_age = &mut self.by_age;
        self.by_id.entry(id).or_insert_with(|| {
            by_age.insert((0, id));
            ProducerState::default()
        })
    }

    /// Records that producer `id` wrote at log index `index` (and is pinned from now on if `pin`).
    fn written(&mut self, id: u64, index: u64, pin: bool) -> &ProducerState {
        let st = self.by_id.entry(id).or_default();
        self.by_age.remove(&(st.last_index, id));
        st.last_index = index;
        st.pinned |= pin;
        if !st.pinned {
            self.by_age.insert((index, id));
        }
        st
    }

    /// Forgets producer `id`.
    fn remove(&mut self, id: u64) {
        if let Some(st) = self.by_id.remove(&id) {
            self.by_age.remove(&(st.last_index, id));
        }
    }

    /// Forgets the least recently active unpinned producer if there are more than `max`; the id
    /// forgotten.
    fn evict_over(&mut self, max: usize) -> Option<u64> {
        if self.by_id.len() <= max {
            return None;
        }
        let (_, id) = self.by_age.pop_first()?;
        self.by_id.remove(&id);
        Some(id)
    }
}

/// A partition's in-memory state: its published offsets and its producers.
pub(super) struct PartitionGroup {
    tx: watch::Sender<PartitionState>,
    producers: Producers,
    /// The leader-epoch index (term → first offset it wrote): a handful of entries, one per
    /// leadership that wrote records.
    epochs: BTreeMap<u64, u64>,
}

impl PartitionGroup {
    /// Opens the partition `group` whose header is `header`.
    pub(super) fn open(
        engine: &Engine,
        group: u64,
        header: &Header,
    ) -> Result<PartitionGroup, StorageError> {
        Ok(PartitionGroup {
            tx: watch::channel(header.partition).0,
            producers: load_producers(engine, group)?,
            epochs: partition::epochs(engine, group)?.into_iter().collect(),
        })
    }

    fn append(
        &mut self,
        cx: &mut ApplyCx<'_>,
        batch: &bytes::Bytes,
        count: u32,
        max_timestamp_ms: i64,
        producer: Option<&crate::types::ProducerSeq>,
    ) -> Result<Response, StorageError> {
        let cf = CF_DATA;
        let group = cx.group;
        let base_offset = cx.header.partition.next_offset;
        if let Some(ps) = producer.filter(|ps| ps.jumping) {
            let st = self.producers.state(ps.producer_id);
            if ps.epoch < st.epoch {
                return Ok(Response::StaleProducer {
                    current_epoch: st.epoch,
                });
            }
            let last = st.batches.back().map_or(0, |(seq, _, _)| *seq);
            if count == 0 || ps.sequence <= last {
                if ps.epoch > st.epoch {
                    // A new instance announces itself: from now on the old one is refused.
                    st.epoch = ps.epoch;
                    let st = self.producers.written(ps.producer_id, cx.index, true);
                    cx.batch
                        .put(cf, producer_key(group, ps.producer_id), encode(st)?);
                } else if st.batches.is_empty() && st.epoch == 0 {
                    self.producers.remove(ps.producer_id);
                }
                return Ok(Response::Duplicate {
                    last_sequence: last,
                });
            }
            st.epoch = ps.epoch;
            st.batches.clear();
            st.batches.push_back((ps.sequence, base_offset, count));
            let st = self.producers.written(ps.producer_id, cx.index, true);
            cx.batch
                .put(cf, producer_key(group, ps.producer_id), encode(st)?);
        } else if let Some(ps) = producer {
            let st = self.producers.state(ps.producer_id);
            if ps.counted && ps.epoch != st.epoch {
                if ps.epoch < st.epoch {
                    return Ok(Response::StaleProducer {
                        current_epoch: st.epoch,
                    });
                }
                // A new epoch of the producer numbers its batches from 0 again.
                st.epoch = ps.epoch;
                st.batches.clear();
            }
            if let Some((_, base, n)) = st.batches.iter().find(|(seq, _, _)| *seq == ps.sequence) {
                return Ok(Response::Appended {
                    base_offset: *base,
                    count: *n,
                });
            }
            // A producer's first batch here is its batch 0; a later one arriving first (several
            // in flight) waits for it.
            // The number the producer's next batch must carry.
            let next = match st.batches.back() {
                Some(b) => Some(number_after(b, ps.counted)),
                None if ps.sequence == 0 => None,
                None => {
                    return Ok(Response::OutOfOrder(format!(
                        "batch {} of producer {} arrived before its batch 0",
                        ps.sequence, ps.producer_id
                    )))
                }
            };
            if let Some(next) = next {
                if ps.sequence > next {
                    return Ok(Response::OutOfOrder(format!(
                        "batch {} of producer {} arrived before batch {next}",
                        ps.sequence, ps.producer_id,
                    )));
                }
                if ps.sequence < next {
                    // Older than everything remembered, yet numbered below the next batch: since
                    // a batch is stored only right after the one before it, this one is stored.
                    // (Refusing it would make the producer send its later batches again under a
                    // new id, storing them twice.)
                    return Ok(Response::StoredEarlier);
                }
            }
            st.batches.push_back((ps.sequence, base_offset, count));
            if st.batches.len() > PRODUCER_WINDOW {
                st.batches.pop_front();
            }
            let st = self.producers.written(ps.producer_id, cx.index, false);
            cx.batch
                .put(cf, producer_key(group, ps.producer_id), encode(st)?);
            if let Some(oldest) = self.producers.evict_over(MAX_PRODUCERS) {
                cx.batch.delete(cf, producer_key(group, oldest));
            }
        }
        let mut value = partition::batch_value(count, max_timestamp_ms, batch);
        if batch.first() == Some(&kafka_batch::TAG) {
            // A Kafka consumer reads the stored batch as it is: it carries its offsets and the
            // leader epoch (the term it was written in).
            let epoch = i32::try_from(cx.term).unwrap_or(i32::MAX);
            kafka_batch::stamp(&mut value[partition::PREFIX_LEN + 1..], base_offset, epoch);
        }
        cx.batch
            .put(cf, partition::batch_key(group, base_offset), value);
        if self
            .epochs
            .last_key_value()
            .is_none_or(|(t, _)| *t < cx.term)
        {
            self.epochs.insert(cx.term, base_offset);
            cx.batch.put(
                cf,
                partition::epoch_key(group, cx.term),
                base_offset.to_be_bytes(),
            );
        }
        let p = &mut cx.header.partition;
        p.next_offset += u64::from(count);
        p.bytes += batch.len() as u64;
        Ok(Response::Appended { base_offset, count })
    }

    fn trim(&mut self, cx: &mut ApplyCx<'_>, before: u64) -> Result<Response, StorageError> {
        let p = &mut cx.header.partition;
        let before = before.min(p.next_offset);
        if before > p.earliest {
            let mut dropped = 0u64;
            partition::scan_batches(cx.engine, cx.group, before, |_, _, sb| {
                dropped += sb.batch.len() as u64;
                Ok(true)
            })?;
            cx.batch.delete_range(
                CF_DATA,
                partition::batch_key(cx.group, 0),
                partition::batch_key(cx.group, before),
            );
            p.earliest = before;
            p.bytes = p.bytes.saturating_sub(dropped);
        }
        Ok(Response::Ok)
    }
}

impl GroupState for PartitionGroup {
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError> {
        match req {
            Request::Append {
                batch,
                count,
                max_timestamp_ms,
                producer,
            } => self.append(cx, batch, *count, *max_timestamp_ms, producer.as_ref()),
            Request::Trim { before } => self.trim(cx, *before),
            other => Ok(wrong_kind(cx.group, other)),
        }
    }

    fn publish(&mut self, header: &Header) {
        self.tx.send_replace(header.partition);
    }

    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError> {
        self.producers = load_producers(engine, group)?;
        self.epochs = partition::epochs(engine, group)?.into_iter().collect();
        Ok(())
    }

    fn watch(&self) -> GroupWatch {
        GroupWatch::Partition(self.tx.subscribe())
    }

    fn capture(&self, group: u64, header: &Header) -> Result<Capture, StorageError> {
        // Batches are append-only: every batch below the high watermark now is the captured state.
        // Producer de-duplication state and the leader-epoch index are small: captured as rows.
        let mut producers = self
            .producers
            .by_id
            .iter()
            .map(|(id, st)| Ok((producer_key(group, *id), encode(st)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        producers.extend(self.epochs.iter().map(|(term, start)| {
            (
                partition::epoch_key(group, *term),
                start.to_be_bytes().to_vec(),
            )
        }));
        Ok(Capture::PartitionBelow(
            header.partition.next_offset,
            producers,
        ))
    }
}

/// The sequence number the next batch of idempotent `producer` on partition `group` must carry
/// after the batches applied so far: 0 when the partition holds none of the producer's batches
/// (or, for a producer numbering records, only batches of an epoch other than `epoch`).
pub fn next_sequence(
    engine: &Engine,
    group: u64,
    producer: u64,
    epoch: u64,
    counted: bool,
) -> Result<u64, StorageError> {
    let Some(raw) = engine.get(CF_DATA, &producer_key(group, producer))? else {
        return Ok(0);
    };
    let st: ProducerState = decode(&raw)?;
    if counted && st.epoch != epoch {
        return Ok(0);
    }
    Ok(st.batches.back().map_or(0, |b| number_after(b, counted)))
}

/// The number the batch after `(sequence, base offset, count)` carries: a producer numbering
/// records (Kafka's) counts the batch's records, one numbering batches counts one.
fn number_after(&(sequence, _, count): &(u64, u64, u32), counted: bool) -> u64 {
    if counted {
        sequence + u64::from(count)
    } else {
        sequence + 1
    }
}

fn producer_key(group: u64, producer: u64) -> Vec<u8> {
    crate::engine::group_key_u64(group, TAG_PRODUCER, producer)
}

fn load_producers(engine: &Engine, group: u64) -> Result<Producers, StorageError> {
    let mut map = Producers::default();
    engine.scan(
        CF_DATA,
        &group_key(group, &[TAG_PRODUCER]),
        &group_key(group, &[TAG_PRODUCER + 1]),
        |k, v| {
            let id = key_suffix_u64(k)
                .ok_or_else(|| StorageError::Corrupt("bad producer key".into()))?;
            let st: ProducerState = decode(v)?;
            if !st.pinned {
                map.by_age.insert((st.last_index, id));
            }
            map.by_id.insert(id, st);
            Ok(true)
        },
    )?;
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_written_unpinned_producer_is_forgotten_first() {
        let mut p = Producers::default();
        p.state(7);
        p.written(7, 10, false);
        p.state(3);
        p.written(3, 11, true); // pinned: never forgotten
        p.state(5);
        p.written(5, 12, false);
        p.written(7, 13, false); // 7 wrote again: 5 is now the oldest
        assert_eq!(p.evict_over(3), None, "at the limit nothing is forgotten");
        p.state(9);
        p.written(9, 14, false);
        assert_eq!(p.evict_over(3), Some(5));
        assert_eq!(p.evict_over(2), Some(7));
        assert_eq!(p.evict_over(1), Some(9));
        assert_eq!(p.evict_over(0), None, "a pinned producer stays");
        assert!(p.by_id.contains_key(&3));
        // A producer removed leaves no trace in the age order.
        p.state(4);
        p.written(4, 20, false);
        p.remove(4);
        assert!(p.by_age.is_empty());
    }
}
