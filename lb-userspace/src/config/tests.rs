use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

const FULL: &str = include_str!("../../tests/configs/full.yaml");
const NODE: &str = "node:\n  interfaces:\n    - name: eth0\n";

fn ok(yaml: &str) -> Config {
    Config::parse(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// The first error, as printed.
fn err(yaml: &str) -> String {
    match Config::parse(yaml, "bascule.yaml") {
        Ok(c) => panic!("parsed, expected an error: {c:?}"),
        Err(e) => e.to_string(),
    }
}

/// NODE followed by `rest`.
fn with_node(rest: &str) -> String {
    format!("{NODE}{rest}")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn full_example_parses_with_expected_values() {
    let c = ok(FULL);
    assert_eq!(
        c.node,
        Node {
            interfaces: vec![Interface {
                name: "eth0".into(),
                xdp_mode: XdpMode::Auto
            }],
            tunnel_source: Some(ip("10.0.0.2")),
            icmp_echo_rate: 1000,
        }
    );
    assert_eq!(c.http, Http::default());
    assert_eq!(c.http.listen, "127.0.0.1:9469".parse().unwrap());
    assert_eq!(
        c.conntrack,
        Conntrack {
            max_entries: 1_000_000,
            tcp_timeout: Duration::from_secs(900),
            udp_timeout: Duration::from_secs(30),
            flood_protection: true,
        }
    );
    assert_eq!(c.services.len(), 1);
    let s = &c.services[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.vip, ip("10.0.0.100"));
    assert_eq!(s.port, 80);
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.scheduler, Scheduler::Mh);
    assert_eq!(s.forwarding, Forwarding::Dr);
    assert_eq!(s.persistence, Duration::ZERO);
    assert_eq!(s.sorry_server, Some("10.0.0.250:80".parse().unwrap()));
    assert_eq!(s.maglev_table_size, 65537);
    assert_eq!(
        s.backends,
        vec![
            Backend {
                address: ip("10.0.0.11"),
                port: Some(80),
                weight: 1,
                forwarding: Some(Forwarding::Nat),
                max_connections: None,
                min_connections: None,
                failed_weight: 0,
            },
            Backend {
                address: ip("10.0.0.12"),
                port: None,
                weight: 2,
                forwarding: None,
                max_connections: None,
                min_connections: None,
                failed_weight: 0,
            },
        ]
    );
    assert_eq!(s.backends[0].effective_forwarding(s), Forwarding::Nat);
    assert_eq!(s.backends[1].effective_forwarding(s), Forwarding::Dr);
    assert_eq!(s.backends[0].effective_port(s), 80);
    assert_eq!(
        s.health_check,
        Some(HealthCheck {
            path: "/healthz".into(),
            ..HealthCheck::new(CheckType::HttpGet)
        })
    );
    assert_eq!(
        c.vrrp,
        vec![VrrpInstance {
            name: "VI_1".into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            priority: 150,
            version: 2,
            advert_interval: Duration::from_secs(1),
            preempt: true,
            preempt_delay: Duration::ZERO,
            authentication: Some(VrrpAuth {
                kind: VrrpAuthType::Pass,
                password: "secret".into()
            }),
            unicast_peers: vec![],
            virtual_addresses: vec![IpPrefix {
                addr: ip("10.0.0.100"),
                prefix_len: 24
            }],
            garp: Garp {
                repeat: 5,
                interval: Duration::from_secs(1),
                refresh: Duration::ZERO
            },
            track_interfaces: vec![],
            track_scripts: vec!["chk_web".into()],
            notify: Notify::default(),
        }]
    );
    assert_eq!(
        c.announce,
        Some(Announce {
            table: 200,
            protocol: 186,
            withdraw_grace: Duration::from_secs(5),
            vips: vec![ip("10.0.0.100")],
        })
    );
    assert_eq!(
        c.vrrp_scripts,
        vec![VrrpScript {
            name: "chk_web".into(),
            script: "/usr/local/bin/check-web".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            weight: -20,
            rise: 2,
            fall: 2,
        }]
    );
    assert!(c.sync_groups.is_empty());
    // The JSON dump works and writes durations the way the file does.
    let json = serde_json::to_string(&c).unwrap();
    assert!(json.contains(r#""tcp_timeout":"15m""#), "{json}");
    assert!(
        json.contains(r#""virtual_addresses":["10.0.0.100/24"]"#),
        "{json}"
    );
}

#[test]
fn defaults() {
    let c = ok(&with_node(
        "services:\n  - name: web\n    vip: fd00::100\n    port: 0\n    backends:\n      - address: fd00::11\n",
    ));
    assert_eq!(c.node.interfaces[0].xdp_mode, XdpMode::Auto);
    assert_eq!(c.node.tunnel_source, None);
    assert_eq!(
        c.http.listen,
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9469))
    );
    assert_eq!(c.http.token_file, None);
    assert_eq!(c.conntrack, Conntrack::default());
    assert!(c.vrrp.is_empty());
    assert_eq!(c.announce, None);
    let s = &c.services[0];
    assert_eq!(s.vip, IpAddr::V6("fd00::100".parse::<Ipv6Addr>().unwrap()));
    assert_eq!(s.port, 0);
    assert_eq!(
        (s.protocol, s.scheduler, s.forwarding),
        (Protocol::Tcp, Scheduler::Mh, Forwarding::Dr)
    );
    assert_eq!(s.persistence, Duration::ZERO);
    assert_eq!(s.sorry_server, None);
    assert_eq!(s.maglev_table_size, 65537);
    assert_eq!(s.health_check, None);
    assert_eq!(
        s.backends[0],
        Backend {
            address: ip("fd00::11"),
            port: None,
            weight: 1,
            forwarding: None,
            max_connections: None,
            min_connections: None,
            failed_weight: 0,
        }
    );
    assert!(c.unsupported().is_empty());
    // No services at all is fine; so is a null list.
    assert!(ok(NODE).services.is_empty());
    assert!(ok(&with_node("services:\nvrrp: ~\n")).services.is_empty());
}

#[test]
fn protocol_numbers() {
    assert_eq!(Protocol::Tcp.ip_proto(), 6);
    assert_eq!(Protocol::Udp.ip_proto(), 17);
}

#[test]
fn equality_ignores_positions() {
    let a = ok(FULL);
    let b = ok(&format!("# a comment that moves every line\n\n{FULL}"));
    assert_eq!(a, b);
    assert_ne!(a.services[0].backends, b.services[0].backends[..1]);
}

// The error messages, every one exactly: `tests/messages.rs`.
mod messages;

#[test]
fn service_values() {
    let c = ok(&with_node(
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: 251\n",
    ));
    assert_eq!(c.services[0].maglev_table_size, 251);
    // IPv4-in-IPv6 is fine.
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: fd00::11\n"));
    assert_eq!(c.services[0].backends[0].address, ip("fd00::11"));
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        forwarding: nat\n        port: 8080\n"));
    let s = &c.services[0];
    assert_eq!(s.backends[0].effective_port(s), 8080);
}

#[test]
fn what_differs_is_not_a_duplicate() {
    // Another protocol or port is another service.
    ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n    protocol: udp\n"));
    // With NAT the destination port is part of the backend: an explicit port equal to the
    // service's is the same backend (a case in `messages.rs`), another port is another one.
    let svc = "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: nat\n    backends:\n      - address: 10.0.0.11\n";
    ok(&with_node(&format!(
        "{svc}      - {{address: 10.0.0.11, port: 8080}}\n"
    )));
}

#[test]
fn non_loopback_listen_with_a_token() {
    let c = ok(&with_node(
        "http:\n  listen: 0.0.0.0:9469\n  token_file: /etc/bascule/token\n",
    ));
    assert_eq!(c.http.token_file, Some(PathBuf::from("/etc/bascule/token")));
    ok(&with_node("http:\n  listen: \"[::1]:9469\"\n"));
}

#[test]
fn vrrp_values() {
    let two = "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n  - name: VI_2\n    interface: eth0\n    virtual_router_id: 51\n";
    // The same router id for the other family is another instance (as in VRRPv3).
    let c = ok(&with_node(&format!("{two}    virtual_addresses: [fd00::2/64]\n    priority: 255\n    advert_interval: 20ms\n    unicast_peers: [fd00::3]\n    garp: {{repeat: 2}}\n    notify: {{master: /bin/true}}\n")));
    let i = &c.vrrp[1];
    assert_eq!((i.priority, i.version), (255, 3));
    assert_eq!(i.advert_interval, Duration::from_millis(20));
    assert_eq!(i.garp.repeat, 2);
    assert_eq!(i.garp.interval, Duration::from_secs(1));
    assert_eq!(i.notify.master.as_deref(), Some("/bin/true"));
    assert_eq!(i.notify.backup, None);
    // A bare address is a host prefix, as in keepalived.
    let c = ok(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1]\n"));
    assert_eq!(c.vrrp[0].virtual_addresses[0].to_string(), "10.0.0.1/32");
}

/// keepalived's defaults: every second, timeout the interval, weight 0, rise and fall 1.
#[test]
fn vrrp_scripts_and_sync_groups() {
    let c = ok(&with_node(
        "vrrp:\n  - {name: VI_4, interface: eth0, virtual_router_id: 51, virtual_addresses: [10.0.0.1/24], track_scripts: [chk]}\n  - {name: VI_6, interface: eth0, virtual_router_id: 51, virtual_addresses: ['fd00::1/64']}\nvrrp_scripts:\n  - {name: chk, script: test -e /run/ok, interval: 3s}\n  - {name: unused, script: 'true', weight: 253}\nsync_groups:\n  - {name: G1, instances: [VI_4, VI_6]}\n",
    ));
    assert_eq!(
        c.vrrp_scripts[0],
        VrrpScript {
            name: "chk".into(),
            script: "test -e /run/ok".into(),
            interval: Duration::from_secs(3),
            timeout: Duration::from_secs(3),
            weight: 0,
            rise: 1,
            fall: 1,
        }
    );
    assert_eq!(c.vrrp_scripts[1].weight, 253);
    assert_eq!(c.vrrp_scripts[1].interval, Duration::from_secs(1));
    assert_eq!(c.vrrp[0].track_scripts, ["chk"]);
    assert!(c.vrrp[1].track_scripts.is_empty());
    assert_eq!(
        c.sync_groups,
        [SyncGroup {
            name: "G1".into(),
            instances: vec!["VI_4".into(), "VI_6".into()]
        }]
    );
    assert!(c.unsupported().is_empty());
}

/// `services[0].health_check` of a service web at 10.0.0.1:80, with `body`.
fn check(body: &str) -> HealthCheck {
    let c = ok(&with_node(&format!(
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
    )));
    c.services[0].health_check.clone().unwrap()
}

#[test]
fn health_check_values() {
    let h = check("      type: misc\n      command: /usr/local/bin/check-x\n      dynamic: true\n      retries: 2\n      delay_before_retry: 500ms\n");
    assert_eq!(h.kind, CheckType::Misc);
    assert_eq!(h.command.as_deref(), Some("/usr/local/bin/check-x"));
    assert!(h.dynamic);
    assert_eq!(
        (h.retries, h.delay_before_retry),
        (2, Duration::from_millis(500))
    );
    // Statuses: one, a range, a list of both.
    let h = check("      type: http_get\n      expect_status: [200, \"300-302\"]\n      method: HEAD\n      virtualhost: www.example.com\n");
    assert_eq!(
        h.expect_status,
        vec![
            StatusRange { lo: 200, hi: 200 },
            StatusRange { lo: 300, hi: 302 }
        ]
    );
    assert_eq!(
        (h.method, h.virtualhost.as_deref()),
        (HttpMethod::Head, Some("www.example.com"))
    );
    assert_eq!(
        check("      type: ssl_get\n      expect_status: 200-299\n").expect_status,
        vec![StatusRange { lo: 200, hi: 299 }]
    );
    // Digest and body regex.
    let h = check("      type: http_get\n      digest: 9A0364B9E99BB480DD25E1F0284C8555\n      body_regex: \"^ok\"\n");
    assert_eq!(
        h.digest.as_deref(),
        Some("9a0364b9e99bb480dd25e1f0284c8555")
    );
    // DNS keys.
    let h = check("      type: dns\n      query_name: example.com\n      query_type: AAAA\n      expect_rcode: NXDOMAIN\n      expect_answer: \"2001:db8::1\"\n");
    assert_eq!(
        (h.query_name.as_str(), h.query_type, h.expect_rcode),
        ("example.com", DnsType::Aaaa, DnsRcode::NxDomain)
    );
    // UDP payloads.
    let h = check("      type: udp\n      payload: \"hex:0d0A\"\n      expect: PONG\n");
    assert_eq!(
        (h.payload.as_slice(), h.expect.as_deref()),
        (&b"\r\n"[..], Some(&b"PONG"[..]))
    );
    // A check that uses no port is fine on a service without one.
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: ping, initial_state: up}\n"));
    assert_eq!(
        c.services[0].health_check.as_ref().unwrap().initial_state,
        InitialState::Up
    );
    // The JSON dump writes payloads and statuses as the file does.
    let json =
        serde_json::to_string(&check("      type: udp\n      payload: \"hex:00ff\"\n")).unwrap();
    assert!(json.contains(r#""payload":"hex:00ff""#), "{json}");
    assert!(json.contains(r#""expect_status":["200"]"#), "{json}");
}

#[test]
fn all_errors_sorted_by_position() {
    let errors = Config::parse_all(
        &with_node("conntrack:\n  udp_timeout: 0s\n  tcp_timeout: 5x\nbogus: 1\n"),
        "b.yaml",
    )
    .unwrap_err();
    let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![5, 6, 7]);
}

#[test]
fn unsupported_features() {
    let c = ok(&with_node(
        "services:
  - name: web
    vip: 10.0.0.1
    port: 80
    scheduler: wrr
    forwarding: nat
    persistence: 5m
    sorry_server: 10.0.0.9:80
    backends:
      - address: 10.0.0.11
        forwarding: local
      - address: 10.0.0.12
        forwarding: tun
    health_check: {type: tcp}
  - name: ok
    vip: 10.0.0.2
    port: 443
    forwarding: tun
vrrp:
  - name: VI_1
    interface: eth0
    virtual_router_id: 51
    version: 2
    authentication: {type: ah, password: x}
    virtual_addresses: [10.0.0.1/24]
",
    ));
    let got: Vec<String> = c.unsupported().iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "t.yaml:27:21: vrrp[0].authentication.type: \"ah\" is not supported (this build supports: pass, as keepalived's auth_type PASS)",
        ]
    );
    assert!(ok(NODE).unsupported().is_empty());
    // A config built in code has no positions.
    let mut built = ok(NODE);
    built.origin = Origin::default();
    built.vrrp = c.vrrp.clone();
    assert_eq!(
        built.unsupported()[0].to_string(),
        "vrrp[0].authentication.type: \"ah\" is not supported (this build supports: pass, as keepalived's auth_type PASS)"
    );
}

#[test]
fn host_checks() {
    let c = ok(&with_node(
        "    - name: eth1\nservices:\n  - name: web6\n    vip: fd00::100\n    port: 80\n  - name: web\n    vip: 10.0.0.100\n    port: 80\n",
    ));
    let host = HostFacts {
        interfaces: [
            ("lo".to_string(), vec![ip("127.0.0.1"), ip("::1")]),
            ("eth0".to_string(), vec![ip("10.0.0.2")]),
        ]
        .into_iter()
        .collect(),
    };
    let got: Vec<String> = c.check_host(&host).iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        vec![
            "t.yaml:4:13: node.interfaces[1].name: no interface \"eth1\" on this node (it has: eth0, lo)",
            "t.yaml:7:10: services[0].vip: no interface can reach fd00::100: none of node.interfaces (eth0, eth1) has an IPv6 address; add one, or attach to an interface that has one",
        ]
    );
    let mut fine = host.clone();
    fine.interfaces
        .insert("eth1".to_string(), vec![ip("fd00::2")]);
    assert!(c.check_host(&fine).is_empty());
    // A link-local address reaches no IPv6 VIP.
    let mut link_only = fine.clone();
    link_only
        .interfaces
        .insert("eth1".to_string(), vec![ip("fe80::2")]);
    assert_eq!(c.check_host(&link_only).len(), 1);
}

#[test]
fn host_checks_vrrp_instances() {
    let c = ok(&with_node(
        "vrrp:\n  - name: VI_4\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.100/24]\n  - name: VI_6\n    interface: eth0\n    virtual_router_id: 52\n    virtual_addresses: [fd00::100/64]\n  - name: VI_X\n    interface: eth9\n    virtual_router_id: 53\n    virtual_addresses: [10.0.9.100/24]\n",
    ));
    let host = |addrs: &[&str]| HostFacts {
        interfaces: [("eth0".to_string(), addrs.iter().map(|a| ip(a)).collect())]
            .into_iter()
            .collect(),
    };
    let got: Vec<String> = c
        .check_host(&host(&["10.0.0.100", "fd00::2"]))
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert!(
        got[0].contains(
            "vrrp[0] (VI_4): interface eth0 has no IPv4 address other than the virtual addresses"
        ),
        "{got:#?}"
    );
    assert!(
        got[1].contains("vrrp[1] (VI_6): interface eth0 has no IPv6 link-local address"),
        "{got:#?}"
    );
    assert!(
        got[2].contains("vrrp[2].interface: no interface \"eth9\" on this node"),
        "{got:#?}"
    );
    let got = c.check_host(&host(&["10.0.0.2", "fe80::2"]));
    assert_eq!(got.len(), 1, "only the missing interface: {got:?}");
}

#[test]
fn host_checks_the_sync_interface() {
    let c = ok(&with_node(
        "sync:\n  group: 239.0.0.81\n  interface: eth1\n  key_file: /k\n",
    ));
    let host = |iface: &str, addrs: &[&str]| HostFacts {
        interfaces: [
            ("eth0".to_string(), vec![ip("10.0.0.2")]),
            (iface.to_string(), addrs.iter().map(|a| ip(a)).collect()),
        ]
        .into_iter()
        .collect(),
    };
    let got: Vec<String> = c
        .check_host(&host("lo", &["127.0.0.1"]))
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        got,
        ["t.yaml:6:14: sync.interface: no interface \"eth1\" on this node (it has: eth0, lo)"]
    );
    let got: Vec<String> = c
        .check_host(&host("eth1", &["fe80::2"]))
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        got,
        ["t.yaml:6:14: sync.interface: eth1 has no IPv4 address to send to group 239.0.0.81 from; add one, or name the interface of the LB nodes' segment"]
    );
    assert!(c.check_host(&host("eth1", &["10.0.1.2"])).is_empty());
}

#[test]
fn load_reports_unreadable_file() {
    let e = Config::load(std::path::Path::new("/nonexistent/bascule.yaml")).unwrap_err();
    assert_eq!((e.line, e.column), (0, 0));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/bascule.yaml: cannot read the configuration: "),
        "{e}"
    );
}

#[test]
fn hex_payloads() {
    use crate::config::units::parse_bytes;
    assert_eq!(parse_bytes("hex:0d0A ff"), Ok(vec![0x0d, 0x0a, 0xff]));
    assert_eq!(parse_bytes("plain é"), Ok("plain é".as_bytes().to_vec()));
    assert_eq!(
        parse_bytes("hex:0é0"),
        Err("\"é\" is not a hex digit".into())
    );
    assert_eq!(
        parse_bytes("hex:éé"),
        Err("\"é\" is not a hex digit".into())
    );
    assert_eq!(
        parse_bytes("hex:0g"),
        Err("\"g\" is not a hex digit".into())
    );
    assert_eq!(
        parse_bytes("hex:abc"),
        Err("an odd number of hex digits".into())
    );
}

#[test]
fn durations() {
    let d = |s: &str| parse_duration(s);
    assert_eq!(d("100ms"), Ok(Duration::from_millis(100)));
    assert_eq!(d("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
    assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d("250us"), Ok(Duration::from_micros(250)));
    assert_eq!(d("2d"), Ok(Duration::from_secs(172_800)));
    assert_eq!(d("0"), Ok(Duration::ZERO));
    assert_eq!(d("0s"), Ok(Duration::ZERO));
    assert_eq!(d("10"), Err("missing unit".into()));
    assert_eq!(d("-1s"), Err("negative".into()));
    assert_eq!(d(""), Err("empty".into()));
    assert!(d("5x").is_err());
    assert!(d("s").is_err());
    assert!(d("1..5s").is_err());
    assert!(d("99999999999999999999999h").is_err());
    assert_eq!(d("365d"), Ok(crate::config::units::MAX_DURATION));
    let too_long = Err("longer than the longest accepted, 365d".to_string());
    for s in ["366d", "365d1us", "200000000000000d", "8761h"] {
        assert_eq!(d(s), too_long, "{s}");
    }
    for s in ["0s", "100ms", "1s", "90s", "15m", "1h", "1500ms", "250us"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
}

/// `SCHEMA` is what the parser accepts, section by section: a key that is not in a section's
/// list is refused with exactly that list. (The parser checks no mapping against a list
/// outside `SCHEMA`: `Cx::obj` asserts it in debug builds, so every test that parses a
/// section checks it; FULL has all of them.)
#[test]
fn schema_lists_the_keys_each_section_accepts() {
    let sections: Vec<&str> = SCHEMA.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sections,
        [
            "(top level)",
            "node",
            "node.interfaces[]",
            "http",
            "conntrack",
            "services[]",
            "services[].backends[]",
            "services[].health_check",
            "vrrp[]",
            "vrrp[].authentication",
            "vrrp[].garp",
            "vrrp[].notify",
            "vrrp_scripts[]",
            "sync_groups[]",
            "announce",
            "sync",
        ]
    );
    ok(FULL);
    let service = "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n";
    let vrrp = "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n";
    for (section, keys) in SCHEMA {
        // The section with the key `bogus` added.
        let doc = match *section {
            "(top level)" => with_node("bogus: 1\n"),
            "node" => "node:\n  bogus: 1\n  interfaces:\n    - name: eth0\n".to_owned(),
            "node.interfaces[]" => {
                "node:\n  interfaces:\n    - name: eth0\n      bogus: 1\n".to_owned()
            }
            "http" => with_node("http:\n  bogus: 1\n"),
            "conntrack" => with_node("conntrack:\n  bogus: 1\n"),
            "services[]" => with_node(&format!("{service}    bogus: 1\n")),
            "services[].backends[]" => with_node(&format!(
                "{service}    backends:\n      - address: 10.0.0.11\n        bogus: 1\n"
            )),
            "services[].health_check" => with_node(&format!(
                "{service}    health_check:\n      type: tcp\n      bogus: 1\n"
            )),
            "vrrp[]" => with_node(&format!("{vrrp}    bogus: 1\n")),
            "vrrp[].authentication" => with_node(&format!(
                "{vrrp}    version: 2\n    authentication: {{type: pass, password: x, bogus: 1}}\n"
            )),
            "vrrp[].garp" => with_node(&format!("{vrrp}    garp: {{bogus: 1}}\n")),
            "vrrp[].notify" => with_node(&format!("{vrrp}    notify: {{bogus: 1}}\n")),
            "vrrp_scripts[]" => with_node("vrrp_scripts:\n  - {name: a, script: x, bogus: 1}\n"),
            "sync_groups[]" => with_node(&format!(
                "{vrrp}sync_groups:\n  - {{name: G, instances: [VI_1], bogus: 1}}\n"
            )),
            "announce" => with_node("announce:\n  bogus: 1\n"),
            "sync" => with_node("sync:\n  peers: [10.0.0.3]\n  key_file: /k\n  bogus: 1\n"),
            other => panic!("no document for the section {other}: add one here"),
        };
        let e = err(&doc);
        let expected = format!("bogus: unknown key, expected one of: {}", keys.join(", "));
        assert!(
            e.ends_with(&expected),
            "{section}: {e}\nexpected: {expected}"
        );
    }
}

#[test]
fn announce_defaults_and_every_vip() {
    let c = ok(&with_node(
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\nannounce: {}\n",
    ));
    assert_eq!(c.announce, Some(Announce::default()));
    let a = Announce::default();
    assert_eq!((a.table, a.protocol), (200, 186));
    assert_eq!(a.withdraw_grace, Duration::from_secs(5));
    assert!(a.vips.is_empty());
}

#[test]
fn sync_takes_peers_a_key_file_and_a_default_port() {
    let c = ok(&with_node(
        "sync:\n  peers: [10.0.0.3, \"2001:db8::3\"]\n  key_file: /etc/bascule/sync.key\n",
    ));
    let sync = c.sync.expect("sync configured");
    assert_eq!(
        sync.peers,
        [
            "10.0.0.3".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::3".parse().unwrap()
        ]
    );
    assert_eq!(sync.port, 9470);
    assert_eq!(
        sync.key_file,
        std::path::PathBuf::from("/etc/bascule/sync.key")
    );
    assert_eq!(ok(&with_node("")).sync, None);
}

#[test]
fn sync_takes_a_multicast_group_on_an_interface() {
    for group in ["239.0.0.81", "ff02::81"] {
        let c = ok(&with_node(&format!(
            "sync:\n  group: \"{group}\"\n  interface: eth0\n  key_file: /k\n"
        )));
        let sync = c.sync.expect("sync configured");
        assert!(sync.peers.is_empty());
        assert_eq!(
            sync.group,
            Some(crate::config::SyncMulticast {
                address: group.parse().unwrap(),
                interface: "eth0".into()
            })
        );
    }
}
