//! Small helpers every layer may use.
//!
//! | module | what |
//! |---|---|
//! | [`caps`] | the capabilities a command the daemon runs starts without |
//! | [`cores`] | a slice's items on one scoped thread per core |
//! | [`panic`] | a panic contained and turned into an error (reloads, `bascule check`) |
//! | [`systemd`] | the service manager's notification socket, watchdog and journal stream |
pub mod caps;
pub mod cores;
pub mod panic;
pub mod systemd;
