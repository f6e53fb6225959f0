//! Network-namespace labs for bascule's end-to-end tests and for `cargo xtask demo`.
//!
//! A [`Lab`] is a set of network namespaces joined by one bridge: every host gets an
//! `eth0` whose peer sits on bridge `br0` inside the lab's own "switch" namespace, so
//! nothing ever touches the root namespace's links, addresses or routes. Dropping the
//! lab kills what it spawned and deletes its namespaces (which deletes their veths).
//!
//! [`Topology`] builds the standard lab used everywhere (client, load-balancer nodes,
//! backends holding the VIPs on `lo`), and writes bascule configs for it.
//! [`http_server`] and [`http_get`] run a tiny HTTP/1.0 server and client *in-process*,
//! on threads that entered a namespace with `setns(2)`.
//!
//! Everything here is bounded: each wait has a deadline, each loop a count.
//! Requires root and iproute2 (`ip`).

pub mod bgp;
pub mod flood;
pub mod http;
pub mod interrupt;
pub mod lab;
pub mod metrics;
pub mod product;
pub mod scale_out;
pub mod sync;
pub mod tcp;
pub mod topology;
pub mod traffic;
pub mod vrrp;
pub mod xdp;

pub use http::{http_get, http_get_from, http_request, http_server, HttpServer};
pub use lab::{cleanup_stale, in_netns, Host, Lab, Spawned};
pub use topology::{Forwarding, Topology, TopologySpec};

/// The `bascule` binary under test: env `BASCULE_BIN`, which `cargo xtask test` sets.
pub fn bascule_bin() -> std::path::PathBuf {
    match std::env::var_os("BASCULE_BIN") {
        Some(path) => std::path::PathBuf::from(path),
        None => panic!("BASCULE_BIN is not set: run `cargo xtask test`"),
    }
}

/// End-to-end tests create network namespaces and load XDP: they need root.
pub fn require_root() {
    // SAFETY: geteuid(2) cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end tests create network namespaces and load XDP: run them as root (`cargo xtask test`)"
    );
}
