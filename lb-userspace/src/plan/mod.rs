//! What the datapath maps must hold for a configuration: pure data, computed without
//! root or sockets, so it can be tested and diffed. The datapath (`datapath::Datapath`)
//! writes a `Plan` into the maps.
//!
//! | module | what |
//! |---|---|
//! | this one | the plan's types, and [`plan`]: a configuration laid out as map contents |
//! | `ids` | stable ids: what a plan keeps of the previous one, the lowest free ids |
//! | [`tables`] | each scheduler's lookup table, the shared [`Table`], a plan's tables filled |
//! | `slots` | the `SERVICE_ENTRIES` slots a plan holds and a new plan changes |
//! | `predict` | which service and backend a flow gets, as the datapath computes it |
//! | `digest` | a node-independent digest of each service's table (`bascule check`) |

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use anyhow::{bail, Result};
use lb_common::{
    addr_words, maglev::MaglevBackend, BackendInfo, ServiceInfo, ServiceKey, Settings,
    BACKEND_ACTIVE, FORWARD_DR, FORWARD_LOCAL, FORWARD_NAT, FORWARD_TUN, MAX_BACKENDS,
    MAX_SERVICES,
};

use crate::config::{Backend, Config, Forwarding, Protocol, Service};
use ids::{IdAllocator, Kept, Previous};

mod digest;
mod ids;
mod predict;
mod slots;
pub mod tables;
#[cfg(test)]
mod tests;

pub use digest::table_digests;
pub use predict::{predict, service_for};
pub use slots::{service_entries, service_slot_writes};
pub use tables::Table;

/// MAC addresses of `dr` backends, learnt from the neighbour table.
pub type MacTable = HashMap<IpAddr, [u8; 6]>;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    pub name: String,
    /// The service's first (address, port, protocol): `vip` and `port`.
    pub key: ServiceKey,
    /// Its other (address, port) pairs (`vips`, `ports`), each a key of the service maps
    /// naming the same service.
    pub more_keys: Vec<ServiceKey>,
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
    pub source: Option<Arc<ServiceSource>>,
}

/// What `plan` reads to plan one service: its configuration (as health and runtime weights
/// left it), the MAC of each of its backends, and the connection-table timeouts.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSource {
    service: Service,
    macs: Vec<Option<[u8; 6]>>,
    timeouts: (std::time::Duration, std::time::Duration),
}

impl ServiceSource {
    fn is(&self, svc: &Service, macs: &MacTable, config: &Config) -> bool {
        self.timeouts == (config.conntrack.tcp_timeout, config.conntrack.udp_timeout)
            && self.service == *svc
            && svc
                .backends
                .iter()
                .zip(&self.macs)
                .all(|(b, m)| macs.get(&b.address) == m.as_ref())
    }
}

impl PlannedService {
    /// Every key of the service maps that names this service: `key`, then `more_keys`.
    pub fn keys(&self) -> impl Iterator<Item = &ServiceKey> {
        std::iter::once(&self.key).chain(&self.more_keys)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBackend {
    pub id: u32,
    /// The service's name, shared by its backends (plans are cloned and dropped whole:
    /// 100,000 backends are then not 100,000 strings).
    pub service: Arc<str>,
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
    let previous = previous.map(Previous::of);
    let Kept {
        reused,
        ids: kept_ids,
        reserved,
    } = Kept::of(config, macs, previous.as_ref());
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
            // Same inputs: the same service, backends and table.
            services.push((*before).clone());
            backends.extend(reactivated(before, planned));
            inputs.push(Vec::new());
            continue;
        }
        let id = match old_services.get(svc.name.as_str()) {
            Some(&id) => id,
            None => service_ids.next()?,
        };
        let (service, planned, maglev) =
            plan_service(config, svc, id, macs, old_backends, &mut backend_ids)?;
        services.push(service);
        backends.extend(planned);
        inputs.push(maglev);
    }
    let fresh: Vec<bool> = reused.iter().map(Option::is_none).collect();
    tables::fill_tables(
        config,
        &mut services,
        &inputs,
        &fresh,
        previous.as_ref().map(|p| p.plan),
    )?;
    Ok(Plan {
        settings: settings(config, tunnel),
        services,
        backends,
    })
}

/// The node's settings: where tunnels start, whether any backend is `nat`, the idle
/// timeouts.
fn settings(config: &Config, tunnel: TunnelSources) -> Settings {
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
    settings.sync_enabled = config.sync.is_some() as u32;
    settings.flood_protection = config.conntrack.flood_protection as u32;
    let rate = u64::from(config.node.icmp_echo_rate);
    if let Some(interval) = 1_000_000_000u64.checked_div(rate) {
        let burst = (rate / 10).max(1);
        settings.icmp_echo_interval_ns = interval;
        settings.icmp_echo_burst_ns = (burst - 1) * interval;
    }
    settings
}

/// The backends of a service taken as it was planned: only their ACTIVE bit is set again
/// (health clears it after planning), from the MACs the service was planned with.
fn reactivated<'p>(
    before: &'p PlannedService,
    planned: &'p [PlannedBackend],
) -> impl Iterator<Item = PlannedBackend> + 'p {
    let source = before.source.as_ref().expect("reused only with a source");
    planned.iter().zip(&source.macs).map(|(b, mac)| {
        let mut b = b.clone();
        let usable = b.info.forward != FORWARD_DR || mac.is_some();
        b.info.flags = (b.info.flags & !BACKEND_ACTIVE) | if usable { BACKEND_ACTIVE } else { 0 };
        b
    })
}

/// One service planned afresh, with id `id`: its entry, its backends (each keeping its id
/// from `old_ids`, else taking the lowest free one) and its table's inputs.
fn plan_service(
    config: &Config,
    svc: &Service,
    id: u32,
    macs: &MacTable,
    old_ids: &HashMap<(IpAddr, u16), u32>,
    backend_ids: &mut IdAllocator,
) -> Result<(PlannedService, Vec<PlannedBackend>, Vec<MaglevBackend>)> {
    let name: Arc<str> = svc.name.as_str().into();
    let mut ids = Vec::new();
    let mut maglev = Vec::new();
    let mut planned_macs = Vec::with_capacity(svc.backends.len());
    let mut backends = Vec::with_capacity(svc.backends.len());
    for b in &svc.backends {
        let port = b.port.unwrap_or(svc.port);
        let id = match old_ids.get(&(b.address, port)) {
            Some(&id) => id,
            None => backend_ids.next()?,
        };
        let mac = macs.get(&b.address).copied();
        planned_macs.push(mac);
        let info = backend_info(svc, b, port, mac);
        let usable = info.flags & BACKEND_ACTIVE != 0;
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
    let proto = svc.protocol.ip_proto();
    let service = PlannedService {
        name: svc.name.clone(),
        key: ServiceKey::new(svc.vip, svc.port, proto),
        more_keys: svc
            .addresses()
            .flat_map(|a| svc.all_ports().map(move |p| ServiceKey::new(a, p, proto)))
            .skip(1)
            .collect(),
        info: ServiceInfo {
            id,
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
        source: Some(Arc::new(ServiceSource {
            service: svc.clone(),
            macs: planned_macs,
            timeouts: (config.conntrack.tcp_timeout, config.conntrack.udp_timeout),
        })),
    };
    Ok((service, backends, maglev))
}

/// A backend's entry in `BACKENDS`, at `port`. `dr` needs the backend's MAC (without it,
/// the backend is planned inactive, weight 0); the other modes find their next hop per
/// packet.
fn backend_info(svc: &Service, b: &Backend, port: u16, mac: Option<[u8; 6]>) -> BackendInfo {
    let forward = match b.effective_forwarding(svc) {
        Forwarding::Dr => FORWARD_DR,
        Forwarding::Tun => FORWARD_TUN,
        Forwarding::Nat => FORWARD_NAT,
        Forwarding::Local => FORWARD_LOCAL,
    };
    let (addr, family) = addr_words(b.address);
    let usable = forward != FORWARD_DR || mac.is_some();
    let nat_port = if forward == FORWARD_NAT && port != svc.port {
        port.to_be()
    } else {
        0
    };
    BackendInfo {
        addr,
        mac: mac.unwrap_or_default(),
        family,
        forward,
        flags: if usable { BACKEND_ACTIVE } else { 0 },
        _pad: 0,
        port: nat_port,
        weight: if usable { b.weight } else { 0 },
        max_conns: b.max_connections.unwrap_or(0),
        min_conns: b.effective_min_connections().unwrap_or(0),
    }
}
