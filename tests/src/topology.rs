//! The standard lab: a client, load-balancer nodes and backends on one L2 segment.
//!
//! ```text
//!                      bridge br0 (namespace {prefix}-sw)
//!   ┌──────────┬───────────┬───────────┬───────────┬─────
//!   client      lb1         lb2 ...     b1          b2 ...
//!   .10 / ::10  .2 / ::2    .3 / ::3    .11 / ::11  .12 / ::12
//! ```
//!
//! Segment 10.111.0.0/24 and fd00:111::/64. The VIPs 10.112.0.100 and fd00:112::100 are
//! in another subnet that the client routes via lb1, so every packet for a VIP reaches
//! lb1's MAC and only a balancer can deliver it. Backends hold the VIPs on `lo` with ARP
//! suppressed (`arp_ignore=1`, `arp_announce=2`) and answer the client directly on-link.
//! lb nodes do not forward (`ip_forward=0`): without bascule a VIP gets no answer.

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    http::{http_get, http_request, http_server, HttpServer},
    interrupt,
    lab::{ip, sysctl, Host, Lab, Spawned},
};

/// The IPv4 VIP (service `web`).
pub const VIP4: Ipv4Addr = Ipv4Addr::new(10, 112, 0, 100);
/// The IPv6 VIP (service `web6`).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x112, 0, 0, 0, 0, 0, 0x100);
/// The subnets of the VIPs, routed by the client via lb1.
pub const VIP4_SUBNET: &str = "10.112.0.0/24";
pub const VIP6_SUBNET: &str = "fd00:112::/64";
/// The TCP port of both services.
pub const VIP_PORT: u16 = 80;
/// Where bascule's API listens by default (on 127.0.0.1 in each LB namespace).
pub const API_PORT: u16 = 9469;
/// Most LB nodes and backends a topology can have (addresses .2-.9 and .11-.99).
pub const MAX_LBS: usize = 8;
pub const MAX_BACKENDS: usize = 89;

/// `10.111.0.(last)` on the lab segment.
fn segment_v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 111, 0, last))
}

/// `fd00:111::(last)` on the lab segment (in hex, like the IPv4 one reads in decimal:
/// `::11` for `.11`).
fn segment_v6(last: u8) -> IpAddr {
    let hex = u16::from_str_radix(&last.to_string(), 16).expect("decimal digits are hex digits");
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x111, 0, 0, 0, 0, 0, hex))
}

/// The IPv4 VIP and port.
pub fn vip4() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), VIP_PORT)
}

/// The IPv6 VIP and port.
pub fn vip6() -> SocketAddr {
    SocketAddr::new(IpAddr::V6(VIP6), VIP_PORT)
}

/// How the LB sends packets to the backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    /// MAC rewrite: the backend is on the LB's L2 segment.
    Dr,
    /// IP-in-IP: the backend strips the outer header with `bascule decap`.
    Tun,
}

impl Forwarding {
    /// The config value: `dr` or `tun`.
    pub fn as_str(self) -> &'static str {
        match self {
            Forwarding::Dr => "dr",
            Forwarding::Tun => "tun",
        }
    }
}

/// How many of each.
#[derive(Clone, Copy, Debug)]
pub struct TopologySpec {
    pub lbs: usize,
    pub backends: usize,
}

impl Default for TopologySpec {
    /// One LB node and two backends.
    fn default() -> Self {
        TopologySpec {
            lbs: 1,
            backends: 2,
        }
    }
}

/// A lab wired as described in the module documentation. Roles: `client`, `lb1`..,
/// `b1`...
pub struct Topology {
    pub client: Host,
    pub lbs: Vec<Host>,
    pub backends: Vec<Host>,
    /// Last, so that the hosts above are plain data and the lab is torn down on drop.
    pub lab: Lab,
}

impl Topology {
    /// One LB node, two backends.
    pub fn standard(tag: &str) -> Result<Topology> {
        Topology::new(tag, TopologySpec::default())
    }

    pub fn new(tag: &str, spec: TopologySpec) -> Result<Topology> {
        if !(1..=MAX_LBS).contains(&spec.lbs) || !(1..=MAX_BACKENDS).contains(&spec.backends) {
            bail!("a topology has 1..={MAX_LBS} LB nodes and 1..={MAX_BACKENDS} backends, not {spec:?}");
        }
        let mut lab = Lab::new(tag)?;
        let client = lab.add_host("client", &[segment_v4(10), segment_v6(10)])?;
        let mut lbs = Vec::new();
        for i in 1..=spec.lbs {
            let last = 1 + i as u8;
            let lb = lab.add_host(&format!("lb{i}"), &[segment_v4(last), segment_v6(last)])?;
            sysctl(
                &lb.netns,
                &[
                    ("net.ipv4.ip_forward", "0"),
                    ("net.ipv6.conf.all.forwarding", "0"),
                ],
            )?;
            lbs.push(lb);
        }
        let mut backends = Vec::new();
        for i in 1..=spec.backends {
            let last = 10 + i as u8;
            let backend = lab.add_host(&format!("b{i}"), &[segment_v4(last), segment_v6(last)])?;
            hold_vips_on_lo(&backend, &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)])?;
            backends.push(backend);
        }
        let via4 = lbs[0].ipv4().expect("lb has IPv4").to_string();
        let via6 = lbs[0].ipv6().expect("lb has IPv6").to_string();
        ip(&[
            "-n",
            &client.netns,
            "route",
            "add",
            VIP4_SUBNET,
            "via",
            &via4,
        ])?;
        ip(&[
            "-n",
            &client.netns,
            "-6",
            "route",
            "add",
            VIP6_SUBNET,
            "via",
            &via6,
        ])?;
        Ok(Topology {
            client,
            lbs,
            backends,
            lab,
        })
    }

    /// The backend with this role (`b1`...).
    pub fn backend(&self, role: &str) -> Result<&Host> {
        self.backends
            .iter()
            .find(|b| b.role == role)
            .with_context(|| format!("no backend `{role}`"))
    }

    /// One HTTP server per backend on `[::]:80` (IPv4 too), answering with the
    /// backend's role. Same order as [`Topology::backends`].
    pub fn start_backend_servers(&self) -> Result<Vec<HttpServer>> {
        let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), VIP_PORT);
        self.backends
            .iter()
            .map(|b| http_server(&b.netns, any, &b.role))
            .collect()
    }

    /// The bascule config for the LB nodes (see [`lb_config_yaml`]).
    pub fn lb_config(&self, forwarding: Forwarding) -> String {
        lb_config_yaml(forwarding, &self.backends)
    }

    /// Writes [`Topology::lb_config`] into the lab directory and returns its path.
    pub fn write_lb_config(&self, forwarding: Forwarding) -> Result<PathBuf> {
        self.write_config(
            &format!("bascule-{}.yaml", forwarding.as_str()),
            &self.lb_config(forwarding),
        )
    }

    /// Writes any config text into the lab directory and returns its path.
    pub fn write_config(&self, file_name: &str, yaml: &str) -> Result<PathBuf> {
        let path = self.lab.dir().join(file_name);
        fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The usual start of an e2e test: writes `yaml` into the lab directory as `file_name`,
    /// starts `bascule run` with it on `lb`, and waits until `vip` answers the client (at
    /// most 75 tries 200 ms apart; the error carries the daemon's log).
    pub fn serve(
        &self,
        bin: &Path,
        lb: &Host,
        file_name: &str,
        yaml: &str,
        vip: SocketAddr,
    ) -> Result<Spawned> {
        let config = self.write_config(file_name, yaml)?;
        let daemon = self.start_bascule(bin, lb, &config)?;
        self.wait_for_vip(vip, &[&daemon], 75, Duration::from_millis(200))?;
        Ok(daemon)
    }

    /// Starts `bascule run -c CONFIG` on LB node `lb` (its stderr in the returned log).
    pub fn start_bascule(&self, bin: &Path, lb: &Host, config: &Path) -> Result<Spawned> {
        self.start_bascule_with(bin, lb, config, &[])
    }

    /// `bascule run -c CONFIG EXTRA...`, entering only the node's network namespace (so it
    /// pins its datapath on the host's bpffs, where a restarted daemon finds it).
    pub fn start_bascule_with(
        &self,
        bin: &Path,
        lb: &Host,
        config: &Path,
        extra: &[&str],
    ) -> Result<Spawned> {
        let (bin, config) = (path_str(bin)?, path_str(config)?);
        let mut args = vec![bin, "run", "-c", config];
        args.extend_from_slice(extra);
        self.lab
            .spawn_net_only(&lb.netns, &format!("bascule-run-{}", lb.role), &args)
    }

    /// `bascule run -c CONFIG` on `lb` with these environment variables (`NOTIFY_SOCKET`,
    /// `WATCHDOG_USEC`: the daemon as systemd starts it).
    pub fn start_bascule_env(
        &self,
        bin: &Path,
        lb: &Host,
        config: &Path,
        env: &[(&str, &str)],
    ) -> Result<Spawned> {
        let (bin, config) = (path_str(bin)?, path_str(config)?);
        self.lab.spawn_net_only_env(
            &lb.netns,
            &format!("bascule-run-{}", lb.role),
            &[bin, "run", "-c", config],
            env,
        )
    }

    /// Polls `GET /readyz` of the daemon on `lb` (its API on 127.0.0.1:9469) until it
    /// answers 200: at most `attempts` tries `interval` apart. Fails early, with its log,
    /// if `daemon` exits.
    pub fn wait_ready(
        &self,
        lb: &Host,
        daemon: &Spawned,
        attempts: usize,
        interval: Duration,
    ) -> Result<()> {
        let api = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), API_PORT);
        let mut last = String::new();
        for _ in 0..attempts {
            if let Some(status) = self.lab.exit_status(daemon) {
                bail!(
                    "{} exited ({status}) before it was ready; its log:\n{}",
                    daemon.name,
                    daemon.log_text()
                );
            }
            match http_request(&lb.netns, api, "GET", "/readyz", &[], None, interval) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(err) => last = format!("{err:#}"),
            }
            thread::sleep(interval);
        }
        bail!(
            "{} not ready after {attempts} attempts (last: {last}); its log:\n{}",
            daemon.name,
            daemon.log_text()
        )
    }

    /// `METHOD PATH` on the API of the daemon on `lb`: (status, body).
    pub fn api(
        &self,
        lb: &Host,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<(u16, String)> {
        let api = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), API_PORT);
        http_request(
            &lb.netns,
            api,
            method,
            path,
            &[],
            body,
            Duration::from_secs(10),
        )
    }

    /// Starts `bascule decap --interface eth0` on a backend.
    pub fn start_decap(&self, bin: &Path, backend: &Host) -> Result<Spawned> {
        let bin = path_str(bin)?;
        self.lab.spawn(
            &backend.netns,
            &format!("bascule-decap-{}", backend.role),
            &[bin, "decap", "--interface", "eth0"],
        )
    }

    /// GET / to `vip` from the client.
    pub fn get(&self, vip: SocketAddr, timeout: Duration) -> Result<String> {
        http_get(&self.client.netns, vip, timeout)
    }

    /// Polls `vip` from the client until it answers: `attempts` tries, each bounded by
    /// `interval` (at most `attempts * interval` in all). Fails early, with their logs, if
    /// one of `daemons` exits meanwhile, or on Ctrl-C once [`interrupt::install`]ed; on
    /// time-out, the error names the last failure and carries the daemons' logs.
    pub fn wait_for_vip(
        &self,
        vip: SocketAddr,
        daemons: &[&Spawned],
        attempts: usize,
        interval: Duration,
    ) -> Result<String> {
        let mut last_error = None;
        for _ in 0..attempts {
            if interrupt::interrupted() {
                bail!("interrupted while waiting for {vip}");
            }
            if let Some(err) = self.exited_daemon(daemons) {
                return Err(err);
            }
            let started = Instant::now();
            match self.get(vip, interval) {
                Ok(body) => return Ok(body),
                Err(err) => last_error = Some(err),
            }
            if let Some(rest) = interval.checked_sub(started.elapsed()) {
                thread::sleep(rest);
            }
        }
        let waited = interval * attempts as u32;
        let logs: String = daemons
            .iter()
            .map(|d| format!("\n---- {} log ----\n{}", d.name, d.log_text()))
            .collect();
        bail!(
            "{vip} did not answer within {} attempts ({:.1} s); last error: {:#}{logs}",
            attempts,
            waited.as_secs_f64(),
            last_error.map(|e| format!("{e:#}")).unwrap_or_default()
        )
    }

    fn exited_daemon(&self, daemons: &[&Spawned]) -> Option<anyhow::Error> {
        daemons.iter().find_map(|d| {
            self.lab.exit_status(d).map(|status| {
                anyhow::anyhow!(
                    "{} exited ({status}) before the VIP answered; its log:\n{}",
                    d.name,
                    d.log_text()
                )
            })
        })
    }
}

/// `vips` held on `lo` (/32, /128) with ARP for them suppressed on every interface: the
/// host accepts VIP traffic (a `dr` real server) but never attracts it.
pub fn hold_vips_on_lo(host: &Host, vips: &[IpAddr]) -> Result<()> {
    let ns = &host.netns;
    sysctl(
        ns,
        &[
            ("net.ipv4.conf.all.arp_ignore", "1"),
            ("net.ipv4.conf.all.arp_announce", "2"),
            ("net.ipv4.conf.eth0.arp_ignore", "1"),
            ("net.ipv4.conf.eth0.arp_announce", "2"),
        ],
    )?;
    for vip in vips {
        let addr = format!("{vip}/{}", if vip.is_ipv4() { 32 } else { 128 });
        let mut args = vec!["-n", ns, "addr", "add", &addr, "dev", "lo"];
        if vip.is_ipv6() {
            args.push("nodad");
        }
        ip(&args)?;
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// The bascule YAML for the lab's LB nodes: XDP on `eth0` in the default mode (`auto`,
/// which takes generic mode on a veth), services `web`
/// (10.112.0.100:80) and `web6` ([fd00:112::100]:80), TCP, Maglev, `forwarding` to every
/// backend of the same family, weight 1.
pub fn lb_config_yaml(forwarding: Forwarding, backends: &[Host]) -> String {
    let mut yaml = String::from("node:\n  interfaces:\n    - name: eth0\nservices:\n");
    for (name, vip) in [("web", IpAddr::V4(VIP4)), ("web6", IpAddr::V6(VIP6))] {
        let _ = write!(
            yaml,
            "  - name: {name}\n    vip: {vip}\n    port: {VIP_PORT}\n    protocol: tcp\n    \
             scheduler: mh\n    forwarding: {}\n    backends:\n",
            forwarding.as_str()
        );
        let same_family = backends
            .iter()
            .flat_map(|b| &b.addrs)
            .filter(|a| a.is_ipv4() == vip.is_ipv4());
        for address in same_family {
            let _ = write!(yaml, "      - address: {address}\n        weight: 1\n");
        }
    }
    yaml
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(i: u8) -> Host {
        Host {
            role: format!("b{i}"),
            netns: format!("bsc1x0-b{i}"),
            mac: String::new(),
            addrs: vec![segment_v4(10 + i), segment_v6(10 + i)],
        }
    }

    /// Without comments and blank lines: the YAML structure a parser sees.
    fn meaningful_lines(yaml: &str) -> Vec<String> {
        yaml.lines()
            .map(|line| {
                match line
                    .find(" #")
                    .or(line.trim_start().starts_with('#').then_some(0))
                {
                    Some(at) => line[..at].trim_end().to_string(),
                    None => line.trim_end().to_string(),
                }
            })
            .filter(|line| !line.trim().is_empty())
            .collect()
    }

    #[test]
    fn segment_addresses_read_alike_in_both_families() {
        assert_eq!(segment_v4(11).to_string(), "10.111.0.11");
        assert_eq!(segment_v6(11).to_string(), "fd00:111::11");
        assert_eq!(segment_v6(2).to_string(), "fd00:111::2");
    }

    #[test]
    fn lb_config_lists_backends_per_family() {
        let yaml = lb_config_yaml(Forwarding::Tun, &[backend(1), backend(2)]);
        assert!(yaml.contains("vip: 10.112.0.100\n"), "{yaml}");
        assert!(yaml.contains("vip: fd00:112::100\n"), "{yaml}");
        assert_eq!(yaml.matches("forwarding: tun").count(), 2, "{yaml}");
        assert!(yaml.contains("- address: 10.111.0.12\n"), "{yaml}");
        assert!(yaml.contains("- address: fd00:111::12\n"), "{yaml}");
    }

    /// `deploy/examples/demo.yaml` is the config `cargo xtask demo` runs on lb1; it must
    /// stay the three-backend dr config of the product lab (`crate::product`), whatever
    /// its comments say.
    #[test]
    fn demo_example_is_the_lab_config() {
        use crate::product::{lb_config, Mode, MASTER_PRIORITY};
        let example = include_str!("../../deploy/examples/demo.yaml");
        let lb1 = Host {
            role: "lb1".to_string(),
            netns: "bsc1x0-lb1".to_string(),
            mac: String::new(),
            addrs: vec![segment_v4(2), segment_v6(2)],
        };
        let backends = [backend(1), backend(2), backend(3)];
        let generated = lb_config(Mode::Dr, &lb1, &backends, MASTER_PRIORITY);
        assert_eq!(meaningful_lines(example), meaningful_lines(&generated));
    }
}
