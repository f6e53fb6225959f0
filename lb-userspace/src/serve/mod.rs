//! The processes: `bascule run` (the daemon's wiring, its HTTP API and metrics) and
//! `bascule decap`.
//!
//! | module | what |
//! |---|---|
//! | [`daemon`] | `bascule run`: runtime, listener, health checks, the controller's thread, VRRP, signals |
//! | [`api`] | the HTTP server: routes, bearer token, JSON errors; asks the controller |
//! | [`gate`] | the API's open connections: at most 256, the oldest waiting one closed to make room |
//! | [`status_page`] | the live status page at `/`, embedded |
//! | [`metrics`] | a snapshot as Prometheus/OpenMetrics text |
//! | [`systemd`] | what the service manager is told: ready, reloads, watchdog, status, stopping |
//! | [`decap`] | `bascule decap`: the tc program attached until a signal |

pub mod api;
pub mod daemon;
pub mod decap;
pub mod gate;
pub mod metrics;
pub mod status_page;
pub mod systemd;
