//! Writing a plan into the maps, only what differs from the plan they hold, in an order
//! that never lets a packet read a table naming an unwritten backend; and, after adopting
//! pinned maps, removing what the plan no longer has.

use std::{
    collections::{BTreeSet, HashMap as StdHashMap, HashSet},
    sync::Arc,
};

use anyhow::{anyhow, Context, Result};
use aya::maps::{Array, ArrayOfMaps, HashMap, MapData};
use lb_common::{
    BackendInfo, ServiceEntry, ServiceInfo, ServiceKey, ServiceKey4, Settings, VipKey,
};

use super::{
    syscall::{batch_refused, inner_map_id, map_fd_by_id, update_batch},
    tables::{table_maps, write_cells},
    Datapath,
};
use crate::plan::{service_slot_writes, Plan, PlannedService, Table};

impl Datapath {
    /// Writes a plan into the maps, changing only what differs from the plan applied
    /// before: new and changed backends first (so a table never points at an unwritten
    /// backend), then each changed service's table (rewritten in place, cell by cell, when
    /// it keeps its length: a packet reads each cell old or new; otherwise a new inner map
    /// swapped in whole; unchanged services keep theirs), then the service entries.
    /// Services no longer planned are removed, and last the backends no longer planned are
    /// cleared (marked inactive, so their established flows are rescheduled).
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        self.apply_shared(Arc::new(plan.clone()))
    }

    /// [`Datapath::apply`] of a plan the caller keeps too (not copied).
    pub fn apply_shared(&mut self, plan: Arc<Plan>) -> Result<()> {
        let previous = self.applied.take().unwrap_or_else(|| {
            Arc::new(Plan {
                settings: Settings::default(),
                services: Vec::new(),
                backends: Vec::new(),
            })
        });
        let result = self.write(&plan, &previous);
        // On failure the maps may hold part of the new plan: forget what was applied so
        // the next apply rewrites everything.
        self.applied = result.is_ok().then_some(plan);
        result
    }

    fn write(&mut self, plan: &Plan, previous: &Plan) -> Result<()> {
        if plan.settings != previous.settings {
            let mut settings: Array<_, Settings> = Array::try_from(self.map("SETTINGS")?)?;
            settings.set(0, plan.settings, 0)?;
        }
        let removed = self.write_backends(plan, previous)?;
        self.write_tables(plan, previous)?;
        self.write_vips(plan, previous)?;
        self.write_services(plan, previous)?;
        // Cleared last, once no table names them.
        let cleared = vec![BackendInfo::default(); removed.len()];
        self.write_array("BACKENDS", &removed, &cleared)?;
        Ok(())
    }

    /// Writes the backends that are new or changed. Returns the ids of those no longer
    /// planned, for the caller to clear once no table names them.
    fn write_backends(&mut self, plan: &Plan, previous: &Plan) -> Result<Vec<u32>> {
        // Indexed by id (ids are dense, below MAX_BACKENDS): no hashing of 100,000 ids.
        fn by_id(p: &Plan) -> Vec<Option<&BackendInfo>> {
            let len = p
                .backends
                .iter()
                .map(|b| b.id as usize + 1)
                .max()
                .unwrap_or(0);
            let mut v = vec![None; len];
            for b in &p.backends {
                v[b.id as usize] = Some(&b.info);
            }
            v
        }
        let (before, now) = (by_id(previous), by_id(plan));
        let (ids, infos): (Vec<u32>, Vec<BackendInfo>) = plan
            .backends
            .iter()
            .filter(|b| before.get(b.id as usize).copied().flatten() != Some(&b.info))
            .map(|b| (b.id, b.info))
            .unzip();
        self.write_array("BACKENDS", &ids, &infos)?;
        Ok(previous
            .backends
            .iter()
            .filter(|old| now.get(old.id as usize).copied().flatten().is_none())
            .map(|old| old.id)
            .collect())
    }

    /// Each changed service's table: rewritten in place when it keeps its length (no wait
    /// for the kernel), else a new map swapped in.
    fn write_tables(&mut self, plan: &Plan, previous: &Plan) -> Result<()> {
        let before: StdHashMap<u32, &PlannedService> =
            previous.services.iter().map(|s| (s.info.id, s)).collect();
        let changed: Vec<&PlannedService> = plan
            .services
            .iter()
            .filter(|svc| {
                !before.get(&svc.info.id).is_some_and(|p| {
                    p.info == svc.info
                        && ((p.table_source.is_some() && p.table_source == svc.table_source)
                            || p.table == svc.table)
                })
            })
            .collect();
        let (same, new): (Vec<_>, Vec<_>) = changed.into_iter().partition(|svc| {
            before
                .get(&svc.info.id)
                .is_some_and(|p| p.key == svc.key && p.table.len() == svc.table.len())
        });
        let mut swapped = Vec::new();
        for svc in same {
            if !self
                .rewrite_table(svc.info.id, &svc.table)
                .with_context(|| format!("service {}: Maglev table", svc.name))?
            {
                swapped.push(svc);
            }
        }
        swapped.extend(new);
        let swaps = table_maps(&swapped)?;
        self.swap_tables(&swaps)
    }

    /// Adds the VIPs `plan` has that `previous` had not, removes those it no longer has.
    fn write_vips(&mut self, plan: &Plan, previous: &Plan) -> Result<()> {
        let vips = |p: &Plan| -> BTreeSet<(u8, [u32; 4])> {
            p.services
                .iter()
                .flat_map(|s| s.keys())
                .map(|k| (k.family, k.addr))
                .collect()
        };
        let (new, old) = (vips(plan), vips(previous));
        let mut map: HashMap<_, VipKey, u32> = HashMap::try_from(self.map("VIPS")?)?;
        for &(family, addr) in new.difference(&old) {
            map.insert(
                VipKey {
                    addr,
                    family,
                    _pad: [0; 3],
                },
                1,
                0,
            )?;
        }
        for &(family, addr) in old.difference(&new) {
            let _ = map.remove(&VipKey {
                addr,
                family,
                _pad: [0; 3],
            });
        }
        Ok(())
    }

    /// The services' slots by id first (removed ids cleared: their flows take the long
    /// way, which finds them gone), then the services' hash maps: new and changed entries
    /// written, removed ones deleted.
    fn write_services(&mut self, plan: &Plan, previous: &Plan) -> Result<()> {
        let (ids, entries): (Vec<u32>, Vec<ServiceEntry>) =
            service_slot_writes(&plan.services, &previous.services)
                .into_iter()
                .unzip();
        self.write_array("SERVICE_ENTRIES", &ids, &entries)?;
        let written: StdHashMap<ServiceKey, &ServiceInfo> = previous
            .services
            .iter()
            .flat_map(|s| s.keys().map(move |k| (*k, &s.info)))
            .collect();
        for svc in &plan.services {
            for key in svc.keys() {
                if written.get(key) == Some(&&svc.info) {
                    continue;
                }
                self.insert_service(key, svc.info)
                    .with_context(|| format!("service {}", svc.name))?;
            }
        }
        let keys = planned_keys(plan);
        for old in previous.services.iter().flat_map(|s| s.keys()) {
            if !keys.contains(old) {
                let _ = self.remove_service(old);
            }
        }
        Ok(())
    }

    /// Writes `slots` over the table in service `id`'s slot of `MAGLEV`, in place, cell by
    /// cell: a packet meanwhile reads each cell old or new, and both name a backend that is
    /// written (new ones are written before, removed ones cleared after). Swapping a new
    /// map in instead would cost an RCU grace period (10-30 ms). False when the slot holds
    /// no table (the caller swaps one in).
    fn rewrite_table(&mut self, id: u32, slots: &Table) -> Result<bool> {
        use std::os::fd::{AsFd, AsRawFd};
        let outer_fd = match self.map("MAGLEV")? {
            aya::maps::Map::ArrayOfMaps(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map MAGLEV is not an array of maps")),
        };
        let Some(inner) = inner_map_id(outer_fd, id).context("reading the map of tables")? else {
            return Ok(false);
        };
        let fd = map_fd_by_id(inner).context("opening a table map")?;
        write_cells(fd.as_raw_fd(), slots)?;
        Ok(true)
    }

    /// Writes a service: IPv4 ones to `SERVICES4` (compact key), IPv6 ones to `SERVICES`.
    fn insert_service(&mut self, key: &ServiceKey, info: ServiceInfo) -> Result<()> {
        if let Some(k4) = key.v4() {
            let mut m: HashMap<_, ServiceKey4, ServiceInfo> =
                HashMap::try_from(self.map("SERVICES4")?)?;
            m.insert(k4, info, 0)?;
        } else {
            let mut m: HashMap<_, ServiceKey, ServiceInfo> =
                HashMap::try_from(self.map("SERVICES")?)?;
            m.insert(*key, info, 0)?;
        }
        Ok(())
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        if let Some(k4) = key.v4() {
            let mut m: HashMap<_, ServiceKey4, ServiceInfo> =
                HashMap::try_from(self.map("SERVICES4")?)?;
            m.remove(&k4)?;
        } else {
            let mut m: HashMap<_, ServiceKey, ServiceInfo> =
                HashMap::try_from(self.map("SERVICES")?)?;
            m.remove(key)?;
        }
        Ok(())
    }

    /// Every service key in the maps, in the plan's four-word form, with the map it is
    /// in (`SERVICES` entries of the IPv4 family are misplaced: the datapath never looks
    /// them up there).
    fn service_keys(&mut self) -> Result<Vec<(ServiceKey, bool)>> {
        let m: HashMap<_, ServiceKey4, ServiceInfo> = HashMap::try_from(self.map("SERVICES4")?)?;
        let mut out: Vec<(ServiceKey, bool)> = m
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| (k.wide(), true))
            .collect();
        let m: HashMap<_, ServiceKey, ServiceInfo> = HashMap::try_from(self.map("SERVICES")?)?;
        out.extend(
            m.keys()
                .filter_map(|k| k.ok())
                .map(|k| (k, k.family != lb_common::FAMILY_V4)),
        );
        Ok(out)
    }

    /// `keys[i]` -> `values[i]` in array map `name`: one BPF_MAP_UPDATE_BATCH call (a
    /// 100,000-backend plan is otherwise 100,000 system calls), one update per entry if the
    /// kernel refuses batches.
    pub(super) fn write_array<V: aya::Pod>(
        &mut self,
        name: &str,
        keys: &[u32],
        values: &[V],
    ) -> Result<()> {
        use std::os::fd::{AsFd, AsRawFd};
        if keys.is_empty() {
            return Ok(());
        }
        let fd = match self.map(name)? {
            aya::maps::Map::Array(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map {name} is not an array")),
        };
        match update_batch(fd, keys, values) {
            Ok(()) => return Ok(()),
            Err(e) if batch_refused(&e) => {
                tracing::debug!("batched update of {name} refused ({e}); one update per entry");
            }
            Err(e) => return Err(e).with_context(|| format!("cannot update map {name}")),
        }
        let mut array: Array<_, V> = Array::try_from(self.map(name)?)?;
        for (k, v) in keys.iter().zip(values) {
            array
                .set(*k, v, 0)
                .with_context(|| format!("map {name}, entry {k}"))?;
        }
        Ok(())
    }

    /// Puts each new table in its service's slot of `MAGLEV`. The kernel waits for an RCU
    /// grace period after every update of a map of maps (milliseconds each), so all slots
    /// are written with one BPF_MAP_UPDATE_BATCH call (one wait); one update per slot if
    /// the kernel refuses batches. Each slot changes atomically either way.
    fn swap_tables(&mut self, swaps: &[(u32, Array<MapData, u64>)]) -> Result<()> {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd, AsRawFd};
        if swaps.is_empty() {
            return Ok(());
        }
        let outer_fd = match self.map("MAGLEV")? {
            aya::maps::Map::ArrayOfMaps(data) => data.fd().as_fd().as_raw_fd(),
            _ => return Err(anyhow!("map MAGLEV is not an array of maps")),
        };
        let keys: Vec<u32> = swaps.iter().map(|(id, _)| *id).collect();
        let fds: Vec<u32> = swaps
            .iter()
            .map(|(_, t)| t.map().fd().as_fd().as_raw_fd() as u32)
            .collect();
        match update_batch(outer_fd, &keys, &fds) {
            Ok(()) => return Ok(()),
            Err(e) if batch_refused(&e) => {
                tracing::debug!("batched table swap refused ({e}); one update per table");
            }
            Err(e) => return Err(e).context("Maglev table swap"),
        }
        let mut outer: ArrayOfMaps<_, Array<MapData, u64>> =
            ArrayOfMaps::try_from(self.map("MAGLEV")?)?;
        for (id, table) in swaps {
            outer
                .set(*id, table, 0)
                .with_context(|| format!("service id {id}: Maglev table swap"))?;
        }
        Ok(())
    }

    /// After adopting pinned maps, removes what the plan no longer has: services and VIPs
    /// (their traffic stops being balanced) and backends (marked inactive, so their flows are
    /// rescheduled) that a previous daemon left, and rewrites the node settings.
    pub fn remove_unplanned(&mut self, plan: &Plan) -> Result<(usize, usize)> {
        {
            let mut settings: Array<_, Settings> = Array::try_from(self.map("SETTINGS")?)?;
            settings.set(0, plan.settings, 0)?;
        }
        let mut stale = 0;
        let keys = planned_keys(plan);
        for (k, placed) in self.service_keys()? {
            if !placed {
                // An IPv4 service a build before `SERVICES4` wrote: never looked up there.
                let mut m: HashMap<_, ServiceKey, ServiceInfo> =
                    HashMap::try_from(self.map("SERVICES")?)?;
                let _ = m.remove(&k);
                if !keys.contains(&k) {
                    stale += 1;
                }
            } else if !keys.contains(&k) {
                let _ = self.remove_service(&k);
                stale += 1;
            }
        }
        let mut vips: HashMap<_, VipKey, u32> = HashMap::try_from(self.map("VIPS")?)?;
        let stale_vips: Vec<VipKey> = vips
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !keys
                    .iter()
                    .any(|s| s.addr == k.addr && s.family == k.family)
            })
            .collect();
        for k in &stale_vips {
            let _ = vips.remove(k);
        }
        let mut backends: Array<_, BackendInfo> = Array::try_from(self.map("BACKENDS")?)?;
        let planned: HashSet<u32> = plan.backends.iter().map(|b| b.id).collect();
        let mut cleared = 0;
        for id in 0..lb_common::MAX_BACKENDS {
            if planned.contains(&id) {
                continue;
            }
            if backends.get(&id, 0)? != BackendInfo::default() {
                backends.set(id, BackendInfo::default(), 0)?;
                cleared += 1;
            }
        }
        Ok((stale, cleared))
    }
}

/// Every key of the service maps a plan has.
fn planned_keys(plan: &Plan) -> HashSet<ServiceKey> {
    plan.services
        .iter()
        .flat_map(|s| s.keys())
        .copied()
        .collect()
}
