//! The connection table seen from userspace: the datapath's `CONNTRACK` array of sets
//! (`lb_common::FlowEntry` says how it is shared), read and written in place through a
//! shared mapping of its memory. Finding a flow, listing the entries, removing one: the
//! same set choice (`hash::flow_set`) and the same write protocol as the datapath's.

use std::sync::atomic::{AtomicU64, Ordering};

use lb_common::{hash::flow_set, FlowEntry, FlowKey, FlowSet, FlowState, FlowTable, FLOW_WAYS};

/// `FlowState::seq` in the (flags, seq) word: one step, and the odd bit.
const SEQ_ONE: u64 = 1 << 32;

/// Memory holding the flow sets `sets` of a table: a mapping of (part of) the map, or
/// (tests) a plain buffer.
pub struct FlowMemory {
    base: *mut FlowSet,
    sets: std::ops::Range<usize>,
    table: FlowTable,
    mapped: bool,
    _owned: Vec<FlowSet>,
}

// SAFETY: the memory is either owned or a shared mapping that lives as long as `self`;
// every access to entries goes through atomics or volatile reads.
unsafe impl Send for FlowMemory {}

impl FlowMemory {
    /// Maps `sets` of the `CONNTRACK` array `fd` (mmap-able) read-write; the range must
    /// start and end on page boundaries (see `page_of`) or at the table's end.
    pub fn map(
        fd: i32,
        sets: std::ops::Range<usize>,
        table: FlowTable,
    ) -> std::io::Result<FlowMemory> {
        let size = std::mem::size_of::<FlowSet>();
        let len = sets.len() * size;
        // SAFETY: an mmap-able array map exposes its values from offset 0, page-aligned;
        // the caller's range lies within them; the mapping is unmapped in `drop`.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                // Populated at once: one call instead of a page fault per 4 KiB read.
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                (sets.start * size) as libc::off_t,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FlowMemory {
            base: mem.cast(),
            sets,
            table,
            mapped: true,
            _owned: Vec::new(),
        })
    }

    /// A table in plain memory (tests of the pure parts).
    pub fn owned(sets: usize, seed: u64) -> FlowMemory {
        assert!(sets.is_power_of_two());
        let mut owned = vec![FlowSet::default(); sets];
        FlowMemory {
            base: owned.as_mut_ptr(),
            sets: 0..sets,
            table: FlowTable {
                set_mask: sets as u64 - 1,
                seed,
            },
            mapped: false,
            _owned: owned,
        }
    }

    fn entry(&self, set: usize, way: usize) -> *mut FlowEntry {
        assert!(self.sets.contains(&set) && way < FLOW_WAYS);
        // SAFETY: in bounds (the sets held, each `FLOW_WAYS` entries).
        unsafe {
            (&raw mut (*self.base.add(set - self.sets.start)).ways)
                .cast::<FlowEntry>()
                .add(way)
        }
    }

    fn word(&self, set: usize, way: usize) -> &AtomicU64 {
        // SAFETY: `flags` and `seq` form one aligned u64 (offset 56 of a 64-byte entry).
        unsafe { AtomicU64::from_ptr((&raw mut (*self.entry(set, way)).state.flags).cast()) }
    }

    /// A consistent copy of one entry, None while a writer holds it or if it changed
    /// meanwhile, or if it is empty.
    fn read(&self, set: usize, way: usize) -> Option<(FlowKey, FlowState)> {
        let before = self.word(set, way).load(Ordering::Acquire);
        if before & SEQ_ONE != 0 {
            return None;
        }
        // SAFETY: a volatile copy of plain data; checked below to be whole.
        let e = unsafe { std::ptr::read_volatile(self.entry(set, way)) };
        std::sync::atomic::fence(Ordering::Acquire);
        if self.word(set, way).load(Ordering::Relaxed) != before || e.key.family == 0 {
            return None;
        }
        Some((e.key, e.state))
    }

    /// The set a flow lives in.
    pub fn set_of(&self, key: &FlowKey) -> usize {
        set_of(key, &self.table)
    }

    /// The state of one flow, if the table has it.
    pub fn lookup(&self, key: &FlowKey) -> Option<FlowState> {
        let set = self.set_of(key);
        (0..FLOW_WAYS)
            .filter_map(|way| self.read(set, way))
            .find(|(k, _)| k == key)
            .map(|(_, s)| s)
    }

    /// Every entry: (set, way, key, state).
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize, FlowKey, FlowState)> + '_ {
        self.sets.clone().flat_map(move |set| {
            (0..FLOW_WAYS).filter_map(move |way| self.read(set, way).map(|(k, s)| (set, way, k, s)))
        })
    }

    /// Empties one entry if it still holds `key` (a packet may have replaced it since it
    /// was read). Whether it did.
    pub fn remove(&self, set: usize, way: usize, key: &FlowKey) -> bool {
        let word = self.word(set, way);
        let before = word.load(Ordering::Acquire);
        if before & SEQ_ONE != 0
            || word
                .compare_exchange(
                    before,
                    before.wrapping_add(SEQ_ONE),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            return false;
        }
        let e = self.entry(set, way);
        // SAFETY: this writer owns the entry (odd sequence); plain data.
        let held = unsafe { std::ptr::read_volatile(&raw const (*e).key) } == *key;
        if held {
            unsafe {
                std::ptr::write_volatile(&raw mut (*e).key, FlowKey::default());
                std::ptr::write_volatile(&raw mut (*e).state.backend, 0);
                std::ptr::write_volatile(&raw mut (*e).state.service, 0);
                std::ptr::write_volatile(&raw mut (*e).state.last_seen, 0);
            }
        }
        let flags = if held { 0 } else { before & 0xffff_ffff };
        word.store(
            (before.wrapping_add(2 * SEQ_ONE) & !0xffff_ffff) | flags,
            Ordering::Release,
        );
        held
    }

    /// Empties every entry; how many held a flow.
    pub fn clear(&self) -> usize {
        let all: Vec<_> = self.entries().collect();
        all.iter()
            .filter(|(set, way, key, _)| self.remove(*set, *way, key))
            .count()
    }

    /// Writes a flow into its set's own, empty or least recently seen entry (tests of
    /// the reading side; the datapath's own choice is checked by the fixtures).
    #[cfg(test)]
    fn record(&self, key: &FlowKey, state: FlowState) {
        let set = self.set_of(key);
        let way = (0..FLOW_WAYS)
            .find(|&w| self.read(set, w).is_some_and(|(k, _)| k == *key))
            .unwrap_or_else(|| {
                (0..FLOW_WAYS)
                    .min_by_key(|&w| self.read(set, w).map_or(0, |(_, s)| s.last_seen))
                    .unwrap()
            });
        let e = self.entry(set, way);
        unsafe {
            (*e).key = *key;
            (*e).state = FlowState { seq: 0, ..state };
        }
    }
}

impl Drop for FlowMemory {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping made in `map`, of this length.
            unsafe {
                libc::munmap(
                    self.base.cast(),
                    self.sets.len() * std::mem::size_of::<FlowSet>(),
                )
            };
        }
    }
}

/// The set a flow lives in, in a table of this shape.
pub fn set_of(key: &FlowKey, table: &FlowTable) -> usize {
    (flow_set(&key.words(), table.seed) & table.set_mask) as usize
}

/// The sets sharing `set`'s page of memory (the part to map to read one flow), within a
/// table of `sets`.
pub fn page_of(set: usize, sets: usize) -> std::ops::Range<usize> {
    let per_page = 4096 / std::mem::size_of::<FlowSet>();
    let first = set / per_page * per_page;
    first..(first + per_page).min(sets)
}

/// A fresh table's seed, from the kernel's random source.
pub fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: writes at most 8 bytes into `seed`.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != 8 {
        // Only unpredictability is lost (the table works with any seed).
        return crate::datapath::monotonic_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_ne_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{FAMILY_V4, FLOW_ACTIVE, IPPROTO_TCP};

    fn flow(n: u32) -> FlowKey {
        FlowKey {
            src: [
                u32::from_be_bytes([10, 0, (n >> 8) as u8, n as u8]),
                0,
                0,
                0,
            ],
            dst: [u32::from_be_bytes([10, 1, 0, 1]), 0, 0, 0],
            sport: (1000 + n as u16).to_be(),
            dport: 80u16.to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }

    fn state(backend: u32, last_seen: u64) -> FlowState {
        FlowState {
            backend,
            service: 1,
            last_seen,
            flags: FLOW_ACTIVE,
            seq: 0,
        }
    }

    #[test]
    fn an_entry_is_one_cache_line_and_a_set_eight() {
        assert_eq!(std::mem::size_of::<FlowEntry>(), 64);
        assert_eq!(std::mem::size_of::<FlowSet>(), 512);
        assert_eq!(lb_common::flow_sets(1_000_000), 131_072);
        assert_eq!(lb_common::flow_sets(1024), 128);
    }

    #[test]
    fn flows_are_found_listed_and_removed() {
        let t = FlowMemory::owned(256, 42);
        for n in 0..200 {
            t.record(&flow(n), state(n + 1, 1000 + n as u64));
        }
        let listed: Vec<_> = t.entries().collect();
        // 200 flows in 2048 entries: a set may overflow, never more than that.
        assert!(listed.len() > 190, "{} of 200 kept", listed.len());
        for (_, _, k, s) in &listed {
            assert_eq!(t.lookup(k), Some(*s));
        }
        let (set, way, key, _) = listed[0];
        assert!(t.remove(set, way, &key));
        assert_eq!(t.lookup(&key), None);
        assert!(!t.remove(set, way, &key), "removed twice");
        assert_eq!(t.clear(), listed.len() - 1);
        assert_eq!(t.entries().count(), 0);
    }

    #[test]
    fn a_held_entry_reads_as_absent() {
        let t = FlowMemory::owned(1, 7);
        t.record(&flow(1), state(1, 5));
        let way = (0..FLOW_WAYS).find(|&w| t.read(0, w).is_some()).unwrap();
        t.word(0, way).fetch_add(SEQ_ONE, Ordering::SeqCst);
        assert_eq!(t.lookup(&flow(1)), None);
        assert!(!t.remove(0, way, &flow(1)), "a held entry is not removed");
        t.word(0, way).fetch_add(SEQ_ONE, Ordering::SeqCst);
        assert_eq!(t.lookup(&flow(1)).map(|s| s.backend), Some(1));
    }

    #[test]
    fn one_flows_page_holds_its_set() {
        assert_eq!(page_of(0, 256), 0..8);
        assert_eq!(page_of(37, 256), 32..40);
        assert_eq!(page_of(255, 256), 248..256);
        assert_eq!(page_of(3, 4), 0..4);
    }

    #[test]
    fn the_seed_moves_flows_between_sets() {
        let a = FlowMemory::owned(1024, 1);
        let b = FlowMemory::owned(1024, 2);
        let moved = (0..100)
            .filter(|&n| a.set_of(&flow(n)) != b.set_of(&flow(n)))
            .count();
        assert!(moved > 90, "{moved} of 100 flows changed set with the seed");
    }
}
