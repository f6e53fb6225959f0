//! `sync:` between two LB nodes in the product lab (`bascule_tests::product`): the
//! services use `rr`, `wlc`, `sh` with persistence (`dr`) or `rr` (`nat`) instead of `mh`,
//! and 30 long-lived TCP connections run through the master when it dies (SIGKILL, cable
//! pulled). With `sync` every connection survives on its server; without it (`rr`), the
//! backup schedules them again and some land on another server, which resets them: both
//! are asserted, so that the test fails if sync stops carrying flows (or if the lab stops
//! showing the loss). The nodes name each other (`sync.peers`), except in the `wlc` case,
//! where both send to and receive from a multicast group (`sync.group` on `eth0`).
//!
//! The tests run one at a time (VRRP at 200 ms adverts). The binary comes from
//! `BASCULE_BIN` (set by `cargo xtask test`).

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use bascule_tests::product::{
    wait_until, Failover, Mode, ProductLab, BACKUP_PRIORITY, MASTER_PRIORITY,
};
use bascule_tests::sync::{section, write_key, Transport, KEY};
use bascule_tests::{bascule_bin, in_netns, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

/// Long-lived connections through the failover.
const CONNECTIONS: usize = 30;
/// Sync between the nodes naming each other.
const UNICAST: Option<Transport> = Some(Transport::Unicast);
/// The group of the multicast case.
const GROUP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(239, 0, 0, 81));
/// Forged datagrams of the flood.
const FLOOD: usize = 2_000;

/// Also: before the failover, forged datagrams sent to the backup (wrong key, garbage,
/// truncated, replayed, stale, naming an unknown service) are refused and counted by
/// reason, nothing of them is applied, and a flood of them evicts nothing.
#[test]
fn rr_connections_survive_the_death_of_the_master_with_sync() {
    let (lab, f) = fail_over_with(Mode::Dr, "rr", UNICAST, forge);
    assert_eq!(f.survived(), CONNECTIONS, "{}", lab.logs());
    teardown(lab);
}

#[test]
fn wlc_connections_survive_with_multicast_sync() {
    survive_with(Mode::Dr, "wlc", Some(Transport::Multicast(GROUP)));
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
    survive_with(mode, scheduler, UNICAST);
}

fn survive_with(mode: Mode, scheduler: &str, sync: Option<Transport>) {
    let (lab, f) = fail_over_with(mode, scheduler, sync, |_| {});
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
        "{} {scheduler}: with sync {sync:?}, {} of {CONNECTIONS} connections were lost:\n{}{}",
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
    let (lab, f) = fail_over_with(Mode::Dr, "rr", None, |_| {});
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
/// other (unicast) or both the same group.
fn configs(lab: &ProductLab, scheduler: &str, sync: Option<Transport>) -> [String; 2] {
    let key = write_key(lab.topo.lab.dir()).expect("write the key");
    [(0, 1, MASTER_PRIORITY), (1, 0, BACKUP_PRIORITY)].map(|(i, other, priority)| {
        let mut yaml = lab
            .config(i, priority)
            .replace("scheduler: mh", &format!("scheduler: {scheduler}"));
        if let Some(transport) = sync {
            let peer = lab
                .lb(other)
                .addrs
                .iter()
                .find(|a| a.is_ipv4())
                .expect("an IPv4 address");
            yaml.push_str(&section(transport, &[*peer], &key));
        }
        yaml
    })
}

/// lb1 master, lb2 backup, every server up on both; 30 connections through lb1; with
/// `sync`, lb2 has applied them; lb1 dies.
fn fail_over_with(
    mode: Mode,
    scheduler: &str,
    sync: Option<Transport>,
    before_failover: impl FnOnce(&ProductLab),
) -> (ProductLab, Failover) {
    require_root();
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let how = match sync {
        None => "off",
        Some(Transport::Unicast) => "on",
        Some(Transport::Multicast(_)) => "mc",
    };
    let tag = format!("sync-{}-{how}", mode.as_str());
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
    if sync.is_some() {
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
    before_failover(&lab);
    let f = lab
        .fail_over(probes)
        .unwrap_or_else(|e| panic!("fail over: {e:#}{}", lab.logs()));
    let servers: std::collections::BTreeSet<_> = f
        .connections
        .iter()
        .filter_map(|c| c.server.clone())
        .collect();
    println!(
        "{} {scheduler:?} sync {how}: lb2 took over in {} ms; {}/{CONNECTIONS} connections survived; servers {servers:?}",
        mode.as_str(),
        f.takeover.as_millis(),
        f.survived()
    );
    (lab, f)
}

/// lb2's `GET /api/v1/sync`.
fn sync_status(lab: &ProductLab) -> serde_json::Value {
    let (status, body) = lab
        .topo
        .api(lab.lb(1), "GET", "/api/v1/sync", None)
        .expect("GET /api/v1/sync");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn rejected(v: &serde_json::Value, reason: &str) -> u64 {
    v["rejected"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r[0] == reason))
        .and_then(|r| r[1].as_u64())
        .unwrap_or(0)
}

fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A sync datagram as `docs/operations.md` describes it: one new flow from `client` to
/// `vip`:80 on `backend`:80, authenticated with `key`.
fn datagram(
    key: &[u8],
    seq: u64,
    at_ms: u64,
    client: IpAddr,
    vip: IpAddr,
    backend: IpAddr,
) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(b"BSYN");
    d.extend_from_slice(&[1, 0]);
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&0x0bad_5eed_u64.to_be_bytes());
    d.extend_from_slice(&seq.to_be_bytes());
    d.extend_from_slice(&at_ms.to_be_bytes());
    d.extend_from_slice(&[1, 4, 6, 1]);
    d.extend_from_slice(&mapped(client));
    d.extend_from_slice(&45_678u16.to_be_bytes());
    d.extend_from_slice(&mapped(vip));
    d.extend_from_slice(&80u16.to_be_bytes());
    d.extend_from_slice(&80u16.to_be_bytes());
    d.extend_from_slice(&[4, 0]);
    d.extend_from_slice(&mapped(backend));
    d.extend_from_slice(&80u16.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    mac.update(&d);
    d.extend_from_slice(&mac.finalize().into_bytes());
    d
}

/// Forged datagrams from the client to lb2: each refused with its reason, none applied;
/// then a flood of them.
fn forge(lab: &ProductLab) {
    let before = sync_status(lab);
    let lb2 = lab.lb(1).ipv4().expect("lb2 IPv4");
    let to = SocketAddr::new(lb2, 9470);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let vip: IpAddr = bascule_tests::product::VIP4.into();
    let client = lab.topo.client.ipv4().expect("client IPv4");
    let backend = lab.servers[0].ipv4().expect("server IPv4");
    let unknown_vip: IpAddr = "10.0.0.250".parse().unwrap();
    let good = datagram(KEY, 1, now, client, vip, backend);
    let unknown = datagram(KEY, 2, now, client, unknown_vip, backend);
    let wrong_key = datagram(b"not the shared key at all", 3, now, client, vip, backend);
    let stale = datagram(KEY, 4, now - 120_000, client, vip, backend);
    let sends: Vec<Vec<u8>> = vec![
        wrong_key.clone(),
        b"garbage".to_vec(),
        good[..good.len() - 10].to_vec(),
        unknown.clone(),
        unknown.clone(), // replayed
        stale,
    ];
    let flood: Vec<Vec<u8>> = (0..FLOOD as u64)
        .map(|i| datagram(b"an attacker's own key", 100 + i, now, client, vip, backend))
        .collect();
    in_netns(&lab.topo.client.netns.clone(), move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for d in sends {
            s.send_to(&d, to)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        // Paced (10,000 a second): every one reaches the daemon, none is lost to a full
        // socket buffer, so each must be counted.
        for chunk in flood.chunks(10) {
            for d in chunk {
                s.send_to(d, to)?;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
    .expect("send forged datagrams");
    let want = [
        ("auth", 1 + FLOOD as u64),
        ("malformed", 2),
        ("replay", 2),
        ("unknown_service", 1),
    ];
    let settled = wait_until(
        "lb2 counting the forged datagrams",
        Duration::from_secs(10),
        || {
            let now = sync_status(lab);
            want.iter()
                .all(|(r, n)| rejected(&now, r) >= rejected(&before, r) + n)
        },
    );
    let after = sync_status(lab);
    assert!(
        settled.is_ok(),
        "rejected by reason, before {} after {}",
        before["rejected"],
        after["rejected"]
    );
    assert_eq!(
        after["applied"], before["applied"],
        "nothing forged applied"
    );
}

/// Bulk sync: lb1 dies, 30 new connections go through lb2 (rr), lb1 restarts from scratch
/// (its state file removed: it starts over with empty tables) and asks lb2 for its whole
/// table before VRRP starts; it preempts, and every connection survives the hand-back.
#[test]
fn a_node_restarted_from_scratch_takes_the_table_before_the_master_role() {
    let (mut lab, f) = fail_over_with(Mode::Dr, "rr", UNICAST, |_| {});
    assert_eq!(f.survived(), CONNECTIONS, "{}", lab.logs());
    let probes = lab
        .open_connections(CONNECTIONS)
        .unwrap_or_else(|e| panic!("open connections through lb2: {e:#}{}", lab.logs()));
    // lb1 from scratch: without its state file the daemon clears its pins and starts over.
    let lb1 = lab.lb(0).clone();
    let inode = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/run/netns/{}", lb1.netns)).expect("lb1's netns"),
    );
    let state = format!("/run/bascule/{inode}");
    std::fs::remove_dir_all(&state).unwrap_or_else(|e| panic!("remove {state}: {e}"));
    let [c1, _] = configs(&lab, "rr", UNICAST);
    lab.revive_node(0, &c1)
        .unwrap_or_else(|e| panic!("restart lb1: {e:#}{}", lab.logs()));
    let took = lab.wait_for_master(0, &[1]);
    let log = lab.log(0);
    took.unwrap_or_else(|e| panic!("lb1 master again: {e:#}{}", lab.logs()));
    assert!(
        !log.contains("adopted the pinned"),
        "lb1 started over:\n{log}"
    );
    assert!(
        log.contains("sync: bulk transfer received"),
        "lb1 logs the bulk transfer it received:\n{log}"
    );
    let at_handback = probes.progress();
    let recovered = wait_until(
        "every connection answering after the hand-back",
        Duration::from_secs(20),
        || {
            probes
                .progress()
                .iter()
                .zip(&at_handback)
                .all(|(&(now, done), &(then, _))| done || now >= then + 5)
        },
    );
    let results = probes.stop();
    recovered.unwrap_or_else(|e| panic!("{e:#}{}", lab.logs()));
    let lost: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.local)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {CONNECTIONS} connections lost at the hand-back:\n{}{}",
        lost.len(),
        lost.join("\n"),
        lab.logs()
    );
    teardown(lab);
}
