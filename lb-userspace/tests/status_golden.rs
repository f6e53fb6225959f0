//! `bascule status` rendering against a golden file, the snapshot's JSON (what the CLI
//! reads from `/api/v1/services`) surviving a round trip, and the shipped dashboard and
//! alert rules naming only metrics the daemon exports.
//!
//! To accept a deliberate change of the output: `BASCULE_UPDATE_GOLDEN=1 cargo test -p
//! lb-userspace --test status_golden`, then review the diff of `tests/golden/status.txt`.

use std::collections::BTreeMap;

use bascule::{
    cli::status,
    control::snapshot::{
        BackendStatus, DatapathStats, Health, Rates, Reloads, ServiceStatus, Snapshot,
        VrrpScriptStatus, VrrpState, VrrpStatus,
    },
    control::{AnnounceStatus, VipAnnouncement},
    serve::metrics,
};

fn backend(label: &str, weight: u32, packets: u64) -> BackendStatus {
    let (address, port) = match label.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip(), sa.port()),
        Err(_) => (label.parse().unwrap(), 0),
    };
    BackendStatus {
        address,
        port,
        label: label.to_string(),
        forwarding: "dr".into(),
        weight,
        config_weight: weight,
        weight_override: None,
        health: Health::Unchecked,
        last_failure: None,
        check_durations: None,
        active: true,
        active_connections: packets / 40,
        max_connections: None,
        min_connections: None,
        overloaded: false,
        overloads: 0,
        connections: packets / 10,
        packets,
        bytes: packets * 600,
        rates: Rates {
            packets: packets as f64 / 100.0,
            bytes: packets as f64 * 6.0,
            connections: packets as f64 / 1000.0,
        },
    }
}

fn snapshot() -> Snapshot {
    let mut drained = backend("10.0.0.12:80", 0, 120_000);
    drained.weight_override = Some(0);
    drained.config_weight = 2;
    let mut down = backend("10.0.0.13:80", 0, 4_000);
    down.health = Health::Down;
    down.last_failure = Some("HTTP 503 from 10.0.0.13:80/healthz".into());
    down.active = false;
    down.rates = Rates::default();
    let mut healthy = backend("10.0.0.11:80", 1, 2_500_000);
    healthy.health = Health::Up;
    let mut unresolved = backend("[fd00::21]:443", 1, 0);
    unresolved.active = false;
    unresolved.forwarding = "tun".into();
    let web = ServiceStatus {
        name: "web".into(),
        vip: "10.0.0.100".parse().unwrap(),
        port: 80,
        vips: Vec::new(),
        ports: Vec::new(),
        protocol: "tcp".into(),
        scheduler: "mh".into(),
        forwarding: "dr".into(),
        persistence: "0s".into(),
        packets: 2_624_000,
        bytes: 1_574_400_000,
        connections: 262_400,
        rates: Rates {
            packets: 26_240.0,
            bytes: 15_744_000.0,
            connections: 2_624.0,
        },
        backends: vec![healthy, drained, down],
    };
    let dns = ServiceStatus {
        name: "dns6".into(),
        vip: "fd00::53".parse().unwrap(),
        port: 0,
        vips: Vec::new(),
        ports: Vec::new(),
        protocol: "udp".into(),
        scheduler: "mh".into(),
        forwarding: "tun".into(),
        persistence: "5m".into(),
        packets: 0,
        bytes: 0,
        connections: 0,
        rates: Rates::default(),
        backends: vec![unresolved],
    };
    let mut actions = BTreeMap::new();
    for (k, v) in [
        ("tx", 2_624_000),
        ("pass", 5_310),
        ("drop", 3),
        ("aborted", 0),
        ("redirect", 0),
    ] {
        actions.insert(k.to_string(), v);
    }
    Snapshot {
        version: "0.1.0".into(),
        config_file: "/etc/bascule/bascule.yaml".into(),
        ready: true,
        reloads: Reloads {
            ok: 3,
            error: 1,
            last_error: Some(
                "/etc/bascule/bascule.yaml:15:17: services[0].backends[0].weight: 70000 is out of range, expected 0..=65535".into(),
            ),
            last: None,
        },
        services: vec![web, dns],
        datapath: DatapathStats {
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_modes: vec!["native".into(), "generic".into()],
            adopted: true,
            actions,
            drops: [("truncated_ip".to_string(), 3), ("bad_ip_header".to_string(), 0)]
                .into_iter()
                .collect(),
            passes: [("no_backend".to_string(), 10)].into_iter().collect(),
            conntrack_misses: 262_400,
            conntrack_entries: 65_123,
            conntrack_capacity: 1_048_576,
            conntrack_evictions: 17,
            conntrack_bypassed: Default::default(),
        },
        vrrp: vec![
            VrrpStatus {
                instance: "VI_1".into(),
                interface: "eth0".into(),
                virtual_router_id: 51,
                state: VrrpState::Master,
                priority: 140,
                configured_priority: 140,
                sync_group: Some("G1".into()),
                scripts: vec![VrrpScriptStatus {
                    name: "chk_haproxy".into(),
                    weight: 0,
                    state: "up".into(),
                }],
                master: Some("10.0.0.2".parse().unwrap()),
                virtual_addresses: vec!["10.0.0.100/24".into()],
                transitions: [(VrrpState::Backup, 1), (VrrpState::Master, 1)]
                    .into_iter()
                    .collect(),
                adverts_received: 12,
                adverts_invalid: BTreeMap::new(),
            },
            VrrpStatus {
                instance: "VI_2".into(),
                interface: "eth1".into(),
                virtual_router_id: 52,
                state: VrrpState::Backup,
                priority: 80,
                configured_priority: 100,
                sync_group: None,
                scripts: vec![
                    VrrpScriptStatus {
                        name: "chk_web".into(),
                        weight: -20,
                        state: "down".into(),
                    },
                    VrrpScriptStatus {
                        name: "chk_db".into(),
                        weight: 10,
                        state: "unknown".into(),
                    },
                ],
                master: Some("10.0.1.3".parse().unwrap()),
                virtual_addresses: vec!["10.0.1.100/24".into()],
                transitions: [(VrrpState::Backup, 1)].into_iter().collect(),
                adverts_received: 40,
                adverts_invalid: BTreeMap::new(),
            },
        ],
        announce: Some(AnnounceStatus {
            table: 200,
            protocol: 186,
            draining: false,
            vips: vec![
                VipAnnouncement {
                    vip: "10.0.0.100".parse().unwrap(),
                    announced: true,
                    reason: "announced".into(),
                },
                VipAnnouncement {
                    vip: "fd00::53".parse().unwrap(),
                    announced: false,
                    reason: "no backend up".into(),
                },
            ],
        }),
        sync: Some(bascule::control::SyncStatus {
            peers: vec![bascule::control::PeerStatus {
                address: "10.0.0.3".parse().unwrap(),
                last_seen: None,
                datagrams: 0,
            }],
            sent: 1_200,
            received: 0,
            applied: 0,
            rejected: vec![("auth".into(), 4), ("replay".into(), 0)],
            dropped: 0,
        }),
    }
}

#[test]
fn status_matches_the_golden_file() {
    let golden = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/status.txt");
    let rendered = status::render(&snapshot());
    if std::env::var_os("BASCULE_UPDATE_GOLDEN").is_some() {
        std::fs::write(golden, &rendered).unwrap();
    }
    let expected = std::fs::read_to_string(golden).unwrap_or_default();
    assert!(
        rendered == expected,
        "bascule status output differs from {golden} (BASCULE_UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- got\n{rendered}"
    );
}

#[test]
fn snapshot_json_round_trips() {
    let s = snapshot();
    let json = serde_json::to_string(&s).unwrap();
    let back: Snapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(json.contains("\"health\":\"down\""), "{json}");
    assert!(
        json.contains("\"last_failure\":\"HTTP 503 from 10.0.0.13:80/healthz\""),
        "{json}"
    );
    assert!(json.contains("\"state\":\"master\""), "{json}");
    assert!(
        json.contains(r#"{"vip":"fd00::53","announced":false,"reason":"no backend up"}"#),
        "{json}"
    );
}

/// The metric names a scrape of `s` shows (Prometheus text format): every `# TYPE`
/// family, with a histogram's `_bucket`, `_sum` and `_count` series.
fn exported_names(s: &Snapshot) -> Vec<String> {
    let text = metrics::render(s, false);
    let mut names = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            names.push(name.to_string());
            if kind == "histogram" {
                names.extend(["_bucket", "_sum", "_count"].map(|suffix| format!("{name}{suffix}")));
            }
        }
    }
    names
}

/// Every `bascule_...` name in `text`.
fn metric_names_in(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("bascule_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        found.push(name);
    }
    found
}

#[test]
fn dashboard_and_alerts_name_only_exported_metrics() {
    let exported = exported_names(&snapshot());
    assert!(
        exported.iter().any(|n| n == "bascule_backend_up"),
        "{exported:?}"
    );
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy");
    let mut unknown = Vec::new();
    for file in ["grafana/bascule.json", "prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        let names = metric_names_in(&text);
        assert!(names.len() >= 9, "{file}: only {names:?}");
        unknown.extend(
            names
                .into_iter()
                .filter(|n| !exported.contains(n))
                .map(|n| format!("{file}: {n}")),
        );
    }
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "not exported by the daemon: {unknown:?}"
    );
}

#[test]
fn every_dashboard_panel_queries_something() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/bascule.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let empty: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] != "row")
        .filter(|p| {
            p["targets"].as_array().is_none_or(|t| {
                t.iter()
                    .all(|t| t["expr"].as_str().unwrap_or("").is_empty())
            })
        })
        .map(|p| p["title"].as_str().unwrap_or("?"))
        .collect();
    assert!(empty.is_empty(), "panels without a query: {empty:?}");
}
