//! Atomic updates of counters shared by all CPUs (`core::sync::atomic`'s read-modify-write
//! methods are not available on the BPF target; the compiler intrinsics lower to BPF
//! atomic instructions).

use core::intrinsics::{atomic_xadd, atomic_xsub, AtomicOrdering};

/// Adds without reading the old value back (BPF's plain atomic add).
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

#[inline(always)]
pub fn sub(p: *mut u64, v: u64) {
    unsafe { atomic_xsub::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// Sets `*p` to `new` if it is `old`; whether it did.
#[inline(always)]
pub fn claim(p: *mut u64, old: u64, new: u64) -> bool {
    unsafe {
        core::intrinsics::atomic_cxchg::<
            u64,
            { AtomicOrdering::SeqCst },
            { AtomicOrdering::SeqCst },
        >(p, old, new)
        .1
    }
}
