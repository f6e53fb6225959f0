//! bascule's controller: configuration, the datapath's maps, the daemon, its API and CLI.
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decap;
pub mod flows;
pub mod health;
pub mod metrics;
pub mod netinfo;
pub mod pins;
pub mod plan;
pub mod snapshot;
pub mod status;
pub mod tables;
pub mod vrrp;
