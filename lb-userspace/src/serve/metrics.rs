//! `GET /metrics`: a [`Snapshot`] as Prometheus metrics, with the `prometheus-client`
//! crate. The registry is built anew at each scrape from the snapshot (the datapath's
//! counters are the source of truth; the daemon keeps no copy that could drift). Health-check
//! durations come the same way: the health supervisor's histograms
//! (`health::BackendHealth::durations`), carried in the snapshot's backends.
//!
//! prometheus-client writes OpenMetrics text. Scrapers that ask for it (`Accept:
//! application/openmetrics-text`) get it as is; everyone else gets the classic Prometheus
//! text format (what `promtool check metrics` reads), in which a counter family is named
//! with its `_total` suffix.

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType, TypedMetric},
    registry::Registry,
};

use crate::{
    control::snapshot::{Snapshot, VrrpState},
    health::{DurationHistogram, DURATION_BUCKETS},
};

pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub service: String,
    /// The backend's label as in `BackendStatus::label`.
    pub backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScriptLabels {
    script: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceStateLabels {
    instance: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceToLabels {
    instance: String,
    to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceReasonLabels {
    instance: String,
    reason: String,
}

/// `bascule_healthcheck_duration_seconds{service,backend}`: histograms kept by the health
/// supervisor, encoded as they are.
#[derive(Debug, Default)]
struct CheckDurations(Vec<(BackendLabels, DurationHistogram)>);

impl TypedMetric for CheckDurations {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for CheckDurations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in &self.0 {
            // Per-bucket counts; the encoder makes them cumulative.
            let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(h.counts)
                .collect();
            encoder
                .encode_family(labels)?
                .encode_histogram::<NoLabelSet>(h.sum_seconds, h.count, &buckets, None)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// Every metric, as OpenMetrics text (`openmetrics`) or Prometheus text.
pub fn render(s: &Snapshot, openmetrics: bool) -> String {
    let mut r = Registry::default();
    register_services(&mut r, s);
    register_check_durations(&mut r, s);
    register_datapath(&mut r, s);
    register_vrrp(&mut r, s);
    register_announce(&mut r, s);
    register_sync(&mut r, s);
    register_daemon(&mut r, s);
    let mut text = String::new();
    encode(&mut text, &r).expect("writing to a String cannot fail");
    if openmetrics {
        text
    } else {
        openmetrics_to_prometheus(&text)
    }
}

/// Per service and per backend: traffic, active connections, up, weight.
fn register_services(r: &mut Registry, s: &Snapshot) {
    let svc_packets = Family::<ServiceLabels, Counter>::default();
    let svc_bytes = Family::<ServiceLabels, Counter>::default();
    let svc_conns = Family::<ServiceLabels, Counter>::default();
    let be_packets = Family::<BackendLabels, Counter>::default();
    let be_bytes = Family::<BackendLabels, Counter>::default();
    let be_conns = Family::<BackendLabels, Counter>::default();
    let be_active = Family::<BackendLabels, Gauge>::default();
    let be_up = Family::<BackendLabels, Gauge>::default();
    let be_weight = Family::<BackendLabels, Gauge>::default();
    let (be_over, be_overloads) = (Family::<BackendLabels, Gauge>::default(), Family::default());
    for svc in &s.services {
        let l = ServiceLabels {
            service: svc.name.clone(),
        };
        svc_packets.get_or_create(&l).inc_by(svc.packets);
        svc_bytes.get_or_create(&l).inc_by(svc.bytes);
        svc_conns.get_or_create(&l).inc_by(svc.connections);
        for b in &svc.backends {
            let l = BackendLabels {
                service: svc.name.clone(),
                backend: b.label.clone(),
            };
            be_packets.get_or_create(&l).inc_by(b.packets);
            be_bytes.get_or_create(&l).inc_by(b.bytes);
            be_conns.get_or_create(&l).inc_by(b.connections);
            be_active.get_or_create(&l).set(b.active_connections as i64);
            be_up
                .get_or_create(&l)
                .set((b.health.is_up() && b.active) as i64);
            be_weight.get_or_create(&l).set(i64::from(b.weight));
            if b.max_connections.is_some() {
                be_over.get_or_create(&l).set(i64::from(b.overloaded));
                let c: &Family<BackendLabels, Counter> = &be_overloads;
                c.get_or_create(&l).inc_by(b.overloads);
            }
        }
    }
    r.register(
        "bascule_service_packets",
        "Packets balanced to the service's backends",
        svc_packets,
    );
    r.register(
        "bascule_service_bytes",
        "Bytes (whole frames) balanced to the service's backends",
        svc_bytes,
    );
    r.register(
        "bascule_service_connections",
        "New flows scheduled for the service",
        svc_conns,
    );
    r.register(
        "bascule_backend_packets",
        "Packets sent to the backend",
        be_packets,
    );
    r.register(
        "bascule_backend_bytes",
        "Bytes (whole frames) sent to the backend",
        be_bytes,
    );
    r.register(
        "bascule_backend_connections",
        "New flows scheduled to the backend",
        be_conns,
    );
    r.register(
        "bascule_backend_active_connections",
        "Connection-table entries pointing at the backend",
        be_active,
    );
    r.register(
        "bascule_backend_up",
        "1 if the backend takes new flows (healthy or unchecked, and reachable), else 0",
        be_up,
    );
    r.register(
        "bascule_backend_weight",
        "Weight the scheduler uses for the backend (config, runtime override or health)",
        be_weight,
    );
    let over = "1 while the backend is at its connection threshold (max_connections): no new flows until below min_connections";
    r.register("bascule_backend_overloaded", over, be_over);
    let times = "Times the backend reached its connection threshold (max_connections)";
    r.register("bascule_backend_overloads", times, be_overloads);
}

/// `bascule_healthcheck_duration_seconds`: the health supervisor's histograms.
fn register_check_durations(r: &mut Registry, s: &Snapshot) {
    r.register(
        "bascule_healthcheck_duration_seconds",
        "Duration of health checks",
        CheckDurations(
            s.services
                .iter()
                .flat_map(|svc| {
                    svc.backends.iter().filter_map(|b| {
                        let h = b.check_durations.clone()?;
                        let labels = BackendLabels {
                            service: svc.name.clone(),
                            backend: b.label.clone(),
                        };
                        Some((labels, h))
                    })
                })
                .collect(),
        ),
    );
}

/// The datapath's verdicts, drop and pass reasons, connection table.
fn register_datapath(r: &mut Registry, s: &Snapshot) {
    let actions = Family::<ActionLabels, Counter>::default();
    for name in lb_common::XDP_ACTION_NAMES {
        let v = s.datapath.actions.get(name).copied().unwrap_or(0);
        actions
            .get_or_create(&ActionLabels {
                action: name.to_string(),
            })
            .inc_by(v);
    }
    r.register(
        "bascule_xdp_packets",
        "Packets seen by the XDP program, per verdict",
        actions,
    );
    let drops = Family::<ReasonLabels, Counter>::default();
    let passes = Family::<ReasonLabels, Counter>::default();
    for (name, dropped) in lb_common::REASON_NAMES {
        let (family, map) = if dropped {
            (&drops, &s.datapath.drops)
        } else {
            (&passes, &s.datapath.passes)
        };
        family
            .get_or_create(&ReasonLabels {
                reason: name.to_string(),
            })
            .inc_by(map.get(name).copied().unwrap_or(0));
    }
    r.register(
        "bascule_xdp_drops",
        "Packets dropped by the XDP program, per reason",
        drops,
    );
    r.register(
        "bascule_xdp_passes",
        "Packets for a VIP handed to the kernel instead of balanced, per reason",
        passes,
    );
    r.register(
        "bascule_conntrack_misses",
        "Packets of a service that found no connection-table entry (new flows)",
        counter(s.datapath.conntrack_misses),
    );
    r.register(
        "bascule_conntrack_evictions",
        "Entries of live flows taken by a new flow because their set was full, in the \
         connection table or the nat reply table (too small for the load, or a flood)",
        counter(s.datapath.conntrack_evictions),
    );
    let bypassed = Family::<ReasonLabels, Counter>::default();
    for name in lb_common::BYPASS_NAMES {
        bypassed
            .get_or_create(&ReasonLabels {
                reason: name.to_string(),
            })
            .inc_by(
                s.datapath
                    .conntrack_bypassed
                    .get(name)
                    .copied()
                    .unwrap_or(0),
            );
    }
    r.register(
        "bascule_conntrack_bypassed",
        "New flows forwarded by the scheduler without a connection-table entry, so as \
         to evict no established flow (conntrack.flood_protection), per reason",
        bypassed,
    );
    r.register(
        "bascule_conntrack_entries",
        "Entries in the connection table",
        gauge(s.datapath.conntrack_entries as i64),
    );
}

/// Per VRRP instance: state, effective priority, transitions, adverts received and
/// discarded; per track script (shared by the instances tracking it): up or not, once it
/// has a result.
fn register_vrrp(r: &mut Registry, s: &Snapshot) {
    let vrrp_priority = Family::<InstanceLabels, Gauge>::default();
    let script_up = Family::<ScriptLabels, Gauge>::default();
    let vrrp_state = Family::<InstanceStateLabels, Gauge>::default();
    let vrrp_transitions = Family::<InstanceToLabels, Counter>::default();
    let vrrp_received = Family::<InstanceLabels, Counter>::default();
    let vrrp_invalid = Family::<InstanceReasonLabels, Counter>::default();
    for v in &s.vrrp {
        vrrp_priority
            .get_or_create(&InstanceLabels {
                instance: v.instance.clone(),
            })
            .set(i64::from(v.priority));
        for script in v.scripts.iter().filter(|s| s.state != "unknown") {
            script_up
                .get_or_create(&ScriptLabels {
                    script: script.name.clone(),
                })
                .set(i64::from(script.state == "up"));
        }
        for state in VrrpState::ALL {
            vrrp_state
                .get_or_create(&InstanceStateLabels {
                    instance: v.instance.clone(),
                    state: state.as_str().to_string(),
                })
                .set((v.state == state) as i64);
            vrrp_transitions
                .get_or_create(&InstanceToLabels {
                    instance: v.instance.clone(),
                    to: state.as_str().to_string(),
                })
                .inc_by(v.transitions.get(&state).copied().unwrap_or(0));
        }
        vrrp_received
            .get_or_create(&InstanceLabels {
                instance: v.instance.clone(),
            })
            .inc_by(v.adverts_received);
        // Every known reason, 0 until it happens, so that rate() sees the first one.
        for reason in crate::vrrp::packet::Invalid::ALL {
            vrrp_invalid
                .get_or_create(&InstanceReasonLabels {
                    instance: v.instance.clone(),
                    reason: reason.label().to_string(),
                })
                .inc_by(0);
        }
        for (reason, n) in &v.adverts_invalid {
            vrrp_invalid
                .get_or_create(&InstanceReasonLabels {
                    instance: v.instance.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }
    r.register(
        "bascule_vrrp_state",
        "1 for the VRRP instance's current state, 0 for the others",
        vrrp_state,
    );
    r.register(
        "bascule_vrrp_priority",
        "The VRRP instance's effective priority (the configured one moved by weighted track scripts)",
        vrrp_priority,
    );
    r.register(
        "bascule_vrrp_script_up",
        "1 while the VRRP track script succeeds (after rise/fall), 0 while it fails",
        script_up,
    );
    r.register(
        "bascule_vrrp_transitions",
        "VRRP state transitions, per state entered",
        vrrp_transitions,
    );
    r.register(
        "bascule_vrrp_adverts_received",
        "VRRP advertisements received",
        vrrp_received,
    );
    r.register(
        "bascule_vrrp_adverts_invalid",
        "VRRP advertisements discarded, per reason",
        vrrp_invalid,
    );
}

/// Per VIP, with `announce:`: 1 while its route is in the announcement table.
fn register_announce(r: &mut Registry, s: &Snapshot) {
    let Some(announce) = &s.announce else {
        return;
    };
    let announced = Family::<VipLabels, Gauge>::default();
    for v in &announce.vips {
        announced
            .get_or_create(&VipLabels {
                vip: v.vip.to_string(),
            })
            .set(v.announced as i64);
    }
    r.register(
        "bascule_announced",
        "1 while this node announces the VIP (its route is in announce.table), else 0",
        announced,
    );
}

/// `sync:` (no series without it): entries sent, received, applied, refused by reason;
/// reports the datapath dropped (ring full).
fn register_sync(r: &mut Registry, s: &Snapshot) {
    let Some(sync) = &s.sync else {
        return;
    };
    r.register(
        "bascule_sync_sent",
        "Flow entries sent to the sync peers (each once, whatever the number of peers)",
        counter(sync.sent),
    );
    r.register(
        "bascule_sync_received",
        "Flow entries received in authenticated, fresh sync datagrams",
        counter(sync.received),
    );
    r.register(
        "bascule_sync_applied",
        "Peers' flow entries written into (or removed from) the connection table",
        counter(sync.applied),
    );
    let rejected = Family::<ReasonLabels, Counter>::default();
    for (reason, n) in &sync.rejected {
        rejected
            .get_or_create(&ReasonLabels {
                reason: reason.clone(),
            })
            .inc_by(*n);
    }
    r.register(
        "bascule_sync_rejected",
        "Sync datagrams (auth, replay, malformed) or entries (unknown_service, \
         unknown_backend, backend_down) refused, per reason",
        rejected,
    );
    r.register(
        "bascule_sync_dropped",
        "Flow reports the datapath dropped because the sync ring was full",
        counter(sync.dropped),
    );
}

/// The daemon itself: reloads, version, readiness.
fn register_daemon(r: &mut Registry, s: &Snapshot) {
    let reloads = Family::<ResultLabels, Counter>::default();
    for (result, n) in [("ok", s.reloads.ok), ("error", s.reloads.error)] {
        reloads
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc_by(n);
    }
    r.register(
        "bascule_config_reloads",
        "Configuration reloads, applied (ok) or refused (error)",
        reloads,
    );
    let build = Family::<VersionLabels, Gauge>::default();
    build
        .get_or_create(&VersionLabels {
            version: s.version.clone(),
        })
        .set(1);
    r.register("bascule_build_info", "bascule's version (value 1)", build);
    r.register(
        "bascule_ready",
        "1 once the program is attached and the maps are programmed",
        gauge(s.ready as i64),
    );
}

/// OpenMetrics text to the Prometheus text format: counter families are named with their
/// `_total` suffix in `# HELP`/`# TYPE`, and the `# EOF` / `# UNIT` lines go.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::snapshot::{
        BackendStatus, Health, Rates, ServiceStatus, VrrpScriptStatus, VrrpStatus,
    };

    fn snapshot() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            config_file: "b.yaml".into(),
            ready: true,
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "10.0.0.100".parse().unwrap(),
                port: 80,
                vips: Vec::new(),
                ports: Vec::new(),
                protocol: "tcp".into(),
                scheduler: "mh".into(),
                forwarding: "dr".into(),
                persistence: "0s".into(),
                packets: 10,
                bytes: 1000,
                connections: 2,
                rates: Rates::default(),
                backends: vec![BackendStatus {
                    address: "10.0.0.11".parse().unwrap(),
                    port: 80,
                    label: "10.0.0.11:80".into(),
                    forwarding: "dr".into(),
                    weight: 3,
                    config_weight: 3,
                    weight_override: None,
                    health: Health::Unchecked,
                    last_failure: None,
                    check_durations: None,
                    active: true,
                    active_connections: 1,
                    max_connections: Some(2),
                    min_connections: Some(1),
                    overloaded: true,
                    overloads: 3,
                    connections: 2,
                    packets: 10,
                    bytes: 1000,
                    rates: Rates::default(),
                }],
            }],
            ..Default::default()
        }
    }

    fn value(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    #[test]
    fn values_and_names() {
        let text = render(&snapshot(), false);
        assert_eq!(
            value(&text, "bascule_service_packets_total{service=\"web\"}").as_deref(),
            Some("10")
        );
        assert_eq!(
            value(
                &text,
                "bascule_backend_bytes_total{service=\"web\",backend=\"10.0.0.11:80\"}"
            )
            .as_deref(),
            Some("1000")
        );
        assert_eq!(
            value(
                &text,
                "bascule_backend_weight{service=\"web\",backend=\"10.0.0.11:80\"}"
            )
            .as_deref(),
            Some("3")
        );
        let be = "{service=\"web\",backend=\"10.0.0.11:80\"}";
        let at = |name: &str| value(&text, &format!("{name}{be}"));
        assert_eq!(at("bascule_backend_overloaded").as_deref(), Some("1"));
        assert_eq!(at("bascule_backend_overloads_total").as_deref(), Some("3"));
        assert_eq!(
            value(&text, "bascule_config_reloads_total{result=\"error\"}").as_deref(),
            Some("0")
        );
        assert!(text.contains("# TYPE bascule_service_packets_total counter\n"));
        assert!(text.contains("# HELP bascule_service_packets_total "));
        assert!(!text.contains("# EOF"));
        // No VRRP instance: no VRRP series; no announce: no announcement series.
        assert!(!text.contains("bascule_vrrp_state{"));
        assert!(!text.contains("bascule_announced"));
        let om = render(&snapshot(), true);
        assert!(om.contains("# TYPE bascule_service_packets counter\n"));
        assert!(om.ends_with("# EOF\n"));
    }

    #[test]
    fn announced_per_vip() {
        use crate::control::{AnnounceStatus, VipAnnouncement};
        let mut s = snapshot();
        s.announce = Some(AnnounceStatus {
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
                    vip: "fd00::100".parse().unwrap(),
                    announced: false,
                    reason: "no backend up".into(),
                },
            ],
        });
        let text = render(&s, false);
        assert_eq!(
            value(&text, "bascule_announced{vip=\"10.0.0.100\"}").as_deref(),
            Some("1")
        );
        assert_eq!(
            value(&text, "bascule_announced{vip=\"fd00::100\"}").as_deref(),
            Some("0")
        );
        assert!(text.contains("# TYPE bascule_announced gauge\n"));
    }

    #[test]
    fn sync_series_only_with_sync() {
        assert!(!render(&snapshot(), false).contains("bascule_sync_"));
        let mut s = snapshot();
        s.sync = Some(crate::control::SyncStatus {
            sent: 40,
            received: 30,
            applied: 28,
            rejected: vec![("auth".into(), 3), ("unknown_backend".into(), 2)],
            dropped: 1,
            ..Default::default()
        });
        let text = render(&s, false);
        for (series, v) in [
            ("bascule_sync_sent_total", "40"),
            ("bascule_sync_received_total", "30"),
            ("bascule_sync_applied_total", "28"),
            ("bascule_sync_rejected_total{reason=\"auth\"}", "3"),
            (
                "bascule_sync_rejected_total{reason=\"unknown_backend\"}",
                "2",
            ),
            ("bascule_sync_dropped_total", "1"),
        ] {
            assert_eq!(value(&text, series).as_deref(), Some(v), "{series}");
        }
    }

    #[test]
    fn vrrp_state_is_one_hot() {
        let mut s = snapshot();
        s.vrrp.push(VrrpStatus {
            instance: "VI_1".into(),
            interface: "eth0".into(),
            virtual_router_id: 51,
            state: VrrpState::Master,
            priority: 130,
            configured_priority: 150,
            sync_group: None,
            scripts: vec![
                VrrpScriptStatus {
                    name: "chk_web".into(),
                    weight: -20,
                    state: "down".into(),
                },
                VrrpScriptStatus {
                    name: "chk_new".into(),
                    weight: 0,
                    state: "unknown".into(),
                },
            ],
            master: None,
            virtual_addresses: vec![],
            transitions: [(VrrpState::Master, 1)].into_iter().collect(),
            adverts_received: 7,
            adverts_invalid: [("ttl".to_string(), 2)].into_iter().collect(),
        });
        let text = render(&s, false);
        let series = |st: &str| {
            value(
                &text,
                &format!("bascule_vrrp_state{{instance=\"VI_1\",state=\"{st}\"}}"),
            )
        };
        assert_eq!(series("master").as_deref(), Some("1"));
        assert_eq!(series("backup").as_deref(), Some("0"));
        assert_eq!(
            value(&text, "bascule_vrrp_priority{instance=\"VI_1\"}").as_deref(),
            Some("130"),
            "the effective priority"
        );
        assert_eq!(
            value(&text, "bascule_vrrp_script_up{script=\"chk_web\"}").as_deref(),
            Some("0")
        );
        assert!(
            !text.contains("script=\"chk_new\""),
            "no series before the first result"
        );
        assert_eq!(
            value(
                &text,
                "bascule_vrrp_adverts_invalid_total{instance=\"VI_1\",reason=\"ttl\"}"
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            value(
                &text,
                "bascule_vrrp_adverts_invalid_total{instance=\"VI_1\",reason=\"checksum\"}"
            )
            .as_deref(),
            Some("0"),
            "every reason is exposed from the start"
        );
        assert_eq!(
            value(
                &text,
                "bascule_vrrp_transitions_total{instance=\"VI_1\",to=\"fault\"}"
            )
            .as_deref(),
            Some("0")
        );
        assert_eq!(
            value(
                &text,
                "bascule_vrrp_adverts_received_total{instance=\"VI_1\"}"
            )
            .as_deref(),
            Some("7")
        );
    }

    #[test]
    fn health_check_histogram() {
        let mut s = snapshot();
        let mut h = DurationHistogram::default();
        h.observe(std::time::Duration::from_millis(3));
        s.services[0].backends[0].check_durations = Some(h);
        let text = render(&s, false);
        assert_eq!(
            value(
                &text,
                "bascule_healthcheck_duration_seconds_count{service=\"web\",backend=\"10.0.0.11:80\"}"
            )
            .as_deref(),
            Some("1")
        );
    }
}
