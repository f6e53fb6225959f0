//! Trivial XDP programs measured beside bascule's datapath by `cargo xtask bench`, so
//! every figure has a floor taken in the same run: `floor_drop` returns XDP_DROP,
//! `floor_swapmac` swaps the Ethernet addresses and returns XDP_TX.
//!
//! The veth figure's rig: `floor_gen`, `floor_gen_fresh` and `floor_gen_paced` are the
//! load generator (run by BPF_PROG_TEST_RUN in live-frames mode, their XDP_TX sends the
//! frame out of the generator's veth), `floor_count` counts what comes back on that veth
//! and drops it.
#![no_std]
#![no_main]

mod license;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::PerCpuArray,
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::btf_map,
    macros::xdp,
    programs::XdpContext,
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

/// `floor_gen_paced`'s gap between frames in nanoseconds, set by userspace at load time.
#[no_mangle]
static GEN_GAP_NS: u64 = 0;

/// `floor_count`'s counter (slot 0), `floor_gen_fresh`'s flow number (slot 1) and
/// `floor_gen_paced`'s time its next frame is due (slot 2).
#[btf_map]
static GEN_COUNTS: PerCpuArray<u64, 3> = PerCpuArray::new();

/// How far behind its schedule `floor_gen_paced` catches up (a burst at full speed);
/// further behind (a new run), it starts over from now.
const CATCH_UP_NS: u64 = 1_000_000;
/// Clock reads `floor_gen_paced` spends at most waiting for a frame's time (about 20 ns
/// each: some microseconds).
const MAX_WAIT_READS: u32 = 512;

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
    fresh(&ctx)
}

#[inline(always)]
fn fresh(ctx: &XdpContext) -> u32 {
    let Some(seq) = GEN_COUNTS.get_ptr_mut(1) else {
        return xdp_action::XDP_ABORTED;
    };
    let n = unsafe {
        *seq += 1;
        *seq
    } as u32;
    let cpu = unsafe { bpf_get_smp_processor_id() } as u8;
    let Some(start) = restore_macs(ctx) else {
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

/// As `floor_gen_fresh`, one frame every `GEN_GAP_NS` on average: it waits (reading the
/// clock) until the frame's time, so a live-frames run offers new flows at a steady
/// rate whatever its length, as long as the path keeps up.
#[xdp]
pub fn floor_gen_paced(ctx: XdpContext) -> u32 {
    let gap = unsafe { core::ptr::read_volatile(&GEN_GAP_NS) };
    let Some(due) = GEN_COUNTS.get_ptr_mut(2) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut now = unsafe { bpf_ktime_get_ns() };
    let mut next = unsafe { *due };
    if next == 0 || now > next + CATCH_UP_NS {
        next = now;
    }
    for _ in 0..MAX_WAIT_READS {
        if now >= next {
            break;
        }
        now = unsafe { bpf_ktime_get_ns() };
    }
    unsafe { *due = next + gap };
    fresh(&ctx)
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
