//! `vrrp_instance` into `vrrp[]`. keepalived's defaults are written out where bascule's
//! differ: VRRP version 2 (3 for IPv6), priority 255 for `state MASTER` without one.
//! An instance carries one address family, as in keepalived (which ignores addresses of
//! the other family); those, and `virtual_ipaddress_excluded` addresses of the other
//! family (keepalived's way to move IPv6 addresses with an IPv4 instance), go to a second
//! instance of their own.

use std::net::IpAddr;

use super::{
    convert::Cx,
    model::{Garp, Instance, KeyNotes, Origin, Ref},
    tree::Stmt,
    values::{self, Micros, SECOND},
    vrrp_keys::{advert, notify, truncate_bytes, unmapped, vip, Vip},
};

pub use super::vrrp_track::{link, script, sync_group};

/// What an instance's statements say, before keepalived's defaults apply.
#[derive(Default)]
struct Draft {
    master: Option<Stmt>,
    interface: Option<String>,
    vrid: Option<u8>,
    priority: Option<u8>,
    advert: Option<(Micros, Stmt)>,
    version: Option<(u8, Stmt)>,
    nopreempt: Option<Stmt>,
    preempt_delay: Option<(Micros, Stmt)>,
    auth: Option<Stmt>,
    peers: Vec<(IpAddr, Stmt)>,
    vips: Vec<Vip>,
    excluded: Vec<Vip>,
    excluded_block: Option<Stmt>,
    track_interfaces: Vec<String>,
    track_scripts: Vec<Ref>,
    /// `notify`, `notify_master`, `notify_backup`, `notify_fault`.
    notify: [Option<String>; 4],
    garp: Garp,
}

pub fn instance(cx: &mut Cx, s: &Stmt) -> Vec<Instance> {
    let Some(children) = cx.block(s) else {
        return Vec::new();
    };
    let Some(name) = s.arg(0) else {
        cx.note(s, "a vrrp_instance needs a name: left out");
        return Vec::new();
    };
    let mut d = Draft {
        garp: cx.globals.garp.clone(),
        ..Draft::default()
    };
    for c in children {
        d.statement(cx, c);
    }
    d.finish(cx, s, name)
}

impl Draft {
    fn statement(&mut self, cx: &mut Cx, c: &Stmt) {
        match c.keyword() {
            "state" => match c.arg(0) {
                Some("MASTER") => self.master = Some(c.clone()),
                Some("BACKUP") => self.master = None,
                _ => cx.invalid(c, "MASTER or BACKUP (keepalived then assumes BACKUP)"),
            },
            "interface" => match c.arg(0) {
                Some(i) if values::ifname(i) => self.interface = Some(i.to_string()),
                _ => cx.invalid(c, "an interface name"),
            },
            "virtual_router_id" => self.vrid = cx.uint_arg(c, 1, 255).map(|v| v as u8),
            "priority" => self.priority = cx.uint_arg(c, 1, 255).map(|v| v as u8),
            "advert_int" => match cx.timer_arg(c) {
                Some(0) => cx.invalid(c, "an interval above 0"),
                Some(t) => self.advert = Some((t, c.clone())),
                None => {}
            },
            "version" => {
                self.version = cx.uint_arg(c, 2, 3).map(|v| (v as u8, c.clone()));
            }
            "nopreempt" => self.nopreempt = Some(c.clone()),
            "preempt" => match values::boolean(c.arg(0)) {
                Some(true) => self.nopreempt = None,
                Some(false) => self.nopreempt = Some(c.clone()),
                None => cx.invalid(c, "on or off"),
            },
            "preempt_delay" => {
                self.preempt_delay = cx.timer_arg(c).map(|t| (t.min(1000 * SECOND), c.clone()));
            }
            "authentication" => {
                if cx.block(c).is_some() {
                    self.auth = Some(c.clone());
                }
            }
            "unicast_peer" => self.peers(cx, c),
            "virtual_ipaddress" | "virtual_ipaddress_excluded" => {
                let excluded = c.keyword() == "virtual_ipaddress_excluded";
                for line in cx.block(c).unwrap_or(&[]) {
                    if let Some(v) = vip(cx, line) {
                        if excluded {
                            self.excluded.push(v);
                        } else {
                            self.vips.push(v);
                        }
                    }
                }
                if excluded {
                    self.excluded_block = Some(c.clone());
                }
            }
            "track_interface" => {
                for line in cx.block(c).unwrap_or(&[]) {
                    if !values::ifname(line.keyword()) {
                        cx.invalid(line, "an interface name");
                        continue;
                    }
                    if line.args().len() >= 2 && line.arg(0) == Some("weight") {
                        if line.arg(1) != Some("0") {
                            cx.note(line, "bascule puts the instance in FAULT while the interface is down; keepalived would change its priority by the weight");
                        }
                    } else if !line.args().is_empty() {
                        cx.invalid(line, "an interface name, optionally with weight N");
                    }
                    self.track_interfaces.push(line.keyword().to_string());
                }
            }
            "track_script" => {
                for line in cx.block(c).unwrap_or(&[]) {
                    if line.args().len() >= 2 && line.arg(0) == Some("weight") {
                        cx.note(line, "the contract's track_scripts take the script's own weight: this instance's weight is left out");
                    } else if !line.args().is_empty() {
                        cx.invalid(line, "a vrrp_script name, optionally with weight N");
                    }
                    self.track_scripts.push(Ref {
                        name: line.keyword().to_string(),
                        pos: line.pos,
                        text: line.text(),
                    });
                }
            }
            "notify" | "notify_master" | "notify_backup" | "notify_fault" => {
                let k = ["notify", "notify_master", "notify_backup", "notify_fault"]
                    .iter()
                    .position(|k| *k == c.keyword())
                    .unwrap_or(0);
                match c.arg(0) {
                    Some(cmd) if !cmd.trim().is_empty() => {
                        self.notify[k] = Some(cmd.to_string());
                        if c.args().len() > 1 {
                            cx.note(c, "bascule runs notify commands as its own user: the user and group are left out");
                        }
                    }
                    _ => cx.invalid(c, "a command"),
                }
            }
            "garp_master_repeat" => {
                self.garp.repeat = cx.uint_arg(c, 0, 65535).map(|v| v as u32);
            }
            "garp_interval" => self.garp.interval = cx.timer_arg(c),
            "garp_master_refresh" => self.garp.refresh = cx.timer_arg(c),
            // The master adds its addresses as ordinary ones: it accepts their traffic.
            "accept" => {}
            _ => unmapped(cx, c),
        }
    }

    fn peers(&mut self, cx: &mut Cx, c: &Stmt) {
        for line in cx.block(c).unwrap_or(&[]) {
            match values::ip(line.keyword()) {
                Some(a) => {
                    if !line.args().is_empty() {
                        cx.note(
                            line,
                            "bascule checks no TTL on unicast adverts: the options are left out",
                        );
                    }
                    self.peers.push((a, line.clone()));
                }
                None if values::looks_like_name(line.keyword()) => cx.note(
                    line,
                    "a name, not an address: import-keepalived does not resolve names; left out",
                ),
                None => cx.invalid(line, "an address"),
            }
        }
    }

    fn finish(self, cx: &mut Cx, s: &Stmt, name: &str) -> Vec<Instance> {
        let mut missing = Vec::new();
        if self.interface.is_none() {
            missing.push("interface");
        }
        if self.vrid.is_none() {
            missing.push("virtual_router_id");
        }
        if self.vips.is_empty() && self.excluded.is_empty() {
            missing.push("virtual_ipaddress");
        }
        if !missing.is_empty() {
            cx.note(
                s,
                format!(
                    "no {} (bascule requires {}): the instance is left out",
                    missing.join(", "),
                    if missing.len() == 1 { "it" } else { "them" }
                ),
            );
            return Vec::new();
        }
        let interface = self.interface.clone().unwrap_or_default();
        // The first address sets the family, as in keepalived.
        let v6 = self
            .vips
            .first()
            .or(self.excluded.first())
            .is_some_and(|v| v.addr.is_ipv6());
        let priority = self
            .priority
            .unwrap_or(if self.master.is_some() { 255 } else { 100 });
        let mut notes = Vec::new();
        if let Some(m) = &self.master {
            notes.push("state MASTER".to_string());
            if priority < 255 {
                cx.note(m, "bascule starts in BACKUP and takes over after the master-down interval (3 adverts and a skew) when no master is heard; keepalived waits one advert interval");
            }
        }
        let preempt = match (&self.nopreempt, &self.master) {
            (Some(n), Some(_)) => {
                cx.note(
                    n,
                    "keepalived ignores nopreempt with state MASTER: preempt stays on",
                );
                true
            }
            (n, _) => n.is_none(),
        };
        let preempt_delay = match (&self.preempt_delay, &self.master) {
            (Some((_, p)), Some(_)) => {
                cx.note(
                    p,
                    "keepalived ignores preempt_delay with state MASTER: left out",
                );
                0
            }
            (p, _) => p.as_ref().map_or(0, |(t, _)| *t),
        };
        let version = self.version(cx, v6);
        let advert_interval = advert(cx, self.advert.as_ref(), version);
        let key_notes = self.key_notes(cx, v6, preempt);
        let password = self.password(cx, version);
        let base = Instance {
            origin: Origin {
                pos: s.pos,
                text: s.text(),
            },
            notes,
            keepalived_name: name.to_string(),
            name: name.to_string(),
            interface: interface.clone(),
            virtual_router_id: self.vrid.unwrap_or(1),
            priority,
            version,
            advert_interval,
            preempt,
            preempt_delay,
            password,
            unicast_peers: Vec::new(),
            virtual_addresses: Vec::new(),
            garp: self.garp.clone(),
            track_interfaces: self.track_interfaces.clone(),
            track_scripts: self.track_scripts.clone(),
            notify: notify(&self.notify),
            key_notes,
        };
        for v in self.vips.iter().chain(&self.excluded) {
            if let Some(dev) = v.dev.as_deref().filter(|d| *d != interface) {
                cx.note(
                    &v.stmt,
                    format!("bascule adds every address on the instance's interface {interface}, not on {dev}"),
                );
            }
        }
        self.split(cx, s, base, v6)
    }

    /// The instance, and the one that carries the other family's addresses if any.
    fn split(self, cx: &mut Cx, s: &Stmt, mut base: Instance, v6: bool) -> Vec<Instance> {
        let family = |six: bool| if six { "IPv6" } else { "IPv4" };
        let other_name = format!("{}-{}", base.name, if v6 { "v4" } else { "v6" });
        let mut other = base.clone();
        other.name = other_name.clone();
        other.notes = vec![format!(
            "the {} addresses of vrrp_instance {}",
            family(!v6),
            base.keepalived_name
        )];
        other.key_notes.retain(|(k, _)| *k != "version");
        if !v6 {
            // IPv6 needs version 3, which carries no password and at most 40.95 s.
            other
                .key_notes
                .push(("version", "IPv6 uses version 3".into()));
            other.version = 3;
            other.password = None;
            other.advert_interval = other.advert_interval.min(40_950_000);
        } else {
            let note = format!("as vrrp_instance {}", base.keepalived_name);
            other.key_notes.push(("version", note));
        }
        for v in &self.vips {
            if v.addr.is_ipv6() == v6 {
                base.virtual_addresses.push(v.text.clone());
            } else {
                cx.note(
                    &v.stmt,
                    format!(
                        "an {} address in an {} instance: keepalived ignores it; bascule gives it to instance {other_name} of its own, which elects on its own",
                        family(!v6),
                        family(v6)
                    ),
                );
                other.virtual_addresses.push(v.text.clone());
            }
        }
        let (same, others): (Vec<&Vip>, Vec<&Vip>) =
            self.excluded.iter().partition(|v| v.addr.is_ipv6() == v6);
        if let Some(block) = &self.excluded_block {
            if !same.is_empty() {
                cx.note(block, "bascule advertises every address it holds: the excluded addresses join virtual_addresses (a keepalived peer logs a count mismatch but still elects)");
            }
            if !others.is_empty() {
                cx.note(
                    block,
                    format!(
                        "the {} addresses go to instance {other_name} of their own: it elects on its own (VRRPv3) where keepalived moves them with {}",
                        family(!v6),
                        base.keepalived_name
                    ),
                );
            }
        }
        base.virtual_addresses
            .extend(same.iter().map(|v| v.text.clone()));
        other
            .virtual_addresses
            .extend(others.iter().map(|v| v.text.clone()));
        for (a, stmt) in &self.peers {
            if a.is_ipv6() == v6 {
                base.unicast_peers.push(*a);
            } else {
                if other.virtual_addresses.is_empty() {
                    cx.note(
                        stmt,
                        format!(
                            "an {} peer of an {} instance: keepalived skips it too",
                            family(!v6),
                            family(v6)
                        ),
                    );
                }
                other.unicast_peers.push(*a);
            }
        }
        if !other.virtual_addresses.is_empty()
            && other.unicast_peers.is_empty()
            && !base.unicast_peers.is_empty()
        {
            cx.note(
                s,
                format!(
                    "instance {other_name} has no {} unicast peer: it multicasts its adverts",
                    family(!v6)
                ),
            );
        }
        let mut out = Vec::new();
        if !base.virtual_addresses.is_empty() {
            out.push(base);
        }
        if !other.virtual_addresses.is_empty() {
            out.push(other);
        }
        out
    }

    fn version(&self, cx: &mut Cx, v6: bool) -> u8 {
        let asked = self
            .version
            .as_ref()
            .map(|(v, _)| *v)
            .or(cx.globals.vrrp_version);
        if v6 {
            if let Some((2, stmt)) = &self.version {
                cx.note(stmt, "IPv6 needs VRRP version 3 (keepalived uses 3 too)");
            }
            return 3;
        }
        asked.unwrap_or(2)
    }

    /// Where the values of the keys keepalived defaults come from.
    fn key_notes(&self, cx: &Cx, v6: bool, preempt: bool) -> KeyNotes {
        let mut notes = vec![("version", self.version_note(cx, v6))];
        if self.priority.is_none() {
            let why = if self.master.is_some() {
                "state MASTER without a priority"
            } else {
                "keepalived's default"
            };
            notes.push(("priority", why.into()));
        }
        notes.push((
            "advert_interval",
            self.advert
                .as_ref()
                .map_or("keepalived's default".into(), |(_, s)| s.text()),
        ));
        if let Some(n) = self.nopreempt.as_ref().filter(|_| !preempt) {
            notes.push(("preempt", n.text()));
        }
        notes
    }

    fn version_note(&self, cx: &Cx, v6: bool) -> String {
        match (&self.version, cx.globals.vrrp_version) {
            _ if v6 => "IPv6 uses version 3".into(),
            (Some((_, s)), _) => s.text(),
            (None, Some(_)) => "vrrp_version in global_defs".into(),
            (None, None) => "keepalived's default".into(),
        }
    }

    fn password(&self, cx: &mut Cx, version: u8) -> Option<String> {
        let block = self.auth.as_ref()?;
        let mut kind = None;
        let mut pass = None;
        for c in block.children() {
            match c.keyword() {
                "auth_type" => kind = Some((c.arg(0).unwrap_or("").to_string(), c.clone())),
                "auth_pass" => pass = c.arg(0).map(str::to_string),
                _ => unmapped(cx, c),
            }
        }
        let Some((kind, kind_stmt)) = kind else {
            cx.note(block, "no auth_type: left out");
            return None;
        };
        match kind.as_str() {
            "PASS" if version == 3 => {
                cx.note(
                    &kind_stmt,
                    "VRRP version 3 has no authentication (keepalived ignores it too): left out",
                );
                None
            }
            "PASS" => match pass {
                Some(p) if !p.is_empty() => {
                    let cut = truncate_bytes(&p, 8);
                    if cut.len() < p.len() {
                        cx.note(block, format!("a VRRPv2 advert carries 8 bytes of password: keepalived and bascule both use {cut:?}"));
                    }
                    Some(cut)
                }
                _ => {
                    cx.note(block, "auth_type PASS without auth_pass: left out");
                    None
                }
            },
            "AH" => {
                cx.note(&kind_stmt, "bascule does not implement AH authentication: left out; a keepalived peer using AH refuses bascule's adverts, so authenticate both sides alike");
                None
            }
            _ => {
                cx.invalid(&kind_stmt, "PASS or AH");
                None
            }
        }
    }
}
