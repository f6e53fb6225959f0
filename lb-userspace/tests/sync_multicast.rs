//! `sync.group`: two sync endpoints in namespaces of their own, joined by a veth pair,
//! configured with the same multicast group and nothing else to find each other. Node A
//! starts empty and asks for the table (bulk sync, sent to the group); node B, a member
//! of the group, answers with its one entry (unicast to A), which A receives and hands on.
//! Neither hears itself. Over IPv6 the nodes have link-local addresses only, and B has
//! another link: its answer goes back through the link A's request came in on.

mod common;

use std::{
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::Path,
    sync::{Arc, Barrier, Mutex},
    thread,
    time::Duration,
};

use bascule::{
    config::{StateSync, SyncMulticast},
    sync::{
        self,
        wire::{Entry, Kind},
        Shared, TableSource,
    },
};
use common::Netns;

const PORT: u16 = 9470;

/// What a node's receiver handed on: the sender and its entries.
type Delivered = (IpAddr, Vec<Entry>);

fn flow() -> Entry {
    Entry {
        kind: Kind::New,
        proto: 6,
        active: true,
        client: "10.110.0.10".parse().unwrap(),
        client_port: 40_001,
        vip: "10.112.0.100".parse().unwrap(),
        port: 80,
        service_port: 80,
        backend: "10.111.0.12".parse().unwrap(),
        backend_port: 80,
    }
}

/// Namespaces A and B, `a0` <-> `b0`, with `addrs` (A's, B's) on them. With link-local
/// addresses B has a second link, `b1`, with its address too: an answer then finds A only
/// through the scope (the link) A's request came from.
fn pair(tag: &str, addrs: [&str; 2]) -> [Netns; 2] {
    let (a, b) = (
        Netns::new(&format!("{tag}a")),
        Netns::new(&format!("{tag}b")),
    );
    if addrs[1].starts_with("fe80:") {
        // First, so that its route to fe80::/64 comes first.
        b.ip(&["link", "add", "b1", "type", "veth", "peer", "name", "b2"]);
        for dev in ["b1", "b2"] {
            b.ip(&["link", "set", dev, "addrgenmode", "none"]);
            b.ip(&["link", "set", dev, "up"]);
        }
        b.ip(&["addr", "add", addrs[1], "dev", "b1", "nodad"]);
    }
    common::ip(&[
        "link", "add", "a0", "netns", &a.name, "type", "veth", "peer", "name", "b0", "netns",
        &b.name,
    ]);
    for (ns, dev, addr) in [(&a, "a0", addrs[0]), (&b, "b0", addrs[1])] {
        ns.ip(&["link", "set", dev, "addrgenmode", "none"]);
        ns.ip(&["link", "set", dev, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        let mut args = vec!["addr", "add", addr, "dev", dev];
        if addr.contains(':') {
            args.push("nodad");
        }
        ns.ip(&args);
    }
    [a, b]
}

fn config(group: IpAddr, interface: &str, key: &Path) -> StateSync {
    StateSync {
        peers: Vec::new(),
        group: Some(SyncMulticast {
            address: group,
            interface: interface.into(),
        }),
        port: PORT,
        key_file: key.into(),
    }
}

fn table_of(entries: Vec<Entry>) -> TableSource {
    Box::new(move || {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = tx.send(entries.clone());
        rx
    })
}

fn exchange_through(group: &str, addrs: [&str; 2], tag: &str) {
    let group: IpAddr = group.parse().unwrap();
    let [a, b] = pair(tag, addrs);
    let dir = tempdir(tag);
    let key = dir.join("sync.key");
    std::fs::write(&key, b"a key both endpoints share, 32 b\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (both_up, a_done) = (Barrier::new(2), Barrier::new(2));

    let (received, delivered, a_heard, b_heard) = thread::scope(|scope| {
        let b_node = scope.spawn(|| {
            b.enter();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let shared = Arc::new(Shared::default());
            let running = rt
                .block_on(async {
                    sync::start(
                        &config(group, "b0", &key),
                        shared.clone(),
                        |_, _| {},
                        table_of(vec![flow()]),
                    )
                })
                .expect("B starts sync");
            both_up.wait();
            a_done.wait();
            rt.block_on(async { running.stop() });
            shared.stats.peers(&[])
        });
        let a_node = scope.spawn(|| {
            a.enter();
            let rt = tokio::runtime::Runtime::new().unwrap();
            let shared = Arc::new(Shared::default());
            let delivered: Arc<Mutex<Vec<Delivered>>> = Arc::default();
            let out = delivered.clone();
            let running = rt
                .block_on(async {
                    sync::start(
                        &config(group, "a0", &key),
                        shared.clone(),
                        move |from, entries| out.lock().unwrap().push((from, entries)),
                        table_of(Vec::new()),
                    )
                })
                .expect("A starts sync");
            both_up.wait();
            let received = rt.block_on(running.bulk(Duration::from_secs(5)));
            rt.block_on(async { running.stop() });
            a_done.wait();
            let delivered = delivered.lock().unwrap().clone();
            (received, delivered, shared.stats.peers(&[]))
        });
        let (received, delivered, a_heard) = a_node.join().expect("node A");
        (received, delivered, a_heard, b_node.join().expect("node B"))
    });
    let [a_addr, b_addr]: [IpAddr; 2] =
        addrs.map(|s| s.split('/').next().unwrap().parse().unwrap());

    assert_eq!(received, Some(1), "A's bulk sync through {group}");
    assert_eq!(delivered, vec![(b_addr, vec![flow()])]);
    let heard = |peers: &[(IpAddr, sync::PeerSeen)]| -> Vec<IpAddr> {
        peers.iter().map(|(a, _)| *a).collect()
    };
    assert_eq!(heard(&a_heard), [b_addr], "A heard B only, not itself");
    assert_eq!(
        heard(&b_heard),
        [a_addr],
        "B heard A's request on the group, not itself"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bascule-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn two_nodes_exchange_entries_through_an_ipv4_group() {
    exchange_through("239.0.0.81", ["10.99.0.1/24", "10.99.0.2/24"], "mc4");
}

#[test]
fn two_nodes_exchange_entries_through_an_ipv6_group() {
    exchange_through("ff02::81", ["fe80::1/64", "fe80::2/64"], "mc6");
}
