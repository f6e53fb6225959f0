//! `ping`: an ICMP (IPv4) or ICMPv6 echo request; up when the echo reply comes back.
//!
//! All ping checks of a supervisor share one socket per family (raw, which needs
//! CAP_NET_RAW, or else an unprivileged ICMP datagram socket where
//! `net.ipv4.ping_group_range` allows it) and one task reading it, which hands each reply
//! to the attempt waiting for it: no socket per backend, no reply read by thousands of
//! sockets.
//!
//! Off the path, an answer cannot be forged without guessing: every request carries a
//! random identifier and sequence number (a datagram socket's identifier is the kernel's,
//! bound at random), an echo reply counts only from the address asked, an ICMP error only
//! when the request it quotes is ours (its destination, identifier and sequence).

use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{BuildHasher, RandomState},
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
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
        let probe = socket.register(target, tx);
        let _waiting = Unregister(&socket, probe);
        socket
            .send(&probe)
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

/// One echo request in flight: whom it asks and how it is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    target: IpAddr,
    ident: u16,
    seq: u16,
}

impl Probe {
    fn key(&self) -> (u16, u16) {
        (self.ident, self.seq)
    }
}

/// Draws the identifier and sequence number of each echo request: SipHash, keyed by
/// std's `RandomState` (from the OS's random source), of a counter. Cheap, and without
/// the key the next marks cannot be told from the last ones.
struct Marks {
    keys: RandomState,
    drawn: AtomicU64,
}

impl Marks {
    fn new() -> Marks {
        Marks {
            keys: RandomState::new(),
            drawn: AtomicU64::new(0),
        }
    }

    /// (identifier, sequence number).
    fn draw(&self) -> (u16, u16) {
        let bits = self
            .keys
            .hash_one(self.drawn.fetch_add(1, Ordering::Relaxed));
        ((bits >> 16) as u16, bits as u16)
    }
}

struct IcmpSocket {
    fd: AsyncFd<Socket>,
    v6: bool,
    /// Raw sockets see the IPv4 header and every host's ICMP; datagram sockets neither.
    raw: bool,
    /// Datagram sockets: the identifier the kernel writes into every request (the
    /// socket's "port"), and the only one it hands replies for.
    kernel_ident: Option<u16>,
    marks: Marks,
    waiting: Mutex<Waiting>,
}

/// The probes in flight by (identifier, sequence), and who waits for each one's answer.
type Waiting = HashMap<(u16, u16), (Probe, oneshot::Sender<Reply>)>;

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
        IcmpSocket::with(socket, raw, v6)
    }

    /// An opened raw or datagram socket, made ready (a datagram one bound to a random
    /// identifier) and registered with the runtime.
    fn with(socket: Socket, raw: bool, v6: bool) -> Result<IcmpSocket, String> {
        let marks = Marks::new();
        let kernel_ident = if raw {
            None
        } else {
            Some(bind_ident(&socket, v6, &marks).map_err(|e| format!("ICMP socket: {e}"))?)
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
            kernel_ident,
            marks,
            waiting: Mutex::new(HashMap::new()),
        })
    }

    /// A probe of `target` with marks no other waiting probe has.
    fn register(&self, target: IpAddr, tx: oneshot::Sender<Reply>) -> Probe {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        // At most 65,536 attempts wait per identifier (the supervisor bounds them lower).
        loop {
            let (ident, seq) = self.marks.draw();
            let probe = Probe {
                target,
                ident: self.kernel_ident.unwrap_or(ident),
                seq,
            };
            if let Entry::Vacant(slot) = waiting.entry(probe.key()) {
                slot.insert((probe, tx));
                return probe;
            }
        }
    }

    async fn send(&self, probe: &Probe) -> io::Result<()> {
        let packet = echo_request(self.v6, probe.ident, probe.seq);
        let to = SockAddr::from(SocketAddr::new(probe.target, 0));
        loop {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| fd.get_ref().send_to(&packet, &to)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

/// Binds a datagram ICMP socket to a random identifier (the kernel's own choice, in
/// sequence, if a few random ones are taken); returns the identifier bound.
fn bind_ident(socket: &Socket, v6: bool, marks: &Marks) -> io::Result<u16> {
    let any = |ident| -> SockAddr {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        SocketAddr::new(ip, ident).into()
    };
    let bound = (0..8).any(|_| socket.bind(&any(marks.draw().0)).is_ok());
    if !bound {
        socket.bind(&any(0))?;
    }
    let local = socket.local_addr()?;
    local
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("no identifier bound"))
}

/// Forgets a waiting attempt when it ends (answered or not).
struct Unregister<'a>(&'a IcmpSocket, Probe);

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1.key());
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
        let Some(heard) = parse_reply(packet, socket.v6, socket.raw) else {
            continue;
        };
        let key = (heard.ident, heard.seq);
        let mut waiting = socket.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let Some((probe, _)) = waiting.get(&key) else {
            continue;
        };
        if answers(probe, from, &heard) {
            if let Some((_, tx)) = waiting.remove(&key) {
                let _ = tx.send(heard.reply);
            }
        }
    }
}

/// Whether `heard`, received from `from`, answers `probe`: its marks, and an echo reply
/// from the address asked, or an error (from a router, say) quoting a request to it.
fn answers(probe: &Probe, from: IpAddr, heard: &Heard) -> bool {
    (heard.ident, heard.seq) == probe.key()
        && match heard.reply {
            Reply::Echo => from == probe.target,
            Reply::Error(_) => heard.quoted_destination == Some(probe.target),
        }
}

/// What `packet`, received from `from`, says about `probe`: `None` unless it is the
/// answer to it.
#[cfg(test)]
fn answer(probe: &Probe, from: IpAddr, packet: &[u8], v6: bool, raw: bool) -> Option<Reply> {
    let heard = parse_reply(packet, v6, raw)?;
    answers(probe, from, &heard).then_some(heard.reply)
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

/// An ICMP message about one of our echo requests.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Heard {
    ident: u16,
    seq: u16,
    /// For an error: the destination of the request it quotes.
    quoted_destination: Option<IpAddr>,
    reply: Reply,
}

/// What an ICMP message says: an echo reply, or an error quoting an echo request. `raw`
/// IPv4 packets start with the IP header.
pub(super) fn parse_reply(packet: &[u8], v6: bool, raw: bool) -> Option<Heard> {
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
        return Some(Heard {
            ident,
            seq,
            quoted_destination: None,
            reply: Reply::Echo,
        });
    }
    if kind != unreachable && kind != exceeded {
        return None;
    }
    // The error quotes our packet: its IP header, then our echo request.
    let inner = icmp.get(8..)?;
    let (quoted_destination, inner_icmp) = if v6 {
        let dst: [u8; 16] = inner.get(24..40)?.try_into().ok()?;
        (IpAddr::from(dst), inner.get(40..)?)
    } else {
        let dst: [u8; 4] = inner.get(16..20)?.try_into().ok()?;
        let ihl = usize::from(inner.first()? & 0x0f) * 4;
        (IpAddr::from(dst), inner.get(ihl..)?)
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
    Some(Heard {
        ident,
        seq,
        quoted_destination: Some(quoted_destination),
        reply: Reply::Error(what),
    })
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

    /// An ICMP error from `router` quoting an echo request of `ident`/`seq` to `to`, as
    /// a raw socket receives it (IPv4: with the outer IP header).
    fn error_quoting(v6: bool, to: IpAddr, ident: u16, seq: u16) -> Vec<u8> {
        let request = echo_request(v6, ident, seq);
        match to {
            IpAddr::V4(to) => {
                let mut p = vec![0x45];
                p.extend_from_slice(&[0; 19]);
                p.extend_from_slice(&[UNREACHABLE_V4, 1, 0, 0, 0, 0, 0, 0, 0x45]);
                p.extend_from_slice(&[0; 15]);
                p.extend_from_slice(&to.octets());
                p.extend_from_slice(&request[..8]);
                p
            }
            IpAddr::V6(to) => {
                let mut p = vec![UNREACHABLE_V6, 3, 0, 0, 0, 0, 0, 0, 0x60];
                p.extend_from_slice(&[0; 23]);
                p.extend_from_slice(&to.octets());
                p.extend_from_slice(&request[..8]);
                p
            }
        }
    }

    fn echo_reply(v6: bool, ident: u16, seq: u16) -> Vec<u8> {
        let mut p = echo_request(v6, ident, seq);
        p[0] = if v6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
        if !v6 {
            let mut with_ip = vec![0x45];
            with_ip.extend_from_slice(&[0; 19]);
            with_ip.extend_from_slice(&p);
            return with_ip;
        }
        p
    }

    #[test]
    fn only_the_answer_to_a_probe_is_taken() {
        for (target, other, router) in [
            ("10.0.0.11", "10.0.0.12", "10.0.0.1"),
            ("fd00::11", "fd00::12", "fd00::1"),
        ] {
            let [target, other, router]: [IpAddr; 3] =
                [target, other, router].map(|a| a.parse().unwrap());
            let v6 = target.is_ipv6();
            let probe = Probe {
                target,
                ident: 0x5a17,
                seq: 0xc0de,
            };
            let taken = |from, packet: Vec<u8>| answer(&probe, from, &packet, v6, true);
            let (id, seq) = (probe.ident, probe.seq);
            assert_eq!(taken(target, echo_reply(v6, id, seq)), Some(Reply::Echo));
            assert_eq!(
                taken(other, echo_reply(v6, id, seq)),
                None,
                "another source"
            );
            assert_eq!(
                taken(target, echo_reply(v6, id ^ 1, seq)),
                None,
                "another id"
            );
            assert_eq!(
                taken(target, echo_reply(v6, id, seq ^ 1)),
                None,
                "another seq"
            );
            let unreachable = Some(Reply::Error("host unreachable".into()));
            assert_eq!(
                taken(router, error_quoting(v6, target, id, seq)),
                unreachable,
                "an error from a router quoting our probe"
            );
            for (what, error) in [
                ("another destination", error_quoting(v6, other, id, seq)),
                ("another id", error_quoting(v6, target, id ^ 1, seq)),
                ("another seq", error_quoting(v6, target, id, seq ^ 1)),
            ] {
                assert_eq!(taken(router, error), None, "an error quoting {what}");
            }
        }
    }

    /// Off the path, the next probe's marks cannot be guessed from the last ones.
    #[test]
    fn probes_are_marked_at_random() {
        let marks = Marks::new();
        let drawn: Vec<(u16, u16)> = (0..64).map(|_| marks.draw()).collect();
        let idents: std::collections::HashSet<u16> = drawn.iter().map(|m| m.0).collect();
        assert!(idents.len() > 32, "identifiers repeat: {drawn:?}");
        let consecutive = drawn
            .windows(2)
            .filter(|w| w[1].1 == w[0].1.wrapping_add(1))
            .count();
        assert!(
            consecutive < 4,
            "sequence numbers follow each other: {drawn:?}"
        );
    }

    #[test]
    fn replies_and_errors_are_parsed() {
        let parse = |p: &[u8], v6, raw| {
            parse_reply(p, v6, raw).map(|h| (h.ident, h.seq, h.quoted_destination, h.reply))
        };
        let mut reply = echo_request(false, 0x1234, 7);
        reply[0] = ECHO_REPLY_V4;
        assert_eq!(
            parse(&reply, false, false),
            Some((0x1234, 7, None, Reply::Echo))
        );
        assert_eq!(
            parse(&echo_reply(false, 0x1234, 7), false, true),
            Some((0x1234, 7, None, Reply::Echo)),
            "raw IPv4: a 20-byte IP header first"
        );
        // Our own request, seen by a raw socket on loopback, is not a reply.
        assert_eq!(parse(&echo_request(false, 1, 1), false, false), None);
        let to: IpAddr = "10.0.0.11".parse().unwrap();
        assert_eq!(
            parse(&error_quoting(false, to, 0x1234, 9), false, true),
            Some((0x1234, 9, Some(to), Reply::Error("host unreachable".into())))
        );
        let to6: IpAddr = "fd00::11".parse().unwrap();
        assert_eq!(
            parse(&error_quoting(true, to6, 5, 6), true, true),
            Some((5, 6, Some(to6), Reply::Error("host unreachable".into())))
        );
        assert_eq!(parse(&[0], false, false), None);
        assert_eq!(
            parse(&error_quoting(false, to, 1, 2)[..40], false, true),
            None,
            "cut short"
        );
    }
}
