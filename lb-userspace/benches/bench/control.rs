//! Control-plane figures: Maglev disruption and build time (pure functions), and a
//! 1,000-service x 100-backend configuration loaded, reloaded with one service changed,
//! and held by the real daemon (its memory).
//!
//! - `control.load_1000x100.seconds`: in this process, parse + validate + plan (1,000
//!   tables of 65,537 slots) + write every map of a freshly loaded datapath (in a
//!   throwaway namespace). The breakdown is printed. The 1,000 services list one pool of
//!   100 backends (as VIPs and ports served by one fleet do), so one table of indexes is
//!   built and each service maps it to its own ids.
//! - `control.load_1000x100_distinct.seconds`: the same with a pool of its own for each
//!   service (100,000 addresses): 1,000 Maglev builds, on all cores.
//! - `control.xdp_verify.seconds`, `control.xdp_verified.insns`: the kernel's
//!   verification of the XDP program (`BPF_PROG_LOAD`), its time and the instructions
//!   the verifier walked.
//! - `control.daemon_start_1000x100.seconds`: `bascule run` in a namespace, from spawn to
//!   `/readyz` answering 200 (program load and verification, maps, pins included).
//! - `control.reload_one.seconds`: that daemon's `POST /api/v1/reload` round trip after
//!   one service of the file lost (or got back) one backend: the whole file is parsed and
//!   checked, one table is rebuilt and swapped in.
//! - `control.memory.bytes`: the daemon's resident memory (VmRSS) holding that
//!   configuration, after the reloads; `control.maps.bytes`: the kernel memory of its BPF
//!   maps (the `memlock` of every map it holds, from /proc/PID/fdinfo).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bascule::{config::Config, datapath::Datapath, plan};
use lb_common::maglev::{build_table, MaglevBackend};

use super::figure::{Figure, Settings};

pub fn figures(s: &Settings, figures: &mut Vec<Figure>) {
    let rounds = if s.quick { 1 } else { 5 };
    disruption(rounds, figures);
    established_disruption(if s.quick { &[10] } else { &[10, 100, 1000] }, figures);
    let mut f = Figure::new("control.maglev_build.seconds", "s");
    let many = backends(1000);
    for _ in 0..rounds {
        let t = Instant::now();
        std::hint::black_box(build_table(&many, 65537));
        f.samples.push(t.elapsed().as_secs_f64());
    }
    figures.push(f);
    verification(rounds, figures);
    let (services, per) = if s.quick { (20, 100) } else { (1000, 100) };
    load_in_process(services, per, Pools::Shared, rounds, figures);
    load_in_process(services, per, Pools::Distinct, rounds.min(3), figures);
    daemon(services, per, if s.quick { 2 } else { 10 }, figures);
}

/// The kernel's verification of the XDP program: the time `BPF_PROG_LOAD` takes (the
/// object's maps created before the clock starts) and the instructions the verifier
/// walked (its limit is 1,000,000; every path it cannot prune is walked again).
fn verification(rounds: usize, figures: &mut Vec<Figure>) {
    let mut seconds = Figure::new("control.xdp_verify.seconds", "s");
    let mut insns = Figure::new("control.xdp_verified.insns", "insns");
    for _ in 0..rounds {
        let mut ebpf = aya::EbpfLoader::new()
            .load(bascule::datapath::XDP_OBJECT)
            .expect("load the XDP object");
        let program: &mut aya::programs::Xdp = ebpf
            .program_mut(bascule::datapath::XDP_PROGRAM)
            .expect("the XDP program")
            .try_into()
            .expect("an XDP program");
        let t = Instant::now();
        program.load().expect("verify the XDP program");
        seconds.samples.push(t.elapsed().as_secs_f64());
        let info = program.info().expect("the program's info");
        let walked = info
            .verified_instruction_count()
            .expect("the kernel reports the instructions it verified");
        insns.samples.push(f64::from(walked));
    }
    figures.push(seconds);
    figures.push(insns);
}

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            MaglevBackend::new(
                IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]),
                80,
                1,
            )
        })
        .collect()
}

/// Maglev disruption: share of all slots that change owner when one backend leaves,
/// over the ideal share (the leaving backend's own slots, 1/N). This is what moves for
/// flows the load balancer holds no state for (a peer after failover, an evicted
/// connection-table entry); established flows keep their backend through the connection
/// table. Two ways to leave:
/// - `maglev.disruption.n{N}`: the backend fails (its health check, or a `dr` backend's
///   MAC unknown): it keeps its place and its slots are handed over (`lb_common::maglev`);
/// - `maglev.disruption.removed.n{N}`: it is deleted from the configuration: the table is
///   rebuilt without it, which also moves some slots between the backends that stay.
fn disruption(rounds: usize, figures: &mut Vec<Figure>) {
    for n in [10u32, 100, 1000] {
        let mut failed = Figure::new(&format!("maglev.disruption.n{n}"), "ratio");
        let mut removed = Figure::new(&format!("maglev.disruption.removed.n{n}"), "ratio");
        let all = backends(n);
        let before = build_table(&all, 65537);
        let ratio = |moved: usize| (moved as f64 / 65537.0) / (1.0 / f64::from(n));
        for r in 0..rounds.max(3) {
            let gone = (r as u32 * 7919 + 1) % n;
            let mut down = all.clone();
            down[gone as usize].up = false;
            let after = build_table(&down, 65537);
            let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
            failed.samples.push(ratio(moved));
            let rest: Vec<MaglevBackend> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i as u32 != gone)
                .map(|(_, b)| b.clone())
                .collect();
            let after = build_table(&rest, 65537);
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(b, a)| all[**b as usize].key != rest[**a as usize].key)
                .count();
            removed.samples.push(ratio(moved));
        }
        figures.push(failed);
        figures.push(removed);
    }
}

/// `flows.disruption.n{N}`: what the datapath does with established flows when one of N
/// backends leaves. 20,000 TCP flows run through the real program (BPF_PROG_TEST_RUN)
/// over a `dr` service of N backends; one backend is removed from the config (re-planned,
/// maps rewritten as a reload does); the same flows run again. The figure is the flows
/// that changed backend over the flows the leaving backend had: 1.0 means only its own
/// flows moved (the connection table holds every other flow's backend), whatever Maglev's
/// table did.
fn established_disruption(sizes: &[u32], figures: &mut Vec<Figure>) {
    use super::common::{harness::Harness, packet::Frame};
    const FLOWS: u32 = 20_000;
    let config = |n: u32, without: Option<u32>| {
        let mut yaml = String::from(
            "node:\n  interfaces: [{ name: eth0 }]\nservices:\n  - name: web\n    vip: 10.112.0.100\n    port: 80\n    backends:\n",
        );
        for i in (0..n).filter(|i| Some(*i) != without) {
            yaml.push_str(&format!(
                "      - address: 10.120.{}.{}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        yaml
    };
    for &n in sizes {
        let mut f = Figure::new(&format!("flows.disruption.n{n}"), "ratio");
        let text = config(n, None);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut h = Harness::new(&text);
                let frames: Vec<Frame> = (0..FLOWS)
                    .map(|i| {
                        let src =
                            format!("10.{}.{}.{}", 130 + i / 60_000, (i >> 8) & 0xff, i & 0xff);
                        Frame::tcp(&src, 1024 + (i % 60_000) as u16, "10.112.0.100", 80)
                    })
                    .collect();
                let backends = |h: &mut Harness| -> Vec<u32> {
                    frames
                        .iter()
                        .map(|fr| {
                            h.run(&fr.bytes());
                            h.datapath
                                .conntrack_lookup(&fr.flow_key())
                                .expect("connection table")
                                .expect("an entry for every flow")
                                .backend
                        })
                        .collect()
                };
                let before = backends(&mut h);
                let leaving = n / 2;
                let id = h.plan.backends[leaving as usize].id;
                h.apply(&config(n, Some(leaving)));
                let after = backends(&mut h);
                let had = before.iter().filter(|b| **b == id).count();
                let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
                tx.send((had, moved)).unwrap();
            });
        });
        let (had, moved) = rx.recv().expect("disruption run");
        println!("flows: {n} backends, one leaves: {moved} of {FLOWS} flows moved, the leaving backend had {had}");
        f.samples.push(moved as f64 / had.max(1) as f64);
        figures.push(f);
    }
}

/// Whether the services of a generated configuration list one pool of backends (as VIPs
/// and ports served by one fleet do; the daemon then builds one table of indexes for all)
/// or each its own addresses (one build per service).
#[derive(Clone, Copy, PartialEq)]
enum Pools {
    Shared,
    Distinct,
}

/// A config of `services` tun services of `per` backends each, listening for the API on
/// `api` (no health checks: every backend is up), without backend `skip` (service, index).
fn big_config(
    services: usize,
    per: usize,
    pools: Pools,
    api: &str,
    skip: Option<(usize, usize)>,
) -> String {
    let mut yaml = format!(
        "node:\n  interfaces: [{{ name: eth0, xdp_mode: generic }}]\nhttp:\n  listen: \"{api}\"\nservices:\n"
    );
    for s in 0..services {
        yaml.push_str(&format!(
            "  - name: s{s}\n    vip: 10.{}.{}.1\n    port: 80\n    forwarding: tun\n    backends:\n",
            100 + s / 250,
            s % 250
        ));
        for b in 0..per {
            if skip == Some((s, b)) {
                continue;
            }
            let address = match pools {
                Pools::Shared => format!("10.200.{}.{}", b / 250, b % 250 + 1),
                Pools::Distinct => {
                    let k = s * per + b;
                    format!("10.{}.{}.{}", 150 + k / 62_500, k / 250 % 250, k % 250 + 1)
                }
            };
            yaml.push_str(&format!("      - address: {address}\n"));
        }
    }
    yaml
}

fn load_in_process(
    services: usize,
    per: usize,
    pools: Pools,
    rounds: usize,
    figures: &mut Vec<Figure>,
) {
    let yaml = big_config(services, per, pools, "127.0.0.1:9469", None);
    let name = match pools {
        Pools::Shared => format!("load_{services}x{per}"),
        Pools::Distinct => format!("load_{services}x{per}_distinct"),
    };
    let mut f = Figure::new(&format!("control.{name}.seconds"), "s");
    let ns = super::common::Netns::new("ctl");
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "peer0", "up"]);
    ns.ip(&["addr", "add", "10.111.0.2/24", "dev", "eth0"]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            ns.enter();
            for _ in 0..rounds {
                let mut datapath = Datapath::load(65536).expect("load the XDP program");
                let t = Instant::now();
                let config = Config::parse(&yaml, "bench.yaml").expect("generated config");
                let parsed = t.elapsed();
                let tunnel = plan::TunnelSources {
                    v4: Some([10, 111, 0, 2].into()),
                    v6: None,
                };
                let p = plan::plan(&config, &Default::default(), tunnel, None).expect("plan");
                let planned = t.elapsed();
                datapath.apply(&p).expect("write the maps");
                let total = t.elapsed();
                tx.send((parsed, planned - parsed, total - planned, total))
                    .unwrap();
            }
        });
    });
    for (parse, plan, maps, total) in rx.try_iter() {
        println!(
            "{name}: parse+validate {:.3} s, plan {:.3} s, maps {:.3} s",
            parse.as_secs_f64(),
            plan.as_secs_f64(),
            maps.as_secs_f64()
        );
        f.samples.push(total.as_secs_f64());
    }
    figures.push(f);
}

fn daemon(services: usize, per: usize, reloads: usize, figures: &mut Vec<Figure>) {
    use bascule_tests::{http::http_request, lab::Lab};
    let bin = env!("CARGO_BIN_EXE_bascule");
    let mut lab = Lab::new("bench-ctl").expect("lab");
    let lb = lab
        .add_host("lb", &["10.111.0.2".parse().unwrap()])
        .expect("lb host");
    let api = "127.0.0.1:9469";
    let api_addr: SocketAddr = api.parse().unwrap();
    let path = lab.dir().join("big.yaml");
    std::fs::write(&path, big_config(services, per, Pools::Shared, api, None)).unwrap();
    let get_ready = || {
        http_request(
            &lb.netns,
            api_addr,
            "GET",
            "/readyz",
            &[],
            None,
            Duration::from_secs(2),
        )
        .map(|(code, _)| code)
        .unwrap_or(0)
    };
    let t = Instant::now();
    let daemon = lab
        .spawn_net_only(
            &lb.netns,
            "bascule",
            &[bin, "run", "-c", path.to_str().unwrap()],
        )
        .expect("start bascule");
    let deadline = t + Duration::from_secs(120);
    while get_ready() != 200 {
        assert!(
            Instant::now() < deadline && lab.exit_status(&daemon).is_none(),
            "bascule did not become ready:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut start = Figure::new(
        &format!("control.daemon_start_{services}x{per}.seconds"),
        "s",
    );
    start.samples.push(t.elapsed().as_secs_f64());
    figures.push(start);
    let mut reload = Figure::new("control.reload_one.seconds", "s");
    for r in 0..reloads {
        // Odd rounds: service s{mid} without its first backend; even rounds: back whole.
        let skip = (r % 2 == 0).then_some((services / 2, 0));
        std::fs::write(&path, big_config(services, per, Pools::Shared, api, skip)).unwrap();
        let t = Instant::now();
        let (code, body) = http_request(
            &lb.netns,
            api_addr,
            "POST",
            "/api/v1/reload",
            &[],
            None,
            Duration::from_secs(60),
        )
        .expect("reload request");
        let took = t.elapsed();
        assert_eq!(code, 200, "reload refused: {body}");
        reload.samples.push(took.as_secs_f64());
    }
    figures.push(reload);
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid)).unwrap();
    let rss_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS of the daemon");
    let mut memory = Figure::new("control.memory.bytes", "B");
    memory.samples.push(rss_kib * 1024.0);
    figures.push(memory);
    let mut maps = Figure::new("control.maps.bytes", "B");
    maps.samples.push(map_memory(daemon.pid, &lb.netns) as f64);
    figures.push(maps);
    lab.terminate(&daemon).expect("stop bascule");
}

/// Kernel memory of the daemon's BPF maps: `memlock` of every map process `pid` holds
/// open, plus the lookup tables inside `MAGLEV` (the daemon does not keep their fds; their
/// ids are read from the pinned outer map with bpftool).
fn map_memory(pid: u32, netns: &str) -> u64 {
    let all: serde_json::Value = bpftool(&["map", "show"]);
    let memlock = |id: u64| {
        all.as_array()
            .and_then(|maps| maps.iter().find(|m| m["id"].as_u64() == Some(id)))
            .and_then(|m| m["bytes_memlock"].as_u64())
            .unwrap_or(0)
    };
    let mut ids = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            ids.insert(id);
        }
    }
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(format!("/run/netns/{netns}"))
        .map(|m| m.ino())
        .unwrap_or(0);
    let outer: serde_json::Value = bpftool(&[
        "map",
        "dump",
        "pinned",
        &format!("/sys/fs/bpf/bascule/{inode}/maps/MAGLEV"),
    ]);
    for e in outer.as_array().into_iter().flatten() {
        // The value is the inner map's id, as little-endian hex bytes.
        let bytes: Vec<u8> = e["value"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
            .collect();
        if let Ok(b) = <[u8; 4]>::try_from(bytes.as_slice()) {
            ids.insert(u64::from(u32::from_le_bytes(b)));
        }
    }
    ids.into_iter().map(memlock).sum()
}

fn bpftool(args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .expect("run bpftool");
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}
