//! `bascule simulate`: which backend the datapath gives a flow, and why, with the lookups
//! it makes in its order (service, connection table, persistence, scheduler). Pure: the
//! daemon passes what its maps say about the flow, the offline command nothing.

use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use lb_common::{
    hash::probe_hash, FlowKey, FlowState, PersistState, BACKEND_ACTIVE, MAX_TABLE_PROBES,
    NO_BACKEND,
};
use serde::{Deserialize, Serialize};

use super::{requests::ControlError, snapshot::endpoint, Controller};
use crate::{
    config::{Config, Scheduler},
    datapath,
    plan::{service_for, Plan, PlannedBackend, PlannedService},
};

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
#[derive(Clone, Debug, Default)]
pub struct FlowLookups {
    /// The flow's connection-table entry.
    pub conntrack: Option<FlowState>,
    /// The client's persistence template for the flow's service.
    pub persistence: Option<PersistState>,
    /// The datapath's clock now (`datapath::monotonic_ns`).
    pub now_ns: u64,
    /// Backend ids at their connection threshold now (`max_connections`): no new flows.
    pub overloaded: BTreeSet<u32>,
}

impl SimulateAnswer {
    /// The answer for a flow no service balances.
    fn no_service() -> SimulateAnswer {
        SimulateAnswer {
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
        }
    }

    /// The flow reaches `b`, for `reason`, as `why` explains.
    fn chose(&mut self, reason: &str, b: &PlannedBackend, why: String) {
        self.reason = reason.into();
        self.backend = Some(label(b));
        self.address = Some(b.address);
        self.explanation = format!("{why} -> backend {}", label(b));
    }
}

fn label(b: &PlannedBackend) -> String {
    endpoint(b.address, b.port)
}

/// A plan's backends as the datapath judges them for a flow (and those at their
/// connection threshold).
struct Backends<'p>(&'p Plan, &'p BTreeSet<u32>);

impl<'p> Backends<'p> {
    /// Still serving its established flows: active.
    fn serving(&self, id: u32) -> Option<&'p PlannedBackend> {
        self.0
            .backends
            .iter()
            .find(|b| b.id == id)
            .filter(|b| b.info.flags & BACKEND_ACTIVE != 0)
    }

    /// Taking new flows: active, with a weight, below its connection threshold.
    fn eligible(&self, id: u32) -> Option<&'p PlannedBackend> {
        self.serving(id)
            .filter(|b| b.info.weight > 0 && !self.1.contains(&b.id))
    }
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
    let mut answer = SimulateAnswer::no_service();
    let Some(svc) = service_for(plan, flow) else {
        return answer;
    };
    let cfg = config.services.iter().find(|s| s.name == svc.name);
    let scheduler = cfg.map_or(Scheduler::Mh, |s| s.scheduler);
    answer.service = Some(svc.name.clone());
    answer.scheduler = Some(scheduler.to_string());
    let backends = Backends(plan, &seen.overloaded);
    let prefix = match conntrack(&backends, svc, seen) {
        Conntrack::Hit(b, why) => {
            answer.chose("conntrack", b, why);
            return answer;
        }
        Conntrack::Rescheduled(prefix) => prefix,
    };
    if let Some((b, why)) = persistence(&backends, svc, seen, &prefix) {
        answer.chose("persistence", b, why);
        return answer;
    }
    answer.table_size = Some(svc.table.len() as u32);
    match scheduler_hash(scheduler, flow) {
        Some(hash) => by_slot(&mut answer, &backends, svc, scheduler, hash, &prefix),
        // rr, wrr, lc, wlc, sed, nq, lblc, lblcr.
        None => by_state(&mut answer, &backends, svc, scheduler, &prefix, active),
    }
    answer
}

/// What the connection table says about a flow.
enum Conntrack<'p> {
    /// An established flow of the service, fresh, whose backend still serves.
    Hit(&'p PlannedBackend, String),
    /// Scheduled anew; the start of the explanation says why when there was an entry.
    Rescheduled(String),
}

fn conntrack<'p>(
    backends: &Backends<'p>,
    svc: &PlannedService,
    seen: &FlowLookups,
) -> Conntrack<'p> {
    let Some(st) = seen.conntrack.filter(|s| s.service == svc.info.id) else {
        return Conntrack::Rescheduled(String::new());
    };
    // The service's idle timeout, as the datapath applies it.
    let timeout = Duration::from_nanos(svc.info.idle_timeout_ns);
    let idle = Duration::from_nanos(seen.now_ns.saturating_sub(st.last_seen));
    match backends.serving(st.backend) {
        Some(b) if timeout.is_zero() || idle <= timeout => {
            let why = format!(
                "conntrack hit: established flow of service {}, last packet {}s ago",
                svc.name,
                idle.as_secs()
            );
            Conntrack::Hit(b, why)
        }
        Some(b) => Conntrack::Rescheduled(format!(
            "conntrack entry for {} idle past its timeout ({}s); rescheduled: ",
            label(b),
            timeout.as_secs()
        )),
        None => Conntrack::Rescheduled(
            "conntrack entry points at a backend that no longer serves; rescheduled: ".to_string(),
        ),
    }
}

/// The client's persistence template, if fresh and its backend takes new flows.
fn persistence<'p>(
    backends: &Backends<'p>,
    svc: &PlannedService,
    seen: &FlowLookups,
    prefix: &str,
) -> Option<(&'p PlannedBackend, String)> {
    if svc.info.persistence_secs == 0 {
        return None;
    }
    let t = seen.persistence?;
    let age = Duration::from_nanos(seen.now_ns.saturating_sub(t.last_seen));
    if age.as_secs() > u64::from(svc.info.persistence_secs) {
        return None;
    }
    let b = backends.eligible(t.backend)?;
    let why = format!(
        "{prefix}persistence: this client was sent to it {}s ago (persistence {}s)",
        age.as_secs(),
        svc.info.persistence_secs
    );
    Some((b, why))
}

/// The hash a hashing scheduler (mh, sh, dh) takes the flow's slot by; `None` for the
/// schedulers that decide from the moment's state.
fn scheduler_hash(scheduler: Scheduler, flow: &FlowKey) -> Option<u32> {
    match scheduler {
        Scheduler::Mh => {
            let ports = lb_common::hash::ports_word(flow.sport, flow.dport);
            Some(lb_common::hash::flow_hash(
                &flow.src, &flow.dst, ports, flow.proto,
            ))
        }
        Scheduler::Sh => Some(lb_common::hash::addr_hash(&flow.src)),
        Scheduler::Dh => Some(lb_common::hash::addr_hash(&flow.dst)),
        _ => None,
    }
}

/// A hashing scheduler's answer: the backend in the flow's slot of the service's table.
fn by_slot(
    answer: &mut SimulateAnswer,
    backends: &Backends,
    svc: &PlannedService,
    scheduler: Scheduler,
    hash: u32,
    prefix: &str,
) {
    let table_size = svc.table.len() as u32;
    answer.hash = Some(hash);
    let slot = (table_size > 0).then(|| hash % table_size);
    answer.slot = slot;
    let mut id = slot
        .and_then(|s| svc.table.get(s as usize))
        .unwrap_or(NO_BACKEND);
    let mut handed = String::new();
    if backends.1.contains(&id) {
        // The datapath's hand-over: the first other slot whose backend is below its
        // threshold, by the same probe hashes.
        let other = (0..MAX_TABLE_PROBES)
            .map(|i| probe_hash(hash, i) % table_size)
            .find(|&s| {
                svc.table
                    .get(s as usize)
                    .is_some_and(|b| !backends.1.contains(&b))
            });
        handed = format!(
            " (at its connection threshold: {})",
            match other {
                Some(s) => format!("handed over to slot {s}"),
                None => "no other slot's backend is below its threshold".into(),
            }
        );
        id = other
            .and_then(|s| svc.table.get(s as usize))
            .unwrap_or(NO_BACKEND);
    }
    let what = match scheduler {
        Scheduler::Sh => "source hash",
        Scheduler::Dh => "destination hash",
        _ => "hash",
    };
    match backends.eligible(id) {
        Some(b) => {
            let why = format!(
                "{prefix}new flow of service {}: {scheduler} {what} {hash:#010x}, slot {} of {table_size}{handed}",
                svc.name,
                slot.unwrap_or(0)
            );
            answer.chose("scheduler", b, why);
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
}

/// The answer of a scheduler that decides at the first packet from a rotation or the
/// loads: the backends one of which the flow gets.
fn by_state(
    answer: &mut SimulateAnswer,
    backends: &Backends,
    svc: &PlannedService,
    scheduler: Scheduler,
    prefix: &str,
    active: &dyn Fn(u32) -> u64,
) {
    let how = match scheduler {
        Scheduler::Rr | Scheduler::Wrr => "the next turn of its rotation",
        _ => "the backends' active connections at that moment",
    };
    answer.candidates = svc
        .table
        .iter()
        .filter_map(|id| backends.eligible(id))
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

impl Controller {
    pub(super) fn simulate(
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
        let persistence = match service_for(&self.plan, &flow) {
            Some(svc) if svc.info.persistence_secs > 0 => self
                .datapath
                .persistence_lookup(&lb_common::PersistKey {
                    client: flow.src,
                    service: svc.info.id,
                })
                .map_err(failed)?,
            _ => None,
        };
        let loads: HashMap<u32, u64> = self
            .plan
            .backends
            .iter()
            .map(|b| (b.id, self.datapath.active_connections(b.id).unwrap_or(0)))
            .collect();
        let overloaded = self
            .plan
            .backends
            .iter()
            .filter(|b| b.info.max_conns != 0)
            .filter(|b| {
                let was = self.datapath.overload_state(b.id).is_ok_and(|(was, _)| was);
                b.info
                    .overloaded(was, loads.get(&b.id).copied().unwrap_or(0))
            })
            .map(|b| b.id)
            .collect();
        let seen = FlowLookups {
            conntrack,
            persistence,
            now_ns: datapath::monotonic_ns(),
            overloaded,
        };
        let active = |id: u32| loads.get(&id).copied().unwrap_or(0);
        Ok(simulate(&self.plan, &self.config, &flow, &seen, &active))
    }
}
