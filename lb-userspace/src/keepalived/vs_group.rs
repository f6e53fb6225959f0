//! `virtual_server_group`: its addresses (one, a range or a prefix) and ports, and the
//! services a `virtual_server group NAME` becomes: one per address and port today, or, when
//! this bascule reads `vips` and `ports`, one per set of addresses sharing the same ports.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use super::{
    convert::{Cx, NOT_YET},
    tree::Stmt,
    values,
};

/// Each `virtual_server_group`'s addresses and ports, by name.
pub type Groups = HashMap<String, Vec<(IpAddr, u16)>>;

pub fn groups(cx: &mut Cx, stmts: &[Stmt]) -> Groups {
    let mut groups = Groups::new();
    for s in stmts
        .iter()
        .filter(|s| s.keyword() == "virtual_server_group")
    {
        let Some(children) = cx.block(s) else {
            continue;
        };
        let Some(name) = s.arg(0) else {
            cx.note(s, "a virtual_server_group needs a name: left out");
            continue;
        };
        let mut entries = Vec::new();
        for line in children {
            if line.keyword() == "fwmark" {
                cx.note(
                    line,
                    "bascule matches addresses and ports, not firewall marks: left out",
                );
                continue;
            }
            let addrs = match values::address_range(line.keyword()) {
                Ok(a) => a,
                Err(_) if values::looks_like_name(line.keyword()) => {
                    cx.note(line, "a name, not an address: import-keepalived does not resolve names; left out");
                    continue;
                }
                Err(why) => {
                    cx.note(
                        line,
                        format!("not an address, range or prefix ({why}): left out"),
                    );
                    continue;
                }
            };
            let port = match line.arg(0) {
                None => 0,
                Some(p) => match values::uint(p, 0, 65535) {
                    Some(p) => p as u16,
                    None => {
                        cx.invalid(line, "ADDRESS [PORT]");
                        continue;
                    }
                },
            };
            if line.args().len() > 1 {
                cx.note(line, "only ADDRESS [PORT] is mapped: the rest is left out");
            }
            entries.extend(addrs.into_iter().map(|a| (a, port)));
        }
        groups.insert(name.to_string(), entries);
    }
    groups
}

/// A service to make: its name, addresses, port ranges and comment lines.
pub type Plan = (String, Vec<IpAddr>, Vec<(u16, u16)>, Vec<String>);

/// The services a virtual server becomes: one, or for a group one per address and port
/// (one per set of addresses sharing their ports, when this bascule reads `vips`/`ports`).
pub fn plan_services(
    cx: &mut Cx,
    s: &Stmt,
    tcp: bool,
    snmp_name: Option<&str>,
    targets: &[(IpAddr, u16)],
    group: Option<&str>,
) -> Vec<Plan> {
    let udp = if tcp { "" } else { "-udp" };
    let Some(group) = group else {
        let (vip, port) = targets[0];
        let name = snmp_name
            .map(str::to_string)
            .unwrap_or_else(|| format!("vs-{}-{port}{udp}", values::addr_in_name(vip)));
        return vec![(name, vec![vip], vec![(port, port)], Vec::new())];
    };
    let base = snmp_name
        .map(str::to_string)
        .unwrap_or_else(|| format!("{group}{udp}"));
    if !cx.features.service_groups {
        if targets.len() > 1 {
            cx.note(s, format!("vips and ports are {NOT_YET}: one service per address and port ({} services, each with its own table and counters)", targets.len()));
        }
        return targets
            .iter()
            .map(|&(vip, port)| {
                let name = format!("{base}-{}-{port}", values::addr_in_name(vip));
                let note = format!(
                    "virtual_server_group {group}: {}",
                    SocketAddr::new(vip, port)
                );
                (name, vec![vip], vec![(port, port)], vec![note])
            })
            .collect();
    }
    // Ports by family and address set: each (addresses, ports) pair is exactly a set of
    // the group's entries.
    let mut by_port: Vec<(u16, Vec<IpAddr>)> = Vec::new();
    for &(vip, port) in targets {
        match by_port.iter_mut().find(|(p, _)| *p == port) {
            Some((_, vips)) if !vips.contains(&vip) => vips.push(vip),
            Some(_) => {}
            None => by_port.push((port, vec![vip])),
        }
    }
    let mut sets: Vec<(Vec<IpAddr>, Vec<u16>)> = Vec::new();
    for (port, vips) in by_port {
        for six in [false, true] {
            let fam: Vec<IpAddr> = vips
                .iter()
                .copied()
                .filter(|v| v.is_ipv6() == six)
                .collect();
            if fam.is_empty() {
                continue;
            }
            // Port 0 (every port) is a service of its own: bascule takes no other port
            // beside it.
            let joins =
                |v: &Vec<IpAddr>, ports: &Vec<u16>| *v == fam && (port == 0) == ports.contains(&0);
            match sets.iter_mut().find(|(v, ports)| joins(v, ports)) {
                Some((_, ports)) => ports.push(port),
                None => sets.push((fam, vec![port])),
            }
        }
    }
    sets.into_iter()
        .map(|(vips, mut ports)| {
            ports.sort_unstable();
            (
                base.clone(),
                vips,
                port_ranges(&ports),
                vec![format!("virtual_server_group {group}")],
            )
        })
        .collect()
}

/// Sorted ports as inclusive ranges: `80, 8000, 8001, 8002` is `80`, `8000-8002`.
fn port_ranges(ports: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}
