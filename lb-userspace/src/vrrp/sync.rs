//! Sync groups (keepalived's `vrrp_sync_group`): the instances of a group change state
//! together. [`Group`] (pure) turns what one member reports into the events the others
//! get: while a member has a fault of its own (links, a script of weight 0), the others
//! get [`Event::GroupFault`]; when a member becomes master, the others get
//! [`Event::GroupMaster`]; when a master gives way to a higher priority (Master ->
//! Backup), the others get [`Event::GroupBackup`]. [`Hub`] holds the groups of the running
//! instances and delivers those events on each member's channel.
//!
//! A member's fault caused by its group is not a fault of its own, and a member following
//! its group reports its transition like any other: the others are then already in that
//! state, and the event changes nothing.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use tokio::sync::mpsc;

use super::state::{Event, State};

/// What a member tells its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// Whether it has a fault of its own (a link down, a script of weight 0 failing).
    OwnFault(bool),
    Transition {
        from: State,
        to: State,
    },
}

/// One group's members, each with whether it has a fault of its own.
#[derive(Clone, Debug, Default)]
pub struct Group {
    members: BTreeMap<String, bool>,
}

impl Group {
    /// Whether a member other than `name` has a fault of its own.
    fn fault_for(&self, name: &str) -> bool {
        self.members.iter().any(|(m, &f)| m != name && f)
    }

    /// Adds a member (no fault of its own yet); returns what it must be told at once.
    pub fn join(&mut self, name: &str) -> Option<Event> {
        self.members.insert(name.to_string(), false);
        self.fault_for(name)
            .then_some(Event::GroupFault { fault: true })
    }

    /// Removes a member; returns the events for the others (a fault of its own ends).
    pub fn leave(&mut self, name: &str) -> Vec<(String, Event)> {
        let out = self.report(name, Report::OwnFault(false));
        self.members.remove(name);
        out
    }

    /// The events the other members get from `name`'s report.
    pub fn report(&mut self, name: &str, report: Report) -> Vec<(String, Event)> {
        let others: Vec<String> = self
            .members
            .keys()
            .filter(|m| *m != name)
            .cloned()
            .collect();
        match report {
            Report::OwnFault(fault) => {
                let before: Vec<bool> = others.iter().map(|m| self.fault_for(m)).collect();
                if let Some(f) = self.members.get_mut(name) {
                    *f = fault;
                }
                others
                    .into_iter()
                    .zip(before)
                    .filter_map(|(m, was)| {
                        let is = self.fault_for(&m);
                        (is != was).then_some((m, Event::GroupFault { fault: is }))
                    })
                    .collect()
            }
            Report::Transition { from, to } => {
                let event = match (from, to) {
                    (f, State::Master) if f != State::Master => Event::GroupMaster,
                    (State::Master, State::Backup) => Event::GroupBackup,
                    _ => return Vec::new(),
                };
                others.into_iter().map(|m| (m, event)).collect()
            }
        }
    }
}

/// The groups of the running instances, shared by them.
#[derive(Clone, Debug, Default)]
pub struct Hub(Arc<Mutex<BTreeMap<String, HubGroup>>>);

#[derive(Debug, Default)]
struct HubGroup {
    group: Group,
    channels: BTreeMap<String, mpsc::UnboundedSender<Event>>,
}

/// A running instance's place in its group; leaves it when dropped.
#[derive(Debug)]
pub struct Member {
    hub: Hub,
    group: String,
    name: String,
}

impl Hub {
    /// Joins `name` to `group`; the receiver gets the events the group sends it (the first
    /// at once if another member is in fault).
    pub fn join(&self, group: &str, name: &str) -> (Member, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut groups = self.lock();
        let g = groups.entry(group.to_string()).or_default();
        if let Some(first) = g.group.join(name) {
            let _ = tx.send(first);
        }
        g.channels.insert(name.to_string(), tx);
        let member = Member {
            hub: self.clone(),
            group: group.to_string(),
            name: name.to_string(),
        };
        (member, rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HubGroup>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deliver(g: &HubGroup, events: Vec<(String, Event)>) {
        for (to, event) in events {
            if let Some(tx) = g.channels.get(&to) {
                let _ = tx.send(event);
            }
        }
    }
}

impl Member {
    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn report(&self, report: Report) {
        let mut groups = self.hub.lock();
        if let Some(g) = groups.get_mut(&self.group) {
            let events = g.group.report(&self.name, report);
            if !events.is_empty() {
                tracing::info!(group = %self.group, instance = %self.name, ?report, "sync group follows");
            }
            Hub::deliver(g, events);
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut groups = self.hub.lock();
        if let Some(g) = groups.get_mut(&self.group) {
            let events = g.group.leave(&self.name);
            g.channels.remove(&self.name);
            Hub::deliver(g, events);
            if g.channels.is_empty() {
                groups.remove(&self.group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(names: &[&str]) -> Group {
        let mut g = Group::default();
        for n in names {
            assert_eq!(g.join(n), None);
        }
        g
    }

    fn to(names: &[&str], event: Event) -> Vec<(String, Event)> {
        names.iter().map(|n| (n.to_string(), event)).collect()
    }

    #[test]
    fn a_fault_of_one_member_faults_the_others_until_it_ends() {
        let mut g = group(&["VI_4", "VI_6", "GW"]);
        let fault = |f| Event::GroupFault { fault: f };
        assert_eq!(
            g.report("VI_6", Report::OwnFault(true)),
            to(&["GW", "VI_4"], fault(true))
        );
        // A second member's own fault changes nothing for the others but the first.
        assert_eq!(
            g.report("GW", Report::OwnFault(true)),
            to(&["VI_6"], fault(true))
        );
        assert_eq!(
            g.report("VI_6", Report::OwnFault(false)),
            to(&["GW"], fault(false))
        );
        assert_eq!(g.report("VI_6", Report::OwnFault(false)), vec![]);
        // A member joining a group in fault is told at once; one leaving ends its fault.
        assert_eq!(g.join("NEW"), Some(fault(true)));
        assert_eq!(g.leave("GW"), to(&["NEW", "VI_4", "VI_6"], fault(false)));
    }

    #[test]
    fn master_and_master_loss_move_the_others() {
        let mut g = group(&["VI_4", "VI_6"]);
        let moved = |from, to| Report::Transition { from, to };
        assert_eq!(
            g.report("VI_4", moved(State::Backup, State::Master)),
            to(&["VI_6"], Event::GroupMaster)
        );
        assert_eq!(
            g.report("VI_6", moved(State::Master, State::Backup)),
            to(&["VI_4"], Event::GroupBackup)
        );
        // Starting, stopping and faults are not followed this way.
        for (from, to) in [
            (State::Initialize, State::Backup),
            (State::Fault, State::Backup),
            (State::Master, State::Fault),
            (State::Master, State::Initialize),
            (State::Backup, State::Fault),
        ] {
            assert_eq!(
                g.report("VI_4", moved(from, to)),
                vec![],
                "{from:?} -> {to:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_hub_delivers_to_the_other_members() {
        let hub = Hub::default();
        let (a, mut rx_a) = hub.join("G1", "VI_4");
        let (b, mut rx_b) = hub.join("G1", "VI_6");
        let (_c, mut rx_c) = hub.join("G2", "OTHER");
        b.report(Report::OwnFault(true));
        assert_eq!(rx_a.recv().await, Some(Event::GroupFault { fault: true }));
        drop(b);
        assert_eq!(rx_a.recv().await, Some(Event::GroupFault { fault: false }));
        a.report(Report::Transition {
            from: State::Backup,
            to: State::Master,
        });
        assert!(rx_b.try_recv().is_err(), "b left");
        assert!(rx_c.try_recv().is_err(), "another group");
        assert!(rx_a.try_recv().is_err(), "not to itself");
    }
}
