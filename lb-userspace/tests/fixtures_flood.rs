//! Floods through BPF_PROG_TEST_RUN (see `common::harness`): new flows aimed at one set of
//! the connection table evict no established flow while `conntrack.flood_protection` is
//! on (and do once it is off), every refusal is counted, and ICMP echo to a VIP is
//! answered at its rate only.

mod common;

use common::{harness::*, packet::Frame};
use lb_common::{icmp::ECHO_REQUEST_V4, NatKey};

/// `rr` over three backends: a flow scheduled again most likely changes backend, so a
/// flow that lost its entry shows.
fn config(flood_protection: bool, icmp_echo_rate: u32) -> String {
    format!(
        r#"
node:
  interfaces: [{{ name: eth0 }}]
  icmp_echo_rate: {icmp_echo_rate}
conntrack: {{ flood_protection: {flood_protection} }}
services:
  - name: web
    vip: 10.112.0.100
    port: 80
    scheduler: rr
    backends: [{{ address: 10.111.0.11 }}, {{ address: 10.111.0.12 }}, {{ address: 10.111.0.13 }}]
"#
    )
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const W: usize = lb_common::FLOW_WAYS;

/// `n` TCP flows (SYNs) of the set of the first one, from client ports 10000 up.
fn flows_of_one_set(h: &mut Harness, n: usize) -> Vec<Frame> {
    let flow = |i: u32| {
        let src = format!("10.111.{}.{}", 1 + i / 50_000, 1 + (i / 250) % 200);
        Frame::tcp(&src, 10_000 + (i % 250) as u16, "10.112.0.100", 80)
    };
    let set = h.datapath.flow_set_of(&flow(0).flow_key()).unwrap();
    let found: Vec<Frame> = (0..400_000)
        .map(flow)
        .filter(|f| h.datapath.flow_set_of(&f.flow_key()).unwrap() == set)
        .take(n)
        .collect();
    assert_eq!(found.len(), n, "flows of one set");
    found
}

/// The MAC a frame was forwarded to.
fn sent_to(h: &mut Harness, f: &Frame) -> [u8; 6] {
    let (verdict, out) = h.run(&f.bytes());
    assert_eq!(verdict, XDP_TX, "port {} forwarded", f.sport);
    out[..6].try_into().unwrap()
}

fn bypassed(h: &mut Harness, reason: &str) -> u64 {
    h.datapath.conntrack_bypasses().unwrap()[reason]
}

/// A set full of established flows (SYN, then ACK) and `flood` SYNs of new flows of the
/// same set: the established flows' backends before, and after the flood.
fn flood_one_set(h: &mut Harness, flood: usize) -> (Vec<[u8; 6]>, Vec<[u8; 6]>) {
    let flows = flows_of_one_set(h, W + flood);
    let (established, spoofed) = flows.split_at(W);
    let before: Vec<[u8; 6]> = established
        .iter()
        .map(|f| {
            let first = sent_to(h, f);
            assert_eq!(
                sent_to(h, &f.clone().flags(ACK)),
                first,
                "kept by its entry"
            );
            first
        })
        .collect();
    for f in spoofed {
        sent_to(h, &f.clone().flags(SYN));
    }
    let after = established
        .iter()
        .map(|f| sent_to(h, &f.clone().flags(ACK)))
        .collect();
    (before, after)
}

#[test]
fn a_syn_flood_on_one_set_evicts_no_established_flow() {
    let mut h = Harness::with_conntrack(&config(true, 1000), 1024);
    let web = h.service_id("web");
    let (before, after) = flood_one_set(&mut h, 300);
    assert_eq!(after, before, "every established flow kept its backend");
    assert_eq!(h.datapath.conntrack_evictions().unwrap(), 0);
    assert_eq!(bypassed(&mut h, "set_full"), 300, "each flood SYN counted");
    assert_eq!(bypassed(&mut h, "not_syn"), 0);
    assert_eq!(h.datapath.conntrack_len().unwrap(), W);
    // The flood was forwarded all the same, each SYN a new flow.
    let new_flows = h.datapath.counters("SERVICE_STATS", web).unwrap().new_flows;
    assert_eq!(new_flows, (W + 300) as u64);
}

/// The same flood with the policy off takes the established flows' places: the test
/// above would see it.
#[test]
fn without_flood_protection_the_flood_evicts_established_flows() {
    let mut h = Harness::with_conntrack(&config(false, 1000), 1024);
    let (before, after) = flood_one_set(&mut h, 300);
    assert_ne!(
        after, before,
        "rescheduled flows moved (rr over three backends)"
    );
    assert!(h.datapath.conntrack_evictions().unwrap() >= 300);
    assert_eq!(bypassed(&mut h, "set_full"), 0);
}

/// Single-packet entries (a flood's, or handshakes not finished) are what new flows take:
/// the established ones beside them stay, and nothing is refused.
#[test]
fn new_flows_take_single_packet_entries_and_leave_established_ones() {
    let mut h = Harness::with_conntrack(&config(true, 1000), 1024);
    let flows = flows_of_one_set(&mut h, W + 200);
    let (set, flood) = flows.split_at(W);
    let (established, single) = set.split_at(4);
    let before: Vec<[u8; 6]> = established
        .iter()
        .map(|f| {
            let first = sent_to(&mut h, f);
            sent_to(&mut h, &f.clone().flags(ACK));
            first
        })
        .collect();
    for f in single {
        sent_to(&mut h, f);
    }
    // Older than the flood by a few of the datapath's (coarse) clock ticks.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for f in flood {
        sent_to(&mut h, f);
    }
    let after: Vec<[u8; 6]> = established
        .iter()
        .map(|f| sent_to(&mut h, &f.clone().flags(ACK)))
        .collect();
    assert_eq!(after, before);
    assert_eq!(bypassed(&mut h, "set_full"), 0);
    assert_eq!(h.datapath.conntrack_evictions().unwrap(), 200);
    for f in single {
        assert_eq!(h.datapath.conntrack_lookup(&f.flow_key()).unwrap(), None);
    }
    assert_eq!(h.datapath.conntrack_len().unwrap(), W);
}

/// A TCP packet other than a SYN, of a flow the table does not know: forwarded without
/// taking a single-packet entry's place (it takes a free one).
#[test]
fn an_unknown_flows_ack_takes_only_a_free_entry() {
    let mut h = Harness::with_conntrack(&config(true, 1000), 1024);
    let flows = flows_of_one_set(&mut h, W + 2);
    for f in &flows[..W - 1] {
        sent_to(&mut h, f);
    }
    // The last free place: taken by an ACK.
    sent_to(&mut h, &flows[W - 1].clone().flags(ACK));
    assert_eq!(h.datapath.conntrack_len().unwrap(), W);
    assert_eq!(bypassed(&mut h, "not_syn"), 0);
    // A full set of single-packet entries: an ACK is refused, a SYN takes a place.
    sent_to(&mut h, &flows[W].clone().flags(ACK));
    assert_eq!(bypassed(&mut h, "not_syn"), 1);
    assert_eq!(
        h.datapath.conntrack_lookup(&flows[W].flow_key()).unwrap(),
        None
    );
    sent_to(&mut h, &flows[W + 1]);
    assert!(h
        .datapath
        .conntrack_lookup(&flows[W + 1].flow_key())
        .unwrap()
        .is_some());
    assert_eq!(h.datapath.conntrack_evictions().unwrap(), 1);
}

/// `nat` to one backend: every flow's reply entry differs by the client's port alone.
fn nat_config(flood_protection: bool) -> String {
    format!(
        r#"
node:
  interfaces: [{{ name: eth0 }}]
conntrack: {{ flood_protection: {flood_protection} }}
services:
  - {{ name: nat4, vip: 10.112.0.110, port: 80, forwarding: nat,
      backends: [{{ address: 10.111.0.11, port: 8080 }}] }}
"#
    )
}

/// `n` client ports of 10.111.0.10 whose `nat` replies share one set of the reply table.
fn nat_ports_of_one_set(h: &mut Harness, n: usize) -> Vec<u16> {
    let addr = |a: &str| lb_common::addr_words(a.parse().unwrap()).0;
    let reply = |port: u16| NatKey {
        backend: addr("10.111.0.11"),
        client: addr("10.111.0.10"),
        backend_port: 8080u16.to_be(),
        client_port: port.to_be(),
        proto: 6,
        family: lb_common::FAMILY_V4,
        _pad: [0; 2],
    };
    let set = h.datapath.nat_set_of(&reply(10_000)).unwrap();
    let ports: Vec<u16> = (10_000..60_000)
        .filter(|&p| h.datapath.nat_set_of(&reply(p)).unwrap() == set)
        .take(n)
        .collect();
    assert_eq!(ports.len(), n, "ports of one set");
    ports
}

/// Each established `nat` flow's reply, after a flood of new flows whose reply entries
/// go to the same set: whether it still came back from the VIP.
fn nat_replies_after_a_flood(h: &mut Harness, flood: usize) -> Vec<bool> {
    let ports = nat_ports_of_one_set(h, W + flood);
    let (established, spoofed) = ports.split_at(W);
    let syn = |p: u16| Frame::tcp("10.111.0.10", p, "10.112.0.110", 80);
    let reply = |p: u16| {
        Frame::tcp("10.111.0.11", 8080, "10.111.0.10", p)
            .flags(ACK)
            .bytes()
    };
    let from_the_vip = |h: &mut Harness, p: u16| {
        let (verdict, out) = h.run(&reply(p));
        verdict == XDP_TX && out[26..30] == [10, 112, 0, 110]
    };
    for &p in established {
        sent_to(h, &syn(p));
        sent_to(h, &syn(p).flags(ACK));
        assert!(from_the_vip(h, p), "port {p}: the reply is rewritten");
    }
    for &p in spoofed {
        sent_to(h, &syn(p));
    }
    established.iter().map(|&p| from_the_vip(h, p)).collect()
}

#[test]
fn a_flood_of_nat_flows_evicts_no_established_reply_entry() {
    let mut h = Harness::with_conntrack(&nat_config(true), 1024);
    let replied = nat_replies_after_a_flood(&mut h, 100);
    assert_eq!(
        replied,
        vec![true; W],
        "every established flow's replies rewritten"
    );
    assert_eq!(bypassed(&mut h, "nat_full"), 100);
    // Without the policy, the flood takes their places (within one second, the same
    // place over and over): replies go to the kernel as they came, from the backend.
    let mut h = Harness::with_conntrack(&nat_config(false), 1024);
    let replied = nat_replies_after_a_flood(&mut h, 100);
    assert!(replied.contains(&false), "{replied:?}");
    assert_eq!(bypassed(&mut h, "nat_full"), 0);
}

/// Echo requests to a VIP are answered at `node.icmp_echo_rate` per second, in bursts of
/// a tenth of it: beyond, dropped and counted.
#[test]
fn icmp_echo_to_a_vip_is_answered_at_its_rate_only() {
    // 20 a second: bursts of two, one more every 50 ms.
    let mut h = Harness::new(&config(true, 20));
    let rest = [0x12, 0x34, 0, 1, b'p', b'i', b'n', b'g'];
    let echo = Frame::icmp("10.111.0.10", "10.112.0.100", ECHO_REQUEST_V4, 0, &rest).bytes();
    let start = std::time::Instant::now();
    let verdicts: Vec<u32> = (0..40).map(|_| h.run(&echo).0).collect();
    let elapsed = start.elapsed().as_millis() as u64;
    let answered = verdicts.iter().filter(|&&v| v == XDP_TX).count() as u64;
    let dropped = verdicts.iter().filter(|&&v| v == XDP_DROP).count() as u64;
    assert_eq!(answered + dropped, 40, "{verdicts:?}");
    // Two at once, then one per 50 ms (the datapath's clock moves by ticks).
    assert!(answered >= 2, "{verdicts:?}");
    assert!(
        answered <= 3 + elapsed / 50,
        "{answered} answers in {elapsed} ms"
    );
    assert_eq!(h.datapath.reasons().unwrap()["icmp_rate"], dropped);
    // No limit: all answered.
    let mut h = Harness::new(&config(true, 0));
    assert!((0..40).all(|_| h.run(&echo).0 == XDP_TX));
}
