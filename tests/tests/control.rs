//! The control plane under real traffic, in namespace labs: reload applies only the
//! difference, a restart (even after SIGKILL) adopts the pinned datapath without losing a
//! flow, `/metrics` counts exactly what was sent, `simulate` names the backend that
//! actually answers, the API wants its token. The binary comes from `BASCULE_BIN`.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bascule_tests::{
    bascule_bin, http_get_from, http_request, in_netns,
    metrics::{self, promtool_accepts},
    require_root,
    topology::{vip4, vip6, VIP4},
    traffic::{
        open_tcp_flows, open_udp_flows, tcp_name_server, udp_name_server, FlowRecord, Prober,
    },
    Forwarding, Host, Spawned, Topology, TopologySpec,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Readiness polling: 50 tries 200 ms apart.
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);
/// The prober's beat, and how long one exchange may take before the flow counts as broken.
const BEAT: Duration = Duration::from_millis(50);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);
/// Ceiling for waiting on a number of prober rounds.
const ROUNDS_LIMIT: Duration = Duration::from_secs(30);

/// A service of the lab's IPv4 VIP, direct routing to every backend's IPv4 address.
#[derive(Clone, Copy)]
struct Svc {
    name: &'static str,
    port: u16,
    protocol: &'static str,
}

const fn tcp(name: &'static str, port: u16) -> Svc {
    Svc {
        name,
        port,
        protocol: "tcp",
    }
}

const fn udp(name: &'static str, port: u16) -> Svc {
    Svc {
        name,
        port,
        protocol: "udp",
    }
}

/// The reload test's services.
const A: Svc = tcp("a", 7001);
const B: Svc = tcp("b", 7002);
const C: Svc = tcp("c", 7003);

fn config_yaml(backends: &[Host], services: &[Svc], extra: &str) -> String {
    let mut y =
        String::from("node:\n  interfaces:\n    - name: eth0\nconntrack:\n  max_entries: 4096\n");
    y.push_str(extra);
    y.push_str("services:\n");
    for s in services {
        let _ = write!(
            y,
            "  - name: {}\n    vip: {VIP4}\n    port: {}\n    protocol: {}\n    forwarding: dr\n    backends:\n",
            s.name, s.port, s.protocol
        );
        for b in backends {
            let _ = writeln!(y, "      - address: {}", b.ipv4().expect("IPv4"));
        }
    }
    y
}

fn vip_port(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP4), port)
}

fn start(topo: &Topology, config: &Path, extra: &[&str]) -> Spawned {
    let lb = &topo.lbs[0];
    let daemon = topo
        .start_bascule_with(&bascule_bin(), lb, config, extra)
        .expect("start bascule run");
    topo.wait_ready(lb, &daemon, READY_ATTEMPTS, READY_INTERVAL)
        .unwrap_or_else(|e| panic!("{e:#}"));
    daemon
}

/// Runs the bascule CLI in the LB's namespace: (exit code, stdout, stderr).
fn cli(topo: &Topology, args: &[&str]) -> (i32, String, String) {
    let bin = bascule_bin();
    let mut all = vec![bin.to_str().expect("UTF-8 path")];
    all.extend_from_slice(args);
    let out = topo
        .lab
        .exec(&topo.lbs[0].netns, &all)
        .expect("run bascule");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_flow_lost(what: &str, records: &[FlowRecord]) {
    let lost: Vec<&FlowRecord> = records.iter().filter(|r| r.lost()).collect();
    assert!(
        lost.is_empty(),
        "{what}: {} of {} established flows lost:\n{lost:#?}",
        lost.len(),
        records.len()
    );
}

#[test]
fn reload_applies_only_the_difference_and_refuses_a_broken_config() {
    require_root();
    let topo = Topology::standard("reload").expect("build the lab");
    let mut servers = Vec::new();
    for b in &topo.backends {
        for port in [7001, 7002, 7003] {
            let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), port);
            servers.push(tcp_name_server(&b.netns, any, &b.role).expect("server"));
        }
    }
    let path = topo
        .write_config("reload.yaml", &config_yaml(&topo.backends, &[A, C], ""))
        .expect("config");
    let daemon = start(&topo, &path, &[]);
    let client = topo.client.netns.clone();
    let answers = |port: u16| {
        open_tcp_flows(&client, vip_port(port), 1, Duration::from_millis(700))
            .and_then(|mut f| f[0].round_trip(EXCHANGE_TIMEOUT))
    };
    assert!(answers(7003).is_ok(), "service c answers before the reload");
    assert!(answers(7002).is_err(), "service b is not configured yet");

    let flows = open_tcp_flows(&client, vip_port(7001), 8, TIMEOUT).expect("flows to a");
    let prober = Prober::start(flows, BEAT, EXCHANGE_TIMEOUT).expect("prober");
    prober.wait_rounds(5, ROUNDS_LIMIT).unwrap();

    // B added, C removed: A untouched.
    std::fs::write(&path, config_yaml(&topo.backends, &[A, B], "")).unwrap();
    let (code, out, err) = cli(&topo, &["reload"]);
    assert_eq!(code, 0, "bascule reload: {out}{err}\n{}", daemon.log_text());
    assert_eq!(
        out.trim(),
        "reloaded: services added: b; removed: c; changed: none; unchanged: 1"
    );
    prober.wait_rounds(5, ROUNDS_LIMIT).unwrap();
    assert!(
        answers(7002).is_ok(),
        "service b answers after the reload; log:\n{}",
        daemon.log_text()
    );
    assert!(answers(7003).is_err(), "service c is gone after the reload");

    // A broken file is refused with its location; everything keeps running.
    let good = std::fs::read_to_string(&path).unwrap();
    let broken = good.replacen(
        "      - address: 10.111.0.11\n",
        "      - address: 10.111.0.11\n        weight: 70000\n",
        1,
    );
    std::fs::write(&path, &broken).unwrap();
    let (code, out, err) = cli(&topo, &["reload"]);
    assert_eq!(code, 1, "a broken reload must fail: {out}{err}");
    let line = 1 + broken
        .lines()
        .position(|l| l == "        weight: 70000")
        .expect("the broken line");
    let expected = format!(
        "{}:{line}:17: services[0].backends[0].weight: 70000 is out of range, expected 0..=65535",
        path.display()
    );
    assert!(
        err.contains(&expected),
        "bascule reload stderr should carry `{expected}`:\n{err}"
    );
    assert!(
        answers(7002).is_ok(),
        "b still answers after a refused reload"
    );
    let m = metrics::scrape(&topo);
    assert_eq!(
        metrics::value(&m, "bascule_config_reloads_total{result=\"error\"}"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        metrics::value(&m, "bascule_config_reloads_total{result=\"ok\"}"),
        Some(1),
        "{m}"
    );
    let (_, status_json) = topo
        .api(&topo.lbs[0], "GET", "/api/v1/services", None)
        .unwrap();
    assert!(
        status_json.contains("weight: 70000 is out of range"),
        "the API reports the refusal: {status_json}"
    );

    // So is a VRRP instance this node could not run (checked before anything changes,
    // not found out after the services were already applied).
    let no_link = config_yaml(
        &topo.backends,
        &[A, B],
        "vrrp:\n  - name: VI_9\n    interface: eth9\n    virtual_router_id: 59\n    virtual_addresses: [10.0.9.100/24]\n",
    );
    std::fs::write(&path, &no_link).unwrap();
    let (code, out, err) = cli(&topo, &["reload"]);
    assert_eq!(
        code, 1,
        "a reload with an impossible VRRP instance must fail: {out}{err}"
    );
    assert!(
        err.contains("vrrp[0].interface: no interface \"eth9\" on this node"),
        "bascule reload names the instance's missing interface:\n{err}"
    );
    assert!(answers(7002).is_ok(), "b still answers");
    assert_eq!(
        metrics::value(
            &metrics::scrape(&topo),
            "bascule_config_reloads_total{result=\"error\"}"
        ),
        Some(2)
    );

    // SIGHUP reloads too: C comes back.
    std::fs::write(&path, config_yaml(&topo.backends, &[A, B, C], "")).unwrap();
    topo.lab.signal(&daemon, libc::SIGHUP).expect("SIGHUP");
    let mut back = false;
    for _ in 0..25 {
        if answers(7003).is_ok() {
            back = true;
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        back,
        "service c is back after SIGHUP; log:\n{}",
        daemon.log_text()
    );
    assert_eq!(
        metrics::value(
            &metrics::scrape(&topo),
            "bascule_config_reloads_total{result=\"ok\"}"
        ),
        Some(2)
    );

    prober.wait_rounds(5, ROUNDS_LIMIT).unwrap();
    let rounds = prober.rounds();
    let records = prober.stop();
    println!(
        "reload: {} flows of a over {rounds} rounds, backends {:?}",
        records.len(),
        records
            .iter()
            .map(|r| r.backends.join(","))
            .collect::<Vec<_>>()
    );
    assert_no_flow_lost("service a across three reloads", &records);
    drop(servers);
}

#[test]
fn restart_after_sigkill_adopts_the_datapath_and_loses_no_flow() {
    require_root();
    // Three backends; the daemon starts with two, and comes back with the third added:
    // had the connection table been lost, about a third of the flows would move to it.
    let topo = Topology::new(
        "restart",
        TopologySpec {
            lbs: 1,
            backends: 3,
        },
    )
    .expect("build the lab");
    let mut servers = Vec::new();
    for b in &topo.backends {
        let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 7001);
        servers.push(tcp_name_server(&b.netns, any, &b.role).expect("tcp server"));
        servers.push(udp_name_server(&b.netns, vip_port(7004), &b.role).expect("udp server"));
    }
    let services = [tcp("t", 7001), udp("u", 7004)];
    let path = topo
        .write_config(
            "restart.yaml",
            &config_yaml(&topo.backends[..2], &services, ""),
        )
        .expect("config");
    let first = start(&topo, &path, &[]);
    let client = topo.client.netns.clone();
    let mut flows = open_tcp_flows(&client, vip_port(7001), 8, TIMEOUT).expect("tcp flows");
    flows.extend(open_udp_flows(&client, vip_port(7004), 8).expect("udp flows"));
    let prober = Prober::start(flows, BEAT, EXCHANGE_TIMEOUT).expect("prober");
    prober.wait_rounds(5, ROUNDS_LIMIT).unwrap();

    // A crash: the datapath keeps forwarding alone, old flows and new ones.
    topo.lab.kill(&first).expect("SIGKILL");
    prober.wait_rounds(10, ROUNDS_LIMIT).unwrap();
    let mut fresh = open_tcp_flows(&client, vip_port(7001), 1, TIMEOUT)
        .expect("a new connection while no daemon runs");
    fresh[0]
        .round_trip(EXCHANGE_TIMEOUT)
        .expect("a new connection is answered while no daemon runs");

    std::fs::write(&path, config_yaml(&topo.backends, &services, "")).unwrap();
    let second = start(&topo, &path, &["--keep-datapath"]);
    assert!(
        second.log_text().contains("adopted the pinned datapath"),
        "the second daemon adopts:\n{}",
        second.log_text()
    );
    let (code, json, err) = cli(&topo, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(json.contains("\"adopted\": true"), "{json}");
    prober.wait_rounds(10, ROUNDS_LIMIT).unwrap();

    // `--keep-datapath` + SIGTERM: the same, by design.
    let (status, in_time) = topo.lab.terminate(&second).expect("SIGTERM");
    assert!(
        in_time && status.success(),
        "{status}: {}",
        second.log_text()
    );
    prober.wait_rounds(10, ROUNDS_LIMIT).unwrap();
    let third = start(&topo, &path, &[]);
    assert!(third.log_text().contains("adopted the pinned datapath"));
    prober.wait_rounds(10, ROUNDS_LIMIT).unwrap();
    // New flows do use the third backend.
    let mut newcomers = open_tcp_flows(&client, vip_port(7001), 24, TIMEOUT).expect("new flows");
    let answered: Vec<String> = newcomers
        .iter_mut()
        .map(|f| {
            f.round_trip(EXCHANGE_TIMEOUT)
                .expect("a new flow is answered")
        })
        .collect();
    assert!(
        answered.iter().any(|b| b == "b3"),
        "no new flow reached the added backend b3: {answered:?}"
    );

    let rounds = prober.rounds();
    let records = prober.stop();
    let lost = records.iter().filter(|r| r.lost()).count();
    println!(
        "restart: {} established flows (8 tcp, 8 udp), {rounds} rounds across SIGKILL and a kept stop, {lost} lost",
        records.len()
    );
    assert_no_flow_lost("SIGKILL and restart", &records);

    // A plain stop removes everything: the VIP goes silent, nothing stays pinned.
    let (status, in_time) = topo.lab.terminate(&third).expect("SIGTERM");
    assert!(
        in_time && status.success(),
        "{status}: {}",
        third.log_text()
    );
    assert!(
        open_tcp_flows(&client, vip_port(7001), 1, Duration::from_secs(1)).is_err(),
        "the VIP still answers after a plain stop"
    );
    let inode = netns_inode(&topo.lbs[0].netns);
    assert!(
        !Path::new(&format!("/sys/fs/bpf/bascule/{inode}")).exists(),
        "pins left after a plain stop"
    );
    drop(servers);
}

fn netns_inode(ns: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{ns}"))
        .expect("netns file")
        .ino()
}

#[test]
fn metrics_count_exactly_what_was_sent_and_pass_promtool() {
    require_root();
    const PACKETS: u64 = 50;
    const PAYLOAD: usize = 100;
    /// Ethernet (14) + IPv4 (20) + UDP (8) headers: the datapath counts whole frames.
    const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
    let topo = Topology::standard("metrics").expect("build the lab");
    let servers: Vec<_> = topo
        .backends
        .iter()
        .map(|b| udp_name_server(&b.netns, vip_port(7005), &b.role).expect("udp server"))
        .collect();
    let path = topo
        .write_config(
            "metrics.yaml",
            &config_yaml(&topo.backends, &[udp("m", 7005)], ""),
        )
        .expect("config");
    let _daemon = start(&topo, &path, &[]);

    // One flow (one source port): exactly PACKETS datagrams of PAYLOAD bytes.
    let dst = vip_port(7005);
    in_netns(&topo.client.netns, move || {
        let sock = UdpSocket::bind("0.0.0.0:0")?;
        sock.connect(dst)?;
        for _ in 0..PACKETS {
            sock.send(&[0x5a; PAYLOAD])?;
            thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    })
    .expect("send datagrams");
    let deadline = Instant::now() + Duration::from_secs(5);
    while servers.iter().map(|s| s.received()).sum::<u64>() < PACKETS && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let received: Vec<u64> = servers.iter().map(|s| s.received()).collect();
    assert_eq!(
        received.iter().sum::<u64>(),
        PACKETS,
        "datagrams received per backend: {received:?}"
    );
    let (hit, idle) = if received[0] == PACKETS {
        (0, 1)
    } else {
        (1, 0)
    };
    let label = |i: usize| format!("{}:7005", topo.backends[i].ipv4().unwrap());

    let text = metrics::scrape(&topo);
    let svc = |name: &str| metrics::value(&text, &format!("{name}{{service=\"m\"}}"));
    let be = |name: &str, i: usize| {
        metrics::value(
            &text,
            &format!("{name}{{service=\"m\",backend=\"{}\"}}", label(i)),
        )
    };
    assert_eq!(
        svc("bascule_service_packets_total"),
        Some(PACKETS),
        "{text}"
    );
    assert_eq!(
        svc("bascule_service_bytes_total"),
        Some(PACKETS * FRAME),
        "{text}"
    );
    assert_eq!(svc("bascule_service_connections_total"), Some(1), "{text}");
    assert_eq!(
        be("bascule_backend_packets_total", hit),
        Some(PACKETS),
        "{text}"
    );
    assert_eq!(
        be("bascule_backend_bytes_total", hit),
        Some(PACKETS * FRAME),
        "{text}"
    );
    assert_eq!(
        be("bascule_backend_connections_total", hit),
        Some(1),
        "{text}"
    );
    assert_eq!(
        be("bascule_backend_active_connections", hit),
        Some(1),
        "{text}"
    );
    assert_eq!(be("bascule_backend_packets_total", idle), Some(0), "{text}");
    assert_eq!(be("bascule_backend_weight", hit), Some(1), "{text}");
    assert_eq!(be("bascule_backend_up", hit), Some(1), "{text}");
    assert_eq!(
        metrics::value(&text, "bascule_conntrack_misses_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "bascule_conntrack_evictions_total"),
        Some(0),
        "{text}"
    );
    // The flow's entry, counted at the scrape (not at the last 5-second reconciliation).
    assert_eq!(
        metrics::value(&text, "bascule_conntrack_entries"),
        Some(1),
        "{text}"
    );
    assert!(
        metrics::value(&text, "bascule_xdp_packets_total{action=\"tx\"}").unwrap_or(0) >= PACKETS,
        "{text}"
    );
    assert_eq!(
        metrics::value(
            &text,
            &format!(
                "bascule_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1),
        "{text}"
    );
    println!(
        "metrics: {PACKETS} datagrams of {FRAME}-byte frames -> service m and backend {}",
        label(hit)
    );

    promtool_accepts(&text);

    // The JSON of `bascule status` shows the same numbers.
    let (code, json, err) = cli(&topo, &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(status["services"][0]["packets"], PACKETS);
    assert_eq!(
        status["services"][0]["backends"][hit]["bytes"],
        PACKETS * FRAME
    );
}

#[test]
fn simulate_names_the_backend_that_answers_and_drain_moves_new_flows() {
    require_root();
    let topo = Topology::standard("simulate").expect("build the lab");
    let _servers = topo.start_backend_servers().expect("servers");
    let path = topo.write_lb_config(Forwarding::Dr).expect("config");
    let _daemon = start(&topo, &path, &[]);
    let address_of = |role: &str| -> Vec<IpAddr> { topo.backend(role).unwrap().addrs.clone() };

    let mut seen = std::collections::BTreeSet::new();
    for (i, vip) in [vip4(), vip6()].into_iter().enumerate() {
        let client = if vip.is_ipv4() {
            topo.client.ipv4()
        } else {
            topo.client.ipv6()
        }
        .unwrap();
        for port in 42_000 + i as u16 * 100..42_010 + i as u16 * 100 {
            let src = SocketAddr::new(client, port);
            let ask = |expect: &str| -> serde_json::Value {
                let (code, out, err) = cli(
                    &topo,
                    &[
                        "simulate",
                        "--src",
                        &src.to_string(),
                        "--dst",
                        &vip.to_string(),
                        "--json",
                    ],
                );
                assert_eq!(code, 0, "simulate {src} -> {vip}: {out}{err}");
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["reason"], expect, "{src} -> {vip}: {v}");
                v
            };
            let before = ask("scheduler");
            let body = http_get_from(&topo.client.netns, src, vip, TIMEOUT)
                .unwrap_or_else(|e| panic!("{src} -> {vip}: {e:#}"));
            let predicted: IpAddr = before["address"].as_str().unwrap().parse().unwrap();
            assert!(
                address_of(&body).contains(&predicted),
                "{src} -> {vip}: simulate said {predicted}, {body} answered"
            );
            let after = ask("conntrack");
            assert_eq!(after["address"], before["address"]);
            seen.insert(body);
        }
    }
    assert_eq!(seen.len(), 2, "20 flows reached both backends: {seen:?}");

    // Drain b1: new flows avoid it; `weight reset` brings it back.
    let b1 = topo.backend("b1").unwrap().ipv4().unwrap().to_string();
    let (code, out, err) = cli(&topo, &["drain", &b1]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.trim(),
        format!("web {b1}:80: weight 0, drained: no new flows, established flows stay")
    );
    for _ in 0..20 {
        assert_eq!(topo.get(vip4(), TIMEOUT).unwrap(), "b2");
    }
    let (_, status, _) = cli(&topo, &["status"]);
    assert!(
        status.contains(&format!("  ->  {b1}:80")) && status.contains("0*"),
        "{status}"
    );
    let (code, out, err) = cli(&topo, &["weight", &b1, "reset"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(&topo, &["drain", "10.9.9.9"]);
    assert_eq!(code, 1, "draining an unknown backend fails: {err}");
    assert!(err.contains("no backend 10.9.9.9 in any service"), "{err}");
}

#[test]
fn api_wants_its_token_when_listening_beyond_loopback() {
    require_root();
    let topo = Topology::standard("token").expect("build the lab");
    let token_file = topo.lab.dir().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    // The daemon refuses a token file other users can read.
    std::fs::set_permissions(
        &token_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let extra = format!(
        "http:\n  listen: 0.0.0.0:9469\n  token_file: {}\n",
        token_file.display()
    );
    let path = topo
        .write_config(
            "token.yaml",
            &config_yaml(&topo.backends, &[tcp("web", 80)], &extra),
        )
        .expect("config");
    let _daemon = start(&topo, &path, &[]);
    let lb = &topo.lbs[0];
    let (status, body) = topo.api(lb, "GET", "/api/v1/services", None).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = topo.api(lb, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 401);
    let (status, _) = topo.api(lb, "GET", "/healthz", None).unwrap();
    assert_eq!(status, 200, "/healthz stays open");
    let (code, _, err) = cli(&topo, &["status"]);
    assert_eq!(code, 4, "status without the token: {err}");
    let (code, out, err) = cli(
        &topo,
        &["status", "--token-file", token_file.to_str().unwrap()],
    );
    assert_eq!(code, 0, "status with the token: {out}{err}");
    assert!(out.contains("web"), "{out}");
    // Also reachable from the client, with the token.
    let api = SocketAddr::new(lb.ipv4().unwrap(), 9469);
    let (status, body) = http_request(
        &topo.client.netns,
        api,
        "GET",
        "/api/v1/vrrp",
        &[("Authorization", "Bearer s3cret-token")],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!((status, body.trim()), (200, "{\n  \"instances\": []\n}"));
    // The status page too: only with the token, which it hands to its own requests.
    let (status, _) = topo.api(lb, "GET", "/", None).unwrap();
    assert_eq!(status, 401, "the status page wants the token");
    let (status, page) = http_request(
        &topo.client.netns,
        api,
        "GET",
        "/",
        &[("Authorization", "Bearer s3cret-token")],
        None,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"<meta name="bascule-token" content="s3cret-token">"#),
        "{page}"
    );
}
