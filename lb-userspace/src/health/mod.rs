//! Health checks: keepalived's checkers, run from this node against every backend's real
//! address, deciding which backends the datapath may use.
//!
//! - [`schedule`] is the pure part: when each attempt runs (interval, retries,
//!   delay_before_retry) and when a backend goes up or down (rise, fall). Time is a
//!   parameter, so it is tested without sleeping.
//! - One file per kind of check (`tcp`, `http` for http_get and ssl_get, `smtp`, `dns`,
//!   `udp`, `ping`, `misc`): each parses and judges what the backend answered in plain
//!   functions, around a thin async exchange.
//! - [`HealthSupervisor`] runs one tokio task per backend, bounds how many attempts are in
//!   flight, logs one line per transition and publishes a [`HealthMap`].
//! - [`effect`] turns a `HealthMap` into what the datapath is given (`plan_with_health`).
//! - `fuzz` gives the fuzz targets (`fuzz/` at the workspace root) the checkers' decoders.

mod check;
mod dns;
pub mod effect;
#[doc(hidden)]
pub mod fuzz;
mod http;
mod misc;
mod ping;
pub mod schedule;
mod smtp;
mod supervisor;
mod tcp;
mod udp;

use crate::config::HealthCheck;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    time::{Duration, SystemTime},
};

pub use check::Outcome;
pub use effect::{apply_health, plan_with_health};
pub use supervisor::{raise_fd_limit, HealthSupervisor};

/// The name of the health checks' runtime thread (as `top -H` and /proc show it).
pub const RUNTIME_THREAD: &str = "bascule-health";

/// A runtime for the supervisor: one worker thread is plenty (checks wait on the network,
/// and 10,000 backends a second take a fraction of a core: `tests/health_scale.rs`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(RUNTIME_THREAD)
        .enable_all()
        .build()
}

/// One attempt of `check` against `backend` (no retries, no rise/fall), bounded by the
/// check's `timeout`: what `bascule` would conclude from a single try. Must run inside a
/// tokio runtime.
pub async fn probe(check: &HealthCheck, backend: &BackendKey) -> Outcome {
    let shared = check::Shared {
        pinger: Default::default(),
    };
    match check::Checker::new(check, backend) {
        Ok(checker) => checker.attempt(&shared, check.timeout).await,
        Err(why) => Outcome::Down(why),
    }
}

/// Which backend: the service's name and the backend's address and port, as in
/// `plan::PlannedBackend` (the port is the backend's own or else the service's).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service: String,
    pub address: IpAddr,
    pub port: u16,
}

impl BackendKey {
    pub fn new(service: &str, address: IpAddr, port: u16) -> BackendKey {
        BackendKey {
            service: service.to_string(),
            address,
            port,
        }
    }

    /// `ADDRESS:PORT` (`[v6]:port`).
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }
}

impl fmt::Display for BackendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.service, self.socket_addr())
    }
}

/// What the checks say about one backend. The supervisor keeps one per checked backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendHealth {
    /// Whether the backend may take new flows.
    pub up: bool,
    /// A weight set by the check itself (`misc` with `dynamic: true`), replacing the
    /// configured one while the backend is up.
    pub weight_override: Option<u32>,
    /// Why the last failed attempt failed ("HTTP 503 from 10.0.0.11:80/healthz").
    pub last_failure: Option<String>,
    /// How long the last attempt took.
    pub last_duration: Option<Duration>,
    /// When the last attempt ended.
    pub last_check: Option<SystemTime>,
    /// When `up` last changed (or the check started).
    pub since: SystemTime,
    /// Attempts made and attempts failed, since the check started.
    pub attempts: u64,
    pub failed_attempts: u64,
    /// Durations of the attempts, for `bascule_healthcheck_duration_seconds`.
    pub durations: DurationHistogram,
}

impl BackendHealth {
    pub fn new(up: bool, now: SystemTime) -> BackendHealth {
        BackendHealth {
            up,
            weight_override: None,
            last_failure: None,
            last_duration: None,
            last_check: None,
            since: now,
            attempts: 0,
            failed_attempts: 0,
            durations: DurationHistogram::default(),
        }
    }
}

/// Every checked backend's health. Backends of services without `health_check` are absent
/// (they are always up).
pub type HealthMap = HashMap<BackendKey, BackendHealth>;

/// Upper bounds (seconds) of the duration histogram's buckets, Prometheus' defaults from
/// 1 ms; the last bucket (`+Inf`) is implied.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A Prometheus-style histogram of attempt durations.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DurationHistogram {
    /// `counts[i]`: attempts with `DURATION_BUCKETS[i-1] < d <= DURATION_BUCKETS[i]`;
    /// the last element counts those above every bound.
    pub counts: [u64; DURATION_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl DurationHistogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.counts[i] += 1;
        self.sum_seconds += secs;
        self.count += 1;
    }

    /// `(le, cumulative count)` per bucket, ending with `(f64::INFINITY, count)`: the
    /// `_bucket` series of the exposition format.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        DURATION_BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (le, total)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = DurationHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(9));
        let c = h.cumulative();
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[2], (0.005, 3));
        assert_eq!(c[11], (5.0, 3));
        assert_eq!(c[12], (f64::INFINITY, 4));
        assert_eq!(h.count, 4);
        assert!((h.sum_seconds - 9.0065).abs() < 1e-9);
    }

    #[test]
    fn keys_print_like_the_backend_label() {
        let k = BackendKey::new("web", "fd00::11".parse().unwrap(), 80);
        assert_eq!(k.to_string(), "web [fd00::11]:80");
    }
}
