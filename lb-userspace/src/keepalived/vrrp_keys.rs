//! How single statements of a `vrrp_instance` read: a `virtual_ipaddress` line, the
//! advert interval a VRRP version carries, the notify commands, and why the keywords
//! bascule has no use for are left out.

use std::net::IpAddr;

use super::{
    convert::Cx,
    model::Notify,
    tree::Stmt,
    values::{self, Micros, SECOND},
};

/// One `virtual_ipaddress` line.
pub struct Vip {
    pub addr: IpAddr,
    /// `ADDRESS` or `ADDRESS/PREFIX`, as bascule writes it.
    pub text: String,
    pub dev: Option<String>,
    pub stmt: Stmt,
}

pub fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The advert interval in what the version can carry: whole seconds up to 255 s with
/// version 2, centiseconds up to 40.95 s with version 3.
pub fn advert(cx: &mut Cx, asked: Option<&(Micros, Stmt)>, version: u8) -> Micros {
    let Some((t, stmt)) = asked else {
        return SECOND;
    };
    let (step, max) = if version == 2 {
        (SECOND, 255 * SECOND)
    } else {
        (10_000, 40_950_000)
    };
    let fitted = t.div_ceil(step).saturating_mul(step).clamp(step, max);
    if fitted != *t {
        cx.note(
            stmt,
            format!(
                "VRRP version {version} advertises {}: {} is used",
                if version == 2 {
                    "whole seconds up to 255"
                } else {
                    "centiseconds up to 40.95 s"
                },
                values::duration(fitted)
            ),
        );
    }
    fitted
}

/// keepalived runs `notify_STATE` with no arguments, then `notify` with four (`INSTANCE
/// NAME STATE PRIORITY`); bascule appends those four to the one command of each state.
/// `; :` after a `notify_STATE` command gives the four to `:`, which ignores them.
pub fn notify(n: &[Option<String>; 4]) -> Notify {
    let generic = n[0].as_deref();
    let mut out = Notify::default();
    let mut uses_colon = false;
    // `A; B`, or `A & B` when A already ends with `&` (`A &; B` is no shell).
    let then = |a: &str, b: &str| {
        let a = a.trim_end();
        if a.ends_with('&') {
            format!("{a} {b}")
        } else {
            format!("{a}; {b}")
        }
    };
    let mut combine = |specific: &Option<String>| -> Option<String> {
        match (specific.as_deref(), generic) {
            (Some(s), Some(g)) => Some(then(s, g)),
            (Some(s), None) => {
                uses_colon = true;
                Some(then(s, ":"))
            }
            (None, g) => g.map(str::to_string),
        }
    };
    out.master = combine(&n[1]);
    out.backup = combine(&n[2]);
    out.fault = combine(&n[3]);
    if uses_colon {
        out.notes.push("keepalived runs notify_master/backup/fault without arguments: \"; :\" takes the four bascule adds".into());
    }
    if generic.is_some() && n[1..].iter().any(Option::is_some) {
        out.notes
            .push("keepalived's notify command runs after notify_STATE, with the arguments".into());
    }
    out
}

pub fn vip(cx: &mut Cx, line: &Stmt) -> Option<Vip> {
    let Some((addr, plen)) = values::prefix(line.keyword()) else {
        if values::looks_like_name(line.keyword()) {
            cx.note(
                line,
                "a name, not an address: import-keepalived does not resolve names; left out",
            );
        } else {
            cx.invalid(line, "an ADDRESS or ADDRESS/PREFIX");
        }
        return None;
    };
    let mut v = Vip {
        addr,
        text: plen.map_or(addr.to_string(), |p| format!("{addr}/{p}")),
        dev: None,
        stmt: line.clone(),
    };
    let mut dropped = Vec::new();
    let mut words = line.args().iter();
    while let Some(w) = words.next() {
        match w.as_str() {
            "dev" => v.dev = words.next().cloned(),
            "label" | "brd" | "broadcast" | "scope" | "peer" | "preferred_lft" => {
                dropped.push(format!("{w} {}", words.next().map_or("", String::as_str)));
            }
            _ => dropped.push(w.clone()),
        }
    }
    if !dropped.is_empty() {
        cx.note(
            line,
            format!(
                "bascule adds the address with its prefix only: {} left out",
                dropped.join(", ")
            ),
        );
    }
    Some(v)
}

pub fn unmapped(cx: &mut Cx, c: &Stmt) {
    let why = match c.keyword() {
        "unicast_src_ip" | "mcast_src_ip" => "bascule sends adverts from the interface's primary address of the family: left out",
        "dont_track_primary" => "bascule always tracks the instance's interface (down: FAULT): left out",
        "use_vmac" | "vmac_xmit_base" => "bascule sends adverts from the interface's own MAC (no VRRP virtual MAC): left out",
        "no_accept" => "bascule's master accepts the traffic of the addresses it holds: left out",
        "notify_stop" | "notify_deleted" | "notify_master_rx_lower_pri" => "bascule runs commands on MASTER, BACKUP and FAULT only: left out",
        "garp_master_delay" | "garp_master_refresh_repeat" | "garp_lower_prio_delay" | "garp_lower_prio_repeat" => "bascule sends one burst of garp.repeat announcements on becoming master (and one every garp.refresh): left out",
        "virtual_routes" | "virtual_rules" => "bascule adds addresses only, not routes or rules: left out (a notify command can)",
        "track_file" | "track_process" | "track_bfd" => "bascule's instances track interfaces (and, with vrrp_scripts, scripts) only: left out",
        "smtp_alert" => "bascule sends no e-mail; alert on bascule_vrrp_state: left out",
        "lvs_sync_daemon_interface" => "IPVS's connection sync daemon is not bascule's: left out",
        "strict_mode" => "bascule adds no firewall rules and accepts unicast peers and pass authentication: left out",
        _ => return cx.unmapped(c, "vrrp_instance"),
    };
    cx.note(c, why);
}
