//! The scale-out lab: LB nodes announce VIPs by BGP (BIRD) to a router that spreads the
//! VIPs' traffic over them by ECMP.
//!
//! ```text
//!   client ──── eth1 router eth0 ──── bridge br0 (namespace {prefix}-sw)
//!   .10 / ::10  .1 / ::1  .1 / ::1    ┌──────────┬──────────┬──────────┬─────
//!   10.110.0.0/24                     lb1        lb2        lb3        b1 b2 b3
//!   fd00:110::/64                     .2 / ::2   .3 / ::3   .4 / ::4   .11 .12 .13
//! ```
//!
//! The LB segment is 10.111.0.0/24 and fd00:111::/64, as in [`crate::topology`], with the
//! same VIPs (10.112.0.100, fd00:112::100) held by the backends on `lo` with ARP
//! suppressed; backends route back to the client via the router. The client has a link
//! of its own to the router and a default route through it.
//!
//! The router runs BIRD with `deploy/bird/router.conf`, each LB node with
//! `deploy/bird/lb-node.conf` (their `@...@` values filled in, logs to stderr); the
//! router forwards, hashing the 5-tuple for multipath routes in both families. A node
//! announces a VIP by holding `blackhole VIP table 200 proto 186` ([`ScaleOutLab::announce`]),
//! which bascule does once `announce:` is configured; the router's routes show who
//! announces what ([`ScaleOutLab::next_hops`]).

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

use crate::{
    lab::{ip, sysctl, Host, Lab, Spawned},
    topology::{hold_vips_on_lo, VIP4, VIP6},
};

/// The LB node's and the router's BIRD configurations, as shipped.
pub const LB_NODE_CONF: &str = include_str!("../../deploy/bird/lb-node.conf");
pub const ROUTER_CONF: &str = include_str!("../../deploy/bird/router.conf");

/// bascule's `announce.table` and `announce.protocol` defaults.
pub const ANNOUNCE_TABLE: u32 = 200;
pub const ANNOUNCE_PROTOCOL: u8 = 186;
pub const ROUTER_AS: u32 = 65000;
pub const NODE_AS: u32 = 65001;
/// BFD's detection time in the shipped configurations: 3 probes 100 ms apart.
pub const BFD_DETECTION: Duration = Duration::from_millis(300);
/// LB nodes and backends in the lab.
pub const LB_NODES: u8 = 3;
pub const BACKENDS: u8 = 3;

/// How long BIRD gets to bring up every BGP session and its BFD session.
const SESSIONS_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the router's routes and BIRD's state are read while waiting.
const POLL: Duration = Duration::from_millis(10);

fn segment(last: u8) -> [IpAddr; 2] {
    let v6 = u16::from_str_radix(&last.to_string(), 16).expect("decimal digits are hex digits");
    [
        IpAddr::V4(Ipv4Addr::new(10, 111, 0, last)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x111, 0, 0, 0, 0, 0, v6)),
    ]
}

fn client_link(last: u8) -> [IpAddr; 2] {
    let v6 = u16::from_str_radix(&last.to_string(), 16).expect("decimal digits are hex digits");
    [
        IpAddr::V4(Ipv4Addr::new(10, 110, 0, last)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x110, 0, 0, 0, 0, 0, v6)),
    ]
}

/// A BIRD daemon of the lab.
#[derive(Clone, Debug)]
pub struct Bird {
    pub process: Spawned,
    /// Its control socket, for `birdc -s`.
    pub socket: PathBuf,
}

/// A namespace this lab made outside [`Lab`]'s bridge (the client's); deleted on drop.
struct OwnedNetns(String);

impl Drop for OwnedNetns {
    fn drop(&mut self) {
        if let Err(err) = ip(&["netns", "del", &self.0]) {
            // Not eprintln!: this may run while unwinding, where a second panic aborts.
            let _ = writeln!(std::io::stderr(), "bgp lab: {err:#}");
        }
    }
}

/// The lab described in the module documentation, BGP sessions and BFD up.
pub struct ScaleOutLab {
    pub client: Host,
    pub router: Host,
    pub lbs: Vec<Host>,
    pub backends: Vec<Host>,
    pub router_bird: Bird,
    /// Same order as `lbs`.
    pub lb_birds: Vec<Bird>,
    client_netns: OwnedNetns,
    /// Last: killing the daemons and deleting the namespaces comes after the rest.
    pub lab: Lab,
}

impl ScaleOutLab {
    /// Builds the lab, starts BIRD on the router and the LB nodes, and waits (at most
    /// 20 s) until the router has an established BGP session with every node in both
    /// families, each with BFD up.
    pub fn new(tag: &str) -> Result<ScaleOutLab> {
        require_bird()?;
        let mut lab = Lab::new(tag)?;
        let router = lab.add_host("router", &segment(1))?;
        sysctl(
            &router.netns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.fib_multipath_hash_policy", "1"),
                ("net.ipv6.fib_multipath_hash_policy", "1"),
            ],
        )?;
        let (client, client_netns) = add_client(&lab, &router)?;
        let mut lbs = Vec::new();
        for i in 1..=LB_NODES {
            lbs.push(lab.add_host(&format!("lb{i}"), &segment(1 + i))?);
        }
        let mut backends = Vec::new();
        for i in 1..=BACKENDS {
            let backend = lab.add_host(&format!("b{i}"), &segment(10 + i))?;
            hold_vips_on_lo(&backend, &[IpAddr::V4(VIP4), IpAddr::V6(VIP6)])?;
            route_default_via(&backend.netns, &router)?;
            backends.push(backend);
        }
        let router_bird = start_bird(&lab, &router, &router_config(&router)?)?;
        let mut lb_birds = Vec::new();
        for lb in &lbs {
            lb_birds.push(start_bird(&lab, lb, &lb_node_config(lb, &router)?)?);
        }
        let built = ScaleOutLab {
            client,
            router,
            lbs,
            backends,
            router_bird,
            lb_birds,
            client_netns,
            lab,
        };
        built.wait_sessions_up()?;
        Ok(built)
    }

    /// The client's namespace (`{prefix}-client`).
    pub fn client_netns(&self) -> &str {
        &self.client_netns.0
    }

    /// Polls the router's BIRD until `2 * LB_NODES` BGP sessions are established and as
    /// many BFD sessions are up.
    fn wait_sessions_up(&self) -> Result<()> {
        let want = 2 * usize::from(LB_NODES);
        let deadline = Instant::now() + SESSIONS_TIMEOUT;
        loop {
            // Until BIRD has opened its control socket, birdc fails: nothing is up yet.
            let count = |command: &str, up: &dyn Fn(&str) -> bool| {
                birdc(&self.router_bird, command)
                    .map(|out| out.lines().filter(|l| up(l)).count())
                    .unwrap_or(0)
            };
            let established = count("show protocols", &|l| {
                (l.starts_with("lb4_") || l.starts_with("lb6_"))
                    && l.split_whitespace().any(|w| w == "Established")
            });
            let bfd_up = count("show bfd sessions", &|l| {
                l.split_whitespace().nth(2) == Some("Up")
            });
            if established == want && bfd_up == want {
                return Ok(());
            }
            if let Some(dead) = self.exited_bird() {
                return Err(dead);
            }
            if Instant::now() >= deadline {
                bail!(
                    "after {:?}, {established} of {want} BGP sessions established and \
                     {bfd_up} of {want} BFD sessions up on the router{}",
                    SESSIONS_TIMEOUT,
                    self.diagnostics()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn exited_bird(&self) -> Option<anyhow::Error> {
        std::iter::once(&self.router_bird)
            .chain(&self.lb_birds)
            .find_map(|b| {
                self.lab.exit_status(&b.process).map(|status| {
                    anyhow!(
                        "{} exited ({status}); its log:\n{}",
                        b.process.name,
                        b.process.log_text()
                    )
                })
            })
    }

    /// The router's BGP and BFD state and every BIRD's log, for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut text = String::new();
        for what in ["show protocols", "show bfd sessions"] {
            let out = birdc(&self.router_bird, what).unwrap_or_else(|e| format!("{e:#}"));
            text.push_str(&format!("\n---- router: birdc {what} ----\n{out}"));
        }
        for bird in std::iter::once(&self.router_bird).chain(&self.lb_birds) {
            text.push_str(&format!(
                "\n---- {} log ----\n{}",
                bird.process.name,
                bird.process.log_text()
            ));
        }
        text
    }

    /// `lb`'s address on the LB segment in `vip`'s family: its next hop on the router.
    pub fn next_hop_of(&self, lb: &Host, vip: IpAddr) -> IpAddr {
        let address = if vip.is_ipv4() { lb.ipv4() } else { lb.ipv6() };
        address.expect("LB nodes have both families")
    }

    /// The next hops of `lbs` for `vip`.
    pub fn next_hops_of(&self, lbs: &[&Host], vip: IpAddr) -> BTreeSet<IpAddr> {
        lbs.iter().map(|lb| self.next_hop_of(lb, vip)).collect()
    }

    /// Makes `lb` announce `vip`, as bascule does: `ip route add blackhole VIP/32 table
    /// 200 proto 186` (/128 for IPv6).
    pub fn announce(&self, lb: &Host, vip: IpAddr) -> Result<()> {
        change_announce_route(lb, "add", vip)
    }

    /// Makes `lb` stop announcing `vip`: deletes its route.
    pub fn withdraw(&self, lb: &Host, vip: IpAddr) -> Result<()> {
        change_announce_route(lb, "del", vip)
    }

    /// The router's next hops for `vip` (`ip -j route show VIP` in its namespace): one per
    /// LB node it sends the VIP's traffic to; empty without a route.
    pub fn next_hops(&self, vip: IpAddr) -> Result<BTreeSet<IpAddr>> {
        let family = if vip.is_ipv4() { "-4" } else { "-6" };
        let vip = vip.to_string();
        let json = ip(&[
            "-n",
            &self.router.netns,
            "-j",
            family,
            "route",
            "show",
            &vip,
        ])?;
        parse_next_hops(&json)
    }

    /// Polls the router until its next hops for `vip` are exactly `expected` (every 10 ms,
    /// at most `timeout`); returns how long it took.
    pub fn wait_next_hops(
        &self,
        vip: IpAddr,
        expected: &BTreeSet<IpAddr>,
        timeout: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            let seen = self.next_hops(vip)?;
            if &seen == expected {
                return Ok(started.elapsed());
            }
            if started.elapsed() >= timeout {
                bail!(
                    "after {timeout:?} the router's next hops for {vip} are {seen:?}, not \
                     {expected:?}{}",
                    self.diagnostics()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// The BIRD of LB node `lb`.
    pub fn bird_of(&self, lb: &Host) -> Result<&Bird> {
        self.lbs
            .iter()
            .position(|l| l == lb)
            .map(|i| &self.lb_birds[i])
            .with_context(|| format!("{} is not an LB node of this lab", lb.role))
    }
}

/// `ip route VERB blackhole VIP/32 table 200 proto 186` (or `/128`) in `lb`.
fn change_announce_route(lb: &Host, verb: &str, vip: IpAddr) -> Result<()> {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    let destination = format!("{vip}/{len}");
    let (table, protocol) = (ANNOUNCE_TABLE.to_string(), ANNOUNCE_PROTOCOL.to_string());
    ip(&[
        "-n",
        &lb.netns,
        "route",
        verb,
        "blackhole",
        &destination,
        "table",
        &table,
        "proto",
        &protocol,
    ])
    .map(drop)
}

fn require_bird() -> Result<()> {
    match Command::new("bird").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(err) => Err(anyhow!(err))
            .context("cannot run `bird`: install BIRD 2 (`cargo xtask setup` installs bird2)"),
    }
}

/// The client's namespace `{prefix}-client`, linked to the router's `eth1`.
fn add_client(lab: &Lab, router: &Host) -> Result<(Host, OwnedNetns)> {
    let ns = format!("{}-client", lab.prefix());
    ip(&["netns", "add", &ns])?;
    let owned = OwnedNetns(ns.clone());
    sysctl(
        &ns,
        &[
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
        ],
    )?;
    let r = &router.netns;
    ip(&[
        "-n", r, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ])?;
    let [router4, router6] = client_link(1);
    let addrs = client_link(10);
    for (netns, dev, [v4, v6]) in [(r, "eth1", [router4, router6]), (&ns, "eth0", addrs)] {
        ip(&["-n", netns, "link", "set", dev, "up"])?;
        ip(&["-n", netns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
        let v6 = format!("{v6}/64");
        ip(&["-n", netns, "addr", "add", &v6, "dev", dev, "nodad"])?;
    }
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    let router_side = Host {
        role: "router".to_string(),
        netns: r.clone(),
        mac: String::new(),
        addrs: vec![router4, router6],
    };
    route_default_via(&ns, &router_side)?;
    let mac = ip(&["-n", &ns, "-o", "link", "show", "dev", "eth0"])?
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let client = Host {
        role: "client".to_string(),
        netns: ns,
        mac,
        addrs: addrs.to_vec(),
    };
    Ok((client, owned))
}

/// Default routes of namespace `ns` via `router`'s addresses, both families.
fn route_default_via(ns: &str, router: &Host) -> Result<()> {
    for (family, via) in [("-4", router.ipv4()), ("-6", router.ipv6())] {
        let via = via.context("the router has both families")?.to_string();
        ip(&["-n", ns, family, "route", "add", "default", "via", &via])?;
    }
    Ok(())
}

/// `router.conf` with the lab's values, logging to stderr.
pub fn router_config(router: &Host) -> Result<String> {
    let id = router.ipv4().context("router without IPv4")?.to_string();
    let filled = fill_placeholders(
        ROUTER_CONF,
        &[
            ("ROUTER_ID", id),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("LB_AS", NODE_AS.to_string()),
            ("LB_NET_IPV4", "10.111.0.0/24".to_string()),
            ("LB_NET_IPV6", "fd00:111::/64".to_string()),
            ("VIPS_IPV4", "10.112.0.0/24{32,32}".to_string()),
            ("VIPS_IPV6", "fd00:112::/64{128,128}".to_string()),
        ],
    )?;
    log_to_stderr(&filled)
}

/// `lb-node.conf` with `lb`'s values, logging to stderr.
pub fn lb_node_config(lb: &Host, router: &Host) -> Result<String> {
    let v4 = |h: &Host| h.ipv4().map(|a| a.to_string()).context("IPv4 address");
    let v6 = |h: &Host| h.ipv6().map(|a| a.to_string()).context("IPv6 address");
    let filled = fill_placeholders(
        LB_NODE_CONF,
        &[
            ("NODE_ID", v4(lb)?),
            ("NODE_IPV4", v4(lb)?),
            ("NODE_IPV6", v6(lb)?),
            ("ROUTER_IPV4", v4(router)?),
            ("ROUTER_IPV6", v6(router)?),
            ("NODE_AS", NODE_AS.to_string()),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("ANNOUNCE_TABLE", ANNOUNCE_TABLE.to_string()),
            ("ANNOUNCE_PROTOCOL", ANNOUNCE_PROTOCOL.to_string()),
        ],
    )?;
    log_to_stderr(&filled)
}

/// The lab reads BIRD's log from its stderr (a file per daemon), not the host's syslog,
/// with the protocols' state changes and events (connection attempts, BFD).
fn log_to_stderr(config: &str) -> Result<String> {
    const SHIPPED: &str = "log syslog all;";
    if !config.contains(SHIPPED) {
        bail!("the BIRD configuration no longer says `{SHIPPED}`: update the lab");
    }
    let logged = config.replacen(SHIPPED, "log stderr all;", 1);
    Ok(format!("debug protocols {{ states, events }};\n{logged}"))
}

/// Replaces every `@NAME@` of `template` with its value. Fails on a name the template
/// does not hold and on a placeholder left without a value.
pub fn fill_placeholders(template: &str, values: &[(&str, String)]) -> Result<String> {
    let mut text = template.to_string();
    for (name, value) in values {
        let placeholder = format!("@{name}@");
        if !text.contains(&placeholder) {
            bail!("the configuration has no placeholder {placeholder}");
        }
        text = text.replace(&placeholder, value);
    }
    // Every piece with an @ on both sides that reads like a NAME.
    let pieces: Vec<&str> = text.split('@').collect();
    let inner = &pieces[1..pieces.len().saturating_sub(1).max(1)];
    let left: Vec<&str> = inner
        .iter()
        .copied()
        .filter(|word| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .collect();
    if !left.is_empty() {
        bail!("placeholders without a value: {left:?}");
    }
    Ok(text)
}

/// Writes `config` into the lab directory and starts `bird -f -c CONF -s SOCKET` in
/// `host`'s namespace.
fn start_bird(lab: &Lab, host: &Host, config: &str) -> Result<Bird> {
    let conf = lab.dir().join(format!("bird-{}.conf", host.role));
    fs::write(&conf, config).with_context(|| format!("cannot write {}", conf.display()))?;
    let socket = lab.dir().join(format!("bird-{}.ctl", host.role));
    let (conf_arg, socket_arg) = (path_text(&conf)?, path_text(&socket)?);
    let process = lab.spawn(
        &host.netns,
        &format!("bird-{}", host.role),
        &["bird", "-f", "-c", conf_arg, "-s", socket_arg],
    )?;
    Ok(Bird { process, socket })
}

fn path_text(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("path {} is not UTF-8", path.display()))
}

/// `birdc -s SOCKET COMMAND...` (the socket is a file: no namespace to enter). Fails
/// while BIRD has not opened its socket yet.
pub fn birdc(bird: &Bird, command: &str) -> Result<String> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(&bird.socket)
        .args(command.split_whitespace())
        .output()
        .context("cannot run birdc")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Unable to connect") {
        bail!(
            "birdc {command} ({}): {text}{}",
            bird.process.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// The gateways of `ip -j route show` output: a multipath route's `nexthops`, a single
/// path's `gateway`.
pub fn parse_next_hops(json: &str) -> Result<BTreeSet<IpAddr>> {
    let routes: Vec<serde_json::Value> =
        serde_json::from_str(json).with_context(|| format!("not `ip -j` output: {json}"))?;
    let mut hops = BTreeSet::new();
    for route in &routes {
        let paths = match route["nexthops"].as_array() {
            Some(paths) => paths.iter().collect(),
            None => vec![route],
        };
        for path in paths {
            if let Some(gateway) = path["gateway"].as_str() {
                hops.insert(
                    gateway
                        .parse()
                        .with_context(|| format!("gateway {gateway}"))?,
                );
            }
        }
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(addrs: &[&str]) -> BTreeSet<IpAddr> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn next_hops_are_read_from_multipath_and_single_routes() {
        let multipath = r#"[{"dst":"10.112.0.100","protocol":"bird","metric":32,"flags":[],
            "nexthops":[{"gateway":"10.111.0.2","dev":"eth0","weight":1,"flags":[]},
                        {"gateway":"10.111.0.3","dev":"eth0","weight":1,"flags":[]}]}]"#;
        assert_eq!(
            parse_next_hops(multipath).unwrap(),
            set(&["10.111.0.2", "10.111.0.3"])
        );
        let single = r#"[{"dst":"fd00:112::100","gateway":"fd00:111::4","dev":"eth0",
            "protocol":"bird","metric":32,"flags":[],"pref":"medium"}]"#;
        assert_eq!(parse_next_hops(single).unwrap(), set(&["fd00:111::4"]));
        assert!(parse_next_hops("[]").unwrap().is_empty());
    }

    #[test]
    fn shipped_configs_are_filled_completely() {
        let router = Host {
            role: "router".to_string(),
            netns: String::new(),
            mac: String::new(),
            addrs: segment(1).to_vec(),
        };
        let lb = Host {
            role: "lb1".to_string(),
            netns: String::new(),
            mac: String::new(),
            addrs: segment(2).to_vec(),
        };
        let node = lb_node_config(&lb, &router).unwrap();
        assert!(
            node.contains("define NODE_IPV6         = fd00:111::2;"),
            "{node}"
        );
        assert!(node.contains("define ANNOUNCE_TABLE    = 200;"), "{node}");
        assert!(node.contains("log stderr all;") && !node.contains("syslog"));
        let router = router_config(&router).unwrap();
        assert!(
            router.contains("define VIPS_IPV6      = [ fd00:112::/64{128,128} ];"),
            "{router}"
        );
    }

    #[test]
    fn placeholders_left_or_unknown_are_errors() {
        let template = "a = @A@; b = @B_2@; fill in what is between two @ signs: @C@";
        let err = fill_placeholders(template, &[("A", "1".into())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"placeholders without a value: ["B_2", "C"]"#
        );
        let err = fill_placeholders(template, &[("D", "1".into())]).unwrap_err();
        assert_eq!(err.to_string(), "the configuration has no placeholder @D@");
        let all = [("A", "1".into()), ("B_2", "2".into()), ("C", "3".into())];
        assert_eq!(
            fill_placeholders(template, &all).unwrap(),
            "a = 1; b = 2; fill in what is between two @ signs: 3"
        );
    }
}
