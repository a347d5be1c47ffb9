//! `[edge]`: what a client may do before it reaches any room, in the host's
//! own manifest (ignored in a deployed one). Every field has a default; the
//! README's "At the edge" section explains each.

use serde::Deserialize;
use std::time::Duration;

/// `[edge]` as written: each field set overrides the default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Milliseconds a client has to send a request's headers (and finish a
    /// TLS handshake); also how long an idle keep-alive connection stays.
    pub header_timeout_ms: Option<u64>,
    /// Milliseconds for a whole HTTP request, body and answer included.
    pub request_timeout_ms: Option<u64>,
    /// The same for the admin API (an upload, then a compile).
    pub deploy_timeout_ms: Option<u64>,
    /// Milliseconds a write to a client may stay blocked before the
    /// connection is dropped (a client that stops reading).
    pub write_timeout_ms: Option<u64>,
    /// Connections open at once, WebSockets included.
    pub max_connections: Option<usize>,
    /// Connections open at once from one client address (IPv6: one /64).
    pub max_connections_per_ip: Option<usize>,
    /// Milliseconds between WebSocket pings from the host.
    pub ping_interval_ms: Option<u64>,
    /// Milliseconds a WebSocket may stay silent (not even a pong) before
    /// the host drops it; at least twice `ping_interval_ms`.
    pub socket_idle_timeout_ms: Option<u64>,
}

/// `[edge]` with every default applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeLimits {
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub deploy_timeout: Duration,
    pub write_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub ping_interval: Duration,
    pub socket_idle_timeout: Duration,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        EdgeSpec::default().resolve()
    }
}

impl EdgeSpec {
    /// The defaults under what is set.
    pub fn resolve(&self) -> EdgeLimits {
        let ms = |value: Option<u64>, default: u64| Duration::from_millis(value.unwrap_or(default));
        // A zero interval would be a busy loop (and tokio refuses it).
        let ping_interval = ms(self.ping_interval_ms, 30_000).max(Duration::from_millis(10));
        EdgeLimits {
            header_timeout: ms(self.header_timeout_ms, 10_000),
            request_timeout: ms(self.request_timeout_ms, 60_000),
            deploy_timeout: ms(self.deploy_timeout_ms, 300_000),
            write_timeout: ms(self.write_timeout_ms, 10_000),
            max_connections: self.max_connections.unwrap_or(10_000).max(1),
            max_connections_per_ip: self.max_connections_per_ip.unwrap_or(256).max(1),
            ping_interval,
            // At least one ping must have had time to be answered.
            socket_idle_timeout: ms(self.socket_idle_timeout_ms, 75_000).max(ping_interval * 2),
        }
    }
}
