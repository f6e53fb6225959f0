//! `virtual_server` into `services[]`, its `real_server`s into `backends[]`. keepalived's
//! defaults are written out where bascule's differ: scheduler `wlc`, forwarding `nat`
//! (NAT), protocol UDP when none is given (keepalived warns and uses UDP), a 360 s
//! persistence for a port-0 service without one. bascule has one health check per
//! service: the first real server's first checker; a real server whose checker differs is
//! reported.

use std::net::{IpAddr, SocketAddr};

use super::{
    checkers::{self, Inherited},
    convert::Cx,
    model::{Backend, Check, Forwarding, KeyNotes, Origin, Protocol, Service},
    real_server::{backend, forwarding, real_server, RealServer},
    tree::Stmt,
    values::{self, Micros, SECOND},
    vs_group::plan_services,
};

pub use super::vs_group::{groups, Groups};

/// What a `virtual_server` block says, before keepalived's defaults apply.
#[derive(Default)]
struct Vs {
    protocol: Option<Protocol>,
    sctp: bool,
    scheduler: Option<String>,
    forwarding: Option<Forwarding>,
    persistence: Option<Micros>,
    sorry: Option<(IpAddr, Option<u16>, Stmt)>,
    inherited: Inherited,
    snmp_name: Option<String>,
    real_servers: Vec<Stmt>,
    key_notes: KeyNotes,
}

pub fn virtual_server(cx: &mut Cx, s: &Stmt, groups: &Groups) -> Vec<Service> {
    let Some(children) = cx.block(s) else {
        return Vec::new();
    };
    let (targets, group) = match (s.arg(0), s.arg(1)) {
        (Some("fwmark"), _) => {
            cx.note(s, "bascule matches addresses and ports, not firewall marks: left out (write one virtual_server per address and port)");
            return Vec::new();
        }
        (Some("group"), Some(name)) => {
            match groups.get(name) {
                Some(entries) if !entries.is_empty() => (entries.clone(), Some(name)),
                Some(_) => {
                    cx.note(s, "its virtual_server_group has no address and port bascule can use: left out");
                    return Vec::new();
                }
                None => {
                    cx.note(s, format!("no virtual_server_group {name}: left out"));
                    return Vec::new();
                }
            }
        }
        (Some(a), port) => {
            let Some(addr) = values::ip(a) else {
                let why = if values::looks_like_name(a) {
                    "a name, not an address: import-keepalived does not resolve names; left out"
                } else {
                    "expected ADDRESS [PORT], fwmark N or group NAME: left out"
                };
                cx.note(s, why);
                return Vec::new();
            };
            match port.map(|p| values::uint(p, 0, 65535)) {
                None => (vec![(addr, 0)], None),
                Some(Some(p)) => (vec![(addr, p as u16)], None),
                Some(None) => {
                    cx.invalid(s, "ADDRESS [PORT] with a port 0..=65535");
                    return Vec::new();
                }
            }
        }
        (None, _) => {
            cx.invalid(s, "ADDRESS [PORT], fwmark N or group NAME");
            return Vec::new();
        }
    };
    let mut vs = Vs::default();
    for c in children {
        vs.statement(cx, c);
    }
    if vs.sctp {
        return Vec::new();
    }
    if vs.protocol.is_none() {
        cx.note(s, "no protocol: keepalived uses UDP (and warns), so does this import; add protocol TCP if TCP was meant");
    }
    let real_servers: Vec<RealServer> = vs
        .real_servers
        .iter()
        .filter_map(|c| real_server(cx, c, &vs.inherited))
        .collect();
    let tcp = vs.protocol == Some(Protocol::Tcp);
    let plans = plan_services(cx, s, tcp, vs.snmp_name.as_deref(), &targets, group);
    plans
        .into_iter()
        .map(|(name, vips, ports, notes)| {
            assemble(cx, s, &vs, &real_servers, name, vips, ports, notes)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn assemble(
    cx: &mut Cx,
    s: &Stmt,
    vs: &Vs,
    real_servers: &[RealServer],
    name: String,
    vips: Vec<IpAddr>,
    ports: Vec<(u16, u16)>,
    notes: Vec<String>,
) -> Service {
    let fwd = vs.forwarding.unwrap_or(Forwarding::Nat);
    let vip = vips[0];
    // The port traffic arrives on, when there is one (0: every port, or several).
    let single = match ports.as_slice() {
        [(lo, hi)] if lo == hi => *lo,
        _ => 0,
    };
    let mut key_notes = vs.key_notes.clone();
    let mut persistence = vs.persistence;
    if ports.iter().any(|&(lo, _)| lo == 0) && persistence.is_none() {
        persistence = Some(360 * SECOND);
        key_notes.push(("persistence", "keepalived's for a port-0 service".into()));
    }
    for (key, set, why) in [
        (
            "protocol",
            vs.protocol.is_some(),
            "keepalived's default when none is given",
        ),
        ("scheduler", vs.scheduler.is_some(), "keepalived's default"),
        (
            "forwarding",
            vs.forwarding.is_some(),
            "keepalived's default (NAT)",
        ),
    ] {
        if !set {
            key_notes.push((key, why.into()));
        }
    }
    let mut backends: Vec<Backend> = Vec::new();
    let mut check: Option<(Check, &RealServer)> = None;
    for rs in real_servers {
        let eff = rs.forwarding.unwrap_or(fwd);
        // A named server is no backend, but its checker still counts for the service's.
        let traffic_port = match rs.address {
            Some(address) => match backend(cx, rs, address, vip, fwd, single, &ports, &backends) {
                Some(b) => {
                    let port = b.port.unwrap_or(single);
                    backends.push(b);
                    port
                }
                None => continue,
            },
            None => rs.port.filter(|_| eff == Forwarding::Nat).unwrap_or(single),
        };
        service_check(cx, rs, traffic_port, &mut check);
    }
    if check.is_some() {
        for rs in real_servers
            .iter()
            .filter(|rs| rs.check.is_none() && rs.address.is_some())
        {
            cx.note(&rs.stmt, "no checker: keepalived keeps it up, bascule checks it as the service's other backends");
        }
    }
    let sorry_server = vs.sorry.as_ref().and_then(|(addr, port, stmt)| {
        if addr.is_ipv6() != vip.is_ipv6() && !(fwd == Forwarding::Tun && vip.is_ipv4()) {
            cx.note(
                stmt,
                "its address family differs from the virtual server's: left out",
            );
            return None;
        }
        Some(SocketAddr::new(*addr, port.unwrap_or(single)))
    });
    Service {
        origin: Origin {
            pos: s.pos,
            text: s.text(),
        },
        notes,
        name,
        vips,
        ports,
        protocol: vs.protocol.unwrap_or(Protocol::Udp),
        scheduler: vs.scheduler.clone().unwrap_or_else(|| "wlc".into()),
        forwarding: fwd,
        persistence,
        sorry_server,
        backends,
        health_check: check.map(|(c, _)| c),
        key_notes,
    }
}

/// The service's check: the first real server's; a later one that differs is reported.
fn service_check<'r>(
    cx: &mut Cx,
    rs: &'r RealServer,
    traffic_port: u16,
    check: &mut Option<(Check, &'r RealServer)>,
) {
    let Some(own) = &rs.check else {
        return;
    };
    let own = match rs.address {
        Some(a) => checkers::for_backend(own, a),
        None => own.clone(),
    };
    let mine = match checkers::for_service(&own, traffic_port) {
        Ok(c) => c,
        Err(why) => {
            cx.report.add(own.origin.pos, own.origin.text.clone(), why);
            return;
        }
    };
    match check {
        None => *check = Some((mine, rs)),
        Some((first, from)) => {
            let keys = first.differences(&mine);
            if !keys.is_empty() {
                cx.report.add(
                    mine.origin.pos,
                    mine.origin.text.clone(),
                    format!(
                        "bascule checks every backend of a service alike: this checker differs ({}) from the one of {} at line {}, which is used",
                        keys.join(", "),
                        from.stmt.text(),
                        first.origin.pos.line
                    ),
                );
            }
        }
    }
}

impl Vs {
    fn statement(&mut self, cx: &mut Cx, c: &Stmt) {
        match c.keyword() {
            "protocol" => match c.arg(0).map(str::to_ascii_uppercase).as_deref() {
                Some("TCP") => self.protocol = Some(Protocol::Tcp),
                Some("UDP") => self.protocol = Some(Protocol::Udp),
                Some("SCTP") => {
                    cx.note(c, "bascule balances TCP and UDP: the virtual server is left out");
                    self.sctp = true;
                }
                _ => cx.invalid(c, "TCP, UDP or SCTP"),
            },
            "lb_algo" | "lvs_sched" => {
                self.scheduler = scheduler(cx, c);
                self.key_notes.push(("scheduler", c.text()));
            }
            "lb_kind" | "lvs_method" => {
                self.forwarding = forwarding(cx, c).or(self.forwarding);
                self.key_notes.push(("forwarding", c.text()));
            }
            "persistence_timeout" => {
                self.key_notes.push(("persistence", c.text()));
                self.persistence = match c.arg(0) {
                    None => Some(360 * SECOND),
                    Some(_) => cx.uint_arg(c, 0, u32::MAX as u64).map(|t| t * SECOND).filter(|t| *t > 0),
                }
            }
            "persistence_granularity" => cx.note(c, "bascule keeps persistence per client address: left out"),
            "persistence_engine" => cx.note(c, "bascule has no persistence engines: left out"),
            "sorry_server" => match c.arg(0).and_then(values::ip) {
                Some(a) => {
                    let port = c.arg(1).and_then(|p| values::uint(p, 0, 65535)).map(|p| p as u16);
                    self.sorry = Some((a, port, c.clone()));
                }
                None if c.arg(0).is_some_and(values::looks_like_name) => cx.note(
                    c,
                    "a name, not an address: import-keepalived does not resolve names; left out",
                ),
                None => cx.invalid(c, "ADDRESS [PORT]"),
            },
            "sorry_server_inhibit" | "sorry_server_lvs_method" => cx.note(c, "bascule's sorry server takes every new flow while no backend is up, with the service's forwarding: left out"),
            "quorum" if c.arg(0) == Some("1") => {}
            "hysteresis" if c.arg(0) == Some("0") => {}
            "quorum" | "hysteresis" | "quorum_up" | "quorum_down" => cx.note(c, "bascule has no quorum: it balances to the backends that are up, and to the sorry_server only when none is; left out"),
            "ha_suspend" => cx.note(c, "bascule checks backends whether or not this node holds the address: left out"),
            "omega" => cx.note(c, "bascule runs no command at shutdown: left out"),
            "ops" => cx.note(c, "bascule schedules UDP by flow, not by packet: left out"),
            "hashed" | "flag-1" | "flag-2" | "flag-3" | "sh-port" | "sh-fallback" | "mh-port"
            | "mh-fallback" => cx.note(c, "bascule's schedulers take no flags: left out"),
            "smtp_alert" => cx.note(c, "bascule sends no e-mail; alert on bascule_backend_up: left out"),
            "ip_family" => cx.note(c, "only used with fwmark services: left out"),
            "snmp_name" => match c.arg(0) {
                Some(n) => self.snmp_name = Some(n.to_string()),
                None => cx.invalid(c, "a name"),
            },
            "real_server" => self.real_servers.push(c.clone()),
            _ => {
                if !self.inherited.statement(cx, c) {
                    cx.unmapped(c, "virtual_server");
                }
            }
        }
    }
}

fn scheduler(cx: &mut Cx, c: &Stmt) -> Option<String> {
    let s = c.arg(0)?;
    match s {
        "rr" | "wrr" | "lc" | "wlc" | "lblc" | "lblcr" | "dh" | "sh" | "sed" | "nq" | "mh" => {
            Some(s.to_string())
        }
        "fo" | "ovf" | "twos" => {
            cx.note(
                c,
                "bascule has no such scheduler: wlc (keepalived's default) is used",
            );
            None
        }
        _ => {
            cx.invalid(
                c,
                "an IPVS scheduler (rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh)",
            );
            None
        }
    }
}
