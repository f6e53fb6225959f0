//! bascule's XDP datapath. `bascule_xdp` is the whole journey of a packet: parse it,
//! find its virtual service, find or choose its backend, count it, forward it.
//! Anything that is not for a VIP (nor a `nat` reply) goes to the kernel untouched.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics, asm_experimental_arch)]

mod atomic;
mod clock;
mod csum;
mod flow;
mod forward;
mod icmp;
mod license;
mod maps;
mod nat;
mod parse;
mod sched;
mod sets;
mod store;
mod sync;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    FragKey, FragState, Reason, ServiceInfo, ServiceKey, ServiceKey4, FAMILY_V4, FORWARD_DR,
    FORWARD_LOCAL, FORWARD_NAT, FORWARD_TUN, NO_BACKEND,
};
use maps::{
    ACTIONS, BACKEND_STATS, FRAGS, LOCAL_MACS, REASONS, SERVICES, SERVICES4, SERVICE_ENTRIES,
    SERVICE_STATS, SETTINGS,
};
use parse::{Fragment, Packet, Stop};

#[xdp]
pub fn bascule_xdp(ctx: XdpContext) -> u32 {
    let action = match balance(&ctx) {
        Ok(action) => action,
        Err(stop) => {
            if let Some(reason) = stop.reason {
                count_reason(reason);
            }
            stop.action
        }
    };
    count_action(action);
    action
}

/// Not attached anywhere: userspace runs it (BPF_PROG_TEST_RUN) to calibrate the
/// datapath's clock (`clock::now`). Writes `jiffies`, the coarse clock and `jiffies` again
/// over the first 24 bytes of the frame it is given.
#[xdp]
pub fn bascule_clock(ctx: XdpContext) -> u32 {
    let Some(out) = parse::ptr_at::<[u64; 3]>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe {
        use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};
        let before = bpf_jiffies64();
        let ns = bpf_ktime_get_coarse_ns();
        out.write_unaligned([before, ns, bpf_jiffies64()]);
    }
    xdp_action::XDP_PASS
}

/// Where a packet goes, packed in one word so that the steps finding it can be separate
/// BPF functions: (service << 32 | backend id), or a verdict with `DONE` set.
const DONE: u64 = 1 << 63;
/// With `DONE`: not for a VIP; may be a `nat` reply.
const NOT_A_VIP: u64 = 1 << 61;
/// A target found for a new flow (counts as a new connection).
const NEW_FLOW: u64 = 1 << 60;
/// The flow is new: schedule it (the service was written to `flow_target`'s out-param).
const SCHEDULE: u64 = 1 << 59;

#[inline(always)]
fn done(r: Result<u32, Stop>) -> u64 {
    DONE | Stop::pack(r) as u64
}

/// The journey: parse, find where the packet goes (an ICMP answer, the backend of its
/// flow, of its datagram's first fragment, or the client of a `nat` reply), count it,
/// send it. Each step that needs stack space is a separate BPF function called from here,
/// and none calls another deeply, so that no chain of calls exceeds the verifier's
/// 512-byte stack. Two steps on every packet's path are inlined, being small enough for
/// this frame: reading the common frames (`parse::plain_ipv4`, `plain_ipv6`; any other
/// goes to the general parser, a call) and the established-flow lookup (`flow_target`).
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Stop> {
    let raw = ctx.ctx;
    let mut pkt = Packet::default();
    if !parse::plain_ipv4(ctx, &mut pkt) && !parse::plain_ipv6(ctx, &mut pkt) {
        let parsed = parse::packet(raw, &mut pkt);
        if parsed != parse::PARSED {
            return Err(Stop::decode(parsed));
        }
    }
    if !addressed_to_us(ctx) {
        return Ok(xdp_action::XDP_PASS);
    }
    // Never forwarded, rewritten or answered unless whole, as the kernel would not either.
    pkt.whole()?;
    let mut service = ServiceInfo::default();
    let mut spot = 0;
    let mut target = if pkt.is_icmp() {
        icmp::handle(raw, &pkt)
    } else if pkt.fragment == Fragment::Later {
        first_fragment_owner(&pkt)
    } else {
        flow_target(&pkt, &mut service, &mut spot)
    };
    if target == SCHEDULE {
        // One reading of the clock for the choice and the entry.
        let now = clock::now();
        let id = flow::schedule(&pkt, &service, now);
        if id == NO_BACKEND {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend));
        }
        if flow::start(&pkt, &service, id, now, spot) && pkt.fragment == Fragment::First {
            remember_first_fragment(&pkt, id, service.id);
        }
        target = NEW_FLOW | ((service.id as u64) << 32) | id as u64;
    }
    if target & NOT_A_VIP != 0 {
        if !SETTINGS.get(0).is_some_and(|s| s.nat_enabled != 0) {
            return Ok(xdp_action::XDP_PASS);
        }
        let reply = nat::reply(raw, &pkt);
        if reply != nat::REWRITTEN {
            return Stop::unpack(reply);
        }
        return Stop::unpack(forward::route(raw, &pkt, &pkt.dst, forward::UNCACHED));
    }
    if target & DONE != 0 {
        return Stop::unpack(target as u32);
    }
    let (service, id) = (((target >> 32) & 0x0fff_ffff) as u32, target as u32);
    let Some(backend) = flow::serving(id) else {
        return Err(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend));
    };
    count_traffic(service, id, &pkt, target & NEW_FLOW != 0);
    match backend.forward {
        FORWARD_DR => forward::direct(ctx, backend),
        FORWARD_TUN => forward::tunnel_resolving(ctx, &pkt, backend, id),
        FORWARD_NAT => Stop::unpack(nat::forward(raw, &pkt, id)),
        // The node itself serves this flow: up its own stack (the VIP is local to it).
        FORWARD_LOCAL => Ok(xdp_action::XDP_PASS),
        _ => Err(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend)),
    }
}

/// TCP/UDP (or a first fragment): the flow's service and backend from the connection
/// table, or `SCHEDULE` with the service written to `service` for a new flow. The
/// connection table is read first: an established flow's entry names its service, and
/// while the packet still selects that service (`ServiceEntry::selects`) the service's
/// slot by id stands in for the hash lookup (4 ns of the ~36 this program adds to a
/// packet). Inlined: a separate BPF function here cost the hot path a call and the
/// `ServiceInfo` round trip through the stack (about 3 ns per packet). Where the flow's
/// entry lives or goes is written to `spot` (`flow::lookup`), for `flow::start`.
#[inline(always)]
fn flow_target(pkt: &Packet, service: &mut ServiceInfo, spot: &mut u64) -> u64 {
    let found;
    (*spot, found) = flow::lookup(&flow::key(pkt));
    let Some((entry, st)) = found else {
        let Some(found) = find_service(pkt) else {
            return DONE | NOT_A_VIP;
        };
        *service = *found;
        return SCHEDULE;
    };
    let slot = SERVICE_ENTRIES
        .get(st.service)
        .filter(|e| e.selects(pkt.family, &pkt.dst, pkt.dport, pkt.proto))
        .map(|e| &e.info);
    let Some(found) = slot.or_else(|| find_service(pkt)) else {
        return DONE | NOT_A_VIP;
    };
    let id = flow::keep(pkt, found, entry, st);
    if id == NO_BACKEND {
        // Scheduling reads the service from the hash map, whose elements are replaced
        // whole (a slot of `SERVICE_ENTRIES` is rewritten in place): looked up unless
        // `found` came from there.
        let Some(scheduled) = (if slot.is_some() {
            find_service(pkt)
        } else {
            Some(found)
        }) else {
            return DONE | NOT_A_VIP;
        };
        *service = *scheduled;
        return SCHEDULE;
    }
    if pkt.fragment == Fragment::First {
        remember_first_fragment(pkt, id, found.id);
    }
    ((found.id as u64) << 32) | id as u64
}

/// Later fragments have no ports: they follow the first fragment of their datagram, or
/// go to the kernel (counted) if it was not seen.
#[inline(never)]
fn first_fragment_owner(pkt: &Packet) -> u64 {
    match FRAGS.get_ptr(fragment_key(pkt)) {
        Some(s) => unsafe { (((*s).service as u64) << 32) | (*s).backend as u64 },
        None => done(Err(Stop::counted(
            xdp_action::XDP_PASS,
            Reason::FragmentUnmatched,
        ))),
    }
}

/// Only frames sent to the MAC of an interface the program is attached to are balanced.
/// A switch that floods unknown unicast (the VRRP master's MAC after a failover, say)
/// delivers the master's frames to the backup too: forwarding them there would send
/// every packet twice. Frames for other MACs go to the kernel, which drops them as
/// PACKET_OTHERHOST. The node's MACs are compared in one list, not the ingress
/// interface's alone: finding the ingress interface (`rxq->dev->ifindex`, three
/// dependent loads) and its slot cost ~7 ns of a frame through veth.
#[inline(always)]
fn addressed_to_us(ctx: &XdpContext) -> bool {
    let Some(local) = LOCAL_MACS.get(0) else {
        return true;
    };
    local.accepts(forward::arrival_mac(ctx))
}

/// The service for (VIP, port, protocol), else the VIP's all-ports service.
#[inline(always)]
fn find_service(pkt: &Packet) -> Option<&'static ServiceInfo> {
    let found = if pkt.family == FAMILY_V4 {
        let mut key = ServiceKey4 {
            addr: pkt.dst[0],
            port: pkt.dport,
            proto: pkt.proto,
            _pad: 0,
        };
        SERVICES4.get_ptr(key).or_else(|| {
            key.port = 0;
            SERVICES4.get_ptr(key)
        })
    } else {
        let mut key = ServiceKey {
            addr: pkt.dst,
            port: pkt.dport,
            proto: pkt.proto,
            family: pkt.family,
        };
        SERVICES.get_ptr(key).or_else(|| {
            key.port = 0;
            SERVICES.get_ptr(key)
        })
    };
    // SAFETY: a map value, valid for the program's run.
    found.map(|s| unsafe { &*s })
}

#[inline(always)]
fn fragment_key(pkt: &Packet) -> FragKey {
    FragKey {
        src: pkt.src,
        dst: pkt.dst,
        id: pkt.frag_id,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// A first fragment carries the ports: remember its backend for the rest of the datagram.
#[inline(never)]
fn remember_first_fragment(pkt: &Packet, backend: u32, service: u32) {
    let _ = FRAGS.insert(
        fragment_key(pkt),
        FragState {
            backend,
            service,
            _pad: 0,
        },
        0,
    );
}

#[inline(always)]
fn count_traffic(service: u32, backend_id: u32, pkt: &Packet, new_flow: bool) {
    let new = new_flow as u64;
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += pkt.frame_len as u64;
            (*c).new_flows += new;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend_id) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += pkt.frame_len as u64;
            (*c).new_flows += new;
        }
    }
}

#[inline(always)]
fn count_reason(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn count_action(action: u32) {
    if let Some(c) = ACTIONS.get_ptr_mut(action) {
        unsafe { *c += 1 };
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
