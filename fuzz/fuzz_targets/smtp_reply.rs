//! `bascule::health::fuzz::smtp_replies`: what a backend (or the network) sends a health
//! checker, decoded as the checker does; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bascule::health::fuzz::smtp_replies(data);
});
