//! bascule balances real TCP connections in a namespace lab, in `dr` and `tun` mode, for
//! IPv4 and IPv6 VIPs. The binary comes from `BASCULE_BIN` (set by `cargo xtask test`).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bascule_tests::{
    bascule_bin, http_get_from, require_root,
    topology::{vip4, vip6},
    Forwarding, HttpServer, Spawned, Topology,
};

/// Connections per VIP, each new: with two backends, one left unused by chance has
/// probability 2^-39.
const REQUESTS: usize = 40;
/// Connections reusing one client port: all must reach the same backend.
const SAME_PORT_REQUESTS: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for several SYN retransmissions: a VIP that stays silent this long is dead.
const SILENCE: Duration = Duration::from_secs(1);
/// Readiness polling after `bascule run`: 50 tries of at most 200 ms.
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);

#[test]
fn dr_balances_ipv4_and_ipv6_connections_over_both_backends() {
    balances_over_both_backends(Forwarding::Dr);
}

#[test]
fn tun_balances_ipv4_and_ipv6_connections_over_both_backends() {
    balances_over_both_backends(Forwarding::Tun);
}

fn balances_over_both_backends(forwarding: Forwarding) {
    require_root();
    let bin = bascule_bin();
    let mode = forwarding.as_str();
    let topo = Topology::standard(&format!("e2e-{mode}")).expect("build the lab");
    let servers = topo.start_backend_servers().expect("start backend servers");
    let decaps: Vec<Spawned> = match forwarding {
        Forwarding::Dr => Vec::new(),
        Forwarding::Tun => topo
            .backends
            .iter()
            .map(|b| topo.start_decap(&bin, b).expect("start bascule decap"))
            .collect(),
    };

    for vip in [vip4(), vip6()] {
        let result = topo.get(vip, SILENCE);
        assert!(
            result.is_err(),
            "{vip} answered before bascule ran: {result:?}"
        );
    }

    let config = topo.write_lb_config(forwarding).expect("write config");
    let daemon = topo
        .start_bascule(&bin, &topo.lbs[0], &config)
        .expect("start bascule run");
    let mut daemons = vec![&daemon];
    daemons.extend(decaps.iter());

    for vip in [vip4(), vip6()] {
        topo.wait_for_vip(vip, &daemons, READY_ATTEMPTS, READY_INTERVAL)
            .unwrap_or_else(|err| panic!("{mode}: {err:#}"));
        let spread = spread_of_new_connections(&topo, &servers, vip);
        println!("{mode} {vip}: {REQUESTS} connections -> {spread:?}");
        for server in &servers {
            assert!(
                spread.get(server.name()).copied().unwrap_or(0) > 0,
                "{mode} {vip}: backend {} got none of {REQUESTS} connections: {spread:?}",
                server.name()
            );
        }
        let backend = same_client_port_same_backend(&topo, vip);
        println!(
            "{mode} {vip}: {SAME_PORT_REQUESTS} connections from one client port -> {backend}"
        );
    }

    let (status, in_time) = topo.lab.terminate(&daemon).expect("stop bascule");
    assert!(
        in_time,
        "bascule run ignored SIGTERM for 5 s; log:\n{}",
        daemon.log_text()
    );
    assert!(
        status.success(),
        "bascule run exited with {status} on SIGTERM; log:\n{}",
        daemon.log_text()
    );
    for vip in [vip4(), vip6()] {
        let result = topo.get(vip, SILENCE);
        assert!(
            result.is_err(),
            "{vip} still answered after bascule stopped (XDP left attached?): {result:?}"
        );
    }
}

/// Sends REQUESTS new connections to `vip`; every one must be answered, and each backend
/// must have served exactly the answers the client saw from it. Returns body -> count.
fn spread_of_new_connections(
    topo: &Topology,
    servers: &[HttpServer],
    vip: SocketAddr,
) -> BTreeMap<String, usize> {
    let before = served_counts(servers);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..REQUESTS {
        match topo.get(vip, TIMEOUT) {
            Ok(body) => *seen.entry(body).or_default() += 1,
            Err(err) => failures.push(format!("request {i}: {err:#}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{vip}: {} of {REQUESTS} requests failed (answered: {seen:?}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    let after = served_counts(servers);
    for ((server, before), after) in servers.iter().zip(before).zip(after) {
        assert_eq!(
            after - before,
            seen.get(server.name()).copied().unwrap_or(0),
            "{vip}: backend {} served {} requests but the client saw {seen:?}",
            server.name(),
            after - before
        );
    }
    seen
}

/// Connections with the same 5-tuple (fixed client port) all reach one backend.
fn same_client_port_same_backend(topo: &Topology, vip: SocketAddr) -> String {
    let client: IpAddr = match vip {
        SocketAddr::V4(_) => topo.client.ipv4(),
        SocketAddr::V6(_) => topo.client.ipv6(),
    }
    .expect("client has both families");
    let local = SocketAddr::new(client, 41_000);
    let bodies: Vec<String> = (0..SAME_PORT_REQUESTS)
        .map(|i| {
            http_get_from(&topo.client.netns, local, vip, TIMEOUT)
                .unwrap_or_else(|err| panic!("{local} -> {vip}, connection {i}: {err:#}"))
        })
        .collect();
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "{local} -> {vip}: one 5-tuple reached several backends: {bodies:?}"
    );
    bodies[0].clone()
}

/// Requests each server has answered (counted before it closes the connection, so a
/// request the client saw answered is already counted).
fn served_counts(servers: &[HttpServer]) -> Vec<usize> {
    servers.iter().map(HttpServer::served).collect()
}
