//! keepalived's values read into bascule's: timers (decimal seconds) into durations,
//! booleans, addresses and address ranges, and names bascule accepts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A duration in microseconds (keepalived's timer resolution).
pub type Micros = u64;

pub const SECOND: Micros = 1_000_000;

/// keepalived's `<TIMER>`: seconds, with an optional fraction (`3`, `0.5`, `2.71828`).
pub fn timer(s: &str) -> Option<Micros> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = |t: &str| t.chars().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return None;
    }
    let whole: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut micros = 0u64;
    for (i, c) in frac.chars().take(6).enumerate() {
        micros += u64::from(c.to_digit(10)?) * 10u64.pow(5 - i as u32);
    }
    whole.checked_mul(SECOND)?.checked_add(micros)
}

/// A bascule duration in the largest unit that divides it exactly, so that the keepalived
/// value stays recognisable (`600` is written `10m`, `90` is `90s`, `1.5` is `1500ms`).
pub fn duration(us: Micros) -> String {
    if us == 0 {
        return "0s".into();
    }
    for (unit, size) in [
        ("h", 3600 * SECOND),
        ("m", 60 * SECOND),
        ("s", SECOND),
        ("ms", 1000),
    ] {
        if us.is_multiple_of(size) {
            return format!("{}{unit}", us / size);
        }
    }
    format!("{us}us")
}

/// keepalived's `<BOOL>` (`on|off|true|false|yes|no`); a bare keyword means true.
pub fn boolean(arg: Option<&str>) -> Option<bool> {
    match arg.map(str::to_ascii_lowercase).as_deref() {
        None | Some("on" | "true" | "yes") => Some(true),
        Some("off" | "false" | "no") => Some(false),
        _ => None,
    }
}

pub fn uint(s: &str, lo: u64, hi: u64) -> Option<u64> {
    s.parse::<u64>().ok().filter(|v| (lo..=hi).contains(v))
}

pub fn int(s: &str, lo: i64, hi: i64) -> Option<i64> {
    s.parse::<i64>().ok().filter(|v| (lo..=hi).contains(v))
}

pub fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// `ADDRESS` or `ADDRESS/PREFIX`, the prefix in range for the family.
pub fn prefix(s: &str) -> Option<(IpAddr, Option<u8>)> {
    match s.split_once('/') {
        None => ip(s).map(|a| (a, None)),
        Some((a, p)) => {
            let a = ip(a)?;
            let max = if a.is_ipv4() { 32 } else { 128 };
            let p = uint(p, 0, max)? as u8;
            Some((a, Some(p)))
        }
    }
}

/// Whether a word is a host name rather than an address: keepalived resolves those,
/// the importer does not guess.
pub fn looks_like_name(s: &str) -> bool {
    !s.is_empty()
        && s.parse::<IpAddr>().is_err()
        && s.chars().any(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

/// Most addresses a `virtual_server_group` range may stand for in one import.
pub const MAX_RANGE: usize = 256;

/// The addresses of a `virtual_server_group` entry: one address, a range whose last part
/// varies (`192.168.200.1-10`, `2001:db8::1-1f`), a range of whole addresses
/// (`10.0.0.250-10.0.1.5`) or a prefix (`192.168.202.8/29`, every address of it).
pub fn address_range(s: &str) -> Result<Vec<IpAddr>, String> {
    if let Some(a) = ip(s) {
        return Ok(vec![a]);
    }
    let (first, last, v4) = if let Some((a, plen)) = s.split_once('/') {
        let a = ip(a).ok_or("not an address")?;
        let bits: u32 = if a.is_ipv4() { 32 } else { 128 };
        let plen = uint(plen, 0, u64::from(bits)).ok_or("not a prefix length")? as u32;
        let host = bits - plen;
        if host > 16 {
            return Err(format!("more than {MAX_RANGE} addresses"));
        }
        let base = to_u128(a) >> host << host;
        (base, base + (1u128 << host) - 1, a.is_ipv4())
    } else {
        let (a, b) = s.split_once('-').ok_or("not an address or a range")?;
        let a = ip(a).ok_or("not an address")?;
        let last = match ip(b) {
            Some(b) if b.is_ipv4() == a.is_ipv4() => to_u128(b),
            Some(_) => return Err("mixes IPv4 and IPv6".into()),
            None if a.is_ipv4() => {
                let v = uint(b, 0, 255).ok_or("not a range end")? as u128;
                to_u128(a) >> 8 << 8 | v
            }
            None => {
                let v = u16::from_str_radix(b, 16).map_err(|_| "not a range end")?;
                to_u128(a) >> 16 << 16 | u128::from(v)
            }
        };
        (to_u128(a), last, a.is_ipv4())
    };
    if last < first {
        return Err("the range ends before it starts".into());
    }
    if last - first >= MAX_RANGE as u128 {
        return Err(format!("more than {MAX_RANGE} addresses"));
    }
    Ok((first..=last).map(|v| from_u128(v, v4)).collect())
}

fn to_u128(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(v))
    }
}

/// A name bascule accepts (letters, digits, `.`, `_`, `-`): other characters become `_`.
pub fn name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if n.is_empty() {
        "_".into()
    } else {
        n
    }
}

/// An address in a name: `10.0.0.1`, `2001-db8--1` (no `:` in names).
pub fn addr_in_name(a: IpAddr) -> String {
    a.to_string().replace(':', "-")
}

/// `name`, or `name-2`, `name-3`, ... : the first not in `taken`, which it is added to.
pub fn unique(name: String, taken: &mut std::collections::HashSet<String>) -> String {
    let mut candidate = name.clone();
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{name}-{n}");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

/// Linux interface names: 1..=15 bytes, no `/`, `:` or whitespace.
pub fn ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_become_durations() {
        assert_eq!(timer("3"), Some(3 * SECOND));
        assert_eq!(timer("0.5"), Some(SECOND / 2));
        assert_eq!(timer(".25"), Some(SECOND / 4));
        assert_eq!(timer("2.71828"), Some(2_718_280));
        assert_eq!(timer("1.0000019"), Some(1_000_001));
        assert_eq!(timer("-1"), None);
        assert_eq!(timer("1s"), None);
        assert_eq!(timer("."), None);
        assert_eq!(duration(600 * SECOND), "10m");
        assert_eq!(duration(90 * SECOND), "90s");
        assert_eq!(duration(1_500_000), "1500ms");
        assert_eq!(duration(2_718_280), "2718280us");
        assert_eq!(duration(7200 * SECOND), "2h");
        assert_eq!(duration(0), "0s");
    }

    #[test]
    fn booleans_and_names() {
        assert_eq!(boolean(None), Some(true));
        assert_eq!(boolean(Some("off")), Some(false));
        assert_eq!(boolean(Some("Yes")), Some(true));
        assert_eq!(boolean(Some("maybe")), None);
        assert_eq!(name("VI 1/a"), "VI_1_a");
        assert_eq!(addr_in_name("2001:db8::1".parse().unwrap()), "2001-db8--1");
        let mut taken = Default::default();
        assert_eq!(unique("a".into(), &mut taken), "a");
        assert_eq!(unique("a".into(), &mut taken), "a-2");
        assert!(looks_like_name("tic"));
        assert!(looks_like_name("www.example.com"));
        assert!(!looks_like_name("10.0.0.1"));
        assert!(!looks_like_name("fd00::1"));
        assert!(!looks_like_name("..."));
    }

    #[test]
    fn prefixes() {
        assert_eq!(
            prefix("10.0.0.1/24"),
            Some(("10.0.0.1".parse().unwrap(), Some(24)))
        );
        assert_eq!(prefix("fd00::1"), Some(("fd00::1".parse().unwrap(), None)));
        assert_eq!(prefix("10.0.0.1/33"), None);
        assert_eq!(prefix("..."), None);
    }

    #[test]
    fn group_ranges() {
        let r =
            |s: &str| address_range(s).map(|v| v.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        assert_eq!(r("10.0.0.1").unwrap(), ["10.0.0.1"]);
        assert_eq!(
            r("192.168.200.1-3").unwrap(),
            ["192.168.200.1", "192.168.200.2", "192.168.200.3"]
        );
        assert_eq!(r("10.0.0.254-10.0.1.1").unwrap().len(), 4);
        assert_eq!(
            r("192.168.202.8/30").unwrap(),
            [
                "192.168.202.8",
                "192.168.202.9",
                "192.168.202.10",
                "192.168.202.11"
            ]
        );
        assert_eq!(
            r("2001:db8::a-c").unwrap(),
            ["2001:db8::a", "2001:db8::b", "2001:db8::c"]
        );
        assert!(r("10.0.0.0/16").unwrap_err().contains("more than 256"));
        assert!(r("10.0.0.5-1").is_err());
        assert!(r("www").is_err());
    }
}
