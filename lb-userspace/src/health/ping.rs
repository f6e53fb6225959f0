//! `ping`: an ICMP (IPv4) or ICMPv6 echo request; up when the echo reply comes back.
//!
//! All ping checks of a supervisor share one socket per family (raw, which needs
//! CAP_NET_RAW, or else an unprivileged ICMP datagram socket where
//! `net.ipv4.ping_group_range` allows it) and one task reading it, which hands each reply
//! to the attempt waiting for its sequence number: no socket per backend, no reply read
//! by thousands of sockets.

use std::{
    collections::HashMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU16, Ordering},
        Arc, Mutex, OnceLock,
    },
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::unix::AsyncFd, sync::oneshot, task::JoinHandle};

use super::check::Deadline;

use lb_common::checksum::internet_checksum;
use lb_common::icmp::{
    ECHO_REPLY_V4, ECHO_REPLY_V6, ECHO_REQUEST_V4, ECHO_REQUEST_V6, TIME_EXCEEDED_V4,
    TIME_EXCEEDED_V6, UNREACHABLE_V4, UNREACHABLE_V6,
};
/// Sent after the echo header, so a capture shows who asked.
const PAYLOAD: &[u8] = b"bascule health check";

pub(super) struct PingCheck {
    pub target: IpAddr,
}

impl PingCheck {
    pub async fn attempt(&self, pinger: &Pinger, deadline: &Deadline) -> Result<(), String> {
        let target = self.target;
        let socket = pinger.socket(target.is_ipv6())?;
        let (tx, rx) = oneshot::channel();
        let seq = socket.register(target, tx);
        let _waiting = Unregister(&socket, seq);
        socket
            .send(target, seq)
            .await
            .map_err(|e| format!("cannot send an echo request to {target}: {e}"))?;
        match tokio::time::timeout_at(deadline.instant(), rx).await {
            Ok(Ok(Reply::Echo)) => Ok(()),
            Ok(Ok(Reply::Error(what))) => Err(format!("echo request to {target}: {what}")),
            Ok(Err(_)) => Err("the ICMP reader stopped".into()),
            Err(_) => Err(deadline.expired(&format!("waiting for the echo reply of {target}"))),
        }
    }
}

/// The sockets, opened on first use (in the network namespace of the runtime's thread).
#[derive(Default)]
pub(super) struct Pinger {
    v4: OnceLock<Result<Arc<IcmpSocket>, String>>,
    v6: OnceLock<Result<Arc<IcmpSocket>, String>>,
    readers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Pinger {
    fn drop(&mut self) {
        for reader in self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            reader.abort();
        }
    }
}

impl Pinger {
    /// Must run inside a tokio runtime (the reader task is spawned on it).
    fn socket(&self, v6: bool) -> Result<Arc<IcmpSocket>, String> {
        let cell = if v6 { &self.v6 } else { &self.v4 };
        cell.get_or_init(|| {
            let socket = Arc::new(IcmpSocket::open(v6)?);
            let reader = tokio::spawn(read_replies(socket.clone()));
            self.readers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reader);
            Ok(socket)
        })
        .clone()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Echo,
    /// An ICMP error about our request ("destination unreachable (code 1)").
    Error(String),
}

struct IcmpSocket {
    fd: AsyncFd<Socket>,
    v6: bool,
    /// Raw sockets see the IPv4 header and every host's ICMP; datagram sockets neither,
    /// and the kernel sets the identifier itself.
    raw: bool,
    ident: u16,
    next_seq: AtomicU16,
    waiting: Mutex<HashMap<u16, (IpAddr, oneshot::Sender<Reply>)>>,
}

impl IcmpSocket {
    fn open(v6: bool) -> Result<IcmpSocket, String> {
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        let (socket, raw) = match Socket::new(domain, Type::RAW, Some(proto)) {
            Ok(s) => (s, true),
            Err(raw_err) => match Socket::new(domain, Type::DGRAM, Some(proto)) {
                Ok(s) => (s, false),
                Err(_) => {
                    return Err(format!(
                        "cannot open an ICMP socket: {raw_err} (ping checks need CAP_NET_RAW, or a group in net.ipv4.ping_group_range)"
                    ))
                }
            },
        };
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("ICMP socket: {e}"))?;
        // SAFETY: the socket owns its descriptor, which stays open and is not replaced
        // while the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| format!("ICMP socket: {e}"))?;
        Ok(IcmpSocket {
            fd,
            v6,
            raw,
            ident: (std::process::id() & 0xffff) as u16,
            next_seq: AtomicU16::new(0),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    fn register(&self, target: IpAddr, tx: oneshot::Sender<Reply>) -> u16 {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // At most 65,536 attempts wait at once (the supervisor bounds them far lower).
        loop {
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            if let std::collections::hash_map::Entry::Vacant(slot) = waiting.entry(seq) {
                slot.insert((target, tx));
                return seq;
            }
        }
    }

    async fn send(&self, target: IpAddr, seq: u16) -> io::Result<()> {
        let packet = echo_request(self.v6, self.ident, seq);
        let to = SockAddr::from(SocketAddr::new(target, 0));
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| fd.get_ref().send_to(&packet, &to)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Forgets a waiting attempt when it ends (answered or not).
struct Unregister<'a>(&'a IcmpSocket, u16);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

async fn read_replies(socket: Arc<IcmpSocket>) {
    let mut buf = vec![MaybeUninit::<u8>::uninit(); 2048];
    loop {
        let Ok(mut ready) = socket.fd.readable().await else {
            return;
        };
        let (n, from) = match ready.try_io(|fd| fd.get_ref().recv_from(&mut buf)) {
            Ok(Ok(got)) => got,
            Ok(Err(_)) | Err(_) => continue,
        };
        // SAFETY: recv_from initialised the first n bytes.
        let packet: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
        let Some(from) = from.as_socket().map(|s| s.ip()) else {
            continue;
        };
        let Some((ident, seq, reply)) = parse_reply(packet, socket.v6, socket.raw) else {
            continue;
        };
        if socket.raw && ident != socket.ident {
            continue;
        }
        let mut waiting = socket.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // An echo reply must come from the target; an error may come from a router.
        let ours = matches!(waiting.get(&seq), Some((target, _)) if *target == from || reply != Reply::Echo);
        if ours {
            if let Some((_, tx)) = waiting.remove(&seq) {
                let _ = tx.send(reply);
            }
        }
    }
}

/// An echo request: type, code, checksum, identifier, sequence, payload. The ICMPv6
/// checksum covers a pseudo-header the kernel fills in, so the kernel computes it.
fn echo_request(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
    let kind = if v6 { ECHO_REQUEST_V6 } else { ECHO_REQUEST_V4 };
    let mut p = vec![kind, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    if !v6 {
        let sum = internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

/// The (identifier, sequence) an ICMP message is about, and what it says: an echo reply,
/// or an error quoting one of our echo requests. `raw` IPv4 packets start with the IP
/// header.
fn parse_reply(packet: &[u8], v6: bool, raw: bool) -> Option<(u16, u16, Reply)> {
    let icmp = if raw && !v6 {
        let ihl = usize::from(packet.first()? & 0x0f) * 4;
        packet.get(ihl..)?
    } else {
        packet
    };
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    let echo_ids = |h: &[u8]| -> Option<(u16, u16)> {
        Some((
            u16::from_be_bytes([*h.get(4)?, *h.get(5)?]),
            u16::from_be_bytes([*h.get(6)?, *h.get(7)?]),
        ))
    };
    let (reply_kind, request_kind, unreachable, exceeded) = if v6 {
        (
            ECHO_REPLY_V6,
            ECHO_REQUEST_V6,
            UNREACHABLE_V6,
            TIME_EXCEEDED_V6,
        )
    } else {
        (
            ECHO_REPLY_V4,
            ECHO_REQUEST_V4,
            UNREACHABLE_V4,
            TIME_EXCEEDED_V4,
        )
    };
    if kind == reply_kind {
        let (ident, seq) = echo_ids(icmp)?;
        return Some((ident, seq, Reply::Echo));
    }
    if kind != unreachable && kind != exceeded {
        return None;
    }
    // The error quotes our packet: its IP header, then our echo request.
    let inner = icmp.get(8..)?;
    let inner_icmp = if v6 {
        inner.get(40..)?
    } else {
        inner.get(usize::from(inner.first()? & 0x0f) * 4..)?
    };
    if *inner_icmp.first()? != request_kind {
        return None;
    }
    let (ident, seq) = echo_ids(inner_icmp)?;
    let what = if kind == exceeded {
        "time exceeded".to_string()
    } else {
        match (v6, code) {
            (false, 0) | (true, 0) => "network unreachable".to_string(),
            (false, 1) | (true, 3) => "host unreachable".to_string(),
            (false, 13) | (true, 1) => "administratively prohibited".to_string(),
            _ => format!("destination unreachable (code {code})"),
        }
    };
    Some((ident, seq, Reply::Error(what)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(false, 0x1234, 7);
        assert_eq!(&p[..2], &[8, 0]);
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(
            internet_checksum(&p),
            0,
            "a packet with its checksum sums to zero"
        );
        let p6 = echo_request(true, 1, 2);
        assert_eq!(&p6[..4], &[128, 0, 0, 0]);
    }

    #[test]
    fn replies_and_errors_are_matched_to_requests() {
        let mut reply = echo_request(false, 0x1234, 7);
        reply[0] = ECHO_REPLY_V4;
        assert_eq!(
            parse_reply(&reply, false, false),
            Some((0x1234, 7, Reply::Echo))
        );
        // Raw IPv4: a 20-byte IP header first.
        let mut with_ip = vec![0x45; 1];
        with_ip.extend_from_slice(&[0; 19]);
        with_ip.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&with_ip, false, true),
            Some((0x1234, 7, Reply::Echo))
        );
        // Our own request, seen by a raw socket on loopback, is not a reply.
        assert_eq!(parse_reply(&echo_request(false, 1, 1), false, false), None);
        // Host unreachable quoting our request.
        let mut err = vec![UNREACHABLE_V4, 1, 0, 0, 0, 0, 0, 0, 0x45];
        err.extend_from_slice(&[0; 19]);
        err.extend_from_slice(&echo_request(false, 0x1234, 9)[..8]);
        assert_eq!(
            parse_reply(&err, false, false),
            Some((0x1234, 9, Reply::Error("host unreachable".into())))
        );
        let mut err6 = vec![UNREACHABLE_V6, 3, 0, 0, 0, 0, 0, 0];
        err6.extend_from_slice(&[0x60; 40]);
        err6.extend_from_slice(&echo_request(true, 5, 6)[..8]);
        assert_eq!(
            parse_reply(&err6, true, true),
            Some((5, 6, Reply::Error("host unreachable".into())))
        );
        assert_eq!(parse_reply(&[0], false, false), None);
    }
}
