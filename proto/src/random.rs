//! Where Weir draws random identifiers (producer ids, group member ids, partitions for keyless
//! records) and Raft's timeouts come from: the operating system's entropy in a node or client, or
//! one seeded generator for everything running on a simulation's thread, so that a simulated run
//! replays exactly from its seed.

use std::cell::RefCell;

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    /// The seeded generator of a simulation running on this thread; None elsewhere.
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// Makes every later draw on this thread come from a generator seeded with `seed` (None goes
/// back to the operating system's entropy).
pub fn seed_this_thread(seed: Option<u64>) {
    SEEDED.with(|s| *s.borrow_mut() = seed.map(StdRng::seed_from_u64));
}

/// The next draw of this thread's seeded generator, or None when the thread is not seeded.
pub fn seeded_u64() -> Option<u64> {
    SEEDED.with(|s| s.borrow_mut().as_mut().map(|r| r.next_u64()))
}

/// A random number: seeded on a simulation's thread, from the operating system's entropy
/// elsewhere.
pub fn u64() -> u64 {
    seeded_u64().unwrap_or_else(rand::random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        seed_this_thread(Some(7));
        let first: Vec<u64> = (0..4).map(|_| u64()).collect();
        seed_this_thread(Some(7));
        let again: Vec<u64> = (0..4).map(|_| u64()).collect();
        seed_this_thread(None);
        assert_eq!(first, again);
        assert!(seeded_u64().is_none());
    }
}
