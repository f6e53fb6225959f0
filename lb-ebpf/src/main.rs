//! bascule's XDP datapath. `bascule_xdp` is the whole journey of a packet: parse it,
//! find its virtual service, find or choose its backend, count it, forward it.
//! Anything that is not for a VIP (nor a `nat` reply) goes to the kernel untouched.
#![no_std]
#![no_main]
#![allow(internal_features)]
#![feature(core_intrinsics, asm_experimental_arch)]

mod atomic;
mod csum;
mod flow;
mod forward;
mod icmp;
mod maps;
mod nat;
mod parse;
mod sched;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    hash::flow_hash, BackendInfo, FragKey, FragState, Reason, ServiceInfo, ServiceKey, FORWARD_DR,
    FORWARD_LOCAL, FORWARD_NAT, FORWARD_TUN, NO_BACKEND,
};
use maps::{ACTIONS, BACKEND_STATS, FRAGS, REASONS, SERVICES, SERVICE_STATS, SETTINGS};
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

/// The journey: parse, find where the packet goes (an ICMP answer, the backend of its
/// flow, of its datagram's first fragment, or of its `nat` flow going back), count it,
/// send it. Each step that needs stack space is a separate BPF function called from here,
/// so that no chain of calls exceeds the verifier's 512-byte stack.
#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Stop> {
    let raw = ctx.ctx;
    let mut pkt = Packet::default();
    let parsed = parse::packet(raw, &mut pkt);
    if parsed != parse::PARSED {
        return Err(Stop::decode(parsed));
    }
    if pkt.is_icmp() {
        let target = icmp::handle(raw, &pkt);
        if target & icmp::ANSWERED != 0 {
            return Stop::unpack(target as u32);
        }
        let (service, id) = ((target >> 32) as u32, target as u32);
        let backend =
            flow::serving(id).ok_or(Stop::counted(xdp_action::XDP_PASS, Reason::IcmpUnmatched))?;
        count_traffic(service, id, &pkt, false);
        if backend.forward == FORWARD_NAT {
            // Already rewritten for the backend by `icmp::handle`: only route it.
            return Stop::unpack(forward::route(raw, &pkt, &backend.addr));
        }
        let hash = flow_hash(&pkt.dst, &pkt.src, 0, pkt.proto);
        return send(raw, &pkt, &backend, service, hash);
    }
    if pkt.fragment == Fragment::Later {
        let Some(state) = FRAGS.get_ptr(&fragment_key(&pkt)).map(|s| unsafe { *s }) else {
            return Err(Stop::counted(
                xdp_action::XDP_PASS,
                Reason::FragmentUnmatched,
            ));
        };
        let backend = flow::serving(state.backend).ok_or(Stop::counted(
            xdp_action::XDP_PASS,
            Reason::FragmentUnmatched,
        ))?;
        count_traffic(state.service, state.backend, &pkt, false);
        // Tunnels carry the fragment whole; the flow label need only be stable per datagram.
        return send(raw, &pkt, &backend, state.service, pkt.frag_id);
    }
    let Some(service) = find_service(&pkt) else {
        let nat = SETTINGS.get(0).is_some_and(|s| s.nat_enabled != 0);
        return if nat {
            Stop::unpack(nat::reply(raw, &pkt))
        } else {
            Ok(xdp_action::XDP_PASS)
        };
    };
    let hash = flow_hash(&pkt.src, &pkt.dst, pkt.ports, pkt.proto);
    let mut id = flow::established(&pkt, &service);
    let new_flow = id == NO_BACKEND;
    if new_flow {
        id = flow::schedule(&pkt, &service, hash);
        if id == NO_BACKEND {
            return Err(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend));
        }
        flow::start(&pkt, &service, id);
    }
    let backend =
        flow::serving(id).ok_or(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend))?;
    if pkt.fragment == Fragment::First {
        remember_first_fragment(&pkt, id, service.id);
    }
    count_traffic(service.id, id, &pkt, new_flow);
    send(raw, &pkt, &backend, service.id, hash)
}

/// Hands the packet to its backend the way that backend is reached.
#[inline(always)]
fn send(
    raw: *mut aya_ebpf::bindings::xdp_md,
    pkt: &Packet,
    backend: &BackendInfo,
    service: u32,
    hash: u32,
) -> Result<u32, Stop> {
    match backend.forward {
        FORWARD_DR => forward::direct(&XdpContext { ctx: raw }, backend),
        FORWARD_TUN => Stop::unpack(forward::tunnel(raw, pkt, backend, hash)),
        FORWARD_NAT => Stop::unpack(nat::to_backend(raw, pkt, backend, service)),
        // The node itself serves this flow: up its own stack (the VIP is local to it).
        FORWARD_LOCAL => Ok(xdp_action::XDP_PASS),
        _ => Err(Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend)),
    }
}

/// The service for (VIP, port, protocol), else the VIP's all-ports service.
#[inline(always)]
fn find_service(pkt: &Packet) -> Option<ServiceInfo> {
    let mut key = ServiceKey {
        addr: pkt.dst,
        port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
    };
    if let Some(s) = SERVICES.get_ptr(&key) {
        return Some(unsafe { *s });
    }
    key.port = 0;
    SERVICES.get_ptr(&key).map(|s| unsafe { *s })
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
        &fragment_key(pkt),
        &FragState {
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
