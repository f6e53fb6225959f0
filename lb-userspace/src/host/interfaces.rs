//! What the kernel knows about the node's network: neighbour (ARP/NDP) entries and
//! interface addresses. Interfaces (index, name, MAC) and their addresses are dumped over
//! rtnetlink (a reload asks for them: two `ip` processes cost ~6 ms of a reload's wall
//! time on a machine with the SRSO mitigation); neighbour entries are read through
//! iproute2's JSON output (`ip -j neigh`), which every target host has.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkMessage},
    RouteNetlinkMessage,
};
use serde_json::Value;

fn ip_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2): install it, or run `cargo xtask setup`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("ip {}: unexpected output", args.join(" ")))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Every usable neighbour entry (both families): address -> MAC. One dump, however
/// many backends are looked up (a per-address query would spawn `ip` per backend).
pub fn neighbour_macs() -> Result<HashMap<IpAddr, [u8; 6]>> {
    let v = ip_json(&["neigh", "show"])?;
    let mut out = HashMap::new();
    for entry in v.as_array().into_iter().flatten() {
        let failed = entry["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "FAILED" || x == "INCOMPLETE"));
        let addr = entry["dst"].as_str().and_then(|a| a.parse::<IpAddr>().ok());
        if let (Some(addr), Some(mac), false) =
            (addr, entry["lladdr"].as_str().and_then(parse_mac), failed)
        {
            out.entry(addr).or_insert(mac);
        }
    }
    Ok(out)
}

/// Makes the kernel resolve `addr`'s neighbour entry: one empty UDP datagram to the
/// discard port. The datagram itself is harmless; the ARP/NDP exchange is the point.
pub fn provoke_resolution(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], (addr, 9));
    }
}

/// Resolves the MACs of `addrs`, provoking resolution for the missing ones and waiting at
/// most `wait`. Returns what was found; the caller decides what a missing MAC means.
pub fn resolve_macs(addrs: &[IpAddr], wait: Duration) -> Result<Vec<(IpAddr, [u8; 6])>> {
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut missing: Vec<IpAddr> = addrs.to_vec();
    let mut provoked = false;
    loop {
        let table = neighbour_macs()?;
        missing.retain(|a| match table.get(a) {
            Some(mac) => {
                found.push((*a, *mac));
                false
            }
            None => true,
        });
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        if !provoked {
            missing.iter().for_each(|&a| provoke_resolution(a));
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Global-scope (and host-scope) addresses of an interface, IPv4 first.
pub fn interface_addresses(interface: &str) -> Result<Vec<IpAddr>> {
    let (links, addresses) = (links()?, addresses()?);
    let index = link_named(&links, interface)?.index;
    let mut out: Vec<IpAddr> = addresses
        .iter()
        .filter(|a| a.index == index)
        .filter(|a| matches!(a.scope, AddressScope::Universe | AddressScope::Host))
        .map(|a| a.address)
        .collect();
    out.sort_by_key(|a| a.is_ipv6());
    Ok(out)
}

/// Every interface of the node with its addresses (global and link-local, not loopback's),
/// for `Config::check_host`.
pub fn host_facts() -> Result<crate::config::HostFacts> {
    let (links, addresses) = (links()?, addresses()?);
    let mut facts = crate::config::HostFacts::default();
    for link in links {
        let addrs = addresses
            .iter()
            .filter(|a| a.index == link.index)
            .filter(|a| {
                matches!(
                    a.scope,
                    AddressScope::Universe | AddressScope::Host | AddressScope::Link
                )
            })
            .map(|a| a.address)
            .filter(|a| !a.is_loopback())
            .collect();
        facts.interfaces.insert(link.name, addrs);
    }
    Ok(facts)
}

/// One address of an interface, as `ip addr` shows it.
struct InterfaceAddress {
    index: u32,
    scope: AddressScope,
    /// The local address: `IFA_LOCAL`, or `IFA_ADDRESS` where there is none (IPv6).
    address: IpAddr,
}

/// An interface, as `ip link` shows it.
struct Interface {
    index: u32,
    name: String,
    /// Its Ethernet address, if it has one.
    mac: Option<[u8; 6]>,
}

/// The interface called `name` in `links`.
fn link_named<'l>(links: &'l [Interface], name: &str) -> Result<&'l Interface> {
    links
        .iter()
        .find(|l| l.name == name)
        .with_context(|| format!("no interface {name} in this network namespace"))
}

/// Every interface of this network namespace.
fn links() -> Result<Vec<Interface>> {
    Ok(dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => {
                let (mut name, mut mac) = (None, None);
                for attr in &l.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                        _ => {}
                    }
                }
                Some(Interface {
                    index: l.header.index,
                    name: name?,
                    mac,
                })
            }
            _ => None,
        })
        .collect())
}

/// Every address of every interface of this network namespace.
fn addresses() -> Result<Vec<InterfaceAddress>> {
    Ok(
        dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    let (mut local, mut address) = (None, None);
                    for attr in &a.attributes {
                        match attr {
                            AddressAttribute::Local(ip) => local = Some(*ip),
                            AddressAttribute::Address(ip) => address = Some(*ip),
                            _ => {}
                        }
                    }
                    Some(InterfaceAddress {
                        index: a.header.index,
                        scope: a.header.scope,
                        address: local.or(address)?,
                    })
                }
                _ => None,
            })
            .collect(),
    )
}

/// What the kernel answers one rtnetlink dump request, over a blocking socket of its own
/// (the controller's thread has no async runtime).
fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
    use rtnetlink::{
        packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST},
        sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr},
    };
    let mut socket = Socket::new(NETLINK_ROUTE).context("cannot open a netlink socket")?;
    socket.bind_auto().context("cannot bind a netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("cannot connect a netlink socket")?;
    let mut message = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(request));
    message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    message.header.sequence_number = 1;
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    socket
        .send(&buf, 0)
        .context("netlink: cannot send a dump request")?;
    let mut out = Vec::new();
    loop {
        let (data, _) = socket
            .recv_from_full()
            .context("netlink: cannot read a dump")?;
        let mut at = 0;
        while at < data.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[at..])
                .map_err(|e| anyhow::anyhow!("netlink: unreadable answer: {e}"))?;
            let length = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => bail!("netlink: dump refused: {e}"),
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                _ => {}
            }
            if length == 0 {
                bail!("netlink: a message of length 0");
            }
            // Messages start 4-byte aligned (NLMSG_ALIGN).
            at += length.next_multiple_of(4);
        }
    }
}

/// Addresses held on `lo` other than loopback's own: the VIPs a backend serves.
pub fn loopback_vips() -> Result<Vec<IpAddr>> {
    Ok(interface_addresses("lo")?
        .into_iter()
        .filter(|a| !a.is_loopback())
        .collect())
}

/// Turns on forwarding for `interface` (per family). `bpf_fib_lookup`, which `tun` uses
/// to find the tunnel's next hop, answers "forwarding disabled" without it. For IPv6,
/// `accept_ra` 1 is raised to 2 first so the interface keeps taking router advertisements.
/// Returns the settings it changed.
pub fn enable_forwarding(interface: &str, v4: bool, v6: bool) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if v4 {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"),
            "1",
            None,
            &mut changed,
        )?;
    }
    if v6 {
        set_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{interface}/accept_ra"),
            "2",
            Some("1"),
            &mut changed,
        )?;
        set_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"),
            "1",
            None,
            &mut changed,
        )?;
    }
    Ok(changed)
}

/// An interface's MAC address, as this network namespace sees it.
pub fn interface_mac(interface: &str) -> Result<[u8; 6]> {
    let links = links()?;
    link_named(&links, interface)?
        .mac
        .with_context(|| format!("{interface}: no Ethernet address"))
}

/// Lets the kernel deliver `nat` replies the datapath cannot: when the node has no
/// neighbour entry for the client (a new VRRP master has never talked to the clients of
/// the flows it takes over), `bpf_fib_lookup` fails and the rewritten reply, whose source
/// is now the VIP, is passed to the kernel, which resolves the neighbour and forwards it
/// as IPVS's NAT does. For that the kernel must accept a packet from one of its own
/// addresses (IPv4: `accept_local` on `interface`) and forward IPv6 at all (the global
/// `all.forwarding`; the per-interface setting only serves `bpf_fib_lookup`). Without
/// them such replies are dropped until the client happens to send the node an ARP request
/// or a neighbour solicitation. Returns the settings it changed.
pub fn enable_nat_fallback(interface: &str, v4: bool, v6: bool) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if v4 {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{interface}/accept_local"),
            "1",
            None,
            &mut changed,
        )?;
    }
    if v6 {
        set_sysctl(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "1",
            None,
            &mut changed,
        )?;
    }
    Ok(changed)
}

/// Writes `value` to sysctl file `path` unless it holds it already (or, with `only_if`,
/// unless it holds something else than that); records a change in `changed`.
fn set_sysctl(
    path: &str,
    value: &str,
    only_if: Option<&str>,
    changed: &mut Vec<String>,
) -> Result<()> {
    let now = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let now = now.trim();
    if now != value && only_if.is_none_or(|o| o == now) {
        std::fs::write(path, value).with_context(|| format!("cannot write {value} to {path}"))?;
        changed.push(format!("{path}={value}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
