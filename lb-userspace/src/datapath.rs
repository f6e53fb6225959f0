//! The XDP datapath as userspace sees it: load the embedded object, attach it, write a
//! `Plan` into its maps, read its counters.

use std::collections::HashMap as StdHashMap;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData, PerCpuArray},
    programs::{xdp::XdpLinkId, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use lb_common::{
    BackendInfo, Counters, FlowKey, FlowState, NatKey, NatReply, ServiceInfo, ServiceKey, Settings,
    VipKey, FLOW_ACTIVE, IPPROTO_TCP, MAGLEV_TABLE_SIZE, REASON_COUNT,
};

use crate::plan::Plan;

/// The XDP object built by `build.rs` from `lb-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// Trivial XDP programs (drop; swap MACs and transmit): the floor `cargo xtask bench`
/// measures beside the datapath.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-floor"));
/// The backend-side decapsulation object (tc ingress).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

pub const XDP_PROGRAM: &str = "bascule_xdp";

/// How to attach to an interface, as the config's `xdp_mode` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native if the driver has it, generic otherwise.
    Auto,
    Native,
    Generic,
}

pub struct Datapath {
    ebpf: Ebpf,
    links: Vec<(String, XdpLinkId)>,
    /// The plan the maps hold, to apply only differences.
    applied: Option<Plan>,
}

impl Datapath {
    /// Loads the program and creates its maps (not attached yet).
    pub fn load(conntrack_entries: u32) -> Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("CONNTRACK", conntrack_entries.max(1024))
            .load(XDP_OBJECT)
            .context(
                "cannot load the XDP object (is this root, with CAP_BPF and CAP_NET_ADMIN?)",
            )?;
        let prog: &mut Xdp = ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
            .try_into()?;
        prog.load().context("the kernel refused the XDP program")?;
        Ok(Datapath {
            ebpf,
            links: Vec::new(),
            applied: None,
        })
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .expect("loaded in Datapath::load")
            .try_into()
            .expect("XDP program")
    }

    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        let attempts: &[XdpMode] = match mode {
            AttachMode::Auto => &[XdpMode::Driver, XdpMode::Skb],
            AttachMode::Native => &[XdpMode::Driver],
            AttachMode::Generic => &[XdpMode::Skb],
        };
        let mut last = None;
        for &m in attempts {
            match self.program().attach(interface, m) {
                Ok(link) => {
                    tracing::info!(interface, mode = ?m, "XDP program attached");
                    self.links.push((interface.to_string(), link));
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        let hint = match mode {
            AttachMode::Native => "; the driver may lack native XDP: set xdp_mode: generic",
            _ => "",
        };
        Err(anyhow!(last.expect("at least one attempt")))
            .with_context(|| format!("cannot attach XDP to {interface}{hint}"))
    }

    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (interface, link) in links {
            match self.program().detach(link) {
                Ok(()) => tracing::info!(interface, "XDP program detached"),
                Err(e) => tracing::warn!(interface, "cannot detach XDP program: {e}"),
            }
        }
    }

    /// Writes a plan into the maps, changing only what differs from the plan applied
    /// before: backends first (so a new table never points at an unwritten backend), then
    /// each changed service's Maglev table (a new inner map swapped in whole: packets see
    /// the old table or the new, never a mix; unchanged services keep theirs), then the
    /// service entries. Services and backends no longer planned are removed; a removed
    /// backend is marked inactive so its established flows are rescheduled.
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        let previous = self.applied.take().unwrap_or_else(|| Plan {
            settings: Settings::default(),
            services: Vec::new(),
            backends: Vec::new(),
        });
        let result = self.write(plan, &previous);
        // On failure the maps may hold part of the new plan: forget what was applied so
        // the next apply rewrites everything.
        self.applied = result.is_ok().then(|| plan.clone());
        result
    }

    fn write(&mut self, plan: &Plan, previous: &Plan) -> Result<()> {
        if plan.settings != previous.settings {
            let mut settings: Array<_, Settings> = Array::try_from(self.map("SETTINGS")?)?;
            settings.set(0, plan.settings, 0)?;
        }
        {
            let mut backends: Array<_, BackendInfo> = Array::try_from(self.map("BACKENDS")?)?;
            for b in &plan.backends {
                if !previous.backends.contains(b) {
                    backends
                        .set(b.id, b.info, 0)
                        .with_context(|| format!("backend {}", b.address))?;
                }
            }
            for old in &previous.backends {
                if !plan.backends.iter().any(|b| b.id == old.id) {
                    backends.set(old.id, BackendInfo::default(), 0)?;
                }
            }
        }
        for svc in &plan.services {
            let unchanged = previous
                .services
                .iter()
                .any(|p| p.info == svc.info && p.table == svc.table);
            if unchanged {
                continue;
            }
            let mut table: Array<MapData, u32> =
                Array::create(MAGLEV_TABLE_SIZE, 0).context("cannot create a Maglev table map")?;
            for (slot, id) in svc.table.iter().enumerate() {
                table.set(slot as u32, id, 0)?;
            }
            let mut outer: ArrayOfMaps<_, Array<MapData, u32>> =
                ArrayOfMaps::try_from(self.map("MAGLEV")?)?;
            outer
                .set(svc.info.id, &table, 0)
                .with_context(|| format!("service {}: Maglev table swap", svc.name))?;
        }
        {
            let vips = |p: &Plan| -> std::collections::BTreeSet<(u8, [u32; 4])> {
                p.services
                    .iter()
                    .map(|s| (s.key.family, s.key.addr))
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
        }
        let mut services: HashMap<_, ServiceKey, ServiceInfo> =
            HashMap::try_from(self.map("SERVICES")?)?;
        for svc in &plan.services {
            services
                .insert(svc.key, svc.info, 0)
                .with_context(|| format!("service {}", svc.name))?;
        }
        for old in &previous.services {
            if !plan.services.iter().any(|s| s.key == old.key) {
                let _ = services.remove(&old.key);
            }
        }
        Ok(())
    }

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

    /// Per-service or per-backend counters summed over CPUs.
    pub fn counters(&mut self, map: &str, index: u32) -> Result<Counters> {
        let stats: PerCpuArray<&mut MapData, Counters> = PerCpuArray::try_from(self.map(map)?)?;
        let per_cpu = stats.get(&index, 0)?;
        Ok(per_cpu.iter().fold(Counters::default(), |a, c| Counters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        }))
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

    /// Connection-table entries, for tests and (later) `bascule status`.
    pub fn conntrack_len(&mut self) -> Result<usize> {
        let m: HashMap<&mut MapData, lb_common::FlowKey, lb_common::FlowState> =
            HashMap::try_from(self.map("CONNTRACK")?)?;
        Ok(m.keys().filter_map(|k| k.ok()).count())
    }

    /// Forgets every connection-table entry (tests use it to start from a clean table).
    pub fn clear_conntrack(&mut self) -> Result<()> {
        let mut m: HashMap<&mut MapData, lb_common::FlowKey, lb_common::FlowState> =
            HashMap::try_from(self.map("CONNTRACK")?)?;
        let keys: Vec<_> = m.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = m.remove(&k);
        }
        Ok(())
    }
}

/// `bpf_ktime_get_ns()`'s clock, seen from userspace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one reconciliation pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Connection-table entries still live.
    pub live: usize,
    /// Entries idle past their timeout, removed (with their `nat` reply entries).
    pub expired: usize,
    /// Active connections per backend id, as written to `ACTIVE`.
    pub active: StdHashMap<u32, u64>,
}

impl Datapath {
    /// Walks the connection table: removes flows idle past their protocol's timeout (and
    /// their `nat` reply entries), counts each backend's active flows (from the first
    /// packet until FIN/RST or the idle timeout) and writes those counts to `ACTIVE`, so
    /// the datapath's own increments and decrements cannot drift (a flow evicted from the
    /// LRU or that ended without FIN stops counting here).
    pub fn reconcile(&mut self, tcp_timeout_ns: u64, udp_timeout_ns: u64) -> Result<Reconciled> {
        let now = monotonic_ns();
        let mut result = Reconciled::default();
        let mut expired: Vec<(FlowKey, FlowState)> = Vec::new();
        {
            let ct: HashMap<_, FlowKey, FlowState> = HashMap::try_from(self.map("CONNTRACK")?)?;
            for entry in ct.iter() {
                let Ok((k, v)) = entry else { continue };
                let timeout = if k.proto == IPPROTO_TCP {
                    tcp_timeout_ns
                } else {
                    udp_timeout_ns
                };
                if timeout != 0 && now.saturating_sub(v.last_seen) > timeout {
                    expired.push((k, v));
                    continue;
                }
                result.live += 1;
                if v.flags & FLOW_ACTIVE != 0 {
                    *result.active.entry(v.backend).or_default() += 1;
                }
            }
        }
        {
            let mut ct: HashMap<_, FlowKey, FlowState> = HashMap::try_from(self.map("CONNTRACK")?)?;
            for (k, _) in &expired {
                let _ = ct.remove(k);
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
        {
            let mut nat: HashMap<_, NatKey, NatReply> = HashMap::try_from(self.map("NAT")?)?;
            for k in &nat_keys {
                let _ = nat.remove(k);
            }
        }
        result.expired = expired.len();
        let ids: Vec<u32> = self
            .applied
            .as_ref()
            .map(|p| p.backends.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        let mut active: Array<_, u64> = Array::try_from(self.map("ACTIVE")?)?;
        for id in ids {
            active.set(id, result.active.get(&id).copied().unwrap_or(0), 0)?;
        }
        Ok(result)
    }

    /// The datapath's active-connection count of a backend (what the load schedulers see).
    pub fn active_connections(&mut self, backend_id: u32) -> Result<u64> {
        let active: Array<_, u64> = Array::try_from(self.map("ACTIVE")?)?;
        Ok(active.get(&backend_id, 0)?)
    }

    /// Sets a backend's active-connection count (tests preset loads to check the formulas).
    pub fn set_active_connections(&mut self, backend_id: u32, count: u64) -> Result<()> {
        let mut active: Array<_, u64> = Array::try_from(self.map("ACTIVE")?)?;
        Ok(active.set(backend_id, count, 0)?)
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        self.detach_all();
    }
}
