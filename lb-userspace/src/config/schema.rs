//! The configuration's public types: plain data, as the rest of the daemon reads it. The
//! keys' names in the YAML are in `keys.rs`, the enum values' names in `keywords.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::units::{ser_bytes, ser_duration, ser_opt_bytes};
use super::yaml::Pos;

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub node: Node,
    pub http: Http,
    pub conntrack: Conntrack,
    pub services: Vec<Service>,
    pub vrrp: Vec<VrrpInstance>,
    /// `announce:` (scale-out); `None` when the section is absent: nothing is announced.
    pub announce: Option<Announce>,
    /// keepalived's `vrrp_script`s, named by the instances' `track_scripts`.
    pub vrrp_scripts: Vec<VrrpScript>,
    /// keepalived's `vrrp_sync_group`s: instances that change state together.
    pub sync_groups: Vec<SyncGroup>,
    /// `sync:` connection state shared with the other LB nodes; `None` when absent.
    pub sync: Option<StateSync>,
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
    /// ICMP echo requests answered per second per VIP (the datapath drops the rest, in
    /// bursts of at most a tenth of that); 0 = no limit.
    pub icmp_echo_rate: u32,
}

/// `node.icmp_echo_rate`'s default: a VIP answers 1,000 pings a second, no flood.
pub const DEFAULT_ICMP_ECHO_RATE: u32 = 1000;

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
    /// A new flow never evicts an established one (see `lb_common::Settings`).
    pub flood_protection: bool,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack {
            max_entries: lb_common::CONNTRACK_DEFAULT_ENTRIES,
            tcp_timeout: Duration::from_secs(15 * 60),
            udp_timeout: Duration::from_secs(30),
            flood_protection: true,
        }
    }
}

/// `sync:` connection state shared with the other LB nodes: each new flow and flow end
/// is sent to `peers` (or to the multicast `group`) over UDP, authenticated with the key
/// in `key_file`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateSync {
    /// Unicast peers (the other LB nodes' addresses); empty with a `group`.
    pub peers: Vec<IpAddr>,
    /// Multicast instead of `peers`: the group sent to and joined.
    pub group: Option<SyncMulticast>,
    /// UDP port sent to and listened on.
    pub port: u16,
    /// The shared secret (at least 16 bytes; readable by its owner only).
    pub key_file: PathBuf,
}

/// `sync.group` and `sync.interface`: every node sends to the group and receives from it
/// on that interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncMulticast {
    pub address: IpAddr,
    pub interface: String,
}

/// `sync.port` when absent.
pub const DEFAULT_SYNC_PORT: u16 = 9470;

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
    /// More addresses (`vips:`), beside `vip`: every address takes every port, with one
    /// table and one set of counters (keepalived's `virtual_server_group`). Without `vip`
    /// in the file, `vip` is the first of them and this the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<IpAddr>,
    /// More ports (`ports:`), beside `port`: single ports and ranges. Without `port` in
    /// the file, `port` is the first of them and this the rest.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

impl Service {
    /// Every address of the service: `vip`, then `vips`.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.vip).chain(self.vips.iter().copied())
    }

    /// Every port of the service: `port` (0: all ports), then each port of `ports`.
    pub fn all_ports(&self) -> impl Iterator<Item = u16> + '_ {
        std::iter::once(self.port).chain(self.ports.iter().flat_map(|r| r.lo..=r.hi))
    }

    /// How many (address, port) pairs select the service.
    pub fn endpoint_count(&self) -> usize {
        let ports = 1 + self.ports.iter().map(PortRange::len).sum::<usize>();
        (1 + self.vips.len()) * ports
    }
}

/// A port or an inclusive range of ports (`80`, `"8000-8099"`) of `services[].ports`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.hi - self.lo) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// A single port as a number, a range as its string.
impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.lo == self.hi {
            s.serialize_u16(self.lo)
        } else {
            s.collect_str(self)
        }
    }
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
    /// Connection thresholds (IPVS's u-threshold / l-threshold, keepalived's `uthreshold` /
    /// `lthreshold`): with `max_connections` active connections the backend takes no new
    /// flows until it has fewer than `min_connections` (default: 3/4 of the maximum,
    /// rounded up, as IPVS). `None`: no threshold.
    pub max_connections: Option<u32>,
    pub min_connections: Option<u32>,
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

    /// The lower connection threshold in force: `min_connections`, else IPVS's default
    /// from `max_connections`; `None` without a threshold.
    pub fn effective_min_connections(&self) -> Option<u32> {
        let max = self.max_connections?;
        Some(
            self.min_connections
                .unwrap_or_else(|| lb_common::default_min_conns(max)),
        )
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
    /// Names of `vrrp_scripts` whose results change this instance's priority or put it in
    /// FAULT.
    pub track_scripts: Vec<String>,
    pub notify: Notify,
}

/// `vrrp_scripts[i]`: a command run periodically, keepalived's `vrrp_script`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VrrpScript {
    pub name: String,
    /// A shell command line; exit status 0 is a success.
    pub script: String,
    #[serde(serialize_with = "ser_duration")]
    pub interval: Duration,
    /// A run still going after this is killed (with its process group) and fails.
    #[serde(serialize_with = "ser_duration")]
    pub timeout: Duration,
    /// -253..=253. 0: while failing, the tracking instances are in FAULT. Negative: added
    /// to their priority while failing; positive: added while succeeding.
    pub weight: i16,
    /// Consecutive successes to go up, failures to go down.
    pub rise: u32,
    pub fall: u32,
}

/// `sync_groups[i]`: instances that change state together (keepalived's
/// `vrrp_sync_group`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncGroup {
    pub name: String,
    pub instances: Vec<String>,
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

/// `announce:` the VIPs this node asks a routing daemon to announce (BGP, ECMP): one
/// blackhole route per announced VIP in a kernel routing table of bascule's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Announce {
    /// The kernel routing table bascule owns (not 0, 253, 254 or 255).
    pub table: u32,
    /// The routing protocol number of its routes, 5..=255.
    pub protocol: u8,
    /// On SIGTERM/SIGINT: withdraw every VIP, keep forwarding this long, then stop.
    #[serde(serialize_with = "ser_duration")]
    pub withdraw_grace: Duration,
    /// Empty: every service VIP; else only these (each a service's VIP).
    pub vips: Vec<IpAddr>,
}

impl Default for Announce {
    fn default() -> Self {
        Announce {
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
            withdraw_grace: Duration::from_secs(5),
            vips: Vec::new(),
        }
    }
}

/// Default `announce.table`.
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 200;
/// Default `announce.protocol`.
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 186;

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

/// Default `http.listen`.
pub const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9469);
/// Default and largest `maglev_table_size`.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = lb_common::MAGLEV_TABLE_SIZE;

/// Positions of parsed items, kept for errors reported after parsing. Opaque.
#[derive(Clone, Default)]
pub struct Origin {
    pub(super) file: String,
    pub(super) services: Vec<ServiceLoc>,
    pub(super) vrrp: Vec<Pos>,
    pub(super) interfaces: Vec<Pos>,
    pub(super) vrrp_auth: Vec<Pos>,
    /// `announce.vips[i]`.
    pub(super) announce_vips: Vec<Pos>,
    /// `sync.interface`.
    pub(super) sync_interface: Pos,
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

#[derive(Clone, Debug, Default)]
pub(super) struct ServiceLoc {
    pub(super) item: Pos,
    pub(super) vip: Pos,
    pub(super) scheduler: Pos,
    pub(super) forwarding: Pos,
    pub(super) persistence: Pos,
    pub(super) sorry_server: Pos,
    pub(super) health_check: Pos,
    pub(super) backends: Vec<BackendLoc>,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BackendLoc {
    pub(super) forwarding: Pos,
}
