//! Per-scheduler lookup tables (pure). The datapath reads one table per service; what it
//! holds depends on the scheduler:
//!
//! | scheduler | table | datapath |
//! |---|---|---|
//! | mh | Maglev permutation table (prime size) | slot = flow hash mod size |
//! | sh, dh | weighted buckets (prime size): each backend takes `weight` consecutive buckets in turn, as IPVS fills its 256 buckets | slot = hash of source (sh) / destination (dh) address mod size |
//! | rr | backends with weight > 0, in config order | shared cursor mod length |
//! | wrr | one cycle of IPVS's interleaved weighted round robin | shared cursor mod length |
//! | lc, wlc, sed, nq, lblc, lblcr | every backend, in config order (at most `MAX_SCAN_BACKENDS`) | scan, compare active connections |
//!
//! Entries are indexes into the caller's backend list; `NO_BACKEND` fills an empty table.
//!
//! A planned service holds its table as a [`Table`]: the table of indexes, shared by every
//! service built from the same inputs, read through the service's backend ids.
//! `fill_tables` builds a plan's tables (reused from the previous plan when their inputs
//! are the same, one build per distinct input, on all cores).

use std::{collections::HashMap, sync::Arc};

use anyhow::{bail, Context, Result};
use lb_common::{
    maglev::{build_table, MaglevBackend},
    MAGLEV_TABLE_SIZE, MAX_SCAN_BACKENDS, NO_BACKEND, SCHED_DH, SCHED_LBLC, SCHED_LBLCR, SCHED_LC,
    SCHED_MH, SCHED_NQ, SCHED_RR, SCHED_SED, SCHED_SH, SCHED_WLC, SCHED_WRR,
};

use super::{Plan, PlannedService};
use crate::config::{Config, Scheduler, Service};

pub fn code(s: Scheduler) -> u8 {
    match s {
        Scheduler::Mh => SCHED_MH,
        Scheduler::Rr => SCHED_RR,
        Scheduler::Wrr => SCHED_WRR,
        Scheduler::Lc => SCHED_LC,
        Scheduler::Wlc => SCHED_WLC,
        Scheduler::Lblc => SCHED_LBLC,
        Scheduler::Lblcr => SCHED_LBLCR,
        Scheduler::Dh => SCHED_DH,
        Scheduler::Sh => SCHED_SH,
        Scheduler::Sed => SCHED_SED,
        Scheduler::Nq => SCHED_NQ,
    }
}

/// The table for `backends` (their Maglev identity, weight and whether they are up; weight
/// 0 = drained) under `scheduler`. `size` is the prime table size for mh/sh/dh. Only mh
/// gives a backend that is down a place of its own (handed over, see `lb_common::maglev`);
/// the other schedulers treat it as weight 0, as IPVS does.
pub fn build(scheduler: Scheduler, backends: &[MaglevBackend], size: u32) -> Result<Vec<u32>> {
    Ok(match scheduler {
        Scheduler::Mh => build_table(backends, size),
        Scheduler::Sh | Scheduler::Dh => buckets(backends, size),
        Scheduler::Rr => (0..backends.len() as u32)
            .filter(|&i| share(&backends[i as usize]) > 0)
            .collect(),
        Scheduler::Wrr => wrr_cycle(&backends.iter().map(share).collect::<Vec<_>>()),
        Scheduler::Lc
        | Scheduler::Wlc
        | Scheduler::Sed
        | Scheduler::Nq
        | Scheduler::Lblc
        | Scheduler::Lblcr => {
            if backends.len() > MAX_SCAN_BACKENDS as usize {
                bail!(
                    "{} backends: the {:?} scheduler compares at most {MAX_SCAN_BACKENDS} (use mh, sh, dh, rr or wrr for larger pools)",
                    backends.len(),
                    scheduler
                );
            }
            (0..backends.len() as u32).collect()
        }
    })
}

/// A backend's weight for the schedulers other than mh: 0 while it is down.
fn share(b: &MaglevBackend) -> u32 {
    if b.up {
        b.weight
    } else {
        0
    }
}

/// IPVS's sh/dh fill: backends in turn, each taking `weight` consecutive buckets.
fn buckets(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let eligible: Vec<(u32, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| share(b) > 0)
        .map(|(i, b)| (i as u32, b.weight))
        .collect();
    if eligible.is_empty() {
        return vec![NO_BACKEND; size as usize];
    }
    let mut table = Vec::with_capacity(size as usize);
    'fill: loop {
        for &(i, w) in &eligible {
            for _ in 0..w {
                if table.len() == size as usize {
                    break 'fill;
                }
                table.push(i);
            }
        }
    }
    table
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// One cycle of IPVS's interleaved weighted round robin: a "current weight" starts at the
/// largest weight and steps down by the weights' gcd each pass over the list; a pass
/// picks every backend whose weight reaches it. The cycle holds sum(w)/gcd picks. Longer
/// cycles than a table holds are scaled down (weights divided by a common factor).
pub fn wrr_cycle(weights: &[u32]) -> Vec<u32> {
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x)).collect();
    let g = weights.iter().copied().filter(|&x| x > 0).fold(0, gcd);
    if g == 0 {
        return Vec::new();
    }
    w.iter_mut().for_each(|x| *x /= u64::from(g));
    let total: u64 = w.iter().sum();
    if total > u64::from(MAGLEV_TABLE_SIZE) {
        let scale = total.div_ceil(u64::from(MAGLEV_TABLE_SIZE));
        w.iter_mut().for_each(|x| {
            if *x > 0 {
                *x = (*x / scale).max(1)
            }
        });
    }
    let max = *w.iter().max().expect("non-empty");
    let total: u64 = w.iter().sum();
    let mut cycle = Vec::with_capacity(total as usize);
    let mut cw = max;
    while cycle.len() < total as usize {
        for (i, &wi) in w.iter().enumerate() {
            if wi >= cw {
                cycle.push(i as u32);
            }
        }
        if cw == 1 {
            break;
        }
        cw -= 1;
    }
    cycle
}

/// A service's lookup table: slot -> backend id (`NO_BACKEND` when none), held as a table
/// of indexes into the service's backend ids. Services built from the same inputs (one
/// pool behind many VIPs and ports) share one table of indexes, and the plans the daemon
/// keeps (applied, current, its status) share every table they did not rebuild: at 1,000
/// services of one pool, one 256 KiB table instead of 1,000.
#[derive(Clone, Debug, Default)]
pub struct Table {
    indexes: Arc<Vec<u32>>,
    ids: Arc<[u32]>,
    /// `ids` are consecutive from `ids[0]`: an index's id is one addition.
    consecutive: bool,
}

impl Table {
    /// `indexes` (into `ids`, or `NO_BACKEND`) read through `ids`.
    pub fn new(indexes: Arc<Vec<u32>>, ids: &[u32]) -> Table {
        let base = ids.first().copied().unwrap_or(0);
        let consecutive = ids
            .iter()
            .enumerate()
            .all(|(i, &id)| id.checked_sub(base) == Some(i as u32));
        Table {
            indexes,
            ids: ids.into(),
            consecutive,
        }
    }

    pub fn len(&self) -> usize {
        self.indexes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indexes.is_empty()
    }

    /// The id of one index (`NO_BACKEND` stays).
    #[inline]
    pub fn id(&self, index: u32) -> u32 {
        if index == NO_BACKEND {
            index
        } else if self.consecutive {
            index + self.ids[0]
        } else {
            self.ids[index as usize]
        }
    }

    /// The slots' indexes (see [`Table::id`]), in memory once for all the services that
    /// share them.
    pub fn indexes(&self) -> &[u32] {
        &self.indexes
    }

    /// The backend id in `slot`.
    pub fn get(&self, slot: usize) -> Option<u32> {
        self.indexes.get(slot).map(|&i| self.id(i))
    }

    /// The backend id of every slot, in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.indexes.iter().map(|&i| self.id(i))
    }

    #[cfg(test)]
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    #[cfg(test)]
    pub fn contains(&self, id: u32) -> bool {
        self.iter().any(|x| x == id)
    }

    /// Whether both are the same table in memory (one was taken from the other).
    pub fn same(&self, other: &Table) -> bool {
        Arc::ptr_eq(&self.indexes, &other.indexes) && Arc::ptr_eq(&self.ids, &other.ids)
    }
}

/// Equal when every slot names the same backend id.
impl PartialEq for Table {
    fn eq(&self, other: &Table) -> bool {
        self.same(other) || (self.len() == other.len() && self.iter().eq(other.iter()))
    }
}

impl Eq for Table {}

/// Builds every service's lookup table. A service whose table inputs are those of the
/// previous plan gets the previous table back (a reload that changes one service builds
/// one table). Services with the same inputs (scheduler, size, and the same backends in
/// the same order, with the same weights and health: the VIPs and ports of one pool) share
/// one build of the table of indexes, each reading it through its own ids ([`Table`]). The
/// builds run on all cores: at 1,000 distinct 65,537-slot tables they are most of a load.
pub(super) fn fill_tables(
    config: &Config,
    services: &mut [PlannedService],
    inputs: &[Vec<MaglevBackend>],
    fresh: &[bool],
    previous: Option<&Plan>,
) -> Result<()> {
    let reusable: HashMap<&str, (u64, &Table)> = previous.map_or_else(HashMap::new, |p| {
        p.services
            .iter()
            .filter_map(|s| Some((s.name.as_str(), (s.table_source?, &s.table))))
            .collect()
    });
    // Tables to build, one per distinct input, and which one each service takes.
    let mut builds: Vec<usize> = Vec::new();
    let mut by_input: HashMap<u64, Vec<usize>> = HashMap::new();
    let mut takes: Vec<Option<usize>> = vec![None; services.len()];
    for (i, p) in services.iter_mut().enumerate().filter(|(i, _)| fresh[*i]) {
        let svc = &config.services[i];
        let input = input_digest(svc, &inputs[i]);
        let source = table_source(input, &p.backends);
        p.table_source = Some(source);
        if let Some((_, table)) = reusable.get(p.name.as_str()).filter(|(s, _)| *s == source) {
            p.table = Table::clone(table);
            p.info.table_size = p.table.len() as u32;
            continue;
        }
        let same = |j: &usize| {
            let other = &config.services[builds[*j]];
            (other.scheduler, other.maglev_table_size) == (svc.scheduler, svc.maglev_table_size)
                && inputs[builds[*j]] == inputs[i]
        };
        let candidates = by_input.entry(input).or_default();
        takes[i] = Some(match candidates.iter().find(|j| same(j)) {
            Some(&j) => j,
            None => {
                builds.push(i);
                candidates.push(builds.len() - 1);
                builds.len() - 1
            }
        });
    }
    let built: Vec<Arc<Vec<u32>>> = crate::util::cores::map(&builds, 0, |&i| {
        let svc = &config.services[i];
        build(svc.scheduler, &inputs[i], svc.maglev_table_size)
            .map(Arc::new)
            .with_context(|| format!("service {}", svc.name))
    })
    .into_iter()
    .collect::<Result<_>>()?;
    for (i, b) in takes.iter().enumerate() {
        if let Some(b) = *b {
            let table = Table::new(Arc::clone(&built[b]), &services[i].backends);
            services[i].info.table_size = table.len() as u32;
            services[i].table = table;
        }
    }
    Ok(())
}

/// The digest of what a table of indexes is built from: scheduler, size, and each
/// backend's identity, weight and health, in order.
fn input_digest(svc: &Service, inputs: &[MaglevBackend]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    code(svc.scheduler).hash(&mut h);
    svc.maglev_table_size.hash(&mut h);
    for b in inputs {
        b.key.hash(&mut h);
        b.weight.hash(&mut h);
        b.up.hash(&mut h);
    }
    h.finish()
}

/// The digest of a service's table inputs (see `PlannedService::table_source`): those of
/// its table of indexes (`input_digest`) and the ids they map to.
fn table_source(input: u64, ids: &[u32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut h);
    ids.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(weights: &[u32]) -> Vec<MaglevBackend> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| MaglevBackend::new(format!("10.0.0.{}", i + 1).parse().unwrap(), 80, w))
            .collect()
    }

    #[test]
    fn wrr_matches_ipvs_interleaving() {
        // IPVS with weights a=4, b=3, c=2: a a b a b c a b c
        assert_eq!(wrr_cycle(&[4, 3, 2]), vec![0, 0, 1, 0, 1, 2, 0, 1, 2]);
        // gcd is taken out: 2,4 behaves as 1,2.
        assert_eq!(wrr_cycle(&[2, 4]), vec![1, 0, 1]);
        assert_eq!(wrr_cycle(&[0, 3]), vec![1]);
        assert!(wrr_cycle(&[0, 0]).is_empty());
    }

    #[test]
    fn wrr_long_cycles_are_scaled_into_a_table() {
        let c = wrr_cycle(&[65535, 65534, 1]);
        assert!(c.len() <= MAGLEV_TABLE_SIZE as usize, "{}", c.len());
        assert!(c.contains(&2));
    }

    #[test]
    fn rr_lists_weighted_backends_in_order() {
        assert_eq!(build(Scheduler::Rr, &b(&[1, 0, 5]), 7).unwrap(), vec![0, 2]);
    }

    #[test]
    fn sh_buckets_follow_weights() {
        let t = build(Scheduler::Sh, &b(&[1, 3]), 251).unwrap();
        assert_eq!(t.len(), 251);
        assert_eq!(&t[..5], &[0, 1, 1, 1, 0]);
        let ones = t.iter().filter(|&&x| x == 1).count();
        assert!((186..=190).contains(&ones), "{ones}");
    }

    #[test]
    fn load_schedulers_list_everyone_and_refuse_huge_pools() {
        assert_eq!(
            build(Scheduler::Wlc, &b(&[1, 0, 2]), 7).unwrap(),
            vec![0, 1, 2]
        );
        let many = vec![1; 65];
        let e = build(Scheduler::Lc, &b(&many), 7).unwrap_err().to_string();
        assert!(e.contains("at most 64"), "{e}");
    }
}
