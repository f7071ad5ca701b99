//! The async runtime Raft groups run on: tokio, with election-timeout randomness a simulation can
//! seed.
//!
//! openraft draws election timeouts and tick offsets from its runtime's `thread_rng`. A node draws
//! them from the operating system's entropy; a simulation that runs every node on one thread calls
//! [`weir_proto::random::seed_this_thread`] first, and every draw then comes from one seeded generator, so a run
//! replays exactly from its seed.

use std::future::Future;
use std::io;
use std::time::Duration;

use openraft::rt::{AsyncRuntime, OptionalSend, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand_raft::rngs::SmallRng;
use rand_raft::SeedableRng;

/// A number drawn uniformly from `[lo, hi)` out of the same randomness as Raft's timeouts (seeded
/// in a simulation): for jitter in the node's own timers.
pub fn jitter(lo: f64, hi: f64) -> f64 {
    let unit = (weir_proto::random::u64() >> 11) as f64 / (1u64 << 53) as f64;
    lo + (hi - lo) * unit
}

/// tokio, as openraft's `TokioRuntime` drives it, with [`weir_proto::random`]'s randomness.
#[derive(Debug)]
pub struct WeirRuntime {
    inner: TokioRuntime,
}

impl AsyncRuntime for WeirRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F>(duration: Duration, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match weir_proto::random::seeded_u64() {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => rand_raft::make_rng(),
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        WeirRuntime {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_raft::Rng;
    use weir_proto::random::seed_this_thread;

    fn draws() -> Vec<u64> {
        (0..4)
            .map(|_| WeirRuntime::thread_rng().next_u64())
            .collect()
    }

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        seed_this_thread(Some(42));
        let first = draws();
        seed_this_thread(Some(42));
        assert_eq!(draws(), first);
        seed_this_thread(Some(43));
        assert_ne!(draws(), first);
        seed_this_thread(None);
        assert_ne!(draws(), first);
    }
}
