//! Channels to the nodes of the cluster: one per address, created on first use and shared by every
//! request to that node.
//!
//! The pool also remembers every node address it has heard of (the seed, partition leaders, cluster
//! members) and which of them failed recently, so that metadata requests move on to a live node when
//! the seed itself is down.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::error::ClientError;

/// How long a node that failed is avoided when another choice exists.
const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// Makes the channel for a configured endpoint (for example over a simulated network): the
/// transport under every call of a [`crate::Client`].
#[derive(Clone)]
pub struct Connector(
    pub  std::sync::Arc<
        dyn Fn(&tonic::transport::Endpoint) -> tonic::transport::Channel + Send + Sync,
    >,
);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

/// Shared channels by address, plus what is known about which nodes are alive.
#[derive(Debug)]
pub(crate) struct Pool {
    connect_timeout: Duration,
    connector: Option<Connector>,
    channels: Mutex<BTreeMap<String, Channel>>,
    /// Known node addresses, the seed first.
    known: Mutex<Vec<String>>,
    /// When each recently failed address failed.
    suspects: Mutex<BTreeMap<String, Instant>>,
}

impl Pool {
    /// A pool that knows only the seed.
    pub(crate) fn new(seed: &str, connect_timeout: Duration, connector: Option<Connector>) -> Self {
        Pool {
            connect_timeout,
            connector,
            channels: Mutex::new(BTreeMap::new()),
            known: Mutex::new(vec![seed.to_string()]),
            suspects: Mutex::new(BTreeMap::new()),
        }
    }

    /// The channel to `addr`, created lazily: the connection is made by the first request and
    /// re-made by tonic after it breaks.
    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut channels = lock(&self.channels);
        if let Some(ch) = channels.get(addr) {
            return Ok(ch.clone());
        }
        let endpoint = endpoint(addr)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A node that vanishes without closing its sockets is noticed within seconds.
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .http2_adaptive_window(true);
        let channel = match &self.connector {
            Some(connect) => (connect.0)(&endpoint),
            None => endpoint.connect_lazy(),
        };
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// Adds a node address to the set used when no leader is known.
    pub(crate) fn learn(&self, addr: &str) {
        if addr.is_empty() {
            return;
        }
        let mut known = lock(&self.known);
        if !known.iter().any(|a| a == addr) {
            known.push(addr.to_string());
        }
    }

    /// Notes that a request to `addr` just failed for a transport reason.
    pub(crate) fn suspect(&self, addr: &str) {
        lock(&self.suspects).insert(addr.to_string(), Instant::now());
    }

    /// True when `addr` failed within the last couple of seconds.
    pub(crate) fn is_suspect(&self, addr: &str) -> bool {
        let mut suspects = lock(&self.suspects);
        match suspects.get(addr) {
            Some(at) if at.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(addr);
                false
            }
            None => false,
        }
    }

    /// A node to send a request to that any node can answer: the seed unless it failed recently,
    /// else the first known node that did not; when all failed, the one that failed longest ago.
    pub(crate) fn any_node(&self) -> String {
        let known = lock(&self.known).clone();
        if let Some(addr) = known.iter().find(|a| !self.is_suspect(a)) {
            return addr.clone();
        }
        let suspects = lock(&self.suspects);
        known
            .iter()
            .min_by_key(|a| suspects.get(*a).copied())
            .cloned()
            .unwrap_or_default()
    }
}

/// Builds the endpoint for `HOST:PORT` (a leading `http://` is accepted too).
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    if rest.is_empty() {
        return Err(invalid("expected HOST:PORT"));
    }
    if rest.starts_with("https://") || rest.contains('/') {
        return Err(invalid(
            "expected HOST:PORT (TLS and paths are not supported)",
        ));
    }
    match rest.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(invalid("expected HOST:PORT with a numeric port")),
    }
    Endpoint::from_shared(format!("http://{rest}")).map_err(|e| invalid(&e.to_string()))
}

/// Strips the scheme so the same node is cached under one key.
pub(crate) fn normalize(addr: &str) -> String {
    addr.trim()
        .strip_prefix("http://")
        .unwrap_or(addr.trim())
        .to_string()
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the maps hold no
/// invariants a half-finished update could break.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_validated() {
        assert!(endpoint("127.0.0.1:7400").is_ok());
        assert!(endpoint("http://node-1:7400").is_ok());
        assert!(endpoint("[::1]:7400").is_ok());
        for bad in [
            "",
            "node-1",
            "node-1:http",
            ":7400",
            "https://node:7400",
            "n:7400/x",
        ] {
            assert!(
                matches!(endpoint(bad), Err(ClientError::InvalidAddress { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn failed_nodes_are_avoided_while_another_is_known() {
        let pool = Pool::new("seed:1", Duration::from_secs(1), None);
        assert_eq!(pool.any_node(), "seed:1");
        pool.learn("other:2");
        pool.learn("other:2");
        pool.suspect("seed:1");
        assert_eq!(pool.any_node(), "other:2");
        pool.suspect("other:2");
        // Both failed: fall back to the one that failed first.
        assert_eq!(pool.any_node(), "seed:1");
    }

    #[test]
    fn scheme_is_stripped_for_cache_keys() {
        assert_eq!(normalize(" http://a:1 "), "a:1");
        assert_eq!(normalize("a:1"), "a:1");
    }
}
