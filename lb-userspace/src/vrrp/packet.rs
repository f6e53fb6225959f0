//! VRRP advertisements on the wire: VRRPv3 (RFC 5798, IPv4 and IPv6) and VRRPv2
//! (RFC 3768, IPv4, with the simple-text `pass` authentication keepalived speaks).
//!
//! ```text
//!  v3:  | ver=3 type=1 | VRID | priority | count | rsvd(4) max adver int(12, cs) | checksum |
//!       | addresses (4 or 16 bytes each) ...                                            |
//!  v2:  | ver=2 type=1 | VRID | priority | count | auth type | adver int (s) | checksum |
//!       | IPv4 addresses ... | authentication data (8 bytes)                           |
//! ```
//!
//! The v3 checksum covers an IPv4 or IPv6 pseudo-header; the v2 checksum only the message.
//! Everything here is pure: [`check`] turns received bytes into an [`Advert`] or the
//! [`Invalid`] reason it is dropped for (the reasons are metric labels).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use lb_common::checksum::{internet_checksum, Checksum};

/// IP protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// Where adverts go without unicast peers.
pub const MULTICAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
pub const MULTICAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// Adverts are sent with this TTL / hop limit and accepted only with it: a packet that
/// crossed a router is not from this segment.
pub const TTL: u8 = 255;

const HEADER_LEN: usize = 8;
/// VRRPv2 ends with two words of authentication data.
const AUTH_DATA_LEN: usize = 8;
const TYPE_ADVERTISEMENT: u8 = 1;
/// v3's Max Advertise Interval field: 12 bits of centiseconds.
const MAX_V3_CENTISECONDS: u128 = 0x0fff;
/// v2 authentication types (RFC 2338, kept by keepalived).
const AUTH_TYPE_NONE: u8 = 0;
const AUTH_TYPE_PASS: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    /// RFC 3768: IPv4 only, whole-second intervals, optional `pass` authentication.
    V2,
    /// RFC 5798: IPv4 and IPv6, centisecond intervals, no authentication.
    V3,
}

impl Version {
    pub fn from_number(n: u8) -> Option<Version> {
        match n {
            2 => Some(Version::V2),
            3 => Some(Version::V3),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// VRRPv2 authentication as carried in the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    /// Type 0.
    None,
    /// Type 1, simple text: the password padded with zero bytes to 8.
    Pass([u8; AUTH_DATA_LEN]),
    /// Any other type (2 is IP Authentication Header), unsupported.
    Other(u8),
}

impl Auth {
    /// `pass` authentication with this password (at most 8 bytes, as the config checks;
    /// longer ones are cut like keepalived does).
    pub fn pass(password: &str) -> Auth {
        let mut data = [0u8; AUTH_DATA_LEN];
        for (d, b) in data.iter_mut().zip(password.bytes()) {
            *d = b;
        }
        Auth::Pass(data)
    }
}

/// One advertisement, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    pub version: Version,
    pub vrid: u8,
    /// 0: the master is leaving; 255: the address owner.
    pub priority: u8,
    /// v3: Max Advertise Interval (10 ms steps); v2: Advertisement Interval (seconds).
    pub interval: Duration,
    /// All of one family, the family of the IP packet.
    pub addresses: Vec<IpAddr>,
    /// v2 only (v3 has none: always [`Auth::None`]).
    pub auth: Auth,
}

/// Why a received advertisement was dropped. [`Invalid::label`] is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Invalid {
    /// TTL / hop limit not 255.
    Ttl,
    /// Shorter than its header and address count say.
    Length,
    /// Not the version this instance runs (or v2 over IPv6).
    Version,
    /// Not an advertisement (type 1).
    Type,
    Checksum,
    /// A virtual router id no instance of this node serves on this interface.
    Vrid,
    /// v2 authentication type or password differs.
    Auth,
    /// The address list differs from the configured virtual addresses (RFC 3768 7.1:
    /// dropped unless the sender is the address owner, priority 255).
    Addresses,
    /// The advertisement interval is 0 or differs from the configured one: RFC 3768 7.1
    /// for v2; for v3 RFC 5798 lets a backup adopt the master's, which lets one forged
    /// advert set every timer (see `state`).
    Interval,
    /// With unicast peers: the sender is none of them.
    Peer,
}

impl Invalid {
    pub const ALL: [Invalid; 10] = [
        Invalid::Ttl,
        Invalid::Length,
        Invalid::Version,
        Invalid::Type,
        Invalid::Checksum,
        Invalid::Vrid,
        Invalid::Auth,
        Invalid::Addresses,
        Invalid::Interval,
        Invalid::Peer,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Invalid::Ttl => "ttl",
            Invalid::Length => "length",
            Invalid::Version => "version",
            Invalid::Type => "type",
            Invalid::Checksum => "checksum",
            Invalid::Vrid => "vrid",
            Invalid::Auth => "auth",
            Invalid::Addresses => "addresses",
            Invalid::Interval => "interval",
            Invalid::Peer => "peer",
        }
    }
}

impl Advert {
    /// The VRRP message (no IP header) as sent from `source` to `destination`, checksum
    /// included (v3's covers them through the pseudo-header).
    ///
    /// Panics if an address's family differs from `source`'s, or on v2 over IPv6: the
    /// config forbids both.
    pub fn encode(&self, source: IpAddr, destination: IpAddr) -> Vec<u8> {
        let v6 = source.is_ipv6();
        assert!(!(v6 && self.version == Version::V2), "VRRPv2 is IPv4 only");
        let mut out = Vec::with_capacity(HEADER_LEN + 16 * self.addresses.len() + AUTH_DATA_LEN);
        out.push((self.version.number() << 4) | TYPE_ADVERTISEMENT);
        out.push(self.vrid);
        out.push(self.priority);
        out.push(u8::try_from(self.addresses.len()).expect("at most 255 virtual addresses"));
        match self.version {
            Version::V3 => {
                let cs = (self.interval.as_millis() / 10).min(MAX_V3_CENTISECONDS) as u16;
                out.extend_from_slice(&cs.to_be_bytes());
            }
            Version::V2 => {
                let (auth_type, _) = auth_fields(&self.auth);
                out.push(auth_type);
                out.push(self.interval.as_secs().min(255) as u8);
            }
        }
        out.extend_from_slice(&[0, 0]);
        for a in &self.addresses {
            match (a, v6) {
                (IpAddr::V4(a), false) => out.extend_from_slice(&a.octets()),
                (IpAddr::V6(a), true) => out.extend_from_slice(&a.octets()),
                _ => panic!("virtual address {a} is not of the family of {source}"),
            }
        }
        if self.version == Version::V2 {
            out.extend_from_slice(&auth_fields(&self.auth).1);
        }
        let sum = checksum(self.version, source, destination, &out);
        out[6..8].copy_from_slice(&sum.to_be_bytes());
        out
    }
}

fn auth_fields(auth: &Auth) -> (u8, [u8; AUTH_DATA_LEN]) {
    match auth {
        Auth::None => (AUTH_TYPE_NONE, [0; AUTH_DATA_LEN]),
        Auth::Pass(data) => (AUTH_TYPE_PASS, *data),
        Auth::Other(t) => (*t, [0; AUTH_DATA_LEN]),
    }
}

/// Parses a VRRP message received from `source` to `destination` and checks its length and
/// checksum. The address family is the IP packet's.
pub fn decode(message: &[u8], source: IpAddr, destination: IpAddr) -> Result<Advert, Invalid> {
    if message.len() < HEADER_LEN {
        return Err(Invalid::Length);
    }
    let version = Version::from_number(message[0] >> 4).ok_or(Invalid::Version)?;
    if message[0] & 0x0f != TYPE_ADVERTISEMENT {
        return Err(Invalid::Type);
    }
    let v6 = source.is_ipv6();
    if v6 && version == Version::V2 {
        return Err(Invalid::Version);
    }
    let count = usize::from(message[3]);
    let addr_len = if v6 { 16 } else { 4 };
    let trailer = if version == Version::V2 {
        AUTH_DATA_LEN
    } else {
        0
    };
    let needed = HEADER_LEN + count * addr_len + trailer;
    if message.len() < needed {
        return Err(Invalid::Length);
    }
    if checksum(version, source, destination, message) != 0 {
        return Err(Invalid::Checksum);
    }
    let field = u16::from_be_bytes([message[4], message[5]]);
    let (interval, auth) = match version {
        Version::V3 => (
            Duration::from_millis(u64::from(field & 0x0fff) * 10),
            Auth::None,
        ),
        Version::V2 => {
            let data_at = HEADER_LEN + count * addr_len;
            let mut data = [0u8; AUTH_DATA_LEN];
            data.copy_from_slice(&message[data_at..data_at + AUTH_DATA_LEN]);
            let auth = match message[4] {
                AUTH_TYPE_NONE => Auth::None,
                AUTH_TYPE_PASS => Auth::Pass(data),
                other => Auth::Other(other),
            };
            (Duration::from_secs(u64::from(message[5])), auth)
        }
    };
    let addresses = message[HEADER_LEN..HEADER_LEN + count * addr_len]
        .chunks_exact(addr_len)
        .map(|c| {
            if v6 {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(c).expect("16 bytes")))
            } else {
                IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))
            }
        })
        .collect();
    Ok(Advert {
        version,
        vrid: message[1],
        priority: message[2],
        interval,
        addresses,
        auth,
    })
}

/// What an instance accepts.
#[derive(Clone, Debug)]
pub struct Expected<'a> {
    pub version: Version,
    pub vrid: u8,
    /// Router ids of the node's other instances on the same interface and family: their
    /// adverts are not this instance's business (ignored, not counted invalid).
    pub sibling_vrids: &'a [u8],
    pub addresses: &'a [IpAddr],
    /// Adverts must carry this interval.
    pub interval: Duration,
    /// v2: the authentication adverts must carry ([`Auth::None`] without a password).
    pub auth: Auth,
    /// Non-empty: only these senders are listened to.
    pub peers: &'a [IpAddr],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept(Advert),
    /// For a sibling instance.
    Ignore,
    Invalid(Invalid),
}

/// Every check RFC 5798 7.1 / RFC 3768 7.1 asks for, in their order, on a message received
/// with `ttl` from `source` to `destination`.
pub fn check(
    ttl: u8,
    source: IpAddr,
    destination: IpAddr,
    message: &[u8],
    expected: &Expected,
) -> Verdict {
    if ttl != TTL {
        return Verdict::Invalid(Invalid::Ttl);
    }
    let advert = match decode(message, source, destination) {
        Ok(a) => a,
        Err(why) => return Verdict::Invalid(why),
    };
    if advert.vrid != expected.vrid {
        return if expected.sibling_vrids.contains(&advert.vrid) {
            Verdict::Ignore
        } else {
            Verdict::Invalid(Invalid::Vrid)
        };
    }
    if advert.version != expected.version {
        return Verdict::Invalid(Invalid::Version);
    }
    if !expected.peers.is_empty() && !expected.peers.contains(&source) {
        return Verdict::Invalid(Invalid::Peer);
    }
    if advert.version == Version::V2 && advert.auth != expected.auth {
        return Verdict::Invalid(Invalid::Auth);
    }
    if advert.interval.is_zero() || advert.interval != expected.interval {
        return Verdict::Invalid(Invalid::Interval);
    }
    if advert.priority != 255 && !same_addresses(&advert.addresses, expected.addresses) {
        return Verdict::Invalid(Invalid::Addresses);
    }
    Verdict::Accept(advert)
}

fn same_addresses(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}

/// The Internet checksum of `message` (with its checksum field as it is), preceded for v3
/// by the pseudo-header of RFC 5798 5.2.8. 0 over a message whose checksum is right.
pub fn checksum(version: Version, source: IpAddr, destination: IpAddr, message: &[u8]) -> u16 {
    let mut sum = Checksum::new();
    if version == Version::V3 {
        let len = message.len() as u32;
        match (source, destination) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                sum = sum.add_bytes(&s.octets());
                sum = sum.add_bytes(&d.octets());
                sum = sum.add_bytes(&[0, PROTO_VRRP]);
                sum = sum.add_bytes(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                sum = sum.add_bytes(&s.octets());
                sum = sum.add_bytes(&d.octets());
                sum = sum.add_bytes(&len.to_be_bytes());
                sum = sum.add_bytes(&[0, 0, 0, PROTO_VRRP]);
            }
            _ => {}
        }
    }
    sum.add_bytes(message).finish()
}

/// An IPv4 packet as a raw IPv4 socket receives it: the header's source, destination and
/// TTL, and the payload (cut to the header's total length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<'a> {
    pub source: Ipv4Addr,
    pub destination: Ipv4Addr,
    pub ttl: u8,
    pub protocol: u8,
    pub payload: &'a [u8],
}

/// Splits an IPv4 packet; `None` if it is not a well-formed IPv4 packet.
pub fn parse_ipv4(packet: &[u8]) -> Option<Ipv4Packet<'_>> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    if ihl < 20 || total < ihl || packet.len() < total {
        return None;
    }
    Some(Ipv4Packet {
        source: Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]),
        destination: Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]),
        ttl: packet[8],
        protocol: packet[9],
        payload: &packet[ihl..total],
    })
}

/// The IPv4 header bascule puts before an advert (raw socket with IP_HDRINCL, so that
/// the source and TTL are exactly what the v3 checksum and RFC say): TTL 255, DSCP CS6
/// (network control, as routers mark their protocols), header checksum filled in.
pub fn ipv4_header(source: Ipv4Addr, destination: Ipv4Addr, payload_len: usize) -> [u8; 20] {
    let total = u16::try_from(20 + payload_len).expect("an advert fits an IPv4 packet");
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = 0xc0;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[8] = TTL;
    h[9] = PROTO_VRRP;
    h[12..16].copy_from_slice(&source.octets());
    h[16..20].copy_from_slice(&destination.octets());
    let sum = internet_checksum(&h);
    h[10..12].copy_from_slice(&sum.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn v3_advert() -> Advert {
        Advert {
            version: Version::V3,
            vrid: 51,
            priority: 150,
            interval: Duration::from_millis(1000),
            addresses: vec![v4("10.0.0.100"), v4("10.0.0.101")],
            auth: Auth::None,
        }
    }

    #[test]
    fn v3_ipv4_layout_is_the_rfc_one() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let bytes = v3_advert().encode(src, dst);
        assert_eq!(
            &bytes[..6],
            &[0x31, 51, 150, 2, 0x00, 100],
            "version 3, type 1, vrid, priority, count, 100 centiseconds"
        );
        assert_eq!(&bytes[8..], &[10, 0, 0, 100, 10, 0, 0, 101]);
        assert_eq!(checksum(Version::V3, src, dst, &bytes), 0);
        assert_eq!(decode(&bytes, src, dst), Ok(v3_advert()));
    }

    #[test]
    fn v3_checksum_covers_the_pseudo_header() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let bytes = v3_advert().encode(src, dst);
        assert_eq!(
            decode(&bytes, v4("10.0.0.3"), dst),
            Err(Invalid::Checksum),
            "another source is another pseudo-header"
        );
    }

    #[test]
    fn v2_carries_auth_and_seconds_and_no_pseudo_header() {
        let a = Advert {
            version: Version::V2,
            vrid: 7,
            priority: 100,
            interval: Duration::from_secs(2),
            addresses: vec![v4("192.168.1.1")],
            auth: Auth::pass("secret"),
        };
        let (src, dst) = (v4("192.168.1.2"), IpAddr::V4(MULTICAST_V4));
        let bytes = a.encode(src, dst);
        assert_eq!(bytes.len(), 8 + 4 + 8);
        assert_eq!(&bytes[..6], &[0x21, 7, 100, 1, 1, 2]);
        assert_eq!(&bytes[12..], b"secret\0\0");
        // The v2 checksum does not depend on the addresses of the IP header.
        assert_eq!(decode(&bytes, v4("192.168.1.9"), dst), Ok(a));
    }

    #[test]
    fn v3_ipv6_round_trip() {
        let a = Advert {
            addresses: vec!["fd00::100".parse().unwrap()],
            interval: Duration::from_millis(40_950),
            ..v3_advert()
        };
        let src: IpAddr = "fe80::1".parse().unwrap();
        let dst = IpAddr::V6(MULTICAST_V6);
        let bytes = a.encode(src, dst);
        assert_eq!(bytes.len(), 8 + 16);
        assert_eq!(&bytes[4..6], &[0x0f, 0xff]);
        assert_eq!(decode(&bytes, src, dst), Ok(a));
    }

    #[test]
    fn decode_rejects_what_is_not_an_advert() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let good = v3_advert().encode(src, dst);
        assert_eq!(decode(&good[..7], src, dst), Err(Invalid::Length));
        assert_eq!(decode(&good[..12], src, dst), Err(Invalid::Length));
        let mut bad = good.clone();
        bad[0] = 0x41;
        assert_eq!(decode(&bad, src, dst), Err(Invalid::Version));
        bad[0] = 0x32;
        assert_eq!(decode(&bad, src, dst), Err(Invalid::Type));
        let mut bad = good.clone();
        bad[2] ^= 1;
        assert_eq!(decode(&bad, src, dst), Err(Invalid::Checksum));
        let v2 = Advert {
            version: Version::V2,
            ..v3_advert()
        }
        .encode(src, dst);
        assert_eq!(
            decode(&v2, "fe80::1".parse().unwrap(), IpAddr::V6(MULTICAST_V6)),
            Err(Invalid::Version),
            "v2 over IPv6"
        );
    }

    fn expected<'a>(addresses: &'a [IpAddr], siblings: &'a [u8]) -> Expected<'a> {
        Expected {
            version: Version::V3,
            vrid: 51,
            sibling_vrids: siblings,
            addresses,
            interval: Duration::from_secs(1),
            auth: Auth::None,
            peers: &[],
        }
    }

    #[test]
    fn check_counts_each_reason() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let addrs = [v4("10.0.0.101"), v4("10.0.0.100")];
        let exp = expected(&addrs, &[52]);
        let good = v3_advert().encode(src, dst);
        assert_eq!(
            check(255, src, dst, &good, &exp),
            Verdict::Accept(v3_advert()),
            "address order does not matter"
        );
        assert_eq!(
            check(254, src, dst, &good, &exp),
            Verdict::Invalid(Invalid::Ttl)
        );
        let other = |vrid| {
            Advert {
                vrid,
                ..v3_advert()
            }
            .encode(src, dst)
        };
        assert_eq!(check(255, src, dst, &other(52), &exp), Verdict::Ignore);
        assert_eq!(
            check(255, src, dst, &other(53), &exp),
            Verdict::Invalid(Invalid::Vrid)
        );
        let fewer = Advert {
            addresses: vec![v4("10.0.0.100")],
            ..v3_advert()
        };
        assert_eq!(
            check(255, src, dst, &fewer.encode(src, dst), &exp),
            Verdict::Invalid(Invalid::Addresses)
        );
        let owner = Advert {
            priority: 255,
            ..fewer
        };
        assert!(
            matches!(
                check(255, src, dst, &owner.encode(src, dst), &exp),
                Verdict::Accept(_)
            ),
            "the address owner is believed whatever its list"
        );
        let peers = [v4("10.0.0.3")];
        let only_peer = Expected {
            peers: &peers,
            ..exp.clone()
        };
        assert_eq!(
            check(255, src, dst, &good, &only_peer),
            Verdict::Invalid(Invalid::Peer)
        );
        let v2_exp = Expected {
            version: Version::V2,
            ..exp.clone()
        };
        assert_eq!(
            check(255, src, dst, &good, &v2_exp),
            Verdict::Invalid(Invalid::Version)
        );
    }

    #[test]
    fn check_v2_auth_and_interval() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let addrs = [v4("10.0.0.100"), v4("10.0.0.101")];
        let exp = Expected {
            version: Version::V2,
            auth: Auth::pass("secret"),
            ..expected(&addrs, &[])
        };
        let advert = |auth, secs| {
            Advert {
                version: Version::V2,
                interval: Duration::from_secs(secs),
                auth,
                ..v3_advert()
            }
            .encode(src, dst)
        };
        assert!(matches!(
            check(255, src, dst, &advert(Auth::pass("secret"), 1), &exp),
            Verdict::Accept(_)
        ));
        for wrong in [Auth::pass("secreT"), Auth::None, Auth::Other(2)] {
            assert_eq!(
                check(255, src, dst, &advert(wrong, 1), &exp),
                Verdict::Invalid(Invalid::Auth),
                "{wrong:?}"
            );
        }
        assert_eq!(
            check(255, src, dst, &advert(Auth::pass("secret"), 3), &exp),
            Verdict::Invalid(Invalid::Interval)
        );
    }

    #[test]
    fn check_v3_interval() {
        let (src, dst) = (v4("10.0.0.2"), IpAddr::V4(MULTICAST_V4));
        let addrs = [v4("10.0.0.100"), v4("10.0.0.101")];
        let exp = expected(&addrs, &[]);
        for ms in [0, 10, 990, 2000, 40_950] {
            let advert = Advert {
                interval: Duration::from_millis(ms),
                ..v3_advert()
            };
            assert_eq!(
                check(255, src, dst, &advert.encode(src, dst), &exp),
                Verdict::Invalid(Invalid::Interval),
                "{ms} ms against 1 s"
            );
        }
    }

    #[test]
    fn ipv4_header_round_trip() {
        let (s, d) = (Ipv4Addr::new(10, 0, 0, 2), MULTICAST_V4);
        let mut pkt = ipv4_header(s, d, 3).to_vec();
        assert_eq!(internet_checksum(&pkt), 0, "header checksum");
        pkt.extend_from_slice(&[1, 2, 3, 99]);
        let p = parse_ipv4(&pkt).unwrap();
        assert_eq!(
            (p.source, p.destination, p.ttl, p.protocol, p.payload),
            (s, d, 255, PROTO_VRRP, &[1u8, 2, 3][..]),
            "payload cut to the total length"
        );
        assert_eq!(parse_ipv4(&pkt[..10]), None);
    }
}
