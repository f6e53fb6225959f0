//! What health means for the datapath, as a pass around `plan::plan` (which stays
//! health-agnostic):
//!
//! - an up backend keeps its configured weight, or the check's own (`misc` dynamic);
//! - a down backend gets weight 0 (no Maglev slot) and is planned inactive, so its
//!   established flows are rescheduled (with `mh`, only its flows move);
//! - with `inhibit_on_failure`, a down backend only gets weight 0: it stays active and its
//!   established flows stay;
//! - when no backend of a service is up, its `sorry_server` is planned as an extra backend
//!   holding the whole table; without one the table is empty, and the datapath passes the
//!   service's packets to the kernel, counted as `no_backend`.
//!
//! Backends of services without `health_check` are always up. A checked backend missing
//! from the map (its check not started yet) counts as its `initial_state`.

use std::{borrow::Cow, collections::HashSet};

use anyhow::Result;
use lb_common::BACKEND_ACTIVE;

use crate::{
    config::{Backend, Config, InitialState},
    plan::{plan, MacTable, Plan, TunnelSources},
};

use super::{BackendKey, HealthMap};

/// `plan::plan` of `config` as `health` leaves it.
pub fn plan_with_health(
    config: &Config,
    macs: &MacTable,
    tunnel: TunnelSources,
    previous: Option<&Plan>,
    health: &HealthMap,
) -> Result<Plan> {
    let (adjusted, inactive) = apply_health(config, health);
    let mut planned = plan(&adjusted, macs, tunnel, previous)?;
    if !inactive.is_empty() {
        let services: HashSet<&str> = inactive.iter().map(|k| k.service.as_str()).collect();
        for b in &mut planned.backends {
            if services.contains(&*b.service)
                && inactive.contains(&BackendKey::new(&b.service, b.address, b.port))
            {
                b.info.flags &= !BACKEND_ACTIVE;
            }
        }
    }
    Ok(planned)
}

/// The configuration the datapath should be planned from (weights set by health, sorry
/// servers added), and the backends to plan inactive. Borrowed when health changes
/// nothing (no checks, or every checked backend up at its configured weight).
pub fn apply_health<'c>(
    config: &'c Config,
    health: &HealthMap,
) -> (Cow<'c, Config>, HashSet<BackendKey>) {
    if !config.services.iter().any(|s| touched(s, health)) {
        return (Cow::Borrowed(config), HashSet::new());
    }
    let mut adjusted = config.clone();
    let mut inactive = HashSet::new();
    for svc in &mut adjusted.services {
        let check = svc.health_check.clone();
        let mut any_up = false;
        for b in &mut svc.backends {
            let key = BackendKey::new(&svc.name, b.address, b.port.unwrap_or(svc.port));
            let (up, weight_override) = match (&check, health.get(&key)) {
                (None, _) => (true, None),
                (Some(_), Some(h)) => (h.up, h.weight_override),
                (Some(c), None) => (c.initial_state == InitialState::Up, None),
            };
            if up {
                any_up = true;
                if let Some(w) = weight_override {
                    b.weight = w;
                }
            } else {
                // (Already set when drained at run time: keep that weight.)
                b.failed_weight = b.failed_weight.max(b.weight);
                b.weight = 0;
                if !check.as_ref().is_some_and(|c| c.inhibit_on_failure) {
                    inactive.insert(key);
                }
            }
        }
        let Some(sorry) = svc.sorry_server.filter(|_| !any_up) else {
            continue;
        };
        let port = sorry.port();
        let same = svc
            .backends
            .iter_mut()
            .find(|b| b.address == sorry.ip() && b.port.unwrap_or(svc.port) == port);
        match same {
            // The sorry server is also a (down) backend: use it all the same.
            Some(b) => {
                b.weight = 1;
                b.failed_weight = 0;
                inactive.remove(&BackendKey::new(&svc.name, b.address, port));
            }
            None => svc.backends.push(Backend {
                address: sorry.ip(),
                port: Some(port),
                weight: 1,
                forwarding: None,
                max_connections: None,
                min_connections: None,
                failed_weight: 0,
            }),
        }
    }
    (Cow::Owned(adjusted), inactive)
}

/// Whether `apply_health` changes anything of `svc`: a checked backend down (or not
/// checked yet and initially down), or up with a check's own weight; or no backend at all
/// and a sorry server.
fn touched(svc: &crate::config::Service, health: &HealthMap) -> bool {
    if svc.backends.is_empty() {
        return svc.sorry_server.is_some();
    }
    let Some(check) = &svc.health_check else {
        return false;
    };
    // One key, its address and port set per backend (no allocation per backend).
    let mut key = BackendKey::new(&svc.name, svc.vip, svc.port);
    svc.backends.iter().any(|b| {
        key.address = b.address;
        key.port = b.port.unwrap_or(svc.port);
        match health.get(&key) {
            Some(h) => !h.up || h.weight_override.is_some(),
            None => check.initial_state != InitialState::Up,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::SystemTime};

    use lb_common::NO_BACKEND;

    use super::*;
    use crate::health::BackendHealth;

    const YAML: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - name: web
    vip: 10.0.0.100
    port: 80
    maglev_table_size: 1009
    forwarding: tun
    health_check: { type: tcp }
    backends:
      - address: 10.0.0.11
      - address: 10.0.0.12
      - address: 10.0.0.13
  - name: unchecked
    vip: 10.0.0.101
    port: 80
    forwarding: tun
    maglev_table_size: 251
    backends:
      - address: 10.0.0.21
"#;

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, "t.yaml").unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn health(states: &[(&str, bool, Option<u32>)]) -> HealthMap {
        states
            .iter()
            .map(|&(addr, up, w)| {
                let mut h = BackendHealth::new(up, SystemTime::now());
                h.weight_override = w;
                (BackendKey::new("web", ip(addr), 80), h)
            })
            .collect()
    }

    fn planned(cfg: &Config, h: &HealthMap, previous: Option<&Plan>) -> Plan {
        plan_with_health(cfg, &MacTable::new(), TunnelSources::default(), previous, h).unwrap()
    }

    fn id_of(p: &Plan, addr: &str) -> u32 {
        p.backends
            .iter()
            .find(|b| b.address == ip(addr))
            .map(|b| b.id)
            .unwrap()
    }

    fn active(p: &Plan, addr: &str) -> bool {
        p.backends
            .iter()
            .find(|b| b.address == ip(addr))
            .is_some_and(|b| b.info.flags & BACKEND_ACTIVE != 0)
    }

    fn slots(p: &Plan, service: usize, id: u32) -> usize {
        p.services[service]
            .table
            .iter()
            .filter(|&b| b == id)
            .count()
    }

    #[test]
    fn down_backend_leaves_the_table_and_is_planned_inactive() {
        let cfg = config(YAML);
        let all_up = health(&[
            ("10.0.0.11", true, None),
            ("10.0.0.12", true, None),
            ("10.0.0.13", true, None),
        ]);
        let before = planned(&cfg, &all_up, None);
        assert!(before
            .backends
            .iter()
            .all(|b| b.info.flags & BACKEND_ACTIVE != 0));
        let one_down = health(&[
            ("10.0.0.11", false, None),
            ("10.0.0.12", true, None),
            ("10.0.0.13", true, None),
        ]);
        let after = planned(&cfg, &one_down, Some(&before));
        let down = id_of(&after, "10.0.0.11");
        assert_eq!(down, id_of(&before, "10.0.0.11"), "ids are kept");
        assert!(!active(&after, "10.0.0.11"), "down backend is inactive");
        assert_eq!(slots(&after, 0, down), 0);
        // mh: exactly the down backend's slots move (to stand-ins); no up backend's slot
        // does, so with or without the connection table only its flows move.
        let pairs = before.services[0]
            .table
            .iter()
            .zip(after.services[0].table.iter());
        let others_moved = pairs
            .filter(|(old, new)| *old != down && old != new)
            .count();
        assert_eq!(others_moved, 0, "slots of the up backends moved");
        // Back up: it gets exactly its slots back.
        let again = planned(&cfg, &all_up, Some(&after));
        assert_eq!(again.services[0].table, before.services[0].table);
        // The unchecked service is untouched.
        assert_eq!(before.services[1], after.services[1]);
    }

    #[test]
    fn inhibit_on_failure_keeps_the_backend_active_with_no_slot() {
        let cfg = config(&YAML.replace("{ type: tcp }", "{ type: tcp, inhibit_on_failure: true }"));
        let p = planned(
            &cfg,
            &health(&[
                ("10.0.0.11", false, None),
                ("10.0.0.12", true, None),
                ("10.0.0.13", true, None),
            ]),
            None,
        );
        assert!(active(&p, "10.0.0.11"));
        assert_eq!(slots(&p, 0, id_of(&p, "10.0.0.11")), 0);
    }

    #[test]
    fn dynamic_weights_set_the_share_of_slots() {
        let cfg = config(YAML);
        let p = planned(
            &cfg,
            &health(&[
                ("10.0.0.11", true, Some(9)),
                ("10.0.0.12", true, Some(1)),
                ("10.0.0.13", true, Some(0)),
            ]),
            None,
        );
        let (a, b) = (
            slots(&p, 0, id_of(&p, "10.0.0.11")),
            slots(&p, 0, id_of(&p, "10.0.0.12")),
        );
        assert_eq!(a + b, 1009);
        assert!(
            (850..=950).contains(&a),
            "weight 9 of 10 holds {a} of 1009 slots"
        );
        assert_eq!(slots(&p, 0, id_of(&p, "10.0.0.13")), 0);
        assert!(active(&p, "10.0.0.13"), "weight 0 is drained, not down");
    }

    #[test]
    fn all_down_empties_the_table_or_goes_to_the_sorry_server() {
        let all_down = health(&[
            ("10.0.0.11", false, None),
            ("10.0.0.12", false, None),
            ("10.0.0.13", false, None),
        ]);
        let p = planned(&config(YAML), &all_down, None);
        assert!(p.services[0].table.iter().all(|b| b == NO_BACKEND));

        let with_sorry = YAML.replace(
            "    forwarding: tun\n    health_check",
            "    forwarding: tun\n    sorry_server: 10.0.0.250:80\n    health_check",
        );
        let cfg = config(&with_sorry);
        let p = planned(&cfg, &all_down, None);
        let sorry = id_of(&p, "10.0.0.250");
        assert!(p.services[0].table.iter().all(|b| b == sorry));
        assert!(active(&p, "10.0.0.250"));
        assert_eq!(p.services[0].backends.len(), 4);
        // One backend back: the sorry server leaves, the backend takes every slot.
        let one_up = health(&[
            ("10.0.0.11", false, None),
            ("10.0.0.12", true, None),
            ("10.0.0.13", false, None),
        ]);
        let p2 = planned(&cfg, &one_up, Some(&p));
        assert!(p2.backends.iter().all(|b| b.address != ip("10.0.0.250")));
        let b12 = id_of(&p2, "10.0.0.12");
        assert!(p2.services[0].table.iter().all(|b| b == b12));
    }

    #[test]
    fn health_that_changes_nothing_borrows_the_configuration() {
        let cfg = config(YAML);
        let all_up = health(&[
            ("10.0.0.11", true, None),
            ("10.0.0.12", true, None),
            ("10.0.0.13", true, None),
        ]);
        let (adjusted, inactive) = apply_health(&cfg, &all_up);
        assert!(matches!(adjusted, Cow::Borrowed(_)));
        assert!(inactive.is_empty());
        // Not checked yet (initially down), or a dynamic weight: adjusted.
        assert!(matches!(
            apply_health(&cfg, &HealthMap::new()).0,
            Cow::Owned(_)
        ));
        let weighted = health(&[
            ("10.0.0.11", true, Some(5)),
            ("10.0.0.12", true, None),
            ("10.0.0.13", true, None),
        ]);
        assert_eq!(
            apply_health(&cfg, &weighted).0.services[0].backends[0].weight,
            5
        );
        // A service without backends goes to its sorry server, checked or not.
        let empty = config(
            "node:\n  interfaces: [{ name: eth0 }]\nservices:\n  - name: s\n    vip: 10.0.0.1\n    port: 80\n    sorry_server: 10.0.0.250:80\n",
        );
        let (adjusted, _) = apply_health(&empty, &HealthMap::new());
        assert_eq!(adjusted.services[0].backends.len(), 1);
    }

    #[test]
    fn before_the_first_checks_backends_are_their_initial_state() {
        let p = planned(&config(YAML), &HealthMap::new(), None);
        assert!(p.services[0].table.iter().all(|b| b == NO_BACKEND));
        assert!(p.services[1].table.iter().all(|b| b != NO_BACKEND));
        let up = config(&YAML.replace("{ type: tcp }", "{ type: tcp, initial_state: up }"));
        let p = planned(&up, &HealthMap::new(), None);
        assert!(p.services[0].table.iter().all(|b| b != NO_BACKEND));
    }
}
