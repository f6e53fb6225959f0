//! The bascule configuration an import produces, as plain data: what `emit.rs` writes as
//! YAML. Each item keeps the keepalived statement it comes from, written beside it as a
//! comment. The keys follow docs/configuration.md and, for what bascule does not have yet,
//! the contract's names (shared/spec/product.md).

use std::net::{IpAddr, SocketAddr};

use super::{report::Pos, values::Micros};

/// The keepalived statement an item comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub pos: Pos,
    /// The statement's header as written (`virtual_server 10.0.0.1 80`).
    pub text: String,
}

/// Interface name used when no VRRP instance names one: the operator must replace it.
pub const PLACEHOLDER_INTERFACE: &str = "EDIT-ME";

#[derive(Debug, Default)]
pub struct Bascule {
    /// `node.interfaces`, in the order first named.
    pub interfaces: Vec<String>,
    pub services: Vec<Service>,
    pub vrrp: Vec<Instance>,
    pub vrrp_scripts: Vec<VrrpScript>,
    pub sync_groups: Vec<SyncGroup>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarding {
    Dr,
    Tun,
    Nat,
}

impl Forwarding {
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Dr => "dr",
            Forwarding::Tun => "tun",
            Forwarding::Nat => "nat",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub origin: Origin,
    /// Comment lines written above the service, after its origin.
    pub notes: Vec<String>,
    pub name: String,
    /// One address is `vip`; several (a `virtual_server_group`) are `vips`.
    pub vips: Vec<IpAddr>,
    /// One single port is `port`; otherwise `ports`, each a port or an inclusive range.
    pub ports: Vec<(u16, u16)>,
    pub protocol: Protocol,
    pub scheduler: String,
    pub forwarding: Forwarding,
    pub persistence: Option<Micros>,
    pub sorry_server: Option<SocketAddr>,
    pub backends: Vec<Backend>,
    pub health_check: Option<Check>,
    /// Comments after some keys' values: the keepalived statement, or that the value is
    /// keepalived's default.
    pub key_notes: KeyNotes,
}

/// Comments written after keys' values.
pub type KeyNotes = Vec<(&'static str, String)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub origin: Origin,
    pub address: IpAddr,
    /// `nat` only, when it differs from the service's port.
    pub port: Option<u16>,
    pub weight: u32,
    /// When it differs from the service's.
    pub forwarding: Option<Forwarding>,
    /// keepalived's `uthreshold` and `lthreshold`.
    pub max_connections: Option<u32>,
    pub min_connections: Option<u32>,
}

/// A YAML scalar or a list of them, as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    /// Written plain: numbers, booleans, durations, addresses, keywords.
    Plain(String),
    /// A string, quoted where YAML needs it.
    Text(String),
    List(Vec<Val>),
}

impl Val {
    pub fn plain(s: impl ToString) -> Val {
        Val::Plain(s.to_string())
    }

    pub fn text(s: impl Into<String>) -> Val {
        Val::Text(s.into())
    }
}

/// A `health_check`: its keys in the order written. Two checks are the same check when their
/// keys are equal; the origin does not count.
#[derive(Clone, Debug)]
pub struct Check {
    pub origin: Origin,
    pub notes: Vec<String>,
    pub fields: Vec<(&'static str, Val)>,
    pub key_notes: KeyNotes,
}

impl Check {
    pub fn set(&mut self, key: &'static str, value: Val) {
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.fields.retain(|(k, _)| *k != key);
    }

    pub fn get(&self, key: &str) -> Option<&Val> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The keys whose values differ between two checks (either one's).
    pub fn differences(&self, other: &Check) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = Vec::new();
        for (k, _) in self.fields.iter().chain(&other.fields) {
            if !keys.contains(k) && self.get(k) != other.get(k) {
                keys.push(k);
            }
        }
        keys
    }
}

impl PartialEq for Check {
    fn eq(&self, other: &Check) -> bool {
        self.differences(other).is_empty()
    }
}

impl Eq for Check {}

/// A reference by name to another keepalived item (a track script, a sync group member),
/// with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ref {
    pub name: String,
    pub pos: Pos,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub origin: Origin,
    pub notes: Vec<String>,
    /// keepalived's name, which sync groups refer to.
    pub keepalived_name: String,
    pub name: String,
    pub interface: String,
    pub virtual_router_id: u8,
    pub priority: u8,
    pub version: u8,
    pub advert_interval: Micros,
    pub preempt: bool,
    pub preempt_delay: Micros,
    pub password: Option<String>,
    pub unicast_peers: Vec<IpAddr>,
    /// `ADDRESS` or `ADDRESS/PREFIX`.
    pub virtual_addresses: Vec<String>,
    pub garp: Garp,
    pub track_interfaces: Vec<String>,
    pub track_scripts: Vec<Ref>,
    pub notify: Notify,
    pub key_notes: KeyNotes,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Garp {
    pub repeat: Option<u32>,
    pub interval: Option<Micros>,
    pub refresh: Option<Micros>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    pub master: Option<String>,
    pub backup: Option<String>,
    pub fault: Option<String>,
    /// Written above the mapping (how keepalived's scripts were combined).
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VrrpScript {
    pub origin: Origin,
    pub keepalived_name: String,
    pub name: String,
    pub script: String,
    pub interval: Micros,
    pub timeout: Micros,
    pub weight: i64,
    pub rise: u32,
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncGroup {
    pub origin: Origin,
    pub name: String,
    pub instances: Vec<Ref>,
}
