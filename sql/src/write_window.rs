//! The writes of one `INSERT` kept in flight together: while some requests are on their way to
//! the regions, the statement computes and encodes the next ones. Requests that share a key are
//! never in flight together, so a key given twice in one statement keeps its last row, as if
//! the requests had been sent one after another.

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;

use datafusion::error::Result;
use foldhash::fast::{FixedState, RandomState};
use futures::future::{FutureExt, RemoteHandle};

/// Hashes of the keys one write writes (two keys may share a hash: such writes merely wait for
/// each other).
pub struct WriteKeys(HashSet<u64, FixedState>);

/// Writes in flight, oldest first, each with the hashes of the keys it writes.
pub struct WriteWindow {
    limit: usize,
    hasher: RandomState,
    in_flight: VecDeque<(WriteKeys, RemoteHandle<Result<u64>>)>,
    done: u64,
}

impl WriteWindow {
    /// A window of at most `limit` writes in flight (at least one).
    pub fn new(limit: usize) -> WriteWindow {
        WriteWindow {
            limit: limit.max(1),
            hasher: RandomState::default(),
            in_flight: VecDeque::new(),
            done: 0,
        }
    }

    /// The keys of a write, as [`WriteWindow::send`] takes them.
    pub fn keys<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> WriteKeys {
        WriteKeys(keys.map(|k| self.hasher.hash_one(k)).collect())
    }

    /// Starts `write` (which writes the rows with `keys`) on its own task once the window has
    /// room and no write in flight shares a key with it; waits for the older writes that stand
    /// in the way, and answers the first error any of them met.
    pub async fn send(
        &mut self,
        keys: WriteKeys,
        write: impl Future<Output = Result<u64>> + Send + 'static,
    ) -> Result<()> {
        // The newest write that shares a key must be done first; all older ones go with it, so
        // the writes in flight stay in the order they were sent.
        let must_finish = self
            .in_flight
            .iter()
            .rposition(|(other, _)| !other.0.is_disjoint(&keys.0))
            .map_or(0, |i| i + 1);
        let must_finish = must_finish.max((self.in_flight.len() + 1).saturating_sub(self.limit));
        for _ in 0..must_finish {
            self.finish_oldest().await?;
        }
        let (write, handle) = write.remote_handle();
        tokio::spawn(write);
        self.in_flight.push_back((keys, handle));
        Ok(())
    }

    /// Waits for every write in flight; answers the rows they all wrote.
    pub async fn finish(mut self) -> Result<u64> {
        while !self.in_flight.is_empty() {
            self.finish_oldest().await?;
        }
        Ok(self.done)
    }

    async fn finish_oldest(&mut self) -> Result<()> {
        if let Some((_, handle)) = self.in_flight.pop_front() {
            self.done += handle.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use datafusion::error::DataFusionError;
    use tokio::sync::oneshot;

    use super::*;

    /// A write that records when it starts and ends, and ends only when released.
    fn gated(
        log: &Arc<Mutex<Vec<String>>>,
        name: &'static str,
        rows: u64,
    ) -> (
        impl Future<Output = Result<u64>> + Send + 'static,
        oneshot::Sender<Result<()>>,
    ) {
        let (release, released) = oneshot::channel::<Result<()>>();
        let log = Arc::clone(log);
        let write = async move {
            log.lock().unwrap().push(format!("{name} starts"));
            let outcome = released.await.unwrap_or(Ok(()));
            log.lock().unwrap().push(format!("{name} ends"));
            outcome.map(|()| rows)
        };
        (write, release)
    }

    /// Lets every task that can run do so (the tests run on one thread).
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn started(log: &Arc<Mutex<Vec<String>>>, entry: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !log.lock().unwrap().iter().any(|e| e == entry) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{entry} never logged"
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_write_sharing_a_key_waits_for_the_one_before_and_others_do_not() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut window = WriteWindow::new(4);
        let (first, release_first) = gated(&log, "first", 2);
        let keys = window.keys([b"a".as_slice(), b"b"].into_iter());
        window.send(keys, first).await.unwrap();
        let (second, release_second) = gated(&log, "second", 1);
        let keys = window.keys([b"c".as_slice()].into_iter());
        window.send(keys, second).await.unwrap();
        started(&log, "first starts").await;
        started(&log, "second starts").await;

        // "b" is being written by the first write: the third starts only after it ended.
        let (third, release_third) = gated(&log, "third", 1);
        let keys = window.keys([b"b".as_slice()].into_iter());
        let sending = tokio::spawn(async move {
            window.send(keys, third).await.unwrap();
            window
        });
        settle().await;
        assert!(!log.lock().unwrap().iter().any(|e| e == "third starts"));
        release_first.send(Ok(())).unwrap();
        let window = sending.await.unwrap();
        started(&log, "third starts").await;
        release_second.send(Ok(())).unwrap();
        release_third.send(Ok(())).unwrap();
        assert_eq!(window.finish().await.unwrap(), 4);
        let log = log.lock().unwrap();
        let at = |e: &str| log.iter().position(|x| x == e).unwrap();
        assert!(at("first ends") < at("third starts"), "{log:?}");
    }

    #[tokio::test]
    async fn no_more_than_the_limit_is_in_flight() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut window = WriteWindow::new(1);
        let (first, release_first) = gated(&log, "first", 1);
        let keys = window.keys([b"a".as_slice()].into_iter());
        window.send(keys, first).await.unwrap();
        let (second, release_second) = gated(&log, "second", 1);
        let keys = window.keys([b"z".as_slice()].into_iter());
        let sending = tokio::spawn(async move {
            window.send(keys, second).await.unwrap();
            window
        });
        started(&log, "first starts").await;
        settle().await;
        assert!(!log.lock().unwrap().iter().any(|e| e == "second starts"));
        release_first.send(Ok(())).unwrap();
        let window = sending.await.unwrap();
        release_second.send(Ok(())).unwrap();
        assert_eq!(window.finish().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_failed_write_fails_the_statement() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut window = WriteWindow::new(4);
        let (first, release_first) = gated(&log, "first", 1);
        let keys = window.keys([b"a".as_slice()].into_iter());
        window.send(keys, first).await.unwrap();
        release_first
            .send(Err(DataFusionError::Execution("region unavailable".into())))
            .unwrap();
        let err = window.finish().await.unwrap_err();
        assert!(err.to_string().contains("region unavailable"), "{err}");
    }
}
