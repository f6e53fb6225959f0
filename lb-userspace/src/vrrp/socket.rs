//! Raw IP sockets for protocol 112, one per instance, bound to its interface.
//!
//! IPv4: the socket writes its own IP header (`IP_HDRINCL`) so that the source address,
//! which v3's checksum covers, and the TTL of 255 are exactly what was computed; received
//! packets come with their IP header, which gives the TTL. IPv6: the source is set per
//! packet (`IPV6_PKTINFO`), the hop limit by socket option, and the received hop limit and
//! destination come as control messages. Multicast loopback is off: a node never hears
//! itself.

use std::{
    io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use tokio::io::unix::AsyncFd;

use super::packet::{self, MULTICAST_V4, MULTICAST_V6, PROTO_VRRP, TTL};

/// One received VRRP message with what its IP header said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// TTL / hop limit as received.
    pub ttl: u8,
    /// The VRRP message (no IP header).
    pub message: Vec<u8>,
}

pub struct VrrpSocket {
    fd: AsyncFd<OwnedFd>,
    v6: bool,
    ifindex: u32,
}

impl VrrpSocket {
    /// Opens the socket on `interface` (index `ifindex`) for one family, joining the VRRP
    /// multicast group when `multicast`.
    pub fn open(interface: &str, ifindex: u32, v6: bool, multicast: bool) -> io::Result<Self> {
        let domain = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let fd = new_socket(domain, i32::from(PROTO_VRRP))?;
        let raw = fd.as_raw_fd();
        bind_to_device(raw, interface)?;
        if v6 {
            set_int(
                raw,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_HOPS,
                TTL.into(),
            )?;
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, TTL.into())?;
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 0)?;
            set_int(
                raw,
                libc::IPPROTO_IPV6,
                libc::IPV6_MULTICAST_IF,
                ifindex as i32,
            )?;
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, 1)?;
            set_int(raw, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)?;
            if multicast {
                let mreq = libc::ipv6_mreq {
                    ipv6mr_multiaddr: libc::in6_addr {
                        s6_addr: MULTICAST_V6.octets(),
                    },
                    ipv6mr_interface: ifindex,
                };
                set_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_ADD_MEMBERSHIP, &mreq)?;
            }
        } else {
            set_int(raw, libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
            set_int(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 0)?;
            set_int(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, TTL.into())?;
            let on_interface = |group: Ipv4Addr| libc::ip_mreqn {
                imr_multiaddr: in_addr(group),
                imr_address: in_addr(Ipv4Addr::UNSPECIFIED),
                imr_ifindex: ifindex as i32,
            };
            let mreq = on_interface(Ipv4Addr::UNSPECIFIED);
            set_opt(raw, libc::IPPROTO_IP, libc::IP_MULTICAST_IF, &mreq)?;
            if multicast {
                let mreq = on_interface(MULTICAST_V4);
                set_opt(raw, libc::IPPROTO_IP, libc::IP_ADD_MEMBERSHIP, &mreq)?;
            }
        }
        // `AsyncFd::new` is deprecated from tokio 1.54 for fds that can be closed behind its
        // back; an `OwnedFd` it owns cannot, and `register`, its replacement, does not exist
        // before 1.54.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(VrrpSocket { fd, v6, ifindex })
    }

    /// The next VRRP message (IPv4 packets that do not parse are skipped).
    pub async fn recv(&self) -> io::Result<Inbound> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                if self.v6 {
                    recv_v6(fd.as_raw_fd()).map(Some)
                } else {
                    recv_v4(fd.as_raw_fd())
                }
            }) {
                Ok(Ok(Some(inbound))) => return Ok(inbound),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `message` (a VRRP message, checksum computed for this `source` and
    /// `destination`).
    pub fn send(&self, source: IpAddr, destination: IpAddr, message: &[u8]) -> io::Result<()> {
        let raw = self.fd.get_ref().as_raw_fd();
        match (source, destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut packet = packet::ipv4_header(s, d, message.len()).to_vec();
                packet.extend_from_slice(message);
                let to = sockaddr_v4(d);
                send_to(raw, &packet, &to)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => send_v6(raw, self.ifindex, s, d, message),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("source {source} and destination {destination} differ in family"),
            )),
        }
    }
}

fn recv_v4(fd: RawFd) -> io::Result<Option<Inbound>> {
    let mut buf = [0u8; 2048];
    // SAFETY: valid buffer of the given length.
    let n = cvt(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) } as i32)?;
    let Some(p) = packet::parse_ipv4(&buf[..n as usize]) else {
        return Ok(None);
    };
    Ok(Some(Inbound {
        source: IpAddr::V4(p.source),
        destination: IpAddr::V4(p.destination),
        ttl: p.ttl,
        message: p.payload.to_vec(),
    }))
}

/// Control-message buffer, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 256]);

fn recv_v6(fd: RawFd) -> io::Result<Inbound> {
    let mut buf = [0u8; 2048];
    let mut control = Control([0; 256]);
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut from: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_in6).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len();
    // SAFETY: msg points at live buffers.
    let n = cvt(unsafe { libc::recvmsg(fd, &mut msg, 0) } as i32)? as usize;
    let mut ttl = 0u8;
    let mut destination = Ipv6Addr::UNSPECIFIED;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let c = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_HOPLIMIT {
                let hops = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                ttl = u8::try_from(hops).unwrap_or(0);
            } else if c.cmsg_level == libc::IPPROTO_IPV6 && c.cmsg_type == libc::IPV6_PKTINFO {
                let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                destination = Ipv6Addr::from(info.ipi6_addr.s6_addr);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Inbound {
        source: IpAddr::V6(Ipv6Addr::from(from.sin6_addr.s6_addr)),
        destination: IpAddr::V6(destination),
        ttl,
        message: buf[..n].to_vec(),
    })
}

fn send_v6(
    fd: RawFd,
    ifindex: u32,
    source: Ipv6Addr,
    destination: Ipv6Addr,
    message: &[u8],
) -> io::Result<()> {
    let mut to = sockaddr_v6(destination);
    to.sin6_scope_id = ifindex;
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    let mut control = Control([0; 256]);
    let info = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: source.octets(),
        },
        ipi6_ifindex: ifindex,
    };
    // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call, and
    // the control buffer has room for one in6_pktinfo message (CMSG_SPACE checked).
    unsafe {
        let space = libc::CMSG_SPACE(mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
        assert!(space <= control.0.len());
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_name = (&mut to as *mut libc::sockaddr_in6).cast();
        msg.msg_namelen = mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::IPPROTO_IPV6;
        (*cmsg).cmsg_type = libc::IPV6_PKTINFO;
        (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<libc::in6_pktinfo>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::in6_pktinfo>(), info);
        cvt(libc::sendmsg(fd, &msg, 0) as i32).map(drop)
    }
}

// ---- small socket helpers, shared with garp.rs ------------------------------------------

pub(super) fn new_socket(domain: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = cvt(unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            protocol,
        )
    })?;
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn bind_to_device(fd: RawFd, interface: &str) -> io::Result<()> {
    // SAFETY: the name's bytes and length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            interface.as_ptr().cast(),
            interface.len() as libc::socklen_t,
        )
    })
    .map(drop)
}

pub(super) fn set_int(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    set_opt(fd, level, name, &value)
}

pub(super) fn set_opt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// sendto(2) of `buf` to `to`, a libc `sockaddr_*` structure.
pub(super) fn send_to<A>(fd: RawFd, buf: &[u8], to: &A) -> io::Result<()> {
    // SAFETY: `buf` is valid for its length and `to` for `size_of::<A>()` bytes.
    cvt(unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (to as *const A).cast(),
            mem::size_of::<A>() as libc::socklen_t,
        )
    } as i32)
    .map(drop)
}

pub(super) fn cvt(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn in_addr(a: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    }
}

fn sockaddr_v4(a: Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: all-zero is a valid sockaddr_in.
    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_addr = in_addr(a);
    s
}

pub(super) fn sockaddr_v6(a: Ipv6Addr) -> libc::sockaddr_in6 {
    // SAFETY: all-zero is a valid sockaddr_in6.
    let mut s: libc::sockaddr_in6 = unsafe { mem::zeroed() };
    s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    s.sin6_addr = libc::in6_addr {
        s6_addr: a.octets(),
    };
    s
}
