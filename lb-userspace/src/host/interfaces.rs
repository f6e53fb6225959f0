//! Interfaces (index, name, MAC) and their addresses, dumped over rtnetlink (a reload asks
//! for them: two `ip` processes cost ~6 ms of a reload's wall time on a machine with the
//! SRSO mitigation).

use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, Context, Result};
use rtnetlink::packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};

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

/// Every interface of the node with its addresses (global and link-local, not loopback's):
/// what `Config::check_host` checks a configuration against.
pub fn addresses_by_interface() -> Result<HashMap<String, Vec<IpAddr>>> {
    let (links, addresses) = (links()?, addresses()?);
    let mut out = HashMap::new();
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
        out.insert(link.name, addrs);
    }
    Ok(out)
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
    /// How an XDP program is attached to it, as the kernel reports (`IFLA_XDP`).
    xdp: Option<XdpAttached>,
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
                let (mut name, mut mac, mut xdp) = (None, None, None);
                for attr in &l.attributes {
                    match attr {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(&bytes[..]).ok(),
                        LinkAttribute::Xdp(nlas) => {
                            xdp = nlas.iter().find_map(|n| match n {
                                LinkXdp::Attached(a) => Some(*a),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                Some(Interface {
                    index: l.header.index,
                    name: name?,
                    mac,
                    xdp,
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
/// (the controller's thread has no async runtime); `neighbours` dumps through it too.
pub(super) fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>> {
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

/// An interface's MAC address, as this network namespace sees it.
pub fn interface_mac(interface: &str) -> Result<[u8; 6]> {
    let links = links()?;
    link_named(&links, interface)?
        .mac
        .with_context(|| format!("{interface}: no Ethernet address"))
}

/// The name of the driver behind `interface`, as `ethtool -i` prints it (`veth`,
/// `virtio_net`, `mlx5_core`...): `SIOCETHTOOL` with `ETHTOOL_GDRVINFO`.
pub fn driver(interface: &str) -> Result<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo`.
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    if interface.len() >= libc::IFNAMSIZ {
        bail!("interface name `{interface}` is too long");
    }
    // SAFETY: plain data; all zeros is valid.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: plain data; all zeros is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(interface.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("cannot open a socket for ethtool");
    }
    // SAFETY: SIOCETHTOOL with an ifreq naming the interface and pointing at `info`,
    // which outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req) };
    let err = std::io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err).with_context(|| format!("cannot read the driver of {interface}"));
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// How an XDP program runs on `interface`, as the kernel reports it: `native`,
/// `generic`, `offloaded`, `several` (programs in more than one mode) or `none`.
pub fn xdp_attach_mode(interface: &str) -> Result<&'static str> {
    let links = links()?;
    Ok(match link_named(&links, interface)?.xdp {
        Some(XdpAttached::Driver) => "native",
        Some(XdpAttached::SocketBuffer) => "generic",
        Some(XdpAttached::Hardware) => "offloaded",
        Some(XdpAttached::Multiple) => "several",
        Some(XdpAttached::None) | None => "none",
        Some(_) => "unknown",
    })
}
