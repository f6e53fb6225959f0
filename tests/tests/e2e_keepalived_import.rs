//! Migrating a keepalived pair one node at a time (issue 25): both LB nodes have the same
//! keepalived.conf but for `state` and `priority`. One node keeps running keepalived on
//! it; the other runs bascule on what `bascule import-keepalived` made of its own copy,
//! with only what the lab needs changed (generic XDP on the lab's veth). The two elect the
//! higher priority as the one master holding the VIP, and when that master dies (SIGKILL,
//! cable pulled) the other takes the VIP over and the client's ARP entry follows; when
//! bascule is master the client reaches a backend through the VIP.
//!
//! keepalived runs with `--vrrp` only: this kernel has no IPVS, and the `virtual_server`
//! part is bascule's to serve. The binary comes from `BASCULE_BIN`.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use bascule_tests::{
    bascule_bin, require_root,
    topology::VIP_PORT,
    vrrp::{
        hold_on_backends, holds, logs, neighbour_mac, pair_lab, serial, start_keepalived, wait_for,
        wait_for_master, LINK_VIP4,
    },
    Host, Spawned, Topology,
};

const VRID: u8 = 61;
const HIGH: u8 = 150;
const LOW: u8 = 100;
/// Bound for the first election (bascule starts in BACKUP, loads XDP, waits out its
/// Master_Down_Interval; keepalived waits likewise when it starts as BACKUP).
const SETTLE: Duration = Duration::from_secs(15);
/// What a takeover may take beyond the backup's Master_Down_Interval on a loaded host.
const TAKEOVER_SLACK: Duration = Duration::from_millis(1000);
/// How long the elected pair must stay as it is (no second master, no flapping).
const STEADY: Duration = Duration::from_secs(2);

/// The operators' keepalived.conf for a node of the lab's pair: VRRPv2 with PASS
/// authentication on the LB interface, the on-link VIP, and the web service over every
/// backend with a TCP check.
fn keepalived_conf(router_id: &str, state: &str, priority: u8, backends: &[Host]) -> String {
    let mut k = format!(
        "! Configuration File for keepalived\n\
         global_defs {{\n   router_id {router_id}\n   script_user root\n}}\n\n\
         vrrp_instance VI_WEB {{\n    state {state}\n    interface eth0\n    \
         virtual_router_id {VRID}\n    priority {priority}\n    advert_int 1\n    \
         authentication {{\n        auth_type PASS\n        auth_pass w3bf4rm\n    }}\n    \
         virtual_ipaddress {{\n        {LINK_VIP4}/24 dev eth0\n    }}\n}}\n"
    );
    let _ = write!(
        k,
        "\nvirtual_server {LINK_VIP4} {VIP_PORT} {{\n    delay_loop 2\n    lb_algo mh\n    \
         lb_kind DR\n    protocol TCP\n"
    );
    for b in backends {
        let addr = b.ipv4().expect("backend has IPv4");
        let _ = write!(
            k,
            "\n    real_server {addr} {VIP_PORT} {{\n        weight 1\n        TCP_CHECK {{\n            \
             connect_timeout 2\n        }}\n    }}\n"
        );
    }
    k.push_str("}\n");
    k
}

fn run(what: &str, cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// `bascule import-keepalived CONF -o YAML`, `bascule check --no-host` on the result, then
/// the lab's one change: generic XDP, as the lab's veths need. Returns the file to run.
fn import(topo: &Topology, conf: &Path) -> PathBuf {
    let bin = bascule_bin();
    let imported = topo.lab.dir().join("imported.yaml");
    let report = run(
        "bascule import-keepalived",
        Command::new(&bin)
            .arg("import-keepalived")
            .arg(conf)
            .arg("-o")
            .arg(&imported),
    );
    println!("import-keepalived reported:\n{report}");
    run(
        "bascule check --no-host",
        Command::new(&bin)
            .args(["check", "--no-host", "-c"])
            .arg(&imported),
    );
    let yaml = std::fs::read_to_string(&imported).expect("read the imported YAML");
    let plain = "  interfaces:\n    - name: eth0\n";
    assert!(
        yaml.contains(plain),
        "the imported YAML names the node's interface:\n{yaml}"
    );
    let lab_yaml = yaml.replacen(
        plain,
        "  interfaces:\n    - name: eth0\n      xdp_mode: generic\n",
        1,
    );
    topo.write_config("bascule.yaml", &lab_yaml)
        .expect("write the lab's YAML")
}

/// Waits until `master` alone holds the VIP, then checks that it stays so.
fn expect_sole_master(nodes: &[&Host], master: &Host, daemons: &[&Spawned]) -> Duration {
    let vip = IpAddr::V4(LINK_VIP4);
    let took = wait_for_master(nodes, master, vip, SETTLE)
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(daemons)));
    let start = Instant::now();
    while start.elapsed() < STEADY {
        for n in nodes {
            assert_eq!(
                holds(n, vip),
                n.netns == master.netns,
                "{} alone should hold {vip}{}",
                master.role,
                logs(daemons)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
    took
}

/// The client's ARP entry for the VIP names `owner` (the client made one when it last
/// reached the VIP; gratuitous ARPs move it, they do not create it).
fn expect_neighbour(topo: &Topology, owner: &Host, daemons: &[&Spawned]) {
    let vip = IpAddr::V4(LINK_VIP4);
    let mut seen = None;
    wait_for(
        &format!("client's ARP entry for {vip} -> {}", owner.role),
        Duration::from_secs(3),
        || {
            seen = neighbour_mac(&topo.client, vip).ok().flatten();
            seen.as_deref() == Some(owner.mac.as_str())
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; it says {seen:?}{}", logs(daemons)));
}

/// The client reaches a backend (its name in the answer) through the VIP.
fn expect_served(topo: &Topology, daemons: &[&Spawned]) {
    let target = SocketAddr::new(IpAddr::V4(LINK_VIP4), VIP_PORT);
    let mut last = String::new();
    for _ in 0..15 {
        match topo.get(target, Duration::from_secs(2)) {
            Ok(body) if topo.backends.iter().any(|b| body.contains(&b.role)) => return,
            Ok(body) => last = format!("answered {body:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{target} does not reach a backend: {last}{}", logs(daemons));
}

/// Kills the master's daemon and pulls its cable; returns how long `backup` took to hold
/// the VIP, failing past its Master_Down_Interval (priority LOW, 1 s adverts) + slack.
fn kill_master(
    topo: &Topology,
    master: &Host,
    daemon: &Spawned,
    backup: &Host,
    others: &[&Spawned],
) -> Duration {
    let interval = Duration::from_secs(1);
    let skew = interval * (256 - u32::from(LOW)) / 256;
    let bound = 3 * interval + skew + TAKEOVER_SLACK;
    topo.lab.pin_mac(master).expect("pin the master's MAC");
    let died = Instant::now();
    topo.lab
        .set_plugged(master, false)
        .expect("unplug the master");
    topo.lab.kill(daemon).expect("SIGKILL the master");
    wait_for(&format!("{} holding the VIP", backup.role), bound, || {
        holds(backup, IpAddr::V4(LINK_VIP4))
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(others)));
    died.elapsed()
}

/// The lab: two LB nodes, two backends holding the VIP on `lo`.
fn lab(tag: &str) -> Topology {
    let topo = pair_lab(tag, 2);
    hold_on_backends(&topo, &[IpAddr::V4(LINK_VIP4)]).expect("VIP on the backends");
    topo
}

/// Both nodes' keepalived.conf, as operators write them: (lb1's MASTER one, lb2's).
fn confs(topo: &Topology) -> (PathBuf, PathBuf) {
    let write = |name: &str, text: String| {
        topo.write_config(name, &text)
            .expect("write a keepalived.conf")
    };
    (
        write(
            "keepalived-lb1.conf",
            keepalived_conf("LB1", "MASTER", HIGH, &topo.backends),
        ),
        write(
            "keepalived-lb2.conf",
            keepalived_conf("LB2", "BACKUP", LOW, &topo.backends),
        ),
    )
}

/// keepalived (priority HIGH, state MASTER) on lb1, bascule with the import of the
/// BACKUP node's file on lb2: keepalived is master; it dies and bascule takes over and
/// serves the VIP.
#[test]
fn imported_bascule_takes_over_from_keepalived() {
    require_root();
    let _serial = serial();
    let topo = lab("ka-import-b");
    let _servers = topo.start_backend_servers().expect("backend servers");
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let (conf_a, conf_b) = confs(&topo);

    let k = start_keepalived(&topo.lab, lb1, &conf_a).expect("start keepalived");
    let b = topo
        .start_bascule(&bascule_bin(), lb2, &import(&topo, &conf_b))
        .expect("start bascule");
    let elected = expect_sole_master(&nodes, lb1, &[&k, &b]);
    // keepalived holds the VIP without serving it (no IPVS here): it answers ping.
    topo.lab
        .exec_ok(
            &topo.client.netns,
            &["ping", "-c", "1", "-W", "2", &LINK_VIP4.to_string()],
        )
        .unwrap_or_else(|e| panic!("the VIP answers ping: {e:#}{}", logs(&[&k, &b])));
    expect_neighbour(&topo, lb1, &[&k, &b]);

    let takeover = kill_master(&topo, lb1, &k, lb2, &[&b]);
    expect_neighbour(&topo, lb2, &[&b]);
    expect_served(&topo, &[&b]);
    println!(
        "keepalived master elected after {} ms; bascule took over {} ms after it died",
        elected.as_millis(),
        takeover.as_millis()
    );
    let klog = k.log_text();
    assert!(
        klog.contains("Entering MASTER STATE"),
        "keepalived was master:\n{klog}"
    );
    let (_, in_time) = topo.lab.terminate(&b).expect("stop bascule");
    assert!(in_time, "bascule ignored SIGTERM:\n{}", b.log_text());
}

/// bascule with the import of the MASTER node's file (priority HIGH) on lb1, keepalived
/// (priority LOW, state BACKUP) on lb2: bascule is master and serves the VIP; it dies and
/// keepalived takes over.
#[test]
fn keepalived_takes_over_from_imported_bascule() {
    require_root();
    let _serial = serial();
    let topo = lab("ka-import-k");
    let _servers = topo.start_backend_servers().expect("backend servers");
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let (conf_a, conf_b) = confs(&topo);

    let k = start_keepalived(&topo.lab, lb2, &conf_b).expect("start keepalived");
    let b = topo
        .start_bascule(&bascule_bin(), lb1, &import(&topo, &conf_a))
        .expect("start bascule");
    let elected = expect_sole_master(&nodes, lb1, &[&b, &k]);
    expect_served(&topo, &[&b, &k]);
    expect_neighbour(&topo, lb1, &[&b, &k]);

    let takeover = kill_master(&topo, lb1, &b, lb2, &[&k]);
    expect_neighbour(&topo, lb2, &[&k]);
    println!(
        "bascule master elected after {} ms; keepalived took over {} ms after it died",
        elected.as_millis(),
        takeover.as_millis()
    );
    let klog = k.log_text();
    assert!(
        klog.contains("Entering MASTER STATE"),
        "keepalived took over:\n{klog}"
    );
    let (_, in_time) = topo.lab.terminate(&k).expect("stop keepalived");
    assert!(in_time, "keepalived ignored SIGTERM:\n{klog}");
}
