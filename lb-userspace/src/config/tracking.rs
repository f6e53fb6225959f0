//! `vrrp_scripts[]` and `sync_groups[]` (keepalived's `vrrp_script` and
//! `vrrp_sync_group`), and the rules between them and the `vrrp[]` instances: a tracked
//! script exists, a group names existing instances, an instance is in at most one group,
//! and weights are used only where keepalived uses them.

use std::collections::HashMap;
use std::time::Duration;

use super::convert::Cx;
use super::keys::{SCRIPT_KEYS, SYNC_GROUP_KEYS};
use super::scalars::valid_name;
use super::schema::{SyncGroup, VrrpScript};
use super::vrrp::VrrpDraft;
use super::yaml::{pos_of, Pos, Raw, P, Y};

/// Largest |weight| (keepalived's): a priority stays in 1..=254 whatever the weights.
const MAX_WEIGHT: i128 = 253;

/// A script as converted, with positions.
pub(super) struct ScriptDraft {
    pub(super) script: VrrpScript,
    pub(super) name_pos: Pos,
}

/// A sync group as converted, with positions.
pub(super) struct GroupDraft {
    pub(super) group: SyncGroup,
    pub(super) name_pos: Pos,
    /// Of each item of `instances`.
    pub(super) member_pos: Vec<Pos>,
}

impl Cx<'_> {
    pub(super) fn vrrp_script(&mut self, y: &Y, path: &P) -> Option<ScriptDraft> {
        let o = self.obj(y, path, SCRIPT_KEYS)?;
        let name = self.req_field(&o, path, "name", |cx, y, p| cx.name(y, p, "script"));
        let script = self.req_field(&o, path, "script", |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.trim().is_empty() {
                cx.err(
                    pos_of(y),
                    p,
                    "expected a command line, found an empty string",
                );
                return None;
            }
            Some(s)
        });
        let interval = self.field(
            &o,
            path,
            "interval",
            Duration::from_secs(1),
            Self::positive_duration,
        );
        // keepalived's default timeout is the interval.
        let timeout = self.opt_field(&o, path, "timeout", Self::positive_duration);
        let weight = self.field(&o, path, "weight", 0, |cx, y, p| {
            cx.int(y, p, -MAX_WEIGHT, MAX_WEIGHT).map(|w| w as i16)
        });
        let rise = self.field(&o, path, "rise", 1, |cx, y, p| cx.u32(y, p, 1, 65535));
        let fall = self.field(&o, path, "fall", 1, |cx, y, p| cx.u32(y, p, 1, 65535));
        let interval = interval?;
        Some(ScriptDraft {
            script: VrrpScript {
                name: name?,
                script: script?,
                interval,
                timeout: timeout?.unwrap_or(interval),
                weight: weight?,
                rise: rise?,
                fall: fall?,
            },
            name_pos: o.pos("name"),
        })
    }

    pub(super) fn sync_group(&mut self, y: &Y, path: &P) -> Option<GroupDraft> {
        let o = self.obj(y, path, SYNC_GROUP_KEYS)?;
        let name = self.req_field(&o, path, "name", |cx, y, p| cx.name(y, p, "group"));
        let members_path = P::Key(path, "instances");
        let members = match self.req(&o, path, "instances") {
            Some(list) => {
                let v = self.list(Some(list), &members_path, "instance names", |cx, y, p| {
                    cx.name(y, p, "instance")
                });
                if v.as_ref().is_some_and(Vec::is_empty) {
                    self.err(
                        pos_of(list),
                        &members_path,
                        "expected at least one instance name, found an empty list",
                    );
                    return None;
                }
                v
            }
            None => None,
        };
        let member_pos = match o.opt("instances").map(|y| &y.value) {
            Some(Raw::Seq(items)) => items.iter().map(pos_of).collect(),
            _ => Vec::new(),
        };
        Some(GroupDraft {
            group: SyncGroup {
                name: name?,
                instances: members?,
            },
            name_pos: o.pos("name"),
            member_pos,
        })
    }

    /// A name as metric labels and logs take it; `what` is "script", "group", ...
    pub(super) fn name(&mut self, y: &Y, path: &P, what: &str) -> Option<String> {
        let s = self.string(y, path)?;
        if !valid_name(&s) {
            self.err(
                pos_of(y),
                path,
                format!(
                    "{s:?} is not a valid {what} name, expected letters, digits, '.', '_' or '-'"
                ),
            );
            return None;
        }
        Some(s)
    }

    /// The rules between instances, scripts and groups; every broken one is reported.
    pub(super) fn check_tracking(
        &mut self,
        vrrp: &[VrrpDraft],
        scripts: &[ScriptDraft],
        groups: &[GroupDraft],
    ) {
        let mut errors: Vec<(Pos, String)> = Vec::new();
        let script_at = names(scripts.iter().map(|s| (&s.script.name, s.name_pos)));
        for (k, s) in scripts.iter().enumerate() {
            let first = script_at[s.script.name.as_str()];
            if first != k {
                errors.push((
                    s.name_pos,
                    format!(
                        "vrrp_scripts[{k}].name: duplicate script name \"{}\", already used by vrrp_scripts[{first}] at line {}",
                        s.script.name, scripts[first].name_pos.line
                    ),
                ));
            }
        }
        let group_at = names(groups.iter().map(|g| (&g.group.name, g.name_pos)));
        for (k, g) in groups.iter().enumerate() {
            let first = group_at[g.group.name.as_str()];
            if first != k {
                errors.push((
                    g.name_pos,
                    format!(
                        "sync_groups[{k}].name: duplicate group name \"{}\", already used by sync_groups[{first}] at line {}",
                        g.group.name, groups[first].name_pos.line
                    ),
                ));
            }
        }
        let membership = self.group_members(vrrp, groups, &mut errors);
        for (k, d) in vrrp.iter().enumerate() {
            let i = &d.inst;
            for (j, name) in i.track_scripts.iter().enumerate() {
                let at = d.track_pos.get(j).copied().unwrap_or(d.item);
                let path = format!("vrrp[{k}].track_scripts[{j}]");
                if i.track_scripts[..j].contains(name) {
                    errors.push((at, format!("{path}: \"{name}\" is listed twice")));
                    continue;
                }
                let Some(&s) = script_at.get(name.as_str()) else {
                    let known = defined(scripts.iter().map(|s| s.script.name.as_str()));
                    errors.push((
                        at,
                        format!("{path}: no vrrp_scripts entry is named \"{name}\" ({known})"),
                    ));
                    continue;
                };
                let weight = scripts[s].script.weight;
                if weight == 0 {
                    continue;
                }
                if let Some(group) = membership.get(i.name.as_str()) {
                    errors.push((
                        at,
                        format!(
                            "{path}: \"{name}\" has weight {weight}, but {} is in sync group {group}, whose members must prefer the same node: track only scripts of weight 0 (FAULT while failing) in a group (keepalived ignores weighted ones)",
                            i.name
                        ),
                    ));
                } else if i.priority == 255 {
                    errors.push((
                        at,
                        format!(
                            "{path}: \"{name}\" has weight {weight}, but the address owner's priority (255) never changes: use a script of weight 0 or a priority below 255"
                        ),
                    ));
                }
            }
        }
        for (pos, message) in errors {
            self.err_at(pos, message);
        }
    }

    /// Each instance's group; reports unknown instances and instances in two groups.
    fn group_members<'g>(
        &mut self,
        vrrp: &[VrrpDraft],
        groups: &'g [GroupDraft],
        errors: &mut Vec<(Pos, String)>,
    ) -> HashMap<&'g str, &'g str> {
        let mut member_of: HashMap<&str, (usize, Pos)> = HashMap::new();
        let mut out = HashMap::new();
        for (k, g) in groups.iter().enumerate() {
            for (j, name) in g.group.instances.iter().enumerate() {
                let at = g.member_pos.get(j).copied().unwrap_or(g.name_pos);
                let path = format!("sync_groups[{k}].instances[{j}]");
                if !vrrp.iter().any(|d| d.inst.name == *name) {
                    let known = defined(vrrp.iter().map(|d| d.inst.name.as_str()));
                    errors.push((
                        at,
                        format!("{path}: no vrrp instance is named \"{name}\" ({known})"),
                    ));
                    continue;
                }
                if let Some(&(first, first_at)) = member_of.get(name.as_str()) {
                    let why = if first == k {
                        format!("\"{name}\" is listed twice")
                    } else {
                        format!(
                            "\"{name}\" is already in sync group {} (sync_groups[{first}]) at line {}; an instance is in at most one group",
                            groups[first].group.name, first_at.line
                        )
                    };
                    errors.push((at, format!("{path}: {why}")));
                    continue;
                }
                member_of.insert(name.as_str(), (k, at));
                out.insert(name.as_str(), g.group.name.as_str());
            }
        }
        out
    }
}

/// The first index of each name.
fn names<'a>(items: impl Iterator<Item = (&'a String, Pos)>) -> HashMap<&'a str, usize> {
    let mut at = HashMap::new();
    for (k, (name, _)) in items.enumerate() {
        at.entry(name.as_str()).or_insert(k);
    }
    at
}

/// The names a reference could have used, for its error: "defined: a, b" or "there is
/// none".
fn defined<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "there is none".to_string()
    } else {
        format!("defined: {}", names.join(", "))
    }
}
