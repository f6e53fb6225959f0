//! Every map of the XDP datapath. Userspace opens them by these names (see
//! `lb-userspace/src/datapath.rs`); keys and values are the `lb-common` types.

use aya_ebpf::{
    bindings::BPF_F_NO_COMMON_LRU,
    btf_maps::{Array, ArrayOfMaps, HashMap, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use lb_common::{
    BackendInfo, Counters, FlowKey, FlowState, ServiceInfo, ServiceKey, Settings,
    CONNTRACK_DEFAULT_ENTRIES, MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_SERVICES, REASON_COUNT,
};

/// (VIP, port, protocol) -> service. Port 0 entries match every port of the VIP.
#[btf_map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo, { MAX_SERVICES as usize }> = HashMap::new();

/// Backend id -> where and how to forward. Ids are assigned by userspace, unique per
/// (service, backend) pair.
#[btf_map]
pub static BACKENDS: Array<BackendInfo, { MAX_BACKENDS as usize }> = Array::new();

/// Service id -> that service's Maglev table (slot -> backend id). Userspace builds a new
/// inner table and swaps it in with one update, so a packet sees the old table or the new
/// one, never a mix.
#[btf_map]
pub static MAGLEV: ArrayOfMaps<
    Array<u32, { MAGLEV_TABLE_SIZE as usize }>,
    { MAX_SERVICES as usize },
> = ArrayOfMaps::new();

/// Connection table: flow -> backend. LRU with per-CPU LRU lists (BPF_F_NO_COMMON_LRU):
/// a flood of new flows evicts the oldest entries of that CPU instead of failing, and
/// CPUs do not contend on one list. Capacity is set by userspace at load time.
#[btf_map]
pub static CONNTRACK: LruHashMap<
    FlowKey,
    FlowState,
    { CONNTRACK_DEFAULT_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

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
