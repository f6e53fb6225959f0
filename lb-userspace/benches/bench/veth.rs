//! Figure 2 of the suite: forwarding rate through veth, in frames per second, of bascule's
//! datapath beside the trivial MAC-swap + XDP_TX program (the floor: `floor_swapmac`),
//! measured the same way in the same run, interleaved round by round (the order reversed
//! every other round).
//!
//! The rig: two namespaces of its own, an LB namespace (the fixture harness's: `eth0` with
//! the lab's MAC, static neighbours for the backends, maps programmed from `CONFIG`
//! through config -> plan -> maps as `bascule run` does, no daemon) and a generator
//! namespace, joined by a veth pair `eth0` <-> `peer0`, both deleted when the rig goes,
//! panics included. The program under test is attached to `eth0` in native (driver) XDP
//! mode for its run and detached after. The generator is BPF_PROG_TEST_RUN in
//! live-frames mode (`floor_gen`, batches of 64, a large repeat count) with
//! `ingress_ifindex` = `peer0`: its XDP_TX sends each frame out of `peer0` into `eth0`.
//! The frame is IPv4/TCP from a client to the `dr` service's VIP, addressed to `eth0`'s
//! MAC (checked to be balanced to a backend before anything is measured). bascule
//! rewrites the MACs towards the backend and sends it back out of `eth0` with XDP_TX (the
//! floor swaps the MACs and does the same), so it arrives on `peer0`, where `floor_count`
//! (native XDP as well: veth delivers XDP_TX'd frames only to a peer running an XDP
//! program) counts and drops it. That count is what reached the backend side; for
//! bascule it is checked against the datapath's own XDP_TX counter.
//!
//! rate = frames counted on `peer0` / wall-clock seconds of the generator's run (the
//! counter is read after a 50 ms pause, so the frames still in the rings land). A frame a
//! full veth ring refused is lost, not counted; the loss per path is printed.
//! `veth.bascule.pps`: one established flow (its connection-table entry exists).
//! `veth.bascule.new.pps`: `floor_gen_fresh` stamps every frame with a source address
//! and port never sent before, so every frame takes the new-flow path (schedule,
//! connection-table insert; the table holds 65,536 entries in sets of seven, and a new
//! flow evicts the least recently seen of its set once that is full).
//!
//! Live frames are a mode some kernels refuse (EPERM) where plain test runs work: the rig
//! sends one batch before anything else, and if the kernel refuses it the group is
//! reported unavailable with the kernel's answer, and the rest of the suite runs.
//!
//! Everything shares this machine's CPUs, which other work may load too: the generator,
//! both veths' NAPI processing and the programs. With the default (non-threaded) NAPI, a
//! batch's whole path runs in the generator's softirq on its CPU (bh re-enabled after each
//! batch), so the rate is that of the whole path, generator and veth included, and almost
//! nothing is lost. The figure that means something is the ratio to the floor measured
//! on the same path in the same run. (Threaded NAPI on both veths was tried: the NAPI
//! threads starve beside the busy generator, most frames are dropped at full rings, and
//! the rates fall several-fold and scatter; so the kernel's default is kept.)

use std::{
    thread,
    time::{Duration, Instant},
};

use aya::{
    maps::PerCpuArray,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use bascule::datapath::AttachMode;

use crate::{
    common::{
        harness::{backend_mac, xdp_md, Harness, XDP_TX},
        packet::{Frame, CLIENT_MAC, LB_MAC},
        Netns,
    },
    figure::{one_line, refused_on_purpose, Figure, GroupResult, Settings},
    FLOOR_OBJECT,
};

pub const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: dr4, vip: 10.112.0.100, port: 80, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
"#;

/// Frames per live-frames run (batches of `BATCH`). A run's wall time comes out in whole
/// scheduler ticks (4 ms here: the generator's system call returns on a tick), so a run
/// must last many ticks: 5,000,000 frames are ~120 ticks (0.8% per tick; 2,000,000 left
/// the figures 1.7% apart from one tick to the next).
const FRAMES_FULL: u32 = 5_000_000;
const FRAMES_QUICK: u32 = 100_000;
const BATCH: u32 = 64;
/// `floor_gen_paced`'s gap between frames: 1 Mpps.
pub const GEN_GAP_NS: u64 = 1_000;

/// The group's figures, or why this machine cannot give them: the kernel may refuse
/// BPF_PROG_TEST_RUN's live-frames mode (EPERM was seen where plain test runs worked).
pub fn figures(s: &Settings, figures: &mut Vec<Figure>) -> GroupResult {
    on_own_thread(|| measure(s), figures)
}

/// Runs a rig's `measure` on a thread of its own (the rig moves its thread between the
/// two namespaces) and adds its figures, or gives why it could not run.
pub fn on_own_thread(
    measure: impl FnOnce() -> Result<Vec<Figure>, String> + Send,
    figures: &mut Vec<Figure>,
) -> GroupResult {
    match thread::scope(|scope| scope.spawn(measure).join()) {
        Ok(f) => figures.extend(f?),
        Err(panic) => std::panic::resume_unwind(panic),
    }
    Ok(())
}

/// The path under test on `eth0`.
#[derive(Clone, Copy, PartialEq)]
enum Under {
    Floor,
    Bascule,
    BasculeNew,
}

/// What one generator run gave.
struct Run {
    /// Frames counted on `peer0`.
    counted: u64,
    /// Wall-clock seconds of the generator's run.
    seconds: f64,
    /// Frames bascule transmitted (XDP_TX) and flows it scheduled, during the run.
    transmitted: u64,
    new_flows: u64,
}

/// The two namespaces, the datapath (maps programmed from a config) and the floor
/// programs; the sync group (new flows at a paced rate) and the flood figures
/// (`flood.rs`) use it too.
pub(crate) struct Rig {
    pub(crate) h: Harness,
    pub(crate) gen: Netns,
    pub(crate) progs: Ebpf,
    pub(crate) peer_ifindex: u32,
}

impl Rig {
    pub(crate) fn new() -> Rig {
        Rig::with_config(CONFIG)
    }

    /// The rig with the datapath's maps programmed from `config` (its services on
    /// `eth0`'s lab addresses).
    pub(crate) fn with_config(config: &str) -> Rig {
        let h = Harness::new(config); // creates the LB namespace, and enters it
        let gen = Netns::new("vgen");
        h.ns.ip(&["link", "set", "peer0", "netns", &gen.name]);
        let client = mac_text(CLIENT_MAC);
        gen.ip(&["link", "set", "peer0", "address", &client, "up"]);
        let peer_ifindex = gen.ifindex("peer0");
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&LB_MAC);
        macs[6..].copy_from_slice(&CLIENT_MAC);
        let mut progs = EbpfLoader::new()
            .override_global("GEN_MACS", &macs, true)
            .override_global("GEN_GAP_NS", &GEN_GAP_NS, true)
            .load(FLOOR_OBJECT)
            .expect("load the floor object");
        for name in [
            "floor_gen",
            "floor_gen_fresh",
            "floor_gen_paced",
            "floor_count",
            "floor_swapmac",
        ] {
            xdp(&mut progs, name).load().expect("load a floor program");
        }
        gen.enter();
        xdp(&mut progs, "floor_count")
            .attach("peer0", XdpMode::Driver)
            .expect("attach floor_count to peer0 in native mode");
        h.ns.enter();
        Rig {
            h,
            gen,
            progs,
            peer_ifindex,
        }
    }

    pub(crate) fn counted(&mut self) -> u64 {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.progs.map("GEN_COUNTS").unwrap()).unwrap();
        m.get(&0, 0).expect("read GEN_COUNTS").iter().sum()
    }

    /// bascule's counters: frames it transmitted, new flows of the `dr` service.
    fn bascule_counts(&mut self) -> (u64, u64) {
        let service = self.h.plan.services[0].info.id;
        let d = &mut self.h.datapath;
        let tx = d.actions().expect("read ACTIONS")[XDP_TX as usize];
        let new = d.service_counters(service).expect("read SERVICE_STATS");
        (tx, new.new_flows)
    }

    /// Whether the kernel sends live frames from `peer0`: one batch of `frame`, before
    /// anything is measured (nothing is attached to `eth0` yet: the LB's stack drops
    /// them). The kernel's refusal, in one line, is the group's reason.
    pub(crate) fn live_frames(&mut self, frame: &[u8]) -> GroupResult {
        refused_on_purpose("live_frames")?;
        self.gen.enter();
        let ctx = xdp_md(frame.len() as u32, self.peer_ifindex);
        let sent = xdp(&mut self.progs, "floor_gen").test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: BATCH,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        });
        self.h.ns.enter();
        sent.map(drop).map_err(|e| {
            format!(
                "BPF_PROG_TEST_RUN in live-frames mode refused by the kernel: {}",
                one_line(&e)
            )
        })
    }

    /// bascule attached to `eth0`, `frames` live frames from `floor_gen_paced` (a new
    /// flow each, one every `GEN_GAP_NS`), then detached. Returns the wall-clock seconds
    /// the generator's run took.
    pub fn send_new_flows_paced(&mut self, frame: &[u8], frames: u32) -> f64 {
        self.h.ns.enter();
        self.h
            .datapath
            .attach("eth0", AttachMode::Native)
            .expect("attach bascule to eth0 in native mode");
        let seconds = self.generate("floor_gen_paced", frame, frames);
        self.h.ns.enter();
        self.h.datapath.detach_all();
        seconds
    }

    /// From the generator's namespace, `frames` live frames of `frame` sent by the
    /// generator program `gen` out of `peer0`; returns the wall-clock seconds its run
    /// took, then waits for the frames still in the veth rings to land.
    fn generate(&mut self, gen: &str, frame: &[u8], frames: u32) -> f64 {
        self.gen.enter();
        let seconds = live_run(&mut self.progs, gen, frame, self.peer_ifindex, frames);
        thread::sleep(Duration::from_millis(50));
        seconds
    }

    /// Attaches `under` to `eth0`, sends `frames` frames, detaches it.
    fn run(&mut self, under: Under, frame: &[u8], frames: u32) -> Run {
        self.h.ns.enter();
        let link = match under {
            Under::Floor => Some(
                xdp(&mut self.progs, "floor_swapmac")
                    .attach("eth0", XdpMode::Driver)
                    .expect("attach floor_swapmac to eth0 in native mode"),
            ),
            Under::Bascule | Under::BasculeNew => {
                self.h
                    .datapath
                    .attach("eth0", AttachMode::Native)
                    .expect("attach bascule to eth0 in native mode");
                None
            }
        };
        let bascule_before = self.bascule_counts();
        let before = self.counted();
        let gen = if under == Under::BasculeNew {
            "floor_gen_fresh"
        } else {
            "floor_gen"
        };
        let seconds = self.generate(gen, frame, frames);
        let counted = self.counted() - before;
        self.h.ns.enter();
        match link {
            Some(link) => xdp(&mut self.progs, "floor_swapmac")
                .detach(link)
                .expect("detach floor_swapmac"),
            None => self.h.datapath.detach_all(),
        }
        let bascule_after = self.bascule_counts();
        Run {
            counted,
            seconds,
            transmitted: bascule_after.0 - bascule_before.0,
            new_flows: bascule_after.1 - bascule_before.1,
        }
    }
}

/// One run of the generator program `gen` (the caller is in the generator's namespace):
/// `frames` live frames of `frame` out of the interface `ifindex`. Returns the run's
/// wall-clock seconds.
pub(crate) fn live_run(
    progs: &mut Ebpf,
    gen: &str,
    frame: &[u8],
    ifindex: u32,
    frames: u32,
) -> f64 {
    let ctx = xdp_md(frame.len() as u32, ifindex);
    let started = Instant::now();
    xdp(progs, gen)
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: frames,
            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN in live-frames mode from peer0");
    started.elapsed().as_secs_f64()
}

fn measure(s: &Settings) -> Result<Vec<Figure>, String> {
    let mut rig = Rig::new();
    let frames = if s.quick { FRAMES_QUICK } else { FRAMES_FULL };
    let frame = Frame::tcp("10.111.0.10", 999, "10.112.0.100", 80).bytes();
    rig.live_frames(&frame)?;
    // The frame is balanced (XDP_TX towards a backend), not passed: else the figure
    // would measure something else.
    let (verdict, out) = rig.h.run(&frame);
    let backends = [
        backend_mac("10.111.0.11".parse().unwrap()),
        backend_mac("10.111.0.12".parse().unwrap()),
    ];
    assert!(
        verdict == XDP_TX && backends.iter().any(|m| out[..6] == m[..]),
        "the benchmark frame is not forwarded to a backend (verdict {verdict}): fix the veth rig's config or frame"
    );
    // Warm up the path (page pool, caches) once with each program.
    for under in [Under::Floor, Under::Bascule] {
        rig.run(under, &frame, frames / 10);
    }
    let mut paths = [
        (Under::Floor, Figure::new("veth.floor.pps", "pps"), 0u64),
        (Under::Bascule, Figure::new("veth.bascule.pps", "pps"), 0),
        (
            Under::BasculeNew,
            Figure::new("veth.bascule.new.pps", "pps"),
            0,
        ),
    ];
    for (_, f, _) in &mut paths[1..] {
        f.baseline = Some("veth.floor.pps".into());
    }
    for round in 0..s.rounds {
        let mut order = [0, 1, 2];
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (under, figure, lost) = &mut paths[i];
            let run = rig.run(*under, &frame, frames);
            check(*under, &run);
            *lost += u64::from(frames).saturating_sub(run.counted);
            figure.samples.push(run.counted as f64 / run.seconds);
        }
        rig.h.datapath.clear_conntrack().ok();
    }
    let sent = (s.rounds as u64 * u64::from(frames)) as f64;
    let lost: Vec<String> = paths
        .iter()
        .map(|(_, f, lost)| format!("{} {:.1}%", f.name, 100.0 * *lost as f64 / sent))
        .collect();
    println!(
        "veth: frames/s that came back to the generator's veth after one pass through eth0's \
         native XDP (floor: swap MACs + XDP_TX; bascule: dr, IPv4, one established flow / a new \
         flow per frame), {} rounds x {frames} live frames per path, interleaved; lost on the \
         way: {}",
        s.rounds,
        lost.join(", ")
    );
    Ok(paths.into_iter().map(|(_, f, _)| f).collect())
}

/// The frames counted on `peer0` are the ones bascule transmitted (none slipped past it),
/// give or take the few the LB's own stack sends (IPv6 neighbour discovery on a fresh
/// link); the established run scheduled at most its one flow, the new-flow run one per
/// frame.
fn check(under: Under, run: &Run) {
    let (counted, tx, new) = (run.counted, run.transmitted, run.new_flows);
    let slack = 64;
    let ok = counted > 0
        && match under {
            Under::Floor => tx == 0,
            Under::Bascule => counted <= tx + slack && new <= 1,
            Under::BasculeNew => counted <= tx + slack && new + slack >= counted,
        };
    assert!(
        ok,
        "veth rig: {counted} frames counted on peer0, bascule transmitted {tx} and scheduled {new} new flows"
    );
}

pub(crate) fn xdp<'a>(progs: &'a mut Ebpf, name: &str) -> &'a mut Xdp {
    progs
        .program_mut(name)
        .expect("program in the floor object")
        .try_into()
        .expect("an XDP program")
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
