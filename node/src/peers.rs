//! gRPC channels to other nodes, one per address, shared by every group and service.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::{NodeError, NodeResult};

/// A cache of lazily connected channels by address.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<RwLock<HashMap<String, Channel>>>,
}

impl Peers {
    /// The channel to `addr` (`HOST:PORT`), created on first use.
    pub fn channel(&self, addr: &str) -> NodeResult<Channel> {
        if let Some(c) = self
            .channels
            .read()
            .map_err(|_| NodeError::Internal("peer cache poisoned".into()))?
            .get(addr)
        {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| NodeError::InvalidArgument(format!("bad peer address {addr}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20);
        let ch = ep.connect_lazy();
        self.channels
            .write()
            .map_err(|_| NodeError::Internal("peer cache poisoned".into()))?
            .insert(addr.to_string(), ch.clone());
        Ok(ch)
    }
}
