//! Maglev lookup-table construction (Eisenbud et al., NSDI 2016), weighted.
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
//!   others keep pace in proportion to their weight. Weight 0 backends take no slot.
//!
//! The table holds indexes into the caller's backend slice; `NO_BACKEND` fills a table
//! with no eligible backend.

use crate::NO_BACKEND;

/// One backend as the table builder sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaglevBackend {
    /// Stable identity: address bytes ++ port (network order). See the module docs.
    pub key: Vec<u8>,
    pub weight: u32,
}

impl MaglevBackend {
    pub fn new(addr: std::net::IpAddr, port: u16, weight: u32) -> Self {
        let mut key = match addr {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        key.extend_from_slice(&port.to_be_bytes());
        MaglevBackend { key, weight }
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
    let m = u64::from(size);
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    order.sort_by(|&a, &b| backends[a].key.cmp(&backends[b].key));
    let mut table = vec![NO_BACKEND; size as usize];
    if order.is_empty() {
        return table;
    }
    let w_max = order
        .iter()
        .map(|&i| u64::from(backends[i].weight))
        .max()
        .unwrap_or(1);

    /// A backend's walk through its permutation: `slot` is `(offset + next * skip) mod M`,
    /// advanced by adding `skip` (no division in the fill loop).
    struct Perm {
        index: u32,
        skip: u64,
        slot: u64,
        weight: u64,
        taken: u64,
    }
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
                skip,
                slot: offset,
                weight: u64::from(b.weight),
                taken: 0,
            }
        })
        .collect();

    let mut filled = 0u64;
    let mut round = 0u64;
    while filled < m {
        round += 1;
        for p in perms.iter_mut() {
            // ceil(round * w / w_max) slots owed after this round.
            let owed = (round * p.weight).div_ceil(w_max);
            while p.taken < owed && filled < m {
                while table[p.slot as usize] != NO_BACKEND {
                    p.slot += p.skip;
                    if p.slot >= m {
                        p.slot -= m;
                    }
                }
                table[p.slot as usize] = p.index;
                p.slot += p.skip;
                if p.slot >= m {
                    p.slot -= m;
                }
                p.taken += 1;
                filled += 1;
            }
            if filled == m {
                break;
            }
        }
    }
    table
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

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(251));
        assert!(!is_prime(65536));
    }
}
