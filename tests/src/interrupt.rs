//! Ctrl-C for long-running lab users (the demo): SIGINT and SIGTERM only set a flag, so
//! the caller stops at its next check and tears its lab down through `Drop` (every wait
//! in this crate is bounded, so that comes quickly). Repeated signals do the same: some
//! senders deliver two at once (`timeout(1)` signals the child and then its process
//! group). To abort without cleanup, use Ctrl-\ (SIGQUIT); the next run's
//! [`crate::cleanup_stale`] then sweeps up.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True once SIGINT or SIGTERM arrived after [`install`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
