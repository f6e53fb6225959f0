//! The datapath's counters: per service and backend (summed over CPUs, read in bulk), per
//! XDP verdict and reason, evictions; the backends' active connections; and the reset of
//! the counters of ids that are new.

use std::collections::HashMap as StdHashMap;

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, MapData, PerCpuArray, PerCpuValues};
use lb_common::{Counters, REASON_COUNT};

use super::{
    syscall::{batch_refused, lookup_batch},
    Datapath,
};

impl Datapath {
    /// Per-service or per-backend counters summed over CPUs.
    pub fn counters(&mut self, map: &str, index: u32) -> Result<Counters> {
        let stats: PerCpuArray<&mut MapData, Counters> = PerCpuArray::try_from(self.map(map)?)?;
        Ok(sum_over_cpus(&stats.get(&index, 0)?))
    }

    /// The counters of ids `0..len` of `SERVICE_STATS` or `BACKEND_STATS`, summed over
    /// CPUs, read with BPF_MAP_LOOKUP_BATCH: one system call for the lot (a call per id
    /// is 101,000 calls at 1,000 x 100). One lookup per id if the kernel refuses batches.
    pub fn counters_upto(&mut self, map: &str, len: u32) -> Result<Vec<Counters>> {
        use std::os::fd::{AsFd, AsRawFd};
        if len == 0 {
            return Ok(Vec::new());
        }
        let fd = match self.map(map)? {
            aya::maps::Map::PerCpuArray(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map {map} is not a per-CPU array")),
        };
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let mut keys = vec![0u32; len as usize];
        // `Counters` is three u64s: already 8-byte aligned, as the kernel lays values out.
        let mut values = vec![Counters::default(); len as usize * cpus];
        match lookup_batch(fd, &mut keys, &mut values) {
            Ok(read) if read == len as usize => {}
            Ok(read) => return Err(anyhow!("map {map} has {read} entries, not {len}")),
            Err(e) if batch_refused(&e) => {
                tracing::debug!("batched lookup of {map} refused ({e}); one lookup per id");
                return (0..len).map(|id| self.counters(map, id)).collect();
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read map {map}")),
        }
        Ok(values.chunks(cpus).map(sum_over_cpus).collect())
    }

    pub fn service_counters(&mut self, service_id: u32) -> Result<Counters> {
        self.counters("SERVICE_STATS", service_id)
    }

    pub fn backend_counters(&mut self, backend_id: u32) -> Result<Counters> {
        self.counters("BACKEND_STATS", backend_id)
    }

    /// Reason counters by label (`lb_common::REASON_NAMES`), summed over CPUs.
    pub fn reasons(&mut self) -> Result<StdHashMap<&'static str, u64>> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("REASONS")?)?;
        let mut out = StdHashMap::new();
        for i in 0..REASON_COUNT {
            let v: u64 = m.get(&i, 0)?.iter().sum();
            out.insert(lb_common::REASON_NAMES[i as usize].0, v);
        }
        Ok(out)
    }

    /// Packets per XDP action (`lb_common::XDP_ACTION_NAMES` order), summed over CPUs.
    pub fn actions(&mut self) -> Result<[u64; 5]> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("ACTIONS")?)?;
        let mut out = [0u64; 5];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// Connection-table entries of live flows that a new flow took, summed over CPUs.
    pub fn conntrack_evictions(&mut self) -> Result<u64> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("FLOW_EVICTIONS")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
    }

    /// New flows forwarded without a connection-table entry (`conntrack.flood_protection`),
    /// by reason (`lb_common::BYPASS_NAMES`), summed over CPUs.
    pub fn conntrack_bypasses(&mut self) -> Result<StdHashMap<&'static str, u64>> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("FLOW_BYPASSES")?)?;
        let mut out = StdHashMap::new();
        for (i, name) in lb_common::BYPASS_NAMES.iter().enumerate() {
            out.insert(*name, m.get(&(i as u32), 0)?.iter().sum());
        }
        Ok(out)
    }

    /// Zeroes the counters of service and backend ids that are new in the next plan: a
    /// freed id reused by another service or backend must not inherit its counts.
    pub fn reset_counters(&mut self, service_ids: &[u32], backend_ids: &[u32]) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        let zero = || PerCpuValues::try_from(vec![Counters::default(); cpus]);
        for (map, ids) in [
            ("SERVICE_STATS", service_ids),
            ("BACKEND_STATS", backend_ids),
        ] {
            if ids.is_empty() {
                continue;
            }
            let mut stats: PerCpuArray<&mut MapData, Counters> =
                PerCpuArray::try_from(self.map(map)?)?;
            for &id in ids {
                stats.set(id, zero()?, 0)?;
            }
        }
        if !backend_ids.is_empty() {
            // Nor its connection-threshold state and count.
            let zeros = vec![0u64; backend_ids.len()];
            self.write_array("OVERLOADS", backend_ids, &zeros)?;
        }
        Ok(())
    }

    /// The datapath's active-connection count of a backend (what the load schedulers see).
    pub fn active_connections(&mut self, backend_id: u32) -> Result<u64> {
        let active: Array<_, u64> = Array::try_from(self.map("ACTIVE")?)?;
        Ok(active.get(&backend_id, 0)?)
    }

    /// A backend's connection-threshold state as the datapath left it: whether it was at
    /// its threshold when a new flow last considered it, and how many times it reached it
    /// (see `OVERLOADS` in `lb-ebpf/src/maps.rs`).
    pub fn overload_state(&mut self, backend_id: u32) -> Result<(bool, u64)> {
        let states: Array<_, u64> = Array::try_from(self.map("OVERLOADS")?)?;
        let v = states.get(&backend_id, 0)?;
        Ok((v & 1 != 0, v.div_ceil(2)))
    }

    /// Sets a backend's active-connection count (tests preset loads to check the formulas).
    pub fn set_active_connections(&mut self, backend_id: u32, count: u64) -> Result<()> {
        let mut active: Array<_, u64> = Array::try_from(self.map("ACTIVE")?)?;
        Ok(active.set(backend_id, count, 0)?)
    }
}

/// One id's per-CPU counters, added up.
fn sum_over_cpus(per_cpu: &[Counters]) -> Counters {
    per_cpu.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        new_flows: a.new_flows + c.new_flows,
    })
}
