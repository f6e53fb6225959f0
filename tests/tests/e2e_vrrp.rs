//! VRRP between LB nodes in a namespace lab: bascule with bascule, bascule with
//! keepalived (VRRPv3, and VRRPv2 with `pass` authentication), tracked interfaces and
//! notify scripts, and established TCP connections through a VIP surviving the death of
//! the master node. The binary comes from `BASCULE_BIN` (set by `cargo xtask test`).
//!
//! The tests of this file run one at a time: they assert failover times against the
//! protocol's own bounds, which two labs competing for two cores would blur.

use std::{
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use bascule_tests::{
    lab::ip,
    require_root,
    tcp::{echo_server, start_probes},
    topology::VIP_PORT,
    vrrp::{
        bascule_config, gratuitous_arps, hold_on_backends, holds, keepalived_config, logs,
        neighbour_mac, pair_lab, serial, start, start_capture, start_keepalived, stop,
        unsolicited_nas, wait_for, wait_for_master, write, Instance, LINK_VIP4, LINK_VIP4_B,
        LINK_VIP6,
    },
    Host, Spawned, Topology, TopologySpec,
};

/// What the RFC allows beyond Master_Down_Interval for the backup to take over after the
/// master died (scheduling, adding the address): the bound.
const TAKEOVER_SLACK: Duration = Duration::from_millis(200);
/// Bound for things that happen "soon" with no protocol deadline (startup, a preempting
/// master after its own Master_Down_Interval).
const SETTLE: Duration = Duration::from_secs(10);
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits for `master` alone to hold `vip`, failing with the daemons' logs.
fn expect_master(
    nodes: &[&Host],
    master: &Host,
    vip: IpAddr,
    limit: Duration,
    daemons: &[&Spawned],
) -> Duration {
    wait_for_master(nodes, master, vip, limit).unwrap_or_else(|e| panic!("{e:#}{}", logs(daemons)))
}

fn http(topo: &Topology, vip: IpAddr) -> String {
    let target = SocketAddr::new(vip, VIP_PORT);
    let mut last = None;
    for _ in 0..10 {
        match topo.get(target, HTTP_TIMEOUT) {
            Ok(body) => return body,
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{target} does not answer: {:#}", last.unwrap());
}

fn expect_neighbour(topo: &Topology, vip: IpAddr, owner: &Host) {
    let mut seen = None;
    let found = wait_for(
        &format!(
            "client's neighbour entry for {vip} -> {} ({})",
            owner.role, owner.mac
        ),
        Duration::from_secs(2),
        || {
            seen = neighbour_mac(&topo.client, vip).ok().flatten();
            seen.as_deref() == Some(owner.mac.as_str())
        },
    );
    if let Err(e) = found {
        panic!("{e:#}; it says {seen:?}");
    }
}

/// Two bascule nodes, three instances (IPv4, IPv6, and a second IPv4 one mastered by the
/// other node: active-active). Elects by priority; a SIGKILLed master is replaced within
/// Master_Down_Interval + 200 ms with gratuitous ARPs / unsolicited NAs that move the
/// client's neighbour entries; the old master returns and preempts; a stopped master hands
/// over in skew time; without preempt the returning node stays backup.
#[test]
fn bascule_pair_elects_fails_over_and_preempts() {
    require_root();
    let _serial = serial();
    let topo = pair_lab("vrrp-pair", 2);
    let (vip4, vip6, vip_b) = (
        IpAddr::V4(LINK_VIP4),
        IpAddr::V6(LINK_VIP6),
        IpAddr::V4(LINK_VIP4_B),
    );
    hold_on_backends(&topo, &[vip4, vip6, vip_b]).expect("VIPs on backends");
    let _servers = topo.start_backend_servers().expect("backend servers");
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let advert = Duration::from_millis(500);
    let instances = |high: u8, low: u8, preempt: bool| {
        let mut v = vec![
            Instance::new("VI_4", 51, high, vip4, advert),
            Instance::new("VI_6", 51, high, vip6, advert),
            Instance::new("VI_B", 52, low, vip_b, advert),
        ];
        for i in &mut v {
            i.preempt = preempt;
        }
        v
    };
    let services = [(vip4, VIP_PORT), (vip6, VIP_PORT), (vip_b, VIP_PORT)];
    let cfg1 = write(
        &topo,
        "lb1.yaml",
        &bascule_config(&topo.backends, &services, &instances(150, 100, true)),
    );
    let cfg1_no_preempt = write(
        &topo,
        "lb1-nopreempt.yaml",
        &bascule_config(&topo.backends, &services, &instances(150, 100, false)),
    );
    let cfg2 = write(
        &topo,
        "lb2.yaml",
        &bascule_config(&topo.backends, &services, &instances(100, 150, true)),
    );

    // Election by priority, each node master of its own instances.
    let d1 = start(&topo, lb1, &cfg1);
    let d2 = start(&topo, lb2, &cfg2);
    for vip in [vip4, vip6] {
        expect_master(&nodes, lb1, vip, SETTLE, &[&d1, &d2]);
    }
    expect_master(&nodes, lb2, vip_b, SETTLE, &[&d1, &d2]);
    for vip in [vip4, vip6, vip_b] {
        let body = http(&topo, vip);
        println!("{vip} answered by {body}");
    }
    expect_neighbour(&topo, vip4, lb1);
    expect_neighbour(&topo, vip6, lb1);
    expect_neighbour(&topo, vip_b, lb2);

    // SIGKILL the master: lb2 takes over within its Master_Down_Interval + 200 ms.
    let capture = start_capture(&topo.lab, &topo.client).expect("tcpdump on the client");
    let backup_view = Instance::new("lb2", 51, 100, vip4, advert);
    let bound = backup_view.master_down_interval() + TAKEOVER_SLACK;
    topo.lab.kill(&d1).expect("SIGKILL lb1's bascule");
    let took = wait_for("lb2 holding both VIPs", bound * 2, || {
        holds(lb2, vip4) && holds(lb2, vip6)
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(&[&d2])));
    println!(
        "SIGKILL of the master: lb2 owns {vip4} and {vip6} after {} ms (Master_Down_Interval {} ms, bound {} ms)",
        took.as_millis(),
        backup_view.master_down_interval().as_millis(),
        bound.as_millis()
    );
    assert!(
        took <= bound,
        "takeover took {took:?}, more than {bound:?}{}",
        logs(&[&d2])
    );
    expect_neighbour(&topo, vip4, lb2);
    expect_neighbour(&topo, vip6, lb2);
    for vip in [vip4, vip6] {
        http(&topo, vip);
    }
    thread::sleep(Duration::from_millis(1200)); // the rest of the GARP burst
    let (_, _) = topo.lab.terminate(&capture).expect("stop tcpdump");
    let frames = capture.log_text();
    let garps = gratuitous_arps(&frames, &lb2.mac, LINK_VIP4);
    let nas = unsolicited_nas(&frames, &lb2.mac, LINK_VIP6);
    println!("on the wire: {garps} gratuitous ARPs for {vip4}, {nas} unsolicited NAs for {vip6} from lb2");
    assert!(
        garps >= 5 && nas >= 5,
        "expected the burst of 5 of each from {}:\n{frames}",
        lb2.mac
    );

    // lb1 comes back: it removes the address it left behind and preempts.
    let d1 = start(&topo, lb1, &cfg1);
    for vip in [vip4, vip6] {
        expect_master(&nodes, lb1, vip, SETTLE, &[&d1, &d2]);
    }
    assert!(holds(lb2, vip_b), "VI_B stays on lb2");
    assert!(
        d1.log_text()
            .contains("removed a virtual address left on eth0"),
        "lb1 should have cleaned up after its SIGKILL:\n{}",
        d1.log_text()
    );
    expect_neighbour(&topo, vip4, lb1);
    expect_neighbour(&topo, vip6, lb1);

    // A graceful stop sends priority 0: lb2 takes over in about its skew time, well
    // before a Master_Down_Interval.
    let started = Instant::now();
    let (status, _) = topo.lab.terminate(&d1).expect("stop lb1");
    assert!(status.success(), "{}", d1.log_text());
    let handover = wait_for("lb2 holding both VIPs", SETTLE, || {
        holds(lb2, vip4) && holds(lb2, vip6)
    })
    .map(|_| started.elapsed())
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(&[&d1, &d2])));
    println!(
        "graceful stop of the master: lb2 owns the VIPs after {} ms (skew {} ms)",
        handover.as_millis(),
        backup_view.skew_time().as_millis()
    );
    assert!(
        handover < backup_view.master_down_interval(),
        "priority 0 should hand over before Master_Down_Interval: took {handover:?}"
    );
    assert!(
        !holds(lb1, vip4) && !holds(lb1, vip6),
        "a stopped node releases its VIPs"
    );

    // Without preempt, lb1 comes back as backup and stays so.
    let d1 = start(&topo, lb1, &cfg1_no_preempt);
    thread::sleep(backup_view.master_down_interval() * 2);
    for vip in [vip4, vip6, vip_b] {
        assert!(
            holds(lb2, vip) && !holds(lb1, vip),
            "{vip} must stay on lb2 without preempt{}",
            logs(&[&d1, &d2])
        );
    }
    stop(&topo, &d1);
    stop(&topo, &d2);
    for vip in [vip4, vip6, vip_b] {
        assert!(
            !holds(lb1, vip) && !holds(lb2, vip),
            "{vip} left behind after stop"
        );
    }
}

/// A tracked interface going down puts the master in Fault (it hands over with priority
/// 0), and back; notify scripts see every state with keepalived's arguments.
#[test]
fn tracked_interface_faults_and_notify_scripts_run() {
    require_root();
    let _serial = serial();
    let topo = pair_lab("vrrp-track", 1);
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let vip = IpAddr::V4(LINK_VIP4);
    // A link to track (a veth pair inside lb1: this kernel has no dummy interfaces).
    let ns1 = lb1.netns.as_str();
    ip(&[
        "-n",
        ns1,
        "link",
        "add",
        "uplink",
        "type",
        "veth",
        "peer",
        "name",
        "uplink-peer",
    ])
    .expect("uplink");
    for link in ["uplink", "uplink-peer"] {
        ip(&["-n", ns1, "link", "set", link, "up"]).expect("uplink up");
    }
    // One script and one log per node; the script appends its arguments.
    let node_script = |lb: &Host| {
        let path = topo.lab.dir().join(format!("notify-{}.sh", lb.role));
        let log = topo.lab.dir().join(format!("notify-{}.log", lb.role));
        fs::write(
            &path,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        (path, log)
    };
    let (script1, log1) = node_script(lb1);
    let (script2, log2) = node_script(lb2);
    let advert = Duration::from_millis(300);
    let mut i1 = Instance::new("VI_1", 61, 150, vip, advert);
    i1.track_interfaces = vec!["uplink".into()];
    i1.notify = Some(script1.display().to_string());
    let mut i2 = Instance::new("VI_1", 61, 100, vip, advert);
    i2.notify = Some(script2.display().to_string());
    let cfg1 = write(
        &topo,
        "lb1.yaml",
        &bascule_config(&topo.backends, &[], &[i1]),
    );
    let cfg2 = write(
        &topo,
        "lb2.yaml",
        &bascule_config(&topo.backends, &[], &[i2.clone()]),
    );
    // lb1 is master before lb2 starts: each node's notifications are then known.
    let d1 = start(&topo, lb1, &cfg1);
    expect_master(&nodes, lb1, vip, SETTLE, &[&d1]);
    let d2 = start(&topo, lb2, &cfg2);
    let daemons = [&d1, &d2];
    wait_for("lb2 in BACKUP", SETTLE, || {
        fs::read_to_string(&log2).is_ok_and(|l| l.contains("BACKUP"))
    })
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(&daemons)));

    ip(&["-n", &lb1.netns, "link", "set", "uplink", "down"]).expect("uplink down");
    let took = expect_master(&nodes, lb2, vip, SETTLE, &daemons);
    println!("uplink down: lb2 master after {} ms", took.as_millis());
    assert!(
        took < i2.master_down_interval(),
        "a faulting master hands over with priority 0"
    );

    ip(&["-n", &lb1.netns, "link", "set", "uplink", "up"]).expect("uplink up");
    expect_master(&nodes, lb1, vip, SETTLE, &daemons);
    stop(&topo, &d1);
    stop(&topo, &d2);

    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    let mut lines1 = String::new();
    wait_for("lb1's notify log complete", Duration::from_secs(5), || {
        lines1 = read(&log1);
        lines1.lines().count() >= 5
    })
    .unwrap_or_else(|e| panic!("{e:#}: {lines1:?}{}", logs(&daemons)));
    assert_eq!(
        lines1.lines().collect::<Vec<_>>(),
        [
            "INSTANCE VI_1 BACKUP 150",
            "INSTANCE VI_1 MASTER 150",
            "INSTANCE VI_1 FAULT 150",
            "INSTANCE VI_1 BACKUP 150",
            "INSTANCE VI_1 MASTER 150",
        ],
        "lb1's notifications"
    );
    assert_eq!(
        read(&log2).lines().collect::<Vec<_>>(),
        [
            "INSTANCE VI_1 BACKUP 100",
            "INSTANCE VI_1 MASTER 100",
            "INSTANCE VI_1 BACKUP 100",
        ],
        "lb2's notifications"
    );
}

/// bascule and keepalived on one VRID: the higher priority wins whichever daemon has it,
/// and each takes over from the other.
fn interop_with_keepalived(tag: &str, version: u8, password: Option<&str>) {
    require_root();
    let _serial = serial();
    let topo = pair_lab(tag, 1);
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let vip = IpAddr::V4(LINK_VIP4);
    let instance = |priority| {
        let mut i = Instance::new("VI_1", 71, priority, vip, Duration::from_secs(1));
        i.version = version;
        i.password = password.map(str::to_string);
        i
    };
    let bascule_cfg = write(
        &topo,
        "bascule.yaml",
        &bascule_config(&topo.backends, &[], &[instance(150)]),
    );
    let keepalived_low = write(
        &topo,
        "keepalived-100.conf",
        &keepalived_config("lb2", &[instance(100)]),
    );
    let keepalived_high = write(
        &topo,
        "keepalived-200.conf",
        &keepalived_config("lb2", &[instance(200)]),
    );
    let stop_keepalived = |k: &Spawned| {
        let (_, in_time) = topo.lab.terminate(k).expect("stop keepalived");
        assert!(in_time, "keepalived ignored SIGTERM:\n{}", k.log_text());
    };

    // bascule 150 vs keepalived 100: bascule is master.
    let k = start_keepalived(&topo.lab, lb2, &keepalived_low).expect("start keepalived");
    let b = start(&topo, lb1, &bascule_cfg);
    expect_master(&nodes, lb1, vip, SETTLE, &[&b, &k]);
    // bascule stops (priority 0): keepalived takes over; bascule returns and preempts.
    stop(&topo, &b);
    expect_master(&nodes, lb2, vip, SETTLE, &[&b, &k]);
    let b = start(&topo, lb1, &bascule_cfg);
    expect_master(&nodes, lb1, vip, SETTLE, &[&b, &k]);
    stop_keepalived(&k);

    // keepalived 200 vs bascule 150: keepalived preempts; it stops: bascule takes over.
    let k = start_keepalived(&topo.lab, lb2, &keepalived_high).expect("start keepalived");
    expect_master(&nodes, lb2, vip, SETTLE, &[&b, &k]);
    stop_keepalived(&k);
    expect_master(&nodes, lb1, vip, SETTLE, &[&b]);
    stop(&topo, &b);

    let log = b.log_text();
    assert!(
        !log.contains("invalid advert"),
        "bascule dropped keepalived's adverts:\n{log}"
    );
    assert!(
        log.contains("VRRP MASTER -> BACKUP"),
        "bascule yielded to keepalived:\n{log}"
    );
    let klog = k.log_text();
    assert!(
        klog.contains("received lower priority (150) advert")
            || klog.contains("Entering MASTER STATE"),
        "keepalived heard bascule:\n{klog}"
    );
    for bad in ["invalid", "bogus", "checksum", "mismatch"] {
        assert!(
            !klog.to_lowercase().contains(bad),
            "keepalived complained ({bad}):\n{klog}"
        );
    }
}

#[test]
fn interop_with_keepalived_vrrp_v3() {
    interop_with_keepalived("vrrp-ka3", 3, None);
}

#[test]
fn interop_with_keepalived_vrrp_v2_pass() {
    interop_with_keepalived("vrrp-ka2", 2, Some("s3cr3t"));
}

/// Established TCP connections through a `dr` VIP while the master LB node dies (SIGKILL
/// and its cable pulled: it neither forwards nor answers any more). Both nodes run the
/// datapath with the same Maglev table, so the new master sends every flow to the backend
/// that already has it: all connections survive; the gap is reported.
#[test]
fn established_connections_survive_the_death_of_the_master() {
    require_root();
    let _serial = serial();
    const CONNECTIONS: usize = 20;
    const PORT: u16 = 7000;
    let topo = pair_lab("vrrp-tcp", 2);
    let vip = IpAddr::V4(LINK_VIP4);
    hold_on_backends(&topo, &[vip]).expect("VIP on backends");
    let any = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), PORT);
    let _echo: Vec<_> = topo
        .backends
        .iter()
        .map(|b| echo_server(&b.netns, any).expect("echo server"))
        .collect();
    let (lb1, lb2) = (&topo.lbs[0], &topo.lbs[1]);
    let nodes = [lb1, lb2];
    let advert = Duration::from_millis(200);
    let config = |priority| {
        bascule_config(
            &topo.backends,
            &[(vip, PORT)],
            &[Instance::new("VI_1", 81, priority, vip, advert)],
        )
    };
    let d1 = start(&topo, lb1, &write(&topo, "lb1.yaml", &config(150)));
    let d2 = start(&topo, lb2, &write(&topo, "lb2.yaml", &config(100)));
    expect_master(&nodes, lb1, vip, SETTLE, &[&d1, &d2]);

    let probes = start_probes(
        &topo.client.netns,
        SocketAddr::new(vip, PORT),
        CONNECTIONS,
        Duration::from_millis(50),
        Duration::from_secs(2),
        Duration::from_secs(15),
    )
    .unwrap_or_else(|e| panic!("{e:#}{}", logs(&[&d1, &d2])));
    thread::sleep(Duration::from_secs(1));

    // The switch keeps lb1's MAC on lb1's port, as a switch does until its entry ages:
    // frames still addressed to lb1 are lost, not flooded to lb2 as a bridge does for an
    // unknown destination (which would hide the failover from this test).
    topo.lab.pin_mac(lb1).expect("pin lb1's MAC");
    let died = Instant::now();
    topo.lab.set_plugged(lb1, false).expect("unplug lb1");
    topo.lab.kill(&d1).expect("SIGKILL lb1's bascule");
    wait_for("lb2 holding the VIP", SETTLE, || holds(lb2, vip))
        .unwrap_or_else(|e| panic!("{e:#}{}", logs(&[&d2])));
    let takeover = died.elapsed();
    // Long enough for TCP's retransmission back-off to find the new path.
    thread::sleep(Duration::from_secs(4));
    let results = probes.stop();

    let survived = results.iter().filter(|r| r.failure.is_none()).count();
    let mut gaps: Vec<Duration> = results.iter().map(|r| r.max_gap).collect();
    gaps.sort();
    println!(
        "master node died: lb2 owned the VIP after {} ms; {survived}/{CONNECTIONS} connections survived; \
         longest silence per connection: min {} ms, median {} ms, max {} ms",
        takeover.as_millis(),
        gaps[0].as_millis(),
        gaps[gaps.len() / 2].as_millis(),
        gaps[gaps.len() - 1].as_millis()
    );
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.local)))
        .collect();
    assert!(
        failed.is_empty(),
        "connections lost:\n{}{}",
        failed.join("\n"),
        logs(&[&d2])
    );
    assert!(
        results.iter().all(|r| r.round_trips > 20),
        "every connection kept exchanging after the failover: {results:?}"
    );
    stop(&topo, &d2);
}

/// Adverts forged by the client, each wrong in one way and with a priority that would win:
/// the master ignores them, logs each reason, and keeps its VIPs; a well-formed one with
/// that priority makes it yield.
#[test]
fn forged_adverts_are_dropped_by_reason() {
    require_root();
    let _serial = serial();
    let topo = Topology::new(
        "vrrp-forged",
        TopologySpec {
            lbs: 1,
            backends: 1,
        },
    )
    .expect("build the lab");
    let lb1 = &topo.lbs[0];
    let (vip4, vip6) = (IpAddr::V4(LINK_VIP4), IpAddr::V6(LINK_VIP6));
    let advert = Duration::from_millis(500);
    let config = bascule_config(
        &topo.backends,
        &[],
        &[
            Instance::new("VI_4", 91, 100, vip4, advert),
            Instance::new("VI_6", 91, 100, vip6, advert),
        ],
    );
    let d1 = start(&topo, lb1, &write(&topo, "lb1.yaml", &config));
    expect_master(&[lb1], lb1, vip4, SETTLE, &[&d1]);
    expect_master(&[lb1], lb1, vip6, SETTLE, &[&d1]);

    // Frames built whole by scapy (a zero source MAC would be dropped by the bridge).
    let send = |what: &str| {
        let script = format!(
            "from scapy.all import *\nfrom scapy.layers.vrrp import VRRP, VRRPv3\n\
             me = get_if_hwaddr('eth0')\n\
             m4 = Ether(src=me, dst='01:00:5e:00:00:12')\nm6 = Ether(src=me, dst='33:33:00:00:00:12')\n\
             ip4 = IP(src='{c4}', dst='224.0.0.18', ttl=255)\n\
             ip6 = IPv6(src='{c6}', dst='ff02::12', hlim=255)\n\
             v4 = lambda **k: VRRPv3(vrid=91, priority=200, adv=50, ipcount=1, addrlist=['{vip4}'], **k)\n\
             v6 = lambda **k: VRRPv3(vrid=91, priority=200, adv=50, ipcount=1, addrlist=['{vip6}'], **k)\n\
             sendp({what}, iface='eth0', verbose=False)\n",
            c4 = topo.client.ipv4().unwrap(),
            c6 = topo.client.ipv6().unwrap(),
        );
        let out = topo
            .lab
            .exec(&topo.client.netns, &["/usr/bin/python3", "-c", &script])
            .expect("run scapy");
        assert!(
            out.status.success(),
            "scapy ({what}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let forged = [
        ("ttl", "m4/IP(src=ip4.src, dst=ip4.dst, ttl=64)/v4()"),
        ("ttl", "m6/IPv6(src=ip6.src, dst=ip6.dst, hlim=64)/v6()"),
        ("checksum", "m4/ip4/v4(chksum=0x1234)"),
        ("checksum", "m6/ip6/v6(chksum=0x1234)"),
        (
            "vrid",
            "m4/ip4/VRRPv3(vrid=92, priority=200, adv=50, ipcount=1, addrlist=['10.111.0.100'])",
        ),
        (
            "version",
            "m4/ip4/VRRP(vrid=91, priority=200, adv=1, ipcount=1, addrlist=['10.111.0.100'])",
        ),
        (
            "addresses",
            "m4/ip4/VRRPv3(vrid=91, priority=200, adv=50, ipcount=1, addrlist=['10.111.0.99'])",
        ),
    ];
    for (_, packet) in forged {
        send(packet);
    }
    let log_has = |reason: &str, count: usize| {
        d1.log_text()
            .lines()
            .filter(|l| {
                l.contains("invalid advert dropped") && l.contains(&format!("reason=\"{reason}\""))
            })
            .count()
            >= count
    };
    for reason in ["ttl", "checksum", "vrid", "version", "addresses"] {
        let n = forged.iter().filter(|(r, _)| *r == reason).count();
        wait_for(
            &format!("{n} advert(s) dropped for {reason}"),
            Duration::from_secs(3),
            || log_has(reason, n),
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d1.log_text()));
    }
    // Past a whole Master_Down_Interval of the forger's: still master of both.
    thread::sleep(Duration::from_millis(1700));
    assert!(
        holds(lb1, vip4) && holds(lb1, vip6),
        "forged adverts moved a VIP:\n{}",
        d1.log_text()
    );
    assert!(
        !d1.log_text().contains("MASTER -> BACKUP"),
        "{}",
        d1.log_text()
    );

    // The same, well formed: a higher priority, so lb1 yields (and takes over again once
    // the forger falls silent).
    send("[m4/ip4/v4(), m6/ip6/v6()]");
    wait_for("lb1 yielding both VIPs", Duration::from_secs(2), || {
        !holds(lb1, vip4) && !holds(lb1, vip6)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", d1.log_text()));
    expect_master(&[lb1], lb1, vip4, SETTLE, &[&d1]);
    stop(&topo, &d1);
}

/// SIGHUP applies VRRP changes: an unchanged instance keeps running untouched, a new one
/// starts, a changed one restarts, a removed one stops and releases its address.
#[test]
fn reload_starts_restarts_and_stops_instances() {
    require_root();
    let _serial = serial();
    let topo = Topology::new(
        "vrrp-reload",
        TopologySpec {
            lbs: 1,
            backends: 1,
        },
    )
    .expect("build the lab");
    let lb1 = &topo.lbs[0];
    let (vip_a, vip_b) = (IpAddr::V4(LINK_VIP4), IpAddr::V4(LINK_VIP4_B));
    let advert = Duration::from_millis(200);
    let a = Instance::new("VI_A", 101, 100, vip_a, advert);
    let b = Instance::new("VI_B", 102, 100, vip_b, advert);
    let b_changed = Instance::new("VI_B", 102, 120, vip_b, advert);
    let config = |instances: &[Instance]| bascule_config(&topo.backends, &[], instances);
    let path = write(&topo, "lb1.yaml", &config(std::slice::from_ref(&a)));
    let d1 = start(&topo, lb1, &path);
    expect_master(&[lb1], lb1, vip_a, SETTLE, &[&d1]);
    let reload = |instances: &[Instance]| {
        write(&topo, "lb1.yaml", &config(instances));
        // SAFETY: kill(2) on our own child, alive (checked by the waits around).
        assert_eq!(
            unsafe { libc::kill(d1.pid as libc::pid_t, libc::SIGHUP) },
            0
        );
    };
    let masters = |name: &str| {
        d1.log_text()
            .lines()
            .filter(|l| l.contains("-> MASTER") && l.contains(&format!("instance={name} ")))
            .count()
    };

    reload(&[a.clone(), b.clone()]);
    expect_master(&[lb1], lb1, vip_b, SETTLE, &[&d1]);
    assert!(holds(lb1, vip_a), "VI_A kept its address");
    assert_eq!(
        masters("VI_A"),
        1,
        "VI_A unchanged, not restarted:\n{}",
        d1.log_text()
    );

    reload(&[b_changed]);
    wait_for("VI_A removed", SETTLE, || !holds(lb1, vip_a))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d1.log_text()));
    wait_for("VI_B restarted", SETTLE, || masters("VI_B") == 2)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", d1.log_text()));
    expect_master(&[lb1], lb1, vip_b, SETTLE, &[&d1]);
    assert!(d1.log_text().contains("priority=120"), "{}", d1.log_text());
    stop(&topo, &d1);
    assert!(!holds(lb1, vip_b));
}
