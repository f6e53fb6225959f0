//! `bascule status`: a [`Snapshot`] as text, in the spirit of `ipvsadm -L -n --stats`
//! (a service line, then one `->` line per backend). A pure function, checked against a
//! golden file (`tests/golden/status.txt`).

use std::fmt::Write as _;

use crate::control::snapshot::{BackendStatus, Rates, ServiceStatus, Snapshot};

/// The whole status page.
pub fn render(s: &Snapshot) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "bascule {}, config {}, {} service(s), reloads: {} ok, {} refused",
        s.version,
        s.config_file,
        s.services.len(),
        s.reloads.ok,
        s.reloads.error
    );
    if s.datapath.adopted {
        out.push_str(", datapath adopted from the previous daemon");
    }
    if !s.ready {
        out.push_str(", NOT READY");
    }
    out.push('\n');
    if let Some(e) = &s.reloads.last_error {
        let _ = writeln!(out, "last reload refused: {}", e.replace('\n', "; "));
    }
    out.push('\n');
    out.push_str(&services_table(&s.services));
    if s.services.iter().any(|svc| {
        svc.backends
            .iter()
            .any(|b: &BackendStatus| b.weight_override.is_some())
    }) {
        out.push_str(
            "* weight set at runtime (`bascule weight BACKEND reset` returns to the config's)\n",
        );
    }
    // Why each down backend is down (its last failed check).
    for svc in &s.services {
        for b in &svc.backends {
            if let (crate::control::snapshot::Health::Down, Some(why)) = (b.health, &b.last_failure)
            {
                let _ = writeln!(out, "{} {} down: {why}", svc.name, b.label);
            }
        }
    }
    out.push('\n');
    out.push_str(&datapath_lines(s));
    if !s.vrrp.is_empty() {
        out.push('\n');
        out.push_str(&vrrp_table(s));
    }
    if let Some(a) = &s.announce {
        out.push('\n');
        out.push_str(&announce_table(a));
    }
    if let Some(sync) = &s.sync {
        out.push('\n');
        out.push_str(&sync_lines(sync));
    }
    out
}

/// `announce:`: each VIP, whether its route is in the table, and why.
fn announce_table(a: &crate::control::AnnounceStatus) -> String {
    let mut out = format!(
        "Announced through table {}, protocol {}{}\n",
        a.table,
        a.protocol,
        if a.draining {
            ", node DRAINED (bascule undrain-node announces again)"
        } else {
            ""
        }
    );
    let mut t = Table::default();
    t.row(&["VIP", "Announced", "Why"]);
    for v in &a.vips {
        t.row_owned(vec![
            v.vip.to_string(),
            if v.announced { "yes" } else { "no" }.to_string(),
            v.reason.clone(),
        ]);
    }
    out.push_str(&t.render(usize::MAX));
    out
}

/// `sync:`: each peer and when it was last heard from, then the counters.
fn sync_lines(sync: &crate::control::SyncStatus) -> String {
    let mut t = Table::default();
    t.row(&["Sync peer", "Last seen", "Datagrams"]);
    for p in &sync.peers {
        let seen = p.last_seen.map_or_else(
            || "never".to_string(),
            |at| format!("{:.1}s ago", crate::control::seconds_ago(at)),
        );
        t.row_owned(vec![p.address.to_string(), seen, p.datagrams.to_string()]);
    }
    let mut out = t.render(usize::MAX);
    let rejected: Vec<String> = sync
        .rejected
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "sync: {} sent, {} received, {} applied, {} dropped (ring full); rejected: {}",
        sync.sent,
        sync.received,
        sync.applied,
        sync.dropped,
        if rejected.is_empty() {
            "none".to_string()
        } else {
            rejected.join(", ")
        }
    );
    out
}

fn services_table(services: &[ServiceStatus]) -> String {
    let mut t = Table::default();
    t.row(&[
        "Prot", "VIP:Port", "Service", "Sched", "", "ActConn", "Conns", "Packets", "Bytes", "CPS",
        "PPS", "BPS",
    ]);
    t.row(&[
        "  ->", "Backend", "Forward", "Weight", "Health", "", "", "", "", "", "", "",
    ]);
    for svc in services {
        let active: u64 = svc.backends.iter().map(|b| b.active_connections).sum();
        let mut row = vec![
            svc.protocol.to_uppercase(),
            svc.endpoint(),
            svc.name.clone(),
            scheduler_cell(svc),
            String::new(),
        ];
        row.extend(counter_cells(
            active,
            svc.connections,
            svc.packets,
            svc.bytes,
            svc.rates,
        ));
        t.row_owned(row);
        for b in &svc.backends {
            let weight = match b.weight_override {
                Some(_) => format!("{}*", b.weight),
                None => b.weight.to_string(),
            };
            let mut health = if !b.active && b.health.is_up() {
                "inactive".to_string()
            } else {
                b.health.as_str().to_string()
            };
            if b.overloaded {
                // At its connection threshold: no new flows for now.
                health.push_str(" overloaded");
            }
            let mut row = vec![
                "  ->".to_string(),
                b.label.clone(),
                b.forwarding.clone(),
                weight,
                health,
            ];
            row.extend(counter_cells(
                b.active_connections,
                b.connections,
                b.packets,
                b.bytes,
                b.rates,
            ));
            t.row_owned(row);
        }
    }
    // Numbers right-aligned, from ActConn on.
    t.render(5)
}

fn scheduler_cell(svc: &ServiceStatus) -> String {
    if svc.persistence == "0s" || svc.persistence.is_empty() {
        svc.scheduler.clone()
    } else {
        format!("{} persistent {}", svc.scheduler, svc.persistence)
    }
}

fn counter_cells(active: u64, conns: u64, packets: u64, bytes: u64, r: Rates) -> Vec<String> {
    vec![
        human(active as f64),
        human(conns as f64),
        human(packets as f64),
        human(bytes as f64),
        human(r.connections),
        human(r.packets),
        human(r.bytes),
    ]
}

fn datapath_lines(s: &Snapshot) -> String {
    let d = &s.datapath;
    let mut out = String::new();
    let actions: Vec<String> = ["tx", "pass", "drop", "redirect", "aborted"]
        .iter()
        .map(|a| format!("{a} {}", d.actions.get(*a).copied().unwrap_or(0)))
        .collect();
    let interfaces = if d.interfaces.is_empty() {
        "no interface".to_string()
    } else {
        let named: Vec<String> = d
            .interfaces
            .iter()
            .enumerate()
            .map(|(i, name)| match d.xdp_modes.get(i) {
                Some(mode) => format!("{name} ({mode})"),
                None => name.clone(),
            })
            .collect();
        named.join(", ")
    };
    let _ = writeln!(
        out,
        "XDP on {interfaces}: {}; conntrack {} of {} entries, {} misses, {} evictions",
        actions.join(", "),
        d.conntrack_entries,
        d.conntrack_capacity,
        d.conntrack_misses,
        d.conntrack_evictions
    );
    let nonzero = |m: &std::collections::BTreeMap<String, u64>| -> Vec<String> {
        m.iter()
            .filter(|(_, &v)| v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect()
    };
    let drops = nonzero(&d.drops);
    if !drops.is_empty() {
        let _ = writeln!(out, "dropped: {}", drops.join(", "));
    }
    let passes = nonzero(&d.passes);
    if !passes.is_empty() {
        let _ = writeln!(out, "passed to the kernel: {}", passes.join(", "));
    }
    out
}

/// One line per instance. `Priority` is the effective one, with the configured one in
/// parentheses when track scripts moved it; `Scripts` lists its track scripts' states.
fn vrrp_table(s: &Snapshot) -> String {
    let mut t = Table::default();
    t.row(&[
        "VRRP",
        "Interface",
        "VRID",
        "State",
        "Priority",
        "Master",
        "Group",
        "Scripts",
        "Addresses",
    ]);
    for v in &s.vrrp {
        let priority = if v.configured_priority == 0 || v.configured_priority == v.priority {
            v.priority.to_string()
        } else {
            format!("{} ({})", v.priority, v.configured_priority)
        };
        let scripts: Vec<String> = v
            .scripts
            .iter()
            .map(|s| format!("{}:{}", s.name, s.state))
            .collect();
        t.row_owned(vec![
            v.instance.clone(),
            v.interface.clone(),
            v.virtual_router_id.to_string(),
            v.state.as_str().to_uppercase(),
            priority,
            v.master.map_or_else(|| "-".to_string(), |m| m.to_string()),
            v.sync_group.clone().unwrap_or_else(|| "-".to_string()),
            if scripts.is_empty() {
                "-".to_string()
            } else {
                scripts.join(" ")
            },
            v.virtual_addresses.join(" "),
        ]);
    }
    t.render(usize::MAX)
}

/// A count or rate, short: exact below 100,000, then K, M, G, T (powers of 1000) with
/// one decimal below 10 units.
pub fn human(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        return "-".to_string();
    }
    if v < 100_000.0 {
        return format!("{}", v.round() as u64);
    }
    let mut scaled = v;
    let mut unit = "";
    for u in ["K", "M", "G", "T"] {
        scaled /= 1000.0;
        unit = u;
        if scaled < 1000.0 {
            break;
        }
    }
    if scaled < 10.0 {
        format!("{scaled:.1}{unit}")
    } else {
        format!("{}{unit}", scaled.round() as u64)
    }
}

/// Aligned columns, two spaces apart, no trailing spaces.
#[derive(Default)]
struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn row(&mut self, cells: &[&str]) {
        self.rows
            .push(cells.iter().map(|c| c.to_string()).collect());
    }

    fn row_owned(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Columns from `right_from` on are right-aligned.
    fn render(&self, right_from: usize) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, width) in widths.iter().enumerate() {
                let cell = row.get(c).map_or("", String::as_str);
                if c > 0 {
                    line.push_str("  ");
                }
                if c >= right_from {
                    let _ = write!(line, "{cell:>width$}");
                } else {
                    let _ = write!(line, "{cell:<width$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers() {
        assert_eq!(human(0.0), "0");
        assert_eq!(human(99_999.0), "99999");
        assert_eq!(human(100_000.0), "100K");
        assert_eq!(human(2_500_000.0), "2.5M");
        assert_eq!(human(12_345_678_901.0), "12G");
        assert_eq!(human(0.4), "0");
        assert_eq!(human(f64::NAN), "-");
    }
}
