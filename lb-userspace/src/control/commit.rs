//! Planning and committing: the plan of a config under the runtime state (MACs resolved,
//! ids kept from the plan the maps hold), written into the maps with the ids saved first
//! and the counters of leaving backends kept; and the periodic refresh.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    node::{dr_backend_addresses, missing_dr_macs, tunnel_sources},
    rates::add,
    reload::{by_name, configured},
    runtime::{planning_input, same_for_datapath, BackendKey},
    Controller,
};
use crate::{
    config::Config,
    datapath::{
        self,
        pins::{SavedOverride, SavedService, SavedState, StateText},
    },
    health::{plan_with_health, HealthMap},
    host,
    plan::{MacTable, Plan, Table},
};

impl Controller {
    /// The plan for `config` under the current runtime state, ids kept from the plan the
    /// maps hold.
    pub(super) fn replan(&mut self, config: &Config, wait: Duration) -> Result<Plan> {
        // dr backends' and sorry servers' MACs, whatever their health.
        let macs: MacTable = host::neighbours::resolve_macs(&dr_backend_addresses(config), wait)?
            .into_iter()
            .collect();
        self.missing_macs = missing_dr_macs(config, &macs);
        let (input, health) = planning_input(config, &self.runtime);
        plan_with_health(
            &input,
            &macs,
            tunnel_sources(config)?,
            Some(&self.plan),
            &health,
        )
    }

    /// The health checks' map now, if what the datapath depends on differs from the map
    /// it was planned with.
    pub(super) fn newer_health(&self) -> Option<HealthMap> {
        let source = self.health_source.as_ref()?;
        let now = source.borrow();
        (!same_for_datapath(&now, &self.runtime.health)).then(|| now.clone())
    }

    /// Writes `next` into the maps (only the difference from what they hold), keeping the
    /// counters of backends that leave, zeroing those of ids that are new, and saving the
    /// ids first (a crash after this point restarts with the ids the maps are about to
    /// hold). `fresh`: the maps are new, every id is new.
    pub(super) fn commit(&mut self, next: Plan, fresh: bool) -> Result<()> {
        let trim = fresh || tables_built(&self.plan, &next) >= TRIM_FROM_TABLES;
        let ids = |p: &Plan| IdSet::of(p.backends.iter().map(|b| b.id));
        let (next_ids, current_ids) = (ids(&next), ids(&self.plan));
        for gone in self
            .plan
            .backends
            .iter()
            .filter(|b| !next_ids.contains(b.id))
        {
            if let Ok(c) = self.datapath.backend_counters(gone.id) {
                let key = BackendKey {
                    service: gone.service.to_string(),
                    address: gone.address,
                    port: gone.port,
                };
                let total = add(self.retired.get(&key).copied().unwrap_or_default(), c);
                self.retired.insert(key, total);
            }
        }
        let current_services: HashSet<u32> = self.plan.services.iter().map(|s| s.info.id).collect();
        let new_services: Vec<u32> = next
            .services
            .iter()
            .map(|s| s.info.id)
            .filter(|id| fresh || !current_services.contains(id))
            .collect();
        let new_backends: Vec<u32> = next
            .backends
            .iter()
            .map(|b| b.id)
            .filter(|id| fresh || !current_ids.contains(*id))
            .collect();
        let t = Instant::now();
        self.save_state(&next)?;
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: state saved"
        );
        self.datapath
            .reset_counters(&new_services, &new_backends)
            .context("cannot reset the counters of new services and backends")?;
        let t = Instant::now();
        let next = Arc::new(next);
        self.datapath
            .apply_shared(Arc::clone(&next))
            .context("cannot update the datapath maps")?;
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: maps written"
        );
        self.plan = next;
        // What the node announces follows what the maps hold.
        self.update_announcements();
        self.sync_plan_changed();
        // Counts of backends no longer configured at all are forgotten.
        if !self.retired.is_empty() {
            let services = by_name(&self.config);
            self.retired.retain(|k, _| configured(&services, k));
        }
        if !trim {
            return Ok(());
        }
        let t = Instant::now();
        release_freed_memory();
        tracing::debug!(
            took_us = t.elapsed().as_micros() as u64,
            "commit: memory released"
        );
        Ok(())
    }

    fn save_state(&mut self, plan: &Plan) -> Result<()> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let services = plan
            .services
            .iter()
            .map(|s| SavedService {
                name: s.name.clone(),
                id: s.info.id,
            })
            .collect();
        let state = SavedState {
            netns_cookie: pins.netns_cookie(),
            object_digest: datapath::object_digest(),
            conntrack_entries: self.config.conntrack.max_entries,
            services,
            backends: Vec::new(),
            overrides: self
                .runtime
                .overrides
                .iter()
                .map(|(k, o)| SavedOverride {
                    service: k.service.clone(),
                    address: k.address,
                    port: k.port,
                    weight: o.weight,
                    config_weight: o.config_weight,
                })
                .collect(),
        };
        match self.state_text.of(&state, plan)? {
            // Not written: the next plan writes the whole file again.
            Some(text) => pins
                .write_state_text(&text)
                .inspect_err(|_| self.state_text = StateText::default()),
            None => Ok(()),
        }
    }

    /// Re-plans the current config (MACs may have changed) and applies any difference.
    pub(super) fn refresh(&mut self) {
        let before = self.missing_macs.len();
        let config = self.config.clone();
        let result = self
            .replan(&config, Duration::ZERO)
            .and_then(|next| self.commit(next, false));
        match result {
            Ok(()) if self.missing_macs.len() < before => tracing::info!(
                "learnt MAC addresses of {} backend(s)",
                before - self.missing_macs.len()
            ),
            Ok(()) => {}
            Err(e) => tracing::error!("cannot refresh the datapath: {e:#}"),
        }
    }
}

pub(super) fn report_missing(missing: &[IpAddr]) {
    for a in missing {
        tracing::warn!(backend = %a, "no MAC address for dr backend yet (not on this L2 segment?); it takes no flows until it answers ARP/NDP");
    }
}

/// From this many tables built by one plan, the commit hands freed memory back to the
/// system. Below, it leaves it to the allocator: the next reload of a few services
/// allocates about as much again (the file's services, the plan), and memory handed back
/// is faulted in again page by page. At 1,000 x 100, a one-service reload spent about a
/// fifth of its time on that (65 ms with, 51 ms without, median of 20, on the machine of
/// 2026-12-04) for 22 MB (7%) more resident memory.
const TRIM_FROM_TABLES: usize = 64;

/// How many lookup tables `next` built itself: its distinct tables of indexes not taken
/// from the service of the same id in `previous` (a plan reuses the tables whose inputs
/// did not change, and services of one pool share one).
pub(super) fn tables_built(previous: &Plan, next: &Plan) -> usize {
    let before: HashMap<u32, &Table> = previous
        .services
        .iter()
        .map(|s| (s.info.id, &s.table))
        .collect();
    next.services
        .iter()
        .filter(|s| !before.get(&s.info.id).is_some_and(|t| t.same(&s.table)))
        .map(|s| s.table.indexes().as_ptr())
        .collect::<HashSet<_>>()
        .len()
}

/// A set of backend ids (below `MAX_BACKENDS`): one bit each.
struct IdSet(Vec<u64>);

impl IdSet {
    fn of(ids: impl Iterator<Item = u32>) -> IdSet {
        let mut words = vec![0u64; lb_common::MAX_BACKENDS.div_ceil(64) as usize];
        for id in ids {
            if let Some(w) = words.get_mut(id as usize / 64) {
                *w |= 1 << (id % 64);
            }
        }
        IdSet(words)
    }

    fn contains(&self, id: u32) -> bool {
        self.0
            .get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// Hands the memory a (re)plan freed back to the system: parsing a large file and building
/// its tables on several threads leaves most of it in the allocator's per-thread arenas,
/// which would otherwise count in the daemon's resident size until the next plan. Only
/// after a plan that built many tables (see `TRIM_FROM_TABLES`).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}
