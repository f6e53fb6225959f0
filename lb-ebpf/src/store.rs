//! Word stores into the frame and word loads from map values, one instruction each.
//!
//! A `write_unaligned` of a byte array, or of a struct whose alignment the compiler
//! cannot prove, becomes one byte store per byte in BPF, each after a shift: building an
//! outer IPv6 header took some 80 instructions that way. The verifier allows unaligned
//! packet and map-value accesses on hosts with efficient unaligned access (x86, arm64),
//! so these write whole words at a constant offset from a pointer the caller has
//! bounds-checked for at least `OFF + size` bytes.

/// Defines `$name::<OFF>(p, v)`: stores `v` at `p + OFF` as one `$width`-bit word.
macro_rules! store_fn {
    ($name:ident, $ty:ty, $width:literal) => {
        #[doc = concat!("Stores `v` at `p + OFF` as one ", $width, "-bit word.")]
        ///
        /// # Safety
        #[doc = concat!("`p` must point to at least `OFF + ", $width, " / 8` writable bytes")]
        /// (checked by the verifier).
        #[inline(always)]
        pub unsafe fn $name<const OFF: i16>(p: *mut u8, v: $ty) {
            core::arch::asm!(
                concat!("*(u", $width, " *)({p} + {off}) = {v}"),
                p = in(reg) p,
                off = const OFF,
                v = in(reg) v as u64,
                options(nostack, preserves_flags),
            );
        }
    };
}

/// Defines `$name::<OFF>(p)`: loads the `$width`-bit word at `p + OFF`.
macro_rules! load_fn {
    ($name:ident, $ty:ty, $width:literal) => {
        #[doc = concat!("Loads the ", $width, "-bit word at `p + OFF`.")]
        ///
        /// # Safety
        #[doc = concat!("`p` must point to at least `OFF + ", $width, " / 8` readable bytes")]
        /// (checked by the verifier).
        #[inline(always)]
        pub unsafe fn $name<const OFF: i16>(p: *const u8) -> $ty {
            let v: u64;
            core::arch::asm!(
                concat!("{v} = *(u", $width, " *)({p} + {off})"),
                p = in(reg) p,
                off = const OFF,
                v = out(reg) v,
                options(readonly, nostack, preserves_flags),
            );
            v as $ty
        }
    };
}

store_fn!(u64_at, u64, 64);
store_fn!(u32_at, u32, 32);
store_fn!(u16_at, u16, 16);
load_fn!(load_u64, u64, 64);
load_fn!(load_u32, u32, 32);
