//! Connection thresholds (`max_connections` / `min_connections`, IPVS's `-x`/`-y`) through
//! BPF_PROG_TEST_RUN (see `common::harness`): a backend at its upper threshold takes no
//! new flow, whatever the scheduler, until its active count falls below the lower one;
//! its established flows stay. And a service with several addresses and ports
//! (`vips`, `ports`): one table and one set of counters.

mod common;

use std::net::IpAddr;

use bascule::control::{simulate, FlowLookups};
use common::{harness::*, packet::Frame};

const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: rr, vip: 10.112.0.140, port: 80, scheduler: rr,
      backends: [{ address: 10.111.0.11, max_connections: 2, min_connections: 1 },
                 { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: mh, vip: 10.112.0.141, port: 80,
      backends: [{ address: 10.111.0.11, max_connections: 3 },
                 { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
  - { name: lc, vip: 10.112.0.142, port: 80, scheduler: lc,
      backends: [{ address: 10.111.0.11, max_connections: 1 }, { address: 10.111.0.12, max_connections: 1 }] }
"#;

const CLIENT: &str = "10.111.0.10";

/// The last byte of the destination MAC of a forwarded frame: which lab backend took it.
fn to(verdict: u32, out: &[u8]) -> u8 {
    assert_eq!(verdict, XDP_TX, "not forwarded");
    assert_eq!(out[0..5], [2, 0, 0, 0, 0], "not sent to a lab backend");
    out[5]
}

fn open(h: &mut Harness, vip: &str, port: u16) -> u8 {
    let (v, out) = h.run(&Frame::tcp(CLIENT, port, vip, 80).bytes());
    to(v, &out)
}

fn close(h: &mut Harness, vip: &str, port: u16) {
    h.run(&Frame::tcp(CLIENT, port, vip, 80).flags(0x11).bytes());
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: plain libc calls on this thread with a zeroed cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn backend_id(h: &Harness, service: &str, last: u8) -> u32 {
    let addr: IpAddr = format!("10.111.0.{last}").parse().unwrap();
    h.plan
        .backends
        .iter()
        .find(|b| &*b.service == service && b.address == addr)
        .unwrap()
        .id
}

#[test]
fn rr_steps_past_a_backend_at_its_threshold_until_below_the_lower_one() {
    // The rr cursor is per CPU: one CPU walks the list in order.
    pin_to_cpu(0);
    let mut h = Harness::new(CONFIG);
    let vip = "10.112.0.140";
    let first: Vec<u8> = (0..6).map(|i| open(&mut h, vip, 50000 + i)).collect();
    assert_eq!(first, [11, 12, 13, 11, 12, 13]);
    // .11 holds 2 = max_connections: its turns go to the next backend in the list.
    let full: Vec<u8> = (6..12).map(|i| open(&mut h, vip, 50000 + i)).collect();
    assert_eq!(full, [12, 13, 12, 13, 12, 13]);
    let id = backend_id(&h, "rr", 11);
    assert_eq!(h.datapath.overload_state(id).unwrap(), (true, 1));
    // Its established flows stay on it.
    assert_eq!(open(&mut h, vip, 50000), 11);
    // One closes: 1 active, not below min_connections (1): still no new flow.
    close(&mut h, vip, 50000);
    let still: Vec<u8> = (12..15).map(|i| open(&mut h, vip, 50000 + i)).collect();
    assert!(!still.contains(&11), "{still:?}");
    // The other closes: 0 < 1, it takes new flows again, in its turn.
    close(&mut h, vip, 50003);
    let again: Vec<u8> = (15..21).map(|i| open(&mut h, vip, 50000 + i)).collect();
    assert_eq!(again.iter().filter(|&&b| b == 11).count(), 2, "{again:?}");
    assert_eq!(h.datapath.overload_state(id).unwrap(), (false, 1));
}

#[test]
fn mh_hands_a_full_backends_slots_over_and_back() {
    let mut h = Harness::new(CONFIG);
    let vip = "10.112.0.141";
    let predicted = |h: &Harness, port: u16| {
        let f = Frame::tcp(CLIENT, port, vip, 80);
        match h.predicted(&f) {
            IpAddr::V4(a) => a.octets()[3],
            IpAddr::V6(_) => unreachable!(),
        }
    };
    let (mut on_11, mut moved) = (Vec::new(), 0);
    for port in 51000..51120 {
        let want = predicted(&h, port);
        let got = open(&mut h, vip, port);
        if want == 11 {
            if on_11.len() < 3 {
                assert_eq!(got, 11, "below its threshold it keeps its slots");
                on_11.push(port);
            } else {
                assert_ne!(got, 11, "flow {port}: a fourth connection on .11");
                moved += 1;
                // `bascule simulate` knows where the datapath hands the flow over.
                let seen = FlowLookups {
                    overloaded: [backend_id(&h, "mh", 11)].into(),
                    ..FlowLookups::default()
                };
                let f = Frame::tcp(CLIENT, port, vip, 80).flow_key();
                let answer = simulate(&h.plan, &h.config, &f, &seen, &|_| 0);
                assert_eq!(
                    answer.address,
                    Some(format!("10.111.0.{got}").parse().unwrap())
                );
            }
        } else {
            assert_eq!(got, want, "flow {port}: another backend's slot moved");
        }
    }
    assert_eq!(on_11.len(), 3);
    assert!(moved >= 10, "only {moved} flows of .11's slots were tried");
    let id = backend_id(&h, "mh", 11);
    assert_eq!(h.datapath.active_connections(id).unwrap(), 3);
    // The default lower threshold is 3/4 of 3, rounded up: 3. Closing one (2 left) is
    // below it: its slots are its own again.
    close(&mut h, vip, on_11[0]);
    let back = (51120..51400)
        .find(|&p| predicted(&h, p) == 11)
        .expect("a flow for .11's slots");
    assert_eq!(open(&mut h, vip, back), 11);
}

#[test]
fn load_schedulers_leave_a_full_backend_out_and_none_when_all_are_full() {
    let mut h = Harness::new(CONFIG);
    let vip = "10.112.0.142";
    assert_eq!(open(&mut h, vip, 52000), 11);
    assert_eq!(open(&mut h, vip, 52001), 12);
    // Both hold max_connections (1): a new flow finds no backend and goes to the kernel.
    let (v, _) = h.run(&Frame::tcp(CLIENT, 52002, vip, 80).bytes());
    assert_eq!(v, XDP_PASS);
    close(&mut h, vip, 52001);
    assert_eq!(open(&mut h, vip, 52003), 12);
}

const GROUP: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: group, vips: [10.112.0.150, 10.112.0.151], ports: [80, "8000-8002"],
      backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }] }
"#;

#[test]
fn a_service_with_several_addresses_and_ports_is_one_table_and_one_set_of_counters() {
    let mut h = Harness::new(GROUP);
    let id = h.plan.services[0].info.id;
    let mut n = 0;
    for vip in ["10.112.0.150", "10.112.0.151"] {
        for port in [80, 8000, 8001, 8002] {
            for sport in 53000..53010 {
                let f = Frame::tcp(CLIENT, sport, vip, port);
                // The one Maglev table decides, whichever address and port.
                let want = match h.predicted(&f) {
                    IpAddr::V4(a) => a.octets()[3],
                    IpAddr::V6(_) => unreachable!(),
                };
                let (v, out) = h.run(&f.bytes());
                assert_eq!(to(v, &out), want, "{vip}:{port} from {sport}");
                // The flow's next packet, through the connection table.
                let (v, out) = h.run(&f.clone().flags(0x10).bytes());
                assert_eq!(to(v, &out), want, "{vip}:{port} from {sport}, established");
                n += 1;
            }
        }
    }
    let c = h.datapath.service_counters(id).unwrap();
    assert_eq!((c.new_flows, c.packets), (n, 2 * n));
    // A port outside the set is not the service's.
    let (v, out) = h.run(&Frame::tcp(CLIENT, 53000, "10.112.0.150", 8003).bytes());
    assert_eq!(v, XDP_PASS);
    assert_eq!(out, Frame::tcp(CLIENT, 53000, "10.112.0.150", 8003).bytes());
}
