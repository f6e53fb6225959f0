//! `services[].health_check`: conversion and the rules between its keys (which keys each
//! check type takes, a HEAD request has no body, an expected DNS answer fits the query).

use std::path::PathBuf;

use super::convert::Cx;
use super::keys::{CHECK_KEYS, CHECK_KEYS_BY_TYPE};
use super::schema::{CheckType, DnsType, HealthCheck, HttpMethod, StatusRange};
use super::yaml::{pos_of, Obj, Raw, P, Y};

impl Cx<'_> {
    pub(super) fn health_check(&mut self, y: &Y, path: &P) -> Option<HealthCheck> {
        let o = self.obj(y, path, CHECK_KEYS)?;
        let kind: CheckType = self.req_field(&o, path, "type", Self::keyword)?;
        if !self.keys_fit_type(&o, path, kind) {
            return None;
        }
        let d = HealthCheck::new(kind);
        let connect_port = self.opt_field(&o, path, "connect_port", |cx, y, p| cx.u16(y, p, 1));
        let interval = self.field(&o, path, "interval", d.interval, Self::positive_duration);
        let timeout = self.field(&o, path, "timeout", d.timeout, Self::positive_duration);
        let rise = self.field(&o, path, "rise", d.rise, |cx, y, p| cx.u32(y, p, 1, 65535));
        let fall = self.field(&o, path, "fall", d.fall, |cx, y, p| cx.u32(y, p, 1, 65535));
        let retries = self.field(&o, path, "retries", d.retries, |cx, y, p| {
            cx.u32(y, p, 0, 65535)
        });
        let delay = self.field(
            &o,
            path,
            "delay_before_retry",
            d.delay_before_retry,
            Self::duration,
        );
        let inhibit = self.field(&o, path, "inhibit_on_failure", false, Self::boolean);
        let initial = self.field(&o, path, "initial_state", d.initial_state, Self::keyword);
        let method = self.field(&o, path, "method", d.method, Self::keyword);
        let check_path = self.field(&o, path, "path", d.path.clone(), Self::http_path);
        let virtualhost = self.opt_field(&o, path, "virtualhost", Self::virtualhost);
        let expect_status = self.field(
            &o,
            path,
            "expect_status",
            d.expect_status.clone(),
            Self::status_ranges,
        );
        let body_regex = self.opt_field(&o, path, "body_regex", Self::body_regex);
        let digest = self.opt_field(&o, path, "digest", Self::digest);
        let sni = self.opt_field(&o, path, "sni", Self::sni);
        let ca_file = self.opt_field(&o, path, "ca_file", Self::ca_file);
        let helo_name = self.field(&o, path, "helo_name", d.helo_name.clone(), Self::helo_name);
        let query_name = self.field(
            &o,
            path,
            "query_name",
            d.query_name.clone(),
            Self::query_name,
        );
        let query_type = self.field(&o, path, "query_type", d.query_type, Self::keyword);
        let expect_rcode = self.field(&o, path, "expect_rcode", d.expect_rcode, Self::keyword);
        let expect_answer = self.opt_field(&o, path, "expect_answer", Self::string);
        let payload = self.field(&o, path, "payload", Vec::new(), Self::bytes);
        let expect = self.opt_field(&o, path, "expect", Self::bytes);
        let require_reply = self.field(&o, path, "require_reply", false, Self::boolean);
        let command = self.opt_field(&o, path, "command", Self::string);
        let dynamic = self.field(&o, path, "dynamic", false, Self::boolean);

        let mut ok = true;
        if kind == CheckType::Misc && o.opt("command").is_none() {
            self.err(
                o.pos,
                path,
                "missing required key \"command\" (type misc runs it)",
            );
            ok = false;
        }
        // The rules below read converted values: a key that did not convert ends here.
        let (command, method, query_type) = (command?, method?, query_type?);
        ok &= self.command_not_empty(&o, path, command.as_deref());
        let (body_regex, digest) = (body_regex?, digest?);
        ok &= self.body_not_with_head(&o, path, method, body_regex.is_some(), digest.is_some());
        let expect_answer = expect_answer?;
        ok &= self.answer_fits_query(&o, path, query_type, expect_answer.as_deref());
        let hc = HealthCheck {
            kind,
            connect_port: connect_port?,
            interval: interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
            retries: retries?,
            delay_before_retry: delay?,
            inhibit_on_failure: inhibit?,
            initial_state: initial?,
            method,
            path: check_path?,
            virtualhost: virtualhost?,
            expect_status: expect_status?,
            body_regex,
            digest,
            sni: sni?,
            ca_file: ca_file?,
            helo_name: helo_name?,
            query_name: query_name?,
            query_type,
            expect_rcode: expect_rcode?,
            expect_answer,
            payload: payload?,
            expect: expect?,
            require_reply: require_reply?,
            command,
            dynamic: dynamic?,
        };
        ok.then_some(hc)
    }

    /// Keys that only some check types use are errors with the others.
    fn keys_fit_type(&mut self, o: &Obj, path: &P, kind: CheckType) -> bool {
        let mut ok = true;
        for (key, kinds, which) in CHECK_KEYS_BY_TYPE {
            if let Some(v) = o.opt(key).filter(|_| !kinds.contains(&kind)) {
                self.err(
                    pos_of(v),
                    &P::Key(path, key),
                    format!("only used with type {which}, not {kind}"),
                );
                ok = false;
            }
        }
        ok
    }

    fn command_not_empty(&mut self, o: &Obj, path: &P, command: Option<&str>) -> bool {
        if command.is_some_and(|c| c.trim().is_empty()) {
            self.err(
                o.pos("command"),
                &P::Key(path, "command"),
                "must not be empty",
            );
            return false;
        }
        true
    }

    fn body_not_with_head(
        &mut self,
        o: &Obj,
        path: &P,
        method: HttpMethod,
        body_regex: bool,
        digest: bool,
    ) -> bool {
        if method == HttpMethod::Head && (body_regex || digest) {
            let key = if body_regex { "body_regex" } else { "digest" };
            self.err(
                o.pos(key),
                &P::Key(path, key),
                "a HEAD response has no body to check; use method GET",
            );
            return false;
        }
        true
    }

    fn answer_fits_query(
        &mut self,
        o: &Obj,
        path: &P,
        query_type: DnsType,
        answer: Option<&str>,
    ) -> bool {
        let Some(answer) = answer else {
            return true;
        };
        let why = match query_type {
            DnsType::A if answer.parse::<std::net::Ipv4Addr>().is_err() => {
                Some("query_type A answers an IPv4 address, expected e.g. 192.0.2.1".to_string())
            }
            DnsType::Aaaa if answer.parse::<std::net::Ipv6Addr>().is_err() => {
                Some("query_type AAAA answers an IPv6 address, expected e.g. 2001:db8::1".to_string())
            }
            DnsType::Soa | DnsType::Srv | DnsType::Any => Some(format!(
                "cannot be checked for query_type {query_type}; expected query_type A, AAAA, CNAME, NS, PTR, MX or TXT"
            )),
            _ if answer.is_empty() => Some("must not be empty".to_string()),
            _ => None,
        };
        let Some(why) = why else {
            return true;
        };
        self.err(
            o.pos("expect_answer"),
            &P::Key(path, "expect_answer"),
            format!("{answer:?}: {why}"),
        );
        false
    }

    fn http_path(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                pos_of(y),
                path,
                format!(
                    "{s:?} is not valid, expected an absolute path without spaces such as /healthz"
                ),
            );
            return None;
        }
        Some(s)
    }

    fn virtualhost(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not valid, expected a host name such as www.example.com (optionally with :PORT)"),
            );
            return None;
        }
        Some(s)
    }

    fn body_regex(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        match regex::bytes::Regex::new(&s) {
            Ok(_) => Some(s),
            Err(e) => {
                let why = e.to_string().replace('\n', " ");
                self.err(
                    pos_of(y),
                    path,
                    format!("{s:?} is not a valid regular expression: {why}"),
                );
                None
            }
        }
    }

    fn digest(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if s.len() != 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not valid, expected an MD5 digest of 32 hex digits (as printed by md5sum)"),
            );
            return None;
        }
        Some(s.to_ascii_lowercase())
    }

    fn sni(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        match rustls::pki_types::ServerName::try_from(s.as_str()) {
            Ok(rustls::pki_types::ServerName::DnsName(_)) => Some(s),
            _ => {
                self.err(
                    pos_of(y),
                    path,
                    format!("{s:?} is not valid, expected a DNS name such as www.example.com"),
                );
                None
            }
        }
    }

    fn ca_file(&mut self, y: &Y, path: &P) -> Option<PathBuf> {
        let s = self.string(y, path)?;
        let why = match std::fs::read_to_string(&s) {
            Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
                return Some(PathBuf::from(s))
            }
            Ok(_) => "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
            Err(e) => format!("cannot read it: {e}"),
        };
        self.err(
            pos_of(y),
            path,
            format!("{s:?}: {why}; expected a PEM file of CA certificates"),
        );
        None
    }

    fn helo_name(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not valid, expected a host name such as lb1.example.com"),
            );
            return None;
        }
        Some(s)
    }

    fn query_name(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if let Err(why) = check_dns_name(&s) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not a valid DNS name ({why}), expected e.g. example.com or ."),
            );
            return None;
        }
        Some(s)
    }

    /// `200`, `"200-299"`, or a list of those.
    fn status_ranges(&mut self, y: &Y, path: &P) -> Option<Vec<StatusRange>> {
        let one = |cx: &mut Self, y: &Y, p: &P| -> Option<StatusRange> {
            const EXPECTED: &str = "an HTTP status (100..=599) or a range such as \"200-299\"";
            let text = match &y.value {
                Raw::Int(_) | Raw::Str(_) => cx.string(y, p)?,
                _ => {
                    let found = cx.describe(y);
                    cx.err(pos_of(y), p, format!("expected {EXPECTED}, found {found}"));
                    return None;
                }
            };
            let status = |s: &str| {
                s.trim()
                    .parse::<u16>()
                    .ok()
                    .filter(|v| (100..=599).contains(v))
            };
            let range = match text.split_once('-') {
                Some((a, b)) => status(a)
                    .zip(status(b))
                    .map(|(lo, hi)| StatusRange { lo, hi }),
                None => status(&text).map(|v| StatusRange { lo: v, hi: v }),
            };
            match range {
                Some(r) if r.lo <= r.hi => Some(r),
                _ => {
                    cx.err(
                        pos_of(y),
                        p,
                        format!("{text:?} is not valid, expected {EXPECTED}"),
                    );
                    None
                }
            }
        };
        match &y.value {
            Raw::Seq(items) if items.is_empty() => {
                self.err(
                    pos_of(y),
                    path,
                    "expected at least one status, found an empty list",
                );
                None
            }
            Raw::Seq(_) => self.list(Some(y), path, "HTTP statuses", one),
            _ => one(self, y, path).map(|r| vec![r]),
        }
    }
}

/// A DNS name as written in a query: labels of 1..=63 bytes separated by dots, at most 253
/// bytes, an optional final dot; `.` alone is the root.
fn check_dns_name(s: &str) -> Result<(), String> {
    if s == "." {
        return Ok(());
    }
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 bytes"));
        }
        if label.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "label \"{label}\" has spaces or control characters"
            ));
        }
    }
    Ok(())
}
