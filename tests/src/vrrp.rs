//! VRRP in the lab: virtual addresses on the lab segment itself, owned by whichever LB node
//! is master and answered by ARP / NDP from it (the client reaches them on-link, with no
//! route via a particular node), bascule and keepalived configs for them, and what a test
//! looks at: who holds an address, the client's neighbour entries, frames on the wire.
//!
//! Backends hold these addresses on `lo` with ARP suppressed, as for the routed VIPs of
//! [`crate::topology`], so `dr` forwarding works the same whichever node is master.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bascule_bin,
    lab::{ip, Host, Lab, Spawned},
    topology::Topology,
};

/// On-link virtual addresses (in the segment 10.111.0.0/24, fd00:111::/64).
pub const LINK_VIP4: Ipv4Addr = Ipv4Addr::new(10, 111, 0, 100);
pub const LINK_VIP4_B: Ipv4Addr = Ipv4Addr::new(10, 111, 0, 101);
pub const LINK_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x111, 0, 0, 0, 0, 0, 0x100);

static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the VRRP labs of one test binary to one at a time: they assert failover times
/// against the protocol's own bounds, which two labs competing for two cores would blur.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A lab of two LB nodes (a VRRP pair) and `backends` backends.
pub fn pair_lab(tag: &str, backends: usize) -> Topology {
    Topology::new(tag, crate::TopologySpec { lbs: 2, backends }).expect("build the lab")
}

/// Writes a config file into the lab's directory.
pub fn write(topo: &Topology, name: &str, text: &str) -> PathBuf {
    topo.write_config(name, text).expect("write a config")
}

/// Starts the bascule under test on `lb` with `config`.
pub fn start(topo: &Topology, lb: &Host, config: &Path) -> Spawned {
    topo.start_bascule(&bascule_bin(), lb, config)
        .expect("start bascule")
}

/// The daemons' logs, one section each, for a failure message.
pub fn logs(daemons: &[&Spawned]) -> String {
    daemons
        .iter()
        .map(|d| format!("\n---- {} ----\n{}", d.name, d.log_text()))
        .collect()
}

/// Stops `daemon` with SIGTERM and asserts it exited cleanly in time.
pub fn stop(topo: &Topology, daemon: &Spawned) {
    let (status, in_time) = topo.lab.terminate(daemon).expect("stop");
    assert!(
        in_time && status.success(),
        "{} did not stop cleanly on SIGTERM ({status}):\n{}",
        daemon.name,
        daemon.log_text()
    );
}

/// One VRRP instance as a test wants it; [`Instance::yaml`] and [`Instance::keepalived`]
/// write it for bascule and keepalived alike.
#[derive(Clone, Debug)]
pub struct Instance {
    pub name: String,
    pub vrid: u8,
    pub priority: u8,
    pub version: u8,
    pub advert_interval: Duration,
    pub preempt: bool,
    pub password: Option<String>,
    pub vip: IpAddr,
    pub garp_repeat: u32,
    pub garp_interval: Duration,
    pub track_interfaces: Vec<String>,
    /// Names of `vrrp_scripts` (bascule only; the test writes the scripts).
    pub track_scripts: Vec<String>,
    /// One script for master, backup and fault.
    pub notify: Option<String>,
}

impl Instance {
    /// VRRPv3 on `eth0` for `vip`, preempting, 5 GARPs 200 ms apart.
    pub fn new(name: &str, vrid: u8, priority: u8, vip: IpAddr, advert_interval: Duration) -> Self {
        Instance {
            name: name.to_string(),
            vrid,
            priority,
            version: 3,
            advert_interval,
            preempt: true,
            password: None,
            vip,
            garp_repeat: 5,
            garp_interval: Duration::from_millis(200),
            track_interfaces: Vec::new(),
            track_scripts: Vec::new(),
            notify: None,
        }
    }

    fn prefixed_vip(&self) -> String {
        let len = if self.vip.is_ipv4() { 24 } else { 64 };
        format!("{}/{len}", self.vip)
    }

    /// Master_Down_Interval of a backup with this priority hearing a master that sends
    /// every `advert_interval` (RFC 5798: 3 intervals plus the skew).
    pub fn master_down_interval(&self) -> Duration {
        3 * self.advert_interval + self.skew_time()
    }

    pub fn skew_time(&self) -> Duration {
        self.advert_interval * (256 - u32::from(self.priority)) / 256
    }

    /// The instance as an item of bascule's `vrrp:` list.
    pub fn yaml(&self) -> String {
        let mut y = format!(
            "  - name: {}\n    interface: eth0\n    virtual_router_id: {}\n    priority: {}\n    \
             version: {}\n    advert_interval: {}ms\n    preempt: {}\n    \
             virtual_addresses: [{}]\n    garp: {{ repeat: {}, interval: {}ms }}\n",
            self.name,
            self.vrid,
            self.priority,
            self.version,
            self.advert_interval.as_millis(),
            self.preempt,
            self.prefixed_vip(),
            self.garp_repeat,
            self.garp_interval.as_millis(),
        );
        if let Some(p) = &self.password {
            let _ = writeln!(y, "    authentication: {{ type: pass, password: \"{p}\" }}");
        }
        if !self.track_interfaces.is_empty() {
            let _ = writeln!(
                y,
                "    track_interfaces: [{}]",
                self.track_interfaces.join(", ")
            );
        }
        if !self.track_scripts.is_empty() {
            let _ = writeln!(y, "    track_scripts: [{}]", self.track_scripts.join(", "));
        }
        if let Some(n) = &self.notify {
            let _ = writeln!(
                y,
                "    notify: {{ master: \"{n}\", backup: \"{n}\", fault: \"{n}\" }}"
            );
        }
        y
    }

    /// The instance as a keepalived `vrrp_instance` block.
    pub fn keepalived(&self) -> String {
        let secs = self.advert_interval.as_secs_f64();
        let mut k = format!(
            "vrrp_instance {} {{\n  state BACKUP\n  interface eth0\n  version {}\n  \
             virtual_router_id {}\n  priority {}\n  advert_int {secs}\n",
            self.name, self.version, self.vrid, self.priority
        );
        if !self.preempt {
            k.push_str("  nopreempt\n");
        }
        if let Some(p) = &self.password {
            let _ = writeln!(
                k,
                "  authentication {{\n    auth_type PASS\n    auth_pass {p}\n  }}"
            );
        }
        let _ = write!(
            k,
            "  virtual_ipaddress {{\n    {}\n  }}\n}}\n",
            self.prefixed_vip()
        );
        k
    }
}

/// The bascule config of an LB node: XDP (generic) on eth0, a `dr` service on port `port`
/// of each VIP over every backend of its family, and the VRRP instances.
pub fn bascule_config(
    backends: &[Host],
    services: &[(IpAddr, u16)],
    instances: &[Instance],
) -> String {
    let mut y = String::from("node:\n  interfaces:\n    - name: eth0\nservices:");
    if services.is_empty() {
        y.push_str(" []");
    }
    y.push('\n');
    for (i, (vip, port)) in services.iter().enumerate() {
        let _ = write!(
            y,
            "  - name: s{i}\n    vip: {vip}\n    port: {port}\n    protocol: tcp\n    \
             scheduler: mh\n    forwarding: dr\n    backends:\n"
        );
        for a in backends
            .iter()
            .flat_map(|b| &b.addrs)
            .filter(|a| a.is_ipv4() == vip.is_ipv4())
        {
            let _ = writeln!(y, "      - address: {a}");
        }
    }
    y.push_str("vrrp:\n");
    for i in instances {
        y.push_str(&i.yaml());
    }
    y
}

/// A whole keepalived.conf for `instances` (VRRP only).
pub fn keepalived_config(router_id: &str, instances: &[Instance]) -> String {
    let mut k = format!("global_defs {{\n  router_id {router_id}\n  script_user root\n}}\n");
    for i in instances {
        k.push_str(&i.keepalived());
    }
    k
}

/// Starts keepalived (VRRP only, in the foreground, logging to its lab log) on `host` with
/// `config`, pid files in the lab directory so that several can run at once.
pub fn start_keepalived(lab: &Lab, host: &Host, config: &Path) -> Result<Spawned> {
    let dir = lab.dir();
    let pid = |what: &str| dir.join(format!("keepalived-{}-{what}.pid", host.role));
    let (main, vrrp) = (pid("main"), pid("vrrp"));
    let args = [
        "keepalived",
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        "--vrrp",
        "--use-file",
        path_str(config)?,
        "--pid",
        path_str(&main)?,
        "--vrrp_pid",
        path_str(&vrrp)?,
    ];
    lab.spawn(&host.netns, &format!("keepalived-{}", host.role), &args)
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

/// Addresses on `host`'s `eth0`.
pub fn addresses(host: &Host) -> Result<Vec<IpAddr>> {
    let out = ip(&["-n", &host.netns, "-o", "addr", "show", "dev", "eth0"])?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

pub fn holds(host: &Host, addr: IpAddr) -> bool {
    addresses(host).is_ok_and(|a| a.contains(&addr))
}

/// Polls `condition` every 10 ms until it is true (returns the time it took) or `limit`
/// passes (returns an error naming `what`).
pub fn wait_for(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if condition() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until exactly `master` (and no other of `nodes`) holds `vip`.
pub fn wait_for_master(
    nodes: &[&Host],
    master: &Host,
    vip: IpAddr,
    limit: Duration,
) -> Result<Duration> {
    wait_for(
        &format!("{} alone holding {vip}", master.role),
        limit,
        || {
            nodes
                .iter()
                .all(|n| holds(n, vip) == (n.netns == master.netns))
        },
    )
}

/// The MAC address in `host`'s neighbour entry for `addr` on eth0, if it has one.
pub fn neighbour_mac(host: &Host, addr: IpAddr) -> Result<Option<String>> {
    let out = ip(&[
        "-n",
        &host.netns,
        "neigh",
        "show",
        "to",
        &addr.to_string(),
        "dev",
        "eth0",
    ])?;
    Ok(out.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        words.find(|w| *w == "lladdr")?;
        words.next().map(str::to_string)
    }))
}

/// Captures ARP and ICMPv6 on `host`'s eth0 (tcpdump with link-level headers, one line
/// per frame); returns once tcpdump is listening.
pub fn start_capture(lab: &Lab, host: &Host) -> Result<Spawned> {
    let capture = lab.spawn(
        &host.netns,
        &format!("tcpdump-{}", host.role),
        &[
            "tcpdump",
            "-i",
            "eth0",
            "-n",
            "-e",
            "-l",
            "-U",
            "arp or icmp6",
        ],
    )?;
    wait_for("tcpdump listening", Duration::from_secs(10), || {
        capture.log_text().contains("listening on")
    })
    .context("is tcpdump installed (`cargo xtask setup`)?")?;
    Ok(capture)
}

/// Gratuitous ARPs for `vip` sent by `mac` in a capture: requests whose sender and target
/// address are both `vip`.
pub fn gratuitous_arps(capture: &str, mac: &str, vip: Ipv4Addr) -> usize {
    let what = format!("Request who-has {vip} tell {vip}");
    capture
        .lines()
        .filter(|l| l.contains(&format!("{mac} > ff:ff:ff:ff:ff:ff")) && l.contains(&what))
        .count()
}

/// Unsolicited neighbour advertisements for `vip` sent by `mac` to all nodes.
pub fn unsolicited_nas(capture: &str, mac: &str, vip: Ipv6Addr) -> usize {
    let what = format!("neighbor advertisement, tgt is {vip}");
    capture
        .lines()
        .filter(|l| l.contains(&format!("{mac} > 33:33:00:00:00:01")) && l.contains(&what))
        .count()
}

/// Holds `vips` on every backend's `lo` (their ARP is already suppressed by the topology).
pub fn hold_on_backends(topo: &Topology, vips: &[IpAddr]) -> Result<()> {
    for b in &topo.backends {
        for vip in vips {
            let prefix = if vip.is_ipv4() { "32" } else { "128" };
            let addr = format!("{vip}/{prefix}");
            let mut args = vec!["-n", &b.netns, "addr", "add", &addr, "dev", "lo"];
            if vip.is_ipv6() {
                args.push("nodad");
            }
            ip(&args)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_writes_bascule_and_keepalived_alike() {
        let mut i = Instance::new(
            "VI_1",
            51,
            150,
            IpAddr::V4(LINK_VIP4),
            Duration::from_secs(1),
        );
        i.version = 2;
        i.password = Some("secret".into());
        let y = i.yaml();
        assert!(y.contains("virtual_router_id: 51\n"), "{y}");
        assert!(y.contains("virtual_addresses: [10.111.0.100/24]"), "{y}");
        assert!(
            y.contains("authentication: { type: pass, password: \"secret\" }"),
            "{y}"
        );
        let k = i.keepalived();
        assert!(
            k.contains("version 2\n") && k.contains("auth_pass secret\n"),
            "{k}"
        );
        assert!(k.contains("advert_int 1\n"), "{k}");
        assert!(k.contains("10.111.0.100/24"), "{k}");
        assert_eq!(
            i.master_down_interval(),
            Duration::from_secs(3) + Duration::from_secs(1) * 106 / 256
        );
    }

    #[test]
    fn capture_lines_are_recognised() {
        let arp = "12:00:00.1 02:aa:bb:cc:dd:ee > ff:ff:ff:ff:ff:ff, ethertype ARP (0x0806), length 42: Request who-has 10.111.0.100 tell 10.111.0.100, length 28";
        assert_eq!(gratuitous_arps(arp, "02:aa:bb:cc:dd:ee", LINK_VIP4), 1);
        assert_eq!(gratuitous_arps(arp, "02:aa:bb:cc:dd:ef", LINK_VIP4), 0);
        let na = "12:00:00.1 02:aa:bb:cc:dd:ee > 33:33:00:00:00:01, ethertype IPv6 (0x86dd), length 86: fe80::1 > ff02::1: ICMP6, neighbor advertisement, tgt is fd00:111::100, length 32";
        assert_eq!(unsolicited_nas(na, "02:aa:bb:cc:dd:ee", LINK_VIP6), 1);
    }
}
