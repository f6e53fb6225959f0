//! Health checks drive the datapath, end to end in the namespace lab: a backend whose HTTP
//! server stops leaves the pool within `interval x fall + timeout` while the other
//! backends' flows stay where they are (mh), and comes back after `rise`; `misc` dynamic
//! weights change the traffic split. The binary comes from `BASCULE_BIN`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    thread,
    time::{Duration, Instant},
};

use bascule_tests::{
    bascule_bin, http_get_from, http_server, require_root,
    topology::{vip4, VIP_PORT},
    Forwarding, Spawned, Topology, TopologySpec,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The checks of the first test: detection within INTERVAL x FALL + CHECK_TIMEOUT.
const INTERVAL: Duration = Duration::from_secs(1);
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
const RISE: u32 = 2;
/// What the bound leaves out: the daemon re-planning and writing the maps. The test's own
/// probing granularity (the last batch before the change was seen) is added on top.
const SLACK: Duration = Duration::from_millis(1000);
/// Client source ports whose flows are followed across the failure.
const PINNED_PORTS: u16 = 30;
/// New connections per probe batch, and clean batches in a row that show a backend out of
/// the pool: with three backends, missing one still in the pool by chance in 3 x 15
/// connections has probability (2/3)^45 < 1e-7.
const BATCH: usize = 15;
const CLEAN_BATCHES: usize = 3;
const CONFIRM: usize = 40;

/// The lab's dr config with `health_check` (YAML flow mapping) on every service.
fn config_with_check(topo: &Topology, check: &str) -> String {
    topo.lb_config(Forwarding::Dr).replace(
        "    forwarding: dr\n",
        &format!("    forwarding: dr\n    health_check: {check}\n"),
    )
}

/// Polls (bounded) until the daemon's log contains `needle`.
fn wait_for_log(daemon: &Spawned, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if daemon.log_text().contains(needle) {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no {needle:?} in the daemon's log within {limit:?}:\n{}",
        daemon.log_text()
    );
}

/// Where the daemon's log ends now: [`wait_for_log_after`] looks only past it.
fn log_mark(daemon: &Spawned) -> usize {
    daemon.log_text().len()
}

/// Polls (bounded) until the daemon's log, past `mark`, has `first` and, after it, one of
/// `then`.
fn wait_for_log_after(daemon: &Spawned, mark: usize, first: &str, then: &[&str], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let log = daemon.log_text();
        let recent = log.get(mark..).unwrap_or_default();
        if let Some(at) = recent.find(first) {
            if then.iter().any(|t| recent[at..].contains(t)) {
                return;
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "no {first:?} followed by {then:?} in the daemon's log (past byte {mark}) within {limit:?}:\n{}",
        daemon.log_text()
    );
}

/// What the daemon logs once the maps reflect a health change.
const DATAPATH_UPDATED: &str = "datapath updated for backend health";

/// `n` new connections to the VIP: backend name -> count, and how many failed.
fn spread(topo: &Topology, n: usize) -> (BTreeMap<String, usize>, usize) {
    let mut seen = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match topo.get(vip4(), TIMEOUT) {
            Ok(body) => *seen.entry(body).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    (seen, failed)
}

/// The backend each pinned client port reaches (same 5-tuple each time).
fn pinned(topo: &Topology) -> BTreeMap<u16, String> {
    let client = topo.client.ipv4().expect("client IPv4");
    (0..PINNED_PORTS)
        .filter_map(|i| {
            let port = 42_000 + i;
            let local = SocketAddr::new(client, port);
            http_get_from(&topo.client.netns, local, vip4(), TIMEOUT)
                .ok()
                .map(|body| (port, body))
        })
        .collect()
}

#[test]
fn a_backend_that_stops_answering_leaves_and_comes_back() {
    require_root();
    let bin = bascule_bin();
    let topo = Topology::new(
        "health-e2e",
        TopologySpec {
            lbs: 1,
            backends: 3,
        },
    )
    .expect("build the lab");
    let mut servers = topo.start_backend_servers().expect("start backend servers");
    let check = format!(
        "{{type: http_get, path: /, interval: {}s, timeout: {}s, rise: {RISE}, fall: {FALL}}}",
        INTERVAL.as_secs(),
        CHECK_TIMEOUT.as_secs()
    );
    let daemon = topo
        .serve(
            &bin,
            &topo.lbs[0],
            "bascule-health.yaml",
            &config_with_check(&topo, &check),
            vip4(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    for b in &topo.backends {
        let addr = SocketAddr::new(b.ipv4().unwrap(), VIP_PORT);
        wait_for_log(
            &daemon,
            &format!("web: backend {addr} is up"),
            Duration::from_secs(10),
        );
    }
    let (all, failed) = spread(&topo, 30);
    assert_eq!(failed, 0, "with every backend up: {all:?}");
    assert_eq!(all.len(), 3, "30 connections over three backends: {all:?}");

    // Flows pinned before the failure.
    let before = pinned(&topo);
    assert_eq!(
        before.len(),
        PINNED_PORTS as usize,
        "every pinned port answered"
    );
    assert!(
        before.values().any(|b| b == "b1") && before.values().any(|b| b != "b1"),
        "{before:?}"
    );

    // b1's HTTP server stops: its connections are refused until the check takes it out.
    let b1 = topo.backend("b1").unwrap().clone();
    let b1_addr = SocketAddr::new(b1.ipv4().unwrap(), VIP_PORT);
    servers.remove(0).stop();
    let stopped = Instant::now();
    let bound = INTERVAL * FALL + CHECK_TIMEOUT;
    // Out of the pool: CLEAN_BATCHES batches in a row with no failure and no b1; the time
    // is the start of the first of them.
    let mut clean_since: Option<Duration> = None;
    let mut clean = 0;
    let mut granularity = Duration::ZERO;
    let out_at = loop {
        let batch_start = stopped.elapsed();
        let (seen, failed) = spread(&topo, BATCH);
        if failed > 0 || seen.contains_key("b1") {
            granularity = stopped.elapsed() - batch_start;
        }
        if failed == 0 && !seen.contains_key("b1") {
            clean_since.get_or_insert(batch_start);
            clean += 1;
            if clean == CLEAN_BATCHES {
                break clean_since.unwrap();
            }
        } else {
            (clean_since, clean) = (None, 0);
        }
        assert!(
            stopped.elapsed() < bound + SLACK + Duration::from_secs(5),
            "b1 still gets new connections {:?} after its server stopped; log:\n{}",
            stopped.elapsed(),
            daemon.log_text()
        );
    };
    println!(
        "b1 out of the pool {out_at:?} after its server stopped (bound {bound:?}, probed every {granularity:?})"
    );
    assert!(
        out_at <= bound + SLACK + granularity,
        "b1 left the pool after {out_at:?}, later than interval x fall + timeout = {bound:?} (+{SLACK:?} to re-plan, +{granularity:?} between probes); log:\n{}",
        daemon.log_text()
    );
    let (seen, failed) = spread(&topo, CONFIRM);
    assert_eq!(failed, 0, "new connections fail after b1 left: {seen:?}");
    assert!(!seen.contains_key("b1"), "{seen:?}");
    assert!(
        daemon.log_text().contains(&format!(
            "web: backend {b1_addr} is down ({FALL} failed checks): connection refused by {b1_addr}"
        )),
        "no down line with the reason in the log:\n{}",
        daemon.log_text()
    );

    // The other backends' flows did not move; b1's moved to them.
    let during = pinned(&topo);
    assert_eq!(
        during.len(),
        PINNED_PORTS as usize,
        "a pinned port failed: {during:?}"
    );
    for (port, backend) in &before {
        if backend != "b1" {
            assert_eq!(
                &during[port], backend,
                "port {port}'s flow moved: {before:?} -> {during:?}"
            );
        } else {
            assert_ne!(during[port], "b1");
        }
    }

    // b1 answers again: back after `rise` checks.
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), VIP_PORT);
    let restarted = http_server(&b1.netns, any, "b1").expect("restart b1's server");
    let started = Instant::now();
    let back_bound = INTERVAL * RISE + CHECK_TIMEOUT;
    let mut granularity = Duration::ZERO;
    let back_at = loop {
        let batch_start = started.elapsed();
        let (seen, failed) = spread(&topo, BATCH);
        granularity = granularity.max(started.elapsed() - batch_start);
        assert_eq!(
            failed, 0,
            "a connection failed while b1 came back: {seen:?}"
        );
        if seen.contains_key("b1") {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < back_bound + SLACK + Duration::from_secs(5),
            "b1 gets no connection {:?} after its server restarted; log:\n{}",
            started.elapsed(),
            daemon.log_text()
        );
    };
    println!("b1 back in the pool {back_at:?} after its server restarted (bound {back_bound:?})");
    assert!(
        back_at <= back_bound + SLACK + granularity,
        "b1 came back after {back_at:?}, later than interval x rise + timeout = {back_bound:?} (+{SLACK:?} +{granularity:?})"
    );
    assert!(restarted.served() > 0);
    // Each pinned port opens a new connection per request (SYN after FIN: rescheduled, as
    // IPVS does on port reuse). With mh the ports that never were on b1 stay where they
    // were; those moved away from b1 during the failure return to it.
    let after = pinned(&topo);
    for (port, backend) in &during {
        let expected = if before[port] == "b1" {
            "b1"
        } else {
            backend.as_str()
        };
        assert_eq!(
            after[port], expected,
            "port {port}: on {} before, {backend} during the failure, {} after b1 came back",
            before[port], after[port]
        );
    }

    let (status, in_time) = topo.lab.terminate(&daemon).expect("stop bascule");
    assert!(
        in_time && status.success(),
        "bascule run: {status}; log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn misc_dynamic_weights_change_the_split() {
    require_root();
    let bin = bascule_bin();
    let topo = Topology::standard("health-misc").expect("build the lab");
    let _servers = topo.start_backend_servers().expect("start backend servers");
    // Each backend's exit code (weight + 2) is read from a file the test rewrites.
    let dir = topo.lab.dir().to_path_buf();
    let set_weight = |backend: &str, weight: u32| {
        let b = topo.backend(backend).unwrap();
        for a in &b.addrs {
            std::fs::write(dir.join(format!("exit-{a}")), format!("{}\n", weight + 2))
                .expect("write the weight file");
        }
    };
    set_weight("b1", 1);
    set_weight("b2", 1);
    let check = format!(
        "{{type: misc, dynamic: true, interval: 200ms, timeout: 2s, rise: 1, fall: 1, command: 'exit $(cat {}/exit-$BASCULE_BACKEND_ADDRESS)'}}",
        dir.display()
    );
    let daemon = topo
        .serve(
            &bin,
            &topo.lbs[0],
            "bascule-misc.yaml",
            &config_with_check(&topo, &check),
            vip4(),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    let b1 = SocketAddr::new(topo.backend("b1").unwrap().ipv4().unwrap(), VIP_PORT);
    let b2 = SocketAddr::new(topo.backend("b2").unwrap().ipv4().unwrap(), VIP_PORT);
    wait_for_log(
        &daemon,
        &format!("web: backend {b1} is up (1 successful checks, weight 1)"),
        Duration::from_secs(10),
    );
    wait_for_log_after(
        &daemon,
        0,
        &format!("web: backend {b2} is up (1 successful checks, weight 1)"),
        &["bascule ready", DATAPATH_UPDATED],
        Duration::from_secs(10),
    );

    // Equal weights: each gets a fair share of 100 new connections.
    let share = |n: usize| {
        let (seen, failed) = spread(&topo, n);
        assert_eq!(failed, 0, "{seen:?}");
        seen.get("b1").copied().unwrap_or(0)
    };
    let equal = share(100);
    println!("weights 1:1 -> b1 got {equal} of 100");
    assert!(
        (25..=75).contains(&equal),
        "weights 1:1 but b1 got {equal} of 100"
    );

    // b1 reports weight 9: about 90% of new connections.
    let mark = log_mark(&daemon);
    set_weight("b1", 9);
    wait_for_log_after(
        &daemon,
        mark,
        &format!("web: backend {b1} weight 9"),
        &[DATAPATH_UPDATED],
        Duration::from_secs(10),
    );
    let heavy = share(100);
    println!("weights 9:1 -> b1 got {heavy} of 100");
    assert!(heavy >= 75, "weights 9:1 but b1 got {heavy} of 100");

    // Weight 0: drained, no new connection (it stays up).
    let mark = log_mark(&daemon);
    set_weight("b1", 0);
    wait_for_log_after(
        &daemon,
        mark,
        &format!("web: backend {b1} weight 0"),
        &[DATAPATH_UPDATED],
        Duration::from_secs(10),
    );
    let drained = share(50);
    println!("weights 0:1 -> b1 got {drained} of 50");
    assert_eq!(
        drained, 0,
        "b1 has weight 0 but got {drained} of 50 new connections"
    );

    let (status, in_time) = topo.lab.terminate(&daemon).expect("stop bascule");
    assert!(
        in_time && status.success(),
        "bascule run: {status}; log:\n{}",
        daemon.log_text()
    );
}

#[test]
fn sorry_server_takes_over_when_every_backend_is_down() {
    require_root();
    let bin = bascule_bin();
    let topo = Topology::new(
        "health-sorry",
        TopologySpec {
            lbs: 1,
            backends: 3,
        },
    )
    .expect("build the lab");
    let mut servers = topo.start_backend_servers().expect("start backend servers");
    // b1 and b2 are the backends; b3 (which also holds the VIPs) is the sorry server.
    let b3 = topo.backend("b3").unwrap();
    let mut yaml = config_with_check(
        &topo,
        "{type: tcp, interval: 300ms, timeout: 300ms, rise: 1, fall: 1}",
    );
    for a in &b3.addrs {
        yaml = yaml.replace(&format!("      - address: {a}\n        weight: 1\n"), "");
        let sorry = SocketAddr::new(*a, VIP_PORT);
        let family_vip = if a.is_ipv4() {
            "10.112.0.100"
        } else {
            "fd00:112::100"
        };
        yaml = yaml.replace(
            &format!("    vip: {family_vip}\n"),
            &format!("    vip: {family_vip}\n    sorry_server: \"{sorry}\"\n"),
        );
    }
    assert_eq!(yaml.matches("sorry_server").count(), 2, "{yaml}");
    let daemon = topo
        .serve(&bin, &topo.lbs[0], "bascule-sorry.yaml", &yaml, vip4())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let b2 = SocketAddr::new(topo.backend("b2").unwrap().ipv4().unwrap(), VIP_PORT);
    // Up, and the datapath re-planned after it (until then the sorry server is the plan).
    wait_for_log_after(
        &daemon,
        0,
        &format!("web: backend {b2} is up"),
        &[DATAPATH_UPDATED],
        Duration::from_secs(10),
    );
    let (seen, failed) = spread(&topo, 20);
    assert_eq!(failed, 0, "{seen:?}");
    assert!(
        !seen.contains_key("b3"),
        "the sorry server took traffic while backends were up: {seen:?}"
    );

    // Both backends stop: every new connection goes to the sorry server.
    let mark = log_mark(&daemon);
    servers.remove(0).stop();
    servers.remove(0).stop();
    let sorry = SocketAddr::new(b3.ipv4().unwrap(), VIP_PORT);
    wait_for_log_after(
        &daemon,
        mark,
        &format!("web: no backend is up; new connections go to the sorry server {sorry}"),
        &[DATAPATH_UPDATED],
        Duration::from_secs(10),
    );
    let (seen, failed) = spread(&topo, 20);
    assert_eq!((failed, seen.get("b3").copied()), (0, Some(20)), "{seen:?}");

    // b2 comes back: the sorry server leaves.
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), VIP_PORT);
    let b2_host = topo.backend("b2").unwrap();
    let mark = log_mark(&daemon);
    let _b2 = http_server(&b2_host.netns, any, "b2").expect("restart b2's server");
    wait_for_log_after(
        &daemon,
        mark,
        &format!("web: backend {b2} is up"),
        &[DATAPATH_UPDATED],
        Duration::from_secs(10),
    );
    let (seen, failed) = spread(&topo, 20);
    assert_eq!((failed, seen.get("b2").copied()), (0, Some(20)), "{seen:?}");

    let (status, in_time) = topo.lab.terminate(&daemon).expect("stop bascule");
    assert!(
        in_time && status.success(),
        "bascule run: {status}; log:\n{}",
        daemon.log_text()
    );
}
