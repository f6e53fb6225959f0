//! The plan seen by sync (pure): a report of this node's datapath named by addresses and
//! ports for the peers, and a peer's entry turned into this node's ids.

use std::{collections::HashMap, net::IpAddr};

use lb_common::{
    addr_words, words_addr, FlowEntry, FlowKey, FlowState, PersistKey, SyncReport, BACKEND_ACTIVE,
    FLOW_ACTIVE, FLOW_SYNCED, SYNC_END, SYNC_NEW, SYNC_REFRESH,
};

use super::wire::{Entry, Kind, Reject};
use crate::plan::Plan;

/// A service by what names it on every node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ServiceName {
    vip: IpAddr,
    port: u16,
    proto: u8,
}

#[derive(Clone, Copy, Debug)]
struct LocalBackend {
    id: u32,
    active: bool,
}

#[derive(Clone, Debug)]
struct LocalService {
    id: u32,
    persistence: bool,
    /// (address, port) -> backend.
    backends: HashMap<(IpAddr, u16), LocalBackend>,
}

/// The plan's services and backends by id (to name a report) and by name (to apply a
/// peer's entry).
#[derive(Clone, Debug, Default)]
pub struct Directory {
    names: HashMap<u32, ServiceName>,
    backend_names: HashMap<u32, (IpAddr, u16)>,
    services: HashMap<ServiceName, LocalService>,
}

/// A peer's entry as this node's connection table takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Apply {
    /// Insert (or replace) the flow's entry, and the client's persistence template.
    Insert {
        entry: FlowEntry,
        persist: Option<PersistKey>,
    },
    /// The flow ended: remove its entry.
    Remove { key: FlowKey },
}

impl Directory {
    pub fn of(plan: &Plan) -> Directory {
        let mut d = Directory::default();
        let backends: HashMap<u32, _> = plan.backends.iter().map(|b| (b.id, b)).collect();
        for s in &plan.services {
            let name = ServiceName {
                vip: words_addr(s.key.addr, s.key.family),
                port: u16::from_be(s.key.port),
                proto: s.key.proto,
            };
            d.names.insert(s.info.id, name);
            let mut local = LocalService {
                id: s.info.id,
                persistence: s.info.persistence_secs != 0,
                backends: HashMap::new(),
            };
            for id in &s.backends {
                let Some(b) = backends.get(id) else { continue };
                d.backend_names.insert(b.id, (b.address, b.port));
                local.backends.insert(
                    (b.address, b.port),
                    LocalBackend {
                        id: b.id,
                        active: b.info.flags & BACKEND_ACTIVE != 0,
                    },
                );
            }
            // A peer names a flow by its address and the service's port: every address
            // (and port) of a service with several.
            for k in s.more_keys.iter() {
                let also = ServiceName {
                    vip: words_addr(k.addr, k.family),
                    port: u16::from_be(k.port),
                    proto: k.proto,
                };
                d.services.insert(also, local.clone());
            }
            d.services.insert(name, local);
        }
        d
    }

    /// A report of this node's datapath as peers name it; `None` if its ids are no longer
    /// the plan's (a reload raced with the report).
    pub fn name(&self, r: &SyncReport) -> Option<Entry> {
        let service = self.names.get(&r.service)?;
        let &(backend, backend_port) = self.backend_names.get(&r.backend)?;
        let (words, _) = addr_words(backend);
        if words != r.backend_addr {
            return None;
        }
        let kind = match r.kind {
            // A refresh is written as a new entry: seen now, on every peer.
            SYNC_NEW | SYNC_REFRESH => Kind::New,
            SYNC_END => Kind::End,
            _ => return None,
        };
        Some(Entry {
            kind,
            proto: r.key.proto,
            active: r.flags & FLOW_ACTIVE != 0,
            client: words_addr(r.key.src, r.key.family),
            client_port: u16::from_be(r.key.sport),
            vip: words_addr(r.key.dst, r.key.family),
            port: u16::from_be(r.key.dport),
            service_port: service.port,
            backend,
            backend_port,
        })
    }

    /// A connection-table entry as peers name it (bulk sync); `None` if its ids are not
    /// the plan's.
    pub fn name_flow(&self, f: &FlowEntry) -> Option<Entry> {
        let &(backend, _) = self.backend_names.get(&f.state.backend)?;
        self.name(&SyncReport {
            key: f.key,
            backend_addr: addr_words(backend).0,
            service: f.state.service,
            backend: f.state.backend,
            kind: SYNC_NEW,
            flags: f.state.flags,
            ..SyncReport::default()
        })
    }

    /// A peer's entry in this node's ids, seen at `now` (the datapath's clock); or why it
    /// is ignored. Ends are applied whatever the backend's state.
    pub fn resolve(&self, e: &Entry, now: u64) -> Result<Apply, Reject> {
        let (src, family) = addr_words(e.client);
        let (dst, vip_family) = addr_words(e.vip);
        if family != vip_family {
            return Err(Reject::Malformed);
        }
        let key = FlowKey {
            src,
            dst,
            sport: e.client_port.to_be(),
            dport: e.port.to_be(),
            proto: e.proto,
            family,
            _pad: [0; 2],
        };
        if e.kind == Kind::End {
            return Ok(Apply::Remove { key });
        }
        let name = ServiceName {
            vip: e.vip,
            port: e.service_port,
            proto: e.proto,
        };
        let service = self.services.get(&name).ok_or(Reject::UnknownService)?;
        let backend = service
            .backends
            .get(&(e.backend, e.backend_port))
            .ok_or(Reject::UnknownBackend)?;
        if !backend.active {
            return Err(Reject::BackendDown);
        }
        let flags = FLOW_SYNCED | if e.active { FLOW_ACTIVE } else { 0 };
        Ok(Apply::Insert {
            entry: FlowEntry {
                key,
                state: FlowState {
                    backend: backend.id,
                    service: service.id,
                    last_seen: now,
                    flags,
                    seq: 0,
                },
            },
            persist: service.persistence.then_some(PersistKey {
                client: src,
                service: service.id,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, plan};

    const YAML: &str = "
node: { interfaces: [{ name: lo }] }
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    protocol: tcp
    scheduler: rr
    persistence: 5m
    backends:
      - { address: 10.0.1.11 }
      - { address: 10.0.1.12, weight: 0 }
  - name: all
    vip: 10.0.0.101
    port: 0
    protocol: tcp
    scheduler: rr
    backends: [{ address: 10.0.1.13 }]
";

    fn planned(yaml: &str) -> Plan {
        let config = Config::parse(yaml, "t.yaml").unwrap();
        let macs = ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
            .iter()
            .map(|a| (a.parse().unwrap(), [2, 0, 0, 0, 0, 1]))
            .collect();
        plan::plan(&config, &macs, Default::default(), None).unwrap()
    }

    fn entry(vip: &str, port: u16, service_port: u16, backend: &str) -> Entry {
        Entry {
            kind: Kind::New,
            proto: 6,
            active: true,
            client: "10.0.0.9".parse().unwrap(),
            client_port: 40_000,
            vip: vip.parse().unwrap(),
            port,
            service_port,
            backend: backend.parse().unwrap(),
            // The plan's port: the service's (0 for an all-ports one).
            backend_port: service_port,
        }
    }

    #[test]
    fn a_report_travels_by_name_and_lands_on_the_other_nodes_ids() {
        let here = planned(YAML);
        // The peer lists its services the other way round: other ids, same names.
        let mut reversed: Vec<&str> = YAML.split("  - name: ").collect();
        reversed.swap(1, 2);
        let there_yaml = format!(
            "{}  - name: {}  - name: {}",
            reversed[0], reversed[1], reversed[2]
        );
        let there = planned(&there_yaml);
        let web_here = here.services.iter().find(|s| s.name == "web").unwrap();
        let web_there = there.services.iter().find(|s| s.name == "web").unwrap();
        assert_ne!(web_here.info.id, web_there.info.id);
        let backend = web_here.backends[0];
        let flow = FlowKey::new(
            "10.0.0.9:40000".parse().unwrap(),
            "10.0.0.100:80".parse().unwrap(),
            6,
        );
        let report = SyncReport {
            key: flow,
            backend_addr: addr_words("10.0.1.11".parse().unwrap()).0,
            service: web_here.info.id,
            backend,
            kind: SYNC_NEW,
            flags: FLOW_ACTIVE,
            ..SyncReport::default()
        };
        let named = Directory::of(&here).name(&report).unwrap();
        assert_eq!(named, entry("10.0.0.100", 80, 80, "10.0.1.11"));
        // A refresh travels as a new entry (written again, seen now).
        let refresh = SyncReport {
            kind: lb_common::SYNC_REFRESH,
            ..report
        };
        assert_eq!(Directory::of(&here).name(&refresh), Some(named));
        // A table entry (bulk sync) the same way.
        let table_entry = FlowEntry {
            key: flow,
            state: FlowState {
                backend,
                service: web_here.info.id,
                last_seen: 1,
                flags: FLOW_ACTIVE,
                seq: 0,
            },
        };
        assert_eq!(Directory::of(&here).name_flow(&table_entry), Some(named));
        let Ok(Apply::Insert { entry: e, persist }) = Directory::of(&there).resolve(&named, 5)
        else {
            panic!("not applied");
        };
        assert_eq!(e.key, flow);
        assert_eq!(e.state.service, web_there.info.id);
        assert_eq!(e.state.backend, web_there.backends[0]);
        assert_eq!(e.state.flags, FLOW_ACTIVE | FLOW_SYNCED);
        assert_eq!(e.state.last_seen, 5);
        assert_eq!(persist.map(|p| p.service), Some(web_there.info.id));
    }

    #[test]
    fn unknown_services_and_backends_and_down_backends_are_refused() {
        let mut p = planned(YAML);
        let d = Directory::of(&p);
        let all = entry("10.0.0.101", 8080, 0, "10.0.1.13");
        assert!(matches!(d.resolve(&all, 1), Ok(Apply::Insert { .. })));
        assert_eq!(
            d.resolve(&entry("10.0.0.102", 80, 80, "10.0.1.11"), 1),
            Err(Reject::UnknownService)
        );
        assert_eq!(
            d.resolve(&entry("10.0.0.100", 80, 80, "10.0.1.99"), 1),
            Err(Reject::UnknownBackend)
        );
        // Down here (health clears the ACTIVE bit).
        for b in &mut p.backends {
            b.info.flags &= !BACKEND_ACTIVE;
        }
        assert_eq!(
            Directory::of(&p).resolve(&entry("10.0.0.100", 80, 80, "10.0.1.11"), 1),
            Err(Reject::BackendDown)
        );
        let end = Entry {
            kind: Kind::End,
            ..entry("10.0.0.102", 80, 80, "10.0.1.99")
        };
        assert!(matches!(d.resolve(&end, 1), Ok(Apply::Remove { .. })));
    }
}
