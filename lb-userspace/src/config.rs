//! The configuration file: the YAML schema of product.md, its parsing and validation.
//!
//! Parsing has two layers. serde-saphyr reads the YAML into a private tree of
//! [`serde_saphyr::Spanned`] nodes (every key and value keeps its line and column); a
//! hand-written conversion then walks that tree into the public types below, so every error,
//! whether a wrong type, an unknown key or a semantic rule, is reported as
//! `FILE:LINE:COLUMN: path.to.key: message` with the path and the position of the offending
//! key or value. The public types are plain data; positions needed after parsing (for
//! [`Config::unsupported`]) live in the opaque [`Origin`] table inside [`Config`].
//!
//! Conventions: unknown keys are errors; a key given as `~` (null) counts as absent;
//! durations are strings such as `100ms`, `1s`, `1m30s`, `1.5s` (units `us`, `ms`, `s`, `m`,
//! `h`, `d`; a bare `0` is also accepted, any other number needs a unit).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde_saphyr::Spanned;

mod chunked;
pub use chunked::ParseCache;

// ------------------------------------------------------------------------------------------
// Public types
// ------------------------------------------------------------------------------------------

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node: Node,
    pub http: Http,
    pub conntrack: Conntrack,
    pub services: Vec<Service>,
    pub vrrp: Vec<VrrpInstance>,
    /// Where each service, backend and VRRP instance came from (file, line, column), for
    /// errors reported after parsing. Opaque; `Origin::default()` for a config built in code
    /// (its errors then carry no position). Ignored by `==`.
    #[serde(skip)]
    pub origin: Origin,
}

/// `node:` this load balancer node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Node {
    /// Where the XDP program attaches; at least one.
    pub interfaces: Vec<Interface>,
    /// Outer source address for IP-in-IP; `None`: the egress interface's address.
    pub tunnel_source: Option<IpAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub xdp_mode: XdpMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    #[default]
    Auto,
    Native,
    Generic,
}

/// `http:` the metrics / API listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Http {
    pub listen: SocketAddr,
    /// File holding the API bearer token; required when `listen` is not loopback.
    /// `token_file: ""` in the YAML is `None`.
    pub token_file: Option<PathBuf>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: DEFAULT_HTTP_LISTEN,
            token_file: None,
        }
    }
}

/// `conntrack:` the connection table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conntrack {
    /// Total entries across CPUs.
    pub max_entries: u32,
    #[serde(serialize_with = "ser_duration")]
    pub tcp_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub udp_timeout: Duration,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            max_entries: lb_common::CONNTRACK_DEFAULT_ENTRIES,
            tcp_timeout: Duration::from_secs(15 * 60),
            udp_timeout: Duration::from_secs(30),
        }
    }
}

/// One virtual service (`services[i]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    /// 0 = all ports of this VIP and protocol.
    pub port: u16,
    pub protocol: Protocol,
    pub scheduler: Scheduler,
    pub forwarding: Forwarding,
    /// 0 = none; >0: the same client IP goes to the same backend for that long.
    #[serde(serialize_with = "ser_duration")]
    pub persistence: Duration,
    pub sorry_server: Option<SocketAddr>,
    /// A prime <= 65537 (default 65537).
    pub maglev_table_size: u32,
    pub backends: Vec<Backend>,
    pub health_check: Option<HealthCheck>,
}

/// One real server (`services[i].backends[j]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Backend {
    pub address: IpAddr,
    /// Destination port after NAT; only allowed with `forwarding: nat` (default: the
    /// service's port).
    pub port: Option<u16>,
    /// 0..=65535; 0 = drained.
    pub weight: u32,
    /// Overrides the service's forwarding method for this backend.
    pub forwarding: Option<Forwarding>,
    /// Not from YAML: the weight a backend that fails its health check would have (its
    /// `weight` is then 0), set by `health::effect`. `mh` keeps the backend's place in the
    /// table at this weight and hands its slots to stand-ins, so that no other backend's
    /// slots move (see `lb_common::maglev`). 0 otherwise.
    #[serde(skip)]
    pub failed_weight: u32,
}

impl Backend {
    /// The backend's own forwarding method, or the service's.
    pub fn effective_forwarding(&self, svc: &Service) -> Forwarding {
        self.forwarding.unwrap_or(svc.forwarding)
    }

    /// The destination port packets reach this backend on: the backend's port for NAT when
    /// given, the service's (VIP's) port otherwise.
    pub fn effective_port(&self, svc: &Service) -> u16 {
        match self.effective_forwarding(svc) {
            Forwarding::Nat => self.port.unwrap_or(svc.port),
            _ => svc.port,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number: 6 for TCP, 17 for UDP.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::IPPROTO_TCP,
            Protocol::Udp => lb_common::IPPROTO_UDP,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// Direct routing: destination MAC rewrite.
    #[default]
    Dr,
    /// IP-in-IP tunnelling.
    Tun,
    /// Destination NAT (the LB is on the return path).
    Nat,
    /// Hand the packet to the local stack.
    Local,
}

/// The IPVS schedulers and Maglev.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    #[default]
    Mh,
}

/// `services[i].health_check`: how every backend of the service is checked. Keys keep
/// keepalived's names where it has one (`connect_port`, `retries`, `delay_before_retry`,
/// `digest`, `virtualhost`, `helo_name`, `inhibit_on_failure`); README.md documents them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// Port to check (default: the backend's port). Not for ping and misc.
    pub connect_port: Option<u16>,
    /// Time between two checks of one backend.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Bound on one attempt (connect, exchange, or the misc command's run).
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// Consecutive successful checks to go up (>= 1).
    pub rise: u32,
    /// Consecutive failed checks to go down (>= 1).
    pub fall: u32,
    /// Extra attempts within one check before it counts as failed.
    pub retries: u32,
    #[serde(serialize_with = "ser_duration")]
    pub delay_before_retry: Duration,
    /// true: a failed backend gets weight 0 (its established flows stay) instead of being
    /// removed (its flows move).
    pub inhibit_on_failure: bool,
    /// The state before the first checks: `down` (default) until `rise` successes.
    pub initial_state: InitialState,
    /// http_get, ssl_get: the request method (default GET).
    pub method: HttpMethod,
    /// http_get, ssl_get: the path requested; default `/`.
    pub path: String,
    /// http_get, ssl_get: the `Host` header (and, for ssl_get, the SNI name unless `sni`
    /// is given); default the backend's `ADDRESS:PORT`.
    pub virtualhost: Option<String>,
    /// http_get, ssl_get: accepted statuses (default 200 only).
    pub expect_status: Vec<StatusRange>,
    /// http_get, ssl_get: a regular expression the body must match.
    pub body_regex: Option<String>,
    /// http_get, ssl_get: MD5 of the body, 32 lowercase hex digits (keepalived's `digest`).
    pub digest: Option<String>,
    /// ssl_get: the name sent as SNI (default: `virtualhost`'s name, else none).
    pub sni: Option<String>,
    /// ssl_get: PEM file of CA certificates; when set, the backend's certificate must chain
    /// to one of them and be valid for the SNI name (or the backend's address).
    pub ca_file: Option<PathBuf>,
    /// smtp: the name sent with HELO (default `bascule`).
    pub helo_name: String,
    /// dns: the name queried (default `.`, the root).
    pub query_name: String,
    /// dns: the record type queried (default SOA).
    pub query_type: DnsType,
    /// dns: the response code that means up (default NOERROR).
    pub expect_rcode: DnsRcode,
    /// dns: a value that must be among the answers (an address for A/AAAA, a name for
    /// CNAME/NS/PTR/MX, the text for TXT).
    pub expect_answer: Option<String>,
    /// udp: the datagram sent (`hex:0a0b...` for binary; default empty).
    #[serde(serialize_with = "ser_bytes")]
    pub payload: Vec<u8>,
    /// udp: the reply must start with these bytes (implies `require_reply`).
    #[serde(serialize_with = "ser_opt_bytes")]
    pub expect: Option<Vec<u8>>,
    /// udp: without a reply within `timeout` the check fails (default: only an ICMP port
    /// unreachable fails it).
    pub require_reply: bool,
    /// misc: the command to run (`/bin/sh -c`), required for misc.
    pub command: Option<String>,
    /// misc: exit 0 up, 1 down, 2..=255 up with weight = code - 2 (keepalived's
    /// `misc_dynamic`).
    pub dynamic: bool,
}

impl HealthCheck {
    /// The defaults of every optional key, for a check of type `kind`.
    pub fn new(kind: CheckType) -> HealthCheck {
        let second = Duration::from_secs(1);
        HealthCheck {
            kind,
            connect_port: None,
            interval: second,
            timeout: second,
            rise: 2,
            fall: 3,
            retries: 0,
            delay_before_retry: second,
            inhibit_on_failure: false,
            initial_state: InitialState::Down,
            method: HttpMethod::Get,
            path: "/".into(),
            virtualhost: None,
            expect_status: vec![StatusRange { lo: 200, hi: 200 }],
            body_regex: None,
            digest: None,
            sni: None,
            ca_file: None,
            helo_name: "bascule".into(),
            query_name: ".".into(),
            query_type: DnsType::Soa,
            expect_rcode: DnsRcode::NoError,
            expect_answer: None,
            payload: Vec::new(),
            expect: None,
            require_reply: false,
            command: None,
            dynamic: false,
        }
    }

    /// Whether this kind of check talks to a port (all but ping and misc).
    pub fn uses_port(&self) -> bool {
        !matches!(self.kind, CheckType::Ping | CheckType::Misc)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckType {
    Tcp,
    HttpGet,
    SslGet,
    Smtp,
    Dns,
    Udp,
    Ping,
    Misc,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InitialState {
    #[default]
    Down,
    Up,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Head,
    Post,
    Options,
}

/// An inclusive range of HTTP statuses (`200`, `200-299`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatusRange {
    pub lo: u16,
    pub hi: u16,
}

impl StatusRange {
    pub fn contains(&self, status: u16) -> bool {
        (self.lo..=self.hi).contains(&status)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// DNS record types a `dns` check can query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsType {
    A,
    Ns,
    Cname,
    Soa,
    Ptr,
    Mx,
    Txt,
    Aaaa,
    Srv,
    Any,
}

impl DnsType {
    /// The record type number on the wire.
    pub fn code(self) -> u16 {
        match self {
            DnsType::A => 1,
            DnsType::Ns => 2,
            DnsType::Cname => 5,
            DnsType::Soa => 6,
            DnsType::Ptr => 12,
            DnsType::Mx => 15,
            DnsType::Txt => 16,
            DnsType::Aaaa => 28,
            DnsType::Srv => 33,
            DnsType::Any => 255,
        }
    }
}

/// DNS response codes (RFC 1035, 4.1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
}

impl DnsRcode {
    pub fn code(self) -> u8 {
        match self {
            DnsRcode::NoError => 0,
            DnsRcode::FormErr => 1,
            DnsRcode::ServFail => 2,
            DnsRcode::NxDomain => 3,
            DnsRcode::NotImp => 4,
            DnsRcode::Refused => 5,
        }
    }
}

/// `vrrp[i]`: one VRRP instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VrrpInstance {
    pub name: String,
    pub interface: String,
    /// 1..=255.
    pub virtual_router_id: u8,
    /// 1..=255 (255 = address owner); default 100.
    pub priority: u8,
    /// 2 (RFC 3768) or 3 (RFC 5798, the default).
    pub version: u8,
    #[serde(serialize_with = "ser_duration")]
    pub advert_interval: Duration,
    pub preempt: bool,
    #[serde(serialize_with = "ser_duration")]
    pub preempt_delay: Duration,
    /// Version 2 only.
    pub authentication: Option<VrrpAuth>,
    /// Empty: multicast (224.0.0.18 / ff02::12).
    pub unicast_peers: Vec<IpAddr>,
    /// At least one; all of one address family.
    pub virtual_addresses: Vec<IpPrefix>,
    pub garp: Garp,
    pub track_interfaces: Vec<String>,
    pub notify: Notify,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VrrpAuth {
    #[serde(rename = "type")]
    pub kind: VrrpAuthType,
    /// At most 8 bytes (what a VRRPv2 packet carries).
    pub password: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VrrpAuthType {
    Pass,
    Ah,
}

/// Gratuitous ARP / unsolicited neighbour advertisements on becoming master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Garp {
    /// How many to send.
    pub repeat: u32,
    /// Spacing between them.
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Re-send periodically while master; 0 = never.
    #[serde(serialize_with = "ser_duration")]
    pub refresh: Duration,
}

impl Default for Garp {
    fn default() -> Self {
        Garp {
            repeat: 5,
            interval: Duration::from_secs(1),
            refresh: Duration::ZERO,
        }
    }
}

/// Commands run on state changes (`""` in the YAML is `None`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Notify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
}

/// An address with a prefix length, `ADDR/PREFIX` (a bare address means a host prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl std::str::FromStr for IpPrefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("\"{a}\" is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match p {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && !p.starts_with('+') => n,
                _ => return Err(format!("prefix \"{p}\" is not in 0..={max}")),
            },
        };
        Ok(IpPrefix { addr, prefix_len })
    }
}

impl Serialize for IpPrefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A configuration error with its position: `FILE:LINE:COLUMN: message`.
/// `line` and `column` are 1-based; 0 when there is no position (e.g. the file cannot be read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, 0) => write!(f, "{}", self.message),
            (false, 0) => write!(f, "{}: {}", self.file, self.message),
            _ => write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Default `http.listen`.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9469);
/// Default and largest `maglev_table_size`.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = lb_common::MAGLEV_TABLE_SIZE;

// What the current daemon implements; `Config::unsupported` reports everything else.
// Shrink these lists as features land.
const SUPPORTED_SCHEDULERS: &[Scheduler] = &[
    Scheduler::Rr,
    Scheduler::Wrr,
    Scheduler::Lc,
    Scheduler::Wlc,
    Scheduler::Lblc,
    Scheduler::Lblcr,
    Scheduler::Dh,
    Scheduler::Sh,
    Scheduler::Sed,
    Scheduler::Nq,
    Scheduler::Mh,
];
const SUPPORTED_FORWARDING: &[Forwarding] = &[
    Forwarding::Dr,
    Forwarding::Tun,
    Forwarding::Nat,
    Forwarding::Local,
];
const SUPPORTS_PERSISTENCE: bool = true;
const SUPPORTS_SORRY_SERVER: bool = true;
const SUPPORTS_HEALTH_CHECKS: bool = true;
const SUPPORTED_VRRP_AUTH: &[VrrpAuthType] = &[VrrpAuthType::Pass];

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = read_config(path, &name)?;
        Config::parse(&text, &name)
    }

    /// Parses and validates a configuration; `file_name` is used in error messages.
    /// Returns the first error (in file order).
    ///
    /// A large file is parsed service by service on every core when its layout allows it
    /// (see `config/chunked.rs`: same result, same errors).
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        match chunked::parse(text, file_name, None) {
            Some(config) => Ok(config),
            None => Config::parse_whole(text, file_name),
        }
    }

    /// Like [`Config::parse`], reusing the services of `cache` whose text did not change
    /// (a reload parses what changed). On success `cache` holds this file's services; on
    /// error it is left as it was.
    pub fn parse_cached(
        text: &str,
        file_name: &str,
        cache: &mut ParseCache,
    ) -> Result<Config, ConfigError> {
        match chunked::parse(text, file_name, Some(cache)) {
            Some(config) => Ok(config),
            None => Config::parse_whole(text, file_name),
        }
    }

    /// Reads `path` and parses it with [`Config::parse_cached`].
    pub fn load_cached(
        path: &std::path::Path,
        cache: &mut ParseCache,
    ) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = read_config(path, &name)?;
        Config::parse_cached(&text, &name, cache)
    }

    /// The whole file in one parse (what the chunked parse must equal).
    fn parse_whole(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        Config::parse_all(text, file_name).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Config::parse`], but returns every error found (sorted by position, never
    /// empty). A YAML syntax error stops parsing, so it comes alone.
    pub fn parse_all(text: &str, file_name: &str) -> Result<Config, Vec<ConfigError>> {
        let root = read_yaml(text, file_name).map_err(|e| vec![e])?;
        let mut cx = Cx {
            text,
            file: file_name,
            errors: Vec::new(),
            interfaces: Vec::new(),
        };
        let config = cx.root(&root);
        match config {
            Some(c) if cx.errors.is_empty() => Ok(c),
            _ => {
                let mut errors = cx.errors;
                if errors.is_empty() {
                    // Cannot happen: every failed conversion records an error.
                    errors.push(cx_error(file_name, pos_of(&root), "invalid configuration"));
                }
                errors.sort_by_key(|e| (e.line, e.column));
                Err(errors)
            }
        }
    }

    /// Every feature this configuration uses that the current daemon does not implement yet,
    /// each with the position of the key or value that asks for it. Empty: all supported.
    pub fn unsupported(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let o = &self.origin;
        let err = |pos: Pos, message: String| ConfigError {
            file: o.file.clone(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        };
        for (i, svc) in self.services.iter().enumerate() {
            let loc = o.services.get(i).cloned().unwrap_or_default();
            if !SUPPORTED_SCHEDULERS.contains(&svc.scheduler) {
                out.push(err(
                    loc.scheduler,
                    format!(
                        "services[{i}].scheduler: \"{}\" is not supported yet (this build supports: {})",
                        svc.scheduler,
                        join(SUPPORTED_SCHEDULERS)
                    ),
                ));
            }
            if !SUPPORTED_FORWARDING.contains(&svc.forwarding) {
                out.push(err(
                    loc.forwarding,
                    format!(
                        "services[{i}].forwarding: \"{}\" is not supported yet (this build supports: {})",
                        svc.forwarding,
                        join(SUPPORTED_FORWARDING)
                    ),
                ));
            }
            if !SUPPORTS_PERSISTENCE && !svc.persistence.is_zero() {
                out.push(err(
                    loc.persistence,
                    format!(
                        "services[{i}].persistence: {} is not supported yet (this build supports: 0s)",
                        format_duration(svc.persistence)
                    ),
                ));
            }
            if !SUPPORTS_SORRY_SERVER {
                if let Some(sorry) = svc.sorry_server {
                    out.push(err(
                        loc.sorry_server,
                        format!("services[{i}].sorry_server: {sorry}: sorry servers are not supported yet (remove the key)"),
                    ));
                }
            }
            if !SUPPORTS_HEALTH_CHECKS && svc.health_check.is_some() {
                out.push(err(
                    loc.health_check,
                    format!("services[{i}].health_check: health checks are not supported yet (remove the key; backends are then always up)"),
                ));
            }
            for (j, b) in svc.backends.iter().enumerate() {
                if let Some(f) = b.forwarding {
                    if !SUPPORTED_FORWARDING.contains(&f) {
                        let at = loc.backends.get(j).map_or(loc.item, |b| b.forwarding);
                        out.push(err(
                            at,
                            format!(
                                "services[{i}].backends[{j}].forwarding: \"{f}\" is not supported yet (this build supports: {})",
                                join(SUPPORTED_FORWARDING)
                            ),
                        ));
                    }
                }
            }
        }
        for (k, inst) in self.vrrp.iter().enumerate() {
            if let Some(auth) = inst
                .authentication
                .as_ref()
                .filter(|a| !SUPPORTED_VRRP_AUTH.contains(&a.kind))
            {
                let at = o.vrrp_auth.get(k).or(o.vrrp.get(k)).copied();
                let at = at.unwrap_or_default();
                out.push(err(
                    at,
                    format!(
                        "vrrp[{k}].authentication.type: \"{}\" is not supported (this build supports: {}, as keepalived's auth_type PASS)",
                        auth.kind,
                        join(SUPPORTED_VRRP_AUTH)
                    ),
                ));
            }
        }
        out.sort_by_key(|e| (e.line, e.column));
        out
    }

    /// What this configuration asks of the node it runs on, checked against what the node
    /// has: every `node.interfaces` entry exists, and every VIP's address family is carried
    /// by at least one of them (an interface without an IPv6 address can neither receive
    /// an IPv6 VIP's traffic by neighbour discovery nor tunnel it). Empty: all fine.
    pub fn check_host(&self, host: &HostFacts) -> Vec<ConfigError> {
        let o = &self.origin;
        let err = |pos: Pos, message: String| ConfigError {
            file: o.file.clone(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        };
        let mut out = Vec::new();
        let known = {
            let mut names: Vec<&str> = host.interfaces.keys().map(String::as_str).collect();
            names.sort_unstable();
            names.join(", ")
        };
        for (i, iface) in self.node.interfaces.iter().enumerate() {
            if !host.interfaces.contains_key(&iface.name) {
                out.push(err(
                    o.interfaces.get(i).copied().unwrap_or_default(),
                    format!(
                        "node.interfaces[{i}].name: no interface \"{}\" on this node (it has: {})",
                        iface.name, known
                    ),
                ));
            }
        }
        for (i, svc) in self.services.iter().enumerate() {
            let carried = self.node.interfaces.iter().any(|iface| {
                host.interfaces.get(&iface.name).is_some_and(|addrs| {
                    addrs
                        .iter()
                        .any(|a| a.is_ipv4() == svc.vip.is_ipv4() && !link_local(a))
                })
            });
            if !carried {
                let names: Vec<&str> = self
                    .node
                    .interfaces
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect();
                out.push(err(
                    o.services.get(i).map_or_else(Pos::default, |l| l.vip),
                    format!(
                        "services[{i}].vip: no interface can reach {}: none of node.interfaces ({}) has an {} address; add one, or attach to an interface that has one",
                        svc.vip,
                        names.join(", "),
                        family(svc.vip)
                    ),
                ));
            }
        }
        // What a VRRP instance needs to start: its interface, and an address of the right
        // family to send adverts from (the same rule the instance applies).
        for (i, inst) in self.vrrp.iter().enumerate() {
            let pos = o.vrrp.get(i).copied().unwrap_or_default();
            let Some(addrs) = host.interfaces.get(&inst.interface) else {
                out.push(err(
                    pos,
                    format!(
                        "vrrp[{i}].interface: no interface \"{}\" on this node (it has: {})",
                        inst.interface, known
                    ),
                ));
                continue;
            };
            let v6 = inst.virtual_addresses.iter().any(|p| p.addr.is_ipv6());
            let vips: Vec<IpAddr> = inst.virtual_addresses.iter().map(|p| p.addr).collect();
            let source =
                crate::vrrp::primary_address(addrs.iter().copied(), &vips, v6, &inst.unicast_peers);
            if source.is_none() {
                let kind = if !v6 {
                    "IPv4"
                } else if inst.unicast_peers.iter().all(link_local) {
                    "IPv6 link-local"
                } else {
                    "global IPv6"
                };
                out.push(err(
                    pos,
                    format!(
                        "vrrp[{i}] ({}): interface {} has no {kind} address other than the virtual addresses to send adverts from; add one (`ip addr add ... dev {}`)",
                        inst.name, inst.interface, inst.interface
                    ),
                ));
            }
        }
        out.sort_by_key(|e| (e.line, e.column));
        out
    }
}

/// An IPv6 link-local address (fe80::/10).
fn link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80)
}

fn read_config(path: &std::path::Path, name: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read the configuration: {e}"),
    })
}

/// What [`Config::check_host`] needs to know about the node: its interfaces and their
/// addresses (global and link-local).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub interfaces: HashMap<String, Vec<IpAddr>>,
}

/// Positions of parsed items, kept for errors reported after parsing. Opaque.
#[derive(Clone, Default)]
pub struct Origin {
    file: String,
    services: Vec<ServiceLoc>,
    vrrp: Vec<Pos>,
    interfaces: Vec<Pos>,
    vrrp_auth: Vec<Pos>,
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Origin({:?})", self.file)
    }
}

/// Positions are bookkeeping, not configuration: two configs that differ only in where
/// things sit in the file are equal.
impl PartialEq for Origin {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Origin {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Pos {
    line: u32,
    column: u32,
}

#[derive(Clone, Debug, Default)]
struct ServiceLoc {
    item: Pos,
    vip: Pos,
    scheduler: Pos,
    forwarding: Pos,
    persistence: Pos,
    sorry_server: Pos,
    health_check: Pos,
    backends: Vec<BackendLoc>,
}

#[derive(Clone, Copy, Debug, Default)]
struct BackendLoc {
    forwarding: Pos,
}

// ------------------------------------------------------------------------------------------
// Names of enum values
// ------------------------------------------------------------------------------------------

/// An enum spelled as a YAML keyword.
trait Keyword: Copy + PartialEq + 'static {
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

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------------------------------------
// Durations
// ------------------------------------------------------------------------------------------

const DURATION_UNITS: &[(&str, u128)] = &[
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
    ("d", 86_400_000_000_000),
];

/// Parses `100ms`, `1s`, `5m`, `1h`, `1m30s`, `1.5s` (units us, ms, s, m, h, d; `0` alone is
/// also accepted). The error says what is wrong, e.g. `missing unit`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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
            int.parse().map_err(|_| "too large".to_string())?
        };
        let mut nanos = int.checked_mul(scale).ok_or("too large")?;
        let mut place = scale;
        for d in frac.bytes() {
            place /= 10;
            nanos += u128::from(d - b'0') * place;
        }
        total = total.checked_add(nanos).ok_or("too large")?;
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| "too large".to_string())?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
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

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
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
    let hex: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    if !hex.len().is_multiple_of(2) {
        return Err("an odd number of hex digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .map_err(|_| format!("\"{}\" is not a hex byte", &hex[i..i + 2]))
        })
        .collect()
}

fn ser_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_bytes(b))
}

fn ser_opt_bytes<S: serde::Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match b {
        Some(b) => s.serialize_str(&format_bytes(b)),
        None => s.serialize_none(),
    }
}

// ------------------------------------------------------------------------------------------
// The YAML tree (serde-saphyr with positions)
// ------------------------------------------------------------------------------------------

/// A YAML node with its position.
type Y = Spanned<Raw>;

enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Y>),
    Map(Vec<(Y, Y)>),
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
                Ok(i128::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                <Raw as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(item) = a.next_element()? {
                    v.push(item);
                }
                Ok(Raw::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    v.push(entry);
                }
                Ok(Raw::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn read_yaml(text: &str, file: &str) -> Result<Y, ConfigError> {
    let mut budget = serde_saphyr::Budget::default();
    // The file is the operator's own; allow large configurations (1,000 services x 100
    // backends is about 600,000 nodes), keep the depth and alias limits.
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Every entry reaches the tree, so duplicates are reported with their path below.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    serde_saphyr::from_str_with_options::<Y>(text, options).map_err(|e| {
        let pos = e
            .location()
            .filter(|l| l.line() > 0)
            .map_or(Pos { line: 1, column: 1 }, |l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            });
        let raw =
            serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, &e);
        let msg: String = raw
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        cx_error(file, pos, &format!("invalid YAML: {msg}"))
    })
}

fn pos_of(y: &Y) -> Pos {
    Pos {
        line: y.referenced.line() as u32,
        column: y.referenced.column() as u32,
    }
}

fn cx_error(file: &str, pos: Pos, message: &str) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        line: pos.line as usize,
        column: pos.column as usize,
        message: message.to_owned(),
    }
}

/// A path in the document, rendered like `services[1].backends[0].weight`.
#[derive(Clone, Copy)]
enum P<'a> {
    Root,
    Key(&'a P<'a>, &'a str),
    Idx(&'a P<'a>, usize),
}

impl P<'_> {
    fn is_root(&self) -> bool {
        matches!(self, P::Root)
    }
}

impl fmt::Display for P<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P::Root => Ok(()),
            P::Key(parent, k) if parent.is_root() => f.write_str(k),
            P::Key(parent, k) => write!(f, "{parent}.{k}"),
            P::Idx(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A mapping whose keys have been checked against the schema.
struct Obj<'y> {
    pos: Pos,
    entries: Vec<(&'y str, &'y Y)>,
}

impl<'y> Obj<'y> {
    /// The value of `key`, `None` when absent or null.
    fn opt(&self, key: &str) -> Option<&'y Y> {
        self.entries
            .iter()
            .find(|(k, v)| *k == key && !matches!(v.value, Raw::Null))
            .map(|(_, v)| *v)
    }
    /// Position of the value of `key`, or of the mapping when absent.
    fn pos(&self, key: &str) -> Pos {
        self.opt(key).map_or(self.pos, pos_of)
    }
}

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

/// Linux interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

/// Service and instance names appear in metric labels and API paths.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

// ------------------------------------------------------------------------------------------
// Conversion from the tree to the public types, with validation
// ------------------------------------------------------------------------------------------

struct Cx<'t> {
    text: &'t str,
    file: &'t str,
    errors: Vec<ConfigError>,
    /// Positions of `node.interfaces[i].name`, for [`Config::check_host`].
    interfaces: Vec<Pos>,
}

/// A service as converted, with the positions its cross-checks need.
struct SvcDraft {
    svc: Service,
    loc: ServiceLoc,
    name_pos: Pos,
}

/// A VRRP instance as converted, with positions.
struct VrrpDraft {
    inst: VrrpInstance,
    item: Pos,
    name_pos: Pos,
    vrid_pos: Pos,
    auth_pos: Pos,
}

const ROOT_KEYS: &[&str] = &["node", "http", "conntrack", "services", "vrrp"];
const NODE_KEYS: &[&str] = &["interfaces", "tunnel_source"];
const IFACE_KEYS: &[&str] = &["name", "xdp_mode"];
const HTTP_KEYS: &[&str] = &["listen", "token_file"];
const CONNTRACK_KEYS: &[&str] = &["max_entries", "tcp_timeout", "udp_timeout"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "scheduler",
    "forwarding",
    "persistence",
    "sorry_server",
    "maglev_table_size",
    "backends",
    "health_check",
];
const BACKEND_KEYS: &[&str] = &["address", "port", "weight", "forwarding"];
const CHECK_KEYS: &[&str] = &[
    "type",
    "connect_port",
    "interval",
    "timeout",
    "rise",
    "fall",
    "retries",
    "delay_before_retry",
    "inhibit_on_failure",
    "initial_state",
    "method",
    "path",
    "virtualhost",
    "expect_status",
    "body_regex",
    "digest",
    "sni",
    "ca_file",
    "helo_name",
    "query_name",
    "query_type",
    "expect_rcode",
    "expect_answer",
    "payload",
    "expect",
    "require_reply",
    "command",
    "dynamic",
];
/// Keys that only some check types use, with the types (named as in messages).
const CHECK_KEYS_BY_TYPE: &[(&str, &[CheckType], &str)] = &[
    (
        "connect_port",
        &[
            CheckType::Tcp,
            CheckType::HttpGet,
            CheckType::SslGet,
            CheckType::Smtp,
            CheckType::Dns,
            CheckType::Udp,
        ],
        "tcp, http_get, ssl_get, smtp, dns or udp",
    ),
    ("method", HTTP_CHECKS, "http_get or ssl_get"),
    ("path", HTTP_CHECKS, "http_get or ssl_get"),
    ("virtualhost", HTTP_CHECKS, "http_get or ssl_get"),
    ("expect_status", HTTP_CHECKS, "http_get or ssl_get"),
    ("body_regex", HTTP_CHECKS, "http_get or ssl_get"),
    ("digest", HTTP_CHECKS, "http_get or ssl_get"),
    ("sni", &[CheckType::SslGet], "ssl_get"),
    ("ca_file", &[CheckType::SslGet], "ssl_get"),
    ("helo_name", &[CheckType::Smtp], "smtp"),
    ("query_name", &[CheckType::Dns], "dns"),
    ("query_type", &[CheckType::Dns], "dns"),
    ("expect_rcode", &[CheckType::Dns], "dns"),
    ("expect_answer", &[CheckType::Dns], "dns"),
    ("payload", &[CheckType::Udp], "udp"),
    ("expect", &[CheckType::Udp], "udp"),
    ("require_reply", &[CheckType::Udp], "udp"),
    ("command", &[CheckType::Misc], "misc"),
    ("dynamic", &[CheckType::Misc], "misc"),
];
const HTTP_CHECKS: &[CheckType] = &[CheckType::HttpGet, CheckType::SslGet];
const VRRP_KEYS: &[&str] = &[
    "name",
    "interface",
    "virtual_router_id",
    "priority",
    "version",
    "advert_interval",
    "preempt",
    "preempt_delay",
    "authentication",
    "unicast_peers",
    "virtual_addresses",
    "garp",
    "track_interfaces",
    "notify",
];
const AUTH_KEYS: &[&str] = &["type", "password"];
const GARP_KEYS: &[&str] = &["repeat", "interval", "refresh"];
const NOTIFY_KEYS: &[&str] = &["master", "backup", "fault"];

impl<'t> Cx<'t> {
    fn err(&mut self, pos: Pos, path: &P, msg: impl fmt::Display) {
        let message = if path.is_root() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        });
    }

    /// The scalar as written in the file (for values YAML typed as numbers or booleans).
    fn source_text(&self, y: &Y) -> Option<String> {
        let span = y.defined.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let s = self.text.get(start..start + len)?;
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// "the string \"x\"", "a list", ... for "found ..." in messages.
    fn describe(&self, y: &Y) -> String {
        match &y.value {
            Raw::Null => "nothing (null)".into(),
            Raw::Bool(b) => format!(
                "the boolean {}",
                self.source_text(y).unwrap_or(b.to_string())
            ),
            Raw::Int(i) => format!(
                "the number {}",
                self.source_text(y).unwrap_or(i.to_string())
            ),
            Raw::Float(x) => format!(
                "the number {}",
                self.source_text(y).unwrap_or(x.to_string())
            ),
            Raw::Str(s) => format!("the string {s:?}"),
            Raw::Seq(_) => "a list".into(),
            Raw::Map(_) => "a mapping".into(),
        }
    }

    /// Checks that `y` is a mapping with only `keys`, reporting unknown and repeated keys.
    /// A null value is an empty mapping.
    fn obj<'y>(&mut self, y: &'y Y, path: &P, keys: &[&str]) -> Option<Obj<'y>> {
        let pos = pos_of(y);
        let map: &[(Y, Y)] = match &y.value {
            Raw::Map(m) => m,
            Raw::Null => &[],
            _ => {
                let found = self.describe(y);
                let what = if path.is_root() {
                    format!(
                        "the configuration must be a mapping with the keys {}, found {found}",
                        keys.join(", ")
                    )
                } else {
                    format!(
                        "expected a mapping with the keys {}, found {found}",
                        keys.join(", ")
                    )
                };
                self.err(pos, path, what);
                return None;
            }
        };
        let mut entries: Vec<(&'y str, &'y Y)> = Vec::with_capacity(map.len());
        let mut first_seen: Vec<(&'y str, Pos)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let kpos = pos_of(k);
            let Raw::Str(name) = &k.value else {
                let text = self.source_text(k).unwrap_or_else(|| self.describe(k));
                self.err(
                    kpos,
                    path,
                    format!("unknown key {text:?}, expected one of: {}", keys.join(", ")),
                );
                continue;
            };
            let name = name.as_str();
            let kp = P::Key(path, name);
            if !keys.contains(&name) {
                let hint = keys
                    .iter()
                    .map(|c| (distance(name, c), c))
                    .filter(|(d, c)| *d <= 2 && *d < c.len())
                    .min()
                    .map(|(_, c)| format!(" (did you mean \"{c}\"?)"))
                    .unwrap_or_default();
                self.err(
                    kpos,
                    &kp,
                    format!("unknown key{hint}, expected one of: {}", keys.join(", ")),
                );
                continue;
            }
            if let Some((_, first)) = first_seen.iter().find(|(n, _)| *n == name) {
                let line = first.line;
                self.err(
                    kpos,
                    &kp,
                    format!("duplicate key, already given at line {line}"),
                );
                continue;
            }
            first_seen.push((name, kpos));
            entries.push((name, v));
        }
        Some(Obj { pos, entries })
    }

    /// The value of a required key (absent or null: an error).
    fn req<'y>(&mut self, o: &Obj<'y>, path: &P, key: &str) -> Option<&'y Y> {
        match o.entries.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(*v),
            None => {
                if path.is_root() {
                    self.err(
                        o.pos,
                        path,
                        format!("missing required top-level key \"{key}\""),
                    );
                } else {
                    self.err(o.pos, path, format!("missing required key \"{key}\""));
                }
                None
            }
        }
    }

    /// A list; null is an empty list. `f` converts one item.
    fn list<'y, T>(
        &mut self,
        y: Option<&'y Y>,
        path: &P,
        what: &str,
        mut f: impl FnMut(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Some(y) = y else {
            return Some(Vec::new());
        };
        match &y.value {
            Raw::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match f(self, item, &P::Idx(path, i)) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Raw::Null => Some(Vec::new()),
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected a list of {what}, found {found}"),
                );
                None
            }
        }
    }

    /// A string; numbers and booleans count as their source text (`name: 80` is "80").
    fn string(&mut self, y: &Y, path: &P) -> Option<String> {
        match &y.value {
            Raw::Str(s) => Some(s.clone()),
            Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => self.source_text(y),
            _ => {
                let found = self.describe(y);
                self.err(pos_of(y), path, format!("expected a string, found {found}"));
                None
            }
        }
    }

    /// A string converted by `parse`; its error is "is not a valid {what}, expected {hint}".
    fn parsed<T>(
        &mut self,
        y: &Y,
        path: &P,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let s = match &y.value {
            Raw::Str(s) => s.clone(),
            Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => self.source_text(y)?,
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected {expected}, found {found}"),
                );
                return None;
            }
        };
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

    fn ip(&mut self, y: &Y, path: &P) -> Option<IpAddr> {
        self.parsed(
            y,
            path,
            "an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)",
            |s| s.parse().ok(),
        )
    }

    fn socket_addr(&mut self, y: &Y, path: &P) -> Option<SocketAddr> {
        self.parsed(
            y,
            path,
            "ADDRESS:PORT (e.g. 10.0.0.1:80 or [fd00::1]:80)",
            |s| s.parse().ok(),
        )
    }

    fn prefix(&mut self, y: &Y, path: &P) -> Option<IpPrefix> {
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

    fn duration(&mut self, y: &Y, path: &P) -> Option<Duration> {
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
    fn positive_duration(&mut self, y: &Y, path: &P) -> Option<Duration> {
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

    fn int(&mut self, y: &Y, path: &P, lo: i128, hi: i128) -> Option<i128> {
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

    fn u16(&mut self, y: &Y, path: &P, lo: u16) -> Option<u16> {
        self.int(y, path, lo.into(), u16::MAX.into())
            .map(|v| v as u16)
    }

    fn u32(&mut self, y: &Y, path: &P, lo: u32, hi: u32) -> Option<u32> {
        self.int(y, path, lo.into(), hi.into()).map(|v| v as u32)
    }

    fn u8(&mut self, y: &Y, path: &P, lo: u8) -> Option<u8> {
        self.int(y, path, lo.into(), u8::MAX.into())
            .map(|v| v as u8)
    }

    fn boolean(&mut self, y: &Y, path: &P) -> Option<bool> {
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

    fn keyword<T: Keyword>(&mut self, y: &Y, path: &P) -> Option<T> {
        let names: Vec<&str> = T::ALL.iter().map(|(n, _)| *n).collect();
        let s = match &y.value {
            Raw::Str(s) => s.clone(),
            Raw::Bool(_) | Raw::Int(_) | Raw::Float(_) => self.source_text(y)?,
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!(
                        "expected a {}, one of: {}, found {found}",
                        T::WHAT,
                        names.join(", ")
                    ),
                );
                return None;
            }
        };
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

    /// Optional key converted by `f`; `default` when absent. Errors make it `None`.
    fn field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        default: T,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<T> {
        match o.opt(key) {
            Some(y) => f(self, y, &P::Key(path, key)),
            None => Some(default),
        }
    }

    /// Optional key converted by `f`: `Some(None)` when absent, `None` on error.
    fn opt_field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<Option<T>> {
        match o.opt(key) {
            Some(y) => f(self, y, &P::Key(path, key)).map(Some),
            None => Some(None),
        }
    }

    /// Required key converted by `f`.
    fn req_field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<T> {
        let y = self.req(o, path, key)?;
        f(self, y, &P::Key(path, key))
    }

    // ----- sections -----

    fn root(&mut self, y: &Y) -> Option<Config> {
        let path = P::Root;
        if matches!(y.value, Raw::Null) {
            self.err(
                pos_of(y),
                &path,
                "the configuration is empty: missing required top-level key \"node\"",
            );
            return None;
        }
        let o = self.obj(y, &path, ROOT_KEYS)?;
        let node = self.req_field(&o, &path, "node", Self::node);
        let http = self.field(&o, &path, "http", Http::default(), Self::http);
        let conntrack = self.field(
            &o,
            &path,
            "conntrack",
            Conntrack::default(),
            Self::conntrack,
        );
        let services_path = P::Key(&path, "services");
        let services = self.list(o.opt("services"), &services_path, "services", Self::service);
        let vrrp_path = P::Key(&path, "vrrp");
        let vrrp = self.list(o.opt("vrrp"), &vrrp_path, "VRRP instances", Self::vrrp);

        let services = services.map(|s| self.check_services(s));
        let vrrp = vrrp.map(|v| self.check_vrrp(v));

        let (node, http, conntrack, services, vrrp) = (node?, http?, conntrack?, services?, vrrp?);
        let origin = Origin {
            file: self.file.to_owned(),
            services: services.iter().map(|d| d.loc.clone()).collect(),
            vrrp: vrrp.iter().map(|d| d.item).collect(),
            interfaces: std::mem::take(&mut self.interfaces),
            vrrp_auth: vrrp.iter().map(|d| d.auth_pos).collect(),
        };
        Some(Config {
            node,
            http,
            conntrack,
            services: services.into_iter().map(|d| d.svc).collect(),
            vrrp: vrrp.into_iter().map(|d| d.inst).collect(),
            origin,
        })
    }

    fn node(&mut self, y: &Y, path: &P) -> Option<Node> {
        let o = self.obj(y, path, NODE_KEYS)?;
        let ifaces_path = P::Key(path, "interfaces");
        let interfaces = match self.req(&o, path, "interfaces") {
            Some(list) => {
                let v = self.list(Some(list), &ifaces_path, "interfaces", Self::interface);
                if let Some(v) = &v {
                    if v.is_empty() {
                        self.err(
                            pos_of(list),
                            &ifaces_path,
                            "expected at least one interface (- name: eth0), found an empty list",
                        );
                        return None;
                    }
                    // Duplicate names: report the second one.
                    if let Raw::Seq(items) = &list.value {
                        self.interfaces = items.iter().map(|i| o_pos_of_key(i, "name")).collect();
                        let mut seen: HashMap<&str, usize> = HashMap::new();
                        for (i, (iface, item)) in v.iter().zip(items).enumerate() {
                            if let Some(first) = seen.insert(iface.name.as_str(), i) {
                                seen.insert(iface.name.as_str(), first);
                                let at = o_pos_of_key(item, "name");
                                self.err(
                                    at,
                                    &P::Key(&P::Idx(&ifaces_path, i), "name"),
                                    format!(
                                        "interface \"{}\" is listed twice (also interfaces[{first}])",
                                        iface.name
                                    ),
                                );
                            }
                        }
                    }
                }
                v
            }
            None => None,
        };
        let tunnel_source = self.opt_field(&o, path, "tunnel_source", Self::ip);
        Some(Node {
            interfaces: interfaces?,
            tunnel_source: tunnel_source?,
        })
    }

    fn interface(&mut self, y: &Y, path: &P) -> Option<Interface> {
        let o = self.obj(y, path, IFACE_KEYS)?;
        let name = self.req_field(&o, path, "name", Self::ifname);
        let xdp_mode = self.field(&o, path, "xdp_mode", XdpMode::Auto, Self::keyword);
        Some(Interface {
            name: name?,
            xdp_mode: xdp_mode?,
        })
    }

    fn ifname(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if !valid_ifname(&s) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not a valid interface name, expected 1 to 15 characters without '/', ':' or spaces"),
            );
            return None;
        }
        Some(s)
    }

    fn http(&mut self, y: &Y, path: &P) -> Option<Http> {
        let o = self.obj(y, path, HTTP_KEYS)?;
        let listen = self.field(&o, path, "listen", DEFAULT_HTTP_LISTEN, Self::socket_addr)?;
        let token_file = self.field(&o, path, "token_file", String::new(), Self::string)?;
        let token_file = (!token_file.is_empty()).then(|| PathBuf::from(token_file));
        if token_file.is_none() && !is_loopback(listen.ip()) {
            self.err(
                o.pos("listen"),
                &P::Key(path, "listen"),
                format!("{listen} is not a loopback address, so http.token_file is required (a file holding the API bearer token)"),
            );
            return None;
        }
        Some(Http { listen, token_file })
    }

    fn conntrack(&mut self, y: &Y, path: &P) -> Option<Conntrack> {
        let o = self.obj(y, path, CONNTRACK_KEYS)?;
        let d = Conntrack::default();
        let max_entries = self.field(&o, path, "max_entries", d.max_entries, |cx, y, p| {
            cx.u32(y, p, 1, u32::MAX)
        });
        let tcp = self.field(
            &o,
            path,
            "tcp_timeout",
            d.tcp_timeout,
            Self::positive_duration,
        );
        let udp = self.field(
            &o,
            path,
            "udp_timeout",
            d.udp_timeout,
            Self::positive_duration,
        );
        Some(Conntrack {
            max_entries: max_entries?,
            tcp_timeout: tcp?,
            udp_timeout: udp?,
        })
    }

    fn service(&mut self, y: &Y, path: &P) -> Option<SvcDraft> {
        let o = self.obj(y, path, SERVICE_KEYS)?;
        let name = self.req_field(&o, path, "name", |cx, y, p| {
            let s = cx.string(y, p)?;
            if !valid_name(&s) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not a valid service name, expected letters, digits, '.', '_' or '-'"),
                );
                return None;
            }
            Some(s)
        });
        let vip = self.req_field(&o, path, "vip", Self::ip);
        let port = self.req_field(&o, path, "port", |cx, y, p| cx.u16(y, p, 0));
        let protocol = self.field(&o, path, "protocol", Protocol::Tcp, Self::keyword);
        let scheduler = self.field(&o, path, "scheduler", Scheduler::Mh, Self::keyword);
        let forwarding = self.field(&o, path, "forwarding", Forwarding::Dr, Self::keyword);
        let persistence = self.field(&o, path, "persistence", Duration::ZERO, Self::duration);
        let sorry_server = self.opt_field(&o, path, "sorry_server", Self::socket_addr);
        let table = self.field(
            &o,
            path,
            "maglev_table_size",
            DEFAULT_MAGLEV_TABLE_SIZE,
            |cx, y, p| {
                let v = cx.u32(y, p, 0, u32::MAX)?;
                if v > DEFAULT_MAGLEV_TABLE_SIZE || !lb_common::maglev::is_prime(v) {
                    let why = if v > DEFAULT_MAGLEV_TABLE_SIZE { "is too large" } else { "is not prime" };
                    cx.err(
                        pos_of(y),
                        p,
                        format!("{v} {why}, expected a prime number up to {DEFAULT_MAGLEV_TABLE_SIZE} (e.g. 251, 4093, 65521, 65537)"),
                    );
                    return None;
                }
                Some(v)
            },
        );
        let health_check = self.opt_field(&o, path, "health_check", Self::health_check);

        // Backends need the service's VIP, port and forwarding for their checks.
        let backends_path = P::Key(path, "backends");
        let backends = match (vip, port, forwarding) {
            (Some(vip), Some(port), Some(fwd)) => {
                let ctx = BackendCtx {
                    vip,
                    port,
                    forwarding: fwd,
                };
                self.list(o.opt("backends"), &backends_path, "backends", |cx, y, p| {
                    cx.backend(y, p, &ctx)
                })
            }
            _ => None,
        };

        let (name, vip, port, protocol, scheduler, forwarding, persistence) = (
            name?,
            vip?,
            port?,
            protocol?,
            scheduler?,
            forwarding?,
            persistence?,
        );
        let (sorry_server, maglev_table_size, health_check) =
            (sorry_server?, table?, health_check?);
        let backends = backends?;

        let mut ok = true;
        // Duplicate backends (same address and destination port): report the second.
        let mut seen: HashMap<(IpAddr, u16), usize> = HashMap::new();
        for (j, (b, loc)) in backends.iter().enumerate() {
            let eff_port = match b.forwarding.unwrap_or(forwarding) {
                Forwarding::Nat => b.port.unwrap_or(port),
                _ => port,
            };
            if let Some(&first) = seen.get(&(b.address, eff_port)) {
                let shown =
                    if b.port.is_some() || b.forwarding.unwrap_or(forwarding) == Forwarding::Nat {
                        SocketAddr::new(b.address, eff_port).to_string()
                    } else {
                        b.address.to_string()
                    };
                self.err(
                    loc.address,
                    &P::Key(&P::Idx(&backends_path, j), "address"),
                    format!(
                        "backend {shown} is listed twice (also backends[{first}] at line {})",
                        backends[first].1.address.line
                    ),
                );
                ok = false;
            } else {
                seen.insert((b.address, eff_port), j);
            }
        }
        if scheduler == Scheduler::Mh && backends.len() > maglev_table_size as usize {
            self.err(
                o.pos("maglev_table_size"),
                &P::Key(path, "maglev_table_size"),
                format!(
                    "{maglev_table_size} is smaller than the number of backends ({}), expected a larger prime",
                    backends.len()
                ),
            );
            ok = false;
        }
        if let Some(hc) = &health_check {
            if port == 0 && hc.uses_port() && hc.connect_port.is_none() {
                self.err(
                    o.pos("health_check"),
                    &P::Key(path, "health_check"),
                    format!(
                        "type {} needs a port but the service's port is 0 (all ports): set health_check.connect_port",
                        hc.kind
                    ),
                );
                ok = false;
            }
        }
        if let Some(sorry) = sorry_server {
            if let Some(why) = family_mismatch(vip, sorry.ip(), &sorry, forwarding) {
                self.err(o.pos("sorry_server"), &P::Key(path, "sorry_server"), why);
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        let loc = ServiceLoc {
            item: o.pos,
            vip: o.pos("vip"),
            scheduler: o.pos("scheduler"),
            forwarding: o.pos("forwarding"),
            persistence: o.pos("persistence"),
            sorry_server: o.pos("sorry_server"),
            health_check: o.pos("health_check"),
            backends: backends
                .iter()
                .map(|(_, l)| BackendLoc {
                    forwarding: l.forwarding,
                })
                .collect(),
        };
        Some(SvcDraft {
            name_pos: o.pos("name"),
            loc,
            svc: Service {
                name,
                vip,
                port,
                protocol,
                scheduler,
                forwarding,
                persistence,
                sorry_server,
                maglev_table_size,
                backends: backends.into_iter().map(|(b, _)| b).collect(),
                health_check,
            },
        })
    }

    fn backend(&mut self, y: &Y, path: &P, s: &BackendCtx) -> Option<(Backend, BackendPos)> {
        let o = self.obj(y, path, BACKEND_KEYS)?;
        let address = self.req_field(&o, path, "address", Self::ip);
        let port = self.opt_field(&o, path, "port", |cx, y, p| cx.u16(y, p, 1));
        let weight = self.field(&o, path, "weight", 1, |cx, y, p| cx.u32(y, p, 0, 65535));
        let forwarding = self.opt_field(&o, path, "forwarding", Self::keyword);
        let (address, port, weight, forwarding) = (address?, port?, weight?, forwarding?);
        let eff = forwarding.unwrap_or(s.forwarding);
        let mut ok = true;
        if port.is_some() {
            let why = match eff {
                Forwarding::Nat if s.port == 0 => Some("backend port cannot be used when the service port is 0 (all ports): NAT then keeps the client's destination port"),
                Forwarding::Nat => None,
                Forwarding::Dr | Forwarding::Tun => Some("backend port is only used with forwarding: nat; dr and tun keep the VIP port"),
                Forwarding::Local => Some("backend port is only used with forwarding: nat; local keeps the VIP port"),
            };
            if let Some(why) = why {
                self.err(o.pos("port"), &P::Key(path, "port"), why);
                ok = false;
            }
        }
        if let Some(why) = family_mismatch(s.vip, address, &address, eff) {
            self.err(o.pos("address"), &P::Key(path, "address"), why);
            ok = false;
        }
        ok.then_some((
            Backend {
                address,
                port,
                weight,
                forwarding,
                failed_weight: 0,
            },
            BackendPos {
                address: o.pos("address"),
                forwarding: o.pos("forwarding"),
            },
        ))
    }

    fn health_check(&mut self, y: &Y, path: &P) -> Option<HealthCheck> {
        let o = self.obj(y, path, CHECK_KEYS)?;
        let kind: CheckType = self.req_field(&o, path, "type", Self::keyword)?;
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
        if !ok {
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
        let check_path = self.field(&o, path, "path", d.path.clone(), |cx, y, p| {
            let s = cx.string(y, p)?;
            if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not valid, expected an absolute path without spaces such as /healthz"),
                );
                return None;
            }
            Some(s)
        });
        let virtualhost = self.opt_field(&o, path, "virtualhost", |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not valid, expected a host name such as www.example.com (optionally with :PORT)"),
                );
                return None;
            }
            Some(s)
        });
        let expect_status = self.field(
            &o,
            path,
            "expect_status",
            d.expect_status.clone(),
            Self::status_ranges,
        );
        let body_regex = self.opt_field(&o, path, "body_regex", |cx, y, p| {
            let s = cx.string(y, p)?;
            match regex::bytes::Regex::new(&s) {
                Ok(_) => Some(s),
                Err(e) => {
                    let why = e.to_string().replace('\n', " ");
                    cx.err(
                        pos_of(y),
                        p,
                        format!("{s:?} is not a valid regular expression: {why}"),
                    );
                    None
                }
            }
        });
        let digest = self.opt_field(&o, path, "digest", |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.len() != 32 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not valid, expected an MD5 digest of 32 hex digits (as printed by md5sum)"),
                );
                return None;
            }
            Some(s.to_ascii_lowercase())
        });
        let sni = self.opt_field(&o, path, "sni", |cx, y, p| {
            let s = cx.string(y, p)?;
            match rustls::pki_types::ServerName::try_from(s.as_str()) {
                Ok(rustls::pki_types::ServerName::DnsName(_)) => Some(s),
                _ => {
                    cx.err(
                        pos_of(y),
                        p,
                        format!("{s:?} is not valid, expected a DNS name such as www.example.com"),
                    );
                    None
                }
            }
        });
        let ca_file = self.opt_field(&o, path, "ca_file", |cx, y, p| {
            let s = cx.string(y, p)?;
            let why = match std::fs::read_to_string(&s) {
                Ok(text) if text.contains("-----BEGIN CERTIFICATE-----") => {
                    return Some(PathBuf::from(s))
                }
                Ok(_) => "it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string(),
                Err(e) => format!("cannot read it: {e}"),
            };
            cx.err(
                pos_of(y),
                p,
                format!("{s:?}: {why}; expected a PEM file of CA certificates"),
            );
            None
        });
        let helo_name = self.field(&o, path, "helo_name", d.helo_name.clone(), |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not valid, expected a host name such as lb1.example.com"),
                );
                return None;
            }
            Some(s)
        });
        let query_name = self.field(&o, path, "query_name", d.query_name.clone(), |cx, y, p| {
            let s = cx.string(y, p)?;
            if let Err(why) = check_dns_name(&s) {
                cx.err(
                    pos_of(y),
                    p,
                    format!(
                        "{s:?} is not a valid DNS name ({why}), expected e.g. example.com or ."
                    ),
                );
                return None;
            }
            Some(s)
        });
        let query_type = self.field(&o, path, "query_type", d.query_type, Self::keyword);
        let expect_rcode = self.field(&o, path, "expect_rcode", d.expect_rcode, Self::keyword);
        let expect_answer = self.opt_field(&o, path, "expect_answer", Self::string);
        let payload = self.field(&o, path, "payload", Vec::new(), Self::bytes);
        let expect = self.opt_field(&o, path, "expect", Self::bytes);
        let require_reply = self.field(&o, path, "require_reply", false, Self::boolean);
        let command = self.opt_field(&o, path, "command", Self::string);
        let dynamic = self.field(&o, path, "dynamic", false, Self::boolean);

        if kind == CheckType::Misc && o.opt("command").is_none() {
            self.err(
                o.pos,
                path,
                "missing required key \"command\" (type misc runs it)",
            );
            ok = false;
        }
        let (command, method, query_type) = (command?, method?, query_type?);
        if let Some(c) = &command {
            if c.trim().is_empty() {
                self.err(
                    o.pos("command"),
                    &P::Key(path, "command"),
                    "must not be empty",
                );
                ok = false;
            }
        }
        let (body_regex, digest) = (body_regex?, digest?);
        if method == HttpMethod::Head && (body_regex.is_some() || digest.is_some()) {
            let key = if body_regex.is_some() {
                "body_regex"
            } else {
                "digest"
            };
            self.err(
                o.pos(key),
                &P::Key(path, key),
                "a HEAD response has no body to check; use method GET",
            );
            ok = false;
        }
        let expect_answer = expect_answer?;
        if let Some(answer) = &expect_answer {
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
            if let Some(why) = why {
                self.err(
                    o.pos("expect_answer"),
                    &P::Key(path, "expect_answer"),
                    format!("{answer:?}: {why}"),
                );
                ok = false;
            }
        }
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

    /// A payload: text, or `hex:` followed by hex digits.
    fn bytes(&mut self, y: &Y, path: &P) -> Option<Vec<u8>> {
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

    /// Cross-service checks: duplicate (vip, port, protocol) and duplicate names.
    fn check_services(&mut self, drafts: Vec<SvcDraft>) -> Vec<SvcDraft> {
        let mut by_key: HashMap<(IpAddr, u16, Protocol), usize> = HashMap::new();
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, d) in drafts.iter().enumerate() {
            let s = &d.svc;
            let path_items = P::Key(&P::Root, "services");
            if let Some(&first) = by_key.get(&(s.vip, s.port, s.protocol)) {
                errors.push((
                    d.loc.item,
                    P::Idx(&path_items, i).to_string(),
                    format!(
                        "duplicate service {}/{}, already defined by services[{first}] (\"{}\") at line {}",
                        SocketAddr::new(s.vip, s.port),
                        s.protocol,
                        drafts[first].svc.name,
                        drafts[first].loc.item.line
                    ),
                ));
            } else {
                by_key.insert((s.vip, s.port, s.protocol), i);
            }
            if let Some(&first) = by_name.get(s.name.as_str()) {
                errors.push((
                    d.name_pos,
                    format!("services[{i}].name"),
                    format!(
                        "duplicate service name \"{}\", already used by services[{first}] at line {}",
                        s.name, drafts[first].name_pos.line
                    ),
                ));
            } else {
                by_name.insert(s.name.as_str(), i);
            }
        }
        for (pos, path, msg) in errors {
            self.errors.push(ConfigError {
                file: self.file.to_owned(),
                line: pos.line as usize,
                column: pos.column as usize,
                message: format!("{path}: {msg}"),
            });
        }
        drafts
    }

    fn vrrp(&mut self, y: &Y, path: &P) -> Option<VrrpDraft> {
        let o = self.obj(y, path, VRRP_KEYS)?;
        let name = self.req_field(&o, path, "name", |cx, y, p| {
            let s = cx.string(y, p)?;
            if !valid_name(&s) {
                cx.err(
                    pos_of(y),
                    p,
                    format!("{s:?} is not a valid instance name, expected letters, digits, '.', '_' or '-'"),
                );
                return None;
            }
            Some(s)
        });
        let interface = self.req_field(&o, path, "interface", Self::ifname);
        let vrid = self.req_field(&o, path, "virtual_router_id", |cx, y, p| cx.u8(y, p, 1));
        let priority = self.field(&o, path, "priority", 100, |cx, y, p| cx.u8(y, p, 1));
        let version = self.field(&o, path, "version", 3, |cx, y, p| match &y.value {
            Raw::Int(2) => Some(2),
            Raw::Int(3) => Some(3),
            _ => {
                let found = cx.describe(y);
                cx.err(
                    pos_of(y),
                    p,
                    format!("expected 2 (RFC 3768) or 3 (RFC 5798), found {found}"),
                );
                None
            }
        });
        let advert = self.field(
            &o,
            path,
            "advert_interval",
            Duration::from_secs(1),
            Self::positive_duration,
        );
        let preempt = self.field(&o, path, "preempt", true, Self::boolean);
        let preempt_delay = self.field(&o, path, "preempt_delay", Duration::ZERO, Self::duration);
        let auth = self.opt_field(&o, path, "authentication", Self::vrrp_auth);
        let peers_path = P::Key(path, "unicast_peers");
        let peers = self.list(o.opt("unicast_peers"), &peers_path, "addresses", Self::ip);
        let addrs_path = P::Key(path, "virtual_addresses");
        let addrs = match self.req(&o, path, "virtual_addresses") {
            Some(list) => self.list(Some(list), &addrs_path, "ADDRESS/PREFIX", Self::prefix),
            None => None,
        };
        let garp = self.field(&o, path, "garp", Garp::default(), Self::garp);
        let track_path = P::Key(path, "track_interfaces");
        let track = self.list(
            o.opt("track_interfaces"),
            &track_path,
            "interface names",
            Self::ifname,
        );
        let notify = self.field(&o, path, "notify", Notify::default(), Self::notify);

        let inst = VrrpInstance {
            name: name?,
            interface: interface?,
            virtual_router_id: vrid?,
            priority: priority?,
            version: version?,
            advert_interval: advert?,
            preempt: preempt?,
            preempt_delay: preempt_delay?,
            authentication: auth?,
            unicast_peers: peers?,
            virtual_addresses: addrs?,
            garp: garp?,
            track_interfaces: track?,
            notify: notify?,
        };

        let mut ok = true;
        // The advertisement interval must fit the packet's field.
        let adv = inst.advert_interval;
        let adv_err = if inst.version == 2 {
            (adv.subsec_nanos() != 0 || adv.as_secs() > 255)
                .then_some("VRRP version 2 advertises whole seconds, expected 1s..=255s")
        } else {
            (!adv.as_nanos().is_multiple_of(10_000_000) || adv > Duration::from_millis(40_950))
                .then_some(
                "VRRP version 3 advertises centiseconds, expected a multiple of 10ms up to 40.95s",
            )
        };
        if let Some(why) = adv_err {
            self.err(
                o.pos("advert_interval"),
                &P::Key(path, "advert_interval"),
                format!("{}: {why}", format_duration(adv)),
            );
            ok = false;
        }
        if inst.version == 3 && inst.authentication.is_some() {
            self.err(
                o.pos("authentication"),
                &P::Key(path, "authentication"),
                "only exists in VRRP version 2 (RFC 3768); remove it or set version: 2",
            );
            ok = false;
        }
        // One address family per instance; version 2 is IPv4 only.
        if let (Some(first), Some(Raw::Seq(items))) = (
            inst.virtual_addresses.first(),
            o.opt("virtual_addresses").map(|y| &y.value),
        ) {
            let fam = family(first.addr);
            if inst.version == 2 && first.addr.is_ipv6() {
                self.err(
                    pos_of(&items[0]),
                    &P::Idx(&addrs_path, 0),
                    format!("{first}: VRRP version 2 is IPv4 only, expected version: 3 for IPv6"),
                );
                ok = false;
            }
            for (k, (a, item)) in inst.virtual_addresses.iter().zip(items).enumerate().skip(1) {
                if family(a.addr) != fam {
                    self.err(
                        pos_of(item),
                        &P::Idx(&addrs_path, k),
                        format!("{a} is {} but virtual_addresses[0] is {fam}; an instance carries one address family (use a second instance)", family(a.addr)),
                    );
                    ok = false;
                }
            }
            if let Some(Raw::Seq(peer_items)) = o.opt("unicast_peers").map(|y| &y.value) {
                for (k, (a, item)) in inst.unicast_peers.iter().zip(peer_items).enumerate() {
                    if family(*a) != fam {
                        self.err(
                            pos_of(item),
                            &P::Idx(&peers_path, k),
                            format!("{a} is {} but the virtual addresses are {fam}", family(*a)),
                        );
                        ok = false;
                    }
                }
            }
        } else if inst.virtual_addresses.is_empty() {
            self.err(
                o.pos("virtual_addresses"),
                &addrs_path,
                "expected at least one ADDRESS/PREFIX, found an empty list",
            );
            ok = false;
        }
        ok.then(|| VrrpDraft {
            item: o.pos,
            name_pos: o.pos("name"),
            vrid_pos: o.pos("virtual_router_id"),
            auth_pos: o.pos("authentication"),
            inst,
        })
    }

    fn vrrp_auth(&mut self, y: &Y, path: &P) -> Option<VrrpAuth> {
        let o = self.obj(y, path, AUTH_KEYS)?;
        let kind = self.req_field(&o, path, "type", Self::keyword);
        let password = self.req_field(&o, path, "password", |cx, y, p| {
            let s = cx.string(y, p)?;
            if s.is_empty() || s.len() > 8 {
                cx.err(
                    pos_of(y),
                    p,
                    format!(
                        "{} bytes is not allowed, expected 1 to 8 bytes (what a VRRPv2 packet carries)",
                        s.len()
                    ),
                );
                return None;
            }
            Some(s)
        });
        Some(VrrpAuth {
            kind: kind?,
            password: password?,
        })
    }

    fn garp(&mut self, y: &Y, path: &P) -> Option<Garp> {
        let o = self.obj(y, path, GARP_KEYS)?;
        let d = Garp::default();
        let repeat = self.field(&o, path, "repeat", d.repeat, |cx, y, p| {
            cx.u32(y, p, 0, 65535)
        });
        let interval = self.field(&o, path, "interval", d.interval, Self::duration);
        let refresh = self.field(&o, path, "refresh", d.refresh, Self::duration);
        Some(Garp {
            repeat: repeat?,
            interval: interval?,
            refresh: refresh?,
        })
    }

    fn notify(&mut self, y: &Y, path: &P) -> Option<Notify> {
        let o = self.obj(y, path, NOTIFY_KEYS)?;
        let get = |cx: &mut Self, key: &str| {
            cx.field(&o, path, key, String::new(), Self::string)
                .map(|s| (!s.trim().is_empty()).then_some(s))
        };
        let master = get(self, "master");
        let backup = get(self, "backup");
        let fault = get(self, "fault");
        Some(Notify {
            master: master?,
            backup: backup?,
            fault: fault?,
        })
    }

    /// Cross-instance checks: duplicate names and duplicate (interface, router id, family).
    fn check_vrrp(&mut self, drafts: Vec<VrrpDraft>) -> Vec<VrrpDraft> {
        let mut by_name: HashMap<&str, usize> = HashMap::new();
        let mut by_vrid: HashMap<(&str, u8, bool), usize> = HashMap::new();
        let mut errors = Vec::new();
        for (k, d) in drafts.iter().enumerate() {
            let i = &d.inst;
            if let Some(&first) = by_name.get(i.name.as_str()) {
                errors.push((
                    d.name_pos,
                    format!("vrrp[{k}].name"),
                    format!(
                        "duplicate instance name \"{}\", already used by vrrp[{first}] at line {}",
                        i.name, drafts[first].name_pos.line
                    ),
                ));
            } else {
                by_name.insert(i.name.as_str(), k);
            }
            let v6 = i
                .virtual_addresses
                .first()
                .is_some_and(|a| a.addr.is_ipv6());
            let key = (i.interface.as_str(), i.virtual_router_id, v6);
            if let Some(&first) = by_vrid.get(&key) {
                errors.push((
                    d.vrid_pos,
                    format!("vrrp[{k}].virtual_router_id"),
                    format!(
                        "{} is already used on {} for {} by vrrp[{first}] (\"{}\") at line {}",
                        i.virtual_router_id,
                        i.interface,
                        if v6 { "IPv6" } else { "IPv4" },
                        drafts[first].inst.name,
                        drafts[first].vrid_pos.line
                    ),
                ));
            } else {
                by_vrid.insert(key, k);
            }
        }
        for (pos, path, msg) in errors {
            self.errors.push(ConfigError {
                file: self.file.to_owned(),
                line: pos.line as usize,
                column: pos.column as usize,
                message: format!("{path}: {msg}"),
            });
        }
        drafts
    }
}

/// What a backend's checks need from its service.
struct BackendCtx {
    vip: IpAddr,
    port: u16,
    forwarding: Forwarding,
}

#[derive(Clone, Copy)]
struct BackendPos {
    address: Pos,
    forwarding: Pos,
}

/// Position of `key`'s value inside mapping `y`, or of `y` itself.
fn o_pos_of_key(y: &Y, key: &str) -> Pos {
    if let Raw::Map(entries) = &y.value {
        for (k, v) in entries {
            if matches!(&k.value, Raw::Str(s) if s == key) {
                return pos_of(v);
            }
        }
    }
    pos_of(y)
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

/// Why `addr` (a backend or sorry server, shown as `shown`) cannot serve `vip` with `fwd`.
fn family_mismatch(
    vip: IpAddr,
    addr: IpAddr,
    shown: &dyn fmt::Display,
    fwd: Forwarding,
) -> Option<String> {
    if vip.is_ipv4() == addr.is_ipv4() {
        return None;
    }
    let (fa, fv) = (family(addr), family(vip));
    match fwd {
        Forwarding::Local => None,
        Forwarding::Tun if vip.is_ipv4() => None, // IPv4-in-IPv6
        Forwarding::Tun => Some(format!(
            "{shown} is {fa} but the VIP {vip} is {fv}; forwarding tun cannot carry IPv6 in IPv4 (only IPv4 in IPv6)"
        )),
        Forwarding::Dr | Forwarding::Nat => Some(format!(
            "{shown} is {fa} but the VIP {vip} is {fv}; forwarding {fwd} needs the same address family (only tun can carry IPv4 in IPv6)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv6Addr, SocketAddrV4};

    const FULL: &str = include_str!("../tests/configs/full.yaml");
    const NODE: &str = "node:\n  interfaces:\n    - name: eth0\n";

    fn ok(yaml: &str) -> Config {
        Config::parse(yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first error, as printed.
    fn err(yaml: &str) -> String {
        match Config::parse(yaml, "bascule.yaml") {
            Ok(c) => panic!("parsed, expected an error: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// NODE followed by `rest`.
    fn with_node(rest: &str) -> String {
        format!("{NODE}{rest}")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_example_parses_with_expected_values() {
        let c = ok(FULL);
        assert_eq!(
            c.node,
            Node {
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    xdp_mode: XdpMode::Auto
                }],
                tunnel_source: Some(ip("10.0.0.2")),
            }
        );
        assert_eq!(c.http, Http::default());
        assert_eq!(c.http.listen, "127.0.0.1:9469".parse().unwrap());
        assert_eq!(
            c.conntrack,
            Conntrack {
                max_entries: 1_000_000,
                tcp_timeout: Duration::from_secs(900),
                udp_timeout: Duration::from_secs(30),
            }
        );
        assert_eq!(c.services.len(), 1);
        let s = &c.services[0];
        assert_eq!(s.name, "web");
        assert_eq!(s.vip, ip("10.0.0.100"));
        assert_eq!(s.port, 80);
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.scheduler, Scheduler::Mh);
        assert_eq!(s.forwarding, Forwarding::Dr);
        assert_eq!(s.persistence, Duration::ZERO);
        assert_eq!(s.sorry_server, Some("10.0.0.250:80".parse().unwrap()));
        assert_eq!(s.maglev_table_size, 65537);
        assert_eq!(
            s.backends,
            vec![
                Backend {
                    address: ip("10.0.0.11"),
                    port: Some(80),
                    weight: 1,
                    forwarding: Some(Forwarding::Nat),
                    failed_weight: 0,
                },
                Backend {
                    address: ip("10.0.0.12"),
                    port: None,
                    weight: 2,
                    forwarding: None,
                    failed_weight: 0,
                },
            ]
        );
        assert_eq!(s.backends[0].effective_forwarding(s), Forwarding::Nat);
        assert_eq!(s.backends[1].effective_forwarding(s), Forwarding::Dr);
        assert_eq!(s.backends[0].effective_port(s), 80);
        assert_eq!(
            s.health_check,
            Some(HealthCheck {
                path: "/healthz".into(),
                ..HealthCheck::new(CheckType::HttpGet)
            })
        );
        assert_eq!(
            c.vrrp,
            vec![VrrpInstance {
                name: "VI_1".into(),
                interface: "eth0".into(),
                virtual_router_id: 51,
                priority: 150,
                version: 2,
                advert_interval: Duration::from_secs(1),
                preempt: true,
                preempt_delay: Duration::ZERO,
                authentication: Some(VrrpAuth {
                    kind: VrrpAuthType::Pass,
                    password: "secret".into()
                }),
                unicast_peers: vec![],
                virtual_addresses: vec![IpPrefix {
                    addr: ip("10.0.0.100"),
                    prefix_len: 24
                }],
                garp: Garp {
                    repeat: 5,
                    interval: Duration::from_secs(1),
                    refresh: Duration::ZERO
                },
                track_interfaces: vec![],
                notify: Notify::default(),
            }]
        );
        // The JSON dump works and writes durations the way the file does.
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""tcp_timeout":"15m""#), "{json}");
        assert!(
            json.contains(r#""virtual_addresses":["10.0.0.100/24"]"#),
            "{json}"
        );
    }

    #[test]
    fn defaults() {
        let c = ok(&with_node(
            "services:\n  - name: web\n    vip: fd00::100\n    port: 0\n    backends:\n      - address: fd00::11\n",
        ));
        assert_eq!(c.node.interfaces[0].xdp_mode, XdpMode::Auto);
        assert_eq!(c.node.tunnel_source, None);
        assert_eq!(
            c.http.listen,
            SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9469))
        );
        assert_eq!(c.http.token_file, None);
        assert_eq!(c.conntrack, Conntrack::default());
        assert!(c.vrrp.is_empty());
        let s = &c.services[0];
        assert_eq!(s.vip, IpAddr::V6("fd00::100".parse::<Ipv6Addr>().unwrap()));
        assert_eq!(s.port, 0);
        assert_eq!(
            (s.protocol, s.scheduler, s.forwarding),
            (Protocol::Tcp, Scheduler::Mh, Forwarding::Dr)
        );
        assert_eq!(s.persistence, Duration::ZERO);
        assert_eq!(s.sorry_server, None);
        assert_eq!(s.maglev_table_size, 65537);
        assert_eq!(s.health_check, None);
        assert_eq!(
            s.backends[0],
            Backend {
                address: ip("fd00::11"),
                port: None,
                weight: 1,
                forwarding: None,
                failed_weight: 0,
            }
        );
        assert!(c.unsupported().is_empty());
        // No services at all is fine; so is a null list.
        assert!(ok(NODE).services.is_empty());
        assert!(ok(&with_node("services:\nvrrp: ~\n")).services.is_empty());
    }

    #[test]
    fn protocol_numbers() {
        assert_eq!(Protocol::Tcp.ip_proto(), 6);
        assert_eq!(Protocol::Udp.ip_proto(), 17);
    }

    #[test]
    fn equality_ignores_positions() {
        let a = ok(FULL);
        let b = ok(&format!("# a comment that moves every line\n\n{FULL}"));
        assert_eq!(a, b);
        assert_ne!(a.services[0].backends, b.services[0].backends[..1]);
    }

    // ----- errors: every case checks the exact FILE:LINE:COLUMN: message -----

    #[test]
    fn unknown_key_top_level() {
        assert_eq!(
            err(&with_node("foo: 1\n")),
            "bascule.yaml:4:1: foo: unknown key, expected one of: node, http, conntrack, services, vrrp"
        );
    }

    #[test]
    fn unknown_key_nested() {
        assert_eq!(
            err("node:\n  interfaces:\n    - name: eth0\n      xdp_mod: native\n"),
            "bascule.yaml:4:7: node.interfaces[0].xdp_mod: unknown key (did you mean \"xdp_mode\"?), expected one of: name, xdp_mode"
        );
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check: {type: tcp, intervall: 2s}\n")),
            "bascule.yaml:8:31: services[0].health_check.intervall: unknown key (did you mean \"interval\"?), expected one of: type, connect_port, interval, timeout, rise, fall, retries, delay_before_retry, inhibit_on_failure, initial_state, method, path, virtualhost, expect_status, body_regex, digest, sni, ca_file, helo_name, query_name, query_type, expect_rcode, expect_answer, payload, expect, require_reply, command, dynamic"
        );
    }

    #[test]
    fn wrong_type() {
        assert_eq!(
            err(&with_node("conntrack:\n  max_entries: lots\n")),
            "bascule.yaml:5:16: conntrack.max_entries: expected an integer in 1..=4294967295, found the string \"lots\""
        );
        assert_eq!(
            err("node:\n  interfaces: eth0\n"),
            "bascule.yaml:2:15: node.interfaces: expected a list of interfaces, found the string \"eth0\""
        );
        assert_eq!(
            err("node:\n  interfaces:\n    - eth0\n"),
            "bascule.yaml:3:7: node.interfaces[0]: expected a mapping with the keys name, xdp_mode, found the string \"eth0\""
        );
        assert_eq!(
            err("node:\n  - eth0\n"),
            "bascule.yaml:2:3: node: expected a mapping with the keys interfaces, tunnel_source, found a list"
        );
        assert_eq!(
            err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/24]\n    preempt: sometimes\n")),
            "bascule.yaml:9:14: vrrp[0].preempt: expected true or false, found the string \"sometimes\""
        );
        assert_eq!(
            err("- node\n"),
            "bascule.yaml:1:1: the configuration must be a mapping with the keys node, http, conntrack, services, vrrp, found a list"
        );
    }

    #[test]
    fn bad_durations() {
        let ct = |v: &str| err(&with_node(&format!("conntrack:\n  tcp_timeout: {v}\n")));
        assert_eq!(
            ct("10"),
            "bascule.yaml:5:16: conntrack.tcp_timeout: \"10\" is not a valid duration (missing unit), expected e.g. 100ms, 1s, 5m or 1h"
        );
        assert_eq!(
            ct("-5s"),
            "bascule.yaml:5:16: conntrack.tcp_timeout: \"-5s\" is not a valid duration (negative), expected e.g. 100ms, 1s, 5m or 1h"
        );
        assert_eq!(
            ct("5x"),
            "bascule.yaml:5:16: conntrack.tcp_timeout: \"5x\" is not a valid duration (unknown unit \"x\"; units are us, ms, s, m, h, d), expected e.g. 100ms, 1s, 5m or 1h"
        );
        assert_eq!(
            ct("0s"),
            "bascule.yaml:5:16: conntrack.tcp_timeout: 0s is not allowed, expected a duration greater than 0"
        );
    }

    #[test]
    fn bad_address() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.300\n    port: 80\n")),
            "bascule.yaml:6:10: services[0].vip: \"10.0.0.300\" is not valid, expected an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)"
        );
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    sorry_server: fd00::9\n")),
            "bascule.yaml:8:19: services[0].sorry_server: \"fd00::9\" is not valid, expected ADDRESS:PORT (e.g. 10.0.0.1:80 or [fd00::1]:80)"
        );
        assert_eq!(
            err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/33]\n")),
            "bascule.yaml:8:25: vrrp[0].virtual_addresses[0]: \"10.0.0.1/33\" is not valid (prefix \"33\" is not in 0..=32), expected ADDRESS/PREFIX (e.g. 10.0.0.100/24 or fd00::100/64)"
        );
    }

    #[test]
    fn bad_enum_value() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    scheduler: fast\n")),
            "bascule.yaml:8:16: services[0].scheduler: \"fast\" is not a valid scheduler, expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh"
        );
        assert_eq!(
            err("node:\n  interfaces:\n    - name: eth0\n      xdp_mode: turbo\n"),
            "bascule.yaml:4:17: node.interfaces[0].xdp_mode: \"turbo\" is not a valid XDP mode, expected one of: auto, native, generic"
        );
    }

    #[test]
    fn duplicate_service_reported_at_second_occurrence() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n")),
            "bascule.yaml:8:5: services[1]: duplicate service 10.0.0.1:80/tcp, already defined by services[0] (\"web\") at line 5"
        );
        // Another protocol or port is another service.
        ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n    protocol: udp\n"));
    }

    #[test]
    fn duplicate_service_name() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web\n    vip: 10.0.0.1\n    port: 81\n")),
            "bascule.yaml:8:11: services[1].name: duplicate service name \"web\", already used by services[0] at line 5"
        );
    }

    #[test]
    fn duplicate_backend() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n      - address: 10.0.0.11\n        weight: 3\n")),
            "bascule.yaml:10:18: services[0].backends[1].address: backend 10.0.0.11 is listed twice (also backends[0] at line 9)"
        );
        // With NAT the destination port is part of the backend: an explicit port equal to the
        // service's is the same backend, another port is another one.
        let svc = "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: nat\n    backends:\n      - address: 10.0.0.11\n";
        assert_eq!(
            err(&with_node(&format!("{svc}      - {{address: 10.0.0.11, port: 80}}\n"))),
            "bascule.yaml:11:19: services[0].backends[1].address: backend 10.0.0.11:80 is listed twice (also backends[0] at line 10)"
        );
        ok(&with_node(&format!(
            "{svc}      - {{address: 10.0.0.11, port: 8080}}\n"
        )));
    }

    #[test]
    fn weight_out_of_range() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.2\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: 70000\n")),
            "bascule.yaml:13:17: services[1].backends[0].weight: 70000 is out of range, expected 0..=65535"
        );
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: -1\n")),
            "bascule.yaml:10:17: services[0].backends[0].weight: -1 is out of range, expected 0..=65535"
        );
    }

    #[test]
    fn maglev_table_size_must_be_prime() {
        let t = |v: &str| {
            err(&with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: {v}\n"
            )))
        };
        assert_eq!(
            t("65536"),
            "bascule.yaml:8:24: services[0].maglev_table_size: 65536 is not prime, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"
        );
        assert_eq!(
            t("65539"),
            "bascule.yaml:8:24: services[0].maglev_table_size: 65539 is too large, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"
        );
        let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: 251\n"));
        assert_eq!(c.services[0].maglev_table_size, 251);
    }

    #[test]
    fn address_family_mismatch() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: fd00::11\n")),
            "bascule.yaml:9:18: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding dr needs the same address family (only tun can carry IPv4 in IPv6)"
        );
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: fd00::1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: 10.0.0.11\n")),
            "bascule.yaml:10:18: services[0].backends[0].address: 10.0.0.11 is IPv4 but the VIP fd00::1 is IPv6; forwarding tun cannot carry IPv6 in IPv4 (only IPv4 in IPv6)"
        );
        // A backend's own forwarding decides.
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - {address: fd00::11, forwarding: nat}\n")),
            "bascule.yaml:10:19: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding nat needs the same address family (only tun can carry IPv4 in IPv6)"
        );
        // IPv4-in-IPv6 is fine.
        let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: fd00::11\n"));
        assert_eq!(c.services[0].backends[0].address, ip("fd00::11"));
    }

    #[test]
    fn backend_port_only_with_nat() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        port: 8080\n")),
            "bascule.yaml:10:15: services[0].backends[0].port: backend port is only used with forwarding: nat; dr and tun keep the VIP port"
        );
        let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        forwarding: nat\n        port: 8080\n"));
        let s = &c.services[0];
        assert_eq!(s.backends[0].effective_port(s), 8080);
    }

    #[test]
    fn non_loopback_listen_needs_a_token() {
        assert_eq!(
            err(&with_node("http:\n  listen: 0.0.0.0:9469\n")),
            "bascule.yaml:5:11: http.listen: 0.0.0.0:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"
        );
        assert_eq!(
            err(&with_node("http:\n  listen: \"[fd00::1]:9469\"\n  token_file: \"\"\n")),
            "bascule.yaml:5:11: http.listen: [fd00::1]:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"
        );
        let c = ok(&with_node(
            "http:\n  listen: 0.0.0.0:9469\n  token_file: /etc/bascule/token\n",
        ));
        assert_eq!(c.http.token_file, Some(PathBuf::from("/etc/bascule/token")));
        ok(&with_node("http:\n  listen: \"[::1]:9469\"\n"));
    }

    #[test]
    fn missing_node() {
        assert_eq!(
            err("http:\n  listen: 127.0.0.1:9469\n"),
            "bascule.yaml:1:1: missing required top-level key \"node\""
        );
        assert_eq!(
            err(""),
            "bascule.yaml:1:1: the configuration is empty: missing required top-level key \"node\""
        );
        assert_eq!(
            err("node:\n  interfaces: []\n"),
            "bascule.yaml:2:15: node.interfaces: expected at least one interface (- name: eth0), found an empty list"
        );
        assert_eq!(
            err("node:\n  tunnel_source: 10.0.0.2\n"),
            "bascule.yaml:2:3: node: missing required key \"interfaces\""
        );
    }

    #[test]
    fn missing_keys_and_duplicate_keys() {
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    port: 80\n")),
            "bascule.yaml:5:5: services[0]: missing required key \"vip\""
        );
        assert_eq!(
            err("node:\n  interfaces: [{name: eth0}]\n  interfaces: [{name: eth1}]\n"),
            "bascule.yaml:3:3: node.interfaces: duplicate key, already given at line 2"
        );
        assert_eq!(
            err("node:\n  interfaces:\n    - name: eth0\n    - name: eth0\n"),
            "bascule.yaml:4:13: node.interfaces[1].name: interface \"eth0\" is listed twice (also interfaces[0])"
        );
    }

    #[test]
    fn yaml_syntax_error() {
        assert_eq!(
            err("node:\n  interfaces: [eth0\n"),
            "bascule.yaml:2:15: invalid YAML: unclosed bracket '['"
        );
    }

    #[test]
    fn vrrp_rules() {
        let v = |extra: &str| {
            err(&with_node(&format!(
                "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n{extra}"
            )))
        };
        assert_eq!(
            v("    priority: 0\n"),
            "bascule.yaml:9:15: vrrp[0].priority: 0 is out of range, expected 1..=255"
        );
        assert_eq!(
            err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 256\n    virtual_addresses: [10.0.0.1/24]\n")),
            "bascule.yaml:7:24: vrrp[0].virtual_router_id: 256 is out of range, expected 1..=255"
        );
        assert_eq!(
            v("    version: 4\n"),
            "bascule.yaml:9:14: vrrp[0].version: expected 2 (RFC 3768) or 3 (RFC 5798), found the number 4"
        );
        assert_eq!(
            v("    advert_interval: 15ms\n"),
            "bascule.yaml:9:22: vrrp[0].advert_interval: 15ms: VRRP version 3 advertises centiseconds, expected a multiple of 10ms up to 40.95s"
        );
        assert_eq!(
            v("    authentication: {type: pass, password: x}\n"),
            "bascule.yaml:9:21: vrrp[0].authentication: only exists in VRRP version 2 (RFC 3768); remove it or set version: 2"
        );
        assert_eq!(
            v("    version: 2\n    authentication: {type: pass, password: toolongpassword}\n"),
            "bascule.yaml:10:44: vrrp[0].authentication.password: 15 bytes is not allowed, expected 1 to 8 bytes (what a VRRPv2 packet carries)"
        );
        assert_eq!(
            v("    unicast_peers: [10.0.0.2, fd00::3]\n"),
            "bascule.yaml:9:31: vrrp[0].unicast_peers[1]: fd00::3 is IPv6 but the virtual addresses are IPv4"
        );
        assert_eq!(
            err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24, fd00::1/64]\n")),
            "bascule.yaml:8:38: vrrp[0].virtual_addresses[1]: fd00::1/64 is IPv6 but virtual_addresses[0] is IPv4; an instance carries one address family (use a second instance)"
        );
        assert_eq!(
            err(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    version: 2\n    virtual_addresses: [fd00::1/64]\n")),
            "bascule.yaml:9:25: vrrp[0].virtual_addresses[0]: fd00::1/64: VRRP version 2 is IPv4 only, expected version: 3 for IPv6"
        );
        let two = "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n  - name: VI_2\n    interface: eth0\n    virtual_router_id: 51\n";
        assert_eq!(
            err(&with_node(&format!("{two}    virtual_addresses: [10.0.0.2/24]\n"))),
            "bascule.yaml:11:24: vrrp[1].virtual_router_id: 51 is already used on eth0 for IPv4 by vrrp[0] (\"VI_1\") at line 7"
        );
        // The same router id for the other family is another instance (as in VRRPv3).
        let c = ok(&with_node(&format!("{two}    virtual_addresses: [fd00::2/64]\n    priority: 255\n    advert_interval: 20ms\n    unicast_peers: [fd00::3]\n    garp: {{repeat: 2}}\n    notify: {{master: /bin/true}}\n")));
        let i = &c.vrrp[1];
        assert_eq!((i.priority, i.version), (255, 3));
        assert_eq!(i.advert_interval, Duration::from_millis(20));
        assert_eq!(i.garp.repeat, 2);
        assert_eq!(i.garp.interval, Duration::from_secs(1));
        assert_eq!(i.notify.master.as_deref(), Some("/bin/true"));
        assert_eq!(i.notify.backup, None);
        // A bare address is a host prefix, as in keepalived.
        let c = ok(&with_node("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1]\n"));
        assert_eq!(c.vrrp[0].virtual_addresses[0].to_string(), "10.0.0.1/32");
    }

    #[test]
    fn health_check_rules() {
        let hc = |body: &str| {
            err(&with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
            )))
        };
        assert_eq!(
            hc("      type: tcp\n      interval: 0s\n"),
            "bascule.yaml:10:17: services[0].health_check.interval: 0s is not allowed, expected a duration greater than 0"
        );
        assert_eq!(
            hc("      type: tcp\n      fall: 0\n"),
            "bascule.yaml:10:13: services[0].health_check.fall: 0 is out of range, expected 1..=65535"
        );
        assert_eq!(
            hc("      type: tcp\n      path: /x\n"),
            "bascule.yaml:10:13: services[0].health_check.path: only used with type http_get or ssl_get, not tcp"
        );
        assert_eq!(
            hc("      type: misc\n"),
            "bascule.yaml:9:7: services[0].health_check: missing required key \"command\" (type misc runs it)"
        );
        assert_eq!(
            hc("      interval: 1s\n"),
            "bascule.yaml:9:7: services[0].health_check: missing required key \"type\""
        );
        let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n      type: misc\n      command: /usr/local/bin/check-x\n      dynamic: true\n      retries: 2\n      delay_before_retry: 500ms\n"));
        let h = c.services[0].health_check.as_ref().unwrap();
        assert_eq!(h.kind, CheckType::Misc);
        assert_eq!(h.command.as_deref(), Some("/usr/local/bin/check-x"));
        assert!(h.dynamic);
        assert_eq!(
            (h.retries, h.delay_before_retry),
            (2, Duration::from_millis(500))
        );
    }

    #[test]
    fn health_check_keys_per_type() {
        let hc = |body: &str| {
            err(&with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
            )))
        };
        let parsed = |body: &str| {
            let c = ok(&with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
            )));
            c.services[0].health_check.clone().unwrap()
        };
        // Statuses: one, a range, a list of both.
        let h = parsed("      type: http_get\n      expect_status: [200, \"300-302\"]\n      method: HEAD\n      virtualhost: www.example.com\n");
        assert_eq!(
            h.expect_status,
            vec![
                StatusRange { lo: 200, hi: 200 },
                StatusRange { lo: 300, hi: 302 }
            ]
        );
        assert_eq!(
            (h.method, h.virtualhost.as_deref()),
            (HttpMethod::Head, Some("www.example.com"))
        );
        assert_eq!(
            parsed("      type: ssl_get\n      expect_status: 200-299\n").expect_status,
            vec![StatusRange { lo: 200, hi: 299 }]
        );
        assert_eq!(
            hc("      type: http_get\n      expect_status: \"299-200\"\n"),
            "bascule.yaml:10:22: services[0].health_check.expect_status: \"299-200\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""
        );
        assert_eq!(
            hc("      type: http_get\n      expect_status: [200, 700]\n"),
            "bascule.yaml:10:28: services[0].health_check.expect_status[1]: \"700\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""
        );
        // Digest and body regex.
        let h = parsed("      type: http_get\n      digest: 9A0364B9E99BB480DD25E1F0284C8555\n      body_regex: \"^ok\"\n");
        assert_eq!(
            h.digest.as_deref(),
            Some("9a0364b9e99bb480dd25e1f0284c8555")
        );
        assert_eq!(
            hc("      type: http_get\n      digest: abc\n"),
            "bascule.yaml:10:15: services[0].health_check.digest: \"abc\" is not valid, expected an MD5 digest of 32 hex digits (as printed by md5sum)"
        );
        assert!(hc("      type: http_get\n      body_regex: \"(unclosed\"\n")
            .starts_with("bascule.yaml:10:19: services[0].health_check.body_regex: \"(unclosed\" is not a valid regular expression: "));
        assert_eq!(
            hc("      type: http_get\n      method: HEAD\n      digest: 9a0364b9e99bb480dd25e1f0284c8555\n"),
            "bascule.yaml:11:15: services[0].health_check.digest: a HEAD response has no body to check; use method GET"
        );
        // TLS keys.
        assert_eq!(
            hc("      type: http_get\n      sni: www.example.com\n"),
            "bascule.yaml:10:12: services[0].health_check.sni: only used with type ssl_get, not http_get"
        );
        assert_eq!(
            hc("      type: ssl_get\n      sni: 10.0.0.1\n"),
            "bascule.yaml:10:12: services[0].health_check.sni: \"10.0.0.1\" is not valid, expected a DNS name such as www.example.com"
        );
        assert!(hc("      type: ssl_get\n      ca_file: /nonexistent/ca.pem\n")
            .starts_with("bascule.yaml:10:16: services[0].health_check.ca_file: \"/nonexistent/ca.pem\": cannot read it: "));
        // DNS keys.
        let h = parsed("      type: dns\n      query_name: example.com\n      query_type: AAAA\n      expect_rcode: NXDOMAIN\n      expect_answer: \"2001:db8::1\"\n");
        assert_eq!(
            (h.query_name.as_str(), h.query_type, h.expect_rcode),
            ("example.com", DnsType::Aaaa, DnsRcode::NxDomain)
        );
        assert_eq!(
            hc("      type: dns\n      query_type: A\n      expect_answer: www.example.com\n"),
            "bascule.yaml:11:22: services[0].health_check.expect_answer: \"www.example.com\": query_type A answers an IPv4 address, expected e.g. 192.0.2.1"
        );
        assert_eq!(
            hc("      type: dns\n      query_name: a..b\n"),
            "bascule.yaml:10:19: services[0].health_check.query_name: \"a..b\" is not a valid DNS name (empty label), expected e.g. example.com or ."
        );
        assert_eq!(
            hc("      type: dns\n      query_type: AXFR\n"),
            "bascule.yaml:10:19: services[0].health_check.query_type: \"AXFR\" is not a valid DNS record type, expected one of: A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, ANY"
        );
        // UDP payloads.
        let h = parsed("      type: udp\n      payload: \"hex:0d0A\"\n      expect: PONG\n");
        assert_eq!(
            (h.payload.as_slice(), h.expect.as_deref()),
            (&b"\r\n"[..], Some(&b"PONG"[..]))
        );
        assert_eq!(
            hc("      type: udp\n      payload: \"hex:0d0\"\n"),
            "bascule.yaml:10:16: services[0].health_check.payload: \"hex:0d0\" is not valid (an odd number of hex digits), expected text or hex: followed by hex digits (e.g. hex:0d0a)"
        );
        // A check needs a port when the service has none.
        assert_eq!(
            err(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: tcp}\n")),
            "bascule.yaml:8:19: services[0].health_check: type tcp needs a port but the service's port is 0 (all ports): set health_check.connect_port"
        );
        let c = ok(&with_node("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: ping, initial_state: up}\n"));
        assert_eq!(
            c.services[0].health_check.as_ref().unwrap().initial_state,
            InitialState::Up
        );
        assert_eq!(
            hc("      type: ping\n      connect_port: 80\n"),
            "bascule.yaml:10:21: services[0].health_check.connect_port: only used with type tcp, http_get, ssl_get, smtp, dns or udp, not ping"
        );
        // The JSON dump writes payloads and statuses as the file does.
        let json = serde_json::to_string(&parsed("      type: udp\n      payload: \"hex:00ff\"\n"))
            .unwrap();
        assert!(json.contains(r#""payload":"hex:00ff""#), "{json}");
        assert!(json.contains(r#""expect_status":["200"]"#), "{json}");
    }

    #[test]
    fn all_errors_sorted_by_position() {
        let errors = Config::parse_all(
            &with_node("conntrack:\n  udp_timeout: 0s\n  tcp_timeout: 5x\nbogus: 1\n"),
            "b.yaml",
        )
        .unwrap_err();
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![5, 6, 7]);
    }

    #[test]
    fn unsupported_features() {
        let c = ok(&with_node(
            "services:
  - name: web
    vip: 10.0.0.1
    port: 80
    scheduler: wrr
    forwarding: nat
    persistence: 5m
    sorry_server: 10.0.0.9:80
    backends:
      - address: 10.0.0.11
        forwarding: local
      - address: 10.0.0.12
        forwarding: tun
    health_check: {type: tcp}
  - name: ok
    vip: 10.0.0.2
    port: 443
    forwarding: tun
vrrp:
  - name: VI_1
    interface: eth0
    virtual_router_id: 51
    version: 2
    authentication: {type: ah, password: x}
    virtual_addresses: [10.0.0.1/24]
",
        ));
        let got: Vec<String> = c.unsupported().iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "t.yaml:27:21: vrrp[0].authentication.type: \"ah\" is not supported (this build supports: pass, as keepalived's auth_type PASS)",
            ]
        );
        assert!(ok(NODE).unsupported().is_empty());
        // A config built in code has no positions.
        let mut built = ok(NODE);
        built.origin = Origin::default();
        built.vrrp = c.vrrp.clone();
        assert_eq!(
            built.unsupported()[0].to_string(),
            "vrrp[0].authentication.type: \"ah\" is not supported (this build supports: pass, as keepalived's auth_type PASS)"
        );
    }

    #[test]
    fn host_checks() {
        let c = ok(&with_node(
            "    - name: eth1\nservices:\n  - name: web6\n    vip: fd00::100\n    port: 80\n  - name: web\n    vip: 10.0.0.100\n    port: 80\n",
        ));
        let host = HostFacts {
            interfaces: [
                ("lo".to_string(), vec![ip("127.0.0.1"), ip("::1")]),
                ("eth0".to_string(), vec![ip("10.0.0.2")]),
            ]
            .into_iter()
            .collect(),
        };
        let got: Vec<String> = c.check_host(&host).iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "t.yaml:4:13: node.interfaces[1].name: no interface \"eth1\" on this node (it has: eth0, lo)",
                "t.yaml:7:10: services[0].vip: no interface can reach fd00::100: none of node.interfaces (eth0, eth1) has an IPv6 address; add one, or attach to an interface that has one",
            ]
        );
        let mut fine = host.clone();
        fine.interfaces
            .insert("eth1".to_string(), vec![ip("fd00::2")]);
        assert!(c.check_host(&fine).is_empty());
        // A link-local address reaches no IPv6 VIP.
        let mut link_only = fine.clone();
        link_only
            .interfaces
            .insert("eth1".to_string(), vec![ip("fe80::2")]);
        assert_eq!(c.check_host(&link_only).len(), 1);
    }

    #[test]
    fn host_checks_vrrp_instances() {
        let c = ok(&with_node(
            "vrrp:\n  - name: VI_4\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.100/24]\n  - name: VI_6\n    interface: eth0\n    virtual_router_id: 52\n    virtual_addresses: [fd00::100/64]\n  - name: VI_X\n    interface: eth9\n    virtual_router_id: 53\n    virtual_addresses: [10.0.9.100/24]\n",
        ));
        let host = |addrs: &[&str]| HostFacts {
            interfaces: [("eth0".to_string(), addrs.iter().map(|a| ip(a)).collect())]
                .into_iter()
                .collect(),
        };
        let got: Vec<String> = c
            .check_host(&host(&["10.0.0.100", "fd00::2"]))
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(got.len(), 3, "{got:#?}");
        assert!(got[0].contains("vrrp[0] (VI_4): interface eth0 has no IPv4 address other than the virtual addresses"), "{got:#?}");
        assert!(
            got[1].contains("vrrp[1] (VI_6): interface eth0 has no IPv6 link-local address"),
            "{got:#?}"
        );
        assert!(
            got[2].contains("vrrp[2].interface: no interface \"eth9\" on this node"),
            "{got:#?}"
        );
        let got = c.check_host(&host(&["10.0.0.2", "fe80::2"]));
        assert_eq!(got.len(), 1, "only the missing interface: {got:?}");
    }

    #[test]
    fn load_reports_unreadable_file() {
        let e = Config::load(std::path::Path::new("/nonexistent/bascule.yaml")).unwrap_err();
        assert_eq!((e.line, e.column), (0, 0));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/bascule.yaml: cannot read the configuration: "),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s);
        assert_eq!(d("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(d("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(d("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(d("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("0s"), Ok(Duration::ZERO));
        assert_eq!(d("10"), Err("missing unit".into()));
        assert_eq!(d("-1s"), Err("negative".into()));
        assert_eq!(d(""), Err("empty".into()));
        assert!(d("5x").is_err());
        assert!(d("s").is_err());
        assert!(d("1..5s").is_err());
        assert!(d("99999999999999999999999h").is_err());
        for s in ["0s", "100ms", "1s", "90s", "15m", "1h", "1500ms", "250us"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
