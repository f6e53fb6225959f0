//! The connection table: an established flow keeps its backend while that backend is
//! active (even drained, even after the table changed); a new flow is scheduled, through
//! the persistence template when the service has one. Active-connection counts for the
//! load schedulers are kept here.

use core::ptr::{read_volatile, write_volatile};

use lb_common::{
    hash::flow_set, BackendInfo, FlowEntry, FlowKey, FlowState, PersistKey, PersistState,
    ServiceInfo, BACKEND_ACTIVE, FLOW_ACTIVE, FLOW_WAYS, IPPROTO_TCP, NO_BACKEND,
    TOUCH_INTERVAL_NS,
};

use crate::{
    maps::{ACTIVE, BACKENDS, CONNTRACK, FLOW_EVICTIONS, FLOW_TABLE, PERSIST},
    parse::{Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sched,
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

/// `FlowState::seq` as seen in the (flags, seq) word: one step, and the odd bit.
const SEQ_ONE: u64 = 1 << 32;
const SEQ_ODD: u64 = 1 << 32;

/// The set a flow lives in (see `lb_common::FlowEntry`).
#[inline(always)]
fn set_of(words: &[u64; 5]) -> Option<*mut [FlowEntry; FLOW_WAYS]> {
    let table = FLOW_TABLE.get(0)?;
    let i = flow_set(words, table.seed) & table.set_mask;
    CONNTRACK
        .get_ptr_mut(i as u32)
        .map(|s| s as *mut [FlowEntry; FLOW_WAYS])
}

#[inline(always)]
fn holds(entry: *const FlowEntry, words: &[u64; 5]) -> bool {
    let k = entry as *const u64;
    let mut diff = 0;
    for (i, w) in words.iter().enumerate() {
        diff |= unsafe { read_volatile(k.add(i)) } ^ w;
    }
    diff == 0
}

/// A flow's entry and a consistent copy of its state, if the table has it (an entry a
/// writer holds or changed while it was read counts as absent).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<(*mut FlowEntry, FlowState)> {
    let words = key.words();
    let set = set_of(&words)?;
    for way in 0..FLOW_WAYS {
        let entry = unsafe { &raw mut (*set)[way] };
        let seq = unsafe { &raw const (*entry).state.seq };
        let before = unsafe { read_volatile(seq) };
        if before & 1 == 0 && holds(entry, &words) {
            let state = unsafe { read_volatile(&raw const (*entry).state) };
            if unsafe { read_volatile(seq) } != before {
                return None;
            }
            return Some((entry, state));
        }
    }
    None
}

/// The backend of an established flow: the connection-table entry's, while that backend
/// still serves (drained ones included) and the entry is not idle past its timeout.
/// `NO_BACKEND` when the flow must be scheduled. Also keeps the entry's clock and the
/// active-connection count up to date.
#[inline(always)]
pub fn established(pkt: &Packet, service: &ServiceInfo) -> u32 {
    let Some((entry, st)) = lookup(&key(pkt)) else {
        return NO_BACKEND;
    };
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
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
        }
        if st.flags & FLOW_ACTIVE != 0 && closing(pkt) {
            live.flags &= !FLOW_ACTIVE;
            sub_active(st.backend);
        }
        return st.backend;
    }
    if st.flags & FLOW_ACTIVE != 0 {
        live.flags &= !FLOW_ACTIVE;
        sub_active(st.backend);
    }
    NO_BACKEND
}

/// Writes a flow's entry: over its own stale entry if its set has one, else over the set's
/// empty or least recently seen entry (evicting that flow: its next packet is scheduled
/// again). Skipped if another writer holds the entry (this flow's next packet retries).
#[inline(always)]
fn record(key: &FlowKey, state: &FlowState) {
    let words = key.words();
    let Some(set) = set_of(&words) else {
        return;
    };
    let mut victim = 0;
    let mut oldest = u64::MAX;
    for way in 0..FLOW_WAYS {
        let entry = unsafe { &raw const (*set)[way] };
        if holds(entry, &words) {
            victim = way;
            oldest = 0;
            break;
        }
        let seen = unsafe { read_volatile(&raw const (*entry).state.last_seen) };
        if seen < oldest {
            oldest = seen;
            victim = way;
        }
    }
    let entry = unsafe { &raw mut (*set)[victim] };
    // `flags` and `seq` form one 64-bit word (BPF has no 32-bit compare-and-swap): the
    // claim moves `seq` to odd, and fails if a packet changed `flags` meanwhile.
    let word = unsafe { &raw mut (*entry).state.flags } as *mut u64;
    let before = unsafe { read_volatile(word) };
    if before & SEQ_ODD != 0 || !crate::atomic::claim(word, before, before.wrapping_add(SEQ_ONE)) {
        return;
    }
    // A live flow's entry (empty ones, and the flow's own, read as seen at 0).
    if oldest != 0 {
        if let Some(c) = FLOW_EVICTIONS.get_ptr_mut(0) {
            unsafe { *c += 1 };
        }
    }
    let k = entry as *mut u64;
    for (i, w) in words.iter().enumerate() {
        unsafe { write_volatile(k.add(i), *w) };
    }
    unsafe {
        write_volatile(&raw mut (*entry).state.backend, state.backend);
        write_volatile(&raw mut (*entry).state.service, state.service);
        write_volatile(&raw mut (*entry).state.last_seen, state.last_seen);
    }
    // Flags and the sequence, even again, in one store: the entry is whole.
    let after = (before.wrapping_add(2 * SEQ_ONE) & !0xffff_ffff) | state.flags as u64;
    unsafe { write_volatile(word, after) };
}

/// The backend for a new flow: the client's persistence template if the service has one
/// and it is fresh, else the scheduler's choice. `NO_BACKEND` when none is eligible.
/// A separate BPF function (own stack frame).
#[inline(never)]
pub fn schedule(pkt: &Packet, service: &ServiceInfo) -> u32 {
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
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
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
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
    let t = unsafe { *PERSIST.get_ptr(&key)? };
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
        &key,
        &PersistState {
            backend,
            _pad: 0,
            last_seen: now,
        },
        0,
    );
}
