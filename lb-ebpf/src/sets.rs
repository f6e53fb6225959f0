//! The set-associative tables (the connection table, `nat` replies): arrays of sets of a
//! line of tags (`lb_common::SetTags`) and `FLOW_WAYS` 64-byte entries, the key in words
//! 0-4 and the write sequence in the high half of word 7 (`lb_common::FlowEntry`
//! describes the protocol). These steps work on any such entry, seen as eight words.

use core::ptr::{read_volatile, write_volatile};

use lb_common::{
    hash::{flow_set, flow_tag},
    held, in_use, released, FlowEntry, NatEntry, SetEntry, FLOW_WAYS, SEQ_STEP,
};

use crate::maps::{CONNTRACK, FLOW_EVICTIONS, FLOW_TABLE, NAT};

/// An entry as eight words.
pub type Entry = [u64; 8];
/// One set: the line of tags (as eight words), then the ways (way `w` is `set[w + 1]`).
pub type Set = [Entry; FLOW_WAYS + 1];

/// A set and the tag of the key looked for in it.
#[derive(Clone, Copy)]
pub struct Place {
    pub set: *mut Set,
    pub tag: u32,
}

#[inline(always)]
fn way_ptr(set: *mut Set, way: usize) -> *mut Entry {
    unsafe { &raw mut (*set)[way + 1] }
}

#[inline(always)]
fn tag_ptr(set: *mut Set, way: usize) -> *mut u32 {
    unsafe { (set as *mut u32).add(way) }
}

/// An entry type and the map of its table.
pub trait Table: SetEntry {
    fn set(index: u32) -> Option<*mut Set>;
}

impl Table for FlowEntry {
    #[inline(always)]
    fn set(index: u32) -> Option<*mut Set> {
        CONNTRACK.get_ptr_mut(index).map(|s| s as *mut Set)
    }
}

impl Table for NatEntry {
    #[inline(always)]
    fn set(index: u32) -> Option<*mut Set> {
        NAT.get_ptr_mut(index).map(|s| s as *mut Set)
    }
}

/// Where a key lives in `E`'s table, as one word: its set's index in the high half, its
/// tag in the low half (never 0, so 0 stands for none). One scalar, so that a global BPF
/// function (`flow::record`) can be handed what a lookup already computed.
#[inline(always)]
pub fn spot_of<E: Table>(words: &[u64; 5]) -> u64 {
    match FLOW_TABLE.get(E::TABLE) {
        Some(t) => {
            let hash = flow_set(words, t.seed);
            t.set_index(hash) << 32 | u64::from(flow_tag(hash))
        }
        None => 0,
    }
}

/// The set and tag of a `spot_of` word.
#[inline(always)]
pub fn place<E: Table>(spot: u64) -> Option<Place> {
    if spot == 0 {
        return None;
    }
    Some(Place {
        set: E::set((spot >> 32) as u32)?,
        tag: spot as u32,
    })
}

/// The set of `E`'s table that a key lives in, and the key's tag.
#[inline(always)]
pub fn set_of<E: Table>(words: &[u64; 5]) -> Option<Place> {
    place::<E>(spot_of::<E>(words))
}

/// The entry of `E`'s table holding `words` and a consistent copy of it (see `find`).
#[inline(always)]
pub fn lookup<E: Table>(words: &[u64; 5]) -> Option<(*mut E, E)> {
    lookup_at::<E>(spot_of::<E>(words), words)
}

/// `lookup` in the key's `spot_of`, which the caller computed.
#[inline(always)]
pub fn lookup_at<E: Table>(spot: u64, words: &[u64; 5]) -> Option<(*mut E, E)> {
    let (entry, copy) = find(place::<E>(spot)?, words)?;
    // SAFETY: an entry of `E`'s table is an `E` (eight words, `SetEntry`'s layout).
    Some((entry as *mut E, unsafe {
        (copy.as_ptr() as *const E).read_unaligned()
    }))
}

#[inline(always)]
fn holds(entry: *const Entry, words: &[u64; 5]) -> bool {
    let k = entry as *const u64;
    let mut diff = 0;
    for (i, w) in words.iter().enumerate() {
        diff |= unsafe { read_volatile(k.add(i)) } ^ w;
    }
    diff == 0
}

/// The entry holding `words` and a consistent copy of it, if the set has one (an entry a
/// writer holds, or that changed while it was read, counts as absent). Only the entries
/// whose tag matches are compared: for a flow the table holds, usually its own alone.
#[inline(always)]
pub fn find(place: Place, words: &[u64; 5]) -> Option<(*mut Entry, Entry)> {
    let set = place.set;
    // Every line of the set requested at once (the loaded words are not used): when the
    // set is not in the cache, the matching entry's line then arrives with the tags
    // instead of after them, and a new flow's claim finds the set in the cache.
    for way in 0..FLOW_WAYS {
        unsafe { read_volatile((way_ptr(set, way) as *const u64).add(7)) };
    }
    for way in 0..FLOW_WAYS {
        if unsafe { read_volatile(tag_ptr(set, way)) } != place.tag {
            continue;
        }
        let entry = way_ptr(set, way);
        let control = unsafe { (entry as *const u64).add(7) };
        let before = unsafe { read_volatile(control) };
        if !held(before) && holds(entry, words) {
            let copy = unsafe { read_volatile(entry) };
            if unsafe { read_volatile(control) } != before {
                return None;
            }
            return Some((entry, copy));
        }
    }
    None
}

/// `b` where `mask` is all ones, `a` where it is 0, without a branch (`mask` is one or
/// the other).
#[inline(always)]
pub fn select(mask: u64, a: u64, b: u64) -> u64 {
    a ^ ((a ^ b) & mask)
}

/// 1 if `v` is not 0, else 0, computed without a branch (see `opaque`).
#[inline(always)]
pub fn nonzero(v: u64) -> u64 {
    opaque(v | v.wrapping_neg()) >> 63
}

pub use lb_common::opaque;

/// What `claim` got.
pub enum Claim {
    /// The entry (and its control word before the claim): the caller writes it and calls
    /// `release`. `score` is the `age` it had (`u64::MAX` for the key's own entry).
    Taken {
        entry: *mut Entry,
        before: u64,
        score: u64,
    },
    /// Another writer holds the entry (the caller's next packet retries).
    Busy,
    /// No entry of the set scores `floor` or more, and none holds the key.
    Full,
}

/// Claims the entry `words` goes to: its own if the set has it, else an empty one, else
/// the one with the greatest `age` (below 2^63) if that is at least `floor`, and tags
/// it with the key's tag. Counts an eviction when a live entry is taken. `age` is only
/// asked when the set has no empty way (by the tags), so it need not tell empty entries
/// apart.
#[inline(always)]
pub fn claim(
    place: Place,
    words: &[u64; 5],
    age: impl Fn(*const Entry) -> u64,
    floor: u64,
) -> Claim {
    let set = place.set;
    // The tags first (one line, which `find` read): only a way whose tag is the key's may
    // hold it (a way is tagged while its writer holds it, before the key is written), and
    // a way tagged 0 is empty (emptied with its tag, see `flows::SetMemory::remove`).
    // The first empty way is taken without reading any entry's ages.
    let mut free = FLOW_WAYS as u64;
    for way in (0..FLOW_WAYS).rev() {
        let tag = unsafe { read_volatile(tag_ptr(set, way)) };
        if tag == place.tag && holds(way_ptr(set, way), words) {
            return take(place, way, u64::MAX, true);
        }
        // `free = way` if the tag is 0, without a branch (see `record`).
        let empty = 0u64.wrapping_sub(1 - nonzero(u64::from(tag)));
        free = select(empty, free, way as u64);
    }
    if free < FLOW_WAYS as u64 {
        return take(place, free as usize, u64::MAX, false);
    }
    // The greatest age without a branch: the ages of a full set are random, so a branch
    // per way was mispredicted about twice a claim. Ages are below 2^63, so the sign of
    // a difference compares them; the earliest of equal ages wins, as it would by
    // branches.
    let mut victim = 0u64;
    let mut oldest = age(way_ptr(set, 0));
    for way in 1..FLOW_WAYS {
        let a = age(way_ptr(set, way));
        // All ones when `a` is the greater.
        let greater = (opaque(oldest.wrapping_sub(a)) as i64 >> 63) as u64;
        oldest = select(greater, oldest, a);
        victim = select(greater, victim, way as u64);
    }
    // Never true; it bounds `victim` for the verifier.
    if victim >= FLOW_WAYS as u64 {
        return Claim::Busy;
    }
    if oldest < floor {
        return Claim::Full;
    }
    take(place, victim as usize, oldest, false)
}

/// Claims way `victim` of `place`'s set (see `claim`).
#[inline(always)]
fn take(place: Place, victim: usize, oldest: u64, own: bool) -> Claim {
    let set = place.set;
    let entry = way_ptr(set, victim);
    let control = unsafe { (entry as *mut u64).add(7) };
    let before = unsafe { read_volatile(control) };
    if held(before) || !crate::atomic::claim(control, before, before.wrapping_add(SEQ_STEP)) {
        return Claim::Busy;
    }
    // Tagged while held: a reader that sees the new tag before the entry is whole finds
    // it held, as before.
    unsafe { write_volatile(tag_ptr(set, victim), place.tag) };
    let live = in_use(unsafe { read_volatile((entry as *const u64).add(4)) });
    if live && !own {
        if let Some(c) = FLOW_EVICTIONS.get_ptr_mut(0) {
            unsafe { *c += 1 };
        }
    }
    Claim::Taken {
        entry,
        before,
        score: oldest,
    }
}

/// Writes a claimed entry: the key, words 5-6, and word 7's low half with the sequence
/// even again (one store: the entry is whole from then on).
#[inline(always)]
pub fn release(entry: *mut Entry, before: u64, words: &[u64; 5], payload: [u64; 2], low: u32) {
    let e = entry as *mut u64;
    for (i, w) in words.iter().enumerate() {
        unsafe { write_volatile(e.add(i), *w) };
    }
    unsafe {
        write_volatile(e.add(5), payload[0]);
        write_volatile(e.add(6), payload[1]);
        write_volatile(e.add(7), released(before, low));
    }
}
