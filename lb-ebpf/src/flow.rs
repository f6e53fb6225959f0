//! The connection table: an established flow keeps its backend while that backend is
//! active (even drained, even after the table changed); a new flow is scheduled, through
//! the persistence template when the service has one. Active-connection counts for the
//! load schedulers are kept here.

use core::ptr::read_volatile;

use lb_common::{
    BackendInfo, FlowEntry, FlowKey, FlowState, PersistKey, PersistState, ServiceInfo,
    BACKEND_ACTIVE, FLOW_ACTIVE, IPPROTO_TCP, NO_BACKEND, SYNC_END, SYNC_NEW, SYNC_REFRESH,
    SYNC_REFRESH_SHIFT, TOUCH_INTERVAL_NS,
};

use crate::{
    maps::{ACTIVE, BACKENDS, PERSIST},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sched, sets,
};

#[inline(always)]
pub fn key(pkt: &Packet) -> FlowKey {
    FlowKey {
        src: pkt.src,
        dst: pkt.dst,
        sport: pkt.sport,
        dport: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

/// A backend that still serves its established flows (drained ones included).
#[inline(always)]
pub fn serving(id: u32) -> Option<&'static BackendInfo> {
    let b = BACKENDS.get(id)?;
    (b.flags & BACKEND_ACTIVE != 0).then_some(b)
}

#[inline(always)]
fn add_active(id: u32) {
    if let Some(p) = ACTIVE.get_ptr_mut(id) {
        crate::atomic::add(p, 1);
    }
}

#[inline(always)]
fn sub_active(id: u32) {
    if let Some(p) = ACTIVE.get_ptr_mut(id) {
        // Userspace may have just rewritten the count lower: never wrap below zero.
        if unsafe { *p } > 0 {
            crate::atomic::sub(p, 1);
        }
    }
}

#[inline(always)]
fn closing(pkt: &Packet) -> bool {
    pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

/// A flow's entry and a consistent copy of its state, if the table has it (an entry a
/// writer holds or changed while it was read counts as absent).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<(*mut FlowEntry, FlowState)> {
    sets::lookup::<FlowEntry>(&key.words()).map(|(entry, copy)| (entry, copy.state))
}

/// The backend of an established flow (its entry and state from `lookup`) for `service`,
/// the one its packet selects: the entry's, while that is the same service, the backend
/// still serves (drained ones included) and the entry is not idle past its timeout.
/// `NO_BACKEND` when the flow must be scheduled. Also keeps the entry's clock and the
/// active-connection count up to date.
#[inline(always)]
pub fn keep(pkt: &Packet, service: &ServiceInfo, entry: *mut FlowEntry, st: FlowState) -> u32 {
    let now = crate::clock::now();
    let timeout = service.idle_timeout_ns;
    let fresh = timeout == 0 || now.saturating_sub(st.last_seen) <= timeout;
    // A bare SYN on a finished 5-tuple starts a new connection.
    let reopened = pkt.proto == IPPROTO_TCP
        && pkt.tcp_flags & TCP_SYN != 0
        && pkt.tcp_flags & TCP_ACK == 0
        && st.flags & FLOW_ACTIVE == 0;
    let live = unsafe { &mut (*entry).state };
    if st.service == service.id && fresh && !reopened && serving(st.backend).is_some() {
        if now.saturating_sub(st.last_seen) > TOUCH_INTERVAL_NS {
            live.last_seen = now;
            if service.persistence_secs != 0 {
                remember_client(pkt, service, st.backend, now);
            }
            if (now ^ st.last_seen) >> SYNC_REFRESH_SHIFT != 0 {
                refreshed(pkt, &st);
            }
        }
        if st.flags & FLOW_ACTIVE != 0 && closing(pkt) {
            live.flags &= !FLOW_ACTIVE;
            sub_active(st.backend);
            ended(pkt, &st);
        }
        return st.backend;
    }
    if st.flags & FLOW_ACTIVE != 0 {
        live.flags &= !FLOW_ACTIVE;
        sub_active(st.backend);
    }
    NO_BACKEND
}

/// A flow's end (its first FIN or RST), reported when `sync:` is configured. A separate
/// BPF function: the established path only calls it on the packet that ends its flow.
#[inline(never)]
fn ended(pkt: &Packet, st: &FlowState) {
    if crate::sync::enabled() {
        let _ = crate::sync::report(
            pkt,
            st.service,
            st.backend,
            SYNC_END as u32,
            st.flags & !FLOW_ACTIVE,
        );
    }
}

/// A live flow reported again (`SYNC_REFRESH`) when `sync:` is configured, so that the
/// peers' copies do not expire. A separate BPF function: reached at most once per flow
/// every ~17 s.
#[inline(never)]
fn refreshed(pkt: &Packet, st: &FlowState) {
    if crate::sync::enabled() {
        let _ = crate::sync::report(pkt, st.service, st.backend, SYNC_REFRESH as u32, st.flags);
    }
}

/// Writes a flow's entry: over its own stale entry if its set has one, else over the set's
/// empty or least recently seen entry (evicting that flow: its next packet is scheduled
/// again). Skipped if another writer holds the entry (this flow's next packet retries).
#[inline(always)]
fn record(key: &FlowKey, state: &FlowState) {
    let words = key.words();
    let Some(set) = sets::set_of::<FlowEntry>(&words) else {
        return;
    };
    // Least recently seen first; empty entries (seen at 0) before any.
    let age = |e: *const sets::Entry| !unsafe { read_volatile((e as *const u64).add(6)) };
    let Some((entry, before)) = sets::claim(set, &words, age) else {
        return;
    };
    let payload = [
        u64::from(state.backend) | u64::from(state.service) << 32,
        state.last_seen,
    ];
    sets::release(entry, before, &words, payload, state.flags);
}

/// The backend for a new flow: the client's persistence template if the service has one
/// and it is fresh, else the scheduler's choice. `NO_BACKEND` when none is eligible.
///
/// A separate BPF function (own stack frame), and a global one: exported as
/// `bascule_schedule` (bpf-linker keeps an exported symbol global in the object's BTF, see
/// `lb-userspace/ebpf_cargo.rs`), it is checked by the verifier once, on its own, for any
/// `Packet` and `ServiceInfo`, instead of again for every state the program reaches its
/// call with. The schedulers' branches made that the bulk of verification: 353,671
/// instructions walked before, 105,486 since (program load 1.43 s -> ~0.2 s). The
/// verifier gives a global function's pointer arguments as memory of the pointee's size
/// that may be null: hence raw pointers, checked.
#[export_name = "bascule_schedule"]
#[inline(never)]
#[allow(improper_ctypes_definitions)] // pointers only: their pointees' layout is ours
pub extern "C" fn schedule(pkt: *const Packet, service: *const ServiceInfo) -> u32 {
    if pkt.is_null() || service.is_null() {
        return NO_BACKEND;
    }
    // SAFETY: non-null, and the caller's (`balance`) `Packet` and `ServiceInfo` on its stack.
    let (pkt, service) = unsafe { (&*pkt, &*service) };
    let now = crate::clock::now();
    if let Some(id) = persistent_choice(pkt, service, now) {
        return id;
    }
    let hash = lb_common::hash::flow_hash(&pkt.src, &pkt.dst, pkt.ports, pkt.proto);
    sched::choose(pkt, service, hash, now).unwrap_or(NO_BACKEND)
}

/// Records a new flow: connection-table entry, active count, persistence template.
/// A separate BPF function (own stack frame).
#[inline(never)]
pub fn start(pkt: &Packet, service: &ServiceInfo, id: u32) {
    let now = crate::clock::now();
    let flags = if closing(pkt) { 0 } else { FLOW_ACTIVE };
    if flags != 0 {
        add_active(id);
    }
    record(
        &key(pkt),
        &FlowState {
            backend: id,
            service: service.id,
            last_seen: now,
            flags,
            seq: 0,
        },
    );
    if service.persistence_secs != 0 {
        remember_client(pkt, service, id, now);
    }
    if crate::sync::enabled() {
        let _ = crate::sync::report(pkt, service.id, id, SYNC_NEW as u32, flags);
    }
}

/// Persistence: the client's template, while it is fresh and its backend eligible.
#[inline(always)]
fn persistent_choice(pkt: &Packet, service: &ServiceInfo, now: u64) -> Option<u32> {
    if service.persistence_secs == 0 {
        return None;
    }
    let key = PersistKey {
        client: pkt.src,
        service: service.id,
    };
    let t = unsafe { *PERSIST.get_ptr(key)? };
    let ttl = service.persistence_secs as u64 * 1_000_000_000;
    if now.saturating_sub(t.last_seen) > ttl {
        return None;
    }
    sched::eligible(t.backend).map(|_| t.backend)
}

#[inline(always)]
fn remember_client(pkt: &Packet, service: &ServiceInfo, backend: u32, now: u64) {
    let key = PersistKey {
        client: pkt.src,
        service: service.id,
    };
    let _ = PERSIST.insert(
        key,
        PersistState {
            backend,
            _pad: 0,
            last_seen: now,
        },
        0,
    );
}
