//! Trivial XDP programs measured beside bascule's datapath by `cargo xtask bench`, so
//! every figure has a floor taken in the same run: `floor_drop` returns XDP_DROP,
//! `floor_swapmac` swaps the Ethernet addresses and returns XDP_TX.
//!
//! The veth figure's rig: `floor_gen` and `floor_gen_fresh` are the load generator (run
//! by BPF_PROG_TEST_RUN in live-frames mode, their XDP_TX sends the frame out of the
//! generator's veth), `floor_count` counts what comes back on that veth and drops it.
#![no_std]
#![no_main]

mod license;

use aya_ebpf::{
    bindings::xdp_action, btf_maps::PerCpuArray, helpers::bpf_get_smp_processor_id,
    macros::btf_map, macros::xdp, programs::XdpContext,
};

#[xdp]
pub fn floor_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn floor_swapmac(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 12 > end {
        return xdp_action::XDP_PASS;
    }
    let p = start as *mut [u8; 12];
    unsafe {
        let m = p.read_unaligned();
        let mut s = [0u8; 12];
        s[..6].copy_from_slice(&m[6..]);
        s[6..].copy_from_slice(&m[..6]);
        p.write_unaligned(s);
    }
    xdp_action::XDP_TX
}

/// The generator's Ethernet addresses (destination, source), set by userspace at load
/// time. Live-frames mode recycles its pages with whatever the path wrote into them (the
/// program under test rewrites the MACs), so every run writes them back.
#[no_mangle]
static GEN_MACS: [u8; 12] = [0; 12];

/// `floor_count`'s counter (slot 0), and `floor_gen_fresh`'s flow number (slot 1).
#[btf_map]
static GEN_COUNTS: PerCpuArray<u64, 2> = PerCpuArray::new();

/// Ethernet (14) + IPv4 without options (20) + ports (4).
const V4_PORTS_END: usize = 38;

/// Writes the generator's addresses into the frame; returns its start, or `None` if it
/// is shorter than an IPv4 header with ports.
#[inline(always)]
fn restore_macs(ctx: &XdpContext) -> Option<usize> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + V4_PORTS_END > end {
        return None;
    }
    let macs = unsafe { core::ptr::read_volatile(&GEN_MACS) };
    unsafe { (start as *mut [u8; 12]).write_unaligned(macs) };
    Some(start)
}

/// Sends the frame as it was built (addresses restored) out of the veth it is run on.
#[xdp]
pub fn floor_gen(ctx: XdpContext) -> u32 {
    match restore_macs(&ctx) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// As `floor_gen`, with a flow never sent before: an IPv4/TCP frame gets the source
/// address 10.(128 + cpu).x.y and a source port from a per-CPU sequence number, so
/// 2^32 flows per CPU before one repeats. Checksums are left as they were (the datapath
/// under test does not verify them; the frames end at the counter).
#[xdp]
pub fn floor_gen_fresh(ctx: XdpContext) -> u32 {
    let Some(seq) = GEN_COUNTS.get_ptr_mut(1) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = unsafe {
        *seq += 1;
        *seq
    } as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() } as u8;
    let Some(start) = restore_macs(&ctx) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe {
        let src = (start + 26) as *mut [u8; 4];
        src.write_unaligned([10, 128 | cpu, (n >> 8) as u8, n as u8]);
        let sport = (start + 34) as *mut [u8; 2];
        sport.write_unaligned(((n >> 16) as u16).wrapping_add(1024).to_be_bytes());
    }
    xdp_action::XDP_TX
}

/// Counts a frame (slot 0 of `GEN_COUNTS`) and drops it: what reached the far side.
#[xdp]
pub fn floor_count(_ctx: XdpContext) -> u32 {
    if let Some(c) = GEN_COUNTS.get_ptr_mut(0) {
        unsafe { *c += 1 };
    }
    xdp_action::XDP_DROP
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
