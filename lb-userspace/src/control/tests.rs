//! The controller's pure parts: overrides and health on top of the config, reload diffs,
//! operators' backend names, `simulate`, rates.

use std::{collections::HashSet, net::SocketAddr};

use lb_common::{Counters, FlowKey, FlowState, PersistState};

use super::{commit::tables_built, snapshot::Rates, *};
use crate::{
    config::Config,
    health,
    plan::{plan, MacTable, Plan, TunnelSources},
};

const YAML: &str = "node:
  interfaces: [{name: eth0}]
services:
  - name: a
    vip: 10.0.0.1
    port: 80
    forwarding: tun
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
        weight: 2
  - name: b
    vip: 10.0.0.2
    port: 0
    forwarding: tun
    health_check: {type: tcp, connect_port: 80, inhibit_on_failure: true}
    backends:
      - address: 10.0.0.13
";

fn config() -> Config {
    Config::parse(YAML, "t.yaml").unwrap()
}

/// `config()` with service `a` checked too (no inhibit, initial state up): health
/// applies only to checked backends.
fn checked_config() -> Config {
    let mut c = config();
    let mut check = c.services[1].health_check.clone().unwrap();
    check.inhibit_on_failure = false;
    check.initial_state = crate::config::InitialState::Up;
    c.services[0].health_check = Some(check);
    c
}

fn key(service: &str, addr: &str, port: u16) -> BackendKey {
    BackendKey {
        service: service.into(),
        address: addr.parse().unwrap(),
        port,
    }
}

fn weights(c: &Config) -> Vec<(String, String, u32)> {
    c.services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .map(move |b| (s.name.clone(), b.address.to_string(), b.weight))
        })
        .collect()
}

#[test]
fn overrides_and_health_shape_the_effective_config() {
    let c = checked_config();
    let mut rt = Runtime::default();
    // Nothing checked yet: each checked backend is at its initial_state (a: up, b:
    // down, inhibited: weight 0 but active).
    let mut initial = c.clone();
    initial.services[1].backends[0].weight = 0;
    initial.services[1].backends[0].failed_weight = 1;
    assert_eq!(effective_config(&c, &rt), (initial, HashSet::new()));
    rt.overrides.insert(
        key("a", "10.0.0.12", 80),
        Override {
            weight: 0,
            config_weight: 2,
        },
    );
    // Down without inhibit: weight 0 and inactive (its flows move). Down with
    // inhibit: weight 0 only (its flows stay). Every backend keeps its place.
    let down = health::BackendHealth::new(false, std::time::SystemTime::UNIX_EPOCH);
    rt.health
        .insert(key("a", "10.0.0.11", 80).health_key(), down.clone());
    rt.health
        .insert(key("b", "10.0.0.13", 0).health_key(), down);
    let (e, inactive) = effective_config(&c, &rt);
    assert_eq!(
        weights(&e),
        vec![
            ("a".into(), "10.0.0.11".into(), 0),
            ("a".into(), "10.0.0.12".into(), 0),
            ("b".into(), "10.0.0.13".into(), 0)
        ]
    );
    assert_eq!(inactive, [key("a", "10.0.0.11", 80)].into_iter().collect());
    // A dynamic weight applies when up, but an operator's override wins.
    let up = |w| {
        let mut h = health::BackendHealth::new(true, std::time::SystemTime::UNIX_EPOCH);
        h.weight_override = Some(w);
        h
    };
    rt.health
        .insert(key("a", "10.0.0.11", 80).health_key(), up(7));
    rt.health
        .insert(key("a", "10.0.0.12", 80).health_key(), up(9));
    let (e, inactive) = effective_config(&c, &rt);
    assert_eq!(
        weights(&e)[..2],
        [
            ("a".into(), "10.0.0.11".into(), 7),
            ("a".into(), "10.0.0.12".into(), 0)
        ]
    );
    assert!(inactive.is_empty());
}

#[test]
fn a_down_backend_is_planned_inactive_and_keeps_its_id() {
    let c = checked_config();
    let p = plan(&c, &MacTable::new(), TunnelSources::default(), None).unwrap();
    let mut rt = Runtime::default();
    rt.health.insert(
        key("a", "10.0.0.11", 80).health_key(),
        health::BackendHealth::new(false, std::time::SystemTime::UNIX_EPOCH),
    );
    let (e, inactive) = effective_config(&c, &rt);
    let q = plan(&e, &MacTable::new(), TunnelSources::default(), Some(&p)).unwrap();
    let b11 = |p: &Plan| {
        p.backends
            .iter()
            .find(|b| b.address.to_string() == "10.0.0.11")
            .unwrap()
            .clone()
    };
    assert_eq!(b11(&q).id, b11(&p).id);
    assert!(inactive.contains(&key("a", "10.0.0.11", 80)));
    assert!(
        !q.services[0].table.contains(b11(&q).id),
        "a down backend has no slot"
    );
}

#[test]
fn gone_backends_are_those_of_changed_and_removed_services() {
    let old = config();
    let mut new = config();
    new.services[0].backends.remove(0);
    new.services.remove(1);
    let d = diff(&old, &new);
    assert_eq!(
        gone_backends(&old, &new, &d),
        vec![key("a", "10.0.0.11", 80), key("b", "10.0.0.13", 0)]
    );
    assert!(gone_backends(&old, &old, &diff(&old, &old)).is_empty());
}

#[test]
fn tables_built_counts_only_what_a_plan_did_not_reuse() {
    let c = config();
    let none = |c: &Config, prev: Option<&Plan>| {
        plan(c, &MacTable::new(), TunnelSources::default(), prev).unwrap()
    };
    let empty = Plan {
        settings: Default::default(),
        services: Vec::new(),
        backends: Vec::new(),
    };
    let p = none(&c, None);
    assert_eq!(tables_built(&empty, &p), 2);
    assert_eq!(tables_built(&p, &none(&c, Some(&p))), 0);
    let mut d = c.clone();
    d.services[1].backends[0].weight = 3;
    assert_eq!(tables_built(&p, &none(&d, Some(&p))), 1);
    // Planned without the previous plan: every table is new, even if equal.
    assert_eq!(tables_built(&p, &none(&c, None)), 2);
}

#[test]
fn a_runtime_drain_hands_over_only_the_drained_backends_slots() {
    let mut yaml = String::from(
        "node:\n  interfaces: [{ name: eth0 }]\nservices:\n  - name: a\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    maglev_table_size: 1009\n    backends:\n",
    );
    for i in 11..=17 {
        yaml.push_str(&format!("      - address: 10.0.0.{i}\n"));
    }
    let c = Config::parse(&yaml, "t.yaml").unwrap();
    let macs = MacTable::new();
    let tunnel = TunnelSources::default();
    let p = plan(&c, &macs, tunnel, None).unwrap();
    let mut rt = Runtime::default();
    rt.overrides.insert(
        key("a", "10.0.0.13", 80),
        Override {
            weight: 0,
            config_weight: 1,
        },
    );
    let (e, _) = effective_config(&c, &rt);
    let q = plan(&e, &macs, tunnel, Some(&p)).unwrap();
    let drained = p.backends[2].id;
    assert_eq!(p.backends[2].address.to_string(), "10.0.0.13");
    let (before, after) = (&p.services[0].table, &q.services[0].table);
    assert!(before.contains(drained) && !after.contains(drained));
    for (b, a) in before.iter().zip(after.iter()) {
        if b != drained {
            assert_eq!(b, a, "a slot of a backend still in service moved");
        }
    }
    rt.overrides.clear();
    let (e, _) = effective_config(&c, &rt);
    let r = plan(&e, &macs, tunnel, Some(&q)).unwrap();
    assert_eq!(
        r.services[0].table, p.services[0].table,
        "undrained: back as before"
    );
}

#[test]
fn overrides_survive_only_unchanged_backends() {
    let mut o = Overrides::new();
    let ov = |w, c| Override {
        weight: w,
        config_weight: c,
    };
    o.insert(key("a", "10.0.0.11", 80), ov(0, 1));
    o.insert(key("a", "10.0.0.12", 80), ov(5, 2));
    o.insert(key("b", "10.0.0.13", 0), ov(3, 1));
    let new = YAML
        .replace("        weight: 2\n", "        weight: 4\n")
        .replace(
            "      - address: 10.0.0.13\n",
            "      - address: 10.0.0.14\n",
        );
    let dropped = retain_overrides(&mut o, &Config::parse(&new, "t.yaml").unwrap());
    assert_eq!(
        o.keys().cloned().collect::<Vec<_>>(),
        vec![key("a", "10.0.0.11", 80)]
    );
    let why: Vec<String> = dropped.iter().map(|(k, w)| format!("{k}: {w}")).collect();
    assert_eq!(
        why,
        vec![
            "a/10.0.0.12:80: the file changed its weight from 2 to 4",
            "b/10.0.0.13: the backend left the configuration",
        ]
    );
}

#[test]
fn backends_found_by_what_operators_type() {
    let c = config();
    assert_eq!(
        find_backend(&c, "a", "10.0.0.11"),
        Ok(key("a", "10.0.0.11", 80))
    );
    assert_eq!(
        find_backend(&c, "a", "10.0.0.12:80"),
        Ok(key("a", "10.0.0.12", 80))
    );
    assert_eq!(
        find_backend(&c, "a", "10.0.0.12:81"),
        Err(ControlError::NotFound(
            "service \"a\" has no backend 10.0.0.12:81 (backends: 10.0.0.11:80, 10.0.0.12:80)"
                .into()
        ))
    );
    assert_eq!(
        find_backend(&c, "z", "10.0.0.11"),
        Err(ControlError::NotFound(
            "no service \"z\" (services: a, b)".into()
        ))
    );
    assert!(matches!(
        find_backend(&c, "a", "ten"),
        Err(ControlError::Invalid(_))
    ));
    let v6 = Config::parse(
        "node:\n  interfaces: [{name: eth0}]\nservices:\n  - name: six\n    vip: fd00::1\n    port: 443\n    backends: [{address: fd00::11}]\n",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(
        find_backend(&v6, "six", "[fd00::11]:443"),
        Ok(key("six", "fd00::11", 443))
    );
    assert_eq!(
        find_backend(&v6, "six", "fd00::11"),
        Ok(key("six", "fd00::11", 443))
    );
}

#[test]
fn diff_by_service_name() {
    let old = config();
    let new = Config::parse(
        &YAML
            .replace("  - name: b\n", "  - name: c\n")
            .replace("        weight: 2\n", "        weight: 3\n"),
        "t.yaml",
    )
    .unwrap();
    let d = diff(&old, &new);
    assert_eq!(
        d.to_string(),
        "services added: c; removed: b; changed: a; unchanged: 0"
    );
    assert_eq!(
        diff(&old, &old).to_string(),
        "services added: none; removed: none; changed: none; unchanged: 2"
    );
    let mut moved = old.clone();
    moved.node.interfaces[0].name = "eth1".into();
    moved.conntrack.max_entries = 5;
    assert_eq!(
        restart_only_changes(&old, &moved),
        vec!["node", "conntrack"]
    );
    // announce: its table, protocol and presence need a restart; its VIPs and grace not.
    let mut announcing = old.clone();
    announcing.announce = Some(crate::config::Announce::default());
    assert_eq!(
        restart_only_changes(&old, &announcing),
        vec!["announce.table, announce.protocol"]
    );
    let mut narrowed = announcing.clone();
    let a = narrowed.announce.as_mut().unwrap();
    a.vips = vec!["10.0.0.1".parse().unwrap()];
    a.withdraw_grace = std::time::Duration::from_secs(1);
    assert!(restart_only_changes(&announcing, &narrowed).is_empty());
    narrowed.announce.as_mut().unwrap().table = 201;
    assert_eq!(restart_only_changes(&announcing, &narrowed).len(), 1);
}

fn state(backend: u32, service: u32, last_seen: u64) -> FlowState {
    FlowState {
        backend,
        service,
        last_seen,
        flags: lb_common::FLOW_ACTIVE,
        seq: 0,
    }
}

#[test]
fn simulate_explains_conntrack_and_scheduler_choices() {
    let c = config();
    let p = plan(&c, &MacTable::new(), TunnelSources::default(), None).unwrap();
    let flow = FlowKey::new(
        "10.9.0.1:40000".parse().unwrap(),
        "10.0.0.1:80".parse().unwrap(),
        lb_common::IPPROTO_TCP,
    );
    let none = |_| 0;
    let (_, predicted) = crate::plan::predict(&p, &flow).unwrap();
    let by_id = |id: u32| p.backends.iter().find(|b| b.id == id).unwrap();
    let new = simulate(&p, &c, &flow, &FlowLookups::default(), &none);
    assert_eq!(new.reason, "scheduler");
    assert_eq!(new.address, Some(by_id(predicted).address));
    assert!(
        new.explanation
            .starts_with("new flow of service a: mh hash 0x"),
        "{}",
        new.explanation
    );
    // A fresh entry for another backend of the service wins while that backend serves.
    let other = p
        .backends
        .iter()
        .find(|b| &*b.service == "a" && b.id != predicted)
        .unwrap();
    let sid = p.services[0].info.id;
    let now: u64 = 10_000_000_000_000;
    let seen = |st: FlowState| FlowLookups {
        conntrack: Some(st),
        persistence: None,
        now_ns: now,
        overloaded: Default::default(),
    };
    let hit = simulate(
        &p,
        &c,
        &flow,
        &seen(state(other.id, sid, now - 3_000_000_000)),
        &none,
    );
    assert_eq!(hit.reason, "conntrack");
    assert_eq!(hit.backend, Some(format!("{}:80", other.address)));
    assert_eq!(
        hit.explanation,
        format!(
            "conntrack hit: established flow of service a, last packet 3s ago -> backend {}:80",
            other.address
        )
    );
    // Idle past tcp_timeout (15m): rescheduled.
    let idle = simulate(
        &p,
        &c,
        &flow,
        &seen(state(other.id, sid, now - 16 * 60 * 1_000_000_000)),
        &none,
    );
    assert_eq!(idle.reason, "scheduler");
    assert!(
        idle.explanation.starts_with("conntrack entry for "),
        "{}",
        idle.explanation
    );
    // An entry of another service (a VIP reused) does not count.
    let foreign = simulate(&p, &c, &flow, &seen(state(other.id, 99, now)), &none);
    assert_eq!(foreign.reason, "scheduler");
    let nothing = simulate(
        &p,
        &c,
        &FlowKey::new(
            "10.9.0.1:40000".parse().unwrap(),
            "10.0.0.3:80".parse().unwrap(),
            lb_common::IPPROTO_TCP,
        ),
        &FlowLookups::default(),
        &none,
    );
    assert_eq!(nothing.reason, "no_service");
    // The all-ports service answers any port.
    let any = simulate(
        &p,
        &c,
        &FlowKey::new(
            "10.9.0.1:40000".parse().unwrap(),
            "10.0.0.2:5353".parse().unwrap(),
            lb_common::IPPROTO_TCP,
        ),
        &FlowLookups::default(),
        &none,
    );
    assert_eq!(any.backend.as_deref(), Some("10.0.0.13"));
}

#[test]
fn simulate_persistence_and_other_schedulers() {
    let yaml = YAML
        .replace("    forwarding: tun\n    backends:\n      - address: 10.0.0.11", "    forwarding: tun\n    persistence: 5m\n    scheduler: sh\n    backends:\n      - address: 10.0.0.11")
        .replace("    port: 0\n", "    port: 0\n    scheduler: wlc\n");
    let c = Config::parse(&yaml, "t.yaml").unwrap();
    let p = plan(&c, &MacTable::new(), TunnelSources::default(), None).unwrap();
    let src: SocketAddr = "10.9.0.1:40000".parse().unwrap();
    let flow = FlowKey::new(src, "10.0.0.1:80".parse().unwrap(), lb_common::IPPROTO_TCP);
    let none = |_| 0;
    // sh: every port of one client reaches the same backend.
    let one = simulate(&p, &c, &flow, &FlowLookups::default(), &none);
    let other_port = FlowKey::new(
        "10.9.0.1:40001".parse().unwrap(),
        "10.0.0.1:80".parse().unwrap(),
        6,
    );
    assert_eq!(one.reason, "scheduler");
    assert!(
        one.explanation.contains("sh source hash"),
        "{}",
        one.explanation
    );
    assert_eq!(
        simulate(&p, &c, &other_port, &FlowLookups::default(), &none).backend,
        one.backend
    );
    // A fresh persistence template wins over the scheduler.
    let b12 = p
        .backends
        .iter()
        .find(|b| b.address.to_string() == "10.0.0.12")
        .unwrap();
    let now = 1_000_000_000_000;
    let seen = FlowLookups {
        conntrack: None,
        persistence: Some(PersistState {
            backend: b12.id,
            _pad: 0,
            last_seen: now - 60_000_000_000,
        }),
        now_ns: now,
        overloaded: Default::default(),
    };
    let kept = simulate(&p, &c, &flow, &seen, &none);
    assert_eq!(kept.reason, "persistence");
    assert_eq!(kept.backend.as_deref(), Some("10.0.0.12:80"));
    assert_eq!(kept.explanation, "persistence: this client was sent to it 60s ago (persistence 300s) -> backend 10.0.0.12:80");
    // wlc decides from the loads of the moment: the candidates, with theirs.
    let wlc = simulate(
        &p,
        &c,
        &FlowKey::new(src, "10.0.0.2:53".parse().unwrap(), 6),
        &FlowLookups::default(),
        &|_| 4,
    );
    assert_eq!(wlc.reason, "scheduler");
    assert_eq!(wlc.backend, None);
    assert_eq!(wlc.candidates, vec!["10.0.0.13 (4 active)"]);
}

#[test]
fn rates_per_second() {
    let c = |p, b, n| Counters {
        packets: p,
        bytes: b,
        new_flows: n,
    };
    let r = rates(c(10, 1000, 1), c(30, 5000, 5), 2.0);
    assert_eq!(
        r,
        Rates {
            packets: 10.0,
            bytes: 2000.0,
            connections: 2.0
        }
    );
    // A reset counter gives 0, not a negative rate.
    assert_eq!(rates(c(30, 5000, 5), c(1, 1, 1), 2.0).packets, 0.0);
}

/// What `announce::decide` is given: per service, its VIP and the planned backends that
/// take new connections (active, weight above 0); a sorry server in use counts apart.
#[test]
fn announce_facts_follow_health_weights_and_sorry_servers() {
    use crate::announce::{decide, NodeFacts, Reason, Selection};
    let ready = NodeFacts {
        ready: true,
        draining: false,
    };
    let reasons = |c: &Config, rt: &Runtime| {
        let (input, health) = planning_input(c, rt);
        let p = health::plan_with_health(
            &input,
            &MacTable::new(),
            TunnelSources::default(),
            None,
            &health,
        )
        .unwrap();
        let facts = vip_facts(c, &p);
        decide(ready, &facts, &Selection::Every)
            .into_iter()
            .map(|(vip, r)| (vip.to_string(), r))
            .collect::<Vec<_>>()
    };
    let vips =
        |a: Reason, b: Reason| vec![("10.0.0.1".to_string(), a), ("10.0.0.2".to_string(), b)];
    let mut c = checked_config();
    // b's backend starts down (its check's initial state) until its check says up.
    assert_eq!(
        reasons(&c, &Runtime::default()),
        vips(Reason::Announced, Reason::NoBackendUp)
    );
    c.services[1].health_check.as_mut().unwrap().initial_state = crate::config::InitialState::Up;
    let mut rt = Runtime::default();
    assert_eq!(reasons(&c, &rt), vips(Reason::Announced, Reason::Announced));
    // b's only backend down (inhibited: weight 0, still active): nothing takes new flows.
    let down = health::BackendHealth::new(false, std::time::SystemTime::UNIX_EPOCH);
    rt.health
        .insert(key("b", "10.0.0.13", 0).health_key(), down.clone());
    assert_eq!(
        reasons(&c, &rt),
        vips(Reason::Announced, Reason::NoBackendUp)
    );
    // a: one backend down, the other drained at run time.
    rt.health
        .insert(key("a", "10.0.0.11", 80).health_key(), down);
    rt.overrides.insert(
        key("a", "10.0.0.12", 80),
        Override {
            weight: 0,
            config_weight: 2,
        },
    );
    assert_eq!(
        reasons(&c, &rt),
        vips(Reason::NoBackendUp, Reason::NoBackendUp)
    );
    // b's sorry server takes its new flows: b is announced again.
    let mut sorry = c.clone();
    sorry.services[1].sorry_server = Some("10.0.0.250:80".parse().unwrap());
    assert_eq!(
        reasons(&sorry, &rt),
        vips(Reason::NoBackendUp, Reason::Announced)
    );
    // The drain lifted: a announced again.
    rt.overrides.clear();
    assert_eq!(
        reasons(&c, &rt),
        vips(Reason::Announced, Reason::NoBackendUp)
    );
}

/// A reload that panics (here on purpose; in the field, a value the validation missed)
/// is refused like an invalid file: counted, with the panic's message, and the next
/// reload is counted as usual.
#[test]
fn a_panicking_reload_is_refused_not_fatal() {
    let path = std::path::Path::new("/etc/bascule/bascule.yaml");
    let mut reloads = snapshot::Reloads::default();
    let refused = reload::counted_reload(&mut reloads, path, || {
        panic!("byte index 6 is not a char boundary")
    });
    let Err(ControlError::Failed(message)) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(
        message,
        "/etc/bascule/bascule.yaml: the reload failed on a bug (byte index 6 is not a char boundary); please report it"
    );
    assert_eq!((reloads.ok, reloads.error), (0, 1));
    assert_eq!(reloads.last_error.as_deref(), Some(message.as_str()));
    let report = ReloadReport {
        diff: ConfigDiff::default(),
        dropped_overrides: Vec::new(),
    };
    let ok = reload::counted_reload(&mut reloads, path, || Ok(report.clone()));
    assert_eq!(ok, Ok(report));
    assert_eq!(
        (reloads.ok, reloads.error, reloads.last_error),
        (1, 1, None)
    );
}
