//! `sync.apply.entries_per_second`: a peer applying a stream of new flows, on the
//! receiver's path without its socket: datagrams decoded and authenticated, replay
//! checked, entries resolved to this node's ids and written into the connection table
//! (the controller's work per entry). One thread, a table of 1,000,000 entries (65,536
//! with `--quick`) filled to about a third.

use std::time::Instant;

use bascule::sync::{
    wire::{self, Entry, Header, Kind, ReplayGuard, MAX_ENTRIES},
    Apply, Directory,
};

use crate::common::harness::Harness;
use crate::figure::{Figure, Settings};

const KEY: &[u8] = b"a key of the benchmark, 32 bytes";

pub fn figures(s: &Settings, figures: &mut Vec<Figure>) {
    let entries: u32 = if s.quick { 65_536 } else { 1_000_000 };
    let config = format!(
        "{}sync:\n  peers: [10.0.0.3]\n  key_file: /etc/k\n",
        super::CONFIG
    );
    let mut h = Harness::with_conntrack(&config, entries);
    let directory = Directory::of(&h.plan);
    let flows = entries / 3;
    let backends: [std::net::IpAddr; 2] = [
        "10.111.0.11".parse().unwrap(),
        "10.111.0.12".parse().unwrap(),
    ];
    let mut fig = Figure::new("sync.apply.entries_per_second", "entries/s");
    for round in 0..s.rounds {
        h.datapath
            .clear_conntrack()
            .expect("clear the connection table");
        let stream: Vec<Entry> = (0..flows)
            .map(|n| Entry {
                kind: Kind::New,
                proto: 6,
                active: true,
                client: std::net::Ipv4Addr::from(0x0a80_0000 + n).into(),
                client_port: 1024 + round as u16,
                vip: "10.112.0.100".parse().unwrap(),
                port: 80,
                service_port: 80,
                backend: backends[n as usize % 2],
                backend_port: 80,
            })
            .collect();
        let now_ms = 1_000_000;
        let datagrams: Vec<Vec<u8>> = stream
            .chunks(MAX_ENTRIES)
            .enumerate()
            .map(|(i, chunk)| {
                let header = Header {
                    message: wire::FLOWS,
                    node: 1 + round as u64,
                    seq: i as u64 + 1,
                    timestamp_ms: now_ms,
                };
                wire::encode(KEY, header, chunk)
            })
            .collect();
        let mut guard = ReplayGuard::default();
        let started = Instant::now();
        let mut applied = 0u64;
        for d in &datagrams {
            let (header, entries) = wire::decode(KEY, d).expect("a valid datagram");
            guard.accept(&header, now_ms).expect("fresh");
            let now = bascule::datapath::monotonic_ns();
            for e in &entries {
                if let Ok(Apply::Insert { entry, persist }) = directory.resolve(e, now) {
                    if h.datapath.insert_synced(entry, persist).expect("insert") {
                        applied += 1;
                    }
                }
            }
        }
        let took = started.elapsed().as_secs_f64();
        assert!(
            applied * 10 >= u64::from(flows) * 9,
            "{applied} of {flows} applied"
        );
        fig.samples.push(applied as f64 / took);
    }
    figures.push(fig);
}
