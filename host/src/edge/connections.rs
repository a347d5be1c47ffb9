//! How many connections are open, in all and per client address. A
//! connection holds a [`Slot`] from accept until its socket is dropped, so
//! a WebSocket counts for as long as it is open.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Why a connection was refused; the text is the 503's body.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("this host is at its cap of {0} open connections ([edge] max_connections); try again later")]
    Total(usize),
    #[error(
        "this host is at its cap of {0} open connections per client address ([edge] max_connections_per_ip); close some first"
    )]
    PerAddress(usize),
}

pub(super) struct Connections {
    max_total: usize,
    max_per_address: usize,
    open: Arc<Mutex<Open>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

impl Connections {
    pub(super) fn new(max_total: usize, max_per_address: usize) -> Self {
        Self { max_total, max_per_address, open: Arc::default() }
    }

    /// A slot for a connection from `peer`, unless a cap is reached.
    pub(super) fn admit(&self, peer: IpAddr) -> Result<Slot, Refusal> {
        let address = client_address(peer);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let from_address = open.by_address.entry(address).or_default();
        if *from_address >= self.max_per_address {
            return Err(Refusal::PerAddress(self.max_per_address));
        }
        *from_address += 1;
        open.total += 1;
        Ok(Slot { address, open: self.open.clone() })
    }
}

/// One open connection, counted until dropped.
pub(super) struct Slot {
    address: IpAddr,
    open: Arc<Mutex<Open>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total -= 1;
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

/// The address a cap counts: IPv4 as is (and IPv4 mapped into IPv6), IPv6
/// by its /64, since one client is routinely given a whole /64.
fn client_address(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let connections = Connections::new(10, 2);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let first = connections.admit(a);
        let second = connections.admit(b);
        assert!(first.is_ok() && second.is_ok());
        assert!(matches!(connections.admit(a), Err(Refusal::PerAddress(2))), "a third from the same /64");
        assert!(connections.admit(other).is_ok(), "another /64 is another client");
        drop(first);
        assert!(connections.admit(b).is_ok(), "a closed connection gives its slot back");
    }
}
