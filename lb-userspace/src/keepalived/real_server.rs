//! `real_server` into a backend: its address (a name is reported, not resolved), port,
//! weight, forwarding and connection thresholds, and its first checker.

use std::net::{IpAddr, SocketAddr};

use super::{
    checkers::{self, CheckCtx, Inherited, CHECKERS},
    convert::{Cx, NOT_YET},
    model::{Backend, Check, Forwarding, Origin},
    tree::Stmt,
    values::{self, SECOND},
};

pub struct RealServer {
    pub stmt: Stmt,
    /// `None` for a name: not a backend, but its checker still tells the service's check.
    pub address: Option<IpAddr>,
    pub port: Option<u16>,
    pub weight: u32,
    pub forwarding: Option<Forwarding>,
    pub max_connections: Option<u32>,
    pub min_connections: Option<u32>,
    pub check: Option<Check>,
}

/// A `real_server` block; `vs` is its virtual server's checker settings.
pub fn real_server(cx: &mut Cx, c: &Stmt, vs: &Inherited) -> Option<RealServer> {
    let address = c.arg(0).and_then(values::ip);
    if address.is_none() {
        if !c.arg(0).is_some_and(values::looks_like_name) {
            cx.note(c, "expected ADDRESS [PORT]: left out");
            return None;
        }
        cx.note(c, "a name, not an address: import-keepalived does not resolve names (write the address); left out of the backends");
    }
    let port = match c.arg(1) {
        None => None,
        Some(p) => match values::uint(p, 0, 65535) {
            Some(p) => Some(p as u16).filter(|p| *p != 0),
            None => {
                cx.invalid(c, "ADDRESS [PORT] with a port 0..=65535");
                return None;
            }
        },
    };
    let mut rs = RealServer {
        stmt: c.clone(),
        address,
        port,
        weight: 1,
        forwarding: None,
        max_connections: None,
        min_connections: None,
        check: None,
    };
    let mut own = Inherited::default();
    let mut checker_stmts = Vec::new();
    let mut thresholds: (Option<&Stmt>, Option<&Stmt>) = (None, None);
    for k in c.children() {
        match k.keyword() {
            "weight" => match k.arg(0).and_then(|w| values::uint(w, 0, i32::MAX as u64)) {
                Some(w) if w > 65535 => {
                    cx.note(k, "bascule's weights go up to 65535: 65535 is used");
                    rs.weight = 65535;
                }
                Some(w) => rs.weight = w as u32,
                None => cx.invalid(k, "a weight 0..=65535"),
            },
            "lvs_method" | "lb_kind" => rs.forwarding = forwarding(cx, k),
            "uthreshold" | "lthreshold" => {
                // 0 is keepalived's "no threshold".
                let v = cx
                    .uint_arg(k, 0, u32::MAX as u64)
                    .map(|v| v as u32)
                    .filter(|v| *v != 0);
                if k.keyword() == "uthreshold" {
                    rs.max_connections = v;
                    thresholds.0 = Some(k);
                } else {
                    rs.min_connections = v;
                    thresholds.1 = Some(k);
                }
                if v.is_some() && !cx.features.connection_thresholds {
                    let key = if k.keyword() == "uthreshold" { "max_connections" } else { "min_connections" };
                    cx.note(k, format!("{key} is {NOT_YET}: written as a YAML comment"));
                }
            }
            "notify_up" | "notify_down" => cx.note(k, "bascule runs no command when a backend's health changes (bascule_backend_up shows it): left out"),
            "smtp_alert" => cx.note(k, "bascule sends no e-mail; alert on bascule_backend_up: left out"),
            "snmp_name" => cx.note(k, "bascule names backends by address: left out"),
            kw if CHECKERS.contains(&kw) => checker_stmts.push(k),
            _ => {
                if !own.statement(cx, k) {
                    cx.unmapped(k, "real_server");
                }
            }
        }
    }
    lower_threshold(cx, &mut rs, thresholds.1);
    let ctx = CheckCtx {
        inherited: own.under(vs),
        vs_delay_loop: vs.delay_loop.unwrap_or(60 * SECOND),
        rs_port: port,
    };
    for k in checker_stmts {
        let Some(check) = checkers::checker(cx, k, &ctx) else {
            continue;
        };
        if rs.check.is_none() {
            rs.check = Some(check);
        } else {
            cx.note(k, "bascule runs one check per backend: this checker is left out (keepalived wants all to pass)");
        }
    }
    Some(rs)
}

/// An `lthreshold` bascule reads as IPVS does: only below an `uthreshold`, and none above
/// it (IPVS would take new connections again at once).
fn lower_threshold(cx: &mut Cx, rs: &mut RealServer, stmt: Option<&Stmt>) {
    let (Some(min), Some(stmt)) = (rs.min_connections, stmt) else {
        return;
    };
    match rs.max_connections {
        None => {
            cx.note(
                stmt,
                "an lthreshold without uthreshold has no effect (in IPVS either): left out",
            );
            rs.min_connections = None;
        }
        Some(max) if min > max => {
            cx.note(stmt, format!("above uthreshold ({max}): min_connections is {max}, IPVS's effect (new connections again as soon as one closes)"));
            rs.min_connections = Some(max);
        }
        Some(_) => {}
    }
}

/// The backend a real server with an address becomes in one service, or `None` (reported).
#[allow(clippy::too_many_arguments)]
pub fn backend(
    cx: &mut Cx,
    rs: &RealServer,
    address: IpAddr,
    vip: IpAddr,
    fwd: Forwarding,
    single: u16,
    ports: &[(u16, u16)],
    backends: &[Backend],
) -> Option<Backend> {
    let eff = rs.forwarding.unwrap_or(fwd);
    if address.is_ipv6() != vip.is_ipv6() && !(eff == Forwarding::Tun && vip.is_ipv4()) {
        cx.note(&rs.stmt, format!("its address family differs from the virtual server's, which only tun carries (IPv4 in IPv6): left out of {}", SocketAddr::new(vip, single)));
        return None;
    }
    let port = match (eff, rs.port) {
        (Forwarding::Nat, Some(p)) if p != single && matches!(ports, [(0, 0)]) => {
            cx.note(&rs.stmt, "NAT keeps the client's destination port on a port-0 service: the real server's port is left out");
            None
        }
        (Forwarding::Nat, Some(p)) if p != single && single == 0 => {
            cx.note(&rs.stmt, "NAT keeps the client's destination port on a service of several ports (IPVS rewrote each to the real server's): the real server's port is left out");
            None
        }
        (Forwarding::Nat, Some(p)) if p != single => Some(p),
        (_, Some(p)) if p != single && single != 0 => {
            cx.note(&rs.stmt, "IPVS keeps the virtual server's port with DR and TUN: the real server's port is only checked");
            None
        }
        _ => None,
    };
    let traffic_port = port.unwrap_or(single);
    if backends
        .iter()
        .any(|b| b.address == address && b.port.unwrap_or(single) == traffic_port)
    {
        cx.note(
            &rs.stmt,
            "the same address and port as a real server above: left out",
        );
        return None;
    }
    Some(Backend {
        origin: Origin {
            pos: rs.stmt.pos,
            text: rs.stmt.text(),
        },
        address,
        port,
        weight: rs.weight,
        forwarding: (eff != fwd).then_some(eff),
        max_connections: rs.max_connections,
        min_connections: rs.min_connections,
    })
}

/// `lb_kind` / `lvs_method`: `NAT`, `DR` or `TUN` (IP in IP).
pub fn forwarding(cx: &mut Cx, c: &Stmt) -> Option<Forwarding> {
    let f = match c.arg(0).map(str::to_ascii_uppercase).as_deref() {
        Some("NAT") => Forwarding::Nat,
        Some("DR") => Forwarding::Dr,
        Some("TUN") => Forwarding::Tun,
        _ => {
            cx.invalid(c, "NAT, DR or TUN");
            return None;
        }
    };
    let rest = &c.args()[1..];
    if !rest.is_empty() && rest != ["type", "ipip"] {
        cx.note(
            c,
            "bascule tunnels IP in IP only (IPv4 or IPv6): the tunnel options are left out",
        );
    }
    Some(f)
}
