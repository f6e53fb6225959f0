//! [`Config::check_host`]: what a valid configuration asks of the node it runs on (its
//! interfaces, an address of each VIP's family, a source address for each VRRP instance,
//! the interface of a sync group with an address of its family), checked against what the
//! node has.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::host::addresses::primary_address;

use super::errors::ConfigError;
use super::scalars::family;
use super::schema::Config;
use super::yaml::Pos;

/// What [`Config::check_host`] needs to know about the node: its interfaces and their
/// addresses (global and link-local).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub interfaces: HashMap<String, Vec<IpAddr>>,
}

impl Config {
    /// What this configuration asks of the node it runs on, checked against what the node
    /// has: every `node.interfaces` entry exists, and every VIP's address family is carried
    /// by at least one of them (an interface without an IPv6 address can neither receive
    /// an IPv6 VIP's traffic by neighbour discovery nor tunnel it). Empty: all fine.
    pub fn check_host(&self, host: &HostFacts) -> Vec<ConfigError> {
        let o = &self.origin;
        let err = |pos: Pos, message: String| ConfigError {
            file: o.file.clone(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        };
        let mut out = Vec::new();
        let known = {
            let mut names: Vec<&str> = host.interfaces.keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(", ")
        };
        for (i, iface) in self.node.interfaces.iter().enumerate() {
            if !host.interfaces.contains_key(&iface.name) {
                out.push(err(
                    o.interfaces.get(i).copied().unwrap_or_default(),
                    format!(
                        "node.interfaces[{i}].name: no interface \"{}\" on this node (it has: {})",
                        iface.name, known
                    ),
                ));
            }
        }
        for (i, svc) in self.services.iter().enumerate() {
            let carried = self.node.interfaces.iter().any(|iface| {
                host.interfaces.get(&iface.name).is_some_and(|addrs| {
                    addrs
                        .iter()
                        .any(|a| a.is_ipv4() == svc.vip.is_ipv4() && !link_local(a))
                })
            });
            if !carried {
                let names: Vec<&str> = self
                    .node
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect();
                out.push(err(
                    o.services.get(i).map_or_else(Pos::default, |l| l.vip),
                    format!(
                        "services[{i}].vip: no interface can reach {}: none of node.interfaces ({}) has an {} address; add one, or attach to an interface that has one",
                        svc.vip,
                        names.join(", "),
                        family(svc.vip)
                    ),
                ));
            }
        }
        // What a VRRP instance needs to start: its interface, and an address of the right
        // family to send adverts from (the same rule the instance applies).
        for (i, inst) in self.vrrp.iter().enumerate() {
            let pos = o.vrrp.get(i).copied().unwrap_or_default();
            let Some(addrs) = host.interfaces.get(&inst.interface) else {
                out.push(err(
                    pos,
                    format!(
                        "vrrp[{i}].interface: no interface \"{}\" on this node (it has: {})",
                        inst.interface, known
                    ),
                ));
                continue;
            };
            let v6 = inst.virtual_addresses.iter().any(|p| p.addr.is_ipv6());
            let vips: Vec<IpAddr> = inst.virtual_addresses.iter().map(|p| p.addr).collect();
            let source = primary_address(addrs.iter().copied(), &vips, v6, &inst.unicast_peers);
            if source.is_none() {
                let kind = if !v6 {
                    "IPv4"
                } else if inst.unicast_peers.iter().all(link_local) {
                    "IPv6 link-local"
                } else {
                    "global IPv6"
                };
                out.push(err(
                    pos,
                    format!(
                        "vrrp[{i}] ({}): interface {} has no {kind} address other than the virtual addresses to send adverts from; add one (`ip addr add ... dev {}`)",
                        inst.name, inst.interface, inst.interface
                    ),
                ));
            }
        }
        if let Some(g) = self.sync.as_ref().and_then(|s| s.group.as_ref()) {
            let pos = o.sync_interface;
            match host.interfaces.get(&g.interface) {
                None => out.push(err(
                    pos,
                    format!(
                        "sync.interface: no interface \"{}\" on this node (it has: {known})",
                        g.interface
                    ),
                )),
                Some(addrs) if !addrs.iter().any(|a| a.is_ipv4() == g.address.is_ipv4()) => {
                    out.push(err(
                        pos,
                        format!(
                            "sync.interface: {} has no {} address to send to group {} from; add one, or name the interface of the LB nodes' segment",
                            g.interface,
                            family(g.address),
                            g.address
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        out.sort_by_key(|e| (e.line, e.column));
        out
    }
}

/// An IPv6 link-local address (fe80::/10).
fn link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}
