//! The set-associative tables seen from userspace: the datapath's connection table
//! (`CONNTRACK`, `lb_common::FlowEntry` says how it is shared) and `nat` reply table
//! (`NAT`, `NatEntry`), read and written in place through a shared mapping of their
//! memory. Finding an entry, listing them, removing one: the same set choice
//! (`hash::flow_set`) and the same write protocol as the datapath's.

use std::{
    marker::PhantomData,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use lb_common::{
    hash::flow_set, held, released, FlowEntry, FlowTable, NatEntry, SetEntry, FLOW_WAYS, SEQ_STEP,
};

/// The connection table's memory.
pub type FlowMemory = SetMemory<FlowEntry>;
/// The `nat` reply table's memory.
pub type NatMemory = SetMemory<NatEntry>;

/// Memory holding the sets `sets` of a table of `E`: a mapping of (part of) the map, or
/// (tests) a plain buffer.
pub struct SetMemory<E: SetEntry> {
    base: *mut E,
    sets: std::ops::Range<usize>,
    table: FlowTable,
    mapped: bool,
    _owned: Vec<E>,
    _entries: PhantomData<E>,
}

// SAFETY: the memory is either owned or a shared mapping that lives as long as `self`;
// every access to entries goes through atomics or volatile reads.
unsafe impl<E: SetEntry> Send for SetMemory<E> {}

/// Lines of one set: its tags (`lb_common::SetTags`), then its ways.
const SET_LINES: usize = FLOW_WAYS + 1;

/// Bytes of one set.
fn set_bytes<E>() -> usize {
    std::mem::size_of::<E>() * SET_LINES
}

impl<E: SetEntry> SetMemory<E> {
    /// Maps `sets` of the array map `fd` (mmap-able, values of one line of tags and
    /// `FLOW_WAYS` entries) read-write; the range must start and end on page boundaries
    /// (see `page_of`) or at the table's end.
    pub fn map(
        fd: i32,
        sets: std::ops::Range<usize>,
        table: FlowTable,
    ) -> std::io::Result<SetMemory<E>> {
        // Populated at once: one call instead of a page fault per 4 KiB read.
        Self::map_with(fd, sets, table, libc::MAP_POPULATE)
    }

    /// `map` without populating: pages count in the daemon's memory only once touched
    /// (a mapping kept for single entries).
    pub fn map_lazy(
        fd: i32,
        sets: std::ops::Range<usize>,
        table: FlowTable,
    ) -> std::io::Result<SetMemory<E>> {
        Self::map_with(fd, sets, table, 0)
    }

    fn map_with(
        fd: i32,
        sets: std::ops::Range<usize>,
        table: FlowTable,
        flags: i32,
    ) -> std::io::Result<SetMemory<E>> {
        assert_eq!(std::mem::size_of::<E>(), 64);
        let len = sets.len() * set_bytes::<E>();
        // SAFETY: an mmap-able array map exposes its values from offset 0, page-aligned;
        // the caller's range lies within them; the mapping is unmapped in `drop`.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | flags,
                fd,
                (sets.start * set_bytes::<E>()) as libc::off_t,
            )
        };
        if mem == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(SetMemory {
            base: mem.cast(),
            sets,
            table,
            mapped: true,
            _owned: Vec::new(),
            _entries: PhantomData,
        })
    }

    /// A table in plain memory (tests of the pure parts).
    pub fn owned(sets: usize, seed: u64) -> SetMemory<E> {
        let mut owned = vec![E::default(); sets * SET_LINES];
        SetMemory {
            base: owned.as_mut_ptr(),
            sets: 0..sets,
            table: FlowTable {
                sets: sets as u64,
                seed,
                ..FlowTable::default()
            },
            mapped: false,
            _owned: owned,
            _entries: PhantomData,
        }
    }

    /// Line `line` of a set held: 0 its tags, 1 + w its way `w`.
    fn line(&self, set: usize, line: usize) -> *mut E {
        assert!(self.sets.contains(&set) && line < SET_LINES);
        // SAFETY: in bounds (the sets held, each `SET_LINES` lines).
        unsafe { self.base.add((set - self.sets.start) * SET_LINES + line) }
    }

    fn entry(&self, set: usize, way: usize) -> *mut E {
        assert!(way < FLOW_WAYS);
        self.line(set, 1 + way)
    }

    /// The tag of one way (`lb_common::SetTags`).
    fn tag(&self, set: usize, way: usize) -> &AtomicU32 {
        assert!(way < FLOW_WAYS);
        // SAFETY: the set's first line: 16 aligned u32s, the first `FLOW_WAYS` the tags.
        unsafe { AtomicU32::from_ptr(self.line(set, 0).cast::<u32>().add(way)) }
    }

    fn word(&self, set: usize, way: usize) -> &AtomicU64 {
        // SAFETY: word 7 of a 64-byte, 64-aligned entry (`SetEntry`'s layout).
        unsafe { AtomicU64::from_ptr(self.entry(set, way).cast::<u64>().add(7)) }
    }

    /// A consistent copy of one entry, None while a writer holds it or if it changed
    /// meanwhile, or if it is empty.
    fn read(&self, set: usize, way: usize) -> Option<E> {
        let before = self.word(set, way).load(Ordering::Acquire);
        if held(before) {
            return None;
        }
        // SAFETY: a volatile copy of plain data; checked below to be whole.
        let e = unsafe { std::ptr::read_volatile(self.entry(set, way)) };
        std::sync::atomic::fence(Ordering::Acquire);
        if self.word(set, way).load(Ordering::Relaxed) != before || e.is_empty() {
            return None;
        }
        Some(e)
    }

    /// The set a key lives in.
    pub fn set_of(&self, key: &E::Key) -> usize {
        set_of::<E>(key, &self.table)
    }

    /// The entry of one key, if the table has it.
    pub fn lookup(&self, key: &E::Key) -> Option<E> {
        let set = self.set_of(key);
        (0..FLOW_WAYS)
            .filter_map(|way| self.read(set, way))
            .find(|e| e.key() == *key)
    }

    /// Takes a way for writing with the datapath's protocol (its sequence word made odd),
    /// unless a writer holds it or the word moved meanwhile: the word and its value
    /// before the claim, which the release builds on.
    fn claim(&self, set: usize, way: usize) -> Option<(&AtomicU64, u64)> {
        let word = self.word(set, way);
        let before = word.load(Ordering::Acquire);
        let taken = !held(before)
            && word
                .compare_exchange(
                    before,
                    before.wrapping_add(SEQ_STEP),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        taken.then_some((word, before))
    }

    /// Every entry: (set, way, entry).
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize, E)> + '_ {
        self.sets.clone().flat_map(move |set| {
            (0..FLOW_WAYS).filter_map(move |way| self.read(set, way).map(|e| (set, way, e)))
        })
    }

    /// Empties one entry if it still holds `key` (a packet may have replaced it since it
    /// was read). Whether it did.
    pub fn remove(&self, set: usize, way: usize, key: &E::Key) -> bool {
        let Some((word, before)) = self.claim(set, way) else {
            return false;
        };
        let e = self.entry(set, way);
        // SAFETY: this writer owns the entry (odd sequence); plain data.
        let kept_key = unsafe { std::ptr::read_volatile(e) }.key() == *key;
        let words = e.cast::<u64>();
        if kept_key {
            self.tag(set, way).store(0, Ordering::Relaxed);
            for i in 0..7 {
                unsafe { std::ptr::write_volatile(words.add(i), 0) };
            }
        }
        let low = if kept_key { 0 } else { before as u32 };
        word.store(released(before, low), Ordering::Release);
        kept_key
    }

    /// Empties the entry of `key` if the table has it; whether it did.
    pub fn remove_key(&self, key: &E::Key) -> bool {
        let set = self.set_of(key);
        (0..FLOW_WAYS).any(|way| {
            self.read(set, way).is_some_and(|e| e.key() == *key) && self.remove(set, way, key)
        })
    }

    /// Writes `entry` with the datapath's protocol (`lb-ebpf/src/sets.rs`, `claim` and
    /// `release`): into the way holding its key, else an empty one, else the one whose
    /// `recency` is lowest (the least recently seen: its flow is evicted) unless that is
    /// `u64::MAX` (never evicted); claimed by a compare-and-swap of the write sequence,
    /// tagged while held, written, released. False if a writer held the way (the caller
    /// may retry) or no way could be taken.
    pub fn insert(&self, entry: E, recency: impl Fn(&E) -> u64) -> bool {
        let key = entry.key();
        let hash = flow_set(&E::key_words(&key), self.table.seed);
        let set = self.table.set_index(hash) as usize;
        let mut victim = None;
        let mut lowest = u64::MAX;
        for way in 0..FLOW_WAYS {
            // SAFETY: a volatile copy of plain data, only used to choose the way.
            let e = unsafe { std::ptr::read_volatile(self.entry(set, way)) };
            if !e.is_empty() && e.key() == key {
                victim = Some(way);
                break;
            }
            let r = if e.is_empty() { 0 } else { recency(&e) };
            if victim.is_none() || r < lowest {
                lowest = r;
                victim = Some(way);
            }
        }
        let way = victim.expect("a set has ways");
        if lowest == u64::MAX && !self.read(set, way).is_some_and(|e| e.key() == key) {
            return false;
        }
        let Some((word, before)) = self.claim(set, way) else {
            return false;
        };
        self.tag(set, way)
            .store(lb_common::hash::flow_tag(hash), Ordering::Relaxed);
        // SAFETY: 64 bytes of plain data; this writer owns the way (odd sequence).
        let words: [u64; 8] = unsafe { std::mem::transmute_copy(&entry) };
        let dst = self.entry(set, way).cast::<u64>();
        for (i, w) in words.iter().enumerate().take(7) {
            unsafe { std::ptr::write_volatile(dst.add(i), *w) };
        }
        word.store(released(before, words[7] as u32), Ordering::Release);
        true
    }

    /// Empties every entry; how many held one.
    pub fn clear(&self) -> usize {
        let all: Vec<_> = self.entries().collect();
        all.iter()
            .filter(|(set, way, e)| self.remove(*set, *way, &e.key()))
            .count()
    }

    /// Writes an entry into its set's own or first empty way (tests of the reading side;
    /// the datapath's own choice is checked by the fixtures). False if the set is full.
    #[cfg(test)]
    fn record(&self, entry: E) -> bool {
        // One hash for the set and the tag, as the datapath does.
        let hash = flow_set(&E::key_words(&entry.key()), self.table.seed);
        let set = self.table.set_index(hash) as usize;
        let way = (0..FLOW_WAYS)
            .find(|&w| self.read(set, w).is_some_and(|e| e.key() == entry.key()))
            .or_else(|| (0..FLOW_WAYS).find(|&w| self.read(set, w).is_none()));
        let Some(way) = way else {
            return false;
        };
        self.tag(set, way)
            .store(lb_common::hash::flow_tag(hash), Ordering::Relaxed);
        unsafe { *self.entry(set, way) = entry };
        true
    }
}

impl<E: SetEntry> Drop for SetMemory<E> {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping made in `map`, of this length.
            unsafe { libc::munmap(self.base.cast(), self.sets.len() * set_bytes::<E>()) };
        }
    }
}

/// The set a key lives in, in a table of this shape.
pub fn set_of<E: SetEntry>(key: &E::Key, table: &FlowTable) -> usize {
    table.set_index(flow_set(&E::key_words(key), table.seed)) as usize
}

/// The sets sharing `set`'s page of memory (the part to map to read one entry), within a
/// table of `sets`.
pub fn page_of(set: usize, sets: usize) -> std::ops::Range<usize> {
    let per_page = 4096 / set_bytes::<FlowEntry>();
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
        return super::monotonic_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    u64::from_ne_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{
        FlowKey, FlowSet, FlowState, NatKey, FAMILY_V4, FLOW_ACTIVE, FLOW_ESTABLISHED, FLOW_SYNCED,
        IPPROTO_TCP,
    };

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

    fn entry(n: u32, backend: u32, last_seen: u64) -> FlowEntry {
        FlowEntry {
            key: flow(n),
            state: FlowState {
                backend,
                service: 1,
                last_seen,
                flags: FLOW_ACTIVE,
                seq: 0,
            },
        }
    }

    #[test]
    fn an_entry_is_one_cache_line_and_a_set_eight_lines_with_its_tags() {
        assert_eq!(std::mem::size_of::<FlowEntry>(), 64);
        assert_eq!(std::mem::offset_of!(FlowSet, ways), 64);
        assert_eq!(std::mem::size_of::<FlowSet>(), 512);
        assert_eq!(std::mem::size_of::<NatEntry>(), 64);
        assert_eq!(std::mem::size_of::<lb_common::NatSet>(), 512);
        // The write sequence sits in word 7's high half in both.
        assert_eq!(std::mem::offset_of!(FlowEntry, state.seq), 60);
        assert_eq!(std::mem::offset_of!(NatEntry, seq), 60);
        assert_eq!(lb_common::flow_sets(1_000_000), 142_858);
        assert_eq!(lb_common::flow_sets(1024), 147);
        assert_eq!(lb_common::flow_sets(0), 1);
    }

    #[test]
    fn flows_are_found_listed_and_removed() {
        let t = FlowMemory::owned(256, 42);
        let kept = (0..200)
            .filter(|&n| t.record(entry(n, n + 1, 1000 + n as u64)))
            .count();
        // 200 flows in 1,792 entries: a set may overflow, never more than that.
        assert!(kept > 190, "{kept} of 200 kept");
        let listed: Vec<_> = t.entries().collect();
        assert_eq!(listed.len(), kept);
        for (set, way, e) in &listed {
            assert_eq!(t.lookup(&e.key), Some(*e));
            // The tag the datapath filters ways by (`SetTags`).
            let tag = lb_common::hash::flow_tag(flow_set(&e.key.words(), 42));
            assert_eq!(t.tag(*set, *way).load(Ordering::Relaxed), tag);
        }
        let (set, way, e) = listed[0];
        let key = e.key;
        assert!(t.remove(set, way, &key));
        assert_eq!(t.lookup(&key), None);
        assert_eq!(t.tag(set, way).load(Ordering::Relaxed), 0, "untagged");
        assert!(!t.remove(set, way, &key), "removed twice");
        assert_eq!(t.clear(), listed.len() - 1);
        assert_eq!(t.entries().count(), 0);
    }

    #[test]
    fn a_held_entry_reads_as_absent() {
        let t = FlowMemory::owned(1, 7);
        t.record(entry(1, 1, 5));
        let way = (0..FLOW_WAYS).find(|&w| t.read(0, w).is_some()).unwrap();
        t.word(0, way).fetch_add(SEQ_STEP, Ordering::SeqCst);
        assert_eq!(t.lookup(&flow(1)), None);
        assert!(!t.remove(0, way, &flow(1)), "a held entry is not removed");
        t.word(0, way).fetch_add(SEQ_STEP, Ordering::SeqCst);
        assert_eq!(t.lookup(&flow(1)).map(|e| e.state.backend), Some(1));
    }

    #[test]
    fn nat_replies_are_found_and_removed_by_key() {
        let t = NatMemory::owned(16, 3);
        let key = |n: u16| NatKey {
            backend: [u32::from_be_bytes([10, 111, 0, 11]), 0, 0, 0],
            client: [u32::from_be_bytes([10, 111, 0, 10]), 0, 0, 0],
            backend_port: 8080u16.to_be(),
            client_port: (1000 + n).to_be(),
            proto: IPPROTO_TCP,
            family: FAMILY_V4,
            _pad: [0; 2],
        };
        for n in 0..40 {
            assert!(t.record(NatEntry {
                key: key(n),
                vip: [n as u32, 0, 0, 0],
                vip_port: 80u16.to_be(),
                seen: 1,
                seq: 0,
            }));
        }
        assert_eq!(t.lookup(&key(7)).map(|e| e.vip[0]), Some(7));
        assert!(t.remove_key(&key(7)));
        assert!(!t.remove_key(&key(7)));
        assert_eq!(t.lookup(&key(7)), None);
        assert_eq!(t.entries().count(), 39);
    }

    #[test]
    fn an_insert_takes_its_own_way_else_an_empty_one_else_the_least_recent() {
        let t = FlowMemory::owned(1, 9);
        let recency = |e: &FlowEntry| e.state.last_seen;
        for n in 0..FLOW_WAYS as u32 {
            assert!(t.insert(entry(n, n, 100 + u64::from(n)), recency));
        }
        assert_eq!(t.entries().count(), FLOW_WAYS);
        // The same key again: replaced in place.
        assert!(t.insert(entry(3, 33, 500), recency));
        assert_eq!(t.lookup(&flow(3)).map(|e| e.state.backend), Some(33));
        assert_eq!(t.entries().count(), FLOW_WAYS);
        // A full set: the least recently seen (flow 0) goes.
        assert!(t.insert(entry(50, 5, 600), recency));
        assert_eq!(t.lookup(&flow(0)), None);
        let e = t.lookup(&flow(50)).unwrap();
        assert_eq!(
            (e.state.backend, e.state.flags, e.state.seq % 2),
            (5, FLOW_ACTIVE, 0)
        );
        // Tagged as the datapath tags (its lookups compare tags first).
        let (set, way, _) = t.entries().find(|(_, _, e)| e.key == flow(50)).unwrap();
        let tag = lb_common::hash::flow_tag(flow_set(&flow(50).words(), 9));
        assert_eq!(t.tag(set, way).load(Ordering::Relaxed), tag);
        // A way a writer holds is not taken.
        t.word(set, way).fetch_add(SEQ_STEP, Ordering::SeqCst);
        assert!(!t.insert(entry(50, 6, 700), recency));
        t.word(set, way).fetch_sub(SEQ_STEP, Ordering::SeqCst);
        // Nothing evictable: refused; its own way is still rewritten.
        let never = |_: &FlowEntry| u64::MAX;
        assert!(!t.insert(entry(60, 6, 800), never));
        assert_eq!(t.lookup(&flow(60)), None);
        assert!(t.insert(entry(50, 7, 800), never));
        assert_eq!(t.lookup(&flow(50)).map(|e| e.state.backend), Some(7));
    }

    #[test]
    fn a_peers_flow_evicts_single_packet_flows_then_peers_never_established_ones() {
        let t = FlowMemory::owned(1, 9);
        let recency = super::super::synced::synced_recency;
        let with = |n: u32, flags: u32, seen: u64| {
            let mut e = entry(n, n, seen);
            e.state.flags = flags;
            e
        };
        // Established flows, older than the rest, one single-packet and one synced flow.
        for n in 0..5 {
            assert!(t.insert(with(n, FLOW_ESTABLISHED, 10 + u64::from(n)), recency));
        }
        assert!(t.insert(with(5, FLOW_SYNCED, 200), recency));
        assert!(t.insert(with(6, FLOW_ACTIVE, 300), recency));
        assert!(t.insert(with(7, FLOW_SYNCED, 400), recency));
        assert_eq!(
            t.lookup(&flow(6)),
            None,
            "the single-packet flow went first"
        );
        assert!(t.insert(with(8, FLOW_SYNCED, 500), recency));
        assert_eq!(t.lookup(&flow(5)), None, "then the oldest peer's flow");
        let established = (0..5).filter(|&n| t.lookup(&flow(n)).is_some()).count();
        assert_eq!(established, 5);
        // A set of established flows only: a peer's flow is refused.
        let full = FlowMemory::owned(1, 9);
        for n in 0..FLOW_WAYS as u32 {
            assert!(full.insert(with(n, FLOW_ESTABLISHED, 10), recency));
        }
        assert!(!full.insert(with(20, FLOW_SYNCED, 900), recency));
        assert_eq!(full.lookup(&flow(20)), None);
        assert_eq!(full.entries().count(), FLOW_WAYS);
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
