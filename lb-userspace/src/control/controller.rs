//! The controller's life: started (the datapath loaded or adopted, planned, attached),
//! serving requests and its timers on its own thread, stopped (the datapath removed, or
//! left forwarding for the next daemon).

use std::{
    collections::HashMap,
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    announcing::Announcer,
    commit::report_missing,
    inbox::{self, Inbox, Serves},
    node::{prepare_interfaces, warm_routed_backends},
    rates::RateTracker,
    requests::Request,
    runtime::{retain_overrides, BackendKey, Override, Runtime},
    snapshot::Reloads,
    snapshot::Snapshot,
    Controller, Start, Timers, RATE_INTERVAL, RECONCILE_EVERY, REFRESH_EVERY,
    REFRESH_MISSING_EVERY, RESOLVE_WAIT_START, SNAPSHOT_SHARED_FOR,
};
use crate::{
    config::XdpMode,
    datapath::{
        self,
        pins::{PinDir, SavedState, StateText},
        AttachMode, Datapath,
    },
    plan::Plan,
};

impl Controller {
    /// Loads (or adopts) the datapath, programs it, attaches it.
    pub fn start(s: Start) -> Result<Controller> {
        prepare_interfaces(&s.config)?;
        let entries = s.config.conntrack.max_entries;
        let pins = if s.pinned {
            Some(PinDir::open()?)
        } else {
            None
        };
        let mut saved = None;
        if let Some(p) = &pins {
            saved = adoptable_state(p, entries)?;
            if saved.is_none() && p.has_pins() {
                p.clear()?;
            }
        }
        let adopted = saved.is_some();
        let datapath = match &pins {
            Some(p) => Datapath::load_pinned(entries, p)?,
            None => Datapath::load(entries)?,
        };
        let mut runtime = Runtime::default();
        if let Some(source) = &s.health {
            runtime.health = source.borrow().clone();
        }
        if let Some(state) = &saved {
            runtime.overrides = state
                .overrides
                .iter()
                .map(|o| {
                    (
                        BackendKey {
                            service: o.service.clone(),
                            address: o.address,
                            port: o.port,
                        },
                        Override {
                            weight: o.weight,
                            config_weight: o.config_weight,
                        },
                    )
                })
                .collect();
            let dropped = retain_overrides(&mut runtime.overrides, &s.config);
            log_dropped_overrides(&dropped);
        }
        let announcer = match (&s.config.announce, s.io) {
            (Some(settings), Some(io)) => Some(Announcer::connect(settings, io)?),
            _ => None,
        };
        let previous = saved.as_ref().map(SavedState::id_plan);
        let mut c = Controller {
            path: s.path,
            config: Arc::new(s.config),
            parse_cache: s.parse_cache,
            state_text: StateText::default(),
            runtime,
            plan: Arc::new(previous.clone().unwrap_or_else(empty_plan)),
            missing_macs: Vec::new(),
            datapath,
            pins,
            adopted,
            interfaces: Vec::new(),
            xdp_modes: Vec::new(),
            reloads: Reloads::default(),
            rates: RateTracker::default(),
            retired: HashMap::new(),
            vrrp: s.vrrp,
            health_source: s.health,
            on_reload: s.on_reload,
            ready: s.ready,
            conntrack_live: 0,
            heartbeat: s.heartbeat,
            announcer,
            sync: s.sync,
            timers: Timers::starting(),
            shared_snapshot: None,
        };
        if let Err(e) = c.bring_up(previous.is_none()) {
            // A datapath adopted from a previous daemon was forwarding before: leave it so.
            // One made by this start goes, rather than forward half-configured.
            if c.adopted {
                c.datapath.keep_attached();
            } else {
                c.stop(false);
            }
            return Err(e);
        }
        Ok(c)
    }

    /// Plans, programs the maps, attaches to every interface. `fresh`: the maps are new.
    fn bring_up(&mut self, fresh: bool) -> Result<()> {
        let config = self.config.clone();
        warm_routed_backends(&config.services);
        let next = self.replan(&config, RESOLVE_WAIT_START)?;
        report_missing(&self.missing_macs);
        // Fresh maps hold nothing to keep; adopted ones are rewritten whole (same ids,
        // same tables), then cleaned of what the file no longer has.
        self.commit(next, fresh)?;
        if self.adopted {
            let (services, backends) = self.datapath.remove_unplanned(&self.plan)?;
            tracing::info!(
                stale_services = services,
                stale_backends = backends,
                "adopted the pinned datapath: connection table kept"
            );
        }
        for iface in &config.node.interfaces {
            let mode = match iface.xdp_mode {
                XdpMode::Auto => AttachMode::Auto,
                XdpMode::Native => AttachMode::Native,
                XdpMode::Generic => AttachMode::Generic,
            };
            self.datapath.attach(&iface.name, mode)?;
            self.interfaces.push(iface.name.clone());
            let attached =
                crate::host::interfaces::xdp_attach_mode(&iface.name).unwrap_or_else(|e| {
                    tracing::warn!(interface = %iface.name, "cannot read the XDP mode: {e:#}");
                    "unknown"
                });
            self.xdp_modes.push(attached.to_string());
        }
        let keep: Vec<&str> = self.interfaces.iter().map(String::as_str).collect();
        self.datapath.prune_links(&keep)?;
        self.start_sync()?;
        // Health that changed while this was starting is in the maps before "ready".
        if let Some(now) = self.newer_health() {
            self.runtime.health = now;
            let next = self.replan(&config, Duration::ZERO)?;
            self.commit(next, false)?;
        }
        self.ready.store(true, Ordering::SeqCst);
        self.reconcile_announcements()?;
        tracing::info!(
            services = self.plan.services.len(),
            backends = self.plan.backends.len(),
            adopted = self.adopted,
            "bascule ready"
        );
        Ok(())
    }

    /// Serves requests until `Stop` (or until every handle is gone: a plain stop). The
    /// heartbeat, if any, beats from this loop (`timers`): at once, then every period,
    /// whatever the requests (a request that never ends stops it).
    pub fn run(mut self, requests: Inbox) {
        self.timers.refresh = Instant::now() + self.refresh_interval();
        inbox::serve(&mut self, &requests);
    }

    fn refresh_interval(&self) -> Duration {
        if self.missing_macs.is_empty() {
            REFRESH_EVERY
        } else {
            REFRESH_MISSING_EVERY
        }
    }

    /// One snapshot answers every observer for [`SNAPSHOT_SHARED_FOR`] (a change made
    /// here drops it): a flood of `/metrics` requests builds a few, not one each.
    fn shared_snapshot(&mut self) -> Arc<Snapshot> {
        if let Some((at, s)) = &self.shared_snapshot {
            if at.elapsed() < SNAPSHOT_SHARED_FOR {
                return s.clone();
            }
        }
        let s = Arc::new(self.snapshot());
        self.shared_snapshot = Some((Instant::now(), s.clone()));
        s
    }
}

impl Serves for Controller {
    fn handle(&mut self, request: Request) {
        if !matches!(request, Request::Snapshot(_) | Request::Simulate { .. }) {
            self.shared_snapshot = None;
        }
        match request {
            Request::Snapshot(reply) => {
                let _ = reply.send(self.shared_snapshot());
            }
            Request::Reload(reply) => {
                let _ = reply.send(self.reload());
            }
            Request::SetWeight {
                service,
                backend,
                weight,
                reply,
            } => {
                let _ = reply.send(self.set_weight(&service, &backend, weight));
            }
            Request::Health(health) => self.set_health(health),
            Request::Drain { drain, reply } => {
                let _ = reply.send(self.set_draining(drain));
            }
            Request::Simulate {
                src,
                dst,
                proto,
                reply,
            } => {
                let _ = reply.send(self.simulate(src, dst, proto));
            }
            Request::Sync(entries) => self.apply_synced(entries),
            Request::SyncTable(reply) => {
                let _ = reply.send(self.synced_table());
            }
            Request::Stop { .. } => unreachable!("handled by inbox::serve"),
        }
    }

    fn timers(&mut self) -> Instant {
        let now = Instant::now();
        if now >= self.timers.sample {
            self.timers.sample = now + RATE_INTERVAL;
            self.sample_rates();
        }
        if now >= self.timers.refresh {
            self.refresh();
            self.timers.refresh = Instant::now() + self.refresh_interval();
        }
        if now >= self.timers.reconcile {
            self.reconcile_conntrack();
            self.timers.reconcile = Instant::now() + RECONCILE_EVERY;
        }
        let now = Instant::now();
        let mut wake = {
            let t = &self.timers;
            t.refresh.min(t.sample).min(t.reconcile)
        };
        if let Some(h) = &mut self.heartbeat {
            if now >= self.timers.beat {
                (h.beat)();
                self.timers.beat = now + h.every;
            }
            wake = wake.min(self.timers.beat);
        }
        wake
    }

    fn stop(&mut self, keep_datapath: bool) {
        Controller::stop(self, keep_datapath);
    }
}

impl Controller {
    fn reconcile_conntrack(&mut self) {
        let c = &self.config.conntrack;
        match self.datapath.reconcile(
            c.tcp_timeout.as_nanos() as u64,
            c.udp_timeout.as_nanos() as u64,
        ) {
            Ok(r) => {
                self.conntrack_live = r.live as u64;
                if r.expired > 0 {
                    tracing::debug!(
                        live = r.live,
                        expired = r.expired,
                        "connection table reconciled"
                    );
                }
            }
            Err(e) => tracing::warn!("cannot reconcile the connection table: {e:#}"),
        }
    }

    pub(super) fn stop(&mut self, keep_datapath: bool) {
        self.ready.store(false, Ordering::SeqCst);
        if keep_datapath && self.pins.is_some() {
            // The routes stay too: the datapath they attract traffic to stays, and the
            // next daemon reconciles them.
            let kept = self.datapath.keep_attached();
            tracing::info!(
                interfaces = ?kept,
                "stopping; the datapath keeps forwarding (pinned), the next `bascule run` adopts it"
            );
            return;
        }
        // No route may attract traffic to a node that stops forwarding.
        self.withdraw_all();
        tracing::info!("stopping; removing the datapath");
        self.datapath.detach_all();
        if let Some(pins) = self.pins.take() {
            if let Err(e) = pins.remove() {
                tracing::warn!("cannot remove the pinned state: {e:#}");
            }
        }
    }
}

fn empty_plan() -> Plan {
    Plan {
        settings: Default::default(),
        services: Vec::new(),
        backends: Vec::new(),
    }
}

/// The saved state, if what is pinned can be adopted (see [`datapath::adoption`]);
/// otherwise says why it starts over.
fn adoptable_state(pins: &PinDir, conntrack_entries: u32) -> Result<Option<SavedState>> {
    match datapath::adoption(pins, conntrack_entries)? {
        None => Ok(None),
        Some(Ok(state)) => {
            tracing::info!(dir = %pins.root().display(), "adopting the pinned datapath");
            Ok(Some(state))
        }
        Some(Err(why)) => {
            tracing::warn!(
                dir = %pins.root().display(),
                "not adopting the pinned datapath ({why}): starting over, established flows will be rescheduled"
            );
            Ok(None)
        }
    }
}

pub(super) fn log_dropped_overrides(dropped: &[(BackendKey, String)]) {
    for (k, why) in dropped {
        tracing::info!(backend = %k, "runtime weight dropped: {why}");
    }
}
