//! Scale check: 10,000 backends checked by TCP every second from one process, in a network
//! namespace of its own (root). Prints the CPU share and memory it takes; asserts what it
//! must not leak (file descriptors, memory), never how fast it went.
//!
//! Alone in its test binary, so the process's CPU and memory are the check's own.

mod common;

use std::time::Duration;

use common::scale::{run, ScaleOptions};

/// Resident memory the checks may add, far above what they need (a few tens of MiB):
/// a leak per check (10,000 a second) would cross it.
const RSS_BOUND: u64 = 256 * 1024 * 1024;
/// Growth allowed while checking steadily (50,000 attempts in the window): a leak of a
/// few hundred bytes per attempt would cross it.
const RSS_GROWTH_BOUND: u64 = 16 * 1024 * 1024;
/// File descriptors that may stay open after stopping (the runtime's own, lazily made).
const FD_SLACK: usize = 8;

#[test]
fn ten_thousand_backends_every_second() {
    let options = ScaleOptions::default();
    let report = run(&options).expect("scale check");
    println!("{report}");
    assert_eq!(
        report.up, options.backends,
        "every backend answers on loopback, so every backend must come up: {report}"
    );
    assert_eq!(report.failed_attempts, 0, "{report}");
    assert!(report.attempts > 0, "{report}");
    assert!(
        report.rss_during.saturating_sub(report.rss_before) < RSS_BOUND,
        "{report}"
    );
    assert!(
        report.rss_during.saturating_sub(report.rss_window_start) < RSS_GROWTH_BOUND,
        "memory grew while checking: {report}"
    );
    assert!(
        report.fds_after <= report.fds_before + FD_SLACK,
        "file descriptors leaked: {report}"
    );
    // Attempts in flight are bounded: far fewer sockets than backends.
    assert!(
        report.fds_during < report.fds_before + options.backends / 2,
        "{report}"
    );
    assert!(report.window >= Duration::from_secs(1));
}
