//! The `ecmp` group: the scale-out lab (`bascule_tests::scale_out`: a router running BIRD
//! with ECMP, three LB nodes each running bascule with `announce:` and BIRD with BGP and
//! BFD), one lab per round.
//!
//! - `announce.withdraw.seconds`: on lb3, every backend of the IPv4 VIP taken out (runtime
//!   weight 0 through the API, so that the instant is known; a failing health check adds
//!   its own detection time, `fall` x `interval`), from the answer to the last of those
//!   requests until the router has no path through lb3 for that VIP.
//! - `failover.ecmp.seconds`: lb2 killed (its cable pulled, bascule and BIRD SIGKILLed)
//!   while 30 long-lived `mh` connections run, until every one of them has had traffic
//!   again: two whole probing rounds (a 50 ms beat) after the death, so it overstates by
//!   at most one round.

use std::{
    net::IpAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use bascule_tests::{
    scale_out::{echo4, AnnouncingLab, ECHO_PORT, ECHO_RR_PORT},
    topology::{VIP4, VIP_PORT},
    traffic::{open_tcp_flows, Prober},
};

use super::figure::{Figure, GroupResult};

const ROUNDS: usize = 3;
const ROUTE_BOUND: Duration = Duration::from_secs(10);

pub fn figures(figures: &mut Vec<Figure>) -> GroupResult {
    if Command::new("bird").arg("--version").output().is_err() {
        return Err("BIRD 2 is not installed (`cargo xtask setup` installs bird2)".into());
    }
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_bascule"));
    let mut withdraw = Figure::new("announce.withdraw.seconds", "s");
    let mut failover = Figure::new("failover.ecmp.seconds", "s");
    for _ in 0..ROUNDS {
        let lab = AnnouncingLab::new("bench-ecmp", &bin).expect("build the scale-out lab");
        let took = last_backend_out(&lab);
        println!("announce.withdraw: lb3 out of the router's route {took:.3} s after its last IPv4 backend left");
        withdraw.samples.push(took);
        let took = node_death(&lab);
        println!("failover.ecmp: every long-lived connection had traffic again {took:.3} s after lb2's death");
        failover.samples.push(took);
    }
    figures.push(failover);
    figures.push(withdraw);
    Ok(())
}

/// Every IPv4 backend of lb3 at weight 0; the time until the router drops lb3 for the
/// IPv4 VIP. Their weights are reset afterwards, and lb3 is back in the route.
fn last_backend_out(lab: &AnnouncingLab) -> f64 {
    let lb3 = &lab.net.lbs[2];
    let vip = IpAddr::V4(VIP4);
    let others = lab
        .net
        .next_hops_of(&[&lab.net.lbs[0], &lab.net.lbs[1]], vip);
    let everyone = lab
        .net
        .next_hops_of(&lab.net.lbs.iter().collect::<Vec<_>>(), vip);
    let set = |weight: &str| {
        let services = [
            ("web", VIP_PORT),
            ("echo", ECHO_PORT),
            ("echo-rr", ECHO_RR_PORT),
        ];
        for (service, port) in services {
            for b in &lab.net.backends {
                let path = format!(
                    "/api/v1/backends/{service}/{}:{port}",
                    b.ipv4().expect("IPv4 backend"),
                );
                let (status, body) = lab
                    .api_with_body(lb3, "POST", &path, &format!("{{\"weight\": {weight}}}"))
                    .expect("set a runtime weight");
                assert_eq!(status, 200, "POST {path}: {body}");
            }
        }
    };
    set("0");
    let taken = Instant::now();
    lab.net
        .wait_next_hops(vip, &others, ROUTE_BOUND)
        .expect("lb3 withdraws the IPv4 VIP");
    let took = taken.elapsed().as_secs_f64();
    set("null");
    lab.net
        .wait_next_hops(vip, &everyone, ROUTE_BOUND)
        .expect("lb3 announces the IPv4 VIP again");
    took
}

/// lb2 killed under 30 long-lived connections: seconds until each had traffic again.
fn node_death(lab: &AnnouncingLab) -> f64 {
    let flows = open_tcp_flows(lab.net.client_netns(), echo4(), 30, Duration::from_secs(3))
        .expect("long-lived connections");
    let prober = Prober::start(flows, Duration::from_millis(50), Duration::from_secs(5))
        .expect("probe them");
    prober
        .wait_rounds(3, Duration::from_secs(10))
        .expect("probe rounds");
    let died = lab.kill_node(1).expect("kill lb2");
    prober
        .wait_rounds(2, Duration::from_secs(30))
        .expect("probe rounds after the death");
    let took = died.elapsed().as_secs_f64();
    let lost = prober.stop().iter().filter(|r| r.lost()).count();
    assert_eq!(lost, 0, "long-lived connections lost when lb2 died");
    took
}
