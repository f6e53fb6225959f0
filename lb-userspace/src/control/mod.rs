//! The controller: the daemon's state and the only owner of the datapath.
//!
//! It runs on its own thread as an actor: the HTTP API, the signal handler and the health
//! supervisor (through the daemon) send it [`Request`]s on one channel and get answers on one-shot
//! channels, so the datapath is never touched from two places at once. Every change
//! (reload, runtime weight, health) goes the same way:
//!
//! ```text
//! Config (file) --overrides--> Config --health::plan_with_health(health, previous)--> Plan
//!     --Datapath::apply (only the difference)--> maps
//! ```
//!
//! The pure parts (`effective_config`, `diff`, `retain_overrides`, `find_backend`,
//! `simulate`, `rates`) are plain functions tested without root.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use lb_common::{Counters, FlowKey, FlowState, PersistState, BACKEND_ACTIVE, NO_BACKEND};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

pub mod snapshot;

use crate::{
    config::{Config, HostFacts, ParseCache, Service, XdpMode},
    datapath::{
        self,
        pins::{PinDir, SavedOverride, SavedState, StateText},
        AttachMode, Datapath,
    },
    health::{self, plan_with_health, HealthMap},
    host,
    plan::{MacTable, Plan},
    serve::daemon,
};
use snapshot::{
    endpoint, BackendStatus, DatapathStats, Health, Rates, Reloads, ServiceStatus, Snapshot,
    VrrpSource,
};

/// How long to wait for the kernel to resolve backends' MACs at start, and on a change.
const RESOLVE_WAIT_START: Duration = Duration::from_secs(3);
const RESOLVE_WAIT_CHANGE: Duration = Duration::from_secs(1);
/// How often MACs are re-read (faster while some `dr` backend still has none).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
const REFRESH_MISSING_EVERY: Duration = Duration::from_secs(2);
/// Rates are computed over this interval.
const RATE_INTERVAL: Duration = Duration::from_secs(2);
/// How often the connection table is walked: idle flows expire, active-connection counts
/// are rewritten (see `Datapath::reconcile`).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------------
// Runtime state on top of the config: weight overrides and health
// ------------------------------------------------------------------------------------------

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
                    crate::config::Forwarding::Nat => b.port.unwrap_or(port),
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

// ------------------------------------------------------------------------------------------
// Reload: what changed
// ------------------------------------------------------------------------------------------

/// Services added, removed and changed by a reload, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let before = by_name(old);
    let after = by_name(new);
    for s in &new.services {
        match before.get(s.name.as_str()) {
            None => d.added.push(s.name.clone()),
            Some(o) if *o != s => d.changed.push(s.name.clone()),
            Some(_) => d.unchanged += 1,
        }
    }
    for o in &old.services {
        if !after.contains_key(o.name.as_str()) {
            d.removed.push(o.name.clone());
        }
    }
    d
}

fn by_name(config: &Config) -> HashMap<&str, &Service> {
    config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect()
}

/// Backends of `old` that `new` does not have (in the same service, at the same address
/// and port). Work only for the services `diff` (of `old` to `new`) names as changed or
/// removed.
pub fn gone_backends(old: &Config, new: &Config, diff: &ConfigDiff) -> Vec<BackendKey> {
    let (before, after) = (by_name(old), by_name(new));
    let mut gone = Vec::new();
    for name in diff.changed.iter().chain(&diff.removed) {
        let Some(o) = before.get(name.as_str()) else {
            continue;
        };
        let kept: HashSet<(IpAddr, u16)> =
            after.get(name.as_str()).map_or_else(HashSet::new, |n| {
                n.backends
                    .iter()
                    .map(|b| (b.address, b.effective_port(n)))
                    .collect()
            });
        for b in &o.backends {
            let port = b.effective_port(o);
            if !kept.contains(&(b.address, port)) {
                gone.push(BackendKey {
                    service: o.name.clone(),
                    address: b.address,
                    port,
                });
            }
        }
    }
    gone
}

/// Whether `config` has the backend `key`.
fn configured(services: &HashMap<&str, &Service>, key: &BackendKey) -> bool {
    services.get(key.service.as_str()).is_some_and(|s| {
        s.backends
            .iter()
            .any(|b| b.address == key.address && b.effective_port(s) == key.port)
    })
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "services added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged
        )
    }
}

/// Settings that need a restart: a reload that changes them is refused.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.node != new.node {
        v.push("node");
    }
    if old.conntrack != new.conntrack {
        v.push("conntrack");
    }
    if old.http != new.http {
        v.push("http");
    }
    v
}

// ------------------------------------------------------------------------------------------
// Simulate: which backend a flow gets, and why
// ------------------------------------------------------------------------------------------

/// The answer of `bascule simulate` / `GET /api/v1/simulate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulateAnswer {
    pub service: Option<String>,
    /// The backend's label, if the flow reaches one.
    pub backend: Option<String>,
    pub address: Option<IpAddr>,
    /// `conntrack` (an established flow), `persistence` (the client's template),
    /// `scheduler` (a new flow), `no_service` (not a VIP: the kernel gets it) or
    /// `no_backend` (the service has none that takes new flows).
    pub reason: String,
    pub scheduler: Option<String>,
    /// Maglev: the flow hash, and the slot it selects in the service's table.
    pub hash: Option<u32>,
    pub slot: Option<u32>,
    pub table_size: Option<u32>,
    /// Schedulers that decide from the moment's state (rr, wrr, lc, ...): the backends
    /// one of which the next new flow gets, with their active connections.
    #[serde(default)]
    pub candidates: Vec<String>,
    /// One sentence for people.
    pub explanation: String,
}

/// What the datapath's maps say about one flow, read by the caller (all empty offline).
#[derive(Clone, Copy, Debug, Default)]
pub struct FlowLookups {
    /// The flow's connection-table entry.
    pub conntrack: Option<FlowState>,
    /// The client's persistence template for the flow's service.
    pub persistence: Option<PersistState>,
    /// The datapath's clock now (`datapath::monotonic_ns`).
    pub now_ns: u64,
}

/// Which backend the datapath gives `flow`, with the lookups it makes, in its order: the
/// service (exact port, then all-ports), the connection table (a fresh entry of this
/// service whose backend still serves), the client's persistence template, then the
/// scheduler. mh, sh and dh are predicted with the datapath's own hashes and tables; the
/// other schedulers decide at the first packet from a rotation or the current loads
/// (`active` gives a backend's active connections), so the answer lists the candidates.
pub fn simulate(
    plan: &Plan,
    config: &Config,
    flow: &FlowKey,
    seen: &FlowLookups,
    active: &dyn Fn(u32) -> u64,
) -> SimulateAnswer {
    let backend_of = |id: u32| plan.backends.iter().find(|b| b.id == id);
    let serving = |id: u32| backend_of(id).filter(|b| b.info.flags & BACKEND_ACTIVE != 0);
    let eligible = |id: u32| serving(id).filter(|b| b.info.weight > 0);
    let label = |b: &crate::plan::PlannedBackend| endpoint(b.address, b.port);
    let mut answer = SimulateAnswer {
        service: None,
        backend: None,
        address: None,
        reason: "no_service".into(),
        scheduler: None,
        hash: None,
        slot: None,
        table_size: None,
        candidates: Vec::new(),
        explanation:
            "no service for this destination and protocol: the packet goes to the kernel untouched"
                .into(),
    };
    let Some(svc) = service_of(plan, flow) else {
        return answer;
    };
    let cfg = config.services.iter().find(|s| s.name == svc.name);
    let scheduler = cfg.map_or(crate::config::Scheduler::Mh, |s| s.scheduler);
    answer.service = Some(svc.name.clone());
    answer.scheduler = Some(scheduler.to_string());
    let chose = |answer: &mut SimulateAnswer,
                 reason: &str,
                 b: &crate::plan::PlannedBackend,
                 why: String| {
        answer.reason = reason.into();
        answer.backend = Some(label(b));
        answer.address = Some(b.address);
        answer.explanation = format!("{why} -> backend {}", label(b));
    };

    let mut prefix = String::new();
    if let Some(st) = seen.conntrack.filter(|s| s.service == svc.info.id) {
        // The service's idle timeout, as the datapath applies it.
        let timeout = Duration::from_nanos(svc.info.idle_timeout_ns);
        let idle = Duration::from_nanos(seen.now_ns.saturating_sub(st.last_seen));
        match serving(st.backend) {
            Some(b) if timeout.is_zero() || idle <= timeout => {
                let why = format!(
                    "conntrack hit: established flow of service {}, last packet {}s ago",
                    svc.name,
                    idle.as_secs()
                );
                chose(&mut answer, "conntrack", b, why);
                return answer;
            }
            Some(b) => {
                prefix = format!(
                    "conntrack entry for {} idle past its timeout ({}s); rescheduled: ",
                    label(b),
                    timeout.as_secs()
                )
            }
            None => {
                prefix = "conntrack entry points at a backend that no longer serves; rescheduled: "
                    .to_string()
            }
        }
    }
    if svc.info.persistence_secs > 0 {
        if let Some(t) = seen.persistence {
            let age = Duration::from_nanos(seen.now_ns.saturating_sub(t.last_seen));
            if age.as_secs() <= u64::from(svc.info.persistence_secs) {
                if let Some(b) = eligible(t.backend) {
                    let why = format!(
                        "{prefix}persistence: this client was sent to it {}s ago (persistence {}s)",
                        age.as_secs(),
                        svc.info.persistence_secs
                    );
                    chose(&mut answer, "persistence", b, why);
                    return answer;
                }
            }
        }
    }
    let table_size = svc.table.len() as u32;
    answer.table_size = Some(table_size);
    use crate::config::Scheduler as S;
    let hash = match scheduler {
        S::Mh => {
            let ports = lb_common::hash::ports_word(flow.sport, flow.dport);
            Some(lb_common::hash::flow_hash(
                &flow.src, &flow.dst, ports, flow.proto,
            ))
        }
        S::Sh => Some(lb_common::hash::addr_hash(&flow.src)),
        S::Dh => Some(lb_common::hash::addr_hash(&flow.dst)),
        _ => None,
    };
    let Some(hash) = hash else {
        // rr, wrr, lc, wlc, sed, nq, lblc, lblcr.
        let how = match scheduler {
            S::Rr | S::Wrr => "the next turn of its rotation",
            _ => "the backends' active connections at that moment",
        };
        answer.candidates = svc
            .table
            .iter()
            .filter_map(eligible)
            .map(|b| format!("{} ({} active)", label(b), active(b.id)))
            .collect();
        answer.candidates.dedup();
        if answer.candidates.is_empty() {
            answer.reason = "no_backend".into();
            answer.explanation = format!(
                "{prefix}new flow of service {}: no backend takes new flows: the packet goes to the kernel",
                svc.name
            );
        } else {
            answer.reason = "scheduler".into();
            answer.explanation = format!(
                "{prefix}new flow of service {}: {scheduler} picks at the first packet, from {how}, one of: {}",
                svc.name,
                answer.candidates.join(", ")
            );
        }
        return answer;
    };
    answer.hash = Some(hash);
    let slot = (table_size > 0).then(|| hash % table_size);
    answer.slot = slot;
    let id = slot
        .and_then(|s| svc.table.get(s as usize))
        .unwrap_or(NO_BACKEND);
    let what = match scheduler {
        S::Sh => "source hash",
        S::Dh => "destination hash",
        _ => "hash",
    };
    match eligible(id) {
        Some(b) => {
            let why = format!(
                "{prefix}new flow of service {}: {scheduler} {what} {hash:#010x}, slot {} of {table_size}",
                svc.name,
                slot.unwrap_or(0)
            );
            chose(&mut answer, "scheduler", b, why);
        }
        None => {
            answer.reason = "no_backend".into();
            answer.explanation = format!(
                "{prefix}new flow of service {}: no backend takes new flows (slot {} is empty): the packet goes to the kernel",
                svc.name,
                slot.unwrap_or(0)
            );
        }
    }
    answer
}

fn service_of<'p>(plan: &'p Plan, flow: &FlowKey) -> Option<&'p crate::plan::PlannedService> {
    let exact = lb_common::ServiceKey {
        addr: flow.dst,
        port: flow.dport,
        proto: flow.proto,
        family: flow.family,
    };
    let any_port = lb_common::ServiceKey { port: 0, ..exact };
    plan.services
        .iter()
        .find(|s| s.key == exact)
        .or_else(|| plan.services.iter().find(|s| s.key == any_port))
}

/// Parses `tcp`/`udp`.
pub fn parse_protocol(s: &str) -> Result<u8, ControlError> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(lb_common::IPPROTO_TCP),
        "udp" => Ok(lb_common::IPPROTO_UDP),
        other => Err(ControlError::Invalid(format!(
            "protocol \"{other}\": expected tcp or udp"
        ))),
    }
}

// ------------------------------------------------------------------------------------------
// Rates
// ------------------------------------------------------------------------------------------

/// Per-second rates between two samples of counters (0 after a counter reset).
pub fn rates(before: Counters, after: Counters, seconds: f64) -> Rates {
    if seconds <= 0.0 {
        return Rates::default();
    }
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    Rates {
        packets: per(before.packets, after.packets),
        bytes: per(before.bytes, after.bytes),
        connections: per(before.new_flows, after.new_flows),
    }
}

fn add(a: Counters, b: Counters) -> Counters {
    Counters {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
        new_flows: a.new_flows + b.new_flows,
    }
}

/// The last sample of the counters, and each id's rates since the one before (vectors
/// indexed by service and backend id: at 100,000 backends, hash maps rebuilt every
/// sample were most of an idle daemon's CPU).
#[derive(Default)]
struct RateTracker {
    last: Option<(Instant, PlanCounters)>,
    services: Vec<Rates>,
    backends: Vec<Rates>,
}

// ------------------------------------------------------------------------------------------
// Requests
// ------------------------------------------------------------------------------------------

/// Why a request failed, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// 404: no such service or backend.
    NotFound(String),
    /// 400/422: the request or the new configuration is wrong.
    Invalid(String),
    /// 500: the datapath refused an update.
    Failed(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::NotFound(m) | ControlError::Invalid(m) | ControlError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A weight as the API reports it after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightChange {
    pub service: String,
    pub backend: String,
    pub weight: u32,
    pub config_weight: u32,
    pub weight_override: Option<u32>,
}

/// The answer to a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub diff: ConfigDiff,
    /// Runtime weights dropped by the reload, with why.
    pub dropped_overrides: Vec<String>,
}

pub enum Request {
    Snapshot(oneshot::Sender<Snapshot>),
    Reload(oneshot::Sender<Result<ReloadReport, ControlError>>),
    /// `weight: None` removes the override (back to the file's weight).
    SetWeight {
        service: String,
        backend: String,
        weight: Option<u32>,
        reply: oneshot::Sender<Result<WeightChange, ControlError>>,
    },
    /// From health checking: the health of every checked backend now (it replaces the
    /// previous map; only what changed reaches the maps). No answer; once the maps hold it,
    /// and no newer change is pending, the controller logs "datapath updated for backend
    /// health".
    Health(HealthMap),
    Simulate {
        src: SocketAddr,
        dst: SocketAddr,
        proto: u8,
        reply: oneshot::Sender<Result<SimulateAnswer, ControlError>>,
    },
    /// Stops the controller: with `keep_datapath`, pinned links stay attached and the
    /// maps pinned (the next daemon adopts them); otherwise everything is removed.
    Stop {
        keep_datapath: bool,
        reply: oneshot::Sender<()>,
    },
}

/// The sending side, cloned into the API and the signal handler (and health checkers).
pub type Handle = mpsc::Sender<Request>;

// ------------------------------------------------------------------------------------------
// The controller
// ------------------------------------------------------------------------------------------

/// Told of each configuration a reload applied (shared with the controller: no copy of
/// 100,000 backends per reload).
pub type OnReload = Box<dyn Fn(&Arc<Config>) + Send>;

pub struct Controller {
    path: PathBuf,
    /// The configuration as the file says.
    config: Arc<Config>,
    /// The file's services by the text of their item (see `Start::parse_cache`).
    parse_cache: ParseCache,
    /// The state file's text, kept per service between writes.
    state_text: StateText,
    runtime: Runtime,
    /// What the maps hold.
    plan: Arc<Plan>,
    missing_macs: Vec<IpAddr>,
    datapath: Datapath,
    pins: Option<PinDir>,
    adopted: bool,
    interfaces: Vec<String>,
    reloads: Reloads,
    rates: RateTracker,
    /// Counts of backends that left the plan (down, removed) and may come back under a
    /// new id: added to the new id's counts so that their counters never go backwards.
    retired: HashMap<BackendKey, Counters>,
    vrrp: VrrpSource,
    /// The health checks' current map (`HealthSupervisor::subscribe`), read for status and
    /// metrics, and to know whether a newer change is on its way.
    health_source: Option<watch::Receiver<HealthMap>>,
    /// Told of every configuration a reload applied (health checks, VRRP).
    on_reload: Option<OnReload>,
    ready: Arc<AtomicBool>,
    /// Live connection-table entries at the last walk (`Datapath::reconcile`).
    conntrack_live: u64,
}

/// What the controller is started with.
pub struct Start {
    pub path: PathBuf,
    pub config: Config,
    /// The services parsed from `path` (`Config::load_cached`): a reload re-parses only
    /// the items of the file that changed. Empty: the first reload parses everything.
    pub parse_cache: ParseCache,
    /// Pin the datapath under `/sys/fs/bpf/bascule` (and adopt what is pinned there).
    pub pinned: bool,
    /// The VRRP instances' status (`snapshot::no_vrrp()` without VRRP).
    pub vrrp: VrrpSource,
    /// The health checks' map (`HealthSupervisor::subscribe()`); `None`: every backend up.
    pub health: Option<watch::Receiver<HealthMap>>,
    /// Called with the new configuration after each successful reload.
    pub on_reload: Option<OnReload>,
    pub ready: Arc<AtomicBool>,
}

impl Controller {
    /// Loads (or adopts) the datapath, programs it, attaches it.
    pub fn start(s: Start) -> Result<Controller> {
        daemon::prepare_interfaces(&s.config)?;
        let entries = s.config.conntrack.max_entries;
        let pins = if s.pinned {
            Some(PinDir::open()?)
        } else {
            None
        };
        let mut saved = None;
        if let Some(p) = &pins {
            saved = adoptable_state(p, entries)?;
            if saved.is_none() && p.has_pins() {
                p.clear()?;
            }
        }
        let adopted = saved.is_some();
        let datapath = match &pins {
            Some(p) => Datapath::load_pinned(entries, p)?,
            None => Datapath::load(entries)?,
        };
        let mut runtime = Runtime::default();
        if let Some(source) = &s.health {
            runtime.health = source.borrow().clone();
        }
        if let Some(state) = &saved {
            runtime.overrides = state
                .overrides
                .iter()
                .map(|o| {
                    (
                        BackendKey {
                            service: o.service.clone(),
                            address: o.address,
                            port: o.port,
                        },
                        Override {
                            weight: o.weight,
                            config_weight: o.config_weight,
                        },
                    )
                })
                .collect();
            let dropped = retain_overrides(&mut runtime.overrides, &s.config);
            log_dropped_overrides(&dropped);
        }
        let previous = saved.as_ref().map(SavedState::id_plan);
        let mut c = Controller {
            path: s.path,
            config: Arc::new(s.config),
            parse_cache: s.parse_cache,
            state_text: StateText::default(),
            runtime,
            plan: Arc::new(previous.clone().unwrap_or_else(empty_plan)),
            missing_macs: Vec::new(),
            datapath,
            pins,
            adopted,
            interfaces: Vec::new(),
            reloads: Reloads::default(),
            rates: RateTracker::default(),
            retired: HashMap::new(),
            vrrp: s.vrrp,
            health_source: s.health,
            on_reload: s.on_reload,
            ready: s.ready,
            conntrack_live: 0,
        };
        if let Err(e) = c.bring_up(previous.is_none()) {
            // A datapath adopted from a previous daemon was forwarding before: leave it so.
            // One made by this start goes, rather than forward half-configured.
            if c.adopted {
                c.datapath.keep_attached();
            } else {
                c.stop(false);
            }
            return Err(e);
        }
        Ok(c)
    }

    /// Plans, programs the maps, attaches to every interface. `fresh`: the maps are new.
    fn bring_up(&mut self, fresh: bool) -> Result<()> {
        let config = self.config.clone();
        daemon::warm_routed_backends(&config.services);
        let next = self.replan(&config, RESOLVE_WAIT_START)?;
        report_missing(&self.missing_macs);
        // Fresh maps hold nothing to keep; adopted ones are rewritten whole (same ids,
        // same tables), then cleaned of what the file no longer has.
        self.commit(next, fresh)?;
        if self.adopted {
            let (services, backends) = self.datapath.remove_unplanned(&self.plan)?;
            tracing::info!(
                stale_services = services,
                stale_backends = backends,
                "adopted the pinned datapath: connection table kept"
            );
        }
        for iface in &config.node.interfaces {
            let mode = match iface.xdp_mode {
                XdpMode::Auto => AttachMode::Auto,
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
            };
            self.datapath.attach(&iface.name, mode)?;
            self.interfaces.push(iface.name.clone());
        }
        let keep: Vec<&str> = self.interfaces.iter().map(String::as_str).collect();
        self.datapath.prune_links(&keep)?;
        // Health that changed while this was starting is in the maps before "ready".
        if let Some(now) = self.newer_health() {
            self.runtime.health = now;
            let next = self.replan(&config, Duration::ZERO)?;
            self.commit(next, false)?;
        }
        self.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            services = self.plan.services.len(),
            backends = self.plan.backends.len(),
            adopted = self.adopted,
            "bascule ready"
        );
        Ok(())
    }

    /// Serves requests until `Stop` (or until every sender is gone: a plain stop).
    pub fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut next_refresh = Instant::now() + self.refresh_interval();
        let mut next_sample = Instant::now();
        let mut next_reconcile = Instant::now();
        loop {
            let now = Instant::now();
            let wake = next_refresh.min(next_sample).min(next_reconcile);
            match requests.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Request::Stop {
                    keep_datapath,
                    reply,
                }) => {
                    self.stop(keep_datapath);
                    let _ = reply.send(());
                    return;
                }
                Ok(request) => self.handle(request),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.stop(false);
                    return;
                }
            }
            let now = Instant::now();
            if now >= next_sample {
                self.sample_rates();
                next_sample = now + RATE_INTERVAL;
            }
            if now >= next_refresh {
                self.refresh();
                next_refresh = Instant::now() + self.refresh_interval();
            }
            if now >= next_reconcile {
                self.reconcile_conntrack();
                next_reconcile = Instant::now() + RECONCILE_EVERY;
            }
        }
    }

    fn refresh_interval(&self) -> Duration {
        if self.missing_macs.is_empty() {
            REFRESH_EVERY
        } else {
            REFRESH_MISSING_EVERY
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Request::Reload(reply) => {
                let _ = reply.send(self.reload());
            }
            Request::SetWeight {
                service,
                backend,
                weight,
                reply,
            } => {
                let _ = reply.send(self.set_weight(&service, &backend, weight));
            }
            Request::Health(health) => self.set_health(health),
            Request::Simulate {
                src,
                dst,
                proto,
                reply,
            } => {
                let _ = reply.send(self.simulate(src, dst, proto));
            }
            Request::Stop { .. } => unreachable!("handled by run"),
        }
    }

    /// The plan for `config` under the current runtime state, ids kept from the plan the
    /// maps hold.
    fn replan(&mut self, config: &Config, wait: Duration) -> Result<Plan> {
        // dr backends' and sorry servers' MACs, whatever their health.
        let macs: MacTable =
            host::neighbours::resolve_macs(&daemon::dr_backend_addresses(config), wait)?
                .into_iter()
                .collect();
        self.missing_macs = daemon::missing_dr_macs(config, &macs);
        let (input, health) = planning_input(config, &self.runtime);
        plan_with_health(
            &input,
            &macs,
            daemon::tunnel_sources(config)?,
            Some(&self.plan),
            &health,
        )
    }

    /// The health checks' map now, if what the datapath depends on differs from the map
    /// it was planned with.
    fn newer_health(&self) -> Option<HealthMap> {
        let source = self.health_source.as_ref()?;
        let now = source.borrow();
        (!same_for_datapath(&now, &self.runtime.health)).then(|| now.clone())
    }

    /// Writes `next` into the maps (only the difference from what they hold), keeping the
    /// counters of backends that leave, zeroing those of ids that are new, and saving the
    /// ids first (a crash after this point restarts with the ids the maps are about to
    /// hold). `fresh`: the maps are new, every id is new.
    fn commit(&mut self, next: Plan, fresh: bool) -> Result<()> {
        let trim = fresh || tables_built(&self.plan, &next) >= TRIM_FROM_TABLES;
        let ids = |p: &Plan| IdSet::of(p.backends.iter().map(|b| b.id));
        let (next_ids, current_ids) = (ids(&next), ids(&self.plan));
        for gone in self
            .plan
            .backends
            .iter()
            .filter(|b| !next_ids.contains(b.id))
        {
            if let Ok(c) = self.datapath.backend_counters(gone.id) {
                let key = BackendKey {
                    service: gone.service.to_string(),
                    address: gone.address,
                    port: gone.port,
                };
                let total = add(self.retired.get(&key).copied().unwrap_or_default(), c);
                self.retired.insert(key, total);
            }
        }
        let current_services: std::collections::HashSet<u32> =
            self.plan.services.iter().map(|s| s.info.id).collect();
        let new_services: Vec<u32> = next
            .services
            .iter()
            .map(|s| s.info.id)
            .filter(|id| fresh || !current_services.contains(id))
            .collect();
        let new_backends: Vec<u32> = next
            .backends
            .iter()
            .map(|b| b.id)
            .filter(|id| fresh || !current_ids.contains(*id))
            .collect();
        let t = Instant::now();
        self.save_state(&next)?;
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: state saved"
        );
        self.datapath
            .reset_counters(&new_services, &new_backends)
            .context("cannot reset the counters of new services and backends")?;
        let t = Instant::now();
        let next = Arc::new(next);
        self.datapath
            .apply_shared(Arc::clone(&next))
            .context("cannot update the datapath maps")?;
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: maps written"
        );
        self.plan = next;
        // Counts of backends no longer configured at all are forgotten.
        if !self.retired.is_empty() {
            let services = by_name(&self.config);
            self.retired.retain(|k, _| configured(&services, k));
        }
        if !trim {
            return Ok(());
        }
        let t = Instant::now();
        release_freed_memory();
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: memory released"
        );
        Ok(())
    }

    fn save_state(&mut self, plan: &Plan) -> Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let services = plan
            .services
            .iter()
            .map(|s| datapath::pins::SavedService {
                name: s.name.clone(),
                id: s.info.id,
            })
            .collect();
        let state = SavedState {
            netns_cookie: pins.netns_cookie(),
            object_digest: datapath::object_digest(),
            conntrack_entries: self.config.conntrack.max_entries,
            services,
            backends: Vec::new(),
            overrides: self
                .runtime
                .overrides
                .iter()
                .map(|(k, o)| SavedOverride {
                    service: k.service.clone(),
                    address: k.address,
                    port: k.port,
                    weight: o.weight,
                    config_weight: o.config_weight,
                })
                .collect(),
        };
        match self.state_text.of(&state, plan)? {
            // Not written: the next plan writes the whole file again.
            Some(text) => pins
                .write_state_text(&text)
                .inspect_err(|_| self.state_text = StateText::default()),
            None => Ok(()),
        }
    }

    /// Re-plans the current config (MACs may have changed) and applies any difference.
    fn refresh(&mut self) {
        let before = self.missing_macs.len();
        let config = self.config.clone();
        let result = self
            .replan(&config, Duration::ZERO)
            .and_then(|next| self.commit(next, false));
        match result {
            Ok(()) if self.missing_macs.len() < before => tracing::info!(
                "learnt MAC addresses of {} backend(s)",
                before - self.missing_macs.len()
            ),
            Ok(()) => {}
            Err(e) => tracing::error!("cannot refresh the datapath: {e:#}"),
        }
    }

    fn reload(&mut self) -> Result<ReloadReport, ControlError> {
        let started = Instant::now();
        let result = self.try_reload();
        match &result {
            Ok(report) => {
                self.reloads.ok += 1;
                self.reloads.last_error = None;
                tracing::info!(
                    file = %self.path.display(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "configuration reloaded: {}",
                    report.diff
                );
            }
            Err(e) => {
                self.reloads.error += 1;
                self.reloads.last_error = Some(e.to_string());
                tracing::error!(file = %self.path.display(), "reload refused, the running configuration stays: {e}");
            }
        }
        result
    }

    fn try_reload(&mut self) -> Result<ReloadReport, ControlError> {
        let started = Instant::now();
        let new = daemon::load_config_cached(&self.path, &mut self.parse_cache)
            .map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: file parsed and checked"
        );
        let host = host_facts().map_err(|e| ControlError::Failed(format!("{e:#}")))?;
        check_host(&new, &host).map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: host checked"
        );
        let restart = restart_only_changes(&self.config, &new);
        if !restart.is_empty() {
            return Err(ControlError::Invalid(format!(
                "{}: {} settings change only with a restart (the running configuration stays)",
                self.path.display(),
                restart.join(", ")
            )));
        }
        let diff = diff(&self.config, &new);
        let gone = gone_backends(&self.config, &new, &diff);
        daemon::prepare_interfaces(&new).map_err(|e| ControlError::Failed(format!("{e:#}")))?;
        // New backends' next hops start resolving (those of unchanged services are known).
        let touched: HashSet<&str> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .map(String::as_str)
            .collect();
        daemon::warm_routed_backends(
            new.services
                .iter()
                .filter(|s| touched.contains(s.name.as_str())),
        );
        let mut overrides = self.runtime.overrides.clone();
        let dropped = retain_overrides(&mut overrides, &new);
        let previous_overrides = std::mem::replace(&mut self.runtime.overrides, overrides);
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: diffed"
        );
        let result = self.replan(&new, RESOLVE_WAIT_CHANGE).and_then(|next| {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "reload: planned"
            );
            let old = std::mem::replace(&mut self.config, Arc::new(new));
            self.commit(next, false).inspect_err(|_| self.config = old)
        });
        if let Err(e) = result {
            self.runtime.overrides = previous_overrides;
            return Err(ControlError::Failed(format!("{e:#}")));
        }
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: committed"
        );
        log_dropped_overrides(&dropped);
        report_missing(&self.missing_macs);
        for k in gone {
            self.runtime.health.remove(&k.health_key());
        }
        if let Some(on_reload) = &self.on_reload {
            on_reload(&self.config);
        }
        Ok(ReloadReport {
            diff,
            dropped_overrides: dropped
                .iter()
                .map(|(k, why)| format!("{k}: {why}"))
                .collect(),
        })
    }

    fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<WeightChange, ControlError> {
        let key = find_backend(&self.config, service, backend)?;
        if let Some(w) = weight {
            if w > 65535 {
                return Err(ControlError::Invalid(format!(
                    "weight {w} is out of range, expected 0..=65535"
                )));
            }
        }
        let config_weight = backend_keys(&self.config)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, w)| w);
        let before = self.runtime.overrides.get(&key).copied();
        match weight {
            Some(w) => {
                self.runtime.overrides.insert(
                    key.clone(),
                    Override {
                        weight: w,
                        config_weight,
                    },
                );
            }
            None => {
                self.runtime.overrides.remove(&key);
            }
        }
        let config = self.config.clone();
        let result = self
            .replan(&config, RESOLVE_WAIT_CHANGE)
            .and_then(|next| self.commit(next, false));
        if let Err(e) = result {
            match before {
                Some(o) => self.runtime.overrides.insert(key.clone(), o),
                None => self.runtime.overrides.remove(&key),
            };
            return Err(ControlError::Failed(format!("{e:#}")));
        }
        let inhibit = self.inhibit_on_failure(&key.service);
        let effective = effective(config_weight, &key, inhibit, &self.runtime).weight;
        tracing::info!(
            backend = %key,
            weight = effective,
            config_weight,
            "backend weight {}",
            match weight {
                Some(0) => "set to 0 at runtime (drained: no new flows, established ones stay)".to_string(),
                Some(w) => format!("set to {w} at runtime"),
                None => "reset to the configuration's".to_string(),
            }
        );
        Ok(WeightChange {
            service: key.service.clone(),
            backend: key.label(),
            weight: effective,
            config_weight,
            weight_override: weight,
        })
    }

    fn inhibit_on_failure(&self, service: &str) -> bool {
        self.config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.health_check.as_ref())
            .is_some_and(|h| h.inhibit_on_failure)
    }

    /// A new health map: re-plans if it changes what the datapath does. (The health
    /// checks log each backend's transitions; this logs the resulting update, only when no
    /// newer change is pending: the line then means "the datapath holds every health change
    /// logged before it". A pending change comes as its own request.)
    fn set_health(&mut self, health: HealthMap) {
        let changed = !same_for_datapath(&health, &self.runtime.health);
        self.runtime.health = health;
        if changed {
            let down = self.runtime.health.values().filter(|h| !h.up).count();
            let config = self.config.clone();
            if let Err(e) = self
                .replan(&config, RESOLVE_WAIT_CHANGE)
                .and_then(|next| self.commit(next, false))
            {
                tracing::error!("cannot apply a health change: {e:#}");
                return;
            }
            tracing::debug!(down, "health change applied");
        }
        if self.newer_health().is_none() {
            tracing::info!("datapath updated for backend health");
        }
    }

    fn simulate(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        proto: u8,
    ) -> Result<SimulateAnswer, ControlError> {
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(ControlError::Invalid(format!(
                "{src} and {dst} are of different address families"
            )));
        }
        let flow = FlowKey::new(src, dst, proto);
        let failed = |e: anyhow::Error| {
            ControlError::Failed(format!("cannot read the datapath's maps: {e:#}"))
        };
        let conntrack = self.datapath.conntrack_lookup(&flow).map_err(failed)?;
        let persistence = match service_of(&self.plan, &flow) {
            Some(svc) if svc.info.persistence_secs > 0 => self
                .datapath
                .persistence_lookup(&lb_common::PersistKey {
                    client: flow.src,
                    service: svc.info.id,
                })
                .map_err(failed)?,
            _ => None,
        };
        let seen = FlowLookups {
            conntrack,
            persistence,
            now_ns: datapath::monotonic_ns(),
        };
        let loads: HashMap<u32, u64> = self
            .plan
            .backends
            .iter()
            .map(|b| (b.id, self.datapath.active_connections(b.id).unwrap_or(0)))
            .collect();
        let active = |id: u32| loads.get(&id).copied().unwrap_or(0);
        Ok(simulate(&self.plan, &self.config, &flow, &seen, &active))
    }

    fn reconcile_conntrack(&mut self) {
        let c = &self.config.conntrack;
        match self.datapath.reconcile(
            c.tcp_timeout.as_nanos() as u64,
            c.udp_timeout.as_nanos() as u64,
        ) {
            Ok(r) => {
                self.conntrack_live = r.live as u64;
                if r.expired > 0 {
                    tracing::debug!(
                        live = r.live,
                        expired = r.expired,
                        "connection table reconciled"
                    );
                }
            }
            Err(e) => tracing::warn!("cannot reconcile the connection table: {e:#}"),
        }
    }

    /// The datapath's counters of every planned service and backend, by id, read in bulk
    /// (`Datapath::counters_upto`); `None` if they cannot be read.
    fn counters_now(&mut self) -> Option<PlanCounters> {
        let services = self.plan.services.iter().map(|s| s.info.id + 1).max();
        let backends = self.plan.backends.iter().map(|b| b.id + 1).max();
        let read = |d: &mut Datapath, map, len: Option<u32>| {
            d.counters_upto(map, len.unwrap_or(0))
                .inspect_err(|e| tracing::warn!("cannot read {map}: {e:#}"))
                .ok()
        };
        Some(PlanCounters {
            services: read(&mut self.datapath, "SERVICE_STATS", services)?,
            backends: read(&mut self.datapath, "BACKEND_STATS", backends)?,
        })
    }

    fn sample_rates(&mut self) {
        let Some(now) = self.counters_now() else {
            return;
        };
        let t = Instant::now();
        if let Some((then, before)) = &self.rates.last {
            let secs = t.duration_since(*then).as_secs_f64();
            let per_id = |now: &[Counters], before: &[Counters]| -> Vec<Rates> {
                now.iter()
                    .enumerate()
                    .map(|(id, c)| {
                        before
                            .get(id)
                            .map_or_else(Rates::default, |b| rates(*b, *c, secs))
                    })
                    .collect()
            };
            self.rates.services = per_id(&now.services, &before.services);
            self.rates.backends = per_id(&now.backends, &before.backends);
        }
        self.rates.last = Some((t, now));
    }

    /// Everything `bascule status` and `/metrics` show, read now.
    fn snapshot(&mut self) -> Snapshot {
        let all = self.counters_now().unwrap_or_default();
        let mut services = Vec::new();
        // Looked up per configured service and backend: indexed once, not searched.
        let planned_services: HashMap<&str, &crate::plan::PlannedService> = self
            .plan
            .services
            .iter()
            .map(|p| (p.name.as_str(), p))
            .collect();
        let planned_backends: HashMap<(&str, IpAddr, u16), &crate::plan::PlannedBackend> = self
            .plan
            .backends
            .iter()
            .map(|b| ((&*b.service, b.address, b.port), b))
            .collect();
        for svc in &self.config.services {
            let planned = planned_services.get(svc.name.as_str()).copied();
            let counters = planned.map(|p| all.service(p.info.id)).unwrap_or_default();
            let rates = planned
                .and_then(|p| self.rates.services.get(p.info.id as usize))
                .copied()
                .unwrap_or_default();
            let inhibit = svc
                .health_check
                .as_ref()
                .is_some_and(|h| h.inhibit_on_failure);
            let mut backends = Vec::new();
            for b in &svc.backends {
                let key = BackendKey {
                    service: svc.name.clone(),
                    address: b.address,
                    port: b.effective_port(svc),
                };
                let planned_b = planned_backends
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
                backends.push(BackendStatus {
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
                    active_connections: planned_b
                        .and_then(|p| self.datapath.active_connections(p.id).ok())
                        .unwrap_or(0),
                    connections: c.new_flows,
                    packets: c.packets,
                    bytes: c.bytes,
                    rates: planned_b
                        .and_then(|p| self.rates.backends.get(p.id as usize))
                        .copied()
                        .unwrap_or_default(),
                });
            }
            services.push(ServiceStatus {
                name: svc.name.clone(),
                vip: svc.vip,
                port: svc.port,
                protocol: svc.protocol.to_string(),
                scheduler: svc.scheduler.to_string(),
                forwarding: svc.forwarding.to_string(),
                persistence: crate::config::format_duration(svc.persistence),
                packets: counters.packets,
                bytes: counters.bytes,
                connections: counters.new_flows,
                rates,
                backends,
            });
        }
        let mut datapath = DatapathStats {
            interfaces: self.interfaces.clone(),
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
        datapath.conntrack_misses = self
            .plan
            .services
            .iter()
            .map(|s| all.service(s.info.id).new_flows)
            .sum();
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_file: self.path.display().to_string(),
            ready: self.ready.load(Ordering::SeqCst),
            reloads: self.reloads.clone(),
            services,
            datapath,
            vrrp: (self.vrrp)(),
        }
    }

    fn stop(&mut self, keep_datapath: bool) {
        self.ready.store(false, Ordering::SeqCst);
        if keep_datapath && self.pins.is_some() {
            let kept = self.datapath.keep_attached();
            tracing::info!(
                interfaces = ?kept,
                "stopping; the datapath keeps forwarding (pinned), the next `bascule run` adopts it"
            );
            return;
        }
        tracing::info!("stopping; removing the datapath");
        self.datapath.detach_all();
        if let Some(pins) = self.pins.take() {
            if let Err(e) = pins.remove() {
                tracing::warn!("cannot remove the pinned state: {e:#}");
            }
        }
    }
}

fn empty_plan() -> Plan {
    Plan {
        settings: Default::default(),
        services: Vec::new(),
        backends: Vec::new(),
    }
}

/// The saved state, if what is pinned can be adopted: it was written in this very network
/// namespace, for the same connection-table size, and every pinned map has the layout this
/// build expects. Otherwise says why it starts over.
fn adoptable_state(pins: &PinDir, conntrack_entries: u32) -> Result<Option<SavedState>> {
    if !pins.has_pins() {
        return Ok(None);
    }
    let why = match pins.read_state() {
        None => "no readable state file".to_string(),
        Some(s) if s.netns_cookie != pins.netns_cookie() => {
            "it was left by a network namespace that no longer exists".to_string()
        }
        Some(s) if s.conntrack_entries != conntrack_entries => format!(
            "conntrack.max_entries changed from {} to {conntrack_entries}",
            s.conntrack_entries
        ),
        Some(s) => {
            let mismatch = datapath::pinned_maps_mismatch(conntrack_entries, pins)?;
            if mismatch.is_empty() {
                tracing::info!(dir = %pins.root().display(), "adopting the pinned datapath");
                return Ok(Some(s));
            }
            format!("its maps differ from this build's: {}", mismatch.join("; "))
        }
    };
    tracing::warn!(
        dir = %pins.root().display(),
        "not adopting the pinned datapath ({why}): starting over, established flows will be rescheduled"
    );
    Ok(None)
}

/// Counters of a plan's services and backends, indexed by id.
#[derive(Default)]
struct PlanCounters {
    services: Vec<Counters>,
    backends: Vec<Counters>,
}

impl PlanCounters {
    fn service(&self, id: u32) -> Counters {
        self.services.get(id as usize).copied().unwrap_or_default()
    }

    fn backend(&self, id: u32) -> Counters {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }
}

/// The node's interfaces and their addresses, as `Config::check_host` reads them.
pub fn host_facts() -> Result<HostFacts> {
    Ok(HostFacts {
        interfaces: host::interfaces::addresses_by_interface()?,
    })
}

/// Host checks of a config, as one error listing every problem.
pub fn check_host(config: &Config, host: &HostFacts) -> Result<()> {
    let errors = config.check_host(host);
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    bail!("{}", lines.join("\n"))
}

fn log_dropped_overrides(dropped: &[(BackendKey, String)]) {
    for (k, why) in dropped {
        tracing::info!(backend = %k, "runtime weight dropped: {why}");
    }
}

fn report_missing(missing: &[IpAddr]) {
    for a in missing {
        tracing::warn!(backend = %a, "no MAC address for dr backend yet (not on this L2 segment?); it takes no flows until it answers ARP/NDP");
    }
}

/// From this many tables built by one plan, the commit hands freed memory back to the
/// system. Below, it leaves it to the allocator: the next reload of a few services
/// allocates about as much again (the file's services, the plan), and memory handed back
/// is faulted in again page by page. At 1,000 x 100, a one-service reload spent about a
/// fifth of its time on that (65 ms with, 51 ms without, median of 20, on the machine of
/// 2026-12-04) for 22 MB (7%) more resident memory.
const TRIM_FROM_TABLES: usize = 64;

/// How many lookup tables `next` built itself: its distinct tables of indexes not taken
/// from the service of the same id in `previous` (a plan reuses the tables whose inputs
/// did not change, and services of one pool share one).
fn tables_built(previous: &Plan, next: &Plan) -> usize {
    let before: HashMap<u32, &crate::plan::Table> = previous
        .services
        .iter()
        .map(|s| (s.info.id, &s.table))
        .collect();
    next.services
        .iter()
        .filter(|s| !before.get(&s.info.id).is_some_and(|t| t.same(&s.table)))
        .map(|s| s.table.indexes().as_ptr())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// A set of backend ids (below `MAX_BACKENDS`): one bit each.
struct IdSet(Vec<u64>);

impl IdSet {
    fn of(ids: impl Iterator<Item = u32>) -> IdSet {
        let mut words = vec![0u64; lb_common::MAX_BACKENDS.div_ceil(64) as usize];
        for id in ids {
            if let Some(w) = words.get_mut(id as usize / 64) {
                *w |= 1 << (id % 64);
            }
        }
        IdSet(words)
    }

    fn contains(&self, id: u32) -> bool {
        self.0
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// Hands the memory a (re)plan freed back to the system: parsing a large file and building
/// its tables on several threads leaves most of it in the allocator's per-thread arenas,
/// which would otherwise count in the daemon's resident size until the next plan. Only
/// after a plan that built many tables (see `TRIM_FROM_TABLES`).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, TunnelSources};

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
}
