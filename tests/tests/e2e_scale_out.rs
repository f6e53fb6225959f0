//! Scale-out through real BIRD, before bascule takes part: LB nodes announce VIPs by
//! holding the blackhole routes bascule will hold (`ip route add blackhole VIP table 200
//! proto 186`, by hand here), BIRD announces them with the shipped `deploy/bird/`
//! configurations, and the router's routes show what a user would see: which LB nodes
//! get a VIP's traffic. Then bascule itself, with `announce:`, on every LB node: the
//! spread of new connections, a node's death, `drain-node`, backends unreachable from one
//! node, SIGTERM; and with `sync:` between the nodes, `rr` flows that live through a node's
//! death (which, without sync, loses some of them: both are asserted).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bascule_tests::{
    bgp::{ScaleOutLab, BFD_DETECTION},
    http_get, http_server,
    lab::list_netns,
    lab::Host,
    require_root,
    scale_out::{echo4, echo_rr4, web4, web6, AnnouncingLab, Spread, WITHDRAW_GRACE},
    sync::Transport,
    topology::{VIP4, VIP6, VIP_PORT},
    traffic::{open_tcp_flows, FlowRecord, Prober},
};

/// How long a route change on a node may take to show on the router (measured: ~10 ms).
const WITHDRAW_BOUND: Duration = Duration::from_secs(1);
/// A dead node's next hop must leave within BFD's detection time plus this (BIRD and
/// the kernel updating the route, the 10 ms polling); BGP's hold timer would take 240 s.
const BFD_MARGIN: Duration = Duration::from_millis(400);
/// A node plugged in again is back in the spread within this (seen: 2.4-5.9 s): its
/// BIRD waits `error wait time` (2 s) and `connect delay time` (1 s), then connects, and
/// after the link flap a lost segment can cost TCP a 3 s retransmission. Without
/// `error wait time` in router.conf the router refused the node for a minute (BIRD's
/// default).
const RETURN_BOUND: Duration = Duration::from_secs(15);

fn vips() -> [IpAddr; 2] {
    [IpAddr::V4(VIP4), IpAddr::V6(VIP6)]
}

fn announce_everywhere(lab: &ScaleOutLab) {
    for lb in &lab.lbs {
        for vip in vips() {
            lab.announce(lb, vip).expect("add the blackhole route");
        }
    }
    let all: Vec<_> = lab.lbs.iter().collect();
    for vip in vips() {
        let took = lab
            .wait_next_hops(vip, &lab.next_hops_of(&all, vip), Duration::from_secs(5))
            .expect("one multipath route over the three LB nodes");
        println!("{vip}: routed over 3 LB nodes {took:.2?} after the last announcement");
    }
}

#[test]
fn the_router_spreads_a_vip_over_the_nodes_announcing_it() {
    require_root();
    let lab = ScaleOutLab::new("scale-out-routes").expect("build the scale-out lab");
    let [lb1, lb2, lb3] = [&lab.lbs[0], &lab.lbs[1], &lab.lbs[2]];

    // The client, on a link of its own, reaches the LB segment through the router.
    let b1 = &lab.backends[0];
    let any = SocketAddr::new("::".parse().unwrap(), VIP_PORT);
    let server = http_server(&b1.netns, any, &b1.role).expect("start a server on b1");
    for addr in [b1.ipv4(), b1.ipv6()].into_iter().flatten() {
        let body = http_get(
            lab.client_netns(),
            SocketAddr::new(addr, VIP_PORT),
            Duration::from_secs(2),
        )
        .unwrap_or_else(|e| panic!("client -> {addr} through the router: {e:#}"));
        assert_eq!(body, "b1");
    }
    assert_eq!(server.stop(), 2);

    // Nothing announced: the router has no route to the VIPs.
    for vip in vips() {
        assert_eq!(lab.next_hops(vip).unwrap(), BTreeSet::new(), "{vip}");
    }
    announce_everywhere(&lab);

    // lb2 withdraws: the router stops sending it the VIPs' traffic, and only that.
    for vip in vips() {
        lab.withdraw(lb2, vip).expect("delete the blackhole route");
        let took = lab
            .wait_next_hops(vip, &lab.next_hops_of(&[lb1, lb3], vip), WITHDRAW_BOUND)
            .expect("lb2's next hop leaves");
        println!("{vip}: lb2's next hop gone {took:.2?} after its route was deleted");
    }
    // It announces again: back in the spread.
    for vip in vips() {
        lab.announce(lb2, vip).unwrap();
        let took = lab
            .wait_next_hops(
                vip,
                &lab.next_hops_of(&[lb1, lb2, lb3], vip),
                WITHDRAW_BOUND,
            )
            .expect("lb2's next hop returns");
        println!("{vip}: lb2's next hop back {took:.2?} after its route was added");
    }
    // Routes of another protocol in the table are not announced.
    let other = "10.112.0.101/32";
    lab.lab
        .exec_ok(
            &lb1.netns,
            &["ip", "route", "add", "blackhole", other, "table", "200"],
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let stray: IpAddr = "10.112.0.101".parse().unwrap();
    assert_eq!(
        lab.next_hops(stray).unwrap(),
        BTreeSet::new(),
        "a route of another protocol in table 200 was announced"
    );

    // Dropped, the lab leaves nothing: namespaces (the client's too), BIRDs, files.
    let footprint = lab.lab.footprint();
    let client = lab.client_netns().to_string();
    drop(lab);
    let leftovers = footprint.leftovers().unwrap();
    assert!(leftovers.is_empty(), "left behind: {leftovers}");
    assert!(!list_netns().unwrap().contains(&client), "{client} is left");
}

/// Waits until the router's routes to both VIPs go through `remaining` only, at most
/// BFD's detection time plus a margin after `since`; prints and returns each gap.
fn wait_left(lab: &ScaleOutLab, remaining: &[&Host], since: Instant, who: &str) {
    let bound = BFD_DETECTION + BFD_MARGIN;
    for vip in vips() {
        // Both families' sessions have a BFD session of their own; both gaps are
        // measured from `since`.
        let left = bound.saturating_sub(since.elapsed());
        lab.wait_next_hops(vip, &lab.next_hops_of(remaining, vip), left)
            .unwrap_or_else(|e| panic!("{who}'s next hop leaves within BFD detection time: {e:#}"));
        println!(
            "{vip}: {who} out of the router's route {:.2?} after its cable was pulled \
             (BFD detection {BFD_DETECTION:?})",
            since.elapsed()
        );
    }
}

#[test]
fn a_node_cut_off_or_dead_leaves_the_spread_within_bfd_detection_time() {
    require_root();
    let lab = ScaleOutLab::new("scale-out-death").expect("build the scale-out lab");
    announce_everywhere(&lab);
    let [lb1, lb2, lb3] = [&lab.lbs[0], &lab.lbs[1], &lab.lbs[2]];

    // lb2 is cut off: only BFD can tell the router. Plugged in again, its BIRD (alive all
    // along) connects again and lb2 is back in the spread.
    let unplugged = Instant::now();
    lab.lab.set_plugged(lb2, false).expect("unplug lb2");
    wait_left(&lab, &[lb1, lb3], unplugged, "cut-off lb2");
    lab.lab.set_plugged(lb2, true).expect("plug lb2 in");
    let plugged = Instant::now();
    for vip in vips() {
        let all = lab.next_hops_of(&[lb1, lb2, lb3], vip);
        lab.wait_next_hops(vip, &all, RETURN_BOUND.saturating_sub(plugged.elapsed()))
            .expect("lb2 returns to the spread");
        println!(
            "{vip}: lb2 back in the router's route {:.2?} after its cable was plugged in",
            plugged.elapsed()
        );
    }

    // lb3 dies: its cable is pulled (nothing it could still send gets out), then its BIRD
    // is killed. Again only BFD can tell the router.
    let bird = lab.bird_of(lb3).unwrap().process.clone();
    let unplugged = Instant::now();
    lab.lab.set_plugged(lb3, false).expect("unplug lb3");
    lab.lab.kill(&bird).expect("kill lb3's BIRD");
    wait_left(&lab, &[lb1, lb2], unplugged, "dead lb3");
}

// ---- bascule announcing: what a user sees ---------------------------------------------

/// Exchanges of long-lived flows: every 50 ms, each answered within this.
const BEAT: Duration = Duration::from_millis(50);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// A change on a node (drain, health) shows on the router within this.
const ROUTE_BOUND: Duration = Duration::from_secs(5);

fn require_bascule() -> std::path::PathBuf {
    require_root();
    bascule_tests::bascule_bin()
}

/// Each node's share of `spread`, and each backend's, between 20% and 47%.
fn assert_spread_everywhere(what: &str, spread: &Spread, n: usize, lab: &AnnouncingLab) {
    let share = |count: u64| count as f64 / n as f64;
    println!(
        "{what}: {n} connections over the LB nodes {:?} and the backends {:?}",
        spread.nodes, spread.backends
    );
    assert_eq!(
        spread.nodes.iter().sum::<u64>(),
        n as u64,
        "{what}: every connection counted once"
    );
    for (lb, count) in lab.net.lbs.iter().zip(&spread.nodes) {
        let s = share(*count);
        assert!(
            (0.20..=0.47).contains(&s),
            "{what}: {} took {:.0}% of {n}",
            lb.role,
            s * 100.0
        );
    }
    assert_eq!(
        spread.backends.len(),
        lab.net.backends.len(),
        "{what}: {:?}",
        spread.backends
    );
    for (backend, count) in &spread.backends {
        let s = share(*count as u64);
        assert!(
            (0.20..=0.47).contains(&s),
            "{what}: {backend} took {:.0}% of {n}",
            s * 100.0
        );
    }
}

/// Opens `n` long-lived `mh` flows to the echo service and starts probing them.
fn long_lived_flows(lab: &AnnouncingLab, n: usize) -> Prober {
    long_lived_flows_to(lab, echo4(), n)
}

/// Opens `n` long-lived flows to `to` and starts probing them.
fn long_lived_flows_to(lab: &AnnouncingLab, to: SocketAddr, n: usize) -> Prober {
    let flows = open_tcp_flows(lab.net.client_netns(), to, n, Duration::from_secs(3))
        .expect("open long-lived flows");
    let prober = Prober::start(flows, BEAT, EXCHANGE_TIMEOUT).expect("start the prober");
    prober
        .wait_rounds(3, Duration::from_secs(10))
        .expect("probe rounds");
    prober
}

/// Every flow answered by one backend all along, without a failed exchange.
fn assert_all_survived(what: &str, records: &[FlowRecord]) {
    let lost: Vec<&FlowRecord> = records.iter().filter(|r| r.lost()).collect();
    println!(
        "{what}: {} of {} long-lived connections survived",
        records.len() - lost.len(),
        records.len()
    );
    assert!(
        lost.is_empty(),
        "{what}: lost {} flows: {lost:#?}",
        lost.len()
    );
}

#[test]
fn bascule_spreads_drains_and_follows_backend_health() {
    let bin = require_bascule();
    let mut lab =
        AnnouncingLab::new("scale-out-bascule", &bin).expect("build the lab with bascule");
    let lbs = lab.net.lbs.clone();
    let [lb1, lb2, lb3] = [&lbs[0], &lbs[1], &lbs[2]];

    // (a) New connections from the client spread over the three nodes and the backends.
    for (vip, service) in [(web4(), "web"), (web6(), "web6")] {
        let spread = lab.spread(vip, service, 300).expect("300 connections");
        assert_spread_everywhere(&format!("{service} {vip}"), &spread, 300, &lab);
    }
    // Every node says so in its metrics and its status.
    for lb in &lab.net.lbs {
        for vip in vips() {
            let series = format!("bascule_announced{{vip=\"{vip}\"}}");
            assert_eq!(
                lab.metric(lb, &series).unwrap(),
                Some(1.0),
                "{} {series}",
                lb.role
            );
        }
    }
    let status = lab.cli(lb1, &["status"]).expect("bascule status");
    assert!(
        status.contains("Announced through table 200, protocol 186"),
        "{status}"
    );

    // (c) drain-node on lb2: its routes leave the router, no connection is reset, new
    // connections go to the others; undrain-node brings it back into the spread.
    let prober = long_lived_flows(&lab, 30);
    let out = lab.cli(lb2, &["drain-node"]).expect("bascule drain-node");
    assert!(out.contains("node drained"), "{out}");
    let drained = Instant::now();
    for vip in vips() {
        lab.net
            .wait_next_hops(vip, &lab.net.next_hops_of(&[lb1, lb3], vip), ROUTE_BOUND)
            .expect("lb2's routes leave the router");
    }
    println!(
        "drain-node: lb2 out of the router's routes after {:.2?}",
        drained.elapsed()
    );
    let spread = lab
        .spread(web4(), "web", 60)
        .expect("connections while lb2 is drained");
    assert_eq!(
        spread.nodes[1], 0,
        "a drained node got new connections: {spread:?}"
    );
    prober
        .wait_rounds(3, Duration::from_secs(10))
        .expect("probe rounds");
    let series = format!("bascule_announced{{vip=\"{VIP4}\"}}");
    assert_eq!(lab.metric(lb2, &series).unwrap(), Some(0.0));
    let out = lab
        .cli(lb2, &["undrain-node"])
        .expect("bascule undrain-node");
    assert!(out.contains("node undrained"), "{out}");
    for vip in vips() {
        let all = lab.net.next_hops_of(&[lb1, lb2, lb3], vip);
        lab.net
            .wait_next_hops(vip, &all, ROUTE_BOUND)
            .expect("lb2 back in the routes");
    }
    let spread = lab
        .spread(web4(), "web", 300)
        .expect("connections after undrain-node");
    assert_spread_everywhere("after undrain-node", &spread, 300, &lab);
    prober
        .wait_rounds(3, Duration::from_secs(10))
        .expect("probe rounds");
    assert_all_survived("drain-node and undrain-node", &prober.stop());

    // (d) Every IPv4 backend unreachable from lb3 only: lb3 withdraws the IPv4 VIP, and
    // only it; the others keep it. Reachable again: lb3 announces it again.
    let v4_backends: Vec<String> = lab
        .net
        .backends
        .iter()
        .map(|b| b.ipv4().unwrap().to_string())
        .collect();
    for b in &v4_backends {
        lab.net
            .lab
            .exec_ok(&lb3.netns, &["ip", "route", "add", "prohibit", b])
            .unwrap();
    }
    let cut = Instant::now();
    let v4 = IpAddr::V4(VIP4);
    lab.net
        .wait_next_hops(v4, &lab.net.next_hops_of(&[lb1, lb2], v4), ROUTE_BOUND)
        .unwrap_or_else(|e| panic!("lb3 withdraws {VIP4}: {e:#}\n{}", lab.diagnostics()));
    println!(
        "backends unreachable from lb3: {VIP4} withdrawn after {:.2?}",
        cut.elapsed()
    );
    let v6 = IpAddr::V6(VIP6);
    assert_eq!(
        lab.net.next_hops(v6).unwrap(),
        lab.net.next_hops_of(&[lb1, lb2, lb3], v6),
        "lb3 keeps announcing {VIP6}"
    );
    let status = lab.cli(lb3, &["status"]).unwrap();
    assert!(status.contains("no backend up"), "{status}");
    for b in &v4_backends {
        lab.net
            .lab
            .exec_ok(&lb3.netns, &["ip", "route", "del", "prohibit", b])
            .unwrap();
    }
    let back = Instant::now();
    lab.net
        .wait_next_hops(v4, &lab.net.next_hops_of(&[lb1, lb2, lb3], v4), ROUTE_BOUND)
        .unwrap_or_else(|e| panic!("lb3 announces {VIP4} again: {e:#}\n{}", lab.diagnostics()));
    println!(
        "backends reachable again: {VIP4} announced by lb3 after {:.2?}",
        back.elapsed()
    );
    let log = lab.daemons[2].log_text();
    assert!(
        log.contains("VIP 10.112.0.100 withdrawn: no backend up"),
        "{log}"
    );

    // A crashed daemon's routes: a new daemon keeps those it wants (the router never
    // loses lb1) and removes the others (a route to a VIP no service has any more).
    let stale: IpAddr = "10.112.0.99".parse().unwrap();
    lab.net
        .announce(lb1, stale)
        .expect("a stale route of bascule's protocol");
    let only_lb1 = lab.net.next_hops_of(&[lb1], stale);
    lab.net
        .wait_next_hops(stale, &only_lb1, ROUTE_BOUND)
        .expect("the stale route is announced");
    let everyone = lab.net.next_hops_of(&[lb1, lb2, lb3], v4);
    let mut polls = 0;
    lab.crash_and_restart(0, |net| {
        let hops = net.next_hops(v4).unwrap();
        assert_eq!(hops, everyone, "lb1 left the route while restarting");
        polls += 1;
    })
    .expect("restart lb1's bascule");
    assert!(polls > 0);
    lab.net
        .wait_next_hops(stale, &BTreeSet::new(), ROUTE_BOUND)
        .expect("the restarted daemon removes the stale route");
    assert_eq!(lab.net.next_hops(v4).unwrap(), everyone);
    let log = lab.daemons[0].log_text();
    assert!(
        log.contains("VIP 10.112.0.100 announced (its route was in the table)"),
        "{log}"
    );
    assert!(
        log.contains("route blackhole 10.112.0.99/32 removed"),
        "{log}"
    );
}

/// Kills LB node lb2 (cable, bascule and BIRD) and waits until the router routes both
/// VIPs over lb1 and lb3 only, within BFD's detection time, then two more probe rounds of
/// each of `probers` (every flow has had traffic again). Returns when the cable was pulled.
fn kill_lb2(lab: &AnnouncingLab, probers: &[&Prober]) -> Instant {
    let [lb1, lb3] = [&lab.net.lbs[0], &lab.net.lbs[2]];
    let pulled = lab.kill_node(1).expect("kill lb2");
    for vip in vips() {
        let bound = (BFD_DETECTION + BFD_MARGIN).saturating_sub(pulled.elapsed());
        lab.net
            .wait_next_hops(vip, &lab.net.next_hops_of(&[lb1, lb3], vip), bound)
            .unwrap_or_else(|e| panic!("dead lb2 leaves within BFD time: {e:#}"));
        println!(
            "{vip}: dead lb2 out of the router's route after {:.2?}",
            pulled.elapsed()
        );
    }
    for prober in probers {
        prober
            .wait_rounds(2, Duration::from_secs(20))
            .expect("probe rounds");
    }
    pulled
}

/// Long-lived flows per service in the node-death tests.
const FLOWS: usize = 30;

/// Without `sync:`: the `mh` flows survive (every node has the same table), and `rr`
/// flows that ECMP moves off the dead node are scheduled again by another and some land
/// on another backend, which resets them: what sync is for.
#[test]
fn a_dead_bascule_node_leaves_within_bfd_time_and_its_flows_survive() {
    let bin = require_bascule();
    let lab = AnnouncingLab::new("scale-out-kill", &bin).expect("build the lab with bascule");
    let lb2 = &lab.net.lbs[1];
    let prober = long_lived_flows(&lab, FLOWS);
    let rr = long_lived_flows_to(&lab, echo_rr4(), FLOWS);
    let on_lb2 = lab.connections(lb2, "echo").unwrap();
    assert!(on_lb2 > 0, "no long-lived flow went through lb2");
    let rr_on_lb2 = lab.connections(lb2, "echo-rr").unwrap();

    let pulled = kill_lb2(&lab, &[&prober, &rr]);
    println!(
        "every long-lived connection had traffic again {:.2?} after lb2's death \
         ({on_lb2} of {FLOWS} were on lb2)",
        pulled.elapsed()
    );
    for i in 0..20 {
        let body = http_get(lab.net.client_netns(), web4(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("new connection {i} after lb2's death: {e:#}"));
        assert!(body.starts_with('b'), "{body}");
    }
    assert_all_survived("lb2 killed", &prober.stop());

    let records = rr.stop();
    let lost = records.iter().filter(|r| r.lost()).count();
    println!("rr without sync: {lost} of {FLOWS} lost ({rr_on_lb2} were on lb2)");
    assert!(
        lost > 0,
        "without sync every rr flow survived lb2's death ({rr_on_lb2} were on lb2): the lab \
         no longer shows what sync fixes"
    );
}

/// With `sync:` (unicast, each node naming the other two): every node holds every
/// node's `rr` flows, so when lb2 dies and ECMP moves its flows to lb1 and lb3, each
/// keeps its backend: all of them survive.
#[test]
fn with_sync_rr_flows_survive_a_dead_node() {
    let bin = require_bascule();
    let lab = AnnouncingLab::with_sync("scale-out-sync", &bin, Some(Transport::Unicast))
        .expect("build the lab with bascule and sync");
    let lb2 = &lab.net.lbs[1];
    let rr = long_lived_flows_to(&lab, echo_rr4(), FLOWS);
    let on_lb2 = lab.connections(lb2, "echo-rr").unwrap();
    assert!(on_lb2 > 0, "no rr flow went through lb2");
    lab.wait_synced("echo-rr", Duration::from_secs(5))
        .expect("every node applies the others' flows");

    let pulled = kill_lb2(&lab, &[&rr]);
    println!(
        "every rr connection had traffic again {:.2?} after lb2's death ({on_lb2} of \
         {FLOWS} were on lb2)",
        pulled.elapsed()
    );
    assert_all_survived("lb2 killed, rr with sync", &rr.stop());
}

#[test]
fn sigterm_withdraws_before_detaching_and_flows_on_the_node_survive() {
    let bin = require_bascule();
    let lab = AnnouncingLab::new("scale-out-term", &bin).expect("build the lab with bascule");
    let [lb1, lb2, lb3] = [&lab.net.lbs[0], &lab.net.lbs[1], &lab.net.lbs[2]];
    let prober = long_lived_flows(&lab, 30);
    assert!(
        lab.connections(lb3, "echo").unwrap() > 0,
        "no long-lived flow went through lb3"
    );

    lab.net
        .lab
        .signal(&lab.daemons[2], libc::SIGTERM)
        .expect("SIGTERM lb3's bascule");
    let termed = Instant::now();
    for vip in vips() {
        lab.net
            .wait_next_hops(vip, &lab.net.next_hops_of(&[lb1, lb2], vip), ROUTE_BOUND)
            .expect("lb3 withdraws on SIGTERM");
    }
    let withdrawn = termed.elapsed();
    assert!(
        lab.net.lab.exit_status(&lab.daemons[2]).is_none(),
        "lb3's bascule exited before its routes left the router"
    );
    println!("SIGTERM: lb3 out of the router's routes after {withdrawn:.2?}, still forwarding");
    let deadline = Instant::now() + WITHDRAW_GRACE + Duration::from_secs(5);
    while lab.net.lab.exit_status(&lab.daemons[2]).is_none() {
        assert!(Instant::now() < deadline, "lb3's bascule did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped = termed.elapsed();
    println!("SIGTERM: lb3's bascule stopped after {stopped:.2?}");
    assert!(
        stopped >= WITHDRAW_GRACE,
        "stopped before announce.withdraw_grace"
    );
    let log = lab.daemons[2].log_text();
    let withdrew = log
        .find("every VIP withdrawn")
        .expect("the withdrawal is logged");
    let detached = log
        .find("removing the datapath")
        .expect("the stop is logged");
    assert!(withdrew < detached, "{log}");
    prober
        .wait_rounds(3, Duration::from_secs(10))
        .expect("probe rounds");
    assert_all_survived("SIGTERM on lb3", &prober.stop());
}
