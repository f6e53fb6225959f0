//! The datapath's time: `CLOCK_MONOTONIC_COARSE` in nanoseconds, read from the kernel's
//! tick count with userspace's calibration (`lb_common::FlowTable::clock_ns`).

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::maps::FLOW_TABLE;

/// Now, in nanoseconds. `bpf_jiffies64` is inlined by the verifier into a load of
/// `jiffies`; `bpf_ktime_get_coarse_ns` (a call) only serves until userspace calibrated.
#[inline(always)]
pub fn now() -> u64 {
    // Both arms give a value: an `Option` here left LLVM spilling the undefined payload
    // of `None`, which the verifier refuses to read.
    if let Some(t) = FLOW_TABLE.get(0) {
        if t.tick_ns != 0 {
            return t.clock_ns(unsafe { bpf_jiffies64() });
        }
    }
    unsafe { bpf_ktime_get_coarse_ns() }
}
