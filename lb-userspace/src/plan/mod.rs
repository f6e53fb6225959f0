//! What the datapath maps must hold for a configuration: pure data, computed without
//! root or sockets, so it can be tested and diffed. `datapath.rs` writes a `Plan` into
//! the maps.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, Context, Result};
use lb_common::{
    addr_words, maglev::MaglevBackend, BackendInfo, ServiceInfo, ServiceKey, Settings,
    BACKEND_ACTIVE, FORWARD_DR, FORWARD_LOCAL, FORWARD_NAT, FORWARD_TUN, MAX_BACKENDS,
    MAX_SERVICES, NO_BACKEND,
};

use crate::config::{Config, Forwarding, Protocol};

pub mod tables;

/// MAC addresses of `dr` backends, learnt from the neighbour table.
pub type MacTable = HashMap<IpAddr, [u8; 6]>;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    pub name: String,
    pub key: ServiceKey,
    pub info: ServiceInfo,
    /// Lookup table (see `tables` and [`Table`]): slot -> backend id (`NO_BACKEND` when
    /// none).
    pub table: Table,
    /// Backend ids of this service, in config order.
    pub backends: Vec<u32>,
    /// Digest of everything `table` was built from (scheduler, size, each backend's
    /// identity, effective weight and id): equal digests mean equal tables, so a re-plan
    /// reuses the previous table instead of building it again, and the datapath keeps the
    /// table it has. `None` when unknown.
    pub table_source: Option<u64>,
    /// Everything this service was planned from (see [`ServiceSource`]): a re-plan whose
    /// inputs for the service are equal takes the service and its backends as they are
    /// (a reload that changes one service plans one). `None` when unknown.
    pub source: Option<std::sync::Arc<ServiceSource>>,
}

/// A service's lookup table: slot -> backend id (`NO_BACKEND` when none), held as a table
/// of indexes into the service's backend ids. Services built from the same inputs (one
/// pool behind many VIPs and ports) share one table of indexes, and the plans the daemon
/// keeps (applied, current, its status) share every table they did not rebuild: at 1,000
/// services of one pool, one 256 KiB table instead of 1,000.
#[derive(Clone, Debug, Default)]
pub struct Table {
    indexes: std::sync::Arc<Vec<u32>>,
    ids: std::sync::Arc<[u32]>,
    /// `ids` are consecutive from `ids[0]`: an index's id is one addition.
    consecutive: bool,
}

impl Table {
    /// `indexes` (into `ids`, or `NO_BACKEND`) read through `ids`.
    pub fn new(indexes: std::sync::Arc<Vec<u32>>, ids: &[u32]) -> Table {
        let base = ids.first().copied().unwrap_or(0);
        let consecutive = ids
            .iter()
            .enumerate()
            .all(|(i, &id)| id.checked_sub(base) == Some(i as u32));
        Table {
            indexes,
            ids: ids.into(),
            consecutive,
        }
    }

    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// The id of one index (`NO_BACKEND` stays).
    #[inline]
    pub fn id(&self, index: u32) -> u32 {
        if index == NO_BACKEND {
            index
        } else if self.consecutive {
            index + self.ids[0]
        } else {
            self.ids[index as usize]
        }
    }

    /// The slots' indexes (see [`Table::id`]), in memory once for all the services that
    /// share them.
    pub fn indexes(&self) -> &[u32] {
        &self.indexes
    }

    /// The backend id in `slot`.
    pub fn get(&self, slot: usize) -> Option<u32> {
        self.indexes.get(slot).map(|&i| self.id(i))
    }

    /// The backend id of every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.indexes.iter().map(|&i| self.id(i))
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    #[cfg(test)]
    pub fn contains(&self, id: u32) -> bool {
        self.iter().any(|x| x == id)
    }

    /// Whether both are the same table in memory (one was taken from the other).
    pub fn same(&self, other: &Table) -> bool {
        std::sync::Arc::ptr_eq(&self.indexes, &other.indexes)
            && std::sync::Arc::ptr_eq(&self.ids, &other.ids)
    }
}

/// Equal when every slot names the same backend id.
impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        self.same(other) || (self.len() == other.len() && self.iter().eq(other.iter()))
    }
}

impl Eq for Table {}

/// What `plan` reads to plan one service: its configuration (as health and runtime weights
/// left it), the MAC of each of its backends, and the connection-table timeouts.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSource {
    service: crate::config::Service,
    macs: Vec<Option<[u8; 6]>>,
    timeouts: (std::time::Duration, std::time::Duration),
}

impl ServiceSource {
    fn is(&self, svc: &crate::config::Service, macs: &MacTable, config: &Config) -> bool {
        self.timeouts == (config.conntrack.tcp_timeout, config.conntrack.udp_timeout)
            && self.service == *svc
            && svc
                .backends
                .iter()
                .zip(&self.macs)
                .all(|(b, m)| macs.get(&b.address) == m.as_ref())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBackend {
    pub id: u32,
    /// The service's name, shared by its backends (plans are cloned and dropped whole:
    /// 100,000 backends are then not 100,000 strings).
    pub service: std::sync::Arc<str>,
    pub address: IpAddr,
    /// The port the backend listens on (the service's, unless the backend sets one).
    pub port: u16,
    pub info: BackendInfo,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    pub services: Vec<PlannedService>,
    pub backends: Vec<PlannedBackend>,
}

/// Addresses the node tunnels from, per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelSources {
    pub v4: Option<std::net::Ipv4Addr>,
    pub v6: Option<std::net::Ipv6Addr>,
}

/// Lays out a configuration as map contents.
///
/// Ids are stable: a service keeps its id while its name stays, a backend keeps its id
/// while it stays in the same service (same address and port), so that connection-table
/// entries (which hold ids) keep meaning the same backend across reloads. New ones take
/// the lowest free id. A `dr` backend whose MAC is not known yet is planned inactive (it
/// takes no flows until its MAC is learnt).
pub fn plan(
    config: &Config,
    macs: &MacTable,
    tunnel: TunnelSources,
    previous: Option<&Plan>,
) -> Result<Plan> {
    if config.services.len() > MAX_SERVICES as usize {
        bail!(
            "{} services configured; this build holds at most {MAX_SERVICES}",
            config.services.len()
        );
    }
    let mut settings = Settings::default();
    if let Some(v4) = tunnel.v4 {
        settings.tunnel_src_v4 = u32::from_ne_bytes(v4.octets());
    }
    if let Some(v6) = tunnel.v6 {
        settings.tunnel_src_v6 = addr_words(IpAddr::V6(v6)).0;
    }
    settings.nat_enabled = config.services.iter().any(|s| {
        s.backends
            .iter()
            .any(|b| b.effective_forwarding(s) == Forwarding::Nat)
    }) as u32;
    settings.tcp_timeout_ns = config.conntrack.tcp_timeout.as_nanos() as u64;
    settings.udp_timeout_ns = config.conntrack.udp_timeout.as_nanos() as u64;
    let previous = previous.map(Previous::of);
    // Per service: the previous plan of it when its inputs are the same (taken as it is),
    // else the ids its backends had.
    let mut reused: Vec<Option<(&PlannedService, &[PlannedBackend])>> =
        Vec::with_capacity(config.services.len());
    let mut kept_ids: Vec<HashMap<(IpAddr, u16), u32>> = Vec::with_capacity(config.services.len());
    let mut reserved = Vec::new();
    for svc in &config.services {
        let before = previous.as_ref().and_then(|p| p.service(&svc.name));
        let same = before.filter(|(s, b)| {
            b.is_some()
                && s.source
                    .as_ref()
                    .is_some_and(|src| src.is(svc, macs, config))
        });
        if let Some((s, Some(b))) = same {
            reserved.extend(b.iter().map(|b| b.id));
            reused.push(Some((s, b)));
            kept_ids.push(HashMap::new());
            continue;
        }
        let ids: HashMap<(IpAddr, u16), u32> = match (&previous, before) {
            (_, Some((_, Some(b)))) => b.iter().map(|b| ((b.address, b.port), b.id)).collect(),
            (Some(p), _) => p.backend_ids(&svc.name),
            (None, _) => HashMap::new(),
        };
        reserved.extend(
            svc.backends
                .iter()
                .filter_map(|b| ids.get(&(b.address, b.port.unwrap_or(svc.port))).copied()),
        );
        reused.push(None);
        kept_ids.push(ids);
    }
    let old_services: HashMap<&str, u32> = previous.as_ref().map_or_else(HashMap::new, |p| {
        p.plan
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.info.id))
            .collect()
    });
    let mut service_ids = IdAllocator::new(
        config
            .services
            .iter()
            .filter_map(|s| old_services.get(s.name.as_str()).copied()),
        MAX_SERVICES,
    );
    let mut backend_ids = IdAllocator::new(reserved, MAX_BACKENDS);

    let mut services = Vec::with_capacity(config.services.len());
    let mut backends = Vec::with_capacity(config.services.iter().map(|s| s.backends.len()).sum());
    // Each service's table inputs (identity and effective weight per backend).
    let mut inputs: Vec<Vec<MaglevBackend>> = Vec::new();
    for ((svc, reuse), old_backends) in config.services.iter().zip(&reused).zip(&kept_ids) {
        if let Some((before, planned)) = reuse {
            // Same inputs: the same service, backends and table. Only the ACTIVE bit is
            // set again (health clears it after planning).
            let source = before.source.as_ref().expect("reused only with a source");
            services.push((*before).clone());
            backends.extend(planned.iter().zip(&source.macs).map(|(b, mac)| {
                let mut b = b.clone();
                let usable = b.info.forward != FORWARD_DR || mac.is_some();
                b.info.flags =
                    (b.info.flags & !BACKEND_ACTIVE) | if usable { BACKEND_ACTIVE } else { 0 };
                b
            }));
            inputs.push(Vec::new());
            continue;
        }
        let sid = match old_services.get(svc.name.as_str()) {
            Some(&id) => id,
            None => service_ids.next()?,
        };
        let name: std::sync::Arc<str> = svc.name.as_str().into();
        let mut ids = Vec::new();
        let mut maglev = Vec::new();
        let mut planned_macs = Vec::with_capacity(svc.backends.len());
        for b in &svc.backends {
            let port = b.port.unwrap_or(svc.port);
            let id = match old_backends.get(&(b.address, port)) {
                Some(&id) => id,
                None => backend_ids.next()?,
            };
            let forward = match b.effective_forwarding(svc) {
                Forwarding::Dr => FORWARD_DR,
                Forwarding::Tun => FORWARD_TUN,
                Forwarding::Nat => FORWARD_NAT,
                Forwarding::Local => FORWARD_LOCAL,
            };
            let (addr, family) = addr_words(b.address);
            let mac = macs.get(&b.address).copied();
            planned_macs.push(mac);
            // dr needs the backend's MAC; the other modes find their next hop per packet.
            let usable = forward != FORWARD_DR || mac.is_some();
            let nat_port = if forward == FORWARD_NAT && port != svc.port {
                port.to_be()
            } else {
                0
            };
            let info = BackendInfo {
                addr,
                mac: mac.unwrap_or_default(),
                family,
                forward,
                flags: if usable { BACKEND_ACTIVE } else { 0 },
                _pad: 0,
                port: nat_port,
                weight: if usable { b.weight } else { 0 },
            };
            // A backend down (failing its check, or dr without a MAC yet) keeps its place
            // in an mh table, at the weight it would have, and its slots are handed over.
            maglev.push(
                MaglevBackend::new(b.address, port, b.weight.max(b.failed_weight))
                    .with_up(usable && b.weight > 0),
            );
            ids.push(id);
            backends.push(PlannedBackend {
                id,
                service: name.clone(),
                address: b.address,
                port,
                info,
            });
        }
        services.push(PlannedService {
            name: svc.name.clone(),
            key: ServiceKey::new(svc.vip, svc.port, svc.protocol.ip_proto()),
            info: ServiceInfo {
                id: sid,
                table_size: 0,
                persistence_secs: svc.persistence.as_secs_f64().ceil() as u32,
                idle_timeout_ns: match svc.protocol {
                    Protocol::Tcp => config.conntrack.tcp_timeout,
                    Protocol::Udp => config.conntrack.udp_timeout,
                }
                .as_nanos() as u64,
                scheduler: tables::code(svc.scheduler),
                _pad: [0; 7],
            },
            table: Default::default(),
            backends: ids,
            table_source: None,
            source: Some(std::sync::Arc::new(ServiceSource {
                service: svc.clone(),
                macs: planned_macs,
                timeouts: (config.conntrack.tcp_timeout, config.conntrack.udp_timeout),
            })),
        });
        inputs.push(maglev);
    }
    let fresh: Vec<bool> = reused.iter().map(Option::is_none).collect();
    fill_tables(
        config,
        &mut services,
        &inputs,
        &fresh,
        previous.as_ref().map(|p| p.plan),
    )?;
    Ok(Plan {
        settings,
        services,
        backends,
    })
}

/// Builds every service's lookup table. A service whose table inputs are those of the
/// previous plan gets the previous table back (a reload that changes one service builds
/// one table). Services with the same inputs (scheduler, size, and the same backends in
/// the same order, with the same weights and health: the VIPs and ports of one pool) share
/// one build of the table of indexes, each reading it through its own ids ([`Table`]). The
/// builds run on all cores: at 1,000 distinct 65,537-slot tables they are most of a load.
fn fill_tables(
    config: &Config,
    services: &mut [PlannedService],
    inputs: &[Vec<MaglevBackend>],
    fresh: &[bool],
    previous: Option<&Plan>,
) -> Result<()> {
    let reusable: HashMap<&str, (u64, &Table)> = previous.map_or_else(HashMap::new, |p| {
        p.services
            .iter()
            .filter_map(|s| Some((s.name.as_str(), (s.table_source?, &s.table))))
            .collect()
    });
    // Tables to build, one per distinct input, and which one each service takes.
    let mut builds: Vec<usize> = Vec::new();
    let mut by_input: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut takes: Vec<Option<usize>> = vec![None; services.len()];
    for (i, p) in services.iter_mut().enumerate().filter(|(i, _)| fresh[*i]) {
        let svc = &config.services[i];
        let input = input_digest(svc, &inputs[i]);
        let source = table_source(input, &p.backends);
        p.table_source = Some(source);
        if let Some((_, table)) = reusable.get(p.name.as_str()).filter(|(s, _)| *s == source) {
            p.table = Table::clone(table);
            p.info.table_size = p.table.len() as u32;
            continue;
        }
        let same = |j: &usize| {
            let other = &config.services[builds[*j]];
            (other.scheduler, other.maglev_table_size) == (svc.scheduler, svc.maglev_table_size)
                && inputs[builds[*j]] == inputs[i]
        };
        let candidates = by_input.entry(input).or_default();
        takes[i] = Some(match candidates.iter().find(|j| same(j)) {
            Some(&j) => j,
            None => {
                builds.push(i);
                candidates.push(builds.len() - 1);
                builds.len() - 1
            }
        });
    }
    let built: Vec<std::sync::Arc<Vec<u32>>> = crate::util::cores::map(&builds, 0, |&i| {
        let svc = &config.services[i];
        tables::build(svc.scheduler, &inputs[i], svc.maglev_table_size)
            .map(std::sync::Arc::new)
            .with_context(|| format!("service {}", svc.name))
    })
    .into_iter()
    .collect::<Result<_>>()?;
    for (i, b) in takes.iter().enumerate() {
        if let Some(b) = *b {
            let table = Table::new(std::sync::Arc::clone(&built[b]), &services[i].backends);
            services[i].info.table_size = table.len() as u32;
            services[i].table = table;
        }
    }
    Ok(())
}

/// The digest of what a table of indexes is built from: scheduler, size, and each
/// backend's identity, weight and health, in order.
fn input_digest(svc: &crate::config::Service, inputs: &[MaglevBackend]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tables::code(svc.scheduler).hash(&mut h);
    svc.maglev_table_size.hash(&mut h);
    for b in inputs {
        b.key.hash(&mut h);
        b.weight.hash(&mut h);
        b.up.hash(&mut h);
    }
    h.finish()
}

/// The digest of a service's table inputs (see `PlannedService::table_source`): those of
/// its table of indexes (`input_digest`) and the ids they map to.
fn table_source(input: u64, ids: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    ids.hash(&mut h);
    h.finish()
}

/// Hands out the lowest ids below `limit` not reserved (reserved = kept from the previous
/// plan).
struct IdAllocator {
    taken: Vec<bool>,
    cursor: u32,
    limit: u32,
}

impl IdAllocator {
    fn new(reserved: impl IntoIterator<Item = u32>, limit: u32) -> Self {
        let mut taken = vec![false; limit as usize];
        for id in reserved {
            if let Some(t) = taken.get_mut(id as usize) {
                *t = true;
            }
        }
        IdAllocator {
            taken,
            cursor: 0,
            limit,
        }
    }

    fn next(&mut self) -> Result<u32> {
        while self.taken.get(self.cursor as usize) == Some(&true) {
            self.cursor += 1;
        }
        let limit = self.limit;
        if self.cursor >= limit {
            bail!("more than {limit} ids needed; this build holds at most {limit}");
        }
        self.taken[self.cursor as usize] = true;
        Ok(self.cursor)
    }
}

/// The previous plan, indexed by service.
struct Previous<'p> {
    plan: &'p Plan,
    /// Each service's backends: the slice of `plan.backends` they are, when the plan lays
    /// them out service after service in order (what `plan` makes).
    services: HashMap<&'p str, (&'p PlannedService, Option<&'p [PlannedBackend]>)>,
    /// Otherwise (a plan of saved ids), every backend id by service, then address and port.
    all: HashMap<&'p str, HashMap<(IpAddr, u16), u32>>,
}

impl<'p> Previous<'p> {
    fn of(plan: &'p Plan) -> Self {
        let mut at = 0;
        let mut services = HashMap::with_capacity(plan.services.len());
        let mut laid_out = true;
        for s in &plan.services {
            let slice = plan.backends.get(at..at + s.backends.len());
            let fits = slice.is_some_and(|b| b.iter().map(|b| b.id).eq(s.backends.iter().copied()));
            laid_out &= fits;
            services.insert(s.name.as_str(), (s, slice.filter(|_| fits)));
            at += s.backends.len();
        }
        laid_out &= at == plan.backends.len();
        if !laid_out {
            services.values_mut().for_each(|(_, slice)| *slice = None);
        }
        let mut all: HashMap<&str, HashMap<(IpAddr, u16), u32>> = HashMap::new();
        if !laid_out {
            for b in &plan.backends {
                all.entry(&*b.service)
                    .or_default()
                    .insert((b.address, b.port), b.id);
            }
        }
        Previous {
            plan,
            services,
            all,
        }
    }

    fn service(&self, name: &str) -> Option<(&'p PlannedService, Option<&'p [PlannedBackend]>)> {
        self.services.get(name).copied()
    }

    /// The ids of `service`'s backends in a plan not laid out by service.
    fn backend_ids(&self, service: &str) -> HashMap<(IpAddr, u16), u32> {
        self.all.get(service).cloned().unwrap_or_default()
    }
}

/// A node-independent fingerprint of each service's Maglev table (in the order of
/// `plan.services`): the hash of the backend address and port in every slot (ids differ
/// between nodes, addresses do not). The addresses are written out once for the whole plan
/// (once per service made `bascule check` quadratic: a minute at 1,000 x 100).
pub fn table_digests(plan: &Plan) -> Vec<u64> {
    let names: HashMap<u32, String> = plan
        .backends
        .iter()
        .map(|b| (b.id, b.address.to_string()))
        .collect();
    let mut bytes = Vec::new();
    plan.services
        .iter()
        .map(|svc| {
            bytes.clear();
            for id in svc.table.iter() {
                bytes.extend_from_slice(names.get(&id).map_or("-", String::as_str).as_bytes());
                bytes.push(b',');
            }
            lb_common::maglev::stable_hash(&bytes)
        })
        .collect()
}

/// The backend a new flow gets: the same computation as the datapath's (flow hash, then
/// the service's Maglev slot), for `bascule simulate` and for tests that predict the
/// datapath's choice. Returns the service and the backend id, if any.
pub fn predict<'a>(plan: &'a Plan, flow: &lb_common::FlowKey) -> Option<(&'a PlannedService, u32)> {
    let exact = ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    let any_port = ServiceKey { port: 0, ..exact };
    let svc = plan
        .services
        .iter()
        .find(|s| s.key == exact)
        .or_else(|| plan.services.iter().find(|s| s.key == any_port))?;
    let ports = lb_common::hash::ports_word(flow.sport, flow.dport);
    let hash = lb_common::hash::flow_hash(&flow.src, &flow.dst, ports, flow.proto);
    let id = svc.table.get((hash % svc.info.table_size) as usize)?;
    (id != NO_BACKEND).then_some((svc, id))
}

/// Each service's slot of `SERVICE_ENTRIES` (by id): its key and info, and whether it is
/// an all-ports service that port services of the same VIP and protocol shadow (see
/// `lb_common::ServiceEntry`).
pub fn service_entries(services: &[PlannedService]) -> Vec<(u32, lb_common::ServiceEntry)> {
    let with_ports: std::collections::HashSet<(u8, [u32; 4], u8)> = services
        .iter()
        .filter(|s| s.key.port != 0)
        .map(|s| (s.key.family, s.key.addr, s.key.proto))
        .collect();
    services
        .iter()
        .map(|s| {
            let shadowed =
                s.key.port == 0 && with_ports.contains(&(s.key.family, s.key.addr, s.key.proto));
            let entry = lb_common::ServiceEntry {
                key: s.key,
                shadowed: u32::from(shadowed),
                _pad: 0,
                info: s.info,
            };
            (s.info.id, entry)
        })
        .collect()
}

/// What to write to `SERVICE_ENTRIES` when `now` replaces `before`: the slots whose entry
/// changed, and cleared ones for the ids no service has any more. With nothing before
/// (a daemon's first write), every unplanned id is cleared: adopted maps may hold a
/// previous daemon's slots.
pub fn service_slot_writes(
    now: &[PlannedService],
    before: &[PlannedService],
) -> Vec<(u32, lb_common::ServiceEntry)> {
    let old: HashMap<u32, lb_common::ServiceEntry> = service_entries(before).into_iter().collect();
    let new: std::collections::BTreeMap<u32, lb_common::ServiceEntry> =
        service_entries(now).into_iter().collect();
    let gone: Vec<u32> = if before.is_empty() {
        (0..MAX_SERVICES).collect()
    } else {
        old.keys().copied().collect()
    };
    let mut writes: std::collections::BTreeMap<u32, lb_common::ServiceEntry> = gone
        .into_iter()
        .filter(|id| !new.contains_key(id))
        .map(|id| (id, lb_common::ServiceEntry::default()))
        .collect();
    writes.extend(new.into_iter().filter(|(id, e)| old.get(id) != Some(e)));
    writes.into_iter().collect()
}

/// The start of both test modules' configurations: the node and a `web` service.
#[cfg(test)]
macro_rules! web_yaml {
    () => {
        r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    maglev_table_size: 251
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 3
"#
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = concat!(
        web_yaml!(),
        r#"  - name: tunnelled
    vip: 2001:db8::100
    port: 0
    protocol: udp
    forwarding: tun
    backends:
      - address: 2001:db8::11
"#
    );

    fn config() -> Config {
        Config::parse(YAML, "test.yaml").expect("valid config")
    }

    #[test]
    fn service_slots_written_are_the_changed_and_the_cleared() {
        let p = plan(&config(), &MacTable::new(), TunnelSources::default(), None).unwrap();
        let entries = service_entries(&p.services);
        let entry = |name: &str| {
            let svc = p.services.iter().find(|s| s.name == name).unwrap();
            entries.iter().find(|(id, _)| *id == svc.info.id).unwrap().1
        };
        let id = |name: &str| entry(name).info.id;
        // The first write: both services, and every other id cleared.
        let first = service_slot_writes(&p.services, &[]);
        assert_eq!(first.len(), MAX_SERVICES as usize);
        for (slot, e) in &first {
            let planned = p.services.iter().find(|s| s.info.id == *slot);
            assert_eq!(
                *e,
                planned.map_or_else(Default::default, |s| entry(&s.name))
            );
        }
        // Nothing changed: nothing written.
        assert!(service_slot_writes(&p.services, &p.services).is_empty());
        // One service gone, the other changed: its new entry, and the gone one cleared.
        let mut changed = p.services.clone();
        changed.retain(|s| s.name == "web");
        changed[0].info.idle_timeout_ns += 1;
        let expected_web = lb_common::ServiceEntry {
            info: changed[0].info,
            ..entry("web")
        };
        let mut want = vec![
            (id("web"), expected_web),
            (id("tunnelled"), lb_common::ServiceEntry::default()),
        ];
        want.sort_by_key(|(slot, _)| *slot);
        assert_eq!(service_slot_writes(&changed, &p.services), want);
    }

    #[test]
    fn an_all_ports_service_is_shadowed_by_port_services_of_its_vip_and_protocol() {
        let yaml = concat!(
            web_yaml!(),
            r#"  - name: any
    vip: 10.0.0.100
    port: 0
    backends: [{ address: 10.0.0.13 }]
  - name: any-udp
    vip: 10.0.0.100
    port: 0
    protocol: udp
    backends: [{ address: 10.0.0.13 }]
  - name: other
    vip: 10.0.0.101
    port: 0
    backends: [{ address: 10.0.0.13 }]
"#
        );
        let config = Config::parse(yaml, "test.yaml").expect("valid config");
        let p = plan(&config, &MacTable::new(), TunnelSources::default(), None).unwrap();
        let entries = service_entries(&p.services);
        let shadowed: Vec<(&str, u32)> = p
            .services
            .iter()
            .zip(&entries)
            .map(|(s, (id, e))| {
                assert_eq!((*id, e.key, e.info), (s.info.id, s.key, s.info));
                (s.name.as_str(), e.shadowed)
            })
            .collect();
        // `web` (TCP port 80) shadows `any` only: not the UDP one, not another VIP's.
        assert_eq!(
            shadowed,
            [("web", 0), ("any", 1), ("any-udp", 0), ("other", 0)]
        );
    }

    #[test]
    fn ids_tables_and_keys() {
        let mut macs = MacTable::new();
        macs.insert("10.0.0.11".parse().unwrap(), [2, 0, 0, 0, 0, 0x11]);
        macs.insert("10.0.0.12".parse().unwrap(), [2, 0, 0, 0, 0, 0x12]);
        let p = plan(
            &config(),
            &macs,
            TunnelSources {
                v4: None,
                v6: Some("2001:db8::2".parse().unwrap()),
            },
            None,
        )
        .unwrap();
        assert_eq!(p.services.len(), 2);
        assert_eq!(
            p.services[0].key,
            ServiceKey::new("10.0.0.100".parse().unwrap(), 80, 6)
        );
        assert_eq!(p.services[0].table.len(), 251);
        let ones = p.services[0].table.iter().filter(|&b| b == 0).count();
        let threes = p.services[0].table.iter().filter(|&b| b == 1).count();
        assert!(
            threes > 2 * ones,
            "weight 3 backend holds {threes} slots, weight 1 holds {ones}"
        );
        assert_eq!(p.services[1].key.port, 0);
        assert_eq!(p.services[1].table.len(), 65537);
        assert!(p.services[1].table.iter().all(|b| b == 2));
        assert_eq!(p.backends[2].info.forward, FORWARD_TUN);
        assert_eq!(p.backends[0].info.mac, [2, 0, 0, 0, 0, 0x11]);
        assert_ne!(p.settings.tunnel_src_v6, [0; 4]);
    }

    #[test]
    fn dr_backend_without_mac_takes_no_flows() {
        let mut macs = MacTable::new();
        macs.insert("10.0.0.12".parse().unwrap(), [2, 0, 0, 0, 0, 0x12]);
        let p = plan(&config(), &macs, TunnelSources::default(), None).unwrap();
        assert_eq!(p.backends[0].info.flags & BACKEND_ACTIVE, 0);
        assert!(p.services[0].table.iter().all(|b| b == 1));
    }

    #[test]
    fn ids_survive_a_reload_that_adds_and_removes() {
        let macs: MacTable = ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
            .iter()
            .map(|a| (a.parse().unwrap(), [2, 0, 0, 0, 0, 1]))
            .collect();
        let first = plan(&config(), &macs, TunnelSources::default(), None).unwrap();
        // Drop service "web"'s first backend, add one, and put a new service in front.
        let yaml = YAML
            .replace("      - address: 10.0.0.11\n", "      - address: 10.0.0.13\n")
            .replace("services:\n", "services:\n  - name: new\n    vip: 10.0.0.200\n    port: 80\n    backends: [{ address: 10.0.0.12 }]\n");
        let cfg = Config::parse(&yaml, "t.yaml").unwrap();
        let second = plan(&cfg, &macs, TunnelSources::default(), Some(&first)).unwrap();
        let id = |p: &Plan, svc: &str, addr: &str| {
            p.backends
                .iter()
                .find(|b| &*b.service == svc && b.address.to_string() == addr)
                .map(|b| b.id)
        };
        let sid = |p: &Plan, svc: &str| p.services.iter().find(|s| s.name == svc).unwrap().info.id;
        assert_eq!(sid(&first, "web"), sid(&second, "web"));
        assert_eq!(sid(&first, "tunnelled"), sid(&second, "tunnelled"));
        assert_eq!(
            id(&first, "web", "10.0.0.12"),
            id(&second, "web", "10.0.0.12")
        );
        assert_eq!(
            id(&first, "tunnelled", "2001:db8::11"),
            id(&second, "tunnelled", "2001:db8::11")
        );
        // The freed id of 10.0.0.11 is reused by one of the newcomers, none collides.
        let mut all: Vec<u32> = second.backends.iter().map(|b| b.id).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), second.backends.len());
        assert_eq!(second.services.iter().map(|s| s.info.id).max(), Some(2));
    }

    #[test]
    fn same_config_same_tables() {
        let macs = MacTable::new();
        let a = plan(&config(), &macs, TunnelSources::default(), None).unwrap();
        let b = plan(&config(), &macs, TunnelSources::default(), None).unwrap();
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;

    const YAML: &str = concat!(
        web_yaml!(),
        r#"  - name: routed
    vip: 10.0.0.101
    port: 80
    forwarding: tun
    scheduler: wrr
    backends:
      - address: 10.0.1.11
      - address: 10.0.1.12
        weight: 2
  - name: nat
    vip: 10.0.0.102
    port: 80
    forwarding: nat
    maglev_table_size: 1009
    backends:
      - address: 10.0.2.11
        port: 8080
      - address: 10.0.2.12
  - name: gone
    vip: 10.0.0.103
    port: 80
    forwarding: tun
    maglev_table_size: 251
    backends: [{ address: 10.0.3.11 }]
"#
    );

    fn without_sources(p: &Plan) -> Plan {
        let mut p = p.clone();
        p.services.iter_mut().for_each(|s| s.source = None);
        p
    }

    /// A re-plan from `previous`, checked equal to a full one (no service taken over).
    fn replan(cfg: &Config, macs: &MacTable, previous: &Plan) -> Plan {
        let tunnel = TunnelSources::default();
        let reusing = plan(cfg, macs, tunnel, Some(previous)).unwrap();
        let full = plan(cfg, macs, tunnel, Some(&without_sources(previous))).unwrap();
        assert_eq!(reusing, full);
        reusing
    }

    fn find<'p>(p: &'p Plan, name: &str) -> &'p PlannedService {
        p.services.iter().find(|s| s.name == name).unwrap()
    }

    fn reused(a: &Plan, b: &Plan, name: &str) -> bool {
        let (x, y) = (find(a, name), find(b, name));
        std::sync::Arc::ptr_eq(x.source.as_ref().unwrap(), y.source.as_ref().unwrap())
    }

    #[test]
    fn a_replan_takes_unchanged_services_as_they_are_and_equals_a_full_one() {
        let mac = |a: &str, m: u8| (a.parse().unwrap(), [2, 0, 0, 0, 0, m]);
        let macs: MacTable = [mac("10.0.0.11", 1), mac("10.0.0.12", 2)].into();
        let cfg = Config::parse(YAML, "t.yaml").unwrap();
        let mut first = plan(&cfg, &macs, TunnelSources::default(), None).unwrap();
        // Health cleared a backend's ACTIVE bit after planning: a reuse sets it again.
        let routed_first = first.services[1].backends[0];
        first
            .backends
            .iter_mut()
            .find(|b| b.id == routed_first)
            .unwrap()
            .info
            .flags = 0;
        // "nat" loses a backend, "gone" leaves, "new" arrives; nothing else changes.
        let yaml = YAML.replace("      - address: 10.0.2.12\n", "").replace(
            "  - name: gone\n    vip: 10.0.0.103",
            "  - name: new\n    vip: 10.0.0.104",
        );
        let cfg2 = Config::parse(&yaml, "t.yaml").unwrap();
        let second = replan(&cfg2, &macs, &first);
        assert!(reused(&first, &second, "web"));
        assert!(reused(&first, &second, "routed"));
        assert!(!reused(&first, &second, "nat"));
        let active = |p: &Plan, id: u32| {
            p.backends.iter().find(|b| b.id == id).unwrap().info.flags & BACKEND_ACTIVE != 0
        };
        assert!(active(&second, routed_first));
        // The new service's backend takes the id "gone" and "nat" freed, no id collides.
        let mut ids: Vec<u32> = second.backends.iter().map(|b| b.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), second.backends.len());

        // A MAC that changes re-plans the services that use it, only them.
        let macs2: MacTable = [mac("10.0.0.11", 1), mac("10.0.0.12", 9)].into();
        let third = replan(&cfg2, &macs2, &second);
        assert!(!reused(&second, &third, "web"));
        assert!(reused(&second, &third, "routed"));
        let web12 = third
            .backends
            .iter()
            .find(|b| b.address.to_string() == "10.0.0.12")
            .unwrap();
        assert_eq!(web12.info.mac, [2, 0, 0, 0, 0, 9]);

        // A weight change (as health or an operator sets it) re-plans that service.
        let mut cfg3 = cfg2.clone();
        cfg3.services[1].backends[0].weight = 0;
        let fourth = replan(&cfg3, &macs2, &third);
        assert!(!reused(&third, &fourth, "routed"));
        assert!(reused(&third, &fourth, "web"));
    }

    #[test]
    fn services_of_one_pool_share_a_build_and_keep_their_own_ids() {
        // Four services: p, q and r list the same pool (r in another order), s gives one
        // backend another weight. Each table must be the one built for that service alone.
        let service = |name: &str, vip: &str, backends: &str| {
            format!(
                "  - name: {name}\n    vip: {vip}\n    port: 80\n    forwarding: tun\n    backends:\n{backends}"
            )
        };
        let pool =
            "      - address: 10.1.0.1\n      - address: 10.1.0.2\n      - address: 10.1.0.3\n";
        let reordered =
            "      - address: 10.1.0.3\n      - address: 10.1.0.1\n      - address: 10.1.0.2\n";
        let weighted = "      - address: 10.1.0.1\n        weight: 3\n      - address: 10.1.0.2\n      - address: 10.1.0.3\n";
        let yaml = format!(
            "node:\n  interfaces: [{{name: eth0}}]\nservices:\n{}{}{}{}",
            service("p", "10.0.0.1", pool),
            service("q", "10.0.0.2", pool),
            service("r", "10.0.0.3", reordered),
            service("s", "10.0.0.4", weighted),
        );
        let cfg = Config::parse(&yaml, "t.yaml").unwrap();
        let p = plan(&cfg, &MacTable::new(), TunnelSources::default(), None).unwrap();
        for (svc, planned) in cfg.services.iter().zip(&p.services) {
            let inputs: Vec<MaglevBackend> = svc
                .backends
                .iter()
                .map(|b| MaglevBackend::new(b.address, 80, b.weight))
                .collect();
            let alone = tables::build(svc.scheduler, &inputs, svc.maglev_table_size).unwrap();
            assert_eq!(
                planned.table.to_vec(),
                to_ids(&alone, &planned.backends),
                "service {}",
                svc.name
            );
        }
        // Own ids: no two services name the same backend id.
        let ids =
            |i: usize| -> std::collections::BTreeSet<u32> { p.services[i].table.iter().collect() };
        assert!(ids(0).is_disjoint(&ids(1)));
        assert_eq!(ids(0).len(), 3);
        // One table of indexes in memory for the pool's two services; not for the others.
        let indexes = |i: usize| p.services[i].table.indexes().as_ptr();
        assert_eq!(indexes(0), indexes(1));
        assert_ne!(indexes(0), indexes(2));
        assert_ne!(indexes(0), indexes(3));
        assert_ne!(p.services[0].table_source, p.services[1].table_source);
    }

    fn to_ids(table: &[u32], ids: &[u32]) -> Vec<u32> {
        Table::new(std::sync::Arc::new(table.to_vec()), ids).to_vec()
    }

    #[test]
    fn table_indexes_become_ids() {
        let table = vec![0, 2, NO_BACKEND, 1];
        assert_eq!(to_ids(&table, &[7, 8, 9]), vec![7, 9, NO_BACKEND, 8]);
        assert_eq!(to_ids(&table, &[7, 3, 9]), vec![7, 9, NO_BACKEND, 3]);
    }

    #[test]
    fn a_plan_of_saved_ids_keeps_them() {
        let cfg = Config::parse(YAML, "t.yaml").unwrap();
        let first = plan(&cfg, &MacTable::new(), TunnelSources::default(), None).unwrap();
        // What the state file gives back: ids only, backends not laid out by service.
        let mut ids = without_sources(&first);
        ids.services.iter_mut().for_each(|s| s.backends.clear());
        ids.backends.reverse();
        // In another order: planned afresh, "gone" would take the first ids.
        let mut reversed = cfg.clone();
        reversed.services.reverse();
        let again = plan(
            &reversed,
            &MacTable::new(),
            TunnelSources::default(),
            Some(&ids),
        )
        .unwrap();
        let id_of =
            |p: &Plan, addr: IpAddr| p.backends.iter().find(|b| b.address == addr).unwrap().id;
        for b in &first.backends {
            assert_eq!(id_of(&again, b.address), b.id);
        }
        for s in &first.services {
            assert_eq!(find(&again, &s.name).info.id, s.info.id);
        }
    }
}
