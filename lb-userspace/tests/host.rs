//! What the controller reads of the node's interfaces and neighbour entries (over
//! rtnetlink), checked in a namespace of our own against what `ip` gave it.

mod common;

use std::net::IpAddr;

use bascule::host::{
    interfaces::{addresses_by_interface, interface_addresses, interface_mac},
    neighbours::{neighbour_macs, resolve_macs},
};
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

/// The neighbour table as the controller reads it (over rtnetlink, no `ip` process):
/// static entries of both families with their MACs, entries that cannot be used (failed,
/// of an interface without ARP) left out, and a backend already known resolved at once.
#[test]
fn neighbour_entries_are_read_over_rtnetlink() {
    let ns = Netns::new("neigh");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "n0", "type", "veth", "peer", "name", "n1"]);
    for d in ["n0", "n1"] {
        ns.ip(&["link", "set", d, "up"]);
    }
    ns.ip(&["addr", "add", "10.4.0.1/24", "dev", "n0"]);
    ns.ip(&["addr", "add", "fd00:4::1/64", "nodad", "dev", "n0"]);
    for (addr, mac, nud) in [
        ("10.4.0.7", "02:00:0a:04:00:07", "permanent"),
        ("10.4.0.8", "02:00:0a:04:00:08", "stale"),
        ("fd00:4::7", "02:00:fd:04:00:07", "permanent"),
        ("10.4.0.9", "02:00:0a:04:00:09", "noarp"),
    ] {
        ns.ip(&["neigh", "add", addr, "lladdr", mac, "dev", "n0", "nud", nud]);
    }
    let (table, resolved) = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            let wanted = ips(&["fd00:4::7", "10.4.0.7"]);
            let started = std::time::Instant::now();
            let resolved =
                resolve_macs(&wanted, std::time::Duration::from_secs(5)).expect("resolve");
            assert!(
                started.elapsed() < std::time::Duration::from_millis(500),
                "known entries need no wait"
            );
            (neighbour_macs().expect("neighbour table"), resolved)
        })
        .join()
        .unwrap()
    });
    let ip = |a: &str| a.parse::<IpAddr>().unwrap();
    assert_eq!(table.get(&ip("10.4.0.7")), Some(&[2, 0, 10, 4, 0, 7]));
    assert_eq!(table.get(&ip("10.4.0.8")), Some(&[2, 0, 10, 4, 0, 8]));
    assert_eq!(table.get(&ip("fd00:4::7")), Some(&[2, 0, 0xfd, 4, 0, 7]));
    assert!(
        !table.contains_key(&ip("10.4.0.9")),
        "a noarp entry is not a resolved neighbour: {table:?}"
    );
    let mut resolved = resolved;
    resolved.sort();
    assert_eq!(
        resolved,
        vec![
            (ip("10.4.0.7"), [2, 0, 10, 4, 0, 7]),
            (ip("fd00:4::7"), [2, 0, 0xfd, 4, 0, 7])
        ]
    );
}

#[test]
fn a_veths_driver_and_xdp_mode_are_read_as_ethtool_and_ip_show_them() {
    use bascule::host::interfaces::{driver, xdp_attach_mode};
    let ns = Netns::new("driver");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "p0"]);
    let (d0, mode, missing) = std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            (
                driver("d0").unwrap(),
                xdp_attach_mode("d0").unwrap(),
                driver("nope").unwrap_err().to_string(),
            )
        })
        .join()
        .unwrap()
    });
    assert_eq!(d0, "veth");
    assert_eq!(mode, "none");
    assert!(missing.contains("nope"), "{missing}");
}
