//! Fixtures for `nat`, `local`, per-backend forwarding, every scheduler, drain,
//! persistence, ICMP and fragments, through BPF_PROG_TEST_RUN (see `common::harness`).
//! Expected frames are built from scratch by the test's own packet builder (full
//! checksums, not incremental updates), and NAT outputs are also checked by scapy.

mod common;

use std::{
    io::Write,
    net::IpAddr,
    process::{Command, Stdio},
};

use bascule::{config::Scheduler, plan::tables};
use common::{
    harness::*,
    packet::{Frame, CLIENT_MAC},
};
use lb_common::icmp::{
    ECHO_REPLY_V4, ECHO_REPLY_V6, ECHO_REQUEST_V4, ECHO_REQUEST_V6, FRAG_NEEDED_CODE,
    PACKET_TOO_BIG_V6, UNREACHABLE_V4,
};

const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: nat4, vip: 10.112.0.110, port: 80, forwarding: nat,
      backends: [{ address: 10.111.0.11, port: 8080 }, { address: 10.111.0.12, port: 8080 }] }
  - { name: nat4u, vip: 10.112.0.110, port: 53, protocol: udp, forwarding: nat,
      backends: [{ address: 10.111.0.11, port: 5353 }] }
  - { name: nat6, vip: "fd00:112::110", port: 80, forwarding: nat,
      backends: [{ address: "fd00:111::11", port: 8080 }] }
  - { name: nat6u, vip: "fd00:112::110", port: 53, protocol: udp, forwarding: nat,
      backends: [{ address: "fd00:111::11", port: 5353 }] }
  - { name: local, vip: 10.112.0.111, port: 80, forwarding: local, backends: [{ address: 10.111.0.2 }] }
  - { name: mixed, vip: 10.112.0.112, port: 80,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12, forwarding: tun }] }
  - { name: rr, vip: 10.112.0.120, port: 80, scheduler: rr,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: wrr, vip: 10.112.0.121, port: 80, scheduler: wrr,
      backends: [{ address: 10.111.0.11, weight: 3 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 1 }] }
  - { name: lc, vip: 10.112.0.122, port: 80, scheduler: lc,
      backends: [{ address: 10.111.0.11, weight: 1 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 4 }] }
  - { name: wlc, vip: 10.112.0.123, port: 80, scheduler: wlc,
      backends: [{ address: 10.111.0.11, weight: 1 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 4 }] }
  - { name: sed, vip: 10.112.0.124, port: 80, scheduler: sed,
      backends: [{ address: 10.111.0.11, weight: 1 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 4 }] }
  - { name: nq, vip: 10.112.0.125, port: 80, scheduler: nq,
      backends: [{ address: 10.111.0.11, weight: 1 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 4 }] }
  - { name: sh, vip: 10.112.0.126, port: 80, scheduler: sh,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: dh, vip: 10.112.0.127, port: 80, scheduler: dh,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: lblc, vip: 10.112.0.128, port: 80, scheduler: lblc,
      backends: [{ address: 10.111.0.11, weight: 2 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 2 }] }
  - { name: lblcr, vip: 10.112.0.129, port: 80, scheduler: lblcr,
      backends: [{ address: 10.111.0.11, weight: 2 }, { address: 10.111.0.12, weight: 2 }, { address: 10.111.0.13, weight: 2 }] }
  - { name: persist, vip: 10.112.0.130, port: 80, persistence: 300s,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: web, vip: 10.112.0.131, port: 80,
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: web6, vip: "fd00:112::131", port: 80,
      backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
"#;

const CLIENT4: &str = "10.111.0.10";
const CLIENT6: &str = "fd00:111::10";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The last byte of the destination MAC: which lab backend a frame went to.
fn to(out: &[u8]) -> u8 {
    assert_eq!(
        out[0..5],
        [2, 0, 0, 0, 0],
        "not sent to a lab backend: {:02x?}",
        &out[0..6]
    );
    out[5]
}

fn backend_id(h: &Harness, service: &str, addr: &str) -> u32 {
    h.plan
        .backends
        .iter()
        .find(|b| &*b.service == service && b.address == ip(addr))
        .unwrap()
        .id
}

/// Frame `f` as `nat` must send it: the same packet with other addresses and ports
/// (checksums computed from scratch), from the LB to `mac`.
fn rewritten(f: &Frame, src: (&str, u16), dst: (&str, u16), mac: [u8; 6]) -> Vec<u8> {
    f.clone().endpoints(src, dst).sent_to(mac).bytes()
}

/// Checks every IPv4/TCP/UDP/ICMP checksum of each frame with scapy, an independent
/// decoder: scapy recomputes a checksum when its field is deleted.
fn scapy_checksums_ok(frames: &[Vec<u8>]) {
    let script = r#"
import sys
from scapy.all import Ether, IP, IPv6, TCP, UDP, ICMP
for n, line in enumerate(sys.stdin):
    raw = bytes.fromhex(line.strip())
    p = Ether(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p and p[layer].chksum not in (None, 0) or (layer is TCP and TCP in p):
            q = Ether(raw)
            del q[layer].chksum
            want = Ether(bytes(q))[layer].chksum
            if p[layer].chksum != want:
                print(f"frame {n}: {layer.__name__} checksum {p[layer].chksum:#06x}, scapy computes {want:#06x}")
                sys.exit(1)
print("ok", n + 1)
"#;
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with scapy (cargo xtask setup installs python3-scapy)");
    {
        let stdin = child.stdin.as_mut().unwrap();
        for f in frames {
            let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(stdin, "{hex}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scapy: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.trim(), format!("ok {}", frames.len()));
}

#[test]
fn nat_round_trips_with_exact_checksums() {
    let mut h = Harness::new(CONFIG);
    let b11 = backend_mac(ip("10.111.0.11"));
    let mut cases = Vec::new();
    let mut outputs = Vec::new();

    // TCP v4: forward to the backend's port, the reply comes back from the VIP.
    let c2s = Frame::tcp(CLIENT4, 40000, "10.112.0.110", 80);
    let (_, out) = h.run(&c2s.bytes());
    let chosen = format!("10.111.0.{}", to(&out));
    let bmac = backend_mac(ip(&chosen));
    cases.push(Case {
        name: "nat v4 tcp, client to backend",
        input: c2s.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(&c2s, (CLIENT4, 40000), (&chosen, 8080), bmac)),
    });
    let s2c = Frame::tcp(&chosen, 8080, CLIENT4, 40000).flags(0x12);
    cases.push(Case {
        name: "nat v4 tcp, backend reply to client",
        input: s2c.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(
            &s2c,
            ("10.112.0.110", 80),
            (CLIENT4, 40000),
            CLIENT_MAC,
        )),
    });
    // UDP v4, with and without a checksum.
    let u = Frame::udp(CLIENT4, 40001, "10.112.0.110", 53);
    cases.push(Case {
        name: "nat v4 udp",
        input: u.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(&u, (CLIENT4, 40001), ("10.111.0.11", 5353), b11)),
    });
    let ur = Frame::udp("10.111.0.11", 5353, CLIENT4, 40001);
    cases.push(Case {
        name: "nat v4 udp reply",
        input: ur.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(
            &ur,
            ("10.112.0.110", 53),
            (CLIENT4, 40001),
            CLIENT_MAC,
        )),
    });
    let uz = Frame::udp(CLIENT4, 40002, "10.112.0.110", 53).without_udp_checksum();
    let uz_out = rewritten(&uz, (CLIENT4, 40002), ("10.111.0.11", 5353), b11);
    assert_eq!(uz_out[14 + 20 + 6..14 + 20 + 8], [0, 0]);
    cases.push(Case {
        name: "nat v4 udp without checksum stays without",
        input: uz.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(uz_out),
    });
    // IPv6, TCP and UDP.
    let b6 = backend_mac(ip("fd00:111::11"));
    let t6 = Frame::tcp(CLIENT6, 40003, "fd00:112::110", 80);
    cases.push(Case {
        name: "nat v6 tcp",
        input: t6.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(&t6, (CLIENT6, 40003), ("fd00:111::11", 8080), b6)),
    });
    let t6r = Frame::tcp("fd00:111::11", 8080, CLIENT6, 40003);
    cases.push(Case {
        name: "nat v6 tcp reply",
        input: t6r.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(
            &t6r,
            ("fd00:112::110", 80),
            (CLIENT6, 40003),
            CLIENT_MAC,
        )),
    });
    let u6 = Frame::udp(CLIENT6, 40004, "fd00:112::110", 53);
    cases.push(Case {
        name: "nat v6 udp",
        input: u6.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(&u6, (CLIENT6, 40004), ("fd00:111::11", 5353), b6)),
    });
    let u6r = Frame::udp("fd00:111::11", 5353, CLIENT6, 40004);
    cases.push(Case {
        name: "nat v6 udp reply",
        input: u6r.bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(rewritten(
            &u6r,
            ("fd00:112::110", 53),
            (CLIENT6, 40004),
            CLIENT_MAC,
        )),
    });
    // A packet from a backend that no flow expects: untouched.
    cases.push(Case {
        name: "nat reply without a matching entry: passed untouched",
        input: Frame::tcp("10.111.0.12", 8080, CLIENT4, 49999).bytes(),
        verdict: XDP_PASS,
        expect: Expect::Unchanged,
    });
    for c in &cases {
        if let Expect::Frame(f) = &c.expect {
            outputs.push(f.clone());
        }
    }
    h.datapath.clear_conntrack().unwrap();
    check(&mut h, cases);
    scapy_checksums_ok(&outputs);
}

#[test]
fn local_and_per_backend_forwarding() {
    let mut h = Harness::new(CONFIG);
    let mut cases = vec![Case {
        name: "local: up the LB's own stack, untouched",
        input: Frame::tcp(CLIENT4, 41000, "10.112.0.111", 80).bytes(),
        verdict: XDP_PASS,
        expect: Expect::Unchanged,
    }];
    // In "mixed", .11 is reached by dr and .12 (override) by tun.
    let mut seen = [false; 2];
    for port in 41001..41100u16 {
        let f = Frame::tcp(CLIENT4, port, "10.112.0.112", 80);
        let backend = h.predicted(&f);
        if backend == ip("10.111.0.11") && !seen[0] {
            cases.push(Case {
                name: "mixed: dr backend",
                input: f.bytes(),
                verdict: XDP_TX,
                expect: Expect::Frame(f.clone().sent_to(backend_mac(backend)).bytes()),
            });
            seen[0] = true;
        } else if backend == ip("10.111.0.12") && !seen[1] {
            let out = f.clone().tunnelled_to(backend, backend_mac(backend));
            cases.push(Case {
                name: "mixed: tun override",
                input: f.bytes(),
                verdict: XDP_TX,
                expect: Expect::Frame(out.bytes()),
            });
            seen[1] = true;
        }
    }
    assert_eq!(seen, [true, true]);
    check(&mut h, cases);
}

/// The backends that a series of new flows to `vip` reach, by last MAC byte.
fn new_flows(h: &mut Harness, vip: &str, n: u16, first_port: u16) -> Vec<u8> {
    (0..n)
        .map(|i| {
            let (v, out) = h.run(&Frame::tcp(CLIENT4, first_port + i, vip, 80).bytes());
            assert_eq!(v, XDP_TX);
            to(&out)
        })
        .collect()
}

#[test]
fn rr_and_wrr_cycle_exactly() {
    let mut h = Harness::new(CONFIG);
    assert_eq!(
        new_flows(&mut h, "10.112.0.120", 9, 42000),
        vec![11, 12, 13, 11, 12, 13, 11, 12, 13]
    );
    // wrr: IPVS's interleaving for weights 3, 2, 1, twice.
    let cycle: Vec<u8> = tables::wrr_cycle(&[3, 2, 1])
        .iter()
        .map(|&i| 11 + i as u8)
        .collect();
    assert_eq!(cycle, vec![11, 11, 12, 11, 12, 13]);
    let got = new_flows(&mut h, "10.112.0.121", 12, 43000);
    assert_eq!(got, [cycle.clone(), cycle].concat());
    // An established flow is not rescheduled by the cursor.
    let f = Frame::tcp(CLIENT4, 42000, "10.112.0.120", 80);
    assert_eq!(to(&h.run(&f.bytes()).1), 11);
}

#[test]
fn least_connection_family_follows_ipvs_formulas() {
    let mut h = Harness::new(CONFIG);
    // Weights are 1, 2, 4 on .11, .12, .13 in every one of these services.
    let preset = |h: &mut Harness, svc: &str, active: [u64; 3]| {
        for (i, a) in active.iter().enumerate() {
            let id = backend_id(h, svc, &format!("10.111.0.{}", 11 + i));
            h.datapath.set_active_connections(id, *a).unwrap();
        }
    };
    let first = |h: &mut Harness, vip: &str, port: u16| new_flows(h, vip, 1, port)[0];
    // lc: fewest active connections: .11 (2) over .12 (3) and .13 (6).
    preset(&mut h, "lc", [2, 3, 6]);
    assert_eq!(first(&mut h, "10.112.0.122", 44000), 11);
    // wlc: active/weight = 2, 1.5, 1.5 -> first of the least: .12.
    preset(&mut h, "wlc", [2, 3, 6]);
    assert_eq!(first(&mut h, "10.112.0.123", 44001), 12);
    // sed: (active+1)/weight = 3, 2, 1.75 -> .13.
    preset(&mut h, "sed", [2, 3, 6]);
    assert_eq!(first(&mut h, "10.112.0.124", 44002), 13);
    // nq: an idle backend first (.12), whatever sed would say (.13: 6/4 < ...).
    preset(&mut h, "nq", [5, 0, 0]);
    assert_eq!(first(&mut h, "10.112.0.125", 44003), 12);
    // nq with nobody idle is sed: (6, 2/2, 2/4) -> (7/1, 3/2, 3/4) -> .13.
    preset(&mut h, "nq", [6, 2, 2]);
    assert_eq!(first(&mut h, "10.112.0.125", 44004), 13);
    // Each new flow counts as active on its backend.
    let id = backend_id(&h, "nq", "10.111.0.13");
    assert_eq!(h.datapath.active_connections(id).unwrap(), 3);
    // FIN ends it: the count goes back down.
    let fin = Frame::tcp(CLIENT4, 44004, "10.112.0.125", 80).flags(0x11);
    h.run(&fin.bytes());
    assert_eq!(h.datapath.active_connections(id).unwrap(), 2);
}

#[test]
fn source_and_destination_hashing() {
    let mut h = Harness::new(CONFIG);
    // sh: one client, many connections -> one backend; many clients -> several.
    let one = new_flows(&mut h, "10.112.0.126", 30, 45000);
    assert!(one.iter().all(|&b| b == one[0]), "{one:?}");
    let many: std::collections::BTreeSet<u8> = (0..60u8)
        .map(|i| {
            to(&h
                .run(&Frame::tcp(&format!("10.120.0.{i}"), 45000, "10.112.0.126", 80).bytes())
                .1)
        })
        .collect();
    assert!(many.len() >= 2, "{many:?}");
    // dh: one destination -> one backend, whoever the client.
    let dh: std::collections::BTreeSet<u8> = (0..60u8)
        .map(|i| {
            to(&h
                .run(&Frame::tcp(&format!("10.121.0.{i}"), 45000, "10.112.0.127", 80).bytes())
                .1)
        })
        .collect();
    assert_eq!(dh.len(), 1, "{dh:?}");
}

#[test]
fn lblc_and_lblcr_keep_a_destination_until_overloaded() {
    let mut h = Harness::new(CONFIG);
    // Weight 2 each. New flows to the one destination stay on .11 while its active count
    // is at most its weight (0, 1, 2 when chosen); the fourth finds it overloaded (3 > 2)
    // while others are idle, and moves to the wlc choice, .12.
    assert_eq!(
        new_flows(&mut h, "10.112.0.128", 5, 46000),
        vec![11, 11, 11, 12, 12]
    );
    // lblcr: the same, but .12 joins the set; the set's least loaded member then serves.
    assert_eq!(
        new_flows(&mut h, "10.112.0.129", 6, 46100),
        vec![11, 11, 11, 12, 12, 12]
    );
    // .11 (3 active) and .12 (3 active) both overloaded, .13 idle: .13 joins the set.
    assert_eq!(new_flows(&mut h, "10.112.0.129", 1, 46200), vec![13]);
    // Ending .13's connection makes it the least loaded member: new flows follow it.
    let fin = Frame::tcp(CLIENT4, 46200, "10.112.0.129", 80).flags(0x04);
    h.run(&fin.bytes());
    assert_eq!(new_flows(&mut h, "10.112.0.129", 1, 46300), vec![13]);
}

#[test]
fn drain_keeps_established_flows_and_takes_no_new_ones() {
    let mut h = Harness::new(CONFIG);
    let f = Frame::tcp(CLIENT4, 47000, "10.112.0.131", 80);
    let owner = to(&h.run(&f.bytes()).1);
    let drained = CONFIG.replace(
        "{ name: web, vip: 10.112.0.131, port: 80,\n      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }",
        &format!(
            "{{ name: web, vip: 10.112.0.131, port: 80,\n      backends: [{}] }}",
            [11u8, 12, 13]
                .iter()
                .map(|b| format!("{{ address: 10.111.0.{b}, weight: {} }}", if *b == owner { 0 } else { 1 }))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    assert_ne!(drained, CONFIG);
    h.apply(&drained);
    assert_eq!(
        to(&h.run(&f.bytes()).1),
        owner,
        "the established flow stays on its drained backend"
    );
    let fresh = new_flows(&mut h, "10.112.0.131", 200, 47100);
    assert!(!fresh.contains(&owner), "a drained backend took a new flow");
}

#[test]
fn persistence_keeps_a_client_on_one_backend() {
    let mut h = Harness::new(CONFIG);
    let persistent = new_flows(&mut h, "10.112.0.130", 40, 48000);
    assert!(
        persistent.iter().all(|&b| b == persistent[0]),
        "{persistent:?}"
    );
    // Without persistence the same connections spread (same backends, mh).
    let spread: std::collections::BTreeSet<u8> = new_flows(&mut h, "10.112.0.131", 40, 48000)
        .into_iter()
        .collect();
    assert!(spread.len() > 1);
    // Another client has its own template.
    let other: std::collections::BTreeSet<u8> = (0..20u16)
        .map(|p| {
            to(&h
                .run(&Frame::tcp("10.111.0.20", 48100 + p, "10.112.0.130", 80).bytes())
                .1)
        })
        .collect();
    assert_eq!(other.len(), 1);
}

#[test]
fn icmp_echo_is_answered_for_vips_only() {
    let mut h = Harness::new(CONFIG);
    let rest = [0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    // The answer goes back to the client's MAC, from the VIP, with the LB's own TTL (64)
    // whatever the request's.
    let reply4 = Frame::icmp("10.112.0.131", CLIENT4, ECHO_REPLY_V4, 0, &rest)
        .sent_to(CLIENT_MAC)
        .bytes();
    let reply6 = Frame::icmp("fd00:112::131", CLIENT6, ECHO_REPLY_V6, 0, &rest)
        .sent_to(CLIENT_MAC)
        .bytes();
    let echo = |src: &str, dst: &str, kind: u8| Frame::icmp(src, dst, kind, 0, &rest);
    let cases = vec![
        Case {
            name: "echo v4 to a VIP",
            input: echo(CLIENT4, "10.112.0.131", ECHO_REQUEST_V4)
                .ttl(57)
                .bytes(),
            verdict: XDP_TX,
            expect: Expect::Frame(reply4.clone()),
        },
        Case {
            name: "echo v6 to a VIP",
            input: echo(CLIENT6, "fd00:112::131", ECHO_REQUEST_V6)
                .ttl(57)
                .bytes(),
            verdict: XDP_TX,
            expect: Expect::Frame(reply6),
        },
        Case {
            name: "echo to another address: kernel's",
            input: echo(CLIENT4, "10.111.0.2", ECHO_REQUEST_V4).bytes(),
            verdict: XDP_PASS,
            expect: Expect::Unchanged,
        },
        Case {
            // The fuzzer's find: identifier, sequence and data all zero. Its reply's
            // checksum is 0xffff, which an incremental update gives as 0x0000.
            name: "echo v4 of zeros to a VIP: kernel's",
            input: Frame::icmp(CLIENT4, "10.112.0.131", ECHO_REQUEST_V4, 0, &[0; 8]).bytes(),
            verdict: XDP_PASS,
            expect: Expect::Unchanged,
        },
        Case {
            name: "other ICMP to a VIP: kernel's",
            // A timestamp request.
            input: echo(CLIENT4, "10.112.0.131", 13).bytes(),
            verdict: XDP_PASS,
            expect: Expect::Unchanged,
        },
    ];
    check(&mut h, cases);
    scapy_checksums_ok(&[reply4]);
}

/// An ICMP error from a router about a packet the VIP sent to the client (quoted: the
/// VIP's IP header and the first 8 bytes of its TCP header).
fn too_big(router: &str, vip: &str, vport: u16, client: &str, cport: u16) -> Frame {
    let quoted = Frame::tcp(vip, vport, client, cport).ip_bytes();
    let hlen = if ip(vip).is_ipv4() { 20 } else { 40 };
    // The next hop's MTU: 1500 (IPv4: after 16 unused bits), 1280 (IPv6).
    let mut rest = if ip(vip).is_ipv4() {
        vec![0, 0, 0x05, 0xdc]
    } else {
        vec![0, 0, 0x05, 0x00]
    };
    rest.extend_from_slice(&quoted[..hlen + 8]);
    if ip(vip).is_ipv4() {
        Frame::icmp(router, vip, UNREACHABLE_V4, FRAG_NEEDED_CODE, &rest)
    } else {
        Frame::icmp(router, vip, PACKET_TOO_BIG_V6, 0, &rest)
    }
}

#[test]
fn too_big_errors_reach_the_backend_that_owns_the_flow() {
    let mut h = Harness::new(CONFIG);
    let mut cases = Vec::new();
    for (vip, client, router) in [
        ("10.112.0.131", CLIENT4, "10.111.0.1"),
        ("fd00:112::131", CLIENT6, "fd00:111::1"),
    ] {
        let flow = Frame::tcp(client, 49000, vip, 80);
        let owner = to(&h.run(&flow.bytes()).1);
        let err = too_big(router, vip, 80, client, 49000);
        cases.push(Case {
            name: "too big -> the dr flow's backend",
            input: err.bytes(),
            verdict: XDP_TX,
            expect: Expect::Frame(err.sent_to([2, 0, 0, 0, 0, owner]).bytes()),
        });
        cases.push(Case {
            name: "too big about an unknown flow: kernel's",
            input: too_big(router, vip, 80, client, 49001).bytes(),
            verdict: XDP_PASS,
            expect: Expect::Unchanged,
        });
    }
    // nat: the error is rewritten for the backend: outer destination, quoted source
    // address and port, quoted IPv4 checksum, ICMP checksum.
    let flow = Frame::tcp(CLIENT4, 49100, "10.112.0.110", 80);
    let owner = format!("10.111.0.{}", to(&h.run(&flow.bytes()).1));
    let expected = too_big("10.111.0.1", &owner, 8080, CLIENT4, 49100)
        .sent_to(backend_mac(ip(&owner)))
        .bytes();
    cases.push(Case {
        name: "too big -> the nat flow's backend, rewritten",
        input: too_big("10.111.0.1", "10.112.0.110", 80, CLIENT4, 49100).bytes(),
        verdict: XDP_TX,
        expect: Expect::Frame(expected.clone()),
    });
    // The fuzzer's find: an error whose IP length ends inside the quoted header (the
    // frame's padding holds the rest): not steered, so never rewritten.
    let mut cut = too_big("10.111.0.1", "10.112.0.110", 80, CLIENT4, 49100).bytes();
    let short = (20 + 8 + 17) as u16;
    cut[16..18].copy_from_slice(&short.to_be_bytes());
    let sum = lb_common::checksum::internet_checksum(&{
        let mut h = cut[14..34].to_vec();
        h[10..12].fill(0);
        h
    });
    cut[24..26].copy_from_slice(&sum.to_be_bytes());
    cases.push(Case {
        name: "too big quoting past its IP length: kernel's",
        input: cut,
        verdict: XDP_PASS,
        expect: Expect::Unchanged,
    });
    check(&mut h, cases);
    scapy_checksums_ok(&[expected]);
    assert_eq!(h.datapath.reasons().unwrap()["icmp_unmatched"], 3);
}

/// Fragments of one TCP datagram (first: offset 0 with the header; later: offset > 0).
fn fragments(src: &str, dst: &str, sport: u16, id: u32) -> [Vec<u8>; 2] {
    Frame::tcp(src, sport, dst, 80)
        .payload(vec![0x5a; 64])
        .fragments(id, 40)
}

#[test]
fn later_fragments_follow_the_first() {
    let mut h = Harness::new(CONFIG);
    for (src, vip) in [(CLIENT4, "10.112.0.131"), (CLIENT6, "fd00:112::131")] {
        for id in 1..20u32 {
            let [first, later] = fragments(src, vip, 50000 + id as u16, id);
            let (v1, o1) = h.run(&first);
            let (v2, o2) = h.run(&later);
            assert_eq!((v1, v2), (XDP_TX, XDP_TX), "{src} datagram {id}");
            assert_eq!(to(&o1), to(&o2), "{src} datagram {id}: fragments split");
            assert_eq!(
                o2[12..],
                later[12..],
                "a later fragment is forwarded unchanged"
            );
        }
        // A later fragment whose first fragment never came: the kernel's, counted.
        let [_, orphan] = fragments(src, vip, 50999, 999);
        assert_eq!(h.run(&orphan), (XDP_PASS, orphan.clone()));
    }
    assert_eq!(h.datapath.reasons().unwrap()["fragment_unmatched"], 2);
}

#[test]
fn reconcile_counts_active_flows_and_expires_idle_ones() {
    let mut h = Harness::new(CONFIG);
    new_flows(&mut h, "10.112.0.122", 5, 51000);
    let r = h
        .datapath
        .reconcile(900_000_000_000, 30_000_000_000)
        .unwrap();
    assert_eq!(r.live, 5);
    assert_eq!(r.active.values().sum::<u64>(), 5);
    // Everything is older than a 0-ns... 1 ns timeout after a short wait.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = h.datapath.reconcile(1, 1).unwrap();
    assert_eq!((r.live, r.expired), (0, 5));
    let id = backend_id(&h, "lc", "10.111.0.11");
    assert_eq!(h.datapath.active_connections(id).unwrap(), 0);
    let _ = Scheduler::Mh;
}

/// Reconciliation removes the reply entry of an expired `nat` flow (userspace finds it in
/// the datapath's reply table: same set choice, same seed): a reply before is rewritten
/// to come from the VIP, after it goes to the kernel untouched.
#[test]
fn an_expired_nat_flows_replies_are_forgotten() {
    let mut h = Harness::new(CONFIG);
    let c2s = Frame::tcp(CLIENT4, 42000, "10.112.0.110", 80);
    let (verdict, out) = h.run(&c2s.bytes());
    assert_eq!(verdict, XDP_TX);
    let chosen = format!("10.111.0.{}", to(&out));
    let reply = Frame::tcp(&chosen, 8080, CLIENT4, 42000)
        .flags(0x12)
        .bytes();
    let (verdict, out) = h.run(&reply);
    assert_eq!(verdict, XDP_TX, "the reply is rewritten and routed");
    assert_ne!(out, reply);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let r = h.datapath.reconcile(1, 1).unwrap();
    assert_eq!(r.expired, 1);
    assert_eq!(
        h.run(&reply),
        (XDP_PASS, reply.clone()),
        "no reply entry left"
    );
}
