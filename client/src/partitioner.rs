//! Which partition a record goes to.
//!
//! Keyed records go to `crc32(key) % partitions`, so all records of a key land in one partition, in
//! order, for any client that uses the same rule. Keyless records stick to one partition until its
//! batch is sealed and then move to the next (round-robin per batch), which fills batches faster
//! than spreading every record and still balances the load over time.

/// Chooses partitions for a producer.
#[derive(Debug, Clone)]
pub struct Partitioner {
    partitions: u32,
    sticky: u32,
}

impl Partitioner {
    /// A partitioner over `partitions` partitions whose keyless records start at a random partition,
    /// so that many producers do not all begin on partition 0.
    pub fn new(partitions: u32) -> Self {
        let start = if partitions == 0 {
            0
        } else {
            (weir_proto::random::u64() % u64::from(partitions)) as u32
        };
        Partitioner::starting_at(partitions, start)
    }

    /// A partitioner whose keyless records start at partition `start`.
    pub fn starting_at(partitions: u32, start: u32) -> Self {
        Partitioner {
            partitions,
            sticky: if partitions == 0 {
                0
            } else {
                start % partitions
            },
        }
    }

    /// Number of partitions being spread over.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The partition for a record with this key (or the sticky partition for no key).
    pub fn partition(&self, key: Option<&[u8]>) -> u32 {
        if self.partitions == 0 {
            return 0;
        }
        match key {
            Some(key) => key_partition(key, self.partitions),
            None => self.sticky,
        }
    }

    /// Called when a batch of `partition` is sealed: keyless records move on if it was the sticky one.
    pub fn batch_sealed(&mut self, partition: u32) {
        if self.partitions > 0 && partition == self.sticky {
            self.sticky = (self.sticky + 1) % self.partitions;
        }
    }
}

/// The partition of a keyed record: `crc32(key) % partitions`.
pub fn key_partition(key: &[u8], partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    crc32fast::hash(key) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_records_use_crc32_of_the_key() {
        // crc32("hello") = 0x3610a686 = 907060870.
        assert_eq!(crc32fast::hash(b"hello"), 907_060_870);
        assert_eq!(key_partition(b"hello", 7), 907_060_870 % 7);
        let p = Partitioner::starting_at(7, 3);
        assert_eq!(p.partition(Some(b"hello")), 907_060_870 % 7);
    }

    #[test]
    fn a_key_always_maps_to_the_same_partition() {
        let mut p = Partitioner::new(16);
        let first: Vec<u32> = (0..100)
            .map(|i| p.partition(Some(format!("user-{i}").as_bytes())))
            .collect();
        for part in 0..16 {
            p.batch_sealed(part);
        }
        let again: Vec<u32> = (0..100)
            .map(|i| p.partition(Some(format!("user-{i}").as_bytes())))
            .collect();
        assert_eq!(first, again);
        assert!(first.iter().all(|&x| x < 16));
        // 100 distinct keys over 16 partitions touch most partitions.
        let mut used = first.clone();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 12, "keys hit only {used:?}");
    }

    #[test]
    fn keyless_records_stick_until_their_batch_is_sealed() {
        let mut p = Partitioner::starting_at(3, 1);
        assert_eq!(p.partition(None), 1);
        assert_eq!(p.partition(None), 1);
        // Sealing another partition's batch does not move keyless records.
        p.batch_sealed(0);
        assert_eq!(p.partition(None), 1);
        let mut seen = Vec::new();
        for _ in 0..6 {
            let part = p.partition(None);
            seen.push(part);
            p.batch_sealed(part);
        }
        assert_eq!(seen, vec![1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn single_partition_topics_always_get_partition_zero() {
        let mut p = Partitioner::new(1);
        assert_eq!(p.partition(None), 0);
        p.batch_sealed(0);
        assert_eq!(p.partition(None), 0);
        assert_eq!(p.partition(Some(b"any")), 0);
    }
}
