//! The XDP datapath as userspace sees it: load the embedded object, attach it, write a
//! `Plan` into its maps, read its counters. Loaded with [`Datapath::load_pinned`], its maps,
//! program and links live under a pin tree (see `pins.rs`) and outlive the daemon.

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData, MapInfo, PerCpuArray, PerCpuValues},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        TestRun, TestRunOptions, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    flow_sets, BackendInfo, Counters, FlowEntry, FlowKey, FlowState, FlowTable, LocalMacs,
    NatEntry, NatKey, ServiceEntry, ServiceInfo, ServiceKey, ServiceKey4, SetEntry, Settings,
    VipKey, FLOW_ACTIVE, IPPROTO_TCP, MAGLEV_TABLE_SIZE, MAX_LOCAL_MACS, REASON_COUNT, TABLE_CELLS,
    TABLE_MAP_FLAGS,
};

pub mod decap;
pub mod flows;
pub mod pins;

use crate::plan::Plan;
use flows::{FlowMemory, SetMemory};
use pins::PinDir;

/// The XDP object built by `build.rs` from `lb-ebpf`.
pub static XDP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"));
/// The backend-side decapsulation object (tc ingress).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-decap"));

pub const XDP_PROGRAM: &str = "bascule_xdp";
/// The program that reads the kernel's tick count and coarse clock together, run by
/// userspace to calibrate the datapath's clock (never attached).
const CLOCK_PROGRAM: &str = "bascule_clock";

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
    links: Vec<(String, Attachment)>,
    /// The plan the maps hold, to apply only differences.
    applied: Option<std::sync::Arc<Plan>>,
    /// Where links and the program are pinned, when loaded by `load_pinned`.
    pins: Option<PinPaths>,
}

/// How an interface's XDP link is held.
enum Attachment {
    /// Owned by the program object: detached when it is dropped.
    Owned(XdpLinkId),
    /// Pinned: stays attached, even after this process exits, until the pin is removed.
    Pinned { link: FdLink, pin: PathBuf },
}

struct PinPaths {
    links: PathBuf,
}

/// The maps of the XDP object that userspace shares with the kernel (the object's
/// `.rodata`/`.bss` sections are per program and not pinned).
fn object_maps() -> Result<Vec<(String, aya_obj::Map)>> {
    let obj = aya_obj::Object::parse(XDP_OBJECT).context("cannot parse the embedded XDP object")?;
    let mut maps: Vec<(String, aya_obj::Map)> = obj
        .maps
        .into_iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// The connection table's capacity for a configured `conntrack.max_entries`.
fn conntrack_capacity(configured: u32) -> u32 {
    configured.max(1024)
}

/// The entries of the maps sized by `conntrack.max_entries`: the connection table and
/// the `nat` reply table (a `nat` flow has one entry in each), in sets of `FLOW_WAYS`.
fn flow_table_entries(name: &str, conntrack_entries: u32) -> Option<u32> {
    let capacity = conntrack_capacity(conntrack_entries);
    match name {
        "CONNTRACK" | "NAT" => Some(flow_sets(capacity)),
        _ => None,
    }
}

/// The set-associative tables, by their `FLOW_TABLE` slot.
const SET_TABLES: [&str; 2] = ["CONNTRACK", "NAT"];

/// A loader with the flow tables sized for `conntrack.max_entries`.
fn loader(conntrack_entries: u32) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for name in SET_TABLES {
        loader.map_max_entries(name, flow_table_entries(name, conntrack_entries).unwrap());
    }
    loader
}

/// A digest of the embedded XDP object: pinned state written by another build is checked
/// map by map before it is adopted.
pub fn object_digest() -> u64 {
    lb_common::maglev::stable_hash(XDP_OBJECT)
}

impl Datapath {
    /// Loads the program and creates its maps (not attached yet).
    pub fn load(conntrack_entries: u32) -> Result<Self> {
        let mut ebpf = loader(conntrack_entries).load(XDP_OBJECT).context(
            "cannot load the XDP object (is this root, with CAP_BPF and CAP_NET_ADMIN?)",
        )?;
        load_program(&mut ebpf)?;
        let mut datapath = Datapath {
            ebpf,
            links: Vec::new(),
            applied: None,
            pins: None,
        };
        datapath.init_maps()?;
        Ok(datapath)
    }

    /// Loads the program with every map pinned in `pins`: maps already pinned there are
    /// reused as they are (contents included: the connection table survives), missing ones
    /// are created and pinned. Links made by [`Datapath::attach`] are pinned too, and links
    /// already pinned are taken over. Check [`pinned_maps_mismatch`] first.
    pub fn load_pinned(conntrack_entries: u32, pins: &PinDir) -> Result<Self> {
        let maps = object_maps()?;
        let mut loader = loader(conntrack_entries);
        for (name, _) in &maps {
            loader.map_pin_path(name, pins.maps().join(name));
        }
        let mut ebpf = loader.load(XDP_OBJECT).with_context(|| {
            format!(
                "cannot load the XDP object with its maps pinned in {} (is this root, with CAP_BPF and CAP_NET_ADMIN?)",
                pins.maps().display()
            )
        })?;
        load_program(&mut ebpf)?;
        let mut datapath = Datapath {
            ebpf,
            links: Vec::new(),
            applied: None,
            pins: Some(PinPaths {
                links: pins.links(),
            }),
        };
        // An adopted table keeps its seed: its flows stay where they are.
        datapath.init_maps()?;
        let pin = pins.programs().join(XDP_PROGRAM);
        let _ = std::fs::remove_file(&pin);
        datapath
            .program()
            .pin(&pin)
            .with_context(|| format!("cannot pin the XDP program at {}", pin.display()))?;
        Ok(datapath)
    }

    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(XDP_PROGRAM)
            .expect("loaded in Datapath::load")
            .try_into()
            .expect("XDP program")
    }

    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        // Before the program runs there: it balances only frames sent to the node's MACs.
        self.add_local_mac(crate::host::interfaces::interface_mac(interface)?)?;
        let Some(links_dir) = self.pins.as_ref().map(|p| p.links.clone()) else {
            let link = self.attach_new(interface, mode)?;
            self.links
                .push((interface.to_string(), Attachment::Owned(link)));
            return Ok(());
        };
        let pin = links_dir.join(interface);
        if pin.exists() {
            match self.adopt_link(&pin) {
                Ok(link) => {
                    tracing::info!(
                        interface,
                        "XDP link adopted from {}: program replaced atomically",
                        pin.display()
                    );
                    self.links
                        .push((interface.to_string(), Attachment::Pinned { link, pin }));
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(
                        interface,
                        "cannot adopt the pinned XDP link ({e:#}); attaching anew"
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = self.attach_new(interface, mode)?;
        let link = self.program().take_link(id)?;
        let fd = FdLink::try_from(link).with_context(|| {
            format!(
                "cannot pin the XDP link of {interface}: the kernel attached it without a BPF link"
            )
        })?;
        let link: FdLink = fd
            .pin(&pin)
            .with_context(|| format!("cannot pin the XDP link at {}", pin.display()))?
            .into();
        self.links
            .push((interface.to_string(), Attachment::Pinned { link, pin }));
        Ok(())
    }

    /// Takes over a pinned XDP link: its program is replaced by ours in one update, so
    /// the interface never runs without one.
    fn adopt_link(&mut self, pin: &Path) -> Result<FdLink> {
        let fd: FdLink = PinnedLink::from_pin(pin)?.into();
        let link = XdpLink::try_from(fd)?;
        let id = self.program().attach_to_link(link)?;
        Ok(FdLink::try_from(self.program().take_link(id)?)?)
    }

    fn attach_new(&mut self, interface: &str, mode: AttachMode) -> Result<XdpLinkId> {
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
                    return Ok(link);
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

    /// Detaches the program from every interface, pinned links included.
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (interface, attachment) in links {
            let result = match attachment {
                Attachment::Owned(link) => self.program().detach(link).map_err(anyhow::Error::from),
                // The link goes when its last reference does: the pin, then this fd.
                Attachment::Pinned { link, pin } => {
                    let removed = std::fs::remove_file(&pin)
                        .with_context(|| format!("cannot unpin {}", pin.display()));
                    drop(link);
                    removed
                }
            };
            match result {
                Ok(()) => tracing::info!(interface, "XDP program detached"),
                Err(e) => tracing::warn!(interface, "cannot detach XDP program: {e:#}"),
            }
        }
    }

    /// Leaves pinned links attached when this `Datapath` goes (the program keeps running
    /// with the pinned maps, without the daemon). Returns the interfaces left so.
    pub fn keep_attached(&mut self) -> Vec<String> {
        let links = std::mem::take(&mut self.links);
        let mut kept = Vec::new();
        for (interface, attachment) in links {
            match attachment {
                Attachment::Pinned { link, .. } => {
                    drop(link);
                    kept.push(interface);
                }
                Attachment::Owned(link) => {
                    tracing::warn!(interface, "XDP link is not pinned: detaching it");
                    let _ = self.program().detach(link);
                }
            }
        }
        kept
    }

    /// Unpins (so detaches) pinned links of interfaces not in `keep`: what a previous
    /// daemon attached to an interface the configuration no longer names.
    pub fn prune_links(&mut self, keep: &[&str]) -> Result<()> {
        let Some(dir) = self.pins.as_ref().map(|p| p.links.clone()) else {
            return Ok(());
        };
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot unpin {}", entry.path().display()))?;
                tracing::info!(interface = %name, "XDP program detached (interface no longer configured)");
            }
        }
        Ok(())
    }

    /// Writes a plan into the maps, changing only what differs from the plan applied
    /// before: new and changed backends first (so a table never points at an unwritten
    /// backend), then each changed service's table (rewritten in place, cell by cell, when
    /// it keeps its length: a packet reads each cell old or new; otherwise a new inner map
    /// swapped in whole; unchanged services keep theirs), then the service entries.
    /// Services no longer planned are removed, and last the backends no longer planned are
    /// cleared (marked inactive, so their established flows are rescheduled).
    pub fn apply(&mut self, plan: &Plan) -> Result<()> {
        self.apply_shared(std::sync::Arc::new(plan.clone()))
    }

    /// [`Datapath::apply`] of a plan the caller keeps too (not copied).
    pub fn apply_shared(&mut self, plan: std::sync::Arc<Plan>) -> Result<()> {
        let previous = self.applied.take().unwrap_or_else(|| {
            std::sync::Arc::new(Plan {
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
        let removed: Vec<u32>;
        {
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
            // Cleared last, once no table names them.
            removed = previous
                .backends
                .iter()
                .filter(|old| now.get(old.id as usize).copied().flatten().is_none())
                .map(|old| old.id)
                .collect();
        }
        let before: StdHashMap<u32, &crate::plan::PlannedService> =
            previous.services.iter().map(|s| (s.info.id, s)).collect();
        let changed: Vec<&crate::plan::PlannedService> = plan
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
        // A table of the same length as the one in place is rewritten in place (no wait
        // for the kernel); any other gets a new map, swapped in.
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
        self.swap_tables(&swaps)?;
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
        // The services' slots by id, before the hash maps (removed ids cleared: their
        // flows take the long way, which finds them gone).
        let (ids, entries): (Vec<u32>, Vec<ServiceEntry>) =
            crate::plan::service_slot_writes(&plan.services, &previous.services)
                .into_iter()
                .unzip();
        self.write_array("SERVICE_ENTRIES", &ids, &entries)?;
        let written: StdHashMap<ServiceKey, &ServiceInfo> =
            previous.services.iter().map(|s| (s.key, &s.info)).collect();
        for svc in &plan.services {
            if written.get(&svc.key) == Some(&&svc.info) {
                continue;
            }
            self.insert_service(&svc.key, svc.info)
                .with_context(|| format!("service {}", svc.name))?;
        }
        let keys: std::collections::HashSet<ServiceKey> =
            plan.services.iter().map(|s| s.key).collect();
        for old in &previous.services {
            if !keys.contains(&old.key) {
                let _ = self.remove_service(&old.key);
            }
        }
        let cleared = vec![BackendInfo::default(); removed.len()];
        self.write_array("BACKENDS", &removed, &cleared)?;
        Ok(())
    }

    /// Writes `slots` over the table in service `id`'s slot of `MAGLEV`, in place, cell by
    /// cell: a packet meanwhile reads each cell old or new, and both name a backend that is
    /// written (new ones are written before, removed ones cleared after). Swapping a new
    /// map in instead would cost an RCU grace period (10-30 ms). False when the slot holds
    /// no table (the caller swaps one in).
    fn rewrite_table(&mut self, id: u32, slots: &crate::plan::Table) -> Result<bool> {
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
    fn write_array<V: aya::Pod>(&mut self, name: &str, keys: &[u32], values: &[V]) -> Result<()> {
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

    fn map(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))
    }

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

    /// Connection-table entries of live flows that a new flow took, summed over CPUs.
    pub fn conntrack_evictions(&mut self) -> Result<u64> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("FLOW_EVICTIONS")?)?;
        Ok(m.get(&0, 0)?.iter().sum())
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

    /// Gives each new set-associative table (its `FLOW_TABLE` slot all zero: no shape) its
    /// number of sets and a random seed, and keeps those of one adopted from a previous
    /// daemon; calibrates the datapath's clock again either way.
    fn init_flow_table(&mut self) -> Result<()> {
        let clock = match self.calibrate_clock() {
            Ok(clock) => Some(clock),
            Err(e) => {
                tracing::warn!(
                    "cannot calibrate the datapath's clock ({e:#}): it reads the kernel's coarse clock by a helper call instead, a few ns more per packet"
                );
                None
            }
        };
        for (slot, name) in SET_TABLES.iter().enumerate() {
            let sets = self.map_entries(name)?;
            let mut m: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
            let mut table = m.get(&(slot as u32), 0)?;
            if table.sets != u64::from(sets) {
                table = FlowTable {
                    sets: u64::from(sets),
                    seed: flows::random_seed(),
                    ..FlowTable::default()
                };
            }
            (table.tick_ns, table.clock_offset) = clock.unwrap_or_default();
            m.set(slot as u32, table, 0)?;
        }
        Ok(())
    }

    /// The datapath clock's tick and offset (`FlowTable::clock_ns`): the tick from the
    /// coarse clock's steps, watched for three ticks (12 ms at HZ=250), the offset from
    /// readings of the tick count and the clock by the `bascule_clock` program.
    fn calibrate_clock(&mut self) -> Result<(u64, u64)> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let (mut last, mut steps, mut step) = (monotonic_ns(), 0, u64::MAX);
        while steps < 3 {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the coarse clock did not advance three times in 1 s"
            );
            let now = monotonic_ns();
            if now != last {
                if steps > 0 {
                    step = step.min(now - last);
                }
                (last, steps) = (now, steps + 1);
            }
            std::hint::spin_loop();
        }
        let tick = FlowTable::tick_for_step(step)
            .ok_or_else(|| anyhow!("the coarse clock steps by {step} ns: not a kernel tick"))?;
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(CLOCK_PROGRAM)
            .ok_or_else(|| anyhow!("program {CLOCK_PROGRAM} missing from the object"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()?;
        }
        let mut readings = Vec::new();
        for _ in 0..8 {
            let mut out = [0u8; 64];
            prog.test_run(TestRunOptions {
                data_in: Some(&[0u8; 64]),
                data_out: Some(&mut out),
                ..TestRunOptions::new()
            })?;
            let word = |i: usize| u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().unwrap());
            if word(0) == word(2) {
                readings.push((word(0), word(1)));
            }
        }
        let offset = FlowTable::clock_offset_for(tick, &readings)
            .ok_or_else(|| anyhow!("the tick count changed during every reading"))?;
        Ok((tick, offset))
    }

    /// A set-associative table's number of sets (its capacity, set at load time).
    fn map_entries(&mut self, name: &str) -> Result<u32> {
        match self.map(name)? {
            aya::maps::Map::Array(data) => Ok(data.info()?.max_entries()),
            _ => Err(anyhow!("map {name} is not an array")),
        }
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

    /// Forgets every `nat` reply-direction entry (the benchmark starts each new-flow
    /// figure from empty tables).
    pub fn clear_nat_replies(&mut self) -> Result<()> {
        self.sets::<NatEntry>(None)?.clear();
        Ok(())
    }
}

/// Whether the maps pinned in `pins` can be adopted by this build: every map of the
/// object that is pinned has the same type, key and value sizes, capacity and flags.
/// Returns the differences (empty: compatible, or nothing pinned).
pub fn pinned_maps_mismatch(conntrack_entries: u32, pins: &PinDir) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (name, def) in object_maps()? {
        let path = pins.maps().join(&name);
        if !path.exists() {
            continue;
        }
        let info = match MapInfo::from_pin(&path) {
            Ok(i) => i,
            Err(e) => {
                out.push(format!("{name}: cannot open the pinned map: {e}"));
                continue;
            }
        };
        let max_entries =
            flow_table_entries(&name, conntrack_entries).unwrap_or_else(|| def.max_entries());
        let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let want = (
            def.map_type(),
            def.key_size(),
            def.value_size(),
            max_entries,
            def.map_flags(),
        );
        let have = (
            pinned_type,
            info.key_size(),
            info.value_size(),
            info.max_entries(),
            info.map_flags(),
        );
        if want != have {
            out.push(format!(
                "{name}: pinned (type, key, value, entries, flags) {have:?}, this build needs {want:?}"
            ));
        }
    }
    Ok(out)
}

fn load_program(ebpf: &mut Ebpf) -> Result<()> {
    let prog: &mut Xdp = ebpf
        .program_mut(XDP_PROGRAM)
        .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the object"))?
        .try_into()?;
    prog.load().context("the kernel refused the XDP program")?;
    Ok(())
}

/// Readers and housekeeping for the controller (metrics, `simulate`, adoption).
impl Datapath {
    /// Packets per XDP action (`lb_common::XDP_ACTION_NAMES` order), summed over CPUs.
    pub fn actions(&mut self) -> Result<[u64; 5]> {
        let m: PerCpuArray<&mut MapData, u64> = PerCpuArray::try_from(self.map("ACTIONS")?)?;
        let mut out = [0u64; 5];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = m.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// The datapath clock's tick in ns (`FlowTable::tick_ns`), 0 if it was not calibrated.
    pub fn clock_tick_ns(&mut self) -> Result<u64> {
        let m: Array<_, FlowTable> = Array::try_from(self.map("FLOW_TABLE")?)?;
        Ok(m.get(&0, 0)?.tick_ns)
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
        for (k, placed) in self.service_keys()? {
            if !placed {
                // An IPv4 service a build before `SERVICES4` wrote: never looked up there.
                let mut m: HashMap<_, ServiceKey, ServiceInfo> =
                    HashMap::try_from(self.map("SERVICES")?)?;
                let _ = m.remove(&k);
                if !plan.services.iter().any(|s| s.key == k) {
                    stale += 1;
                }
            } else if !plan.services.iter().any(|s| s.key == k) {
                let _ = self.remove_service(&k);
                stale += 1;
            }
        }
        let mut vips: HashMap<_, VipKey, u32> = HashMap::try_from(self.map("VIPS")?)?;
        let stale_vips: Vec<VipKey> = vips
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| {
                !plan
                    .services
                    .iter()
                    .any(|s| s.key.addr == k.addr && s.key.family == k.family)
            })
            .collect();
        for k in &stale_vips {
            let _ = vips.remove(k);
        }
        let mut backends: Array<_, BackendInfo> = Array::try_from(self.map("BACKENDS")?)?;
        let planned: std::collections::HashSet<u32> = plan.backends.iter().map(|b| b.id).collect();
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

impl Datapath {
    /// Records an interface's MAC for the datapath's "addressed to us" check (past
    /// `MAX_LOCAL_MACS` interfaces, frames are not checked, and a warning says so).
    pub fn add_local_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut m: Array<_, LocalMacs> = Array::try_from(self.map("LOCAL_MACS")?)?;
        let mut local = m.get(&0, 0)?;
        if local.add(mac) {
            if local.count == MAX_LOCAL_MACS as u64 + 1 {
                tracing::warn!(
                    "more than {MAX_LOCAL_MACS} interfaces: frames for other MACs are balanced too (attach to at most {MAX_LOCAL_MACS} to keep them out)"
                );
            }
            m.set(0, local, 0)?;
        }
        Ok(())
    }

    /// What every load sets up, maps adopted or new: the flow tables' shape and the clock
    /// (`init_flow_table`), and no MACs recorded (attaching records them again).
    fn init_maps(&mut self) -> Result<()> {
        self.init_flow_table()?;
        let mut m: Array<_, LocalMacs> = Array::try_from(self.map("LOCAL_MACS")?)?;
        m.set(0, LocalMacs::default(), 0)?;
        Ok(())
    }
}

/// A new lookup-table map holding `slots` (two per cell, see `lb_common::TABLE_CELLS`; the
/// rest 0), filled through a shared mapping of the map's memory: one copy, not one `bpf()`
/// call per cell (1,000 tables would take tens of seconds otherwise).
/// The new table maps of `services`, in order; on every core when they are many (a load
/// fills 1,000 maps of 256 KiB: the kernel's page allocation is most of it).
fn table_maps(
    services: &[&crate::plan::PlannedService],
) -> Result<Vec<(u32, Array<MapData, u64>)>> {
    let one = |svc: &&crate::plan::PlannedService| {
        table_map(&svc.table)
            .with_context(|| format!("service {}: Maglev table", svc.name))
            .map(|t| (svc.info.id, t))
    };
    crate::util::cores::map(services, 16, one)
        .into_iter()
        .collect()
}

fn table_map(slots: &crate::plan::Table) -> Result<Array<MapData, u64>> {
    if slots.len() > MAGLEV_TABLE_SIZE as usize {
        return Err(anyhow!(
            "{} slots, a table holds at most {MAGLEV_TABLE_SIZE}",
            slots.len()
        ));
    }
    let table: Array<MapData, u64> =
        Array::create(TABLE_CELLS, TABLE_MAP_FLAGS).context("cannot create a table map")?;
    let fd = {
        use aya::maps::IterableMap as _;
        use std::os::fd::{AsFd, AsRawFd};
        table.map().fd().as_fd().as_raw_fd()
    };
    write_cells(fd, slots)?;
    Ok(table)
}

/// Writes `slots` into the table map `fd` (two per 8-byte cell, even slot in the low half)
/// through a shared mapping of its memory, each cell with one aligned 8-byte store (a
/// packet reading the map meanwhile sees each cell whole, old or new).
fn write_cells(fd: i32, slots: &crate::plan::Table) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let len = TABLE_CELLS as usize * std::mem::size_of::<u64>();
    // SAFETY: maps the `len` bytes of the array's values (an mmap-able array map exposes
    // its 8-byte value cells from offset 0, page-aligned); the mapping is private to this
    // function and unmapped before it returns; `fd` outlives it. The cells are written as
    // atomics because BPF programs read them concurrently.
    unsafe {
        let mem = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            // Populated at once: one call instead of a page fault per 4 KiB written.
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd,
            0,
        );
        if mem == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map a table map");
        }
        let cells = mem.cast::<u64>();
        for (i, pair) in slots
            .indexes()
            .chunks(2)
            .take(TABLE_CELLS as usize)
            .enumerate()
        {
            let high = pair.get(1).map_or(0, |&index| slots.id(index));
            AtomicU64::from_ptr(cells.add(i)).store(
                u64::from(slots.id(pair[0])) | u64::from(high) << 32,
                Ordering::Relaxed,
            );
        }
        libc::munmap(mem, len);
    }
    Ok(())
}

/// The id of the map in slot `index` of the map of maps `outer_fd` (a lookup from
/// userspace answers the inner map's id), None for an empty slot.
fn inner_map_id(outer_fd: i32, index: u32) -> std::io::Result<Option<u32>> {
    /// The element-operation member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut id = 0u32;
    let mut attr = ElemAttr {
        map_fd: outer_fd as u32,
        _pad: 0,
        key: &index as *const u32 as u64,
        value: &mut id as *mut u32 as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at `index` and `id`, which outlive the call.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        Ok(_) => Ok(Some(id)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A file descriptor of the map with kernel id `id` (BPF_MAP_GET_FD_BY_ID).
fn map_fd_by_id(id: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    #[repr(C)]
    struct GetIdAttr {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
    let mut attr = GetIdAttr {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: a plain attr struct; on success the kernel returns a new fd we own.
    let fd = unsafe { bpf(BPF_MAP_GET_FD_BY_ID, &mut attr) }?;
    // SAFETY: `fd` was just returned to us by the kernel and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A batch operation this kernel or map type does not do (the caller falls back to one
/// update per entry, which reports a real error if there is one).
fn batch_refused(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)
    )
}

/// The bpf(2) system call: `cmd` with `attr` (the member of `union bpf_attr` that `cmd`
/// reads; the kernel zero-extends the rest). Returns the call's non-negative result.
///
/// # Safety
/// Pointers inside `attr` must be valid for what `cmd` reads and writes through them.
unsafe fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<i64> {
    let rc = libc::syscall(
        libc::SYS_bpf,
        cmd,
        attr as *mut A,
        std::mem::size_of::<A>() as u32,
    );
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(rc)
}

/// The `batch` member of `union bpf_attr` (BPF_MAP_*_BATCH).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// BPF_MAP_LOOKUP_BATCH from the array map `map_fd`'s first entry: `keys.len()` entries
/// into `keys` and `values` (`values` laid out as the kernel copies them: for a per-CPU
/// map, one 8-byte-aligned value per possible CPU for each key). Returns how many were
/// read (fewer when the map ends first).
fn lookup_batch<V: Copy>(
    map_fd: i32,
    keys: &mut [u32],
    values: &mut [V],
) -> std::io::Result<usize> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let mut next = 0u32;
    let mut attr = BatchAttr {
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at `next`, `keys` and `values`, which outlive the call and
    // hold what the kernel writes (the caller sized `values` for the map's values).
    match unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
        Ok(_) => Ok(attr.count as usize),
        // The map ended before `count` entries: `count` says how many were read.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(attr.count as usize),
        Err(e) => Err(e),
    }
}

/// BPF_MAP_UPDATE_BATCH: `keys[i]` -> `values[i]` in the map `map_fd`, in one call.
/// `values` are laid out as the map's values (`V` is the map's value type).
fn update_batch<V: Copy>(map_fd: i32, keys: &[u32], values: &[V]) -> std::io::Result<()> {
    assert_eq!(keys.len(), values.len());
    const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map_fd as u32,
        ..Default::default()
    };
    // SAFETY: `attr` points at `keys` and `values`, which outlive the call; the size
    // passed is the struct's (the kernel zero-extends the rest of bpf_attr).
    unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    if attr.count as usize != keys.len() {
        return Err(std::io::Error::other(format!(
            "batch update wrote {} of {} entries",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}

/// The datapath's clock (`CLOCK_MONOTONIC_COARSE`, see `FlowTable::clock_ns`), seen from
/// userspace.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One id's per-CPU counters, added up.
fn sum_over_cpus(per_cpu: &[Counters]) -> Counters {
    per_cpu.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
        new_flows: a.new_flows + c.new_flows,
    })
}

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
    pub active: StdHashMap<u32, u64>,
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
        let ids: Vec<u32> = self
            .applied
            .as_ref()
            .map(|p| p.backends.iter().map(|b| b.id).collect())
            .unwrap_or_default();
        let counts: Vec<u64> = ids
            .iter()
            .map(|id| result.active.get(id).copied().unwrap_or(0))
            .collect();
        self.write_array("ACTIVE", &ids, &counts)?;
        Ok(result)
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
    /// Owned links are detached; pinned ones stay with their pins (the daemon decides,
    /// with `detach_all` or `keep_attached`, before this).
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (interface, attachment) in links {
            if let Attachment::Owned(link) = attachment {
                match self.program().detach(link) {
                    Ok(()) => tracing::info!(interface, "XDP program detached"),
                    Err(e) => tracing::warn!(interface, "cannot detach XDP program: {e}"),
                }
            }
        }
    }
}
