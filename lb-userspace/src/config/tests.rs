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
                failed_weight: 0,
            },
            Backend {
                address: ip("10.0.0.12"),
                port: None,
                weight: 2,
                forwarding: None,
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
            notify: Notify::default(),
        }]
    );
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

// ----- errors: every case checks the exact FILE:LINE:COLUMN: message -----

#[test]
fn unknown_key_top_level() {
    assert_eq!(
        err(&with_node("foo: 1\n")),
        "bascule.yaml:4:1: foo: unknown key, expected one of: node, http, conntrack, services, vrrp"
    );
}

#[test]
fn unknown_key_nested() {
    assert_eq!(
        err("node:\n  interfaces:\n    - name: eth0\n      xdp_mod: native\n"),
        "bascule.yaml:4:7: node.interfaces[0].xdp_mod: unknown key (did you mean \"xdp_mode\"?), expected one of: name, xdp_mode"
    );
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check: {type: tcp, intervall: 2s}\n")),
        "bascule.yaml:8:31: services[0].health_check.intervall: unknown key (did you mean \"interval\"?), expected one of: type, connect_port, interval, timeout, rise, fall, retries, delay_before_retry, inhibit_on_failure, initial_state, method, path, virtualhost, expect_status, body_regex, digest, sni, ca_file, helo_name, query_name, query_type, expect_rcode, expect_answer, payload, expect, require_reply, command, dynamic"
    );
}

#[test]
fn wrong_type() {
    assert_eq!(
        err(&with_node("conntrack:\n  max_entries: lots\n")),
        "bascule.yaml:5:16: conntrack.max_entries: expected an integer in 1..=4294967295, found the string \"lots\""
    );
    assert_eq!(
        err("node:\n  interfaces: eth0\n"),
        "bascule.yaml:2:15: node.interfaces: expected a list of interfaces, found the string \"eth0\""
    );
    assert_eq!(
        err("node:\n  interfaces:\n    - eth0\n"),
        "bascule.yaml:3:7: node.interfaces[0]: expected a mapping with the keys name, xdp_mode, found the string \"eth0\""
    );
    assert_eq!(
        err("node:\n  - eth0\n"),
        "bascule.yaml:2:3: node: expected a mapping with the keys interfaces, tunnel_source, found a list"
    );
    assert_eq!(
        err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/24]\n    preempt: sometimes\n")),
        "bascule.yaml:9:14: vrrp[0].preempt: expected true or false, found the string \"sometimes\""
    );
    assert_eq!(
        err("- node\n"),
        "bascule.yaml:1:1: the configuration must be a mapping with the keys node, http, conntrack, services, vrrp, found a list"
    );
}

#[test]
fn bad_durations() {
    let ct = |v: &str| err(&with_node(&format!("conntrack:\n  tcp_timeout: {v}\n")));
    assert_eq!(
        ct("10"),
        "bascule.yaml:5:16: conntrack.tcp_timeout: \"10\" is not a valid duration (missing unit), expected e.g. 100ms, 1s, 5m or 1h"
    );
    assert_eq!(
        ct("-5s"),
        "bascule.yaml:5:16: conntrack.tcp_timeout: \"-5s\" is not a valid duration (negative), expected e.g. 100ms, 1s, 5m or 1h"
    );
    assert_eq!(
        ct("5x"),
        "bascule.yaml:5:16: conntrack.tcp_timeout: \"5x\" is not a valid duration (unknown unit \"x\"; units are us, ms, s, m, h, d), expected e.g. 100ms, 1s, 5m or 1h"
    );
    assert_eq!(
        ct("0s"),
        "bascule.yaml:5:16: conntrack.tcp_timeout: 0s is not allowed, expected a duration greater than 0"
    );
}

#[test]
fn bad_address() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.300\n    port: 80\n")),
        "bascule.yaml:6:10: services[0].vip: \"10.0.0.300\" is not valid, expected an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)"
    );
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    sorry_server: fd00::9\n")),
        "bascule.yaml:8:19: services[0].sorry_server: \"fd00::9\" is not valid, expected ADDRESS:PORT (e.g. 10.0.0.1:80 or [fd00::1]:80)"
    );
    assert_eq!(
        err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/33]\n")),
        "bascule.yaml:8:25: vrrp[0].virtual_addresses[0]: \"10.0.0.1/33\" is not valid (prefix \"33\" is not in 0..=32), expected ADDRESS/PREFIX (e.g. 10.0.0.100/24 or fd00::100/64)"
    );
}

#[test]
fn bad_enum_value() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    scheduler: fast\n")),
        "bascule.yaml:8:16: services[0].scheduler: \"fast\" is not a valid scheduler, expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh"
    );
    assert_eq!(
        err("node:\n  interfaces:\n    - name: eth0\n      xdp_mode: turbo\n"),
        "bascule.yaml:4:17: node.interfaces[0].xdp_mode: \"turbo\" is not a valid XDP mode, expected one of: auto, native, generic"
    );
}

#[test]
fn duplicate_service_reported_at_second_occurrence() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n")),
        "bascule.yaml:8:5: services[1]: duplicate service 10.0.0.1:80/tcp, already defined by services[0] (\"web\") at line 5"
    );
    // Another protocol or port is another service.
    ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n    protocol: udp\n"));
}

#[test]
fn duplicate_service_name() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web\n    vip: 10.0.0.1\n    port: 81\n")),
        "bascule.yaml:8:11: services[1].name: duplicate service name \"web\", already used by services[0] at line 5"
    );
}

#[test]
fn duplicate_backend() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n      - address: 10.0.0.11\n        weight: 3\n")),
        "bascule.yaml:10:18: services[0].backends[1].address: backend 10.0.0.11 is listed twice (also backends[0] at line 9)"
    );
    // With NAT the destination port is part of the backend: an explicit port equal to the
    // service's is the same backend, another port is another one.
    let svc = "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: nat\n    backends:\n      - address: 10.0.0.11\n";
    assert_eq!(
        err(&with_node(&format!("{svc}      - {{address: 10.0.0.11, port: 80}}\n"))),
        "bascule.yaml:11:19: services[0].backends[1].address: backend 10.0.0.11:80 is listed twice (also backends[0] at line 10)"
    );
    ok(&with_node(&format!(
        "{svc}      - {{address: 10.0.0.11, port: 8080}}\n"
    )));
}

#[test]
fn weight_out_of_range() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.2\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: 70000\n")),
        "bascule.yaml:13:17: services[1].backends[0].weight: 70000 is out of range, expected 0..=65535"
    );
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: -1\n")),
        "bascule.yaml:10:17: services[0].backends[0].weight: -1 is out of range, expected 0..=65535"
    );
}

#[test]
fn maglev_table_size_must_be_prime() {
    let t = |v: &str| {
        err(&with_node(&format!(
            "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: {v}\n"
        )))
    };
    assert_eq!(
        t("65536"),
        "bascule.yaml:8:24: services[0].maglev_table_size: 65536 is not prime, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"
    );
    assert_eq!(
        t("65539"),
        "bascule.yaml:8:24: services[0].maglev_table_size: 65539 is too large, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"
    );
    let c = ok(&with_node(
        "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: 251\n",
    ));
    assert_eq!(c.services[0].maglev_table_size, 251);
}

#[test]
fn address_family_mismatch() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: fd00::11\n")),
        "bascule.yaml:9:18: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding dr needs the same address family (only tun can carry IPv4 in IPv6)"
    );
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: fd00::1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: 10.0.0.11\n")),
        "bascule.yaml:10:18: services[0].backends[0].address: 10.0.0.11 is IPv4 but the VIP fd00::1 is IPv6; forwarding tun cannot carry IPv6 in IPv4 (only IPv4 in IPv6)"
    );
    // A backend's own forwarding decides.
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - {address: fd00::11, forwarding: nat}\n")),
        "bascule.yaml:10:19: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding nat needs the same address family (only tun can carry IPv4 in IPv6)"
    );
    // IPv4-in-IPv6 is fine.
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: fd00::11\n"));
    assert_eq!(c.services[0].backends[0].address, ip("fd00::11"));
}

#[test]
fn backend_port_only_with_nat() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        port: 8080\n")),
        "bascule.yaml:10:15: services[0].backends[0].port: backend port is only used with forwarding: nat; dr and tun keep the VIP port"
    );
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        forwarding: nat\n        port: 8080\n"));
    let s = &c.services[0];
    assert_eq!(s.backends[0].effective_port(s), 8080);
}

#[test]
fn non_loopback_listen_needs_a_token() {
    assert_eq!(
        err(&with_node("http:\n  listen: 0.0.0.0:9469\n")),
        "bascule.yaml:5:11: http.listen: 0.0.0.0:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"
    );
    assert_eq!(
        err(&with_node("http:\n  listen: \"[fd00::1]:9469\"\n  token_file: \"\"\n")),
        "bascule.yaml:5:11: http.listen: [fd00::1]:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"
    );
    let c = ok(&with_node(
        "http:\n  listen: 0.0.0.0:9469\n  token_file: /etc/bascule/token\n",
    ));
    assert_eq!(c.http.token_file, Some(PathBuf::from("/etc/bascule/token")));
    ok(&with_node("http:\n  listen: \"[::1]:9469\"\n"));
}

#[test]
fn missing_node() {
    assert_eq!(
        err("http:\n  listen: 127.0.0.1:9469\n"),
        "bascule.yaml:1:1: missing required top-level key \"node\""
    );
    assert_eq!(
        err(""),
        "bascule.yaml:1:1: the configuration is empty: missing required top-level key \"node\""
    );
    assert_eq!(
        err("node:\n  interfaces: []\n"),
        "bascule.yaml:2:15: node.interfaces: expected at least one interface (- name: eth0), found an empty list"
    );
    assert_eq!(
        err("node:\n  tunnel_source: 10.0.0.2\n"),
        "bascule.yaml:2:3: node: missing required key \"interfaces\""
    );
}

#[test]
fn missing_keys_and_duplicate_keys() {
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    port: 80\n")),
        "bascule.yaml:5:5: services[0]: missing required key \"vip\""
    );
    assert_eq!(
        err("node:\n  interfaces: [{name: eth0}]\n  interfaces: [{name: eth1}]\n"),
        "bascule.yaml:3:3: node.interfaces: duplicate key, already given at line 2"
    );
    assert_eq!(
        err("node:\n  interfaces:\n    - name: eth0\n    - name: eth0\n"),
        "bascule.yaml:4:13: node.interfaces[1].name: interface \"eth0\" is listed twice (also interfaces[0])"
    );
}

#[test]
fn yaml_syntax_error() {
    assert_eq!(
        err("node:\n  interfaces: [eth0\n"),
        "bascule.yaml:2:15: invalid YAML: unclosed bracket '['"
    );
}

#[test]
fn vrrp_rules() {
    let v = |extra: &str| {
        err(&with_node(&format!(
            "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n{extra}"
        )))
    };
    assert_eq!(
        v("    priority: 0\n"),
        "bascule.yaml:9:15: vrrp[0].priority: 0 is out of range, expected 1..=255"
    );
    assert_eq!(
        err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 256\n    virtual_addresses: [10.0.0.1/24]\n")),
        "bascule.yaml:7:24: vrrp[0].virtual_router_id: 256 is out of range, expected 1..=255"
    );
    assert_eq!(
        v("    version: 4\n"),
        "bascule.yaml:9:14: vrrp[0].version: expected 2 (RFC 3768) or 3 (RFC 5798), found the number 4"
    );
    assert_eq!(
        v("    advert_interval: 15ms\n"),
        "bascule.yaml:9:22: vrrp[0].advert_interval: 15ms: VRRP version 3 advertises centiseconds, expected a multiple of 10ms up to 40.95s"
    );
    assert_eq!(
        v("    authentication: {type: pass, password: x}\n"),
        "bascule.yaml:9:21: vrrp[0].authentication: only exists in VRRP version 2 (RFC 3768); remove it or set version: 2"
    );
    assert_eq!(
        v("    version: 2\n    authentication: {type: pass, password: toolongpassword}\n"),
        "bascule.yaml:10:44: vrrp[0].authentication.password: 15 bytes is not allowed, expected 1 to 8 bytes (what a VRRPv2 packet carries)"
    );
    assert_eq!(
        v("    unicast_peers: [10.0.0.2, fd00::3]\n"),
        "bascule.yaml:9:31: vrrp[0].unicast_peers[1]: fd00::3 is IPv6 but the virtual addresses are IPv4"
    );
    assert_eq!(
        err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24, fd00::1/64]\n")),
        "bascule.yaml:8:38: vrrp[0].virtual_addresses[1]: fd00::1/64 is IPv6 but virtual_addresses[0] is IPv4; an instance carries one address family (use a second instance)"
    );
    assert_eq!(
        err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    version: 2\n    virtual_addresses: [fd00::1/64]\n")),
        "bascule.yaml:9:25: vrrp[0].virtual_addresses[0]: fd00::1/64: VRRP version 2 is IPv4 only, expected version: 3 for IPv6"
    );
    let two = "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n  - name: VI_2\n    interface: eth0\n    virtual_router_id: 51\n";
    assert_eq!(
        err(&with_node(&format!("{two}    virtual_addresses: [10.0.0.2/24]\n"))),
        "bascule.yaml:11:24: vrrp[1].virtual_router_id: 51 is already used on eth0 for IPv4 by vrrp[0] (\"VI_1\") at line 7"
    );
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

#[test]
fn health_check_rules() {
    let hc = |body: &str| {
        err(&with_node(&format!(
            "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
        )))
    };
    assert_eq!(
        hc("      type: tcp\n      interval: 0s\n"),
        "bascule.yaml:10:17: services[0].health_check.interval: 0s is not allowed, expected a duration greater than 0"
    );
    assert_eq!(
        hc("      type: tcp\n      fall: 0\n"),
        "bascule.yaml:10:13: services[0].health_check.fall: 0 is out of range, expected 1..=65535"
    );
    assert_eq!(
        hc("      type: tcp\n      path: /x\n"),
        "bascule.yaml:10:13: services[0].health_check.path: only used with type http_get or ssl_get, not tcp"
    );
    assert_eq!(
        hc("      type: misc\n"),
        "bascule.yaml:9:7: services[0].health_check: missing required key \"command\" (type misc runs it)"
    );
    assert_eq!(
        hc("      interval: 1s\n"),
        "bascule.yaml:9:7: services[0].health_check: missing required key \"type\""
    );
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n      type: misc\n      command: /usr/local/bin/check-x\n      dynamic: true\n      retries: 2\n      delay_before_retry: 500ms\n"));
    let h = c.services[0].health_check.as_ref().unwrap();
    assert_eq!(h.kind, CheckType::Misc);
    assert_eq!(h.command.as_deref(), Some("/usr/local/bin/check-x"));
    assert!(h.dynamic);
    assert_eq!(
        (h.retries, h.delay_before_retry),
        (2, Duration::from_millis(500))
    );
}

#[test]
fn health_check_keys_per_type() {
    let hc = |body: &str| {
        err(&with_node(&format!(
            "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
        )))
    };
    let parsed = |body: &str| {
        let c = ok(&with_node(&format!(
            "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
        )));
        c.services[0].health_check.clone().unwrap()
    };
    // Statuses: one, a range, a list of both.
    let h = parsed("      type: http_get\n      expect_status: [200, \"300-302\"]\n      method: HEAD\n      virtualhost: www.example.com\n");
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
        parsed("      type: ssl_get\n      expect_status: 200-299\n").expect_status,
        vec![StatusRange { lo: 200, hi: 299 }]
    );
    assert_eq!(
        hc("      type: http_get\n      expect_status: \"299-200\"\n"),
        "bascule.yaml:10:22: services[0].health_check.expect_status: \"299-200\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""
    );
    assert_eq!(
        hc("      type: http_get\n      expect_status: [200, 700]\n"),
        "bascule.yaml:10:28: services[0].health_check.expect_status[1]: \"700\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""
    );
    // Digest and body regex.
    let h = parsed("      type: http_get\n      digest: 9A0364B9E99BB480DD25E1F0284C8555\n      body_regex: \"^ok\"\n");
    assert_eq!(
        h.digest.as_deref(),
        Some("9a0364b9e99bb480dd25e1f0284c8555")
    );
    assert_eq!(
        hc("      type: http_get\n      digest: abc\n"),
        "bascule.yaml:10:15: services[0].health_check.digest: \"abc\" is not valid, expected an MD5 digest of 32 hex digits (as printed by md5sum)"
    );
    assert!(hc("      type: http_get\n      body_regex: \"(unclosed\"\n")
        .starts_with("bascule.yaml:10:19: services[0].health_check.body_regex: \"(unclosed\" is not a valid regular expression: "));
    assert_eq!(
        hc("      type: http_get\n      method: HEAD\n      digest: 9a0364b9e99bb480dd25e1f0284c8555\n"),
        "bascule.yaml:11:15: services[0].health_check.digest: a HEAD response has no body to check; use method GET"
    );
    // TLS keys.
    assert_eq!(
        hc("      type: http_get\n      sni: www.example.com\n"),
        "bascule.yaml:10:12: services[0].health_check.sni: only used with type ssl_get, not http_get"
    );
    assert_eq!(
        hc("      type: ssl_get\n      sni: 10.0.0.1\n"),
        "bascule.yaml:10:12: services[0].health_check.sni: \"10.0.0.1\" is not valid, expected a DNS name such as www.example.com"
    );
    assert!(hc("      type: ssl_get\n      ca_file: /nonexistent/ca.pem\n")
        .starts_with("bascule.yaml:10:16: services[0].health_check.ca_file: \"/nonexistent/ca.pem\": cannot read it: "));
    // DNS keys.
    let h = parsed("      type: dns\n      query_name: example.com\n      query_type: AAAA\n      expect_rcode: NXDOMAIN\n      expect_answer: \"2001:db8::1\"\n");
    assert_eq!(
        (h.query_name.as_str(), h.query_type, h.expect_rcode),
        ("example.com", DnsType::Aaaa, DnsRcode::NxDomain)
    );
    assert_eq!(
        hc("      type: dns\n      query_type: A\n      expect_answer: www.example.com\n"),
        "bascule.yaml:11:22: services[0].health_check.expect_answer: \"www.example.com\": query_type A answers an IPv4 address, expected e.g. 192.0.2.1"
    );
    assert_eq!(
        hc("      type: dns\n      query_name: a..b\n"),
        "bascule.yaml:10:19: services[0].health_check.query_name: \"a..b\" is not a valid DNS name (empty label), expected e.g. example.com or ."
    );
    assert_eq!(
        hc("      type: dns\n      query_type: AXFR\n"),
        "bascule.yaml:10:19: services[0].health_check.query_type: \"AXFR\" is not a valid DNS record type, expected one of: A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, ANY"
    );
    // UDP payloads.
    let h = parsed("      type: udp\n      payload: \"hex:0d0A\"\n      expect: PONG\n");
    assert_eq!(
        (h.payload.as_slice(), h.expect.as_deref()),
        (&b"\r\n"[..], Some(&b"PONG"[..]))
    );
    assert_eq!(
        hc("      type: udp\n      payload: \"hex:0d0\"\n"),
        "bascule.yaml:10:16: services[0].health_check.payload: \"hex:0d0\" is not valid (an odd number of hex digits), expected text or hex: followed by hex digits (e.g. hex:0d0a)"
    );
    // A check needs a port when the service has none.
    assert_eq!(
        err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: tcp}\n")),
        "bascule.yaml:8:19: services[0].health_check: type tcp needs a port but the service's port is 0 (all ports): set health_check.connect_port"
    );
    let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: ping, initial_state: up}\n"));
    assert_eq!(
        c.services[0].health_check.as_ref().unwrap().initial_state,
        InitialState::Up
    );
    assert_eq!(
        hc("      type: ping\n      connect_port: 80\n"),
        "bascule.yaml:10:21: services[0].health_check.connect_port: only used with type tcp, http_get, ssl_get, smtp, dns or udp, not ping"
    );
    // The JSON dump writes payloads and statuses as the file does.
    let json =
        serde_json::to_string(&parsed("      type: udp\n      payload: \"hex:00ff\"\n")).unwrap();
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
    for s in ["0s", "100ms", "1s", "90s", "15m", "1h", "1500ms", "250us"] {
        assert_eq!(format_duration(parse_duration(s).unwrap()), s);
    }
}
