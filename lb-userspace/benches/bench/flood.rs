//! The flood figures, on the veth rig (`veth.rs`: the datapath natively attached to the LB
//! namespace's `eth0`, a generator namespace behind `peer0`), with an `rr` service of
//! three backends and the default `conntrack.flood_protection`.
//!
//! Each round: `FLOWS` long-lived flows are opened (a SYN and an ACK each, through
//! BPF_PROG_TEST_RUN on the same program and maps) and their backends noted. Then the
//! generator sends a random-source SYN flood (`floor_gen_fresh`: every frame a flow never
//! seen, live frames, at the highest rate this machine's generator reaches through the
//! veth pair) while, on another thread, each flow sends one packet every `INTERVAL`,
//! spread evenly, `PACKETS` times: it stays idle between them while the flood goes on.
//!
//! `flood.established_kept`: the share of the flows whose every packet during the flood
//! went to the backend it had before (1.0: none lost its entry, or its backend).
//! `flood.pps`: the flood's rate, frames that came back to `peer0` after the datapath
//! forwarded them (bypassed SYNs are forwarded too) per second of the generator's runs.
//! `flood.new.ns`: the program's cost for one flood SYN with the table in the flood's
//! steady state (full: the flows' established entries and the flood's single-packet
//! ones, which each new SYN evicts), BPF_PROG_TEST_RUN as the `xdp` group measures, its
//! ratio taken to `xdp.floor.swapmac`.
//!
//! Live frames refused by the kernel: the group is reported unavailable, as `veth` is.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use bascule::datapath::AttachMode;
use lb_common::FLOW_ESTABLISHED;

use crate::{
    common::{
        harness::{run_on, XDP_TX},
        packet::Frame,
    },
    figure::{Figure, GroupResult, Settings},
    veth::{self, live_run, Rig},
};

const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - name: rr4
    vip: 10.112.0.100
    port: 80
    scheduler: rr
    backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }, { address: 10.111.0.13 }]
"#;

/// Long-lived flows, and the time between two packets of one (the issue's: 1,000 flows,
/// one packet every 5 s), and how many packets each sends during the flood.
const FLOWS: usize = 1000;
const INTERVAL: Duration = Duration::from_secs(5);
const FLOWS_QUICK: usize = 100;
const INTERVAL_QUICK: Duration = Duration::from_millis(250);
const PACKETS: u32 = 2;
/// Frames per generator run: about a third of a second at this machine's rates, so that
/// the flood stops soon after the flows' last packets.
const RUN_FRAMES: u32 = 500_000;
const RUN_FRAMES_QUICK: u32 = 50_000;

pub fn figures(s: &Settings, figures: &mut Vec<Figure>) -> GroupResult {
    veth::on_own_thread(|| measure(s), figures)
}

/// Flow `i`'s frame (`flags`: SYN, ACK), from a client range the generator never uses
/// (it sends from 10.128.0.0/9).
fn flow_frame(i: usize, flags: u8) -> Vec<u8> {
    let src = format!("10.50.{}.{}", i / 250, 1 + i % 250);
    Frame::tcp(&src, 2000 + (i % 7) as u16, "10.112.0.100", 80)
        .flags(flags)
        .bytes()
}

/// A fresh flow's SYN for `flood.new.ns` (another range of its own).
fn fresh_syn(n: u32) -> Vec<u8> {
    let src = format!("10.60.{}.{}", (n >> 8) & 0xff, n & 0xff);
    Frame::tcp(&src, 1024 + (n >> 16) as u16, "10.112.0.100", 80).bytes()
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

struct Round {
    kept: f64,
    pps: f64,
    new_ns: f64,
}

fn measure(s: &Settings) -> Result<Vec<Figure>, String> {
    let mut rig = Rig::with_config(CONFIG);
    let probe = Frame::tcp("10.111.0.10", 999, "10.112.0.100", 80).bytes();
    rig.live_frames(&probe)?;
    let mut kept = Figure::new("flood.established_kept", "share");
    let mut pps = Figure::new("flood.pps", "pps");
    let mut new_ns = Figure::new("flood.new.ns", "ns");
    new_ns.baseline = Some("xdp.floor.swapmac".into());
    for round in 0..s.rounds {
        let r = flood_round(s, &mut rig, round as u32);
        kept.samples.push(r.kept);
        pps.samples.push(r.pps);
        new_ns.samples.push(r.new_ns);
    }
    println!(
        "flood: {} rounds; each, {} established rr flows sent a packet every {:?} ({PACKETS} \
         each) while a random-source SYN flood of live frames ran through eth0's native XDP",
        s.rounds,
        if s.quick { FLOWS_QUICK } else { FLOWS },
        if s.quick { INTERVAL_QUICK } else { INTERVAL },
    );
    Ok(vec![kept, pps, new_ns])
}

fn flood_round(s: &Settings, rig: &mut Rig, round: u32) -> Round {
    let (flows, interval, run_frames) = if s.quick {
        (FLOWS_QUICK, INTERVAL_QUICK, RUN_FRAMES_QUICK)
    } else {
        (FLOWS, INTERVAL, RUN_FRAMES)
    };
    rig.h.ns.enter();
    rig.h.datapath.clear_conntrack().ok();
    // The flows open (SYN, then ACK: established) and keep their backend.
    let backends: Vec<[u8; 6]> = (0..flows)
        .map(|i| {
            let (v1, syn) = rig.h.run(&flow_frame(i, SYN));
            let (v2, ack) = rig.h.run(&flow_frame(i, ACK));
            assert!(
                v1 == XDP_TX && v2 == XDP_TX && syn[..6] == ack[..6],
                "flow {i} is not forwarded to one backend"
            );
            syn[..6].try_into().expect("a MAC")
        })
        .collect();
    let key = Frame::tcp("10.50.0.1", 2000, "10.112.0.100", 80).flow_key();
    let st = rig.h.datapath.conntrack_lookup(&key).unwrap();
    assert!(
        st.is_some_and(|st| st.flags & FLOW_ESTABLISHED != 0),
        "the flows' entries are established before the flood: {st:?}"
    );
    rig.h
        .datapath
        .attach("eth0", AttachMode::Native)
        .expect("attach bascule to eth0 in native mode");
    let ifindex = rig.h.ifindex;
    let Rig {
        h,
        gen,
        progs,
        peer_ifindex,
    } = rig;
    let prog = &*h.datapath.program();
    let ns = &h.ns;
    let done = AtomicBool::new(false);
    let mut counted_before = 0u64;
    let (mut counted, mut seconds) = (0u64, 0f64);
    let kept = thread::scope(|scope| {
        let flows_thread = scope.spawn(|| {
            ns.enter();
            let mut ok = vec![true; flows];
            let start = Instant::now();
            let step = interval / flows as u32;
            for k in 0..PACKETS {
                for (i, backend) in backends.iter().enumerate() {
                    let at = interval * k + step * i as u32;
                    if let Some(wait) = at.checked_sub(start.elapsed()) {
                        thread::sleep(wait);
                    }
                    let (verdict, out) = run_on(prog, ifindex, &flow_frame(i, ACK));
                    ok[i] &= verdict == XDP_TX && out[..6] == backend[..];
                }
            }
            done.store(true, Ordering::SeqCst);
            ok.iter().filter(|&&k| k).count() as f64 / flows as f64
        });
        // The flood, run after run, until the flows sent their last packets.
        let frame = Frame::tcp("10.111.0.10", 999, "10.112.0.100", 80).bytes();
        gen.enter();
        counted_before = gen_counted(progs);
        while !done.load(Ordering::SeqCst) {
            seconds += live_run(progs, "floor_gen_fresh", &frame, *peer_ifindex, run_frames);
        }
        thread::sleep(Duration::from_millis(50)); // frames still in the veth rings land
        counted = gen_counted(progs) - counted_before;
        flows_thread.join().expect("the flows' thread")
    });
    h.ns.enter();
    h.datapath.detach_all();
    // The table as the flood left it: each new SYN evicts one of the flood's entries.
    let first = round * s.runs;
    let new_ns = crate::measure(
        h.datapath.program(),
        h.ifindex,
        &mut |i| fresh_syn(first + i),
        s.runs,
        XDP_TX,
    );
    Round {
        kept,
        pps: counted as f64 / seconds,
        new_ns,
    }
}

/// Frames `floor_count` counted on `peer0`.
fn gen_counted(progs: &mut aya::Ebpf) -> u64 {
    let m: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(progs.map("GEN_COUNTS").expect("GEN_COUNTS")).unwrap();
    m.get(&0, 0).expect("read GEN_COUNTS").iter().sum()
}
