//! `cargo xtask demo`: bascule balancing real connections in a namespace lab.
//!
//! Shows what exists today, and says what does not: builds bascule, builds a lab (client,
//! one LB node, three backends running small HTTP servers; see `bascule_tests::topology`),
//! runs `bascule run -c deploy/examples/demo.yaml` on the LB node, sends new connections
//! to the IPv4 and IPv6 VIPs and charts which backend answered, then tears everything
//! down. Health checks, a second LB node and VRRP failover come later; the demo says so
//! instead of pretending. `--keep` leaves the lab up until Ctrl-C (at most an hour).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bascule_tests::{
    cleanup_stale, interrupt,
    lab::list_netns,
    topology::{vip4, vip6},
    HttpServer, Spawned, Topology, TopologySpec,
};

/// The config bascule runs in the demo, also the readable example shipped in `deploy/`.
const DEMO_CONFIG: &str = include_str!("../../deploy/examples/demo.yaml");
const LB_NODES: usize = 1;
const BACKENDS: usize = 3;
/// New connections per VIP.
const REQUESTS: usize = 60;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A VIP that gives no answer this long is not balanced.
const SILENCE: Duration = Duration::from_secs(1);
/// Readiness polling after `bascule run`: 50 tries of at most 200 ms.
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);
/// `--keep` keeps the lab up until Ctrl-C, but not forever.
const KEEP_AT_MOST: Duration = Duration::from_secs(3600);
const BAR_WIDTH: usize = 40;

const USAGE: &str = "\
usage: cargo xtask demo [--keep]

  --keep   leave the lab up after the requests (until Ctrl-C, at most an hour)
           and print how to reach it";

pub fn run(args: &[String]) -> Result<()> {
    let keep = match args {
        [] => false,
        [flag] if flag == "--keep" => true,
        [flag] if flag == "-h" || flag == "--help" => {
            println!("{USAGE}");
            return Ok(());
        }
        _ => bail!("unknown arguments `{}`\n{USAGE}", args.join(" ")),
    };
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    interrupt::install();

    step("building bascule (cargo build -p lb-userspace)");
    let bin = crate::build(crate::Profile::Debug)?;

    step("removing labs left behind by interrupted runs");
    let stale = cleanup_stale()?;
    println!("    {} stale namespace(s) removed", stale.len());

    step(&format!(
        "creating the lab: client, {LB_NODES} LB node, {BACKENDS} backends on one bridge, all in network namespaces"
    ));
    let topo = Topology::new(
        "demo",
        TopologySpec {
            lbs: LB_NODES,
            backends: BACKENDS,
        },
    )?;
    for host in topo.lab.hosts() {
        let v4 = host.ipv4().map(|a| a.to_string()).unwrap_or_default();
        let v6 = host.ipv6().map(|a| a.to_string()).unwrap_or_default();
        println!(
            "    {:<7} {v4:<12} {v6:<13} netns {}",
            host.role, host.netns
        );
    }

    let outcome = show(&topo, &bin, keep);

    step("tearing down: stopping processes, deleting the namespaces");
    let names = topo.lab.namespaces();
    drop(topo);
    let left: Vec<String> = list_netns()?
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    if left.is_empty() {
        println!(
            "    {} namespaces deleted, nothing left behind",
            names.len()
        );
    } else {
        println!("    could not delete {left:?}: remove them with `ip netns del NAME`");
    }
    outcome
}

/// Everything that happens while the lab is up; the caller tears down whatever this returns.
fn show(topo: &Topology, bin: &Path, keep: bool) -> Result<()> {
    step("starting an HTTP server on each backend, answering with the backend's name");
    let servers = topo.start_backend_servers()?;
    stop_if_interrupted()?;

    step("checking that the VIPs do not answer yet: nothing balances them");
    for vip in [vip4(), vip6()] {
        match topo.get(vip, SILENCE) {
            Err(_) => println!("    {vip}: no answer, as expected"),
            Ok(body) => bail!("{vip} answered `{body}` before bascule ran: the lab is miswired"),
        }
    }
    stop_if_interrupted()?;

    step("starting `bascule run -c deploy/examples/demo.yaml` on lb1 (xdp generic on eth0, dr, Maglev)");
    let config = topo.write_config("demo.yaml", DEMO_CONFIG)?;
    let daemon = topo.start_bascule(bin, &topo.lbs[0], &config)?;
    for vip in [vip4(), vip6()] {
        topo.wait_for_vip(vip, &[&daemon], READY_ATTEMPTS, READY_INTERVAL)
            .with_context(|| format!("bascule did not make {vip} answer"))?;
    }
    println!("    both VIPs answer");

    for vip in [vip4(), vip6()] {
        step(&format!(
            "sending {REQUESTS} new connections from the client to {vip}"
        ));
        let spread = send_requests(topo, vip)?;
        print_chart(&spread, &servers);
    }

    step("not shown yet: health checks, a second LB node and VRRP failover come later");
    println!("    (this demo will then kill a backend and an LB node and show the traffic move)");

    if keep {
        keep_until_interrupted(topo, &daemon)?;
    }
    let (status, in_time) = topo.lab.terminate(&daemon)?;
    if !in_time {
        println!("    bascule ignored SIGTERM for 5 s and was killed");
    } else if !status.success() {
        println!("    bascule exited with {status} on SIGTERM");
    }
    Ok(())
}

/// Body (backend name, or `failed`) -> count, for REQUESTS new connections.
fn send_requests(topo: &Topology, vip: SocketAddr) -> Result<BTreeMap<String, usize>> {
    let mut spread = BTreeMap::new();
    let mut first_error = None;
    for _ in 0..REQUESTS {
        stop_if_interrupted()?;
        match topo.get(vip, REQUEST_TIMEOUT) {
            Ok(body) => *spread.entry(body).or_insert(0) += 1,
            Err(err) => {
                *spread.entry("failed".to_string()).or_insert(0) += 1;
                first_error.get_or_insert(err);
            }
        }
    }
    if let Some(err) = first_error {
        println!("    first failure: {err:#}");
    }
    Ok(spread)
}

fn print_chart(spread: &BTreeMap<String, usize>, servers: &[HttpServer]) {
    let mut rows: Vec<(&str, usize)> = servers
        .iter()
        .map(|s| (s.name(), spread.get(s.name()).copied().unwrap_or(0)))
        .collect();
    for (name, &count) in spread {
        if !servers.iter().any(|s| s.name() == name) {
            rows.push((name, count));
        }
    }
    for (name, count) in rows {
        let bar = "#".repeat((count * BAR_WIDTH).div_ceil(REQUESTS));
        println!("    {name:<7} {bar:<BAR_WIDTH$} {count:>3}");
    }
}

fn keep_until_interrupted(topo: &Topology, daemon: &Spawned) -> Result<()> {
    let client = &topo.client.netns;
    step("the lab stays up until Ctrl-C; from another shell, try:");
    println!("    ip netns exec {client} curl http://{}/", vip4().ip());
    println!(
        "    ip netns exec {client} curl 'http://[{}]/'",
        vip6().ip()
    );
    println!("    ip netns exec {} tcpdump -ni eth0", topo.lbs[0].netns);
    println!("    less {}   (bascule's log)", daemon.log.display());
    let started = Instant::now();
    while !interrupt::interrupted() && started.elapsed() < KEEP_AT_MOST {
        if let Some(status) = topo.lab.exit_status(daemon) {
            println!(
                "    bascule exited ({status}); its log:\n{}",
                daemon.log_text()
            );
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn stop_if_interrupted() -> Result<()> {
    if interrupt::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}
