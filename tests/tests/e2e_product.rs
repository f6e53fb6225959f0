//! The product's whole story, end to end, the way `cargo xtask demo` tells it, in every
//! forwarding mode: two LB nodes running bascule with VRRP in front of servers that answer
//! HTTP with their name (see `bascule_tests::product`). Each test asserts, in order:
//!
//! 1. lb1 alone holds the VIPs, both nodes build the same Maglev tables, and new IPv4 and
//!    IPv6 connections reach every server;
//! 2. a server's HTTP server stops: both nodes log it down, new connections avoid it; it
//!    restarts: both nodes log it up, it gets connections again;
//! 3. the master node dies (SIGKILL, cable pulled) while long-lived connections run: lb2
//!    holds the VIPs, the client's neighbour entry points to lb2, the connections whose
//!    server is alive survive, new connections reach the live servers;
//! 4. lb2 stops cleanly, and the lab leaves no namespace, process, pinned BPF state or
//!    scratch directory behind.
//!
//! What the other suites assert in depth (timing bounds of health checks and VRRP, GARP
//! counts, flows pinned across health changes, keepalived interop) is not repeated. The
//! tests run one at a time: each runs VRRP at 200 ms adverts, which labs competing for two
//! cores could disturb. The binary comes from `BASCULE_BIN` (set by `cargo xtask test`).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
};

use bascule_tests::product::{
    echo4, log_message, web4, web6, Mode, ProductLab, Spread, ECHO_PORT, HTTP_PORT, VIP4,
};
use bascule_tests::{bascule_bin, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

/// New connections per batch: with three servers, one missed by chance has probability
/// 3 x (2/3)^30 < 2e-5.
const REQUESTS: usize = 30;
/// Long-lived connections through the failover.
const CONNECTIONS: usize = 12;

#[test]
fn story_dr() {
    story(Mode::Dr);
}

#[test]
fn story_tun_with_decap_on_the_backends() {
    story(Mode::Tun);
}

#[test]
fn story_nat_with_replies_routed_via_the_vip() {
    story(Mode::Nat);
}

#[test]
fn story_local_with_both_nodes_serving() {
    story(Mode::Local);
}

/// `ok!(lab, what, result)`: unwraps, or fails with the error and every daemon's log.
macro_rules! ok {
    ($lab:expr, $what:expr, $result:expr) => {{
        let result = $result;
        check(&$lab, $what, result)
    }};
}

fn check<T>(lab: &ProductLab, what: &str, result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e:#}{}", lab.logs()))
}

/// Every one of `names` answered, nothing else did, nothing failed.
fn assert_reached(lab: &ProductLab, step: &str, spread: &Spread, names: &[&str]) {
    let mode = lab.mode.as_str();
    assert_eq!(
        spread.failed,
        0,
        "{mode} {step}: {} of {} connections failed (first: {:?}): {spread:?}{}",
        spread.failed,
        spread.total(),
        spread.first_error,
        lab.logs()
    );
    for name in names {
        assert!(
            spread.count(name) > 0,
            "{mode} {step}: {name} answered none of {} connections: {spread:?}",
            spread.total()
        );
    }
    let others: Vec<&String> = spread
        .answers
        .keys()
        .filter(|k| !names.contains(&k.as_str()))
        .collect();
    assert!(
        others.is_empty(),
        "{mode} {step}: answered by {others:?}, expected only {names:?}: {spread:?}"
    );
}

fn digests(lab: &ProductLab, i: usize) -> Vec<String> {
    let path = lab.topo.lab.dir().join(format!("{}.yaml", lab.lb(i).role));
    let out = lab
        .topo
        .lab
        .exec_ok(
            &lab.lb(i).netns,
            &[
                bascule_bin().to_str().unwrap(),
                "check",
                "-c",
                path.to_str().unwrap(),
            ],
        )
        .unwrap_or_else(|e| panic!("bascule check on {}: {e:#}", lab.lb(i).role));
    out.lines()
        .filter(|l| l.contains("digest"))
        .map(str::to_string)
        .collect()
}

fn story(mode: Mode) {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let m = mode.as_str();
    let mut lab = ProductLab::new(&format!("product-{m}"), mode, &bascule_bin())
        .unwrap_or_else(|e| panic!("{m}: build the lab: {e:#}"));
    let names: Vec<String> = lab.servers.iter().map(|s| s.role.clone()).collect();
    let all: Vec<&str> = names.iter().map(String::as_str).collect();

    // 1. lb1 is master; both nodes bring every server up and balance the same way.
    ok!(lab, "start bascule", lab.start());
    ok!(lab, "lb1 master", lab.wait_for_master(0, &[1]));
    // The IPv6 VIP lb1 now holds on eth0 (same /64 as its own address) is never the
    // source the kernel picks for lb1's own traffic (health checks, tunnels).
    let lb1 = lab.lb(0).clone();
    let route = ok!(
        lab,
        "route from lb1",
        lab.topo.lab.exec_ok(
            &lb1.netns,
            &[
                "ip",
                "-6",
                "route",
                "get",
                &lab.topo.client.ipv6().unwrap().to_string()
            ]
        )
    );
    let own = lb1.ipv6().unwrap().to_string();
    assert!(
        route.contains(&format!("src {own} ")),
        "{m}: lb1's own traffic must leave from {own}, not from the VIP: {route}"
    );
    ok!(lab, "health checks up", lab.wait_for_health());
    let (d1, d2) = (digests(&lab, 0), digests(&lab, 1));
    assert_eq!(d1.len(), 3, "{m}: three services: {d1:?}");
    assert_eq!(d1, d2, "{m}: lb1 and lb2 build different Maglev tables");
    for vip in [web4(), web6()] {
        let spread = ok!(lab, "spread", lab.spread(vip, REQUESTS));
        println!("{m} {vip} through lb1: {spread:?}");
        assert_reached(&lab, &format!("{vip} through lb1"), &spread, &all);
    }

    // 2. A server's HTTP server stops, then comes back. In `local` mode it is the master's
    // own: the node takes itself out of its pool.
    let victim = if mode == Mode::Local { "lb1" } else { "b2" };
    let victim_http = check(
        &lab,
        "victim address",
        lab.server_addr(victim, IpAddr::V4(VIP4), HTTP_PORT),
    );
    let marks = lab.log_marks();
    ok!(lab, "stop the HTTP server", lab.stop_http(victim));
    let (line, took) = check(
        &lab,
        "down on both nodes",
        lab.wait_for_transition(
            &[0, 1],
            &marks,
            &format!("web: backend {victim_http} is down"),
        ),
    );
    println!(
        "{m}: {victim}'s HTTP server stopped; after {took:?}: {}",
        log_message(&line)
    );
    assert!(
        line.contains("failed checks): connection refused"),
        "{m}: the down line gives the reason: {line}"
    );
    let without: Vec<&str> = all.iter().copied().filter(|n| *n != victim).collect();
    let spread = ok!(lab, "spread", lab.spread(web4(), REQUESTS));
    println!("{m} without {victim}: {spread:?}");
    assert_reached(&lab, &format!("with {victim} down"), &spread, &without);

    let marks = lab.log_marks();
    ok!(lab, "restart the HTTP server", lab.start_http(victim));
    let (line, took) = check(
        &lab,
        "up on both nodes",
        lab.wait_for_transition(
            &[0, 1],
            &marks,
            &format!("web: backend {victim_http} is up"),
        ),
    );
    println!(
        "{m}: {victim}'s HTTP server back; after {took:?}: {}",
        log_message(&line)
    );
    let spread = ok!(lab, "spread", lab.spread(web4(), REQUESTS));
    assert_reached(&lab, &format!("with {victim} back"), &spread, &all);

    // 3. The master dies under long-lived connections.
    let probes = ok!(
        lab,
        "long-lived connections",
        lab.open_connections(CONNECTIONS)
    );
    let marks = lab.log_marks();
    let failover = ok!(lab, "failover", lab.fail_over(probes));
    let survived = failover.survived();
    let gaps = failover.gaps();
    println!(
        "{m}: lb2 took over after {:?}; first new connection answered after {:?}; {survived}/{CONNECTIONS} \
         connections survived, longest silence {:?}; neighbour {:?} -> {:?}",
        failover.takeover,
        failover.first_answer,
        gaps.last(),
        failover.neighbour_before,
        failover.neighbour_after
    );
    assert!(lab.holds_vips(1), "{m}: lb2 holds the VIPs{}", lab.logs());
    assert_eq!(
        failover.neighbour_before.as_deref(),
        Some(lab.lb(0).mac.as_str()),
        "{m}: the client reached the VIP through lb1 before"
    );
    assert_eq!(
        failover.neighbour_after.as_deref(),
        Some(lab.lb(1).mac.as_str()),
        "{m}: the client's neighbour entry for {VIP4} points to lb2 after the failover"
    );
    for c in &failover.connections {
        let server = c
            .server
            .as_deref()
            .unwrap_or_else(|| panic!("{m}: no server accepted {}", c.result.local));
        // Connections of a dead server die with it (here the dead node's own server in
        // `local` mode); every other one lives on through lb2.
        let server_died = mode == Mode::Local && server == "lb1";
        assert_eq!(
            c.result.failure.is_some(),
            server_died,
            "{m}: connection {} to {} on {server}: {c:?}",
            c.result.local,
            echo4()
        );
        if !server_died {
            assert!(
                c.after_takeover >= 5,
                "{m}: connection {} kept exchanging after the takeover: {c:?}",
                c.result.local
            );
        }
    }

    // New connections through lb2 reach every live server (in `local` mode once lb2's
    // checks have taken the dead lb1 out).
    let live: Vec<&str> = if mode == Mode::Local {
        let lb1_http = check(
            &lab,
            "lb1 address",
            lab.server_addr("lb1", IpAddr::V4(VIP4), HTTP_PORT),
        );
        let lb1_echo = SocketAddr::new(lb1_http.ip(), ECHO_PORT);
        for needle in [
            format!("web: backend {lb1_http} is down"),
            format!("echo: backend {lb1_echo} is down"),
        ] {
            ok!(
                lab,
                "lb1 down on lb2",
                lab.wait_for_transition(&[1], &marks, &needle)
            );
        }
        all.iter().copied().filter(|n| *n != "lb1").collect()
    } else {
        all.clone()
    };
    for vip in [web4(), web6()] {
        let spread = ok!(lab, "spread", lab.spread(vip, REQUESTS));
        println!("{m} {vip} through lb2: {spread:?}");
        assert_reached(&lab, &format!("{vip} through lb2"), &spread, &live);
    }

    // 4. Clean stop, nothing left behind.
    let (status, in_time) = ok!(lab, "stop lb2", lab.stop_node(1));
    assert!(
        in_time && status.success(),
        "{m}: bascule on lb2 stopped with {status} (in time: {in_time}){}",
        lab.logs()
    );
    assert!(!lab.holds_vips(1), "{m}: a stopped lb2 releases the VIPs");
    let left = lab.teardown().expect("look for leftovers");
    assert!(left.is_empty(), "{m}: the lab left behind {left}");
}

/// The leftover check of step 4 can fail: a process started in a lab namespace behind the
/// lab's back outlives the lab (and keeps its namespace alive), and is found.
#[test]
fn the_leftover_check_finds_a_process_that_outlives_its_lab() {
    require_root();
    let mut lab = bascule_tests::Lab::new("leftover").expect("build a lab");
    let host = lab
        .add_host("h", &["10.111.0.10".parse().unwrap()])
        .expect("add a host");
    // `sh` returns at once; its `sleep` is no child of the lab's.
    lab.exec_ok(
        &host.netns,
        &["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 &"],
    )
    .expect("start a stray process");
    let footprint = lab.footprint();
    drop(lab);
    let left = footprint.leftovers().expect("look for leftovers");
    for p in &left.processes {
        if let Some(pid) = p
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) on the stray process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(left.namespaces.is_empty(), "{left}");
    assert_eq!(left.processes.len(), 1, "{left}");
    assert!(left.processes[0].contains("sleep 60"), "{left}");
}
