//! The lab builder itself: wiring, isolation and teardown, without bascule.

use std::{net::SocketAddr, panic, path::Path, process::Command, sync::Mutex, time::Duration};

use bascule_tests::{
    cleanup_stale, http_get,
    lab::list_netns,
    topology::{vip4, vip6, VIP_PORT},
    Lab, Topology,
};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Long enough for several SYN retransmissions: a VIP that stays silent this long is dead.
const SILENCE: Duration = Duration::from_secs(1);

fn require_root() {
    // SAFETY: geteuid(2) cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "lab tests create network namespaces: run them as root (`cargo xtask test`)"
    );
}

#[test]
fn backends_answer_directly_and_vips_are_silent_without_a_balancer() {
    require_root();
    let topo = Topology::standard("direct").expect("build the lab");
    let servers = topo.start_backend_servers().expect("start servers");

    for backend in &topo.backends {
        for addr in [backend.ipv4(), backend.ipv6()].into_iter().flatten() {
            let body = http_get(&topo.client.netns, SocketAddr::new(addr, VIP_PORT), TIMEOUT)
                .unwrap_or_else(|err| panic!("client -> {} ({addr}): {err:#}", backend.role));
            assert_eq!(body, backend.role, "answer of {addr}");
        }
    }
    // The backends hold the VIPs on lo but do not answer ARP/ND for them, and lb1 does not
    // forward: only a balancer can make the VIPs answer.
    for vip in [vip4(), vip6()] {
        let result = topo.get(vip, SILENCE);
        assert!(
            result.is_err(),
            "{vip} answered without a balancer: {result:?}"
        );
    }
    let served: Vec<usize> = servers.into_iter().map(|s| s.stop()).collect();
    assert_eq!(
        served,
        vec![2, 2],
        "each backend served one IPv4 and one IPv6 request"
    );
}

#[test]
fn dropping_a_lab_deletes_its_namespaces_and_processes() {
    require_root();
    let topo = Topology::standard("drop").expect("build the lab");
    let names = topo.lab.namespaces();
    assert_eq!(
        names.len(),
        5,
        "client, lb1, b1, b2 and the switch: {names:?}"
    );
    let sleeper = topo
        .lab
        .spawn(&topo.backends[0].netns, "sleeper", &["sleep", "60"])
        .expect("spawn");
    let existing = list_netns().expect("ip netns list");
    for name in &names {
        assert!(existing.contains(name), "{name} missing from {existing:?}");
    }

    drop(topo);

    let left = list_netns().expect("ip netns list");
    let leaked: Vec<&String> = names.iter().filter(|n| left.contains(n)).collect();
    assert!(leaked.is_empty(), "namespaces left after drop: {leaked:?}");
    assert!(
        !Path::new(&format!("/proc/{}", sleeper.pid)).exists(),
        "spawned process {} still alive",
        sleeper.pid
    );
}

#[test]
fn a_failing_test_still_tears_its_lab_down() {
    require_root();
    let names = Mutex::new(Vec::new());
    let outcome = panic::catch_unwind(|| {
        let mut lab = Lab::new("panic").expect("lab");
        lab.add_host("h1", &["10.111.0.50".parse().unwrap()])
            .expect("host");
        *names.lock().unwrap() = lab.namespaces();
        panic!("a test failing while its lab is up (expected by this test)");
    });
    assert!(outcome.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    let left = list_netns().expect("ip netns list");
    assert!(
        names.iter().all(|n| !left.contains(n)),
        "namespaces left after a panic: {names:?} in {left:?}"
    );
}

#[test]
fn cleanup_stale_removes_labs_of_dead_runs_only() {
    require_root();
    let live = Lab::new("live").expect("lab");
    // A pid that just ended stands for an interrupted earlier run.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead_pid = child.id();
    child.wait().expect("wait");
    let stale = format!("bsc{dead_pid}x0-sw");
    let status = Command::new("ip")
        .args(["netns", "add", &stale])
        .status()
        .unwrap();
    assert!(status.success(), "ip netns add {stale}");

    let removed = cleanup_stale().expect("cleanup_stale");

    let left = list_netns().expect("ip netns list");
    assert!(
        !left.contains(&stale),
        "{stale} survived cleanup_stale ({removed:?})"
    );
    for name in live.namespaces() {
        assert!(
            left.contains(&name),
            "cleanup_stale removed the live {name}"
        );
    }
}
