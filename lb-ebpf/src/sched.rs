//! Choosing a backend for a new flow, with IPVS's meaning for every scheduler. The choice
//! is made once, at a flow's first packet; the connection table pins it afterwards.

use aya_ebpf::helpers::bpf_loop;
use lb_common::{
    hash::addr_hash, BackendInfo, DestKey, DestSet, ServiceInfo, BACKEND_ACTIVE, LBLCR_EXPIRE_NS,
    LBLCR_SET_SIZE, MAX_SCAN_BACKENDS, NO_BACKEND, SCHED_DH, SCHED_LBLC, SCHED_LBLCR, SCHED_LC,
    SCHED_NQ, SCHED_RR, SCHED_SED, SCHED_SH, SCHED_WLC, SCHED_WRR,
};

use crate::{
    maps::{ACTIVE, BACKENDS, CURSORS, DESTS, MAGLEV},
    parse::Packet,
};

/// A backend that can take new flows: active and weighted.
#[inline(always)]
pub fn eligible(id: u32) -> Option<BackendInfo> {
    let b = *BACKENDS.get(id)?;
    (b.flags & BACKEND_ACTIVE != 0 && b.weight > 0).then_some(b)
}

/// The backend id for a new flow of `service`, or `None` when it has no eligible backend.
/// A separate BPF function: its frame (the scans, the lblc sets) is not on the
/// forwarding path's stack.
#[inline(never)]
pub fn choose(pkt: &Packet, service: &ServiceInfo, flow_hash: u32, now: u64) -> Option<u32> {
    match service.scheduler {
        SCHED_RR | SCHED_WRR => next_in_cycle(service),
        SCHED_LC | SCHED_WLC | SCHED_SED | SCHED_NQ => least_loaded(service),
        SCHED_LBLC | SCHED_LBLCR => by_locality(pkt, service, now),
        SCHED_SH => slot(service, addr_hash(&pkt.src)),
        SCHED_DH => slot(service, addr_hash(&pkt.dst)),
        // mh: Maglev over the 5-tuple.
        _ => slot(service, flow_hash),
    }
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

/// mh, sh, dh: a hash picks a slot of the service's table.
#[inline(always)]
fn slot(service: &ServiceInfo, hash: u32) -> Option<u32> {
    if service.table_size == 0 {
        return None;
    }
    entry(service, hash % service.table_size)
}

/// rr: the service's backends in order; wrr: the precomputed weighted cycle (IPVS's
/// interleaving). The CPU's cursor advances once per new flow.
#[inline(always)]
fn next_in_cycle(service: &ServiceInfo) -> Option<u32> {
    if service.table_size == 0 {
        return None;
    }
    let cursor = CURSORS.get_ptr_mut(service.id)?;
    let n = unsafe { *cursor };
    unsafe { *cursor = n + 1 };
    entry(service, (n % service.table_size as u64) as u32)
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
    best_a: u64,
    best_w: u64,
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
fn listed(s: &Scan, i: u64) -> Result<(u32, BackendInfo), i64> {
    let i = i as u32;
    if i >= s.len {
        return Err(1);
    }
    let id = table_slot(s.service, i).ok_or(0i64)?;
    if id == NO_BACKEND {
        return Err(0);
    }
    eligible(id).map(|b| (id, b)).ok_or(0)
}

extern "C" fn scan_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let (id, b) = match listed(s, i) {
        Ok(found) => found,
        Err(next) => return next,
    };
    let a = active(id);
    if s.scheduler == SCHED_NQ as u32 && a == 0 {
        s.best = id;
        return 1;
    }
    let w = b.weight as u64;
    if s.best == NO_BACKEND || better(s.scheduler as u8, a, w, s.best_a, s.best_w) {
        s.best = id;
        s.best_a = a;
        s.best_w = w;
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
    if active(id) * 2 < b.weight as u64 {
        s.found = 1;
        return 1;
    }
    0
}

/// IPVS's overload test for lblc/lblcr: more active connections than weight, while some
/// backend of the service runs under half its weight.
#[inline(always)]
fn overloaded(service: &ServiceInfo, id: u32, b: &BackendInfo) -> bool {
    if active(id) <= b.weight as u64 {
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
    pick_a: u64,
    pick_w: u64,
    worst_a: u64,
    worst_w: u64,
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
    let a = active(id);
    let w = b.weight as u64;
    if st.pick == NO_BACKEND || better(SCHED_WLC, a, w, st.pick_a, st.pick_w) {
        st.pick = id;
        st.pick_a = a;
        st.pick_w = w;
    }
    if st.worst_w == 0 || a * st.worst_w > st.worst_a * w {
        st.worst_slot = m as u32;
        st.worst_a = a;
        st.worst_w = w;
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
            Some(b) => overloaded(service, id, &b),
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
