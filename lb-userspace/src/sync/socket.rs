//! Sync's UDP socket: bound to `sync.port` on every address (peers' datagrams, and a
//! peer's bulk answer, arrive as unicast), and with `sync.group` a member of that group on
//! `sync.interface`, sending to it there, its own datagrams not looped back.

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
};

use anyhow::{bail, Context, Result};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

use crate::config::{StateSync, SyncMulticast};

/// Bytes of the receiving socket's buffer asked for: room for bursts (a peer's bulk of new
/// flows, or a flood of forged datagrams) while the receiver checks MACs.
const RECEIVE_BUFFER: i32 = 4 << 20;

/// The socket and where datagrams go: each peer, or the group.
pub(super) struct Bound {
    pub socket: UdpSocket,
    pub destinations: Vec<SocketAddr>,
}

pub(super) fn bind(config: &StateSync) -> Result<Bound> {
    let v4 = match &config.group {
        Some(g) => g.address.is_ipv4(),
        None => config.peers.iter().all(IpAddr::is_ipv4),
    };
    let any: IpAddr = if v4 {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let domain = if v4 { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .context("sync: cannot open a UDP socket")?;
    socket
        .bind(&SocketAddr::new(any, config.port).into())
        .with_context(|| format!("sync: cannot listen on UDP port {}", config.port))?;
    receive_buffer(&socket, RECEIVE_BUFFER);
    let destinations = match &config.group {
        Some(group) => {
            join(&socket, group)?;
            vec![SocketAddr::new(group.address, config.port)]
        }
        None => config
            .peers
            .iter()
            .map(|a| SocketAddr::new(*a, config.port))
            .collect(),
    };
    Ok(Bound {
        socket: socket.into(),
        destinations,
    })
}

/// Joins `group` on its interface, sends there (one hop: the group is the LB nodes'
/// segment), without looping its own datagrams back, and receives only the groups this
/// socket joined.
fn join(socket: &Socket, group: &SyncMulticast) -> Result<()> {
    let ifindex = interface_index(&group.interface)?;
    let context = || {
        format!(
            "sync: cannot join multicast group {} on {}",
            group.address, group.interface
        )
    };
    match group.address {
        IpAddr::V4(address) => {
            socket
                .join_multicast_v4_n(&address, &InterfaceIndexOrAddress::Index(ifindex))
                .with_context(context)?;
            multicast_if_v4(socket, ifindex).with_context(context)?;
            socket.set_multicast_loop_v4(false)?;
            socket.set_multicast_ttl_v4(1)?;
            socket.set_multicast_all_v4(false)?;
        }
        IpAddr::V6(address) => {
            socket
                .join_multicast_v6(&address, ifindex)
                .with_context(context)?;
            socket.set_multicast_if_v6(ifindex).with_context(context)?;
            socket.set_multicast_loop_v6(false)?;
            socket.set_multicast_hops_v6(1)?;
            socket.set_multicast_all_v6(false)?;
        }
    }
    Ok(())
}

fn interface_index(name: &str) -> Result<u32> {
    let c = CString::new(name).context("sync.interface: a name without NUL")?;
    // SAFETY: a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        bail!(
            "sync.interface: no interface {name:?} on this node ({})",
            std::io::Error::last_os_error()
        );
    }
    Ok(index)
}

/// IP_MULTICAST_IF by interface index (socket2 takes only an address for IPv4).
fn multicast_if_v4(socket: &Socket, ifindex: u32) -> std::io::Result<()> {
    let req = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: ifindex as i32,
    };
    // SAFETY: an ip_mreqn option on a socket this process owns.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&req as *const libc::ip_mreqn).cast(),
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Asks for a receive buffer of `bytes` (the kernel caps it at `net.core.rmem_max`
/// unless the process may exceed it, as root may).
fn receive_buffer(socket: &Socket, bytes: i32) {
    let fd = socket.as_raw_fd();
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: an int option on a socket this process owns.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return;
        }
    }
}
