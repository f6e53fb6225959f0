//! `cargo xtask bench`: the benchmark suite. Prints a table and writes
//! `target/bench/results.json` (`{"machine": {...}, "figures": [...]}`). Every XDP figure
//! is taken beside a floor program in the same run, interleaved round by round, and is
//! reported with its ratio to the floor, so a noisy shared machine still gives
//! comparable numbers.
//!
//! XDP method: BPF_PROG_TEST_RUN, one run per call (`repeat = 1`), the kernel's own
//! measurement of that run (it excludes the syscall), averaged over N calls. One run per
//! call because `tun` and `nat` rewrite the packet and a repeated run would see its own
//! output; the floors are measured the same way. "established": the same packet N times
//! (its connection-table entry exists); "new": N TCP SYNs with distinct 5-tuples (source
//! addresses, then ports), so each run schedules and inserts, into a table with room;
//! "new_full": the same into a full table (filled first), so each insert also evicts.
//! Every case starts from empty tables (connection table and `nat` replies), and the
//! whole XDP part runs pinned to one CPU. Those tables hold `conntrack_entries`; "new_1m"
//! (`dr` and `tun`) is "new_full" in a second datapath whose connection table has the
//! default capacity (`conntrack.max_entries`, a million entries: 73 MB of sets, far more
//! than the caches), filled once from userspace with single-packet entries as a SYN
//! flood leaves them (`fill_like_a_flood`) and kept full by the measured SYNs themselves.
//! `--quick` gives it 65,536 entries.
//!
//! `--only GROUP[,GROUP]` (xdp, control, sync, sync_ring, failover, ecmp, ...): just those
//! figures.
//!
//! A group that needs something this machine may refuse or lack (live frames for `veth`
//! and `flood`,
//! HAProxy, wrk and BPF statistics for `http`) checks for it before measuring; without
//! it, the group is reported unavailable with the reason (printed, and under
//! `"unavailable"` in the results file), and the other groups still run: the suite exits
//! 0 when what could run ran. `BASCULE_BENCH_REFUSE=live_frames,haproxy,wrk` makes it
//! act as if those were refused, and `--expect-unavailable GROUP[,GROUP]` fails the run
//! unless exactly those groups were unavailable and every other produced figures:
//! `cargo xtask test` runs both to show the suite carrying on.
//!
//! `--quick`: few rounds and small N; `cargo xtask test` runs it so the suite cannot rot
//! (it checks that every figure is produced, not how fast).

#[path = "../tests/common/mod.rs"]
mod common;

#[path = "bench/control.rs"]
mod control;
#[path = "bench/ecmp.rs"]
mod ecmp;
#[path = "bench/figure.rs"]
mod figure;
#[path = "bench/flood.rs"]
mod flood;
#[path = "bench/health.rs"]
mod health;

#[path = "bench/http.rs"]
mod http;
#[path = "bench/sync.rs"]
mod sync;
#[path = "bench/veth.rs"]
mod veth;

use std::time::Instant;

use aya::{
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use common::{
    harness::{xdp_md, Harness},
    packet::Frame,
};
use figure::{Figure, GroupResult, Settings, Unavailable};
use serde_json::{json, Value};

/// Trivial XDP programs (drop; swap MACs and transmit; the veth figure's frame generator
/// and counter): the floors measured beside the datapath. Built by `build.rs` with the
/// datapath, embedded here only: the `bascule` binary does not carry them.
static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-floor"));

const CONFIG: &str = r#"
node:
  interfaces: [{ name: eth0 }]
services:
  - { name: dr4, vip: 10.112.0.100, port: 80, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
  - { name: dr6, vip: "fd00:112::100", port: 80, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: tun4, vip: 10.112.0.101, port: 80, forwarding: tun, backends: [{ address: 10.111.0.11 }, { address: 10.111.0.12 }] }
  - { name: tun6, vip: "fd00:112::101", port: 80, forwarding: tun, backends: [{ address: "fd00:111::11" }, { address: "fd00:111::12" }] }
  - { name: nat4, vip: 10.112.0.102, port: 80, forwarding: nat, backends: [{ address: 10.111.0.11, port: 8080 }, { address: 10.111.0.12, port: 8080 }] }
  - { name: nat6, vip: "fd00:112::102", port: 80, forwarding: nat, backends: [{ address: "fd00:111::11", port: 8080 }, { address: "fd00:111::12", port: 8080 }] }
"#;

/// Mean kernel-measured ns per run of `prog` over `frames` (cycled), one run per call.
fn measure(
    prog: &mut Xdp,
    ifindex: u32,
    frames: &mut dyn FnMut(u32) -> Vec<u8>,
    runs: u32,
    verdict: u32,
) -> f64 {
    let mut total = 0u128;
    let mut out = vec![0u8; 2048];
    for i in 0..runs {
        let input = frames(i);
        let ctx = xdp_md(input.len() as u32, ifindex);
        let res = prog
            .test_run(TestRunOptions {
                data_in: Some(&input),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ..TestRunOptions::new()
            })
            .expect("BPF_PROG_TEST_RUN");
        assert_eq!(res.return_value, verdict, "unexpected verdict on run {i}");
        total += res.duration.as_nanos();
    }
    total as f64 / f64::from(runs)
}

/// A group of figures: its name for `--only`, whether `--quick` runs it, and the function
/// that measures it (`Err(reason)`: a requirement this machine does not meet).
struct Group {
    name: &'static str,
    quick: bool,
    run: fn(&Settings, &mut Vec<Figure>) -> GroupResult,
}

const GROUPS: &[Group] = &[
    Group {
        name: "xdp",
        quick: true,
        run: |s, f| {
            xdp_figures(s, f);
            Ok(())
        },
    },
    Group {
        name: "veth",
        quick: true,
        run: veth::figures,
    },
    Group {
        name: "flood",
        quick: true,
        run: flood::figures,
    },
    Group {
        name: "http",
        quick: true,
        run: http::figures,
    },
    Group {
        name: "control",
        quick: true,
        run: |s, f| {
            control::figures(s, f);
            Ok(())
        },
    },
    Group {
        name: "health",
        quick: true,
        run: |s, f| {
            health::figures(s, f);
            Ok(())
        },
    },
    Group {
        name: "sync",
        quick: true,
        run: |s, f| {
            sync::figures(s, f);
            Ok(())
        },
    },
    Group {
        name: "sync_ring",
        quick: true,
        run: sync::ring_figures,
    },
    Group {
        name: "failover",
        quick: false,
        run: |_, f| {
            failover_figures(f);
            Ok(())
        },
    },
    Group {
        name: "ecmp",
        quick: false,
        run: |_, f| ecmp::figures(f),
    },
];

/// The value after `flag` on the command line.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let s = if quick {
        Settings {
            rounds: 2,
            runs: 200,
            quick,
        }
    } else {
        Settings {
            rounds: 7,
            runs: 20_000,
            quick,
        }
    };
    // `--only xdp,control`: just those groups (results in results-xdp,control.json).
    let only = flag_value(&args, "--only");
    // `--expect-unavailable veth`: the run fails unless exactly these groups were
    // unavailable and every other group it ran produced figures (the suite's own test,
    // with BASCULE_BENCH_REFUSE).
    let expect_unavailable = flag_value(&args, "--expect-unavailable");
    let names: Vec<&str> = GROUPS.iter().map(|g| g.name).collect();
    if let Some(unknown) = only
        .iter()
        .chain(&expect_unavailable)
        .flat_map(|o| o.split(','))
        .find(|g| !names.contains(g))
    {
        eprintln!("no group `{unknown}`; the groups are {}", names.join(", "));
        std::process::exit(2);
    }
    let wanted = |group: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|g| g == group))
    };
    let started = Instant::now();
    let mut figures: Vec<Figure> = Vec::new();
    let mut unavailable: Vec<Unavailable> = Vec::new();
    let mut ran: Vec<(&str, usize)> = Vec::new();
    for group in GROUPS
        .iter()
        .filter(|g| wanted(g.name) && (g.quick || !quick))
    {
        let before = figures.len();
        match (group.run)(&s, &mut figures) {
            Ok(()) => ran.push((group.name, figures.len() - before)),
            Err(reason) => {
                println!("{}: unavailable on this machine: {reason}", group.name);
                figures.truncate(before);
                unavailable.push(Unavailable {
                    group: group.name,
                    reason,
                });
            }
        }
    }
    let path = report(
        &figures,
        &unavailable,
        started.elapsed().as_secs_f64(),
        quick,
        only.as_deref(),
    );
    // Every figure produced, every value a number: the smoke check `cargo xtask test` runs.
    let bad: Vec<&str> = figures
        .iter()
        .filter(|f| f.samples.is_empty() || f.samples.iter().any(|v| !v.is_finite() || *v < 0.0))
        .map(|f| f.name.as_str())
        .collect();
    if !bad.is_empty() {
        eprintln!("figures without a usable value: {bad:?}");
        std::process::exit(1);
    }
    if let Some(expected) = expect_unavailable {
        if let Err(e) = check_unavailable(&expected, &ran, &path) {
            eprintln!("--expect-unavailable {expected}: {e}");
            std::process::exit(1);
        }
        println!("--expect-unavailable {expected}: as expected, the other groups ran");
    }
}

/// The suite's own check that it carries on without a group: the results file names
/// exactly the `expected` groups as unavailable, each with a reason, and every group that
/// ran produced figures that are in the file.
fn check_unavailable(
    expected: &str,
    ran: &[(&str, usize)],
    path: &std::path::Path,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let recorded: Vec<(String, String)> = doc["unavailable"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let field = |k: &str| u[k].as_str().unwrap_or_default().to_string();
            (field("group"), field("reason"))
        })
        .collect();
    let mut groups: Vec<&str> = recorded.iter().map(|(g, _)| g.as_str()).collect();
    let mut want: Vec<&str> = expected.split(',').collect();
    groups.sort_unstable();
    want.sort_unstable();
    if groups != want {
        return Err(format!(
            "{} records {groups:?} as unavailable",
            path.display()
        ));
    }
    if let Some((group, _)) = recorded.iter().find(|(_, reason)| reason.is_empty()) {
        return Err(format!("{group} is recorded without a reason"));
    }
    let written = doc["figures"].as_array().map_or(0, Vec::len);
    let produced: usize = ran.iter().map(|(_, n)| n).sum();
    match ran.iter().find(|(_, n)| *n == 0) {
        Some((group, _)) => Err(format!("{group} ran but produced no figure")),
        None if ran.is_empty() => Err("no other group ran".into()),
        None if written != produced => {
            Err(format!("{written} figures written, {produced} produced"))
        }
        None => Ok(()),
    }
}

/// The benchmark datapath's connection-table capacity (the `nat` reply table's too): its
/// entries (4 MB of sets, as much again for `nat` replies) do not fit in a core's caches, and
/// it fills in about a second for the full-table figures. Small in `--quick` mode.
fn conntrack_entries(quick: bool) -> u32 {
    if quick {
        4096
    } else {
        65_536
    }
}

/// The connection-table capacity of the "new_1m" figures: the default one (a million
/// entries) but in `--quick` mode, which only checks that the figures come out.
fn big_conntrack_entries(quick: bool) -> u32 {
    if quick {
        65_536
    } else {
        lb_common::CONNTRACK_DEFAULT_ENTRIES
    }
}

/// Fills `datapath`'s connection table as a SYN flood would leave it: single-packet
/// entries (active, neither established nor a peer's) seen now, of distinct 5-tuples to
/// a `service` VIP. Written from userspace with the datapath's write protocol, three
/// times the capacity (flows fill sets unevenly; this leaves well under 1% of the sets
/// with room): about a second for a million entries, where running the SYNs through the
/// program would take a minute.
fn fill_like_a_flood(datapath: &mut bascule::datapath::Datapath, service: u32, backend: u32) {
    let capacity = datapath.conntrack_capacity().expect("the table's capacity");
    let now = bascule::datapath::monotonic_ns();
    for n in 0..capacity * 3 {
        let n = n as u32;
        let key = lb_common::FlowKey {
            // 10.200.0.0/16 and on (network order), ports 1024 and on.
            src: [(0x0ac8_0000u32 + (n >> 8)).to_be(), 0, 0, 0],
            dst: [0x0a70_0064u32.to_be(), 0, 0, 0],
            sport: (1024 + (n & 0xff) as u16).to_be(),
            dport: 80u16.to_be(),
            proto: lb_common::IPPROTO_TCP,
            family: lb_common::FAMILY_V4,
            _pad: [0; 2],
        };
        let state = lb_common::FlowState {
            backend,
            service,
            last_seen: now,
            flags: lb_common::FLOW_ACTIVE,
            seq: 0,
        };
        datapath
            .insert_synced(lb_common::FlowEntry { key, state }, None)
            .expect("write an entry");
    }
}

/// Keeps the calling thread on the CPU it runs on until dropped (the previous CPU set is
/// restored then). Every XDP figure is then taken on the same CPU, with the same per-CPU
/// state (counters) and caches.
struct Pinned(Option<libc::cpu_set_t>);

impl Pinned {
    fn here() -> Pinned {
        // SAFETY: plain libc calls on this thread, with a zeroed cpu_set_t of the right size.
        unsafe {
            let mut before: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            let cpu = libc::sched_getcpu();
            if cpu < 0 || libc::sched_getaffinity(0, size, &mut before) != 0 {
                return Pinned(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return Pinned(None);
            }
            Pinned(Some(before))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            // SAFETY: restores the set read in `here`.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), before) };
        }
    }
}

/// A TCP SYN from the `n`-th client of a range (`range` 0, 1, ... keep ranges apart) to
/// `vip`:80: a distinct 5-tuple for every `n` below 2^24.
fn client_syn(fam: &str, range: u32, n: u32, vip: &str) -> Vec<u8> {
    let src = if fam == "v4" {
        format!(
            "10.{}.{}.{}",
            120 + range * 32 + (n >> 16) % 32,
            (n >> 8) & 0xff,
            n & 0xff
        )
    } else {
        format!("fd00:{:x}::{:x}:{:x}", 0x120 + range, n >> 16, n & 0xffff)
    };
    Frame::tcp(&src, 1024 + (n >> 21) as u16, vip, 80).bytes()
}

fn xdp_figures(s: &Settings, figures: &mut Vec<Figure>) {
    let entries = conntrack_entries(s.quick);
    let mut h = Harness::with_conntrack(CONFIG, entries);
    let ifindex = h.ifindex;
    let mut floor = Ebpf::load(FLOOR_OBJECT).expect("load the floor programs");
    for name in ["floor_drop", "floor_swapmac"] {
        let p: &mut Xdp = floor.program_mut(name).unwrap().try_into().unwrap();
        p.load().expect("load floor program");
    }
    let cases: Vec<(&str, &str, &str, u32)> = vec![
        ("dr", "v4", "10.112.0.100", 3),
        ("dr", "v6", "fd00:112::100", 3),
        ("tun", "v4", "10.112.0.101", 3),
        ("tun", "v6", "fd00:112::101", 3),
        ("nat", "v4", "10.112.0.102", 3),
        ("nat", "v6", "fd00:112::102", 3),
    ];
    let mut fig_drop = Figure::new("xdp.floor.drop", "ns");
    let mut fig_swap = Figure::new("xdp.floor.swapmac", "ns");
    let mut per_case: Vec<[Figure; 3]> = cases
        .iter()
        .map(|(m, f, _, _)| {
            ["established", "new", "new_full"].map(|path| {
                let mut fig = Figure::new(&format!("xdp.{m}.{f}.{path}"), "ns");
                fig.baseline = Some("xdp.floor.swapmac".into());
                fig
            })
        })
        .collect();
    // Enough SYNs to fill the tables, from a client range of their own: three times their
    // capacity, because flows fill the sets of seven unevenly (this leaves under 1% of the
    // sets with room).
    let fill = entries * 3;
    let fillers: Vec<Vec<Vec<u8>>> = cases
        .iter()
        .map(|(_, fam, vip, _)| (0..fill).map(|n| client_syn(fam, 2, n, vip)).collect())
        .collect();
    let base = Frame::tcp("10.111.0.10", 1000, "10.112.0.100", 80).bytes();
    // `xdp.dr.v4.new_synced`: the same new flows with `sync:` configured (each reported to
    // the ring, which a reader drains as the daemon's sender does).
    let synced_config = format!("{CONFIG}sync:\n  peers: [10.0.0.3]\n  key_file: /etc/k\n");
    let mut ring = h.datapath.take_sync_ring().expect("the sync ring");
    let mut fig_synced = Figure::new("xdp.dr.v4.new_synced", "ns");
    fig_synced.baseline = Some("xdp.dr.v4.new".into());
    // `new_1m`: a second datapath with the default table, filled once.
    let mut big = bascule::datapath::Datapath::load(big_conntrack_entries(s.quick))
        .expect("load the XDP program with the default connection table");
    big.apply(&h.plan).expect("program the maps");
    let dr4 = h
        .plan
        .services
        .iter()
        .find(|p| p.name == "dr4")
        .expect("service dr4");
    let filled = Instant::now();
    fill_like_a_flood(&mut big, dr4.info.id, dr4.backends[0]);
    println!(
        "new_1m: {} of {} entries in use, filled in {:.1} s",
        big.conntrack_len().expect("the table's entries"),
        big.conntrack_capacity().expect("the table's capacity"),
        filled.elapsed().as_secs_f64()
    );
    let mut per_big: Vec<Figure> = cases[..4]
        .iter()
        .map(|(m, f, _, _)| {
            let mut fig = Figure::new(&format!("xdp.{m}.{f}.new_1m"), "ns");
            fig.baseline = Some("xdp.floor.swapmac".into());
            fig
        })
        .collect();
    let _pinned = Pinned::here();
    for round in 0..s.rounds {
        {
            let p: &mut Xdp = floor.program_mut("floor_drop").unwrap().try_into().unwrap();
            fig_drop
                .samples
                .push(measure(p, ifindex, &mut |_| base.clone(), s.runs, 1));
        }
        {
            let p: &mut Xdp = floor
                .program_mut("floor_swapmac")
                .unwrap()
                .try_into()
                .unwrap();
            fig_swap
                .samples
                .push(measure(p, ifindex, &mut |_| base.clone(), s.runs, 3));
        }
        for (((_, fam, vip, verdict), [est, new, full]), filler) in
            cases.iter().zip(per_case.iter_mut()).zip(&fillers)
        {
            // Every case starts from empty tables, whatever the cases before it left.
            h.datapath
                .clear_conntrack()
                .expect("clear the connection table");
            h.datapath.clear_nat_replies().expect("clear the nat table");
            let client = if *fam == "v4" {
                "10.111.0.10"
            } else {
                "fd00:111::10"
            };
            let established = Frame::tcp(client, 999, vip, 80).bytes();
            h.run(&established); // creates the connection-table entry
            let prog = h.datapath.program();
            est.samples.push(measure(
                prog,
                ifindex,
                &mut |_| established.clone(),
                s.runs,
                *verdict,
            ));
            // New flows while the table has room: distinct 5-tuples, unique per round.
            let first = round as u32 * s.runs;
            new.samples.push(measure(
                prog,
                ifindex,
                &mut |i| client_syn(fam, 0, first + i, vip),
                s.runs,
                *verdict,
            ));
            // New flows into a full table (a busy node's steady state): each insert
            // evicts the least recently seen entry of its set.
            let n = filler.len() as u32;
            measure(
                prog,
                ifindex,
                &mut |i| filler[i as usize].clone(),
                n,
                *verdict,
            );
            full.samples.push(measure(
                prog,
                ifindex,
                &mut |i| client_syn(fam, 1, first + i, vip),
                s.runs,
                *verdict,
            ));
        }
        for ((_, fam, vip, verdict), fig) in cases.iter().zip(per_big.iter_mut()) {
            let first = round as u32 * s.runs;
            fig.samples.push(measure(
                big.program(),
                ifindex,
                &mut |i| client_syn(fam, 4, first + i, vip),
                s.runs,
                *verdict,
            ));
        }
        h.apply(&synced_config);
        h.datapath
            .clear_conntrack()
            .expect("clear the connection table");
        let first = round as u32 * s.runs;
        let prog = h.datapath.program();
        fig_synced.samples.push(measure(
            prog,
            ifindex,
            &mut |i| {
                if i % 1024 == 0 {
                    while ring.next().is_some() {}
                }
                client_syn("v4", 3, first + i, "10.112.0.100")
            },
            s.runs,
            3,
        ));
        while ring.next().is_some() {}
        h.apply(CONFIG);
    }
    let dropped = h.datapath.sync_drops().expect("the sync drop counter");
    assert_eq!(dropped, 0, "reports dropped while the ring was drained");
    figures.push(fig_drop);
    figures.push(fig_swap);
    figures.extend(per_case.into_iter().flatten());
    figures.extend(per_big);
    figures.push(fig_synced);
}

/// `failover.{100ms,1s}.seconds`: a two-node lab (VRRP, dr, health checks) per advert
/// interval; the master's bascule is SIGKILLed and its cable pulled while long-lived
/// connections run; the figure is the time until the backup holds both VIPs (the lab's
/// `fail_over`, as the demo measures it), and `failover.*.survived` the share of the
/// long-lived connections still answering after it. One round per interval: each lab
/// takes seconds.
fn failover_figures(figures: &mut Vec<Figure>) {
    use bascule_tests::product::{
        with_priority, Mode, ProductLab, BACKUP_PRIORITY, MASTER_PRIORITY,
    };
    const ROUNDS: usize = 3;
    let bin = std::path::PathBuf::from(env!("CARGO_BIN_EXE_bascule"));
    let intervals = [("100ms", "100ms"), ("1s", "1000ms")];
    let mut took: Vec<Figure> = intervals
        .iter()
        .map(|(n, _)| Figure::new(&format!("failover.{n}.seconds"), "s"))
        .collect();
    let mut kept: Vec<Figure> = intervals
        .iter()
        .map(|(n, _)| Figure::new(&format!("failover.{n}.survived"), "share"))
        .collect();
    for _ in 0..ROUNDS {
        for (i, (name, advert)) in intervals.iter().enumerate() {
            let mut lab =
                ProductLab::new("bench-fo", Mode::Dr, &bin).expect("build the failover lab");
            let master = lab.config(0, MASTER_PRIORITY).replace(
                "advert_interval: 200ms",
                &format!("advert_interval: {advert}"),
            );
            let backup =
                with_priority(&master, MASTER_PRIORITY, BACKUP_PRIORITY).expect("backup config");
            lab.start_node(0, &master).expect("start lb1");
            lab.wait_for_master(0, &[]).expect("lb1 master");
            lab.start_node(1, &backup).expect("start lb2");
            lab.wait_for_health().expect("health settled");
            let probes = lab.open_connections(10).expect("long-lived connections");
            let fo = lab.fail_over(probes).expect("fail over");
            println!(
                "failover {name}: backup held the VIPs after {:.3} s; {}/{} long-lived connections survived",
                fo.takeover.as_secs_f64(),
                fo.survived(),
                fo.connections.len()
            );
            took[i].samples.push(fo.takeover.as_secs_f64());
            // The share of established TCP connections that lived through it.
            kept[i]
                .samples
                .push(fo.survived() as f64 / fo.connections.len().max(1) as f64);
        }
    }
    figures.extend(took);
    figures.extend(kept);
}

/// Prints the table and writes the results file, whose path it returns.
fn report(
    figures: &[Figure],
    unavailable: &[Unavailable],
    seconds: f64,
    quick: bool,
    only: Option<&str>,
) -> std::path::PathBuf {
    let median_of = |name: &str| figures.iter().find(|f| f.name == name).map(Figure::median);
    println!(
        "{:<34} {:>12} {:>10} {:>10} {:>8} {:>9}",
        "figure", "median", "min", "max", "ratio", "Mpps/core"
    );
    let mut out = Vec::new();
    for f in figures {
        let (value, min, max) = (
            f.median(),
            f.samples.iter().cloned().fold(f64::INFINITY, f64::min),
            f.samples.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
        );
        let ratio = f.baseline.as_deref().and_then(median_of).map(|b| value / b);
        let mpps = (f.unit == "ns").then(|| 1000.0 / value);
        println!(
            "{:<34} {:>9.3} {:<2} {:>10.3} {:>10.3} {:>8} {:>9}",
            f.name,
            value,
            f.unit,
            min,
            max,
            ratio.map_or(String::new(), |r| format!("{r:.2}x")),
            mpps.map_or(String::new(), |m| format!("{m:.1}"))
        );
        let mut o = json!({"name": f.name, "value": value, "unit": f.unit, "min": min, "max": max, "rounds": f.samples.len()});
        if let (Some(b), Some(r)) = (&f.baseline, ratio) {
            o["baseline"] = json!(b);
            o["ratio"] = json!(r);
        }
        out.push(o);
    }
    let machine = json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "quick": quick,
        "seconds": seconds,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    for u in unavailable {
        println!("{:<34} unavailable: {}", u.group, u.reason);
    }
    let unavailable: Vec<Value> = unavailable
        .iter()
        .map(|u| json!({"group": u.group, "reason": u.reason}))
        .collect();
    let doc: Value = json!({"machine": machine, "figures": out, "unavailable": unavailable});
    let path = dir.join(match (quick, only) {
        (_, Some(groups)) => format!("results-{groups}.json"),
        (true, None) => "results-quick.json".into(),
        (false, None) => "results.json".into(),
    });
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).expect("write results");
    println!(
        "{} figures in {seconds:.1} s, written to {}",
        figures.len(),
        path.display()
    );
    path
}
