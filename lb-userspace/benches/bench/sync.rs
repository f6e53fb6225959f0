//! `sync.apply.entries_per_second`: a peer applying a stream of new flows, on the
//! receiver's path without its socket: datagrams decoded and authenticated, replay
//! checked, entries resolved to this node's ids and written into the connection table
//! (the controller's work per entry). One thread, a table of 1,000,000 entries (65,536
//! with `--quick`) filled to about a third.
//!
//! `sync.ring.dropped_share` (group `sync_ring`): the share of the datapath's flow reports
//! lost to a full ring (`SYNC_DROPS` / new flows scheduled) while new flows arrive at
//! 1 Mpps and the daemon's own sender (`bascule::sync::start`, as `bascule run` starts
//! it) drains the ring: it polls every 5 ms, names each report by addresses, batches 20
//! to an HMAC-authenticated datagram and sends it to a peer (10.111.0.11, a backend's
//! address on the veth rig: the datagrams leave `eth0` and are dropped on the far side).
//! The traffic is the veth rig's (see `veth.rs`): bascule (`dr`, `sync:` configured) in
//! native XDP on `eth0`, live frames from `floor_gen_fresh` on `peer0`, each from a
//! source never seen, so each is a new flow and a report. The rate: `floor_gen_paced`
//! waits in the kernel (reading the clock) until each frame's time, one every
//! microsecond; behind schedule (the path took longer), it catches up at full speed for
//! at most 1 ms. (Paced from userspace instead, runs of 1,000 frames each millisecond,
//! the rate fell to 35,000 a second: a live-frames run costs some 28 ms to set up and tear
//! down.) `sync.ring.offered.pps` is the rate achieved (new flows per second over the
//! run, set-up included): the share is measured at that rate, about 1 Mpps when the
//! machine keeps up. The generator's softirq and the datapath share one CPU, the
//! sender another, with everything else running on this machine.

use std::{
    os::unix::fs::PermissionsExt,
    sync::{atomic::Ordering, Arc},
    thread,
    time::{Duration, Instant},
};

use bascule::sync::{
    wire::{self, Entry, Header, Kind, ReplayGuard, MAX_ENTRIES},
    Apply, Directory, Shared, TableSource,
};

use crate::common::{harness::Harness, packet::Frame};
use crate::figure::{Figure, GroupResult, Settings};
use crate::veth::{self, Rig};

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

/// The `sync_ring` group, or why this machine cannot give it (live frames refused).
pub fn ring_figures(s: &Settings, figures: &mut Vec<Figure>) -> GroupResult {
    veth::on_own_thread(|| measure_ring(s), figures)
}

fn measure_ring(s: &Settings) -> Result<Vec<Figure>, String> {
    let mut rig = Rig::new();
    let frame = Frame::tcp("10.111.0.10", 999, "10.112.0.100", 80).bytes();
    rig.live_frames(&frame)?;
    let key = std::env::temp_dir().join(format!("bascule-bench-sync-{}.key", std::process::id()));
    std::fs::write(&key, KEY).expect("write the sync key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    rig.h.apply(&format!(
        "{}sync:\n  peers: [10.111.0.11]\n  key_file: {}\n",
        veth::CONFIG,
        key.display()
    ));
    let shared = Arc::new(Shared::default());
    let ring = rig.h.datapath.take_sync_ring().expect("the sync ring");
    *shared.ring.lock().unwrap() = Some(ring);
    shared.set_directory(Directory::of(&rig.h.plan));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let no_table: TableSource = Box::new(|| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(Vec::new());
        rx
    });
    let config = rig.h.config.sync.clone().expect("sync configured");
    let running = {
        let _in = runtime.enter();
        bascule::sync::start(&config, shared.clone(), |_, _| {}, no_table).expect("start sync")
    };
    let _ = std::fs::remove_file(&key);
    let service = rig.h.plan.services[0].info.id;
    // At 1 Mpps: 0.2 s per round (2 s without --quick).
    let frames: u32 = if s.quick { 200_000 } else { 2_000_000 };
    rig.send_new_flows_paced(&frame, frames / 10); // warm-up
    let mut dropped = Figure::new("sync.ring.dropped_share", "share");
    let mut offered = Figure::new("sync.ring.offered.pps", "pps");
    for _ in 0..s.rounds {
        rig.h
            .datapath
            .clear_conntrack()
            .expect("clear the connection table");
        let drops_before = rig.h.datapath.sync_drops().expect("SYNC_DROPS");
        let new_before = new_flows(&mut rig, service);
        let sent_before = shared.stats.sent.load(Ordering::Relaxed);
        let seconds = rig.send_new_flows_paced(&frame, frames);
        let frames = u64::from(frames);
        thread::sleep(Duration::from_millis(100)); // the sender's last batch
        let drops = rig.h.datapath.sync_drops().expect("SYNC_DROPS") - drops_before;
        let new = new_flows(&mut rig, service) - new_before;
        let sent = shared.stats.sent.load(Ordering::Relaxed) - sent_before;
        assert!(
            new * 10 >= frames * 9,
            "{new} new flows of {frames} frames: the rig's frames are not new flows"
        );
        println!(
            "sync ring: {frames} frames in {seconds:.3} s ({:.0} new flows/s): {new} new flows, \
             {drops} reports dropped, {sent} entries sent",
            frames as f64 / seconds
        );
        dropped.samples.push(drops as f64 / new.max(1) as f64);
        offered.samples.push(new as f64 / seconds);
    }
    running.stop();
    Ok(vec![dropped, offered])
}

fn new_flows(rig: &mut Rig, service: u32) -> u64 {
    rig.h
        .datapath
        .service_counters(service)
        .expect("read SERVICE_STATS")
        .new_flows
}
