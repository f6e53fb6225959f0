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
    maps::NEXT_HOPS,
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
/// of its Ethernet header, as two native-order words), and the interface.
#[derive(Clone, Copy)]
struct Hop {
    macs_lo: u64,
    macs_hi: u32,
    ifindex: u32,
}

impl Hop {
    /// Writes the two MACs over the first 12 bytes at `eth` (bounds-checked by the caller).
    #[inline(always)]
    unsafe fn write_macs(&self, eth: *mut u8) {
        store::u64_at::<0>(eth, self.macs_lo);
        store::u32_at::<8>(eth, self.macs_hi);
    }
}

// `next_hop` reads a cached entry's MACs as words at these offsets.
const _: () = assert!(
    core::mem::offset_of!(NextHop, dmac) == 38 && core::mem::offset_of!(NextHop, smac) == 44
);

/// `next_hop`'s `backend` when the destination is not a backend (a `nat` reply's client):
/// the FIB is asked every time.
pub const UNCACHED: u32 = NO_BACKEND;

/// The kernel's next hop towards `dst` (of family `v4`), as seen from the ingress
/// interface. Fails (passing the packet to the kernel, counted) without a route or a
/// resolved neighbour, or with forwarding disabled on the interface. Towards a backend
/// (`backend` its id) the FIB's answer is reused from this CPU's `NEXT_HOPS` slot while
/// it is younger than `NEXT_HOP_TTL_NS`, for the same destination and ingress interface,
/// and for packets no longer than one the FIB accepted (its MTU check): the lookup is the
/// dearest step of `tun` and `nat` forwarding (IPv6 most). Failures are not cached.
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
    // A null pointer rather than `None`: LLVM spilled the undefined payload of `None`
    // on the uncached path, which the verifier refuses to read.
    let slot = if backend == UNCACHED {
        core::ptr::null_mut()
    } else {
        NEXT_HOPS
            .get_ptr_mut(backend % NEXT_HOP_SLOTS)
            .unwrap_or(core::ptr::null_mut())
    };
    let mut now = 0;
    let mut known = false;
    if !slot.is_null() {
        now = crate::clock::now();
        let c = unsafe { &*slot };
        known = c.backend == backend + 1
            && c.ingress == ingress
            && c.dst == *dst
            && now.wrapping_sub(c.checked) < NEXT_HOP_TTL_NS;
        if known && tot_len <= c.max_len {
            let raw = slot as *const u8;
            return Ok(Hop {
                macs_lo: unsafe { store::load_u64::<38>(raw) },
                macs_hi: unsafe { store::load_u32::<46>(raw) },
                ifindex: c.egress,
            });
        }
    }
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
    };
    if !slot.is_null() {
        let raw = slot as *mut u8;
        let c = unsafe { &mut *slot };
        // A longer packet on the same route widens the entry; anything else starts it anew.
        let same = unsafe {
            store::load_u64::<38>(raw) == macs_lo && store::load_u32::<46>(raw) == macs_hi
        };
        if known && same && c.egress == hop.ifindex {
            c.max_len = tot_len;
        } else {
            c.dst = *dst;
            c.checked = now;
            c.backend = backend + 1;
            c.ingress = ingress;
            c.egress = hop.ifindex;
            c.max_len = tot_len;
            unsafe {
                store::u64_at::<38>(raw, macs_lo);
                store::u32_at::<46>(raw, macs_hi);
            }
        }
    }
    Ok(hop)
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
fn transmit(ctx: &XdpContext, hop: &Hop) -> u32 {
    if hop.ifindex == ingress_ifindex(ctx) {
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
    let hop = next_hop(ctx, pkt.family == FAMILY_V4, &src, dst, pkt.l3_len, backend)?;
    let Some(eth) = ptr_at::<[u8; 12]>(ctx, 0) else {
        return Err(Stop::counted(
            xdp_action::XDP_DROP,
            Reason::TruncatedEthernet,
        ));
    };
    unsafe { hop.write_macs(eth as *mut u8) };
    Ok(transmit(ctx, &hop))
}

/// `tun`: wrap the IP packet in an outer IPv4 or IPv6 header addressed to the backend,
/// from the node's tunnel source, with Ethernet addresses of the route's next hop.
/// `label` is the outer IPv6 header's flow label ([`flow_label`]), `id` the backend's.
/// A separate BPF function (own stack frame); the result comes back packed in one word.
#[inline(never)]
pub fn tunnel(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    id: u32,
) -> u32 {
    let Some(settings) = crate::maps::SETTINGS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    Stop::pack(tunnel_inner(
        &crate::parse::context(raw),
        pkt,
        backend,
        label,
        id,
        settings,
    ))
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

#[inline(always)]
fn tunnel_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    label: u32,
    id: u32,
    settings: &Settings,
) -> Result<u32, Stop> {
    let outer_v4 = backend.family == FAMILY_V4;
    let grow = if outer_v4 { IPV4_LEN } else { IPV6_LEN };
    let inner_proto = if pkt.family == FAMILY_V4 {
        IPPROTO_IPIP
    } else {
        IPPROTO_IPV6
    };
    let outer_len = pkt.l3_len as u32 + grow as u32;
    if outer_len > 0xffff {
        return Err(Stop::counted(xdp_action::XDP_DROP, Reason::EncapFailed));
    }
    let src = if outer_v4 {
        if settings.tunnel_src_v4 == 0 {
            return Err(Stop::counted(xdp_action::XDP_DROP, Reason::NoTunnelSource));
        }
        [settings.tunnel_src_v4, 0, 0, 0]
    } else {
        if settings.tunnel_src_v6 == [0; 4] {
            return Err(Stop::counted(xdp_action::XDP_DROP, Reason::NoTunnelSource));
        }
        settings.tunnel_src_v6
    };
    let hop = next_hop(ctx, outer_v4, &src, &backend.addr, outer_len as u16, id)?;

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
            src[0],
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
        let (d, ip) = (&backend.addr, ip as *mut u8);
        unsafe {
            store::u64_at::<0>(ip, pair(first.to_be(), second));
            store::u64_at::<8>(ip, pair(src[0], src[1]));
            store::u64_at::<16>(ip, pair(src[2], src[3]));
            store::u64_at::<24>(ip, pair(d[0], d[1]));
            store::u64_at::<32>(ip, pair(d[2], d[3]));
        }
    }
    Ok(transmit(ctx, &hop))
}
