//! `sync:`: flows reported to the daemon through the `SYNC_RING` ring buffer, which sends
//! them to the other LB nodes: a new connection-table entry, and a flow's end (its first
//! FIN or RST). Never per packet: the established path only reaches here on the packet
//! that ends its flow. A full ring drops the report and counts it (`SYNC_DROPS`); the
//! packet is forwarded all the same.

use lb_common::SyncReport;

use crate::{
    flow,
    maps::{BACKENDS, SETTINGS, SYNC_DROPS, SYNC_RING},
    parse::Packet,
};

/// Whether `sync:` is configured: one load, the only cost on nodes without sync.
#[inline(always)]
pub fn enabled() -> bool {
    SETTINGS.get(0).is_some_and(|s| s.sync_enabled != 0)
}

/// Reports `pkt`'s flow (`kind`: `SYNC_NEW` or `SYNC_END`) with its service and backend
/// ids and its entry's flags. A separate BPF function (own stack frame), called only when
/// `enabled`.
#[inline(never)]
pub fn report(pkt: &Packet, service: u32, backend: u32, kind: u32, flags: u32) {
    let Some(b) = BACKENDS.get(backend) else {
        return;
    };
    let Some(mut slot) = SYNC_RING.reserve(0) else {
        if let Some(c) = SYNC_DROPS.get_ptr_mut(0) {
            unsafe { *c += 1 };
        }
        return;
    };
    slot.write(SyncReport {
        key: flow::key(pkt),
        backend_addr: b.addr,
        service,
        backend,
        backend_port: b.port,
        kind: kind as u8,
        backend_family: b.family,
        flags,
    });
    slot.submit(0);
}
