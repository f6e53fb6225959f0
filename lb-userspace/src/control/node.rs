//! What a configuration asks of the node, in the host's terms: the forwarding sysctls
//! `tun` and `nat` need, where tunnels start, which neighbours to resolve or warm.

use std::net::IpAddr;

use anyhow::Result;

use crate::{
    config::{Config, Forwarding, Service},
    host::{addresses::is_link_local, interfaces, neighbours, sysctls},
    plan::{MacTable, TunnelSources},
};

/// `tun` and `nat` find their next hop with `bpf_fib_lookup`, which needs forwarding on
/// the XDP interfaces for the families they route (see `sysctls::enable_forwarding`).
pub fn prepare_interfaces(config: &Config) -> Result<()> {
    let uses = |modes: &[Forwarding], v6: bool| {
        config.services.iter().any(|s| {
            s.backends
                .iter()
                .any(|b| modes.contains(&b.effective_forwarding(s)) && b.address.is_ipv6() == v6)
        })
    };
    let routed = [Forwarding::Tun, Forwarding::Nat];
    let (v4, v6) = (uses(&routed, false), uses(&routed, true));
    let (nat4, nat6) = (
        uses(&[Forwarding::Nat], false),
        uses(&[Forwarding::Nat], true),
    );
    for iface in &config.node.interfaces {
        for change in sysctls::enable_forwarding(&iface.name, v4, v6)? {
            tracing::info!(interface = %iface.name, "tun/nat next hops need forwarding: set {change}");
        }
        for change in sysctls::enable_nat_fallback(&iface.name, nat4, nat6)? {
            tracing::info!(interface = %iface.name, "nat replies to unresolved neighbours go through the kernel: set {change}");
        }
    }
    Ok(())
}

/// Where tunnels start: the configured `tunnel_source` for its family, else the first
/// global address of that family on the first XDP interface.
pub fn tunnel_sources(config: &Config) -> Result<TunnelSources> {
    let mut t = TunnelSources::default();
    if let Some(iface) = config.node.interfaces.first() {
        for a in interfaces::interface_addresses(&iface.name)? {
            match a {
                IpAddr::V4(v4) if t.v4.is_none() => t.v4 = Some(v4),
                IpAddr::V6(v6) if t.v6.is_none() && !is_link_local(&a) => t.v6 = Some(v6),
                _ => {}
            }
        }
    }
    match config.node.tunnel_source {
        Some(IpAddr::V4(v4)) => t.v4 = Some(v4),
        Some(IpAddr::V6(v6)) => t.v6 = Some(v6),
        None => {}
    }
    Ok(t)
}

/// Addresses whose MACs are needed: `dr` backends and sorry servers (a sorry server is
/// reached like its service's backends). (`tun` and `nat` next hops are looked up per
/// packet by the kernel's FIB; `local` is this node.)
pub fn dr_backend_addresses(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
                .map(|b| b.address)
                .chain(s.sorry_server.map(|a| a.ip()))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `dr` backends and sorry servers of `dr` services without a MAC address yet.
pub fn missing_dr_macs(config: &Config, macs: &MacTable) -> Vec<IpAddr> {
    config
        .services
        .iter()
        .flat_map(|s| {
            let sorry = s
                .sorry_server
                .filter(|_| s.forwarding == Forwarding::Dr)
                .map(|a| a.ip());
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
                .map(|b| b.address)
                .chain(sorry)
        })
        .filter(|a| !macs.contains_key(a))
        .collect()
}

/// `tun` and `nat` backends: their neighbour entries are warmed (not waited for), so that
/// the first packets find the next hop resolved.
pub fn warm_routed_backends<'s>(services: impl IntoIterator<Item = &'s Service>) {
    let mut addrs: Vec<IpAddr> = services
        .into_iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| {
                    matches!(b.effective_forwarding(s), Forwarding::Tun | Forwarding::Nat)
                })
                .map(|b| b.address)
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    addrs.into_iter().for_each(neighbours::provoke_resolution);
}
