//! Word stores into the frame and word loads from map values, one instruction each.
//!
//! A `write_unaligned` of a byte array, or of a struct whose alignment the compiler
//! cannot prove, becomes one byte store per byte in BPF, each after a shift: building an
//! outer IPv6 header took some 80 instructions that way. The verifier allows unaligned
//! packet and map-value accesses on hosts with efficient unaligned access (x86, arm64),
//! so these write whole words at a constant offset from a pointer the caller has
//! bounds-checked for at least `OFF + size` bytes.

/// Stores `v` at `p + OFF` as one 64-bit word.
///
/// # Safety
/// `p` must point to at least `OFF + 8` writable bytes (checked by the verifier).
#[inline(always)]
pub unsafe fn u64_at<const OFF: i16>(p: *mut u8, v: u64) {
    core::arch::asm!(
        "*(u64 *)({p} + {off}) = {v}",
        p = in(reg) p,
        off = const OFF,
        v = in(reg) v,
        options(nostack, preserves_flags),
    );
}

/// Stores `v` at `p + OFF` as one 32-bit word.
///
/// # Safety
/// As [`u64_at`], for `OFF + 4` bytes.
#[inline(always)]
pub unsafe fn u32_at<const OFF: i16>(p: *mut u8, v: u32) {
    core::arch::asm!(
        "*(u32 *)({p} + {off}) = {v}",
        p = in(reg) p,
        off = const OFF,
        v = in(reg) u64::from(v),
        options(nostack, preserves_flags),
    );
}

/// Stores `v` at `p + OFF` as one 16-bit word.
///
/// # Safety
/// As [`u64_at`], for `OFF + 2` bytes.
#[inline(always)]
pub unsafe fn u16_at<const OFF: i16>(p: *mut u8, v: u16) {
    core::arch::asm!(
        "*(u16 *)({p} + {off}) = {v}",
        p = in(reg) p,
        off = const OFF,
        v = in(reg) u64::from(v),
        options(nostack, preserves_flags),
    );
}

/// Loads the 64-bit word at `p + OFF`.
///
/// # Safety
/// `p` must point to at least `OFF + 8` readable bytes (checked by the verifier).
#[inline(always)]
pub unsafe fn load_u64<const OFF: i16>(p: *const u8) -> u64 {
    let v: u64;
    core::arch::asm!(
        "{v} = *(u64 *)({p} + {off})",
        p = in(reg) p,
        off = const OFF,
        v = out(reg) v,
        options(readonly, nostack, preserves_flags),
    );
    v
}

/// Loads the 32-bit word at `p + OFF`.
///
/// # Safety
/// As [`load_u64`], for `OFF + 4` bytes.
#[inline(always)]
pub unsafe fn load_u32<const OFF: i16>(p: *const u8) -> u32 {
    let v: u64;
    core::arch::asm!(
        "{v} = *(u32 *)({p} + {off})",
        p = in(reg) p,
        off = const OFF,
        v = out(reg) v,
        options(readonly, nostack, preserves_flags),
    );
    v as u32
}

/// Loads the 16-bit word at `p + OFF`.
///
/// # Safety
/// As [`load_u64`], for `OFF + 2` bytes.
#[inline(always)]
pub unsafe fn load_u16<const OFF: i16>(p: *const u8) -> u16 {
    let v: u64;
    core::arch::asm!(
        "{v} = *(u16 *)({p} + {off})",
        p = in(reg) p,
        off = const OFF,
        v = out(reg) v,
        options(readonly, nostack, preserves_flags),
    );
    v as u16
}
