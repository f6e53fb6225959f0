//! Scale-out through real BIRD, before bascule takes part: LB nodes announce VIPs by
//! holding the blackhole routes bascule will hold (`ip route add blackhole VIP table 200
//! proto 186`, by hand here), BIRD announces them with the shipped `deploy/bird/`
//! configurations, and the router's routes show what a user would see: which LB nodes
//! get a VIP's traffic.

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
    topology::{VIP4, VIP6, VIP_PORT},
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
