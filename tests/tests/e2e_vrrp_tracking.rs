//! keepalived's track scripts and sync groups between two bascule nodes in a namespace
//! lab: a weighted script that starts failing lowers the master's priority and the peer
//! takes over, and back when it passes; a failing script of weight 0 is a FAULT; a sync
//! group's IPv4 and IPv6 instances fail over together when only the IPv6 instance's
//! tracked interface goes down. The binary comes from `BASCULE_BIN` (set by `cargo xtask
//! test`).

use std::{fs, net::IpAddr, path::PathBuf, time::Duration};

use bascule_tests::{
    lab::ip,
    require_root,
    vrrp::{
        bascule_config, holds, logs, pair_lab, serial, start, stop, wait_for, wait_for_master,
        write, Instance, LINK_VIP4, LINK_VIP6,
    },
    Host, Spawned, Topology,
};

/// Bound for things with no protocol deadline of their own (startup, preemption after a
/// Master_Down_Interval).
const SETTLE: Duration = Duration::from_secs(10);

/// The value of the metric `series` (name and labels, as printed) on `lb`.
fn metric(topo: &Topology, lb: &Host, series: &str) -> Option<String> {
    let (_, text) = topo.api(lb, "GET", "/metrics", None).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(str::to_string)
}

/// `name`'s entry in `GET /api/v1/vrrp` on `lb`, if its API answers with one.
fn try_instance(topo: &Topology, lb: &Host, name: &str) -> Option<serde_json::Value> {
    let (status, body) = topo.api(lb, "GET", "/api/v1/vrrp", None).ok()?;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    (status == 200).then_some(())?;
    json["instances"]
        .as_array()?
        .iter()
        .find(|i| i["instance"] == name)
        .cloned()
}

fn instance(topo: &Topology, lb: &Host, name: &str) -> serde_json::Value {
    try_instance(topo, lb, name)
        .unwrap_or_else(|| panic!("no instance {name} in GET /api/v1/vrrp on {}", lb.role))
}

/// Waits for `name`'s state on `lb` (its API may not listen yet).
fn wait_for_state(topo: &Topology, lb: &Host, name: &str, state: &str, daemons: &[&Spawned]) {
    wait_for(&format!("{name} {state} on {}", lb.role), SETTLE, || {
        try_instance(topo, lb, name).is_some_and(|i| i["state"] == state)
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(daemons)));
}

fn expect_master(nodes: &[&Host], master: &Host, vip: IpAddr, daemons: &[&Spawned]) -> Duration {
    wait_for_master(nodes, master, vip, SETTLE).unwrap_or_else(|e| panic!("{e:#}{}", logs(daemons)))
}

/// Two nodes for a track-script test, started: lb1 (150, master) tracks the script `chk`
/// (`test ! -e FLAG` every 200 ms, plus the YAML `keys`), which fails while the file
/// `flag` exists; lb2 (100, backup) tracks nothing.
struct ScriptPair {
    topo: Topology,
    flag: PathBuf,
    advert: Duration,
    i2: Instance,
    d1: Spawned,
    d2: Spawned,
}

impl ScriptPair {
    fn nodes(&self) -> [&Host; 2] {
        [&self.topo.lbs[0], &self.topo.lbs[1]]
    }

    fn daemons(&self) -> [&Spawned; 2] {
        [&self.d1, &self.d2]
    }
}

fn script_pair(tag: &str, vrid: u8, keys: &str) -> ScriptPair {
    let topo = pair_lab(tag, 1);
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let vip = IpAddr::V4(LINK_VIP4);
    let flag = topo.lab.dir().join("lb1-fails");
    let advert = Duration::from_millis(300);
    let mut i1 = Instance::new("VI_1", vrid, 150, vip, advert);
    i1.track_scripts = vec!["chk".into()];
    let i2 = Instance::new("VI_1", vrid, 100, vip, advert);
    let scripts = format!(
        "vrrp_scripts:\n  - {{ name: chk, script: \"test ! -e {}\", interval: 200ms{keys} }}\n",
        flag.display()
    );
    let cfg1 = write(
        &topo,
        "lb1.yaml",
        &(bascule_config(&topo.backends, &[], &[i1]) + &scripts),
    );
    let cfg2 = write(
        &topo,
        "lb2.yaml",
        &bascule_config(&topo.backends, &[], std::slice::from_ref(&i2)),
    );
    let d1 = start(&topo, lb1, &cfg1);
    expect_master(&[lb1, lb2], lb1, vip, &[&d1]);
    let d2 = start(&topo, lb2, &cfg2);
    wait_for_state(&topo, lb2, "VI_1", "backup", &[&d1, &d2]);
    ScriptPair {
        flag,
        advert,
        i2,
        d1,
        d2,
        topo,
    }
}

/// lb1 (150) tracks a script of weight -100 that fails while a file exists; lb2 (100)
/// tracks nothing. The file appears: lb1's effective priority drops to 50, lb2 preempts
/// it; the file goes: lb1 (150 again) preempts lb2.
#[test]
fn a_failing_track_script_hands_over_to_the_peer_and_back() {
    require_root();
    let _serial = serial();
    let pair = script_pair("vrrp-script", 71, ", weight: -100, rise: 2, fall: 2");
    let (topo, flag, i2, advert) = (&pair.topo, &pair.flag, &pair.i2, pair.advert);
    let (nodes, daemons) = (pair.nodes(), pair.daemons());
    let ([lb1, lb2], [d1, d2]) = (nodes, daemons);
    let vip = IpAddr::V4(LINK_VIP4);
    let priority = "bascule_vrrp_priority{instance=\"VI_1\"}";
    let script_up = "bascule_vrrp_script_up{script=\"chk\"}";
    assert_eq!(metric(topo, lb1, priority).as_deref(), Some("150"));
    assert_eq!(metric(topo, lb1, script_up).as_deref(), Some("1"));

    fs::write(flag, "").unwrap();
    let took = expect_master(&nodes, lb2, vip, &daemons);
    println!("script fails: lb2 master after {} ms", took.as_millis());
    // Two failed runs, then lb2's Master_Down_Interval after lb1's last advert it heard
    // at a higher priority (and a run's and an advert's worth of slack).
    let bound = 3 * Duration::from_millis(200) + i2.master_down_interval() + advert;
    assert!(took < bound, "{took:?} >= {bound:?}{}", logs(&daemons));
    let seen = instance(topo, lb1, "VI_1");
    assert_eq!(seen["state"], "backup", "{seen}");
    assert_eq!(seen["priority"], 50, "{seen}");
    assert_eq!(seen["configured_priority"], 150, "{seen}");
    assert_eq!(seen["scripts"][0]["state"], "down", "{seen}");
    assert_eq!(metric(topo, lb1, priority).as_deref(), Some("50"));
    assert_eq!(metric(topo, lb1, script_up).as_deref(), Some("0"));
    // It stays there: lb2 (100) now wins against lb1 (50).
    std::thread::sleep(4 * advert);
    assert!(holds(lb2, vip) && !holds(lb1, vip), "{}", logs(&daemons));

    fs::remove_file(flag).unwrap();
    let took = expect_master(&nodes, lb1, vip, &daemons);
    println!(
        "script passes: lb1 master again after {} ms",
        took.as_millis()
    );
    assert_eq!(metric(topo, lb1, priority).as_deref(), Some("150"));
    assert_eq!(instance(topo, lb2, "VI_1")["state"], "backup");
    stop(topo, d1);
    stop(topo, d2);
}

/// A sync group of an IPv4 and an IPv6 instance on each node, lb1 (150) preferred over
/// lb2 (100); on lb1 only the IPv6 instance tracks an interface. That interface goes
/// down: the IPv6 instance faults, and with it the IPv4 one, whose priority-0 advert
/// hands it over at once; lb2 takes both addresses. The interface comes back: lb1 takes
/// both back.
#[test]
fn a_sync_group_fails_over_together() {
    require_root();
    let _serial = serial();
    let topo = pair_lab("vrrp-sync", 1);
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let (vip4, vip6) = (IpAddr::V4(LINK_VIP4), IpAddr::V6(LINK_VIP6));
    // A link to track (a veth pair inside lb1: this kernel has no dummy interfaces).
    let ns1 = lb1.netns.as_str();
    ip(&[
        "-n",
        ns1,
        "link",
        "add",
        "uplink6",
        "type",
        "veth",
        "peer",
        "name",
        "uplink6-peer",
    ])
    .expect("uplink");
    for link in ["uplink6", "uplink6-peer"] {
        ip(&["-n", ns1, "link", "set", link, "up"]).expect("uplink up");
    }
    let advert = Duration::from_millis(300);
    let group = "sync_groups:\n  - { name: G1, instances: [VI_4, VI_6] }\n";
    let pair = |priority: u8, track: bool| {
        let v4 = Instance::new("VI_4", 81, priority, vip4, advert);
        let mut v6 = Instance::new("VI_6", 82, priority, vip6, advert);
        if track {
            v6.track_interfaces = vec!["uplink6".into()];
        }
        bascule_config(&topo.backends, &[], &[v4, v6]) + group
    };
    let cfg1 = write(&topo, "lb1.yaml", &pair(150, true));
    let cfg2 = write(&topo, "lb2.yaml", &pair(100, false));
    let d1 = start(&topo, lb1, &cfg1);
    expect_master(&nodes, lb1, vip4, &[&d1]);
    expect_master(&nodes, lb1, vip6, &[&d1]);
    let d2 = start(&topo, lb2, &cfg2);
    let daemons = [&d1, &d2];
    wait_for_state(&topo, lb2, "VI_4", "backup", &daemons);
    wait_for_state(&topo, lb2, "VI_6", "backup", &daemons);
    assert_eq!(instance(&topo, lb1, "VI_4")["sync_group"], "G1");

    ip(&["-n", ns1, "link", "set", "uplink6", "down"]).expect("uplink down");
    let took4 = expect_master(&nodes, lb2, vip4, &daemons);
    let took6 = expect_master(&nodes, lb2, vip6, &daemons);
    println!(
        "IPv6 uplink down: lb2 master of VI_4 after {} ms, of VI_6 after {} ms more",
        took4.as_millis(),
        took6.as_millis()
    );
    let mdi = Instance::new("VI_4", 81, 100, vip4, advert).master_down_interval();
    assert!(
        took4 < mdi,
        "VI_4 faults with VI_6 and hands over with priority 0: {took4:?}{}",
        logs(&daemons)
    );
    // The addresses moved; each daemon's status follows its own transition a moment later.
    for name in ["VI_4", "VI_6"] {
        wait_for_state(&topo, lb1, name, "fault", &daemons);
        wait_for_state(&topo, lb2, name, "master", &daemons);
    }

    ip(&["-n", ns1, "link", "set", "uplink6", "up"]).expect("uplink up");
    expect_master(&nodes, lb1, vip4, &daemons);
    expect_master(&nodes, lb1, vip6, &daemons);
    for name in ["VI_4", "VI_6"] {
        wait_for_state(&topo, lb2, name, "backup", &daemons);
    }
    stop(&topo, &d1);
    stop(&topo, &d2);
}

/// A script of weight 0 (keepalived's default): while it fails, lb1 is in FAULT and hands
/// over at once with a priority-0 advert; when it passes, lb1 starts again and preempts.
#[test]
fn a_failing_script_of_weight_zero_is_a_fault() {
    require_root();
    let _serial = serial();
    let pair = script_pair("vrrp-script0", 72, "");
    let (topo, flag, i2) = (&pair.topo, &pair.flag, &pair.i2);
    let (nodes, daemons) = (pair.nodes(), pair.daemons());
    let ([lb1, lb2], [d1, d2]) = (nodes, daemons);
    let vip = IpAddr::V4(LINK_VIP4);

    fs::write(flag, "").unwrap();
    let took = expect_master(&nodes, lb2, vip, &daemons);
    println!(
        "weight-0 script fails: lb2 master after {} ms",
        took.as_millis()
    );
    assert!(
        took < i2.master_down_interval(),
        "a faulting master hands over with priority 0: {took:?}{}",
        logs(&daemons)
    );
    let seen = instance(topo, lb1, "VI_1");
    assert_eq!(seen["state"], "fault", "{seen}");
    assert_eq!(seen["priority"], 150, "weight 0 moves no priority: {seen}");

    fs::remove_file(flag).unwrap();
    expect_master(&nodes, lb1, vip, &daemons);
    stop(topo, d1);
    stop(topo, d2);
}
