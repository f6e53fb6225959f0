//! The statement tree into a bascule configuration: the top level and `global_defs` here,
//! each section in its own file, then what needs the whole file (names made unique, names
//! referred to, duplicate services, `node.interfaces`).

use std::collections::HashSet;

use super::{
    model::{Bascule, Garp, Service, PLACEHOLDER_INTERFACE},
    report::{Pos, Report},
    tree::Stmt,
    values::{self, Micros},
    virtual_server, vrrp, Features,
};

/// Why something the contract names is left out (or written as a comment) today.
pub const NOT_YET: &str = "not supported by this bascule yet";

/// The conversion's state: where findings go, what the target bascule reads, and the
/// `global_defs` settings that apply to every instance.
pub struct Cx<'r> {
    pub report: &'r mut Report,
    pub features: Features,
    pub globals: Globals,
}

#[derive(Debug, Default)]
pub struct Globals {
    /// `vrrp_version` (keepalived's default is 2; IPv6 instances use 3).
    pub vrrp_version: Option<u8>,
    /// `vrrp_garp_master_repeat`, `vrrp_garp_interval`, `vrrp_garp_master_refresh`.
    pub garp: Garp,
}

impl Cx<'_> {
    pub fn note(&mut self, s: &Stmt, why: impl Into<String>) {
        self.report.add(s.pos, s.text(), why);
    }

    /// A statement no mapping reads, inside block `inside`.
    pub fn unmapped(&mut self, s: &Stmt, inside: &str) {
        let why = match s.keyword().chars().next() {
            Some('@') => "conditional configuration (@ID) is not evaluated: left out".to_string(),
            Some('$') => "keepalived parameters ($NAME) are not expanded: left out".to_string(),
            _ => format!("not a {inside} keyword import-keepalived maps: left out"),
        };
        self.note(s, why);
    }

    /// A statement whose value cannot be read.
    pub fn invalid(&mut self, s: &Stmt, expected: &str) {
        self.note(s, format!("expected {expected}: left out"));
    }

    /// The first argument as an integer in `lo..=hi`, or a finding.
    pub fn uint_arg(&mut self, s: &Stmt, lo: u64, hi: u64) -> Option<u64> {
        let v = s.arg(0).and_then(|a| values::uint(a, lo, hi));
        if v.is_none() {
            self.invalid(s, &format!("an integer {lo}..={hi}"));
        }
        v
    }

    /// The first argument as keepalived's timer (seconds, maybe fractional), or a finding.
    pub fn timer_arg(&mut self, s: &Stmt) -> Option<Micros> {
        let v = s.arg(0).and_then(values::timer);
        if v.is_none() {
            self.invalid(s, "a number of seconds (e.g. 3 or 0.5)");
        }
        v
    }

    /// The statement's block, or a finding when it has none.
    pub fn block<'s>(&mut self, s: &'s Stmt) -> Option<&'s [Stmt]> {
        if s.block.is_none() {
            self.note(s, "expected a { ... } block: left out");
        }
        s.block.as_deref()
    }
}

/// Converts a keepalived configuration's statements.
pub fn convert(stmts: &[Stmt], features: Features, report: &mut Report) -> Bascule {
    let mut cx = Cx {
        report,
        features,
        globals: Globals::default(),
    };
    // global_defs and the groups first: they apply to what comes before them too.
    for s in stmts.iter().filter(|s| s.keyword() == "global_defs") {
        global_defs(&mut cx, s);
    }
    let groups = virtual_server::groups(&mut cx, stmts);
    let mut out = Bascule::default();
    for s in stmts {
        match s.keyword() {
            "global_defs" | "virtual_server_group" => {}
            "vrrp_instance" => out.vrrp.extend(vrrp::instance(&mut cx, s)),
            "vrrp_script" => out.vrrp_scripts.extend(vrrp::script(&mut cx, s)),
            "vrrp_sync_group" => out.sync_groups.extend(vrrp::sync_group(&mut cx, s)),
            "virtual_server" => virtual_server(&mut cx, s, &groups, &mut out.services),
            _ => top_level(&mut cx, s),
        }
    }
    vrrp::link(&mut cx, &mut out);
    finish_services(&mut out);
    node_interfaces(&mut cx, stmts, &mut out);
    out
}

fn top_level(cx: &mut Cx, s: &Stmt) {
    let why = match s.keyword() {
        "static_ipaddress" | "static_routes" | "static_rules" => {
            "static addresses, routes and rules are the system's network configuration, not bascule's: left out"
        }
        "vrrp_track_process" | "vrrp_track_file" | "track_file" | "bfd_instance"
        | "track_group" => {
            "bascule's instances track interfaces (and, with vrrp_scripts, scripts) only: left out"
        }
        "linkbeat_interfaces" | "garp_group" => "not mapped: left out",
        "SSL" => {
            "bascule's ssl_get sends no client certificate; to verify the backends' certificates set health_check.ca_file: left out"
        }
        _ if s.keyword().starts_with(['@', '$']) => {
            cx.unmapped(s, "top-level");
            return;
        }
        _ if s.block.is_some() => "unknown top-level block: left out",
        _ => "unknown top-level keyword: left out",
    };
    cx.note(s, why);
}

fn global_defs(cx: &mut Cx, s: &Stmt) {
    let Some(children) = cx.block(s) else {
        return;
    };
    for c in children {
        match c.keyword() {
            "vrrp_version" => {
                if let Some(v) = cx.uint_arg(c, 2, 3) {
                    cx.globals.vrrp_version = Some(v as u8);
                }
            }
            "vrrp_garp_master_repeat" => {
                cx.globals.garp.repeat = cx.uint_arg(c, 0, 65535).map(|v| v as u32);
            }
            "vrrp_garp_interval" => cx.globals.garp.interval = cx.timer_arg(c),
            "vrrp_garp_master_refresh" => cx.globals.garp.refresh = cx.timer_arg(c),
            "router_id" => cx.note(
                c,
                "bascule has no router id (instances and services are named in the file): left out",
            ),
            "notification_email" | "notification_email_from" | "smtp_server"
            | "smtp_helo_name" | "smtp_connect_timeout" | "smtp_alert" | "smtp_alert_vrrp"
            | "smtp_alert_checker" => cx.note(
                c,
                "bascule sends no e-mail; alert on its metrics (bascule_vrrp_state, bascule_backend_up): left out",
            ),
            "enable_script_security" | "script_user" => cx.note(
                c,
                "bascule runs commands as the user it runs as: left out",
            ),
            "vrrp_strict" => cx.note(
                c,
                "bascule adds no firewall rules and accepts unicast peers and pass authentication: left out",
            ),
            _ => cx.unmapped(c, "global_defs"),
        }
    }
}

/// A virtual server's services, less those of an address, port and protocol already
/// taken (bascule refuses them). A virtual server all of whose services are taken is
/// reported once, without the findings about its contents.
fn virtual_server(
    cx: &mut Cx,
    s: &Stmt,
    groups: &virtual_server::Groups,
    services: &mut Vec<Service>,
) {
    let outer = std::mem::take(cx.report);
    let mut new = virtual_server::virtual_server(cx, s, groups);
    let inner = std::mem::replace(cx.report, outer);
    let taken = |svc: &Service| {
        services.iter().find(|old| {
            old.protocol == svc.protocol
                && old.vips.iter().any(|v| svc.vips.contains(v))
                && old
                    .ports
                    .iter()
                    .any(|a| svc.ports.iter().any(|b| a.0 <= b.1 && b.0 <= a.1))
        })
    };
    let firsts: Vec<Option<Pos>> = new
        .iter()
        .map(|svc| taken(svc).map(|o| o.origin.pos))
        .collect();
    if !new.is_empty() && firsts.iter().all(Option::is_some) {
        let first = firsts[0].unwrap_or_default();
        cx.note(s, duplicate(first, s.pos));
        return;
    }
    cx.report.append(inner);
    let mut k = 0;
    new.retain(|svc| {
        let first = firsts[k];
        k += 1;
        if let Some(first) = first {
            cx.report.add(
                svc.origin.pos,
                svc.origin.text.clone(),
                duplicate(first, svc.origin.pos),
            );
        }
        first.is_none()
    });
    services.extend(new);
}

fn duplicate(first: Pos, at: Pos) -> String {
    let other = if first.file == at.file {
        ""
    } else {
        " of another file"
    };
    format!(
        "the same address, port and protocol as the virtual_server at line {}{other}: left out",
        first.line
    )
}

/// Names made unique and valid.
fn finish_services(out: &mut Bascule) {
    let mut names = HashSet::new();
    for svc in &mut out.services {
        svc.name = values::unique(values::name(&svc.name), &mut names);
    }
}

/// `node.interfaces`: the VRRP instances' interfaces, or a placeholder to edit.
fn node_interfaces(cx: &mut Cx, stmts: &[Stmt], out: &mut Bascule) {
    for inst in &out.vrrp {
        if !out.interfaces.contains(&inst.interface) {
            out.interfaces.push(inst.interface.clone());
        }
    }
    if !out.interfaces.is_empty() {
        return;
    }
    out.interfaces.push(PLACEHOLDER_INTERFACE.to_string());
    let why = format!(
        "no vrrp_instance names an interface: node.interfaces is the placeholder {PLACEHOLDER_INTERFACE}, replace it with the interface that receives the services' traffic"
    );
    match out.services.first() {
        Some(svc) => cx.report.add(svc.origin.pos, svc.origin.text.clone(), why),
        None => match stmts.first() {
            Some(s) => cx.note(s, why),
            None => cx.report.add(Pos { file: 0, line: 1 }, "(empty file)", why),
        },
    }
}
