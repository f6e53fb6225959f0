//! The converter's readers of single values (strings, addresses, durations, integers,
//! booleans, keywords, payloads), each reporting what it expected and what it found, and
//! the checks of names and addresses that several sections share.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::convert::Cx;
use super::keywords::Keyword;
use super::schema::IpPrefix;
use super::units::{parse_bytes, parse_duration};
use super::yaml::{pos_of, Raw, P, Y};

impl Cx<'_> {
    /// A string; numbers and booleans count as their source text (`name: 80` is "80").
    pub(super) fn string(&mut self, y: &Y, path: &P) -> Option<String> {
        self.text(y, path, "a string")
    }

    /// A scalar's text as `string` reads it; anything else is "expected {expected}, found
    /// ...".
    fn text(&mut self, y: &Y, path: &P, expected: &str) -> Option<String> {
        match &y.value {
            Raw::Str(s) => Some(s.clone()),
            Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => self.source_text(y),
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected {expected}, found {found}"),
                );
                None
            }
        }
    }

    /// A string converted by `parse`; its error is "is not a valid {what}, expected {hint}".
    pub(super) fn parsed<T>(
        &mut self,
        y: &Y,
        path: &P,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.text(y, path, expected)?;
        let v = parse(s.trim());
        if v.is_none() {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not valid, expected {expected}"),
            );
        }
        v
    }

    pub(super) fn ip(&mut self, y: &Y, path: &P) -> Option<IpAddr> {
        self.parsed(
            y,
            path,
            "an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)",
            |s| s.parse().ok(),
        )
    }

    pub(super) fn socket_addr(&mut self, y: &Y, path: &P) -> Option<SocketAddr> {
        self.parsed(
            y,
            path,
            "ADDRESS:PORT (e.g. 10.0.0.1:80 or [fd00::1]:80)",
            |s| s.parse().ok(),
        )
    }

    pub(super) fn prefix(&mut self, y: &Y, path: &P) -> Option<IpPrefix> {
        let s = match &y.value {
            Raw::Str(s) => s.clone(),
            _ => return self.parsed(y, path, "ADDRESS/PREFIX (e.g. 10.0.0.100/24)", |_| None),
        };
        match s.trim().parse::<IpPrefix>() {
            Ok(p) => Some(p),
            Err(why) => {
                self.err(
                    pos_of(y),
                    path,
                    format!("{s:?} is not valid ({why}), expected ADDRESS/PREFIX (e.g. 10.0.0.100/24 or fd00::100/64)"),
                );
                None
            }
        }
    }

    pub(super) fn duration(&mut self, y: &Y, path: &P) -> Option<Duration> {
        let s = match &y.value {
            Raw::Str(s) => s.clone(),
            Raw::Int(_) | Raw::Float(_) => self.source_text(y)?,
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected a duration such as 100ms, 1s, 5m or 1h, found {found}"),
                );
                return None;
            }
        };
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(why) => {
                self.err(
                    pos_of(y),
                    path,
                    format!(
                        "{s:?} is not a valid duration ({why}), expected e.g. 100ms, 1s, 5m or 1h"
                    ),
                );
                None
            }
        }
    }

    /// A duration that must be > 0.
    pub(super) fn positive_duration(&mut self, y: &Y, path: &P) -> Option<Duration> {
        let d = self.duration(y, path)?;
        if d.is_zero() {
            self.err(
                pos_of(y),
                path,
                "0s is not allowed, expected a duration greater than 0",
            );
            return None;
        }
        Some(d)
    }

    pub(super) fn int(&mut self, y: &Y, path: &P, lo: i128, hi: i128) -> Option<i128> {
        match &y.value {
            Raw::Int(v) if (lo..=hi).contains(v) => Some(*v),
            Raw::Int(v) => {
                self.err(
                    pos_of(y),
                    path,
                    format!("{v} is out of range, expected {lo}..={hi}"),
                );
                None
            }
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected an integer in {lo}..={hi}, found {found}"),
                );
                None
            }
        }
    }

    pub(super) fn u16(&mut self, y: &Y, path: &P, lo: u16) -> Option<u16> {
        self.int(y, path, lo.into(), u16::MAX.into())
            .map(|v| v as u16)
    }

    pub(super) fn u32(&mut self, y: &Y, path: &P, lo: u32, hi: u32) -> Option<u32> {
        self.int(y, path, lo.into(), hi.into()).map(|v| v as u32)
    }

    pub(super) fn u8(&mut self, y: &Y, path: &P, lo: u8) -> Option<u8> {
        self.int(y, path, lo.into(), u8::MAX.into())
            .map(|v| v as u8)
    }

    pub(super) fn boolean(&mut self, y: &Y, path: &P) -> Option<bool> {
        match &y.value {
            Raw::Bool(b) => Some(*b),
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected true or false, found {found}"),
                );
                None
            }
        }
    }

    pub(super) fn keyword<T: Keyword>(&mut self, y: &Y, path: &P) -> Option<T> {
        let names: Vec<&str> = T::ALL.iter().map(|(n, _)| *n).collect();
        let expected = format!("a {}, one of: {}", T::WHAT, names.join(", "));
        let s = self.text(y, path, &expected)?;
        match T::ALL.iter().find(|(n, _)| *n == s) {
            Some((_, v)) => Some(*v),
            None => {
                self.err(
                    pos_of(y),
                    path,
                    format!(
                        "{s:?} is not a valid {}, expected one of: {}",
                        T::WHAT,
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    /// A payload: text, or `hex:` followed by hex digits.
    pub(super) fn bytes(&mut self, y: &Y, path: &P) -> Option<Vec<u8>> {
        let s = self.string(y, path)?;
        match parse_bytes(&s) {
            Ok(b) => Some(b),
            Err(why) => {
                self.err(
                    pos_of(y),
                    path,
                    format!("{s:?} is not valid ({why}), expected text or hex: followed by hex digits (e.g. hex:0d0a)"),
                );
                None
            }
        }
    }
}

pub(super) fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

pub(super) fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Linux interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:`, whitespace or control
/// characters (NUL would cut the name the kernel reads).
pub(super) fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

/// Service and instance names appear in metric labels and API paths.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}
