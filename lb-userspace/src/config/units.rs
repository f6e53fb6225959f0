//! Durations and byte strings as the configuration writes them (`1m30s`, `hex:0d0a`).

use std::time::Duration;

const DURATION_UNITS: &[(&str, u128)] = &[
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// The longest duration a configuration may give (any timer of the daemon, in 365 days):
/// longer ones are typing mistakes, and would overflow the clocks' arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Parses `100ms`, `1s`, `5m`, `1h`, `1m30s`, `1.5s` (units us, ms, s, m, h, d; `0` alone is
/// also accepted), at most [`MAX_DURATION`]. The error says what is wrong, e.g. `missing
/// unit`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const TOO_LONG: &str = "longer than the longest accepted, 365d";
    let t = s.trim();
    if t.is_empty() {
        return Err("empty".into());
    }
    if t.starts_with('-') {
        return Err("negative".into());
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = t.strip_prefix('+').unwrap_or(t);
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num = &rest[..num_len];
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if num.is_empty() {
            return Err(format!("expected a number before \"{unit}\""));
        }
        if unit.is_empty() {
            return Err("missing unit".into());
        }
        let Some(&(_, scale)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "unknown unit \"{unit}\"; units are us, ms, s, m, h, d"
            ));
        };
        let (int, frac) = num.split_once('.').unwrap_or((num, ""));
        if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(format!("\"{num}\" is not a number"));
        }
        let int: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| TOO_LONG.to_string())?
        };
        let mut nanos = int.checked_mul(scale).ok_or(TOO_LONG)?;
        let mut place = scale;
        for d in frac.bytes() {
            place /= 10;
            nanos += u128::from(d - b'0') * place;
        }
        total = total.checked_add(nanos).ok_or(TOO_LONG)?;
    }
    if total > MAX_DURATION.as_nanos() {
        return Err(TOO_LONG.into());
    }
    Ok(Duration::from_nanos(total as u64))
}

/// Formats a duration the way the configuration writes it: `0s`, `100ms`, `1s`, `15m`,
/// `1h`, `1m30s`-free (the largest unit that divides it exactly, so `90s`, `1500ms`).
pub fn format_duration(d: Duration) -> String {
    let n = d.as_nanos();
    if n == 0 {
        return "0s".into();
    }
    for (unit, scale) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if n.is_multiple_of(scale) {
            return format!("{}{unit}", n / scale);
        }
    }
    format!("{n}ns")
}

pub(super) fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// Bytes as the configuration writes them: text when printable ASCII, else `hex:...`.
pub fn format_bytes(b: &[u8]) -> String {
    if b.iter().all(|c| (0x20..0x7f).contains(c)) && !b.starts_with(b"hex:") {
        String::from_utf8_lossy(b).into_owned()
    } else {
        let hex: String = b.iter().map(|c| format!("{c:02x}")).collect();
        format!("hex:{hex}")
    }
}

/// Parses a payload: `hex:` followed by an even number of hex digits, else the text's
/// UTF-8 bytes.
pub fn parse_bytes(s: &str) -> Result<Vec<u8>, String> {
    let Some(hex) = s.strip_prefix("hex:") else {
        return Ok(s.as_bytes().to_vec());
    };
    let digits: Vec<u8> = hex
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| {
            c.to_digit(16)
                .map(|d| d as u8)
                .ok_or_else(|| format!("{:?} is not a hex digit", c.to_string()))
        })
        .collect::<Result<_, _>>()?;
    if !digits.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    Ok(digits.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect())
}

pub(super) fn ser_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_bytes(b))
}

pub(super) fn ser_opt_bytes<S: serde::Serializer>(
    b: &Option<Vec<u8>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&format_bytes(b)),
        None => s.serialize_none(),
    }
}
