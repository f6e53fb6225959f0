//! The controller's side of scale-out (`announce:`): after every change that can change
//! what this node should announce (ready, health, weights, reloads, drain), the plain facts
//! of the plan go to `announce::decide`, and the difference goes to the routing table.
//!
//! The controller's thread is synchronous; the table's netlink I/O runs on the daemon's
//! runtime (`Handle::block_on`), one short request per change.

use std::{collections::BTreeSet, net::IpAddr, sync::atomic::Ordering};

use anyhow::{Context, Result};
use lb_common::BACKEND_ACTIVE;
use serde::{Deserialize, Serialize};

use super::{requests::ControlError, Controller};
use crate::{
    announce::{self, AnnounceTable, Decisions, NodeFacts, Selection, ServiceFacts, VipFacts},
    config::{Announce, Config},
    plan::Plan,
};

/// The announcement table and what this daemon put in it.
pub(super) struct Announcer {
    table: AnnounceTable,
    runtime: tokio::runtime::Handle,
    /// VIPs whose route this daemon knows to be in the table.
    announced: BTreeSet<IpAddr>,
    /// Every VIP's decision at the last change.
    decisions: Decisions,
    /// `bascule drain-node` (or a stop's withdrawal) is in force.
    draining: bool,
}

impl Announcer {
    /// Opens the netlink socket on `runtime`.
    pub(super) fn connect(settings: &Announce, runtime: tokio::runtime::Handle) -> Result<Self> {
        let table = {
            let _inside = runtime.enter();
            AnnounceTable::connect(settings.table, settings.protocol)?
        };
        Ok(Announcer {
            table,
            runtime,
            announced: BTreeSet::new(),
            decisions: Decisions::new(),
            draining: false,
        })
    }
}

/// What `bascule status`, `/api/v1/services` and `bascule_announced{vip}` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    pub protocol: u8,
    /// `bascule drain-node` is in force (or the daemon is stopping).
    pub draining: bool,
    /// Every VIP of the configuration, in address order.
    pub vips: Vec<VipAnnouncement>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipAnnouncement {
    pub vip: IpAddr,
    /// Its route is in the table.
    pub announced: bool,
    /// Why it is (`announced`) or is not announced.
    pub reason: String,
}

/// The facts `announce::decide` needs from a plan: per service, its VIP and how many of
/// its planned backends take new connections (active, weight above 0), the sorry server
/// apart. `plan` is the plan of `config` (its services in the same order, each service's
/// backends in a row of `plan.backends`, the sorry server after the configured ones).
pub fn vip_facts(config: &Config, plan: &Plan) -> Vec<VipFacts> {
    let mut next = 0;
    let mut pairs = Vec::with_capacity(config.services.len());
    for (svc, planned) in config.services.iter().zip(&plan.services) {
        let n = planned.backends.len();
        let backends = plan.backends.get(next..next + n).unwrap_or_default();
        next += n;
        let serving = |b: &&crate::plan::PlannedBackend| {
            b.info.flags & BACKEND_ACTIVE != 0 && b.info.weight > 0
        };
        let configured = svc.backends.len().min(backends.len());
        let facts = ServiceFacts {
            name: svc.name.clone(),
            backends_up: backends[..configured].iter().filter(serving).count(),
            sorry_server: backends[configured..].iter().any(|b| serving(&b)),
        };
        pairs.extend(svc.addresses().map(|vip| (vip, facts.clone())));
    }
    announce::vip_facts(pairs)
}

impl Controller {
    /// Decides every VIP from the current plan and state.
    fn announce_decisions(&self, draining: bool) -> Decisions {
        let Some(settings) = &self.config.announce else {
            return Decisions::new();
        };
        let node = NodeFacts {
            ready: self.ready.load(Ordering::SeqCst),
            draining,
        };
        let facts = vip_facts(&self.config, &self.plan);
        announce::decide(node, &facts, &Selection::from_list(&settings.vips))
    }

    /// After a change: announces and withdraws what the decisions changed, one log line
    /// per VIP. A route the kernel refuses is logged and tried again at the next change.
    pub(super) fn update_announcements(&mut self) {
        let Some(a) = &self.announcer else {
            return;
        };
        let decisions = self.announce_decisions(a.draining);
        let a = self.announcer.as_mut().expect("checked above");
        let diff = announce::diff(&a.announced, &decisions);
        for change in diff.changes() {
            let done = if change.announce {
                a.runtime.block_on(a.table.add(change.vip)).map(|()| true)
            } else {
                a.runtime.block_on(a.table.remove(change.vip))
            };
            match done {
                Ok(_) if change.announce => {
                    a.announced.insert(change.vip);
                    tracing::info!(vip = %change.vip, "{change}");
                }
                Ok(_) => {
                    a.announced.remove(&change.vip);
                    tracing::info!(vip = %change.vip, reason = %change.reason, "{change}");
                }
                Err(e) => tracing::error!(vip = %change.vip, "cannot apply \"{change}\": {e:#}"),
            }
        }
        a.decisions = decisions;
    }

    /// At start, once ready: the table holds exactly the VIPs to announce now (routes a
    /// previous daemon left are kept if wanted, removed otherwise).
    pub(super) fn reconcile_announcements(&mut self) -> Result<()> {
        let Some(a) = &self.announcer else {
            return Ok(());
        };
        let decisions = self.announce_decisions(a.draining);
        let wanted = announce::wanted(&decisions);
        let a = self.announcer.as_mut().expect("checked above");
        let done = a
            .runtime
            .block_on(a.table.reconcile(&wanted))
            .with_context(|| format!("cannot set up announce.table {}", a.table.table()))?;
        for route in &done.removed {
            tracing::info!(
                table = a.table.table(),
                "route {route} removed: left in the table, not announced now"
            );
        }
        for (vip, reason) in &decisions {
            if done.added.contains(vip) {
                tracing::info!(vip = %vip, "VIP {vip} announced");
            } else if wanted.contains(vip) {
                tracing::info!(vip = %vip, "VIP {vip} announced (its route was in the table)");
            } else {
                tracing::info!(vip = %vip, "VIP {vip} not announced: {reason}");
            }
        }
        a.announced = wanted;
        a.decisions = decisions;
        Ok(())
    }

    /// Removes every route (a stop that takes the datapath away, or a failed start).
    pub(super) fn withdraw_all(&mut self) {
        let Some(a) = self.announcer.as_mut() else {
            return;
        };
        match a.runtime.block_on(a.table.reconcile(&BTreeSet::new())) {
            Ok(done) => {
                for route in done.removed {
                    tracing::info!(table = a.table.table(), "route {route} withdrawn: stopping");
                }
                a.announced.clear();
            }
            Err(e) => tracing::error!("cannot withdraw the announcements: {e:#}"),
        }
    }

    /// `bascule drain-node` (true) / `undrain-node` (false).
    pub(super) fn set_draining(&mut self, draining: bool) -> Result<AnnounceStatus, ControlError> {
        let Some(a) = self.announcer.as_mut() else {
            return Err(ControlError::Invalid(
                "this node announces nothing: the configuration has no announce: section".into(),
            ));
        };
        if a.draining != draining {
            a.draining = draining;
            tracing::info!(
                "node {}",
                if draining {
                    "drained: every VIP is withdrawn, the datapath keeps forwarding"
                } else {
                    "undrained: VIPs are announced again"
                }
            );
        }
        self.update_announcements();
        Ok(self.announce_status().unwrap_or_default())
    }

    /// What the snapshot shows; `None` without `announce:`.
    pub(super) fn announce_status(&self) -> Option<AnnounceStatus> {
        let a = self.announcer.as_ref()?;
        Some(AnnounceStatus {
            table: a.table.table(),
            protocol: a.table.protocol(),
            draining: a.draining,
            vips: a
                .decisions
                .iter()
                .map(|(vip, reason)| VipAnnouncement {
                    vip: *vip,
                    announced: a.announced.contains(vip),
                    reason: reason.to_string(),
                })
                .collect(),
        })
    }
}
