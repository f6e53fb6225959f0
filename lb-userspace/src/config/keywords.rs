//! The names of enum values in the YAML (`mh`, `http_get`, `NXDOMAIN`), one table per enum;
//! each enum's `Display` writes the same name.

use std::fmt;

use super::schema::{
    CheckType, DnsRcode, DnsType, Forwarding, HttpMethod, InitialState, Protocol, Scheduler,
    VrrpAuthType, XdpMode,
};

/// An enum spelled as a YAML keyword.
pub(super) trait Keyword: Copy + PartialEq + 'static {
    /// What the value is, for messages ("scheduler").
    const WHAT: &'static str;
    const ALL: &'static [(&'static str, Self)];
    fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(n, _)| n)
    }
}

macro_rules! keywords {
    ($t:ty, $what:literal, [$($name:literal => $v:expr),* $(,)?]) => {
        impl Keyword for $t {
            const WHAT: &'static str = $what;
            const ALL: &'static [(&'static str, Self)] = &[$(($name, $v)),*];
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

keywords!(XdpMode, "XDP mode", ["auto" => XdpMode::Auto, "native" => XdpMode::Native, "generic" => XdpMode::Generic]);
keywords!(Protocol, "protocol", ["tcp" => Protocol::Tcp, "udp" => Protocol::Udp]);
keywords!(Forwarding, "forwarding method", [
    "dr" => Forwarding::Dr, "tun" => Forwarding::Tun, "nat" => Forwarding::Nat, "local" => Forwarding::Local,
]);
keywords!(Scheduler, "scheduler", [
    "rr" => Scheduler::Rr, "wrr" => Scheduler::Wrr, "lc" => Scheduler::Lc, "wlc" => Scheduler::Wlc,
    "lblc" => Scheduler::Lblc, "lblcr" => Scheduler::Lblcr, "dh" => Scheduler::Dh, "sh" => Scheduler::Sh,
    "sed" => Scheduler::Sed, "nq" => Scheduler::Nq, "mh" => Scheduler::Mh,
]);
keywords!(CheckType, "health check type", [
    "tcp" => CheckType::Tcp, "http_get" => CheckType::HttpGet, "ssl_get" => CheckType::SslGet,
    "smtp" => CheckType::Smtp, "dns" => CheckType::Dns, "udp" => CheckType::Udp,
    "ping" => CheckType::Ping, "misc" => CheckType::Misc,
]);
keywords!(InitialState, "initial state", ["down" => InitialState::Down, "up" => InitialState::Up]);
keywords!(HttpMethod, "HTTP method", [
    "GET" => HttpMethod::Get, "HEAD" => HttpMethod::Head, "POST" => HttpMethod::Post,
    "OPTIONS" => HttpMethod::Options,
]);
keywords!(DnsType, "DNS record type", [
    "A" => DnsType::A, "NS" => DnsType::Ns, "CNAME" => DnsType::Cname, "SOA" => DnsType::Soa,
    "PTR" => DnsType::Ptr, "MX" => DnsType::Mx, "TXT" => DnsType::Txt, "AAAA" => DnsType::Aaaa,
    "SRV" => DnsType::Srv, "ANY" => DnsType::Any,
]);
keywords!(DnsRcode, "DNS response code", [
    "NOERROR" => DnsRcode::NoError, "FORMERR" => DnsRcode::FormErr, "SERVFAIL" => DnsRcode::ServFail,
    "NXDOMAIN" => DnsRcode::NxDomain, "NOTIMP" => DnsRcode::NotImp, "REFUSED" => DnsRcode::Refused,
]);
keywords!(VrrpAuthType, "authentication type", ["pass" => VrrpAuthType::Pass, "ah" => VrrpAuthType::Ah]);
