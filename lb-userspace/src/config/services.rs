//! `services[]` and their `backends[]`: conversion, the rules within a service (duplicate
//! backends, address families, the Maglev table's size) and across services (duplicate
//! addresses and names).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::convert::Cx;
use super::keys::{BACKEND_KEYS, SERVICE_KEYS};
use super::scalars::family;
use super::schema::{
    Backend, BackendLoc, Forwarding, Protocol, Scheduler, Service, ServiceLoc,
    DEFAULT_MAGLEV_TABLE_SIZE,
};
use super::yaml::{pos_of, Obj, Pos, P, Y};
use lb_common::MAX_SERVICE_KEYS;

/// A service as converted, with the positions its cross-checks need.
pub(super) struct SvcDraft {
    pub(super) svc: Service,
    pub(super) loc: ServiceLoc,
    pub(super) name_pos: Pos,
}

impl Cx<'_> {
    pub(super) fn service(&mut self, y: &Y, path: &P) -> Option<SvcDraft> {
        let o = self.obj(y, path, SERVICE_KEYS)?;
        let name = self.req_field(&o, path, "name", Self::service_name);
        let endpoints = self.endpoints(&o, path);
        let (vip, port) = match &endpoints {
            Some(e) => (Some(e.vip), Some(e.port)),
            None => (None, None),
        };
        let several_ports = endpoints.as_ref().is_some_and(|e| !e.ports.is_empty());
        let protocol = self.field(&o, path, "protocol", Protocol::Tcp, Self::keyword);
        let scheduler = self.field(&o, path, "scheduler", Scheduler::Mh, Self::keyword);
        let forwarding = self.field(&o, path, "forwarding", Forwarding::Dr, Self::keyword);
        let persistence = self.field(&o, path, "persistence", Duration::ZERO, Self::duration);
        let sorry_server = self.opt_field(&o, path, "sorry_server", Self::socket_addr);
        let table = self.field(
            &o,
            path,
            "maglev_table_size",
            DEFAULT_MAGLEV_TABLE_SIZE,
            Self::table_size,
        );
        let health_check = self.opt_field(&o, path, "health_check", Self::health_check);

        // Backends need the service's VIP, port and forwarding for their checks.
        let backends_path = P::Key(path, "backends");
        let backends = match (vip, port, forwarding) {
            (Some(vip), Some(port), Some(fwd)) => {
                let ctx = BackendCtx {
                    vip,
                    port,
                    several_ports,
                    forwarding: fwd,
                };
                self.list(o.opt("backends"), &backends_path, "backends", |cx, y, p| {
                    cx.backend(y, p, &ctx)
                })
            }
            _ => None,
        };

        let (name, endpoints, protocol, scheduler, forwarding, persistence) = (
            name?,
            endpoints?,
            protocol?,
            scheduler?,
            forwarding?,
            persistence?,
        );
        let (sorry_server, maglev_table_size, health_check) =
            (sorry_server?, table?, health_check?);
        let (backends, backend_pos): (Vec<Backend>, Vec<BackendPos>) =
            backends?.into_iter().unzip();
        let svc = Service {
            name,
            vip: endpoints.vip,
            port: endpoints.port,
            protocol,
            scheduler,
            forwarding,
            persistence,
            sorry_server,
            maglev_table_size,
            backends,
            health_check,
            vips: endpoints.vips,
            ports: endpoints.ports,
        };
        if !self.service_rules(&o, path, &svc, &backend_pos) {
            return None;
        }
        Some(SvcDraft {
            name_pos: o.pos("name"),
            loc: service_loc(&o, &backend_pos),
            svc,
        })
    }

    fn service_name(&mut self, y: &Y, path: &P) -> Option<String> {
        self.name(y, path, "service")
    }

    fn table_size(&mut self, y: &Y, path: &P) -> Option<u32> {
        let v = self.u32(y, path, 0, u32::MAX)?;
        if v > DEFAULT_MAGLEV_TABLE_SIZE || !lb_common::maglev::is_prime(v) {
            let why = if v > DEFAULT_MAGLEV_TABLE_SIZE {
                "is too large"
            } else {
                "is not prime"
            };
            self.err(
                pos_of(y),
                path,
                format!("{v} {why}, expected a prime number up to {DEFAULT_MAGLEV_TABLE_SIZE} (e.g. 251, 4093, 65521, 65537)"),
            );
            return None;
        }
        Some(v)
    }

    /// The rules between a service's keys; false when one is broken (each reported).
    fn service_rules(&mut self, o: &Obj, path: &P, svc: &Service, backends: &[BackendPos]) -> bool {
        let mut ok = self.no_duplicate_backends(path, svc, backends);
        let maglev_table_size = svc.maglev_table_size;
        if svc.scheduler == Scheduler::Mh && svc.backends.len() > maglev_table_size as usize {
            self.err(
                o.pos("maglev_table_size"),
                &P::Key(path, "maglev_table_size"),
                format!(
                    "{maglev_table_size} is smaller than the number of backends ({}), expected a larger prime",
                    svc.backends.len()
                ),
            );
            ok = false;
        }
        if let Some(hc) = &svc.health_check {
            if svc.port == 0 && hc.uses_port() && hc.connect_port.is_none() {
                self.err(
                    o.pos("health_check"),
                    &P::Key(path, "health_check"),
                    format!(
                        "type {} needs a port but the service's port is 0 (all ports): set health_check.connect_port",
                        hc.kind
                    ),
                );
                ok = false;
            }
        }
        if let Some(sorry) = svc.sorry_server {
            if let Some(why) = family_mismatch(svc.vip, sorry.ip(), &sorry, svc.forwarding) {
                self.err(o.pos("sorry_server"), &P::Key(path, "sorry_server"), why);
                ok = false;
            }
        }
        ok
    }

    /// Duplicate backends (same address and destination port): reports the second.
    fn no_duplicate_backends(&mut self, path: &P, svc: &Service, pos: &[BackendPos]) -> bool {
        let (port, forwarding) = (svc.port, svc.forwarding);
        let backends_path = P::Key(path, "backends");
        let mut ok = true;
        let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (j, (b, loc)) in svc.backends.iter().zip(pos).enumerate() {
            let eff_port = match b.forwarding.unwrap_or(forwarding) {
                Forwarding::Nat => b.port.unwrap_or(port),
                _ => port,
            };
            if let Some(&first) = seen.get(&(b.address, eff_port)) {
                let shown =
                    if b.port.is_some() || b.forwarding.unwrap_or(forwarding) == Forwarding::Nat {
                        SocketAddr::new(b.address, eff_port).to_string()
                    } else {
                        b.address.to_string()
                    };
                self.err(
                    loc.address,
                    &P::Key(&P::Idx(&backends_path, j), "address"),
                    format!(
                        "backend {shown} is listed twice (also backends[{first}] at line {})",
                        pos[first].address.line
                    ),
                );
                ok = false;
            } else {
                seen.insert((b.address, eff_port), j);
            }
        }
        ok
    }

    fn backend(&mut self, y: &Y, path: &P, s: &BackendCtx) -> Option<(Backend, BackendPos)> {
        let o = self.obj(y, path, BACKEND_KEYS)?;
        let address = self.req_field(&o, path, "address", Self::ip);
        let port = self.opt_field(&o, path, "port", |cx, y, p| cx.u16(y, p, 1));
        let weight = self.field(&o, path, "weight", 1, |cx, y, p| cx.u32(y, p, 0, 65535));
        let forwarding = self.opt_field(&o, path, "forwarding", Self::keyword);
        let max_conns = self.opt_field(&o, path, "max_connections", |cx, y, p| {
            cx.u32(y, p, 1, u32::MAX)
        });
        let min_conns = self.opt_field(&o, path, "min_connections", |cx, y, p| {
            cx.u32(y, p, 1, u32::MAX)
        });
        let (address, port, weight, forwarding) = (address?, port?, weight?, forwarding?);
        let (max_connections, min_connections) = (max_conns?, min_conns?);
        let eff = forwarding.unwrap_or(s.forwarding);
        let mut ok = self.connection_thresholds(&o, path, max_connections, min_connections);
        if port.is_some() {
            let why = match eff {
                Forwarding::Nat if s.several_ports => Some("backend port cannot be used when the service has several ports: NAT then keeps the client's destination port; remove it"),
                Forwarding::Nat if s.port == 0 => Some("backend port cannot be used when the service port is 0 (all ports): NAT then keeps the client's destination port; remove it"),
                Forwarding::Nat => None,
                Forwarding::Dr | Forwarding::Tun => Some("backend port is only used with forwarding: nat; dr and tun keep the VIP port"),
                Forwarding::Local => Some("backend port is only used with forwarding: nat; local keeps the VIP port"),
            };
            if let Some(why) = why {
                self.err(o.pos("port"), &P::Key(path, "port"), why);
                ok = false;
            }
        }
        if let Some(why) = family_mismatch(s.vip, address, &address, eff) {
            self.err(o.pos("address"), &P::Key(path, "address"), why);
            ok = false;
        }
        ok.then_some((
            Backend {
                address,
                port,
                weight,
                forwarding,
                max_connections,
                min_connections,
                failed_weight: 0,
            },
            BackendPos {
                address: o.pos("address"),
                forwarding: o.pos("forwarding"),
            },
        ))
    }

    /// `min_connections` needs `max_connections` and cannot exceed it; false when broken
    /// (reported).
    fn connection_thresholds(
        &mut self,
        o: &Obj,
        path: &P,
        max: Option<u32>,
        min: Option<u32>,
    ) -> bool {
        let why = match (max, min) {
            (None, Some(_)) => {
                "min_connections needs max_connections (the threshold it is the lower end of)"
                    .to_string()
            }
            (Some(max), Some(min)) if min > max => {
                format!("{min} is above max_connections ({max}), expected at most {max}")
            }
            _ => return true,
        };
        self.err(
            o.pos("min_connections"),
            &P::Key(path, "min_connections"),
            why,
        );
        false
    }

    /// Cross-service checks: an (address, port, protocol) of two services, too many of
    /// them, and duplicate names.
    pub(super) fn check_services(&mut self, drafts: Vec<SvcDraft>) -> Vec<SvcDraft> {
        let mut by_key: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        let mut endpoints = 0;
        for (i, d) in drafts.iter().enumerate() {
            let s = &d.svc;
            let path_items = P::Key(&P::Root, "services");
            endpoints += s.endpoint_count();
            if endpoints > MAX_SERVICE_KEYS as usize {
                errors.push((
                    d.loc.item,
                    P::Idx(&path_items, i).to_string(),
                    format!(
                        "the services up to this one have {endpoints} (address, port) pairs; this build holds at most {MAX_SERVICE_KEYS}: list fewer ports, or use port 0 for every port of a VIP"
                    ),
                ));
                break;
            }
            let taken = s
                .addresses()
                .flat_map(|a| s.all_ports().map(move |p| (a, p)))
                .find_map(|(a, p)| match by_key.insert((a, p, s.protocol), i) {
                    Some(first) if first != i => Some((a, p, first)),
                    _ => None,
                });
            if let Some((addr, port, first)) = taken {
                errors.push((
                    d.loc.item,
                    P::Idx(&path_items, i).to_string(),
                    format!(
                        "duplicate service {}/{}, already defined by services[{first}] (\"{}\") at line {}",
                        SocketAddr::new(addr, port),
                        s.protocol,
                        drafts[first].svc.name,
                        drafts[first].loc.item.line
                    ),
                ));
            }
            if let Some(&first) = by_name.get(s.name.as_str()) {
                errors.push((
                    d.name_pos,
                    format!("services[{i}].name"),
                    format!(
                        "duplicate service name \"{}\", already used by services[{first}] at line {}",
                        s.name, drafts[first].name_pos.line
                    ),
                ));
            } else {
                by_name.insert(s.name.as_str(), i);
            }
        }
        for (pos, path, msg) in errors {
            self.err_at(pos, format!("{path}: {msg}"));
        }
        drafts
    }
}

/// What a backend's checks need from its service.
struct BackendCtx {
    vip: IpAddr,
    port: u16,
    /// `ports:` adds ports to `port`.
    several_ports: bool,
    forwarding: Forwarding,
}

#[derive(Clone, Copy)]
struct BackendPos {
    address: Pos,
    forwarding: Pos,
}

/// Where the service's keys sit, for errors reported after parsing.
fn service_loc(o: &Obj, backends: &[BackendPos]) -> ServiceLoc {
    ServiceLoc {
        item: o.pos,
        vip: o.pos("vip"),
        scheduler: o.pos("scheduler"),
        forwarding: o.pos("forwarding"),
        persistence: o.pos("persistence"),
        sorry_server: o.pos("sorry_server"),
        health_check: o.pos("health_check"),
        backends: backends
            .iter()
            .map(|l| BackendLoc {
                forwarding: l.forwarding,
            })
            .collect(),
    }
}

/// Why `addr` (a backend or sorry server, shown as `shown`) cannot serve `vip` with `fwd`.
fn family_mismatch(
    vip: IpAddr,
    addr: IpAddr,
    shown: &dyn fmt::Display,
    fwd: Forwarding,
) -> Option<String> {
    if vip.is_ipv4() == addr.is_ipv4() {
        return None;
    }
    let (fa, fv) = (family(addr), family(vip));
    match fwd {
        Forwarding::Local => None,
        Forwarding::Tun if vip.is_ipv4() => None, // IPv4-in-IPv6
        Forwarding::Tun => Some(format!(
            "{shown} is {fa} but the VIP {vip} is {fv}; forwarding tun cannot carry IPv6 in IPv4 (only IPv4 in IPv6)"
        )),
        Forwarding::Dr | Forwarding::Nat => Some(format!(
            "{shown} is {fa} but the VIP {vip} is {fv}; forwarding {fwd} needs the same address family (only tun can carry IPv4 in IPv6)"
        )),
    }
}
