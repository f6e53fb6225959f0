//! The datapath under random and mutated frames, through BPF_PROG_TEST_RUN with the maps
//! programmed as `bascule run` programs them (every forwarding mode and scheduler of the
//! fixtures). Every frame the fixtures send is a seed; each is mutated (bit flips,
//! truncations, extensions, header fields set to edge values with or without their
//! checksums fixed, splices of another seed), and some frames are random from the start.
//! For each frame:
//!
//! - the verdict is never XDP_ABORTED (nor anything but DROP, PASS, TX, REDIRECT);
//! - a frame sent back out (TX, REDIRECT) parses, by this file's own decoder, and every
//!   checksum that was valid on the way in is valid on the way out (an outer header the
//!   datapath added always is): the datapath never breaks a packet it forwards;
//! - a well-formed frame that names no VIP and no backend anywhere goes to the kernel
//!   (XDP_PASS) byte for byte as it came.
//!
//! `BASCULE_FUZZ_FRAMES` sets the number of frames (default 100,000, about 15 s here),
//! `BASCULE_FUZZ_SEED` the seed (default: from the clock); the seed is printed, and a
//! failure names the frame's index and bytes, so that it can be replayed.

mod common;

use std::{
    net::IpAddr,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use common::{
    harness::*,
    packet::{eth, Frame, CLIENT_MAC, ETH_P_8021Q, LB_MAC},
};
use lb_common::icmp::{
    ECHO_REQUEST_V4, ECHO_REQUEST_V6, FRAG_NEEDED_CODE, PACKET_TOO_BIG_V6, UNREACHABLE_V4,
};

const XDP_ABORTED: u32 = 0;
const XDP_REDIRECT: u32 = 4;
const DEFAULT_FRAMES: usize = 100_000;
/// BPF_PROG_TEST_RUN refuses XDP input shorter than an Ethernet header (EINVAL), as no
/// driver delivers one.
const MIN_FRAME: usize = 14;

/// The services of both fixture files: `dr`, `tun` (4-in-4, 6-in-6, 4-in-6), `nat`,
/// `local`, per-backend forwarding, every scheduler, persistence.
const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: web4, vip: 10.112.0.100, port: 80, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
  - { name: dns4, vip: 10.112.0.100, port: 53, protocol: udp, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
  - { name: web6, vip: "fd00:112::100", port: 80, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: dns6, vip: "fd00:112::100", port: 53, protocol: udp, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: tun4, vip: 10.112.0.101, port: 0, forwarding: tun, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
  - { name: tun6, vip: "fd00:112::101", port: 80, forwarding: tun, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: tun46, vip: 10.112.0.102, port: 80, forwarding: tun, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: nat4, vip: 10.112.0.110, port: 80, forwarding: nat,
      backends: [{ address: 10.111.0.11, port: 8080 }, { address: 10.111.0.12, port: 8080 }] }
  - { name: nat4u, vip: 10.112.0.110, port: 53, protocol: udp, forwarding: nat,
      backends: [{ address: 10.111.0.11, port: 5353 }] }
  - { name: nat6, vip: "fd00:112::110", port: 80, forwarding: nat,
      backends: [{ address: "fd00:111::11", port: 8080 }] }
  - { name: nat6u, vip: "fd00:112::110", port: 53, protocol: udp, forwarding: nat,
      backends: [{ address: "fd00:111::11", port: 5353 }] }
  - { name: local, vip: 10.112.0.111, port: 80, forwarding: local, backends: [{ address: 10.111.0.2 }] }
  - { name: mixed, vip: 10.112.0.112, port: 80,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12, forwarding: tun }] }
  - { name: rr, vip: 10.112.0.120, port: 80, scheduler: rr,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: wlc, vip: 10.112.0.123, port: 80, scheduler: wlc,
      backends: [{ address: 10.111.0.11, weight: 1 }, { address: 10.111.0.12, weight: 2 }] }
  - { name: sh, vip: 10.112.0.126, port: 80, scheduler: sh,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: lblcr, vip: 10.112.0.129, port: 80, scheduler: lblcr,
      backends: [{ address: 10.111.0.11, weight: 2 }, { address: 10.111.0.12, weight: 2 }] }
  - { name: persist, vip: 10.112.0.130, port: 80, persistence: 300s,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
"#;

const CLIENT4: &str = "10.111.0.10";
const CLIENT6: &str = "fd00:111::10";

/// SplitMix64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

// ---------------------------------------------------------------------------------------
// An independent decoder: Ethernet, up to two VLAN tags, IPv4/IPv6 (extension headers,
// IP-in-IP), TCP/UDP/ICMP/ICMPv6 checksums. Written from the RFCs, sharing nothing with
// the datapath or the frame builder.

/// The one's-complement sum of `parts`, folded (0xffff over data holding its own valid
/// checksum).
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        // Every part but the last is even-sized here (headers, pseudo-headers).
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[derive(Debug)]
struct Decoded {
    /// Outermost first: `Some(checksum valid)` for IPv4 headers, `None` for IPv6.
    headers: Vec<Option<bool>>,
    /// The innermost transport checksum: `Some(valid)`, or `None` when it cannot be
    /// checked (a fragment, an unknown protocol, a UDP length that is not the packet's).
    l4: Option<bool>,
}

/// `Ok(None)`: not IP (ARP...). `Err`: IP that does not parse.
fn decode(frame: &[u8]) -> Result<Option<Decoded>, String> {
    if frame.len() < 14 {
        return Err(format!("{} bytes: no Ethernet header", frame.len()));
    }
    let mut ethertype = be16(frame, 12);
    let mut at = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if frame.len() < at + 4 {
            return Err("truncated VLAN tag".into());
        }
        ethertype = be16(frame, at + 2);
        at += 4;
    }
    let mut d = Decoded {
        headers: Vec::new(),
        l4: None,
    };
    match ethertype {
        0x0800 => ipv4(&frame[at..], &mut d, 0)?,
        0x86dd => ipv6(&frame[at..], &mut d, 0)?,
        _ => return Ok(None),
    }
    Ok(Some(d))
}

fn ipv4(p: &[u8], d: &mut Decoded, depth: usize) -> Result<(), String> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return Err(format!(
            "IPv4: {} bytes, version byte {:#x}",
            p.len(),
            p.first().copied().unwrap_or(0)
        ));
    }
    let ihl = usize::from(p[0] & 15) * 4;
    let total = usize::from(be16(p, 2));
    if ihl < 20 || total < ihl || total > p.len() {
        return Err(format!(
            "IPv4: header {ihl} bytes, total {total}, {} available",
            p.len()
        ));
    }
    d.headers.push(Some(ones_sum(&[&p[..ihl]]) == 0xffff));
    let body = &p[ihl..total];
    if be16(p, 6) & 0x3fff != 0 {
        // A fragment: the transport checksum covers the whole datagram. A first one
        // must hold the whole transport header (RFC 1858's tiny fragments are not).
        return first_fragment(be16(p, 6) & 0x1fff == 0, p[9], body);
    }
    let pseudo = |len: usize| {
        let mut h = p[12..20].to_vec();
        h.extend_from_slice(&[0, p[9]]);
        h.extend_from_slice(&(len as u16).to_be_bytes());
        h
    };
    upper(p[9], body, d, depth, Some(&pseudo(body.len())), true)
}

fn ipv6(p: &[u8], d: &mut Decoded, depth: usize) -> Result<(), String> {
    if p.len() < 40 || p[0] >> 4 != 6 {
        return Err(format!(
            "IPv6: {} bytes, version byte {:#x}",
            p.len(),
            p.first().copied().unwrap_or(0)
        ));
    }
    let payload = usize::from(be16(p, 4));
    if 40 + payload > p.len() {
        return Err(format!(
            "IPv6: payload {payload}, {} available",
            p.len() - 40
        ));
    }
    d.headers.push(None);
    let mut next = p[6];
    let mut body = &p[40..40 + payload];
    // Hop-by-hop, routing, destination options.
    while matches!(next, 0 | 43 | 60) {
        if body.len() < 8 {
            return Err("IPv6: truncated extension header".into());
        }
        let len = (usize::from(body[1]) + 1) * 8;
        if len > body.len() {
            return Err("IPv6: extension header past the payload".into());
        }
        next = body[0];
        body = &body[len..];
    }
    if next == 44 {
        if body.len() < 8 {
            return Err("IPv6: truncated fragment header".into());
        }
        return first_fragment(be16(body, 2) >> 3 == 0, body[0], &body[8..]);
    }
    let mut pseudo = p[8..40].to_vec();
    pseudo.extend_from_slice(&(body.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next]);
    upper(next, body, d, depth, Some(&pseudo), false)
}

/// A fragment's check: a first fragment holds its transport header whole.
fn first_fragment(first: bool, proto: u8, body: &[u8]) -> Result<(), String> {
    let header = match proto {
        6 => 20,
        17 | 1 | 58 => 8,
        _ => 0,
    };
    if first && body.len() < header {
        return Err(format!(
            "first fragment of {} bytes, protocol {proto}",
            body.len()
        ));
    }
    Ok(())
}

fn upper(
    proto: u8,
    body: &[u8],
    d: &mut Decoded,
    depth: usize,
    pseudo: Option<&[u8]>,
    v4: bool,
) -> Result<(), String> {
    let pseudo = pseudo.unwrap_or(&[]);
    d.l4 = match proto {
        4 | 41 if depth < 2 => {
            return if proto == 4 {
                ipv4(body, d, depth + 1)
            } else {
                ipv6(body, d, depth + 1)
            }
        }
        6 => {
            if body.len() < 20 {
                return Err(format!("TCP: {} bytes", body.len()));
            }
            Some(ones_sum(&[pseudo, body]) == 0xffff)
        }
        17 => {
            if body.len() < 8 {
                return Err(format!("UDP: {} bytes", body.len()));
            }
            if usize::from(be16(body, 4)) != body.len() {
                None
            } else if v4 && be16(body, 6) == 0 {
                Some(true)
            } else {
                Some(ones_sum(&[pseudo, body]) == 0xffff)
            }
        }
        1 if v4 => {
            if body.len() < 8 {
                return Err(format!("ICMP: {} bytes", body.len()));
            }
            Some(ones_sum(&[body]) == 0xffff)
        }
        58 if !v4 => {
            if body.len() < 8 {
                return Err(format!("ICMPv6: {} bytes", body.len()));
            }
            Some(ones_sum(&[pseudo, body]) == 0xffff)
        }
        _ => None,
    };
    Ok(())
}

/// Recomputes the outermost IPv4 header checksum and transport checksum of `frame`,
/// where its headers are whole (a mutation that changes a field and keeps the frame
/// consistent).
fn fix_checksums(frame: &mut [u8]) {
    let Some((at, ethertype)) = l3_start(frame) else {
        return;
    };
    let p = &mut frame[at..];
    let (l4_at, proto, end, pseudo) = match ethertype {
        0x0800 if p.len() >= 20 && p[0] >> 4 == 4 => {
            let ihl = usize::from(p[0] & 15) * 4;
            let total = usize::from(be16(p, 2)).min(p.len());
            if ihl < 20 || ihl > total {
                return;
            }
            p[10..12].fill(0);
            let sum = !ones_sum(&[&p[..ihl]]);
            p[10..12].copy_from_slice(&sum.to_be_bytes());
            if be16(p, 6) & 0x3fff != 0 {
                return;
            }
            let mut h = p[12..20].to_vec();
            h.extend_from_slice(&[0, p[9]]);
            h.extend_from_slice(&((total - ihl) as u16).to_be_bytes());
            (ihl, p[9], total, h)
        }
        0x86dd if p.len() >= 40 && p[0] >> 4 == 6 => {
            let end = (40 + usize::from(be16(p, 4))).min(p.len());
            let mut h = p[8..40].to_vec();
            h.extend_from_slice(&((end - 40) as u32).to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, p[6]]);
            (40, p[6], end, h)
        }
        _ => return,
    };
    let at = match proto {
        6 if end >= l4_at + 20 => 16,
        17 if end >= l4_at + 8 => 6,
        1 if end >= l4_at + 4 && ethertype == 0x0800 => 2,
        58 if end >= l4_at + 4 && ethertype == 0x86dd => 2,
        _ => return,
    };
    let body = &mut p[l4_at..end];
    body[at..at + 2].fill(0);
    let sum = if proto == 1 {
        !ones_sum(&[body])
    } else {
        !ones_sum(&[&pseudo, body])
    };
    body[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

/// Where the IP header starts, and the ethertype, past up to two VLAN tags.
fn l3_start(frame: &[u8]) -> Option<(usize, u16)> {
    if frame.len() < 14 {
        return None;
    }
    let (mut at, mut ethertype) = (14, be16(frame, 12));
    while (ethertype == 0x8100 || ethertype == 0x88a8) && at < 22 {
        if frame.len() < at + 4 {
            return None;
        }
        ethertype = be16(frame, at + 2);
        at += 4;
    }
    Some((at, ethertype))
}

// ---------------------------------------------------------------------------------------
// Seeds and mutations.

/// The fixtures' frames: every mode's VIPs, both families, VLAN tags, options, extension
/// headers, fragments, ICMP echo and errors, `nat` replies, frames for no VIP.
fn seeds() -> Vec<Vec<u8>> {
    let mut f: Vec<Frame> = Vec::new();
    for vip in [
        "10.112.0.100",
        "10.112.0.101",
        "10.112.0.102",
        "10.112.0.110",
        "10.112.0.111",
        "10.112.0.112",
        "10.112.0.120",
        "10.112.0.123",
        "10.112.0.126",
        "10.112.0.129",
        "10.112.0.130",
        "10.111.0.99",
    ] {
        f.push(Frame::tcp(CLIENT4, 40000, vip, 80));
        f.push(Frame::udp(CLIENT4, 40001, vip, 53).payload(vec![0x5a; 64]));
        f.push(
            Frame::tcp(CLIENT4, 40002, vip, 443)
                .payload(vec![0xab; 300])
                .tos(0xb8),
        );
        f.push(Frame::icmp(
            CLIENT4,
            vip,
            ECHO_REQUEST_V4,
            0,
            &[0, 1, 0, 1, 9, 9, 9, 9],
        ));
    }
    for vip in [
        "fd00:112::100",
        "fd00:112::101",
        "fd00:112::110",
        "fd00:111::99",
    ] {
        f.push(Frame::tcp(CLIENT6, 40003, vip, 80));
        f.push(Frame::udp(CLIENT6, 40004, vip, 53));
        f.push(Frame::udp(CLIENT6, 40005, vip, 53).payload(vec![0x5a; 64]));
        f.push(
            Frame::tcp(CLIENT6, 40006, vip, 80)
                .options(vec![0])
                .tos(0xb8),
        );
        f.push(Frame::icmp(
            CLIENT6,
            vip,
            ECHO_REQUEST_V6,
            0,
            &[0, 1, 0, 1, 9, 9],
        ));
    }
    f.push(Frame::tcp(CLIENT4, 40008, "10.112.0.100", 80).vlan(0x0064));
    f.push(Frame::tcp(CLIENT4, 40009, "10.112.0.101", 80).vlan(0x2064));
    f.push(Frame::tcp(CLIENT4, 40010, "10.112.0.100", 80).options(vec![1, 1, 1, 0]));
    f.push(Frame::udp(CLIENT4, 40011, "10.112.0.110", 53).without_udp_checksum());
    f.push(Frame::tcp(CLIENT4, 40012, "10.112.0.100", 80).flags(0x11));
    // `nat` replies, from a backend's address and port to the client.
    f.push(Frame::tcp("10.111.0.11", 8080, CLIENT4, 40000));
    f.push(Frame::udp("10.111.0.11", 5353, CLIENT4, 40001));
    f.push(Frame::tcp("fd00:111::11", 8080, CLIENT6, 40003));
    // ICMP errors about VIP flows (too big), v4 and v6.
    for (router, vip, client) in [
        ("10.111.0.1", "10.112.0.100", CLIENT4),
        ("10.111.0.1", "10.112.0.110", CLIENT4),
        ("fd00:111::1", "fd00:112::100", CLIENT6),
    ] {
        let quoted = Frame::tcp(vip, 80, client, 40000).ip_bytes();
        let v4 = router.contains('.');
        let (hlen, mut rest) = if v4 {
            (20, vec![0, 0, 0x05, 0xdc])
        } else {
            (40, vec![0, 0, 0x05, 0x00])
        };
        rest.extend_from_slice(&quoted[..hlen + 8]);
        f.push(if v4 {
            Frame::icmp(router, vip, UNREACHABLE_V4, FRAG_NEEDED_CODE, &rest)
        } else {
            Frame::icmp(router, vip, PACKET_TOO_BIG_V6, 0, &rest)
        });
    }
    let mut out: Vec<Vec<u8>> = f.iter().map(Frame::bytes).collect();
    // Fragments of one datagram, both families.
    for (src, vip) in [(CLIENT4, "10.112.0.100"), (CLIENT6, "fd00:112::100")] {
        out.extend(
            Frame::tcp(src, 50001, vip, 80)
                .payload(vec![0x5a; 64])
                .fragments(7, 40),
        );
    }
    // Two VLAN tags; ARP; a frame for another MAC.
    let inner = Frame::tcp(CLIENT4, 40013, "10.112.0.100", 80).ip_bytes();
    let mut stacked = eth(LB_MAC, CLIENT_MAC, Some(5), ETH_P_8021Q, &[0, 6, 0x08, 0]);
    stacked.extend_from_slice(&inner);
    out.push(stacked);
    out.push(eth([0xff; 6], CLIENT_MAC, None, 0x0806, &[0u8; 28]));
    let mut other = Frame::tcp(CLIENT4, 40014, "10.112.0.100", 80).bytes();
    other[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    out.push(other);
    out
}

/// Offsets (from the IP header) and widths of fields worth setting to edge values.
const V4_FIELDS: &[(usize, usize)] = &[
    (0, 1),
    (1, 1),
    (2, 2),
    (4, 2),
    (6, 2),
    (8, 1),
    (9, 1),
    (19, 1),
];
const V6_FIELDS: &[(usize, usize)] = &[(0, 1), (4, 2), (6, 1), (7, 1), (39, 1)];
/// From the transport header: ports, TCP data offset and flags, UDP length, ICMP type.
const L4_FIELDS: &[(usize, usize)] = &[(0, 1), (0, 2), (2, 2), (4, 2), (12, 1), (13, 1)];

fn edge_value(rng: &mut Rng, width: usize) -> u64 {
    let max = if width == 1 { 0xff } else { 0xffff };
    match rng.below(6) {
        0 => 0,
        1 => max,
        2 => 1,
        3 => max - 1,
        4 => rng.below(64) as u64,
        _ => rng.next() & max,
    }
}

/// One mutation of `frame`, in place.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    match rng.below(7) {
        0 if !frame.is_empty() => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(frame.len() * 8);
                frame[i / 8] ^= 1 << (i % 8);
            }
        }
        1 if !frame.is_empty() => {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(frame.len());
                frame[i] = rng.byte();
            }
        }
        2 if frame.len() > MIN_FRAME => {
            frame.truncate(MIN_FRAME + rng.below(frame.len() - MIN_FRAME))
        }
        3 => {
            let n = 1 + rng.below(64);
            frame.extend(rng.bytes(n));
        }
        4 | 5 => {
            let Some((at, ethertype)) = l3_start(frame) else {
                return;
            };
            let fields = if rng.below(2) == 0 {
                match ethertype {
                    0x0800 => V4_FIELDS,
                    _ => V6_FIELDS,
                }
            } else {
                L4_FIELDS
            };
            let (off, width) = fields[rng.below(fields.len())];
            let base = if fields == L4_FIELDS {
                at + if ethertype == 0x0800 {
                    frame.get(at).map_or(20, |b| usize::from(b & 15) * 4)
                } else {
                    40
                }
            } else {
                at
            };
            let value = edge_value(rng, width);
            if base + off + width <= frame.len() {
                let bytes = value.to_be_bytes();
                frame[base + off..base + off + width].copy_from_slice(&bytes[8 - width..]);
            }
            // Half of them keep their checksums true: the datapath then sees a
            // consistent frame with an odd field, not just a corrupt one.
            if rng.below(2) == 0 {
                fix_checksums(frame);
            }
        }
        _ => {
            let other = &seeds[rng.below(seeds.len())];
            if other.is_empty() || frame.is_empty() {
                return;
            }
            let from = rng.below(other.len());
            let len = 1 + rng.below(other.len() - from);
            let at = rng.below(frame.len());
            let end = (at + len).min(frame.len());
            frame[at..end].copy_from_slice(&other[from..from + (end - at)]);
        }
    }
}

/// A frame: a mutated seed (most), or random bytes, bare or behind an Ethernet header
/// for the LB carrying IPv4 or IPv6.
fn next_frame(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(20) {
        0 => {
            let n = MIN_FRAME + rng.below(128);
            rng.bytes(n)
        }
        1 => {
            let ethertype = if rng.below(2) == 0 { 0x0800 } else { 0x86dd };
            let n = rng.below(120);
            let mut f = eth(LB_MAC, CLIENT_MAC, None, ethertype, &rng.bytes(n));
            if f.len() > 14 {
                f[14] = if ethertype == 0x0800 { 0x45 } else { 0x60 };
            }
            f
        }
        _ => {
            let mut f = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(3) {
                mutate(rng, &mut f, seeds);
            }
            f.resize(f.len().max(MIN_FRAME), 0);
            f
        }
    }
}

// ---------------------------------------------------------------------------------------
// The properties.

/// Addresses (as they appear on the wire) whose presence anywhere in a frame may make
/// it the datapath's: every VIP and every backend.
fn watched_addresses(h: &Harness) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for s in &h.config.services {
        let mut push = |a: IpAddr| match a {
            IpAddr::V4(a) => out.push(a.octets().to_vec()),
            IpAddr::V6(a) => out.push(a.octets().to_vec()),
        };
        push(s.vip);
        for b in &s.backends {
            push(b.address);
        }
    }
    out.sort();
    out.dedup();
    out
}

fn mentions(frame: &[u8], needle: &[u8]) -> bool {
    frame.windows(needle.len()).any(|w| w == needle)
}

/// What is wrong with the datapath's answer to `input`, if anything.
fn violation(input: &[u8], verdict: u32, output: &[u8], watched: &[Vec<u8>]) -> Option<String> {
    if verdict == XDP_ABORTED {
        return Some("XDP_ABORTED".into());
    }
    if verdict > XDP_REDIRECT {
        return Some(format!("unknown verdict {verdict}"));
    }
    let before = decode(input);
    if verdict == XDP_TX || verdict == XDP_REDIRECT {
        let after = match decode(output) {
            Ok(Some(d)) => d,
            Ok(None) => return Some("sent a frame that is not IP".into()),
            Err(e) => return Some(format!("sent a frame that does not parse: {e}")),
        };
        let Ok(Some(before)) = before else {
            return Some(format!(
                "sent a frame made of one that does not parse ({before:?})"
            ));
        };
        let Some(added) = after.headers.len().checked_sub(before.headers.len()) else {
            return Some(format!("IP headers lost: {before:?} -> {after:?}"));
        };
        // Headers the datapath added come first and must be right; the others were
        // the input's and must be right if they were.
        for (i, valid) in after.headers.iter().enumerate() {
            let broken = if i < added {
                *valid == Some(false)
            } else {
                before.headers[i - added] == Some(true) && *valid != Some(true)
            };
            if broken {
                return Some(format!(
                    "IPv4 header {i} checksum broken: {before:?} -> {after:?}"
                ));
            }
        }
        if before.l4 == Some(true) && after.l4 != Some(true) {
            return Some(format!(
                "transport checksum broken: {before:?} -> {after:?}"
            ));
        }
        return None;
    }
    let well_formed = matches!(before, Ok(Some(_)));
    let ours = watched.iter().any(|a| mentions(input, a));
    if well_formed && !ours && (verdict != XDP_PASS || output != input) {
        return Some(format!(
            "a frame for no VIP was not passed unchanged (verdict {verdict}, {} bytes out)",
            output.len()
        ));
    }
    None
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn random_and_mutated_frames_never_abort_or_corrupt() {
    let frames: usize = std::env::var("BASCULE_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_FRAMES);
    let seed: u64 = std::env::var("BASCULE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("datapath fuzz: {frames} frames, BASCULE_FUZZ_SEED={seed}");
    let mut h = Harness::new(CONFIG);
    let watched = watched_addresses(&h);
    let seeds = seeds();
    // The decoder agrees with the builder: every seed parses (ARP aside), checksums right.
    for (i, s) in seeds.iter().enumerate() {
        match decode(s) {
            Ok(Some(d)) => assert!(
                d.headers.iter().all(|v| *v != Some(false)) && d.l4 != Some(false),
                "seed {i}: {d:?}"
            ),
            Ok(None) => {}
            Err(e) => panic!("seed {i} does not parse: {e}"),
        }
    }
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut verdicts = [0usize; 5];
    let mut failures = Vec::new();
    for i in 0..frames {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            next_frame(&mut rng, &seeds)
        };
        let (verdict, output) = h.run(&input);
        if let Some(slot) = verdicts.get_mut(verdict as usize) {
            *slot += 1;
        }
        if let Some(what) = violation(&input, verdict, &output, &watched) {
            failures.push(format!(
                "frame {i}: {what}\n    in:  {}\n    out: {}",
                hex(&input),
                hex(&output)
            ));
            if failures.len() >= 10 {
                break;
            }
        }
    }
    println!(
        "datapath fuzz: {frames} frames in {:.1} s; verdicts aborted {}, drop {}, pass {}, tx {}, redirect {}",
        started.elapsed().as_secs_f64(),
        verdicts[0],
        verdicts[1],
        verdicts[2],
        verdicts[3],
        verdicts[4]
    );
    assert!(
        failures.is_empty(),
        "BASCULE_FUZZ_SEED={seed}: {} failure(s) (first 10):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
