//! gRPC channels to other nodes, shared by every group and service: one connection per address
//! and [`Lane`], so a heartbeat or a vote never waits behind megabytes of log entries or a
//! snapshot on the same HTTP/2 connection (its flow-control window and its write queue).
//!
//! Connections are made by tokio's TCP by default; a simulation hands in its own connector
//! ([`Peers::with_connector`]) so the same Raft transport runs over a simulated network.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::transport::{Channel, Endpoint, Uri};
use tower::ServiceExt;

use crate::error::{NodeError, NodeResult};

/// Turns a configured endpoint into a lazily connected channel; erases the connector's type so
/// that `Peers` stays one concrete, cloneable type whatever network it runs on.
type Connect = Arc<dyn Fn(&Endpoint) -> Channel + Send + Sync>;

/// Makes lazily connected channels whose connections `connector` opens (a byte stream to a
/// `http://HOST:PORT` URI): how nodes, and clients in a simulation, reach a simulated network.
pub fn channel_maker<C, S>(connector: C) -> Arc<dyn Fn(&Endpoint) -> Channel + Send + Sync>
where
    C: tower::Service<Uri, Response = S> + Clone + Send + Sync + 'static,
    C::Future: Send,
    Box<dyn std::error::Error + Send + Sync>: From<C::Error>,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    Arc::new(move |ep: &Endpoint| {
        ep.connect_with_connector_lazy(connector.clone().map_response(TokioIo::new))
    })
}

/// What a connection to a peer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Requests forwarded to a leader, and cluster calls.
    Requests,
    /// Small, latency-critical Raft traffic: heartbeats, (pre-)votes, liveness probes.
    Control,
    /// Raft log entries being replicated.
    Replication,
    /// Snapshots being sent.
    Snapshots,
}

/// A cache of lazily connected channels by address and lane.
#[derive(Clone)]
pub struct Peers {
    channels: Arc<RwLock<BTreeMap<(String, Lane), Channel>>>,
    connect: Connect,
}

impl Default for Peers {
    /// Peers reached over tokio TCP.
    fn default() -> Peers {
        Peers::from_connect(Arc::new(|ep: &Endpoint| ep.connect_lazy()))
    }
}

impl Peers {
    /// Peers reached through `connector`, which opens a byte stream to a `http://HOST:PORT` URI
    /// (for example over a simulated network instead of the OS's TCP).
    pub fn with_connector<C, S>(connector: C) -> Peers
    where
        C: tower::Service<Uri, Response = S> + Clone + Send + Sync + 'static,
        C::Future: Send,
        Box<dyn std::error::Error + Send + Sync>: From<C::Error>,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Peers::from_connect(channel_maker(connector))
    }

    fn from_connect(connect: Connect) -> Peers {
        Peers {
            channels: Arc::default(),
            connect,
        }
    }

    /// The channel for requests and cluster calls to `addr` (`HOST:PORT`), created on first use.
    pub fn channel(&self, addr: &str) -> NodeResult<Channel> {
        self.lane(addr, Lane::Requests)
    }

    /// The channel to `addr` (`HOST:PORT`) for the traffic of `lane`, created on first use.
    pub fn lane(&self, addr: &str, lane: Lane) -> NodeResult<Channel> {
        let key = (addr.to_string(), lane);
        if let Some(c) = self
            .channels
            .read()
            .map_err(|_| NodeError::Internal("peer cache poisoned".into()))?
            .get(&key)
        {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| NodeError::InvalidArgument(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A connection whose peer vanished, or whose packets a network dropped for good,
            // must be noticed even when no call is waiting on it: otherwise every call that is
            // given up before the keep-alive would fire (a forwarded request whose client timed
            // out) leaves it idle, and the next call hangs on it again.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        let ch = (self.connect)(&ep);
        self.channels
            .write()
            .map_err(|_| NodeError::Internal("peer cache poisoned".into()))?
            .insert(key, ch.clone());
        Ok(ch)
    }
}
