//! The plan's tests: ids, tables and keys of a plan, and re-plans that take the services
//! whose inputs did not change as they are.

use std::net::IpAddr;

use lb_common::{
    maglev::MaglevBackend, ServiceKey, BACKEND_ACTIVE, FORWARD_TUN, MAX_SERVICES, NO_BACKEND,
};

use super::{
    plan,
    slots::{service_entries, service_slot_writes},
    tables, MacTable, Plan, PlannedService, Table, TunnelSources,
};
use crate::config::Config;

/// The start of both test modules' configurations: the node and a `web` service.
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

mod ids_and_tables {
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
    fn several_addresses_and_ports_are_keys_of_one_service() {
        let yaml = concat!(
            web_yaml!(),
            r#"  - name: group
    vips: [10.0.0.101, 10.0.0.102]
    ports: [80, "8000-8002"]
    backends: [{ address: 10.0.0.13 }]
  - name: any
    vip: 10.0.0.102
    port: 0
    backends: [{ address: 10.0.0.13 }]
"#
        );
        let config = Config::parse(yaml, "test.yaml").expect("valid config");
        let p = plan(&config, &MacTable::new(), TunnelSources::default(), None).unwrap();
        let group = p.services.iter().find(|s| s.name == "group").unwrap();
        let key = |vip: &str, port: u16| ServiceKey::new(vip.parse().unwrap(), port, 6);
        assert_eq!(group.key, key("10.0.0.101", 80));
        let mut want = Vec::new();
        for vip in ["10.0.0.101", "10.0.0.102"] {
            for port in [80, 8000, 8001, 8002] {
                want.push(key(vip, port));
            }
        }
        assert_eq!(group.keys().copied().collect::<Vec<_>>(), want);
        // A flow to any of them is the group's; another port of the second VIP is `any`'s,
        // which the group's ports shadow.
        let flow = |vip: &str, port: u16| {
            lb_common::FlowKey::new(
                "10.9.0.1:40000".parse().unwrap(),
                std::net::SocketAddr::new(vip.parse().unwrap(), port),
                6,
            )
        };
        let name = |f| super::super::service_for(&p, &f).map(|s| s.name.as_str());
        assert_eq!(name(flow("10.0.0.102", 8001)), Some("group"));
        assert_eq!(name(flow("10.0.0.102", 9000)), Some("any"));
        let entries = service_entries(&p.services);
        let any = p.services.iter().position(|s| s.name == "any").unwrap();
        assert_eq!(entries[any].1.shadowed, 1);
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
    fn settings_carry_the_flood_policy_and_the_echo_rate() {
        let p = |config: &Config| plan(config, &MacTable::new(), TunnelSources::default(), None);
        let mut c = config();
        let s = p(&c).unwrap().settings;
        // 1,000 a second by default, in bursts of 100: 99 answers ahead of time at most.
        assert_eq!(s.flood_protection, 1);
        assert_eq!(s.icmp_echo_interval_ns, 1_000_000);
        assert_eq!(s.icmp_echo_burst_ns, 99 * 1_000_000);
        c.conntrack.flood_protection = false;
        c.node.icmp_echo_rate = 5;
        let s = p(&c).unwrap().settings;
        assert_eq!(s.flood_protection, 0);
        assert_eq!(
            (s.icmp_echo_interval_ns, s.icmp_echo_burst_ns),
            (200_000_000, 0)
        );
        c.node.icmp_echo_rate = 0;
        assert_eq!(p(&c).unwrap().settings.icmp_echo_interval_ns, 0, "no limit");
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

mod reuse {
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
