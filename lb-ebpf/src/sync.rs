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

/// Reports `pkt`'s flow (`kind`: `SYNC_NEW`, `SYNC_END` or `SYNC_REFRESH`) with its
/// service and backend ids and its entry's flags; 1 if reported. Called only when
/// `enabled`. (A global function returns a scalar.)
///
/// A global BPF function, exported as `bascule_sync_report` like `flow::schedule` (see
/// there and `lb-userspace/ebpf_cargo.rs`): the verifier checks it once, on its own,
/// instead of at every state of its three call sites (a static function here cost
/// 48,000 more instructions walked with the refresh's call on the established path).
#[export_name = "bascule_sync_report"]
#[inline(never)]
#[allow(improper_ctypes_definitions)] // a pointer to our own `Packet`
pub extern "C" fn report(
    pkt: *const Packet,
    service: u32,
    backend: u32,
    kind: u32,
    flags: u32,
) -> u32 {
    if pkt.is_null() {
        return 0;
    }
    // SAFETY: non-null, a caller's `Packet` on its stack.
    let pkt = unsafe { &*pkt };
    let Some(b) = BACKENDS.get(backend) else {
        return 0;
    };
    let Some(mut slot) = SYNC_RING.reserve(0) else {
        if let Some(c) = SYNC_DROPS.get_ptr_mut(0) {
            unsafe { *c += 1 };
        }
        return 0;
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
    // No wakeup: the daemon's sender polls the ring every few milliseconds anyway, and
    // waking it (an irq_work whenever it had caught up) was a fifth of a report's cost.
    slot.submit(aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64);
    1
}
