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

use crate::{
    config::{Config, Forwarding, Protocol},
    tables,
};

/// MAC addresses of `dr` backends, learnt from the neighbour table.
pub type MacTable = HashMap<IpAddr, [u8; 6]>;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedService {
    pub name: String,
    pub key: ServiceKey,
    pub info: ServiceInfo,
    /// Lookup table (see `tables`): slot -> backend id (`NO_BACKEND` when none). Shared:
    /// the plans the daemon keeps (applied, current, its status) hold one copy of each.
    pub table: std::sync::Arc<Vec<u32>>,
    /// Backend ids of this service, in config order.
    pub backends: Vec<u32>,
    /// Digest of everything `table` was built from (scheduler, size, each backend's
    /// identity, effective weight and id): equal digests mean equal tables, so a re-plan
    /// reuses the previous table instead of building it again, and the datapath keeps the
    /// table it has. `None` when unknown.
    pub table_source: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedBackend {
    pub id: u32,
    pub service: String,
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
    let old_services: HashMap<&str, u32> = previous.map_or_else(HashMap::new, |p| {
        p.services
            .iter()
            .map(|s| (s.name.as_str(), s.info.id))
            .collect()
    });
    let old_backends: HashMap<(&str, IpAddr, u16), u32> = previous.map_or_else(HashMap::new, |p| {
        p.backends
            .iter()
            .map(|b| ((b.service.as_str(), b.address, b.port), b.id))
            .collect()
    });
    let mut service_ids = IdAllocator::new(
        config
            .services
            .iter()
            .filter_map(|s| old_services.get(s.name.as_str()).copied()),
    );
    let mut backend_ids = IdAllocator::new(config.services.iter().flat_map(|s| {
        let old = &old_backends;
        s.backends.iter().filter_map(move |b| {
            old.get(&(s.name.as_str(), b.address, b.port.unwrap_or(s.port)))
                .copied()
        })
    }));

    let mut services = Vec::new();
    let mut backends = Vec::new();
    // Each service's table inputs (identity and effective weight per backend).
    let mut inputs: Vec<Vec<MaglevBackend>> = Vec::new();
    for svc in &config.services {
        let sid = match old_services.get(svc.name.as_str()) {
            Some(&id) => id,
            None => service_ids.next(MAX_SERVICES)?,
        };
        let mut ids = Vec::new();
        let mut maglev = Vec::new();
        for b in &svc.backends {
            let port = b.port.unwrap_or(svc.port);
            let id = match old_backends.get(&(svc.name.as_str(), b.address, port)) {
                Some(&id) => id,
                None => backend_ids.next(MAX_BACKENDS)?,
            };
            let forward = match b.effective_forwarding(svc) {
                Forwarding::Dr => FORWARD_DR,
                Forwarding::Tun => FORWARD_TUN,
                Forwarding::Nat => FORWARD_NAT,
                Forwarding::Local => FORWARD_LOCAL,
            };
            let (addr, family) = addr_words(b.address);
            let mac = macs.get(&b.address).copied();
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
                service: svc.name.clone(),
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
        });
        inputs.push(maglev);
    }
    fill_tables(config, &mut services, &inputs, previous)?;
    Ok(Plan {
        settings,
        services,
        backends,
    })
}

/// Builds every service's lookup table (on all cores: at 1,000 services of 65,537-slot
/// tables this is most of a load) and maps entries to backend ids. A service whose table
/// inputs are those of the previous plan gets the previous table back (a reload that
/// changes one service builds one table).
fn fill_tables(
    config: &Config,
    services: &mut [PlannedService],
    inputs: &[Vec<MaglevBackend>],
    previous: Option<&Plan>,
) -> Result<()> {
    let reusable: HashMap<&str, (u64, &std::sync::Arc<Vec<u32>>)> =
        previous.map_or_else(HashMap::new, |p| {
            p.services
                .iter()
                .filter_map(|s| Some((s.name.as_str(), (s.table_source?, &s.table))))
                .collect()
        });
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(services.len().max(1));
    let chunk = services.len().div_ceil(workers).max(1);
    let reusable = &reusable;
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let handles: Vec<_> = services
            .chunks_mut(chunk)
            .zip(inputs.chunks(chunk))
            .zip(config.services.chunks(chunk))
            .map(|((planned, maglev), configured)| {
                scope.spawn(move || {
                    for ((p, m), svc) in planned.iter_mut().zip(maglev).zip(configured) {
                        let source = table_source(svc, m, &p.backends);
                        p.table_source = Some(source);
                        if let Some((_, table)) =
                            reusable.get(p.name.as_str()).filter(|(s, _)| *s == source)
                        {
                            p.table = std::sync::Arc::clone(table);
                        } else {
                            let table = tables::build(svc.scheduler, m, svc.maglev_table_size)
                                .with_context(|| format!("service {}", svc.name))?;
                            p.table = std::sync::Arc::new(
                                table
                                    .into_iter()
                                    .map(|i| {
                                        if i == NO_BACKEND {
                                            NO_BACKEND
                                        } else {
                                            p.backends[i as usize]
                                        }
                                    })
                                    .collect(),
                            );
                        }
                        p.info.table_size = p.table.len() as u32;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("table builder panicked"))
            .collect()
    });
    results.into_iter().collect()
}

/// The digest of a service's table inputs (see `PlannedService::table_source`).
fn table_source(svc: &crate::config::Service, inputs: &[MaglevBackend], ids: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tables::code(svc.scheduler).hash(&mut h);
    svc.maglev_table_size.hash(&mut h);
    for (b, id) in inputs.iter().zip(ids) {
        b.key.hash(&mut h);
        b.weight.hash(&mut h);
        b.up.hash(&mut h);
        id.hash(&mut h);
    }
    h.finish()
}

/// Hands out the lowest ids not reserved (reserved = kept from the previous plan).
struct IdAllocator {
    taken: std::collections::BTreeSet<u32>,
    cursor: u32,
}

impl IdAllocator {
    fn new(reserved: impl IntoIterator<Item = u32>) -> Self {
        IdAllocator {
            taken: reserved.into_iter().collect(),
            cursor: 0,
        }
    }

    fn next(&mut self, limit: u32) -> Result<u32> {
        while self.taken.contains(&self.cursor) {
            self.cursor += 1;
        }
        if self.cursor >= limit {
            bail!("more than {limit} ids needed; this build holds at most {limit}");
        }
        self.taken.insert(self.cursor);
        Ok(self.cursor)
    }
}

/// A node-independent fingerprint of a service's Maglev table: the hash of the backend
/// address and port in every slot (ids differ between nodes, addresses do not).
pub fn table_digest(plan: &Plan, svc: &PlannedService) -> u64 {
    let names: HashMap<u32, String> = plan
        .backends
        .iter()
        .map(|b| (b.id, b.address.to_string()))
        .collect();
    let mut bytes = Vec::with_capacity(svc.table.len() * 12);
    for id in svc.table.iter() {
        bytes.extend_from_slice(names.get(id).map_or("-", String::as_str).as_bytes());
        bytes.push(b',');
    }
    lb_common::maglev::stable_hash(&bytes)
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
    let id = *svc.table.get((hash % svc.info.table_size) as usize)?;
    (id != NO_BACKEND).then_some((svc, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
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
  - name: tunnelled
    vip: 2001:db8::100
    port: 0
    protocol: udp
    forwarding: tun
    backends:
      - address: 2001:db8::11
"#;

    fn config() -> Config {
        Config::parse(YAML, "test.yaml").expect("valid config")
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
        let ones = p.services[0].table.iter().filter(|&&b| b == 0).count();
        let threes = p.services[0].table.iter().filter(|&&b| b == 1).count();
        assert!(
            threes > 2 * ones,
            "weight 3 backend holds {threes} slots, weight 1 holds {ones}"
        );
        assert_eq!(p.services[1].key.port, 0);
        assert_eq!(p.services[1].table.len(), 65537);
        assert!(p.services[1].table.iter().all(|&b| b == 2));
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
        assert!(p.services[0].table.iter().all(|&b| b == 1));
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
                .find(|b| b.service == svc && b.address.to_string() == addr)
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
