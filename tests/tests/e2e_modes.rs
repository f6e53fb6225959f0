//! `nat`, `local` (with a `dr` neighbour: the director is also a real server) and
//! persistence, with real TCP connections in a namespace lab. The binary comes from
//! `BASCULE_BIN` (set by `cargo xtask test`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bascule_tests::{
    bascule_bin, http_get_from, http_server, lab::ip, topology::vip4, topology::vip6, HttpServer,
    Topology,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);

/// Full checksums on the wire: with checksum offload, veth hands partial checksums along
/// and no receiver verifies them; without it, the backend's and the client's stacks check
/// every checksum the LB rewrote.
fn no_checksum_offload(topo: &Topology, ns: &str) {
    topo.lab
        .exec_ok(ns, &["ethtool", "-K", "eth0", "tx", "off"])
        .expect("ethtool -K eth0 tx off");
    let _ = topo;
}

/// Waits (bounded) until the daemon says it is ready: here the VIP is also served by the
/// LB's own kernel, so an answer from the VIP proves nothing.
fn wait_ready(daemon: &bascule_tests::Spawned) {
    for _ in 0..READY_ATTEMPTS {
        if daemon.log_text().contains("bascule ready") {
            return;
        }
        std::thread::sleep(READY_INTERVAL);
    }
    panic!("bascule never got ready:\n{}", daemon.log_text());
}

fn spread(topo: &Topology, vip: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let body = topo
            .get(vip, TIMEOUT)
            .unwrap_or_else(|e| panic!("{vip}: request {i}: {e:#}"));
        *seen.entry(body).or_insert(0) += 1;
    }
    seen
}

#[test]
fn nat_rewrites_both_ways_with_replies_routed_through_the_lb() {
    let bin = bascule_bin();
    let topo = Topology::standard("e2e-nat").expect("build the lab");
    // Backends listen on 8080 (the service is on 80: the port is rewritten too) and send
    // their replies to the client through the LB, as NAT requires.
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 8080);
    let servers: Vec<HttpServer> = topo
        .backends
        .iter()
        .map(|b| http_server(&b.netns, any, &b.role).unwrap())
        .collect();
    let lb = &topo.lbs[0];
    let client4 = topo.client.ipv4().unwrap().to_string();
    let client6 = topo.client.ipv6().unwrap().to_string();
    for b in &topo.backends {
        ip(&[
            "-n",
            &b.netns,
            "route",
            "add",
            &format!("{client4}/32"),
            "via",
            &lb.ipv4().unwrap().to_string(),
        ])
        .unwrap();
        ip(&[
            "-n",
            &b.netns,
            "-6",
            "route",
            "add",
            &format!("{client6}/128"),
            "via",
            &lb.ipv6().unwrap().to_string(),
        ])
        .unwrap();
        no_checksum_offload(&topo, &b.netns);
    }
    no_checksum_offload(&topo, &topo.client.netns);
    let mut yaml = String::from("node:\n  interfaces:\n    - { name: eth0 }\nservices:\n");
    for (name, vip) in [("web", vip4()), ("web6", vip6())] {
        yaml.push_str(&format!(
            "  - name: {name}\n    vip: {}\n    port: 80\n    forwarding: nat\n    backends:\n",
            vip.ip()
        ));
        for b in &topo.backends {
            let addr = if vip.is_ipv4() { b.ipv4() } else { b.ipv6() }.unwrap();
            yaml.push_str(&format!("      - {{ address: \"{addr}\", port: 8080 }}\n"));
        }
    }
    let config = topo.write_config("nat.yaml", &yaml).unwrap();
    let daemon = topo
        .start_bascule(&bin, lb, &config)
        .expect("start bascule");
    for vip in [vip4(), vip6()] {
        topo.wait_for_vip(vip, &[&daemon], READY_ATTEMPTS, READY_INTERVAL)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let seen = spread(&topo, vip, 30);
        println!("nat {vip}: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 30);
        assert!(
            seen.len() == 2,
            "{vip}: both backends must answer: {seen:?}"
        );
    }
    let served: usize = servers.iter().map(HttpServer::served).sum();
    assert!(
        served >= 60,
        "backends served {served} requests on port 8080"
    );
    let (status, in_time) = topo.lab.terminate(&daemon).unwrap();
    assert!(
        in_time && status.success(),
        "bascule stopped with {status}:\n{}",
        daemon.log_text()
    );
}

#[test]
fn local_forwarding_serves_from_the_lb_itself_beside_a_dr_backend() {
    let bin = bascule_bin();
    let topo = Topology::standard("e2e-local").expect("build the lab");
    let lb = &topo.lbs[0];
    // The LB is also a real server: it holds the VIP on lo and answers "lb1".
    ip(&[
        "-n",
        &lb.netns,
        "addr",
        "add",
        &format!("{}/32", vip4().ip()),
        "dev",
        "lo",
    ])
    .unwrap();
    let _lb_server = http_server(
        &lb.netns,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80),
        "lb1",
    )
    .unwrap();
    let _servers = topo.start_backend_servers().unwrap();
    let yaml = format!(
        "node:\n  interfaces:\n    - {{ name: eth0 }}\nservices:\n  - name: web\n    vip: {}\n    port: 80\n    backends:\n      - {{ address: {}, forwarding: local }}\n      - {{ address: {} }}\n",
        vip4().ip(),
        lb.ipv4().unwrap(),
        topo.backends[0].ipv4().unwrap(),
    );
    let config = topo.write_config("local.yaml", &yaml).unwrap();
    let daemon = topo
        .start_bascule(&bin, lb, &config)
        .expect("start bascule");
    wait_ready(&daemon);
    let seen = spread(&topo, vip4(), 40);
    println!("local + dr: {seen:?}");
    assert!(
        seen.get("lb1").copied().unwrap_or(0) > 0,
        "the LB's own server got nothing: {seen:?}"
    );
    assert!(
        seen.get("b1").copied().unwrap_or(0) > 0,
        "the dr backend got nothing: {seen:?}"
    );
    assert_eq!(seen.values().sum::<usize>(), 40);
    let (status, in_time) = topo.lab.terminate(&daemon).unwrap();
    assert!(in_time && status.success(), "{}", daemon.log_text());
}

#[test]
fn persistence_sends_every_connection_of_a_client_to_one_backend() {
    let bin = bascule_bin();
    let topo = Topology::standard("e2e-persist").expect("build the lab");
    let _servers = topo.start_backend_servers().unwrap();
    let mut yaml = String::from("node:\n  interfaces:\n    - { name: eth0 }\nservices:\n");
    yaml.push_str(&format!(
        "  - name: web\n    vip: {}\n    port: 80\n    persistence: 300s\n    backends:\n",
        vip4().ip()
    ));
    for b in &topo.backends {
        yaml.push_str(&format!("      - {{ address: {} }}\n", b.ipv4().unwrap()));
    }
    let daemon = topo
        .serve(&bin, &topo.lbs[0], "persist.yaml", &yaml, vip4())
        .unwrap_or_else(|e| panic!("{e:#}"));
    // New connections from many source ports: without persistence Maglev would spread
    // them (2^-29 odds of 30 landing on one backend by chance).
    let client = topo.client.ipv4().unwrap();
    let bodies: BTreeMap<String, usize> = (0..30u16).fold(BTreeMap::new(), |mut m, i| {
        let body = http_get_from(
            &topo.client.netns,
            SocketAddr::new(client, 42_000 + i),
            vip4(),
            TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        *m.entry(body).or_insert(0) += 1;
        m
    });
    println!("persistence: {bodies:?}");
    assert_eq!(
        bodies.len(),
        1,
        "one client reached several backends: {bodies:?}"
    );
    let (status, in_time) = topo.lab.terminate(&daemon).unwrap();
    assert!(in_time && status.success(), "{}", daemon.log_text());
}
