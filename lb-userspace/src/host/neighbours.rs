//! Neighbour (ARP/NDP) entries: the kernel's table dumped over rtnetlink (no `ip`
//! process: while MACs resolve it is read every 50 ms), and resolution provoked for the
//! addresses still missing.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Result;
use rtnetlink::packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    RouteNetlinkMessage,
};

use super::interfaces::dump;

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Every usable neighbour entry (both families): address -> MAC. One dump, however
/// many backends are looked up. Usable: an Ethernet address the kernel resolved or was
/// given (not an entry still resolving or failed, nor one of an interface without ARP),
/// as `ip neigh show` lists them.
pub fn neighbour_macs() -> Result<HashMap<IpAddr, [u8; 6]>> {
    let mut out = HashMap::new();
    for message in dump(RouteNetlinkMessage::GetNeighbour(
        NeighbourMessage::default(),
    ))? {
        if let RouteNetlinkMessage::NewNeighbour(n) = message {
            if let Some((addr, mac)) = usable_entry(&n) {
                out.entry(addr).or_insert(mac);
            }
        }
    }
    Ok(out)
}

/// A neighbour entry's address and MAC, if it is usable (see [`neighbour_macs`]).
fn usable_entry(n: &NeighbourMessage) -> Option<(IpAddr, [u8; 6])> {
    if matches!(
        n.header.state,
        NeighbourState::Incomplete
            | NeighbourState::Failed
            | NeighbourState::Noarp
            | NeighbourState::None
    ) {
        return None;
    }
    let (mut addr, mut mac) = (None, None);
    for attr in &n.attributes {
        match attr {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                addr = Some(IpAddr::V4(*a))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                addr = Some(IpAddr::V6(*a))
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                mac = <[u8; 6]>::try_from(&bytes[..]).ok()
            }
            _ => {}
        }
    }
    Some((addr?, mac?))
}

/// Makes the kernel resolve `addr`'s neighbour entry: one empty UDP datagram to the
/// discard port. The datagram itself is harmless; the ARP/NDP exchange is the point.
pub fn provoke_resolution(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], (addr, 9));
    }
}

/// Resolves the MACs of `addrs`, provoking resolution for the missing ones and waiting at
/// most `wait`. Returns what was found; the caller decides what a missing MAC means.
pub fn resolve_macs(addrs: &[IpAddr], wait: Duration) -> Result<Vec<(IpAddr, [u8; 6])>> {
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut missing: Vec<IpAddr> = addrs.to_vec();
    let mut provoked = false;
    loop {
        let table = neighbour_macs()?;
        missing.retain(|a| match table.get(a) {
            Some(mac) => {
                found.push((*a, *mac));
                false
            }
            None => true,
        });
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        if !provoked {
            missing.iter().for_each(|&a| provoke_resolution(a));
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
