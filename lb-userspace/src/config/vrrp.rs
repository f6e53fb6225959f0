//! `vrrp[]` instances: conversion, the rules within an instance (the advertisement interval
//! fits its version, one address family) and across instances (duplicate names and router
//! ids).

use std::collections::HashMap;
use std::time::Duration;

use super::convert::Cx;
use super::keys::{AUTH_KEYS, GARP_KEYS, NOTIFY_KEYS, VRRP_KEYS};
use super::scalars::family;
use super::schema::{Garp, Notify, VrrpAuth, VrrpInstance};
use super::units::format_duration;
use super::yaml::{pos_of, Obj, Pos, Raw, P, Y};

/// A VRRP instance as converted, with positions.
pub(super) struct VrrpDraft {
    pub(super) inst: VrrpInstance,
    pub(super) item: Pos,
    pub(super) name_pos: Pos,
    pub(super) vrid_pos: Pos,
    pub(super) auth_pos: Pos,
    /// Of each item of `track_scripts`.
    pub(super) track_pos: Vec<Pos>,
}

impl Cx<'_> {
    pub(super) fn vrrp(&mut self, y: &Y, path: &P) -> Option<VrrpDraft> {
        let o = self.obj(y, path, VRRP_KEYS)?;
        let name = self.req_field(&o, path, "name", Self::instance_name);
        let interface = self.req_field(&o, path, "interface", Self::ifname);
        let vrid = self.req_field(&o, path, "virtual_router_id", |cx, y, p| cx.u8(y, p, 1));
        let priority = self.field(&o, path, "priority", 100, |cx, y, p| cx.u8(y, p, 1));
        let version = self.field(&o, path, "version", 3, Self::vrrp_version);
        let advert = self.field(
            &o,
            path,
            "advert_interval",
            Duration::from_secs(1),
            Self::positive_duration,
        );
        let preempt = self.field(&o, path, "preempt", true, Self::boolean);
        let preempt_delay = self.field(&o, path, "preempt_delay", Duration::ZERO, Self::duration);
        let auth = self.opt_field(&o, path, "authentication", Self::vrrp_auth);
        let peers_path = P::Key(path, "unicast_peers");
        let peers = self.list(o.opt("unicast_peers"), &peers_path, "addresses", Self::ip);
        let addrs_path = P::Key(path, "virtual_addresses");
        let addrs = match self.req(&o, path, "virtual_addresses") {
            Some(list) => self.list(Some(list), &addrs_path, "ADDRESS/PREFIX", Self::prefix),
            None => None,
        };
        let garp = self.field(&o, path, "garp", Garp::default(), Self::garp);
        let track_path = P::Key(path, "track_interfaces");
        let track = self.list(
            o.opt("track_interfaces"),
            &track_path,
            "interface names",
            Self::ifname,
        );
        let scripts_path = P::Key(path, "track_scripts");
        let scripts = self.list(
            o.opt("track_scripts"),
            &scripts_path,
            "script names",
            |cx, y, p| cx.name(y, p, "script"),
        );
        let notify = self.field(&o, path, "notify", Notify::default(), Self::notify);

        let inst = VrrpInstance {
            name: name?,
            interface: interface?,
            virtual_router_id: vrid?,
            priority: priority?,
            version: version?,
            advert_interval: advert?,
            preempt: preempt?,
            preempt_delay: preempt_delay?,
            authentication: auth?,
            unicast_peers: peers?,
            virtual_addresses: addrs?,
            garp: garp?,
            track_interfaces: track?,
            track_scripts: scripts?,
            notify: notify?,
        };

        let ok = self.instance_rules(&o, path, &inst);
        ok.then(|| VrrpDraft {
            item: o.pos,
            name_pos: o.pos("name"),
            vrid_pos: o.pos("virtual_router_id"),
            auth_pos: o.pos("authentication"),
            track_pos: match o.opt("track_scripts").map(|y| &y.value) {
                Some(Raw::Seq(items)) => items.iter().map(pos_of).collect(),
                _ => Vec::new(),
            },
            inst,
        })
    }

    /// The rules between an instance's keys; false when one is broken (each reported).
    fn instance_rules(&mut self, o: &Obj, path: &P, inst: &VrrpInstance) -> bool {
        let mut ok = true;
        // The advertisement interval must fit the packet's field.
        let adv = inst.advert_interval;
        let adv_err = if inst.version == 2 {
            (adv.subsec_nanos() != 0 || adv.as_secs() > 255)
                .then_some("VRRP version 2 advertises whole seconds, expected 1s..=255s")
        } else {
            (!adv.as_nanos().is_multiple_of(10_000_000) || adv > Duration::from_millis(40_950))
                .then_some(
                "VRRP version 3 advertises centiseconds, expected a multiple of 10ms up to 40.95s",
            )
        };
        if let Some(why) = adv_err {
            self.err(
                o.pos("advert_interval"),
                &P::Key(path, "advert_interval"),
                format!("{}: {why}", format_duration(adv)),
            );
            ok = false;
        }
        if inst.version == 3 && inst.authentication.is_some() {
            self.err(
                o.pos("authentication"),
                &P::Key(path, "authentication"),
                "only exists in VRRP version 2 (RFC 3768); remove it or set version: 2",
            );
            ok = false;
        }
        ok &= self.one_family(o, path, inst);
        ok
    }

    /// One address family per instance; version 2 is IPv4 only.
    fn one_family(&mut self, o: &Obj, path: &P, inst: &VrrpInstance) -> bool {
        let mut ok = true;
        let peers_path = P::Key(path, "unicast_peers");
        let addrs_path = P::Key(path, "virtual_addresses");
        if let (Some(first), Some(Raw::Seq(items))) = (
            inst.virtual_addresses.first(),
            o.opt("virtual_addresses").map(|y| &y.value),
        ) {
            let fam = family(first.addr);
            if inst.version == 2 && first.addr.is_ipv6() {
                self.err(
                    pos_of(&items[0]),
                    &P::Idx(&addrs_path, 0),
                    format!("{first}: VRRP version 2 is IPv4 only, expected version: 3 for IPv6"),
                );
                ok = false;
            }
            for (k, (a, item)) in inst.virtual_addresses.iter().zip(items).enumerate().skip(1) {
                if family(a.addr) != fam {
                    self.err(
                        pos_of(item),
                        &P::Idx(&addrs_path, k),
                        format!("{a} is {} but virtual_addresses[0] is {fam}; an instance carries one address family (use a second instance)", family(a.addr)),
                    );
                    ok = false;
                }
            }
            if let Some(Raw::Seq(peer_items)) = o.opt("unicast_peers").map(|y| &y.value) {
                for (k, (a, item)) in inst.unicast_peers.iter().zip(peer_items).enumerate() {
                    if family(*a) != fam {
                        self.err(
                            pos_of(item),
                            &P::Idx(&peers_path, k),
                            format!("{a} is {} but the virtual addresses are {fam}", family(*a)),
                        );
                        ok = false;
                    }
                }
            }
        } else if inst.virtual_addresses.is_empty() {
            self.err(
                o.pos("virtual_addresses"),
                &addrs_path,
                "expected at least one ADDRESS/PREFIX, found an empty list",
            );
            ok = false;
        }
        ok
    }

    fn instance_name(&mut self, y: &Y, path: &P) -> Option<String> {
        self.name(y, path, "instance")
    }

    fn vrrp_version(&mut self, y: &Y, path: &P) -> Option<u8> {
        match &y.value {
            Raw::Int(2) => Some(2),
            Raw::Int(3) => Some(3),
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected 2 (RFC 3768) or 3 (RFC 5798), found {found}"),
                );
                None
            }
        }
    }

    fn vrrp_auth(&mut self, y: &Y, path: &P) -> Option<VrrpAuth> {
        let o = self.obj(y, path, AUTH_KEYS)?;
        let kind = self.req_field(&o, path, "type", Self::keyword);
        let password = self.req_field(&o, path, "password", |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.is_empty() || s.len() > 8 {
                cx.err(
                    pos_of(y),
                    p,
                    format!(
                        "{} bytes is not allowed, expected 1 to 8 bytes (what a VRRPv2 packet carries)",
                        s.len()
                    ),
                );
                return None;
            }
            Some(s)
        });
        Some(VrrpAuth {
            kind: kind?,
            password: password?,
        })
    }

    fn garp(&mut self, y: &Y, path: &P) -> Option<Garp> {
        let o = self.obj(y, path, GARP_KEYS)?;
        let d = Garp::default();
        let repeat = self.field(&o, path, "repeat", d.repeat, |cx, y, p| {
            cx.u32(y, p, 0, 65535)
        });
        let interval = self.field(&o, path, "interval", d.interval, Self::duration);
        let refresh = self.field(&o, path, "refresh", d.refresh, Self::duration);
        Some(Garp {
            repeat: repeat?,
            interval: interval?,
            refresh: refresh?,
        })
    }

    fn notify(&mut self, y: &Y, path: &P) -> Option<Notify> {
        let o = self.obj(y, path, NOTIFY_KEYS)?;
        let get = |cx: &mut Self, key: &str| {
            cx.field(&o, path, key, String::new(), Self::string)
                .map(|s| (!s.trim().is_empty()).then_some(s))
        };
        let master = get(self, "master");
        let backup = get(self, "backup");
        let fault = get(self, "fault");
        Some(Notify {
            master: master?,
            backup: backup?,
            fault: fault?,
        })
    }

    /// Cross-instance checks: duplicate names and duplicate (interface, router id, family).
    pub(super) fn check_vrrp(&mut self, drafts: Vec<VrrpDraft>) -> Vec<VrrpDraft> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_vrid: HashMap<(&str, u8, bool), usize> = HashMap::new();
        let mut errors = Vec::new();
        for (k, d) in drafts.iter().enumerate() {
            let i = &d.inst;
            if let Some(&first) = by_name.get(i.name.as_str()) {
                errors.push((
                    d.name_pos,
                    format!("vrrp[{k}].name"),
                    format!(
                        "duplicate instance name \"{}\", already used by vrrp[{first}] at line {}",
                        i.name, drafts[first].name_pos.line
                    ),
                ));
            } else {
                by_name.insert(i.name.as_str(), k);
            }
            let v6 = i
                .virtual_addresses
                .first()
                .is_some_and(|a| a.addr.is_ipv6());
            let key = (i.interface.as_str(), i.virtual_router_id, v6);
            if let Some(&first) = by_vrid.get(&key) {
                errors.push((
                    d.vrid_pos,
                    format!("vrrp[{k}].virtual_router_id"),
                    format!(
                        "{} is already used on {} for {} by vrrp[{first}] (\"{}\") at line {}",
                        i.virtual_router_id,
                        i.interface,
                        if v6 { "IPv6" } else { "IPv4" },
                        drafts[first].inst.name,
                        drafts[first].vrid_pos.line
                    ),
                ));
            } else {
                by_vrid.insert(key, k);
            }
        }
        for (pos, path, msg) in errors {
            self.err_at(pos, format!("{path}: {msg}"));
        }
        drafts
    }
}
