//! Reading the packet: Ethernet (with one optional 802.1Q/802.1ad tag), IPv4 (options
//! allowed) or IPv6 (hop-by-hop, routing and destination-options headers walked), and
//! the TCP/UDP ports. Nothing here writes to the packet.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    Reason, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6, IPPROTO_TCP,
    IPPROTO_UDP,
};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
/// Extension headers walked before giving up (and passing the packet to the kernel).
const MAX_IPV6_EXTENSIONS: usize = 4;
/// Farthest L4 offset accepted; keeps offsets bounded for the verifier.
const MAX_L4_OFFSET: usize = 512;

/// What the datapath needs to know about a TCP/UDP packet.
pub struct Packet {
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3_off: usize,
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source and destination ports as one word, bytes as on the wire.
    pub ports: u32,
    pub sport: u16,
    pub dport: u16,
    /// IPv4 TOS / IPv6 traffic class, copied to a tunnel's outer header.
    pub tos: u8,
    /// Length of the IP packet (header included), the payload of a tunnel.
    pub l3_len: u16,
    /// Frame length, for byte counters.
    pub frame_len: u32,
    pub fragment: bool,
}

/// Why parsing stopped: the verdict to return and the reason to count, if any.
pub struct Stop {
    pub action: u32,
    pub reason: Option<Reason>,
}

impl Stop {
    #[inline(always)]
    fn pass() -> Self {
        Stop {
            action: xdp_action::XDP_PASS,
            reason: None,
        }
    }
    #[inline(always)]
    pub fn counted(action: u32, reason: Reason) -> Self {
        Stop {
            action,
            reason: Some(reason),
        }
    }
}

/// Pointer to a `T` at `off` from the start of the packet, if it lies entirely inside.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Parses a frame. `Err` carries the verdict for anything that is not TCP/UDP over IP.
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Stop> {
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    let Some(mut ethertype) = read::<[u8; 2]>(ctx, 12).map(u16::from_be_bytes) else {
        return Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::TruncatedEthernet,
        ));
    };
    let mut l3_off = ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = read::<[u8; 2]>(ctx, 16).map(u16::from_be_bytes) else {
            return Err(Stop::counted(
                xdp_action::XDP_DROP,
                Reason::TruncatedEthernet,
            ));
        };
        if inner == ETH_P_8021Q || inner == ETH_P_8021AD {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::StackedVlan));
        }
        ethertype = inner;
        l3_off = ETH_LEN + VLAN_LEN;
    }
    let mut pkt = match ethertype {
        ETH_P_IP => ipv4(ctx, l3_off)?,
        ETH_P_IPV6 => ipv6(ctx, l3_off)?,
        _ => return Err(Stop::pass()),
    };
    pkt.frame_len = frame_len;
    Ok(pkt)
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3_off: usize) -> Result<Packet, Stop> {
    let Some(h) = read::<[u8; IPV4_LEN]>(ctx, l3_off) else {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
    };
    let ihl = (h[0] & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes([h[2], h[3]]);
    if h[0] >> 4 != 4 || ihl < IPV4_LEN || (tot_len as usize) < ihl {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::BadIpHeader));
    }
    let proto = h[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Err(Stop::pass());
    }
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3fff; // MF flag and offset
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let mut pkt = Packet {
        l3_off,
        family: FAMILY_V4,
        proto,
        src: [word(12), 0, 0, 0],
        dst: [word(16), 0, 0, 0],
        ports: 0,
        sport: 0,
        dport: 0,
        tos: h[1],
        l3_len: tot_len,
        frame_len: 0,
        fragment: frag != 0,
    };
    if pkt.fragment {
        return Ok(pkt);
    }
    ports(ctx, l3_off + ihl, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3_off: usize) -> Result<Packet, Stop> {
    let Some(h) = read::<[u8; IPV6_LEN]>(ctx, l3_off) else {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
    };
    if h[0] >> 4 != 6 {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::BadIpHeader));
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let mut next = h[6];
    let mut off = l3_off + IPV6_LEN;
    let mut fragment = false;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // hop-by-hop, routing, destination options: skip (length in 8-byte units).
            0 | 43 | 60 => {
                let Some(ext) = read::<[u8; 2]>(ctx, off) else {
                    return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
                if off > MAX_L4_OFFSET {
                    return Err(Stop::counted(xdp_action::XDP_PASS, Reason::Ipv6Extension));
                }
            }
            44 => {
                fragment = true;
                break;
            }
            _ => break,
        }
    }
    if !fragment && next != IPPROTO_TCP && next != IPPROTO_UDP {
        if matches!(next, 0 | 43 | 60) {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::Ipv6Extension));
        }
        return Err(Stop::pass());
    }
    let mut pkt = Packet {
        l3_off,
        family: FAMILY_V6,
        proto: next,
        src: [word(8), word(12), word(16), word(20)],
        dst: [word(24), word(28), word(32), word(36)],
        ports: 0,
        sport: 0,
        dport: 0,
        tos: (h[0] << 4) | (h[1] >> 4),
        l3_len: payload_len.wrapping_add(IPV6_LEN as u16),
        frame_len: 0,
        fragment,
    };
    if fragment {
        return Ok(pkt);
    }
    ports(ctx, off, &mut pkt)?;
    Ok(pkt)
}

/// Reads the ports, after checking the whole TCP (20 bytes) or UDP (8 bytes) header is there.
#[inline(always)]
fn ports(ctx: &XdpContext, l4_off: usize, pkt: &mut Packet) -> Result<(), Stop> {
    let truncated = Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedL4);
    if l4_off > MAX_L4_OFFSET {
        return Err(truncated);
    }
    let whole = if pkt.proto == IPPROTO_TCP {
        read::<[u8; 20]>(ctx, l4_off).is_some()
    } else {
        read::<[u8; 8]>(ctx, l4_off).is_some()
    };
    let Some(p) = read::<[u8; 4]>(ctx, l4_off) else {
        return Err(truncated);
    };
    if !whole {
        return Err(truncated);
    }
    pkt.ports = u32::from_ne_bytes(p);
    pkt.sport = u16::from_ne_bytes([p[0], p[1]]);
    pkt.dport = u16::from_ne_bytes([p[2], p[3]]);
    Ok(())
}
