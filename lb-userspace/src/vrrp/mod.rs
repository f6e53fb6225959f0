//! VRRP: floating virtual addresses between load-balancer nodes, interoperable with
//! keepalived. VRRPv3 (RFC 5798) for IPv4 and IPv6, VRRPv2 (RFC 3768) with `pass`
//! authentication.
//!
//! | module | what |
//! |---|---|
//! | [`packet`] | adverts on the wire, checksums, the receive checks and their reasons |
//! | [`state`] | the RFC state machine, pure, with an injected clock |
//! | `instance` | one instance's I/O loop around the state machine |
//! | `socket` | raw IP sockets (protocol 112), TTL 255 |
//! | [`garp`] | gratuitous ARP and unsolicited neighbour advertisements |
//! | `addr` | rtnetlink: interfaces, virtual addresses, link events |
//! | `notify` | keepalived-style notify scripts |
//! | [`script`] | track scripts: runs, rise and fall, the effective priority (pure) |
//! | [`sync`] | sync groups: which members follow a member's change (pure), and the hub |
//!
//! [`Vrrp`] runs the instances of a config as tasks on the current tokio runtime and
//! publishes a [`VrrpStatus`] per instance on a [`StatusBoard`] (for the API, metrics and
//! `bascule status`); the daemon (`daemon::serve`) runs it on its own runtime.

pub mod addr;
pub mod garp;
mod instance;
mod notify;
pub mod packet;
pub mod script;
pub mod socket;
pub mod state;
pub mod sync;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

pub use packet::Invalid;
pub use script::{ScriptState, TrackedScript};
pub use state::State;

use crate::config::{Config, IpPrefix, VrrpInstance, VrrpScript};
use addr::{LinkStates, Netlink};
use instance::{Control, Prepared, Shared};

/// How long a stopping instance may take (priority-0 advert, addresses removed, notify
/// scripts) before it is abandoned.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What `bascule status`, `GET /api/v1/vrrp` and the `bascule_vrrp_*` metrics show for
/// one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VrrpStatus {
    pub instance: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub version: u8,
    /// The effective priority: the configured one moved by weighted track scripts.
    pub priority: u8,
    pub configured_priority: u8,
    /// The tracked scripts, in the configured order, with their current states.
    pub scripts: Vec<TrackedScript>,
    pub sync_group: Option<String>,
    pub state: State,
    /// The current master's address as this node knows it (its own when Master); none
    /// while unknown (Initialize, Fault, a Backup that has heard no master yet).
    pub master: Option<IpAddr>,
    /// This node's address in its adverts.
    pub source_address: IpAddr,
    pub virtual_addresses: Vec<IpPrefix>,
    pub advert_interval_ms: u64,
    pub master_down_interval_ms: u64,
    /// `bascule_vrrp_transitions_total{instance,to}`: transitions into each state.
    pub transitions: BTreeMap<State, u64>,
    /// `bascule_vrrp_adverts_received_total{instance}`: valid adverts for this instance.
    pub adverts_received: u64,
    /// `bascule_vrrp_adverts_invalid_total{instance,reason}`, by [`Invalid::label`].
    pub adverts_invalid: BTreeMap<String, u64>,
}

/// The instances' statuses, shared between the instances (writers) and readers.
#[derive(Clone, Debug, Default)]
pub struct StatusBoard(Arc<Mutex<BTreeMap<String, VrrpStatus>>>);

impl StatusBoard {
    /// Every instance, by name.
    pub fn snapshot(&self) -> Vec<VrrpStatus> {
        self.0
            .lock()
            .expect("status board")
            .values()
            .cloned()
            .collect()
    }

    fn update(&self, instance: &str, f: impl FnOnce(&mut VrrpStatus)) {
        if let Some(s) = self.0.lock().expect("status board").get_mut(instance) {
            f(s);
        }
    }

    fn insert_keeping_counters(&self, mut fresh: VrrpStatus) {
        let mut board = self.0.lock().expect("status board");
        if let Some(old) = board.get(&fresh.instance) {
            fresh.transitions = old.transitions.clone();
            fresh.adverts_received = old.adverts_received;
            fresh.adverts_invalid = old.adverts_invalid.clone();
        }
        board.insert(fresh.instance.clone(), fresh);
    }

    fn remove(&self, instance: &str) {
        self.0.lock().expect("status board").remove(instance);
    }
}

/// The VRRP part of `bascule status`: one line per instance, in the spirit of
/// `ipvsadm -L -n`.
pub fn status_table(statuses: &[VrrpStatus]) -> String {
    let mut out = String::from(
        "VRRP instance    interface  vrid ver prio state    master                    adverts invalid virtual addresses\n",
    );
    for s in statuses {
        let invalid: u64 = s.adverts_invalid.values().sum();
        let vips: Vec<String> = s
            .virtual_addresses
            .iter()
            .map(ToString::to_string)
            .collect();
        let _ = writeln!(
            out,
            "{:<16} {:<10} {:>4} {:>3} {:>4} {:<8} {:<25} {:>7} {:>7} {}",
            s.instance,
            s.interface,
            s.virtual_router_id,
            s.version,
            s.priority,
            s.state.keepalived_name(),
            s.master.map_or_else(|| "-".to_string(), |m| m.to_string()),
            s.adverts_received,
            invalid,
            vips.join(" ")
        );
    }
    out
}

/// One instance as it runs: its configuration, the scripts it tracks (in its order), its
/// sync group. An instance restarts on a reload when any of them changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    config: VrrpInstance,
    scripts: Vec<VrrpScript>,
    group: Option<String>,
}

impl Spec {
    /// Every instance of `config` (whose references the parser checked).
    fn all(config: &Config) -> Vec<Spec> {
        config
            .vrrp
            .iter()
            .map(|i| Spec {
                config: i.clone(),
                scripts: i
                    .track_scripts
                    .iter()
                    .filter_map(|n| config.vrrp_scripts.iter().find(|s| s.name == *n))
                    .cloned()
                    .collect(),
                group: config
                    .sync_groups
                    .iter()
                    .find(|g| g.instances.contains(&i.name))
                    .map(|g| g.name.clone()),
            })
            .collect()
    }
}

struct RunningScript {
    script: VrrpScript,
    task: JoinHandle<()>,
}

struct Running {
    spec: Spec,
    siblings: Vec<u8>,
    control: mpsc::Sender<Control>,
    task: JoinHandle<()>,
}

/// The instances of a config, running as tasks on the current tokio runtime.
pub struct Vrrp {
    netlink: Netlink,
    links: LinkStates,
    running: BTreeMap<String, Running>,
    board: StatusBoard,
    /// The track scripts some instance tracks, by name, and their published states.
    scripts: BTreeMap<String, RunningScript>,
    script_states: watch::Sender<BTreeMap<String, ScriptState>>,
    hub: sync::Hub,
}

impl Vrrp {
    /// Starts every instance. Must be called from within a tokio runtime. Fails, with
    /// nothing left running, if an instance cannot start (interface missing, no address,
    /// no permission for raw sockets).
    pub async fn start(config: &Config) -> Result<Vrrp> {
        let netlink = Netlink::connect()?;
        let links = addr::watch_links(&netlink).await?;
        let mut vrrp = Vrrp {
            netlink,
            links,
            running: BTreeMap::new(),
            board: StatusBoard::default(),
            scripts: BTreeMap::new(),
            script_states: watch::Sender::new(BTreeMap::new()),
            hub: sync::Hub::default(),
        };
        if let Err(e) = vrrp.reconfigure(config).await {
            vrrp.stop().await;
            return Err(e);
        }
        Ok(vrrp)
    }

    /// Applies a new configuration: unchanged instances keep running untouched (told of
    /// their new siblings); changed and removed ones stop (a master hands over with
    /// priority 0), then the track scripts are brought up to date (a changed script
    /// restarts, and so do the instances tracking it), then changed and new instances
    /// start. On error the instances started so far keep running.
    pub async fn reconfigure(&mut self, config: &Config) -> Result<()> {
        let instances = &config.vrrp;
        let specs = Spec::all(config);
        let wanted: BTreeMap<&str, (&Spec, Vec<u8>)> = specs
            .iter()
            .map(|s| {
                let i = &s.config;
                (i.name.as_str(), (s, siblings(i, instances)))
            })
            .collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                wanted
                    .get(name.as_str())
                    .is_none_or(|(spec, _)| **spec != r.spec)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            if let Some(r) = self.running.remove(name) {
                stop_one(name, r).await;
            }
            if !wanted.contains_key(name.as_str()) {
                self.board.remove(name);
            }
        }
        self.update_scripts(&specs);
        for (name, (spec, sibs)) in wanted {
            if let Some(r) = self.running.get_mut(name) {
                if r.siblings != sibs {
                    r.siblings = sibs.clone();
                    let _ = r.control.send(Control::Siblings(sibs)).await;
                }
                continue;
            }
            let prepared = Prepared::new(spec, sibs.clone(), &self.netlink)
                .await
                .with_context(|| format!("vrrp instance {name}"))?;
            let (control, rx) = mpsc::channel(1);
            let shared = Shared {
                links: self.links.clone(),
                scripts: self.script_states.subscribe(),
                hub: self.hub.clone(),
                board: self.board.clone(),
            };
            let task = tokio::spawn(instance::run(prepared, rx, shared));
            self.running.insert(
                name.to_string(),
                Running {
                    spec: spec.clone(),
                    siblings: sibs,
                    control,
                    task,
                },
            );
        }
        Ok(())
    }

    /// Runs the scripts `specs` track (each once, whoever tracks it), stopping the ones no
    /// longer tracked or changed. A changed script starts again from no result.
    fn update_scripts(&mut self, specs: &[Spec]) {
        let mut wanted: BTreeMap<&str, &VrrpScript> = BTreeMap::new();
        for s in specs.iter().flat_map(|s| &s.scripts) {
            wanted.insert(s.name.as_str(), s);
        }
        let states = &self.script_states;
        self.scripts.retain(|name, r| {
            let keep = wanted.get(name.as_str()) == Some(&&r.script);
            if !keep {
                r.task.abort();
                states.send_modify(|m| {
                    m.remove(name);
                });
            }
            keep
        });
        for (name, script) in wanted {
            if !self.scripts.contains_key(name) {
                let task = script::spawn(script.clone(), self.script_states.clone());
                let script = script.clone();
                self.scripts
                    .insert(name.to_string(), RunningScript { script, task });
            }
        }
    }

    /// Stops every instance (masters send priority 0 and remove their addresses), then
    /// the track scripts.
    pub async fn stop(mut self) {
        let running = std::mem::take(&mut self.running);
        let stops = running
            .into_iter()
            .map(|(name, r)| async move { stop_one(&name, r).await });
        futures::future::join_all(stops).await;
        for (_, r) in std::mem::take(&mut self.scripts) {
            r.task.abort();
        }
    }

    pub fn status(&self) -> Vec<VrrpStatus> {
        self.board.snapshot()
    }

    /// A handle on the statuses that stays current, for readers elsewhere (API, metrics).
    pub fn board(&self) -> StatusBoard {
        self.board.clone()
    }
}

async fn stop_one(name: &str, r: Running) {
    let _ = r.control.send(Control::Stop).await;
    let mut task = r.task;
    if tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_err() {
        tracing::error!(
            instance = name,
            "did not stop within {STOP_TIMEOUT:?}; abandoned"
        );
        task.abort();
    }
}

/// Router ids of the other instances on the same interface and address family.
fn siblings(me: &VrrpInstance, all: &[VrrpInstance]) -> Vec<u8> {
    let family = |i: &VrrpInstance| i.virtual_addresses.iter().any(|p| p.addr.is_ipv6());
    let mut v: Vec<u8> = all
        .iter()
        .filter(|o| o.name != me.name && o.interface == me.interface && family(o) == family(me))
        .map(|o| o.virtual_router_id)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, state: State) -> VrrpStatus {
        VrrpStatus {
            instance: name.into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            version: 3,
            priority: 150,
            configured_priority: 150,
            scripts: Vec::new(),
            sync_group: None,
            state,
            master: Some("10.0.0.2".parse().unwrap()),
            source_address: "10.0.0.2".parse().unwrap(),
            virtual_addresses: vec!["10.0.0.100/24".parse().unwrap()],
            advert_interval_ms: 1000,
            master_down_interval_ms: 3414,
            transitions: [(State::Backup, 1), (State::Master, 1)].into(),
            adverts_received: 7,
            adverts_invalid: [("checksum".to_string(), 2)].into(),
        }
    }

    #[test]
    fn status_serializes_for_the_api() {
        let json = serde_json::to_value(status("VI_1", State::Backup)).unwrap();
        assert_eq!(json["state"], "backup");
        assert_eq!(json["transitions"]["master"], 1);
        assert_eq!(json["adverts_invalid"]["checksum"], 2);
        assert_eq!(json["virtual_addresses"][0], "10.0.0.100/24");
        assert_eq!(json["master"], "10.0.0.2");
    }

    #[test]
    fn status_table_has_a_line_per_instance() {
        let t = status_table(&[status("VI_1", State::Master), status("VI_2", State::Backup)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].starts_with("VI_1 ") && lines[1].contains(" MASTER "),
            "{t}"
        );
        assert!(
            lines[2].contains(" BACKUP ") && lines[2].ends_with("10.0.0.100/24"),
            "{t}"
        );
    }

    #[test]
    fn the_shipped_example_is_a_valid_vrrp_pair() {
        let c = crate::config::Config::parse(
            include_str!("../../../deploy/examples/vrrp-pair.yaml"),
            "vrrp-pair.yaml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.unsupported().is_empty());
        assert_eq!(c.vrrp.len(), 2);
        assert_eq!(c.vrrp[0].preempt_delay, Duration::from_secs(30));
        assert_eq!(siblings(&c.vrrp[0], &c.vrrp), vec![52]);
    }

    /// An instance runs with the scripts it tracks, in its order, and its group: a change
    /// of either restarts it on a reload.
    #[test]
    fn an_instance_runs_with_its_scripts_and_group() {
        let c = crate::config::Config::parse(
            "node:\n  interfaces: [{name: eth0}]\nvrrp:\n\
             - {name: a, interface: eth0, virtual_router_id: 1, virtual_addresses: [10.0.0.1], track_scripts: [y, x]}\n\
             - {name: b, interface: eth0, virtual_router_id: 2, virtual_addresses: [10.0.0.2]}\n\
             vrrp_scripts:\n  - {name: x, script: 'true'}\n  - {name: y, script: 'false'}\n\
             sync_groups:\n  - {name: G, instances: [b, a]}\n",
            "t.yaml",
        )
        .unwrap();
        let specs = Spec::all(&c);
        let names: Vec<&str> = specs[0].scripts.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["y", "x"]);
        assert_eq!(specs[0].group.as_deref(), Some("G"));
        assert!(specs[1].scripts.is_empty());
        let mut changed = c.clone();
        changed.vrrp_scripts[0].interval = Duration::from_secs(5);
        let again = Spec::all(&changed);
        assert_ne!(again[0], specs[0], "a tracked script changed");
        assert_eq!(again[1], specs[1]);
    }

    #[test]
    fn siblings_share_interface_and_family() {
        let c = crate::config::Config::parse(
            "node:\n  interfaces: [{name: eth0}]\nvrrp:\n\
             - {name: a, interface: eth0, virtual_router_id: 1, virtual_addresses: [10.0.0.1]}\n\
             - {name: b, interface: eth0, virtual_router_id: 2, virtual_addresses: [10.0.0.2]}\n\
             - {name: c, interface: eth0, virtual_router_id: 3, virtual_addresses: ['fd00::1']}\n\
             - {name: d, interface: eth1, virtual_router_id: 4, virtual_addresses: [10.0.0.4]}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(siblings(&c.vrrp[0], &c.vrrp), vec![2]);
        assert_eq!(siblings(&c.vrrp[2], &c.vrrp), Vec::<u8>::new());
    }
}
