//! Small helpers every layer may use.
//!
//! | module | what |
//! |---|---|
//! | [`cores`] | a slice's items on one scoped thread per core |
//! | [`systemd`] | the service manager's notification socket, watchdog and journal stream |
pub mod cores;
pub mod systemd;
