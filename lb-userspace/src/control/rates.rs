//! Rates: the datapath's counters sampled every `RATE_INTERVAL`, per service and backend
//! id, and the per-second rates between two samples.

use std::time::Instant;

use lb_common::Counters;

use super::{snapshot::Rates, Controller, Datapath};

/// Per-second rates between two samples of counters (0 after a counter reset).
pub fn rates(before: Counters, after: Counters, seconds: f64) -> Rates {
    if seconds <= 0.0 {
        return Rates::default();
    }
    let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
    Rates {
        packets: per(before.packets, after.packets),
        bytes: per(before.bytes, after.bytes),
        connections: per(before.new_flows, after.new_flows),
    }
}

pub(super) fn add(a: Counters, b: Counters) -> Counters {
    Counters {
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
        new_flows: a.new_flows + b.new_flows,
    }
}

/// The last sample of the counters, and each id's rates since the one before (vectors
/// indexed by service and backend id: at 100,000 backends, hash maps rebuilt every
/// sample were most of an idle daemon's CPU).
#[derive(Default)]
pub(super) struct RateTracker {
    last: Option<(Instant, PlanCounters)>,
    pub(super) services: Vec<Rates>,
    pub(super) backends: Vec<Rates>,
}

/// Counters of a plan's services and backends, indexed by id.
#[derive(Default)]
pub(super) struct PlanCounters {
    services: Vec<Counters>,
    backends: Vec<Counters>,
}

impl PlanCounters {
    pub(super) fn service(&self, id: u32) -> Counters {
        self.services.get(id as usize).copied().unwrap_or_default()
    }

    pub(super) fn backend(&self, id: u32) -> Counters {
        self.backends.get(id as usize).copied().unwrap_or_default()
    }
}

impl Controller {
    /// The datapath's counters of every planned service and backend, by id, read in bulk
    /// (`Datapath::counters_upto`); `None` if they cannot be read.
    pub(super) fn counters_now(&mut self) -> Option<PlanCounters> {
        let services = self.plan.services.iter().map(|s| s.info.id + 1).max();
        let backends = self.plan.backends.iter().map(|b| b.id + 1).max();
        let read = |d: &mut Datapath, map, len: Option<u32>| {
            d.counters_upto(map, len.unwrap_or(0))
                .inspect_err(|e| tracing::warn!("cannot read {map}: {e:#}"))
                .ok()
        };
        Some(PlanCounters {
            services: read(&mut self.datapath, "SERVICE_STATS", services)?,
            backends: read(&mut self.datapath, "BACKEND_STATS", backends)?,
        })
    }

    pub(super) fn sample_rates(&mut self) {
        let Some(now) = self.counters_now() else {
            return;
        };
        let t = Instant::now();
        if let Some((then, before)) = &self.rates.last {
            let secs = t.duration_since(*then).as_secs_f64();
            let per_id = |now: &[Counters], before: &[Counters]| -> Vec<Rates> {
                now.iter()
                    .enumerate()
                    .map(|(id, c)| {
                        before
                            .get(id)
                            .map_or_else(Rates::default, |b| rates(*b, *c, secs))
                    })
                    .collect()
            };
            self.rates.services = per_id(&now.services, &before.services);
            self.rates.backends = per_id(&now.backends, &before.backends);
        }
        self.rates.last = Some((t, now));
    }
}
