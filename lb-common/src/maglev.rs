//! Maglev lookup-table construction (Eisenbud et al., NSDI 2016), weighted, with failed
//! backends handed over in place.
//!
//! Determinism is the contract: two nodes given the same backends build byte-identical
//! tables, whatever order the backends were listed in and whatever process builds them.
//! So nothing here depends on a random seed, a `HashMap` iteration order or the platform:
//!
//! * a backend is identified by its key bytes: the address (4 or 16 bytes as on the
//!   wire) followed by its port in network order;
//! * `offset = H(key ++ [0]) mod M` and `skip = H(key ++ [1]) mod (M - 1) + 1`, where
//!   `H` is 64-bit FNV-1a followed by the splitmix64 finaliser;
//! * backends are sorted by key before the table is filled;
//! * weights: in round `r` (1, 2, ...) backend `i` claims slots until it holds
//!   `ceil(r * w_i / w_max)`, so the heaviest backend takes one slot per round and the
//!   others keep pace in proportion to their weight. Weight 0 backends take no slot;
//! * backends that are down (`up == false`, e.g. failing their health check) keep their
//!   place: the table is first filled over every backend with a weight (the *primary*
//!   fill), then each slot whose owner is down is given the owner it has in a second fill
//!   over the up backends only (the *fallback* fill). So when one of N backends fails,
//!   exactly its slots move (1/N of the table) and they spread over the others as evenly
//!   as a Maglev fill spreads anything; a plain rebuild without it would also move some
//!   slots between healthy backends (about 1.6/N at N = 100 and 6.8/N at N = 1,000 with
//!   65,537 slots). When it comes back, exactly its slots return to it.
//!
//! The table holds indexes into the caller's backend slice; `NO_BACKEND` fills a table
//! with no eligible backend.
//!
//! The fill is the paper's: each backend in turn walks its permutation to the next free
//! slot, testing slots against a bitmap of taken ones. Until the table is 5/16 full the
//! walk tests one slot per step (the first is almost always free); after that, four (one
//! branch per four probes; the four computed from the current slot, not from one
//! another). Once only about sqrt(M)/2 slots are left free, walking gets long (M / free
//! probes per claim), so the walk is replaced by an equivalent computation: a backend's
//! next claim is the free slot that comes first in its permutation, i.e. the free slot
//! `s` with the smallest `(s - offset) * skip^-1 mod M`. Same table as the plain walk (a
//! test keeps them equal).

use crate::NO_BACKEND;

/// One backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity: address bytes ++ port (network order). See the module docs.
    pub key: Vec<u8>,
    pub weight: u32,
    /// False for a backend that is configured with a weight but failing: its slots go to
    /// their owners in the fallback fill (see the module docs).
    pub up: bool,
}

impl MaglevBackend {
    pub fn new(addr: std::net::IpAddr, port: u16, weight: u32) -> Self {
        let mut key = match addr {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        key.extend_from_slice(&port.to_be_bytes());
        MaglevBackend {
            key,
            weight,
            up: true,
        }
    }

    /// The same backend, up or down.
    pub fn with_up(mut self, up: bool) -> Self {
        self.up = up;
        self
    }
}

/// 64-bit FNV-1a, then splitmix64's finaliser so every output bit depends on every input bit.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// True when `n` is prime (table sizes must be).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= u64::from(n) {
        if u64::from(n) % d == 0 {
            return false;
        }
        d += 1;
    }
    true
}

/// Builds a table of `size` entries (a prime) over `backends`; each entry is an index
/// into `backends`.
pub fn build_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "Maglev table size {size} is not prime");
    let weighted: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    let mut table = fill(backends, weighted.clone(), size);
    if weighted.iter().all(|&i| backends[i].up) {
        return table;
    }
    let up: Vec<usize> = weighted.into_iter().filter(|&i| backends[i].up).collect();
    let fallback = fill(backends, up, size);
    for (owner, stand_in) in table.iter_mut().zip(fallback) {
        if *owner != NO_BACKEND && !backends[*owner as usize].up {
            *owner = stand_in;
        }
    }
    table
}

/// A backend's walk through its permutation: `slot` is `(offset + next * skip) mod M`,
/// advanced by adding multiples of `skip` (no division in the walk).
struct Perm {
    index: u32,
    offset: u64,
    skip: u64,
    /// `k * skip mod M` for k = 1..=4: the walk looks four slots ahead at once, each
    /// computed from the current slot (not from one another: no chain of dependent adds).
    steps: [u64; 4],
    slot: u64,
    weight: u64,
    taken: u64,
}

/// The paper's fill over `order` (indexes of backends with a weight), see the module docs.
fn fill(backends: &[MaglevBackend], mut order: Vec<usize>, size: u32) -> Vec<u32> {
    let m = u64::from(size);
    let mut table = vec![NO_BACKEND; size as usize];
    if order.is_empty() {
        return table;
    }
    order.sort_by(|&a, &b| backends[a].key.cmp(&backends[b].key));
    let w_max = order
        .iter()
        .map(|&i| u64::from(backends[i].weight))
        .max()
        .unwrap_or(1);
    let mut perms: Vec<Perm> = order
        .iter()
        .map(|&i| {
            let b = &backends[i];
            let mut k = b.key.clone();
            k.push(0);
            let offset = stable_hash(&k) % m;
            *k.last_mut().expect("pushed") = 1;
            let skip = stable_hash(&k) % (m - 1) + 1;
            Perm {
                index: i as u32,
                offset,
                skip,
                steps: [1, 2, 3, 4].map(|k| k * skip % m),
                slot: offset,
                weight: u64::from(b.weight),
                taken: 0,
            }
        })
        .collect();

    // Which slots are taken, one bit each: 8 KiB at 65,537 slots, so the walk's reads
    // stay in the L1 cache (the table itself is 256 KiB).
    let mut taken = vec![0u64; (size as usize).div_ceil(64)];
    // A backend's first free slot is found one probe at a time while the table is mostly
    // free (the first probe almost always hits), then four probes at a time, then, for
    // the last few slots, computed (`Tail`).
    let early_end = m * 5 / 16;
    let tail_start = m - tail_threshold(m);
    let mut tail: Option<Tail> = None;
    let add = |s: u64, step: u64| {
        let n = s + step;
        if n >= m {
            n - m
        } else {
            n
        }
    };
    let mut filled = 0u64;
    let mut round = 0u64;
    'fill: loop {
        round += 1;
        for p in perms.iter_mut() {
            // Owed ceil(round * w / w_max) slots after this round, i.e. one more while
            // taken * w_max < round * w (no division: this runs once per claim). Never
            // more than one more per round, as no weight exceeds w_max.
            if p.taken * w_max >= round * p.weight {
                continue;
            }
            let slot = if filled < early_end {
                let mut s = p.slot;
                while taken_bit(&taken, s) != 0 {
                    s = add(s, p.steps[0]);
                }
                p.slot = add(s, p.steps[0]);
                s
            } else if let Some(t) = tail.as_mut() {
                t.take_first(p)
            } else {
                // Four candidates per step, one branch: the walk's exit is the branch a
                // CPU mispredicts, so take it a quarter as often.
                loop {
                    let s0 = p.slot;
                    let s1 = add(s0, p.steps[0]);
                    let s2 = add(s0, p.steps[1]);
                    let s3 = add(s0, p.steps[2]);
                    let busy = taken_bit(&taken, s0)
                        | taken_bit(&taken, s1) << 1
                        | taken_bit(&taken, s2) << 2
                        | taken_bit(&taken, s3) << 3;
                    if busy != 0b1111 {
                        let first = busy.trailing_ones() as usize;
                        p.slot = add(s0, p.steps[first]);
                        break [s0, s1, s2, s3][first];
                    }
                    p.slot = add(s0, p.steps[3]);
                }
            };
            table[slot as usize] = p.index;
            taken[(slot >> 6) as usize] |= 1u64 << (slot & 63);
            p.taken += 1;
            filled += 1;
            if filled == tail_start {
                tail = Some(Tail::new(&taken, m));
            }
            if filled == m {
                break 'fill;
            }
        }
    }
    table
}

/// Whether `slot` is taken in the bitmap.
#[inline(always)]
fn taken_bit(taken: &[u64], slot: u64) -> u64 {
    (taken[(slot >> 6) as usize] >> (slot & 63)) & 1
}

/// Free slots left below which claims are computed instead of walked (see the module docs):
/// walking costs about M / free probes per claim, computing about `free` cheap steps.
/// Measured best at half the square root of M (128 at 65,537 slots).
fn tail_threshold(m: u64) -> u64 {
    (m as f64).sqrt() as u64 / 2
}

/// The last free slots, and modular arithmetic mod M to find which comes first in a
/// backend's permutation.
struct Tail {
    free: Vec<u32>,
    m: u64,
    /// floor((2^64 - 1) / M), for Barrett reduction.
    barrett: u64,
}

impl Tail {
    /// Out of line, as `take_first`: the fill's loop stays small (measured ~4% faster).
    #[inline(never)]
    fn new(taken: &[u64], m: u64) -> Self {
        // The clear bits of the bitmap below M, word by word.
        let mut free = Vec::new();
        for (w, &word) in taken.iter().enumerate() {
            let mut clear = !word;
            while clear != 0 {
                let s = (w as u64) * 64 + u64::from(clear.trailing_zeros());
                if s >= m {
                    break;
                }
                free.push(s as u32);
                clear &= clear - 1;
            }
        }
        Tail {
            free,
            m,
            barrett: u64::MAX / m,
        }
    }

    /// `a mod M` for any `a < M^2`.
    #[inline(always)]
    fn reduce(&self, a: u64) -> u64 {
        let q = ((u128::from(a) * u128::from(self.barrett)) >> 64) as u64;
        let mut r = a - q * self.m;
        while r >= self.m {
            r -= self.m;
        }
        r
    }

    /// `b^e mod M`.
    fn pow(&self, mut b: u64, mut e: u64) -> u64 {
        let mut r = 1u64;
        while e > 0 {
            if e & 1 == 1 {
                r = self.reduce(r * b);
            }
            b = self.reduce(b * b);
            e >>= 1;
        }
        r
    }

    /// Removes and returns the free slot `p` would reach first walking its permutation.
    /// Every free slot lies ahead of `p`'s walk (a walk passes only taken slots), so that is
    /// the free slot with the smallest position `(s - offset) / skip mod M`.
    #[inline(never)]
    fn take_first(&mut self, p: &Perm) -> u64 {
        // M is prime: skip^-1 = skip^(M-2).
        let inverse = self.pow(p.skip, self.m - 2);
        let mut best = (u64::MAX, 0usize);
        for (i, &s) in self.free.iter().enumerate() {
            let mut d = u64::from(s) + self.m - p.offset;
            if d >= self.m {
                d -= self.m;
            }
            let position = self.reduce(d * inverse);
            if position < best.0 {
                best = (position, i);
            }
        }
        u64::from(self.free.swap_remove(best.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn backends(n: u32) -> Vec<MaglevBackend> {
        (0..n)
            .map(|i| MaglevBackend::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 80, 1))
            .collect()
    }

    #[test]
    fn order_of_backends_does_not_change_the_table() {
        let a = backends(10);
        let mut b = a.clone();
        b.reverse();
        let ta: Vec<&[u8]> = build_table(&a, 65537)
            .iter()
            .map(|&i| a[i as usize].key.as_slice())
            .collect();
        let tb: Vec<&[u8]> = build_table(&b, 65537)
            .iter()
            .map(|&i| b[i as usize].key.as_slice())
            .collect();
        assert_eq!(ta, tb);
    }

    #[test]
    fn shares_follow_weights() {
        let mut b = backends(3);
        b[0].weight = 1;
        b[1].weight = 2;
        b[2].weight = 5;
        let t = build_table(&b, 65537);
        let mut count = [0u32; 3];
        for i in t {
            count[i as usize] += 1;
        }
        for (i, w) in [1.0, 2.0, 5.0].iter().enumerate() {
            let share = f64::from(count[i]) / 65537.0;
            assert!(
                (share - w / 8.0).abs() < 0.01,
                "backend {i}: share {share}, expected {}",
                w / 8.0
            );
        }
    }

    #[test]
    fn weight_zero_and_empty() {
        let mut b = backends(2);
        b[1].weight = 0;
        assert!(build_table(&b, 251).iter().all(|&i| i == 0));
        assert!(build_table(&[], 251).iter().all(|&i| i == NO_BACKEND));
    }

    #[test]
    fn removing_one_of_100_moves_its_flows_and_at_most_1pct_of_others() {
        let all = backends(100);
        let before = build_table(&all, 65537);
        let gone = 37usize;
        let rest: Vec<MaglevBackend> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != gone)
            .map(|(_, b)| b.clone())
            .collect();
        let after = build_table(&rest, 65537);
        let key = |t: &[u32], v: &[MaglevBackend], s: usize| v[t[s] as usize].key.clone();
        let mut others_moved = 0u32;
        let mut others = 0u32;
        for s in 0..65537usize {
            let was = key(&before, &all, s);
            let now = key(&after, &rest, s);
            if was == all[gone].key {
                assert_ne!(now, all[gone].key);
            } else {
                others += 1;
                if was != now {
                    others_moved += 1;
                }
            }
        }
        let share = f64::from(others_moved) / f64::from(others);
        assert!(
            share <= 0.01,
            "{:.3}% of other backends' slots moved",
            share * 100.0
        );
    }

    /// The paper's fill, walking to the end (what `fill` must equal).
    fn walked(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
        let m = u64::from(size);
        let mut order: Vec<usize> = (0..backends.len())
            .filter(|&i| backends[i].weight > 0)
            .collect();
        order.sort_by(|&a, &b| backends[a].key.cmp(&backends[b].key));
        let mut table = vec![NO_BACKEND; size as usize];
        let Some(w_max) = order.iter().map(|&i| u64::from(backends[i].weight)).max() else {
            return table;
        };
        let mut walk: Vec<(u64, u64, u64)> = order
            .iter()
            .map(|&i| {
                let mut k = backends[i].key.clone();
                k.push(0);
                let offset = stable_hash(&k) % m;
                k[backends[i].key.len()] = 1;
                (offset, stable_hash(&k) % (m - 1) + 1, 0)
            })
            .collect();
        let (mut filled, mut round) = (0u64, 0u64);
        while filled < m {
            round += 1;
            for (n, &i) in order.iter().enumerate() {
                let owed = (round * u64::from(backends[i].weight)).div_ceil(w_max);
                let (slot, skip, taken) = &mut walk[n];
                while *taken < owed && filled < m {
                    while table[*slot as usize] != NO_BACKEND {
                        *slot = (*slot + *skip) % m;
                    }
                    table[*slot as usize] = i as u32;
                    *slot = (*slot + *skip) % m;
                    *taken += 1;
                    filled += 1;
                }
            }
        }
        table
    }

    #[test]
    fn computed_tail_gives_the_walked_table() {
        for (n, size, weights) in [
            (1u32, 251u32, false),
            (3, 251, true),
            (4, 2, false),
            (2, 3, true),
            (5, 7, false),
            (40, 13, true),
            (10, 65537, false),
            (100, 65537, true),
            (1000, 65537, false),
            (7, 1009, true),
            (300, 4093, true),
        ] {
            let mut b = backends(n);
            if weights {
                for (i, x) in b.iter_mut().enumerate() {
                    x.weight = (i as u32 * 7919) % 5;
                }
            }
            assert_eq!(build_table(&b, size), walked(&b, size), "n={n} size={size}");
        }
    }

    /// A down backend's slots, and only those, go elsewhere, spread evenly; back up, it
    /// gets exactly them back.
    #[test]
    fn a_down_backend_hands_over_only_its_slots() {
        for n in [10u32, 100, 1000] {
            let all = backends(n);
            let before = build_table(&all, 65537);
            let gone = (n / 3) as usize;
            let mut failed = all.clone();
            failed[gone].up = false;
            let after = build_table(&failed, 65537);
            let mut received = vec![0u32; n as usize];
            for (was, now) in before.iter().zip(&after) {
                if *was as usize == gone {
                    assert_ne!(*now as usize, gone);
                    received[*now as usize] += 1;
                } else {
                    assert_eq!(was, now, "n={n}: a healthy backend's slot moved");
                }
            }
            let handed: u32 = received.iter().sum();
            assert_eq!(
                handed,
                before.iter().filter(|&&i| i as usize == gone).count() as u32
            );
            // The stand-ins are a Maglev fill's owners of a scattered set of slots: each
            // healthy backend ends up within a few percent of an even share.
            let fair = 65537.0 / f64::from(n - 1);
            let mut held = vec![0u32; n as usize];
            for &i in &after {
                held[i as usize] += 1;
            }
            let most = *held.iter().max().unwrap();
            assert!(
                f64::from(most) <= fair * 1.03 + 2.0,
                "n={n}: one backend holds {most} slots (even share {fair:.1}, {handed} handed over)"
            );
            failed[gone].up = true;
            assert_eq!(build_table(&failed, 65537), before);
        }
    }

    #[test]
    fn every_backend_down_leaves_no_owner() {
        let b: Vec<_> = backends(3).into_iter().map(|b| b.with_up(false)).collect();
        assert!(build_table(&b, 251).iter().all(|&i| i == NO_BACKEND));
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(251));
        assert!(!is_prime(65536));
    }
}
