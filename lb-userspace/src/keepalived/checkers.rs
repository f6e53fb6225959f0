//! keepalived's checkers (`HTTP_GET`, `SSL_GET`, `TCP_CHECK`, `SMTP_CHECK`, `DNS_CHECK`,
//! `MISC_CHECK`, `UDP_CHECK`, `PING_CHECK`) into a `health_check`, with keepalived's
//! timing written out: `delay_loop` (60 s) is the interval, `connect_timeout` (5 s; for
//! MISC_CHECK `misc_timeout`, else the virtual server's `delay_loop`) the timeout, `retry`
//! (1; MISC_CHECK 0, DNS_CHECK 3) the retries, `delay_before_retry` (1 s; HTTP_GET and
//! SSL_GET 3 s, DNS_CHECK the interval) the pause; one failed check takes a server down and
//! one success brings it back (rise 1, fall 1); servers start up unless `alpha`.

use std::net::IpAddr;

use super::{
    check_types::{valid_host, Specific},
    convert::Cx,
    model::{Check, Origin, Val},
    tree::Stmt,
    values::{self, Micros, SECOND},
};

pub const CHECKERS: &[&str] = &[
    "HTTP_GET",
    "SSL_GET",
    "TCP_CHECK",
    "SMTP_CHECK",
    "DNS_CHECK",
    "MISC_CHECK",
    "UDP_CHECK",
    "PING_CHECK",
    "BFD_CHECK",
    "FILE_CHECK",
];

/// Settings a checker takes from its real_server, and a real_server from its
/// virtual_server, unless it sets them itself.
#[derive(Clone, Debug, Default)]
pub struct Inherited {
    pub delay_loop: Option<Micros>,
    pub connect_timeout: Option<Micros>,
    pub retry: Option<u32>,
    pub delay_before_retry: Option<Micros>,
    pub alpha: Option<bool>,
    pub inhibit: Option<bool>,
    pub virtualhost: Option<String>,
}

impl Inherited {
    /// These settings, completed by `parent`'s.
    pub fn under(&self, parent: &Inherited) -> Inherited {
        Inherited {
            delay_loop: self.delay_loop.or(parent.delay_loop),
            connect_timeout: self.connect_timeout.or(parent.connect_timeout),
            retry: self.retry.or(parent.retry),
            delay_before_retry: self.delay_before_retry.or(parent.delay_before_retry),
            alpha: self.alpha.or(parent.alpha),
            inhibit: self.inhibit.or(parent.inhibit),
            virtualhost: self.virtualhost.clone().or(parent.virtualhost.clone()),
        }
    }

    /// Reads `c` if it is one of these settings; `false` when it is not.
    pub fn statement(&mut self, cx: &mut Cx, c: &Stmt) -> bool {
        match c.keyword() {
            "delay_loop" => match cx.timer_arg(c) {
                Some(0) => cx.invalid(c, "an interval above 0"),
                t => self.delay_loop = t.or(self.delay_loop),
            },
            "connect_timeout" => match cx.timer_arg(c) {
                Some(0) => cx.invalid(c, "a timeout above 0"),
                t => self.connect_timeout = t.or(self.connect_timeout),
            },
            "retry" | "nb_get_retry" => {
                self.retry = cx.uint_arg(c, 0, 65535).map(|v| v as u32).or(self.retry);
            }
            "delay_before_retry" => {
                self.delay_before_retry = cx.timer_arg(c).or(self.delay_before_retry);
            }
            "alpha" | "inhibit_on_failure" => match values::boolean(c.arg(0)) {
                Some(b) if c.keyword() == "alpha" => self.alpha = Some(b),
                Some(b) => self.inhibit = Some(b),
                None => cx.invalid(c, "on or off"),
            },
            "virtualhost" => match c.arg(0) {
                Some(h) if valid_host(h) => self.virtualhost = Some(h.to_string()),
                _ => cx.invalid(c, "a host name"),
            },
            "warmup" => cx.note(c, "bascule starts every check at once: left out"),
            _ => return false,
        }
        true
    }
}

/// What a checker's conversion needs from its servers.
pub struct CheckCtx {
    /// The real server's settings over the virtual server's.
    pub inherited: Inherited,
    /// The virtual server's `delay_loop`: MISC_CHECK's default timeout.
    pub vs_delay_loop: Micros,
    /// The real server's port, which keepalived checks by default.
    pub rs_port: Option<u16>,
}

fn uses_port(kind: &str) -> bool {
    !matches!(kind, "misc" | "ping")
}

/// One checker block. `None` (reported) for BFD_CHECK and FILE_CHECK, and for a checker
/// that cannot run (MISC_CHECK without misc_path).
pub fn checker(cx: &mut Cx, c: &Stmt, ctx: &CheckCtx) -> Option<Check> {
    let kind = match c.keyword() {
        "HTTP_GET" => "http_get",
        "SSL_GET" => "ssl_get",
        "TCP_CHECK" => "tcp",
        "SMTP_CHECK" => "smtp",
        "DNS_CHECK" => "dns",
        "MISC_CHECK" => "misc",
        "UDP_CHECK" => "udp",
        "PING_CHECK" => "ping",
        _ => {
            cx.note(c, "bascule has no such check (tcp, http_get, ssl_get, smtp, dns, udp, ping, misc): left out");
            return None;
        }
    };
    let mut own = Inherited::default();
    let mut b = Specific::default();
    for k in c.children() {
        let connection = matches!(
            k.keyword(),
            "connect_port"
                | "connect_ip"
                | "bindto"
                | "bind_port"
                | "bind_if"
                | "fwmark"
                | "connect_timeout"
        );
        if connection && !uses_port(kind) {
            cx.note(
                k,
                format!("a {} runs no connection of its own: left out", c.keyword()),
            );
        } else if k.keyword() == "connect_port" {
            b.connect_port = cx.uint_arg(k, 1, 65535).map(|p| p as u16);
        } else if connection && k.keyword() != "connect_timeout" {
            let why = match k.keyword() {
                "connect_ip" => "bascule checks the backend's own address: left out",
                "fwmark" => "bascule marks no check packets: left out",
                _ => "bascule checks from the node's own address and a free port: left out",
            };
            cx.note(k, why);
        } else if !own.statement(cx, k) {
            b.statement(cx, kind, k);
        }
    }
    let inh = own.under(&ctx.inherited);
    let port = b.connect_port.or(ctx.rs_port).filter(|_| uses_port(kind));
    let mut check = timing(c, kind, &inh, b.misc_timeout, port, ctx);
    b.finish(cx, c, kind, inh.virtualhost, &mut check)?;
    Some(check)
}

/// A check of `kind` with keepalived's timing, each value's origin noted.
fn timing(
    c: &Stmt,
    kind: &'static str,
    inh: &Inherited,
    misc_timeout: Option<Micros>,
    connect_port: Option<u16>,
    ctx: &CheckCtx,
) -> Check {
    let interval = inh.delay_loop.unwrap_or(60 * SECOND);
    let timeout = if kind == "misc" {
        misc_timeout.filter(|t| *t > 0).unwrap_or(ctx.vs_delay_loop)
    } else {
        inh.connect_timeout.unwrap_or(5 * SECOND)
    };
    let retries = inh.retry.unwrap_or(match kind {
        "misc" => 0,
        "dns" => 3,
        _ => 1,
    });
    let delay = inh.delay_before_retry.unwrap_or(match kind {
        "http_get" | "ssl_get" => 3 * SECOND,
        "dns" => interval,
        _ => SECOND,
    });
    let explicit = |set: bool, key: &str| {
        if set {
            key.to_string()
        } else {
            format!("keepalived's default {key}")
        }
    };
    let timeout_note = if kind != "misc" {
        explicit(inh.connect_timeout.is_some(), "connect_timeout")
    } else if misc_timeout.is_some_and(|t| t > 0) {
        "misc_timeout".into()
    } else {
        "keepalived's default misc_timeout: the virtual server's delay_loop".into()
    };
    let mut check = Check {
        origin: Origin {
            pos: c.pos,
            text: c.text(),
        },
        notes: Vec::new(),
        fields: Vec::new(),
        key_notes: vec![
            ("interval", explicit(inh.delay_loop.is_some(), "delay_loop")),
            ("timeout", timeout_note),
            ("retries", explicit(inh.retry.is_some(), "retry")),
            (
                "delay_before_retry",
                explicit(inh.delay_before_retry.is_some(), "delay_before_retry"),
            ),
            (
                "rise",
                "keepalived: one success brings a server back".into(),
            ),
            (
                "fall",
                "keepalived: one failed check (after its retries) takes it out".into(),
            ),
            (
                "initial_state",
                if inh.alpha == Some(true) {
                    "alpha".into()
                } else {
                    "keepalived starts servers up unless alpha".into()
                },
            ),
        ],
    };
    check.set("type", Val::plain(kind));
    if let Some(p) = connect_port {
        check.set("connect_port", Val::plain(p));
    }
    check.set("interval", Val::plain(values::duration(interval)));
    check.set("timeout", Val::plain(values::duration(timeout)));
    check.set("rise", Val::plain(1));
    check.set("fall", Val::plain(1));
    check.set("retries", Val::plain(retries));
    check.set("delay_before_retry", Val::plain(values::duration(delay)));
    if inh.inhibit == Some(true) {
        check.set("inhibit_on_failure", Val::plain(true));
    }
    let initial = if inh.alpha == Some(true) {
        "down"
    } else {
        "up"
    };
    check.set("initial_state", Val::plain(initial));
    check
}

/// The check as it applies to a service: its port written only when it differs from the
/// port bascule checks by default (`traffic_port`, 0 when there is none). `Err` when the
/// check has no port to use.
pub fn for_service(check: &Check, traffic_port: u16) -> Result<Check, String> {
    let mut check = check.clone();
    let kind = check.get("type").cloned();
    if !matches!(kind, Some(Val::Plain(ref k)) if uses_port(k)) {
        return Ok(check);
    }
    match check.get("connect_port") {
        Some(Val::Plain(p)) if traffic_port != 0 && *p == traffic_port.to_string() => {
            check.remove("connect_port");
        }
        Some(_) => {}
        None if traffic_port == 0 => {
            return Err("no port to check (the service balances every port): set connect_port; this checker is left out".into())
        }
        None => {}
    }
    Ok(check)
}

/// The check of one backend with its own address in a MISC_CHECK command replaced by
/// `$BASCULE_BACKEND_ADDRESS`, which bascule sets for the command: one command then
/// serves every backend, as one misc_path per real_server did.
pub fn for_backend(check: &Check, address: IpAddr) -> Check {
    let mut check = check.clone();
    if let Some(Val::Text(cmd)) = check.get("command") {
        let a = address.to_string();
        let replaced: Vec<String> = cmd
            .split(' ')
            .map(|w| {
                if w == a {
                    "$BASCULE_BACKEND_ADDRESS".to_string()
                } else if let Some(rest) = w.strip_prefix(&format!("{a}:")) {
                    format!("$BASCULE_BACKEND_ADDRESS:{rest}")
                } else {
                    w.to_string()
                }
            })
            .collect();
        let replaced = replaced.join(" ");
        if replaced != *cmd {
            check.set("command", Val::text(replaced));
        }
    }
    check
}
