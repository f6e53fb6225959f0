//! bascule's controller: configuration, the datapath's maps, the daemon.
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod decap;
pub mod health;
pub mod netinfo;
pub mod plan;
pub mod tables;
pub mod vrrp;
