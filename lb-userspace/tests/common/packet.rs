//! Building test frames, and decoding frames into named fields so that a fixture
//! mismatch says which field differs.

use std::net::IpAddr;

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp { flags: u8 },
    Udp,
}

/// One frame: Ethernet (optional VLAN), IPv4 or IPv6, TCP or UDP, and a payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    /// IPv4 options bytes (a multiple of 4), or an IPv6 hop-by-hop header when non-empty.
    pub options: Vec<u8>,
    pub ttl: u8,
    /// IPv4 UDP sent without a checksum (field 0).
    pub no_udp_checksum: bool,
}

impl Frame {
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4: L4::Tcp { flags: 0x02 },
            payload: b"hello".to_vec(),
            options: Vec::new(),
            ttl: 64,
            no_udp_checksum: false,
        }
    }
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            l4: L4::Udp,
            ..Frame::tcp(src, sport, dst, dport)
        }
    }
    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp => 17,
        }
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.sport.to_be_bytes());
        v.extend_from_slice(&self.dport.to_be_bytes());
        match self.l4 {
            L4::Tcp { flags } => {
                v.extend_from_slice(&1u32.to_be_bytes()); // seq
                v.extend_from_slice(&0u32.to_be_bytes()); // ack
                v.push(0x50);
                v.push(flags);
                v.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
            }
            L4::Udp => {
                v.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
            }
        }
        v.extend_from_slice(&self.payload);
        if !(self.no_udp_checksum && matches!(self.l4, L4::Udp) && self.src.is_ipv4()) {
            let at = if matches!(self.l4, L4::Tcp { .. }) {
                16
            } else {
                6
            };
            let mut c = l4_checksum(self.src, self.dst, self.proto(), &v);
            if c == 0 && matches!(self.l4, L4::Udp) {
                c = 0xffff;
            }
            v[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        v
    }

    /// The IP packet (header + L4).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let hlen = 20 + self.options.len();
                let mut h = vec![0x40 | (hlen / 4) as u8, 0];
                h.extend_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
                h.extend_from_slice(&[0x12, 0x34, 0x40, 0]); // id, DF
                h.push(self.ttl);
                h.push(self.proto());
                h.extend_from_slice(&[0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&self.options);
                let c = ipv4_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h.extend_from_slice(&l4);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ext = if self.options.is_empty() {
                    Vec::new()
                } else {
                    // hop-by-hop: next header, length 0 (8 bytes), PadN filling the rest.
                    vec![self.proto(), 0, 1, 4, 0, 0, 0, 0]
                };
                let mut h = vec![0x60, 0, 0, 0];
                h.extend_from_slice(&((ext.len() + l4.len()) as u16).to_be_bytes());
                h.push(if ext.is_empty() { self.proto() } else { 0 });
                h.push(self.ttl);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(&ext);
                h.extend_from_slice(&l4);
                h
            }
            _ => panic!("mixed families"),
        }
    }

    pub fn ethertype(&self) -> u16 {
        if self.src.is_ipv4() {
            0x0800
        } else {
            0x86dd
        }
    }

    /// The whole frame as the LB receives it: from the client's MAC to the LB's.
    pub fn bytes(&self) -> Vec<u8> {
        eth(
            LB_MAC,
            CLIENT_MAC,
            self.vlan,
            self.ethertype(),
            &self.ip_bytes(),
        )
    }
}

pub fn eth(
    dst: [u8; 6],
    src: [u8; 6],
    vlan: Option<u16>,
    ethertype: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&dst);
    v.extend_from_slice(&src);
    if let Some(tci) = vlan {
        v.extend_from_slice(&0x8100u16.to_be_bytes());
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// TCP/UDP/ICMPv6 checksum over the pseudo-header and `segment` (its checksum field zero).
pub fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(segment.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed families"),
    }
    pseudo.extend_from_slice(segment);
    ipv4_checksum(&pseudo)
}

pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in h.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Outer IPv4 header bascule's `tun` must produce, written independently of the datapath.
pub fn outer_ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    tos: u8,
    inner_proto: u8,
    inner_len: usize,
) -> Vec<u8> {
    let mut h = vec![0x45, tos];
    h.extend_from_slice(&((20 + inner_len) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 64, inner_proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = ipv4_checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Outer IPv6 header; the flow label is whatever the datapath chose (it is a flow hash).
pub fn outer_ipv6(
    src: [u8; 16],
    dst: [u8; 16],
    tclass: u8,
    flow_label: u32,
    next: u8,
    inner_len: usize,
) -> Vec<u8> {
    let first = (6u32 << 28) | (u32::from(tclass) << 20) | (flow_label & 0xfffff);
    let mut h = first.to_be_bytes().to_vec();
    h.extend_from_slice(&(inner_len as u16).to_be_bytes());
    h.push(next);
    h.push(64);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h
}

/// Splits a frame into named fields for comparison: "eth.dst", "ip.ttl", "outer.ip.src"...
/// Unknown trailing bytes become one "rest" field.
pub fn fields(frame: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let hex = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    if frame.len() < 14 {
        out.push(("truncated".into(), hex(frame)));
        return out;
    }
    out.push(("eth.dst".into(), hex(&frame[0..6])));
    out.push(("eth.src".into(), hex(&frame[6..12])));
    let mut off = 12;
    let mut et = u16::from_be_bytes([frame[12], frame[13]]);
    if et == 0x8100 && frame.len() >= 18 {
        out.push(("vlan.tci".into(), hex(&frame[14..16])));
        off = 16;
        et = u16::from_be_bytes([frame[16], frame[17]]);
    }
    out.push(("eth.type".into(), format!("{et:04x}")));
    off += 2;
    ip_fields(&frame[off..], et, "", &mut out);
    out
}

fn ip_fields(p: &[u8], et: u16, prefix: &str, out: &mut Vec<(String, String)>) {
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut push = |k: &str, v: String| out.push((format!("{prefix}{k}"), v));
    match et {
        0x0800 if p.len() >= 20 => {
            let ihl = usize::from(p[0] & 0xf) * 4;
            push("ip.version_ihl", format!("{:02x}", p[0]));
            push("ip.tos", format!("{}", p[1]));
            push(
                "ip.total_length",
                format!("{}", u16::from_be_bytes([p[2], p[3]])),
            );
            push("ip.id_frag", hex(&p[4..8]));
            push("ip.ttl", format!("{}", p[8]));
            push("ip.protocol", format!("{}", p[9]));
            push("ip.checksum", hex(&p[10..12]));
            push(
                "ip.src",
                std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]).to_string(),
            );
            push(
                "ip.dst",
                std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]).to_string(),
            );
            let ihl = ihl.clamp(20, p.len());
            if ihl > 20 {
                push("ip.options", hex(&p[20..ihl]));
            }
            match p[9] {
                4 => ip_fields(&p[ihl..], 0x0800, &format!("{prefix}inner."), out),
                41 => ip_fields(&p[ihl..], 0x86dd, &format!("{prefix}inner."), out),
                _ => out.push((format!("{prefix}l4"), hex(&p[ihl..]))),
            }
        }
        0x86dd if p.len() >= 40 => {
            push("ip6.version_class_flow", hex(&p[0..4]));
            push(
                "ip6.payload_length",
                format!("{}", u16::from_be_bytes([p[4], p[5]])),
            );
            push("ip6.next_header", format!("{}", p[6]));
            push("ip6.hop_limit", format!("{}", p[7]));
            let a = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                std::net::Ipv6Addr::from(b).to_string()
            };
            push("ip6.src", a(8));
            push("ip6.dst", a(24));
            match p[6] {
                4 => ip_fields(&p[40..], 0x0800, &format!("{prefix}inner."), out),
                41 => ip_fields(&p[40..], 0x86dd, &format!("{prefix}inner."), out),
                _ => out.push((format!("{prefix}l4"), hex(&p[40..]))),
            }
        }
        _ => push("payload", hex(p)),
    }
}

/// The first fields that differ, as "field: expected X, got Y" lines; empty when equal.
pub fn diff(expected: &[u8], got: &[u8]) -> Vec<String> {
    let e = fields(expected);
    let g = fields(got);
    let mut lines = Vec::new();
    for i in 0..e.len().max(g.len()) {
        match (e.get(i), g.get(i)) {
            (Some((k, v)), Some((k2, v2))) if k == k2 && v == v2 => {}
            (Some((k, v)), Some((k2, v2))) if k == k2 => {
                lines.push(format!("{k}: expected {v}, got {v2}"))
            }
            (a, b) => {
                lines.push(format!("field {i}: expected {a:?}, got {b:?}"));
                break;
            }
        }
    }
    if lines.is_empty() && expected != got {
        lines.push(format!(
            "bytes differ (expected {} bytes, got {})",
            expected.len(),
            got.len()
        ));
    }
    lines
}

/// An IPv4/IPv6 packet around an arbitrary L4 payload (ICMP), as the LB receives it.
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, ttl: u8, l4: &[u8]) -> Vec<u8> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
            h.extend_from_slice(&[0xab, 0xcd, 0, 0, ttl, proto, 0, 0]);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            let c = ipv4_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h.extend_from_slice(l4);
            h
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut h = vec![0x60, 0, 0, 0];
            h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            h.push(proto);
            h.push(ttl);
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
            h.extend_from_slice(l4);
            h
        }
        _ => panic!("mixed families"),
    }
}

/// An ICMP (v4) or ICMPv6 message with a correct checksum.
pub fn icmp(src: IpAddr, dst: IpAddr, ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(rest);
    let c = if src.is_ipv4() {
        ipv4_checksum(&m)
    } else {
        l4_checksum(src, dst, 58, &m)
    };
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// A whole frame carrying an ICMP message.
pub fn icmp_frame(src: &str, dst: &str, ttl: u8, ty: u8, code: u8, rest: &[u8]) -> Vec<u8> {
    let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    let proto = if s.is_ipv4() { 1 } else { 58 };
    let et = if s.is_ipv4() { 0x0800 } else { 0x86dd };
    eth(
        LB_MAC,
        CLIENT_MAC,
        None,
        et,
        &ip_packet(s, d, proto, ttl, &icmp(s, d, ty, code, rest)),
    )
}
