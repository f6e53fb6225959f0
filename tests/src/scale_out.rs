//! The scale-out lab with bascule: [`crate::bgp::ScaleOutLab`] (a router running BIRD with
//! ECMP, a client beyond it, three LB nodes running BIRD, three backends), with `bascule
//! run` on every LB node configured with `announce:`, so that bascule, not the test, puts
//! the blackhole routes BIRD announces.
//!
//! Services (`dr`, every backend of the family, TCP health checks): `web`
//! 10.112.0.100:80 and `web6` [fd00:112::100]:80 (`mh`, HTTP servers answering with the
//! backend's name), `echo` 10.112.0.100:7000 (`mh`) and `echo-rr` 10.112.0.100:7001 (`rr`:
//! only `sync:` keeps its flows on their backend when ECMP moves them), both line servers
//! for long-lived flows (see [`crate::traffic`]).
//!
//! [`AnnouncingLab::with_sync`] adds `sync:` between the LB nodes (unicast or multicast).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bgp::{ScaleOutLab, ANNOUNCE_PROTOCOL, ANNOUNCE_TABLE},
    http::{http_get, http_request, http_server, HttpServer},
    lab::{Host, Spawned},
    sync::{self, Transport},
    topology::{API_PORT, VIP4, VIP6, VIP_PORT},
    traffic::{tcp_name_server, NameServer},
};

/// The port of service `echo` (long-lived line flows) on the IPv4 VIP.
pub const ECHO_PORT: u16 = 7000;
/// The port of service `echo-rr` (the same, scheduled by `rr`) on the IPv4 VIP.
pub const ECHO_RR_PORT: u16 = 7001;
/// `announce.withdraw_grace` in the lab: SIGTERM withdraws, forwards this long, stops.
pub const WITHDRAW_GRACE: Duration = Duration::from_secs(2);
/// The health checks' interval and timeout; rise and fall are 2.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);
/// How long the daemons get to be ready and announce both VIPs through BIRD.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn web4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), VIP_PORT)
}

pub fn web6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), VIP_PORT)
}

pub fn echo4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), ECHO_PORT)
}

pub fn echo_rr4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), ECHO_RR_PORT)
}

/// Both VIPs.
pub fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
}

/// The bascule configuration of every LB node (the same file on each: every node builds
/// the same Maglev tables).
pub fn announcing_config(backends: &[Host]) -> String {
    let mut yaml = String::from(
        "node:\n  interfaces:\n    - name: eth0\n      xdp_mode: generic\nservices:\n",
    );
    let ms = CHECK_INTERVAL.as_millis();
    for (name, vip, port, scheduler) in [
        ("web", IpAddr::V4(VIP4), VIP_PORT, "mh"),
        ("web6", IpAddr::V6(VIP6), VIP_PORT, "mh"),
        ("echo", IpAddr::V4(VIP4), ECHO_PORT, "mh"),
        ("echo-rr", IpAddr::V4(VIP4), ECHO_RR_PORT, "rr"),
    ] {
        let _ = write!(
            yaml,
            "  - name: {name}\n    vip: {vip}\n    port: {port}\n    scheduler: {scheduler}\n    \
             forwarding: dr\n    health_check: {{type: tcp, interval: {ms}ms, timeout: {ms}ms, \
             rise: 2, fall: 2}}\n    backends:\n"
        );
        let same_family = backends
            .iter()
            .flat_map(|b| &b.addrs)
            .filter(|a| a.is_ipv4() == vip.is_ipv4());
        for address in same_family {
            let _ = writeln!(yaml, "      - address: {address}");
        }
    }
    let _ = write!(
        yaml,
        "announce:\n  table: {ANNOUNCE_TABLE}\n  protocol: {ANNOUNCE_PROTOCOL}\n  \
         withdraw_grace: {}s\n",
        WITHDRAW_GRACE.as_secs()
    );
    yaml
}

/// The lab with bascule announcing on every LB node.
pub struct AnnouncingLab {
    /// First: the servers' threads leave the namespaces before they are deleted.
    pub http: Vec<HttpServer>,
    pub echo: Vec<NameServer>,
    /// `bascule run` per LB node (same order as `net.lbs`).
    pub daemons: Vec<Spawned>,
    pub bin: PathBuf,
    /// Each LB node's config file (same order as `net.lbs`).
    pub configs: Vec<PathBuf>,
    /// LB nodes killed by [`AnnouncingLab::kill_node`] (their API is gone).
    dead: Mutex<BTreeSet<usize>>,
    pub net: ScaleOutLab,
}

impl AnnouncingLab {
    /// Builds the BGP lab, starts the backends' servers and bascule on every LB node, and
    /// waits until each is ready and the router routes both VIPs over the three nodes.
    pub fn new(tag: &str, bin: &Path) -> Result<AnnouncingLab> {
        AnnouncingLab::with_sync(tag, bin, None)
    }

    /// [`AnnouncingLab::new`], with `sync:` between the LB nodes over `transport` (the
    /// key in the lab's directory).
    pub fn with_sync(tag: &str, bin: &Path, transport: Option<Transport>) -> Result<AnnouncingLab> {
        let net = ScaleOutLab::new(tag)?;
        let any = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        let mut http = Vec::new();
        let mut echo = Vec::new();
        for b in &net.backends {
            http.push(http_server(
                &b.netns,
                SocketAddr::new(any, VIP_PORT),
                &b.role,
            )?);
            for port in [ECHO_PORT, ECHO_RR_PORT] {
                echo.push(tcp_name_server(
                    &b.netns,
                    SocketAddr::new(any, port),
                    &b.role,
                )?);
            }
        }
        let base = announcing_config(&net.backends);
        let key = match transport {
            Some(_) => Some(sync::write_key(net.lab.dir())?),
            None => None,
        };
        let mut configs = Vec::new();
        for lb in &net.lbs {
            let mut yaml = base.clone();
            if let (Some(t), Some(key)) = (transport, &key) {
                let peers: Vec<IpAddr> = net
                    .lbs
                    .iter()
                    .filter(|other| other.role != lb.role)
                    .filter_map(Host::ipv4)
                    .collect();
                yaml.push_str(&sync::section(t, &peers, key));
            }
            let config = net.lab.dir().join(format!("bascule-{}.yaml", lb.role));
            fs::write(&config, yaml)
                .with_context(|| format!("cannot write {}", config.display()))?;
            configs.push(config);
        }
        let mut lab = AnnouncingLab {
            http,
            echo,
            daemons: Vec::new(),
            bin: bin.to_path_buf(),
            configs,
            dead: Mutex::new(BTreeSet::new()),
            net,
        };
        for i in 0..lab.net.lbs.len() {
            let daemon = lab.start_daemon(i)?;
            lab.daemons.push(daemon);
        }
        lab.wait_everywhere(START_TIMEOUT)?;
        Ok(lab)
    }

    /// Starts `bascule run` on LB node `i` (entering only its network namespace).
    fn start_daemon(&self, i: usize) -> Result<Spawned> {
        let lb = &self.net.lbs[i];
        let (bin, config) = (path_str(&self.bin)?, path_str(&self.configs[i])?);
        self.net.lab.spawn_net_only(
            &lb.netns,
            &format!("bascule-run-{}", lb.role),
            &[bin, "run", "-c", config],
        )
    }

    /// bascule on LB node `i` SIGKILLed (its routes and its pinned datapath stay, as a
    /// crash leaves them), then started again; returns once the new daemon answers
    /// `/readyz`, calling `meanwhile` with the network between polls.
    pub fn crash_and_restart(
        &mut self,
        i: usize,
        mut meanwhile: impl FnMut(&ScaleOutLab),
    ) -> Result<()> {
        self.net.lab.kill(&self.daemons[i])?;
        self.daemons[i] = self.start_daemon(i)?;
        let lb = &self.net.lbs[i];
        let deadline = Instant::now() + START_TIMEOUT;
        while !matches!(self.api(lb, "GET", "/readyz"), Ok((200, _))) {
            if let Some(status) = self.net.lab.exit_status(&self.daemons[i]) {
                bail!(
                    "{} exited ({status}):\n{}",
                    lb.role,
                    self.daemons[i].log_text()
                );
            }
            if Instant::now() > deadline {
                bail!("{} not ready again{}", lb.role, self.diagnostics());
            }
            meanwhile(&self.net);
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Waits until every daemon is ready and the router routes both VIPs over all the
    /// LB nodes.
    pub fn wait_everywhere(&self, timeout: Duration) -> Result<Duration> {
        let started = Instant::now();
        for (i, lb) in self.net.lbs.iter().enumerate() {
            loop {
                if let Some(status) = self.net.lab.exit_status(&self.daemons[i]) {
                    bail!(
                        "{} exited ({status}); its log:\n{}",
                        self.daemons[i].name,
                        self.daemons[i].log_text()
                    );
                }
                if matches!(self.api(lb, "GET", "/readyz"), Ok((200, _))) {
                    break;
                }
                if started.elapsed() > timeout {
                    bail!(
                        "{} not ready after {timeout:?}{}",
                        lb.role,
                        self.diagnostics()
                    );
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        let all: Vec<&Host> = self.net.lbs.iter().collect();
        for vip in vips() {
            let left = timeout.saturating_sub(started.elapsed());
            self.net
                .wait_next_hops(vip, &self.net.next_hops_of(&all, vip), left)
                .with_context(|| self.diagnostics())?;
        }
        Ok(started.elapsed())
    }

    /// `METHOD PATH` on the API of the daemon on `lb` (127.0.0.1:9469 in its namespace).
    pub fn api(&self, lb: &Host, method: &str, path: &str) -> Result<(u16, String)> {
        self.api_with_body(lb, method, path, "")
    }

    /// [`AnnouncingLab::api`] with a JSON body.
    pub fn api_with_body(
        &self,
        lb: &Host,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String)> {
        let api = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), API_PORT);
        let timeout = Duration::from_secs(5);
        http_request(&lb.netns, api, method, path, &[], Some(body), timeout)
    }

    /// `bascule ARGS...` run in `lb`'s namespace (the CLI talks to that node's daemon).
    pub fn cli(&self, lb: &Host, args: &[&str]) -> Result<String> {
        let mut command = vec![path_str(&self.bin)?];
        command.extend_from_slice(args);
        self.net.lab.exec_ok(&lb.netns, &command)
    }

    /// A metric's value in `lb`'s `/metrics` (`series` as printed, labels included);
    /// `None` if absent.
    pub fn metric(&self, lb: &Host, series: &str) -> Result<Option<f64>> {
        let (status, text) = self.api(lb, "GET", "/metrics")?;
        if status != 200 {
            bail!("GET /metrics on {}: {status} {text}", lb.role);
        }
        Ok(metric_value(&text, series))
    }

    /// New connections `lb` has scheduled for `service` so far.
    pub fn connections(&self, lb: &Host, service: &str) -> Result<u64> {
        let series = format!("bascule_service_connections_total{{service=\"{service}\"}}");
        let value = self.metric(lb, &series)?;
        Ok(value.with_context(|| format!("{} has no {series}", lb.role))? as u64)
    }

    /// Entries `lb` has applied from its peers (`GET /api/v1/sync`).
    pub fn applied(&self, lb: &Host) -> Result<u64> {
        let (status, body) = self.api(lb, "GET", "/api/v1/sync")?;
        if status != 200 {
            bail!("GET /api/v1/sync on {}: {status} {body}", lb.role);
        }
        sync::applied(&body).with_context(|| format!("{}: no `applied` in {body}", lb.role))
    }

    /// Waits (at most `timeout`) until every LB node has applied as many entries as the
    /// others scheduled connections of `service`: each holds every node's flows.
    pub fn wait_synced(&self, service: &str, timeout: Duration) -> Result<()> {
        let scheduled = self.connections_everywhere(service)?;
        let total: u64 = scheduled.iter().sum();
        let deadline = Instant::now() + timeout;
        for (lb, own) in self.net.lbs.iter().zip(&scheduled) {
            loop {
                let applied = self.applied(lb)?;
                if applied >= total - own {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "{} applied {applied} of the {} flows the others scheduled{}",
                        lb.role,
                        total - own,
                        self.diagnostics()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Opens `n` new connections from the client to `vip` (one HTTP request each) and
    /// returns how many each LB node scheduled (from their metrics, same order as
    /// `net.lbs`) and how many each backend answered.
    pub fn spread(&self, vip: SocketAddr, service: &str, n: usize) -> Result<Spread> {
        let before = self.connections_everywhere(service)?;
        let mut backends = BTreeMap::new();
        for i in 0..n {
            let body = http_get(self.net.client_netns(), vip, Duration::from_secs(3))
                .with_context(|| format!("connection {i} of {n} to {vip}"))?;
            *backends.entry(body).or_insert(0) += 1;
        }
        let after = self.connections_everywhere(service)?;
        let nodes = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        Ok(Spread { nodes, backends })
    }

    /// Per LB node; 0 for a dead one.
    fn connections_everywhere(&self, service: &str) -> Result<Vec<u64>> {
        let dead = self.dead.lock().expect("dead nodes").clone();
        self.net
            .lbs
            .iter()
            .enumerate()
            .map(|(i, lb)| match dead.contains(&i) {
                true => Ok(0),
                false => self.connections(lb, service),
            })
            .collect()
    }

    /// LB node `i`'s death: its cable pulled, its bascule and its BIRD SIGKILLed.
    /// Returns when the cable was pulled.
    pub fn kill_node(&self, i: usize) -> Result<Instant> {
        let lb = &self.net.lbs[i];
        let pulled = Instant::now();
        self.dead.lock().expect("dead nodes").insert(i);
        self.net.lab.set_plugged(lb, false)?;
        self.net.lab.kill(&self.daemons[i])?;
        let bird = self.net.bird_of(lb)?.process.clone();
        self.net.lab.kill(&bird)?;
        Ok(pulled)
    }

    /// The router's state, BIRD's logs and every daemon's log, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut text = self.net.diagnostics();
        for d in &self.daemons {
            let _ = write!(text, "\n---- {} log ----\n{}", d.name, d.log_text());
        }
        text
    }
}

/// How new connections spread over the LB nodes and the backends.
#[derive(Clone, Debug)]
pub struct Spread {
    /// Per LB node (same order as the lab's), from its metrics.
    pub nodes: Vec<u64>,
    /// Per backend name, from the answers.
    pub backends: BTreeMap<String, usize>,
}

/// The value of `series` (`name{labels}` as Prometheus prints it) in a scrape.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(i: u8) -> Host {
        Host {
            role: format!("b{i}"),
            netns: String::new(),
            mac: String::new(),
            addrs: vec![
                format!("10.111.0.{}", 10 + i).parse().unwrap(),
                format!("fd00:111::{}", 10 + i).parse().unwrap(),
            ],
        }
    }

    #[test]
    fn the_config_announces_with_the_lab_table_and_grace() {
        let yaml = announcing_config(&[backend(1), backend(2)]);
        assert!(
            yaml.ends_with("announce:\n  table: 200\n  protocol: 186\n  withdraw_grace: 2s\n"),
            "{yaml}"
        );
        assert_eq!(
            yaml.matches("- address: 10.111.0.12\n").count(),
            3,
            "{yaml}"
        );
        assert_eq!(
            yaml.matches("- address: fd00:111::12\n").count(),
            1,
            "{yaml}"
        );
        assert!(yaml.contains("port: 7000\n"), "{yaml}");
        assert!(yaml.contains("port: 7001\n    scheduler: rr\n"), "{yaml}");
    }

    #[test]
    fn metric_values_are_read_by_series() {
        let text = "# TYPE x counter\nbascule_service_connections_total{service=\"web\"} 12\n\
                    bascule_service_connections_total{service=\"web6\"} 3\n";
        let web = "bascule_service_connections_total{service=\"web\"}";
        assert_eq!(metric_value(text, web), Some(12.0));
        assert_eq!(
            metric_value(text, "bascule_announced{vip=\"10.0.0.1\"}"),
            None
        );
    }
}
