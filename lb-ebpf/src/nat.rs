//! `nat` forwarding: the destination becomes the backend's address and port on the way
//! in; on the way back (the backend routes its replies through this node) the source
//! becomes the VIP and service port again, found through the reply-direction table.

use core::ptr::read_volatile;

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    BackendInfo, NatEntry, NatKey, Reason, BYPASS_NAT_FULL, FAMILY_V6, IPPROTO_TCP, IPPROTO_UDP,
    NAT_ESTABLISHED, SEEN_MASK, SEEN_SHIFT,
};

use crate::{
    csum::Delta,
    parse::{ptr_at, Fragment, Packet, Stop},
    sets,
};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// Rewrites one end's address (and port, unless `port` is 0 or the packet is a later
/// fragment), updating the IPv4 header checksum and the TCP/UDP checksum incrementally.
/// A zero IPv4 UDP checksum (none computed) stays zero.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    side: Side,
    addr: &[u32; 4],
    port: u16,
) -> Result<(), Stop> {
    let bad = || Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedIp);
    let v6 = pkt.family == FAMILY_V6;
    let old_addr = if side == Side::Source {
        pkt.src
    } else {
        pkt.dst
    };
    let mut addr_delta = Delta::new();
    addr_delta.addr(&old_addr, addr, v6);

    if v6 {
        let off = pkt.l3_off() + if side == Side::Source { 8 } else { 24 };
        let p = ptr_at::<[u32; 4]>(ctx, off).ok_or_else(bad)?;
        unsafe { p.write_unaligned(*addr) };
    } else {
        let off = pkt.l3_off() + if side == Side::Source { 12 } else { 16 };
        let p = ptr_at::<u32>(ctx, off).ok_or_else(bad)?;
        unsafe { p.write_unaligned(addr[0]) };
        let c = ptr_at::<u16>(ctx, pkt.l3_off() + 10).ok_or_else(bad)?;
        unsafe { c.write_unaligned(addr_delta.apply(c.read_unaligned())) };
    }
    if pkt.fragment == Fragment::Later {
        return Ok(());
    }

    let mut l4_delta = addr_delta;
    let old_port = if side == Side::Source {
        pkt.sport
    } else {
        pkt.dport
    };
    let new_port = if port == 0 { old_port } else { port };
    if new_port != old_port {
        let off = pkt.l4_off() + if side == Side::Source { 0 } else { 2 };
        if off > crate::parse::MAX_L4_OFFSET {
            return Err(bad());
        }
        let p = ptr_at::<u16>(ctx, off).ok_or_else(bad)?;
        unsafe { p.write_unaligned(new_port) };
        l4_delta.word(old_port, new_port);
    }
    let check_off = match pkt.proto {
        IPPROTO_TCP => pkt.l4_off() + 16,
        IPPROTO_UDP => pkt.l4_off() + 6,
        _ => return Ok(()),
    };
    if check_off > crate::parse::MAX_L4_OFFSET + 16 {
        return Err(bad());
    }
    let c = ptr_at::<u16>(ctx, check_off).ok_or_else(bad)?;
    let old = unsafe { c.read_unaligned() };
    if pkt.proto == IPPROTO_UDP && old == 0 && !v6 {
        return Ok(());
    }
    let mut new = l4_delta.apply(old);
    if pkt.proto == IPPROTO_UDP && new == 0 {
        new = 0xffff;
    }
    unsafe { c.write_unaligned(new) };
    Ok(())
}

/// `nat`'s whole step for the journey: `to_backend` (unless `pkt` is an ICMP error,
/// which `icmp::handle` rewrote already), then `forward::route` to backend `id`. One call
/// from the journey, whose own code for it is then only this call: written there, the
/// two calls' arguments and results took the journey's registers and stack about 5 ns of
/// a `nat` packet, with the inline `tun` step beside them. Returns a packed `Stop`.
#[inline(never)]
pub fn forward(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet, id: u32) -> u32 {
    let backend = match crate::flow::serving_by_id(id) {
        Ok(backend) => backend,
        Err(code) => return code,
    };
    if !pkt.is_icmp() {
        if let Err(code) = to_backend(raw, pkt, backend) {
            return code;
        }
    }
    crate::forward::route(raw, pkt, &backend.addr, id)
}

/// Forward direction: remember the reply direction, rewrite the destination to the
/// backend's address and port. The caller routes the packet. A separate BPF function;
/// `Err` carries a packed `Stop`.
#[inline(never)]
pub fn to_backend(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
) -> Result<(), u32> {
    let ctx = &crate::parse::context(raw);
    let now = crate::clock::now();
    if pkt.fragment != Fragment::Later {
        let key = NatKey {
            backend: backend.addr,
            client: pkt.src,
            backend_port: if backend.port == 0 {
                pkt.dport
            } else {
                backend.port
            },
            client_port: pkt.sport,
            proto: pkt.proto,
            family: pkt.family,
            _pad: [0; 2],
        };
        remember_reply(&key, pkt, (now >> SEEN_SHIFT) as u16);
    }
    rewrite(ctx, pkt, Side::Destination, &backend.addr, backend.port).map_err(|s| s.encode())
}

/// `reply`'s answer when it rewrote a reply that the caller must now route.
pub const REWRITTEN: u32 = 0xff;

/// Reply direction: a packet that is not for a VIP may be a backend's reply to a `nat`
/// flow; if the table knows it, put the VIP back as source (`REWRITTEN`: the caller routes
/// it to the client). Anything else is passed untouched.
#[inline(never)]
pub fn reply(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet) -> u32 {
    Stop::pack(reply_inner(raw, pkt))
}

#[inline(always)]
fn reply_inner(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet) -> Result<u32, Stop> {
    let ctx = &crate::parse::context(raw);
    if pkt.fragment == Fragment::Later || pkt.is_icmp() {
        return Ok(xdp_action::XDP_PASS);
    }
    let key = NatKey {
        backend: pkt.src,
        client: pkt.dst,
        backend_port: pkt.sport,
        client_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    let Some((_, r)) = find_reply(&key) else {
        return Ok(xdp_action::XDP_PASS);
    };
    rewrite(ctx, pkt, Side::Source, &r.vip, r.vip_port)?;
    Ok(REWRITTEN)
}

/// A reply's entry and a consistent copy of it.
#[inline(always)]
fn find_reply(key: &NatKey) -> Option<(*mut NatEntry, NatEntry)> {
    sets::lookup::<NatEntry>(&key.words())
}

/// Keeps the reply direction of a forward packet: marks its entry seen, and established
/// from its second packet on (at most a store per packet, one a second), or writes it if
/// missing or stale (another VIP, after a reload). With `conntrack.flood_protection` a
/// new flow's entry never takes an established flow's place (it is refused, counted:
/// `BYPASS_NAT_FULL`), as in the connection table.
#[inline(always)]
fn remember_reply(key: &NatKey, pkt: &Packet, now: u16) {
    let now = now & SEEN_MASK;
    if let Some((entry, r)) = find_reply(key) {
        if r.vip == pkt.dst && r.vip_port == pkt.dport {
            if r.seen != now | NAT_ESTABLISHED {
                // Only `seen`'s two bytes: a writer's sequence beside them is untouched.
                unsafe { (*entry).seen = now | NAT_ESTABLISHED };
            }
            return;
        }
    }
    let words = key.words();
    let Some(set) = sets::set_of::<NatEntry>(&words) else {
        return;
    };
    let protect = crate::maps::SETTINGS
        .get(0)
        .is_some_and(|s| s.flood_protection != 0);
    let evictable = if protect { 1 << 16 } else { 0 };
    // Least recently seen first (`seen` wraps: ages modulo 2^15), established entries
    // after every other (empty ways are taken first, by `sets::claim`). Without a branch
    // (see `flow::record`).
    let age = |e: *const sets::Entry| {
        let w = e as *const u64;
        // Word 7: `vip_port`, `seen`, then the write sequence.
        let seen = (unsafe { read_volatile(w.add(7)) } >> 16) & 0xffff;
        let established = sets::opaque(seen >> 15) & 1;
        let idle = u64::from(now).wrapping_sub(seen) & u64::from(SEEN_MASK);
        ((1 - established) * evictable) | idle
    };
    let (entry, before) = match sets::claim(set, &words, age, evictable) {
        sets::Claim::Taken { entry, before, .. } => (entry, before),
        sets::Claim::Busy => return,
        sets::Claim::Full => {
            crate::flow::bypassed(BYPASS_NAT_FULL);
            return;
        }
    };
    let vip = |i: usize| u64::from(pkt.dst[i]) | u64::from(pkt.dst[i + 1]) << 32;
    let low = u32::from(pkt.dport) | u32::from(now) << 16;
    sets::release(entry, before, &words, [vip(0), vip(2)], low);
}
