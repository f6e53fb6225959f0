//! `cargo xtask demo --scale-out`: several LB nodes active at once behind a router, with
//! live numbers.
//!
//! Builds bascule, then the lab of `bascule_tests::scale_out`: a router running BIRD (BGP,
//! BFD, ECMP with L4 hashing), a client beyond it, three LB nodes each running bascule
//! with `announce:` and BIRD, three backends. The story: the router spreads each VIP over
//! the three nodes, and new connections over the nodes and the backends; long-lived `mh`
//! connections are opened; one node dies (cable pulled, bascule and BIRD killed) and BFD
//! takes it out of the router's routes while the connections carry on; another node is
//! drained (`bascule drain-node`) and undrained. Everything is torn down at the end, or
//! on Ctrl-C.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use bascule_tests::{
    bgp::BFD_DETECTION,
    cleanup_stale, interrupt,
    scale_out::{echo4, vips, web4, AnnouncingLab},
    traffic::{open_tcp_flows, Prober},
};

/// New connections per chart.
const REQUESTS: usize = 300;
/// Long-lived connections through the death and the drain.
const CONNECTIONS: usize = 30;
const BAR_WIDTH: usize = 40;
const ROUTE_BOUND: Duration = Duration::from_secs(5);

pub fn run() -> Result<()> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    interrupt::install();
    let started = Instant::now();
    step("building bascule (cargo build -p lb-userspace)");
    let bin = crate::build(crate::Profile::Debug)?;
    step("removing labs left behind by interrupted runs");
    println!("    {} stale namespace(s) removed", cleanup_stale()?.len());

    step("creating the lab: client -- router (BIRD, ECMP) -- lb1 lb2 lb3 (bascule + BIRD) -- b1 b2 b3");
    println!("    each LB node runs bascule with announce: (table 200, protocol 186) and BIRD with BGP and BFD to the router");
    let lab = AnnouncingLab::new("demo-scale-out", &bin)?;
    println!(
        "    ready, and routed over the 3 LB nodes, {} after start",
        secs(started.elapsed())
    );
    let outcome = tell(&lab);
    step("tearing down: stopping processes, deleting the namespaces");
    let footprint = lab.net.lab.footprint();
    drop(lab);
    let left = footprint.leftovers()?;
    if left.is_empty() {
        println!("    nothing left behind");
    } else {
        println!("    left behind: {left}; the next run removes them");
    }
    outcome?;
    println!("\ndone in {}", secs(started.elapsed()));
    Ok(())
}

fn tell(lab: &AnnouncingLab) -> Result<()> {
    let [lb1, lb2, lb3] = [&lab.net.lbs[0], &lab.net.lbs[1], &lab.net.lbs[2]];
    step("the router's routes to the VIPs (learnt by BGP from the nodes' BIRD)");
    show_routes(lab)?;

    step(&format!(
        "{REQUESTS} new connections from the client to {}",
        web4()
    ));
    let spread = lab.spread(web4(), "web", REQUESTS)?;
    chart_nodes(lab, &spread.nodes);
    chart(&spread.backends);

    step(&format!(
        "{CONNECTIONS} long-lived mh connections to {} (every node builds the same Maglev table)",
        echo4()
    ));
    let flows = open_tcp_flows(lab.net.client_netns(), echo4(), CONNECTIONS, secs_d(3))?;
    let prober = Prober::start(flows, Duration::from_millis(50), secs_d(5))?;
    prober.wait_rounds(3, secs_d(10))?;
    let on_lb2 = lab.connections(lb2, "echo")?;
    println!("    {on_lb2} of them go through lb2");

    step("lb2 dies: its cable pulled, its bascule and its BIRD SIGKILLed");
    let pulled = lab.kill_node(1)?;
    for vip in vips() {
        let left = lab.net.next_hops_of(&[lb1, lb3], vip);
        lab.net.wait_next_hops(vip, &left, ROUTE_BOUND)?;
        println!(
            "    {vip}: lb2 out of the router's route after {} (BFD detection {} ms)",
            ms(pulled.elapsed()),
            BFD_DETECTION.as_millis()
        );
    }
    prober.wait_rounds(2, secs_d(20))?;
    println!(
        "    every long-lived connection had traffic again {} after the death",
        ms(pulled.elapsed())
    );
    let spread = lab.spread(web4(), "web", REQUESTS)?;
    println!("    {REQUESTS} new connections:");
    chart_nodes(lab, &spread.nodes);

    step("lb3 drained: `bascule drain-node` (the datapath keeps forwarding)");
    let drained = Instant::now();
    print_indented(&lab.cli(lb3, &["drain-node"])?);
    for vip in vips() {
        lab.net
            .wait_next_hops(vip, &lab.net.next_hops_of(&[lb1], vip), ROUTE_BOUND)?;
    }
    println!(
        "    lb3 out of the router's routes after {}",
        ms(drained.elapsed())
    );
    let spread = lab.spread(web4(), "web", REQUESTS / 3)?;
    chart_nodes(lab, &spread.nodes);
    prober.wait_rounds(3, secs_d(10))?;

    step("lb3 undrained: `bascule undrain-node`");
    print_indented(&lab.cli(lb3, &["undrain-node"])?);
    for vip in vips() {
        lab.net
            .wait_next_hops(vip, &lab.net.next_hops_of(&[lb1, lb3], vip), ROUTE_BOUND)?;
    }
    let spread = lab.spread(web4(), "web", REQUESTS)?;
    chart_nodes(lab, &spread.nodes);
    prober.wait_rounds(3, secs_d(10))?;

    let records = prober.stop();
    let lost = records.iter().filter(|r| r.lost()).count();
    step("the long-lived connections, through the death and the drain");
    println!(
        "    {} of {} survived, each on the backend it started on",
        records.len() - lost,
        records.len()
    );
    step("`bascule status` on lb1 (its announcements at the end)");
    print_indented(&lab.cli(lb1, &["status"])?);
    if lost > 0 {
        bail!("{lost} long-lived connection(s) lost");
    }
    Ok(())
}

fn show_routes(lab: &AnnouncingLab) -> Result<()> {
    for vip in vips() {
        let hops: Vec<String> = lab
            .net
            .next_hops(vip)?
            .into_iter()
            .map(|hop| format!("{} ({hop})", node_of(lab, hop)))
            .collect();
        println!("    {vip}: {}", hops.join(", "));
    }
    Ok(())
}

fn node_of(lab: &AnnouncingLab, hop: IpAddr) -> &str {
    lab.net
        .lbs
        .iter()
        .find(|lb| lb.addrs.contains(&hop))
        .map_or("?", |lb| lb.role.as_str())
}

fn chart_nodes(lab: &AnnouncingLab, counts: &[u64]) {
    let rows: BTreeMap<String, usize> = lab
        .net
        .lbs
        .iter()
        .zip(counts)
        .map(|(lb, n)| (lb.role.clone(), *n as usize))
        .collect();
    chart(&rows);
}

fn chart(rows: &BTreeMap<String, usize>) {
    let total = rows.values().sum::<usize>().max(1);
    for (name, &count) in rows {
        let bar = "#".repeat((count * BAR_WIDTH).div_ceil(total));
        println!("    {name:<5} {bar:<BAR_WIDTH$} {count:>3}");
    }
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("    {line}");
    }
}

fn step(what: &str) {
    println!("==> {what}");
}

fn secs_d(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
