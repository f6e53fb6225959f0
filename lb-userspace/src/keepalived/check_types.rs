//! The keys of each checker type: HTTP_GET and SSL_GET's `url` blocks (path, digest,
//! status_code, virtualhost, regex) and `sni_name`, SMTP_CHECK's `helo_name`, DNS_CHECK's
//! `type` and `name`, MISC_CHECK's `misc_path`, `misc_timeout` and `misc_dynamic`,
//! UDP_CHECK's `payload` and `require_reply`.

use super::{
    convert::Cx,
    model::{Check, Val},
    tree::Stmt,
    values::Micros,
};

/// The keys of one checker type.
#[derive(Default)]
pub struct Specific {
    pub connect_port: Option<u16>,
    url: Option<Stmt>,
    sni: Option<String>,
    helo_name: Option<String>,
    query_type: Option<String>,
    query_name: Option<String>,
    command: Option<String>,
    pub misc_timeout: Option<Micros>,
    dynamic: bool,
    payload: Option<String>,
    require_reply: Option<Option<String>>,
}

impl Specific {
    pub fn statement(&mut self, cx: &mut Cx, kind: &str, k: &Stmt) {
        let http = matches!(kind, "http_get" | "ssl_get");
        match (kind, k.keyword()) {
            (_, "url") if http => {
                if self.url.is_some() {
                    cx.note(k, "bascule checks one path per backend: this url is left out (keepalived wants every url to pass)");
                } else if cx.block(k).is_some() {
                    self.url = Some(k.clone());
                }
            }
            ("ssl_get", "sni_name") => match k.arg(0) {
                Some(n) if valid_host(n) => self.sni = Some(n.to_string()),
                _ => cx.invalid(k, "a DNS name"),
            },
            ("ssl_get", "enable_sni") => {}
            (_, "http_protocol") if http && k.arg(0) == Some("1.1") => {}
            (_, "http_protocol") if http => cx.note(k, "bascule sends HTTP/1.1 requests: left out"),
            (_, "fast_recovery" | "tls_compliant") if http => cx.note(k, "not mapped: left out"),
            ("smtp", "helo_name") => match k.arg(0) {
                Some(n) if valid_host(n) => self.helo_name = Some(n.to_string()),
                _ => cx.invalid(k, "a host name without spaces"),
            },
            ("smtp", "host") => cx.note(
                k,
                "bascule checks the backend's own address, once: this host block is left out",
            ),
            ("dns", "type") => match k.arg(0).map(str::to_ascii_uppercase) {
                Some(t) if DNS_TYPES.contains(&t.as_str()) => self.query_type = Some(t),
                _ => cx.invalid(
                    k,
                    "a query type (A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, ANY)",
                ),
            },
            ("dns", "name") => match k.arg(0) {
                Some(n) if !n.is_empty() && !n.chars().any(char::is_whitespace) => {
                    self.query_name = Some(n.to_string())
                }
                _ => cx.invalid(k, "a DNS name"),
            },
            ("misc", "misc_path") if !k.args().is_empty() => {
                self.command = Some(k.args().join(" "))
            }
            ("misc", "misc_timeout") => self.misc_timeout = cx.timer_arg(k),
            ("misc", "misc_dynamic") => self.dynamic = true,
            ("misc", "user") => cx.note(
                k,
                "bascule runs check commands as the user it runs as: left out",
            ),
            ("udp", "payload") => match hex(k.args()) {
                Some(h) => self.payload = Some(h),
                None => cx.invalid(k, "hex digits"),
            },
            ("udp", "require_reply") if k.args().is_empty() => self.require_reply = Some(None),
            ("udp", "require_reply") => match hex(k.args()) {
                Some(h) => self.require_reply = Some(Some(h)),
                None => cx.invalid(k, "hex digits"),
            },
            (_, "log_all_failures") => cx.note(
                k,
                "bascule logs every change of a backend's health: left out",
            ),
            _ => cx.unmapped(k, "checker"),
        }
    }

    pub fn finish(
        self,
        cx: &mut Cx,
        c: &Stmt,
        kind: &str,
        virtualhost: Option<String>,
        check: &mut Check,
    ) -> Option<()> {
        match kind {
            "http_get" | "ssl_get" => url(cx, c, self.url.as_ref(), virtualhost, check),
            "smtp" => {
                if let Some(h) = self.helo_name {
                    check.set("helo_name", Val::text(h));
                }
            }
            "dns" => {
                if let Some(n) = self.query_name {
                    check.set("query_name", Val::text(n));
                }
                if let Some(t) = self.query_type {
                    check.set("query_type", Val::plain(t));
                }
            }
            "misc" => {
                let Some(command) = self.command else {
                    cx.note(
                        c,
                        "no misc_path: keepalived skips this checker, so does bascule",
                    );
                    return None;
                };
                check.set("command", Val::text(command));
                if self.dynamic {
                    check.set("dynamic", Val::plain(true));
                }
            }
            "udp" => {
                if let Some(p) = self.payload {
                    check.set("payload", Val::text(format!("hex:{p}")));
                }
                match self.require_reply {
                    Some(Some(h)) => check.set("expect", Val::text(format!("hex:{h}"))),
                    Some(None) => check.set("require_reply", Val::plain(true)),
                    None => {}
                }
            }
            _ => {}
        }
        if kind == "ssl_get" {
            if let Some(s) = self.sni {
                check.set("sni", Val::text(s));
            }
        }
        Some(())
    }
}

const DNS_TYPES: &[&str] = &[
    "A", "NS", "CNAME", "SOA", "PTR", "MX", "TXT", "AAAA", "SRV", "ANY",
];

/// An HTTP_GET or SSL_GET's `url` block: path, digest, status_code, virtualhost, regex.
fn url(cx: &mut Cx, c: &Stmt, url: Option<&Stmt>, vhost: Option<String>, check: &mut Check) {
    let mut path = None;
    let mut status = Vec::new();
    let mut vhost = vhost;
    let mut digest = None;
    let mut regex = None;
    for k in url.map(Stmt::children).unwrap_or(&[]) {
        match k.keyword() {
            "path" => match k.arg(0) {
                Some(p)
                    if p.starts_with('/')
                        && !p.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    path = Some(p.to_string())
                }
                _ => cx.invalid(k, "an absolute path without spaces"),
            },
            "digest" => match k.arg(0) {
                Some(d) if d.len() == 32 && d.chars().all(|c| c.is_ascii_hexdigit()) => {
                    digest = Some(d.to_ascii_lowercase())
                }
                _ => cx.invalid(k, "an MD5 digest of 32 hex digits"),
            },
            "status_code" => {
                for code in k.args() {
                    match status_range(code) {
                        Some(v) => status.push(v),
                        None => cx.note(k, format!("{code:?} is not a status or a range of statuses (100..599): left out")),
                    }
                }
            }
            "virtualhost" => match k.arg(0) {
                Some(h) if valid_host(h) => vhost = Some(h.to_string()),
                _ => cx.invalid(k, "a host name"),
            },
            "regex" => match k.arg(0).filter(|r| regex::bytes::Regex::new(r).is_ok()) {
                Some(r) => regex = Some(r.to_string()),
                None => cx.note(
                    k,
                    "not a regular expression bascule reads (Rust regex syntax): left out",
                ),
            },
            "regex_no_match" | "regex_options" | "regex_stack" | "regex_min_offset"
            | "regex_max_offset" => cx.note(
                k,
                "bascule's body_regex must match the first MiB of the body: left out",
            ),
            _ => cx.unmapped(k, "url"),
        }
    }
    if path.is_none() {
        let why = if url.is_some() {
            "url without a path"
        } else {
            "no url"
        };
        cx.note(
            url.unwrap_or(c),
            format!("{why}: keepalived ignores it; bascule requests /"),
        );
    }
    check.set("path", Val::text(path.unwrap_or_else(|| "/".into())));
    if let Some(h) = vhost {
        check.set("virtualhost", Val::text(h));
    }
    // keepalived's default is any 2xx, bascule's 200 alone.
    let status = match status.len() {
        0 => {
            check
                .key_notes
                .push(("expect_status", "keepalived's default: any 2xx".into()));
            Val::text("200-299")
        }
        1 => status.remove(0),
        _ => Val::List(status),
    };
    check.set("expect_status", status);
    if let Some(r) = regex {
        check.set("body_regex", Val::text(r));
    }
    if let Some(d) = digest {
        check.set("digest", Val::text(d));
    }
}

fn status_range(code: &str) -> Option<Val> {
    let status = |s: &str| s.parse::<u16>().ok().filter(|v| (100..=599).contains(v));
    match code.split_once('-') {
        Some((a, b)) => {
            let (lo, hi) = (status(a)?, status(b)?);
            (lo <= hi).then(|| Val::text(format!("{lo}-{hi}")))
        }
        None => status(code).map(Val::plain),
    }
}

pub fn valid_host(h: &str) -> bool {
    !h.is_empty() && !h.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// keepalived's free-format hex (`Ab12f 3` is `ab 12 0f 03`): pairs of digits in each word,
/// a last single digit standing for its own byte.
fn hex(words: &[String]) -> Option<String> {
    let mut out = String::new();
    for w in words {
        if w.is_empty() || !w.chars().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let w = w.to_ascii_lowercase();
        let (pairs, last) = w.split_at(w.len() - w.len() % 2);
        out.push_str(pairs);
        if !last.is_empty() {
            out.push('0');
            out.push_str(last);
        }
    }
    (!out.is_empty()).then_some(out)
}
