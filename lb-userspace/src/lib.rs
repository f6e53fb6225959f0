//! bascule's controller: configuration, the datapath's maps, the daemon, its API and CLI.
pub mod announce;
pub mod cli;
pub mod config;
pub mod control;
pub mod datapath;
pub mod health;
pub mod host;
pub mod keepalived;
pub mod plan;
pub mod serve;
pub mod sync;
pub mod util;
pub mod vrrp;
