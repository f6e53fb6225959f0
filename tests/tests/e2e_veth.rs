//! `xdp_mode: auto` (the default) on a veth forwards: the LB node's `eth0` is a veth whose
//! bridge side runs an XDP program (so native XDP_TX into it would work) and the client
//! sends with checksum offload on, as a container host does. Natively attached there,
//! bascule would forward the client's frames with their TCP checksums unfilled, and the
//! backends would drop every one. `dr` and `tun` connections must succeed, and the log
//! must say which mode was chosen and why. The binary comes from `BASCULE_BIN`.

use std::time::Duration;

use bascule_tests::{
    bascule_bin, require_root,
    topology::{vip4, vip6},
    xdp, Forwarding, Lab, Spawned, Topology,
};

/// Connections per VIP and mode: each must be answered.
const REQUESTS: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(2);
const READY_ATTEMPTS: usize = 50;
const READY_INTERVAL: Duration = Duration::from_millis(200);

#[test]
fn auto_mode_on_a_veth_forwards_dr_and_tun_and_says_which_mode() {
    require_root();
    let bin = bascule_bin();
    let topo = Topology::standard("veth-auto").expect("build the lab");
    let lb = &topo.lbs[0];
    xdp::attach_pass_native(topo.lab.switch(), &Lab::switch_port(lb))
        .expect("an XDP program on the bridge side of the LB's veth");
    let offload = topo
        .lab
        .exec_ok(&topo.client.netns, &["ethtool", "-k", "eth0"])
        .unwrap_or_default();
    println!(
        "client eth0 checksum offload: {}",
        offload
            .lines()
            .find(|l| l.starts_with("tx-checksumming"))
            .unwrap_or("(ethtool not available)")
    );
    let servers = topo.start_backend_servers().expect("backend servers");

    for forwarding in [Forwarding::Dr, Forwarding::Tun] {
        let mode = forwarding.as_str();
        let config = topo.lb_config(forwarding);
        assert!(
            !config.contains("xdp_mode"),
            "the lab runs the default mode:\n{config}"
        );
        let decaps: Vec<Spawned> = match forwarding {
            Forwarding::Dr => Vec::new(),
            Forwarding::Tun => topo
                .backends
                .iter()
                .map(|b| topo.start_decap(&bin, b).expect("start bascule decap"))
                .collect(),
        };
        let path = topo.write_lb_config(forwarding).expect("config");
        let daemon = topo.start_bascule(&bin, lb, &path).expect("start bascule");
        topo.wait_ready(lb, &daemon, READY_ATTEMPTS, READY_INTERVAL)
            .unwrap_or_else(|e| panic!("{mode}: {e:#}"));
        let mut daemons = vec![&daemon];
        daemons.extend(decaps.iter());
        for vip in [vip4(), vip6()] {
            topo.wait_for_vip(vip, &daemons, READY_ATTEMPTS, READY_INTERVAL)
                .unwrap_or_else(|e| panic!("{mode} {vip}: no answer under xdp_mode auto: {e:#}"));
            let mut answered = 0;
            let mut failures = Vec::new();
            for _ in 0..REQUESTS {
                match topo.get(vip, TIMEOUT) {
                    Ok(_) => answered += 1,
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
            println!("{mode} {vip}: {answered} of {REQUESTS} connections answered");
            assert!(
                failures.is_empty(),
                "{mode} {vip}: {} of {REQUESTS} connections failed ({:?}); log:\n{}",
                failures.len(),
                failures.first(),
                daemon.log_text()
            );
        }
        let log = daemon.log_text();
        assert!(
            log.lines().any(|l| l.contains("XDP program attached")
                && l.contains("generic")
                && l.contains("veth")),
            "{mode}: the log names the mode chosen on the veth and why:\n{log}"
        );
        let (status, in_time) = topo.lab.terminate(&daemon).expect("stop bascule");
        assert!(
            in_time && status.success(),
            "{status}: {}",
            daemon.log_text()
        );
        for d in &decaps {
            let _ = topo.lab.terminate(d);
        }
    }
    drop(servers);
}
