//! What the controller reads of the node's interfaces (over rtnetlink), checked in a
//! namespace of our own against addresses of every kind `ip` can give an interface.

mod common;

use std::net::IpAddr;

use bascule::host::interfaces::{addresses_by_interface, interface_addresses, interface_mac};
use common::Netns;

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn interfaces_and_addresses_are_read_as_ip_shows_them() {
    let ns = Netns::new("netinfo");
    ns.ip(&["link", "set", "lo", "up"]);
    // (This kernel has no dummy interfaces: veth pairs, without IPv6 link-local
    // addresses of their own.)
    for (dev, peer) in [("d0", "p0"), ("d1", "p1"), ("d2", "p2")] {
        ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
        for d in [dev, peer] {
            ns.ip(&["link", "set", d, "addrgenmode", "none"]);
            ns.ip(&["link", "set", d, "up"]);
        }
    }
    for args in [
        &["10.1.0.1/24", "dev", "d0"][..],
        &["169.254.7.7/16", "scope", "link", "dev", "d0"],
        &["10.9.0.1/32", "scope", "host", "dev", "d0"],
        &["10.3.0.1/24", "scope", "site", "dev", "d0"],
        &["fd00::1/64", "nodad", "dev", "d0"],
        &["fe80::1/64", "nodad", "dev", "d0"],
        // Point to point: the local address is ours, the peer is not.
        &["10.2.0.1", "peer", "10.2.0.2", "dev", "d1"],
    ] {
        let mut v = vec!["addr", "add"];
        v.extend_from_slice(args);
        ns.ip(&v);
    }
    ns.ip(&["link", "set", "d0", "address", "02:00:0a:01:00:01"]);
    // d2 has no address, but exists.
    let (by_interface, d0, d1, missing, mac) = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            (
                addresses_by_interface().unwrap(),
                interface_addresses("d0").unwrap(),
                interface_addresses("d1").unwrap(),
                interface_addresses("nope").unwrap_err().to_string(),
                interface_mac("d0").unwrap(),
            )
        })
        .join()
        .unwrap()
    });
    let sorted = |mut v: Vec<IpAddr>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(by_interface["d0"].clone()),
        sorted(ips(&[
            "10.1.0.1",
            "169.254.7.7",
            "10.9.0.1",
            "fd00::1",
            "fe80::1"
        ])),
        "global, link and host scopes; not site"
    );
    assert_eq!(by_interface["d1"], ips(&["10.2.0.1"]));
    assert!(by_interface["lo"].is_empty(), "loopback's own are left out");
    assert!(by_interface.contains_key("d2"));
    let mut names: Vec<&String> = by_interface.keys().collect();
    names.sort();
    assert_eq!(names, ["d0", "d1", "d2", "lo", "p0", "p1", "p2"]);
    // The tunnel's source candidates: global and host scope, IPv4 first, each family in
    // the kernel's order (`ip addr` lists 10.9.0.1 first too).
    assert_eq!(d0, ips(&["10.9.0.1", "10.1.0.1", "fd00::1"]));
    assert_eq!(d1, ips(&["10.2.0.1"]));
    assert_eq!(missing, "no interface nope in this network namespace");
    assert_eq!(mac, [2, 0, 10, 1, 0, 1]);
}
