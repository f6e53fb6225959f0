//! `vrrp_script` into the contract's `vrrp_scripts`, `vrrp_sync_group` into `sync_groups`,
//! and the names that tie them to the instances. While this bascule does not read those keys
//! ([`Features`](super::Features)), each is reported and written as a YAML comment.

use std::collections::HashSet;

use super::{
    convert::{Cx, NOT_YET},
    model::{Bascule, Origin, Ref, SyncGroup, VrrpScript},
    tree::Stmt,
    values::{self, SECOND},
};

/// keepalived's `vrrp_script`, with keepalived's defaults written out: interval 1 s,
/// timeout the interval, weight 0, rise 1, fall 1.
pub fn script(cx: &mut Cx, s: &Stmt) -> Option<VrrpScript> {
    let children = cx.block(s)?;
    let Some(name) = s.arg(0) else {
        cx.note(s, "a vrrp_script needs a name: left out");
        return None;
    };
    let mut script = None;
    let mut interval = SECOND;
    let mut timeout = None;
    let mut weight = 0;
    let mut rise = 1;
    let mut fall = 1;
    for c in children {
        match c.keyword() {
            "script" if !c.args().is_empty() => script = Some(c.args().join(" ")),
            "interval" => match cx.timer_arg(c) {
                Some(0) => cx.invalid(c, "an interval above 0"),
                Some(t) => interval = t,
                None => {}
            },
            "timeout" => match cx.timer_arg(c) {
                Some(0) => cx.invalid(c, "a timeout above 0"),
                Some(t) => timeout = Some(t),
                None => {}
            },
            "weight" => {
                match c.arg(0).and_then(|w| values::int(w, -253, 253)) {
                    Some(w) => weight = w,
                    None => cx.invalid(c, "a weight -253..=253"),
                }
                if c.arg(1).is_some() {
                    cx.note(c, "the contract's vrrp_scripts have no reverse: left out");
                }
            }
            "rise" => rise = cx.uint_arg(c, 1, 65535).unwrap_or(rise as u64) as u32,
            "fall" => fall = cx.uint_arg(c, 1, 65535).unwrap_or(fall as u64) as u32,
            "user" => cx.note(c, "bascule runs scripts as the user it runs as: left out"),
            "init_fail" => cx.note(
                c,
                "the contract's vrrp_scripts have no initial state: left out",
            ),
            _ => cx.unmapped(c, "vrrp_script"),
        }
    }
    let Some(script) = script else {
        cx.note(s, "no script to run: left out");
        return None;
    };
    Some(VrrpScript {
        origin: Origin {
            pos: s.pos,
            text: s.text(),
        },
        keepalived_name: name.to_string(),
        name: name.to_string(),
        script,
        interval,
        timeout: timeout.unwrap_or(interval),
        weight,
        rise,
        fall,
    })
}

/// keepalived's `vrrp_sync_group NAME { group { INSTANCE ... } }`.
pub fn sync_group(cx: &mut Cx, s: &Stmt) -> Option<SyncGroup> {
    let children = cx.block(s)?;
    let Some(name) = s.arg(0) else {
        cx.note(s, "a vrrp_sync_group needs a name: left out");
        return None;
    };
    let mut instances = Vec::new();
    for c in children {
        match c.keyword() {
            "group" => {
                for line in cx.block(c).unwrap_or(&[]) {
                    for w in &line.words {
                        instances.push(Ref {
                            name: w.clone(),
                            pos: line.pos,
                            text: line.text(),
                        });
                    }
                }
            }
            "notify" | "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" => {
                cx.note(c, "the contract's sync_groups run no commands (each instance's notify runs): left out")
            }
            "smtp_alert" => cx.note(c, "bascule sends no e-mail: left out"),
            "global_tracking" | "sync_group_tracking_weight" | "track_interface"
            | "track_script" | "track_file" | "track_process" | "track_bfd" => cx.note(
                c,
                "the contract's sync_groups track through their instances: left out",
            ),
            _ => cx.unmapped(c, "vrrp_sync_group"),
        }
    }
    Some(SyncGroup {
        origin: Origin {
            pos: s.pos,
            text: s.text(),
        },
        name: name.to_string(),
        instances,
    })
}

/// Names made unique and valid, references resolved, and what this bascule does not read
/// reported.
pub fn link(cx: &mut Cx, out: &mut Bascule) {
    let mut taken = HashSet::new();
    for inst in &mut out.vrrp {
        inst.name = values::unique(values::name(&inst.name), &mut taken);
    }
    let mut taken = HashSet::new();
    for s in &mut out.vrrp_scripts {
        s.name = values::unique(values::name(&s.name), &mut taken);
    }
    let scripts: Vec<(String, String)> = out
        .vrrp_scripts
        .iter()
        .map(|s| (s.keepalived_name.clone(), s.name.clone()))
        .collect();
    for inst in &mut out.vrrp {
        let refs = std::mem::take(&mut inst.track_scripts);
        for mut r in refs {
            match scripts.iter().find(|(k, _)| *k == r.name) {
                Some((_, name)) => {
                    if !cx.features.vrrp_scripts {
                        cx.report.add(r.pos, r.text.clone(), format!("{NOT_YET}: the instance does not follow the script (written as a YAML comment)"));
                    }
                    r.name = name.clone();
                    inst.track_scripts.push(r);
                }
                None => cx.report.add(
                    r.pos,
                    r.text.clone(),
                    "no vrrp_script of that name: left out",
                ),
            }
        }
    }
    if !cx.features.vrrp_scripts {
        for s in &out.vrrp_scripts {
            cx.report.add(
                s.origin.pos,
                s.origin.text.clone(),
                format!("{NOT_YET}: written as a YAML comment"),
            );
        }
    }
    sync_members(cx, out);
}

fn sync_members(cx: &mut Cx, out: &mut Bascule) {
    let mut taken = HashSet::new();
    let mut grouped: HashSet<String> = HashSet::new();
    for g in &mut out.sync_groups {
        g.name = values::unique(values::name(&g.name), &mut taken);
        let refs = std::mem::take(&mut g.instances);
        for r in refs {
            let members: Vec<&str> = out
                .vrrp
                .iter()
                .filter(|i| i.keepalived_name == r.name)
                .map(|i| i.name.as_str())
                .collect();
            if members.is_empty() {
                cx.report.add(
                    r.pos,
                    r.text.clone(),
                    format!(
                        "no vrrp_instance {} was imported: left out of the group",
                        r.name
                    ),
                );
            }
            grouped.insert(r.name.clone());
            for m in members {
                g.instances.push(Ref {
                    name: m.to_string(),
                    pos: r.pos,
                    text: r.text.clone(),
                });
            }
        }
        if !cx.features.sync_groups {
            cx.report.add(
                g.origin.pos,
                g.origin.text.clone(),
                format!(
                    "{NOT_YET}: its instances fail over independently (written as a YAML comment)"
                ),
            );
        }
    }
    // An instance split by address family moves as one, as its addresses did in keepalived.
    if !cx.features.sync_groups {
        return;
    }
    let mut split: Vec<(String, Vec<Ref>, Origin)> = Vec::new();
    for inst in &out.vrrp {
        if grouped.contains(&inst.keepalived_name) {
            continue;
        }
        let r = Ref {
            name: inst.name.clone(),
            pos: inst.origin.pos,
            text: inst.origin.text.clone(),
        };
        match split
            .iter_mut()
            .find(|(k, _, _)| *k == inst.keepalived_name)
        {
            Some((_, members, _)) => members.push(r),
            None => split.push((inst.keepalived_name.clone(), vec![r], inst.origin.clone())),
        }
    }
    for (name, members, origin) in split.into_iter().filter(|(_, m, _)| m.len() > 1) {
        out.sync_groups.push(SyncGroup {
            origin,
            name: values::unique(values::name(&name), &mut taken),
            instances: members,
        });
    }
}
