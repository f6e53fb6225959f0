//! The flow hash: which Maglev slot a packet's 5-tuple lands in.
//!
//! Fixed and seedless on purpose: every load-balancer node computes the same value for
//! the same flow, so a flow that moves to another node after a failover finds the same
//! backend there. Built from MurmurHash3's 32-bit mixing steps over the address words
//! (as on the wire), the ports word and the protocol; no loops the verifier must bound
//! beyond four fixed iterations.

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;
const SEED: u32 = 0x6261_7363; // "basc"

/// One round: `rotl13(h ^ k) * 5 + 0xe6546b64`, with `k` mixed by itself first. The rounds
/// chain through `h`, so its steps are what a new flow waits for: `* 5 + c` is written
/// `(h << 2) + (h + c)` (two steps deep, where a multiplication and an addition are four
/// cycles), and kept so (`crate::opaque`: the BPF JIT emits no `lea`), with the same
/// value.
#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let h = (h ^ k).rotate_left(13);
    let times_four = crate::opaque(u64::from(h << 2)) as u32;
    times_four.wrapping_add(crate::opaque(u64::from(h.wrapping_add(0xe654_6b64))) as u32)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Hash of a flow. `ports` is the source and destination port words exactly as read from
/// the L4 header (`u32::from_ne_bytes([sport_hi, sport_lo, dport_hi, dport_lo])`).
#[inline(always)]
pub fn flow_hash(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8) -> u32 {
    let mut h = SEED;
    h = mix(h, src[0]);
    h = mix(h, src[1]);
    h = mix(h, src[2]);
    h = mix(h, src[3]);
    h = mix(h, dst[0]);
    h = mix(h, dst[1]);
    h = mix(h, dst[2]);
    h = mix(h, dst[3]);
    h = mix(h, ports);
    h = mix(h, proto as u32);
    finish(h ^ 40)
}

/// The outer IPv6 header's flow label of a tunnelled flow (20 bits), what a backend's
/// receive-side scaling spreads tunnelled flows on: the same for every packet of a flow
/// and well spread, nothing more. Three independent multiplications whose high bits
/// depend on every input bit, where `flow_hash` chains ten dependent rounds (about 15 ns
/// of a tunnelled IPv6 packet). Arguments as `flow_hash`'s.
#[inline(always)]
pub fn flow_label(src: &[u32; 4], dst: &[u32; 4], ports: u32, proto: u8) -> u32 {
    let s = u64::from(src[0] ^ src[2]) | u64::from(src[1] ^ src[3]) << 32;
    let d = u64::from(dst[0] ^ dst[2]) | u64::from(dst[1] ^ dst[3]) << 32;
    let p = u64::from(ports) << 8 | u64::from(proto);
    let h = s.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ d.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ p.wrapping_mul(0x1656_67b1_9e37_79f9);
    (h >> 44) as u32
}

/// The ports word `flow_hash` expects, from ports in network order as stored in `FlowKey`.
#[inline(always)]
pub fn ports_word(sport_be: u16, dport_be: u16) -> u32 {
    let s = sport_be.to_ne_bytes();
    let d = dport_be.to_ne_bytes();
    u32::from_ne_bytes([s[0], s[1], d[0], d[1]])
}

/// The `probe`-th other slot hash of a flow whose table slot (mh, sh, dh) belongs to a
/// backend at its connection threshold: the same for a flow on every node, so nodes that
/// agree on which backends are at their threshold send the flow to the same stand-in.
#[inline(always)]
pub fn probe_hash(hash: u32, probe: u32) -> u32 {
    finish(mix(hash, probe.wrapping_add(1)))
}

/// Hash of one address (sh: the source, dh: the destination).
#[inline(always)]
pub fn addr_hash(addr: &[u32; 4]) -> u32 {
    let mut h = SEED;
    h = mix(h, addr[0]);
    h = mix(h, addr[1]);
    h = mix(h, addr[2]);
    h = mix(h, addr[3]);
    finish(h ^ 16)
}

/// Which connection-table set a flow lives in (`FlowTable::set_index`) and its tag there
/// (`flow_tag`). Seeded (per table, see `FlowTable::seed`) so that nobody outside can aim
/// a flood of new flows at one set; five independent 64-bit multiplications and one
/// final mix, a few nanoseconds.
#[inline(always)]
pub fn flow_set(w: &[u64; 5], seed: u64) -> u64 {
    let h = (w[0] ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (w[1] ^ seed.rotate_left(13)).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (w[2] ^ seed.rotate_left(26)).wrapping_mul(0x1656_67b1_9e37_79f9)
        ^ (w[3] ^ seed.rotate_left(39)).wrapping_mul(0x85eb_ca77_c2b2_ae63)
        ^ (w[4] ^ seed.rotate_left(52)).wrapping_mul(0x27d4_eb2f_1656_67c5);
    let h = (h ^ (h >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 29)
}

/// A key's tag in its set's first line (`SetTags`), from its `flow_set` hash: the high
/// half, which the set choice (`FlowTable::set_index`) does not use. Never 0, the tag of
/// an empty way.
#[inline(always)]
pub fn flow_tag(hash: u64) -> u32 {
    (hash >> 32) as u32 | 1
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use super::*;

    /// The round as MurmurHash3 writes it.
    fn reference_mix(h: u32, k: u32) -> u32 {
        let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
        (h ^ k)
            .rotate_left(13)
            .wrapping_mul(5)
            .wrapping_add(0xe654_6b64)
    }

    /// `mix`'s shorter chain computes MurmurHash3's round exactly, and the flow hash keeps
    /// the values every node and every earlier release computed (`mh`'s choice rests on
    /// them: a changed value moves flows between backends across an upgrade).
    #[test]
    fn the_flow_hash_keeps_its_values() {
        let mut x = 0x9e37_79b9u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let h = x.rotate_left(7).wrapping_mul(0x85eb_ca6b);
            assert_eq!(mix(h, x), reference_mix(h, x), "h {h:#x} k {x:#x}");
        }
        let client = [0x0a6f_000au32.to_be(), 0, 0, 0];
        let vip = [0x0a70_0064u32.to_be(), 0, 0, 0];
        let ports = ports_word(999u16.to_be(), 80u16.to_be());
        assert_eq!(flow_hash(&client, &vip, ports, 6), FLOW_HASH_10_111_0_10);
        let client6 = [0xfd00_0111u32.to_be(), 0, 0, 0x10u32.to_be()];
        let vip6 = [0xfd00_0112u32.to_be(), 0, 0, 0x100u32.to_be()];
        assert_eq!(flow_hash(&client6, &vip6, ports, 17), FLOW_HASH_FD00_111_10);
        assert_eq!(addr_hash(&client), ADDR_HASH_10_111_0_10);
    }

    /// Values of the hashes as released (computed with MurmurHash3's rounds as written).
    const FLOW_HASH_10_111_0_10: u32 = 0x3372_461d;
    const FLOW_HASH_FD00_111_10: u32 = 0x2a72_bf60;
    const ADDR_HASH_10_111_0_10: u32 = 0x8081_85a7;

    /// 10,000 flows differing in one field get nearly 10,000 labels (about 48 collisions
    /// are expected of 10,000 random 20-bit values), whichever field it is.
    #[test]
    fn flow_labels_spread_over_20_bits() {
        let client = [0x2001_0db8u32.to_be(), 0, 0, 7u32.to_be()];
        let vip = [0xfd00_0112u32.to_be(), 0, 0, 0x100u32.to_be()];
        let port = |p: u32| ports_word((p as u16).to_be(), 80u16.to_be());
        let by_port: Vec<u32> = (0..10_000)
            .map(|p| flow_label(&client, &vip, port(1024 + p), 6))
            .collect();
        let by_addr: Vec<u32> = (0..10_000u32)
            .map(|a| flow_label(&[client[0], 0, a, client[3]], &vip, port(40000), 6))
            .collect();
        for (what, labels) in [("source port", by_port), ("source address", by_addr)] {
            assert!(
                labels.iter().all(|&l| l < 1 << 20),
                "{what}: wider than 20 bits"
            );
            let distinct: std::collections::HashSet<u32> = labels.into_iter().collect();
            assert!(
                distinct.len() > 9_850,
                "{what}: {} distinct",
                distinct.len()
            );
        }
    }
}
