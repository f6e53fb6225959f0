//! Announcing the virtual addresses after a takeover, so that neighbours' ARP / NDP caches
//! point at the new master at once instead of when their entries expire.
//!
//! IPv4: a gratuitous ARP request (RFC 5227's announcement: sender and target protocol
//! address both the VIP, target hardware address zero) broadcast through an AF_PACKET
//! socket; Linux neighbours override an existing entry with it even within their lock time.
//! IPv6: an unsolicited Neighbour Advertisement (RFC 4861 7.2.6) to all-nodes with the
//! Override flag and the Target Link-Layer Address option, hop limit 255, from the link-local
//! address the kernel picks; the kernel computes the ICMPv6 checksum.

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
};

use lb_common::icmp::NEIGHBOUR_ADVERTISEMENT_V6;

use super::socket::{new_socket, send_to, set_int, set_opt, sockaddr_v6};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const NA_FLAG_OVERRIDE: u8 = 0x20;
const OPTION_TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Linux's ICMP6_FILTER socket option (level IPPROTO_ICMPV6).
const ICMP6_FILTER: i32 = 1;

/// The Ethernet frame of a gratuitous ARP for `addr` from `mac`.
pub fn arp_announcement(mac: [u8; 6], addr: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet / IPv4, 6-byte and 4-byte addresses, request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&addr.octets());
    // Target hardware address stays zero.
    f[38..42].copy_from_slice(&addr.octets());
    f
}

/// The ICMPv6 message of an unsolicited neighbour advertisement for `target` at `mac`
/// (checksum left zero for the kernel).
pub fn neighbour_advertisement(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = NEIGHBOUR_ADVERTISEMENT_V6;
    m[4] = NA_FLAG_OVERRIDE;
    m[8..24].copy_from_slice(&target.octets());
    m[24] = OPTION_TARGET_LINK_LAYER_ADDRESS;
    m[25] = 1; // in units of 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends announcements out of one interface for one address family.
pub struct Announcer {
    fd: OwnedFd,
    ifindex: u32,
    mac: [u8; 6],
    v6: bool,
}

impl Announcer {
    pub fn open(ifindex: u32, mac: [u8; 6], v6: bool) -> io::Result<Announcer> {
        let fd = if v6 {
            let fd = new_socket(libc::AF_INET6, libc::IPPROTO_ICMPV6)?;
            let raw = fd.as_raw_fd();
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255)?;
            set_int(
                raw,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_IF,
                ifindex as i32,
            )?;
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
            // Send only: block every ICMPv6 type so nothing queues up on this socket.
            let block_all = [u32::MAX; 8];
            set_opt(raw, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &block_all)?;
            fd
        } else {
            // Protocol 0: this packet socket receives nothing.
            new_socket(libc::AF_PACKET, 0)?
        };
        Ok(Announcer {
            fd,
            ifindex,
            mac,
            v6,
        })
    }

    /// Announces `addr` once (addresses of the other family are skipped).
    pub fn announce(&self, addr: IpAddr) -> io::Result<()> {
        let raw = self.fd.as_raw_fd();
        match (addr, self.v6) {
            (IpAddr::V4(a), false) => {
                let frame = arp_announcement(self.mac, a);
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut to: libc::sockaddr_ll = unsafe { mem::zeroed() };
                to.sll_family = libc::AF_PACKET as u16;
                to.sll_protocol = ETH_P_ARP.to_be();
                to.sll_ifindex = self.ifindex as i32;
                to.sll_halen = 6;
                to.sll_addr[..6].copy_from_slice(&BROADCAST);
                send_to(raw, &frame, &to)
            }
            (IpAddr::V6(a), true) => {
                let message = neighbour_advertisement(self.mac, a);
                let mut to = sockaddr_v6(ALL_NODES);
                to.sin6_scope_id = self.ifindex;
                send_to(raw, &message, &to)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x2a];

    #[test]
    fn gratuitous_arp_is_an_announcement() {
        let f = arp_announcement(MAC, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&f[..6], &[0xff; 6], "broadcast");
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &MAC, "sender MAC");
        assert_eq!(&f[28..32], &[10, 0, 0, 100], "sender IP");
        assert_eq!(&f[32..38], &[0; 6], "target MAC");
        assert_eq!(&f[38..42], &[10, 0, 0, 100], "target IP = sender IP");
    }

    #[test]
    fn unsolicited_na_overrides_with_the_link_layer_address() {
        let target: Ipv6Addr = "fd00::100".parse().unwrap();
        let m = neighbour_advertisement(MAC, target);
        assert_eq!(m[0], 136);
        assert_eq!(m[4], 0x20, "override, not solicited, not router");
        assert_eq!(&m[8..24], &target.octets());
        assert_eq!(&m[24..26], &[2, 1]);
        assert_eq!(&m[26..], &MAC);
    }
}
