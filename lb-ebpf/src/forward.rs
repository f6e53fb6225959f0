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
    parse::{ptr_at, Fragment, Packet, Stop, ETH_LEN, IPV4_LEN, IPV6_LEN},
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

    /// A cached next hop's answer.
    #[inline(always)]
    fn of(c: &NextHop) -> Hop {
        let raw = c as *const NextHop as *const u8;
        Hop {
            macs_lo: unsafe { store::load_u64::<MACS>(raw) },
            macs_hi: unsafe { store::load_u32::<{ MACS + 8 }>(raw) },
            ifindex: c.egress,
            same_link: c.same_link != 0,
        }
    }

    /// Writes the two MACs over the first 12 bytes at `eth` (bounds-checked by the caller).
    #[inline(always)]
    unsafe fn write_macs(&self, eth: *mut u8) {
        store::u64_at::<0>(eth, self.macs_lo);
        store::u32_at::<8>(eth, self.macs_hi);
    }
}

// A cached entry's MACs are read and written as words at these offsets (`MACS`), its
// addresses as two words each (`DST`, `SRC`).
const MACS: i16 = 20;
const DST: i16 = 32;
const SRC: i16 = 48;
const _: () = assert!(
    core::mem::offset_of!(NextHop, dmac) == MACS as usize
        && core::mem::offset_of!(NextHop, smac) == MACS as usize + 6
        && core::mem::offset_of!(NextHop, dst) == DST as usize
        && core::mem::offset_of!(NextHop, src) == SRC as usize
);

/// `next_hop`'s `backend` when the destination is not a backend (a `nat` reply's client):
/// the FIB is asked every time.
pub const UNCACHED: u32 = NO_BACKEND;

/// The frame's destination MAC (the node's on the link it came in on) as one word: its
/// first 4 bytes, then the other 2 shifted by 32. What a cached next hop is keyed by in
/// place of the ingress interface, whose index the verifier turns into three dependent
/// loads (`rxq->dev->ifindex`); what the journey compares with the node's MACs. 0 for a
/// frame too short to have one.
#[inline(always)]
pub fn arrival_mac(ctx: &XdpContext) -> u64 {
    let Some(p) = ptr_at::<[u8; 6]>(ctx, 0) else {
        return 0;
    };
    // One asm block: the compiler's own zero extensions of the two loads cost four
    // instructions more.
    let word: u64;
    unsafe {
        core::arch::asm!(
            "{w} = *(u32 *)({p} + 0)",
            "{hi} = *(u16 *)({p} + 4)",
            "{hi} <<= 32",
            "{w} |= {hi}",
            p = in(reg) p as *const u8,
            w = out(reg) word,
            hi = out(reg) _,
            options(readonly, nostack, preserves_flags),
        );
    }
    word
}

/// Whether two addresses (map values' `[u32; 4]`, at least 4-byte aligned) are equal,
/// compared as two 64-bit words.
#[inline(always)]
fn same_addr(a: &[u32; 4], b: &[u32; 4]) -> bool {
    let (a, b) = (a.as_ptr() as *const u8, b.as_ptr() as *const u8);
    unsafe {
        (store::load_u64::<0>(a) ^ store::load_u64::<0>(b))
            | (store::load_u64::<8>(a) ^ store::load_u64::<8>(b))
            == 0
    }
}

/// The kernel's tick count (`jiffies`), low 32 bits: what a cached next hop's `expires` is
/// in.
#[inline(always)]
fn ticks() -> u32 {
    unsafe { aya_ebpf::helpers::bpf_jiffies64() as u32 }
}

/// Whether a cached next hop that `expires` is still fresh at tick `now` (the sign of the
/// difference: right across the 32-bit wrap, for expiries under 2^31 ticks ahead).
#[inline(always)]
fn unexpired(expires: u32, now: u32) -> bool {
    (now.wrapping_sub(expires) as i32) < 0
}

/// A cached next hop's `key` for backend `backend` and a frame that arrived as `arrival`.
#[inline(always)]
fn hop_key(backend: u32, arrival: u64) -> u64 {
    arrival | (u64::from(backend / NEXT_HOP_SLOTS) + 1) << 48
}

/// This CPU's cached next hop for backend `backend` (its address `dst`) for a packet of
/// `tot_len` bytes in a frame that arrived as `arrival` (see `arrival_mac`), if it has a
/// fresh one. Read without the clock's calibration: the entry's expiry is in ticks.
#[inline(always)]
fn fresh_slot(
    backend: u32,
    dst: &[u32; 4],
    tot_len: u32,
    arrival: u64,
) -> Option<&'static NextHop> {
    let c = unsafe { &*NEXT_HOPS.get_ptr(backend % NEXT_HOP_SLOTS)? };
    (c.key == hop_key(backend, arrival)
        && unexpired(c.expires, ticks())
        && same_addr(&c.dst, dst)
        && tot_len <= u32::from(c.max_len))
    .then_some(c)
}

/// [`fresh_slot`]'s answer as a [`Hop`], or `Hop::UNKNOWN`.
#[inline(always)]
fn cached_hop(backend: u32, dst: &[u32; 4], tot_len: u16, arrival: u64) -> Hop {
    fresh_slot(backend, dst, u32::from(tot_len), arrival).map_or(Hop::UNKNOWN, Hop::of)
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
        remember_hop(ctx, backend, src, dst, tot_len, &hop);
    }
    Ok(hop)
}

/// Keeps the FIB's answer `hop` for backend `backend` (asked from `src` to `dst`) in this
/// CPU's slot. The same answer for a longer packet widens the entry; anything else
/// starts it anew.
#[inline(always)]
fn remember_hop(
    ctx: &XdpContext,
    backend: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    tot_len: u16,
    hop: &Hop,
) {
    let Some(slot) = NEXT_HOPS.get_ptr_mut(backend % NEXT_HOP_SLOTS) else {
        return;
    };
    let now = ticks();
    let key = hop_key(backend, arrival_mac(ctx));
    let raw = slot as *mut u8;
    let c = unsafe { &mut *slot };
    let same = c.key == key
        && unexpired(c.expires, now)
        && c.dst == *dst
        && c.src == *src
        && c.egress == hop.ifindex
        && unsafe {
            store::load_u64::<MACS>(raw) == hop.macs_lo
                && store::load_u32::<{ MACS + 8 }>(raw) == hop.macs_hi
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
    let ttl = NEXT_HOP_TTL_NS
        .checked_div(tick)
        .unwrap_or(0)
        .clamp(2, 1 << 30);
    c.key = key;
    c.expires = now.wrapping_add(ttl as u32);
    c.egress = hop.ifindex;
    c.max_len = tot_len;
    c.same_link = hop.same_link as u8;
    c.dst = *dst;
    c.src = *src;
    unsafe {
        store::u64_at::<MACS>(raw, hop.macs_lo);
        store::u32_at::<{ MACS + 8 }>(raw, hop.macs_hi);
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

/// `tun` for the frames `wrap` leaves (tagged ones, and those whose next hop this CPU has
/// not cached): wrap the IP packet in an outer IPv4 or IPv6 header addressed to backend
/// `id`, from the node's tunnel source, with Ethernet addresses of the route's next hop.
/// Only with this CPU's cached next hop; `NO_HOP` (the frame untouched) without one: the
/// caller has `resolve_hop` ask the FIB, and calls again. A separate BPF function (own
/// stack frame, small: the FIB's parameters are on `resolve_hop`'s, called beside it,
/// not under it); the result comes back packed in one word.
#[inline(never)]
fn tunnel(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet, id: u32) -> u32 {
    match crate::flow::serving_by_id(id) {
        Ok(backend) => Stop::pack(tunnel_inner(&crate::parse::context(raw), pkt, backend, id)),
        Err(code) => code,
    }
}

#[inline(always)]
fn tunnel_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    id: u32,
) -> Result<u32, Stop> {
    let outer_v4 = backend.family == FAMILY_V4;
    let outer_len = tunnelled_len(pkt, outer_v4);
    if outer_len > 0xffff {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::EncapFailed));
    }
    // The tunnel source is the cached hop's, as in `wrap`: a frame is sent alike tagged
    // or not. Without a source configured no hop is cached, and `resolve_hop` says so.
    let Some(hop) = fresh_slot(id, &backend.addr, outer_len, arrival_mac(ctx)) else {
        return Ok(NO_HOP);
    };
    let vlan = vlan_tag(ctx, pkt);
    encapsulate(ctx, pkt, outer_v4, hop, outer_len, vlan)
}

/// The frame's VLAN tag (the 4 bytes after the MACs), if it has one.
#[inline(always)]
fn vlan_tag(ctx: &XdpContext, pkt: &Packet) -> Option<u32> {
    if pkt.l3_off() > ETH_LEN {
        ptr_at::<[u8; 4]>(ctx, 12).map(|p| unsafe { store::load_u32::<0>(p as *const u8) })
    } else {
        None
    }
}

/// `tun`'s whole step for `balance`. An untagged frame whose backend's next hop this CPU
/// has cached is wrapped here, inline (`wrap`): a call costs its arguments' and result's
/// trips through the stack and a return through the kernel's return thunk, about 5 ns
/// of a 20 ns step. Otherwise `tunnel` (tagged frames too), and on a cache miss
/// `resolve_hop` and `tunnel` again.
#[inline(always)]
pub fn tunnel_resolving(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    id: u32,
) -> Result<u32, Stop> {
    if let Some(sent) = wrap(ctx, pkt, backend, id) {
        return sent;
    }
    let raw = ctx.ctx;
    let mut sent = tunnel(raw, pkt, id);
    if sent == NO_HOP {
        let resolved = resolve_hop(raw, pkt, backend, id);
        if resolved != RESOLVED {
            return Stop::unpack(resolved);
        }
        sent = tunnel(raw, pkt, id);
        if sent == NO_HOP {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::FibLookupFailed));
        }
    }
    Stop::unpack(sent)
}

/// `tunnel`'s common case, inline in the journey: an untagged frame and this CPU's next
/// hop for the backend cached (with the tunnel source it was asked from). None for
/// anything else (the frame untouched).
#[inline(always)]
fn wrap(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    id: u32,
) -> Option<Result<u32, Stop>> {
    if pkt.l3_off() != ETH_LEN {
        return None;
    }
    let outer_v4 = backend.family == FAMILY_V4;
    // The cached route's length limit is below 2^16: no separate check for that.
    let outer_len = tunnelled_len(pkt, outer_v4);
    let hop = fresh_slot(id, &backend.addr, outer_len, arrival_mac(ctx))?;
    Some(encapsulate(ctx, pkt, outer_v4, hop, outer_len, None))
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

/// Grows the frame by an outer IPv4 (`outer_v4`) or IPv6 header of `outer_len` bytes in
/// all and writes it, from the tunnel source to the backend of the cached next hop `hop`,
/// with that hop's Ethernet header and the frame's VLAN tag `vlan` (read before growing:
/// it moves with the Ethernet header). What the headers hold is read after growing, from
/// the slot, not carried across the helper's call (the stack it would take is the
/// journey's).
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    outer_v4: bool,
    hop: &NextHop,
    outer_len: u32,
    vlan: Option<u32>,
) -> Result<u32, Stop> {
    let grow = if outer_v4 { IPV4_LEN } else { IPV6_LEN };
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as *mut _, -(grow as i32)) } != 0 {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::EncapFailed));
    }
    // One bounds check for the Ethernet header with room for a tag, and the outer header:
    // a grown frame is longer (it holds an inner IP header too, 20 bytes or more).
    let l3 = if vlan.is_some() { ETH_LEN + 4 } else { ETH_LEN };
    let next = Hop::of(hop);
    if outer_v4 {
        let Some(frame) = ptr_at::<[u8; ETH_LEN + 4 + IPV4_LEN]>(ctx, 0) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        let frame = frame as *mut u8;
        unsafe { write_ethernet(frame, &next, vlan, ETH_P_IP.to_be()) };
        let ip = unsafe { frame.add(l3) };
        // Five native-order words: version/IHL, TOS, length (one byte swap of the three);
        // id and fragment (zero); TTL, protocol and the checksum (upper half, filled
        // below); source; destination.
        let mut h = [
            (0x4500_0000 | u32::from(pkt.tos) << 16 | (outer_len & 0xffff)).to_be(),
            0,
            u32::from_ne_bytes([TUNNEL_TTL, inner_proto, 0, 0]),
            hop.src[0],
            hop.dst[0],
        ];
        h[2] |= u32::from(csum::ipv4_header(&h)) << 16;
        unsafe {
            store::u64_at::<0>(ip, u64::from(h[0]) | u64::from(h[1]) << 32);
            store::u64_at::<8>(ip, u64::from(h[2]) | u64::from(h[3]) << 32);
            store::u32_at::<16>(ip, h[4]);
        }
    } else {
        let Some(frame) = ptr_at::<[u8; ETH_LEN + 4 + IPV6_LEN]>(ctx, 0) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        let frame = frame as *mut u8;
        unsafe { write_ethernet(frame, &next, vlan, ETH_P_IPV6.to_be()) };
        let ip = unsafe { frame.add(l3) };
        // Version 6, the inner traffic class, and a flow label from the flow hash.
        let first = (6u32 << 28) | ((pkt.tos as u32) << 20) | flow_label(pkt);
        let len = pkt.l3_len.to_be_bytes();
        let second = u32::from_ne_bytes([len[0], len[1], inner_proto, TUNNEL_TTL]);
        let c = hop as *const NextHop as *const u8;
        // The addresses as the slot's words, in the order they are on the wire.
        unsafe {
            store::u64_at::<0>(ip, u64::from(first.to_be()) | u64::from(second) << 32);
            store::u64_at::<8>(ip, store::load_u64::<SRC>(c));
            store::u64_at::<16>(ip, store::load_u64::<{ SRC + 8 }>(c));
            store::u64_at::<24>(ip, store::load_u64::<DST>(c));
            store::u64_at::<32>(ip, store::load_u64::<{ DST + 8 }>(c));
        }
    }
    Ok(transmit(&next))
}

/// Writes an Ethernet header at `frame` (bounds-checked by the caller for 18 bytes): the
/// next hop's MACs, the VLAN tag if any, and the EtherType `type_be` (network order).
#[inline(always)]
unsafe fn write_ethernet(frame: *mut u8, next: &Hop, vlan: Option<u32>, type_be: u16) {
    next.write_macs(frame);
    match vlan {
        Some(tag) => {
            store::u32_at::<12>(frame, tag);
            store::u16_at::<16>(frame, type_be);
        }
        None => store::u16_at::<12>(frame, type_be),
    }
}
