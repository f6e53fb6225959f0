//! Sending a packet on: direct routing (MAC rewrite), IP-in-IP tunnels, and routed
//! delivery (after a `nat` rewrite) with the next hop from the kernel's FIB.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
    EbpfContext,
};
use lb_common::{
    BackendInfo, Reason, Settings, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, IPPROTO_IPIP, IPPROTO_IPV6,
    NEXT_HOP_SLOTS, NEXT_HOP_TTL_NS, NO_BACKEND, TUNNEL_TTL,
};

use crate::{
    csum,
    maps::NEXT_HOPS,
    parse::{ptr_at, Packet, Stop, IPV4_LEN, IPV6_LEN},
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

/// Where a frame goes next: the next hop's MAC, ours on that link, and the interface.
#[derive(Clone, Copy)]
struct Hop {
    dmac: [u8; 6],
    smac: [u8; 6],
    ifindex: u32,
}

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
    let slot = if backend == UNCACHED {
        None
    } else {
        NEXT_HOPS.get_ptr_mut(backend % NEXT_HOP_SLOTS)
    };
    let mut now = 0;
    let mut known = false;
    if let Some(c) = slot {
        now = crate::clock::now();
        let c = unsafe { &*c };
        known = c.backend == backend + 1
            && c.ingress == ingress
            && c.dst == *dst
            && now.wrapping_sub(c.checked) < NEXT_HOP_TTL_NS;
        if known && tot_len <= c.max_len {
            return Ok(Hop {
                dmac: c.dmac,
                smac: c.smac,
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
    let hop = Hop {
        dmac: fib.dmac,
        smac: fib.smac,
        ifindex: fib.ifindex,
    };
    if let Some(c) = slot {
        let c = unsafe { &mut *c };
        // A longer packet on the same route widens the entry; anything else starts it anew.
        if known && c.dmac == hop.dmac && c.smac == hop.smac && c.egress == hop.ifindex {
            c.max_len = tot_len;
        } else {
            c.dst = *dst;
            c.checked = now;
            c.backend = backend + 1;
            c.ingress = ingress;
            c.egress = hop.ifindex;
            c.max_len = tot_len;
            c.dmac = hop.dmac;
            c.smac = hop.smac;
        }
    }
    Ok(hop)
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
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&hop.dmac);
    macs[6..].copy_from_slice(&hop.smac);
    unsafe { eth.write_unaligned(macs) };
    Ok(transmit(ctx, &hop))
}

/// `tun`: wrap the IP packet in an outer IPv4 or IPv6 header addressed to the backend,
/// from the node's tunnel source, with Ethernet addresses of the route's next hop.
/// `id` is the backend's. A separate BPF function (own stack frame); the result comes back
/// packed in one word.
#[inline(never)]
pub fn tunnel(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    hash: u32,
    id: u32,
) -> u32 {
    let Some(settings) = crate::maps::SETTINGS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    Stop::pack(tunnel_inner(
        &crate::parse::context(raw),
        pkt,
        backend,
        hash,
        id,
        settings,
    ))
}

#[inline(always)]
fn tunnel_inner(
    ctx: &XdpContext,
    pkt: &Packet,
    backend: &BackendInfo,
    hash: u32,
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
        ptr_at::<[u8; 4]>(ctx, 12).map(|p| unsafe { p.read_unaligned() })
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
    let mut l2 = [0u8; 14];
    l2[..6].copy_from_slice(&hop.dmac);
    l2[6..12].copy_from_slice(&hop.smac);
    match vlan {
        Some(tag) => {
            l2[12..14].copy_from_slice(&tag[..2]);
            unsafe { eth.write_unaligned(l2) };
            let Some(rest) = ptr_at::<[u8; 4]>(ctx, 14) else {
                return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
            };
            let t = outer_type.to_be_bytes();
            unsafe { rest.write_unaligned([tag[2], tag[3], t[0], t[1]]) };
        }
        None => {
            l2[12..14].copy_from_slice(&outer_type.to_be_bytes());
            unsafe { eth.write_unaligned(l2) };
        }
    }

    if outer_v4 {
        let Some(ip) = ptr_at::<[u16; 10]>(ctx, pkt.l3_off()) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        let s = src[0].to_ne_bytes();
        let d = backend.addr[0].to_ne_bytes();
        let mut h = [
            u16::from_ne_bytes([0x45, pkt.tos]),
            (outer_len as u16).to_be(),
            0,
            0,
            u16::from_ne_bytes([TUNNEL_TTL, inner_proto]),
            0,
            u16::from_ne_bytes([s[0], s[1]]),
            u16::from_ne_bytes([s[2], s[3]]),
            u16::from_ne_bytes([d[0], d[1]]),
            u16::from_ne_bytes([d[2], d[3]]),
        ];
        h[5] = csum::ipv4_header(&h);
        unsafe { ip.write_unaligned(h) };
    } else {
        let Some(ip) = ptr_at::<[u32; 10]>(ctx, pkt.l3_off()) else {
            return Err(Stop::counted(xdp_action::XDP_ABORTED, Reason::EncapFailed));
        };
        // Version 6, the inner traffic class, and a flow label from the flow hash so
        // that backends spread tunnelled flows over their receive queues.
        let first = (6u32 << 28) | ((pkt.tos as u32) << 20) | (hash & 0x000f_ffff);
        let len = pkt.l3_len.to_be_bytes();
        let h = [
            first.to_be(),
            u32::from_ne_bytes([len[0], len[1], inner_proto, TUNNEL_TTL]),
            src[0],
            src[1],
            src[2],
            src[3],
            backend.addr[0],
            backend.addr[1],
            backend.addr[2],
            backend.addr[3],
        ];
        unsafe { ip.write_unaligned(h) };
    }
    Ok(transmit(ctx, &hop))
}
