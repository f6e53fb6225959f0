//! Established flows against a random-source SYN flood, in a namespace lab: long-lived
//! `rr` connections, idle between their exchanges, keep their backends while a flood of
//! raw SYNs from the client's interface fills a small connection table
//! (`conntrack.flood_protection`, the default); with the policy off, the same flood
//! moves them. The binary comes from `BASCULE_BIN`.

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use bascule_tests::{
    bascule_bin,
    flood::{parse_mac, syn_flood, SynFlood},
    require_root,
    topology::VIP4,
    traffic::{open_tcp_flows, tcp_name_server, FlowRecord, Prober},
    Topology, TopologySpec,
};

/// The smallest table the daemon makes: 147 sets of seven entries.
const MAX_ENTRIES: u32 = 1024;
const CAPACITY: u64 = 1029;
/// Established flows, spread over the sets (none gets seven of them).
const FLOWS: usize = 16;
const PORT: u16 = 7001;
/// Raw SYNs sent: each set gets about 200 of them, 30 times its ways, in bursts of 1,000
/// (about 7 a set) 100 ms apart, for about three seconds.
const FLOOD_FRAMES: u64 = 30_000;
const BURSTS: u64 = 30;
const BURST_PAUSE: Duration = Duration::from_millis(100);
/// The flows' exchanges: one every 300 ms (idle in between); an exchange that a loaded
/// veth delays is retransmitted within the timeout.
const BEAT: Duration = Duration::from_millis(300);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(2);
const ROUNDS_LIMIT: Duration = Duration::from_secs(60);

struct Outcome {
    records: Vec<FlowRecord>,
    entries: Option<u64>,
    evictions: Option<u64>,
    set_full: Option<u64>,
}

impl Outcome {
    fn lost(&self) -> Vec<&FlowRecord> {
        self.records.iter().filter(|r| r.lost()).collect()
    }
}

fn config(topo: &Topology, flood_protection: bool) -> String {
    let mut y = format!(
        "node:\n  interfaces:\n    - name: eth0\nconntrack:\n  max_entries: {MAX_ENTRIES}\n  \
         flood_protection: {flood_protection}\nservices:\n  - name: t\n    vip: {VIP4}\n    \
         port: {PORT}\n    protocol: tcp\n    scheduler: rr\n    forwarding: dr\n    backends:\n"
    );
    for b in &topo.backends {
        let _ = writeln!(y, "      - address: {}", b.ipv4().expect("IPv4"));
    }
    y
}

/// The value of one series (`name{labels}` exactly as exposed).
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A lab with three `rr` backends: `FLOWS` established flows probed every `BEAT` while
/// the client's interface sends `FLOOD_FRAMES` random-source SYNs to the same service.
fn flood_established_flows(tag: &str, flood_protection: bool) -> Outcome {
    let topo = Topology::new(
        tag,
        TopologySpec {
            lbs: 1,
            backends: 3,
        },
    )
    .expect("build the lab");
    let servers: Vec<_> = topo
        .backends
        .iter()
        .map(|b| {
            let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT);
            tcp_name_server(&b.netns, any, &b.role).expect("name server")
        })
        .collect();
    let lb = &topo.lbs[0];
    let path = topo
        .write_config("flood.yaml", &config(&topo, flood_protection))
        .expect("config");
    let daemon = topo
        .start_bascule(&bascule_bin(), lb, &path)
        .expect("start bascule run");
    topo.wait_ready(lb, &daemon, 50, Duration::from_millis(200))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let vip = SocketAddrV4::new(VIP4, PORT);
    let client = topo.client.netns.clone();
    let flows = open_tcp_flows(&client, vip.into(), FLOWS, TIMEOUT).expect("flows");
    let prober = Prober::start(flows, BEAT, EXCHANGE_TIMEOUT).expect("prober");
    prober.wait_rounds(2, ROUNDS_LIMIT).unwrap();

    let flood = SynFlood {
        src_mac: parse_mac(&topo.client.mac).expect("client MAC"),
        dst_mac: parse_mac(&lb.mac).expect("lb MAC"),
        dst: vip,
    };
    // In bursts while the flows exchange: `rr` hands out backends in turn, so flows
    // scheduled afresh one after another would land on their old backends together
    // (one time in three) if nothing came between them.
    let (mut sent, mut took) = (0, Duration::ZERO);
    for burst in 0..BURSTS {
        let (n, t) = syn_flood(
            &client,
            "eth0",
            flood,
            FLOOD_FRAMES / BURSTS,
            0x5eed + burst,
        )
        .expect("flood");
        sent += n;
        took += t;
        std::thread::sleep(BURST_PAUSE);
    }
    eprintln!(
        "{tag}: {sent} SYNs sent in {BURSTS} bursts, {:.0}/s within a burst",
        sent as f64 / took.as_secs_f64()
    );
    assert!(
        sent > FLOOD_FRAMES / 2,
        "only {sent} of {FLOOD_FRAMES} SYNs sent"
    );
    // Every flow exchanges again, idle since before the flood or during it.
    prober.wait_rounds(4, ROUNDS_LIMIT).unwrap();
    let records = prober.stop();
    let (status, text) = topo.api(lb, "GET", "/metrics", None).expect("metrics");
    assert_eq!(status, 200, "{text}");
    drop(servers);
    Outcome {
        records,
        entries: metric(&text, "bascule_conntrack_entries"),
        evictions: metric(&text, "bascule_conntrack_evictions_total"),
        set_full: metric(
            &text,
            "bascule_conntrack_bypassed_total{reason=\"set_full\"}",
        ),
    }
}

#[test]
fn established_rr_flows_keep_their_backends_through_a_syn_flood() {
    require_root();
    let on = flood_established_flows("flood-on", true);
    eprintln!(
        "policy on: entries {:?}, evictions {:?}, set_full {:?}",
        on.entries, on.evictions, on.set_full
    );
    assert!(
        on.lost().is_empty(),
        "{} of {FLOWS} established flows lost:\n{:#?}",
        on.lost().len(),
        on.lost()
    );
    // The flood filled the table: every entry is in use, the flood's own evicted.
    assert_eq!(on.entries, Some(CAPACITY), "the table is full");
    assert!(
        on.evictions.unwrap_or(0) > 0,
        "the flood's entries took each other's places"
    );

    // The same flood without the policy takes the established flows' places: `rr`
    // schedules their next packets afresh, on other backends, which reset them.
    let off = flood_established_flows("flood-off", false);
    eprintln!(
        "policy off: entries {:?}, evictions {:?}, lost {}",
        off.entries,
        off.evictions,
        off.lost().len()
    );
    assert!(
        !off.lost().is_empty(),
        "no flow lost without the policy: the flood did not reach the table"
    );
    assert_eq!(off.set_full, Some(0));
}
