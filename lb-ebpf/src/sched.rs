//! Choosing a backend for a new flow, with IPVS's meaning for every scheduler. The choice
//! is made once, at a flow's first packet; the connection table pins it afterwards.

use aya_ebpf::helpers::bpf_loop;
use lb_common::{
    hash::{addr_hash, probe_hash},
    DestKey, DestSet, ServiceInfo, BACKEND_ACTIVE, LBLCR_EXPIRE_NS, LBLCR_SET_SIZE,
    MAX_CYCLE_PROBES, MAX_SCAN_BACKENDS, MAX_TABLE_PROBES, NO_BACKEND, SCHED_DH, SCHED_LBLC,
    SCHED_LBLCR, SCHED_LC, SCHED_NQ, SCHED_RR, SCHED_SED, SCHED_SH, SCHED_WLC, SCHED_WRR,
};

use crate::{
    maps::{ACTIVE, BACKENDS, CURSORS, DESTS, MAGLEV, OVERLOADS},
    parse::Packet,
};

/// A backend that can take new flows (active, weighted, and not at its connection
/// threshold): its weight. Only the weight is copied out: the scans' `bpf_loop`
/// callbacks, whose frames add up with their callers', call this.
#[inline(always)]
pub fn eligible(id: u32) -> Option<u32> {
    let b = BACKENDS.get(id)?;
    let usable = b.flags & BACKEND_ACTIVE != 0 && b.weight > 0;
    (usable && (b.max_conns == 0 || at_threshold(id) == 0)).then_some(b.weight)
}

/// Connection thresholds (IPVS's `-x`/`-y`): whether backend `id` takes no new flow now.
/// The hysteresis state (`OVERLOADS`) is brought up to date here, each time a new flow
/// considers the backend, from the exact active count (`ACTIVE`, kept per packet): it
/// turns on at `max_conns` active connections and off below `min_conns`. Between two
/// new flows that consider it only its own flows change its count, and those only go
/// down, so the state is what it would be had it been updated at every change. Flipped
/// with a compare-and-swap: two CPUs that see the same change count it once.
///
/// A separate BPF function (1 when at the threshold), called only for a backend that has
/// one: its map keys are not on the frames of the schedulers that call it, whose chain
/// of calls is near the verifier's stack limit.
#[inline(never)]
fn at_threshold(id: u32) -> u32 {
    let (Some(b), Some(state)) = (BACKENDS.get(id), OVERLOADS.get_ptr_mut(id)) else {
        return 0;
    };
    let v = unsafe { core::ptr::read_volatile(state) };
    let was = v & 1 != 0;
    let now = b.overloaded(was, active(id));
    if now != was {
        crate::atomic::claim(state, v, v + 1);
    }
    now as u32
}

/// A table or cycle entry that can take the flow as far as thresholds go (the tables
/// hold only backends that take flows otherwise).
#[inline(always)]
fn below_threshold(id: u32) -> bool {
    match BACKENDS.get(id) {
        Some(b) => b.max_conns == 0 || at_threshold(id) == 0,
        None => true,
    }
}

/// The backend id for a new flow of `service`, or `None` when it has no eligible backend.
/// Inlined into its caller: it runs the scheduler (`pick`), then, when the entry that
/// picked for the flow belongs to a backend at its connection threshold, the search for
/// another (`search`). Each is a BPF function of its own, called one after the other:
/// the search's frame is not added to the scheduler's, whose chain of calls (with the
/// scans' `bpf_loop` callbacks) is at the verifier's stack limit.
#[inline(always)]
pub fn choose(pkt: &Packet, service: &ServiceInfo, flow_hash: u32, now: u64) -> Option<u32> {
    let word = pick(pkt, service, flow_hash, now);
    let id = if word >> 62 == 0 {
        word as u32
    } else {
        search(word)
    };
    (id != NO_BACKEND).then_some(id)
}

/// `pick`'s answer when the entry it found is a backend at its threshold, packed in one
/// word for `search`: bits 62-63 the kind (`HAND_OVER` a table slot, `STEP_ON` in a
/// cycle), 42-59 the table's size, 32-41 the service id, 0-31 the flow's slot hash.
const HAND_OVER: u64 = 1 << 62;
const STEP_ON: u64 = 2 << 62;

#[inline(always)]
fn search_word(kind: u64, service: &ServiceInfo, hash: u32) -> u64 {
    kind | (service.table_size as u64 & 0x3_ffff) << 42
        | (service.id as u64 & 0x3ff) << 32
        | hash as u64
}

/// The scheduler's choice (a backend id, `NO_BACKEND`), or a `search_word`. A separate
/// BPF function: its frame (the scans, the lblc sets) is not on the forwarding path's
/// stack.
#[inline(never)]
fn pick(pkt: &Packet, service: &ServiceInfo, flow_hash: u32, now: u64) -> u64 {
    let id = match service.scheduler {
        SCHED_RR | SCHED_WRR => return next_in_cycle(service),
        SCHED_LC | SCHED_WLC | SCHED_SED | SCHED_NQ => least_loaded(service),
        SCHED_LBLC | SCHED_LBLCR => by_locality(pkt, service, now),
        SCHED_SH => return slot(service, addr_hash(&pkt.src)),
        SCHED_DH => return slot(service, addr_hash(&pkt.dst)),
        // mh: Maglev over the 5-tuple.
        _ => return slot(service, flow_hash),
    };
    id.unwrap_or(NO_BACKEND) as u64
}

/// Slot `index` of a service's table (two slots per u64 cell, the even one in the low
/// half; see `lb_common::TABLE_CELLS`).
#[inline(always)]
fn table_slot(service_id: u32, index: u32) -> Option<u32> {
    let cell = *MAGLEV.get_value(service_id, &(index >> 1))?;
    Some(if index & 1 == 0 {
        cell as u32
    } else {
        (cell >> 32) as u32
    })
}

#[inline(always)]
fn entry(service: &ServiceInfo, index: u32) -> Option<u32> {
    let id = table_slot(service.id, index)?;
    (id != NO_BACKEND).then_some(id)
}

/// mh, sh, dh: a hash picks a slot of the service's table. A slot whose backend is at
/// its connection threshold is handed over for the flow, as a failed backend's slots
/// are: `search` gives the flow the first of up to `MAX_TABLE_PROBES` other slots
/// (`hash::probe_hash`) whose backend is below its threshold. Only that backend's flows
/// move; its slots are its own again once it is below `min_conns`.
#[inline(always)]
fn slot(service: &ServiceInfo, hash: u32) -> u64 {
    if service.table_size == 0 {
        return NO_BACKEND as u64;
    }
    match entry(service, hash % service.table_size) {
        Some(id) if !below_threshold(id) => search_word(HAND_OVER, service, hash),
        Some(id) => id as u64,
        None => NO_BACKEND as u64,
    }
}

/// rr: the service's backends in order; wrr: the precomputed weighted cycle (IPVS's
/// interleaving). The CPU's cursor advances once per new flow, and (`search`) past the
/// entries of backends at their connection threshold (at most `MAX_CYCLE_PROBES` of
/// them), as IPVS's rr and wrr skip an overloaded server.
#[inline(always)]
fn next_in_cycle(service: &ServiceInfo) -> u64 {
    if service.table_size == 0 {
        return NO_BACKEND as u64;
    }
    let Some(cursor) = CURSORS.get_ptr_mut(service.id) else {
        return NO_BACKEND as u64;
    };
    let n = unsafe { *cursor };
    unsafe { *cursor = n + 1 };
    match entry(service, (n % service.table_size as u64) as u32) {
        Some(id) if !below_threshold(id) => search_word(STEP_ON, service, 0),
        Some(id) => id as u64,
        None => NO_BACKEND as u64,
    }
}

/// Another entry of a table than the one `pick` found, whose backend is at its
/// threshold (`word`: see `search_word`): the backend of the first entry below its
/// threshold, else `NO_BACKEND`. `HAND_OVER`: up to `MAX_TABLE_PROBES` slots
/// `hash::probe_hash(hash, i)`; `STEP_ON`: the next entries of the rr/wrr cycle from the
/// CPU's cursor, which moves past those looked at.
#[inline(never)]
fn search(word: u64) -> u32 {
    let service = ((word >> 32) & 0x3ff) as u32;
    let size = ((word >> 42) & 0x3_ffff) as u32;
    let in_cycle = word & STEP_ON != 0;
    let cursor = CURSORS.get_ptr_mut(service);
    let start = match (in_cycle, cursor) {
        (false, _) => word & 0xffff_ffff,
        (true, Some(c)) => unsafe { *c },
        (true, None) => return NO_BACKEND,
    };
    let mut p = Probe {
        start,
        service,
        size,
        found: NO_BACKEND,
        tried: 0,
    };
    let (tries, step) = if in_cycle {
        (
            size.min(MAX_CYCLE_PROBES),
            cycle_step as *mut core::ffi::c_void,
        )
    } else {
        (MAX_TABLE_PROBES, probe_step as *mut core::ffi::c_void)
    };
    unsafe {
        bpf_loop(
            tries,
            step,
            &mut p as *mut Probe as *mut core::ffi::c_void,
            0,
        )
    };
    if let (true, Some(c)) = (in_cycle, cursor) {
        unsafe { *c = start + u64::from(p.tried) };
    }
    p.found
}

/// A search for another entry than one whose backend is at its threshold (a `bpf_loop`
/// context): `start` is the flow's hash (tables) or the cycle position after the entry.
#[repr(C)]
struct Probe {
    start: u64,
    service: u32,
    size: u32,
    found: u32,
    /// Entries looked at so far (the cursor moves past them).
    tried: u32,
}

impl Probe {
    /// Stops the loop at entry `index` if its backend takes the flow.
    #[inline(always)]
    fn try_entry(&mut self, index: u32) -> i64 {
        self.tried += 1;
        if self.size == 0 {
            return 1;
        }
        match table_slot(self.service, index % self.size) {
            Some(id) if id != NO_BACKEND && below_threshold(id) => {
                self.found = id;
                1
            }
            _ => 0,
        }
    }
}

extern "C" fn probe_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let p = unsafe { &mut *(ctx as *mut Probe) };
    p.try_entry(probe_hash(p.start as u32, i as u32))
}

extern "C" fn cycle_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let p = unsafe { &mut *(ctx as *mut Probe) };
    let size = p.size as u64;
    if size == 0 {
        return 1;
    }
    p.try_entry(((p.start + i) % size) as u32)
}

#[inline(always)]
fn active(id: u32) -> u64 {
    ACTIVE.get(id).copied().unwrap_or(0)
}

/// Is `candidate` (load `a`, weight `w`) a better pick than the current best (load
/// `best_a`, weight `best_w`) under the scheduler's formula? IPVS compares cross
/// products to avoid divisions: wlc `a/w`, sed `(a+1)/w`, lc `a`.
#[inline(always)]
fn better(scheduler: u8, a: u64, w: u64, best_a: u64, best_w: u64) -> bool {
    match scheduler {
        SCHED_LC => a < best_a,
        SCHED_SED | SCHED_NQ => (a + 1) * best_w < (best_a + 1) * w,
        // wlc, and the wlc step of lblc/lblcr.
        _ => a * best_w < best_a * w,
    }
}

/// lc, wlc, sed, nq over the service's list (first listed wins ties, as in IPVS).
/// nq: a backend with no active connection is taken at once.
#[inline(always)]
fn least_loaded(service: &ServiceInfo) -> Option<u32> {
    scan(service, service.scheduler)
}

/// State of a scan over a service's list, shared with the `bpf_loop` callbacks (a loop
/// whose iterations branch on loads would make the verifier walk every combination).
#[repr(C)]
struct Scan {
    service: u32,
    len: u32,
    scheduler: u32,
    best: u32,
    /// As u32 (an active count saturates there), as in `Members`: on `pick`'s frame.
    best_a: u32,
    best_w: u32,
    /// `overloaded`: set when some backend runs under half its weight.
    found: u32,
    _pad: u32,
}

impl Scan {
    #[inline(always)]
    fn of(service: &ServiceInfo, scheduler: u32) -> Scan {
        Scan {
            service: service.id,
            len: service.table_size,
            scheduler,
            best: NO_BACKEND,
            best_a: 0,
            best_w: 1,
            found: 0,
            _pad: 0,
        }
    }

    /// Calls `step` for each listed backend (at most MAX_SCAN_BACKENDS) until it stops.
    #[inline(always)]
    fn run(&mut self, step: extern "C" fn(u64, *mut core::ffi::c_void) -> i64) {
        unsafe {
            bpf_loop(
                MAX_SCAN_BACKENDS,
                step as *mut core::ffi::c_void,
                self as *mut Scan as *mut core::ffi::c_void,
                0,
            )
        };
    }
}

/// The `i`-th listed backend of the scanned service, if it is eligible: `Err(1)` past the
/// end of the list (stop the loop), `Err(0)` for a slot to skip.
#[inline(always)]
fn listed(s: &Scan, i: u64) -> Result<(u32, u32), i64> {
    let i = i as u32;
    if i >= s.len {
        return Err(1);
    }
    let id = table_slot(s.service, i).ok_or(0i64)?;
    if id == NO_BACKEND {
        return Err(0);
    }
    eligible(id).map(|w| (id, w)).ok_or(0)
}

extern "C" fn scan_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let (id, b) = match listed(s, i) {
        Ok(found) => found,
        Err(next) => return next,
    };
    let a = active(id).min(u32::MAX as u64);
    if s.scheduler == SCHED_NQ as u32 && a == 0 {
        s.best = id;
        return 1;
    }
    let (best_a, best_w) = (s.best_a as u64, s.best_w as u64);
    if s.best == NO_BACKEND || better(s.scheduler as u8, a, b as u64, best_a, best_w) {
        s.best = id;
        s.best_a = a as u32;
        s.best_w = b;
    }
    0
}

#[inline(always)]
fn scan(service: &ServiceInfo, scheduler: u8) -> Option<u32> {
    let mut s = Scan::of(service, scheduler as u32);
    s.run(scan_step);
    (s.best != NO_BACKEND).then_some(s.best)
}

extern "C" fn underloaded_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let (id, b) = match listed(s, i) {
        Ok(found) => found,
        Err(next) => return next,
    };
    if active(id) * 2 < b as u64 {
        s.found = 1;
        return 1;
    }
    0
}

/// IPVS's overload test for lblc/lblcr: more active connections than weight, while some
/// backend of the service runs under half its weight.
#[inline(always)]
fn overloaded(service: &ServiceInfo, id: u32, weight: u32) -> bool {
    if active(id) <= weight as u64 {
        return false;
    }
    let mut s = Scan::of(service, 0);
    s.run(underloaded_step);
    s.found != 0
}

/// A destination's server set while it is being examined (a `bpf_loop` context).
#[repr(C)]
struct Members {
    set: DestSet,
    /// Members in use: 1 for lblc, `LBLCR_SET_SIZE` for lblcr.
    size: u32,
    count: u32,
    pick: u32,
    worst_slot: u32,
    /// Loads and weights as u32 (an active count saturates there): this context is on
    /// `choose`'s frame, at the deepest chain of calls the verifier checks.
    pick_a: u32,
    pick_w: u32,
    worst_a: u32,
    worst_w: u32,
    /// First free member slot (`LBLCR_SET_SIZE` when full).
    free: u32,
    _pad: u32,
}

extern "C" fn member_step(m: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let st = unsafe { &mut *(ctx as *mut Members) };
    let m = m as usize;
    if m >= st.size as usize || m >= LBLCR_SET_SIZE {
        return 1;
    }
    let id = st.set.members[m];
    let usable = if id == NO_BACKEND { None } else { eligible(id) };
    let Some(b) = usable else {
        st.set.members[m] = NO_BACKEND;
        if st.free as usize == LBLCR_SET_SIZE {
            st.free = m as u32;
        }
        return 0;
    };
    st.count += 1;
    let a = active(id).min(u32::MAX as u64);
    let w = b as u64;
    let (pick_a, pick_w) = (st.pick_a as u64, st.pick_w as u64);
    if st.pick == NO_BACKEND || better(SCHED_WLC, a, w, pick_a, pick_w) {
        st.pick = id;
        st.pick_a = a as u32;
        st.pick_w = b;
    }
    if st.worst_w == 0 || a * st.worst_w as u64 > st.worst_a as u64 * w {
        st.worst_slot = m as u32;
        st.worst_a = a as u32;
        st.worst_w = b;
    }
    0
}

/// lblc: a destination keeps its backend until that backend is unavailable or
/// overloaded, then gets the wlc choice. lblcr: a destination has a server set; the least
/// loaded member serves; when it is overloaded the wlc choice joins the set (in a free
/// slot, else replacing the most loaded member); a set unchanged for `LBLCR_EXPIRE_NS`
/// sheds its most loaded member.
#[inline(always)]
fn by_locality(pkt: &Packet, service: &ServiceInfo, now: u64) -> Option<u32> {
    let key = DestKey {
        dst: pkt.dst,
        service: service.id,
    };
    let known = DESTS.get_ptr(key).map(|p| unsafe { *p });
    let mut st = Members {
        set: known.unwrap_or(DestSet {
            members: [NO_BACKEND; LBLCR_SET_SIZE],
            last_change: now,
        }),
        size: if service.scheduler == SCHED_LBLC {
            1
        } else {
            LBLCR_SET_SIZE as u32
        },
        count: 0,
        pick: NO_BACKEND,
        worst_slot: 0,
        pick_a: 0,
        pick_w: 1,
        worst_a: 0,
        worst_w: 0,
        free: LBLCR_SET_SIZE as u32,
        _pad: 0,
    };
    unsafe {
        bpf_loop(
            LBLCR_SET_SIZE as u32,
            member_step as *mut core::ffi::c_void,
            &mut st as *mut Members as *mut core::ffi::c_void,
            0,
        )
    };
    let mut changed = false;
    let need_new = match st.pick {
        NO_BACKEND => true,
        id => match eligible(id) {
            Some(w) => overloaded(service, id, w),
            None => true,
        },
    };
    if need_new {
        let chosen = scan(service, SCHED_WLC)?;
        let at = if st.free < st.size {
            st.free
        } else {
            st.worst_slot
        } as usize;
        if at < LBLCR_SET_SIZE {
            st.set.members[at] = chosen;
        }
        st.pick = chosen;
        changed = true;
    } else if st.count > 1 && now.saturating_sub(st.set.last_change) > LBLCR_EXPIRE_NS {
        let w = st.worst_slot as usize;
        if w < LBLCR_SET_SIZE && st.set.members[w] != st.pick {
            st.set.members[w] = NO_BACKEND;
            changed = true;
        }
    }
    if changed {
        st.set.last_change = now;
    }
    if changed || known.is_none() {
        let _ = DESTS.insert(key, st.set, 0);
    }
    Some(st.pick)
}
