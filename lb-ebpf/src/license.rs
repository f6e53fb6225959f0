//! The licence each object declares in its `license` section, included by each of the
//! three objects (`lb-ebpf`, `lb-decap`, `lb-floor`). The kernel reads it at load time
//! and lets only programs under a GPL-compatible licence call GPL-only helpers
//! (`bpf_fib_lookup`, which `tun` and routed `nat` replies need). Without the section
//! aya would load them as "GPL"; this says so in the object, where `bpftool` shows it.

#[no_mangle]
#[link_section = "license"]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
