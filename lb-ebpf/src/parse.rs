//! Reading the packet: Ethernet (with one optional 802.1Q/802.1ad tag), IPv4 (options
//! allowed) or IPv6 (hop-by-hop, routing, destination-options and fragment headers
//! walked), then the TCP/UDP ports or the ICMP type. Nothing here writes to the packet.
//! The common frames (untagged IPv4 without options, IPv6 without extension headers; TCP
//! or UDP) are read inline by `plain_ipv4` and `plain_ipv6`; `packet` reads every frame,
//! those included.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    Reason, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6, IPPROTO_ICMP,
    IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

pub const ETH_LEN: usize = 14;
pub const VLAN_LEN: usize = 4;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
const IPV6_FRAGMENT: u8 = 44;
/// Extension headers walked before giving up (and passing the packet to the kernel).
const MAX_IPV6_EXTENSIONS: usize = 4;
/// Farthest L4 offset accepted; keeps offsets bounded for the verifier.
pub const MAX_L4_OFFSET: usize = 512;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Where a packet stands in its datagram.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub enum Fragment {
    /// Not fragmented.
    #[default]
    Whole,
    /// Offset 0, more to come: has the ports; its backend is remembered for the rest.
    First,
    /// Offset > 0: no L4 header; follows the first fragment's backend.
    Later,
}

/// What the datapath needs to know about a packet it may handle.
#[derive(Default)]
pub struct Packet {
    /// Offset of the IP header: 14, or 18 behind a VLAN tag.
    pub l3: u16,
    /// Offset of the L4 header (after IPv4 options / IPv6 extension headers).
    pub l4: u16,
    pub family: u8,
    /// TCP, UDP, ICMP or ICMPv6.
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source and destination ports as one word, bytes as on the wire (0 for ICMP and
    /// later fragments).
    pub ports: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
    /// ICMP type and code (0 otherwise).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// IPv4 TOS / IPv6 traffic class, copied to a tunnel's outer header.
    pub tos: u8,
    /// Length of the IP packet (header included), the payload of a tunnel.
    pub l3_len: u16,
    /// Frame length, for byte counters.
    pub frame_len: u32,
    pub fragment: Fragment,
    /// IPv4 identification or IPv6 fragment id (fragments only).
    pub frag_id: u32,
}

impl Packet {
    /// The IP header's offset. Masked so that the verifier sees one bounded range
    /// whatever path set it (and so prunes the paths after it as one).
    #[inline(always)]
    pub fn l3_off(&self) -> usize {
        (self.l3 & 0x1f) as usize
    }

    /// The L4 header's offset (bounded like `l3_off`, below `MAX_L4_OFFSET` + 512).
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        (self.l4 & 0x3ff) as usize
    }

    pub fn is_icmp(&self) -> bool {
        self.proto == IPPROTO_ICMP || self.proto == IPPROTO_ICMPV6
    }

    /// Whether the packet the readers found is whole: its IP length fits in the frame
    /// (else `TruncatedIp`) and covers the headers read (else `TruncatedL4`). The readers
    /// read headers from the frame's bytes, which may run past the IP length (padding, or
    /// a forged length); a packet is forwarded, rewritten or answered only when whole.
    #[inline(always)]
    pub fn whole(&self) -> Result<(), Stop> {
        // IPv6's length is its payload's plus 40, which wraps past 65,495 bytes of
        // payload (below 40 then): more than any frame holds.
        let v6 = self.family == FAMILY_V6;
        let ip_len = self.l3_len as u32;
        let end = self.l3 as u32 + ip_len;
        if end > self.frame_len || (v6 & (ip_len < IPV6_LEN as u32)) {
            return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
        }
        let l4_len = match (self.fragment, self.proto) {
            (Fragment::Later, _) => 0,
            (_, IPPROTO_TCP) => 20,
            _ => 8,
        };
        if self.l4_off() as u32 + l4_len > end {
            return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedL4));
        }
        Ok(())
    }
}

/// Why parsing stopped: the verdict to return and the reason to count, if any.
pub struct Stop {
    pub action: u32,
    pub reason: Option<Reason>,
}

impl Stop {
    #[inline(always)]
    pub fn pass() -> Self {
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

/// The packet's bounds, read once.
#[derive(Clone, Copy)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    #[inline(always)]
    pub fn ptr<T>(&self, off: usize) -> Option<*mut T> {
        if self.start + off + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some((self.start + off) as *mut T)
    }

    #[inline(always)]
    pub fn read<T: Copy>(&self, off: usize) -> Option<T> {
        self.ptr::<T>(off).map(|p| unsafe { p.read_unaligned() })
    }
}

/// Start and end of the packet.
#[inline(always)]
pub fn bounds(ctx: &XdpContext) -> (usize, usize) {
    (ctx.data(), ctx.data_end())
}

/// The context inside a separate BPF function. `black_box` hides where the pointer comes
/// from, so the compiler cannot hoist the `data`/`data_end` loads into the caller and pass
/// them across the call as plain integers (the verifier would then see scalars, not
/// packet pointers).
#[inline(always)]
pub fn context(raw: *mut aya_ebpf::bindings::xdp_md) -> XdpContext {
    XdpContext {
        ctx: core::hint::black_box(raw),
    }
}

/// Pointer to a `T` at `off` from the start of the packet, if it lies entirely inside.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let (start, end) = bounds(ctx);
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    ptr_at::<T>(ctx, off).map(|p| unsafe { p.read_unaligned() })
}

/// Parses a frame into `pkt`. `Err` carries the verdict for anything the datapath does
/// not handle. A separate BPF function that fills the caller's `Packet` in place, so the
/// header reads live in its own (small) stack frame.
#[inline(never)]
pub fn packet(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &mut Packet) -> u32 {
    let ctx = &context(raw);
    let (start, end) = bounds(ctx);
    // Read `data`/`data_end` once: stores into `pkt` could alias the context for the
    // compiler, which would then reload them (and the verifier re-check every access).
    match parse_into(&Span { start, end }, pkt) {
        Ok(()) => PARSED,
        Err(stop) => stop.encode(),
    }
}

/// What `plain_ipv4` needs inside the frame, checked at once: Ethernet, an IPv4 header
/// without options and a whole TCP header. (A UDP datagram shorter than that is read by
/// `packet`.)
const PLAIN_LEN: usize = ETH_LEN + IPV4_LEN + 20;

/// The common frame, read inline in the caller's frame: untagged IPv4 without options,
/// not a fragment, carrying TCP or UDP. Fills `pkt`, a new `Packet`, exactly as `packet`
/// would and returns true; returns false, `pkt` untouched, for any other frame (`packet`
/// reads it then).
/// Saves the call into `packet` (its return goes through the kernel's return thunk) and
/// reads whole words where the general parser reads bytes: ~15-20 ns of a frame through
/// veth. The frame's words need no alignment (x86, and the verifier allows it).
///
/// Shaped for the verifier as much as for speed. It walks the paths after this step once
/// for every reader unless it finds their states equivalent, and it compares the stack
/// byte by byte by kind: a zero written is not an unknown value. So each inline reader
/// writes the fields the general parser writes, zeros where it writes zeros (IPv6's
/// fragment id; IPv4's address words are the zeros `pkt` was made with), and this one
/// reads the frame in two groups (the checked words, then the rest) and combines its
/// checks without short-circuits (each choice measured). Otherwise the verifier walked
/// 515,000-519,000 instructions instead of 353,000 (load 2.0 s instead of 1.4 s), and
/// still 136,000 instead of 105,000 once `flow::schedule` was checked on its own. A test
/// bounds the count.
#[inline(always)]
pub fn plain_ipv4(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    let (start, end) = bounds(ctx);
    if start + PLAIN_LEN > end {
        return false;
    }
    let p = start as *const u8;
    let (head, lens, frag): (u64, u64, u64);
    unsafe {
        core::arch::asm!(
            "{head} = *(u32 *)({p} + 12)",
            "{lens} = *(u32 *)({p} + 16)",
            "{frag} = *(u32 *)({p} + 20)",
            p = in(reg) p,
            head = out(reg) head,
            lens = out(reg) lens,
            frag = out(reg) frag,
            options(readonly, nostack, preserves_flags),
        );
    }
    // Bytes 12-14: the IPv4 ethertype, then version 4 with a 20-byte header.
    let ip_head = u32::from_le_bytes([0x08, 0x00, 0x45, 0]) as u64;
    // Bytes 20-21: neither "more fragments" nor an offset (don't-fragment may be set).
    let fragmented = u16::from_le_bytes([0x3f, 0xff]) as u64;
    let proto = (frag >> 24) as u8;
    let tot_len = u16::from_be_bytes([lens as u8, (lens >> 8) as u8]);
    let plain = (head & 0x00ff_ffff == ip_head)
        & (frag & fragmented == 0)
        & ((proto == IPPROTO_TCP) | (proto == IPPROTO_UDP))
        & (tot_len as usize >= IPV4_LEN);
    if !plain {
        return false;
    }
    let (src, dst, ports, flags): (u64, u64, u64, u64);
    unsafe {
        core::arch::asm!(
            "{src} = *(u32 *)({p} + 26)",
            "{dst} = *(u32 *)({p} + 30)",
            "{ports} = *(u32 *)({p} + 34)",
            "{flags} = *(u8 *)({p} + 47)",
            p = in(reg) p,
            src = out(reg) src,
            dst = out(reg) dst,
            ports = out(reg) ports,
            flags = out(reg) flags,
            options(readonly, nostack, preserves_flags),
        );
    }
    pkt.frame_len = (end - start) as u32;
    pkt.l3 = ETH_LEN as u16;
    pkt.l4 = (ETH_LEN + IPV4_LEN) as u16;
    pkt.family = FAMILY_V4;
    pkt.proto = proto;
    // The other words of the addresses are zero: `pkt` is a new `Packet`.
    pkt.src[0] = src as u32;
    pkt.dst[0] = dst as u32;
    pkt.tos = (head >> 24) as u8;
    pkt.l3_len = tot_len;
    pkt.fragment = Fragment::Whole;
    pkt.frag_id = u16::from_be_bytes([(lens >> 16) as u8, (lens >> 24) as u8]) as u32;
    plain_transport(pkt, proto, ports, flags);
    true
}

/// What `plain_ipv6` needs inside the frame: Ethernet, the IPv6 header and a whole TCP
/// header.
const PLAIN6_LEN: usize = ETH_LEN + IPV6_LEN + 20;

/// `plain_ipv4`'s IPv6 counterpart: untagged IPv6 whose next header is TCP or UDP (no
/// extension header), in a frame of `PLAIN6_LEN` bytes or more. Fills `pkt` exactly as
/// `packet` would (see `plain_ipv4` on why the zero fragment id is written) and returns
/// true; false, `pkt` untouched, for any other frame.
#[inline(always)]
pub fn plain_ipv6(ctx: &XdpContext, pkt: &mut Packet) -> bool {
    let (start, end) = bounds(ctx);
    if start + PLAIN6_LEN > end {
        return false;
    }
    let p = start as *const u8;
    let (head, lens): (u64, u64);
    unsafe {
        core::arch::asm!(
            "{head} = *(u32 *)({p} + 12)",
            "{lens} = *(u32 *)({p} + 18)",
            p = in(reg) p,
            head = out(reg) head,
            lens = out(reg) lens,
            options(readonly, nostack, preserves_flags),
        );
    }
    // Bytes 12-14: the IPv6 ethertype, then version 6 (the high half of byte 14).
    let ip_head = u32::from_le_bytes([0x86, 0xdd, 0x60, 0]) as u64;
    let proto = (lens >> 16) as u8;
    let plain = (head & 0x00f0_ffff == ip_head) & ((proto == IPPROTO_TCP) | (proto == IPPROTO_UDP));
    if !plain {
        return false;
    }
    let payload_len = u16::from_be_bytes([lens as u8, (lens >> 8) as u8]);
    let (b0, b1) = ((head >> 16) as u8, (head >> 24) as u8);
    pkt.frame_len = (end - start) as u32;
    pkt.l3 = ETH_LEN as u16;
    pkt.l4 = (ETH_LEN + IPV6_LEN) as u16;
    pkt.family = FAMILY_V6;
    pkt.proto = proto;
    pkt.src = words4(p, ETH_LEN + 8);
    pkt.dst = words4(p, ETH_LEN + 24);
    pkt.tos = (b0 << 4) | (b1 >> 4);
    pkt.l3_len = payload_len.wrapping_add(IPV6_LEN as u16);
    pkt.fragment = Fragment::Whole;
    pkt.frag_id = 0;
    let (ports, flags): (u64, u64);
    unsafe {
        core::arch::asm!(
            "{ports} = *(u32 *)({p} + 54)",
            "{flags} = *(u8 *)({p} + 67)",
            p = in(reg) p,
            ports = out(reg) ports,
            flags = out(reg) flags,
            options(readonly, nostack, preserves_flags),
        );
    }
    plain_transport(pkt, proto, ports, flags);
    true
}

/// An inline reader's ports word and TCP flags byte, stored as `transport` stores them.
#[inline(always)]
fn plain_transport(pkt: &mut Packet, proto: u8, ports: u64, flags: u64) {
    pkt.ports = ports as u32;
    pkt.sport = ports as u16;
    pkt.dport = (ports >> 16) as u16;
    if proto == IPPROTO_TCP {
        pkt.tcp_flags = flags as u8;
    }
}

/// Four words of the frame at `p + off`, as they lie (bounds checked by the caller).
#[inline(always)]
fn words4(p: *const u8, off: usize) -> [u32; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    unsafe {
        core::arch::asm!(
            "{a} = *(u32 *)({p} + 0)",
            "{b} = *(u32 *)({p} + 4)",
            "{c} = *(u32 *)({p} + 8)",
            "{d} = *(u32 *)({p} + 12)",
            p = in(reg) p.add(off),
            a = out(reg) a,
            b = out(reg) b,
            c = out(reg) c,
            d = out(reg) d,
            options(readonly, nostack, preserves_flags),
        );
    }
    [a as u32, b as u32, c as u32, d as u32]
}

/// `packet`'s "parsed" answer; anything else is an encoded `Stop`.
pub const PARSED: u32 = u32::MAX;

impl Stop {
    /// Packs a stop into one word (action in the low byte, reason + 1 in the next).
    #[inline(always)]
    pub fn encode(&self) -> u32 {
        self.action | self.reason.map_or(0, |r| (r as u32 + 1) << 8)
    }

    /// A `Result` as one word, to return it from a separate BPF function in a register.
    #[inline(always)]
    pub fn pack(r: Result<u32, Stop>) -> u32 {
        match r {
            Ok(action) => action,
            Err(stop) => stop.encode(),
        }
    }

    #[inline(always)]
    pub fn unpack(code: u32) -> Result<u32, Stop> {
        if code >> 8 == 0 {
            Ok(code)
        } else {
            Err(Stop::decode(code))
        }
    }

    #[inline(always)]
    pub fn decode(code: u32) -> Stop {
        Stop {
            action: code & 0xff,
            reason: Reason::from_code((code >> 8).wrapping_sub(1)),
        }
    }
}

#[inline(always)]
fn parse_into(span: &Span, pkt: &mut Packet) -> Result<(), Stop> {
    let frame_len = (span.end - span.start) as u32;
    let Some(mut ethertype) = span.read::<[u8; 2]>(12).map(u16::from_be_bytes) else {
        return Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::TruncatedEthernet,
        ));
    };
    let mut l3_off = ETH_LEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let Some(inner) = span.read::<[u8; 2]>(16).map(u16::from_be_bytes) else {
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
    pkt.frame_len = frame_len;
    match ethertype {
        ETH_P_IP => ipv4(span, l3_off, pkt),
        ETH_P_IPV6 => ipv6(span, l3_off, pkt),
        _ => Err(Stop::pass()),
    }
}

#[inline(always)]
fn ipv4(span: &Span, l3_off: usize, pkt: &mut Packet) -> Result<(), Stop> {
    let Some(h) = span.ptr::<[u8; IPV4_LEN]>(l3_off) else {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
    };
    let h = unsafe { &*h };
    let ihl = (h[0] & 0x0f) as usize * 4;
    let tot_len = u16::from_be_bytes([h[2], h[3]]);
    if h[0] >> 4 != 4 || ihl < IPV4_LEN || (tot_len as usize) < ihl {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::BadIpHeader));
    }
    let proto = h[9];
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return Err(Stop::pass());
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let fragment = if offset != 0 {
        Fragment::Later
    } else if more {
        Fragment::First
    } else {
        Fragment::Whole
    };
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    pkt.l3 = l3_off as u16;
    pkt.l4 = (l3_off + ihl) as u16;
    pkt.family = FAMILY_V4;
    pkt.proto = proto;
    pkt.src = [word(12), 0, 0, 0];
    pkt.dst = [word(16), 0, 0, 0];
    pkt.tos = h[1];
    pkt.l3_len = tot_len;
    pkt.fragment = fragment;
    pkt.frag_id = u16::from_be_bytes([h[4], h[5]]) as u32;
    if fragment == Fragment::Later {
        return Ok(());
    }
    transport(span, pkt)
}

#[inline(always)]
fn ipv6(span: &Span, l3_off: usize, pkt: &mut Packet) -> Result<(), Stop> {
    let Some(h) = span.ptr::<[u8; IPV6_LEN]>(l3_off) else {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
    };
    let h = unsafe { &*h };
    if h[0] >> 4 != 6 {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::BadIpHeader));
    }
    let word = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let payload_len = u16::from_be_bytes([h[4], h[5]]);
    let mut next = h[6];
    let mut off = l3_off + IPV6_LEN;
    let mut fragment = Fragment::Whole;
    let mut frag_id = 0u32;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            // hop-by-hop, routing, destination options: skip (length in 8-byte units).
            0 | 43 | 60 => {
                let Some(ext) = span.read::<[u8; 2]>(off) else {
                    return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
                if off > MAX_L4_OFFSET {
                    return Err(Stop::counted(xdp_action::XDP_PASS, Reason::Ipv6Extension));
                }
            }
            IPV6_FRAGMENT => {
                let Some(f) = span.read::<[u8; 8]>(off) else {
                    return Err(Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp));
                };
                next = f[0];
                let offset = u16::from_be_bytes([f[2], f[3]]) >> 3;
                let more = f[3] & 1 != 0;
                fragment = if offset != 0 {
                    Fragment::Later
                } else if more {
                    Fragment::First
                } else {
                    Fragment::Whole
                };
                frag_id = u32::from_be_bytes([f[4], f[5], f[6], f[7]]);
                off += 8;
                break;
            }
            _ => break,
        }
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP && next != IPPROTO_ICMPV6 {
        if matches!(next, 0 | 43 | 60) {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::Ipv6Extension));
        }
        return Err(Stop::pass());
    }
    pkt.l3 = l3_off as u16;
    pkt.l4 = off as u16;
    pkt.family = FAMILY_V6;
    pkt.proto = next;
    pkt.src = [word(8), word(12), word(16), word(20)];
    pkt.dst = [word(24), word(28), word(32), word(36)];
    pkt.tos = (h[0] << 4) | (h[1] >> 4);
    pkt.l3_len = payload_len.wrapping_add(IPV6_LEN as u16);
    pkt.fragment = fragment;
    pkt.frag_id = frag_id;
    if fragment == Fragment::Later {
        return Ok(());
    }
    transport(span, pkt)
}

/// Reads the ports and TCP flags, or the ICMP type and code, after checking the whole
/// TCP (20 bytes), UDP (8 bytes) or ICMP (8 bytes) header is there.
#[inline(always)]
fn transport(span: &Span, pkt: &mut Packet) -> Result<(), Stop> {
    let truncated = Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedL4);
    let l4_off = pkt.l4_off();
    if l4_off > MAX_L4_OFFSET {
        return Err(truncated);
    }
    if pkt.proto == IPPROTO_TCP {
        let Some(t) = span.read::<[u8; 20]>(l4_off) else {
            return Err(truncated);
        };
        pkt.tcp_flags = t[13];
        pkt.ports = u32::from_ne_bytes([t[0], t[1], t[2], t[3]]);
        pkt.sport = u16::from_ne_bytes([t[0], t[1]]);
        pkt.dport = u16::from_ne_bytes([t[2], t[3]]);
    } else {
        let Some(u) = span.read::<[u8; 8]>(l4_off) else {
            return Err(truncated);
        };
        if pkt.is_icmp() {
            pkt.icmp_type = u[0];
            pkt.icmp_code = u[1];
        } else {
            pkt.ports = u32::from_ne_bytes([u[0], u[1], u[2], u[3]]);
            pkt.sport = u16::from_ne_bytes([u[0], u[1]]);
            pkt.dport = u16::from_ne_bytes([u[2], u[3]]);
        }
    }
    Ok(())
}
