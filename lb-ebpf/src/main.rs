//! bascule's XDP datapath. `bascule_xdp` is the whole journey of a packet: parse it,
//! find its virtual service, find or choose its backend, count it, forward it.
//! Anything that is not TCP/UDP to a VIP goes to the kernel untouched.
#![no_std]
#![no_main]

mod csum;
mod forward;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use lb_common::{
    hash::flow_hash, BackendInfo, FlowKey, FlowState, Reason, ServiceInfo, ServiceKey,
    BACKEND_ACTIVE, FORWARD_DR, FORWARD_TUN, NO_BACKEND,
};
use maps::{ACTIONS, BACKENDS, BACKEND_STATS, CONNTRACK, MAGLEV, REASONS, SERVICES, SERVICE_STATS};
use parse::{Packet, Stop};

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

#[inline(always)]
fn balance(ctx: &XdpContext) -> Result<u32, Stop> {
    let pkt = parse::packet(ctx)?;
    if pkt.fragment {
        // Without ports a fragment cannot be matched to a service yet.
        return Err(Stop::counted(xdp_action::XDP_PASS, Reason::Fragment));
    }
    let Some(service) = find_service(&pkt) else {
        return Ok(xdp_action::XDP_PASS);
    };
    let hash = flow_hash(&pkt.src, &pkt.dst, pkt.ports, pkt.proto);
    let (backend_id, backend, new_flow) = find_backend(&pkt, &service, hash)?;
    count_traffic(&service, backend_id, &pkt, new_flow);
    match backend.forward {
        FORWARD_DR => forward::direct(ctx, &backend),
        FORWARD_TUN => forward::tunnel(ctx, &pkt, &backend, hash),
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

/// The flow's backend from the connection table while that backend is active, else the
/// service's Maglev choice, remembered for the next packets.
#[inline(always)]
fn find_backend(
    pkt: &Packet,
    service: &ServiceInfo,
    hash: u32,
) -> Result<(u32, BackendInfo, bool), Stop> {
    let flow = FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if let Some(state) = CONNTRACK.get_ptr(&flow) {
        let state = unsafe { *state };
        if state.service == service.id {
            if let Some(b) = active_backend(state.backend) {
                return Ok((state.backend, b, false));
            }
        }
    }
    let no_backend = Stop::counted(xdp_action::XDP_PASS, Reason::NoBackend);
    if service.table_size == 0 {
        return Err(no_backend);
    }
    let slot = hash % service.table_size;
    let Some(&id) = MAGLEV.get_value(service.id, &slot) else {
        return Err(no_backend);
    };
    if id == NO_BACKEND {
        return Err(no_backend);
    }
    let Some(backend) = active_backend(id) else {
        return Err(no_backend);
    };
    // A full table evicts its least recently used entry; an error here only means the
    // next packet of the flow is scheduled again, to the same backend.
    let _ = CONNTRACK.insert(
        &flow,
        &FlowState {
            backend: id,
            service: service.id,
        },
        0,
    );
    Ok((id, backend, true))
}

#[inline(always)]
fn active_backend(id: u32) -> Option<BackendInfo> {
    let b = *BACKENDS.get(id)?;
    (b.flags & BACKEND_ACTIVE != 0).then_some(b)
}

#[inline(always)]
fn count_traffic(service: &ServiceInfo, backend_id: u32, pkt: &Packet, new_flow: bool) {
    let new = new_flow as u64;
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service.id) {
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
