//! Backend-side decapsulation (tc ingress): strips the outer header of IPv4-in-IPv4,
//! IPv6-in-IPv6 and IPv4-in-IPv6 packets whose inner destination is a VIP this host
//! serves, so hosts whose kernel has no tunnel module still receive `tun` traffic.
//! Everything else continues untouched.
#![no_std]
#![no_main]

mod license;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::HashMap,
    macros::{btf_map, classifier},
    programs::TcContext,
};
use lb_common::{DecapVip, ETH_P_IP, ETH_P_IPV6, FAMILY_V4, FAMILY_V6, IPPROTO_IPIP, IPPROTO_IPV6};

/// Inner destinations to decapsulate: the VIPs held on this host.
#[btf_map]
static DECAP_VIPS: HashMap<DecapVip, u8, 1024> = HashMap::new();

/// One counter per outcome: 0 = decapsulated, 1 = not for a local VIP, 2 = failed.
#[btf_map]
static DECAP_STATS: aya_ebpf::btf_maps::PerCpuArray<u64, 3> =
    aya_ebpf::btf_maps::PerCpuArray::new();

const ETH_LEN: usize = 14;
const BPF_ADJ_ROOM_MAC: u32 = 1;
const BPF_F_ADJ_ROOM_DECAP_L3_IPV4: u64 = 1 << 7;

#[classifier]
pub fn bascule_decap(ctx: TcContext) -> i32 {
    let outcome = decap(&ctx);
    if let Some(c) = DECAP_STATS.get_ptr_mut(outcome as u32) {
        unsafe { *c += 1 };
    }
    if outcome == Outcome::Failed {
        TC_ACT_SHOT
    } else {
        TC_ACT_OK
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Decapsulated = 0,
    NotOurs = 1,
    Failed = 2,
}

#[inline(always)]
fn decap(ctx: &TcContext) -> Outcome {
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12).map(u16::from_be_bytes) else {
        return Outcome::NotOurs;
    };
    let (outer_len, inner_proto) = match ethertype {
        ETH_P_IP => {
            let Ok(vihl) = ctx.load::<u8>(ETH_LEN) else {
                return Outcome::NotOurs;
            };
            let Ok(proto) = ctx.load::<u8>(ETH_LEN + 9) else {
                return Outcome::NotOurs;
            };
            // Only plain 20-byte outer headers: that is what bascule's datapath sends.
            if vihl != 0x45 || proto != IPPROTO_IPIP {
                return Outcome::NotOurs;
            }
            (20usize, IPPROTO_IPIP)
        }
        ETH_P_IPV6 => {
            let Ok(next) = ctx.load::<u8>(ETH_LEN + 6) else {
                return Outcome::NotOurs;
            };
            if next != IPPROTO_IPIP && next != IPPROTO_IPV6 {
                return Outcome::NotOurs;
            }
            (40usize, next)
        }
        _ => return Outcome::NotOurs,
    };
    let inner = ETH_LEN + outer_len;
    let vip = if inner_proto == IPPROTO_IPIP {
        let Ok(dst) = ctx.load::<u32>(inner + 16) else {
            return Outcome::NotOurs;
        };
        DecapVip {
            addr: [dst, 0, 0, 0],
            family: FAMILY_V4,
            _pad: [0; 3],
        }
    } else {
        let Ok(dst) = ctx.load::<[u32; 4]>(inner + 24) else {
            return Outcome::NotOurs;
        };
        DecapVip {
            addr: dst,
            family: FAMILY_V6,
            _pad: [0; 3],
        }
    };
    if DECAP_VIPS.get_ptr(vip).is_none() {
        return Outcome::NotOurs;
    }
    let to_v4 = ethertype == ETH_P_IPV6 && inner_proto == IPPROTO_IPIP;
    let flags = if to_v4 {
        BPF_F_ADJ_ROOM_DECAP_L3_IPV4
    } else {
        0
    };
    if ctx
        .adjust_room(-(outer_len as i32), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return Outcome::Failed;
    }
    if to_v4 && ctx.store(12, &ETH_P_IP.to_be_bytes(), 0).is_err() {
        return Outcome::Failed;
    }
    Outcome::Decapsulated
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
