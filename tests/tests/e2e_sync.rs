//! `sync:` between two LB nodes in the product lab (`bascule_tests::product`): the
//! services use `rr`, `wlc`, `sh` with persistence (`dr`) or `rr` (`nat`) instead of `mh`,
//! and 30 long-lived TCP connections run through the master when it dies (SIGKILL, cable
//! pulled). With `sync` every connection survives on its server; without it (`rr`), the
//! backup schedules them again and some land on another server, which resets them: both
//! are asserted, so that the test fails if sync stops carrying flows (or if the lab stops
//! showing the loss).
//!
//! The tests run one at a time (VRRP at 200 ms adverts). The binary comes from
//! `BASCULE_BIN` (set by `cargo xtask test`).

use std::{os::unix::fs::PermissionsExt, sync::Mutex, time::Duration};

use bascule_tests::product::{
    wait_until, Failover, Mode, ProductLab, BACKUP_PRIORITY, MASTER_PRIORITY,
};
use bascule_tests::{bascule_bin, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

/// Long-lived connections through the failover.
const CONNECTIONS: usize = 30;

#[test]
fn rr_connections_survive_the_death_of_the_master_with_sync() {
    survive(Mode::Dr, "rr");
}

#[test]
fn wlc_connections_survive_with_sync() {
    survive(Mode::Dr, "wlc");
}

#[test]
fn sh_with_persistence_connections_survive_with_sync() {
    survive(Mode::Dr, "sh\n    persistence: 5m");
}

#[test]
fn nat_rr_connections_survive_with_sync() {
    survive(Mode::Nat, "rr");
}

/// With sync, every connection survives on its server.
fn survive(mode: Mode, scheduler: &str) {
    let (lab, f) = fail_over_with(mode, scheduler, true);
    let lost: Vec<String> = f
        .connections
        .iter()
        .filter_map(|c| {
            c.result
                .failure
                .as_ref()
                .map(|e| format!("{} (on {:?}): {e}", c.result.local, c.server))
        })
        .collect();
    assert!(
        lost.is_empty(),
        "{} {scheduler}: with sync, {} of {CONNECTIONS} connections were lost:\n{}{}",
        mode.as_str(),
        lost.len(),
        lost.join("\n"),
        lab.logs()
    );
    // Alive, each kept talking to its server (another would have reset it).
    assert!(
        f.connections
            .iter()
            .all(|c| c.server.is_some() && c.after_takeover >= 5),
        "every connection exchanging on its server after the takeover: {:?}",
        f.connections
    );
    teardown(lab);
}

#[test]
fn rr_connections_are_lost_without_sync() {
    let (lab, f) = fail_over_with(Mode::Dr, "rr", false);
    let servers: std::collections::BTreeSet<_> = f
        .connections
        .iter()
        .filter_map(|c| c.server.clone())
        .collect();
    assert!(
        servers.len() > 1,
        "rr spread the connections over several servers: {servers:?}"
    );
    let survived = f.survived();
    println!("without sync: {survived}/{CONNECTIONS} connections survived the failover");
    assert!(
        survived < CONNECTIONS,
        "without sync every rr connection survived: the lab no longer shows what sync fixes"
    );
    teardown(lab);
}

fn teardown(lab: ProductLab) {
    let leftovers = lab.teardown().expect("tear the lab down");
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

/// The two nodes' configs: `scheduler` instead of `mh`, and with `sync` each naming the
/// other.
fn configs(lab: &ProductLab, scheduler: &str, sync: bool) -> [String; 2] {
    let key = lab.topo.lab.dir().join("sync.key");
    std::fs::write(&key, "a secret shared by lb1 and lb2 only\n").expect("write the key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    [(0, 1, MASTER_PRIORITY), (1, 0, BACKUP_PRIORITY)].map(|(i, other, priority)| {
        let mut yaml = lab
            .config(i, priority)
            .replace("scheduler: mh", &format!("scheduler: {scheduler}"));
        if sync {
            let peer = lab
                .lb(other)
                .addrs
                .iter()
                .find(|a| a.is_ipv4())
                .expect("an IPv4 address");
            yaml.push_str(&format!(
                "sync:\n  peers: [{peer}]\n  key_file: {}\n",
                key.display()
            ));
        }
        yaml
    })
}

/// lb1 master, lb2 backup, every server up on both; 30 connections through lb1; with
/// `sync`, lb2 has applied them; lb1 dies.
fn fail_over_with(mode: Mode, scheduler: &str, sync: bool) -> (ProductLab, Failover) {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("sync-{}-{}", mode.as_str(), if sync { "on" } else { "off" });
    let mut lab = ProductLab::new(&tag, mode, &bascule_bin())
        .unwrap_or_else(|e| panic!("build the lab: {e:#}"));
    let [c1, c2] = configs(&lab, scheduler, sync);
    let started = lab
        .start_node(0, &c1)
        .map(drop)
        .and_then(|()| lab.start_node(1, &c2).map(drop));
    let check = |lab: &ProductLab, what: &str, r: anyhow::Result<Duration>| {
        r.unwrap_or_else(|e| panic!("{what}: {e:#}{}", lab.logs()));
    };
    started.unwrap_or_else(|e| panic!("start bascule: {e:#}{}", lab.logs()));
    check(&lab, "lb1 master", lab.wait_for_master(0, &[1]));
    check(&lab, "servers up", lab.wait_for_health());
    let probes = lab
        .open_connections(CONNECTIONS)
        .unwrap_or_else(|e| panic!("open connections: {e:#}{}", lab.logs()));
    if sync {
        let lb2 = lab.lb(1).clone();
        let applied = wait_until("lb2 applying lb1's flows", Duration::from_secs(5), || {
            lab.topo
                .api(&lb2, "GET", "/api/v1/sync", None)
                .ok()
                .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
                .and_then(|v| v["applied"].as_u64())
                .is_some_and(|n| n >= CONNECTIONS as u64)
        });
        check(&lab, "sync", applied);
    }
    let f = lab
        .fail_over(probes)
        .unwrap_or_else(|e| panic!("fail over: {e:#}{}", lab.logs()));
    let servers: std::collections::BTreeSet<_> = f
        .connections
        .iter()
        .filter_map(|c| c.server.clone())
        .collect();
    println!(
        "{} {scheduler:?} sync {sync}: lb2 took over in {} ms; {}/{CONNECTIONS} connections survived; servers {servers:?}",
        mode.as_str(),
        f.takeover.as_millis(),
        f.survived()
    );
    (lab, f)
}
