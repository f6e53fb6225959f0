//! What the daemon shows of itself at one moment: services, backends, counters, rates,
//! VRRP instances. Plain data, the JSON of `GET /api/v1/services` and `/api/v1/vrrp`,
//! the input of `bascule status` (`cli::status`) and of `/metrics` (`serve::metrics`).
//!
//! Producers: the controller fills services and datapath counters (`Controller::snapshot`,
//! at the end of this file); the VRRP side provides its instances' [`VrrpStatus`] through
//! a [`VrrpSource`].

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering, Arc},
};

use lb_common::BACKEND_ACTIVE;
use serde::{Deserialize, Serialize};

use super::{
    rates::{add, PlanCounters},
    runtime::{effective, BackendKey},
    Controller,
};
use crate::{
    config::{format_duration, Backend, Service},
    plan::{Plan, PlannedBackend, PlannedService},
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// bascule's version.
    pub version: String,
    pub config_file: String,
    /// The program is attached and the maps hold the configuration.
    pub ready: bool,
    pub reloads: Reloads,
    pub services: Vec<ServiceStatus>,
    pub datapath: DatapathStats,
    #[serde(default)]
    pub vrrp: Vec<VrrpStatus>,
    /// What this node announces (`announce:`); `None` without the section.
    #[serde(default)]
    pub announce: Option<super::AnnounceStatus>,
    /// `sync:`; `None` when not configured.
    #[serde(default)]
    pub sync: Option<super::SyncStatus>,
}

/// Config reloads since the daemon started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reloads {
    pub ok: u64,
    pub error: u64,
    /// The message of the last refused reload, until one succeeds.
    pub last_error: Option<String>,
    /// The last reload, taken or refused (none yet: `null`).
    #[serde(default)]
    pub last: Option<LastReload>,
}

/// When the last reload happened, and whether it was taken.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReload {
    /// Unix time, milliseconds.
    pub at_unix_ms: u64,
    pub ok: bool,
    pub took_ms: u64,
}

/// Per-second rates over the last sampling interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub packets: f64,
    pub bytes: f64,
    pub connections: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: IpAddr,
    /// 0: every port.
    pub port: u16,
    /// More addresses and ports (`vips`, `ports`: `80`, `8000-8099`) of the service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    pub protocol: String,
    pub scheduler: String,
    pub forwarding: String,
    /// As written in the config (`0s`: none).
    pub persistence: String,
    /// Packets and bytes (whole frames) balanced to this service's backends.
    pub packets: u64,
    pub bytes: u64,
    /// New flows scheduled (connection-table misses).
    pub connections: u64,
    pub rates: Rates,
    pub backends: Vec<BackendStatus>,
}

impl ServiceStatus {
    /// `VIP:PORT` (`[v6]:PORT`), or the bare VIP for an all-ports service; then its other
    /// ports (`,8000-8099`) and how many other addresses it has (` +2`).
    pub fn endpoint(&self) -> String {
        let mut e = endpoint(self.vip, self.port);
        for p in &self.ports {
            e.push(',');
            e.push_str(p);
        }
        if !self.vips.is_empty() {
            e.push_str(&format!(" +{}", self.vips.len()));
        }
        e
    }
}

/// What health checking says of a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The service has no health check: the backend counts as up.
    #[default]
    Unchecked,
    Up,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unchecked => "-",
            Health::Up => "up",
            Health::Down => "down",
        }
    }

    /// Up or unchecked.
    pub fn is_up(self) -> bool {
        self != Health::Down
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub address: IpAddr,
    /// The port packets reach it on (the service's, or the backend's own with `nat`).
    pub port: u16,
    /// The `backend` label of the metrics: `ADDR:PORT` (`[v6]:PORT`), or `ADDR` when the
    /// service balances every port.
    pub label: String,
    pub forwarding: String,
    /// The weight the scheduler uses now: the config's, or a runtime override, or 0 when
    /// a failed health check inhibits it.
    pub weight: u32,
    pub config_weight: u32,
    /// Set through the API (`bascule weight`, `bascule drain`).
    pub weight_override: Option<u32>,
    pub health: Health,
    /// Why the last failed health check failed (kept after the backend is up again).
    #[serde(default)]
    pub last_failure: Option<String>,
    /// Durations of the health checks so far, for `bascule_healthcheck_duration_seconds`
    /// (not in the JSON).
    #[serde(skip)]
    pub check_durations: Option<crate::health::DurationHistogram>,
    /// The datapath may send new flows to it (weight aside): false while it is down and
    /// removed, or a `dr` backend whose MAC address is not known yet.
    pub active: bool,
    /// Connection-table entries pointing at it.
    pub active_connections: u64,
    /// Connection thresholds: `max_connections` and the `min_connections` in force;
    /// `None` without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_connections: Option<u32>,
    /// At its upper connection threshold: it takes no new flows until it has fewer than
    /// `min_connections`.
    #[serde(default)]
    pub overloaded: bool,
    /// Times it reached its upper connection threshold (as new flows found it there).
    #[serde(default)]
    pub overloads: u64,
    /// New flows scheduled to it.
    pub connections: u64,
    pub packets: u64,
    pub bytes: u64,
    pub rates: Rates,
}

/// Node-wide datapath counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStats {
    /// Interfaces the program runs on.
    pub interfaces: Vec<String>,
    /// How it runs on each of `interfaces` (same order), as the kernel reports: `native`,
    /// `generic` (see `xdp_mode`; `auto` takes generic on a veth).
    #[serde(default)]
    pub xdp_modes: Vec<String>,
    /// Whether this daemon adopted a datapath left running by a previous one.
    pub adopted: bool,
    /// Packets per XDP verdict (`aborted`, `drop`, `pass`, `tx`, `redirect`).
    pub actions: BTreeMap<String, u64>,
    /// Packets dropped, per reason.
    pub drops: BTreeMap<String, u64>,
    /// Packets for a VIP handed to the kernel instead of balanced, per reason.
    pub passes: BTreeMap<String, u64>,
    /// New flows: packets of a service that found no connection-table entry.
    pub conntrack_misses: u64,
    pub conntrack_entries: u64,
    /// Entries the connection table holds (`conntrack.max_entries` rounded up to whole
    /// sets).
    pub conntrack_capacity: u64,
    /// Live flows' entries that a new flow took (their set was full), in the connection
    /// table or the `nat` reply table.
    #[serde(default)]
    pub conntrack_evictions: u64,
    /// New flows forwarded without an entry (`conntrack.flood_protection`), per reason.
    #[serde(default)]
    pub conntrack_bypassed: BTreeMap<String, u64>,
}

/// A VRRP instance as `bascule status`, `/api/v1/vrrp` and `bascule_vrrp_*` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpStatus {
    pub instance: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub state: VrrpState,
    /// The priority its adverts carry: the configured one moved by weighted track scripts.
    pub priority: u8,
    /// The configured priority.
    #[serde(default)]
    pub configured_priority: u8,
    /// Its sync group, if any.
    #[serde(default)]
    pub sync_group: Option<String>,
    /// Its track scripts, in the configured order.
    #[serde(default)]
    pub scripts: Vec<VrrpScriptStatus>,
    /// The master's address as last seen in its adverts (ours when master).
    pub master: Option<IpAddr>,
    pub virtual_addresses: Vec<String>,
    /// Transitions into each state since start.
    pub transitions: BTreeMap<VrrpState, u64>,
    pub adverts_received: u64,
    /// Adverts discarded, per reason (`ttl`, `auth`, `vrid`, `checksum`, ...).
    pub adverts_invalid: BTreeMap<String, u64>,
}

/// A track script as an instance sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VrrpScriptStatus {
    pub name: String,
    pub weight: i16,
    /// `up`, `down`, or `unknown` before its first result.
    pub state: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VrrpState {
    Init,
    Backup,
    Master,
    Fault,
}

impl VrrpState {
    pub const ALL: [VrrpState; 4] = [
        VrrpState::Init,
        VrrpState::Backup,
        VrrpState::Master,
        VrrpState::Fault,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VrrpState::Init => "init",
            VrrpState::Backup => "backup",
            VrrpState::Master => "master",
            VrrpState::Fault => "fault",
        }
    }
}

/// Where the daemon reads the VRRP instances' status, at each snapshot (`bascule status`,
/// `/api/v1/vrrp`, `/metrics`): a function the VRRP side provides (reading its own shared
/// status board), so that neither side owns the other's state.
pub type VrrpSource = Arc<dyn Fn() -> Vec<VrrpStatus> + Send + Sync>;

/// A VRRP instance's status as the VRRP side publishes it (`vrrp::StatusBoard`), in the
/// snapshot's terms.
pub fn vrrp_status(v: &crate::vrrp::VrrpStatus) -> VrrpStatus {
    use crate::vrrp::State;
    let state = |s: State| match s {
        State::Initialize => VrrpState::Init,
        State::Backup => VrrpState::Backup,
        State::Master => VrrpState::Master,
        State::Fault => VrrpState::Fault,
    };
    VrrpStatus {
        instance: v.instance.clone(),
        interface: v.interface.clone(),
        virtual_router_id: v.virtual_router_id,
        state: state(v.state),
        priority: v.priority,
        configured_priority: v.configured_priority,
        sync_group: v.sync_group.clone(),
        scripts: v
            .scripts
            .iter()
            .map(|s| VrrpScriptStatus {
                name: s.name.clone(),
                weight: s.weight,
                state: s.state.label().to_string(),
            })
            .collect(),
        master: v.master,
        virtual_addresses: v
            .virtual_addresses
            .iter()
            .map(ToString::to_string)
            .collect(),
        transitions: v.transitions.iter().map(|(s, n)| (state(*s), *n)).collect(),
        adverts_received: v.adverts_received,
        adverts_invalid: v.adverts_invalid.clone(),
    }
}

/// The source of a daemon without VRRP instances.
pub fn no_vrrp() -> VrrpSource {
    Arc::new(Vec::new)
}

/// `ADDR:PORT` with brackets for IPv6, or the bare address for port 0.
pub fn endpoint(addr: IpAddr, port: u16) -> String {
    if port == 0 {
        addr.to_string()
    } else {
        SocketAddr::new(addr, port).to_string()
    }
}

/// A plan's services and backends by what the configuration names them: indexed once per
/// snapshot, not searched per backend.
struct Planned<'p> {
    services: HashMap<&'p str, &'p PlannedService>,
    backends: HashMap<(&'p str, IpAddr, u16), &'p PlannedBackend>,
}

impl<'p> Planned<'p> {
    fn of(plan: &'p Plan) -> Self {
        Planned {
            services: plan.services.iter().map(|p| (p.name.as_str(), p)).collect(),
            backends: plan
                .backends
                .iter()
                .map(|b| ((&*b.service, b.address, b.port), b))
                .collect(),
        }
    }
}

impl Controller {
    /// Everything `bascule status` and `/metrics` show, read now.
    pub(super) fn snapshot(&mut self) -> Snapshot {
        let all = self.counters_now().unwrap_or_default();
        let (plan, config) = (Arc::clone(&self.plan), Arc::clone(&self.config));
        let planned = Planned::of(&plan);
        let services = config
            .services
            .iter()
            .map(|svc| self.service_status(svc, &planned, &all))
            .collect();
        let datapath = self.datapath_stats(&plan, &all);
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_file: self.path.display().to_string(),
            ready: self.ready.load(Ordering::SeqCst),
            reloads: self.reloads.clone(),
            services,
            datapath,
            vrrp: (self.vrrp)(),
            announce: self.announce_status(),
            sync: self.sync_status(),
        }
    }

    fn service_status(
        &mut self,
        svc: &Service,
        planned: &Planned,
        all: &PlanCounters,
    ) -> ServiceStatus {
        let p = planned.services.get(svc.name.as_str()).copied();
        let counters = p.map(|p| all.service(p.info.id)).unwrap_or_default();
        let rates = p
            .and_then(|p| self.rates.services.get(p.info.id as usize))
            .copied()
            .unwrap_or_default();
        let backends = svc
            .backends
            .iter()
            .map(|b| self.backend_status(svc, b, planned, all))
            .collect();
        ServiceStatus {
            name: svc.name.clone(),
            vip: svc.vip,
            port: svc.port,
            vips: svc.vips.clone(),
            ports: svc.ports.iter().map(|p| p.to_string()).collect(),
            protocol: svc.protocol.to_string(),
            scheduler: svc.scheduler.to_string(),
            forwarding: svc.forwarding.to_string(),
            persistence: format_duration(svc.persistence),
            packets: counters.packets,
            bytes: counters.bytes,
            connections: counters.new_flows,
            rates,
            backends,
        }
    }

    fn backend_status(
        &mut self,
        svc: &Service,
        b: &Backend,
        planned: &Planned,
        all: &PlanCounters,
    ) -> BackendStatus {
        let inhibit = svc
            .health_check
            .as_ref()
            .is_some_and(|h| h.inhibit_on_failure);
        let key = BackendKey {
            service: svc.name.clone(),
            address: b.address,
            port: b.effective_port(svc),
        };
        let planned_b = planned
            .backends
            .get(&(key.service.as_str(), key.address, key.port))
            .copied();
        let current = planned_b.map(|p| all.backend(p.id)).unwrap_or_default();
        let c = add(self.retired.get(&key).copied().unwrap_or_default(), current);
        // What the checks say now (the maps follow within a moment).
        let live = self.health_source.as_ref().map(|s| s.borrow());
        let checked = live
            .as_deref()
            .unwrap_or(&self.runtime.health)
            .get(&key.health_key())
            .cloned();
        drop(live);
        let health = match &checked {
            None => Health::Unchecked,
            Some(h) if h.up => Health::Up,
            Some(_) => Health::Down,
        };
        let active_connections = planned_b
            .and_then(|p| self.datapath.active_connections(p.id).ok())
            .unwrap_or(0);
        let (overloaded, overloads) = planned_b
            .filter(|p| p.info.max_conns != 0)
            .and_then(|p| {
                let (was, times) = self.datapath.overload_state(p.id).ok()?;
                Some((p.info.overloaded(was, active_connections), times))
            })
            .unwrap_or_default();
        BackendStatus {
            address: b.address,
            port: key.port,
            label: key.label(),
            forwarding: b.effective_forwarding(svc).to_string(),
            weight: effective(b.weight, &key, inhibit, &self.runtime).weight,
            config_weight: b.weight,
            weight_override: self.runtime.overrides.get(&key).map(|o| o.weight),
            health,
            last_failure: checked.as_ref().and_then(|h| h.last_failure.clone()),
            check_durations: checked.map(|h| h.durations),
            active: planned_b.is_some_and(|p| p.info.flags & BACKEND_ACTIVE != 0),
            active_connections,
            max_connections: b.max_connections,
            min_connections: b.effective_min_connections(),
            overloaded,
            overloads,
            connections: c.new_flows,
            packets: c.packets,
            bytes: c.bytes,
            rates: planned_b
                .and_then(|p| self.rates.backends.get(p.id as usize))
                .copied()
                .unwrap_or_default(),
        }
    }

    /// The node-wide counters: connection table, verdicts, reasons.
    fn datapath_stats(&mut self, plan: &Plan, all: &PlanCounters) -> DatapathStats {
        let mut datapath = DatapathStats {
            interfaces: self.interfaces.clone(),
            xdp_modes: self.xdp_modes.clone(),
            adopted: self.adopted,
            // Counted now, not at the last reconciliation (up to 5 s old).
            conntrack_entries: self
                .datapath
                .live_flows(
                    self.config.conntrack.tcp_timeout.as_nanos() as u64,
                    self.config.conntrack.udp_timeout.as_nanos() as u64,
                )
                .unwrap_or(self.conntrack_live),
            conntrack_capacity: self.datapath.conntrack_capacity().unwrap_or(0),
            conntrack_evictions: self.datapath.conntrack_evictions().unwrap_or(0),
            ..Default::default()
        };
        if let Ok(bypasses) = self.datapath.conntrack_bypasses() {
            for (name, v) in bypasses {
                datapath.conntrack_bypassed.insert(name.to_string(), v);
            }
        }
        if let Ok(actions) = self.datapath.actions() {
            for (name, v) in lb_common::XDP_ACTION_NAMES.iter().zip(actions) {
                datapath.actions.insert(name.to_string(), v);
            }
        }
        if let Ok(reasons) = self.datapath.reasons() {
            for (name, dropped) in lb_common::REASON_NAMES {
                let v = reasons.get(name).copied().unwrap_or(0);
                if dropped {
                    datapath.drops.insert(name.to_string(), v);
                } else {
                    datapath.passes.insert(name.to_string(), v);
                }
            }
        }
        // Every scheduled flow was a miss; the services' counts hold them all.
        datapath.conntrack_misses = plan
            .services
            .iter()
            .map(|s| all.service(s.info.id).new_flows)
            .sum();
        datapath
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(endpoint(v4, 80), "10.0.0.1:80");
        assert_eq!(endpoint(v6, 80), "[fd00::1]:80");
        assert_eq!(endpoint(v6, 0), "fd00::1");
    }
}
