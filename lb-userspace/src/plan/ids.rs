//! Stable ids: what a plan keeps from the previous one (services taken as they are, the
//! ids of backends that stay), and the lowest free ids for the rest.

use std::{collections::HashMap, net::IpAddr};

use anyhow::{bail, Result};

use super::{MacTable, Plan, PlannedBackend, PlannedService};
use crate::config::Config;

/// Hands out the lowest ids below `limit` not reserved (reserved = kept from the previous
/// plan).
pub(super) struct IdAllocator {
    taken: Vec<bool>,
    cursor: u32,
    limit: u32,
}

impl IdAllocator {
    pub(super) fn new(reserved: impl IntoIterator<Item = u32>, limit: u32) -> Self {
        let mut taken = vec![false; limit as usize];
        for id in reserved {
            if let Some(t) = taken.get_mut(id as usize) {
                *t = true;
            }
        }
        IdAllocator {
            taken,
            cursor: 0,
            limit,
        }
    }

    pub(super) fn next(&mut self) -> Result<u32> {
        while self.taken.get(self.cursor as usize) == Some(&true) {
            self.cursor += 1;
        }
        let limit = self.limit;
        if self.cursor >= limit {
            bail!("more than {limit} ids needed; this build holds at most {limit}");
        }
        self.taken[self.cursor as usize] = true;
        Ok(self.cursor)
    }
}

/// The previous plan, indexed by service.
pub(super) struct Previous<'p> {
    pub(super) plan: &'p Plan,
    /// Each service's backends: the slice of `plan.backends` they are, when the plan lays
    /// them out service after service in order (what `plan` makes).
    services: HashMap<&'p str, (&'p PlannedService, Option<&'p [PlannedBackend]>)>,
    /// Otherwise (a plan of saved ids), every backend id by service, then address and port.
    all: HashMap<&'p str, HashMap<(IpAddr, u16), u32>>,
}

impl<'p> Previous<'p> {
    pub(super) fn of(plan: &'p Plan) -> Self {
        let mut at = 0;
        let mut services = HashMap::with_capacity(plan.services.len());
        let mut laid_out = true;
        for s in &plan.services {
            let slice = plan.backends.get(at..at + s.backends.len());
            let fits = slice.is_some_and(|b| b.iter().map(|b| b.id).eq(s.backends.iter().copied()));
            laid_out &= fits;
            services.insert(s.name.as_str(), (s, slice.filter(|_| fits)));
            at += s.backends.len();
        }
        laid_out &= at == plan.backends.len();
        if !laid_out {
            services.values_mut().for_each(|(_, slice)| *slice = None);
        }
        let mut all: HashMap<&str, HashMap<(IpAddr, u16), u32>> = HashMap::new();
        if !laid_out {
            for b in &plan.backends {
                all.entry(&*b.service)
                    .or_default()
                    .insert((b.address, b.port), b.id);
            }
        }
        Previous {
            plan,
            services,
            all,
        }
    }

    fn service(&self, name: &str) -> Option<(&'p PlannedService, Option<&'p [PlannedBackend]>)> {
        self.services.get(name).copied()
    }

    /// The ids of `service`'s backends in a plan not laid out by service.
    fn backend_ids(&self, service: &str) -> HashMap<(IpAddr, u16), u32> {
        self.all.get(service).cloned().unwrap_or_default()
    }
}

/// What a plan keeps of the previous one, per service of the new configuration (in its
/// order): the service and its backends as they were planned, when its inputs are the same
/// (`ServiceSource::is`), or else the ids its backends had; and every backend id so kept
/// (not handed out again).
pub(super) struct Kept<'p> {
    pub(super) reused: Vec<Option<(&'p PlannedService, &'p [PlannedBackend])>>,
    pub(super) ids: Vec<HashMap<(IpAddr, u16), u32>>,
    pub(super) reserved: Vec<u32>,
}

impl<'p> Kept<'p> {
    pub(super) fn of(config: &Config, macs: &MacTable, previous: Option<&Previous<'p>>) -> Self {
        let mut kept = Kept {
            reused: Vec::with_capacity(config.services.len()),
            ids: Vec::with_capacity(config.services.len()),
            reserved: Vec::new(),
        };
        for svc in &config.services {
            let before = previous.and_then(|p| p.service(&svc.name));
            let same = before.filter(|(s, b)| {
                b.is_some()
                    && s.source
                        .as_ref()
                        .is_some_and(|src| src.is(svc, macs, config))
            });
            if let Some((s, Some(b))) = same {
                kept.reserved.extend(b.iter().map(|b| b.id));
                kept.reused.push(Some((s, b)));
                kept.ids.push(HashMap::new());
                continue;
            }
            let ids: HashMap<(IpAddr, u16), u32> = match (previous, before) {
                (_, Some((_, Some(b)))) => b.iter().map(|b| ((b.address, b.port), b.id)).collect(),
                (Some(p), _) => p.backend_ids(&svc.name),
                (None, _) => HashMap::new(),
            };
            kept.reserved.extend(
                svc.backends
                    .iter()
                    .filter_map(|b| ids.get(&(b.address, b.port.unwrap_or(svc.port))).copied()),
            );
            kept.reused.push(None);
            kept.ids.push(ids);
        }
        kept
    }
}
