//! One running instance: the I/O shell around [`Machine`]. It feeds the machine received
//! adverts, timer expiries, link changes, its track scripts' states (as its effective
//! priority and fault) and its sync group's events, carries out the actions it returns
//! (sockets, rtnetlink, notify scripts), tells its sync group of its transitions and
//! faults, and keeps the instance's entry on the status board current.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tokio::sync::mpsc;

use super::{
    addr::{LinkStates, Netlink},
    garp::Announcer,
    notify::Notifier,
    packet::{self, Advert, Auth, Expected, Verdict, Version, MULTICAST_V4, MULTICAST_V6},
    script::{tracked, ScriptState, ScriptStates, TrackedScript},
    socket::{Inbound, VrrpSocket},
    state::{Action, Event, Machine, Received, Settings, State},
    sync::{Hub, Member, Report},
    Spec, StatusBoard, VrrpStatus,
};
use crate::{
    config::{VrrpAuthType, VrrpInstance, VrrpScript},
    host::addresses::primary_address,
};

/// How long a stopping instance waits for its notify scripts.
const NOTIFY_DRAIN: Duration = Duration::from_secs(5);

pub(super) enum Control {
    /// The node's other instances on this interface and family changed (a reload).
    Siblings(Vec<u8>),
    Stop,
}

/// An instance ready to run: everything that can fail at start (interface, addresses,
/// sockets) is done.
pub(super) struct Prepared {
    config: VrrpInstance,
    scripts: Vec<VrrpScript>,
    group: Option<String>,
    version: Version,
    ifindex: u32,
    primary: IpAddr,
    destinations: Vec<IpAddr>,
    vips: Vec<IpAddr>,
    siblings: Vec<u8>,
    auth: Auth,
    socket: VrrpSocket,
    announcer: Announcer,
    netlink: Netlink,
}

impl Prepared {
    /// Looks the interface up, finds the advert source address, removes virtual addresses
    /// a previous run left behind, and opens the sockets.
    pub(super) async fn new(spec: &Spec, siblings: Vec<u8>, netlink: &Netlink) -> Result<Prepared> {
        let config = &spec.config;
        let name = &config.name;
        let link = netlink.link(&config.interface).await?;
        let Some(mac) = link.mac else {
            bail!(
                "interface {} has no MAC address: VRRP needs an Ethernet interface",
                config.interface
            );
        };
        let v6 = config.virtual_addresses.iter().any(|p| p.addr.is_ipv6());
        let vips: Vec<IpAddr> = config.virtual_addresses.iter().map(|p| p.addr).collect();
        let own = netlink.addresses(link.index).await?;
        let primary = primary_address(own.iter().map(|p| p.addr), &vips, v6, &config.unicast_peers)
            .with_context(|| {
                let kind = if v6 {
                    "IPv6 link-local (global, for global unicast peers)"
                } else {
                    "IPv4"
                };
                format!(
                    "interface {iface} has no {kind} address other than the virtual addresses to \
                 send adverts from; add one (`ip addr add ... dev {iface}`)",
                    iface = config.interface
                )
            })?;
        for vip in &vips {
            if netlink.remove_address(link.index, *vip).await? {
                tracing::warn!(
                    instance = %name,
                    address = %vip,
                    "removed a virtual address left on {} (a previous run ended without releasing it)",
                    config.interface
                );
            }
        }
        let multicast = config.unicast_peers.is_empty();
        let socket =
            VrrpSocket::open(&config.interface, link.index, v6, multicast).with_context(|| {
                format!(
                    "cannot open the VRRP socket on {} (needs root or CAP_NET_RAW)",
                    config.interface
                )
            })?;
        let announcer = Announcer::open(link.index, mac, v6)
            .context("cannot open the socket for gratuitous ARP / neighbour advertisements")?;
        let destinations = if multicast {
            vec![if v6 {
                IpAddr::V6(MULTICAST_V6)
            } else {
                IpAddr::V4(MULTICAST_V4)
            }]
        } else {
            config.unicast_peers.clone()
        };
        let auth = match &config.authentication {
            Some(a) if a.kind == VrrpAuthType::Pass => Auth::pass(&a.password),
            Some(_) => bail!("only `pass` authentication is supported"),
            None => Auth::None,
        };
        Ok(Prepared {
            version: Version::from_number(config.version).context("VRRP version 2 or 3")?,
            config: config.clone(),
            scripts: spec.scripts.clone(),
            group: spec.group.clone(),
            ifindex: link.index,
            primary,
            destinations,
            vips,
            siblings,
            auth,
            socket,
            announcer,
            netlink: netlink.clone(),
        })
    }

    fn settings(&self) -> Settings {
        let c = &self.config;
        Settings {
            version: self.version,
            priority: c.priority,
            advert_interval: c.advert_interval,
            preempt: c.preempt,
            preempt_delay: c.preempt_delay,
            primary_address: self.primary,
            garp_repeat: c.garp.repeat,
            garp_interval: c.garp.interval,
            garp_refresh: c.garp.refresh,
        }
    }
}

/// What an instance runs with beside its own configuration: the link states, the track
/// scripts' states and the sync groups.
pub(super) struct Shared {
    pub(super) links: LinkStates,
    pub(super) scripts: ScriptStates,
    pub(super) hub: Hub,
    pub(super) board: StatusBoard,
}

/// Runs until told to stop (or until `control` is dropped), then shuts down as the RFC
/// says: priority 0 if Master, addresses removed.
pub(super) async fn run(p: Prepared, mut control: mpsc::Receiver<Control>, shared: Shared) {
    let Shared {
        mut links,
        mut scripts,
        hub,
        board,
    } = shared;
    let name = p.config.name.clone();
    let mut watched = vec![p.config.interface.clone()];
    watched.extend(p.config.track_interfaces.iter().cloned());
    let (member, mut group_events) = match &p.group {
        Some(group) => {
            let (member, rx) = hub.join(group, &name);
            (Some(member), Some(rx))
        }
        None => (None, None),
    };
    let mut runner = Runner {
        machine: Machine::new(p.settings()),
        notifier: Notifier::spawn(&name),
        send_errors: 0,
        p,
        board,
        member,
        links_up: true,
        scripts_up: None,
        own_fault: false,
        started: false,
        tracked: Vec::new(),
    };
    runner.init_status();
    runner.links_up = all_up(&links.borrow(), &watched);
    if !runner.links_up {
        tracing::warn!(instance = %name, "down: {}", down_list(&links.borrow(), &watched));
    }
    runner
        .event(Event::Links {
            up: runner.links_up,
        })
        .await;
    // What the group says at once (another member in fault) comes before the start.
    while let Some(event) = group_events.as_mut().and_then(|rx| rx.try_recv().ok()) {
        runner.event(event).await;
    }
    let states = scripts.borrow_and_update().clone();
    runner.scripts_changed(&states).await;
    if !runner.started {
        tracing::info!(instance = %name, "waiting for the first result of its track scripts of weight 0");
    }
    let mut watching = true;
    let mut watching_scripts = true;
    loop {
        let deadline = runner.machine.next_deadline();
        let timer = async move {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let group_event = async {
            match group_events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = runner.p.socket.recv() => match received {
                Ok(inbound) => runner.on_packet(inbound).await,
                Err(e) => {
                    tracing::warn!(instance = %name, "cannot receive adverts: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            () = timer => {
                let actions = runner.machine.on_timer(Instant::now());
                runner.execute(actions).await;
            }
            changed = links.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                    continue;
                }
                let up = all_up(&links.borrow_and_update(), &watched);
                if up != runner.links_up {
                    runner.links_up = up;
                    if up {
                        tracing::info!(instance = %name, "tracked interfaces up: {}", watched.join(", "));
                    } else {
                        tracing::warn!(instance = %name, "down: {}", down_list(&links.borrow(), &watched));
                    }
                    runner.event(Event::Links { up }).await;
                    runner.report_fault();
                }
            }
            changed = scripts.changed(), if watching_scripts => {
                if changed.is_err() {
                    watching_scripts = false;
                    continue;
                }
                let states = scripts.borrow_and_update().clone();
                runner.scripts_changed(&states).await;
            }
            Some(event) = group_event => runner.event(event).await,
            command = control.recv() => match command {
                Some(Control::Siblings(ids)) => runner.p.siblings = ids,
                Some(Control::Stop) | None => break,
            }
        }
        runner.publish();
    }
    runner.event(Event::Shutdown).await;
    runner.publish();
    // Leaves the group (a fault of its own ends for the others) before the scripts drain.
    drop(runner.member.take());
    runner.notifier.finish(NOTIFY_DRAIN).await;
}

fn all_up(states: &BTreeMap<String, bool>, watched: &[String]) -> bool {
    watched
        .iter()
        .all(|n| states.get(n).copied().unwrap_or(false))
}

fn down_list(states: &BTreeMap<String, bool>, watched: &[String]) -> String {
    watched
        .iter()
        .filter(|n| !states.get(*n).copied().unwrap_or(false))
        .map(|n| {
            if states.contains_key(n) {
                format!("{n} (down)")
            } else {
                format!("{n} (missing)")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

struct Runner {
    p: Prepared,
    machine: Machine,
    notifier: Notifier,
    board: StatusBoard,
    send_errors: u64,
    /// Its place in its sync group, if any.
    member: Option<Member>,
    links_up: bool,
    /// Whether its scripts of weight 0 succeed; `None` until each has a result.
    scripts_up: Option<bool>,
    /// What the group was last told.
    own_fault: bool,
    /// Startup happened (it waits for the scripts of weight 0).
    started: bool,
    tracked: Vec<TrackedScript>,
}

impl Runner {
    /// New states of the track scripts: the effective priority, the fault, and the start
    /// once every script of weight 0 has a result.
    async fn scripts_changed(&mut self, states: &BTreeMap<String, ScriptState>) {
        self.tracked = self
            .p
            .scripts
            .iter()
            .map(|s| TrackedScript {
                name: s.name.clone(),
                weight: s.weight,
                state: states.get(&s.name).copied().unwrap_or(ScriptState::Unknown),
            })
            .collect();
        let t = tracked(self.p.config.priority, &self.tracked);
        let before = self.machine.settings().priority;
        if t.priority != before {
            tracing::info!(
                instance = %self.p.config.name,
                "effective priority {before} -> {} (track scripts)",
                t.priority
            );
            self.event(Event::Priority(t.priority)).await;
        }
        if let Some(up) = t.scripts_up {
            if self.scripts_up != Some(up) {
                if !up {
                    tracing::warn!(instance = %self.p.config.name, "a track script of weight 0 fails: FAULT");
                }
                self.event(Event::Scripts { up }).await;
            }
        }
        self.scripts_up = t.scripts_up;
        self.report_fault();
        if !self.started && self.scripts_up.is_some() {
            self.started = true;
            self.event(Event::Startup).await;
        }
    }

    /// Tells the sync group when the instance's own fault starts or ends.
    fn report_fault(&mut self) {
        let fault = !self.links_up || self.scripts_up == Some(false);
        if fault != self.own_fault {
            self.own_fault = fault;
            if let Some(m) = &self.member {
                m.report(Report::OwnFault(fault));
            }
        }
    }

    async fn event(&mut self, event: Event) {
        let actions = self.machine.handle(Instant::now(), event);
        self.execute(actions).await;
    }

    async fn on_packet(&mut self, inbound: Inbound) {
        if inbound.source == self.p.primary {
            return;
        }
        let expected = Expected {
            version: self.p.version,
            vrid: self.p.config.virtual_router_id,
            sibling_vrids: &self.p.siblings,
            addresses: &self.p.vips,
            interval: self.p.config.advert_interval,
            auth: self.p.auth,
            peers: &self.p.config.unicast_peers,
        };
        let verdict = packet::check(
            inbound.ttl,
            inbound.source,
            inbound.destination,
            &inbound.message,
            &expected,
        );
        match verdict {
            Verdict::Accept(advert) => {
                self.board
                    .update(&self.p.config.name, |s| s.adverts_received += 1);
                let received = Received {
                    source: inbound.source,
                    priority: advert.priority,
                    interval: advert.interval,
                };
                self.event(Event::Advert(received)).await;
            }
            Verdict::Ignore => {}
            Verdict::Invalid(why) => {
                let mut count = 0;
                self.board.update(&self.p.config.name, |s| {
                    let n = s
                        .adverts_invalid
                        .entry(why.label().to_string())
                        .or_default();
                    *n += 1;
                    count = *n;
                });
                // The first of each reason, then one in a thousand: a misconfigured
                // neighbour must not flood the log.
                if count == 1 || count.is_multiple_of(1000) {
                    tracing::warn!(
                        instance = %self.p.config.name,
                        from = %inbound.source,
                        reason = why.label(),
                        count,
                        "invalid advert dropped"
                    );
                }
            }
        }
    }

    async fn execute(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::AddAddresses => {
                    for vip in &self.p.config.virtual_addresses {
                        if let Err(e) = self.p.netlink.add_address(self.p.ifindex, *vip).await {
                            tracing::error!(instance = %self.p.config.name, "{e:#}");
                        }
                    }
                }
                Action::RemoveAddresses => {
                    for vip in &self.p.vips {
                        if let Err(e) = self.p.netlink.remove_address(self.p.ifindex, *vip).await {
                            tracing::error!(instance = %self.p.config.name, "{e:#}");
                        }
                    }
                }
                Action::SendAdvert { priority } => self.send_advert(priority),
                Action::SendGarp => {
                    for vip in &self.p.vips {
                        if let Err(e) = self.p.announcer.announce(*vip) {
                            tracing::warn!(instance = %self.p.config.name, address = %vip, "cannot announce: {e}");
                        }
                    }
                }
                Action::Transition { from, to } => self.transition(from, to),
            }
        }
    }

    fn send_advert(&mut self, priority: u8) {
        let advert = Advert {
            version: self.p.version,
            vrid: self.p.config.virtual_router_id,
            priority,
            interval: self.p.config.advert_interval,
            addresses: self.p.vips.clone(),
            auth: self.p.auth,
        };
        for &to in &self.p.destinations {
            let bytes = advert.encode(self.p.primary, to);
            if let Err(e) = self.p.socket.send(self.p.primary, to, &bytes) {
                self.send_errors += 1;
                if self.send_errors == 1 || self.send_errors.is_multiple_of(1000) {
                    tracing::warn!(
                        instance = %self.p.config.name,
                        to = %to,
                        failures = self.send_errors,
                        "cannot send advert: {e}"
                    );
                }
            }
        }
    }

    fn transition(&mut self, from: State, to: State) {
        let c = &self.p.config;
        let priority = self.machine.settings().priority;
        tracing::info!(
            instance = %c.name,
            priority,
            master = ?self.machine.master(),
            "VRRP {} -> {}",
            from.keepalived_name(),
            to.keepalived_name()
        );
        self.board.update(&c.name, |s| {
            *s.transitions.entry(to).or_default() += 1;
        });
        let script = match to {
            State::Master => &c.notify.master,
            State::Backup => &c.notify.backup,
            State::Fault => &c.notify.fault,
            State::Initialize => &None,
        };
        if let Some(script) = script {
            self.notifier.call(script, &c.name, to, priority);
        }
        if let Some(m) = &self.member {
            m.report(Report::Transition { from, to });
        }
    }

    /// A fresh entry, keeping the counters of an earlier run of the same instance (a
    /// reload that changed it), as Prometheus counters must not go back.
    fn init_status(&self) {
        let c = &self.p.config;
        let fresh = VrrpStatus {
            instance: c.name.clone(),
            interface: c.interface.clone(),
            virtual_router_id: c.virtual_router_id,
            version: c.version,
            priority: c.priority,
            configured_priority: c.priority,
            scripts: Vec::new(),
            sync_group: self.p.group.clone(),
            state: State::Initialize,
            master: None,
            source_address: self.p.primary,
            virtual_addresses: c.virtual_addresses.clone(),
            advert_interval_ms: c.advert_interval.as_millis() as u64,
            master_down_interval_ms: self.machine.master_down_interval().as_millis() as u64,
            transitions: BTreeMap::new(),
            adverts_received: 0,
            adverts_invalid: BTreeMap::new(),
        };
        self.board.insert_keeping_counters(fresh);
    }

    fn publish(&self) {
        let (state, master, mdi, priority) = (
            self.machine.state(),
            self.machine.master(),
            self.machine.master_down_interval(),
            self.machine.settings().priority,
        );
        self.board.update(&self.p.config.name, |s| {
            s.state = state;
            s.master = master;
            s.master_down_interval_ms = mdi.as_millis() as u64;
            s.priority = priority;
            s.scripts.clone_from(&self.tracked);
        });
    }
}
