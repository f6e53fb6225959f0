//! Runtime state on top of the config: operators' weight overrides and the health checks'
//! map, and the configuration the scheduler sees once they are applied. Pure.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};

use super::{requests::ControlError, snapshot::endpoint};
use crate::{
    config::{Config, Forwarding},
    health::{self, HealthMap},
};

/// One backend of one service: the service's name, and the address and port packets
/// reach the backend on (`Backend::effective_port`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BackendKey {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
}

impl BackendKey {
    /// The metrics' `backend` label: `ADDR:PORT`, or `ADDR` for an all-ports service.
    pub fn label(&self) -> String {
        endpoint(self.address, self.port)
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.label())
    }
}

/// A weight set at runtime through the API. It wins over the file's weight until reset,
/// and survives reloads that leave the backend in its service with the same configured
/// weight; a reload that changes that backend's weight in the file drops it (the file is
/// the newer word). It is kept across a hitless restart (in the state file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Override {
    pub weight: u32,
    /// The file's weight when the override was set.
    pub config_weight: u32,
}

pub type Overrides = BTreeMap<BackendKey, Override>;

#[derive(Clone, Debug, Default)]
pub struct Runtime {
    pub overrides: Overrides,
    /// What the health checks say (`health::HealthSupervisor`): the map the datapath was
    /// last planned with. A checked backend absent from it counts as its `initial_state`.
    pub health: HealthMap,
}

impl BackendKey {
    /// The same backend as health checks name it.
    pub fn health_key(&self) -> health::BackendKey {
        health::BackendKey::new(&self.service, self.address, self.port)
    }
}

/// What of a health map the datapath depends on: up or down, and a check's dynamic weight.
pub fn same_for_datapath(a: &HealthMap, b: &HealthMap) -> bool {
    a.len() == b.len()
        && a.iter().all(|(k, h)| {
            b.get(k)
                .is_some_and(|o| o.up == h.up && o.weight_override == h.weight_override)
        })
}

/// What the scheduler makes of one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    pub weight: u32,
    /// Planned inactive: down without `inhibit_on_failure`, so its established flows are
    /// rescheduled (with mh, only its flows move). An inhibited down backend only gets
    /// weight 0: its established flows stay.
    pub inactive: bool,
}

/// A backend's weight after health and runtime overrides: down gives 0 (whatever the
/// override), else the operator's override, else the check's dynamic weight, else the
/// file's.
pub fn effective(config_weight: u32, key: &BackendKey, inhibit: bool, rt: &Runtime) -> Effective {
    let health = rt.health.get(&key.health_key());
    if health.is_some_and(|h| !h.up) {
        return Effective {
            weight: 0,
            inactive: !inhibit,
        };
    }
    let weight = rt
        .overrides
        .get(key)
        .map(|o| o.weight)
        .or(health.and_then(|h| h.weight_override))
        .unwrap_or(config_weight);
    Effective {
        weight,
        inactive: false,
    }
}

/// What `health::plan_with_health` is given: the file's configuration with the operators'
/// weight overrides, and the health map without the checks' dynamic weights of overridden
/// backends (an operator's override wins over a check's weight; a down backend still gets 0).
pub fn planning_input<'c, 'r>(
    config: &'c Config,
    rt: &'r Runtime,
) -> (Cow<'c, Config>, Cow<'r, HealthMap>) {
    let health = Cow::Borrowed(&rt.health);
    if rt.overrides.is_empty() {
        return (Cow::Borrowed(config), health);
    }
    let mut out = config.clone();
    let mut health = health;
    let overridden: HashSet<&str> = rt.overrides.keys().map(|k| k.service.as_str()).collect();
    for svc in &mut out.services {
        if !overridden.contains(svc.name.as_str()) {
            continue;
        }
        let (name, port, forwarding) = (svc.name.clone(), svc.port, svc.forwarding);
        for b in &mut svc.backends {
            let key = BackendKey {
                service: name.clone(),
                address: b.address,
                port: match b.forwarding.unwrap_or(forwarding) {
                    Forwarding::Nat => b.port.unwrap_or(port),
                    _ => port,
                },
            };
            let Some(o) = rt.overrides.get(&key) else {
                continue;
            };
            // Drained at run time: mh keeps its place (its slots are handed over, no other
            // slot moves, and undraining gives exactly its slots back), as for a failure.
            if o.weight == 0 {
                b.failed_weight = b.weight;
            }
            b.weight = o.weight;
            let hk = key.health_key();
            if health.get(&hk).is_some_and(|h| h.weight_override.is_some()) {
                if let Some(h) = health.to_mut().get_mut(&hk) {
                    h.weight_override = None;
                }
            }
        }
    }
    (Cow::Owned(out), health)
}

/// The configuration the scheduler sees (overrides and health applied, a sorry server
/// added to a service without any backend up), and the backends to plan inactive.
/// Backends keep their place, so their ids, counters and Maglev identities stay.
pub fn effective_config(config: &Config, rt: &Runtime) -> (Config, HashSet<BackendKey>) {
    let (input, health) = planning_input(config, rt);
    let (out, inactive) = health::apply_health(&input, &health);
    let out = out.into_owned();
    let inactive = inactive
        .into_iter()
        .map(|k| BackendKey {
            service: k.service,
            address: k.address,
            port: k.port,
        })
        .collect();
    (out, inactive)
}

/// Every backend of a configuration, keyed, with its configured weight.
pub fn backend_keys(config: &Config) -> Vec<(BackendKey, u32)> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(move |b| {
                (
                    BackendKey {
                        service: s.name.clone(),
                        address: b.address,
                        port: b.effective_port(s),
                    },
                    b.weight,
                )
            })
        })
        .collect()
}

/// After a reload: drops the overrides of backends that left, or whose weight the new
/// file changes. Returns what was dropped and why.
pub fn retain_overrides(overrides: &mut Overrides, config: &Config) -> Vec<(BackendKey, String)> {
    if overrides.is_empty() {
        return Vec::new();
    }
    let weights: HashMap<BackendKey, u32> = backend_keys(config).into_iter().collect();
    let mut dropped = Vec::new();
    overrides.retain(|key, o| match weights.get(key) {
        None => {
            dropped.push((
                key.clone(),
                "the backend left the configuration".to_string(),
            ));
            false
        }
        Some(&w) if w != o.config_weight => {
            dropped.push((
                key.clone(),
                format!(
                    "the file changed its weight from {} to {w}",
                    o.config_weight
                ),
            ));
            false
        }
        Some(_) => true,
    });
    dropped
}

/// Finds a backend of `service` from what an operator types: `ADDR`, `ADDR:PORT` or
/// `[V6]:PORT`. A bare address must name one backend of the service.
pub fn find_backend(
    config: &Config,
    service: &str,
    spec: &str,
) -> Result<BackendKey, ControlError> {
    let svc = config
        .services
        .iter()
        .find(|s| s.name == service)
        .ok_or_else(|| {
            ControlError::NotFound(format!(
                "no service \"{service}\" (services: {})",
                config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let (address, port) = match spec.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), Some(sa.port())),
        Err(_) => match spec
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            Ok(ip) => (ip, None),
            Err(_) => {
                return Err(ControlError::Invalid(format!(
                    "\"{spec}\" is not a backend: expected ADDR, ADDR:PORT or [IPV6]:PORT"
                )))
            }
        },
    };
    let matches: Vec<BackendKey> = svc
        .backends
        .iter()
        .map(|b| BackendKey {
            service: svc.name.clone(),
            address: b.address,
            port: b.effective_port(svc),
        })
        .filter(|k| k.address == address && port.is_none_or(|p| p == k.port))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ControlError::NotFound(format!(
            "service \"{service}\" has no backend {spec} (backends: {})",
            svc.backends
                .iter()
                .map(|b| endpoint(b.address, b.effective_port(svc)))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        several => Err(ControlError::Invalid(format!(
            "{spec} is several backends of service \"{service}\" ({}): add the port",
            several
                .iter()
                .map(BackendKey::label)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}
