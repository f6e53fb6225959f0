//! `cargo xtask demo`: the whole product in a namespace lab, with live numbers.
//!
//! Builds bascule, then builds the lab of `bascule_tests::product` (a client, two LB nodes,
//! three backends with HTTP and TCP echo servers, one bridge; nothing on the host's own
//! network), runs `bascule run -c deploy/examples/demo.yaml` on lb1 and the same file with
//! priority 100 on lb2, and tells the story: requests spread over the backends, a backend
//! killed and healed (health checks take it out and back), the master LB node killed (VRRP
//! moves the VIPs, GARPs, the gap, long-lived connections that survive), `bascule status`
//! on the new master. Ctrl-C at any point tears everything down; the next run first sweeps
//! up what an aborted one left. `--keep` leaves the lab up until Ctrl-C (at most an hour).

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use bascule_tests::{
    cleanup_stale, interrupt,
    product::{
        echo4, log_message, web4, web6, with_priority, Failover, Mode, ProductLab, Spread,
        ADVERT_INTERVAL, BACKUP_PRIORITY, CHECK_INTERVAL, CHECK_TIMEOUT, FALL, GARP_INTERVAL,
        GARP_REPEAT, HTTP_PORT, MASTER_PRIORITY, VIP4, VIP6,
    },
    vrrp::{gratuitous_arps, unsolicited_nas},
};

/// The config bascule runs on lb1 (lb2: the same with priority 100); also the readable
/// example shipped in `deploy/`.
const DEMO_CONFIG: &str = include_str!("../../deploy/examples/demo.yaml");
/// New connections per chart.
const REQUESTS: usize = 60;
/// Long-lived connections through the failover.
const CONNECTIONS: usize = 20;
/// The backend whose HTTP server is killed and restarted.
const VICTIM: &str = "b2";
/// `--keep` keeps the lab up until Ctrl-C, but not forever.
const KEEP_AT_MOST: Duration = Duration::from_secs(3600);
const BAR_WIDTH: usize = 40;

const USAGE: &str = "\
usage: cargo xtask demo [--keep | --scale-out]

  --keep       leave the lab up after the story (until Ctrl-C, at most an hour)
               and print how to reach it
  --scale-out  the ECMP story: a router running BIRD, three LB nodes announcing
               over BGP, one node killed, one drained";

pub fn run(args: &[String]) -> Result<()> {
    let keep = match args {
        [] => false,
        [flag] if flag == "--keep" => true,
        [flag] if flag == "--scale-out" => return crate::demo_scale_out::run(),
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
    let started = Instant::now();

    step("building bascule (cargo build -p lb-userspace)");
    let bin = crate::build(crate::Profile::Debug)?;

    step("removing labs left behind by interrupted runs");
    let stale = cleanup_stale()?;
    println!("    {} stale namespace(s) removed", stale.len());

    step("creating the lab: a client, 2 LB nodes, 3 backends on one bridge, all in network namespaces;");
    println!("    each backend runs an HTTP server on port 80 answering its name and a TCP echo server on port 7000");
    let mut lab = ProductLab::new("demo", Mode::Dr, &bin)?;
    for host in lab.topo.lab.hosts() {
        let v4 = host.ipv4().map(|a| a.to_string()).unwrap_or_default();
        let v6 = host.ipv6().map(|a| a.to_string()).unwrap_or_default();
        println!(
            "    {:<7} {v4:<12} {v6:<13} {}  netns {}",
            host.role, host.mac, host.netns
        );
    }

    let outcome = tell(&mut lab, &bin, keep);
    if outcome.is_err() && interrupt::interrupted() {
        println!("\n    interrupted");
    }

    step("tearing down: stopping processes, deleting the namespaces");
    let namespaces = lab.topo.lab.namespaces().len();
    let left = lab.teardown()?;
    if left.is_empty() {
        println!("    {namespaces} namespaces deleted; no namespace, process, pinned BPF object or scratch file left behind");
    } else {
        println!("    left behind: {left}; the next run removes them (or `ip netns del NAME`)");
    }
    if interrupt::interrupted() && outcome.is_err() {
        bail!("interrupted: the lab is torn down");
    }
    outcome?;
    println!("\ndone in {}", secs(started.elapsed()));
    Ok(())
}

/// The story; the caller tears down whatever this returns.
fn tell(lab: &mut ProductLab, bin: &Path, keep: bool) -> Result<()> {
    step("checking that the VIP does not answer yet: nobody holds it");
    match lab.spread(web4(), 1)?.answers.keys().next() {
        None => println!("    {}: no answer, as expected", web4()),
        Some(body) => bail!(
            "{} answered `{body}` before bascule ran: the lab is miswired",
            web4()
        ),
    }

    step(&format!(
        "starting bascule on lb1 (deploy/examples/demo.yaml, priority {MASTER_PRIORITY}) and on lb2 (the same file with priority {BACKUP_PRIORITY})"
    ));
    let lb2_config = with_priority(DEMO_CONFIG, MASTER_PRIORITY, BACKUP_PRIORITY)?;
    let began = Instant::now();
    lab.start_node(0, DEMO_CONFIG)?;
    lab.start_node(1, &lb2_config)?;
    lab.wait_for_master(0, &[1])?;
    println!(
        "    {}  lb1 is VRRP master: it holds {VIP4} and {VIP6} and answers ARP / NDP for them; lb2 is backup",
        at(began)
    );
    lab.wait_for_health()?;
    println!(
        "    {}  health checks (http_get on port 80, tcp on port 7000, every {}): b1, b2, b3 up on both nodes",
        at(began),
        ms(CHECK_INTERVAL)
    );

    for vip in [web4(), web6()] {
        step(&format!(
            "{REQUESTS} new connections from the client to {vip}"
        ));
        chart(lab, &lab.spread(vip, REQUESTS)?);
    }

    let victim_addr = lab.server_addr(VICTIM, IpAddr::V4(VIP4), HTTP_PORT)?;
    step(&format!(
        "killing {VICTIM}'s HTTP server: the checks fail, and after {FALL} in a row ({} apart, {} timeout) the backend leaves the pool",
        ms(CHECK_INTERVAL),
        ms(CHECK_TIMEOUT)
    ));
    let marks = lab.log_marks();
    lab.stop_http(VICTIM)?;
    let (line, took) = lab.wait_for_transition(
        &[0, 1],
        &marks,
        &format!("web: backend {victim_addr} is down"),
    )?;
    println!("    {}  lb1: {}", secs(took), log_message(&line));
    println!("    {REQUESTS} new connections to {}:", web4());
    chart(lab, &lab.spread(web4(), REQUESTS)?);

    step(&format!("restarting {VICTIM}'s HTTP server"));
    let marks = lab.log_marks();
    lab.start_http(VICTIM)?;
    let (line, took) = lab.wait_for_transition(
        &[0, 1],
        &marks,
        &format!("web: backend {victim_addr} is up"),
    )?;
    println!("    {}  lb1: {}", secs(took), log_message(&line));
    println!("    {REQUESTS} new connections to {}:", web4());
    chart(lab, &lab.spread(web4(), REQUESTS)?);

    step(&format!(
        "opening {CONNECTIONS} long-lived connections to {} (each sends a message every 50 ms and waits for its echo)",
        echo4()
    ));
    let probes = lab.open_connections(CONNECTIONS)?;
    let capture = lab.start_client_capture()?;
    println!("    tcpdump listens for ARP and neighbour discovery on the client");

    step("lb1 dies: its bascule is SIGKILLed and its cable pulled (it can neither answer nor say goodbye)");
    let failover = lab.fail_over(probes)?;
    report_failover(lab, &failover);
    // The rest of the announcement burst, then what the client saw on the wire.
    thread::sleep(GARP_INTERVAL * GARP_REPEAT);
    lab.stop_other(&capture)?;
    let frames = capture.log_text();
    let lb2 = lab.lb(1).clone();
    println!(
        "    on the wire, from lb2 ({}): {} gratuitous ARPs for {VIP4}, {} unsolicited neighbour advertisements for {VIP6}",
        lb2.mac,
        gratuitous_arps(&frames, &lb2.mac, VIP4),
        unsolicited_nas(&frames, &lb2.mac, VIP6)
    );

    step(&format!(
        "{REQUESTS} new connections to {}, now through lb2",
        web4()
    ));
    chart(lab, &lab.spread(web4(), REQUESTS)?);

    step("`bascule status` on lb2, the new master");
    show_status(lab, bin)?;

    if keep {
        keep_until_interrupted(lab, bin)?;
    }
    Ok(())
}

fn report_failover(lab: &ProductLab, f: &Failover) {
    let skew = ADVERT_INTERVAL * (256 - u32::from(BACKUP_PRIORITY)) / 256;
    println!(
        "    {}  lb2 holds {VIP4} and {VIP6} (it waits for 3 missed adverts, 3 x {} + {} of skew, from the last one lb1 sent)",
        ms(f.takeover),
        ms(ADVERT_INTERVAL),
        ms(skew)
    );
    println!(
        "    {}  first new connection answered through lb2",
        ms(f.first_answer)
    );
    let name = |mac: &Option<String>| match mac {
        Some(m) if *m == lab.lb(0).mac => format!("{m} (lb1)"),
        Some(m) if *m == lab.lb(1).mac => format!("{m} (lb2)"),
        Some(m) => m.clone(),
        None => "none".to_string(),
    };
    println!(
        "    the client's neighbour entry for {VIP4}: {} -> {}",
        name(&f.neighbour_before),
        name(&f.neighbour_after)
    );
    let mut per_server: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &f.connections {
        *per_server
            .entry(c.server.as_deref().unwrap_or("?"))
            .or_default() += 1;
    }
    let spread: Vec<String> = per_server
        .iter()
        .map(|(s, n)| format!("{n} on {s}"))
        .collect();
    let gaps = f.gaps();
    let gap_text = match (gaps.first(), gaps.get(gaps.len() / 2), gaps.last()) {
        (Some(min), Some(median), Some(max)) => format!(
            "; longest silence per connection: min {}, median {}, max {}",
            ms(*min),
            ms(*median),
            ms(*max)
        ),
        _ => String::new(),
    };
    println!(
        "    long-lived connections: {}/{} survived ({}){gap_text}",
        f.survived(),
        f.connections.len(),
        spread.join(", ")
    );
    for c in f.connections.iter().filter(|c| c.result.failure.is_some()) {
        println!(
            "      lost {}: {}",
            c.result.local,
            c.result.failure.as_deref().unwrap_or_default()
        );
    }
}

/// `bascule status` on lb2 if this bascule has it (it comes with the HTTP API).
fn show_status(lab: &ProductLab, bin: &Path) -> Result<()> {
    let has_status = Command::new(bin)
        .args(["status", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_status {
        println!("    (bascule status arrives with the HTTP API)");
        return Ok(());
    }
    let bin = bin.to_str().context("bascule's path is not UTF-8")?;
    let out = lab.topo.lab.exec(&lab.lb(1).netns, &[bin, "status"])?;
    let text = String::from_utf8_lossy(if out.status.success() {
        &out.stdout
    } else {
        &out.stderr
    });
    for line in text.lines() {
        println!("    {line}");
    }
    Ok(())
}

/// Bars of who answered, in server order, failures last.
fn chart(lab: &ProductLab, spread: &Spread) {
    let mut rows: Vec<(String, usize)> = lab
        .servers
        .iter()
        .map(|s| (s.role.clone(), spread.count(&s.role)))
        .collect();
    for (name, &n) in &spread.answers {
        if !lab.servers.iter().any(|s| &s.role == name) {
            rows.push((name.clone(), n));
        }
    }
    if spread.failed > 0 {
        rows.push(("failed".to_string(), spread.failed));
    }
    let total = spread.total().max(1);
    for (name, count) in rows {
        let bar = "#".repeat((count * BAR_WIDTH).div_ceil(total));
        println!("    {name:<7} {bar:<BAR_WIDTH$} {count:>3}");
    }
    if let Some(e) = &spread.first_error {
        println!("    first failure: {e}");
    }
}

fn keep_until_interrupted(lab: &mut ProductLab, bin: &Path) -> Result<()> {
    step("--keep: lb1 comes back (cable plugged in, bascule restarted) and takes the VIPs back");
    lab.revive_node(0, DEMO_CONFIG)?;
    let took = lab.wait_for_master(0, &[1])?;
    println!("    {}  lb1 is master again (preempt)", ms(took));

    let client = lab.topo.client.netns.clone();
    step("the lab stays up until Ctrl-C; from another shell, try:");
    println!("    ip netns exec {client} curl http://{VIP4}/");
    println!("    ip netns exec {client} curl 'http://[{VIP6}]/'");
    println!("    ip netns exec {client} ip neigh show {VIP4}      # which node's MAC has the VIP");
    for i in 0..2 {
        let lb = lab.lb(i);
        println!(
            "    ip netns exec {} ip addr show eth0      # {}: the VIPs while master",
            lb.netns, lb.role
        );
    }
    for i in 0..2 {
        if let Some(d) = lab.daemon(i) {
            println!(
                "    less {}      # {}'s bascule log",
                d.log.display(),
                lab.lb(i).role
            );
        }
    }
    if let Some(d) = lab.daemon(0) {
        println!(
            "    kill {}      # stops lb1's bascule: it hands the VIPs over to lb2 at once",
            d.pid
        );
    }
    println!(
        "    ip netns exec {} {} check -c {}",
        lab.lb(0).netns,
        bin.display(),
        lab.topo.lab.dir().join("lb1.yaml").display()
    );
    let started = Instant::now();
    while !interrupt::interrupted() && started.elapsed() < KEEP_AT_MOST {
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

/// Time since `began`, as `1.23 s`.
fn at(began: Instant) -> String {
    secs(began.elapsed())
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}
