//! The whole product in one lab, as `cargo xtask demo` tells it and `tests/tests/e2e_product.rs`
//! asserts it: a client, two LB nodes running bascule with VRRP (lb1 master at priority 150,
//! lb2 backup at 100) for VIPs in the lab's own subnet ([`VIP4`], [`VIP6`]: the client finds
//! them by ARP / NDP, which only the master answers), servers that answer HTTP on port 80
//! with their name and echo TCP on port 7000, health checks on both nodes, and a chosen
//! forwarding mode:
//!
//! - `dr`, `tun`, `nat`: the servers are backends `b1`..`b3`. `dr` and `tun` backends hold
//!   the VIPs on `lo` without answering ARP / NDP for them; `tun` backends run `bascule
//!   decap`; `nat` backends send their replies to the client via the VIP, that is via
//!   whichever LB node is master.
//! - `local`: CIRIL's "quadrature": both LB nodes are also real servers (VIPs on `lo`, ARP
//!   suppressed), beside backend `b1`; each node hands its own share to its own stack
//!   (`local`) and sends the other node's by `dr`. Both nodes list the same addresses, so
//!   they build the same Maglev table.
//!
//! Both nodes run the same services, so a flow reaches the same server whichever node is
//! master. Every wait here is bounded and stops early on Ctrl-C once
//! [`crate::interrupt::install`]ed. Fields are dropped servers first, lab last, so server
//! threads leave the namespaces before they are deleted.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitStatus,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    http::{http_get, http_server, HttpServer},
    interrupt,
    lab::{ip, Footprint, Host, Spawned},
    tcp::{echo_server, start_probes, EchoServer, ProbeResult, Probes},
    topology::{Topology, TopologySpec},
    vrrp::{hold_on_backends, holds, neighbour_mac, LINK_VIP4, LINK_VIP6},
};

/// The VIPs: in the lab segment, held by the VRRP master.
pub const VIP4: Ipv4Addr = LINK_VIP4;
pub const VIP6: Ipv6Addr = LINK_VIP6;
/// Services `web` and `web6` (HTTP, checked by `http_get`).
pub const HTTP_PORT: u16 = 80;
/// Service `echo` (long-lived connections, checked by `tcp`).
pub const ECHO_PORT: u16 = 7000;
pub const VRID: u8 = 51;
pub const MASTER_PRIORITY: u8 = 150;
pub const BACKUP_PRIORITY: u8 = 100;
pub const ADVERT_INTERVAL: Duration = Duration::from_millis(200);
pub const GARP_REPEAT: u32 = 5;
pub const GARP_INTERVAL: Duration = Duration::from_millis(200);
/// Health checks: a dead server is out within CHECK_INTERVAL x FALL + CHECK_TIMEOUT.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(500);
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
pub const RISE: u32 = 2;
pub const FALL: u32 = 2;
/// What the daemon logs once its maps hold every health change logged before.
pub const DATAPATH_UPDATED: &str = "datapath updated for backend health";
const READY_LINE: &str = "bascule ready";

/// Bound for things with no protocol deadline: startup, health transitions, takeover.
const SETTLE: Duration = Duration::from_secs(15);
/// Bound on one HTTP exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Poll period of every wait.
const POLL: Duration = Duration::from_millis(20);
/// Long-lived connections: a message every PROBE_PERIOD; a connection whose message goes
/// unanswered for PROBE_GIVE_UP is lost.
const PROBE_PERIOD: Duration = Duration::from_millis(50);
const PROBE_GIVE_UP: Duration = Duration::from_secs(8);
/// Round trips a long-lived connection must make after the takeover to count as alive.
const PROBE_RECOVERED: u64 = 5;

/// How the LB nodes reach the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dr,
    Tun,
    Nat,
    Local,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Dr, Mode::Tun, Mode::Nat, Mode::Local];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dr => "dr",
            Mode::Tun => "tun",
            Mode::Nat => "nat",
            Mode::Local => "local",
        }
    }
}

/// `VIP4:80`.
pub fn web4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), HTTP_PORT)
}

/// `[VIP6]:80`.
pub fn web6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), HTTP_PORT)
}

/// `VIP4:7000`.
pub fn echo4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT)
}

/// The services: name, VIP, port, and the health check's `type`.
fn services() -> [(&'static str, IpAddr, u16, &'static str); 3] {
    [
        ("web", IpAddr::V4(VIP4), HTTP_PORT, "http_get"),
        ("web6", IpAddr::V6(VIP6), HTTP_PORT, "http_get"),
        ("echo", IpAddr::V4(VIP4), ECHO_PORT, "tcp"),
    ]
}

fn millis(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The bascule config of LB node `node` (block YAML, the shape of
/// `deploy/examples/demo.yaml`): the three services over `servers` (each server of the
/// VIP's family; in `local` mode `node` itself with `forwarding: local`), health checks,
/// and the VRRP instances `VI_4` and `VI_6` at `priority`.
pub fn lb_config(mode: Mode, node: &Host, servers: &[Host], priority: u8) -> String {
    let forwarding = match mode {
        Mode::Local => "dr",
        other => other.as_str(),
    };
    let mut y = String::from("node:\n  interfaces:\n    - name: eth0\nservices:\n");
    for (name, vip, port, check) in services() {
        let _ = write!(
            y,
            "  - name: {name}\n    vip: {vip}\n    port: {port}\n    protocol: tcp\n    \
             scheduler: mh\n    forwarding: {forwarding}\n    health_check:\n      \
             type: {check}\n"
        );
        if check == "http_get" {
            y.push_str("      path: /\n");
        }
        let _ = write!(
            y,
            "      interval: {}\n      timeout: {}\n      rise: {RISE}\n      fall: {FALL}\n    \
             backends:\n",
            millis(CHECK_INTERVAL),
            millis(CHECK_TIMEOUT)
        );
        for server in servers {
            let Some(address) = server.addrs.iter().find(|a| a.is_ipv4() == vip.is_ipv4()) else {
                continue;
            };
            let _ = writeln!(y, "      - address: {address}");
            if mode == Mode::Local && server.netns == node.netns {
                y.push_str("        forwarding: local\n");
            }
        }
    }
    y.push_str("vrrp:\n");
    for (name, vip, len) in [
        ("VI_4", IpAddr::V4(VIP4), 24),
        ("VI_6", IpAddr::V6(VIP6), 64),
    ] {
        let _ = write!(
            y,
            "  - name: {name}\n    interface: eth0\n    virtual_router_id: {VRID}\n    \
             priority: {priority}\n    advert_interval: {}\n    \
             virtual_addresses: [{vip}/{len}]\n    garp: {{ repeat: {GARP_REPEAT}, interval: {} }}\n",
            millis(ADVERT_INTERVAL),
            millis(GARP_INTERVAL)
        );
    }
    y
}

/// `config` (a node's YAML) with every `priority: FROM` line set to `to`; fails unless
/// both VRRP instances' lines were found. The demo runs lb2 this way from lb1's file.
pub fn with_priority(config: &str, from: u8, to: u8) -> Result<String> {
    let (old, new) = (format!("priority: {from}"), format!("priority: {to}"));
    let mut found = 0;
    let text = config
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed == old || trimmed.starts_with(&format!("{old} ")) {
                found += 1;
                line.replacen(&old, &new, 1)
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    if found != 2 {
        bail!("expected `{old}` on the two VRRP instances, found it {found} time(s)");
    }
    Ok(text + "\n")
}

/// The log lines that say every server of every service is up on a node.
pub fn up_lines(servers: &[Host]) -> Vec<String> {
    let mut lines = Vec::new();
    for (name, vip, port, _) in services() {
        for server in servers {
            if let Some(a) = server.addrs.iter().find(|a| a.is_ipv4() == vip.is_ipv4()) {
                lines.push(format!(
                    "{name}: backend {} is up",
                    SocketAddr::new(*a, port)
                ));
            }
        }
    }
    lines
}

/// True when `log` has every one of `lines` and, after the last of them, a line saying
/// the datapath holds them (the readiness line counts: the first plan uses the health
/// known by then).
pub fn health_settled(log: &str, lines: &[String]) -> bool {
    let mut last = 0;
    for line in lines {
        match log.find(line.as_str()) {
            Some(at) => last = last.max(at),
            None => return false,
        }
    }
    let rest = &log[last..];
    rest.contains(DATAPATH_UPDATED) || rest.contains(READY_LINE)
}

/// The first line of `log` past byte `mark` containing `needle`, if a line saying the
/// datapath holds it follows.
pub fn transition_applied(log: &str, mark: usize, needle: &str) -> Option<String> {
    let recent = log.get(mark..)?;
    let at = recent.find(needle)?;
    let line_start = recent[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = recent[at..].find('\n').map_or(recent.len(), |i| at + i);
    recent[line_end..]
        .contains(DATAPATH_UPDATED)
        .then(|| recent[line_start..line_end].trim().to_string())
}

/// What the message of a log line says, without the timestamp and level of the tracing
/// format (`2026-01-01T00:00:00Z  INFO bascule::x: message`).
pub fn log_message(line: &str) -> &str {
    line.split_once(": ")
        .filter(|(head, _)| head.contains(" bascule"))
        .map_or(line, |(_, message)| message)
}

/// Polls `condition` every 20 ms until true (returns how long it took), `limit` passes or
/// Ctrl-C (errors naming `what`).
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Ok(start.elapsed());
        }
        if interrupt::interrupted() {
            bail!("interrupted while waiting for {what}");
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(POLL);
    }
}

/// Who answered a batch of new connections.
#[derive(Clone, Debug, Default)]
pub struct Spread {
    /// Server name -> connections it answered.
    pub answers: BTreeMap<String, usize>,
    pub failed: usize,
    pub first_error: Option<String>,
}

impl Spread {
    pub fn count(&self, name: &str) -> usize {
        self.answers.get(name).copied().unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.answers.values().sum::<usize>() + self.failed
    }
}

/// What a failover looked like from the client.
#[derive(Debug)]
pub struct Failover {
    /// From the death of the master to the backup holding both VIPs.
    pub takeover: Duration,
    /// From the death to the first new connection answered through the VIP.
    pub first_answer: Duration,
    /// The client's neighbour entry for VIP4 before and after (MAC addresses).
    pub neighbour_before: Option<String>,
    pub neighbour_after: Option<String>,
    pub connections: Vec<Connection>,
}

/// One long-lived connection through a failover.
#[derive(Debug)]
pub struct Connection {
    pub result: ProbeResult,
    /// The server it was on, by name (None if no server saw it).
    pub server: Option<String>,
    /// Round trips made after the backup held the VIPs.
    pub after_takeover: u64,
}

impl Failover {
    pub fn survived(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.result.failure.is_none())
            .count()
    }

    /// The longest silence of each surviving connection, shortest first.
    pub fn gaps(&self) -> Vec<Duration> {
        let mut gaps: Vec<Duration> = self
            .connections
            .iter()
            .filter(|c| c.result.failure.is_none())
            .map(|c| c.result.max_gap)
            .collect();
        gaps.sort();
        gaps
    }
}

/// The lab. See the module documentation.
pub struct ProductLab {
    pub mode: Mode,
    /// The servers' HTTP servers (None while stopped), in the order of `servers`.
    http: Vec<Option<HttpServer>>,
    echo: Vec<EchoServer>,
    /// `bascule run` of each LB node (None before start and after stop).
    daemons: Vec<Option<Spawned>>,
    /// Everything else spawned (decap, captures), stopped with the lab.
    others: Vec<Spawned>,
    /// The hosts that answer the VIPs' traffic, named by role.
    pub servers: Vec<Host>,
    bin: PathBuf,
    /// Last: dropped after the servers above, and tears the lab down.
    pub topo: Topology,
}

impl ProductLab {
    /// Builds the lab for `mode` and starts the servers (and, for `tun`, `bascule decap`
    /// on each backend); bascule itself is started by [`ProductLab::start`].
    pub fn new(tag: &str, mode: Mode, bin: &Path) -> Result<ProductLab> {
        let backends = if mode == Mode::Local { 1 } else { 3 };
        let topo = Topology::new(tag, TopologySpec { lbs: 2, backends })?;
        let vips = [IpAddr::V4(VIP4), IpAddr::V6(VIP6)];
        let servers: Vec<Host> = match mode {
            Mode::Local => topo.lbs.iter().chain(&topo.backends).cloned().collect(),
            _ => topo.backends.clone(),
        };
        match mode {
            Mode::Dr | Mode::Tun => hold_on_backends(&topo, &vips)?,
            Mode::Nat => route_replies_via_vips(&topo)?,
            Mode::Local => {
                hold_on_backends(&topo, &vips)?;
                for lb in &topo.lbs {
                    // `local`: the LB node accepts the VIPs on `lo` (as a `dr` real server
                    // of the other node) and answers ARP for them only while VRRP puts
                    // them on `eth0`.
                    crate::topology::hold_vips_on_lo(lb, &vips)?;
                }
            }
        }
        let mut lab = ProductLab {
            mode,
            http: Vec::new(),
            echo: Vec::new(),
            daemons: vec![None, None],
            others: Vec::new(),
            servers,
            bin: bin.to_path_buf(),
            topo,
        };
        for i in 0..lab.servers.len() {
            let s = &lab.servers[i];
            let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            lab.http
                .push(Some(http_server(&s.netns, any(HTTP_PORT), &s.role)?));
            lab.echo.push(echo_server(&s.netns, any(ECHO_PORT))?);
        }
        if mode == Mode::Tun {
            for b in lab.topo.backends.clone() {
                let decap = lab.topo.start_decap(&lab.bin, &b)?;
                lab.others.push(decap.clone());
                wait_until(&format!("bascule decap on {}", b.role), SETTLE, || {
                    decap.log_text().contains("decap attached")
                })
                .with_context(|| decap.log_text())?;
            }
        }
        Ok(lab)
    }

    pub fn lb(&self, i: usize) -> &Host {
        &self.topo.lbs[i]
    }

    /// The config this lab generates for LB node `i` (0 = lb1) at `priority`.
    pub fn config(&self, i: usize, priority: u8) -> String {
        lb_config(self.mode, self.lb(i), &self.servers, priority)
    }

    /// Writes `yaml` as `lbN.yaml` and starts `bascule run` on LB node `i` with it.
    pub fn start_node(&mut self, i: usize, yaml: &str) -> Result<&Spawned> {
        let lb = self.lb(i).clone();
        let path = self.topo.write_config(&format!("{}.yaml", lb.role), yaml)?;
        let daemon = self.topo.start_bascule(&self.bin, &lb, &path)?;
        Ok(self.daemons[i].insert(daemon))
    }

    /// Starts both nodes with the generated configs (lb1 master, lb2 backup).
    pub fn start(&mut self) -> Result<()> {
        let (c1, c2) = (
            self.config(0, MASTER_PRIORITY),
            self.config(1, BACKUP_PRIORITY),
        );
        self.start_node(0, &c1)?;
        self.start_node(1, &c2)?;
        Ok(())
    }

    pub fn daemon(&self, i: usize) -> Option<&Spawned> {
        self.daemons[i].as_ref()
    }

    /// Node `i`'s log so far (empty if it never ran).
    pub fn log(&self, i: usize) -> String {
        self.daemon(i).map(Spawned::log_text).unwrap_or_default()
    }

    fn running(&self) -> Vec<&Spawned> {
        self.daemons.iter().flatten().collect()
    }

    /// The running daemons' logs, for error messages.
    pub fn logs(&self) -> String {
        self.daemons
            .iter()
            .flatten()
            .chain(&self.others)
            .map(|d| format!("\n---- {} ----\n{}", d.name, d.log_text()))
            .collect()
    }

    /// Fails (with the logs) if a running daemon has exited.
    fn check_daemons(&self) -> Result<()> {
        for d in self.running() {
            if let Some(status) = self.topo.lab.exit_status(d) {
                bail!("{} exited ({status}){}", d.name, self.logs());
            }
        }
        Ok(())
    }

    /// Waits until LB node `i` alone holds both VIPs among the nodes still plugged in.
    pub fn wait_for_master(&self, i: usize, others: &[usize]) -> Result<Duration> {
        let master = self.lb(i);
        wait_until(
            &format!("{} alone holding {VIP4} and {VIP6}", master.role),
            SETTLE,
            || {
                self.check_daemons().is_err()
                    || (self.holds_vips(i)
                        && others.iter().all(|&o| {
                            let h = self.lb(o);
                            !holds(h, IpAddr::V4(VIP4)) && !holds(h, IpAddr::V6(VIP6))
                        }))
            },
        )
        .with_context(|| self.logs())
        .and_then(|took| self.check_daemons().map(|()| took))
    }

    pub fn holds_vips(&self, i: usize) -> bool {
        holds(self.lb(i), IpAddr::V4(VIP4)) && holds(self.lb(i), IpAddr::V6(VIP6))
    }

    /// Waits until every running node's health checks have brought every server up and
    /// its datapath holds them.
    pub fn wait_for_health(&self) -> Result<Duration> {
        let lines = up_lines(&self.servers);
        wait_until("every server up on every node", SETTLE, || {
            self.check_daemons().is_err()
                || self
                    .running()
                    .iter()
                    .all(|d| health_settled(&d.log_text(), &lines))
        })
        .with_context(|| self.logs())
        .and_then(|took| self.check_daemons().map(|()| took))
    }

    /// Where each node's log ends now, for [`ProductLab::wait_for_transition`].
    pub fn log_marks(&self) -> Vec<usize> {
        (0..self.daemons.len()).map(|i| self.log(i).len()).collect()
    }

    /// Waits until each node of `nodes` has logged a line containing `needle` past its
    /// mark, and then that its datapath holds it; returns node `nodes[0]`'s line and the
    /// time it took.
    pub fn wait_for_transition(
        &self,
        nodes: &[usize],
        marks: &[usize],
        needle: &str,
    ) -> Result<(String, Duration)> {
        let mut line = String::new();
        let took = wait_until(&format!("`{needle}` applied"), SETTLE, || {
            let mut all = true;
            for (k, &i) in nodes.iter().enumerate() {
                match transition_applied(&self.log(i), marks[i], needle) {
                    Some(l) if k == 0 => line = l,
                    Some(_) => {}
                    None => all = false,
                }
            }
            all
        })
        .with_context(|| self.logs())?;
        Ok((line, took))
    }

    /// `n` new connections from the client to `vip`.
    pub fn spread(&self, vip: SocketAddr, n: usize) -> Result<Spread> {
        let mut spread = Spread::default();
        for _ in 0..n {
            if interrupt::interrupted() {
                bail!("interrupted");
            }
            match http_get(&self.topo.client.netns, vip, REQUEST_TIMEOUT) {
                Ok(body) => *spread.answers.entry(body).or_insert(0) += 1,
                Err(e) => {
                    spread.failed += 1;
                    spread.first_error.get_or_insert(format!("{e:#}"));
                }
            }
        }
        Ok(spread)
    }

    fn server_index(&self, name: &str) -> Result<usize> {
        self.servers
            .iter()
            .position(|s| s.role == name)
            .with_context(|| format!("no server `{name}`"))
    }

    /// The server's address of the family of `vip`, with `port`.
    pub fn server_addr(&self, name: &str, vip: IpAddr, port: u16) -> Result<SocketAddr> {
        let s = &self.servers[self.server_index(name)?];
        let a = s
            .addrs
            .iter()
            .find(|a| a.is_ipv4() == vip.is_ipv4())
            .with_context(|| format!("{name} has no address of {vip}'s family"))?;
        Ok(SocketAddr::new(*a, port))
    }

    /// Stops server `name`'s HTTP server (its echo server keeps running); returns how
    /// many requests it had served.
    pub fn stop_http(&mut self, name: &str) -> Result<usize> {
        let i = self.server_index(name)?;
        let server = self.http[i]
            .take()
            .with_context(|| format!("{name}'s HTTP server is not running"))?;
        Ok(server.stop())
    }

    pub fn start_http(&mut self, name: &str) -> Result<()> {
        let i = self.server_index(name)?;
        let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), HTTP_PORT);
        let s = &self.servers[i];
        self.http[i] = Some(http_server(&s.netns, any, &s.role)?);
        Ok(())
    }

    /// Starts tcpdump (ARP and ICMPv6) on the client; stopped with the lab.
    pub fn start_client_capture(&mut self) -> Result<Spawned> {
        let capture = crate::vrrp::start_capture(&self.topo.lab, &self.topo.client)?;
        self.others.push(capture.clone());
        Ok(capture)
    }

    /// Stops a process started by [`ProductLab::start_client_capture`].
    pub fn stop_other(&mut self, process: &Spawned) -> Result<()> {
        self.others.retain(|o| o.pid != process.pid);
        self.topo.lab.terminate(process).map(drop)
    }

    /// `count` long-lived connections from the client to `VIP4:7000`, each exchanging a
    /// message every 50 ms; returns once each has made a few round trips.
    pub fn open_connections(&self, count: usize) -> Result<Probes> {
        let probes = start_probes(
            &self.topo.client.netns,
            echo4(),
            count,
            PROBE_PERIOD,
            REQUEST_TIMEOUT,
            PROBE_GIVE_UP,
        )
        .with_context(|| self.logs())?;
        wait_until("the long-lived connections exchanging", SETTLE, || {
            probes.progress().iter().all(|&(n, done)| n >= 3 || done)
        })?;
        Ok(probes)
    }

    /// LB node `i` dies: its switch port keeps its MAC (as a switch does until the entry
    /// ages), its cable is pulled and its bascule SIGKILLed, so it neither answers nor
    /// forwards and cannot say goodbye.
    pub fn kill_node(&mut self, i: usize) -> Result<Instant> {
        let lb = self.lb(i).clone();
        let daemon = self.daemons[i]
            .take()
            .with_context(|| format!("bascule is not running on {}", lb.role))?;
        self.topo.lab.pin_mac(&lb)?;
        let died = Instant::now();
        self.topo.lab.set_plugged(&lb, false)?;
        self.topo.lab.kill(&daemon)?;
        Ok(died)
    }

    /// The master (node 0) dies while `probes` run; node 1 takes over. Measures what the
    /// client sees, then stops the probes.
    pub fn fail_over(&mut self, probes: Probes) -> Result<Failover> {
        let client = self.topo.client.clone();
        let vip = IpAddr::V4(VIP4);
        let neighbour_before = neighbour_mac(&client, vip)?;
        let died = self.kill_node(0)?;
        let takeover_result = wait_until("lb2 holding both VIPs", SETTLE, || {
            self.holds_vips(1) || self.check_daemons().is_err()
        });
        self.check_daemons()?;
        takeover_result.with_context(|| self.logs())?;
        let takeover = died.elapsed();
        let at_takeover = probes.progress();
        let mut first_answer = None;
        wait_until("a new connection answered through lb2", SETTLE, || {
            let ok = http_get(&client.netns, web4(), Duration::from_millis(300)).is_ok();
            if ok {
                first_answer = Some(died.elapsed());
            }
            ok
        })
        .with_context(|| self.logs())?;
        let lb2_mac = self.lb(1).mac.clone();
        let _ = wait_until("the client's neighbour entry moving", SETTLE, || {
            neighbour_mac(&client, vip).ok().flatten().as_deref() == Some(lb2_mac.as_str())
        });
        let neighbour_after = neighbour_mac(&client, vip)?;
        // Every connection either works again or has failed (bounded by the give-up time).
        let recovered = wait_until(
            "every long-lived connection answering again or lost",
            PROBE_GIVE_UP + SETTLE,
            || {
                probes
                    .progress()
                    .iter()
                    .zip(&at_takeover)
                    .all(|(&(now, done), &(then, _))| done || now >= then + PROBE_RECOVERED)
            },
        );
        let results = probes.stop();
        recovered?;
        let connections = results
            .into_iter()
            .zip(at_takeover)
            .map(|(result, (then, _))| Connection {
                server: self.server_of(result.local),
                after_takeover: result.round_trips.saturating_sub(then),
                result,
            })
            .collect();
        Ok(Failover {
            takeover,
            first_answer: first_answer.unwrap_or(takeover),
            neighbour_before,
            neighbour_after,
            connections,
        })
    }

    /// The server whose echo server accepted the connection from client address `local`.
    fn server_of(&self, local: SocketAddr) -> Option<String> {
        self.echo
            .iter()
            .zip(&self.servers)
            .find(|(e, _)| e.peers().contains(&local))
            .map(|(_, s)| s.role.clone())
    }

    /// Brings dead node `i` back: cable plugged in, bascule started with `yaml`.
    pub fn revive_node(&mut self, i: usize, yaml: &str) -> Result<()> {
        let lb = self.lb(i).clone();
        self.topo.lab.set_plugged(&lb, true)?;
        self.start_node(i, yaml)?;
        Ok(())
    }

    /// Stops node `i`'s bascule with SIGTERM: its exit status and whether it exited
    /// within the grace period.
    pub fn stop_node(&mut self, i: usize) -> Result<(ExitStatus, bool)> {
        let daemon = self.daemons[i]
            .take()
            .context("bascule is not running there")?;
        self.topo.lab.terminate(&daemon)
    }

    /// Tears everything down (processes, servers, namespaces) and returns what a check
    /// afterwards still found.
    pub fn teardown(self) -> Result<crate::lab::Leftovers> {
        let footprint: Footprint = self.topo.lab.footprint();
        drop(self);
        footprint.leftovers()
    }
}

/// `nat`: the backends send replies to the client through the VIP (whichever node is
/// master), and checksums are computed in full so the stacks verify what the LB rewrote.
fn route_replies_via_vips(topo: &Topology) -> Result<()> {
    let client4 = topo.client.ipv4().context("client IPv4")?;
    let client6 = topo.client.ipv6().context("client IPv6")?;
    for b in &topo.backends {
        let ns = b.netns.as_str();
        ip(&[
            "-n",
            ns,
            "route",
            "add",
            &format!("{client4}/32"),
            "via",
            &VIP4.to_string(),
        ])?;
        ip(&[
            "-n",
            ns,
            "-6",
            "route",
            "add",
            &format!("{client6}/128"),
            "via",
            &VIP6.to_string(),
        ])?;
    }
    for host in topo.backends.iter().chain([&topo.client]) {
        topo.lab
            .exec_ok(&host.netns, &["ethtool", "-K", "eth0", "tx", "off"])
            .context("is ethtool installed (`cargo xtask setup`)?")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(role: &str, last: u8) -> Host {
        Host {
            role: role.to_string(),
            netns: format!("bsc1x0-{role}"),
            mac: String::new(),
            addrs: vec![
                IpAddr::V4(Ipv4Addr::new(10, 111, 0, last)),
                format!("fd00:111::{last}").parse().unwrap(),
            ],
        }
    }

    #[test]
    fn local_config_hands_the_nodes_own_share_to_its_stack() {
        let (lb1, lb2, b1) = (host("lb1", 2), host("lb2", 3), host("b1", 11));
        let servers = [lb1.clone(), lb2.clone(), b1];
        let y1 = lb_config(Mode::Local, &lb1, &servers, 150);
        let y2 = lb_config(Mode::Local, &lb2, &servers, 100);
        assert!(
            y1.contains("      - address: 10.111.0.2\n        forwarding: local\n"),
            "{y1}"
        );
        assert!(
            y1.contains("      - address: 10.111.0.3\n      - address: 10.111.0.11\n"),
            "{y1}"
        );
        assert!(
            y2.contains("      - address: 10.111.0.3\n        forwarding: local\n"),
            "{y2}"
        );
        assert_eq!(y1.matches("forwarding: local").count(), 3, "{y1}");
        assert_eq!(y2.matches("forwarding: local").count(), 3, "{y2}");
        assert_eq!(y1.matches("forwarding: dr").count(), 3, "{y1}");
    }

    #[test]
    fn priorities_are_replaced_on_both_instances_only() {
        let y = lb_config(Mode::Dr, &host("lb1", 2), &[host("b1", 11)], 150);
        let lb2 = with_priority(&y, 150, 100).unwrap();
        assert_eq!(lb2.matches("priority: 100").count(), 2, "{lb2}");
        assert!(!lb2.contains("150"), "{lb2}");
        let commented = y.replace("priority: 150", "priority: 150   # lb1");
        assert!(with_priority(&commented, 150, 100)
            .unwrap()
            .contains("priority: 100   # lb1"));
        assert!(with_priority(&y, 200, 100).is_err());
    }

    #[test]
    fn health_is_settled_once_the_datapath_follows_the_last_up_line() {
        let servers = [host("b1", 11), host("b2", 12)];
        let lines = up_lines(&servers);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert!(lines.contains(&"web6: backend [fd00:111::12]:80 is up".to_string()));
        assert!(lines.contains(&"echo: backend 10.111.0.11:7000 is up".to_string()));
        let mut log = String::from("x INFO bascule: health checks started\n");
        for l in &lines[..5] {
            log.push_str(&format!(
                "t INFO bascule::health: {l} (2 successful checks)\n"
            ));
        }
        log.push_str(&format!("t INFO bascule::daemon: {DATAPATH_UPDATED}\n"));
        assert!(!health_settled(&log, &lines), "one line missing");
        log.push_str(&format!(
            "t INFO bascule::health: {} (2 successful checks)\n",
            lines[5]
        ));
        assert!(!health_settled(&log, &lines), "not applied yet");
        log.push_str(&format!("t INFO bascule::daemon: {DATAPATH_UPDATED}\n"));
        assert!(health_settled(&log, &lines));
    }

    #[test]
    fn a_transition_counts_once_the_datapath_holds_it() {
        let log = "a\nT WARN bascule::health: web: backend 10.111.0.12:80 is down (2 failed checks): refused\nT INFO bascule::daemon: datapath updated for backend health\n";
        let needle = "web: backend 10.111.0.12:80 is down";
        let line = transition_applied(log, 0, needle).unwrap();
        assert!(
            line.starts_with("T WARN") && line.ends_with("refused"),
            "{line}"
        );
        assert_eq!(
            log_message(&line),
            "web: backend 10.111.0.12:80 is down (2 failed checks): refused"
        );
        let past = log.find("T INFO").unwrap();
        assert_eq!(
            transition_applied(log, past, needle),
            None,
            "before the mark"
        );
        let unapplied = &log[..log.find("T INFO").unwrap()];
        assert_eq!(transition_applied(unapplied, 0, needle), None);
    }
}
