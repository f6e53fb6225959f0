//! Every map of the XDP datapath. Userspace opens them by these names (see
//! `lb-userspace/src/datapath/`); keys and values are the `lb-common` types.

use aya_ebpf::{
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray, RingBuf},
    macros::btf_map,
};
use lb_common::{
    flow_sets, BackendInfo, Counters, DestKey, DestSet, FlowSet, FlowTable, FragKey, FragState,
    NatSet, NextHop, PersistKey, PersistState, ServiceEntry, ServiceInfo, ServiceKey, ServiceKey4,
    Settings, SyncReport, VipKey, BYPASS_COUNT, CONNTRACK_DEFAULT_ENTRIES, MAX_BACKENDS,
    MAX_SERVICES, MAX_SERVICE_KEYS, NEXT_HOP_SLOTS, REASON_COUNT, SYNC_RING_BYTES, TABLE_CELLS,
    TABLE_MAP_FLAGS,
};

/// (VIP, port, protocol) -> service, IPv6 VIPs. Port 0 entries match every port of the VIP.
/// A service with several addresses or ports has an entry for each (same `ServiceInfo`).
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo, { MAX_SERVICE_KEYS as usize }> =
    HashMap::new();

/// The same for IPv4 VIPs, with the compact key: the kernel hashes the whole key on every
/// lookup (new flows, and flows whose `SERVICE_ENTRIES` slot does not select them), and a
/// 20-byte key cost ~6 ns more.
#[btf_map]
pub static SERVICES4: HashMap<ServiceKey4, ServiceInfo, { MAX_SERVICE_KEYS as usize }> =
    HashMap::new();

/// Service id -> its key and info (`lb_common::ServiceEntry`), for the packets of
/// established flows: their connection-table entry names the service, and an array slot
/// costs far less than a hash lookup. Written by userspace beside `SERVICES`/`SERVICES4`;
/// an empty slot (a map created by an older build, say) only sends packets the long way.
#[btf_map]
pub static SERVICE_ENTRIES: Array<ServiceEntry, { MAX_SERVICES as usize }> = Array::new();

/// Backend id -> where and how to forward. Ids are assigned by userspace, unique per
/// (service, backend) pair.
#[btf_map]
pub static BACKENDS: Array<BackendInfo, { MAX_BACKENDS as usize }> = Array::new();

/// Service id -> that service's lookup table (slot -> backend id): the Maglev table (mh),
/// the weighted bucket table (sh, dh), the backend list (rr, load schedulers) or the wrr
/// cycle. Userspace builds a new inner table and swaps it in with one update, so a packet
/// sees the old table or the new one, never a mix. Tables are mmap-able
/// (`TABLE_MAP_FLAGS`): userspace fills one with a memory copy. Two slots per cell
/// (`TABLE_CELLS`).
#[btf_map]
pub static MAGLEV: ArrayOfMaps<
    Array<u64, { TABLE_CELLS as usize }, { TABLE_MAP_FLAGS as usize }>,
    { MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// Connection table: flow -> backend, sets of `FLOW_WAYS` entries (see
/// `lb_common::FlowEntry`), shared by all CPUs. Not the kernel's LRU hash map: its insert
/// (a free node from the LRU lists, evicting through them once full) cost over 200 ns of
/// a new flow's ~450, and its 40-byte jhash and bucket walk a third of an established
/// packet's own cost. Here a flow is one seeded multiply-hash and one or two cache lines;
/// a new flow takes its set's empty or least recently seen entry. mmap-able: userspace
/// reads and expires entries in place. Capacity (sets) set by userspace at load time.
#[btf_map]
pub static CONNTRACK: Array<
    FlowSet,
    { flow_sets(CONNTRACK_DEFAULT_ENTRIES) as usize },
    { TABLE_MAP_FLAGS as usize },
> = Array::new();

/// Slot 0: entries of live flows that a new flow took because their set was full (in
/// the connection table or the `nat` reply table).
#[btf_map]
pub static FLOW_EVICTIONS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// New flows forwarded without a connection-table entry (`conntrack.flood_protection`),
/// one slot per `lb_common::BYPASS_*` reason.
#[btf_map]
pub static FLOW_BYPASSES: PerCpuArray<u64, { BYPASS_COUNT as usize }> = PerCpuArray::new();

/// The set mask and hash seed (`lb_common::FlowTable`) of the connection table (slot 0)
/// and of the `nat` reply table (slot 1).
#[btf_map]
pub static FLOW_TABLE: Array<FlowTable, 2> = Array::new();

#[btf_map]
pub static SERVICE_STATS: PerCpuArray<Counters, { MAX_SERVICES as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<Counters, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// One counter per `lb_common::Reason`.
#[btf_map]
pub static REASONS: PerCpuArray<u64, { REASON_COUNT as usize }> = PerCpuArray::new();

/// One counter per XDP action code (aborted, drop, pass, tx, redirect).
#[btf_map]
pub static ACTIONS: PerCpuArray<u64, 5> = PerCpuArray::new();

/// Slot 0: node-wide settings (tunnel source addresses).
#[btf_map]
pub static SETTINGS: Array<Settings, 1> = Array::new();

/// Reply direction of `nat` flows: (backend, client) -> the VIP to put back as source.
/// One table for all CPUs (a reply may arrive on any), sets of `FLOW_WAYS` entries like
/// the connection table (`lb_common::NatEntry`; `FLOW_TABLE` slot 1); userspace removes
/// the entries of expired flows. Capacity set by userspace at load time, the connection
/// table's (a `nat` flow has one entry in each).
#[btf_map]
pub static NAT: Array<
    NatSet,
    { flow_sets(CONNTRACK_DEFAULT_ENTRIES) as usize },
    { TABLE_MAP_FLAGS as usize },
> = Array::new();

/// Persistence templates: (service, client address) -> backend.
#[btf_map]
pub static PERSIST: LruHashMap<PersistKey, PersistState, 262_144> = LruHashMap::new();

/// lblc/lblcr: (service, destination address) -> server (set).
#[btf_map]
pub static DESTS: LruHashMap<DestKey, DestSet, 65_536> = LruHashMap::new();

/// First fragments seen: (src, dst, id, proto) -> backend, so later fragments follow.
/// Bounded (LRU): a datagram whose entry was evicted has its later fragments passed
/// and counted (`fragment_unmatched`).
#[btf_map]
pub static FRAGS: LruHashMap<FragKey, FragState, 65_536> = LruHashMap::new();

/// VIP addresses (any port): ICMP echo to them is answered, ICMP errors about their flows
/// are steered to the flow's backend.
#[btf_map]
pub static VIPS: HashMap<VipKey, u32, { MAX_SERVICE_KEYS as usize }> = HashMap::new();

/// ICMP echo pacing per VIP (`node.icmp_echo_rate`): the time before which the VIP's
/// next answer would be early (a generic cell rate algorithm: one word per VIP, no
/// refill step). Written by the datapath as echoes come; LRU, sized for every VIP with
/// room to spare (a VIP whose word was evicted starts with a full burst again).
#[btf_map]
pub static ICMP_ECHO_PACE: LruHashMap<VipKey, u64, { 2 * MAX_SERVICE_KEYS as usize }> =
    LruHashMap::new();

/// Active connections per backend id (shared by all CPUs, atomic updates), for the load
/// schedulers. Userspace rewrites it from the connection table every few seconds so that
/// flows that ended without FIN/RST (idle timeout, eviction) stop counting.
#[btf_map]
pub static ACTIVE: Array<u64, { MAX_BACKENDS as usize }> = Array::new();

/// Connection thresholds (`BackendInfo::max_conns`): per backend id, the hysteresis state
/// the datapath keeps (userspace only reads it and zeroes it for a new id). Odd: the
/// backend is at its threshold (takes no new flows). Every change of state adds one, with
/// a compare-and-swap, so `(value + 1) / 2` is how many times it reached its threshold.
#[btf_map]
pub static OVERLOADS: Array<u64, { MAX_BACKENDS as usize }> = Array::new();

/// rr/wrr cursor per service and CPU: each CPU steps through the cycle in order (no
/// shared cache line to fight over; with RSS spreading flows evenly over CPUs the
/// overall split is the same).
#[btf_map]
pub static CURSORS: PerCpuArray<u64, { MAX_SERVICES as usize }> = PerCpuArray::new();

/// The MACs of the interfaces the program is attached to (`lb_common::LocalMacs`, one
/// slot), written by userspace as it attaches: only frames addressed to one are balanced.
#[btf_map]
pub static LOCAL_MACS: Array<lb_common::LocalMacs, 1> = Array::new();

/// `tun`/`nat` next hops per CPU, slot `backend id % NEXT_HOP_SLOTS`: the FIB's answer,
/// reused for `NEXT_HOP_TTL_NS` (see `forward::next_hop`).
#[btf_map]
pub static NEXT_HOPS: PerCpuArray<NextHop, { NEXT_HOP_SLOTS as usize }> = PerCpuArray::new();

/// `sync:`: new flows and flows' ends (`lb_common::SyncReport`), read by the daemon, which
/// sends them to its peers. Written only while `Settings::sync_enabled` is set.
#[btf_map]
pub static SYNC_RING: RingBuf<SyncReport, { SYNC_RING_BYTES as usize }> = RingBuf::new();

/// Slot 0: reports dropped because `SYNC_RING` was full (the packet is forwarded all the
/// same).
#[btf_map]
pub static SYNC_DROPS: PerCpuArray<u64, 1> = PerCpuArray::new();
