//! The connection table: an established flow keeps its backend while that backend is
//! active (even drained, even after the table changed); a new flow is scheduled, through
//! the persistence template when the service has one. Active-connection counts for the
//! load schedulers are kept here.

use core::ptr::read_volatile;

use lb_common::{
    BackendInfo, FlowEntry, FlowKey, FlowState, PersistKey, PersistState, ServiceInfo,
    BACKEND_ACTIVE, BYPASS_NOT_SYN, BYPASS_SET_FULL, FLOW_ACTIVE, FLOW_ESTABLISHED, FLOW_SYNCED,
    IPPROTO_TCP, NO_BACKEND, SCHED_MH, SYNC_END, SYNC_NEW, SYNC_REFRESH, SYNC_REFRESH_SHIFT,
    TOUCH_INTERVAL_NS,
};

use crate::{
    maps::{ACTIVE, BACKENDS, FLOW_BYPASSES, PERSIST, SETTINGS},
    parse::{Packet, Stop, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    sched,
    sets::{self, opaque},
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

/// `serving` in a separate BPF function, given the backend's id by the journey (a
/// reference argument would be passed field by field, more arguments than a BPF call
/// takes): the backend, or the packed `Stop` to return (passed to the kernel, counted).
#[inline(always)]
pub fn serving_by_id(id: u32) -> Result<&'static BackendInfo, u32> {
    serving(id).ok_or_else(|| {
        Stop::pack(Err(Stop::counted(
            aya_ebpf::bindings::xdp_action::XDP_PASS,
            lb_common::Reason::NoBackend,
        )))
    })
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

/// A TCP SYN without ACK: a connection's first packet (or its retransmission).
#[inline(always)]
fn bare_syn(pkt: &Packet) -> bool {
    pkt.proto == IPPROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A flow's entry and a consistent copy of its state, if the table has it (an entry a
/// writer holds or changed while it was read counts as absent); and where its entry
/// lives or goes (`sets::spot_of`), for `start`.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> (u64, Option<(*mut FlowEntry, FlowState)>) {
    let words = key.words();
    let spot = sets::spot_of::<FlowEntry>(&words);
    let found = sets::lookup_at::<FlowEntry>(spot, &words);
    (spot, found.map(|(entry, copy)| (entry, copy.state)))
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
    let reopened = bare_syn(pkt) && st.flags & FLOW_ACTIVE == 0;
    let live = unsafe { &mut (*entry).state };
    if st.service == service.id && fresh && !reopened && serving(st.backend).is_some() {
        // Once per flow: its second packet (a peer's entry: its first here) marks it
        // established, which a flood's new flows never evict, and refreshes it as a
        // packet a second later would: a flow that took its entry from another (a
        // flood's, see `start`) writes its persistence template now, having shown it is
        // no spoofed SYN.
        let unmarked = st.flags & FLOW_ESTABLISHED == 0 && !bare_syn(pkt);
        if unmarked || now.saturating_sub(st.last_seen) > TOUCH_INTERVAL_NS {
            if unmarked {
                live.flags |= FLOW_ESTABLISHED;
            }
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

/// `record`'s answers: the flow took an empty or its own entry; it took another
/// flow's (evicting it); its entry was held by another writer (its next packet retries);
/// it was refused one (counted in `FLOW_BYPASSES`).
const TOOK_FREE: u32 = 0;
const TOOK_LIVE: u32 = 1;
const BUSY: u32 = 2;
const REFUSED: u32 = 3;

/// `record`'s scores of an entry's class, above its age (see `record`); a score of a
/// full set's entry stays below 2^63 (`sets::claim` compares by a difference's sign).
const CLASS_SHIFT: u32 = 61;
const SYNCED_CLASS: u64 = 1 << CLASS_SHIFT;
/// At least this: an empty entry's score (`u64::MAX`), or the flow's own.
const FREE_CLASS: u64 = 3 << CLASS_SHIFT;

/// Writes a flow's entry: over its own stale entry if its set has one, else over the set's
/// empty or least recently seen entry (evicting that flow: its next packet is scheduled
/// again).
///
/// With `conntrack.flood_protection` the entries rank, as victims: empty first, then
/// those of a single packet, then peers' (synced) ones, each class least recently seen
/// first; a flow never evicts an established entry. A packet that may open a flow (a SYN,
/// any UDP datagram) takes anything down to peers' entries; another TCP packet (a flow
/// this node does not know, as after a failover without `sync:`) only an empty entry.
/// Refused, the packet is still forwarded, by the scheduler's choice. An entry idle past
/// its timeout is not told apart here: the daemon empties it within 5 s (`reconcile`),
/// and telling it apart made every new flow dearer (10 ns or more here).
///
/// A separate BPF function, so that its frame (the key, the scan's state) is not on the
/// stack under `sync::report`, which `start` calls next; and a global one (exported as
/// `bascule_record`, like `schedule`), checked by the verifier once on its own instead of
/// again for every state the program reaches its call with: the scan of seven ways, each
/// way's choice a branch, cost about 50,000 steps as a static function.
///
/// Handed what the lookup that missed found (`spot`: the set and the key's tag, see
/// `sets::spot_of`) rather than hashing the key again, and the entry's word 5 (`target`:
/// backend, service above): a BPF function takes at most five arguments.
#[export_name = "bascule_record"]
#[inline(never)]
#[allow(improper_ctypes_definitions)] // a pointer to our own `Packet`
pub extern "C" fn record(pkt: *const Packet, target: u64, flags: u32, now: u64, spot: u64) -> u32 {
    if pkt.is_null() {
        return BUSY;
    }
    // SAFETY: non-null, and `start`'s caller's `Packet`.
    let pkt = unsafe { &*pkt };
    let words = key(pkt).words();
    let Some(set) = sets::place::<FlowEntry>(spot) else {
        return BUSY;
    };
    let Some(settings) = SETTINGS.get(0) else {
        return BUSY;
    };
    let protect = settings.flood_protection != 0;
    let keep_classes = 0u64.wrapping_sub(protect as u64);
    // Without a branch: the verifier walks the seven ways' loop once per combination of
    // the branches taken in it (a branch per class made that over a million steps).
    // Asked of a full set's entries only (`sets::claim` takes an empty way first).
    let age = |e: *const sets::Entry| {
        let w = e as *const u64;
        let seen = unsafe { read_volatile(w.add(6)) };
        let flags = unsafe { read_volatile(w.add(7)) } & 0xffff_ffff;
        // Least recently seen first (63 bits, see `CLASS_SHIFT`).
        let recency = !seen >> 1;
        let established = opaque(flags / FLOW_ESTABLISHED as u64) & 1;
        let synced = opaque(flags / FLOW_SYNCED as u64) & 1;
        // Established 0, synced 1, single-packet 2.
        let class = (2 - synced) * (1 - established);
        let classed = (class << CLASS_SHIFT) | (recency >> 2);
        // Both below 2^63: classes 0-2 above 61 bits of recency, or recency alone.
        sets::select(keep_classes, recency, classed)
    };
    let opens = pkt.proto != IPPROTO_TCP || bare_syn(pkt);
    let floor = match (protect, opens) {
        (false, _) => 0,
        (true, true) => SYNCED_CLASS,
        (true, false) => FREE_CLASS,
    };
    let (entry, before, score) = match sets::claim(set, &words, age, floor) {
        sets::Claim::Taken {
            entry,
            before,
            score,
        } => (entry, before, score),
        sets::Claim::Busy => return BUSY,
        sets::Claim::Full => {
            let reason = if opens {
                BYPASS_SET_FULL
            } else {
                BYPASS_NOT_SYN
            };
            bypassed(reason);
            return REFUSED;
        }
    };
    let payload = [target, now];
    sets::release(entry, before, &words, payload, flags);
    if score >= FREE_CLASS {
        TOOK_FREE
    } else {
        TOOK_LIVE
    }
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
pub extern "C" fn schedule(pkt: *const Packet, service: *const ServiceInfo, now: u64) -> u32 {
    if pkt.is_null() || service.is_null() {
        return NO_BACKEND;
    }
    // SAFETY: non-null, and the caller's (`balance`) `Packet` and `ServiceInfo` on its stack.
    let (pkt, service) = unsafe { (&*pkt, &*service) };
    if let Some(id) = persistent_choice(pkt, service, now) {
        return id;
    }
    // Only `mh` hashes the 5-tuple (`sh` and `dh` hash an address in `sched::pick`): the
    // other schedulers are spared its ten dependent rounds.
    let hash = if service.scheduler == SCHED_MH {
        lb_common::hash::flow_hash(&pkt.src, &pkt.dst, pkt.ports, pkt.proto)
    } else {
        0
    };
    sched::choose(pkt, service, hash, now).unwrap_or(NO_BACKEND)
}

/// Counts a new flow forwarded without an entry (`lb_common::BYPASS_*`).
#[inline(always)]
pub fn bypassed(reason: u32) {
    if let Some(c) = FLOW_BYPASSES.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

/// Records a new flow: connection-table entry, active count, persistence template, the
/// report to peers. False when the flow was refused an entry (`record`): it is forwarded
/// all the same but leaves no trace (no template, no first fragment, no report), so that
/// a flood fills none of those tables either. A separate BPF function (own stack frame).
/// `now` is `schedule`'s, `spot` the flow's `lookup`'s.
#[inline(never)]
pub fn start(pkt: &Packet, service: &ServiceInfo, id: u32, now: u64, spot: u64) -> bool {
    let flags = if closing(pkt) { 0 } else { FLOW_ACTIVE };
    let target = u64::from(id) | u64::from(service.id) << 32;
    let taken = record(pkt, target, flags, now, spot);
    if taken == REFUSED {
        return false;
    }
    if flags != 0 {
        add_active(id);
    }
    // A flow that evicted another (its set was full: maybe a flood) writes its template
    // only with its second packet (`keep`): spoofed SYNs never evict clients' templates.
    if service.persistence_secs != 0 && taken != TOOK_LIVE {
        remember_client(pkt, service, id, now);
    }
    if crate::sync::enabled() {
        let _ = crate::sync::report(pkt, service.id, id, SYNC_NEW as u32, flags);
    }
    true
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
