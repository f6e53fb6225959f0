//! The connection table seen from the controller: one flow's entry and the client's
//! persistence template, the reconciling walk (idle flows expire, active connections are
//! counted again), and the table's memory mapped for the caller's use only.

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    BackendInfo, FlowEntry, FlowKey, FlowState, FlowTable, NatEntry, NatKey, SetEntry, FLOW_ACTIVE,
    IPPROTO_TCP,
};

use super::{
    clock::monotonic_ns,
    flows::{self, FlowMemory, SetMemory},
    load::SET_TABLES,
    Datapath,
};

/// Whether a flow has been idle past its protocol's timeout (0: flows never expire).
fn idle_past_timeout(
    key: &FlowKey,
    state: &FlowState,
    now: u64,
    tcp_timeout_ns: u64,
    udp_timeout_ns: u64,
) -> bool {
    let timeout = if key.proto == IPPROTO_TCP {
        tcp_timeout_ns
    } else {
        udp_timeout_ns
    };
    timeout != 0 && now.saturating_sub(state.last_seen) > timeout
}

/// What one reconciliation pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Connection-table entries still live.
    pub live: usize,
    /// Entries idle past their timeout, removed (with their `nat` reply entries).
    pub expired: usize,
    /// Active connections per backend id, as written to `ACTIVE`.
    pub active: std::collections::HashMap<u32, u64>,
}

impl Datapath {
    /// Walks the connection table: removes flows idle past their protocol's timeout (and
    /// their `nat` reply entries), counts each backend's active flows (from the first
    /// packet until FIN/RST or the idle timeout) and writes those counts to `ACTIVE`, so
    /// the datapath's own increments and decrements cannot drift (a flow evicted by a new
    /// one or that ended without FIN stops counting here).
    pub fn reconcile(&mut self, tcp_timeout_ns: u64, udp_timeout_ns: u64) -> Result<Reconciled> {
        let now = monotonic_ns();
        let mut result = Reconciled::default();
        let mut expired: Vec<(FlowKey, FlowState)> = Vec::new();
        let ids: Vec<u32> = self
            .applied
            .as_ref()
            .map(|p| p.backends.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        let len = ids.iter().map(|&id| id + 1).max().unwrap_or(0);
        let before = self.active_upto(len)?;
        let flows = self.flows(None)?;
        for (set, way, FlowEntry { key: k, state: v }) in flows.entries() {
            if idle_past_timeout(&k, &v, now, tcp_timeout_ns, udp_timeout_ns) {
                if flows.remove(set, way, &k) {
                    expired.push((k, v));
                }
                continue;
            }
            result.live += 1;
            if v.flags & FLOW_ACTIVE != 0 {
                *result.active.entry(v.backend).or_default() += 1;
            }
        }
        let nat_keys: Vec<NatKey> = {
            let backends: Array<_, BackendInfo> = Array::try_from(self.map("BACKENDS")?)?;
            expired
                .iter()
                .filter_map(|(k, v)| {
                    let b = backends.get(&v.backend, 0).ok()?;
                    (b.forward == lb_common::FORWARD_NAT).then_some(NatKey {
                        backend: b.addr,
                        client: k.src,
                        backend_port: if b.port == 0 { k.dport } else { b.port },
                        client_port: k.sport,
                        proto: k.proto,
                        family: k.family,
                        _pad: [0; 2],
                    })
                })
                .collect()
        };
        if !nat_keys.is_empty() {
            let nat = self.sets::<NatEntry>(None)?;
            for k in &nat_keys {
                nat.remove_key(k);
            }
        }
        result.expired = expired.len();
        // Flows that started while the table was walked may be in sets walked before
        // they were, and a plain rewrite would lose them (a backend at its connection
        // threshold would take more). Two upper bounds of the true count: the walk's
        // count plus the datapath's increments since it began, and the datapath's own
        // count (exact but for flows that vanished without FIN: what this pass is for).
        // The lower of the two is written: it errs upwards only by flows that started or
        // ended during the walk, until the next pass.
        let after = self.active_upto(len)?;
        let counts: Vec<u64> = ids
            .iter()
            .map(|&id| {
                let i = id as usize;
                let now = after.get(i).copied().unwrap_or(0);
                let walked = result.active.get(&id).copied().unwrap_or(0);
                now.min(walked + now.saturating_sub(before[i]))
            })
            .collect();
        for (id, count) in ids.iter().zip(&counts) {
            result.active.insert(*id, *count);
        }
        self.write_array("ACTIVE", &ids, &counts)?;
        Ok(result)
    }

    /// `ACTIVE` of ids `0..len`, read with one BPF_MAP_LOOKUP_BATCH (one lookup per id if
    /// the kernel refuses batches).
    fn active_upto(&mut self, len: u32) -> Result<Vec<u64>> {
        use std::os::fd::{AsFd, AsRawFd};
        if len == 0 {
            return Ok(Vec::new());
        }
        let fd = match self.map("ACTIVE")? {
            aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map ACTIVE is not an array")),
        };
        let mut keys = vec![0u32; len as usize];
        let mut values = vec![0u64; len as usize];
        match super::syscall::lookup_batch(fd, &mut keys, &mut values) {
            Ok(read) if read == len as usize => Ok(values),
            Ok(read) => Err(anyhow!("map ACTIVE has {read} entries, not {len}")),
            Err(e) if super::syscall::batch_refused(&e) => {
                (0..len).map(|id| self.active_connections(id)).collect()
            }
            Err(e) => Err(e).context("cannot read map ACTIVE"),
        }
    }

    /// The connection table's live entries, those `reconcile` would keep, counted without
    /// changing anything: what status and `/metrics` report (a walk of the table, about
    /// 20 ms per million entries here).
    pub fn live_flows(&mut self, tcp_timeout_ns: u64, udp_timeout_ns: u64) -> Result<u64> {
        let now = monotonic_ns();
        let flows = self.flows(None)?;
        let live = flows
            .entries()
            .filter(|(_, _, e)| {
                !idle_past_timeout(&e.key, &e.state, now, tcp_timeout_ns, udp_timeout_ns)
            })
            .count();
        Ok(live as u64)
    }

    /// The connection-table entry of one flow.
    pub fn conntrack_lookup(
        &mut self,
        flow: &lb_common::FlowKey,
    ) -> Result<Option<lb_common::FlowState>> {
        Ok(self.flows(Some(flow))?.lookup(flow).map(|e| e.state))
    }

    /// The client's persistence template for a service.
    pub fn persistence_lookup(
        &mut self,
        key: &lb_common::PersistKey,
    ) -> Result<Option<lb_common::PersistState>> {
        let m: HashMap<&mut MapData, lb_common::PersistKey, lb_common::PersistState> =
            HashMap::try_from(self.map("PERSIST")?)?;
        match m.get(key, 0) {
            Ok(state) => Ok(Some(state)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The connection table's capacity in entries (its sets times `FLOW_WAYS`).
    pub fn conntrack_capacity(&mut self) -> Result<u64> {
        Ok(u64::from(self.map_entries("CONNTRACK")?) * lb_common::FLOW_WAYS as u64)
    }

    /// Connection-table entries, for tests and (later) `bascule status`.
    pub fn conntrack_len(&mut self) -> Result<usize> {
        Ok(self.flows(None)?.entries().count())
    }

    /// Forgets every connection-table entry (tests use it to start from a clean table).
    pub fn clear_conntrack(&mut self) -> Result<()> {
        self.flows(None)?.clear();
        Ok(())
    }

    /// The connection-table set a flow lives in (tests fill one set on purpose).
    pub fn flow_set_of(&mut self, flow: &FlowKey) -> Result<usize> {
        Ok(self.flows(Some(flow))?.set_of(flow))
    }

    /// The `nat` reply table's set a reply lives in (tests fill one set on purpose).
    pub fn nat_set_of(&mut self, reply: &NatKey) -> Result<usize> {
        Ok(self.sets::<NatEntry>(Some(reply))?.set_of(reply))
    }

    /// Forgets every `nat` reply-direction entry (the benchmark starts each new-flow
    /// figure from empty tables).
    pub fn clear_nat_replies(&mut self) -> Result<()> {
        self.sets::<NatEntry>(None)?.clear();
        Ok(())
    }

    /// A set-associative table's memory (`CONNTRACK` or `NAT`, by `E`): all of it
    /// (`None`), or the page holding one key's set. Mapped for the caller's use only: a
    /// daemon that kept a whole table mapped would count it (64 MB at the default size)
    /// in its resident memory as well.
    fn sets<E: SetEntry>(&mut self, key: Option<&E::Key>) -> Result<SetMemory<E>> {
        use std::os::fd::{AsFd, AsRawFd};
        let slot = E::TABLE;
        let name = SET_TABLES[slot as usize];
        let table: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
        let shape = table.get(&slot, 0)?;
        let sets = self.map_entries(name)? as usize;
        let fd = match self.map(name)? {
            aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map {name} is not an array")),
        };
        let range = match key {
            None => 0..sets,
            Some(key) => flows::page_of(flows::set_of::<E>(key, &shape), sets),
        };
        SetMemory::map(fd, range, shape).with_context(|| format!("cannot map {name}"))
    }

    fn flows(&mut self, flow: Option<&FlowKey>) -> Result<FlowMemory> {
        self.sets(flow)
    }
}
