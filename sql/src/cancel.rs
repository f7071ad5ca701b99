//! Stopping a statement before it ends: when its client asks (psql's Ctrl-C sends a Postgres
//! cancel request; a gRPC client drops its stream) or when it runs past its timeout (the node's
//! `--sql-timeout`, or the session's `SET statement_timeout`).
//!
//! A statement is stopped by dropping what runs it: the futures and streams of its plan, and with
//! them the scans they opened on other nodes. What stops it is a [`Stop`], made when the
//! statement starts; the statement's future runs under [`Stop::run`] and its rows stream through
//! [`Stop::guard`], so a query stopped while it streams rows ends with the error too, not only
//! one stopped while it plans.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a statement stopped, in Postgres's words (its SQLSTATE is 57014, `query_canceled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The client cancelled it.
    Cancelled,
    /// It ran longer than its timeout.
    TimedOut(Duration),
}

impl Stopped {
    /// What the client is told.
    pub fn message(self) -> String {
        match self {
            Stopped::Cancelled => "canceling statement due to user request".into(),
            Stopped::TimedOut(t) => format!(
                "canceling statement due to statement timeout ({})",
                humanize(t)
            ),
        }
    }
}

fn humanize(t: Duration) -> String {
    if t.subsec_millis() == 0 {
        format!("{} s", t.as_secs())
    } else {
        format!("{} ms", t.as_millis())
    }
}

/// What stops one statement: a cancel signal from its client (if it can send one) and a deadline
/// (if it has a timeout).
#[derive(Debug, Clone)]
pub struct Stop {
    cancel: Option<watch::Receiver<u64>>,
    deadline: Option<(Instant, Duration)>,
}

impl Stop {
    /// A statement starting now that stops after `timeout` (none: never), or when `cancel`
    /// changes (a cancel sent before now does not count).
    pub fn new(timeout: Option<Duration>, cancel: Option<watch::Receiver<u64>>) -> Stop {
        let cancel = cancel.map(|mut rx| {
            rx.borrow_and_update();
            rx
        });
        Stop {
            cancel,
            deadline: timeout
                .filter(|t| !t.is_zero())
                .map(|t| (Instant::now() + t, t)),
        }
    }

    /// Resolves when the statement must stop, saying why; never, if nothing can stop it.
    pub async fn stopped(&mut self) -> Stopped {
        let deadline = self.deadline;
        let timed_out = async move {
            match deadline {
                Some((at, t)) => {
                    tokio::time::sleep_until(at).await;
                    Stopped::TimedOut(t)
                }
                None => std::future::pending().await,
            }
        };
        let cancelled = async {
            match &mut self.cancel {
                // A sender that went away (the connection closed) cancels nothing more.
                Some(rx) => match rx.changed().await {
                    Ok(()) => Stopped::Cancelled,
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = timed_out => s,
            s = cancelled => s,
        }
    }

    /// Runs `work` until it ends or the statement must stop (then `work` is dropped).
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> Result<T, Stopped> {
        let mut stop = self.clone();
        tokio::select! {
            out = work => Ok(out),
            why = stop.stopped() => Err(why),
        }
    }

    /// `rows` until they end or the statement must stop; then one last item, the error `stopped`
    /// makes, and the end (the stream under it is dropped).
    pub fn guard<S, T, E>(&self, rows: S, stopped: fn(Stopped) -> E) -> Guarded<S, E>
    where
        S: Stream<Item = Result<T, E>>,
    {
        let mut stop = self.clone();
        Guarded {
            rows: Some(rows),
            stop: Box::pin(async move { stop.stopped().await }),
            stopped,
        }
    }
}

/// A stream of rows that ends with an error once its statement must stop.
pub struct Guarded<S, E> {
    rows: Option<S>,
    stop: Pin<Box<dyn Future<Output = Stopped> + Send>>,
    stopped: fn(Stopped) -> E,
}

impl<S, T, E> Stream for Guarded<S, E>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.rows.is_none() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(why) = self.stop.poll_unpin(cx) {
            self.rows = None;
            return Poll::Ready(Some(Err((self.stopped)(why))));
        }
        match self.rows.as_mut().map(|r| Pin::new(r).poll_next(cx)) {
            Some(Poll::Ready(None)) | None => {
                self.rows = None;
                Poll::Ready(None)
            }
            Some(other) => other,
        }
    }
}

/// The connections that can be cancelled, by the key each was given when it opened (Postgres's
/// process id and secret key): a cancel request names one and bumps its counter.
#[derive(Debug, Default)]
pub struct Cancels {
    open: Mutex<HashMap<(i32, Bytes), watch::Sender<u64>>>,
}

/// A connection's place among the [`Cancels`]: what its statements watch, and its removal when
/// the connection ends (on drop).
#[derive(Debug)]
pub struct Registration {
    cancels: Arc<Cancels>,
    key: (i32, Bytes),
    rx: watch::Receiver<u64>,
}

impl Registration {
    /// What a statement of this connection watches for a cancel.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.rx.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancels
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Cancels {
    /// Records a connection opened with `key`.
    pub fn register(self: &Arc<Self>, key: (i32, Bytes)) -> Registration {
        let (tx, rx) = watch::channel(0);
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone(), tx);
        Registration {
            cancels: self.clone(),
            key,
            rx,
        }
    }

    /// Cancels the statement running on the connection opened with `key`, if there is one;
    /// returns whether such a connection is open.
    pub fn cancel(&self, key: &(i32, Bytes)) -> bool {
        match self.open.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            Some(tx) => {
                tx.send_modify(|n| *n += 1);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_statement_stops_at_its_timeout_and_streams_end_with_the_error() {
        let stop = Stop::new(Some(Duration::from_secs(2)), None);
        let quick = stop.run(async { 7 }).await;
        assert_eq!(quick, Ok(7));
        let slow = stop.run(std::future::pending::<()>()).await;
        assert_eq!(slow, Err(Stopped::TimedOut(Duration::from_secs(2))));
        // Rows that never end are cut by the deadline, with the error as the last item.
        let stop = Stop::new(Some(Duration::from_millis(1500)), None);
        let rows =
            futures::stream::iter([Ok::<_, String>(1), Ok(2)]).chain(futures::stream::pending());
        let got: Vec<_> = stop.guard(rows, |why| why.message()).collect().await;
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[..2], [Ok(1), Ok(2)]);
        assert!(
            got[2]
                .as_ref()
                .is_err_and(|e| e.contains("statement timeout (1500 ms)")),
            "{got:?}"
        );
        // No timeout and nobody to cancel: nothing stops it.
        let never = Stop::new(None, None);
        let r = tokio::time::timeout(
            Duration::from_secs(3600),
            never.run(std::future::pending::<()>()),
        )
        .await;
        assert!(r.is_err(), "ran until the outer timeout");
    }

    #[tokio::test]
    async fn a_cancel_stops_the_statement_of_its_connection_only() {
        let cancels = Arc::new(Cancels::default());
        let mine = cancels.register((1, Bytes::from_static(b"k1")));
        let other = cancels.register((2, Bytes::from_static(b"k2")));
        // A cancel before the statement started does not stop it.
        assert!(cancels.cancel(&(1, Bytes::from_static(b"k1"))));
        let stop = Stop::new(None, Some(mine.watch()));
        let stop_other = Stop::new(None, Some(other.watch()));
        let running = tokio::spawn({
            let stop = stop.clone();
            async move { stop.run(std::future::pending::<()>()).await }
        });
        // A wrong secret cancels nothing.
        assert!(!cancels.cancel(&(1, Bytes::from_static(b"xx"))));
        assert!(cancels.cancel(&(1, Bytes::from_static(b"k1"))));
        assert_eq!(running.await.ok(), Some(Err(Stopped::Cancelled)));
        assert_eq!(stop_other.run(async { 1 }).await, Ok(1));
        // A closed connection is forgotten.
        drop(mine);
        assert!(!cancels.cancel(&(1, Bytes::from_static(b"k1"))));
        assert_eq!(
            Stopped::Cancelled.message(),
            "canceling statement due to user request"
        );
    }
}
