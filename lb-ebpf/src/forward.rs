//! Sending a packet on: direct routing (MAC rewrite), IP-in-IP tunnels, and routed
//! delivery (after a `nat` rewrite) with the next hop from the kernel's FIB.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    hash, BackendInfo, NextHop, Reason, Settings, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, IPPROTO_IPIP,
    IPPROTO_IPV6, NEXT_HOP_SLOTS, NEXT_HOP_TTL_NS, NO_BACKEND, TUNNEL_TTL,
};

use crate::{
    csum,
    maps::{FLOW_TABLE, NEXT_HOPS},
    parse::{ptr_at, Fragment, Packet, Stop, IPV4_LEN, IPV6_LEN},
    store,
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const FIB_SUCCESS: i64 = 0;

/// `dr`: the backend holds the VIP itself and shares our L2 segment, so only the
/// Ethernet addresses change. The new source is the address the frame was sent to (ours).
#[inline(always)]
pub fn direct(ctx: &XdpContext, backend: &BackendInfo) -> Result<u32, Stop> {
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::TruncatedEthernet,
        ));
    };
    // Word loads and stores. Through a 12-byte copy on the stack, LLVM wrote the frame
    // byte by byte and read back a word it had stored in halves: a failed store
    // forward, ~6 ns of a frame through veth. The frame's words need no alignment (x86,
    // and the verifier allows it); the MAC's are aligned in `BackendInfo`.
    let mac = &backend.mac;
    let mac_lo = u32::from_ne_bytes([mac[0], mac[1], mac[2], mac[3]]);
    let mac_hi = u16::from_ne_bytes([mac[4], mac[5]]);
    unsafe {
        core::arch::asm!(
            "{lo} = *(u32 *)({p} + 0)",
            "{hi} = *(u16 *)({p} + 4)",
            "*(u32 *)({p} + 0) = {mac_lo}",
            "*(u16 *)({p} + 4) = {mac_hi}",
            "*(u32 *)({p} + 6) = {lo}",
            "*(u16 *)({p} + 10) = {hi}",
            p = in(reg) eth as *mut u8,
            mac_lo = in(reg) u64::from(mac_lo),
            mac_hi = in(reg) u64::from(mac_hi),
            lo = out(reg) _,
            hi = out(reg) _,
            options(nostack, preserves_flags),
        );
    }
    Ok(xdp_action::XDP_TX)
}

/// Where a frame goes next: the next hop's MAC then ours on that link (the first 12 bytes
/// of its Ethernet header, as two native-order words), the interface (0: not known), and
/// whether that is the one the frame came in on.
#[derive(Clone, Copy)]
struct Hop {
    macs_lo: u64,
    macs_hi: u32,
    ifindex: u32,
    same_link: bool,
}

impl Hop {
    const UNKNOWN: Hop = Hop {
        macs_lo: 0,
        macs_hi: 0,
        ifindex: 0,
        same_link: false,
    };

    /// Writes the two MACs over the first 12 bytes at `eth` (bounds-checked by the caller).
    #[inline(always)]
    unsafe fn write_macs(&self, eth: *mut u8) {
        store::u64_at::<0>(eth, self.macs_lo);
        store::u32_at::<8>(eth, self.macs_hi);
    }
}

// `cached_hop` reads a cached entry's MACs as words at these offsets.
const _: () = assert!(
    core::mem::offset_of!(NextHop, dmac) == 44 && core::mem::offset_of!(NextHop, smac) == 50
);

/// `next_hop`'s `backend` when the destination is not a backend (a `nat` reply's client):
/// the FIB is asked every time.
pub const UNCACHED: u32 = NO_BACKEND;

/// The frame's destination MAC (the node's on the link it came in on) as one word: its
/// first 4 bytes, then the other 2 shifted by 32. What a cached next hop is keyed by in
/// place of the ingress interface, whose index the verifier turns into three dependent
/// loads (`rxq->dev->ifindex`). 0 for a frame too short to have one.
#[inline(always)]
fn arrival_mac(ctx: &XdpContext) -> u64 {
    match ptr_at::<[u8; 6]>(ctx, 0) {
        Some(p) => unsafe {
            let p = p as *const u8;
            u64::from(store::load_u32::<0>(p)) | u64::from(store::load_u16::<4>(p)) << 32
        },
        None => 0,
    }
}

/// This CPU's cached next hop for backend `backend` (its address `dst`) for a packet of
/// `tot_len` bytes in a frame that arrived as `arrival` (see `arrival_mac`), or
/// `Hop::UNKNOWN`. Read without the clock's calibration: the entry's expiry is in ticks.
#[inline(always)]
fn cached_hop(backend: u32, dst: &[u32; 4], tot_len: u16, arrival: u64) -> Hop {
    let Some(slot) = NEXT_HOPS.get_ptr(backend % NEXT_HOP_SLOTS) else {
        return Hop::UNKNOWN;
    };
    let c = unsafe { &*slot };
    let fresh = unsafe { aya_ebpf::helpers::bpf_jiffies64() } < c.expires;
    if c.backend == backend.wrapping_add(1)
        && c.arrival == arrival
        && c.dst == *dst
        && fresh
        && tot_len <= c.max_len
    {
        let raw = slot as *const u8;
        return Hop {
            macs_lo: unsafe { store::load_u64::<44>(raw) },
            macs_hi: unsafe { store::load_u32::<52>(raw) },
            ifindex: c.egress,
            same_link: c.same_link != 0,
        };
    }
    Hop::UNKNOWN
}

/// The kernel's next hop towards `dst` (of family `v4`), as seen from the ingress
/// interface. Fails (passing the packet to the kernel, counted) without a route or a
/// resolved neighbour, or with forwarding disabled on the interface. Towards a backend
/// (`backend` its id) the answer is kept in this CPU's `NEXT_HOPS` slot for
/// `NEXT_HOP_TTL_NS` (`cached_hop` reads it): the lookup is the dearest step of `tun` and
/// `nat` forwarding (IPv6 most). Failures are not cached.
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    v4: bool,
    src: &[u32; 4],
    dst: &[u32; 4],
    tot_len: u16,
    backend: u32,
) -> Result<Hop, Stop> {
    let ingress = ingress_ifindex(ctx);
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.ifindex = ingress;
    fib.__bindgen_anon_1.tot_len = tot_len;
    if v4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = src[0];
        fib.__bindgen_anon_4.ipv4_dst = dst[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = *src;
        fib.__bindgen_anon_4.ipv6_dst = *dst;
    }
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.as_ptr(),
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc != FIB_SUCCESS {
        return Err(Stop::counted(xdp_action::XDP_PASS, Reason::FibLookupFailed));
    }
    let (macs_lo, macs_hi) = fib_macs(&fib);
    let hop = Hop {
        macs_lo,
        macs_hi,
        ifindex: fib.ifindex,
        same_link: fib.ifindex == ingress,
    };
    if backend != UNCACHED {
        remember_hop(ctx, backend, dst, tot_len, &hop);
    }
    Ok(hop)
}

/// Keeps the FIB's answer `hop` for backend `backend` in this CPU's slot. The same answer
/// for a longer packet widens the entry; anything else starts it anew.
#[inline(always)]
fn remember_hop(ctx: &XdpContext, backend: u32, dst: &[u32; 4], tot_len: u16, hop: &Hop) {
    let Some(slot) = NEXT_HOPS.get_ptr_mut(backend % NEXT_HOP_SLOTS) else {
        return;
    };
    let now = unsafe { aya_ebpf::helpers::bpf_jiffies64() };
    let arrival = arrival_mac(ctx);
    let raw = slot as *mut u8;
    let c = unsafe { &mut *slot };
    let same = c.backend == backend.wrapping_add(1)
        && c.arrival == arrival
        && c.dst == *dst
        && now < c.expires
        && c.egress == hop.ifindex
        && unsafe {
            store::load_u64::<44>(raw) == hop.macs_lo && store::load_u32::<52>(raw) == hop.macs_hi
        };
    if same {
        if tot_len > c.max_len {
            c.max_len = tot_len;
        }
        return;
    }
    // The TTL in ticks: at least two, so that the answer serves the packet that asked
    // even if the tick count moves on before `tunnel` reads it.
    let tick = FLOW_TABLE.get(0).map_or(0, |t| t.tick_ns);
    let ttl = NEXT_HOP_TTL_NS.checked_div(tick).unwrap_or(0).max(2);
    c.dst = *dst;
    c.expires = now + ttl;
    c.arrival = arrival;
    c.backend = backend.wrapping_add(1);
    c.egress = hop.ifindex;
    c.max_len = tot_len;
    c.same_link = hop.same_link as u8;
    unsafe {
        store::u64_at::<44>(raw, hop.macs_lo);
        store::u32_at::<52>(raw, hop.macs_hi);
    }
}

/// The FIB's answer's MACs as a [`Hop`]'s words, read 16 bits at a time: its MAC fields
/// start at even offsets of a 4-byte aligned struct. Byte by byte, with each byte kept
/// for the cache, they made `tunnel`'s stack frame too large to call.
#[inline(always)]
fn fib_macs(fib: &FibParams) -> (u64, u32) {
    const _: () = assert!(
        core::mem::align_of::<FibParams>() >= 2
            && core::mem::offset_of!(FibParams, dmac) % 2 == 0
            && core::mem::offset_of!(FibParams, smac) % 2 == 0
    );
    let (d, s) = (
        fib.dmac.as_ptr() as *const u16,
        fib.smac.as_ptr() as *const u16,
    );
    // SAFETY: three aligned u16 reads inside each 6-byte field.
    let word = |p: *const u16, i: usize| unsafe { u64::from(p.add(i).read()) };
    (
        word(d, 0) | word(d, 1) << 16 | word(d, 2) << 32 | word(s, 0) << 48,
        (word(s, 1) | word(s, 2) << 16) as u32,
    )
}

/// The interface the frame arrived on (`xdp_md.ingress_ifindex`, offset 12). Written as
/// one instruction: left to itself the compiler may compute `ctx + 12` once and reuse it,
/// and the verifier refuses any access through a derived context pointer.
#[inline(always)]
fn ingress_ifindex(ctx: &XdpContext) -> u32 {
    let v: u64;
    unsafe {
        core::arch::asm!("{0} = *(u32 *)({1} + 12)", out(reg) v, in(reg) ctx.ctx, options(readonly, nostack, preserves_flags));
    }
    v as u32
}

/// Sends the frame out of the next hop's interface: back out of the one it came in on
/// (XDP_TX) or another (redirect).
#[inline(always)]
fn transmit(hop: &Hop) -> u32 {
    if hop.same_link {
        xdp_action::XDP_TX
    } else {
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Routed delivery of the (already rewritten) packet to `dst`, same family: backend
/// `backend`, or `UNCACHED`. A separate BPF function (own stack frame); the result comes
/// back packed in one word.
#[inline(never)]
pub fn route(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    dst: &[u32; 4],
    backend: u32,
) -> u32 {
    Stop::pack(route_inner(&crate::parse::context(raw), pkt, dst, backend))
}

#[inline(always)]
fn route_inner(ctx: &XdpContext, pkt: &Packet, dst: &[u32; 4], backend: u32) -> Result<u32, Stop> {
    let src = if pkt.family == FAMILY_V4 {
        [0u32; 4]
    } else {
        pkt.src
    };
    let mut hop = Hop::UNKNOWN;
    if backend != UNCACHED {
        hop = cached_hop(backend, dst, pkt.l3_len, arrival_mac(ctx));
    }
    if hop.ifindex == 0 {
        hop = next_hop(ctx, pkt.family == FAMILY_V4, &src, dst, pkt.l3_len, backend)?;
    }
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::TruncatedEthernet,
        ));
    };
    unsafe { hop.write_macs(eth as *mut u8) };
    Ok(transmit(&hop))
}

/// The outer IPv6 header's flow label (`lb_common::hash::flow_label`; the datagram id for
/// later fragments), so that backends spread tunnelled flows over their receive queues.
#[inline(always)]
pub fn flow_label(pkt: &Packet) -> u32 {
    if pkt.fragment == Fragment::Later {
        pkt.frag_id & 0x000f_ffff
    } else if pkt.is_icmp() {
        hash::flow_label(&pkt.dst, &pkt.src, 0, pkt.proto)
    } else {
        hash::flow_label(&pkt.src, &pkt.dst, pkt.ports, pkt.proto)
    }
}

/// `tun`: wrap the IP packet in an outer IPv4 or IPv6 header addressed to the backend,
/// from the node's tunnel source, with Ethernet addresses of the route's next hop.
/// `label` is the outer IPv6 header's flow label ([`flow_label`]), `id` the backend's.
/// Only with this CPU's cached next hop: an established flow's packet then costs a MAC
/// rewrite's path plus `bpf_xdp_adjust_head` and the header's stores. `NO_HOP` (the
/// frame untouched) without one: the caller has `resolve_hop` ask the FIB, and calls
/// again. A separate BPF function (own stack frame, small: the FIB's parameters are on
/// `resolve_hop`'s, called beside it, not under it); the result comes back packed in one
/// word.
#[inline(never)]
fn tunnel(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    id: u32,
) -> u32 {
    Stop::pack(tunnel_inner(
        &crate::parse::context(raw),
        pkt,
        backend,
        label,
        id,
    ))
}

#[inline(always)]
fn tunnel_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    id: u32,
) -> Result<u32, Stop> {
    let Some(settings) = crate::maps::SETTINGS.get(0) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let outer_v4 = backend.family == FAMILY_V4;
    let outer_len = tunnelled_len(pkt, outer_v4);
    if outer_len > 0xffff {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::EncapFailed));
    }
    if tunnel_source(settings, outer_v4).is_none() {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::NoTunnelSource));
    }
    let hop = cached_hop(id, &backend.addr, outer_len as u16, arrival_mac(ctx));
    if hop.ifindex == 0 {
        return Ok(NO_HOP);
    }
    encapsulate(ctx, pkt, backend, label, &hop, settings, outer_len)
}

/// `tun`'s whole step for `balance`: `tunnel`, and on a cache miss `resolve_hop` and
/// `tunnel` again.
#[inline(always)]
pub fn tunnel_resolving(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    id: u32,
) -> Result<u32, Stop> {
    let mut sent = tunnel(raw, pkt, backend, label, id);
    if sent == NO_HOP {
        let resolved = resolve_hop(raw, pkt, backend, id);
        if resolved != RESOLVED {
            return Stop::unpack(resolved);
        }
        sent = tunnel(raw, pkt, backend, label, id);
        if sent == NO_HOP {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::FibLookupFailed));
        }
    }
    Stop::unpack(sent)
}

/// `tunnel`'s verdict when this CPU has no next hop cached for the backend (not an XDP
/// action).
const NO_HOP: u32 = 0xff;
/// `resolve_hop`'s answer when the next hop is now in this CPU's cache.
const RESOLVED: u32 = u32::MAX;

/// Asks the FIB for the next hop towards `tun` backend `id` (`pkt` tunnelled to it) from
/// the node's tunnel source and caches its answer (`RESOLVED`), or says why not (a packed
/// `Stop`). A separate BPF function: the FIB's parameters are on its frame alone.
#[inline(never)]
fn resolve_hop(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    id: u32,
) -> u32 {
    let Some(settings) = crate::maps::SETTINGS.get(0) else {
        return Stop::pack(Ok(xdp_action::XDP_PASS));
    };
    let outer_v4 = backend.family == FAMILY_V4;
    let outer_len = tunnelled_len(pkt, outer_v4).min(0xffff) as u16;
    let Some(src) = tunnel_source(settings, outer_v4) else {
        return Stop::pack(Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::NoTunnelSource,
        )));
    };
    let ctx = crate::parse::context(raw);
    match next_hop(&ctx, outer_v4, &src, &backend.addr, outer_len, id) {
        Ok(_) => RESOLVED,
        Err(stop) => Stop::pack(Err(stop)),
    }
}

/// `pkt`'s length once wrapped in an outer IPv4 (`outer_v4`) or IPv6 header.
#[inline(always)]
fn tunnelled_len(pkt: &Packet, outer_v4: bool) -> u32 {
    pkt.l3_len as u32 + if outer_v4 { IPV4_LEN } else { IPV6_LEN } as u32
}

/// The node's tunnel source of the outer family, if configured.
#[inline(always)]
fn tunnel_source(settings: &Settings, outer_v4: bool) -> Option<[u32; 4]> {
    if outer_v4 {
        (settings.tunnel_src_v4 != 0).then_some([settings.tunnel_src_v4, 0, 0, 0])
    } else {
        (settings.tunnel_src_v6 != [0; 4]).then_some(settings.tunnel_src_v6)
    }
}

/// Grows the frame by the outer header and writes it, with the Ethernet header of `hop`.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    hop: &Hop,
    settings: &Settings,
    outer_len: u32,
) -> Result<u32, Stop> {
    let outer_v4 = backend.family == FAMILY_V4;
    let grow = if outer_v4 { IPV4_LEN } else { IPV6_LEN };
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    // Keep the VLAN tag (if any) before growing: it moves with the Ethernet header.
    let vlan = if pkt.l3_off() > 14 {
        ptr_at::<[u8; 4]>(ctx, 12).map(|p| unsafe { store::load_u32::<0>(p as *const u8) })
    } else {
        None
    };
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(grow as i32)) } != 0 {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::EncapFailed));
    }
    let outer_type = if outer_v4 { ETH_P_IP } else { ETH_P_IPV6 };
    let Some(eth) = ptr_at::<[u8; 14]>(ctx, 0) else {
        return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
    };
    let eth = eth as *mut u8;
    unsafe { hop.write_macs(eth) };
    let type_be = outer_type.to_be();
    match vlan {
        Some(tag) => {
            let Some(rest) = ptr_at::<[u8; 6]>(ctx, 12) else {
                return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
            };
            let rest = rest as *mut u8;
            unsafe {
                store::u32_at::<0>(rest, tag);
                store::u16_at::<4>(rest, type_be);
            }
        }
        None => unsafe { store::u16_at::<12>(eth, type_be) },
    }

    if outer_v4 {
        let Some(ip) = ptr_at::<[u8; 20]>(ctx, pkt.l3_off()) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        let len = (outer_len as u16).to_be_bytes();
        // Five native-order words: version/IHL, TOS, length; id and fragment (zero);
        // TTL, protocol and the checksum (upper half, filled below); source; destination.
        let mut h = [
            u32::from_ne_bytes([0x45, pkt.tos, len[0], len[1]]),
            0,
            u32::from_ne_bytes([TUNNEL_TTL, inner_proto, 0, 0]),
            settings.tunnel_src_v4,
            backend.addr[0],
        ];
        h[2] |= u32::from(csum::ipv4_header(&h)) << 16;
        let ip = ip as *mut u8;
        unsafe {
            store::u64_at::<0>(ip, u64::from(h[0]) | u64::from(h[1]) << 32);
            store::u64_at::<8>(ip, u64::from(h[2]) | u64::from(h[3]) << 32);
            store::u32_at::<16>(ip, h[4]);
        }
    } else {
        let Some(ip) = ptr_at::<[u8; 40]>(ctx, pkt.l3_off()) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        // Version 6, the inner traffic class, and a flow label from the flow hash.
        let first = (6u32 << 28) | ((pkt.tos as u32) << 20) | label;
        let len = pkt.l3_len.to_be_bytes();
        let second = u32::from_ne_bytes([len[0], len[1], inner_proto, TUNNEL_TTL]);
        let pair = |a: u32, b: u32| u64::from(a) | u64::from(b) << 32;
        let (s, d, ip) = (&settings.tunnel_src_v6, &backend.addr, ip as *mut u8);
        unsafe {
            store::u64_at::<0>(ip, pair(first.to_be(), second));
            store::u64_at::<8>(ip, pair(s[0], s[1]));
            store::u64_at::<16>(ip, pair(s[2], s[3]));
            store::u64_at::<24>(ip, pair(d[0], d[1]));
            store::u64_at::<32>(ip, pair(d[2], d[3]));
        }
    }
    Ok(transmit(hop))
}
