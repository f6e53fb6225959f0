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

use anyhow::{bail, Result};
use lb_common::{
    maglev::{build_table, MaglevBackend},
    MAGLEV_TABLE_SIZE, MAX_SCAN_BACKENDS, NO_BACKEND, SCHED_DH, SCHED_LBLC, SCHED_LBLCR, SCHED_LC,
    SCHED_MH, SCHED_NQ, SCHED_RR, SCHED_SED, SCHED_SH, SCHED_WLC, SCHED_WRR,
};

use crate::config::Scheduler;

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
