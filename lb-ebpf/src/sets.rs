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

/// The set of `E`'s table that a key lives in, and the key's tag.
#[inline(always)]
pub fn set_of<E: Table>(words: &[u64; 5]) -> Option<Place> {
    let t = FLOW_TABLE.get(E::TABLE)?;
    let hash = flow_set(words, t.seed);
    Some(Place {
        set: E::set(t.set_index(hash) as u32)?,
        tag: flow_tag(hash),
    })
}

/// The entry of `E`'s table holding `words` and a consistent copy of it (see `find`).
#[inline(always)]
pub fn lookup<E: Table>(words: &[u64; 5]) -> Option<(*mut E, E)> {
    let (entry, copy) = find(set_of::<E>(words)?, words)?;
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

/// Claims the entry `words` goes to: its own if the set has it, else the one with the
/// greatest `age` (empty ones must be the oldest), and tags it with the key's tag.
/// Returns the entry and its control word before the claim (the caller writes the entry
/// and calls `release`). None if another writer holds it (the caller's next packet
/// retries). Counts an eviction when a live entry is taken.
#[inline(always)]
pub fn claim(
    place: Place,
    words: &[u64; 5],
    age: impl Fn(*const Entry) -> u64,
) -> Option<(*mut Entry, u64)> {
    let set = place.set;
    let mut victim = 0;
    let mut oldest = 0;
    let mut own = false;
    for way in 0..FLOW_WAYS {
        let entry = way_ptr(set, way) as *const Entry;
        if holds(entry, words) {
            victim = way;
            own = true;
            break;
        }
        let a = age(entry);
        if a > oldest || way == 0 {
            oldest = a;
            victim = way;
        }
    }
    let entry = way_ptr(set, victim);
    let control = unsafe { (entry as *mut u64).add(7) };
    let before = unsafe { read_volatile(control) };
    if held(before) || !crate::atomic::claim(control, before, before.wrapping_add(SEQ_STEP)) {
        return None;
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
    Some((entry, before))
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
