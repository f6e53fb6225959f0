//! Building test frames, and decoding frames into named fields so that a fixture
//! mismatch says which field differs.
//!
//! Every frame, input or expected, comes from one builder: [`Frame`] describes a frame
//! as the LB receives it from the client (`tcp`, `udp`, `icmp`, then `.vlan()`, `.tos()`,
//! `.payload()`...), and what the datapath must make of it is the same description with
//! what it changes: `.sent_to(mac)` (Ethernet from the LB to a backend: `dr`, or a
//! rewritten frame), `.tunnelled_to(backend, mac)` (`tun`'s outer header),
//! `.endpoints(..)` (`nat`'s addresses and ports). Checksums are computed from scratch,
//! written independently of the datapath's incremental updates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{
    checksum::{internet_checksum, Checksum},
    hash, FlowKey, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_IPIP, IPPROTO_IPV6, IPPROTO_TCP,
    IPPROTO_UDP, TUNNEL_TTL,
};

pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
/// The LB's addresses in the fixture lab (`eth0`): the source of `tun`'s outer headers.
pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 111, 0, 2);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x111, 0, 0, 0, 0, 0, 2);

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
/// IPv4 "don't fragment".
const IP_DF: u16 = 0x4000;
/// IPv4 "more fragments".
const IP_MF: u16 = 0x2000;
const IPV6_FRAGMENT: u8 = 44;

#[derive(Clone, Copy, Debug)]
pub enum L4 {
    Tcp {
        flags: u8,
    },
    Udp,
    /// An ICMP (IPv4) or ICMPv6 message: its type and code, the payload after them.
    Icmp {
        kind: u8,
        code: u8,
    },
}

/// One frame: Ethernet (optional VLAN), IPv4 or IPv6 (optionally inside `tun`'s outer
/// header), TCP, UDP or ICMP, and a payload.
#[derive(Clone, Debug)]
pub struct Frame {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
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
    /// IPv4's TOS byte or IPv6's traffic class.
    pub tos: u8,
    /// IPv4 identification, and the flags and fragment offset word.
    pub ip_id: u16,
    pub ip_frag: u16,
    /// IPv4 UDP sent without a checksum (field 0).
    pub no_udp_checksum: bool,
    /// The outer header's destination, when `tun` sent the frame.
    pub tunnel: Option<IpAddr>,
}

impl Frame {
    /// A TCP SYN carrying "hello", from the client's MAC to the LB's.
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlan: None,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            sport,
            dport,
            l4: L4::Tcp { flags: 0x02 },
            payload: b"hello".to_vec(),
            options: Vec::new(),
            ttl: 64,
            tos: 0,
            ip_id: 0x1234,
            ip_frag: IP_DF,
            no_udp_checksum: false,
            tunnel: None,
        }
    }

    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Frame {
        Frame {
            l4: L4::Udp,
            ..Frame::tcp(src, sport, dst, dport)
        }
    }

    /// An ICMP (IPv4) or ICMPv6 message of `kind` and `code`, `rest` after its checksum.
    pub fn icmp(src: &str, dst: &str, kind: u8, code: u8, rest: &[u8]) -> Frame {
        Frame {
            l4: L4::Icmp { kind, code },
            payload: rest.to_vec(),
            ip_id: 0xabcd,
            ip_frag: 0,
            ..Frame::tcp(src, 0, dst, 0)
        }
    }

    /// Behind an 802.1Q tag.
    pub fn vlan(self, tci: u16) -> Frame {
        Frame {
            vlan: Some(tci),
            ..self
        }
    }

    /// TCP with these flags.
    pub fn flags(self, flags: u8) -> Frame {
        Frame {
            l4: L4::Tcp { flags },
            ..self
        }
    }

    pub fn payload(self, payload: Vec<u8>) -> Frame {
        Frame { payload, ..self }
    }

    /// IPv4 options (a multiple of 4 bytes), or for IPv6 any bytes: a hop-by-hop header.
    pub fn options(self, options: Vec<u8>) -> Frame {
        Frame { options, ..self }
    }

    pub fn ttl(self, ttl: u8) -> Frame {
        Frame { ttl, ..self }
    }

    /// IPv4's TOS byte, or IPv6's traffic class.
    pub fn tos(self, tos: u8) -> Frame {
        Frame { tos, ..self }
    }

    /// IPv4 UDP with its checksum field 0 (no checksum).
    pub fn without_udp_checksum(self) -> Frame {
        Frame {
            no_udp_checksum: true,
            ..self
        }
    }

    /// The same packet between other addresses and ports (what `nat` makes of it).
    pub fn endpoints(self, src: (&str, u16), dst: (&str, u16)) -> Frame {
        Frame {
            src: src.0.parse().unwrap(),
            sport: src.1,
            dst: dst.0.parse().unwrap(),
            dport: dst.1,
            ..self
        }
    }

    /// As the LB sends it to `mac`: `dr`'s frame (the backend's MAC), a rewritten one,
    /// an answer to the client.
    pub fn sent_to(self, mac: [u8; 6]) -> Frame {
        Frame {
            eth_dst: mac,
            eth_src: LB_MAC,
            ..self
        }
    }

    /// With another Ethernet source (another interface of the LB).
    pub fn sent_from(self, mac: [u8; 6]) -> Frame {
        Frame {
            eth_src: mac,
            ..self
        }
    }

    /// As `tun` sends it to `backend` (at `mac`): inside an outer header from the LB's
    /// address of the backend's family, TTL `TUNNEL_TTL`, the inner TOS or traffic class
    /// copied; an IPv6 outer header's flow label is the inner flow's `hash::flow_label`. The VLAN tag
    /// stays.
    pub fn tunnelled_to(self, backend: IpAddr, mac: [u8; 6]) -> Frame {
        Frame {
            tunnel: Some(backend),
            ..self.sent_to(mac)
        }
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
            L4::Icmp { .. } if self.src.is_ipv4() => IPPROTO_ICMP,
            L4::Icmp { .. } => IPPROTO_ICMPV6,
        }
    }

    /// The flow's key, as the datapath and `bascule simulate` see it.
    pub fn flow_key(&self) -> FlowKey {
        FlowKey::new(
            (self.src, self.sport).into(),
            (self.dst, self.dport).into(),
            self.proto(),
        )
    }

    pub fn l4_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        let at = match self.l4 {
            L4::Tcp { flags } => {
                v.extend_from_slice(&self.sport.to_be_bytes());
                v.extend_from_slice(&self.dport.to_be_bytes());
                v.extend_from_slice(&1u32.to_be_bytes()); // seq
                v.extend_from_slice(&0u32.to_be_bytes()); // ack
                v.push(0x50);
                v.push(flags);
                v.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
                16
            }
            L4::Udp => {
                v.extend_from_slice(&self.sport.to_be_bytes());
                v.extend_from_slice(&self.dport.to_be_bytes());
                v.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                v.extend_from_slice(&[0, 0]);
                6
            }
            L4::Icmp { kind, code } => {
                v.extend_from_slice(&[kind, code, 0, 0]);
                2
            }
        };
        v.extend_from_slice(&self.payload);
        let c = match self.l4 {
            L4::Udp if self.no_udp_checksum && self.src.is_ipv4() => return v,
            // ICMP (IPv4) has no pseudo-header.
            L4::Icmp { .. } if self.src.is_ipv4() => internet_checksum(&v),
            // A UDP checksum that computes to 0 is sent as all ones (0: none).
            L4::Udp => match l4_checksum(self.src, self.dst, self.proto(), &v) {
                0 => 0xffff,
                c => c,
            },
            _ => l4_checksum(self.src, self.dst, self.proto(), &v),
        };
        v[at..at + 2].copy_from_slice(&c.to_be_bytes());
        v
    }

    /// This frame's own IP header (IPv4 options included), next header `next`.
    fn header(&self, next: u8) -> IpHeader<'_> {
        IpHeader {
            src: self.src,
            dst: self.dst,
            tos: self.tos,
            flow_label: 0,
            id: self.ip_id,
            frag: self.ip_frag,
            ttl: self.ttl,
            next,
            options: if self.src.is_ipv4() {
                &self.options
            } else {
                &[]
            },
        }
    }

    /// The IP packet (header + L4), the inner packet when tunnelled.
    fn inner_ip_bytes(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        // IPv6 options: a hop-by-hop header (length 0: 8 bytes), PadN filling the rest.
        let ext = if self.src.is_ipv6() && !self.options.is_empty() {
            vec![self.proto(), 0, 1, 4, 0, 0, 0, 0]
        } else {
            Vec::new()
        };
        let next = if ext.is_empty() { self.proto() } else { 0 };
        let mut p = self.header(next).bytes(ext.len() + l4.len());
        p.extend_from_slice(&ext);
        p.extend_from_slice(&l4);
        p
    }

    /// The IP packet: header + L4, inside the outer header when tunnelled.
    pub fn ip_bytes(&self) -> Vec<u8> {
        let inner = self.inner_ip_bytes();
        let Some(backend) = self.tunnel else {
            return inner;
        };
        let (src, flow_label) = match backend {
            IpAddr::V4(_) => (IpAddr::V4(LB_V4), 0),
            IpAddr::V6(_) => {
                let k = self.flow_key();
                let ports = hash::ports_word(k.sport, k.dport);
                (
                    IpAddr::V6(LB_V6),
                    hash::flow_label(&k.src, &k.dst, ports, k.proto),
                )
            }
        };
        let outer = IpHeader {
            src,
            dst: backend,
            tos: self.tos,
            flow_label,
            id: 0,
            frag: 0,
            ttl: TUNNEL_TTL,
            next: if self.src.is_ipv4() {
                IPPROTO_IPIP
            } else {
                IPPROTO_IPV6
            },
            options: &[],
        };
        let mut p = outer.bytes(inner.len());
        p.extend_from_slice(&inner);
        p
    }

    pub fn ethertype(&self) -> u16 {
        if self.tunnel.unwrap_or(self.src).is_ipv4() {
            ETH_P_IP
        } else {
            ETH_P_IPV6
        }
    }

    /// The whole frame.
    pub fn bytes(&self) -> Vec<u8> {
        eth(
            self.eth_dst,
            self.eth_src,
            self.vlan,
            self.ethertype(),
            &self.ip_bytes(),
        )
    }

    /// The frame cut in two fragments of one datagram (identification `id`): the first
    /// holds the L4 bytes up to `first` (a multiple of 8), the second the rest.
    pub fn fragments(&self, id: u32, first: usize) -> [Vec<u8>; 2] {
        assert!(
            first.is_multiple_of(8) && self.options.is_empty() && self.tunnel.is_none(),
            "a plain frame, cut at a multiple of 8 bytes"
        );
        let l4 = self.l4_bytes();
        let (head, tail) = l4.split_at(first);
        [(0, true, head), (first, false, tail)].map(|(offset, more, body)| {
            let offset = offset as u16;
            let mut p = if self.src.is_ipv4() {
                let flags = if more { IP_MF } else { 0 };
                IpHeader {
                    id: id as u16,
                    frag: flags | (offset / 8),
                    ..self.header(self.proto())
                }
                .bytes(body.len())
            } else {
                let mut p = self.header(IPV6_FRAGMENT).bytes(8 + body.len());
                p.extend_from_slice(&[self.proto(), 0]);
                p.extend_from_slice(&(offset | u16::from(more)).to_be_bytes());
                p.extend_from_slice(&id.to_be_bytes());
                p
            };
            p.extend_from_slice(body);
            eth(self.eth_dst, self.eth_src, self.vlan, self.ethertype(), &p)
        })
    }
}

/// One IPv4 or IPv6 header's fields.
struct IpHeader<'a> {
    src: IpAddr,
    dst: IpAddr,
    /// IPv4's TOS or IPv6's traffic class.
    tos: u8,
    /// IPv6 only.
    flow_label: u32,
    /// IPv4 only: identification, flags and fragment offset, options.
    id: u16,
    frag: u16,
    options: &'a [u8],
    ttl: u8,
    next: u8,
}

impl IpHeader<'_> {
    /// The header before `payload_len` bytes, with its lengths and (IPv4) checksum.
    fn bytes(&self, payload_len: usize) -> Vec<u8> {
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let hlen = 20 + self.options.len();
                let mut h = vec![0x40 | (hlen / 4) as u8, self.tos];
                h.extend_from_slice(&((hlen + payload_len) as u16).to_be_bytes());
                h.extend_from_slice(&self.id.to_be_bytes());
                h.extend_from_slice(&self.frag.to_be_bytes());
                h.extend_from_slice(&[self.ttl, self.next, 0, 0]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h.extend_from_slice(self.options);
                let c = internet_checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let first =
                    (6u32 << 28) | (u32::from(self.tos) << 20) | (self.flow_label & 0xfffff);
                let mut h = first.to_be_bytes().to_vec();
                h.extend_from_slice(&(payload_len as u16).to_be_bytes());
                h.extend_from_slice(&[self.next, self.ttl]);
                h.extend_from_slice(&s.octets());
                h.extend_from_slice(&d.octets());
                h
            }
            _ => panic!("mixed families"),
        }
    }
}

/// An Ethernet frame around `payload`; for frames `Frame` does not describe (ARP, cut
/// short, two VLAN tags).
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
        v.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
        v.extend_from_slice(&tci.to_be_bytes());
    }
    v.extend_from_slice(&ethertype.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// TCP/UDP/ICMPv6 checksum over the pseudo-header and `segment` (its checksum field zero).
fn l4_checksum(src: IpAddr, dst: IpAddr, proto: u8, segment: &[u8]) -> u16 {
    let sum = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Checksum::new()
            .add_bytes(&s.octets())
            .add_bytes(&d.octets())
            .add_bytes(&[0, proto])
            .add_bytes(&(segment.len() as u16).to_be_bytes()),
        (IpAddr::V6(s), IpAddr::V6(d)) => Checksum::new()
            .add_bytes(&s.octets())
            .add_bytes(&d.octets())
            .add_bytes(&(segment.len() as u32).to_be_bytes())
            .add_bytes(&[0, 0, 0, proto]),
        _ => panic!("mixed families"),
    };
    sum.add_bytes(segment).finish()
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
