//! ICMP for VIPs: echo requests are answered here (the VIP may be held by no host at
//! all); "fragmentation needed" (ICMPv4 3/4) and "packet too big" (ICMPv6 2) quoting one
//! of a VIP's flows go to the backend that owns the flow, so path MTU discovery works
//! through the balancer. Other ICMP goes to the kernel.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    icmp::{
        ECHO_REPLY_V4, ECHO_REPLY_V6, ECHO_REQUEST_V4, ECHO_REQUEST_V6, FRAG_NEEDED_CODE,
        PACKET_TOO_BIG_V6, UNREACHABLE_V4,
    },
    FlowKey, Reason, VipKey, BACKEND_ACTIVE, FAMILY_V4, FAMILY_V6, FORWARD_NAT,
};

use crate::{
    csum::Delta,
    maps::{BACKENDS, ICMP_ECHO_PACE, SETTINGS, VIPS},
    parse::{ptr_at, read, Packet, Stop, IPV4_LEN, IPV6_LEN, MAX_L4_OFFSET},
};

/// TTL / hop limit of the echo replies the datapath writes.
const REPLY_TTL: u8 = 64;

/// An ICMP packet's fate, as `main`'s targets: a verdict, or (service, backend).
#[inline(always)]
fn answered(r: Result<u32, Stop>) -> u64 {
    crate::DONE | Stop::pack(r) as u64
}

/// ICMP to a VIP: echo answered here, "too big" errors steered to the owning flow's
/// backend (with the quoted header rewritten for `nat`). A separate BPF function.
#[inline(never)]
pub fn handle(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet) -> u64 {
    let vip = VipKey {
        addr: pkt.dst,
        family: pkt.family,
        _pad: [0; 3],
    };
    if VIPS.get_ptr(vip).is_none() {
        return answered(Ok(xdp_action::XDP_PASS));
    }
    let v4 = pkt.family == FAMILY_V4;
    match (v4, pkt.icmp_type, pkt.icmp_code) {
        (true, ECHO_REQUEST_V4, 0) | (false, ECHO_REQUEST_V6, 0) => {
            if !echo_in_rate(&vip) {
                return answered(Err(Stop::counted(
                    xdp_action::XDP_DROP,
                    Reason::IcmpRateLimited,
                )));
            }
            answered(echo_reply(raw, pkt))
        }
        (true, UNREACHABLE_V4, FRAG_NEEDED_CODE) | (false, PACKET_TOO_BIG_V6, 0) => {
            too_big(raw, pkt)
        }
        _ => answered(Ok(xdp_action::XDP_PASS)),
    }
}

/// Whether an echo to `vip` may be answered now (`node.icmp_echo_rate`), counting it
/// if so: the VIP's next answer is due one interval after the previous one's due time,
/// and may come early by at most the burst. Racing CPUs may both answer where one
/// should (their writes of the due time overlap): a flood answered on N CPUs gets at
/// most N answers too many per interval.
#[inline(always)]
fn echo_in_rate(vip: &VipKey) -> bool {
    let Some(s) = SETTINGS.get(0) else {
        return true;
    };
    let interval = s.icmp_echo_interval_ns;
    if interval == 0 {
        return true;
    }
    let now = crate::clock::now();
    let Some(due) = ICMP_ECHO_PACE.get_ptr_mut(vip) else {
        let _ = ICMP_ECHO_PACE.insert(vip, now + interval, 0);
        return true;
    };
    let next = unsafe { *due }.max(now);
    if next - now > s.icmp_echo_burst_ns {
        return false;
    }
    unsafe { *due = next + interval };
    true
}

/// Turns the request around in place: addresses and MACs swapped, type changed, TTL
/// reset, checksums updated incrementally.
#[inline(always)]
fn echo_reply(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet) -> Result<u32, Stop> {
    let ctx = &crate::parse::context(raw);
    let bad = || Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedL4);
    let reply_type = if pkt.family == FAMILY_V4 {
        ECHO_REPLY_V4
    } else {
        ECHO_REPLY_V6
    };
    if pkt.l4_off() > MAX_L4_OFFSET {
        return Err(bad());
    }
    let ty = ptr_at::<[u8; 4]>(ctx, pkt.l4_off()).ok_or_else(bad)?;
    let mut icmp = unsafe { ty.read_unaligned() };
    let mut d = Delta::new();
    d.word(
        u16::from_ne_bytes([icmp[0], icmp[1]]),
        u16::from_ne_bytes([reply_type, icmp[1]]),
    );
    icmp[0] = reply_type;
    let check = d
        .apply(u16::from_ne_bytes([icmp[2], icmp[3]]))
        .to_ne_bytes();
    // An update that gives 0x0000 is ambiguous: right for a message whose other words
    // sum to 0xffff, wrong for one of zeros only (its checksum is 0xffff; RFC 1624's
    // update cannot tell them apart). ICMPv4 has no pseudo-header, so an echo of zeros
    // (identifier, sequence and data 0) is possible: the kernel answers it instead.
    if check == [0, 0] {
        return Ok(xdp_action::XDP_PASS);
    }
    icmp[2] = check[0];
    icmp[3] = check[1];
    unsafe { ty.write_unaligned(icmp) };
    let eth = ptr_at::<[u8; 12]>(ctx, 0).ok_or_else(bad)?;
    unsafe {
        let m = eth.read_unaligned();
        let mut s = [0u8; 12];
        s[..6].copy_from_slice(&m[6..]);
        s[6..].copy_from_slice(&m[..6]);
        eth.write_unaligned(s);
    }

    if pkt.family == FAMILY_V4 {
        let ip = ptr_at::<[u8; IPV4_LEN]>(ctx, pkt.l3_off()).ok_or_else(bad)?;
        let mut h = unsafe { ip.read_unaligned() };
        let mut d = Delta::new();
        d.word(
            u16::from_ne_bytes([h[8], h[9]]),
            u16::from_ne_bytes([REPLY_TTL, h[9]]),
        );
        h[8] = REPLY_TTL;
        let c = d.apply(u16::from_ne_bytes([h[10], h[11]])).to_ne_bytes();
        h[10] = c[0];
        h[11] = c[1];
        let mut i = 0;
        while i < 4 {
            h.swap(12 + i, 16 + i);
            i += 1;
        }
        unsafe { ip.write_unaligned(h) };
    } else {
        let ip = ptr_at::<[u32; 10]>(ctx, pkt.l3_off()).ok_or_else(bad)?;
        let mut h = unsafe { ip.read_unaligned() };
        let mut w = h[1].to_ne_bytes();
        w[3] = REPLY_TTL;
        h[1] = u32::from_ne_bytes(w);
        let mut i = 0;
        while i < 4 {
            h.swap(2 + i, 6 + i);
            i += 1;
        }
        unsafe { ip.write_unaligned(h) };
    }
    Ok(xdp_action::XDP_TX)
}

/// The flow an ICMP error is about, from the header it quotes: a packet the VIP sent to
/// a client, i.e. the reverse of the client's flow.
#[inline(always)]
fn quoted_flow(ctx: &XdpContext, pkt: &Packet) -> Option<(FlowKey, usize, usize)> {
    let q = pkt.l4_off() + 8;
    if q > MAX_L4_OFFSET {
        return None;
    }
    // The quoted header and ports must be inside the ICMP message (the IP length), not
    // in bytes past it that the frame happens to hold: a `nat` rewrite of those would
    // leave the message's checksum wrong.
    let end = pkt.l3_off() + pkt.l3_len as usize;
    if pkt.family == FAMILY_V4 {
        let h = unsafe { &*ptr_at::<[u8; IPV4_LEN]>(ctx, q)? };
        let ihl = (h[0] & 0x0f) as usize * 4;
        if ihl < IPV4_LEN || q + ihl + 4 > end {
            return None;
        }
        let p = read::<[u8; 4]>(ctx, q + ihl)?;
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let key = FlowKey {
            src: [w(16), 0, 0, 0],
            dst: [w(12), 0, 0, 0],
            sport: u16::from_ne_bytes([p[2], p[3]]),
            dport: u16::from_ne_bytes([p[0], p[1]]),
            proto: h[9],
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        Some((key, q, q + ihl))
    } else {
        if q + IPV6_LEN + 4 > end {
            return None;
        }
        let h = unsafe { &*ptr_at::<[u8; IPV6_LEN]>(ctx, q)? };
        let p = read::<[u8; 4]>(ctx, q + IPV6_LEN)?;
        let w = |i: usize| u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let key = FlowKey {
            src: [w(24), w(28), w(32), w(36)],
            dst: [w(8), w(12), w(16), w(20)],
            sport: u16::from_ne_bytes([p[2], p[3]]),
            dport: u16::from_ne_bytes([p[0], p[1]]),
            proto: h[6],
            family: FAMILY_V6,
            _pad: [0; 2],
        };
        Some((key, q, q + IPV6_LEN))
    }
}

/// Finds the backend owning the flow a "fragmentation needed" / "packet too big" quotes;
/// for `nat` rewrites the error for that backend. Returns where to deliver it.
#[inline(always)]
fn too_big(raw: *mut aya_ebpf::bindings::xdp_md, pkt: &Packet) -> u64 {
    let ctx = &crate::parse::context(raw);
    let unmatched = answered(Err(Stop::counted(
        xdp_action::XDP_PASS,
        Reason::IcmpUnmatched,
    )));
    let Some((key, quoted_l3, quoted_l4)) = quoted_flow(ctx, pkt) else {
        return unmatched;
    };
    let (_, Some((_, state))) = crate::flow::lookup(&key) else {
        return unmatched;
    };
    let (service, id) = (state.service, state.backend);
    let Some(backend) = BACKENDS.get(id) else {
        return unmatched;
    };
    if backend.flags & BACKEND_ACTIVE == 0 {
        return unmatched;
    }
    if backend.forward == FORWARD_NAT {
        let quoted = (quoted_l3 as u32) | ((quoted_l4 as u32) << 16);
        if !rewrite_quoted(raw, pkt, &key, backend, quoted) {
            return answered(Err(Stop::counted(
                xdp_action::XDP_DROP,
                Reason::TruncatedL4,
            )));
        }
    }
    ((service as u64) << 32) | id as u64
}

/// `nat`: the error travels to the backend, so its outer destination and the quoted
/// source (VIP:port as the client saw it) become the backend's address and port again;
/// every checksum covering them (outer IPv4 header, quoted IPv4 header, ICMP/ICMPv6) is
/// updated incrementally.
#[inline(never)]
fn rewrite_quoted(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    key: &FlowKey,
    backend: &lb_common::BackendInfo,
    quoted: u32,
) -> bool {
    rewrite_quoted_inner(raw, pkt, key, backend, quoted).is_ok()
}

#[inline(always)]
fn rewrite_quoted_inner(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    key: &FlowKey,
    backend: &lb_common::BackendInfo,
    quoted: u32,
) -> Result<(), Stop> {
    let ctx = &crate::parse::context(raw);
    let (quoted_l3, quoted_l4) = ((quoted & 0xffff) as usize, (quoted >> 16) as usize);
    let (addr, port) = (&backend.addr, backend.port);
    let bad = || Stop::counted(xdp_action::XDP_DROP, Reason::TruncatedL4);
    let v6 = pkt.family == FAMILY_V6;
    let mut icmp = Delta::new();
    let mut outer = Delta::new();
    outer.addr(&pkt.dst, addr, v6);
    if quoted_l4 > MAX_L4_OFFSET + 64 || quoted_l3 > MAX_L4_OFFSET + 8 {
        return Err(bad());
    }
    // Quoted source address (the VIP) and port.
    if v6 {
        let p = ptr_at::<[u32; 4]>(ctx, quoted_l3 + 8).ok_or_else(bad)?;
        unsafe { p.write_unaligned(*addr) };
        // ICMPv6's pseudo-header holds the outer destination: its change counts too.
        icmp = icmp.plus(&outer);
    } else {
        let p = ptr_at::<u32>(ctx, quoted_l3 + 12).ok_or_else(bad)?;
        unsafe { p.write_unaligned(addr[0]) };
        let mut qd = Delta::new();
        qd.word32(key.dst[0], addr[0]);
        let c = ptr_at::<u16>(ctx, quoted_l3 + 10).ok_or_else(bad)?;
        let old = unsafe { c.read_unaligned() };
        let new = qd.apply(old);
        unsafe { c.write_unaligned(new) };
        icmp.word(old, new);
    }
    icmp.addr(&key.dst, addr, v6);
    if port != 0 && port != key.dport {
        let p = ptr_at::<u16>(ctx, quoted_l4).ok_or_else(bad)?;
        unsafe { p.write_unaligned(port) };
        icmp.word(key.dport, port);
    }
    let c = ptr_at::<u16>(ctx, pkt.l4_off() + 2).ok_or_else(bad)?;
    unsafe { c.write_unaligned(icmp.apply(c.read_unaligned())) };
    // Outer destination.
    if v6 {
        let p = ptr_at::<[u32; 4]>(ctx, pkt.l3_off() + 24).ok_or_else(bad)?;
        unsafe { p.write_unaligned(*addr) };
    } else {
        let p = ptr_at::<u32>(ctx, pkt.l3_off() + 16).ok_or_else(bad)?;
        unsafe { p.write_unaligned(addr[0]) };
        let c = ptr_at::<u16>(ctx, pkt.l3_off() + 10).ok_or_else(bad)?;
        unsafe { c.write_unaligned(outer.apply(c.read_unaligned())) };
    }
    Ok(())
}
