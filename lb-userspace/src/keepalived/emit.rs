//! The imported configuration as bascule YAML: every item under a comment naming the
//! keepalived statement it comes from (`FILE:LINE`), and what this bascule does not read
//! yet written commented out, ready for the day it does.

use super::{
    convert::NOT_YET,
    model::{
        Backend, Bascule, Check, Instance, KeyNotes, Origin, Protocol, Service, SyncGroup, Val,
        VrrpScript,
    },
    report::Sources,
    values,
    yaml::{self, Entry, Item, Node},
    Features,
};

pub fn document(b: &Bascule, sources: &Sources, features: Features) -> String {
    let main = sources.name(0);
    let header = vec![
        format!("Converted from {main} by `bascule import-keepalived`."),
        "Each comment names the keepalived statement an item comes from (FILE:LINE);".into(),
        "what was not mapped, or only approximated, was listed on standard error.".into(),
    ];
    let at = |o: &Origin| format!("{} ({})", o.text, sources.at(o.pos));
    let interfaces = b
        .interfaces
        .iter()
        .map(|i| item(Vec::new(), vec![Entry::val("name", &Val::text(i.clone()))]))
        .collect();
    let mut top = vec![Entry::new(
        "node",
        Node::Map(vec![Entry::new("interfaces", Node::Seq(interfaces))]),
    )];
    if !b.services.is_empty() {
        let items = b
            .services
            .iter()
            .map(|s| service(s, &at, features))
            .collect();
        top.push(Entry::new("services", Node::Seq(items)));
    }
    if !b.vrrp.is_empty() {
        let items = b.vrrp.iter().map(|i| instance(i, &at, features)).collect();
        top.push(Entry::new("vrrp", Node::Seq(items)));
    }
    if !b.vrrp_scripts.is_empty() {
        let items = b.vrrp_scripts.iter().map(|s| script(s, &at)).collect();
        top.push(
            Entry::new("vrrp_scripts", Node::Seq(items))
                .above(not_yet(features.vrrp_scripts, "vrrp_scripts"))
                .off(!features.vrrp_scripts),
        );
    }
    if !b.sync_groups.is_empty() {
        let items = b.sync_groups.iter().map(|g| sync_group(g, &at)).collect();
        top.push(
            Entry::new("sync_groups", Node::Seq(items))
                .above(not_yet(features.sync_groups, "sync_groups"))
                .off(!features.sync_groups),
        );
    }
    yaml::document(&header, &top)
}

fn note(notes: &KeyNotes, key: &str) -> Option<String> {
    notes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, n)| n.clone())
}

fn not_yet(supported: bool, key: &str) -> Vec<String> {
    if supported {
        Vec::new()
    } else {
        vec![format!(
            "{key}: {NOT_YET} (the contract's key, kept for when it is)"
        )]
    }
}

fn item(above: Vec<String>, entries: Vec<Entry>) -> Item {
    Item {
        above,
        value: Node::Map(entries),
        off: false,
    }
}

fn text(s: impl Into<String>) -> Val {
    Val::text(s)
}

fn plain(s: impl ToString) -> Val {
    Val::plain(s)
}

fn service(s: &Service, at: &dyn Fn(&Origin) -> String, f: Features) -> Item {
    let mut above = vec![at(&s.origin)];
    above.extend(s.notes.iter().cloned());
    let note = |key: &str| note(&s.key_notes, key);
    let mut e = vec![Entry::val("name", &text(s.name.clone()))];
    match s.vips.as_slice() {
        [vip] => e.push(Entry::val("vip", &text(vip.to_string()))),
        vips => e.push(Entry::val(
            "vips",
            &Val::List(vips.iter().map(|v| text(v.to_string())).collect()),
        )),
    }
    match s.ports.as_slice() {
        [(lo, hi)] if lo == hi => e.push(Entry::val("port", &plain(lo))),
        ports => e.push(Entry::val(
            "ports",
            &Val::List(
                ports
                    .iter()
                    .map(|&(lo, hi)| {
                        if lo == hi {
                            plain(lo)
                        } else {
                            text(format!("{lo}-{hi}"))
                        }
                    })
                    .collect(),
            ),
        )),
    }
    let proto = match s.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    };
    e.push(Entry::val("protocol", &plain(proto)).trailing(note("protocol")));
    e.push(Entry::val("scheduler", &plain(&s.scheduler)).trailing(note("scheduler")));
    e.push(Entry::val("forwarding", &plain(s.forwarding.name())).trailing(note("forwarding")));
    if let Some(p) = s.persistence {
        e.push(
            Entry::val("persistence", &plain(values::duration(p))).trailing(note("persistence")),
        );
    }
    if let Some(sorry) = s.sorry_server {
        e.push(Entry::val("sorry_server", &text(sorry.to_string())));
    }
    if !s.backends.is_empty() {
        let items = s.backends.iter().map(|b| backend(b, at, f)).collect();
        e.push(Entry::new("backends", Node::Seq(items)));
    }
    if let Some(c) = &s.health_check {
        e.push(Entry::new("health_check", Node::Map(check(c, at))));
    }
    item(above, e)
}

fn backend(b: &Backend, at: &dyn Fn(&Origin) -> String, f: Features) -> Item {
    let mut e = vec![Entry::val("address", &text(b.address.to_string()))];
    if let Some(p) = b.port {
        e.push(Entry::val("port", &plain(p)));
    }
    e.push(Entry::val("weight", &plain(b.weight)));
    if let Some(fwd) = b.forwarding {
        e.push(Entry::val("forwarding", &plain(fwd.name())));
    }
    for (key, v) in [
        ("max_connections", b.max_connections),
        ("min_connections", b.min_connections),
    ] {
        if let Some(v) = v {
            let above = if f.connection_thresholds {
                Vec::new()
            } else {
                vec![format!("{key}: {NOT_YET}")]
            };
            e.push(
                Entry::val(key, &plain(v))
                    .above(above)
                    .off(!f.connection_thresholds),
            );
        }
    }
    item(vec![at(&b.origin)], e)
}

fn check(c: &Check, at: &dyn Fn(&Origin) -> String) -> Vec<Entry> {
    let mut above = vec![at(&c.origin)];
    above.extend(c.notes.iter().cloned());
    c.fields
        .iter()
        .enumerate()
        .map(|(i, (k, v))| {
            let e = Entry::val(k, v).trailing(note(&c.key_notes, k));
            if i == 0 {
                e.above(std::mem::take(&mut above))
            } else {
                e
            }
        })
        .collect()
}

fn addresses(list: impl IntoIterator<Item = String>) -> Val {
    Val::List(list.into_iter().map(text).collect())
}

fn instance(i: &Instance, at: &dyn Fn(&Origin) -> String, f: Features) -> Item {
    let mut above = vec![at(&i.origin)];
    above.extend(i.notes.iter().cloned());
    let note = |key: &str| note(&i.key_notes, key);
    let mut e = vec![
        Entry::val("name", &text(i.name.clone())),
        Entry::val("interface", &text(i.interface.clone())),
        Entry::val("virtual_router_id", &plain(i.virtual_router_id)),
        Entry::val("priority", &plain(i.priority)).trailing(note("priority")),
        Entry::val("version", &plain(i.version)).trailing(note("version")),
        Entry::val(
            "advert_interval",
            &plain(values::duration(i.advert_interval)),
        )
        .trailing(note("advert_interval")),
    ];
    if !i.preempt {
        e.push(Entry::val("preempt", &plain(false)).trailing(note("preempt")));
    }
    if i.preempt_delay > 0 {
        e.push(Entry::val(
            "preempt_delay",
            &plain(values::duration(i.preempt_delay)),
        ));
    }
    if let Some(p) = &i.password {
        e.push(Entry::new(
            "authentication",
            Node::Map(vec![
                Entry::val("type", &plain("pass")),
                Entry::val("password", &text(p.clone())),
            ]),
        ));
    }
    if !i.unicast_peers.is_empty() {
        e.push(Entry::val(
            "unicast_peers",
            &addresses(i.unicast_peers.iter().map(|a| a.to_string())),
        ));
    }
    e.push(Entry::val(
        "virtual_addresses",
        &addresses(i.virtual_addresses.iter().cloned()),
    ));
    let g = &i.garp;
    let mut garp = Vec::new();
    if let Some(r) = g.repeat {
        garp.push(Entry::val("repeat", &plain(r)));
    }
    if let Some(t) = g.interval {
        garp.push(Entry::val("interval", &plain(values::duration(t))));
    }
    if let Some(t) = g.refresh {
        garp.push(Entry::val("refresh", &plain(values::duration(t))));
    }
    if !garp.is_empty() {
        e.push(Entry::new("garp", Node::Map(garp)));
    }
    if !i.track_interfaces.is_empty() {
        e.push(Entry::val(
            "track_interfaces",
            &Val::List(i.track_interfaces.iter().map(|t| text(t.clone())).collect()),
        ));
    }
    if !i.track_scripts.is_empty() {
        let names = Val::List(
            i.track_scripts
                .iter()
                .map(|r| text(r.name.clone()))
                .collect(),
        );
        e.push(
            Entry::val("track_scripts", &names)
                .above(not_yet(f.vrrp_scripts, "track_scripts"))
                .off(!f.vrrp_scripts),
        );
    }
    let n = &i.notify;
    let notify: Vec<Entry> = [
        ("master", &n.master),
        ("backup", &n.backup),
        ("fault", &n.fault),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.as_ref().map(|cmd| Entry::val(k, &text(cmd.clone()))))
    .collect();
    if !notify.is_empty() {
        e.push(Entry::new("notify", Node::Map(notify)).above(n.notes.clone()));
    }
    item(above, e)
}

fn script(s: &VrrpScript, at: &dyn Fn(&Origin) -> String) -> Item {
    item(
        vec![at(&s.origin)],
        vec![
            Entry::val("name", &text(s.name.clone())),
            Entry::val("script", &text(s.script.clone())),
            Entry::val("interval", &plain(values::duration(s.interval))),
            Entry::val("timeout", &plain(values::duration(s.timeout))),
            Entry::val("weight", &plain(s.weight)),
            Entry::val("rise", &plain(s.rise)),
            Entry::val("fall", &plain(s.fall)),
        ],
    )
}

fn sync_group(g: &SyncGroup, at: &dyn Fn(&Origin) -> String) -> Item {
    item(
        vec![at(&g.origin)],
        vec![
            Entry::val("name", &text(g.name.clone())),
            Entry::val(
                "instances",
                &Val::List(g.instances.iter().map(|r| text(r.name.clone())).collect()),
            ),
        ],
    )
}
