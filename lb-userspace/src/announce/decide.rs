//! Pure: which VIPs this node should announce now, why, and what changes.
//!
//! A VIP is announced while the datapath is ready, the node is not draining, and at least
//! one service on the VIP can serve a new connection (a backend up, or its sorry server).
//! An operator can narrow the set with `announce.vips` ([`Selection`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use serde::Serialize;

/// What the node as a whole contributes to every VIP's decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The datapath is attached and its maps hold the current plan (`/readyz`).
    pub ready: bool,
    /// `bascule drain-node` (or SIGTERM's withdrawal) is in force.
    pub draining: bool,
}

/// One service on a VIP, as far as announcing is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceFacts {
    pub name: String,
    /// Backends that are up and may take new connections.
    pub backends_up: usize,
    /// A `sorry_server` is configured (it takes the service's new connections while no
    /// backend is up).
    pub sorry_server: bool,
}

impl ServiceFacts {
    /// Whether a new connection to this service would be answered.
    pub fn can_serve(&self) -> bool {
        self.backends_up > 0 || self.sorry_server
    }
}

/// A VIP and the services that listen on it (several ports or protocols may share one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipFacts {
    pub vip: IpAddr,
    pub services: Vec<ServiceFacts>,
}

/// Groups `(vip, service)` pairs by VIP, in address order. A service with several VIPs
/// (`vips:`) comes once per VIP.
pub fn vip_facts(services: impl IntoIterator<Item = (IpAddr, ServiceFacts)>) -> Vec<VipFacts> {
    let mut by_vip: BTreeMap<IpAddr, Vec<ServiceFacts>> = BTreeMap::new();
    for (vip, service) in services {
        by_vip.entry(vip).or_default().push(service);
    }
    by_vip
        .into_iter()
        .map(|(vip, services)| VipFacts { vip, services })
        .collect()
}

/// `announce.vips`: every service VIP (the list is empty), or only those listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Selection {
    #[default]
    Every,
    Only(BTreeSet<IpAddr>),
}

impl Selection {
    /// From the configured list: empty means every VIP.
    pub fn from_list(vips: &[IpAddr]) -> Selection {
        if vips.is_empty() {
            Selection::Every
        } else {
            Selection::Only(vips.iter().copied().collect())
        }
    }

    pub fn contains(&self, vip: IpAddr) -> bool {
        match self {
            Selection::Every => true,
            Selection::Only(vips) => vips.contains(&vip),
        }
    }
}

/// Why a VIP is or is not announced: what `bascule status` and the API show beside it,
/// and the end of the log line of a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    Announced,
    /// `announce.vips` lists other VIPs only.
    NotSelected,
    /// The datapath is not attached and programmed (yet, or any more).
    NotReady,
    Draining,
    /// No service on the VIP has a backend up or a sorry server.
    NoBackendUp,
    /// Announced before, but no service uses the VIP any more (a reload removed it).
    NoService,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Announced => "announced",
            Reason::NotSelected => "not in announce.vips",
            Reason::NotReady => "not ready",
            Reason::Draining => "draining",
            Reason::NoBackendUp => "no backend up",
            Reason::NoService => "no service uses it",
        }
    }

    pub fn is_announced(self) -> bool {
        self == Reason::Announced
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Every VIP of the config and the reason it is or is not announced.
pub type Decisions = BTreeMap<IpAddr, Reason>;

/// Decides every VIP in `vips`. When several reasons hold, the first of these wins:
/// not selected (configuration, lasting), not ready, draining (the node), no backend up
/// (the VIP). The same VIP given twice counts as one with all its services.
pub fn decide(node: NodeFacts, vips: &[VipFacts], selection: &Selection) -> Decisions {
    let mut can_serve: BTreeMap<IpAddr, bool> = BTreeMap::new();
    for facts in vips {
        let serves = facts.services.iter().any(ServiceFacts::can_serve);
        *can_serve.entry(facts.vip).or_default() |= serves;
    }
    can_serve
        .into_iter()
        .map(|(vip, serves)| {
            let reason = if !selection.contains(vip) {
                Reason::NotSelected
            } else if !node.ready {
                Reason::NotReady
            } else if node.draining {
                Reason::Draining
            } else if !serves {
                Reason::NoBackendUp
            } else {
                Reason::Announced
            };
            (vip, reason)
        })
        .collect()
}

/// The VIPs `decisions` announces: what the routing table should hold.
pub fn wanted(decisions: &Decisions) -> BTreeSet<IpAddr> {
    decisions
        .iter()
        .filter(|(_, reason)| reason.is_announced())
        .map(|(vip, _)| *vip)
        .collect()
}

/// One VIP starting or stopping to be announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub vip: IpAddr,
    /// true: announce; false: withdraw.
    pub announce: bool,
    /// Why (for a withdrawal: why no longer).
    pub reason: Reason,
}

impl fmt::Display for Change {
    /// The change's log line: `VIP 10.0.0.100 announced`, `VIP 10.0.0.100 withdrawn:
    /// no backend up`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.announce {
            write!(f, "VIP {} announced", self.vip)
        } else {
            write!(f, "VIP {} withdrawn: {}", self.vip, self.reason)
        }
    }
}

/// What turns the announcement of now into the one `decisions` wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// In address order.
    pub announce: Vec<Change>,
    /// In address order.
    pub withdraw: Vec<Change>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.announce.is_empty() && self.withdraw.is_empty()
    }

    /// Withdrawals first, then announcements.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.withdraw.iter().chain(&self.announce)
    }
}

/// Compares the VIPs announced now with `decisions`. A VIP announced now that
/// `decisions` does not name is withdrawn with [`Reason::NoService`].
pub fn diff(announced_now: &BTreeSet<IpAddr>, decisions: &Decisions) -> Diff {
    let mut result = Diff::default();
    for (&vip, &reason) in decisions {
        let now = announced_now.contains(&vip);
        if reason.is_announced() && !now {
            result.announce.push(Change {
                vip,
                announce: true,
                reason,
            });
        } else if !reason.is_announced() && now {
            result.withdraw.push(Change {
                vip,
                announce: false,
                reason,
            });
        }
    }
    for &vip in announced_now {
        if !decisions.contains_key(&vip) {
            result.withdraw.push(Change {
                vip,
                announce: false,
                reason: Reason::NoService,
            });
        }
    }
    result.withdraw.sort_by_key(|c| c.vip);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: NodeFacts = NodeFacts {
        ready: true,
        draining: false,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn service(name: &str, backends_up: usize, sorry_server: bool) -> ServiceFacts {
        ServiceFacts {
            name: name.to_string(),
            backends_up,
            sorry_server,
        }
    }

    /// 10.0.0.1: web (2 up) and dns (none up); 10.0.0.2: api (none up, sorry server);
    /// fd00::3: web6 (none up).
    fn lab() -> Vec<VipFacts> {
        vip_facts([
            (ip("10.0.0.1"), service("web", 2, false)),
            (ip("fd00::3"), service("web6", 0, false)),
            (ip("10.0.0.2"), service("api", 0, true)),
            (ip("10.0.0.1"), service("dns", 0, false)),
        ])
    }

    fn reasons(decisions: &Decisions) -> Vec<(String, &'static str)> {
        decisions
            .iter()
            .map(|(vip, r)| (vip.to_string(), r.as_str()))
            .collect()
    }

    fn owned(pairs: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
        pairs.iter().map(|(v, r)| (v.to_string(), *r)).collect()
    }

    #[test]
    fn services_are_grouped_by_vip_in_address_order() {
        let facts = lab();
        let vips: Vec<String> = facts.iter().map(|f| f.vip.to_string()).collect();
        assert_eq!(vips, ["10.0.0.1", "10.0.0.2", "fd00::3"]);
        let names: Vec<&str> = facts[0].services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "dns"]);
    }

    #[test]
    fn a_vip_is_announced_while_one_of_its_services_can_serve() {
        let decisions = decide(READY, &lab(), &Selection::Every);
        assert_eq!(
            reasons(&decisions),
            owned(&[
                ("10.0.0.1", "announced"),
                ("10.0.0.2", "announced"),
                ("fd00::3", "no backend up"),
            ])
        );
        assert_eq!(
            wanted(&decisions),
            BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2")])
        );
    }

    #[test]
    fn a_vip_without_services_is_not_announced() {
        let facts = [VipFacts {
            vip: ip("10.0.0.9"),
            services: vec![],
        }];
        let decisions = decide(READY, &facts, &Selection::Every);
        assert_eq!(decisions[&ip("10.0.0.9")], Reason::NoBackendUp);
    }

    #[test]
    fn a_vip_given_twice_counts_all_its_services() {
        let facts = [
            VipFacts {
                vip: ip("10.0.0.1"),
                services: vec![service("down", 0, false)],
            },
            VipFacts {
                vip: ip("10.0.0.1"),
                services: vec![service("up", 1, false)],
            },
        ];
        let decisions = decide(READY, &facts, &Selection::Every);
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[&ip("10.0.0.1")], Reason::Announced);
    }

    #[test]
    fn a_node_not_ready_or_draining_announces_nothing() {
        let not_ready = NodeFacts {
            ready: false,
            draining: false,
        };
        let decisions = decide(not_ready, &lab(), &Selection::Every);
        assert_eq!(
            reasons(&decisions),
            owned(&[
                ("10.0.0.1", "not ready"),
                ("10.0.0.2", "not ready"),
                ("fd00::3", "not ready"),
            ])
        );
        let draining = NodeFacts {
            ready: true,
            draining: true,
        };
        let decisions = decide(draining, &lab(), &Selection::Every);
        assert!(wanted(&decisions).is_empty());
        assert_eq!(decisions[&ip("10.0.0.1")], Reason::Draining);
        // Not ready outranks draining: the datapath is the first thing an operator fixes.
        let both = NodeFacts {
            ready: false,
            draining: true,
        };
        assert_eq!(
            decide(both, &lab(), &Selection::Every)[&ip("10.0.0.1")],
            Reason::NotReady
        );
    }

    #[test]
    fn announce_vips_narrows_the_set_and_says_so() {
        let selection = Selection::from_list(&[ip("10.0.0.2"), ip("fd00::3")]);
        let decisions = decide(READY, &lab(), &selection);
        assert_eq!(
            reasons(&decisions),
            owned(&[
                ("10.0.0.1", "not in announce.vips"),
                ("10.0.0.2", "announced"),
                ("fd00::3", "no backend up"),
            ])
        );
        // The selection outranks the node's state: it does not change at run time.
        let draining = NodeFacts {
            ready: true,
            draining: true,
        };
        assert_eq!(
            decide(draining, &lab(), &selection)[&ip("10.0.0.1")],
            Reason::NotSelected
        );
        assert_eq!(Selection::from_list(&[]), Selection::Every);
    }

    #[test]
    fn diff_announces_withdraws_and_logs_one_line_per_change() {
        let now = BTreeSet::from([ip("10.0.0.2"), ip("fd00::3"), ip("10.9.9.9")]);
        let decisions = decide(READY, &lab(), &Selection::Every);
        let d = diff(&now, &decisions);
        let lines: Vec<String> = d.changes().map(Change::to_string).collect();
        assert_eq!(
            lines,
            [
                "VIP 10.9.9.9 withdrawn: no service uses it",
                "VIP fd00::3 withdrawn: no backend up",
                "VIP 10.0.0.1 announced",
            ]
        );
        // Applied, nothing is left to change.
        let after: BTreeSet<IpAddr> = wanted(&decisions);
        assert!(diff(&after, &decisions).is_empty());
    }

    #[test]
    fn backends_going_down_and_back_withdraw_and_announce_again() {
        let mut facts = vip_facts([(ip("10.0.0.1"), service("web", 1, false))]);
        let announced = wanted(&decide(READY, &facts, &Selection::Every));
        facts[0].services[0].backends_up = 0;
        let down = decide(READY, &facts, &Selection::Every);
        let d = diff(&announced, &down);
        assert_eq!(
            d.withdraw,
            [Change {
                vip: ip("10.0.0.1"),
                announce: false,
                reason: Reason::NoBackendUp
            }]
        );
        assert!(d.announce.is_empty());
        facts[0].services[0].backends_up = 3;
        let up = decide(READY, &facts, &Selection::Every);
        let d = diff(&wanted(&down), &up);
        let lines: Vec<String> = d.changes().map(Change::to_string).collect();
        assert_eq!(lines, ["VIP 10.0.0.1 announced"]);
    }

    #[test]
    fn reasons_serialize_as_their_text() {
        let json = serde_json::to_string(&decide(READY, &lab(), &Selection::Every)).unwrap();
        assert_eq!(
            json,
            r#"{"10.0.0.1":"announced","10.0.0.2":"announced","fd00::3":"no backend up"}"#
        );
    }
}
