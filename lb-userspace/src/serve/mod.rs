//! The processes: `bascule run` and `bascule decap`.
pub mod api;
pub mod daemon;
pub mod metrics;
