//! Connection thresholds (`max_connections` / `min_connections`) with real, long-lived TCP
//! connections in a namespace lab: a backend at its threshold takes no new connection
//! until enough of its own close; a service with several ports balances them with one
//! table and counts them as one. The binary comes from `BASCULE_BIN`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bascule_tests::{
    bascule_bin,
    metrics::{self, promtool_accepts},
    require_root,
    topology::VIP4,
    traffic::{open_tcp_flows, tcp_name_server, Flow},
    Spawned, Topology,
};

const TIMEOUT: Duration = Duration::from_secs(2);
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);
const PORT: u16 = 7100;

fn start(topo: &Topology, file: &str, yaml: &str) -> Spawned {
    let lb = &topo.lbs[0];
    let path = topo.write_config(file, yaml).expect("config");
    let daemon = topo
        .start_bascule(&bascule_bin(), lb, &path)
        .expect("start bascule run");
    topo.wait_ready(lb, &daemon, READY_ATTEMPTS, READY_INTERVAL)
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Every backend takes flows (a `dr` backend waits for its MAC address).
    for _ in 0..READY_ATTEMPTS {
        let (_, body) = topo
            .api(lb, "GET", "/api/v1/services", None)
            .expect("GET /api/v1/services");
        let snapshot: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let all_active = snapshot["services"].as_array().is_some_and(|list| {
            list.iter().all(|s| {
                s["backends"]
                    .as_array()
                    .is_some_and(|b| b.iter().all(|b| b["active"] == true))
            })
        });
        if all_active {
            return daemon;
        }
        std::thread::sleep(READY_INTERVAL);
    }
    panic!("backends never all active:\n{}", daemon.log_text());
}

/// Opens `n` connections one after another, each answering once; who answered each.
fn connect(topo: &Topology, dst: SocketAddr, n: usize) -> Vec<(String, Flow)> {
    let flows = open_tcp_flows(&topo.client.netns, dst, n, TIMEOUT)
        .unwrap_or_else(|e| panic!("{dst}: {e:#}"));
    flows
        .into_iter()
        .map(|mut f| {
            let who = f
                .round_trip(TIMEOUT)
                .unwrap_or_else(|e| panic!("{dst} from {}: {e:#}", f.local()));
            (who, f)
        })
        .collect()
}

fn count(answers: &[(String, Flow)]) -> BTreeMap<String, usize> {
    answers.iter().fold(BTreeMap::new(), |mut m, (who, _)| {
        *m.entry(who.clone()).or_insert(0) += 1;
        m
    })
}

#[test]
fn a_backend_at_max_connections_takes_none_until_below_min_connections() {
    require_root();
    let topo = Topology::standard("thresh").expect("build the lab");
    let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), PORT);
    let _servers: Vec<_> = topo
        .backends
        .iter()
        .map(|b| tcp_name_server(&b.netns, any, &b.role).expect("server"))
        .collect();
    let (b1, b2) = (&topo.backends[0], &topo.backends[1]);
    // mh, b1 eight times b2's weight: without its threshold b1 would take about 18 of 20.
    let yaml = format!(
        "node:\n  interfaces:\n    - name: eth0\nservices:\n  - name: capped\n    vip: {VIP4}\n    port: {PORT}\n    backends:\n      - {{ address: {}, weight: 8, max_connections: 5, min_connections: 2 }}\n      - {{ address: {} }}\n",
        b1.ipv4().unwrap(),
        b2.ipv4().unwrap()
    );
    let daemon = start(&topo, "thresh.yaml", &yaml);
    let vip = SocketAddr::new(IpAddr::V4(VIP4), PORT);
    let first = connect(&topo, vip, 20);
    let seen = count(&first);
    println!("20 connections: {seen:?}");
    assert_eq!(
        seen.get("b1"),
        Some(&5),
        "b1 holds max_connections: {seen:?}"
    );
    assert_eq!(seen.get("b2"), Some(&15), "{seen:?}");
    let series = format!(
        "{{service=\"capped\",backend=\"{}:{PORT}\"}}",
        b1.ipv4().unwrap()
    );
    // One snapshot answers the API for 200 ms: the one polled before the connections
    // must not answer this.
    std::thread::sleep(Duration::from_millis(300));
    let text = metrics::scrape(&topo);
    assert_eq!(
        metrics::value(&text, &format!("bascule_backend_overloaded{series}")),
        Some(1)
    );
    assert_eq!(
        metrics::value(
            &text,
            &format!("bascule_backend_active_connections{series}")
        ),
        Some(5)
    );

    // Four of b1's five close: one left, below min_connections (2). It takes new
    // connections again, until it holds 5 once more.
    let (mut on_b1, rest): (Vec<_>, Vec<_>) = first.into_iter().partition(|(w, _)| w == "b1");
    let kept = on_b1.pop().expect("one of b1's");
    drop(on_b1);
    std::thread::sleep(Duration::from_millis(300));
    let second = connect(&topo, vip, 20);
    let again = count(&second);
    println!("20 more after 4 closed: {again:?}");
    assert_eq!(again.get("b1"), Some(&4), "b1 back up to 5: {again:?}");
    let text = metrics::scrape(&topo);
    assert_eq!(
        metrics::value(&text, &format!("bascule_backend_overloads_total{series}")),
        Some(2),
        "{text}"
    );
    promtool_accepts(&text);
    drop((kept, rest, second));
    let (status, in_time) = topo.lab.terminate(&daemon).unwrap();
    assert!(in_time && status.success(), "{}", daemon.log_text());
}

#[test]
fn a_service_with_several_ports_balances_them_all_with_one_table() {
    require_root();
    let topo = Topology::standard("groups").expect("build the lab");
    let ports = [80, 8000, 8001, 8002];
    let mut servers = Vec::new();
    for b in &topo.backends {
        for port in ports {
            let any = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            servers.push(tcp_name_server(&b.netns, any, &b.role).expect("server"));
        }
    }
    let yaml = format!(
        "node:\n  interfaces:\n    - name: eth0\nservices:\n  - name: group\n    vip: {VIP4}\n    ports: [80, \"8000-8002\"]\n    backends:\n      - {{ address: {} }}\n      - {{ address: {} }}\n",
        topo.backends[0].ipv4().unwrap(),
        topo.backends[1].ipv4().unwrap()
    );
    let daemon = start(&topo, "groups.yaml", &yaml);
    let mut flows = Vec::new();
    for port in ports {
        let answers = connect(&topo, SocketAddr::new(IpAddr::V4(VIP4), port), 12);
        let seen = count(&answers);
        println!("port {port}: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 12, "port {port}: {seen:?}");
        flows.extend(answers);
    }
    let all = count(&flows);
    assert_eq!(all.len(), 2, "both backends serve the ports: {all:?}");
    // One service: one set of counters for the four ports.
    std::thread::sleep(Duration::from_millis(300));
    let text = metrics::scrape(&topo);
    assert_eq!(
        metrics::value(
            &text,
            "bascule_service_connections_total{service=\"group\"}"
        ),
        Some(48),
        "{text}"
    );
    assert_eq!(
        text.matches("bascule_service_connections_total{").count(),
        1
    );
    drop(flows);
    let (status, in_time) = topo.lab.terminate(&daemon).unwrap();
    assert!(in_time && status.success(), "{}", daemon.log_text());
}
