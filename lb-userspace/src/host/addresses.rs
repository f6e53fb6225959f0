//! Choices among an interface's addresses (pure).

use std::net::IpAddr;

/// Whether `a` is an IPv6 link-local address (fe80::/10).
pub fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

/// The address VRRP adverts go out from, among an interface's own addresses: IPv4, the
/// first that is not a virtual one; IPv6, its link-local address (RFC 5798 5.1.2.1), or a
/// global one when the unicast peers are not link-local. (`Config::check_host` asks it
/// too, so that a config whose instance could not start is refused before anything
/// changes.)
pub fn primary_address(
    own: impl Iterator<Item = IpAddr>,
    vips: &[IpAddr],
    v6: bool,
    peers: &[IpAddr],
) -> Option<IpAddr> {
    let want_link_local = v6 && peers.iter().all(is_link_local);
    own.filter(|a| a.is_ipv6() == v6 && !vips.contains(a))
        .find(|a| !v6 || is_link_local(a) == want_link_local)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn primary_address_skips_virtual_ones_and_prefers_link_local_for_ipv6() {
        let own = ips(&["10.0.0.100", "10.0.0.2", "fd00::2", "fe80::2"]);
        let vips = ips(&["10.0.0.100", "fd00::100"]);
        assert_eq!(
            primary_address(own.iter().copied(), &vips, false, &[]),
            Some(ips(&["10.0.0.2"])[0])
        );
        assert_eq!(
            primary_address(own.iter().copied(), &vips, true, &[]),
            Some(ips(&["fe80::2"])[0])
        );
        assert_eq!(
            primary_address(own.iter().copied(), &vips, true, &ips(&["fd00::3"])),
            Some(ips(&["fd00::2"])[0]),
            "global peers need a global source"
        );
        assert_eq!(
            primary_address(ips(&["10.0.0.100"]).into_iter(), &vips, false, &[]),
            None
        );
    }

    #[test]
    fn link_local_is_fe80_slash_10() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_link_local(&"169.254.0.1".parse().unwrap()));
    }
}
