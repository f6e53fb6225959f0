//! Neighbour (ARP/NDP) entries: read through iproute2's JSON output (`ip -j neigh`), which
//! every target host has, and resolution provoked for the addresses still missing.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

fn ip_json(args: &[&str]) -> Result<Value> {
    let out = Command::new("ip")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2): install it, or run `cargo xtask setup`")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("ip {}: unexpected output", args.join(" ")))
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Every usable neighbour entry (both families): address -> MAC. One dump, however
/// many backends are looked up (a per-address query would spawn `ip` per backend).
pub fn neighbour_macs() -> Result<HashMap<IpAddr, [u8; 6]>> {
    let v = ip_json(&["neigh", "show"])?;
    let mut out = HashMap::new();
    for entry in v.as_array().into_iter().flatten() {
        let failed = entry["state"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x == "FAILED" || x == "INCOMPLETE"));
        let addr = entry["dst"].as_str().and_then(|a| a.parse::<IpAddr>().ok());
        if let (Some(addr), Some(mac), false) =
            (addr, entry["lladdr"].as_str().and_then(parse_mac), failed)
        {
            out.entry(addr).or_insert(mac);
        }
    }
    Ok(out)
}

/// Makes the kernel resolve `addr`'s neighbour entry: one empty UDP datagram to the
/// discard port. The datagram itself is harmless; the ARP/NDP exchange is the point.
pub fn provoke_resolution(addr: IpAddr) {
    let bind: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    if let Ok(sock) = UdpSocket::bind(bind) {
        let _ = sock.send_to(&[], (addr, 9));
    }
}

/// Resolves the MACs of `addrs`, provoking resolution for the missing ones and waiting at
/// most `wait`. Returns what was found; the caller decides what a missing MAC means.
pub fn resolve_macs(addrs: &[IpAddr], wait: Duration) -> Result<Vec<(IpAddr, [u8; 6])>> {
    if addrs.is_empty() {
        return Ok(Vec::new());
    }
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    let mut missing: Vec<IpAddr> = addrs.to_vec();
    let mut provoked = false;
    loop {
        let table = neighbour_macs()?;
        missing.retain(|a| match table.get(a) {
            Some(mac) => {
                found.push((*a, *mac));
                false
            }
            None => true,
        });
        if missing.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        if !provoked {
            missing.iter().for_each(|&a| provoke_resolution(a));
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:0a:ff:00:01"), Some([2, 0, 10, 255, 0, 1]));
        assert_eq!(parse_mac("02:00:0a:ff:00"), None);
        assert_eq!(parse_mac("02:00:0a:ff:00:01:02"), None);
        assert_eq!(parse_mac("zz:00:0a:ff:00:01"), None);
    }
}
