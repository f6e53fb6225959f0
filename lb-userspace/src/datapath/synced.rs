//! `sync:` on the datapath's side: the ring buffer the datapath reports flows to, the
//! reports it dropped, and peers' flows written into the connection table with the
//! datapath's write protocol (`flows::SetMemory::insert`), marked `FLOW_SYNCED`.

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use lb_common::{
    FlowEntry, FlowKey, FlowTable, PersistKey, PersistState, FLOW_ESTABLISHED, FLOW_SYNCED,
};

use super::{flows::FlowMemory, Datapath};

impl Datapath {
    /// The ring the datapath reports new flows and flows' ends to (`SYNC_RING`), taken
    /// out of the object (once) for the sync sender.
    pub fn take_sync_ring(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map("SYNC_RING")
            .ok_or_else(|| anyhow!("map SYNC_RING missing from the object (or taken)"))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Reports the datapath dropped because the ring was full, over all CPUs.
    pub fn sync_drops(&mut self) -> Result<u64> {
        let drops: PerCpuArray<_, u64> = PerCpuArray::try_from(self.map("SYNC_DROPS")?)?;
        Ok(drops.get(&0, 0)?.iter().sum())
    }

    fn synced_table(&mut self) -> Result<&FlowMemory> {
        if self.synced.is_none() {
            let table: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
            let shape = table.get(&0, 0)?;
            let sets = self.map_entries("CONNTRACK")? as usize;
            let fd = match self.map("CONNTRACK")? {
                aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
                _ => return Err(anyhow!("map CONNTRACK is not an array")),
            };
            let memory =
                FlowMemory::map_lazy(fd, 0..sets, shape).context("cannot map CONNTRACK")?;
            self.synced = Some(memory);
        }
        Ok(self.synced.as_ref().expect("mapped above"))
    }

    /// Writes a peer's flow (and its client's persistence template, when the service has
    /// persistence). False when a packet's writer held the way at that instant, or when
    /// its set holds only established flows (`synced_recency`).
    pub fn insert_synced(&mut self, entry: FlowEntry, persist: Option<PersistKey>) -> Result<bool> {
        let written = self.synced_table()?.insert(entry, synced_recency);
        if let Some(key) = persist {
            let mut templates: HashMap<_, PersistKey, PersistState> =
                HashMap::try_from(self.map("PERSIST")?)?;
            let state = PersistState {
                backend: entry.state.backend,
                last_seen: entry.state.last_seen,
                ..PersistState::default()
            };
            templates.insert(key, state, 0)?;
        }
        Ok(written)
    }

    /// Every entry of the connection table (a peer's bulk sync).
    pub fn flow_entries(&mut self) -> Result<Vec<FlowEntry>> {
        Ok(self.synced_table()?.entries().map(|(_, _, e)| e).collect())
    }

    /// Removes a flow a peer saw end; whether the table had it.
    pub fn remove_synced(&mut self, key: &FlowKey) -> Result<bool> {
        Ok(self.synced_table()?.remove_key(key))
    }
}

/// How soon a peer's flow evicts an entry of its set, lowest first: as the datapath ranks
/// them for a new flow (`conntrack.flood_protection`), a flow of a single packet, then
/// another peer's, least recently seen first; never an established flow of this node, so
/// that a flood at a peer, reported here, evicts none.
pub(crate) fn synced_recency(e: &FlowEntry) -> u64 {
    if e.state.flags & FLOW_ESTABLISHED != 0 {
        return u64::MAX;
    }
    let class = if e.state.flags & FLOW_SYNCED != 0 {
        1 << 62
    } else {
        0
    };
    class | (e.state.last_seen >> 2)
}
