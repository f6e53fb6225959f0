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
//! Every case starts from empty tables (connection table and `nat` replies), every round
//! loads the datapath afresh, and the whole XDP part runs pinned to one CPU. Those tables
//! hold `conntrack_entries`; "new_1m" (`dr` and `tun`) is "new_full" in a second datapath
//! whose connection table has the default capacity (`conntrack.max_entries`, a million
//! entries: 73 MB of sets, far more than the caches), filled from userspace with
//! single-packet entries as a SYN flood leaves them (`fill_like_a_flood`) and kept full by
//! the measured SYNs themselves. `--quick` gives it 65,536 entries. The code is in
//! `bench/xdp.rs`.
//!
//! `--only GROUP[,GROUP]` (xdp, control, sync, sync_ring, failover, ecmp, ...): just those
//! figures. `--baseline OBJECT`: another build of the XDP object measured beside this
//! one (`bench/xdp.rs`).
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
#[path = "bench/xdp.rs"]
mod xdp;

use std::time::Instant;

use aya::programs::{TestRun, TestRunOptions, Xdp};
use common::harness::xdp_md;
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
            xdp::figures(s, f);
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
    let baseline = flag_value(&args, "--baseline").map(std::path::PathBuf::from);
    let s = if quick {
        Settings {
            rounds: 2,
            runs: 200,
            quick,
            baseline,
        }
    } else {
        Settings {
            rounds: 7,
            runs: 20_000,
            quick,
            baseline,
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
