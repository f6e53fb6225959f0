//! Types and constants shared by the XDP datapath (`lb-ebpf`) and the controller
//! (`lb-userspace`). Every map key and value is `#[repr(C)]` and defined once, here,
//! so the kernel and userspace sides cannot disagree about a layout.
//!
//! Addresses are stored as four `u32` words holding the address bytes exactly as they
//! appear on the wire (network order, read with native endianness). An IPv4 address
//! uses word 0 and leaves words 1..3 zero.
#![cfg_attr(not(feature = "std"), no_std)]
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

pub mod checksum;
pub mod hash;
pub mod icmp;
#[cfg(feature = "std")]
pub mod maglev;

/// `v`, which the compiler may not see through, on the datapath's target: it would turn
/// branch-free arithmetic back into comparisons and branches, or `(h << 2) + h` back into
/// a multiplication. One move instruction there (an empty `asm!` leaves two lines of BTF
/// at one instruction, which the kernel refuses); nothing elsewhere.
#[inline(always)]
pub fn opaque(v: u64) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let mut v = v;
        // SAFETY: a register moved to itself.
        unsafe {
            core::arch::asm!("{0} = {0}", inout(reg) v, options(pure, nomem, nostack, preserves_flags));
        }
        v
    }
    #[cfg(not(target_arch = "bpf"))]
    v
}

/// Outer size of the Maglev array-of-maps: the most services one node can hold.
pub const MAX_SERVICES: u32 = 1024;
/// Entries of the service maps (`SERVICES`, `SERVICES4`): one per (address, port,
/// protocol) of every service. A service with several addresses (`vips`) or ports
/// (`ports`) takes one per pair, all naming the same service id.
pub const MAX_SERVICE_KEYS: u32 = 16_384;
/// Size of the backend array: every backend of every service has one slot.
pub const MAX_BACKENDS: u32 = 131_072;
/// Entries of each service's lookup table (inner map): the Maglev table for mh. A prime, so that every
/// backend's `skip` is coprime with it and each permutation visits every slot. A service
/// may use a smaller prime table (`ServiceInfo::table_size`); this is the ceiling.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;
/// Flags of every service lookup table (the `MAGLEV` inner maps and their template):
/// BPF_F_MMAPABLE, so userspace writes a whole table with one memory copy instead of one
/// system call per slot. The kernel requires inner maps to carry the template's flags.
pub const TABLE_MAP_FLAGS: u32 = 1024;
/// Cells of a service lookup table: two slots (backend ids) per u64 cell, slot `2i` in
/// the low half of cell `i`, slot `2i + 1` in the high half (an array map stores every
/// value in an 8-byte cell, so one u32 per cell would take twice the kernel memory).
pub const TABLE_CELLS: u32 = MAGLEV_TABLE_SIZE.div_ceil(2);
/// MACs the datapath's "addressed to us" check compares with (`LocalMacs`).
pub const MAX_LOCAL_MACS: usize = 7;
/// Default connection-table capacity (total across CPUs); `conntrack.max_entries` overrides it.
pub const CONNTRACK_DEFAULT_ENTRIES: u32 = 1_000_000;
/// Backend slot value meaning "no backend": an empty table or a removed backend.
pub const NO_BACKEND: u32 = u32::MAX;

/// Hop limit / TTL of the outer header added by `tun` forwarding.
pub const TUNNEL_TTL: u8 = 64;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPV6: u8 = 41;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// How a backend receives the packets of its flows (ipvsadm's -g, -i, -m, and "local").
pub const FORWARD_DR: u8 = 1;
pub const FORWARD_TUN: u8 = 2;
pub const FORWARD_NAT: u8 = 3;
/// The LB node itself serves the flow: the packet goes up its own stack.
pub const FORWARD_LOCAL: u8 = 4;

/// Schedulers (`ServiceInfo::scheduler`). Table schedulers (mh, sh, dh) index a table of
/// `table_size` slots by a hash; list schedulers (rr, wrr) step a shared cursor through a
/// list or precomputed cycle; load schedulers (lc, wlc, sed, nq, lblc, lblcr) scan the
/// service's backend list and compare active-connection counts.
pub const SCHED_MH: u8 = 0;
pub const SCHED_RR: u8 = 1;
pub const SCHED_WRR: u8 = 2;
pub const SCHED_LC: u8 = 3;
pub const SCHED_WLC: u8 = 4;
pub const SCHED_LBLC: u8 = 5;
pub const SCHED_LBLCR: u8 = 6;
pub const SCHED_DH: u8 = 7;
pub const SCHED_SH: u8 = 8;
pub const SCHED_SED: u8 = 9;
pub const SCHED_NQ: u8 = 10;

/// Most backends a load scheduler (lc, wlc, sed, nq, lblc, lblcr) compares: the datapath
/// scans at most this many entries of the service's list (a bounded loop for the verifier).
pub const MAX_SCAN_BACKENDS: u32 = 64;
/// rr/wrr: entries of the list or cycle tried after one whose backend is at its
/// connection threshold (`max_connections`); none of them free: no backend for the flow.
pub const MAX_CYCLE_PROBES: u32 = 256;
/// mh, sh, dh: other slots tried (`hash::probe_hash`) for a flow whose slot belongs to a
/// backend at its connection threshold. Many: a heavy backend may own most of the table
/// (with 90% of the slots at their threshold, 256 probes all miss once in 10^12 flows);
/// a flow costs this many only while every backend it probes is full.
pub const MAX_TABLE_PROBES: u32 = 256;
/// Members of an lblcr destination's server set.
pub const LBLCR_SET_SIZE: usize = 4;
/// Table slots for sh and dh (a prime, like Maglev's): weighted buckets, as IPVS's
/// 256-bucket tables but larger so weights are honoured finely.
pub const HASH_TABLE_SIZE: u32 = 65537;

/// `BackendInfo::flags`: the backend takes flows. Cleared when it is removed, so
/// established flows pinned to it are rescheduled.
pub const BACKEND_ACTIVE: u8 = 1;

/// Key of the service map: (VIP, port, protocol). Port 0 means every port of the VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    /// Network byte order, as on the wire.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Key of the IPv4 service map (`SERVICES4`): `ServiceKey` without the unused address
/// words, so the kernel hashes 8 bytes instead of 20 on every IPv4 packet's lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceKey4 {
    pub addr: u32,
    /// Network byte order, as on the wire.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

impl ServiceKey {
    /// The compact key of an IPv4 service, `None` for IPv6.
    pub fn v4(&self) -> Option<ServiceKey4> {
        (self.family == FAMILY_V4).then_some(ServiceKey4 {
            addr: self.addr[0],
            port: self.port,
            proto: self.proto,
            _pad: 0,
        })
    }
}

impl ServiceKey4 {
    /// The same key in the four-word form the plan uses.
    pub fn wide(&self) -> ServiceKey {
        ServiceKey {
            addr: [self.addr, 0, 0, 0],
            port: self.port,
            proto: self.proto,
            family: FAMILY_V4,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceInfo {
    /// Index into the lookup-table array-of-maps and the per-service counters.
    pub id: u32,
    /// Entries of this service's lookup table in use: the prime table size for mh/sh/dh,
    /// the number of listed backends for rr and the load schedulers, the cycle length for wrr.
    pub table_size: u32,
    /// Client-IP affinity (ipvsadm -p), in seconds; 0 = off.
    pub persistence_secs: u32,
    /// Idle time after which a flow's connection-table entry no longer pins its backend
    /// (`conntrack.tcp_timeout` or `udp_timeout` for the service's protocol), in
    /// nanoseconds; 0 = never. Kept here so the established path reads no other map.
    pub idle_timeout_ns: u64,
    /// SCHED_*.
    pub scheduler: u8,
    pub _pad: [u8; 7],
}

/// What a packet of an established flow needs of its service, by service id
/// (`SERVICE_ENTRIES`): the connection-table entry names the service, and this entry says
/// whether the packet's VIP, port and protocol still select it (so the packet skips the
/// service hash lookup) and how to keep the flow. All zero: no service has this id.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    pub key: ServiceKey,
    /// 1 when the service matches every port (`key.port` 0) and other services of the
    /// same VIP and protocol have ports of their own: its flows then take the full
    /// lookup, which prefers those services (a port service added after a flow started
    /// takes the flow over, as a lookup would).
    pub shadowed: u32,
    pub _pad: u32,
    pub info: ServiceInfo,
}

impl ServiceEntry {
    /// Whether a packet to `dst`:`dport` (`family`, `proto`) selects this service.
    #[inline(always)]
    pub fn selects(&self, family: u8, dst: &[u32; 4], dport: u16, proto: u8) -> bool {
        self.key.family == family
            && self.key.proto == proto
            && (self.key.port == dport || (self.key.port == 0 && self.shadowed == 0))
            && (self.key.addr[0] ^ dst[0])
                | (self.key.addr[1] ^ dst[1])
                | (self.key.addr[2] ^ dst[2])
                | (self.key.addr[3] ^ dst[3])
                == 0
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendInfo {
    pub addr: [u32; 4],
    /// Destination MAC for `dr`.
    pub mac: [u8; 6],
    pub family: u8,
    /// FORWARD_*.
    pub forward: u8,
    /// BACKEND_* bits.
    pub flags: u8,
    pub _pad: u8,
    /// `nat`: the port to rewrite the destination port to (network order); 0 keeps it.
    pub port: u16,
    /// The scheduler weight (load schedulers compare connections per weight).
    pub weight: u32,
    /// Connection thresholds (IPVS's u-threshold / l-threshold, `max_connections` /
    /// `min_connections`): from `max_conns` active connections on, the backend takes no
    /// new flows until it has fewer than `min_conns` (see `OVERLOADS` in the datapath).
    /// 0 = no threshold.
    pub max_conns: u32,
    pub min_conns: u32,
}

impl BackendInfo {
    /// Whether a backend with `active` connections is at its threshold, given whether it
    /// was (`was`: the hysteresis state): at `max_conns` or more it is; it stays so until
    /// it falls below `min_conns`.
    #[inline(always)]
    pub fn overloaded(&self, was: bool, active: u64) -> bool {
        if self.max_conns == 0 {
            return false;
        }
        let bound = if was { self.min_conns } else { self.max_conns };
        active >= bound as u64
    }
}

/// The lower threshold IPVS applies when only the upper one is set: a backend at its
/// upper threshold takes new flows again below three quarters of it (rounded up, so
/// that `active < min` is IPVS's `active * 4 < max * 3`).
pub const fn default_min_conns(max_conns: u32) -> u32 {
    ((max_conns as u64 * 3).div_ceil(4)) as u32
}

/// Connection-table key: the flow's 5-tuple as the client sent it. 8-byte aligned: the
/// datapath compares keys five 64-bit words at a time.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Source and destination ports in network order (0 for port-less protocols).
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowState {
    pub backend: u32,
    pub service: u32,
    /// The datapath's time (`FlowTable::clock_ns`) of the last packet, refreshed at most every
    /// `TOUCH_INTERVAL_NS` to keep the per-packet cost low.
    pub last_seen: u64,
    /// FLOW_* bits.
    pub flags: u32,
    /// The entry's write sequence in the connection table (odd while a writer owns it);
    /// see `FlowEntry`.
    pub seq: u32,
}

impl FlowKey {
    /// The key as five 64-bit words (what the datapath compares and hashes).
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes, 8-byte aligned, every bit pattern is a valid u64.
        unsafe { *(self as *const FlowKey as *const [u64; 5]) }
    }
}

/// One connection-table entry: a flow's key and state, one cache line. All zero = empty
/// (no packet has family 0).
///
/// The table is an array of sets of `FLOW_WAYS` entries shared by every CPU; a flow
/// lives in set `hash::flow_set(key, seed) & mask`. Writers (a new flow, userspace
/// expiring one) take an entry by moving `state.seq` from even to odd with a
/// compare-and-swap, write it, and make `seq` even again; a reader that sees `seq` odd or
/// changed across its read treats the entry as absent (the flow is scheduled again). A
/// packet of an established flow updates `last_seen` and `flags` in place, as it did in
/// the kernel's hash map.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub state: FlowState,
}

/// Entries per set: a new flow evicts the least recently seen of its set's seven. The
/// set's first cache line holds a tag of each entry's key (`SetTags`), so that a lookup
/// compares the tags and then only the entry whose tag matches, instead of one entry
/// after another until the key matched (a branch on each entry's line; through veth
/// each cost a few ns: the set is rarely still in the L1 cache when the flow's next
/// packet comes). With flows spread at random over sets at 30% of capacity, seven-entry
/// sets evict about one flow in 1,100 early (four: 1 in 130; eight without the tags: 1
/// in 2,100).
pub const FLOW_WAYS: usize = 7;

/// The first cache line of a set: `tags[w]` is `hash::flow_tag` of the key in way `w`
/// (never 0), written by the entry's writer while it holds the entry, and 0 when the way
/// is empty: whoever empties a way clears its tag. A filter for lookups (the key itself
/// is compared before an entry counts as found, so a stale tag costs a compare, never a
/// wrong answer); for a new flow, a way tagged 0 is an empty one to take without reading
/// the entry.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SetTags {
    pub tags: [u32; FLOW_WAYS],
    pub _pad: [u32; 16 - FLOW_WAYS],
}

/// The MACs of the interfaces the program is attached to (`LOCAL_MACS`, one slot):
/// only frames sent to one of them are balanced. Written by userspace as it attaches.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalMacs {
    /// How many of `macs` are in use. 0 (none recorded yet) or more than
    /// `MAX_LOCAL_MACS` (more interfaces than that): frames are not checked.
    pub count: u64,
    /// Each MAC in a word's first six bytes (native order), as the datapath reads a
    /// frame's destination.
    pub macs: [u64; MAX_LOCAL_MACS],
}

impl LocalMacs {
    /// The word a MAC is compared as.
    pub fn word(mac: [u8; 6]) -> u64 {
        let mut word = [0u8; 8];
        word[..6].copy_from_slice(&mac);
        u64::from_ne_bytes(word)
    }

    /// With `mac` recorded (false when it was already).
    pub fn add(&mut self, mac: [u8; 6]) -> bool {
        let word = Self::word(mac);
        let used = (self.count as usize).min(MAX_LOCAL_MACS);
        if self.macs[..used].contains(&word) {
            return false;
        }
        if used < MAX_LOCAL_MACS && self.count as usize == used {
            self.macs[used] = word;
        }
        self.count += 1;
        true
    }

    /// Whether the datapath balances a frame sent to `word` (see `count`).
    #[inline(always)]
    pub fn accepts(&self, word: u64) -> bool {
        if self.count == 0 || self.count > MAX_LOCAL_MACS as u64 {
            return true;
        }
        let mut hit = false;
        for i in 0..MAX_LOCAL_MACS {
            hit |= (i as u64) < self.count && self.macs[i] == word;
        }
        hit
    }
}

/// One set of the connection table (the value of one array slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowSet {
    pub tags: SetTags,
    pub ways: [FlowEntry; FLOW_WAYS],
}

/// The values of HZ (ticks per second) Linux is built with: x86 and arm64 offer 100, 250,
/// 300 and 1000; other architectures some of the others.
pub const KERNEL_HZ: [u64; 15] = [
    24, 32, 48, 64, 100, 128, 200, 250, 256, 300, 500, 512, 1000, 1024, 1200,
];

/// A set-associative table's shape (slot 0 of `FLOW_TABLE`: the connection table; slot 1:
/// the `nat` reply table), written by userspace when it creates the table and kept beside
/// it (pinned, so a restarted daemon finds its flows): the number of sets and the seed of
/// `hash::flow_set`, chosen at random. Slot 0 also holds the datapath's clock (see
/// [`FlowTable::clock_ns`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowTable {
    pub sets: u64,
    pub seed: u64,
    /// The kernel's tick in nanoseconds (`TICK_NSEC`: 1e9 / HZ, rounded), measured by
    /// userspace at load time; 0 until then.
    pub tick_ns: u64,
    /// What puts `jiffies * tick_ns` on `CLOCK_MONOTONIC_COARSE`'s scale (wrapping).
    pub clock_offset: u64,
}

impl FlowTable {
    /// The set of a key whose `hash::flow_set` is `hash`: its low half scaled onto
    /// `0..sets` (a multiply and a shift: any number of sets, not only powers of two).
    /// The high half is the key's tag (`hash::flow_tag`).
    #[inline(always)]
    pub fn set_index(&self, hash: u64) -> u64 {
        ((hash & 0xffff_ffff) * self.sets) >> 32
    }

    /// The datapath's time (connection-table entries, `nat` replies, persistence
    /// templates, the next-hop cache): `CLOCK_MONOTONIC_COARSE` in nanoseconds, to within
    /// a tick, computed from the kernel's tick count `jiffies`. Reading `jiffies` is one
    /// load where `bpf_ktime_get_coarse_ns` is a helper call (~10 ns of a frame's path
    /// through veth on a machine with return-stack mitigations). Both advance with the
    /// same tick, so the offset measured once stays right. Meaningless while `tick_ns`
    /// is 0 (not calibrated).
    #[inline(always)]
    pub fn clock_ns(&self, jiffies: u64) -> u64 {
        jiffies
            .wrapping_mul(self.tick_ns)
            .wrapping_add(self.clock_offset)
    }

    /// The kernel's tick (`TICK_NSEC`, `(1e9 + HZ / 2) / HZ`) from how far the coarse clock
    /// advanced while the tick count advanced by `ticks`: the tick of the HZ Linux is built
    /// with ([`KERNEL_HZ`]) closest to `elapsed_ns / ticks`, if within 1% of it (NTP slews
    /// the clock by at most 0.05%). A reading that paired a new count with the previous
    /// tick's time puts the ratio a tick off over `ticks`: `None` then, and the caller
    /// measures again. Unlike watching the clock's steps, this holds however long the
    /// measuring thread waits for a CPU.
    pub fn tick_for_interval(elapsed_ns: u64, ticks: u64) -> Option<u64> {
        if ticks == 0 {
            return None;
        }
        KERNEL_HZ
            .iter()
            .map(|hz| (1_000_000_000 + hz / 2) / hz)
            .map(|tick| (tick, (tick * ticks).abs_diff(elapsed_ns)))
            .filter(|&(tick, off)| off * 100 <= tick * ticks)
            .min_by_key(|&(_, off)| off)
            .map(|(tick, _)| tick)
    }

    /// The offset that puts `jiffies * tick_ns` on the coarse clock, from readings of
    /// (`jiffies`, coarse clock) taken together. The kernel counts a tick in `jiffies` a
    /// moment before it advances the clock, so a reading may pair the new count with the
    /// old time: its offset is a tick lower. The largest is taken.
    pub fn clock_offset_for(tick_ns: u64, readings: &[(u64, u64)]) -> Option<u64> {
        readings
            .iter()
            .map(|&(jiffies, ns)| ns.wrapping_sub(jiffies.wrapping_mul(tick_ns)) as i64)
            .max()
            .map(|o| o as u64)
    }
}

/// Sets for a configured capacity: enough for `capacity` entries (at least one).
pub const fn flow_sets(capacity: u32) -> u32 {
    let sets = capacity.div_ceil(FLOW_WAYS as u32);
    if sets == 0 {
        1
    } else {
        sets
    }
}

/// `FlowState::flags`: the flow counts in its backend's active connections (cleared when a
/// FIN or RST is seen, so it is subtracted once).
pub const FLOW_ACTIVE: u32 = 1;
/// `FlowState::flags`: the entry was inserted from a peer's report (`sync:`), not by a
/// packet of this node.
pub const FLOW_SYNCED: u32 = 2;
/// `FlowState::flags`: the flow sent a packet after the one that created its entry (a
/// bare SYN aside), or a packet reached a peer's entry here. Set once, by that packet. With
/// `conntrack.flood_protection`, a new flow never evicts such an entry (see `BYPASS_*`).
pub const FLOW_ESTABLISHED: u32 = 4;

/// Why a new flow was forwarded without a connection-table entry (`conntrack.flood_protection`):
/// one slot each of the `FLOW_BYPASSES` per-CPU array and one label value of
/// `bascule_conntrack_bypassed_total{reason}`. Its set held only established flows (and,
/// for a SYN, synced ones: none empty or of a single packet).
pub const BYPASS_SET_FULL: u32 = 0;
/// A TCP packet other than a SYN, for a flow the table does not know, whose set had no
/// empty entry (it evicts nothing).
pub const BYPASS_NOT_SYN: u32 = 1;
/// A `nat` flow's reply entry, whose set in the `nat` reply table held only established
/// flows' entries: the flow's replies go to the kernel untouched.
pub const BYPASS_NAT_FULL: u32 = 2;
pub const BYPASS_COUNT: u32 = 3;
/// Label values of the bypass counters, by slot.
pub const BYPASS_NAMES: [&str; BYPASS_COUNT as usize] = ["set_full", "not_syn", "nat_full"];
/// How stale `last_seen` may get before a packet refreshes it.
pub const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// What the datapath reports to the daemon about a flow when `sync:` is configured (one
/// record of the `SYNC_RING` ring buffer): a new connection-table entry, or a flow's end
/// (its first FIN or RST). Nothing is reported per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncReport {
    /// The flow as the client sent it.
    pub key: FlowKey,
    /// The backend's address (four words, IPv4 in word 0).
    pub backend_addr: [u32; 4],
    /// The service's and the backend's ids on this node (the daemon names them by address
    /// and port before they leave the node).
    pub service: u32,
    pub backend: u32,
    /// `nat`: the backend's port (network order); 0 = the flow's own port.
    pub backend_port: u16,
    /// SYNC_NEW, SYNC_END or SYNC_REFRESH.
    pub kind: u8,
    /// The backend's family.
    pub backend_family: u8,
    /// The entry's FLOW_* bits.
    pub flags: u32,
}

/// `SyncReport::kind`: a new connection-table entry.
pub const SYNC_NEW: u8 = 1;
/// `SyncReport::kind`: a FIN or RST was seen.
pub const SYNC_END: u8 = 2;
/// `SyncReport::kind`: a live flow, again, so that peers' copies do not expire: sent by
/// the packet that refreshes `last_seen` (`TOUCH_INTERVAL_NS`) when that crosses a
/// multiple of 2^`SYNC_REFRESH_SHIFT` ns (about every 17 s of a flow's life).
pub const SYNC_REFRESH: u8 = 3;
pub const SYNC_REFRESH_SHIFT: u32 = 34;
/// Bytes of the `SYNC_RING` ring buffer (a power of two, a multiple of the page size):
/// about 13,000 reports.
pub const SYNC_RING_BYTES: u32 = 1 << 20;

/// Reply-direction key of a `nat` flow: the packet the backend sends back. 8-byte
/// aligned, like `FlowKey`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NatKey {
    pub backend: [u32; 4],
    pub client: [u32; 4],
    pub backend_port: u16,
    pub client_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// One entry of the `nat` reply table: a reply's key and the VIP and port to put back as
/// its source, one cache line, in sets like the connection table's (same write protocol,
/// see `FlowEntry`; `seq` sits in the same place). `seen` is the time of the last
/// forward packet in `SEEN_SHIFT` units (about a second), wrapping at 2^15 (`SEEN_MASK`):
/// only compared to pick the least recently seen entry of a full set; its top bit is
/// `NAT_ESTABLISHED`.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatEntry {
    pub key: NatKey,
    pub vip: [u32; 4],
    pub vip_port: u16,
    pub seen: u16,
    pub seq: u32,
}

/// `NatEntry::seen`: the datapath's time (`FlowTable::clock_ns`) `>> SEEN_SHIFT` (units
/// of ~1.07 s).
pub const SEEN_SHIFT: u32 = 30;
/// The time bits of `NatEntry::seen` (about 9 hours before they wrap).
pub const SEEN_MASK: u16 = 0x7fff;
/// `NatEntry::seen`: the flow sent a second packet towards its backend. With
/// `conntrack.flood_protection`, a new flow never takes such an entry's place.
pub const NAT_ESTABLISHED: u16 = 0x8000;

/// One set of the `nat` reply table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatSet {
    pub tags: SetTags,
    pub ways: [NatEntry; FLOW_WAYS],
}

impl NatKey {
    /// The key as five 64-bit words.
    #[inline(always)]
    pub fn words(&self) -> [u64; 5] {
        // SAFETY: 40 bytes, 8-byte aligned, every bit pattern is a valid u64.
        unsafe { *(self as *const NatKey as *const [u64; 5]) }
    }
}

/// The write sequence of a set entry, in word 7's high half: one step (odd = held).
pub const SEQ_STEP: u64 = 1 << 32;

/// Whether a set entry's control word (7) says a writer holds it.
#[inline(always)]
pub const fn held(control: u64) -> bool {
    control & SEQ_STEP != 0
}

/// A set entry's control word after its writer's release: the sequence two steps on from
/// the word `before` the claim (even again), the low half `low`.
#[inline(always)]
pub const fn released(before: u64, low: u32) -> u64 {
    (before.wrapping_add(2 * SEQ_STEP) & !0xffff_ffff) | low as u64
}

/// Whether a set entry's word 4 names a family (the entry holds a key; empty ones are 0).
#[inline(always)]
pub const fn in_use(word4: u64) -> bool {
    (word4 >> 40) & 0xff != 0
}

/// The entries of the set-associative tables (`FlowEntry`, `NatEntry`): 64 bytes, the key
/// in words 0-4, the write sequence in the high half of word 7 (what the shared code
/// reads and claims). All zero is empty.
///
/// # Safety
/// Implementors are `repr(C, align(64))`, 64 bytes, with that layout.
pub unsafe trait SetEntry: Copy + Default {
    type Key: Copy + PartialEq;
    /// The table's slot in `FLOW_TABLE` (its shape).
    const TABLE: u32;
    fn key(&self) -> Self::Key;
    fn key_words(key: &Self::Key) -> [u64; 5];
    fn is_empty(&self) -> bool;
}

unsafe impl SetEntry for FlowEntry {
    type Key = FlowKey;
    const TABLE: u32 = 0;
    fn key(&self) -> FlowKey {
        self.key
    }
    fn key_words(key: &FlowKey) -> [u64; 5] {
        key.words()
    }
    fn is_empty(&self) -> bool {
        self.key.family == 0
    }
}

unsafe impl SetEntry for NatEntry {
    type Key = NatKey;
    const TABLE: u32 = 1;
    fn key(&self) -> NatKey {
        self.key
    }
    fn key_words(key: &NatKey) -> [u64; 5] {
        key.words()
    }
    fn is_empty(&self) -> bool {
        self.key.family == 0
    }
}

/// Client-IP affinity entry (persistence): (service, client address) -> backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PersistKey {
    pub client: [u32; 4],
    pub service: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PersistState {
    pub backend: u32,
    pub _pad: u32,
    pub last_seen: u64,
}

/// lblc/lblcr: a destination's server (set), per service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DestKey {
    pub dst: [u32; 4],
    pub service: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DestSet {
    /// Backend ids; `NO_BACKEND` marks a free member slot. lblc uses only member 0.
    pub members: [u32; LBLCR_SET_SIZE],
    /// When the set last changed (lblcr drops its most loaded member after
    /// `LBLCR_EXPIRE_NS` without change).
    pub last_change: u64,
}

/// lblcr: a set unchanged this long sheds its most loaded member (IPVS's default expiry).
pub const LBLCR_EXPIRE_NS: u64 = 24 * 3600 * 1_000_000_000;

/// Fragments: (source, destination, IP id, protocol) of a datagram -> its flow's backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub id: u32,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragState {
    pub backend: u32,
    pub service: u32,
    /// `nat`: the destination port of the first fragment is irrelevant to later ones;
    /// only the address is rewritten.
    pub _pad: u64,
}

/// A VIP (any port, any protocol), for ICMP answered or steered by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Slots of the per-CPU next-hop cache (`NEXT_HOPS`): a backend uses slot `id % this`.
pub const NEXT_HOP_SLOTS: u32 = 4096;
/// How long a next hop the FIB gave for a backend is used before the FIB is asked again:
/// a route or neighbour change reaches `tun`/`nat` forwarding within this time.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// The kernel FIB's answer for a `tun`/`nat` backend, cached per CPU (`NEXT_HOPS`): used
/// for `NEXT_HOP_TTL_NS`, for the same backend and destination, for frames that arrived
/// with the same destination MAC (the node's address on the ingress link: the FIB was
/// asked from that interface), and for packets no longer than one the FIB accepted (its
/// MTU check). For `tun` it also keeps the tunnel source it was asked from, which the
/// outer header then carries: a changed `tunnel_source` reaches packets within the same
/// time as a changed route. 64 bytes per slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NextHop {
    /// What the slot holds an answer for, as the datapath compares it in one word: the
    /// destination MAC of the frame the FIB was asked for (its first 4 bytes, then the
    /// other 2 shifted by 32, native order), and above bit 48 which of the backends
    /// sharing the slot (`id / NEXT_HOP_SLOTS`) plus one. 0: empty.
    pub key: u64,
    /// The low 32 bits of the kernel's tick count (`jiffies`) from which this answer is
    /// stale (compared by the sign of the difference).
    pub expires: u32,
    /// Interface to send on.
    pub egress: u32,
    /// Longest L3 packet the FIB accepted on this route since it was asked.
    pub max_len: u16,
    /// 1 when `egress` is the interface the frame came in on (sent with XDP_TX).
    pub same_link: u8,
    pub _pad: u8,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The address looked up (the backend's, or its tunnel endpoint's).
    pub dst: [u32; 4],
    /// The source it was looked up from: the node's tunnel source for `tun`.
    pub src: [u32; 4],
}

const _: () = assert!(core::mem::size_of::<NextHop>() == 64);

/// Key of the backend-side decapsulation map: a VIP this host serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DecapVip {
    pub addr: [u32; 4],
    pub family: u8,
    pub _pad: [u8; 3],
}

/// Per-CPU traffic counters of one service or one backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that had no connection-table entry and were scheduled.
    pub new_flows: u64,
}

/// Node-wide settings the datapath reads from slot 0 of the `SETTINGS` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Settings {
    /// Outer source address of IPv4 tunnels (0: tunnel to IPv4 backends is disabled).
    pub tunnel_src_v4: u32,
    /// Outer source address of IPv6 tunnels (all zero: disabled).
    pub tunnel_src_v6: [u32; 4],
    /// Non-zero when some backend uses `nat`: only then are non-VIP packets looked up as
    /// possible `nat` replies.
    pub nat_enabled: u32,
    /// Idle time after which a connection-table entry no longer pins its backend
    /// (`conntrack.tcp_timeout` / `udp_timeout`), in nanoseconds. 0 = never.
    pub tcp_timeout_ns: u64,
    pub udp_timeout_ns: u64,
    /// Non-zero when `sync:` is configured: new flows and their ends are reported to the
    /// daemon (`SyncReport`, ring buffer `SYNC_RING`). Nodes without sync pay this load.
    pub sync_enabled: u32,
    /// Non-zero with `conntrack.flood_protection`: a new flow takes only an empty or a
    /// single-packet entry of its set, or a peer's (a TCP packet other than a SYN only an
    /// empty one), else it is forwarded without one and counted (`BYPASS_*`).
    pub flood_protection: u32,
    /// ICMP echo requests to a VIP are answered at most once per this many nanoseconds
    /// on average (`node.icmp_echo_rate`); 0 = no limit.
    pub icmp_echo_interval_ns: u64,
    /// How far ahead of the time a VIP's answers may run (a burst): one answer less than
    /// the burst, in `icmp_echo_interval_ns` units.
    pub icmp_echo_burst_ns: u64,
}

/// What the datapath did with a packet, for `bascule_xdp_packets_total{action}`.
/// Indexed by the XDP action code (XDP_ABORTED = 0 .. XDP_REDIRECT = 4).
pub const XDP_ACTION_NAMES: [&str; 5] = ["aborted", "drop", "pass", "tx", "redirect"];

/// Why a packet was dropped, or passed to the kernel instead of being balanced.
/// Each reason is one slot of the `REASONS` per-CPU array and one label value of
/// `bascule_xdp_drops_total{reason}` (for drops) or of the pass counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Frame shorter than an Ethernet header: dropped.
    TruncatedEthernet = 0,
    /// IPv4/IPv6 header cut short, or a packet for this node longer than its frame (its
    /// IP length says more bytes than came): dropped (the kernel would drop it too).
    TruncatedIp = 1,
    /// IPv4 header with IHL < 5 or a total length shorter than the header: dropped.
    BadIpHeader = 2,
    /// TCP/UDP/ICMP header cut short, by the frame or by the IP length: dropped.
    TruncatedL4 = 3,
    /// A non-first fragment whose first fragment was not seen: passed to the kernel.
    FragmentUnmatched = 4,
    /// IPv6 extension header chain too long or unsupported: passed to the kernel.
    Ipv6Extension = 5,
    /// Service has no usable backend: passed to the kernel.
    NoBackend = 6,
    /// `bpf_fib_lookup` found no route or no neighbour for a tunnel or NAT: passed.
    FibLookupFailed = 7,
    /// Growing the packet for encapsulation failed: dropped.
    EncapFailed = 8,
    /// Tunnel needed but no tunnel source address of that family is set: dropped.
    NoTunnelSource = 9,
    /// Second VLAN tag (QinQ): passed untouched.
    StackedVlan = 10,
    /// An ICMP error about a VIP flow the connection table does not know: passed.
    IcmpUnmatched = 11,
    /// An ICMP echo request to a VIP beyond its rate (`node.icmp_echo_rate`): dropped.
    IcmpRateLimited = 12,
}

pub const REASON_COUNT: u32 = 13;

impl Reason {
    /// The reason in slot `code`, if there is one.
    #[inline(always)]
    pub fn from_code(code: u32) -> Option<Reason> {
        Some(match code {
            0 => Reason::TruncatedEthernet,
            1 => Reason::TruncatedIp,
            2 => Reason::BadIpHeader,
            3 => Reason::TruncatedL4,
            4 => Reason::FragmentUnmatched,
            5 => Reason::Ipv6Extension,
            6 => Reason::NoBackend,
            7 => Reason::FibLookupFailed,
            8 => Reason::EncapFailed,
            9 => Reason::NoTunnelSource,
            10 => Reason::StackedVlan,
            11 => Reason::IcmpUnmatched,
            12 => Reason::IcmpRateLimited,
            _ => return None,
        })
    }
}

/// Label value and whether the packet was dropped, per `Reason` slot.
pub const REASON_NAMES: [(&str, bool); REASON_COUNT as usize] = [
    ("truncated_ethernet", true),
    ("truncated_ip", true),
    ("bad_ip_header", true),
    ("truncated_l4", true),
    ("fragment_unmatched", false),
    ("ipv6_extension", false),
    ("no_backend", false),
    ("fib_lookup_failed", false),
    ("encap_failed", true),
    ("no_tunnel_source", true),
    ("stacked_vlan", false),
    ("icmp_unmatched", false),
    ("icmp_rate", true),
];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceKey4 {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for ServiceEntry {}
    unsafe impl aya::Pod for BackendInfo {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowState {}
    unsafe impl aya::Pod for FlowSet {}
    unsafe impl aya::Pod for FlowTable {}
    unsafe impl aya::Pod for LocalMacs {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for DecapVip {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatSet {}
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for PersistState {}
    unsafe impl aya::Pod for DestKey {}
    unsafe impl aya::Pod for DestSet {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragState {}
    unsafe impl aya::Pod for VipKey {}
}

#[cfg(feature = "std")]
mod addr {
    use super::*;
    use std::net::IpAddr;

    /// The four-word wire form of an address, and its family.
    pub fn addr_words(ip: IpAddr) -> ([u32; 4], u8) {
        match ip {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                ([w(0), w(4), w(8), w(12)], FAMILY_V6)
            }
        }
    }

    pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
        if family == FAMILY_V4 {
            IpAddr::from(words[0].to_ne_bytes())
        } else {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::from(o)
        }
    }

    impl ServiceKey {
        pub fn new(vip: IpAddr, port: u16, proto: u8) -> Self {
            let (addr, family) = addr_words(vip);
            ServiceKey {
                addr,
                port: port.to_be(),
                proto,
                family,
            }
        }
    }

    impl FlowKey {
        pub fn new(src: std::net::SocketAddr, dst: std::net::SocketAddr, proto: u8) -> Self {
            let (s, family) = addr_words(src.ip());
            let (d, _) = addr_words(dst.ip());
            FlowKey {
                src: s,
                dst: d,
                sport: src.port().to_be(),
                dport: dst.port().to_be(),
                proto,
                family,
                _pad: [0; 2],
            }
        }
    }
}
#[cfg(feature = "std")]
pub use addr::{addr_words, words_addr};

#[cfg(test)]
mod tests {
    use super::{flow_sets, FlowTable, LocalMacs, MAX_LOCAL_MACS};

    #[test]
    fn the_clock_takes_the_kernels_tick_and_lands_on_the_coarse_clock() {
        // HZ=250: ten ticks in 40 ms, as NTP slews it (+0.04%, -0.05%).
        assert_eq!(
            FlowTable::tick_for_interval(40_016_000, 10),
            Some(4_000_000)
        );
        assert_eq!(
            FlowTable::tick_for_interval(39_980_000, 10),
            Some(4_000_000)
        );
        // HZ=300 and 1000: the kernel's rounding of 1e9 / HZ; HZ=256 beside 250.
        assert_eq!(
            FlowTable::tick_for_interval(33_333_330, 10),
            Some(3_333_333)
        );
        assert_eq!(
            FlowTable::tick_for_interval(39_997_000, 40),
            Some(1_000_000)
        );
        assert_eq!(
            FlowTable::tick_for_interval(39_062_500, 10),
            Some(3_906_250)
        );
        let tick = 4_000_000;
        let jiffies = 4_294_967_296 + 1_000;
        let ns = 17_000_000_000;
        // The second reading paired the next tick's count with this tick's time.
        let offset = FlowTable::clock_offset_for(tick, &[(jiffies, ns), (jiffies + 1, ns)]);
        let t = FlowTable {
            tick_ns: tick,
            clock_offset: offset.unwrap(),
            ..FlowTable::default()
        };
        assert_eq!(t.clock_ns(jiffies), ns);
        // A minute later, 15,000 ticks on.
        assert_eq!(t.clock_ns(jiffies + 15_000), ns + 60_000_000_000);
    }

    #[test]
    fn local_macs_are_checked_up_to_the_list_size_and_not_beyond() {
        let mac = |i: u8| [0x02, 0, 0, 0, 0, i];
        let mut local = LocalMacs::default();
        // Nothing recorded: nothing checked.
        assert!(local.accepts(LocalMacs::word(mac(9))));
        assert!(local.add(mac(1)));
        assert!(!local.add(mac(1)), "recorded once");
        assert!(local.accepts(LocalMacs::word(mac(1))));
        assert!(!local.accepts(LocalMacs::word(mac(9))));
        assert_eq!(LocalMacs::word(mac(1)) >> 48, 0, "six bytes in a word");
        for i in 2..=MAX_LOCAL_MACS as u8 {
            assert!(local.add(mac(i)));
        }
        assert!(local.accepts(LocalMacs::word(mac(MAX_LOCAL_MACS as u8))));
        assert!(!local.accepts(LocalMacs::word(mac(99))));
        // One interface more than the list holds: frames are no longer checked.
        assert!(local.add(mac(50)));
        assert!(local.accepts(LocalMacs::word(mac(99))));
        assert!(!local.add(mac(1)), "still recorded once");
        assert!(local.add(mac(51)));
        assert!(local.accepts(LocalMacs::word(mac(99))));
    }

    #[test]
    fn keys_spread_evenly_over_any_number_of_sets_with_a_tag_apart() {
        use crate::hash::{flow_set, flow_tag};
        // 1,024 configured entries: 147 sets, not a power of two.
        let t = FlowTable {
            sets: u64::from(flow_sets(1024)),
            seed: 0x5eed,
            ..FlowTable::default()
        };
        let mut per_set = [0u32; 147];
        let mut tags_equal = 0;
        for n in 0..147_000u64 {
            let h = flow_set(&[n, n >> 7, 0, 0, 6 << 40 | 2 << 48], t.seed);
            per_set[t.set_index(h) as usize] += 1;
            assert_ne!(flow_tag(h), 0, "0 is an empty way's tag");
            tags_equal += u32::from(flow_tag(h) == flow_tag(h ^ 0xffff_ffff));
        }
        // 1,000 keys a set on average: each within 15% of it.
        assert!(
            per_set.iter().all(|&c| (850..1150).contains(&c)),
            "{per_set:?}"
        );
        // The tag is the hash's other half: the set's bits do not change it.
        assert_eq!(tags_equal, 147_000);
        let one = FlowTable {
            sets: 1,
            ..FlowTable::default()
        };
        assert_eq!(one.set_index(u64::MAX), 0);
    }

    #[test]
    fn the_clock_calibration_refuses_nonsense() {
        assert_eq!(FlowTable::tick_for_interval(40_000_000, 0), None);
        // One tick in 1 s: HZ = 1, not a kernel's; 10 us: HZ 100,000.
        assert_eq!(FlowTable::tick_for_interval(1_000_000_000, 1), None);
        assert_eq!(FlowTable::tick_for_interval(10_000, 1), None);
        // A reading a tick off over ten (HZ=250 seen as 11 ticks in 40 ms): measured again.
        assert_eq!(FlowTable::tick_for_interval(40_000_000, 11), None);
        // The failure this replaces: a thread that slept through a tick saw steps of two.
        assert_eq!(FlowTable::tick_for_interval(8_000_000, 2), Some(4_000_000));
        assert_eq!(FlowTable::clock_offset_for(4_000_000, &[]), None);
    }
}
