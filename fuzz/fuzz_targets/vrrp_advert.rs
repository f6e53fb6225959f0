//! A VRRP advert as a raw socket delivers it. The first byte chooses: bit 0 IPv6,
//! bit 1 repair the checksum (so that the fuzzer gets past it), bit 2 a whole IPv4
//! packet (its header parsed first).
#![no_main]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use bascule::vrrp::packet::{self, Auth, Expected, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else {
        return;
    };
    let v6 = how & 1 != 0;
    let (mut source, mut destination): (IpAddr, IpAddr) = if v6 {
        ("fe80::1".parse::<Ipv6Addr>().unwrap().into(), "ff02::12".parse::<Ipv6Addr>().unwrap().into())
    } else {
        (Ipv4Addr::new(10, 0, 0, 1).into(), Ipv4Addr::new(224, 0, 0, 18).into())
    };
    let mut ttl = 255;
    let mut message = rest.to_vec();
    if how & 4 != 0 && !v6 {
        let Some(p) = packet::parse_ipv4(rest) else {
            return;
        };
        (source, destination, ttl) = (p.source.into(), p.destination.into(), p.ttl);
        message = p.payload.to_vec();
    }
    if how & 2 != 0 && message.len() >= 8 {
        message[6] = 0;
        message[7] = 0;
        let version = Version::from_number(message[0] >> 4).unwrap_or(Version::V3);
        let sum = packet::checksum(version, source, destination, &message);
        message[6..8].copy_from_slice(&sum.to_be_bytes());
    }
    let _ = packet::decode(&message, source, destination);
    let addresses = [source];
    for version in [Version::V2, Version::V3] {
        let expected = Expected {
            version,
            vrid: 51,
            sibling_vrids: &[52],
            addresses: &addresses,
            interval: Duration::from_secs(1),
            auth: Auth::pass("secret"),
            peers: &[],
        };
        let _ = packet::check(ttl, source, destination, &message, &expected);
    }
});
