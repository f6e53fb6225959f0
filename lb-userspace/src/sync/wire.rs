//! The sync datagram (pure): encoding, decoding, authentication and replay protection.
//!
//! ```text
//! header (32 bytes, big-endian):
//!   magic "BSYN" | version u8 (1) | message u8 (0 flows, 1 bulk request, 2 bulk done) |
//!   entries u16 |
//!   node id u64 | sequence u64 | timestamp u64 (ms since the Unix epoch)
//! entries (64 bytes each):
//!   kind u8 (1 new, 2 end) | family u8 (4 or 6) | protocol u8 | flags u8 (1 active) |
//!   client address [16] | client port u16 | VIP [16] | destination port u16 |
//!   service port u16 (0: an all-ports service) | backend family u8 | reserved u8 |
//!   backend address [16] | backend port u16 | reserved u16
//! HMAC-SHA256 (32 bytes) of everything before it, with the key of `sync.key_file`
//! ```
//! Addresses are 16 bytes: IPv4 ones as IPv4-mapped IPv6. A flow names its service by
//! (VIP, port, protocol) and its backend by (address, port), never by a node-local id.
//! A receiver accepts a datagram only with the right MAC, from a sender's sequence number
//! it has not seen (a window of 64 behind the highest) and a timestamp within
//! `MAX_SKEW` of its own clock.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAGIC: &[u8; 4] = b"BSYN";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 32;
pub const ENTRY_LEN: usize = 64;
pub const MAC_LEN: usize = 32;
/// `Header::message`: entries of flows (new, ended, refreshed).
pub const FLOWS: u8 = 0;
/// `Header::message`: send me your whole table (a node that starts empty), no entries.
pub const BULK_REQUEST: u8 = 1;
/// `Header::message`: the whole table was sent (after its `FLOWS` datagrams), no entries.
pub const BULK_DONE: u8 = 2;
/// Entries per datagram: 20 keep it below 1,400 bytes (no IP fragments on a 1,500 MTU).
pub const MAX_ENTRIES: usize = 20;
/// How far a datagram's timestamp may be from the receiver's clock, in milliseconds.
pub const MAX_SKEW_MS: u64 = 30_000;
/// Sequence numbers behind the highest seen that are still accepted (once each).
const WINDOW: u64 = 64;
/// Senders whose replay windows are kept (the oldest seen is forgotten beyond this).
const MAX_SENDERS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A new connection-table entry.
    New = 1,
    /// The flow ended (FIN or RST seen).
    End = 2,
}

/// One flow as it travels between nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub proto: u8,
    /// Whether the flow counts as active (no FIN/RST seen yet).
    pub active: bool,
    pub client: IpAddr,
    pub client_port: u16,
    pub vip: IpAddr,
    /// The flow's destination port.
    pub port: u16,
    /// The service's port: `port`, or 0 for an all-ports service.
    pub service_port: u16,
    pub backend: IpAddr,
    pub backend_port: u16,
}

/// One datagram's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// FLOWS, BULK_REQUEST or BULK_DONE.
    pub message: u8,
    pub node: u64,
    pub seq: u64,
    pub timestamp_ms: u64,
}

/// Why a datagram was refused (the label of `bascule_sync_rejected_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The MAC does not match (wrong key, or altered).
    Auth,
    /// A sequence number already seen or too old, or a timestamp too far from now.
    Replay,
    /// Not a sync datagram of this version, or its length is wrong.
    Malformed,
    /// An entry names a service this node does not have.
    UnknownService,
    /// An entry names a backend this node does not have in that service.
    UnknownBackend,
    /// An entry names a backend that is down (or drained out) here.
    BackendDown,
}

impl Reject {
    pub const ALL: [Reject; 6] = [
        Reject::Auth,
        Reject::Replay,
        Reject::Malformed,
        Reject::UnknownService,
        Reject::UnknownBackend,
        Reject::BackendDown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reject::Auth => "auth",
            Reject::Replay => "replay",
            Reject::Malformed => "malformed",
            Reject::UnknownService => "unknown_service",
            Reject::UnknownBackend => "unknown_backend",
            Reject::BackendDown => "backend_down",
        }
    }
}

fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn put_addr(out: &mut Vec<u8>, a: IpAddr) {
    let v6 = match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
}

fn get_addr(b: &[u8], v4: bool) -> Option<IpAddr> {
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?);
    if v4 {
        v6.to_ipv4_mapped().map(IpAddr::V4)
    } else {
        Some(IpAddr::V6(v6))
    }
}

fn family(a: IpAddr) -> u8 {
    if a.is_ipv4() {
        4
    } else {
        6
    }
}

/// One datagram of `entries` (at most `MAX_ENTRIES`), authenticated with `key`.
pub fn encode(key: &[u8], header: Header, entries: &[Entry]) -> Vec<u8> {
    assert!(entries.len() <= MAX_ENTRIES);
    let mut out = Vec::with_capacity(HEADER_LEN + entries.len() * ENTRY_LEN + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(header.message);
    out.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    out.extend_from_slice(&header.node.to_be_bytes());
    out.extend_from_slice(&header.seq.to_be_bytes());
    out.extend_from_slice(&header.timestamp_ms.to_be_bytes());
    for e in entries {
        out.extend_from_slice(&[e.kind as u8, family(e.client), e.proto, e.active as u8]);
        put_addr(&mut out, e.client);
        out.extend_from_slice(&e.client_port.to_be_bytes());
        put_addr(&mut out, e.vip);
        out.extend_from_slice(&e.port.to_be_bytes());
        out.extend_from_slice(&e.service_port.to_be_bytes());
        out.extend_from_slice(&[family(e.backend), 0]);
        put_addr(&mut out, e.backend);
        out.extend_from_slice(&e.backend_port.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    let mut m = mac(key);
    m.update(&out);
    out.extend_from_slice(&m.finalize().into_bytes());
    out
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn entry(b: &[u8]) -> Option<Entry> {
    let kind = match b[0] {
        1 => Kind::New,
        2 => Kind::End,
        _ => return None,
    };
    let v4 = match b[1] {
        4 => true,
        6 => false,
        _ => return None,
    };
    let backend_v4 = match b[42] {
        4 => true,
        6 => false,
        _ => return None,
    };
    Some(Entry {
        kind,
        proto: b[2],
        active: b[3] & 1 != 0,
        client: get_addr(&b[4..20], v4)?,
        client_port: u16_at(b, 20),
        vip: get_addr(&b[22..38], v4)?,
        port: u16_at(b, 38),
        service_port: u16_at(b, 40),
        backend: get_addr(&b[44..60], backend_v4)?,
        backend_port: u16_at(b, 60),
    })
}

/// Checks a datagram's shape and MAC (not yet its freshness: see [`ReplayGuard`]) and
/// reads it.
pub fn decode(key: &[u8], datagram: &[u8]) -> Result<(Header, Vec<Entry>), Reject> {
    if datagram.len() < HEADER_LEN + MAC_LEN || &datagram[0..4] != MAGIC || datagram[4] != VERSION {
        return Err(Reject::Malformed);
    }
    let count = u16_at(datagram, 6) as usize;
    if datagram[5] > BULK_DONE
        || count > MAX_ENTRIES
        || datagram.len() != HEADER_LEN + count * ENTRY_LEN + MAC_LEN
    {
        return Err(Reject::Malformed);
    }
    let (body, tag) = datagram.split_at(datagram.len() - MAC_LEN);
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(tag).map_err(|_| Reject::Auth)?;
    let header = Header {
        message: body[5],
        node: u64_at(body, 8),
        seq: u64_at(body, 16),
        timestamp_ms: u64_at(body, 24),
    };
    let entries = body[HEADER_LEN..]
        .chunks_exact(ENTRY_LEN)
        .map(entry)
        .collect::<Option<Vec<_>>>()
        .ok_or(Reject::Malformed)?;
    Ok((header, entries))
}

/// The sender's node id a datagram claims, before any check (a node drops its own
/// datagrams looped back by a multicast group before spending a MAC check on them);
/// `None` if it is not a sync datagram.
pub fn sender(datagram: &[u8]) -> Option<u64> {
    if datagram.len() < HEADER_LEN || &datagram[0..4] != MAGIC {
        return None;
    }
    Some(u64_at(datagram, 8))
}

/// Per sender (node id): the highest sequence number accepted and which of the `WINDOW`
/// before it were; and the timestamp bound. A captured datagram replayed later is refused
/// by one or the other.
#[derive(Default)]
pub struct ReplayGuard {
    senders: HashMap<u64, Window>,
}

#[derive(Clone, Copy)]
struct Window {
    highest: u64,
    /// Bit i: `highest - i` was accepted.
    seen: u64,
    last_ms: u64,
}

impl ReplayGuard {
    /// Accepts `header` once (an authenticated datagram's), received at `now_ms`.
    pub fn accept(&mut self, header: &Header, now_ms: u64) -> Result<(), Reject> {
        if header.timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(Reject::Replay);
        }
        if !self.senders.contains_key(&header.node) && self.senders.len() >= MAX_SENDERS {
            if let Some(oldest) = self
                .senders
                .iter()
                .min_by_key(|(_, w)| w.last_ms)
                .map(|(n, _)| *n)
            {
                self.senders.remove(&oldest);
            }
        }
        let w = self.senders.entry(header.node).or_insert(Window {
            highest: header.seq,
            seen: 0,
            last_ms: now_ms,
        });
        let seq = header.seq;
        if seq > w.highest {
            let shift = seq - w.highest;
            w.seen = if shift >= WINDOW { 0 } else { w.seen << shift };
            w.highest = seq;
            w.seen |= 1;
        } else {
            let behind = w.highest - seq;
            if behind >= WINDOW || w.seen & (1 << behind) != 0 {
                return Err(Reject::Replay);
            }
            w.seen |= 1 << behind;
        }
        w.last_ms = now_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn flow(n: u16) -> Entry {
        Entry {
            kind: Kind::New,
            proto: 6,
            active: true,
            client: "10.0.0.9".parse().unwrap(),
            client_port: 40_000 + n,
            vip: "10.0.0.100".parse().unwrap(),
            port: 80,
            service_port: 80,
            backend: "10.0.1.11".parse().unwrap(),
            backend_port: 80,
        }
    }

    fn header(seq: u64) -> Header {
        Header {
            message: FLOWS,
            node: 7,
            seq,
            timestamp_ms: 1_000_000,
        }
    }

    #[test]
    fn a_datagram_reads_back_as_written() {
        let mut entries: Vec<Entry> = (0..19).map(flow).collect();
        entries.push(Entry {
            kind: Kind::End,
            active: false,
            client: "2001:db8::9".parse().unwrap(),
            vip: "2001:db8::100".parse().unwrap(),
            service_port: 0,
            backend: "10.0.1.12".parse().unwrap(),
            backend_port: 8080,
            ..flow(99)
        });
        let d = encode(KEY, header(3), &entries);
        assert_eq!(d.len(), HEADER_LEN + 20 * ENTRY_LEN + MAC_LEN);
        assert!(d.len() <= 1400);
        assert_eq!(decode(KEY, &d), Ok((header(3), entries)));
    }

    #[test]
    fn the_sender_is_read_before_any_check() {
        let d = encode(KEY, header(3), &[flow(1)]);
        assert_eq!(sender(&d), Some(7));
        assert_eq!(sender(&d[..HEADER_LEN]), Some(7));
        assert_eq!(sender(&d[..HEADER_LEN - 1]), None);
        assert_eq!(sender(b"garbage of some length, more than 32 bytes"), None);
    }

    #[test]
    fn forged_datagrams_are_refused_with_their_reason() {
        let d = encode(KEY, header(1), &[flow(1)]);
        assert_eq!(decode(b"another key", &d), Err(Reject::Auth));
        let mut altered = d.clone();
        altered[HEADER_LEN + 21] ^= 1; // the client port
        assert_eq!(decode(KEY, &altered), Err(Reject::Auth));
        assert_eq!(decode(KEY, &d[..d.len() - 1]), Err(Reject::Malformed));
        assert_eq!(decode(KEY, &d[..HEADER_LEN]), Err(Reject::Malformed));
        assert_eq!(decode(KEY, &[]), Err(Reject::Malformed));
        assert_eq!(decode(KEY, &[0x5a; 128]), Err(Reject::Malformed));
        let mut other_version = d.clone();
        other_version[4] = 2;
        assert_eq!(decode(KEY, &other_version), Err(Reject::Malformed));
        let mut unknown_message = d.clone();
        unknown_message[5] = 3;
        assert_eq!(decode(KEY, &unknown_message), Err(Reject::Malformed));
        let request = Header {
            message: BULK_REQUEST,
            ..header(2)
        };
        assert_eq!(
            decode(KEY, &encode(KEY, request, &[])),
            Ok((request, vec![]))
        );
        // Garbage with a valid header shape: only the MAC tells.
        let mut garbage = vec![0x5a; HEADER_LEN + ENTRY_LEN + MAC_LEN];
        garbage[..4].copy_from_slice(MAGIC);
        garbage[4] = VERSION;
        garbage[5] = FLOWS;
        garbage[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(decode(KEY, &garbage), Err(Reject::Auth));
    }

    #[test]
    fn a_replayed_or_stale_datagram_is_refused() {
        let mut g = ReplayGuard::default();
        let now = 1_000_000;
        assert_eq!(g.accept(&header(10), now), Ok(()));
        assert_eq!(g.accept(&header(10), now), Err(Reject::Replay));
        assert_eq!(g.accept(&header(12), now), Ok(()));
        // Out of order, within the window: once.
        assert_eq!(g.accept(&header(11), now), Ok(()));
        assert_eq!(g.accept(&header(11), now), Err(Reject::Replay));
        assert_eq!(g.accept(&header(200), now), Ok(()));
        assert_eq!(g.accept(&header(12), now), Err(Reject::Replay), "too old");
        // Another sender has its own window.
        let other = Header {
            node: 8,
            ..header(10)
        };
        assert_eq!(g.accept(&other, now), Ok(()));
        // A datagram captured and replayed later than the bound.
        let later = now + MAX_SKEW_MS + 1;
        let fresh_seq = Header {
            node: 9,
            ..header(1)
        };
        assert_eq!(g.accept(&fresh_seq, later), Err(Reject::Replay));
    }
}
