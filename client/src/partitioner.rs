//! Which partition a record goes to.
//!
//! Keyed records go to `crc32(key) % partitions`, so all records of a key land in one partition, in
//! order, for any client that uses the same rule. Keyless records stick to one partition for a
//! stint of so many bytes (a producer's batch size) and then move to the next, which fills batches
//! faster than spreading every record. The stint is counted in bytes given to the partition, not
//! in batches sent: a partition whose sender keeps up sends a batch at every linger while a slower
//! one fills whole batches, and switching at each sent batch gave the slowest partitions the most
//! records (Kafka's KAFKA-10888, fixed the same way by its KIP-794).

/// Chooses partitions for a producer.
#[derive(Debug, Clone)]
pub struct Partitioner {
    partitions: u32,
    sticky: u32,
    /// Bytes of keyless records a partition takes before the next one does.
    stint_bytes: usize,
    /// Bytes of keyless records the sticky partition has taken in its stint.
    taken: usize,
}

impl Partitioner {
    /// A partitioner over `partitions` partitions whose keyless records go to each partition in
    /// turn, `stint_bytes` at a time (1: one record at a time), starting at a random partition so
    /// that many producers do not all begin on partition 0.
    pub fn new(partitions: u32, stint_bytes: usize) -> Self {
        let start = if partitions == 0 {
            0
        } else {
            (weir_proto::random::u64() % u64::from(partitions)) as u32
        };
        Partitioner::starting_at(partitions, stint_bytes, start)
    }

    /// A partitioner whose keyless records start at partition `start`.
    pub fn starting_at(partitions: u32, stint_bytes: usize, start: u32) -> Self {
        Partitioner {
            partitions,
            sticky: if partitions == 0 {
                0
            } else {
                start % partitions
            },
            stint_bytes: stint_bytes.max(1),
            taken: 0,
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

    /// Counts a keyless record of `bytes` given to the sticky partition: once its stint is full,
    /// keyless records move on to the next partition.
    pub fn keyless_taken(&mut self, bytes: usize) {
        self.taken += bytes;
        if self.taken >= self.stint_bytes && self.partitions > 0 {
            self.sticky = (self.sticky + 1) % self.partitions;
            self.taken = 0;
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
        let p = Partitioner::starting_at(7, 100, 3);
        assert_eq!(p.partition(Some(b"hello")), 907_060_870 % 7);
    }

    #[test]
    fn a_key_always_maps_to_the_same_partition() {
        let mut p = Partitioner::new(16, 100);
        let first: Vec<u32> = (0..100)
            .map(|i| p.partition(Some(format!("user-{i}").as_bytes())))
            .collect();
        for _ in 0..16 {
            p.keyless_taken(100);
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
    fn keyless_records_stick_for_a_stint_of_bytes() {
        let mut p = Partitioner::starting_at(3, 1000, 1);
        let mut seen = Vec::new();
        for _ in 0..12 {
            let part = p.partition(None);
            seen.push(part);
            p.keyless_taken(400);
        }
        // 400 + 400 + 400 bytes fill a stint of 1000: three records each, in turn.
        assert_eq!(seen, vec![1, 1, 1, 2, 2, 2, 0, 0, 0, 1, 1, 1]);
        // A stint of one byte spreads record by record.
        let mut p = Partitioner::starting_at(3, 1, 2);
        let seen: Vec<u32> = (0..4)
            .map(|_| {
                let part = p.partition(None);
                p.keyless_taken(10);
                part
            })
            .collect();
        assert_eq!(seen, vec![2, 0, 1, 2]);
    }

    #[test]
    fn single_partition_topics_always_get_partition_zero() {
        let mut p = Partitioner::new(1, 1);
        assert_eq!(p.partition(None), 0);
        p.keyless_taken(10);
        assert_eq!(p.partition(None), 0);
        assert_eq!(p.partition(Some(b"any")), 0);
    }
}
