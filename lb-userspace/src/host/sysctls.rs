//! Forwarding sysctls (/proc) that `tun` and `nat` need on the XDP interfaces.

use anyhow::{Context, Result};

/// Turns on forwarding for `interface` (per family). `bpf_fib_lookup`, which `tun` uses
/// to find the tunnel's next hop, answers "forwarding disabled" without it. For IPv6,
/// `accept_ra` 1 is raised to 2 first so the interface keeps taking router advertisements.
/// Returns the settings it changed.
pub fn enable_forwarding(interface: &str, v4: bool, v6: bool) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if v4 {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{interface}/forwarding"),
            "1",
            None,
            &mut changed,
        )?;
    }
    if v6 {
        set_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{interface}/accept_ra"),
            "2",
            Some("1"),
            &mut changed,
        )?;
        set_sysctl(
            &format!("/proc/sys/net/ipv6/conf/{interface}/forwarding"),
            "1",
            None,
            &mut changed,
        )?;
    }
    Ok(changed)
}

/// Lets the kernel deliver `nat` replies the datapath cannot: when the node has no
/// neighbour entry for the client (a new VRRP master has never talked to the clients of
/// the flows it takes over), `bpf_fib_lookup` fails and the rewritten reply, whose source
/// is now the VIP, is passed to the kernel, which resolves the neighbour and forwards it
/// as IPVS's NAT does. For that the kernel must accept a packet from one of its own
/// addresses (IPv4: `accept_local` on `interface`) and forward IPv6 at all (the global
/// `all.forwarding`; the per-interface setting only serves `bpf_fib_lookup`). Without
/// them such replies are dropped until the client happens to send the node an ARP request
/// or a neighbour solicitation. Returns the settings it changed.
pub fn enable_nat_fallback(interface: &str, v4: bool, v6: bool) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    if v4 {
        set_sysctl(
            &format!("/proc/sys/net/ipv4/conf/{interface}/accept_local"),
            "1",
            None,
            &mut changed,
        )?;
    }
    if v6 {
        set_sysctl(
            "/proc/sys/net/ipv6/conf/all/forwarding",
            "1",
            None,
            &mut changed,
        )?;
    }
    Ok(changed)
}

/// Writes `value` to sysctl file `path` unless it holds it already (or, with `only_if`,
/// unless it holds something else than that); records a change in `changed`.
fn set_sysctl(
    path: &str,
    value: &str,
    only_if: Option<&str>,
    changed: &mut Vec<String>,
) -> Result<()> {
    let now = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    let now = now.trim();
    if now != value && only_if.is_none_or(|o| o == now) {
        std::fs::write(path, value).with_context(|| format!("cannot write {value} to {path}"))?;
        changed.push(format!("{path}={value}"));
    }
    Ok(())
}
